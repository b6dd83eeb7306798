//! A group's state machine in RocksDB (`RaftStateMachine`), generic over
//! the application's [`StateMachine`]: every batch of committed entries
//! becomes one [`Txn`] over the application's tables and one
//! `WriteBatch` that also records the last applied log id and membership, so
//! data and "how far applied" can never disagree.
//!
//! Durability choice: applied batches are written *without* sync (the WAL is
//! still written, so a process crash loses nothing). On power loss the state
//! machine may roll back to an earlier, consistent last-applied id and
//! openraft re-applies from the durable log; every later synced Raft write
//! (append, vote, purge) also syncs the shared WAL, so nothing the log
//! purges can be lost. Snapshot installs are synced.
//!
//! Snapshots: a consistent RocksDB snapshot of the `TABLES` and the
//! state-machine meta, encoded with postcard ([`SnapshotData`]). The current
//! snapshot (meta + data) is kept in its own column family, written in the
//! same batch as an install, so it survives restarts.

use std::io::Cursor;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use openraft::storage::RaftStateMachine;
use openraft::{AnyError, EntryPayload, OptionalSend, RaftSnapshotBuilder, Snapshot, StorageIOError};
use rocksdb::{IteratorMode, WriteBatch, DB};
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::kv::Txn;
use crate::machine::{metric, EntryResponses};
use crate::store::{
    blocking, cf, synced, CF_SM_META, CF_SNAPSHOT, KEY_CURRENT_SNAPSHOT, KEY_LAST_APPLIED, KEY_MEMBERSHIP,
};
use crate::{ApplyCtx, Entry, LogId, SnapshotMeta, StateMachine, StorageError, StoredMembership, TypeConfig};

/// Contents of a snapshot: every table of the state machine, in key order.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SnapshotData {
    pub tables: Vec<TableDump>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TableDump {
    pub name: String,
    pub pairs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The current snapshot as kept on disk.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// State machine `S` over a group's RocksDB. Cheap to clone; also its own
/// snapshot builder.
pub struct StateMachineStore<S> {
    db: Arc<DB>,
    /// Distinguishes snapshots built at the same log id.
    builds: Arc<AtomicU64>,
    _machine: PhantomData<fn() -> S>,
}

impl<S> Clone for StateMachineStore<S> {
    fn clone(&self) -> Self {
        StateMachineStore {
            db: self.db.clone(),
            builds: self.builds.clone(),
            _machine: PhantomData,
        }
    }
}

impl<S: StateMachine> StateMachineStore<S> {
    pub fn new(db: Arc<DB>) -> Self {
        StateMachineStore {
            db,
            builds: Arc::new(AtomicU64::new(0)),
            _machine: PhantomData,
        }
    }
}

fn sm_get<T: serde::de::DeserializeOwned, R>(read: R, key: &'static [u8]) -> Result<Option<T>, StorageError>
where
    R: FnOnce(&'static [u8]) -> Result<Option<Vec<u8>>, rocksdb::Error>,
{
    match read(key).map_err(|e| StorageIOError::read_state_machine(&e))? {
        None => Ok(None),
        Some(bytes) => decode("state machine meta", &bytes)
            .map(Some)
            .map_err(|e| StorageIOError::read_state_machine(&e).into()),
    }
}

fn applied_state(db: &DB) -> Result<(Option<LogId>, StoredMembership), StorageError> {
    let meta = cf(db, CF_SM_META)?;
    let last_applied = sm_get(|k| db.get_cf(meta, k), KEY_LAST_APPLIED)?;
    let membership = sm_get(|k| db.get_cf(meta, k), KEY_MEMBERSHIP)?.unwrap_or_default();
    Ok((last_applied, membership))
}

/// Applies `entries` in one transaction and one write.
fn apply_batch<S: StateMachine>(db: &DB, entries: &[Entry<S>]) -> Result<Vec<EntryResponses<S>>, StorageError> {
    let mut txn = Txn::new(db);
    let mut responses = Vec::with_capacity(entries.len());
    let mut membership = None;
    for entry in entries {
        let response = match &entry.payload {
            EntryPayload::Blank => Vec::new(),
            EntryPayload::Normal(commands) => {
                let mut answers = Vec::with_capacity(commands.len());
                for (position, command) in commands.iter().enumerate() {
                    let ctx = ApplyCtx {
                        log_index: entry.log_id.index,
                        term: entry.log_id.leader_id.term,
                        position: position as u32,
                    };
                    let answer = S::apply(&mut txn, command, &ctx)
                        .map_err(|e| StorageIOError::apply(entry.log_id, AnyError::error(e.to_string())))?;
                    answers.push(answer);
                }
                answers
            }
            EntryPayload::Membership(m) => {
                membership = Some(StoredMembership::new(Some(entry.log_id), m.clone()));
                Vec::new()
            }
        };
        responses.push(response);
    }
    let Some(last) = entries.last() else {
        return Ok(responses);
    };
    let mut batch = WriteBatch::default();
    txn.write_into(db, &mut batch)
        .map_err(|e| StorageIOError::apply(last.log_id, &e))?;
    let meta = cf(db, CF_SM_META)?;
    let encode_err = |e| StorageIOError::write_state_machine(AnyError::new(&e));
    batch.put_cf(
        meta,
        KEY_LAST_APPLIED,
        encode("last applied", &last.log_id).map_err(encode_err)?,
    );
    if let Some(membership) = membership {
        batch.put_cf(
            meta,
            KEY_MEMBERSHIP,
            encode("membership", &membership).map_err(encode_err)?,
        );
    }
    db.write(batch).map_err(|e| StorageIOError::apply(last.log_id, &e))?;
    Ok(responses)
}

/// Reads a consistent image of the tables and the meta they correspond to.
fn dump<S: StateMachine>(db: &DB) -> Result<(Option<LogId>, StoredMembership, SnapshotData), StorageError> {
    let snap = db.snapshot();
    let meta = cf(db, CF_SM_META)?;
    let last_applied = sm_get(|k| snap.get_cf(meta, k), KEY_LAST_APPLIED)?;
    let membership = sm_get(|k| snap.get_cf(meta, k), KEY_MEMBERSHIP)?.unwrap_or_default();
    let mut data = SnapshotData::default();
    for table in S::TABLES {
        let mut pairs = Vec::new();
        for item in snap.iterator_cf(cf(db, table)?, IteratorMode::Start) {
            let (key, value) = item.map_err(|e| StorageIOError::read_state_machine(&e))?;
            pairs.push((key.to_vec(), value.to_vec()));
        }
        data.tables.push(TableDump {
            name: table.to_string(),
            pairs,
        });
    }
    Ok((last_applied, membership, data))
}

fn snapshot_error(meta: Option<&SnapshotMeta>, source: impl Into<AnyError>) -> StorageError {
    StorageIOError::write_snapshot(meta.map(|m| m.signature()), source).into()
}

fn build<S: StateMachine>(db: &DB, build_no: u64) -> Result<Snapshot<TypeConfig<S>>, StorageError> {
    let (last_applied, last_membership, data) = dump::<S>(db)?;
    let snapshot_id = match last_applied {
        Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, build_no),
        None => format!("empty-{build_no}"),
    };
    let meta = SnapshotMeta {
        last_log_id: last_applied,
        last_membership,
        snapshot_id,
    };
    let bytes = encode("snapshot data", &data).map_err(|e| snapshot_error(Some(&meta), &e))?;
    let stored = StoredSnapshot { meta, data: bytes };
    let value = encode("snapshot", &stored).map_err(|e| snapshot_error(Some(&stored.meta), &e))?;
    db.put_cf_opt(cf(db, CF_SNAPSHOT)?, KEY_CURRENT_SNAPSHOT, value, &synced())
        .map_err(|e| snapshot_error(Some(&stored.meta), &e))?;
    Ok(Snapshot {
        meta: stored.meta,
        snapshot: Box::new(Cursor::new(stored.data)),
    })
}

/// Deletes every key of `table` in `batch` (one range delete).
fn clear_table(db: &DB, batch: &mut WriteBatch, table: &'static str) -> Result<(), StorageError> {
    let handle = cf(db, table)?;
    let last = db.iterator_cf(handle, IteratorMode::End).next();
    if let Some(item) = last {
        let (last_key, _) = item.map_err(|e| StorageIOError::read_state_machine(&e))?;
        let mut end = last_key.to_vec();
        end.push(0); // the smallest key after `last_key`
        batch.delete_range_cf(handle, Vec::new(), end);
    }
    Ok(())
}

/// Replaces the state machine with `bytes` and makes it the current
/// snapshot, in one synced batch.
fn install<S: StateMachine>(db: &DB, meta: &SnapshotMeta, bytes: Vec<u8>) -> Result<(), StorageError> {
    let data: SnapshotData = decode("snapshot data", &bytes).map_err(|e| snapshot_error(Some(meta), &e))?;
    if let Some(unknown) = data.tables.iter().find(|t| !S::TABLES.contains(&t.name.as_str())) {
        let msg = format!("snapshot has unknown table {:?} (newer version?)", unknown.name);
        return Err(snapshot_error(Some(meta), AnyError::error(msg)));
    }
    let mut batch = WriteBatch::default();
    for table in S::TABLES {
        clear_table(db, &mut batch, table)?;
    }
    for dump in &data.tables {
        if let Some(table) = S::TABLES.iter().find(|t| **t == dump.name) {
            let handle = cf(db, table)?;
            for (key, value) in &dump.pairs {
                batch.put_cf(handle, key, value);
            }
        }
    }
    let sm_meta = cf(db, CF_SM_META)?;
    let enc = |what, e| snapshot_error(Some(meta), AnyError::error(format!("{what}: {e}")));
    match meta.last_log_id {
        Some(id) => batch.put_cf(
            sm_meta,
            KEY_LAST_APPLIED,
            encode("last applied", &id).map_err(|e| enc("meta", e))?,
        ),
        None => batch.delete_cf(sm_meta, KEY_LAST_APPLIED),
    }
    let membership = encode("membership", &meta.last_membership).map_err(|e| enc("membership", e))?;
    batch.put_cf(sm_meta, KEY_MEMBERSHIP, membership);
    let stored = encode(
        "snapshot",
        &StoredSnapshot {
            meta: meta.clone(),
            data: bytes,
        },
    )
    .map_err(|e| enc("snapshot", e))?;
    batch.put_cf(cf(db, CF_SNAPSHOT)?, KEY_CURRENT_SNAPSHOT, stored);
    db.write_opt(batch, &synced())
        .map_err(|e| snapshot_error(Some(meta), &e))
}

fn current_snapshot<S: StateMachine>(db: &DB) -> Result<Option<Snapshot<TypeConfig<S>>>, StorageError> {
    let value = db
        .get_cf(cf(db, CF_SNAPSHOT)?, KEY_CURRENT_SNAPSHOT)
        .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
    let Some(value) = value else { return Ok(None) };
    let stored: StoredSnapshot = decode("snapshot", &value).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
    Ok(Some(Snapshot {
        meta: stored.meta,
        snapshot: Box::new(Cursor::new(stored.data)),
    }))
}

impl<S: StateMachine> RaftSnapshotBuilder<TypeConfig<S>> for StateMachineStore<S> {
    #[tracing::instrument(level = "info", skip_all)]
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig<S>>, StorageError> {
        let db = self.db.clone();
        let build_no = self.builds.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let snapshot = blocking(move || build::<S>(&db, build_no)).await?;
        metrics::counter!(metric::<S>("raft_snapshots_built_total")).increment(1);
        metrics::histogram!(metric::<S>("raft_snapshot_build_seconds")).record(started.elapsed().as_secs_f64());
        tracing::info!(meta = %snapshot.meta, "snapshot built");
        Ok(snapshot)
    }
}

impl<S: StateMachine> RaftStateMachine<TypeConfig<S>> for StateMachineStore<S> {
    type SnapshotBuilder = StateMachineStore<S>;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let db = self.db.clone();
        blocking(move || applied_state(&db)).await
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn apply<I>(&mut self, entries: I) -> Result<Vec<EntryResponses<S>>, StorageError>
    where
        I: IntoIterator<Item = Entry<S>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<S>> = entries.into_iter().collect();
        let count = entries.len() as u64;
        let db = self.db.clone();
        let started = Instant::now();
        let result = blocking(move || apply_batch::<S>(&db, &entries)).await;
        if let Err(e) = &result {
            tracing::error!(error = %e, "applying committed entries failed: stopping this node");
        }
        metrics::histogram!(metric::<S>("raft_apply_seconds")).record(started.elapsed().as_secs_f64());
        metrics::counter!(metric::<S>("raft_applied_entries_total")).increment(count);
        result
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    #[tracing::instrument(level = "info", skip_all, fields(meta = %meta))]
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let db = self.db.clone();
        let owned_meta = meta.clone();
        let bytes = snapshot.into_inner();
        blocking(move || install::<S>(&db, &owned_meta, bytes)).await?;
        metrics::counter!(metric::<S>("raft_snapshots_installed_total")).increment(1);
        tracing::info!("snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig<S>>>, StorageError> {
        let db = self.db.clone();
        blocking(move || current_snapshot::<S>(&db)).await
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::kv::KvRead;
    use crate::testing::{Counter, CounterCommand, COUNTERS};

    fn add_entry(index: u64, key: &str, delta: i64) -> Entry<Counter> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(2, 1), index),
            payload: EntryPayload::Normal(vec![CounterCommand::Add { key: key.into(), delta }]),
        }
    }

    fn store(dir: &std::path::Path) -> StateMachineStore<Counter> {
        StateMachineStore::new(crate::store::open(dir, Counter::TABLES).expect("open"))
    }

    #[tokio::test]
    async fn apply_is_one_batch_and_snapshot_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sm = store(dir.path());
        let entries = vec![add_entry(1, "a", 5), add_entry(2, "b", 1), add_entry(3, "a", 2)];
        let responses = sm.apply(entries).await.expect("apply");
        assert_eq!(responses.iter().map(|r| r[0].value).collect::<Vec<_>>(), [5, 1, 7]);
        assert_eq!(
            responses[2][0].applied_at,
            ApplyCtx {
                log_index: 3,
                term: 2,
                position: 0
            }
        );
        let (applied, _) = sm.applied_state().await.expect("state");
        assert_eq!(applied.map(|l| l.index), Some(3));

        let snapshot = sm.get_snapshot_builder().await.build_snapshot().await.expect("build");
        assert_eq!(snapshot.meta.last_log_id.map(|l| l.index), Some(3));

        let other_dir = tempfile::tempdir().expect("tempdir");
        let mut other = store(other_dir.path());
        other.apply(vec![add_entry(1, "stale", 1)]).await.expect("apply");
        assert!(KvRead::get(&*other.db, COUNTERS, b"stale").expect("get").is_some());
        other
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .expect("install");
        assert!(
            KvRead::get(&*other.db, COUNTERS, b"stale").expect("get").is_none(),
            "old state replaced"
        );
        assert!(KvRead::get(&*other.db, COUNTERS, b"b").expect("get").is_some());
        let current = other.get_current_snapshot().await.expect("current").expect("some");
        assert_eq!(current.meta.last_log_id.map(|l| l.index), Some(3));
        assert_eq!(other.applied_state().await.expect("state").0.map(|l| l.index), Some(3));
    }

    #[tokio::test]
    async fn a_failing_apply_is_a_storage_error_and_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sm = store(dir.path());
        let entries = vec![add_entry(1, "a", 5), add_entry(2, "a", i64::MAX)];
        assert!(sm.apply(entries).await.is_err(), "overflow stops the node");
        assert!(KvRead::get(&*sm.db, COUNTERS, b"a").expect("get").is_none());
        assert_eq!(sm.applied_state().await.expect("state").0, None);
    }

    #[tokio::test]
    async fn corrupt_snapshot_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sm = store(dir.path());
        let meta = SnapshotMeta::default();
        let result = sm.install_snapshot(&meta, Box::new(Cursor::new(vec![0xff; 9]))).await;
        assert!(result.is_err());
    }
}
