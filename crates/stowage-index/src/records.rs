//! Values stored in the index and the change-feed events.
//!
//! Values are JSON with short, stable field names: small, debuggable with `ldb`, and tolerant of
//! added optional fields. Keys, which decide order, are binary (see [`crate::keys`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use stowage_core::{Descriptor, Digest};

/// Whether a blob's bytes are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobState {
    /// Bytes are durable in the blob store and served.
    Present,
    /// Quarantined by garbage collection: no longer served; the bytes are kept until the
    /// quarantine's retention passes and a later run purges them (or an operator restores it).
    Deleted,
}

/// Why and since when a blob is quarantined.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantine {
    /// When it was quarantined (unix ms); retention counts from here.
    #[serde(rename = "at")]
    pub at_ms: u64,
    /// Repositories that held it when it was quarantined (a restore links it back into them).
    #[serde(rename = "r", default)]
    pub repos: Vec<String>,
    /// The garbage-collection run that quarantined it (0 for a corrupt blob).
    #[serde(rename = "run", default)]
    pub run_id: u64,
    /// Why: nothing held it (garbage collection), or its bytes failed verification. Absent in
    /// records written before corrupt blobs were quarantined (all of those are collected).
    #[serde(
        rename = "why",
        default,
        skip_serializing_if = "QuarantineReason::is_unreferenced"
    )]
    pub reason: QuarantineReason,
}

/// Why a blob is quarantined. The two differ in what brings the blob back: a collected blob's
/// bytes are intact, so an operator may restore it; a corrupt blob's bytes are removed when it
/// is quarantined, and only good bytes (pushed again, or fetched from another site) do.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuarantineReason {
    /// Garbage collection found that nothing holds it any more.
    #[default]
    Unreferenced,
    /// Its stored bytes did not match its digest (or recorded checksum) when read.
    Corrupt {
        /// What did not match, as found.
        detail: String,
    },
}

impl QuarantineReason {
    /// Whether this is the garbage-collection reason (the default, not written).
    pub fn is_unreferenced(&self) -> bool {
        matches!(self, QuarantineReason::Unreferenced)
    }
}

/// One stored blob, global to the site (deduplicated across repositories).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRecord {
    /// Size in bytes.
    #[serde(rename = "s")]
    pub size: u64,
    /// Served or not.
    #[serde(rename = "st")]
    pub state: BlobState,
    /// When the bytes were first committed (unix ms).
    #[serde(rename = "c")]
    pub created_ms: u64,
    /// Last state change or re-link (unix ms); the GC grace period counts from here.
    #[serde(rename = "u")]
    pub updated_ms: u64,
    /// CRC-32C of the stored bytes, computed while they were received and hashed; whole reads
    /// are checked against it. Absent in records written before it existed.
    #[serde(rename = "k", default, skip_serializing_if = "Option::is_none")]
    pub crc32c: Option<u32>,
    /// Set while the blob is quarantined (state `Deleted`).
    #[serde(rename = "q", default, skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<Quarantine>,
}

/// A repository in the catalog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoRecord {
    /// When the repository first received content (unix ms).
    #[serde(rename = "c")]
    pub created_ms: u64,
}

/// What a tag points at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRecord {
    /// The manifest digest.
    #[serde(rename = "d")]
    pub digest: Digest,
    /// When the tag was last set (unix ms). With `origin`, the tag's version for replication:
    /// of two states of one tag, the one with the larger `(updated_ms, origin)` wins.
    #[serde(rename = "u")]
    pub updated_ms: u64,
    /// Site where this state of the tag was set (absent in records written before replication).
    #[serde(rename = "o", default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// A manifest held by one repository. Its exact bytes live once, keyed by digest, in the
/// `manifest_bytes` column family.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManifestRecord {
    /// Effective media type (served as `Content-Type`).
    #[serde(rename = "mt")]
    pub media_type: String,
    /// Size of the exact bytes.
    #[serde(rename = "s")]
    pub size: u64,
    /// When this repository received it (unix ms).
    #[serde(rename = "c")]
    pub created_ms: u64,
    /// Artifact type for the referrers API (top-level `artifactType`, else config media type).
    #[serde(rename = "at", default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The manifest this one refers to (`subject`), if any.
    #[serde(rename = "sub", default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Digest>,
    /// Blobs it references (config and layers; foreign layers excluded).
    #[serde(rename = "b", default)]
    pub blobs: Vec<Digest>,
    /// Child manifests (of an index).
    #[serde(rename = "m", default)]
    pub children: Vec<Digest>,
    /// Top-level annotations, served in referrers responses.
    #[serde(rename = "an", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// What kind of holder a [`crate::Index::holders`] entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldKind {
    /// The repository links the blob (it may serve it).
    Link = 1,
    /// The repository holds a manifest with that digest.
    Manifest = 2,
}

/// What kind of edge a reverse reference is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefKind {
    /// Manifest -> blob (config or layer).
    Blob = 1,
    /// Index -> child manifest.
    Child = 2,
}

impl RefKind {
    /// Decodes the one-byte value.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Blob),
            2 => Some(Self::Child),
            _ => None,
        }
    }
}

/// An upload session. The bytes live in the blob store's staging area under `id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    /// Repository the upload was started in.
    #[serde(rename = "r")]
    pub repo: String,
    /// Started (unix ms).
    #[serde(rename = "c")]
    pub created_ms: u64,
    /// Last appended to (unix ms); expiry counts from here.
    #[serde(rename = "u", default)]
    pub updated_ms: u64,
    /// Sizes of the stored parts, in order (part `i` is the `i`-th request body).
    #[serde(rename = "p", default)]
    pub parts: Vec<u64>,
    /// The principal that opened the session (only it may use it); absent in records written
    /// before sessions had owners.
    #[serde(rename = "o", default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// What happened, in one change-feed entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum EventKind {
    /// New blob bytes committed and linked into `repo`.
    BlobPut,
    /// An existing blob linked into `repo` (dedup or mount).
    BlobLinked,
    /// A blob unlinked from `repo`.
    BlobUnlinked,
    /// A manifest stored in `repo`.
    ManifestPut,
    /// A manifest removed from `repo`.
    ManifestDeleted,
    /// `tag` now points at `digest`.
    TagSet,
    /// `tag` removed.
    TagDeleted,
}

/// One change-feed entry: written in the same batch as the change it describes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
    /// Repository it happened in.
    #[serde(rename = "r")]
    pub repo: String,
    /// Blob or manifest digest concerned.
    #[serde(rename = "d", default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    /// Tag concerned.
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// When (unix ms).
    #[serde(rename = "ts")]
    pub ts_ms: u64,
    /// Who asked (authenticated principal), when known.
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Site where the change originated (replication uses it to avoid loops).
    #[serde(rename = "o", default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// A referrer as listed by the referrers API.
pub type Referrer = Descriptor;
