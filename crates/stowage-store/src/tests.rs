#![allow(clippy::unwrap_used)]

mod errors;
mod gc_batch;
mod growth;
mod model;
pub(crate) mod pause;
mod sparse;

use super::*;
use futures::TryStreamExt;
use stowage_core::{Reference, Tag};

/// The actor of the tests' requests.
pub(crate) fn actor() -> Actor {
    Actor::user("tester")
}

pub(crate) fn body(
    data: &[u8],
) -> impl Stream<Item = std::result::Result<Bytes, std::io::Error>> + Unpin + Send {
    let chunks: Vec<std::result::Result<Bytes, std::io::Error>> = data
        .chunks(4096)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures::stream::iter(chunks)
}

pub(crate) fn no_body(
) -> Option<futures::stream::Iter<std::vec::IntoIter<std::result::Result<Bytes, std::io::Error>>>> {
    None
}

pub(crate) fn repo(s: &str) -> RepoName {
    RepoName::parse(s).unwrap()
}

pub(crate) fn tag(s: &str) -> Reference {
    Reference::Tag(Tag::parse(s).unwrap())
}

pub(crate) async fn read(store: &Store, r: &RepoName, d: &Digest) -> Result<Vec<u8>> {
    let b = store.read_blob(r, d, None).await?;
    let chunks: Vec<Bytes> = b.stream.try_collect().await?;
    Ok(chunks.concat())
}

pub(crate) fn image(config: (&Digest, u64), layers: &[(&Digest, u64)]) -> Vec<u8> {
    let layers: Vec<serde_json::Value> = layers
        .iter()
        .map(|(d, s)| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": d.to_string(), "size": s
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config.0.to_string(), "size": config.1},
        "layers": layers
    }))
    .unwrap()
}

async fn open(dir: &std::path::Path) -> Store {
    Store::open(StoreConfig::new(dir)).await.unwrap()
}

#[tokio::test]
async fn push_pull_dedup_and_mount() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let data = b"hello layer".repeat(1000);
    let d = Digest::sha256(&data);
    let info = store
        .put_blob(&actor(), &repo("a"), &d, body(&data))
        .await
        .unwrap();
    assert_eq!(info.size, data.len() as u64);
    assert_eq!(read(&store, &repo("a"), &d).await.unwrap(), data);
    // Not visible in another repository until pushed or mounted there.
    assert!(matches!(
        store.stat_blob(&repo("b"), &d),
        Err(StoreError::BlobUnknown(_))
    ));
    // Mount: no copy, same bytes.
    let m = store
        .mount_blob(&actor(), &repo("b"), &repo("a"), &d)
        .await
        .unwrap();
    assert_eq!(m.unwrap().size, info.size);
    assert_eq!(read(&store, &repo("b"), &d).await.unwrap(), data);
    // Mount from a repository that lacks it: None.
    let other = Digest::sha256(b"other");
    assert!(store
        .mount_blob(&actor(), &repo("c"), &repo("a"), &other)
        .await
        .unwrap()
        .is_none());
    // Second push to another repo deduplicates: one object on disk.
    store
        .put_blob(&actor(), &repo("c"), &d, body(&data))
        .await
        .unwrap();
    let blob_file = dir
        .path()
        .join("cas")
        .join(stowage_cas::blob_path(&d).as_ref());
    assert!(blob_file.exists());
    let count = walk_files(&dir.path().join("cas/blobs"));
    assert_eq!(count, 1, "one stored object for one digest");
    assert_eq!(store.catalog(None, 10).unwrap(), ["a", "b", "c"]);
}

fn walk_files(dir: &std::path::Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            n += walk_files(&e.path());
        } else {
            n += 1;
        }
    }
    n
}

#[tokio::test]
async fn chunked_upload_checks_offsets_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let d = Digest::sha256(&data);
    let id = {
        let store = open(dir.path()).await;
        let st = store.start_upload(&actor(), &repo("x")).await.unwrap();
        let st = store
            .append_upload(
                &actor(),
                &repo("x"),
                &st.id,
                Some(0),
                body(&data[..100_000]),
            )
            .await
            .unwrap();
        assert_eq!(st.size, 100_000);
        let err = store
            .append_upload(
                &actor(),
                &repo("x"),
                &st.id,
                Some(5),
                body(&data[100_000..]),
            )
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            StoreError::RangeInvalid {
                got: 5,
                expected: 100_000
            }
        ));
        // Wrong repository: unknown session.
        assert!(matches!(
            store.upload_status(&actor(), &repo("y"), &st.id).await,
            Err(StoreError::BlobUploadUnknown(_))
        ));
        st.id
    };
    // Restart: the session and its bytes persist; the hash is rebuilt from storage.
    let store = open(dir.path()).await;
    assert_eq!(
        store
            .upload_status(&actor(), &repo("x"), &id)
            .await
            .unwrap()
            .size,
        100_000
    );
    store
        .append_upload(
            &actor(),
            &repo("x"),
            &id,
            Some(100_000),
            body(&data[100_000..200_000]),
        )
        .await
        .unwrap();
    let info = store
        .finish_upload(&actor(), &repo("x"), &id, &d, Some(body(&data[200_000..])))
        .await
        .unwrap();
    assert_eq!(info.size, data.len() as u64);
    assert_eq!(read(&store, &repo("x"), &d).await.unwrap(), data);
    assert!(matches!(
        store.upload_status(&actor(), &repo("x"), &id).await,
        Err(StoreError::BlobUploadUnknown(_))
    ));
}

#[tokio::test]
async fn digest_mismatch_discards_upload_and_keeps_existing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let good = b"good".to_vec();
    let gd = Digest::sha256(&good);
    store
        .put_blob(&actor(), &repo("r"), &gd, body(&good))
        .await
        .unwrap();
    let st = store.start_upload(&actor(), &repo("r")).await.unwrap();
    let err = store
        .finish_upload(&actor(), &repo("r"), &st.id, &gd, Some(body(b"evil")))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::DigestInvalid(_)), "{err}");
    assert_eq!(read(&store, &repo("r"), &gd).await.unwrap(), good);
    let leftovers = std::fs::read_dir(dir.path().join("cas/uploads"))
        .map(|r| {
            r.filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(&st.id)
            })
            .count()
        })
        .unwrap_or(0);
    assert_eq!(leftovers, 0, "staging of the failed upload must be removed");
    // sha512 digests are verified with sha512.
    let d512 = stowage_core::Digest::compute(stowage_core::Algorithm::Sha512, &good);
    store
        .put_blob(&actor(), &repo("r"), &d512, body(&good))
        .await
        .unwrap();
    assert_eq!(read(&store, &repo("r"), &d512).await.unwrap(), good);
}

#[tokio::test]
async fn manifest_requires_references_and_serves_exact_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let cfg = b"{}".to_vec();
    let layer = b"layer-bytes".to_vec();
    let (cd, ld) = (Digest::sha256(&cfg), Digest::sha256(&layer));
    let m = image((&cd, cfg.len() as u64), &[(&ld, layer.len() as u64)]);
    store
        .put_blob(&actor(), &repo("app"), &cd, body(&cfg))
        .await
        .unwrap();
    let err = store
        .put_manifest(&actor(), &repo("app"), &tag("v1"), None, m.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::ManifestBlobUnknown(ref d) if *d == ld),
        "{err}"
    );
    store
        .put_blob(&actor(), &repo("app"), &ld, body(&layer))
        .await
        .unwrap();
    // A wrong size in the descriptor is refused.
    let bad = image((&cd, 99), &[(&ld, layer.len() as u64)]);
    assert!(matches!(
        store
            .put_manifest(&actor(), &repo("app"), &tag("v1"), None, bad)
            .await,
        Err(StoreError::ManifestInvalid(_))
    ));
    let out = store
        .put_manifest(&actor(), &repo("app"), &tag("v1"), None, m.clone())
        .await
        .unwrap();
    assert_eq!(out.digest, Digest::sha256(&m));
    let got = store.get_manifest(&repo("app"), &tag("v1")).unwrap();
    assert_eq!(got.bytes, m);
    assert_eq!(got.media_type, "application/vnd.oci.image.manifest.v1+json");
    let by_digest = store
        .get_manifest(&repo("app"), &Reference::Digest(out.digest.clone()))
        .unwrap();
    assert_eq!(by_digest.bytes, m);
    // A layer a manifest references cannot be deleted from under it.
    assert!(matches!(
        store.delete_blob(&actor(), &repo("app"), &ld).await,
        Err(StoreError::Conflict(_))
    ));
    // Pushing by digest checks the digest.
    let wrong = Reference::Digest(Digest::sha256(b"not it"));
    assert!(matches!(
        store
            .put_manifest(&actor(), &repo("app"), &wrong, None, m.clone())
            .await,
        Err(StoreError::DigestInvalid(_))
    ));
    // Untag keeps the manifest; delete by digest removes it and its tags.
    store
        .put_manifest(&actor(), &repo("app"), &tag("v2"), None, m.clone())
        .await
        .unwrap();
    store
        .delete_manifest(&actor(), &repo("app"), &tag("v1"))
        .await
        .unwrap();
    assert_eq!(store.tags(&repo("app"), None, 10).unwrap(), ["v2"]);
    store
        .delete_manifest(
            &actor(),
            &repo("app"),
            &Reference::Digest(out.digest.clone()),
        )
        .await
        .unwrap();
    assert!(store.tags(&repo("app"), None, 10).unwrap().is_empty());
    assert!(matches!(
        store.get_manifest(&repo("app"), &Reference::Digest(out.digest)),
        Err(StoreError::ManifestUnknown(_))
    ));
    // Now the layer may be unlinked.
    store
        .delete_blob(&actor(), &repo("app"), &ld)
        .await
        .unwrap();
    assert!(matches!(
        store.stat_blob(&repo("app"), &ld),
        Err(StoreError::BlobUnknown(_))
    ));
    // Feed: every change has an entry, in order.
    let feed = store.index().feed(1, 100).unwrap();
    assert!(feed.windows(2).all(|w| w[0].0 + 1 == w[1].0));
    assert!(feed
        .iter()
        .any(|(_, e)| e.kind == stowage_index::EventKind::ManifestDeleted));
}

#[tokio::test]
async fn index_children_and_referrers() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let r = repo("multi");
    let cfg = b"{\"c\":1}".to_vec();
    let cd = Digest::sha256(&cfg);
    store.put_blob(&actor(), &r, &cd, body(&cfg)).await.unwrap();
    let child = image((&cd, cfg.len() as u64), &[]);
    let child_d = store
        .put_manifest(
            &actor(),
            &r,
            &Reference::Digest(Digest::sha256(&child)),
            None,
            child.clone(),
        )
        .await
        .unwrap()
        .digest;
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": child_d.to_string(), "size": child.len(),
                        "platform": {"architecture": "amd64", "os": "linux"}}]
    }))
    .unwrap();
    let missing_child = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": Digest::sha256(b"nope").to_string(), "size": 3}]
    }))
    .unwrap();
    assert!(matches!(
        store
            .put_manifest(&actor(), &r, &tag("bad"), None, missing_child)
            .await,
        Err(StoreError::ManifestBlobUnknown(_))
    ));
    let idx_d = store
        .put_manifest(&actor(), &r, &tag("latest"), None, index)
        .await
        .unwrap()
        .digest;
    // The child cannot be deleted while the index holds it.
    assert!(matches!(
        store
            .delete_manifest(&actor(), &r, &Reference::Digest(child_d.clone()))
            .await,
        Err(StoreError::Conflict(_))
    ));
    // A signature referring to the child.
    let sig = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.example.sig",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": cd.to_string(), "size": cfg.len()},
        "layers": [],
        "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": child_d.to_string(), "size": child.len()},
        "annotations": {"org.example": "yes"}
    }))
    .unwrap();
    let out = store
        .put_manifest(
            &actor(),
            &r,
            &Reference::Digest(Digest::sha256(&sig)),
            None,
            sig,
        )
        .await
        .unwrap();
    assert_eq!(out.subject.as_ref(), Some(&child_d));
    let refs = store.referrers(&r, &child_d, None).unwrap();
    assert_eq!(refs.len(), 1);
    assert_eq!(refs[0].digest, out.digest);
    assert_eq!(
        refs[0].artifact_type.as_deref(),
        Some("application/vnd.example.sig")
    );
    assert!(store
        .referrers(&r, &child_d, Some("application/other"))
        .unwrap()
        .is_empty());
    store
        .delete_manifest(&actor(), &r, &Reference::Digest(idx_d))
        .await
        .unwrap();
    store
        .delete_manifest(&actor(), &r, &Reference::Digest(child_d))
        .await
        .unwrap();
}

#[tokio::test]
async fn no_body_finish_and_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let st = store.start_upload(&actor(), &repo("z")).await.unwrap();
    store
        .append_upload(&actor(), &repo("z"), &st.id, None, body(b"abc"))
        .await
        .unwrap();
    let d = Digest::sha256(b"abc");
    store
        .finish_upload(&actor(), &repo("z"), &st.id, &d, no_body())
        .await
        .unwrap();
    assert_eq!(read(&store, &repo("z"), &d).await.unwrap(), b"abc");
    let st = store.start_upload(&actor(), &repo("z")).await.unwrap();
    store
        .cancel_upload(&actor(), &repo("z"), &st.id)
        .await
        .unwrap();
    assert!(matches!(
        store
            .append_upload(&actor(), &repo("z"), &st.id, None, body(b"x"))
            .await,
        Err(StoreError::BlobUploadUnknown(_))
    ));
    // Empty blob.
    let e = Digest::sha256(b"");
    store
        .put_blob(&actor(), &repo("z"), &e, body(b""))
        .await
        .unwrap();
    assert_eq!(read(&store, &repo("z"), &e).await.unwrap(), b"");
}

/// Invariant 2 under contention: manifest puts racing blob deletes never leave a manifest whose
/// blob is unlinked; each put either wins (and the delete is refused) or fails cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manifest_put_races_blob_delete() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let r = repo("race");
    let cfg = b"{}".to_vec();
    let cd = Digest::sha256(&cfg);
    store.put_blob(&actor(), &r, &cd, body(&cfg)).await.unwrap();
    for round in 0..40u32 {
        let layer = format!("layer {round}").into_bytes();
        let ld = Digest::sha256(&layer);
        store
            .put_blob(&actor(), &r, &ld, body(&layer))
            .await
            .unwrap();
        let m = image((&cd, cfg.len() as u64), &[(&ld, layer.len() as u64)]);
        let (s1, s2) = (store.clone(), store.clone());
        let (r1, r2) = (r.clone(), r.clone());
        let ld2 = ld.clone();
        let put =
            tokio::spawn(async move { s1.put_manifest(&actor(), &r1, &tag("t"), None, m).await });
        let del = tokio::spawn(async move { s2.delete_blob(&actor(), &r2, &ld2).await });
        let (put, del) = (put.await.unwrap(), del.await.unwrap());
        match (&put, &del) {
            (Ok(_), Err(StoreError::Conflict(_))) => {
                // The manifest won: its layer must still be served.
                assert_eq!(read(&store, &r, &ld).await.unwrap(), layer);
            }
            (Err(StoreError::ManifestBlobUnknown(d)), Ok(())) => assert_eq!(d, &ld),
            other => panic!("round {round}: unexpected outcome {other:?}"),
        }
        // Whatever happened, every manifest in the repository has all its blobs linked.
        for (md, rec) in store.index().manifests(&r).unwrap() {
            for b in rec.blobs {
                assert!(
                    store.index().repo_has_blob(&r, &b).unwrap(),
                    "{md} lost {b}"
                );
            }
        }
    }
}

/// Foreign (non-distributable) layers live elsewhere: a manifest that lists one is accepted
/// without its bytes, while every other layer must still be present.
#[tokio::test]
async fn foreign_layers_need_no_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let r = repo("win");
    let cfg = b"{\"os\":\"windows\"}".to_vec();
    let cd = Digest::sha256(&cfg);
    store.put_blob(&actor(), &r, &cd, body(&cfg)).await.unwrap();
    let foreign = Digest::sha256(b"base layer hosted elsewhere");
    let m = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": cd.to_string(), "size": cfg.len()},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                    "digest": foreign.to_string(), "size": 123456,
                    "urls": ["https://example.invalid/layer"]}]
    }))
    .unwrap();
    let out = store
        .put_manifest(&actor(), &r, &tag("ltsc"), None, m.clone())
        .await
        .unwrap();
    assert_eq!(store.get_manifest(&r, &tag("ltsc")).unwrap().bytes, m);
    // The foreign layer is not recorded as a reference (GC must not look for its bytes).
    let rec = store.index().manifest(&r, &out.digest).unwrap().unwrap();
    assert_eq!(rec.blobs, vec![cd]);
}

/// A pushed blob's index record carries the CRC-32C of its bytes (also for a chunked upload that
/// survived a reopen), and a byte flipped on disk afterwards makes the next whole read fail
/// instead of serving the damage.
#[tokio::test]
async fn recorded_checksum_catches_corruption_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let data = b"checksummed layer ".repeat(5000);
    let d = Digest::sha256(&data);
    {
        let store = open(dir.path()).await;
        let id = store.start_upload(&actor(), &repo("a")).await.unwrap().id;
        let half = data.len() / 2;
        store
            .append_upload(&actor(), &repo("a"), &id, Some(0), body(&data[..half]))
            .await
            .unwrap();
        drop(store);
        let store = open(dir.path()).await;
        store
            .finish_upload(&actor(), &repo("a"), &id, &d, Some(body(&data[half..])))
            .await
            .unwrap();
        let info = store.stat_blob(&repo("a"), &d).unwrap();
        assert_eq!(info.crc32c, Some(crc32c::crc32c(&data)));
        assert_eq!(read(&store, &repo("a"), &d).await.unwrap(), data);
    }
    let file = dir
        .path()
        .join("cas")
        .join(stowage_cas::blob_path(&d).as_ref());
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[777] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();
    let store = open(dir.path()).await;
    let err = read(&store, &repo("a"), &d).await.unwrap_err();
    assert!(err.to_string().contains("corrupt"), "{err}");
}

/// A store for site `site` on a manual clock, with two small images pushed by digest into `r`.
async fn replica_env(
    dir: &std::path::Path,
    site: &str,
    clock: &stowage_core::ManualClock,
    r: &RepoName,
) -> (Store, Digest, Digest) {
    let mut cfg = StoreConfig::new(dir);
    cfg.site = Some(site.to_string());
    let store = Store::open_with_clock(cfg, Arc::new(clock.clone()))
        .await
        .unwrap();
    let mut out = Vec::new();
    for n in 0..2u8 {
        let config = format!("{{\"n\":{n}}}").into_bytes();
        let layer = vec![n; 100];
        let (cd, ld) = (Digest::sha256(&config), Digest::sha256(&layer));
        store
            .put_blob(&actor(), r, &cd, body(&config))
            .await
            .unwrap();
        store
            .put_blob(&actor(), r, &ld, body(&layer))
            .await
            .unwrap();
        let m = image((&cd, config.len() as u64), &[(&ld, 100)]);
        let d = Digest::sha256(&m);
        store
            .put_manifest(&actor(), r, &Reference::Digest(d.clone()), None, m)
            .await
            .unwrap();
        out.push(d);
    }
    (store, out[0].clone(), out[1].clone())
}

/// Points `t` of `r` at manifest `m` (already in `r`) with a local push.
async fn tag_to(store: &Store, r: &RepoName, t: &str, m: &Digest) {
    let bytes = store
        .get_manifest(r, &Reference::Digest(m.clone()))
        .unwrap()
        .bytes;
    store
        .put_manifest(&actor(), r, &tag(t), None, bytes)
        .await
        .unwrap();
}

fn set(d: &Digest, ms: u64, origin: &str) -> TagState {
    TagState::Set {
        digest: d.clone(),
        version: TagVersion {
            ms,
            origin: origin.into(),
        },
    }
}

#[tokio::test]
async fn replicated_tag_states_apply_only_when_newer() {
    let dir = tempfile::tempdir().unwrap();
    let clock = stowage_core::ManualClock::new(1_000_000);
    let r = repo("app");
    let (store, m1, m2) = replica_env(dir.path(), "a", &clock, &r).await;
    tag_to(&store, &r, "t", &m1).await;
    assert_eq!(
        store.tag_state(&r, "t").unwrap(),
        Some(set(&m1, 1_000_000, "a"))
    );
    // Same time, larger origin: wins. Older: loses. The same state again: no change.
    assert!(store
        .replica_apply_tag(&actor(), &r, "t", &set(&m2, 1_000_000, "b"))
        .await
        .unwrap());
    assert!(!store
        .replica_apply_tag(&actor(), &r, "t", &set(&m1, 999_999, "z"))
        .await
        .unwrap());
    assert!(!store
        .replica_apply_tag(&actor(), &r, "t", &set(&m2, 1_000_000, "b"))
        .await
        .unwrap());
    assert_eq!(
        store.tag_state(&r, "t").unwrap(),
        Some(set(&m2, 1_000_000, "b"))
    );
    // A newer delete leaves a tombstone; an older set arriving after it does not revive the tag.
    let del = TagState::Deleted {
        version: TagVersion {
            ms: 1_000_005,
            origin: "b".into(),
        },
    };
    assert!(store
        .replica_apply_tag(&actor(), &r, "t", &del)
        .await
        .unwrap());
    assert_eq!(store.tag_state(&r, "t").unwrap(), Some(del.clone()));
    assert!(store.index().tag(&r, "t").unwrap().is_none());
    assert!(!store
        .replica_apply_tag(&actor(), &r, "t", &set(&m1, 1_000_003, "c"))
        .await
        .unwrap());
    assert!(store.index().tag(&r, "t").unwrap().is_none());
    // A local change always beats the state it replaces, even one stamped ahead of our clock.
    tag_to(&store, &r, "t", &m1).await;
    assert_eq!(
        store.tag_state(&r, "t").unwrap(),
        Some(set(&m1, 1_000_006, "a"))
    );
    store.untag(&actor(), &r, "t").await.unwrap();
    assert_eq!(
        store.tag_state(&r, "t").unwrap(),
        Some(TagState::Deleted {
            version: TagVersion {
                ms: 1_000_007,
                origin: "a".into()
            }
        })
    );
    // Every state is listed, tombstones included.
    assert!(store
        .replica_apply_tag(&actor(), &r, "u", &set(&m2, 5, "b"))
        .await
        .unwrap());
    let states = store.tag_states(&r).unwrap();
    assert_eq!(
        states.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(),
        ["t", "u"]
    );
    // A set needs its manifest in the repository.
    let missing = Digest::sha256(b"not a manifest here");
    assert!(matches!(
        store
            .replica_apply_tag(&actor(), &r, "v", &set(&missing, 9_999_999, "b"))
            .await,
        Err(StoreError::ManifestUnknown(_))
    ));
    // Replicated changes carry their origin in the feed; local ones carry this site.
    let feed = store.index().feed(0, 1000).unwrap();
    let origins: Vec<(EventKind, Option<String>)> = feed
        .iter()
        .filter(|(_, e)| e.tag.as_deref() == Some("t"))
        .map(|(_, e)| (e.kind.clone(), e.origin.clone()))
        .collect();
    assert_eq!(
        origins,
        [
            (EventKind::TagSet, Some("a".into())),
            (EventKind::TagSet, Some("b".into())),
            (EventKind::TagDeleted, Some("b".into())),
            (EventKind::TagSet, Some("a".into())),
            (EventKind::TagDeleted, Some("a".into())),
        ]
    );
}

#[tokio::test]
async fn replicated_manifest_puts_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let clock = stowage_core::ManualClock::new(1_000_000);
    let r = repo("app");
    let (store, m1, m2) = replica_env(dir.path(), "b", &clock, &r).await;
    let doc = store
        .get_manifest(&r, &Reference::Digest(m1.clone()))
        .unwrap();
    // Already there: nothing new. Into another repository: refused until its blobs are linked.
    assert!(!store
        .replica_put_manifest(&actor(), &r, &m1, &doc.media_type, doc.bytes.clone(), "a")
        .await
        .unwrap());
    let other = repo("other");
    assert!(matches!(
        store
            .replica_put_manifest(
                &actor(),
                &other,
                &m1,
                &doc.media_type,
                doc.bytes.clone(),
                "a"
            )
            .await,
        Err(StoreError::ManifestBlobUnknown(_))
    ));
    let parsed = stowage_core::parse_manifest(Some(&doc.media_type), &doc.bytes).unwrap();
    for b in parsed.blob_references() {
        assert_eq!(
            store
                .replica_link_blob(&actor(), &other, &b.digest)
                .await
                .unwrap(),
            Some(b.size)
        );
    }
    assert_eq!(
        store
            .replica_link_blob(&actor(), &other, &Digest::sha256(b"absent"))
            .await
            .unwrap(),
        None
    );
    assert!(store
        .replica_put_manifest(
            &actor(),
            &other,
            &m1,
            &doc.media_type,
            doc.bytes.clone(),
            "a"
        )
        .await
        .unwrap());
    let last = store.index().feed(0, 1000).unwrap().pop().unwrap().1;
    assert_eq!(
        (last.kind, last.origin.as_deref()),
        (EventKind::ManifestPut, Some("a"))
    );
    // A replicated delete never removes a manifest this site still tags.
    assert!(store
        .replica_apply_tag(&actor(), &r, "keep", &set(&m2, 1, "a"))
        .await
        .unwrap());
    assert!(!store
        .replica_delete_manifest(&actor(), &r, &m2, "a")
        .await
        .unwrap());
    assert!(store.index().manifest(&r, &m2).unwrap().is_some());
    assert!(store
        .replica_delete_manifest(&actor(), &r, &m1, "a")
        .await
        .unwrap());
    assert!(store.index().manifest(&r, &m1).unwrap().is_none());
    assert!(
        !store
            .replica_delete_manifest(&actor(), &r, &m1, "a")
            .await
            .unwrap(),
        "idempotent"
    );
    let last = store.index().feed(0, 1000).unwrap().pop().unwrap().1;
    assert_eq!(
        (last.kind, last.origin.as_deref()),
        (EventKind::ManifestDeleted, Some("a"))
    );
    // The delete leaves a tombstone until the manifest is pushed again.
    assert_eq!(
        store.deleted_manifests(&r).unwrap(),
        std::slice::from_ref(&m1)
    );
    assert!(store.deleted_manifests(&other).unwrap().is_empty());
    assert!(store
        .replica_put_manifest(&actor(), &r, &m1, &doc.media_type, doc.bytes.clone(), "a")
        .await
        .unwrap());
    assert!(store.deleted_manifests(&r).unwrap().is_empty());
    // A client's delete by digest leaves one too.
    store
        .delete_manifest(&actor(), &r, &Reference::Digest(m1.clone()))
        .await
        .unwrap();
    assert_eq!(store.deleted_manifests(&r).unwrap(), [m1]);
}

#[tokio::test]
async fn the_feed_watch_follows_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let mut w = store.feed_watch();
    let before = *w.borrow_and_update();
    let d = Digest::sha256(b"x");
    store
        .put_blob(&actor(), &repo("a"), &d, body(b"x"))
        .await
        .unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), w.changed())
        .await
        .unwrap()
        .unwrap();
    assert!(*w.borrow() > before);
    assert_eq!(*w.borrow(), store.index().last_seq().unwrap());
}

/// A store whose blobs live in memory behind a fault-injecting wrapper.
async fn faulty_store(dir: &std::path::Path) -> (Store, stowage_cas::faulty::Faults) {
    let (fs, faults) =
        stowage_cas::faulty::FaultyStore::new(Arc::new(object_store::memory::InMemory::new()));
    let mut cfg = StoreConfig::new(dir);
    cfg.backend = Some(Backend::Custom(fs));
    (Store::open(cfg).await.unwrap(), faults)
}

#[tokio::test]
async fn a_failed_store_write_indexes_nothing_and_the_next_push_works() {
    let dir = tempfile::tempdir().unwrap();
    let (store, faults) = faulty_store(dir.path()).await;
    let r = repo("app");
    for (i, what) in ["write", "publish", "torn multipart"].iter().enumerate() {
        match i {
            0 => faults.fail_puts(1),
            // The Cas retries a failed copy four times: fail all five attempts.
            1 => faults.fail_copies(5),
            _ => faults.tear_uploads(1),
        }
        let data = vec![i as u8 + 1; 300_000];
        let d = Digest::sha256(&data);
        let err = store
            .put_blob(&actor(), &r, &d, body(&data))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Cas(_)), "{what}: {err:?}");
        assert!(store.index().blob(&d).unwrap().is_none(), "{what}: indexed");
        assert!(
            !store.index().repo_has_blob(&r, &d).unwrap(),
            "{what}: linked"
        );
        assert!(store.stat_blob(&r, &d).is_err(), "{what}: served");
        // Whatever the failure left behind is cleared by the repair GC runs.
        store.repair_pending(u64::MAX).await.unwrap();
        assert!(store.index().pending().unwrap().is_empty(), "{what}");
        // The store works again: the same blob goes in and reads back.
        store.put_blob(&actor(), &r, &d, body(&data)).await.unwrap();
        assert_eq!(read(&store, &r, &d).await.unwrap(), data, "{what}");
    }
    assert_eq!(faults.injected(), 1 + 5 + 1);
}

#[tokio::test]
async fn slow_store_concurrent_pushes_of_one_blob_end_as_one() {
    let dir = tempfile::tempdir().unwrap();
    let (store, faults) = faulty_store(dir.path()).await;
    faults.set_latency(std::time::Duration::from_millis(20));
    let data = vec![9u8; 200_000];
    let d = Digest::sha256(&data);
    let mut tasks = Vec::new();
    for i in 0..4 {
        let (store, data, d) = (store.clone(), data.clone(), d.clone());
        tasks.push(tokio::spawn(async move {
            let r = repo(&format!("app{i}"));
            store.put_blob(&actor(), &r, &d, body(&data)).await.unwrap();
            r
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(read(&store, &r, &d).await.unwrap(), data);
    }
    assert_eq!(store.index().blob(&d).unwrap().unwrap().size, 200_000);
}

/// A finish whose caller goes away in the middle of the commit (a client that disconnects, a
/// replication stream that is reset) still ends with the blob published and indexed and the
/// session gone: the commit runs in a task of its own. Before, the bytes could stay published
/// but unindexed, and the session kept naming parts the publish had consumed.
#[tokio::test]
async fn a_finish_dropped_mid_commit_still_commits() {
    let dir = tempfile::tempdir().unwrap();
    let (store, faults) = faulty_store(dir.path()).await;
    let r = repo("app");
    let data = vec![7u8; 300_000];
    let d = Digest::sha256(&data);
    let st = store.start_upload(&actor(), &r).await.unwrap();
    store
        .append_upload(&actor(), &r, &st.id, Some(0), body(&data))
        .await
        .unwrap();
    // Every store request now takes 300 ms: the publish is under way when the caller gives up.
    faults.set_latency(std::time::Duration::from_millis(300));
    let dropped = tokio::time::timeout(
        std::time::Duration::from_millis(100),
        store.finish_upload(&actor(), &r, &st.id, &d, no_body()),
    )
    .await;
    assert!(dropped.is_err(), "the finish should still be committing");
    wait_until("the dropped finish commits", || async {
        store.index().blob(&d).unwrap().is_some()
    })
    .await;
    faults.set_latency(std::time::Duration::ZERO);
    assert!(store.index().repo_has_blob(&r, &d).unwrap());
    assert_eq!(read(&store, &r, &d).await.unwrap(), data);
    // The session ended with the commit (its record is removed in the same batch).
    wait_until("the session ends", || async {
        matches!(
            store.upload_status(&actor(), &r, &st.id).await,
            Err(StoreError::BlobUploadUnknown(_))
        )
    })
    .await;
    assert!(store.index().pending().unwrap().is_empty());
}

/// Polls `done` every 50 ms until it holds; fails the test after 10 s.
async fn wait_until<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done().await {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Replication may keep only `max_pins` blobs from collection at once; expired pins make
/// room, renewing a pin costs none.
#[tokio::test]
async fn replication_pins_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let clock = stowage_core::ManualClock::new(1_000_000);
    let mut cfg = StoreConfig::new(dir.path());
    cfg.limits.max_pins = 3;
    let store = Store::open_with_clock(cfg, Arc::new(clock.clone()))
        .await
        .unwrap();
    let r = store.replica();
    let ds: Vec<Digest> = (0..5u8).map(|i| Digest::sha256(&[i])).collect();
    r.pin_blobs(ds[..3].iter(), 1_001_000).unwrap();
    assert!(matches!(
        r.pin_blobs([&ds[3]], 1_001_000),
        Err(StoreError::TooManyPins {
            pinned: 3,
            limit: 3
        })
    ));
    assert!(!store.is_pinned(&ds[3], 1_000_000));
    r.pin_blobs([&ds[0]], 1_002_000).unwrap();
    assert_eq!(r.pinned_count(), 3);
    // Once one expires (ds[1]; ds[0] and ds[2] were renewed), one more fits, and no more.
    r.pin_blobs([&ds[2]], 1_002_000).unwrap();
    clock.advance(1_500);
    r.pin_blobs([&ds[3]], 1_010_000).unwrap();
    assert_eq!(r.pinned_count(), 3);
    assert!(r.pin_blobs([&ds[4]], 1_010_000).is_err());
    assert!(store.is_pinned(&ds[3], clock.now_millis()));
}

/// Every change's audit entry is in the change's own batch: after a push, a tag move and a
/// delete, the log holds them with their actor, chained, and verifies.
#[tokio::test]
async fn changes_carry_their_audit_entries() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path())).await.unwrap();
    let r = RepoName::parse("team/app").unwrap();
    let alice = Actor::new(
        stowage_core::Principal::User("alice".into()),
        Some("10.0.0.7:4444".parse().unwrap()),
    );
    let data = b"layer".to_vec();
    let d = Digest::sha256(&data);
    store.put_blob(&alice, &r, &d, body(&data)).await.unwrap();
    store.delete_blob(&alice, &r, &d).await.unwrap();
    let recs = store
        .index()
        .audit_query(&stowage_index::AuditFilter::default())
        .unwrap();
    let rows: Vec<_> = recs
        .iter()
        .map(|x| {
            (
                x.entry.actor.as_str(),
                x.entry.action,
                x.entry.addr.as_deref(),
                x.entry.target.clone(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (
                "user:alice",
                stowage_index::AuditAction::BlobPush,
                Some("10.0.0.7:4444"),
                Some(d.to_string())
            ),
            (
                "user:alice",
                stowage_index::AuditAction::BlobDelete,
                Some("10.0.0.7:4444"),
                Some(d.to_string())
            ),
        ]
    );
    // The feed events carry the actor too.
    let feed = store.index().feed(0, 10).unwrap();
    assert!(feed
        .iter()
        .all(|(_, e)| e.actor.as_deref() == Some("user:alice")));
    assert!(store.index().audit_verify().unwrap().problems.is_empty());
}

#[tokio::test]
async fn the_catalog_decides_once_per_project_and_skips_hidden_ones() {
    use stowage_core::ProjectView;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let data = b"catalog layer".to_vec();
    let d = Digest::sha256(&data);
    // Names around project "a" that sort between its repositories: "a-x/..." and "a.y" come
    // before "a/..." ('-' and '.' sort below '/').
    let names = [
        "a", "a-x/app", "a.y", "a/1", "a/2", "a/3", "b/1", "b/2", "c", "pub/x",
    ];
    for n in names {
        store
            .put_blob(&actor(), &repo(n), &d, body(&data))
            .await
            .unwrap();
    }
    let client = store.client();
    let mut asked = Vec::new();
    let mut decided = Vec::new();
    let listed = client
        .catalog_where(
            None,
            100,
            |p| {
                asked.push(p.to_string());
                match p {
                    "a" | "c" => ProjectView::Nothing,
                    "b" => ProjectView::EachRepo,
                    _ => ProjectView::All,
                }
            },
            |r| {
                decided.push(r.to_string());
                r.as_str() == "b/2"
            },
        )
        .unwrap();
    assert_eq!(listed, ["a-x/app", "a.y", "b/2", "pub/x"]);
    // One question per project, per-repository decisions only where asked for.
    assert_eq!(asked, ["a", "a-x", "a.y", "b", "c", "pub"]);
    assert_eq!(decided, ["b/1", "b/2"]);
    // Pages continue from the last listed name.
    let page = client
        .catalog_where(Some("a.y"), 2, |_| ProjectView::All, |_| true)
        .unwrap();
    assert_eq!(page, ["a/1", "a/2"]);
}

#[tokio::test]
async fn a_chunk_cancelled_mid_write_gives_back_its_staged_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let st = store.start_upload(&actor(), &repo("x")).await.unwrap();
    let first = vec![7u8; 50_000];
    store
        .append_upload(&actor(), &repo("x"), &st.id, Some(0), body(&first))
        .await
        .unwrap();
    assert_eq!(store.upload_usage().1, 50_000);
    // A body that sends 80,000 bytes and then nothing: the request is dropped (the client
    // went away) while the store waits for the rest.
    let stalled = futures::StreamExt::chain(
        futures::stream::iter(vec![Ok::<_, std::io::Error>(Bytes::from(vec![
            8u8;
            80_000
        ]))]),
        futures::stream::pending(),
    );
    let cut = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        store.append_upload(
            &actor(),
            &repo("x"),
            &st.id,
            Some(50_000),
            Box::pin(stalled),
        ),
    )
    .await;
    assert!(cut.is_err(), "the stalled body should not finish");
    // Only what the session holds is counted; the next chunk goes on from there.
    assert_eq!(store.upload_usage().1, 50_000);
    let st = store
        .append_upload(&actor(), &repo("x"), &st.id, Some(50_000), body(&first))
        .await
        .unwrap();
    assert_eq!(st.size, 100_000);
    assert_eq!(store.upload_usage().1, 100_000);
    // Cancelling the session removes every part, the cut one included.
    store
        .cancel_upload(&actor(), &repo("x"), &st.id)
        .await
        .unwrap();
    assert_eq!(store.upload_usage(), (0, 0));
    assert_eq!(walk_files(&dir.path().join("cas/uploads")), 0);
}

/// Where `kind` for `digest` sits in the feed, if it does.
fn feed_position(store: &Store, kind: EventKind, digest: &Digest) -> Option<u64> {
    store
        .index()
        .feed(0, usize::MAX)
        .unwrap()
        .into_iter()
        .find(|(_, ev)| ev.kind == kind && ev.digest.as_ref() == Some(digest))
        .map(|(seq, _)| seq)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_pushed_while_gc_decides_on_its_referrer_is_ordered_after_it() {
    // A signature pushed before its image is a candidate while the image is absent. GC decides
    // "subject gone" and, before it commits, the image's push arrives. Either the signature is
    // kept, or its removal is ordered before the image's put: the image must never be stored
    // while GC goes on to remove a signature it decided on with the image absent.
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let r = repo("signed");
    let cfg = b"{\"c\":2}".to_vec();
    let cd = Digest::sha256(&cfg);
    store.put_blob(&actor(), &r, &cd, body(&cfg)).await.unwrap();
    let subject = image((&cd, cfg.len() as u64), &[]);
    let subject_d = Digest::sha256(&subject);
    let sig = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.example.sig",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": cd.to_string(), "size": cfg.len()},
        "layers": [],
        "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": subject_d.to_string(), "size": subject.len()}
    }))
    .unwrap();
    let sig_d = Digest::sha256(&sig);
    store
        .put_manifest(&actor(), &r, &Reference::Digest(sig_d.clone()), None, sig)
        .await
        .unwrap();
    let created = store
        .index()
        .manifest(&r, &sig_d)
        .unwrap()
        .unwrap()
        .created_ms;

    let point = store.inner.pauses.arm("gc_remove_manifests:decided");
    let gc = {
        let (store, r, sig_d) = (store.clone(), r.clone(), sig_d.clone());
        tokio::spawn(async move {
            store
                .gc_remove_manifests(&Actor::system("gc"), &[(r, sig_d, created)])
                .await
        })
    };
    point.reached().await;
    let mut push = {
        let (store, r, d) = (store.clone(), r.clone(), subject_d.clone());
        tokio::spawn(async move {
            store
                .put_manifest(&actor(), &r, &Reference::Digest(d), None, subject)
                .await
        })
    };
    // Unheld, the image's push completes in well under this; held, it waits for GC.
    let early = tokio::time::timeout(std::time::Duration::from_millis(500), &mut push)
        .await
        .is_ok();
    point.resume();
    let removed = gc.await.unwrap().unwrap();
    if !early {
        push.await.unwrap().unwrap();
    }
    assert!(store.index().manifest(&r, &subject_d).unwrap().is_some());
    if removed[0].is_some() {
        let deleted = feed_position(&store, EventKind::ManifestDeleted, &sig_d).unwrap();
        let put = feed_position(&store, EventKind::ManifestPut, &subject_d).unwrap();
        assert!(
            deleted < put,
            "the signature was removed (feed {deleted}) after its image was stored (feed {put})"
        );
        assert!(!early, "the image's push ran while GC held its decision");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_a_client_found_by_tag_is_not_swept_under_it() {
    // A client resolves a tag (HEAD) and is told the manifest's digest; before the read is
    // noted as seen, the tag is removed and GC decides on the now untagged manifest. The client
    // goes on to push an index naming that digest, so GC must either keep the manifest or have
    // removed it before the read (which then finds nothing): never "found", then swept.
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let r = repo("tagged/app");
    let cfg = b"{\"c\":3}".to_vec();
    let cd = Digest::sha256(&cfg);
    store.put_blob(&actor(), &r, &cd, body(&cfg)).await.unwrap();
    let m = image((&cd, cfg.len() as u64), &[]);
    let d = Digest::sha256(&m);
    store
        .put_manifest(&actor(), &r, &tag("v1"), None, m)
        .await
        .unwrap();
    let created = store.index().manifest(&r, &d).unwrap().unwrap().created_ms;

    let point = store.inner.pauses.arm("read_manifest_seen:read");
    let head = {
        let (store, r) = (store.clone(), r.clone());
        tokio::spawn(async move { store.stat_manifest_seen(&r, &tag("v1")).await })
    };
    point.reached().await;
    store.untag(&actor(), &r, "v1").await.unwrap();
    let mut gc = {
        let (store, r, d) = (store.clone(), r.clone(), d.clone());
        tokio::spawn(async move {
            store
                .gc_remove_manifests(&Actor::system("gc"), &[(r, d, created)])
                .await
        })
    };
    // Unguarded, the removal completes in well under this; guarded, it waits for the read.
    let early = tokio::time::timeout(std::time::Duration::from_millis(500), &mut gc)
        .await
        .is_ok();
    point.resume();
    let found = head.await.unwrap().unwrap();
    assert_eq!(found.0, d);
    assert!(
        !early,
        "GC decided on the manifest while a client's read of it was in flight"
    );
    let removed = gc.await.unwrap().unwrap();
    assert_eq!(
        removed,
        vec![None],
        "a manifest a client just found was swept"
    );
    assert!(store.index().manifest(&r, &d).unwrap().is_some());
}

#[tokio::test]
async fn a_second_index_on_the_same_blob_store_is_refused_at_start() {
    // Two daemons with their own indexes on one blob store would each take the other's blobs
    // for garbage (GC, start-up sweeps, fsck --repair): the second is refused at start.
    let shared = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cfg = |dir: &std::path::Path| {
        let mut c = StoreConfig::new(dir);
        c.backend = Some(stowage_cas::Backend::Filesystem {
            root: shared.path().to_path_buf(),
        });
        c
    };
    let a = Store::open(cfg(a_dir.path())).await.unwrap();
    let r = repo("claimed/app");
    let data = b"only a's".to_vec();
    let d = Digest::sha256(&data);
    a.put_blob(&actor(), &r, &d, body(&data)).await.unwrap();
    drop(a);
    let err = Store::open(cfg(b_dir.path())).await.unwrap_err();
    assert!(
        matches!(
            &err,
            StoreError::Cas(stowage_cas::CasError::ClaimedByOther { owner, .. })
                if owner.starts_with("stowage-index-")
        ),
        "{err}"
    );
    // The first index still opens on it, and its blob is there.
    let a = Store::open(cfg(a_dir.path())).await.unwrap();
    assert_eq!(read(&a, &r, &d).await.unwrap(), data);
}

#[tokio::test]
async fn the_site_name_is_fixed_at_first_start() {
    let dir = tempfile::tempdir().unwrap();
    let open_as = |site: &str, source: SiteSource| {
        let mut cfg = StoreConfig::new(dir.path());
        cfg.site = Some(site.to_string());
        cfg.site_source = source;
        Store::open(cfg)
    };
    let store = open_as("host-1234", SiteSource::Default).await.unwrap();
    assert_eq!(store.site(), Some("host-1234"));
    drop(store);
    // A container restarted with a new hostname keeps the recorded name (and its events say so).
    let store = open_as("host-9876", SiteSource::Default).await.unwrap();
    assert_eq!(store.site(), Some("host-1234"));
    let r = repo("site/app");
    let data = b"named".to_vec();
    let d = Digest::sha256(&data);
    store.put_blob(&actor(), &r, &d, body(&data)).await.unwrap();
    let feed = store.index().feed(0, usize::MAX).unwrap();
    assert!(feed
        .iter()
        .all(|(_, ev)| ev.origin.as_deref() == Some("host-1234")));
    drop(store);
    // An operator's explicit other name stops the start and says which name is recorded.
    let err = open_as("dc2", SiteSource::Explicit).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::SiteMismatch { recorded, configured }
            if recorded == "host-1234" && configured == "dc2"),
        "{err}"
    );
    // The same explicit name is fine.
    let store = open_as("host-1234", SiteSource::Explicit).await.unwrap();
    assert_eq!(store.site(), Some("host-1234"));
}
