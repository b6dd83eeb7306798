//! The simulated cluster's storage hosts: object servers
//! ([`ObjServer::start_on`], each with a RocksDB directory that outlives its
//! crashes, cut back to its last sync by a power loss) and chunk servers (the real chunk service and heartbeats,
//! [`ChunkServer::serve_store`], over a [`MemChunkStore`] that outlives
//! crashes but loses what was not synced).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tessera_chunkserver::config::ChunkServerConfig;
use tessera_chunkserver::file_store::FileStoreConfig;
use tessera_chunkserver::node::ChunkServer;
use tessera_common::ids::NodeId;
use tessera_common::rpc::Network;
use tessera_objserver::config::{DataSettings, ObjServerConfig};
use tessera_objserver::node::ObjServer;
use tessera_objserver::partition::Partition;
use tessera_objserver::state::{Query, QueryResponse};
use tessera_raft::tuning::RaftTuning;

use crate::chunk_check::Layout;
use crate::chunks::MemChunkStore;
use crate::cluster::PORT;
use crate::net::TurmoilNetwork;
use crate::observer::Observer;

pub const OBJECT_SERVERS: u64 = 3;
/// How often an object server reports its partitions' Raft metrics.
const WATCH_INTERVAL: Duration = Duration::from_millis(100);
/// How often it audits each partition replica's state.
const AUDIT_INTERVAL: Duration = Duration::from_secs(1);
pub const CHUNK_SERVERS: u64 = 6;
/// Zones the chunk servers are spread over (placement spreads fragments).
const ZONES: u64 = 3;

pub fn object_host(index: u64) -> String {
    format!("os{index}")
}

pub fn chunk_host(index: u64) -> String {
    format!("cs{index}")
}

/// The node id of chunk server `index`.
pub fn chunk_node(index: u64) -> NodeId {
    NodeId(100 + index)
}

/// Raft timing of the simulated partitions (as the name servers').
fn raft_tuning() -> RaftTuning {
    RaftTuning {
        heartbeat_interval_ms: 50,
        election_timeout_min_ms: 300,
        election_timeout_max_ms: 600,
        propose_timeout_ms: 1_500,
        read_timeout_ms: 1_500,
        snapshot_logs_since_last: crate::cluster::SNAPSHOT_LOGS_SINCE_LAST,
        max_in_snapshot_log_to_keep: crate::cluster::MAX_IN_SNAPSHOT_LOG_TO_KEEP,
        ..RaftTuning::default()
    }
}

/// The configuration of object server `index` (node id `10 + index`).
pub fn object_server_config(index: u64, ip: IpAddr, name_servers: &[SocketAddr], data_root: &Path) -> ObjServerConfig {
    ObjServerConfig {
        node_id: 10 + index,
        listen: SocketAddr::new(ip, PORT),
        advertise: None,
        data_dir: data_root.join(object_host(index)),
        certs_dir: "/nonexistent".into(),
        identity: object_host(index),
        zone: format!("z{}", index % ZONES),
        nameservers: name_servers.to_vec(),
        metrics_listen: None,
        raft: raft_tuning(),
        data: DataSettings {
            cluster_refresh_interval_ms: 500,
            gc_scan_interval_ms: 1_000,
            compaction_interval_ms: 2_000,
            release_grace_ms: 3_000,
            repair_interval_ms: 2_000,
            orphan_scan_interval_ms: 2_000,
            orphan_grace_ms: 5_000,
            ..DataSettings::default()
        },
    }
}

/// The configuration of chunk server `index` ([`chunk_node`]).
pub fn chunk_server_config(index: u64, ip: IpAddr, name_servers: &[SocketAddr]) -> ChunkServerConfig {
    ChunkServerConfig {
        node_id: chunk_node(index).0,
        listen: SocketAddr::new(ip, PORT),
        advertise: None,
        zone: format!("z{}", index % ZONES),
        certs_dir: "/nonexistent".into(),
        identity: chunk_host(index),
        metrics_listen: None,
        name_servers: name_servers.to_vec(),
        heartbeat_interval_ms: 250,
        scrub_bytes_per_sec: 64 << 20,
        scrub_pass_interval_s: 5,
        // Not read: the store is the simulator's.
        store: FileStoreConfig::default(),
    }
}

/// The software of an object-server host: until the simulation crashes
/// the host, reports each partition replica's Raft metrics to `observer`
/// every [`WATCH_INTERVAL`] and audits its applied state every
/// [`AUDIT_INTERVAL`].
pub async fn object_server(config: ObjServerConfig, network: TurmoilNetwork, observer: Observer) -> turmoil::Result {
    let node_id = config.node_id;
    let server = ObjServer::start_on(config, Network::Custom(network.handle()))
        .await
        .map_err(|e| format!("n{node_id} did not start: {e:#}"))?;
    let audit_every = (AUDIT_INTERVAL.as_millis() / WATCH_INTERVAL.as_millis()) as u64;
    for round in 0u64.. {
        tokio::time::sleep(WATCH_INTERVAL).await;
        for partition in server.partitions() {
            let group = format!("p{}", partition.id());
            let metrics = partition.raft().metrics().borrow().clone();
            observer.report(&group, node_id, &metrics, now());
            if round % audit_every == 0 {
                let applied = metrics.last_applied.map_or(0, |log_id| log_id.index);
                audit(&partition, &group, node_id, applied, &observer).await;
            }
        }
    }
    Ok(())
}

/// Audits one replica's applied state (at least as new as `applied`: the
/// index is read first) and reads its chunk groups; a failed read is not a
/// violation (the replica may be shutting down).
async fn audit(partition: &Partition, group: &str, node_id: u64, applied: u64, observer: &Observer) {
    let raft = partition.raft();
    let answers = (
        raft.stale_query(Query::Audit).await,
        raft.stale_query(Query::Groups).await,
        raft.stale_query(Query::Lost).await,
    );
    match answers {
        (Ok(QueryResponse::Audit(report)), Ok(QueryResponse::Groups(groups)), Ok(QueryResponse::Lost(lost))) => {
            observer.audited(group, node_id, applied, report, Layout { groups, lost }, now())
        }
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => tracing::debug!(group, node_id, "audit not read: {e}"),
        other => observer.record_violation(now(), format!("{group} on n{node_id}: audit answered {other:?}")),
    }
}

fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

/// The software of a chunk-server host: after a crash, the disk has lost
/// whatever was not synced; then serves until the next crash.
pub async fn chunk_server(config: ChunkServerConfig, store: MemChunkStore, network: TurmoilNetwork) -> turmoil::Result {
    let node_id = config.node_id;
    store.recover_after_crash();
    let _server = ChunkServer::serve_store(config, Network::Custom(network.handle()), Arc::new(store))
        .await
        .map_err(|e| format!("n{node_id} did not start: {e:#}"))?;
    std::future::pending::<()>().await;
    Ok(())
}
