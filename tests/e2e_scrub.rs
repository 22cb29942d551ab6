//! Integrity scrub between two real daemons on loopback: blobs damaged on disk at one site
//! after they were pushed (and replicated) are found by `stowage scrub run`, quarantined, and
//! repaired from the peer that holds a good copy; a blob no peer holds stays quarantined, is
//! not served, and the report says so.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::image::{image, pulls_identical, push_image};
use common::sites::wait_in_sync;
use common::{data, run, sha256, Daemon};
use reqwest::StatusCode;

/// Starts site `name` with the scrub schedule off and `peers_toml` appended.
fn site(root: &Path, name: &str, peers_toml: &str) -> Daemon {
    let text = format!(
        "[site]\nname = \"{name}\"\n\n[scrub]\ninterval = \"0s\"\nbytes_per_second = \"64M\"\n{peers_toml}"
    );
    let cfg = root.join(format!("{name}.toml"));
    std::fs::write(&cfg, text).unwrap();
    Daemon::start_on(
        &root.join(name),
        "127.0.0.1:0",
        &["--config", cfg.to_str().unwrap()],
    )
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

/// `stowage scrub ARGS --json --server ADMIN`: whether it exited successfully, and its JSON.
fn scrub(d: &Daemon, args: &[&str]) -> (bool, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_stowage"))
        .arg("scrub")
        .args(args)
        .args(["--json", "--server", &d.admin])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "scrub printed no JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrub_repairs_a_corrupt_blob_from_the_peer_and_reports_one_no_peer_holds() {
    let root = tempfile::tempdir().unwrap();
    let b = site(root.path(), "cloud", "");
    let a = site(
        root.path(),
        "private",
        &format!(
            "\n[[replication.peers]]\nname = \"cloud\"\nendpoint = \"{}\"\ndirection = \"push\"\nanti_entropy_interval = \"0s\"\nrepositories = [\"team-a/**\"]\n",
            b.repl
        ),
    );
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    // Replicated to the cloud site: a good copy exists there.
    let shared = image(vec![data(300_000, 31)]);
    push_image(&c, &a.base, "team-a/app", "v1", &shared).await;
    // Not replicated (outside the peer's repositories): the only copy is here.
    let alone = image(vec![data(200_000, 32)]);
    push_image(&c, &a.base, "solo/app", "v1", &alone).await;
    wait_in_sync(&a, "cloud", 60).await;
    assert!(pulls_identical(&c, &b.base, "team-a/app", "v1", &shared).await);

    // A clean site: nothing found, and the report is kept.
    let (ok, clean) = scrub(&a, &["run"]);
    assert!(ok, "{clean}");
    assert_eq!(clean["state"], "completed", "{clean}");
    assert_eq!(clean["corrupt"], 0, "{clean}");
    let all_blobs = clean["blobs"].as_u64().unwrap();
    assert_eq!(all_blobs, 4, "two layers and two configs: {clean}");

    let repairable = sha256(&shared.blobs[1]);
    let lost = sha256(&alone.blobs[1]);
    damage(&a, &repairable);
    damage(&a, &lost);

    let (ok, rep) = scrub(&a, &["run"]);
    assert!(
        !ok,
        "a corrupt blob left unrepaired makes the command fail: {rep}"
    );
    assert_eq!(rep["state"], "completed", "{rep}");
    assert_eq!(
        rep["run_id"],
        clean["run_id"].as_u64().unwrap() + 1,
        "{rep}"
    );
    assert_eq!(rep["blobs"], all_blobs, "{rep}");
    assert_eq!(
        (
            rep["corrupt"].as_u64(),
            rep["repaired"].as_u64(),
            rep["unrepaired"].as_u64()
        ),
        (Some(2), Some(1), Some(1)),
        "{rep}"
    );
    let listed = rep["corrupt_blobs"].as_array().unwrap();
    let entry = |d: &str| {
        listed
            .iter()
            .find(|e| e["digest"] == d)
            .unwrap_or_else(|| panic!("{d} not in {rep}"))
            .clone()
    };
    let fixed = entry(&repairable);
    assert_eq!(fixed["repaired"], true, "{fixed}");
    assert_eq!(fixed["repaired_from"], "cloud", "{fixed}");
    assert_eq!(fixed["earlier"], false, "{fixed}");
    let gone = entry(&lost);
    assert_eq!(gone["repaired"], false, "{gone}");
    assert!(
        gone["reason"]
            .as_str()
            .unwrap()
            .contains("no configured peer"),
        "{gone}"
    );

    // Repaired: the site serves the image byte for byte again.
    assert!(pulls_identical(&c, &a.base, "team-a/app", "v1", &shared).await);
    // Unrepaired: quarantined, not served, and the bad bytes are gone.
    let r = c
        .get(a.url(&format!("/v2/solo/app/blobs/{lost}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(!blob_file(&a, &lost).exists());

    // Status shows the last report; the metrics count what was found.
    let out = run(Command::new(env!("CARGO_BIN_EXE_stowage"))
        .args(["scrub", "status", "--json", "--server", &a.admin]));
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["last"]["run_id"], rep["run_id"], "{st}");
    assert_eq!(st["running"], serde_json::Value::Null, "{st}");
    assert_eq!(st["interval_seconds"], 0, "{st}");
    let metrics = c
        .get(a.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("stowage_scrub_corrupt_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("stowage_scrub_repaired_total 1"),
        "{metrics}"
    );

    // The next run offers the quarantined blob again and still cannot repair it.
    let (ok, again) = scrub(&a, &["run"]);
    assert!(!ok, "{again}");
    assert_eq!(
        (again["corrupt"].as_u64(), again["unrepaired"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(again["corrupt_blobs"][0]["earlier"], true, "{again}");
    assert_eq!(again["blobs"], all_blobs - 1, "{again}");
}
