#![allow(clippy::unwrap_used)]
//! Power loss: two sites (A replicating to B), each with its data dir on an ext4 over a device
//! that loses every write not yet flushed (`stowage-lossydisk`: FUSE-served image, loop device;
//! this kernel has no device-mapper). Each round cuts the power in the middle of I/O (pushes,
//! a GC run after deletes, or replication), kills the daemons on the cut device with `kill -9`
//! at the same instant, remounts the surviving state and restarts them. After every cut:
//!
//! - every image whose manifest PUT was acknowledged (201) before the cut pulls
//!   byte-identical, and so does every blob acknowledged (201) in that round (outside GC
//!   rounds, where a blob no acknowledged manifest holds may rightly be collected);
//! - every manifest DELETE acknowledged (202) stays deleted;
//! - `stowage fsck --verify-bytes --min-orphan-age 0s` finds nothing at all on a cut site: no
//!   orphan bytes, no missing or corrupt blob, no stray or missing index row. A crash may leave
//!   upload sessions and published-but-unindexed bytes, but the daemon's start-up recovery
//!   must clear them (`recover`: staging of dead sessions, publish intents), so none is
//!   acceptable once it is serving;
//! - staging left on A belongs only to upload sessions a client opened and never saw complete
//!   (the one thing a crash may leave: resumable until upload expiry); B has none in sync;
//! - each pusher's own moving tag names the last move acknowledged before the cut or a later
//!   attempt;
//! - after replication rounds, B converges to every live image and tag A acknowledged.
//!
//! 30 cuts by default (10 of each kind, 20 to 70 s here); `STOWAGE_CHAOS_LONG=1` runs 150
//! (`chaos/powerloss.sh`). `STOWAGE_POWERLOSS_SEED` repeats a run's workload and cut points
//! (counted in device writes; thread timing still varies). Skips, saying why, when not root
//! or without `/dev/fuse`.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::image::{image, pulls_identical, tag_digest, Image};
use common::sites::{config, wait_in_sync, Peer};
use common::{data, sha256, Daemon};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use stowage_lossydisk::PowerFs;

/// Each site's device (sparse: memory grows only with what is written).
const DISK_BYTES: u64 = 768 << 20;
const REPOS: u64 = 3;
/// Where each pusher moves its own tag (`w<worker>`) to a fresh image now and then: index-only
/// writes whose acknowledged order must survive.
const MOVES_REPO: &str = "pl/moves";
/// Concurrent pushers.
const WORKERS: usize = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Push,
    Gc,
    Repl,
}

/// A site: its lossy file system and, while powered, its daemon.
struct Site {
    /// Declared first so it is dropped (killed) before its file system is unmounted.
    daemon: Option<Daemon>,
    name: &'static str,
    fs: PowerFs,
    cfg: PathBuf,
    /// The replication listener, kept across restarts so the peer finds it again.
    repl_listen: String,
    /// More `stowage serve` flags.
    extra: Vec<&'static str>,
}

impl Site {
    fn data_dir(&self) -> PathBuf {
        self.fs.mount().join("data")
    }

    fn start(&mut self) {
        let d = Daemon::start_on(
            &self.data_dir(),
            &self.repl_listen,
            // The device is small: keep only a small free-space reserve.
            &[
                &[
                    "--config",
                    self.cfg.to_str().unwrap(),
                    "--storage-min-free-space",
                    "16M",
                ][..],
                &self.extra,
            ]
            .concat(),
        );
        self.repl_listen = d.repl.trim_start_matches("http://").to_string();
        self.daemon = Some(d);
    }

    fn d(&self) -> &Daemon {
        self.daemon.as_ref().unwrap()
    }
}

/// What clients were told, as the checks need it.
#[derive(Default)]
struct Acks {
    /// Images whose manifest PUT returned 201: (repo, tag, image).
    images: Vec<(String, String, Image)>,
    /// Blobs whose PUT returned 201 this round: (repo, bytes).
    blobs: Vec<(String, Vec<u8>)>,
    /// Upload sessions handed out (their ids, from `Location`), and those whose blob PUT
    /// was acknowledged.
    sessions: Vec<String>,
    completed: Vec<String>,
    /// Moves of each worker's tag in [`MOVES_REPO`], in the order they were attempted, and
    /// those acknowledged (201): (worker, manifest digest).
    move_attempts: Vec<(usize, Image)>,
    move_acks: Vec<(usize, String)>,
    /// Images whose push failed, and the last reason (expected once the daemon is killed).
    failed: usize,
    last_error: Option<String>,
}

/// Deterministic round content: 1 to 3 layers, sometimes on the repository's shared base.
fn round_image(rng: &mut StdRng, repo_n: u64) -> Image {
    let mut layers = Vec::new();
    if rng.random_bool(0.4) {
        layers.push(data(150_000, 1_000 + repo_n));
    }
    for _ in 0..rng.random_range(1..=3) {
        // Now and then a layer of a few MiB: long transfers and writes across many pages.
        let size = if rng.random_bool(0.08) {
            rng.random_range(2 << 20..5 << 20)
        } else {
            rng.random_range(1_000..250_000)
        };
        layers.push(data(size, rng.random()));
    }
    image(layers)
}

/// Uploads a blob; `Ok(true)` when this upload was acknowledged with 201, `Ok(false)` when the
/// repository had it. Records the session it was handed and, on 201, its completion. Errors
/// are expected once the daemon is killed.
async fn put_blob(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    blob: &[u8],
    chunked: bool,
    acks: &Mutex<Acks>,
) -> Result<bool, String> {
    let digest = sha256(blob);
    let head = c
        .head(format!("{base}/v2/{repo}/blobs/{digest}"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if head.status() == StatusCode::OK {
        return Ok(false);
    }
    let post = c
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if post.status() != StatusCode::ACCEPTED {
        return Err(format!("POST upload: {}", post.status()));
    }
    let loc = post.headers()["location"].to_str().unwrap().to_string();
    let session = session_id(&loc);
    acks.lock().unwrap().sessions.push(session.clone());
    let url = if loc.starts_with("http") {
        loc
    } else {
        format!("{base}{loc}")
    };
    // Half the uploads are chunked (a PATCH, then the closing PUT), so sessions with staged
    // bytes are open when the power goes.
    let (url, body) = if chunked && blob.len() > 1 {
        let half = blob.len() / 2;
        let patch = c
            .patch(&url)
            .header("content-type", "application/octet-stream")
            .header("content-range", format!("0-{}", half - 1))
            .body(blob[..half].to_vec())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if patch.status() != StatusCode::ACCEPTED {
            return Err(format!("PATCH blob: {}", patch.status()));
        }
        let loc = patch.headers()["location"].to_str().unwrap().to_string();
        let url = if loc.starts_with("http") {
            loc
        } else {
            format!("{base}{loc}")
        };
        (url, blob[half..].to_vec())
    } else {
        (url, blob.to_vec())
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    let put = c
        .put(format!("{url}{sep}digest={digest}"))
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if put.status() != StatusCode::CREATED {
        return Err(format!("PUT blob: {}", put.status()));
    }
    acks.lock().unwrap().completed.push(session);
    Ok(true)
}

/// The upload session id in an upload `Location`.
fn session_id(location: &str) -> String {
    let after = location
        .rsplit_once("/uploads/")
        .map_or(location, |(_, s)| s);
    after.split(['?', '/']).next().unwrap_or(after).to_string()
}

/// Upload ids of the staging objects in a local blob store (`<data>/cas/uploads`: names are
/// `<upload id>.<part>`, `<upload id>.combined`, or those with a `#` temporary suffix).
fn staged_uploads(data_dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(data_dir.join("cas").join("uploads")) else {
        return Vec::new();
    };
    entries
        .map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.split(['.', '#']).next().unwrap_or(&name).to_string()
        })
        .collect()
}

/// Pushes a fresh small image to [`MOVES_REPO`] and moves the worker's tag to it, recording
/// the attempt before the PUT and the acknowledgement after it.
async fn move_tag(
    c: &reqwest::Client,
    base: &str,
    rng: &mut StdRng,
    worker: usize,
    acks: &Mutex<Acks>,
) {
    let img = image(vec![data(rng.random_range(100..20_000), rng.random())]);
    for blob in &img.blobs {
        if put_blob(c, base, MOVES_REPO, blob, false, acks)
            .await
            .is_err()
        {
            return;
        }
    }
    let digest = img.digest();
    acks.lock()
        .unwrap()
        .move_attempts
        .push((worker, img.clone()));
    let put = c
        .put(format!("{base}/v2/{MOVES_REPO}/manifests/w{worker}"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(img.manifest)
        .send()
        .await;
    if matches!(put, Ok(ref r) if r.status() == StatusCode::CREATED) {
        acks.lock().unwrap().move_acks.push((worker, digest));
    }
}

/// Checks each worker's moving tag on a site after a cut: it names the last move acknowledged
/// before the cut or a later attempt (which may have been made durable without the client
/// hearing), and that image pulls identical.
async fn check_moves(
    c: &reqwest::Client,
    d: &Daemon,
    history: &[Vec<Image>],
    last_acked: &[Option<usize>],
    what: &str,
) {
    for (w, attempts) in history.iter().enumerate() {
        let Some(i) = last_acked[w] else { continue };
        let got = tag_digest(c, &d.base, MOVES_REPO, &format!("w{w}")).await;
        let got = got.unwrap_or_else(|| panic!("{what}: acknowledged tag w{w} lost"));
        let img = attempts[i..]
            .iter()
            .find(|im| im.digest() == got)
            .unwrap_or_else(|| {
                panic!(
                    "{what}: tag w{w} names {got}, not the move acknowledged last ({}) or a later one",
                    attempts[i].digest()
                )
            });
        assert!(
            pulls_identical(c, &d.base, MOVES_REPO, &format!("w{w}"), img).await,
            "{what}: tag w{w} does not pull identical"
        );
    }
}

/// Pushes images to `base` until `stop`, recording every acknowledgement in `acks`.
async fn pusher(
    c: reqwest::Client,
    base: String,
    mut rng: StdRng,
    round: usize,
    worker: usize,
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Acks>>,
) {
    let mut k = 0;
    while !stop.load(Ordering::SeqCst) {
        let repo_n = rng.random_range(0..REPOS);
        let repo = format!("pl/app{repo_n}");
        let img = round_image(&mut rng, repo_n);
        let mut error = None;
        for blob in &img.blobs {
            let chunked = rng.random_bool(0.5);
            match put_blob(&c, &base, &repo, blob, chunked, &acks).await {
                Ok(true) => acks
                    .lock()
                    .unwrap()
                    .blobs
                    .push((repo.clone(), blob.clone())),
                Ok(false) => {}
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = error {
            // The daemon is gone (or a concurrent GC took a blob of this image): pace the
            // retries, then try another image or stop.
            {
                let mut g = acks.lock().unwrap();
                g.failed += 1;
                g.last_error = Some(e);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        if rng.random_bool(0.3) {
            move_tag(&c, &base, &mut rng, worker, &acks).await;
        }
        let tag = format!("r{round}-w{worker}-{k}");
        k += 1;
        let put = c
            .put(format!("{base}/v2/{repo}/manifests/{tag}"))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(img.manifest.clone())
            .send()
            .await;
        if matches!(put, Ok(ref r) if r.status() == StatusCode::CREATED) {
            acks.lock().unwrap().images.push((repo, tag, img));
        }
    }
}

/// `stowage fsck --json --verify-bytes --min-orphan-age 0s` on a site; its findings.
fn fsck_findings(d: &Daemon) -> Vec<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_stowage"))
        .args(["fsck", "--json", "--verify-bytes", "--min-orphan-age", "0s"])
        .args(["--server", &d.admin])
        .output()
        .unwrap();
    // 0: clean, 2: defects found; anything else means the check did not run.
    assert!(
        matches!(out.status.code(), Some(0) | Some(2)),
        "fsck did not run: {out:?}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["findings"].as_array().cloned().unwrap_or_default()
}

fn gc_run(d: &Daemon) -> Child {
    Command::new(env!("CARGO_BIN_EXE_stowage"))
        .args(["gc", "run", "--wait", "--grace", "0s", "--quarantine", "0s"])
        .args(["--server", &d.admin])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_data_survives_power_cuts_during_push_gc_and_replication() {
    if let Some(why) = stowage_lossydisk::unsupported() {
        eprintln!("SKIPPED e2e_powerloss: {why}");
        return;
    }
    let long = std::env::var("STOWAGE_CHAOS_LONG").is_ok_and(|v| v == "1");
    let rounds = if long { 150 } else { 30 };
    let seed: u64 = std::env::var("STOWAGE_POWERLOSS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("e2e_powerloss: {rounds} cuts, STOWAGE_POWERLOSS_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);

    let root = tempfile::tempdir().unwrap();
    let mut b = Site {
        name: "b",
        fs: PowerFs::new(&root.path().join("b"), DISK_BYTES).unwrap(),
        cfg: config(root.path(), "b", &[]),
        repl_listen: "127.0.0.1:0".into(),
        extra: Vec::new(),
        daemon: None,
    };
    b.start();
    let b_repl = b.d().repl.clone();
    let mut a = Site {
        name: "a",
        fs: PowerFs::new(&root.path().join("a"), DISK_BYTES).unwrap(),
        cfg: config(root.path(), "a", &[Peer("b", &b_repl, "push", "")]),
        repl_listen: "127.0.0.1:0".into(),
        extra: Vec::new(),
        daemon: None,
    };
    a.start();
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();

    let mut live: Vec<(String, String, Image)> = Vec::new();
    let mut deleted: Vec<(String, String)> = Vec::new();
    let mut cuts_during_gc = 0;
    let mut handed_out: HashSet<String> = HashSet::new();
    let mut move_history: Vec<Vec<Image>> = vec![Vec::new(); WORKERS];
    let mut last_move_acked: Vec<Option<usize>> = vec![None; WORKERS];
    let mut completed: HashSet<String> = HashSet::new();
    let mut staged_left: HashSet<String> = HashSet::new();
    let mut pages_lost = 0;
    for round in 0..rounds {
        let kind = [Kind::Push, Kind::Gc, Kind::Repl][round % 3];
        // Which sites lose power: A for pushes and GC; B, or both, during replication.
        let cut_a = kind != Kind::Repl || rng.random_bool(0.5);
        let cut_b = kind == Kind::Repl;

        // GC rounds: delete some acknowledged images first, so the collector has work.
        if kind == Kind::Gc {
            let n = live.len() / 2;
            for _ in 0..n {
                let (repo, _tag, img) = live.swap_remove(rng.random_range(0..live.len()));
                let r = c
                    .delete(a.d().url(&format!("/v2/{repo}/manifests/{}", img.digest())))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::ACCEPTED, "deleting {repo}");
                deleted.push((repo, img.digest()));
            }
        }

        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Acks::default()));
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                tokio::spawn(pusher(
                    c.clone(),
                    a.d().base.clone(),
                    StdRng::seed_from_u64(rng.random()),
                    round,
                    w,
                    stop.clone(),
                    acks.clone(),
                ))
            })
            .collect();
        let mut gc = (kind == Kind::Gc).then(|| gc_run(a.d()));

        // Cut after a random number of writes reach the watched device: in the middle of I/O.
        let watched = if cut_b { &b.fs } else { &a.fs };
        let window = if kind == Kind::Gc { 3..60 } else { 5..400 };
        let target = watched.disk().stats().writes + rng.random_range(window);
        let reached = tokio::task::block_in_place(|| {
            watched.disk().wait_writes(target, Duration::from_secs(60))
        });
        assert!(reached, "round {round}: no I/O reached the device to cut");

        // The instant of the cut: what was acknowledged before it is what must survive.
        let before = {
            let g = acks.lock().unwrap();
            (
                g.images.clone(),
                g.blobs.clone(),
                g.completed.clone(),
                g.move_acks.clone(),
            )
        };
        if cut_a {
            pages_lost += a.fs.cut();
        }
        if cut_b {
            pages_lost += b.fs.cut();
        }
        if let Some(g) = gc.as_mut() {
            if g.try_wait().unwrap().is_none() {
                cuts_during_gc += 1;
            }
        }
        for s in [&mut a, &mut b] {
            if (s.name == "a" && cut_a) || (s.name == "b" && cut_b) {
                s.daemon.take().unwrap().kill9();
            }
        }
        stop.store(true, Ordering::SeqCst);
        for w in workers {
            w.await.unwrap();
        }
        if let Some(mut g) = gc.take() {
            let _ = g.kill();
            let _ = g.wait();
        }

        // Power back on: remount (the journal replays) and restart.
        for s in [&mut a, &mut b] {
            if s.daemon.is_none() {
                s.fs.restart().unwrap();
                s.start();
            }
        }

        let (images, blobs, done, moved) = before;
        completed.extend(done);
        let (failed, last_error) = {
            let g = acks.lock().unwrap();
            handed_out.extend(g.sessions.iter().cloned());
            // Every attempt counts as possibly durable; only acknowledgements before the cut
            // are owed.
            for (w, img) in &g.move_attempts {
                move_history[*w].push(img.clone());
            }
            for (w, digest) in &moved {
                last_move_acked[*w] = move_history[*w]
                    .iter()
                    .position(|im| im.digest() == *digest);
            }
            (g.failed, g.last_error.clone())
        };
        live.extend(images);
        if cut_a {
            for (repo, tag, img) in &live {
                assert!(
                    pulls_identical(&c, &a.d().base, repo, tag, img).await,
                    "round {round} ({kind:?}, seed {seed}): acknowledged {repo}:{tag} does not pull identical after the cut"
                );
            }
            for (repo, digest) in &deleted {
                let r = c
                    .get(a.d().url(&format!("/v2/{repo}/manifests/{digest}")))
                    .header("accept", "application/vnd.oci.image.manifest.v1+json")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(
                    r.status(),
                    StatusCode::NOT_FOUND,
                    "round {round} (seed {seed}): acknowledged delete of {repo}@{digest} undone by the cut"
                );
            }
            if kind != Kind::Gc {
                for (repo, blob) in &blobs {
                    let r = c
                        .get(a.d().url(&format!("/v2/{repo}/blobs/{}", sha256(blob))))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(
                        r.status(),
                        StatusCode::OK,
                        "round {round} (seed {seed}): acknowledged blob lost in {repo}"
                    );
                    assert!(r.bytes().await.unwrap().as_ref() == blob.as_slice());
                }
            }
            check_moves(
                &c,
                a.d(),
                &move_history,
                &last_move_acked,
                &format!("round {round} ({kind:?}, seed {seed}) on A"),
            )
            .await;
            let f = fsck_findings(a.d());
            assert!(
                f.is_empty(),
                "round {round} ({kind:?}, seed {seed}): fsck on A after the cut: {f:#?}"
            );
            // Staging left on disk belongs only to sessions a client was handed and never saw
            // complete (resumable until they expire); start-up recovery removed the rest.
            for id in staged_uploads(&a.data_dir()) {
                assert!(
                    handed_out.contains(&id) && !completed.contains(&id),
                    "round {round} ({kind:?}, seed {seed}): staging of upload {id} left on A \
                     (handed out: {}, acknowledged complete: {})",
                    handed_out.contains(&id),
                    completed.contains(&id)
                );
                staged_left.insert(id);
            }
        }
        if kind == Kind::Repl || round + 1 == rounds {
            wait_in_sync(a.d(), "b", 120).await;
            for (repo, tag, img) in &live {
                assert!(
                    pulls_identical(&c, &b.d().base, repo, tag, img).await,
                    "round {round} (seed {seed}): {repo}:{tag} did not reach B identical"
                );
            }
            // Tags replicate: B names what A names.
            for w in 0..WORKERS {
                let tag = format!("w{w}");
                assert_eq!(
                    tag_digest(&c, &b.d().base, MOVES_REPO, &tag).await,
                    tag_digest(&c, &a.d().base, MOVES_REPO, &tag).await,
                    "round {round} (seed {seed}): moving tag {tag} differs between A and B in sync"
                );
            }
            let f = fsck_findings(b.d());
            assert!(
                f.is_empty(),
                "round {round} ({kind:?}, seed {seed}): fsck on B after the cut: {f:#?}"
            );
            // No client uploads to B: once in sync, no replicated transfer may leave staging.
            let staged = staged_uploads(&b.data_dir());
            assert!(
                staged.is_empty(),
                "round {round} (seed {seed}): staging left on B in sync: {staged:?}"
            );
        }
        eprintln!(
            "round {round:>2} {kind:?}: cut {}{}, {} images live, {} deleted; {failed} pushes cut short (last: {last_error:?})",
            if cut_a { "A" } else { "" },
            if cut_b { "B" } else { "" },
            live.len(),
            deleted.len()
        );
    }
    eprintln!(
        "e2e_powerloss: {rounds} cuts ({cuts_during_gc} while a GC run was going), {pages_lost} unflushed pages lost, {} unfinished upload sessions found staged after cuts, A device {:?}, B device {:?}",
        staged_left.len(),
        a.fs.disk().stats(),
        b.fs.disk().stats()
    );
    assert!(
        pages_lost > 0,
        "no cut lost an unflushed write: the cuts did not land during I/O"
    );
    // Daemons stop before their file systems go, and those before the temporary dir.
    drop(a);
    drop(b);
    drop(root);
}

/// The checks have teeth: with the index's write-ahead log not synced (`--sync-index false`,
/// documented as risking acknowledged pushes on power loss), a cut during pushes loses an
/// acknowledged image within a few cuts, and the byte-identity check sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unsynced_index_loses_acknowledged_pushes_and_the_checks_see_it() {
    if let Some(why) = stowage_lossydisk::unsupported() {
        eprintln!("SKIPPED e2e_powerloss control: {why}");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let mut a = Site {
        name: "a",
        fs: PowerFs::new(&root.path().join("a"), DISK_BYTES).unwrap(),
        cfg: config(root.path(), "a", &[]),
        repl_listen: "127.0.0.1:0".into(),
        extra: vec!["--sync-index", "false"],
        daemon: None,
    };
    a.start();
    let c = reqwest::Client::new();
    let mut rng = StdRng::seed_from_u64(rand::random());
    let mut lost = 0;
    let mut cuts = 0;
    while lost == 0 && cuts < 5 {
        cuts += 1;
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Acks::default()));
        let worker = tokio::spawn(pusher(
            c.clone(),
            a.d().base.clone(),
            StdRng::seed_from_u64(rng.random()),
            cuts,
            0,
            stop.clone(),
            acks.clone(),
        ));
        // Late enough in the pushes that several images were acknowledged.
        let target = a.fs.disk().stats().writes + 300;
        tokio::task::block_in_place(|| a.fs.disk().wait_writes(target, Duration::from_secs(60)));
        let acked = acks.lock().unwrap().images.clone();
        a.fs.cut();
        a.daemon.take().unwrap().kill9();
        stop.store(true, Ordering::SeqCst);
        worker.await.unwrap();
        a.fs.restart().unwrap();
        a.start();
        for (repo, tag, img) in &acked {
            if !pulls_identical(&c, &a.d().base, repo, tag, img).await {
                lost += 1;
            }
        }
    }
    assert!(
        lost > 0,
        "{cuts} cuts with an unsynced index lost no acknowledged image: the harness cannot see loss"
    );
    eprintln!("control: {lost} acknowledged images lost in {cuts} cuts with an unsynced index");
    drop(a);
    drop(root);
}
