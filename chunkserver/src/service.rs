//! The chunk server's RPC service: maps each method of
//! [`tessera_common::chunk_api`] onto a [`ChunkStore`], verifying append
//! payload checksums before anything touches disk and checksumming read
//! payloads for the reader.

use std::sync::Arc;

use bytes::Bytes;
use tessera_common::chunk_api::{self, ChunkError, ChunkInfo, ReadOk};
use tessera_common::rpc::{RequestCtx, Router};

use crate::scrub::CorruptChunks;
use crate::store::ChunkStore;

/// Builds the router serving every chunk method from `store`. Chunks found
/// corrupt by reads are remembered in `corrupt` for the heartbeat.
pub fn router<S: ChunkStore>(store: Arc<S>, corrupt: CorruptChunks) -> Router {
    let append_store = store.clone();
    let read_store = store.clone();
    let create_store = store.clone();
    let fence_store = store.clone();
    let seal_store = store.clone();
    let stat_store = store.clone();
    let delete_store = store.clone();
    let list_store = store.clone();
    let disks_store = store;
    Router::new()
        .add::<chunk_api::Create, _, _>(move |_ctx: RequestCtx, req, _bulk| {
            let store = create_store.clone();
            async move { (store.create(req.chunk, req.epoch).await, Bytes::new()) }
        })
        .add::<chunk_api::Append, _, _>(move |_ctx: RequestCtx, req, bulk| {
            let store = append_store.clone();
            async move { (append(&*store, req, bulk).await, Bytes::new()) }
        })
        .add::<chunk_api::Read, _, _>(move |_ctx: RequestCtx, req, _bulk| {
            let store = read_store.clone();
            let corrupt = corrupt.clone();
            async move { read(&*store, &corrupt, req).await }
        })
        .add::<chunk_api::Fence, _, _>(move |_ctx: RequestCtx, req, _bulk| {
            let store = fence_store.clone();
            async move { (store.fence(req.chunk, req.epoch).await, Bytes::new()) }
        })
        .add::<chunk_api::Seal, _, _>(move |_ctx: RequestCtx, req, _bulk| {
            let store = seal_store.clone();
            async move { (store.seal(req.chunk, req.epoch, req.length).await, Bytes::new()) }
        })
        .add::<chunk_api::Stat, _, _>(move |_ctx: RequestCtx, req, _bulk| {
            let store = stat_store.clone();
            async move { (store.stat(req.chunk).await, Bytes::new()) }
        })
        .add::<chunk_api::Delete, _, _>(move |_ctx: RequestCtx, req, _bulk| {
            let store = delete_store.clone();
            async move { (store.delete(req.chunk).await, Bytes::new()) }
        })
        .add::<chunk_api::List, _, _>(move |_ctx: RequestCtx, _req, _bulk| {
            let store = list_store.clone();
            async move { (store.list().await, Bytes::new()) }
        })
        .add::<chunk_api::Disks, _, _>(move |_ctx: RequestCtx, _req, _bulk| {
            let store = disks_store.clone();
            async move { (store.disks().await, Bytes::new()) }
        })
}

async fn append<S: ChunkStore>(store: &S, req: chunk_api::AppendReq, bulk: Bytes) -> Result<ChunkInfo, ChunkError> {
    if crc32c::crc32c(&bulk) != req.crc32c {
        metrics::counter!("chunk_append_payload_checksum_failures_total").increment(1);
        return Err(ChunkError::PayloadChecksum {
            chunk: req.chunk,
            offset: req.offset,
        });
    }
    let bytes = bulk.len() as u64;
    let result = store.append(req.chunk, req.offset, req.epoch, bulk).await;
    if result.is_ok() {
        metrics::counter!("chunk_append_bytes_total").increment(bytes);
    }
    result
}

async fn read<S: ChunkStore>(
    store: &S,
    corrupt: &CorruptChunks,
    req: chunk_api::ReadReq,
) -> (Result<ReadOk, ChunkError>, Bytes) {
    let data = match store.read(req.chunk, req.offset, req.len).await {
        Ok(data) => data,
        Err(e @ ChunkError::Corrupt { .. }) => {
            corrupt.insert(req.chunk);
            return (Err(e), Bytes::new());
        }
        Err(e) => return (Err(e), Bytes::new()),
    };
    let chunk_length = match store.stat(req.chunk).await {
        Ok(info) => info.length,
        Err(e) => return (Err(e), Bytes::new()),
    };
    metrics::counter!("chunk_read_bytes_total").increment(data.len() as u64);
    let ok = ReadOk {
        chunk_length,
        crc32c: crc32c::crc32c(&data),
    };
    (Ok(ok), data)
}
