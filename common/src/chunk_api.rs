//! Wire API of chunk servers (DESIGN §6): the messages and methods every
//! other role uses to create, append to, read, fence, seal and delete chunks,
//! and the registration/heartbeat messages chunk servers send to name servers.

use rkyv::{Archive, Deserialize, Serialize};

use crate::ids::{ChunkId, Epoch, NodeId};
use crate::rpc::rpc_method;

/// What a chunk server knows of one chunk.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct ChunkInfo {
    pub chunk: ChunkId,
    /// Bytes of data appended (the next expected append offset).
    pub length: u64,
    /// Newest epoch seen for the chunk; appends from older epochs are refused.
    pub epoch: Epoch,
    pub sealed: bool,
}

/// Errors a chunk operation reports to its caller. Callers branch on these.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub enum ChunkError {
    #[error("chunk {0} not found")]
    NotFound(ChunkId),
    #[error("chunk {0} already exists")]
    AlreadyExists(ChunkId),
    #[error("append to {chunk} at offset {expected} but its length is {length}")]
    WrongOffset { chunk: ChunkId, expected: u64, length: u64 },
    /// A retried append whose bytes differ from what is stored at that offset.
    #[error("append to {chunk} at offset {offset} conflicts with the bytes stored there")]
    Conflict { chunk: ChunkId, offset: u64 },
    #[error("epoch {given} of {chunk} is older than {current}")]
    StaleEpoch {
        chunk: ChunkId,
        given: Epoch,
        current: Epoch,
    },
    #[error("chunk {0} is sealed")]
    Sealed(ChunkId),
    #[error("seal of {chunk} at {requested} impossible: {reason}")]
    BadSeal {
        chunk: ChunkId,
        requested: u64,
        reason: String,
    },
    #[error("range {offset}+{len} is outside {chunk} of length {length}")]
    OutOfRange {
        chunk: ChunkId,
        offset: u64,
        len: u64,
        length: u64,
    },
    #[error("checksum mismatch in {chunk} at offset {offset}")]
    Corrupt { chunk: ChunkId, offset: u64 },
    /// The bulk payload did not match the checksum its sender computed.
    #[error("payload for {chunk} at offset {offset} does not match its checksum")]
    PayloadChecksum { chunk: ChunkId, offset: u64 },
    #[error("append of {len} bytes too large (max {max})")]
    TooLarge { len: u64, max: u64 },
    #[error("no space left on any disk")]
    NoSpace,
    #[error("disk I/O failed: {0}")]
    Io(String),
}

/// Health of one data directory.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct DiskStatus {
    pub path: String,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub chunks: u64,
    /// False after an I/O error until restart.
    pub healthy: bool,
    /// Corrupt blocks found by reads and scrub since start.
    pub corrupt_blocks: u64,
}

#[derive(Clone, Debug, Archive, Serialize, Deserialize)]
pub struct CreateReq {
    pub chunk: ChunkId,
    pub epoch: Epoch,
}

/// Bulk payload: the bytes to append.
#[derive(Clone, Debug, Archive, Serialize, Deserialize)]
pub struct AppendReq {
    pub chunk: ChunkId,
    pub offset: u64,
    pub epoch: Epoch,
    /// crc32c of the bulk payload as the sender computed it, so corruption in
    /// transit or in a buggy sender is caught before anything is written.
    pub crc32c: u32,
}

/// Response bulk payload: the bytes, each verified against its block
/// checksum on the chunk server.
#[derive(Clone, Debug, Archive, Serialize, Deserialize)]
pub struct ReadReq {
    pub chunk: ChunkId,
    pub offset: u64,
    pub len: u64,
}

/// Answer to a read; the bytes travel as bulk.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct ReadOk {
    /// The chunk's length when read.
    pub chunk_length: u64,
    /// crc32c of the returned bytes, so the reader verifies them end to end.
    pub crc32c: u32,
}

#[derive(Clone, Debug, Archive, Serialize, Deserialize)]
pub struct SealReq {
    pub chunk: ChunkId,
    pub epoch: Epoch,
    /// Seal at this length, dropping anything appended past it (it was never
    /// acknowledged by every fragment). `None` seals at the current length.
    pub length: Option<u64>,
}

#[derive(Clone, Debug, Archive, Serialize, Deserialize)]
pub struct FenceReq {
    pub chunk: ChunkId,
    pub epoch: Epoch,
}

#[derive(Clone, Debug, Archive, Serialize, Deserialize)]
pub struct ChunkReq {
    pub chunk: ChunkId,
}

#[derive(Clone, Debug, Archive, Serialize, Deserialize)]
pub struct Empty {}

/// Registration and heartbeat of a chunk server to the name servers.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct ChunkServerHeartbeat {
    pub node: NodeId,
    /// Address other nodes reach its RPC on.
    pub rpc_addr: String,
    pub zone: String,
    pub disks: Vec<DiskStatus>,
    /// Chunks in which reads or scrub found corrupt blocks, for repair.
    pub corrupt_chunks: Vec<ChunkId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct HeartbeatAck {
    /// Interval the name server wants between heartbeats.
    pub interval_ms: u64,
}

rpc_method!(Create, "chunk.create", false, CreateReq => Result<ChunkInfo, ChunkError>);
// Appends are idempotent by construction: a retry at the same offset with
// the same bytes succeeds without writing twice.
rpc_method!(Append, "chunk.append", true, AppendReq => Result<ChunkInfo, ChunkError>);
rpc_method!(Read, "chunk.read", true, ReadReq => Result<ReadOk, ChunkError>);
rpc_method!(Seal, "chunk.seal", true, SealReq => Result<ChunkInfo, ChunkError>);
rpc_method!(Fence, "chunk.fence", true, FenceReq => Result<ChunkInfo, ChunkError>);
rpc_method!(Stat, "chunk.stat", true, ChunkReq => Result<ChunkInfo, ChunkError>);
rpc_method!(Delete, "chunk.delete", true, ChunkReq => Result<(), ChunkError>);
rpc_method!(List, "chunk.list", true, Empty => Vec<ChunkInfo>);
rpc_method!(Disks, "chunk.disks", true, Empty => Vec<DiskStatus>);
rpc_method!(Heartbeat, "ns.chunkserver_heartbeat", true, ChunkServerHeartbeat => HeartbeatAck);
