//! Protobuf <-> index/store types, at the gRPC edge only.

use stowage_core::{Digest, RepoName};
use stowage_index::{Event, EventKind};
use stowage_rpc::v1 as pb;
use stowage_store::{TagState, TagVersion};

use crate::error::{ReplError, Result};

/// Parses a repository name from the wire.
pub fn repo(s: &str) -> Result<RepoName> {
    RepoName::parse(s).map_err(|e| ReplError::Invalid(format!("repository {s:?}: {e}")))
}

/// Parses a digest from the wire.
pub fn digest(s: &str) -> Result<Digest> {
    Digest::parse(s).map_err(|e| ReplError::Invalid(format!("digest {s:?}: {e}")))
}

fn kind_to_proto(k: &EventKind) -> pb::EventKind {
    match k {
        EventKind::BlobPut => pb::EventKind::BlobPut,
        EventKind::BlobLinked => pb::EventKind::BlobLinked,
        EventKind::BlobUnlinked => pb::EventKind::BlobUnlinked,
        EventKind::ManifestPut => pb::EventKind::ManifestPut,
        EventKind::ManifestDeleted => pb::EventKind::ManifestDeleted,
        EventKind::TagSet => pb::EventKind::TagSet,
        EventKind::TagDeleted => pb::EventKind::TagDeleted,
    }
}

/// A feed entry for the wire.
pub fn event_to_proto(seq: u64, e: &Event) -> pb::FeedEvent {
    pb::FeedEvent {
        sequence: seq,
        kind: kind_to_proto(&e.kind) as i32,
        repository: e.repo.clone(),
        digest: e.digest.as_ref().map(|d| d.to_string()).unwrap_or_default(),
        tag: e.tag.clone().unwrap_or_default(),
        ts_ms: e.ts_ms,
        origin: e.origin.clone().unwrap_or_default(),
        actor: e.actor.clone().unwrap_or_default(),
    }
}

/// A feed entry from the wire; `None` for kinds this build does not know (skipped).
pub fn event_from_proto(p: pb::FeedEvent) -> Result<Option<(u64, Event)>> {
    let kind = match pb::EventKind::try_from(p.kind) {
        Ok(pb::EventKind::BlobPut) => EventKind::BlobPut,
        Ok(pb::EventKind::BlobLinked) => EventKind::BlobLinked,
        Ok(pb::EventKind::BlobUnlinked) => EventKind::BlobUnlinked,
        Ok(pb::EventKind::ManifestPut) => EventKind::ManifestPut,
        Ok(pb::EventKind::ManifestDeleted) => EventKind::ManifestDeleted,
        Ok(pb::EventKind::TagSet) => EventKind::TagSet,
        Ok(pb::EventKind::TagDeleted) => EventKind::TagDeleted,
        Ok(pb::EventKind::Unspecified) | Err(_) => return Ok(None),
    };
    let digest = if p.digest.is_empty() {
        None
    } else {
        Some(digest(&p.digest)?)
    };
    let opt = |s: String| (!s.is_empty()).then_some(s);
    Ok(Some((
        p.sequence,
        Event {
            kind,
            repo: p.repository,
            digest,
            tag: opt(p.tag),
            ts_ms: p.ts_ms,
            actor: opt(p.actor),
            origin: opt(p.origin),
        },
    )))
}

/// A tag state for the wire.
pub fn tag_to_proto(repo: &str, tag: &str, s: Option<&TagState>) -> pb::TagState {
    match s {
        Some(TagState::Set { digest, version }) => pb::TagState {
            repository: repo.to_string(),
            tag: tag.to_string(),
            present: true,
            digest: digest.to_string(),
            version_ms: version.ms,
            origin: version.origin.clone(),
        },
        Some(TagState::Deleted { version }) => pb::TagState {
            repository: repo.to_string(),
            tag: tag.to_string(),
            present: false,
            digest: String::new(),
            version_ms: version.ms,
            origin: version.origin.clone(),
        },
        None => pb::TagState {
            repository: repo.to_string(),
            tag: tag.to_string(),
            ..Default::default()
        },
    }
}

/// A tag state from the wire (`None`: the site never saw the tag).
pub fn tag_from_proto(p: &pb::TagState) -> Result<Option<TagState>> {
    let version = TagVersion {
        ms: p.version_ms,
        origin: p.origin.clone(),
    };
    if p.present {
        Ok(Some(TagState::Set {
            digest: digest(&p.digest)?,
            version,
        }))
    } else if p.version_ms == 0 && p.origin.is_empty() {
        Ok(None)
    } else {
        Ok(Some(TagState::Deleted { version }))
    }
}
