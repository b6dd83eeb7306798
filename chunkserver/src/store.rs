//! The chunk store seam: everything the chunk server's logic needs from its
//! disks. Production implements it with files ([`crate::file_store`]); a
//! simulator can implement it in memory, losing unsynced writes on crash.

use std::future::Future;

use bytes::Bytes;
use tessera_common::chunk_api::{ChunkError, ChunkInfo, DiskStatus};
use tessera_common::ids::{ChunkId, Epoch};

/// Outcome of verifying one chunk end to end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScrubReport {
    pub chunk: ChunkId,
    pub bytes_verified: u64,
    /// Logical offsets of blocks that failed their checksum.
    pub corrupt_offsets: Vec<u64>,
}

/// Contract shared by every implementation:
///
/// - `append` is acknowledged only once its bytes are durable (fdatasync),
///   and an acknowledged append survives a crash.
/// - `append` at `offset == length` appends; at `offset < length` with the
///   same bytes as stored it succeeds without writing (idempotent retry);
///   with different bytes it is `Conflict`; at `offset > length` it is
///   `WrongOffset`. An epoch older than the chunk's newest is `StaleEpoch`.
/// - Every byte `read` returns was verified against its block checksum; a
///   failing block is `Corrupt { chunk, offset }`, never data.
/// - Epoch raises (`create`, `fence`, `seal`) are durable before they return.
///
/// All methods are cancellation safe in the sense that dropping the future
/// never leaves a partially applied operation visible to later calls.
pub trait ChunkStore: Send + Sync + 'static {
    fn create(&self, chunk: ChunkId, epoch: Epoch) -> impl Future<Output = Result<ChunkInfo, ChunkError>> + Send;
    fn append(
        &self,
        chunk: ChunkId,
        offset: u64,
        epoch: Epoch,
        data: Bytes,
    ) -> impl Future<Output = Result<ChunkInfo, ChunkError>> + Send;
    fn read(&self, chunk: ChunkId, offset: u64, len: u64) -> impl Future<Output = Result<Bytes, ChunkError>> + Send;
    /// Raises the chunk's epoch without appending.
    fn fence(&self, chunk: ChunkId, epoch: Epoch) -> impl Future<Output = Result<ChunkInfo, ChunkError>> + Send;
    /// Seals at `length` (or the current length), truncating unacknowledged
    /// bytes past it. Idempotent for the same length.
    fn seal(
        &self,
        chunk: ChunkId,
        epoch: Epoch,
        length: Option<u64>,
    ) -> impl Future<Output = Result<ChunkInfo, ChunkError>> + Send;
    fn stat(&self, chunk: ChunkId) -> impl Future<Output = Result<ChunkInfo, ChunkError>> + Send;
    fn delete(&self, chunk: ChunkId) -> impl Future<Output = Result<(), ChunkError>> + Send;
    fn list(&self) -> impl Future<Output = Vec<ChunkInfo>> + Send;
    fn disks(&self) -> impl Future<Output = Vec<DiskStatus>> + Send;
    /// Verifies every block of one chunk.
    fn scrub(&self, chunk: ChunkId) -> impl Future<Output = Result<ScrubReport, ChunkError>> + Send;
}
