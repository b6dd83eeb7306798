//! `tessera objserver --config FILE`: the TOML configuration, validated with
//! errors that name the offending field.
//!
//! ```toml
//! node_id = 11
//! listen = "127.0.0.1:7101"          # QUIC control + TCP bulk, same port
//! advertise = "10.0.0.21:7101"       # optional: announced to the cluster map (default: listen)
//! data_dir = "/var/lib/tessera/os1"  # one RocksDB per hosted partition
//! certs_dir = "/etc/tessera/certs"
//! identity = "os1"
//! nameservers = ["127.0.0.1:7001"]
//! metrics_listen = "127.0.0.1:9111"  # optional
//!
//! # Which partitions this server hosts comes from the name servers'
//! # partition map (their `[cluster] partitions`, `partition_replicas`).
//!
//! [raft]                             # optional: see the name server's
//! [data]                             # optional: stripe/chunk sizes, GC
//! ```

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
    /// The address other nodes reach this one at; defaults to `listen`.
    pub advertise: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub certs_dir: PathBuf,
    pub identity: String,
    /// Failure domain, reported to the cluster map.
    #[serde(default = "default_zone")]
    pub zone: String,
    pub nameservers: Vec<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
    #[serde(default)]
    pub raft: RaftTuning,
    #[serde(default)]
    pub data: DataSettings,
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
    /// How often a partition leader looks for orphan chunks.
    pub orphan_scan_interval_ms: u64,
    /// Chunks reserved more recently than this are never deleted as
    /// orphans (a repair of an earlier leader may still be writing them).
    pub orphan_grace_ms: u64,
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
            orphan_scan_interval_ms: 600_000,
            orphan_grace_ms: 3_600_000,
        }
    }
}

fn default_zone() -> String {
    "default".into()
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
            orphan_scan_interval: Duration::from_millis(self.orphan_scan_interval_ms),
            orphan_grace: Duration::from_millis(self.orphan_grace_ms),
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
        if self.node_id == 0 {
            bail!("node_id must not be 0");
        }
        if self.nameservers.is_empty() {
            bail!("nameservers: at least one address needed");
        }
        let data = &self.data;
        if data.stripe_data_bytes_max == 0 || data.stripe_data_bytes_max as u64 > EXTENT_BYTES_MAX {
            bail!("data.stripe_data_bytes_max must be in 1..={EXTENT_BYTES_MAX}");
        }
        if data.orphan_scan_interval_ms == 0 {
            bail!("data.orphan_scan_interval_ms must be positive");
        }
        if !(0.0..=1.0).contains(&data.compaction_live_ratio) {
            bail!("data.compaction_live_ratio must be in 0..=1");
        }
        if data.chunk_bytes_max < data.stripe_data_bytes_max as u64 {
            bail!("data.chunk_bytes_max must hold at least one stripe's fragment");
        }
        Ok(())
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
"#;

    #[test]
    fn parses_with_defaults() {
        let config = ObjServerConfig::parse(GOOD).expect("parses");
        assert_eq!(config.advertise, None);
        assert_eq!(config.zone, "default");
    }

    #[test]
    fn the_deploy_example_parses() {
        let config = ObjServerConfig::parse(include_str!("../../deploy/objserver.example.toml")).expect("parses");
        assert_eq!(config.node_id, 11);
        assert_eq!(config.data.stripe_data_bytes_max, 4 << 20);
    }

    #[test]
    fn bad_values_name_the_field() {
        let cases = [
            (format!("{GOOD}partitions = 4\n"), "partitions"),
            (GOOD.replace("node_id = 2", "node_id = 0"), "node_id"),
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
