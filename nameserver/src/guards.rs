//! Guard entries (DESIGN §4): the name-server leader's in-memory record
//! that "uid may become the value of (bucket, key) until its deadline".
//!
//! The table lives in the leader's memory only and is cleared when
//! leadership is lost, so a commit whose guard died with a leader fails
//! cleanly. Time is a monotonic `Duration` passed in by the caller (from
//! `tessera_common::clock::Clock::now`), never the wall clock. The table
//! is bounded: past `max_entries` live guards a new one is refused.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Why a guard could not be created or taken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum GuardError {
    #[error("no guard entry for this name and uid")]
    Missing,
    #[error("the guard entry expired")]
    Expired,
    #[error("too many guard entries ({0})")]
    Full(usize),
}

type GuardKey = (String, String, u128);

/// The leader's guard entries: (bucket, key, uid) → deadline.
#[derive(Debug)]
pub struct GuardTable {
    deadlines: BTreeMap<GuardKey, Duration>,
    max_entries: usize,
}

impl GuardTable {
    pub fn new(max_entries: usize) -> Self {
        GuardTable {
            deadlines: BTreeMap::new(),
            max_entries,
        }
    }

    pub fn len(&self) -> usize {
        self.deadlines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.deadlines.is_empty()
    }

    /// Creates (or renews) the guard of `uid` for `(bucket, key)`, valid
    /// until `now + ttl`. Several uids may be guarded for one name.
    pub fn create(
        &mut self,
        bucket: &str,
        key: &str,
        uid: u128,
        ttl: Duration,
        now: Duration,
    ) -> Result<(), GuardError> {
        let id = (bucket.to_string(), key.to_string(), uid);
        if !self.deadlines.contains_key(&id) && self.deadlines.len() >= self.max_entries {
            self.sweep(now);
            if self.deadlines.len() >= self.max_entries {
                return Err(GuardError::Full(self.max_entries));
            }
        }
        self.deadlines.insert(id, now.saturating_add(ttl));
        Ok(())
    }

    /// Consumes the guard: Ok only if it exists and `now` is before its
    /// deadline. An expired guard is removed too.
    pub fn take(&mut self, bucket: &str, key: &str, uid: u128, now: Duration) -> Result<(), GuardError> {
        let id = (bucket.to_string(), key.to_string(), uid);
        match self.deadlines.remove(&id) {
            None => Err(GuardError::Missing),
            Some(deadline) if now >= deadline => Err(GuardError::Expired),
            Some(_) => Ok(()),
        }
    }

    /// Whether a live guard exists (without consuming it).
    pub fn is_live(&self, bucket: &str, key: &str, uid: u128, now: Duration) -> bool {
        let id = (bucket.to_string(), key.to_string(), uid);
        self.deadlines.get(&id).is_some_and(|deadline| now < *deadline)
    }

    /// Drops every expired guard; returns how many.
    pub fn sweep(&mut self, now: Duration) -> usize {
        let before = self.deadlines.len();
        self.deadlines.retain(|_, deadline| now < *deadline);
        before - self.deadlines.len()
    }

    /// Drops every guard (on leadership loss).
    pub fn clear(&mut self) {
        self.deadlines.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(300);

    fn at(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn a_live_guard_is_taken_once() {
        let mut table = GuardTable::new(10);
        table.create("b", "k", 7, TTL, at(0)).expect("create");
        assert!(table.is_live("b", "k", 7, at(299)));
        assert_eq!(table.take("b", "k", 7, at(299)), Ok(()));
        assert_eq!(table.take("b", "k", 7, at(299)), Err(GuardError::Missing));
    }

    #[test]
    fn wrong_name_or_uid_is_missing() {
        let mut table = GuardTable::new(10);
        table.create("b", "k", 7, TTL, at(0)).expect("create");
        assert_eq!(table.take("b", "k", 8, at(1)), Err(GuardError::Missing));
        assert_eq!(table.take("b", "other", 7, at(1)), Err(GuardError::Missing));
        assert_eq!(table.take("c", "k", 7, at(1)), Err(GuardError::Missing));
        assert_eq!(table.take("b", "k", 7, at(1)), Ok(()));
    }

    #[test]
    fn an_expired_guard_fails_and_is_removed() {
        let mut table = GuardTable::new(10);
        table.create("b", "k", 7, TTL, at(0)).expect("create");
        assert_eq!(table.take("b", "k", 7, at(300)), Err(GuardError::Expired));
        assert!(table.is_empty());
    }

    #[test]
    fn several_uids_per_name_and_renewal() {
        let mut table = GuardTable::new(10);
        table.create("b", "k", 1, TTL, at(0)).expect("create");
        table.create("b", "k", 2, TTL, at(0)).expect("create");
        table.create("b", "k", 1, TTL, at(200)).expect("renew");
        assert_eq!(table.len(), 2);
        assert_eq!(table.take("b", "k", 2, at(350)), Err(GuardError::Expired));
        assert_eq!(table.take("b", "k", 1, at(350)), Ok(()));
    }

    #[test]
    fn sweep_drops_only_expired() {
        let mut table = GuardTable::new(10);
        table.create("b", "a", 1, at(10), at(0)).expect("create");
        table.create("b", "b", 2, at(100), at(0)).expect("create");
        assert_eq!(table.sweep(at(50)), 1);
        assert!(table.is_live("b", "b", 2, at(50)));
    }

    #[test]
    fn the_table_is_bounded_but_sweeps_before_refusing() {
        let mut table = GuardTable::new(2);
        table.create("b", "a", 1, at(10), at(0)).expect("create");
        table.create("b", "b", 2, TTL, at(0)).expect("create");
        assert_eq!(table.create("b", "c", 3, TTL, at(5)), Err(GuardError::Full(2)));
        // Renewing an existing guard is not a new entry.
        assert_eq!(table.create("b", "b", 2, TTL, at(5)), Ok(()));
        // Once the first expires, there is room again.
        assert_eq!(table.create("b", "c", 3, TTL, at(10)), Ok(()));
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn clear_drops_everything_on_leadership_loss() {
        let mut table = GuardTable::new(10);
        table.create("b", "k", 7, TTL, at(0)).expect("create");
        table.clear();
        assert_eq!(table.take("b", "k", 7, at(1)), Err(GuardError::Missing));
    }
}
