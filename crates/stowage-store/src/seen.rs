//! Digests clients have just been told about, kept safe from garbage collection for a while.
//!
//! A client pushing an image asks `HEAD /v2/<repo>/blobs/<digest>` for each layer, skips the ones
//! the registry has, uploads the rest and then puts the manifest. If a sweep removes a skipped
//! layer in between, the manifest put fails with `MANIFEST_BLOB_UNKNOWN`, which docker and podman
//! do not retry. So a digest a client has just seen (a `HEAD` or `GET` that found it, or an
//! upload or mount that stored it) counts as in use for at least the window: the sweep's re-check
//! under the digest's exclusive lock keeps it, exactly as it keeps a pinned blob.
//!
//! Held in memory only, with no write per `HEAD`: after a restart the window starts empty, which
//! is safe because a client's push does not survive a restart of the registry either. Two
//! generations of 128-bit digest prefixes rotate every window, so a digest noted at `t` is held
//! until at least `t + window` and at most `t + 2 × window`, memory is bounded by `max` prefixes
//! per generation (16 bytes each, plus the table's overhead), and a prefix collision only keeps
//! some garbage one window longer. When a generation is full, a note that does not fit makes
//! every digest count as seen until that generation has passed: collection pauses rather than
//! a client losing its protection.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use stowage_core::Digest;

/// The two generations.
#[derive(Debug, Default)]
struct Generations {
    started_ms: u64,
    current: HashSet<u128>,
    previous: HashSet<u128>,
    /// A note was dropped in the generation (it was full): every digest counts as seen until
    /// that generation ends, so a full table pauses collection instead of losing protection.
    current_overflowed: bool,
    previous_overflowed: bool,
}

/// Recently seen digests.
#[derive(Debug)]
pub(crate) struct Seen {
    window_ms: u64,
    max: usize,
    gens: Mutex<Generations>,
    dropped: AtomicU64,
}

fn prefix(digest: &Digest) -> u128 {
    let hex = digest.hex();
    u128::from_str_radix(&hex[..32.min(hex.len())], 16).unwrap_or(0)
}

impl Generations {
    fn rotate(&mut self, now_ms: u64, window_ms: u64) {
        if now_ms < self.started_ms.saturating_add(window_ms) {
            return;
        }
        if now_ms >= self.started_ms.saturating_add(window_ms.saturating_mul(2)) {
            // Nothing noted in the last window is still in `current`'s generation span.
            self.previous.clear();
            self.current.clear();
            self.previous_overflowed = false;
        } else {
            self.previous = std::mem::take(&mut self.current);
            self.previous_overflowed = self.current_overflowed;
        }
        self.current_overflowed = false;
        self.started_ms = now_ms;
    }
}

impl Seen {
    /// Holds seen digests for `window_ms` (0 turns the protection off), at most `max` per
    /// generation.
    pub(crate) fn new(window_ms: u64, max: usize) -> Self {
        Self {
            window_ms,
            max,
            gens: Mutex::new(Generations::default()),
            dropped: AtomicU64::new(0),
        }
    }

    fn gens(&self) -> std::sync::MutexGuard<'_, Generations> {
        // The sets stay consistent whatever a panicking holder did: at worst a digest is missing.
        self.gens.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that a client has just seen `digest`.
    pub(crate) fn note(&self, digest: &Digest, now_ms: u64) {
        if self.window_ms == 0 {
            return;
        }
        let mut g = self.gens();
        g.rotate(now_ms, self.window_ms);
        let p = prefix(digest);
        if g.current.len() >= self.max && !g.current.contains(&p) {
            if !g.current_overflowed {
                tracing::warn!(
                    max = self.max,
                    "the seen table is full: garbage collection keeps every blob until it drains"
                );
            }
            g.current_overflowed = true;
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        g.current.insert(p);
    }

    /// Whether `digest` was seen within the window.
    pub(crate) fn contains(&self, digest: &Digest, now_ms: u64) -> bool {
        if self.window_ms == 0 {
            return false;
        }
        let mut g = self.gens();
        g.rotate(now_ms, self.window_ms);
        if g.current_overflowed || g.previous_overflowed {
            return true;
        }
        let p = prefix(digest);
        g.current.contains(&p) || g.previous.contains(&p)
    }

    /// Digests held now, and notes dropped because a generation was full (since start).
    pub(crate) fn stats(&self) -> (usize, u64) {
        let g = self.gens();
        (
            g.current.len() + g.previous.len(),
            self.dropped.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn held_for_at_least_the_window_and_at_most_two() {
        let seen = Seen::new(1_000, 10);
        let d = Digest::sha256(b"layer");
        let other = Digest::sha256(b"other");
        seen.note(&d, 10_500);
        for t in [10_500, 11_000, 11_499] {
            assert!(seen.contains(&d, t), "at {t}");
            assert!(!seen.contains(&other, t));
        }
        // Somewhere between one and two windows after the note it is gone.
        assert!(!seen.contains(&d, 12_501));
        // A quiet gap of two windows clears both generations at once.
        seen.note(&d, 20_000);
        assert!(seen.contains(&d, 20_999));
        assert!(!seen.contains(&d, 22_000));
    }

    #[test]
    fn bounded_and_off_at_zero() {
        let seen = Seen::new(1_000, 3);
        for i in 0..5u8 {
            seen.note(&Digest::sha256(&[i]), 0);
        }
        assert_eq!(seen.stats(), (3, 2));
        assert!(seen.contains(&Digest::sha256(&[0]), 1));
        // A note was dropped: every digest counts as seen (collection pauses) rather than the
        // dropped one losing its protection...
        assert!(seen.contains(&Digest::sha256(&[4]), 1));
        assert!(seen.contains(&Digest::sha256(b"never noted"), 1_500));
        // ...until the generation that dropped it has passed.
        assert!(!seen.contains(&Digest::sha256(b"never noted"), 2_500));
        let off = Seen::new(0, 3);
        off.note(&Digest::sha256(b"x"), 0);
        assert!(!off.contains(&Digest::sha256(b"x"), 0));
    }
}
