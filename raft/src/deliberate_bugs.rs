//! Storage bugs the deterministic simulator must catch (issue 7), as in
//! `tessera_nameserver::deliberate_bugs`: each is off unless a test turns
//! it on for its thread, and exists only in builds with the
//! `deliberate-bugs` feature (the simulator's); without it every switch
//! reads false and cannot be set.

#[cfg(feature = "deliberate-bugs")]
mod switches {
    use std::cell::Cell;

    thread_local! {
        static UNSYNCED_LOG: Cell<bool> = const { Cell::new(false) };
    }

    /// Raft's durable writes (log entries, votes, purges, snapshot records)
    /// return before RocksDB syncs its log: a node acknowledges entries
    /// and votes a power loss can take back.
    pub fn set_unsynced_log(on: bool) {
        UNSYNCED_LOG.with(|flag| flag.set(on));
    }

    pub fn unsynced_log() -> bool {
        UNSYNCED_LOG.with(Cell::get)
    }
}

#[cfg(feature = "deliberate-bugs")]
pub use switches::*;

#[cfg(not(feature = "deliberate-bugs"))]
pub fn unsynced_log() -> bool {
    false
}
