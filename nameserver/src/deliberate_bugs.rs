//! Protocol bugs the deterministic simulator must catch (issue 7). Each is
//! off unless a test turns it on for its thread (the simulator runs a
//! whole cluster on one thread, so tests in parallel do not see each
//! other's), and exists only in builds with the `deliberate-bugs` feature
//! (the simulator's); without it every switch reads false and cannot be set.

#[cfg(feature = "deliberate-bugs")]
mod switches {
    use std::cell::Cell;

    thread_local! {
        static STALE_READS: Cell<bool> = const { Cell::new(false) };
    }

    /// `ns.get_object` answers from the receiving node's applied state
    /// without confirming its leadership (no read index): a deposed leader
    /// or a lagging follower serves stale names.
    pub fn set_stale_reads(on: bool) {
        STALE_READS.with(|flag| flag.set(on));
    }

    pub fn stale_reads() -> bool {
        STALE_READS.with(Cell::get)
    }
}

#[cfg(feature = "deliberate-bugs")]
pub use switches::*;

#[cfg(not(feature = "deliberate-bugs"))]
pub fn stale_reads() -> bool {
    false
}
