//! Keeps the index from growing for ever: the change feed is trimmed below what every known
//! reader still needs, and tag and manifest tombstones are expired past a horizon, by a task
//! of its own (whether or not garbage collection is scheduled).
//!
//! Trim point: the lowest of (a) every push peer's confirmed cursor over this site's feed,
//! (b) the last sequence minus `[feed] keep_entries`, and (c) the last entry older than
//! `[feed] keep_for`. Readers this site does not track (peers that pull from it) are covered
//! by (b) and (c); one that falls behind them finds its cursor below the trimmed point and
//! compares whole states instead (the replicator's full resync), so nothing is skipped.
//!
//! Tombstones go when older than `[feed] tombstone_horizon`, or than the oldest push peer's
//! lag if that is longer: a peer that has not yet seen a delete must still meet its tombstone.

use std::time::Duration;

use stowage_core::Actor;
use stowage_gc::{Phase, Progress};
use stowage_store::{GcStore, TombstoneExpiry};
use tokio::sync::watch;

use crate::config::feed::FeedConfig;

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// Sequence numbers trimmed now.
    pub trimmed: u64,
    /// The feed's trimmed point after the pass.
    pub trimmed_to: u64,
    /// Tombstones expired.
    pub tombstones: TombstoneExpiry,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One pass. `cursors` are the push peers' positions in this site's feed (`None`: no cursor
/// yet, which holds nothing back).
pub async fn run_once(
    store: &GcStore,
    cursors: &[(String, Option<u64>)],
    cfg: &FeedConfig,
) -> Result<Pass, String> {
    let idx = store.index();
    let now = store.now_ms();
    let actor = Actor::system("feed-trim");
    let last = idx
        .last_seq()
        .map_err(|e| format!("reading the last feed sequence: {e}"))?;
    let slowest = cursors
        .iter()
        .filter_map(|(name, c)| c.map(|c| (name.as_str(), c)))
        .min_by_key(|(_, c)| *c);
    let by_count = last.saturating_sub(cfg.keep_entries);
    let upto = slowest.map_or(by_count, |(_, c)| c.min(by_count));
    let through = idx
        .feed_older_than(now.saturating_sub(ms(cfg.keep_for)), upto)
        .map_err(|e| format!("finding feed entries older than {:?}: {e}", cfg.keep_for))?;
    let why = format!(
        "last {last}, keep {} entries and {}, slowest push peer {}",
        cfg.keep_entries,
        humantime::format_duration(cfg.keep_for),
        slowest.map_or("none".to_string(), |(n, c)| format!("{n} at {c}")),
    );
    let trimmed = store
        .trim_feed(&actor, through, why)
        .await
        .map_err(|e| format!("trimming the feed through {through}: {e}"))?;
    // The slowest peer's lag: the age of the first entry it has not confirmed.
    let lag_ms = match slowest {
        Some((_, c)) => idx
            .feed_time(c.saturating_add(1))
            .map_err(|e| format!("reading feed entry {}: {e}", c.saturating_add(1)))?
            .map_or(0, |ts| now.saturating_sub(ts)),
        None => 0,
    };
    let horizon_ms = ms(cfg.tombstone_horizon).max(lag_ms);
    let tombstones = store
        .expire_tombstones(&actor, now.saturating_sub(horizon_ms))
        .await
        .map_err(|e| format!("expiring tombstones: {e}"))?;
    let trimmed_to = idx
        .feed_trimmed_to()
        .map_err(|e| format!("reading the trimmed point: {e}"))?;
    Ok(Pass {
        trimmed,
        trimmed_to,
        tombstones,
    })
}

/// Returns once a garbage-collection run (not a dry run) has finished; never when the
/// collector is gone.
async fn gc_finished(progress: &mut watch::Receiver<Option<Progress>>) {
    loop {
        if progress.changed().await.is_err() {
            return std::future::pending().await;
        }
        let done = progress
            .borrow_and_update()
            .as_ref()
            .is_some_and(|p| p.phase == Phase::Done && !p.dry_run);
        if done {
            return;
        }
    }
}

/// Runs [`run_once`] every `interval`, and after every garbage-collection run (which leaves
/// tombstones and feed entries behind), until `stop`; `cursors` reads the push peers'
/// positions afresh for each pass.
pub fn spawn(
    store: GcStore,
    cursors: impl Fn() -> Result<Vec<(String, Option<u64>)>, String> + Send + 'static,
    cfg: FeedConfig,
    interval: Duration,
    mut gc_progress: watch::Receiver<Option<Progress>>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    stowage_store::task::spawn_named("feed_trim", async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = gc_finished(&mut gc_progress) => {}
                _ = stop.wait_for(|v| *v) => return,
            }
            let pass = match cursors() {
                Ok(c) => run_once(&store, &c, &cfg).await,
                Err(e) => Err(e),
            };
            match pass {
                Ok(p) if p.trimmed == 0 && p.tombstones == TombstoneExpiry::default() => {}
                Ok(p) => tracing::info!(
                    trimmed = p.trimmed,
                    trimmed_to = p.trimmed_to,
                    tag_tombstones = p.tombstones.tags,
                    manifest_tombstones = p.tombstones.manifests,
                    "feed trimmed and tombstones expired"
                ),
                Err(e) => tracing::error!(error = %e, "feed trim failed"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use bytes::Bytes;
    use stowage_core::{Clock, Digest, ManualClock, RepoName};
    use stowage_store::{Store, StoreConfig, TagState, TagVersion};

    use super::*;

    fn app() -> RepoName {
        RepoName::parse("app").unwrap()
    }

    async fn push(store: &Store, n: u8) {
        let data = vec![n; 10];
        let d = Digest::sha256(&data);
        let body = futures::stream::iter(vec![Ok::<_, std::io::Error>(Bytes::from(data))]);
        store
            .client()
            .put_blob(&Actor::user("t"), &app(), &d, body)
            .await
            .unwrap();
    }

    fn cfg(keep_entries: u64, keep_for: Duration) -> FeedConfig {
        FeedConfig {
            keep_entries,
            keep_for,
            tombstone_horizon: Duration::from_secs(10),
            trim_interval: None,
        }
    }

    async fn env(dir: &std::path::Path, clock: &ManualClock) -> Store {
        let store = Store::open_with_clock(StoreConfig::new(dir), Arc::new(clock.clone()))
            .await
            .unwrap();
        for n in 0..10 {
            push(&store, n).await;
            clock.advance(1000);
        }
        store
    }

    #[tokio::test]
    async fn the_slowest_push_peer_and_both_floors_hold_the_trim_back() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(1_000_000);
        let store = env(dir.path(), &clock).await;
        let feed = store.index().feed(0, 1000).unwrap();
        let last = store.index().last_seq().unwrap();
        let gc = store.gc_ops();
        // A push peer at 3 holds every entry after it; a peer without a cursor holds nothing.
        let cursors = [("cloud".to_string(), Some(3)), ("new".to_string(), None)];
        let p = run_once(&gc, &cursors, &cfg(0, Duration::ZERO))
            .await
            .unwrap();
        assert_eq!((p.trimmed, p.trimmed_to), (3, 3));
        // keep_for keeps every entry younger than it.
        let cutoff = clock.now_millis() - 3500;
        let young = feed
            .iter()
            .filter(|(_, e)| e.ts_ms < cutoff)
            .map(|(s, _)| *s)
            .max()
            .unwrap();
        assert!(young > 3 && young < last);
        let p = run_once(&gc, &[], &cfg(0, Duration::from_millis(3500)))
            .await
            .unwrap();
        assert_eq!(p.trimmed_to, young);
        // keep_entries keeps the newest entries.
        let p = run_once(&gc, &[], &cfg(1, Duration::ZERO)).await.unwrap();
        assert_eq!(p.trimmed_to, last - 1);
        assert_eq!(store.index().feed(0, 1000).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_finished_collection_starts_a_pass() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(1_000_000);
        let store = env(dir.path(), &clock).await;
        let gc = stowage_gc::Collector::new(store.gc_ops(), stowage_gc::GcConfig::default());
        let (stop_tx, stop) = watch::channel(false);
        // The schedule alone would not run for an hour.
        let task = spawn(
            store.gc_ops(),
            || Ok(Vec::new()),
            cfg(0, Duration::ZERO),
            Duration::from_secs(3600),
            gc.progress(),
            stop,
        );
        let mut feed = store.feed_watch();
        let last = *feed.borrow_and_update();
        gc.run(stowage_gc::RunOptions::default()).await.unwrap();
        // The pass is over when the feed is trimmed through its end (the run added no entry).
        let trimmed = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let t = store.index().feed_trimmed_to().unwrap();
                if t >= last {
                    return t;
                }
                // Nothing signals the end of a pass: poll, bounded by the timeout.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("no trim pass after the collection");
        assert_eq!(trimmed, store.index().last_seq().unwrap());
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_lagging_push_peer_extends_the_tombstone_horizon() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(1_000_000);
        let store = env(dir.path(), &clock).await;
        let deleted = TagState::Deleted {
            version: TagVersion {
                ms: clock.now_millis(),
                origin: "elsewhere".into(),
            },
        };
        assert!(store
            .replica()
            .apply_tag(&Actor::system("test"), &app(), "t", &deleted)
            .await
            .unwrap());
        // The tombstone is 60 s old, past the 10 s horizon, but a push peer has not confirmed
        // anything since the first entry (written more than 60 s ago): it stays.
        clock.advance(60_000);
        let keep_all = cfg(u64::MAX, Duration::ZERO);
        let lagging = [("cloud".to_string(), Some(1))];
        let p = run_once(&store.gc_ops(), &lagging, &keep_all)
            .await
            .unwrap();
        assert_eq!(p.tombstones, TombstoneExpiry::default());
        assert!(store.tag_state(&app(), "t").unwrap().is_some());
        // Once the peer has caught up, the horizon alone decides.
        let last = store.index().last_seq().unwrap();
        let caught_up = [("cloud".to_string(), Some(last))];
        let p = run_once(&store.gc_ops(), &caught_up, &keep_all)
            .await
            .unwrap();
        assert_eq!(p.tombstones.tags, 1);
        assert_eq!(store.tag_state(&app(), "t").unwrap(), None);
    }
}
