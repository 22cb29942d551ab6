//! The admin gRPC service (`proto/stowage/v1/admin.proto`) and the standard gRPC health
//! service, served on `--admin-listen`; and the client side shared by `stowage info` and
//! `stowage gc`.

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use stowage_core::Digest;
use stowage_gc::{Collector, GcError, Phase, Progress, Report, RunOptions};
use stowage_rpc::v1 as pb;
use stowage_rpc::v1::admin_client::AdminClient;
use stowage_rpc::v1::admin_server::{Admin, AdminServer};
use stowage_rpc::v1::{GetInfoRequest, GetInfoResponse};
use stowage_store::Store;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::client::{AdminChannel, ClientArgs};
use crate::config::Settings;
use crate::gc_rpc::{progress_to_proto, report_to_proto};

/// Runs `ListGcRuns` returns when the request leaves the limit at 0, and the most it returns.
const DEFAULT_HISTORY: usize = 20;
const MAX_HISTORY: usize = 1000;
/// Longest `trigger` a client may record in a run's report.
const MAX_TRIGGER_LEN: usize = 128;

#[derive(Debug)]
struct AdminService {
    store: Store,
    data_dir: String,
    gc: Collector,
    /// Turns true at shutdown; ends `WatchGc` streams so they do not hold the server open.
    stop: watch::Receiver<bool>,
}

/// The gRPC status for a collector error, saying what was being done.
fn gc_status(doing: &str, e: GcError) -> Status {
    let msg = format!("{doing}: {e}");
    match e {
        GcError::AlreadyRunning(_) => Status::already_exists(msg),
        GcError::UnknownRun(_) | GcError::NotQuarantined(_) => Status::not_found(msg),
        GcError::Store(_) | GcError::Index(_) | GcError::MarkThread(_) | GcError::MarkLost => {
            tracing::error!(error = %msg, "admin request failed");
            Status::internal(msg)
        }
    }
}

/// The last update a watcher gets for a run that is already over.
fn final_progress(r: Report) -> Progress {
    Progress {
        run_id: r.run_id,
        dry_run: r.dry_run,
        phase: Phase::Done,
        done: 0,
        total: 0,
        report: r,
    }
}

type GcProgressStream = Pin<Box<dyn Stream<Item = Result<pb::GcProgress, Status>> + Send>>;

/// A `WatchGc` stream in progress: updates of run `id` from the collector's progress channel.
struct Watch {
    id: u64,
    gc: Collector,
    rx: watch::Receiver<Option<Progress>>,
    stop: watch::Receiver<bool>,
    /// An update to send before waiting for the next one.
    pending: Option<Progress>,
    /// The run's last update (or an error) has been sent.
    ended: bool,
}

impl Watch {
    /// The stream of messages; dropped (and so ended) when the client goes away.
    fn into_stream(self) -> GcProgressStream {
        Box::pin(futures::stream::unfold(self, |mut w| async move {
            let item = w.next().await?;
            Some((item, w))
        }))
    }

    /// The next message of the stream; `None` once the run's final update has gone out.
    async fn next(&mut self) -> Option<Result<pb::GcProgress, Status>> {
        if self.ended {
            return None;
        }
        loop {
            if let Some(p) = self.pending.take() {
                self.ended = p.phase == Phase::Done;
                return Some(Ok(progress_to_proto(&p)));
            }
            tokio::select! {
                changed = self.rx.changed() => {
                    if changed.is_err() {
                        self.ended = true;
                        return Some(Err(Status::unavailable(format!(
                            "watching garbage collection run {}: the collector has stopped",
                            self.id
                        ))));
                    }
                }
                _ = self.stop.wait_for(|stopping| *stopping) => {
                    self.ended = true;
                    return Some(Err(Status::unavailable(format!(
                        "watching garbage collection run {}: the daemon is shutting down",
                        self.id
                    ))));
                }
            }
            let current = self.rx.borrow_and_update().clone();
            match current {
                Some(p) if p.run_id == self.id => self.pending = Some(p),
                Some(p) if p.run_id > self.id => {
                    // Our run ended and a later one started before this stream saw the last
                    // update (a watch channel keeps only the latest value): read the history.
                    self.ended = true;
                    return Some(
                        self.gc
                            .report(self.id)
                            .map(|r| progress_to_proto(&final_progress(r)))
                            .map_err(|e| {
                                gc_status(
                                    &format!(
                                        "reading the report of garbage collection run {}",
                                        self.id
                                    ),
                                    e,
                                )
                            }),
                    );
                }
                // Not started publishing yet, or an older run's late update.
                _ => {}
            }
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn get_info(
        &self,
        _req: Request<GetInfoRequest>,
    ) -> Result<Response<GetInfoResponse>, Status> {
        let idx = self.store.index();
        let internal = |e: stowage_index::IndexError| Status::internal(e.to_string());
        Ok(Response::new(GetInfoResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            data_dir: self.data_dir.clone(),
            feed_sequence: idx.last_seq().map_err(internal)?,
            blob_count: idx.estimate_blobs().map_err(internal)?,
            manifest_count: idx.estimate_manifests().map_err(internal)?,
        }))
    }

    async fn start_gc(
        &self,
        req: Request<pb::StartGcRequest>,
    ) -> Result<Response<pb::StartGcResponse>, Status> {
        let actor = crate::admin_auth::actor_of(&req);
        let req = req.into_inner();
        if req.trigger.len() > MAX_TRIGGER_LEN {
            return Err(Status::invalid_argument(format!(
                "starting a garbage collection run: trigger is {} bytes long, at most {MAX_TRIGGER_LEN} are kept",
                req.trigger.len()
            )));
        }
        let trigger = if req.trigger.is_empty() {
            "grpc".to_string()
        } else {
            req.trigger
        };
        let opts = RunOptions {
            dry_run: req.dry_run,
            grace: req.grace_ms.map(Duration::from_millis),
            quarantine: req.quarantine_ms.map(Duration::from_millis),
            upload_expiry: req.upload_expiry_ms.map(Duration::from_millis),
            trigger,
            actor: Some(actor),
        };
        let log = opts.clone();
        let run_id = self
            .gc
            .start(opts)
            .map_err(|e| gc_status("starting a garbage collection run", e))?;
        tracing::info!(
            run_id,
            dry_run = log.dry_run,
            trigger = %log.trigger,
            grace = ?log.grace,
            quarantine = ?log.quarantine,
            upload_expiry = ?log.upload_expiry,
            "garbage collection run started on request"
        );
        Ok(Response::new(pb::StartGcResponse { run_id }))
    }

    type WatchGcStream = GcProgressStream;

    async fn watch_gc(
        &self,
        req: Request<pb::WatchGcRequest>,
    ) -> Result<Response<Self::WatchGcStream>, Status> {
        let id = req.into_inner().run_id;
        // Subscribe before looking anywhere else, so no update after this point is missed.
        let mut rx = self.gc.progress();
        let current = rx.borrow_and_update().clone();
        let pending = match current {
            Some(p) if p.run_id == id => Some(p),
            // Accepted but not publishing yet: wait for its first update.
            _ if self.gc.running() == Some(id) => None,
            // Over (or never was): its report, once.
            _ => {
                let report = self
                    .gc
                    .report(id)
                    .map_err(|e| gc_status(&format!("watching garbage collection run {id}"), e))?;
                let once = progress_to_proto(&final_progress(report));
                let stream: GcProgressStream = Box::pin(futures::stream::once(async { Ok(once) }));
                return Ok(Response::new(stream));
            }
        };
        let watch = Watch {
            id,
            gc: self.gc.clone(),
            rx,
            stop: self.stop.clone(),
            pending,
            ended: false,
        };
        Ok(Response::new(watch.into_stream()))
    }

    async fn get_gc_status(
        &self,
        _req: Request<pb::GetGcStatusRequest>,
    ) -> Result<Response<pb::GcStatus>, Status> {
        let latest = self.gc.progress().borrow().as_ref().map(progress_to_proto);
        Ok(Response::new(pb::GcStatus {
            running_run_id: self.gc.running(),
            latest,
        }))
    }

    async fn list_gc_runs(
        &self,
        req: Request<pb::ListGcRunsRequest>,
    ) -> Result<Response<pb::ListGcRunsResponse>, Status> {
        let limit = match usize::try_from(req.into_inner().limit) {
            Ok(0) => DEFAULT_HISTORY,
            Ok(n) => n.min(MAX_HISTORY),
            Err(_) => MAX_HISTORY,
        };
        let runs = self
            .gc
            .history(limit)
            .map_err(|e| gc_status("reading the garbage collection history", e))?;
        Ok(Response::new(pb::ListGcRunsResponse {
            runs: runs.iter().map(report_to_proto).collect(),
        }))
    }

    async fn get_gc_run(
        &self,
        req: Request<pb::GetGcRunRequest>,
    ) -> Result<Response<pb::GcReport>, Status> {
        let id = req.into_inner().run_id;
        let report = self.gc.report(id).map_err(|e| {
            gc_status(
                &format!("reading the report of garbage collection run {id}"),
                e,
            )
        })?;
        Ok(Response::new(report_to_proto(&report)))
    }

    async fn restore_blob(
        &self,
        req: Request<pb::RestoreBlobRequest>,
    ) -> Result<Response<pb::RestoreBlobResponse>, Status> {
        let actor = crate::admin_auth::actor_of(&req);
        let text = req.into_inner().digest;
        let digest = Digest::parse(text.trim())
            .map_err(|e| Status::invalid_argument(format!("restoring a quarantined blob: {e}")))?;
        let restored = self
            .gc
            .restore(&actor, &digest)
            .await
            .map_err(|e| gc_status(&format!("restoring quarantined blob {digest}"), e))?;
        tracing::info!(
            digest = %restored.digest,
            size = restored.size,
            repositories = ?restored.repos,
            "quarantined blob restored on request"
        );
        Ok(Response::new(pb::RestoreBlobResponse {
            digest: restored.digest.to_string(),
            size: restored.size,
            repositories: restored.repos,
        }))
    }
}

/// HTTP/2 settings of the gRPC servers. Replication streams blobs: windows larger than
/// HTTP/2's 64 KiB default keep a stream from stalling on its peer's acknowledgements.
/// Streams one gRPC connection may have open at once (replication uses a handful: the feed's
/// long poll and `concurrency` blob transfers).
const MAX_STREAMS_PER_CONNECTION: u32 = 128;
/// Streams a client may reset before the server has accepted them (HTTP/2 rapid reset).
const MAX_PENDING_RESETS: usize = 32;

/// A gRPC server with the listener's limits: the request head (header list) as large as the
/// HTTP listeners accept, a bounded number of concurrent streams and in-flight requests per
/// connection, and the rapid-reset guard; the accept loop in front of it bounds connections,
/// handshakes and idle time.
fn grpc_server(limits: &stowage_auth::net::Limits) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(16 << 20)
        .max_frame_size(1 << 20)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .http2_max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .concurrency_limit_per_connection(MAX_STREAMS_PER_CONNECTION as usize)
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_RESETS))
}

/// Starts the admin server on `listener`: GC and info (`Admin`), accounts and the audit log
/// (`Access`), the integrity scrub (`Scrub`) and the operator's replication calls, each behind the admin gate; the health
/// check is open. It stops when `stop` turns true.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    listener: stowage_auth::net::Listener,
    store: Store,
    gc: Collector,
    repl: stowage_repl::ReplicationService,
    access: crate::access_rpc::AccessService,
    scrub: crate::scrub_rpc::ScrubService,
    gate: std::sync::Arc<crate::admin_auth::AdminGate>,
    settings: Settings,
    stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>, String> {
    use crate::admin_auth::Gated;
    let fsck = crate::fsck_rpc::FsckService::new(store.clone());
    let svc = AdminService {
        store,
        data_dir: settings.data_dir.display().to_string(),
        gc,
        stop: stop.clone(),
    };
    let mut done = stop.clone();
    let limits = listener.limits().clone();
    Ok(stowage_store::task::spawn_named("admin-grpc", async move {
        // The overall status ("") starts as SERVING; the Admin service is reported by name too.
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter.set_serving::<AdminServer<AdminService>>().await;
        grpc_server(&limits)
            .add_service(health)
            .add_service(Gated::new(AdminServer::new(svc), gate.clone()))
            .add_service(Gated::new(access.into_server(), gate.clone()))
            .add_service(Gated::new(fsck.into_server(), gate.clone()))
            .add_service(Gated::new(scrub.into_server(), gate.clone()))
            .add_service(Gated::new(repl.into_server(), gate))
            .serve_with_incoming_shutdown(stowage_auth::net::incoming(listener, stop), async move {
                let _ = done.wait_for(|v| *v).await;
            })
            .await
    }))
}

/// Starts the replication server for peers on `listener` (mutual TLS unless it is a plain
/// loopback listener); it stops when `stop` turns true.
pub fn spawn_replication(
    listener: stowage_auth::net::Listener,
    repl: stowage_repl::ReplicationService,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Result<(), tonic::transport::Error>> {
    let mut done = stop.clone();
    let limits = listener.limits().clone();
    stowage_store::task::spawn_named("replication-grpc", async move {
        let (_reporter, health) = tonic_health::server::health_reporter();
        grpc_server(&limits)
            .add_service(health)
            .add_service(repl.into_server())
            .serve_with_incoming_shutdown(stowage_auth::net::incoming(listener, stop), async move {
                let _ = done.wait_for(|v| *v).await;
            })
            .await
    })
}

/// `error: source: source...`, skipping a source whose text the outer message already holds.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = s.source();
    }
    out
}

/// `http://ADDR` for an `--server` value given as `ADDR` or as a URL (for messages; the
/// connection itself uses [`ClientArgs::url`]).
pub fn endpoint_url(server: &str) -> String {
    if server.contains("://") {
        server.to_string()
    } else {
        format!("http://{server}")
    }
}

/// Connects to the admin service (`--server`, TLS and identity options).
pub async fn connect(conn: &ClientArgs) -> Result<AdminClient<AdminChannel>, String> {
    Ok(AdminClient::new(conn.channel().await?))
}

/// What a failed RPC means, for a person: `doing` at `server`, then the server's message. The
/// daemon's messages start with what it was doing; the client passes the same words, so they
/// are said once.
pub fn rpc_error(doing: &str, server: &str, s: &Status) -> String {
    let url = endpoint_url(server);
    let msg = if s.message().is_empty() {
        s.code().description().to_string()
    } else {
        s.message().to_string()
    };
    match s.code() {
        tonic::Code::Unimplemented => {
            format!("{doing} at {url}: the daemon does not offer this (an older version?): {msg}")
        }
        tonic::Code::Unavailable => {
            format!("{doing} at {url}: the admin service is unavailable: {msg}")
        }
        _ if msg.starts_with(doing) => format!("{msg} (admin service at {url})"),
        _ => format!("{doing} at {url}: {msg}"),
    }
}

/// Writes `text` to stdout. A reader that went away (`stowage gc history | head`) is not an
/// error; any other write failure is.
pub fn emit(text: &str) -> Result<(), String> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(format!("writing to standard output: {e}"))
        }
        _ => Ok(()),
    }
}

/// A single-threaded runtime for a CLI command.
pub fn cli_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting runtime: {e}"))
}

/// `stowage info`.
pub fn info_command(conn: &ClientArgs, json: bool) -> Result<(), String> {
    let server = conn.server.as_str();
    let rt = cli_runtime()?;
    let info = rt.block_on(async {
        let mut client = connect(conn).await?;
        client
            .get_info(GetInfoRequest {})
            .await
            .map(Response::into_inner)
            .map_err(|e| rpc_error("GetInfo", server, &e))
    })?;
    if json {
        let v = serde_json::json!({
            "version": info.version,
            "data_dir": info.data_dir,
            "feed_sequence": info.feed_sequence,
            "blob_count": info.blob_count,
            "manifest_count": info.manifest_count,
        });
        emit(&format!("{v}\n"))?;
    } else {
        let rows = [
            ("version", info.version),
            ("data dir", info.data_dir),
            ("feed sequence", info.feed_sequence.to_string()),
            ("blobs (approx)", info.blob_count.to_string()),
            ("manifests (approx)", info.manifest_count.to_string()),
        ];
        let text: String = rows.iter().map(|(k, v)| format!("{k:<20}{v}\n")).collect();
        emit(&text)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use futures::StreamExt;
    use stowage_gc::{Counts, GcConfig};
    use stowage_store::StoreConfig;

    use super::*;

    async fn service(dir: &std::path::Path) -> (AdminService, watch::Sender<bool>) {
        let store = Store::open(StoreConfig::new(dir)).await.unwrap();
        let gc = Collector::new(store.gc_ops(), GcConfig::default());
        let (stop_tx, stop) = watch::channel(false);
        let svc = AdminService {
            store,
            data_dir: dir.display().to_string(),
            gc,
            stop,
        };
        (svc, stop_tx)
    }

    fn progress(run_id: u64, phase: Phase) -> Progress {
        Progress {
            run_id,
            dry_run: false,
            phase,
            done: 1,
            total: 2,
            report: Report {
                run_id,
                dry_run: false,
                status: if phase == Phase::Done {
                    stowage_gc::RunStatus::Completed
                } else {
                    stowage_gc::RunStatus::Running
                },
                error: None,
                trigger: "test".into(),
                started_ms: 1,
                finished_ms: 0,
                grace_ms: 0,
                quarantine_ms: 0,
                upload_expiry_ms: 0,
                delete_untagged: true,
                snapshot_seq: 0,
                phases: Vec::new(),
                totals: Counts::default(),
                repos: Default::default(),
            },
        }
    }

    /// Request errors a fresh daemon gives whatever the collector does: malformed input and
    /// runs or blobs it has never seen.
    #[tokio::test]
    async fn errors_map_to_grpc_codes() {
        let dir = tempfile::tempdir().unwrap();
        let (svc, _stop) = service(dir.path()).await;
        let err = svc
            .restore_blob(Request::new(pb::RestoreBlobRequest {
                digest: "sha256:nothex".into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("restoring"), "{err:?}");
        let never = Digest::sha256(b"never stored").to_string();
        let err = svc
            .restore_blob(Request::new(pb::RestoreBlobRequest {
                digest: never.clone(),
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
        assert!(err.message().contains(&never), "{err:?}");
        let err = svc
            .get_gc_run(Request::new(pb::GetGcRunRequest { run_id: 999 }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
        let err = svc
            .watch_gc(Request::new(pb::WatchGcRequest { run_id: 999 }))
            .await
            .err()
            .unwrap();
        assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
        let err = svc
            .start_gc(Request::new(pb::StartGcRequest {
                trigger: "x".repeat(MAX_TRIGGER_LEN + 1),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        let st = svc
            .get_gc_status(Request::new(pb::GetGcStatusRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(st.running_run_id, None);
        assert_eq!(st.latest, None);
        assert_eq!(
            gc_status("starting", GcError::AlreadyRunning(3)).code(),
            tonic::Code::AlreadyExists
        );
    }

    #[test]
    fn client_errors_say_what_was_done_once() {
        let s = Status::not_found("reading the report of garbage collection run 3: no run 3");
        assert_eq!(
            rpc_error("reading the report of garbage collection run 3", "127.0.0.1:9", &s),
            "reading the report of garbage collection run 3: no run 3 (admin service at http://127.0.0.1:9)"
        );
        let s = Status::internal("boom");
        assert_eq!(
            rpc_error("listing", "http://h:1", &s),
            "listing at http://h:1: boom"
        );
        let s = Status::unimplemented("");
        assert!(rpc_error("listing", "h:1", &s).contains("older version"));
    }

    /// A watch sends the run's updates (not other runs'), ends after `done`, and ends with
    /// UNAVAILABLE when the daemon stops.
    #[tokio::test]
    async fn watch_follows_one_run_to_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let (svc, stop_tx) = service(dir.path()).await;
        let (tx, rx) = watch::channel(None);
        let w = Watch {
            id: 5,
            gc: svc.gc.clone(),
            rx,
            stop: svc.stop.clone(),
            pending: Some(progress(5, Phase::Queued)),
            ended: false,
        };
        let mut stream = w.into_stream();
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!((first.run_id, first.phase.as_str()), (5, "queued"));
        tx.send_replace(Some(progress(4, Phase::Done)));
        tx.send_replace(Some(progress(5, Phase::Mark)));
        let next = stream.next().await.unwrap().unwrap();
        assert_eq!((next.run_id, next.phase.as_str()), (5, "mark"));
        tx.send_replace(Some(progress(5, Phase::Done)));
        let last = stream.next().await.unwrap().unwrap();
        assert_eq!(last.phase, "done");
        assert_eq!(
            last.report.unwrap().status,
            i32::from(pb::GcRunStatus::Completed)
        );
        assert!(stream.next().await.is_none());

        // Shutdown ends a watch that is waiting.
        let (_tx, rx) = watch::channel(None);
        let w = Watch {
            id: 6,
            gc: svc.gc.clone(),
            rx,
            stop: svc.stop.clone(),
            pending: None,
            ended: false,
        };
        let mut stream = w.into_stream();
        stop_tx.send_replace(true);
        let err = stream.next().await.unwrap().unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(stream.next().await.is_none());
    }

    /// A later run's update means ours ended unseen: the stream answers from the history (here
    /// the run is unknown to it, so NOT_FOUND) and ends.
    #[tokio::test]
    async fn watch_falls_back_to_history_when_a_later_run_started() {
        let dir = tempfile::tempdir().unwrap();
        let (svc, _stop) = service(dir.path()).await;
        let (tx, rx) = watch::channel(None);
        let w = Watch {
            id: 5,
            gc: svc.gc.clone(),
            rx,
            stop: svc.stop.clone(),
            pending: None,
            ended: false,
        };
        let mut stream = w.into_stream();
        tx.send_replace(Some(progress(6, Phase::Queued)));
        let err = stream.next().await.unwrap().unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
        assert!(stream.next().await.is_none());
    }
}
