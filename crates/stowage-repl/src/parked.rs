//! The dead-letter list: feed entries a replicator set aside because a blob they need failed
//! verification at the site sending it.
//!
//! An entry is parked durably (one synced index write with its audit entry) before the
//! replicator's cursor moves past it, and leaves the list only when a retry replicated it, so a
//! poisoned entry is never dropped silently. Entries live in the index's extension keyspace
//! under a key prefix of their own, with a binary key that sorts them by peer, then by the
//! entry's sequence in the source's feed: `repl/parked/`, the peer name's length (2 bytes,
//! big-endian), the name, the sequence (8 bytes, big-endian). A column family of their own
//! would need an index format change for a list that is normally empty; the prefix gives the
//! same ordered, per-peer scans.

use serde::{Deserialize, Serialize};
use stowage_core::{Actor, Digest};
use stowage_index::{AuditAction, AuditOutcome, Event};
use stowage_store::{ReplicaStore, StoreError};

use crate::error::{ReplError, Result};

/// Key prefix of parked entries in the extension keyspace.
const PREFIX: &[u8] = b"repl/parked/";

/// Names one parked entry: the configured peer whose replication parked it and the entry's
/// sequence in the source site's feed. Written `peer:sequence`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ParkedId {
    /// The peer's name in this site's configuration.
    pub peer: String,
    /// The entry's sequence in the source's feed.
    pub seq: u64,
}

fn peer_prefix(peer: &str) -> Result<Vec<u8>> {
    let len = u16::try_from(peer.len())
        .map_err(|_| ReplError::Invalid(format!("peer name of {} bytes", peer.len())))?;
    let mut k = PREFIX.to_vec();
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(peer.as_bytes());
    Ok(k)
}

impl ParkedId {
    /// Its key in the extension keyspace.
    pub fn key(&self) -> Result<Vec<u8>> {
        let mut k = peer_prefix(&self.peer)?;
        k.extend_from_slice(&self.seq.to_be_bytes());
        Ok(k)
    }

    /// Decodes a key written by [`ParkedId::key`].
    pub fn from_key(key: &[u8]) -> Result<Self> {
        let bad = || ReplError::Record(format!("parked entry key {key:?} is malformed"));
        let rest = key.strip_prefix(PREFIX).ok_or_else(bad)?;
        let (len, rest) = rest.split_first_chunk::<2>().ok_or_else(bad)?;
        let len = usize::from(u16::from_be_bytes(*len));
        let name = rest.get(..len).ok_or_else(bad)?;
        let seq: [u8; 8] = rest
            .get(len..)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?;
        Ok(Self {
            peer: String::from_utf8(name.to_vec()).map_err(|_| bad())?,
            seq: u64::from_be_bytes(seq),
        })
    }

    /// Parses `peer:sequence`.
    pub fn parse(s: &str) -> Result<Self> {
        let (peer, seq) = s.rsplit_once(':').ok_or_else(|| {
            ReplError::Invalid(format!("parked entry {s:?}: expected PEER:SEQUENCE"))
        })?;
        let seq = seq
            .parse()
            .map_err(|e| ReplError::Invalid(format!("parked entry {s:?}: sequence: {e}")))?;
        if peer.is_empty() {
            return Err(ReplError::Invalid(format!(
                "parked entry {s:?}: the peer is missing"
            )));
        }
        Ok(Self {
            peer: peer.to_string(),
            seq,
        })
    }
}

impl std::fmt::Display for ParkedId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.peer, self.seq)
    }
}

/// Why an entry is parked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParkReason {
    /// A blob it needs failed verification at the site sending it (quarantined there).
    SourceCorrupt,
}

/// One parked entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parked {
    /// The feed entry as the source recorded it.
    #[serde(rename = "e")]
    pub event: Event,
    /// The source site (whose feed the sequence belongs to).
    #[serde(rename = "src")]
    pub source_site: String,
    /// Why it is parked.
    #[serde(rename = "why")]
    pub reason: ParkReason,
    /// The blob that failed verification.
    #[serde(rename = "b")]
    pub blob: Digest,
    /// When it was parked (unix ms).
    #[serde(rename = "at")]
    pub parked_ms: u64,
    /// Retries so far.
    #[serde(rename = "n", default)]
    pub attempts: u32,
    /// When it was last retried (unix ms; 0: never).
    #[serde(rename = "la", default)]
    pub last_attempt_ms: u64,
    /// The error that parked it, or the last retry's.
    #[serde(rename = "le", default)]
    pub last_error: String,
}

/// The dead-letter list of this site, over the store.
#[derive(Clone, Debug)]
pub struct DeadLetters {
    store: ReplicaStore,
}

fn encode(p: &Parked) -> Result<Vec<u8>> {
    serde_json::to_vec(p).map_err(|e| ReplError::Record(format!("encoding a parked entry: {e}")))
}

impl DeadLetters {
    /// The list kept in `store`'s index.
    pub fn new(store: ReplicaStore) -> Self {
        Self { store }
    }

    /// Parked entries of `peer` (every peer's with `None`), by peer and sequence. An entry
    /// that does not decode is an error: hiding it would drop it silently.
    pub fn list(&self, peer: Option<&str>) -> Result<Vec<(ParkedId, Parked)>> {
        let prefix = match peer {
            Some(p) => peer_prefix(p)?,
            None => PREFIX.to_vec(),
        };
        let raw = self
            .store
            .index()
            .meta_scan(&prefix)
            .map_err(StoreError::from)?;
        raw.into_iter()
            .map(|(k, v)| {
                let id = ParkedId::from_key(&k)?;
                let p = serde_json::from_slice(&v)
                    .map_err(|e| ReplError::Record(format!("parked entry {id}: {e}")))?;
                Ok((id, p))
            })
            .collect()
    }

    /// How many entries of `peer` are parked.
    pub fn count(&self, peer: &str) -> Result<u64> {
        Ok(self
            .store
            .index()
            .meta_scan(&peer_prefix(peer)?)
            .map_err(StoreError::from)?
            .len() as u64)
    }

    /// One parked entry.
    pub fn get(&self, id: &ParkedId) -> Result<Option<Parked>> {
        match self
            .store
            .index()
            .meta(&id.key()?)
            .map_err(StoreError::from)?
        {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| ReplError::Record(format!("parked entry {id}: {e}"))),
        }
    }

    /// Parks an entry, durably and audited as `actor`'s. Returns false when it was parked
    /// already (a page replayed after a failure parks its entries again: they stay as they
    /// are, with their first time and attempts).
    pub async fn park(&self, id: &ParkedId, entry: &Parked, actor: &Actor) -> Result<bool> {
        if self.get(id)?.is_some() {
            return Ok(false);
        }
        let audit = self
            .store
            .audit_entry(actor, AuditAction::ReplicationPark)
            .repo(entry.event.repo.as_str())
            .target(id.to_string())
            .outcome(AuditOutcome::Failed)
            .detail(format!(
                "parked: needs blob {} from site {}: {}",
                entry.blob, entry.source_site, entry.last_error
            ));
        self.store
            .put_meta_audited(vec![(id.key()?, Some(encode(entry)?))], audit)
            .await?;
        Ok(true)
    }

    /// Records a retry that failed: the entry stays, with the attempt counted (audited as
    /// `actor`'s, in the same batch).
    pub async fn failed_again(&self, id: &ParkedId, entry: &Parked, actor: &Actor) -> Result<()> {
        let audit = self
            .store
            .audit_entry(actor, AuditAction::ReplicationRetry)
            .repo(entry.event.repo.as_str())
            .target(id.to_string())
            .outcome(AuditOutcome::Failed)
            .detail(format!(
                "still parked after attempt {}: {}",
                entry.attempts, entry.last_error
            ));
        self.store
            .put_meta_audited(vec![(id.key()?, Some(encode(entry)?))], audit)
            .await?;
        Ok(())
    }

    /// Takes a replicated entry out of the list (audited as `actor`'s, with `detail`).
    pub async fn release(
        &self,
        id: &ParkedId,
        entry: &Parked,
        actor: &Actor,
        detail: String,
    ) -> Result<()> {
        let audit = self
            .store
            .audit_entry(actor, AuditAction::ReplicationRetry)
            .repo(entry.event.repo.as_str())
            .target(id.to_string())
            .detail(detail);
        self.store
            .put_meta_audited(vec![(id.key()?, None)], audit)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ids_round_trip_and_sort_by_peer_then_sequence() {
        let ids = [
            ParkedId {
                peer: "a".into(),
                seq: 300,
            },
            ParkedId {
                peer: "a".into(),
                seq: 2,
            },
            ParkedId {
                peer: "a:b".into(),
                seq: 1,
            },
            ParkedId {
                peer: "ab".into(),
                seq: 0,
            },
        ];
        for id in &ids {
            assert_eq!(&ParkedId::from_key(&id.key().unwrap()).unwrap(), id);
            assert_eq!(&ParkedId::parse(&id.to_string()).unwrap(), id);
        }
        let mut keys: Vec<_> = ids.iter().map(|i| i.key().unwrap()).collect();
        keys.sort();
        let back: Vec<_> = keys
            .iter()
            .map(|k| ParkedId::from_key(k).unwrap())
            .collect();
        let mut want = ids.to_vec();
        want.sort_by(|x, y| (x.peer.len(), &x.peer, x.seq).cmp(&(y.peer.len(), &y.peer, y.seq)));
        assert_eq!(back, want);
        // One peer's prefix holds only its own entries ("a" is not a prefix of "ab"'s).
        assert!(!ids[3]
            .key()
            .unwrap()
            .starts_with(&peer_prefix("a").unwrap()));
        assert!(ParkedId::parse("nocolon").is_err());
        assert!(ParkedId::parse(":5").is_err());
        assert!(ParkedId::parse("p:x").is_err());
        assert!(ParkedId::from_key(b"repl/parked/\x00\x05ab").is_err());
    }
}
