//! Replication between real daemons on loopback: push and pull peers, only missing blobs
//! crossing, tag moves and deletes, filters, a chain of three sites, both ways with conflicting
//! tags, anti-entropy repairing what events missed, `kill -9` of the target during a large
//! transfer, and a fault-injecting TCP proxy between the sites.
#![allow(clippy::unwrap_used)]

mod common;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::image::{image, pulls_identical, push_image, put_manifest, tag_digest, Image};
use common::{data, run, Daemon};
use reqwest::StatusCode;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap()
}

/// One `[[replication.peers]]` entry: name, endpoint, direction, extra TOML lines.
struct Peer<'a>(&'a str, &'a str, &'a str, &'a str);

/// Writes a config file for site `site` with `peers` and returns its path.
fn config(dir: &Path, site: &str, peers: &[Peer<'_>]) -> PathBuf {
    let mut text = format!("[site]\nname = \"{site}\"\n");
    for Peer(name, endpoint, direction, extra) in peers {
        text.push_str(&format!(
            "\n[[replication.peers]]\nname = \"{name}\"\nendpoint = \"{endpoint}\"\ndirection = \"{direction}\"\n{extra}\n"
        ));
    }
    let path = dir.join(format!("{site}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts a site with its config (data in `root/<site>`).
fn site(root: &Path, name: &str, peers: &[Peer<'_>]) -> Daemon {
    site_on(root, name, "127.0.0.1:0", peers)
}

fn site_on(root: &Path, name: &str, admin: &str, peers: &[Peer<'_>]) -> Daemon {
    let cfg = config(root, name, peers);
    let dir = root.join(name);
    Daemon::start_on(&dir, admin, &["--config", cfg.to_str().unwrap()])
}

/// `stowage repl status --json` of a daemon.
fn status(d: &Daemon) -> serde_json::Value {
    let out = run(Command::new(env!("CARGO_BIN_EXE_stowage"))
        .args(["repl", "status", "--json", "--server", &d.admin]));
    serde_json::from_str(&out).unwrap()
}

fn peer_status(d: &Daemon, peer: &str) -> serde_json::Value {
    let s = status(d);
    s["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == peer)
        .cloned()
        .unwrap_or_else(|| panic!("no peer {peer} in {s}"))
}

fn num(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// `stowage repl sync PEER --json`.
fn sync(d: &Daemon, peer: &str) -> serde_json::Value {
    let out = run(Command::new(env!("CARGO_BIN_EXE_stowage"))
        .args(["repl", "sync", peer, "--json", "--server", &d.admin]));
    serde_json::from_str(&out).unwrap()
}

/// Polls `check` until it holds, failing after `secs` seconds with `what`.
async fn wait_for<F, Fut>(what: &str, secs: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the peer reports nothing left to do.
async fn wait_in_sync(d: &Daemon, peer: &str, secs: u64) {
    wait_for(&format!("{peer} in sync"), secs, || async {
        let p = peer_status(d, peer);
        p["state"] == "in_sync" && num(&p, "lag_events") == 0
    })
    .await;
}

fn img(seed: u64, layers: &[Vec<u8>]) -> Image {
    let mut l = layers.to_vec();
    l.push(data(50_000 + seed as usize * 7, seed));
    image(l)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_pushed_to_a_pulls_identical_from_b_and_only_missing_blobs_cross() {
    let root = tempfile::tempdir().unwrap();
    let b = site(root.path(), "cloud", &[]);
    let a = site(
        root.path(),
        "private",
        &[Peer(
            "cloud",
            &b.admin,
            "push",
            "repositories = [\"team-a/**\"]\nanti_entropy_interval = \"0s\"",
        )],
    );
    let c = client();
    let base = data(300_000, 1);
    let one = img(2, std::slice::from_ref(&base));
    push_image(&c, &a.base, "team-a/app", "v1", &one).await;
    wait_for("v1 at the cloud site", 20, || {
        pulls_identical(&c, &b.base, "team-a/app", "v1", &one)
    })
    .await;
    wait_in_sync(&a, "cloud", 10).await;
    let p = peer_status(&a, "cloud");
    assert_eq!(
        num(&p, "bytes_sent"),
        one.blob_bytes(),
        "exactly the image's bytes crossed: {p}"
    );
    assert_eq!(p["peer_site"], "cloud");

    // A second image sharing the base layer, in another repository: only its own blobs cross.
    let two = img(3, std::slice::from_ref(&base));
    push_image(&c, &a.base, "team-a/other", "v1", &two).await;
    wait_for("the second image", 20, || {
        pulls_identical(&c, &b.base, "team-a/other", "v1", &two)
    })
    .await;
    wait_in_sync(&a, "cloud", 10).await;
    let p = peer_status(&a, "cloud");
    let unique = one.blob_bytes() + two.blob_bytes() - base.len() as u64;
    assert_eq!(
        num(&p, "bytes_sent"),
        unique,
        "the shared base did not cross again: {p}"
    );
    assert!(num(&p, "bytes_skipped") >= base.len() as u64, "{p}");

    // A tag moved several times travels as its latest state; a tag delete travels too.
    push_image(&c, &a.base, "team-a/app", "v2", &two).await;
    put_manifest(&c, &a.base, "team-a/app", "v1", &two).await;
    put_manifest(&c, &a.base, "team-a/app", "v1", &one).await;
    put_manifest(&c, &a.base, "team-a/app", "v1", &two).await;
    let del = c
        .delete(format!("{}/v2/team-a/app/manifests/v2", a.base))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), StatusCode::ACCEPTED);
    wait_for("v1 moved at the cloud site", 20, || async {
        tag_digest(&c, &b.base, "team-a/app", "v1").await == Some(two.digest())
    })
    .await;
    wait_for("v2 deleted at the cloud site", 20, || async {
        tag_digest(&c, &b.base, "team-a/app", "v2").await.is_none()
    })
    .await;

    // Filters: team-b is not replicated.
    let three = img(4, &[]);
    push_image(&c, &a.base, "team-b/app", "v1", &three).await;
    let marker = img(5, &[]);
    push_image(&c, &a.base, "team-a/marker", "v1", &marker).await;
    wait_for("the marker image", 20, || {
        pulls_identical(&c, &b.base, "team-a/marker", "v1", &marker)
    })
    .await;
    wait_in_sync(&a, "cloud", 10).await;
    assert_eq!(
        tag_digest(&c, &b.base, "team-b/app", "v1").await,
        None,
        "team-b is filtered out"
    );
    let r = c
        .get(format!(
            "{}/v2/team-b/app/blobs/{}",
            b.base,
            common::sha256(&three.blobs[1])
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Metrics expose the same figures.
    let m = c
        .get(a.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("stowage_replication_bytes_sent_total{peer=\"cloud\",direction=\"push\"}"),
        "{m}"
    );
    assert!(
        m.contains("stowage_replication_in_sync{peer=\"cloud\",direction=\"push\"} 1"),
        "{m}"
    );
    // The table form works too.
    let text =
        run(Command::new(env!("CARGO_BIN_EXE_stowage"))
            .args(["repl", "status", "--server", &a.admin]));
    assert!(text.contains("cloud") && text.contains("in_sync"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_three_sites_converges() {
    let root = tempfile::tempdir().unwrap();
    let dr = site(root.path(), "dr", &[]);
    let cloud = site(root.path(), "cloud", &[Peer("dr", &dr.admin, "push", "")]);
    let private = site(
        root.path(),
        "private",
        &[Peer("cloud", &cloud.admin, "push", "")],
    );
    let c = client();
    let base = data(200_000, 10);
    let images: Vec<Image> = (0..4)
        .map(|i| img(20 + i, std::slice::from_ref(&base)))
        .collect();
    for (i, im) in images.iter().enumerate() {
        push_image(&c, &private.base, &format!("apps/app{i}"), "latest", im).await;
    }
    for (i, im) in images.iter().enumerate() {
        let repo = format!("apps/app{i}");
        wait_for("the image at the dr site", 30, || {
            pulls_identical(&c, &dr.base, &repo, "latest", im)
        })
        .await;
    }
    wait_in_sync(&private, "cloud", 10).await;
    wait_in_sync(&cloud, "dr", 10).await;
    // Each hop sent the base layer once.
    for (d, peer) in [(&private, "cloud"), (&cloud, "dr")] {
        let p = peer_status(d, peer);
        let unique: u64 = images.iter().map(Image::blob_bytes).sum::<u64>() - 3 * base.len() as u64;
        assert_eq!(num(&p, "bytes_sent"), unique, "{peer}: {p}");
    }
    let s = sync(&private, "cloud");
    assert_eq!(s["repositories_differing"], 0, "{s}");
    let s = sync(&cloud, "dr");
    assert_eq!(s["repositories_differing"], 0, "{s}");
}
