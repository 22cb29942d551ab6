//! Expiring tag and manifest tombstones, and trimming the change feed.
//!
//! A tombstone only has to outlive every state it may meet again: a replicated set older than
//! the delete, or anti-entropy offering the deleted manifest back. Once a peer's feed position
//! and the longest replication lag are past it (the caller's horizon), it can go; without
//! expiry every deleted tag and manifest is remembered for ever.

use stowage_core::{Actor, RepoName};
use stowage_index::{keys, AuditAction, Batch};

use crate::replica::{decode_tombstone_written, MANIFEST_TOMBSTONE_PREFIX, TOMBSTONE_PREFIX};
use crate::{Result, Store, StoreError};

/// What one expiry pass removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TombstoneExpiry {
    /// Tag tombstones removed.
    pub tags: u64,
    /// Manifest tombstones removed.
    pub manifests: u64,
}

/// When a manifest tombstone was written (its value: eight big-endian bytes of unix ms).
fn manifest_tombstone_ms(v: &[u8]) -> Result<u64> {
    let arr: [u8; 8] = v
        .try_into()
        .map_err(|_| StoreError::Internal(format!("manifest tombstone of {} bytes", v.len())))?;
    Ok(u64::from_be_bytes(arr))
}

impl Store {
    /// Removes tag tombstones written here, and manifest tombstones whose delete time, before
    /// `before_ms` (a tag tombstone's age counts from when this site wrote it, not from the
    /// delete's version: a delete that replicated late is not expired on arrival). Each is re-read under the lock its writers take (the tag's, or
    /// the manifest digest's exclusive lock) and removed only if still that old, so a delete
    /// made meanwhile keeps its tombstone. One audit entry per repository and kind.
    pub(crate) async fn expire_tombstones(
        &self,
        actor: &Actor,
        before_ms: u64,
    ) -> Result<TombstoneExpiry> {
        let mut done = TombstoneExpiry::default();
        let idx = &self.inner.index;
        let mut tags: Vec<(RepoName, String)> = Vec::new();
        for (k, v) in idx.meta_scan(TOMBSTONE_PREFIX)? {
            if decode_tombstone_written(&v)?.1 >= before_ms {
                continue;
            }
            let (repo, rest) = keys::take_repo(&k[TOMBSTONE_PREFIX.len()..])?;
            let tag = String::from_utf8(rest.to_vec())
                .map_err(|e| StoreError::Internal(format!("tombstone tag not UTF-8: {e}")))?;
            tags.push((repo, tag));
        }
        for (repo, tag) in tags {
            let _held = self.lock_tag(&repo, &tag).await;
            let key = crate::replica::tombstone_key(&repo, &tag);
            let Some(v) = idx.meta(&key)? else { continue };
            let (version, written) = decode_tombstone_written(&v)?;
            if written >= before_ms {
                continue;
            }
            let mut batch = Batch::new();
            batch.delete_meta(&key);
            batch.audit(
                self.change_audit(actor, AuditAction::TombstoneExpire, &repo, tag, None)
                    .detail(format!(
                        "tag tombstone, version {} from origin {}",
                        version.ms, version.origin
                    )),
            );
            self.commit_quiet(batch).await?;
            done.tags += 1;
        }
        let mut manifests = Vec::new();
        for (k, v) in idx.meta_scan(MANIFEST_TOMBSTONE_PREFIX)? {
            if manifest_tombstone_ms(&v)? >= before_ms {
                continue;
            }
            let (repo, rest) = keys::take_repo(&k[MANIFEST_TOMBSTONE_PREFIX.len()..])?;
            let (digest, _) = keys::take_digest(rest)?;
            manifests.push((repo, digest));
        }
        for (repo, digest) in manifests {
            let _held = self.inner.locks.exclusive([&digest]).await;
            let key = crate::replica::manifest_tombstone_key(&repo, &digest);
            let Some(v) = idx.meta(&key)? else { continue };
            let at = manifest_tombstone_ms(&v)?;
            if at >= before_ms {
                continue;
            }
            let mut batch = Batch::new();
            batch.delete_meta(&key);
            batch.audit(
                self.change_audit(
                    actor,
                    AuditAction::TombstoneExpire,
                    &repo,
                    digest.to_string(),
                    None,
                )
                .detail(format!("manifest tombstone written at {at}")),
            );
            self.commit_quiet(batch).await?;
            done.manifests += 1;
        }
        Ok(done)
    }

    /// Removes change-feed entries up to `through` (see [`stowage_index::Index::trim_feed`]),
    /// audited as `feed_trim` by `actor`. Returns how many sequence numbers were trimmed.
    pub(crate) async fn trim_feed(&self, actor: &Actor, through: u64, why: String) -> Result<u64> {
        let store = self.clone();
        let audit = self
            .audit_entry(actor, AuditAction::FeedTrim)
            .target(format!("through {through}"))
            .detail(why);
        let n = tokio::task::spawn_blocking(move || store.inner.index.trim_feed(through, audit))
            .await
            .map_err(|e| StoreError::Internal(format!("feed trim task: {e}")))??;
        Ok(n)
    }
}
