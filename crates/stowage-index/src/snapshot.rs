//! A consistent, point-in-time view of the whole index, for garbage collection's mark phase.
//!
//! Every column family is read at the same RocksDB sequence number, so the view never shows a
//! half-applied batch: a manifest's record, its reverse references and its feed entry appear
//! together or not at all. Scans use raw iterators and hand out borrowed keys and decoded values
//! one at a time, so marking a large index holds only what the collector itself keeps.

use rocksdb::{ReadOptions, SnapshotWithThreadMode};
use stowage_core::Digest;

use crate::{
    cf, db_err, decode, decode_ms, keys, BlobRecord, Db, Index, IndexError, ManifestRecord,
    TagRecord, UploadRecord, META_SEQ,
};

/// The view. Holds a RocksDB snapshot until dropped (which pins old versions: keep it for one
/// mark phase, not longer).
pub struct Snapshot<'a> {
    index: &'a Index,
    snap: SnapshotWithThreadMode<'a, Db>,
}

impl std::fmt::Debug for Snapshot<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("sequence", &self.snap.sequence_number())
            .finish()
    }
}

/// Splits `repo \0 rest` without validating the name (it was validated when written).
fn split_repo(key: &[u8]) -> Result<(&str, &[u8]), IndexError> {
    let end = key
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| IndexError::Corrupt("repository name without terminator".into()))?;
    let name = std::str::from_utf8(&key[..end])
        .map_err(|e| IndexError::Corrupt(format!("repository name not UTF-8: {e}")))?;
    Ok((name, &key[end + 1..]))
}

impl<'a> Snapshot<'a> {
    pub(crate) fn new(index: &'a Index) -> Self {
        Snapshot {
            index,
            snap: index.db.snapshot(),
        }
    }

    /// The last change-feed sequence the view includes.
    pub fn last_seq(&self) -> Result<u64, IndexError> {
        let meta = self.index.cf(cf::META)?;
        match self
            .snap
            .get_cf(&meta, META_SEQ)
            .map_err(db_err("reading feed sequence in snapshot"))?
        {
            Some(v) => keys::take_seq(&v),
            None => Ok(0),
        }
    }

    /// Visits every `(key, value)` of a column family in key order.
    pub(crate) fn each(
        &self,
        name: &'static str,
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<(), IndexError>,
    ) -> Result<(), IndexError> {
        let cf = self.index.cf(name)?;
        let mut ro = ReadOptions::default();
        // A one-pass scan: do not churn the block cache with it.
        ro.fill_cache(false);
        ro.set_readahead_size(2 << 20);
        // A whole column family crosses every prefix of a prefix extractor.
        ro.set_total_order_seek(true);
        let mut it = self.snap.raw_iterator_cf_opt(&cf, ro);
        it.seek_to_first();
        while it.valid() {
            if let (Some(k), Some(v)) = (it.key(), it.value()) {
                visit(k, v)?;
            }
            it.next();
        }
        it.status()
            .map_err(db_err(format!("scanning {name} in snapshot")))
    }

    /// Every tag: `(repository, tag, record)`, repository-major.
    pub fn tags(
        &self,
        mut visit: impl FnMut(&str, &str, TagRecord) -> Result<(), IndexError>,
    ) -> Result<(), IndexError> {
        self.each(cf::TAGS, |k, v| {
            let (repo, rest) = split_repo(k)?;
            let tag = std::str::from_utf8(rest)
                .map_err(|e| IndexError::Corrupt(format!("tag key: {e}")))?;
            visit(repo, tag, decode("tags", v)?)
        })
    }

    /// Every manifest record: `(repository, digest, record)`, repository-major.
    pub fn manifests(
        &self,
        mut visit: impl FnMut(&str, Digest, ManifestRecord) -> Result<(), IndexError>,
    ) -> Result<(), IndexError> {
        self.each(cf::MANIFESTS, |k, v| {
            let (repo, rest) = split_repo(k)?;
            let (digest, _) = keys::take_digest(rest)?;
            visit(repo, digest, decode("manifests", v)?)
        })
    }

    /// Every blob link: `(repository, digest, linked at unix ms)`, repository-major.
    pub fn links(
        &self,
        mut visit: impl FnMut(&str, Digest, u64) -> Result<(), IndexError>,
    ) -> Result<(), IndexError> {
        self.each(cf::REPO_BLOBS, |k, v| {
            let (repo, rest) = split_repo(k)?;
            let (digest, _) = keys::take_digest(rest)?;
            visit(repo, digest, decode_ms(v)?)
        })
    }

    /// Every blob record: `(digest, record)`, digest order.
    pub fn blobs(
        &self,
        mut visit: impl FnMut(Digest, BlobRecord) -> Result<(), IndexError>,
    ) -> Result<(), IndexError> {
        self.each(cf::BLOBS, |k, v| {
            let (digest, _) = keys::take_digest(k)?;
            visit(digest, decode("blobs", v)?)
        })
    }

    /// Every stored manifest document: `(digest, size in bytes)`.
    pub fn manifest_documents(
        &self,
        mut visit: impl FnMut(Digest, u64) -> Result<(), IndexError>,
    ) -> Result<(), IndexError> {
        self.each(cf::MANIFEST_BYTES, |k, v| {
            let (digest, _) = keys::take_digest(k)?;
            visit(digest, v.len() as u64)
        })
    }

    /// Every upload session: `(id, record)`.
    pub fn uploads(
        &self,
        mut visit: impl FnMut(&str, UploadRecord) -> Result<(), IndexError>,
    ) -> Result<(), IndexError> {
        self.each(cf::UPLOADS, |k, v| {
            let id = std::str::from_utf8(k)
                .map_err(|e| IndexError::Corrupt(format!("upload key: {e}")))?;
            visit(id, decode("uploads", v)?)
        })
    }
}
