//! The hardened accept loop shared by the HTTP API and the gRPC listeners.
//!
//! A [`Listener`] is a bound TCP socket with an optional [`ReloadableTls`], a connection cap
//! and the timeouts of [`Limits`]; its [`ConnStats`] are readable for metrics. It is driven
//! either by [`serve_http`] (an axum `Router` or any tower service over hyper) or, for tonic,
//! by [`incoming`] (a stream of connections for `Server::serve_with_incoming_shutdown`).
//!
//! What it defends against, in order of a connection's life:
//! * too many connections: past [`Limits::max_connections`] a new connection is refused at
//!   once (plain HTTP gets a minimal `503` with `Retry-After: 1`), so descriptors held by
//!   stalled clients cannot starve the process;
//! * slow TLS handshakes: each runs in its own task under [`Limits::handshake_timeout`];
//! * slow request heads (slowloris): the head must be complete within
//!   [`Limits::header_read_timeout`], and it is bounded in size and header count;
//! * idle keep-alive connections: closed after [`Limits::idle_timeout`] with no request in
//!   flight (a request in flight, however slow, is never cut by this);
//! * descriptor exhaustion: accept errors such as `EMFILE` pause the loop for 50 ms instead of
//!   spinning or ending it, and [`raise_nofile_limit`] lifts the soft limit at start.
//!
//! Every connection is served in its own task, named and traced (`http-conn`, `grpc-handshake`).

mod grpc;
mod http;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::tls::{CertIdentity, ReloadableTls};

pub use grpc::{incoming, Conn, Incoming};
pub use http::serve_http;

/// Limits applied to every connection of a [`Listener`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once (TLS handshakes included); more are refused. At least 1.
    pub max_connections: usize,
    /// The TLS handshake must complete within this.
    pub handshake_timeout: Duration,
    /// A request head must arrive completely within this. For HTTP/1.1 this is hyper's
    /// header read timeout, which also runs while a keep-alive connection waits for its next
    /// request (so an idle HTTP/1.1 connection lasts at most the smaller of this and
    /// `idle_timeout`). A new connection (either protocol) must also deliver its first
    /// request head within this.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed gracefully.
    pub idle_timeout: Duration,
    /// The largest request head. HTTP/1.1: hyper's read buffer limit (hyper's minimum is
    /// 8 KiB, so smaller values act as 8 KiB); a larger head gets `431` and the connection
    /// is closed. HTTP/2: the header list size limit (RFC 9113 accounting, 32 bytes of
    /// overhead per field); a larger head gets `431` and its stream is reset.
    pub max_header_bytes: usize,
    /// The most header fields in an HTTP/1.1 request head; more get `431`.
    pub max_headers: usize,
    /// On shutdown, connections still busy this long after the signal are dropped.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// What is known about the connection a request arrived on.
///
/// HTTP: inserted into every request's extensions (axum: `Extension<ConnInfo>`). gRPC: the
/// `Connected::ConnectInfo` of [`Conn`], so handlers read `request.extensions().get::<ConnInfo>()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// The peer's address.
    pub remote: SocketAddr,
    /// Our address the connection arrived at.
    pub local: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The identity of the client certificate, present only when the client presented one
    /// and it verified against the listener's client CA.
    pub client_cert: Option<Arc<CertIdentity>>,
}

/// Connection counters of one listener, shared with its tasks (cheap to clone).
#[derive(Clone, Default)]
pub struct ConnStats {
    inner: Arc<StatsInner>,
}

#[derive(Default)]
struct StatsInner {
    open: AtomicU64,
    accepted: AtomicU64,
    refused_over_limit: AtomicU64,
    handshake_failed: AtomicU64,
    timed_out_header: AtomicU64,
    timed_out_idle: AtomicU64,
}

/// A point-in-time copy of [`ConnStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnStatsSnapshot {
    /// Connections open now (gauge), handshakes included.
    pub open: u64,
    /// Connections accepted from the kernel (refused ones included).
    pub accepted: u64,
    /// Connections refused because `max_connections` were open.
    pub refused_over_limit: u64,
    /// TLS handshakes that failed or timed out, and verified client certificates that could
    /// not be read.
    pub handshake_failed: u64,
    /// Connections closed because a request head did not arrive in time (slow or partial
    /// heads, or nothing at all on a new connection).
    pub timed_out_header: u64,
    /// Connections closed after `idle_timeout` (or, HTTP/1.1, hyper's header timer) with no
    /// request in flight and nothing new received.
    pub timed_out_idle: u64,
}

impl ConnStats {
    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.inner.open.load(Ordering::Relaxed)
    }

    /// Connections accepted from the kernel so far.
    pub fn accepted(&self) -> u64 {
        self.inner.accepted.load(Ordering::Relaxed)
    }

    /// Connections refused over the cap so far.
    pub fn refused_over_limit(&self) -> u64 {
        self.inner.refused_over_limit.load(Ordering::Relaxed)
    }

    /// Failed TLS handshakes so far.
    pub fn handshake_failed(&self) -> u64 {
        self.inner.handshake_failed.load(Ordering::Relaxed)
    }

    /// Connections closed for a late request head so far.
    pub fn timed_out_header(&self) -> u64 {
        self.inner.timed_out_header.load(Ordering::Relaxed)
    }

    /// Connections closed for idleness so far.
    pub fn timed_out_idle(&self) -> u64 {
        self.inner.timed_out_idle.load(Ordering::Relaxed)
    }

    /// All counters at once.
    pub fn snapshot(&self) -> ConnStatsSnapshot {
        ConnStatsSnapshot {
            open: self.open(),
            accepted: self.accepted(),
            refused_over_limit: self.refused_over_limit(),
            handshake_failed: self.handshake_failed(),
            timed_out_header: self.timed_out_header(),
            timed_out_idle: self.timed_out_idle(),
        }
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl fmt::Debug for ConnStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.snapshot(), f)
    }
}

/// A bound listening socket with its TLS configuration, limits and counters.
pub struct Listener {
    tcp: TcpListener,
    local: SocketAddr,
    tls: Option<ReloadableTls>,
    limits: Limits,
    stats: ConnStats,
    slots: Arc<Semaphore>,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("local", &self.local)
            .field("tls", &self.tls.is_some())
            .field("limits", &self.limits)
            .field("stats", &self.stats)
            .finish()
    }
}

impl Listener {
    /// Binds `addr`. With `tls`, every connection must complete a TLS handshake first.
    pub async fn bind(
        addr: SocketAddr,
        tls: Option<ReloadableTls>,
        limits: Limits,
    ) -> io::Result<Listener> {
        let tcp = TcpListener::bind(addr).await?;
        Listener::from_tokio(tcp, tls, limits)
    }

    /// Wraps an already bound listener (e.g. one passed in by socket activation).
    pub fn from_tokio(
        tcp: TcpListener,
        tls: Option<ReloadableTls>,
        limits: Limits,
    ) -> io::Result<Listener> {
        if limits.max_connections == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "Limits::max_connections must be at least 1",
            ));
        }
        let local = tcp.local_addr()?;
        let slots = Arc::new(Semaphore::new(
            limits.max_connections.min(Semaphore::MAX_PERMITS),
        ));
        Ok(Listener {
            tcp,
            local,
            tls,
            limits,
            stats: ConnStats::default(),
            slots,
        })
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The listener's counters.
    pub fn stats(&self) -> ConnStats {
        self.stats.clone()
    }

    /// The listener's limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Accepts the next connection, or `None` once `shutdown` turns true (or its sender is
    /// gone). Errors that concern one connection are skipped; others (`EMFILE`, `ENFILE`,
    /// `ENOBUFS`...) are logged at most once a second and pause accepting for 50 ms.
    async fn accept(
        &self,
        shutdown: &mut watch::Receiver<bool>,
        log: &mut RateLimit,
    ) -> Option<(TcpStream, SocketAddr)> {
        loop {
            let accepted = tokio::select! {
                biased;
                _ = shutdown_signal(shutdown) => return None,
                accepted = self.tcp.accept() => accepted,
            };
            match accepted {
                Ok((stream, remote)) => {
                    ConnStats::bump(&self.stats.inner.accepted);
                    return Some((stream, remote));
                }
                Err(error) if is_per_connection_error(&error) => {
                    tracing::debug!(%error, "accept: connection failed before it was accepted");
                }
                Err(error) => {
                    if log.ready() {
                        tracing::warn!(
                            %error,
                            local = %self.local,
                            "accept failed; pausing accepts for 50 ms"
                        );
                    }
                    tokio::select! {
                        _ = shutdown_signal(shutdown) => return None,
                        _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                    }
                }
            }
        }
    }

    /// Takes a slot under the connection cap, or counts the refusal.
    fn admit(&self) -> Option<Slot> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => {
                self.stats.inner.open.fetch_add(1, Ordering::Relaxed);
                Some(Slot {
                    _permit: permit,
                    stats: self.stats.clone(),
                })
            }
            Err(_) => {
                ConnStats::bump(&self.stats.inner.refused_over_limit);
                None
            }
        }
    }
}

/// How long accepting pauses after an error such as `EMFILE`.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// A connection's place under the cap; freed (and `open` decremented) on drop.
struct Slot {
    _permit: OwnedSemaphorePermit,
    stats: ConnStats,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.stats.inner.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Resolves once shutdown is requested or the sender is gone.
async fn shutdown_signal(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

fn is_per_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Lets a log line through at most once per second.
struct RateLimit {
    last: Option<Instant>,
    every: Duration,
}

impl RateLimit {
    fn new(every: Duration) -> Self {
        RateLimit { last: None, every }
    }

    fn ready(&mut self) -> bool {
        let now = Instant::now();
        match self.last {
            Some(last) if now.duration_since(last) < self.every => false,
            _ => {
                self.last = Some(now);
                true
            }
        }
    }
}

/// The answer to a plain HTTP connection over the cap.
const OVER_LIMIT_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
Retry-After: 1\r\n\
Connection: close\r\n\
Content-Length: 0\r\n\
\r\n";

/// How long the over-limit answer may take, in total.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);

/// How many refusals may be in progress at once; past that a connection is just closed.
const MAX_PENDING_REFUSALS: usize = 32;

/// Answers a plain HTTP connection over the cap with `503` and closes it, best effort: the
/// answer is written, the write side shut, and what the client already sent is drained
/// (closing with unread data would reset the connection and could destroy the answer),
/// all within one second.
fn refuse_plain(
    mut stream: TcpStream,
    remote: SocketAddr,
    refusals: &Arc<Semaphore>,
    tasks: &mut JoinSet<()>,
) {
    let Ok(permit) = refusals.clone().try_acquire_owned() else {
        return;
    };
    let span = tracing::info_span!("task", name = "http-refuse", %remote);
    tasks.spawn(
        async move {
            let _permit = permit;
            let answer = async {
                stream.write_all(OVER_LIMIT_RESPONSE).await?;
                stream.shutdown().await?;
                let mut sink = [0u8; 1024];
                while stream.read(&mut sink).await? > 0 {}
                Ok::<_, io::Error>(())
            };
            match tokio::time::timeout(REFUSAL_TIMEOUT, answer).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%error, "over-limit answer failed"),
                Err(_) => tracing::debug!("over-limit answer timed out"),
            }
        }
        .instrument(span),
    );
}

/// Reaps one finished connection task, logging a panic.
fn reap(result: Result<(), tokio::task::JoinError>) {
    if let Err(error) = result {
        if error.is_panic() {
            tracing::error!(%error, "connection task panicked");
        }
    }
}

/// Performs a server TLS handshake under `limit` and reads the verified client certificate's
/// identity. `None` (counted in `handshake_failed`) when the handshake fails or times out, or
/// when a verified client certificate cannot be read (the connection is then refused rather
/// than treated as anonymous).
async fn tls_handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    remote: SocketAddr,
    limit: Duration,
    stats: &ConnStats,
) -> Option<(
    tokio_rustls::server::TlsStream<TcpStream>,
    Option<Arc<CertIdentity>>,
)> {
    let stream = match tokio::time::timeout(limit, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            ConnStats::bump(&stats.inner.handshake_failed);
            tracing::debug!(%remote, %error, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            ConnStats::bump(&stats.inner.handshake_failed);
            tracing::debug!(%remote, ?limit, "TLS handshake timed out");
            return None;
        }
    };
    // With a client verifier configured, rustls only completes the handshake if a presented
    // certificate verified against the client CA, so any certificate here is a verified one.
    let client_cert = match stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
    {
        None => None,
        Some(der) => match CertIdentity::from_der(der.as_ref()) {
            Ok(identity) => Some(Arc::new(identity)),
            Err(error) => {
                ConnStats::bump(&stats.inner.handshake_failed);
                tracing::warn!(%remote, %error, "verified client certificate cannot be read; closing");
                return None;
            }
        },
    };
    Some((stream, client_cert))
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns `(old soft, new soft)`.
///
/// Call it once at start: the listeners hold a descriptor per connection and the defaults
/// (often 1024, sometimes 256) are far below [`Limits::max_connections`].
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let (old_soft, _hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    let new_soft = rlimit::increase_nofile_limit(u64::MAX)?;
    Ok((old_soft, new_soft))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn raise_nofile_limit_reaches_the_hard_limit() {
        let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
        // Lower the soft limit first (always allowed) so there is something to raise.
        let lowered = soft.min(hard).min(1024);
        rlimit::setrlimit(rlimit::Resource::NOFILE, lowered, hard).unwrap();
        let (old, new) = raise_nofile_limit().unwrap();
        assert_eq!(old, lowered);
        let (soft_after, hard_after) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
        assert_eq!(hard_after, hard);
        assert_eq!(soft_after, hard_after);
        assert_eq!(new, soft_after);
    }

    #[test]
    fn rate_limit_lets_one_line_through_per_period() {
        let mut limit = RateLimit::new(Duration::from_secs(3600));
        assert!(limit.ready());
        assert!(!limit.ready());
    }

    #[test]
    fn defaults() {
        let limits = Limits::default();
        assert_eq!(limits.max_connections, 4096);
        assert_eq!(limits.handshake_timeout, Duration::from_secs(10));
        assert_eq!(limits.header_read_timeout, Duration::from_secs(10));
        assert_eq!(limits.idle_timeout, Duration::from_secs(60));
        assert_eq!(limits.max_header_bytes, 64 * 1024);
        assert_eq!(limits.max_headers, 100);
    }
}
