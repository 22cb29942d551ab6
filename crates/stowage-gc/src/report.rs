//! What a run did: counts and bytes per repository and in total, phase durations, outcome.
//! Reports are kept in the index (run history) as JSON, so these names are a stored format:
//! add fields with `#[serde(default)]`, never rename.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The phases of a run, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Accepted, not started.
    Queued,
    /// Marking from the roots on an index snapshot and deciding the candidates.
    Mark,
    /// Deleting unreachable manifests (each re-checked under its digest's lock).
    SweepManifests,
    /// Unlinking unreachable blobs from repositories and quarantining blobs nothing holds.
    SweepBlobs,
    /// Removing quarantined blobs whose retention has passed.
    Purge,
    /// Removing upload sessions past their expiry, with their staged bytes.
    Uploads,
    /// Finished (see the report's status).
    Done,
}

impl Phase {
    /// Stable lower-case name (also used in metrics and the CLI).
    pub fn as_str(&self) -> &'static str {
        match self {
            Phase::Queued => "queued",
            Phase::Mark => "mark",
            Phase::SweepManifests => "sweep_manifests",
            Phase::SweepBlobs => "sweep_blobs",
            Phase::Purge => "purge",
            Phase::Uploads => "uploads",
            Phase::Done => "done",
        }
    }
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Still going.
    Running,
    /// Every phase ran.
    Completed,
    /// A phase failed; the report holds what was done before the error.
    Failed,
    /// The daemon stopped (or crashed) during the run; found and closed at the next start.
    Interrupted,
}

/// Counts and bytes, for one repository or in total.
///
/// *Marked* is what the roots reach. *Swept* counts index entries removed: manifests removed
/// from a repository and blob links removed from a repository (a blob held by several
/// repositories counts once per repository). *Quarantined* counts blobs that no repository holds
/// any more: they stop being served and their bytes wait out the retention window. *Purged*
/// counts quarantined bytes removed for good. Byte figures for blobs are blob sizes; for
/// manifests, the size of the manifest document.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counts {
    /// Manifests reachable from a root.
    pub manifests_marked: u64,
    /// Repository blob links reachable from a root.
    pub blobs_marked: u64,
    /// Bytes of those blobs.
    pub bytes_marked: u64,
    /// Manifests removed from a repository.
    pub manifests_swept: u64,
    /// Bytes of those manifest documents.
    pub manifest_bytes_swept: u64,
    /// Blob links removed from a repository.
    pub blobs_swept: u64,
    /// Bytes of those blobs.
    pub bytes_swept: u64,
    /// Blobs quarantined (no repository holds them; no longer served).
    pub blobs_quarantined: u64,
    /// Bytes of those blobs.
    pub bytes_quarantined: u64,
    /// Quarantined blobs removed for good.
    pub blobs_purged: u64,
    /// Bytes of those blobs.
    pub bytes_purged: u64,
    /// Upload sessions expired.
    pub uploads_expired: u64,
    /// Staged bytes of those sessions.
    pub upload_bytes_expired: u64,
    /// Candidates kept because the re-check under the lock found them in use again (a push
    /// raced the run; they are collected by a later run if they become garbage again).
    pub kept_on_recheck: u64,
}

impl Counts {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Counts) {
        self.manifests_marked += other.manifests_marked;
        self.blobs_marked += other.blobs_marked;
        self.bytes_marked += other.bytes_marked;
        self.manifests_swept += other.manifests_swept;
        self.manifest_bytes_swept += other.manifest_bytes_swept;
        self.blobs_swept += other.blobs_swept;
        self.bytes_swept += other.bytes_swept;
        self.blobs_quarantined += other.blobs_quarantined;
        self.bytes_quarantined += other.bytes_quarantined;
        self.blobs_purged += other.blobs_purged;
        self.bytes_purged += other.bytes_purged;
        self.uploads_expired += other.uploads_expired;
        self.upload_bytes_expired += other.upload_bytes_expired;
        self.kept_on_recheck += other.kept_on_recheck;
    }
}

/// How long a phase took.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseTime {
    /// Which phase.
    pub phase: Phase,
    /// Wall-clock milliseconds.
    pub ms: u64,
    /// Store calls the phase made, each removing one batch of candidates under their locks
    /// with at most one index commit (the sweep's synced writes); 0 in reports of older
    /// versions.
    #[serde(default)]
    pub batches: u64,
}

/// One run's report, as kept in the history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Run number (increasing).
    pub run_id: u64,
    /// A dry run changes nothing: its swept, quarantined, purged and expired figures are what a
    /// real run at the same snapshot would remove.
    pub dry_run: bool,
    /// Outcome.
    pub status: RunStatus,
    /// Why the run failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What started it ("cli", "schedule", "test", ...).
    #[serde(default)]
    pub trigger: String,
    /// Start (unix ms).
    pub started_ms: u64,
    /// End (unix ms); 0 while running.
    pub finished_ms: u64,
    /// Grace period in force (ms): unreachable content younger than this was kept.
    pub grace_ms: u64,
    /// Quarantine retention in force (ms).
    pub quarantine_ms: u64,
    /// Upload expiry in force (ms).
    pub upload_expiry_ms: u64,
    /// Whether untagged, unreferenced manifests were collected.
    pub delete_untagged: bool,
    /// Change-feed sequence of the snapshot that was marked.
    pub snapshot_seq: u64,
    /// Duration of each phase that ran, in order.
    pub phases: Vec<PhaseTime>,
    /// Totals over all repositories (plus the site-wide quarantine, purge and upload figures).
    pub totals: Counts,
    /// Per repository: marked and swept figures (quarantine and purge are site-wide).
    pub repos: BTreeMap<String, Counts>,
}

/// A progress update of the current run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Run number.
    pub run_id: u64,
    /// Whether it is a dry run.
    pub dry_run: bool,
    /// Current phase.
    pub phase: Phase,
    /// Items done in this phase.
    pub done: u64,
    /// Items in this phase (0 when not known yet).
    pub total: u64,
    /// The report so far (final once `phase` is `Done`).
    pub report: Report,
}
