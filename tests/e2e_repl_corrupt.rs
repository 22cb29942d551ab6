//! Replication from a site whose stored copy of a blob is corrupt, between real daemons on
//! loopback: the source's bytes are damaged on disk after they were pushed. The sending side
//! must find it (not blame the target), quarantine the blob there, park the feed entries that
//! need it and go on with the rest of the feed; `stowage repl parked` lists them and
//! `stowage repl retry` completes them once another site holds a good copy, repairing the
//! blob from there first. Both directions: a pushing source, and a pulling target.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::image::{image, pulls_identical, push_blob, push_image, put_manifest, Image};
use common::sites::{self, peer_status, wait_for, Peer};
use common::{data, run, sha256, Daemon};
use reqwest::StatusCode;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// Starts site `name` with `peers`, periodic anti-entropy off (the tests drive it).
fn site(root: &Path, name: &str, peers: &[Peer<'_>]) -> Daemon {
    let extras: Vec<String> = peers
        .iter()
        .map(|Peer(_, _, _, extra)| format!("anti_entropy_interval = \"0s\"\n{extra}"))
        .collect();
    let peers: Vec<Peer<'_>> = peers
        .iter()
        .zip(&extras)
        .map(|(Peer(name, endpoint, direction, _), extra)| Peer(name, endpoint, direction, extra))
        .collect();
    sites::site(root, name, &peers)
}

/// `stowage repl ARGS --json --server ADMIN` that must succeed, parsed.
fn repl_json(d: &Daemon, args: &[&str]) -> serde_json::Value {
    let out = run(Command::new(env!("CARGO_BIN_EXE_stowage"))
        .arg("repl")
        .args(args)
        .args(["--json", "--server", &d.admin]));
    serde_json::from_str(&out).unwrap()
}

/// `stowage repl retry --all --json`: whether it exited successfully, and its output.
fn retry_all(d: &Daemon) -> (bool, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_stowage"))
        .args(["repl", "retry", "--all", "--json", "--server", &d.admin])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "retry printed no JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), v)
}

fn parked(d: &Daemon) -> Vec<serde_json::Value> {
    repl_json(d, &["parked"])["entries"]
        .as_array()
        .unwrap()
        .clone()
}

/// Where a site keeps a blob's bytes (file system backend).
fn blob_file(d: &Daemon, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    d.data_dir
        .join("cas/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
}

/// Flips one byte in the middle of a stored blob, keeping its size.
fn damage(d: &Daemon, digest: &str) {
    let path = blob_file(d, digest);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&path, bytes).unwrap();
}

/// Pushes `img`'s blobs to `d`, damages `layer` there, then pushes the manifest (the site
/// accepts it: its index says every blob is present).
async fn push_with_damaged_layer(c: &reqwest::Client, d: &Daemon, repo: &str, img: &Image) {
    for blob in &img.blobs {
        push_blob(c, &d.base, repo, blob).await;
    }
    damage(d, &sha256(&img.blobs[1]));
    put_manifest(c, &d.base, repo, "v1", img).await;
}

async fn blob_status(c: &reqwest::Client, d: &Daemon, repo: &str, digest: &str) -> StatusCode {
    c.get(d.url(&format!("/v2/{repo}/blobs/{digest}")))
        .send()
        .await
        .unwrap()
        .status()
}

async fn manifest_status(c: &reqwest::Client, d: &Daemon, repo: &str, r: &str) -> StatusCode {
    c.get(d.url(&format!("/v2/{repo}/manifests/{r}")))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap()
        .status()
}

/// Parked entries of `peer` that wait for `blob`, checked for what the listing says.
fn parked_for(entries: &[serde_json::Value], peer: &str, blob: &str) -> usize {
    let mine: Vec<&serde_json::Value> = entries
        .iter()
        .filter(|e| e["peer"] == peer && e["blob"] == blob)
        .collect();
    for e in &mine {
        assert_eq!(e["reason"], "source_corrupt", "{e}");
        assert_eq!(e["repository"], "team-a/app", "{e}");
        assert!(
            e["id"].as_str().unwrap().starts_with(&format!("{peer}:")),
            "{e}"
        );
    }
    mine.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_source_blob_is_quarantined_and_parked_the_feed_goes_on_and_a_third_site_repairs_it(
) {
    let root = tempfile::tempdir().unwrap();
    let b = site(root.path(), "cloud", &[]);
    let third = site(root.path(), "third", &[]);
    // The third site is a peer the private site may fetch from; nothing of team-a flows
    // between them by itself.
    let a = site(
        root.path(),
        "private",
        &[
            Peer("cloud", &b.repl, "push", "repositories = [\"team-a/**\"]"),
            Peer(
                "third",
                &third.repl,
                "pull",
                "repositories = [\"elsewhere/**\"]",
            ),
        ],
    );
    let c = client();
    let bad = image(vec![data(400_000, 11)]);
    let layer = sha256(&bad.blobs[1]);
    push_with_damaged_layer(&c, &a, "team-a/app", &bad).await;

    // The feed goes on: a later push crosses.
    let later = image(vec![data(200_000, 12)]);
    push_image(&c, &a.base, "team-a/other", "v1", &later).await;
    wait_for("the later push at the cloud site", 30, || {
        pulls_identical(&c, &b.base, "team-a/other", "v1", &later)
    })
    .await;

    // The entries that need the corrupt blob are parked, named by the source's corruption.
    let entries = parked(&a);
    assert!(parked_for(&entries, "cloud", &layer) >= 1, "{entries:?}");
    let first = &entries[0];
    let error = first["last_error"].as_str().unwrap();
    assert!(
        error.contains("corrupt at source site private"),
        "the error names the source: {error}"
    );
    let status = peer_status(&a, "cloud");
    assert_eq!(status["parked"], entries.len(), "{status}");
    assert_eq!(
        manifest_status(&c, &b, "team-a/app", "v1").await,
        StatusCode::NOT_FOUND
    );

    // The source no longer serves the corrupt blob; the bad bytes are gone.
    assert_eq!(
        blob_status(&c, &a, "team-a/app", &layer).await,
        StatusCode::NOT_FOUND
    );
    assert!(!blob_file(&a, &layer).exists());

    // No site has a good copy yet: a retry leaves the entries parked, with the attempt.
    let (ok, v) = retry_all(&a);
    assert!(!ok, "a retry that replicated nothing fails: {v}");
    for r in v["results"].as_array().unwrap() {
        assert_eq!(r["outcome"], "still_parked", "{r}");
        assert!(
            r["error"].as_str().unwrap().contains("no configured peer"),
            "{r}"
        );
    }
    let again = parked(&a);
    assert_eq!(again.len(), entries.len());
    assert!(again.iter().all(|e| e["attempts"] == 1), "{again:?}");

    // The third site gets the blob's good bytes some other way; a retry repairs the source
    // from there and completes the replication.
    push_blob(&c, &third.base, "team-a/app", &bad.blobs[1]).await;
    let (ok, v) = retry_all(&a);
    assert!(ok, "{v}");
    let results = v["results"].as_array().unwrap();
    assert!(results.iter().all(|r| r["outcome"] == "replicated"), "{v}");
    assert!(results.iter().any(|r| r["repaired_from"] == "third"), "{v}");
    assert!(pulls_identical(&c, &b.base, "team-a/app", "v1", &bad).await);
    assert!(pulls_identical(&c, &a.base, "team-a/app", "v1", &bad).await);
    assert!(parked(&a).is_empty());
    assert_eq!(peer_status(&a, "cloud")["parked"], 0);

    let m = c
        .get(a.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("stowage_replication_corrupt_blobs_total 1"),
        "{m}"
    );
    assert!(
        m.contains("stowage_replication_parked{peer=\"cloud\",direction=\"push\"} 0"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_puller_parks_what_needs_a_blob_corrupt_at_its_source_and_repairs_it_from_another_peer() {
    let root = tempfile::tempdir().unwrap();
    let origin = site(root.path(), "origin", &[]);
    let backup = site(root.path(), "backup", &[]);
    let edge = site(
        root.path(),
        "edge",
        &[
            Peer("origin", &origin.repl, "pull", ""),
            Peer(
                "backup",
                &backup.repl,
                "pull",
                "repositories = [\"elsewhere/**\"]",
            ),
        ],
    );
    let c = client();
    let bad = image(vec![data(300_000, 21)]);
    let layer = sha256(&bad.blobs[1]);
    push_with_damaged_layer(&c, &origin, "team-a/app", &bad).await;
    let later = image(vec![data(100_000, 22)]);
    push_image(&c, &origin.base, "team-a/other", "v1", &later).await;
    wait_for("the later push at the edge", 30, || {
        pulls_identical(&c, &edge.base, "team-a/other", "v1", &later)
    })
    .await;

    // The corruption crossed the wire as the source's, and the source quarantined its copy.
    let entries = parked(&edge);
    assert!(parked_for(&entries, "origin", &layer) >= 1, "{entries:?}");
    assert!(
        entries[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("corrupt at source site origin"),
        "{entries:?}"
    );
    assert_eq!(
        blob_status(&c, &origin, "team-a/app", &layer).await,
        StatusCode::NOT_FOUND
    );

    push_blob(&c, &backup.base, "team-a/app", &bad.blobs[1]).await;
    let (ok, v) = retry_all(&edge);
    assert!(ok, "{v}");
    assert!(
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["repaired_from"] == "backup"),
        "{v}"
    );
    assert!(pulls_identical(&c, &edge.base, "team-a/app", "v1", &bad).await);
    assert!(parked(&edge).is_empty());
}
