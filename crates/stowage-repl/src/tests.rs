#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use stowage_core::{Digest, RepoName};
use stowage_store::{Store, StoreConfig};

use crate::error::ReplError;
use crate::local::{BlobHeader, Local};

/// Part size in these tests.
const PART_BYTES: usize = 1 << 20;

fn repo(s: &str) -> RepoName {
    RepoName::parse(s).unwrap()
}

fn bytes_of(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// `data` as a stream of 1 MiB chunks.
fn chunks(data: &[u8]) -> impl futures::Stream<Item = crate::Result<Bytes>> + Unpin + Send {
    let v: Vec<crate::Result<Bytes>> = data
        .chunks(300_000)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures::stream::iter(v)
}

async fn open(dir: &std::path::Path) -> Local {
    let mut cfg = StoreConfig::new(dir);
    cfg.site = Some("here".into());
    Local::new(Store::open(cfg).await.unwrap().replica()).with_part_bytes(PART_BYTES)
}

async fn read_all(l: &Local, r: &RepoName, d: &Digest) -> Vec<u8> {
    let (_, s) = l.read_blob(r, d, 0).await.unwrap();
    let parts: Vec<Bytes> = s.try_collect().await.unwrap();
    parts.concat()
}

#[tokio::test]
async fn a_half_sent_blob_resumes_from_what_survived_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = bytes_of(3 * PART_BYTES + 12345, 1);
    let d = Digest::sha256(&data);
    let r = repo("app");
    let header = |offset| BlobHeader {
        repo: r.clone(),
        digest: d.clone(),
        size: data.len() as u64,
        offset,
    };
    let first = 2 * PART_BYTES + 4321;
    {
        let l = open(dir.path()).await;
        assert_eq!(
            l.missing_blobs(
                &r,
                &[(d.clone(), data.len() as u64)],
                Duration::from_secs(60)
            )
            .await
            .unwrap(),
            [(d.clone(), 0)]
        );
        let (held, complete) = l.put_blob(header(0), chunks(&data[..first])).await.unwrap();
        assert_eq!((held, complete), (first as u64, false));
        // The wrong offset is refused with the bytes held.
        match l.put_blob(header(0), chunks(&data[..10])).await {
            Err(ReplError::OffsetMismatch { held }) => assert_eq!(held, first as u64),
            other => panic!("{other:?}"),
        }
    }
    // After a restart the parts are still there.
    let l = open(dir.path()).await;
    let missing = l
        .missing_blobs(
            &r,
            &[(d.clone(), data.len() as u64)],
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(missing, [(d.clone(), first as u64)]);
    let (held, complete) = l
        .put_blob(header(first as u64), chunks(&data[first..]))
        .await
        .unwrap();
    assert_eq!((held, complete), (data.len() as u64, true));
    assert_eq!(read_all(&l, &r, &d).await, data);
    assert!(l
        .missing_blobs(
            &r,
            &[(d.clone(), data.len() as u64)],
            Duration::from_secs(60)
        )
        .await
        .unwrap()
        .is_empty());
    // Sending it again is a no-op that reports it complete.
    assert_eq!(
        l.put_blob(header(0), chunks(&data[..1])).await.unwrap(),
        (data.len() as u64, true)
    );
}

#[tokio::test]
async fn content_that_does_not_match_its_digest_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let l = open(dir.path()).await;
    let data = bytes_of(PART_BYTES + 100, 2);
    let claimed = Digest::sha256(b"something else entirely");
    let r = repo("app");
    let h = BlobHeader {
        repo: r.clone(),
        digest: claimed.clone(),
        size: data.len() as u64,
        offset: 0,
    };
    let err = l.put_blob(h.clone(), chunks(&data)).await.unwrap_err();
    assert!(matches!(err, ReplError::Invalid(_)), "{err:?}");
    // Nothing stored, and a new transfer starts from zero.
    assert_eq!(
        l.missing_blobs(&r, &[(claimed.clone(), data.len() as u64)], Duration::ZERO)
            .await
            .unwrap(),
        [(claimed.clone(), 0)]
    );
    // More bytes than the header's size are refused too.
    let small = BlobHeader { size: 10, ..h };
    assert!(matches!(
        l.put_blob(small, chunks(&data[..20])).await,
        Err(ReplError::Invalid(_))
    ));
}

#[tokio::test]
async fn a_broken_stream_keeps_what_arrived() {
    let dir = tempfile::tempdir().unwrap();
    let l = open(dir.path()).await;
    let data = bytes_of(2 * PART_BYTES, 3);
    let d = Digest::sha256(&data);
    let r = repo("app");
    let arrived = PART_BYTES + 777;
    let broken = chunks(&data[..arrived]).chain(futures::stream::iter(vec![Err(
        ReplError::Unavailable("cut".into()),
    )]));
    let h = BlobHeader {
        repo: r.clone(),
        digest: d.clone(),
        size: data.len() as u64,
        offset: 0,
    };
    assert!(matches!(
        l.put_blob(h, broken).await,
        Err(ReplError::Unavailable(_))
    ));
    let missing = l
        .missing_blobs(&r, &[(d.clone(), data.len() as u64)], Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(missing, [(d, arrived as u64)]);
}

#[tokio::test]
async fn blobs_stored_under_another_repository_are_linked_not_sent() {
    let dir = tempfile::tempdir().unwrap();
    let l = open(dir.path()).await;
    let data = bytes_of(1000, 4);
    let d = Digest::sha256(&data);
    let h = BlobHeader {
        repo: repo("first"),
        digest: d.clone(),
        size: 1000,
        offset: 0,
    };
    assert_eq!(l.put_blob(h, chunks(&data)).await.unwrap(), (1000, true));
    let second = repo("second");
    let absent = Digest::sha256(b"absent");
    let missing = l
        .missing_blobs(
            &second,
            &[(d.clone(), 1000), (absent.clone(), 6)],
            Duration::ZERO,
        )
        .await
        .unwrap();
    assert_eq!(missing, [(absent, 0)]);
    assert_eq!(read_all(&l, &second, &d).await, data);
    // A size that disagrees with what is stored is an error, not a silent link.
    assert!(matches!(
        l.missing_blobs(&second, &[(d, 999)], Duration::ZERO).await,
        Err(ReplError::Invalid(_))
    ));
}
