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
//! # Engines
//!
//! [`Cas`] names objects and checks arguments; the bytes go to one engine behind the
//! `BlobBackend` trait (`backend.rs`, where each method's contract is written): the local file
//! system engine (`fs.rs`, with the direct-I/O writer of `local.rs`) or the object store
//! engine (`object.rs`: S3, GCS, Azure, memory).
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

mod backend;
mod direct;
pub mod faulty;
mod fs;
mod listing;
mod local;
mod multipart;
mod object;
mod read;
mod s3uploads;
pub mod storage;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::ObjectStore;
use stowage_core::{Digest, Hasher};

use backend::BlobBackend;
use object::ObjectBackend;

pub use listing::StoredBlob;
pub use read::BlobStream;
pub use s3uploads::S3Uploads;
pub use storage::{StorageConfig, StorageKind};

impl CasError {
    /// Whether the error is the file system (or quota) running out of space: `ENOSPC` or
    /// `EDQUOT` anywhere in its chain of causes.
    pub fn is_storage_full(&self) -> bool {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = cause {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::StorageFull
                    || io.kind() == std::io::ErrorKind::QuotaExceeded
                    || matches!(io.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
                {
                    return true;
                }
            }
            cause = e.source();
        }
        false
    }
}

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
    /// A blocking task panicked or was cancelled before it returned.
    #[error("the {task} task failed: {source}")]
    Task {
        /// Which task ("part write").
        task: &'static str,
        /// Why it did not return.
        #[source]
        source: tokio::task::JoinError,
    },
    /// The configured store cannot be built or does not work.
    #[error("blob store configuration: {0}")]
    Config(String),
    /// Another index claimed this store (bucket and prefix, or folder) first.
    #[error(
        "the blob store is claimed by another index ({owner}, in its object `{path}`): two daemons \
         with separate indexes on one store would each collect the other's blobs; give each its \
         own bucket or prefix, or remove that object if the other index is gone for good"
    )]
    ClaimedByOther {
        /// The other claimant, as it wrote itself.
        owner: String,
        /// The claim's key in the store.
        path: String,
    },
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

pub(crate) fn be_err(context: impl Into<String>) -> impl FnOnce(object_store::Error) -> CasError {
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

/// The blob store: names objects and checks arguments, and leaves the bytes to its engine
/// (see `backend.rs` for the contract every engine keeps).
#[derive(Clone, Debug)]
pub struct Cas {
    backend: Arc<dyn BlobBackend>,
    opts: CasOptions,
}

/// The key of the store's owner claim (see [`Cas::claim`]), outside `blobs/` and `uploads/`.
pub const OWNER_KEY: &str = "stowage-owner";

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
pub(crate) fn part_path(upload: &str, part: u32) -> Path {
    Path::from(format!("uploads/{upload}.{part:08}"))
}

pub(crate) fn combined_path(upload: &str) -> Path {
    Path::from(format!("uploads/{upload}.combined"))
}

/// The upload id a staging object name belongs to.
pub(crate) fn upload_of(name: &str) -> &str {
    name.split(['.', '#']).next().unwrap_or(name)
}

impl Cas {
    /// Opens the blob store on `backend`.
    pub fn open(backend: Backend, mut opts: CasOptions) -> Result<Cas, CasError> {
        if backend.is_remote() {
            // Object stores refuse multipart parts (all but the last) under 5 MiB.
            opts.part_size = opts.part_size.max(MIN_REMOTE_PART);
        }
        let tuning = object::Tuning {
            part_size: opts.part_size,
            max_parts_in_flight: opts.max_parts_in_flight,
            max_server_copy: opts.max_server_copy,
        };
        let backend: Arc<dyn BlobBackend> = match backend {
            Backend::Filesystem { root } => {
                Arc::new(fs::FsBackend::open(root, tuning, opts.direct_io)?)
            }
            Backend::Memory => Arc::new(ObjectBackend::new(
                Arc::new(InMemory::new()),
                tuning,
                true,
                None,
            )),
            Backend::Custom(store) => Arc::new(ObjectBackend::new(store, tuning, false, None)),
            Backend::S3 { store, uploads } => {
                Arc::new(ObjectBackend::new(store, tuning, false, Some(uploads)))
            }
        };
        Ok(Cas { backend, opts })
    }

    /// Waits until the background aborts of multipart uploads whose writer was dropped (a
    /// client that went away mid-request) have ended: for a clean shutdown, and for tests.
    pub async fn settle_aborts(&self) {
        self.backend.settle().await;
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
        self.backend.atomic_publish()
    }

    /// Checks that the store answers and accepts writes: puts a small probe object, reads it
    /// back, copies it create-if-absent twice (to learn whether the store refuses the second
    /// copy: see [`Cas::atomic_publish`]) and deletes what it wrote, within `timeout`.
    pub async fn probe(&self, timeout: std::time::Duration) -> Result<(), CasError> {
        tokio::time::timeout(timeout, self.backend.probe())
            .await
            .map_err(|_| CasError::Config(format!("no answer within {} s", timeout.as_secs())))??;
        tracing::info!(
            create_if_absent = self.atomic_publish(),
            "blob store probe passed"
        );
        Ok(())
    }

    /// Claims the store for the index `owner` (an id fixed at the index's creation). Start-up
    /// sweeps, garbage collection and fsck all take "no record in my index" to mean "nobody's",
    /// which holds only while one index uses the store: a second daemon with its own index on
    /// the same bucket and prefix is refused here, at start, instead of losing blobs later.
    pub async fn claim(&self, owner: &str) -> Result<(), CasError> {
        let path = Path::from(OWNER_KEY);
        let held = self
            .backend
            .claim(&path, Bytes::copy_from_slice(owner.as_bytes()))
            .await?;
        if held.as_ref() == owner.as_bytes() {
            return Ok(());
        }
        Err(CasError::ClaimedByOther {
            owner: String::from_utf8_lossy(&held).chars().take(128).collect(),
            path: OWNER_KEY.to_string(),
        })
    }

    /// Streams `body` into part `part` of upload `upload`, feeding every byte to `hasher`.
    ///
    /// At most `limit` bytes are accepted (`CasError::TooLarge` beyond, and the part is dropped).
    /// The part's bytes are synced before this returns; with `durable` its directory entry is
    /// too, so the part survives a crash (needed for chunks of a resumable session, not for a
    /// body that is committed right away).
    /// Returns the number of bytes written. On any error nothing of this part remains, but
    /// `hasher` may have seen some of its bytes: the caller must then rebuild its hash state
    /// from the parts that exist ([`Cas::rehash_parts`]). If the returned future is dropped
    /// (the client went away), what the write started is removed in the background.
    pub async fn write_part<S, E>(
        &self,
        upload: &str,
        part: u32,
        body: S,
        hasher: &mut Hasher,
        limit: u64,
        durable: bool,
    ) -> Result<u64, CasError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        let body = body.map(|chunk| chunk.map_err(|e| e.to_string())).boxed();
        self.backend
            .write_part(&part_path(upload, part), body, hasher, limit, durable)
            .await
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
        let mut chunks = backend::parts_stream(&*self.backend, upload, parts);
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            size += chunk.len() as u64;
            hasher.update(&chunk);
        }
        Ok((hasher, size))
    }

    /// Size of part `part` of `upload`, `None` when it is not stored.
    pub async fn part_size(&self, upload: &str, part: u32) -> Result<Option<u64>, CasError> {
        self.backend.head(&part_path(upload, part)).await
    }

    /// Publishes the parts of `upload` as blob `digest`, which the caller has verified, and
    /// removes the parts. Durable when it returns `Ok`. On an error the parts may remain: the
    /// caller removes them ([`Cas::abort`]).
    pub async fn commit(
        &self,
        upload: &str,
        parts: &[u32],
        digest: &Digest,
    ) -> Result<CommitOutcome, CasError> {
        self.backend
            .commit(upload, parts, &blob_path(digest), digest)
            .await
    }

    /// Removes every staged object of `upload` (best effort; stray staging is also swept on
    /// start by [`Cas::sweep_uploads`]).
    pub async fn abort(&self, upload: &str, parts: &[u32]) {
        self.backend.remove_staging(upload, parts).await;
    }

    /// Removes staging of uploads that are not in `live` (after a crash or restart), whatever
    /// its age. Returns how many staged objects went. See [`Cas::sweep_uploads`], which also
    /// aborts incomplete multipart uploads.
    pub async fn remove_stray_uploads(&self, live: &HashSet<String>) -> Result<usize, CasError> {
        self.backend.remove_stray_staging(live, None).await
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
        live: &HashSet<String>,
        before: Option<SystemTime>,
    ) -> Result<UploadSweep, CasError> {
        let staged = self.backend.remove_stray_staging(live, before).await?;
        let (multipart, multipart_failures) =
            self.backend.abort_stale_multipart(live, before).await;
        Ok(UploadSweep {
            staged,
            multipart,
            multipart_failures,
        })
    }

    /// The stored size of a blob, or `None` when the store has no such object.
    pub async fn size(&self, digest: &Digest) -> Result<Option<u64>, CasError> {
        self.backend.head(&blob_path(digest)).await
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
        let stream = match self.backend.open(&path, range, self.opts.direct_io).await {
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
        self.backend
            .delete(&blob_path(digest))
            .await
            .map_err(be_err(format!("deleting blob {digest}")))
    }

    /// Deletes the bytes of `digests`, several at a time (see `BlobBackend::delete_many`).
    /// Absent blobs are not an error. Nothing is still being deleted when it returns; on `Err`
    /// some may be gone and others not.
    pub async fn delete_many(&self, digests: &[Digest]) -> Result<(), CasError> {
        if digests.is_empty() {
            return Ok(());
        }
        self.backend
            .delete_many(digests.iter().map(blob_path).collect())
            .await
            .map_err(be_err(format!("deleting {} blobs", digests.len())))
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
