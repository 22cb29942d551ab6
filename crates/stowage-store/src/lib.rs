//! The one writer: every change to stored content goes through [`Store`].
//!
//! `Store` expresses registry operations (upload, mount, manifest put, tag, delete, pull) over the
//! blob store (`stowage-cas`) and the index (`stowage-index`), and keeps the invariants that make
//! the pair safe:
//!
//! * bytes are durable before the index says they exist (upload commit publishes, then indexes);
//! * a manifest is accepted only if everything it references is present in the repository, and
//!   the check and the index write happen under shared per-digest locks that any remover must
//!   take exclusively ([`locks`]);
//! * every index change is written together with its change-feed entry and its audit entry
//!   in one batch.
//!
//! The store never authenticates: every mutating call carries the [`Actor`] the edge that
//! received the request decided on, and its surface is split by capability ([`handles`]): the
//! HTTP layer holds a [`ClientStore`], garbage collection a [`GcStore`], replication a
//! [`ReplicaStore`], access control an [`AccountStore`]; only the binary that wires them holds
//! the whole [`Store`].

mod accounts;
mod audit;
pub mod error;
pub mod fsck;
mod fsck_repair;
mod gc;
pub mod handles;
mod integrity;
pub mod locks;
mod manifests;
mod replica;
pub mod scrub;
mod seen;
mod staging;
pub mod task;
mod tombstones;
mod uploads;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use stowage_cas::{Backend, BlobStream, Cas, CasOptions};
use stowage_core::{Actor, Clock, Digest, RepoName, SystemClock};
use stowage_index::{AuditAction, AuditEntry, Event, EventKind, Index, IndexError, IndexOptions};

pub use accounts::{check_project_name, check_user_name};
pub use audit::{AuditStats, Auditor};
pub use error::{Result, StoreError};

pub use fsck::{Defect, Finding, FsckOptions, FsckReport};
pub use gc::{BlobSweep, LinkCandidate, PendingRepair};
pub use handles::{AccountStore, ClientStore, GcStore, ReplicaStore};
pub use integrity::{CorruptCheck, RepairReady};
pub use manifests::{ManifestContent, PutManifestOutcome};
pub use replica::{TagState, TagVersion};
pub use tombstones::TombstoneExpiry;
pub use uploads::UploadStatus;

/// A re-upload or mount of a blob already linked into the repository rewrites the link's time
/// when the link is older than this, restarting its garbage-collection grace period.
const LINK_REFRESH_MS: u64 = 60_000;

/// The index's default block cache (see [`stowage_index::Tuning`]).
pub const DEFAULT_INDEX_CACHE_BYTES: usize = stowage_index::DEFAULT_BLOCK_CACHE_BYTES;

/// How the store is set up.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Folder holding the index (`index/`) and, for the file system backend, the blobs.
    pub data_dir: PathBuf,
    /// Where blob bytes live. `None` means the file system under `<data_dir>/cas`.
    pub backend: Option<Backend>,
    /// Blob store tuning.
    pub cas: CasOptions,
    /// Largest blob accepted, in bytes.
    pub max_blob_size: u64,
    /// fsync the index WAL on each commit.
    pub sync_index: bool,
    /// This site's name, recorded as the origin of feed events. The name is fixed in the index
    /// on first start; later starts use the recorded one (see [`SiteName`]).
    pub site: Option<String>,
    /// Where `site` came from: an operator's explicit name must match the recorded one, a
    /// derived default (a container's hostname) gives way to it.
    pub site_source: SiteSource,
    /// Bounds on upload sessions, so that no one client can exhaust the daemon.
    pub limits: StoreLimits,
    /// Space kept free on the file system of the data dir (and of a local blob store): below it
    /// new blob bytes are refused with [`StoreError::StorageFull`], so the index (and RocksDB's
    /// compactions) always have room. 0 turns the check off.
    pub min_free_bytes: u64,
    /// How long a digest a client has just seen (a `HEAD` or `GET` that found it, an upload or
    /// mount that stored it) is kept from garbage collection, so that a push that skipped an
    /// existing layer does not fail on its manifest. Held for between one and two windows;
    /// 0 turns it off.
    pub seen_window_ms: u64,
    /// Column family options of the index (block cache size, filters).
    pub index_tuning: stowage_index::Tuning,
}

/// Bounds that keep one client or peer from exhausting the daemon. Beyond one, the request is
/// refused ([`StoreError::TooManyUploads`], [`StoreError::TooManyPins`]) and nothing stored
/// changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreLimits {
    /// Open upload sessions, all actors together.
    pub max_sessions: usize,
    /// Open upload sessions of one actor.
    pub max_sessions_per_actor: usize,
    /// Bytes staged in unfinished uploads, all together (checked as bytes arrive).
    pub max_staged_bytes: u64,
    /// Bytes staged in unfinished uploads of one actor.
    pub max_staged_bytes_per_actor: u64,
    /// Blobs replication may keep from garbage collection at once.
    pub max_pins: usize,
    /// Digests held as just seen by clients, per generation (see `seen_window_ms`); beyond it
    /// new ones are not held (counted in a metric).
    pub max_seen: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            max_sessions: 10_000,
            max_sessions_per_actor: 1_000,
            max_staged_bytes: 64 << 30,
            max_staged_bytes_per_actor: 32 << 30,
            max_pins: 100_000,
            max_seen: 1_000_000,
        }
    }
}

impl StoreConfig {
    /// Defaults for a data dir: file system backend, synced index, no blob size limit beyond
    /// 1 TiB.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            backend: None,
            cas: CasOptions::default(),
            max_blob_size: 1 << 40,
            sync_index: true,
            site: None,
            site_source: SiteSource::Default,
            limits: StoreLimits::default(),
            seen_window_ms: 10 * 60 * 1000,
            min_free_bytes: 1 << 30,
            index_tuning: stowage_index::Tuning::default(),
        }
    }
}

/// Where the configured site name came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SiteSource {
    /// Derived (the host name, or the built-in default): the name recorded in the index wins.
    #[default]
    Default,
    /// Named by the operator: a different recorded name stops the start.
    Explicit,
}

/// The index's `meta` key holding the site name fixed at first start.
const SITE_KEY: &[u8] = b"site";

/// Fixes the site name in the index on first start and returns the name this start uses.
/// Cursors, origins and replication grants all name sites; a name that changed with a
/// container's hostname would void them, so after the first start the recorded name stays.
fn fix_site_name(index: &Index, config: &StoreConfig) -> Result<Option<String>> {
    let recorded = index
        .meta(SITE_KEY)?
        .map(|v| {
            String::from_utf8(v)
                .map_err(|e| StoreError::Index(IndexError::Corrupt(format!("site name: {e}"))))
        })
        .transpose()?;
    match (recorded, &config.site) {
        (None, None) => Ok(None),
        (None, Some(name)) => {
            let mut batch = stowage_index::Batch::new();
            batch.put_meta(SITE_KEY, name.clone().into_bytes());
            index.commit(batch)?;
            tracing::info!(site = %name, "site name fixed in the index");
            Ok(Some(name.clone()))
        }
        (Some(recorded), Some(name)) if &recorded != name => match config.site_source {
            SiteSource::Explicit => Err(StoreError::SiteMismatch {
                recorded,
                configured: name.clone(),
            }),
            SiteSource::Default => {
                tracing::info!(
                    site = %recorded,
                    derived = %name,
                    "using the site name recorded at first start, not the derived one"
                );
                Ok(Some(recorded))
            }
        },
        (Some(recorded), _) => Ok(Some(recorded)),
    }
}

/// The index's `meta` key holding its instance id, made at first start.
const INSTANCE_KEY: &[u8] = b"instance";

/// The id of this index, made at its first start and kept with it (a restored backup keeps
/// it): the blob store is claimed under it (see `Cas::claim`).
fn index_instance(index: &Index) -> Result<String> {
    if let Some(v) = index.meta(INSTANCE_KEY)? {
        return String::from_utf8(v).map_err(|e| {
            StoreError::Index(IndexError::Corrupt(format!("index instance id: {e}")))
        });
    }
    let id = format!("stowage-index-{}", uuid::Uuid::new_v4());
    let mut batch = stowage_index::Batch::new();
    batch.put_meta(INSTANCE_KEY, id.clone().into_bytes());
    index.commit(batch)?;
    // Synced whatever `sync_index` says: the store is claimed under this id next, durably, and
    // an index that lost it in a crash would be refused its own store.
    index.flush()?;
    Ok(id)
}

/// Size and digest of a stored blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobInfo {
    /// Digest.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
    /// CRC-32C of the bytes, when the index has one.
    pub crc32c: Option<u32>,
}

/// A blob being read.
#[derive(Debug)]
pub struct BlobRead {
    /// Total size of the blob.
    pub size: u64,
    /// The byte range being returned (end exclusive); the whole blob when no range was asked.
    pub range: std::ops::Range<u64>,
    /// The bytes.
    pub stream: BlobStream,
}

/// The store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cas: Cas,
    index: Index,
    clock: Arc<dyn Clock>,
    locks: locks::DigestLocks,
    sessions: std::sync::Mutex<HashMap<String, uploads::Slot>>,
    /// Bytes held by unfinished uploads (staged parts), for [`StoreLimits::max_staged_bytes`]
    /// and [`StoreLimits::max_staged_bytes_per_actor`].
    staging: Arc<staging::Staging>,
    /// The writer of audit entries that record no change.
    auditor: audit::Writer,
    /// Serialises account changes (read-check-write of users, robots, grants).
    account_lock: tokio::sync::Mutex<()>,
    /// Index commits made for clients (pushes, tags, deletes) since start; background work
    /// (garbage collection) watches it to back off while clients are writing.
    client_commits: std::sync::atomic::AtomicU64,
    /// Last feed sequence committed; replication waits on it instead of polling.
    feed_tx: tokio::sync::watch::Sender<u64>,
    /// Blobs that garbage collection must keep until the given time (unix ms): blobs an
    /// outgoing replication transfer is sending, and blobs received for a manifest that has
    /// not arrived yet. Held in memory: after a restart the links' grace period covers them.
    pins: std::sync::Mutex<HashMap<Digest, u64>>,
    /// Digests clients have just seen (found with `HEAD`/`GET`, or stored), which garbage
    /// collection keeps for a window so that a push that skipped them still finds them.
    seen: seen::Seen,
    /// Serialise read-modify-write of one tag (local set, replicated set or delete).
    tag_locks: Vec<tokio::sync::Mutex<()>>,
    config: StoreConfig,
    /// Named points where a test can hold an operation between two of its steps.
    #[cfg(test)]
    pauses: tests::pause::Pauses,
    /// Dropped last, after the index: tells [`Store::close`] that the index's files are closed.
    closed: tokio::sync::watch::Sender<()>,
}

impl Store {
    /// Opens the store with the system clock.
    pub async fn open(config: StoreConfig) -> Result<Store> {
        Self::open_with_clock(config, Arc::new(SystemClock)).await
    }

    /// Lets go of this handle and waits until no other handle is left (a background task may
    /// still be finishing a write with one), so that the index is closed and its directory can
    /// be opened again in this process. Waits for ever if a handle is kept elsewhere.
    pub async fn close(self) {
        let mut closed = self.inner.closed.subscribe();
        drop(self);
        // Ends with an error when the sender, and so the whole store, is dropped.
        while closed.changed().await.is_ok() {}
    }

    /// Opens the store with `clock` (tests pass a manual clock).
    pub async fn open_with_clock(config: StoreConfig, clock: Arc<dyn Clock>) -> Result<Store> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StoreError::Io {
            op: "creating the data dir",
            path: config.data_dir.clone(),
            source,
        })?;
        let backend = config.backend.clone().unwrap_or(Backend::Filesystem {
            root: config.data_dir.join("cas"),
        });
        let remote = backend.is_remote();
        let cas = Cas::open(backend, config.cas.clone())?;
        if remote {
            // An object store that is unreachable or refuses writes is an error at start, not
            // at the first push.
            cas.probe(std::time::Duration::from_secs(20)).await?;
        }
        let index = {
            let path = config.data_dir.join("index");
            let opts = IndexOptions {
                sync_writes: config.sync_index,
                tuning: config.index_tuning.clone(),
            };
            tokio::task::spawn_blocking(move || Index::open(&path, opts))
                .await
                .map_err(|source| StoreError::Task {
                    task: "index open",
                    source,
                })??
        };
        let mut config = config;
        config.site = fix_site_name(&index, &config)?;
        cas.claim(&index_instance(&index)?).await?;
        let (feed_tx, _) = tokio::sync::watch::channel(index.last_seq()?);
        let staging = staging::Staging::new(
            index
                .uploads()?
                .into_iter()
                .map(|(_, r)| (r.owner, r.parts.iter().sum::<u64>())),
        );
        let (auditor, audit_rx) = audit::Writer::new();
        let store = Store {
            inner: Arc::new(Inner {
                cas,
                index,
                clock,
                locks: locks::DigestLocks::default(),
                sessions: std::sync::Mutex::new(HashMap::new()),
                staging: Arc::new(staging),
                auditor,
                account_lock: tokio::sync::Mutex::new(()),
                client_commits: std::sync::atomic::AtomicU64::new(0),
                feed_tx,
                pins: std::sync::Mutex::new(HashMap::new()),
                seen: seen::Seen::new(config.seen_window_ms, config.limits.max_seen),
                tag_locks: (0..replica::TAG_LOCKS)
                    .map(|_| tokio::sync::Mutex::new(()))
                    .collect(),
                config,
                #[cfg(test)]
                pauses: Default::default(),
                closed: tokio::sync::watch::Sender::new(()),
            }),
        };
        audit::Writer::start(Arc::downgrade(&store.inner), audit_rx);
        if let Some((recorded, stored)) = store.inner.index.audit_head_behind() {
            // Recorded in the chain itself, so the next verification and every export show it.
            tracing::error!(
                recorded,
                stored,
                "the audit log's recorded end was missing or behind its stored entries; the chain goes on after the last stored entry"
            );
            let mut batch = stowage_index::Batch::new();
            batch.audit(
                store
                    .audit_entry(&Actor::system("store"), AuditAction::AuditRepair)
                    .target(format!("{}-{stored}", recorded + 1))
                    .outcome(stowage_index::AuditOutcome::Failed)
                    .detail(format!(
                        "the recorded end of the chain was at entry {recorded}, entries up to {stored} are stored"
                    )),
            );
            store.commit(batch).await?;
        }
        store.recover().await?;
        Ok(store)
    }

    /// Holds the operation at `name` while a test has armed that point (tests only; nothing
    /// in other builds).
    #[cfg(test)]
    async fn pause_point(&self, name: &'static str) {
        self.inner.pauses.at(name).await;
    }

    #[cfg(not(test))]
    async fn pause_point(&self, _name: &'static str) {}

    /// The handle the OCI API gets: client operations only.
    pub fn client(&self) -> ClientStore {
        ClientStore(self.clone())
    }

    /// The handle garbage collection gets.
    pub fn gc_ops(&self) -> GcStore {
        GcStore(self.clone())
    }

    /// The handle replication gets.
    pub fn replica(&self) -> ReplicaStore {
        ReplicaStore(self.clone())
    }

    /// The handle access control and the admin service get: users, robots, roles, projects.
    pub fn accounts(&self) -> AccountStore {
        AccountStore(self.clone())
    }

    /// The writer of audit entries that record no change (logins, refused requests, pulls).
    pub fn auditor(&self) -> Auditor {
        Auditor(self.clone())
    }

    /// An audit entry for `action` by `actor`, stamped with the store's clock.
    pub fn audit_entry(&self, actor: &Actor, action: AuditAction) -> AuditEntry {
        AuditEntry::new(self.now_ms(), actor.to_string(), action).addr(actor.addr_text())
    }

    /// Start-up repair: staging without a session record is removed (a crash between writing
    /// bytes and recording the session, or after a session ended but before its staging was
    /// removed), and so are incomplete multipart uploads a crash left on the object store.
    async fn recover(&self) -> Result<()> {
        // Nothing is in flight yet: whatever is not live goes, however young.
        self.sweep_upload_leftovers(None).await?;
        // Nothing is in flight yet, so every publish intent left is from before the restart.
        let repaired = self.repair_pending(u64::MAX).await?;
        if repaired.orphans_removed > 0 || repaired.cleared > 0 {
            tracing::info!(
                orphans_removed = repaired.orphans_removed,
                cleared = repaired.cleared,
                "repaired publish intents left by a crash"
            );
        }
        Ok(())
    }

    /// Removes what interrupted uploads left in the blob store (see
    /// [`Cas::sweep_uploads`]): staged objects of sessions that are neither recorded nor open
    /// here, and stale incomplete multipart uploads; with `before_ms`, only what is older.
    pub(crate) async fn sweep_upload_leftovers(
        &self,
        before_ms: Option<u64>,
    ) -> Result<stowage_cas::UploadSweep> {
        let mut live: std::collections::HashSet<String> = self
            .inner
            .index
            .uploads()?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        live.extend(self.sessions().keys().cloned());
        let before =
            before_ms.map(|ms| std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms));
        let swept = self.inner.cas.sweep_uploads(&live, before).await?;
        if swept != stowage_cas::UploadSweep::default() {
            tracing::info!(
                staged = swept.staged,
                multipart = swept.multipart,
                multipart_failures = swept.multipart_failures,
                "removed what interrupted uploads left in the blob store"
            );
        }
        Ok(swept)
    }

    /// The index (read access for GC, replication and tools).
    pub fn index(&self) -> &Index {
        &self.inner.index
    }

    /// The blob store.
    pub fn cas(&self) -> &Cas {
        &self.inner.cas
    }

    /// The per-digest locks (GC takes them exclusively).
    pub fn locks(&self) -> &locks::DigestLocks {
        &self.inner.locks
    }

    /// Index commits made for clients since the store opened (a cheap activity signal).
    pub fn client_commits(&self) -> u64 {
        self.inner
            .client_commits
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Current time from the store's clock.
    pub fn now_ms(&self) -> u64 {
        self.inner.clock.now_millis()
    }

    /// Builds a feed event by `actor`, stamped with the clock and this site.
    fn event(&self, kind: EventKind, repo: &RepoName, actor: &Actor) -> Event {
        self.event_from(kind, repo, actor, None)
    }

    /// Builds a feed event by `actor` for a change that originated at site `origin`
    /// (replicated content), or at this site when `None`.
    fn event_from(
        &self,
        kind: EventKind,
        repo: &RepoName,
        actor: &Actor,
        origin: Option<&str>,
    ) -> Event {
        Event {
            kind,
            repo: repo.to_string(),
            digest: None,
            tag: None,
            ts_ms: self.now_ms(),
            actor: Some(actor.to_string()),
            origin: origin
                .map(str::to_string)
                .or_else(|| self.inner.config.site.clone()),
        }
    }

    /// An audit entry for a change in `repo`, with the origin site as its detail when the
    /// change came from another site.
    fn change_audit(
        &self,
        actor: &Actor,
        action: AuditAction,
        repo: &RepoName,
        target: impl Into<String>,
        origin: Option<&str>,
    ) -> AuditEntry {
        let e = self
            .audit_entry(actor, action)
            .repo(repo.as_str())
            .target(target);
        match origin {
            Some(o) => e.detail(format!("origin {o}")),
            None => e,
        }
    }

    /// This site's name, if configured.
    pub fn site(&self) -> Option<&str> {
        self.inner.config.site.as_deref()
    }

    /// Follows the last committed feed sequence number.
    pub fn feed_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.feed_tx.subscribe()
    }

    /// Runs a blocking index commit off the async workers.
    async fn commit(&self, batch: stowage_index::Batch) -> Result<u64> {
        self.inner
            .client_commits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.commit_quiet(batch).await
    }

    /// [`Store::commit`] without counting it as client activity (garbage collection's writes).
    async fn commit_quiet(&self, batch: stowage_index::Batch) -> Result<u64> {
        let store = self.clone();
        let seq = tokio::task::spawn_blocking(move || store.inner.index.commit(batch))
            .await
            .map_err(|source| StoreError::Task {
                task: "index commit",
                source,
            })?
            .map_err(StoreError::from)?;
        self.inner.feed_tx.send_if_modified(|last| {
            if seq > *last {
                *last = seq;
                true
            } else {
                false
            }
        });
        Ok(seq)
    }

    /// Size of a blob linked into `repo`.
    pub fn stat_blob(&self, repo: &RepoName, digest: &Digest) -> Result<BlobInfo> {
        let idx = &self.inner.index;
        if !idx.repo_has_blob(repo, digest)? {
            return Err(StoreError::BlobUnknown(digest.clone()));
        }
        match idx.blob(digest)? {
            Some(rec) if rec.state == stowage_index::BlobState::Present => Ok(BlobInfo {
                digest: digest.clone(),
                size: rec.size,
                crc32c: rec.crc32c,
            }),
            _ => Err(StoreError::BlobUnknown(digest.clone())),
        }
    }

    /// Refuses new blob bytes while the file system of the data dir (or of the local blob
    /// store) has less than [`StoreConfig::min_free_bytes`] available. A failing `statvfs` is
    /// logged and does not refuse anything.
    pub(crate) fn check_free_space(&self) -> Result<()> {
        let min = self.inner.config.min_free_bytes;
        if min == 0 {
            return Ok(());
        }
        let cas_root = match &self.inner.config.backend {
            Some(Backend::Filesystem { root }) => Some(root.clone()),
            None => Some(self.inner.config.data_dir.join("cas")),
            Some(_) => None,
        };
        for path in std::iter::once(self.inner.config.data_dir.clone()).chain(cas_root) {
            match rustix::fs::statvfs(&path) {
                Ok(st) => {
                    let available = st.f_bavail.saturating_mul(st.f_frsize);
                    if available < min {
                        tracing::warn!(
                            path = %path.display(),
                            available,
                            reserve = min,
                            "storage full: refusing new blob bytes"
                        );
                        return Err(StoreError::StorageFull);
                    }
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read free space")
                }
            }
        }
        Ok(())
    }

    /// Runs synchronous index work on a blocking thread, off the async workers.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|source| StoreError::Task {
                task: "blocking index",
                source,
            })?
    }

    /// [`Store::stat_blob`] for a client: the read runs on a blocking thread and a found blob
    /// is noted as seen. The digest's stripe is held shared across both, so a sweep either
    /// decided before (and the client finds nothing) or sees the note and keeps the blob.
    pub(crate) async fn stat_blob_seen(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<BlobInfo> {
        let _held = self.inner.locks.shared([digest]).await;
        let (r, d) = (repo.clone(), digest.clone());
        let info = self.blocking(move |s| s.stat_blob(&r, &d)).await?;
        self.inner.seen.note(digest, self.now_ms());
        Ok(info)
    }

    /// Notes that a client has just seen or stored `digest` (see [`StoreConfig::seen_window_ms`]).
    pub(crate) fn note_seen(&self, digest: &Digest) {
        self.inner.seen.note(digest, self.now_ms());
    }

    /// Whether a client saw `digest` within the window (garbage collection keeps it).
    pub(crate) fn recently_seen(&self, digest: &Digest, now_ms: u64) -> bool {
        self.inner.seen.contains(digest, now_ms)
    }

    /// Digests held as seen now, and notes dropped because the table was full.
    pub fn seen_stats(&self) -> (usize, u64) {
        self.inner.seen.stats()
    }

    /// Reads a blob linked into `repo`, whole or a byte range (end exclusive).
    pub async fn read_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<BlobRead> {
        let info = self.stat_blob(repo, digest)?;
        self.read_stat_blob(&info, range).await
    }

    /// Reads a blob already found with [`Store::stat_blob`] (saves a second lookup when the
    /// caller needed the size first, for example to resolve a `Range` header).
    pub async fn read_stat_blob(
        &self,
        info: &BlobInfo,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<BlobRead> {
        let digest = &info.digest;
        if let Some(r) = &range {
            if r.start >= info.size || r.end > info.size || r.start >= r.end {
                return Err(StoreError::RangeNotSatisfiable { size: info.size });
            }
        }
        let stream = match self
            .inner
            .cas
            .read(digest, info.size, range.clone(), info.crc32c)
            .await
        {
            Ok(s) => s,
            Err(stowage_cas::CasError::NotFound(d)) => {
                // The index says present but the bytes are gone: that breaks invariant 3 and
                // must be loud, not a quiet 404.
                tracing::error!(digest = %d, "blob indexed as present has no bytes");
                return Err(StoreError::BytesMissing {
                    what: "blob",
                    digest: d,
                });
            }
            Err(e) => return Err(e.into()),
        };
        Ok(BlobRead {
            size: info.size,
            range: range.unwrap_or(0..info.size),
            stream,
        })
    }

    /// Links an existing blob from repository `from` into `repo` (cross-repository mount, no
    /// copy). Returns `None` when `from` does not hold the blob (the caller then starts a normal
    /// upload).
    pub(crate) async fn mount_blob(
        &self,
        actor: &Actor,
        repo: &RepoName,
        from: &RepoName,
        digest: &Digest,
    ) -> Result<Option<BlobInfo>> {
        let _held = self.inner.locks.shared([digest]).await;
        let info = match self.stat_blob(from, digest) {
            Ok(info) => info,
            Err(StoreError::BlobUnknown(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let audit = self
            .change_audit(
                actor,
                AuditAction::BlobMount,
                repo,
                digest.to_string(),
                None,
            )
            .detail(format!("from {from}"));
        self.link_present_blob(
            stowage_index::Batch::new(),
            actor,
            repo,
            digest,
            info.size,
            audit,
        )
        .await?;
        Ok(Some(info))
    }

    /// Records that `repo` holds blob `digest`, which is present, together with whatever
    /// `batch` already holds, and `audit` for it. Caller holds the digest's stripe (shared).
    async fn link_present_blob(
        &self,
        mut batch: stowage_index::Batch,
        actor: &Actor,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
        audit: AuditEntry,
    ) -> Result<()> {
        let idx = &self.inner.index;
        let now = self.now_ms();
        self.note_seen(digest);
        if let Some(linked) = idx.link_time(repo, digest)? {
            // Already linked. A link that has not been touched for a while is refreshed, so a
            // client that uploads or mounts a blob again gets a fresh grace period against
            // garbage collection before its manifest arrives.
            if now.saturating_sub(linked) < LINK_REFRESH_MS {
                // Nothing changes in the index, but the client did push or mount: say so.
                batch.audit(audit.detail("already linked"));
                self.commit(batch).await?;
                return Ok(());
            }
        }
        batch.link_blob(repo, digest, now);
        if let Some(mut rec) = idx.blob(digest)? {
            rec.updated_ms = now;
            rec.size = size;
            batch.put_blob(digest, &rec);
        }
        self.ensure_repo(&mut batch, repo)?;
        let mut ev = self.event(EventKind::BlobLinked, repo, actor);
        ev.digest = Some(digest.clone());
        batch.event(ev);
        batch.audit(audit);
        self.commit(batch).await?;
        Ok(())
    }

    fn ensure_repo(&self, batch: &mut stowage_index::Batch, repo: &RepoName) -> Result<()> {
        if !self.inner.index.repo_exists(repo)? {
            batch.put_repo(
                repo,
                &stowage_index::RepoRecord {
                    created_ms: self.now_ms(),
                },
            );
        }
        Ok(())
    }

    /// Unlinks a blob from `repo` (OCI blob DELETE). Refused while a manifest of the repository
    /// references it, so no manifest ever points at a blob its repository cannot serve. The
    /// bytes stay until garbage collection finds nothing else holds them.
    pub(crate) async fn delete_blob(
        &self,
        actor: &Actor,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<()> {
        let _held = self.inner.locks.exclusive([digest]).await;
        let idx = &self.inner.index;
        if !idx.repo_has_blob(repo, digest)? {
            return Err(StoreError::BlobUnknown(digest.clone()));
        }
        if let Some((_, m, _)) = idx
            .referencing(digest)?
            .into_iter()
            .find(|(r, _, _)| r == repo)
        {
            return Err(StoreError::Conflict(format!(
                "blob {digest} is referenced by manifest {m} in {repo}; delete the manifest first"
            )));
        }
        let mut batch = stowage_index::Batch::new();
        batch.unlink_blob(repo, digest);
        let mut ev = self.event(EventKind::BlobUnlinked, repo, actor);
        ev.digest = Some(digest.clone());
        batch.event(ev);
        batch.audit(self.change_audit(
            actor,
            AuditAction::BlobDelete,
            repo,
            digest.to_string(),
            None,
        ));
        self.commit(batch).await?;
        Ok(())
    }

    /// Tags of `repo`, after `last`, at most `n`, in lexical order.
    pub fn tags(&self, repo: &RepoName, last: Option<&str>, n: usize) -> Result<Vec<String>> {
        let idx = &self.inner.index;
        if !idx.repo_exists(repo)? {
            return Err(StoreError::NameUnknown(repo.to_string()));
        }
        Ok(idx
            .tags(repo, last, n)?
            .into_iter()
            .map(|(t, _)| t)
            .collect())
    }

    /// Repositories after `last`, at most `n`, in lexical order.
    pub fn catalog(&self, last: Option<&str>, n: usize) -> Result<Vec<String>> {
        Ok(self
            .inner
            .index
            .repos(last, n)?
            .into_iter()
            .map(|r| r.to_string())
            .collect())
    }

    /// Referrers of `subject` in `repo`, optionally only those of `artifact_type`.
    pub fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<stowage_core::Descriptor>> {
        let all = self.inner.index.referrers(repo, subject)?;
        Ok(match artifact_type {
            Some(t) => all
                .into_iter()
                .filter(|d| d.artifact_type.as_deref() == Some(t))
                .collect(),
            None => all,
        })
    }

    /// Uploads a whole blob in one call (monolithic push): start, write, verify, commit.
    pub(crate) async fn put_blob<S, E>(
        &self,
        actor: &Actor,
        repo: &RepoName,
        digest: &Digest,
        body: S,
    ) -> Result<BlobInfo>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        // A monolithic push needs no durable session: its id is never handed out, so after a
        // crash nobody can resume it and start-up recovery removes its staging.
        let id = self.open_session(actor, repo, false)?;
        self.finish_upload(actor, repo, &id, digest, Some(body))
            .await
    }
}

#[cfg(test)]
mod tests;
