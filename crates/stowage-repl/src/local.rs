//! This site's side of replication, over the store: what the gRPC service serves to peers, and
//! what a replicator uses when the local site is the source (push) or the target (pull).

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use stowage_core::{Actor, Digest, RepoName};
use stowage_index::repl_state::TransferSession;
use stowage_index::{Event, IndexError};
use stowage_store::{ReplicaStore, StoreError, TagState};

use crate::error::{ReplError, Result};
use crate::policy::PeerPolicy;

mod read;
mod state;

pub use state::{bucket_of, RepoHash, RepoState};

pub use read::VERIFY_ACTOR;

/// Bytes a receiver stores as one durable part of a transfer (each part is fsynced and
/// recorded): what a transfer can lose when the receiving daemon dies.
pub const PART_BYTES: usize = 128 << 20;

/// How long a transfer keeps its blobs from garbage collection (renewed as it goes on): at
/// the source while it reads them, at the target while it receives them and until the
/// manifest that needs them arrives.
pub const TRANSFER_HOLD: Duration = Duration::from_secs(3600);

/// Largest feed page served at once.
pub const MAX_FEED_PAGE: usize = 1000;

/// What a blob transfer carries in its first message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobHeader {
    /// Repository the blob is for.
    pub repo: RepoName,
    /// Its digest.
    pub digest: Digest,
    /// Its full size.
    pub size: u64,
    /// Where this transfer's data starts.
    pub offset: u64,
}

/// A manifest's exact bytes and media type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestDoc {
    /// Media type.
    pub media_type: String,
    /// Exact bytes.
    pub bytes: Vec<u8>,
}

/// One read of a feed.
#[derive(Clone, Debug, Default)]
pub struct FeedPage {
    /// Entries this build understands, in order.
    pub events: Vec<(u64, Event)>,
    /// The highest sequence read, including entries skipped because their kind is unknown
    /// here (a newer peer); `None` when nothing was read.
    pub scanned_to: Option<u64>,
    /// The source's last sequence when the read was made.
    pub last: u64,
    /// The highest sequence trimmed from the source's feed, read after the events: a reader
    /// whose cursor is below it has missed entries (0 when nothing was trimmed).
    pub trimmed_to: u64,
}

/// A blob's bytes from some offset.
pub type ByteStream = BoxStream<'static, Result<Bytes>>;

/// The local site, acting for one actor: the peer whose requests the service serves, or the
/// peer a pulling replicator applies changes from.
#[derive(Clone, Debug)]
pub struct Local {
    store: ReplicaStore,
    /// Who changes made through this value are recorded as.
    actor: Actor,
    /// What that actor may do; `None`: anything (this site's own replicator as a source, or
    /// a trusted loopback peer in development).
    policy: Option<Arc<PeerPolicy>>,
    part_bytes: usize,
    /// Digests being received right now (one transfer per digest at a time).
    receiving: Arc<Mutex<HashSet<Digest>>>,
    /// When each distinct refusal (actor, call, reason) was last audited: a peer retrying a
    /// refused change every few seconds is recorded once a minute, not on every retry.
    refusals: Arc<Mutex<HashMap<RefusalKey, std::time::Instant>>>,
    /// Blobs this site quarantined because their bytes failed verification when read for
    /// replication (since start; shared by every copy).
    corrupt_found: Arc<AtomicU64>,
}

/// A refusal as audited: actor, call, reason.
type RefusalKey = (String, String, String);

/// How long an identical refusal is not audited again.
const REFUSAL_AUDIT_EVERY: Duration = Duration::from_secs(60);

/// Releases a digest from [`Local::receiving`] when a transfer ends, however it ends.
struct Receiving {
    set: Arc<Mutex<HashSet<Digest>>>,
    digest: Digest,
}

impl Drop for Receiving {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.digest);
    }
}

/// How the input of a transfer ended, as seen by [`PartFeed`].
#[derive(Debug, Default)]
struct FeedState {
    /// The input has no more bytes (ended or failed).
    ended: bool,
    /// It failed with this.
    error: Option<ReplError>,
}

/// One part of a transfer: at most `left` bytes taken from `input` (the chunk that crosses
/// the boundary is split, its rest carried to the next part). The input's end or failure is
/// noted in `state`, so the part itself always ends cleanly.
struct PartFeed<'a, S> {
    input: &'a mut S,
    carry: &'a mut Option<Bytes>,
    left: usize,
    state: &'a mut FeedState,
}

impl<S> Stream for PartFeed<'_, S>
where
    S: Stream<Item = Result<Bytes>> + Unpin,
{
    type Item = std::result::Result<Bytes, Infallible>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = &mut *self;
        loop {
            if this.left == 0 || this.state.ended {
                return Poll::Ready(None);
            }
            let mut b = match this.carry.take() {
                Some(b) => b,
                None => match std::pin::Pin::new(&mut *this.input).poll_next(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Ok(b))) => b,
                    Poll::Ready(Some(Err(e))) => {
                        this.state.error = Some(e);
                        this.state.ended = true;
                        return Poll::Ready(None);
                    }
                    Poll::Ready(None) => {
                        this.state.ended = true;
                        return Poll::Ready(None);
                    }
                },
            };
            if b.is_empty() {
                continue;
            }
            if b.len() > this.left {
                *this.carry = Some(b.split_off(this.left));
            }
            this.left -= b.len();
            return Poll::Ready(Some(Ok(b)));
        }
    }
}

impl Local {
    /// The local site over `store`, acting as the daemon's own replication (`system:replication`)
    /// until [`Local::acting_for`] says otherwise.
    pub fn new(store: ReplicaStore) -> Self {
        Self {
            store,
            actor: Actor::system("replication"),
            policy: None,
            part_bytes: PART_BYTES,
            receiving: Arc::default(),
            refusals: Arc::default(),
            corrupt_found: Arc::default(),
        }
    }

    /// Blobs quarantined since start because their bytes failed verification when read for
    /// replication.
    pub fn corrupt_found(&self) -> u64 {
        self.corrupt_found.load(Ordering::Relaxed)
    }

    /// The same site, bounded by `policy` (see [`crate::policy`]).
    pub fn with_policy(&self, policy: Option<Arc<PeerPolicy>>) -> Self {
        Self {
            policy,
            ..self.clone()
        }
    }

    /// Refuses, audits the refusal (the actor, what and why) and returns the error.
    async fn refuse(&self, what: &str, why: String) -> ReplError {
        let now = std::time::Instant::now();
        let key = (self.actor.to_string(), what.to_string(), why.clone());
        let fresh = {
            let mut seen = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
            if seen.len() >= 4096 {
                seen.retain(|_, t| now.duration_since(*t) < REFUSAL_AUDIT_EVERY);
                if seen.len() >= 4096 {
                    // Bounded: forgetting only means auditing some refusals again.
                    seen.clear();
                }
            }
            match seen.get(&key) {
                Some(t) if now.duration_since(*t) < REFUSAL_AUDIT_EVERY => false,
                _ => {
                    seen.insert(key, now);
                    true
                }
            }
        };
        if !fresh {
            tracing::debug!(actor = %self.actor, what, why = %why, "refused again (audited within the last minute)");
            return ReplError::Refused(why);
        }
        self.store
            .auditor()
            .record(
                self.store
                    .audit_entry(&self.actor, stowage_index::AuditAction::Replication)
                    .target(what)
                    .outcome(stowage_index::AuditOutcome::Denied)
                    .detail(why.clone()),
            )
            .await;
        ReplError::Refused(why)
    }

    /// Refused unless the peer may read `repo`'s content.
    pub(crate) async fn may_read(&self, what: &str, repo: &RepoName) -> Result<()> {
        match &self.policy {
            Some(p) if !p.reads(repo.as_str()) => Err(self
                .refuse(what, format!("peer {} may not read {repo}", p.name))
                .await),
            _ => Ok(()),
        }
    }

    /// Refused unless the peer may read `repo`'s state.
    pub(crate) async fn may_see(&self, what: &str, repo: &RepoName) -> Result<()> {
        match &self.policy {
            Some(p) if !p.sees(repo.as_str()) => Err(self
                .refuse(what, format!("peer {} may not see {repo}", p.name))
                .await),
            _ => Ok(()),
        }
    }

    /// Refused unless the peer may write in `repo`.
    async fn may_write(&self, what: &str, repo: &RepoName) -> Result<()> {
        match &self.policy {
            Some(p) if !p.writes(repo.as_str()) => Err(self
                .refuse(what, format!("peer {} may not write in {repo}", p.name))
                .await),
            _ => Ok(()),
        }
    }

    /// Whether a peer's change from `origin` is applied: `Ok(true)` when the peer may relay
    /// that origin, `Ok(false)` for a change that originated here coming back (a peer that
    /// holds it replicates it again): this site already has it or something newer, so it is
    /// accepted and ignored; applying it would let a peer pass its own changes off as this
    /// site's to the sites this one feeds. Refused otherwise.
    async fn relay(&self, what: &str, origin: &str) -> Result<bool> {
        let Some(p) = &self.policy else {
            return Ok(true);
        };
        if self.store.site() == Some(origin) {
            return Ok(false);
        }
        if p.relays(origin) {
            return Ok(true);
        }
        Err(self
            .refuse(
                what,
                format!(
                    "peer {} may not apply changes that originated at {origin:?}",
                    p.name
                ),
            )
            .await)
    }

    /// Whether a blob this site stores may be linked into a repository for this peer without
    /// it sending the bytes: only when the peer could already reach the blob (it is held by a
    /// repository the peer may read or write). Otherwise the peer proves it has the bytes by
    /// sending them.
    fn may_link(&self, digest: &Digest) -> Result<bool> {
        let Some(p) = &self.policy else {
            return Ok(true);
        };
        let holders = self
            .store
            .index()
            .holders(digest, stowage_index::HoldKind::Link)
            .map_err(StoreError::from)?;
        Ok(holders.iter().any(|(r, _)| p.sees(r.as_str())))
    }

    /// The same site, recording its changes as made by `actor` (transfers in progress are
    /// shared with the original).
    pub fn acting_for(&self, actor: Actor) -> Self {
        Self {
            actor,
            ..self.clone()
        }
    }

    /// Who changes made through this value are recorded as.
    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    /// Stores received blobs in durable parts of `n` bytes instead of [`PART_BYTES`].
    pub fn with_part_bytes(mut self, n: usize) -> Self {
        self.part_bytes = n.max(1);
        self
    }

    /// The store.
    pub fn store(&self) -> &ReplicaStore {
        &self.store
    }

    /// This site's name and last feed sequence.
    pub fn hello(&self) -> Result<(String, u64)> {
        Ok((
            self.store.site().unwrap_or_default().to_string(),
            self.store.index().last_seq().map_err(StoreError::from)?,
        ))
    }

    /// Feed entries from `from`, at most `limit`; with `wait`, waits that long for the first
    /// entry when there is none yet. Also returns the last sequence.
    pub async fn feed(&self, from: u64, limit: usize, wait: Duration) -> Result<FeedPage> {
        let limit = limit.clamp(1, MAX_FEED_PAGE);
        let mut watch = self.store.feed_watch();
        if *watch.borrow_and_update() < from && !wait.is_zero() {
            let _ = tokio::time::timeout(wait, watch.wait_for(|last| *last >= from)).await;
        }
        let idx = self.store.index();
        let last = idx.last_seq().map_err(StoreError::from)?;
        let mut events = idx.feed(from, limit).map_err(StoreError::from)?;
        // After the events: a trim between the two reads then shows as a gap, never hides one.
        let trimmed_to = idx.feed_trimmed_to().map_err(StoreError::from)?;
        // A trim between the reads may pass the `last` read first: never send a page whose
        // trimmed point is beyond its last sequence (readers refuse such a page).
        let scanned_to = events.last().map(|(s, _)| *s);
        // Entries appended after `last` was read may be in the page: the page's end covers them.
        let last = last.max(trimmed_to).max(scanned_to.unwrap_or(0));
        if let Some(p) = &self.policy {
            if p.read.is_empty() {
                return Err(self
                    .refuse(
                        "ReadFeed",
                        format!("peer {} may not read this site", p.name),
                    )
                    .await);
            }
            // Entries of repositories the peer may not read are skipped (the page still says
            // how far it got, so the peer's cursor moves past them).
            events.retain(|(_, e)| p.reads(&e.repo));
        }
        Ok(FeedPage {
            scanned_to,
            events,
            last,
            trimmed_to,
        })
    }

    /// The transfer session of `digest`, if one is open: (repository, upload id, bytes held).
    async fn session(&self, digest: &Digest) -> Result<Option<(RepoName, String, u64)>> {
        let r = match self.store.index().transfer_session(digest) {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(None),
            // Starting the transfer over is safe; the unreadable record is replaced.
            Err(e @ IndexError::Corrupt(_)) => {
                tracing::warn!(%digest, error = %e, "unreadable transfer session record; starting over");
                return Ok(None);
            }
            Err(e) => return Err(StoreError::from(e).into()),
        };
        let repo = r.repo;
        match self
            .store
            .upload_status(&self.actor, &repo, &r.upload)
            .await
        {
            Ok(st) => Ok(Some((repo, r.upload, st.size))),
            // Expired by garbage collection, or never got its first part before a restart.
            Err(StoreError::BlobUploadUnknown(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn write_session(&self, digest: &Digest, r: Option<TransferSession>) -> Result<()> {
        self.store.put_transfer_session(digest, r.as_ref()).await?;
        Ok(())
    }

    /// Which of `blobs` the site lacks in `repo`, with the bytes it holds of each; blobs it
    /// stores under other repositories are linked into `repo` and not reported. All of them
    /// are kept from garbage collection for `hold`.
    pub async fn missing_blobs(
        &self,
        repo: &RepoName,
        blobs: &[(Digest, u64)],
        hold: Duration,
    ) -> Result<Vec<(Digest, u64)>> {
        self.may_write("MissingBlobs", repo).await?;
        let until = self.store.now_ms() + hold.as_millis() as u64;
        self.store.pin_blobs(blobs.iter().map(|(d, _)| d), until)?;
        let mut out = Vec::new();
        for (digest, size) in blobs {
            // Refuse a size disagreement before linking anything.
            self.check_size(digest, *size)?;
            if !self.may_link(digest)? {
                let held = self.session(digest).await?.map(|(_, _, n)| n).unwrap_or(0);
                out.push((digest.clone(), held));
                continue;
            }
            match self.store.link_blob(&self.actor, repo, digest).await? {
                Some(have) if have == *size => {}
                Some(have) => {
                    return Err(ReplError::Invalid(format!(
                        "blob {digest} is {have} bytes here, the source says {size}"
                    )))
                }
                None => {
                    let held = self.session(digest).await?.map(|(_, _, n)| n).unwrap_or(0);
                    out.push((digest.clone(), held));
                }
            }
        }
        Ok(out)
    }

    /// Fails when the site stores `digest` with another size than `size`.
    fn check_size(&self, digest: &Digest, size: u64) -> Result<()> {
        if let Some(rec) = self.store.index().blob(digest).map_err(StoreError::from)? {
            if rec.size != size {
                return Err(ReplError::Invalid(format!(
                    "blob {digest} is {} bytes here, the source says {size}",
                    rec.size
                )));
            }
        }
        Ok(())
    }

    /// Keeps `digest` from garbage collection for [`TRANSFER_HOLD`] from now.
    fn hold(&self, digest: &Digest) -> Result<()> {
        let until = self.store.now_ms() + TRANSFER_HOLD.as_millis() as u64;
        self.store.pin_blobs([digest], until)?;
        Ok(())
    }

    /// Receives a blob's bytes from `h.offset`, storing them in durable parts; verifies and
    /// commits the blob when the last byte arrives. Returns the bytes held and whether the blob
    /// is complete. A stream that ends early keeps what arrived; a stream error keeps it too
    /// and is returned.
    pub async fn put_blob<S>(&self, h: BlobHeader, mut data: S) -> Result<(u64, bool)>
    where
        S: Stream<Item = Result<Bytes>> + Unpin + Send,
    {
        self.may_write("PutBlob", &h.repo).await?;
        self.check_size(&h.digest, h.size)?;
        if self.may_link(&h.digest)? {
            if let Some(size) = self
                .store
                .link_blob(&self.actor, &h.repo, &h.digest)
                .await?
            {
                return Ok((size, true));
            }
        }
        self.hold(&h.digest)?;
        if !self
            .receiving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(h.digest.clone())
        {
            return Err(ReplError::Unavailable(format!(
                "blob {} is being received by another transfer",
                h.digest
            )));
        }
        let _guard = Receiving {
            set: self.receiving.clone(),
            digest: h.digest.clone(),
        };
        let (repo, id, mut held) = match self.session(&h.digest).await? {
            Some(s) => s,
            None => {
                let st = self.store.start_upload(&self.actor, &h.repo).await?;
                self.write_session(
                    &h.digest,
                    Some(TransferSession {
                        repo: h.repo.clone(),
                        upload: st.id.clone(),
                    }),
                )
                .await?;
                (h.repo.clone(), st.id, 0)
            }
        };
        if h.offset != held {
            return Err(ReplError::OffsetMismatch { held });
        }
        // Each part streams straight from the peer into the blob store (receiving and writing
        // overlap); the part is durable and recorded when its append returns.
        let mut carry: Option<Bytes> = None;
        let mut fed = FeedState::default();
        while held < h.size && !fed.ended {
            let left = (h.size - held).min(self.part_bytes as u64) as usize;
            let part = PartFeed {
                input: &mut data,
                carry: &mut carry,
                left,
                state: &mut fed,
            };
            let st = self
                .store
                .append_upload(&self.actor, &repo, &id, Some(held), part)
                .await
                .map_err(|e| ReplError::from(e).context(format!("storing blob {}", h.digest)))?;
            held = st.size;
            self.hold(&h.digest)?;
        }
        if let Some(e) = fed.error.take() {
            return Err(e);
        }
        if held < h.size {
            return Ok((held, false));
        }
        let extra = match carry {
            Some(b) => !b.is_empty(),
            None if fed.ended => false,
            None => matches!(data.next().await, Some(Ok(b)) if !b.is_empty()),
        };
        if extra {
            return Err(ReplError::Invalid(format!(
                "blob {} is {} bytes but more arrived",
                h.digest, h.size
            )));
        }
        let finished = self
            .store
            .finish_upload(
                &self.actor,
                &repo,
                &id,
                &h.digest,
                None::<futures::stream::Empty<std::result::Result<Bytes, Infallible>>>,
            )
            .await;
        // Finished or refused, the session is over (a digest mismatch drops the bytes).
        self.write_session(&h.digest, None).await?;
        finished
            .map_err(|e| ReplError::from(e).context(format!("committing blob {}", h.digest)))?;
        if repo != h.repo {
            self.store
                .link_blob(&self.actor, &h.repo, &h.digest)
                .await?;
        }
        Ok((h.size, true))
    }

    /// A manifest's bytes, if `repo` holds it.
    pub fn get_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<Option<ManifestDoc>> {
        match self
            .store
            .get_manifest(repo, &stowage_core::Reference::Digest(digest.clone()))
        {
            Ok(m) => Ok(Some(ManifestDoc {
                media_type: m.media_type,
                bytes: m.bytes,
            })),
            Err(StoreError::ManifestUnknown(_)) | Err(StoreError::NameUnknown(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether `repo` holds manifest `digest`.
    pub fn has_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        Ok(self
            .store
            .index()
            .manifest(repo, digest)
            .map_err(StoreError::from)?
            .is_some())
    }

    /// Stores a replicated manifest; whether it was new.
    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        doc: ManifestDoc,
        origin: &str,
    ) -> Result<bool> {
        self.may_write("PutManifest", repo).await?;
        if !self.relay("PutManifest", origin).await? {
            return Ok(false);
        }
        Ok(self
            .store
            .put_manifest(
                &self.actor,
                repo,
                digest,
                &doc.media_type,
                doc.bytes,
                origin,
            )
            .await?)
    }

    /// Removes a manifest deleted at its origin (see [`ReplicaStore::delete_manifest`]).
    pub async fn delete_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        origin: &str,
    ) -> Result<bool> {
        if let Some(p) = &self.policy {
            if !p.deletes(repo) {
                return Err(self
                    .refuse(
                        "DeleteManifest",
                        format!("peer {} may not delete in {repo}", p.name),
                    )
                    .await);
            }
        }
        if !self.relay("DeleteManifest", origin).await? {
            return Ok(false);
        }
        Ok(self
            .store
            .delete_manifest(&self.actor, repo, digest, origin)
            .await?)
    }

    /// A tag's state.
    pub fn tag_state(&self, repo: &RepoName, tag: &str) -> Result<Option<TagState>> {
        Ok(self.store.tag_state(repo, tag)?)
    }

    /// Applies a tag state if newer; whether it changed anything.
    pub async fn apply_tag(&self, repo: &RepoName, tag: &str, state: &TagState) -> Result<bool> {
        if let Some(p) = &self.policy {
            let delete = matches!(state, TagState::Deleted { .. });
            if !p.writes_tag(repo, tag, delete) {
                return Err(self
                    .refuse(
                        "ApplyTag",
                        format!(
                            "peer {} may not {} tag {repo}:{tag}",
                            p.name,
                            if delete { "delete" } else { "set" }
                        ),
                    )
                    .await);
            }
            let v = state.version();
            if !self.relay("ApplyTag", &v.origin).await? {
                return Ok(false);
            }
            let now = self.store.now_ms();
            if v.ms > now.saturating_add(p.max_skew_ms) {
                return Err(self
                    .refuse(
                        "ApplyTag",
                        format!(
                            "tag version {} is {} ms ahead of this site's clock, more than the allowed skew of {} ms",
                            v.ms,
                            v.ms - now,
                            p.max_skew_ms
                        ),
                    )
                    .await);
            }
        }
        Ok(self.store.apply_tag(&self.actor, repo, tag, state).await?)
    }
}
