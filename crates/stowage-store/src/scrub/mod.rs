//! Integrity scrub: a background walk over every blob that re-reads its bytes and checks them
//! against the CRC-32C recorded at write (or the digest, for older records), so damage on
//! disk or in the object store is found before a client or a peer asks for the blob.
//!
//! The walk reads with no lock held, paced to `[scrub] bytes_per_second` so clients keep the
//! disk. A mismatch is handed to the store's corrupt-blob path
//! ([`Store::quarantine_corrupt`](crate::Store)), which checks the bytes again under the
//! digest's lock (garbage collection or a repair may have replaced them meanwhile) and only
//! then quarantines the blob: it stops being served, with an audit entry in the same batch.
//! A [`Repairer`] (replication, in the daemon) then fetches a good copy from a peer through
//! the same path an operator's `repl retry` uses; blobs quarantined earlier are offered to it
//! again on every run.
//!
//! The walk is in digest order; after every page its position and the report so far are
//! written to the index, so a restart resumes the run rather than starting over. One run at a
//! time: [`Scrubber::start`] refuses a second.

mod pace;
mod report;
mod run;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use stowage_core::{Actor, Digest, RepoName};
use tokio::sync::watch;

pub use report::{CorruptBlob, Fate, ScrubReport, ScrubState, ScrubTrigger, MAX_LISTED};

use crate::{Result, Store};

/// Who the scrub's quarantines are audited as.
pub const SCRUB_ACTOR: &str = "scrub";

/// Scrub settings (`[scrub]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScrubConfig {
    /// Time from the end of one run to the start of the next; `None`: no schedule (runs only
    /// when an operator asks).
    pub interval: Option<Duration>,
    /// Read budget in bytes per second; 0: unthrottled.
    pub bytes_per_second: u64,
    /// Blobs per page of the walk (and between cursor writes).
    pub page: usize,
}

/// A week between runs, and 50 MiB/s: a full pass over 10 TiB takes about 2.5 days, a small
/// share of a disk's bandwidth.
impl Default for ScrubConfig {
    fn default() -> Self {
        Self {
            interval: Some(Duration::from_secs(7 * 24 * 3600)),
            bytes_per_second: 50 << 20,
            page: 256,
        }
    }
}

/// Fetches good bytes of a blob quarantined as corrupt from elsewhere (another site) and
/// makes it served again. Implemented by replication.
pub trait Repairer: Send + Sync + std::fmt::Debug {
    /// Repairs `digest`, which `repos` link. The result says which peer supplied it, or why
    /// none could.
    fn repair<'a>(&'a self, digest: &'a Digest, repos: &'a [RepoName]) -> BoxFuture<'a, Fate>;
}

/// Totals since start, for metrics.
#[derive(Debug, Default)]
pub struct ScrubCounters {
    /// Runs finished.
    pub runs: AtomicU64,
    /// Blobs checked.
    pub blobs: AtomicU64,
    /// Bytes checked.
    pub bytes: AtomicU64,
    /// Corrupt blobs found (newly quarantined).
    pub corrupt: AtomicU64,
    /// Blobs repaired from a peer.
    pub repaired: AtomicU64,
    /// Corrupt blobs left quarantined at the end of a repair attempt.
    pub unrepaired: AtomicU64,
}

impl ScrubCounters {
    /// A figure.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// How [`Scrubber::start`] went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Started {
    /// Run `run_id` started now (or resumed, when an interrupted run was left).
    Now(u64),
    /// Run `run_id` was already going.
    AlreadyRunning(u64),
}

/// The scrub of one site.
#[derive(Clone, Debug)]
pub struct Scrubber {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    cfg: ScrubConfig,
    repairer: Option<Arc<dyn Repairer>>,
    pace: pace::Pace,
    /// Held for the whole of a run.
    run_lock: Arc<tokio::sync::Mutex<()>>,
    /// The run in progress, as far as it got.
    current: Mutex<Option<ScrubReport>>,
    counters: ScrubCounters,
    /// Bumped when a run ends (followers wait on it).
    finished: watch::Sender<u64>,
}

impl Scrubber {
    /// A scrubber of `store`; `repairer` (none: corrupt blobs stay quarantined) fetches good
    /// copies.
    pub fn new(store: Store, cfg: ScrubConfig, repairer: Option<Arc<dyn Repairer>>) -> Self {
        let pace = pace::Pace::new(cfg.bytes_per_second);
        Self {
            inner: Arc::new(Inner {
                store,
                cfg,
                repairer,
                pace,
                run_lock: Arc::new(tokio::sync::Mutex::new(())),
                current: Mutex::new(None),
                counters: ScrubCounters::default(),
                finished: watch::channel(0).0,
            }),
        }
    }

    /// The settings.
    pub fn config(&self) -> &ScrubConfig {
        &self.inner.cfg
    }

    /// Totals since start.
    pub fn counters(&self) -> &ScrubCounters {
        &self.inner.counters
    }

    /// The run in progress, as far as it got.
    pub fn current(&self) -> Option<ScrubReport> {
        self.inner
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Finished runs, newest first, at most `limit`.
    pub fn reports(&self, limit: usize) -> Result<Vec<ScrubReport>> {
        let mut out: Vec<ScrubReport> = self
            .inner
            .store
            .index()
            .meta_scan(report::RUN_PREFIX)?
            .iter()
            .rev()
            .take(limit)
            .map(|(_, v)| report::decode("report", v))
            .collect::<Result<_>>()?;
        out.sort_by_key(|r| std::cmp::Reverse(r.run_id));
        Ok(out)
    }

    /// One finished run.
    pub fn report(&self, run_id: u64) -> Result<Option<ScrubReport>> {
        self.inner
            .store
            .index()
            .meta(&report::run_key(run_id))?
            .map(|v| report::decode("report", &v))
            .transpose()
    }

    /// Follows the id of the last run that ended.
    pub fn finished_watch(&self) -> watch::Receiver<u64> {
        self.inner.finished.subscribe()
    }

    /// Starts a run in the background as `actor` (or resumes an interrupted one) unless one is
    /// going; it stops early, resumable, when `stop` turns true.
    pub fn start(
        &self,
        actor: Actor,
        trigger: ScrubTrigger,
        stop: watch::Receiver<bool>,
    ) -> Result<Started> {
        let Ok(guard) = self.inner.run_lock.clone().try_lock_owned() else {
            let id = self.current().map(|r| r.run_id).unwrap_or_default();
            return Ok(Started::AlreadyRunning(id));
        };
        let cursor = self.prepare(trigger)?;
        let id = cursor.report.run_id;
        let this = self.clone();
        crate::task::spawn_named("scrub-run", async move {
            let _guard = guard;
            if let Err(e) = this.walk(cursor, &actor, stop).await {
                tracing::error!(error = %e, "scrub run failed");
            }
        });
        Ok(Started::Now(id))
    }

    /// Runs (or resumes) one run to its end here, as `actor`; `None` if one is already going.
    pub async fn run_now(
        &self,
        actor: &Actor,
        trigger: ScrubTrigger,
        stop: watch::Receiver<bool>,
    ) -> Result<Option<ScrubReport>> {
        let Ok(_guard) = self.inner.run_lock.clone().try_lock_owned() else {
            return Ok(None);
        };
        let cursor = self.prepare(trigger)?;
        self.walk(cursor, actor, stop).await.map(Some)
    }

    /// The run to go on with: the interrupted one stored in the index, or a new one.
    fn prepare(&self, trigger: ScrubTrigger) -> Result<report::Cursor> {
        let idx = self.inner.store.index();
        let cursor = match idx.meta(report::CURSOR_KEY)? {
            Some(v) => {
                let mut c: report::Cursor = report::decode("cursor", &v)?;
                c.report.resumed += 1;
                tracing::info!(run = c.report.run_id, after = ?c.after, "resuming an interrupted scrub run");
                c
            }
            None => {
                let last = idx
                    .meta_scan(report::RUN_PREFIX)?
                    .last()
                    .map(|(k, _)| {
                        k.strip_prefix(report::RUN_PREFIX)
                            .and_then(|b| <[u8; 8]>::try_from(b).ok())
                            .map(u64::from_be_bytes)
                            .unwrap_or_default()
                    })
                    .unwrap_or_default();
                report::Cursor {
                    report: ScrubReport::new(last + 1, trigger, self.inner.store.now_ms()),
                    after: None,
                }
            }
        };
        *self.inner.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(cursor.report.clone());
        Ok(cursor)
    }

    /// Starts the schedule: an interrupted run resumes at once, then a run starts `interval`
    /// after the last one ended. Does nothing without an interval. Ends when `stop` turns true.
    pub fn spawn_schedule(
        &self,
        stop: watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let interval = self.inner.cfg.interval?;
        let this = self.clone();
        Some(crate::task::spawn_named("scrub-schedule", async move {
            let mut stop_wait = stop.clone();
            loop {
                let wait = match this.due_in(interval).await {
                    Ok(w) => w,
                    Err(e) => {
                        tracing::error!(error = %e, "scrub schedule cannot read past runs");
                        interval
                    }
                };
                if !wait.is_zero() {
                    tokio::select! {
                        _ = tokio::time::sleep(wait.min(Duration::from_secs(3600))) => continue,
                        _ = stop_wait.wait_for(|v| *v) => return,
                    }
                }
                let actor = Actor::system(SCRUB_ACTOR);
                match this
                    .run_now(&actor, ScrubTrigger::Schedule, stop.clone())
                    .await
                {
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "scheduled scrub run failed"),
                }
                if *stop.borrow() {
                    return;
                }
                // A run an operator started is going: wait for it to end.
                let mut ended = this.finished_watch();
                ended.borrow_and_update();
                if this.current().is_some() {
                    tokio::select! {
                        _ = ended.changed() => {}
                        _ = stop_wait.wait_for(|v| *v) => return,
                    }
                }
            }
        }))
    }

    /// How long until the next scheduled run: none for an interrupted run; one interval after
    /// the last run ended, or after the schedule first started on this site (a site is not
    /// scrubbed the moment it is created or upgraded, and a restart does not postpone it).
    async fn due_in(&self, interval: Duration) -> Result<Duration> {
        let store = &self.inner.store;
        let idx = store.index();
        if idx.meta(report::CURSOR_KEY)?.is_some() {
            return Ok(Duration::ZERO);
        }
        let since = match self.reports(1)?.into_iter().next() {
            Some(last) => last.finished_ms,
            None => match idx.meta(report::EPOCH_KEY)? {
                Some(v) => report::decode("schedule start", &v)?,
                None => {
                    let now = store.now_ms();
                    let mut batch = stowage_index::Batch::new();
                    batch.put_meta(report::EPOCH_KEY, report::encode("schedule start", &now)?);
                    store.commit_quiet(batch).await?;
                    now
                }
            },
        };
        let due = since.saturating_add(u64::try_from(interval.as_millis()).unwrap_or(u64::MAX));
        Ok(Duration::from_millis(
            due.saturating_sub(self.inner.store.now_ms()),
        ))
    }
}
