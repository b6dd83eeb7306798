//! Chunk server (DESIGN §6): chunk files on local disks, appended only,
//! checksummed per block, fenced by epoch, sealed; served over cluster RPC.

pub mod config;
pub mod file_store;
pub mod heartbeat;
pub mod node;
pub mod scrub;
pub mod service;
pub mod store;
