//! Deterministic simulation of a Tessera cluster (issue 7): the real node
//! code under turmoil, one thread, one seed.

pub mod chunk_check;
pub mod chunks;
pub mod cli;
pub mod cluster;
pub mod drift;
pub mod nemesis;
pub mod net;
pub mod objects;
pub mod observer;
pub mod power;
pub mod process;
pub mod report;
pub mod run;
pub mod storage;
pub mod workload;
