//! `stowage fsck`: runs the consistency check on a running daemon (admin gRPC `Fsck`) and
//! prints its report, as text or (`--json`) one JSON object.
//!
//! Exit status: 0 when nothing is wrong, 2 when defects were found (repaired or not: the
//! report says which), 1 when the check could not run.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use stowage_rpc::v1 as pb;
use stowage_rpc::v1::fsck_client::FsckClient;
use tonic::Response;

use crate::admin::{cli_runtime, emit, rpc_error};
use crate::client::ClientArgs;
use crate::config::parse_duration;

/// Exit status when the check found defects.
const DEFECTS_FOUND: u8 = 2;

/// `stowage fsck` options.
#[derive(Args, Debug)]
pub struct FsckArgs {
    #[command(flatten)]
    conn: ClientArgs,
    /// Read every blob whole and check its digest and recorded checksum (reads everything
    /// stored).
    #[arg(long)]
    verify_bytes: bool,
    /// Repair what is safe: quarantine blobs without good bytes (no longer served), remove
    /// orphan bytes older than --min-orphan-age, rebuild reverse references, holders and
    /// referrer entries. Never removes a manifest.
    #[arg(long)]
    repair: bool,
    /// Unindexed bytes younger than this are taken for an upload in flight (default 1h).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    min_orphan_age: Option<Duration>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs the command; see the module docs for the exit status.
pub fn command(a: FsckArgs) -> ExitCode {
    match run(&a) {
        Ok(found) if found > 0 => ExitCode::from(DEFECTS_FOUND),
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stowage: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(a: &FsckArgs) -> Result<usize, String> {
    let server = a.conn.server.as_str();
    let rt = cli_runtime()?;
    let report = rt.block_on(async {
        let mut client = FsckClient::new(a.conn.channel().await?);
        client
            .run_fsck(pb::RunFsckRequest {
                verify_bytes: a.verify_bytes,
                repair: a.repair,
                min_orphan_age_ms: a
                    .min_orphan_age
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            })
            .await
            .map(Response::into_inner)
            .map_err(|e| rpc_error("RunFsck", server, &e))
    })?;
    if a.json {
        emit(&format!("{}\n", to_json(&report)?))?;
    } else {
        emit(&to_text(&report))?;
    }
    Ok(report.findings.len())
}

fn to_json(r: &pb::RunFsckResponse) -> Result<serde_json::Value, String> {
    let findings = r
        .findings
        .iter()
        .map(|f| {
            let mut v: serde_json::Value = serde_json::from_str(&f.json)
                .map_err(|e| format!("the daemon sent a finding that is not JSON: {e}"))?;
            if let Some(o) = v.as_object_mut() {
                o.insert("text".into(), f.text.clone().into());
                o.insert("repairable".into(), f.repairable.into());
                o.insert(
                    "repaired".into(),
                    (!f.repaired.is_empty()).then(|| f.repaired.clone()).into(),
                );
            }
            Ok(v)
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(serde_json::json!({
        "blobs": r.blobs,
        "manifests": r.manifests,
        "stored_objects": r.stored_objects,
        "bytes_verified": r.bytes_verified,
        "feed_seq": r.feed_seq,
        "in_flight": r.in_flight,
        "findings": findings,
    }))
}

fn to_text(r: &pb::RunFsckResponse) -> String {
    let mut out = format!(
        "checked {} blobs, {} manifests, {} stored objects, {} bytes verified, feed at {}; {} in flight\n",
        r.blobs, r.manifests, r.stored_objects, r.bytes_verified, r.feed_seq, r.in_flight
    );
    if r.findings.is_empty() {
        out.push_str("no defects found\n");
        return out;
    }
    for f in &r.findings {
        let what = if !f.repaired.is_empty() {
            format!("repaired: {}", f.repaired)
        } else if f.repairable {
            "repairable with --repair".to_string()
        } else {
            "not repairable here".to_string()
        };
        out.push_str(&format!("{:<24}{} ({what})\n", f.kind, f.text));
    }
    let repaired = r.findings.iter().filter(|f| !f.repaired.is_empty()).count();
    out.push_str(&format!(
        "{} defects found, {repaired} repaired\n",
        r.findings.len()
    ));
    out
}
