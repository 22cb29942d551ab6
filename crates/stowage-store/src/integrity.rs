//! Blobs whose stored bytes fail verification when they are read.
//!
//! A reader that finds bad bytes (replication sending a blob checks every byte it sends)
//! reports them here. The blob is checked again, by its digest, under the digest's exclusive
//! lock: a read that failed for a passing reason (a flipped bit in memory, a short read) must
//! not cost the site good bytes. If the stored bytes really are wrong, the blob is quarantined
//! as corrupt in one batch with its audit entry: the index stops serving it (clients get
//! `BLOB_UNKNOWN`, manifests that reference it stay), and only then are the bad bytes removed
//! (invariant 3: bytes never vanish while the index says present). Removing them matters:
//! publishing is create-if-absent, so bad bytes left in place would be kept by the next
//! upload of the same digest and served again as present.
//!
//! Good bytes come back through an ordinary upload (a client pushing the blob again, or
//! replication fetching it from another site): the commit finds the quarantined record and
//! makes it present again with the new bytes' checksum. [`Store::clear_corrupt`] removes
//! whatever is stored under the digest first, in case a crash came between quarantining and
//! removing the bytes.

use futures::StreamExt;
use stowage_cas::CasError;
use stowage_core::{Actor, Digest, Hasher};
use stowage_index::{AuditAction, AuditOutcome, Batch, BlobState, Quarantine, QuarantineReason};

use crate::{Result, Store, StoreError};

/// What [`Store::quarantine_corrupt`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CorruptCheck {
    /// The stored bytes do not match: the blob is quarantined as corrupt now.
    Quarantined {
        /// What did not match.
        detail: String,
    },
    /// It was quarantined as corrupt before (an earlier read found it).
    AlreadyQuarantined {
        /// What did not match then.
        detail: String,
    },
    /// The stored bytes match their digest: the read that failed met a passing fault.
    Intact,
    /// The site does not serve the blob (unknown here, or collected by garbage collection).
    NotServed,
}

/// What [`Store::clear_corrupt`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepairReady {
    /// The blob is served (good bytes arrived meanwhile): nothing to fetch.
    Served,
    /// Nothing is stored under the digest any more: good bytes committed through an upload
    /// are published and make the blob present again.
    Cleared,
}

impl Store {
    /// Checks the stored bytes of `digest` by its digest and, when they do not match,
    /// quarantines the blob as corrupt and removes the bytes. `actor` is recorded in the
    /// audit entry with `found`, what the reporting reader saw.
    pub(crate) async fn quarantine_corrupt(
        &self,
        actor: &Actor,
        digest: &Digest,
        found: &str,
    ) -> Result<CorruptCheck> {
        let _held = self.inner.locks.exclusive([digest]).await;
        let idx = &self.inner.index;
        let Some(mut rec) = idx.blob(digest)? else {
            return Ok(CorruptCheck::NotServed);
        };
        if rec.state == BlobState::Deleted {
            return Ok(match rec.quarantine {
                Some(Quarantine {
                    reason: QuarantineReason::Corrupt { detail },
                    ..
                }) => CorruptCheck::AlreadyQuarantined { detail },
                _ => CorruptCheck::NotServed,
            });
        }
        let Some(detail) = self.stored_mismatch(digest, rec.size).await? else {
            tracing::warn!(%digest, found, "a read of the blob failed verification, but its stored bytes are intact");
            return Ok(CorruptCheck::Intact);
        };
        let now = self.now_ms();
        rec.state = BlobState::Deleted;
        rec.updated_ms = now;
        rec.quarantine = Some(Quarantine {
            at_ms: now,
            repos: Vec::new(),
            run_id: 0,
            reason: QuarantineReason::Corrupt {
                detail: detail.clone(),
            },
        });
        let mut batch = Batch::new();
        batch.put_blob(digest, &rec);
        batch.audit(
            self.audit_entry(actor, AuditAction::BlobCorrupt)
                .target(digest.to_string())
                .outcome(AuditOutcome::Failed)
                .detail(format!(
                    "{found}; checked again: {detail}; {} bytes quarantined and removed",
                    rec.size
                )),
        );
        self.commit_quiet(batch).await?;
        tracing::error!(%digest, size = rec.size, %detail, found, "blob bytes are corrupt: quarantined, no longer served");
        // The index no longer serves the blob: the bad bytes may go.
        if let Err(e) = self.inner.cas.delete(digest).await {
            tracing::warn!(%digest, error = %e, "removing the bytes of a corrupt blob failed; a repair removes them first");
        }
        Ok(CorruptCheck::Quarantined { detail })
    }

    /// Makes way for good bytes of `digest`: when the blob is quarantined as corrupt (or not
    /// recorded at all), whatever is stored under the digest is removed. Refused for a blob
    /// garbage collection quarantined (its bytes are good; restore it instead).
    pub(crate) async fn clear_corrupt(&self, digest: &Digest) -> Result<RepairReady> {
        let _held = self.inner.locks.exclusive([digest]).await;
        match self.inner.index.blob(digest)? {
            Some(rec) if rec.state == BlobState::Present => Ok(RepairReady::Served),
            None
            | Some(stowage_index::BlobRecord {
                quarantine:
                    Some(Quarantine {
                        reason: QuarantineReason::Corrupt { .. },
                        ..
                    }),
                ..
            }) => {
                // No commit of this digest is in flight under the exclusive lock, so what is
                // stored is the corrupt bytes (or bytes a crash left unindexed).
                self.inner.cas.delete(digest).await?;
                Ok(RepairReady::Cleared)
            }
            Some(_) => Err(StoreError::Conflict(format!(
                "blob {digest} was quarantined by garbage collection, not as corrupt: restore it instead"
            ))),
        }
    }

    /// What is wrong with the stored bytes of `digest` (`size` bytes as recorded), or `None`
    /// when they hash to it. A read that breaks off is an error, not a verdict.
    pub(crate) async fn stored_mismatch(
        &self,
        digest: &Digest,
        size: u64,
    ) -> Result<Option<String>> {
        let missing = || Some("its bytes are missing from the blob store".to_string());
        match self.inner.cas.size(digest).await? {
            None => return Ok(missing()),
            Some(n) if n != size => {
                return Ok(Some(format!(
                    "{n} bytes are stored, its record says {size}"
                )))
            }
            Some(_) => {}
        }
        let mut stream = match self.inner.cas.read(digest, size, None, None).await {
            Ok(s) => s,
            Err(CasError::NotFound(_)) => return Ok(missing()),
            Err(e) => return Err(e.into()),
        };
        let mut hasher = Hasher::new(digest.algorithm());
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(b) => hasher.update(&b),
                Err(CasError::Corrupt { detail, .. }) => return Ok(Some(detail)),
                Err(e) => return Err(e.into()),
            }
        }
        let actual = hasher.finish();
        Ok((&actual != digest).then(|| format!("its bytes hash to {actual}")))
    }
}
