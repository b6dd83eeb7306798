//! A small bounded cache whose entries expire: what the gateway keeps of
//! access-key secrets, grants and bucket settings so that a request does
//! not ask the name servers each time. An entry is served for at most the
//! cache's TTL after it was fetched (the delay before a revocation takes
//! effect); past `entries_max` entries the expired ones are dropped, then
//! everything (a burst of distinct keys only costs refetches).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

pub struct TtlCache<K, V> {
    ttl: Duration,
    entries_max: usize,
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    pub fn new(ttl: Duration, entries_max: usize) -> Self {
        assert!(entries_max > 0, "a cache holds at least one entry");
        TtlCache {
            ttl,
            entries_max,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, (Instant, V)>> {
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The value fetched less than a TTL ago, if any.
    pub fn get(&self, key: &K) -> Option<V> {
        let entries = self.lock();
        let (at, value) = entries.get(key)?;
        (at.elapsed() < self.ttl).then(|| value.clone())
    }

    pub fn insert(&self, key: K, value: V) {
        let mut entries = self.lock();
        if entries.len() >= self.entries_max && !entries.contains_key(&key) {
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| at.elapsed() < ttl);
            if entries.len() >= self.entries_max {
                entries.clear();
            }
        }
        entries.insert(key, (Instant::now(), value));
    }

    pub fn remove(&self, key: &K) {
        self.lock().remove(key);
    }

    /// Drops every entry whose key matches.
    pub fn remove_where(&self, mut matches: impl FnMut(&K) -> bool) {
        self.lock().retain(|key, _| !matches(key));
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_after_the_ttl() {
        let cache = TtlCache::new(Duration::from_millis(30), 10);
        cache.insert("a", 1);
        assert_eq!(cache.get(&"a"), Some(1));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(cache.get(&"a"), None);
    }

    #[test]
    fn the_cache_stays_bounded() {
        let cache = TtlCache::new(Duration::from_secs(60), 3);
        for i in 0..10 {
            cache.insert(i, i);
            assert!(cache.len() <= 3, "{} entries", cache.len());
        }
        assert_eq!(cache.get(&9), Some(9), "the newest entry is kept");
        cache.remove_where(|k| *k == 9);
        assert_eq!(cache.get(&9), None);
    }
}
