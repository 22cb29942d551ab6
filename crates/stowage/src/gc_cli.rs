//! `stowage gc ...`: start, follow and inspect garbage collection runs, and restore quarantined
//! blobs, over the daemon's admin gRPC service.
//!
//! Output contract: with `--json` stdout carries exactly one JSON document (the collector's
//! own serde form of its types) and nothing else; progress and errors go to stderr.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::time::{Duration, UNIX_EPOCH};

use crate::client::AdminChannel;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use stowage_core::Digest;
use stowage_gc::{Phase, Progress, Report, RunStatus};
use stowage_rpc::v1 as pb;
use stowage_rpc::v1::admin_client::AdminClient;

use crate::admin::{cli_runtime, connect, emit, endpoint_url, rpc_error};
use crate::cli_table::{human_bytes, table};
use crate::config::parse_duration;
use crate::gc_rpc::{progress_from_proto, report_from_proto};

/// `stowage gc`.
#[derive(Args, Debug)]
pub struct GcArgs {
    #[command(subcommand)]
    command: GcCommand,
}

#[derive(Subcommand, Debug)]
enum GcCommand {
    /// Start a garbage collection run on the daemon. Prints the run id and returns, or with
    /// --wait follows the run (progress on stderr) and prints its report. Exits non-zero when
    /// the run fails or another run is in progress.
    Run(RunArgs),
    /// The run in progress, if any, and the last run's outcome.
    Status(StatusArgs),
    /// Past runs, newest first. FREED is purged blob bytes plus expired upload bytes (bytes
    /// of quarantined blobs are freed by the run that purges them).
    History(HistoryArgs),
    /// One run's report.
    Show(ShowArgs),
    /// Bring a quarantined blob back: served again and linked into the repositories that held
    /// it, with a fresh grace period. Only blobs whose bytes have not been purged yet.
    Restore(RestoreArgs),
}

/// Where the daemon is and how to authenticate to it.
type ServerArg = crate::client::ClientArgs;

#[derive(Args, Debug)]
struct RunArgs {
    /// Decide and report what a run would remove; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Follow the run to its end and print its report.
    #[arg(long)]
    wait: bool,
    /// Keep unreachable content younger than this (default: the daemon's [gc] grace).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    grace: Option<Duration>,
    /// Keep quarantined bytes this long before purging them; 0s purges in this run (default:
    /// the daemon's [gc] quarantine).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    quarantine: Option<Duration>,
    /// Remove upload sessions idle for longer than this (default: the daemon's [gc]
    /// upload_expiry).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    upload_expiry: Option<Duration>,
    /// Print one JSON object on stdout: the report with --wait, else the run id.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArg,
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArg,
}

#[derive(Args, Debug)]
struct HistoryArgs {
    /// Most runs to list.
    #[arg(long, default_value_t = 20, value_name = "N")]
    limit: u32,
    /// Print a JSON array of reports instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArg,
}

#[derive(Args, Debug)]
struct ShowArgs {
    /// The run's id (see `stowage gc history`).
    run_id: u64,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArg,
}

#[derive(Args, Debug)]
struct RestoreArgs {
    /// The blob's digest, `sha256:<hex>`.
    digest: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArg,
}

/// Runs a `stowage gc` subcommand.
pub fn command(args: GcArgs) -> Result<(), String> {
    let rt = cli_runtime()?;
    rt.block_on(async move {
        match args.command {
            GcCommand::Run(a) => run(a).await,
            GcCommand::Status(a) => status(a).await,
            GcCommand::History(a) => history(a).await,
            GcCommand::Show(a) => show(a).await,
            GcCommand::Restore(a) => restore(a).await,
        }
    })
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn print_json(v: &impl serde::Serialize) -> Result<(), String> {
    let text = serde_json::to_string(v).map_err(|e| format!("encoding JSON output: {e}"))?;
    emit(&format!("{text}\n"))
}

fn decode_report(r: pb::GcReport, server: &str) -> Result<Report, String> {
    report_from_proto(r).map_err(|e| {
        format!(
            "reading a garbage collection report from {}: {e}",
            endpoint_url(server)
        )
    })
}

async fn run(a: RunArgs) -> Result<(), String> {
    let server = a.server.server.as_str();
    let mut client = connect(&a.server).await?;
    let req = pb::StartGcRequest {
        dry_run: a.dry_run,
        grace_ms: a.grace.map(millis),
        quarantine_ms: a.quarantine.map(millis),
        upload_expiry_ms: a.upload_expiry.map(millis),
        trigger: "cli".to_string(),
    };
    let run_id = match client.start_gc(req).await {
        Ok(r) => r.into_inner().run_id,
        Err(s) if s.code() == tonic::Code::AlreadyExists => {
            return Err(format!(
                "{}; follow it with `stowage gc status --server {server}`",
                rpc_error("starting a garbage collection run", server, &s)
            ))
        }
        Err(s) => return Err(rpc_error("starting a garbage collection run", server, &s)),
    };
    if !a.wait {
        if a.json {
            print_json(&serde_json::json!({ "run_id": run_id, "dry_run": a.dry_run }))?;
        } else {
            emit(&format!(
                "garbage collection run {run_id} started{}\n",
                if a.dry_run { " (dry run)" } else { "" }
            ))?;
            eprintln!("follow it with `stowage gc show {run_id} --server {server}`");
        }
        return Ok(());
    }
    let report = follow(&mut client, server, run_id).await?;
    if a.json {
        print_json(&report)?;
    } else {
        emit(&render_report(&report))?;
    }
    match report.status {
        RunStatus::Completed => Ok(()),
        other => Err(format!(
            "garbage collection run {run_id} {}{}",
            status_str(other),
            report
                .error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        )),
    }
}

/// Streams `WatchGc` for `run_id`, drawing progress on stderr, and returns the final report.
async fn follow(
    client: &mut AdminClient<AdminChannel>,
    server: &str,
    run_id: u64,
) -> Result<Report, String> {
    let doing = format!("watching garbage collection run {run_id}");
    let mut stream = client
        .watch_gc(pb::WatchGcRequest { run_id })
        .await
        .map_err(|s| rpc_error(&doing, server, &s))?
        .into_inner();
    let mut line = ProgressLine::new(std::io::stderr().is_terminal());
    loop {
        match stream.message().await {
            Ok(Some(p)) => {
                let p = progress_from_proto(p).map_err(|e| {
                    format!(
                        "{doing}: bad progress update from {}: {e}",
                        endpoint_url(server)
                    )
                })?;
                line.update(&p);
                if p.phase == Phase::Done {
                    line.finish();
                    return Ok(p.report);
                }
            }
            Ok(None) => break,
            Err(s) => {
                line.finish();
                return Err(rpc_error(&doing, server, &s));
            }
        }
    }
    line.finish();
    // The stream ended without the final update: the history has the last word.
    let report = client
        .get_gc_run(pb::GetGcRunRequest { run_id })
        .await
        .map_err(|s| {
            rpc_error(
                &format!("reading the report of garbage collection run {run_id}"),
                server,
                &s,
            )
        })?
        .into_inner();
    let report = decode_report(report, server)?;
    if report.status == RunStatus::Running {
        return Err(format!(
            "{doing}: the daemon at {} ended the progress stream before the run finished; see `stowage gc show {run_id} --server {server}`",
            endpoint_url(server)
        ));
    }
    Ok(report)
}

/// The progress display on stderr: on a terminal an indicatif bar redrawn in place;
/// otherwise one line per phase, so logs stay readable.
struct ProgressLine {
    /// Where the bar is drawn (a terminal); `None`: plain lines.
    target: Option<ProgressDrawTarget>,
    /// The bar, made at the first update so nothing is drawn for a run without progress.
    bar: Option<ProgressBar>,
    /// Whether the bar's style shows a bar (the phase has a known total).
    counted: bool,
    phase: Option<Phase>,
}

impl ProgressLine {
    fn new(tty: bool) -> Self {
        Self::with_target(tty.then(ProgressDrawTarget::stderr))
    }

    fn with_target(target: Option<ProgressDrawTarget>) -> Self {
        ProgressLine {
            target,
            bar: None,
            counted: false,
            phase: None,
        }
    }

    fn update(&mut self, p: &Progress) {
        let counted = p.total > 0 && p.phase != Phase::Done;
        if let Some(target) = self.target.take() {
            self.bar = Some(ProgressBar::with_draw_target(None, target));
            self.counted = !counted;
        }
        match &self.bar {
            Some(bar) => {
                if counted != self.counted {
                    bar.set_style(bar_style(counted));
                    self.counted = counted;
                }
                if counted {
                    bar.set_length(p.total);
                    bar.set_position(p.done);
                }
                bar.set_message(progress_head(p));
            }
            None if self.phase != Some(p.phase) => eprintln!("{}", progress_text(p)),
            None => {}
        }
        self.phase = Some(p.phase);
    }

    /// Leaves the last state on screen and moves to the next line.
    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            // `finish` would fill the bar; a stream that ended early shows where it stopped.
            bar.abandon();
        }
    }
}

/// `gc run 7 (dry run): sweep_blobs [#######.............] 120/300 40%` when the phase has a
/// total, else the head alone.
fn bar_style(counted: bool) -> ProgressStyle {
    let template = if counted {
        "{msg} [{bar:20}] {pos}/{len} {percent}%"
    } else {
        "{msg}"
    };
    ProgressStyle::with_template(template)
        .map(|s| s.progress_chars("#."))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// `gc run 7 (dry run): sweep_blobs`, with the count when the phase has no total
/// (`mark 120`) and the outcome when done.
fn progress_head(p: &Progress) -> String {
    let mut s = format!(
        "gc run {}{}: {}",
        p.run_id,
        if p.dry_run { " (dry run)" } else { "" },
        p.phase.as_str()
    );
    if p.phase == Phase::Done {
        let _ = write!(s, " ({})", status_str(p.report.status));
    } else if p.total == 0 && p.done > 0 {
        let _ = write!(s, " {}", p.done);
    }
    s
}

/// `gc run 7: sweep_blobs 120/300 40%`: a line for logs and `gc status`.
fn progress_text(p: &Progress) -> String {
    let mut s = progress_head(p);
    if p.total > 0 && p.phase != Phase::Done {
        let pct = p.done.min(p.total).saturating_mul(100) / p.total;
        let _ = write!(s, " {}/{} {pct}%", p.done, p.total);
    }
    s
}

async fn status(a: StatusArgs) -> Result<(), String> {
    let server = a.server.server.as_str();
    let mut client = connect(&a.server).await?;
    let st = client
        .get_gc_status(pb::GetGcStatusRequest {})
        .await
        .map_err(|s| rpc_error("reading the garbage collection status", server, &s))?
        .into_inner();
    let latest = st
        .latest
        .map(progress_from_proto)
        .transpose()
        .map_err(|e| {
            format!(
                "reading the garbage collection status from {}: {e}",
                endpoint_url(server)
            )
        })?;
    if a.json {
        return print_json(&serde_json::json!({
            "running_run_id": st.running_run_id,
            "latest": latest,
        }));
    }
    emit(&render_status(st.running_run_id, latest.as_ref()))
}

fn render_status(running: Option<u64>, latest: Option<&Progress>) -> String {
    let mut out = String::new();
    match (running, latest) {
        (Some(id), Some(p)) if p.run_id == id => {
            let _ = writeln!(out, "in progress: {}", progress_text(p));
        }
        (Some(id), _) => {
            let _ = writeln!(out, "in progress: gc run {id} (starting)");
        }
        (None, _) => {
            let _ = writeln!(out, "no garbage collection run in progress");
        }
    }
    match latest {
        Some(p) if p.phase == Phase::Done => {
            let r = &p.report;
            let _ = writeln!(
                out,
                "last run: {} {}{}, finished {}, took {}: {} blobs quarantined ({}), {} purged",
                r.run_id,
                status_str(r.status),
                if r.dry_run { " (dry run)" } else { "" },
                timestamp(r.finished_ms),
                human_ms(r.finished_ms.saturating_sub(r.started_ms)),
                r.totals.blobs_quarantined,
                human_bytes(r.totals.bytes_quarantined),
                human_bytes(r.totals.bytes_purged),
            );
        }
        Some(_) => {}
        None if running.is_none() => {
            let _ = writeln!(
                out,
                "no run since the daemon started; `stowage gc history` lists earlier ones"
            );
        }
        None => {}
    }
    out
}

async fn history(a: HistoryArgs) -> Result<(), String> {
    let server = a.server.server.as_str();
    let mut client = connect(&a.server).await?;
    let runs = client
        .list_gc_runs(pb::ListGcRunsRequest { limit: a.limit })
        .await
        .map_err(|s| rpc_error("reading the garbage collection history", server, &s))?
        .into_inner()
        .runs
        .into_iter()
        .map(|r| decode_report(r, server))
        .collect::<Result<Vec<_>, _>>()?;
    if a.json {
        return print_json(&runs);
    }
    emit(&render_history(&runs))
}

fn render_history(runs: &[Report]) -> String {
    if runs.is_empty() {
        return "no garbage collection runs yet\n".to_string();
    }
    let header = [
        "RUN",
        "STARTED",
        "STATUS",
        "DRY-RUN",
        "DURATION",
        "QUARANTINED",
        "FREED",
    ];
    let rows: Vec<[String; 7]> = runs
        .iter()
        .map(|r| {
            [
                r.run_id.to_string(),
                timestamp(r.started_ms),
                status_str(r.status).to_string(),
                if r.dry_run { "yes" } else { "no" }.to_string(),
                if r.finished_ms == 0 {
                    "-".to_string()
                } else {
                    human_ms(r.finished_ms.saturating_sub(r.started_ms))
                },
                r.totals.blobs_quarantined.to_string(),
                human_bytes(
                    r.totals
                        .bytes_purged
                        .saturating_add(r.totals.upload_bytes_expired),
                ),
            ]
        })
        .collect();
    table(
        &header,
        &rows,
        &[true, false, false, false, true, true, true],
    )
}

async fn show(a: ShowArgs) -> Result<(), String> {
    let server = a.server.server.as_str();
    let mut client = connect(&a.server).await?;
    let report = client
        .get_gc_run(pb::GetGcRunRequest { run_id: a.run_id })
        .await
        .map_err(|s| {
            rpc_error(
                &format!("reading the report of garbage collection run {}", a.run_id),
                server,
                &s,
            )
        })?
        .into_inner();
    let report = decode_report(report, server)?;
    if a.json {
        print_json(&report)
    } else {
        emit(&render_report(&report))
    }
}

async fn restore(a: RestoreArgs) -> Result<(), String> {
    let server = a.server.server.as_str();
    // Refuse a malformed digest before any network round trip.
    let digest =
        Digest::parse(a.digest.trim()).map_err(|e| format!("restoring {:?}: {e}", a.digest))?;
    let mut client = connect(&a.server).await?;
    let r = client
        .restore_blob(pb::RestoreBlobRequest {
            digest: digest.to_string(),
        })
        .await
        .map_err(|s| rpc_error(&format!("restoring quarantined blob {digest}"), server, &s))?
        .into_inner();
    if a.json {
        return print_json(&serde_json::json!({
            "digest": r.digest,
            "size": r.size,
            "repositories": r.repositories,
        }));
    }
    let into = if r.repositories.is_empty() {
        "linked into no repository (none held it when it was quarantined)".to_string()
    } else {
        format!("linked back into: {}", r.repositories.join(", "))
    };
    emit(&format!(
        "restored {} ({})\n{into}\n",
        r.digest,
        human_bytes(r.size)
    ))
}

fn status_str(s: RunStatus) -> &'static str {
    match s {
        RunStatus::Running => "running",
        RunStatus::Completed => "completed",
        RunStatus::Failed => "failed",
        RunStatus::Interrupted => "interrupted",
    }
}

/// `2024-05-01T12:00:00Z`, or `-` for 0.
pub(crate) fn timestamp(ms: u64) -> String {
    if ms == 0 {
        return "-".to_string();
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// `850 ms`, `12.3 s`, `5m 2s`, `1h 30m`.
fn human_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
    }
}

/// A duration setting: `0s`, `1h`, `1day`.
fn setting(ms: u64) -> String {
    if ms == 0 {
        return "0s".to_string();
    }
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}

/// A report for people: settings, totals, phase durations, then one row per repository.
fn render_report(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "garbage collection run {}: {}{}",
        r.run_id,
        status_str(r.status),
        if r.dry_run {
            " (dry run: nothing was changed; the figures are what a real run would do)"
        } else {
            ""
        }
    );
    let mut field = |k: &str, v: String| {
        let _ = writeln!(out, "  {k:<17}{v}");
    };
    if let Some(e) = &r.error {
        field("error", e.clone());
    }
    field("trigger", r.trigger.clone());
    field("started", timestamp(r.started_ms));
    field("finished", timestamp(r.finished_ms));
    if r.finished_ms != 0 {
        field(
            "duration",
            human_ms(r.finished_ms.saturating_sub(r.started_ms)),
        );
    }
    field("grace", setting(r.grace_ms));
    field("quarantine", setting(r.quarantine_ms));
    field("upload expiry", setting(r.upload_expiry_ms));
    field(
        "delete untagged",
        if r.delete_untagged { "yes" } else { "no" }.to_string(),
    );
    field("snapshot", format!("feed sequence {}", r.snapshot_seq));

    let t = &r.totals;
    let rows = [
        ("manifests marked", t.manifests_marked, None),
        ("blobs marked", t.blobs_marked, Some(t.bytes_marked)),
        (
            "manifests swept",
            t.manifests_swept,
            Some(t.manifest_bytes_swept),
        ),
        ("blob links swept", t.blobs_swept, Some(t.bytes_swept)),
        (
            "blobs quarantined",
            t.blobs_quarantined,
            Some(t.bytes_quarantined),
        ),
        ("blobs purged", t.blobs_purged, Some(t.bytes_purged)),
        (
            "uploads expired",
            t.uploads_expired,
            Some(t.upload_bytes_expired),
        ),
        ("kept on recheck", t.kept_on_recheck, None),
    ]
    .map(|(name, count, bytes)| {
        [
            format!("  {name}"),
            count.to_string(),
            bytes.map(human_bytes).unwrap_or_default(),
        ]
    });
    out.push('\n');
    out.push_str(&table(
        &["totals", "count", "size"],
        &rows,
        &[false, true, true],
    ));

    if !r.phases.is_empty() {
        out.push('\n');
        let rows: Vec<[String; 2]> = r
            .phases
            .iter()
            .map(|p| [format!("  {}", p.phase.as_str()), human_ms(p.ms)])
            .collect();
        out.push_str(&table(&["phases", "took"], &rows, &[false, true]));
    }

    out.push('\n');
    if r.repos.is_empty() {
        out.push_str("repositories: none\n");
    } else {
        let rows: Vec<[String; 6]> = r
            .repos
            .iter()
            .map(|(name, c)| {
                [
                    name.clone(),
                    c.manifests_marked.to_string(),
                    c.manifests_swept.to_string(),
                    c.blobs_marked.to_string(),
                    c.blobs_swept.to_string(),
                    human_bytes(c.bytes_swept),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "REPOSITORY",
                "MANIFESTS MARKED",
                "MANIFESTS SWEPT",
                "BLOBS MARKED",
                "BLOBS SWEPT",
                "BYTES SWEPT",
            ],
            &rows,
            &[false, true, true, true, true, true],
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeMap;

    use stowage_gc::{Counts, PhaseTime};

    use super::*;

    fn report() -> Report {
        Report {
            run_id: 7,
            dry_run: true,
            status: RunStatus::Completed,
            error: None,
            trigger: "cli".into(),
            started_ms: 1_700_000_000_000,
            finished_ms: 1_700_000_001_500,
            grace_ms: 0,
            quarantine_ms: 86_400_000,
            upload_expiry_ms: 3_600_000,
            delete_untagged: true,
            snapshot_seq: 42,
            phases: vec![
                PhaseTime {
                    phase: Phase::Mark,
                    ms: 12,
                    batches: 0,
                },
                PhaseTime {
                    phase: Phase::SweepBlobs,
                    ms: 1_234,
                    batches: 3,
                },
            ],
            totals: Counts {
                manifests_swept: 1,
                blobs_quarantined: 3,
                bytes_quarantined: 3 * 1024 * 1024,
                ..Counts::default()
            },
            repos: BTreeMap::from([(
                "team/app".to_string(),
                Counts {
                    manifests_swept: 1,
                    blobs_swept: 3,
                    bytes_swept: 2048,
                    ..Counts::default()
                },
            )]),
        }
    }

    #[test]
    fn human_units() {
        assert_eq!(human_ms(850), "850 ms");
        assert_eq!(human_ms(12_340), "12.3 s");
        assert_eq!(human_ms(302_000), "5m 2s");
        assert_eq!(setting(0), "0s");
        assert_eq!(setting(3_600_000), "1h");
        assert_eq!(timestamp(0), "-");
        assert_eq!(timestamp(1_700_000_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn report_table() {
        let text = render_report(&report());
        assert!(
            text.starts_with("garbage collection run 7: completed (dry run"),
            "{text}"
        );
        assert!(text.contains("  grace            0s\n"), "{text}");
        assert!(text.contains("  quarantine       1day\n"), "{text}");
        let quarantined = text
            .lines()
            .find(|l| l.trim_start().starts_with("blobs quarantined"))
            .unwrap();
        assert!(
            quarantined.contains(" 3 ") && quarantined.ends_with("3.0 MiB"),
            "{text}"
        );
        assert!(text.contains("sweep_blobs"), "{text}");
        assert!(text.contains("1.2 s"), "{text}");
        let repo = text.lines().find(|l| l.starts_with("team/app")).unwrap();
        assert!(repo.ends_with("2.0 KiB"), "{repo}");
        // Columns line up: the header and the row have the same width.
        let header = text.lines().find(|l| l.starts_with("REPOSITORY")).unwrap();
        assert_eq!(header.len(), repo.len(), "{text}");
    }

    #[test]
    fn history_table() {
        assert_eq!(render_history(&[]), "no garbage collection runs yet\n");
        let mut failed = report();
        failed.run_id = 8;
        failed.dry_run = false;
        failed.status = RunStatus::Failed;
        failed.totals.bytes_purged = 1024;
        failed.totals.upload_bytes_expired = 512;
        let text = render_history(&[failed, report()]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("RUN  STARTED"), "{text}");
        assert!(
            lines[1].starts_with("  8  2023-11-14T22:13:20Z  failed"),
            "{text}"
        );
        assert!(lines[1].ends_with("1.5 KiB"), "{text}");
        assert!(lines[2].contains("completed  yes"), "{text}");
        assert!(lines[2].ends_with("0 B"), "{text}");
    }

    #[test]
    fn progress_lines() {
        let mut p = Progress {
            run_id: 7,
            dry_run: false,
            phase: Phase::SweepBlobs,
            done: 120,
            total: 300,
            report: report(),
        };
        assert_eq!(progress_text(&p), "gc run 7: sweep_blobs 120/300 40%");
        // On a terminal: the bar, redrawn in place.
        let term = indicatif::InMemoryTerm::new(4, 80);
        let mut line =
            ProgressLine::with_target(Some(ProgressDrawTarget::term_like(Box::new(term.clone()))));
        line.update(&p);
        line.finish();
        assert_eq!(
            term.contents().trim_end(),
            "gc run 7: sweep_blobs [########............] 120/300 40%"
        );
        p.total = 0;
        p.phase = Phase::Mark;
        p.dry_run = true;
        assert_eq!(progress_text(&p), "gc run 7 (dry run): mark 120");
        line =
            ProgressLine::with_target(Some(ProgressDrawTarget::term_like(Box::new(term.clone()))));
        term.reset();
        line.update(&p);
        p.phase = Phase::Done;
        line.update(&p);
        line.finish();
        assert_eq!(
            term.contents().trim_end(),
            "gc run 7 (dry run): done (completed)"
        );
        assert_eq!(progress_text(&p), "gc run 7 (dry run): done (completed)");
    }

    #[test]
    fn status_text() {
        let mut p = Progress {
            run_id: 3,
            dry_run: false,
            phase: Phase::Purge,
            done: 1,
            total: 2,
            report: report(),
        };
        let text = render_status(Some(3), Some(&p));
        assert_eq!(text, "in progress: gc run 3: purge 1/2 50%\n");
        p.phase = Phase::Done;
        let text = render_status(None, Some(&p));
        assert!(
            text.starts_with(
                "no garbage collection run in progress\nlast run: 7 completed (dry run)"
            ),
            "{text}"
        );
        assert!(text.contains("3 blobs quarantined (3.0 MiB)"), "{text}");
        assert!(render_status(None, None).contains("gc history"));
        assert_eq!(
            render_status(Some(9), None),
            "in progress: gc run 9 (starting)\n"
        );
    }
}
