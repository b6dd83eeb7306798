//! The simulated chunk server's disk: a [`ChunkStore`] in memory that keeps
//! each chunk as the log of records a real chunk file holds (create, data,
//! fence, seal) with a synced prefix. A mutation appends a record, then
//! waits a simulated sync delay before it is acknowledged; a crash
//! ([`MemChunkStore::recover_after_crash`]) drops every record past the
//! synced prefix, and a chunk whose create was never synced. Every data
//! record carries its CRC32C and every read verifies it, so a corrupted
//! byte ([`MemChunkStore::corrupt`]) is reported as `Corrupt`, never
//! returned.
//!
//! Deliberate bug (test-only): [`MemChunkStore::set_ack_before_sync`]
//! acknowledges mutations before their records are synced.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tessera_chunkserver::store::{ChunkStore, ScrubReport};
use tessera_common::chunk_api::{ChunkError, ChunkInfo, DiskStatus};
use tessera_common::ids::{ChunkId, Epoch};

/// With the deliberate bug on, when acknowledged records are synced after
/// all (the kernel writes dirty pages back within seconds).
const BUGGY_WRITEBACK_DELAY: Duration = Duration::from_secs(5);

/// Limits and timing of one simulated disk.
#[derive(Clone, Debug)]
pub struct MemStoreConfig {
    pub capacity_bytes: u64,
    pub append_bytes_max: u64,
    pub chunk_bytes_max: u64,
    /// An fsync takes between these (simulated time).
    pub sync_min: Duration,
    pub sync_max: Duration,
}

impl Default for MemStoreConfig {
    fn default() -> Self {
        MemStoreConfig {
            capacity_bytes: 1 << 30,
            append_bytes_max: 16 << 20,
            chunk_bytes_max: 64 << 20,
            sync_min: Duration::from_micros(200),
            sync_max: Duration::from_millis(5),
        }
    }
}

/// One record of a chunk's log, as a chunk file would hold it.
#[derive(Clone, Debug)]
enum Record {
    Create {
        epoch: Epoch,
    },
    Data {
        offset: u64,
        epoch: Epoch,
        bytes: Bytes,
        crc: u32,
    },
    Fence {
        epoch: Epoch,
    },
    Seal {
        length: u64,
        epoch: Epoch,
    },
}

/// What a disk holds of one chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldChunk {
    pub chunk: ChunkId,
    pub length: u64,
    pub sealed: bool,
    /// A data record of it fails its CRC.
    pub corrupt: bool,
}

/// One chunk: its record log and how much of it is durable.
#[derive(Clone, Debug)]
struct MemChunk {
    records: Vec<Record>,
    synced_records: usize,
}

/// A chunk's state after replaying its records.
#[derive(Clone, Debug, Default)]
struct Replayed {
    length: u64,
    epoch: Epoch,
    sealed: bool,
    /// Indexes of the data records that make up the chunk, in offset order.
    pieces: Vec<usize>,
}

impl MemChunk {
    fn replay(&self) -> Replayed {
        let mut state = Replayed::default();
        for (index, record) in self.records.iter().enumerate() {
            match record {
                Record::Create { epoch } | Record::Fence { epoch } => state.epoch = state.epoch.max(*epoch),
                Record::Data {
                    offset, epoch, bytes, ..
                } => {
                    assert_eq!(*offset, state.length, "a data record off the end of its chunk");
                    state.length += bytes.len() as u64;
                    state.epoch = state.epoch.max(*epoch);
                    state.pieces.push(index);
                }
                Record::Seal { length, epoch } => {
                    state.pieces.retain(|i| self.data(*i).0 < *length);
                    assert!(
                        state.pieces.last().is_none_or(|i| self.data(*i).1 == *length),
                        "a seal off an append boundary"
                    );
                    state.length = *length;
                    state.sealed = true;
                    state.epoch = state.epoch.max(*epoch);
                }
            }
        }
        state
    }

    /// (offset, end) of data record `index`.
    fn data(&self, index: usize) -> (u64, u64) {
        match &self.records[index] {
            Record::Data { offset, bytes, .. } => (*offset, offset + bytes.len() as u64),
            other => unreachable!("record {index} is not data: {other:?}"),
        }
    }

    fn info(&self, chunk: ChunkId) -> ChunkInfo {
        let state = self.replay();
        ChunkInfo {
            chunk,
            length: state.length,
            epoch: state.epoch,
            sealed: state.sealed,
        }
    }

    /// Offsets of the data records of `replayed` that fail their CRC.
    fn corrupt_offsets(&self, replayed: &Replayed) -> Vec<u64> {
        let records = replayed.pieces.iter().map(|&index| &self.records[index]);
        let corrupt = records.filter_map(|record| match record {
            Record::Data { offset, bytes, crc, .. } if crc32c::crc32c(bytes) != *crc => Some(*offset),
            _ => None,
        });
        corrupt.collect()
    }

    fn bytes_stored(&self) -> u64 {
        self.records
            .iter()
            .map(|record| match record {
                Record::Data { bytes, .. } => bytes.len() as u64,
                _ => 0,
            })
            .sum()
    }
}

#[derive(Debug, Default)]
struct StoreState {
    chunks: BTreeMap<ChunkId, MemChunk>,
}

/// See the module documentation. Clones share the store: the simulator
/// keeps one across a host's crashes, as a disk outlives its process.
#[derive(Clone, Debug)]
pub struct MemChunkStore {
    config: MemStoreConfig,
    state: Arc<Mutex<StoreState>>,
    corrupt_blocks: Arc<AtomicU64>,
    ack_before_sync: Arc<AtomicBool>,
}

impl MemChunkStore {
    pub fn new(config: MemStoreConfig) -> MemChunkStore {
        MemChunkStore {
            config,
            state: Arc::default(),
            corrupt_blocks: Arc::default(),
            ack_before_sync: Arc::default(),
        }
    }

    /// The deliberate bug: acknowledge before the sync.
    pub fn set_ack_before_sync(&self, on: bool) {
        self.ack_before_sync.store(on, Ordering::Relaxed);
    }

    /// What a restart finds after a crash: records past each chunk's synced
    /// prefix are gone, and chunks whose create was not synced.
    pub fn recover_after_crash(&self) {
        let mut state = self.lock();
        state.chunks.retain(|_, chunk| {
            chunk.records.truncate(chunk.synced_records);
            !chunk.records.is_empty()
        });
    }

    /// Flips one byte of the chunk's `nth` stored data byte (counted over
    /// its data records, modulo their size). Returns whether a byte flipped.
    pub fn corrupt(&self, chunk: ChunkId, nth: u64) -> bool {
        let mut state = self.lock();
        let Some(stored) = state.chunks.get_mut(&chunk) else {
            return false;
        };
        let total = stored.bytes_stored();
        if total == 0 {
            return false;
        }
        let mut at = nth % total;
        for record in &mut stored.records {
            if let Record::Data { bytes, .. } = record {
                let len = bytes.len() as u64;
                if at < len {
                    let mut flipped = bytes.to_vec();
                    flipped[at as usize] ^= 0x5A;
                    *bytes = Bytes::from(flipped);
                    return true;
                }
                at -= len;
            }
        }
        false
    }

    /// The ids of the chunks on the disk.
    pub fn chunk_ids(&self) -> Vec<ChunkId> {
        self.lock().chunks.keys().copied().collect()
    }

    /// Every chunk on the disk as a restart would find it (its synced
    /// prefix), for the simulator's end-of-run checks.
    pub fn held_after_crash(&self) -> Vec<HeldChunk> {
        let state = self.lock();
        let durable = state.chunks.iter().filter_map(|(id, stored)| {
            let synced = MemChunk {
                records: stored.records[..stored.synced_records].to_vec(),
                synced_records: stored.synced_records,
            };
            (!synced.records.is_empty()).then_some((*id, synced))
        });
        durable
            .map(|(chunk, synced)| {
                let replayed = synced.replay();
                HeldChunk {
                    chunk,
                    length: replayed.length,
                    sealed: replayed.sealed,
                    corrupt: !synced.corrupt_offsets(&replayed).is_empty(),
                }
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, StoreState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends `record` to `chunk` after `check` accepts the replayed state.
    fn mutate(
        &self,
        chunk: ChunkId,
        check: impl FnOnce(&MemChunk, &Replayed) -> Result<Option<Record>, ChunkError>,
    ) -> Result<(ChunkInfo, usize), ChunkError> {
        let mut state = self.lock();
        let stored = state.chunks.get_mut(&chunk).ok_or(ChunkError::NotFound(chunk))?;
        let replayed = stored.replay();
        if let Some(record) = check(stored, &replayed)? {
            stored.records.push(record);
        }
        Ok((stored.info(chunk), stored.records.len()))
    }

    /// Waits out a sync, then marks the chunk's first `records` durable.
    /// Cancellation safe: a dropped wait leaves the records unsynced, as a
    /// crash before the fsync returned would.
    async fn sync(&self, chunk: ChunkId, records: usize) {
        if self.ack_before_sync.load(Ordering::Relaxed) {
            // As the kernel's writeback would: much later.
            let store = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(BUGGY_WRITEBACK_DELAY).await;
                store.sync_now(chunk, records).await
            });
            return;
        }
        self.sync_now(chunk, records).await;
    }

    async fn sync_now(&self, chunk: ChunkId, records: usize) {
        let spread_us = (self.config.sync_max.saturating_sub(self.config.sync_min)).as_micros() as u64;
        let delay = self.config.sync_min + Duration::from_micros(tessera_common::rng::below(spread_us + 1));
        tokio::time::sleep(delay).await;
        if let Some(stored) = self.lock().chunks.get_mut(&chunk) {
            stored.synced_records = stored.synced_records.max(records.min(stored.records.len()));
        }
    }

    async fn mutate_durably(
        &self,
        chunk: ChunkId,
        check: impl FnOnce(&MemChunk, &Replayed) -> Result<Option<Record>, ChunkError>,
    ) -> Result<ChunkInfo, ChunkError> {
        let (info, records) = self.mutate(chunk, check)?;
        self.sync(chunk, records).await;
        Ok(info)
    }

    fn used_bytes(state: &StoreState) -> u64 {
        state.chunks.values().map(MemChunk::bytes_stored).sum()
    }

    /// Verifies the data records of `chunk` that overlap `offset..end`.
    fn verify(
        &self,
        chunk: ChunkId,
        stored: &MemChunk,
        pieces: &[usize],
        offset: u64,
        end: u64,
    ) -> Result<(), ChunkError> {
        for &index in pieces {
            let (start, stop) = stored.data(index);
            if stop <= offset || start >= end {
                continue;
            }
            if let Record::Data { bytes, crc, .. } = &stored.records[index] {
                if crc32c::crc32c(bytes) != *crc {
                    self.corrupt_blocks.fetch_add(1, Ordering::Relaxed);
                    return Err(ChunkError::Corrupt { chunk, offset: start });
                }
            }
        }
        Ok(())
    }
}

fn check_epoch(chunk: ChunkId, given: Epoch, current: Epoch) -> Result<(), ChunkError> {
    match given < current {
        true => Err(ChunkError::StaleEpoch { chunk, given, current }),
        false => Ok(()),
    }
}

/// The bytes of `pieces` covering `offset..offset + len` (unverified).
fn gather(stored: &MemChunk, pieces: &[usize], offset: u64, len: u64) -> Vec<u8> {
    let end = offset + len;
    let mut out = Vec::with_capacity(len as usize);
    for &index in pieces {
        let (start, stop) = stored.data(index);
        if stop <= offset || start >= end {
            continue;
        }
        if let Record::Data { bytes, .. } = &stored.records[index] {
            let from = (offset.max(start) - start) as usize;
            let to = (end.min(stop) - start) as usize;
            out.extend_from_slice(&bytes[from..to]);
        }
    }
    debug_assert_eq!(out.len() as u64, len, "pieces do not cover the range");
    out
}

impl ChunkStore for MemChunkStore {
    async fn create(&self, chunk: ChunkId, epoch: Epoch) -> Result<ChunkInfo, ChunkError> {
        let records = {
            let mut state = self.lock();
            if state.chunks.contains_key(&chunk) {
                return Err(ChunkError::AlreadyExists(chunk));
            }
            let stored = MemChunk {
                records: vec![Record::Create { epoch }],
                synced_records: 0,
            };
            state.chunks.insert(chunk, stored);
            1
        };
        self.sync(chunk, records).await;
        Ok(ChunkInfo {
            chunk,
            length: 0,
            epoch,
            sealed: false,
        })
    }

    async fn append(&self, chunk: ChunkId, offset: u64, epoch: Epoch, data: Bytes) -> Result<ChunkInfo, ChunkError> {
        let len = data.len() as u64;
        let max = self.config.append_bytes_max;
        if len > max {
            return Err(ChunkError::TooLarge { len, max });
        }
        let chunk_bytes_max = self.config.chunk_bytes_max;
        let capacity_bytes = self.config.capacity_bytes;
        let used_bytes = Self::used_bytes(&self.lock());
        let this = self.clone();
        self.mutate_durably(chunk, move |stored, state| {
            check_epoch(chunk, epoch, state.epoch)?;
            if offset < state.length {
                let end = offset + len;
                if end > state.length {
                    return Err(match state.sealed {
                        true => ChunkError::Sealed(chunk),
                        false => ChunkError::Conflict { chunk, offset },
                    });
                }
                this.verify(chunk, stored, &state.pieces, offset, end)?;
                if gather(stored, &state.pieces, offset, len) != data {
                    return Err(ChunkError::Conflict { chunk, offset });
                }
                return Ok((epoch > state.epoch).then_some(Record::Fence { epoch }));
            }
            if state.sealed {
                return Err(ChunkError::Sealed(chunk));
            }
            if offset > state.length {
                return Err(ChunkError::WrongOffset {
                    chunk,
                    expected: offset,
                    length: state.length,
                });
            }
            if data.is_empty() {
                return Ok((epoch > state.epoch).then_some(Record::Fence { epoch }));
            }
            if offset + len > chunk_bytes_max {
                let room = chunk_bytes_max.saturating_sub(state.length);
                return Err(ChunkError::TooLarge { len, max: room });
            }
            if used_bytes + len > capacity_bytes {
                return Err(ChunkError::NoSpace);
            }
            let crc = crc32c::crc32c(&data);
            Ok(Some(Record::Data {
                offset,
                epoch,
                bytes: data,
                crc,
            }))
        })
        .await
    }

    async fn read(&self, chunk: ChunkId, offset: u64, len: u64) -> Result<Bytes, ChunkError> {
        let state = self.lock();
        let stored = state.chunks.get(&chunk).ok_or(ChunkError::NotFound(chunk))?;
        let replayed = stored.replay();
        let length = replayed.length;
        let end = match offset.checked_add(len) {
            Some(end) if end <= length => end,
            _ => {
                return Err(ChunkError::OutOfRange {
                    chunk,
                    offset,
                    len,
                    length,
                })
            }
        };
        self.verify(chunk, stored, &replayed.pieces, offset, end)?;
        Ok(Bytes::from(gather(stored, &replayed.pieces, offset, len)))
    }

    async fn fence(&self, chunk: ChunkId, epoch: Epoch) -> Result<ChunkInfo, ChunkError> {
        self.mutate_durably(chunk, |_, state| {
            check_epoch(chunk, epoch, state.epoch)?;
            Ok((epoch > state.epoch).then_some(Record::Fence { epoch }))
        })
        .await
    }

    async fn seal(&self, chunk: ChunkId, epoch: Epoch, length: Option<u64>) -> Result<ChunkInfo, ChunkError> {
        self.mutate_durably(chunk, |stored, state| {
            check_epoch(chunk, epoch, state.epoch)?;
            let target = length.unwrap_or(state.length);
            let bad_seal = |reason: String| ChunkError::BadSeal {
                chunk,
                requested: target,
                reason,
            };
            if state.sealed && target != state.length {
                return Err(bad_seal(format!("already sealed at {}", state.length)));
            }
            if state.sealed && epoch == state.epoch {
                return Ok(None);
            }
            if target > state.length {
                return Err(bad_seal(format!("beyond the chunk length {}", state.length)));
            }
            let on_boundary = target == 0 || state.pieces.iter().any(|i| stored.data(*i).1 == target);
            if !on_boundary {
                return Err(bad_seal("not on an append boundary".into()));
            }
            Ok(Some(Record::Seal { length: target, epoch }))
        })
        .await
    }

    async fn stat(&self, chunk: ChunkId) -> Result<ChunkInfo, ChunkError> {
        let state = self.lock();
        let stored = state.chunks.get(&chunk).ok_or(ChunkError::NotFound(chunk))?;
        Ok(stored.info(chunk))
    }

    async fn delete(&self, chunk: ChunkId) -> Result<(), ChunkError> {
        // Deletes are durable at once (a real store syncs the directory
        // before it answers).
        match self.lock().chunks.remove(&chunk) {
            Some(_) => Ok(()),
            None => Err(ChunkError::NotFound(chunk)),
        }
    }

    async fn list(&self) -> Vec<ChunkInfo> {
        let state = self.lock();
        state.chunks.iter().map(|(id, stored)| stored.info(*id)).collect()
    }

    async fn disks(&self) -> Vec<DiskStatus> {
        let state = self.lock();
        vec![DiskStatus {
            path: "sim".into(),
            capacity_bytes: self.config.capacity_bytes,
            used_bytes: Self::used_bytes(&state),
            chunks: state.chunks.len() as u64,
            healthy: true,
            corrupt_blocks: self.corrupt_blocks.load(Ordering::Relaxed),
        }]
    }

    async fn scrub(&self, chunk: ChunkId) -> Result<ScrubReport, ChunkError> {
        let state = self.lock();
        let stored = state.chunks.get(&chunk).ok_or(ChunkError::NotFound(chunk))?;
        let replayed = stored.replay();
        let corrupt_offsets = stored.corrupt_offsets(&replayed);
        self.corrupt_blocks
            .fetch_add(corrupt_offsets.len() as u64, Ordering::Relaxed);
        Ok(ScrubReport {
            chunk,
            bytes_verified: replayed.length,
            corrupt_offsets,
        })
    }
}

#[cfg(test)]
mod tests;
