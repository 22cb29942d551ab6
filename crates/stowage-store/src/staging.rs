//! The bytes unfinished uploads hold on disk, all together and per actor, counted as they
//! arrive: a chunk is refused part-way once it would take either over its limit, so that
//! one client streaming a huge body cannot fill the disk, and one actor cannot take the
//! room every other actor's pushes need.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Bytes staged by unfinished uploads.
#[derive(Debug, Default)]
pub(crate) struct Staging {
    /// All together (read without the lock, for metrics and the quick check).
    total: AtomicU64,
    /// Per owner (an actor's principal; `""` for sessions recorded without one).
    by_owner: Mutex<HashMap<String, u64>>,
}

impl Staging {
    /// Staging as the index records it at start: `(owner, bytes)` per session.
    pub(crate) fn new(sessions: impl IntoIterator<Item = (Option<String>, u64)>) -> Staging {
        let s = Staging::default();
        {
            let mut by_owner = s.by_owner.lock().unwrap_or_else(PoisonError::into_inner);
            for (owner, n) in sessions {
                *by_owner.entry(owner.unwrap_or_default()).or_default() += n;
                s.total.fetch_add(n, Ordering::Relaxed);
            }
        }
        s
    }

    /// Bytes staged, all together.
    pub(crate) fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Bytes staged by `owner`.
    pub(crate) fn of(&self, owner: &str) -> u64 {
        self.by_owner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(owner)
            .copied()
            .unwrap_or(0)
    }

    /// Counts `n` more bytes for `owner`, or says which limit they would cross (and counts
    /// nothing).
    pub(crate) fn reserve(
        &self,
        owner: &str,
        n: u64,
        max_total: u64,
        max_per_owner: u64,
    ) -> Result<(), String> {
        let mut by_owner = self.by_owner.lock().unwrap_or_else(PoisonError::into_inner);
        let total = self.total.load(Ordering::Relaxed);
        if total.saturating_add(n) > max_total {
            return Err(format!(
                "unfinished uploads would hold more than {max_total} bytes (max_staged_bytes)"
            ));
        }
        let mine = by_owner.get(owner).copied().unwrap_or(0);
        if mine.saturating_add(n) > max_per_owner {
            return Err(format!(
                "{owner}'s unfinished uploads would hold more than {max_per_owner} bytes \
                 (max_staged_bytes_per_actor)"
            ));
        }
        by_owner.insert(owner.to_string(), mine + n);
        self.total.store(total + n, Ordering::Relaxed);
        Ok(())
    }

    /// Stops counting `n` bytes of `owner` (a session finished, cancelled or expired, or a
    /// chunk that was not kept).
    pub(crate) fn release(&self, owner: &str, n: u64) {
        if n == 0 {
            return;
        }
        let mut by_owner = self.by_owner.lock().unwrap_or_else(PoisonError::into_inner);
        // Never more than the owner holds, so the total stays the sum of the owners'.
        let Some(mine) = by_owner.get_mut(owner) else {
            return;
        };
        let n = n.min(*mine);
        *mine -= n;
        if *mine == 0 {
            by_owner.remove(owner);
        }
        let _ = self
            .total
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
    }
}

/// The bytes counted for one chunk while it is written ([`Staging::reservation`]): released
/// when dropped, except what [`Reservation::keep`] handed to the session. A request that is
/// cancelled mid-chunk (its future dropped) so gives back what it had counted.
#[derive(Debug)]
pub(crate) struct Reservation {
    staging: Arc<Staging>,
    owner: String,
    counted: Arc<AtomicU64>,
    kept: u64,
}

impl Staging {
    /// A reservation for `owner`'s next chunk; count bytes into it with [`Reservation::add`].
    pub(crate) fn reservation(self: &Arc<Self>, owner: &str) -> Reservation {
        Reservation {
            staging: self.clone(),
            owner: owner.to_string(),
            counted: Arc::default(),
            kept: 0,
        }
    }
}

impl Reservation {
    /// A handle that counts `n` more bytes (within the limits) into this reservation, for
    /// the body stream.
    pub(crate) fn adder(
        &self,
        max_total: u64,
        max_per_owner: u64,
    ) -> impl Fn(u64) -> Result<(), String> {
        let (staging, owner, counted) = (
            self.staging.clone(),
            self.owner.clone(),
            self.counted.clone(),
        );
        move |n| {
            staging.reserve(&owner, n, max_total, max_per_owner)?;
            counted.fetch_add(n, Ordering::Relaxed);
            Ok(())
        }
    }

    /// Bytes counted so far.
    pub(crate) fn counted(&self) -> u64 {
        self.counted.load(Ordering::Relaxed)
    }

    /// `n` of the counted bytes stay counted (the session holds them now).
    pub(crate) fn keep(&mut self, n: u64) {
        self.kept = n.min(self.counted());
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let n = self.counted().saturating_sub(self.kept);
        self.staging.release(&self.owner, n);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn limits_hold_per_owner_and_in_total() {
        let s = Staging::new([(Some("user:a".to_string()), 10), (None, 5)]);
        assert_eq!((s.total(), s.of("user:a"), s.of("")), (15, 10, 5));
        // a may take 10 more (its limit is 20); the 21st byte is refused.
        assert!(s.reserve("user:a", 10, 100, 20).is_ok());
        let e = s.reserve("user:a", 1, 100, 20).unwrap_err();
        assert!(e.contains("max_staged_bytes_per_actor"), "{e}");
        // b is not held back by a, until the total is reached.
        assert!(s.reserve("user:b", 20, 100, 20).is_ok());
        assert_eq!(s.total(), 45);
        let e = s.reserve("user:c", 56, 100, 100).unwrap_err();
        assert!(e.contains("max_staged_bytes"), "{e}");
        assert_eq!(s.total(), 45, "a refusal counts nothing");
        s.release("user:a", 20);
        assert_eq!((s.total(), s.of("user:a")), (25, 0));
        // Releasing more than was counted does not wrap.
        s.release("user:b", 1000);
        assert_eq!((s.total(), s.of("user:b")), (5, 0));
    }

    #[test]
    fn a_reservation_gives_back_what_it_did_not_keep() {
        let s = Arc::new(Staging::default());
        {
            let r = s.reservation("user:a");
            let add = r.adder(100, 100);
            add(30).unwrap();
            add(20).unwrap();
            assert_eq!(s.of("user:a"), 50);
            // Dropped without keeping anything: a cancelled chunk.
        }
        assert_eq!((s.total(), s.of("user:a")), (0, 0));
        {
            let mut r = s.reservation("user:a");
            let add = r.adder(100, 100);
            add(40).unwrap();
            assert!(add(70).is_err());
            r.keep(40);
        }
        assert_eq!((s.total(), s.of("user:a")), (40, 40));
    }
}
