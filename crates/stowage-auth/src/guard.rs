//! What keeps password checks from being used against the registry: a cap on how many
//! argon2id or bcrypt runs go at once (each costs tens of milliseconds of a core and
//! 19 MiB), and limits on refused logins: per account and client address (guessing one
//! account's password), and, larger, per client address (trying many accounts). Over a
//! limit, the login gets `429` without its password being looked at until the limit
//! refills. Keying by account as well as address means one client guessing at `alice`
//! behind a shared address (a NAT, a proxy) does not lock `root` out until the address as a
//! whole is over its own limit. IPv6 clients are keyed by their /64 (one host usually has a
//! whole /64 to pick addresses from).
//!
//! Checks of one account from one address run one at a time, and at most
//! [`ADDRESS_CONCURRENCY`] from one address: a client cannot send a thousand guesses at once
//! to get them all checked before the first refusal counts; the limits are looked at again
//! when a check's turn comes.
//!
//! Bearer tokens are not affected: a client that holds a valid token keeps working while
//! its address is throttled for passwords.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit};

/// Most addresses remembered as throttled; beyond it, expired entries are dropped first,
/// then the oldest.
const MAX_BLOCKED: usize = 65_536;

/// Settings of the [`LoginGuard`].
#[derive(Clone, Copy, Debug)]
pub struct GuardSettings {
    /// Refused logins per minute (also the burst) for one account from one address before
    /// that pair is throttled (an address as a whole gets five times as many); `None`: no
    /// limit.
    pub failures_per_minute: Option<NonZeroU32>,
    /// Refused logins per minute (also the burst) from one address, whatever the accounts,
    /// before the address is throttled; `None`: no limit (for a daemon behind a proxy that
    /// hides client addresses, where every client shares one).
    pub address_failures_per_minute: Option<NonZeroU32>,
    /// Password checks run at once; more wait for a slot.
    pub concurrent_checks: usize,
    /// How long a check waits for a slot before the login is answered "busy".
    pub queue_timeout: Duration,
}

impl Default for GuardSettings {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        GuardSettings {
            failures_per_minute: NonZeroU32::new(10),
            address_failures_per_minute: NonZeroU32::new(50),
            concurrent_checks: cores.clamp(2, 8),
            queue_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a login was not even checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The address had too many refused logins; retry after this many seconds.
    Throttled(u64),
    /// Every check slot stayed taken for the queue timeout.
    Busy,
}

/// What refused logins are counted against.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    /// One account from one address.
    Account(IpAddr, String),
    /// One address, whatever the account.
    Address(IpAddr),
}

/// Password checks from one address that run (or wait for a slot) at once.
pub const ADDRESS_CONCURRENCY: usize = 2;

/// The address a client is counted under: IPv4 as is (an IPv4-mapped IPv6 address as its
/// IPv4), IPv6 by its /64.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// One password check's turn: while it is held no other check of the same account from the
/// same address runs, and at most [`ADDRESS_CONCURRENCY`] from the address.
#[derive(Debug)]
pub struct Turn<'a> {
    guard: &'a LoginGuard,
    keys: Vec<Key>,
    permits: Vec<OwnedSemaphorePermit>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.permits.clear();
        let mut turns = self
            .guard
            .turns
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for k in &self.keys {
            // Forgotten when nobody else holds or waits for it.
            if turns.get(k).is_some_and(|s| Arc::strong_count(s) == 1) {
                turns.remove(k);
            }
        }
    }
}

/// The cap on concurrent password checks and the failure limits.
#[derive(Debug)]
pub struct LoginGuard {
    settings: GuardSettings,
    slots: Semaphore,
    failures: Option<DefaultKeyedRateLimiter<Key>>,
    address_failures: Option<DefaultKeyedRateLimiter<Key>>,
    blocked: Mutex<HashMap<Key, Instant>>,
    /// Checks in progress or waiting, per account and address and per address.
    turns: Mutex<HashMap<Key, Arc<Semaphore>>>,
    recorded: AtomicU64,
    /// Logins refused unchecked because their address was throttled (for metrics).
    pub throttled: AtomicU64,
    /// Logins refused because no check slot came free in time (for metrics).
    pub busy: AtomicU64,
}

impl LoginGuard {
    /// A guard with these settings.
    pub fn new(settings: GuardSettings) -> LoginGuard {
        LoginGuard {
            settings,
            slots: Semaphore::new(settings.concurrent_checks.max(1)),
            failures: settings
                .failures_per_minute
                .map(|n| governor::RateLimiter::keyed(Quota::per_minute(n).allow_burst(n))),
            address_failures: settings
                .address_failures_per_minute
                .map(|n| governor::RateLimiter::keyed(Quota::per_minute(n).allow_burst(n))),
            blocked: Mutex::new(HashMap::new()),
            turns: Mutex::new(HashMap::new()),
            recorded: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            busy: AtomicU64::new(0),
        }
    }

    /// `Err` when logins to `user` from `from` are throttled now.
    pub fn admit(&self, from: Option<IpAddr>, user: &str) -> Result<(), Refusal> {
        let Some(ip) = from.map(client_key) else {
            return Ok(());
        };
        let now = Instant::now();
        let mut blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
        let mut wait = Duration::ZERO;
        for key in [Key::Account(ip, user.to_string()), Key::Address(ip)] {
            match blocked.get(&key) {
                Some(until) if *until > now => {
                    wait = wait.max(until.saturating_duration_since(now));
                }
                Some(_) => {
                    blocked.remove(&key);
                }
                None => {}
            }
        }
        if wait.is_zero() {
            return Ok(());
        }
        self.throttled.fetch_add(1, Ordering::Relaxed);
        Err(Refusal::Throttled(wait.as_secs().max(1)))
    }

    /// Waits for the turn of a check of `user` from `from` (see [`Turn`]), then looks at the
    /// limits again (failures counted while it waited). `Err(Busy)` after the queue timeout.
    pub async fn turn(&self, from: Option<IpAddr>, user: &str) -> Result<Turn<'_>, Refusal> {
        let mut turn = Turn {
            guard: self,
            keys: Vec::new(),
            permits: Vec::new(),
        };
        let Some(ip) = from.map(client_key) else {
            return Ok(turn);
        };
        let wanted = [
            (Key::Account(ip, user.to_string()), 1),
            (Key::Address(ip), ADDRESS_CONCURRENCY),
        ];
        for (key, n) in wanted {
            let sem = self
                .turns
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(key.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(n)))
                .clone();
            turn.keys.push(key);
            match tokio::time::timeout(self.settings.queue_timeout, sem.acquire_owned()).await {
                Ok(Ok(p)) => turn.permits.push(p),
                _ => {
                    self.busy.fetch_add(1, Ordering::Relaxed);
                    return Err(Refusal::Busy);
                }
            }
        }
        self.admit(from, user)?;
        Ok(turn)
    }

    /// A slot to run one password check in; `Err(Busy)` after the queue timeout.
    pub async fn slot(&self) -> Result<SemaphorePermit<'_>, Refusal> {
        match tokio::time::timeout(self.settings.queue_timeout, self.slots.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => {
                self.busy.fetch_add(1, Ordering::Relaxed);
                Err(Refusal::Busy)
            }
        }
    }

    /// Counts a refused login to `user` from `from`; once over a limit, the account from
    /// that address (or the whole address) is throttled until the limit lets one more
    /// through.
    pub fn failed(&self, from: Option<IpAddr>, user: &str) {
        let Some(ip) = from.map(client_key) else {
            return;
        };
        if self.recorded.fetch_add(1, Ordering::Relaxed) % 1024 == 1023 {
            for l in [&self.failures, &self.address_failures]
                .into_iter()
                .flatten()
            {
                l.retain_recent();
                l.shrink_to_fit();
            }
        }
        let checks = [
            (&self.failures, Key::Account(ip, user.to_string())),
            (&self.address_failures, Key::Address(ip)),
        ];
        for (limiter, key) in checks {
            let Some(limiter) = limiter else { continue };
            let Err(not_until) = limiter.check_key(&key) else {
                continue;
            };
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let now = Instant::now();
            let mut blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
            if blocked.len() >= MAX_BLOCKED {
                blocked.retain(|_, until| *until > now);
                if blocked.len() >= MAX_BLOCKED {
                    let oldest = blocked
                        .iter()
                        .min_by_key(|(_, u)| **u)
                        .map(|(k, _)| k.clone());
                    if let Some(oldest) = oldest {
                        blocked.remove(&oldest);
                    }
                }
            }
            let whole = matches!(key, Key::Address(_));
            tracing::warn!(address = %ip, whole_address = whole, wait_s = wait.as_secs(), "too many refused logins: throttled");
            blocked.insert(key, now + wait.max(Duration::from_secs(1)));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn guard(per_minute: u32, slots: usize) -> LoginGuard {
        LoginGuard::new(GuardSettings {
            failures_per_minute: NonZeroU32::new(per_minute),
            address_failures_per_minute: NonZeroU32::new(per_minute * 5),
            concurrent_checks: slots,
            queue_timeout: Duration::from_millis(50),
        })
    }

    #[test]
    fn an_account_is_throttled_from_one_address_after_its_failures() {
        let g = guard(3, 1);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(g.admit(Some(a), "alice"), Ok(()));
            g.failed(Some(a), "alice");
        }
        // The burst is spent but nothing is blocked until a failure is over the limit.
        assert_eq!(g.admit(Some(a), "alice"), Ok(()));
        g.failed(Some(a), "alice");
        match g.admit(Some(a), "alice") {
            Err(Refusal::Throttled(s)) => assert!((1..=60).contains(&s), "{s}"),
            other => panic!("expected throttled, got {other:?}"),
        }
        // Other accounts from the same address, and the same account from elsewhere, go on.
        assert_eq!(g.admit(Some(a), "root"), Ok(()));
        assert_eq!(g.admit(Some(b), "alice"), Ok(()));
        assert_eq!(g.admit(None, "alice"), Ok(()));
        assert_eq!(g.throttled.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_address_trying_many_accounts_is_throttled_as_a_whole() {
        let g = guard(2, 1);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        // Two failures per account stay under the account limit; the address allows ten.
        for i in 0..11 {
            g.failed(Some(a), &format!("user{}", i / 2));
        }
        assert!(matches!(
            g.admit(Some(a), "someone-new"),
            Err(Refusal::Throttled(_))
        ));
        assert_eq!(
            g.admit(Some("192.0.2.9".parse().unwrap()), "someone-new"),
            Ok(())
        );
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let g = guard(2, 1);
        // Three failures, each from another address of one /64: the third is over.
        for i in 1..=3 {
            let ip: IpAddr = format!("2001:db8:1:2::{i}").parse().unwrap();
            g.failed(Some(ip), "root");
        }
        let same: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(g.admit(Some(same), "root").is_err());
        assert_eq!(g.admit(Some(other), "root"), Ok(()));
        // An IPv4-mapped address is its IPv4 address.
        let g = guard(1, 1);
        g.failed(Some("192.0.2.7".parse().unwrap()), "x");
        g.failed(Some("192.0.2.7".parse().unwrap()), "x");
        assert!(g
            .admit(Some("::ffff:192.0.2.7".parse().unwrap()), "x")
            .is_err());
    }

    #[tokio::test]
    async fn checks_of_one_account_from_one_address_take_turns() {
        let g = guard(3, 4);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let first = g.turn(Some(a), "root").await.unwrap();
        // A second check of root from a waits for the first, and gives up busy after the
        // queue timeout; another account (or another address) goes at once.
        assert_eq!(g.turn(Some(a), "root").await.err(), Some(Refusal::Busy));
        let alice = g.turn(Some(a), "alice").await.unwrap();
        // The address has its ADDRESS_CONCURRENCY (2) turns out: a third account waits too.
        assert_eq!(g.turn(Some(a), "bob").await.err(), Some(Refusal::Busy));
        assert!(g
            .turn(Some("192.0.2.2".parse().unwrap()), "root")
            .await
            .is_ok());
        drop(alice);
        // Failures counted while a check waited are looked at when its turn comes.
        for _ in 0..4 {
            g.failed(Some(a), "root");
        }
        drop(first);
        assert!(matches!(
            g.turn(Some(a), "root").await,
            Err(Refusal::Throttled(_))
        ));
        // Turns are forgotten once nobody holds or waits for them.
        assert!(g.turns.lock().unwrap().is_empty());
    }

    #[test]
    fn no_limit_means_never_throttled() {
        let g = guard(0, 1);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..100 {
            g.failed(Some(a), "alice");
        }
        assert_eq!(g.admit(Some(a), "alice"), Ok(()));
    }

    #[tokio::test]
    async fn checks_wait_for_a_slot_and_give_up_busy() {
        let g = guard(10, 2);
        let p1 = g.slot().await.unwrap();
        let _p2 = g.slot().await.unwrap();
        assert_eq!(g.slot().await.err(), Some(Refusal::Busy));
        drop(p1);
        assert!(g.slot().await.is_ok());
        assert_eq!(g.busy.load(Ordering::Relaxed), 1);
    }
}
