//! A group's Raft log and vote in RocksDB (`RaftLogStorage`, storage-v2).
//!
//! Durability: `save_vote`, `append` (one synced `WriteBatch` per call,
//! covering all its entries), `truncate` and `purge` are synced before they
//! report done; `save_committed` is not (it is an optimisation: the state
//! machine persists its own last-applied id atomically with its data).
//! openraft serialises calls on `&mut self` and each awaits its write, so
//! writes reach RocksDB in order.

use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
use std::time::Instant;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, ErrorVerb, LogState, OptionalSend, RaftLogReader, StorageIOError};
use rocksdb::{Direction, IteratorMode, WriteBatch, DB};

use crate::codec::{decode, encode, log_index, log_key};
use crate::machine::metric;
use crate::store::{blocking, cf, store_error, synced, CF_LOG, CF_RAFT_META, KEY_COMMITTED, KEY_LAST_PURGED, KEY_VOTE};
use crate::{Entry, LogId, StateMachine, StorageError, TypeConfig, Vote};

/// Log storage over a group's RocksDB. Cheap to clone (it is also the
/// reader the replication tasks use).
pub struct LogStore<S> {
    db: Arc<DB>,
    _machine: PhantomData<fn() -> S>,
}

impl<S> Clone for LogStore<S> {
    fn clone(&self) -> Self {
        LogStore {
            db: self.db.clone(),
            _machine: PhantomData,
        }
    }
}

impl<S: StateMachine> LogStore<S> {
    pub fn new(db: Arc<DB>) -> Self {
        LogStore {
            db,
            _machine: PhantomData,
        }
    }
}

fn read_meta<T: serde::de::DeserializeOwned>(db: &DB, key: &'static [u8]) -> Result<Option<T>, StorageError> {
    let bytes = db
        .get_cf(cf(db, CF_RAFT_META)?, key)
        .map_err(|e| store_error(ErrorVerb::Read, &e))?;
    match bytes {
        None => Ok(None),
        Some(bytes) => decode("raft meta", &bytes)
            .map(Some)
            .map_err(|e| store_error(ErrorVerb::Read, &e)),
    }
}

fn write_meta<T: serde::Serialize>(db: &DB, key: &'static [u8], value: &T, sync: bool) -> Result<(), StorageError> {
    let bytes = encode("raft meta", value).map_err(|e| store_error(ErrorVerb::Write, &e))?;
    let options = if sync {
        synced()
    } else {
        rocksdb::WriteOptions::default()
    };
    db.put_cf_opt(cf(db, CF_RAFT_META)?, key, bytes, &options)
        .map_err(|e| store_error(ErrorVerb::Write, &e))
}

fn last_entry_log_id<S: StateMachine>(db: &DB) -> Result<Option<LogId>, StorageError> {
    let mut iter = db.iterator_cf(cf(db, CF_LOG)?, IteratorMode::End);
    match iter.next() {
        None => Ok(None),
        Some(item) => {
            let (_, value) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            let entry: Entry<S> = decode("log entry", &value).map_err(|e| StorageIOError::read_logs(&e))?;
            Ok(Some(entry.log_id))
        }
    }
}

fn read_range<S: StateMachine>(db: &DB, start: u64, end: Option<u64>) -> Result<Vec<Entry<S>>, StorageError> {
    let key = log_key(start);
    let mut out = Vec::new();
    for item in db.iterator_cf(cf(db, CF_LOG)?, IteratorMode::From(&key, Direction::Forward)) {
        let (key, value) = item.map_err(|e| StorageIOError::read_logs(&e))?;
        let index = log_index(&key).map_err(|e| StorageIOError::read_logs(&e))?;
        if end.is_some_and(|end| index >= end) {
            break;
        }
        let entry: Entry<S> = decode("log entry", &value).map_err(|e| StorageIOError::read_log_at_index(index, &e))?;
        out.push(entry);
    }
    Ok(out)
}

/// `[start, end)` of a range of indexes; `end` None means unbounded.
fn index_bounds<RB: RangeBounds<u64>>(range: &RB) -> Option<(u64, Option<u64>)> {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => Some(e.checked_add(1)?),
        Bound::Excluded(e) => Some(*e),
        Bound::Unbounded => None,
    };
    Some((start, end))
}

fn append_batch<S: StateMachine>(db: &DB, entries: &[Entry<S>]) -> Result<(), StorageError> {
    let log = cf(db, CF_LOG)?;
    let mut batch = WriteBatch::default();
    for entry in entries {
        let value = encode("log entry", entry).map_err(|e| StorageIOError::write_log_entry(entry.log_id, &e))?;
        batch.put_cf(log, log_key(entry.log_id.index), value);
    }
    db.write_opt(batch, &synced())
        .map_err(|e| StorageIOError::write_logs(&e).into())
}

impl<S: StateMachine> RaftLogReader<TypeConfig<S>> for LogStore<S> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<S>>, StorageError> {
        let Some((start, end)) = index_bounds(&range) else {
            return Ok(Vec::new());
        };
        let db = self.db.clone();
        blocking(move || read_range::<S>(&db, start, end)).await
    }
}

impl<S: StateMachine> RaftLogStorage<TypeConfig<S>> for LogStore<S> {
    type LogReader = LogStore<S>;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig<S>>, StorageError> {
        let db = self.db.clone();
        blocking(move || {
            let last_purged_log_id: Option<LogId> = read_meta(&db, KEY_LAST_PURGED)?;
            let last_log_id = last_entry_log_id::<S>(&db)?.or(last_purged_log_id);
            Ok(LogState {
                last_purged_log_id,
                last_log_id,
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let db = self.db.clone();
        let vote = *vote;
        blocking(move || write_meta(&db, KEY_VOTE, &vote, true))
            .await
            .map_err(|e| StorageIOError::write_vote(AnyError::new(&e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let db = self.db.clone();
        blocking(move || read_meta(&db, KEY_VOTE)).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(move || write_meta(&db, KEY_COMMITTED, &committed, false)).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let db = self.db.clone();
        let committed: Option<Option<LogId>> = blocking(move || read_meta(&db, KEY_COMMITTED)).await?;
        Ok(committed.flatten())
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig<S>>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<S>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<S>> = entries.into_iter().collect();
        let count = entries.len() as u64;
        let db = self.db.clone();
        let started = Instant::now();
        let result = blocking(move || append_batch::<S>(&db, &entries)).await;
        metrics::histogram!(metric::<S>("raft_log_append_seconds")).record(started.elapsed().as_secs_f64());
        metrics::counter!(metric::<S>("raft_log_appended_entries_total")).increment(count);
        match &result {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        result
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(move || {
            let mut batch = WriteBatch::default();
            batch.delete_range_cf(cf(&db, CF_LOG)?, log_key(log_id.index), log_key(u64::MAX));
            db.write_opt(batch, &synced())
                .map_err(|e| StorageIOError::write_logs(&e).into())
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(move || {
            let mut batch = WriteBatch::default();
            let value = encode("raft meta", &log_id).map_err(|e| StorageIOError::write_logs(&e))?;
            batch.put_cf(cf(&db, CF_RAFT_META)?, KEY_LAST_PURGED, value);
            let end = log_id.index.saturating_add(1);
            batch.delete_range_cf(cf(&db, CF_LOG)?, log_key(0), log_key(end));
            db.write_opt(batch, &synced())
                .map_err(|e| StorageIOError::write_logs(&e).into())
        })
        .await?;
        metrics::counter!(metric::<S>("raft_log_purges_total")).increment(1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::testing::Counter;

    fn entry(term: u64, index: u64) -> Entry<Counter> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn open(dir: &std::path::Path) -> LogStore<Counter> {
        LogStore::new(crate::store::open(dir, Counter::TABLES).expect("open"))
    }

    #[tokio::test]
    async fn append_truncate_purge_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = open(dir.path());
        let entries: Vec<Entry<Counter>> = (1..=10).map(|i| entry(1, i)).collect();
        append_batch::<Counter>(&store.db, &entries).expect("append");
        assert_eq!(store.try_get_log_entries(3..6).await.expect("read").len(), 3);
        assert_eq!(store.try_get_log_entries(8..).await.expect("read").len(), 3);
        store.truncate(entries[7].log_id).await.expect("truncate"); // drops 8..=10
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id, Some(entries[6].log_id));
        store.purge(entries[6].log_id).await.expect("purge"); // drops ..=7
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id, Some(entries[6].log_id));
        assert_eq!(state.last_log_id, Some(entries[6].log_id));
        assert!(store.try_get_log_entries(0..100).await.expect("read").is_empty());
        let vote = Vote::new(3, 2);
        store.save_vote(&vote).await.expect("vote");
        drop(store);
        let mut reopened = open(dir.path());
        assert_eq!(reopened.read_vote().await.expect("vote"), Some(vote));
        assert_eq!(
            reopened.get_log_state().await.expect("state").last_purged_log_id,
            Some(entries[6].log_id)
        );
    }
}
