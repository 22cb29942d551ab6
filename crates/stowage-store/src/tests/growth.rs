//! Tombstone expiry, feed trimming, and the digest-to-tags index seen through the store.

use super::*;

fn deleted(ms: u64, origin: &str) -> TagState {
    TagState::Deleted {
        version: TagVersion {
            ms,
            origin: origin.into(),
        },
    }
}

#[tokio::test]
async fn tombstones_block_older_sets_inside_the_horizon_and_go_past_it() {
    let dir = tempfile::tempdir().unwrap();
    let clock = stowage_core::ManualClock::new(1_000_000);
    let r = repo("app");
    let (store, m1, m2) = replica_env(dir.path(), "a", &clock, &r).await;
    let gc = GcStore(store.clone());
    let system = Actor::system("feed-trim");
    tag_to(&store, &r, "t", &m1).await;
    assert!(store
        .replica_apply_tag(&actor(), &r, "t", &deleted(1_000_010, "b"))
        .await
        .unwrap());
    assert!(store
        .replica_delete_manifest(&actor(), &r, &m2, "b")
        .await
        .unwrap());
    // Inside the horizon: nothing goes, and an older replicated set is still refused.
    let none = gc.expire_tombstones(&system, 1_000_000).await.unwrap();
    assert_eq!(none, TombstoneExpiry::default());
    assert!(!store
        .replica_apply_tag(&actor(), &r, "t", &set(&m1, 1_000_005, "c"))
        .await
        .unwrap());
    assert_eq!(
        store.deleted_manifests(&r).unwrap(),
        std::slice::from_ref(&m2)
    );
    // A later local delete of another tag, made after the cutoff, keeps its tombstone.
    clock.advance(100_000);
    tag_to(&store, &r, "u", &m1).await;
    store.untag(&actor(), &r, "u").await.unwrap();
    let gone = gc.expire_tombstones(&system, 1_050_000).await.unwrap();
    assert_eq!(
        gone,
        TombstoneExpiry {
            tags: 1,
            manifests: 1
        }
    );
    assert_eq!(store.tag_state(&r, "t").unwrap(), None);
    assert!(matches!(
        store.tag_state(&r, "u").unwrap(),
        Some(TagState::Deleted { .. })
    ));
    assert!(store.deleted_manifests(&r).unwrap().is_empty());
    // Each removal is audited.
    let audit = store
        .index()
        .audit_query(&stowage_index::AuditFilter::default())
        .unwrap();
    assert_eq!(
        audit
            .iter()
            .filter(|a| a.entry.action == AuditAction::TombstoneExpire)
            .count(),
        2
    );
}

#[tokio::test]
async fn delete_by_digest_finds_tags_after_moves_and_replicated_sets() {
    let dir = tempfile::tempdir().unwrap();
    let clock = stowage_core::ManualClock::new(1_000_000);
    let r = repo("app");
    let (store, m1, m2) = replica_env(dir.path(), "a", &clock, &r).await;
    tag_to(&store, &r, "one", &m1).await;
    tag_to(&store, &r, "two", &m1).await;
    tag_to(&store, &r, "three", &m1).await;
    // "two" moves locally, "three" by a replicated set.
    tag_to(&store, &r, "two", &m2).await;
    assert!(store
        .replica_apply_tag(&actor(), &r, "three", &set(&m2, 2_000_000, "b"))
        .await
        .unwrap());
    let idx = store.index();
    assert_eq!(idx.tags_pointing_at(&r, &m1).unwrap(), ["one"]);
    let mut on_m2 = idx.tags_pointing_at(&r, &m2).unwrap();
    on_m2.sort();
    assert_eq!(on_m2, ["three", "two"]);
    store
        .delete_manifest(&actor(), &r, &Reference::Digest(m1.clone()))
        .await
        .unwrap();
    assert!(idx.tag(&r, "one").unwrap().is_none());
    assert!(idx.tags_pointing_at(&r, &m1).unwrap().is_empty());
    // A replicated delete of a tag removes its entry too.
    assert!(store
        .replica_apply_tag(&actor(), &r, "two", &deleted(3_000_000, "b"))
        .await
        .unwrap());
    assert_eq!(idx.tags_pointing_at(&r, &m2).unwrap(), ["three"]);
    // Untagged now except "three": a replicated manifest delete is refused while tagged.
    assert!(!store
        .replica_delete_manifest(&actor(), &r, &m2, "b")
        .await
        .unwrap());
}

#[tokio::test]
async fn the_feed_is_trimmed_through_the_store_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let clock = stowage_core::ManualClock::new(1_000_000);
    let r = repo("app");
    let (store, m1, _) = replica_env(dir.path(), "a", &clock, &r).await;
    tag_to(&store, &r, "t", &m1).await;
    let last = store.index().last_seq().unwrap();
    assert!(last > 3);
    let gc = GcStore(store.clone());
    let n = gc
        .trim_feed(&Actor::system("feed-trim"), 3, "test".into())
        .await
        .unwrap();
    assert_eq!(n, 3);
    let feed = store.index().feed(0, 1000).unwrap();
    assert_eq!(feed.first().map(|(s, _)| *s), Some(4));
    assert_eq!(feed.len() as u64, last - 3);
    let audit = store
        .index()
        .audit_query(&stowage_index::AuditFilter::default())
        .unwrap();
    assert!(audit
        .iter()
        .any(|a| a.entry.action == AuditAction::FeedTrim));
}

#[tokio::test]
async fn a_delete_that_replicates_late_is_not_expired_on_arrival() {
    // A delete made long ago at its origin reaches this site only now (a long partition).
    // Its tombstone's age counts from now, so an expiry pass with a horizon the delete's own
    // version is already past keeps it, and a stale set arriving later still loses.
    let dir = tempfile::tempdir().unwrap();
    let clock = stowage_core::ManualClock::new(10_000_000);
    let r = repo("app");
    let (store, m1, _) = replica_env(dir.path(), "a", &clock, &r).await;
    let gc = GcStore(store.clone());
    assert!(store
        .replica_apply_tag(&actor(), &r, "late", &deleted(1_000, "b"))
        .await
        .unwrap());
    let none = gc
        .expire_tombstones(&Actor::system("feed-trim"), 5_000_000)
        .await
        .unwrap();
    assert_eq!(none, TombstoneExpiry::default());
    assert!(!store
        .replica_apply_tag(&actor(), &r, "late", &set(&m1, 500, "c"))
        .await
        .unwrap());
    assert!(matches!(
        store.tag_state(&r, "late").unwrap(),
        Some(TagState::Deleted { .. })
    ));
    // Once it is old here too, it goes.
    clock.advance(10_000_000);
    let gone = gc
        .expire_tombstones(&Actor::system("feed-trim"), 15_000_000)
        .await
        .unwrap();
    assert_eq!(gone.tags, 1);
}
