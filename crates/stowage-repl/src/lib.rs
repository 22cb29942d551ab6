//! Replication between Stowage sites over gRPC (`proto/stowage/v1/replication.proto`).
//!
//! * [`Local`]: this site's side, over the store; served to peers by [`ReplicationService`].
//! * [`Remote`]: a peer reached over gRPC.
//! * [`Replicator`]: one task per configured peer following a source's change feed from a
//!   durable cursor, sending only what the target lacks, resuming half-sent blobs, and
//!   anti-entropy by hashes over the index.
//!
//! Loops: every feed entry carries the site it originated at, and a replicator never sends a
//! change to the site it came from. Tag conflicts: every tag state has a version
//! `(ms, origin site)`, and the larger version wins on every site (see `stowage_store`'s
//! `replica` module).

mod convert;
pub mod error;
pub mod glob;
pub mod local;
pub mod policy;
pub mod remote;
pub mod replicator;
pub mod server;
pub mod site;

#[cfg(test)]
mod tests;

pub use error::{ReplError, Result};
pub use glob::Filters;
pub use local::Local;
pub use policy::{Grant, PeerPolicy};
pub use remote::Remote;
pub use replicator::{Direction, PeerAccess, PeerConfig, PeerRole, Replicator, SyncReport};
pub use server::{PeerGate, ReplicationService, Role};
