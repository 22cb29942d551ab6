//! Model test with real interleaving. Several pusher tasks run at once on a multi-thread runtime
//! while the collector runs real runs back to back: images (uploaded, found with `HEAD` and
//! skipped, or referenced blind), indexes, referrers, untags, replication pins and restores,
//! with crash-reopens between phases and time jumping past the grace period and the quarantine.
//!
//! Each task owns its repository, so its model is exact, but the blob contents come from one
//! shared pool, so runs decide over digests that several tasks and repositories hold. Checked:
//! * after every step of a task, everything its model says is live is served byte-identical:
//!   tagged images and indexes with their children and blobs, referrers of tagged manifests,
//!   and blobs pinned by replication until their pin expires;
//! * a push whose blobs were uploaded or found with `HEAD` in the same phase always succeeds;
//!   a blind push (no upload, no `HEAD`) of old blobs succeeds or is refused with
//!   `MANIFEST_BLOB_UNKNOWN`, never anything else;
//! * after each phase a final run leaves nothing unreachable and old served, and a restore of
//!   a collected blob serves it again.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use stowage_core::{Digest, ManualClock, Reference};
use stowage_store::{Store, StoreError};

use super::{actor, body, open_at, repo, tag, HOUR, T0};
use crate::{GcConfig, RunOptions, RunStatus};

const TASKS: u64 = 3;
const PHASES: u64 = 6;
const STEPS: usize = 20;
const POOL: usize = 10;

fn pool_blob(i: usize) -> Vec<u8> {
    format!("shared pool blob {i} ").repeat(i + 3).into_bytes()
}

/// An image or index the model keeps: its manifest bytes, blobs, and child manifests.
#[derive(Clone, Debug)]
struct Item {
    digest: Digest,
    bytes: Vec<u8>,
    blobs: Vec<Vec<u8>>,
    children: Vec<Item>,
}

#[derive(Default)]
struct TaskModel {
    tags: BTreeMap<String, Item>,
    /// Referrers by subject digest.
    referrers: Vec<(Digest, Digest)>,
    /// Pinned blobs and when their pins end.
    pins: Vec<(Vec<u8>, u64)>,
    /// Pool blobs uploaded into the repository in an earlier phase (candidates for blind
    /// references).
    old_blobs: Vec<usize>,
    uploaded_now: Vec<usize>,
}

#[derive(Default, Debug)]
struct Tally {
    pushes: u64,
    head_skips: u64,
    blind_stored: u64,
    blind_refused: u64,
    indexes: u64,
    referrers: u64,
    pins: u64,
    restores: u64,
}

fn image_bytes(blobs: &[Vec<u8>], salt: u64) -> Vec<u8> {
    let layers: Vec<serde_json::Value> = blobs
        .iter()
        .map(|b| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": Digest::sha256(b).to_string(), "size": b.len()
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                   "digest": Digest::sha256(b"{}").to_string(), "size": 2},
        "layers": layers,
        "annotations": {"salt": salt.to_string()}
    }))
    .unwrap()
}

async fn upload(store: &Store, r: &str, data: &[u8]) {
    store
        .client()
        .put_blob(&actor(), &repo(r), &Digest::sha256(data), body(data))
        .await
        .unwrap();
}

async fn put(
    store: &Store,
    r: &str,
    reference: Reference,
    bytes: Vec<u8>,
) -> Result<Digest, StoreError> {
    store
        .client()
        .put_manifest(&actor(), &repo(r), &reference, None, bytes)
        .await
        .map(|o| o.digest)
}

async fn served(store: &Store, r: &str, data: &[u8]) -> bool {
    match store.read_blob(&repo(r), &Digest::sha256(data), None).await {
        Ok(read) => {
            use futures::TryStreamExt;
            let chunks: Vec<bytes::Bytes> = read.stream.try_collect().await.unwrap_or_default();
            chunks.concat() == data
        }
        Err(_) => false,
    }
}

async fn check_item(store: &Store, r: &str, item: &Item, what: &str) {
    let got = store
        .get_manifest(&repo(r), &Reference::Digest(item.digest.clone()))
        .unwrap_or_else(|e| panic!("{what}: manifest {} lost: {e}", item.digest));
    assert_eq!(got.bytes, item.bytes, "{what}: manifest bytes");
    for b in &item.blobs {
        assert!(
            served(store, r, b).await,
            "{what}: blob {} of {} not served",
            Digest::sha256(b),
            item.digest
        );
    }
    assert!(served(store, r, b"{}").await, "{what}: config not served");
    for c in &item.children {
        Box::pin(check_item(store, r, c, what)).await;
    }
}

async fn check_task(store: &Store, clock: &ManualClock, r: &str, m: &TaskModel, when: &str) {
    for (t, item) in &m.tags {
        let got = store
            .get_manifest(&repo(r), &tag(t))
            .unwrap_or_else(|e| panic!("{when}: tag {r}:{t} lost: {e}"));
        assert_eq!(got.digest, item.digest, "{when}: tag {r}:{t}");
        check_item(store, r, item, &format!("{when}: {r}:{t}")).await;
    }
    let live: Vec<&Digest> = m.tags.values().map(|i| &i.digest).collect();
    for (subject, referrer) in &m.referrers {
        if live.contains(&subject) {
            assert!(
                store
                    .get_manifest(&repo(r), &Reference::Digest(referrer.clone()))
                    .is_ok(),
                "{when}: referrer {referrer} of live {subject} in {r} lost"
            );
        }
    }
    let now = stowage_core::Clock::now_millis(clock);
    for (data, until) in &m.pins {
        if now < *until {
            assert!(
                served(store, r, data).await,
                "{when}: pinned blob lost in {r}"
            );
        }
    }
}

/// One step of task `t`.
async fn step(
    store: &Store,
    clock: &ManualClock,
    rng: &mut StdRng,
    r: &str,
    m: &mut TaskModel,
    tally: &mut Tally,
    salt: u64,
) {
    let now = stowage_core::Clock::now_millis(clock);
    match rng.random_range(0..100) {
        // Push an image, uploading every blob.
        0..=24 => {
            let idx: Vec<usize> = (0..rng.random_range(1..4))
                .map(|_| rng.random_range(0..POOL))
                .collect();
            let blobs: Vec<Vec<u8>> = idx.iter().map(|i| pool_blob(*i)).collect();
            for b in blobs.iter().chain([&b"{}".to_vec()]) {
                upload(store, r, b).await;
            }
            m.uploaded_now.extend(idx);
            let bytes = image_bytes(&blobs, salt);
            let t = format!("t{}", rng.random_range(0..4));
            let d = put(store, r, tag(&t), bytes.clone())
                .await
                .unwrap_or_else(|e| panic!("push of uploaded blobs to {r}:{t} failed: {e}"));
            let item = Item {
                digest: d,
                bytes,
                blobs,
                children: Vec::new(),
            };
            m.tags.insert(t, item);
            tally.pushes += 1;
        }
        // Push an image the way docker does: HEAD each blob, upload only what is missing.
        25..=44 => {
            let idx: Vec<usize> = (0..rng.random_range(1..4))
                .map(|_| rng.random_range(0..POOL))
                .collect();
            let blobs: Vec<Vec<u8>> = idx.iter().map(|i| pool_blob(*i)).collect();
            for b in blobs.iter().chain([&b"{}".to_vec()]) {
                if store
                    .client()
                    .stat_blob(&repo(r), &Digest::sha256(b))
                    .await
                    .is_ok()
                {
                    tally.head_skips += 1;
                } else {
                    upload(store, r, b).await;
                }
            }
            // A real client takes a while between its HEADs and its manifest put (other
            // uploads, the network): runs go on meanwhile.
            tokio::time::sleep(std::time::Duration::from_millis(rng.random_range(0..8))).await;
            let bytes = image_bytes(&blobs, salt);
            let t = format!("t{}", rng.random_range(0..4));
            let d = put(store, r, tag(&t), bytes.clone())
                .await
                .unwrap_or_else(|e| panic!("push after HEAD to {r}:{t} failed: {e}"));
            m.tags.insert(
                t,
                Item {
                    digest: d,
                    bytes,
                    blobs,
                    children: Vec::new(),
                },
            );
            tally.pushes += 1;
        }
        // A blind push: old blobs referenced without upload or HEAD. A run may have swept them.
        45..=54 => {
            if m.old_blobs.is_empty() {
                return;
            }
            let i = m.old_blobs[rng.random_range(0..m.old_blobs.len())];
            let blobs = vec![pool_blob(i)];
            let bytes = image_bytes(&blobs, salt);
            let t = format!("t{}", rng.random_range(0..4));
            match put(store, r, tag(&t), bytes.clone()).await {
                Ok(d) => {
                    tally.blind_stored += 1;
                    m.tags.insert(
                        t,
                        Item {
                            digest: d,
                            bytes,
                            blobs,
                            children: Vec::new(),
                        },
                    );
                }
                Err(StoreError::ManifestBlobUnknown(_)) => {
                    tally.blind_refused += 1;
                    m.old_blobs.retain(|o| *o != i);
                }
                Err(e) => panic!("blind push to {r}:{t}: unexpected error {e}"),
            }
        }
        // An index over two tagged images.
        55..=64 => {
            let items: Vec<Item> = m
                .tags
                .values()
                .filter(|i| i.children.is_empty())
                .cloned()
                .collect();
            if items.len() < 2 {
                return;
            }
            let a = items[rng.random_range(0..items.len())].clone();
            let b = items[rng.random_range(0..items.len())].clone();
            let children = if a.digest == b.digest {
                vec![a]
            } else {
                vec![a, b]
            };
            let bytes = serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": children.iter().map(|c| serde_json::json!({
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": c.digest.to_string(), "size": c.bytes.len()
                })).collect::<Vec<_>>(),
                "annotations": {"salt": salt.to_string()}
            }))
            .unwrap();
            let t = format!("i{}", rng.random_range(0..2));
            let d = put(store, r, tag(&t), bytes.clone())
                .await
                .unwrap_or_else(|e| panic!("index push to {r}:{t} failed: {e}"));
            m.tags.insert(
                t,
                Item {
                    digest: d,
                    bytes,
                    blobs: Vec::new(),
                    children,
                },
            );
            tally.indexes += 1;
        }
        // A referrer (a signature) of a tagged manifest, pushed by digest.
        65..=74 => {
            let subjects: Vec<Item> = m.tags.values().cloned().collect();
            if subjects.is_empty() {
                return;
            }
            let s = &subjects[rng.random_range(0..subjects.len())];
            upload(store, r, b"{}").await;
            let bytes = serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "artifactType": "application/vnd.example.sig",
                "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                           "digest": Digest::sha256(b"{}").to_string(), "size": 2},
                "layers": [],
                "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                            "digest": s.digest.to_string(), "size": s.bytes.len()},
                "annotations": {"salt": salt.to_string()}
            }))
            .unwrap();
            let d = Digest::sha256(&bytes);
            put(store, r, Reference::Digest(d.clone()), bytes)
                .await
                .unwrap_or_else(|e| panic!("referrer push to {r} failed: {e}"));
            m.referrers.push((s.digest.clone(), d));
            tally.referrers += 1;
        }
        // Untag.
        75..=89 => {
            let keys: Vec<String> = m.tags.keys().cloned().collect();
            if keys.is_empty() {
                return;
            }
            let t = &keys[rng.random_range(0..keys.len())];
            // An image still listed by a tagged index stays tagged (the store refuses
            // nothing here, but the model keeps indexes simple: children stay live anyway).
            store.client().untag(&actor(), &repo(r), t).await.unwrap();
            m.tags.remove(t);
        }
        // A blob replication pins (a lone upload nobody references).
        _ => {
            let data = format!("pinned {r} {salt}").into_bytes();
            upload(store, r, &data).await;
            let until = now + HOUR / 2;
            store
                .replica()
                .pin_blobs([&Digest::sha256(&data)], until)
                .unwrap();
            m.pins.push((data, until));
            tally.pins += 1;
        }
    }
}

async fn scenario(seed: u64) -> Tally {
    let clock = ManualClock::new(T0);
    let config = GcConfig {
        delete_untagged: true,
        ..GcConfig::default()
    };
    let mut e = open_at(tempfile::tempdir().unwrap(), clock.clone(), config.clone()).await;
    let mut models: Vec<TaskModel> = (0..TASKS).map(|_| TaskModel::default()).collect();
    let mut total = Tally::default();
    let mut rng = StdRng::seed_from_u64(seed);
    for phase in 0..PHASES {
        let stop = Arc::new(AtomicBool::new(false));
        let runner = {
            let (gc, stop) = (e.gc.clone(), stop.clone());
            tokio::spawn(async move {
                let mut runs = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let r = gc
                        .run(RunOptions {
                            trigger: "model".into(),
                            ..RunOptions::default()
                        })
                        .await
                        .unwrap();
                    assert_eq!(r.status, RunStatus::Completed, "{:?}", r.error);
                    runs += 1;
                    tokio::task::yield_now().await;
                }
                runs
            })
        };
        let mut tasks = Vec::new();
        for (t, mut m) in std::mem::take(&mut models).into_iter().enumerate() {
            let (store, clock) = (e.store.clone(), clock.clone());
            let task_seed = seed * 1_000 + phase * 10 + t as u64;
            tasks.push(tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(task_seed);
                let mut tally = Tally::default();
                let r = format!("model/task{t}");
                for s in 0..STEPS {
                    step(
                        &store,
                        &clock,
                        &mut rng,
                        &r,
                        &mut m,
                        &mut tally,
                        task_seed * 100 + s as u64,
                    )
                    .await;
                    check_task(
                        &store,
                        &clock,
                        &r,
                        &m,
                        &format!("seed {seed} phase {phase} task {t} step {s}"),
                    )
                    .await;
                }
                (m, tally)
            }));
        }
        for task in tasks {
            let (mut m, tally) = task.await.unwrap();
            total.pushes += tally.pushes;
            total.head_skips += tally.head_skips;
            total.blind_stored += tally.blind_stored;
            total.blind_refused += tally.blind_refused;
            total.indexes += tally.indexes;
            total.referrers += tally.referrers;
            total.pins += tally.pins;
            let uploaded = std::mem::take(&mut m.uploaded_now);
            m.old_blobs.extend(uploaded);
            m.old_blobs.sort_unstable();
            m.old_blobs.dedup();
            models.push(m);
        }
        stop.store(true, Ordering::Relaxed);
        let runs = runner.await.unwrap();
        assert!(runs > 0, "no run completed during phase {phase}");
        // Time passes: past the grace period (and now and then past the quarantine), then a
        // run over the settled state. Everything live is still served.
        clock.advance(if rng.random_bool(0.25) {
            25 * HOUR
        } else {
            2 * HOUR
        });
        let report =
            e.gc.run(RunOptions {
                trigger: "model".into(),
                ..RunOptions::default()
            })
            .await
            .unwrap();
        assert_eq!(report.status, RunStatus::Completed);
        for (t, m) in models.iter().enumerate() {
            let r = format!("model/task{t}");
            check_task(
                &e.store,
                &clock,
                &r,
                m,
                &format!("seed {seed} after phase {phase}"),
            )
            .await;
            // Pins have expired and the blobs are unreferenced: collected; a restore brings
            // the quarantined one back.
            for (data, _) in &m.pins {
                assert!(
                    !served(&e.store, &r, data).await,
                    "an expired, unreferenced pin is still served"
                );
            }
            if let Some((data, _)) = m.pins.last() {
                let d = Digest::sha256(data);
                if let Ok(restored) = e.gc.restore(&actor(), &d).await {
                    assert!(
                        restored.repos.contains(&r),
                        "restored into {:?}",
                        restored.repos
                    );
                    assert!(
                        served(&e.store, &r, data).await,
                        "a restored blob is not served"
                    );
                    total.restores += 1;
                }
            }
        }
        for m in models.iter_mut() {
            m.pins.clear();
        }
        // Crash and reopen now and then: nothing live is lost.
        if rng.random_bool(0.5) {
            let dir = e.dir;
            drop(e.gc);
            e.store.close().await;
            e = open_at(dir, clock.clone(), config.clone()).await;
            for (t, m) in models.iter().enumerate() {
                let r = format!("model/task{t}");
                check_task(
                    &e.store,
                    &clock,
                    &r,
                    m,
                    &format!("seed {seed} reopened after phase {phase}"),
                )
                .await;
            }
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pushes_and_runs_match_the_model() {
    let seeds: u64 = std::env::var("STOWAGE_GC_MODEL_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut all = Tally::default();
    for seed in 0..seeds {
        let t = scenario(seed).await;
        eprintln!("seed {seed}: {t:?}");
        all.blind_refused += t.blind_refused;
        all.blind_stored += t.blind_stored;
        all.head_skips += t.head_skips;
        all.restores += t.restores;
    }
    // The interesting paths ran: pushes that skipped blobs after HEAD, blind pushes both
    // stored and (after a sweep) refused, and restores.
    assert!(all.head_skips > 0, "{all:?}");
    assert!(all.blind_stored + all.blind_refused > 0, "{all:?}");
    assert!(all.restores > 0, "{all:?}");
}
