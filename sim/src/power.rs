//! Power loss of a host whose state is in RocksDB (name and object
//! servers): its files lose what was never synced, as a disk's cache does.
//!
//! The simulated disk is the real file system (a directory on /dev/shm),
//! with `fsync` and `fdatasync` observed: [`interpose_fsync!`] defines both
//! in the simulator's executable, so every call from Rust or from RocksDB's
//! C++ binds to them; each runs the real system call and records the file's
//! length in a ledger. A power loss takes a [`PowerCut`] of the host's
//! directory at the crash: every file synced before is cut back to its
//! length at its last sync, and a RocksDB write-ahead log never synced to
//! nothing. It is applied while the host is down, before its restart
//! reopens the database. So a write that RocksDB took without `sync` and
//! that no later synced write covered is gone after the restart, as after a
//! real power loss; a kill -9 ([`crate::nemesis::Fault::Crash`]) keeps it.
//!
//! Other files never synced are kept whole: RocksDB's own durable files
//! (tables, manifest) are synced before they count, and a kernel writes the
//! rest back within seconds. Renames and deletes are not undone.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Defines `fsync` and `fdatasync` in the executable that expands it (the
/// simulator's, and its unit tests'): each runs the system call and, when
/// it succeeds, records the synced length in the ledger. Expanded in the
/// executable's own code so that the link binds every caller to it, before
/// the C library's definition.
#[macro_export]
macro_rules! interpose_fsync {
    () => {
        /// The C library's `fsync`, observed by the power-loss ledger.
        ///
        /// # Safety
        /// As the C library's: `fd` is any integer.
        #[no_mangle]
        pub unsafe extern "C" fn fsync(fd: std::ffi::c_int) -> std::ffi::c_int {
            $crate::power::fsync_observed(fd)
        }

        /// The C library's `fdatasync`, observed by the power-loss ledger.
        ///
        /// # Safety
        /// As the C library's: `fd` is any integer.
        #[no_mangle]
        pub unsafe extern "C" fn fdatasync(fd: std::ffi::c_int) -> std::ffi::c_int {
            $crate::power::fdatasync_observed(fd)
        }
    };
}

#[cfg(test)]
interpose_fsync!();

/// A synced file: its inode, and its length at its last sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SyncedLength {
    inode: u64,
    length: u64,
}

/// Every file synced in this process, by the path it had when synced.
static LEDGER: Mutex<BTreeMap<PathBuf, SyncedLength>> = Mutex::new(BTreeMap::new());

/// `fsync(fd)`, recorded in the ledger when it succeeds.
pub fn fsync_observed(fd: std::ffi::c_int) -> std::ffi::c_int {
    synced(fd, libc::SYS_fsync)
}

/// `fdatasync(fd)`, recorded in the ledger when it succeeds.
pub fn fdatasync_observed(fd: std::ffi::c_int) -> std::ffi::c_int {
    synced(fd, libc::SYS_fdatasync)
}

/// Runs the sync system call `call` on `fd` and, when it succeeds, records
/// the file's length. Never panics (it is called from C++).
fn synced(fd: std::ffi::c_int, call: std::ffi::c_long) -> std::ffi::c_int {
    // SAFETY: a plain system call on an integer descriptor; a bad one
    // fails with EBADF, as from the C library.
    let result = unsafe { libc::syscall(call, fd) } as std::ffi::c_int;
    if result == 0 {
        record(fd);
    }
    result
}

fn record(fd: std::ffi::c_int) {
    let Ok(path) = std::fs::read_link(format!("/proc/self/fd/{fd}")) else {
        return;
    };
    let Ok(metadata) = std::fs::metadata(&path) else {
        return; // deleted since, or not a path
    };
    if !metadata.is_file() {
        return;
    }
    let synced = SyncedLength {
        inode: metadata.ino(),
        length: metadata.len(),
    };
    if let Ok(mut ledger) = LEDGER.lock() {
        ledger.insert(path, synced);
    }
}

fn synced_length(path: &Path) -> Option<SyncedLength> {
    LEDGER.lock().unwrap_or_else(|p| p.into_inner()).get(path).copied()
}

/// Fails unless this executable expanded [`interpose_fsync!`]: without it
/// every cut would wipe the logs, and a run would blame the cluster.
pub fn check_interposed() -> Result<(), String> {
    let file = tempfile::NamedTempFile::new().map_err(|e| format!("creating a file to sync: {e}"))?;
    std::io::Write::write_all(&mut file.as_file(), b"synced").map_err(|e| format!("writing it: {e}"))?;
    file.as_file().sync_data().map_err(|e| format!("syncing it: {e}"))?;
    let path = file.path().canonicalize().map_err(|e| format!("finding it: {e}"))?;
    match synced_length(&path) {
        Some(synced) if synced.length == 6 => Ok(()),
        other => Err(format!(
            "fsync is not observed in this executable (ledger: {other:?}): it must expand tessera_sim::interpose_fsync!()"
        )),
    }
}

/// What a power loss takes from one host's files, decided at the crash.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PowerCut {
    /// Each file to cut: its path, inode, and the length it keeps.
    cuts: Vec<(PathBuf, u64, u64)>,
}

impl PowerCut {
    /// The cut of every file under `dir` as of now (the host just crashed).
    pub fn at_crash(dir: &Path) -> io::Result<PowerCut> {
        let mut cut = PowerCut::default();
        let dir = match dir.canonicalize() {
            Ok(dir) => dir, // as the ledger names files
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(cut),
            Err(e) => return Err(e),
        };
        cut.visit(&dir)?;
        cut.cuts.sort();
        Ok(cut)
    }

    fn visit(&mut self, dir: &Path) -> io::Result<()> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let metadata = entry.metadata()?;
            let path = entry.path();
            if metadata.is_dir() {
                self.visit(&path)?;
                continue;
            }
            let keeps = match synced_length(&path) {
                Some(synced) if synced.inode == metadata.ino() => synced.length,
                _ if is_rocksdb_wal(&path) => 0,
                _ => continue,
            };
            if keeps < metadata.len() {
                self.cuts.push((path, metadata.ino(), keeps));
            }
        }
        Ok(())
    }

    /// Cuts the files (the host must be down: its database closed). A file
    /// deleted or replaced since the crash is left alone. Returns the bytes
    /// lost.
    pub fn apply(&self) -> io::Result<u64> {
        let mut lost = 0;
        for (path, inode, keeps) in &self.cuts {
            let Ok(metadata) = std::fs::metadata(path) else {
                continue;
            };
            if metadata.ino() != *inode || metadata.len() <= *keeps {
                continue;
            }
            let file = std::fs::OpenOptions::new().write(true).open(path)?;
            file.set_len(*keeps)?;
            lost += metadata.len() - keeps;
        }
        Ok(lost)
    }

    /// Files the cut shortens (as they stood at the crash).
    pub fn files(&self) -> usize {
        self.cuts.len()
    }
}

/// RocksDB names its write-ahead logs `NNNNNN.log`.
fn is_rocksdb_wal(path: &Path) -> bool {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    path.extension().is_some_and(|e| e == "log") && !stem.is_empty() && stem.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CF: &str = "t";

    fn open(dir: &Path) -> rocksdb::DB {
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        rocksdb::DB::open_cf(&options, dir, [CF]).expect("open rocksdb")
    }

    fn put(db: &rocksdb::DB, key: &[u8], sync: bool) {
        let mut write = rocksdb::WriteOptions::default();
        write.set_sync(sync);
        let cf = db.cf_handle(CF).expect("cf");
        db.put_cf_opt(&cf, key, b"v", &write).expect("put");
    }

    fn has(db: &rocksdb::DB, key: &[u8]) -> bool {
        let cf = db.cf_handle(CF).expect("cf");
        db.get_cf(&cf, key).expect("get").is_some()
    }

    #[test]
    fn this_test_binary_observes_fsync() {
        check_interposed().expect("interposed");
    }

    #[test]
    fn a_power_loss_keeps_synced_writes_and_those_before_them_and_loses_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dir = dir.path().canonicalize().expect("canonical");
        let db = open(&dir);
        put(&db, b"unsynced-before", false);
        put(&db, b"synced", true);
        put(&db, b"unsynced-after", false);
        let cut = PowerCut::at_crash(&dir).expect("cut");
        put(&db, b"after-the-crash", true); // the closing process's last gasp
        drop(db);
        assert!(cut.files() >= 1, "the log's unsynced tail is cut: {cut:?}");
        assert!(cut.apply().expect("apply") > 0);
        let db = open(&dir);
        assert!(has(&db, b"synced"));
        assert!(has(&db, b"unsynced-before"), "a later synced write covers it");
        assert!(!has(&db, b"unsynced-after"), "lost with the power");
        assert!(!has(&db, b"after-the-crash"), "written after the crash");
    }

    #[test]
    fn a_crash_without_power_loss_keeps_every_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open(dir.path());
        put(&db, b"unsynced", false);
        drop(db);
        let db = open(dir.path());
        assert!(has(&db, b"unsynced"));
    }

    #[test]
    fn only_numbered_logs_are_rocksdb_logs() {
        assert!(is_rocksdb_wal(Path::new("/d/000012.log")));
        assert!(!is_rocksdb_wal(Path::new("/d/LOG")));
        assert!(!is_rocksdb_wal(Path::new("/d/LOG.old.1")));
        assert!(!is_rocksdb_wal(Path::new("/d/x.log")));
        assert!(!is_rocksdb_wal(Path::new("/d/.log")));
    }
}
