//! A TCP proxy that injects faults between two Stowage sites.
//!
//! [`FaultProxy`] listens on one address and forwards every accepted connection,
//! byte for byte, to an upstream address. While it runs, a [`Faults`] handle
//! (cheap to clone, `Send + Sync`) changes how the traffic is treated:
//!
//! * [`Faults::set_delay`] adds latency to every forwarded chunk, in both directions
//!   (chunks are pipelined, so the delay does not cap throughput);
//! * [`Faults::set_cut_rate`] aborts a connection (RST to both peers) with the given
//!   probability per chunk — a dropped chunk on TCP would silently corrupt the stream,
//!   so a "drop" is modelled as an abrupt connection failure instead;
//! * [`Faults::set_stall_rate`] holds a chunk back for [`Faults::stall_duration`]
//!   (2 s unless changed) with the given probability;
//! * [`Faults::reset_all`] resets every open connection now;
//! * [`Faults::partition`] / [`Faults::set_partitioned`] reset every open connection and
//!   reset new ones as soon as they are accepted, until the partition ends;
//! * [`Faults::heal`] clears all of the above.
//!
//! Resets are real TCP resets: the proxy sets `SO_LINGER` to zero before closing a
//! socket, so the peer's next read or write fails with `ECONNRESET`.
//!
//! Counters are available through [`Faults::stats`] / [`FaultProxy::stats`].

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, info_span, warn, Instrument};

/// How long a stalled chunk is held back unless [`Faults::set_stall_duration`] says otherwise.
pub const DEFAULT_STALL_DURATION: Duration = Duration::from_secs(2);

/// How long the proxy waits for the upstream to accept a connection before giving up
/// (and resetting the client connection).
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest chunk read from one side before it is forwarded to the other.
const CHUNK_SIZE: usize = 64 * 1024;

/// Chunks read but not yet written (per direction and connection); bounds the memory a
/// delayed or stalled connection holds.
const IN_FLIGHT_CHUNKS: usize = 256;

/// Back-off after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// A running fault-injecting TCP proxy.
///
/// Dropping it stops accepting and closes every proxied connection in the background;
/// [`FaultProxy::stop`] does the same and waits until it is done.
#[derive(Debug)]
pub struct FaultProxy {
    local_addr: SocketAddr,
    upstream: SocketAddr,
    faults: Faults,
    shutdown: watch::Sender<bool>,
    accept_task: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Binds `listen` (port 0 picks a free port) and starts forwarding accepted
    /// connections to `upstream`. Must be called from within a tokio runtime.
    pub async fn start(listen: SocketAddr, upstream: SocketAddr) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind(listen).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("fault proxy: binding listener on {listen}: {e}"),
            )
        })?;
        let local_addr = listener.local_addr().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("fault proxy: reading local address of listener bound to {listen}: {e}"),
            )
        })?;

        let faults = Faults::new();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let span = info_span!("faultproxy_accept", listen = %local_addr, %upstream);
        let accept_task = tokio::spawn(
            accept_loop(listener, upstream, Arc::clone(&faults.shared), shutdown_rx)
                .instrument(span),
        );
        info!(listen = %local_addr, %upstream, "fault proxy started");

        Ok(FaultProxy {
            local_addr,
            upstream,
            faults,
            shutdown,
            accept_task: Some(accept_task),
        })
    }

    /// The address the proxy listens on (with the real port if it was started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address every connection is forwarded to.
    pub fn upstream_addr(&self) -> SocketAddr {
        self.upstream
    }

    /// A handle to change the injected faults while the proxy runs.
    pub fn faults(&self) -> Faults {
        self.faults.clone()
    }

    /// A snapshot of the proxy's counters.
    pub fn stats(&self) -> Stats {
        self.faults.stats()
    }

    /// Stops accepting, closes every proxied connection and waits until all of the
    /// proxy's tasks have finished.
    pub async fn stop(mut self) {
        self.shutdown.send_replace(true);
        if let Some(task) = self.accept_task.take() {
            if let Err(e) = task.await {
                warn!(listen = %self.local_addr, error = %e, "fault proxy accept task failed");
            }
        }
        info!(listen = %self.local_addr, "fault proxy stopped");
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // The accept loop and every connection task watch this flag; they wind down on
        // their own (stop() additionally waits for them).
        self.shutdown.send_replace(true);
    }
}

/// A snapshot of a proxy's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections accepted by the listener (including the ones reset because of a partition).
    pub connections_accepted: u64,
    /// Connections reset right after accept because the proxy was partitioned.
    pub connections_refused: u64,
    /// Connections currently being proxied.
    pub connections_active: u64,
    /// Bytes forwarded from clients to the upstream.
    pub bytes_to_upstream: u64,
    /// Bytes forwarded from the upstream to clients.
    pub bytes_to_client: u64,
    /// Connections torn down by an injected fault: `reset_all`, partitions (including
    /// refused connections) and cuts.
    pub resets_injected: u64,
    /// Connections aborted by the cut rate (also counted in `resets_injected`).
    pub cuts: u64,
    /// Chunks held back by the stall rate.
    pub stalls: u64,
}

/// Control handle for a [`FaultProxy`]; clones share the same state.
#[derive(Clone)]
pub struct Faults {
    shared: Arc<Shared>,
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Faults")
            .field("delay", &self.delay())
            .field("cut_rate", &self.cut_rate())
            .field("stall_rate", &self.stall_rate())
            .field("stall_duration", &self.stall_duration())
            .field("partitioned", &self.is_partitioned())
            .field("stats", &self.stats())
            .finish()
    }
}

impl Faults {
    fn new() -> Faults {
        Faults {
            shared: Arc::new(Shared::new()),
        }
    }

    /// Latency added to each forwarded chunk, in each direction (zero disables it). A chunk
    /// read at `t` is written at `t + delay`; later chunks do not wait for earlier delays.
    pub fn set_delay(&self, delay: Duration) {
        self.shared
            .delay_nanos
            .store(duration_to_nanos(delay), Ordering::Relaxed);
    }

    /// The current per-chunk delay.
    pub fn delay(&self) -> Duration {
        Duration::from_nanos(self.shared.delay_nanos.load(Ordering::Relaxed))
    }

    /// Probability (clamped to `0.0..=1.0`, NaN counts as 0) that a forwarded chunk
    /// aborts its connection instead: both peers get a TCP reset.
    pub fn set_cut_rate(&self, rate: f64) {
        store_rate(&self.shared.cut_rate, rate);
    }

    /// The current cut probability per chunk.
    pub fn cut_rate(&self) -> f64 {
        load_rate(&self.shared.cut_rate)
    }

    /// Probability (clamped to `0.0..=1.0`, NaN counts as 0) that a forwarded chunk is
    /// held back for [`Faults::stall_duration`] before it is sent on.
    pub fn set_stall_rate(&self, rate: f64) {
        store_rate(&self.shared.stall_rate, rate);
    }

    /// The current stall probability per chunk.
    pub fn stall_rate(&self) -> f64 {
        load_rate(&self.shared.stall_rate)
    }

    /// How long a stalled chunk is held back (default [`DEFAULT_STALL_DURATION`]).
    pub fn set_stall_duration(&self, stall: Duration) {
        self.shared
            .stall_nanos
            .store(duration_to_nanos(stall), Ordering::Relaxed);
    }

    /// The current stall duration.
    pub fn stall_duration(&self) -> Duration {
        Duration::from_nanos(self.shared.stall_nanos.load(Ordering::Relaxed))
    }

    /// Resets (RST to both peers) every connection that is open now. New connections are
    /// not affected.
    pub fn reset_all(&self) {
        info!("fault injected: resetting all open connections");
        self.shared.bump_reset_epoch();
    }

    /// Starts a partition lasting `duration`: every open connection is reset now, and
    /// connections accepted before the partition ends are reset right away. Afterwards the
    /// proxy forwards normally again. A new call replaces the end of a running partition.
    pub fn partition(&self, duration: Duration) {
        let until = self
            .shared
            .now_nanos()
            .saturating_add(duration_to_nanos(duration))
            .max(1);
        self.shared
            .partition_until_nanos
            .store(until, Ordering::SeqCst);
        info!(?duration, "fault injected: partition started");
        self.shared.bump_reset_epoch();
    }

    /// Manual partition switch. `true` resets every open connection and keeps resetting
    /// new ones until `set_partitioned(false)` (or [`Faults::heal`]); `false` also ends a
    /// timed partition started by [`Faults::partition`].
    pub fn set_partitioned(&self, partitioned: bool) {
        if partitioned {
            self.shared.partitioned.store(true, Ordering::SeqCst);
            info!("fault injected: partitioned until further notice");
            self.shared.bump_reset_epoch();
        } else {
            self.shared.partitioned.store(false, Ordering::SeqCst);
            self.shared.partition_until_nanos.store(0, Ordering::SeqCst);
            info!("partition lifted");
        }
    }

    /// Whether new connections are currently being refused.
    pub fn is_partitioned(&self) -> bool {
        self.shared.is_partitioned()
    }

    /// Clears every fault: no delay, no cuts, no stalls, no partition. Open connections
    /// are left alone; the stall duration setting is kept.
    pub fn heal(&self) {
        self.set_delay(Duration::ZERO);
        self.set_cut_rate(0.0);
        self.set_stall_rate(0.0);
        self.shared.partitioned.store(false, Ordering::SeqCst);
        self.shared.partition_until_nanos.store(0, Ordering::SeqCst);
        info!("all faults cleared");
    }

    /// A snapshot of the proxy's counters.
    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        Stats {
            connections_accepted: c.accepted.load(Ordering::Relaxed),
            connections_refused: c.refused.load(Ordering::Relaxed),
            connections_active: c.active.load(Ordering::Relaxed),
            bytes_to_upstream: c.bytes_to_upstream.load(Ordering::Relaxed),
            bytes_to_client: c.bytes_to_client.load(Ordering::Relaxed),
            resets_injected: c.resets_injected.load(Ordering::Relaxed),
            cuts: c.cuts.load(Ordering::Relaxed),
            stalls: c.stalls.load(Ordering::Relaxed),
        }
    }
}

/// State shared between the control handle, the accept loop and the connection tasks.
#[derive(Debug)]
struct Shared {
    /// Reference point for `partition_until_nanos`.
    base: Instant,
    delay_nanos: AtomicU64,
    /// `f64` bit patterns.
    cut_rate: AtomicU64,
    stall_rate: AtomicU64,
    stall_nanos: AtomicU64,
    partitioned: AtomicBool,
    /// End of a timed partition in nanoseconds since `base`; 0 means none.
    partition_until_nanos: AtomicU64,
    /// Bumped to make every open connection reset itself.
    reset_epoch: watch::Sender<u64>,
    counters: Counters,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    refused: AtomicU64,
    active: AtomicU64,
    bytes_to_upstream: AtomicU64,
    bytes_to_client: AtomicU64,
    resets_injected: AtomicU64,
    cuts: AtomicU64,
    stalls: AtomicU64,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            base: Instant::now(),
            delay_nanos: AtomicU64::new(0),
            cut_rate: AtomicU64::new(0f64.to_bits()),
            stall_rate: AtomicU64::new(0f64.to_bits()),
            stall_nanos: AtomicU64::new(duration_to_nanos(DEFAULT_STALL_DURATION)),
            partitioned: AtomicBool::new(false),
            partition_until_nanos: AtomicU64::new(0),
            reset_epoch: watch::Sender::new(0),
            counters: Counters::default(),
        }
    }

    fn now_nanos(&self) -> u64 {
        duration_to_nanos(self.base.elapsed())
    }

    fn is_partitioned(&self) -> bool {
        self.partitioned.load(Ordering::SeqCst)
            || self.now_nanos() < self.partition_until_nanos.load(Ordering::SeqCst)
    }

    fn bump_reset_epoch(&self) {
        self.reset_epoch
            .send_modify(|epoch| *epoch = epoch.wrapping_add(1));
    }

    /// Faults decided when a chunk is read: a partition in effect or a cut aborts the
    /// connection before the chunk is forwarded.
    fn check_chunk(&self, dir: Direction) -> Result<(), Abort> {
        if self.is_partitioned() {
            return Err(Abort::Partitioned);
        }
        if roll(load_rate(&self.cut_rate)) {
            return Err(Abort::Cut(dir));
        }
        Ok(())
    }

    /// The configured per-chunk latency.
    fn delay(&self) -> Duration {
        Duration::from_nanos(self.delay_nanos.load(Ordering::Relaxed))
    }

    /// Holds the stream back for the stall duration if the stall rate fires.
    async fn maybe_stall(&self, dir: Direction) {
        if roll(load_rate(&self.stall_rate)) {
            let stall = Duration::from_nanos(self.stall_nanos.load(Ordering::Relaxed));
            self.counters.stalls.fetch_add(1, Ordering::Relaxed);
            debug!(direction = dir.as_str(), ?stall, "stalling chunk");
            tokio::time::sleep(stall).await;
        }
    }

    fn count_forwarded(&self, dir: Direction, bytes: usize) {
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        let counter = match dir {
            Direction::ToUpstream => &self.counters.bytes_to_upstream,
            Direction::ToClient => &self.counters.bytes_to_client,
        };
        counter.fetch_add(bytes, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToUpstream,
    ToClient,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::ToUpstream => "client->upstream",
            Direction::ToClient => "upstream->client",
        }
    }
}

/// Why forwarding stopped before both directions reached end of stream.
#[derive(Debug)]
enum Abort {
    /// The cut rate fired on a chunk travelling in this direction.
    Cut(Direction),
    /// A partition started while the connection was open.
    Partitioned,
    /// A real I/O error on one of the sockets.
    Io {
        direction: Direction,
        op: &'static str,
        error: io::Error,
    },
}

impl fmt::Display for Abort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Abort::Cut(dir) => write!(f, "cut injected on {}", dir.as_str()),
            Abort::Partitioned => f.write_str("partition in effect"),
            Abort::Io {
                direction,
                op,
                error,
            } => write!(f, "{op} failed on {}: {error}", direction.as_str()),
        }
    }
}

/// Decrements the active-connection gauge however the connection task ends.
struct ActiveGuard(Arc<Shared>);

impl ActiveGuard {
    fn new(shared: Arc<Shared>) -> ActiveGuard {
        shared.counters.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(shared)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.counters.active.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    let mut next_id: u64 = 0;
    // Handed to connection tasks; `shutdown` itself is borrowed by the select below.
    let conn_shutdown = shutdown.clone();
    loop {
        tokio::select! {
            biased;
            _ = stopped(&mut shutdown) => break,
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                log_join_result(joined);
            }
            accepted = listener.accept() => {
                let (client, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                        continue;
                    }
                };
                shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
                let id = next_id;
                next_id = next_id.wrapping_add(1);
                // Subscribe before the partition check: a partition that starts after the
                // check is then seen through the epoch, one that started before by the check.
                let reset_rx = shared.reset_epoch.subscribe();
                if shared.is_partitioned() {
                    shared.counters.refused.fetch_add(1, Ordering::Relaxed);
                    shared.counters.resets_injected.fetch_add(1, Ordering::Relaxed);
                    info!(conn_id = id, %peer, "partitioned: resetting new connection");
                    reset_stream(client, "client");
                    continue;
                }
                let span = info_span!("faultproxy_conn", conn_id = id, %peer, %upstream);
                connections.spawn(
                    handle_connection(
                        client,
                        upstream,
                        Arc::clone(&shared),
                        reset_rx,
                        conn_shutdown.clone(),
                    )
                    .instrument(span),
                );
            }
        }
    }
    drop(listener);
    debug!(
        open = connections.len(),
        "listener closed, waiting for connections to close"
    );
    while let Some(joined) = connections.join_next().await {
        log_join_result(joined);
    }
}

/// Resolves once the proxy is stopping (or its owner is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // Either the flag became true or the sender was dropped: both mean stop. The guard
    // returned on success is dropped right here so it is never held across an await.
    let _ = shutdown.wait_for(|&stop| stop).await;
}

fn log_join_result(joined: Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined {
        warn!(error = %e, "connection task failed");
    }
}

async fn handle_connection(
    mut client: TcpStream,
    upstream_addr: SocketAddr,
    shared: Arc<Shared>,
    mut reset_rx: watch::Receiver<u64>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _active = ActiveGuard::new(Arc::clone(&shared));
    if let Err(e) = client.set_nodelay(true) {
        debug!(error = %e, "setting TCP_NODELAY on the client socket failed");
    }

    let connect = tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(upstream_addr));
    let mut upstream = tokio::select! {
        connected = connect => match connected {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                warn!(error = %e, "connecting to upstream failed, resetting client");
                reset_stream(client, "client");
                return;
            }
            Err(_) => {
                warn!(timeout = ?UPSTREAM_CONNECT_TIMEOUT, "connecting to upstream timed out, resetting client");
                reset_stream(client, "client");
                return;
            }
        },
        Ok(()) = reset_rx.changed() => {
            shared.counters.resets_injected.fetch_add(1, Ordering::Relaxed);
            info!("reset injected while connecting to upstream");
            reset_stream(client, "client");
            return;
        }
        _ = stopped(&mut shutdown) => return,
    };
    if let Err(e) = upstream.set_nodelay(true) {
        debug!(error = %e, "setting TCP_NODELAY on the upstream socket failed");
    }
    debug!("connection established");

    let outcome = {
        let (mut client_rd, mut client_wr) = client.split();
        let (mut upstream_rd, mut upstream_wr) = upstream.split();
        let forward = async {
            tokio::try_join!(
                pump(
                    &mut client_rd,
                    &mut upstream_wr,
                    Direction::ToUpstream,
                    &shared
                ),
                pump(
                    &mut upstream_rd,
                    &mut client_wr,
                    Direction::ToClient,
                    &shared
                ),
            )
        };
        tokio::select! {
            forwarded = forward => match forwarded {
                Ok((up, down)) => Outcome::Finished { up, down },
                Err(abort) => Outcome::Aborted(abort),
            },
            Ok(()) = reset_rx.changed() => Outcome::ResetInjected,
            _ = stopped(&mut shutdown) => Outcome::Shutdown,
        }
    };

    match outcome {
        Outcome::Finished { up, down } => {
            debug!(
                bytes_to_upstream = up,
                bytes_to_client = down,
                "connection closed"
            );
        }
        Outcome::Shutdown => {
            debug!("proxy stopping, closing connection");
        }
        Outcome::ResetInjected | Outcome::Aborted(Abort::Partitioned) => {
            shared
                .counters
                .resets_injected
                .fetch_add(1, Ordering::Relaxed);
            info!("reset injected");
            reset_stream(client, "client");
            reset_stream(upstream, "upstream");
        }
        Outcome::Aborted(abort @ Abort::Cut(_)) => {
            shared.counters.cuts.fetch_add(1, Ordering::Relaxed);
            shared
                .counters
                .resets_injected
                .fetch_add(1, Ordering::Relaxed);
            info!(reason = %abort, "connection cut");
            reset_stream(client, "client");
            reset_stream(upstream, "upstream");
        }
        Outcome::Aborted(abort @ Abort::Io { .. }) => {
            // Pass the failure on to the other peer the same way it would see it
            // without the proxy in between.
            debug!(reason = %abort, "connection failed, resetting both sides");
            reset_stream(client, "client");
            reset_stream(upstream, "upstream");
        }
    }
}

#[derive(Debug)]
enum Outcome {
    Finished { up: u64, down: u64 },
    Aborted(Abort),
    ResetInjected,
    Shutdown,
}

/// Forwards one direction until end of stream, then half-closes the writer.
///
/// Reading and writing run concurrently, joined by a bounded queue: each chunk is stamped
/// with the time it may be written (`read time + delay`), so the delay adds latency
/// without limiting throughput to one chunk per delay, as a long link would behave.
/// Stalls are applied on the writing side and hold back everything queued behind them.
async fn pump<R, W>(
    reader: &mut R,
    writer: &mut W,
    dir: Direction,
    shared: &Shared,
) -> Result<u64, Abort>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (queue, mut queued) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT_CHUNKS);

    let read_side = async move {
        let mut buf = vec![0u8; CHUNK_SIZE];
        loop {
            let n = reader.read(&mut buf).await.map_err(|error| Abort::Io {
                direction: dir,
                op: "read",
                error,
            })?;
            if n == 0 {
                // Dropping `queue` tells the writing side to finish and half-close.
                return Ok(());
            }
            shared.check_chunk(dir)?;
            let due = Instant::now() + shared.delay();
            if queue.send((due, buf[..n].to_vec())).await.is_err() {
                // The writing side only goes away by failing, which ends the join.
                return Ok(());
            }
        }
    };

    let write_side = async {
        let mut total: u64 = 0;
        while let Some((due, chunk)) = queued.recv().await {
            shared.maybe_stall(dir).await;
            tokio::time::sleep_until(due.into()).await;
            writer.write_all(&chunk).await.map_err(|error| Abort::Io {
                direction: dir,
                op: "write",
                error,
            })?;
            shared.count_forwarded(dir, chunk.len());
            total = total.saturating_add(u64::try_from(chunk.len()).unwrap_or(u64::MAX));
        }
        if let Err(e) = writer.shutdown().await {
            debug!(direction = dir.as_str(), error = %e, "half-close failed");
        }
        Ok(total)
    };

    let ((), total) = tokio::try_join!(read_side, write_side)?;
    Ok(total)
}

/// Closes `stream` with `SO_LINGER` 0 so the peer gets a RST instead of a FIN.
fn reset_stream(stream: TcpStream, side: &'static str) {
    if let Err(e) = stream.set_zero_linger() {
        debug!(side, error = %e, "setting SO_LINGER 0 failed; the peer may see a FIN instead of a RST");
    }
    drop(stream);
}

fn roll(probability: f64) -> bool {
    probability >= 1.0 || (probability > 0.0 && rand::random::<f64>() < probability)
}

fn sanitize_rate(rate: f64) -> f64 {
    if rate.is_nan() {
        0.0
    } else {
        rate.clamp(0.0, 1.0)
    }
}

fn store_rate(cell: &AtomicU64, rate: f64) {
    cell.store(sanitize_rate(rate).to_bits(), Ordering::Relaxed);
}

fn load_rate(cell: &AtomicU64) -> f64 {
    f64::from_bits(cell.load(Ordering::Relaxed))
}

fn duration_to_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
