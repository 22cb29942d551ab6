//! Connections for tonic: [`incoming`] feeds `Server::serve_with_incoming_shutdown`.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::{reap, shutdown_signal, tls_handshake, ConnInfo, Listener, RateLimit, Slot};

/// How many ready connections may wait for tonic to take them.
const HANDOFF_QUEUE: usize = 64;

/// A connection ready for tonic: TLS done (if configured), holding its slot under the
/// listener's connection cap until dropped.
pub struct Conn {
    io: ConnIo,
    info: ConnInfo,
    _slot: Slot,
}

enum ConnIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// What is known about this connection.
    pub fn info(&self) -> &ConnInfo {
        &self.info
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            ConnIo::Plain(s) => s.is_write_vectored(),
            ConnIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(s) => Pin::new(s).poll_flush(cx),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The stream of ready connections returned by [`incoming`].
pub struct Incoming {
    rx: mpsc::Receiver<Conn>,
}

impl fmt::Debug for Incoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming").finish_non_exhaustive()
    }
}

impl futures::Stream for Incoming {
    type Item = io::Result<Conn>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|conn| conn.map(Ok))
    }
}

/// Accepts connections on `listener` for tonic's `Server::serve_with_incoming_shutdown`.
///
/// Must be called inside a Tokio runtime: it starts the accept task (`grpc-accept`). Each
/// accepted connection gets its own task (`grpc-handshake`) so a slow client never blocks
/// the others: TLS connections must finish the handshake within `handshake_timeout`, plain
/// ones must send their first byte within it (the HTTP/2 preface follows the connect at
/// once). Connections over `max_connections` are closed at once. Every [`Conn`] carries its
/// [`ConnInfo`], which tonic puts into each request's extensions.
///
/// Once past the handshake, connections are tonic's: the header and idle limits of
/// [`super::Limits`] do not apply to them; configure tonic's own (`http2_keepalive_interval`,
/// `http2_keepalive_timeout`, `max_connection_age`, `timeout`, `http2_max_header_list_size`).
///
/// The stream ends when `shutdown` turns true (or its sender is dropped): the listening
/// socket is closed and pending handshakes are abandoned; pass the same signal to tonic.
pub fn incoming(listener: Listener, shutdown: watch::Receiver<bool>) -> Incoming {
    let (tx, rx) = mpsc::channel(HANDOFF_QUEUE);
    let span = tracing::info_span!("task", name = "grpc-accept", local = %listener.local);
    tokio::spawn(accept_loop(listener, tx, shutdown).instrument(span));
    Incoming { rx }
}

async fn accept_loop(
    listener: Listener,
    tx: mpsc::Sender<Conn>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut accept_log = RateLimit::new(Duration::from_secs(1));
    let mut cap_log = RateLimit::new(Duration::from_secs(10));
    tracing::info!(local = %listener.local, tls = listener.tls.is_some(), "gRPC listener accepting");
    loop {
        tokio::select! {
            Some(done) = tasks.join_next(), if !tasks.is_empty() => reap(done),
            _ = tx.closed() => break,
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
                    continue;
                };
                let prepare = prepare(
                    stream,
                    remote,
                    slot,
                    listener.local,
                    listener.tls.as_ref().map(|tls| tls.acceptor()),
                    listener.limits.handshake_timeout,
                    listener.stats.clone(),
                );
                let tx = tx.clone();
                let mut stop = shutdown.clone();
                let span = tracing::info_span!("task", name = "grpc-handshake", %remote);
                tasks.spawn(
                    async move {
                        tokio::select! {
                            conn = prepare => {
                                if let Some(conn) = conn {
                                    // Fails only when tonic is gone; the connection drops.
                                    let _ = tx.send(conn).await;
                                }
                            }
                            _ = shutdown_signal(&mut stop) => {}
                        }
                    }
                    .instrument(span),
                );
            }
        }
    }
    let local = listener.local;
    drop(listener);
    tasks.shutdown().await;
    tracing::info!(%local, "gRPC listener stopped accepting");
}

async fn prepare(
    stream: TcpStream,
    remote: SocketAddr,
    slot: Slot,
    listener_local: SocketAddr,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    handshake_timeout: Duration,
    stats: super::ConnStats,
) -> Option<Conn> {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
    let local = stream.local_addr().unwrap_or(listener_local);
    match acceptor {
        Some(acceptor) => {
            let (stream, client_cert) =
                tls_handshake(acceptor, stream, remote, handshake_timeout, &stats).await?;
            Some(Conn {
                io: ConnIo::Tls(Box::new(stream)),
                info: ConnInfo {
                    remote,
                    local,
                    tls: true,
                    client_cert,
                },
                _slot: slot,
            })
        }
        None => {
            let mut first = [0u8; 1];
            match tokio::time::timeout(handshake_timeout, stream.peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(Ok(_)) => return None,
                Ok(Err(error)) => {
                    tracing::debug!(%error, "connection failed before its first byte");
                    return None;
                }
                Err(_) => {
                    super::ConnStats::bump(&stats.inner.timed_out_header);
                    tracing::debug!("nothing received within the handshake timeout; closing");
                    return None;
                }
            }
            Some(Conn {
                io: ConnIo::Plain(stream),
                info: ConnInfo {
                    remote,
                    local,
                    tls: false,
                    client_cert: None,
                },
                _slot: slot,
            })
        }
    }
}
