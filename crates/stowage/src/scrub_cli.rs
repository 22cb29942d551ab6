//! `stowage scrub`: start an integrity scrub run on a running daemon and follow it to its
//! report, or show the run in progress and the last report.

use std::time::Duration;

use clap::{Args, Subcommand};
use stowage_rpc::v1 as pb;
use stowage_rpc::v1::scrub_client::ScrubClient;

use crate::admin::{cli_runtime, emit, rpc_error};
use crate::client::{AdminChannel, ClientArgs};

#[derive(Args, Debug)]
pub struct ScrubArgs {
    #[command(subcommand)]
    command: ScrubCommand,
}

#[derive(Subcommand, Debug)]
enum ScrubCommand {
    /// Start a run now (or resume an interrupted one; follow the one going) and wait for its
    /// report. Exits with an error when a corrupt blob could not be repaired or the run failed.
    Run {
        /// Return once the run has started.
        #[arg(long)]
        detach: bool,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: ClientArgs,
    },
    /// The run in progress, the last finished run's report, and the settings.
    Status {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: ClientArgs,
    },
}

/// Runs a `stowage scrub` subcommand.
pub fn command(args: ScrubArgs) -> Result<(), String> {
    cli_runtime()?.block_on(async move {
        match args.command {
            ScrubCommand::Run { detach, json, conn } => run(&conn, detach, json).await,
            ScrubCommand::Status { json, conn } => status(&conn, json).await,
        }
    })
}

async fn connect(conn: &ClientArgs) -> Result<ScrubClient<AdminChannel>, String> {
    Ok(ScrubClient::new(conn.channel().await?))
}

/// How often `run` asks how the run stands.
const POLL: Duration = Duration::from_millis(250);

async fn run(conn: &ClientArgs, detach: bool, json: bool) -> Result<(), String> {
    let server = conn.server.as_str();
    let mut client = connect(conn).await?;
    let started = client
        .start_scrub(pb::StartScrubRequest {})
        .await
        .map_err(|s| rpc_error("starting a scrub run", server, &s))?
        .into_inner();
    let id = started.run_id;
    if detach {
        if json {
            return print_json(&serde_json::json!({
                "run_id": id, "already_running": started.already_running
            }));
        }
        let how = if started.already_running {
            "is already going"
        } else {
            "started"
        };
        return emit(&format!("scrub run {id} {how}\n"));
    }
    let report = loop {
        match client
            .get_scrub_run(pb::GetScrubRunRequest { run_id: id })
            .await
        {
            Ok(r) => break r.into_inner(),
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(rpc_error("reading the scrub report", server, &s)),
        }
        let st = client
            .get_scrub_status(pb::GetScrubStatusRequest {})
            .await
            .map_err(|s| rpc_error("reading the scrub status", server, &s))?
            .into_inner();
        if st.running.as_ref().map(|r| r.run_id) != Some(id) {
            // Not going and not finished: the daemon stopped it (it resumes at the next start).
            if client
                .get_scrub_run(pb::GetScrubRunRequest { run_id: id })
                .await
                .is_err()
            {
                return Err(format!("scrub run {id} stopped before its end; it resumes when the daemon starts again"));
            }
            continue;
        }
        tokio::time::sleep(POLL).await;
    };
    if json {
        print_json(&report_json(&report))?;
    } else {
        emit(&render(&report))?;
    }
    if report.state != "completed" {
        return Err(format!("scrub run {id} {}: {}", report.state, report.error));
    }
    if report.unrepaired > 0 {
        return Err(format!(
            "scrub run {id}: {} corrupt blob(s) could not be repaired and stay quarantined",
            report.unrepaired
        ));
    }
    Ok(())
}

async fn status(conn: &ClientArgs, json: bool) -> Result<(), String> {
    let server = conn.server.as_str();
    let st = connect(conn)
        .await?
        .get_scrub_status(pb::GetScrubStatusRequest {})
        .await
        .map_err(|s| rpc_error("reading the scrub status", server, &s))?
        .into_inner();
    if json {
        return print_json(&serde_json::json!({
            "running": st.running.as_ref().map(report_json),
            "last": st.last.as_ref().map(report_json),
            "interval_seconds": st.interval_seconds,
            "bytes_per_second": st.bytes_per_second,
        }));
    }
    let mut out = format!(
        "schedule: {}; read budget: {}\n",
        if st.interval_seconds == 0 {
            "off".to_string()
        } else {
            format!(
                "every {}",
                humantime::format_duration(Duration::from_secs(st.interval_seconds))
            )
        },
        if st.bytes_per_second == 0 {
            "unthrottled".to_string()
        } else {
            format!(
                "{:.1} MiB/s",
                st.bytes_per_second as f64 / f64::from(1 << 20)
            )
        }
    );
    match &st.running {
        Some(r) => out.push_str(&format!("running: {}", render(r))),
        None => out.push_str("running: none\n"),
    }
    match &st.last {
        Some(r) => out.push_str(&format!("last: {}", render(r))),
        None => out.push_str("last: none\n"),
    }
    emit(&out)
}

fn print_json(v: &serde_json::Value) -> Result<(), String> {
    let text = serde_json::to_string(v).map_err(|e| format!("encoding JSON output: {e}"))?;
    emit(&format!("{text}\n"))
}

/// A report as JSON.
fn report_json(r: &pb::ScrubReport) -> serde_json::Value {
    let blobs: Vec<serde_json::Value> = r
        .corrupt_blobs
        .iter()
        .map(|b| {
            serde_json::json!({
                "digest": b.digest,
                "size": b.size,
                "detail": b.detail,
                "earlier": b.earlier,
                "repaired": b.repaired,
                "repaired_from": b.repaired_from,
                "reason": b.reason,
            })
        })
        .collect();
    serde_json::json!({
        "run_id": r.run_id,
        "trigger": r.trigger,
        "state": r.state,
        "started_ms": r.started_ms,
        "finished_ms": r.finished_ms,
        "resumed": r.resumed,
        "blobs": r.blobs,
        "bytes": r.bytes,
        "corrupt": r.corrupt,
        "repaired": r.repaired,
        "unrepaired": r.unrepaired,
        "corrupt_blobs": blobs,
        "error": r.error,
    })
}

/// A report as text.
fn render(r: &pb::ScrubReport) -> String {
    let secs = r.finished_ms.saturating_sub(r.started_ms) as f64 / 1000.0;
    let mut out = format!(
        "scrub run {} ({}, {}): {} blobs, {:.1} MiB checked{}; {} corrupt, {} repaired, {} unrepaired\n",
        r.run_id,
        r.trigger,
        r.state,
        r.blobs,
        r.bytes as f64 / f64::from(1 << 20),
        if r.finished_ms > 0 { format!(" in {secs:.1} s") } else { String::new() },
        r.corrupt,
        r.repaired,
        r.unrepaired,
    );
    for b in &r.corrupt_blobs {
        let fate = if b.repaired {
            format!("repaired from {}", b.repaired_from)
        } else {
            format!("UNREPAIRED, quarantined: {}", b.reason)
        };
        out.push_str(&format!(
            "  {} ({} bytes): {}; {fate}\n",
            b.digest, b.size, b.detail
        ));
    }
    if !r.error.is_empty() {
        out.push_str(&format!("  error: {}\n", r.error));
    }
    out
}
