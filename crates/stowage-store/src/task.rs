//! Named, traced background tasks. Every long-lived task in Stowage is started here so that
//! it has a name in logs and its start, end and failure are recorded.

use std::future::Future;

use tracing::Instrument;

/// Spawns `fut` on the current runtime inside a span `task{name=...}` and logs when it ends.
pub fn spawn_named<F, T>(name: &'static str, fut: F) -> tokio::task::JoinHandle<T>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let span = tracing::info_span!("task", name);
    tokio::spawn(
        async move {
            tracing::debug!("task started");
            let out = fut.await;
            tracing::debug!("task ended");
            out
        }
        .instrument(span),
    )
}
