//! The one interface of the blob store's engines: the local file system engine (`fs.rs`: direct
//! I/O writes, publishing by link) and the object store engine (`object.rs`: S3, GCS, Azure,
//! memory; multipart writes, publishing by server-side copy). [`crate::Cas`] checks arguments,
//! names objects (`blob_path`, `part_path`) and delegates the bytes to one of them.
//!
//! Every method says what holds when it returns, because the index relies on it: a blob is
//! recorded as present only after `commit` returned `Ok`.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use stowage_core::{Digest, Hasher};

use crate::{be_err, combined_path, part_path, CasError, CommitOutcome};

/// A request body: its chunks, or the reason it broke off (a disconnect, a timeout).
pub(crate) type Body<'a> = BoxStream<'a, Result<Bytes, String>>;

/// The bytes of a stored object, as read from the store.
pub(crate) type Chunks = BoxStream<'static, Result<Bytes, object_store::Error>>;

/// An engine that holds blob and staging objects by key (see the crate docs for the layout).
#[async_trait]
pub(crate) trait BlobBackend: Send + Sync + std::fmt::Debug {
    /// Whether two concurrent commits of one digest publish it exactly once (create-if-absent).
    /// On object stores this is learnt by [`BlobBackend::probe`]; false before it.
    fn atomic_publish(&self) -> bool;

    /// Checks that the store answers and accepts writes, and learns whether its
    /// create-if-absent copies work. Leaves nothing behind when it returns `Ok`. Not bounded in
    /// time: the caller bounds it.
    async fn probe(&self) -> Result<(), CasError>;

    /// Streams `body` into the staged object `path`, feeding every byte to `hasher`, and returns
    /// the number of bytes written. An empty body leaves no object.
    ///
    /// - More than `limit` bytes: [`CasError::TooLarge`]; a broken body: [`CasError::Body`].
    /// - Durable on `Ok`: the local engine has synced the file (and, with `durable`, its
    ///   directory entry, so that it survives a crash); object stores have completed the
    ///   upload.
    /// - On `Err` nothing of the object remains. If the future is dropped instead, object
    ///   stores abort the multipart upload in the background (failing that,
    ///   [`BlobBackend::abort_stale_multipart`] finds it); the local engine may leave a part
    ///   file cut short, which is never counted (a part is recorded only after `Ok`), is
    ///   overwritten by a retry of the chunk, and goes with its session or with
    ///   [`BlobBackend::remove_stray_staging`].
    async fn write_part(
        &self,
        path: &Path,
        body: Body<'_>,
        hasher: &mut Hasher,
        limit: u64,
        durable: bool,
    ) -> Result<u64, CasError>;

    /// Opens the object at `path`, whole or the byte range `range` (end exclusive; the caller
    /// has checked it lies within the object), as a stream of chunks. An absent object is
    /// `object_store::Error::NotFound`. `direct` says the bytes are read once: the local engine
    /// then bypasses the page cache where it can; object stores ignore it.
    async fn open(
        &self,
        path: &Path,
        range: Option<Range<u64>>,
        direct: bool,
    ) -> Result<Chunks, object_store::Error>;

    /// The size of the object at `path`, `None` when it is absent.
    async fn head(&self, path: &Path) -> Result<Option<u64>, CasError>;

    /// Publishes the staged `parts` of `upload`, joined in order (none: an empty blob), at
    /// `target`, the key of blob `digest`, whose bytes the caller has verified.
    ///
    /// - Durable on `Ok`: the bytes are on stable storage (file, directories synced) or the
    ///   store confirmed the write. Only then may the index say the blob exists.
    /// - Create-if-absent where [`BlobBackend::atomic_publish`]: of concurrent commits of one
    ///   digest, one answers `Stored` and the others `AlreadyPresent`. Elsewhere several may
    ///   write the same bytes to the same key, which still leaves one object.
    /// - `AlreadyPresent`: an object was already at `target`; it is kept as it is (content
    ///   addressing: the same key holds the same bytes).
    /// - The staging is removed on `Ok`; on `Err` it may remain, for the caller to remove
    ///   ([`BlobBackend::remove_staging`]) or to retry the commit with.
    async fn commit(
        &self,
        upload: &str,
        parts: &[u32],
        target: &Path,
        digest: &Digest,
    ) -> Result<CommitOutcome, CasError>;

    /// Every object under `prefix` (committed objects only: no unfinished writes).
    fn list(&self, prefix: &Path) -> BoxStream<'static, object_store::Result<ObjectMeta>>;

    /// Deletes the object at `path`. Deleting an absent object is not an error.
    async fn delete(&self, path: &Path) -> Result<(), object_store::Error>;

    /// Deletes the objects at `paths`, several at a time (`object_store`'s `delete_stream`:
    /// batched requests on object stores, a few parallel unlinks on the file system). Absent
    /// objects are not an error. Returns only once no deletion is in flight any more, so a
    /// caller holding locks over the call knows nothing is removed after it releases them; on
    /// `Err` (the first failure) some objects may be gone and others not.
    async fn delete_many(&self, paths: Vec<Path>) -> Result<(), object_store::Error>;

    /// Removes the staged objects of uploads not in `live` (named by their upload id), and
    /// with `before` only those last written before it. Returns how many went.
    async fn remove_stray_staging(
        &self,
        live: &HashSet<String>,
        before: Option<SystemTime>,
    ) -> Result<usize, CasError>;

    /// Aborts incomplete multipart uploads that no writer will finish: under staging (those of
    /// uploads not in `live`) and at blob keys, with `before` only those started before it.
    /// Returns how many were aborted and how many listings or aborts failed (logged). Engines
    /// whose unfinished writes cannot be listed (or leave nothing to list) do nothing.
    async fn abort_stale_multipart(
        &self,
        _live: &HashSet<String>,
        _before: Option<SystemTime>,
    ) -> (usize, usize) {
        (0, 0)
    }

    /// Writes `owner` at `path` unless an object is there already, and returns what is there
    /// afterwards: `owner` when this call or an earlier one by the same owner wrote it, else
    /// the first claimant's bytes. Create-if-absent where the store has it; elsewhere a
    /// read-then-write, which two daemons starting at the same instant could both pass.
    async fn claim(&self, path: &Path, owner: Bytes) -> Result<Bytes, CasError>;

    /// Waits until the background clean-ups of dropped writes started so far have ended.
    async fn settle(&self) {}

    /// Removes every staged object of `upload` (best effort: failures are logged, and stray
    /// staging is swept later).
    async fn remove_staging(&self, upload: &str, parts: &[u32]) {
        for part in parts {
            delete_quiet(self, &part_path(upload, *part)).await;
        }
        delete_quiet(self, &combined_path(upload)).await;
    }
}

/// Deletes `path`, logging a failure instead of returning it.
pub(crate) async fn delete_quiet<B: BlobBackend + ?Sized>(backend: &B, path: &Path) {
    match backend.delete(path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => tracing::warn!(%path, error = %e, "removing staged object"),
    }
}

/// The bytes of `parts` of `upload`, in order, as one stream.
pub(crate) fn parts_stream<'a, B: BlobBackend + ?Sized>(
    backend: &'a B,
    upload: &'a str,
    parts: &'a [u32],
) -> BoxStream<'a, Result<Bytes, CasError>> {
    futures::stream::iter(parts)
        .then(move |part| async move {
            let path = part_path(upload, *part);
            let context = format!("reading part {path}");
            match backend.open(&path, None, false).await {
                Ok(s) => s.map(move |c| c.map_err(be_err(context.clone()))).boxed(),
                Err(e) => futures::stream::once(async move { Err(be_err(context)(e)) }).boxed(),
            }
        })
        .flatten()
        .boxed()
}

/// [`BlobBackend::claim`] on an `object_store`.
pub(crate) async fn claim_store(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    owner: Bytes,
) -> Result<Bytes, CasError> {
    let create = object_store::PutOptions {
        mode: object_store::PutMode::Create,
        ..Default::default()
    };
    match store.put_opts(path, owner.clone().into(), create).await {
        Ok(_) => return Ok(owner),
        Err(object_store::Error::AlreadyExists { .. })
        | Err(object_store::Error::Precondition { .. }) => {}
        Err(object_store::Error::NotSupported { .. })
        | Err(object_store::Error::NotImplemented { .. }) => {
            if head_size(store, path).await?.is_none() {
                store
                    .put(path, owner.clone().into())
                    .await
                    .map_err(be_err(format!("writing the store's owner at {path}")))?;
                return Ok(owner);
            }
        }
        Err(e) => return Err(be_err(format!("writing the store's owner at {path}"))(e)),
    }
    store
        .get(path)
        .await
        .map_err(be_err(format!("reading the store's owner at {path}")))?
        .bytes()
        .await
        .map_err(be_err(format!("reading the store's owner at {path}")))
}

/// The probe of [`BlobBackend::probe`] on an `object_store`: puts a small object, reads it
/// back, copies it create-if-absent twice (the second copy must be refused) and deletes what it
/// wrote. Returns whether create-if-absent copies work.
pub(crate) async fn probe_store(store: &Arc<dyn ObjectStore>) -> Result<bool, CasError> {
    let id = uuid::Uuid::new_v4();
    let path = Path::from(format!("probe/{id}"));
    let copy = Path::from(format!("probe/{id}.copy"));
    let body = Bytes::from_static(b"stowage probe");
    store
        .put(&path, body.clone().into())
        .await
        .map_err(be_err("writing a probe object"))?;
    let got = store
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
    let conditional = match store.copy_if_not_exists(&path, &copy).await {
        Ok(()) => match store.copy_if_not_exists(&path, &copy).await {
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
    match store.delete(&copy).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => tracing::warn!(path = %copy, error = %e, "removing the probe copy"),
    }
    let conditional = conditional?;
    store
        .delete(&path)
        .await
        .map_err(be_err("deleting the probe object"))?;
    Ok(conditional)
}

/// The size of `path` in `store`, `None` when absent.
pub(crate) async fn head_size(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
) -> Result<Option<u64>, CasError> {
    match store.head(path).await {
        Ok(meta) => Ok(Some(meta.size)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(be_err(format!("stat of {path}"))(e)),
    }
}
