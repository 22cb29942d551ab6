#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use stowage_core::{Digest, RepoName};
use stowage_index::{AuditAction, AuditFilter, Batch, RefKind};

use super::*;
use crate::tests::{actor, body, image, repo, tag};
use crate::{StoreConfig, StoreError};

fn opts(verify_bytes: bool, repair: bool) -> FsckOptions {
    FsckOptions {
        verify_bytes,
        repair,
        min_orphan_age: Duration::ZERO,
    }
}

fn blob_file(dir: &Path, d: &Digest) -> PathBuf {
    dir.join("cas").join(stowage_cas::blob_path(d).as_ref())
}

async fn push(store: &Store, r: &RepoName, data: &[u8]) -> Digest {
    let d = Digest::sha256(data);
    store.put_blob(&actor(), r, &d, body(data)).await.unwrap();
    d
}

/// An image tagged `v1` in `r` and a referrer of it; returns (manifest, layer, referrer).
async fn image_with_referrer(store: &Store, r: &RepoName, seed: u8) -> (Digest, Digest, Digest) {
    let config = push(store, r, &[seed; 10]).await;
    let layer = push(store, r, &vec![seed; 5000]).await;
    let m = image((&config, 10), &[(&layer, 5000)]);
    let md = store
        .put_manifest(&actor(), r, &tag(&format!("v{seed}")), None, m.clone())
        .await
        .unwrap()
        .digest;
    let sig = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/example.sig",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                   "digest": config.to_string(), "size": 10},
        "layers": [],
        "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": md.to_string(), "size": m.len()}
    }))
    .unwrap();
    let sd = Digest::sha256(&sig);
    store
        .put_manifest(
            &actor(),
            r,
            &stowage_core::Reference::Digest(sd.clone()),
            None,
            sig,
        )
        .await
        .unwrap();
    (md, layer, sd)
}

/// `(kind, subject)` of every finding, for exact comparison.
fn kinds(report: &FsckReport) -> BTreeSet<(String, String)> {
    report
        .findings
        .iter()
        .map(|f| {
            let subject = match &f.defect {
                Defect::BlobMissing { digest }
                | Defect::BlobSize { digest, .. }
                | Defect::BlobCorrupt { digest, .. } => digest.to_string(),
                Defect::OrphanBytes { key, .. } => key.clone(),
                Defect::RefMissing { target, .. } | Defect::RefStray { target, .. } => {
                    target.to_string()
                }
                Defect::ReferrerMissing { referrer, .. }
                | Defect::ReferrerStray { referrer, .. } => referrer.to_string(),
                other => other.to_string(),
            };
            (f.defect.kind().to_string(), subject)
        })
        .collect()
}

fn set(items: &[(&str, String)]) -> BTreeSet<(String, String)> {
    items
        .iter()
        .map(|(k, s)| (k.to_string(), s.clone()))
        .collect()
}

#[tokio::test]
async fn each_break_is_reported_exactly_and_repair_leaves_a_clean_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path())).await.unwrap();
    let r = repo("app");
    let (manifest, layer, referrer) = image_with_referrer(&store, &r, 1).await;
    let gone = push(&store, &r, &[7u8; 3000]).await;
    let short = push(&store, &r, &[8u8; 3000]).await;
    let flipped = push(&store, &r, &[9u8; 3000]).await;

    let clean = store.fsck(&actor(), &opts(true, false)).await.unwrap();
    assert_eq!(clean.findings, vec![], "a fresh store is clean");
    assert_eq!(clean.blobs, 5);
    assert_eq!(clean.stored_objects, 5);
    assert!(clean.bytes_verified >= 3 * 3000 + 5000);

    // Break it in each way.
    std::fs::remove_file(blob_file(dir.path(), &gone)).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(blob_file(dir.path(), &short))
        .unwrap();
    f.set_len(100).unwrap();
    let path = blob_file(dir.path(), &flipped);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[1234] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    let mut batch = Batch::new();
    batch.delete_ref(&layer, &r, &manifest);
    let bogus = Digest::sha256(b"never pushed");
    batch.put_ref(&bogus, &r, &manifest, RefKind::Blob);
    batch.delete_referrer(&r, &manifest, &referrer);
    store.index().commit(batch).unwrap();
    let unknown = dir.path().join("cas/blobs/sha256/ab/garbage");
    std::fs::create_dir_all(unknown.parent().unwrap()).unwrap();
    std::fs::write(&unknown, b"left here").unwrap();
    let unindexed = Digest::sha256(b"published, never recorded");
    let path = blob_file(dir.path(), &unindexed);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, b"published, never recorded").unwrap();

    let expected = set(&[
        ("blob_missing", gone.to_string()),
        ("blob_size", short.to_string()),
        ("blob_corrupt", flipped.to_string()),
        ("ref_missing", layer.to_string()),
        ("ref_stray", bogus.to_string()),
        ("referrer_missing", referrer.to_string()),
        ("orphan_bytes", "blobs/sha256/ab/garbage".to_string()),
        (
            "orphan_bytes",
            stowage_cas::blob_path(&unindexed).to_string(),
        ),
    ]);
    let found = store.fsck(&actor(), &opts(true, false)).await.unwrap();
    assert_eq!(kinds(&found), expected);
    assert_eq!(
        found.findings.len(),
        expected.len(),
        "{:#?}",
        found.findings
    );
    assert_eq!(found.repaired(), 0, "read-only by default");

    // Without reading the bytes, the flipped byte goes unseen; young orphans are in flight.
    let quick = store
        .fsck(
            &actor(),
            &FsckOptions {
                verify_bytes: false,
                repair: false,
                min_orphan_age: Duration::from_secs(3600),
            },
        )
        .await
        .unwrap();
    let mut without = expected.clone();
    without.retain(|(k, _)| k != "blob_corrupt" && k != "orphan_bytes");
    assert_eq!(kinds(&quick), without);
    assert_eq!(quick.in_flight, 2);

    let repaired = store.fsck(&actor(), &opts(true, true)).await.unwrap();
    assert_eq!(kinds(&repaired), expected);
    assert_eq!(
        repaired.repaired(),
        expected.len(),
        "{:#?}",
        repaired.findings
    );

    let after = store.fsck(&actor(), &opts(true, false)).await.unwrap();
    assert_eq!(
        after.findings,
        vec![],
        "a second check after repair is clean"
    );
    // The broken blobs are no longer served; the image still is, with its referrer.
    for d in [&gone, &short, &flipped] {
        assert!(matches!(
            store.stat_blob(&r, d),
            Err(StoreError::BlobUnknown(_))
        ));
    }
    assert_eq!(store.index().referencing_in(&layer, &r).unwrap().len(), 1);
    assert_eq!(store.referrers(&r, &manifest, None).unwrap().len(), 1);
    assert!(!unknown.exists());
    // Every repair is in the audit log.
    let filter = AuditFilter {
        action: Some(AuditAction::FsckRepair),
        ..Default::default()
    };
    let audited = store.index().audit_query(&filter).unwrap();
    assert_eq!(audited.len(), 5, "refs, referrer and orphans: {audited:#?}");
    let filter = AuditFilter {
        action: Some(AuditAction::BlobCorrupt),
        ..Default::default()
    };
    assert_eq!(store.index().audit_query(&filter).unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_store_stays_clean_while_pushes_run() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path())).await.unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let pusher = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut n: u32 = 0;
            while !*stop_rx.borrow() {
                let r = repo(&format!("p{}", n % 3));
                let seed = (n % 250) as u8 + 1;
                let config = push(&store, &r, format!("cfg {n}").as_bytes()).await;
                let layer = push(&store, &r, &vec![seed; 2000 + n as usize]).await;
                let m = image(
                    (&config, format!("cfg {n}").len() as u64),
                    &[(&layer, 2000 + n as u64)],
                );
                store
                    .put_manifest(&actor(), &r, &tag(&format!("t{n}")), None, m)
                    .await
                    .unwrap();
                n += 1;
            }
            n
        })
    };
    // Each run starts once pushes have committed since the last one, so runs overlap pushes.
    let mut feed = store.feed_watch();
    for run in 0..20 {
        feed.changed().await.unwrap();
        let report = store.fsck(&actor(), &opts(true, false)).await.unwrap();
        assert_eq!(report.findings, vec![], "run {run}");
    }
    stop_tx.send(true).unwrap();
    let pushed = pusher.await.unwrap();
    assert!(pushed > 0);
    let report = store.fsck(&actor(), &opts(true, false)).await.unwrap();
    assert_eq!(report.findings, vec![]);
    assert_eq!(report.blobs, report.stored_objects);
}

#[test]
fn feed_gaps_are_found_inside_and_at_the_end() {
    assert_eq!(feed_gaps([1, 2, 3], 3, 0), vec![]);
    assert_eq!(feed_gaps(Vec::<u64>::new(), 0, 0), vec![]);
    assert_eq!(
        feed_gaps([1, 2, 5, 6, 9], 10, 0),
        vec![
            Defect::FeedGap { first: 3, last: 4 },
            Defect::FeedGap { first: 7, last: 8 },
            Defect::FeedGap {
                first: 10,
                last: 10
            },
        ]
    );
    assert_eq!(
        feed_gaps([2], 2, 0),
        vec![Defect::FeedGap { first: 1, last: 1 }]
    );
}

#[tokio::test]
async fn a_trimmed_feed_is_not_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path())).await.unwrap();
    let r = RepoName::parse("fsck/trim").unwrap();
    for i in 0..6u8 {
        push(&store, &r, &[i; 64]).await;
    }
    let last = store.index().last_seq().unwrap();
    store
        .trim_feed(&actor(), last - 2, "test".into())
        .await
        .unwrap();
    let report = store.fsck(&actor(), &opts(false, false)).await.unwrap();
    assert_eq!(report.findings, vec![], "{:?}", report.findings);
    assert_eq!(
        feed_gaps([4, 6], 6, 2),
        vec![
            Defect::FeedGap { first: 3, last: 3 },
            Defect::FeedGap { first: 5, last: 5 }
        ]
    );
}

#[tokio::test]
async fn a_corrupt_blob_pushed_again_is_served_with_the_good_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path())).await.unwrap();
    let r = repo("corrupt");
    let data = vec![5u8; 5000];
    let d = push(&store, &r, &data).await;
    let path = blob_file(dir.path(), &d);
    let mut bad = data.clone();
    bad[100] ^= 0xff;
    std::fs::write(&path, &bad).unwrap();
    store
        .quarantine_corrupt(&actor(), &d, "test")
        .await
        .unwrap();
    // A crash (or a failed delete) between the record and the removal leaves the corrupt
    // bytes stored under the digest.
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &bad).unwrap();
    // A client pushes the blob again: the good bytes are what is served, not the kept ones.
    push(&store, &r, &data).await;
    assert_eq!(crate::tests::read(&store, &r, &d).await.unwrap(), data);
    assert_eq!(std::fs::read(&path).unwrap(), data);
}
