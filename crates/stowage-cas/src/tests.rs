#![allow(clippy::unwrap_used)]
//! One suite, run against every backend: memory, the local file system, S3 (moto's server,
//! started by the suite itself; see `moto.rs`) and Azure Blob Storage (Azurite, likewise; see
//! `azurite.rs`).

use super::*;
use futures::TryStreamExt;
use stowage_core::Algorithm;

fn body(data: &[u8], chunk: usize) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
    let chunks: Vec<Result<Bytes, std::io::Error>> = data
        .chunks(chunk.max(1))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures::stream::iter(chunks)
}

fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn read_all(
    cas: &Cas,
    d: &Digest,
    size: u64,
    range: Option<std::ops::Range<u64>>,
) -> Result<Vec<u8>, CasError> {
    let s = cas.read(d, size, range, None).await?;
    let chunks: Vec<Bytes> = s.try_collect().await?;
    Ok(chunks.concat())
}

/// An S3 store on the suite's moto server, in a fresh bucket.
fn s3_store() -> Arc<dyn ObjectStore> {
    Arc::new(s3_builder().build().unwrap())
}

/// An S3 store with create-if-absent copies (`copy_if_not_exists = "multipart"`: a one-part
/// upload copy completed with `If-None-Match: *`, which moto enforces as Amazon S3 does).
fn s3_conditional_store() -> Arc<dyn ObjectStore> {
    let b = s3_builder().with_copy_if_not_exists(object_store::aws::S3CopyIfNotExists::Multipart);
    Arc::new(b.build().unwrap())
}

fn s3_builder() -> object_store::aws::AmazonS3Builder {
    s3_builder_in(&crate::moto::bucket())
}

/// An S3 store builder for `bucket` on the suite's moto server.
pub(crate) fn s3_builder_in(bucket: &str) -> object_store::aws::AmazonS3Builder {
    object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_endpoint(crate::moto::endpoint())
        .with_region("us-east-1")
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
}

/// An Azure store on the suite's Azurite server, in a fresh container.
///
/// Not `with_use_emulator(true)`: that mode takes the server's URL only from the process
/// environment (`AZURITE_BLOB_STORAGE_URL`, else port 10000), and the suite's server is on a port
/// of its own. Azurite is addressed as an ordinary account at a custom endpoint instead: the
/// account URL `http://127.0.0.1:PORT/devstoreaccount1` gives the same path-style URLs and
/// SharedKey signatures as emulator mode. (Emulator mode also filters `list_with_offset` on the
/// client because Azurite ignores `startFrom`; the Cas does not use it.)
fn azure_store() -> Arc<dyn ObjectStore> {
    let azure = object_store::azure::MicrosoftAzureBuilder::new()
        .with_account(crate::azurite::ACCOUNT)
        .with_access_key(crate::azurite::KEY)
        .with_endpoint(crate::azurite::account_url())
        .with_container_name(crate::azurite::container())
        .with_allow_http(true)
        .build()
        .unwrap();
    Arc::new(azure)
}

/// A real GCS bucket, when `STOWAGE_TEST_GCS_BUCKET` names one (credentials from the usual
/// environment, `GOOGLE_SERVICE_ACCOUNT` and so on): no server that speaks GCS's XML API can be
/// installed here, so CI does not run this. Each call gets a prefix of its own.
fn gcs_store() -> Option<Arc<dyn ObjectStore>> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let bucket = std::env::var("STOWAGE_TEST_GCS_BUCKET").ok()?;
    let gcs = object_store::gcp::GoogleCloudStorageBuilder::from_env()
        .with_bucket_name(bucket)
        .build()
        .unwrap();
    let prefix = format!(
        "stowage-test/{}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    Some(Arc::new(object_store::prefix::PrefixStore::new(
        gcs, prefix,
    )))
}

/// The suite's backends, named, each probed as the daemon probes it at start (which tells the
/// Cas whether the store's create-if-absent copies work).
pub(crate) async fn named_backends() -> Vec<(&'static str, Cas, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let small = CasOptions {
        part_size: 64 * 1024,
        ..Default::default()
    };
    // S3 parts but the last must be at least 5 MiB.
    let s3 = CasOptions {
        part_size: 5 << 20,
        ..Default::default()
    };
    let mut all = vec![
        (
            "memory",
            Cas::open(Backend::Memory, small.clone()).unwrap(),
            None,
        ),
        (
            "filesystem",
            Cas::open(
                Backend::Filesystem {
                    root: dir.path().join("blobs"),
                },
                small,
            )
            .unwrap(),
            Some(dir),
        ),
        (
            "s3",
            Cas::open(Backend::Custom(s3_store()), s3.clone()).unwrap(),
            None,
        ),
        (
            "s3 (copy_if_not_exists)",
            Cas::open(Backend::Custom(s3_conditional_store()), s3.clone()).unwrap(),
            None,
        ),
        (
            "azure",
            Cas::open(Backend::Custom(azure_store()), s3.clone()).unwrap(),
            None,
        ),
    ];
    if let Some(gcs) = gcs_store() {
        all.push(("gcs", Cas::open(Backend::Custom(gcs), s3).unwrap(), None));
    }
    for (name, cas, _) in &all {
        cas.probe(std::time::Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    all
}

async fn backends() -> Vec<(Cas, Option<tempfile::TempDir>)> {
    named_backends()
        .await
        .into_iter()
        .map(|(_, cas, dir)| (cas, dir))
        .collect()
}

#[tokio::test]
async fn the_probe_learns_which_stores_publish_create_if_absent() {
    let got: Vec<(&str, bool)> = named_backends()
        .await
        .iter()
        .map(|(name, cas, _)| (*name, cas.atomic_publish()))
        .collect();
    let mut want = vec![
        ("memory", true),
        ("filesystem", true),
        ("s3", false),
        ("s3 (copy_if_not_exists)", true),
        ("azure", true),
    ];
    if gcs_store().is_some() {
        want.push(("gcs", true));
    }
    assert_eq!(got, want);
    // Not before the probe: an object store is not assumed to have it.
    let cas = Cas::open(Backend::Custom(azure_store()), CasOptions::default()).unwrap();
    assert!(!cas.atomic_publish());
    // The probe leaves nothing behind.
    let store = s3_conditional_store();
    let cas = Cas::open(Backend::Custom(store.clone()), CasOptions::default()).unwrap();
    cas.probe(std::time::Duration::from_secs(20)).await.unwrap();
    let left: Vec<_> = store.list(None).try_collect().await.unwrap();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn write_commit_read_in_parts() {
    for (cas, _dir) in backends().await {
        let a = data(300_000, 1);
        let b = data(123_457, 2);
        let mut h = Hasher::new(Algorithm::Sha256);
        let n1 = cas
            .write_part("u1", 0, body(&a, 7000), &mut h, u64::MAX, true)
            .await
            .unwrap();
        let n2 = cas
            .write_part("u1", 1, body(&b, 65536), &mut h, u64::MAX, true)
            .await
            .unwrap();
        assert_eq!((n1, n2), (a.len() as u64, b.len() as u64));
        let digest = h.finish();
        let whole = [a.clone(), b.clone()].concat();
        assert_eq!(digest, Digest::sha256(&whole));
        // Rehash from stored parts gives the same state.
        let (h2, size) = cas
            .rehash_parts("u1", &[0, 1], Algorithm::Sha256)
            .await
            .unwrap();
        assert_eq!(size, whole.len() as u64);
        assert_eq!(h2.finish(), digest);
        assert_eq!(
            cas.commit("u1", &[0, 1], &digest).await.unwrap(),
            CommitOutcome::Stored
        );
        assert_eq!(cas.size(&digest).await.unwrap(), Some(whole.len() as u64));
        assert_eq!(
            read_all(&cas, &digest, whole.len() as u64, None)
                .await
                .unwrap(),
            whole
        );
        let r = read_all(&cas, &digest, whole.len() as u64, Some(1000..250_000))
            .await
            .unwrap();
        assert_eq!(r, whole[1000..250_000]);
        // Staged parts are gone.
        assert_eq!(cas.part_size("u1", 0).await.unwrap(), None);
        assert_eq!(cas.part_size("u1", 1).await.unwrap(), None);
    }
}

#[tokio::test]
async fn same_blob_twice_is_stored_once() {
    for (cas, _dir) in backends().await {
        let a = data(10_000, 3);
        let d = Digest::sha256(&a);
        let mut outcomes = Vec::new();
        for id in ["x", "y"] {
            let mut h = Hasher::new(Algorithm::Sha256);
            cas.write_part(id, 0, body(&a, 999), &mut h, u64::MAX, true)
                .await
                .unwrap();
            outcomes.push(cas.commit(id, &[0], &d).await.unwrap());
        }
        assert_eq!(
            outcomes,
            [CommitOutcome::Stored, CommitOutcome::AlreadyPresent]
        );
        assert_eq!(cas.part_size("y", 0).await.unwrap(), None);
        assert_eq!(read_all(&cas, &d, a.len() as u64, None).await.unwrap(), a);
    }
}

#[tokio::test]
async fn concurrent_commits_of_one_digest_leave_one_object() {
    for (name, cas, _dir) in named_backends().await {
        let a = data(200_000, 4);
        let d = Digest::sha256(&a);
        let mut tasks = Vec::new();
        for i in 0..6 {
            let cas = cas.clone();
            let a = a.clone();
            let d = d.clone();
            tasks.push(tokio::spawn(async move {
                let id = format!("c{i}");
                let mut h = Hasher::new(Algorithm::Sha256);
                cas.write_part(&id, 0, body(&a, 4096), &mut h, u64::MAX, true)
                    .await
                    .unwrap();
                cas.commit(&id, &[0], &d).await.unwrap()
            }));
        }
        let mut stored = 0;
        for t in tasks {
            if t.await.unwrap() == CommitOutcome::Stored {
                stored += 1;
            }
        }
        // Against moto, which stands in for S3 here, two concurrent conditional completions
        // both succeeded in about one run in five (the emulator does not decide them
        // atomically). Amazon S3 documents conditional writes as atomic; that a second
        // completion is refused is still checked, in turn, by the start-up probe's test.
        let emulated = name == "s3 (copy_if_not_exists)";
        if cas.atomic_publish() && !emulated {
            assert_eq!(stored, 1, "{name}: exactly one commit publishes the object");
        } else {
            // S3 without conditional copies: several may write it, the same bytes to one key.
            assert!(stored >= 1);
        }
        assert_eq!(cas.size(&d).await.unwrap(), Some(a.len() as u64));
        assert_eq!(read_all(&cas, &d, a.len() as u64, None).await.unwrap(), a);
        // Every commit cleaned up its staging.
        assert_eq!(
            cas.remove_stray_uploads(&Default::default()).await.unwrap(),
            0,
            "staging left behind"
        );
    }
}

#[tokio::test]
async fn empty_blob_commits() {
    for (cas, _dir) in backends().await {
        let d = Digest::sha256(b"");
        assert_eq!(
            cas.commit("e", &[], &d).await.unwrap(),
            CommitOutcome::Stored
        );
        assert_eq!(read_all(&cas, &d, 0, None).await.unwrap(), Vec::<u8>::new());
    }
}

#[tokio::test]
async fn limit_and_body_errors_leave_no_part() {
    for (cas, _dir) in backends().await {
        let a = data(5000, 5);
        let mut h = Hasher::new(Algorithm::Sha256);
        let err = cas
            .write_part("l", 0, body(&a, 100), &mut h, 4000, true)
            .await
            .unwrap_err();
        assert!(matches!(err, CasError::TooLarge { limit: 4000 }), "{err}");
        assert_eq!(cas.part_size("l", 0).await.unwrap(), None);
        let broken = futures::stream::iter(vec![
            Ok(Bytes::from_static(b"abc")),
            Err(std::io::Error::other("client went away")),
        ]);
        let err = cas
            .write_part("l", 1, broken, &mut h, u64::MAX, true)
            .await
            .unwrap_err();
        assert!(matches!(err, CasError::Body(_)), "{err}");
        assert_eq!(cas.part_size("l", 1).await.unwrap(), None);
    }
}

#[tokio::test]
async fn bad_ranges_and_missing_blobs_are_errors() {
    for (cas, _dir) in backends().await {
        let a = data(100, 6);
        let d = Digest::sha256(&a);
        let mut h = Hasher::new(Algorithm::Sha256);
        cas.write_part("r", 0, body(&a, 100), &mut h, u64::MAX, true)
            .await
            .unwrap();
        cas.commit("r", &[0], &d).await.unwrap();
        assert!(matches!(
            read_all(&cas, &d, 100, Some(50..101)).await,
            Err(CasError::Range { .. })
        ));
        assert!(matches!(
            read_all(&cas, &d, 100, Some(10..10)).await,
            Err(CasError::Range { .. })
        ));
        let missing = Digest::sha256(b"nope");
        assert!(matches!(
            read_all(&cas, &missing, 1, None).await,
            Err(CasError::NotFound(_))
        ));
        assert_eq!(cas.size(&missing).await.unwrap(), None);
        cas.delete(&d).await.unwrap();
        cas.delete(&d).await.unwrap();
        assert_eq!(cas.size(&d).await.unwrap(), None);
    }
}

/// Writes blob `a` through `cas` (root `root`) and flips one byte of it on disk.
async fn store_then_corrupt(cas: &Cas, root: &std::path::Path, a: &[u8]) -> Digest {
    let d = Digest::sha256(a);
    let mut h = Hasher::new(Algorithm::Sha256);
    cas.write_part("k", 0, body(a, 5000), &mut h, u64::MAX, true)
        .await
        .unwrap();
    cas.commit("k", &[0], &d).await.unwrap();
    let file = root.join(blob_path(&d).as_ref());
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[a.len() / 2] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    d
}

#[tokio::test]
async fn corrupt_bytes_fail_the_read_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("blobs");
    let cas = Cas::open(
        Backend::Filesystem { root: root.clone() },
        CasOptions::default(),
    )
    .unwrap();
    let a = data(50_000, 7);
    let d = store_then_corrupt(&cas, &root, &a).await;
    // Without a recorded checksum the digest is recomputed.
    let err = read_all(&cas, &d, a.len() as u64, None).await.unwrap_err();
    assert!(matches!(err, CasError::Corrupt { .. }), "{err}");
    // With the checksum recorded at write time, the CRC catches it.
    let crc = crc32c::crc32c(&a);
    let stream = cas.read(&d, a.len() as u64, None, Some(crc)).await.unwrap();
    let err = stream.try_collect::<Vec<Bytes>>().await.unwrap_err();
    assert!(
        matches!(&err, CasError::Corrupt { detail, .. } if detail.contains("CRC-32C")),
        "{err}"
    );
}

/// The checksum a write records is the CRC-32C of the blob's bytes, and an intact blob passes
/// the check (on both the direct and the buffered read path).
#[tokio::test]
async fn recorded_checksum_matches_and_passes() {
    for (cas, _dir) in backends().await {
        let a = data(3 * 1024 * 1024 + 11, 5);
        let d = Digest::sha256(&a);
        let mut h = Hasher::new(Algorithm::Sha256);
        cas.write_part("c", 0, body(&a, 64 * 1024), &mut h, u64::MAX, true)
            .await
            .unwrap();
        let crc = h.checksum();
        assert_eq!(crc, crc32c::crc32c(&a));
        assert_eq!(h.finish(), d);
        cas.commit("c", &[0], &d).await.unwrap();
        let got: Vec<Bytes> = cas
            .read(&d, a.len() as u64, None, Some(crc))
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert!(got.concat() == a);
        // A wrong recorded checksum is reported, not ignored.
        let wrong = cas
            .read(&d, a.len() as u64, None, Some(crc ^ 1))
            .await
            .unwrap();
        assert!(wrong.try_collect::<Vec<Bytes>>().await.is_err());
    }
}

/// Blobs of many blocks are read through the aligned, two-reader path, whole and in ranges that
/// start and end off block boundaries, and so are blobs of less than one block.
#[tokio::test]
async fn large_blobs_read_back_through_direct_reads() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("blobs");
    let cas = Cas::open(Backend::Filesystem { root }, CasOptions::default()).unwrap();
    let n = 9 * crate::direct::BUF_SIZE + 777;
    let a = data(n, 3);
    let d = Digest::sha256(&a);
    let mut h = Hasher::new(Algorithm::Sha256);
    cas.write_part("big", 0, body(&a, 256 * 1024), &mut h, u64::MAX, false)
        .await
        .unwrap();
    cas.commit("big", &[0], &d).await.unwrap();
    assert!(read_all(&cas, &d, n as u64, None).await.unwrap() == a);
    for (start, end) in [
        (0usize, n),
        (1, n - 1),
        (4097, 4098 + 3 * crate::direct::BUF_SIZE),
        (5, 4000),
        (n - 1, n),
        (n - 5000, n),
    ] {
        let got = read_all(&cas, &d, n as u64, Some(start as u64..end as u64))
            .await
            .unwrap();
        assert!(got == a[start..end], "range {start}..{end}");
    }
}

#[tokio::test]
async fn stray_uploads_are_swept() {
    for (cas, _dir) in backends().await {
        let mut h = Hasher::new(Algorithm::Sha256);
        cas.write_part("keep", 0, body(b"k", 1), &mut h, u64::MAX, true)
            .await
            .unwrap();
        cas.write_part("gone", 0, body(b"g", 1), &mut h, u64::MAX, true)
            .await
            .unwrap();
        let live: std::collections::HashSet<String> = ["keep".to_string()].into();
        let removed = cas.remove_stray_uploads(&live).await.unwrap();
        assert_eq!(removed, 1);
        assert_eq!(cas.part_size("keep", 0).await.unwrap(), Some(1));
        assert_eq!(cas.part_size("gone", 0).await.unwrap(), None);
    }
}

/// The object stores of the suite, each behind a fault wrapper (to refuse server-side copies).
fn object_stores() -> Vec<(&'static str, Arc<dyn ObjectStore>)> {
    vec![
        ("memory", Arc::new(InMemory::new()) as Arc<dyn ObjectStore>),
        ("s3", s3_store()),
        ("s3 (copy_if_not_exists)", s3_conditional_store()),
        ("azure", azure_store()),
    ]
    .into_iter()
    .chain(gcs_store().map(|g| ("gcs", g)))
    .collect()
}

/// Several parts, and a single part larger than the store copies in one request (S3: 5 GiB),
/// are published by streaming them into a multipart upload at the digest's key: no server-side
/// copy. A single part under the limit is copied (shown by the copy failure reaching the
/// caller once the retries are spent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_too_large_to_copy_and_many_parts_are_streamed_into_place() {
    for (name, inner) in object_stores() {
        let (store, faults) = faulty::FaultyStore::new(inner);
        let opts = CasOptions {
            part_size: 5 << 20,
            max_server_copy: 6 << 20,
            ..Default::default()
        };
        let cas = Cas::open(Backend::Custom(store), opts).unwrap();
        // Every copy the Cas might try (and its retries) fails from here on.
        faults.fail_copies(1000);
        let big = data(7 << 20, 40);
        let d = Digest::sha256(&big);
        let mut h = Hasher::new(Algorithm::Sha256);
        cas.write_part("big", 0, body(&big, 1 << 20), &mut h, u64::MAX, true)
            .await
            .unwrap();
        assert_eq!(
            cas.commit("big", &[0], &d).await.unwrap(),
            CommitOutcome::Stored,
            "{name}"
        );
        assert_eq!(
            read_all(&cas, &d, big.len() as u64, None).await.unwrap(),
            big,
            "{name}"
        );
        // Several parts of a smaller blob: streamed as well.
        let (a, b) = (data(5 << 20, 41), data(300_000, 42));
        let whole = [a.clone(), b.clone()].concat();
        let d2 = Digest::sha256(&whole);
        let mut h = Hasher::new(Algorithm::Sha256);
        cas.write_part("two", 0, body(&a, 1 << 20), &mut h, u64::MAX, true)
            .await
            .unwrap();
        cas.write_part("two", 1, body(&b, 1 << 20), &mut h, u64::MAX, true)
            .await
            .unwrap();
        assert_eq!(h.finish(), d2);
        assert_eq!(
            cas.commit("two", &[0, 1], &d2).await.unwrap(),
            CommitOutcome::Stored,
            "{name}"
        );
        assert_eq!(
            read_all(&cas, &d2, whole.len() as u64, None).await.unwrap(),
            whole,
            "{name}"
        );
        // The same blob again: already there, nothing rewritten.
        let mut h = Hasher::new(Algorithm::Sha256);
        cas.write_part("again", 0, body(&big, 1 << 20), &mut h, u64::MAX, true)
            .await
            .unwrap();
        assert_eq!(
            cas.commit("again", &[0], &d).await.unwrap(),
            CommitOutcome::AlreadyPresent,
            "{name}"
        );
        assert_eq!(faults.injected(), 0, "{name}: no copy was tried");
        // A part under the limit takes the copy, which fails here: nothing is published.
        let small = data(100_000, 43);
        let d3 = Digest::sha256(&small);
        let mut h = Hasher::new(Algorithm::Sha256);
        cas.write_part("small", 0, body(&small, 4096), &mut h, u64::MAX, true)
            .await
            .unwrap();
        let err = cas.commit("small", &[0], &d3).await.unwrap_err();
        assert!(err.to_string().contains("publishing blob"), "{name}: {err}");
        assert!(faults.injected() >= 1, "{name}");
        assert_eq!(cas.size(&d3).await.unwrap(), None, "{name}");
        // Staging of the published blobs is gone; the failed one is the caller's to abort.
        cas.abort("small", &[0]).await;
        assert_eq!(
            cas.remove_stray_uploads(&Default::default()).await.unwrap(),
            0,
            "{name}: staging left behind"
        );
    }
}

/// Bodies over the in-memory threshold go through the threaded writer: content, hash, limits
/// and broken bodies behave exactly as for small ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_parts_take_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::open(
        Backend::Filesystem {
            root: dir.path().join("blobs"),
        },
        CasOptions::default(),
    )
    .unwrap();
    let big = data(21 * 1024 * 1024 + 17, 9);
    let mut h = Hasher::new(Algorithm::Sha256);
    let n = cas
        .write_part("big", 0, body(&big, 300_000), &mut h, u64::MAX, true)
        .await
        .unwrap();
    assert_eq!(n, big.len() as u64);
    let d = h.finish();
    assert_eq!(d, Digest::sha256(&big));
    assert_eq!(
        cas.commit("big", &[0], &d).await.unwrap(),
        CommitOutcome::Stored
    );
    assert!(read_all(&cas, &d, big.len() as u64, None).await.unwrap() == big);
    // Over the limit in the middle of the pipeline: error, and no part left behind.
    let mut h = Hasher::new(Algorithm::Sha256);
    let err = cas
        .write_part("big2", 0, body(&big, 1 << 20), &mut h, 10 << 20, true)
        .await
        .unwrap_err();
    assert!(matches!(err, CasError::TooLarge { .. }), "{err}");
    assert_eq!(cas.part_size("big2", 0).await.unwrap(), None);
    // A body that breaks after 6 MiB.
    let mut chunks: Vec<Result<Bytes, std::io::Error>> = big[..6 << 20]
        .chunks(1 << 20)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    chunks.push(Err(std::io::Error::other("reset by peer")));
    let mut h = Hasher::new(Algorithm::Sha256);
    let err = cas
        .write_part(
            "big3",
            0,
            futures::stream::iter(chunks),
            &mut h,
            u64::MAX,
            true,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, CasError::Body(_)), "{err}");
    assert_eq!(cas.part_size("big3", 0).await.unwrap(), None);
}

/// Openers of a Cas over the same storage each time (memory, file system, S3, Azure): a
/// "restart".
/// Opens a Cas over the same storage again.
type Opener = Box<dyn Fn() -> Cas>;

fn reopenable() -> Vec<(&'static str, Opener, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("blobs");
    let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let s3 = s3_store();
    let azure = azure_store();
    let opts = CasOptions {
        part_size: 5 << 20,
        ..Default::default()
    };
    let (o1, o2, o3, o4) = (opts.clone(), opts.clone(), opts.clone(), opts);
    vec![
        (
            "memory",
            Box::new(move || Cas::open(Backend::Custom(memory.clone()), o1.clone()).unwrap()),
            None,
        ),
        (
            "filesystem",
            Box::new(move || {
                Cas::open(Backend::Filesystem { root: root.clone() }, o2.clone()).unwrap()
            }),
            Some(dir),
        ),
        (
            "s3",
            Box::new(move || Cas::open(Backend::Custom(s3.clone()), o3.clone()).unwrap()),
            None,
        ),
        (
            "azure",
            Box::new(move || Cas::open(Backend::Custom(azure.clone()), o4.clone()).unwrap()),
            None,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_resumes_after_a_restart_in_the_middle() {
    for (name, open, _dir) in reopenable() {
        let a = data(6 << 20, 11);
        let b = data(2 << 20, 12);
        let whole = [a.clone(), b.clone()].concat();
        let d = Digest::sha256(&whole);
        {
            let cas = open();
            let mut h = Hasher::new(Algorithm::Sha256);
            cas.write_part("resume", 0, body(&a, 1 << 20), &mut h, u64::MAX, true)
                .await
                .unwrap();
            // The process dies here: the hash state is lost, the part is not.
        }
        let cas = open();
        assert_eq!(
            cas.part_size("resume", 0).await.unwrap(),
            Some(a.len() as u64),
            "{name}"
        );
        let (mut h, size) = cas
            .rehash_parts("resume", &[0], Algorithm::Sha256)
            .await
            .unwrap();
        assert_eq!(size, a.len() as u64, "{name}");
        cas.write_part("resume", 1, body(&b, 1 << 20), &mut h, u64::MAX, true)
            .await
            .unwrap();
        assert_eq!(h.finish(), d, "{name}: the rebuilt hash covers both parts");
        cas.commit("resume", &[0, 1], &d).await.unwrap();
        assert_eq!(
            read_all(&cas, &d, whole.len() as u64, None).await.unwrap(),
            whole,
            "{name}"
        );
        // A mid-upload abort leaves nothing of another session.
        let mut h = Hasher::new(Algorithm::Sha256);
        cas.write_part("gone", 0, body(&a[..1000], 100), &mut h, u64::MAX, true)
            .await
            .unwrap();
        cas.abort("gone", &[0]).await;
        assert_eq!(cas.part_size("gone", 0).await.unwrap(), None, "{name}");
    }
}

#[tokio::test]
async fn a_store_claimed_by_one_index_refuses_another() {
    for (name, cas, _dir) in named_backends().await {
        let first = format!("index-{}", uuid::Uuid::new_v4());
        cas.claim(&first)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        // The same index again (every restart) is fine.
        cas.claim(&first)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let other = format!("index-{}", uuid::Uuid::new_v4());
        match cas.claim(&other).await {
            Err(CasError::ClaimedByOther { owner, path }) => {
                assert_eq!(owner, first, "{name}");
                assert_eq!(path, crate::OWNER_KEY, "{name}");
            }
            got => panic!("{name}: a second index was let in: {got:?}"),
        }
        // The claim is not a blob: listings of blobs do not see it.
        let blobs: Vec<_> = cas
            .list_blobs()
            .try_collect()
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(blobs.is_empty(), "{name}: {blobs:?}");
    }
}
