//! `faultproxy`: run a [`stowage_faultproxy::FaultProxy`] from the command line.
//!
//! Prints `faultproxy listening on ADDR` on stdout once the listener is bound, then
//! forwards until SIGINT (Ctrl-C) or SIGTERM. Logs go to stderr (`RUST_LOG` filters them).

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use stowage_faultproxy::{FaultProxy, Faults};
use tracing::{error, info, info_span, Instrument};
use tracing_subscriber::EnvFilter;

/// TCP proxy that injects latency, stalls, cuts and partitions between two endpoints.
#[derive(Debug, Parser)]
#[command(name = "faultproxy", version)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long)]
    listen: SocketAddr,

    /// Address every accepted connection is forwarded to.
    #[arg(long)]
    upstream: SocketAddr,

    /// Latency added to every forwarded chunk, in each direction, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,

    /// Probability (0..=1) that a forwarded chunk aborts its connection with a TCP reset.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    cut_rate: f64,

    /// Probability (0..=1) that a forwarded chunk is held back for --stall-ms.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    stall_rate: f64,

    /// How long a stalled chunk is held back, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    stall_ms: u64,

    /// Start a partition every S seconds (fractions allowed); needs --partition-for.
    #[arg(long, value_name = "S", requires = "partition_for", value_parser = parse_seconds)]
    partition_every: Option<Duration>,

    /// Length of each scheduled partition in seconds (fractions allowed); needs --partition-every.
    #[arg(long, value_name = "S", requires = "partition_every", value_parser = parse_seconds)]
    partition_for: Option<Duration>,
}

fn parse_probability(s: &str) -> Result<f64, String> {
    let p: f64 = s
        .parse()
        .map_err(|e| format!("not a number: {s:?} ({e})"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("probability must be between 0 and 1, got {p}"))
    }
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|e| format!("not a number of seconds: {s:?} ({e})"))?;
    if secs <= 0.0 {
        return Err(format!("must be more than 0 seconds, got {secs}"));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();

    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "faultproxy failed");
            eprintln!("faultproxy: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> std::io::Result<()> {
    let proxy = FaultProxy::start(args.listen, args.upstream).await?;
    let faults = proxy.faults();
    faults.set_delay(Duration::from_millis(args.delay_ms));
    faults.set_cut_rate(args.cut_rate);
    faults.set_stall_rate(args.stall_rate);
    faults.set_stall_duration(Duration::from_millis(args.stall_ms));

    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "faultproxy listening on {}", proxy.local_addr())?;
        stdout.flush()?;
    }
    info!(
        listen = %proxy.local_addr(),
        upstream = %args.upstream,
        ?faults,
        "faultproxy running"
    );

    let scheduler = match (args.partition_every, args.partition_for) {
        (Some(every), Some(length)) => {
            let span = info_span!("faultproxy_partition_schedule", ?every, ?length);
            Some(tokio::spawn(
                partition_schedule(faults.clone(), every, length).instrument(span),
            ))
        }
        _ => None,
    };

    let signal = shutdown_signal().await;
    if let Some(task) = scheduler {
        task.abort();
    }
    let stats = proxy.stats();
    proxy.stop().await;
    let signal = signal.map_err(|e| {
        std::io::Error::new(e.kind(), format!("waiting for a shutdown signal: {e}"))
    })?;
    info!(signal, ?stats, "faultproxy stopped");
    Ok(())
}

async fn partition_schedule(faults: Faults, every: Duration, length: Duration) {
    if length >= every {
        tracing::warn!("partitions last at least as long as their period: the link stays down");
    }
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        info!(?length, "scheduled partition");
        faults.partition(length);
    }
}

/// Waits for SIGINT (Ctrl-C) or, on Unix, SIGTERM; returns which one arrived.
async fn shutdown_signal() -> std::io::Result<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            ctrl_c = tokio::signal::ctrl_c() => ctrl_c.map(|()| "SIGINT"),
            _ = term.recv() => Ok("SIGTERM"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.map(|()| "ctrl-c")
    }
}
