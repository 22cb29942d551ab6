use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::RngCore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use super::{FaultProxy, Faults, Stats};

/// Upper bound for any single network step in these tests.
const STEP: Duration = Duration::from_secs(5);

fn localhost0() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// An echo server on 127.0.0.1:0 that writes back everything it reads.
struct Echo {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo_server() -> Echo {
    let listener = TcpListener::bind(localhost0())
        .await
        .expect("bind echo server");
    let addr = listener.local_addr().expect("echo server address");
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut rd, mut wr) = stream.split();
                // Errors are expected here whenever a test resets the connection.
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
            });
        }
    });
    Echo { addr, task }
}

async fn proxy_to(upstream: SocketAddr) -> FaultProxy {
    FaultProxy::start(localhost0(), upstream)
        .await
        .expect("start fault proxy")
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    timeout(STEP, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

async fn connect(proxy: &FaultProxy) -> TcpStream {
    within("connect", TcpStream::connect(proxy.local_addr()))
        .await
        .expect("connect to proxy")
}

/// Sends `msg` and reads the same number of bytes back.
async fn round_trip(stream: &mut TcpStream, msg: &[u8]) -> io::Result<Vec<u8>> {
    stream.write_all(msg).await?;
    let mut back = vec![0u8; msg.len()];
    stream.read_exact(&mut back).await?;
    Ok(back)
}

async fn assert_echoes(stream: &mut TcpStream, msg: &[u8]) {
    let back = within("echo round trip", round_trip(stream, msg))
        .await
        .expect("echo round trip through the proxy");
    assert_eq!(back, msg, "echoed bytes differ");
}

/// Polls the proxy's counters until `pred` holds (counters are updated right after a
/// chunk is written, which can be a moment after the peer has read it).
async fn wait_for_stats(faults: &Faults, pred: impl Fn(&Stats) -> bool) -> Stats {
    let deadline = Instant::now() + STEP;
    loop {
        let stats = faults.stats();
        if pred(&stats) {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "counters never matched, last: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn passes_four_mib_through_unchanged() {
    let echo = echo_server().await;
    let proxy = proxy_to(echo.addr).await;

    let mut payload = vec![0u8; 4 * 1024 * 1024];
    rand::rng().fill_bytes(&mut payload);

    let stream = connect(&proxy).await;
    let (mut rd, mut wr) = stream.into_split();
    let to_send = payload.clone();
    let writer = tokio::spawn(async move {
        wr.write_all(&to_send).await?;
        wr.shutdown().await
    });
    let mut received = Vec::with_capacity(payload.len());
    within("read echoed payload", rd.read_to_end(&mut received))
        .await
        .expect("read echoed payload to EOF");
    within("writer", writer)
        .await
        .expect("writer task panicked")
        .expect("write payload");

    assert_eq!(received.len(), payload.len(), "echoed length differs");
    assert!(received == payload, "echoed payload differs");

    let len = u64::try_from(payload.len()).expect("payload length fits u64");
    let stats = wait_for_stats(&proxy.faults(), |s| s.bytes_to_client == len).await;
    assert_eq!(stats.bytes_to_upstream, len);
    assert_eq!(stats.resets_injected, 0);
    proxy.stop().await;
}

#[tokio::test]
async fn delay_adds_latency_in_each_direction() {
    let echo = echo_server().await;
    let proxy = proxy_to(echo.addr).await;
    let mut stream = connect(&proxy).await;
    assert_echoes(&mut stream, b"warm-up").await;

    let delay = Duration::from_millis(150);
    proxy.faults().set_delay(delay);
    assert_eq!(proxy.faults().delay(), delay);
    let started = Instant::now();
    assert_echoes(&mut stream, b"ping").await;
    let elapsed = started.elapsed();
    // One chunk each way, each held back by `delay`.
    assert!(
        elapsed >= delay * 2,
        "round trip took {elapsed:?}, expected at least {:?}",
        delay * 2
    );

    proxy.faults().set_delay(Duration::ZERO);
    let started = Instant::now();
    assert_echoes(&mut stream, b"pong").await;
    assert!(
        started.elapsed() < delay,
        "round trip still slow after clearing the delay: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn delay_adds_latency_without_capping_throughput() {
    let echo = echo_server().await;
    let proxy = proxy_to(echo.addr).await;
    let delay = Duration::from_millis(100);
    proxy.faults().set_delay(delay);

    // 2 MiB travels in dozens of chunks each way; forwarding them one delay at a time
    // would take many seconds, a pipelined delay costs about one delay per direction.
    let payload = vec![0x5au8; 2 * 1024 * 1024];
    let stream = connect(&proxy).await;
    let (mut rd, mut wr) = stream.into_split();
    let to_send = payload.clone();
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        wr.write_all(&to_send).await?;
        wr.shutdown().await
    });
    let mut received = Vec::with_capacity(payload.len());
    within("read delayed payload", rd.read_to_end(&mut received))
        .await
        .expect("read delayed payload to EOF");
    let elapsed = started.elapsed();
    within("writer", writer)
        .await
        .expect("writer task panicked")
        .expect("write payload");

    assert!(received == payload, "delayed payload differs");
    assert!(elapsed >= delay * 2, "round trip took only {elapsed:?}");
    assert!(
        elapsed < Duration::from_millis(2500),
        "delay throttled throughput: 2 MiB round trip took {elapsed:?}"
    );
}

#[tokio::test]
async fn stall_holds_chunks_back() {
    let echo = echo_server().await;
    let proxy = proxy_to(echo.addr).await;
    let faults = proxy.faults();
    let stall = Duration::from_millis(200);
    faults.set_stall_duration(stall);
    faults.set_stall_rate(1.0);
    let mut stream = connect(&proxy).await;

    let started = Instant::now();
    assert_echoes(&mut stream, b"stalled").await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= stall * 2,
        "round trip took {elapsed:?}, expected at least {:?}",
        stall * 2
    );
    let stats = faults.stats();
    assert!(stats.stalls >= 2, "stalls not counted: {stats:?}");
}

#[tokio::test]
async fn reset_all_resets_open_connections() {
    let echo = echo_server().await;
    let proxy = proxy_to(echo.addr).await;
    let faults = proxy.faults();
    let mut first = connect(&proxy).await;
    let mut second = connect(&proxy).await;
    assert_echoes(&mut first, b"one").await;
    assert_echoes(&mut second, b"two").await;

    faults.reset_all();

    for stream in [&mut first, &mut second] {
        let mut buf = [0u8; 16];
        let read = within("read after reset", stream.read(&mut buf)).await;
        let err = read.expect_err("read on a reset connection must fail");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    }
    let stats = wait_for_stats(&faults, |s| s.connections_active == 0).await;
    assert_eq!(stats.resets_injected, 2, "{stats:?}");

    // New connections are not affected.
    let mut third = connect(&proxy).await;
    assert_echoes(&mut third, b"three").await;
}

/// Attempts an echo on a fresh connection; `Err` means the proxy refused it.
async fn try_fresh_echo(proxy: &FaultProxy) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(proxy.local_addr()).await?;
    within("echo attempt", round_trip(&mut stream, b"hello")).await
}

#[tokio::test]
async fn partition_refuses_for_its_duration_then_recovers() {
    let echo = echo_server().await;
    let proxy = proxy_to(echo.addr).await;
    let faults = proxy.faults();
    let mut open = connect(&proxy).await;
    assert_echoes(&mut open, b"before").await;

    let duration = Duration::from_millis(600);
    let started = Instant::now();
    faults.partition(duration);
    assert!(faults.is_partitioned());

    // The connection that was open is reset.
    let mut buf = [0u8; 8];
    let read = within("read during partition", open.read(&mut buf)).await;
    assert!(
        read.is_err(),
        "open connection survived the partition: {read:?}"
    );

    // New connections fail, early and midway through the partition.
    let early = try_fresh_echo(&proxy).await;
    assert!(
        early.is_err(),
        "connection worked during partition: {early:?}"
    );
    tokio::time::sleep(duration / 2).await;
    assert!(started.elapsed() < duration, "test machine too slow");
    let midway = try_fresh_echo(&proxy).await;
    assert!(
        midway.is_err(),
        "connection worked during partition: {midway:?}"
    );
    assert!(faults.stats().connections_refused >= 2);

    // Afterwards everything works again without any manual healing.
    tokio::time::sleep(duration.saturating_sub(started.elapsed()) + Duration::from_millis(50))
        .await;
    assert!(!faults.is_partitioned());
    let after = try_fresh_echo(&proxy)
        .await
        .expect("connection after the partition ended");
    assert_eq!(after, b"hello");
}

#[tokio::test]
async fn manual_partition_lasts_until_lifted() {
    let echo = echo_server().await;
    let proxy = proxy_to(echo.addr).await;
    let faults = proxy.faults();

    faults.set_partitioned(true);
    assert!(faults.is_partitioned());
    let refused = try_fresh_echo(&proxy).await;
    assert!(
        refused.is_err(),
        "connection worked while partitioned: {refused:?}"
    );

    faults.set_partitioned(false);
    assert!(!faults.is_partitioned());
    let after = try_fresh_echo(&proxy)
        .await
        .expect("connection after lifting the partition");
    assert_eq!(after, b"hello");
}

#[tokio::test]
async fn cut_rate_one_closes_connections() {
    let echo = echo_server().await;
    let proxy = proxy_to(echo.addr).await;
    let faults = proxy.faults();
    faults.set_cut_rate(1.0);

    let mut stream = connect(&proxy).await;
    let result = within(
        "round trip with cut rate 1",
        round_trip(&mut stream, b"doomed"),
    )
    .await;
    let err = result.expect_err("cut rate 1.0 must break the connection");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");

    let stats = wait_for_stats(&faults, |s| s.cuts >= 1).await;
    assert_eq!(
        stats.bytes_to_upstream, 0,
        "a cut chunk was forwarded: {stats:?}"
    );
    assert!(stats.resets_injected >= 1);

    faults.set_cut_rate(0.0);
    let mut stream = connect(&proxy).await;
    assert_echoes(&mut stream, b"fine again").await;
}

#[tokio::test]
async fn stats_count_connections_and_bytes() {
    let echo = echo_server().await;
    let proxy = proxy_to(echo.addr).await;
    let faults = proxy.faults();
    assert_eq!(faults.stats(), Stats::default());

    let mut a = connect(&proxy).await;
    let mut b = connect(&proxy).await;
    assert_echoes(&mut a, &[7u8; 1000]).await;
    assert_echoes(&mut b, &[9u8; 234]).await;

    let stats = wait_for_stats(&faults, |s| s.bytes_to_client == 1234).await;
    assert_eq!(stats.connections_accepted, 2);
    assert_eq!(stats.connections_active, 2);
    assert_eq!(stats.bytes_to_upstream, 1234);
    assert_eq!(stats.connections_refused, 0);

    drop(a);
    drop(b);
    let stats = wait_for_stats(&faults, |s| s.connections_active == 0).await;
    assert_eq!(stats.resets_injected, 0, "{stats:?}");
}

#[tokio::test]
async fn heal_clears_every_fault() {
    let echo = echo_server().await;
    let proxy = proxy_to(echo.addr).await;
    let faults = proxy.faults();
    faults.set_delay(Duration::from_secs(3));
    faults.set_cut_rate(1.0);
    faults.set_stall_rate(1.0);
    faults.set_partitioned(true);
    faults.partition(Duration::from_secs(30));

    faults.heal();

    assert_eq!(faults.delay(), Duration::ZERO);
    assert_eq!(faults.cut_rate(), 0.0);
    assert_eq!(faults.stall_rate(), 0.0);
    assert!(!faults.is_partitioned());
    let started = Instant::now();
    let back = try_fresh_echo(&proxy).await.expect("echo after heal");
    assert_eq!(back, b"hello");
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn rates_are_clamped() {
    let echo = echo_server().await;
    let proxy = proxy_to(echo.addr).await;
    let faults = proxy.faults();
    faults.set_cut_rate(7.5);
    assert_eq!(faults.cut_rate(), 1.0);
    faults.set_cut_rate(-1.0);
    assert_eq!(faults.cut_rate(), 0.0);
    faults.set_stall_rate(f64::NAN);
    assert_eq!(faults.stall_rate(), 0.0);
    faults.set_stall_rate(0.25);
    assert_eq!(faults.stall_rate(), 0.25);
}

#[tokio::test]
async fn unreachable_upstream_resets_the_client() {
    // Grab a free port and release it so nothing listens there.
    let dead = {
        let l = TcpListener::bind(localhost0()).await.expect("bind probe");
        l.local_addr().expect("probe address")
    };
    let proxy = proxy_to(dead).await;
    let result = try_fresh_echo(&proxy).await;
    assert!(result.is_err(), "echo through a dead upstream: {result:?}");
    assert_eq!(proxy.stats().bytes_to_upstream, 0);
}

#[tokio::test]
async fn stop_closes_listener_and_connections() {
    let echo = echo_server().await;
    let proxy = proxy_to(echo.addr).await;
    let addr = proxy.local_addr();
    let mut open = connect(&proxy).await;
    assert_echoes(&mut open, b"alive").await;

    within("stop", proxy.stop()).await;

    let mut buf = [0u8; 8];
    let read = within("read after stop", open.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "connection still delivering data after stop: {read:?}"
    );
    let again = TcpStream::connect(addr).await;
    assert!(again.is_err(), "listener still accepting after stop");
}
