//! On-disk format of a chunk file, version 1: pure encoding and decoding, no
//! I/O. Every decoder takes untrusted bytes and returns an error, never
//! panics.
//!
//! ```text
//! file   = file header (FILE_HEADER_BYTES) , record*
//! header = magic "TSRCHUNK" | version u16 | 0 u16 | block_bytes u32
//!          | chunk id u64 | creation epoch u64 | crc32c(previous 32 bytes) u32
//!          | zero padding to FILE_HEADER_BYTES
//! record = record header (RECORD_HEADER_BYTES) , body
//! record header = magic u32 | kind u16 | 0 u16 | offset u64 | len u32
//!          | crcs_crc u32 | epoch u64 | crc32c(previous 32 bytes) u32 | 0 u32
//! ```
//!
//! - `Data`: `offset` is the logical offset of its bytes in the chunk, `len`
//!   their count; the body is one crc32c per block of `len` (the last block
//!   may be short), little-endian, then the `len` data bytes. `crcs_crc` is
//!   the crc32c of that crc array.
//! - `Fence`: raises the chunk's epoch; `offset` is the chunk length at the
//!   time (informational); no body.
//! - `Seal`: the chunk is sealed at logical length `offset`; no body. Data
//!   records past that length are dead (sealing never rewrites the file, so
//!   an epoch raised by a fence past the seal point cannot be lost).
//!
//! All integers are little-endian. Blocks are counted from the start of each
//! data record, so the block holding logical offset `x` of a record starting
//! at `o` covers `o + 4096 * floor((x - o) / 4096) ..`.

use tessera_common::ids::{ChunkId, Epoch};

/// Size of the file header; records start right after it.
pub const FILE_HEADER_BYTES: u64 = 4096;
pub const FILE_MAGIC: [u8; 8] = *b"TSRCHUNK";
pub const FORMAT_VERSION: u16 = 1;
/// Checksum granularity of data records.
pub const BLOCK_BYTES: u32 = 4096;
/// "TREC" read as a little-endian u32.
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"TREC");
pub const RECORD_HEADER_BYTES: u64 = 40;
/// Bytes of one block checksum in a data record's crc array.
pub const BLOCK_CRC_BYTES: u64 = 4;

const FILE_HEADER_CRC_AT: usize = 32;
const RECORD_HEADER_CRC_AT: usize = 32;

/// The fixed header at the start of every chunk file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileHeader {
    pub chunk: ChunkId,
    pub epoch: Epoch,
    pub block_bytes: u32,
}

/// Why a file header was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("file shorter than its {FILE_HEADER_BYTES}-byte header")]
    Short,
    #[error("bad magic")]
    BadMagic,
    #[error("header checksum mismatch")]
    BadCrc,
    #[error("unsupported format version {0}")]
    Version(u16),
    #[error("unsupported block size {0}")]
    BlockSize(u32),
}

impl FileHeader {
    pub fn new(chunk: ChunkId, epoch: Epoch) -> Self {
        FileHeader {
            chunk,
            epoch,
            block_bytes: BLOCK_BYTES,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = vec![0u8; FILE_HEADER_BYTES as usize];
        bytes[0..8].copy_from_slice(&FILE_MAGIC);
        bytes[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes[12..16].copy_from_slice(&self.block_bytes.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.chunk.0.to_le_bytes());
        bytes[24..32].copy_from_slice(&self.epoch.0.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[..FILE_HEADER_CRC_AT]);
        bytes[FILE_HEADER_CRC_AT..FILE_HEADER_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// Decodes the first [`FILE_HEADER_BYTES`] of a chunk file.
    pub fn decode(bytes: &[u8]) -> Result<Self, HeaderError> {
        if bytes.len() < FILE_HEADER_BYTES as usize {
            return Err(HeaderError::Short);
        }
        if bytes[0..8] != FILE_MAGIC {
            return Err(HeaderError::BadMagic);
        }
        if crc32c::crc32c(&bytes[..FILE_HEADER_CRC_AT]) != le_u32(bytes, FILE_HEADER_CRC_AT) {
            return Err(HeaderError::BadCrc);
        }
        let version = le_u16(bytes, 8);
        if version != FORMAT_VERSION {
            return Err(HeaderError::Version(version));
        }
        let block_bytes = le_u32(bytes, 12);
        if block_bytes != BLOCK_BYTES {
            return Err(HeaderError::BlockSize(block_bytes));
        }
        Ok(FileHeader {
            chunk: ChunkId(le_u64(bytes, 16)),
            epoch: Epoch(le_u64(bytes, 24)),
            block_bytes,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    Data = 1,
    Fence = 2,
    Seal = 3,
}

/// A decoded record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: RecordKind,
    /// Data: logical offset of the bytes; Seal: sealed length; Fence: length.
    pub offset: u64,
    /// Data bytes in the body (0 for Fence and Seal).
    pub len: u32,
    /// crc32c of the block-crc array (0 for Fence and Seal).
    pub crcs_crc: u32,
    pub epoch: Epoch,
}

/// Why a record header was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("incomplete record header")]
    Short,
    #[error("bad record magic")]
    BadMagic,
    #[error("record header checksum mismatch")]
    BadCrc,
    #[error("unknown record kind {0}")]
    Kind(u16),
    #[error("{0:?} record with a body")]
    UnexpectedBody(RecordKind),
}

impl RecordHeader {
    pub fn data(offset: u64, len: u32, epoch: Epoch, crcs_crc: u32) -> Self {
        RecordHeader {
            kind: RecordKind::Data,
            offset,
            len,
            crcs_crc,
            epoch,
        }
    }

    pub fn fence(length: u64, epoch: Epoch) -> Self {
        RecordHeader {
            kind: RecordKind::Fence,
            offset: length,
            len: 0,
            crcs_crc: 0,
            epoch,
        }
    }

    pub fn seal(length: u64, epoch: Epoch) -> Self {
        RecordHeader {
            kind: RecordKind::Seal,
            offset: length,
            len: 0,
            crcs_crc: 0,
            epoch,
        }
    }

    /// Bytes of the block-crc array that follows a data record's header.
    pub fn crcs_bytes(&self) -> u64 {
        block_count(u64::from(self.len)) * BLOCK_CRC_BYTES
    }

    /// Header plus body.
    pub fn record_bytes(&self) -> u64 {
        RECORD_HEADER_BYTES + self.crcs_bytes() + u64::from(self.len)
    }

    pub fn encode(&self) -> [u8; RECORD_HEADER_BYTES as usize] {
        let mut bytes = [0u8; RECORD_HEADER_BYTES as usize];
        bytes[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
        bytes[4..6].copy_from_slice(&(self.kind as u16).to_le_bytes());
        bytes[8..16].copy_from_slice(&self.offset.to_le_bytes());
        bytes[16..20].copy_from_slice(&self.len.to_le_bytes());
        bytes[20..24].copy_from_slice(&self.crcs_crc.to_le_bytes());
        bytes[24..32].copy_from_slice(&self.epoch.0.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[..RECORD_HEADER_CRC_AT]);
        bytes[RECORD_HEADER_CRC_AT..RECORD_HEADER_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        if bytes.len() < RECORD_HEADER_BYTES as usize {
            return Err(RecordError::Short);
        }
        if le_u32(bytes, 0) != RECORD_MAGIC {
            return Err(RecordError::BadMagic);
        }
        if crc32c::crc32c(&bytes[..RECORD_HEADER_CRC_AT]) != le_u32(bytes, RECORD_HEADER_CRC_AT) {
            return Err(RecordError::BadCrc);
        }
        let kind = match le_u16(bytes, 4) {
            1 => RecordKind::Data,
            2 => RecordKind::Fence,
            3 => RecordKind::Seal,
            other => return Err(RecordError::Kind(other)),
        };
        let header = RecordHeader {
            kind,
            offset: le_u64(bytes, 8),
            len: le_u32(bytes, 16),
            crcs_crc: le_u32(bytes, 20),
            epoch: Epoch(le_u64(bytes, 24)),
        };
        if kind != RecordKind::Data && header.len != 0 {
            return Err(RecordError::UnexpectedBody(kind));
        }
        Ok(header)
    }
}

/// Number of checksum blocks covering `len` bytes.
pub fn block_count(len: u64) -> u64 {
    len.div_ceil(u64::from(BLOCK_BYTES))
}

/// One crc32c per block of `data`, as the little-endian array stored after a
/// data record's header.
pub fn block_crcs(data: &[u8]) -> Vec<u8> {
    let mut crcs = Vec::with_capacity(block_count(data.len() as u64) as usize * BLOCK_CRC_BYTES as usize);
    for block in data.chunks(BLOCK_BYTES as usize) {
        crcs.extend_from_slice(&crc32c::crc32c(block).to_le_bytes());
    }
    crcs
}

/// The header and crc array of a data record holding `data` at `offset`.
/// The record on disk is `header ++ crcs ++ data`.
pub fn encode_data_record(offset: u64, epoch: Epoch, data: &[u8]) -> ([u8; RECORD_HEADER_BYTES as usize], Vec<u8>) {
    let len = u32::try_from(data.len()).expect("data record larger than u32::MAX bytes");
    let crcs = block_crcs(data);
    let header = RecordHeader::data(offset, len, epoch, crc32c::crc32c(&crcs));
    (header.encode(), crcs)
}

/// Index of the first block that fails its checksum, if any. `crcs` holds
/// the stored checksums of exactly the blocks of `data`.
pub fn first_bad_block(crcs: &[u8], data: &[u8]) -> Option<usize> {
    debug_assert_eq!(crcs.len() as u64, block_count(data.len() as u64) * BLOCK_CRC_BYTES);
    data.chunks(BLOCK_BYTES as usize)
        .zip(crcs.chunks_exact(BLOCK_CRC_BYTES as usize))
        .position(|(block, stored)| crc32c::crc32c(block).to_le_bytes() != stored)
}

/// Every block index that fails its checksum.
pub fn bad_blocks(crcs: &[u8], data: &[u8]) -> Vec<usize> {
    debug_assert_eq!(crcs.len() as u64, block_count(data.len() as u64) * BLOCK_CRC_BYTES);
    data.chunks(BLOCK_BYTES as usize)
        .zip(crcs.chunks_exact(BLOCK_CRC_BYTES as usize))
        .enumerate()
        .filter(|(_, (block, stored))| crc32c::crc32c(block).to_le_bytes() != *stored)
        .map(|(index, _)| index)
        .collect()
}

fn le_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_header_round_trips_and_detects_damage() {
        let header = FileHeader::new(ChunkId(0xabc), Epoch(7));
        let mut bytes = header.encode();
        assert_eq!(FileHeader::decode(&bytes), Ok(header));
        bytes[20] ^= 1;
        assert_eq!(FileHeader::decode(&bytes), Err(HeaderError::BadCrc));
        assert_eq!(FileHeader::decode(&bytes[..100]), Err(HeaderError::Short));
        assert_eq!(FileHeader::decode(&[0u8; 4096]), Err(HeaderError::BadMagic));
    }

    #[test]
    fn record_header_round_trips_and_detects_damage() {
        let (bytes, crcs) = encode_data_record(8192, Epoch(3), &[5u8; 5000]);
        assert_eq!(crcs.len(), 8);
        let header = RecordHeader::decode(&bytes).expect("valid");
        assert_eq!(header.kind, RecordKind::Data);
        assert_eq!((header.offset, header.len, header.epoch), (8192, 5000, Epoch(3)));
        assert_eq!(header.crcs_crc, crc32c::crc32c(&crcs));
        assert_eq!(header.record_bytes(), 40 + 8 + 5000);
        for bit in 0..(RECORD_HEADER_CRC_AT * 8) {
            let mut damaged = bytes;
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(RecordHeader::decode(&damaged).is_err(), "bit {bit}");
        }
        assert_eq!(RecordHeader::decode(&bytes[..39]), Err(RecordError::Short));
    }

    #[test]
    fn block_checks_find_the_bad_block() {
        let mut data = vec![1u8; 3 * 4096 + 10];
        let crcs = block_crcs(&data);
        assert_eq!(first_bad_block(&crcs, &data), None);
        data[2 * 4096 + 3] ^= 0x10;
        data[3 * 4096 + 9] ^= 0x10;
        assert_eq!(first_bad_block(&crcs, &data), Some(2));
        assert_eq!(bad_blocks(&crcs, &data), vec![2, 3]);
    }
}
