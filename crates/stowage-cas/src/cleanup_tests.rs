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
