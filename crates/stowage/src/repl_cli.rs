//! `stowage repl`: replication status and on-demand anti-entropy of a running daemon.

use crate::admin::{cli_runtime, emit, rpc_error};
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
    })
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The status as a table.
pub fn status_text(s: &pb::StatusResponse) -> String {
    let mut out = format!("site {} (feed sequence {})\n", s.site, s.feed_sequence);
    if s.peers.is_empty() {
        out.push_str("no replication peers configured\n");
        return out;
    }
    out.push_str(&format!(
        "{:<16}{:<6}{:<13}{:>10}{:>9}{:>12}{:>12}{:>8}  {}\n",
        "PEER", "DIR", "STATE", "LAG", "LAG(s)", "SENT", "SKIPPED", "ERRORS", "LAST ERROR"
    ));
    for p in &s.peers {
        out.push_str(&format!(
            "{:<16}{:<6}{:<13}{:>10}{:>9.1}{:>12}{:>12}{:>8}  {}\n",
            p.name,
            p.direction,
            p.state,
            p.lag_events,
            p.lag_seconds,
            bytes(p.bytes_sent),
            bytes(p.bytes_skipped),
            p.errors,
            p.last_error
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
                    "duration_ms": r.duration_ms,
                });
                emit(&format!("{v}\n"))
            } else {
                emit(&format!(
                    "anti-entropy with {peer}: {} of 256 buckets differed, {} of {} repositories compared differed; repaired {} manifests and {} tags; {} manifests only at the target; {} ms\n",
                    r.buckets_differing,
                    r.repositories_differing,
                    r.repositories_compared,
                    r.manifests_repaired,
                    r.tags_repaired,
                    r.extra_at_target,
                    r.duration_ms
                ))
            }
        }
    }
}
