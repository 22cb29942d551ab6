//! Core domain types for Stowage: content digests, repository names and tags,
//! media types, manifest parsing and clocks.
//!
//! This crate is pure logic: it performs no I/O.

pub mod actor;
pub mod clock;
pub mod digest;
pub mod manifest;
pub mod media;
pub mod name;
pub mod range;

pub use actor::{
    Action, Actor, Principal, ProjectChange, ProjectRecord, ProjectView, RobotRecord, Role,
    UserRecord,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use manifest::{
    parse_manifest, Descriptor, ManifestError, ManifestKind, ParsedManifest, MAX_MANIFEST_BYTES,
};
pub use name::{NameError, Reference, RepoName, Tag};
