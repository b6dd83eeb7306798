//! `ns.cluster_map`: the nodes and partition map, with liveness judged by
//! the leader. Liveness is this leader's memory of when it last recorded
//! each node's heartbeat, on its own monotonic clock; a node not heard
//! from since this leader took over counts as alive until one liveness
//! timeout into the term, so a leader change never declares the whole
//! cluster dead (which would start a repair storm).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use tessera_common::ns_api::{self, ClusterMap, NodeInfo, NsError, PartitionReplicas};
use tokio::time::Instant;

use crate::namespace::{NodeRecord, NodeRole, PartitionPlacement, Query, QueryResponse};
use crate::raft::NsGroup;

/// When each node was last heard from, in the current term, and the
/// corrupt chunks each chunk server last reported.
pub struct Liveness {
    timeout: Duration,
    heartbeat_interval_ms: u64,
    state: Mutex<(u64, Instant, HashMap<u64, Instant>)>,
    corrupt: Mutex<HashMap<u64, Vec<u64>>>,
}

impl Liveness {
    /// Nodes are asked to heartbeat every `heartbeat_interval_ms` and
    /// judged dead after `timeout` without one.
    pub fn new(timeout: Duration, heartbeat_interval_ms: u64) -> Self {
        Liveness {
            timeout,
            heartbeat_interval_ms,
            state: Mutex::new((0, Instant::now(), HashMap::new())),
            corrupt: Mutex::new(HashMap::new()),
        }
    }

    /// Replaces the corrupt chunks `node` reports.
    pub fn report_corrupt(&self, node: u64, chunks: Vec<u64>) {
        let mut corrupt = self.corrupt.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if chunks.is_empty() {
            corrupt.remove(&node);
        } else {
            corrupt.insert(node, chunks);
        }
    }

    fn corrupt_of(&self, node: u64) -> Vec<u64> {
        let corrupt = self.corrupt.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        corrupt.get(&node).cloned().unwrap_or_default()
    }

    /// The heartbeat interval nodes are asked for.
    pub fn heartbeat_interval_ms(&self) -> u64 {
        self.heartbeat_interval_ms
    }

    fn with_term<T>(&self, term: u64, f: impl FnOnce(&Instant, &mut HashMap<u64, Instant>) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if state.0 != term {
            *state = (term, Instant::now(), HashMap::new());
        }
        let (_, since, seen) = &mut *state;
        f(since, seen)
    }

    /// Records a heartbeat of `node` recorded by this leader in `term`.
    pub fn saw(&self, term: u64, node: u64) {
        self.with_term(term, |_, seen| {
            seen.insert(node, Instant::now());
        });
    }

    /// (time since heard from, alive) of `node` as the leader of `term`.
    pub fn judge(&self, term: u64, node: u64) -> (Duration, bool) {
        self.with_term(term, |since, seen| match seen.get(&node) {
            Some(at) => (at.elapsed(), at.elapsed() <= self.timeout),
            None => (since.elapsed(), since.elapsed() <= self.timeout),
        })
    }
}

fn role(role: NodeRole) -> ns_api::NodeRole {
    match role {
        NodeRole::NameServer => ns_api::NodeRole::NameServer,
        NodeRole::ObjectServer => ns_api::NodeRole::ObjectServer,
        NodeRole::ChunkServer => ns_api::NodeRole::ChunkServer,
        NodeRole::Gateway => ns_api::NodeRole::Gateway,
    }
}

fn node_info(record: NodeRecord, liveness: &Liveness, term: u64) -> NodeInfo {
    let (age, alive) = liveness.judge(term, record.node_id);
    let corrupt_chunks = liveness.corrupt_of(record.node_id);
    NodeInfo {
        id: record.node_id,
        role: role(record.role),
        addr: record.addr,
        zone: record.zone,
        capacity_bytes: record.capacity_bytes,
        used_bytes: record.used_bytes,
        healthy: record.healthy,
        heartbeat_age_ms: u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
        alive,
        corrupt_chunks,
    }
}

/// Answers `ns.cluster_map` on the leader of `term` (callers check
/// leadership first: only the leader's liveness memory is meaningful).
pub async fn cluster_map(node: &NsGroup, liveness: &Liveness, term: u64) -> Result<ClusterMap, NsError> {
    let (nodes, partitions) = read_nodes_and_partitions(node).await?;
    Ok(ClusterMap {
        nodes: nodes.into_iter().map(|n| node_info(n, liveness, term)).collect(),
        partitions: partitions
            .into_iter()
            .map(|(partition, placement)| PartitionReplicas {
                partition,
                nodes: placement.replicas,
                generation: placement.generation,
            })
            .collect(),
    })
}

/// The node records and the partition map, as this node applied them.
pub async fn read_nodes_and_partitions(
    node: &NsGroup,
) -> Result<(Vec<NodeRecord>, BTreeMap<u32, PartitionPlacement>), NsError> {
    let read = |e: tessera_raft::ProposeError| NsError::Unavailable(e.to_string());
    let nodes = match node.read_local(Query::ListNodes).await.map_err(read)? {
        QueryResponse::Nodes(nodes) => nodes,
        other => return Err(NsError::Internal(format!("unexpected answer {other:?}"))),
    };
    let partitions = match node.read_local(Query::PartitionMap).await.map_err(read)? {
        QueryResponse::PartitionMap(map) => map,
        other => return Err(NsError::Internal(format!("unexpected answer {other:?}"))),
    };
    Ok((nodes, partitions))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_nodes_get_one_timeout_of_grace_per_term() {
        let liveness = Liveness::new(Duration::from_millis(50), 10);
        assert!(liveness.judge(1, 7).1, "not heard yet, but the term just began");
        liveness.saw(1, 8);
        std::thread::sleep(Duration::from_millis(80));
        assert!(!liveness.judge(1, 7).1, "never heard in this term");
        assert!(!liveness.judge(1, 8).1, "heard too long ago");
        liveness.saw(1, 8);
        assert!(liveness.judge(1, 8).1);
        assert!(liveness.judge(2, 7).1, "a new term starts a new grace period");
    }
}
