//! Replication between Stowage sites over gRPC (`proto/stowage/v1/replication.proto`).
//!
//! * [`Local`]: this site's side, over the store; served to peers by [`ReplicationService`].
//!   Every blob it sends is checked over its whole content first ([`verify`]); bad bytes are
//!   quarantined here and reported as this site's corruption, never the receiver's.
//! * [`Remote`]: a peer reached over gRPC.
//! * [`Replicator`]: one task per configured peer following a source's change feed from a
//!   durable cursor, sending only what the target lacks, resuming half-sent blobs, and
//!   anti-entropy by hashes over the index. Entries that need a blob corrupt at the source are
//!   parked in a dead-letter list ([`parked`]) and the feed goes on; an operator retries them
//!   ([`retry`]), which repairs the blob from another peer first.
//!
//! Loops: every feed entry carries the site it originated at, and a replicator never sends a
//! change to the site it came from. Tag conflicts: every tag state has a version
//! `(ms, origin site)`, and the larger version wins on every site (see `stowage_store`'s
//! `replica` module).

mod anti_entropy;
mod convert;
pub mod error;
mod flow;
pub mod glob;
pub mod local;
pub mod parked;
pub mod policy;
pub mod remote;
pub mod replicator;
pub mod retry;
mod scrub_repair;
pub mod server;
pub mod site;
pub mod status;
pub mod verify;

#[cfg(test)]
mod corrupt_tests;
#[cfg(test)]
mod tests;

pub use anti_entropy::{sync_to_proto, SyncReport};
pub use error::{ReplError, Result};
pub use glob::Filters;
pub use local::Local;
pub use parked::{ParkReason, Parked, ParkedId};
pub use policy::{Grant, PeerPolicy};
pub use remote::Remote;
pub use replicator::{Direction, PeerAccess, PeerConfig, PeerRole, Replicator};
pub use retry::{RetryOutcome, RetryResult, RetrySelection};
pub use server::{PeerGate, ReplicationService, Role};
pub use status::{PeerState, PeerStatus};
