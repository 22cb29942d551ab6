//! How the sweep batches its store calls.

use super::*;
use crate::Phase;

/// On a registry no client writes to, the sweep and the purge grow their batches: 300
/// unreferenced blobs go in a handful of store calls (each one index commit), not one call
/// per four blobs, and every one of them is gone from the index and the blob store.
#[tokio::test]
async fn an_idle_sweep_and_purge_grow_their_batches() {
    let e = open_at(
        tempfile::tempdir().unwrap(),
        ManualClock::new(T0),
        GcConfig {
            quarantine: Duration::ZERO,
            ..GcConfig::default()
        },
    )
    .await;
    let mut blobs = Vec::new();
    for i in 0..300 {
        blobs.push(e.blob("a", format!("unreferenced {i}").as_bytes()).await.0);
    }
    e.age(2 * HOUR);
    let r = e.gc(false).await;
    assert_eq!(r.totals.blobs_quarantined, 300);
    assert_eq!(r.totals.blobs_purged, 300);
    let batches = |phase: Phase| {
        r.phases
            .iter()
            .find(|p| p.phase == phase)
            .map(|p| p.batches)
            .unwrap()
    };
    // Doubling from 4 up to the largest batch covers 300 candidates in 7 calls.
    assert!(batches(Phase::SweepBlobs) <= 10, "{:?}", r.phases);
    assert!(batches(Phase::Purge) <= 10, "{:?}", r.phases);
    for d in &blobs {
        assert!(
            e.store.index().blob(d).unwrap().is_none(),
            "{d} still indexed"
        );
        assert!(
            e.store.cas().size(d).await.unwrap().is_none(),
            "{d} still stored"
        );
    }
}
