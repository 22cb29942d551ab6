//! Background work on the audit log: retention (old entries removed, the chain's anchor moved
//! past them) and the export of every committed entry as one JSON line to a file a SIEM can
//! follow.

use std::io::{BufRead as _, Seek as _, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use stowage_index::{AuditFilter, AuditRecord};
use stowage_store::Store;
use tokio::sync::watch;

/// How often retention looks for old entries.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);
/// Most entries removed in one batch.
const PRUNE_BATCH: usize = 10_000;
/// How often the export looks for new entries.
const EXPORT_EVERY: Duration = Duration::from_secs(1);

/// Removes entries older than `retention` now and then every hour, until `stop`.
pub fn spawn_retention(
    store: Store,
    retention: Duration,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    stowage_store::task::spawn_named("audit_retention", async move {
        loop {
            match prune(&store, retention).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "audit retention removed old entries"),
                Err(e) => tracing::error!(error = %e, "audit retention failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(RETENTION_EVERY) => {}
                _ = stop.wait_for(|v| *v) => return,
            }
        }
    })
}

/// One retention pass: every entry older than `retention` goes. Returns how many.
pub async fn prune(store: &Store, retention: Duration) -> Result<u64, String> {
    let mut total = 0;
    loop {
        let now = store.now_ms();
        let before = now.saturating_sub(u64::try_from(retention.as_millis()).unwrap_or(u64::MAX));
        let s = store.clone();
        let pruned = tokio::task::spawn_blocking(move || -> Result<u64, String> {
            let idx = s.index();
            match idx
                .audit_prune_batch(before, PRUNE_BATCH, "system:retention", now)
                .map_err(|e| format!("reading old audit entries: {e}"))?
            {
                Some((batch, n)) => {
                    idx.commit(batch)
                        .map_err(|e| format!("removing old audit entries: {e}"))?;
                    Ok(n)
                }
                None => Ok(0),
            }
        })
        .await
        .map_err(|e| format!("audit retention task: {e}"))??;
        total += pruned;
        if pruned < PRUNE_BATCH as u64 {
            return Ok(total);
        }
    }
}

/// One entry as an export line (the same fields `stowage audit --json` prints).
pub fn export_line(r: &AuditRecord) -> String {
    let e = &r.entry;
    let mut v = serde_json::json!({
        "seq": r.seq,
        "time": crate::gc_cli::timestamp(e.ts_ms),
        "ts_ms": e.ts_ms,
        "actor": e.actor,
        "action": e.action.as_str(),
        "outcome": e.outcome.as_str(),
        "prev_hash": hex::encode(r.prev),
        "hash": hex::encode(r.hash),
    });
    for (k, val) in [
        ("addr", &e.addr),
        ("repository", &e.repo),
        ("target", &e.target),
        ("detail", &e.detail),
    ] {
        if let Some(val) = val {
            v[k] = serde_json::Value::String(val.clone());
        }
    }
    v.to_string()
}

/// The last sequence number already in the export file (its last line's `seq`).
fn exported_up_to(path: &PathBuf) -> Result<u64, String> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(format!("opening {}: {e}", path.display())),
    };
    let mut last = 0;
    for line in std::io::BufReader::new(f).lines() {
        let line = line.map_err(|e| format!("reading {}: {e}", path.display()))?;
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
            if let Some(seq) = v["seq"].as_u64() {
                last = last.max(seq);
            }
        }
    }
    Ok(last)
}

/// Appends every committed entry to `path` as it appears, resuming after the last entry the
/// file holds (so a restart neither repeats nor skips), until `stop`.
pub fn spawn_export(
    store: Store,
    path: PathBuf,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    stowage_store::task::spawn_named("audit_export", async move {
        let mut after = match exported_up_to(&path) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "audit export cannot start");
                return;
            }
        };
        loop {
            match export_once(&store, &path, after).await {
                Ok(n) => after = n,
                Err(e) => {
                    tracing::error!(error = %e, file = %path.display(), "audit export failed")
                }
            }
            let stopping = tokio::select! {
                _ = tokio::time::sleep(EXPORT_EVERY) => false,
                _ = stop.wait_for(|v| *v) => true,
            };
            if stopping {
                // What was committed up to the stop goes out too.
                let _ = export_once(&store, &path, after).await;
                return;
            }
        }
    })
}

/// Appends the entries after `after`; returns the last sequence written.
pub async fn export_once(store: &Store, path: &std::path::Path, after: u64) -> Result<u64, String> {
    let s = store.clone();
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut after = after;
        loop {
            let recs = s
                .index()
                .audit_query(&AuditFilter {
                    after_seq: after,
                    limit: 1000,
                    ..AuditFilter::default()
                })
                .map_err(|e| format!("reading the audit log: {e}"))?;
            let Some(last) = recs.last().map(|r| r.seq) else {
                return Ok(after);
            };
            let mut text = String::new();
            for r in &recs {
                text.push_str(&export_line(r));
                text.push('\n');
            }
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| format!("opening {}: {e}", path.display()))?;
            f.seek(std::io::SeekFrom::End(0))
                .and_then(|_| f.write_all(text.as_bytes()))
                .and_then(|()| f.sync_data())
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
            after = last;
            if recs.len() < 1000 {
                return Ok(after);
            }
        }
    })
    .await
    .map_err(|e| format!("audit export task: {e}"))?
}
