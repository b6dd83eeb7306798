//! The cluster map: nodes (role, address, zone, capacity, last heartbeat)
//! and the partition map (object-server partition → replica node ids).
//! Liveness is judged by the caller comparing `at_ms` with its own clock;
//! this module keeps only the data, plus a deterministic assignment helper
//! for proposers.

use std::collections::{BTreeMap, BTreeSet};

use super::codec::{self, be_tail, encode};
use super::{NamespaceError, NodeRecord, PartitionChange, PartitionPlacement, Res, Response, NODES, PARTITIONS};
use tessera_raft::kv::{KvRead, Txn};

/// Registers a node or updates it (upsert).
pub fn heartbeat<R: KvRead + ?Sized>(txn: &mut Txn<'_, R>, node: &NodeRecord) -> Res<Response> {
    txn.put(NODES, node.node_id.to_be_bytes().to_vec(), encode(node));
    Ok(Response::Ok)
}

/// Applies `changes` all or nothing: every partition's generation must be
/// the one its change was planned from; each changed partition's
/// generation goes up by one (a new partition starts at 0).
pub fn set_partitions<R: KvRead + ?Sized>(
    txn: &mut Txn<'_, R>,
    changes: &BTreeMap<u32, PartitionChange>,
) -> Res<Response> {
    let mut current = Vec::with_capacity(changes.len());
    for (partition, change) in changes {
        let key = partition.to_be_bytes().to_vec();
        let placement: Option<PartitionPlacement> = codec::get(&*txn, PARTITIONS, &key)?;
        if placement.as_ref().map(|p| p.generation) != change.expected_generation {
            return Err(NamespaceError::PreconditionFailed.into());
        }
        current.push((key, placement));
    }
    for ((key, placement), change) in current.into_iter().zip(changes.values()) {
        if change.replicas.is_empty() {
            txn.delete(PARTITIONS, key);
            continue;
        }
        let next = PartitionPlacement {
            replicas: change.replicas.clone(),
            generation: placement.map_or(0, |p| p.generation + 1),
        };
        txn.put(PARTITIONS, key, encode(&next));
    }
    Ok(Response::Ok)
}

/// Every node, by id.
pub fn nodes<R: KvRead + ?Sized>(view: &R) -> Res<Vec<NodeRecord>> {
    view.scan(NODES, &[], None, usize::MAX)?
        .iter()
        .map(|(_, value)| codec::decode(NODES, value))
        .collect()
}

/// The whole partition map.
pub fn partitions<R: KvRead + ?Sized>(view: &R) -> Res<BTreeMap<u32, PartitionPlacement>> {
    let mut out = BTreeMap::new();
    for (key, value) in view.scan(PARTITIONS, &[], None, usize::MAX)? {
        let partition = u32::from_be_bytes(be_tail::<4>(PARTITIONS, &key)?);
        out.insert(partition, codec::decode(PARTITIONS, &value)?);
    }
    Ok(out)
}

/// Object-server node id → failure domain (zone); a node missing from it
/// is in the zone "".
pub type Zones = BTreeMap<u64, String>;

fn zone_of(zones: &Zones, node: u64) -> &str {
    zones.get(&node).map_or("", String::as_str)
}

/// Spreads `partitions` partitions over `nodes` round-robin, `replicas`
/// distinct nodes each (fewer when there are fewer nodes), in distinct
/// zones while zones last: partition p takes nodes in id order starting
/// at the p-th, first those of zones it has no replica in yet.
/// Deterministic.
pub fn round_robin(partitions: u32, nodes: &[u64], zones: &Zones, replicas: usize) -> BTreeMap<u32, Vec<u64>> {
    let mut sorted = nodes.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let count = replicas.min(sorted.len());
    (0..partitions)
        .map(|partition| {
            let first = partition as usize;
            let rotated = (0..sorted.len()).map(|i| sorted[(first + i) % sorted.len()]);
            let mut chosen: Vec<u64> = Vec::with_capacity(count);
            for zones_may_repeat in [false, true] {
                for node in rotated.clone() {
                    let zone_taken = chosen.iter().any(|c| zone_of(zones, *c) == zone_of(zones, node));
                    if chosen.len() < count && !chosen.contains(&node) && (zones_may_repeat || !zone_taken) {
                        chosen.push(node);
                    }
                }
            }
            (partition, chosen)
        })
        .collect()
}

/// The first partition map: [`round_robin`] as changes of absent
/// partitions.
pub fn initial_changes(
    partitions: u32,
    nodes: &[u64],
    zones: &Zones,
    replicas: usize,
) -> BTreeMap<u32, PartitionChange> {
    round_robin(partitions, nodes, zones, replicas)
        .into_iter()
        .map(|(partition, replicas)| {
            let change = PartitionChange {
                replicas,
                expected_generation: None,
            };
            (partition, change)
        })
        .collect()
}

/// Replaces `dead` in every partition that holds it by the live node (not
/// already a replica) in a zone the survivors are not in if there is one,
/// with the fewest replicas. A partition keeps `dead`
/// when no such node exists (a replica is only ever swapped, never
/// dropped) and when fewer than a majority of its replicas are live: its
/// Raft group could not commit the membership change, and a moved-away
/// replica deletes its copy when it returns, so moving the replicas of a
/// partition without a live quorum (a single-replica partition above all)
/// could lose its data. Deterministic.
pub fn reassign(
    map: &BTreeMap<u32, PartitionPlacement>,
    dead: u64,
    live: &[u64],
    zones: &Zones,
) -> BTreeMap<u32, PartitionChange> {
    let mut load: BTreeMap<u64, usize> = live.iter().filter(|n| **n != dead).map(|node| (*node, 0)).collect();
    for node in map.values().flat_map(|p| &p.replicas) {
        if let Some(count) = load.get_mut(node) {
            *count += 1;
        }
    }
    let mut changed = BTreeMap::new();
    for (partition, placement) in map {
        let survivors = placement
            .replicas
            .iter()
            .filter(|r| **r != dead && live.contains(*r))
            .count();
        if !placement.replicas.contains(&dead) || survivors < placement.replicas.len() / 2 + 1 {
            continue;
        }
        let survivor_zones: BTreeSet<&str> = placement
            .replicas
            .iter()
            .filter(|r| **r != dead)
            .map(|r| zone_of(zones, *r))
            .collect();
        let candidate = load
            .iter()
            .filter(|(node, _)| !placement.replicas.contains(*node))
            .min_by_key(|(node, count)| (survivor_zones.contains(zone_of(zones, **node)), **count, **node))
            .map(|(node, _)| *node);
        let Some(node) = candidate else {
            continue;
        };
        *load.entry(node).or_default() += 1;
        // In place, so the survivors keep their order (and the first
        // replica stays first unless it is the dead one).
        let replicas = placement
            .replicas
            .iter()
            .map(|r| if *r == dead { node } else { *r })
            .collect();
        let change = PartitionChange {
            replicas,
            expected_generation: Some(placement.generation),
        };
        changed.insert(*partition, change);
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_spreads_distinct_replicas() {
        let map = round_robin(4, &[30, 10, 20], &Zones::new(), 3);
        assert_eq!(map[&0], vec![10, 20, 30]);
        assert_eq!(map[&1], vec![20, 30, 10]);
        assert_eq!(round_robin(2, &[1], &Zones::new(), 3)[&1], vec![1]);
        assert!(round_robin(2, &[], &Zones::new(), 3)[&0].is_empty());
    }

    fn placed(map: BTreeMap<u32, Vec<u64>>, generation: u64) -> BTreeMap<u32, PartitionPlacement> {
        map.into_iter()
            .map(|(p, replicas)| (p, PartitionPlacement { replicas, generation }))
            .collect()
    }

    #[test]
    fn reassign_replaces_the_dead_node_by_the_least_loaded() {
        // 0: [1, 2, 3], 1: [2, 3, 4], 2: [3, 4, 1].
        let map = placed(round_robin(3, &[1, 2, 3, 4], &Zones::new(), 3), 4);
        let changed = reassign(&map, 2, &[1, 3, 4, 5], &Zones::new());
        assert_eq!(changed.len(), 2, "partitions 0 and 1 hold node 2: {changed:?}");
        for (partition, change) in &changed {
            assert!(!change.replicas.contains(&2), "{partition}");
            assert_eq!(change.replicas.len(), 3);
            assert_eq!(change.expected_generation, Some(4));
            assert!(change.replicas.contains(&5), "the empty node takes it");
        }
        assert_eq!(changed[&1].replicas, vec![5, 3, 4], "survivors keep their places");
    }

    #[test]
    fn reassign_never_drops_a_replica_without_a_replacement() {
        let map = placed(round_robin(2, &[1, 2, 3], &Zones::new(), 3), 0);
        assert!(
            reassign(&map, 2, &[1, 3], &Zones::new()).is_empty(),
            "no spare node: keep the dead one"
        );
        assert!(
            reassign(&map, 2, &[1, 2, 3], &Zones::new()).is_empty(),
            "the dead node is no spare"
        );
    }

    #[test]
    fn replicas_spread_over_zones_and_replacements_keep_them_apart() {
        let zones: Zones = [(1, "a"), (2, "a"), (3, "b"), (4, "b"), (5, "c"), (6, "c")]
            .into_iter()
            .map(|(n, z)| (n, z.to_string()))
            .collect();
        let map = round_robin(6, &[1, 2, 3, 4, 5, 6], &zones, 3);
        for (partition, replicas) in &map {
            let distinct: BTreeSet<&str> = replicas.iter().map(|r| zone_of(&zones, *r)).collect();
            assert_eq!(distinct.len(), 3, "partition {partition}: {replicas:?}");
        }
        assert_eq!(map[&0], vec![1, 3, 5]);
        // Partition 0 loses node 3 (zone b): node 4 (zone b) replaces it,
        // although node 2 carries no more load.
        let changed = reassign(&placed(map, 0), 3, &[1, 2, 4, 5, 6], &zones);
        assert_eq!(changed[&0].replicas, vec![1, 4, 5]);
    }

    #[test]
    fn reassign_never_moves_a_partition_without_a_live_quorum() {
        let single = placed(round_robin(2, &[1, 2], &Zones::new(), 1), 0);
        assert!(
            reassign(&single, 1, &[2, 3], &Zones::new()).is_empty(),
            "a single replica's data would be lost"
        );
        let three = placed(round_robin(1, &[1, 2, 3], &Zones::new(), 3), 0);
        assert!(
            reassign(&three, 1, &[3, 4, 5], &Zones::new()).is_empty(),
            "1 and 2 are both down: no quorum to change membership"
        );
        assert_eq!(
            reassign(&three, 1, &[2, 3, 4], &Zones::new())[&0].replicas,
            vec![4, 2, 3]
        );
    }
}
