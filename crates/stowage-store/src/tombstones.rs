//! Expiring tag and manifest tombstones, and trimming the change feed.
//!
//! A tombstone only has to outlive every state it may meet again: a replicated set older than
//! the delete, or anti-entropy offering the deleted manifest back. Once a peer's feed position
//! and the longest replication lag are past it (the caller's horizon), it can go; without
//! expiry every deleted tag and manifest is remembered for ever.

use stowage_core::{Actor, RepoName};
use stowage_index::{AuditAction, Batch};

use crate::{Result, Store, StoreError};

/// What one expiry pass removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TombstoneExpiry {
    /// Tag tombstones removed.
    pub tags: u64,
    /// Manifest tombstones removed.
    pub manifests: u64,
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
        for (repo, tag, t) in idx.tag_tombstones(None)? {
            if t.written_ms < before_ms {
                tags.push((repo, tag));
            }
        }
        for (repo, tag) in tags {
            let _held = self.lock_tag(&repo, &tag).await;
            let Some(version) = idx.tag_tombstone(&repo, &tag)? else {
                continue;
            };
            if version.written_ms >= before_ms {
                continue;
            }
            let mut batch = Batch::new();
            batch.delete_tag_tombstone(&repo, &tag);
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
        for (repo, digest, t) in idx.manifest_tombstones(None)? {
            if t.at_ms < before_ms {
                manifests.push((repo, digest));
            }
        }
        for (repo, digest) in manifests {
            let _held = self.inner.locks.exclusive([&digest]).await;
            let Some(t) = idx.manifest_tombstone(&repo, &digest)? else {
                continue;
            };
            let at = t.at_ms;
            if at >= before_ms {
                continue;
            }
            let mut batch = Batch::new();
            batch.delete_manifest_tombstone(&repo, &digest);
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
            .map_err(|source| StoreError::Task {
                task: "feed trim",
                source,
            })??;
        Ok(n)
    }
}
