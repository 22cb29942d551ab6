//! Serving HTTP (HTTP/1.1 and HTTP/2 through hyper's auto builder) over a [`Listener`].

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tower::ServiceExt;
use tracing::Instrument;

use super::{
    reap, refuse_plain, shutdown_signal, tls_handshake, ConnInfo, ConnStats, Limits, Listener,
    RateLimit, Slot, MAX_PENDING_REFUSALS,
};
use crate::tls::ReloadableTls;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// hyper's smallest allowed HTTP/1 read buffer (`max_buf_size` panics below it).
const HYPER_MIN_BUF: usize = 8192;

/// Serves `service` on `listener` until `shutdown` turns true (or its sender is dropped).
///
/// `service` is any cloneable tower service of `Request<hyper::body::Incoming>`, such as an
/// `axum::Router`. Each connection runs in its own task (`http-conn`): the TLS handshake
/// (when configured) under `handshake_timeout`, then hyper's auto builder (HTTP/1.1 and h2)
/// with the header limits and timeouts of [`Limits`], `TCP_NODELAY` on. Every request
/// carries a [`ConnInfo`] in its extensions.
///
/// Over `max_connections`, a plain connection is answered `503` (`Retry-After: 1`,
/// `Connection: close`) and closed; a TLS one is closed.
///
/// HTTP/1.1 limits as hyper applies them (and the tests observe): a head larger than
/// `max_header_bytes` (at least 8 KiB) or with more than `max_headers` fields gets
/// `431 Request Header Fields Too Large` and the connection is closed (a client still
/// writing a multi-megabyte head reads the `431`, then its writes fail with `EPIPE`); a head
/// not complete within `header_read_timeout` closes the connection without an answer (the
/// client reads EOF). hyper's header timer does not run while a response is being sent, so
/// long downloads are not affected. HTTP/2: an oversized header list gets `431` on its
/// stream, which is then reset (`REFUSED_STREAM`); the connection goes on.
///
/// Shutdown: accepting stops and the listening socket is closed at once; each connection is
/// shut down gracefully (HTTP/1.1: closed after the response in progress; h2: GOAWAY, streams
/// in progress finish); connections still open `shutdown_grace` later are dropped. Returns
/// when every connection task has ended. Errors from `accept` (e.g. `EMFILE`) never end it.
pub async fn serve_http<S, B>(
    listener: Listener,
    service: S,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()>
where
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let ctx = Arc::new(HttpCtx {
        builder: http_builder(&listener.limits),
        tls: listener.tls.clone(),
        limits: listener.limits.clone(),
        stats: listener.stats.clone(),
        local: listener.local,
    });
    let refusals = Arc::new(Semaphore::new(MAX_PENDING_REFUSALS));
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut accept_log = RateLimit::new(Duration::from_secs(1));
    let mut cap_log = RateLimit::new(Duration::from_secs(10));
    tracing::info!(local = %listener.local, tls = listener.tls.is_some(), "HTTP listener serving");
    loop {
        tokio::select! {
            Some(done) = tasks.join_next(), if !tasks.is_empty() => reap(done),
            accepted = listener.accept(&mut shutdown, &mut accept_log) => {
                let Some((stream, remote)) = accepted else { break };
                let Some(slot) = listener.admit() else {
                    if cap_log.ready() {
                        tracing::warn!(
                            local = %listener.local,
                            max_connections = listener.limits.max_connections,
                            "connection limit reached; refusing new connections"
                        );
                    }
                    if listener.tls.is_none() {
                        refuse_plain(stream, remote, &refusals, &mut tasks);
                    }
                    continue;
                };
                let span = tracing::info_span!("task", name = "http-conn", %remote);
                tasks.spawn(
                    run_connection(
                        ctx.clone(),
                        service.clone(),
                        stream,
                        remote,
                        slot,
                        shutdown.clone(),
                    )
                    .instrument(span),
                );
            }
        }
    }
    let local = listener.local;
    drop(listener);
    tracing::info!(%local, open = tasks.len(), "HTTP listener stopped accepting; draining connections");
    while let Some(done) = tasks.join_next().await {
        reap(done);
    }
    tracing::info!(%local, "HTTP listener drained");
    Ok(())
}

/// What every connection task of one [`serve_http`] shares.
struct HttpCtx {
    builder: auto::Builder<TracedExecutor>,
    tls: Option<ReloadableTls>,
    limits: Limits,
    stats: ConnStats,
    local: SocketAddr,
}

fn http_builder(limits: &Limits) -> auto::Builder<TracedExecutor> {
    let mut builder = auto::Builder::new(TracedExecutor);
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_header_bytes.max(HYPER_MIN_BUF));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// Spawns hyper's HTTP/2 stream tasks inside the span of their connection.
#[derive(Debug, Clone, Copy)]
struct TracedExecutor;

impl<F> hyper::rt::Executor<F> for TracedExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        tokio::spawn(future.in_current_span());
    }
}

async fn run_connection<S, B>(
    ctx: Arc<HttpCtx>,
    service: S,
    stream: TcpStream,
    remote: SocketAddr,
    slot: Slot,
    mut shutdown: watch::Receiver<bool>,
) where
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let _slot = slot;
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
    let local = stream.local_addr().unwrap_or(ctx.local);
    match &ctx.tls {
        None => {
            let info = ConnInfo {
                remote,
                local,
                tls: false,
                client_cert: None,
            };
            serve_connection(&ctx, service, stream, info, shutdown).await;
        }
        Some(tls) => {
            let handshake = tls_handshake(
                tls.acceptor(),
                stream,
                remote,
                ctx.limits.handshake_timeout,
                &ctx.stats,
            );
            let done = tokio::select! {
                done = handshake => done,
                _ = shutdown_signal(&mut shutdown) => None,
            };
            let Some((stream, client_cert)) = done else {
                return;
            };
            let info = ConnInfo {
                remote,
                local,
                tls: true,
                client_cert,
            };
            serve_connection(&ctx, service, stream, info, shutdown).await;
        }
    }
}

/// Why the watchdog wants a connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quiet {
    /// No request has started since the connection was ready.
    NoRequest,
    /// No request in flight for the idle period.
    Idle,
}

async fn serve_connection<S, B, IO>(
    ctx: &HttpCtx,
    service: S,
    io: IO,
    info: ConnInfo,
    mut shutdown: watch::Receiver<bool>,
) where
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = &ctx.limits;
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(CountingIo {
        inner: io,
        activity: activity.clone(),
    });
    let service = ConnService {
        inner: service,
        info,
        activity: activity.clone(),
    };
    let mut conn = pin!(ctx.builder.serve_connection(io, service));
    let mut watchdog = Box::pin(quiet(
        activity.clone(),
        limits.header_read_timeout,
        limits.idle_timeout,
    ));
    // Whether the close of this connection has been counted (watchdog) already.
    let mut counted = false;
    let mut closing = false;
    let mut shutting_down = false;
    // Armed (reset) when shutdown starts; not polled before.
    let grace = tokio::time::sleep(limits.shutdown_grace);
    let mut grace = pin!(grace);
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    on_connection_error(&*error, counted, &activity, &ctx.stats);
                }
                return;
            }
            reason = &mut watchdog => {
                if closing {
                    // Asked to close a while ago, nothing in flight since, still open (an h2
                    // peer ignoring GOAWAY, a head trickling in): drop it.
                    tracing::debug!("connection did not close after a graceful shutdown; dropping it");
                    return;
                }
                counted = true;
                match reason {
                    Quiet::NoRequest => {
                        ConnStats::bump(&ctx.stats.inner.timed_out_header);
                        tracing::debug!("no request within the header read timeout; closing");
                    }
                    Quiet::Idle => {
                        ConnStats::bump(&ctx.stats.inner.timed_out_idle);
                        tracing::debug!("idle; closing");
                    }
                }
                conn.as_mut().graceful_shutdown();
                closing = true;
                watchdog = Box::pin(quiet(
                    activity.clone(),
                    limits.header_read_timeout,
                    limits.header_read_timeout,
                ));
            }
            _ = shutdown_signal(&mut shutdown), if !shutting_down => {
                shutting_down = true;
                conn.as_mut().graceful_shutdown();
                grace.as_mut().reset(tokio::time::Instant::now() + limits.shutdown_grace);
            }
            _ = &mut grace, if shutting_down => {
                tracing::debug!("connection still busy after the shutdown grace; dropping it");
                return;
            }
        }
    }
}

fn on_connection_error(
    error: &(dyn std::error::Error + Send + Sync + 'static),
    counted: bool,
    activity: &Activity,
    stats: &ConnStats,
) {
    let timed_out = error
        .downcast_ref::<hyper::Error>()
        .is_some_and(hyper::Error::is_timeout);
    if timed_out {
        if counted {
            return;
        }
        // hyper's header timer runs both while a head trickles in and while a keep-alive
        // connection waits for its next request: tell them apart by whether anything
        // arrived since the last request ended.
        if activity.received_since_rest() || activity.requests() == 0 {
            ConnStats::bump(&stats.inner.timed_out_header);
            tracing::debug!("request head not complete within the header read timeout; closed");
        } else {
            ConnStats::bump(&stats.inner.timed_out_idle);
            tracing::debug!("idle keep-alive connection closed by the header timer");
        }
    } else {
        tracing::debug!(%error, "connection ended with an error");
    }
}

/// Requests in flight on one connection, and bytes received, for the idle watchdog.
struct Activity {
    in_flight: watch::Sender<usize>,
    requests: AtomicU64,
    bytes_read: AtomicU64,
    /// `bytes_read` when the last request ended.
    bytes_at_rest: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            in_flight: watch::Sender::new(0),
            requests: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            bytes_at_rest: AtomicU64::new(0),
        }
    }

    fn start(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.send_modify(|n| *n += 1);
        InFlight {
            activity: self.clone(),
        }
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn received_since_rest(&self) -> bool {
        self.bytes_read.load(Ordering::Relaxed) > self.bytes_at_rest.load(Ordering::Relaxed)
    }
}

/// A request in flight: from the call of the service until its response body has been sent
/// (or dropped). Long downloads and slow handlers therefore never look idle.
struct InFlight {
    activity: Arc<Activity>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let read = self.activity.bytes_read.load(Ordering::Relaxed);
        self.activity.bytes_at_rest.store(read, Ordering::Relaxed);
        self.activity
            .in_flight
            .send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Resolves when no request has been in flight for the limit: `before_first` while no
/// request has started yet, `after` once one has.
async fn quiet(activity: Arc<Activity>, before_first: Duration, after: Duration) -> Quiet {
    let mut rx = activity.in_flight.subscribe();
    loop {
        let in_flight = *rx.borrow_and_update();
        if in_flight > 0 {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            continue;
        }
        let first = activity.requests() == 0;
        let limit = if first { before_first } else { after };
        match tokio::time::timeout(limit, rx.changed()).await {
            Err(_) if first => return Quiet::NoRequest,
            Err(_) => return Quiet::Idle,
            Ok(Ok(())) => {}
            Ok(Err(_)) => std::future::pending::<()>().await,
        }
    }
}

/// Counts the bytes read from a connection.
struct CountingIo<IO> {
    inner: IO,
    activity: Arc<Activity>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for CountingIo<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let read = (buf.filled().len() - before) as u64;
            this.activity.bytes_read.fetch_add(read, Ordering::Relaxed);
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for CountingIo<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The per-connection service hyper drives: inserts the [`ConnInfo`] and tracks requests in
/// flight around the application's service.
struct ConnService<S> {
    inner: S,
    info: ConnInfo,
    activity: Arc<Activity>,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for ConnService<S>
where
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
{
    type Response = Response<TrackedBody<B>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        let in_flight = self.activity.start();
        request.extensions_mut().insert(self.info.clone());
        let service = self.inner.clone();
        Box::pin(async move {
            let response = service.oneshot(request).await.map_err(Into::into)?;
            Ok(response.map(|body| TrackedBody {
                body: Box::pin(body),
                _in_flight: in_flight,
            }))
        })
    }
}

/// A response body that keeps its request counted as in flight until it is done.
struct TrackedBody<B> {
    body: Pin<Box<B>>,
    _in_flight: InFlight,
}

impl<B: http_body::Body> http_body::Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.get_mut().body.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
