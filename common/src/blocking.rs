//! Blocking work (RocksDB reads and writes) runs on tokio's blocking pool,
//! except on a thread marked with [`inline_on_this_thread`]: the
//! deterministic simulator runs a whole cluster on one thread, where work
//! finishing on another thread at a wall-clock moment would make a run
//! unrepeatable, so there it runs in place.

use std::cell::Cell;

thread_local! {
    static INLINE: Cell<bool> = const { Cell::new(false) };
}

/// Whether [`run`] runs closures in place on this thread from now on.
pub fn inline_on_this_thread(inline: bool) {
    INLINE.with(|flag| flag.set(inline));
}

/// Runs `f` off the async threads (or in place, see the module docs) and
/// waits for it. Cancellation safe: a cancelled wait leaves `f` running to
/// its end on the pool.
pub async fn run<T, F>(f: F) -> Result<T, tokio::task::JoinError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    if INLINE.with(Cell::get) {
        return Ok(f());
    }
    tokio::task::spawn_blocking(f).await
}
