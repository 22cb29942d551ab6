//! Garbage collection against the real daemon under load, and `kill -9` during collection.
//!
//! * Eight clients push images that share base layers, continuously, and untag some of their
//!   older images, while the daemon collects every second with a short grace period. Every
//!   push either succeeds or fails with the documented, retryable `MANIFEST_BLOB_UNKNOWN` (a
//!   layer the client saw as present was collected before its manifest arrived; the client
//!   uploads it again). At the end every tag pulls byte-identical.
//! * The daemon collects continuously while it is killed with SIGKILL at random moments, 20
//!   times; after each restart every tagged image pulls byte-identical; at the end a full run
//!   leaves exactly the live blobs on disk (no orphan bytes, nothing missing).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{data, sha256, Daemon};
use futures::StreamExt;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// An image: its blobs (config first) and manifest bytes.
#[derive(Clone, Debug)]
struct Image {
    blobs: Vec<Vec<u8>>,
    manifest: Vec<u8>,
}

fn image(base: &[Vec<u8>], unique: Vec<u8>) -> Image {
    let mut layers: Vec<Vec<u8>> = base.to_vec();
    layers.push(unique);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| sha256(l)).collect::<Vec<_>>()}
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256(&config), "size": config.len()},
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": sha256(l), "size": l.len()})).collect::<Vec<_>>()
    }))
    .unwrap();
    let mut blobs = vec![config];
    blobs.extend(layers);
    Image { blobs, manifest }
}

/// Outcome of one push attempt.
enum Push {
    Done,
    /// `MANIFEST_BLOB_UNKNOWN` / `BLOB_UNKNOWN`: retry from the blob uploads.
    Retry,
}

async fn push_image(c: &reqwest::Client, base: &str, repo: &str, tag: &str, img: &Image) -> Push {
    for blob in &img.blobs {
        common::image::push_blob(c, base, repo, blob).await;
    }
    let resp = c
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(img.manifest.clone())
        .send()
        .await
        .unwrap();
    match resp.status() {
        StatusCode::CREATED => Push::Done,
        status => {
            let text = resp.text().await.unwrap_or_default();
            assert!(
                status == StatusCode::BAD_REQUEST
                    && (text.contains("MANIFEST_BLOB_UNKNOWN") || text.contains("BLOB_UNKNOWN")),
                "manifest push failed with {status}: {text}"
            );
            Push::Retry
        }
    }
}

async fn pull_matches(c: &reqwest::Client, base: &str, repo: &str, tag: &str, img: &Image) {
    let m = c
        .get(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(m.status(), StatusCode::OK, "{repo}:{tag} manifest");
    assert_eq!(m.bytes().await.unwrap().as_ref(), img.manifest.as_slice());
    for blob in &img.blobs {
        let digest = sha256(blob);
        let r = c
            .get(format!("{base}/v2/{repo}/blobs/{digest}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{repo}:{tag} blob {digest}");
        let got = r.bytes().await.unwrap();
        assert!(
            got.as_ref() == blob.as_slice(),
            "{repo}:{tag} blob {digest} differs"
        );
    }
}

async fn untag(c: &reqwest::Client, base: &str, repo: &str, tag: &str) {
    let r = c
        .delete(format!("{base}/v2/{repo}/manifests/{tag}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED, "untag {repo}:{tag}");
}

fn gc_cli(admin: &str, args: &[&str]) -> serde_json::Value {
    let out = common::run(
        Command::new(env!("CARGO_BIN_EXE_stowage"))
            .args(["gc"])
            .args(args)
            .args(["--json", "--server", admin]),
    );
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("gc --json output {out:?}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_under_load_keeps_every_tag() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_with(
        dir.path(),
        &[
            "--gc-interval",
            "1s",
            "--gc-grace",
            "2s",
            "--gc-quarantine",
            "0s",
            "--gc-delete-untagged",
            "true",
            // Longer than a push takes here, shorter than the test: blobs found with HEAD
            // are kept across the runs in between, and untagged images are still collected.
            "--gc-seen-window",
            "3s",
        ],
    );
    let base = d.base.clone();
    let bases: Vec<Vec<u8>> = (0..3).map(|i| data(64 * 1024, 1000 + i)).collect();
    let retries = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(12);
    let mut clients = Vec::new();
    for client_no in 0..8u64 {
        let (base, bases, retries) = (base.clone(), bases.clone(), retries.clone());
        clients.push(tokio::spawn(async move {
            let c = client();
            let repo = format!("load/app{}", client_no % 3);
            let mut kept: BTreeMap<String, Image> = BTreeMap::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let img = image(
                    &bases[..1 + (i as usize % 3)],
                    data(8 * 1024 + i as usize, client_no * 100_000 + i),
                );
                let tag = format!("c{client_no}-{i}");
                let mut attempts = 0;
                while let Push::Retry = push_image(&c, &base, &repo, &tag, &img).await {
                    retries.fetch_add(1, Ordering::Relaxed);
                    attempts += 1;
                    assert!(attempts < 20, "push of {repo}:{tag} kept failing");
                }
                kept.insert(tag.clone(), img);
                // Drop every third image again: garbage for the collector.
                if i % 3 == 2 {
                    let old = format!("c{client_no}-{}", i - 1);
                    untag(&c, &base, &repo, &old).await;
                    kept.remove(&old);
                }
                i += 1;
            }
            (repo, kept)
        }));
    }
    let mut all = Vec::new();
    for c in clients {
        all.push(c.await.unwrap());
    }
    // Wait for a completed run that started after the grace period of the last change had
    // passed (so it could collect everything untagged), then check every tag.
    let unix_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let settled_ms = unix_ms() + 2_000;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let latest = gc_cli(&d.admin, &["history", "--limit", "5"]);
        let done = latest.as_array().unwrap().iter().any(|r| {
            r["status"] == "completed" && r["started_ms"].as_u64().unwrap_or(0) >= settled_ms
        });
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no gc run over the final state in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c = client();
    let mut images = 0;
    for (repo, kept) in &all {
        for (tag, img) in kept {
            pull_matches(&c, &base, repo, tag, img).await;
            images += 1;
        }
    }
    let history = gc_cli(&d.admin, &["history", "--limit", "1000"]);
    let runs = history.as_array().unwrap();
    let completed = runs.iter().filter(|r| r["status"] == "completed").count();
    let quarantined: u64 = runs
        .iter()
        .map(|r| r["totals"]["blobs_quarantined"].as_u64().unwrap_or(0))
        .sum();
    eprintln!(
        "{images} tagged images verified; {completed} gc runs; {quarantined} blobs collected; \
         {} pushes retried after MANIFEST_BLOB_UNKNOWN",
        retries.load(Ordering::Relaxed)
    );
    assert!(images > 8, "the clients pushed too little to mean anything");
    // A client that found a blob with HEAD (or just uploaded it) and then puts its manifest is
    // never refused because a run swept the blob in between: docker and podman would not retry.
    assert_eq!(
        retries.load(Ordering::Relaxed),
        0,
        "manifest pushes refused with MANIFEST_BLOB_UNKNOWN after the blobs were found"
    );
    assert!(completed >= 5, "gc ran only {completed} times");
    assert!(
        quarantined > 0,
        "gc collected nothing although images were untagged"
    );
}

/// Digests of the files under `<data>/cas/blobs`.
fn stored_blobs(data_dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let root = data_dir.join("cas/blobs/sha256");
    let Ok(shards) = std::fs::read_dir(&root) else {
        return out;
    };
    for shard in shards {
        for f in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            let name = f.unwrap().file_name().to_string_lossy().into_owned();
            if name.len() == 64 {
                out.insert(format!("sha256:{name}"));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_gc_keeps_reachable_images() {
    let dir = tempfile::tempdir().unwrap();
    // No seen window: it would keep this round's garbage (just stored) until the kill clears
    // it, so the runs the kills aim at would have nothing to do.
    let args = [
        "--gc-interval",
        "20ms",
        "--gc-grace",
        "0s",
        "--gc-quarantine",
        "0s",
        "--gc-seen-window",
        "0s",
        "--gc-delete-untagged",
        "true",
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let c = client();
    let base_layer = data(32 * 1024, 1);
    let mut tagged: BTreeMap<String, Image> = BTreeMap::new();
    let mut n = 0u64;
    // 20 in CI; `chaos/gc-kill9.sh N` runs the same test with more.
    let kills: usize = std::env::var("STOWAGE_CHAOS_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    for _round in 0..kills {
        let d = Daemon::start_with(dir.path(), &args);
        // Everything tagged before the crash is intact after the restart.
        for (tag, img) in &tagged {
            pull_matches(&c, &d.base, "chaos/app", tag, img).await;
        }
        // New content, some of it garbage at once, so every run has work to do.
        for _ in 0..4 {
            let img = image(
                std::slice::from_ref(&base_layer),
                data(4096 + n as usize, 50_000 + n),
            );
            let tag = format!("t{n}");
            let mut attempts = 0;
            while let Push::Retry = push_image(&c, &d.base, "chaos/app", &tag, &img).await {
                attempts += 1;
                assert!(attempts < 50, "push of {tag} kept failing");
            }
            tagged.insert(tag, img);
            n += 1;
        }
        // Garbage: lone blobs, and an image untagged again.
        // Enough lone blobs that each run sweeps for a while (the kills must land inside): an
        // idle sweep grows its batches, so 200 went in a few commits and most kills of a
        // 60-kill soak landed after the run.
        let uploads = (0..800u64).map(|k| {
            let (c, base) = (c.clone(), d.base.clone());
            let blob = data(1024, 900_000 + n * 1000 + k);
            async move {
                let digest = sha256(&blob);
                let post = c
                    .post(format!(
                        "{base}/v2/chaos/app/blobs/uploads/?digest={digest}"
                    ))
                    .body(blob)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(post.status(), StatusCode::CREATED);
            }
        });
        futures::stream::iter(uploads)
            .buffer_unordered(8)
            .collect::<Vec<()>>()
            .await;
        if let Some(old) = tagged
            .keys()
            .nth(rng.random_range(0..tagged.len()))
            .cloned()
        {
            untag(&c, &d.base, "chaos/app", &old).await;
            tagged.remove(&old);
        }
        // Wait until a collection is in progress, then kill at a random moment inside it.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let m = c.get(d.url("/metrics")).send().await.unwrap();
            if m.text().await.unwrap().contains("stowage_gc_running 1") {
                break;
            }
            assert!(Instant::now() < deadline, "no gc run seen in 10 s");
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..10))).await;
        d.kill9();
    }
    // Final: restart, one full run, and the disk holds exactly the live blobs.
    let d = Daemon::start_with(
        dir.path(),
        &[
            "--gc-grace",
            "0s",
            "--gc-quarantine",
            "0s",
            "--gc-delete-untagged",
            "true",
        ],
    );
    for (tag, img) in &tagged {
        pull_matches(&c, &d.base, "chaos/app", tag, img).await;
    }
    let report = gc_cli(
        &d.admin,
        &["run", "--wait", "--grace", "0s", "--quarantine", "0s"],
    );
    assert_eq!(report["status"], "completed", "{report}");
    let live: BTreeSet<String> = tagged
        .values()
        .flat_map(|img| img.blobs.iter().map(|b| sha256(b)))
        .collect();
    let on_disk = stored_blobs(dir.path());
    let missing: Vec<_> = live.difference(&on_disk).collect();
    let extra: Vec<_> = on_disk.difference(&live).collect();
    assert!(
        missing.is_empty(),
        "live blobs missing on disk: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "unreachable blobs left on disk: {extra:?}"
    );
    let history = gc_cli(&d.admin, &["history", "--limit", "100000"]);
    let interrupted = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == "interrupted")
        .count();
    eprintln!("{kills} kills; {interrupted} runs were interrupted mid-way and closed at restart");
    // Most kills land inside a run (some runs end within the random delay).
    assert!(
        interrupted >= kills / 2,
        "only {interrupted} of {kills} kills interrupted a run"
    );
}
