//! Marking and the sweep decision, on one index snapshot.
//!
//! Roots, per repository: every tagged manifest; every manifest younger than the grace period
//! (a push in progress may tag it or reference it from an index next); with
//! `delete_untagged = false`, every manifest. From the roots, marking follows index -> child
//! manifest and subject -> referrer (a referrer lives while its subject does), transitively,
//! and every marked manifest marks its config and layers in its repository.
//!
//! Decisions:
//! * a manifest that is not marked and older than the grace period is a candidate;
//! * a blob link `(repository, blob)` that no marked manifest of the repository references and
//!   that is older than the grace period is a candidate;
//! * a blob whose links are all candidates (or that has none), and that was last linked before
//!   the grace period, is quarantined;
//! * a quarantined blob whose retention has passed is purged (with zero retention, that
//!   includes the blobs this run quarantines);
//! * a manifest document that no repository holds is removed;
//! * an upload session idle for longer than the expiry is removed.
//!
//! Memory: the blob table (about 70 bytes per blob) and the set of live `(repository, blob)`
//! pairs dominate; candidates are kept only for what is garbage.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use stowage_core::{Algorithm, Digest, RepoName};
use stowage_index::{BlobState, IndexError, Snapshot};

use crate::report::Counts;

/// A digest in compact form for the big tables: the raw sha256 hash, or for other algorithms
/// the sha256 of the digest string (a fingerprint; [`Plan::digest`] maps those back).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Key([u8; 32]);

impl Key {
    pub(crate) fn of(d: &Digest) -> Key {
        if d.algorithm() == Algorithm::Sha256 {
            if let Ok(arr) = <[u8; 32]>::try_from(d.raw_bytes().as_slice()) {
                return Key(arr);
            }
        }
        let fp = Digest::sha256(d.as_str().as_bytes()).raw_bytes();
        Key(<[u8; 32]>::try_from(fp.as_slice()).unwrap_or([0; 32]))
    }
}

/// Settings of one decision.
#[derive(Clone, Debug)]
pub(crate) struct MarkParams {
    /// Content changed at or after this time is young and kept.
    pub cutoff_ms: u64,
    /// Quarantined before this time: retention passed.
    pub purge_before_ms: u64,
    /// Zero retention: blobs quarantined by this run are purged by it too.
    pub purge_at_once: bool,
    /// Collect unreachable manifests.
    pub delete_untagged: bool,
    /// Blobs the store holds in memory for now (replication pins, digests clients have just
    /// seen): decided like fresh links, so a dry run predicts what the real run's re-check keeps.
    pub held: HeldInMemory,
}

/// Whether the store holds a digest in memory now (see [`MarkParams::held`]).
#[derive(Clone)]
pub(crate) struct HeldInMemory(pub std::sync::Arc<dyn Fn(&Digest) -> bool + Send + Sync>);

impl std::fmt::Debug for HeldInMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeldInMemory")
    }
}

/// A manifest to remove.
#[derive(Clone, Debug)]
pub(crate) struct ManifestCand {
    pub repo: RepoName,
    pub digest: Digest,
    pub created_ms: u64,
    /// Whether removing it removes the document too (no kept record holds it).
    pub document: bool,
}

/// A blob to unlink from some repositories, and maybe to quarantine. Compact: a large sweep
/// holds hundreds of thousands of these.
#[derive(Clone, Debug)]
pub(crate) struct BlobCand {
    pub key: Key,
    /// Its candidate links: `Plan::links[links.0 .. links.1]`.
    pub links: (u32, u32),
    pub quarantine: bool,
}

/// Everything a run would remove, decided on one snapshot.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub snapshot_seq: u64,
    /// Manifest candidates in levels: every candidate's candidate parents (indexes holding it
    /// as a child) and candidate subject are in earlier levels, so removing level by level
    /// never trips over a reference that is about to go.
    pub manifest_levels: Vec<Vec<ManifestCand>>,
    /// Stored documents no repository holds: `(digest, size)`.
    pub orphan_documents: Vec<(Digest, u64)>,
    pub blobs: Vec<BlobCand>,
    /// Candidate links of `blobs`: `(repository number, linked at)`.
    pub links: Vec<(u32, u64)>,
    /// Repository names by number.
    pub repo_names: Vec<RepoName>,
    /// Digests of keys that are fingerprints (not sha256).
    pub other_digests: HashMap<Key, Digest>,
    /// Quarantined blobs whose retention passed: `(digest, quarantined at, size)`.
    pub purge: Vec<(Digest, u64, u64)>,
    /// Per repository: marked figures and planned sweep figures.
    pub repos: BTreeMap<String, Counts>,
    /// Site-wide planned figures: quarantine, purge (uploads are added by the caller).
    pub site: Counts,
}

/// What marking needs of a blob record (32 bytes; a sorted table of these, not a hash map,
/// so a million blobs cost 64 MB with their keys).
#[derive(Clone, Copy, Debug)]
struct BlobInfo {
    size: u64,
    updated_ms: u64,
    /// Quarantined at (unix ms); `NOT_QUARANTINED` when served.
    quarantined_at: u64,
    /// Some link of it is kept (live or young).
    held: bool,
}

const NOT_QUARANTINED: u64 = u64::MAX;

impl Plan {
    /// The digest of a key.
    pub(crate) fn digest(&self, key: &Key) -> Result<Digest, IndexError> {
        if let Some(d) = self.other_digests.get(key) {
            return Ok(d.clone());
        }
        Digest::from_raw(Algorithm::Sha256, &key.0)
            .map_err(|e| corrupt(format!("digest in blob table: {e}")))
    }

    /// The candidate links of `cand`, as the store takes them.
    pub(crate) fn link_candidates(&self, cand: &BlobCand) -> Vec<stowage_store::LinkCandidate> {
        let (from, to) = cand.links;
        self.links[from as usize..to as usize]
            .iter()
            .filter_map(|(repo, linked_ms)| {
                self.repo_names
                    .get(*repo as usize)
                    .map(|r| stowage_store::LinkCandidate {
                        repo: r.clone(),
                        linked_ms: *linked_ms,
                    })
            })
            .collect()
    }
}

/// One repository's manifests while it is being marked.
struct RepoManifests {
    name: String,
    records: Vec<(Digest, stowage_index::ManifestRecord)>,
}

fn corrupt(msg: String) -> IndexError {
    IndexError::Corrupt(msg)
}

/// Marks and decides. `progress` is called now and then with items scanned so far.
pub(crate) fn plan(
    snap: &Snapshot<'_>,
    params: &MarkParams,
    mut progress: impl FnMut(u64),
) -> Result<Plan, IndexError> {
    let mut plan = Plan {
        snapshot_seq: snap.last_seq()?,
        ..Plan::default()
    };
    let mut scanned = 0u64;
    let mut tick = |n: &mut u64| {
        *n += 1;
        if (*n).is_multiple_of(10_000) {
            progress(*n);
        }
    };

    // Repository interning: the big tables key on a small number instead of the name.
    let mut repo_ids: HashMap<String, u32> = HashMap::new();
    let mut repo_names: Vec<String> = Vec::new();
    let mut intern = |name: &str| -> u32 {
        if let Some(id) = repo_ids.get(name) {
            return *id;
        }
        let id = repo_names.len() as u32;
        repo_names.push(name.to_string());
        repo_ids.insert(name.to_string(), id);
        id
    };

    // Tags: repository -> tagged manifests.
    let mut tagged: HashMap<u32, HashSet<Key>> = HashMap::new();
    snap.tags(|repo, _tag, rec| {
        tick(&mut scanned);
        tagged
            .entry(intern(repo))
            .or_default()
            .insert(Key::of(&rec.digest));
        Ok(())
    })?;

    // Manifests, one repository at a time (the column family is repository-major).
    let mut live: Vec<(u32, Key)> = Vec::new();
    let mut kept_documents: HashSet<Key> = HashSet::new();
    let mut cands: Vec<(u32, ManifestCand, Option<Digest>, Vec<Digest>)> = Vec::new();
    let mut current: Option<RepoManifests> = None;
    let mut finish_repo = |group: RepoManifests,
                           intern: &mut dyn FnMut(&str) -> u32,
                           plan: &mut Plan|
     -> Result<(), IndexError> {
        let repo_id = intern(&group.name);
        let empty = HashSet::new();
        let tags = tagged.get(&repo_id).unwrap_or(&empty);
        let by_digest: HashMap<&Digest, usize> = group
            .records
            .iter()
            .enumerate()
            .map(|(i, (d, _))| (d, i))
            .collect();
        let mut referrers: HashMap<&Digest, Vec<usize>> = HashMap::new();
        for (i, (_, rec)) in group.records.iter().enumerate() {
            if let Some(s) = &rec.subject {
                referrers.entry(s).or_default().push(i);
            }
        }
        let mut marked = vec![false; group.records.len()];
        let mut queue: VecDeque<usize> = VecDeque::new();
        for (i, (d, rec)) in group.records.iter().enumerate() {
            let root = !params.delete_untagged
                || rec.created_ms >= params.cutoff_ms
                || tags.contains(&Key::of(d));
            if root {
                marked[i] = true;
                queue.push_back(i);
            }
        }
        while let Some(i) = queue.pop_front() {
            let (d, rec) = &group.records[i];
            let next = rec
                .children
                .iter()
                .filter_map(|c| by_digest.get(c).copied())
                .chain(referrers.get(d).into_iter().flatten().copied());
            for j in next {
                if !marked[j] {
                    marked[j] = true;
                    queue.push_back(j);
                }
            }
        }
        let counts = plan.repos.entry(group.name.clone()).or_default();
        let repo = RepoName::parse(&group.name)
            .map_err(|e| corrupt(format!("repository {:?} in index: {e}", group.name)))?;
        for ((d, rec), m) in group.records.into_iter().zip(marked) {
            if m {
                counts.manifests_marked += m as u64;
                for b in &rec.blobs {
                    live.push((repo_id, Key::of(b)));
                }
                kept_documents.insert(Key::of(&d));
            } else {
                counts.manifests_swept += 1;
                counts.manifest_bytes_swept += rec.size;
                cands.push((
                    repo_id,
                    ManifestCand {
                        repo: repo.clone(),
                        digest: d,
                        created_ms: rec.created_ms,
                        document: false,
                    },
                    rec.subject,
                    rec.children,
                ));
            }
        }
        Ok(())
    };
    snap.manifests(|repo, digest, rec| {
        tick(&mut scanned);
        if current.as_ref().map(|g| g.name.as_str()) != Some(repo) {
            if let Some(done) = current.take() {
                finish_repo(done, &mut intern, &mut plan)?;
            }
            current = Some(RepoManifests {
                name: repo.to_string(),
                records: Vec::new(),
            });
        }
        if let Some(g) = current.as_mut() {
            g.records.push((digest, rec));
        }
        Ok(())
    })?;
    if let Some(done) = current.take() {
        finish_repo(done, &mut intern, &mut plan)?;
    }
    drop(tagged);

    // Documents: a candidate removes its document when no kept record holds it; documents no
    // record holds at all are orphans.
    let mut candidate_documents: HashSet<Key> = HashSet::new();
    for (_, c, _, _) in cands.iter_mut() {
        let k = Key::of(&c.digest);
        c.document = !kept_documents.contains(&k);
        candidate_documents.insert(k);
    }
    snap.manifest_documents(|digest, size| {
        tick(&mut scanned);
        let k = Key::of(&digest);
        if !kept_documents.contains(&k) && !candidate_documents.contains(&k) {
            plan.orphan_documents.push((digest, size));
        }
        Ok(())
    })?;
    drop(kept_documents);
    drop(candidate_documents);
    plan.manifest_levels = levels(cands);

    live.sort_unstable();
    live.dedup();
    live.shrink_to_fit();

    // Blobs: sizes, ages, quarantine state.
    let mut blobs: Vec<(Key, BlobInfo)> = Vec::new();
    snap.blobs(|digest, rec| {
        tick(&mut scanned);
        let quarantined_at = match rec.state {
            BlobState::Present => NOT_QUARANTINED,
            BlobState::Deleted => rec.quarantine.as_ref().map(|q| q.at_ms).unwrap_or(0),
        };
        if quarantined_at != NOT_QUARANTINED && quarantined_at < params.purge_before_ms {
            plan.site.blobs_purged += 1;
            plan.site.bytes_purged += rec.size;
            plan.purge.push((digest.clone(), quarantined_at, rec.size));
        }
        let key = Key::of(&digest);
        if digest.algorithm() != Algorithm::Sha256 {
            plan.other_digests.insert(key, digest);
        }
        blobs.push((
            key,
            BlobInfo {
                size: rec.size,
                updated_ms: rec.updated_ms,
                quarantined_at,
                held: false,
            },
        ));
        Ok(())
    })?;
    blobs.sort_unstable_by_key(|(k, _)| *k);
    blobs.shrink_to_fit();

    // Links: live, young, or candidate.
    let mut link_cands: Vec<(Key, u32, u64)> = Vec::new();
    let mut repo_cache: Option<(String, u32)> = None;
    snap.links(|repo, digest, linked_ms| {
        tick(&mut scanned);
        if repo_cache.as_ref().map(|c| c.0.as_str()) != Some(repo) {
            repo_cache = Some((repo.to_string(), intern(repo)));
        }
        let Some((_, repo_id)) = repo_cache.as_ref() else {
            return Ok(());
        };
        let key = Key::of(&digest);
        let is_live = live.binary_search(&(*repo_id, key)).is_ok();
        let kept = is_live || linked_ms >= params.cutoff_ms || (params.held.0)(&digest);
        if digest.algorithm() != Algorithm::Sha256 {
            plan.other_digests.insert(key, digest);
        }
        let slot = blobs.binary_search_by(|(k, _)| k.cmp(&key)).ok();
        let size = slot.map(|i| blobs[i].1.size).unwrap_or(0);
        let counts = plan.repos.entry(repo.to_string()).or_default();
        if kept {
            if is_live {
                counts.blobs_marked += 1;
                counts.bytes_marked += size;
            }
            if let Some(i) = slot {
                blobs[i].1.held = true;
            }
        } else {
            counts.blobs_swept += 1;
            counts.bytes_swept += size;
            link_cands.push((key, *repo_id, linked_ms));
        }
        Ok(())
    })?;
    drop(live);
    link_cands.sort_unstable();

    // Blob decisions: walk the blob table and the candidate links together (both sorted).
    let mut li = 0;
    let push = |plan: &mut Plan, key: Key, quarantine: bool, li: &mut usize| {
        let from = plan.links.len() as u32;
        while *li < link_cands.len() && link_cands[*li].0 == key {
            plan.links.push((link_cands[*li].1, link_cands[*li].2));
            *li += 1;
        }
        plan.blobs.push(BlobCand {
            key,
            links: (from, plan.links.len() as u32),
            quarantine,
        });
    };
    for (key, b) in &blobs {
        // Candidate links of digests without a blob record come first in key order.
        while li < link_cands.len() && link_cands[li].0 < *key {
            let k = link_cands[li].0;
            push(&mut plan, k, false, &mut li);
        }
        let quarantine =
            b.quarantined_at == NOT_QUARANTINED && !b.held && b.updated_ms < params.cutoff_ms;
        if quarantine {
            plan.site.blobs_quarantined += 1;
            plan.site.bytes_quarantined += b.size;
            if params.purge_at_once {
                plan.site.blobs_purged += 1;
                plan.site.bytes_purged += b.size;
            }
        }
        let has_links = li < link_cands.len() && link_cands[li].0 == *key;
        if quarantine || has_links {
            push(&mut plan, *key, quarantine, &mut li);
        }
    }
    while li < link_cands.len() {
        let k = link_cands[li].0;
        push(&mut plan, k, false, &mut li);
    }
    plan.repo_names = repo_names
        .iter()
        .map(|n| RepoName::parse(n).map_err(|e| corrupt(format!("repository {n:?} in index: {e}"))))
        .collect::<Result<_, _>>()?;
    progress(scanned);
    Ok(plan)
}

/// Orders manifest candidates so that, within a repository, an index comes before its
/// candidate children and a subject before its candidate referrers.
fn levels(cands: Vec<(u32, ManifestCand, Option<Digest>, Vec<Digest>)>) -> Vec<Vec<ManifestCand>> {
    let pos: HashMap<(u32, &Digest), usize> = cands
        .iter()
        .enumerate()
        .map(|(i, (r, c, _, _))| ((*r, &c.digest), i))
        .collect();
    // Edges: before -> after.
    let mut after: Vec<Vec<usize>> = vec![Vec::new(); cands.len()];
    let mut indegree = vec![0usize; cands.len()];
    for (i, (r, _, subject, children)) in cands.iter().enumerate() {
        for c in children {
            if let Some(&j) = pos.get(&(*r, c)) {
                after[i].push(j);
                indegree[j] += 1;
            }
        }
        if let Some(s) = subject {
            if let Some(&j) = pos.get(&(*r, s)) {
                after[j].push(i);
                indegree[i] += 1;
            }
        }
    }
    drop(pos);
    let mut level: Vec<usize> = (0..cands.len()).filter(|i| indegree[*i] == 0).collect();
    let mut placed = vec![false; cands.len()];
    let mut order: Vec<Vec<usize>> = Vec::new();
    while !level.is_empty() {
        let mut next = Vec::new();
        for &i in &level {
            placed[i] = true;
            for &j in &after[i] {
                indegree[j] -= 1;
                if indegree[j] == 0 {
                    next.push(j);
                }
            }
        }
        order.push(std::mem::take(&mut level));
        level = next;
    }
    // Content addressing rules out cycles; anything unplaced still goes last (its re-check
    // keeps it if something references it).
    let rest: Vec<usize> = (0..cands.len()).filter(|i| !placed[*i]).collect();
    if !rest.is_empty() {
        order.push(rest);
    }
    let mut slots: Vec<Option<ManifestCand>> =
        cands.into_iter().map(|(_, c, _, _)| Some(c)).collect();
    order
        .into_iter()
        .map(|lvl| lvl.into_iter().filter_map(|i| slots[i].take()).collect())
        .collect()
}
