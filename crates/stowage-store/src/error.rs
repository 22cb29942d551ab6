//! The store's error type: one variant per outcome a client or operator must tell apart.
//! `stowage-oci` maps each to its OCI error code and HTTP status.

use std::path::PathBuf;

use stowage_cas::CasError;
use stowage_core::Digest;
use stowage_index::IndexError;

/// Errors from store operations.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The blob is not known in this repository.
    #[error("blob unknown to registry: {0}")]
    BlobUnknown(Digest),
    /// The upload session does not exist (or belongs to another repository).
    #[error("blob upload unknown to registry: {0}")]
    BlobUploadUnknown(String),
    /// The upload is invalid (for example its body broke off).
    #[error("blob upload invalid: {0}")]
    BlobUploadInvalid(String),
    /// The provided digest did not match the uploaded content, or is malformed.
    #[error("provided digest did not match uploaded content: {0}")]
    DigestInvalid(String),
    /// A manifest references a blob or manifest that is not in the repository.
    #[error("manifest references {0}, which is not in the repository")]
    ManifestBlobUnknown(Digest),
    /// The manifest is malformed.
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    /// No such manifest or tag.
    #[error("manifest unknown: {0}")]
    ManifestUnknown(String),
    /// The repository name is malformed.
    #[error("invalid repository name: {0}")]
    NameInvalid(String),
    /// The repository is not known.
    #[error("repository name not known to registry: {0}")]
    NameUnknown(String),
    /// A tag or reference is malformed.
    #[error("invalid tag: {0}")]
    TagInvalid(String),
    /// Content length or size does not match.
    #[error("provided length did not match content length: {0}")]
    SizeInvalid(String),
    /// The blob is larger than the configured maximum.
    #[error("blob exceeds the maximum size of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The operation is not supported.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A chunk did not start where the upload ended.
    #[error("chunk starts at byte {got}, but the upload holds {expected} bytes")]
    RangeInvalid {
        /// Where the chunk said it starts.
        got: u64,
        /// Bytes the upload holds.
        expected: u64,
    },
    /// A requested byte range does not fit the blob.
    #[error("requested range not satisfiable: blob has {size} bytes")]
    RangeNotSatisfiable {
        /// Blob size.
        size: u64,
    },
    /// Refused because other content depends on the target.
    #[error("denied: {0}")]
    Conflict(String),
    /// An account, role or other named thing does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// Too many upload sessions, or too many bytes in unfinished uploads: try again later.
    #[error("too many requests: {0}")]
    TooManyUploads(String),
    /// Replication asked to keep more blobs from garbage collection than the site allows.
    #[error("too many pinned blobs: {pinned} pinned, the limit is {limit}")]
    TooManyPins {
        /// Blobs pinned now.
        pinned: usize,
        /// The limit.
        limit: usize,
    },
    /// A replicated change the peer may not make (an origin it may not relay, a version
    /// from the far future).
    #[error("replicated change refused: {0}")]
    ReplicaRefused(String),
    /// The operator named a site other than the one fixed in the index at first start.
    #[error(
        "this data dir belongs to site \"{recorded}\" (fixed at its first start), but the configuration names \"{configured}\"; peers' cursors and origins name the recorded site, so it cannot change: set site = \"{recorded}\" or remove the explicit name"
    )]
    SiteMismatch {
        /// The name in the index.
        recorded: String,
        /// The name configured now.
        configured: String,
    },
    /// The file system holding the data has less free space than the configured reserve (or
    /// ran out while writing): new blob bytes are refused until space is freed, so the index
    /// always has room to record what is already stored.
    #[error("storage full: new blob bytes are refused until space is freed; try again later")]
    StorageFull,
    /// The blob store failed.
    #[error(transparent)]
    Cas(CasError),
    /// The index failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// A local file-system operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done ("creating the data dir").
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A blocking or background task panicked or was cancelled before it returned.
    #[error("the {task} task failed: {source}")]
    Task {
        /// Which task ("index commit").
        task: &'static str,
        /// Why it did not return.
        #[source]
        source: tokio::task::JoinError,
    },
    /// The index says content is present but its bytes are gone: invariant 3 is broken, and
    /// that must be loud, never a quiet "unknown".
    #[error("{what} {digest} is indexed as present but its bytes are missing")]
    BytesMissing {
        /// "blob" or "manifest".
        what: &'static str,
        /// The content's digest.
        digest: Digest,
    },
    /// A record the store keeps in the index's extension keyspace (scrub state) did not
    /// encode or decode.
    #[error("{op} the scrub {what}: {source}")]
    Record {
        /// "encoding" or "decoding".
        op: &'static str,
        /// Which record.
        what: String,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// Something that should be impossible (a bug or an inconsistent state that no variant
    /// above describes), with context. Never used for I/O or task failures.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<CasError> for StoreError {
    fn from(e: CasError) -> Self {
        if e.is_storage_full() {
            tracing::warn!(error = %e, "storage full while writing blob bytes");
            StoreError::StorageFull
        } else {
            StoreError::Cas(e)
        }
    }
}

/// Shorthand.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
