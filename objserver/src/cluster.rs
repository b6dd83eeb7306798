//! The object server's view of the cluster, refreshed from the name
//! servers' cluster map: the chunk servers, the object servers and the
//! partition map; and the choice of chunk servers for a new chunk group:
//! distinct live servers, distinct zones first, least used first.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tessera_common::ids::{ChunkId, NodeId};
use tessera_common::ns_api::{ClusterMap, NodeInfo, NodeRole, ObjServerHeartbeat, PartitionReplicas};
use tessera_common::ns_client::NameServerClient;
use tessera_common::rpc::RpcClient;

use crate::placement::Redundancy;

/// A live chunk server a group may be placed on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkServerInfo {
    pub node: NodeId,
    pub addr: SocketAddr,
    pub zone: String,
    pub free_bytes: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlacementError {
    #[error("{wanted} chunk servers needed, {live} live")]
    NotEnoughServers { wanted: usize, live: usize },
}

/// The chunk servers as last heard from the name servers, the chunks
/// they report corrupt, the object servers' addresses and the partition
/// map. Cheap to clone.
#[derive(Clone, Default)]
pub struct ClusterView {
    servers: Arc<RwLock<Vec<ChunkServerInfo>>>,
    corrupt: Arc<RwLock<BTreeSet<(NodeId, ChunkId)>>>,
    objservers: Arc<RwLock<BTreeMap<u64, String>>>,
    /// `None` until a map with partitions was read.
    partitions: Arc<RwLock<Option<BTreeMap<u32, PartitionReplicas>>>>,
}

impl ClusterView {
    pub fn new() -> Self {
        ClusterView::default()
    }

    pub fn chunk_servers(&self) -> Vec<ChunkServerInfo> {
        self.servers.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// Where live chunk server `node` is now, if the cluster map lists it.
    pub fn addr_of(&self, node: NodeId) -> Option<SocketAddr> {
        let servers = self.servers.read().ok()?;
        servers.iter().find(|s| s.node == node).map(|s| s.addr)
    }

    pub fn set(&self, servers: Vec<ChunkServerInfo>) {
        if let Ok(mut current) = self.servers.write() {
            *current = servers;
        }
    }

    /// The partition map, once the name servers placed the partitions.
    pub fn partition_map(&self) -> Option<BTreeMap<u32, PartitionReplicas>> {
        self.partitions.read().ok()?.clone()
    }

    /// The RPC address object server `node` announced, if the map lists it.
    pub fn objserver_addr(&self, node: u64) -> Option<String> {
        self.objservers.read().ok()?.get(&node).cloned()
    }

    /// Takes everything from one cluster map.
    pub fn update(&self, map: &ClusterMap) {
        self.set(Self::from_nodes(&map.nodes));
        self.set_corrupt(&map.nodes);
        let objservers = map
            .nodes
            .iter()
            .filter(|n| n.role == NodeRole::ObjectServer)
            .map(|n| (n.id, n.addr.clone()))
            .collect();
        if let Ok(mut current) = self.objservers.write() {
            *current = objservers;
        }
        if !map.partitions.is_empty() {
            let partitions = map.partitions.iter().map(|p| (p.partition, p.clone())).collect();
            if let Ok(mut current) = self.partitions.write() {
                *current = Some(partitions);
            }
        }
    }

    /// Whether `node` reported `chunk` corrupt.
    pub fn is_corrupt(&self, node: NodeId, chunk: ChunkId) -> bool {
        self.corrupt.read().map(|c| c.contains(&(node, chunk))).unwrap_or(false)
    }

    fn set_corrupt(&self, nodes: &[NodeInfo]) {
        let reported = nodes
            .iter()
            .flat_map(|n| n.corrupt_chunks.iter().map(move |c| (NodeId(n.id), ChunkId(*c))))
            .collect();
        if let Ok(mut current) = self.corrupt.write() {
            *current = reported;
        }
    }

    /// Live chunk servers of a cluster map; nodes with unparsable
    /// addresses are skipped (and logged).
    pub fn from_nodes(nodes: &[NodeInfo]) -> Vec<ChunkServerInfo> {
        nodes
            .iter()
            .filter(|n| n.role == NodeRole::ChunkServer && n.alive && n.healthy)
            .filter_map(|n| match n.addr.parse() {
                Ok(addr) => Some(ChunkServerInfo {
                    node: NodeId(n.id),
                    addr,
                    zone: n.zone.clone(),
                    free_bytes: n.capacity_bytes.saturating_sub(n.used_bytes),
                }),
                Err(e) => {
                    tracing::warn!(node = n.id, addr = %n.addr, error = %e, "chunk server with a bad address");
                    None
                }
            })
            .collect()
    }

    /// Refreshes from the name servers every `interval` until the task is
    /// aborted. Cancellation safe.
    pub async fn refresh_loop(self, ns: Arc<NameServerClient<RpcClient>>, interval: Duration) {
        loop {
            match ns.cluster_map().await {
                Ok(map) => self.update(&map),
                Err(e) => tracing::debug!(error = %e, "cluster map refresh failed"),
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// Announces this object server to the name servers every `interval`
    /// until the task is aborted. Cancellation safe.
    pub async fn announce_loop(ns: Arc<NameServerClient<RpcClient>>, beat: ObjServerHeartbeat, interval: Duration) {
        loop {
            if let Err(e) = ns.objserver_heartbeat(&beat).await {
                tracing::debug!(error = %e, "object-server heartbeat not recorded");
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// Picks `count` distinct chunk servers, avoiding `exclude`: one per
    /// zone while zones last, most free space first.
    pub fn choose(&self, count: usize, exclude: &BTreeSet<NodeId>) -> Result<Vec<ChunkServerInfo>, PlacementError> {
        choose(&self.chunk_servers(), count, exclude)
    }
}

/// Whether `servers` can take `logical_bytes` more under `redundancy`:
/// at least its write quorum of servers must each have room for their
/// fragment share (`logical_bytes / data fragments`, rounded up). An
/// estimate: free space reported by heartbeats, and only this partition's
/// reservations are in `logical_bytes`.
pub fn check_room(servers: &[ChunkServerInfo], redundancy: Redundancy, logical_bytes: u64) -> Result<(), String> {
    let share = logical_bytes.div_ceil(redundancy.data_fragments() as u64);
    let with_room = servers.iter().filter(|s| s.free_bytes >= share).count();
    if with_room >= redundancy.write_quorum() {
        return Ok(());
    }
    Err(format!(
        "{logical_bytes} bytes need {share} free bytes on {} chunk servers, {with_room} have it",
        redundancy.write_quorum()
    ))
}

pub fn choose(
    servers: &[ChunkServerInfo],
    count: usize,
    exclude: &BTreeSet<NodeId>,
) -> Result<Vec<ChunkServerInfo>, PlacementError> {
    let mut candidates: Vec<&ChunkServerInfo> = servers.iter().filter(|s| !exclude.contains(&s.node)).collect();
    if candidates.len() < count {
        return Err(PlacementError::NotEnoughServers {
            wanted: count,
            live: candidates.len(),
        });
    }
    // Most free first; node id breaks ties so the choice is deterministic.
    candidates.sort_by(|a, b| b.free_bytes.cmp(&a.free_bytes).then(a.node.cmp(&b.node)));
    let mut chosen: Vec<ChunkServerInfo> = Vec::with_capacity(count);
    let mut zones = BTreeSet::new();
    for pass_allows_reused_zone in [false, true] {
        for server in &candidates {
            if chosen.len() == count {
                break;
            }
            let taken = chosen.iter().any(|c| c.node == server.node);
            if !taken && (pass_allows_reused_zone || !zones.contains(&server.zone)) {
                zones.insert(server.zone.clone());
                chosen.push((*server).clone());
            }
        }
    }
    debug_assert_eq!(chosen.len(), count);
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(id: u64, zone: &str, free: u64) -> ChunkServerInfo {
        ChunkServerInfo {
            node: NodeId(id),
            addr: format!("127.0.0.1:{}", 1000 + id).parse().expect("addr"),
            zone: zone.into(),
            free_bytes: free,
        }
    }

    #[test]
    fn room_needs_the_write_quorum_of_servers_with_their_share_free() {
        let ec = Redundancy::Ec { k: 4, m: 2 };
        let servers: Vec<ChunkServerInfo> = (1..=6).map(|i| server(i, "a", 100 * i)).collect();
        // A share of 100 bytes: all six have it.
        assert!(check_room(&servers, ec, 400).is_ok());
        // 200 bytes each: servers 2..=6, five, the quorum of 4+2.
        assert!(check_room(&servers, ec, 800).is_ok());
        // 300 bytes each: four servers, one short of the quorum.
        let refused = check_room(&servers, ec, 1200).expect_err("no room");
        assert!(refused.contains("4 have it"), "{refused}");
        assert!(check_room(&servers, Redundancy::Replicated { n: 3 }, 500).is_ok());
        assert!(check_room(&servers, Redundancy::Replicated { n: 3 }, 501).is_err());
        assert!(check_room(&servers, ec, u64::MAX).is_err(), "no overflow");
    }

    #[test]
    fn spreads_over_zones_then_fills_by_free_space() {
        let servers = vec![
            server(1, "a", 100),
            server(2, "a", 300),
            server(3, "b", 50),
            server(4, "c", 10),
            server(5, "b", 500),
        ];
        let ids = |chosen: Vec<ChunkServerInfo>| chosen.iter().map(|c| c.node.0).collect::<Vec<_>>();
        assert_eq!(ids(choose(&servers, 3, &BTreeSet::new()).expect("3")), vec![5, 2, 4]);
        assert_eq!(
            ids(choose(&servers, 5, &BTreeSet::new()).expect("5")),
            vec![5, 2, 4, 1, 3]
        );
        let exclude = BTreeSet::from([NodeId(5)]);
        assert_eq!(ids(choose(&servers, 2, &exclude).expect("2")), vec![2, 3]);
        assert_eq!(
            choose(&servers, 5, &exclude),
            Err(PlacementError::NotEnoughServers { wanted: 5, live: 4 })
        );
    }
}
