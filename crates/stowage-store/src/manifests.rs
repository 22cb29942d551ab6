//! Manifests and tags: put (with the reference check), get, delete, untag.

use stowage_core::{
    parse_manifest, Actor, Descriptor, Digest, ManifestError, Reference, RepoName, Tag,
};
use stowage_index::{AuditAction, Batch, BlobState, EventKind, ManifestRecord, RefKind, TagRecord};

use crate::{Result, Store, StoreError};

/// A manifest as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestContent {
    /// Digest of the exact bytes.
    pub digest: Digest,
    /// Media type (served as `Content-Type`).
    pub media_type: String,
    /// The exact bytes received at push.
    pub bytes: Vec<u8>,
}

/// What a manifest put did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutManifestOutcome {
    /// Digest of the stored bytes.
    pub digest: Digest,
    /// The manifest's `subject`, if it has one (the HTTP layer echoes it as `OCI-Subject`).
    pub subject: Option<Digest>,
}

/// What a manifest push asks for, besides the bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ManifestPush<'a> {
    /// The tag it is pushed under, or its digest.
    pub(crate) reference: &'a Reference,
    /// Further tags set to it with the push (only with a digest reference).
    pub(crate) tags: &'a [Tag],
    /// The request's `Content-Type`.
    pub(crate) content_type: Option<&'a str>,
    /// Whether an index may name child manifests the repository does not hold.
    pub(crate) children: Children,
}

/// Whether an index's child manifests must all be present when it is pushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Children {
    /// Every child must be present (invariant 2): the default.
    Required,
    /// Children may be absent (a sparse index): a client push to a project whose operator
    /// allowed it, or a replicated index that its origin accepted. Absent children are still
    /// recorded as references, so a child pushed later is reachable through the index and
    /// cannot be deleted while the index stands; children that are present are still checked.
    MayBeAbsent,
}

/// Who made a change recorded in the feed and the audit log, and the site it originated at
/// (`None`: this site).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Author<'a> {
    pub(crate) actor: &'a Actor,
    pub(crate) origin: Option<&'a str>,
}

fn map_manifest_error(e: ManifestError) -> StoreError {
    match e {
        ManifestError::UnsupportedMediaType(m) => {
            StoreError::Unsupported(format!("manifest media type {m}"))
        }
        other => StoreError::ManifestInvalid(other.to_string()),
    }
}

impl Store {
    /// Stores a manifest under `reference` (a tag, which is then moved to it, or its digest).
    ///
    /// Accepted only if every blob and child manifest it references is present in `repo`
    /// (child manifests may be absent where `repo`'s project allows sparse indexes); the
    /// check and the index write happen under the shared locks of all referenced digests, so a
    /// concurrent deletion either completes before (and the put fails with
    /// [`StoreError::ManifestBlobUnknown`]) or waits until the references are recorded.
    pub(crate) async fn put_manifest(
        &self,
        actor: &Actor,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: Vec<u8>,
    ) -> Result<PutManifestOutcome> {
        self.put_manifest_tagged(actor, repo, reference, &[], content_type, bytes)
            .await
    }

    /// [`Store::put_manifest`] that also sets `tags` to the manifest, in the same batch: the
    /// `?tag=` parameters of a push by digest, the only way to tag a manifest whose digest is
    /// not the registry's canonical sha256 (a push by tag hashes with sha256). All or nothing:
    /// tags are only taken with a digest reference ([`StoreError::TagInvalid`] otherwise).
    pub(crate) async fn put_manifest_tagged(
        &self,
        actor: &Actor,
        repo: &RepoName,
        reference: &Reference,
        tags: &[Tag],
        content_type: Option<&str>,
        bytes: Vec<u8>,
    ) -> Result<PutManifestOutcome> {
        let sparse = self
            .inner
            .index
            .project(repo.project())?
            .is_some_and(|p| p.sparse_manifests);
        let push = ManifestPush {
            reference,
            tags,
            content_type,
            children: if sparse {
                Children::MayBeAbsent
            } else {
                Children::Required
            },
        };
        self.put_manifest_from(
            Author {
                actor,
                origin: None,
            },
            repo,
            push,
            bytes,
        )
        .await
    }

    /// [`Store::put_manifest_tagged`] for a change that originated at site `origin`
    /// (replication), or at this site when `None`.
    pub(crate) async fn put_manifest_from(
        &self,
        by: Author<'_>,
        repo: &RepoName,
        push: ManifestPush<'_>,
        bytes: Vec<u8>,
    ) -> Result<PutManifestOutcome> {
        let (actor, origin) = (by.actor, by.origin);
        let ManifestPush {
            reference,
            tags,
            content_type,
            children: child_rule,
        } = push;
        let tags: Vec<&Tag> = match reference {
            Reference::Tag(t) if tags.is_empty() => vec![t],
            Reference::Tag(t) => {
                return Err(StoreError::TagInvalid(format!(
                    "tag parameters are taken only with a push by digest, not with tag {t}"
                )))
            }
            Reference::Digest(_) => {
                let mut unique: Vec<&Tag> = Vec::with_capacity(tags.len());
                for t in tags {
                    if !unique.contains(&t) {
                        unique.push(t);
                    }
                }
                unique
            }
        };
        let parsed = parse_manifest(content_type, &bytes).map_err(map_manifest_error)?;
        let digest = match reference {
            Reference::Digest(d) => {
                let actual = Digest::compute(d.algorithm(), &bytes);
                if &actual != d {
                    return Err(StoreError::DigestInvalid(format!(
                        "manifest bytes hash to {actual}, not {d}"
                    )));
                }
                actual
            }
            Reference::Tag(_) => Digest::sha256(&bytes),
        };
        let blobs: Vec<&Descriptor> = parsed.blob_references();
        let children: Vec<&Descriptor> = parsed.manifest_references();
        let mut lock_set: Vec<&Digest> = blobs.iter().map(|d| &d.digest).collect();
        lock_set.extend(children.iter().map(|d| &d.digest));
        lock_set.push(&digest);
        let _held = self.inner.locks.shared(lock_set).await;

        let idx = &self.inner.index;
        for desc in &blobs {
            let rec = match idx.blob(&desc.digest)? {
                Some(rec)
                    if rec.state == BlobState::Present
                        && idx.repo_has_blob(repo, &desc.digest)? =>
                {
                    rec
                }
                _ => return Err(StoreError::ManifestBlobUnknown(desc.digest.clone())),
            };
            if rec.size != desc.size {
                return Err(StoreError::ManifestInvalid(format!(
                    "descriptor of {} says {} bytes, the blob has {}",
                    desc.digest, desc.size, rec.size
                )));
            }
        }
        let mut absent = 0usize;
        for desc in &children {
            match idx.manifest(repo, &desc.digest)? {
                None if child_rule == Children::MayBeAbsent => absent += 1,
                None => return Err(StoreError::ManifestBlobUnknown(desc.digest.clone())),
                Some(rec) if rec.size != desc.size => {
                    return Err(StoreError::ManifestInvalid(format!(
                        "descriptor of {} says {} bytes, the manifest has {}",
                        desc.digest, desc.size, rec.size
                    )))
                }
                Some(_) => {}
            }
        }

        let now = self.now_ms();
        let mut batch = Batch::new();
        self.ensure_repo(&mut batch, repo)?;
        if idx.manifest(repo, &digest)?.is_none() {
            // Pushed again after a delete: the delete no longer stands.
            batch.delete_manifest_tombstone(repo, &digest);
            if !idx.has_manifest_bytes(&digest)? {
                batch.put_manifest_bytes(&digest, &bytes);
            }
            let record = ManifestRecord {
                media_type: parsed.media_type.clone(),
                size: bytes.len() as u64,
                created_ms: now,
                artifact_type: parsed.effective_artifact_type().map(str::to_string),
                subject: parsed.subject.as_ref().map(|s| s.digest.clone()),
                blobs: blobs.iter().map(|d| d.digest.clone()).collect(),
                children: children.iter().map(|d| d.digest.clone()).collect(),
                annotations: parsed.annotations.clone(),
            };
            batch.put_manifest(repo, &digest, &record);
            for d in &record.blobs {
                batch.put_ref(d, repo, &digest, RefKind::Blob);
            }
            for d in &record.children {
                batch.put_ref(d, repo, &digest, RefKind::Child);
            }
            if let Some(subject) = &record.subject {
                let desc = Descriptor {
                    media_type: record.media_type.clone(),
                    digest: digest.clone(),
                    size: record.size,
                    artifact_type: record.artifact_type.clone(),
                    annotations: (!record.annotations.is_empty())
                        .then(|| record.annotations.clone()),
                    urls: None,
                    platform: None,
                };
                batch.put_referrer(repo, subject, &digest, &desc);
            }
            let mut ev = self.event_from(EventKind::ManifestPut, repo, actor, origin);
            ev.digest = Some(digest.clone());
            batch.event(ev);
            batch.audit(
                self.change_audit(
                    actor,
                    AuditAction::ManifestPush,
                    repo,
                    digest.to_string(),
                    origin,
                )
                .detail({
                    let mut d = format!("{}, {} bytes", record.media_type, record.size);
                    if absent > 0 {
                        d.push_str(&format!(
                            ", sparse: {absent} of {} children absent",
                            record.children.len()
                        ));
                    }
                    if let Some(o) = origin {
                        d.push_str(&format!(", origin {o}"));
                    }
                    d
                }),
            );
        }
        let tag_names: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
        let _tags_held = self.lock_tags(repo, &tag_names).await;
        for tag in tags {
            let current = idx.tag(repo, tag.as_str())?;
            if current.as_ref().map(|t| &t.digest) != Some(&digest) {
                let version = self.next_tag_version(repo, tag.as_str(), current.as_ref())?;
                batch.put_tag(
                    repo,
                    tag.as_str(),
                    &TagRecord {
                        digest: digest.clone(),
                        updated_ms: version.ms,
                        origin: Some(version.origin),
                    },
                    current.as_ref().map(|t| &t.digest),
                );
                batch.delete_tag_tombstone(repo, tag.as_str());
                let mut ev = self.event(EventKind::TagSet, repo, actor);
                ev.digest = Some(digest.clone());
                ev.tag = Some(tag.to_string());
                batch.event(ev);
                batch.audit(
                    self.change_audit(actor, AuditAction::TagSet, repo, tag.as_str(), None)
                        .detail(match &current {
                            Some(old) => format!("{} (was {})", digest, old.digest),
                            None => digest.to_string(),
                        }),
                );
            }
        }
        if !batch.is_empty() {
            self.commit(batch).await?;
        }
        Ok(PutManifestOutcome {
            digest,
            subject: parsed.subject.map(|s| s.digest),
        })
    }

    /// Resolves a reference to a manifest digest held by `repo`.
    fn resolve(&self, repo: &RepoName, reference: &Reference) -> Result<(Digest, ManifestRecord)> {
        let idx = &self.inner.index;
        let digest = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(t) => {
                idx.tag(repo, t.as_str())?
                    .ok_or_else(|| StoreError::ManifestUnknown(format!("{repo}:{t}")))?
                    .digest
            }
        };
        let rec = idx
            .manifest(repo, &digest)?
            .ok_or_else(|| StoreError::ManifestUnknown(format!("{repo}@{digest}")))?;
        Ok((digest, rec))
    }

    /// Media type, size and digest of a manifest (HEAD).
    pub fn stat_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<(Digest, String, u64)> {
        let (digest, rec) = self.resolve(repo, reference)?;
        Ok((digest, rec.media_type, rec.size))
    }

    /// [`Store::stat_manifest`] for a client, on a blocking thread, noting the manifest as
    /// seen (see [`Store::read_manifest_seen`]).
    pub(crate) async fn stat_manifest_seen(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<(Digest, String, u64)> {
        self.read_manifest_seen(repo, reference, |s, r, re| s.stat_manifest(r, re), |o| &o.0)
            .await
    }

    /// [`Store::get_manifest`] for a client, like [`Store::stat_manifest_seen`].
    pub(crate) async fn get_manifest_seen(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<ManifestContent> {
        self.read_manifest_seen(
            repo,
            reference,
            |s, r, re| s.get_manifest(r, re),
            |o| &o.digest,
        )
        .await
    }

    /// Runs `read` on a blocking thread with the manifest's stripe held shared, and notes the
    /// digest it found as seen before the stripe is let go: a sweep of that manifest (which
    /// holds the stripe exclusively) either decided before, and the read finds nothing, or
    /// sees the note and keeps it (the same argument as `stat_blob_seen`). A tag names no
    /// stripe, so it is resolved first and read again under the stripe of what it named; if
    /// the tag moved in between, the read is retried on the new digest.
    async fn read_manifest_seen<T: Send + 'static>(
        &self,
        repo: &RepoName,
        reference: &Reference,
        read: impl Fn(&Store, &RepoName, &Reference) -> Result<T> + Send + Sync + Copy + 'static,
        digest_of: fn(&T) -> &Digest,
    ) -> Result<T> {
        const TAG_MOVES: usize = 4;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let expected = match reference {
                Reference::Digest(d) => d.clone(),
                Reference::Tag(t) => {
                    let (r, t) = (repo.clone(), t.clone());
                    self.blocking(move |s| {
                        s.inner
                            .index
                            .tag(&r, t.as_str())?
                            .map(|t| t.digest)
                            .ok_or_else(|| StoreError::ManifestUnknown(format!("{r}:{t}")))
                    })
                    .await?
                }
            };
            let _held = self.inner.locks.shared([&expected]).await;
            let (r, re) = (repo.clone(), reference.clone());
            let out = self.blocking(move |s| read(s, &r, &re)).await?;
            self.pause_point("read_manifest_seen:read").await;
            let found = digest_of(&out);
            // The tag moved while the stripe was being taken: what was read is not guarded.
            // After a few moves the read is returned noted but unguarded, as before this lock.
            if *found == expected || attempt == TAG_MOVES {
                self.note_seen(found);
                return Ok(out);
            }
        }
    }

    /// The exact bytes of a manifest.
    pub fn get_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<ManifestContent> {
        let (digest, rec) = self.resolve(repo, reference)?;
        let bytes =
            self.inner
                .index
                .manifest_bytes(&digest)?
                .ok_or_else(|| StoreError::BytesMissing {
                    what: "manifest",
                    digest: digest.clone(),
                })?;
        Ok(ManifestContent {
            digest,
            media_type: rec.media_type,
            bytes,
        })
    }

    /// Deletes by reference: a tag is removed (the manifest stays); a digest removes the
    /// manifest from the repository with every tag that points at it. Refused while an index in
    /// the repository references the manifest.
    pub(crate) async fn delete_manifest(
        &self,
        actor: &Actor,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<()> {
        match reference {
            Reference::Tag(tag) => self.untag(actor, repo, tag.as_str()).await,
            Reference::Digest(digest) => self.delete_manifest_digest(actor, repo, digest).await,
        }
    }

    /// Removes a tag.
    pub(crate) async fn untag(&self, actor: &Actor, repo: &RepoName, tag: &str) -> Result<()> {
        let _tag_held = self.lock_tag(repo, tag).await;
        let idx = &self.inner.index;
        let current = idx
            .tag(repo, tag)?
            .ok_or_else(|| StoreError::ManifestUnknown(format!("{repo}:{tag}")))?;
        let mut batch = Batch::new();
        batch.delete_tag(repo, tag, &current.digest);
        let version = self.next_tag_version(repo, tag, Some(&current))?;
        self.put_tombstone(&mut batch, repo, tag, &version)?;
        let mut ev = self.event(EventKind::TagDeleted, repo, actor);
        ev.tag = Some(tag.to_string());
        ev.digest = Some(current.digest.clone());
        batch.event(ev);
        batch.audit(
            self.change_audit(actor, AuditAction::TagDelete, repo, tag, None)
                .detail(format!("was {}", current.digest)),
        );
        self.commit(batch).await?;
        Ok(())
    }

    async fn delete_manifest_digest(
        &self,
        actor: &Actor,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<()> {
        let _held = self.inner.locks.exclusive([digest]).await;
        let idx = &self.inner.index;
        let rec = idx
            .manifest(repo, digest)?
            .ok_or_else(|| StoreError::ManifestUnknown(format!("{repo}@{digest}")))?;
        if let Some((_, parent, _)) = idx
            .referencing(digest)?
            .into_iter()
            .find(|(r, _, k)| r == repo && *k == RefKind::Child)
        {
            return Err(StoreError::Conflict(format!(
                "manifest {digest} is a child of index {parent} in {repo}; delete the index first"
            )));
        }
        let mut batch = Batch::new();
        let tags = idx.tags_pointing_at(repo, digest)?;
        // A concurrent put may be moving one of these tags elsewhere: hold the tags' locks and
        // delete only those that still point here.
        let _tags_held = self.lock_tags(repo, &tags).await;
        for tag in tags {
            let current = idx.tag(repo, &tag)?;
            if current.as_ref().map(|t| &t.digest) != Some(digest) {
                continue;
            }
            let version = self.next_tag_version(repo, &tag, current.as_ref())?;
            self.put_tombstone(&mut batch, repo, &tag, &version)?;
            batch.delete_tag(repo, &tag, digest);
            batch.audit(
                self.change_audit(actor, AuditAction::TagDelete, repo, tag.as_str(), None)
                    .detail(format!("was {digest}, deleted with it")),
            );
            let mut ev = self.event(EventKind::TagDeleted, repo, actor);
            ev.tag = Some(tag);
            ev.digest = Some(digest.clone());
            batch.event(ev);
        }
        self.remove_manifest(
            &mut batch,
            repo,
            digest,
            &rec,
            Author {
                actor,
                origin: None,
            },
            &[],
        )?;
        self.put_manifest_tombstone(&mut batch, repo, digest);
        self.commit(batch).await?;
        Ok(())
    }

    /// Adds to `batch` the removal of `repo`'s manifest `digest` (record `rec`): its reverse
    /// references, its referrer entry, and its document when no other repository holds it.
    /// `removed_with` are other repositories whose copy of the same manifest this batch also
    /// removes. Returns whether the document goes too. Caller holds the digest's stripe
    /// exclusively.
    pub(crate) fn remove_manifest(
        &self,
        batch: &mut Batch,
        repo: &RepoName,
        digest: &Digest,
        rec: &ManifestRecord,
        by: Author<'_>,
        removed_with: &[RepoName],
    ) -> Result<bool> {
        batch.delete_manifest(repo, digest);
        for d in &rec.blobs {
            batch.delete_ref(d, repo, digest);
        }
        for d in &rec.children {
            batch.delete_ref(d, repo, digest);
        }
        if let Some(subject) = &rec.subject {
            batch.delete_referrer(repo, subject, digest);
        }
        let others = self
            .inner
            .index
            .holders(digest, stowage_index::HoldKind::Manifest)?
            .into_iter()
            .any(|(r, _)| &r != repo && !removed_with.contains(&r));
        if !others {
            batch.delete_manifest_bytes(digest);
        }
        let mut ev = self.event_from(EventKind::ManifestDeleted, repo, by.actor, by.origin);
        ev.digest = Some(digest.clone());
        batch.event(ev);
        batch.audit(self.change_audit(
            by.actor,
            AuditAction::ManifestDelete,
            repo,
            digest.to_string(),
            by.origin,
        ));
        Ok(!others)
    }
}
