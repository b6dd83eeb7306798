//! Open-time recovery of one disk: removes leftover temp files, moves files
//! with a bad header aside to `<disk>/quarantine/`, and rebuilds each chunk's
//! index by walking its record headers (data is not read, except the last
//! data record of an unsealed chunk, the only one a crash can tear).
//!
//! - Unsealed chunk: the tail from the first invalid record on (incomplete,
//!   bad magic or crc, out of sequence) was never acknowledged and is cut
//!   off, as is a last data record failing its checksums.
//! - Sealed chunk (a valid Seal record): never cut before its Seal record.
//!   A damaged record in the middle is found by looking past it for the rest
//!   of the record chain; the damaged range stays in the index as a gap that
//!   every read and scrub reports corrupt.
//!
//! Hostile files yield errors or quarantine, never panics.

use std::fs::File;
use std::io;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use tessera_common::ids::{ChunkId, Epoch};

use super::chunk::{Meta, RecordLoc};
use super::disk::{Disk, CHUNK_SUFFIX, TEMP_SUFFIX};
use super::format::{self, FileHeader, RecordHeader, RecordKind, BLOCK_BYTES, FILE_HEADER_BYTES, RECORD_HEADER_BYTES};
use super::sys;

/// Candidate record chains tried past a damaged record before giving up and
/// quarantining the file.
const RESYNC_ATTEMPTS_MAX: u32 = 1_000;
const SCAN_WINDOW_BYTES: u64 = 1024 * 1024;

/// A chunk file ready to serve.
pub struct Recovered {
    pub chunk: ChunkId,
    pub file: File,
    pub meta: Meta,
    /// Where the next record goes (the file length after recovery).
    pub file_end: u64,
}

enum Failure {
    /// The file cannot be a chunk of ours: move it aside.
    Quarantine(String),
    Io(io::Error),
}

impl From<io::Error> for Failure {
    fn from(error: io::Error) -> Self {
        Failure::Io(error)
    }
}

/// Recovers every chunk file of `disk`, sorted by chunk id.
pub fn scan_disk(disk: &Disk) -> anyhow::Result<Vec<Recovered>> {
    let mut recovered = Vec::new();
    let mut dir_changed = false;
    let entries = std::fs::read_dir(&disk.chunks_dir)?;
    for entry in entries {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|name| name.to_str()).map(str::to_owned) else {
            tracing::warn!(path = %path.display(), "ignoring a file with a non-UTF-8 name");
            continue;
        };
        if name.ends_with(TEMP_SUFFIX) {
            tracing::info!(path = %path.display(), "removing a leftover temp file of an interrupted create");
            std::fs::remove_file(&path)?;
            dir_changed = true;
        } else if name.ends_with(CHUNK_SUFFIX) {
            dir_changed |= recover_named(disk, &path, &name, &mut recovered);
        } else {
            tracing::warn!(path = %path.display(), "ignoring an unknown file in the chunk directory");
        }
    }
    if dir_changed {
        sys::fsync_dir(&disk.chunks_dir)?;
    }
    recovered.sort_by_key(|chunk| chunk.chunk);
    Ok(recovered)
}

/// Recovers or quarantines one `.chunk` file; true if it was moved.
fn recover_named(disk: &Disk, path: &Path, name: &str, recovered: &mut Vec<Recovered>) -> bool {
    let outcome = match parse_chunk_name(name) {
        Some(chunk) => recover_chunk(path, chunk),
        None => Err(Failure::Quarantine(
            "file name is not <16 lowercase hex digits>.chunk".into(),
        )),
    };
    match outcome {
        Ok(chunk) => {
            recovered.push(chunk);
            false
        }
        Err(Failure::Quarantine(reason)) => quarantine(disk, path, &reason),
        Err(Failure::Io(error)) => {
            tracing::error!(path = %path.display(), %error, "cannot read a chunk file; not serving it");
            disk.note_io_error(&error);
            false
        }
    }
}

fn parse_chunk_name(name: &str) -> Option<ChunkId> {
    let hex = name.strip_suffix(CHUNK_SUFFIX)?;
    let lower_hex = hex.len() == 16 && hex.bytes().all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'));
    lower_hex
        .then(|| u64::from_str_radix(hex, 16).ok().map(ChunkId))
        .flatten()
}

/// Moves a file aside, never deleting it; true if it was moved.
pub fn quarantine(disk: &Disk, path: &Path, reason: &str) -> bool {
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let unix_secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0);
    let mut target = disk.quarantine_dir.join(format!("{name}.{unix_secs}"));
    let mut attempt = 0;
    while target.exists() {
        attempt += 1;
        target = disk.quarantine_dir.join(format!("{name}.{unix_secs}.{attempt}"));
    }
    let moved = std::fs::rename(path, &target).and_then(|()| sys::fsync_dir(&disk.quarantine_dir));
    match moved {
        Ok(()) => {
            tracing::error!(path = %path.display(), to = %target.display(), reason, "quarantined a chunk file");
            metrics::counter!("chunk_quarantined_files_total").increment(1);
            true
        }
        Err(error) => {
            tracing::error!(path = %path.display(), reason, %error, "cannot quarantine a bad chunk file; not serving it");
            false
        }
    }
}

fn recover_chunk(path: &Path, chunk: ChunkId) -> Result<Recovered, Failure> {
    let file = File::options().read(true).write(true).open(path)?;
    let mut file_len = file.metadata()?.len();
    let header = read_file_header(&file, file_len)?;
    if header.chunk != chunk {
        return Err(Failure::Quarantine(format!("header names chunk {}", header.chunk)));
    }
    loop {
        let mut walk = Walk::new(header.epoch, Some(0));
        if let Stop::Invalid { pos, why } = walk.run(&file, FILE_HEADER_BYTES, file_len)? {
            if walk.sealed_at.is_none() {
                if let Some(recovered) = resync_sealed(&file, chunk, &walk, pos, file_len)? {
                    return Ok(recovered);
                }
            }
            truncate(&file, chunk, pos, file_len, &why)?;
            file_len = pos;
        }
        if walk.sealed_at.is_none() {
            if let Some(last) = walk.last_data {
                if !verify_data_record(&file, &last)? {
                    truncate(
                        &file,
                        chunk,
                        last.loc.file_pos,
                        file_len,
                        "last data record fails its checksums",
                    )?;
                    file_len = last.loc.file_pos;
                    continue;
                }
            }
        }
        let meta = walk.into_meta()?;
        return Ok(Recovered {
            chunk,
            file,
            meta,
            file_end: file_len,
        });
    }
}

fn read_file_header(file: &File, file_len: u64) -> Result<FileHeader, Failure> {
    if file_len < FILE_HEADER_BYTES {
        return Err(Failure::Quarantine(format!(
            "{file_len} bytes, shorter than the file header"
        )));
    }
    let mut bytes = vec![0u8; FILE_HEADER_BYTES as usize];
    sys::pread_exact(file, &mut bytes, 0)?;
    FileHeader::decode(&bytes).map_err(|error| Failure::Quarantine(format!("bad file header: {error}")))
}

fn truncate(file: &File, chunk: ChunkId, pos: u64, file_len: u64, why: &str) -> io::Result<()> {
    debug_assert!(pos < file_len, "truncation must shrink the file");
    file.set_len(pos)?;
    file.sync_all()?;
    let truncated_bytes = file_len - pos;
    tracing::warn!(%chunk, truncated_bytes, at = pos, reason = why, "truncated the torn tail of a chunk");
    metrics::counter!("chunk_recovery_truncated_bytes_total").increment(truncated_bytes);
    Ok(())
}

/// The last data record seen, with what its crc array must hash to.
#[derive(Clone, Copy)]
struct LastData {
    loc: RecordLoc,
    crcs_crc: u32,
}

enum Stop {
    /// Every byte of the file belongs to a valid record.
    Eof,
    /// The record at `pos` is not valid.
    Invalid { pos: u64, why: String },
}

/// State of a walk over record headers.
struct Walk {
    records: Vec<RecordLoc>,
    /// Logical offset the next data record must have (`None`: any, for a
    /// chain found past a damaged record).
    next_offset: Option<u64>,
    epoch: Epoch,
    sealed_at: Option<u64>,
    last_data: Option<LastData>,
    /// File position after the last valid record.
    end_pos: u64,
}

impl Walk {
    fn new(epoch: Epoch, next_offset: Option<u64>) -> Self {
        Walk {
            records: Vec::new(),
            next_offset,
            epoch,
            sealed_at: None,
            last_data: None,
            end_pos: 0,
        }
    }

    /// Accepts valid records from `start` until the end of the file or the
    /// first invalid record.
    fn run(&mut self, file: &File, start: u64, file_len: u64) -> io::Result<Stop> {
        let mut pos = start;
        self.end_pos = start;
        let mut bytes = [0u8; RECORD_HEADER_BYTES as usize];
        while pos < file_len {
            if file_len - pos < RECORD_HEADER_BYTES {
                return Ok(Stop::Invalid {
                    pos,
                    why: "incomplete record header".into(),
                });
            }
            sys::pread_exact(file, &mut bytes, pos)?;
            let accepted = RecordHeader::decode(&bytes)
                .map_err(|error| error.to_string())
                .and_then(|header| self.accept(&header, pos, file_len).map(|()| header));
            match accepted {
                Ok(header) => pos += header.record_bytes(),
                Err(why) => return Ok(Stop::Invalid { pos, why }),
            }
            self.end_pos = pos;
        }
        Ok(Stop::Eof)
    }

    /// Adds one decoded record at `pos`, or says why it does not fit.
    fn accept(&mut self, header: &RecordHeader, pos: u64, file_len: u64) -> Result<(), String> {
        match header.kind {
            RecordKind::Data => self.accept_data(header, pos, file_len)?,
            RecordKind::Fence => {}
            RecordKind::Seal => match self.sealed_at {
                Some(sealed_at) if sealed_at != header.offset => {
                    return Err(format!("seal at {} after a seal at {sealed_at}", header.offset));
                }
                _ => self.sealed_at = Some(header.offset),
            },
        }
        self.epoch = self.epoch.max(header.epoch);
        Ok(())
    }

    fn accept_data(&mut self, header: &RecordHeader, pos: u64, file_len: u64) -> Result<(), String> {
        if self.sealed_at.is_some() {
            return Err("data record after the seal".into());
        }
        if let Some(expected) = self.next_offset {
            if header.offset != expected {
                return Err(format!(
                    "data record at logical offset {} where {expected} was expected",
                    header.offset
                ));
            }
        }
        if header.len == 0 {
            return Err("empty data record".into());
        }
        let len = u64::from(header.len);
        let end = header
            .offset
            .checked_add(len)
            .ok_or("data record past the largest offset")?;
        if header.record_bytes() > file_len - pos {
            return Err("incomplete data record".into());
        }
        let loc = RecordLoc {
            logical: header.offset,
            file_pos: pos,
            len,
        };
        self.records.push(loc);
        self.next_offset = Some(end);
        self.last_data = Some(LastData {
            loc,
            crcs_crc: header.crcs_crc,
        });
        Ok(())
    }

    /// The chunk's state after a complete walk from the first record.
    fn into_meta(self) -> Result<Meta, Failure> {
        let length = self.next_offset.unwrap_or(0);
        let mut meta = Meta {
            records: self.records,
            length,
            epoch: self.epoch,
            sealed: false,
        };
        if let Some(sealed_at) = self.sealed_at {
            if sealed_at > meta.length || !meta.is_boundary(sealed_at) {
                return Err(Failure::Quarantine(format!(
                    "sealed at {sealed_at}, not an append boundary"
                )));
            }
            meta.truncate_to(sealed_at);
            meta.sealed = true;
        }
        Ok(meta)
    }
}

/// Whether a data record's crc array and every block match.
fn verify_data_record(file: &File, last: &LastData) -> io::Result<bool> {
    let loc = last.loc;
    let blocks = format::block_count(loc.len);
    let mut crcs = vec![0u8; (blocks * format::BLOCK_CRC_BYTES) as usize];
    sys::pread_exact(file, &mut crcs, loc.file_pos + RECORD_HEADER_BYTES)?;
    if crc32c::crc32c(&crcs) != last.crcs_crc {
        return Ok(false);
    }
    let data_pos = loc.file_pos + RECORD_HEADER_BYTES + crcs.len() as u64;
    let block_bytes = u64::from(BLOCK_BYTES);
    let blocks_per_read = SCAN_WINDOW_BYTES / block_bytes;
    let mut data = Vec::new();
    for (index, crc_group) in crcs.chunks(blocks_per_read as usize * 4).enumerate() {
        let start = index as u64 * blocks_per_read * block_bytes;
        let len = (blocks_per_read * block_bytes).min(loc.len - start);
        data.resize(len as usize, 0);
        sys::pread_exact(file, &mut data, data_pos + start)?;
        if format::first_bad_block(crc_group, &data).is_some() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Looks past a damaged record at `bad_pos` for a record chain that ends in
/// a Seal record. If there is one the chunk was sealed: the result keeps
/// everything, the damaged range as a gap. `None`: an unsealed torn tail.
fn resync_sealed(
    file: &File,
    chunk: ChunkId,
    prefix: &Walk,
    bad_pos: u64,
    file_len: u64,
) -> Result<Option<Recovered>, Failure> {
    let mut attempts = 0u32;
    let mut window_start = bad_pos + 1;
    let mut window = Vec::new();
    let mut header_bytes = [0u8; RECORD_HEADER_BYTES as usize];
    while window_start < file_len {
        let window_end = (window_start + SCAN_WINDOW_BYTES + 3).min(file_len);
        window.resize((window_end - window_start) as usize, 0);
        sys::pread_exact(file, &mut window, window_start)?;
        for (index, candidate) in window.windows(4).enumerate() {
            if candidate != format::RECORD_MAGIC.to_le_bytes() {
                continue;
            }
            let pos = window_start + index as u64;
            if file_len - pos < RECORD_HEADER_BYTES {
                break;
            }
            sys::pread_exact(file, &mut header_bytes, pos)?;
            if RecordHeader::decode(&header_bytes).is_err() {
                continue;
            }
            attempts += 1;
            if attempts > RESYNC_ATTEMPTS_MAX {
                return Err(Failure::Quarantine(format!(
                    "damaged record at {bad_pos}, no record chain found past it"
                )));
            }
            if let Some(recovered) = try_chain(file, chunk, prefix, bad_pos, pos, file_len)? {
                return Ok(Some(recovered));
            }
        }
        window_start += SCAN_WINDOW_BYTES;
    }
    Ok(None)
}

/// The chunk, if the chain of records from `pos` ends sealed and fits after
/// the valid prefix.
fn try_chain(
    file: &File,
    chunk: ChunkId,
    prefix: &Walk,
    bad_pos: u64,
    pos: u64,
    file_len: u64,
) -> Result<Option<Recovered>, Failure> {
    let mut chain = Walk::new(prefix.epoch, None);
    let stop = chain.run(file, pos, file_len)?;
    let Some(meta) = merge_chain(prefix, &chain, pos - bad_pos) else {
        return Ok(None);
    };
    if let Stop::Invalid { pos: garbage_pos, why } = stop {
        truncate(file, chunk, garbage_pos, file_len, &format!("after the seal: {why}"))?;
    }
    let damaged_bytes = pos - bad_pos;
    tracing::error!(%chunk, at = bad_pos, damaged_bytes, "sealed chunk has a damaged record; its range reads as corrupt");
    Ok(Some(Recovered {
        chunk,
        file: file.try_clone()?,
        meta,
        file_end: chain.end_pos,
    }))
}

/// Prefix + gap + chain, if consistent: the chain is sealed, its data (if
/// any) starts at or after the prefix's end, and the gap is no longer than
/// the damaged bytes.
fn merge_chain(prefix: &Walk, chain: &Walk, damaged_bytes: u64) -> Option<Meta> {
    let sealed_at = chain.sealed_at?;
    let prefix_end = prefix.next_offset.unwrap_or(0);
    let chain_start = chain
        .records
        .first()
        .map_or(sealed_at.max(prefix_end), |record| record.logical);
    let gap_len = chain_start.checked_sub(prefix_end)?;
    if gap_len > damaged_bytes {
        return None;
    }
    let mut records = prefix.records.clone();
    if gap_len > 0 {
        records.push(RecordLoc {
            logical: prefix_end,
            file_pos: RecordLoc::GAP,
            len: gap_len,
        });
    }
    records.extend_from_slice(&chain.records);
    let length = chain.next_offset.unwrap_or(chain_start);
    let mut meta = Meta {
        records,
        length,
        epoch: prefix.epoch.max(chain.epoch),
        sealed: false,
    };
    if sealed_at > meta.length || !meta.is_boundary(sealed_at) {
        return None;
    }
    meta.truncate_to(sealed_at);
    meta.sealed = true;
    Some(meta)
}
