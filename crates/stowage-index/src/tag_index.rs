//! The digest-to-tags index: for every tag, a key `repo \0, digest, tag` in `tag_digests`,
//! written in the same batch as the tag itself (see [`crate::Batch::put_tag`]).
//!
//! Garbage collection re-checks and delete-by-digest ask which tags point at a manifest while
//! they hold its exclusive lock; reading only those tags keeps that cost independent of how
//! many tags the repository has.

use rocksdb::WriteBatch;
use stowage_core::{Digest, RepoName};

use crate::{cf, db_err, decode, keys, Index, IndexError, TagRecord};

impl Index {
    /// Tags in `repo` that point at `digest`, in tag order. Reads only those tags' index keys.
    pub fn tags_pointing_at(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Vec<String>, IndexError> {
        let prefix = keys::repo_digest(repo, digest);
        let mut out = Vec::new();
        self.scan(cf::TAG_DIGESTS, &prefix, &prefix, |k, _| {
            let tag = std::str::from_utf8(&k[prefix.len()..])
                .map_err(|e| IndexError::Corrupt(format!("tag in digest-to-tags key: {e}")))?;
            out.push(tag.to_string());
            Ok(true)
        })?;
        Ok(out)
    }

    /// Format 3 -> 4: builds `tag_digests` from `tags`. Idempotent (puts only, and a tag has
    /// one digest), so a crash half way is finished by the next open.
    pub(crate) fn migrate_v3_tag_digests(&self) -> Result<(), IndexError> {
        let target = self.cf(cf::TAG_DIGESTS)?;
        let mut entries = Vec::new();
        self.scan(cf::TAGS, b"", b"", |k, v| {
            let (repo, rest) = keys::take_repo(k)?;
            let tag = std::str::from_utf8(rest)
                .map_err(|e| IndexError::Corrupt(format!("tag key: {e}")))?;
            let rec: TagRecord = decode("tags", v)?;
            entries.push(keys::tag_digest(&repo, &rec.digest, tag));
            Ok(true)
        })?;
        for chunk in entries.chunks(10_000) {
            let mut wb = WriteBatch::default();
            for k in chunk {
                wb.put_cf(&target, k, b"");
            }
            self.db
                .write(wb)
                .map_err(db_err("writing the migrated digest-to-tags index"))?;
        }
        self.db
            .flush_wal(true)
            .map_err(db_err("syncing the digest-to-tags migration"))
    }
}
