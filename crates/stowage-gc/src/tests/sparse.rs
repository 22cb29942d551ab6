//! Collection around a sparse index: the children it names that are present live with it,
//! the absent ones are simply absent, and one pushed later lives with it too.

use super::*;
use stowage_core::ProjectChange;

/// An image's blobs and manifest, built but not pushed: `(digest, size, blobs, bytes)`.
fn unpushed_image(seed: &str) -> (Digest, u64, Vec<Vec<u8>>, Vec<u8>) {
    let cfg = format!("{{\"platform\":\"{seed}\"}}").into_bytes();
    let layer = format!("layer of {seed}").into_bytes();
    let bytes = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": Digest::sha256(&cfg).to_string(), "size": cfg.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": Digest::sha256(&layer).to_string(), "size": layer.len()}]
    }))
    .unwrap();
    (
        Digest::sha256(&bytes),
        bytes.len() as u64,
        vec![cfg, layer],
        bytes,
    )
}

#[tokio::test]
async fn a_sparse_index_keeps_its_present_children_and_those_pushed_later() {
    let e = env().await;
    let r = "mirror/app";
    e.store
        .accounts()
        .set_project(
            &actor(),
            "mirror",
            ProjectChange {
                sparse_manifests: Some(true),
                ..ProjectChange::default()
            },
        )
        .await
        .unwrap();
    let (amd, amd_size, amd_blobs) = e.image(r, "", &[b"amd64 layer"]).await;
    let (arm, arm_size, arm_blobs, arm_bytes) = unpushed_image("arm64");
    let (riscv, riscv_size, _, _) = unpushed_image("riscv64");
    let idx = e
        .index(
            r,
            "v1",
            &[(&amd, amd_size), (&arm, arm_size), (&riscv, riscv_size)],
        )
        .await;
    e.age(2 * HOUR);

    // The tagged sparse index and its present child are kept; the absent ones trip nothing.
    let report = e.gc(false).await;
    assert_eq!(report.totals.manifests_swept, 0, "{report:?}");
    assert_eq!(report.totals.blobs_swept, 0, "{report:?}");
    assert!(e.has_manifest(r, &idx) && e.has_manifest(r, &amd));
    for b in &amd_blobs {
        assert!(e.read(r, b).await.is_ok(), "{b} lost");
    }

    // arm64 arrives later, untagged, with an untagged image that nothing references.
    for b in &arm_blobs {
        e.blob(r, b).await;
    }
    e.manifest(r, arm.as_str(), arm_bytes).await;
    let (stray, _, stray_blobs) = e.image(r, "", &[b"stray layer"]).await;
    e.age(2 * HOUR);
    let report = e.gc(false).await;
    // Both are past the grace period: the stray goes, the index keeps arm64.
    assert!(!e.has_manifest(r, &stray), "{report:?}");
    assert!(!e.served(r, &stray_blobs[1]));
    assert_eq!(report.totals.manifests_swept, 1, "{report:?}");
    assert!(e.has_manifest(r, &arm));
    for b in arm_blobs.iter().map(|b| Digest::sha256(b)) {
        assert!(e.read(r, &b).await.is_ok(), "{b} lost");
    }

    // Untagged, the index goes with the children it kept.
    e.store
        .client()
        .untag(&actor(), &repo(r), "v1")
        .await
        .unwrap();
    let report = e.gc(false).await;
    assert_eq!(report.totals.manifests_swept, 3, "{report:?}");
    for m in [&idx, &amd, &arm] {
        assert!(!e.has_manifest(r, m));
    }
}
