//! The leader's collection of orphan chunks: chunk files of this partition
//! on chunk servers that no chunk group references any more. They are
//! left by a repair that replaced a fragment on a server that was dead at
//! the time (it returns with the old chunk), by a release whose deletes
//! missed a server, and by a repair whose new chunk never made it into the
//! group (a deposed leader, a failed rebuild).
//!
//! A chunk id is the partition in its high 32 bits and a sequence number
//! reserved in Raft before the chunk is created: `OpenGroup` records the
//! group (so its chunks are referenced) before creating them, and a repair
//! reserves its chunk with `ReserveChunks` and references it only when
//! `ReplaceFragment` commits. So a chunk of this partition is deleted only
//! when:
//! - its sequence is below the partition's `next_chunk_seq` as sampled at
//!   least `orphan_grace` ago (nothing created since then is touched, so a
//!   repair of an earlier leader still running is safe for that long);
//! - no group except a released one references it, in state read now;
//! - this leader's repair is not rebuilding into it ([`InFlight`]).
//!
//! Cancellation safe: deleting is idempotent and nothing is recorded.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

use tessera_common::chunk_client::ChunkServerClient;
use tessera_common::ids::ChunkId;
use tessera_common::rpc::CallOptions;

use super::PartitionCtx;
use crate::state::{GroupState, Query, QueryResponse};

/// Deletes per scan at most (the rest wait for the next scan).
const DELETES_PER_SCAN_MAX: usize = 1024;
/// Samples of `next_chunk_seq` kept at most.
const SAMPLES_MAX: usize = 64;

/// Chunks this leader's repair created and has not referenced yet.
#[derive(Default)]
pub struct InFlight {
    chunks: Mutex<BTreeSet<ChunkId>>,
}

impl InFlight {
    /// Marks `chunk` in flight until the guard drops.
    pub fn hold(self: &Arc<Self>, chunk: ChunkId) -> InFlightGuard {
        if let Ok(mut chunks) = self.chunks.lock() {
            chunks.insert(chunk);
        }
        InFlightGuard {
            owner: self.clone(),
            chunk,
        }
    }

    fn contains(&self, chunk: ChunkId) -> bool {
        self.chunks.lock().map(|c| c.contains(&chunk)).unwrap_or(true)
    }
}

pub struct InFlightGuard {
    owner: Arc<InFlight>,
    chunk: ChunkId,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if let Ok(mut chunks) = self.owner.chunks.lock() {
            chunks.remove(&self.chunk);
        }
    }
}

/// The partition's chunk sequence over time, to know which sequences
/// were reserved at least the grace period ago.
#[derive(Default)]
struct Watermark {
    samples: VecDeque<(Instant, u32)>,
}

impl Watermark {
    fn record(&mut self, now: Instant, next_chunk_seq: u32) {
        self.samples.push_back((now, next_chunk_seq));
        while self.samples.len() > SAMPLES_MAX {
            self.samples.pop_front();
        }
    }

    /// The newest sample taken at least `grace` before `now`.
    fn settled(&self, now: Instant, grace: std::time::Duration) -> Option<u32> {
        self.samples
            .iter()
            .rev()
            .find(|(at, _)| now.saturating_duration_since(*at) >= grace)
            .map(|(_, seq)| *seq)
    }
}

/// Runs until aborted (when leadership ends). Cancellation safe.
pub async fn run(ctx: Arc<PartitionCtx>) {
    let mut watermark = Watermark::default();
    loop {
        tokio::time::sleep(ctx.settings.orphan_scan_interval).await;
        match scan(&ctx, &mut watermark).await {
            Ok(0) => {}
            Ok(deleted) => {
                metrics::counter!("os_orphan_chunks_deleted_total").increment(deleted as u64);
                tracing::info!(partition = ctx.partition, deleted, "orphan chunks deleted");
            }
            Err(e) => tracing::debug!(partition = ctx.partition, error = %e, "orphan scan stopped early"),
        }
    }
}

/// One scan; returns how many chunks it deleted.
async fn scan(ctx: &PartitionCtx, watermark: &mut Watermark) -> Result<usize, String> {
    let meta = match ctx.raft.read_local(Query::Meta).await.map_err(|e| e.to_string())? {
        QueryResponse::Meta(meta) => meta,
        other => return Err(format!("unexpected answer {other:?}")),
    };
    let now = Instant::now();
    watermark.record(now, meta.next_chunk_seq);
    let Some(settled_seq) = watermark.settled(now, ctx.settings.orphan_grace) else {
        return Ok(0);
    };
    let referenced = referenced_chunks(ctx).await?;
    let partition_bits = u64::from(ctx.partition) << 32;
    let ours = |chunk: ChunkId| chunk.0 >> 32 == u64::from(ctx.partition);
    let settled = |chunk: ChunkId| chunk.0 < partition_bits | u64::from(settled_seq);
    let mut deleted = 0;
    for server in ctx.cluster.chunk_servers() {
        let client = ChunkServerClient::new(ctx.raft.client().clone(), server.addr, CallOptions::default());
        let chunks = client
            .list()
            .await
            .map_err(|e| format!("listing chunks on {}: {e}", server.node))?;
        for info in chunks {
            let chunk = info.chunk;
            if !ours(chunk) || !settled(chunk) || referenced.contains(&chunk) || ctx.repairs.contains(chunk) {
                continue;
            }
            if deleted == DELETES_PER_SCAN_MAX {
                return Ok(deleted);
            }
            match client.delete(chunk).await {
                Ok(()) => {
                    tracing::info!(partition = ctx.partition, %chunk, node = %server.node, bytes = info.length,
                        "orphan chunk deleted");
                    deleted += 1;
                }
                Err(e) => tracing::debug!(%chunk, node = %server.node, error = %e, "orphan chunk not deleted"),
            }
        }
    }
    Ok(deleted)
}

/// Every chunk a group not yet released points at.
async fn referenced_chunks(ctx: &PartitionCtx) -> Result<BTreeSet<ChunkId>, String> {
    let groups = match ctx.raft.read_local(Query::Groups).await.map_err(|e| e.to_string())? {
        QueryResponse::Groups(groups) => groups,
        other => return Err(format!("unexpected answer {other:?}")),
    };
    Ok(groups
        .iter()
        .filter(|(_, record)| record.state != GroupState::Released)
        .flat_map(|(_, record)| record.placement.fragments.iter().map(|f| f.chunk))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn only_sequences_reserved_a_grace_period_ago_are_settled() {
        let start = Instant::now();
        let mut watermark = Watermark::default();
        let grace = Duration::from_secs(10);
        watermark.record(start, 5);
        assert_eq!(watermark.settled(start + Duration::from_secs(9), grace), None);
        watermark.record(start + Duration::from_secs(9), 8);
        assert_eq!(watermark.settled(start + Duration::from_secs(10), grace), Some(5));
        assert_eq!(watermark.settled(start + Duration::from_secs(19), grace), Some(8));
        for i in 0..(SAMPLES_MAX as u64 * 2) {
            watermark.record(start + Duration::from_secs(20 + i), 9);
        }
        assert!(watermark.samples.len() <= SAMPLES_MAX, "bounded");
    }

    #[test]
    fn in_flight_chunks_are_held_until_the_guard_drops() {
        let in_flight = Arc::new(InFlight::default());
        let guard = in_flight.hold(ChunkId(7));
        assert!(in_flight.contains(ChunkId(7)));
        assert!(!in_flight.contains(ChunkId(8)));
        drop(guard);
        assert!(!in_flight.contains(ChunkId(7)));
    }
}
