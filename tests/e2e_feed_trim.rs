//! Feed trimming between real daemons: a peer whose cursor is below what the source trimmed
//! compares whole states (anti-entropy) instead of silently skipping the trimmed entries, and
//! then follows the feed again.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::image::{image, pulls_identical, push_image};
use common::sites::{config, peer_status, site, wait_for, Peer};
use common::{data, run, Daemon};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// The highest point the site's feed was trimmed through, from its `feed_trim` audit entries.
fn trimmed_through(d: &Daemon) -> u64 {
    let out = run(Command::new(env!("CARGO_BIN_EXE_stowage")).args([
        "audit",
        "--action",
        "feed_trim",
        "--json",
        "--server",
        &d.admin,
    ]));
    out.lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["target"]
                .as_str()?
                .strip_prefix("through ")?
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_below_the_trimmed_feed_resyncs_instead_of_skipping() {
    let root = tempfile::tempdir().unwrap();
    // Site a keeps nothing of its feed: every pass trims through its last entry.
    let cfg = config(root.path(), "a", &[]);
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("\n[feed]\nkeep_entries = 0\nkeep_for = \"0s\"\ntrim_interval = \"1s\"\n");
    std::fs::write(&cfg, text).unwrap();
    let a = Daemon::start_on(
        &root.path().join("a"),
        "127.0.0.1:0",
        &["--config", cfg.to_str().unwrap()],
    );
    let c = client();
    let first = image(vec![data(40_000, 1)]);
    push_image(&c, &a.base, "team/app", "v1", &first).await;
    // The push wrote blob, manifest and tag entries: wait until all of them are trimmed.
    wait_for("a's feed trimmed through the push", 30, || async {
        trimmed_through(&a) >= 3
    })
    .await;
    // b pulls from a with periodic anti-entropy off: its cursor (0) is below the trimmed
    // point, so only the resync can bring v1.
    let b = site(
        root.path(),
        "b",
        &[Peer("a", &a.repl, "pull", "anti_entropy_interval = \"0s\"")],
    );
    wait_for("v1 at b", 30, || {
        pulls_identical(&c, &b.base, "team/app", "v1", &first)
    })
    .await;
    let p = peer_status(&b, "a");
    assert!(p["feed_resyncs"].as_u64().unwrap() >= 1, "{p}");
    // Later changes travel through the feed again.
    let second = image(vec![data(40_000, 2)]);
    push_image(&c, &a.base, "team/app", "v2", &second).await;
    wait_for("v2 at b", 30, || {
        pulls_identical(&c, &b.base, "team/app", "v2", &second)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_after_a_trim_carries_manifest_deletes() {
    // b follows a, then is down while a deletes a manifest and trims its whole feed. The delete
    // entry is gone, so b's resync must carry the delete from a's tombstone: b must not keep
    // (and later offer back) a manifest its source deleted.
    let root = tempfile::tempdir().unwrap();
    let cfg = config(root.path(), "a", &[]);
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("\n[feed]\nkeep_entries = 0\nkeep_for = \"0s\"\ntrim_interval = \"1s\"\n");
    std::fs::write(&cfg, text).unwrap();
    let a = Daemon::start_on(
        &root.path().join("a"),
        "127.0.0.1:0",
        &["--config", cfg.to_str().unwrap()],
    );
    let c = client();
    let first = image(vec![data(30_000, 3)]);
    push_image(&c, &a.base, "team/app", "v1", &first).await;
    let peers = [Peer("a", &a.repl, "pull", "anti_entropy_interval = \"0s\"")];
    let b = site(root.path(), "b", &peers);
    wait_for("v1 at b", 30, || {
        pulls_identical(&c, &b.base, "team/app", "v1", &first)
    })
    .await;
    drop(b);
    let r = c
        .delete(a.url(&format!("/v2/team/app/manifests/{}", first.digest())))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::ACCEPTED);
    let second = image(vec![data(30_000, 4)]);
    push_image(&c, &a.base, "team/app", "v2", &second).await;
    let last = trimmed_through(&a);
    wait_for("a's feed trimmed past the delete", 30, || async {
        trimmed_through(&a) > last
    })
    .await;
    let b = site(root.path(), "b", &peers);
    wait_for("v2 at b", 30, || {
        pulls_identical(&c, &b.base, "team/app", "v2", &second)
    })
    .await;
    let url = b.url(&format!("/v2/team/app/manifests/{}", first.digest()));
    wait_for("the deleted manifest gone at b", 30, || async {
        c.get(&url)
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .await
            .map(|r| r.status() == reqwest::StatusCode::NOT_FOUND)
            .unwrap_or(false)
    })
    .await;
    let p = peer_status(&b, "a");
    assert!(p["feed_resyncs"].as_u64().unwrap() >= 1, "{p}");
}
