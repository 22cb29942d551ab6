//! Online mark-and-sweep garbage collection.
//!
//! A run marks from the roots on one consistent index snapshot, decides the candidates
//! (unreachable and older than the grace period), then removes each candidate through
//! `stowage-store`, which re-checks it under the same per-digest lock a push takes. Pushes go on
//! during the whole run. See `run.rs` for the phases and `mark.rs` for the roots.

mod batches;
mod mark;
mod report;
mod run;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stowage_core::Actor;
use stowage_core::Digest;
use stowage_store::GcStore;
use tokio::sync::watch;

pub use report::{Counts, Phase, PhaseTime, Progress, Report, RunStatus};

/// Collector settings (the `[gc]` section of the daemon's config).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcConfig {
    /// Unreachable content younger than this is kept (default 1 h).
    pub grace: Duration,
    /// How long quarantined blob bytes are kept before they are purged (default 24 h; zero
    /// purges in the same run).
    pub quarantine: Duration,
    /// Upload sessions idle for longer than this are removed with their bytes (default 24 h).
    pub upload_expiry: Duration,
    /// Collect manifests that no tag, index or live subject reaches (default false, as in
    /// Distribution and Harbor: a manifest pushed by digest is kept until deleted). When false,
    /// every manifest is a root and only unreferenced blobs are collected; collecting untagged
    /// manifests is the operator's explicit choice.
    pub delete_untagged: bool,
}

impl Default for GcConfig {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(3600),
            quarantine: Duration::from_secs(24 * 3600),
            upload_expiry: Duration::from_secs(24 * 3600),
            delete_untagged: false,
        }
    }
}

/// Options of one run; `None` fields take the configured value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunOptions {
    /// Decide and report, change nothing.
    pub dry_run: bool,
    /// Grace period for this run.
    pub grace: Option<Duration>,
    /// Quarantine retention for this run.
    pub quarantine: Option<Duration>,
    /// Upload expiry for this run.
    pub upload_expiry: Option<Duration>,
    /// What asked for the run ("cli", "schedule", ...), kept in the report.
    pub trigger: String,
    /// Who asked (recorded in the audit log; the run's own removals are made as `system:gc`).
    /// `None`: the daemon itself.
    pub actor: Option<Actor>,
}

/// Errors of the collector.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// Only one run at a time.
    #[error("garbage collection run {0} is already in progress")]
    AlreadyRunning(u64),
    /// No such run in the history.
    #[error("no garbage collection run {0}")]
    UnknownRun(u64),
    /// The digest is not a quarantined blob (never stored, still served, or already purged).
    #[error("{0}")]
    NotQuarantined(String),
    /// A store operation failed.
    #[error(transparent)]
    Store(#[from] stowage_store::StoreError),
    /// An index operation failed.
    #[error(transparent)]
    Index(#[from] stowage_index::IndexError),
    /// The mark thread could not be started.
    #[error("starting the gc mark thread: {0}")]
    MarkThread(#[source] std::io::Error),
    /// The mark thread ended without handing over its plan (it panicked).
    #[error("the gc mark thread ended without a result")]
    MarkLost,
}

/// What a restore did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    /// The blob.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// Repositories it was linked back into (those that held it when it was quarantined).
    pub repos: Vec<String>,
}

/// The collector. Cheap to clone; one per daemon.
#[derive(Clone, Debug)]
pub struct Collector {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: GcStore,
    config: GcConfig,
    /// Latest progress of the current (or last) run; `None` before the first.
    progress: watch::Sender<Option<Progress>>,
    /// Id of the run in progress.
    running: Mutex<Option<u64>>,
    /// Next run id.
    next_id: AtomicU64,
    metrics: Mutex<Metrics>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Values behind these locks are replaced whole; a panic cannot leave them torn.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Clears the running slot when a run ends, even by panic.
struct RunningGuard {
    inner: Arc<Inner>,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        *lock(&self.inner.running) = None;
    }
}

struct ProgressSink {
    inner: Arc<Inner>,
    dry_run: bool,
}

impl run::Sink for ProgressSink {
    fn update(&self, phase: Phase, done: u64, total: u64, report: &Report) {
        self.inner.progress.send_replace(Some(Progress {
            run_id: report.run_id,
            dry_run: self.dry_run,
            phase,
            done,
            total,
            report: report.clone(),
        }));
    }
}

fn decode_report(id: u64, bytes: &[u8]) -> Result<Report, GcError> {
    serde_json::from_slice(bytes).map_err(|e| {
        GcError::Index(stowage_index::IndexError::Corrupt(format!(
            "report of gc run {id}: {e}"
        )))
    })
}

impl Collector {
    /// A collector over `store`. Runs that were in progress when the daemon last stopped are
    /// closed as interrupted (their removals were each atomic; the next run finishes the job).
    pub fn new(store: GcStore, config: GcConfig) -> Collector {
        let (progress, _) = watch::channel(None);
        let mut next_id = 1;
        let mut last = None;
        match store.index().gc_runs(64) {
            Ok(runs) => {
                let mut batch = stowage_index::Batch::new();
                for (i, (id, bytes)) in runs.iter().enumerate() {
                    next_id = next_id.max(id + 1);
                    match decode_report(*id, bytes) {
                        Ok(mut r) if r.status == RunStatus::Running => {
                            r.status = RunStatus::Interrupted;
                            r.error = Some("the daemon stopped during the run".into());
                            tracing::warn!(run_id = id, "closing gc run interrupted by a stop");
                            batch.put_gc_run(*id, serde_json::to_vec(&r).unwrap_or_default());
                            if i == 0 {
                                last = Some(r);
                            }
                        }
                        Ok(r) if i == 0 => last = Some(r),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "unreadable gc report"),
                    }
                }
                if !batch.is_empty() {
                    if let Err(e) = store.record_runs_blocking(batch) {
                        tracing::error!(error = %e, "closing interrupted gc runs");
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "reading gc history"),
        }
        Collector {
            inner: Arc::new(Inner {
                store,
                config,
                progress,
                running: Mutex::new(None),
                next_id: AtomicU64::new(next_id),
                metrics: Mutex::new(Metrics {
                    last,
                    ..Metrics::default()
                }),
            }),
        }
    }

    /// The configured settings.
    pub fn config(&self) -> &GcConfig {
        &self.inner.config
    }

    fn resolve(&self, opts: &RunOptions) -> run::Resolved {
        let c = &self.inner.config;
        run::Resolved {
            dry_run: opts.dry_run,
            grace: opts.grace.unwrap_or(c.grace),
            quarantine: opts.quarantine.unwrap_or(c.quarantine),
            upload_expiry: opts.upload_expiry.unwrap_or(c.upload_expiry),
            delete_untagged: c.delete_untagged,
        }
    }

    /// Claims the running slot and records the run as started.
    fn begin(&self, opts: &RunOptions) -> Result<(RunningGuard, run::Resolved, Report), GcError> {
        let id = {
            let mut running = lock(&self.inner.running);
            if let Some(id) = *running {
                return Err(GcError::AlreadyRunning(id));
            }
            let id = self.inner.next_id.fetch_add(1, Ordering::SeqCst);
            *running = Some(id);
            id
        };
        let guard = RunningGuard {
            inner: self.inner.clone(),
        };
        let resolved = self.resolve(opts);
        let trigger = if opts.trigger.is_empty() {
            "api"
        } else {
            &opts.trigger
        };
        let report = run::new_report(id, &resolved, trigger, self.inner.store.now_ms());
        self.inner.progress.send_replace(Some(Progress {
            run_id: id,
            dry_run: resolved.dry_run,
            phase: Phase::Queued,
            done: 0,
            total: 0,
            report: report.clone(),
        }));
        Ok((guard, resolved, report))
    }

    /// Records the run's report, with `audit` (the run's start) in the same batch.
    async fn save(
        &self,
        report: &Report,
        audit: Option<stowage_index::AuditEntry>,
    ) -> Result<(), GcError> {
        let bytes = serde_json::to_vec(report).map_err(|e| {
            GcError::Index(stowage_index::IndexError::Corrupt(format!(
                "encoding the report of gc run {}: {e}",
                report.run_id
            )))
        })?;
        self.inner
            .store
            .record_run(report.run_id, bytes, audit)
            .await?;
        Ok(())
    }

    async fn execute(
        &self,
        guard: RunningGuard,
        opts: run::Resolved,
        mut report: Report,
        by: Actor,
    ) -> Report {
        let start = self
            .inner
            .store
            .audit_entry(&by, stowage_index::AuditAction::GcRun)
            .target(report.run_id.to_string())
            .detail(format!(
                "{}trigger {}, grace {} ms, quarantine {} ms",
                if opts.dry_run { "dry run, " } else { "" },
                report.trigger,
                report.grace_ms,
                report.quarantine_ms
            ));
        if let Err(e) = self.save(&report, Some(start)).await {
            tracing::error!(run_id = report.run_id, error = %e, "recording gc run start");
        }
        tracing::info!(run_id = report.run_id, dry_run = opts.dry_run, grace = ?opts.grace, "gc run started");
        let sink = ProgressSink {
            inner: self.inner.clone(),
            dry_run: opts.dry_run,
        };
        let result = run::execute(&self.inner.store, &opts, &mut report, &sink).await;
        report.finished_ms = self.inner.store.now_ms();
        match result {
            Ok(()) => report.status = RunStatus::Completed,
            Err(e) => {
                tracing::error!(run_id = report.run_id, error = %e, "gc run failed");
                report.status = RunStatus::Failed;
                report.error = Some(e.to_string());
            }
        }
        if let Err(e) = self.save(&report, None).await {
            tracing::error!(run_id = report.run_id, error = %e, "recording gc run report");
        }
        {
            let mut m = lock(&self.inner.metrics);
            match report.status {
                RunStatus::Completed => m.runs_completed += 1,
                _ => m.runs_failed += 1,
            }
            if !report.dry_run {
                m.totals.add(&report.totals);
            }
            m.last = Some(report.clone());
        }
        let t = &report.totals;
        tracing::info!(
            run_id = report.run_id,
            status = ?report.status,
            manifests_swept = t.manifests_swept,
            blobs_swept = t.blobs_swept,
            blobs_quarantined = t.blobs_quarantined,
            bytes_quarantined = t.bytes_quarantined,
            blobs_purged = t.blobs_purged,
            bytes_purged = t.bytes_purged,
            uploads_expired = t.uploads_expired,
            kept_on_recheck = t.kept_on_recheck,
            "gc run finished"
        );
        drop(guard);
        self.inner.progress.send_replace(Some(Progress {
            run_id: report.run_id,
            dry_run: report.dry_run,
            phase: Phase::Done,
            done: 0,
            total: 0,
            report: report.clone(),
        }));
        report
    }

    /// Starts a run in the background (a named task) and returns its id at once. Refused while
    /// another run is in progress.
    pub fn start(&self, opts: RunOptions) -> Result<u64, GcError> {
        let (guard, resolved, report) = self.begin(&opts)?;
        let id = report.run_id;
        let by = opts.actor.unwrap_or_else(|| Actor::system("gc"));
        let this = self.clone();
        let span = tracing::info_span!("gc_run", run_id = id);
        stowage_store::task::spawn_named(
            "gc-run",
            tracing::Instrument::instrument(
                async move {
                    this.execute(guard, resolved, report, by).await;
                },
                span,
            ),
        );
        Ok(id)
    }

    /// Runs to the end and returns the report (tests, the schedule).
    pub async fn run(&self, opts: RunOptions) -> Result<Report, GcError> {
        let (guard, resolved, report) = self.begin(&opts)?;
        let by = opts.actor.unwrap_or_else(|| Actor::system("gc"));
        Ok(self.execute(guard, resolved, report, by).await)
    }

    /// Progress of the current or last run. The receiver sees every later update; a run is over
    /// when its phase is [`Phase::Done`].
    pub fn progress(&self) -> watch::Receiver<Option<Progress>> {
        self.inner.progress.subscribe()
    }

    /// Id of the run in progress, if any.
    pub fn running(&self) -> Option<u64> {
        *lock(&self.inner.running)
    }

    /// Past runs, newest first, at most `limit`.
    pub fn history(&self, limit: usize) -> Result<Vec<Report>, GcError> {
        self.inner
            .store
            .index()
            .gc_runs(limit)?
            .iter()
            .map(|(id, bytes)| decode_report(*id, bytes))
            .collect()
    }

    /// One past run's report.
    pub fn report(&self, run_id: u64) -> Result<Report, GcError> {
        match self.inner.store.index().gc_run(run_id)? {
            Some(bytes) => decode_report(run_id, &bytes),
            None => Err(GcError::UnknownRun(run_id)),
        }
    }

    /// Brings a quarantined blob back: served again and linked into the repositories that held
    /// it, with a fresh grace period.
    pub async fn restore(&self, actor: &Actor, digest: &Digest) -> Result<Restored, GcError> {
        use stowage_store::StoreError;
        match self.inner.store.restore_blob(actor, digest).await {
            Ok((size, repos)) => {
                tracing::info!(%digest, size, repos = repos.len(), "restored quarantined blob");
                Ok(Restored {
                    digest: digest.clone(),
                    size,
                    repos: repos.into_iter().map(|r| r.to_string()).collect(),
                })
            }
            Err(StoreError::BlobUnknown(_)) => Err(GcError::NotQuarantined(format!(
                "blob {digest} is not quarantined: it was never stored here, or was purged"
            ))),
            Err(StoreError::Conflict(msg)) => Err(GcError::NotQuarantined(msg)),
            Err(e) => Err(e.into()),
        }
    }

    /// Runs the collector every `interval` (a named background task) until `stop` turns true.
    pub fn spawn_schedule(
        &self,
        interval: Duration,
        mut stop: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        stowage_store::task::spawn_named("gc-schedule", async move {
            let mut ticker =
                tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stop.wait_for(|v| *v) => return,
                }
                let opts = RunOptions {
                    trigger: "schedule".into(),
                    ..RunOptions::default()
                };
                match this.run(opts).await {
                    Ok(_) => {}
                    Err(GcError::AlreadyRunning(id)) => {
                        tracing::info!(running = id, "scheduled gc skipped: a run is in progress")
                    }
                    Err(e) => tracing::error!(error = %e, "scheduled gc could not start"),
                }
            }
        })
    }

    /// Lifetime figures of this process for metrics: completed runs and the sums of their
    /// totals (dry runs excluded), plus the last run's report.
    pub fn metrics(&self) -> Metrics {
        lock(&self.inner.metrics).clone()
    }
}

/// Collector figures for the metrics endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Runs finished since start, by status (completed, failed), dry runs included.
    pub runs_completed: u64,
    /// Runs that failed.
    pub runs_failed: u64,
    /// Sum of real runs' totals.
    pub totals: Counts,
    /// The last finished run.
    pub last: Option<Report>,
}

#[cfg(test)]
mod tests;
