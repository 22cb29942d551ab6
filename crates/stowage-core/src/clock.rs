//! Time sources. Code that needs "now" takes a `&dyn Clock` (or generic) so
//! tests can control time with [`ManualClock`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of the current time in Unix milliseconds.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_millis(&self) -> u64;
}

/// The real wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_millis(&self) -> u64 {
        // A clock before 1970 is treated as the epoch; millis fit in u64 for
        // the next ~584 million years.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// A manually driven clock for tests. Clones share the same time.
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    now: Arc<AtomicU64>,
}

impl ManualClock {
    /// Create a clock reading `start_ms`.
    pub fn new(start_ms: u64) -> ManualClock {
        ManualClock {
            now: Arc::new(AtomicU64::new(start_ms)),
        }
    }

    /// Set the current time.
    pub fn set(&self, ms: u64) {
        self.now.store(ms, Ordering::SeqCst);
    }

    /// Move time forward by `ms` (saturating at `u64::MAX`).
    pub fn advance(&self, ms: u64) {
        // fetch_update never fails here because the closure always returns Some.
        let _ = self
            .now
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                Some(t.saturating_add(ms))
            });
    }
}

impl Clock for ManualClock {
    fn now_millis(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_shares_state() {
        let c = ManualClock::new(1_000);
        let c2 = c.clone();
        assert_eq!(c2.now_millis(), 1_000);
        c.advance(500);
        assert_eq!(c2.now_millis(), 1_500);
        c2.set(42);
        assert_eq!(c.now_millis(), 42);
        c.set(u64::MAX - 1);
        c.advance(10);
        assert_eq!(c.now_millis(), u64::MAX);
        let dynclock: &dyn Clock = &c;
        assert_eq!(dynclock.now_millis(), u64::MAX);
    }

    #[test]
    fn system_clock_is_plausible() {
        let now = SystemClock.now_millis();
        // After 2020-01-01 and monotone-ish across two reads.
        assert!(now > 1_577_836_800_000);
        assert!(SystemClock.now_millis() >= now);
    }
}
