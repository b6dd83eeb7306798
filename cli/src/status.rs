//! `tessera admin status`: the cluster as the name-server leader sees it
//! (every node with its liveness) and every object-server partition of
//! the partition map (its replicas, leader, epoch, objects, GC entries,
//! chunk groups, and repair backlog with an ETA at the configured rate).
//! One JSON object on stdout.

use anyhow::Context;
use tessera_common::ns_api::{ClusterMap, PartitionReplicas};
use tessera_common::ns_client::NameServerClient;
use tessera_common::os_api::PartitionStatus;
use tessera_common::os_client::{OsClient, OsClientConfig, OsTopology};
use tessera_common::rpc::RpcClient;

pub async fn status(ns: &NameServerClient<RpcClient>, transport: RpcClient) -> anyhow::Result<()> {
    let map = ns.cluster_map().await.context("reading the cluster map")?;
    let mut partition_json = Vec::new();
    let mut repair_pending_bytes = 0u64;
    let mut eta_s = 0f64;
    let config = OsClientConfig {
        rounds: 2,
        ..OsClientConfig::default()
    };
    let os = OsClient::new(transport, Vec::new(), 0, config);
    os.set_topology(OsTopology::from_cluster_map(&map));
    for placement in &map.partitions {
        let mut value = match os.partition_status(placement.partition).await {
            Ok(status) => {
                repair_pending_bytes += status.repair_pending_bytes;
                eta_s = eta_s.max(status.repair_pending_bytes as f64 / status.repair_bytes_per_sec.max(1) as f64);
                partition_value(&status)
            }
            Err(e) => serde_json::json!({ "partition": placement.partition, "error": e.to_string() }),
        };
        add_placement(&mut value, placement);
        partition_json.push(value);
    }
    let healthy = map.nodes.iter().all(|n| n.alive && n.healthy) && !map.partitions.is_empty();
    let out = serde_json::json!({
        "placed": !map.partitions.is_empty(),
        "healthy": healthy && partition_json.iter().all(|p| p.get("error").is_none()),
        "nodes": nodes_value(&map),
        "partitions": partition_json,
        "repair": { "pending_bytes": repair_pending_bytes, "eta_s": eta_s.ceil() },
    });
    println!("{out}");
    Ok(())
}

fn nodes_value(map: &ClusterMap) -> Vec<serde_json::Value> {
    map.nodes
        .iter()
        .map(|n| {
            serde_json::json!({
                "id": n.id, "role": format!("{:?}", n.role), "addr": n.addr, "zone": n.zone,
                "alive": n.alive, "healthy": n.healthy, "heartbeat_age_ms": n.heartbeat_age_ms,
                "capacity_bytes": n.capacity_bytes, "used_bytes": n.used_bytes,
            })
        })
        .collect()
}

fn add_placement(value: &mut serde_json::Value, placement: &PartitionReplicas) {
    if let Some(object) = value.as_object_mut() {
        object.insert("replicas".into(), serde_json::json!(placement.nodes));
        object.insert("generation".into(), serde_json::json!(placement.generation));
    }
}

fn partition_value(status: &PartitionStatus) -> serde_json::Value {
    let count = |state: &str| status.groups.iter().filter(|g| g.state == state).count();
    serde_json::json!({
        "partition": status.partition, "leader": status.leader, "epoch": status.epoch,
        "objects": status.objects, "gc_entries": status.gc_entries, "reserved_bytes": status.reserved_bytes,
        "groups": { "open": count("open"), "sealed": count("sealed"), "releasing": count("releasing"),
                    "released": count("released") },
        "written_bytes": status.groups.iter().map(|g| g.written_bytes).sum::<u64>(),
        "live_bytes": status.groups.iter().map(|g| g.live_bytes).sum::<u64>(),
        "lost_fragments": status.groups.iter().map(|g| u64::from(g.lost_fragments)).sum::<u64>(),
        "repair_pending_bytes": status.repair_pending_bytes,
    })
}
