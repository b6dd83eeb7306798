//! `tessera objserver --config FILE`: the TOML configuration, validated with
//! errors that name the offending field.
//!
//! ```toml
//! node_id = 11
//! listen = "127.0.0.1:7101"          # QUIC control + TCP bulk, same port
//! data_dir = "/var/lib/tessera/os1"  # one RocksDB per hosted partition
//! certs_dir = "/etc/tessera/certs"
//! identity = "os1"
//! nameservers = ["127.0.0.1:7001"]
//! partitions = 8                     # the cluster's partition count
//! replicas = 3                       # replicas per partition
//! metrics_listen = "127.0.0.1:9111"  # optional
//!
//! # Every object server of the cluster (this one included): partition p is
//! # replicated on `replicas` of them, chosen round-robin by id.
//! [[objservers]]
//! id = 11
//! addr = "127.0.0.1:7101"
//!
//! [raft]                             # optional: see the name server's
//! [data]                             # optional: stripe/chunk sizes, GC
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;
use tessera_raft::RaftTuning;

use crate::partition::PartitionSettings;
use crate::state::EXTENT_BYTES_MAX;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjServerConfig {
    pub node_id: u64,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub certs_dir: PathBuf,
    pub identity: String,
    /// Failure domain, reported to the cluster map.
    #[serde(default = "default_zone")]
    pub zone: String,
    pub nameservers: Vec<SocketAddr>,
    pub partitions: u32,
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    pub objservers: Vec<Peer>,
    pub metrics_listen: Option<SocketAddr>,
    #[serde(default)]
    pub raft: RaftTuning,
    #[serde(default)]
    pub data: DataSettings,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub id: u64,
    pub addr: SocketAddr,
}

/// The data log's knobs.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataSettings {
    pub stripe_data_bytes_max: usize,
    pub chunk_bytes_max: u64,
    pub gc_scan_interval_ms: u64,
    pub cluster_refresh_interval_ms: u64,
    /// How long a read waits for the data fragments before decoding.
    pub read_deadline_ms: u64,
    pub compaction_interval_ms: u64,
    /// A sealed group is compacted when its live bytes fall under this
    /// fraction of the bytes written to it.
    pub compaction_live_ratio: f64,
    /// How long a compacted group's chunks are kept for reads in flight.
    pub release_grace_ms: u64,
    pub repair_interval_ms: u64,
    /// Rebuild rate limit per partition.
    pub repair_bytes_per_sec: u64,
}

impl Default for DataSettings {
    fn default() -> Self {
        DataSettings {
            stripe_data_bytes_max: EXTENT_BYTES_MAX as usize,
            chunk_bytes_max: 256 << 20,
            gc_scan_interval_ms: 5_000,
            cluster_refresh_interval_ms: 2_000,
            read_deadline_ms: 500,
            compaction_interval_ms: 10_000,
            compaction_live_ratio: 0.5,
            release_grace_ms: 30_000,
            repair_interval_ms: 10_000,
            repair_bytes_per_sec: 100 << 20,
        }
    }
}

fn default_zone() -> String {
    "default".into()
}

fn default_replicas() -> usize {
    3
}

impl DataSettings {
    pub fn partition_settings(&self) -> PartitionSettings {
        PartitionSettings {
            stripe_data_bytes_max: self.stripe_data_bytes_max,
            chunk_bytes_max: self.chunk_bytes_max,
            gc_scan_interval: Duration::from_millis(self.gc_scan_interval_ms),
            compaction_interval: Duration::from_millis(self.compaction_interval_ms),
            compaction_live_ratio: self.compaction_live_ratio,
            release_grace: Duration::from_millis(self.release_grace_ms),
            repair_interval: Duration::from_millis(self.repair_interval_ms),
            repair_bytes_per_sec: self.repair_bytes_per_sec,
        }
    }
}

impl ObjServerConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let config: ObjServerConfig = toml::from_str(text).context("parsing the object server config")?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        self.raft.validate()?;
        if self.partitions == 0 || self.partitions > 65_536 {
            bail!("partitions must be in 1..=65536, not {}", self.partitions);
        }
        if self.replicas == 0 || self.replicas > 7 {
            bail!("replicas must be in 1..=7, not {}", self.replicas);
        }
        if self.nameservers.is_empty() {
            bail!("nameservers: at least one address needed");
        }
        let ids: BTreeSet<u64> = self.objservers.iter().map(|p| p.id).collect();
        if ids.len() != self.objservers.len() {
            bail!("objservers: ids must be unique");
        }
        if !ids.contains(&self.node_id) {
            bail!("objservers must list this node (node_id {})", self.node_id);
        }
        let data = &self.data;
        if data.stripe_data_bytes_max == 0 || data.stripe_data_bytes_max as u64 > EXTENT_BYTES_MAX {
            bail!("data.stripe_data_bytes_max must be in 1..={EXTENT_BYTES_MAX}");
        }
        if !(0.0..=1.0).contains(&data.compaction_live_ratio) {
            bail!("data.compaction_live_ratio must be in 0..=1");
        }
        if data.chunk_bytes_max < data.stripe_data_bytes_max as u64 {
            bail!("data.chunk_bytes_max must hold at least one stripe's fragment");
        }
        Ok(())
    }

    /// The replicas of every partition: `replicas` distinct object servers,
    /// round-robin by id (the first one bootstraps the group).
    pub fn placement(&self) -> BTreeMap<u32, Vec<Peer>> {
        let mut peers = self.objservers.clone();
        peers.sort_by_key(|p| p.id);
        let count = self.replicas.min(peers.len());
        (0..self.partitions)
            .map(|p| {
                let chosen = (0..count)
                    .map(|i| peers[(p as usize + i) % peers.len()].clone())
                    .collect();
                (p, chosen)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
node_id = 2
listen = "127.0.0.1:7102"
data_dir = "/tmp/os"
certs_dir = "/tmp/certs"
identity = "os2"
nameservers = ["127.0.0.1:7001"]
partitions = 4
[[objservers]]
id = 1
addr = "127.0.0.1:7101"
[[objservers]]
id = 2
addr = "127.0.0.1:7102"
"#;

    #[test]
    fn parses_and_places_partitions_round_robin() {
        let config = ObjServerConfig::parse(GOOD).expect("parses");
        assert_eq!(config.replicas, 3);
        let placement = config.placement();
        assert_eq!(placement.len(), 4);
        let ids = |p: u32| placement[&p].iter().map(|peer| peer.id).collect::<Vec<_>>();
        assert_eq!(ids(0), vec![1, 2]);
        assert_eq!(ids(1), vec![2, 1]);
    }

    #[test]
    fn the_deploy_example_parses() {
        let config = ObjServerConfig::parse(include_str!("../../deploy/objserver.example.toml")).expect("parses");
        assert_eq!(config.placement().len(), 8);
        assert_eq!(config.data.stripe_data_bytes_max, 4 << 20);
    }

    #[test]
    fn bad_values_name_the_field() {
        let cases = [
            (GOOD.replace("partitions = 4", "partitions = 0"), "partitions"),
            (GOOD.replace("node_id = 2", "node_id = 3"), "objservers"),
            (GOOD.replace("node_id = 2", "node_id = 2\nbogus = 1"), "bogus"),
            (
                format!("{GOOD}\n[data]\nstripe_data_bytes_max = 0\n"),
                "stripe_data_bytes_max",
            ),
        ];
        for (text, field) in &cases {
            let error = format!("{:#}", ObjServerConfig::parse(text).expect_err(field));
            assert!(error.contains(field), "error {error:?} should name {field}");
        }
    }
}
