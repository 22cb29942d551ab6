//! The reference index: repositories, tags, manifests, blob states, reverse references,
//! referrers, upload sessions and the ordered change feed, in RocksDB.
//!
//! Every change goes through [`Index::commit`], which writes one [`Batch`] together with its
//! change-feed entries in a single synced RocksDB write. Feed sequence numbers are allocated under
//! the commit lock, so the feed's order is the commit order and a reader that has seen sequence
//! `n` has seen every change up to `n`.
//!
//! The index knows nothing of HTTP, gRPC or of the rules that decide what may be written (that is
//! `stowage-store`'s job); it offers typed reads and a typed batch builder.

pub mod accounts;
pub mod audit;
mod feed_trim;
pub mod keys;
pub mod records;
pub mod repl_state;
mod tag_index;
mod tuning;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rocksdb::{
    BoundColumnFamily, ColumnFamilyDescriptor, DBWithThreadMode, Direction, IteratorMode,
    MultiThreaded, Options, ReadOptions, WriteBatch, WriteOptions,
};
use stowage_core::{Descriptor, Digest, RepoName};

pub use records::{
    BlobRecord, BlobState, Event, EventKind, HoldKind, ManifestRecord, Quarantine,
    QuarantineReason, RefKind, RepoRecord, TagRecord, UploadRecord,
};

mod scan;
mod snapshot;
mod snapshot_scan;
pub use audit::{
    AuditAction, AuditEntry, AuditFilter, AuditOutcome, AuditProblem, AuditRecord,
    AuditVerifyReport,
};
pub use snapshot::Snapshot;
pub use tuning::{Tuning, DEFAULT_BLOCK_CACHE_BYTES};

/// On-disk format version written at creation and checked at every open.
///
/// History: 1 = first release; 2 = adds `holders` (who holds each digest, digest-major),
/// `pending` (publish intents) and `gc_runs`. Version 1 indexes are migrated at open by
/// building `holders` from `repo_blobs` and `manifests`. 3 = adds `audit` (the hash-chained
/// audit log) and `accounts` (users, robots, roles, projects); both start empty, so a
/// version 2 index needs no migration, but a version 2 build must not open it. 4 = adds
/// `tag_digests` (which tags point at a digest, repository-major) so finding a manifest's tags
/// reads only those tags; indexes of versions 1 to 3 are migrated at open by building it from
/// `tags`. 5 = adds `repl_state`: tag and manifest tombstones, replication cursors and transfer
/// sessions under typed binary keys and values (see [`repl_state`]) instead of JSON under
/// string keys in `meta`; older indexes are migrated at open by moving those entries.
pub const FORMAT_VERSION: u32 = 5;

type Db = DBWithThreadMode<MultiThreaded>;

/// Column family names.
mod cf {
    pub const META: &str = "meta";
    pub const BLOBS: &str = "blobs";
    pub const REPO_BLOBS: &str = "repo_blobs";
    pub const REPOS: &str = "repos";
    pub const TAGS: &str = "tags";
    pub const MANIFESTS: &str = "manifests";
    pub const MANIFEST_BYTES: &str = "manifest_bytes";
    pub const REFS: &str = "refs";
    pub const REFERRERS: &str = "referrers";
    pub const UPLOADS: &str = "uploads";
    pub const FEED: &str = "feed";
    pub const HOLDERS: &str = "holders";
    pub const PENDING: &str = "pending";
    pub const GC_RUNS: &str = "gc_runs";
    pub const AUDIT: &str = "audit";
    pub const ACCOUNTS: &str = "accounts";
    pub const TAG_DIGESTS: &str = "tag_digests";
    pub const REPL_STATE: &str = "repl_state";
    pub const ALL: [&str; 18] = [
        META,
        BLOBS,
        REPO_BLOBS,
        REPOS,
        TAGS,
        MANIFESTS,
        MANIFEST_BYTES,
        REFS,
        REFERRERS,
        UPLOADS,
        FEED,
        HOLDERS,
        PENDING,
        GC_RUNS,
        AUDIT,
        ACCOUNTS,
        TAG_DIGESTS,
        REPL_STATE,
    ];
}

const META_FORMAT: &[u8] = b"format_version";
const META_SEQ: &[u8] = b"feed_seq";
/// The highest feed sequence removed by trimming (absent: nothing trimmed).
const META_FEED_TRIMMED: &[u8] = b"feed_trimmed_to";
/// The audit log's head: last audit sequence number and its hash.
const META_AUDIT_HEAD: &[u8] = b"audit_head";
/// The audit log's retention anchor: the last entry removed and its hash.
const META_AUDIT_ANCHOR: &[u8] = b"audit_anchor";
/// Prefix of the extension keyspace in `meta` (see [`Batch::put_meta`]).
const META_EXT: &[u8] = b"x\0";

/// A key and value of the extension keyspace.
pub type MetaEntry = (Vec<u8>, Vec<u8>);

fn meta_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(META_EXT.len() + key.len());
    k.extend_from_slice(META_EXT);
    k.extend_from_slice(key);
    k
}

/// Index errors. Every variant says what was being done.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// RocksDB failed.
    #[error("rocksdb: {context}: {source}")]
    Db {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: rocksdb::Error,
    },
    /// Stored bytes did not decode.
    #[error("index corrupt: {0}")]
    Corrupt(String),
    /// A value to be written does not fit its stored layout; nothing was written.
    #[error("cannot encode {what}: {len} bytes, at most {max}")]
    TooLong {
        /// Which field.
        what: String,
        /// Its length.
        len: usize,
        /// The layout's limit.
        max: usize,
    },
    /// The database was written by an incompatible version.
    #[error("index at {path} has format version {found}, this build reads {expected}")]
    FormatVersion {
        /// Where.
        path: PathBuf,
        /// Found on disk.
        found: String,
        /// What this build reads.
        expected: u32,
    },
}

type CommitSlot = Arc<Mutex<Option<Result<u64, IndexError>>>>;

/// Locks a mutex whose data stays consistent even if a holder panicked (plain values replaced
/// whole), so poisoning is ignored.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl IndexError {
    /// A copy for every waiter of a failed group commit.
    fn duplicate(&self) -> IndexError {
        match self {
            IndexError::Db { context, source } => IndexError::Db {
                context: context.clone(),
                source: source.clone(),
            },
            IndexError::Corrupt(m) => IndexError::Corrupt(m.clone()),
            IndexError::TooLong { what, len, max } => IndexError::TooLong {
                what: what.clone(),
                len: *len,
                max: *max,
            },
            IndexError::FormatVersion {
                path,
                found,
                expected,
            } => IndexError::FormatVersion {
                path: path.clone(),
                found: found.clone(),
                expected: *expected,
            },
        }
    }
}

fn db_err(context: impl Into<String>) -> impl FnOnce(rocksdb::Error) -> IndexError {
    let context = context.into();
    move |source| IndexError::Db { context, source }
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, IndexError> {
    serde_json::from_slice(bytes).map_err(|e| IndexError::Corrupt(format!("{what}: {e}")))
}

fn decode_ms(bytes: &[u8]) -> Result<u64, IndexError> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| IndexError::Corrupt(format!("timestamp of {} bytes", bytes.len())))?;
    Ok(u64::from_be_bytes(arr))
}

/// Encodes a record, failing loudly instead of writing an empty value.
fn encode_checked<T: serde::Serialize>(what: &str, value: &T) -> Result<Vec<u8>, IndexError> {
    serde_json::to_vec(value).map_err(|e| IndexError::Corrupt(format!("encoding {what}: {e}")))
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Serialising these plain records cannot fail (no maps with non-string keys, no I/O).
    serde_json::to_vec(value).unwrap_or_default()
}

/// Options for opening the index.
#[derive(Clone, Debug)]
pub struct IndexOptions {
    /// fsync the WAL on every commit (default true). Off only for benchmarks and bulk loads.
    pub sync_writes: bool,
    /// Column family options (block cache, filters, prefix extractors).
    pub tuning: Tuning,
}

impl Default for IndexOptions {
    fn default() -> Self {
        Self {
            sync_writes: true,
            tuning: Tuning::default(),
        }
    }
}

/// The open index.
pub struct Index {
    db: Db,
    path: PathBuf,
    /// Next feed sequence number to allocate and the audit chain's end; held for the whole
    /// write, so the feed and the audit log are in commit order.
    next_seq: Mutex<Heads>,
    /// Batches waiting for the next group commit, each with the slot its result goes to.
    queue: Mutex<Vec<(Batch, CommitSlot)>>,
    sync_writes: bool,
    /// At open, the recorded audit head was missing or behind the stored entries:
    /// `(recorded, stored)` last sequence numbers. The chain went on from the stored end.
    audit_head_behind: Option<(u64, u64)>,
    /// Held by a feed trim from reading the trimmed point to committing the new one, so two
    /// trims never move it backwards.
    trim: Mutex<()>,
    /// How the column families were opened (scans need to know which have prefix extractors).
    tuning: Tuning,
    /// The block cache every column family shares (held for the database's lifetime).
    _cache: Option<rocksdb::Cache>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index").field("path", &self.path).finish()
    }
}

/// What the commit lock guards: where the feed and the audit chain go on.
#[derive(Debug, Default)]
struct Heads {
    /// Next feed sequence number.
    seq: u64,
    /// The audit chain's end.
    audit: audit::Chain,
}

/// A change being assembled. Nothing is visible until [`Index::commit`].
pub struct Batch {
    events: Vec<Event>,
    ops: Vec<Op>,
    audit: Vec<AuditEntry>,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("ops", &self.ops.len())
            .field("events", &self.events.len())
            .field("audit", &self.audit.len())
            .finish()
    }
}

/// Operations are recorded and applied at commit time (so the builder needs no borrow of the DB).
enum Op {
    Put(&'static str, Vec<u8>, Vec<u8>),
    Delete(&'static str, Vec<u8>),
    /// Removes every key in `[from, to)`.
    DeleteRange(&'static str, Vec<u8>, Vec<u8>),
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self {
            events: Vec::new(),
            ops: Vec::new(),
            audit: Vec::new(),
        }
    }

    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.events.is_empty() && self.audit.is_empty()
    }

    fn put(&mut self, cf: &'static str, k: Vec<u8>, v: Vec<u8>) {
        self.ops.push(Op::Put(cf, k, v));
    }

    fn del(&mut self, cf: &'static str, k: Vec<u8>) {
        self.ops.push(Op::Delete(cf, k));
    }

    /// Sets an entry of the extension keyspace (the site name, scrub state, parked replication
    /// entries): small values that other crates own, kept in the `meta` column family under a
    /// prefix of their own so they never collide with the index's bookkeeping. Replication
    /// state with a fixed shape has typed entries instead (see [`repl_state`]).
    pub fn put_meta(&mut self, key: &[u8], value: Vec<u8>) {
        self.put(cf::META, meta_key(key), value);
    }

    /// Removes an entry of the extension keyspace.
    pub fn delete_meta(&mut self, key: &[u8]) {
        self.del(cf::META, meta_key(key));
    }

    /// Records a change-feed event, written with this batch.
    pub fn event(&mut self, event: Event) {
        self.events.push(event);
    }

    /// Sets a blob's record.
    pub fn put_blob(&mut self, digest: &Digest, rec: &BlobRecord) {
        self.put(cf::BLOBS, keys::digest_key(digest), encode(rec));
    }

    /// Removes a blob's record entirely.
    pub fn delete_blob(&mut self, digest: &Digest) {
        self.del(cf::BLOBS, keys::digest_key(digest));
    }

    /// Links a blob into a repository (or refreshes the link's time). Also records the
    /// repository as a holder of the blob.
    pub fn link_blob(&mut self, repo: &RepoName, digest: &Digest, at_ms: u64) {
        self.put(
            cf::REPO_BLOBS,
            keys::repo_digest(repo, digest),
            at_ms.to_be_bytes().to_vec(),
        );
        self.put(
            cf::HOLDERS,
            keys::holder(digest, HoldKind::Link as u8, repo),
            at_ms.to_be_bytes().to_vec(),
        );
    }

    /// Unlinks a blob from a repository.
    pub fn unlink_blob(&mut self, repo: &RepoName, digest: &Digest) {
        self.del(cf::REPO_BLOBS, keys::repo_digest(repo, digest));
        self.del(
            cf::HOLDERS,
            keys::holder(digest, HoldKind::Link as u8, repo),
        );
    }

    /// Adds a repository to the catalog.
    pub fn put_repo(&mut self, repo: &RepoName, rec: &RepoRecord) {
        self.put(cf::REPOS, repo.as_str().as_bytes().to_vec(), encode(rec));
    }

    /// Points a tag at a manifest. `previous` is the digest the tag pointed at until now
    /// (read by the caller under the tag's lock), so the digest-to-tags entry moves with it.
    pub fn put_tag(
        &mut self,
        repo: &RepoName,
        tag: &str,
        rec: &TagRecord,
        previous: Option<&Digest>,
    ) {
        if let Some(prev) = previous.filter(|p| **p != rec.digest) {
            self.del(cf::TAG_DIGESTS, keys::tag_digest(repo, prev, tag));
        }
        self.put(cf::TAGS, keys::repo_tag(repo, tag), encode(rec));
        self.put(
            cf::TAG_DIGESTS,
            keys::tag_digest(repo, &rec.digest, tag),
            Vec::new(),
        );
    }

    /// Removes a tag that points at `digest` (read by the caller under the tag's lock).
    pub fn delete_tag(&mut self, repo: &RepoName, tag: &str, digest: &Digest) {
        self.del(cf::TAGS, keys::repo_tag(repo, tag));
        self.del(cf::TAG_DIGESTS, keys::tag_digest(repo, digest, tag));
    }

    /// Stores a manifest record for a repository (and the repository as a holder of it).
    pub fn put_manifest(&mut self, repo: &RepoName, digest: &Digest, rec: &ManifestRecord) {
        self.put(cf::MANIFESTS, keys::repo_digest(repo, digest), encode(rec));
        self.put(
            cf::HOLDERS,
            keys::holder(digest, HoldKind::Manifest as u8, repo),
            rec.created_ms.to_be_bytes().to_vec(),
        );
    }

    /// Removes a repository's manifest record.
    pub fn delete_manifest(&mut self, repo: &RepoName, digest: &Digest) {
        self.del(cf::MANIFESTS, keys::repo_digest(repo, digest));
        self.del(
            cf::HOLDERS,
            keys::holder(digest, HoldKind::Manifest as u8, repo),
        );
    }

    /// Records that `upload` is about to publish bytes as `digest` (see [`Index::put_pending`]);
    /// committed on its own, synced, before the bytes are published.
    pub fn put_pending(&mut self, digest: &Digest, upload: &str, at_ms: u64) {
        self.put(
            cf::PENDING,
            keys::pending(digest, upload),
            at_ms.to_be_bytes().to_vec(),
        );
    }

    /// Clears the publish intent of `upload` for `digest` (written with the blob's record).
    pub fn clear_pending(&mut self, digest: &Digest, upload: &str) {
        self.del(cf::PENDING, keys::pending(digest, upload));
    }

    /// Stores a garbage-collection run's report (JSON written by `stowage-gc`).
    pub fn put_gc_run(&mut self, run_id: u64, report: Vec<u8>) {
        self.put(cf::GC_RUNS, keys::seq(run_id).to_vec(), report);
    }

    /// Stores the exact bytes of a manifest (shared by every repository that holds it).
    pub fn put_manifest_bytes(&mut self, digest: &Digest, bytes: &[u8]) {
        self.put(cf::MANIFEST_BYTES, keys::digest_key(digest), bytes.to_vec());
    }

    /// Removes the exact bytes of a manifest.
    pub fn delete_manifest_bytes(&mut self, digest: &Digest) {
        self.del(cf::MANIFEST_BYTES, keys::digest_key(digest));
    }

    /// Records that `manifest` in `repo` references `target`.
    pub fn put_ref(&mut self, target: &Digest, repo: &RepoName, manifest: &Digest, kind: RefKind) {
        self.put(
            cf::REFS,
            keys::reference(target, repo, manifest),
            vec![kind as u8],
        );
    }

    /// Removes a reverse reference.
    pub fn delete_ref(&mut self, target: &Digest, repo: &RepoName, manifest: &Digest) {
        self.del(cf::REFS, keys::reference(target, repo, manifest));
    }

    /// Records `referrer` as a referrer of `subject` in `repo`.
    pub fn put_referrer(
        &mut self,
        repo: &RepoName,
        subject: &Digest,
        referrer: &Digest,
        desc: &Descriptor,
    ) {
        self.put(
            cf::REFERRERS,
            keys::referrer(repo, subject, referrer),
            encode(desc),
        );
    }

    /// Removes a referrer entry.
    pub fn delete_referrer(&mut self, repo: &RepoName, subject: &Digest, referrer: &Digest) {
        self.del(cf::REFERRERS, keys::referrer(repo, subject, referrer));
    }

    /// Records an upload session.
    pub fn put_upload(&mut self, id: &str, rec: &UploadRecord) {
        self.put(cf::UPLOADS, id.as_bytes().to_vec(), encode(rec));
    }

    /// Removes an upload session.
    pub fn delete_upload(&mut self, id: &str) {
        self.del(cf::UPLOADS, id.as_bytes().to_vec());
    }
}

impl Index {
    /// Opens (creating if absent) the index at `path`.
    pub fn open(path: &Path, opts: IndexOptions) -> Result<Index, IndexError> {
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(2);
        db_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        db_opts.set_keep_log_file_num(4);
        let cache = opts.tuning.cache();
        let descriptors = cf::ALL.iter().map(|name| {
            ColumnFamilyDescriptor::new(*name, opts.tuning.cf_options(name, cache.as_ref()))
        });
        let db = Db::open_cf_descriptors(&db_opts, path, descriptors)
            .map_err(db_err(format!("opening index at {}", path.display())))?;
        let index = Index {
            db,
            path: path.to_path_buf(),
            next_seq: Mutex::new(Heads::default()),
            queue: Mutex::new(Vec::new()),
            sync_writes: opts.sync_writes,
            audit_head_behind: None,
            trim: Mutex::new(()),
            tuning: opts.tuning,
            _cache: cache,
        };
        let mut index = index;
        index.check_format()?;
        let last = index.last_seq()?;
        let mut audit = index.audit_head()?;
        // The chain never goes on from a point before an entry that is stored: a removed or
        // rolled-back head would make the next entry overwrite evidence. It goes on from the
        // last stored entry instead, and the mismatch is reported (the store records it).
        if let Some(stored) = index.audit_stored_end()? {
            if stored.seq > audit.seq {
                index.audit_head_behind = Some((audit.seq, stored.seq));
                audit = stored;
            }
        }
        *index.lock_seq() = Heads {
            seq: last + 1,
            audit,
        };
        Ok(index)
    }

    fn check_format(&self) -> Result<(), IndexError> {
        let meta = self.cf(cf::META)?;
        let found = self
            .db
            .get_cf(&meta, META_FORMAT)
            .map_err(db_err("reading format version"))?;
        let write_version = || {
            let mut opts = WriteOptions::default();
            opts.set_sync(true);
            self.db
                .put_cf_opt(&meta, META_FORMAT, FORMAT_VERSION.to_string(), &opts)
                .map_err(db_err("writing format version"))
        };
        match found {
            None => write_version(),
            Some(v) if v == b"1" || v == b"2" || v == b"3" || v == b"4" => {
                if v == b"1" {
                    self.migrate_v1_holders()?;
                }
                // Format 3 only adds column families, created empty at open; format 4 adds
                // the digest-to-tags index, built from the tags; format 5 moves replication
                // state out of `meta` into typed entries.
                if v != b"4" {
                    self.migrate_v3_tag_digests()?;
                }
                self.migrate_v4_repl_state()?;
                write_version()?;
                tracing::info!(
                    path = %self.path.display(),
                    from = %String::from_utf8_lossy(&v),
                    "index migrated to format {FORMAT_VERSION}"
                );
                Ok(())
            }
            Some(v) if v == FORMAT_VERSION.to_string().as_bytes() => Ok(()),
            Some(v) => Err(IndexError::FormatVersion {
                path: self.path.clone(),
                found: String::from_utf8_lossy(&v).into_owned(),
                expected: FORMAT_VERSION,
            }),
        }
    }

    /// Format 1 -> 2: builds `holders` from the blob links and manifest records. Idempotent
    /// (puts only), so a crash half way is finished by the next open.
    fn migrate_v1_holders(&self) -> Result<(), IndexError> {
        let holders = self.cf(cf::HOLDERS)?;
        let mut wb = WriteBatch::default();
        let flush = |wb: &mut WriteBatch, force: bool| -> Result<(), IndexError> {
            if wb.len() >= 10_000 || (force && !wb.is_empty()) {
                let done = std::mem::take(wb);
                self.db
                    .write(done)
                    .map_err(db_err("writing migrated holders"))?;
            }
            Ok(())
        };
        let mut pending: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        self.scan(cf::REPO_BLOBS, b"", b"", |k, v| {
            let (repo, rest) = keys::take_repo(k)?;
            let (digest, _) = keys::take_digest(rest)?;
            pending.push((
                keys::holder(&digest, HoldKind::Link as u8, &repo),
                v.to_vec(),
            ));
            Ok(true)
        })?;
        self.scan(cf::MANIFESTS, b"", b"", |k, v| {
            let (repo, rest) = keys::take_repo(k)?;
            let (digest, _) = keys::take_digest(rest)?;
            let rec: ManifestRecord = decode("manifests", v)?;
            pending.push((
                keys::holder(&digest, HoldKind::Manifest as u8, &repo),
                rec.created_ms.to_be_bytes().to_vec(),
            ));
            Ok(true)
        })?;
        for (k, v) in pending {
            wb.put_cf(&holders, k, v);
            flush(&mut wb, false)?;
        }
        flush(&mut wb, true)?;
        self.db.flush_wal(true).map_err(db_err("syncing migration"))
    }

    fn lock_seq(&self) -> std::sync::MutexGuard<'_, Heads> {
        // A panic while holding this lock cannot leave the counter inconsistent (it is only
        // advanced after a successful write), so a poisoned lock is safe to reuse.
        self.next_seq
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn cf(&self, name: &str) -> Result<std::sync::Arc<BoundColumnFamily<'_>>, IndexError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| IndexError::Corrupt(format!("column family {name} missing")))
    }

    /// Where the index lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `batch` and its events atomically, returning the sequence number of the last event
    /// written (or the current last sequence when the batch has no events).
    ///
    /// Group commit: callers queue their batch and then contend for the writer lock. Whoever
    /// gets it writes every queued batch, in queue order, as one synced RocksDB write, and
    /// leaves each caller its result; a caller that finds its result already there returns it.
    /// So under concurrency many changes share one fsync, while each caller still returns only
    /// once its own change is durable, and feed order remains commit order.
    pub fn commit(&self, batch: Batch) -> Result<u64, IndexError> {
        let slot: Arc<Mutex<Option<Result<u64, IndexError>>>> = Arc::new(Mutex::new(None));
        lock(&self.queue).push((batch, slot.clone()));
        let mut next = self.lock_seq();
        let done = lock(&slot).take();
        if let Some(done) = done {
            return done;
        }
        let group = std::mem::take(&mut *lock(&self.queue));
        let mut wb = WriteBatch::default();
        let mut seq = next.seq;
        let mut chain = next.audit;
        let mut lasts = Vec::with_capacity(group.len());
        let built: Result<(), IndexError> = (|| {
            let feed = self.cf(cf::FEED)?;
            let audit_cf = self.cf(cf::AUDIT)?;
            for (batch, _) in &group {
                for entry in &batch.audit {
                    let (aseq, value) = chain.append(entry)?;
                    wb.put_cf(&audit_cf, keys::seq(aseq), value);
                }
                for op in &batch.ops {
                    match op {
                        Op::Put(name, k, v) => wb.put_cf(&self.cf(name)?, k, v),
                        Op::Delete(name, k) => wb.delete_cf(&self.cf(name)?, k),
                        Op::DeleteRange(name, from, to) => {
                            wb.delete_range_cf(&self.cf(name)?, from, to)
                        }
                    }
                }
                for event in &batch.events {
                    wb.put_cf(&feed, keys::seq(seq), encode(event));
                    seq += 1;
                }
                lasts.push(seq - 1);
            }
            if seq != next.seq {
                wb.put_cf(&self.cf(cf::META)?, META_SEQ, (seq - 1).to_be_bytes());
            }
            if chain != next.audit {
                wb.put_cf(&self.cf(cf::META)?, META_AUDIT_HEAD, chain.encode());
            }
            let mut opts = WriteOptions::default();
            opts.set_sync(self.sync_writes);
            self.db.write_opt(wb, &opts).map_err(db_err(format!(
                "committing a group of {} batches",
                group.len()
            )))
        })();
        if built.is_ok() {
            next.seq = seq;
            next.audit = chain;
        }
        for ((_, waiter), last) in group.iter().zip(lasts.iter().chain(std::iter::repeat(&0))) {
            let result = match &built {
                Ok(()) => Ok(*last),
                Err(e) => Err(e.duplicate()),
            };
            *lock(waiter) = Some(result);
        }
        drop(next);
        let mine = lock(&slot).take();
        mine.unwrap_or_else(|| Err(IndexError::Corrupt("group commit lost a result".into())))
    }

    fn get<T: serde::de::DeserializeOwned>(
        &self,
        name: &'static str,
        key: &[u8],
    ) -> Result<Option<T>, IndexError> {
        let cf = self.cf(name)?;
        match self
            .db
            .get_pinned_cf(&cf, key)
            .map_err(db_err(format!("reading {name}")))?
        {
            Some(v) => Ok(Some(decode(name, &v)?)),
            None => Ok(None),
        }
    }

    fn exists(&self, name: &'static str, key: &[u8]) -> Result<bool, IndexError> {
        let cf = self.cf(name)?;
        Ok(self
            .db
            .get_pinned_cf(&cf, key)
            .map_err(db_err(format!("reading {name}")))?
            .is_some())
    }

    /// Visits `(key, value)` pairs starting at `start` while keys start with `prefix`; `visit`
    /// returns false to stop.
    fn scan(
        &self,
        name: &'static str,
        prefix: &[u8],
        start: &[u8],
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<bool, IndexError>,
    ) -> Result<(), IndexError> {
        let cf = self.cf(name)?;
        let mut ro = ReadOptions::default();
        if let Some(end) = keys::prefix_end(prefix) {
            ro.set_iterate_upper_bound(end);
        }
        if self.tuning.has_prefix(name) {
            if prefix.len() >= tuning::DIGEST_PREFIX_LEN && start.starts_with(prefix) {
                // Within one extractor prefix: the prefix bloom may skip files.
                ro.set_prefix_same_as_start(true);
            } else {
                // Crosses extractor prefixes: every key must be seen.
                ro.set_total_order_seek(true);
            }
        }
        let iter = self
            .db
            .iterator_cf_opt(&cf, ro, IteratorMode::From(start, Direction::Forward));
        for item in iter {
            let (k, v) = item.map_err(db_err(format!("scanning {name}")))?;
            if !k.starts_with(prefix) {
                break;
            }
            if !visit(&k, &v)? {
                break;
            }
        }
        Ok(())
    }

    /// The last feed sequence number written (0 when the feed is empty).
    pub fn last_seq(&self) -> Result<u64, IndexError> {
        let meta = self.cf(cf::META)?;
        match self
            .db
            .get_cf(&meta, META_SEQ)
            .map_err(db_err("reading feed sequence"))?
        {
            Some(v) => keys::take_seq(&v),
            None => Ok(0),
        }
    }

    /// The last stored audit entry's position, whatever the recorded head says.
    fn audit_stored_end(&self) -> Result<Option<audit::Chain>, IndexError> {
        let cf = self.cf(cf::AUDIT)?;
        let Some(item) = self.db.iterator_cf(&cf, IteratorMode::End).next() else {
            return Ok(None);
        };
        let (k, v) = item.map_err(db_err("reading the last audit entry"))?;
        let seq = keys::take_seq(&k)?;
        if v.len() < 64 {
            return Err(IndexError::Corrupt(format!(
                "audit entry {seq} is {} bytes long",
                v.len()
            )));
        }
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&v[32..64]);
        Ok(Some(audit::Chain { seq, hash }))
    }

    /// Whether, at open, the recorded audit head was missing or behind the stored entries:
    /// `(recorded, stored)` last sequence numbers.
    pub fn audit_head_behind(&self) -> Option<(u64, u64)> {
        self.audit_head_behind
    }

    /// The audit chain's end as stored (sequence 0 and a zero hash when the log is empty).
    fn audit_head(&self) -> Result<audit::Chain, IndexError> {
        match self.meta_raw(META_AUDIT_HEAD)? {
            Some(v) => audit::Chain::decode(&v),
            None => Ok(audit::Chain::default()),
        }
    }

    /// A `meta` value by its raw key (the index's own bookkeeping, outside the extension
    /// keyspace).
    fn meta_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, IndexError> {
        let meta = self.cf(cf::META)?;
        self.db
            .get_cf(&meta, key)
            .map_err(db_err("reading index metadata"))
    }

    /// A blob's record.
    pub fn blob(&self, digest: &Digest) -> Result<Option<BlobRecord>, IndexError> {
        self.get(cf::BLOBS, &keys::digest_key(digest))
    }

    /// Whether `digest` is linked into `repo`.
    pub fn repo_has_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool, IndexError> {
        self.exists(cf::REPO_BLOBS, &keys::repo_digest(repo, digest))
    }

    /// Whether the repository is in the catalog.
    pub fn repo_exists(&self, repo: &RepoName) -> Result<bool, IndexError> {
        self.exists(cf::REPOS, repo.as_str().as_bytes())
    }

    /// Catalog page: repository names after `last`, at most `n`, in lexical order.
    pub fn repos(&self, last: Option<&str>, n: usize) -> Result<Vec<RepoName>, IndexError> {
        let mut out = Vec::new();
        let start = match last {
            // Start just after `last`.
            Some(l) => {
                let mut s = l.as_bytes().to_vec();
                s.push(0);
                s
            }
            None => Vec::new(),
        };
        if n == 0 {
            return Ok(out);
        }
        self.scan(cf::REPOS, b"", &start, |k, _| {
            let name = std::str::from_utf8(k)
                .map_err(|e| IndexError::Corrupt(format!("repo key: {e}")))?;
            out.push(
                RepoName::parse(name).map_err(|e| IndexError::Corrupt(format!("repo key: {e}")))?,
            );
            Ok(out.len() < n)
        })?;
        Ok(out)
    }

    /// What a tag points at.
    pub fn tag(&self, repo: &RepoName, tag: &str) -> Result<Option<TagRecord>, IndexError> {
        self.get(cf::TAGS, &keys::repo_tag(repo, tag))
    }

    /// Tags of a repository after `last`, at most `n`, in lexical (byte) order.
    pub fn tags(
        &self,
        repo: &RepoName,
        last: Option<&str>,
        n: usize,
    ) -> Result<Vec<(String, TagRecord)>, IndexError> {
        let prefix = keys::repo_prefix(repo);
        let start = match last {
            Some(l) => {
                let mut s = keys::repo_tag(repo, l);
                s.push(0);
                s
            }
            None => prefix.clone(),
        };
        let mut out = Vec::new();
        if n == 0 {
            return Ok(out);
        }
        self.scan(cf::TAGS, &prefix, &start, |k, v| {
            let tag = std::str::from_utf8(&k[prefix.len()..])
                .map_err(|e| IndexError::Corrupt(format!("tag key: {e}")))?;
            out.push((tag.to_string(), decode("tags", v)?));
            Ok(out.len() < n)
        })?;
        Ok(out)
    }

    /// A repository's manifest record.
    pub fn manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<ManifestRecord>, IndexError> {
        self.get(cf::MANIFESTS, &keys::repo_digest(repo, digest))
    }

    /// All manifests of a repository.
    pub fn manifests(&self, repo: &RepoName) -> Result<Vec<(Digest, ManifestRecord)>, IndexError> {
        let prefix = keys::repo_prefix(repo);
        let mut out = Vec::new();
        self.scan(cf::MANIFESTS, &prefix, &prefix, |k, v| {
            let (d, _) = keys::take_digest(&k[prefix.len()..])?;
            out.push((d, decode("manifests", v)?));
            Ok(true)
        })?;
        Ok(out)
    }

    /// The exact bytes of a manifest.
    pub fn manifest_bytes(&self, digest: &Digest) -> Result<Option<Vec<u8>>, IndexError> {
        let cf = self.cf(cf::MANIFEST_BYTES)?;
        self.db
            .get_cf(&cf, keys::digest_key(digest))
            .map_err(db_err("reading manifest bytes"))
    }

    /// Whether the exact bytes of a manifest are stored (without reading them).
    pub fn has_manifest_bytes(&self, digest: &Digest) -> Result<bool, IndexError> {
        self.exists(cf::MANIFEST_BYTES, &keys::digest_key(digest))
    }

    /// Manifests (with their repository) that reference `target` as a blob or child.
    pub fn referencing(
        &self,
        target: &Digest,
    ) -> Result<Vec<(RepoName, Digest, RefKind)>, IndexError> {
        let prefix = keys::digest_key(target);
        let mut out = Vec::new();
        self.scan(cf::REFS, &prefix, &prefix, |k, v| {
            let (repo, rest) = keys::take_repo(&k[prefix.len()..])?;
            let (manifest, _) = keys::take_digest(rest)?;
            let kind = v
                .first()
                .and_then(|b| RefKind::from_byte(*b))
                .ok_or_else(|| IndexError::Corrupt("bad ref kind".into()))?;
            out.push((repo, manifest, kind));
            Ok(true)
        })?;
        Ok(out)
    }

    /// Referrers of `subject` in `repo`, ordered by referrer digest.
    pub fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
    ) -> Result<Vec<Descriptor>, IndexError> {
        let prefix = keys::repo_digest(repo, subject);
        let mut out = Vec::new();
        self.scan(cf::REFERRERS, &prefix, &prefix, |_, v| {
            out.push(decode("referrers", v)?);
            Ok(true)
        })?;
        Ok(out)
    }

    /// An upload session.
    pub fn upload(&self, id: &str) -> Result<Option<UploadRecord>, IndexError> {
        self.get(cf::UPLOADS, id.as_bytes())
    }

    /// All upload sessions.
    pub fn uploads(&self) -> Result<Vec<(String, UploadRecord)>, IndexError> {
        let mut out = Vec::new();
        self.scan(cf::UPLOADS, b"", b"", |k, v| {
            let id = String::from_utf8(k.to_vec())
                .map_err(|e| IndexError::Corrupt(format!("upload key: {e}")))?;
            out.push((id, decode("uploads", v)?));
            Ok(true)
        })?;
        Ok(out)
    }

    /// When `repo`'s link to `digest` was made or last refreshed (unix ms), if it exists.
    pub fn link_time(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>, IndexError> {
        let cf = self.cf(cf::REPO_BLOBS)?;
        match self
            .db
            .get_pinned_cf(&cf, keys::repo_digest(repo, digest))
            .map_err(db_err("reading blob link"))?
        {
            Some(v) => Ok(Some(decode_ms(&v)?)),
            None => Ok(None),
        }
    }

    /// Repositories holding `digest` as `kind`, with the link or manifest time (unix ms).
    pub fn holders(
        &self,
        digest: &Digest,
        kind: HoldKind,
    ) -> Result<Vec<(RepoName, u64)>, IndexError> {
        let mut prefix = keys::digest_key(digest);
        prefix.push(kind as u8);
        let mut out = Vec::new();
        self.scan(cf::HOLDERS, &prefix, &prefix, |k, v| {
            let (repo, _) = keys::take_repo(&k[prefix.len()..])?;
            out.push((repo, decode_ms(v)?));
            Ok(true)
        })?;
        Ok(out)
    }

    /// Manifests of `repo` that reference `target` (as a blob or a child).
    pub fn referencing_in(
        &self,
        target: &Digest,
        repo: &RepoName,
    ) -> Result<Vec<(Digest, RefKind)>, IndexError> {
        let mut prefix = keys::digest_key(target);
        keys::put_repo(&mut prefix, repo);
        let mut out = Vec::new();
        self.scan(cf::REFS, &prefix, &prefix, |k, v| {
            let (manifest, _) = keys::take_digest(&k[prefix.len()..])?;
            let kind = v
                .first()
                .and_then(|b| RefKind::from_byte(*b))
                .ok_or_else(|| IndexError::Corrupt("bad ref kind".into()))?;
            out.push((manifest, kind));
            Ok(true)
        })?;
        Ok(out)
    }

    /// Records that upload `upload` is about to publish bytes as `digest` (an intent, cleared
    /// by the batch that indexes the blob), without syncing: for tests and tools. The store
    /// writes intents with [`Batch::put_pending`] through a synced commit, so that an intent
    /// survives a power loss that the published bytes survive.
    pub fn put_pending(&self, digest: &Digest, upload: &str, at_ms: u64) -> Result<(), IndexError> {
        let cf = self.cf(cf::PENDING)?;
        self.db
            .put_cf(&cf, keys::pending(digest, upload), at_ms.to_be_bytes())
            .map_err(db_err(format!("recording publish intent for {digest}")))
    }

    /// Whether the publish intent of `upload` for `digest` is still recorded.
    pub fn has_pending(&self, digest: &Digest, upload: &str) -> Result<bool, IndexError> {
        self.exists(cf::PENDING, &keys::pending(digest, upload))
    }

    /// Publish intents: `(digest, upload id, since unix ms)`.
    pub fn pending(&self) -> Result<Vec<(Digest, String, u64)>, IndexError> {
        let mut out = Vec::new();
        self.scan(cf::PENDING, b"", b"", |k, v| {
            let (digest, rest) = keys::take_digest(k)?;
            let upload = String::from_utf8(rest.to_vec())
                .map_err(|e| IndexError::Corrupt(format!("pending key: {e}")))?;
            out.push((digest, upload, decode_ms(v)?));
            Ok(true)
        })?;
        Ok(out)
    }

    /// Stored garbage-collection reports, newest first, at most `limit`: `(run id, JSON)`.
    pub fn gc_runs(&self, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, IndexError> {
        let cf = self.cf(cf::GC_RUNS)?;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(&cf, IteratorMode::End) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(db_err("scanning gc runs"))?;
            out.push((keys::take_seq(&k)?, v.to_vec()));
        }
        Ok(out)
    }

    /// One stored garbage-collection report.
    pub fn gc_run(&self, run_id: u64) -> Result<Option<Vec<u8>>, IndexError> {
        let cf = self.cf(cf::GC_RUNS)?;
        self.db
            .get_cf(&cf, keys::seq(run_id))
            .map_err(db_err("reading gc run"))
    }

    /// An entry of the extension keyspace (see [`Batch::put_meta`]).
    pub fn meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, IndexError> {
        let cf = self.cf(cf::META)?;
        self.db
            .get_cf(&cf, meta_key(key))
            .map_err(db_err("reading extension metadata"))
    }

    /// Extension entries whose key starts with `prefix`, in key order (keys without the
    /// internal prefix).
    pub fn meta_scan(&self, prefix: &[u8]) -> Result<Vec<MetaEntry>, IndexError> {
        let full = meta_key(prefix);
        let mut out = Vec::new();
        self.scan(cf::META, &full, &full, |k, v| {
            out.push((k[META_EXT.len()..].to_vec(), v.to_vec()));
            Ok(true)
        })?;
        Ok(out)
    }

    /// A consistent point-in-time view of the whole index (for marking).
    pub fn snapshot(&self) -> Snapshot<'_> {
        Snapshot::new(self)
    }

    /// Feed entries with sequence `>= from`, at most `limit`.
    pub fn feed(&self, from: u64, limit: usize) -> Result<Vec<(u64, Event)>, IndexError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        self.scan(cf::FEED, b"", &keys::seq(from), |k, v| {
            out.push((keys::take_seq(k)?, decode("feed", v)?));
            Ok(out.len() < limit)
        })?;
        Ok(out)
    }

    fn estimate_keys(&self, name: &'static str) -> Result<u64, IndexError> {
        let cf = self.cf(name)?;
        Ok(self
            .db
            .property_int_value_cf(&cf, "rocksdb.estimate-num-keys")
            .map_err(db_err(format!("estimating keys of {name}")))?
            .unwrap_or(0))
    }

    /// Approximate number of blob records (RocksDB's estimate; cheap).
    pub fn estimate_blobs(&self) -> Result<u64, IndexError> {
        self.estimate_keys(cf::BLOBS)
    }

    /// Approximate number of manifest records across repositories.
    pub fn estimate_manifests(&self) -> Result<u64, IndexError> {
        self.estimate_keys(cf::MANIFESTS)
    }

    /// Flushes memtables and closes cleanly is done on drop; this forces a WAL sync for callers
    /// that opened with `sync_writes = false`.
    pub fn flush(&self) -> Result<(), IndexError> {
        self.db.flush_wal(true).map_err(db_err("syncing WAL"))?;
        self.db.flush().map_err(db_err("flushing memtables"))
    }
}

#[cfg(test)]
mod growth_tests;
#[cfg(test)]
mod repl_state_tests;
#[cfg(test)]
mod tests;
