//! [`FileChunkStore`]: the production [`ChunkStore`], one append-only,
//! checksummed file per chunk on one or more local disks (DESIGN §6).
//!
//! This module owns the store as a whole: configuration, the chunk map,
//! placement of new chunks, the append byte budget, and the async glue that
//! runs every disk operation on tokio's blocking pool and waits for group
//! commit before acknowledging. The pieces:
//!
//! - [`format`](mod@format): the versioned on-disk format (pure encode/decode).
//! - `chunk`: one open chunk: index, serialized mutations, verified reads.
//! - `recovery`: open-time scan, torn-tail truncation, quarantine.
//! - `sync`: group commit (`fdatasync` per chunk or `syncfs` per disk).
//! - `disk`: one data directory: paths, space accounting, health.
//! - `sys`: Linux syscalls and OS error mapping.

pub mod format;

mod chunk;
mod disk;
mod recovery;
mod sync;
mod sys;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use anyhow::{bail, Context};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tessera_common::chunk_api::{ChunkError, ChunkInfo, DiskStatus};
use tessera_common::ids::{ChunkId, Epoch};
use tokio::sync::Semaphore;

use crate::store::{ChunkStore, ScrubReport};
use chunk::{Applied, Chunk, Limits, Meta};
use disk::Disk;
use format::{FileHeader, FILE_HEADER_BYTES};
use sync::lock;
pub use sync::SyncMode;

/// One data directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    pub path: PathBuf,
    /// Quota for chunk files here; `None`: the filesystem's free space.
    #[serde(default)]
    pub capacity_bytes: Option<u64>,
}

/// Configuration of a [`FileChunkStore`] (the `[store]` table of the chunk
/// server's TOML).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStoreConfig {
    pub disks: Vec<DiskConfig>,
    /// Largest single append; larger ones are `TooLarge`. At most 4 GiB.
    #[serde(default = "default_append_bytes_max")]
    pub append_bytes_max: u64,
    /// Appends that would grow a chunk past this are `TooLarge`: the caller
    /// seals the chunk and opens another.
    #[serde(default = "default_chunk_bytes_max")]
    pub chunk_bytes_max: u64,
    /// How appends are made durable (group commit unit).
    #[serde(default)]
    pub sync_mode: SyncMode,
}

fn default_append_bytes_max() -> u64 {
    64 * 1024 * 1024
}

fn default_chunk_bytes_max() -> u64 {
    256 * 1024 * 1024
}

impl Default for FileStoreConfig {
    fn default() -> Self {
        FileStoreConfig {
            disks: Vec::new(),
            append_bytes_max: default_append_bytes_max(),
            chunk_bytes_max: default_chunk_bytes_max(),
            sync_mode: SyncMode::default(),
        }
    }
}

impl FileStoreConfig {
    /// Defaults on the given disk directories, without quotas.
    pub fn with_disks(paths: impl IntoIterator<Item = PathBuf>) -> Self {
        let disks = paths
            .into_iter()
            .map(|path| DiskConfig {
                path,
                capacity_bytes: None,
            })
            .collect();
        FileStoreConfig {
            disks,
            ..Default::default()
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.disks.is_empty() {
            bail!("store.disks: at least one disk directory is required");
        }
        let distinct: HashSet<&PathBuf> = self.disks.iter().map(|disk| &disk.path).collect();
        if distinct.len() != self.disks.len() {
            bail!("store.disks: a directory is listed twice");
        }
        if self.append_bytes_max == 0 || self.append_bytes_max > u64::from(u32::MAX) {
            bail!(
                "store.append_bytes_max = {}: must be in 1..=4294967295",
                self.append_bytes_max
            );
        }
        if self.chunk_bytes_max == 0 {
            bail!("store.chunk_bytes_max: must be positive");
        }
        Ok(())
    }
}

/// Bytes of appends in flight (written or waiting for their sync), and
/// separately of reads in flight, are each bounded at
/// `max(4 * append_bytes_max, BUDGET_MIN_BYTES)`.
const BUDGET_MIN_BYTES: u64 = 256 * 1024 * 1024;
/// Budgets count in units of this many bytes.
const BUDGET_UNIT_BYTES: u64 = 1024;

fn budget_permits(config: &FileStoreConfig) -> u64 {
    (config.append_bytes_max * 4).max(BUDGET_MIN_BYTES) / BUDGET_UNIT_BYTES
}

/// The file-backed chunk store. Cheap to share behind an `Arc`.
pub struct FileChunkStore {
    inner: Arc<Inner>,
}

struct Inner {
    config: FileStoreConfig,
    disks: Vec<Arc<Disk>>,
    chunks: RwLock<HashMap<ChunkId, Arc<Chunk>>>,
    /// Chunks being created (not yet in `chunks`).
    creating: Mutex<HashSet<ChunkId>>,
    append_budget: Arc<Semaphore>,
    /// Bytes of reads in flight, bounded like appends.
    read_budget: Arc<Semaphore>,
}

impl FileChunkStore {
    /// Opens every disk, recovers its chunks (see `recovery`) and makes the
    /// recovered state durable. Runs on the blocking pool.
    pub async fn open(config: FileStoreConfig) -> anyhow::Result<Self> {
        tokio::task::spawn_blocking(move || Self::open_blocking(config))
            .await
            .context("chunk store open task")?
    }

    /// [`FileChunkStore::open`] for callers outside an async runtime.
    pub fn open_blocking(config: FileStoreConfig) -> anyhow::Result<Self> {
        config.validate()?;
        let disks = config
            .disks
            .iter()
            .map(|disk| {
                Disk::open(disk)
                    .map(Arc::new)
                    .with_context(|| format!("opening disk {}", disk.path.display()))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let recovered = recover_disks(&disks)?;
        let inner = Inner {
            append_budget: Arc::new(Semaphore::new(budget_permits(&config) as usize)),
            read_budget: Arc::new(Semaphore::new(budget_permits(&config) as usize)),
            config,
            disks,
            chunks: RwLock::new(HashMap::new()),
            creating: Mutex::new(HashSet::new()),
        };
        inner.adopt(recovered);
        for disk in &inner.disks {
            // A killed process leaves its unsynced writes in the page cache,
            // where recovery just accepted them: make them durable before
            // treating them as acknowledged.
            let dir = std::fs::File::open(&disk.chunks_dir)?;
            sys::syncfs(&dir).with_context(|| format!("syncing {}", disk.root.display()))?;
        }
        let chunk_count = inner.read_chunks().len();
        tracing::info!(disks = inner.disks.len(), chunks = chunk_count, "chunk store open");
        Ok(FileChunkStore { inner: Arc::new(inner) })
    }

    pub fn config(&self) -> &FileStoreConfig {
        &self.inner.config
    }

    /// Path of a chunk's file, if the chunk exists.
    pub fn chunk_path(&self, chunk: ChunkId) -> Option<PathBuf> {
        self.inner.get(chunk).ok().map(|chunk| chunk.path.clone())
    }

    /// Every chunk, sorted.
    pub fn chunk_ids(&self) -> Vec<ChunkId> {
        let mut ids: Vec<ChunkId> = self.inner.read_chunks().keys().copied().collect();
        ids.sort();
        ids
    }

    /// Corrupt blocks found by reads and scrubs since open, over all disks.
    pub fn corrupt_blocks_total(&self) -> u64 {
        self.inner.disks.iter().map(|disk| disk.corrupt_blocks()).sum()
    }
}

/// Recovers all disks in parallel, one thread each.
fn recover_disks(disks: &[Arc<Disk>]) -> anyhow::Result<Vec<(Arc<Disk>, Vec<recovery::Recovered>)>> {
    std::thread::scope(|scope| {
        let scans: Vec<_> = disks
            .iter()
            .map(|disk| scope.spawn(|| recovery::scan_disk(disk)))
            .collect();
        disks
            .iter()
            .zip(scans)
            .map(|(disk, scan)| {
                let recovered = scan
                    .join()
                    .map_err(|_| anyhow::anyhow!("recovery of {} panicked", disk.root.display()))?;
                Ok((
                    disk.clone(),
                    recovered.with_context(|| format!("recovering {}", disk.root.display()))?,
                ))
            })
            .collect()
    })
}

impl Inner {
    fn read_chunks(&self) -> std::sync::RwLockReadGuard<'_, HashMap<ChunkId, Arc<Chunk>>> {
        self.chunks.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write_chunks(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<ChunkId, Arc<Chunk>>> {
        self.chunks.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn get(&self, chunk: ChunkId) -> Result<Arc<Chunk>, ChunkError> {
        self.read_chunks()
            .get(&chunk)
            .cloned()
            .ok_or(ChunkError::NotFound(chunk))
    }

    /// Registers recovered chunks; a chunk found on two disks is served from
    /// the first and quarantined on the others.
    fn adopt(&self, recovered: Vec<(Arc<Disk>, Vec<recovery::Recovered>)>) {
        let mut chunks = self.write_chunks();
        for (disk, found) in recovered {
            for recovered in found {
                if chunks.contains_key(&recovered.chunk) {
                    drop(recovered.file);
                    let path = disk.chunk_path(recovered.chunk);
                    recovery::quarantine(&disk, &path, "the same chunk is on an earlier disk");
                    continue;
                }
                disk.force_reserve(recovered.file_end);
                disk.note_chunk_added();
                let chunk = self.make_chunk(
                    &disk,
                    recovered.chunk,
                    recovered.file,
                    recovered.meta,
                    recovered.file_end,
                );
                chunks.insert(recovered.chunk, chunk);
            }
        }
    }

    fn make_chunk(&self, disk: &Arc<Disk>, id: ChunkId, file: std::fs::File, meta: Meta, file_end: u64) -> Arc<Chunk> {
        Arc::new(Chunk::new(
            id,
            disk.clone(),
            Arc::new(file),
            self.config.sync_mode,
            meta,
            file_end,
        ))
    }

    fn limits(&self) -> Limits {
        Limits {
            chunk_bytes_max: self.config.chunk_bytes_max,
        }
    }

    /// Creates a chunk file on the healthy disk with the most free space.
    fn create(&self, id: ChunkId, epoch: Epoch) -> Result<ChunkInfo, ChunkError> {
        let _claim = CreateClaim::take(self, id)?;
        let disk = self.pick_disk()?;
        disk.try_reserve(FILE_HEADER_BYTES)?;
        let file = disk.create_chunk_file(&FileHeader::new(id, epoch)).map_err(|error| {
            disk.release(FILE_HEADER_BYTES);
            disk.note_io_error(&error);
            match error.kind() {
                std::io::ErrorKind::AlreadyExists => ChunkError::AlreadyExists(id),
                _ => sys::chunk_error(&error, &format!("creating {}", disk.chunk_path(id).display())),
            }
        })?;
        disk.note_chunk_added();
        let chunk = self.make_chunk(&disk, id, file, Meta::new(epoch), FILE_HEADER_BYTES);
        let info = chunk.info();
        self.write_chunks().insert(id, chunk);
        Ok(info)
    }

    fn pick_disk(&self) -> Result<Arc<Disk>, ChunkError> {
        let healthy: Vec<&Arc<Disk>> = self.disks.iter().filter(|disk| disk.is_healthy()).collect();
        if healthy.is_empty() {
            return Err(ChunkError::Io("no healthy disk".into()));
        }
        let (free_bytes, disk) = healthy
            .into_iter()
            .map(|disk| (disk.free_bytes(), disk))
            .max_by_key(|(free_bytes, _)| *free_bytes)
            .expect("at least one healthy disk");
        if free_bytes < FILE_HEADER_BYTES {
            return Err(ChunkError::NoSpace);
        }
        Ok(disk.clone())
    }

    fn delete(&self, chunk: &Arc<Chunk>, writer: &mut chunk::Writer) -> Result<(), ChunkError> {
        if writer.deleted {
            return Err(ChunkError::NotFound(chunk.id));
        }
        chunk.disk.remove_chunk_file(chunk.id).map_err(|error| {
            chunk.disk.note_io_error(&error);
            sys::chunk_error(&error, &format!("deleting {}", chunk.path.display()))
        })?;
        chunk.mark_deleted(writer);
        let mut chunks = self.write_chunks();
        if chunks.get(&chunk.id).is_some_and(|current| Arc::ptr_eq(current, chunk)) {
            chunks.remove(&chunk.id);
        }
        chunk.disk.forget_chunk(writer.file_end);
        Ok(())
    }
}

/// Marks a chunk id as being created, so concurrent creates of it fail.
struct CreateClaim<'a> {
    inner: &'a Inner,
    chunk: ChunkId,
}

impl<'a> CreateClaim<'a> {
    fn take(inner: &'a Inner, chunk: ChunkId) -> Result<Self, ChunkError> {
        let mut creating = lock(&inner.creating);
        if inner.read_chunks().contains_key(&chunk) || !creating.insert(chunk) {
            return Err(ChunkError::AlreadyExists(chunk));
        }
        Ok(CreateClaim { inner, chunk })
    }
}

impl Drop for CreateClaim<'_> {
    fn drop(&mut self) {
        lock(&self.inner.creating).remove(&self.chunk);
    }
}

/// Runs `work` on the blocking pool; a panic there becomes an `Io` error.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ChunkError> + Send + 'static,
) -> Result<T, ChunkError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(error) => {
            tracing::error!(%error, "chunk store task failed");
            Err(ChunkError::Io(format!("internal error: {error}")))
        }
    }
}

/// After a mutation, in its blocking thread and with the writer lock
/// released: syncs at once if no pass is running (saves a thread handoff).
fn sync_now_if_idle(applied: &Applied) {
    if let Some(ticket) = &applied.ticket {
        ticket.sync_now_if_idle();
    }
}

/// Waits until a mutation is durable, then acknowledges it.
async fn acknowledge(chunk: &Chunk, applied: Applied) -> Result<ChunkInfo, ChunkError> {
    if let Some(ticket) = &applied.ticket {
        ticket.wait().await?;
        chunk.mark_durable(applied.durable_length);
    }
    Ok(applied.info)
}

/// Budget units for `len_bytes`, at most the whole budget (`budget_permits`).
fn budget_units(len_bytes: u64, budget_permits: u64) -> u32 {
    let units = len_bytes.div_ceil(BUDGET_UNIT_BYTES).clamp(1, budget_permits);
    u32::try_from(units).unwrap_or(u32::MAX)
}

impl ChunkStore for FileChunkStore {
    async fn create(&self, chunk: ChunkId, epoch: Epoch) -> Result<ChunkInfo, ChunkError> {
        let inner = self.inner.clone();
        blocking(move || inner.create(chunk, epoch)).await
    }

    async fn append(&self, chunk: ChunkId, offset: u64, epoch: Epoch, data: Bytes) -> Result<ChunkInfo, ChunkError> {
        let len = data.len() as u64;
        let max = self.inner.config.append_bytes_max;
        if len > max {
            return Err(ChunkError::TooLarge { len, max });
        }
        let handle = self.inner.get(chunk)?;
        let _budget = self
            .inner
            .append_budget
            .clone()
            .acquire_many_owned(budget_units(len, budget_permits(&self.inner.config)))
            .await
            .map_err(|_| ChunkError::Io("chunk store closed".into()))?;
        let mut writer = handle.writer.clone().lock_owned().await;
        let limits = self.inner.limits();
        let target = handle.clone();
        let applied = blocking(move || {
            let applied = target.append(&mut writer, offset, epoch, &data, limits)?;
            drop(writer);
            sync_now_if_idle(&applied);
            Ok(applied)
        })
        .await?;
        acknowledge(&handle, applied).await
    }

    async fn read(&self, chunk: ChunkId, offset: u64, len: u64) -> Result<Bytes, ChunkError> {
        let handle = self.inner.get(chunk)?;
        let length = handle.info().length;
        if offset.checked_add(len).is_none_or(|end| end > length) {
            return Err(ChunkError::OutOfRange {
                chunk,
                offset,
                len,
                length,
            });
        }
        let _budget = self
            .inner
            .read_budget
            .clone()
            .acquire_many_owned(budget_units(len, budget_permits(&self.inner.config)))
            .await
            .map_err(|_| ChunkError::Io("chunk store closed".into()))?;
        blocking(move || handle.read(offset, len)).await.map(Bytes::from)
    }

    async fn fence(&self, chunk: ChunkId, epoch: Epoch) -> Result<ChunkInfo, ChunkError> {
        let handle = self.inner.get(chunk)?;
        let mut writer = handle.writer.clone().lock_owned().await;
        let target = handle.clone();
        let applied = blocking(move || {
            let applied = target.fence(&mut writer, epoch)?;
            drop(writer);
            sync_now_if_idle(&applied);
            Ok(applied)
        })
        .await?;
        acknowledge(&handle, applied).await
    }

    async fn seal(&self, chunk: ChunkId, epoch: Epoch, length: Option<u64>) -> Result<ChunkInfo, ChunkError> {
        let handle = self.inner.get(chunk)?;
        let mut writer = handle.writer.clone().lock_owned().await;
        let target = handle.clone();
        let applied = blocking(move || {
            let applied = target.seal(&mut writer, epoch, length)?;
            drop(writer);
            sync_now_if_idle(&applied);
            Ok(applied)
        })
        .await?;
        acknowledge(&handle, applied).await
    }

    async fn stat(&self, chunk: ChunkId) -> Result<ChunkInfo, ChunkError> {
        Ok(self.inner.get(chunk)?.info())
    }

    async fn delete(&self, chunk: ChunkId) -> Result<(), ChunkError> {
        let handle = self.inner.get(chunk)?;
        let mut writer = handle.writer.clone().lock_owned().await;
        let inner = self.inner.clone();
        blocking(move || inner.delete(&handle, &mut writer)).await
    }

    async fn list(&self) -> Vec<ChunkInfo> {
        let mut infos: Vec<ChunkInfo> = self.inner.read_chunks().values().map(|chunk| chunk.info()).collect();
        infos.sort_by_key(|info| info.chunk);
        infos
    }

    async fn disks(&self) -> Vec<DiskStatus> {
        let disks = self.inner.disks.clone();
        blocking(move || Ok(disks.iter().map(|disk| disk.status()).collect()))
            .await
            .unwrap_or_default()
    }

    async fn scrub(&self, chunk: ChunkId) -> Result<ScrubReport, ChunkError> {
        let handle = self.inner.get(chunk)?;
        let (bytes_verified, corrupt_offsets) = blocking(move || handle.scrub()).await?;
        Ok(ScrubReport {
            chunk,
            bytes_verified,
            corrupt_offsets,
        })
    }
}
