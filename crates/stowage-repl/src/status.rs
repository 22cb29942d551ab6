//! A peer's replication figures as this crate and the metrics see them. The protobuf form
//! (`PeerStatus` with its state as a word) exists only at the gRPC edge ([`to_proto`]).

use stowage_rpc::v1 as pb;

use crate::replicator::Direction;

/// Where a peer's replication stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PeerState {
    /// Greeting the peer (at start, or after it could not be reached).
    #[default]
    Connecting,
    /// Applying feed entries.
    Replicating,
    /// Nothing left to apply: the cursor is at the source's end.
    InSync,
    /// Comparing the sites by hashes.
    AntiEntropy,
    /// The last step failed; it is retried.
    Error,
}

impl PeerState {
    /// Every state, in a fixed order (for the metrics' one-series-per-state gauge).
    pub const ALL: [PeerState; 5] = [
        PeerState::Connecting,
        PeerState::Replicating,
        PeerState::InSync,
        PeerState::AntiEntropy,
        PeerState::Error,
    ];

    /// The word used on the wire and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Connecting => "connecting",
            PeerState::Replicating => "replicating",
            PeerState::InSync => "in_sync",
            PeerState::AntiEntropy => "anti_entropy",
            PeerState::Error => "error",
        }
    }
}

impl std::fmt::Display for PeerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One peer's figures. Counters cover this process's life; `parked` is read from the index.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerStatus {
    /// The peer's name in this site's configuration.
    pub name: String,
    /// Its endpoint.
    pub endpoint: String,
    /// Which way content flows.
    pub direction: Direction,
    /// Where replication stands.
    pub state: PeerState,
    /// Last source feed sequence applied at the target.
    pub cursor: u64,
    /// The source's last feed sequence as last seen.
    pub source_sequence: u64,
    /// Source feed entries not yet applied.
    pub lag_events: u64,
    /// Age of the oldest entry not yet applied.
    pub lag_seconds: f64,
    /// Blob bytes sent.
    pub bytes_sent: u64,
    /// Blob bytes not sent because the target had them.
    pub bytes_skipped: u64,
    /// Blob bytes not sent again because a transfer resumed.
    pub bytes_resumed: u64,
    /// Blobs sent.
    pub blobs_sent: u64,
    /// Blobs not sent because the target had them.
    pub blobs_skipped: u64,
    /// Manifests stored at the target.
    pub manifests_sent: u64,
    /// Tag states applied at the target.
    pub tags_applied: u64,
    /// Deletes applied at the target.
    pub deletes_applied: u64,
    /// Feed entries handled.
    pub events_processed: u64,
    /// Failed steps.
    pub errors: u64,
    /// Failed steps retried.
    pub retries: u64,
    /// The last failure's message (empty after a success).
    pub last_error: String,
    /// When a batch last went through (unix ms).
    pub last_success_ms: u64,
    /// The peer's site name, once greeted.
    pub peer_site: String,
    /// Anti-entropy runs.
    pub anti_entropy_runs: u64,
    /// Manifests and tags anti-entropy repaired.
    pub anti_entropy_repairs: u64,
    /// Feed entries in the dead-letter list now.
    pub parked: u64,
    /// Feed entries this process parked because a blob was corrupt at the source.
    pub entries_parked: u64,
    /// Blobs fetched from a peer to repair a corrupt or missing copy.
    pub blobs_repaired: u64,
    /// Full comparisons run because the cursor had fallen below the source's trimmed feed
    /// (entries it needed were gone).
    pub feed_resyncs: u64,
}

impl PeerStatus {
    /// A peer not greeted yet.
    pub fn new(name: &str, endpoint: &str, direction: Direction) -> Self {
        Self {
            name: name.to_string(),
            endpoint: endpoint.to_string(),
            direction,
            state: PeerState::Connecting,
            cursor: 0,
            source_sequence: 0,
            lag_events: 0,
            lag_seconds: 0.0,
            bytes_sent: 0,
            bytes_skipped: 0,
            bytes_resumed: 0,
            blobs_sent: 0,
            blobs_skipped: 0,
            manifests_sent: 0,
            tags_applied: 0,
            deletes_applied: 0,
            events_processed: 0,
            errors: 0,
            retries: 0,
            last_error: String::new(),
            last_success_ms: 0,
            peer_site: String::new(),
            anti_entropy_runs: 0,
            anti_entropy_repairs: 0,
            parked: 0,
            entries_parked: 0,
            blobs_repaired: 0,
            feed_resyncs: 0,
        }
    }
}

/// The wire form of a peer's figures.
pub fn to_proto(s: &PeerStatus) -> pb::PeerStatus {
    pb::PeerStatus {
        name: s.name.clone(),
        endpoint: s.endpoint.clone(),
        direction: s.direction.as_str().to_string(),
        state: s.state.as_str().to_string(),
        cursor: s.cursor,
        source_sequence: s.source_sequence,
        lag_events: s.lag_events,
        lag_seconds: s.lag_seconds,
        bytes_sent: s.bytes_sent,
        bytes_skipped: s.bytes_skipped,
        blobs_sent: s.blobs_sent,
        blobs_skipped: s.blobs_skipped,
        manifests_sent: s.manifests_sent,
        tags_applied: s.tags_applied,
        deletes_applied: s.deletes_applied,
        events_processed: s.events_processed,
        errors: s.errors,
        retries: s.retries,
        last_error: s.last_error.clone(),
        last_success_ms: s.last_success_ms,
        bytes_resumed: s.bytes_resumed,
        peer_site: s.peer_site.clone(),
        anti_entropy_runs: s.anti_entropy_runs,
        anti_entropy_repairs: s.anti_entropy_repairs,
        parked: s.parked,
        entries_parked: s.entries_parked,
        blobs_repaired: s.blobs_repaired,
        feed_resyncs: s.feed_resyncs,
    }
}
