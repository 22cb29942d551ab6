#![allow(clippy::unwrap_used)]
//! Nothing of an interrupted upload stays on S3: a multipart upload whose body broke off, or
//! whose request future was dropped (the client went away), is aborted, as checked with moto's
//! own ListMultipartUploads.

use super::*;
use futures::StreamExt;
use stowage_core::Algorithm;

fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

fn chunks(data: &[u8]) -> Vec<Result<Bytes, std::io::Error>> {
    data.chunks(1 << 20)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect()
}

/// S3 parts but the last are at least 5 MiB.
fn s3_opts() -> CasOptions {
    CasOptions {
        part_size: MIN_REMOTE_PART,
        ..Default::default()
    }
}

/// A fresh moto bucket and the S3 store on it.
fn s3_bucket() -> (String, Arc<dyn ObjectStore>) {
    let bucket = crate::moto::bucket();
    let store = crate::tests::s3_builder_in(&bucket).build().unwrap();
    (bucket, Arc::new(store))
}

/// A body that breaks off after 6 MiB (one 5 MiB part already sent to the store): the write
/// fails and its multipart upload is aborted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_breaks_off_leaves_no_multipart_upload() {
    let (bucket, store) = s3_bucket();
    let cas = Cas::open(Backend::Custom(store), s3_opts()).unwrap();
    let mut body = chunks(&data(6 << 20, 1));
    body.push(Err(std::io::Error::other("connection reset by peer")));
    let mut h = Hasher::new(Algorithm::Sha256);
    let err = cas
        .write_part(
            "broken",
            0,
            futures::stream::iter(body),
            &mut h,
            u64::MAX,
            true,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, CasError::Body(_)), "{err}");
    cas.settle_aborts().await;
    assert_eq!(
        crate::moto::multipart_uploads(&bucket),
        Vec::<String>::new()
    );
    assert_eq!(cas.part_size("broken", 0).await.unwrap(), None);
}

/// A part write whose future is dropped while it waits for more of the body (the HTTP server
/// drops the handler of a client that went away) has its multipart upload aborted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_write_dropped_mid_body_leaves_no_multipart_upload() {
    let (bucket, store) = s3_bucket();
    let cas = Cas::open(Backend::Custom(store), s3_opts()).unwrap();
    let (waiting_tx, waiting) = tokio::sync::oneshot::channel::<()>();
    // 6 MiB, then a body that never goes on (and says so when it gets there).
    let body = futures::stream::iter(chunks(&data(6 << 20, 2)))
        .chain(futures::stream::once(async move {
            let _ = waiting_tx.send(());
            futures::future::pending::<Result<Bytes, std::io::Error>>().await
        }))
        .boxed();
    let mut h = Hasher::new(Algorithm::Sha256);
    let write = cas.write_part("dropped", 0, body, &mut h, u64::MAX, true);
    tokio::select! {
        r = write => panic!("the write ended although its body did not: {r:?}"),
        _ = waiting => {}
    }
    // The write future is gone here, in the middle of its multipart upload.
    cas.settle_aborts().await;
    assert_eq!(
        crate::moto::multipart_uploads(&bucket),
        Vec::<String>::new()
    );
    assert_eq!(cas.part_size("dropped", 0).await.unwrap(), None);
}

/// A commit that streams two staged parts into a multipart upload at the blob's key, dropped
/// while it reads a part, has that upload aborted; nothing is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_publish_dropped_midway_leaves_no_multipart_upload() {
    let (bucket, inner) = s3_bucket();
    let (store, faults) = faulty::FaultyStore::new(inner);
    let cas = Cas::open(Backend::Custom(store), s3_opts()).unwrap();
    let (a, b) = (data(5 << 20, 3), data(1 << 20, 4));
    let mut h = Hasher::new(Algorithm::Sha256);
    for (part, bytes) in [(0, &a), (1, &b)] {
        cas.write_part(
            "pub",
            part,
            futures::stream::iter(chunks(bytes)),
            &mut h,
            u64::MAX,
            true,
        )
        .await
        .unwrap();
    }
    let digest = h.finish();
    faults.stall_reads(1);
    let commit = cas.commit("pub", &[0, 1], &digest);
    tokio::select! {
        r = commit => panic!("the commit ended although its read of a part stalled: {r:?}"),
        _ = faults.stalled() => {}
    }
    cas.settle_aborts().await;
    assert_eq!(
        crate::moto::multipart_uploads(&bucket),
        Vec::<String>::new()
    );
    assert_eq!(cas.size(&digest).await.unwrap(), None);
}

/// The sweep aborts incomplete multipart uploads that a crash left under the store's key
/// prefix, in staging (unless their session is live) and at blob keys; with a time bound, only
/// those started before it; never another prefix's. Stray staged objects go too.
///
/// moto reports every upload as started on 2010-11-10, so "young" is shown by a bound before
/// that date.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_aborts_stale_multipart_uploads_under_its_prefix() {
    let bucket = crate::moto::bucket();
    let blob = format!("site-a/blobs/sha256/ab/ab{}", "0".repeat(62));
    for key in [
        "site-a/uploads/gone.00000000",
        "site-a/uploads/live.00000000",
        blob.as_str(),
        "site-b/uploads/other.00000000",
    ] {
        crate::moto::start_multipart(&bucket, key);
    }
    let backend =
        storage::s3_backend(crate::tests::s3_builder_in(&bucket), Some("/site-a/")).unwrap();
    assert!(backend.is_remote());
    let cas = Cas::open(backend, s3_opts()).unwrap();
    let mut h = Hasher::new(Algorithm::Sha256);
    cas.write_part(
        "gone",
        1,
        futures::stream::iter(chunks(b"x")),
        &mut h,
        10,
        true,
    )
    .await
    .unwrap();
    let live: std::collections::HashSet<String> = ["live".to_string()].into();
    let mut all = crate::moto::multipart_uploads(&bucket);
    all.sort();
    assert_eq!(all.len(), 4, "{all:?}");

    // Everything is younger than a bound in 2001: nothing goes.
    let early = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    let swept = cas.sweep_uploads(&live, Some(early)).await.unwrap();
    assert_eq!(swept, UploadSweep::default());
    let mut left = crate::moto::multipart_uploads(&bucket);
    left.sort();
    assert_eq!(left, all);
    assert_eq!(cas.part_size("gone", 1).await.unwrap(), Some(1));

    // Older than now: the stale ones under the prefix go, the live session's stays.
    let swept = cas
        .sweep_uploads(&live, Some(std::time::SystemTime::now()))
        .await
        .unwrap();
    assert_eq!(
        swept,
        UploadSweep {
            staged: 1,
            multipart: 2,
            multipart_failures: 0
        }
    );
    let mut left = crate::moto::multipart_uploads(&bucket);
    left.sort();
    assert_eq!(
        left,
        [
            "site-a/uploads/live.00000000",
            "site-b/uploads/other.00000000"
        ]
    );
    assert_eq!(cas.part_size("gone", 1).await.unwrap(), None);

    // At start (no bound) with no live session: the live one's upload goes too.
    let swept = cas.sweep_uploads(&Default::default(), None).await.unwrap();
    assert_eq!(swept.multipart, 1);
    assert_eq!(
        crate::moto::multipart_uploads(&bucket),
        ["site-b/uploads/other.00000000"]
    );
}
