//! Sparse indexes: an index whose child manifests are not all in the repository, accepted only
//! where the project allows it (or when replicated from a site that accepted it).

use super::*;
use stowage_core::ProjectChange;
use stowage_index::{AuditAction, AuditFilter, RefKind};

/// Pushes an image (config and one layer) to `r` by digest; returns its digest and size.
async fn platform(store: &Store, r: &RepoName, seed: &str) -> (Digest, u64) {
    let cfg = format!("{{\"platform\":\"{seed}\"}}").into_bytes();
    let layer = format!("layer for {seed}").into_bytes();
    let (cd, ld) = (Digest::sha256(&cfg), Digest::sha256(&layer));
    store.put_blob(&actor(), r, &cd, body(&cfg)).await.unwrap();
    store
        .put_blob(&actor(), r, &ld, body(&layer))
        .await
        .unwrap();
    let m = image((&cd, cfg.len() as u64), &[(&ld, layer.len() as u64)]);
    let d = Digest::sha256(&m);
    store
        .put_manifest(&actor(), r, &Reference::Digest(d.clone()), None, m.clone())
        .await
        .unwrap();
    (d, m.len() as u64)
}

/// An image manifest for a platform that is never pushed (its blobs are absent too).
fn absent_platform(seed: &str) -> (Digest, u64) {
    let cfg = Digest::sha256(seed.as_bytes());
    let m = image((&cfg, 10), &[]);
    (Digest::sha256(&m), m.len() as u64)
}

pub(crate) fn index_of(children: &[(&Digest, u64)]) -> Vec<u8> {
    let manifests: Vec<serde_json::Value> = children
        .iter()
        .enumerate()
        .map(|(i, (d, s))| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": d.to_string(), "size": s,
                "platform": {"architecture": format!("arch{i}"), "os": "linux"}
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests
    }))
    .unwrap()
}

async fn allow_sparse(store: &Store, project: &str, on: bool) {
    store
        .accounts()
        .set_project(
            &actor(),
            project,
            ProjectChange {
                sparse_manifests: Some(on),
                ..ProjectChange::default()
            },
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn sparse_indexes_only_where_the_project_allows_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let r = repo("mirror/app");
    let (amd, amd_size) = platform(&store, &r, "amd64").await;
    let (arm, arm_size) = absent_platform("arm64");
    let idx = index_of(&[(&amd, amd_size), (&arm, arm_size)]);
    let idx_d = Digest::sha256(&idx);

    // Off by default: refused as before, naming the absent child, nothing stored.
    let e = store
        .put_manifest(&actor(), &r, &tag("v1"), None, idx.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, StoreError::ManifestBlobUnknown(d) if *d == arm),
        "{e}"
    );
    assert!(store.index().manifest(&r, &idx_d).unwrap().is_none());
    assert!(store.index().tag(&r, "v1").unwrap().is_none());

    // Another project allowing it changes nothing here.
    allow_sparse(&store, "other", true).await;
    assert!(matches!(
        store
            .put_manifest(&actor(), &r, &tag("v1"), None, idx.clone())
            .await,
        Err(StoreError::ManifestBlobUnknown(_))
    ));

    // Allowed: accepted and pullable, both children recorded as references.
    allow_sparse(&store, "mirror", true).await;
    let out = store
        .put_manifest(&actor(), &r, &tag("v1"), None, idx.clone())
        .await
        .unwrap();
    assert_eq!(out.digest, idx_d);
    assert_eq!(store.get_manifest(&r, &tag("v1")).unwrap().bytes, idx);
    for child in [&amd, &arm] {
        let refs = store.index().referencing_in(child, &r).unwrap();
        assert_eq!(refs, vec![(idx_d.clone(), RefKind::Child)], "{child}");
    }
    assert!(matches!(
        store.get_manifest(&r, &Reference::Digest(arm.clone())),
        Err(StoreError::ManifestUnknown(_))
    ));
    // The push is audited as sparse.
    let pushes: Vec<String> = store
        .index()
        .audit_query(&AuditFilter {
            action: Some(AuditAction::ManifestPush),
            ..AuditFilter::default()
        })
        .unwrap()
        .into_iter()
        .filter(|a| a.entry.target.as_deref() == Some(idx_d.as_str()))
        .filter_map(|a| a.entry.detail)
        .collect();
    assert_eq!(pushes.len(), 1);
    assert!(
        pushes[0].contains("sparse: 1 of 2 children absent"),
        "{pushes:?}"
    );

    // A present child is still checked: a wrong size is refused even here.
    let bad = index_of(&[(&amd, amd_size + 1), (&arm, arm_size)]);
    assert!(matches!(
        store
            .put_manifest(&actor(), &r, &tag("bad"), None, bad)
            .await,
        Err(StoreError::ManifestInvalid(_))
    ));
    // An image's missing layer is refused even here: only indexes may be sparse.
    let missing = Digest::sha256(b"missing layer");
    let (cfg, _) = absent_platform("cfg");
    let img = image((&cfg, 10), &[(&missing, 13)]);
    assert!(matches!(
        store
            .put_manifest(&actor(), &r, &tag("img"), None, img)
            .await,
        Err(StoreError::ManifestBlobUnknown(_))
    ));

    // The present child cannot be deleted while the index stands.
    assert!(matches!(
        store
            .delete_manifest(&actor(), &r, &Reference::Digest(amd.clone()))
            .await,
        Err(StoreError::Conflict(_))
    ));

    // Turned off again: a new sparse index is refused; the one accepted stays.
    allow_sparse(&store, "mirror", false).await;
    let idx2 = index_of(&[(&arm, arm_size)]);
    assert!(matches!(
        store
            .put_manifest(&actor(), &r, &tag("v2"), None, idx2)
            .await,
        Err(StoreError::ManifestBlobUnknown(_))
    ));
    assert_eq!(store.get_manifest(&r, &tag("v1")).unwrap().digest, idx_d);
}

#[tokio::test]
async fn a_child_pushed_later_belongs_to_the_sparse_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let r = repo("mirror/app");
    allow_sparse(&store, "mirror", true).await;
    let (amd, amd_size) = platform(&store, &r, "amd64").await;
    // The arm64 image exists, but only in another repository.
    let (arm, arm_size) = platform(&store, &repo("elsewhere/app"), "arm64").await;
    let idx = index_of(&[(&amd, amd_size), (&arm, arm_size)]);
    let idx_d = Digest::sha256(&idx);
    store
        .put_manifest(&actor(), &r, &tag("v1"), None, idx)
        .await
        .unwrap();
    // Pushed later: it is a child of the index like any other.
    let (arm_again, _) = platform(&store, &r, "arm64").await;
    assert_eq!(arm_again, arm);
    assert!(matches!(
        store
            .delete_manifest(&actor(), &r, &Reference::Digest(arm.clone()))
            .await,
        Err(StoreError::Conflict(_))
    ));
    // Deleting the index releases both.
    store
        .delete_manifest(&actor(), &r, &Reference::Digest(idx_d))
        .await
        .unwrap();
    for child in [&amd, &arm] {
        assert!(store.index().referencing_in(child, &r).unwrap().is_empty());
        store
            .delete_manifest(&actor(), &r, &Reference::Digest(child.clone()))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_replicated_sparse_index_is_accepted_whatever_the_project_here_says() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let r = repo("mirror/app");
    let (amd, amd_size) = platform(&store, &r, "amd64").await;
    let (arm, arm_size) = absent_platform("arm64");
    let idx = index_of(&[(&amd, amd_size), (&arm, arm_size)]);
    let idx_d = Digest::sha256(&idx);
    let replica = store.replica();
    let new = replica
        .put_manifest(
            &actor(),
            &r,
            &idx_d,
            "application/vnd.oci.image.index.v1+json",
            idx,
            "site-a",
        )
        .await
        .unwrap();
    assert!(new);
    assert!(store.index().manifest(&r, &idx_d).unwrap().is_some());
    // Blobs are still demanded of a replicated image.
    let missing = Digest::sha256(b"missing layer");
    let img = image((&missing, 13), &[]);
    let e = replica
        .put_manifest(
            &actor(),
            &r,
            &Digest::sha256(&img),
            "application/vnd.oci.image.manifest.v1+json",
            img,
            "site-a",
        )
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::ManifestBlobUnknown(_)), "{e}");
}
