//! `tessera nameserver --config FILE`: the TOML configuration, validated
//! with errors that name the offending field.
//!
//! ```toml
//! node_id = 1
//! listen = "127.0.0.1:7001"
//! advertise = "10.0.0.1:7001"         # optional, defaults to the bound address
//! data_dir = "/var/lib/tessera/ns1"   # RocksDB: Raft log + state machine
//! certs_dir = "/etc/tessera/certs"    # from `tessera admin init`
//! identity = "ns1"                    # certs_dir/ns1.pem + ns1.key
//! metrics_listen = "127.0.0.1:9101"   # optional
//!
//! [raft]                              # optional, every knob has a default
//! heartbeat_interval_ms = 200
//! election_timeout_min_ms = 1000
//! election_timeout_max_ms = 2000
//! snapshot_logs_since_last = 10000
//!
//! [cluster]                           # optional, every knob has a default
//! node_liveness_timeout_ms = 10000
//! reap_retention_ms = 86400000        # how long reaped uids are remembered
//! partitions = 16                     # object-server partitions, fixed at first placement
//! partition_replicas = 3              # object servers per partition
//! replica_replace_after_ms = 300000   # a dead object server's replicas move after this
//!
//! # Initial members, used only on the very first start of a fresh cluster.
//! [[bootstrap]]
//! id = 1
//! addr = "127.0.0.1:7001"
//! ```

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;
pub use tessera_raft::RaftTuning;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameServerConfig {
    pub node_id: u64,
    /// UDP (QUIC control) and TCP (bulk data) on the same port.
    pub listen: SocketAddr,
    /// Address other nodes use to reach this one; defaults to the bound one.
    pub advertise: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub certs_dir: PathBuf,
    /// Name of this node's certificate in `certs_dir`.
    pub identity: String,
    pub metrics_listen: Option<SocketAddr>,
    #[serde(default)]
    pub raft: RaftTuning,
    /// Initial voters; applied only if this node's log is empty.
    #[serde(default)]
    pub bootstrap: Vec<BootstrapMember>,
    #[serde(default)]
    pub cluster: ClusterSettings,
}

/// How the leader watches the rest of the cluster.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSettings {
    /// How often chunk servers are asked to heartbeat.
    pub heartbeat_interval_ms: u64,
    /// A node not heard from for this long is reported dead in the cluster
    /// map (object servers then repair its chunks).
    pub node_liveness_timeout_ms: u64,
    /// How often the leader hands pending deletes to the object servers.
    pub delete_handoff_interval_ms: u64,
    /// How long reaped uids are remembered. A write (PUT body, part)
    /// that takes longer than this between minting its uid and its commit
    /// is refused; a shorter retention keeps the reaped table smaller.
    pub reap_retention_ms: u64,
    /// How often the leader checks whether reaped uids can be forgotten.
    pub reap_prune_interval_ms: u64,
    /// The object-server partition count. The leader places the partitions
    /// once `partition_replicas` object servers are alive; the count is
    /// fixed from then on (uids are spread by it), later changes of this
    /// setting are ignored.
    pub partitions: u32,
    /// Object servers per partition (1 for a single-node cluster).
    pub partition_replicas: usize,
    /// An object server dead for this long has its partition replicas
    /// moved to live object servers (the partition leaders then change
    /// their Raft membership). Longer than a restart, so a reboot does not
    /// copy partitions around.
    pub replica_replace_after_ms: u64,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            heartbeat_interval_ms: 2_000,
            node_liveness_timeout_ms: 10_000,
            delete_handoff_interval_ms: 1_000,
            reap_retention_ms: 24 * 3600 * 1000,
            reap_prune_interval_ms: 10_000,
            partitions: 16,
            partition_replicas: 3,
            replica_replace_after_ms: 300_000,
        }
    }
}

impl ClusterSettings {
    /// Quick judgments for a cluster on one machine's loopback (tests).
    pub fn loopback() -> Self {
        ClusterSettings {
            heartbeat_interval_ms: 200,
            node_liveness_timeout_ms: 1_500,
            delete_handoff_interval_ms: 200,
            replica_replace_after_ms: 3_000,
            ..ClusterSettings::default()
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BootstrapMember {
    pub id: u64,
    pub addr: SocketAddr,
}

impl NameServerConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in config {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let config: NameServerConfig = toml::from_str(text).context("parsing TOML")?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.identity.is_empty() {
            bail!("identity: must name a certificate in certs_dir");
        }
        if self.data_dir.as_os_str().is_empty() {
            bail!("data_dir: must not be empty");
        }
        self.raft.validate()?;
        let cluster = &self.cluster;
        if cluster.heartbeat_interval_ms == 0 || cluster.node_liveness_timeout_ms < 2 * cluster.heartbeat_interval_ms {
            bail!("cluster.node_liveness_timeout_ms must be at least twice cluster.heartbeat_interval_ms (> 0)");
        }
        if cluster.reap_prune_interval_ms == 0 || cluster.reap_retention_ms < cluster.reap_prune_interval_ms {
            bail!("cluster.reap_retention_ms must be at least cluster.reap_prune_interval_ms (> 0)");
        }
        if cluster.partitions == 0 || cluster.partitions > 65_536 {
            bail!("cluster.partitions must be in 1..=65536, not {}", cluster.partitions);
        }
        if cluster.partition_replicas == 0 || cluster.partition_replicas > 7 {
            bail!(
                "cluster.partition_replicas must be in 1..=7, not {}",
                cluster.partition_replicas
            );
        }
        if cluster.replica_replace_after_ms < cluster.node_liveness_timeout_ms {
            bail!("cluster.replica_replace_after_ms must be at least cluster.node_liveness_timeout_ms");
        }
        self.validate_bootstrap()
    }

    fn validate_bootstrap(&self) -> anyhow::Result<()> {
        if self.bootstrap.is_empty() {
            return Ok(());
        }
        let ids: BTreeSet<u64> = self.bootstrap.iter().map(|m| m.id).collect();
        if ids.len() != self.bootstrap.len() {
            bail!("bootstrap: member ids must be unique");
        }
        let addrs: BTreeSet<SocketAddr> = self.bootstrap.iter().map(|m| m.addr).collect();
        if addrs.len() != self.bootstrap.len() {
            bail!("bootstrap: member addresses must be unique");
        }
        if !ids.contains(&self.node_id) {
            bail!(
                "bootstrap: must list this node (node_id = {}) or be empty",
                self.node_id
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
node_id = 1
listen = "127.0.0.1:7001"
data_dir = "/tmp/ns1"
certs_dir = "/tmp/certs"
identity = "ns1"
"#;

    #[test]
    fn minimal_config_parses_with_defaults() {
        let config = NameServerConfig::parse(GOOD).expect("parses");
        assert_eq!(config.raft.heartbeat_interval_ms, 200);
        assert!(config.bootstrap.is_empty());
        let raft = config.raft.openraft_config().expect("valid");
        assert_eq!(raft.snapshot_policy, openraft::SnapshotPolicy::LogsSinceLast(10_000));
    }

    #[test]
    fn bootstrap_and_tuning_parse() {
        let text = format!(
            "{GOOD}\n[raft]\nheartbeat_interval_ms = 100\nsnapshot_logs_since_last = 50\n\
             [[bootstrap]]\nid = 1\naddr = \"127.0.0.1:7001\"\n[[bootstrap]]\nid = 2\naddr = \"127.0.0.1:7002\"\n"
        );
        let config = NameServerConfig::parse(&text).expect("parses");
        assert_eq!(config.raft.heartbeat_interval_ms, 100);
        assert_eq!(config.raft.snapshot_logs_since_last, 50);
        assert_eq!(config.bootstrap.len(), 2);
    }

    #[test]
    fn bad_values_name_the_field() {
        let cases = [
            (GOOD.replace("127.0.0.1:7001", "nowhere"), "listen"),
            (GOOD.replace("node_id = 1", "node_id = 1\nbogus = 3"), "bogus"),
            (format!("{GOOD}\n[raft]\nheartbeat_interval_ms = 5\n"), "heartbeat_interval_ms"),
            (format!("{GOOD}\n[raft]\nelection_timeout_max_ms = 10\n"), "election_timeout_max_ms"),
            (format!("{GOOD}\n[raft]\nsnapshot_logs_since_last = 0\n"), "snapshot_logs_since_last"),
            (format!("{GOOD}\n[raft]\nheartbeat_ms = 100\n"), "heartbeat_ms"),
            (
                format!("{GOOD}\n[cluster]\nnode_liveness_timeout_ms = 1000\n"),
                "node_liveness_timeout_ms",
            ),
            (format!("{GOOD}\n[cluster]\npartitions = 0\n"), "cluster.partitions"),
            (format!("{GOOD}\n[cluster]\npartition_replicas = 9\n"), "partition_replicas"),
            (
                format!("{GOOD}\n[cluster]\nreplica_replace_after_ms = 10\n"),
                "replica_replace_after_ms",
            ),
            (format!("{GOOD}\n[[bootstrap]]\nid = 2\naddr = \"127.0.0.1:7002\"\n"), "bootstrap"),
            (
                format!("{GOOD}\n[[bootstrap]]\nid = 1\naddr = \"127.0.0.1:7001\"\n[[bootstrap]]\nid = 1\naddr = \"127.0.0.1:7002\"\n"),
                "unique",
            ),
        ];
        for (text, field) in &cases {
            let error = format!("{:#}", NameServerConfig::parse(text).expect_err(field));
            assert!(error.contains(field), "error {error:?} should name {field}");
        }
    }
}
