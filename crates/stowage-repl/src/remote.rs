//! A peer site reached over gRPC (its `--admin-listen` address).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use stowage_core::{Digest, RepoName};
use stowage_rpc::v1 as pb;
use stowage_rpc::v1::replication_client::ReplicationClient;
use stowage_store::TagState;
use tonic::transport::{Channel, Endpoint};
use tonic::Request;

use crate::convert;
use crate::error::{ReplError, Result};
use crate::glob::Filters;
use crate::local::{BlobHeader, ByteStream, FeedPage, ManifestDoc, RepoState};

/// Largest gRPC message accepted (manifests are at most 4 MiB; repository states may be more).
pub const MAX_MESSAGE: usize = 64 << 20;

/// Data bytes per blob chunk message.
pub const CHUNK: usize = 1 << 20;

/// Deadline of calls that do not stream blob bytes.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A peer site.
#[derive(Clone, Debug)]
pub struct Remote {
    endpoint: String,
    client: ReplicationClient<Channel>,
}

fn req<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.set_timeout(CALL_TIMEOUT);
    r
}

fn filters_proto(f: &Filters) -> pb::Filters {
    pb::Filters {
        repositories: f.repositories.clone(),
        tags: f.tags.clone(),
    }
}

fn hash32(bytes: &[u8], what: &str) -> Result<[u8; 32]> {
    bytes
        .try_into()
        .map_err(|_| ReplError::Invalid(format!("{what}: hash of {} bytes", bytes.len())))
}

/// Splits byte buffers into pieces of at most `max` bytes (zero copy).
pub fn rechunk<S>(stream: S, max: usize) -> impl Stream<Item = Result<Bytes>> + Send
where
    S: Stream<Item = Result<Bytes>> + Send,
{
    stream.flat_map(move |item| {
        let pieces: Vec<Result<Bytes>> = match item {
            Ok(mut b) => {
                let mut v = Vec::with_capacity(b.len() / max.max(1) + 1);
                while b.len() > max {
                    v.push(Ok(b.split_to(max)));
                }
                if !b.is_empty() {
                    v.push(Ok(b));
                }
                v
            }
            Err(e) => vec![Err(e)],
        };
        futures::stream::iter(pieces)
    })
}

impl Remote {
    /// A lazily connected client for `endpoint` (`http://host:port`, or `https://host:port`
    /// with `tls`: mutual TLS, the peer's certificate identity checked); it reconnects by
    /// itself after failures.
    pub fn new(endpoint: &str, tls: Option<Arc<rustls::ClientConfig>>) -> Result<Self> {
        let ep = Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| ReplError::Invalid(format!("peer endpoint {endpoint:?}: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .max_frame_size(Some(1 << 20))
            .initial_stream_window_size(Some(4 << 20))
            .initial_connection_window_size(Some(16 << 20));
        let channel = match (endpoint.starts_with("https://"), tls) {
            (true, Some(cfg)) => {
                ep.connect_with_connector_lazy(stowage_auth::tls::PeerConnector::new(cfg))
            }
            (true, None) => {
                return Err(ReplError::Invalid(format!(
                    "peer endpoint {endpoint:?} is https but no TLS is configured for replication \
                     ([replication.tls])"
                )))
            }
            (false, _) => ep.connect_lazy(),
        };
        let client = ReplicationClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        Ok(Self {
            endpoint: endpoint.to_string(),
            client,
        })
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn client(&self) -> ReplicationClient<Channel> {
        self.client.clone()
    }

    /// The peer's site name and last feed sequence.
    pub async fn hello(&self, me: &str) -> Result<(String, u64)> {
        let r = self
            .client()
            .hello(req(pb::HelloRequest {
                site: me.to_string(),
            }))
            .await
            .map_err(|s| ReplError::from(s).context(format!("hello to {}", self.endpoint)))?
            .into_inner();
        Ok((r.site, r.feed_sequence))
    }

    /// The peer's feed from `from` (long poll up to `wait`).
    pub async fn feed(&self, from: u64, limit: usize, wait: Duration) -> Result<FeedPage> {
        let mut r = Request::new(pb::ReadFeedRequest {
            from_sequence: from,
            limit: limit as u32,
            wait_ms: wait.as_millis() as u32,
        });
        r.set_timeout(CALL_TIMEOUT + wait);
        let resp = self
            .client()
            .read_feed(r)
            .await
            .map_err(|s| ReplError::from(s).context("reading the peer's feed"))?
            .into_inner();
        feed_page(from, resp)
    }

    /// Which blobs the peer lacks in `repo` (see [`crate::Local::missing_blobs`]).
    pub async fn missing_blobs(
        &self,
        repo: &RepoName,
        blobs: &[(Digest, u64)],
        hold: Duration,
    ) -> Result<Vec<(Digest, u64)>> {
        let r = self
            .client()
            .missing_blobs(req(pb::MissingBlobsRequest {
                repository: repo.to_string(),
                blobs: blobs
                    .iter()
                    .map(|(d, s)| pb::BlobRef {
                        digest: d.to_string(),
                        size: *s,
                    })
                    .collect(),
                hold_ms: hold.as_millis() as u64,
            }))
            .await
            .map_err(|s| ReplError::from(s).context(format!("asking which blobs {repo} lacks")))?
            .into_inner();
        r.missing
            .into_iter()
            .map(|m| Ok((convert::digest(&m.digest)?, m.offset)))
            .collect()
    }

    /// Streams a blob to the peer; see [`crate::Local::put_blob`].
    pub async fn put_blob<S>(&self, h: BlobHeader, data: S) -> Result<(u64, bool)>
    where
        S: Stream<Item = Result<Bytes>> + Send + 'static,
    {
        let failed: Arc<Mutex<Option<ReplError>>> = Arc::default();
        let slot = failed.clone();
        // A reader task feeds the call through a small queue (read-ahead of a few chunks). A
        // read error at the source ends the stream early (the peer keeps what arrived) and is
        // reported after the call.
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::BlobChunk>(4);
        let mut data = Box::pin(rechunk(data, CHUNK));
        let reader = stowage_store::task::spawn_named("replication-blob-reader", async move {
            while let Some(item) = data.next().await {
                match item {
                    Ok(b) => {
                        let chunk = pb::BlobChunk {
                            header: None,
                            data: b,
                        };
                        if tx.send(chunk).await.is_err() {
                            // The call ended (failed or the peer stopped reading).
                            return;
                        }
                    }
                    Err(e) => {
                        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        return;
                    }
                }
            }
        });
        let body =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
        let first = pb::BlobChunk {
            header: Some(pb::BlobHeader {
                repository: h.repo.to_string(),
                digest: h.digest.to_string(),
                size: h.size,
                offset: h.offset,
            }),
            data: Bytes::new(),
        };
        let outbound = futures::stream::once(futures::future::ready(first)).chain(body);
        let resp = self.client().put_blob(Request::new(outbound)).await;
        reader.abort();
        let _ = reader.await;
        if let Some(e) = failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(e.context(format!("reading blob {} at the source", h.digest)));
        }
        let r = resp
            .map_err(|s| ReplError::from(s).context(format!("sending blob {}", h.digest)))?
            .into_inner();
        Ok((r.received, r.complete))
    }

    /// A blob's size and its bytes from `offset`, read from the peer.
    pub async fn read_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        offset: u64,
    ) -> Result<(u64, ByteStream)> {
        let mut stream = self
            .client()
            .get_blob(Request::new(pb::GetBlobRequest {
                repository: repo.to_string(),
                digest: digest.to_string(),
                offset,
            }))
            .await
            .map_err(|s| {
                ReplError::from(s).context(format!("reading blob {digest} from the peer"))
            })?
            .into_inner();
        let first = stream
            .message()
            .await
            .map_err(|s| {
                ReplError::from(s).context(format!("reading blob {digest} from the peer"))
            })?
            .ok_or_else(|| ReplError::Unavailable(format!("blob {digest}: empty response")))?;
        let header = first
            .header
            .ok_or_else(|| ReplError::Invalid(format!("blob {digest}: response without header")))?;
        let d = digest.clone();
        let head = futures::stream::iter((!first.data.is_empty()).then(|| Ok(first.data)));
        let rest = stream.map(move |m| match m {
            Ok(c) => Ok(c.data),
            Err(s) => Err(ReplError::from(s).context(format!("reading blob {d} from the peer"))),
        });
        Ok((header.size, head.chain(rest).boxed()))
    }

    /// A manifest from the peer, if its repository holds it.
    pub async fn get_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<ManifestDoc>> {
        match self
            .client()
            .get_manifest(req(pb::GetManifestRequest {
                repository: repo.to_string(),
                digest: digest.to_string(),
            }))
            .await
        {
            Ok(m) => {
                let m = m.into_inner();
                Ok(Some(ManifestDoc {
                    media_type: m.media_type,
                    bytes: m.content,
                }))
            }
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(ReplError::from(s).context(format!("reading manifest {repo}@{digest}"))),
        }
    }

    /// Stores a manifest at the peer; whether it was new there.
    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        doc: ManifestDoc,
        origin: &str,
    ) -> Result<bool> {
        Ok(self
            .client()
            .put_manifest(req(pb::Manifest {
                repository: repo.to_string(),
                digest: digest.to_string(),
                media_type: doc.media_type,
                content: doc.bytes,
                origin: origin.to_string(),
            }))
            .await
            .map_err(|s| ReplError::from(s).context(format!("storing manifest {repo}@{digest}")))?
            .into_inner()
            .stored)
    }

    /// Asks the peer to remove a manifest deleted at its origin.
    pub async fn delete_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        origin: &str,
    ) -> Result<bool> {
        Ok(self
            .client()
            .delete_manifest(req(pb::DeleteManifestRequest {
                repository: repo.to_string(),
                digest: digest.to_string(),
                origin: origin.to_string(),
            }))
            .await
            .map_err(|s| ReplError::from(s).context(format!("deleting manifest {repo}@{digest}")))?
            .into_inner()
            .applied)
    }

    /// A tag's state at the peer.
    pub async fn tag_state(&self, repo: &RepoName, tag: &str) -> Result<Option<TagState>> {
        let r = self
            .client()
            .get_tag(req(pb::GetTagRequest {
                repository: repo.to_string(),
                tag: tag.to_string(),
            }))
            .await
            .map_err(|s| ReplError::from(s).context(format!("reading tag {repo}:{tag}")))?
            .into_inner();
        convert::tag_from_proto(&r)
    }

    /// Applies a tag state at the peer; whether it changed anything.
    pub async fn apply_tag(&self, repo: &RepoName, tag: &str, state: &TagState) -> Result<bool> {
        Ok(self
            .client()
            .apply_tag(req(convert::tag_to_proto(repo.as_str(), tag, Some(state))))
            .await
            .map_err(|s| ReplError::from(s).context(format!("applying tag {repo}:{tag}")))?
            .into_inner()
            .applied)
    }

    /// The peer's 256 bucket hashes.
    pub async fn bucket_hashes(&self, filters: &Filters) -> Result<Vec<[u8; 32]>> {
        let r = self
            .client()
            .range_hashes(req(pb::RangeHashesRequest {
                filters: Some(filters_proto(filters)),
                buckets: Vec::new(),
            }))
            .await
            .map_err(|s| ReplError::from(s).context("reading the peer's bucket hashes"))?
            .into_inner();
        r.buckets.iter().map(|b| hash32(b, "bucket")).collect()
    }

    /// The peer's per-repository hashes of `buckets`.
    pub async fn repo_hashes(
        &self,
        filters: &Filters,
        buckets: &[u8],
    ) -> Result<Vec<(String, [u8; 32])>> {
        let r = self
            .client()
            .range_hashes(req(pb::RangeHashesRequest {
                filters: Some(filters_proto(filters)),
                buckets: buckets.iter().map(|b| u32::from(*b)).collect(),
            }))
            .await
            .map_err(|s| ReplError::from(s).context("reading the peer's repository hashes"))?
            .into_inner();
        r.repositories
            .into_iter()
            .map(|h| Ok((h.repository.clone(), hash32(&h.hash, &h.repository)?)))
            .collect()
    }

    /// One repository's state at the peer.
    pub async fn repo_state(&self, repo: &RepoName, filters: &Filters) -> Result<RepoState> {
        let r = self
            .client()
            .repo_state(req(pb::RepoStateRequest {
                repository: repo.to_string(),
                filters: Some(filters_proto(filters)),
            }))
            .await
            .map_err(|s| ReplError::from(s).context(format!("reading the state of {repo}")))?
            .into_inner();
        let mut tags = Vec::with_capacity(r.tags.len());
        for t in &r.tags {
            if let Some(state) = convert::tag_from_proto(t)? {
                tags.push((t.tag.clone(), state));
            }
        }
        let manifests = r
            .manifests
            .iter()
            .map(|d| convert::digest(d))
            .collect::<Result<Vec<_>>>()?;
        let deleted_manifests = r
            .deleted_manifests
            .iter()
            .map(|d| convert::digest(d))
            .collect::<Result<Vec<_>>>()?;
        Ok(RepoState {
            tags,
            manifests,
            deleted_manifests,
        })
    }
}

/// A peer's feed page read from `from`, checked: a peer cannot have scanned or trimmed
/// entries beyond the end of its own feed, nor sent entries before `from`. A buggy or hostile
/// page would otherwise move the reader's cursor past entries not yet written (skipping them
/// for good) or overflow it. The feed's end is the larger of the page's last sequence and its
/// entries: a site reads its last sequence before the entries, so a page can hold entries
/// appended in between.
fn feed_page(from: u64, resp: pb::ReadFeedResponse) -> Result<FeedPage> {
    if let Some(e) = resp.events.iter().find(|e| e.sequence < from) {
        return Err(ReplError::Invalid(format!(
            "feed page read from {from} holds the earlier entry {}",
            e.sequence
        )));
    }
    let last = resp
        .events
        .iter()
        .map(|e| e.sequence)
        .fold(resp.last_sequence, u64::max);
    if resp.scanned_to > last {
        return Err(ReplError::Invalid(format!(
            "feed page says it read up to {} but the feed ends at {last}",
            resp.scanned_to
        )));
    }
    if resp.trimmed_to > resp.last_sequence {
        return Err(ReplError::Invalid(format!(
            "feed page says entries up to {} were trimmed but the feed ends at {}",
            resp.trimmed_to, resp.last_sequence
        )));
    }
    // A site before `scanned_to` existed sends 0: the events are then the whole page.
    let scanned_to = resp
        .events
        .iter()
        .map(|e| e.sequence)
        .chain((resp.scanned_to > 0).then_some(resp.scanned_to))
        .max();
    let mut events = Vec::with_capacity(resp.events.len());
    for e in resp.events {
        if let Some(ev) = convert::event_from_proto(e)? {
            events.push(ev);
        }
    }
    Ok(FeedPage {
        events,
        scanned_to,
        last,
        trimmed_to: resp.trimmed_to,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn page(last: u64, scanned: u64, trimmed: u64, seqs: &[u64]) -> pb::ReadFeedResponse {
        pb::ReadFeedResponse {
            events: seqs
                .iter()
                .map(|s| pb::FeedEvent {
                    sequence: *s,
                    ..Default::default()
                })
                .collect(),
            last_sequence: last,
            scanned_to: scanned,
            trimmed_to: trimmed,
        }
    }

    #[test]
    fn a_feed_page_beyond_the_peers_own_feed_is_refused() {
        // Consistent pages pass, including one from a site that trims (and one from before
        // `scanned_to` existed, which sends 0).
        let ok = feed_page(5, page(9, 9, 3, &[])).unwrap();
        assert_eq!((ok.scanned_to, ok.last, ok.trimmed_to), (Some(9), 9, 3));
        let ok = feed_page(1, page(9, 0, 0, &[])).unwrap();
        assert_eq!(ok.scanned_to, None);
        // Entries appended between the site's two reads (its last sequence, then the entries).
        let ok = feed_page(8, page(9, 11, 0, &[8, 11])).unwrap();
        assert_eq!((ok.scanned_to, ok.last), (Some(11), 11));
        // Each way a page could push the reader's cursor past entries not yet written.
        for (what, bad) in [
            ("trimmed past the end", page(9, 9, 10, &[])),
            ("trimmed to the top", page(9, 9, u64::MAX, &[])),
            ("scanned past the end", page(9, u64::MAX, 0, &[])),
            (
                "scanned past the end and its entries",
                page(9, 12, 0, &[10]),
            ),
            ("an entry before the read", page(9, 9, 0, &[4])),
        ] {
            match feed_page(5, bad) {
                Err(ReplError::Invalid(msg)) => assert!(msg.contains("feed"), "{what}: {msg}"),
                other => panic!("{what}: accepted: {other:?}"),
            }
        }
    }
}
