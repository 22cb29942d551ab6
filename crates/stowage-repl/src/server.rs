//! The `Replication` gRPC service: this site's side for peers, and `Status`, `Sync`,
//! `ListParked` and `RetryParked` for the operator's `stowage repl`.
//!
//! The same service is mounted twice, in two roles: on the replication listener for peers
//! (every call identified by the peer's client certificate, [`PeerGate`]), and on the admin
//! listener for the operator (only the operator calls, behind the admin authentication). A
//! call made in the wrong role is refused.
//!
//! A peer may apply only changes whose origin it may relay (its own site and the sites its
//! configuration lists), and no tag version further in the future than the configured clock
//! skew: a forged origin could otherwise delete or freeze any tag on every site. Every refusal
//! is audited.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use stowage_auth::net::ConnInfo;
use stowage_core::Actor;
use stowage_index::{AuditAction, AuditOutcome};
use stowage_rpc::v1 as pb;
use stowage_rpc::v1::replication_server::{Replication, ReplicationServer};
use tonic::{Request, Response, Status, Streaming};

use crate::anti_entropy::sync_to_proto;
use crate::convert;
use crate::error::ReplError;
use crate::glob::Filters;
use crate::local::{BlobHeader, Local};
use crate::parked::{ParkReason, Parked, ParkedId};
use crate::policy::{Grant, PeerPolicy};
use crate::remote::{rechunk, CHUNK, MAX_MESSAGE};
use crate::replicator::{PeerAccess, PeerRole, Replicator};
use crate::retry::{RetryOutcome, RetrySelection};

/// Longest long poll a reader may ask for.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// Which callers a mounted copy of the service serves.
#[derive(Clone, Debug)]
pub enum Role {
    /// Peers on the replication listener, identified by [`PeerGate`].
    Peers(Arc<PeerGate>),
    /// The operator on the admin listener (authenticated there): the operator calls only.
    Operator,
}

/// Who may call the replication listener, and with what rights (see [`crate::policy`]).
#[derive(Debug)]
pub struct PeerGate {
    grants: Vec<PeerAccess>,
    /// The listener is plain HTTP on loopback and authentication is off: callers without a
    /// certificate are trusted as a peer with every right (development and tests only; anyone
    /// on loopback can already do everything through the unauthenticated API then).
    trust_loopback: bool,
    /// A replicated tag version more than this far ahead of this site's clock is refused.
    max_skew_ms: u64,
}

impl PeerGate {
    /// A gate for the peers `grants` name.
    pub fn new(grants: Vec<PeerAccess>, trust_loopback: bool, max_skew: Duration) -> Self {
        Self {
            grants,
            trust_loopback,
            max_skew_ms: u64::try_from(max_skew.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// The peer behind a request and its rights: every grant whose identity its verified
    /// client certificate carries (`None` rights: a trusted loopback caller).
    fn identify<T>(&self, req: &Request<T>) -> Result<(Option<Arc<PeerPolicy>>, Actor), Status> {
        let info = req.extensions().get::<ConnInfo>();
        let addr = info.map(|c| c.remote);
        if let Some(cert) = info.and_then(|c| c.client_cert.as_ref()) {
            let found: Vec<&PeerAccess> = self
                .grants
                .iter()
                .filter(|p| {
                    p.identity
                        .as_deref()
                        .is_some_and(|expected| cert.matches(expected))
                })
                .collect();
            let Some(first) = found.first() else {
                return Err(Status::permission_denied(format!(
                    "certificate {cert} is not a configured replication peer"
                )));
            };
            let mut policy = PeerPolicy {
                name: first.name.clone(),
                origins: Vec::new(),
                read: Vec::new(),
                write: Vec::new(),
                max_skew_ms: self.max_skew_ms,
            };
            for g in &found {
                policy.origins.push(g.site.clone());
                policy.origins.extend(g.origins.iter().cloned());
                let grant = Grant {
                    filters: g.filters.clone(),
                    deletes: g.replicate_deletes,
                };
                match g.role {
                    PeerRole::Serve => policy.read.push(grant),
                    PeerRole::Receive => policy.write.push(grant),
                }
            }
            return Ok((Some(Arc::new(policy)), Actor::peer(&first.name, addr)));
        }
        if self.trust_loopback && addr.is_none_or(|a| a.ip().is_loopback()) {
            return Ok((None, Actor::peer("loopback", addr)));
        }
        Err(Status::unauthenticated(
            "replication needs a client certificate of a configured peer",
        ))
    }
}

/// The service.
#[derive(Clone, Debug)]
pub struct ReplicationService {
    local: Local,
    replicator: Option<Replicator>,
    role: Role,
}

fn filters(f: Option<pb::Filters>) -> Result<Filters, Status> {
    let f = f.unwrap_or_default();
    for list in [&f.repositories, &f.tags] {
        crate::glob::check_patterns(list)
            .map_err(|e| Status::invalid_argument(format!("filters: {e}")))?;
    }
    Ok(Filters {
        repositories: f.repositories,
        tags: f.tags,
    })
}

type BlobStreamOut = Pin<Box<dyn Stream<Item = Result<pb::BlobChunk, Status>> + Send>>;

/// Logs failures the peer will see, with what was asked.
fn fail(doing: &str, e: ReplError) -> Status {
    match &e {
        ReplError::Storage(_) | ReplError::Task(_) | ReplError::Record(_) => {
            tracing::error!(error = %e, "replication request failed: {doing}")
        }
        ReplError::SourceCorrupt { .. } => {
            tracing::error!(error = %e, "replication request met a corrupt blob: {doing}")
        }
        _ => tracing::debug!(error = %e, "replication request refused: {doing}"),
    }
    e.into()
}

impl ReplicationService {
    /// Serves `local` in `role`; `replicator` answers `Status` and `Sync` (absent: no peers
    /// configured).
    pub fn new(local: Local, replicator: Option<Replicator>, role: Role) -> Self {
        Self {
            local,
            replicator,
            role,
        }
    }

    /// The local site acting for (and bounded by the rights of) the peer behind a call.
    /// Refused in the operator role and for callers that are not configured peers (audited).
    async fn peer<T>(&self, req: &Request<T>, what: &str) -> Result<Local, Status> {
        let gate = match &self.role {
            Role::Peers(g) => g,
            Role::Operator => {
                return Err(Status::permission_denied(format!(
                    "{what} is served to peers on the replication listener, not here"
                )))
            }
        };
        match gate.identify(req) {
            Ok((policy, actor)) => Ok(self.local.acting_for(actor).with_policy(policy)),
            Err(status) => {
                let addr = req.extensions().get::<ConnInfo>().map(|c| c.remote);
                self.refused(&Actor::anonymous(addr), what, status.message())
                    .await;
                Err(status)
            }
        }
    }

    async fn refused(&self, actor: &Actor, what: &str, why: &str) {
        let store = self.local.store();
        store
            .auditor()
            .record(
                store
                    .audit_entry(actor, AuditAction::Replication)
                    .target(what)
                    .outcome(AuditOutcome::Denied)
                    .detail(why.to_string()),
            )
            .await;
    }

    fn operator_only(&self, what: &str) -> Result<(), Status> {
        match self.role {
            Role::Operator => Ok(()),
            Role::Peers(_) => Err(Status::permission_denied(format!(
                "{what} is an operator call: use the admin listener"
            ))),
        }
    }

    /// The tonic service, with message limits fit for manifests and repository states.
    pub fn into_server(self) -> ReplicationServer<Self> {
        ReplicationServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }
}

#[tonic::async_trait]
impl Replication for ReplicationService {
    async fn hello(
        &self,
        req: Request<pb::HelloRequest>,
    ) -> Result<Response<pb::HelloResponse>, Status> {
        self.peer(&req, "Hello").await?;
        let (site, seq) = self.local.hello().map_err(|e| fail("hello", e))?;
        tracing::debug!(peer = %req.get_ref().site, "hello from a peer");
        Ok(Response::new(pb::HelloResponse {
            site,
            feed_sequence: seq,
            version: env!("CARGO_PKG_VERSION").to_string(),
        }))
    }

    async fn read_feed(
        &self,
        req: Request<pb::ReadFeedRequest>,
    ) -> Result<Response<pb::ReadFeedResponse>, Status> {
        let local = self.peer(&req, "ReadFeed").await?;
        let r = req.into_inner();
        let wait = Duration::from_millis(u64::from(r.wait_ms)).min(MAX_WAIT);
        let page = local
            .feed(r.from_sequence, r.limit as usize, wait)
            .await
            .map_err(|e| fail("reading the feed", e))?;
        // The page says how far it went, so a peer that may read only some repositories
        // moves its cursor past the entries it was not sent.
        Ok(Response::new(pb::ReadFeedResponse {
            events: page
                .events
                .iter()
                .map(|(seq, e)| convert::event_to_proto(*seq, e))
                .collect(),
            last_sequence: page.last,
            scanned_to: page.scanned_to.unwrap_or(0),
            trimmed_to: page.trimmed_to,
        }))
    }

    async fn missing_blobs(
        &self,
        req: Request<pb::MissingBlobsRequest>,
    ) -> Result<Response<pb::MissingBlobsResponse>, Status> {
        let local = self.peer(&req, "MissingBlobs").await?;
        let r = req.into_inner();
        let repo = convert::repo(&r.repository)?;
        let blobs = r
            .blobs
            .iter()
            .map(|b| Ok((convert::digest(&b.digest)?, b.size)))
            .collect::<Result<Vec<_>, ReplError>>()?;
        let hold = Duration::from_millis(r.hold_ms).min(Duration::from_secs(24 * 3600));
        let missing = local
            .missing_blobs(&repo, &blobs, hold)
            .await
            .map_err(|e| fail("listing missing blobs", e))?;
        Ok(Response::new(pb::MissingBlobsResponse {
            missing: missing
                .into_iter()
                .map(|(d, offset)| pb::MissingBlob {
                    digest: d.to_string(),
                    offset,
                })
                .collect(),
        }))
    }

    async fn put_blob(
        &self,
        req: Request<Streaming<pb::BlobChunk>>,
    ) -> Result<Response<pb::PutBlobResponse>, Status> {
        let local = self.peer(&req, "PutBlob").await?;
        let mut inbound = req.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty blob stream"))?;
        let h = first.header.ok_or_else(|| {
            Status::invalid_argument("the first blob chunk must carry the header")
        })?;
        let header = BlobHeader {
            repo: convert::repo(&h.repository)?,
            digest: convert::digest(&h.digest)?,
            size: h.size,
            offset: h.offset,
        };
        let digest = header.digest.clone();
        let head = futures::stream::iter((!first.data.is_empty()).then(|| Ok(first.data)));
        let rest = inbound.map(|m| match m {
            Ok(c) => Ok(c.data),
            Err(s) => Err(ReplError::Unavailable(format!(
                "blob stream broke off: {s}"
            ))),
        });
        let (received, complete) = local
            .put_blob(header, head.chain(rest))
            .await
            .map_err(|e| fail(&format!("receiving blob {digest}"), e))?;
        Ok(Response::new(pb::PutBlobResponse { received, complete }))
    }

    type GetBlobStream = BlobStreamOut;

    async fn get_blob(
        &self,
        req: Request<pb::GetBlobRequest>,
    ) -> Result<Response<Self::GetBlobStream>, Status> {
        let local = self.peer(&req, "GetBlob").await?;
        let r = req.into_inner();
        let repo = convert::repo(&r.repository)?;
        let digest = convert::digest(&r.digest)?;
        local.may_read("GetBlob", &repo).await?;
        let (size, data) = local
            .read_blob(&repo, &digest, r.offset)
            .await
            .map_err(|e| fail(&format!("reading blob {digest}"), e))?;
        let header = pb::BlobChunk {
            header: Some(pb::BlobHeader {
                repository: r.repository,
                digest: r.digest,
                size,
                offset: r.offset,
            }),
            data: Bytes::new(),
        };
        let body = rechunk(data, CHUNK).map(|item| match item {
            Ok(b) => Ok(pb::BlobChunk {
                header: None,
                data: b,
            }),
            Err(e) => Err(Status::from(e)),
        });
        let out = futures::stream::once(futures::future::ready(Ok(header))).chain(body);
        Ok(Response::new(Box::pin(out)))
    }

    async fn get_manifest(
        &self,
        req: Request<pb::GetManifestRequest>,
    ) -> Result<Response<pb::Manifest>, Status> {
        let local = self.peer(&req, "GetManifest").await?;
        let r = req.into_inner();
        let repo = convert::repo(&r.repository)?;
        let digest = convert::digest(&r.digest)?;
        local.may_see("GetManifest", &repo).await?;
        let doc = local
            .get_manifest(&repo, &digest)
            .map_err(|e| fail("reading a manifest", e))?
            .ok_or_else(|| Status::not_found(format!("{repo}@{digest}")))?;
        Ok(Response::new(pb::Manifest {
            repository: r.repository,
            digest: r.digest,
            media_type: doc.media_type,
            content: doc.bytes,
            origin: String::new(),
        }))
    }

    async fn put_manifest(
        &self,
        req: Request<pb::Manifest>,
    ) -> Result<Response<pb::PutManifestResponse>, Status> {
        let local = self.peer(&req, "PutManifest").await?;
        let m = req.into_inner();
        let repo = convert::repo(&m.repository)?;
        let digest = convert::digest(&m.digest)?;
        if m.origin.is_empty() {
            return Err(Status::invalid_argument(
                "a replicated manifest needs its origin site",
            ));
        }
        let stored = local
            .put_manifest(
                &repo,
                &digest,
                crate::local::ManifestDoc {
                    media_type: m.media_type,
                    bytes: m.content,
                },
                &m.origin,
            )
            .await
            .map_err(|e| fail(&format!("storing manifest {repo}@{digest}"), e))?;
        Ok(Response::new(pb::PutManifestResponse { stored }))
    }

    async fn delete_manifest(
        &self,
        req: Request<pb::DeleteManifestRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let local = self.peer(&req, "DeleteManifest").await?;
        let r = req.into_inner();
        let repo = convert::repo(&r.repository)?;
        let digest = convert::digest(&r.digest)?;
        if r.origin.is_empty() {
            return Err(Status::invalid_argument(
                "a replicated delete needs its origin site",
            ));
        }
        let applied = local
            .delete_manifest(&repo, &digest, &r.origin)
            .await
            .map_err(|e| fail(&format!("deleting manifest {repo}@{digest}"), e))?;
        Ok(Response::new(pb::ApplyResponse { applied }))
    }

    async fn get_tag(
        &self,
        req: Request<pb::GetTagRequest>,
    ) -> Result<Response<pb::TagState>, Status> {
        let local = self.peer(&req, "GetTag").await?;
        let r = req.into_inner();
        let repo = convert::repo(&r.repository)?;
        local.may_see("GetTag", &repo).await?;
        let state = local
            .tag_state(&repo, &r.tag)
            .map_err(|e| fail("reading a tag", e))?;
        Ok(Response::new(convert::tag_to_proto(
            &r.repository,
            &r.tag,
            state.as_ref(),
        )))
    }

    async fn apply_tag(
        &self,
        req: Request<pb::TagState>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let local = self.peer(&req, "ApplyTag").await?;
        let t = req.into_inner();
        let repo = convert::repo(&t.repository)?;
        stowage_core::Tag::parse(&t.tag)
            .map_err(|e| Status::invalid_argument(format!("tag {:?}: {e}", t.tag)))?;
        let state = convert::tag_from_proto(&t)?
            .ok_or_else(|| Status::invalid_argument("a tag state needs a version and origin"))?;
        let applied = local
            .apply_tag(&repo, &t.tag, &state)
            .await
            .map_err(|e| fail(&format!("applying tag {repo}:{}", t.tag), e))?;
        Ok(Response::new(pb::ApplyResponse { applied }))
    }

    async fn range_hashes(
        &self,
        req: Request<pb::RangeHashesRequest>,
    ) -> Result<Response<pb::RangeHashesResponse>, Status> {
        let local = self.peer(&req, "RangeHashes").await?;
        let r = req.into_inner();
        let f = filters(r.filters)?;
        if r.buckets.is_empty() {
            let buckets = local
                .bucket_hashes(&f)
                .await
                .map_err(|e| fail("hashing buckets", e))?;
            return Ok(Response::new(pb::RangeHashesResponse {
                buckets: buckets.iter().map(|b| b.to_vec()).collect(),
                repositories: Vec::new(),
            }));
        }
        let buckets = r
            .buckets
            .iter()
            .map(|b| {
                u8::try_from(*b)
                    .map_err(|_| Status::invalid_argument(format!("bucket {b} is not 0-255")))
            })
            .collect::<Result<Vec<u8>, Status>>()?;
        let repos = local
            .repo_hashes(&f, &buckets)
            .await
            .map_err(|e| fail("hashing repositories", e))?;
        Ok(Response::new(pb::RangeHashesResponse {
            buckets: Vec::new(),
            repositories: repos
                .into_iter()
                .map(|(repository, hash)| pb::RepoHash {
                    repository,
                    hash: hash.to_vec(),
                })
                .collect(),
        }))
    }

    async fn repo_state(
        &self,
        req: Request<pb::RepoStateRequest>,
    ) -> Result<Response<pb::RepoStateResponse>, Status> {
        let local = self.peer(&req, "RepoState").await?;
        let r = req.into_inner();
        let repo = convert::repo(&r.repository)?;
        local.may_see("RepoState", &repo).await?;
        let state = local
            .repo_state(&repo, &filters(r.filters)?)
            .await
            .map_err(|e| fail("reading a repository's state", e))?;
        Ok(Response::new(pb::RepoStateResponse {
            tags: state
                .tags
                .iter()
                .map(|(t, s)| convert::tag_to_proto(&r.repository, t, Some(s)))
                .collect(),
            manifests: state.manifests.iter().map(|d| d.to_string()).collect(),
            deleted_manifests: state
                .deleted_manifests
                .iter()
                .map(|d| d.to_string())
                .collect(),
        }))
    }

    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.operator_only("Status")?;
        let (site, seq) = self.local.hello().map_err(|e| fail("status", e))?;
        Ok(Response::new(pb::StatusResponse {
            site,
            feed_sequence: seq,
            peers: self
                .replicator
                .as_ref()
                .map(|r| r.status().iter().map(crate::status::to_proto).collect())
                .unwrap_or_default(),
            corrupt_blobs_quarantined: self.local.corrupt_found(),
        }))
    }

    async fn sync(
        &self,
        req: Request<pb::SyncRequest>,
    ) -> Result<Response<pb::SyncResponse>, Status> {
        self.operator_only("Sync")?;
        let peer = req.into_inner().peer;
        let repl = self
            .replicator
            .as_ref()
            .ok_or_else(|| Status::not_found("no replication peers are configured"))?;
        let r = repl
            .sync(&peer)
            .await
            .map_err(|e| fail(&format!("anti-entropy with {peer}"), e))?;
        tracing::info!(peer, ?r, "anti-entropy on request done");
        Ok(Response::new(sync_to_proto(&r)))
    }

    async fn list_parked(
        &self,
        req: Request<pb::ListParkedRequest>,
    ) -> Result<Response<pb::ListParkedResponse>, Status> {
        self.operator_only("ListParked")?;
        let peer = req.into_inner().peer;
        let repl = self.replicator()?;
        let entries = repl
            .parked((!peer.is_empty()).then_some(peer.as_str()))
            .map_err(|e| fail("listing parked entries", e))?;
        Ok(Response::new(pb::ListParkedResponse {
            entries: entries
                .iter()
                .map(|(id, p)| parked_to_proto(id, p))
                .collect(),
        }))
    }

    async fn retry_parked(
        &self,
        req: Request<pb::RetryParkedRequest>,
    ) -> Result<Response<pb::RetryParkedResponse>, Status> {
        self.operator_only("RetryParked")?;
        // The admin gate put the operator's identity on the call.
        let actor = req
            .extensions()
            .get::<Actor>()
            .cloned()
            .unwrap_or_else(|| Actor::system("admin"));
        let r = req.into_inner();
        let which = match (r.all, r.ids.is_empty()) {
            (true, true) => RetrySelection::All {
                peer: (!r.peer.is_empty()).then_some(r.peer),
            },
            (false, false) => RetrySelection::Ids(
                r.ids
                    .iter()
                    .map(|id| ParkedId::parse(id))
                    .collect::<Result<_, ReplError>>()?,
            ),
            (true, false) => {
                return Err(Status::invalid_argument(
                    "name entries or ask for all of them, not both",
                ))
            }
            (false, true) => {
                return Err(Status::invalid_argument(
                    "name the entries to retry, or ask for all of them",
                ))
            }
        };
        let results = self
            .replicator()?
            .retry_parked(which, &actor)
            .await
            .map_err(|e| fail("retrying parked entries", e))?;
        Ok(Response::new(pb::RetryParkedResponse {
            results: results
                .into_iter()
                .map(|r| pb::RetryResult {
                    id: r.id.to_string(),
                    outcome: match r.outcome {
                        RetryOutcome::Replicated => pb::RetryOutcome::Replicated,
                        RetryOutcome::StillParked => pb::RetryOutcome::StillParked,
                        RetryOutcome::Unknown => pb::RetryOutcome::Unknown,
                    } as i32,
                    repaired_from: r.repaired_from.unwrap_or_default(),
                    error: r.error.unwrap_or_default(),
                })
                .collect(),
        }))
    }
}

impl ReplicationService {
    fn replicator(&self) -> Result<&Replicator, Status> {
        self.replicator
            .as_ref()
            .ok_or_else(|| Status::not_found("no replication peers are configured"))
    }
}

/// A parked entry for the wire.
fn parked_to_proto(id: &ParkedId, p: &Parked) -> pb::ParkedEntry {
    pb::ParkedEntry {
        id: id.to_string(),
        peer: id.peer.clone(),
        sequence: id.seq,
        event: Some(convert::event_to_proto(id.seq, &p.event)),
        source_site: p.source_site.clone(),
        reason: match p.reason {
            ParkReason::SourceCorrupt => pb::ParkReason::SourceCorrupt,
        } as i32,
        blob: p.blob.to_string(),
        parked_ms: p.parked_ms,
        attempts: p.attempts,
        last_attempt_ms: p.last_attempt_ms,
        last_error: p.last_error.clone(),
    }
}
