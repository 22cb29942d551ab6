//! A site sending a blob whose stored bytes are bad: the read fails before its last chunk and
//! names this site as the corrupt source, the blob is quarantined (no longer served, bytes
//! removed), and good bytes received later bring it back.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::StreamExt;
use stowage_core::{Actor, Digest, RepoName};
use stowage_index::{AuditAction, AuditFilter, BlobState, QuarantineReason};
use stowage_store::{Store, StoreConfig};

use crate::error::ReplError;
use crate::local::{BlobHeader, Local};

fn repo() -> RepoName {
    RepoName::parse("team/app").unwrap()
}

fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

fn blob_file(dir: &Path, d: &Digest) -> PathBuf {
    let hex = d.hex();
    dir.join("cas/blobs/sha256").join(&hex[..2]).join(hex)
}

async fn open(dir: &Path) -> Store {
    let mut cfg = StoreConfig::new(dir);
    cfg.site = Some("here".into());
    Store::open(cfg).await.unwrap()
}

async fn site(dir: &Path) -> Local {
    Local::new(open(dir).await.replica())
}

async fn store_blob(l: &Local, bytes: &[u8]) -> Digest {
    let d = Digest::sha256(bytes);
    let h = BlobHeader {
        repo: repo(),
        digest: d.clone(),
        size: bytes.len() as u64,
        offset: 0,
    };
    let chunks: Vec<crate::Result<Bytes>> = bytes
        .chunks(256 << 10)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let (_, complete) = l.put_blob(h, futures::stream::iter(chunks)).await.unwrap();
    assert!(complete);
    d
}

/// Flips one byte of the stored file, keeping its size.
fn damage(dir: &Path, d: &Digest, at: usize) {
    let path = blob_file(dir, d);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[at] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
}

/// What a read sends, and how it ends.
async fn read(l: &Local, d: &Digest, offset: u64) -> (usize, Option<ReplError>) {
    let (_, mut s) = l.read_blob(&repo(), d, offset).await.unwrap();
    let mut sent = 0;
    while let Some(item) = s.next().await {
        match item {
            Ok(b) => sent += b.len(),
            Err(e) => return (sent, Some(e)),
        }
    }
    (sent, None)
}

#[tokio::test]
async fn corrupt_bytes_are_not_sent_whole_and_the_blob_is_quarantined_at_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let l = site(dir.path()).await;
    let bytes = data(3 << 20, 1);
    let d = store_blob(&l, &bytes).await;
    damage(dir.path(), &d, 100);

    // A resumed transfer sends only the second half, but the damage in the first half is
    // found: the check covers the whole blob.
    let (sent, err) = read(&l, &d, bytes.len() as u64 / 2).await;
    match err {
        Some(ReplError::SourceCorrupt { digest, message }) => {
            assert_eq!(digest, d);
            assert!(message.contains("source site here"), "{message}");
        }
        other => panic!("the read must end with the source's corruption, got {other:?}"),
    }
    assert!(
        (sent as u64) < bytes.len() as u64 / 2,
        "the last chunk was held back: {sent} bytes sent"
    );

    // Quarantined as corrupt: not served, bytes removed, audited with the reason.
    let rec = l.store().index().blob(&d).unwrap().unwrap();
    assert_eq!(rec.state, BlobState::Deleted);
    let q = rec.quarantine.unwrap();
    assert!(
        matches!(q.reason, QuarantineReason::Corrupt { .. }),
        "{q:?}"
    );
    assert!(!blob_file(dir.path(), &d).exists(), "bad bytes removed");
    assert!(l.store().stat_blob(&repo(), &d).is_err(), "not served");
    let audit = l
        .store()
        .index()
        .audit_query(&AuditFilter {
            action: Some(AuditAction::BlobCorrupt),
            limit: 10,
            ..AuditFilter::default()
        })
        .unwrap();
    let entry = audit
        .iter()
        .find(|e| e.entry.action == AuditAction::BlobCorrupt)
        .expect("the quarantine is audited");
    assert_eq!(entry.entry.actor, "system:replication-verify");
    assert_eq!(entry.entry.target.as_deref(), Some(d.to_string().as_str()));

    // A later read says the same at once, without touching the (absent) bytes.
    match l.read_blob(&repo(), &d, 0).await {
        Err(ReplError::SourceCorrupt { digest, .. }) => assert_eq!(digest, d),
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("a quarantined blob was read"),
    }
}

#[tokio::test]
async fn good_bytes_received_later_replace_a_corrupt_blob() {
    let dir = tempfile::tempdir().unwrap();
    let l = site(dir.path()).await;
    let bytes = data(600_000, 2);
    let d = store_blob(&l, &bytes).await;
    damage(dir.path(), &d, bytes.len() - 1);
    let (_, err) = read(&l, &d, 0).await;
    assert!(
        matches!(err, Some(ReplError::SourceCorrupt { .. })),
        "{err:?}"
    );
    // A crash between quarantining and removing the bytes leaves them in place; publishing is
    // create-if-absent, so a repair that did not clear them would serve them again.
    let mut bad = bytes.clone();
    bad[7] ^= 0xff;
    let path = blob_file(dir.path(), &d);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &bad).unwrap();

    assert_eq!(
        l.store().clear_corrupt(&d).await.unwrap(),
        stowage_store::RepairReady::Cleared
    );
    let fixer = l.acting_for(Actor::system(crate::retry::REPAIR_ACTOR));
    store_blob(&fixer, &bytes).await;
    let rec = l.store().index().blob(&d).unwrap().unwrap();
    assert_eq!(rec.state, BlobState::Present);
    assert!(rec.quarantine.is_none());
    let (sent, err) = read(&l, &d, 0).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(sent, bytes.len());
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "good bytes stored");
}

#[tokio::test]
async fn a_read_fault_over_intact_bytes_does_not_quarantine() {
    let dir = tempfile::tempdir().unwrap();
    let l = site(dir.path()).await;
    let bytes = data(100_000, 3);
    let d = store_blob(&l, &bytes).await;
    let check = l
        .store()
        .quarantine_corrupt(&Actor::system("test"), &d, "a reader saw a bad checksum")
        .await
        .unwrap();
    assert_eq!(check, stowage_store::CorruptCheck::Intact);
    assert!(l.store().stat_blob(&repo(), &d).is_ok(), "still served");
    let (sent, err) = read(&l, &d, 0).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(sent, bytes.len());
}

#[tokio::test]
async fn a_purged_corrupt_blob_still_parks_rather_than_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let l = Local::new(store.replica());
    let bytes = data(50_000, 4);
    let d = store_blob(&l, &bytes).await;
    damage(dir.path(), &d, 0);
    let (_, err) = read(&l, &d, 0).await;
    assert!(
        matches!(err, Some(ReplError::SourceCorrupt { .. })),
        "{err:?}"
    );
    // Garbage collection purges the quarantine when its retention passes: the record goes,
    // the repository's link and the manifests that need the blob stay.
    let at = l
        .store()
        .index()
        .blob(&d)
        .unwrap()
        .unwrap()
        .quarantine
        .unwrap()
        .at_ms;
    let purged = store
        .gc_ops()
        .purge_blob(&Actor::system("gc"), &d, at)
        .await
        .unwrap();
    assert_eq!(purged, Some(bytes.len() as u64));
    assert!(l.store().index().blob(&d).unwrap().is_none());
    match l.read_blob(&repo(), &d, 0).await {
        Err(ReplError::SourceCorrupt { digest, .. }) => assert_eq!(digest, d),
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("a purged blob was read"),
    }
    // A repository that never linked it gets a plain not-found.
    let other = RepoName::parse("team/other").unwrap();
    assert!(matches!(
        l.read_blob(&other, &d, 0).await,
        Err(ReplError::NotFound(_))
    ));
}
