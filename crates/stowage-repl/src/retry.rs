//! Operator retries of parked entries, and the repair of a blob from another site.
//!
//! A retry first makes sure this site holds good bytes of the blob the entry needs: when it
//! does not (pushing: its own copy was quarantined as corrupt; pulling: the source's copy was),
//! the blob is fetched from the first configured peer that serves a good copy. The peer's
//! bytes are checked by the peer as it sends them and hashed here before anything is recorded,
//! and they come in through the store's ordinary receive path: durable before the index says
//! present, which also takes the blob out of quarantine. Then the entry is replicated again;
//! it leaves the list only if that goes through, and every attempt is audited as the
//! operator's.

use std::collections::HashMap;

use stowage_core::{Actor, Digest, RepoName};
use stowage_index::BlobState;
use stowage_store::{RepairReady, StoreError};

use crate::error::{ReplError, Result};
use crate::flow::Flow;
use crate::local::{BlobHeader, Local};
use crate::parked::{Parked, ParkedId};
use crate::remote::Remote;
use crate::replicator::{now_ms, Replicator, BLOB_ATTEMPTS};

/// Who records the good bytes a repair fetched from a peer (the audit entry's actor).
pub const REPAIR_ACTOR: &str = "blob-repair";

/// Which parked entries to retry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RetrySelection {
    /// These.
    Ids(Vec<ParkedId>),
    /// Every parked entry, of one peer or of all.
    All {
        /// Only this peer's.
        peer: Option<String>,
    },
}

/// How one retry ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryOutcome {
    /// Replicated; it left the list.
    Replicated,
    /// Failed again; it stays parked with the attempt recorded.
    StillParked,
    /// No such parked entry.
    Unknown,
}

/// One retried entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryResult {
    /// The entry.
    pub id: ParkedId,
    /// How it ended.
    pub outcome: RetryOutcome,
    /// The peer good bytes of its blob came from, when this retry repaired the blob.
    pub repaired_from: Option<String>,
    /// Why it stays parked.
    pub error: Option<String>,
}

impl Replicator {
    /// Parked entries of `peer` (every peer's with `None`), by peer and sequence.
    pub fn parked(&self, peer: Option<&str>) -> Result<Vec<(ParkedId, Parked)>> {
        self.inner.parked.list(peer)
    }

    /// Tries parked entries again, as `actor` (the operator, recorded in the audit log).
    pub async fn retry_parked(
        &self,
        which: RetrySelection,
        actor: &Actor,
    ) -> Result<Vec<RetryResult>> {
        let entries: Vec<(ParkedId, Option<Parked>)> = match which {
            RetrySelection::Ids(ids) => ids
                .into_iter()
                .map(|id| Ok((id.clone(), self.inner.parked.get(&id)?)))
                .collect::<Result<_>>()?,
            RetrySelection::All { peer } => self
                .inner
                .parked
                .list(peer.as_deref())?
                .into_iter()
                .map(|(id, p)| (id, Some(p)))
                .collect(),
        };
        // One greeting per peer, whatever the number of its entries.
        let mut flows: HashMap<String, std::result::Result<(Flow, String), String>> =
            HashMap::new();
        let mut out = Vec::with_capacity(entries.len());
        for (id, entry) in entries {
            let Some(mut entry) = entry else {
                out.push(RetryResult {
                    id,
                    outcome: RetryOutcome::Unknown,
                    repaired_from: None,
                    error: None,
                });
                continue;
            };
            if !flows.contains_key(&id.peer) {
                let flow = match self.peer(&id.peer) {
                    Ok(p) => self.flow(&p).await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                flows.insert(id.peer.clone(), flow);
            }
            let (repaired_from, result) = match flows.get(&id.peer) {
                Some(Ok((flow, target_site))) => {
                    self.retry_one(flow, target_site, &id, &entry).await
                }
                Some(Err(e)) => (None, Err(format!("peer {}: {e}", id.peer))),
                None => (None, Err(format!("peer {} was not greeted", id.peer))),
            };
            entry.attempts = entry.attempts.saturating_add(1);
            entry.last_attempt_ms = now_ms();
            let outcome = match result {
                Ok(()) => {
                    let detail = match &repaired_from {
                        Some(p) => format!(
                            "replicated after attempt {}; blob {} repaired from peer {p}",
                            entry.attempts, entry.blob
                        ),
                        None => format!("replicated after attempt {}", entry.attempts),
                    };
                    self.inner
                        .parked
                        .release(&id, &entry, actor, detail)
                        .await?;
                    tracing::info!(entry = %id, repaired_from = ?repaired_from, "parked entry replicated");
                    RetryResult {
                        id,
                        outcome: RetryOutcome::Replicated,
                        repaired_from,
                        error: None,
                    }
                }
                Err(e) => {
                    entry.last_error = e.clone();
                    self.inner.parked.failed_again(&id, &entry, actor).await?;
                    tracing::warn!(entry = %id, error = %e, "parked entry failed again");
                    RetryResult {
                        id,
                        outcome: RetryOutcome::StillParked,
                        repaired_from,
                        error: Some(e),
                    }
                }
            };
            out.push(outcome);
        }
        Ok(out)
    }

    /// Repairs the entry's blob here if needed, then replicates the entry. The error says
    /// both what the replication and (when it failed) the repair ran into.
    async fn retry_one(
        &self,
        flow: &Flow,
        target_site: &str,
        id: &ParkedId,
        entry: &Parked,
    ) -> (Option<String>, std::result::Result<(), String>) {
        let repo = match crate::convert::repo(&entry.event.repo) {
            Ok(r) => r,
            Err(e) => return (None, Err(e.to_string())),
        };
        let (repaired_from, repair_error) = match self.repair_blob(flow, &repo, &entry.blob).await {
            Ok(from) => (from, None),
            Err(e) => (None, Some(e.to_string())),
        };
        let applied = flow
            .apply_batch(&[(id.seq, entry.event.clone())], target_site)
            .await;
        match (applied, repair_error) {
            (Ok(()), _) => (repaired_from, Ok(())),
            (Err(e), None) => (repaired_from, Err(e.to_string())),
            (Err(e), Some(r)) => (repaired_from, Err(format!("{e}; repair: {r}"))),
        }
    }

    /// Makes sure this site serves `digest`: when it does not, fetches good bytes from the
    /// first configured peer that has them. Returns that peer's name (`None`: nothing was
    /// needed).
    async fn repair_blob(
        &self,
        flow: &Flow,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<String>> {
        let local = &self.inner.local;
        let served = local
            .store()
            .index()
            .blob(digest)
            .map_err(StoreError::from)?
            .is_some_and(|r| r.state == BlobState::Present);
        if served {
            return Ok(None);
        }
        let from = self.fetch_from_peers(repo, digest).await?;
        flow.peer.update(|s| s.blobs_repaired += 1);
        Ok(Some(from))
    }

    /// Fetches good bytes of `digest` (linked in `repo`) from the first configured peer that
    /// serves them, swapping them in for a copy quarantined as corrupt: the one repair path,
    /// for parked-entry retries and the integrity scrub. Returns the peer's name.
    pub(crate) async fn fetch_from_peers(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<String> {
        let local = &self.inner.local;
        let mut tried = Vec::new();
        for peer in &self.inner.peers {
            match fetch(local, &peer.remote, repo, digest).await {
                Ok(()) => {
                    tracing::info!(%digest, %repo, from = %peer.cfg.name, "blob repaired with good bytes from a peer");
                    return Ok(peer.cfg.name.clone());
                }
                Err(e) => tried.push(format!("{}: {e}", peer.cfg.name)),
            }
        }
        Err(ReplError::NotFound(format!(
            "no configured peer serves a good copy of blob {digest} in {repo} ({})",
            tried.join("; ")
        )))
    }
}

/// Fetches `digest` of `repo` from `peer` into this site, resuming from what earlier attempts
/// left, and starting over once if bytes held from a corrupt source spoil the result.
async fn fetch(local: &Local, peer: &Remote, repo: &RepoName, digest: &Digest) -> Result<()> {
    if local.store().clear_corrupt(digest).await? == RepairReady::Served {
        return Ok(());
    }
    let fixer = local.acting_for(Actor::system(REPAIR_ACTOR));
    let mut offset = 0;
    let mut restarted = false;
    for _ in 0..BLOB_ATTEMPTS {
        let (size, stream) = peer.read_blob(repo, digest, offset).await?;
        let header = BlobHeader {
            repo: repo.clone(),
            digest: digest.clone(),
            size,
            offset,
        };
        match fixer.put_blob(header, stream).await {
            Ok((_, true)) => return Ok(()),
            Ok((held, false)) | Err(ReplError::OffsetMismatch { held }) => offset = held,
            Err(ReplError::Invalid(_)) if offset > 0 && !restarted => {
                restarted = true;
                offset = 0;
            }
            Err(e) => return Err(e),
        }
    }
    Err(ReplError::Unavailable(format!(
        "blob {digest}: not complete after {BLOB_ATTEMPTS} attempts"
    )))
}
