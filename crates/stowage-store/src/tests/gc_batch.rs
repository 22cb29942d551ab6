//! Garbage collection's batched removals against a blob store that counts its requests.

use super::*;
use crate::gc::LinkCandidate;

/// A purge batch removes its blobs' bytes with one delete request (object stores serve a
/// batch with one request per thousand objects; the file system unlinks them in parallel),
/// not one request per blob, and every blob is gone from the store and the index afterwards.
#[tokio::test]
async fn a_purge_batch_deletes_its_bytes_in_one_request() {
    let dir = tempfile::tempdir().unwrap();
    let (fs, faults) =
        stowage_cas::faulty::FaultyStore::new(Arc::new(object_store::memory::InMemory::new()));
    let mut cfg = StoreConfig::new(dir.path());
    cfg.backend = Some(Backend::Custom(fs));
    let clock = stowage_core::ManualClock::new(1_000_000_000);
    let store = Store::open_with_clock(cfg, Arc::new(clock.clone()))
        .await
        .unwrap();
    let r = repo("app");
    let mut items = Vec::new();
    for i in 0..32u32 {
        let data = format!("purged blob {i}").into_bytes();
        let d = Digest::sha256(&data);
        store.put_blob(&actor(), &r, &d, body(&data)).await.unwrap();
        let linked_ms = store.index().link_time(&r, &d).unwrap().unwrap();
        let links = vec![LinkCandidate {
            repo: r.clone(),
            linked_ms,
        }];
        items.push((d, links, None));
    }
    // Past the window in which a blob a client just wrote is kept for its manifest.
    clock.advance(24 * 3_600_000);
    for item in &mut items {
        item.2 = Some(store.now_ms());
    }
    let swept = store.gc_sweep_blobs(&actor(), &items, 1).await.unwrap();
    let purge: Vec<(Digest, u64)> = items
        .iter()
        .zip(&swept)
        .map(|((d, _, _), s)| (d.clone(), s.quarantined_at.unwrap()))
        .collect();

    let before = faults.delete_requests();
    let purged = store.gc_purge_blobs(&actor(), &purge).await.unwrap();
    assert!(purged.iter().all(Option::is_some), "{purged:?}");
    assert_eq!(faults.delete_requests() - before, 1);
    for (d, _) in &purge {
        assert!(
            store.index().blob(d).unwrap().is_none(),
            "{d} still indexed"
        );
        assert!(
            store.cas().size(d).await.unwrap().is_none(),
            "{d} still stored"
        );
    }
}
