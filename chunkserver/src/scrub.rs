//! Background scrub: a rate-limited pass over every chunk verifying every
//! block checksum written so far (open chunks too: a partition's open group
//! stays open as long as its leader lasts, and a bad block there would
//! otherwise wait for a read to find it). Corrupt chunks are logged,
//! counted, and remembered in [`CorruptChunks`] so heartbeats report them
//! for repair.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tessera_common::clock::Clock;
use tessera_common::ids::ChunkId;
use tokio::sync::watch;

use crate::store::ChunkStore;

/// Chunks known to hold corrupt blocks. Shared, cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct CorruptChunks {
    inner: Arc<Mutex<BTreeSet<ChunkId>>>,
}

impl CorruptChunks {
    pub fn insert(&self, chunk: ChunkId) {
        self.lock().insert(chunk);
    }

    pub fn remove(&self, chunk: ChunkId) {
        self.lock().remove(&chunk);
    }

    pub fn snapshot(&self) -> Vec<ChunkId> {
        self.lock().iter().copied().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<ChunkId>> {
        // A poisoned set is still a valid set of ids.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Clone, Debug)]
pub struct ScrubConfig {
    /// Verification rate ceiling; the pass sleeps to stay under it.
    pub bytes_per_sec: u64,
    /// Pause between two full passes.
    pub pass_interval: Duration,
}

/// One pass over every chunk. Returns the bytes verified.
pub async fn scrub_pass<S: ChunkStore, C: Clock>(
    clock: &C,
    store: &S,
    corrupt: &CorruptChunks,
    bytes_per_sec: u64,
    shutdown: &mut watch::Receiver<bool>,
) -> u64 {
    let mut verified_total = 0;
    let chunks = store.list().await;
    for info in &chunks {
        if *shutdown.borrow() {
            break;
        }
        let verified = scrub_one(store, corrupt, info.chunk).await;
        verified_total += verified;
        let pause = Duration::from_secs_f64(verified as f64 / bytes_per_sec.max(1) as f64);
        tokio::select! {
            _ = clock.sleep(pause) => {}
            _ = shutdown.changed() => break,
        }
    }
    verified_total
}

async fn scrub_one<S: ChunkStore>(store: &S, corrupt: &CorruptChunks, chunk: ChunkId) -> u64 {
    match store.scrub(chunk).await {
        Ok(report) if report.corrupt_offsets.is_empty() => {
            metrics::counter!("chunk_scrub_bytes_total").increment(report.bytes_verified);
            report.bytes_verified
        }
        Ok(report) => {
            metrics::counter!("chunk_scrub_bytes_total").increment(report.bytes_verified);
            metrics::counter!("chunk_scrub_corrupt_chunks_total").increment(1);
            tracing::error!(%chunk, offsets = ?report.corrupt_offsets, "scrub found corrupt blocks");
            corrupt.insert(chunk);
            report.bytes_verified
        }
        Err(e) => {
            // Deleted meanwhile, or unreadable: the latter is worth a report.
            tracing::warn!(%chunk, error = %e, "scrub could not verify chunk");
            0
        }
    }
}

/// Runs scrub passes until `shutdown` flips to true.
pub async fn run_scrub<S: ChunkStore, C: Clock>(
    clock: C,
    store: Arc<S>,
    corrupt: CorruptChunks,
    config: ScrubConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let verified = scrub_pass(&clock, &*store, &corrupt, config.bytes_per_sec, &mut shutdown).await;
        tracing::debug!(bytes = verified, "scrub pass finished");
        tokio::select! {
            _ = clock.sleep(config.pass_interval) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}
