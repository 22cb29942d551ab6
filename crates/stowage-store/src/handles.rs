//! The store's surface, split by capability. Each edge of the daemon gets the one handle it
//! needs and cannot reach the others' operations:
//!
//! * [`ClientStore`]: what the OCI API does for a client (push, pull, tag, delete, list).
//! * [`GcStore`]: what garbage collection does (re-checked removals, quarantine, purge,
//!   restore, upload expiry) plus read access to the index for marking.
//! * [`ReplicaStore`]: what replication does (apply replicated manifests, tags and deletes
//!   under their origin, receive blobs, pin blobs in transfer) plus read access to the index.
//! * [`AccountStore`]: users, robots, roles and project settings, for access control and
//!   the admin service.
//!
//! Every mutating call takes the [`Actor`] the edge decided on; the store writes it into the
//! change feed and the audit log in the change's own batch.

use bytes::Bytes;
use futures::Stream;
use stowage_core::ProjectView;
use stowage_core::{
    Action, Actor, Descriptor, Digest, ProjectChange, ProjectRecord, Reference, RepoName,
    RobotRecord, Role, Tag, UserRecord,
};
use stowage_index::{AuditAction, AuditEntry, Index};

use crate::{
    Auditor, BlobInfo, BlobRead, BlobSweep, LinkCandidate, ManifestContent, PendingRepair,
    PutManifestOutcome, Result, Store, TagState, UploadStatus,
};

/// Client operations (the OCI API's handle).
#[derive(Clone, Debug)]
pub struct ClientStore(pub(crate) Store);

impl ClientStore {
    /// Size of a blob linked into `repo`. A found blob counts as seen by the client: garbage
    /// collection keeps it for the seen window, so a push that skips it finds it at its
    /// manifest put.
    pub async fn stat_blob(&self, repo: &RepoName, digest: &Digest) -> Result<BlobInfo> {
        self.0.stat_blob_seen(repo, digest).await
    }

    /// Reads a blob linked into `repo`, whole or a byte range (end exclusive); seen as with
    /// [`ClientStore::stat_blob`].
    pub async fn read_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<BlobRead> {
        let info = self.0.stat_blob_seen(repo, digest).await?;
        self.0.read_stat_blob(&info, range).await
    }

    /// Reads a blob already found with [`ClientStore::stat_blob`].
    pub async fn read_stat_blob(
        &self,
        info: &BlobInfo,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<BlobRead> {
        self.0.read_stat_blob(info, range).await
    }

    /// Cross-repository mount: links `digest` from `from` into `repo`; `None` when `from` does
    /// not hold it. The caller has checked that `actor` may pull from `from`.
    pub async fn mount_blob(
        &self,
        actor: &Actor,
        repo: &RepoName,
        from: &RepoName,
        digest: &Digest,
    ) -> Result<Option<BlobInfo>> {
        self.0.mount_blob(actor, repo, from, digest).await
    }

    /// Unlinks a blob from `repo` (refused while a manifest there references it).
    pub async fn delete_blob(&self, actor: &Actor, repo: &RepoName, digest: &Digest) -> Result<()> {
        self.0.delete_blob(actor, repo, digest).await
    }

    /// Monolithic blob push.
    pub async fn put_blob<S, E>(
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
        self.0.put_blob(actor, repo, digest, body).await
    }

    /// Starts an upload session owned by `actor`.
    pub async fn start_upload(&self, actor: &Actor, repo: &RepoName) -> Result<UploadStatus> {
        self.0.start_upload(actor, repo).await
    }

    /// Where `actor`'s upload stands.
    pub async fn upload_status(
        &self,
        actor: &Actor,
        repo: &RepoName,
        id: &str,
    ) -> Result<UploadStatus> {
        self.0.upload_status(actor, repo, id).await
    }

    /// Appends a chunk to `actor`'s upload.
    pub async fn append_upload<S, E>(
        &self,
        actor: &Actor,
        repo: &RepoName,
        id: &str,
        start: Option<u64>,
        body: S,
    ) -> Result<UploadStatus>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        self.0.append_upload(actor, repo, id, start, body).await
    }

    /// Finishes `actor`'s upload with `digest`.
    pub async fn finish_upload<S, E>(
        &self,
        actor: &Actor,
        repo: &RepoName,
        id: &str,
        digest: &Digest,
        body: Option<S>,
    ) -> Result<BlobInfo>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        self.0.finish_upload(actor, repo, id, digest, body).await
    }

    /// Cancels `actor`'s upload.
    pub async fn cancel_upload(&self, actor: &Actor, repo: &RepoName, id: &str) -> Result<()> {
        self.0.cancel_upload(actor, repo, id).await
    }

    /// Stores a manifest under a tag or its digest.
    pub async fn put_manifest(
        &self,
        actor: &Actor,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: Vec<u8>,
    ) -> Result<PutManifestOutcome> {
        self.0
            .put_manifest(actor, repo, reference, content_type, bytes)
            .await
    }

    /// Stores a manifest pushed by digest and sets `tags` to it in the same change (the
    /// `?tag=` parameters of the push): all or nothing.
    pub async fn put_manifest_tagged(
        &self,
        actor: &Actor,
        repo: &RepoName,
        digest: &Digest,
        tags: &[Tag],
        content_type: Option<&str>,
        bytes: Vec<u8>,
    ) -> Result<PutManifestOutcome> {
        let reference = Reference::Digest(digest.clone());
        self.0
            .put_manifest_tagged(actor, repo, &reference, tags, content_type, bytes)
            .await
    }

    /// Digest, media type and size of a manifest (seen by the client, as blobs are).
    pub async fn stat_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<(Digest, String, u64)> {
        self.0.stat_manifest_seen(repo, reference).await
    }

    /// A manifest's exact bytes (seen by the client, as blobs are).
    pub async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<ManifestContent> {
        self.0.get_manifest_seen(repo, reference).await
    }

    /// Digests held as just seen by clients now, and notes dropped because the table was full.
    pub fn seen_stats(&self) -> (usize, u64) {
        self.0.seen_stats()
    }

    /// Deletes a tag, or a manifest by digest with its tags.
    pub async fn delete_manifest(
        &self,
        actor: &Actor,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<()> {
        self.0.delete_manifest(actor, repo, reference).await
    }

    /// Removes a tag (the manifest stays).
    pub async fn untag(&self, actor: &Actor, repo: &RepoName, tag: &str) -> Result<()> {
        self.0.untag(actor, repo, tag).await
    }

    /// Tags of `repo` after `last`, at most `n`.
    pub async fn tags(&self, repo: &RepoName, last: Option<&str>, n: usize) -> Result<Vec<String>> {
        let (repo, last) = (repo.clone(), last.map(str::to_string));
        self.0
            .blocking(move |s| s.tags(&repo, last.as_deref(), n))
            .await
    }

    /// Repositories after `last` that are listed, at most `n`, in lexical order: `project`
    /// says how a whole project shows (asked once per project), `visible` decides a
    /// repository of a project shown per repository. The repositories of a project that
    /// shows nothing are skipped by a seek, not read one by one.
    pub fn catalog_where(
        &self,
        last: Option<&str>,
        n: usize,
        mut project: impl FnMut(&str) -> ProjectView,
        mut visible: impl FnMut(&RepoName) -> bool,
    ) -> Result<Vec<String>> {
        const PAGE: usize = 1000;
        let mut out = Vec::new();
        let mut cursor = last.map(str::to_string);
        let mut views: std::collections::HashMap<String, ProjectView> =
            std::collections::HashMap::new();
        'pages: while out.len() < n {
            let page = self.0.index().repos(cursor.as_deref(), PAGE)?;
            let Some(end) = page.last() else { break };
            let full = page.len() == PAGE;
            cursor = Some(end.to_string());
            for r in page {
                if out.len() >= n {
                    break 'pages;
                }
                let p = r.project();
                let view = match views.get(p) {
                    Some(v) => *v,
                    None => {
                        let v = project(p);
                        views.insert(p.to_string(), v);
                        v
                    }
                };
                match view {
                    ProjectView::All => out.push(r.to_string()),
                    ProjectView::EachRepo if visible(&r) => out.push(r.to_string()),
                    ProjectView::EachRepo => {}
                    ProjectView::Nothing if r.as_str().len() > p.len() => {
                        // Every `project/...` name sorts below `project/\x7f` (names are
                        // ASCII below 0x7f): go on from there.
                        cursor = Some(format!("{p}/\u{7f}"));
                        continue 'pages;
                    }
                    ProjectView::Nothing => {}
                }
            }
            if !full {
                break;
            }
        }
        Ok(out)
    }

    /// Whether the repository exists.
    pub fn repo_exists(&self, repo: &RepoName) -> Result<bool> {
        Ok(self.0.index().repo_exists(repo)?)
    }

    /// Referrers of `subject` in `repo`, optionally of one artifact type.
    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Descriptor>> {
        let (repo, subject) = (repo.clone(), subject.clone());
        let artifact_type = artifact_type.map(str::to_string);
        self.0
            .blocking(move |s| s.referrers(&repo, &subject, artifact_type.as_deref()))
            .await
    }

    /// The writer of audit entries that record no change.
    pub fn auditor(&self) -> Auditor {
        self.0.auditor()
    }

    /// An audit entry for `action` by `actor`, stamped with the store's clock.
    pub fn audit_entry(&self, actor: &Actor, action: AuditAction) -> AuditEntry {
        self.0.audit_entry(actor, action)
    }

    /// Open upload sessions and bytes staged by unfinished uploads.
    pub fn upload_usage(&self) -> (usize, u64) {
        self.0.upload_usage()
    }
}

/// Garbage collection's operations.
#[derive(Clone, Debug)]
pub struct GcStore(pub(crate) Store);

impl GcStore {
    /// The index (read access, for marking on a snapshot).
    pub fn index(&self) -> &Index {
        self.0.index()
    }

    /// Current time from the store's clock.
    pub fn now_ms(&self) -> u64 {
        self.0.now_ms()
    }

    /// Index commits made for clients since start (an activity signal to back off on).
    pub fn client_commits(&self) -> u64 {
        self.0.client_commits()
    }

    /// Whether replication pinned `digest` at `now_ms`.
    pub fn is_pinned(&self, digest: &Digest, now_ms: u64) -> bool {
        self.0.is_pinned(digest, now_ms)
    }

    /// Whether the store keeps `digest` in memory at `now_ms`: pinned by replication, or
    /// just seen by a client (the sweep's re-check keeps such a blob).
    pub fn held_in_memory(&self, digest: &Digest, now_ms: u64) -> bool {
        self.0.is_pinned(digest, now_ms) || self.0.recently_seen(digest, now_ms)
    }

    /// Stores a run's report (JSON), with `audit` in the same batch.
    pub async fn record_run(
        &self,
        run_id: u64,
        report: Vec<u8>,
        audit: Option<AuditEntry>,
    ) -> Result<()> {
        let mut batch = stowage_index::Batch::new();
        batch.put_gc_run(run_id, report);
        if let Some(a) = audit {
            batch.audit(a);
        }
        self.0.commit_quiet(batch).await?;
        Ok(())
    }

    /// Stores reports built in `batch` (only `put_gc_run` entries are meaningful here), from a
    /// synchronous context (the collector's construction).
    pub fn record_runs_blocking(&self, batch: stowage_index::Batch) -> Result<()> {
        self.0.index().commit(batch)?;
        Ok(())
    }

    /// See [`Store::gc_remove_manifests`]: re-checked removal of one manifest.
    pub async fn remove_manifest(
        &self,
        actor: &Actor,
        repo: &RepoName,
        digest: &Digest,
        created_ms: u64,
    ) -> Result<Option<(u64, bool)>> {
        self.0
            .gc_remove_manifest(actor, repo, digest, created_ms)
            .await
    }

    /// Re-checked removal of many independent manifests, in one commit.
    pub async fn remove_manifests(
        &self,
        actor: &Actor,
        items: &[(RepoName, Digest, u64)],
    ) -> Result<Vec<Option<(u64, bool)>>> {
        self.0.gc_remove_manifests(actor, items).await
    }

    /// Removes a manifest document no repository holds.
    pub async fn remove_manifest_document(
        &self,
        actor: &Actor,
        digest: &Digest,
    ) -> Result<Option<u64>> {
        self.0.gc_remove_manifest_document(actor, digest).await
    }

    /// Re-checked unlink (and quarantine) of one blob.
    pub async fn sweep_blob(
        &self,
        actor: &Actor,
        digest: &Digest,
        links: &[LinkCandidate],
        quarantine_before: Option<u64>,
        run_id: u64,
    ) -> Result<BlobSweep> {
        self.0
            .gc_sweep_blob(actor, digest, links, quarantine_before, run_id)
            .await
    }

    /// Re-checked unlink (and quarantine) of many blobs, in one commit.
    pub async fn sweep_blobs(
        &self,
        actor: &Actor,
        items: &[(Digest, Vec<LinkCandidate>, Option<u64>)],
        run_id: u64,
    ) -> Result<Vec<BlobSweep>> {
        self.0.gc_sweep_blobs(actor, items, run_id).await
    }

    /// Removes a quarantined blob for good.
    pub async fn purge_blob(
        &self,
        actor: &Actor,
        digest: &Digest,
        quarantined_at: u64,
    ) -> Result<Option<u64>> {
        self.0.gc_purge_blob(actor, digest, quarantined_at).await
    }

    /// Removes many quarantined blobs, in one commit.
    pub async fn purge_blobs(
        &self,
        actor: &Actor,
        items: &[(Digest, u64)],
    ) -> Result<Vec<Option<u64>>> {
        self.0.gc_purge_blobs(actor, items).await
    }

    /// Brings a quarantined blob back (an operator's request).
    pub async fn restore_blob(
        &self,
        actor: &Actor,
        digest: &Digest,
    ) -> Result<(u64, Vec<RepoName>)> {
        self.0.gc_restore_blob(actor, digest).await
    }

    /// Upload sessions idle since before `idle_before_ms`, with their staged bytes.
    pub fn idle_uploads(&self, idle_before_ms: u64) -> Result<Vec<(String, u64)>> {
        self.0.idle_uploads(idle_before_ms)
    }

    /// Removes what interrupted uploads left in the blob store before `before_ms`: staged
    /// objects of sessions that no longer exist, and stale incomplete multipart uploads (S3).
    pub async fn sweep_upload_leftovers(&self, before_ms: u64) -> Result<stowage_cas::UploadSweep> {
        self.0.sweep_upload_leftovers(Some(before_ms)).await
    }

    /// Removes an idle upload session.
    pub async fn expire_upload(
        &self,
        actor: &Actor,
        id: &str,
        idle_before_ms: u64,
    ) -> Result<Option<u64>> {
        self.0.expire_upload(actor, id, idle_before_ms).await
    }

    /// Repairs stale publish intents.
    pub async fn repair_pending(&self, since_before_ms: u64) -> Result<PendingRepair> {
        self.0.repair_pending(since_before_ms).await
    }

    /// The writer of audit entries that record no change.
    pub fn auditor(&self) -> Auditor {
        self.0.auditor()
    }

    /// An audit entry for `action` by `actor`.
    pub fn audit_entry(&self, actor: &Actor, action: AuditAction) -> AuditEntry {
        self.0.audit_entry(actor, action)
    }

    /// Removes tag and manifest tombstones written before `before_ms` (each re-checked under
    /// its lock; a delete made meanwhile keeps its tombstone).
    pub async fn expire_tombstones(
        &self,
        actor: &Actor,
        before_ms: u64,
    ) -> Result<crate::tombstones::TombstoneExpiry> {
        self.0.expire_tombstones(actor, before_ms).await
    }

    /// Removes change-feed entries up to `through`; `why` (the bound that decided it) goes
    /// into the audit entry. Returns how many sequence numbers were trimmed.
    pub async fn trim_feed(&self, actor: &Actor, through: u64, why: String) -> Result<u64> {
        self.0.trim_feed(actor, through, why).await
    }
}

/// Replication's operations.
#[derive(Clone, Debug)]
pub struct ReplicaStore(pub(crate) Store);

impl ReplicaStore {
    /// The index (read access: the feed, records, extension entries).
    pub fn index(&self) -> &Index {
        self.0.index()
    }

    /// Saves the cursor of the replicator configured as `peer` (unaudited bookkeeping). An
    /// encode failure is an error and nothing is written.
    pub async fn put_repl_cursor(
        &self,
        peer: &str,
        cursor: &stowage_index::repl_state::ReplCursor,
    ) -> Result<()> {
        let mut batch = stowage_index::Batch::new();
        batch.put_repl_cursor(peer, cursor)?;
        self.0.commit_quiet(batch).await?;
        Ok(())
    }

    /// Sets (`Some`) or removes (`None`) the transfer session of `digest` (unaudited
    /// bookkeeping). An encode failure is an error and nothing is written.
    pub async fn put_transfer_session(
        &self,
        digest: &Digest,
        session: Option<&stowage_index::repl_state::TransferSession>,
    ) -> Result<()> {
        let mut batch = stowage_index::Batch::new();
        batch.put_transfer_session(digest, session)?;
        self.0.commit_quiet(batch).await?;
        Ok(())
    }

    /// Replication bookkeeping that an operator must be able to trace (the dead-letter list):
    /// puts and deletes under the given keys of the extension keyspace, with `audit`, in one
    /// batch.
    pub async fn put_meta_audited(
        &self,
        changes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        audit: AuditEntry,
    ) -> Result<()> {
        let mut batch = stowage_index::Batch::new();
        for (key, value) in changes {
            match value {
                Some(v) => batch.put_meta(&key, v),
                None => batch.delete_meta(&key),
            }
        }
        batch.audit(audit);
        self.0.commit_quiet(batch).await?;
        Ok(())
    }

    /// Reports bytes of `digest` that failed verification when read: checked again, and
    /// quarantined as corrupt (audited as by `actor`, with `found`) if they really are wrong.
    pub async fn quarantine_corrupt(
        &self,
        actor: &Actor,
        digest: &Digest,
        found: &str,
    ) -> Result<crate::CorruptCheck> {
        self.0.quarantine_corrupt(actor, digest, found).await
    }

    /// Makes way for good bytes of a blob quarantined as corrupt (see `integrity`).
    pub async fn clear_corrupt(&self, digest: &Digest) -> Result<crate::RepairReady> {
        self.0.clear_corrupt(digest).await
    }

    /// Current time from the store's clock.
    pub fn now_ms(&self) -> u64 {
        self.0.now_ms()
    }

    /// This site's name.
    pub fn site(&self) -> Option<&str> {
        self.0.site()
    }

    /// Follows the last committed feed sequence number.
    pub fn feed_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.feed_watch()
    }

    /// Size of a blob linked into `repo`.
    pub fn stat_blob(&self, repo: &RepoName, digest: &Digest) -> Result<BlobInfo> {
        self.0.stat_blob(repo, digest)
    }

    /// Reads a blob found with [`ReplicaStore::stat_blob`].
    pub async fn read_stat_blob(
        &self,
        info: &BlobInfo,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<BlobRead> {
        self.0.read_stat_blob(info, range).await
    }

    /// A manifest's exact bytes.
    pub fn get_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<ManifestContent> {
        self.0.get_manifest(repo, reference)
    }

    /// Starts an upload session (a blob received from a peer), owned by `actor`.
    pub async fn start_upload(&self, actor: &Actor, repo: &RepoName) -> Result<UploadStatus> {
        self.0.start_upload(actor, repo).await
    }

    /// Where an upload stands.
    pub async fn upload_status(
        &self,
        actor: &Actor,
        repo: &RepoName,
        id: &str,
    ) -> Result<UploadStatus> {
        self.0.upload_status(actor, repo, id).await
    }

    /// Appends received bytes to an upload.
    pub async fn append_upload<S, E>(
        &self,
        actor: &Actor,
        repo: &RepoName,
        id: &str,
        start: Option<u64>,
        body: S,
    ) -> Result<UploadStatus>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        self.0.append_upload(actor, repo, id, start, body).await
    }

    /// Verifies and commits a received blob.
    pub async fn finish_upload<S, E>(
        &self,
        actor: &Actor,
        repo: &RepoName,
        id: &str,
        digest: &Digest,
        body: Option<S>,
    ) -> Result<BlobInfo>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        self.0.finish_upload(actor, repo, id, digest, body).await
    }

    /// Keeps `digests` from garbage collection until `until_ms`, within the pin limit.
    pub fn pin_blobs<'a>(
        &self,
        digests: impl IntoIterator<Item = &'a Digest>,
        until_ms: u64,
    ) -> Result<()> {
        let max = self.0.inner.config.limits.max_pins;
        self.0.pin_blobs(digests, until_ms, max)
    }

    /// Blobs pinned now.
    pub fn pinned_count(&self) -> usize {
        self.0.pinned_count()
    }

    /// A tag's current state (set, deleted or never seen).
    pub fn tag_state(&self, repo: &RepoName, tag: &str) -> Result<Option<TagState>> {
        self.0.tag_state(repo, tag)
    }

    /// Every tag state of `repo`.
    pub fn tag_states(&self, repo: &RepoName) -> Result<Vec<(String, TagState)>> {
        self.0.tag_states(repo)
    }

    /// Manifests of `repo` deleted and not pushed again.
    pub fn deleted_manifests(&self, repo: &RepoName) -> Result<Vec<Digest>> {
        self.0.deleted_manifests(repo)
    }

    /// Stores a replicated manifest; whether it was new.
    pub async fn put_manifest(
        &self,
        actor: &Actor,
        repo: &RepoName,
        digest: &Digest,
        media_type: &str,
        bytes: Vec<u8>,
        origin: &str,
    ) -> Result<bool> {
        self.0
            .replica_put_manifest(actor, repo, digest, media_type, bytes, origin)
            .await
    }

    /// Applies a replicated tag state if it is newer.
    pub async fn apply_tag(
        &self,
        actor: &Actor,
        repo: &RepoName,
        tag: &str,
        state: &TagState,
    ) -> Result<bool> {
        self.0.replica_apply_tag(actor, repo, tag, state).await
    }

    /// Removes a manifest its origin deleted (conservatively).
    pub async fn delete_manifest(
        &self,
        actor: &Actor,
        repo: &RepoName,
        digest: &Digest,
        origin: &str,
    ) -> Result<bool> {
        self.0
            .replica_delete_manifest(actor, repo, digest, origin)
            .await
    }

    /// Links a blob the site stores elsewhere into `repo`; its size, or `None`.
    pub async fn link_blob(
        &self,
        actor: &Actor,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<u64>> {
        self.0.replica_link_blob(actor, repo, digest).await
    }

    /// The writer of audit entries that record no change.
    pub fn auditor(&self) -> Auditor {
        self.0.auditor()
    }

    /// An audit entry for `action` by `actor`.
    pub fn audit_entry(&self, actor: &Actor, action: AuditAction) -> AuditEntry {
        self.0.audit_entry(actor, action)
    }
}

/// Accounts: users, robots, roles, projects.
#[derive(Clone, Debug)]
pub struct AccountStore(pub(crate) Store);

impl AccountStore {
    /// A user.
    pub fn user(&self, name: &str) -> Result<Option<UserRecord>> {
        Ok(self.0.index().user(name)?)
    }

    /// Every user.
    pub fn users(&self) -> Result<Vec<(String, UserRecord)>> {
        Ok(self.0.index().users()?)
    }

    /// Creates a user with an (argon2id) password hash.
    pub async fn add_user(
        &self,
        actor: &Actor,
        name: &str,
        password_hash: String,
        system_admin: bool,
    ) -> Result<()> {
        self.0
            .add_user(actor, name, password_hash, system_admin)
            .await
    }

    /// Changes a user's password hash and/or system-admin flag.
    pub async fn update_user(
        &self,
        actor: &Actor,
        name: &str,
        password_hash: Option<String>,
        system_admin: Option<bool>,
    ) -> Result<UserRecord> {
        self.0
            .update_user(actor, name, password_hash, system_admin)
            .await
    }

    /// Removes a user and its roles.
    pub async fn delete_user(&self, actor: &Actor, name: &str) -> Result<()> {
        self.0.delete_user(actor, name).await
    }

    /// A robot account.
    pub fn robot(&self, account: &str) -> Result<Option<RobotRecord>> {
        Ok(self.0.index().robot(account)?)
    }

    /// Every robot account.
    pub fn robots(&self) -> Result<Vec<(String, RobotRecord)>> {
        Ok(self.0.index().robots()?)
    }

    /// Creates a robot; returns its account name.
    pub async fn create_robot(
        &self,
        actor: &Actor,
        project: &str,
        name: &str,
        actions: Vec<Action>,
        expires_ms: Option<u64>,
        secret_sha256: String,
    ) -> Result<String> {
        self.0
            .create_robot(actor, project, name, actions, expires_ms, secret_sha256)
            .await
    }

    /// Removes a robot.
    pub async fn delete_robot(&self, actor: &Actor, account: &str) -> Result<()> {
        self.0.delete_robot(actor, account).await
    }

    /// `user`'s role in `project`.
    pub fn grant(&self, user: &str, project: &str) -> Result<Option<Role>> {
        Ok(self.0.index().grant(user, project)?)
    }

    /// Every role `user` holds.
    pub fn grants_of(&self, user: &str) -> Result<Vec<(String, Role)>> {
        Ok(self.0.index().grants_of(user)?)
    }

    /// Every grant: (user, project, role).
    pub fn grants(&self) -> Result<Vec<(String, String, Role)>> {
        Ok(self.0.index().grants()?)
    }

    /// Gives `user` `role` in `project`.
    pub async fn set_grant(
        &self,
        actor: &Actor,
        user: &str,
        project: &str,
        role: Role,
    ) -> Result<()> {
        self.0.grant(actor, user, project, role).await
    }

    /// Takes `user`'s role in `project` away.
    pub async fn revoke(&self, actor: &Actor, user: &str, project: &str) -> Result<()> {
        self.0.revoke(actor, user, project).await
    }

    /// A project's settings.
    pub fn project(&self, name: &str) -> Result<Option<ProjectRecord>> {
        Ok(self.0.index().project(name)?)
    }

    /// Every project with settings.
    pub fn projects(&self) -> Result<Vec<(String, ProjectRecord)>> {
        Ok(self.0.index().projects()?)
    }

    /// Changes a project's settings (public, sparse manifests); returns them as they now are.
    pub async fn set_project(
        &self,
        actor: &Actor,
        project: &str,
        change: ProjectChange,
    ) -> Result<ProjectRecord> {
        self.0.set_project(actor, project, change).await
    }

    /// Current time from the store's clock.
    pub fn now_ms(&self) -> u64 {
        self.0.now_ms()
    }

    /// The writer of audit entries that record no change.
    pub fn auditor(&self) -> Auditor {
        self.0.auditor()
    }

    /// An audit entry for `action` by `actor`.
    pub fn audit_entry(&self, actor: &Actor, action: AuditAction) -> AuditEntry {
        self.0.audit_entry(actor, action)
    }
}
