//! Stable binary key encoding.
//!
//! Keys are compared bytewise by RocksDB, so the encoding decides iteration order:
//!
//! * a digest is one algorithm byte (`1` = sha256, `2` = sha512) followed by the raw hash bytes, so
//!   its length is known from its first byte and digests of one algorithm sort together;
//! * a repository name is its UTF-8 bytes followed by a `0x00` terminator. Names never contain
//!   `0x00`, and the terminator sorts below every legal name byte, so `a\0...` (everything of
//!   repository `a`) never interleaves with `a/b\0...`;
//! * a sequence number is eight big-endian bytes, so numeric and byte order agree.
//!
//! This layout is part of the on-disk format (see [`crate::FORMAT_VERSION`]); changing it needs a
//! format bump and a migration.

use stowage_core::{Algorithm, Digest, RepoName};

use crate::IndexError;

/// Algorithm tag byte used in keys.
fn algo_byte(algo: Algorithm) -> u8 {
    match algo {
        Algorithm::Sha256 => 1,
        Algorithm::Sha512 => 2,
    }
}

/// Appends the binary form of `digest` to `out`.
pub fn put_digest(out: &mut Vec<u8>, digest: &Digest) {
    out.push(algo_byte(digest.algorithm()));
    out.extend_from_slice(&digest.raw_bytes());
}

/// The binary key of a digest alone.
pub fn digest_key(digest: &Digest) -> Vec<u8> {
    let mut k = Vec::with_capacity(65);
    put_digest(&mut k, digest);
    k
}

/// Decodes a digest from the front of `bytes`, returning it and the rest of the slice.
pub fn take_digest(bytes: &[u8]) -> Result<(Digest, &[u8]), IndexError> {
    let (algo, len) = match bytes.first() {
        Some(1) => (Algorithm::Sha256, 32),
        Some(2) => (Algorithm::Sha512, 64),
        other => {
            return Err(IndexError::Corrupt(format!(
                "unknown digest algorithm byte {other:?} in key"
            )))
        }
    };
    let raw = bytes
        .get(1..1 + len)
        .ok_or_else(|| IndexError::Corrupt("truncated digest in key".into()))?;
    let digest = Digest::from_raw(algo, raw)
        .map_err(|e| IndexError::Corrupt(format!("bad digest in key: {e}")))?;
    Ok((digest, &bytes[1 + len..]))
}

/// Appends `repo` and its terminator.
pub fn put_repo(out: &mut Vec<u8>, repo: &RepoName) {
    out.extend_from_slice(repo.as_str().as_bytes());
    out.push(0);
}

/// The prefix that every per-repository key of `repo` starts with.
pub fn repo_prefix(repo: &RepoName) -> Vec<u8> {
    let mut k = Vec::with_capacity(repo.as_str().len() + 1);
    put_repo(&mut k, repo);
    k
}

/// Decodes a repository name from the front of `bytes` (up to its terminator).
pub fn take_repo(bytes: &[u8]) -> Result<(RepoName, &[u8]), IndexError> {
    let end = bytes
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| IndexError::Corrupt("repository name without terminator".into()))?;
    let name = std::str::from_utf8(&bytes[..end])
        .map_err(|e| IndexError::Corrupt(format!("repository name not UTF-8: {e}")))?;
    let repo = RepoName::parse(name)
        .map_err(|e| IndexError::Corrupt(format!("bad repository name in key: {e}")))?;
    Ok((repo, &bytes[end + 1..]))
}

/// `repo \0 digest`.
pub fn repo_digest(repo: &RepoName, digest: &Digest) -> Vec<u8> {
    let mut k = repo_prefix(repo);
    put_digest(&mut k, digest);
    k
}

/// `repo \0 tag`.
pub fn repo_tag(repo: &RepoName, tag: &str) -> Vec<u8> {
    let mut k = repo_prefix(repo);
    k.extend_from_slice(tag.as_bytes());
    k
}

/// Digest-to-tags key: `repo \0, digest, tag` (the tags of a repository that point at a digest
/// share a prefix).
pub fn tag_digest(repo: &RepoName, digest: &Digest, tag: &str) -> Vec<u8> {
    let mut k = repo_digest(repo, digest);
    k.extend_from_slice(tag.as_bytes());
    k
}

/// Reverse reference key: `target digest, repo \0, manifest digest`.
pub fn reference(target: &Digest, repo: &RepoName, manifest: &Digest) -> Vec<u8> {
    let mut k = digest_key(target);
    put_repo(&mut k, repo);
    put_digest(&mut k, manifest);
    k
}

/// Holder key: `digest, kind byte, repo \0` (who holds a blob or manifest, digest-major).
pub fn holder(digest: &Digest, kind: u8, repo: &RepoName) -> Vec<u8> {
    let mut k = digest_key(digest);
    k.push(kind);
    put_repo(&mut k, repo);
    k
}

/// Pending-publish key: `digest, upload id`.
pub fn pending(digest: &Digest, upload: &str) -> Vec<u8> {
    let mut k = digest_key(digest);
    k.extend_from_slice(upload.as_bytes());
    k
}

/// Referrer key: `repo \0, subject digest, referrer digest`.
pub fn referrer(repo: &RepoName, subject: &Digest, referrer: &Digest) -> Vec<u8> {
    let mut k = repo_digest(repo, subject);
    put_digest(&mut k, referrer);
    k
}

/// Feed key: big-endian sequence number.
pub fn seq(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// Decodes a feed key.
pub fn take_seq(bytes: &[u8]) -> Result<u64, IndexError> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| IndexError::Corrupt(format!("feed key of {} bytes", bytes.len())))?;
    Ok(u64::from_be_bytes(arr))
}

/// The smallest key greater than every key that starts with `prefix` (for range ends), or `None`
/// when the prefix is all `0xff`.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::sha256(&[n])
    }

    #[test]
    fn digest_round_trip_and_rest() {
        let dg = d(1);
        let mut k = digest_key(&dg);
        k.extend_from_slice(b"tail");
        let (back, rest) = take_digest(&k).unwrap();
        assert_eq!(back, dg);
        assert_eq!(rest, b"tail");
    }

    #[test]
    fn truncated_and_unknown_digest_keys_are_corrupt() {
        let k = digest_key(&d(1));
        assert!(take_digest(&k[..10]).is_err());
        assert!(take_digest(&[9, 1, 2]).is_err());
        assert!(take_digest(&[]).is_err());
    }

    #[test]
    fn repo_prefixes_do_not_interleave() {
        let a = RepoName::parse("a").unwrap();
        let ab = RepoName::parse("a/b").unwrap();
        let a0 = RepoName::parse("a0").unwrap();
        let ka = repo_tag(&a, "zzz");
        let kab = repo_tag(&ab, "aaa");
        let ka0 = repo_tag(&a0, "aaa");
        assert!(!kab.starts_with(&repo_prefix(&a)));
        assert!(!ka0.starts_with(&repo_prefix(&a)));
        assert!(ka.starts_with(&repo_prefix(&a)));
        // Everything of `a` sorts before `a/b` and `a0`.
        assert!(ka < kab && ka < ka0);
        let (r, rest) = take_repo(&kab).unwrap();
        assert_eq!(r, ab);
        assert_eq!(rest, b"aaa");
    }

    #[test]
    fn seq_order_matches_numeric_order() {
        assert!(seq(255) < seq(256));
        assert_eq!(take_seq(&seq(123_456)).unwrap(), 123_456);
        assert!(take_seq(&[1, 2]).is_err());
    }

    #[test]
    fn prefix_end_bounds_prefix() {
        assert_eq!(prefix_end(b"ab").unwrap(), b"ac".to_vec());
        assert_eq!(prefix_end(&[1, 0xff]).unwrap(), vec![2]);
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }
}
