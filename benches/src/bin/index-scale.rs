//! Index scale benchmark (issue 13): millions of blobs and manifests in one index.
//!
//! * `populate` builds the index in process. Blob records are written straight into the index
//!   in batches (record, repository link, holder and feed entry: what a blob push writes, minus
//!   its audit entry and the bytes, which marking never reads); manifests go through the real
//!   store path (`put_manifest`: presence check, references, holders, tag, feed, audit). Every
//!   manifest has a config and nine layers of its own plus its repository's shared base layer
//!   (ten unique blobs per manifest); half are tagged, the other half pushed by digest only, so
//!   a collection with `delete_untagged` has half of everything to decide on. All two days old.
//! * `mark` opens the index in a fresh process and runs a dry run (mark and sweep decision, no
//!   sweep: nothing is deleted, so the same index serves every measurement), printing the phase
//!   times and the process's peak RSS.
//! * `latency` puts manifests from 4 clients with the daemon's durability (synced index), first
//!   without a collection, then during a dry run, and prints p50/p99 of both.
//! * `lookups` reopens the index with each column-family tuning in turn, compacts it (filters
//!   and prefix extractors apply to rewritten files), and times the point lookups and digest
//!   scans that a manifest put and the sweep's re-check make.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use rand::{Rng, SeedableRng};
use stowage_core::{Actor, Digest, ManualClock, Reference, RepoName, Tag};
use stowage_gc::{Collector, GcConfig, RunOptions};
use stowage_index::{
    Batch, BlobRecord, BlobState, Event, EventKind, HoldKind, Index, IndexOptions, RepoRecord,
    Tuning,
};
use stowage_store::{Store, StoreConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Build the index: `manifests` manifests of ten unique blobs each.
    Populate {
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value_t = 100_000)]
        manifests: u64,
        #[arg(long, default_value_t = 100)]
        repos: u64,
        /// Column family tuning: `tuned` (the default options) or `baseline`.
        #[arg(long, default_value = "tuned")]
        tuning: String,
    },
    /// Dry run (mark and decision) in this fresh process.
    Mark {
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value = "tuned")]
        tuning: String,
    },
    /// Manifest-put latency without and during a dry-run collection.
    Latency {
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value = "tuned")]
        tuning: String,
        /// Seconds of puts without a collection.
        #[arg(long, default_value_t = 20.0)]
        quiet_s: f64,
    },
    /// Point lookups and digest scans under each tuning, after compacting with it.
    Lookups {
        #[arg(long)]
        data: PathBuf,
        /// Manifests the index was populated with (to regenerate existing digests).
        #[arg(long)]
        manifests: u64,
        #[arg(long, default_value_t = 100)]
        repos: u64,
        /// Comma-separated: baseline, cache, bloom, prefix, pin, tuned.
        #[arg(long, default_value = "baseline,cache,bloom,prefix,pin,tuned")]
        variants: String,
        #[arg(long, default_value_t = 200_000)]
        n: u64,
    },
}

const DAY: u64 = 86_400_000;
/// Unique blobs per manifest (config + nine layers).
const BLOBS_PER_MANIFEST: u64 = 10;

fn actor() -> Actor {
    Actor::user("bench")
}

fn now_ms() -> u64 {
    stowage_core::Clock::now_millis(&stowage_core::SystemClock)
}

/// Peak resident set size of this process (VmHWM), MiB.
fn peak_rss_mib() -> f64 {
    status_mib("VmHWM:")
}

/// Current resident set size (VmRSS), MiB.
fn rss_mib() -> f64 {
    status_mib("VmRSS:")
}

fn status_mib(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn dir_bytes(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// The named tuning: `baseline` (RocksDB defaults), `tuned` (the index's default), or the
/// baseline plus one setting (`cache`, `bloom`, `prefix`, `pin`).
fn tuning(name: &str) -> Result<Tuning> {
    let base = Tuning::baseline();
    Ok(match name {
        "baseline" => base,
        "tuned" => Tuning::default(),
        "cache" => Tuning {
            block_cache_bytes: stowage_index::DEFAULT_BLOCK_CACHE_BYTES,
            ..base
        },
        "bloom" => Tuning {
            bloom_filters: true,
            ..base
        },
        "prefix" => Tuning {
            digest_prefix: true,
            ..base
        },
        "pin" => Tuning {
            block_cache_bytes: stowage_index::DEFAULT_BLOCK_CACHE_BYTES,
            pin_l0: true,
            ..base
        },
        other => anyhow::bail!("unknown tuning {other}"),
    })
}

async fn open(data: &Path, clock: ManualClock, sync: bool, tuning_name: &str) -> Result<Store> {
    let mut cfg = StoreConfig::new(data);
    cfg.sync_index = sync;
    cfg.backend = Some(stowage_cas::Backend::Memory);
    cfg.index_tuning = tuning(tuning_name)?;
    // The memory backend lives on no file system: nothing to keep free.
    cfg.min_free_bytes = 0;
    Store::open_with_clock(cfg, Arc::new(clock))
        .await
        .context("opening store")
}

fn repo_name(r: u64) -> RepoName {
    RepoName::parse(&format!("scale/repo{r:05}")).unwrap()
}

/// Digest of blob `k` of manifest `id` (k = 0 is the config); `base(r)` is repository r's
/// shared layer.
fn blob_digest(id: u64, k: u64) -> Digest {
    Digest::sha256(format!("blob {id} {k}").as_bytes())
}

fn base_digest(r: u64) -> Digest {
    Digest::sha256(format!("base {r}").as_bytes())
}

fn blob_size(k: u64) -> u64 {
    1000 + k
}

/// Image manifest of manifest `id` in repository `r`: config, the shared base, nine layers.
fn image_manifest(r: u64, id: u64) -> Vec<u8> {
    let layer = |d: &Digest, s: u64| {
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": d.to_string(), "size": s})
    };
    let mut layers = vec![layer(&base_digest(r), blob_size(99))];
    layers.extend((1..BLOBS_PER_MANIFEST).map(|k| layer(&blob_digest(id, k), blob_size(k))));
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": blob_digest(id, 0).to_string(), "size": blob_size(0)},
        "layers": layers
    }))
    .unwrap()
}

/// Adds what a blob push writes for `digest` in `repo` to `batch` (audit entry aside).
fn add_blob(batch: &mut Batch, repo: &RepoName, digest: &Digest, size: u64, at: u64) {
    batch.put_blob(
        digest,
        &BlobRecord {
            size,
            state: BlobState::Present,
            created_ms: at,
            updated_ms: at,
            crc32c: None,
            quarantine: None,
        },
    );
    batch.link_blob(repo, digest, at);
    batch.event(Event {
        kind: EventKind::BlobPut,
        repo: repo.to_string(),
        digest: Some(digest.clone()),
        tag: None,
        ts_ms: at,
        actor: Some(actor().to_string()),
        origin: None,
    });
}

async fn populate(data: &Path, manifests: u64, repos: u64, tuning_name: &str) -> Result<()> {
    let at = now_ms() - 2 * DAY;
    let store = open(data, ManualClock::new(at), false, tuning_name).await?;
    let started = Instant::now();
    let per_repo = manifests / repos;
    let workers = 4u64;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for r in (w..repos).step_by(workers as usize) {
                let repo = repo_name(r);
                let mut batch = Batch::new();
                batch.put_repo(&repo, &RepoRecord { created_ms: at });
                add_blob(&mut batch, &repo, &base_digest(r), blob_size(99), at);
                for chunk in (0..per_repo).collect::<Vec<_>>().chunks(100) {
                    for m in chunk {
                        let id = r * per_repo + m;
                        for k in 0..BLOBS_PER_MANIFEST {
                            add_blob(&mut batch, &repo, &blob_digest(id, k), blob_size(k), at);
                        }
                    }
                    // Unsynced, as the store opened above: a short blocking write is fine here.
                    store
                        .index()
                        .commit(std::mem::take(&mut batch))
                        .context("committing blob records")?;
                    for m in chunk {
                        let id = r * per_repo + m;
                        let bytes = image_manifest(r, id);
                        let reference = if id.is_multiple_of(2) {
                            Reference::Tag(Tag::parse(&format!("v{m}")).unwrap())
                        } else {
                            Reference::Digest(Digest::sha256(&bytes))
                        };
                        store
                            .client()
                            .put_manifest(&actor(), &repo, &reference, None, bytes)
                            .await
                            .with_context(|| format!("manifest {id}"))?;
                    }
                }
                if r % 50 == 0 {
                    eprintln!(
                        "repo {r}: {:.0} s, rss {:.0} MiB",
                        started.elapsed().as_secs_f64(),
                        rss_mib()
                    );
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    store.index().flush()?;
    let secs = started.elapsed().as_secs_f64();
    let total = per_repo * repos;
    println!(
        "{}",
        serde_json::json!({
            "manifests": total,
            "blobs": total * BLOBS_PER_MANIFEST + repos,
            "tuning": tuning_name,
            "build_s": secs,
            "manifests_per_s": total as f64 / secs,
            "index_bytes_after_flush": dir_bytes(&data.join("index")),
            "peak_rss_mib": peak_rss_mib(),
        })
    );
    Ok(())
}

fn dry_run_options() -> RunOptions {
    RunOptions {
        dry_run: true,
        trigger: "bench".into(),
        ..RunOptions::default()
    }
}

fn collector(store: &Store) -> Collector {
    Collector::new(
        store.gc_ops(),
        GcConfig {
            delete_untagged: true,
            ..GcConfig::default()
        },
    )
}

async fn mark(data: &Path, tuning_name: &str) -> Result<()> {
    let store = open(data, ManualClock::new(now_ms()), false, tuning_name).await?;
    let rss_open = rss_mib();
    let started = Instant::now();
    let report = collector(&store).run(dry_run_options()).await?;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(report.error.is_none(), "run failed: {:?}", report.error);
    let t = &report.totals;
    println!(
        "{}",
        serde_json::json!({
            "tuning": tuning_name,
            "dry_run_s": secs,
            "phases_ms": report.phases.iter().map(|p| (p.phase.as_str(), p.ms)).collect::<std::collections::BTreeMap<_, _>>(),
            "rss_after_open_mib": rss_open,
            "peak_rss_mib": peak_rss_mib(),
            "index_bytes": dir_bytes(&data.join("index")),
            "manifests_marked": t.manifests_marked,
            "blobs_marked": t.blobs_marked,
            "manifest_candidates": t.manifests_swept,
            "blob_link_candidates": t.blobs_swept,
            "blobs_to_quarantine": t.blobs_quarantined,
        })
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

/// 4 clients put new manifests over `layers` (each under a new tag) until `stop` is set;
/// returns every latency in ms, sorted.
async fn put_load(
    store: Store,
    repo: RepoName,
    layers: Arc<Vec<(Digest, u64)>>,
    stop: tokio::sync::watch::Receiver<bool>,
    round: u64,
) -> Result<Vec<f64>> {
    let mut tasks = Vec::new();
    for w in 0..4u64 {
        let (store, repo, layers, stop) =
            (store.clone(), repo.clone(), layers.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let mut i = 0u64;
            while !*stop.borrow() {
                let desc = |(d, s): &(Digest, u64)| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d.to_string(), "size": s});
                let bytes = serde_json::to_vec(&serde_json::json!({
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                               "digest": layers[0].0.to_string(), "size": layers[0].1},
                    "layers": layers[1..].iter().map(desc).collect::<Vec<_>>(),
                    "annotations": {"n": format!("{round}-{w}-{i}")}
                }))?;
                let tag = Reference::Tag(Tag::parse(&format!("p{round}-{w}-{i}"))?);
                let t = Instant::now();
                store
                    .client()
                    .put_manifest(&actor(), &repo, &tag, None, bytes)
                    .await?;
                out.push(t.elapsed().as_secs_f64() * 1000.0);
                i += 1;
            }
            anyhow::Ok(out)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort_by(|a, b| a.total_cmp(b));
    Ok(all)
}

async fn latency(data: &Path, tuning_name: &str, quiet_s: f64) -> Result<()> {
    let store = open(data, ManualClock::new(now_ms()), true, tuning_name).await?;
    let repo = RepoName::parse("scale/client")?;
    let mut layers = Vec::new();
    for k in 0..BLOBS_PER_MANIFEST {
        let bytes = format!("client layer {k}").into_bytes();
        let d = Digest::sha256(&bytes);
        let size = bytes.len() as u64;
        store
            .client()
            .put_blob(
                &actor(),
                &repo,
                &d,
                futures::stream::iter(vec![Ok::<_, std::io::Error>(Bytes::from(bytes))]),
            )
            .await?;
        layers.push((d, size));
    }
    let layers = Arc::new(layers);
    let (tx, rx) = tokio::sync::watch::channel(false);
    let quiet = tokio::spawn(put_load(store.clone(), repo.clone(), layers.clone(), rx, 0));
    tokio::time::sleep(Duration::from_secs_f64(quiet_s)).await;
    tx.send(true)?;
    let quiet = quiet.await??;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let busy = tokio::spawn(put_load(store.clone(), repo.clone(), layers.clone(), rx, 1));
    let started = Instant::now();
    let report = collector(&store).run(dry_run_options()).await?;
    let gc_s = started.elapsed().as_secs_f64();
    tx.send(true)?;
    let busy = busy.await??;
    anyhow::ensure!(report.error.is_none(), "run failed: {:?}", report.error);
    println!(
        "{}",
        serde_json::json!({
            "tuning": tuning_name,
            "quiet_s": quiet_s, "quiet_puts": quiet.len(),
            "quiet_p50_ms": percentile(&quiet, 0.5), "quiet_p99_ms": percentile(&quiet, 0.99),
            "gc_s": gc_s, "gc_puts": busy.len(),
            "gc_p50_ms": percentile(&busy, 0.5), "gc_p99_ms": percentile(&busy, 0.99),
            "peak_rss_mib": peak_rss_mib(),
        })
    );
    Ok(())
}

/// Times `n` calls of `f` over pseudo-random ids; returns calls per second.
fn timed(n: u64, seed: u64, mut f: impl FnMut(u64) -> Result<()>) -> Result<f64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let started = Instant::now();
    for _ in 0..n {
        f(rng.random())?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

fn lookups(data: &Path, manifests: u64, repos: u64, variants: &str, n: u64) -> Result<()> {
    let per_repo = manifests / repos;
    for name in variants.split(',') {
        let idx = Index::open(
            &data.join("index"),
            IndexOptions {
                sync_writes: false,
                tuning: tuning(name)?,
            },
        )?;
        let started = Instant::now();
        idx.compact_all()?;
        let compact_s = started.elapsed().as_secs_f64();
        let existing = |x: u64| {
            let id = x % (per_repo * repos);
            (
                repo_name(id / per_repo),
                blob_digest(id, x % BLOBS_PER_MANIFEST),
            )
        };
        let missing = |x: u64| Digest::sha256(format!("absent {x}").as_bytes());
        let blob_hit = timed(n, 1, |x| {
            anyhow::ensure!(idx.blob(&existing(x).1)?.is_some(), "blob missing");
            Ok(())
        })?;
        let blob_miss = timed(n, 2, |x| {
            anyhow::ensure!(idx.blob(&missing(x))?.is_none(), "absent blob found");
            Ok(())
        })?;
        let link_hit = timed(n, 3, |x| {
            let (repo, d) = existing(x);
            anyhow::ensure!(idx.repo_has_blob(&repo, &d)?, "link missing");
            Ok(())
        })?;
        let manifest_miss = timed(n, 4, |x| {
            let repo = repo_name(x % repos);
            anyhow::ensure!(idx.manifest(&repo, &missing(x))?.is_none(), "absent found");
            Ok(())
        })?;
        let refs_hit = timed(n, 5, |x| {
            let d = existing(x).1;
            anyhow::ensure!(!idx.referencing(&d)?.is_empty(), "no references");
            Ok(())
        })?;
        let holders_miss = timed(n, 6, |x| {
            anyhow::ensure!(
                idx.holders(&missing(x), HoldKind::Link)?.is_empty(),
                "absent held"
            );
            Ok(())
        })?;
        println!(
            "{}",
            serde_json::json!({
                "tuning": name,
                "compact_s": compact_s,
                "index_bytes": dir_bytes(&data.join("index")),
                "blob_hit_per_s": blob_hit, "blob_miss_per_s": blob_miss,
                "link_hit_per_s": link_hit, "manifest_miss_per_s": manifest_miss,
                "refs_scan_hit_per_s": refs_hit, "holders_scan_miss_per_s": holders_miss,
                "rss_mib": rss_mib(),
            })
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match cli.cmd {
            Cmd::Populate {
                data,
                manifests,
                repos,
                tuning,
            } => populate(&data, manifests, repos, &tuning).await,
            Cmd::Mark { data, tuning } => mark(&data, &tuning).await,
            Cmd::Latency {
                data,
                tuning,
                quiet_s,
            } => latency(&data, &tuning, quiet_s).await,
            Cmd::Lookups {
                data,
                manifests,
                repos,
                variants,
                n,
            } => lookups(&data, manifests, repos, &variants, n),
        }
    })
}
