//! The scrub's byte budget: a GCRA limiter from `governor` counting kibibytes, with a burst of
//! one second's worth, so that reading a whole disk never takes more than the configured share
//! of its bandwidth from clients.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// Bytes per limiter cell: a `u32` of cells per second then covers rates up to 4 TiB/s.
const CELL: u64 = 1024;

/// Paces reads to `bytes_per_second` (none: unthrottled).
#[derive(Debug)]
pub(crate) struct Pace<C: Clock = DefaultClock> {
    limiter: Option<RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>>,
    clock: C,
    /// Cells one check may ask for (the burst).
    burst: u32,
}

impl Pace<DefaultClock> {
    /// A pace of `bytes_per_second` on the real clock; 0 means unthrottled.
    pub(crate) fn new(bytes_per_second: u64) -> Self {
        Self::with_clock(bytes_per_second, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Pace<C> {
    /// A pace on `clock` (tests pass a fake one).
    pub(crate) fn with_clock(bytes_per_second: u64, clock: C) -> Self {
        let cells = u32::try_from(bytes_per_second.div_ceil(CELL)).unwrap_or(u32::MAX);
        let Some(per_second) = NonZeroU32::new(cells) else {
            return Self {
                limiter: None,
                clock,
                burst: 1,
            };
        };
        let quota = Quota::per_second(per_second).allow_burst(per_second);
        Self {
            limiter: Some(RateLimiter::direct_with_clock(quota, clock.clone())),
            clock,
            burst: per_second.get(),
        }
    }

    /// Cells that `bytes` cost (at least one for a non-empty read).
    fn cells(bytes: u64) -> u64 {
        bytes.div_ceil(CELL)
    }

    /// Takes up to one burst of the `cells` still owed: how many were taken, or how long to wait
    /// before asking again.
    pub(crate) fn try_take(&self, cells: u64) -> Result<u64, Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(cells);
        };
        let n = cells.min(u64::from(self.burst));
        let Some(nz) = u32::try_from(n).ok().and_then(NonZeroU32::new) else {
            return Ok(0);
        };
        match limiter.check_n(nz) {
            Ok(Ok(())) => Ok(n),
            Ok(Err(not_until)) => Err(not_until.wait_time_from(self.clock.now())),
            // `n` never exceeds the burst; should the quota say otherwise, pass rather than stall.
            Err(_) => Ok(n),
        }
    }

    /// Waits until `bytes` fit in the budget and charges them.
    pub(crate) async fn take(&self, bytes: u64) {
        let mut owed = Self::cells(bytes);
        while owed > 0 {
            match self.try_take(owed) {
                Ok(taken) => owed -= taken,
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    /// Driving the limiter on a fake clock (advanced by exactly the waits it asks for), the bytes
    /// it lets through over the run never exceed the rate times the elapsed time plus the
    /// one-second burst, and it does not hold them back far below the rate either.
    #[test]
    fn honours_the_rate_in_bytes() {
        let clock = FakeRelativeClock::default();
        let rate = 100 * 1024; // 100 KiB/s
        let pace = Pace::with_clock(rate, clock.clone());
        let chunk = 10 * 1024u64;
        let mut admitted = 0u64;
        let mut elapsed = Duration::ZERO;
        while admitted < 3 * 1024 * 1024 {
            let mut owed = Pace::<FakeRelativeClock>::cells(chunk);
            while owed > 0 {
                match pace.try_take(owed) {
                    Ok(t) => owed -= t,
                    Err(wait) => {
                        assert!(!wait.is_zero(), "a refusal must say how long to wait");
                        clock.advance(wait);
                        elapsed += wait;
                    }
                }
            }
            admitted += chunk;
            let allowed = rate as f64 * (elapsed.as_secs_f64() + 1.0);
            assert!(
                admitted as f64 <= allowed + 1.0,
                "{admitted} bytes admitted after {elapsed:?}: more than {allowed}"
            );
        }
        // 3 MiB at 100 KiB/s, less the first second's burst: about 29.7 s.
        let expected = (3.0 * 1024.0 * 1024.0 - rate as f64) / rate as f64;
        let secs = elapsed.as_secs_f64();
        assert!(
            (expected - 0.2..=expected + 0.2).contains(&secs),
            "took {secs} s of fake time, expected about {expected}"
        );
    }

    /// A read larger than one second's budget is charged in bursts, not refused forever.
    #[test]
    fn a_read_larger_than_the_burst_goes_through_in_parts() {
        let clock = FakeRelativeClock::default();
        let pace = Pace::with_clock(4096, clock.clone());
        let mut owed = Pace::<FakeRelativeClock>::cells(40 * 1024);
        let mut waits = 0;
        while owed > 0 {
            match pace.try_take(owed) {
                Ok(t) => owed -= t,
                Err(w) => {
                    waits += 1;
                    clock.advance(w);
                }
            }
        }
        assert_eq!(waits, 9, "ten seconds' worth: the burst, then nine waits");
    }

    #[test]
    fn zero_is_unthrottled() {
        let pace = Pace::with_clock(0, FakeRelativeClock::default());
        assert_eq!(pace.try_take(u64::MAX), Ok(u64::MAX));
    }
}
