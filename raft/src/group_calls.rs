//! Client calls of a group ([`GroupHandle::propose`], [`GroupHandle::read`]):
//! the leader serves them, a follower forwards them once to the leader it
//! knows (the leader never forwards again) or answers
//! [`ProposeError::NotLeader`]. Reads are linearizable: `ensure_linearizable`
//! (read index confirmed by a quorum, applied locally) before reading
//! RocksDB.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tessera_common::rpc::{CallOptions, Method, RpcError};
use tracing::Instrument;

use crate::machine::metric;
use crate::service::{call_group, GroupCall, Propose, RaftBlob, Read};
use crate::{GroupHandle, Member, ProposeError, RaftNodeId, StateMachine};

/// Extra time a forwarded call gets over the leader's own deadline.
const FORWARD_MARGIN: Duration = Duration::from_secs(1);

fn record<S: StateMachine, T>(op: &'static str, result: &Result<T, ProposeError>, started: Instant) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(ProposeError::NotLeader { .. }) => "not_leader",
        Err(ProposeError::Unavailable(_)) => "unavailable",
        Err(ProposeError::Rejected(_)) => "rejected",
        Err(ProposeError::Storage(_)) => "storage",
        Err(ProposeError::Fatal(_)) => "fatal",
        Err(ProposeError::UnknownGroup(_)) => "unknown_group",
    };
    metrics::counter!(metric::<S>("raft_client_calls_total"), "op" => op, "outcome" => outcome).increment(1);
    metrics::histogram!(metric::<S>("raft_client_seconds"), "op" => op).record(started.elapsed().as_secs_f64());
}

fn not_leader(f: ForwardToLeader<RaftNodeId, Member>) -> ProposeError {
    ProposeError::NotLeader {
        leader_id: f.leader_id,
        leader_addr: f.leader_node.map(|n| n.addr),
    }
}

pub(crate) fn write_error(e: RaftError<RaftNodeId, ClientWriteError<RaftNodeId, Member>>) -> ProposeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => not_leader(f),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => ProposeError::Rejected(c.to_string()),
        RaftError::Fatal(f) => ProposeError::from_fatal(&f),
    }
}

impl<S: StateMachine> GroupHandle<S> {
    /// Proposes `command`; a follower forwards it to the leader.
    pub async fn propose(&self, command: S::Command) -> Result<S::Response, ProposeError> {
        let started = Instant::now();
        let result = match self.propose_local(command.clone()).await {
            Err(ProposeError::NotLeader {
                leader_id: Some(leader),
                leader_addr: Some(addr),
            }) if leader != self.inner.id => {
                let timeout = self.inner.propose_timeout + FORWARD_MARGIN;
                self.forward::<Propose, _, _>(leader, &addr, &command, timeout, 0).await
            }
            other => other,
        };
        record::<S, _>("propose", &result, started);
        result
    }

    /// Answers `query` linearizably; a follower forwards it to the leader.
    pub async fn read(&self, query: S::Query) -> Result<S::QueryResponse, ProposeError> {
        let started = Instant::now();
        let result = match self.read_local(query.clone()).await {
            Err(ProposeError::NotLeader {
                leader_id: Some(leader),
                leader_addr: Some(addr),
            }) if leader != self.inner.id => {
                let timeout = self.inner.read_timeout + FORWARD_MARGIN;
                self.forward::<Read, _, _>(leader, &addr, &query, timeout, 1).await
            }
            other => other,
        };
        record::<S, _>("read", &result, started);
        result
    }

    /// Proposes on this node only (the handler of forwarded proposals),
    /// in one entry with whatever else is proposed here meanwhile.
    /// Cancellation: the command may still commit (outcome unknown).
    pub async fn propose_local(&self, command: S::Command) -> Result<S::Response, ProposeError> {
        let span = tracing::debug_span!("propose", group = self.inner.group.0, node = self.inner.id);
        let timeout = self.inner.propose_timeout;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let stopped = || ProposeError::Fatal("the group's proposer stopped".into());
        let call = async {
            let proposal = crate::batcher::Proposal { command, reply };
            self.inner.proposals.send(proposal).await.map_err(|_| stopped())?;
            answer.await.map_err(|_| stopped())?
        };
        match tokio::time::timeout(timeout, call.instrument(span)).await {
            Err(_) => Err(ProposeError::Unavailable(format!("not committed within {timeout:?}"))),
            Ok(result) => result,
        }
    }

    /// Serves a linearizable read on this node only.
    pub async fn read_local(&self, query: S::Query) -> Result<S::QueryResponse, ProposeError> {
        let span = tracing::debug_span!("read", group = self.inner.group.0, node = self.inner.id);
        let timeout = self.inner.read_timeout;
        match tokio::time::timeout(timeout, self.inner.raft.ensure_linearizable().instrument(span)).await {
            Err(_) => {
                return Err(ProposeError::Unavailable(format!(
                    "leadership not confirmed within {timeout:?}"
                )))
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => return Err(not_leader(f)),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)))) => {
                return Err(ProposeError::Unavailable(q.to_string()))
            }
            Ok(Err(RaftError::Fatal(f))) => return Err(ProposeError::from_fatal(&f)),
            Ok(Ok(_)) => {}
        }
        self.stale_query(query).await
    }

    /// Answers `query` from this node's applied state without any
    /// leadership check: possibly stale. For diagnostics and tests.
    pub async fn stale_query(&self, query: S::Query) -> Result<S::QueryResponse, ProposeError> {
        let db = self.inner.db.clone();
        match tessera_common::blocking::run(move || S::query(&db, &query)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(ProposeError::Storage(e.to_string())),
            Err(e) => Err(ProposeError::Storage(format!("read task failed: {e}"))),
        }
    }

    /// Sends a client call to the leader once. A failed connect, or a leader
    /// process that no longer hosts the group, means the call was not
    /// executed (`NotLeader`, safe to retry); any later failure leaves the
    /// outcome unknown (`Unavailable`).
    async fn forward<M, Req, T>(
        &self,
        leader: RaftNodeId,
        addr: &str,
        request: &Req,
        timeout: Duration,
        retries: u32,
    ) -> Result<T, ProposeError>
    where
        M: Method<Request = GroupCall, Response = RaftBlob>,
        Req: Serialize,
        T: DeserializeOwned,
    {
        let not_leader = || ProposeError::NotLeader {
            leader_id: Some(leader),
            leader_addr: Some(addr.to_string()),
        };
        let peer: SocketAddr = addr.parse().map_err(|_| not_leader())?;
        metrics::counter!(metric::<S>("raft_forwarded_total"), "method" => M::NAME).increment(1);
        let opts = CallOptions {
            timeout,
            retries,
            ..CallOptions::default()
        };
        match call_group::<M, _, _>(&self.inner.client, peer, self.inner.group, request, &opts).await {
            // The leader we knew stopped hosting the group: not executed.
            Ok(Err(ProposeError::UnknownGroup(_))) => Err(not_leader()),
            Ok(answer) => answer,
            Err(RpcError::Connect { .. }) => Err(not_leader()),
            Err(e) => Err(ProposeError::Unavailable(format!(
                "forwarding to leader {leader} at {addr}: {e}"
            ))),
        }
    }
}
