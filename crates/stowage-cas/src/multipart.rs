//! Multipart uploads that do not outlive their writer.
//!
//! An object store's multipart upload that is neither completed nor aborted stays on the store
//! (S3 keeps its parts, billed and invisible to listings, until someone aborts it). The writer
//! of a part or a streamed publish aborts on its error paths, but when the request future is
//! dropped (the client went away in the middle of a `PATCH`, and the HTTP server dropped the
//! handler) no code of the writer runs any more. [`Guarded`] wraps the store's upload and, when
//! dropped while still open, aborts it from a named background task.
//!
//! Those tasks are tracked by an [`Aborts`] handle, so a test or a clean shutdown can wait for
//! them ([`Aborts::settle`]). What a crash or a failed abort still leaves behind is found later
//! by the stale-upload sweep (`Cas::sweep_uploads`).

use async_trait::async_trait;
use object_store::{MultipartUpload, PutPayload, PutResult, UploadPart};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// The background aborts started by dropped uploads of one blob store.
#[derive(Clone, Debug, Default)]
pub(crate) struct Aborts {
    tasks: TaskTracker,
}

impl Aborts {
    /// Waits until every abort started so far has ended (aborts started meanwhile are waited
    /// for too).
    pub(crate) async fn settle(&self) {
        self.tasks.close();
        self.tasks.wait().await;
        self.tasks.reopen();
    }

    /// Wraps `upload` (at `location`, for messages) so that it is aborted unless completed.
    pub(crate) fn guard(
        &self,
        upload: Box<dyn MultipartUpload>,
        location: String,
    ) -> Box<dyn MultipartUpload> {
        Box::new(Guarded {
            inner: Some(upload),
            location,
            open: true,
            aborts: self.clone(),
        })
    }
}

/// A multipart upload that is aborted when dropped before it completed or was aborted.
#[derive(Debug)]
struct Guarded {
    /// Taken only by `drop`.
    inner: Option<Box<dyn MultipartUpload>>,
    location: String,
    /// Neither completed nor aborted (successfully) yet.
    open: bool,
    aborts: Aborts,
}

/// The error of a use after drop; no caller can reach it (the wrapper is gone by then).
fn spent(location: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "multipart guard",
        source: format!("multipart upload to {location} used after it was dropped").into(),
    }
}

#[async_trait]
impl MultipartUpload for Guarded {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        match self.inner.as_mut() {
            Some(inner) => inner.put_part(data),
            None => {
                let err = spent(&self.location);
                Box::pin(async move { Err(err) })
            }
        }
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let inner = self.inner.as_mut().ok_or_else(|| spent(&self.location))?;
        // Dropped while completing: whether the store completed it is unknown, so the drop
        // aborts (an abort of a completed upload only fails with "no such upload").
        let done = inner.complete().await;
        if done.is_ok() {
            self.open = false;
        }
        done
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        let inner = self.inner.as_mut().ok_or_else(|| spent(&self.location))?;
        let aborted = inner.abort().await;
        if aborted.is_ok() {
            self.open = false;
        }
        aborted
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let Some(mut inner) = self.inner.take() else {
            return;
        };
        if !self.open {
            return;
        }
        let location = std::mem::take(&mut self.location);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                path = %location,
                "an unfinished multipart upload was dropped outside a runtime; left to the \
                 stale-upload sweep"
            );
            return;
        };
        let span = tracing::info_span!("task", name = "multipart_abort", path = %location);
        self.aborts.tasks.spawn_on(
            async move {
                tracing::debug!("task started");
                match inner.abort().await {
                    Ok(()) => tracing::info!("aborted an unfinished multipart upload"),
                    Err(e) => tracing::warn!(
                        error = %e,
                        "aborting an unfinished multipart upload failed; left to the \
                         stale-upload sweep"
                    ),
                }
                tracing::debug!("task ended");
            }
            .instrument(span),
            &runtime,
        );
    }
}
