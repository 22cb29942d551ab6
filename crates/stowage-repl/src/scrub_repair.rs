//! The integrity scrub's repairs: a blob the scrub found corrupt (and the store quarantined)
//! is fetched from the first configured peer that serves a good copy, through the same path
//! an operator's `repl retry` takes ([`Replicator::fetch_from_peers`]): checked by the peer as
//! it sends, hashed here as it arrives, durable before the index serves it again.

use futures::future::BoxFuture;
use stowage_core::{Digest, RepoName};
use stowage_store::scrub::{Fate, Repairer};

use crate::replicator::Replicator;

/// Repositories tried per blob: a peer serves a blob only in a repository it has it in, and
/// the first few that link it here are the likely ones.
const REPOS_TRIED: usize = 4;

impl Repairer for Replicator {
    fn repair<'a>(&'a self, digest: &'a Digest, repos: &'a [RepoName]) -> BoxFuture<'a, Fate> {
        Box::pin(async move {
            if self.inner.peers.is_empty() {
                return Fate::Unrepaired {
                    reason: "no replication peer is configured".into(),
                };
            }
            if repos.is_empty() {
                return Fate::Unrepaired {
                    reason: "no repository links the blob, so no peer can be asked for it".into(),
                };
            }
            let mut failures = Vec::new();
            for repo in repos.iter().take(REPOS_TRIED) {
                match self.fetch_from_peers(repo, digest).await {
                    Ok(peer) => {
                        if let Some(p) = self.inner.peers.iter().find(|p| p.cfg.name == peer) {
                            p.update(|s| s.blobs_repaired += 1);
                        }
                        return Fate::Repaired { peer };
                    }
                    Err(e) => failures.push(format!("in {repo}: {e}")),
                }
            }
            Fate::Unrepaired {
                reason: failures.join("; "),
            }
        })
    }
}
