#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use stowage_core::{Clock as _, Digest, RepoName};
use tokio::sync::watch;

use super::*;
use crate::tests::{actor, body, read, repo};
use crate::{StoreConfig, StoreError};

async fn open(dir: &std::path::Path) -> Store {
    Store::open(StoreConfig::new(dir)).await.unwrap()
}

async fn push(store: &Store, r: &RepoName, data: &[u8]) -> Digest {
    let d = Digest::sha256(data);
    let id = store.start_upload(&actor(), r).await.unwrap().id;
    store
        .finish_upload(&actor(), r, &id, &d, Some(body(data)))
        .await
        .unwrap();
    d
}

/// Flips one byte of a stored blob, keeping its size.
fn damage(dir: &std::path::Path, d: &Digest) {
    let file = dir.join("cas").join(stowage_cas::blob_path(d).as_ref());
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&file, &bytes).unwrap();
}

fn cfg(page: usize) -> ScrubConfig {
    ScrubConfig {
        interval: None,
        bytes_per_second: 0,
        page,
    }
}

fn no_stop() -> watch::Receiver<bool> {
    watch::channel(false).1
}

/// A peer stand-in: records what it was asked for; with `good` bytes it swaps them in through
/// the store's own repair path (clear, then an ordinary upload), else it says it has none. With
/// `stop`, the first request also stops the run.
#[derive(Debug)]
struct FakePeer {
    store: Store,
    good: Option<Vec<u8>>,
    asked: Mutex<Vec<(Digest, Vec<RepoName>)>>,
    stop: Option<watch::Sender<bool>>,
}

impl Repairer for FakePeer {
    fn repair<'a>(&'a self, digest: &'a Digest, repos: &'a [RepoName]) -> BoxFuture<'a, Fate> {
        Box::pin(async move {
            self.asked
                .lock()
                .unwrap()
                .push((digest.clone(), repos.to_vec()));
            if let Some(s) = &self.stop {
                s.send_replace(true);
            }
            let Some(good) = &self.good else {
                return Fate::Unrepaired {
                    reason: "the fake peer has no copy".into(),
                };
            };
            self.store.clear_corrupt(digest).await.unwrap();
            push(&self.store, &repos[0], good).await;
            Fate::Repaired {
                peer: "fake".into(),
            }
        })
    }
}

fn fake(store: &Store, good: Option<Vec<u8>>, stop: Option<watch::Sender<bool>>) -> Arc<FakePeer> {
    Arc::new(FakePeer {
        store: store.clone(),
        good,
        asked: Mutex::new(Vec::new()),
        stop,
    })
}

/// A blob damaged on disk is found by the walk, quarantined (no longer served, while the
/// intact blobs are), handed to the repairer with the repositories that link it, and listed
/// in the stored report as unrepaired when no peer has it.
#[tokio::test]
async fn corrupt_blob_is_found_quarantined_and_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let r = repo("scrub/a");
    let blobs: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 20_000 + usize::from(i)]).collect();
    let mut digests = Vec::new();
    for b in &blobs {
        digests.push(push(&store, &r, b).await);
    }
    damage(dir.path(), &digests[2]);
    let peer = fake(&store, None, None);
    let scrub = Scrubber::new(
        store.clone(),
        cfg(3),
        Some(peer.clone() as Arc<dyn Repairer>),
    );
    let rep = scrub
        .run_now(&actor(), ScrubTrigger::Operator, no_stop())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rep.state, ScrubState::Completed);
    assert_eq!(rep.blobs, 4);
    assert_eq!(rep.bytes, blobs.iter().map(|b| b.len() as u64).sum::<u64>());
    assert_eq!((rep.corrupt, rep.repaired, rep.unrepaired), (1, 0, 1));
    assert_eq!(rep.blobs_corrupt[0].digest, digests[2]);
    assert!(!rep.blobs_corrupt[0].earlier);
    assert!(matches!(rep.blobs_corrupt[0].fate, Fate::Unrepaired { .. }));
    assert_eq!(
        *peer.asked.lock().unwrap(),
        vec![(digests[2].clone(), vec![r.clone()])]
    );
    // Not served; the others are.
    let err = read(&store, &r, &digests[2]).await.unwrap_err();
    assert!(matches!(err, StoreError::BlobUnknown(_)), "{err}");
    for i in [0, 1, 3] {
        assert_eq!(read(&store, &r, &digests[i]).await.unwrap(), blobs[i]);
    }
    // Audited: the quarantine as the scrub's, the run as the operator's who asked for it.
    let audit = |action| {
        store
            .index()
            .audit_query(&stowage_index::AuditFilter {
                action: Some(action),
                limit: 100,
                ..Default::default()
            })
            .unwrap()
    };
    let q = audit(stowage_index::AuditAction::BlobCorrupt);
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].entry.actor, "system:scrub");
    assert_eq!(
        q[0].entry.target.as_deref(),
        Some(digests[2].to_string().as_str())
    );
    let runs = audit(stowage_index::AuditAction::Admin);
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].entry.actor, actor().to_string());
    assert_eq!(runs[0].entry.target.as_deref(), Some("scrub run 1"));
    assert_eq!(
        runs[0].entry.outcome,
        stowage_index::AuditOutcome::Failed,
        "one unrepaired"
    );
    // The report is kept, and the next run offers the quarantined blob for repair again.
    assert_eq!(scrub.reports(10).unwrap(), vec![rep.clone()]);
    let again = scrub
        .run_now(&actor(), ScrubTrigger::Operator, no_stop())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.run_id, rep.run_id + 1);
    assert_eq!((again.blobs, again.corrupt, again.unrepaired), (3, 1, 1));
    assert!(again.blobs_corrupt[0].earlier);
}

/// With a peer holding good bytes, the corrupt blob is swapped back in and served whole.
#[tokio::test]
async fn corrupt_blob_is_repaired_through_the_repairer() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let r = repo("scrub/b");
    let data = b"layer to be repaired ".repeat(3000);
    let d = push(&store, &r, &data).await;
    damage(dir.path(), &d);
    let peer = fake(&store, Some(data.clone()), None);
    let scrub = Scrubber::new(store.clone(), cfg(16), Some(peer as Arc<dyn Repairer>));
    let rep = scrub
        .run_now(&actor(), ScrubTrigger::Operator, no_stop())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((rep.corrupt, rep.repaired, rep.unrepaired), (1, 1, 0));
    assert_eq!(
        rep.blobs_corrupt[0].fate,
        Fate::Repaired {
            peer: "fake".into()
        }
    );
    assert_eq!(read(&store, &r, &d).await.unwrap(), data);
}

/// A run stopped part way keeps its cursor in the index; after the store is reopened the next
/// run resumes after the last page written instead of reading everything again.
#[tokio::test]
async fn an_interrupted_run_resumes_from_its_cursor_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let r = repo("scrub/c");
    let mut pushed = Vec::new();
    {
        let store = open(dir.path()).await;
        for i in 0..8u8 {
            let data = vec![i.wrapping_mul(31); 4096];
            pushed.push((push(&store, &r, &data).await, data));
        }
    }
    // The walk goes in digest order: damage the seventh, whose repair request stops the run.
    pushed.sort_by_key(|p| p.0.to_string());
    let seventh = pushed[6].0.clone();
    damage(dir.path(), &seventh);
    let first_id;
    {
        let store = open(dir.path()).await;
        let (tx, rx) = watch::channel(false);
        let peer = fake(&store, None, Some(tx));
        let scrub = Scrubber::new(store.clone(), cfg(2), Some(peer as Arc<dyn Repairer>));
        let rep = scrub
            .run_now(&actor(), ScrubTrigger::Operator, rx)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rep.state, ScrubState::Running, "interrupted, not finished");
        assert!(scrub.reports(10).unwrap().is_empty(), "no finished run yet");
        first_id = rep.run_id;
        assert_eq!(ScrubCounters::get(&scrub.counters().blobs), 7);
    }
    let store = open(dir.path()).await;
    let peer = fake(&store, None, None);
    let scrub = Scrubber::new(
        store.clone(),
        cfg(2),
        Some(peer.clone() as Arc<dyn Repairer>),
    );
    let rep = scrub
        .run_now(&actor(), ScrubTrigger::Operator, no_stop())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rep.run_id, first_id, "the same run, resumed");
    assert_eq!(rep.resumed, 1);
    assert_eq!(rep.state, ScrubState::Completed);
    // Only the last page was read again: the seventh is quarantined now, the eighth is read.
    assert_eq!(ScrubCounters::get(&scrub.counters().blobs), 1);
    assert_eq!(rep.blobs, 7, "six from before the restart and the eighth");
    assert_eq!((rep.corrupt, rep.unrepaired), (1, 1));
    assert_eq!(rep.blobs_corrupt[0].digest, seventh);
    assert_eq!(peer.asked.lock().unwrap().len(), 1);
    assert_eq!(scrub.reports(10).unwrap(), vec![rep]);
    // The next run starts from the first blob again.
    let next = scrub
        .run_now(&actor(), ScrubTrigger::Operator, no_stop())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (next.run_id, next.resumed, next.blobs),
        (first_id + 1, 0, 7)
    );
}

/// The schedule: the first run comes one interval after the schedule first started on the site
/// (kept in the index, so a restart does not postpone it), later ones an interval after the
/// last run ended, and an interrupted run at once.
#[tokio::test]
async fn the_schedule_counts_from_its_first_start_then_from_the_last_run() {
    let dir = tempfile::tempdir().unwrap();
    let clock = stowage_core::ManualClock::new(1_000_000);
    let store = Store::open_with_clock(StoreConfig::new(dir.path()), Arc::new(clock.clone()))
        .await
        .unwrap();
    push(&store, &repo("scrub/d"), b"scheduled").await;
    let hour = Duration::from_secs(3600);
    let scrub = Scrubber::new(store.clone(), cfg(16), None);
    assert_eq!(scrub.due_in(hour).await.unwrap(), hour, "not at once");
    clock.advance(40 * 60 * 1000);
    let restarted = Scrubber::new(store.clone(), cfg(16), None);
    assert_eq!(
        restarted.due_in(hour).await.unwrap(),
        Duration::from_secs(20 * 60),
        "a restart does not postpone it"
    );
    clock.advance(20 * 60 * 1000);
    assert_eq!(restarted.due_in(hour).await.unwrap(), Duration::ZERO);
    restarted
        .run_now(&actor(), ScrubTrigger::Schedule, no_stop())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        restarted.due_in(hour).await.unwrap(),
        hour,
        "from the run's end"
    );
    // An interrupted run (its cursor stored) is due at once.
    let mut batch = stowage_index::Batch::new();
    let cursor = report::Cursor {
        report: ScrubReport::new(9, ScrubTrigger::Schedule, clock.now_millis()),
        after: None,
    };
    batch.put_meta(
        report::CURSOR_KEY,
        report::encode("cursor", &cursor).unwrap(),
    );
    store.commit_quiet(batch).await.unwrap();
    assert_eq!(restarted.due_in(hour).await.unwrap(), Duration::ZERO);
}
