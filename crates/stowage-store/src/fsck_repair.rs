//! The second look of `stowage fsck` at each candidate finding (a fresh read, since a push or
//! a collection may have changed things after the scan), and the repairs of `--repair`.
//!
//! A repair takes the exclusive lock of the digests it touches, which every push and removal
//! of those digests takes too, reads again under it, and writes only if the defect is still
//! there: so it never undoes a change that landed after the scan. Each repair is one batch
//! with its audit entry. Derived rows are rewritten from the records they derive from; the
//! records themselves (links, manifests) are left as they are.

use stowage_core::{Actor, Descriptor, Digest, RepoName};
use stowage_index::{AuditAction, Batch, BlobState, HoldKind, IndexError, ManifestRecord, RefKind};

use crate::fsck::Defect;
use crate::{CorruptCheck, Result, Store, StoreError};

fn repo_name(s: &str) -> Result<RepoName> {
    RepoName::parse(s)
        .map_err(|e| StoreError::Index(IndexError::Corrupt(format!("repository name {s}: {e}"))))
}

/// The kind of reverse reference `rec` implies to `target`, if any.
fn implied_ref(rec: &ManifestRecord, target: &Digest) -> Option<RefKind> {
    if rec.blobs.contains(target) {
        Some(RefKind::Blob)
    } else if rec.children.contains(target) {
        Some(RefKind::Child)
    } else {
        None
    }
}

/// The referrer descriptor of manifest `digest` (as a manifest put writes it).
fn referrer_descriptor(digest: &Digest, rec: &ManifestRecord) -> Descriptor {
    Descriptor {
        media_type: rec.media_type.clone(),
        digest: digest.clone(),
        size: rec.size,
        artifact_type: rec.artifact_type.clone(),
        annotations: (!rec.annotations.is_empty()).then(|| rec.annotations.clone()),
        urls: None,
        platform: None,
    }
}

fn hold_kind(hold: &str) -> HoldKind {
    if hold == "link" {
        HoldKind::Link
    } else {
        HoldKind::Manifest
    }
}

impl Store {
    /// Reads again what `defect` is about; `None` when it no longer holds.
    pub(crate) async fn recheck(&self, defect: &Defect) -> Result<Option<Defect>> {
        match defect {
            Defect::BlobMissing { digest }
            | Defect::BlobSize { digest, .. }
            | Defect::BlobCorrupt { digest, .. } => {
                let _held = self.locks().shared([digest]).await;
                let Some(rec) = self.index().blob(digest)? else {
                    return Ok(None);
                };
                if rec.state != BlobState::Present {
                    return Ok(None);
                }
                Ok(match self.cas().size(digest).await? {
                    None => Some(Defect::BlobMissing {
                        digest: digest.clone(),
                    }),
                    Some(n) if n != rec.size => Some(Defect::BlobSize {
                        digest: digest.clone(),
                        recorded: rec.size,
                        stored: n,
                    }),
                    Some(_) if matches!(defect, Defect::BlobCorrupt { .. }) => self
                        .stored_mismatch(digest, rec.size)
                        .await?
                        .map(|detail| Defect::BlobCorrupt {
                            digest: digest.clone(),
                            detail,
                        }),
                    Some(_) => None,
                })
            }
            Defect::OrphanBytes { key, .. } => Ok(self.orphan_still(key)?.then(|| defect.clone())),
            Defect::FeedGap { .. } => Ok(Some(defect.clone())),
            _ => {
                let d = defect.clone();
                Ok(self
                    .blocking(move |s| s.derived_still(&d))
                    .await?
                    .then(|| defect.clone()))
            }
        }
    }

    /// Whether the object at `key` is still known to no record and named by no publish intent.
    fn orphan_still(&self, key: &str) -> Result<bool> {
        let Some(digest) = digest_of_key(key) else {
            return Ok(true);
        };
        let idx = self.index();
        Ok(idx.blob(&digest)?.is_none() && !idx.pending()?.iter().any(|(d, _, _)| *d == digest))
    }

    /// Whether an index-side defect still holds, by fresh reads.
    fn derived_still(&self, defect: &Defect) -> Result<bool> {
        let idx = self.index();
        Ok(match defect {
            Defect::ReferenceMissing {
                repo,
                manifest,
                target,
                ..
            } => {
                let r = repo_name(repo)?;
                idx.manifest(&r, manifest)?.is_some()
                    && !(idx
                        .blob(target)?
                        .is_some_and(|b| b.state == BlobState::Present)
                        && idx.repo_has_blob(&r, target)?)
            }
            Defect::ManifestBytesMissing { repo, manifest } => {
                idx.manifest(&repo_name(repo)?, manifest)?.is_some()
                    && !idx.has_manifest_bytes(manifest)?
            }
            Defect::RefMissing {
                target,
                repo,
                manifest,
            } => {
                let r = repo_name(repo)?;
                match idx
                    .manifest(&r, manifest)?
                    .and_then(|rec| implied_ref(&rec, target))
                {
                    None => false,
                    Some(kind) => !idx
                        .referencing_in(target, &r)?
                        .contains(&(manifest.clone(), kind)),
                }
            }
            Defect::RefStray {
                target,
                repo,
                manifest,
            } => {
                let r = repo_name(repo)?;
                idx.referencing_in(target, &r)?
                    .iter()
                    .any(|(m, _)| m == manifest)
                    && idx
                        .manifest(&r, manifest)?
                        .and_then(|rec| implied_ref(&rec, target))
                        .is_none()
            }
            Defect::HolderMissing { digest, hold, repo }
            | Defect::HolderStray { digest, hold, repo } => {
                let r = repo_name(repo)?;
                let kind = hold_kind(hold);
                let held = idx.holders(digest, kind)?.iter().any(|(h, _)| *h == r);
                let record = match kind {
                    HoldKind::Link => idx.repo_has_blob(&r, digest)?,
                    HoldKind::Manifest => idx.manifest(&r, digest)?.is_some(),
                };
                if matches!(defect, Defect::HolderMissing { .. }) {
                    record && !held
                } else {
                    held && !record
                }
            }
            Defect::ReferrerMissing {
                repo,
                subject,
                referrer,
            }
            | Defect::ReferrerStray {
                repo,
                subject,
                referrer,
            } => {
                let r = repo_name(repo)?;
                let listed = idx
                    .referrers(&r, subject)?
                    .iter()
                    .any(|d| d.digest == *referrer);
                let implied = idx
                    .manifest(&r, referrer)?
                    .is_some_and(|m| m.subject.as_ref() == Some(subject));
                if matches!(defect, Defect::ReferrerMissing { .. }) {
                    implied && !listed
                } else {
                    listed && !implied
                }
            }
            _ => true,
        })
    }

    /// Repairs a confirmed, repairable defect; says what was done (`None` when the defect was
    /// gone by the time the lock was held).
    pub(crate) async fn repair(&self, actor: &Actor, defect: &Defect) -> Result<Option<String>> {
        match defect {
            Defect::BlobMissing { digest }
            | Defect::BlobSize { digest, .. }
            | Defect::BlobCorrupt { digest, .. } => {
                // Checks again under the digest's exclusive lock itself.
                let found = format!("fsck: {defect}");
                Ok(
                    match self.quarantine_corrupt(actor, digest, &found).await? {
                        CorruptCheck::Quarantined { .. } => {
                            Some("quarantined as corrupt: no longer served".to_string())
                        }
                        CorruptCheck::AlreadyQuarantined { .. } => {
                            Some("already quarantined as corrupt".to_string())
                        }
                        CorruptCheck::Intact | CorruptCheck::NotServed => None,
                    },
                )
            }
            Defect::OrphanBytes { key, size } => {
                let digest = digest_of_key(key);
                let _held = self.locks().exclusive(digest.iter()).await;
                if !self.orphan_still(key)? {
                    return Ok(None);
                }
                let blob = stowage_cas::StoredBlob {
                    key: key.clone(),
                    digest,
                    size: *size,
                    modified: std::time::SystemTime::now(),
                };
                // Audited before the bytes go: a crash between the two leaves an entry for an
                // orphan the next check finds again, never bytes removed without a record.
                let mut batch = Batch::new();
                batch.audit(
                    self.audit_entry(actor, AuditAction::FsckRepair)
                        .target(key.clone())
                        .detail(format!("removed {size} bytes known to no record")),
                );
                self.commit_quiet(batch).await?;
                self.cas().delete_listed(&blob).await?;
                Ok(Some("removed".to_string()))
            }
            _ => self.repair_derived(actor, defect).await,
        }
    }

    /// Rewrites one derived row from the records, under the exclusive locks of the digests
    /// involved.
    async fn repair_derived(&self, actor: &Actor, defect: &Defect) -> Result<Option<String>> {
        let lock: Vec<Digest> = match defect {
            Defect::RefMissing {
                target, manifest, ..
            }
            | Defect::RefStray {
                target, manifest, ..
            } => vec![target.clone(), manifest.clone()],
            Defect::HolderMissing { digest, .. } | Defect::HolderStray { digest, .. } => {
                vec![digest.clone()]
            }
            Defect::ReferrerMissing {
                subject, referrer, ..
            }
            | Defect::ReferrerStray {
                subject, referrer, ..
            } => vec![subject.clone(), referrer.clone()],
            _ => return Ok(None),
        };
        let _held = self.locks().exclusive(&lock).await;
        let d = defect.clone();
        let Some((batch, done)) = self
            .blocking(move |s| {
                if !s.derived_still(&d)? {
                    return Ok(None);
                }
                s.derived_fix(&d).map(Some)
            })
            .await?
        else {
            return Ok(None);
        };
        let mut batch = batch;
        batch.audit(
            self.audit_entry(actor, AuditAction::FsckRepair)
                .target(defect.kind())
                .detail(format!("{defect}: {done}")),
        );
        self.commit_quiet(batch).await?;
        Ok(Some(done.to_string()))
    }

    /// The batch that rewrites a derived row, and what it does.
    fn derived_fix(&self, defect: &Defect) -> Result<(Batch, &'static str)> {
        let idx = self.index();
        let mut batch = Batch::new();
        let missing_record = || {
            StoreError::Index(IndexError::Corrupt(format!(
                "the record behind {defect} vanished under its lock"
            )))
        };
        let done = match defect {
            Defect::RefMissing {
                target,
                repo,
                manifest,
            } => {
                let r = repo_name(repo)?;
                let rec = idx.manifest(&r, manifest)?.ok_or_else(missing_record)?;
                let kind = implied_ref(&rec, target).ok_or_else(missing_record)?;
                batch.put_ref(target, &r, manifest, kind);
                "reverse reference rebuilt from the manifest"
            }
            Defect::RefStray {
                target,
                repo,
                manifest,
            } => {
                batch.delete_ref(target, &repo_name(repo)?, manifest);
                "reverse reference removed"
            }
            Defect::HolderMissing { digest, hold, repo } => {
                let r = repo_name(repo)?;
                match hold_kind(hold) {
                    HoldKind::Link => {
                        let at = idx.link_time(&r, digest)?.ok_or_else(missing_record)?;
                        batch.link_blob(&r, digest, at);
                    }
                    HoldKind::Manifest => {
                        let rec = idx.manifest(&r, digest)?.ok_or_else(missing_record)?;
                        batch.put_manifest(&r, digest, &rec);
                    }
                }
                "holder entry rebuilt from the record"
            }
            Defect::HolderStray { digest, hold, repo } => {
                let r = repo_name(repo)?;
                // The record is absent (checked under the lock): these remove the holder row
                // and an absent record row, nothing else.
                match hold_kind(hold) {
                    HoldKind::Link => batch.unlink_blob(&r, digest),
                    HoldKind::Manifest => batch.delete_manifest(&r, digest),
                }
                "holder entry removed"
            }
            Defect::ReferrerMissing {
                repo,
                subject,
                referrer,
            } => {
                let r = repo_name(repo)?;
                let rec = idx.manifest(&r, referrer)?.ok_or_else(missing_record)?;
                batch.put_referrer(&r, subject, referrer, &referrer_descriptor(referrer, &rec));
                "referrer entry rebuilt from the manifest"
            }
            Defect::ReferrerStray {
                repo,
                subject,
                referrer,
            } => {
                batch.delete_referrer(&repo_name(repo)?, subject, referrer);
                "referrer entry removed"
            }
            _ => return Err(missing_record()),
        };
        Ok((batch, done))
    }
}

/// The digest a listed key names, when it is a blob key.
fn digest_of_key(key: &str) -> Option<Digest> {
    let mut parts = key.split('/');
    let (Some("blobs"), Some(algorithm), Some(_), Some(hex), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let d = Digest::parse(&format!("{algorithm}:{hex}")).ok()?;
    (stowage_cas::blob_path(&d).as_ref() == key).then_some(d)
}
