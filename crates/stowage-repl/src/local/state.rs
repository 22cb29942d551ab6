//! The local site's state for anti-entropy: per-repository hashes in 256 buckets, and one
//! repository's full state (tags, manifests, deleted manifests).

use std::collections::{BTreeMap, HashSet};

use sha2::{Digest as _, Sha256};
use stowage_core::{Digest, RepoName};
use stowage_store::{StoreError, TagState};

use super::Local;
use crate::error::{ReplError, Result};
use crate::glob::Filters;

/// One repository's replicated state, for anti-entropy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RepoState {
    /// Tag states (set and deleted) that pass the tag filter, in tag order.
    pub tags: Vec<(String, TagState)>,
    /// Manifest digests.
    pub manifests: Vec<Digest>,
    /// Manifests deleted at the site (a client's or a replicated delete) and not pushed again.
    pub deleted_manifests: Vec<Digest>,
}

/// A repository's name and state hash.
pub type RepoHash = (String, [u8; 32]);

/// The bucket (0-255) a repository falls in for anti-entropy: the first byte of its name's
/// sha256.
pub fn bucket_of(repo: &str) -> u8 {
    Sha256::digest(repo.as_bytes())[0]
}

impl Local {
    /// One repository's state hash: its tags (those passing the filter) and, without a tag
    /// filter, its manifests. `None` when there is nothing to compare (no tags, no manifests).
    fn repo_hash(&self, repo: &RepoName, filters: &Filters) -> Result<Option<[u8; 32]>> {
        let state = self.repo_state_sync(repo, filters)?;
        let mut h = Sha256::new();
        let mut any = false;
        for (tag, s) in &state.tags {
            if let TagState::Set { digest, .. } = s {
                h.update(b"t\0");
                h.update(tag.as_bytes());
                h.update(b"\0");
                h.update(digest.to_string().as_bytes());
                h.update(b"\n");
                any = true;
            }
        }
        if filters.all_manifests() {
            for d in &state.manifests {
                h.update(b"m\0");
                h.update(d.to_string().as_bytes());
                h.update(b"\n");
                any = true;
            }
        }
        Ok(any.then(|| h.finalize().into()))
    }

    fn repos(&self, filters: &Filters) -> Result<Vec<RepoName>> {
        let idx = self.store.index();
        let mut out = Vec::new();
        let mut last: Option<String> = None;
        loop {
            let page = idx.repos(last.as_deref(), 1000).map_err(StoreError::from)?;
            let n = page.len();
            last = page.last().map(|r| r.to_string());
            let policy = self.policy.as_deref();
            out.extend(page.into_iter().filter(|r| {
                filters.repo_ok(r.as_str()) && policy.is_none_or(|p| p.sees(r.as_str()))
            }));
            if n < 1000 {
                return Ok(out);
            }
        }
    }

    fn hashes_sync(
        &self,
        filters: &Filters,
        buckets: Option<&HashSet<u8>>,
    ) -> Result<BTreeMap<u8, Vec<RepoHash>>> {
        let mut out: BTreeMap<u8, Vec<RepoHash>> = BTreeMap::new();
        for repo in self.repos(filters)? {
            let b = bucket_of(repo.as_str());
            if buckets.is_some_and(|set| !set.contains(&b)) {
                continue;
            }
            if let Some(hash) = self.repo_hash(&repo, filters)? {
                out.entry(b).or_default().push((repo.to_string(), hash));
            }
        }
        Ok(out)
    }

    /// The 256 bucket hashes of the filtered repositories.
    pub async fn bucket_hashes(&self, filters: &Filters) -> Result<Vec<[u8; 32]>> {
        let this = self.clone();
        let filters = filters.clone();
        let by_bucket = tokio::task::spawn_blocking(move || this.hashes_sync(&filters, None))
            .await
            .map_err(|e| ReplError::Task(format!("hashing repositories: {e}")))??;
        Ok((0..=255u8)
            .map(|b| {
                let mut h = Sha256::new();
                for (repo, hash) in by_bucket.get(&b).map(Vec::as_slice).unwrap_or_default() {
                    h.update(repo.as_bytes());
                    h.update(b"\0");
                    h.update(hash);
                }
                h.finalize().into()
            })
            .collect())
    }

    /// Per-repository hashes of the repositories in `buckets`.
    pub async fn repo_hashes(
        &self,
        filters: &Filters,
        buckets: &[u8],
    ) -> Result<Vec<(String, [u8; 32])>> {
        let this = self.clone();
        let filters = filters.clone();
        let set: HashSet<u8> = buckets.iter().copied().collect();
        let by_bucket = tokio::task::spawn_blocking(move || this.hashes_sync(&filters, Some(&set)))
            .await
            .map_err(|e| ReplError::Task(format!("hashing repositories: {e}")))??;
        Ok(by_bucket.into_values().flatten().collect())
    }

    fn repo_state_sync(&self, repo: &RepoName, filters: &Filters) -> Result<RepoState> {
        let tags = self
            .store
            .tag_states(repo)?
            .into_iter()
            .filter(|(t, _)| filters.tag_ok(t))
            .collect();
        let mut manifests: Vec<Digest> = self
            .store
            .index()
            .manifests(repo)
            .map_err(StoreError::from)?
            .into_iter()
            .map(|(d, _)| d)
            .collect();
        manifests.sort_by_key(|d| d.to_string());
        let deleted_manifests = self.store.deleted_manifests(repo)?;
        Ok(RepoState {
            tags,
            manifests,
            deleted_manifests,
        })
    }

    /// One repository's state (read on a blocking thread: it lists the whole repository).
    pub async fn repo_state(&self, repo: &RepoName, filters: &Filters) -> Result<RepoState> {
        let (this, repo, filters) = (self.clone(), repo.clone(), filters.clone());
        tokio::task::spawn_blocking(move || this.repo_state_sync(&repo, &filters))
            .await
            .map_err(|e| ReplError::Task(format!("reading a repository's state: {e}")))?
    }
}
