//! Paged scans for background work that walks a whole column family a little at a time and
//! must be able to stop and pick up again where it left off (the integrity scrub).

use stowage_core::Digest;

use crate::{cf, decode, keys, BlobRecord, Index, IndexError};

impl Index {
    /// Blob records in digest-key order, starting just after `after` (from the first with
    /// `None`), at most `n`. A caller that remembers the last digest it got can resume the walk
    /// across restarts; records added behind it are seen on the next walk.
    pub fn blobs_after(
        &self,
        after: Option<&Digest>,
        n: usize,
    ) -> Result<Vec<(Digest, BlobRecord)>, IndexError> {
        let mut out = Vec::new();
        if n == 0 {
            return Ok(out);
        }
        let start = match after {
            // The smallest key greater than `after`'s.
            Some(d) => {
                let mut k = keys::digest_key(d);
                k.push(0);
                k
            }
            None => Vec::new(),
        };
        self.scan(cf::BLOBS, b"", &start, |k, v| {
            let (digest, _) = keys::take_digest(k)?;
            out.push((digest, decode("blobs", v)?));
            Ok(out.len() < n)
        })?;
        Ok(out)
    }
}
