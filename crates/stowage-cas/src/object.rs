//! The object store engine (S3, GCS, Azure, memory; also the generic half of the local engine).
//!
//! Parts are written through multipart uploads (`part_size` pieces, a few in flight), guarded
//! so that a dropped writer's upload is aborted (`multipart.rs`). A single staged part is
//! published by a server-side copy, create-if-absent where the store has it; several parts, or
//! one larger than the store copies in one request, are streamed into a multipart upload at the
//! blob's key, which appears only when complete.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use stowage_core::{Digest, Hasher};

use crate::backend::{
    claim_store, delete_quiet, head_size, parts_stream, probe_store, BlobBackend, Body, Chunks,
};
use crate::{
    be_err, blob_path, combined_path, multipart, next_chunk, part_path, read, upload_of, CasError,
    CommitOutcome, S3Uploads,
};

/// How parts are written and published.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tuning {
    /// Size of each multipart part buffered in memory before it is written.
    pub part_size: usize,
    /// Parts of one upload written concurrently.
    pub max_parts_in_flight: usize,
    /// The largest object the store copies server-side in one request.
    pub max_server_copy: u64,
}

/// An engine over any `object_store`.
#[derive(Debug)]
pub(crate) struct ObjectBackend {
    store: Arc<dyn ObjectStore>,
    tuning: Tuning,
    /// Publishes are create-if-absent whatever the probe says (memory, the local file system).
    always_atomic: bool,
    /// The store's create-if-absent copies were seen to work by the probe.
    conditional: AtomicBool,
    /// Aborts of multipart uploads whose writer was dropped.
    aborts: multipart::Aborts,
    /// Lists and aborts incomplete multipart uploads (S3 only).
    pending_uploads: Option<S3Uploads>,
}

impl ObjectBackend {
    /// An engine over `store`; `always_atomic` for stores whose copies are create-if-absent by
    /// construction; `pending_uploads` where incomplete multipart uploads can be listed.
    pub(crate) fn new(
        store: Arc<dyn ObjectStore>,
        tuning: Tuning,
        always_atomic: bool,
        pending_uploads: Option<S3Uploads>,
    ) -> ObjectBackend {
        ObjectBackend {
            store,
            tuning,
            always_atomic,
            conditional: AtomicBool::new(false),
            aborts: multipart::Aborts::default(),
            pending_uploads,
        }
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
                if self.head(&blob_path(digest)).await?.is_some() {
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
        if self.head(&blob_path(digest)).await?.is_some() {
            return Ok(CommitOutcome::AlreadyPresent);
        }
        let multipart = self
            .store
            .put_multipart(target)
            .await
            .map_err(be_err(format!("starting to publish blob {digest}")))?;
        let multipart = self.aborts.guard(multipart, target.to_string());
        let mut writer = WriteMultipart::new_with_chunk_size(multipart, self.tuning.part_size);
        let written: Result<(), CasError> = async {
            let mut chunks = parts_stream(self, upload, parts);
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk?;
                writer
                    .wait_for_capacity(self.tuning.max_parts_in_flight)
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
}

#[async_trait]
impl BlobBackend for ObjectBackend {
    fn atomic_publish(&self) -> bool {
        self.always_atomic || self.conditional.load(Ordering::Relaxed)
    }

    async fn probe(&self) -> Result<(), CasError> {
        let conditional = probe_store(&self.store).await?;
        self.conditional.store(conditional, Ordering::Relaxed);
        Ok(())
    }

    async fn write_part(
        &self,
        path: &Path,
        mut body: Body<'_>,
        hasher: &mut Hasher,
        limit: u64,
        _durable: bool,
    ) -> Result<u64, CasError> {
        let multipart = self
            .store
            .put_multipart(path)
            .await
            .map_err(be_err(format!("starting part {path}")))?;
        // Aborted if this future is dropped before the upload ends (the client went away).
        let multipart = self.aborts.guard(multipart, path.to_string());
        let mut writer = WriteMultipart::new_with_chunk_size(multipart, self.tuning.part_size);
        let mut written: u64 = 0;
        let result: Result<(), CasError> = async {
            while let Some(chunk) = next_chunk(&mut body, &mut written, limit).await? {
                hasher.update(&chunk);
                writer
                    .wait_for_capacity(self.tuning.max_parts_in_flight)
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

    async fn open(
        &self,
        path: &Path,
        range: Option<Range<u64>>,
        direct: bool,
    ) -> Result<Chunks, object_store::Error> {
        read::open(&self.store, path, range, direct).await
    }

    async fn head(&self, path: &Path) -> Result<Option<u64>, CasError> {
        head_size(&self.store, path).await
    }

    async fn commit(
        &self,
        upload: &str,
        parts: &[u32],
        target: &Path,
        digest: &Digest,
    ) -> Result<CommitOutcome, CasError> {
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
                let too_large = self.tuning.max_server_copy < u64::MAX
                    && self
                        .head(&part)
                        .await?
                        .is_some_and(|size| size > self.tuning.max_server_copy);
                (!too_large).then_some(part)
            }
            _ => None,
        };
        let outcome = match single {
            Some(source) => self.publish_copy(&source, target, digest).await?,
            None => self.publish_streamed(upload, parts, target, digest).await?,
        };
        self.remove_staging(upload, parts).await;
        Ok(outcome)
    }

    async fn claim(&self, path: &Path, owner: Bytes) -> Result<Bytes, CasError> {
        claim_store(&self.store, path, owner).await
    }

    fn list(
        &self,
        prefix: &Path,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        self.store.list(Some(prefix))
    }

    async fn delete(&self, path: &Path) -> Result<(), object_store::Error> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn delete_many(&self, paths: Vec<Path>) -> Result<(), object_store::Error> {
        let mut results = self
            .store
            .delete_stream(futures::stream::iter(paths.into_iter().map(Ok)).boxed());
        // Drained to the end even after a failure: the stream's deletions run concurrently,
        // and none may still be in flight when this returns.
        let mut first = None;
        while let Some(result) = results.next().await {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    async fn remove_stray_staging(
        &self,
        live: &HashSet<String>,
        before: Option<SystemTime>,
    ) -> Result<usize, CasError> {
        let mut listing = self.store.list(Some(&Path::from("uploads")));
        let mut stray = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(be_err("listing uploads"))?;
            if let Some(name) = meta.location.filename() {
                let old_enough = before.is_none_or(|b| SystemTime::from(meta.last_modified) < b);
                if !live.contains(upload_of(name)) && old_enough {
                    stray.push(meta.location);
                }
            }
        }
        let n = stray.len();
        for path in stray {
            delete_quiet(self, &path).await;
        }
        Ok(n)
    }

    async fn abort_stale_multipart(
        &self,
        live: &HashSet<String>,
        before: Option<SystemTime>,
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

    async fn settle(&self) {
        self.aborts.settle().await;
    }
}
