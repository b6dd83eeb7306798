//! One open chunk file: its in-memory index, the serialized mutations
//! (append, fence, seal) and the verified reads and scrub. All methods here
//! block; mutations take the chunk's [`Writer`] (held through a tokio mutex
//! by the caller) so appends to one chunk are serialized while their syncs
//! are shared.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tessera_common::chunk_api::{ChunkError, ChunkInfo};
use tessera_common::ids::{ChunkId, Epoch};

use super::disk::Disk;
use super::format::{self, RecordHeader, BLOCK_BYTES, BLOCK_CRC_BYTES, RECORD_HEADER_BYTES};
use super::sync::{lock, GroupSync, SyncMode, SyncTarget, Ticket};
use super::sys;

/// Reads of records closer than this in the file are merged into one pread.
const READ_MERGE_GAP_BYTES: u64 = 64 * 1024;
/// Scrub verifies at most this many blocks per read.
const SCRUB_BLOCKS_PER_READ: u64 = 256;

/// Where one data record (or a damaged, unreadable range) lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordLoc {
    /// Logical offset of its first byte in the chunk.
    pub logical: u64,
    /// File position of its record header; [`RecordLoc::GAP`] for a range
    /// whose record could not be decoded (every read of it is `Corrupt`).
    pub file_pos: u64,
    pub len: u64,
}

impl RecordLoc {
    pub const GAP: u64 = u64::MAX;

    pub fn end(&self) -> u64 {
        self.logical + self.len
    }

    pub fn is_gap(&self) -> bool {
        self.file_pos == Self::GAP
    }

    fn crcs_pos(&self) -> u64 {
        self.file_pos + RECORD_HEADER_BYTES
    }

    fn data_pos(&self) -> u64 {
        self.crcs_pos() + format::block_count(self.len) * BLOCK_CRC_BYTES
    }
}

/// What readers need: the index and the chunk's visible state.
#[derive(Clone, Debug)]
pub struct Meta {
    /// Sorted by logical offset, contiguous from 0 to `length`.
    pub records: Vec<RecordLoc>,
    pub length: u64,
    pub epoch: Epoch,
    pub sealed: bool,
}

impl Meta {
    pub fn new(epoch: Epoch) -> Self {
        Meta {
            records: Vec::new(),
            length: 0,
            epoch,
            sealed: false,
        }
    }

    /// The records overlapping `offset .. offset + len`.
    pub fn covering(&self, offset: u64, len: u64) -> &[RecordLoc] {
        if len == 0 {
            return &[];
        }
        let first = self.records.partition_point(|record| record.end() <= offset);
        let last = self.records.partition_point(|record| record.logical < offset + len);
        &self.records[first..last.max(first)]
    }

    /// Whether `at` is where some append started or ended.
    pub fn is_boundary(&self, at: u64) -> bool {
        at == 0 || {
            let index = self.records.partition_point(|record| record.end() < at);
            self.records.get(index).is_some_and(|record| record.end() == at)
        }
    }

    /// Forgets the records past `at` (a boundary).
    pub fn truncate_to(&mut self, at: u64) {
        debug_assert!(self.is_boundary(at), "truncating {at} off a record boundary");
        let keep = self.records.partition_point(|record| record.end() <= at);
        self.records.truncate(keep);
        self.length = at;
    }

    fn push(&mut self, record: RecordLoc) {
        debug_assert_eq!(record.logical, self.length, "records must be contiguous");
        self.length = record.end();
        self.records.push(record);
    }

    pub fn info(&self, chunk: ChunkId) -> ChunkInfo {
        ChunkInfo {
            chunk,
            length: self.length,
            epoch: self.epoch,
            sealed: self.sealed,
        }
    }
}

/// The write side of a chunk, owned by whoever holds the chunk's writer lock.
#[derive(Debug)]
pub struct Writer {
    /// File position of the next record.
    pub file_end: u64,
    /// Set when the file's state is unknown (a failed rollback); every later
    /// mutation fails until restart, when recovery rescans the file.
    pub poisoned: Option<String>,
    pub deleted: bool,
}

/// Whether a record must fit the disk quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Quota {
    Enforce,
    /// The few bytes of fence and seal records: these must work on a full
    /// disk, so callers can seal and move on.
    Overdraw,
}

/// Size limits of appends.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub chunk_bytes_max: u64,
}

/// Result of a mutation that succeeded: the chunk's state after it and the
/// sync ticket to wait for before acknowledging (`None`: already durable).
pub struct Applied {
    pub info: ChunkInfo,
    pub ticket: Option<Ticket>,
    /// Logical length made durable by the ticket.
    pub durable_length: u64,
}

pub struct Chunk {
    pub id: ChunkId,
    pub disk: Arc<Disk>,
    pub path: PathBuf,
    pub file: Arc<File>,
    pub writer: Arc<tokio::sync::Mutex<Writer>>,
    meta: RwLock<Meta>,
    /// This chunk's own sync unit (`fdatasync` of its file).
    file_sync: Arc<GroupSync>,
    sync_mode: SyncMode,
    /// Logical length known durable: retries below it need no sync.
    durable_length: AtomicU64,
    /// Logical offsets of blocks found corrupt, each counted once.
    corrupt_offsets: Mutex<BTreeSet<u64>>,
}

impl Chunk {
    pub fn new(id: ChunkId, disk: Arc<Disk>, file: Arc<File>, sync_mode: SyncMode, meta: Meta, file_end: u64) -> Self {
        let file_sync = Arc::new(GroupSync::new(
            SyncTarget::File(file.clone()),
            disk.sync_limiter.clone(),
            disk.health.clone(),
        ));
        let path = disk.chunk_path(id);
        let durable_length = meta.length;
        Chunk {
            id,
            disk,
            path,
            file,
            writer: Arc::new(tokio::sync::Mutex::new(Writer {
                file_end,
                poisoned: None,
                deleted: false,
            })),
            meta: RwLock::new(meta),
            file_sync,
            sync_mode,
            durable_length: AtomicU64::new(durable_length),
            corrupt_offsets: Mutex::new(BTreeSet::new()),
        }
    }

    pub fn meta(&self) -> RwLockReadGuard<'_, Meta> {
        self.meta.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn meta_mut(&self) -> RwLockWriteGuard<'_, Meta> {
        self.meta.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn info(&self) -> ChunkInfo {
        self.meta().info(self.id)
    }

    /// The unit that makes the next write durable (see [`SyncMode`]).
    fn sync_unit(&self) -> &Arc<GroupSync> {
        match self.sync_mode {
            SyncMode::Fdatasync => &self.file_sync,
            SyncMode::Syncfs => &self.disk.fs_sync,
        }
    }

    /// A ticket covering every write to this chunk so far.
    fn barrier(&self) -> Ticket {
        self.sync_unit().note_write()
    }

    /// Called once a ticket's sync succeeded.
    pub fn mark_durable(&self, length: u64) {
        self.durable_length.fetch_max(length, Ordering::Relaxed);
    }

    /// Appends `data` at `offset` (see the `ChunkStore` contract).
    pub fn append(
        &self,
        writer: &mut Writer,
        offset: u64,
        epoch: Epoch,
        data: &[u8],
        limits: Limits,
    ) -> Result<Applied, ChunkError> {
        self.check_writable(writer)?;
        let meta = self.meta().clone_state();
        check_epoch(self.id, epoch, meta.epoch)?;
        if offset < meta.length {
            return self.retry_append(writer, offset, epoch, data);
        }
        if meta.sealed {
            return Err(ChunkError::Sealed(self.id));
        }
        if offset > meta.length {
            return Err(ChunkError::WrongOffset {
                chunk: self.id,
                expected: offset,
                length: meta.length,
            });
        }
        if data.is_empty() {
            return self.fence(writer, epoch);
        }
        let len = data.len() as u64;
        if offset + len > limits.chunk_bytes_max {
            let room = limits.chunk_bytes_max.saturating_sub(meta.length);
            return Err(ChunkError::TooLarge { len, max: room });
        }
        self.write_data(writer, offset, epoch.max(meta.epoch), data)
    }

    /// An append at `offset < length`: succeeds without writing when the
    /// stored bytes (verified) are the same.
    fn retry_append(&self, writer: &mut Writer, offset: u64, epoch: Epoch, data: &[u8]) -> Result<Applied, ChunkError> {
        let meta = self.meta().clone_state();
        let end = offset + data.len() as u64;
        if end > meta.length {
            return Err(if meta.sealed {
                ChunkError::Sealed(self.id)
            } else {
                ChunkError::Conflict { chunk: self.id, offset }
            });
        }
        if self.read(offset, data.len() as u64)? != data {
            return Err(ChunkError::Conflict { chunk: self.id, offset });
        }
        if epoch > meta.epoch {
            return self.fence(writer, epoch);
        }
        let ticket = (end > self.durable_length.load(Ordering::Relaxed)).then(|| self.barrier());
        Ok(Applied {
            info: meta.info(self.id),
            ticket,
            durable_length: end,
        })
    }

    fn write_data(&self, writer: &mut Writer, offset: u64, epoch: Epoch, data: &[u8]) -> Result<Applied, ChunkError> {
        let (header, crcs) = format::encode_data_record(offset, epoch, data);
        let file_pos = writer.file_end;
        let ticket = self.write_record(writer, &[&header, &crcs, data], Quota::Enforce)?;
        let mut meta = self.meta_mut();
        meta.push(RecordLoc {
            logical: offset,
            file_pos,
            len: data.len() as u64,
        });
        meta.epoch = epoch;
        metrics::counter!("chunk_append_bytes_total").increment(data.len() as u64);
        Ok(Applied {
            info: meta.info(self.id),
            ticket: Some(ticket),
            durable_length: meta.length,
        })
    }

    /// Raises the epoch durably (a Fence record), or only waits for the
    /// current one to be durable when it is not newer.
    pub fn fence(&self, writer: &mut Writer, epoch: Epoch) -> Result<Applied, ChunkError> {
        self.check_writable(writer)?;
        let meta = self.meta().clone_state();
        check_epoch(self.id, epoch, meta.epoch)?;
        if epoch == meta.epoch {
            let ticket = Some(self.barrier());
            return Ok(Applied {
                info: meta.info(self.id),
                ticket,
                durable_length: meta.length,
            });
        }
        let header = RecordHeader::fence(meta.length, epoch).encode();
        let ticket = self.write_record(writer, &[&header], Quota::Overdraw)?;
        let mut meta = self.meta_mut();
        meta.epoch = epoch;
        Ok(Applied {
            info: meta.info(self.id),
            ticket: Some(ticket),
            durable_length: meta.length,
        })
    }

    /// Seals at `length` (default: the current length). Records past it stay
    /// in the file but are dropped from the chunk: the Seal record is written
    /// after them, so an epoch raised by a record past the seal point is never
    /// lost, whatever part of the seal a crash interrupts.
    pub fn seal(&self, writer: &mut Writer, epoch: Epoch, length: Option<u64>) -> Result<Applied, ChunkError> {
        self.check_writable(writer)?;
        let meta = self.meta().clone_state();
        check_epoch(self.id, epoch, meta.epoch)?;
        let target = length.unwrap_or(meta.length);
        let bad_seal = |reason: String| ChunkError::BadSeal {
            chunk: self.id,
            requested: target,
            reason,
        };
        if meta.sealed && target != meta.length {
            return Err(bad_seal(format!("already sealed at {}", meta.length)));
        }
        if meta.sealed && epoch == meta.epoch {
            let ticket = Some(self.barrier());
            return Ok(Applied {
                info: meta.info(self.id),
                ticket,
                durable_length: meta.length,
            });
        }
        if target > meta.length {
            return Err(bad_seal(format!("beyond the chunk length {}", meta.length)));
        }
        if !self.meta().is_boundary(target) {
            return Err(bad_seal("not on an append boundary".into()));
        }
        let header = RecordHeader::seal(target, epoch).encode();
        let ticket = self.write_record(writer, &[&header], Quota::Overdraw)?;
        let mut meta = self.meta_mut();
        meta.truncate_to(target);
        meta.sealed = true;
        meta.epoch = epoch;
        Ok(Applied {
            info: meta.info(self.id),
            ticket: Some(ticket),
            durable_length: target,
        })
    }

    fn check_writable(&self, writer: &Writer) -> Result<(), ChunkError> {
        if writer.deleted {
            return Err(ChunkError::NotFound(self.id));
        }
        if self.disk.health.sync_failed() {
            return Err(ChunkError::Io(format!(
                "{}: a sync failed on this disk; writes refused until restart",
                self.disk.root.display()
            )));
        }
        match &writer.poisoned {
            Some(reason) => Err(ChunkError::Io(format!("{}: {reason}", self.path.display()))),
            None => Ok(()),
        }
    }

    /// Writes one record at the end of the file and returns its sync ticket.
    /// On failure the file is cut back to where it was, so the next append
    /// at the right offset works.
    fn write_record(&self, writer: &mut Writer, parts: &[&[u8]], quota: Quota) -> Result<Ticket, ChunkError> {
        let record_bytes: u64 = parts.iter().map(|part| part.len() as u64).sum();
        match quota {
            Quota::Enforce => self.disk.try_reserve(record_bytes)?,
            Quota::Overdraw => self.disk.force_reserve(record_bytes),
        }
        match sys::pwritev_all(&self.file, parts, writer.file_end) {
            Ok(()) => {
                writer.file_end += record_bytes;
                Ok(self.sync_unit().note_write())
            }
            Err(error) => {
                self.disk.release(record_bytes);
                self.disk.note_io_error(&error);
                self.roll_back(writer);
                Err(sys::chunk_error(&error, &format!("writing {}", self.path.display())))
            }
        }
    }

    /// Cuts a failed write off the file; poisons the chunk if even that fails.
    fn roll_back(&self, writer: &mut Writer) {
        if let Err(error) = self.file.set_len(writer.file_end) {
            tracing::error!(chunk = %self.id, %error, "cannot roll back a failed write; chunk refuses writes until restart");
            self.disk.note_io_error(&error);
            writer.poisoned = Some(format!("rolling back a failed write: {error}"));
        }
    }

    /// Marks the chunk deleted after its file was removed.
    pub fn mark_deleted(&self, writer: &mut Writer) {
        writer.deleted = true;
    }

    /// Reads `offset .. offset + len`, every block verified.
    pub fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, ChunkError> {
        let records = {
            let meta = self.meta();
            let in_range = offset.checked_add(len).is_some_and(|end| end <= meta.length);
            if !in_range {
                return Err(ChunkError::OutOfRange {
                    chunk: self.id,
                    offset,
                    len,
                    length: meta.length,
                });
            }
            meta.covering(offset, len).to_vec()
        };
        let pieces: Vec<Piece> = records.iter().map(|record| Piece::new(*record, offset, len)).collect();
        if let Some(gap) = pieces.iter().find(|piece| piece.record.is_gap()) {
            return Err(self.corrupt(gap.record.logical.max(offset)));
        }
        let mut ranges = Vec::with_capacity(pieces.len() * 2);
        for piece in &pieces {
            ranges.push(piece.crcs_range());
            ranges.push(piece.data_range());
        }
        let spans = SpanReader::read(&self.file, &ranges).map_err(|error| self.io_error(&error))?;
        let mut out = Vec::with_capacity(len as usize);
        for piece in &pieces {
            let crcs = spans.slice(piece.crcs_range());
            let data = spans.slice(piece.data_range());
            if let Some(bad) = format::first_bad_block(crcs, data) {
                return Err(self.corrupt(piece.block_offset(bad as u64)));
            }
            out.extend_from_slice(piece.wanted(data));
        }
        debug_assert_eq!(out.len() as u64, len);
        Ok(out)
    }

    /// Verifies every block; returns (bytes verified, corrupt block offsets).
    pub fn scrub(&self) -> Result<(u64, Vec<u64>), ChunkError> {
        let records = self.meta().records.clone();
        let mut bytes_verified = 0;
        let mut corrupt = Vec::new();
        for record in &records {
            if record.is_gap() {
                corrupt.extend(
                    (0..format::block_count(record.len)).map(|block| record.logical + block * u64::from(BLOCK_BYTES)),
                );
                continue;
            }
            bytes_verified += record.len;
            self.scrub_record(record, &mut corrupt)?;
        }
        for offset in &corrupt {
            self.note_corrupt(*offset);
        }
        Ok((bytes_verified, corrupt))
    }

    fn scrub_record(&self, record: &RecordLoc, corrupt: &mut Vec<u64>) -> Result<(), ChunkError> {
        let blocks = format::block_count(record.len);
        let mut first_block = 0;
        while first_block < blocks {
            let block_count = SCRUB_BLOCKS_PER_READ.min(blocks - first_block);
            let start = record.logical + first_block * u64::from(BLOCK_BYTES);
            let len = (block_count * u64::from(BLOCK_BYTES)).min(record.end() - start);
            let piece = Piece::new(*record, start, len);
            let ranges = [piece.crcs_range(), piece.data_range()];
            let spans = SpanReader::read(&self.file, &ranges).map_err(|error| self.io_error(&error))?;
            let bad = format::bad_blocks(spans.slice(ranges[0]), spans.slice(ranges[1]));
            corrupt.extend(bad.into_iter().map(|block| piece.block_offset(block as u64)));
            first_block += block_count;
        }
        Ok(())
    }

    fn corrupt(&self, offset: u64) -> ChunkError {
        self.note_corrupt(offset);
        ChunkError::Corrupt { chunk: self.id, offset }
    }

    fn note_corrupt(&self, offset: u64) {
        if lock(&self.corrupt_offsets).insert(offset) {
            tracing::error!(chunk = %self.id, offset, path = %self.path.display(), "corrupt block");
            self.disk.note_corrupt_block();
        }
    }

    fn io_error(&self, error: &io::Error) -> ChunkError {
        self.disk.note_io_error(error);
        sys::chunk_error(error, &format!("reading {}", self.path.display()))
    }
}

impl Meta {
    /// The scalar state, without the index.
    fn clone_state(&self) -> Meta {
        Meta {
            records: Vec::new(),
            ..*self
        }
    }
}

fn check_epoch(chunk: ChunkId, given: Epoch, current: Epoch) -> Result<(), ChunkError> {
    if given < current {
        Err(ChunkError::StaleEpoch { chunk, given, current })
    } else {
        Ok(())
    }
}

/// The part of one record a read needs, in whole blocks.
struct Piece {
    record: RecordLoc,
    /// Wanted bytes, relative to the record's start.
    start: u64,
    end: u64,
    /// Blocks covering them.
    first_block: u64,
    end_block: u64,
}

impl Piece {
    fn new(record: RecordLoc, offset: u64, len: u64) -> Self {
        let start = offset.max(record.logical) - record.logical;
        let end = (offset + len).min(record.end()) - record.logical;
        debug_assert!(start < end, "a piece must hold at least one byte");
        let block_bytes = u64::from(BLOCK_BYTES);
        Piece {
            record,
            start,
            end,
            first_block: start / block_bytes,
            end_block: end.div_ceil(block_bytes),
        }
    }

    fn crcs_range(&self) -> (u64, u64) {
        let base = self.record.crcs_pos();
        (
            base + self.first_block * BLOCK_CRC_BYTES,
            base + self.end_block * BLOCK_CRC_BYTES,
        )
    }

    fn data_range(&self) -> (u64, u64) {
        let block_bytes = u64::from(BLOCK_BYTES);
        let base = self.record.data_pos();
        (
            base + self.first_block * block_bytes,
            base + (self.end_block * block_bytes).min(self.record.len),
        )
    }

    /// Logical offset of the `index`-th block of this piece.
    fn block_offset(&self, index: u64) -> u64 {
        self.record.logical + (self.first_block + index) * u64::from(BLOCK_BYTES)
    }

    /// The wanted bytes out of the piece's whole blocks.
    fn wanted<'a>(&self, blocks: &'a [u8]) -> &'a [u8] {
        let skip = self.first_block * u64::from(BLOCK_BYTES);
        &blocks[(self.start - skip) as usize..(self.end - skip) as usize]
    }
}

/// File ranges read with as few preads as possible: ranges closer than
/// [`READ_MERGE_GAP_BYTES`] share one read.
struct SpanReader {
    /// (file position, bytes), sorted by position.
    spans: Vec<(u64, Vec<u8>)>,
}

impl SpanReader {
    /// `ranges` must be sorted and non-overlapping (as records are in a file).
    ///
    /// A file shorter than its index (truncated under the running server)
    /// reads as zeros past its end, so the block checksums flag exactly the
    /// lost blocks corrupt: lost data, repaired from the stripe, rather than
    /// an I/O error that would mark the whole disk unhealthy.
    fn read(file: &File, ranges: &[(u64, u64)]) -> io::Result<Self> {
        let mut bounds: Vec<(u64, u64)> = Vec::new();
        for &(start, end) in ranges {
            match bounds.last_mut() {
                Some(last) if start <= last.1 + READ_MERGE_GAP_BYTES => last.1 = last.1.max(end),
                _ => bounds.push((start, end)),
            }
        }
        let mut spans = Vec::with_capacity(bounds.len());
        for (start, end) in bounds {
            let mut bytes = vec![0u8; (end - start) as usize];
            sys::pread_to_eof(file, &mut bytes, start)?;
            spans.push((start, bytes));
        }
        Ok(SpanReader { spans })
    }

    fn slice(&self, (start, end): (u64, u64)) -> &[u8] {
        let index = self.spans.partition_point(|(position, _)| *position <= start) - 1;
        let (position, bytes) = &self.spans[index];
        &bytes[(start - position) as usize..(end - position) as usize]
    }
}
