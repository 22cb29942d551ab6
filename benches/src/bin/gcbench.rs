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
use stowage_core::{Digest, ManualClock, Reference, RepoName, Tag};
use stowage_gc::{Collector, GcConfig, RunOptions};
use stowage_store::{Store, StoreConfig};

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
    /// Store `blobs` unreferenced blobs on the file system, then collect them.
    Sweep {
        #[arg(long)]
        data: std::path::PathBuf,
        #[arg(long, default_value_t = 100_000)]
        blobs: u64,
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
    let mut cfg = StoreConfig::new(data);
    cfg.sync_index = false;
    if memory {
        cfg.backend = Some(stowage_cas::Backend::Memory);
    }
    Store::open_with_clock(cfg, Arc::new(clock))
        .await
        .context("opening store")
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
                let mut descs = Vec::new();
                let mut config = None;
                for k in 0..10u64 {
                    let bytes = format!("blob {id} {k}").into_bytes();
                    let d = Digest::sha256(&bytes);
                    let size = bytes.len();
                    store.put_blob(&repo, &d, body(bytes)).await.unwrap();
                    if k == 0 {
                        config = Some((d, size));
                    } else {
                        descs.push(serde_json::json!({
                            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                            "digest": d.to_string(), "size": size}));
                    }
                }
                let (cd, cs) = config.unwrap();
                let manifest = serde_json::to_vec(&serde_json::json!({
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                               "digest": cd.to_string(), "size": cs},
                    "layers": descs
                }))
                .unwrap();
                // Half tagged, half untagged (garbage).
                let reference = if id.is_multiple_of(2) {
                    Reference::Tag(Tag::parse(&format!("v{m}")).unwrap())
                } else {
                    Reference::Digest(Digest::sha256(&manifest))
                };
                store
                    .put_manifest(&repo, &reference, None, manifest)
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
    let gc = Collector::new(store, GcConfig::default());
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

async fn sweep(data: &std::path::Path, blobs: u64) -> Result<()> {
    let clock = ManualClock::new(now_ms() - 2 * DAY);
    let store = open(data, false, clock.clone()).await?;
    let started = Instant::now();
    let repo = RepoName::parse("bench/sweep").unwrap();
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let (store, repo) = (store.clone(), repo.clone());
        tasks.push(tokio::spawn(async move {
            for i in (w..blobs).step_by(8) {
                let bytes = format!("unreferenced blob {i} ").repeat(40).into_bytes();
                let d = Digest::sha256(&bytes);
                store.put_blob(&repo, &d, body(bytes)).await.unwrap();
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
        store,
        GcConfig {
            quarantine: Duration::ZERO,
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
            Cmd::Sweep { data, blobs } => sweep(&data, blobs).await,
        }
    })
}
