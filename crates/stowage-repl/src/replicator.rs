//! The replicator: one task per configured peer that follows a source feed from a durable
//! cursor and brings the target up to date, plus anti-entropy.
//!
//! Per batch of feed entries and per repository: the manifests put (children first, each after
//! the blobs it needs, only those the target lacks), then the latest state of every tag touched
//! (whatever happened to it in between), then referrers, then manifest deletes. Everything is
//! idempotent, so a batch that fails half way is simply retried; the cursor moves past a batch
//! only once the target confirmed all of it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use stowage_core::{parse_manifest, Digest, RepoName};
use stowage_index::{Event, EventKind};
use stowage_rpc::v1 as pb;
use stowage_store::{StoreError, TagState};
use tokio::sync::watch;

use crate::error::{ReplError, Result};
use crate::glob::Filters;
use crate::local::{BlobHeader, Local, ManifestDoc};
use crate::remote::Remote;
use crate::site::Site;

/// How long a site keeps blobs of a transfer in progress from garbage collection.
const TRANSFER_HOLD: Duration = Duration::from_secs(3600);
/// Feed entries handled per batch.
const BATCH: usize = 256;
/// How long a replicator waits on the source's feed for new entries before looking around
/// (stop signal, anti-entropy timer).
const FEED_WAIT: Duration = Duration::from_secs(1);
/// Attempts at one blob (each resumes from what the target holds) before the batch fails.
const BLOB_ATTEMPTS: usize = 5;
/// Deepest index nesting followed.
const MAX_DEPTH: usize = 8;

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

/// What one anti-entropy comparison found and repaired.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Buckets whose hashes differed.
    pub buckets_differing: u32,
    /// Repositories compared one by one (those in differing buckets).
    pub repositories_compared: u32,
    /// Repositories whose state differed.
    pub repositories_differing: u32,
    /// Manifests the target lacked and received.
    pub manifests_repaired: u32,
    /// Tag states the target lacked (or held older) and received.
    pub tags_repaired: u32,
    /// Manifests the target holds that the source does not (left alone).
    pub extra_at_target: u32,
    /// How long it took.
    pub duration: Duration,
}

/// Token bucket for a peer's blob bytes.
#[derive(Debug)]
struct Limiter {
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

    async fn take(&self, n: usize) {
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

#[derive(Debug)]
struct Peer {
    cfg: PeerConfig,
    remote: Remote,
    status: Mutex<pb::PeerStatus>,
    limiter: Option<Limiter>,
    /// One anti-entropy run at a time.
    sync_lock: tokio::sync::Mutex<()>,
}

impl Peer {
    fn update(&self, f: impl FnOnce(&mut pb::PeerStatus)) {
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
            s.state = "error".into();
        });
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Cursor {
    seq: u64,
    /// The source site the sequence numbers belong to; a cursor for another site is void.
    site: String,
    /// The target site that confirmed them; a cursor for another target is void too (an
    /// endpoint rebuilt as a new, empty site must get everything again).
    #[serde(default)]
    target: String,
}

/// Replication of this site with its configured peers. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Replicator {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    local: Local,
    site: String,
    peers: Vec<Arc<Peer>>,
}

/// Per-repository work of one batch.
#[derive(Debug, Default)]
struct RepoWork {
    /// Manifests put, with the site each came from, in feed order.
    manifests: Vec<(Digest, String)>,
    /// Tags touched.
    tags: BTreeSet<String>,
    /// Manifests deleted, with their origin.
    deletes: Vec<(Digest, String)>,
}

/// One replication in progress between a source and a target.
struct Flow {
    peer: Arc<Peer>,
    source: Site,
    target: Site,
    /// The source site's name (origin of changes that carry none).
    source_site: String,
}

fn cursor_key(peer: &str) -> Vec<u8> {
    format!("repl/cursor/{peer}").into_bytes()
}

fn now_ms() -> u64 {
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
            let status = pb::PeerStatus {
                name: cfg.name.clone(),
                endpoint: cfg.endpoint.clone(),
                direction: cfg.direction.as_str().into(),
                state: "connecting".into(),
                ..Default::default()
            };
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

    /// Every peer's figures (cursor lag computed from the last look at the source).
    pub fn status(&self) -> Vec<pb::PeerStatus> {
        self.inner
            .peers
            .iter()
            .map(|p| p.status.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
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

    fn peer(&self, name: &str) -> Result<Arc<Peer>> {
        self.inner
            .peers
            .iter()
            .find(|p| p.cfg.name == name)
            .cloned()
            .ok_or_else(|| ReplError::NotFound(format!("no peer named {name:?} is configured")))
    }

    /// Source, target and the target's site name for `peer`, after greeting it.
    async fn flow(&self, peer: &Arc<Peer>) -> Result<(Flow, String)> {
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

    fn load_cursor(&self, peer: &str, source_site: &str, target_site: &str) -> Result<u64> {
        let raw = self
            .inner
            .local
            .store()
            .index()
            .meta(&cursor_key(peer))
            .map_err(StoreError::from)?;
        Ok(
            match raw.and_then(|r| serde_json::from_slice::<Cursor>(&r).ok()) {
                Some(c)
                    if c.site == source_site
                        && (c.target.is_empty() || c.target == target_site) =>
                {
                    c.seq
                }
                Some(c) => {
                    tracing::warn!(
                        peer,
                        was_source = %c.site,
                        was_target = %c.target,
                        source = %source_site,
                        target = %target_site,
                        "the sites at either end changed; replicating the source's feed from its start"
                    );
                    0
                }
                None => 0,
            },
        )
    }

    async fn save_cursor(
        &self,
        peer: &str,
        source_site: &str,
        target_site: &str,
        seq: u64,
    ) -> Result<()> {
        let c = Cursor {
            seq,
            site: source_site.to_string(),
            target: target_site.to_string(),
        };
        let value = serde_json::to_vec(&c)
            .map_err(|e| ReplError::Other(format!("encoding a cursor: {e}")))?;
        self.inner
            .local
            .store()
            .put_meta(&cursor_key(peer), Some(value))
            .await?;
        Ok(())
    }

    async fn run_peer(&self, peer: &Arc<Peer>, mut stop: watch::Receiver<bool>) {
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
                    peer.update(|s| s.state = "connecting".into());
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
                    peer.update(|s| s.state = "anti_entropy".into());
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
                    r = flow.source.feed(cursor + 1, BATCH, FEED_WAIT) => r,
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
                let last = page.last;
                let Some(scanned) = page.scanned_to.filter(|s| *s > cursor) else {
                    peer.update(|s| {
                        s.source_sequence = last;
                        s.lag_events = last.saturating_sub(cursor);
                        if s.lag_events == 0 {
                            s.lag_seconds = 0.0;
                            s.state = "in_sync".into();
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
                        s.state = "replicating".into();
                        s.source_sequence = last;
                        s.lag_events = last.saturating_sub(cursor);
                        s.lag_seconds = now_ms().saturating_sub(first_ts) as f64 / 1000.0;
                    });
                    let applied = tokio::select! {
                        r = flow.apply_batch(&page.events, &target_site) => r,
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
                        s.state = "in_sync".into();
                    }
                });
            }
        }
    }

    /// Runs anti-entropy with peer `name` now.
    pub async fn sync(&self, name: &str) -> Result<SyncReport> {
        let peer = self.peer(name)?;
        let (flow, _) = self.flow(&peer).await?;
        self.sync_flow(&flow).await
    }

    async fn sync_flow(&self, flow: &Flow) -> Result<SyncReport> {
        let _one = flow.peer.sync_lock.lock().await;
        let r = flow.anti_entropy().await?;
        flow.peer.update(|s| {
            s.anti_entropy_runs += 1;
            s.anti_entropy_repairs += u64::from(r.manifests_repaired + r.tags_repaired);
        });
        Ok(r)
    }
}

impl Flow {
    fn cfg(&self) -> &PeerConfig {
        &self.peer.cfg
    }

    async fn apply_batch(&self, events: &[(u64, Event)], target_site: &str) -> Result<()> {
        let filters = &self.cfg().filters;
        let mut work: BTreeMap<String, RepoWork> = BTreeMap::new();
        for (_, ev) in events {
            let origin = ev
                .origin
                .clone()
                .unwrap_or_else(|| self.source_site.clone());
            // Changes that came from the target go no further: no loops between sites.
            if origin == target_site || !filters.repo_ok(&ev.repo) {
                continue;
            }
            match (&ev.kind, &ev.digest, &ev.tag) {
                (EventKind::ManifestPut, Some(d), _) if filters.all_manifests() => {
                    work.entry(ev.repo.clone())
                        .or_default()
                        .manifests
                        .push((d.clone(), origin));
                }
                (EventKind::TagSet | EventKind::TagDeleted, _, Some(t)) if filters.tag_ok(t) => {
                    work.entry(ev.repo.clone())
                        .or_default()
                        .tags
                        .insert(t.clone());
                }
                (EventKind::ManifestDeleted, Some(d), _) if self.cfg().replicate_deletes => {
                    work.entry(ev.repo.clone())
                        .or_default()
                        .deletes
                        .push((d.clone(), origin));
                }
                _ => {}
            }
        }
        for (repo, w) in work {
            let name = crate::convert::repo(&repo)?;
            self.apply_repo(&name, w)
                .await
                .map_err(|e| e.context(format!("replicating {repo}")))?;
        }
        Ok(())
    }

    async fn apply_repo(&self, repo: &RepoName, w: RepoWork) -> Result<()> {
        let mut seen = HashSet::new();
        let mut referrers = Vec::new();
        for (digest, origin) in w.manifests {
            if !seen.insert(digest.clone()) {
                continue;
            }
            // Latest state: a manifest deleted since its event does not travel.
            let Some(doc) = self.source.get_manifest(repo, &digest).await? else {
                continue;
            };
            if has_subject(&doc) {
                referrers.push((digest, doc, origin));
                continue;
            }
            self.replicate_manifest(repo, &digest, doc, &origin, 0)
                .await?;
        }
        for tag in &w.tags {
            self.replicate_tag(repo, tag).await?;
        }
        for (digest, doc, origin) in referrers {
            self.replicate_manifest(repo, &digest, doc, &origin, 0)
                .await?;
        }
        for (digest, origin) in w.deletes {
            if self.source.has_manifest(repo, &digest).await? {
                continue;
            }
            if self.target.delete_manifest(repo, &digest, &origin).await? {
                self.peer.update(|s| s.deletes_applied += 1);
            }
        }
        Ok(())
    }

    /// Brings tag `tag` of `repo` at the target to the source's current state.
    async fn replicate_tag(&self, repo: &RepoName, tag: &str) -> Result<bool> {
        let Some(state) = self.source.tag_state(repo, tag).await? else {
            return Ok(false);
        };
        let applied = match &state {
            TagState::Set { digest, version } => {
                let doc = self
                    .source
                    .get_manifest(repo, digest)
                    .await?
                    .ok_or_else(|| {
                        // The tag moved and the manifest went meanwhile: the retry reads again.
                        ReplError::Other(format!(
                            "tag {repo}:{tag} points at {digest}, which is gone at the source"
                        ))
                    })?;
                self.replicate_manifest(repo, digest, doc, &version.origin, 0)
                    .await?;
                let applied = self.target.apply_tag(repo, tag, &state).await?;
                if applied {
                    self.peer.update(|s| s.tags_applied += 1);
                }
                applied
            }
            TagState::Deleted { .. } if self.cfg().replicate_deletes => {
                let applied = self.target.apply_tag(repo, tag, &state).await?;
                if applied {
                    self.peer.update(|s| s.deletes_applied += 1);
                }
                applied
            }
            TagState::Deleted { .. } => false,
        };
        Ok(applied)
    }

    /// Sends manifest `digest` and what it needs (children, then blobs) unless the target
    /// already holds it.
    fn replicate_manifest<'a>(
        &'a self,
        repo: &'a RepoName,
        digest: &'a Digest,
        doc: ManifestDoc,
        origin: &'a str,
        depth: usize,
    ) -> futures::future::BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if self.target.has_manifest(repo, digest).await? {
                return Ok(());
            }
            if depth > MAX_DEPTH {
                return Err(ReplError::Invalid(format!(
                    "manifest {digest}: indexes nested deeper than {MAX_DEPTH}"
                )));
            }
            let parsed = parse_manifest(Some(&doc.media_type), &doc.bytes).map_err(|e| {
                ReplError::Invalid(format!("manifest {repo}@{digest} at the source: {e}"))
            })?;
            let children: Vec<Digest> = parsed
                .manifest_references()
                .into_iter()
                .map(|d| d.digest.clone())
                .collect();
            let mut blobs: Vec<(Digest, u64)> = Vec::new();
            for b in parsed.blob_references() {
                if !blobs.iter().any(|(d, _)| d == &b.digest) {
                    blobs.push((b.digest.clone(), b.size));
                }
            }
            drop(parsed);
            for child in &children {
                // A child the source does not hold is one its sparse index was accepted
                // without; the target accepts the index the same way, so it is not sent.
                let Some(cdoc) = self.source.get_manifest(repo, child).await? else {
                    tracing::debug!(%repo, %digest, %child, "child absent at the source");
                    continue;
                };
                self.replicate_manifest(repo, child, cdoc, origin, depth + 1)
                    .await?;
            }
            self.transfer_blobs(repo, &blobs).await?;
            if self.target.put_manifest(repo, digest, doc, origin).await? {
                self.peer.update(|s| s.manifests_sent += 1);
            }
            Ok(())
        })
    }

    async fn transfer_blobs(&self, repo: &RepoName, blobs: &[(Digest, u64)]) -> Result<()> {
        if blobs.is_empty() {
            return Ok(());
        }
        if let Site::Local(l) = &self.source {
            // Collection at the source keeps what is being sent.
            let store = l.store();
            store.pin_blobs(
                blobs.iter().map(|(d, _)| d),
                store.now_ms() + TRANSFER_HOLD.as_millis() as u64,
            )?;
        }
        let missing = self
            .target
            .missing_blobs(repo, blobs, TRANSFER_HOLD)
            .await?;
        let sizes: HashMap<&Digest, u64> = blobs.iter().map(|(d, s)| (d, *s)).collect();
        let missing_set: HashSet<&Digest> = missing.iter().map(|(d, _)| d).collect();
        let (skipped_n, skipped_bytes) = blobs
            .iter()
            .filter(|(d, _)| !missing_set.contains(d))
            .fold((0u64, 0u64), |(n, b), (_, s)| (n + 1, b + s));
        self.peer.update(|s| {
            s.blobs_skipped += skipped_n;
            s.bytes_skipped += skipped_bytes;
        });
        let concurrency = self.cfg().concurrency.max(1);
        let mut transfers: Vec<futures::future::BoxFuture<'_, Result<()>>> = Vec::new();
        for (d, held) in missing.iter() {
            let size = sizes.get(d).copied().unwrap_or(0);
            transfers.push(self.transfer_blob(repo.clone(), d.clone(), size, *held));
        }
        futures::stream::iter(transfers)
            .buffer_unordered(concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    fn transfer_blob(
        &self,
        repo: RepoName,
        digest: Digest,
        size: u64,
        offset: u64,
    ) -> futures::future::BoxFuture<'_, Result<()>> {
        Box::pin(async move { self.transfer_blob_inner(&repo, &digest, size, offset).await })
    }

    async fn transfer_blob_inner(
        &self,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
        mut offset: u64,
    ) -> Result<()> {
        for _ in 0..BLOB_ATTEMPTS {
            let (src_size, stream) = self.source.read_blob(repo, digest, offset).await?;
            if src_size != size {
                return Err(ReplError::Invalid(format!(
                    "blob {digest} is {src_size} bytes at the source, its manifest says {size}"
                )));
            }
            if offset > 0 {
                tracing::info!(%digest, offset, "resuming a blob transfer");
                self.peer.update(|s| s.bytes_resumed += offset);
            }
            let peer = self.peer.clone();
            let counted = stream
                .then(move |item| {
                    let peer = peer.clone();
                    async move {
                        if let Ok(b) = &item {
                            if let Some(l) = &peer.limiter {
                                l.take(b.len()).await;
                            }
                            peer.update(|s| s.bytes_sent += b.len() as u64);
                        }
                        item
                    }
                })
                .boxed();
            let header = BlobHeader {
                repo: repo.clone(),
                digest: digest.clone(),
                size,
                offset,
            };
            match self.target.put_blob(header, counted).await {
                Ok((_, true)) => {
                    self.peer.update(|s| s.blobs_sent += 1);
                    return Ok(());
                }
                Ok((held, false)) => offset = held,
                Err(ReplError::OffsetMismatch { held }) => offset = held,
                Err(e) => return Err(e),
            }
        }
        Err(ReplError::Unavailable(format!(
            "blob {digest}: not complete after {BLOB_ATTEMPTS} attempts"
        )))
    }

    /// Compares source and target by hashes and repairs what the target lacks.
    async fn anti_entropy(&self) -> Result<SyncReport> {
        let started = Instant::now();
        let filters = &self.cfg().filters;
        let mut r = SyncReport::default();
        let (sb, tb) = futures::try_join!(
            self.source.bucket_hashes(filters),
            self.target.bucket_hashes(filters)
        )?;
        if sb.len() != 256 || tb.len() != 256 {
            return Err(ReplError::Invalid(format!(
                "bucket hashes: {} and {} instead of 256",
                sb.len(),
                tb.len()
            )));
        }
        let differing: Vec<u8> = (0..=255u8)
            .filter(|b| sb[*b as usize] != tb[*b as usize])
            .collect();
        r.buckets_differing = differing.len() as u32;
        if !differing.is_empty() {
            let (sr, tr) = futures::try_join!(
                self.source.repo_hashes(filters, &differing),
                self.target.repo_hashes(filters, &differing)
            )?;
            let sr: BTreeMap<String, [u8; 32]> = sr.into_iter().collect();
            let tr: BTreeMap<String, [u8; 32]> = tr.into_iter().collect();
            let names: BTreeSet<&String> = sr.keys().chain(tr.keys()).collect();
            r.repositories_compared = names.len() as u32;
            for name in names {
                if sr.get(name) == tr.get(name) {
                    continue;
                }
                r.repositories_differing += 1;
                let repo = crate::convert::repo(name)?;
                self.repair_repo(&repo, &mut r)
                    .await
                    .map_err(|e| e.context(format!("repairing {repo}")))?;
            }
        }
        r.duration = started.elapsed();
        Ok(r)
    }

    async fn repair_repo(&self, repo: &RepoName, r: &mut SyncReport) -> Result<()> {
        let filters = &self.cfg().filters;
        let (ss, ts) = futures::try_join!(
            self.source.repo_state(repo, filters),
            self.target.repo_state(repo, filters)
        )?;
        let target_manifests: HashSet<&Digest> = ts.manifests.iter().collect();
        let source_manifests: HashSet<&Digest> = ss.manifests.iter().collect();
        r.extra_at_target += ts
            .manifests
            .iter()
            .filter(|d| !source_manifests.contains(d))
            .count() as u32;
        let origin = self.source_site.clone();
        let mut referrers = Vec::new();
        // A manifest the target deleted stays deleted: anti-entropy never undoes a delete (the
        // delete travels to the source through the feed, if deletes replicate that way).
        let deleted_at_target: HashSet<&Digest> = ts.deleted_manifests.iter().collect();
        if filters.all_manifests() {
            for d in ss
                .manifests
                .iter()
                .filter(|d| !target_manifests.contains(d) && !deleted_at_target.contains(d))
            {
                let Some(doc) = self.source.get_manifest(repo, d).await? else {
                    continue;
                };
                if has_subject(&doc) {
                    referrers.push((d.clone(), doc));
                    continue;
                }
                self.replicate_manifest(repo, d, doc, &origin, 0).await?;
                r.manifests_repaired += 1;
            }
        }
        let target_tags: HashMap<&String, &TagState> =
            ts.tags.iter().map(|(t, s)| (t, s)).collect();
        for (tag, state) in &ss.tags {
            let newer = target_tags
                .get(tag)
                .is_none_or(|t| t.version() < state.version());
            if newer && self.replicate_tag(repo, tag).await? {
                r.tags_repaired += 1;
            }
        }
        for (d, doc) in referrers {
            self.replicate_manifest(repo, &d, doc, &origin, 0).await?;
            r.manifests_repaired += 1;
        }
        Ok(())
    }
}

fn has_subject(doc: &ManifestDoc) -> bool {
    parse_manifest(Some(&doc.media_type), &doc.bytes).is_ok_and(|p| p.subject.is_some())
}

/// Figures of one anti-entropy run for the wire.
pub fn sync_to_proto(r: &SyncReport) -> pb::SyncResponse {
    pb::SyncResponse {
        buckets_differing: r.buckets_differing,
        repositories_compared: r.repositories_compared,
        repositories_differing: r.repositories_differing,
        manifests_repaired: r.manifests_repaired,
        tags_repaired: r.tags_repaired,
        extra_at_target: r.extra_at_target,
        duration_ms: r.duration.as_millis() as u64,
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
