//! Replication series of the metrics endpoint: per peer (lag, bytes, state, parked entries)
//! and per site (blobs quarantined as corrupt when replication read them).

use std::fmt::Write as _;

use crate::metrics::header;

/// Per-peer replication series: `(name, type, help, value)` of one peer's status.
fn peer_series(
    p: &stowage_repl::PeerStatus,
) -> [(&'static str, &'static str, &'static str, f64); 17] {
    [
        (
            "stowage_replication_lag_events",
            "gauge",
            "Source feed entries not yet applied at the target.",
            p.lag_events as f64,
        ),
        (
            "stowage_replication_lag_seconds",
            "gauge",
            "Age of the oldest source feed entry not yet applied (0 when in sync).",
            p.lag_seconds,
        ),
        (
            "stowage_replication_cursor",
            "gauge",
            "Last source feed sequence confirmed by the target.",
            p.cursor as f64,
        ),
        (
            "stowage_replication_in_sync",
            "gauge",
            "1 when the target has everything the source's feed holds.",
            f64::from(u8::from(p.state == stowage_repl::PeerState::InSync)),
        ),
        (
            "stowage_replication_bytes_sent_total",
            "counter",
            "Blob bytes sent to the target.",
            p.bytes_sent as f64,
        ),
        (
            "stowage_replication_bytes_skipped_total",
            "counter",
            "Blob bytes not sent because the target had them.",
            p.bytes_skipped as f64,
        ),
        (
            "stowage_replication_bytes_resumed_total",
            "counter",
            "Blob bytes not sent again because a transfer resumed.",
            p.bytes_resumed as f64,
        ),
        (
            "stowage_replication_blobs_sent_total",
            "counter",
            "Blobs sent to the target.",
            p.blobs_sent as f64,
        ),
        (
            "stowage_replication_manifests_sent_total",
            "counter",
            "Manifests stored at the target.",
            p.manifests_sent as f64,
        ),
        (
            "stowage_replication_tags_applied_total",
            "counter",
            "Tag states applied at the target.",
            p.tags_applied as f64,
        ),
        (
            "stowage_replication_errors_total",
            "counter",
            "Failed replication steps.",
            p.errors as f64,
        ),
        (
            "stowage_replication_retries_total",
            "counter",
            "Replication steps retried.",
            p.retries as f64,
        ),
        (
            "stowage_replication_anti_entropy_repairs_total",
            "counter",
            "Manifests and tags repaired by anti-entropy.",
            p.anti_entropy_repairs as f64,
        ),
        (
            "stowage_replication_feed_resyncs_total",
            "counter",
            "Full comparisons run because the cursor fell below the source's trimmed feed.",
            p.feed_resyncs as f64,
        ),
        (
            "stowage_replication_parked",
            "gauge",
            "Feed entries in the dead-letter list (a blob they need was corrupt at the source).",
            p.parked as f64,
        ),
        (
            "stowage_replication_entries_parked_total",
            "counter",
            "Feed entries parked because a blob they need was corrupt at the source.",
            p.entries_parked as f64,
        ),
        (
            "stowage_replication_blobs_repaired_total",
            "counter",
            "Blobs fetched from a peer to replace a corrupt or missing copy.",
            p.blobs_repaired as f64,
        ),
    ]
}

/// Replication series for every peer, and the blobs this site quarantined as corrupt when
/// replication read them (`corrupt`).
pub fn render_replication(peers: &[stowage_repl::PeerStatus], corrupt: u64) -> String {
    let mut out = String::new();
    let Some(first) = peers.first() else {
        return out;
    };
    let name = "stowage_replication_corrupt_blobs_total";
    header(
        &mut out,
        name,
        "counter",
        "Blobs quarantined because their bytes failed verification when read for replication.",
    );
    let _ = writeln!(out, "{name} {corrupt}");
    let name = "stowage_replication_state";
    header(
        &mut out,
        name,
        "gauge",
        "1 for the state each peer's replication is in, 0 for the others.",
    );
    for p in peers {
        for state in stowage_repl::PeerState::ALL {
            let _ = writeln!(
                out,
                "{name}{{peer=\"{}\",direction=\"{}\",state=\"{state}\"}} {}",
                p.name,
                p.direction.as_str(),
                u8::from(p.state == state)
            );
        }
    }
    for (i, (name, kind, help, _)) in peer_series(first).iter().enumerate() {
        header(&mut out, name, kind, help);
        for p in peers {
            let value = peer_series(p)[i].3;
            let _ = writeln!(
                out,
                "{name}{{peer=\"{}\",direction=\"{}\"}} {value}",
                p.name,
                p.direction.as_str()
            );
        }
    }
    out
}
