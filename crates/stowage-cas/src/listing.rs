//! Listing the committed blobs, for the consistency check (`stowage fsck`).
//!
//! Listing the blob store is expensive on object stores and never authoritative for what is
//! served (the index is). It is right in one place: finding bytes that no index record knows
//! (orphans), which only a listing can show. Each entry carries the object's last-modified
//! time, so that the caller can tell an orphan from an upload being published right now.

use std::time::SystemTime;

use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use stowage_core::Digest;

use crate::{be_err, blob_path, Cas, CasError};

/// One object found under `blobs/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredBlob {
    /// The object's key, relative to the store's root.
    pub key: String,
    /// The digest the key names, when it is a well-formed blob key (`None` for a stray file
    /// whose name is no digest, or a digest stored under the wrong shard).
    pub digest: Option<Digest>,
    /// Stored size in bytes.
    pub size: u64,
    /// When the object was last written.
    pub modified: SystemTime,
}

/// The digest a blob key names, when `key` is exactly where [`blob_path`] puts that digest.
fn digest_of(key: &Path) -> Option<Digest> {
    let mut parts = key.parts();
    let _blobs = parts.next()?;
    let algorithm = parts.next()?;
    let _shard = parts.next()?;
    let hex = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    let digest = Digest::parse(&format!("{}:{}", algorithm.as_ref(), hex.as_ref())).ok()?;
    (blob_path(&digest) == *key).then_some(digest)
}

impl Cas {
    /// Every object under `blobs/`, in no particular order. A listing error ends the stream
    /// with that error (the caller must not take a partial listing as the whole).
    pub fn list_blobs(&self) -> BoxStream<'_, Result<StoredBlob, CasError>> {
        self.backend
            .list(&Path::from("blobs"))
            .map(|item| {
                let meta = item.map_err(be_err("listing blobs"))?;
                Ok(StoredBlob {
                    key: meta.location.to_string(),
                    digest: digest_of(&meta.location),
                    size: meta.size,
                    modified: meta.last_modified.into(),
                })
            })
            .boxed()
    }

    /// Deletes a listed object (for one whose key names no digest, which
    /// [`Cas::delete`] cannot reach). Deleting an absent object is not an error.
    pub async fn delete_listed(&self, blob: &StoredBlob) -> Result<(), CasError> {
        debug_assert!(blob.key.starts_with("blobs/"), "not a listed blob key");
        self.backend
            .delete(&Path::from(blob.key.as_str()))
            .await
            .map_err(be_err(format!("deleting {}", blob.key)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_exact_blob_keys_name_a_digest() {
        let d = Digest::sha256(b"x");
        assert_eq!(digest_of(&blob_path(&d)), Some(d.clone()));
        let wrong_shard = format!("blobs/sha256/zz/{}", d.hex());
        assert_eq!(digest_of(&Path::from(wrong_shard)), None);
        assert_eq!(digest_of(&Path::from("blobs/sha256/ab/garbage")), None);
        assert_eq!(digest_of(&Path::from("blobs/sha256/ab")), None);
    }

    /// Every backend lists exactly its committed blobs, with sizes, and no staged parts.
    #[tokio::test]
    async fn every_backend_lists_committed_blobs_only() {
        use futures::TryStreamExt;
        use stowage_core::{Algorithm, Hasher};
        for (name, cas, _dir) in crate::tests::named_backends().await {
            let mut want = Vec::new();
            for (id, n) in [("a", 10usize), ("b", 70_000)] {
                let bytes = vec![n as u8; n];
                let mut h = Hasher::new(Algorithm::Sha256);
                let chunk =
                    futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(bytes))]);
                cas.write_part(id, 0, chunk, &mut h, u64::MAX, true)
                    .await
                    .unwrap();
                let d = h.finish();
                cas.commit(id, &[0], &d).await.unwrap();
                want.push((blob_path(&d).to_string(), Some(d), n as u64));
            }
            // Staged, never committed: not a blob.
            let mut h = Hasher::new(Algorithm::Sha256);
            let chunk = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(vec![
                    1u8;
                    100
                ]))]);
            cas.write_part("staged", 0, chunk, &mut h, u64::MAX, true)
                .await
                .unwrap();
            let mut got: Vec<(String, Option<Digest>, u64)> = cas
                .list_blobs()
                .map_ok(|b| (b.key, b.digest, b.size))
                .try_collect()
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            got.sort();
            want.sort();
            assert_eq!(got, want, "{name}");
            let listed: Vec<StoredBlob> = cas.list_blobs().try_collect().await.unwrap();
            cas.delete_listed(&listed[0]).await.unwrap();
            assert_eq!(cas.list_blobs().count().await, 1, "{name}");
        }
    }
}
