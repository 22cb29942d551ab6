//! Garbage-collection benchmark.
//!
//! `gcbench populate-mark --data DIR` builds, through the store, an index of `--manifests`
//! manifests in `--repos` repositories, each with a config and nine layers (so ten blobs per
//! manifest: 1,000,000 blobs for 100,000 manifests), half of the manifests tagged and the other
//! half untagged (garbage), all two days old. Blob bytes go to the in-memory backend: marking
//! reads only the index.
//! `gcbench mark --data DIR` opens that index in a fresh process and runs a dry run (the full
//! mark and the sweep decision), printing its duration and the process's peak RSS.
//! `gcbench sweep --data DIR --blobs N` stores N small unreferenced blobs on the file system
//! backend, then times a real run that quarantines and purges them all.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use stowage_core::{Actor, Digest, ManualClock, Reference, RepoName, Tag};

/// The actor the benchmark's pushes are recorded as.
fn bench_actor() -> Actor {
    Actor::user("bench")
}
use stowage_gc::{Collector, GcConfig, RunOptions};
use stowage_store::{Store, StoreConfig};

// The daemon's allocator, so allocation behaves as it does in `stowage serve`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Build the marking benchmark's index.
    PopulateMark {
        #[arg(long)]
        data: std::path::PathBuf,
        #[arg(long, default_value_t = 100_000)]
        manifests: u64,
        #[arg(long, default_value_t = 100)]
        repos: u64,
    },
    /// Dry run over an existing index: full mark and sweep decision.
    Mark {
        #[arg(long)]
        data: std::path::PathBuf,
    },
    /// Manifest-put latency with and without a collection running, side by side.
    Latency {
        #[arg(long)]
        data: std::path::PathBuf,
        /// Images in the store (ten blobs each).
        #[arg(long, default_value_t = 6_000)]
        images: u64,
        /// Rounds: each measures puts without GC, then puts during a GC run.
        #[arg(long, default_value_t = 3)]
        rounds: u64,
        /// Quarantine retention of the measured runs ("0s": the run also purges the bytes).
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        quarantine: Duration,
    },
    /// Store `blobs` unreferenced blobs on the file system, then collect them.
    Sweep {
        #[arg(long)]
        data: std::path::PathBuf,
        #[arg(long, default_value_t = 100_000)]
        blobs: u64,
        /// Sync the index on every commit, as the daemon does by default.
        #[arg(long)]
        sync_index: bool,
    },
}

const DAY: u64 = 86_400_000;

fn body(data: Vec<u8>) -> futures::stream::Iter<std::vec::IntoIter<Result<Bytes, std::io::Error>>> {
    futures::stream::iter(vec![Ok(Bytes::from(data))])
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

async fn open(data: &std::path::Path, memory: bool, clock: ManualClock) -> Result<Store> {
    open_with(data, memory, clock, false).await
}

async fn open_with(
    data: &std::path::Path,
    memory: bool,
    clock: ManualClock,
    sync_index: bool,
) -> Result<Store> {
    let mut cfg = StoreConfig::new(data);
    cfg.sync_index = sync_index;
    if memory {
        cfg.backend = Some(stowage_cas::Backend::Memory);
    }
    Store::open_with_clock(cfg, Arc::new(clock))
        .await
        .context("opening store")
}

/// Stores `blobs` in `repo`; returns `(digest, size)` of each, in order.
async fn push_blobs(
    store: &Store,
    repo: &RepoName,
    blobs: impl IntoIterator<Item = Vec<u8>>,
) -> Vec<(Digest, usize)> {
    let mut out = Vec::new();
    for bytes in blobs {
        let d = Digest::sha256(&bytes);
        let size = bytes.len();
        store
            .client()
            .put_blob(&bench_actor(), repo, &d, body(bytes))
            .await
            .unwrap();
        out.push((d, size));
    }
    out
}

/// An image manifest whose config is `blobs[0]` and whose layers are the rest.
fn image_manifest(blobs: &[(Digest, usize)], annotation: Option<String>) -> Vec<u8> {
    let (cd, cs) = &blobs[0];
    let layers: Vec<_> = blobs[1..]
        .iter()
        .map(|(d, s)| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": d.to_string(), "size": s})
        })
        .collect();
    let mut m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": cd.to_string(), "size": cs},
        "layers": layers
    });
    if let Some(a) = annotation {
        m["annotations"] = serde_json::json!({ "n": a });
    }
    serde_json::to_vec(&m).unwrap()
}

fn now_ms() -> u64 {
    stowage_core::Clock::now_millis(&stowage_core::SystemClock)
}

async fn populate_mark(data: &std::path::Path, manifests: u64, repos: u64) -> Result<()> {
    let clock = ManualClock::new(now_ms() - 2 * DAY);
    let store = open(data, true, clock).await?;
    let started = Instant::now();
    let per_repo = manifests / repos;
    let mut tasks = Vec::new();
    for r in 0..repos {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let repo = RepoName::parse(&format!("bench/repo{r:04}")).unwrap();
            for m in 0..per_repo {
                let id = r * per_repo + m;
                let blobs = (0..10u64).map(|k| format!("blob {id} {k}").into_bytes());
                let manifest = image_manifest(&push_blobs(&store, &repo, blobs).await, None);
                // Half tagged, half untagged (garbage).
                let reference = if id.is_multiple_of(2) {
                    Reference::Tag(Tag::parse(&format!("v{m}")).unwrap())
                } else {
                    Reference::Digest(Digest::sha256(&manifest))
                };
                store
                    .client()
                    .put_manifest(&bench_actor(), &repo, &reference, None, manifest)
                    .await
                    .unwrap();
            }
        }));
        if tasks.len() >= 4 {
            tasks.remove(0).await?;
        }
    }
    for t in tasks {
        t.await?;
    }
    store.index().flush()?;
    println!(
        "populated {} manifests, {} blobs in {:.1} s",
        per_repo * repos,
        per_repo * repos * 10,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn mark(data: &std::path::Path) -> Result<()> {
    let store = open(data, true, ManualClock::new(now_ms())).await?;
    let gc = Collector::new(
        store.gc_ops(),
        GcConfig {
            delete_untagged: true,
            ..GcConfig::default()
        },
    );
    let started = Instant::now();
    let report = gc
        .run(RunOptions {
            dry_run: true,
            trigger: "bench".into(),
            ..RunOptions::default()
        })
        .await?;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(report.error.is_none(), "run failed: {:?}", report.error);
    let t = &report.totals;
    println!(
        "{}",
        serde_json::json!({
            "mark_and_decide_s": secs,
            "mark_phase_ms": report.phases.first().map(|p| p.ms),
            "peak_rss_mib": peak_rss_mib(),
            "manifests_marked": t.manifests_marked,
            "blobs_marked": t.blobs_marked,
            "manifests_candidates": t.manifests_swept,
            "blob_link_candidates": t.blobs_swept,
            "blobs_to_quarantine": t.blobs_quarantined,
        })
    );
    Ok(())
}

async fn sweep(data: &std::path::Path, blobs: u64, sync_index: bool) -> Result<()> {
    let clock = ManualClock::new(now_ms() - 2 * DAY);
    let store = open_with(data, false, clock.clone(), sync_index).await?;
    let started = Instant::now();
    let repo = RepoName::parse("bench/sweep").unwrap();
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let (store, repo) = (store.clone(), repo.clone());
        tasks.push(tokio::spawn(async move {
            for i in (w..blobs).step_by(8) {
                let bytes = format!("unreferenced blob {i} ").repeat(40).into_bytes();
                let d = Digest::sha256(&bytes);
                store
                    .client()
                    .put_blob(&bench_actor(), &repo, &d, body(bytes))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    store.index().flush()?;
    let stored = started.elapsed().as_secs_f64();
    clock.set(now_ms());
    let gc = Collector::new(
        store.gc_ops(),
        GcConfig {
            quarantine: Duration::ZERO,
            delete_untagged: true,
            ..GcConfig::default()
        },
    );
    let started = Instant::now();
    let report = gc.run(RunOptions::default()).await?;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(report.error.is_none(), "run failed: {:?}", report.error);
    println!(
        "{}",
        serde_json::json!({
            "stored_s": stored,
            "sync_index": sync_index,
            "gc_run_s": secs,
            "phases_ms": report.phases.iter().map(|p| (p.phase.as_str(), p.ms)).collect::<std::collections::BTreeMap<_, _>>(),
            "blobs_quarantined": report.totals.blobs_quarantined,
            "blobs_purged": report.totals.blobs_purged,
            "peak_rss_mib": peak_rss_mib(),
        })
    );
    anyhow::ensure!(
        report.totals.blobs_purged == blobs,
        "not every blob was collected"
    );
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Puts manifests (new digests over existing blobs) from 4 clients until `stop`, returning
/// latencies in ms.
async fn put_load(
    store: Store,
    repo: RepoName,
    layers: Vec<(Digest, usize)>,
    stop: tokio::sync::watch::Receiver<bool>,
    min_puts: usize,
    tag_base: u64,
) -> Vec<(f64, f64)> {
    let origin = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..4u64 {
        let (store, repo, layers, stop) =
            (store.clone(), repo.clone(), layers.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let mut i = 0u64;
            while !*stop.borrow() || out.len() < min_puts / 4 {
                let manifest = image_manifest(&layers, Some(format!("{tag_base}-{w}-{i}")));
                let tag = Reference::Tag(Tag::parse(&format!("p{tag_base}-{w}-{i}")).unwrap());
                let t = Instant::now();
                store
                    .client()
                    .put_manifest(&bench_actor(), &repo, &tag, None, manifest)
                    .await
                    .unwrap();
                out.push((
                    t.duration_since(origin).as_secs_f64() * 1000.0,
                    t.elapsed().as_secs_f64() * 1000.0,
                ));
                i += 1;
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// Latencies of the puts that started in `[from, to)` ms, sorted.
fn window(puts: &[(f64, f64)], from: f64, to: f64) -> Vec<f64> {
    let mut v: Vec<f64> = puts
        .iter()
        .filter(|(at, _)| *at >= from && *at < to)
        .map(|(_, l)| *l)
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

async fn latency(
    data: &std::path::Path,
    images: u64,
    rounds: u64,
    quarantine: Duration,
) -> Result<()> {
    // Build the store: `images` tagged images of ten blobs in 10 repositories, blobs on disk.
    let clock = ManualClock::new(now_ms() - 2 * DAY);
    {
        let store = open_with(data, false, clock.clone(), false).await?;
        let mut tasks = Vec::new();
        for r in 0..10u64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let repo = RepoName::parse(&format!("lat/repo{r}")).unwrap();
                for m in 0..images / 10 {
                    let blobs = (0..10u64)
                        .map(|k| format!("lat blob {r} {m} {k} ").repeat(30).into_bytes());
                    let manifest = image_manifest(&push_blobs(&store, &repo, blobs).await, None);
                    let tag = Reference::Tag(Tag::parse(&format!("v{m}")).unwrap());
                    store
                        .client()
                        .put_manifest(&bench_actor(), &repo, &tag, None, manifest)
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        store.index().flush()?;
    }
    // Measure with the daemon's durability (synced index).
    clock.set(now_ms());
    let store = open_with(data, false, clock.clone(), true).await?;
    let gc = Collector::new(
        store.gc_ops(),
        GcConfig {
            quarantine,
            delete_untagged: true,
            ..GcConfig::default()
        },
    );
    let client_repo = RepoName::parse("lat/client").unwrap();
    let layers = push_blobs(
        &store,
        &client_repo,
        (0..10u64).map(|k| format!("client layer {k}").into_bytes()),
    )
    .await;
    let per_round = images / 10 / rounds;
    let mut rows = Vec::new();
    for round in 0..rounds {
        // Garbage for this round: untag a slice of every repository's images (old content).
        for r in 0..10u64 {
            let repo = RepoName::parse(&format!("lat/repo{r}")).unwrap();
            for m in round * per_round..(round + 1) * per_round {
                store
                    .client()
                    .untag(&bench_actor(), &repo, &format!("v{m}"))
                    .await?;
            }
        }
        // Without GC: puts for as long as the previous GC run took (10 s at first), so both
        // sides see the same background work of the index (flushes, compactions).
        let (tx, rx) = tokio::sync::watch::channel(false);
        let quiet_for = rows
            .last()
            .and_then(|r: &serde_json::Value| r["gc_run_s"].as_f64())
            .unwrap_or(10.0);
        let quiet_load = tokio::spawn(put_load(
            store.clone(),
            client_repo.clone(),
            layers.clone(),
            rx,
            400,
            round * 2,
        ));
        tokio::time::sleep(Duration::from_secs_f64(quiet_for)).await;
        tx.send(true)?;
        let quiet = window(&quiet_load.await?, 0.0, f64::MAX);
        // During a GC run: puts until it ends (and at least as many as above).
        let (tx, rx) = tokio::sync::watch::channel(false);
        let load = tokio::spawn(put_load(
            store.clone(),
            client_repo.clone(),
            layers.clone(),
            rx,
            400,
            round * 2 + 1,
        ));
        let started = Instant::now();
        let report = gc.run(RunOptions::default()).await?;
        let gc_s = started.elapsed().as_secs_f64();
        tx.send(true)?;
        let busy_all = load.await?;
        let busy = window(&busy_all, 0.0, f64::MAX);
        let mark_ms = report.phases.first().map(|p| p.ms as f64).unwrap_or(0.0);
        let during_mark = window(&busy_all, 0.0, mark_ms);
        let during_sweep = window(&busy_all, mark_ms, f64::MAX);
        anyhow::ensure!(report.error.is_none(), "gc failed: {:?}", report.error);
        let row = serde_json::json!({
            "round": round,
            "quiet_puts": quiet.len(), "quiet_p50_ms": percentile(&quiet, 0.5), "quiet_p99_ms": percentile(&quiet, 0.99),
            "gc_puts": busy.len(), "gc_p50_ms": percentile(&busy, 0.5), "gc_p99_ms": percentile(&busy, 0.99),
            "p99_ratio": percentile(&busy, 0.99) / percentile(&quiet, 0.99).max(1e-9),
            "gc_run_s": gc_s,
            "mark_p99_ms": percentile(&during_mark, 0.99),
            "sweep_p99_ms": percentile(&during_sweep, 0.99),
            "gc_manifests_swept": report.totals.manifests_swept,
            "gc_phases_ms": report.phases.iter().map(|p| (p.phase.as_str(), p.ms)).collect::<std::collections::BTreeMap<_, _>>(),
            "gc_blobs_quarantined": report.totals.blobs_quarantined,
        });
        println!("{row}");
        rows.push(row);
    }
    let mut ratios: Vec<f64> = rows
        .iter()
        .filter_map(|r| r["p99_ratio"].as_f64())
        .collect();
    ratios.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{}",
        serde_json::json!({"median_p99_ratio": percentile(&ratios, 0.5)})
    );
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match cli.cmd {
            Cmd::PopulateMark {
                data,
                manifests,
                repos,
            } => populate_mark(&data, manifests, repos).await,
            Cmd::Mark { data } => mark(&data).await,
            Cmd::Latency {
                data,
                images,
                rounds,
                quarantine,
            } => latency(&data, images, rounds, quarantine).await,
            Cmd::Sweep {
                data,
                blobs,
                sync_index,
            } => sweep(&data, blobs, sync_index).await,
        }
    })
}
