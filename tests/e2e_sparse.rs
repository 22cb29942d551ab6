//! Sparse image indexes and tag parameters between two real daemons: an index pushed by its
//! sha512 digest with `?tag=`, naming a platform the source does not hold, in a project whose
//! operator allowed sparse indexes; it replicates with the children the source holds, and a
//! child pushed later follows.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::image::{image, pulls_identical, push_image, tag_digest, Image};
use common::sites::{site, sync, wait_for, wait_in_sync, Peer};
use common::{data, run};
use reqwest::StatusCode;
use sha2::Digest as _;

const INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

fn platform_image(seed: u64) -> Image {
    image(vec![data(20_000 + seed as usize, seed)])
}

fn index_of(children: &[&Image]) -> Vec<u8> {
    let manifests: Vec<serde_json::Value> = children
        .iter()
        .enumerate()
        .map(|(i, im)| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": im.digest(), "size": im.manifest.len(),
                "platform": {"architecture": format!("arch{i}"), "os": "linux"}
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": INDEX, "manifests": manifests
    }))
    .unwrap()
}

async fn put_index(c: &reqwest::Client, base: &str, path: &str, bytes: &[u8]) -> reqwest::Response {
    c.put(format!("{base}/v2/mirror/app/manifests/{path}"))
        .header("content-type", INDEX)
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap()
}

async fn status_of(c: &reqwest::Client, base: &str, reference: &str) -> StatusCode {
    c.get(format!("{base}/v2/mirror/app/manifests/{reference}"))
        .header("accept", INDEX)
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sparse_index_replicates_with_the_children_its_source_holds() {
    let root = tempfile::tempdir().unwrap();
    let b = site(root.path(), "cloud", &[]);
    let a = site(
        root.path(),
        "private",
        &[Peer(
            "cloud",
            &b.repl,
            "push",
            "anti_entropy_interval = \"0s\"",
        )],
    );
    let c = client();
    let amd = platform_image(1);
    let arm = platform_image(2);
    let idx = index_of(&[&amd, &arm]);
    let idx_d = format!("sha512:{}", hex::encode(sha2::Sha512::digest(&idx)));
    push_image(&c, &a.base, "mirror/app", &amd.digest(), &amd).await;

    // Refused until the operator allows sparse indexes in the project (at site a only).
    let r = put_index(&c, &a.base, &format!("{idx_d}?tag=v1"), &idx).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("MANIFEST_BLOB_UNKNOWN"));
    let out = run(Command::new(env!("CARGO_BIN_EXE_stowage")).args([
        "project",
        "set",
        "mirror",
        "--sparse-manifests",
        "true",
        "--server",
        &a.admin,
    ]));
    assert!(out.contains("sparse manifests allowed"), "{out}");
    let audit = run(Command::new(env!("CARGO_BIN_EXE_stowage")).args([
        "audit",
        "--action",
        "project_update",
        "--server",
        &a.admin,
    ]));
    assert!(audit.contains("sparse manifests allowed"), "{audit}");

    let r = put_index(&c, &a.base, &format!("{idx_d}?tag=v1&tag=stable"), &idx).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["docker-content-digest"], idx_d.as_str());
    assert_eq!(r.headers()["oci-tag"], "v1, stable");
    assert_eq!(
        tag_digest(&c, &a.base, "mirror/app", "stable").await,
        Some(idx_d.clone())
    );

    // At the cloud: the index under both tags, its present child, not the absent one.
    for t in ["v1", "stable"] {
        wait_for(&format!("{t} at the cloud site"), 30, || async {
            tag_digest(&c, &b.base, "mirror/app", t).await.as_deref() == Some(idx_d.as_str())
        })
        .await;
    }
    let got = c
        .get(format!("{}/v2/mirror/app/manifests/{idx_d}", b.base))
        .header("accept", INDEX)
        .send()
        .await
        .unwrap();
    assert_eq!(got.bytes().await.unwrap().as_ref(), idx.as_slice());
    assert!(pulls_identical(&c, &b.base, "mirror/app", &amd.digest(), &amd).await);
    assert_eq!(
        status_of(&c, &b.base, &arm.digest()).await,
        StatusCode::NOT_FOUND
    );
    wait_in_sync(&a, "cloud", 20).await;

    // The cloud's own clients still meet its own rule (sparse not allowed there).
    let other = index_of(&[&amd, &platform_image(3)]);
    let r = put_index(&c, &b.base, "other", &other).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("MANIFEST_BLOB_UNKNOWN"));

    // The missing platform pushed later at the source follows.
    let arm_d = arm.digest();
    push_image(&c, &a.base, "mirror/app", &arm_d, &arm).await;
    wait_for("the later child at the cloud site", 30, || {
        pulls_identical(&c, &b.base, "mirror/app", &arm_d, &arm)
    })
    .await;
    wait_in_sync(&a, "cloud", 20).await;
    let s = sync(&a, "cloud");
    assert_eq!(s["repositories_differing"], 0, "{s}");
}
