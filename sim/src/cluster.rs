//! The simulated cluster's hosts: three real name servers
//! ([`RaftNode::start_on`] over [`TurmoilNetwork`]), each with its own
//! RocksDB directory that outlives crashes, so a restarted host recovers
//! from what it wrote, as after `kill -9`, or from what it synced, after a
//! power loss ([`crate::power`]).

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use tessera_common::rpc::Network;
use tessera_nameserver::config::NameServerConfig;
use tessera_nameserver::raft::RaftNode;

use crate::net::TurmoilNetwork;
use crate::observer::{Observer, NAME_SERVICE};

/// Port every simulated node listens on (each host has its own address).
pub const PORT: u16 = 7000;
pub const NAME_SERVERS: u64 = 3;

/// Raft timing of the simulated name servers: short, so a run sees many
/// elections in little simulated time.
const HEARTBEAT_MS: u64 = 50;
const ELECTION_MIN_MS: u64 = 300;
const ELECTION_MAX_MS: u64 = 600;
const CALL_WAIT_MS: u64 = 1_500;
/// Snapshots every few hundred entries, keeping few behind them, so a run
/// builds snapshots, purges the log under them, and sends a node that was
/// down or cut off a snapshot instead of entries (the defaults, 10,000 and
/// 1,000, are never reached in a run).
pub const SNAPSHOT_LOGS_SINCE_LAST: u64 = 300;
pub const MAX_IN_SNAPSHOT_LOG_TO_KEEP: u64 = 50;

pub fn host_name(node: u64) -> String {
    format!("ns{node}")
}

/// The configuration of name server `node` of `members`.
/// With `storage`, the name servers place partitions on three object
/// servers and judge liveness quickly.
pub fn name_server_config(
    node: u64,
    members: &[(u64, IpAddr)],
    data_root: &Path,
    storage: bool,
) -> anyhow::Result<NameServerConfig> {
    let ip = members
        .iter()
        .find(|(id, _)| *id == node)
        .map(|(_, ip)| *ip)
        .ok_or_else(|| anyhow::anyhow!("n{node} is not a member"))?;
    let data_dir: PathBuf = data_root.join(host_name(node));
    let mut text = format!(
        "node_id = {node}\nlisten = \"{}\"\ndata_dir = \"{}\"\ncerts_dir = \"/nonexistent\"\nidentity = \"{}\"\n\n\
         [raft]\nheartbeat_interval_ms = {HEARTBEAT_MS}\nelection_timeout_min_ms = {ELECTION_MIN_MS}\n\
         election_timeout_max_ms = {ELECTION_MAX_MS}\npropose_timeout_ms = {CALL_WAIT_MS}\n\
         read_timeout_ms = {CALL_WAIT_MS}\nsnapshot_logs_since_last = {SNAPSHOT_LOGS_SINCE_LAST}\n\
         max_in_snapshot_log_to_keep = {MAX_IN_SNAPSHOT_LOG_TO_KEEP}\n",
        SocketAddr::new(ip, PORT),
        data_dir.display(),
        host_name(node),
    );
    if storage {
        text.push_str(
            "\n[cluster]\npartitions = 2\npartition_replicas = 3\nheartbeat_interval_ms = 250\n\
             node_liveness_timeout_ms = 2000\ndelete_handoff_interval_ms = 250\nreplica_replace_after_ms = 5000\n",
        );
    }
    for (id, ip) in members {
        let _ = write!(
            text,
            "\n[[bootstrap]]\nid = {id}\naddr = \"{}\"\n",
            SocketAddr::new(*ip, PORT)
        );
    }
    NameServerConfig::parse(&text)
}

/// The software of a name-server host: starts the node (bootstrapping on
/// first start), reports its Raft metrics to `observer`, and runs until
/// the simulation crashes the host.
pub async fn name_server(config: NameServerConfig, network: TurmoilNetwork, observer: Observer) -> turmoil::Result {
    let node_id = config.node_id;
    let node = RaftNode::start_on(config, Network::Custom(network.handle()))
        .await
        .map_err(|e| format!("n{node_id} did not start: {e:#}"))?;
    let mut metrics = node.metrics();
    loop {
        let snapshot = metrics.borrow_and_update().clone();
        observer.report(
            NAME_SERVICE,
            node_id,
            &snapshot,
            turmoil::sim_elapsed().unwrap_or_default(),
        );
        if metrics.changed().await.is_err() {
            // The node stopped on its own (a storage error): a failure.
            return Err(format!("n{node_id}'s Raft stopped").into());
        }
    }
}

/// Every name server's address in the simulation.
pub fn addresses(members: &[(u64, IpAddr)]) -> Vec<SocketAddr> {
    members.iter().map(|(_, ip)| SocketAddr::new(*ip, PORT)).collect()
}
