//! The random source of node logic (uids, request ids, retry jitter, Raft
//! election timeouts). Each thread draws from the OS-seeded generator unless
//! [`seed_thread`] gave it a seed: the deterministic simulator runs a whole
//! cluster on one thread and seeds it, so a run replays from its seed.
//! Secrets (keys, certificate serials) never come from here.

use std::cell::RefCell;

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

thread_local! {
    static SEEDED: RefCell<Option<StdRng>> = const { RefCell::new(None) };
}

/// From now on this thread draws from a generator seeded with `seed`.
pub fn seed_thread(seed: u64) {
    SEEDED.with(|rng| *rng.borrow_mut() = Some(StdRng::seed_from_u64(seed)));
}

/// Back to the OS-seeded generator on this thread.
pub fn unseed_thread() {
    SEEDED.with(|rng| *rng.borrow_mut() = None);
}

/// 64 random bits.
pub fn random_u64() -> u64 {
    SEEDED.with(|rng| match rng.borrow_mut().as_mut() {
        Some(seeded) => seeded.next_u64(),
        None => rand::random(),
    })
}

/// Uniform in `0..n`; 0 when `n == 0`.
pub fn below(n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    // Rejection keeps it uniform; at most a few draws in expectation.
    let zone = u64::MAX - (u64::MAX % n);
    loop {
        let x = random_u64();
        if x < zone {
            return x % n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seeded_thread_replays_and_an_unseeded_one_does_not_repeat() {
        seed_thread(7);
        let first: Vec<u64> = (0..4).map(|_| random_u64()).collect();
        seed_thread(7);
        let again: Vec<u64> = (0..4).map(|_| random_u64()).collect();
        assert_eq!(first, again);
        seed_thread(8);
        assert_ne!(first[0], random_u64());
        unseed_thread();
        assert_ne!(random_u64(), random_u64());
    }

    #[test]
    fn below_stays_in_range() {
        seed_thread(1);
        assert!((0..1000).all(|_| below(3) < 3));
        assert_eq!(below(0), 0);
        unseed_thread();
    }
}
