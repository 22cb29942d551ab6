//! What a scrub run found, and where runs are kept in the index: in the extension keyspace,
//! `scrub/cursor` for the run in progress (its report so far and the last blob it checked,
//! written after every page so a restart resumes there), `scrub/run/` + the run id
//! (8 bytes, big-endian) for finished runs, oldest first, and `scrub/epoch`, when the
//! schedule first started.

use serde::{Deserialize, Serialize};
use stowage_core::Digest;

use crate::{Result, StoreError};

/// The run in progress.
pub(crate) const CURSOR_KEY: &[u8] = b"scrub/cursor";
/// When the schedule first started on this site (unix ms), until a run has finished.
pub(crate) const EPOCH_KEY: &[u8] = b"scrub/epoch";
/// Finished runs.
pub(crate) const RUN_PREFIX: &[u8] = b"scrub/run/";
/// Finished runs kept; older reports are removed when a run finishes.
pub(crate) const RUNS_KEPT: usize = 100;
/// Corrupt blobs a report lists one by one; beyond this only the counters grow.
pub const MAX_LISTED: usize = 1000;

/// How a run stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScrubState {
    /// Still walking the blobs.
    Running,
    /// Every blob was visited.
    Completed,
    /// Stopped by an error (the report says which); the next run starts over.
    Failed,
}

/// Why a run started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScrubTrigger {
    /// The `[scrub] interval` schedule.
    Schedule,
    /// An operator asked for it.
    Operator,
}

/// What became of a corrupt blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "fate")]
pub enum Fate {
    /// Good bytes were fetched from `peer`, verified and swapped in: it is served again.
    Repaired {
        /// The peer that had a good copy.
        peer: String,
    },
    /// It stays quarantined (not served).
    Unrepaired {
        /// Why no repair succeeded.
        reason: String,
    },
}

/// One corrupt blob a run met.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorruptBlob {
    /// The blob.
    pub digest: Digest,
    /// Its recorded size.
    pub size: u64,
    /// What did not match.
    pub detail: String,
    /// True when it was quarantined before this run (an earlier run or a reader found it) and
    /// this run only tried to repair it again.
    pub earlier: bool,
    /// What became of it.
    #[serde(flatten)]
    pub fate: Fate,
}

/// The report of one run, kept in the index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubReport {
    /// Run number, increasing.
    pub run_id: u64,
    /// Why it started.
    pub trigger: ScrubTrigger,
    /// How it stands.
    pub state: ScrubState,
    /// When it started (unix ms).
    pub started_ms: u64,
    /// When it ended (unix ms; 0 while running).
    pub finished_ms: u64,
    /// Times it was resumed after a restart.
    pub resumed: u32,
    /// Blobs whose bytes were read and checked.
    pub blobs: u64,
    /// Bytes read and checked.
    pub bytes: u64,
    /// Corrupt blobs met (found now or quarantined earlier).
    pub corrupt: u64,
    /// Of those, repaired from a peer.
    pub repaired: u64,
    /// Of those, still quarantined.
    pub unrepaired: u64,
    /// The corrupt blobs, at most [`MAX_LISTED`].
    pub blobs_corrupt: Vec<CorruptBlob>,
    /// What stopped a failed run.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

impl ScrubReport {
    pub(crate) fn new(run_id: u64, trigger: ScrubTrigger, now_ms: u64) -> Self {
        Self {
            run_id,
            trigger,
            state: ScrubState::Running,
            started_ms: now_ms,
            finished_ms: 0,
            resumed: 0,
            blobs: 0,
            bytes: 0,
            corrupt: 0,
            repaired: 0,
            unrepaired: 0,
            blobs_corrupt: Vec::new(),
            error: String::new(),
        }
    }

    /// Records a corrupt blob and what became of it.
    pub(crate) fn add(&mut self, blob: CorruptBlob) {
        self.corrupt += 1;
        match blob.fate {
            Fate::Repaired { .. } => self.repaired += 1,
            Fate::Unrepaired { .. } => self.unrepaired += 1,
        }
        if self.blobs_corrupt.len() < MAX_LISTED {
            self.blobs_corrupt.push(blob);
        }
    }
}

/// The run in progress as stored: its report so far and the last blob visited.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Cursor {
    pub report: ScrubReport,
    pub after: Option<Digest>,
}

pub(crate) fn run_key(run_id: u64) -> Vec<u8> {
    let mut k = RUN_PREFIX.to_vec();
    k.extend_from_slice(&run_id.to_be_bytes());
    k
}

pub(crate) fn encode<T: Serialize>(what: &str, v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|source| StoreError::Record {
        op: "encoding",
        what: what.to_string(),
        source,
    })
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(what: &str, v: &[u8]) -> Result<T> {
    serde_json::from_slice(v).map_err(|source| StoreError::Record {
        op: "decoding",
        what: what.to_string(),
        source,
    })
}
