#![allow(clippy::unwrap_used)]

mod batching;
mod concurrent;
mod model;
mod sparse;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use stowage_core::{Digest, ManualClock, Reference, RepoName, Tag};
use stowage_store::{Store, StoreConfig, StoreError};

use crate::{Collector, GcConfig, RunOptions, RunStatus};

/// The actor of the tests' requests.
pub(crate) fn actor() -> stowage_core::Actor {
    stowage_core::Actor::user("tester")
}

const HOUR: u64 = 3_600_000;
const T0: u64 = 1_700_000_000_000;

pub(crate) fn body(
    data: &[u8],
) -> futures::stream::Iter<std::vec::IntoIter<Result<Bytes, std::io::Error>>> {
    futures::stream::iter(vec![Ok(Bytes::copy_from_slice(data))])
}

pub(crate) fn repo(s: &str) -> RepoName {
    RepoName::parse(s).unwrap()
}

pub(crate) fn tag(s: &str) -> Reference {
    Reference::Tag(Tag::parse(s).unwrap())
}

pub(crate) struct Env {
    pub dir: tempfile::TempDir,
    pub clock: ManualClock,
    pub store: Store,
    pub gc: Collector,
}

pub(crate) async fn open_at(dir: tempfile::TempDir, clock: ManualClock, config: GcConfig) -> Env {
    let store = Store::open_with_clock(StoreConfig::new(dir.path()), Arc::new(clock.clone()))
        .await
        .unwrap();
    let gc = Collector::new(store.gc_ops(), config);
    Env {
        dir,
        clock,
        store,
        gc,
    }
}

/// An environment that collects untagged manifests (the tests' usual subject; the default
/// keeps them, see `delete_untagged_false_keeps_every_manifest`).
pub(crate) async fn env() -> Env {
    open_at(
        tempfile::tempdir().unwrap(),
        ManualClock::new(T0),
        GcConfig {
            delete_untagged: true,
            ..GcConfig::default()
        },
    )
    .await
}

impl Env {
    pub async fn blob(&self, r: &str, data: &[u8]) -> (Digest, u64) {
        let d = Digest::sha256(data);
        self.store
            .client()
            .put_blob(&actor(), &repo(r), &d, body(data))
            .await
            .unwrap();
        (d, data.len() as u64)
    }

    /// Pushes an image of `layers` (each pushed as a blob) plus a config, under tag
    /// `reference` (or by digest when empty); returns the manifest digest, its size, and the
    /// blob digests (config first).
    pub async fn image(
        &self,
        r: &str,
        reference: &str,
        layers: &[&[u8]],
    ) -> (Digest, u64, Vec<Digest>) {
        let names: Vec<String> = layers
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        let config = serde_json::json!({ "layers": names }).to_string();
        let (cd, cs) = self.blob(r, config.as_bytes()).await;
        let mut descs = Vec::new();
        let mut digests = vec![cd.clone()];
        for l in layers {
            let (d, s) = self.blob(r, l).await;
            descs.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": d.to_string(), "size": s
            }));
            digests.push(d);
        }
        let bytes = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": cd.to_string(), "size": cs},
            "layers": descs
        }))
        .unwrap();
        let reference = if reference.is_empty() {
            Digest::sha256(&bytes).to_string()
        } else {
            reference.to_string()
        };
        let (md, ms) = self.manifest(r, &reference, bytes).await;
        (md, ms, digests)
    }

    pub async fn manifest(&self, r: &str, reference: &str, bytes: Vec<u8>) -> (Digest, u64) {
        let size = bytes.len() as u64;
        let reference = match Digest::parse(reference) {
            Ok(d) => Reference::Digest(d),
            Err(_) => tag(reference),
        };
        let out = self
            .store
            .client()
            .put_manifest(&actor(), &repo(r), &reference, None, bytes)
            .await
            .unwrap();
        (out.digest, size)
    }

    /// An image index of `children` (digest, size).
    pub async fn index(&self, r: &str, reference: &str, children: &[(&Digest, u64)]) -> Digest {
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
        let bytes = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests
        }))
        .unwrap();
        self.manifest(r, reference, bytes).await.0
    }

    /// A signature-like artifact whose subject is `subject`.
    pub async fn referrer(&self, r: &str, subject: (&Digest, u64), payload: &[u8]) -> Digest {
        let (ld, ls) = self.blob(r, payload).await;
        let (cd, cs) = self.blob(r, b"{}").await;
        let bytes = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": "application/vnd.example.signature",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                       "digest": cd.to_string(), "size": cs},
            "layers": [{"mediaType": "application/octet-stream",
                        "digest": ld.to_string(), "size": ls}],
            "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": subject.0.to_string(), "size": subject.1}
        }))
        .unwrap();
        let d = Digest::sha256(&bytes);
        self.manifest(r, d.as_str(), bytes).await.0
    }

    pub async fn read(&self, r: &str, d: &Digest) -> Result<Vec<u8>, StoreError> {
        let b = self.store.read_blob(&repo(r), d, None).await?;
        let chunks: Vec<Bytes> = b.stream.try_collect().await?;
        Ok(chunks.concat())
    }

    pub fn has_manifest(&self, r: &str, d: &Digest) -> bool {
        self.store
            .get_manifest(&repo(r), &Reference::Digest(d.clone()))
            .is_ok()
    }

    pub fn served(&self, r: &str, d: &Digest) -> bool {
        self.store.stat_blob(&repo(r), d).is_ok()
    }

    pub async fn gc(&self, dry_run: bool) -> crate::Report {
        let r = self
            .gc
            .run(RunOptions {
                dry_run,
                trigger: "test".into(),
                ..RunOptions::default()
            })
            .await
            .unwrap();
        assert_eq!(r.status, RunStatus::Completed, "{:?}", r.error);
        r
    }

    pub fn age(&self, ms: u64) {
        self.clock.advance(ms);
    }
}

#[tokio::test]
async fn untagged_image_is_collected_after_grace_and_dry_run_matches() {
    let e = env().await;
    let (m, _, blobs) = e.image("app", "v1", &[b"layer-one", b"layer-two"]).await;
    let (keep, _, keep_blobs) = e.image("app", "v2", &[b"layer-three"]).await;
    e.store
        .client()
        .untag(&actor(), &repo("app"), "v1")
        .await
        .unwrap();

    // Inside the grace period nothing goes.
    let young = e.gc(false).await;
    assert_eq!(young.totals.manifests_swept, 0);
    assert_eq!(young.totals.blobs_quarantined, 0);
    assert!(e.has_manifest("app", &m));

    e.age(2 * HOUR);
    let dry = e.gc(true).await;
    assert!(dry.dry_run);
    assert_eq!(dry.totals.manifests_swept, 1);
    assert_eq!(dry.totals.blobs_swept, 3);
    assert_eq!(dry.totals.blobs_quarantined, 3);
    let sizes: u64 = [b"layer-one".len(), b"layer-two".len()]
        .iter()
        .sum::<usize>() as u64;
    assert!(dry.totals.bytes_quarantined > sizes);
    // A dry run changes nothing.
    assert!(e.has_manifest("app", &m));
    for b in &blobs {
        assert!(e.served("app", b));
    }

    let real = e.gc(false).await;
    assert_eq!(
        real.totals, dry.totals,
        "dry run must predict the real run exactly"
    );
    assert_eq!(real.repos, dry.repos);
    assert!(!e.has_manifest("app", &m));
    for b in &blobs {
        assert!(!e.served("app", b), "{b} still served");
    }
    assert!(e.has_manifest("app", &keep));
    for b in &keep_blobs {
        assert!(e.read("app", b).await.is_ok());
    }
    assert_eq!(real.totals.blobs_marked, 2);
    assert_eq!(real.totals.manifests_marked, 1);
    // Phases are timed; history keeps the runs newest first.
    let names: Vec<_> = real.phases.iter().map(|p| p.phase.as_str()).collect();
    assert_eq!(
        names,
        ["mark", "sweep_manifests", "sweep_blobs", "purge", "uploads"]
    );
    let history = e.gc.history(10).unwrap();
    assert_eq!(history.len(), 3);
    assert_eq!(history[0], real);
    assert_eq!(e.gc.report(dry.run_id).unwrap(), dry);

    // Quarantined bytes stay until the retention passes, then a run purges them.
    let blob_file = |d: &Digest| {
        e.dir
            .path()
            .join("cas/blobs/sha256")
            .join(&d.hex()[..2])
            .join(d.hex())
    };
    assert!(blob_file(&blobs[1]).exists());
    e.age(23 * HOUR);
    assert_eq!(e.gc(false).await.totals.blobs_purged, 0);
    e.age(2 * HOUR);
    let purge = e.gc(false).await;
    assert_eq!(purge.totals.blobs_purged, 3);
    assert_eq!(purge.totals.bytes_purged, real.totals.bytes_quarantined);
    assert!(!blob_file(&blobs[1]).exists());
    assert!(e.store.index().blob(&blobs[1]).unwrap().is_none());
    // Restoring a purged blob is refused.
    assert!(e.gc.restore(&actor(), &blobs[1]).await.is_err());
}

#[tokio::test]
async fn restore_brings_a_quarantined_blob_back_where_it_was() {
    let e = env().await;
    let (d, _) = e.blob("a", b"orphan layer").await;
    e.store
        .client()
        .mount_blob(&actor(), &repo("b"), &repo("a"), &d)
        .await
        .unwrap()
        .unwrap();
    e.age(2 * HOUR);
    let r = e.gc(false).await;
    assert_eq!(r.totals.blobs_swept, 2);
    assert_eq!(r.totals.blobs_quarantined, 1);
    assert_eq!(r.repos["a"].blobs_swept, 1);
    assert_eq!(r.repos["b"].blobs_swept, 1);
    assert!(!e.served("a", &d) && !e.served("b", &d));
    let restored = e.gc.restore(&actor(), &d).await.unwrap();
    assert_eq!(restored.repos, vec!["a".to_string(), "b".to_string()]);
    assert_eq!(e.read("a", &d).await.unwrap(), b"orphan layer");
    assert_eq!(e.read("b", &d).await.unwrap(), b"orphan layer");
    // Restored content has a fresh grace period.
    assert_eq!(e.gc(false).await.totals.blobs_quarantined, 0);
    // Restoring what is served, or was never stored, is refused with a clear error.
    let err = e.gc.restore(&actor(), &d).await.unwrap_err().to_string();
    assert!(err.contains("served"), "{err}");
    let err =
        e.gc.restore(&actor(), &Digest::sha256(b"never"))
            .await
            .unwrap_err()
            .to_string();
    assert!(err.contains("not quarantined"), "{err}");
}

#[tokio::test]
async fn zero_retention_purges_in_the_same_run() {
    let e = open_at(
        tempfile::tempdir().unwrap(),
        ManualClock::new(T0),
        GcConfig {
            quarantine: Duration::ZERO,
            ..GcConfig::default()
        },
    )
    .await;
    let (d, size) = e.blob("a", b"short-lived").await;
    e.age(2 * HOUR);
    let dry = e.gc(true).await;
    let real = e.gc(false).await;
    assert_eq!(real.totals, dry.totals);
    assert_eq!(real.totals.blobs_purged, 1);
    assert_eq!(real.totals.bytes_purged, size);
    assert!(e.store.index().blob(&d).unwrap().is_none());
    assert!(e.store.cas().size(&d).await.unwrap().is_none());
}

#[tokio::test]
async fn multi_arch_index_cases() {
    let e = env().await;
    let shared = b"shared base layer".as_slice();
    // Two platform images pushed by digest (untagged), an index over both, tagged.
    let (amd, amd_size, amd_blobs) = e.image("multi", "", &[shared, b"amd64 layer"]).await;
    let (arm, arm_size, arm_blobs) = e.image("multi", "", &[shared, b"arm64 layer"]).await;
    let (riscv, riscv_size, riscv_blobs) = e.image("multi", "", &[b"riscv layer"]).await;
    let idx1 = e
        .index("multi", "v1", &[(&amd, amd_size), (&arm, arm_size)])
        .await;
    // A second index shares `arm` and adds `riscv`.
    let idx2 = e
        .index("multi", "v2", &[(&arm, arm_size), (&riscv, riscv_size)])
        .await;
    // A standalone tagged image shares the base layer.
    let (solo, _, solo_blobs) = e.image("multi", "solo", &[shared]).await;
    e.age(2 * HOUR);

    // 1. A tagged index keeps its untagged children and their layers.
    let r = e.gc(false).await;
    assert_eq!(r.totals.manifests_swept, 0, "{r:?}");
    assert_eq!(r.totals.blobs_swept, 0);
    for (m, blobs) in [
        (&amd, &amd_blobs),
        (&arm, &arm_blobs),
        (&riscv, &riscv_blobs),
    ] {
        assert!(e.has_manifest("multi", m));
        for b in blobs {
            assert!(e.read("multi", b).await.is_ok());
        }
    }

    // 2. Deleting v1's tag frees the children referenced nowhere else (amd), and keeps the
    //    child shared with v2 (arm) and the layer shared with solo and arm.
    e.store
        .client()
        .untag(&actor(), &repo("multi"), "v1")
        .await
        .unwrap();
    let r = e.gc(false).await;
    assert!(!e.has_manifest("multi", &idx1));
    assert!(!e.has_manifest("multi", &amd));
    assert!(e.has_manifest("multi", &arm));
    assert!(e.has_manifest("multi", &idx2));
    assert_eq!(r.totals.manifests_swept, 2);
    // amd's own layer and config go; the shared base layer stays.
    assert!(!e.served("multi", &amd_blobs[2]));
    assert!(!e.served("multi", &amd_blobs[0]));
    assert_eq!(e.read("multi", &amd_blobs[1]).await.unwrap(), shared);
    for b in arm_blobs.iter().chain(&riscv_blobs).chain(&solo_blobs) {
        assert!(e.read("multi", b).await.is_ok(), "{b} lost");
    }

    // 3. Deleting the manifest that shares a layer with a tagged one keeps the layer.
    e.store
        .client()
        .untag(&actor(), &repo("multi"), "v2")
        .await
        .unwrap();
    e.gc(false).await;
    assert!(!e.has_manifest("multi", &arm));
    assert!(!e.has_manifest("multi", &riscv));
    assert!(e.has_manifest("multi", &solo));
    assert_eq!(e.read("multi", &solo_blobs[1]).await.unwrap(), shared);
    assert!(!e.served("multi", &arm_blobs[2]));
    assert!(!e.served("multi", &riscv_blobs[1]));
}

#[tokio::test]
async fn referrers_live_with_their_subject() {
    let e = env().await;
    let (kept, kept_size, _) = e.image("app", "v1", &[b"kept layer"]).await;
    let (gone, gone_size, _) = e.image("app", "v2", &[b"gone layer"]).await;
    let sig_kept = e
        .referrer("app", (&kept, kept_size), b"signature of v1")
        .await;
    let sbom_kept = e
        .referrer("app", (&sig_kept, 0), b"signature of the signature")
        .await;
    let sig_gone = e
        .referrer("app", (&gone, gone_size), b"signature of v2")
        .await;
    e.store
        .client()
        .untag(&actor(), &repo("app"), "v2")
        .await
        .unwrap();
    e.age(2 * HOUR);
    let r = e.gc(false).await;
    assert!(
        e.has_manifest("app", &sig_kept),
        "signature of a tagged manifest survives"
    );
    assert!(
        e.has_manifest("app", &sbom_kept),
        "referrers chain transitively"
    );
    assert!(!e.has_manifest("app", &gone));
    assert!(
        !e.has_manifest("app", &sig_gone),
        "signature whose subject is gone is collected"
    );
    assert_eq!(r.totals.manifests_swept, 2);
    assert_eq!(
        e.store.referrers(&repo("app"), &kept, None).unwrap().len(),
        1
    );
    assert!(e
        .store
        .referrers(&repo("app"), &gone, None)
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn delete_untagged_false_keeps_every_manifest() {
    // The default: collecting untagged manifests is an explicit choice.
    let e = open_at(
        tempfile::tempdir().unwrap(),
        ManualClock::new(T0),
        GcConfig::default(),
    )
    .await;
    let (m, _, blobs) = e.image("app", "v1", &[b"layer"]).await;
    e.store
        .client()
        .untag(&actor(), &repo("app"), "v1")
        .await
        .unwrap();
    let (stray, _) = e.blob("app", b"never referenced").await;
    e.age(2 * HOUR);
    let r = e.gc(false).await;
    assert_eq!(r.totals.manifests_swept, 0);
    assert!(e.has_manifest("app", &m));
    for b in &blobs {
        assert!(e.served("app", b));
    }
    assert!(!e.served("app", &stray));
    assert_eq!(r.totals.blobs_quarantined, 1);
}

fn phase_rank(p: crate::Phase) -> usize {
    use crate::Phase::*;
    [
        Queued,
        Mark,
        SweepManifests,
        SweepBlobs,
        Purge,
        Uploads,
        Done,
    ]
    .iter()
    .position(|q| *q == p)
    .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_racing_a_sweep_either_keeps_the_blob_or_fails_cleanly() {
    // A layer uploaded long ago and never referenced is a candidate; a manifest referencing it
    // (pushed without a HEAD first, so nothing holds the layer) arrives while the run works:
    // as the run starts, while it marks, while it sweeps manifests (the layer is decided but
    // not swept yet), or after it swept blobs. Whatever the interleaving, the manifest is
    // either stored with its layer served, or refused with MANIFEST_BLOB_UNKNOWN; and over the
    // rounds both paths run.
    let (mut stored, mut refused, mut kept_on_recheck) = (0u32, 0u32, 0u64);
    for round in 0..40u32 {
        let e = env().await;
        let layer = format!("layer for round {round}").into_bytes();
        let (cd, cs) = e.blob("app", b"{\"cfg\":1}").await;
        let (ld, ls) = e.blob("app", &layer).await;
        e.age(2 * HOUR);
        let bytes = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": cd.to_string(), "size": cs},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": ld.to_string(), "size": ls}]
        }))
        .unwrap();
        let at = [
            crate::Phase::Queued,
            crate::Phase::Mark,
            crate::Phase::SweepManifests,
            crate::Phase::SweepBlobs,
            crate::Phase::Purge,
        ][round as usize % 5];
        let mut progress = e.gc.progress();
        let store = e.store.clone();
        let push = tokio::spawn(async move {
            // Wait until the run reaches the round's phase (or ends), then push at once.
            loop {
                let reached = progress
                    .borrow_and_update()
                    .as_ref()
                    .is_some_and(|p| phase_rank(p.phase) >= phase_rank(at));
                if reached || progress.changed().await.is_err() {
                    break;
                }
            }
            store
                .client()
                .put_manifest(&actor(), &repo("app"), &tag("latest"), None, bytes)
                .await
        });
        let run = e.gc(false).await;
        kept_on_recheck += run.totals.kept_on_recheck;
        match push.await.unwrap() {
            Ok(out) => {
                stored += 1;
                assert!(e.has_manifest("app", &out.digest));
                assert_eq!(e.read("app", &ld).await.unwrap(), layer, "round {round}");
                assert!(e.read("app", &cd).await.is_ok());
            }
            Err(StoreError::ManifestBlobUnknown(_)) => {
                refused += 1;
                assert!(
                    run.totals.blobs_swept > 0,
                    "round {round}: refused but nothing swept"
                );
                assert!(e.store.get_manifest(&repo("app"), &tag("latest")).is_err());
            }
            Err(other) => panic!("round {round}: unexpected error {other}"),
        }
        // Nothing served is missing its bytes, and a second run finds a consistent state.
        e.gc(false).await;
        if e.store.get_manifest(&repo("app"), &tag("latest")).is_ok() {
            assert!(e.read("app", &ld).await.is_ok());
            assert!(e.read("app", &cd).await.is_ok());
        }
    }
    // Both sides of the race ran: a test where the push always won (or always lost) would
    // say nothing about the other path.
    eprintln!(
        "push racing a sweep: {stored} stored, {refused} refused, {kept_on_recheck} kept on re-check"
    );
    assert!(stored > 0, "no round stored its manifest");
    assert!(refused > 0, "no round took the refusal path");
}

#[tokio::test]
async fn stale_uploads_expire_with_their_bytes() {
    let e = env().await;
    let r = repo("app");
    let chunked = e.store.client().start_upload(&actor(), &r).await.unwrap();
    e.store
        .client()
        .append_upload(
            &actor(),
            &r,
            &chunked.id,
            Some(0),
            body(b"some staged bytes"),
        )
        .await
        .unwrap();
    let empty = e.store.client().start_upload(&actor(), &r).await.unwrap();
    e.age(23 * HOUR);
    let fresh = e.store.client().start_upload(&actor(), &r).await.unwrap();
    e.age(2 * HOUR);
    let dry = e.gc(true).await;
    assert_eq!(dry.totals.uploads_expired, 2);
    assert_eq!(dry.totals.upload_bytes_expired, 17);
    let real = e.gc(false).await;
    assert_eq!(real.totals.uploads_expired, 2);
    assert_eq!(real.totals.upload_bytes_expired, 17);
    for id in [&chunked.id, &empty.id] {
        assert!(matches!(
            e.store.client().upload_status(&actor(), &r, id).await,
            Err(StoreError::BlobUploadUnknown(_))
        ));
    }
    assert!(e
        .store
        .client()
        .upload_status(&actor(), &r, &fresh.id)
        .await
        .is_ok());
    let staging = std::fs::read_dir(e.dir.path().join("cas/uploads"))
        .unwrap()
        .count();
    assert_eq!(staging, 0, "staged bytes of the expired upload remain");
}

/// Staging that no session owns (a crash between writing a part and recording its session) is
/// swept by every run once it is older than the upload expiry; younger staging stays, as it may
/// belong to a write in progress.
#[tokio::test]
async fn runs_sweep_unowned_staging_older_than_the_upload_expiry() {
    let e = env().await;
    let staging = e.dir.path().join("cas/uploads");
    std::fs::create_dir_all(&staging).unwrap();
    let at = |ms: u64| std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    for (name, written) in [
        ("old.00000000", T0 - HOUR),
        ("young.00000000", T0 + 2 * HOUR),
    ] {
        let f = std::fs::File::create(staging.join(name)).unwrap();
        f.set_modified(at(written)).unwrap();
    }
    // The default expiry is 24 h: the cutoff is T0 + 1 h.
    e.age(25 * HOUR);
    e.gc(false).await;
    let mut left: Vec<String> = std::fs::read_dir(&staging)
        .unwrap()
        .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["young.00000000"]);
}

#[tokio::test]
async fn crash_leftovers_are_repaired_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let orphan = b"published, never indexed".to_vec();
    let od = Digest::sha256(&orphan);
    let run_id;
    {
        let e = open_at(dir, clock.clone(), GcConfig::default()).await;
        // Simulate a crash between publishing bytes and indexing them: an intent, and bytes
        // in place without a record.
        e.store.index().put_pending(&od, "upload-x", T0).unwrap();
        let path = e.dir.path().join("cas/blobs/sha256").join(&od.hex()[..2]);
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join(od.hex()), &orphan).unwrap();
        // And a run recorded as started that never finished.
        let mut report = e.gc(true).await;
        report.run_id += 1;
        report.status = RunStatus::Running;
        run_id = report.run_id;
        let mut batch = stowage_index::Batch::new();
        batch.put_gc_run(run_id, serde_json::to_vec(&report).unwrap());
        e.store.index().commit(batch).unwrap();
        let dir = e.dir;
        drop(e.gc);
        e.store.close().await;
        let e = open_at(dir, clock, GcConfig::default()).await;
        assert!(
            e.store.cas().size(&od).await.unwrap().is_none(),
            "orphan bytes not removed"
        );
        assert!(e.store.index().pending().unwrap().is_empty());
        let closed = e.gc.report(run_id).unwrap();
        assert_eq!(closed.status, RunStatus::Interrupted);
        // New runs get new ids.
        assert!(e.gc(true).await.run_id > run_id);
    }
}

#[tokio::test]
async fn one_run_at_a_time_and_progress_ends_with_done() {
    let e = env().await;
    e.image("app", "v1", &[b"l"]).await;
    let mut rx = e.gc.progress();
    let id = e.gc.start(RunOptions::default()).unwrap();
    let second = e.gc.start(RunOptions::default());
    // The first may already be over on a fast machine; if not, the second is refused.
    if let Err(err) = second {
        assert!(matches!(err, crate::GcError::AlreadyRunning(x) if x == id));
    }
    let last = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            rx.changed().await.unwrap();
            let p = rx.borrow().clone().unwrap();
            if p.phase == crate::Phase::Done {
                return p;
            }
        }
    })
    .await
    .unwrap();
    assert!(last.run_id >= id);
    assert_eq!(e.gc.running(), None);
    assert_eq!(
        e.gc.metrics().runs_completed,
        e.gc.history(10).unwrap().len() as u64
    );
}

#[tokio::test]
async fn replication_pins_keep_blobs_from_collection_until_they_expire() {
    let e = env().await;
    // At a source: an untagged image whose blobs an outgoing transfer is still sending.
    let (_, _, blobs) = e
        .image("app", "v1", &[b"sending-one", b"sending-two"])
        .await;
    e.store
        .client()
        .untag(&actor(), &repo("app"), "v1")
        .await
        .unwrap();
    // At a target: a blob received for a manifest that has not arrived yet.
    let (waiting, _) = e.blob("other", b"received-before-its-manifest").await;
    let (unpinned, _) = e.blob("other", b"nobody-needs-me").await;
    e.age(2 * HOUR);
    let until = e.store.now_ms() + HOUR;
    e.store
        .replica()
        .pin_blobs(blobs.iter().chain([&waiting]), until)
        .unwrap();
    let r = e.gc(false).await;
    assert_eq!(r.totals.manifests_swept, 1, "manifests are not pinned");
    for b in &blobs {
        assert!(e.served("app", b), "{b} pinned by a transfer");
    }
    assert!(e.served("other", &waiting));
    assert!(!e.served("other", &unpinned), "an unpinned orphan goes");
    // Once the pins expire, the next run collects them.
    e.age(HOUR + 1);
    e.gc(false).await;
    for b in &blobs {
        assert!(!e.served("app", b));
    }
    assert!(!e.served("other", &waiting));
}

#[tokio::test]
async fn a_blob_a_client_just_found_survives_a_sweep_until_its_manifest_arrives() {
    // A client pushing a new image asks HEAD for its config and base layer, finds both (left
    // unreferenced long ago), skips their uploads and, before its manifest put, a run sweeps.
    // docker and podman do not retry MANIFEST_BLOB_UNKNOWN: the put must succeed.
    let e = env().await;
    let (cd, cs) = e.blob("app", b"{\"cfg\":\"seen\"}").await;
    let (ld, ls) = e.blob("app", b"shared base layer").await;
    e.age(2 * HOUR);
    let client = e.store.client();
    for d in [&cd, &ld] {
        client.stat_blob(&repo("app"), d).await.unwrap();
    }
    let run = e.gc(false).await;
    assert_eq!(
        run.totals.blobs_quarantined, 0,
        "a blob a client just found was collected"
    );
    let bytes = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": cd.to_string(), "size": cs},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": ld.to_string(), "size": ls}]
    }))
    .unwrap();
    e.manifest("app", "v2", bytes).await;
    assert!(e.served("app", &ld));
    // Held for a window, not forever: found once and then left alone, a blob goes.
    let (stray, _) = e.blob("app", b"found once, then forgotten").await;
    e.age(2 * HOUR);
    client.stat_blob(&repo("app"), &stray).await.unwrap();
    e.age(2 * HOUR);
    let run = e.gc(false).await;
    assert_eq!(run.totals.blobs_quarantined, 1);
    assert!(!e.served("app", &stray));
}
