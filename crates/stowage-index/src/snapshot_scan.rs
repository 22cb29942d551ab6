//! Scans of the derived column families (reverse references, holders, referrers) and of the
//! feed's sequence numbers, on a [`Snapshot`], for the consistency check (`stowage fsck`):
//! what is derived is compared against what the manifest records and links say it must be.

use stowage_core::Digest;

use crate::{cf, decode_ms, keys, HoldKind, IndexError, RefKind, Snapshot};

impl Snapshot<'_> {
    /// Every reverse reference: `(target, repository, manifest, kind)`, target order.
    pub fn refs(
        &self,
        mut visit: impl FnMut(Digest, &str, Digest, RefKind) -> Result<(), IndexError>,
    ) -> Result<(), IndexError> {
        self.each(cf::REFS, |k, v| {
            let (target, rest) = keys::take_digest(k)?;
            let (repo, rest) = keys::take_repo(rest)?;
            let (manifest, _) = keys::take_digest(rest)?;
            let kind = v
                .first()
                .and_then(|b| RefKind::from_byte(*b))
                .ok_or_else(|| IndexError::Corrupt(format!("bad kind of ref to {target}")))?;
            visit(target, repo.as_str(), manifest, kind)
        })
    }

    /// Every holder entry: `(digest, kind, repository, time unix ms)`, digest order.
    pub fn holders(
        &self,
        mut visit: impl FnMut(Digest, HoldKind, &str, u64) -> Result<(), IndexError>,
    ) -> Result<(), IndexError> {
        self.each(cf::HOLDERS, |k, v| {
            let (digest, rest) = keys::take_digest(k)?;
            let kind = match rest.first() {
                Some(1) => HoldKind::Link,
                Some(2) => HoldKind::Manifest,
                other => {
                    return Err(IndexError::Corrupt(format!(
                        "holder of {digest} of unknown kind {other:?}"
                    )))
                }
            };
            let (repo, _) = keys::take_repo(&rest[1..])?;
            visit(digest, kind, repo.as_str(), decode_ms(v)?)
        })
    }

    /// Every referrer entry: `(repository, subject, referrer)`.
    pub fn referrer_entries(
        &self,
        mut visit: impl FnMut(&str, Digest, Digest) -> Result<(), IndexError>,
    ) -> Result<(), IndexError> {
        self.each(cf::REFERRERS, |k, _| {
            let (repo, rest) = keys::take_repo(k)?;
            let (subject, rest) = keys::take_digest(rest)?;
            let (referrer, _) = keys::take_digest(rest)?;
            visit(repo.as_str(), subject, referrer)
        })
    }

    /// Every feed entry's sequence number, ascending (values are not decoded).
    pub fn feed_seqs(
        &self,
        mut visit: impl FnMut(u64) -> Result<(), IndexError>,
    ) -> Result<(), IndexError> {
        self.each(cf::FEED, |k, _| visit(keys::take_seq(k)?))
    }
}
