//! Upload sessions idle longer than `[gc] upload_expiry` are removed with their staged bytes
//! by a task of their own, whether or not garbage collection is scheduled: abandoned uploads
//! must not keep their room (sessions, staged bytes) until an operator runs a collection.

use std::time::Duration;

use stowage_core::Actor;
use stowage_store::GcStore;
use tokio::sync::watch;

/// How often idle sessions are looked for: a quarter of the expiry, between 1 s and 15 min.
fn period(expiry: Duration) -> Duration {
    (expiry / 4).clamp(Duration::from_secs(1), Duration::from_secs(15 * 60))
}

/// Expires idle upload sessions every [`period`] of `expiry`, until `stop`.
pub fn spawn(
    store: GcStore,
    expiry: Duration,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    stowage_store::task::spawn_named("upload_expiry", async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period(expiry)) => {}
                _ = stop.wait_for(|v| *v) => return,
            }
            match expire(&store, expiry).await {
                Ok((0, _)) => {}
                Ok((n, bytes)) => {
                    tracing::info!(sessions = n, bytes, "expired idle upload sessions")
                }
                Err(e) => tracing::error!(error = %e, "expiring idle upload sessions failed"),
            }
        }
    })
}

/// One pass: every session idle for longer than `expiry` goes (audited as
/// `upload.expire` by `system:upload-expiry`). Returns how many and their bytes.
pub async fn expire(store: &GcStore, expiry: Duration) -> Result<(u64, u64), String> {
    let expiry_ms = u64::try_from(expiry.as_millis()).unwrap_or(u64::MAX);
    let cutoff = store.now_ms().saturating_sub(expiry_ms);
    let idle = store
        .idle_uploads(cutoff)
        .map_err(|e| format!("listing idle upload sessions: {e}"))?;
    let actor = Actor::system("upload-expiry");
    let (mut n, mut bytes) = (0, 0);
    for (id, _) in idle {
        match store.expire_upload(&actor, &id, cutoff).await {
            Ok(Some(b)) => {
                n += 1;
                bytes += b;
            }
            // Used again meanwhile, or gone.
            Ok(None) => {}
            Err(e) => return Err(format!("expiring upload session {id}: {e}")),
        }
    }
    Ok((n, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_period_is_a_quarter_of_the_expiry_within_bounds() {
        assert_eq!(period(Duration::from_secs(3600)), Duration::from_secs(900));
        assert_eq!(
            period(Duration::from_secs(24 * 3600)),
            Duration::from_secs(900)
        );
        assert_eq!(period(Duration::from_secs(8)), Duration::from_secs(2));
        assert_eq!(period(Duration::from_millis(10)), Duration::from_secs(1));
    }
}
