//! The sending side of a blob transfer: every read is checked over the whole blob (see
//! [`crate::verify`]), and bytes that fail are reported to the store, which checks them again
//! and quarantines the blob. The error then names this site as the corrupt source.

use std::sync::atomic::Ordering;

use futures::StreamExt;
use stowage_core::{Actor, Digest, RepoName};
use stowage_index::{BlobState, Quarantine, QuarantineReason};
use stowage_store::{CorruptCheck, StoreError};

use super::{ByteStream, Local};
use crate::error::{ReplError, Result};
use crate::verify::{verified, Expected};

/// Who quarantines a blob whose bytes failed verification while replication read them (the
/// audit entry's actor, naming the reason).
pub const VERIFY_ACTOR: &str = "replication-verify";

impl Local {
    /// A blob's size and its bytes from `offset`, checked against the blob's recorded
    /// checksum or digest over the whole blob (see [`crate::verify`]): bad bytes end the stream
    /// with [`ReplError::SourceCorrupt`] before the last chunk, and the blob is quarantined
    /// here. A blob quarantined as corrupt earlier gives that error at once.
    pub async fn read_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        offset: u64,
    ) -> Result<(u64, ByteStream)> {
        let info = match self.store.stat_blob(repo, digest) {
            Ok(info) => info,
            Err(e @ StoreError::BlobUnknown(_)) => return Err(self.unserved(repo, digest, e)?),
            Err(e) => return Err(e.into()),
        };
        // A blob being sent stays until the transfer is over (renewed by every read).
        self.hold(digest)?;
        if offset > info.size {
            return Err(ReplError::Invalid(format!(
                "offset {offset} is past the end of blob {digest} ({} bytes)",
                info.size
            )));
        }
        if offset == info.size {
            return Ok((info.size, futures::stream::empty().boxed()));
        }
        let read = self.store.read_stat_blob(&info, None).await?;
        let expected = Expected {
            digest: digest.clone(),
            size: info.size,
            crc32c: info.crc32c,
        };
        let this = self.clone();
        let d = digest.clone();
        let stream = verified(
            read.stream.boxed(),
            expected,
            offset,
            move |detail| async move { this.found_corrupt(&d, &detail).await },
        );
        Ok((info.size, stream))
    }

    /// The error for a blob the store does not serve in `repo`: when `repo` still links it,
    /// the source's corruption (quarantined as corrupt, or its record gone because garbage
    /// collection purged that quarantine), so the entries that need it are parked rather
    /// than holding up the feed; else `unknown`. Blobs garbage collection quarantined for
    /// being unreferenced are unlinked first, so they stay `unknown`.
    fn unserved(&self, repo: &RepoName, digest: &Digest, unknown: StoreError) -> Result<ReplError> {
        let idx = self.store.index();
        if !idx.repo_has_blob(repo, digest).map_err(StoreError::from)? {
            return Ok(unknown.into());
        }
        let site = self.site_name();
        let message = match idx.blob(digest).map_err(StoreError::from)? {
            Some(rec) => match (rec.state, rec.quarantine) {
                (
                    BlobState::Deleted,
                    Some(Quarantine {
                        reason: QuarantineReason::Corrupt { detail },
                        ..
                    }),
                ) => format!(
                    "blob {digest} is quarantined as corrupt at source site {site} ({detail})"
                ),
                _ => return Ok(unknown.into()),
            },
            None => format!(
                "blob {digest} is linked in {repo} at source site {site} but stored there no more \
                 (quarantined as corrupt, then purged)"
            ),
        };
        Ok(ReplError::SourceCorrupt {
            digest: digest.clone(),
            message,
        })
    }

    fn site_name(&self) -> &str {
        self.store.site().unwrap_or("(unnamed)")
    }

    /// Bytes of `digest` read for replication failed verification (`detail`): the store checks
    /// them again and quarantines the blob if they really are bad. The error names this site
    /// as the corrupt source.
    async fn found_corrupt(&self, digest: &Digest, detail: &str) -> ReplError {
        let site = self.site_name().to_string();
        let found = format!(
            "read for replication by {} at site {site}: {detail}",
            self.actor
        );
        match self
            .store
            .quarantine_corrupt(&Actor::system(VERIFY_ACTOR), digest, &found)
            .await
        {
            Ok(CorruptCheck::Quarantined { detail }) => {
                self.corrupt_found.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%digest, site = %site, %detail, "blob corrupt at this site: quarantined; replication parks the entries that need it");
                ReplError::SourceCorrupt {
                    digest: digest.clone(),
                    message: format!(
                        "blob {digest} is corrupt at source site {site} ({detail}): quarantined there"
                    ),
                }
            }
            Ok(CorruptCheck::AlreadyQuarantined { detail }) => ReplError::SourceCorrupt {
                digest: digest.clone(),
                message: format!(
                    "blob {digest} is quarantined as corrupt at source site {site} ({detail})"
                ),
            },
            Ok(CorruptCheck::Intact) => ReplError::Unavailable(format!(
                "a read of blob {digest} at site {site} failed verification ({detail}), but its \
                 stored bytes are intact: a passing fault"
            )),
            Ok(CorruptCheck::NotServed) => {
                ReplError::NotFound(format!("blob {digest} is no longer served at site {site}"))
            }
            Err(e) => ReplError::from(e).context(format!(
                "checking blob {digest}, which failed verification ({detail})"
            )),
        }
    }
}
