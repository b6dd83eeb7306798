//! One data directory (`<disk>/chunks/`, `<disk>/quarantine/`): its paths,
//! space accounting against an optional quota, health, corruption counter,
//! and the crash-safe creation and removal of chunk files. Blocking.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use tessera_common::chunk_api::{ChunkError, DiskStatus};
use tessera_common::ids::ChunkId;

use super::format::FileHeader;
use super::sync::{DiskHealth, GroupSync, SyncLimiter, SyncTarget};
use super::{sys, DiskConfig};

/// Most `fdatasync`/`syncfs` calls in flight on one disk.
const SYNCS_IN_FLIGHT_MAX: usize = 64;

pub const CHUNK_SUFFIX: &str = ".chunk";
pub const TEMP_SUFFIX: &str = ".chunk.tmp";

pub struct Disk {
    pub root: PathBuf,
    pub chunks_dir: PathBuf,
    pub quarantine_dir: PathBuf,
    capacity_bytes: Option<u64>,
    /// Physical bytes of the chunk files (plus reservations in flight).
    used_bytes: AtomicU64,
    chunk_count: AtomicU64,
    pub health: Arc<DiskHealth>,
    corrupt_blocks: AtomicU64,
    pub sync_limiter: Arc<SyncLimiter>,
    /// The disk-wide sync unit used in `SyncMode::Syncfs`.
    pub fs_sync: Arc<GroupSync>,
    /// Holds an exclusive `flock` on `<disk>/LOCK` while the disk is open.
    _lock_file: File,
}

impl Disk {
    /// Creates the directories if needed and opens the disk.
    pub fn open(config: &DiskConfig) -> anyhow::Result<Disk> {
        let root = config.path.clone();
        let chunks_dir = root.join("chunks");
        let quarantine_dir = root.join("quarantine");
        for dir in [&chunks_dir, &quarantine_dir] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        sys::fsync_dir(&root).with_context(|| format!("syncing {}", root.display()))?;
        let lock_file = lock_disk(&root)?;
        let dir_file = File::open(&chunks_dir).with_context(|| format!("opening {}", chunks_dir.display()))?;
        let health = Arc::new(DiskHealth::default());
        let sync_limiter = Arc::new(SyncLimiter::new(SYNCS_IN_FLIGHT_MAX));
        let fs_sync = GroupSync::new(SyncTarget::Filesystem(dir_file), sync_limiter.clone(), health.clone());
        Ok(Disk {
            root,
            chunks_dir,
            quarantine_dir,
            capacity_bytes: config.capacity_bytes,
            used_bytes: AtomicU64::new(0),
            chunk_count: AtomicU64::new(0),
            health,
            corrupt_blocks: AtomicU64::new(0),
            sync_limiter,
            fs_sync: Arc::new(fs_sync),
            _lock_file: lock_file,
        })
    }

    pub fn chunk_path(&self, chunk: ChunkId) -> PathBuf {
        self.chunks_dir.join(format!("{:016x}{CHUNK_SUFFIX}", chunk.0))
    }

    fn temp_path(&self, chunk: ChunkId) -> PathBuf {
        self.chunks_dir.join(format!("{:016x}{TEMP_SUFFIX}", chunk.0))
    }

    pub fn is_healthy(&self) -> bool {
        self.health.is_healthy()
    }

    /// Records an I/O error: the disk reports unhealthy until restart.
    /// Running out of space is not a disk fault.
    pub fn note_io_error(&self, error: &io::Error) {
        if !sys::is_no_space(error) {
            self.health.note_io_error();
        }
    }

    pub fn note_corrupt_block(&self) {
        self.corrupt_blocks.fetch_add(1, Ordering::Relaxed);
        let disk = self.root.display().to_string();
        metrics::counter!("chunk_corrupt_blocks_total", "disk" => disk).increment(1);
    }

    pub fn corrupt_blocks(&self) -> u64 {
        self.corrupt_blocks.load(Ordering::Relaxed)
    }

    /// Counts a chunk whose file bytes are already reserved or adopted.
    pub fn note_chunk_added(&self) {
        self.chunk_count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn forget_chunk(&self, file_bytes: u64) {
        self.release(file_bytes);
        self.chunk_count.fetch_sub(1, Ordering::Relaxed);
    }

    /// Reserves `bytes` against the quota before writing them; `NoSpace` if
    /// they do not fit. Without a quota the filesystem decides (ENOSPC).
    pub fn try_reserve(&self, bytes: u64) -> Result<(), ChunkError> {
        let Some(capacity_bytes) = self.capacity_bytes else {
            self.used_bytes.fetch_add(bytes, Ordering::Relaxed);
            return Ok(());
        };
        self.used_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|total| *total <= capacity_bytes)
            })
            .map(|_| ())
            .map_err(|_| ChunkError::NoSpace)
    }

    /// Reserves without checking the quota: for the few bytes of fence and
    /// seal records, which must work on a full disk so callers can move on.
    pub fn force_reserve(&self, bytes: u64) {
        self.used_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn release(&self, bytes: u64) {
        let previous = self.used_bytes.fetch_sub(bytes, Ordering::Relaxed);
        debug_assert!(previous >= bytes, "disk space accounting underflow");
    }

    /// Bytes a new chunk could still use here (quota and filesystem).
    pub fn free_bytes(&self) -> u64 {
        let fs_free_bytes = sys::statvfs_bytes(&self.chunks_dir).map(|(_, free)| free).unwrap_or(0);
        match self.capacity_bytes {
            Some(capacity) => capacity
                .saturating_sub(self.used_bytes.load(Ordering::Relaxed))
                .min(fs_free_bytes),
            None => fs_free_bytes,
        }
    }

    pub fn status(&self) -> DiskStatus {
        let used_bytes = self.used_bytes.load(Ordering::Relaxed);
        let capacity_bytes = match self.capacity_bytes {
            Some(capacity) => capacity,
            None => used_bytes + sys::statvfs_bytes(&self.chunks_dir).map(|(_, free)| free).unwrap_or(0),
        };
        DiskStatus {
            path: self.root.display().to_string(),
            capacity_bytes,
            used_bytes,
            chunks: self.chunk_count.load(Ordering::Relaxed),
            healthy: self.is_healthy(),
            corrupt_blocks: self.corrupt_blocks(),
        }
    }

    /// Creates `<chunk>.chunk` holding only `header`, crash-safely: written
    /// and synced as a temp file, renamed into place, directory synced. A
    /// crash leaves either no chunk or a complete one (plus maybe a temp file
    /// that the next open removes).
    pub fn create_chunk_file(&self, header: &FileHeader) -> io::Result<File> {
        let temp = self.temp_path(header.chunk);
        let result = self.write_temp_and_rename(header, &temp);
        if result.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        result
    }

    fn write_temp_and_rename(&self, header: &FileHeader, temp: &Path) -> io::Result<File> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(temp)?;
        file.write_all_at(&header.encode(), 0)?;
        file.sync_all()?;
        sys::rename_noreplace(temp, &self.chunk_path(header.chunk))?;
        sys::fsync_dir(&self.chunks_dir)?;
        Ok(file)
    }

    /// Removes a chunk file durably.
    pub fn remove_chunk_file(&self, chunk: ChunkId) -> io::Result<()> {
        std::fs::remove_file(self.chunk_path(chunk))?;
        sys::fsync_dir(&self.chunks_dir)
    }
}

/// Takes an exclusive lock on `<root>/LOCK`, so two stores (or processes)
/// never serve the same disk.
fn lock_disk(root: &Path) -> anyhow::Result<File> {
    let path = root.join("LOCK");
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // A store just dropped in this process may still hold the lock for a
    // moment (a group-commit fsync in flight owns the disk): wait briefly.
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match sys::lock_exclusive(&file) {
            Ok(()) => return Ok(file),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => {
                return Err(e).with_context(|| format!("{} is in use by another chunk store", root.display()));
            }
        }
    }
}

/// How long opening a disk waits for another holder of its lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);
