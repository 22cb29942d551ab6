//! What replication needs from the store: versioned tags and their tombstones, applying
//! replicated manifests, tags and deletes under the site they originated at, linking blobs the
//! site already stores, and pins that keep blobs in transfer safe from garbage collection.
//!
//! Tag versions make two sites that change the same tag converge: every state of a tag (set to
//! a digest, or deleted) carries `(ms, origin)`, and of two states the larger version wins, on
//! both sides, whatever order they arrive in. A local change always gets a version larger than
//! the state it replaces, so it wins locally and travels on. Deletes leave a tombstone holding
//! their version, so an older set arriving later cannot bring the tag back.

use std::hash::{Hash, Hasher};

use stowage_core::{Actor, Digest, Reference, RepoName};
use stowage_index::repl_state::{ManifestTombstone, TagTombstone};
use stowage_index::{AuditAction, Batch, BlobState, EventKind, RefKind, TagRecord};

use crate::manifests::{Author, Children, ManifestPush};
use crate::{Result, Store, StoreError};

/// Stripes of the tag locks.
pub(crate) const TAG_LOCKS: usize = 256;

/// Version of one state of a tag. Ordered by time, then by origin site name, so any two
/// distinct versions compare the same way on every site.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TagVersion {
    /// When the state was set (unix ms at its origin, made larger than the state it replaced).
    pub ms: u64,
    /// Site where it was set (empty for tags written before replication existed).
    pub origin: String,
}

/// One state of a tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TagState {
    /// The tag points at `digest`.
    Set {
        /// Manifest digest.
        digest: Digest,
        /// Version of this state.
        version: TagVersion,
    },
    /// The tag was deleted.
    Deleted {
        /// Version of the delete.
        version: TagVersion,
    },
}

impl TagState {
    /// The state's version.
    pub fn version(&self) -> &TagVersion {
        match self {
            TagState::Set { version, .. } | TagState::Deleted { version } => version,
        }
    }
}

/// The stripe of the tag locks that guards `tag` of `repo`.
fn tag_stripe(repo: &RepoName, tag: &str) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    repo.as_str().hash(&mut h);
    tag.hash(&mut h);
    (h.finish() % TAG_LOCKS as u64) as usize
}

fn record_version(rec: &TagRecord) -> TagVersion {
    TagVersion {
        ms: rec.updated_ms,
        origin: rec.origin.clone().unwrap_or_default(),
    }
}

fn tombstone_version(t: TagTombstone) -> TagVersion {
    TagVersion {
        ms: t.ms,
        origin: t.origin,
    }
}

impl Store {
    /// Locks tag `tag` of `repo` against other read-modify-writes of it. Taken after any
    /// digest locks, never before.
    pub(crate) async fn lock_tag(
        &self,
        repo: &RepoName,
        tag: &str,
    ) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.tag_locks[tag_stripe(repo, tag)].lock().await
    }
    /// Locks several tags of `repo` (stripes in ascending order, each once, so two callers
    /// never wait on each other in a cycle). Taken after any digest locks, never before.
    pub(crate) async fn lock_tags(
        &self,
        repo: &RepoName,
        tags: &[String],
    ) -> Vec<tokio::sync::MutexGuard<'_, ()>> {
        let mut stripes: Vec<usize> = tags.iter().map(|t| tag_stripe(repo, t)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut held = Vec::with_capacity(stripes.len());
        for i in stripes {
            held.push(self.inner.tag_locks[i].lock().await);
        }
        held
    }

    /// The version a local change of a tag gets: now, but always past the state it replaces
    /// (the current tag `current`, or its tombstone), so the change wins even against a peer
    /// whose clock runs ahead. Caller holds the tag's lock.
    pub(crate) fn next_tag_version(
        &self,
        repo: &RepoName,
        tag: &str,
        current: Option<&TagRecord>,
    ) -> Result<TagVersion> {
        let prior = match current {
            Some(rec) => Some(record_version(rec)),
            None => self.tombstone(repo, tag)?,
        };
        let ms = match prior {
            Some(v) => self.now_ms().max(v.ms.saturating_add(1)),
            None => self.now_ms(),
        };
        Ok(TagVersion {
            ms,
            origin: self.site().unwrap_or_default().to_string(),
        })
    }

    /// Adds the tombstone of `tag` to `batch`. An encoding failure is an error: an empty
    /// value would read back as a corrupt tombstone and the delete would be forgotten.
    pub(crate) fn put_tombstone(
        &self,
        batch: &mut Batch,
        repo: &RepoName,
        tag: &str,
        version: &TagVersion,
    ) -> Result<()> {
        let t = TagTombstone {
            ms: version.ms,
            origin: version.origin.clone(),
            written_ms: self.now_ms(),
        };
        batch.put_tag_tombstone(repo, tag, &t)?;
        Ok(())
    }

    fn tombstone(&self, repo: &RepoName, tag: &str) -> Result<Option<TagVersion>> {
        Ok(self
            .inner
            .index
            .tag_tombstone(repo, tag)?
            .map(tombstone_version))
    }

    /// The current state of a tag: set, deleted (a tombstone), or never seen.
    pub fn tag_state(&self, repo: &RepoName, tag: &str) -> Result<Option<TagState>> {
        if let Some(rec) = self.inner.index.tag(repo, tag)? {
            return Ok(Some(TagState::Set {
                version: record_version(&rec),
                digest: rec.digest,
            }));
        }
        Ok(self
            .tombstone(repo, tag)?
            .map(|version| TagState::Deleted { version }))
    }

    pub(crate) fn put_manifest_tombstone(
        &self,
        batch: &mut Batch,
        repo: &RepoName,
        digest: &Digest,
    ) {
        batch.put_manifest_tombstone(
            repo,
            digest,
            ManifestTombstone {
                at_ms: self.now_ms(),
            },
        );
    }

    /// Manifests of `repo` deleted by a client or a replicated delete and not pushed again.
    pub fn deleted_manifests(&self, repo: &RepoName) -> Result<Vec<Digest>> {
        Ok(self
            .inner
            .index
            .manifest_tombstones(Some(repo))?
            .into_iter()
            .map(|(_, d, _)| d)
            .collect())
    }

    /// Every tag state of `repo` (set tags and tombstones), in tag order.
    pub fn tag_states(&self, repo: &RepoName) -> Result<Vec<(String, TagState)>> {
        let idx = &self.inner.index;
        let mut out: std::collections::BTreeMap<String, TagState> = Default::default();
        for (_, tag, t) in idx.tag_tombstones(Some(repo))? {
            out.insert(
                tag,
                TagState::Deleted {
                    version: tombstone_version(t),
                },
            );
        }
        let mut last: Option<String> = None;
        loop {
            let page = idx.tags(repo, last.as_deref(), 1000)?;
            let Some((end, _)) = page.last() else { break };
            last = Some(end.clone());
            let n = page.len();
            for (tag, rec) in page {
                out.insert(
                    tag,
                    TagState::Set {
                        version: record_version(&rec),
                        digest: rec.digest,
                    },
                );
            }
            if n < 1000 {
                break;
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Stores a manifest received from a peer, recording `origin` as where it came from.
    /// Returns whether it was new here. Fails like a push would when a blob it references is
    /// missing ([`StoreError::ManifestBlobUnknown`]); an index's absent children are accepted
    /// whatever this site's project settings, since the origin decided (see [`Children`]).
    pub(crate) async fn replica_put_manifest(
        &self,
        actor: &Actor,
        repo: &RepoName,
        digest: &Digest,
        media_type: &str,
        bytes: Vec<u8>,
        origin: &str,
    ) -> Result<bool> {
        if self.inner.index.manifest(repo, digest)?.is_some() {
            return Ok(false);
        }
        let content_type = (!media_type.is_empty()).then_some(media_type);
        let reference = Reference::Digest(digest.clone());
        let push = ManifestPush {
            reference: &reference,
            tags: &[],
            content_type,
            // The origin accepted the index under its own project's rule, and the replicator
            // sends every child the origin holds before the index: a child absent here is
            // absent there (a sparse index), so it is not demanded.
            children: Children::MayBeAbsent,
        };
        self.put_manifest_from(
            Author {
                actor,
                origin: Some(origin),
            },
            repo,
            push,
            bytes,
        )
        .await?;
        Ok(true)
    }

    /// Applies a tag state received from a peer if it is newer than the state here. Returns
    /// whether it changed anything. A set needs its manifest present in `repo`
    /// ([`StoreError::ManifestUnknown`] otherwise).
    pub(crate) async fn replica_apply_tag(
        &self,
        actor: &Actor,
        repo: &RepoName,
        tag: &str,
        state: &TagState,
    ) -> Result<bool> {
        let idx = &self.inner.index;
        match state {
            TagState::Set { digest, version } => {
                // The manifest's lock, shared, as a push holds it: collection cannot remove the
                // manifest between the check and the tag write.
                let _held = self.inner.locks.shared([digest]).await;
                let _tag_held = self.lock_tag(repo, tag).await;
                if idx.manifest(repo, digest)?.is_none() {
                    return Err(StoreError::ManifestUnknown(format!("{repo}@{digest}")));
                }
                let current = self.tag_state(repo, tag)?;
                if let Some(current) = &current {
                    if current.version() >= version {
                        return Ok(false);
                    }
                }
                let previous = match &current {
                    Some(TagState::Set { digest, .. }) => Some(digest),
                    _ => None,
                };
                let mut batch = Batch::new();
                self.ensure_repo(&mut batch, repo)?;
                batch.put_tag(
                    repo,
                    tag,
                    &TagRecord {
                        digest: digest.clone(),
                        updated_ms: version.ms,
                        origin: Some(version.origin.clone()),
                    },
                    previous,
                );
                batch.delete_tag_tombstone(repo, tag);
                let mut ev = self.event_from(EventKind::TagSet, repo, actor, Some(&version.origin));
                ev.digest = Some(digest.clone());
                ev.tag = Some(tag.to_string());
                batch.event(ev);
                batch.audit(
                    self.change_audit(actor, AuditAction::TagSet, repo, tag, None)
                        .detail(format!(
                            "{digest}, version {} from origin {}",
                            version.ms, version.origin
                        )),
                );
                self.commit(batch).await?;
                Ok(true)
            }
            TagState::Deleted { version } => {
                let _tag_held = self.lock_tag(repo, tag).await;
                let current = self.tag_state(repo, tag)?;
                if let Some(current) = &current {
                    if current.version() >= version {
                        return Ok(false);
                    }
                }
                let mut batch = Batch::new();
                self.put_tombstone(&mut batch, repo, tag, version)?;
                // The event goes out even when there was no tag here: sites further down a
                // chain need the tombstone too.
                let mut ev =
                    self.event_from(EventKind::TagDeleted, repo, actor, Some(&version.origin));
                ev.tag = Some(tag.to_string());
                if let Some(TagState::Set { digest, .. }) = current {
                    batch.delete_tag(repo, tag, &digest);
                    ev.digest = Some(digest);
                }
                batch.event(ev);
                batch.audit(
                    self.change_audit(actor, AuditAction::TagDelete, repo, tag, None)
                        .detail(format!(
                            "version {} from origin {}",
                            version.ms, version.origin
                        )),
                );
                self.commit(batch).await?;
                Ok(true)
            }
        }
    }

    /// Removes a manifest because its origin deleted it. Conservative: nothing happens (false)
    /// when the manifest is absent, still tagged here, or the child of an index here; a tag
    /// here may be a newer change that the delete must not undo.
    pub(crate) async fn replica_delete_manifest(
        &self,
        actor: &Actor,
        repo: &RepoName,
        digest: &Digest,
        origin: &str,
    ) -> Result<bool> {
        let _held = self.inner.locks.exclusive([digest]).await;
        let idx = &self.inner.index;
        let Some(rec) = idx.manifest(repo, digest)? else {
            return Ok(false);
        };
        if !idx.tags_pointing_at(repo, digest)?.is_empty() {
            return Ok(false);
        }
        if idx
            .referencing_in(digest, repo)?
            .iter()
            .any(|(_, kind)| *kind == RefKind::Child)
        {
            return Ok(false);
        }
        let mut batch = Batch::new();
        let by = Author {
            actor,
            origin: Some(origin),
        };
        self.remove_manifest(&mut batch, repo, digest, &rec, by, &[])?;
        self.put_manifest_tombstone(&mut batch, repo, digest);
        self.commit(batch).await?;
        Ok(true)
    }

    /// Links a blob this site already stores into `repo` (replication's dedup: the peer had
    /// the bytes under another repository). Returns its size, or `None` when the site does not
    /// have it.
    pub(crate) async fn replica_link_blob(
        &self,
        actor: &Actor,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<u64>> {
        let _held = self.inner.locks.shared([digest]).await;
        match self.inner.index.blob(digest)? {
            Some(rec) if rec.state == BlobState::Present => {
                let audit = self
                    .change_audit(
                        actor,
                        AuditAction::BlobMount,
                        repo,
                        digest.to_string(),
                        None,
                    )
                    .detail("stored here already; linked for replication");
                self.link_present_blob(Batch::new(), actor, repo, digest, rec.size, audit)
                    .await?;
                Ok(Some(rec.size))
            }
            _ => Ok(None),
        }
    }

    /// Keeps `digests` from garbage collection until `until_ms` (extends, never shortens).
    /// Refused ([`StoreError::TooManyPins`]) when the pins would exceed `max_pins`, so a peer
    /// cannot make the site keep everything; expired pins are dropped first.
    pub(crate) fn pin_blobs<'a>(
        &self,
        digests: impl IntoIterator<Item = &'a Digest>,
        until_ms: u64,
        max_pins: usize,
    ) -> Result<()> {
        let now = self.now_ms();
        let digests: Vec<&Digest> = digests.into_iter().collect();
        let mut pins = self
            .inner
            .pins
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let new = digests.iter().filter(|d| !pins.contains_key(**d)).count();
        if pins.len() + new > max_pins {
            pins.retain(|_, until| *until > now);
            let new = digests.iter().filter(|d| !pins.contains_key(**d)).count();
            if pins.len() + new > max_pins {
                return Err(StoreError::TooManyPins {
                    pinned: pins.len(),
                    limit: max_pins,
                });
            }
        }
        for d in digests {
            let e = pins.entry(d.clone()).or_insert(until_ms);
            *e = (*e).max(until_ms);
        }
        if pins.len() > 4096 {
            pins.retain(|_, until| *until > now);
        }
        Ok(())
    }

    /// Blobs pinned now (for metrics).
    pub fn pinned_count(&self) -> usize {
        let now = self.now_ms();
        self.inner
            .pins
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .filter(|until| **until > now)
            .count()
    }

    /// Whether `digest` is pinned at `now_ms`.
    pub fn is_pinned(&self, digest: &Digest, now_ms: u64) -> bool {
        self.inner
            .pins
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(digest)
            .is_some_and(|until| *until > now_ms)
    }
}
