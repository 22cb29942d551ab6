//! Column family options: one shared block cache, bloom filters on the column families read by
//! point lookups, a fixed-length prefix extractor on the digest-major ones, and L0 filter and
//! index blocks pinned in the cache.
//!
//! Each setting is a switch so `benches/src/bin/index-scale.rs` can measure it against the
//! baseline (RocksDB's defaults); `benches/README.md` has the figures that chose the defaults.

use rocksdb::{BlockBasedOptions, Cache, Options, SliceTransform};

use crate::cf;

/// How the column families are tuned. The default is the measured choice; [`Tuning::baseline`]
/// is RocksDB's defaults (what the index used before), kept for comparison.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// Bytes of one LRU block cache shared by every column family; 0 keeps RocksDB's default
    /// (a separate 32 MiB cache per column family, so 17 of them could grow to 544 MiB).
    pub block_cache_bytes: usize,
    /// A whole-key bloom filter (10 bits per key, about 1% false positives) on the column
    /// families read by point lookups, so a lookup of an absent key (a new blob, a tag not yet
    /// set) usually reads no data block.
    pub bloom_filters: bool,
    /// A 33-byte prefix extractor (algorithm byte + sha256) with a prefix bloom on the
    /// digest-major column families (`refs`, `holders`, `pending`), which are scanned one digest
    /// at a time. Scans that cross prefixes use total-order iteration (see `Index::scan`).
    pub digest_prefix: bool,
    /// Keep index and filter blocks in the block cache (bounded by it) and pin those of L0 files,
    /// which every lookup consults.
    pub pin_l0: bool,
}

/// Default shared block cache: 256 MiB.
pub const DEFAULT_BLOCK_CACHE_BYTES: usize = 256 << 20;

/// Length of the digest-major prefix: the algorithm byte and a sha256 hash. Longer digests
/// (sha512) share the extractor: their first 33 bytes are a valid, if coarser, prefix.
pub(crate) const DIGEST_PREFIX_LEN: usize = 33;

impl Default for Tuning {
    fn default() -> Self {
        Self {
            block_cache_bytes: DEFAULT_BLOCK_CACHE_BYTES,
            bloom_filters: true,
            digest_prefix: true,
            pin_l0: true,
        }
    }
}

impl Tuning {
    /// RocksDB's defaults for every column family: no filters, no prefix extractor, a cache of
    /// its own per column family.
    pub fn baseline() -> Self {
        Self {
            block_cache_bytes: 0,
            bloom_filters: false,
            digest_prefix: false,
            pin_l0: false,
        }
    }

    /// The shared cache, when one is configured.
    pub(crate) fn cache(&self) -> Option<Cache> {
        (self.block_cache_bytes > 0).then(|| Cache::new_lru_cache(self.block_cache_bytes))
    }

    /// Options of column family `name`.
    pub(crate) fn cf_options(&self, name: &str, cache: Option<&Cache>) -> Options {
        let mut opts = Options::default();
        let mut table = BlockBasedOptions::default();
        if let Some(cache) = cache {
            table.set_block_cache(cache);
        }
        let point = POINT_LOOKUP.contains(&name);
        let digest_major = self.digest_prefix && DIGEST_MAJOR.contains(&name);
        if (self.bloom_filters && point) || digest_major {
            table.set_bloom_filter(10.0, false);
        }
        if digest_major {
            opts.set_prefix_extractor(SliceTransform::create_fixed_prefix(DIGEST_PREFIX_LEN));
            // Whole keys are filtered as well (RocksDB's default), for point lookups.
            table.set_whole_key_filtering(true);
        }
        if self.pin_l0 {
            table.set_cache_index_and_filter_blocks(true);
            table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        }
        opts.set_block_based_table_factory(&table);
        opts
    }

    /// Whether `name` has a prefix extractor, so iterators over it must ask for total order
    /// when they cross prefixes.
    pub(crate) fn has_prefix(&self, name: &str) -> bool {
        self.digest_prefix && DIGEST_MAJOR.contains(&name)
    }
}

/// Column families read by point lookups (gets by full key).
const POINT_LOOKUP: [&str; 9] = [
    cf::BLOBS,
    cf::REPO_BLOBS,
    cf::REPOS,
    cf::TAGS,
    cf::MANIFESTS,
    cf::MANIFEST_BYTES,
    cf::UPLOADS,
    cf::ACCOUNTS,
    cf::PENDING,
];

/// Column families keyed digest first and scanned one digest at a time.
const DIGEST_MAJOR: [&str; 3] = [cf::REFS, cf::HOLDERS, cf::PENDING];

impl crate::Index {
    /// Compacts every column family into its bottom level, rewriting every table file with the
    /// options the index was opened with (filters and prefix extractors apply to files written
    /// after they were set). For benchmarks and operators after a tuning change; it rewrites
    /// the whole database, so it takes a while on a big one.
    pub fn compact_all(&self) -> Result<(), crate::IndexError> {
        let mut opts = rocksdb::CompactOptions::default();
        // Rewrite the bottom level too (by default it is left alone without a compaction filter).
        opts.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        for name in cf::ALL {
            let handle = self.cf(name)?;
            self.db
                .compact_range_cf_opt(&handle, None::<&[u8]>, None::<&[u8]>, &opts);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{Batch, BlobRecord, BlobState, HoldKind, Index, IndexOptions, RefKind};
    use stowage_core::{Digest, RepoName};

    fn open(dir: &std::path::Path, tuning: Tuning) -> Index {
        let opts = IndexOptions {
            sync_writes: false,
            tuning,
        };
        Index::open(dir, opts).unwrap()
    }

    fn flush_all(idx: &Index) {
        for name in cf::ALL {
            idx.db.flush_cf(&idx.cf(name).unwrap()).unwrap();
        }
    }

    /// `name=value` from RocksDB's aggregated table properties of a column family.
    fn table_prop(idx: &Index, name: &str, key: &str) -> String {
        let props = idx
            .db
            .property_value_cf(
                &idx.cf(name).unwrap(),
                "rocksdb.aggregated-table-properties",
            )
            .unwrap()
            .unwrap_or_default();
        props
            .split(';')
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    }

    fn digest(i: u32) -> Digest {
        Digest::sha256(format!("d{i}").as_bytes())
    }

    /// 100 blobs, each linked into two repositories and referenced by one manifest, committed
    /// in four batches with the memtables flushed after each (so every scan crosses files).
    fn fill(idx: &Index) {
        let manifest = Digest::sha256(b"manifest");
        for part in 0..4 {
            let mut b = Batch::new();
            for i in (part * 25)..(part + 1) * 25 {
                let d = digest(i);
                b.put_blob(
                    &d,
                    &BlobRecord {
                        size: 1,
                        state: BlobState::Present,
                        created_ms: 1,
                        updated_ms: 1,
                        crc32c: None,
                        quarantine: None,
                    },
                );
                for r in ["a", "b/c"] {
                    b.link_blob(&RepoName::parse(r).unwrap(), &d, 7);
                }
                b.put_ref(&d, &RepoName::parse("a").unwrap(), &manifest, RefKind::Blob);
            }
            idx.commit(b).unwrap();
            flush_all(idx);
        }
    }

    #[test]
    fn default_tuning_writes_filters_and_a_digest_prefix_and_shares_one_cache() {
        let dir = tempfile::tempdir().unwrap();
        let idx = open(dir.path(), Tuning::default());
        fill(&idx);
        for name in [cf::BLOBS, cf::REPO_BLOBS, cf::HOLDERS, cf::REFS] {
            let size: u64 = table_prop(&idx, name, "filter block size").parse().unwrap();
            assert!(size > 0, "{name} has no filter");
        }
        // `holders` and `refs` have filters only through the digest prefix setting.
        for name in cf::ALL {
            let cap = idx
                .db
                .property_int_value_cf(&idx.cf(name).unwrap(), "rocksdb.block-cache-capacity")
                .unwrap();
            assert_eq!(cap, Some(DEFAULT_BLOCK_CACHE_BYTES as u64), "{name}");
        }
        // What the index had before tuning (RocksDB's defaults): no filters, a small cache of
        // each column family's own.
        let dir = tempfile::tempdir().unwrap();
        let idx = open(dir.path(), Tuning::baseline());
        fill(&idx);
        assert_eq!(table_prop(&idx, cf::BLOBS, "filter block size"), "0");
        let cap = idx
            .db
            .property_int_value_cf(&idx.cf(cf::BLOBS).unwrap(), "rocksdb.block-cache-capacity")
            .unwrap();
        assert_ne!(cap, Some(DEFAULT_BLOCK_CACHE_BYTES as u64));
    }

    /// With the digest prefix extractor, scans by digest, by absent digest and over the whole
    /// column family return what the untuned index returns, also after reopening the index
    /// with the other options (files written under one setting, read under the other).
    #[test]
    fn digest_scans_see_every_key_under_every_tuning() {
        let dir = tempfile::tempdir().unwrap();
        let answers = |idx: &Index| {
            let mut out = Vec::new();
            for i in 0..110 {
                let d = digest(i);
                out.push((
                    idx.holders(&d, HoldKind::Link).unwrap(),
                    idx.referencing(&d).unwrap(),
                ));
            }
            let snap = idx.snapshot();
            let mut holders = 0;
            snap.holders(|_, _, _, _| {
                holders += 1;
                Ok(())
            })
            .unwrap();
            let mut refs = 0;
            snap.refs(|_, _, _, _| {
                refs += 1;
                Ok(())
            })
            .unwrap();
            (out, holders, refs, idx.pending().unwrap().len())
        };
        let tuned = {
            let idx = open(dir.path(), Tuning::default());
            fill(&idx);
            answers(&idx)
        };
        assert_eq!(tuned.1, 200);
        assert_eq!(tuned.2, 100);
        assert_eq!(tuned.0[5].0.len(), 2);
        assert!(tuned.0[105].0.is_empty() && tuned.0[105].1.is_empty());
        let baseline = answers(&open(dir.path(), Tuning::baseline()));
        assert_eq!(tuned, baseline);
        let idx = open(dir.path(), Tuning::default());
        idx.compact_all().unwrap();
        assert_eq!(answers(&idx), baseline);
    }
}
