//! Replication state with typed keys and values: tag tombstones, manifest tombstones,
//! replication cursors and transfer sessions, in the `repl_state` column family.
//!
//! Keys are one kind byte followed by the kind's fields in the [`crate::keys`] encoding:
//!
//! | kind | record              | key after the kind byte |
//! |------|---------------------|-------------------------|
//! | 1    | [`TagTombstone`]     | `repo \0`, tag bytes     |
//! | 2    | [`ManifestTombstone`]| `repo \0`, digest        |
//! | 3    | [`ReplCursor`]       | peer name bytes          |
//! | 4    | [`TransferSession`]  | digest                   |
//!
//! so one repository's tombstones of one kind share a prefix. Values start with a layout
//! version byte ([`VALUE_V1`]); integers are big-endian u64 and strings carry a two-byte
//! big-endian length. A value that does not fit (a string over 65,535 bytes) is an encode
//! error and nothing is written: an empty or truncated value would read back as a lost
//! delete or a lost cursor. A value that does not decode (unknown version, short, trailing
//! bytes, bad UTF-8) is [`IndexError::Corrupt`], never a panic.
//!
//! Until format 5 these lived as JSON under string keys in `meta`'s extension keyspace;
//! [`Index::migrate_v4_repl_state`] moves them at open.

use rocksdb::WriteBatch;
use stowage_core::{Digest, RepoName};

use crate::{cf, db_err, keys, meta_key, Batch, Index, IndexError};

/// Layout version of every value written by this build.
pub const VALUE_V1: u8 = 1;

const KIND_TAG_TOMBSTONE: u8 = 1;
const KIND_MANIFEST_TOMBSTONE: u8 = 2;
const KIND_CURSOR: u8 = 3;
const KIND_SESSION: u8 = 4;

/// A deleted tag's tombstone: the delete's version, and when this site wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagTombstone {
    /// The delete's version: unix ms at its origin.
    pub ms: u64,
    /// The delete's version: the site it was made at (empty before replication existed).
    pub origin: String,
    /// When this site wrote the tombstone (unix ms, this site's clock); expiry counts from here.
    pub written_ms: u64,
}

/// A manifest deleted by a client or a replicated delete, which anti-entropy must not bring back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManifestTombstone {
    /// When this site wrote it (unix ms).
    pub at_ms: u64,
}

/// How far a replicator has applied a source site's feed at a target site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplCursor {
    /// The last feed sequence the target confirmed.
    pub seq: u64,
    /// The source site the sequence numbers belong to.
    pub source: String,
    /// The target site that confirmed them (empty in cursors written before it was recorded).
    pub target: String,
}

/// An upload session that a resumable blob transfer writes into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferSession {
    /// Repository the upload is for.
    pub repo: RepoName,
    /// The upload session's id.
    pub upload: String,
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_str(out: &mut Vec<u8>, what: &str, s: &str) -> Result<(), IndexError> {
    let len = u16::try_from(s.len()).map_err(|_| IndexError::TooLong {
        what: what.to_string(),
        len: s.len(),
        max: usize::from(u16::MAX),
    })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// Reads a value written by this module, front to back; every read checks length.
struct Reader<'a> {
    what: &'static str,
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Checks the version byte.
    fn new(what: &'static str, bytes: &'a [u8]) -> Result<Self, IndexError> {
        match bytes.split_first() {
            Some((&VALUE_V1, rest)) => Ok(Self { what, rest }),
            Some((v, _)) => Err(IndexError::Corrupt(format!(
                "{what}: unknown value layout version {v}"
            ))),
            None => Err(IndexError::Corrupt(format!("{what}: empty value"))),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], IndexError> {
        if self.rest.len() < n {
            return Err(IndexError::Corrupt(format!(
                "{}: value truncated ({} bytes left, {n} needed)",
                self.what,
                self.rest.len()
            )));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u64(&mut self) -> Result<u64, IndexError> {
        let b: [u8; 8] = self
            .take(8)?
            .try_into()
            .map_err(|_| IndexError::Corrupt(format!("{}: short integer", self.what)))?;
        Ok(u64::from_be_bytes(b))
    }

    fn str(&mut self) -> Result<String, IndexError> {
        let len: [u8; 2] = self
            .take(2)?
            .try_into()
            .map_err(|_| IndexError::Corrupt(format!("{}: short length", self.what)))?;
        let bytes = self.take(usize::from(u16::from_be_bytes(len)))?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| IndexError::Corrupt(format!("{}: string not UTF-8: {e}", self.what)))
    }

    fn end(self) -> Result<(), IndexError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(IndexError::Corrupt(format!(
                "{}: {} trailing bytes",
                self.what,
                self.rest.len()
            )))
        }
    }
}

impl TagTombstone {
    /// The stored value.
    pub fn encode(&self) -> Result<Vec<u8>, IndexError> {
        let mut out = vec![VALUE_V1];
        put_u64(&mut out, self.ms);
        put_u64(&mut out, self.written_ms);
        put_str(&mut out, "tag tombstone origin", &self.origin)?;
        Ok(out)
    }

    /// Decodes a value written by [`TagTombstone::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, IndexError> {
        let mut r = Reader::new("tag tombstone", bytes)?;
        let ms = r.u64()?;
        let written_ms = r.u64()?;
        let origin = r.str()?;
        r.end()?;
        Ok(Self {
            ms,
            origin,
            written_ms,
        })
    }
}

impl ManifestTombstone {
    /// The stored value.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![VALUE_V1];
        put_u64(&mut out, self.at_ms);
        out
    }

    /// Decodes a value written by [`ManifestTombstone::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, IndexError> {
        let mut r = Reader::new("manifest tombstone", bytes)?;
        let at_ms = r.u64()?;
        r.end()?;
        Ok(Self { at_ms })
    }
}

impl ReplCursor {
    /// The stored value.
    pub fn encode(&self) -> Result<Vec<u8>, IndexError> {
        let mut out = vec![VALUE_V1];
        put_u64(&mut out, self.seq);
        put_str(&mut out, "cursor source site", &self.source)?;
        put_str(&mut out, "cursor target site", &self.target)?;
        Ok(out)
    }

    /// Decodes a value written by [`ReplCursor::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, IndexError> {
        let mut r = Reader::new("replication cursor", bytes)?;
        let seq = r.u64()?;
        let source = r.str()?;
        let target = r.str()?;
        r.end()?;
        Ok(Self {
            seq,
            source,
            target,
        })
    }
}

impl TransferSession {
    /// The stored value.
    pub fn encode(&self) -> Result<Vec<u8>, IndexError> {
        let mut out = vec![VALUE_V1];
        put_str(&mut out, "transfer session repository", self.repo.as_str())?;
        put_str(&mut out, "transfer session upload id", &self.upload)?;
        Ok(out)
    }

    /// Decodes a value written by [`TransferSession::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, IndexError> {
        let mut r = Reader::new("transfer session", bytes)?;
        let repo = r.str()?;
        let repo = RepoName::parse(&repo)
            .map_err(|e| IndexError::Corrupt(format!("transfer session repository: {e}")))?;
        let upload = r.str()?;
        r.end()?;
        Ok(Self { repo, upload })
    }
}

/// Key of a tag's tombstone.
pub fn tag_tombstone_key(repo: &RepoName, tag: &str) -> Vec<u8> {
    let mut k = vec![KIND_TAG_TOMBSTONE];
    k.extend_from_slice(&keys::repo_tag(repo, tag));
    k
}

/// Key of a manifest's tombstone.
pub fn manifest_tombstone_key(repo: &RepoName, digest: &Digest) -> Vec<u8> {
    let mut k = vec![KIND_MANIFEST_TOMBSTONE];
    k.extend_from_slice(&keys::repo_digest(repo, digest));
    k
}

/// Key of the cursor of the replicator configured as `peer`.
pub fn cursor_key(peer: &str) -> Vec<u8> {
    let mut k = vec![KIND_CURSOR];
    k.extend_from_slice(peer.as_bytes());
    k
}

/// Key of the transfer session of `digest`.
pub fn session_key(digest: &Digest) -> Vec<u8> {
    let mut k = vec![KIND_SESSION];
    keys::put_digest(&mut k, digest);
    k
}

fn with_kind(kind: u8, repo: &RepoName) -> Vec<u8> {
    let mut k = vec![kind];
    keys::put_repo(&mut k, repo);
    k
}

impl Batch {
    /// Sets the tombstone of `tag` in `repo`. An encode failure is returned and nothing is
    /// added to the batch.
    pub fn put_tag_tombstone(
        &mut self,
        repo: &RepoName,
        tag: &str,
        t: &TagTombstone,
    ) -> Result<(), IndexError> {
        let v = t.encode()?;
        self.put(cf::REPL_STATE, tag_tombstone_key(repo, tag), v);
        Ok(())
    }

    /// Removes the tombstone of `tag` in `repo` (absent is fine).
    pub fn delete_tag_tombstone(&mut self, repo: &RepoName, tag: &str) {
        self.del(cf::REPL_STATE, tag_tombstone_key(repo, tag));
    }

    /// Sets the tombstone of manifest `digest` in `repo`.
    pub fn put_manifest_tombstone(
        &mut self,
        repo: &RepoName,
        digest: &Digest,
        t: ManifestTombstone,
    ) {
        self.put(
            cf::REPL_STATE,
            manifest_tombstone_key(repo, digest),
            t.encode(),
        );
    }

    /// Removes the tombstone of manifest `digest` in `repo` (absent is fine).
    pub fn delete_manifest_tombstone(&mut self, repo: &RepoName, digest: &Digest) {
        self.del(cf::REPL_STATE, manifest_tombstone_key(repo, digest));
    }

    /// Sets the cursor of the replicator configured as `peer`. An encode failure is returned
    /// and nothing is added to the batch.
    pub fn put_repl_cursor(&mut self, peer: &str, c: &ReplCursor) -> Result<(), IndexError> {
        let v = c.encode()?;
        self.put(cf::REPL_STATE, cursor_key(peer), v);
        Ok(())
    }

    /// Sets (`Some`) or removes (`None`) the transfer session of `digest`. An encode failure
    /// is returned and nothing is added to the batch.
    pub fn put_transfer_session(
        &mut self,
        digest: &Digest,
        s: Option<&TransferSession>,
    ) -> Result<(), IndexError> {
        match s {
            Some(s) => {
                let v = s.encode()?;
                self.put(cf::REPL_STATE, session_key(digest), v);
            }
            None => self.del(cf::REPL_STATE, session_key(digest)),
        }
        Ok(())
    }
}

impl Index {
    fn repl_state_get<T>(
        &self,
        key: &[u8],
        decode: impl FnOnce(&[u8]) -> Result<T, IndexError>,
    ) -> Result<Option<T>, IndexError> {
        let cf = self.cf(cf::REPL_STATE)?;
        match self
            .db
            .get_pinned_cf(&cf, key)
            .map_err(db_err("reading replication state"))?
        {
            Some(v) => Ok(Some(decode(&v)?)),
            None => Ok(None),
        }
    }

    /// The tombstone of `tag` in `repo`.
    pub fn tag_tombstone(
        &self,
        repo: &RepoName,
        tag: &str,
    ) -> Result<Option<TagTombstone>, IndexError> {
        self.repl_state_get(&tag_tombstone_key(repo, tag), TagTombstone::decode)
    }

    /// Tag tombstones of `repo` (or of every repository when `None`), in key order.
    pub fn tag_tombstones(
        &self,
        repo: Option<&RepoName>,
    ) -> Result<Vec<(RepoName, String, TagTombstone)>, IndexError> {
        let prefix = match repo {
            Some(r) => with_kind(KIND_TAG_TOMBSTONE, r),
            None => vec![KIND_TAG_TOMBSTONE],
        };
        let mut out = Vec::new();
        self.scan(cf::REPL_STATE, &prefix, &prefix, |k, v| {
            let (repo, rest) = keys::take_repo(&k[1..])?;
            let tag = String::from_utf8(rest.to_vec())
                .map_err(|e| IndexError::Corrupt(format!("tag tombstone key: {e}")))?;
            out.push((repo, tag, TagTombstone::decode(v)?));
            Ok(true)
        })?;
        Ok(out)
    }

    /// The tombstone of manifest `digest` in `repo`.
    pub fn manifest_tombstone(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<ManifestTombstone>, IndexError> {
        self.repl_state_get(
            &manifest_tombstone_key(repo, digest),
            ManifestTombstone::decode,
        )
    }

    /// Manifest tombstones of `repo` (or of every repository when `None`), in key order.
    pub fn manifest_tombstones(
        &self,
        repo: Option<&RepoName>,
    ) -> Result<Vec<(RepoName, Digest, ManifestTombstone)>, IndexError> {
        let prefix = match repo {
            Some(r) => with_kind(KIND_MANIFEST_TOMBSTONE, r),
            None => vec![KIND_MANIFEST_TOMBSTONE],
        };
        let mut out = Vec::new();
        self.scan(cf::REPL_STATE, &prefix, &prefix, |k, v| {
            let (repo, rest) = keys::take_repo(&k[1..])?;
            let (digest, rest) = keys::take_digest(rest)?;
            if !rest.is_empty() {
                return Err(IndexError::Corrupt(format!(
                    "manifest tombstone key of {repo}@{digest}: {} trailing bytes",
                    rest.len()
                )));
            }
            out.push((repo, digest, ManifestTombstone::decode(v)?));
            Ok(true)
        })?;
        Ok(out)
    }

    /// The cursor of the replicator configured as `peer`.
    pub fn repl_cursor(&self, peer: &str) -> Result<Option<ReplCursor>, IndexError> {
        self.repl_state_get(&cursor_key(peer), ReplCursor::decode)
    }

    /// The transfer session of `digest`.
    pub fn transfer_session(&self, digest: &Digest) -> Result<Option<TransferSession>, IndexError> {
        self.repl_state_get(&session_key(digest), TransferSession::decode)
    }

    /// Format 4 -> 5: moves tag and manifest tombstones, cursors and transfer sessions from
    /// JSON under string keys in `meta`'s extension keyspace into `repl_state`. Each old entry
    /// is deleted in the write that adds its typed one, so a crash half way leaves only
    /// entries the next open moves. An unreadable tombstone fails the open (dropping it would
    /// forget a delete); an unreadable cursor or session is dropped with a warning, as the
    /// readers before format 5 did (replication starts over from the feed's start, or the
    /// transfer from its first byte).
    pub(crate) fn migrate_v4_repl_state(&self) -> Result<(), IndexError> {
        let meta = self.cf(cf::META)?;
        let target = self.cf(cf::REPL_STATE)?;
        // Each old key, with the typed entry that replaces it (none: dropped).
        let mut moves: Vec<(Vec<u8>, Option<crate::MetaEntry>)> = Vec::new();
        for (prefix, conv) in legacy::CONVERTERS {
            let full = meta_key(prefix);
            self.scan(cf::META, &full, &full, |k, v| {
                let old = &k[full.len()..];
                match conv(old, v) {
                    Ok(kv) => moves.push((k.to_vec(), Some(kv))),
                    Err(legacy::Unreadable::Drop(e)) => {
                        tracing::warn!(error = %e, "dropping an unreadable entry while migrating the index to format 5");
                        moves.push((k.to_vec(), None));
                    }
                    Err(legacy::Unreadable::Fatal(e)) => return Err(e),
                }
                Ok(true)
            })?;
        }
        for chunk in moves.chunks(10_000) {
            let mut wb = WriteBatch::default();
            for (old, new) in chunk {
                if let Some((k, v)) = new {
                    wb.put_cf(&target, k, v);
                }
                wb.delete_cf(&meta, old);
            }
            self.db
                .write(wb)
                .map_err(db_err("writing migrated replication state"))?;
        }
        self.db
            .flush_wal(true)
            .map_err(db_err("syncing the replication state migration"))
    }
}

/// The layouts before format 5, read only by the migration.
mod legacy {
    use serde::Deserialize;
    use stowage_core::{Digest, RepoName};

    use super::{
        cursor_key, manifest_tombstone_key, session_key, tag_tombstone_key, ManifestTombstone,
        ReplCursor, TagTombstone, TransferSession,
    };
    use crate::{keys, IndexError};

    /// Why an old entry could not be moved.
    pub(super) enum Unreadable {
        /// The open fails.
        Fatal(IndexError),
        /// The entry is dropped.
        Drop(IndexError),
    }

    type Moved = Result<crate::MetaEntry, Unreadable>;

    /// Converts one old entry, given its key after the prefix and its value.
    type Converter = fn(&[u8], &[u8]) -> Moved;

    /// Old key prefixes (inside the extension keyspace) and how to convert each entry, given
    /// its key after the prefix and its value.
    pub(super) const CONVERTERS: [(&[u8], Converter); 4] = [
        (b"tomb/", tag_tombstone),
        (b"mtomb/", manifest_tombstone),
        (b"repl/cursor/", cursor),
        (b"repl/up/", session),
    ];

    #[derive(Deserialize)]
    struct OldTombstone {
        u: u64,
        o: String,
        #[serde(default)]
        w: Option<u64>,
    }

    #[derive(Deserialize)]
    struct OldCursor {
        seq: u64,
        site: String,
        #[serde(default)]
        target: String,
    }

    #[derive(Deserialize)]
    struct OldSession {
        r: String,
        id: String,
    }

    fn fatal(what: &str, key: &[u8], e: impl std::fmt::Display) -> Unreadable {
        Unreadable::Fatal(IndexError::Corrupt(format!(
            "migrating {what} {}: {e}",
            String::from_utf8_lossy(key)
        )))
    }

    fn drop(what: &str, key: &[u8], e: impl std::fmt::Display) -> Unreadable {
        Unreadable::Drop(IndexError::Corrupt(format!(
            "{what} {}: {e}",
            String::from_utf8_lossy(key)
        )))
    }

    fn tag_tombstone(key: &[u8], v: &[u8]) -> Moved {
        let what = "tag tombstone";
        let (repo, tag) = keys::take_repo(key).map_err(|e| fatal(what, key, e))?;
        let tag = std::str::from_utf8(tag).map_err(|e| fatal(what, key, e))?;
        let old: OldTombstone = serde_json::from_slice(v).map_err(|e| fatal(what, key, e))?;
        let t = TagTombstone {
            ms: old.u,
            written_ms: old.w.unwrap_or(old.u),
            origin: old.o,
        };
        let v = t.encode().map_err(Unreadable::Fatal)?;
        Ok((tag_tombstone_key(&repo, tag), v))
    }

    fn manifest_tombstone(key: &[u8], v: &[u8]) -> Moved {
        let what = "manifest tombstone";
        let (repo, rest) = keys::take_repo(key).map_err(|e| fatal(what, key, e))?;
        let (digest, _) = keys::take_digest(rest).map_err(|e| fatal(what, key, e))?;
        let at: [u8; 8] = v
            .try_into()
            .map_err(|_| fatal(what, key, format!("value of {} bytes", v.len())))?;
        let t = ManifestTombstone {
            at_ms: u64::from_be_bytes(at),
        };
        Ok((manifest_tombstone_key(&repo, &digest), t.encode()))
    }

    fn cursor(key: &[u8], v: &[u8]) -> Moved {
        let what = "replication cursor";
        let peer = std::str::from_utf8(key).map_err(|e| drop(what, key, e))?;
        let old: OldCursor = serde_json::from_slice(v).map_err(|e| drop(what, key, e))?;
        let c = ReplCursor {
            seq: old.seq,
            source: old.site,
            target: old.target,
        };
        let v = c.encode().map_err(Unreadable::Drop)?;
        Ok((cursor_key(peer), v))
    }

    fn session(key: &[u8], v: &[u8]) -> Moved {
        let what = "transfer session";
        let digest = std::str::from_utf8(key).map_err(|e| drop(what, key, e))?;
        let digest = Digest::parse(digest).map_err(|e| drop(what, key, e))?;
        let old: OldSession = serde_json::from_slice(v).map_err(|e| drop(what, key, e))?;
        let repo = RepoName::parse(&old.r).map_err(|e| drop(what, key, e))?;
        let s = TransferSession {
            repo,
            upload: old.id,
        };
        let v = s.encode().map_err(Unreadable::Drop)?;
        Ok((session_key(&digest), v))
    }
}
