//! Upload sessions: start, append chunks, finish with a digest, cancel.
//!
//! Each appended request body is one part object in the blob store. A session is recorded in
//! the index (repository, part sizes) when its first chunk is stored, so from then on it survives
//! a restart; a session that holds no bytes yet, or a monolithic push whose id no client ever
//! sees, costs no index write at all. The running hash lives in memory; when it is missing
//! (after a restart) or may be wrong (an append failed half way), it is rebuilt by reading the
//! stored parts back.

use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use stowage_cas::{CasError, CommitOutcome};

use stowage_core::{Actor, Algorithm, Digest, Hasher, RepoName};
use stowage_index::{AuditAction, Batch, BlobRecord, BlobState, EventKind, UploadRecord};

use crate::{BlobInfo, Result, Store, StoreError};

/// Whether `rec` is a blob quarantined because its bytes were found corrupt.
fn idx_corrupt(rec: &Option<BlobRecord>) -> bool {
    matches!(
        rec,
        Some(BlobRecord {
            quarantine: Some(stowage_index::Quarantine {
                reason: stowage_index::QuarantineReason::Corrupt { .. },
                ..
            }),
            ..
        })
    )
}

/// Where an upload stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadStatus {
    /// Session id.
    pub id: String,
    /// Bytes received so far.
    pub size: u64,
}

/// A session in the store's map: who owns it (read without locking the session) and its state.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    /// The principal that opened it (`Principal`'s text form); only it may use the session.
    /// `None` for sessions recorded before owners were (any actor allowed on the repository).
    pub(crate) owner: Option<String>,
    pub(crate) session: Arc<tokio::sync::Mutex<Session>>,
}

/// In-memory state of a session.
#[derive(Debug)]
pub(crate) struct Session {
    repo: RepoName,
    pub(crate) record: UploadRecord,
    /// Running sha256 over all parts; `None` when it must be rebuilt from storage.
    hasher: Option<Hasher>,
    /// The index holds a record of this session (it has stored chunks that must survive a
    /// restart).
    pub(crate) recorded: bool,
    /// Its id was handed to a client, which may resume it (false for monolithic pushes).
    resumable: bool,
}

impl Session {
    fn size(&self) -> u64 {
        self.record.parts.iter().sum()
    }
}

fn map_cas(e: CasError) -> StoreError {
    match e {
        CasError::Body(msg) => StoreError::BlobUploadInvalid(format!("request body: {msg}")),
        CasError::TooLarge { limit } => StoreError::TooLarge { limit },
        other => StoreError::Cas(other),
    }
}

impl Store {
    /// Starts an upload session in `repo`, owned by `actor`.
    pub(crate) async fn start_upload(
        &self,
        actor: &Actor,
        repo: &RepoName,
    ) -> Result<UploadStatus> {
        let id = self.open_session(actor, repo, true)?;
        Ok(UploadStatus { id, size: 0 })
    }

    /// Creates a session in memory; it is recorded in the index with its first stored chunk.
    /// Refused when the session limits are reached.
    pub(crate) fn open_session(
        &self,
        actor: &Actor,
        repo: &RepoName,
        resumable: bool,
    ) -> Result<String> {
        self.check_free_space()?;
        let id = uuid::Uuid::new_v4().to_string();
        let now = self.now_ms();
        let owner = actor.principal.to_string();
        let session = Session {
            repo: repo.clone(),
            record: UploadRecord {
                repo: repo.to_string(),
                created_ms: now,
                updated_ms: now,
                parts: Vec::new(),
                owner: Some(owner.clone()),
            },
            hasher: Some(Hasher::new(Algorithm::Sha256)),
            recorded: false,
            resumable,
        };
        let limits = &self.inner.config.limits;
        let mut sessions = self.sessions();
        if sessions.len() >= limits.max_sessions {
            return Err(StoreError::TooManyUploads(format!(
                "{} upload sessions are open, the limit is {}",
                sessions.len(),
                limits.max_sessions
            )));
        }
        let mine = sessions
            .values()
            .filter(|s| s.owner.as_deref() == Some(owner.as_str()))
            .count();
        if mine >= limits.max_sessions_per_actor {
            return Err(StoreError::TooManyUploads(format!(
                "{actor} has {mine} upload sessions open, the limit is {}",
                limits.max_sessions_per_actor
            )));
        }
        sessions.insert(
            id.clone(),
            Slot {
                owner: Some(owner),
                session: Arc::new(tokio::sync::Mutex::new(session)),
            },
        );
        Ok(id)
    }

    /// Open upload sessions (in memory) and bytes staged by unfinished uploads.
    pub fn upload_usage(&self) -> (usize, u64) {
        (self.sessions().len(), self.inner.staging.total())
    }

    pub(crate) fn sessions(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Slot>> {
        // Only map inserts and removes happen under this lock; a panic cannot leave it torn.
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Finds a session of `repo`, loading it from the index after a restart.
    pub(crate) fn session(&self, repo: &RepoName, id: &str) -> Result<Slot> {
        if let Some(s) = self.sessions().get(id) {
            return Ok(s.clone());
        }
        let record = self
            .inner
            .index
            .upload(id)?
            .ok_or_else(|| StoreError::BlobUploadUnknown(id.to_string()))?;
        if record.repo != repo.as_str() {
            return Err(StoreError::BlobUploadUnknown(id.to_string()));
        }
        let slot = Slot {
            owner: record.owner.clone(),
            session: Arc::new(tokio::sync::Mutex::new(Session {
                repo: repo.clone(),
                record,
                hasher: None,
                recorded: true,
                resumable: true,
            })),
        };
        Ok(self
            .sessions()
            .entry(id.to_string())
            .or_insert(slot)
            .clone())
    }

    /// Locks a live session, checking it belongs to `repo` and to `actor`. A session of
    /// another actor is answered exactly like one that does not exist.
    async fn live_session(
        &self,
        actor: &Actor,
        repo: &RepoName,
        id: &str,
    ) -> Result<tokio::sync::OwnedMutexGuard<Session>> {
        let slot = self.session(repo, id)?;
        if let Some(owner) = &slot.owner {
            if *owner != actor.principal.to_string() {
                return Err(StoreError::BlobUploadUnknown(id.to_string()));
            }
        }
        let session = slot.session.lock_owned().await;
        if &session.repo != repo {
            return Err(StoreError::BlobUploadUnknown(id.to_string()));
        }
        // A concurrent finish or cancel may have ended the session while we waited.
        if !self.sessions().contains_key(id) {
            return Err(StoreError::BlobUploadUnknown(id.to_string()));
        }
        Ok(session)
    }

    /// Bytes received by an upload.
    pub(crate) async fn upload_status(
        &self,
        actor: &Actor,
        repo: &RepoName,
        id: &str,
    ) -> Result<UploadStatus> {
        let s = self.live_session(actor, repo, id).await?;
        Ok(UploadStatus {
            id: id.to_string(),
            size: s.size(),
        })
    }

    /// Appends `body` to an upload. With `start`, the chunk must begin exactly where the upload
    /// ends (else [`StoreError::RangeInvalid`] and nothing is written).
    pub(crate) async fn append_upload<S, E>(
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
        let mut s = self.live_session(actor, repo, id).await?;
        self.append_locked(&mut s, id, start, body, true).await?;
        Ok(UploadStatus {
            id: id.to_string(),
            size: s.size(),
        })
    }

    async fn append_locked<S, E>(
        &self,
        s: &mut Session,
        id: &str,
        start: Option<u64>,
        body: S,
        record_part: bool,
    ) -> Result<()>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        let size = s.size();
        if let Some(start) = start {
            if start != size {
                return Err(StoreError::RangeInvalid {
                    got: start,
                    expected: size,
                });
            }
        }
        self.check_free_space()?;
        let limits = &self.inner.config.limits;
        let (max_total, max_mine) = (limits.max_staged_bytes, limits.max_staged_bytes_per_actor);
        let owner = s.record.owner.clone().unwrap_or_default();
        let staging = self.inner.staging.clone();
        // Refused before reading anything when a limit is already reached.
        if staging.total() >= max_total || staging.of(&owner) >= max_mine {
            return Err(StoreError::TooManyUploads(format!(
                "unfinished uploads hold {} bytes ({} of them {owner}'s); the limits are \
                 {max_total} and {max_mine} per actor",
                staging.total(),
                staging.of(&owner)
            )));
        }
        self.ensure_hasher(s, id).await?;
        let limit = self.inner.config.max_blob_size.saturating_sub(size);
        let part = s.record.parts.len() as u32;
        let cas = &self.inner.cas;
        let mut hasher = s
            .hasher
            .take()
            .ok_or_else(|| StoreError::Internal("upload hash state missing".into()))?;
        // Chunks of a resumable session must survive a restart; the final body of a finish is
        // made durable by the commit that follows at once.
        let durable = s.resumable && record_part;
        // Every chunk is counted as it arrives; the one that would cross a limit ends the
        // body (and the part) there. The reservation gives back what the session does not
        // keep, also when this future is dropped mid-write (a cancelled request).
        let mut reservation = staging.reservation(&owner);
        let over: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
        let body = {
            let (add, over) = (reservation.adder(max_total, max_mine), over.clone());
            futures::StreamExt::map(body, move |item| match item {
                Ok(chunk) => match add(chunk.len() as u64) {
                    Ok(()) => Ok(chunk),
                    Err(why) => {
                        let mut o = over
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        *o = Some(why.clone());
                        Err(why)
                    }
                },
                Err(e) => Err(e.to_string()),
            })
        };
        let written = cas
            .write_part(id, part, body, &mut hasher, limit, durable)
            .await;
        match written {
            Ok(0) => {
                // Empty chunks add no part (an empty object would be a part of nothing).
                s.hasher = Some(hasher);
                Ok(())
            }
            Ok(n) => {
                // What was counted is what was kept (the part holds every chunk read).
                reservation.keep(n);
                s.hasher = Some(hasher);
                s.record.parts.push(n);
                s.record.updated_ms = self.now_ms();
                // The final body of a finish is committed at once; recording it as a part
                // first would only cost a synced write.
                if durable {
                    let mut batch = Batch::new();
                    batch.put_upload(id, &s.record);
                    self.commit(batch).await?;
                    s.recorded = true;
                }
                Ok(())
            }
            Err(e) => {
                // The part was not kept: neither are its bytes counted (the reservation
                // gives them back). The hasher saw bytes that were not kept: rebuild it on
                // next use.
                s.hasher = None;
                let over = over
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take();
                Err(match over {
                    Some(why) => StoreError::TooManyUploads(why),
                    None => map_cas(e),
                })
            }
        }
    }

    async fn ensure_hasher(&self, s: &mut Session, id: &str) -> Result<()> {
        if s.hasher.is_none() {
            let parts: Vec<u32> = (0..s.record.parts.len() as u32).collect();
            let (hasher, size) = self
                .inner
                .cas
                .rehash_parts(id, &parts, Algorithm::Sha256)
                .await?;
            if size != s.size() {
                return Err(StoreError::BlobUploadInvalid(format!(
                    "upload {id}: stored parts hold {size} bytes, session recorded {}",
                    s.size()
                )));
            }
            s.hasher = Some(hasher);
        }
        Ok(())
    }

    /// Appends the optional final `body`, checks the content against `digest`, and commits the
    /// blob into `repo`. On a digest mismatch the session and its bytes are removed.
    pub(crate) async fn finish_upload<S, E>(
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
        let mut s = self.live_session(actor, repo, id).await?;
        if let Some(body) = body {
            if let Err(e) = self.append_locked(&mut s, id, None, body, false).await {
                if !s.resumable {
                    // Nobody can resume a monolithic upload: drop it now.
                    // One past the recorded parts too: a chunk cut off mid-write may have left it.
                    let parts: Vec<u32> = (0..=s.record.parts.len() as u32).collect();
                    self.end_session(id, &parts, s.record.owner.as_deref(), s.size(), s.recorded)
                        .await?;
                }
                return Err(e);
            }
        }
        self.ensure_hasher(&mut s, id).await?;
        let size = s.size();
        let parts: Vec<u32> = (0..s.record.parts.len() as u32).collect();
        let hasher = match digest.algorithm() {
            Algorithm::Sha256 => s
                .hasher
                .take()
                .ok_or_else(|| StoreError::Internal("upload hash state missing".into()))?,
            other => self.inner.cas.rehash_parts(id, &parts, other).await?.0,
        };
        let crc = hasher.checksum();
        let actual = hasher.finish();
        if &actual != digest {
            self.end_session(id, &parts, s.record.owner.as_deref(), size, s.recorded)
                .await?;
            return Err(StoreError::DigestInvalid(format!(
                "content of upload {id} hashes to {actual}, not {digest}"
            )));
        }
        // The session record goes in the same batch that records the blob.
        let mut batch = Batch::new();
        if s.recorded {
            batch.delete_upload(id);
        }
        // Publishing, indexing and ending the session run in a task of their own that holds the
        // session: a caller dropped in the middle (an HTTP client that disconnects, a
        // replication stream that is reset) would otherwise leave the bytes published but not
        // indexed, and the session naming staged parts that the publish consumed, so that the
        // next finish of it fails. The task finishes the commit whether or not anyone waits.
        let store = self.clone();
        let actor = actor.clone();
        let (repo, id, digest) = (repo.clone(), id.to_string(), digest.clone());
        let info = BlobInfo {
            digest: digest.clone(),
            size,
            crc32c: Some(crc),
        };
        crate::task::spawn_named("blob_commit", async move {
            let recorded = s.recorded;
            let result = store
                .commit_blob(batch, &actor, &repo, &id, &parts, &digest, size, crc)
                .await;
            // A successful commit consumed the staged parts; a failed one leaves them to remove.
            let (record_left, staged) = match &result {
                Ok(()) => (false, &[][..]),
                Err(_) => (recorded, &parts[..]),
            };
            let ended = store
                .end_session(&id, staged, s.record.owner.as_deref(), size, record_left)
                .await;
            drop(s);
            ended?;
            result
        })
        .await
        .map_err(|source| StoreError::Task {
            task: "blob commit",
            source,
        })??;
        Ok(info)
    }

    /// Publishes verified staged bytes and indexes them, under the digest's shared lock.
    #[allow(clippy::too_many_arguments)]
    async fn commit_blob(
        &self,
        mut batch: Batch,
        actor: &Actor,
        repo: &RepoName,
        id: &str,
        parts: &[u32],
        digest: &Digest,
        size: u64,
        crc: u32,
    ) -> Result<()> {
        // The bytes of a blob quarantined as corrupt may still be stored (their removal
        // failed, or a crash came between the record and the removal). Publishing is
        // create-if-absent, so those bytes would be kept and served again under this push's
        // record: clear them first, under the digest's exclusive lock.
        if idx_corrupt(&self.inner.index.blob(digest)?) {
            self.clear_corrupt(digest).await?;
        }
        let _held = self.inner.locks.shared([digest]).await;
        let idx = &self.inner.index;
        let existing = idx.blob(digest)?;
        if idx_corrupt(&existing) && self.inner.cas.size(digest).await?.is_some() {
            // Quarantined as corrupt again (bytes left) between the clearing and the lock:
            // refuse rather than keep bytes nobody has checked.
            return Err(StoreError::Conflict(format!(
                "blob {digest} is being quarantined as corrupt; push it again"
            )));
        }
        if let Some(rec) = &existing {
            if rec.state == BlobState::Present {
                // Deduplicated: the bytes are already stored.
                self.inner.cas.abort(id, parts).await;
                let audit = self
                    .change_audit(actor, AuditAction::BlobPush, repo, digest.to_string(), None)
                    .detail(format!("{size} bytes, already stored"));
                return self
                    .link_present_blob(batch, actor, repo, digest, size, audit)
                    .await;
            }
        }
        // Publish intent: if the process dies (or the power goes) after the bytes are published
        // but before the batch below is durable, start-up repair finds this entry and removes
        // the unindexed bytes (they would otherwise be invisible to index-driven garbage
        // collection). The bytes are synced when published, so the intent is synced before
        // them: an unsynced intent could be lost while the bytes survive. Concurrent pushes
        // share the sync through the index's group commit.
        let mut intent = Batch::new();
        intent.put_pending(digest, id, self.now_ms());
        self.commit_quiet(intent).await?;
        batch.clear_pending(digest, id);
        let outcome = self.inner.cas.commit(id, parts, digest).await?;
        if outcome == CommitOutcome::AlreadyPresent {
            tracing::debug!(%digest, "blob bytes already stored; reusing");
        }
        let now = self.now_ms();
        self.note_seen(digest);
        batch.put_blob(
            digest,
            &BlobRecord {
                size,
                state: BlobState::Present,
                created_ms: existing.map(|r| r.created_ms).unwrap_or(now),
                updated_ms: now,
                // Same digest, same bytes: this CRC holds for bytes that were already stored too.
                crc32c: Some(crc),
                quarantine: None,
            },
        );
        batch.link_blob(repo, digest, now);
        self.ensure_repo(&mut batch, repo)?;
        let mut ev = self.event(EventKind::BlobPut, repo, actor);
        ev.digest = Some(digest.clone());
        batch.event(ev);
        batch.audit(
            self.change_audit(actor, AuditAction::BlobPush, repo, digest.to_string(), None)
                .detail(format!("{size} bytes")),
        );
        self.commit(batch).await?;
        Ok(())
    }

    /// Removes a session's in-memory state and staging, and its index record when
    /// `delete_record` (callers that already removed it in another batch pass false).
    /// `size` is what the session held: no longer counted as staged.
    pub(crate) async fn end_session(
        &self,
        id: &str,
        parts: &[u32],
        owner: Option<&str>,
        size: u64,
        delete_record: bool,
    ) -> Result<()> {
        if delete_record {
            let mut batch = Batch::new();
            batch.delete_upload(id);
            self.commit(batch).await?;
        }
        if self.sessions().remove(id).is_some() || delete_record {
            self.inner.staging.release(owner.unwrap_or_default(), size);
        }
        if !parts.is_empty() {
            self.inner.cas.abort(id, parts).await;
        }
        Ok(())
    }

    /// Cancels an upload and removes its bytes.
    pub(crate) async fn cancel_upload(
        &self,
        actor: &Actor,
        repo: &RepoName,
        id: &str,
    ) -> Result<()> {
        let s = self.live_session(actor, repo, id).await?;
        // One past the recorded parts too: a chunk cut off mid-write may have left it.
        let parts: Vec<u32> = (0..=s.record.parts.len() as u32).collect();
        self.end_session(id, &parts, s.record.owner.as_deref(), s.size(), s.recorded)
            .await
    }
}
