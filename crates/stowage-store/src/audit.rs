//! The writer of audit entries that record no change: logins, issued tokens, refused requests,
//! pulls (when pull auditing is on). Entries that record a change never come here: they go in
//! the change's own batch.
//!
//! Entries are queued (bounded) and a named task commits whatever is queued as one index
//! batch, so a burst of refused requests costs one synced write per group rather than one per
//! request. When the queue stays full for a second (a flood), an entry is dropped and counted
//! in [`AuditStats::dropped`] rather than letting the flood stall every request behind it;
//! entries that record changes are never dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use stowage_index::{AuditEntry, Batch};
use tokio::sync::{mpsc, oneshot};

use crate::{Inner, Store};

/// Entries waiting to be written.
const QUEUE: usize = 8192;
/// Most entries written in one batch.
const GROUP: usize = 1024;
/// How long a writer waits for room in a full queue before dropping its entry.
const FULL_WAIT: Duration = Duration::from_secs(1);

/// Counters of the audit writer.
#[derive(Debug, Default)]
pub struct AuditStats {
    /// Entries committed by the writer.
    pub written: AtomicU64,
    /// Entries dropped because the queue stayed full.
    pub dropped: AtomicU64,
    /// Commits that failed (their entries are lost; logged).
    pub failed: AtomicU64,
}

/// What the queue carries.
#[derive(Debug)]
pub(crate) enum Msg {
    Entry(AuditEntry),
    /// Answered once everything queued before it is committed.
    Flush(oneshot::Sender<()>),
}

/// The queue's sending side, kept in the store.
#[derive(Debug)]
pub(crate) struct Writer {
    tx: mpsc::Sender<Msg>,
    stats: Arc<AuditStats>,
}

impl Writer {
    pub(crate) fn new() -> (Writer, mpsc::Receiver<Msg>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (
            Writer {
                tx,
                stats: Arc::default(),
            },
            rx,
        )
    }

    /// Starts the task that commits queued entries. It holds the store only weakly, so it
    /// ends once the store is gone (the queue's sender lives in the store).
    pub(crate) fn start(store: Weak<Inner>, mut rx: mpsc::Receiver<Msg>) {
        crate::task::spawn_named("audit_writer", async move {
            while let Some(first) = rx.recv().await {
                let mut batch = Batch::new();
                let mut waiters = Vec::new();
                let mut next = Some(first);
                while let Some(msg) = next.take() {
                    match msg {
                        Msg::Entry(e) => batch.audit(e),
                        Msg::Flush(w) => waiters.push(w),
                    }
                    if batch.audit_len() < GROUP {
                        next = rx.try_recv().ok();
                    }
                }
                let n = batch.audit_len() as u64;
                if n > 0 {
                    let Some(inner) = store.upgrade() else { break };
                    let store = Store { inner };
                    let stats = store.inner.auditor.stats.clone();
                    match store.commit_quiet(batch).await {
                        Ok(_) => {
                            stats.written.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(e) => {
                            stats.failed.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(error = %e, entries = n, "writing audit entries failed");
                        }
                    }
                }
                for w in waiters {
                    let _ = w.send(());
                }
            }
        });
    }
}

/// Records audit entries that describe no change (see the module docs). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Auditor(pub(crate) Store);

impl Auditor {
    /// Queues `entry`. Waits up to a second for room when the queue is full, then drops it
    /// (counted, and logged without the entry's details).
    pub async fn record(&self, entry: AuditEntry) {
        let w = &self.0.inner.auditor;
        match w.tx.send_timeout(Msg::Entry(entry), FULL_WAIT).await {
            Ok(()) => {}
            Err(_) => {
                let dropped = w.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    tracing::warn!(
                        dropped,
                        "audit queue full: entries without a change dropped"
                    );
                }
            }
        }
    }

    /// The writer's counters.
    pub fn stats(&self) -> &AuditStats {
        &self.0.inner.auditor.stats
    }

    /// Waits until every entry queued before this call is committed (tests, shutdown).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.0.inner.auditor.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}
