//! Object server (DESIGN §1, §4, §5): partitions, each its own Raft group,
//! holding GC entries and extent maps over an append-only data log that is
//! erasure-coded across chunk servers.

pub mod cluster;
pub mod config;
pub mod ec;
pub mod group_io;
pub mod hosting;
pub mod node;
pub mod partition;
pub mod placement;
pub mod service;
pub mod state;
