//! Either end of a replication: the local site or a peer. A push peer is fed from the local
//! site; a pull peer feeds the local site. The replicator is written once against this.

use std::time::Duration;

use futures::StreamExt;
use stowage_core::{Digest, RepoName};
use stowage_store::TagState;

use crate::error::Result;
use crate::glob::Filters;
use crate::local::{BlobHeader, ByteStream, FeedPage, Local, ManifestDoc, RepoState};
use crate::remote::Remote;

/// One end of a replication.
#[derive(Clone, Debug)]
pub enum Site {
    /// This daemon.
    Local(Local),
    /// A peer over gRPC.
    Remote(Remote),
}

impl Site {
    /// Feed entries from `from` (waiting up to `wait` for the first) and the last sequence.
    pub async fn feed(&self, from: u64, limit: usize, wait: Duration) -> Result<FeedPage> {
        match self {
            Site::Local(l) => l.feed(from, limit, wait).await,
            Site::Remote(r) => r.feed(from, limit, wait).await,
        }
    }

    /// Which blobs the site lacks in `repo`, with the bytes held of each.
    pub async fn missing_blobs(
        &self,
        repo: &RepoName,
        blobs: &[(Digest, u64)],
        hold: Duration,
    ) -> Result<Vec<(Digest, u64)>> {
        match self {
            Site::Local(l) => l.missing_blobs(repo, blobs, hold).await,
            Site::Remote(r) => r.missing_blobs(repo, blobs, hold).await,
        }
    }

    /// Sends a blob's bytes from `h.offset` to the site.
    pub async fn put_blob(&self, h: BlobHeader, data: ByteStream) -> Result<(u64, bool)> {
        match self {
            Site::Local(l) => l.put_blob(h, data.fuse()).await,
            Site::Remote(r) => r.put_blob(h, data).await,
        }
    }

    /// Reads a blob from `offset`.
    pub async fn read_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        offset: u64,
    ) -> Result<(u64, ByteStream)> {
        match self {
            Site::Local(l) => l.read_blob(repo, digest, offset).await,
            Site::Remote(r) => r.read_blob(repo, digest, offset).await,
        }
    }

    /// A manifest, if the repository holds it.
    pub async fn get_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<ManifestDoc>> {
        match self {
            Site::Local(l) => l.get_manifest(repo, digest),
            Site::Remote(r) => r.get_manifest(repo, digest).await,
        }
    }

    /// Whether the repository holds a manifest.
    pub async fn has_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        match self {
            Site::Local(l) => l.has_manifest(repo, digest),
            Site::Remote(r) => Ok(r.get_manifest(repo, digest).await?.is_some()),
        }
    }

    /// Stores a manifest; whether it was new.
    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        doc: ManifestDoc,
        origin: &str,
    ) -> Result<bool> {
        match self {
            Site::Local(l) => l.put_manifest(repo, digest, doc, origin).await,
            Site::Remote(r) => r.put_manifest(repo, digest, doc, origin).await,
        }
    }

    /// Removes a manifest deleted at its origin; whether it did.
    pub async fn delete_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        origin: &str,
    ) -> Result<bool> {
        match self {
            Site::Local(l) => l.delete_manifest(repo, digest, origin).await,
            Site::Remote(r) => r.delete_manifest(repo, digest, origin).await,
        }
    }

    /// A tag's state.
    pub async fn tag_state(&self, repo: &RepoName, tag: &str) -> Result<Option<TagState>> {
        match self {
            Site::Local(l) => l.tag_state(repo, tag),
            Site::Remote(r) => r.tag_state(repo, tag).await,
        }
    }

    /// Applies a tag state if newer; whether it changed anything.
    pub async fn apply_tag(&self, repo: &RepoName, tag: &str, state: &TagState) -> Result<bool> {
        match self {
            Site::Local(l) => l.apply_tag(repo, tag, state).await,
            Site::Remote(r) => r.apply_tag(repo, tag, state).await,
        }
    }

    /// The 256 bucket hashes.
    pub async fn bucket_hashes(&self, filters: &Filters) -> Result<Vec<[u8; 32]>> {
        match self {
            Site::Local(l) => l.bucket_hashes(filters).await,
            Site::Remote(r) => r.bucket_hashes(filters).await,
        }
    }

    /// Per-repository hashes of `buckets`.
    pub async fn repo_hashes(
        &self,
        filters: &Filters,
        buckets: &[u8],
    ) -> Result<Vec<(String, [u8; 32])>> {
        match self {
            Site::Local(l) => l.repo_hashes(filters, buckets).await,
            Site::Remote(r) => r.repo_hashes(filters, buckets).await,
        }
    }

    /// One repository's state.
    pub async fn repo_state(&self, repo: &RepoName, filters: &Filters) -> Result<RepoState> {
        match self {
            Site::Local(l) => l.repo_state(repo, filters).await,
            Site::Remote(r) => r.repo_state(repo, filters).await,
        }
    }
}
