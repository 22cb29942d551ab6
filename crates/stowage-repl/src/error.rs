//! Replication errors and their mapping to and from gRPC status codes.

use stowage_store::StoreError;
use tonic::{Code, Status};

/// Metadata key carrying the bytes a site holds when a blob transfer starts at the wrong offset.
const HELD_BYTES: &str = "x-stowage-held-bytes";

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
    /// Anything else, with what was being done.
    #[error("{0}")]
    Other(String),
}

/// Shorthand.
pub type Result<T, E = ReplError> = std::result::Result<T, E>;

impl ReplError {
    /// Adds what was being done to the message.
    pub fn context(self, doing: impl std::fmt::Display) -> ReplError {
        match self {
            ReplError::NotFound(m) => ReplError::NotFound(format!("{doing}: {m}")),
            ReplError::MissingReference(m) => ReplError::MissingReference(format!("{doing}: {m}")),
            ReplError::Invalid(m) => ReplError::Invalid(format!("{doing}: {m}")),
            ReplError::Unavailable(m) => ReplError::Unavailable(format!("{doing}: {m}")),
            ReplError::Exhausted(m) => ReplError::Exhausted(format!("{doing}: {m}")),
            ReplError::Refused(m) => ReplError::Refused(format!("{doing}: {m}")),
            ReplError::Other(m) => ReplError::Other(format!("{doing}: {m}")),
            held @ ReplError::OffsetMismatch { .. } => held,
        }
    }
}

impl From<StoreError> for ReplError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::BlobUnknown(_)
            | StoreError::ManifestUnknown(_)
            | StoreError::NameUnknown(_) => ReplError::NotFound(e.to_string()),
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
            | StoreError::Unsupported(_) => ReplError::Invalid(e.to_string()),
            StoreError::TooManyPins { .. } | StoreError::TooManyUploads(_) => {
                ReplError::Exhausted(e.to_string())
            }
            StoreError::ReplicaRefused(_) => ReplError::Refused(e.to_string()),
            other => ReplError::Other(other.to_string()),
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
            ReplError::Other(_) => Status::internal(msg),
        }
    }
}

impl From<Status> for ReplError {
    fn from(s: Status) -> Self {
        let msg = s.message().to_string();
        match s.code() {
            Code::NotFound => ReplError::NotFound(msg),
            Code::FailedPrecondition => match s
                .metadata()
                .get(HELD_BYTES)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
            {
                Some(held) => ReplError::OffsetMismatch { held },
                None => ReplError::MissingReference(msg),
            },
            Code::InvalidArgument => ReplError::Invalid(msg),
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown
            | Code::Aborted => ReplError::Unavailable(format!("{}: {msg}", s.code())),
            Code::ResourceExhausted => ReplError::Exhausted(msg),
            Code::PermissionDenied | Code::Unauthenticated => ReplError::Refused(msg),
            code => ReplError::Other(format!("{code}: {msg}")),
        }
    }
}

#[cfg(test)]
mod tests {
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
}
