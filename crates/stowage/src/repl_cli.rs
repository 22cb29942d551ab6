//! `stowage repl`: replication status, on-demand anti-entropy, and the dead-letter list (feed
//! entries parked because a blob they need was corrupt at the source) of a running daemon.

use crate::admin::{cli_runtime, emit, rpc_error};
use crate::cli_table::{human_bytes, table};
use crate::client::{AdminChannel, ClientArgs};
use clap::{Args, Subcommand};
use stowage_rpc::v1 as pb;
use stowage_rpc::v1::replication_client::ReplicationClient;

#[derive(Args, Debug)]
pub struct ReplArgs {
    #[command(subcommand)]
    command: ReplCommand,
}

#[derive(Subcommand, Debug)]
enum ReplCommand {
    /// Every configured peer: state, lag in events and seconds, bytes sent and skipped, errors.
    Status {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: ClientArgs,
    },
    /// Compare this site with a peer now (hashes over the index) and repair what the target
    /// lacks.
    Sync {
        /// The peer's name in the daemon's configuration.
        peer: String,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: ClientArgs,
    },
    /// Feed entries set aside because a blob they need failed verification at the source
    /// (quarantined there): their ids, the blob, why and how often they were retried.
    Parked {
        /// Only this peer's entries.
        #[arg(long)]
        peer: Option<String>,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: ClientArgs,
    },
    /// Try parked entries again: a blob missing here is first fetched from a configured peer
    /// that has a good copy; entries that replicate leave the list.
    Retry {
        /// Entries to retry (`PEER:SEQUENCE`, as `repl parked` lists them).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        /// Every parked entry (of --peer, when given).
        #[arg(long)]
        all: bool,
        /// With --all: only this peer's entries.
        #[arg(long, requires = "all")]
        peer: Option<String>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: ClientArgs,
    },
}

async fn connect(conn: &ClientArgs) -> Result<ReplicationClient<AdminChannel>, String> {
    Ok(ReplicationClient::new(conn.channel().await?))
}

/// One peer as JSON.
pub fn peer_json(p: &pb::PeerStatus) -> serde_json::Value {
    serde_json::json!({
        "name": p.name,
        "endpoint": p.endpoint,
        "direction": p.direction,
        "peer_site": p.peer_site,
        "state": p.state,
        "cursor": p.cursor,
        "source_sequence": p.source_sequence,
        "lag_events": p.lag_events,
        "lag_seconds": p.lag_seconds,
        "bytes_sent": p.bytes_sent,
        "bytes_skipped": p.bytes_skipped,
        "bytes_resumed": p.bytes_resumed,
        "blobs_sent": p.blobs_sent,
        "blobs_skipped": p.blobs_skipped,
        "manifests_sent": p.manifests_sent,
        "tags_applied": p.tags_applied,
        "deletes_applied": p.deletes_applied,
        "events_processed": p.events_processed,
        "errors": p.errors,
        "retries": p.retries,
        "last_error": p.last_error,
        "last_success_ms": p.last_success_ms,
        "anti_entropy_runs": p.anti_entropy_runs,
        "anti_entropy_repairs": p.anti_entropy_repairs,
        "feed_resyncs": p.feed_resyncs,
        "parked": p.parked,
        "entries_parked": p.entries_parked,
        "blobs_repaired": p.blobs_repaired,
    })
}

/// One parked entry as JSON.
pub fn parked_json(e: &pb::ParkedEntry) -> serde_json::Value {
    let event = e.event.as_ref();
    serde_json::json!({
        "id": e.id,
        "peer": e.peer,
        "sequence": e.sequence,
        "source_site": e.source_site,
        "reason": reason(e.reason),
        "blob": e.blob,
        "kind": event.map(|ev| kind(ev.kind)).unwrap_or("unknown"),
        "repository": event.map(|ev| ev.repository.as_str()).unwrap_or_default(),
        "digest": event.map(|ev| ev.digest.as_str()).unwrap_or_default(),
        "tag": event.map(|ev| ev.tag.as_str()).unwrap_or_default(),
        "parked_ms": e.parked_ms,
        "attempts": e.attempts,
        "last_attempt_ms": e.last_attempt_ms,
        "last_error": e.last_error,
    })
}

fn reason(r: i32) -> &'static str {
    match pb::ParkReason::try_from(r) {
        Ok(pb::ParkReason::SourceCorrupt) => "source_corrupt",
        Ok(pb::ParkReason::Unspecified) | Err(_) => "unknown",
    }
}

fn kind(k: i32) -> &'static str {
    match pb::EventKind::try_from(k) {
        Ok(pb::EventKind::BlobPut) => "blob_put",
        Ok(pb::EventKind::BlobLinked) => "blob_linked",
        Ok(pb::EventKind::BlobUnlinked) => "blob_unlinked",
        Ok(pb::EventKind::ManifestPut) => "manifest_put",
        Ok(pb::EventKind::ManifestDeleted) => "manifest_deleted",
        Ok(pb::EventKind::TagSet) => "tag_set",
        Ok(pb::EventKind::TagDeleted) => "tag_deleted",
        Ok(pb::EventKind::Unspecified) | Err(_) => "unknown",
    }
}

fn outcome(o: i32) -> &'static str {
    match pb::RetryOutcome::try_from(o) {
        Ok(pb::RetryOutcome::Replicated) => "replicated",
        Ok(pb::RetryOutcome::StillParked) => "still_parked",
        Ok(pb::RetryOutcome::Unknown) => "unknown",
        Ok(pb::RetryOutcome::Unspecified) | Err(_) => "unspecified",
    }
}

/// The dead-letter list as a table.
pub fn parked_text(entries: &[pb::ParkedEntry]) -> String {
    if entries.is_empty() {
        return "no parked entries\n".to_string();
    }
    let rows: Vec<[String; 5]> = entries
        .iter()
        .map(|e| {
            let (kind, reference) = match &e.event {
                Some(ev) => {
                    let r = if ev.tag.is_empty() {
                        format!("{}@{}", ev.repository, short(&ev.digest))
                    } else {
                        format!("{}:{}", ev.repository, ev.tag)
                    };
                    (kind(ev.kind), r)
                }
                None => ("unknown", String::new()),
            };
            [
                e.id.clone(),
                kind.to_string(),
                reference,
                e.attempts.to_string(),
                // The error on a line of its own, under the blob: errors are long.
                format!(
                    "{} ({}, at {})\n{}",
                    e.blob,
                    reason(e.reason),
                    e.source_site,
                    e.last_error
                ),
            ]
        })
        .collect();
    table(
        &["ID", "KIND", "REFERENCE", "ATTEMPTS", "BLOB / LAST ERROR"],
        &rows,
        &[false, false, false, true, false],
    )
}

/// A digest cut to its algorithm and 12 hex digits, for tables.
fn short(d: &str) -> &str {
    d.get(..19).unwrap_or(d)
}

/// The status as a table.
pub fn status_text(s: &pb::StatusResponse) -> String {
    let mut out = format!("site {} (feed sequence {})\n", s.site, s.feed_sequence);
    if s.peers.is_empty() {
        out.push_str("no replication peers configured\n");
        return out;
    }
    let rows: Vec<[String; 10]> = s
        .peers
        .iter()
        .map(|p| {
            [
                p.name.clone(),
                p.direction.clone(),
                p.state.clone(),
                p.lag_events.to_string(),
                format!("{:.1}", p.lag_seconds),
                human_bytes(p.bytes_sent),
                human_bytes(p.bytes_skipped),
                p.parked.to_string(),
                p.errors.to_string(),
                p.last_error.clone(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "PEER",
            "DIR",
            "STATE",
            "LAG",
            "LAG(s)",
            "SENT",
            "SKIPPED",
            "PARKED",
            "ERRORS",
            "LAST ERROR",
        ],
        &rows,
        &[
            false, false, false, true, true, true, true, true, true, false,
        ],
    ));
    if s.corrupt_blobs_quarantined > 0 {
        out.push_str(&format!(
            "{} blobs quarantined as corrupt since start (`stowage repl parked` lists the entries waiting for them)\n",
            s.corrupt_blobs_quarantined
        ));
    }
    out
}

/// Runs `stowage repl ...`.
pub fn command(args: ReplArgs) -> Result<(), String> {
    let rt = cli_runtime()?;
    match args.command {
        ReplCommand::Status { json, conn } => {
            let server = conn.server.clone();
            let s = rt.block_on(async {
                connect(&conn)
                    .await?
                    .status(pb::StatusRequest {})
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(|e| rpc_error("replication status", &server, &e))
            })?;
            if json {
                let v = serde_json::json!({
                    "site": s.site,
                    "feed_sequence": s.feed_sequence,
                    "corrupt_blobs_quarantined": s.corrupt_blobs_quarantined,
                    "peers": s.peers.iter().map(peer_json).collect::<Vec<_>>(),
                });
                emit(&format!("{v}\n"))
            } else {
                emit(&status_text(&s))
            }
        }
        ReplCommand::Sync { peer, json, conn } => {
            let server = conn.server.clone();
            let r = rt.block_on(async {
                connect(&conn)
                    .await?
                    .sync(pb::SyncRequest { peer: peer.clone() })
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(|e| rpc_error(&format!("anti-entropy with {peer}"), &server, &e))
            })?;
            if json {
                let v = serde_json::json!({
                    "peer": peer,
                    "buckets_differing": r.buckets_differing,
                    "repositories_compared": r.repositories_compared,
                    "repositories_differing": r.repositories_differing,
                    "manifests_repaired": r.manifests_repaired,
                    "tags_repaired": r.tags_repaired,
                    "extra_at_target": r.extra_at_target,
                    "skipped_corrupt": r.skipped_corrupt,
                    "manifests_deleted": r.manifests_deleted,
                    "duration_ms": r.duration_ms,
                });
                emit(&format!("{v}\n"))
            } else {
                emit(&format!(
                    "anti-entropy with {peer}: {} of 256 buckets differed, {} of {} repositories compared differed; repaired {} manifests and {} tags, deleted {} manifests the source deleted; {} manifests only at the target; {} ms\n",
                    r.buckets_differing,
                    r.repositories_differing,
                    r.repositories_compared,
                    r.manifests_repaired,
                    r.tags_repaired,
                    r.manifests_deleted,
                    r.extra_at_target,
                    r.duration_ms
                ))
            }
        }
        ReplCommand::Parked { peer, json, conn } => {
            let server = conn.server.clone();
            let r = rt.block_on(async {
                connect(&conn)
                    .await?
                    .list_parked(pb::ListParkedRequest {
                        peer: peer.unwrap_or_default(),
                    })
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(|e| rpc_error("listing parked entries", &server, &e))
            })?;
            if json {
                let v = serde_json::json!({
                    "entries": r.entries.iter().map(parked_json).collect::<Vec<_>>(),
                });
                emit(&format!("{v}\n"))
            } else {
                emit(&parked_text(&r.entries))
            }
        }
        ReplCommand::Retry {
            ids,
            all,
            peer,
            json,
            conn,
        } => {
            let server = conn.server.clone();
            let r = rt.block_on(async {
                connect(&conn)
                    .await?
                    .retry_parked(pb::RetryParkedRequest {
                        ids,
                        all,
                        peer: peer.unwrap_or_default(),
                    })
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(|e| rpc_error("retrying parked entries", &server, &e))
            })?;
            let still = r
                .results
                .iter()
                .filter(|x| x.outcome != pb::RetryOutcome::Replicated as i32)
                .count();
            if json {
                let v = serde_json::json!({
                    "results": r.results.iter().map(|x| serde_json::json!({
                        "id": x.id,
                        "outcome": outcome(x.outcome),
                        "repaired_from": x.repaired_from,
                        "error": x.error,
                    })).collect::<Vec<_>>(),
                });
                emit(&format!("{v}\n"))?;
            } else {
                let mut out = String::new();
                if r.results.is_empty() {
                    out.push_str("no parked entries to retry\n");
                }
                for x in &r.results {
                    out.push_str(&format!("{}: {}", x.id, outcome(x.outcome)));
                    if !x.repaired_from.is_empty() {
                        out.push_str(&format!(" (blob repaired from {})", x.repaired_from));
                    }
                    if !x.error.is_empty() {
                        out.push_str(&format!(": {}", x.error));
                    }
                    out.push('\n');
                }
                emit(&out)?;
            }
            if still > 0 {
                return Err(format!("{still} entries are still parked"));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_long_peer_name_keeps_its_own_column() {
        let s = pb::StatusResponse {
            site: "main".into(),
            feed_sequence: 9,
            peers: vec![pb::PeerStatus {
                name: "disaster-recovery-eu-west".into(),
                direction: "push".into(),
                state: "in_sync".into(),
                bytes_sent: 1536,
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = status_text(&s);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "site main (feed sequence 9)", "{text}");
        assert!(lines[1].starts_with("PEER  "), "{text}");
        let cells: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            cells[..4],
            ["disaster-recovery-eu-west", "push", "in_sync", "0"],
            "{text}"
        );
        assert!(lines[2].contains("1.5 KiB"), "{text}");
        // Right-aligned numbers end under their heading.
        let end = |l: &str, cell: &str| l.find(cell).unwrap() + cell.len();
        assert_eq!(end(lines[1], "SENT"), end(lines[2], "1.5 KiB"), "{text}");
    }

    #[test]
    fn a_parked_entry_shows_its_error_under_its_blob() {
        let entry = pb::ParkedEntry {
            id: "cloud/42".into(),
            event: Some(pb::FeedEvent {
                repository: "a-team/with-a-rather-long-repository-name".into(),
                tag: "2024.05.01".into(),
                ..Default::default()
            }),
            attempts: 3,
            blob: "sha256:abc".into(),
            source_site: "main".into(),
            last_error: "peer refused: corrupt".into(),
            ..Default::default()
        };
        let text = parked_text(&[entry]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(cells[0], "cloud/42", "{text}");
        assert_eq!(
            cells[2], "a-team/with-a-rather-long-repository-name:2024.05.01",
            "{text}"
        );
        assert_eq!(cells[3], "3", "{text}");
        let col = lines[0].find("BLOB / LAST ERROR").unwrap();
        assert_eq!(lines[1].find("sha256:abc"), Some(col), "{text}");
        assert_eq!(lines[2].find("peer refused"), Some(col), "{text}");
        assert_eq!(parked_text(&[]), "no parked entries\n");
    }
}
