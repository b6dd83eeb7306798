//! Typed client of one chunk server over any [`Transport`]: the calls of
//! [`crate::chunk_api`] with end-to-end checksums (the payload's crc32c is
//! sent with every append and verified on every read).

use std::net::SocketAddr;

use bytes::Bytes;

use crate::chunk_api::{
    self, AppendReq, ChunkError, ChunkInfo, ChunkReq, CreateReq, DiskStatus, Empty, FenceReq, ReadReq, SealReq,
};
use crate::ids::{ChunkId, Epoch};
use crate::rpc::{self, CallOptions, Method, RpcError, Transport};

/// Why a chunk call failed: the chunk server's answer, or the RPC itself.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ChunkCallError {
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    #[error(transparent)]
    Rpc(#[from] RpcError),
    /// The bytes received do not match the checksum the server sent.
    #[error("read of {chunk} at {offset}: bytes damaged in transit")]
    TransitChecksum { chunk: ChunkId, offset: u64 },
}

pub struct ChunkServerClient<T> {
    transport: T,
    peer: SocketAddr,
    options: CallOptions,
}

impl<T: Transport> ChunkServerClient<T> {
    pub fn new(transport: T, peer: SocketAddr, options: CallOptions) -> Self {
        ChunkServerClient {
            transport,
            peer,
            options,
        }
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    async fn call<M: Method>(&self, request: &M::Request, bulk: Bytes) -> Result<(M::Response, Bytes), RpcError> {
        rpc::call::<M, T>(&self.transport, self.peer, request, bulk, &self.options).await
    }

    pub async fn create(&self, chunk: ChunkId, epoch: Epoch) -> Result<ChunkInfo, ChunkCallError> {
        let (response, _) = self
            .call::<chunk_api::Create>(&CreateReq { chunk, epoch }, Bytes::new())
            .await?;
        Ok(response?)
    }

    /// Appends `data` at `offset`; durable on the chunk server when `Ok`.
    pub async fn append(
        &self,
        chunk: ChunkId,
        offset: u64,
        epoch: Epoch,
        data: Bytes,
    ) -> Result<ChunkInfo, ChunkCallError> {
        let request = AppendReq {
            chunk,
            offset,
            epoch,
            crc32c: crc32c::crc32c(&data),
        };
        let (response, _) = self.call::<chunk_api::Append>(&request, data).await?;
        Ok(response?)
    }

    /// Reads `len` bytes at `offset`, verified on the server against block
    /// checksums and here against the transfer checksum.
    pub async fn read(&self, chunk: ChunkId, offset: u64, len: u64) -> Result<Bytes, ChunkCallError> {
        let mut options = self.options.clone();
        options.prefer_bulk_channel = true;
        let request = ReadReq { chunk, offset, len };
        let (response, data) =
            rpc::call::<chunk_api::Read, T>(&self.transport, self.peer, &request, Bytes::new(), &options).await?;
        let ok = response?;
        if ok.crc32c != crc32c::crc32c(&data) || data.len() as u64 != len {
            return Err(ChunkCallError::TransitChecksum { chunk, offset });
        }
        Ok(data)
    }

    pub async fn fence(&self, chunk: ChunkId, epoch: Epoch) -> Result<ChunkInfo, ChunkCallError> {
        let (response, _) = self
            .call::<chunk_api::Fence>(&FenceReq { chunk, epoch }, Bytes::new())
            .await?;
        Ok(response?)
    }

    pub async fn seal(&self, chunk: ChunkId, epoch: Epoch, length: Option<u64>) -> Result<ChunkInfo, ChunkCallError> {
        let request = SealReq { chunk, epoch, length };
        let (response, _) = self.call::<chunk_api::Seal>(&request, Bytes::new()).await?;
        Ok(response?)
    }

    pub async fn stat(&self, chunk: ChunkId) -> Result<ChunkInfo, ChunkCallError> {
        let (response, _) = self.call::<chunk_api::Stat>(&ChunkReq { chunk }, Bytes::new()).await?;
        Ok(response?)
    }

    pub async fn delete(&self, chunk: ChunkId) -> Result<(), ChunkCallError> {
        let (response, _) = self
            .call::<chunk_api::Delete>(&ChunkReq { chunk }, Bytes::new())
            .await?;
        Ok(response?)
    }

    pub async fn list(&self) -> Result<Vec<ChunkInfo>, ChunkCallError> {
        let (response, _) = self.call::<chunk_api::List>(&Empty {}, Bytes::new()).await?;
        Ok(response)
    }

    pub async fn disks(&self) -> Result<Vec<DiskStatus>, ChunkCallError> {
        let (response, _) = self.call::<chunk_api::Disks>(&Empty {}, Bytes::new()).await?;
        Ok(response)
    }
}
