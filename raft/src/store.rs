//! One RocksDB per group holding Raft's log and metadata, the state
//! machine's metadata, the current snapshot, and every table of the state
//! machine, each in its own column family. All RocksDB calls run off the
//! async runtime ([`blocking`]), so a slow fsync never stalls heartbeats.

use std::path::Path;
use std::sync::Arc;

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageIOError};
use rocksdb::{ColumnFamily, Options, DB};

use crate::kv::Table;
use crate::StorageError;

/// Log entries, keyed by big-endian index.
pub const CF_LOG: &str = "raft_log";
/// Vote, committed log id, last purged log id.
pub const CF_RAFT_META: &str = "raft_meta";
/// Last applied log id and membership, written with every applied batch.
pub const CF_SM_META: &str = "sm_meta";
/// The current snapshot (meta and data), replaced atomically.
pub const CF_SNAPSHOT: &str = "raft_snapshot";

pub const KEY_VOTE: &[u8] = b"vote";
pub const KEY_COMMITTED: &[u8] = b"committed";
pub const KEY_LAST_PURGED: &[u8] = b"last_purged";
pub const KEY_LAST_APPLIED: &[u8] = b"last_applied";
pub const KEY_MEMBERSHIP: &[u8] = b"membership";
pub const KEY_CURRENT_SNAPSHOT: &[u8] = b"current";
/// In [`CF_RAFT_META`]: the on-disk format of the log ([`LOG_FORMAT`]).
pub const KEY_LOG_FORMAT: &[u8] = b"log_format";

/// Version of the log's entry encoding. 1 (no key written): one command
/// per entry. 2: a list of commands per entry (group commit).
pub const LOG_FORMAT: u32 = 2;

/// Raft's own column families (the state machine's are its `TABLES`).
pub const RAFT_CFS: &[&str] = &[CF_LOG, CF_RAFT_META, CF_SM_META, CF_SNAPSHOT];

/// Opens (creating if needed) a group's database under `dir` with Raft's
/// column families and `tables`. Column families already present are opened
/// too, so a table dropped from the code never makes an old database
/// unopenable.
pub fn open(dir: &Path, tables: &[Table]) -> anyhow::Result<Arc<DB>> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
    let mut options = Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    options.set_max_background_jobs(2);
    let mut names: Vec<String> = RAFT_CFS.iter().chain(tables).map(|s| s.to_string()).collect();
    for existing in DB::list_cf(&options, dir).unwrap_or_default() {
        if existing != "default" && !names.contains(&existing) {
            names.push(existing);
        }
    }
    let db =
        DB::open_cf(&options, dir, &names).map_err(|e| anyhow::anyhow!("opening RocksDB {}: {e}", dir.display()))?;
    check_log_format(&db).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    Ok(Arc::new(db))
}

/// Stamps a new database with [`LOG_FORMAT`]; refuses one written in
/// another format (its entries would not decode) with a clear error.
fn check_log_format(db: &DB) -> anyhow::Result<()> {
    let meta = db
        .cf_handle(CF_RAFT_META)
        .ok_or_else(|| anyhow::anyhow!("column family {CF_RAFT_META} missing"))?;
    match db.get_cf(meta, KEY_LOG_FORMAT)? {
        Some(bytes) => {
            let found = <[u8; 4]>::try_from(bytes.as_slice()).map(u32::from_be_bytes).ok();
            if found != Some(LOG_FORMAT) {
                anyhow::bail!("raft log format {found:?}, this version reads only format {LOG_FORMAT}");
            }
            Ok(())
        }
        None if holds_raft_state(db)? => anyhow::bail!(
            "raft log format 1 (one command per entry); this version reads only format {LOG_FORMAT} \
             (batched entries): start this node on an empty data directory"
        ),
        None => {
            db.put_cf_opt(meta, KEY_LOG_FORMAT, LOG_FORMAT.to_be_bytes(), &synced())?;
            Ok(())
        }
    }
}

/// Whether anything Raft writes is present (a vote, an entry, applied state).
fn holds_raft_state(db: &DB) -> anyhow::Result<bool> {
    for (family, key) in [(CF_RAFT_META, KEY_VOTE), (CF_SM_META, KEY_LAST_APPLIED)] {
        let handle = db
            .cf_handle(family)
            .ok_or_else(|| anyhow::anyhow!("column family {family} missing"))?;
        if db.get_cf(handle, key)?.is_some() {
            return Ok(true);
        }
    }
    let log = db
        .cf_handle(CF_LOG)
        .ok_or_else(|| anyhow::anyhow!("column family {CF_LOG} missing"))?;
    Ok(db.iterator_cf(log, rocksdb::IteratorMode::Start).next().is_some())
}

/// The handle of column family `name`, or a storage error naming it.
pub fn cf<'a>(db: &'a DB, name: &'static str) -> Result<&'a ColumnFamily, StorageError> {
    db.cf_handle(name).ok_or_else(|| {
        store_error(
            ErrorVerb::Read,
            AnyError::error(format!("column family {name} missing")),
        )
    })
}

pub fn store_error(verb: ErrorVerb, source: impl Into<AnyError>) -> StorageError {
    StorageIOError::new(ErrorSubject::Store, verb, source).into()
}

/// Write options of Raft's own durable writes: synced before returning
/// (unless the simulator turned [`crate::deliberate_bugs::unsynced_log`] on).
pub fn synced() -> rocksdb::WriteOptions {
    let mut options = rocksdb::WriteOptions::default();
    options.set_sync(!crate::deliberate_bugs::unsynced_log());
    options
}

/// Runs `f` on the blocking pool (see [`tessera_common::blocking`]) and waits for it. A panic or cancellation of
/// the blocking task becomes a storage error (the node stops).
pub async fn blocking<T, F>(f: F) -> Result<T, StorageError>
where
    F: FnOnce() -> Result<T, StorageError> + Send + 'static,
    T: Send + 'static,
{
    match tessera_common::blocking::run(f).await {
        Ok(result) => result,
        Err(join) => Err(store_error(ErrorVerb::Write, AnyError::new(&join))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_database_is_stamped_and_an_older_log_format_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open(dir.path(), &[]).expect("a new database opens");
        let meta = db.cf_handle(CF_RAFT_META).expect("meta");
        assert_eq!(
            db.get_cf(meta, KEY_LOG_FORMAT).expect("get"),
            Some(LOG_FORMAT.to_be_bytes().to_vec())
        );
        drop(db);
        open(dir.path(), &[]).expect("its own format opens again");

        // A database of format 1: Raft state, no format key.
        let old = tempfile::tempdir().expect("tempdir");
        {
            let db = open(old.path(), &[]).expect("open");
            let meta = db.cf_handle(CF_RAFT_META).expect("meta");
            db.delete_cf(meta, KEY_LOG_FORMAT).expect("delete");
            db.put_cf(meta, KEY_VOTE, b"vote").expect("put");
        }
        let error = open(old.path(), &[]).expect_err("format 1 is refused");
        assert!(format!("{error:#}").contains("format 1"), "{error:#}");

        let other = tempfile::tempdir().expect("tempdir");
        {
            let db = open(other.path(), &[]).expect("open");
            let meta = db.cf_handle(CF_RAFT_META).expect("meta");
            db.put_cf(meta, KEY_LOG_FORMAT, 9u32.to_be_bytes()).expect("put");
        }
        let error = open(other.path(), &[]).expect_err("a newer format is refused");
        assert!(format!("{error:#}").contains("Some(9)"), "{error:#}");
    }
}
