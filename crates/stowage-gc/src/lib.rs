//! Online mark-and-sweep garbage collection.
//!
//! A run marks from the roots on one consistent index snapshot, decides the candidates
//! (unreachable and older than the grace period), then removes each candidate through
//! `stowage-store`, which re-checks it under the same per-digest lock a push takes. Pushes go on
//! during the whole run. See `run.rs` for the phases and `mark.rs` for the roots.

mod report;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use stowage_core::Digest;
use stowage_store::Store;
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
    /// Collect manifests that no tag, index or live subject reaches (default true). When false,
    /// every manifest is a root and only unreferenced blobs are collected.
    pub delete_untagged: bool,
}

impl Default for GcConfig {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(3600),
            quarantine: Duration::from_secs(24 * 3600),
            upload_expiry: Duration::from_secs(24 * 3600),
            delete_untagged: true,
        }
    }
}

/// Options of one run; `None` fields take the configured value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
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
    store: Store,
    config: GcConfig,
    /// Latest progress of the current (or last) run; `None` before the first.
    progress: watch::Sender<Option<Progress>>,
    /// Id of the run in progress.
    running: Mutex<Option<u64>>,
}

impl Collector {
    /// A collector over `store`.
    pub fn new(store: Store, config: GcConfig) -> Collector {
        let (progress, _) = watch::channel(None);
        Collector {
            inner: Arc::new(Inner {
                store,
                config,
                progress,
                running: Mutex::new(None),
            }),
        }
    }

    /// The configured settings.
    pub fn config(&self) -> &GcConfig {
        &self.inner.config
    }

    /// Starts a run in the background (a named task) and returns its id at once. Refused while
    /// another run is in progress.
    pub fn start(&self, opts: RunOptions) -> Result<u64, GcError> {
        let _ = opts;
        Err(GcError::AlreadyRunning(0))
    }

    /// Runs to the end and returns the report (tests, the schedule).
    pub async fn run(&self, opts: RunOptions) -> Result<Report, GcError> {
        let _ = opts;
        Err(GcError::AlreadyRunning(0))
    }

    /// Progress of the current or last run. The receiver sees every later update; a run is over
    /// when its phase is [`Phase::Done`].
    pub fn progress(&self) -> watch::Receiver<Option<Progress>> {
        self.inner.progress.subscribe()
    }

    /// Id of the run in progress, if any.
    pub fn running(&self) -> Option<u64> {
        *self
            .inner
            .running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Past runs, newest first, at most `limit`.
    pub fn history(&self, limit: usize) -> Result<Vec<Report>, GcError> {
        let _ = limit;
        Ok(Vec::new())
    }

    /// One past run's report.
    pub fn report(&self, run_id: u64) -> Result<Report, GcError> {
        Err(GcError::UnknownRun(run_id))
    }

    /// Brings a quarantined blob back: served again and linked into the repositories that held
    /// it, with a fresh grace period.
    pub async fn restore(&self, digest: &Digest) -> Result<Restored, GcError> {
        Err(GcError::NotQuarantined(format!("{digest}")))
    }

    /// Runs the collector every `interval` (a named background task) until `stop` turns true.
    pub fn spawn_schedule(
        &self,
        interval: Duration,
        stop: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let _ = (interval, stop);
        tokio::spawn(async {})
    }

    /// Lifetime figures of this process for metrics: completed runs and the sums of their
    /// totals (dry runs excluded), plus the last run's report.
    pub fn metrics(&self) -> Metrics {
        Metrics::default()
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
