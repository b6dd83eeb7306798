//! A group's snapshots on disk (`<data_dir>/snapshots`), streamed to and
//! from [`snapshot_file`](crate::snapshot_file)s so that no snapshot is held
//! in memory whole, whatever the size of the state machine.
//!
//! - **Build**: a consistent RocksDB snapshot of every table is written to
//!   a new file, fsynced, renamed into place, then recorded as the current
//!   snapshot (meta and file name, in `CF_SNAPSHOT`, synced).
//! - **Receive**: openraft writes the chunks a leader sends into a file
//!   from [`SnapshotStore::begin_receiving`].
//! - **Install**: the file is verified whole (format, checksum, known
//!   tables) before anything changes. Then, in order: the install is
//!   recorded (`installing` and the new current snapshot, one synced
//!   write); the tables are cleared and loaded in bounded batches; the last
//!   applied log id and membership are written and the record removed (one
//!   synced write). A crash in between leaves the record, and
//!   [`SnapshotStore::open`] runs the load again from the same file before
//!   Raft starts, so the state machine is never seen half installed.
//!
//! Files: `snap-<nonce>` (the current snapshot; older ones are removed once
//! replaced), `build-<nonce>.tmp` and `recv-<nonce>.tmp` (in progress,
//! removed at open).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use openraft::{AnyError, StorageIOError};
use rocksdb::{IteratorMode, WriteBatch, DB};
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::snapshot_file::{self, Item, SnapshotFileError, Writer};
use crate::store::{cf, synced, CF_SM_META, CF_SNAPSHOT, KEY_LAST_APPLIED, KEY_MEMBERSHIP};
use crate::{LogId, SnapshotMeta, StateMachine, StorageError, StoredMembership};

/// In `CF_SNAPSHOT`: the current snapshot, a [`SnapshotRecord`].
const KEY_CURRENT_FILE: &[u8] = b"current_file";
/// In `CF_SNAPSHOT`: an install that has not finished, a [`SnapshotRecord`].
const KEY_INSTALLING: &[u8] = b"installing";
/// In `CF_SNAPSHOT`: the snapshot inline (before snapshot files); dropped.
const KEY_LEGACY_INLINE: &[u8] = b"current";
/// An install writes the tables in batches of about this size.
const INSTALL_BATCH_BYTES: usize = 4 << 20;

/// A snapshot's meta and the name of its file in the snapshot directory.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub meta: SnapshotMeta,
    pub file: String,
}

/// The snapshot directory of one group.
#[derive(Debug)]
pub struct SnapshotStore {
    dir: PathBuf,
    /// The file openraft is writing a received snapshot into.
    receiving: Mutex<Option<PathBuf>>,
    /// Serializes changes of the current snapshot (builds run beside
    /// installs).
    current_lock: Mutex<()>,
}

fn read_error(e: impl Into<AnyError>) -> StorageError {
    StorageIOError::read_snapshot(None, e).into()
}

fn write_error(meta: Option<&SnapshotMeta>, e: impl Into<AnyError>) -> StorageError {
    StorageIOError::write_snapshot(meta.map(|m| m.signature()), e).into()
}

fn file_error(meta: Option<&SnapshotMeta>, e: SnapshotFileError) -> StorageError {
    write_error(meta, AnyError::error(e.to_string()))
}

/// Drawn from `tessera_common::rng`, which the simulator seeds: a name
/// from the OS's entropy would make a seed's runs differ.
fn nonce_name(prefix: &str, suffix: &str) -> String {
    format!("{prefix}-{:016x}{suffix}", tessera_common::rng::random_u64())
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl SnapshotStore {
    /// Opens the snapshot directory of the group whose database is `db`:
    /// finishes an interrupted install, removes unfinished and replaced
    /// files. Run before Raft starts.
    pub fn open<S: StateMachine>(db: &DB, dir: PathBuf) -> Result<SnapshotStore, StorageError> {
        std::fs::create_dir_all(&dir).map_err(|e| read_error(&e))?;
        let store = SnapshotStore {
            dir,
            receiving: Mutex::new(None),
            current_lock: Mutex::new(()),
        };
        let snapshots = cf(db, CF_SNAPSHOT)?;
        db.delete_cf(snapshots, KEY_LEGACY_INLINE).map_err(|e| read_error(&e))?;
        if let Some(record) = store.record(db, KEY_INSTALLING)? {
            tracing::warn!(meta = %record.meta, "resuming an interrupted snapshot install");
            load::<S>(db, &record.meta, &store.dir.join(&record.file)).map_err(|e| {
                write_error(
                    Some(&record.meta),
                    AnyError::error(format!(
                        "an interrupted snapshot install cannot resume ({e}); \
                         empty this node's data directory and let the group send it a snapshot again"
                    )),
                )
            })?;
        }
        store.remove_all_but(store.current(db)?.map(|r| r.file).as_deref());
        Ok(store)
    }

    pub(crate) fn record(&self, db: &DB, key: &'static [u8]) -> Result<Option<SnapshotRecord>, StorageError> {
        match db.get_cf(cf(db, CF_SNAPSHOT)?, key).map_err(|e| read_error(&e))? {
            None => Ok(None),
            Some(bytes) => decode("snapshot record", &bytes).map(Some).map_err(|e| read_error(&e)),
        }
    }

    /// The current snapshot, if one was built or installed.
    pub fn current(&self, db: &DB) -> Result<Option<SnapshotRecord>, StorageError> {
        self.record(db, KEY_CURRENT_FILE)
    }

    #[cfg(test)]
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn path(&self, record: &SnapshotRecord) -> PathBuf {
        self.dir.join(&record.file)
    }

    /// The current snapshot and its file, opened under the lock that
    /// replacing it takes (so the file cannot vanish in between).
    pub fn open_current(&self, db: &DB) -> Result<Option<(SnapshotRecord, std::fs::File)>, StorageError> {
        let _lock = self.current_lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(record) = self.current(db)? else {
            return Ok(None);
        };
        let file = std::fs::File::open(self.path(&record))
            .map_err(|e| StorageIOError::read_snapshot(Some(record.meta.signature()), &e))?;
        Ok(Some((record, file)))
    }

    /// Writes a snapshot of every table of `S` as of now, opened for
    /// reading, and makes it the current one (unless a newer one became
    /// current meanwhile).
    pub fn build<S: StateMachine>(
        &self,
        db: &DB,
        build_no: u64,
    ) -> Result<(SnapshotRecord, std::fs::File), StorageError> {
        let snap = db.snapshot();
        let meta_cf = cf(db, CF_SM_META)?;
        let get =
            |key| -> Result<Option<Vec<u8>>, StorageError> { snap.get_cf(meta_cf, key).map_err(|e| read_error(&e)) };
        let last_applied: Option<LogId> = get(KEY_LAST_APPLIED)?
            .map(|b| decode("last applied", &b))
            .transpose()
            .map_err(|e| read_error(&e))?;
        let last_membership: StoredMembership = get(KEY_MEMBERSHIP)?
            .map(|b| decode("membership", &b))
            .transpose()
            .map_err(|e| read_error(&e))?
            .unwrap_or_default();
        let snapshot_id = match last_applied {
            Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, build_no),
            None => format!("empty-{build_no}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership,
            snapshot_id,
        };
        let tmp = self.dir.join(nonce_name("build", ".tmp"));
        let written = (|| -> Result<(), SnapshotFileError> {
            let mut writer = Writer::create(&tmp)?;
            for table in S::TABLES {
                writer.table(table)?;
                let handle = db
                    .cf_handle(table)
                    .ok_or_else(|| SnapshotFileError::Corrupt(format!("column family {table} missing")))?;
                for item in snap.iterator_cf(handle, IteratorMode::Start) {
                    let (key, value) = item.map_err(|e| SnapshotFileError::Visit(e.to_string()))?;
                    writer.pair(&key, &value)?;
                }
            }
            writer.finish()
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(file_error(Some(&meta), e));
        }
        let record = SnapshotRecord {
            meta,
            file: nonce_name("snap", ""),
        };
        std::fs::rename(&tmp, self.path(&record)).map_err(|e| write_error(Some(&record.meta), &e))?;
        sync_dir(&self.dir).map_err(|e| write_error(Some(&record.meta), &e))?;
        let file = std::fs::File::open(self.path(&record)).map_err(|e| read_error(&e))?;
        self.make_current(db, &record)?;
        Ok((record, file))
    }

    /// Records `record` as the current snapshot and removes the replaced
    /// file, unless the current one is newer (then `record`'s file goes).
    fn make_current(&self, db: &DB, record: &SnapshotRecord) -> Result<(), StorageError> {
        let _lock = self.current_lock.lock().unwrap_or_else(|p| p.into_inner());
        let previous = self.current(db)?;
        if let Some(previous) = previous
            .as_ref()
            .filter(|p| p.meta.last_log_id > record.meta.last_log_id)
        {
            tracing::debug!(newer = %previous.meta, built = %record.meta, "a newer snapshot is current");
            let _ = std::fs::remove_file(self.path(record));
            return Ok(());
        }
        let value = encode("snapshot record", record).map_err(|e| write_error(Some(&record.meta), &e))?;
        db.put_cf_opt(cf(db, CF_SNAPSHOT)?, KEY_CURRENT_FILE, value, &synced())
            .map_err(|e| write_error(Some(&record.meta), &e))?;
        if let Some(previous) = previous.filter(|p| p.file != record.file) {
            let _ = std::fs::remove_file(self.path(&previous));
        }
        Ok(())
    }

    /// A new, empty file for a snapshot being received; remembered so that
    /// the install can take it over without a copy.
    pub fn begin_receiving(&self) -> Result<PathBuf, StorageError> {
        let path = self.dir.join(nonce_name("recv", ".tmp"));
        let mut receiving = self.receiving.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(abandoned) = receiving.replace(path.clone()) {
            let _ = std::fs::remove_file(abandoned);
        }
        Ok(path)
    }

    /// The receiving file if it is the file with inode `ino`.
    pub fn take_receiving(&self, ino: u64) -> Option<PathBuf> {
        let mut receiving = self.receiving.lock().unwrap_or_else(|p| p.into_inner());
        let same = receiving
            .as_ref()
            .and_then(|path| std::fs::metadata(path).ok())
            .is_some_and(|m| m.ino() == ino);
        if same {
            receiving.take()
        } else {
            None
        }
    }

    /// Replaces the state machine with the snapshot in the complete,
    /// fsynced file `received` (see the module doc), and makes it current.
    pub fn install<S: StateMachine>(&self, db: &DB, meta: &SnapshotMeta, received: &Path) -> Result<(), StorageError> {
        let summary = snapshot_file::scan(received, &mut |item| match item {
            Item::Table(name) if !S::TABLES.contains(&name) => {
                Err(format!("snapshot has unknown table {name:?} (newer version?)"))
            }
            _ => Ok(()),
        });
        let summary = match summary {
            Ok(summary) => summary,
            Err(e) => {
                let _ = std::fs::remove_file(received);
                return Err(file_error(Some(meta), e));
            }
        };
        let record = SnapshotRecord {
            meta: meta.clone(),
            file: nonce_name("snap", ""),
        };
        let path = self.path(&record);
        std::fs::rename(received, &path).map_err(|e| write_error(Some(meta), &e))?;
        sync_dir(&self.dir).map_err(|e| write_error(Some(meta), &e))?;
        let _lock = self.current_lock.lock().unwrap_or_else(|p| p.into_inner());
        let previous = self.current(db)?;
        let value = encode("snapshot record", &record).map_err(|e| write_error(Some(meta), &e))?;
        let mut batch = WriteBatch::default();
        batch.put_cf(cf(db, CF_SNAPSHOT)?, KEY_INSTALLING, &value);
        batch.put_cf(cf(db, CF_SNAPSHOT)?, KEY_CURRENT_FILE, &value);
        db.write_opt(batch, &synced())
            .map_err(|e| write_error(Some(meta), &e))?;
        load::<S>(db, meta, &path).map_err(|e| file_error(Some(meta), e))?;
        if let Some(previous) = previous.filter(|p| p.file != record.file) {
            let _ = std::fs::remove_file(self.path(&previous));
        }
        tracing::info!(
            pairs = summary.pairs,
            size_bytes = summary.size_bytes,
            "snapshot loaded"
        );
        Ok(())
    }

    /// Removes every file of the directory but `keep`.
    fn remove_all_but(&self, keep: Option<&str>) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            if keep.is_some_and(|keep| entry.file_name() == keep) {
                continue;
            }
            if let Err(e) = std::fs::remove_file(entry.path()) {
                tracing::warn!(path = %entry.path().display(), error = %e, "removing a stale snapshot file failed");
            }
        }
    }
}

/// Clears every table of `S`, loads the file's pairs in bounded batches,
/// then writes the meta and clears the install record in one synced batch.
fn load<S: StateMachine>(db: &DB, meta: &SnapshotMeta, path: &Path) -> Result<(), SnapshotFileError> {
    let rocks = |e: rocksdb::Error| SnapshotFileError::Visit(e.to_string());
    let missing = |table: &str| SnapshotFileError::Visit(format!("column family {table} missing"));
    let mut batch = WriteBatch::default();
    for table in S::TABLES {
        clear_table(db, &mut batch, db.cf_handle(table).ok_or_else(|| missing(table))?).map_err(rocks)?;
    }
    db.write(std::mem::take(&mut batch)).map_err(rocks)?;
    let mut table = None;
    snapshot_file::scan(path, &mut |item| {
        match item {
            Item::Table(name) => {
                let known = S::TABLES.iter().find(|t| **t == name);
                table = Some(known.ok_or_else(|| format!("unknown table {name:?}"))?);
            }
            Item::Pair(key, value) => {
                let name = table.ok_or("a pair outside a table")?;
                let handle = db
                    .cf_handle(name)
                    .ok_or_else(|| format!("column family {name} missing"))?;
                batch.put_cf(handle, key, value);
                if batch.size_in_bytes() >= INSTALL_BATCH_BYTES {
                    db.write(std::mem::take(&mut batch)).map_err(|e| e.to_string())?;
                }
            }
        }
        Ok(())
    })?;
    let sm_meta = db.cf_handle(CF_SM_META).ok_or_else(|| missing(CF_SM_META))?;
    let encoding = |e: crate::codec::CodecError| SnapshotFileError::Visit(e.to_string());
    match meta.last_log_id {
        Some(id) => batch.put_cf(
            sm_meta,
            KEY_LAST_APPLIED,
            encode("last applied", &id).map_err(encoding)?,
        ),
        None => batch.delete_cf(sm_meta, KEY_LAST_APPLIED),
    }
    batch.put_cf(
        sm_meta,
        KEY_MEMBERSHIP,
        encode("membership", &meta.last_membership).map_err(encoding)?,
    );
    batch.delete_cf(
        db.cf_handle(CF_SNAPSHOT).ok_or_else(|| missing(CF_SNAPSHOT))?,
        KEY_INSTALLING,
    );
    db.write_opt(batch, &synced()).map_err(rocks)
}

/// Deletes every key of a table in `batch` (one range delete).
fn clear_table(db: &DB, batch: &mut WriteBatch, handle: &rocksdb::ColumnFamily) -> Result<(), rocksdb::Error> {
    if let Some(item) = db.iterator_cf(handle, IteratorMode::End).next() {
        let (last_key, _) = item?;
        let mut end = last_key.to_vec();
        end.push(0); // the smallest key after `last_key`
        batch.delete_range_cf(handle, Vec::new(), end);
    }
    Ok(())
}
