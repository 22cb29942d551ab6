#![allow(clippy::unwrap_used)]
use proptest::prelude::*;

use super::repl_state::*;
use super::*;

fn open(dir: &Path) -> Index {
    Index::open(dir, IndexOptions::default()).unwrap()
}

fn repo(s: &str) -> RepoName {
    RepoName::parse(s).unwrap()
}

fn tomb(ms: u64, origin: &str) -> TagTombstone {
    TagTombstone {
        ms,
        origin: origin.into(),
        written_ms: ms + 5,
    }
}

#[test]
fn typed_entries_round_trip_through_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let idx = open(dir.path());
    let (a, ab) = (repo("a"), repo("a/b"));
    let (d1, d2) = (Digest::sha256(b"1"), Digest::sha256(b"2"));
    let cursor = ReplCursor {
        seq: 42,
        source: "east".into(),
        target: "west".into(),
    };
    let session = TransferSession {
        repo: ab.clone(),
        upload: "u-1".into(),
    };
    let mut b = Batch::new();
    b.put_tag_tombstone(&a, "v1", &tomb(10, "east")).unwrap();
    b.put_tag_tombstone(&a, "v2", &tomb(11, "")).unwrap();
    b.put_tag_tombstone(&ab, "v1", &tomb(12, "west")).unwrap();
    b.put_manifest_tombstone(&a, &d1, ManifestTombstone { at_ms: 7 });
    b.put_manifest_tombstone(&ab, &d2, ManifestTombstone { at_ms: 8 });
    b.put_repl_cursor("peer-1", &cursor).unwrap();
    b.put_transfer_session(&d1, Some(&session)).unwrap();
    idx.commit(b).unwrap();

    assert_eq!(idx.tag_tombstone(&a, "v1").unwrap(), Some(tomb(10, "east")));
    assert_eq!(idx.tag_tombstone(&a, "v3").unwrap(), None);
    // One repository's tombstones do not include those of a repository it prefixes.
    let of_a: Vec<String> = idx
        .tag_tombstones(Some(&a))
        .unwrap()
        .into_iter()
        .map(|(_, t, _)| t)
        .collect();
    assert_eq!(of_a, ["v1", "v2"]);
    assert_eq!(idx.tag_tombstones(None).unwrap().len(), 3);
    assert_eq!(
        idx.manifest_tombstone(&a, &d1).unwrap(),
        Some(ManifestTombstone { at_ms: 7 })
    );
    assert_eq!(
        idx.manifest_tombstones(Some(&ab)).unwrap(),
        vec![(ab.clone(), d2.clone(), ManifestTombstone { at_ms: 8 })]
    );
    assert_eq!(idx.manifest_tombstones(None).unwrap().len(), 2);
    assert_eq!(idx.repl_cursor("peer-1").unwrap(), Some(cursor));
    assert_eq!(idx.repl_cursor("peer-2").unwrap(), None);
    assert_eq!(idx.transfer_session(&d1).unwrap(), Some(session));

    let mut b = Batch::new();
    b.delete_tag_tombstone(&a, "v1");
    b.delete_manifest_tombstone(&a, &d1);
    b.put_transfer_session(&d1, None).unwrap();
    idx.commit(b).unwrap();
    assert_eq!(idx.tag_tombstone(&a, "v1").unwrap(), None);
    assert_eq!(idx.manifest_tombstone(&a, &d1).unwrap(), None);
    assert_eq!(idx.transfer_session(&d1).unwrap(), None);
    assert!(
        idx.meta_scan(b"").unwrap().is_empty(),
        "nothing in the extension keyspace"
    );
}

#[test]
fn a_value_that_does_not_fit_is_an_error_and_writes_nothing() {
    let long = "o".repeat(70_000);
    let mut b = Batch::new();
    let err = b
        .put_tag_tombstone(&repo("a"), "t", &tomb(1, &long))
        .unwrap_err();
    assert!(
        matches!(err, IndexError::TooLong { len: 70_000, .. }),
        "{err}"
    );
    let err = b
        .put_repl_cursor(
            "p",
            &ReplCursor {
                seq: 1,
                source: "s".into(),
                target: long,
            },
        )
        .unwrap_err();
    assert!(matches!(err, IndexError::TooLong { .. }), "{err}");
    assert!(b.is_empty(), "a failed encode adds nothing to the batch");
}

#[test]
fn garbage_values_are_corrupt_not_panics() {
    let good = tomb(3, "east").encode().unwrap();
    let mut trailing = good.clone();
    trailing.push(0);
    let mut version = good.clone();
    version[0] = 9;
    let mut bad_utf8 = good.clone();
    let last = bad_utf8.len() - 1;
    bad_utf8[last] = 0xff;
    for bytes in [
        &b""[..],
        &good[..good.len() - 1],
        &trailing,
        &version,
        &bad_utf8,
        b"{\"u\":1,\"o\":\"x\"}",
    ] {
        let err = TagTombstone::decode(bytes).unwrap_err();
        assert!(matches!(err, IndexError::Corrupt(_)), "{err}");
    }
    assert!(ManifestTombstone::decode(&[1, 0, 0]).is_err());
    assert!(ReplCursor::decode(&[1; 9]).is_err());
    // A repository name the grammar refuses.
    let s = TransferSession {
        repo: repo("a"),
        upload: "u".into(),
    };
    let mut enc = s.encode().unwrap();
    enc[3] = b'A';
    assert!(TransferSession::decode(&enc).is_err());

    // Through the index: a spoiled stored value is an error from the read.
    let dir = tempfile::tempdir().unwrap();
    let idx = open(dir.path());
    let cf = idx.cf(cf::REPL_STATE).unwrap();
    idx.db
        .put_cf(&cf, tag_tombstone_key(&repo("a"), "t"), b"\x01\x02")
        .unwrap();
    assert!(matches!(
        idx.tag_tombstone(&repo("a"), "t"),
        Err(IndexError::Corrupt(_))
    ));
    assert!(idx.tag_tombstones(None).is_err());
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = TagTombstone::decode(&bytes);
        let _ = ManifestTombstone::decode(&bytes);
        let _ = ReplCursor::decode(&bytes);
        let _ = TransferSession::decode(&bytes);
    }

    #[test]
    fn values_round_trip(ms in any::<u64>(), w in any::<u64>(), s in "\\PC{0,40}", t in "\\PC{0,40}") {
        let tt = TagTombstone { ms, origin: s.clone(), written_ms: w };
        prop_assert_eq!(TagTombstone::decode(&tt.encode().unwrap()).unwrap(), tt);
        let c = ReplCursor { seq: ms, source: s, target: t.clone() };
        prop_assert_eq!(ReplCursor::decode(&c.encode().unwrap()).unwrap(), c);
        let m = ManifestTombstone { at_ms: w };
        prop_assert_eq!(ManifestTombstone::decode(&m.encode()).unwrap(), m);
        let sess = TransferSession { repo: repo("x/y"), upload: t };
        prop_assert_eq!(TransferSession::decode(&sess.encode().unwrap()).unwrap(), sess);
    }
}

/// Writes `entries` into the extension keyspace as a format 4 build did, marks the index
/// format 4, and closes it.
fn make_v4(dir: &Path, entries: &[(Vec<u8>, Vec<u8>)]) {
    let idx = open(dir);
    let mut b = Batch::new();
    for (k, v) in entries {
        b.put_meta(k, v.clone());
    }
    b.put_meta(b"site", b"east".to_vec());
    idx.commit(b).unwrap();
    idx.db
        .put_cf(&idx.cf(cf::META).unwrap(), META_FORMAT, b"4")
        .unwrap();
}

fn old_key(prefix: &str, rest: &[u8]) -> Vec<u8> {
    let mut k = prefix.as_bytes().to_vec();
    k.extend_from_slice(rest);
    k
}

#[test]
fn format_4_entries_are_migrated_to_typed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (a, ab) = (repo("a"), repo("a/b"));
    let d = Digest::sha256(b"m");
    make_v4(
        dir.path(),
        &[
            (
                old_key("tomb/", &keys::repo_tag(&a, "gone")),
                br#"{"u":100,"o":"west","w":150}"#.to_vec(),
            ),
            // Written before `w` existed: its version's time stands in.
            (
                old_key("tomb/", &keys::repo_tag(&ab, "old")),
                br#"{"u":90,"o":""}"#.to_vec(),
            ),
            (
                old_key("mtomb/", &keys::repo_digest(&a, &d)),
                77u64.to_be_bytes().to_vec(),
            ),
            (
                old_key("repl/cursor/", b"peer-1"),
                br#"{"seq":5,"site":"west","target":"east"}"#.to_vec(),
            ),
            (
                old_key("repl/cursor/", b"peer-old"),
                br#"{"seq":6,"site":"west"}"#.to_vec(),
            ),
            // Unreadable: dropped, as the reader before format 5 ignored it.
            (old_key("repl/cursor/", b"peer-bad"), b"garbage".to_vec()),
            (
                old_key("repl/up/", d.to_string().as_bytes()),
                br#"{"r":"a/b","id":"up-9"}"#.to_vec(),
            ),
        ],
    );
    let idx = open(dir.path());
    assert_eq!(
        idx.tag_tombstone(&a, "gone").unwrap(),
        Some(TagTombstone {
            ms: 100,
            origin: "west".into(),
            written_ms: 150
        })
    );
    assert_eq!(
        idx.tag_tombstone(&ab, "old").unwrap(),
        Some(TagTombstone {
            ms: 90,
            origin: String::new(),
            written_ms: 90
        })
    );
    assert_eq!(
        idx.manifest_tombstone(&a, &d).unwrap(),
        Some(ManifestTombstone { at_ms: 77 })
    );
    assert_eq!(
        idx.repl_cursor("peer-1").unwrap(),
        Some(ReplCursor {
            seq: 5,
            source: "west".into(),
            target: "east".into()
        })
    );
    assert_eq!(idx.repl_cursor("peer-old").unwrap().unwrap().target, "");
    assert_eq!(idx.repl_cursor("peer-bad").unwrap(), None);
    assert_eq!(
        idx.transfer_session(&d).unwrap(),
        Some(TransferSession {
            repo: ab.clone(),
            upload: "up-9".into()
        })
    );
    // Old entries are gone; other extension entries stay.
    let left: Vec<Vec<u8>> = idx
        .meta_scan(b"")
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(left, vec![b"site".to_vec()]);
    let v = idx.meta_raw(META_FORMAT).unwrap().unwrap();
    assert_eq!(v, FORMAT_VERSION.to_string().as_bytes());
    drop(idx);
    // Opening again finds nothing to move and the same entries.
    let idx = open(dir.path());
    assert_eq!(idx.tag_tombstones(None).unwrap().len(), 2);
}

#[test]
fn an_unreadable_format_4_tombstone_fails_the_open() {
    let dir = tempfile::tempdir().unwrap();
    make_v4(
        dir.path(),
        &[(
            old_key("tomb/", &keys::repo_tag(&repo("a"), "t")),
            b"not json".to_vec(),
        )],
    );
    let err = Index::open(dir.path(), IndexOptions::default()).unwrap_err();
    assert!(matches!(err, IndexError::Corrupt(_)), "{err}");
    // Nothing was lost: the entry is still there for a repaired build to move.
    let idx = {
        let mut o = Options::default();
        o.create_missing_column_families(true);
        Db::open_cf(&o, dir.path(), cf::ALL).unwrap()
    };
    let v = idx
        .get_cf(
            &idx.cf_handle(cf::META).unwrap(),
            meta_key(&old_key("tomb/", &keys::repo_tag(&repo("a"), "t"))),
        )
        .unwrap();
    assert_eq!(v.as_deref(), Some(&b"not json"[..]));
}
