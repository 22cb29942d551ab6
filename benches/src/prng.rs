//! Deterministic, fast, incompressible byte streams.
//!
//! The generator is wyrand (a 64-bit multiply-xorshift generator). Every blob
//! is identified by `(seed, index)`; its bytes are a pure function of those
//! two numbers and the blob length, independent of how the stream is chunked
//! as long as chunk sizes are multiples of 8 (which [`BlobStream`] guarantees).

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};

/// Chunk size used when streaming blobs (multiple of 8).
pub const CHUNK: usize = 1 << 20;

const WY_ADD: u64 = 0xa076_1d64_78bd_642f;
const WY_XOR: u64 = 0xe703_7ed1_a0b4_28db;

/// splitmix64 finaliser, used to derive well-separated per-blob states.
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// wyrand generator.
#[derive(Debug, Clone)]
pub struct WyRand {
    state: u64,
}

impl WyRand {
    /// Generator for blob `index` of run `seed`.
    pub fn for_blob(seed: u64, index: u64) -> Self {
        Self {
            state: splitmix64(seed ^ splitmix64(index.wrapping_add(0x5851_f42d_4c95_7f2d))),
        }
    }

    /// Next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(WY_ADD);
        let t = u128::from(self.state).wrapping_mul(u128::from(self.state ^ WY_XOR));
        ((t >> 64) as u64) ^ (t as u64)
    }

    /// Fill `buf` with random bytes. Consumes `ceil(len/8)` words.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut words = buf.chunks_exact_mut(8);
        for w in &mut words {
            w.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let tail = words.into_remainder();
        if !tail.is_empty() {
            let v = self.next_u64().to_le_bytes();
            let n = tail.len();
            tail.copy_from_slice(&v[..n]);
        }
    }
}

/// Produces the bytes of one blob chunk by chunk.
#[derive(Debug, Clone)]
pub struct BlobStream {
    rng: WyRand,
    remaining: u64,
}

impl BlobStream {
    /// Stream for blob `index` of run `seed`, `len` bytes long.
    pub fn new(seed: u64, index: u64, len: u64) -> Self {
        Self {
            rng: WyRand::for_blob(seed, index),
            remaining: len,
        }
    }

    /// Bytes not yet produced.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Write the next chunk into `buf` (resized to the chunk length).
    /// Returns false when the blob is exhausted.
    pub fn next_into(&mut self, buf: &mut Vec<u8>) -> bool {
        if self.remaining == 0 {
            return false;
        }
        let n = usize::try_from(self.remaining.min(CHUNK as u64)).unwrap_or(CHUNK);
        buf.resize(n, 0);
        self.rng.fill(buf);
        self.remaining -= n as u64;
        true
    }

    /// Next chunk as a freshly allocated `Bytes`.
    pub fn next_bytes(&mut self) -> Option<Bytes> {
        if self.remaining == 0 {
            return None;
        }
        let n = usize::try_from(self.remaining.min(CHUNK as u64)).unwrap_or(CHUNK);
        let mut b = BytesMut::zeroed(n);
        self.rng.fill(&mut b);
        self.remaining -= n as u64;
        Some(b.freeze())
    }
}

/// sha256 of blob `(seed, index, len)` as `sha256:<hex>`, computed streaming.
pub fn blob_digest(seed: u64, index: u64, len: u64) -> String {
    let mut s = BlobStream::new(seed, index, len);
    let mut h = Sha256::new();
    let mut buf = Vec::with_capacity(CHUNK);
    while s.next_into(&mut buf) {
        h.update(&buf);
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// Digests of blobs `0..count`, computed on all available cores.
pub fn blob_digests(seed: u64, count: usize, len: u64) -> Vec<String> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(count.max(1));
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<String>>> = Mutex::new(vec![None; count]);
    std::thread::scope(|sc| {
        for _ in 0..threads {
            sc.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let d = blob_digest(seed, i as u64, len);
                if let Ok(mut g) = out.lock() {
                    g[i] = Some(d);
                }
            });
        }
    });
    out.into_inner()
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, d)| d.unwrap_or_else(|| blob_digest(seed, i as u64, len)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunking_is_consistent() {
        let len = 3 * CHUNK as u64 + 13;
        let mut a = BlobStream::new(7, 3, len);
        let mut all = Vec::new();
        while let Some(b) = a.next_bytes() {
            all.extend_from_slice(&b);
        }
        assert_eq!(all.len() as u64, len);
        let want = format!("sha256:{}", hex::encode(Sha256::digest(&all)));
        assert_eq!(want, blob_digest(7, 3, len));
        assert_ne!(blob_digest(7, 3, 64), blob_digest(7, 4, 64));
        assert_ne!(blob_digest(7, 3, 64), blob_digest(8, 3, 64));
    }
}
