//! One replication between a source and a target: a batch of feed entries applied per
//! repository (manifests children first, each after the blobs the target lacks; then the latest
//! state of every tag touched; then referrers; then manifest deletes), and blob transfers that
//! resume from what the target holds.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use stowage_core::{parse_manifest, Digest, RepoName};
use stowage_index::{Event, EventKind};
use stowage_store::TagState;

use crate::error::{ReplError, Result};
use crate::local::{BlobHeader, ManifestDoc};
use crate::replicator::{Peer, PeerConfig, BLOB_ATTEMPTS, MAX_DEPTH, TRANSFER_HOLD};
use crate::site::Site;

/// Per-repository work of one batch.
#[derive(Debug, Default)]
struct RepoWork {
    /// Manifests put, with the site each came from, in feed order.
    manifests: Vec<(Digest, String)>,
    /// Tags touched.
    tags: BTreeSet<String>,
    /// Manifests deleted, with their origin.
    deletes: Vec<(Digest, String)>,
}

/// One replication in progress between a source and a target.
pub(crate) struct Flow {
    pub(crate) peer: Arc<Peer>,
    pub(crate) source: Site,
    pub(crate) target: Site,
    /// The source site's name (origin of changes that carry none).
    pub(crate) source_site: String,
}

impl Flow {
    pub(crate) fn cfg(&self) -> &PeerConfig {
        &self.peer.cfg
    }

    /// Applies a batch of feed entries at the target; all of it or an error (a retry applies
    /// it again: everything is idempotent).
    pub(crate) async fn apply_batch(
        &self,
        events: &[(u64, Event)],
        target_site: &str,
    ) -> Result<()> {
        let filters = &self.cfg().filters;
        let mut work: BTreeMap<String, RepoWork> = BTreeMap::new();
        for (_, ev) in events {
            let origin = ev
                .origin
                .clone()
                .unwrap_or_else(|| self.source_site.clone());
            // Changes that came from the target go no further: no loops between sites.
            if origin == target_site || !filters.repo_ok(&ev.repo) {
                continue;
            }
            match (&ev.kind, &ev.digest, &ev.tag) {
                (EventKind::ManifestPut, Some(d), _) if filters.all_manifests() => {
                    work.entry(ev.repo.clone())
                        .or_default()
                        .manifests
                        .push((d.clone(), origin));
                }
                (EventKind::TagSet | EventKind::TagDeleted, _, Some(t)) if filters.tag_ok(t) => {
                    work.entry(ev.repo.clone())
                        .or_default()
                        .tags
                        .insert(t.clone());
                }
                (EventKind::ManifestDeleted, Some(d), _) if self.cfg().replicate_deletes => {
                    work.entry(ev.repo.clone())
                        .or_default()
                        .deletes
                        .push((d.clone(), origin));
                }
                _ => {}
            }
        }
        for (repo, w) in work {
            let name = crate::convert::repo(&repo)?;
            self.apply_repo(&name, w)
                .await
                .map_err(|e| e.context(format!("replicating {repo}")))?;
        }
        Ok(())
    }

    async fn apply_repo(&self, repo: &RepoName, w: RepoWork) -> Result<()> {
        let mut seen = HashSet::new();
        let mut referrers = Vec::new();
        for (digest, origin) in w.manifests {
            if !seen.insert(digest.clone()) {
                continue;
            }
            // Latest state: a manifest deleted since its event does not travel.
            let Some(doc) = self.source.get_manifest(repo, &digest).await? else {
                continue;
            };
            if has_subject(&doc) {
                referrers.push((digest, doc, origin));
                continue;
            }
            self.replicate_manifest(repo, &digest, doc, &origin, 0)
                .await?;
        }
        for tag in &w.tags {
            self.replicate_tag(repo, tag).await?;
        }
        for (digest, doc, origin) in referrers {
            self.replicate_manifest(repo, &digest, doc, &origin, 0)
                .await?;
        }
        for (digest, origin) in w.deletes {
            if self.source.has_manifest(repo, &digest).await? {
                continue;
            }
            if self.target.delete_manifest(repo, &digest, &origin).await? {
                self.peer.update(|s| s.deletes_applied += 1);
            }
        }
        Ok(())
    }

    /// Brings tag `tag` of `repo` at the target to the source's current state.
    pub(crate) async fn replicate_tag(&self, repo: &RepoName, tag: &str) -> Result<bool> {
        let Some(state) = self.source.tag_state(repo, tag).await? else {
            return Ok(false);
        };
        let applied = match &state {
            TagState::Set { digest, version } => {
                let doc = self
                    .source
                    .get_manifest(repo, digest)
                    .await?
                    .ok_or_else(|| {
                        // The tag moved and the manifest went meanwhile: the retry reads again.
                        ReplError::NotFound(format!(
                            "tag {repo}:{tag} points at {digest}, which is gone at the source"
                        ))
                    })?;
                self.replicate_manifest(repo, digest, doc, &version.origin, 0)
                    .await?;
                let applied = self.target.apply_tag(repo, tag, &state).await?;
                if applied {
                    self.peer.update(|s| s.tags_applied += 1);
                }
                applied
            }
            TagState::Deleted { .. } if self.cfg().replicate_deletes => {
                let applied = self.target.apply_tag(repo, tag, &state).await?;
                if applied {
                    self.peer.update(|s| s.deletes_applied += 1);
                }
                applied
            }
            TagState::Deleted { .. } => false,
        };
        Ok(applied)
    }

    /// Sends manifest `digest` and what it needs (children, then blobs) unless the target
    /// already holds it.
    pub(crate) fn replicate_manifest<'a>(
        &'a self,
        repo: &'a RepoName,
        digest: &'a Digest,
        doc: ManifestDoc,
        origin: &'a str,
        depth: usize,
    ) -> futures::future::BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if self.target.has_manifest(repo, digest).await? {
                return Ok(());
            }
            if depth > MAX_DEPTH {
                return Err(ReplError::Invalid(format!(
                    "manifest {digest}: indexes nested deeper than {MAX_DEPTH}"
                )));
            }
            let parsed = parse_manifest(Some(&doc.media_type), &doc.bytes).map_err(|e| {
                ReplError::Invalid(format!("manifest {repo}@{digest} at the source: {e}"))
            })?;
            let children: Vec<Digest> = parsed
                .manifest_references()
                .into_iter()
                .map(|d| d.digest.clone())
                .collect();
            let mut blobs: Vec<(Digest, u64)> = Vec::new();
            for b in parsed.blob_references() {
                if !blobs.iter().any(|(d, _)| d == &b.digest) {
                    blobs.push((b.digest.clone(), b.size));
                }
            }
            drop(parsed);
            for child in &children {
                // A child the source does not hold is one its sparse index was accepted
                // without; the target accepts the index the same way, so it is not sent.
                let Some(cdoc) = self.source.get_manifest(repo, child).await? else {
                    tracing::debug!(%repo, %digest, %child, "child absent at the source");
                    continue;
                };
                self.replicate_manifest(repo, child, cdoc, origin, depth + 1)
                    .await?;
            }
            self.transfer_blobs(repo, &blobs).await?;
            if self.target.put_manifest(repo, digest, doc, origin).await? {
                self.peer.update(|s| s.manifests_sent += 1);
            }
            Ok(())
        })
    }

    async fn transfer_blobs(&self, repo: &RepoName, blobs: &[(Digest, u64)]) -> Result<()> {
        if blobs.is_empty() {
            return Ok(());
        }
        if let Site::Local(l) = &self.source {
            // Collection at the source keeps what is being sent.
            let store = l.store();
            store.pin_blobs(
                blobs.iter().map(|(d, _)| d),
                store.now_ms() + TRANSFER_HOLD.as_millis() as u64,
            )?;
        }
        let missing = self
            .target
            .missing_blobs(repo, blobs, TRANSFER_HOLD)
            .await?;
        let sizes: HashMap<&Digest, u64> = blobs.iter().map(|(d, s)| (d, *s)).collect();
        let missing_set: HashSet<&Digest> = missing.iter().map(|(d, _)| d).collect();
        let (skipped_n, skipped_bytes) = blobs
            .iter()
            .filter(|(d, _)| !missing_set.contains(d))
            .fold((0u64, 0u64), |(n, b), (_, s)| (n + 1, b + s));
        self.peer.update(|s| {
            s.blobs_skipped += skipped_n;
            s.bytes_skipped += skipped_bytes;
        });
        let concurrency = self.cfg().concurrency.max(1);
        let mut transfers: Vec<futures::future::BoxFuture<'_, Result<()>>> = Vec::new();
        for (d, held) in missing.iter() {
            let size = sizes.get(d).copied().unwrap_or(0);
            transfers.push(self.transfer_blob(repo.clone(), d.clone(), size, *held));
        }
        futures::stream::iter(transfers)
            .buffer_unordered(concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    fn transfer_blob(
        &self,
        repo: RepoName,
        digest: Digest,
        size: u64,
        offset: u64,
    ) -> futures::future::BoxFuture<'_, Result<()>> {
        Box::pin(async move { self.transfer_blob_inner(&repo, &digest, size, offset).await })
    }

    async fn transfer_blob_inner(
        &self,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
        mut offset: u64,
    ) -> Result<()> {
        let mut restarted = false;
        for _ in 0..BLOB_ATTEMPTS {
            let (src_size, stream) = self.source.read_blob(repo, digest, offset).await?;
            if src_size != size {
                return Err(ReplError::Invalid(format!(
                    "blob {digest} is {src_size} bytes at the source, its manifest says {size}"
                )));
            }
            if offset > 0 {
                tracing::info!(%digest, offset, "resuming a blob transfer");
                self.peer.update(|s| s.bytes_resumed += offset);
            }
            let peer = self.peer.clone();
            let counted = stream
                .then(move |item| {
                    let peer = peer.clone();
                    async move {
                        if let Ok(b) = &item {
                            if let Some(l) = &peer.limiter {
                                l.take(b.len()).await;
                            }
                            peer.update(|s| s.bytes_sent += b.len() as u64);
                        }
                        item
                    }
                })
                .boxed();
            let header = BlobHeader {
                repo: repo.clone(),
                digest: digest.clone(),
                size,
                offset,
            };
            match self.target.put_blob(header, counted).await {
                Ok((_, true)) => {
                    self.peer.update(|s| s.blobs_sent += 1);
                    return Ok(());
                }
                Ok((held, false)) => offset = held,
                Err(ReplError::OffsetMismatch { held }) => offset = held,
                Err(ReplError::Invalid(m)) if offset > 0 && !restarted => {
                    // The bytes the target held did not make the blob with the rest (they came
                    // from a source whose copy was corrupt): the target dropped them; once more
                    // from the start.
                    tracing::warn!(%digest, offset, error = %m, "resumed blob refused by the target; sending it whole");
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
}

pub(crate) fn has_subject(doc: &ManifestDoc) -> bool {
    parse_manifest(Some(&doc.media_type), &doc.bytes).is_ok_and(|p| p.subject.is_some())
}
