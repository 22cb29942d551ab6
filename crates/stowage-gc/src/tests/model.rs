//! Model-based test: random interleavings of push, mount, tag, untag, manifest delete, GC (dry
//! and real), time passing (grace and quarantine expiry) and reopening the store, checked
//! against a model of what must be served.
//!
//! The model tracks, per repository, the manifests (by the set of blobs they hold), the tags,
//! and the blob links; and when each was last touched. Invariants checked after every step:
//! * every blob and manifest reachable from a root (a tag; anything younger than the grace
//!   period) is served, byte-identical;
//! * right after a completed real run, nothing unreachable and older than the grace period is
//!   served;
//! * a dry run changes nothing, and predicts the next real run's figures when nothing happens
//!   in between.

use std::collections::{BTreeMap, BTreeSet};

use rand::rngs::StdRng;

use crate::tests::actor;
use rand::{Rng, SeedableRng};
use stowage_core::{Digest, ManualClock, Reference};

use super::{open_at, repo, Env, HOUR, T0};
use crate::GcConfig;

const REPOS: [&str; 3] = ["r0", "team/r1", "r2"];
const TAGS: [&str; 3] = ["a", "b", "c"];
const BLOBS: usize = 8;

fn blob_data(i: usize) -> Vec<u8> {
    format!("model blob {i} ").repeat(i + 1).into_bytes()
}

#[derive(Clone, Debug, Default)]
struct RepoModel {
    /// Manifest digest -> (blob indexes, created at).
    manifests: BTreeMap<Digest, (BTreeSet<usize>, u64)>,
    tags: BTreeMap<String, Digest>,
    /// Blob index -> linked at.
    links: BTreeMap<usize, u64>,
}

#[derive(Default)]
struct Model {
    repos: BTreeMap<String, RepoModel>,
    /// Blob index -> when a client last pushed or mounted it (the store's seen window keeps
    /// such a blob from collection for one to two windows).
    seen: BTreeMap<usize, u64>,
}

/// The store's default seen window.
const SEEN_WINDOW: u64 = 10 * 60 * 1000;

fn manifest_bytes(blobs: &BTreeSet<usize>) -> Vec<u8> {
    let layers: Vec<serde_json::Value> = blobs
        .iter()
        .map(|i| {
            let data = blob_data(*i);
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": Digest::sha256(&data).to_string(), "size": data.len()
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                   "digest": Digest::sha256(b"{}").to_string(), "size": 2},
        "layers": layers
    }))
    .unwrap_or_default()
}

/// Blob index used for the empty config.
const CONFIG: usize = usize::MAX;

fn data_of(i: usize) -> Vec<u8> {
    if i == CONFIG {
        b"{}".to_vec()
    } else {
        blob_data(i)
    }
}

async fn push_blob(e: &Env, m: &mut Model, r: &str, i: usize) {
    let data = data_of(i);
    let d = Digest::sha256(&data);
    e.store
        .client()
        .put_blob(&actor(), &repo(r), &d, super::body(&data))
        .await
        .unwrap();
    let now = e.clock.now_ms();
    m.seen.insert(i, now);
    let links = &mut m.repos.entry(r.to_string()).or_default().links;
    // A re-upload refreshes a link only once it is a minute old (the store's rule).
    match links.get(&i) {
        Some(t) if now.saturating_sub(*t) < 60_000 => {}
        _ => {
            links.insert(i, now);
        }
    }
}

trait Now {
    fn now_ms(&self) -> u64;
}
impl Now for ManualClock {
    fn now_ms(&self) -> u64 {
        stowage_core::Clock::now_millis(self)
    }
}

async fn check(e: &Env, m: &Model, grace_ms: u64) {
    let now = e.clock.now_ms();
    let cutoff = now.saturating_sub(grace_ms);
    for (r, rm) in &m.repos {
        // Reachable: tagged manifests, and manifests younger than the grace period.
        let mut live_blobs: BTreeSet<usize> = BTreeSet::new();
        for (d, (blobs, created)) in &rm.manifests {
            let tagged = rm.tags.values().any(|t| t == d);
            if tagged || *created >= cutoff {
                let got = e
                    .store
                    .get_manifest(&repo(r), &Reference::Digest(d.clone()))
                    .unwrap_or_else(|err| panic!("live manifest {d} in {r} lost: {err}"));
                assert_eq!(got.bytes, manifest_bytes(blobs));
                live_blobs.extend(blobs.iter().copied());
                live_blobs.insert(CONFIG);
            }
        }
        for (i, linked) in &rm.links {
            let d = Digest::sha256(&data_of(*i));
            if live_blobs.contains(i) || *linked >= cutoff {
                let got = e
                    .read(r, &d)
                    .await
                    .unwrap_or_else(|err| panic!("live blob {i} in {r} lost: {err}"));
                assert_eq!(got, data_of(*i), "blob {i} in {r} not byte-identical");
            }
        }
        for (t, d) in &rm.tags {
            let got = e
                .store
                .get_manifest(&repo(r), &super::tag(t))
                .unwrap_or_else(|err| panic!("tag {r}:{t} lost: {err}"));
            assert_eq!(&got.digest, d);
        }
    }
}

/// What a run removed from the model: `(repo, manifest)` and `(repo, blob index)`.
#[derive(Default)]
struct Removed {
    manifests: Vec<(String, Digest)>,
    blobs: Vec<(String, usize)>,
}

/// After a real run the model forgets what the run removed, and returns it. A blob seen
/// within one window is kept; one seen more than two windows ago is not; in between the store
/// may do either, and the model follows what it did.
fn collect(e: &Env, m: &mut Model, now: u64, grace_ms: u64) -> Removed {
    let cutoff = now.saturating_sub(grace_ms);
    let mut removed = Removed::default();
    let seen = m.seen.clone();
    for (r, rm) in m.repos.iter_mut() {
        let before_m: Vec<Digest> = rm.manifests.keys().cloned().collect();
        let before_b: Vec<usize> = rm.links.keys().copied().collect();
        let tags: BTreeSet<Digest> = rm.tags.values().cloned().collect();
        rm.manifests
            .retain(|d, (_, created)| tags.contains(d) || *created >= cutoff);
        let mut live: BTreeSet<usize> = rm
            .manifests
            .values()
            .flat_map(|(b, _)| b.iter().copied())
            .collect();
        if !rm.manifests.is_empty() {
            live.insert(CONFIG);
        }
        rm.links.retain(|i, linked| {
            if live.contains(i) || *linked >= cutoff {
                return true;
            }
            match seen.get(i) {
                Some(at) if now < at + SEEN_WINDOW => true,
                Some(at) if now < at + 2 * SEEN_WINDOW => {
                    e.served(r, &Digest::sha256(&data_of(*i)))
                }
                _ => false,
            }
        });
        for d in before_m {
            if !rm.manifests.contains_key(&d) {
                removed.manifests.push((r.clone(), d));
            }
        }
        for i in before_b {
            if !rm.links.contains_key(&i) {
                removed.blobs.push((r.clone(), i));
            }
        }
    }
    removed
}

fn assert_gone(e: &Env, removed: &Removed, seed: u64, step: usize) {
    for (r, d) in &removed.manifests {
        assert!(
            !e.has_manifest(r, d),
            "seed {seed} step {step}: unreachable old manifest {d} in {r} still served"
        );
    }
    for (r, i) in &removed.blobs {
        let d = Digest::sha256(&data_of(*i));
        assert!(
            !e.served(r, &d),
            "seed {seed} step {step}: unreachable old blob {i} in {r} still served"
        );
    }
}

async fn scenario(seed: u64, steps: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let grace_ms = HOUR;
    let config = GcConfig {
        delete_untagged: true,
        ..GcConfig::default()
    };
    let clock = ManualClock::new(T0);
    let mut e = open_at(tempfile::tempdir().unwrap(), clock.clone(), config.clone()).await;
    let mut m = Model::default();
    for step in 0..steps {
        let r = REPOS[rng.random_range(0..REPOS.len())];
        let op = rng.random_range(0..100);
        let mut removed = Removed::default();
        match op {
            // Push an image: its blobs, then the manifest under a tag.
            0..=29 => {
                let mut blobs = BTreeSet::new();
                for _ in 0..rng.random_range(1..4) {
                    blobs.insert(rng.random_range(0..BLOBS));
                }
                for i in blobs.iter().copied().chain([CONFIG]) {
                    push_blob(&e, &mut m, r, i).await;
                }
                let t = TAGS[rng.random_range(0..TAGS.len())];
                let bytes = manifest_bytes(&blobs);
                let out = e
                    .store
                    .client()
                    .put_manifest(&actor(), &repo(r), &super::tag(t), None, bytes)
                    .await
                    .unwrap();
                let now = e.clock.now_ms();
                let rm = m.repos.entry(r.to_string()).or_default();
                rm.manifests
                    .entry(out.digest.clone())
                    .or_insert((blobs, now));
                rm.tags.insert(t.to_string(), out.digest);
            }
            // A lone blob upload (never referenced).
            30..=39 => {
                let i = rng.random_range(0..BLOBS);
                push_blob(&e, &mut m, r, i).await;
            }
            // Mount a blob from another repository that serves it.
            40..=47 => {
                let from = REPOS[rng.random_range(0..REPOS.len())];
                let i = rng.random_range(0..BLOBS);
                let d = Digest::sha256(&data_of(i));
                let served = e.served(from, &d);
                let mounted = e
                    .store
                    .client()
                    .mount_blob(&actor(), &repo(r), &repo(from), &d)
                    .await
                    .unwrap();
                assert_eq!(mounted.is_some(), served);
                if mounted.is_some() {
                    let now = e.clock.now_ms();
                    m.seen.insert(i, now);
                    let links = &mut m.repos.entry(r.to_string()).or_default().links;
                    match links.get(&i) {
                        Some(t) if now.saturating_sub(*t) < 60_000 => {}
                        _ => {
                            links.insert(i, now);
                        }
                    }
                }
            }
            // Tag an existing manifest.
            48..=55 => {
                let Some(rm) = m.repos.get_mut(r) else {
                    continue;
                };
                let Some((d, (blobs, _))) = rm
                    .manifests
                    .iter()
                    .nth(rng.random_range(0..rm.manifests.len().max(1)))
                    .map(|(d, v)| (d.clone(), v.clone()))
                else {
                    continue;
                };
                let t = TAGS[rng.random_range(0..TAGS.len())];
                e.store
                    .client()
                    .put_manifest(
                        &actor(),
                        &repo(r),
                        &super::tag(t),
                        None,
                        manifest_bytes(&blobs),
                    )
                    .await
                    .unwrap();
                rm.tags.insert(t.to_string(), d);
            }
            // Untag.
            56..=67 => {
                let Some(rm) = m.repos.get_mut(r) else {
                    continue;
                };
                let t = TAGS[rng.random_range(0..TAGS.len())];
                if rm.tags.remove(t).is_some() {
                    e.store.client().untag(&actor(), &repo(r), t).await.unwrap();
                }
            }
            // Delete a manifest by digest (with its tags).
            68..=73 => {
                let Some(rm) = m.repos.get_mut(r) else {
                    continue;
                };
                let Some(d) = rm
                    .manifests
                    .keys()
                    .nth(rng.random_range(0..rm.manifests.len().max(1)))
                    .cloned()
                else {
                    continue;
                };
                e.store
                    .client()
                    .delete_manifest(&actor(), &repo(r), &Reference::Digest(d.clone()))
                    .await
                    .unwrap();
                rm.manifests.remove(&d);
                rm.tags.retain(|_, t| t != &d);
            }
            // Dry run: changes nothing, and predicts a real run at the same state.
            74..=79 => {
                let dry = e.gc(true).await;
                check(&e, &m, grace_ms).await;
                let real = e.gc(false).await;
                assert_eq!(dry.totals, real.totals, "seed {seed} step {step}");
                assert_eq!(dry.repos, real.repos, "seed {seed} step {step}");
                removed = collect(&e, &mut m, e.clock.now_ms(), grace_ms);
            }
            // Real run.
            80..=87 => {
                e.gc(false).await;
                removed = collect(&e, &mut m, e.clock.now_ms(), grace_ms);
            }
            // Time passes: a little, past the grace period, or past the quarantine.
            88..=95 => {
                let by = [30_000, 2 * HOUR, 25 * HOUR][rng.random_range(0..3)];
                e.age(by);
            }
            // Reopen.
            _ => {
                let dir = e.dir;
                drop(e.gc);
                e.store.close().await;
                e = open_at(dir, clock.clone(), config.clone()).await;
            }
        }
        check(&e, &m, grace_ms).await;
        assert_gone(&e, &removed, seed, step);
    }
}

#[tokio::test]
async fn random_interleavings_match_the_model() {
    let seeds: u64 = std::env::var("STOWAGE_GC_MODEL_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    for seed in 0..seeds {
        scenario(seed, 120).await;
    }
}
