//! The name servers' Raft group (DESIGN §1): openraft 0.9 (storage-v2) with
//! its log and state machine in one RocksDB per node, replicated over the
//! cluster RPC (QUIC, mTLS).
//!
//! - [`store`]: opening the RocksDB and its column families, blocking-call helpers.
//! - [`log_store`]: the durable Raft log and vote (`RaftLogStorage`).
//! - [`state_machine`]: applies entries to the namespace tables, builds and
//!   installs snapshots (`RaftStateMachine`).
//! - [`network`]: openraft's network over [`tessera_common::rpc`].
//! - [`service`]: the RPC methods and their server-side handlers.
//! - [`node`]: [`node::RaftNode`], the handle the rest of the name server uses.

// openraft's traits dictate `StorageError` (224 bytes) as the error type of
// every storage call; boxing it in our helpers would only add conversions.
#![allow(clippy::result_large_err)]

pub mod codec;
pub mod error;
pub mod log_store;
pub mod network;
pub mod node;
pub mod service;
pub mod state_machine;
pub mod store;

use std::io::Cursor;

use crate::namespace::{Command, Response};

pub use error::ProposeError;
pub use node::RaftNode;

/// Raft node ids are plain `u64` (the value of [`tessera_common::ids::NodeId`]).
pub type RaftNodeId = u64;

/// A member as openraft stores it: its RPC address (`host:port`).
pub type Member = openraft::BasicNode;

openraft::declare_raft_types!(
    /// The name servers' Raft types: namespace commands in, responses out.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = RaftNodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The openraft handle of this group.
pub type Raft = openraft::Raft<TypeConfig>;
/// One log entry.
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<RaftNodeId>;
pub type Vote = openraft::Vote<RaftNodeId>;
pub type StoredMembership = openraft::StoredMembership<RaftNodeId, Member>;
pub type SnapshotMeta = openraft::SnapshotMeta<RaftNodeId, Member>;
pub type StorageError = openraft::StorageError<RaftNodeId>;
pub type RaftMetrics = openraft::RaftMetrics<RaftNodeId, Member>;
