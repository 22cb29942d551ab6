//! The replicator: one task per configured peer that follows a source feed from a durable
//! cursor and brings the target up to date, plus anti-entropy.
//!
//! A batch of feed entries is applied as a whole (see [`crate::flow`]). Everything is
//! idempotent, so a batch that fails half way is simply retried; the cursor moves past a batch
//! only once the target confirmed all of it, or once the entries it could not confirm because
//! a blob is corrupt at the source are durably parked (see [`crate::parked`]): one bad blob
//! does not hold up the rest of the feed.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stowage_core::Digest;
use stowage_index::repl_state::ReplCursor;
use stowage_index::Event;
use stowage_store::StoreError;
use tokio::sync::watch;

use crate::anti_entropy::SyncReport;
use crate::error::{ReplError, Result};
use crate::flow::Flow;
use crate::glob::Filters;
use crate::local::Local;
use crate::parked::{DeadLetters, ParkReason, Parked, ParkedId};
use crate::remote::Remote;
use crate::site::Site;
use crate::status::{PeerState, PeerStatus};

/// How long a site keeps blobs of a transfer in progress from garbage collection.
pub(crate) const TRANSFER_HOLD: Duration = Duration::from_secs(3600);
/// Feed entries handled per batch.
const BATCH: usize = 256;
/// How long a replicator waits on the source's feed for new entries before looking around
/// (stop signal, anti-entropy timer).
const FEED_WAIT: Duration = Duration::from_secs(1);
/// Attempts at one blob (each resumes from what the target holds) before the batch fails.
pub(crate) const BLOB_ATTEMPTS: usize = 5;
/// Deepest index nesting followed.
pub(crate) const MAX_DEPTH: usize = 8;

/// Which way content flows between this site and a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From this site to the peer.
    Push,
    /// From the peer to this site.
    Pull,
}

impl Direction {
    /// `push` or `pull`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Push => "push",
            Direction::Pull => "pull",
        }
    }
}

/// One configured peer.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// Name of the peer in this site's configuration (keys its cursor).
    pub name: String,
    /// The peer's `--admin-listen` address (`http://host:port`).
    pub endpoint: String,
    /// Which way content flows.
    pub direction: Direction,
    /// What is replicated.
    pub filters: Filters,
    /// Whether tag and manifest deletes travel.
    pub replicate_deletes: bool,
    /// Blobs in flight at once.
    pub concurrency: usize,
    /// Most blob bytes per second sent, if limited.
    pub bandwidth: Option<u64>,
    /// Anti-entropy period, if periodic.
    pub anti_entropy_interval: Option<Duration>,
    /// The identity the peer's certificate must carry (a DNS or URI SAN), for `https://`
    /// endpoints.
    pub identity: Option<String>,
    /// TLS towards the peer (set by the daemon for `https://` endpoints: this site's
    /// certificate as client certificate, the peers' CA, and `identity` checked instead of the
    /// host name).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The peer's site name (what changes pulled from it may have originated at, with
    /// `origins`); empty: `name`.
    pub site: String,
    /// Other sites whose changes it may relay to this one when pulled from.
    pub origins: Vec<String>,
    /// How far ahead of this site's clock a pulled tag version may be.
    pub max_clock_skew: Duration,
}

/// What a peer connecting to this site's replication listener was granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerRole {
    /// It pushes to this site: it may write (and read the state a pusher compares) within
    /// its filters.
    Receive,
    /// It pulls from this site: it may read the feed, blobs and manifests within its filters.
    Serve,
}

/// One grant to a peer that connects to this site (a `receive` or `serve` entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAccess {
    /// Its name in this site's configuration.
    pub name: String,
    /// Its site name (the origin of changes made there).
    pub site: String,
    /// The identity its client certificate must carry.
    pub identity: Option<String>,
    /// Other sites whose changes it may relay here.
    pub origins: Vec<String>,
    /// What it may do.
    pub role: PeerRole,
    /// Where.
    pub filters: Filters,
    /// Whether its deletes are applied (receive).
    pub replicate_deletes: bool,
}

impl PeerConfig {
    /// A peer with defaults: everything, deletes included, 4 blobs at once, no limit,
    /// anti-entropy every 10 minutes.
    pub fn new(name: &str, endpoint: &str, direction: Direction) -> Self {
        Self {
            name: name.to_string(),
            endpoint: endpoint.to_string(),
            direction,
            filters: Filters::default(),
            replicate_deletes: true,
            concurrency: 4,
            bandwidth: None,
            anti_entropy_interval: Some(Duration::from_secs(600)),
            identity: None,
            tls: None,
            site: String::new(),
            origins: Vec::new(),
            max_clock_skew: Duration::from_secs(300),
        }
    }
}

/// Token bucket for a peer's blob bytes.
#[derive(Debug)]
pub(crate) struct Limiter {
    rate: f64,
    state: tokio::sync::Mutex<(f64, Instant)>,
}

impl Limiter {
    fn new(bytes_per_sec: u64) -> Self {
        Self {
            rate: bytes_per_sec.max(1) as f64,
            state: tokio::sync::Mutex::new((bytes_per_sec as f64, Instant::now())),
        }
    }

    pub(crate) async fn take(&self, n: usize) {
        let mut s = self.state.lock().await;
        let now = Instant::now();
        // A burst of at most one second's worth.
        s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * self.rate).min(self.rate);
        s.1 = now;
        s.0 -= n as f64;
        if s.0 < 0.0 {
            // Holding the lock while waiting makes every sender of this peer wait its turn.
            tokio::time::sleep(Duration::from_secs_f64(-s.0 / self.rate)).await;
        }
    }
}

/// One configured peer and its figures.
#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) cfg: PeerConfig,
    pub(crate) remote: Remote,
    status: Mutex<PeerStatus>,
    pub(crate) limiter: Option<Limiter>,
    /// One anti-entropy run at a time.
    sync_lock: tokio::sync::Mutex<()>,
}

impl Peer {
    pub(crate) fn update(&self, f: impl FnOnce(&mut PeerStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn failed(&self, e: &ReplError, retry: bool) {
        tracing::warn!(peer = %self.cfg.name, error = %e, "replication step failed");
        self.update(|s| {
            s.errors += 1;
            if retry {
                s.retries += 1;
            }
            s.last_error = e.to_string();
            s.state = PeerState::Error;
        });
    }
}

/// Replication of this site with its configured peers. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Replicator {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) local: Local,
    pub(crate) site: String,
    pub(crate) peers: Vec<Arc<Peer>>,
    pub(crate) parked: DeadLetters,
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Replicator {
    /// Replication of `local` (whose store's site name is this site's) with `peers`.
    pub fn new(local: Local, peers: Vec<PeerConfig>) -> Result<Self> {
        let site = local.store().site().unwrap_or_default().to_string();
        if site.is_empty() && !peers.is_empty() {
            return Err(ReplError::Invalid(
                "replication needs a site name ([site] name or --site)".into(),
            ));
        }
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for cfg in peers {
            if !seen.insert(cfg.name.clone()) {
                return Err(ReplError::Invalid(format!(
                    "peer {:?} is configured twice",
                    cfg.name
                )));
            }
            let remote = Remote::new(&cfg.endpoint, cfg.tls.clone())
                .map_err(|e| e.context(format!("peer {}", cfg.name)))?;
            let status = PeerStatus::new(&cfg.name, &cfg.endpoint, cfg.direction);
            out.push(Arc::new(Peer {
                limiter: cfg.bandwidth.map(Limiter::new),
                remote,
                status: Mutex::new(status),
                sync_lock: tokio::sync::Mutex::new(()),
                cfg,
            }));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                parked: DeadLetters::new(local.store().clone()),
                local,
                site,
                peers: out,
            }),
        })
    }

    /// This site's name.
    pub fn site(&self) -> &str {
        &self.inner.site
    }

    /// The local site.
    pub fn local(&self) -> &Local {
        &self.inner.local
    }

    /// Every peer's figures (cursor lag computed from the last look at the source; the
    /// parked count read from the index now).
    pub fn status(&self) -> Vec<PeerStatus> {
        self.inner
            .peers
            .iter()
            .map(|p| {
                let mut s = p.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
                match self.inner.parked.count(&p.cfg.name) {
                    Ok(n) => s.parked = n,
                    Err(e) => {
                        tracing::warn!(peer = %p.cfg.name, error = %e, "counting parked entries")
                    }
                }
                s
            })
            .collect()
    }

    /// Blobs this site quarantined since start because their bytes failed verification when
    /// read for replication.
    pub fn corrupt_found(&self) -> u64 {
        self.inner.local.corrupt_found()
    }

    /// Starts one task per peer; they end when `stop` turns true.
    pub fn start(&self, stop: watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
        self.inner
            .peers
            .iter()
            .map(|peer| {
                let this = self.clone();
                let peer = peer.clone();
                let stop = stop.clone();
                let span = tracing::info_span!("replication", peer = %peer.cfg.name, direction = peer.cfg.direction.as_str());
                stowage_store::task::spawn_named(
                    "replication-peer",
                    tracing::Instrument::instrument(async move { this.run_peer(&peer, stop).await }, span),
                )
            })
            .collect()
    }

    pub(crate) fn peer(&self, name: &str) -> Result<Arc<Peer>> {
        self.inner
            .peers
            .iter()
            .find(|p| p.cfg.name == name)
            .cloned()
            .ok_or_else(|| ReplError::NotFound(format!("no peer named {name:?} is configured")))
    }

    /// Source, target and the target's site name for `peer`, after greeting it.
    pub(crate) async fn flow(&self, peer: &Arc<Peer>) -> Result<(Flow, String)> {
        let (peer_site, _) = peer.remote.hello(&self.inner.site).await?;
        if peer_site == self.inner.site {
            return Err(ReplError::Invalid(format!(
                "peer {} calls itself {peer_site:?}, like this site: site names must differ",
                peer.cfg.name
            )));
        }
        peer.update(|s| s.peer_site = peer_site.clone());
        let expected = if peer.cfg.site.is_empty() {
            &peer.cfg.name
        } else {
            &peer.cfg.site
        };
        if peer.cfg.direction == Direction::Pull && &peer_site != expected {
            // What is pulled from a peer must have originated at the site it is configured
            // as (or at its listed origins): a peer that names itself otherwise is refused
            // rather than trusted under a name it chose.
            return Err(ReplError::Refused(format!(
                "peer {} calls itself {peer_site:?}, but its configuration expects site {expected:?} (set `site`)",
                peer.cfg.name
            )));
        }
        // Changes this replicator applies locally (pull) are recorded as made by the peer
        // they came from, and bounded like a push from it would be: its filters, its deletes
        // setting, the origins it may relay and the clock skew.
        let cfg = &peer.cfg;
        let pull_policy = crate::policy::PeerPolicy {
            name: cfg.name.clone(),
            origins: std::iter::once(expected.clone())
                .chain(cfg.origins.iter().cloned())
                .collect(),
            read: Vec::new(),
            write: vec![crate::policy::Grant {
                filters: cfg.filters.clone(),
                deletes: cfg.replicate_deletes,
            }],
            max_skew_ms: u64::try_from(cfg.max_clock_skew.as_millis()).unwrap_or(u64::MAX),
        };
        let acting = self
            .inner
            .local
            .acting_for(stowage_core::Actor::peer(&cfg.name, None));
        let local = Site::Local(match cfg.direction {
            Direction::Pull => acting.with_policy(Some(Arc::new(pull_policy))),
            Direction::Push => acting,
        });
        let remote = Site::Remote(peer.remote.clone());
        Ok(match peer.cfg.direction {
            Direction::Push => (
                Flow {
                    peer: peer.clone(),
                    source: local,
                    target: remote,
                    source_site: self.inner.site.clone(),
                },
                peer_site,
            ),
            Direction::Pull => (
                Flow {
                    peer: peer.clone(),
                    source: remote,
                    target: local,
                    source_site: peer_site,
                },
                self.inner.site.clone(),
            ),
        })
    }

    /// Where each push peer stands in this site's feed: the sequence it has confirmed, or
    /// `None` when it has no cursor over this site's feed yet (it will start with a full
    /// comparison once the feed is trimmed). Feed trimming keeps every entry after these.
    pub fn push_cursors(&self) -> Result<Vec<(String, Option<u64>)>> {
        let idx = self.inner.local.store().index();
        let mut out = Vec::new();
        for peer in &self.inner.peers {
            if peer.cfg.direction != Direction::Push {
                continue;
            }
            let seq = idx
                .repl_cursor(&peer.cfg.name)
                .map_err(StoreError::from)?
                .and_then(|c| (c.source == self.inner.site).then_some(c.seq));
            out.push((peer.cfg.name.clone(), seq));
        }
        Ok(out)
    }

    fn load_cursor(&self, peer: &str, source_site: &str, target_site: &str) -> Result<u64> {
        let found = match self.inner.local.store().index().repl_cursor(peer) {
            Ok(c) => c,
            // Replicating the feed again from its start is safe (at-least-once, idempotent).
            Err(e @ stowage_index::IndexError::Corrupt(_)) => {
                tracing::warn!(peer, error = %e, "unreadable replication cursor; starting from the feed's start");
                None
            }
            Err(e) => return Err(StoreError::from(e).into()),
        };
        Ok(match found {
            Some(c)
                if c.source == source_site && (c.target.is_empty() || c.target == target_site) =>
            {
                c.seq
            }
            Some(c) => {
                tracing::warn!(
                    peer,
                    was_source = %c.source,
                    was_target = %c.target,
                    source = %source_site,
                    target = %target_site,
                    "the sites at either end changed; replicating the source's feed from its start"
                );
                0
            }
            None => 0,
        })
    }

    async fn save_cursor(
        &self,
        peer: &str,
        source_site: &str,
        target_site: &str,
        seq: u64,
    ) -> Result<()> {
        let c = ReplCursor {
            seq,
            source: source_site.to_string(),
            target: target_site.to_string(),
        };
        self.inner.local.store().put_repl_cursor(peer, &c).await?;
        Ok(())
    }

    async fn run_peer(&self, peer: &Arc<Peer>, mut stop: watch::Receiver<bool>) {
        // A plain doubling delay, not `backon`: this loop keeps its connection and cursor
        // across failures, resets the delay on progress and caps it by error kind, so a
        // retry-a-closure crate would add glue without removing any of this logic.
        let mut backoff = Duration::from_millis(100);
        let sleep_or_stop = |d: Duration, mut stop: watch::Receiver<bool>| async move {
            tokio::select! {
                _ = tokio::time::sleep(d) => false,
                _ = stop.wait_for(|v| *v) => true,
            }
        };
        tracing::info!(endpoint = %peer.cfg.endpoint, "replication started");
        'connect: loop {
            if *stop.borrow() {
                return;
            }
            let (flow, target_site) = match self.flow(peer).await {
                Ok(f) => f,
                Err(e) => {
                    peer.failed(&e, true);
                    peer.update(|s| s.state = PeerState::Connecting);
                    if sleep_or_stop(backoff, stop.clone()).await {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            let mut cursor = match self.load_cursor(&peer.cfg.name, &flow.source_site, &target_site)
            {
                Ok(c) => c,
                Err(e) => {
                    peer.failed(&e, true);
                    if sleep_or_stop(backoff, stop.clone()).await {
                        return;
                    }
                    continue;
                }
            };
            peer.update(|s| s.cursor = cursor);
            let mut next_sync = peer.cfg.anti_entropy_interval.map(|i| Instant::now() + i);
            loop {
                // Periodic anti-entropy when due, also while the source is busy.
                if next_sync.is_some_and(|t| Instant::now() >= t) {
                    next_sync = peer.cfg.anti_entropy_interval.map(|i| Instant::now() + i);
                    peer.update(|s| s.state = PeerState::AntiEntropy);
                    let ran = tokio::select! {
                        r = self.sync_flow(&flow) => r,
                        _ = stop.wait_for(|v| *v) => return,
                    };
                    match ran {
                        Ok(r) => tracing::info!(?r, "periodic anti-entropy done"),
                        Err(e) => peer.failed(&e, false),
                    }
                }
                let read = tokio::select! {
                    r = flow.source.feed(cursor.saturating_add(1), BATCH, FEED_WAIT) => r,
                    _ = stop.wait_for(|v| *v) => return,
                };
                let page = match read {
                    Ok(r) => r,
                    Err(e) => {
                        peer.failed(&e, true);
                        if sleep_or_stop(backoff, stop.clone()).await {
                            return;
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue 'connect;
                    }
                };
                if page.trimmed_to > cursor {
                    match self
                        .resync_trimmed(
                            &flow,
                            peer,
                            &target_site,
                            cursor,
                            page.trimmed_to,
                            &mut stop,
                        )
                        .await
                    {
                        Some(Ok(())) => {
                            cursor = page.trimmed_to;
                            backoff = Duration::from_millis(100);
                        }
                        Some(Err(e)) => {
                            peer.failed(&e, true);
                            if sleep_or_stop(backoff, stop.clone()).await {
                                return;
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                        }
                        None => return,
                    }
                    continue;
                }
                let last = page.last;
                let Some(scanned) = page.scanned_to.filter(|s| *s > cursor) else {
                    peer.update(|s| {
                        s.source_sequence = last;
                        s.lag_events = last.saturating_sub(cursor);
                        if s.lag_events == 0 {
                            s.lag_seconds = 0.0;
                            s.state = PeerState::InSync;
                        }
                    });
                    // An empty read past the end of a source that was reset (its feed is
                    // shorter than the cursor) would wait forever; start again from its start.
                    if last < cursor {
                        tracing::warn!(
                            cursor,
                            last,
                            "the source's feed is behind the cursor; replicating from its start"
                        );
                        cursor = 0;
                    }
                    continue;
                };
                if let Some((_, first)) = page.events.first() {
                    let first_ts = first.ts_ms;
                    peer.update(|s| {
                        s.state = PeerState::Replicating;
                        s.source_sequence = last;
                        s.lag_events = last.saturating_sub(cursor);
                        s.lag_seconds = now_ms().saturating_sub(first_ts) as f64 / 1000.0;
                    });
                    let applied = tokio::select! {
                        r = self.apply_page(&flow, &page.events, &target_site) => r,
                        _ = stop.wait_for(|v| *v) => return,
                    };
                    if let Err(e) = applied {
                        peer.failed(&e, true);
                        if sleep_or_stop(backoff, stop.clone()).await {
                            return;
                        }
                        // Malformed content will not get better soon: back off further, so a
                        // bad entry does not keep resending blobs every few seconds.
                        let cap = match e {
                            ReplError::Invalid(_) => Duration::from_secs(60),
                            _ => Duration::from_secs(5),
                        };
                        backoff = (backoff * 2).min(cap);
                        if matches!(e, ReplError::Unavailable(_)) {
                            continue 'connect;
                        }
                        continue;
                    }
                }
                // The target confirmed everything up to `scanned` (entries of kinds this build
                // does not know are passed over). A failed cursor write is retried with the
                // next batch; until then a restart re-applies, which is idempotent.
                cursor = scanned;
                if let Err(e) = self
                    .save_cursor(&peer.cfg.name, &flow.source_site, &target_site, scanned)
                    .await
                {
                    peer.failed(&e, true);
                    if sleep_or_stop(backoff, stop.clone()).await {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
                backoff = Duration::from_millis(100);
                let n = page.events.len() as u64;
                peer.update(|s| {
                    s.cursor = cursor;
                    s.events_processed += n;
                    s.lag_events = last.saturating_sub(cursor);
                    s.last_success_ms = now_ms();
                    s.last_error.clear();
                    if s.lag_events == 0 {
                        s.lag_seconds = 0.0;
                        s.state = PeerState::InSync;
                    }
                });
            }
        }
    }

    /// The source trimmed feed entries after `cursor` (through `trimmed_to`): they cannot be
    /// replayed, so the whole state is compared instead (anti-entropy), and only once that
    /// succeeded does the cursor move to the trimmed point, so nothing is skipped silently.
    /// `None` when asked to stop.
    async fn resync_trimmed(
        &self,
        flow: &Flow,
        peer: &Arc<Peer>,
        target_site: &str,
        cursor: u64,
        trimmed_to: u64,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<Result<()>> {
        tracing::warn!(
            cursor,
            trimmed_to,
            "the source trimmed feed entries not yet replicated; comparing whole states instead"
        );
        peer.update(|s| {
            s.feed_resyncs += 1;
            s.state = PeerState::AntiEntropy;
        });
        let ran = tokio::select! {
            r = self.sync_flow(flow) => r,
            _ = stop.wait_for(|v| *v) => return None,
        };
        let report = match ran {
            Ok(r) => r,
            Err(e) => return Some(Err(e.context("full comparison after a feed trim"))),
        };
        tracing::info!(
            ?report,
            trimmed_to,
            "full comparison after a feed trim done"
        );
        if let Err(e) = self
            .save_cursor(&peer.cfg.name, &flow.source_site, target_site, trimmed_to)
            .await
        {
            return Some(Err(e));
        }
        peer.update(|s| {
            s.cursor = trimmed_to;
            s.last_error.clear();
        });
        Some(Ok(()))
    }

    /// Applies a page of feed entries. When the page fails because a blob is corrupt at the
    /// source, its entries are applied one by one instead and each that fails for that reason
    /// is parked (durably, before the caller moves the cursor past it); any other failure
    /// fails the page, which is retried as a whole (entries parked so far stay parked once).
    async fn apply_page(
        &self,
        flow: &Flow,
        events: &[(u64, Event)],
        target_site: &str,
    ) -> Result<()> {
        match flow.apply_batch(events, target_site).await {
            Err(e) if e.corrupt_blob().is_some() => {
                tracing::warn!(peer = %flow.peer.cfg.name, error = %e, "a blob is corrupt at the source; applying the page entry by entry");
            }
            other => return other,
        }
        for entry in events {
            let Err(e) = flow
                .apply_batch(std::slice::from_ref(entry), target_site)
                .await
            else {
                continue;
            };
            let Some(blob) = e.corrupt_blob().cloned() else {
                return Err(e);
            };
            self.park(flow, entry, blob, &e).await?;
        }
        Ok(())
    }

    /// Parks feed entry `entry`, which needs `blob`, corrupt at the source.
    async fn park(
        &self,
        flow: &Flow,
        entry: &(u64, Event),
        blob: Digest,
        e: &ReplError,
    ) -> Result<()> {
        let (seq, event) = entry;
        let id = ParkedId {
            peer: flow.peer.cfg.name.clone(),
            seq: *seq,
        };
        let parked = Parked {
            event: event.clone(),
            source_site: flow.source_site.clone(),
            reason: ParkReason::SourceCorrupt,
            blob,
            parked_ms: now_ms(),
            attempts: 0,
            last_attempt_ms: 0,
            last_error: e.to_string(),
        };
        let actor = stowage_core::Actor::system("replication");
        if self.inner.parked.park(&id, &parked, &actor).await? {
            tracing::error!(entry = %id, blob = %parked.blob, error = %e, "feed entry parked: `stowage repl parked` lists it, `stowage repl retry` tries it again");
            flow.peer.update(|s| s.entries_parked += 1);
        }
        Ok(())
    }

    /// Runs anti-entropy with peer `name` now.
    pub async fn sync(&self, name: &str) -> Result<SyncReport> {
        let peer = self.peer(name)?;
        let (flow, _) = self.flow(&peer).await?;
        self.sync_flow(&flow).await
    }

    pub(crate) async fn sync_flow(&self, flow: &Flow) -> Result<SyncReport> {
        let _one = flow.peer.sync_lock.lock().await;
        let r = flow.anti_entropy().await?;
        flow.peer.update(|s| {
            s.anti_entropy_runs += 1;
            s.anti_entropy_repairs += u64::from(r.manifests_repaired + r.tags_repaired);
        });
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_limiter_holds_senders_to_the_rate() {
        // 1 MiB/s with a burst of one second: 3 MiB cannot go out in less than about 2 s.
        let l = Limiter::new(1 << 20);
        let started = Instant::now();
        for _ in 0..12 {
            l.take(256 << 10).await;
        }
        assert!(
            started.elapsed() >= Duration::from_millis(1900),
            "{:?}",
            started.elapsed()
        );
    }
}
