//! Replication between real daemons on loopback: push and pull peers, only missing blobs
//! crossing, tag moves and deletes, filters, a chain of three sites, both ways with conflicting
//! tags, anti-entropy repairing what events missed, `kill -9` of the target during a large
//! transfer, and a fault-injecting TCP proxy between the sites.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::image::{image, pulls_identical, push_image, put_manifest, tag_digest, Image};
use common::sites::{
    config, peer_status, site, site_on, status, sync, wait_for, wait_in_sync, Peer,
};
use common::{data, run, Daemon};
use reqwest::StatusCode;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap()
}

fn num(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
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
            &b.repl,
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

    // A manifest deleted by digest (now untagged) goes at the target too.
    let gone = c
        .delete(format!(
            "{}/v2/team-a/app/manifests/{}",
            a.base,
            one.digest()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::ACCEPTED);
    wait_for(
        "the deleted manifest gone at the cloud site",
        20,
        || async {
            let r = c
                .get(format!(
                    "{}/v2/team-a/app/manifests/{}",
                    b.base,
                    one.digest()
                ))
                .header("accept", "application/vnd.oci.image.manifest.v1+json")
                .send()
                .await
                .unwrap();
            r.status() == StatusCode::NOT_FOUND
        },
    )
    .await;
    assert!(
        pulls_identical(&c, &b.base, "team-a/app", "v1", &two).await,
        "the tagged image stays"
    );

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
    let cloud = site(root.path(), "cloud", &[Peer("dr", &dr.repl, "push", "")]);
    let private = site(
        root.path(),
        "private",
        &[Peer("cloud", &cloud.repl, "push", "")],
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_ways_no_loops_and_conflicting_tags_converge() {
    let root = tempfile::tempdir().unwrap();
    let b = site(root.path(), "dc-b", &[]);
    // Site A pushes to B and pulls from B: replication both ways, configured on one side.
    let a = site(
        root.path(),
        "dc-a",
        &[
            Peer("b-out", &b.repl, "push", "anti_entropy_interval = \"0s\""),
            Peer(
                "b-in",
                &b.repl,
                "pull",
                "site = \"dc-b\"\nanti_entropy_interval = \"0s\"",
            ),
        ],
    );
    let c = client();
    let x = img(40, &[]);
    let y = img(41, &[]);
    push_image(&c, &a.base, "both/app", "from-a", &x).await;
    push_image(&c, &b.base, "both/app", "from-b", &y).await;
    wait_for("A's image at B", 20, || {
        pulls_identical(&c, &b.base, "both/app", "from-a", &x)
    })
    .await;
    wait_for("B's image at A", 20, || {
        pulls_identical(&c, &a.base, "both/app", "from-b", &y)
    })
    .await;

    // The same tags changed on both sides at once, several times.
    for round in 0..6 {
        let tag = format!("t{round}");
        let (ia, ib) = (img(50 + round, &[]), img(60 + round, &[]));
        tokio::join!(
            push_image(&c, &a.base, "both/app", &tag, &ia),
            push_image(&c, &b.base, "both/app", &tag, &ib),
        );
    }
    for round in 0..6 {
        let tag = format!("t{round}");
        let (ia, ib) = (img(50 + round, &[]), img(60 + round, &[]));
        wait_for(&format!("{tag} to converge"), 30, || async {
            let (da, db) = (
                tag_digest(&c, &a.base, "both/app", &tag).await,
                tag_digest(&c, &b.base, "both/app", &tag).await,
            );
            da.is_some() && da == db
        })
        .await;
        let winner = tag_digest(&c, &a.base, "both/app", &tag).await.unwrap();
        assert!(
            winner == ia.digest() || winner == ib.digest(),
            "{tag} -> {winner}"
        );
        let won = if winner == ia.digest() { &ia } else { &ib };
        assert!(pulls_identical(&c, &a.base, "both/app", &tag, won).await);
        assert!(pulls_identical(&c, &b.base, "both/app", &tag, won).await);
    }
    // A delete on one side reaches the other.
    let del = c
        .delete(format!("{}/v2/both/app/manifests/from-b", b.base))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), StatusCode::ACCEPTED);
    wait_for("from-b deleted at A", 20, || async {
        tag_digest(&c, &a.base, "both/app", "from-b")
            .await
            .is_none()
    })
    .await;

    // No loops: once both directions are in sync, neither feed grows any more.
    wait_in_sync(&a, "b-out", 20).await;
    wait_in_sync(&a, "b-in", 20).await;
    let before = (
        num(&status(&a), "feed_sequence"),
        num(&status(&b), "feed_sequence"),
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = (
        num(&status(&a), "feed_sequence"),
        num(&status(&b), "feed_sequence"),
    );
    assert_eq!(
        before, after,
        "the feeds keep growing: changes are echoing between the sites"
    );
    for peer in ["b-out", "b-in"] {
        let s = sync(&a, peer);
        assert_eq!(s["repositories_differing"], 0, "{peer}: {s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_repairs_what_the_feed_did_not_carry() {
    let root = tempfile::tempdir().unwrap();
    let b = site(root.path(), "cloud", &[]);
    let narrow = [Peer(
        "cloud",
        &b.repl,
        "push",
        "repositories = [\"team-a/**\"]\nanti_entropy_interval = \"0s\"",
    )];
    let a = site(root.path(), "private", &narrow);
    let c = client();
    let kept_out = img(70, &[]);
    push_image(&c, &a.base, "team-b/app", "v1", &kept_out).await;
    let marker = img(71, &[]);
    push_image(&c, &a.base, "team-a/app", "v1", &marker).await;
    wait_for("team-a at the cloud", 20, || {
        pulls_identical(&c, &b.base, "team-a/app", "v1", &marker)
    })
    .await;
    wait_in_sync(&a, "cloud", 10).await;
    assert_eq!(tag_digest(&c, &b.base, "team-b/app", "v1").await, None);
    // The operator widens the filter: the cursor is past team-b's events, so only anti-entropy
    // can bring them.
    let a_dir = a.data_dir.clone();
    assert!(a.terminate().success());
    let wide = [Peer(
        "cloud",
        &b.repl,
        "push",
        "anti_entropy_interval = \"0s\"",
    )];
    let cfg = config(root.path(), "private", &wide);
    let a = Daemon::start_with(&a_dir, &["--config", cfg.to_str().unwrap()]);
    let marker2 = img(72, &[]);
    push_image(&c, &a.base, "team-a/app", "v2", &marker2).await;
    wait_for("v2 at the cloud", 20, || {
        pulls_identical(&c, &b.base, "team-a/app", "v2", &marker2)
    })
    .await;
    assert_eq!(
        tag_digest(&c, &b.base, "team-b/app", "v1").await,
        None,
        "events before the cursor are not replayed"
    );
    let s = sync(&a, "cloud");
    assert!(s["buckets_differing"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["repositories_differing"], 1, "{s}");
    assert_eq!(s["manifests_repaired"], 1, "{s}");
    assert_eq!(s["tags_repaired"], 1, "{s}");
    assert!(pulls_identical(&c, &b.base, "team-b/app", "v1", &kept_out).await);
    let again = sync(&a, "cloud");
    assert_eq!(again["buckets_differing"], 0, "{again}");
    assert_eq!(
        again["repositories_compared"], 0,
        "agreeing sites compare no repository: {again}"
    );
    let p = peer_status(&a, "cloud");
    assert_eq!(num(&p, "anti_entropy_runs"), 2, "{p}");
    assert_eq!(num(&p, "anti_entropy_repairs"), 2, "{p}");
    // A delete at the target is never undone by anti-entropy: neither the manifest nor its
    // tag (whose tombstone is newer than the source's tag) comes back.
    let del = c
        .delete(format!(
            "{}/v2/team-b/app/manifests/{}",
            b.base,
            kept_out.digest()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), StatusCode::ACCEPTED);
    let s = sync(&a, "cloud");
    assert_eq!(s["repositories_differing"], 1, "{s}");
    assert_eq!(s["manifests_repaired"], 0, "{s}");
    assert_eq!(s["tags_repaired"], 0, "{s}");
    assert_eq!(tag_digest(&c, &b.base, "team-b/app", "v1").await, None);
}

/// A free loopback port (for a daemon that must come back on the same address).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_target_during_a_large_transfer_resumes_from_its_offset() {
    let mib: usize = std::env::var("STOWAGE_REPL_BIG_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let size = mib << 20;
    let root = tempfile::tempdir().unwrap();
    let b_repl = format!("127.0.0.1:{}", free_port());
    let b = site_on(root.path(), "cloud", &b_repl, &[]);
    let a = site(
        root.path(),
        "private",
        &[Peer(
            "cloud",
            &b.repl,
            "push",
            "anti_entropy_interval = \"0s\"\nconcurrency = 1",
        )],
    );
    let c = client();
    let big = image(vec![data(size, 80)]);
    for blob in &big.blobs {
        common::image::push_blob(&c, &a.base, "big/app", blob).await;
    }
    put_manifest(&c, &a.base, "big/app", "v1", &big).await;
    // Kill the target once a quarter of the layer has crossed.
    let mut sent_at_kill = 0;
    wait_for("a quarter of the layer sent", 120, || {
        let p = peer_status(&a, "cloud");
        sent_at_kill = num(&p, "bytes_sent");
        async move { sent_at_kill >= (size / 4) as u64 }
    })
    .await;
    b.kill9();
    let b = site_on(root.path(), "cloud", &b_repl, &[]);
    wait_in_sync(&a, "cloud", 300).await;
    let p = peer_status(&a, "cloud");
    let resumed = num(&p, "bytes_resumed");
    let sent = num(&p, "bytes_sent");
    assert!(
        resumed >= 8 << 20,
        "the transfer resumed from the bytes the target kept: {p}"
    );
    assert!(
        resumed <= sent_at_kill + (64 << 20),
        "resumed past what was sent: {p}"
    );
    assert!(
        sent < big.blob_bytes() + sent_at_kill,
        "the resumed transfer sent less than the whole layer again: {p}"
    );
    assert!(
        pulls_identical(&c, &b.base, "big/app", "v1", &big).await,
        "the layer pulls byte-identical from the target"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_faults_between_sites_then_anti_entropy_finds_no_difference() {
    let root = tempfile::tempdir().unwrap();
    let b = site(root.path(), "cloud", &[]);
    let upstream: std::net::SocketAddr = b.repl.trim_start_matches("http://").parse().unwrap();
    let proxy = stowage_faultproxy::FaultProxy::start("127.0.0.1:0".parse().unwrap(), upstream)
        .await
        .unwrap();
    let via = format!("http://{}", proxy.local_addr());
    let a = site(
        root.path(),
        "private",
        &[Peer(
            "cloud",
            &via,
            "push",
            "anti_entropy_interval = \"0s\"",
        )],
    );
    let faults = proxy.faults();
    let c = client();
    let base = data(400_000, 90);
    // `chaos/repl-faults.sh` runs this longer.
    let secs: u64 = std::env::var("STOWAGE_CHAOS_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let until = Instant::now() + Duration::from_secs(secs);
    let pushes = {
        let (c, a_base, base) = (c.clone(), a.base.clone(), base.clone());
        tokio::spawn(async move {
            let mut pushed = Vec::new();
            let mut i = 0u64;
            while Instant::now() < until {
                let im = img(100 + i, std::slice::from_ref(&base));
                let (repo, tag) = (format!("chaos/app{}", i % 5), format!("t{}", i % 7));
                push_image(&c, &a_base, &repo, &tag, &im).await;
                pushed.push((repo, tag, im));
                i += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            pushed
        })
    };
    // Delays, cuts, stalls, resets and a partition, in turn, while the pushes go on.
    while Instant::now() < until {
        faults.set_delay(Duration::from_millis(20));
        tokio::time::sleep(Duration::from_secs(2)).await;
        faults.set_delay(Duration::ZERO);
        faults.set_cut_rate(0.02);
        tokio::time::sleep(Duration::from_secs(2)).await;
        faults.set_cut_rate(0.0);
        faults.set_stall_rate(0.05);
        faults.set_stall_duration(Duration::from_millis(500));
        tokio::time::sleep(Duration::from_secs(2)).await;
        faults.set_stall_rate(0.0);
        for _ in 0..3 {
            faults.reset_all();
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        faults.partition(Duration::from_secs(3));
        tokio::time::sleep(Duration::from_secs(4)).await;
    }
    let pushed = pushes.await.unwrap();
    faults.heal();
    assert!(
        proxy.stats().resets_injected > 0,
        "faults were injected: {:?}",
        proxy.stats()
    );
    wait_in_sync(&a, "cloud", 90).await;
    let p = peer_status(&a, "cloud");
    assert!(
        num(&p, "errors") > 0 && num(&p, "retries") > 0,
        "the replicator saw the faults: {p}"
    );
    // The last push of each tag is what both sites hold.
    let mut last = std::collections::BTreeMap::new();
    for (repo, tag, im) in &pushed {
        last.insert((repo.clone(), tag.clone()), im.clone());
    }
    for ((repo, tag), im) in &last {
        assert!(
            pulls_identical(&c, &b.base, repo, tag, im).await,
            "{repo}:{tag} at the cloud"
        );
    }
    let s = sync(&a, "cloud");
    assert_eq!(s["buckets_differing"], 0, "anti-entropy after healing: {s}");
    assert_eq!(s["repositories_differing"], 0, "{s}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_filters_carry_only_matching_tags_and_what_they_reach() {
    let root = tempfile::tempdir().unwrap();
    let b = site(root.path(), "cloud", &[]);
    let a = site(
        root.path(),
        "private",
        &[Peer(
            "cloud",
            &b.repl,
            "push",
            "tags = [\"v*\"]\nanti_entropy_interval = \"0s\"",
        )],
    );
    let c = client();
    let release = img(110, &[]);
    let nightly = img(111, &[]);
    push_image(&c, &a.base, "app", "latest", &nightly).await;
    push_image(&c, &a.base, "app", "v1.0", &release).await;
    wait_for("the release at the cloud", 20, || {
        pulls_identical(&c, &b.base, "app", "v1.0", &release)
    })
    .await;
    wait_in_sync(&a, "cloud", 10).await;
    assert_eq!(
        tag_digest(&c, &b.base, "app", "latest").await,
        None,
        "latest does not match v*"
    );
    let r = c
        .get(format!("{}/v2/app/manifests/{}", b.base, nightly.digest()))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "an image no matching tag reaches stays home"
    );
    let p = peer_status(&a, "cloud");
    assert_eq!(num(&p, "bytes_sent"), release.blob_bytes(), "{p}");
    // Anti-entropy with the same filters agrees.
    let s = sync(&a, "cloud");
    assert_eq!(s["buckets_differing"], 0, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bandwidth_limit_holds_a_peer_to_its_rate() {
    let root = tempfile::tempdir().unwrap();
    let b = site(root.path(), "cloud", &[]);
    let a = site(
        root.path(),
        "private",
        &[Peer(
            "cloud",
            &b.repl,
            "push",
            "bandwidth_limit = \"4M\"\nanti_entropy_interval = \"0s\"",
        )],
    );
    let c = client();
    let big = image(vec![data(12 << 20, 120)]);
    for blob in &big.blobs {
        common::image::push_blob(&c, &a.base, "slow/app", blob).await;
    }
    let started = Instant::now();
    put_manifest(&c, &a.base, "slow/app", "v1", &big).await;
    wait_for("the image at the cloud", 60, || {
        pulls_identical(&c, &b.base, "slow/app", "v1", &big)
    })
    .await;
    // 12 MiB at 4 MiB/s after a burst of at most one second's worth: at least 2 s.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "12 MiB crossed in {took:?} under a 4 MiB/s limit"
    );
}
