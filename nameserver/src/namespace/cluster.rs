//! The cluster map: nodes (role, address, zone, capacity, last heartbeat)
//! and the partition map (object-server partition → replica node ids).
//! Liveness is judged by the caller comparing `at_ms` with its own clock;
//! this module keeps only the data, plus a deterministic assignment helper
//! for proposers.

use std::collections::BTreeMap;

use super::codec::{self, be_tail, encode};
use super::{NodeRecord, Res, Response, NODES, PARTITIONS};
use tessera_raft::kv::{KvRead, Txn};

/// Registers a node or updates it (upsert).
pub fn heartbeat<R: KvRead + ?Sized>(txn: &mut Txn<'_, R>, node: &NodeRecord) -> Res<Response> {
    txn.put(NODES, node.node_id.to_be_bytes().to_vec(), encode(node));
    Ok(Response::Ok)
}

/// Sets the listed partitions' replicas; an empty list removes a partition.
pub fn set_partitions<R: KvRead + ?Sized>(
    txn: &mut Txn<'_, R>,
    assignments: &BTreeMap<u32, Vec<u64>>,
) -> Res<Response> {
    for (partition, nodes) in assignments {
        let key = partition.to_be_bytes().to_vec();
        if nodes.is_empty() {
            txn.delete(PARTITIONS, key);
        } else {
            txn.put(PARTITIONS, key, encode(nodes));
        }
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
pub fn partitions<R: KvRead + ?Sized>(view: &R) -> Res<BTreeMap<u32, Vec<u64>>> {
    let mut out = BTreeMap::new();
    for (key, value) in view.scan(PARTITIONS, &[], None, usize::MAX)? {
        let partition = u32::from_be_bytes(be_tail::<4>(PARTITIONS, &key)?);
        out.insert(partition, codec::decode(PARTITIONS, &value)?);
    }
    Ok(out)
}

/// Spreads `partitions` partitions over `nodes` round-robin, `replicas`
/// distinct nodes each (fewer when there are fewer nodes). Deterministic:
/// nodes are taken in id order.
pub fn round_robin(partitions: u32, nodes: &[u64], replicas: usize) -> BTreeMap<u32, Vec<u64>> {
    let mut sorted = nodes.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let count = replicas.min(sorted.len());
    (0..partitions)
        .map(|partition| {
            let first = partition as usize;
            let chosen = (0..count).map(|i| sorted[(first + i) % sorted.len()]).collect();
            (partition, chosen)
        })
        .collect()
}

/// Replaces `dead` in every partition that holds it by the live node (not
/// already a replica) with the fewest replicas; returns the changed
/// partitions (for a `SetPartitionMap`). Deterministic.
pub fn reassign(map: &BTreeMap<u32, Vec<u64>>, dead: u64, live: &[u64]) -> BTreeMap<u32, Vec<u64>> {
    let mut load: BTreeMap<u64, usize> = live.iter().map(|node| (*node, 0)).collect();
    for node in map.values().flatten() {
        if let Some(count) = load.get_mut(node) {
            *count += 1;
        }
    }
    let mut changed = BTreeMap::new();
    for (partition, replicas) in map {
        if !replicas.contains(&dead) {
            continue;
        }
        let candidate = load
            .iter()
            .filter(|(node, _)| !replicas.contains(*node))
            .min_by_key(|(node, count)| (**count, **node))
            .map(|(node, _)| *node);
        let mut next: Vec<u64> = replicas.iter().copied().filter(|node| *node != dead).collect();
        if let Some(node) = candidate {
            next.push(node);
            *load.entry(node).or_default() += 1;
        }
        changed.insert(*partition, next);
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_spreads_distinct_replicas() {
        let map = round_robin(4, &[30, 10, 20], 3);
        assert_eq!(map[&0], vec![10, 20, 30]);
        assert_eq!(map[&1], vec![20, 30, 10]);
        assert_eq!(round_robin(2, &[1], 3)[&1], vec![1]);
        assert!(round_robin(2, &[], 3)[&0].is_empty());
    }

    #[test]
    fn reassign_replaces_the_dead_node_by_the_least_loaded() {
        let map = round_robin(3, &[1, 2, 3], 2);
        let changed = reassign(&map, 2, &[1, 3, 4]);
        for (partition, replicas) in &changed {
            assert!(!replicas.contains(&2), "{partition}");
            assert_eq!(replicas.len(), 2);
        }
        assert!(changed.values().any(|r| r.contains(&4)));
    }
}
