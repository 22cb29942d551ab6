//! The admin side of the integrity scrub: the `stowage.v1.Scrub` gRPC service (start a run,
//! status and reports), the scrub's report on the wire, and its Prometheus series.

use std::fmt::Write as _;

use stowage_rpc::v1 as pb;
use stowage_rpc::v1::scrub_server::{Scrub, ScrubServer};
use stowage_store::scrub::{
    Fate, ScrubCounters, ScrubReport, ScrubState, ScrubTrigger, Scrubber, Started,
};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

/// The scrub service over one site's scrubber.
#[derive(Clone, Debug)]
pub struct ScrubService {
    scrubber: Scrubber,
    /// The daemon's stop signal: an operator's run stops (resumably) with the daemon.
    stop: watch::Receiver<bool>,
}

impl ScrubService {
    /// The service of `scrubber`.
    pub fn new(scrubber: Scrubber, stop: watch::Receiver<bool>) -> Self {
        Self { scrubber, stop }
    }

    /// The tonic server.
    pub fn into_server(self) -> ScrubServer<Self> {
        ScrubServer::new(self)
    }
}

fn internal(doing: &str, e: stowage_store::StoreError) -> Status {
    Status::internal(format!("{doing}: {e}"))
}

/// A report on the wire.
pub fn report_to_proto(r: &ScrubReport) -> pb::ScrubReport {
    let ScrubReport {
        run_id,
        trigger,
        state,
        started_ms,
        finished_ms,
        resumed,
        blobs,
        bytes,
        corrupt,
        repaired,
        unrepaired,
        blobs_corrupt,
        error,
    } = r;
    pb::ScrubReport {
        run_id: *run_id,
        trigger: match trigger {
            ScrubTrigger::Schedule => "schedule",
            ScrubTrigger::Operator => "operator",
        }
        .into(),
        state: state_str(*state).into(),
        started_ms: *started_ms,
        finished_ms: *finished_ms,
        resumed: *resumed,
        blobs: *blobs,
        bytes: *bytes,
        corrupt: *corrupt,
        repaired: *repaired,
        unrepaired: *unrepaired,
        corrupt_blobs: blobs_corrupt
            .iter()
            .map(|b| {
                let (repaired, repaired_from, reason) = match &b.fate {
                    Fate::Repaired { peer } => (true, peer.clone(), String::new()),
                    Fate::Unrepaired { reason } => (false, String::new(), reason.clone()),
                };
                pb::ScrubCorruptBlob {
                    digest: b.digest.to_string(),
                    size: b.size,
                    detail: b.detail.clone(),
                    earlier: b.earlier,
                    repaired,
                    repaired_from,
                    reason,
                }
            })
            .collect(),
        error: error.clone(),
    }
}

/// A run state's wire word.
pub fn state_str(s: ScrubState) -> &'static str {
    match s {
        ScrubState::Running => "running",
        ScrubState::Completed => "completed",
        ScrubState::Failed => "failed",
    }
}

#[tonic::async_trait]
impl Scrub for ScrubService {
    async fn start_scrub(
        &self,
        req: Request<pb::StartScrubRequest>,
    ) -> Result<Response<pb::StartScrubResponse>, Status> {
        let actor = crate::admin_auth::actor_of(&req);
        let started = self
            .scrubber
            .start(actor.clone(), ScrubTrigger::Operator, self.stop.clone())
            .map_err(|e| internal("starting a scrub run", e))?;
        let (run_id, already_running) = match started {
            Started::Now(id) => (id, false),
            Started::AlreadyRunning(id) => (id, true),
        };
        tracing::info!(%actor, run_id, already_running, "scrub run requested");
        Ok(Response::new(pb::StartScrubResponse {
            run_id,
            already_running,
        }))
    }

    async fn get_scrub_status(
        &self,
        _req: Request<pb::GetScrubStatusRequest>,
    ) -> Result<Response<pb::ScrubStatus>, Status> {
        let last = self
            .scrubber
            .reports(1)
            .map_err(|e| internal("reading scrub reports", e))?;
        let cfg = self.scrubber.config();
        Ok(Response::new(pb::ScrubStatus {
            running: self.scrubber.current().as_ref().map(report_to_proto),
            last: last.first().map(report_to_proto),
            interval_seconds: cfg.interval.map(|d| d.as_secs()).unwrap_or(0),
            bytes_per_second: cfg.bytes_per_second,
        }))
    }

    async fn get_scrub_run(
        &self,
        req: Request<pb::GetScrubRunRequest>,
    ) -> Result<Response<pb::ScrubReport>, Status> {
        let id = req.into_inner().run_id;
        match self
            .scrubber
            .report(id)
            .map_err(|e| internal("reading a scrub report", e))?
        {
            Some(r) => Ok(Response::new(report_to_proto(&r))),
            None => Err(Status::not_found(format!(
                "no finished scrub run {id} (it may still be going, or was pruned)"
            ))),
        }
    }
}

/// The scrub's Prometheus series: totals since start and whether a run is going.
pub fn render_metrics(s: &Scrubber) -> String {
    let c = s.counters();
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, v: u64| {
        let _ = writeln!(out, "# HELP stowage_scrub_{name} {help}");
        let _ = writeln!(out, "# TYPE stowage_scrub_{name} {kind}");
        let _ = writeln!(out, "stowage_scrub_{name} {v}");
    };
    family(
        "runs_total",
        "counter",
        "Integrity scrub runs finished.",
        ScrubCounters::get(&c.runs),
    );
    family(
        "blobs_total",
        "counter",
        "Blobs whose bytes the scrub read and checked.",
        ScrubCounters::get(&c.blobs),
    );
    family(
        "bytes_total",
        "counter",
        "Bytes the scrub read and checked.",
        ScrubCounters::get(&c.bytes),
    );
    family(
        "corrupt_total",
        "counter",
        "Blobs the scrub found corrupt and quarantined.",
        ScrubCounters::get(&c.corrupt),
    );
    family(
        "repaired_total",
        "counter",
        "Corrupt blobs repaired from a peer.",
        ScrubCounters::get(&c.repaired),
    );
    family(
        "unrepaired_total",
        "counter",
        "Repair attempts that left a corrupt blob quarantined.",
        ScrubCounters::get(&c.unrepaired),
    );
    family(
        "running",
        "gauge",
        "1 while a scrub run is going.",
        u64::from(s.current().is_some()),
    );
    family(
        "bytes_per_second_limit",
        "gauge",
        "The scrub's read budget (0: unthrottled).",
        s.config().bytes_per_second,
    );
    out
}
