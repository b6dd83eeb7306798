//! Raft groups for Tessera's replicated roles: the name servers' single
//! group and the object servers' partitions (many groups per process).
//!
//! An application describes its replicated state as a [`StateMachine`]
//! (commands applied to RocksDB tables through a [`kv::Txn`], queries read
//! from them). [`RaftGroup::start`] runs one openraft 0.9 (storage-v2) group
//! of it with its log and state in one RocksDB directory. All groups of a
//! process share one RPC server: [`routes`] adds the `raft.*` methods once,
//! and every call names its [`GroupId`], found in the process's [`Registry`].
//!
//! - [`machine`]: the [`StateMachine`] trait and openraft's type config.
//! - [`store`], [`codec`]: the RocksDB of a group, postcard encodings.
//! - [`log_store`], [`state_machine`]: openraft's log and state-machine storage;
//!   [`snapshot_store`], [`snapshot_file`]: snapshots as checksummed files.
//! - [`network`], [`service`]: Raft and client RPCs over `tessera_common::rpc`.
//! - `batcher`: group commit, concurrent proposals as one log entry.
//! - [`registry`], [`group`]: the groups of a process and the handle of one.
//! - [`tuning`]: timing and compaction knobs; [`error`]: [`ProposeError`].
//! - [`testing`]: a tiny counter state machine for tests; [`deliberate_bugs`]:
//!   storage bugs for the simulator to catch.

// openraft's traits dictate `StorageError` (224 bytes) as the error type of
// every storage call; boxing it in our helpers would only add conversions.
#![allow(clippy::result_large_err)]

mod batcher;
pub mod codec;
pub mod deliberate_bugs;
pub mod error;
pub mod group;
pub mod group_calls;
pub mod kv;
pub mod log_store;
pub mod machine;
pub mod network;
pub mod registry;
pub mod runtime;
pub mod service;
pub mod snapshot_file;
pub mod snapshot_store;
pub mod state_machine;
pub mod store;
pub mod testing;
pub mod tuning;

pub use error::ProposeError;
pub use group::{GroupHandle, GroupOptions, RaftGroup};
pub use machine::{
    ApplyCtx, Entry, EntryCommands, EntryResponses, GroupId, LogId, Member, Raft, RaftMetrics, RaftNodeId, SmError,
    SnapshotMeta, StateMachine, StorageError, StoredMembership, TypeConfig, Vote,
};
pub use registry::Registry;
pub use service::routes;
pub use tuning::RaftTuning;
