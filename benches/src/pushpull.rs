//! OCI Distribution push/pull load generator.
//!
//! Push uses the monolithic upload flow: `POST /v2/<repo>/blobs/uploads/`
//! (expects 202 + `Location`), then `PUT <location>?digest=<d>` with the
//! whole blob streamed as the body. Pull is `GET /v2/<repo>/blobs/<digest>`,
//! streamed, counted and sha256-verified.
//!
//! With authentication ([`AuthConfig`]) every client behaves as docker does: it pings `/v2/`
//! once per phase, then sends Basic credentials on every request or fetches a bearer token for
//! the phase's scope (`pull,push` for the push phase, `pull` for the pull phase) and sends that
//! until it is about to expire or a request is refused with `401`.

use crate::prng::{blob_digests, BlobStream};
use crate::procstat::{clk_tck, cpu_seconds, SampleReport, Sampler};
use crate::regauth::{AuthConfig, AuthStats, Session};
use crate::stats::{mib_per_s, percentile};
use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use futures::StreamExt;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{Client, Response};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// What to run.
#[derive(Debug, Clone)]
pub struct PushPullConfig {
    /// Registry base URL, e.g. `http://127.0.0.1:5000`.
    pub url: String,
    /// Repository name.
    pub repo: String,
    /// Size of each blob in bytes.
    pub blob_size: u64,
    /// Number of distinct blobs.
    pub count: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Also pull every blob back after the push phase.
    pub pull: bool,
    /// Seed of the blob contents.
    pub seed: u64,
    /// Send `Content-Length` on the PUT (otherwise chunked encoding).
    pub content_length: bool,
    /// Registry daemon to measure (CPU per phase, peak RSS).
    pub server_pid: Option<u32>,
    /// RSS sampling interval.
    pub sample_interval: Duration,
    /// Credentials and how to use them.
    pub auth: AuthConfig,
}

/// Results of one phase (push or pull).
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    /// Payload bytes successfully transferred.
    pub bytes: u64,
    /// Blobs attempted.
    pub requests: usize,
    /// Blobs that failed.
    pub errors: usize,
    /// Wall-clock seconds of the phase.
    pub wall_s: f64,
    /// Payload throughput, MiB/s.
    pub mib_s: f64,
    /// Blobs transferred successfully per second (pushes/s or pulls/s).
    pub ops_per_s: f64,
    /// Median per-blob latency, ms (push: POST+PUT; pull: GET to last byte).
    pub lat_p50_ms: Option<f64>,
    /// 99th percentile per-blob latency, ms.
    pub lat_p99_ms: Option<f64>,
    /// Worst per-blob latency, ms.
    pub lat_max_ms: Option<f64>,
    /// Server utime+stime during the phase, seconds.
    pub server_cpu_s: Option<f64>,
    /// Server CPU seconds per GiB transferred.
    pub server_cpu_s_per_gib: Option<f64>,
    /// CPU used by regbench itself during the phase (generation, hashing,
    /// HTTP), seconds; shows whether the client was the bottleneck.
    pub client_cpu_s: Option<f64>,
    /// Authentication work of the clients (pings, tokens), when authentication is on.
    pub auth: Option<AuthStats>,
}

/// Results of a `push-pull` run.
#[derive(Debug, Clone, Serialize)]
pub struct PushPullReport {
    /// Registry base URL.
    pub url: String,
    /// Repository.
    pub repo: String,
    /// Bytes per blob.
    pub blob_size: u64,
    /// Number of blobs.
    pub count: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Content seed.
    pub seed: u64,
    /// Whether PUTs carried a Content-Length.
    pub content_length: bool,
    /// Seconds spent precomputing digests (not timed).
    pub digest_s: f64,
    /// Push phase.
    pub push: PhaseReport,
    /// Pull phase, if requested.
    pub pull: Option<PhaseReport>,
    /// Server sampling over both phases, if a pid was given.
    pub server: Option<SampleReport>,
}

impl PushPullReport {
    /// Total failed requests.
    pub fn errors(&self) -> usize {
        self.push.errors + self.pull.as_ref().map_or(0, |p| p.errors)
    }
}

struct WorkerResult {
    lat_ms: Vec<f64>,
    bytes: u64,
    errors: usize,
    auth: AuthStats,
}

#[derive(Clone, Copy)]
enum Phase {
    Push,
    Pull,
}

async fn error_text(what: &str, resp: Response) -> anyhow::Error {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    let body: String = body.chars().take(2000).collect();
    anyhow!("{what}: HTTP {status}: {}", body.trim())
}

fn resolve_location(base: &str, loc: &str) -> String {
    if loc.starts_with("http://") || loc.starts_with("https://") {
        loc.to_string()
    } else if loc.starts_with('/') {
        format!("{}{loc}", base.trim_end_matches('/'))
    } else {
        format!("{}/{loc}", base.trim_end_matches('/'))
    }
}

async fn push_one(
    cfg: &PushPullConfig,
    client: &Client,
    sess: &mut Session,
    idx: usize,
    digest: &str,
) -> Result<u64> {
    let base = cfg.url.trim_end_matches('/');
    let post_url = format!("{base}/v2/{}/blobs/uploads/", cfg.repo);
    let resp = sess
        .send(client, || client.post(&post_url).header(CONTENT_LENGTH, 0))
        .await
        .with_context(|| format!("POST {post_url}"))?;
    if resp.status().as_u16() != 202 && !resp.status().is_success() {
        return Err(error_text(&format!("POST {post_url}"), resp).await);
    }
    let loc = resp
        .headers()
        .get(LOCATION)
        .with_context(|| format!("POST {post_url}: no Location header"))?
        .to_str()
        .with_context(|| format!("POST {post_url}: Location is not ASCII"))?
        .to_string();
    // Drain so the connection goes back to the pool.
    let _ = resp.bytes().await;
    let loc = resolve_location(base, &loc);
    let sep = if loc.contains('?') { '&' } else { '?' };
    let put_url = format!("{loc}{sep}digest={digest}");

    // A closure, so that a PUT refused for an expired token can be sent again from the start.
    let make = || {
        let stream = futures::stream::unfold(
            BlobStream::new(cfg.seed, idx as u64, cfg.blob_size),
            |mut s| async move { s.next_bytes().map(|b| (Ok::<Bytes, std::io::Error>(b), s)) },
        );
        let mut req = client
            .put(&put_url)
            .header(CONTENT_TYPE, "application/octet-stream");
        if cfg.content_length {
            req = req.header(CONTENT_LENGTH, cfg.blob_size);
        }
        req.body(reqwest::Body::wrap_stream(stream))
    };
    let resp = sess
        .send(client, make)
        .await
        .with_context(|| format!("PUT blob {idx} ({digest})"))?;
    if !resp.status().is_success() {
        return Err(error_text(&format!("PUT blob {idx} ({digest})"), resp).await);
    }
    let _ = resp.bytes().await;
    Ok(cfg.blob_size)
}

async fn pull_one(
    cfg: &PushPullConfig,
    client: &Client,
    sess: &mut Session,
    idx: usize,
    digest: &str,
) -> Result<u64> {
    let base = cfg.url.trim_end_matches('/');
    let url = format!("{base}/v2/{}/blobs/{digest}", cfg.repo);
    let resp = sess
        .send(client, || client.get(&url))
        .await
        .with_context(|| format!("GET blob {idx} {url}"))?;
    if !resp.status().is_success() {
        return Err(error_text(&format!("GET blob {idx} {url}"), resp).await);
    }
    // The digest is checked on its own thread, so that receiving and hashing overlap and the
    // client is less often the bottleneck of a pull (one core hashes ~1.7 GiB/s at most).
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(8);
    let hasher = tokio::task::spawn_blocking(move || {
        let mut h = Sha256::new();
        while let Some(chunk) = rx.blocking_recv() {
            h.update(&chunk);
        }
        h
    });
    let mut n = 0u64;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.with_context(|| format!("GET blob {idx}: reading body"))?;
        n += chunk.len() as u64;
        tx.send(chunk)
            .await
            .map_err(|_| anyhow!("GET blob {idx}: hasher thread stopped"))?;
    }
    drop(tx);
    let h = hasher.await.context("hasher thread panicked")?;
    let got = format!("sha256:{}", hex::encode(h.finalize()));
    if n != cfg.blob_size || got != digest {
        return Err(anyhow!(
            "GET blob {idx}: got {n} bytes with {got}, want {} bytes with {digest}",
            cfg.blob_size
        ));
    }
    Ok(n)
}

async fn run_phase(
    phase: Phase,
    cfg: &Arc<PushPullConfig>,
    client: &Client,
    digests: &Arc<Vec<String>>,
) -> Result<PhaseReport> {
    let tck = clk_tck();
    let cpu0 = cfg.server_pid.and_then(|p| cpu_seconds(p, tck).ok());
    let me = std::process::id();
    let self0 = cpu_seconds(me, tck).ok();
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..cfg.clients.max(1) {
        let cfg = Arc::clone(cfg);
        let client = client.clone();
        let digests = Arc::clone(digests);
        let next = Arc::clone(&next);
        tasks.push(tokio::spawn(async move {
            let mut r = WorkerResult {
                lat_ms: Vec::new(),
                bytes: 0,
                errors: 0,
                auth: AuthStats::default(),
            };
            // One session per client and phase, as one `docker push` / `docker pull` each.
            let actions = match phase {
                Phase::Push => "pull,push",
                Phase::Pull => "pull",
            };
            let scope = format!("repository:{}:{actions}", cfg.repo);
            let mut sess = Session::new(&cfg.auth, &cfg.url, scope);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= digests.len() {
                    break;
                }
                // The handshake (first blob) and token refreshes are in the phase's wall time
                // but not in the blob's latency.
                if let Err(e) = sess.ready(&client).await {
                    r.errors += 1;
                    eprintln!("regbench: error: authentication for blob {i}: {e:#}");
                    continue;
                }
                let t = Instant::now();
                let res = match phase {
                    Phase::Push => push_one(&cfg, &client, &mut sess, i, &digests[i]).await,
                    Phase::Pull => pull_one(&cfg, &client, &mut sess, i, &digests[i]).await,
                };
                match res {
                    Ok(b) => {
                        r.bytes += b;
                        r.lat_ms.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                    Err(e) => {
                        r.errors += 1;
                        eprintln!("regbench: error: {e:#}");
                    }
                }
            }
            r.auth = sess.stats;
            r
        }));
    }
    let mut lat = Vec::new();
    let mut bytes = 0u64;
    let mut errors = 0usize;
    let mut auth = AuthStats::default();
    for t in tasks {
        let r = t.await.context("client task panicked")?;
        lat.extend(r.lat_ms);
        bytes += r.bytes;
        errors += r.errors;
        auth.merge(&r.auth);
    }
    let wall = t0.elapsed().as_secs_f64();
    let client_cpu = self0.and_then(|c0| cpu_seconds(me, tck).ok().map(|c1| c1 - c0));
    let cpu = match (cfg.server_pid, cpu0) {
        (Some(p), Some(c0)) => cpu_seconds(p, tck).ok().map(|c1| c1 - c0),
        _ => None,
    };
    Ok(PhaseReport {
        bytes,
        requests: digests.len(),
        errors,
        wall_s: wall,
        mib_s: mib_per_s(bytes, wall),
        ops_per_s: if wall > 0.0 {
            lat.len() as f64 / wall
        } else {
            0.0
        },
        lat_p50_ms: percentile(&lat, 50.0),
        lat_p99_ms: percentile(&lat, 99.0),
        lat_max_ms: percentile(&lat, 100.0),
        server_cpu_s: cpu,
        server_cpu_s_per_gib: cpu.filter(|_| bytes > 0).map(|c| c / (bytes as f64 / GIB)),
        client_cpu_s: client_cpu,
        auth: (cfg.auth.mode != crate::regauth::AuthMode::None).then_some(auth),
    })
}

/// Run the push (and optionally pull) benchmark.
pub async fn run(cfg: PushPullConfig) -> Result<PushPullReport> {
    let t = Instant::now();
    let (seed, count, size) = (cfg.seed, cfg.count, cfg.blob_size);
    let digests = tokio::task::spawn_blocking(move || blob_digests(seed, count, size))
        .await
        .context("digest thread panicked")?;
    let digest_s = t.elapsed().as_secs_f64();
    let digests = Arc::new(digests);

    let client = Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(cfg.clients.max(1))
        .build()
        .context("building HTTP client")?;

    let cfg = Arc::new(cfg);
    let sampler = cfg
        .server_pid
        .map(|p| Sampler::start(p, cfg.sample_interval, None));
    let push = run_phase(Phase::Push, &cfg, &client, &digests).await;
    let pull = match (&push, cfg.pull) {
        (Ok(_), true) => Some(run_phase(Phase::Pull, &cfg, &client, &digests).await),
        _ => None,
    };
    let server = match sampler {
        Some(s) => Some(s.finish()?),
        None => None,
    };
    Ok(PushPullReport {
        url: cfg.url.clone(),
        repo: cfg.repo.clone(),
        blob_size: cfg.blob_size,
        count: cfg.count,
        clients: cfg.clients,
        seed: cfg.seed,
        content_length: cfg.content_length,
        digest_s,
        push: push?,
        pull: pull.transpose()?,
        server,
    })
}
