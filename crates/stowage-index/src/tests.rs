#![allow(clippy::unwrap_used)]
use super::*;
use stowage_core::RepoName;

fn open(dir: &Path) -> Index {
    Index::open(dir, IndexOptions::default()).unwrap()
}

fn repo(s: &str) -> RepoName {
    RepoName::parse(s).unwrap()
}

fn ev(kind: EventKind, r: &str) -> Event {
    Event {
        kind,
        repo: r.into(),
        digest: None,
        tag: None,
        ts_ms: 1,
        actor: None,
        origin: None,
    }
}

#[test]
fn batch_and_feed_commit_together_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let d = Digest::sha256(b"x");
    {
        let idx = open(dir.path());
        let mut b = Batch::new();
        b.put_blob(
            &d,
            &BlobRecord {
                size: 1,
                state: BlobState::Present,
                created_ms: 5,
                updated_ms: 5,
                crc32c: Some(7),
                quarantine: None,
            },
        );
        b.link_blob(&repo("a/b"), &d, 5);
        b.put_repo(&repo("a/b"), &RepoRecord { created_ms: 5 });
        b.event(ev(EventKind::BlobPut, "a/b"));
        b.event(ev(EventKind::BlobLinked, "a/b"));
        assert_eq!(idx.commit(b).unwrap(), 2);
        let mut b = Batch::new();
        b.event(ev(EventKind::TagSet, "a/b"));
        assert_eq!(idx.commit(b).unwrap(), 3);
    }
    let idx = open(dir.path());
    assert_eq!(idx.last_seq().unwrap(), 3);
    assert_eq!(idx.blob(&d).unwrap().unwrap().size, 1);
    assert!(idx.repo_has_blob(&repo("a/b"), &d).unwrap());
    assert!(!idx.repo_has_blob(&repo("a"), &d).unwrap());
    let feed = idx.feed(2, 10).unwrap();
    assert_eq!(feed.len(), 2);
    assert_eq!(feed[0].0, 2);
    assert_eq!(feed[1].1.kind, EventKind::TagSet);
    // New commits continue the sequence after reopen.
    let mut b = Batch::new();
    b.event(ev(EventKind::TagDeleted, "a/b"));
    assert_eq!(idx.commit(b).unwrap(), 4);
}

#[test]
fn tags_page_in_byte_order_without_crossing_repos() {
    let dir = tempfile::tempdir().unwrap();
    let idx = open(dir.path());
    let d = Digest::sha256(b"m");
    let mut b = Batch::new();
    for (r, t) in [
        ("a", "v2"),
        ("a", "V1"),
        ("a", "latest"),
        ("a/b", "x"),
        ("a0", "y"),
    ] {
        b.put_tag(
            &repo(r),
            t,
            &TagRecord {
                digest: d.clone(),
                updated_ms: 1,
                origin: None,
            },
            None,
        );
    }
    idx.commit(b).unwrap();
    let names = |v: Vec<(String, TagRecord)>| v.into_iter().map(|(t, _)| t).collect::<Vec<_>>();
    assert_eq!(
        names(idx.tags(&repo("a"), None, 100).unwrap()),
        ["V1", "latest", "v2"]
    );
    assert_eq!(
        names(idx.tags(&repo("a"), None, 2).unwrap()),
        ["V1", "latest"]
    );
    assert_eq!(
        names(idx.tags(&repo("a"), Some("latest"), 2).unwrap()),
        ["v2"]
    );
    assert!(idx.tags(&repo("a"), Some("v2"), 2).unwrap().is_empty());
    assert_eq!(names(idx.tags(&repo("a/b"), None, 9).unwrap()), ["x"]);
    assert_eq!(idx.tags_pointing_at(&repo("a"), &d).unwrap().len(), 3);
}

#[test]
fn catalog_pages() {
    let dir = tempfile::tempdir().unwrap();
    let idx = open(dir.path());
    let mut b = Batch::new();
    for r in ["b", "a/x", "a", "c"] {
        b.put_repo(&repo(r), &RepoRecord { created_ms: 0 });
    }
    idx.commit(b).unwrap();
    let s = |v: Vec<RepoName>| v.into_iter().map(|r| r.to_string()).collect::<Vec<_>>();
    assert_eq!(s(idx.repos(None, 10).unwrap()), ["a", "a/x", "b", "c"]);
    assert_eq!(s(idx.repos(Some("a"), 2).unwrap()), ["a/x", "b"]);
    assert_eq!(s(idx.repos(Some("c"), 2).unwrap()), Vec::<String>::new());
}

#[test]
fn references_and_referrers_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let idx = open(dir.path());
    let layer = Digest::sha256(b"layer");
    let m1 = Digest::sha256(b"m1");
    let m2 = Digest::sha256(b"m2");
    let mut b = Batch::new();
    b.put_ref(&layer, &repo("a"), &m1, RefKind::Blob);
    b.put_ref(&layer, &repo("b"), &m2, RefKind::Blob);
    b.put_ref(&m1, &repo("a"), &m2, RefKind::Child);
    let desc = Descriptor {
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        digest: m2.clone(),
        size: 10,
        artifact_type: Some("application/x-sig".into()),
        annotations: None,
        urls: None,
        platform: None,
    };
    b.put_referrer(&repo("a"), &m1, &m2, &desc);
    idx.commit(b).unwrap();
    let refs = idx.referencing(&layer).unwrap();
    assert_eq!(refs.len(), 2);
    assert!(refs.contains(&(repo("a"), m1.clone(), RefKind::Blob)));
    assert_eq!(
        idx.referencing(&m1).unwrap(),
        vec![(repo("a"), m2.clone(), RefKind::Child)]
    );
    assert_eq!(idx.referrers(&repo("a"), &m1).unwrap(), vec![desc]);
    assert!(idx.referrers(&repo("b"), &m1).unwrap().is_empty());
    let mut b = Batch::new();
    b.delete_ref(&layer, &repo("a"), &m1);
    b.delete_referrer(&repo("a"), &m1, &m2);
    idx.commit(b).unwrap();
    assert_eq!(idx.referencing(&layer).unwrap().len(), 1);
    assert!(idx.referrers(&repo("a"), &m1).unwrap().is_empty());
}

#[test]
fn wrong_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let idx = open(dir.path());
        let meta = idx.cf(cf::META).unwrap();
        idx.db.put_cf(&meta, META_FORMAT, b"999").unwrap();
    }
    let err = Index::open(dir.path(), IndexOptions::default()).unwrap_err();
    assert!(matches!(err, IndexError::FormatVersion { .. }), "{err}");
}

#[test]
fn concurrent_commits_share_groups_and_keep_the_feed_ordered() {
    let dir = tempfile::tempdir().unwrap();
    let idx = std::sync::Arc::new(open(dir.path()));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let idx = idx.clone();
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                for i in 0..50 {
                    let mut b = Batch::new();
                    let mut e = ev(EventKind::TagSet, "r");
                    e.tag = Some(format!("t{t}-{i}"));
                    b.event(e);
                    b.put_repo(&repo(&format!("r{t}")), &RepoRecord { created_ms: i });
                    mine.push((idx.commit(b).unwrap(), format!("t{t}-{i}")));
                }
                mine
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in threads {
        all.extend(t.join().unwrap());
    }
    // Every commit got its own sequence number, and that entry is its own event.
    let feed = idx.feed(1, 1000).unwrap();
    assert_eq!(feed.len(), 400);
    assert!(feed
        .iter()
        .enumerate()
        .all(|(i, (s, _))| *s == i as u64 + 1));
    for (seq, tag) in &all {
        assert_eq!(
            feed[(*seq - 1) as usize].1.tag.as_deref(),
            Some(tag.as_str())
        );
    }
    assert_eq!(idx.last_seq().unwrap(), 400);
    assert_eq!(idx.repos(None, 100).unwrap().len(), 8);
}

fn manifest_rec(created_ms: u64, blobs: Vec<Digest>) -> ManifestRecord {
    ManifestRecord {
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        size: 10,
        created_ms,
        artifact_type: None,
        subject: None,
        blobs,
        children: Vec::new(),
        annotations: Default::default(),
    }
}

#[test]
fn holders_follow_links_and_manifests() {
    let dir = tempfile::tempdir().unwrap();
    let idx = open(dir.path());
    let (a, b) = (repo("a"), repo("b"));
    let blob = Digest::sha256(b"blob");
    let m = Digest::sha256(b"m");
    let mut batch = Batch::new();
    batch.link_blob(&a, &blob, 10);
    batch.link_blob(&b, &blob, 20);
    batch.put_manifest(&a, &m, &manifest_rec(30, vec![blob.clone()]));
    idx.commit(batch).unwrap();
    assert_eq!(
        idx.holders(&blob, HoldKind::Link).unwrap(),
        vec![(a.clone(), 10), (b.clone(), 20)]
    );
    assert!(idx.holders(&blob, HoldKind::Manifest).unwrap().is_empty());
    assert_eq!(
        idx.holders(&m, HoldKind::Manifest).unwrap(),
        vec![(a.clone(), 30)]
    );
    assert_eq!(idx.link_time(&b, &blob).unwrap(), Some(20));
    let mut batch = Batch::new();
    batch.unlink_blob(&a, &blob);
    batch.delete_manifest(&a, &m);
    idx.commit(batch).unwrap();
    assert_eq!(idx.holders(&blob, HoldKind::Link).unwrap(), vec![(b, 20)]);
    assert!(idx.holders(&m, HoldKind::Manifest).unwrap().is_empty());
    assert_eq!(idx.link_time(&a, &blob).unwrap(), None);
}

#[test]
fn snapshot_does_not_see_later_commits() {
    let dir = tempfile::tempdir().unwrap();
    let idx = open(dir.path());
    let a = repo("a");
    let d1 = Digest::sha256(b"1");
    let d2 = Digest::sha256(b"2");
    let mut batch = Batch::new();
    batch.link_blob(&a, &d1, 1);
    batch.event(ev(EventKind::BlobLinked, "a"));
    idx.commit(batch).unwrap();
    let snap = idx.snapshot();
    let mut batch = Batch::new();
    batch.link_blob(&a, &d2, 2);
    batch.unlink_blob(&a, &d1);
    batch.put_tag(
        &a,
        "t",
        &TagRecord {
            digest: d2.clone(),
            updated_ms: 2,
            origin: None,
        },
        None,
    );
    batch.event(ev(EventKind::BlobLinked, "a"));
    idx.commit(batch).unwrap();
    let mut seen = Vec::new();
    snap.links(|r, d, at| {
        seen.push((r.to_string(), d, at));
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, vec![("a".to_string(), d1, 1)]);
    let mut tags = 0;
    snap.tags(|_, _, _| {
        tags += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(tags, 0);
    assert_eq!(snap.last_seq().unwrap(), 1);
    assert_eq!(idx.last_seq().unwrap(), 2);
}

#[test]
fn format_1_index_is_migrated_with_holders() {
    let dir = tempfile::tempdir().unwrap();
    let a = repo("a/b");
    let blob = Digest::sha256(b"blob");
    let m = Digest::sha256(b"m");
    {
        let idx = open(dir.path());
        let mut batch = Batch::new();
        batch.link_blob(&a, &blob, 10);
        batch.put_manifest(&a, &m, &manifest_rec(30, vec![blob.clone()]));
        idx.commit(batch).unwrap();
        // Make it look like a format 1 index: no holders, version "1".
        let holders = idx.cf(cf::HOLDERS).unwrap();
        let keys: Vec<Vec<u8>> = idx
            .db
            .iterator_cf(&holders, IteratorMode::Start)
            .map(|i| i.unwrap().0.to_vec())
            .collect();
        assert_eq!(keys.len(), 2);
        for k in keys {
            idx.db.delete_cf(&holders, k).unwrap();
        }
        idx.db
            .put_cf(&idx.cf(cf::META).unwrap(), META_FORMAT, b"1")
            .unwrap();
        assert!(idx.holders(&blob, HoldKind::Link).unwrap().is_empty());
    }
    let idx = open(dir.path());
    assert_eq!(
        idx.holders(&blob, HoldKind::Link).unwrap(),
        vec![(a.clone(), 10)]
    );
    assert_eq!(idx.holders(&m, HoldKind::Manifest).unwrap(), vec![(a, 30)]);
    let v = idx
        .db
        .get_cf(&idx.cf(cf::META).unwrap(), META_FORMAT)
        .unwrap()
        .unwrap();
    assert_eq!(v, FORMAT_VERSION.to_string().as_bytes());
}

#[test]
fn pending_intents_and_gc_runs() {
    let dir = tempfile::tempdir().unwrap();
    let idx = open(dir.path());
    let d = Digest::sha256(b"p");
    idx.put_pending(&d, "up-1", 5).unwrap();
    idx.put_pending(&d, "up-2", 6).unwrap();
    assert_eq!(idx.pending().unwrap().len(), 2);
    let mut batch = Batch::new();
    batch.clear_pending(&d, "up-1");
    for id in [1u64, 2, 300] {
        batch.put_gc_run(id, format!("{{\"id\":{id}}}").into_bytes());
    }
    idx.commit(batch).unwrap();
    assert_eq!(idx.pending().unwrap(), vec![(d, "up-2".to_string(), 6)]);
    let runs = idx.gc_runs(2).unwrap();
    assert_eq!(runs.iter().map(|r| r.0).collect::<Vec<_>>(), vec![300, 2]);
    assert_eq!(idx.gc_run(1).unwrap().unwrap(), b"{\"id\":1}".to_vec());
    assert!(idx.gc_run(7).unwrap().is_none());
}

#[test]
fn extension_keyspace_is_separate_from_bookkeeping() {
    let dir = tempfile::tempdir().unwrap();
    let idx = open(dir.path());
    let mut b = Batch::new();
    b.put_meta(b"repl/cursor/b", 7u64.to_be_bytes().to_vec());
    b.put_meta(b"repl/cursor/a", 3u64.to_be_bytes().to_vec());
    b.put_meta(b"other", b"x".to_vec());
    b.event(ev(EventKind::BlobLinked, "a"));
    idx.commit(b).unwrap();
    assert_eq!(
        idx.last_seq().unwrap(),
        1,
        "feed sequence untouched by meta keys"
    );
    let scanned = idx.meta_scan(b"repl/cursor/").unwrap();
    let keys: Vec<&[u8]> = scanned.iter().map(|(k, _)| k.as_slice()).collect();
    assert_eq!(keys, vec![&b"repl/cursor/a"[..], &b"repl/cursor/b"[..]]);
    assert_eq!(idx.meta(b"other").unwrap().as_deref(), Some(&b"x"[..]));
    let mut b = Batch::new();
    b.delete_meta(b"other");
    idx.commit(b).unwrap();
    assert_eq!(idx.meta(b"other").unwrap(), None);
    assert_eq!(
        idx.meta(b"feed_seq").unwrap(),
        None,
        "bookkeeping keys are not visible"
    );
}
