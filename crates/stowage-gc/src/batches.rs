//! How many candidates each store call of the sweep takes.
//!
//! Each call locks its candidates' digests exclusively, re-checks them and writes one synced
//! index commit, so the batch size trades the sweep's speed against what it costs pushes. With
//! clients writing, batches stay small: per-candidate commits cost one fsync each and tripled
//! pushes' p99 manifest-put latency during a sweep, batches of 16 held their locks long enough
//! to double it, and 4 kept it within 1.5x of the quiet value (`gcbench latency`). With nobody
//! writing, nothing waits on those locks or that disk, and small batches only multiply the
//! commits (100,000 purged blobs took 25,000 of them): there the size doubles with each batch
//! up to [`LARGE`], and falls back to [`SMALL`] as soon as a client commits.

/// Candidates per store call while clients write.
pub(crate) const SMALL: usize = 4;

/// The largest batch, reached after a few batches with no client writes.
pub(crate) const LARGE: usize = 256;

/// Cuts `items` into batches sized when each is taken (a stream under `buffer_unordered`
/// takes the next one when a lane frees, so the size follows the load at that moment):
/// [`SMALL`] if `activity` (a count of client commits) moved since the previous batch was taken,
/// else twice the previous size, at most [`LARGE`]. The first batch is [`SMALL`].
pub(crate) struct Batches<I, F> {
    items: I,
    activity: F,
    seen: u64,
    next: usize,
}

impl<I: Iterator, F: FnMut() -> u64> Batches<I, F> {
    pub(crate) fn new(items: I, mut activity: F) -> Self {
        let seen = activity();
        Batches {
            items,
            activity,
            seen,
            next: SMALL,
        }
    }
}

impl<I: Iterator, F: FnMut() -> u64> Iterator for Batches<I, F> {
    type Item = Vec<I::Item>;

    fn next(&mut self) -> Option<Self::Item> {
        let now = (self.activity)();
        let size = if now == self.seen { self.next } else { SMALL };
        self.seen = now;
        self.next = (size * 2).min(LARGE);
        let batch: Vec<I::Item> = self.items.by_ref().take(size).collect();
        (!batch.is_empty()).then_some(batch)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::cell::Cell;

    use super::*;

    #[test]
    fn batches_grow_while_idle_and_shrink_on_client_writes() {
        let commits = Cell::new(0u64);
        let mut b = Batches::new(0..2_000u32, || commits.get());
        let mut sizes = Vec::new();
        for _ in 0..8 {
            sizes.push(b.next().unwrap().len());
        }
        assert_eq!(sizes, [4, 8, 16, 32, 64, 128, 256, 256]);
        commits.set(1);
        assert_eq!(b.next().unwrap().len(), SMALL);
        // Still writing: stays small.
        commits.set(2);
        assert_eq!(b.next().unwrap().len(), SMALL);
        // Quiet again: grows from there.
        assert_eq!(b.next().unwrap().len(), 8);
        assert_eq!(b.next().unwrap().len(), 16);
        // Every item once, in order, then the end.
        let rest: Vec<u32> = b.flatten().collect();
        assert_eq!(
            rest.first(),
            Some(&(4 + 8 + 16 + 32 + 64 + 128 + 256 * 2 + 4 + 4 + 8 + 16))
        );
        assert_eq!(rest.last(), Some(&1_999));
    }
}
