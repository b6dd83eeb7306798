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
//! Snapshots are files, built, received and installed by
//! [`SnapshotStore`] without holding them in memory; openraft reads and
//! writes them as `tokio::fs::File`s.

use std::marker::PhantomData;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use openraft::storage::RaftStateMachine;
use openraft::{AnyError, EntryPayload, OptionalSend, RaftSnapshotBuilder, Snapshot, StorageIOError};
use rocksdb::{WriteBatch, DB};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use crate::codec::{decode, encode};
use crate::kv::Txn;
use crate::machine::{metric, EntryResponses};
use crate::snapshot_store::{SnapshotRecord, SnapshotStore};
use crate::store::{blocking, cf, CF_SM_META, KEY_LAST_APPLIED, KEY_MEMBERSHIP};
use crate::{ApplyCtx, Entry, LogId, SnapshotMeta, StateMachine, StorageError, StoredMembership, TypeConfig};

/// State machine `S` over a group's RocksDB. Cheap to clone; also its own
/// snapshot builder.
pub struct StateMachineStore<S> {
    db: Arc<DB>,
    snapshots: Arc<SnapshotStore>,
    /// Distinguishes snapshots built at the same log id.
    builds: Arc<AtomicU64>,
    _machine: PhantomData<fn() -> S>,
}

impl<S> Clone for StateMachineStore<S> {
    fn clone(&self) -> Self {
        StateMachineStore {
            db: self.db.clone(),
            snapshots: self.snapshots.clone(),
            builds: self.builds.clone(),
            _machine: PhantomData,
        }
    }
}

impl<S: StateMachine> StateMachineStore<S> {
    /// The state machine in `db`, its snapshots in `snapshot_dir`. Finishes
    /// an interrupted snapshot install first (see [`SnapshotStore::open`]).
    pub fn open(db: Arc<DB>, snapshot_dir: PathBuf) -> Result<Self, StorageError> {
        let snapshots = SnapshotStore::open::<S>(&db, snapshot_dir)?;
        Ok(StateMachineStore {
            db,
            snapshots: Arc::new(snapshots),
            builds: Arc::new(AtomicU64::new(0)),
            _machine: PhantomData,
        })
    }

    fn snapshot((record, file): (SnapshotRecord, std::fs::File)) -> Snapshot<TypeConfig<S>> {
        Snapshot {
            meta: record.meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        }
    }

    /// The file holding `data`, flushed and fsynced: the receiving file
    /// itself, or (data from elsewhere) a copy in the snapshot directory.
    async fn persist(&self, meta: &SnapshotMeta, mut data: Box<tokio::fs::File>) -> Result<PathBuf, StorageError> {
        let io = |e: std::io::Error| StorageIOError::write_snapshot(Some(meta.signature()), &e);
        data.flush().await.map_err(io)?;
        data.sync_all().await.map_err(io)?;
        let ino = data.metadata().await.map_err(io)?.ino();
        if let Some(path) = self.snapshots.take_receiving(ino) {
            return Ok(path);
        }
        let path = self.snapshots.begin_receiving()?;
        let mut copy = tokio::fs::File::create(&path).await.map_err(io)?;
        data.seek(std::io::SeekFrom::Start(0)).await.map_err(io)?;
        tokio::io::copy(&mut *data, &mut copy).await.map_err(io)?;
        copy.sync_all().await.map_err(io)?;
        let _ = self.snapshots.take_receiving(copy.metadata().await.map_err(io)?.ino());
        Ok(path)
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

impl<S: StateMachine> RaftSnapshotBuilder<TypeConfig<S>> for StateMachineStore<S> {
    #[tracing::instrument(level = "info", skip_all)]
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig<S>>, StorageError> {
        let db = self.db.clone();
        let build_no = self.builds.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let snapshots = self.snapshots.clone();
        let snapshot = Self::snapshot(blocking(move || snapshots.build::<S>(&db, build_no)).await?);
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

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let path = self.snapshots.begin_receiving()?;
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(Box::new(file))
    }

    #[tracing::instrument(level = "info", skip_all, fields(meta = %meta))]
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let received = self.persist(meta, snapshot).await?;
        let (db, snapshots, owned_meta) = (self.db.clone(), self.snapshots.clone(), meta.clone());
        blocking(move || snapshots.install::<S>(&db, &owned_meta, &received)).await?;
        metrics::counter!(metric::<S>("raft_snapshots_installed_total")).increment(1);
        tracing::info!("snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig<S>>>, StorageError> {
        let (db, snapshots) = (self.db.clone(), self.snapshots.clone());
        Ok(blocking(move || snapshots.open_current(&db)).await?.map(Self::snapshot))
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
        let db = crate::store::open(dir, Counter::TABLES).expect("open");
        StateMachineStore::open(db, dir.join("snapshots")).expect("open state machine")
    }

    async fn received(sm: &mut StateMachineStore<Counter>, bytes: &[u8]) -> Box<tokio::fs::File> {
        let mut file = sm.begin_receiving_snapshot().await.expect("begin");
        file.write_all(bytes).await.expect("write");
        file
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
        let data = received(&mut sm, &[0xff; 9]).await;
        let result = sm.install_snapshot(&meta, data).await;
        assert!(result.is_err());
        assert!(sm.get_current_snapshot().await.expect("current").is_none());
    }

    fn files(sm: &StateMachineStore<Counter>) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(sm.snapshots.dir())
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// A snapshot travels as openraft sends it: read from the leader's
    /// file in chunks, written into the follower's receiving file.
    #[tokio::test]
    async fn a_received_snapshot_is_installed_from_its_own_file_and_old_files_go() {
        use tokio::io::AsyncReadExt;
        let (a_dir, b_dir) = (
            tempfile::tempdir().expect("tempdir"),
            tempfile::tempdir().expect("tempdir"),
        );
        let (mut a, mut b) = (store(a_dir.path()), store(b_dir.path()));
        a.apply((1..=50).map(|i| add_entry(i, &format!("k{i}"), 1)).collect::<Vec<_>>())
            .await
            .expect("apply");
        let first = a.get_snapshot_builder().await.build_snapshot().await.expect("build");
        a.apply(vec![add_entry(51, "k1", 1)]).await.expect("apply");
        let mut second = a.get_snapshot_builder().await.build_snapshot().await.expect("build");
        assert_eq!(
            files(&a).len(),
            1,
            "the replaced snapshot file is removed: {:?}",
            files(&a)
        );
        drop(first);

        let mut target = b.begin_receiving_snapshot().await.expect("begin");
        let mut chunk = vec![0u8; 100];
        loop {
            let n = second.snapshot.read(&mut chunk).await.expect("read");
            if n == 0 {
                break;
            }
            target.write_all(&chunk[..n]).await.expect("write");
        }
        b.install_snapshot(&second.meta, target).await.expect("install");
        assert_eq!(
            files(&b).len(),
            1,
            "the received file became the snapshot: {:?}",
            files(&b)
        );
        assert_eq!(b.applied_state().await.expect("state").0.map(|l| l.index), Some(51));
        assert_eq!(
            KvRead::get(&*b.db, COUNTERS, b"k1").expect("get"),
            KvRead::get(&*a.db, COUNTERS, b"k1").expect("get")
        );
        let current = b.get_current_snapshot().await.expect("current").expect("some");
        assert_eq!(current.meta.snapshot_id, second.meta.snapshot_id);
    }

    /// A crash after the install was recorded but before it finished: the
    /// next open loads the snapshot again, whatever the tables held.
    #[tokio::test]
    async fn an_interrupted_install_is_finished_at_the_next_open() {
        let (a_dir, b_dir) = (
            tempfile::tempdir().expect("tempdir"),
            tempfile::tempdir().expect("tempdir"),
        );
        let mut a = store(a_dir.path());
        a.apply(vec![add_entry(1, "x", 3), add_entry(2, "y", 4)])
            .await
            .expect("apply");
        let built = a.get_snapshot_builder().await.build_snapshot().await.expect("build");
        let record = a.snapshots.current(&a.db).expect("current").expect("some");
        {
            let b = store(b_dir.path());
            // The state a crash mid-load leaves: the record written, the
            // tables half replaced.
            let file = b_dir.path().join("snapshots").join(&record.file);
            std::fs::copy(a.snapshots.path(&record), &file).expect("copy");
            let value = encode("snapshot record", &record).expect("encode");
            let handle = cf(&b.db, crate::store::CF_SNAPSHOT).expect("cf");
            b.db.put_cf(handle, b"installing", &value).expect("put");
            b.db.put_cf(handle, b"current_file", &value).expect("put");
            b.db.put_cf(cf(&b.db, COUNTERS).expect("cf"), b"junk", b"1")
                .expect("put");
        }
        let mut b = store(b_dir.path());
        assert!(KvRead::get(&*b.db, COUNTERS, b"junk").expect("get").is_none());
        assert!(KvRead::get(&*b.db, COUNTERS, b"y").expect("get").is_some());
        assert_eq!(b.applied_state().await.expect("state").0, built.meta.last_log_id);
        assert!(b.snapshots.record(&b.db, b"installing").expect("read").is_none());
    }
}
