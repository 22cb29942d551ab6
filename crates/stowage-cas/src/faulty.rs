//! A fault-injecting wrapper around any object store, for tests: failed requests, added
//! latency, reads that never answer, and torn multipart writes (parts uploaded, the completion
//! lost).
//!
//! Faults are counted down: `fail_puts(2)` fails the next two writes, then writes work again.
//! Everything else passes through to the wrapped store.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};

#[derive(Debug, Default)]
struct State {
    fail_puts: AtomicU32,
    fail_reads: AtomicU32,
    fail_copies: AtomicU32,
    tear_uploads: AtomicU32,
    stall_reads: AtomicU32,
    stalled: tokio::sync::Notify,
    latency_ms: AtomicU64,
    injected: AtomicU64,
    delete_requests: AtomicU64,
}

/// The knobs of a [`FaultyStore`]; cheap to clone, shared with the store.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    state: Arc<State>,
}

fn take(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

impl Faults {
    /// The next `n` writes (puts, starts of multipart uploads) fail.
    pub fn fail_puts(&self, n: u32) {
        self.state.fail_puts.store(n, Ordering::SeqCst);
    }

    /// The next `n` reads fail.
    pub fn fail_reads(&self, n: u32) {
        self.state.fail_reads.store(n, Ordering::SeqCst);
    }

    /// The next `n` copies (publishing a blob) fail.
    pub fn fail_copies(&self, n: u32) {
        self.state.fail_copies.store(n, Ordering::SeqCst);
    }

    /// The next `n` multipart uploads are torn: their parts are written, their completion
    /// fails and nothing is published.
    pub fn tear_uploads(&self, n: u32) {
        self.state.tear_uploads.store(n, Ordering::SeqCst);
    }

    /// The next `n` reads of an object's bytes (not `head` requests) never answer: they stay
    /// pending until dropped. Each one, when it stalls, signals [`Faults::stalled`].
    pub fn stall_reads(&self, n: u32) {
        self.state.stall_reads.store(n, Ordering::SeqCst);
    }

    /// Resolves once a read has stalled (counting stalls since the last call; one that
    /// happened before this call counts).
    pub async fn stalled(&self) {
        self.state.stalled.notified().await;
    }

    /// Every request waits this long first.
    pub fn set_latency(&self, d: Duration) {
        self.state
            .latency_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Delete requests received so far (`delete_stream` calls: one for a single object, one
    /// for a batch that stores such as S3 serve with one request per thousand objects).
    pub fn delete_requests(&self) -> u64 {
        self.state.delete_requests.load(Ordering::SeqCst)
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.state.injected.load(Ordering::SeqCst)
    }

    async fn delay(&self) {
        let ms = self.state.latency_ms.load(Ordering::SeqCst);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }

    fn fault(&self, counter: &AtomicU32, what: &str) -> object_store::Result<()> {
        if take(counter) {
            self.state.injected.fetch_add(1, Ordering::SeqCst);
            return Err(injected(what));
        }
        Ok(())
    }
}

fn injected(what: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "faulty",
        source: format!("injected fault: {what}").into(),
    }
}

/// An object store that injects [`Faults`] into the requests it passes to `inner`.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    faults: Faults,
}

impl FaultyStore {
    /// Wraps `inner`; returns the store and its knobs.
    pub fn new(inner: Arc<dyn ObjectStore>) -> (Arc<FaultyStore>, Faults) {
        let faults = Faults::default();
        (
            Arc::new(FaultyStore {
                inner,
                faults: faults.clone(),
            }),
            faults,
        )
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

#[derive(Debug)]
struct TornUpload {
    inner: Box<dyn MultipartUpload>,
    tear: bool,
    faults: Faults,
}

#[async_trait]
impl MultipartUpload for TornUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        if self.tear {
            self.faults.state.injected.fetch_add(1, Ordering::SeqCst);
            let _ = self.inner.abort().await;
            return Err(injected("the upload broke off after its parts"));
        }
        self.inner.complete().await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.faults.delay().await;
        self.faults.fault(&self.faults.state.fail_puts, "put")?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.faults.delay().await;
        self.faults
            .fault(&self.faults.state.fail_puts, "multipart upload")?;
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(TornUpload {
            inner,
            tear: take(&self.faults.state.tear_uploads),
            faults: self.faults.clone(),
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.faults.delay().await;
        self.faults.fault(&self.faults.state.fail_reads, "get")?;
        if !options.head && take(&self.faults.state.stall_reads) {
            self.faults.state.injected.fetch_add(1, Ordering::SeqCst);
            self.faults.state.stalled.notify_one();
            futures::future::pending::<()>().await;
        }
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.faults.delay().await;
        self.faults
            .fault(&self.faults.state.fail_reads, "get ranges")?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.faults
            .state
            .delete_requests
            .fetch_add(1, Ordering::SeqCst);
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.faults.delay().await;
        self.faults.fault(&self.faults.state.fail_copies, "copy")?;
        self.inner.copy_opts(from, to, options).await
    }
}
