//! The audit log: an append-only, hash-chained record of every change and every security
//! decision, kept in the `audit` column family.
//!
//! An entry describing a change is added to the same [`Batch`] as the change
//! ([`Batch::audit`]), so the change and its record are durable together or not at all.
//! Entries that record no change (a login, a refused request, a pull) are written by a batch
//! of their own.
//!
//! Chaining happens inside [`Index::commit`], under the lock that orders the change feed: each
//! entry gets the next audit sequence number and is stored as
//!
//! ```text
//! key   = seq (8 bytes, big endian)
//! value = prev (32 bytes) || hash (32 bytes) || entry JSON
//! hash  = SHA-256(prev || seq (8 bytes BE) || entry JSON)
//! ```
//!
//! where `prev` is the hash of the entry before. The hash covers the exact stored bytes, so
//! [`Index::audit_verify`] finds an entry whose bytes were changed (its hash no longer
//! matches), one that was removed (a gap in the sequence and a broken link), and entries that
//! were swapped (the sequence number is part of each hash). The head (last sequence and hash)
//! is kept in `meta`, so removing entries from the end is found as well, unless the head is
//! rewritten too: an exported copy (see `stowage audit`) is the defence against that.
//!
//! Retention removes the oldest entries; the hash of the last removed entry becomes the
//! anchor verification starts from ([`Index::audit_prune_batch`]).

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{cf, db_err, decode, keys, Batch, Index, IndexError, META_AUDIT_ANCHOR};

/// What was done (or attempted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    /// Blob bytes committed into a repository (upload finished, or received from a peer).
    BlobPush,
    /// An existing blob linked into a repository (cross-repository mount or dedup).
    BlobMount,
    /// A blob unlinked from a repository.
    BlobDelete,
    /// A blob read (only for refused reads; successful blob reads are not recorded).
    BlobPull,
    /// An upload session started (only recorded when refused).
    UploadStart,
    /// A manifest stored.
    ManifestPush,
    /// A manifest read (recorded when pull auditing is on, and when refused).
    ManifestPull,
    /// A manifest removed from a repository.
    ManifestDelete,
    /// A tag pointed at a manifest.
    TagSet,
    /// A tag removed.
    TagDelete,
    /// A tag list, the catalog or referrers read (only recorded when refused).
    List,
    /// Credentials checked (outcome: ok or denied).
    Login,
    /// A bearer token issued by the built-in token service.
    TokenIssue,
    /// A garbage-collection run started.
    GcRun,
    /// A blob taken out of service by garbage collection (quarantined).
    GcQuarantine,
    /// A quarantined blob's bytes removed for good.
    GcPurge,
    /// A quarantined blob restored by an operator.
    GcRestore,
    /// An upload session expired and removed.
    UploadExpire,
    /// A user created.
    UserAdd,
    /// A user's password or admin flag changed.
    UserUpdate,
    /// A user removed.
    UserDelete,
    /// A role granted in a project.
    RoleGrant,
    /// A role revoked.
    RoleRevoke,
    /// A robot account created.
    RobotCreate,
    /// A robot account removed.
    RobotDelete,
    /// A project's settings changed.
    ProjectUpdate,
    /// A request to the admin service (only recorded when refused).
    Admin,
    /// A replication request from a peer (only recorded when refused; applied changes are
    /// recorded as the change itself, with the peer as actor).
    Replication,
    /// A blob whose stored bytes failed verification taken out of service (quarantined as
    /// corrupt, its bytes removed) until good bytes replace it.
    BlobCorrupt,
    /// A replication feed entry set aside in the dead-letter list (it needs a blob that is
    /// corrupt at its source), or taken out of it again once replicated.
    ReplicationPark,
    /// An operator asked for parked replication entries to be tried again.
    ReplicationRetry,
    /// Old audit entries removed by retention.
    AuditPrune,
    /// The recorded end of the chain was found missing or behind the stored entries at start
    /// (the chain went on from the last stored entry).
    AuditRepair,
    /// The consistency check (`stowage fsck --repair`) repaired the index or the blob store.
    FsckRepair,
    /// Change-feed entries that every known reader has passed removed.
    FeedTrim,
    /// Tag or manifest tombstones older than the horizon removed.
    TombstoneExpire,
}

impl AuditAction {
    /// The wire word (as stored and as `--action` takes it).
    pub fn as_str(self) -> &'static str {
        ALL_ACTIONS
            .iter()
            .find(|(a, _)| *a == self)
            .map(|(_, name)| *name)
            .unwrap_or("unknown")
    }

    /// Parses a wire word.
    pub fn parse(s: &str) -> Option<AuditAction> {
        ALL_ACTIONS
            .iter()
            .find(|(_, name)| *name == s)
            .map(|(a, _)| *a)
    }
}

/// Every action with its wire word (kept in step with the serde names by a test).
pub const ALL_ACTIONS: &[(AuditAction, &str)] = &[
    (AuditAction::BlobPush, "blob_push"),
    (AuditAction::BlobMount, "blob_mount"),
    (AuditAction::BlobDelete, "blob_delete"),
    (AuditAction::BlobPull, "blob_pull"),
    (AuditAction::UploadStart, "upload_start"),
    (AuditAction::ManifestPush, "manifest_push"),
    (AuditAction::ManifestPull, "manifest_pull"),
    (AuditAction::ManifestDelete, "manifest_delete"),
    (AuditAction::TagSet, "tag_set"),
    (AuditAction::TagDelete, "tag_delete"),
    (AuditAction::List, "list"),
    (AuditAction::Login, "login"),
    (AuditAction::TokenIssue, "token_issue"),
    (AuditAction::GcRun, "gc_run"),
    (AuditAction::GcQuarantine, "gc_quarantine"),
    (AuditAction::GcPurge, "gc_purge"),
    (AuditAction::GcRestore, "gc_restore"),
    (AuditAction::UploadExpire, "upload_expire"),
    (AuditAction::UserAdd, "user_add"),
    (AuditAction::UserUpdate, "user_update"),
    (AuditAction::UserDelete, "user_delete"),
    (AuditAction::RoleGrant, "role_grant"),
    (AuditAction::RoleRevoke, "role_revoke"),
    (AuditAction::RobotCreate, "robot_create"),
    (AuditAction::RobotDelete, "robot_delete"),
    (AuditAction::ProjectUpdate, "project_update"),
    (AuditAction::Admin, "admin"),
    (AuditAction::Replication, "replication"),
    (AuditAction::BlobCorrupt, "blob_corrupt"),
    (AuditAction::ReplicationPark, "replication_park"),
    (AuditAction::ReplicationRetry, "replication_retry"),
    (AuditAction::AuditPrune, "audit_prune"),
    (AuditAction::AuditRepair, "audit_repair"),
    (AuditAction::FsckRepair, "fsck_repair"),
    (AuditAction::FeedTrim, "feed_trim"),
    (AuditAction::TombstoneExpire, "tombstone_expire"),
];

/// How it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    /// Done.
    Ok,
    /// Refused by access control (or by a replication rule).
    Denied,
    /// Attempted and failed (bad input, a conflict, a server fault).
    Failed,
}

impl AuditOutcome {
    /// The wire word.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Ok => "ok",
            AuditOutcome::Denied => "denied",
            AuditOutcome::Failed => "failed",
        }
    }
}

/// One audit entry, as its writer describes it. Never holds a secret: targets are names and
/// digests, details are reasons and codes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When (unix ms).
    pub ts_ms: u64,
    /// Who (`user:alice`, `robot:robot$p+ci`, `peer:cloud`, `system:gc`, `anonymous`).
    pub actor: String,
    /// The client's address, for requests that came over the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// What.
    pub action: AuditAction,
    /// The repository concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// What was acted on: a digest, a tag, a user or robot name, a run id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// How it ended.
    pub outcome: AuditOutcome,
    /// Why, or extra facts (an error code, the origin site of a replicated change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl AuditEntry {
    /// An entry with the required fields; the optional ones are set with the builder methods.
    pub fn new(ts_ms: u64, actor: impl Into<String>, action: AuditAction) -> AuditEntry {
        AuditEntry {
            ts_ms,
            actor: actor.into(),
            addr: None,
            action,
            repo: None,
            target: None,
            outcome: AuditOutcome::Ok,
            detail: None,
        }
    }

    /// Sets the client address.
    pub fn addr(mut self, addr: Option<String>) -> Self {
        self.addr = addr;
        self
    }

    /// Sets the repository.
    pub fn repo(mut self, repo: impl Into<String>) -> Self {
        self.repo = Some(repo.into());
        self
    }

    /// Sets the target.
    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }

    /// Sets the outcome.
    pub fn outcome(mut self, outcome: AuditOutcome) -> Self {
        self.outcome = outcome;
        self
    }

    /// Sets the detail.
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

/// A stored entry with its place in the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    /// Audit sequence number (1, 2, ...; separate from the change feed's).
    pub seq: u64,
    /// The entry.
    pub entry: AuditEntry,
    /// Hash of the entry before (all zeros for the first).
    pub prev: [u8; 32],
    /// This entry's hash.
    pub hash: [u8; 32],
}

/// What verification found wrong with one place in the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum AuditProblem {
    /// The entry's bytes (or its position) do not match its hash.
    Altered {
        /// The entry.
        seq: u64,
    },
    /// Entries `from..=to` are gone.
    Missing {
        /// First missing sequence number.
        from: u64,
        /// Last missing sequence number.
        to: u64,
    },
    /// The entry's link to the one before does not match (an entry before it was removed,
    /// replaced or moved).
    BrokenLink {
        /// The entry whose `prev` does not match.
        seq: u64,
    },
    /// The stored value cannot be read at all.
    Unreadable {
        /// The entry.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// Entries `from..=to` are stored past the recorded end of the chain: the head was
    /// removed or rolled back.
    BeyondHead {
        /// First entry past the head.
        from: u64,
        /// Last stored entry.
        to: u64,
    },
    /// The chain starts after entry `seq` (entries up to it are gone) but no `audit_prune`
    /// entry records removing them: the anchor was moved by something other than retention.
    AnchorUnexplained {
        /// The anchor's sequence number.
        seq: u64,
    },
}

/// The result of [`Index::audit_verify`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AuditVerifyReport {
    /// Entries read.
    pub checked: u64,
    /// First sequence number expected (one past the retention anchor).
    pub first_seq: u64,
    /// Last sequence number the head records.
    pub last_seq: u64,
    /// What is wrong, in chain order. Empty: the log is intact.
    pub problems: Vec<AuditProblem>,
}

/// Which entries a query returns.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// Entries at or after (unix ms).
    pub since_ms: Option<u64>,
    /// Entries before (unix ms).
    pub until_ms: Option<u64>,
    /// Actor, exactly as recorded (`user:alice`), or a bare name matching any kind.
    pub actor: Option<String>,
    /// Repository (exact), or a project prefix ending in `/`.
    pub repo: Option<String>,
    /// Action.
    pub action: Option<AuditAction>,
    /// Start after this sequence number (paging).
    pub after_seq: u64,
    /// At most this many.
    pub limit: usize,
}

impl AuditFilter {
    fn matches(&self, e: &AuditEntry) -> bool {
        if self.since_ms.is_some_and(|s| e.ts_ms < s) || self.until_ms.is_some_and(|u| e.ts_ms >= u)
        {
            return false;
        }
        if let Some(a) = &self.actor {
            let bare = e.actor.split_once(':').map(|(_, n)| n).unwrap_or(&e.actor);
            if &e.actor != a && bare != a {
                return false;
            }
        }
        if let Some(r) = &self.repo {
            let ok = match (&e.repo, r.strip_suffix('/')) {
                (Some(er), Some(project)) => {
                    er == project || er.strip_prefix(project).is_some_and(|s| s.starts_with('/'))
                }
                (Some(er), None) => er == r,
                (None, _) => false,
            };
            if !ok {
                return false;
            }
        }
        self.action.is_none_or(|a| a == e.action)
    }
}

/// The hash of an entry: SHA-256 over the previous hash, the sequence number and the exact
/// entry bytes.
pub fn entry_hash(prev: &[u8; 32], seq: u64, entry_json: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(entry_json);
    h.finalize().into()
}

/// The chain's end: last sequence number and its hash.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Chain {
    pub(crate) seq: u64,
    pub(crate) hash: [u8; 32],
}

impl Chain {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(40);
        v.extend_from_slice(&self.seq.to_be_bytes());
        v.extend_from_slice(&self.hash);
        v
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Chain, IndexError> {
        if bytes.len() != 40 {
            return Err(IndexError::Corrupt(format!(
                "audit chain marker of {} bytes",
                bytes.len()
            )));
        }
        let seq = keys::take_seq(&bytes[..8])?;
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&bytes[8..]);
        Ok(Chain { seq, hash })
    }

    /// Appends `entry` to the chain: returns the stored value and moves the end.
    pub(crate) fn append(&mut self, entry: &AuditEntry) -> Result<(u64, Vec<u8>), IndexError> {
        let json = serde_json::to_vec(entry)
            .map_err(|e| IndexError::Corrupt(format!("encoding an audit entry: {e}")))?;
        let seq = self.seq + 1;
        let hash = entry_hash(&self.hash, seq, &json);
        let mut value = Vec::with_capacity(64 + json.len());
        value.extend_from_slice(&self.hash);
        value.extend_from_slice(&hash);
        value.extend_from_slice(&json);
        *self = Chain { seq, hash };
        Ok((seq, value))
    }
}

/// A stored value's parts: previous hash, hash, entry bytes.
type Parts<'a> = ([u8; 32], [u8; 32], &'a [u8]);

fn split_value(seq: u64, v: &[u8]) -> Result<Parts<'_>, String> {
    if v.len() < 64 {
        return Err(format!("audit entry {seq} is {} bytes long", v.len()));
    }
    let mut prev = [0u8; 32];
    let mut hash = [0u8; 32];
    prev.copy_from_slice(&v[..32]);
    hash.copy_from_slice(&v[32..64]);
    Ok((prev, hash, &v[64..]))
}

fn decode_record(seq: u64, v: &[u8]) -> Result<AuditRecord, IndexError> {
    let (prev, hash, json) = split_value(seq, v).map_err(IndexError::Corrupt)?;
    Ok(AuditRecord {
        seq,
        entry: decode("audit", json)?,
        prev,
        hash,
    })
}

impl Batch {
    /// Records an audit entry, written (and chained) with this batch.
    pub fn audit(&mut self, entry: AuditEntry) {
        self.audit.push(entry);
    }

    /// Number of audit entries in this batch.
    pub fn audit_len(&self) -> usize {
        self.audit.len()
    }
}

impl Index {
    /// The chain's anchor: where verification starts (the last entry removed by retention).
    fn audit_anchor(&self) -> Result<Chain, IndexError> {
        match self.meta_raw(META_AUDIT_ANCHOR)? {
            Some(v) => Chain::decode(&v),
            None => Ok(Chain::default()),
        }
    }

    /// The last audit sequence number written (0 when the log is empty).
    pub fn audit_last_seq(&self) -> Result<u64, IndexError> {
        Ok(self.audit_head()?.seq)
    }

    /// Stored entries after `filter.after_seq` that match `filter`, oldest first, at most
    /// `filter.limit` (0: no limit).
    pub fn audit_query(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, IndexError> {
        let mut out = Vec::new();
        let start = keys::seq(filter.after_seq.saturating_add(1));
        self.scan(cf::AUDIT, b"", &start, |k, v| {
            let seq = keys::take_seq(k)?;
            let rec = decode_record(seq, v)?;
            if filter.matches(&rec.entry) {
                out.push(rec);
            }
            Ok(filter.limit == 0 || out.len() < filter.limit)
        })?;
        Ok(out)
    }

    /// Walks the whole log from the retention anchor and checks every link and hash. Reads
    /// only; a problem is reported, never repaired.
    pub fn audit_verify(&self) -> Result<AuditVerifyReport, IndexError> {
        let anchor = self.audit_anchor()?;
        let head = self.audit_head()?;
        let mut report = AuditVerifyReport {
            first_seq: anchor.seq + 1,
            last_seq: head.seq,
            ..Default::default()
        };
        let mut expect_seq = anchor.seq + 1;
        let mut prev = anchor.hash;
        let mut last_seen = anchor.seq;
        let anchor_target = format!("1-{}", anchor.seq);
        let mut anchor_explained = anchor.seq == 0;
        self.scan(cf::AUDIT, b"", &keys::seq(0), |k, v| {
            let seq = keys::take_seq(k)?;
            report.checked += 1;
            if seq <= anchor.seq {
                // Left over below the anchor (retention interrupted): older than the chain.
                return Ok(true);
            }
            let (stored_prev, stored_hash, json) = match split_value(seq, v) {
                Ok(parts) => parts,
                Err(reason) => {
                    report
                        .problems
                        .push(AuditProblem::Unreadable { seq, reason });
                    expect_seq = seq + 1;
                    last_seen = seq;
                    return Ok(true);
                }
            };
            let gap = seq > expect_seq;
            if gap {
                report.problems.push(AuditProblem::Missing {
                    from: expect_seq,
                    to: seq - 1,
                });
            }
            if stored_prev != prev && !gap {
                report.problems.push(AuditProblem::BrokenLink { seq });
            }
            if entry_hash(&stored_prev, seq, json) != stored_hash {
                report.problems.push(AuditProblem::Altered { seq });
            } else {
                match serde_json::from_slice::<AuditEntry>(json) {
                    Ok(e) => {
                        if e.action == AuditAction::AuditPrune
                            && e.target.as_deref() == Some(anchor_target.as_str())
                        {
                            anchor_explained = true;
                        }
                    }
                    Err(_) => report.problems.push(AuditProblem::Unreadable {
                        seq,
                        reason: "entry does not decode".into(),
                    }),
                }
            }
            prev = stored_hash;
            expect_seq = seq + 1;
            last_seen = seq;
            Ok(true)
        })?;
        if head.seq > last_seen {
            report.problems.push(AuditProblem::Missing {
                from: last_seen + 1,
                to: head.seq,
            });
        } else if head.seq < last_seen {
            report.problems.push(AuditProblem::BeyondHead {
                from: head.seq.max(anchor.seq) + 1,
                to: last_seen,
            });
        } else if head.seq == last_seen && head.seq > anchor.seq && prev != head.hash {
            report
                .problems
                .push(AuditProblem::Altered { seq: head.seq });
        }
        if !anchor_explained {
            report
                .problems
                .push(AuditProblem::AnchorUnexplained { seq: anchor.seq });
        }
        Ok(report)
    }

    /// A batch that removes entries older than `before_ms` (at most `max`) and moves the
    /// anchor past them, with an `audit_prune` entry of its own; `None` when nothing is old
    /// enough. The caller commits it (entries are only ever removed oldest first, so the
    /// anchor is always the hash of the last one removed).
    pub fn audit_prune_batch(
        &self,
        before_ms: u64,
        max: usize,
        actor: &str,
        now_ms: u64,
    ) -> Result<Option<(Batch, u64)>, IndexError> {
        let mut last: Option<Chain> = None;
        let mut seqs = Vec::new();
        self.scan(cf::AUDIT, b"", &keys::seq(0), |k, v| {
            let seq = keys::take_seq(k)?;
            let rec = decode_record(seq, v)?;
            if rec.entry.ts_ms >= before_ms || seqs.len() >= max {
                return Ok(false);
            }
            seqs.push(seq);
            last = Some(Chain {
                seq,
                hash: rec.hash,
            });
            Ok(true)
        })?;
        let Some(anchor) = last else {
            return Ok(None);
        };
        let mut batch = Batch::new();
        for seq in &seqs {
            batch.del(cf::AUDIT, keys::seq(*seq).to_vec());
        }
        batch.put(cf::META, META_AUDIT_ANCHOR.to_vec(), anchor.encode());
        let n = seqs.len() as u64;
        batch.audit(
            AuditEntry::new(now_ms, actor, AuditAction::AuditPrune)
                .target(format!("1-{}", anchor.seq))
                .detail(format!("{n} entries older than {before_ms} ms removed")),
        );
        Ok(Some((batch, n)))
    }

    /// Reads one stored entry's raw value (tests and tools that examine tampering).
    pub fn audit_raw(&self, seq: u64) -> Result<Option<Vec<u8>>, IndexError> {
        let cf = self.cf(cf::AUDIT)?;
        self.db
            .get_cf(&cf, keys::seq(seq))
            .map_err(db_err("reading an audit entry"))
    }

    /// Overwrites (or, with `None`, removes) one stored entry's raw value, bypassing the
    /// chain. Only for tests and tools that demonstrate tamper detection: nothing in the
    /// daemon calls it.
    pub fn audit_tamper(&self, seq: u64, value: Option<&[u8]>) -> Result<(), IndexError> {
        let cf = self.cf(cf::AUDIT)?;
        match value {
            Some(v) => self.db.put_cf(&cf, keys::seq(seq), v),
            None => self.db.delete_cf(&cf, keys::seq(seq)),
        }
        .map_err(db_err("tampering with an audit entry"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::IndexOptions;

    #[test]
    fn action_words_match_serde() {
        for (a, name) in ALL_ACTIONS {
            assert_eq!(serde_json::to_value(a).unwrap(), *name);
            assert_eq!(a.as_str(), *name);
            assert_eq!(AuditAction::parse(name), Some(*a));
        }
    }

    fn entry(i: u64) -> AuditEntry {
        AuditEntry::new(
            1000 + i,
            format!("user:u{}", i % 3),
            AuditAction::ManifestPush,
        )
        .repo(format!("p{}/app", i % 2))
        .target(format!("t{i}"))
        .addr(Some("127.0.0.1:1".into()))
    }

    fn write(idx: &Index, n: u64) {
        for i in 0..n {
            let mut b = Batch::new();
            b.audit(entry(i));
            idx.commit(b).unwrap();
        }
    }

    #[test]
    fn entries_chain_and_verify_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let idx = Index::open(dir.path(), IndexOptions::default()).unwrap();
            write(&idx, 5);
            // Several entries in one batch, and a batch group, chain in order too.
            let mut b = Batch::new();
            b.audit(entry(5));
            b.audit(entry(6));
            idx.commit(b).unwrap();
        }
        let idx = Index::open(dir.path(), IndexOptions::default()).unwrap();
        write(&idx, 1);
        assert_eq!(idx.audit_last_seq().unwrap(), 8);
        let all = idx.audit_query(&AuditFilter::default()).unwrap();
        assert_eq!(
            all.iter().map(|r| r.seq).collect::<Vec<_>>(),
            (1..=8).collect::<Vec<_>>()
        );
        for w in all.windows(2) {
            assert_eq!(w[1].prev, w[0].hash);
        }
        let r = idx.audit_verify().unwrap();
        assert_eq!((r.checked, r.first_seq, r.last_seq), (8, 1, 8));
        assert!(r.problems.is_empty(), "{:?}", r.problems);
    }

    #[test]
    fn queries_filter() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(dir.path(), IndexOptions::default()).unwrap();
        write(&idx, 9);
        let q = |f: AuditFilter| {
            idx.audit_query(&f)
                .unwrap()
                .into_iter()
                .map(|r| r.seq)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            q(AuditFilter {
                actor: Some("u1".into()),
                ..Default::default()
            }),
            vec![2, 5, 8]
        );
        assert_eq!(
            q(AuditFilter {
                actor: Some("user:u1".into()),
                repo: Some("p1/".into()),
                ..Default::default()
            }),
            vec![2, 8]
        );
        assert_eq!(
            q(AuditFilter {
                since_ms: Some(1003),
                until_ms: Some(1005),
                ..Default::default()
            }),
            vec![4, 5]
        );
        assert_eq!(
            q(AuditFilter {
                after_seq: 6,
                limit: 2,
                ..Default::default()
            }),
            vec![7, 8]
        );
        assert!(q(AuditFilter {
            action: Some(AuditAction::Login),
            ..Default::default()
        })
        .is_empty());
    }

    fn delete_meta(idx: &Index, key: &[u8]) {
        let meta = idx.cf(cf::META).unwrap();
        idx.db.delete_cf(&meta, key).unwrap();
    }

    #[test]
    fn a_removed_head_is_reported_and_never_lets_the_chain_overwrite_entries() {
        let dir = tempfile::tempdir().unwrap();
        let before = {
            let idx = Index::open(dir.path(), IndexOptions::default()).unwrap();
            write(&idx, 3);
            assert_eq!(idx.audit_head_behind(), None);
            delete_meta(&idx, crate::META_AUDIT_HEAD);
            let r = idx.audit_verify().unwrap();
            assert_eq!(
                r.problems,
                vec![AuditProblem::BeyondHead { from: 1, to: 3 }]
            );
            idx.audit_query(&AuditFilter::default()).unwrap()
        };
        // Reopened, the chain goes on after the last stored entry (not from 1 again), and
        // says so.
        let idx = Index::open(dir.path(), IndexOptions::default()).unwrap();
        assert_eq!(idx.audit_head_behind(), Some((0, 3)));
        write(&idx, 1);
        let after = idx.audit_query(&AuditFilter::default()).unwrap();
        assert_eq!(after.len(), 4);
        for (a, b) in before.iter().zip(&after) {
            assert_eq!((a.seq, a.hash), (b.seq, b.hash), "an entry was overwritten");
        }
        assert_eq!(after[3].prev, after[2].hash);
        assert!(idx.audit_verify().unwrap().problems.is_empty());
    }

    #[test]
    fn an_anchor_moved_without_retention_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(dir.path(), IndexOptions::default()).unwrap();
        write(&idx, 5);
        // Remove the first two entries and move the anchor past them, as retention would, but
        // without its audit_prune entry.
        let second = idx.audit_query(&AuditFilter::default()).unwrap()[1].clone();
        let mut b = Batch::new();
        b.del(cf::AUDIT, keys::seq(1).to_vec());
        b.del(cf::AUDIT, keys::seq(2).to_vec());
        b.put(
            cf::META,
            META_AUDIT_ANCHOR.to_vec(),
            Chain {
                seq: 2,
                hash: second.hash,
            }
            .encode(),
        );
        idx.commit(b).unwrap();
        let r = idx.audit_verify().unwrap();
        assert_eq!(r.problems, vec![AuditProblem::AnchorUnexplained { seq: 2 }]);
    }

    fn tampered(f: impl FnOnce(&Index)) -> Vec<AuditProblem> {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(dir.path(), IndexOptions::default()).unwrap();
        write(&idx, 6);
        f(&idx);
        idx.audit_verify().unwrap().problems
    }

    #[test]
    fn an_edited_entry_is_named() {
        let problems = tampered(|idx| {
            let mut v = idx.audit_raw(3).unwrap().unwrap();
            let text = String::from_utf8(v[64..].to_vec()).unwrap();
            let edited = text.replace("user:u2", "user:u9");
            assert_ne!(text, edited);
            v.truncate(64);
            v.extend_from_slice(edited.as_bytes());
            idx.audit_tamper(3, Some(&v)).unwrap();
        });
        assert_eq!(problems, vec![AuditProblem::Altered { seq: 3 }]);
    }

    #[test]
    fn an_edited_entry_with_a_recomputed_hash_breaks_the_next_link() {
        let problems = tampered(|idx| {
            let v = idx.audit_raw(3).unwrap().unwrap();
            let mut prev = [0u8; 32];
            prev.copy_from_slice(&v[..32]);
            let json = br#"{"ts_ms":1,"actor":"user:mallory","action":"login","outcome":"ok"}"#;
            let hash = entry_hash(&prev, 3, json);
            let mut nv = prev.to_vec();
            nv.extend_from_slice(&hash);
            nv.extend_from_slice(json);
            idx.audit_tamper(3, Some(&nv)).unwrap();
        });
        assert_eq!(problems, vec![AuditProblem::BrokenLink { seq: 4 }]);
    }

    #[test]
    fn a_removed_entry_is_named() {
        let problems = tampered(|idx| idx.audit_tamper(4, None).unwrap());
        assert_eq!(problems, vec![AuditProblem::Missing { from: 4, to: 4 }]);
        let problems = tampered(|idx| idx.audit_tamper(6, None).unwrap());
        assert_eq!(problems, vec![AuditProblem::Missing { from: 6, to: 6 }]);
    }

    #[test]
    fn reordered_entries_are_named() {
        let problems = tampered(|idx| {
            let a = idx.audit_raw(2).unwrap().unwrap();
            let b = idx.audit_raw(3).unwrap().unwrap();
            idx.audit_tamper(2, Some(&b)).unwrap();
            idx.audit_tamper(3, Some(&a)).unwrap();
        });
        assert!(
            problems.contains(&AuditProblem::Altered { seq: 2 }),
            "{problems:?}"
        );
        assert!(
            problems.contains(&AuditProblem::Altered { seq: 3 }),
            "{problems:?}"
        );
    }

    #[test]
    fn retention_moves_the_anchor_and_the_rest_still_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(dir.path(), IndexOptions::default()).unwrap();
        write(&idx, 6);
        // Entries 1..=3 have ts 1000..=1002.
        let (batch, n) = idx
            .audit_prune_batch(1003, 100, "system:retention", 5000)
            .unwrap()
            .unwrap();
        assert_eq!(n, 3);
        idx.commit(batch).unwrap();
        let r = idx.audit_verify().unwrap();
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert_eq!((r.first_seq, r.last_seq), (4, 7));
        let last = idx.audit_query(&AuditFilter::default()).unwrap();
        assert_eq!(last.first().unwrap().seq, 4);
        assert_eq!(last.last().unwrap().entry.action, AuditAction::AuditPrune);
        assert!(idx.audit_prune_batch(1003, 100, "x", 1).unwrap().is_none());
    }
}
