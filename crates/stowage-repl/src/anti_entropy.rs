//! Anti-entropy: the source and target compared by hashes over the index (256 buckets, then
//! the repositories of differing buckets one by one), and what the target lacks sent.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use stowage_core::{Digest, RepoName};
use stowage_rpc::v1 as pb;
use stowage_store::TagState;

use crate::error::{ReplError, Result};
use crate::flow::{has_subject, Flow};

/// What one anti-entropy comparison found and repaired.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Buckets whose hashes differed.
    pub buckets_differing: u32,
    /// Repositories compared one by one (those in differing buckets).
    pub repositories_compared: u32,
    /// Repositories whose state differed.
    pub repositories_differing: u32,
    /// Manifests the target lacked and received.
    pub manifests_repaired: u32,
    /// Tag states the target lacked (or held older) and received.
    pub tags_repaired: u32,
    /// Manifests the target holds that the source does not (left alone).
    pub extra_at_target: u32,
    /// Manifests the source deleted (it still holds their tombstones) that were removed at the
    /// target, where deletes replicate: what the feed's delete entries would have done, for a
    /// reader that did not see them (its cursor fell below the trimmed feed).
    pub manifests_deleted: u32,
    /// Manifests and tags not sent because a blob they need is corrupt at the source (the
    /// feed entries that need them are parked; a retry sends them once it is repaired).
    pub skipped_corrupt: u32,
    /// How long it took.
    pub duration: Duration,
}

impl Flow {
    /// Compares source and target by hashes and repairs what the target lacks.
    pub(crate) async fn anti_entropy(&self) -> Result<SyncReport> {
        let started = Instant::now();
        let filters = &self.cfg().filters;
        let mut r = SyncReport::default();
        let (sb, tb) = futures::try_join!(
            self.source.bucket_hashes(filters),
            self.target.bucket_hashes(filters)
        )?;
        if sb.len() != 256 || tb.len() != 256 {
            return Err(ReplError::Invalid(format!(
                "bucket hashes: {} and {} instead of 256",
                sb.len(),
                tb.len()
            )));
        }
        let differing: Vec<u8> = (0..=255u8)
            .filter(|b| sb[*b as usize] != tb[*b as usize])
            .collect();
        r.buckets_differing = differing.len() as u32;
        if !differing.is_empty() {
            let (sr, tr) = futures::try_join!(
                self.source.repo_hashes(filters, &differing),
                self.target.repo_hashes(filters, &differing)
            )?;
            let sr: BTreeMap<String, [u8; 32]> = sr.into_iter().collect();
            let tr: BTreeMap<String, [u8; 32]> = tr.into_iter().collect();
            let names: BTreeSet<&String> = sr.keys().chain(tr.keys()).collect();
            r.repositories_compared = names.len() as u32;
            for name in names {
                if sr.get(name) == tr.get(name) {
                    continue;
                }
                r.repositories_differing += 1;
                let repo = crate::convert::repo(name)?;
                self.repair_repo(&repo, &mut r)
                    .await
                    .map_err(|e| e.context(format!("repairing {repo}")))?;
            }
        }
        r.duration = started.elapsed();
        Ok(r)
    }

    async fn repair_repo(&self, repo: &RepoName, r: &mut SyncReport) -> Result<()> {
        let filters = &self.cfg().filters;
        let (ss, ts) = futures::try_join!(
            self.source.repo_state(repo, filters),
            self.target.repo_state(repo, filters)
        )?;
        let target_manifests: HashSet<&Digest> = ts.manifests.iter().collect();
        let source_manifests: HashSet<&Digest> = ss.manifests.iter().collect();
        let origin = self.source_site.clone();
        let mut referrers = Vec::new();
        // A manifest the target deleted stays deleted: anti-entropy never undoes a delete (the
        // delete travels to the source through the feed, if deletes replicate that way).
        let deleted_at_target: HashSet<&Digest> = ts.deleted_manifests.iter().collect();
        if filters.all_manifests() {
            for d in ss
                .manifests
                .iter()
                .filter(|d| !target_manifests.contains(d) && !deleted_at_target.contains(d))
            {
                let Some(doc) = self.source.get_manifest(repo, d).await? else {
                    continue;
                };
                if has_subject(&doc) {
                    referrers.push((d.clone(), doc));
                    continue;
                }
                let sent = self.replicate_manifest(repo, d, doc, &origin, 0).await;
                if skipped(sent, r)?.is_some() {
                    r.manifests_repaired += 1;
                }
            }
        }
        let target_tags: HashMap<&String, &TagState> =
            ts.tags.iter().map(|(t, s)| (t, s)).collect();
        for (tag, state) in &ss.tags {
            let newer = target_tags
                .get(tag)
                .is_none_or(|t| t.version() < state.version());
            if newer && skipped(self.replicate_tag(repo, tag).await, r)? == Some(true) {
                r.tags_repaired += 1;
            }
        }
        for (d, doc) in referrers {
            let sent = self.replicate_manifest(repo, &d, doc, &origin, 0).await;
            if skipped(sent, r)?.is_some() {
                r.manifests_repaired += 1;
            }
        }
        // Deletes the source made (and still remembers), after the tags (a tagged manifest is
        // not deleted): applied as the feed would have. A manifest pushed again at the source
        // lost its tombstone then, so it is not here.
        let mut deleted_now: HashSet<&Digest> = HashSet::new();
        if self.cfg().replicate_deletes && filters.all_manifests() {
            for d in ss
                .deleted_manifests
                .iter()
                .filter(|d| target_manifests.contains(d) && !source_manifests.contains(d))
            {
                match self.target.delete_manifest(repo, d, &origin).await {
                    Ok(true) => {
                        r.manifests_deleted += 1;
                        deleted_now.insert(d);
                    }
                    Ok(false) => {}
                    // Held by an index at the target: left, counted as only at the target.
                    Err(ReplError::Conflict(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        r.extra_at_target += ts
            .manifests
            .iter()
            .filter(|d| !source_manifests.contains(d) && !deleted_now.contains(d))
            .count() as u32;
        Ok(())
    }
}

/// A step's result, with a blob corrupt at the source counted and passed over (`None`)
/// instead of failing the whole run: one bad blob must not stop the repair of the rest.
fn skipped<T>(step: Result<T>, r: &mut SyncReport) -> Result<Option<T>> {
    match step {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.corrupt_blob().is_some() => {
            tracing::warn!(error = %e, "anti-entropy passes over content whose blob is corrupt at the source");
            r.skipped_corrupt += 1;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Figures of one anti-entropy run for the wire.
pub fn sync_to_proto(r: &SyncReport) -> pb::SyncResponse {
    pb::SyncResponse {
        buckets_differing: r.buckets_differing,
        repositories_compared: r.repositories_compared,
        repositories_differing: r.repositories_differing,
        manifests_repaired: r.manifests_repaired,
        tags_repaired: r.tags_repaired,
        extra_at_target: r.extra_at_target,
        skipped_corrupt: r.skipped_corrupt,
        manifests_deleted: r.manifests_deleted,
        duration_ms: r.duration.as_millis() as u64,
    }
}
