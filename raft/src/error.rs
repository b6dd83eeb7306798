//! Errors of proposals, reads and membership changes of a group, as callers
//! branch on them. They travel between processes (forwarding, client
//! calls), hence serde.

use serde::{Deserialize, Serialize};

use crate::{GroupId, RaftNodeId};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ProposeError {
    /// This node is not the leader and did not (or could not) forward. The
    /// call was not executed: retrying at `leader_addr` is safe.
    #[error("not the leader; leader is {leader_id:?} at {leader_addr:?}")]
    NotLeader {
        leader_id: Option<RaftNodeId>,
        leader_addr: Option<String>,
    },
    /// No quorum, timeout, or the connection to the leader failed mid-call.
    /// For a proposal the outcome is UNKNOWN: it may still commit. Never
    /// retry a non-idempotent command blindly.
    #[error("unavailable (outcome unknown): {0}")]
    Unavailable(String),
    /// A membership change refused by Raft (one in progress, unknown
    /// learner, empty membership). Nothing was changed.
    #[error("membership change refused: {0}")]
    Rejected(String),
    /// The node's storage failed; it has stopped.
    #[error("storage failure: {0}")]
    Storage(String),
    /// The Raft node has stopped (shut down or panicked). For a proposal
    /// already handed to Raft the outcome is unknown.
    #[error("raft stopped: {0}")]
    Fatal(String),
    /// The process called does not host this group (never did, or it was
    /// shut down or moved). The call was not executed.
    #[error("no raft group {0} here")]
    UnknownGroup(GroupId),
}

impl ProposeError {
    /// Whether a proposal that failed this way may nevertheless commit.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, ProposeError::Unavailable(_) | ProposeError::Fatal(_))
    }

    pub fn from_fatal(fatal: &openraft::error::Fatal<RaftNodeId>) -> Self {
        match fatal {
            openraft::error::Fatal::StorageError(e) => ProposeError::Storage(e.to_string()),
            other => ProposeError::Fatal(other.to_string()),
        }
    }
}
