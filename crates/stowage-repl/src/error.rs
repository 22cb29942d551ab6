//! Replication errors and their mapping to and from gRPC status codes.
//!
//! Every variant is an outcome a replicator acts on differently (retry, back off, resume at
//! an offset, park the entry); none is a catch-all.

use stowage_core::Digest;
use stowage_store::StoreError;
use tonic::{Code, Status};

/// Metadata key carrying the bytes a site holds when a blob transfer starts at the wrong offset.
const HELD_BYTES: &str = "x-stowage-held-bytes";
/// Metadata key naming the blob whose bytes failed verification at the site that sends it.
const CORRUPT_BLOB: &str = "x-stowage-corrupt-blob";

/// What went wrong, in terms a replicator can act on.
#[derive(Debug, thiserror::Error)]
pub enum ReplError {
    /// The thing asked for does not exist (at the source: it was deleted since the event).
    #[error("not found: {0}")]
    NotFound(String),
    /// A blob transfer started at another offset than the bytes the target holds.
    #[error("the target holds {held} bytes of the blob; the transfer must start there")]
    OffsetMismatch {
        /// Bytes the target holds.
        held: u64,
    },
    /// A manifest was refused because a blob or child it references is missing.
    #[error("missing reference: {0}")]
    MissingReference(String),
    /// Malformed input (bad name or digest, content that does not hash to its digest).
    #[error("invalid: {0}")]
    Invalid(String),
    /// The peer cannot be reached or the call broke off; retried.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A limit of the site was reached (pins, upload sessions); retried later.
    #[error("exhausted: {0}")]
    Exhausted(String),
    /// The peer may not do this (identity, origin, clock skew).
    #[error("refused: {0}")]
    Refused(String),
    /// The site refused because of the state of what was asked (a blob garbage collection
    /// quarantined, for example).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A blob's stored bytes failed verification at the site sending them: that site
    /// quarantined the blob, and the feed entry that needs it is parked. The target is not
    /// at fault.
    #[error("{message}")]
    SourceCorrupt {
        /// The blob.
        digest: Digest,
        /// Which site, what did not match, and what was being done.
        message: String,
    },
    /// This site's own storage (index or blob store) failed.
    #[error("storage: {0}")]
    Storage(String),
    /// The peer failed on its side (an internal error there).
    #[error("the peer failed: {0}")]
    PeerFailed(String),
    /// The peer does not offer the call (a build older than this one).
    #[error("unsupported by the peer: {0}")]
    Unsupported(String),
    /// A background task of this site panicked or was cancelled.
    #[error("task failed: {0}")]
    Task(String),
    /// One of replication's own records (cursor, transfer session, parked entry) could not
    /// be encoded or decoded.
    #[error("replication record: {0}")]
    Record(String),
}

/// Shorthand.
pub type Result<T, E = ReplError> = std::result::Result<T, E>;

impl ReplError {
    /// Adds what was being done to the message.
    pub fn context(self, doing: impl std::fmt::Display) -> ReplError {
        let with = |m: String| format!("{doing}: {m}");
        match self {
            ReplError::NotFound(m) => ReplError::NotFound(with(m)),
            ReplError::MissingReference(m) => ReplError::MissingReference(with(m)),
            ReplError::Invalid(m) => ReplError::Invalid(with(m)),
            ReplError::Unavailable(m) => ReplError::Unavailable(with(m)),
            ReplError::Exhausted(m) => ReplError::Exhausted(with(m)),
            ReplError::Refused(m) => ReplError::Refused(with(m)),
            ReplError::Conflict(m) => ReplError::Conflict(with(m)),
            ReplError::SourceCorrupt { digest, message } => ReplError::SourceCorrupt {
                digest,
                message: with(message),
            },
            ReplError::Storage(m) => ReplError::Storage(with(m)),
            ReplError::PeerFailed(m) => ReplError::PeerFailed(with(m)),
            ReplError::Unsupported(m) => ReplError::Unsupported(with(m)),
            ReplError::Task(m) => ReplError::Task(with(m)),
            ReplError::Record(m) => ReplError::Record(with(m)),
            held @ ReplError::OffsetMismatch { .. } => held,
        }
    }

    /// The blob whose bytes failed verification at the source, when that is what happened.
    pub fn corrupt_blob(&self) -> Option<&Digest> {
        match self {
            ReplError::SourceCorrupt { digest, .. } => Some(digest),
            _ => None,
        }
    }
}

impl From<StoreError> for ReplError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::BlobUnknown(_)
            | StoreError::ManifestUnknown(_)
            | StoreError::NameUnknown(_)
            | StoreError::NotFound(_)
            | StoreError::BlobUploadUnknown(_) => ReplError::NotFound(e.to_string()),
            StoreError::ManifestBlobUnknown(_) => ReplError::MissingReference(e.to_string()),
            StoreError::RangeInvalid { expected, .. } => {
                ReplError::OffsetMismatch { held: expected }
            }
            StoreError::DigestInvalid(_)
            | StoreError::ManifestInvalid(_)
            | StoreError::NameInvalid(_)
            | StoreError::TagInvalid(_)
            | StoreError::SizeInvalid(_)
            | StoreError::TooLarge { .. }
            | StoreError::BlobUploadInvalid(_)
            | StoreError::RangeNotSatisfiable { .. }
            | StoreError::Unsupported(_) => ReplError::Invalid(e.to_string()),
            StoreError::TooManyPins { .. }
            | StoreError::TooManyUploads(_)
            | StoreError::StorageFull => ReplError::Exhausted(e.to_string()),
            StoreError::ReplicaRefused(_) => ReplError::Refused(e.to_string()),
            StoreError::Conflict(_) => ReplError::Conflict(e.to_string()),
            StoreError::Cas(_)
            | StoreError::Index(_)
            | StoreError::Internal(_)
            | StoreError::Io { .. }
            | StoreError::Task { .. }
            | StoreError::BytesMissing { .. }
            | StoreError::Record { .. }
            | StoreError::SiteMismatch { .. } => ReplError::Storage(e.to_string()),
        }
    }
}

impl From<ReplError> for Status {
    fn from(e: ReplError) -> Self {
        let msg = e.to_string();
        match e {
            ReplError::NotFound(_) => Status::not_found(msg),
            ReplError::OffsetMismatch { held } => {
                let mut s = Status::failed_precondition(msg);
                if let Ok(v) = held.to_string().parse() {
                    s.metadata_mut().insert(HELD_BYTES, v);
                }
                s
            }
            ReplError::MissingReference(_) => Status::failed_precondition(msg),
            ReplError::Invalid(_) => Status::invalid_argument(msg),
            ReplError::Unavailable(_) => Status::unavailable(msg),
            ReplError::Exhausted(_) => Status::resource_exhausted(msg),
            ReplError::Refused(_) => Status::permission_denied(msg),
            ReplError::Conflict(_) => Status::already_exists(msg),
            ReplError::SourceCorrupt { digest, .. } => {
                let mut s = Status::data_loss(msg);
                if let Ok(v) = digest.to_string().parse() {
                    s.metadata_mut().insert(CORRUPT_BLOB, v);
                }
                s
            }
            ReplError::Unsupported(_) => Status::unimplemented(msg),
            ReplError::Storage(_)
            | ReplError::PeerFailed(_)
            | ReplError::Task(_)
            | ReplError::Record(_) => Status::internal(msg),
        }
    }
}

impl From<Status> for ReplError {
    fn from(s: Status) -> Self {
        let msg = s.message().to_string();
        let meta = |key: &str| {
            s.metadata()
                .get(key)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        match s.code() {
            Code::NotFound => ReplError::NotFound(msg),
            Code::FailedPrecondition => match meta(HELD_BYTES).and_then(|v| v.parse().ok()) {
                Some(held) => ReplError::OffsetMismatch { held },
                None => ReplError::MissingReference(msg),
            },
            Code::InvalidArgument | Code::OutOfRange => ReplError::Invalid(msg),
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown
            | Code::Aborted => ReplError::Unavailable(format!("{}: {msg}", s.code())),
            Code::ResourceExhausted => ReplError::Exhausted(msg),
            Code::PermissionDenied | Code::Unauthenticated => ReplError::Refused(msg),
            Code::AlreadyExists => ReplError::Conflict(msg),
            Code::DataLoss => match meta(CORRUPT_BLOB).and_then(|v| Digest::parse(&v).ok()) {
                Some(digest) => ReplError::SourceCorrupt {
                    digest,
                    message: msg,
                },
                None => ReplError::PeerFailed(format!("data loss: {msg}")),
            },
            Code::Unimplemented => ReplError::Unsupported(msg),
            Code::Internal | Code::Ok => ReplError::PeerFailed(format!("{}: {msg}", s.code())),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn offset_mismatch_survives_the_wire() {
        let s: Status = ReplError::OffsetMismatch { held: 4096 }.into();
        assert_eq!(s.code(), Code::FailedPrecondition);
        match ReplError::from(s) {
            ReplError::OffsetMismatch { held } => assert_eq!(held, 4096),
            other => panic!("got {other:?}"),
        }
        let s: Status = ReplError::MissingReference("blob x".into()).into();
        assert!(matches!(ReplError::from(s), ReplError::MissingReference(_)));
        let s: Status = ReplError::NotFound("m".into()).into();
        assert!(matches!(ReplError::from(s), ReplError::NotFound(_)));
    }

    #[test]
    fn a_corrupt_source_blob_survives_the_wire_and_context() {
        let digest = Digest::sha256(b"bad");
        let e = ReplError::SourceCorrupt {
            digest: digest.clone(),
            message: format!("blob {digest} is corrupt at site a"),
        }
        .context("replicating app");
        let s: Status = e.into();
        assert_eq!(s.code(), Code::DataLoss);
        let back = ReplError::from(s).context("reading from the peer");
        assert_eq!(back.corrupt_blob(), Some(&digest));
        let text = back.to_string();
        assert!(
            text.starts_with("reading from the peer: replicating app: blob"),
            "{text}"
        );
        // Data loss without the blob named is the peer's failure, not a parkable entry.
        let bare = ReplError::from(Status::data_loss("disk"));
        assert!(matches!(bare, ReplError::PeerFailed(_)), "{bare:?}");
        assert!(matches!(
            ReplError::from(Status::internal("x")),
            ReplError::PeerFailed(_)
        ));
        assert!(matches!(
            ReplError::from(Status::unimplemented("x")),
            ReplError::Unsupported(_)
        ));
    }
}
