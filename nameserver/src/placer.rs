//! The leader's placement of object-server partitions (DESIGN §1): it
//! writes the partition map once enough object servers are alive, and
//! moves the replicas of an object server dead for longer than
//! `replica_replace_after_ms` to live ones. The map is only the target:
//! object servers start the replicas the map gives them, and each
//! partition's Raft leader changes its membership to match (adding the new
//! replica as a learner first, so it catches up before it votes).
//!
//! Every change is planned from the map's generations and refused whole if
//! the map moved meanwhile (a new leader, a concurrent plan), so a stale
//! plan never undoes a newer one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::cluster_api::{read_nodes_and_partitions, Liveness};
use crate::namespace::{cluster, Command, NodeRole, PartitionChange, PartitionPlacement, Response};
use crate::raft::NsGroup;

/// What the placer is asked to keep.
#[derive(Clone, Debug)]
pub struct PlacementSettings {
    pub partitions: u32,
    pub replicas: usize,
    pub replace_after: Duration,
    pub interval: Duration,
}

/// An object server as the leader judges it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjServerState {
    pub node: u64,
    pub zone: String,
    pub alive: bool,
    /// Time since last heard from (since the term began if never).
    pub silent: Duration,
}

/// The next change of the map, if any: the first placement once enough
/// object servers are alive (replicas in distinct zones while zones last),
/// else the replacement of one long-dead object server (the lowest id) by
/// live ones. Pure, for tests.
pub fn plan(
    map: &BTreeMap<u32, PartitionPlacement>,
    servers: &[ObjServerState],
    settings: &PlacementSettings,
) -> Option<BTreeMap<u32, PartitionChange>> {
    let live: Vec<u64> = servers.iter().filter(|s| s.alive).map(|s| s.node).collect();
    let zones: cluster::Zones = servers.iter().map(|s| (s.node, s.zone.clone())).collect();
    if map.is_empty() {
        if live.len() < settings.replicas {
            return None;
        }
        return Some(cluster::initial_changes(
            settings.partitions,
            &live,
            &zones,
            settings.replicas,
        ));
    }
    let placed = |node: u64| map.values().any(|p| p.replicas.contains(&node));
    servers
        .iter()
        .filter(|s| !s.alive && s.silent >= settings.replace_after && placed(s.node))
        .map(|s| cluster::reassign(map, s.node, &live, &zones))
        .find(|changes| !changes.is_empty())
}

/// Runs until aborted. Cancellation safe: every change is conditional.
pub async fn run(node: NsGroup, liveness: Arc<Liveness>, settings: PlacementSettings) {
    loop {
        tokio::time::sleep(settings.interval).await;
        if !node.is_leader() {
            continue;
        }
        if let Err(e) = pass(&node, &liveness, &settings).await {
            tracing::info!(error = %e, "partition placement pass failed; the next pass retries");
        }
    }
}

async fn pass(node: &NsGroup, liveness: &Liveness, settings: &PlacementSettings) -> Result<(), String> {
    let (nodes, map) = read_nodes_and_partitions(node).await.map_err(|e| e.to_string())?;
    let term = node.current_term();
    let servers: Vec<ObjServerState> = nodes
        .iter()
        .filter(|n| n.role == NodeRole::ObjectServer)
        .map(|n| {
            let (silent, alive) = liveness.judge(term, n.node_id);
            ObjServerState {
                node: n.node_id,
                zone: n.zone.clone(),
                alive,
                silent,
            }
        })
        .collect();
    let Some(changes) = plan(&map, &servers, settings) else {
        return Ok(());
    };
    let first = map.is_empty();
    match node
        .propose_local(Command::SetPartitionMap {
            changes: changes.clone(),
        })
        .await
    {
        Ok(Response::Ok) => {
            metrics::counter!("ns_partition_map_changes_total").increment(changes.len() as u64);
            if first {
                tracing::info!(
                    partitions = changes.len(),
                    replicas = settings.replicas,
                    "partitions placed"
                );
            } else {
                tracing::warn!(?changes, "replicas of a dead object server moved");
            }
            Ok(())
        }
        Ok(other) => Err(format!("partition map change refused: {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> PlacementSettings {
        PlacementSettings {
            partitions: 4,
            replicas: 3,
            replace_after: Duration::from_secs(10),
            interval: Duration::from_secs(1),
        }
    }

    fn state(node: u64, alive: bool, silent_s: u64) -> ObjServerState {
        ObjServerState {
            node,
            zone: String::new(),
            alive,
            silent: Duration::from_secs(silent_s),
        }
    }

    fn applied(changes: BTreeMap<u32, PartitionChange>, generation: u64) -> BTreeMap<u32, PartitionPlacement> {
        changes
            .into_iter()
            .map(|(p, c)| {
                (
                    p,
                    PartitionPlacement {
                        replicas: c.replicas,
                        generation,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn places_once_enough_object_servers_are_alive() {
        let empty = BTreeMap::new();
        let two = [state(1, true, 0), state(2, true, 0), state(3, false, 30)];
        assert_eq!(plan(&empty, &two, &settings()), None, "3 replicas need 3 live servers");
        let three = [state(1, true, 0), state(2, true, 0), state(3, true, 0)];
        let changes = plan(&empty, &three, &settings()).expect("placed");
        assert_eq!(changes.len(), 4);
        assert!(changes
            .values()
            .all(|c| c.replicas.len() == 3 && c.expected_generation.is_none()));
    }

    #[test]
    fn moves_only_replicas_of_servers_dead_past_the_delay() {
        let all = [1, 2, 3, 4].map(|n| state(n, true, 0));
        let map = applied(cluster::initial_changes(4, &[1, 2, 3], &cluster::Zones::new(), 3), 0);
        assert_eq!(plan(&map, &all, &settings()), None, "all alive");
        let briefly = [
            state(1, true, 0),
            state(2, false, 5),
            state(3, true, 0),
            state(4, true, 0),
        ];
        assert_eq!(plan(&map, &briefly, &settings()), None, "dead, but not for long");
        let long = [
            state(1, true, 0),
            state(2, false, 11),
            state(3, true, 0),
            state(4, true, 0),
        ];
        let changes = plan(&map, &long, &settings()).expect("moved");
        assert_eq!(changes.len(), 4, "every partition held node 2");
        for change in changes.values() {
            assert!(!change.replicas.contains(&2) && change.replicas.contains(&4));
            assert_eq!(change.expected_generation, Some(0));
        }
        let unplaced_dead = [
            state(1, true, 0),
            state(2, true, 0),
            state(3, true, 0),
            state(4, false, 99),
        ];
        assert_eq!(plan(&map, &unplaced_dead, &settings()), None, "node 4 held nothing");
    }
}
