//! Content-addressable blob bytes over [`object_store`].
//!
//! # Layout
//!
//! ```text
//! blobs/<algorithm>/<first two hex chars>/<hex>   committed blobs, named by digest
//! uploads/<upload id>.<part number, 8 digits>      staged bytes of an upload session
//! ```
//!
//! The two-character shard keeps directories small on file systems (256 shards per algorithm).
//!
//! # Write path
//!
//! An upload session stores each request body (one OCI `PATCH`, or the body of a monolithic
//! `PUT`) as one *part* object, streamed through a multipart upload so that a blob is never held
//! whole in memory. The caller hashes the bytes while they stream ([`Cas::write_part`] feeds its
//! [`Hasher`]). [`Cas::commit`] then publishes the parts under the digest's name:
//!
//! - On the local file system a single part is linked into place (no copy), and several parts
//!   are first joined by the kernel (`copy_file_range`).
//! - On object stores a single part is copied server-side to the digest's key, create-if-absent
//!   where the store has it (Azure, GCS, memory; S3 with `copy_if_not_exists` configured), so
//!   two clients committing the same blob at once publish it once. Several parts, or one part
//!   larger than the store copies in one request ([`CasOptions::max_server_copy`]: 5 GiB on
//!   S3), are streamed through the daemon into a multipart upload at the digest's key, which
//!   becomes visible only when complete.
//!
//! Where a store has no create-if-absent, two commits of one digest may both write its key:
//! the same bytes to the same key, which still leaves one object.
//!
//! # Durability
//!
//! The local file system backend is opened with `fsync` on: a part's bytes and directory entry
//! are on disk before `write_part` returns, and the rename into `blobs/` is fsynced (file and
//! both directories) before `commit` returns. Remote stores confirm a put before returning. So
//! when `commit` returns `Ok`, the bytes are durable, and only then may the index say the blob
//! exists.

mod direct;
pub mod faulty;
mod local;
mod multipart;
mod read;
mod s3uploads;
pub mod storage;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use stowage_core::{Digest, Hasher};

pub use read::BlobStream;
pub use s3uploads::S3Uploads;
pub use storage::{StorageConfig, StorageKind};

/// Errors from the blob store. Each says what was being done.
#[derive(Debug, thiserror::Error)]
pub enum CasError {
    /// The backend failed.
    #[error("blob store: {context}: {source}")]
    Backend {
        /// What was being done.
        context: String,
        /// Underlying error.
        #[source]
        source: object_store::Error,
    },
    /// Reading the client's request body failed (disconnect, timeout).
    #[error("reading request body: {0}")]
    Body(String),
    /// The upload grew beyond the configured maximum blob size.
    #[error("blob exceeds the maximum size of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// No such blob in the store.
    #[error("blob {0} not found in the blob store")]
    NotFound(Digest),
    /// A requested range does not fit the blob.
    #[error("range {start}..{end} outside blob of {size} bytes")]
    Range {
        /// Requested start.
        start: u64,
        /// Requested end (exclusive).
        end: u64,
        /// Blob size.
        size: u64,
    },
    /// Bytes read back do not match what was stored.
    #[error("blob {digest} is corrupt: {detail}")]
    Corrupt {
        /// The blob.
        digest: Digest,
        /// What did not match.
        detail: String,
    },
    /// A background task failed (panicked or was cancelled).
    #[error("internal: {0}")]
    Internal(String),
    /// The configured store cannot be built or does not work.
    #[error("blob store configuration: {0}")]
    Config(String),
    /// A request sent outside `object_store`'s calls (S3's `ListMultipartUploads`) failed.
    #[error("{context}: {source}")]
    Request {
        /// What was being done.
        context: String,
        /// Underlying error.
        #[source]
        source: object_store::client::HttpError,
    },
    /// The store answered such a request with an error status or an unreadable answer.
    #[error("{context}: {detail}")]
    Answer {
        /// What was being done.
        context: String,
        /// The status and what the store said, or what could not be read.
        detail: String,
    },
    /// Local file I/O failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

fn be_err(context: impl Into<String>) -> impl FnOnce(object_store::Error) -> CasError {
    let context = context.into();
    move |source| CasError::Backend { context, source }
}

/// The next chunk of a request body, counted into `received` and checked against `limit`.
pub(crate) async fn next_chunk<S, E>(
    body: &mut S,
    received: &mut u64,
    limit: u64,
) -> Result<Option<Bytes>, CasError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    match body.next().await {
        None => Ok(None),
        Some(Err(e)) => Err(CasError::Body(e.to_string())),
        Some(Ok(chunk)) => {
            *received += chunk.len() as u64;
            if *received > limit {
                return Err(CasError::TooLarge { limit });
            }
            Ok(Some(chunk))
        }
    }
}

/// Which backend holds the bytes.
#[derive(Clone, Debug)]
pub enum Backend {
    /// Local file system under `root` (the default: `<data dir>/blobs`).
    Filesystem {
        /// Root folder.
        root: PathBuf,
    },
    /// In memory (tests).
    Memory,
    /// Any other `object_store` implementation (S3, GCS, Azure), built by the caller.
    Custom(Arc<dyn ObjectStore>),
    /// S3 or an S3-compatible server: the store (key prefix applied), and the handle that lists
    /// and aborts its incomplete multipart uploads, which `object_store` cannot list
    /// ([`Cas::sweep_uploads`] uses it). Built by [`storage::s3_backend`].
    S3 {
        /// The store.
        store: Arc<dyn ObjectStore>,
        /// Its incomplete multipart uploads.
        uploads: S3Uploads,
    },
}

impl Backend {
    /// Whether the bytes are on a remote object store (probed at start).
    pub fn is_remote(&self) -> bool {
        matches!(self, Backend::Custom(_) | Backend::S3 { .. })
    }
}

/// What [`Cas::sweep_uploads`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UploadSweep {
    /// Staged objects (parts, joined parts, temporary files) of uploads that are not live.
    pub staged: usize,
    /// Incomplete multipart uploads aborted (S3).
    pub multipart: usize,
    /// Multipart listings or aborts that failed: logged, and tried again by the next sweep.
    pub multipart_failures: usize,
}

/// Smallest multipart part object stores accept (S3: 5 MiB for every part but the last).
pub const MIN_REMOTE_PART: usize = 5 << 20;

/// Tuning of the blob store.
#[derive(Clone, Debug)]
pub struct CasOptions {
    /// Size of each multipart part buffered in memory before it is written.
    pub part_size: usize,
    /// Parts of one upload written concurrently (memory per upload is about
    /// `part_size * (max_parts_in_flight + 1)`).
    pub max_parts_in_flight: usize,
    /// Hash full-blob reads and fail the stream if the bytes do not match their digest.
    pub verify_reads: bool,
    /// Local file system only: write uploads with `O_DIRECT` (bypassing the page cache) where the
    /// file system supports it. Saves a copy and the writeback work per byte; the cost is that a
    /// freshly pushed blob is read from disk, not memory, on its first pull.
    pub direct_io: bool,
    /// Object stores: the largest object the store copies server-side in one request. A blob
    /// staged as one larger part is published by streaming it through the daemon instead
    /// (S3's `CopyObject` refuses sources over 5 GiB).
    pub max_server_copy: u64,
}

impl Default for CasOptions {
    fn default() -> Self {
        Self {
            part_size: 1024 * 1024,
            max_parts_in_flight: 2,
            verify_reads: true,
            direct_io: true,
            max_server_copy: u64::MAX,
        }
    }
}

/// What a commit did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitOutcome {
    /// The bytes were published under the digest.
    Stored,
    /// An object with that digest already existed; the staged bytes were discarded.
    AlreadyPresent,
}

/// The blob store.
#[derive(Clone, Debug)]
pub struct Cas {
    store: Arc<dyn ObjectStore>,
    opts: CasOptions,
    /// Local root when the backend is the file system (used for cleanup of stray staging).
    local_root: Option<PathBuf>,
    /// The backend is the in-memory store.
    memory: bool,
    /// An object store whose create-if-absent copies the start-up probe saw work.
    conditional: Arc<AtomicBool>,
    /// Aborts of multipart uploads whose writer was dropped.
    aborts: multipart::Aborts,
    /// Lists and aborts incomplete multipart uploads (S3 only).
    pending_uploads: Option<S3Uploads>,
}

/// The object path of a committed blob.
pub fn blob_path(digest: &Digest) -> Path {
    let hex = digest.hex();
    Path::from(format!(
        "blobs/{}/{}/{}",
        digest.algorithm().as_str(),
        &hex[..2],
        hex
    ))
}

// Staging is flat (one folder for all uploads): no folder to create and sync per upload.
fn part_path(upload: &str, part: u32) -> Path {
    Path::from(format!("uploads/{upload}.{part:08}"))
}

fn combined_path(upload: &str) -> Path {
    Path::from(format!("uploads/{upload}.combined"))
}

/// The upload id a staging object name belongs to.
fn upload_of(name: &str) -> &str {
    name.split(['.', '#']).next().unwrap_or(name)
}

impl Cas {
    /// Opens the blob store on `backend`.
    pub fn open(backend: Backend, mut opts: CasOptions) -> Result<Cas, CasError> {
        let memory = matches!(backend, Backend::Memory);
        if backend.is_remote() {
            // Object stores refuse multipart parts (all but the last) under 5 MiB.
            opts.part_size = opts.part_size.max(MIN_REMOTE_PART);
        }
        let mut pending_uploads = None;
        let (store, local_root): (Arc<dyn ObjectStore>, _) = match backend {
            Backend::Filesystem { root } => {
                std::fs::create_dir_all(&root).map_err(|source| CasError::Io {
                    context: format!("creating blob root {}", root.display()),
                    source,
                })?;
                let fs = LocalFileSystem::new_with_prefix(&root)
                    .map_err(be_err(format!("opening {}", root.display())))?
                    .with_fsync(true)
                    // No automatic removal of emptied folders: staging is one shared folder, and
                    // removing it when it empties races with the next upload creating a file in it.
                    .with_automatic_cleanup(false);
                (Arc::new(fs), Some(root))
            }
            Backend::Memory => (Arc::new(InMemory::new()), None),
            Backend::Custom(store) => (store, None),
            Backend::S3 { store, uploads } => {
                pending_uploads = Some(uploads);
                (store, None)
            }
        };
        Ok(Cas {
            store,
            opts,
            local_root,
            memory,
            conditional: Arc::new(AtomicBool::new(false)),
            aborts: multipart::Aborts::default(),
            pending_uploads,
        })
    }

    /// Waits until the background aborts of multipart uploads whose writer was dropped (a
    /// client that went away mid-request) have ended: for a clean shutdown, and for tests.
    pub async fn settle_aborts(&self) {
        self.aborts.settle().await;
    }

    /// The options in force.
    pub fn options(&self) -> &CasOptions {
        &self.opts
    }

    /// Whether publishing a blob is create-if-absent: the local file system and memory, and an
    /// object store whose conditional copies [`Cas::probe`] saw work (Azure, GCS, S3 with
    /// `copy_if_not_exists` configured). Elsewhere two concurrent commits of one digest may both
    /// write the object: the same bytes under the same key, which still leaves one object.
    pub fn atomic_publish(&self) -> bool {
        self.local_root.is_some() || self.memory || self.conditional.load(Ordering::Relaxed)
    }

    /// Checks that the store answers and accepts writes: puts a small probe object, reads it
    /// back, copies it create-if-absent twice (to learn whether the store refuses the second
    /// copy: see [`Cas::atomic_publish`]) and deletes what it wrote, within `timeout`.
    pub async fn probe(&self, timeout: std::time::Duration) -> Result<(), CasError> {
        let id = uuid::Uuid::new_v4();
        let path = Path::from(format!("probe/{id}"));
        let copy = Path::from(format!("probe/{id}.copy"));
        let body = Bytes::from_static(b"stowage probe");
        let check = async {
            self.store
                .put(&path, body.clone().into())
                .await
                .map_err(be_err("writing a probe object"))?;
            let got = self
                .store
                .get(&path)
                .await
                .map_err(be_err("reading the probe object back"))?
                .bytes()
                .await
                .map_err(be_err("reading the probe object back"))?;
            if got != body {
                return Err(CasError::Config(
                    "the probe object read back differs from what was written".into(),
                ));
            }
            let conditional = match self.store.copy_if_not_exists(&path, &copy).await {
                Ok(()) => match self.store.copy_if_not_exists(&path, &copy).await {
                    Err(object_store::Error::AlreadyExists { .. }) => Ok(true),
                    Ok(()) => {
                        tracing::warn!(
                            "the blob store accepted a create-if-absent copy over an existing \
                             object: publishes are treated as unconditional"
                        );
                        Ok(false)
                    }
                    Err(e) => Err(be_err("copying the probe object again")(e)),
                },
                Err(object_store::Error::NotSupported { .. })
                | Err(object_store::Error::NotImplemented { .. }) => Ok(false),
                Err(e) => Err(be_err("copying the probe object")(e)),
            };
            // The copy goes whatever the copies answered; the probe object below.
            self.delete_quiet(&copy).await;
            let conditional = conditional?;
            self.conditional.store(conditional, Ordering::Relaxed);
            self.store
                .delete(&path)
                .await
                .map_err(be_err("deleting the probe object"))?;
            tracing::info!(create_if_absent = conditional, "blob store probe passed");
            Ok(())
        };
        tokio::time::timeout(timeout, check)
            .await
            .map_err(|_| CasError::Config(format!("no answer within {} s", timeout.as_secs())))?
    }

    /// Streams `body` into part `part` of upload `upload`, feeding every byte to `hasher`.
    ///
    /// At most `limit` bytes are accepted (`CasError::TooLarge` beyond, and the part is dropped).
    /// The part's bytes are synced before this returns; with `durable` its directory entry is
    /// too, so the part survives a crash (needed for chunks of a resumable session, not for a
    /// body that is committed right away).
    /// Returns the number of bytes written. On any error nothing of this part remains, but
    /// `hasher` may have seen some of its bytes: the caller must then rebuild its hash state
    /// from the parts that exist ([`Cas::rehash_parts`]).
    pub async fn write_part<S, E>(
        &self,
        upload: &str,
        part: u32,
        mut body: S,
        hasher: &mut Hasher,
        limit: u64,
        durable: bool,
    ) -> Result<u64, CasError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let path = part_path(upload, part);
        if let Some(root) = &self.local_root {
            let file = root.join(path.as_ref());
            return local::write_part(file, body, hasher, limit, durable, self.opts.direct_io)
                .await;
        }
        let multipart = self
            .store
            .put_multipart(&path)
            .await
            .map_err(be_err(format!("starting part {path}")))?;
        // Aborted if this future is dropped before the upload ends (the client went away).
        let multipart = self.aborts.guard(multipart, path.to_string());
        let mut writer = WriteMultipart::new_with_chunk_size(multipart, self.opts.part_size);
        let mut written: u64 = 0;
        let result: Result<(), CasError> = async {
            while let Some(chunk) = next_chunk(&mut body, &mut written, limit).await? {
                hasher.update(&chunk);
                writer
                    .wait_for_capacity(self.opts.max_parts_in_flight)
                    .await
                    .map_err(be_err(format!("writing part {path}")))?;
                writer.put(chunk);
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) if written == 0 => {
                // Nothing arrived: leave no empty part behind.
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(part = %path, error = %abort, "aborting empty part");
                }
                Ok(0)
            }
            Ok(()) => {
                writer
                    .finish()
                    .await
                    .map_err(be_err(format!("completing part {path}")))?;
                Ok(written)
            }
            Err(e) => {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(part = %path, error = %abort, "aborting failed part");
                }
                Err(e)
            }
        }
    }

    /// The bytes of `parts` of `upload`, in order, as one stream.
    fn parts_stream<'a>(
        &'a self,
        upload: &'a str,
        parts: &'a [u32],
    ) -> impl Stream<Item = Result<Bytes, CasError>> + Unpin + 'a {
        futures::stream::iter(parts)
            .then(move |part| async move {
                let path = part_path(upload, *part);
                let context = format!("reading part {path}");
                match read::open(&self.store, &path, None, false).await {
                    Ok(s) => s.map(move |c| c.map_err(be_err(context.clone()))).boxed(),
                    Err(e) => futures::stream::once(async move { Err(be_err(context)(e)) }).boxed(),
                }
            })
            .flatten()
            .boxed()
    }

    /// Rebuilds the hash state of an upload from its stored parts (after a restart or a failed
    /// append). Returns the hasher and the total size.
    pub async fn rehash_parts(
        &self,
        upload: &str,
        parts: &[u32],
        algorithm: stowage_core::Algorithm,
    ) -> Result<(Hasher, u64), CasError> {
        let mut hasher = Hasher::new(algorithm);
        let mut size = 0;
        let mut chunks = self.parts_stream(upload, parts);
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            size += chunk.len() as u64;
            hasher.update(&chunk);
        }
        Ok((hasher, size))
    }

    /// Size of part `part` of `upload`, `None` when it is not stored.
    pub async fn part_size(&self, upload: &str, part: u32) -> Result<Option<u64>, CasError> {
        self.head_size(&part_path(upload, part)).await
    }

    /// Size of the object at `path`, `None` when absent.
    async fn head_size(&self, path: &Path) -> Result<Option<u64>, CasError> {
        match self.store.head(path).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(be_err(format!("stat of {path}"))(e)),
        }
    }

    /// Publishes the parts of `upload` as blob `digest`, which the caller has verified, and
    /// removes the parts. Durable when it returns `Ok`.
    pub async fn commit(
        &self,
        upload: &str,
        parts: &[u32],
        digest: &Digest,
    ) -> Result<CommitOutcome, CasError> {
        let target = blob_path(digest);
        if let (Some(root), [only]) = (&self.local_root, parts) {
            // Local fast path: one blocking call links, syncs and removes the staged name.
            let part = root.join(part_path(upload, *only).as_ref());
            let blob = root.join(target.as_ref());
            let stored = tokio::task::spawn_blocking(move || local::publish(&part, &blob))
                .await
                .map_err(|e| CasError::Internal(format!("publish task: {e}")))??;
            return Ok(if stored {
                CommitOutcome::Stored
            } else {
                CommitOutcome::AlreadyPresent
            });
        }
        if let (Some(root), [_, _, ..]) = (&self.local_root, parts) {
            // Local fast path for many parts: the kernel copies them into one staged file
            // (copy_file_range, no trip through user space), which is then published like a
            // single part.
            let staged: Vec<std::path::PathBuf> = parts
                .iter()
                .map(|p| root.join(part_path(upload, *p).as_ref()))
                .collect();
            let combined = root.join(combined_path(upload).as_ref());
            let blob = root.join(target.as_ref());
            let stored = tokio::task::spawn_blocking(move || {
                local::concatenate(&staged, &combined)?;
                local::publish(&combined, &blob)
            })
            .await
            .map_err(|e| CasError::Internal(format!("concatenate task: {e}")))??;
            self.abort(upload, parts).await;
            return Ok(if stored {
                CommitOutcome::Stored
            } else {
                CommitOutcome::AlreadyPresent
            });
        }
        // Object stores (and memory).
        let single = match parts {
            [] => {
                // An empty blob: publish an empty object.
                let staged = combined_path(upload);
                self.store
                    .put(&staged, Bytes::new().into())
                    .await
                    .map_err(be_err(format!("staging empty blob {digest}")))?;
                Some(staged)
            }
            [only] => {
                let part = part_path(upload, *only);
                // Only stores with a copy limit pay for asking the part's size.
                let too_large = self.opts.max_server_copy < u64::MAX
                    && self
                        .head_size(&part)
                        .await?
                        .is_some_and(|size| size > self.opts.max_server_copy);
                (!too_large).then_some(part)
            }
            _ => None,
        };
        let outcome = match single {
            Some(source) => self.publish_copy(&source, &target, digest).await?,
            None => {
                self.publish_streamed(upload, parts, &target, digest)
                    .await?
            }
        };
        self.abort(upload, parts).await;
        Ok(outcome)
    }

    /// Publishes staged object `source` as blob `digest` (at `target`) by a server-side copy,
    /// create-if-absent where the store has it. The caller removes the staging.
    async fn publish_copy(
        &self,
        source: &Path,
        target: &Path,
        digest: &Digest,
    ) -> Result<CommitOutcome, CasError> {
        // A copy, not a rename: a rename is a copy and a delete, and a failed delete (its request
        // is not retried by the store clients) would fail a publish that already happened.
        match self.copy_retrying(source, target, true).await {
            Ok(()) => Ok(CommitOutcome::Stored),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(CommitOutcome::AlreadyPresent),
            Err(object_store::Error::NotSupported { .. })
            | Err(object_store::Error::NotImplemented { .. }) => {
                // No create-if-absent: content addressing makes an overwrite by identical bytes
                // harmless, but skip it when the object is already there.
                if self.size(digest).await?.is_some() {
                    return Ok(CommitOutcome::AlreadyPresent);
                }
                self.copy_retrying(source, target, false)
                    .await
                    .map_err(be_err(format!("publishing blob {digest}")))?;
                Ok(CommitOutcome::Stored)
            }
            Err(e) => Err(be_err(format!("publishing blob {digest}"))(e)),
        }
    }

    /// Publishes the parts of `upload` as blob `digest` (at `target`) by streaming them through
    /// a multipart upload at `target`: for several parts (one write instead of a joined copy
    /// and a server-side copy of it) and for parts larger than the store copies in one request.
    /// The object appears only when the upload completes, with every byte. No create-if-absent
    /// exists for multipart uploads, so an object already present is left as it is.
    async fn publish_streamed(
        &self,
        upload: &str,
        parts: &[u32],
        target: &Path,
        digest: &Digest,
    ) -> Result<CommitOutcome, CasError> {
        if self.size(digest).await?.is_some() {
            return Ok(CommitOutcome::AlreadyPresent);
        }
        let multipart = self
            .store
            .put_multipart(target)
            .await
            .map_err(be_err(format!("starting to publish blob {digest}")))?;
        let multipart = self.aborts.guard(multipart, target.to_string());
        let mut writer = WriteMultipart::new_with_chunk_size(multipart, self.opts.part_size);
        let written: Result<(), CasError> = async {
            let mut chunks = self.parts_stream(upload, parts);
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk?;
                writer
                    .wait_for_capacity(self.opts.max_parts_in_flight)
                    .await
                    .map_err(be_err(format!("publishing blob {digest}")))?;
                writer.put(chunk);
            }
            Ok(())
        }
        .await;
        if let Err(e) = written {
            if let Err(abort) = writer.abort().await {
                tracing::warn!(blob = %digest, error = %abort, "aborting a failed publish");
            }
            return Err(e);
        }
        writer
            .finish()
            .await
            .map_err(be_err(format!("completing blob {digest}")))?;
        Ok(CommitOutcome::Stored)
    }

    /// Copies `from` to `to` (create-if-absent with `create`), trying again after a transient
    /// failure: a copy is idempotent here (content addressing: the same bytes under the same
    /// key), and a create-if-absent copy retried after one that did land answers
    /// `AlreadyExists`, which the caller takes as published.
    async fn copy_retrying(
        &self,
        from: &Path,
        to: &Path,
        create: bool,
    ) -> Result<(), object_store::Error> {
        let mut wait = std::time::Duration::from_millis(100);
        let mut attempt = 0;
        loop {
            let copied = if create {
                self.store.copy_if_not_exists(from, to).await
            } else {
                self.store.copy(from, to).await
            };
            match copied {
                Ok(()) => return Ok(()),
                Err(object_store::Error::Generic { .. }) if attempt < 4 => {
                    attempt += 1;
                    tracing::debug!(%from, %to, attempt, "copy failed; trying again");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Removes every staged object of `upload` (best effort; stray staging is also swept on
    /// start by [`Cas::remove_stray_uploads`]).
    pub async fn abort(&self, upload: &str, parts: &[u32]) {
        for part in parts {
            self.delete_quiet(&part_path(upload, *part)).await;
        }
        self.delete_quiet(&combined_path(upload)).await;
    }

    async fn delete_quiet(&self, path: &Path) {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => tracing::warn!(%path, error = %e, "removing staged object"),
        }
    }

    /// Removes staging of uploads that are not in `live` (after a crash or restart), whatever
    /// its age. Returns how many staged objects went. See [`Cas::sweep_uploads`], which also
    /// aborts incomplete multipart uploads.
    pub async fn remove_stray_uploads(
        &self,
        live: &std::collections::HashSet<String>,
    ) -> Result<usize, CasError> {
        self.remove_stray_staging(live, None).await
    }

    /// Removes what interrupted uploads left behind, the one entry point for it (at start and
    /// at every garbage collection):
    ///
    /// - staged objects of uploads not in `live` (a crash between writing bytes and recording
    ///   the session, or after a session ended but before its staging went);
    /// - on S3, incomplete multipart uploads: under staging (those of uploads not in `live`)
    ///   and at blob keys (streamed publishes), whose writer died or whose abort failed.
    ///
    /// With `before`, only what was last written (staged objects) or started (multipart
    /// uploads) before that time is touched, so writes in progress are safe as long as they
    /// are younger; without it, everything not live goes: only for a start, when nothing is in
    /// flight. Errors of the staged-object sweep are returned; multipart listings and aborts
    /// that fail are logged and counted (an S3-compatible server without the listing, or a
    /// role without `s3:ListBucketMultipartUploads`, must not stop the daemon).
    pub async fn sweep_uploads(
        &self,
        live: &std::collections::HashSet<String>,
        before: Option<std::time::SystemTime>,
    ) -> Result<UploadSweep, CasError> {
        let staged = self.remove_stray_staging(live, before).await?;
        let (multipart, multipart_failures) = self.abort_stale_multipart(live, before).await;
        Ok(UploadSweep {
            staged,
            multipart,
            multipart_failures,
        })
    }

    /// Aborts the stale incomplete multipart uploads (see [`Cas::sweep_uploads`]); how many,
    /// and how many listings or aborts failed.
    async fn abort_stale_multipart(
        &self,
        live: &std::collections::HashSet<String>,
        before: Option<std::time::SystemTime>,
    ) -> (usize, usize) {
        let Some(pending) = &self.pending_uploads else {
            return (0, 0);
        };
        let (mut aborted, mut failed) = (0, 0);
        for under in ["uploads/", "blobs/"] {
            let uploads = match pending.list(under).await {
                Ok(u) => u,
                Err(e) => {
                    tracing::warn!(under, error = %e, "listing incomplete multipart uploads failed; tried again at the next sweep");
                    failed += 1;
                    continue;
                }
            };
            for upload in uploads {
                let session = upload.key.strip_prefix("uploads/").map(upload_of);
                if session.is_some_and(|id| live.contains(id)) {
                    continue;
                }
                let stale = match (before, upload.initiated) {
                    (None, _) => true,
                    (Some(before), Some(started)) => started < before,
                    // No start time to judge by: kept, unless nothing is in flight.
                    (Some(_), None) => false,
                };
                if !stale {
                    continue;
                }
                match pending.abort(&upload).await {
                    Ok(()) => {
                        tracing::info!(key = %upload.key, "aborted a stale multipart upload");
                        aborted += 1;
                    }
                    Err(e) => {
                        tracing::warn!(key = %upload.key, error = %e, "aborting a stale multipart upload failed; tried again at the next sweep");
                        failed += 1;
                    }
                }
            }
        }
        (aborted, failed)
    }

    /// Removes staged objects of uploads not in `live`, last written before `before` if given.
    async fn remove_stray_staging(
        &self,
        live: &std::collections::HashSet<String>,
        before: Option<std::time::SystemTime>,
    ) -> Result<usize, CasError> {
        let old_enough = |written: Option<std::time::SystemTime>| match (before, written) {
            (None, _) => true,
            (Some(before), Some(t)) => t < before,
            (Some(_), None) => false,
        };
        if let Some(root) = &self.local_root {
            // Read the folder directly: it also holds `#`-suffixed temporary files of
            // interrupted multipart writes, which listing through object_store does not show.
            let uploads = root.join("uploads");
            let listing = |source| CasError::Io {
                context: format!("listing {}", uploads.display()),
                source,
            };
            let mut entries = match tokio::fs::read_dir(&uploads).await {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
                Err(source) => return Err(listing(source)),
            };
            let mut removed = 0;
            while let Some(entry) = entries.next_entry().await.map_err(listing)? {
                let name = entry.file_name().to_string_lossy().into_owned();
                if live.contains(upload_of(&name)) {
                    continue;
                }
                if before.is_some() {
                    // Gone meanwhile (its upload ended): nothing to judge or remove.
                    let Ok(meta) = entry.metadata().await else {
                        continue;
                    };
                    if !old_enough(meta.modified().ok()) {
                        continue;
                    }
                }
                let path = entry.path();
                let gone = if entry.file_type().await.map(|t| t.is_dir()).unwrap_or(false) {
                    tokio::fs::remove_dir_all(&path).await
                } else {
                    tokio::fs::remove_file(&path).await
                };
                match gone {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(CasError::Io {
                            context: format!("removing stray staging {}", path.display()),
                            source,
                        })
                    }
                }
            }
            return Ok(removed);
        }
        let mut listing = self.store.list(Some(&Path::from("uploads")));
        let mut stray = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(be_err("listing uploads"))?;
            if let Some(name) = meta.location.filename() {
                if !live.contains(upload_of(name))
                    && old_enough(Some(std::time::SystemTime::from(meta.last_modified)))
                {
                    stray.push(meta.location);
                }
            }
        }
        let n = stray.len();
        for path in stray {
            self.delete_quiet(&path).await;
        }
        Ok(n)
    }

    /// The stored size of a blob, or `None` when the store has no such object.
    pub async fn size(&self, digest: &Digest) -> Result<Option<u64>, CasError> {
        self.head_size(&blob_path(digest)).await
    }

    /// Streams blob `digest` (of `size` bytes, as the index records it), whole or the byte range
    /// `range` (end exclusive). Whole reads are verified when `verify_reads` is on: against
    /// `crc32c` (recorded at write) when given, else against the digest. Corrupt bytes end the
    /// stream with [`CasError::Corrupt`] instead of a clean end.
    pub async fn read(
        &self,
        digest: &Digest,
        size: u64,
        range: Option<std::ops::Range<u64>>,
        crc32c: Option<u32>,
    ) -> Result<BlobStream, CasError> {
        if let Some(r) = &range {
            if r.start >= r.end || r.end > size {
                return Err(CasError::Range {
                    start: r.start,
                    end: r.end,
                    size,
                });
            }
        }
        let path = blob_path(digest);
        let verify = self.opts.verify_reads && range.is_none();
        let stream = match read::open(&self.store, &path, range, self.opts.direct_io).await {
            Ok(s) => s,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(CasError::NotFound(digest.clone()))
            }
            Err(e) => return Err(be_err(format!("reading blob {digest}"))(e)),
        };
        Ok(read::wrap(stream, digest.clone(), verify, crc32c))
    }

    /// Deletes a blob's bytes. Deleting an absent blob is not an error.
    pub async fn delete(&self, digest: &Digest) -> Result<(), CasError> {
        match self.store.delete(&blob_path(digest)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(be_err(format!("deleting blob {digest}"))(e)),
        }
    }
}

#[cfg(test)]
mod azurite;
#[cfg(test)]
mod cleanup_tests;
#[cfg(test)]
mod moto;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod testserver;
