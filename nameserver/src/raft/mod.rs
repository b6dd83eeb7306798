//! The name servers' Raft group (DESIGN §1): the namespace as a
//! [`tessera_raft::StateMachine`] ([`Namespace`]), run as group
//! [`GROUP`] of a [`tessera_raft`] registry, one per name-server process.
//!
//! - [`machine`]: [`Namespace`], the namespace's commands and queries.
//! - [`node`]: [`node::RaftNode`], the process: its RPC server (Raft, client
//!   and name-server API routes) and its one group.

pub mod machine;
pub mod node;

pub use machine::Namespace;
pub use node::RaftNode;
pub use tessera_raft::{GroupId, Member, ProposeError, RaftNodeId};

/// The name servers' group id in their process.
pub const GROUP: GroupId = GroupId(0);

/// A handle of the running namespace group (what the API handlers hold).
pub type NsGroup = tessera_raft::GroupHandle<Namespace>;
/// The openraft handle of the group.
pub type Raft = tessera_raft::Raft<Namespace>;
pub type RaftMetrics = tessera_raft::RaftMetrics;
