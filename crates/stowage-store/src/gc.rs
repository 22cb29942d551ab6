//! The store side of garbage collection: removals that re-check their candidate under the
//! digest's exclusive lock, quarantine, purge, restore, upload expiry and the repair of publish
//! intents left by a crash.
//!
//! `stowage-gc` decides candidates on an index snapshot; the world may have moved on since. Every
//! function here therefore takes the candidate *as the snapshot saw it* (a creation or link
//! time) and removes it only if, under the exclusive lock, it is still exactly that and nothing
//! that a push can add makes it reachable: a tag (set by a manifest put, which holds the
//! manifest digest's lock shared), a reference from a manifest (recorded under the referenced
//! digest's lock, shared), or a fresh link (same). A push that loses the race sees the removal
//! and fails cleanly with `MANIFEST_BLOB_UNKNOWN`; one that wins leaves evidence the re-check
//! finds. Either way no manifest ever points at bytes that are not served.

use stowage_core::{Actor, Digest, RepoName};
use stowage_index::{AuditAction, Batch, BlobState, EventKind, HoldKind, Quarantine, RefKind};

use crate::{Result, Store, StoreError};

/// A blob link that garbage collection wants to remove, as the snapshot saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkCandidate {
    /// The repository.
    pub repo: RepoName,
    /// The link's time in the snapshot; the link is removed only if it is unchanged.
    pub linked_ms: u64,
}

/// What [`Store::gc_sweep_blob`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlobSweep {
    /// Repositories the blob was unlinked from.
    pub unlinked: Vec<RepoName>,
    /// Candidate links (or the quarantine) kept because the re-check found them in use.
    pub kept: u64,
    /// When the blob was quarantined (unix ms), if this sweep quarantined it: no repository
    /// holds it and it is no longer served.
    pub quarantined_at: Option<u64>,
    /// The blob's size.
    pub size: u64,
}

/// What [`Store::repair_pending`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PendingRepair {
    /// Published-but-unindexed blobs whose bytes were removed.
    pub orphans_removed: u64,
    /// Intents cleared (including those whose blob turned out to be indexed).
    pub cleared: u64,
}

impl Store {
    fn gc_event(
        &self,
        kind: EventKind,
        repo: &RepoName,
        digest: &Digest,
        actor: &Actor,
    ) -> stowage_index::Event {
        let mut ev = self.event(kind, repo, actor);
        ev.digest = Some(digest.clone());
        ev
    }

    /// Removes manifest `digest` from `repo` if it is still the record the snapshot saw
    /// (`created_ms`), no tag points at it, no manifest of the repository has it as a child,
    /// and its subject (if any) is gone. Returns the document size and whether the document
    /// itself was removed (no other repository holds it), or `None` when it was kept.
    pub(crate) async fn gc_remove_manifest(
        &self,
        actor: &Actor,
        repo: &RepoName,
        digest: &Digest,
        created_ms: u64,
    ) -> Result<Option<(u64, bool)>> {
        let mut out = self
            .gc_remove_manifests(actor, &[(repo.clone(), digest.clone(), created_ms)])
            .await?;
        Ok(out.pop().flatten())
    }

    /// [`Store::gc_remove_manifest`] for many manifests, with one index commit. None of them
    /// may depend on another (an index and its child, a subject and its referrer): the caller
    /// removes those in separate calls, parents and subjects first.
    pub(crate) async fn gc_remove_manifests(
        &self,
        actor: &Actor,
        items: &[(RepoName, Digest, u64)],
    ) -> Result<Vec<Option<(u64, bool)>>> {
        let idx = &self.inner.index;
        // The decision reads the subject's record too ("is the subject gone?"), and a push of
        // the subject holds the subject's stripe, not the referrer's: so the subjects' stripes
        // are held as well, or the subject could commit between the check and the removal and
        // lose its signature. A manifest's subject is part of its bytes, so reading it before
        // taking the locks names the right stripe; a record that changed in between (its
        // subject not among those held) is kept, never decided on unguarded.
        let mut subjects: Vec<Digest> = Vec::new();
        for (repo, digest, _) in items {
            if let Some(subject) = idx.manifest(repo, digest)?.and_then(|rec| rec.subject) {
                subjects.push(subject);
            }
        }
        let _held = self
            .inner
            .locks
            .exclusive(items.iter().map(|(_, d, _)| d).chain(subjects.iter()))
            .await;
        let mut batch = Batch::new();
        let mut removed: Vec<(RepoName, Digest)> = Vec::new();
        let mut out = Vec::with_capacity(items.len());
        let now = self.now_ms();
        for (repo, digest, created_ms) in items {
            let Some(rec) = idx.manifest(repo, digest)? else {
                out.push(None);
                continue;
            };
            let subject_unguarded = rec.subject.as_ref().is_some_and(|s| !subjects.contains(s));
            let in_use = rec.created_ms != *created_ms
                || subject_unguarded
                || self.recently_seen(digest, now)
                || !idx.tags_pointing_at(repo, digest)?.is_empty()
                || idx
                    .referencing_in(digest, repo)?
                    .iter()
                    .any(|(_, kind)| *kind == RefKind::Child)
                || match &rec.subject {
                    Some(subject) => idx.manifest(repo, subject)?.is_some(),
                    None => false,
                };
            if in_use {
                out.push(None);
                continue;
            }
            let removed_with: Vec<RepoName> = removed
                .iter()
                .filter(|(_, d)| d == digest)
                .map(|(r, _)| r.clone())
                .collect();
            let document = self.remove_manifest(
                &mut batch,
                repo,
                digest,
                &rec,
                crate::manifests::Author {
                    actor,
                    origin: None,
                },
                &removed_with,
            )?;
            removed.push((repo.clone(), digest.clone()));
            out.push(Some((rec.size, document)));
        }
        self.pause_point("gc_remove_manifests:decided").await;
        if !batch.is_empty() {
            self.commit_quiet(batch).await?;
        }
        Ok(out)
    }

    /// Removes a stored manifest document that no repository holds (left by an older version
    /// that did not remove documents). Returns its size, or `None` when something holds it.
    pub(crate) async fn gc_remove_manifest_document(
        &self,
        actor: &Actor,
        digest: &Digest,
    ) -> Result<Option<u64>> {
        let _held = self.inner.locks.exclusive([digest]).await;
        let idx = &self.inner.index;
        if !idx.holders(digest, HoldKind::Manifest)?.is_empty() {
            return Ok(None);
        }
        let Some(bytes) = idx.manifest_bytes(digest)? else {
            return Ok(None);
        };
        let mut batch = Batch::new();
        batch.delete_manifest_bytes(digest);
        batch.audit(
            self.audit_entry(actor, AuditAction::ManifestDelete)
                .target(digest.to_string())
                .detail("document no repository held"),
        );
        self.commit_quiet(batch).await?;
        Ok(Some(bytes.len() as u64))
    }

    /// Unlinks `digest` from the candidate repositories whose link is unchanged and that no
    /// manifest of theirs references; then, with `quarantine_before = Some(cutoff)`, quarantines
    /// the blob if no repository holds it any more and it was last linked before `cutoff`.
    /// Everything happens in one batch under the digest's exclusive lock.
    pub(crate) async fn gc_sweep_blob(
        &self,
        actor: &Actor,
        digest: &Digest,
        links: &[LinkCandidate],
        quarantine_before: Option<u64>,
        run_id: u64,
    ) -> Result<BlobSweep> {
        let item = (digest.clone(), links.to_vec(), quarantine_before);
        let mut out = self
            .gc_sweep_blobs(actor, std::slice::from_ref(&item), run_id)
            .await?;
        out.pop()
            .ok_or_else(|| StoreError::Internal("sweep returned no result".into()))
    }

    /// [`Store::gc_sweep_blob`] for many blobs at once: all their locks are taken (in the one
    /// global order) and all their changes go in one index commit, so a large sweep costs one
    /// synced write per batch instead of one per blob, and leaves the disk to pushes.
    pub(crate) async fn gc_sweep_blobs(
        &self,
        actor: &Actor,
        items: &[(Digest, Vec<LinkCandidate>, Option<u64>)],
        run_id: u64,
    ) -> Result<Vec<BlobSweep>> {
        let _held = self
            .inner
            .locks
            .exclusive(items.iter().map(|(d, _, _)| d))
            .await;
        let mut batch = Batch::new();
        let now = self.now_ms();
        let mut out = Vec::with_capacity(items.len());
        for (digest, links, quarantine_before) in items {
            out.push(self.sweep_blob_locked(
                &mut batch,
                actor,
                digest,
                links,
                *quarantine_before,
                run_id,
                now,
            )?);
        }
        if !batch.is_empty() {
            self.commit_quiet(batch).await?;
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn sweep_blob_locked(
        &self,
        batch: &mut Batch,
        actor: &Actor,
        digest: &Digest,
        links: &[LinkCandidate],
        quarantine_before: Option<u64>,
        run_id: u64,
        now: u64,
    ) -> Result<BlobSweep> {
        let idx = &self.inner.index;
        let mut out = BlobSweep::default();
        if self.is_pinned(digest, now) || self.recently_seen(digest, now) {
            // Replication is sending it, or received it for a manifest still on its way; or a
            // client has just found it and may be about to put a manifest that needs it.
            out.kept = links.len() as u64 + u64::from(quarantine_before.is_some());
            out.size = idx.blob(digest)?.map(|r| r.size).unwrap_or(0);
            return Ok(out);
        }
        for cand in links {
            if idx.link_time(&cand.repo, digest)? != Some(cand.linked_ms) {
                // Refreshed by a new upload or mount, or unlinked by a client meanwhile.
                out.kept += 1;
                continue;
            }
            if idx
                .referencing_in(digest, &cand.repo)?
                .iter()
                .any(|(_, kind)| *kind == RefKind::Blob)
            {
                out.kept += 1;
                continue;
            }
            batch.unlink_blob(&cand.repo, digest);
            batch.event(self.gc_event(EventKind::BlobUnlinked, &cand.repo, digest, actor));
            batch.audit(
                self.change_audit(
                    actor,
                    AuditAction::BlobDelete,
                    &cand.repo,
                    digest.to_string(),
                    None,
                )
                .detail(format!("garbage collection run {run_id}")),
            );
            out.unlinked.push(cand.repo.clone());
        }
        let rec = idx.blob(digest)?;
        out.size = rec.as_ref().map(|r| r.size).unwrap_or(0);
        if let (Some(cutoff), Some(mut rec)) = (quarantine_before, rec) {
            if rec.state == BlobState::Present {
                let still_held = idx
                    .holders(digest, HoldKind::Link)?
                    .into_iter()
                    .any(|(r, _)| !out.unlinked.contains(&r));
                if still_held || rec.updated_ms >= cutoff {
                    out.kept += 1;
                } else {
                    rec.state = BlobState::Deleted;
                    rec.updated_ms = now;
                    rec.quarantine = Some(Quarantine {
                        at_ms: now,
                        repos: out.unlinked.iter().map(|r| r.to_string()).collect(),
                        run_id,
                        reason: stowage_index::QuarantineReason::Unreferenced,
                    });
                    batch.put_blob(digest, &rec);
                    batch.audit(
                        self.audit_entry(actor, AuditAction::GcQuarantine)
                            .target(digest.to_string())
                            .detail(format!(
                                "garbage collection run {run_id}, {} bytes",
                                rec.size
                            )),
                    );
                    out.quarantined_at = Some(now);
                }
            }
        }
        Ok(out)
    }

    /// Removes a quarantined blob for good: bytes first, then the record (a crash between
    /// leaves a quarantined record without bytes, which the next purge removes). Only if it is
    /// still the quarantine the caller saw (`quarantined_at`). Returns its size.
    pub(crate) async fn gc_purge_blob(
        &self,
        actor: &Actor,
        digest: &Digest,
        quarantined_at: u64,
    ) -> Result<Option<u64>> {
        let mut out = self
            .gc_purge_blobs(actor, &[(digest.clone(), quarantined_at)])
            .await?;
        Ok(out.pop().flatten())
    }

    /// [`Store::gc_purge_blob`] for many blobs, with one index commit. The bytes of every blob
    /// still purgeable under the locks are deleted together (one batched request, or parallel
    /// unlinks) and all of them are gone before the records are: a crash or a failed delete
    /// leaves quarantined records, some without bytes, which the next purge removes. Unlinks
    /// are not followed by a sync of their directories: an unlink the crash undoes leaves bytes
    /// with no record (space to reclaim, never a record without bytes), which `fsck --repair`
    /// finds as an orphan.
    pub(crate) async fn gc_purge_blobs(
        &self,
        actor: &Actor,
        items: &[(Digest, u64)],
    ) -> Result<Vec<Option<u64>>> {
        let _held = self
            .inner
            .locks
            .exclusive(items.iter().map(|(d, _)| d))
            .await;
        let idx = &self.inner.index;
        let mut batch = Batch::new();
        let mut out = Vec::with_capacity(items.len());
        let mut doomed = Vec::with_capacity(items.len());
        for (digest, quarantined_at) in items {
            match idx.blob(digest)? {
                Some(rec)
                    if rec.state == BlobState::Deleted
                        && rec.quarantine.as_ref().map(|q| q.at_ms) == Some(*quarantined_at) =>
                {
                    doomed.push(digest.clone());
                    out.push(Some(rec.size));
                }
                _ => out.push(None),
            }
        }
        self.inner.cas.delete_many(&doomed).await?;
        for (digest, size) in items
            .iter()
            .zip(&out)
            .filter_map(|((d, _), s)| Some((d, (*s)?)))
        {
            batch.delete_blob(digest);
            batch.audit(
                self.audit_entry(actor, AuditAction::GcPurge)
                    .target(digest.to_string())
                    .detail(format!("{size} bytes")),
            );
        }
        if !batch.is_empty() {
            self.commit_quiet(batch).await?;
        }
        Ok(out)
    }

    /// Brings a quarantined blob back: served again and linked into the repositories that held
    /// it when it was quarantined, with fresh link times (so a new grace period). Fails when
    /// the digest is unknown, served already, or its bytes were purged.
    pub(crate) async fn gc_restore_blob(
        &self,
        actor: &Actor,
        digest: &Digest,
    ) -> Result<(u64, Vec<RepoName>)> {
        let _held = self.inner.locks.exclusive([digest]).await;
        let idx = &self.inner.index;
        let mut rec = match idx.blob(digest)? {
            None => {
                return Err(StoreError::BlobUnknown(digest.clone()));
            }
            Some(rec) if rec.state == BlobState::Present => {
                return Err(StoreError::Conflict(format!(
                    "blob {digest} is not quarantined: it is served"
                )));
            }
            Some(rec) => rec,
        };
        if let Some(Quarantine {
            reason: stowage_index::QuarantineReason::Corrupt { detail },
            ..
        }) = &rec.quarantine
        {
            // Its bytes are (or were) wrong: only good bytes bring it back.
            return Err(StoreError::Conflict(format!(
                "blob {digest} is quarantined as corrupt ({detail}): push it again or repair it from a peer"
            )));
        }
        match self.inner.cas.size(digest).await? {
            Some(n) if n == rec.size => {}
            Some(n) => {
                return Err(StoreError::Internal(format!(
                    "quarantined blob {digest} has {n} bytes stored, its record says {}",
                    rec.size
                )))
            }
            None => {
                return Err(StoreError::Conflict(format!(
                    "blob {digest} was purged: its bytes are gone"
                )))
            }
        }
        let now = self.now_ms();
        let repos: Vec<RepoName> = rec
            .quarantine
            .take()
            .map(|q| q.repos)
            .unwrap_or_default()
            .iter()
            .map(|r| {
                RepoName::parse(r).map_err(|e| {
                    StoreError::Index(stowage_index::IndexError::Corrupt(format!(
                        "quarantine record of {digest} names {r:?}: {e}"
                    )))
                })
            })
            .collect::<Result<_>>()?;
        rec.state = BlobState::Present;
        rec.updated_ms = now;
        let mut batch = Batch::new();
        batch.put_blob(digest, &rec);
        for repo in &repos {
            batch.link_blob(repo, digest, now);
            self.ensure_repo(&mut batch, repo)?;
            let mut ev = self.event(EventKind::BlobLinked, repo, actor);
            ev.digest = Some(digest.clone());
            batch.event(ev);
        }
        batch.audit(
            self.audit_entry(actor, AuditAction::GcRestore)
                .target(digest.to_string())
                .detail(format!(
                    "linked back into {}",
                    repos
                        .iter()
                        .map(RepoName::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
        );
        self.commit_quiet(batch).await?;
        Ok((rec.size, repos))
    }

    /// Upload sessions last appended to before `idle_before_ms`: those recorded in the index and
    /// those only in memory (started, never written), with their staged bytes. A session busy
    /// with a request is not idle.
    pub fn idle_uploads(&self, idle_before_ms: u64) -> Result<Vec<(String, u64)>> {
        let mut out: std::collections::BTreeMap<String, u64> = self
            .inner
            .index
            .uploads()?
            .into_iter()
            .filter(|(_, rec)| rec.updated_ms.max(rec.created_ms) < idle_before_ms)
            .map(|(id, rec)| (id, rec.parts.iter().sum()))
            .collect();
        let in_memory: Vec<_> = self
            .sessions()
            .iter()
            .map(|(id, s)| (id.clone(), s.session.clone()))
            .collect();
        for (id, session) in in_memory {
            match session.try_lock() {
                Ok(s) if s.record.updated_ms.max(s.record.created_ms) < idle_before_ms => {
                    out.insert(id, s.record.parts.iter().sum());
                }
                // Busy or recently used: a recorded copy of it is not idle either.
                _ => {
                    out.remove(&id);
                }
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Removes upload session `id` with its staged bytes if it is still idle since before
    /// `idle_before_ms`. Returns the bytes removed, or `None` when it was kept or is gone.
    pub(crate) async fn expire_upload(
        &self,
        actor: &Actor,
        id: &str,
        idle_before_ms: u64,
    ) -> Result<Option<u64>> {
        let in_memory = self.sessions().get(id).map(|s| s.session.clone());
        let session = match in_memory {
            Some(s) => s,
            None => match self.inner.index.upload(id)? {
                Some(rec) => match RepoName::parse(&rec.repo) {
                    Ok(repo) => self.session(&repo, id)?.session,
                    Err(e) => {
                        tracing::warn!(upload = %id, error = %e, "upload record names a bad repository; removing it");
                        let mut batch = Batch::new();
                        batch.delete_upload(id);
                        self.commit_quiet(batch).await?;
                        let bytes = rec.parts.iter().sum::<u64>();
                        self.inner
                            .staging
                            .release(rec.owner.as_deref().unwrap_or_default(), bytes);
                        let parts: Vec<u32> = (0..=rec.parts.len() as u32).collect();
                        self.inner.cas.abort(id, &parts).await;
                        return Ok(Some(bytes));
                    }
                },
                None => return Ok(None),
            },
        };
        // A locked session is in the middle of a request: not idle.
        let Ok(s) = session.try_lock_owned() else {
            return Ok(None);
        };
        if s.record.updated_ms.max(s.record.created_ms) >= idle_before_ms
            || !self.sessions().contains_key(id)
        {
            return Ok(None);
        }
        // One past the recorded parts too: a chunk cut off mid-write may have left it.
        let parts: Vec<u32> = (0..=s.record.parts.len() as u32).collect();
        let bytes = s.record.parts.iter().sum::<u64>();
        self.end_session(id, &parts, s.record.owner.as_deref(), bytes, s.recorded)
            .await?;
        let mut audit = self
            .audit_entry(actor, AuditAction::UploadExpire)
            .repo(s.record.repo.as_str())
            .target(id)
            .detail(format!("{bytes} bytes staged"));
        if let Some(owner) = &s.record.owner {
            audit = audit.detail(format!("{bytes} bytes staged, opened by {owner}"));
        }
        self.auditor().record(audit).await;
        Ok(Some(bytes))
    }

    /// Repairs publish intents recorded before `since_before_ms`: a blob whose bytes may have
    /// been published but never indexed (the process died between the two, or the index write
    /// failed) has its bytes removed; an intent whose blob is indexed is just cleared. Safe at
    /// any time: under the digest's exclusive lock no commit of that digest is in flight, so an
    /// intent still recorded then is stale.
    pub async fn repair_pending(&self, since_before_ms: u64) -> Result<PendingRepair> {
        let mut out = PendingRepair::default();
        for (digest, upload, since) in self.inner.index.pending()? {
            if since >= since_before_ms {
                continue;
            }
            let _held = self.inner.locks.exclusive([&digest]).await;
            let idx = &self.inner.index;
            if !idx.has_pending(&digest, &upload)? {
                continue;
            }
            if idx.blob(&digest)?.is_none() && self.inner.cas.size(&digest).await?.is_some() {
                self.inner.cas.delete(&digest).await?;
                tracing::info!(%digest, %upload, "removed published but unindexed blob bytes");
                out.orphans_removed += 1;
            }
            let mut batch = Batch::new();
            batch.clear_pending(&digest, &upload);
            self.commit_quiet(batch).await?;
            out.cleared += 1;
        }
        Ok(out)
    }
}
