//! Admin API of the name servers: membership of the Raft group
//! (`ns.admin_members`, `ns.admin_add`, `ns.admin_remove` of
//! [`tessera_common::ns_api`]), behind `tessera admin ns`.
//!
//! A cluster is bootstrapped once; nodes are then added as learners,
//! caught up and promoted to voters, or removed. Every method is served by
//! the leader only: a follower answers `NotLeader` with the leader's
//! address, never forwarding. A membership change that times out leaves
//! its outcome unknown (`Unavailable`).

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use tessera_common::ns_api::{self, AddMemberReq, Member, MembersInfo, MembersReq, NsError, RemoveMemberReq};
use tessera_common::rpc::{RequestCtx, Router};

use crate::raft::{self, NsGroup, RaftMetrics, RaftNodeId};

/// Budget of one membership change, catching a learner up included.
pub const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(60);

/// Registers a handler `$f` for method `$m`.
macro_rules! route {
    ($router:expr, $node:expr, $m:ty, $f:ident) => {{
        let node = $node.clone();
        $router.add::<$m, _, _>(move |ctx: RequestCtx, req, _bulk: Bytes| {
            let node = node.clone();
            async move { ($f(&node, &ctx, req).await, Bytes::new()) }
        })
    }};
}

/// Adds the admin methods to `router`.
pub fn routes(router: Router, node: NsGroup) -> Router {
    let router = route!(router, node, ns_api::AdminMembers, members);
    let router = route!(router, node, ns_api::AdminAdd, add);
    route!(router, node, ns_api::AdminRemove, remove)
}

/// This node's metrics if it leads, else `NotLeader` with the leader's
/// address when known.
fn leader_metrics(node: &NsGroup) -> Result<RaftMetrics, NsError> {
    let m = node.metrics().borrow().clone();
    if m.state == ServerState::Leader && m.current_leader == Some(node.id()) {
        return Ok(m);
    }
    let leader_addr = m
        .current_leader
        .filter(|l| *l != node.id())
        .and_then(|l| m.membership_config.membership().get_node(&l).map(|n| n.addr.clone()));
    Err(NsError::NotLeader { leader_addr })
}

async fn members(node: &NsGroup, _ctx: &RequestCtx, _req: MembersReq) -> Result<MembersInfo, NsError> {
    let m = leader_metrics(node)?;
    Ok(members_info(node.id(), &m))
}

/// The membership in `m` (the leader `me`'s metrics) on the wire.
fn members_info(me: RaftNodeId, m: &RaftMetrics) -> MembersInfo {
    let membership = m.membership_config.membership();
    let member = |id: RaftNodeId| Member {
        id,
        addr: membership.get_node(&id).map(|n| n.addr.clone()).unwrap_or_default(),
        matched: matched(me, id, m),
    };
    MembersInfo {
        leader: m.current_leader,
        term: m.current_term,
        voters: membership.voter_ids().map(member).collect(),
        learners: membership.learner_ids().map(member).collect(),
        last_log: m.last_log_index,
        applied: m.last_applied.map(|l| l.index),
    }
}

/// The log index `id` is known to hold, from the leader `me`'s view.
fn matched(me: RaftNodeId, id: RaftNodeId, m: &RaftMetrics) -> Option<u64> {
    if id == me {
        return m.last_log_index;
    }
    let replication = m.replication.as_ref()?;
    replication.get(&id).copied().flatten().map(|l| l.index)
}

async fn add(node: &NsGroup, ctx: &RequestCtx, req: AddMemberReq) -> Result<(), NsError> {
    let m = leader_metrics(node)?;
    check_addable(&m, &req)?;
    tracing::info!(node = req.id, addr = %req.addr, by = ?ctx.peer_name, "adding a learner");
    let learner = raft::Member { addr: req.addr };
    timed(node.raft().add_learner(req.id, learner, true)).await?;
    if req.promote {
        tracing::info!(node = req.id, "promoting the learner to voter");
        let change = ChangeMembers::AddVoterIds(BTreeSet::from([req.id]));
        timed(node.raft().change_membership(change, false)).await?;
    }
    Ok(())
}

/// Refuses adding a voter again, a learner at another address, or an
/// address that does not parse.
fn check_addable(m: &RaftMetrics, req: &AddMemberReq) -> Result<(), NsError> {
    let membership = m.membership_config.membership();
    let rejected = |why: String| Err(NsError::MembershipRejected(why));
    if membership.voter_ids().any(|v| v == req.id) {
        return rejected(format!("node {} is already a voter", req.id));
    }
    if let Some(known) = membership.get_node(&req.id).filter(|n| n.addr != req.addr) {
        return rejected(format!("node {} is already a learner at {}", req.id, known.addr));
    }
    if req.addr.parse::<std::net::SocketAddr>().is_err() {
        return rejected(format!("invalid address {:?}", req.addr));
    }
    Ok(())
}

async fn remove(node: &NsGroup, ctx: &RequestCtx, req: RemoveMemberReq) -> Result<(), NsError> {
    let m = leader_metrics(node)?;
    let membership = m.membership_config.membership();
    let voters: BTreeSet<RaftNodeId> = membership.voter_ids().collect();
    let change = if voters.contains(&req.id) {
        if voters.len() == 1 {
            return Err(NsError::LastVoter);
        }
        ChangeMembers::RemoveVoters(BTreeSet::from([req.id]))
    } else if membership.learner_ids().any(|l| l == req.id) {
        ChangeMembers::RemoveNodes(BTreeSet::from([req.id]))
    } else {
        return Err(NsError::MembershipRejected(format!("node {} is not a member", req.id)));
    };
    tracing::info!(node = req.id, by = ?ctx.peer_name, "removing a member");
    timed(node.raft().change_membership(change, false)).await
}

/// Runs a membership change within [`MEMBERSHIP_TIMEOUT`].
async fn timed<T, F>(call: F) -> Result<(), NsError>
where
    F: std::future::Future<Output = Result<T, RaftError<RaftNodeId, ClientWriteError<RaftNodeId, raft::Member>>>>,
{
    match tokio::time::timeout(MEMBERSHIP_TIMEOUT, call).await {
        Err(_) => Err(NsError::Unavailable(format!(
            "membership change not done within {MEMBERSHIP_TIMEOUT:?}"
        ))),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(write_error(e)),
    }
}

fn write_error(e: RaftError<RaftNodeId, ClientWriteError<RaftNodeId, raft::Member>>) -> NsError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => NsError::NotLeader {
            leader_addr: f.leader_node.map(|n| n.addr),
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => NsError::MembershipRejected(c.to_string()),
        RaftError::Fatal(f) => NsError::Unavailable(f.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raft_errors_map_to_typed_refusals() {
        let e = RaftError::APIError(ClientWriteError::ForwardToLeader(openraft::error::ForwardToLeader {
            leader_id: Some(2),
            leader_node: Some(raft::Member {
                addr: "127.0.0.1:7".into(),
            }),
        }));
        assert_eq!(
            write_error(e),
            NsError::NotLeader {
                leader_addr: Some("127.0.0.1:7".into())
            }
        );
    }
}
