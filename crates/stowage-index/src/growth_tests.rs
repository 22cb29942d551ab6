//! Feed trimming and the digest-to-tags index.
#![allow(clippy::unwrap_used)]
use super::*;
use stowage_core::RepoName;

fn open(dir: &Path) -> Index {
    Index::open(dir, IndexOptions::default()).unwrap()
}

fn repo(s: &str) -> RepoName {
    RepoName::parse(s).unwrap()
}

fn at(kind: EventKind, ts_ms: u64) -> Event {
    Event {
        kind,
        repo: "a".into(),
        digest: None,
        tag: None,
        ts_ms,
        actor: None,
        origin: None,
    }
}

fn trim_audit() -> AuditEntry {
    AuditEntry::new(1, "system:test", AuditAction::AuditPrune)
}

fn tag_rec(d: &Digest) -> TagRecord {
    TagRecord {
        digest: d.clone(),
        updated_ms: 1,
        origin: None,
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn trimming_removes_entries_through_the_point_and_remembers_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let idx = open(dir.path());
        for ts in 1..=10 {
            let mut b = Batch::new();
            b.event(at(EventKind::TagSet, ts * 100));
            idx.commit(b).unwrap();
        }
        assert_eq!(idx.feed_trimmed_to().unwrap(), 0);
        // Entries 1..=4 were written before 450.
        assert_eq!(idx.feed_older_than(450, 10).unwrap(), 4);
        assert_eq!(idx.feed_older_than(450, 2).unwrap(), 2);
        assert_eq!(idx.trim_feed(4, trim_audit()).unwrap(), 4);
        // Trimming as far again, or less far, changes nothing.
        assert_eq!(idx.trim_feed(3, trim_audit()).unwrap(), 0);
        assert_eq!(idx.feed_trimmed_to().unwrap(), 4);
        let feed = idx.feed(0, 100).unwrap();
        assert_eq!(feed.first().map(|(s, _)| *s), Some(5));
        assert_eq!(feed.len(), 6);
        assert_eq!(idx.feed_time(4).unwrap(), None);
        assert_eq!(idx.feed_time(5).unwrap(), Some(500));
        // The age scan starts at the trimmed point.
        assert_eq!(idx.feed_older_than(450, 10).unwrap(), 4);
        assert_eq!(idx.feed_older_than(750, 10).unwrap(), 7);
        // Never past the last entry.
        assert_eq!(idx.trim_feed(99, trim_audit()).unwrap(), 6);
        assert!(idx.feed(0, 100).unwrap().is_empty());
        assert_eq!(idx.feed_trimmed_to().unwrap(), 10);
    }
    // The trimmed point and the sequence survive a reopen; numbers are not reused.
    let idx = open(dir.path());
    assert_eq!(idx.feed_trimmed_to().unwrap(), 10);
    let mut b = Batch::new();
    b.event(at(EventKind::TagSet, 2000));
    assert_eq!(idx.commit(b).unwrap(), 11);
    // Each trim left an audit entry.
    assert_eq!(idx.audit_last_seq().unwrap(), 2);
}

#[test]
fn tags_pointing_at_follow_sets_moves_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let idx = open(dir.path());
    let (a, ab) = (repo("a"), repo("a/b"));
    let (d1, d2) = (Digest::sha256(b"1"), Digest::sha256(b"2"));
    let mut b = Batch::new();
    b.put_tag(&a, "x", &tag_rec(&d1), None);
    b.put_tag(&a, "y", &tag_rec(&d1), None);
    b.put_tag(&ab, "x", &tag_rec(&d1), None);
    idx.commit(b).unwrap();
    assert_eq!(sorted(idx.tags_pointing_at(&a, &d1).unwrap()), ["x", "y"]);
    assert_eq!(idx.tags_pointing_at(&ab, &d1).unwrap(), ["x"]);
    // Move y to d2; set x again to the same digest.
    let mut b = Batch::new();
    b.put_tag(&a, "y", &tag_rec(&d2), Some(&d1));
    b.put_tag(&a, "x", &tag_rec(&d1), Some(&d1));
    idx.commit(b).unwrap();
    assert_eq!(idx.tags_pointing_at(&a, &d1).unwrap(), ["x"]);
    assert_eq!(idx.tags_pointing_at(&a, &d2).unwrap(), ["y"]);
    let mut b = Batch::new();
    b.delete_tag(&a, "x", &d1);
    idx.commit(b).unwrap();
    assert!(idx.tags_pointing_at(&a, &d1).unwrap().is_empty());
    assert_eq!(idx.tags_pointing_at(&ab, &d1).unwrap(), ["x"]);
    assert_eq!(idx.tags_pointing_at(&a, &d2).unwrap(), ["y"]);
}

#[test]
fn tags_pointing_at_reads_only_the_tags_of_that_digest() {
    let dir = tempfile::tempdir().unwrap();
    let idx = open(dir.path());
    let a = repo("a");
    let (d1, d2) = (Digest::sha256(b"1"), Digest::sha256(b"2"));
    let mut b = Batch::new();
    b.put_tag(&a, "mine", &tag_rec(&d1), None);
    b.put_tag(&a, "other", &tag_rec(&d2), None);
    idx.commit(b).unwrap();
    // Spoil the other tag's record: a lookup that decodes every tag of the repository
    // fails on it; one that reads only the digest's own tags does not see it.
    idx.db
        .put_cf(
            &idx.cf(cf::TAGS).unwrap(),
            keys::repo_tag(&a, "other"),
            b"not json",
        )
        .unwrap();
    assert_eq!(idx.tags_pointing_at(&a, &d1).unwrap(), ["mine"]);
}

#[test]
fn format_3_index_is_migrated_with_the_digest_to_tags_index() {
    let dir = tempfile::tempdir().unwrap();
    let a = repo("a/b");
    let (d1, d2) = (Digest::sha256(b"1"), Digest::sha256(b"2"));
    {
        let idx = open(dir.path());
        let mut b = Batch::new();
        b.put_tag(&a, "one", &tag_rec(&d1), None);
        b.put_tag(&a, "two", &tag_rec(&d1), None);
        b.put_tag(&a, "three", &tag_rec(&d2), None);
        idx.commit(b).unwrap();
        // Make it look like a format 3 index: no digest-to-tags entries, version "3".
        let cf = idx.cf(cf::TAG_DIGESTS).unwrap();
        let keys: Vec<Vec<u8>> = idx
            .db
            .iterator_cf(&cf, IteratorMode::Start)
            .map(|i| i.unwrap().0.to_vec())
            .collect();
        assert_eq!(keys.len(), 3);
        for k in keys {
            idx.db.delete_cf(&cf, k).unwrap();
        }
        idx.db
            .put_cf(&idx.cf(cf::META).unwrap(), META_FORMAT, b"3")
            .unwrap();
        assert!(idx.tags_pointing_at(&a, &d1).unwrap().is_empty());
    }
    let idx = open(dir.path());
    assert_eq!(
        sorted(idx.tags_pointing_at(&a, &d1).unwrap()),
        ["one", "two"]
    );
    assert_eq!(idx.tags_pointing_at(&a, &d2).unwrap(), ["three"]);
    let v = idx
        .db
        .get_cf(&idx.cf(cf::META).unwrap(), META_FORMAT)
        .unwrap()
        .unwrap();
    assert_eq!(v, FORMAT_VERSION.to_string().as_bytes());
}
