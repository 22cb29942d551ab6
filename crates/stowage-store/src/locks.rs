//! Per-digest exclusion, striped.
//!
//! Writers that *depend* on a digest being present (a manifest put checking its references, a
//! blob commit or link) take the digest's stripe in shared mode for the whole check-and-commit;
//! anything that *removes* a digest (garbage collection, manifest delete) takes it exclusively and
//! re-checks under it. So a removal can never slip between a push's presence check and the index
//! write that records the new reference.
//!
//! Stripes (rather than one lock per digest) keep memory fixed; two digests sharing a stripe only
//! means a remover briefly waits for an unrelated push.

use std::collections::BTreeSet;

use stowage_core::Digest;
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

const STRIPES: usize = 65_536;

/// The striped lock table.
#[derive(Debug)]
pub struct DigestLocks {
    stripes: Vec<std::sync::Arc<RwLock<()>>>,
}

impl Default for DigestLocks {
    fn default() -> Self {
        Self {
            stripes: (0..STRIPES)
                .map(|_| std::sync::Arc::new(RwLock::new(())))
                .collect(),
        }
    }
}

/// Held stripes; released on drop.
#[derive(Debug)]
pub enum Held {
    /// Shared holds.
    Shared(#[allow(dead_code)] Vec<OwnedRwLockReadGuard<()>>),
    /// Exclusive holds.
    Exclusive(#[allow(dead_code)] Vec<OwnedRwLockWriteGuard<()>>),
}

impl DigestLocks {
    fn stripe(&self, digest: &Digest) -> usize {
        // The hex form is uniformly distributed; its first four characters pick the stripe.
        let hex = digest.hex();
        let n = u32::from_str_radix(&hex[..4.min(hex.len())], 16).unwrap_or(0) as usize;
        n % self.stripes.len()
    }

    /// Stripes of `digests`, unique and in ascending order (the one global order every caller
    /// acquires in, so two callers can never deadlock).
    fn ordered<'a>(&self, digests: impl IntoIterator<Item = &'a Digest>) -> BTreeSet<usize> {
        digests.into_iter().map(|d| self.stripe(d)).collect()
    }

    /// Takes the stripes of `digests` in shared mode.
    pub async fn shared<'a>(&self, digests: impl IntoIterator<Item = &'a Digest>) -> Held {
        let mut held = Vec::new();
        for i in self.ordered(digests) {
            held.push(self.stripes[i].clone().read_owned().await);
        }
        Held::Shared(held)
    }

    /// Takes the stripes of `digests` exclusively.
    pub async fn exclusive<'a>(&self, digests: impl IntoIterator<Item = &'a Digest>) -> Held {
        let mut held = Vec::new();
        for i in self.ordered(digests) {
            held.push(self.stripes[i].clone().write_owned().await);
        }
        Held::Exclusive(held)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn exclusive_waits_for_shared_and_orders_avoid_deadlock() {
        let locks = std::sync::Arc::new(DigestLocks::default());
        let a = Digest::sha256(b"a");
        let b = Digest::sha256(b"b");
        let shared = locks.shared([&a, &b]).await;
        let l2 = locks.clone();
        let (a2, b2) = (a.clone(), b.clone());
        let excl = tokio::spawn(async move {
            // Opposite argument order: still acquires in stripe order.
            let _g = l2.exclusive([&b2, &a2]).await;
        });
        // Let the spawned task run as far as it can on this single-threaded runtime.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(
            !excl.is_finished(),
            "exclusive must wait for the shared holder"
        );
        drop(shared);
        tokio::time::timeout(Duration::from_secs(5), excl)
            .await
            .unwrap()
            .unwrap();
        // Shared holders do not block each other.
        let _s1 = locks.shared([&a]).await;
        let _s2 = tokio::time::timeout(Duration::from_secs(1), locks.shared([&a]))
            .await
            .unwrap();
    }
}
