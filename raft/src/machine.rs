//! What an application plugs into a Raft group: the [`StateMachine`] trait,
//! the [`ApplyCtx`] of an entry, the [`GroupId`] naming a group in a
//! process, and openraft's type configuration ([`TypeConfig`]) generic over
//! the state machine, with the aliases the rest of the crate uses.

use std::cmp::Ordering;
use std::fmt::{self, Debug};
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::kv::{Table, Txn};

/// An error of `apply` or `query` that is not an answer: storage failed.
/// `apply` failing stops the node (openraft sees a storage error).
pub type SmError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Bounds of every type that travels in the log or over the network.
pub trait Payload: Serialize + DeserializeOwned + Clone + Debug + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + Debug + Send + Sync + 'static> Payload for T {}

/// Position of the command being applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyCtx {
    /// Index of the entry; every command of an entry shares it.
    pub log_index: u64,
    /// Term of the leader that appended the entry.
    pub term: u64,
    /// The command's place in its entry (entries carry batches).
    pub position: u32,
}

/// Most commands one entry may carry: [`ApplyCtx::command_seq`] keeps 8
/// bits for the position.
pub const ENTRY_COMMANDS_MAX: usize = 256;

impl ApplyCtx {
    /// A number unique to this command and increasing in log order (for
    /// ids the state assigns, such as version sequence numbers).
    pub fn command_seq(&self) -> u64 {
        assert!(
            (self.position as usize) < ENTRY_COMMANDS_MAX,
            "position within an entry"
        );
        (self.log_index << 8) | u64::from(self.position)
    }
}

/// An application's replicated state: deterministic commands applied to its
/// RocksDB tables, and reads of them.
pub trait StateMachine: Send + Sync + 'static {
    /// A command, chosen by the proposer; a log entry carries one or more.
    type Command: Payload;
    /// The answer to a command.
    type Response: Payload;
    type Query: Payload;
    type QueryResponse: Payload;

    /// Column families the state machine owns; a snapshot carries all of them.
    const TABLES: &'static [Table];
    /// Prefix of the group's metrics (`{prefix}_raft_apply_seconds`, ...).
    const METRICS_PREFIX: &'static str;

    /// Applies one committed command. Every command of a batch writes into
    /// the same `txn`, which becomes one RocksDB write. Must be
    /// deterministic; an error stops the node.
    fn apply(
        txn: &mut Txn<'_, rocksdb::DB>,
        command: &Self::Command,
        ctx: &ApplyCtx,
    ) -> Result<Self::Response, SmError>;

    /// Answers `query` from the applied state.
    fn query(db: &rocksdb::DB, query: &Self::Query) -> Result<Self::QueryResponse, SmError>;
}

/// A Raft group within a process: the name servers use group 0, object
/// servers the partition id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GroupId(pub u64);

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Raft node ids are plain `u64` (the value of [`tessera_common::ids::NodeId`]).
pub type RaftNodeId = u64;

/// A member as openraft stores it: the RPC address (`host:port`) of the
/// process hosting it.
pub type Member = openraft::BasicNode;

/// openraft's types for state machine `S`. A zero-sized marker: the derives
/// `declare_raft_types!` would add are written by hand so they do not
/// require anything of `S`.
pub struct TypeConfig<S>(PhantomData<fn() -> S>);

impl<S> Clone for TypeConfig<S> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<S> Copy for TypeConfig<S> {}
impl<S> Default for TypeConfig<S> {
    fn default() -> Self {
        TypeConfig(PhantomData)
    }
}
impl<S> PartialEq for TypeConfig<S> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl<S> Eq for TypeConfig<S> {}
impl<S> PartialOrd for TypeConfig<S> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<S> Ord for TypeConfig<S> {
    fn cmp(&self, _: &Self) -> Ordering {
        Ordering::Equal
    }
}
impl<S> Hash for TypeConfig<S> {
    fn hash<H: Hasher>(&self, _: &mut H) {}
}
impl<S> Debug for TypeConfig<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TypeConfig")
    }
}

/// A log entry's payload: the commands proposed together (see
/// [`crate::batcher`]), applied in order.
pub type EntryCommands<S> = Vec<<S as StateMachine>::Command>;
/// The answers to an entry's commands, in order (none for blank and
/// membership entries).
pub type EntryResponses<S> = Vec<<S as StateMachine>::Response>;

impl<S: StateMachine> openraft::RaftTypeConfig for TypeConfig<S> {
    type D = EntryCommands<S>;
    type R = EntryResponses<S>;
    type NodeId = RaftNodeId;
    type Node = Member;
    type Entry = openraft::Entry<TypeConfig<S>>;
    type SnapshotData = tokio::fs::File;
    type AsyncRuntime = crate::runtime::Runtime;
    type Responder = openraft::impls::OneshotResponder<TypeConfig<S>>;
}

/// The openraft handle of a group.
pub type Raft<S> = openraft::Raft<TypeConfig<S>>;
/// One log entry.
pub type Entry<S> = openraft::Entry<TypeConfig<S>>;
pub type LogId = openraft::LogId<RaftNodeId>;
pub type Vote = openraft::Vote<RaftNodeId>;
pub type StoredMembership = openraft::StoredMembership<RaftNodeId, Member>;
pub type SnapshotMeta = openraft::SnapshotMeta<RaftNodeId, Member>;
pub type StorageError = openraft::StorageError<RaftNodeId>;
pub type RaftMetrics = openraft::RaftMetrics<RaftNodeId, Member>;

/// The name of metric `name` of state machine `S`: `{prefix}_{name}`.
pub(crate) fn metric<S: StateMachine>(name: &str) -> String {
    format!("{}_{name}", S::METRICS_PREFIX)
}
