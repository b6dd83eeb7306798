//! Group commit: makes written bytes durable in shared sync passes.
//!
//! A [`GroupSync`] covers one sync unit: one chunk file (one `fdatasync` per
//! pass) or one disk (one `syncfs` per pass); [`SyncMode`] picks the unit of
//! each write. A writer calls [`GroupSync::note_write`] after its `pwrite`
//! returned and gets a [`Ticket`]; [`Ticket::wait`] returns once a pass that
//! *started* after that ticket was issued has finished, so one pass covers every write before it and
//! every writer waiting meanwhile shares the next pass. At most one pass per
//! unit runs at a time; passes of different units run concurrently on the
//! blocking pool (ext4 merges concurrent `fdatasync` journal commits), bounded
//! per disk by a [`SyncLimiter`].
//!
//! A failed pass is permanent until restart: after a failed fsync the page
//! cache no longer says what is on disk, so every later wait on the unit
//! fails, and the whole disk refuses writes ([`DiskHealth`]): a later sync
//! through another unit must not acknowledge appends after lost ones.

use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tessera_common::chunk_api::ChunkError;
use tokio::sync::Notify;

use super::sys;

/// How appends are made durable (measured in `benches/append.rs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// One `fdatasync` per chunk file per pass; passes of different chunks
    /// run concurrently. Isolated from other files on the filesystem.
    #[default]
    Fdatasync,
    /// One `syncfs` per disk per pass, covering every chunk of the disk (and
    /// anything else dirty on that filesystem: only for dedicated disks).
    Syncfs,
}

/// What one pass flushes.
pub enum SyncTarget {
    /// `fdatasync` of one chunk file.
    File(Arc<File>),
    /// `syncfs` of the filesystem holding this (directory) file.
    Filesystem(File),
}

impl SyncTarget {
    fn sync(&self) -> std::io::Result<()> {
        match self {
            SyncTarget::File(file) => file.sync_data(),
            SyncTarget::Filesystem(dir) => sys::syncfs(dir),
        }
    }

    fn mode_label(&self) -> &'static str {
        match self {
            SyncTarget::File(_) => "fdatasync",
            SyncTarget::Filesystem(_) => "syncfs",
        }
    }
}

/// Health of one disk, shared with its sync units.
#[derive(Debug, Default)]
pub struct DiskHealth {
    io_failed: AtomicBool,
    sync_failed: AtomicBool,
}

impl DiskHealth {
    /// An I/O error: the disk reports unhealthy until restart.
    pub fn note_io_error(&self) {
        self.io_failed.store(true, Ordering::Relaxed);
    }

    /// A failed sync: unhealthy, and every write refused until restart.
    pub fn note_sync_failed(&self) {
        self.io_failed.store(true, Ordering::Relaxed);
        self.sync_failed.store(true, Ordering::Relaxed);
    }

    pub fn is_healthy(&self) -> bool {
        !self.io_failed.load(Ordering::Relaxed)
    }

    pub fn sync_failed(&self) -> bool {
        self.sync_failed.load(Ordering::Relaxed)
    }
}

/// Bounds the sync calls in flight on one disk.
pub struct SyncLimiter {
    in_flight: Mutex<usize>,
    freed: Condvar,
    max_in_flight: usize,
}

impl SyncLimiter {
    pub fn new(max_in_flight: usize) -> Self {
        assert!(max_in_flight > 0, "a sync limiter needs at least one slot");
        SyncLimiter {
            in_flight: Mutex::new(0),
            freed: Condvar::new(),
            max_in_flight,
        }
    }

    /// Blocks until a slot is free; the slot is released on drop.
    fn acquire(&self) -> SyncSlot<'_> {
        let mut in_flight = lock(&self.in_flight);
        while *in_flight >= self.max_in_flight {
            in_flight = self
                .freed
                .wait(in_flight)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        *in_flight += 1;
        SyncSlot { limiter: self }
    }
}

struct SyncSlot<'a> {
    limiter: &'a SyncLimiter,
}

impl Drop for SyncSlot<'_> {
    fn drop(&mut self) {
        *lock(&self.limiter.in_flight) -= 1;
        self.limiter.freed.notify_one();
    }
}

#[derive(Default)]
struct SyncState {
    /// Tickets issued: writes noted so far.
    written: u64,
    /// Every ticket up to this one is durable.
    synced: u64,
    /// A pass is running (on the blocking pool).
    running: bool,
    /// Set by a failed pass; permanent.
    failed: Option<String>,
}

/// Group commit of one sync unit (see the module docs).
pub struct GroupSync {
    target: SyncTarget,
    state: Mutex<SyncState>,
    done: Notify,
    limiter: Arc<SyncLimiter>,
    health: Arc<DiskHealth>,
}

impl GroupSync {
    pub fn new(target: SyncTarget, limiter: Arc<SyncLimiter>, health: Arc<DiskHealth>) -> Self {
        GroupSync {
            target,
            state: Mutex::new(SyncState::default()),
            done: Notify::new(),
            limiter,
            health,
        }
    }

    /// Records that a write has completed (call after `pwrite` returned);
    /// the ticket's pass covers it and every earlier write of the unit.
    pub fn note_write(self: &Arc<Self>) -> Ticket {
        let mut state = lock(&self.state);
        state.written += 1;
        Ticket {
            unit: Arc::clone(self),
            seq: state.written,
        }
    }

    /// Returns once every write up to `ticket` is durable, starting a pass if
    /// none is running. Cancellation safe: a pass runs to completion without
    /// its waiters.
    async fn wait(self: &Arc<Self>, ticket: u64) -> Result<(), ChunkError> {
        loop {
            let notified = self.done.notified();
            {
                let mut state = lock(&self.state);
                debug_assert!(ticket <= state.written, "waiting for a write never noted");
                if state.synced >= ticket {
                    return Ok(());
                }
                if let Some(error) = &state.failed {
                    return Err(ChunkError::Io(error.clone()));
                }
                if !state.running {
                    state.running = true;
                    let group = Arc::clone(self);
                    tokio::task::spawn_blocking(move || group.run_passes());
                }
            }
            notified.await;
        }
    }

    /// Runs one pass in the calling (blocking) thread if none is running and
    /// `ticket` is not yet durable: the writer that finds the unit idle syncs
    /// right away instead of handing off to another thread. Writes noted
    /// during the pass are left to a pass their waiters start.
    fn sync_now_if_idle(&self, ticket: u64) {
        {
            let mut state = lock(&self.state);
            if state.synced >= ticket || state.running || state.failed.is_some() {
                return;
            }
            state.running = true;
        }
        self.run_pass(false);
    }

    /// Runs passes until every noted write is durable (or a pass fails).
    fn run_passes(&self) {
        while self.run_pass(true) {}
    }

    /// Runs one pass; the caller holds `running`. Returns whether it still
    /// does (`keep_running` and more writes are pending).
    fn run_pass(&self, keep_running: bool) -> bool {
        let target_ticket = lock(&self.state).written;
        let result = self.timed_sync();
        let mut state = lock(&self.state);
        match result {
            Ok(()) => state.synced = state.synced.max(target_ticket),
            Err(error) => {
                tracing::error!(%error, mode = self.target.mode_label(), "sync failed; unit is failed until restart");
                self.health.note_sync_failed();
                state.failed = Some(format!("sync failed: {error}"));
            }
        }
        let more = keep_running && state.failed.is_none() && state.written > state.synced;
        state.running = more;
        drop(state);
        self.done.notify_waiters();
        more
    }

    fn timed_sync(&self) -> std::io::Result<()> {
        let _slot = self.limiter.acquire();
        let started = Instant::now();
        let result = self.target.sync();
        let mode = self.target.mode_label();
        metrics::histogram!("chunk_sync_seconds", "mode" => mode).record(started.elapsed().as_secs_f64());
        metrics::counter!("chunk_sync_passes_total", "mode" => mode).increment(1);
        result
    }
}

/// A write (or barrier) to wait for before acknowledging it.
pub struct Ticket {
    unit: Arc<GroupSync>,
    seq: u64,
}

impl Ticket {
    /// Returns once the write is durable (see [`GroupSync`]).
    pub async fn wait(&self) -> Result<(), ChunkError> {
        self.unit.wait(self.seq).await
    }

    /// Syncs in the calling blocking thread if the unit is idle.
    pub fn sync_now_if_idle(&self) {
        self.unit.sync_now_if_idle(self.seq);
    }
}

/// Locks a std mutex, ignoring poisoning: every critical section here leaves
/// its state consistent before anything can panic.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
