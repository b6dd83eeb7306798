//! `tessera chunkserver --config FILE`: the TOML configuration, validated
//! with errors that name the offending field.
//!
//! ```toml
//! node_id = 1
//! listen = "127.0.0.1:7101"
//! certs_dir = "/etc/tessera/certs"   # from `tessera admin init`
//! identity = "cs1"                   # certs_dir/cs1.pem + cs1.key
//! metrics_listen = "127.0.0.1:9101"  # optional
//! name_servers = ["127.0.0.1:7001"]  # optional until name servers run
//!
//! [store]
//! [[store.disks]]
//! path = "/var/lib/tessera/disk1"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::file_store::FileStoreConfig;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkServerConfig {
    pub node_id: u64,
    /// UDP (QUIC control) and TCP (bulk data) on the same port.
    pub listen: SocketAddr,
    /// Address other nodes use to reach this one; defaults to `listen`.
    pub advertise: Option<SocketAddr>,
    #[serde(default = "default_zone")]
    pub zone: String,
    pub certs_dir: PathBuf,
    /// Name of this node's certificate in `certs_dir`.
    pub identity: String,
    pub metrics_listen: Option<SocketAddr>,
    #[serde(default)]
    pub name_servers: Vec<SocketAddr>,
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    #[serde(default = "default_scrub_bytes_per_sec")]
    pub scrub_bytes_per_sec: u64,
    #[serde(default = "default_scrub_pass_interval_s")]
    pub scrub_pass_interval_s: u64,
    pub store: FileStoreConfig,
}

fn default_zone() -> String {
    "default".into()
}

fn default_heartbeat_interval_ms() -> u64 {
    2_000
}

fn default_scrub_bytes_per_sec() -> u64 {
    32 * 1024 * 1024
}

fn default_scrub_pass_interval_s() -> u64 {
    3_600
}

impl ChunkServerConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in config {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let config: ChunkServerConfig = toml::from_str(text).context("parsing TOML")?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.node_id == 0 {
            bail!("node_id = 0: reserved (object servers mark a vacant fragment column with it)");
        }
        if self.store.disks.is_empty() {
            bail!("store.disks: at least one disk directory is required");
        }
        if self.heartbeat_interval_ms < 100 {
            bail!(
                "heartbeat_interval_ms = {}: must be at least 100",
                self.heartbeat_interval_ms
            );
        }
        if self.scrub_bytes_per_sec == 0 {
            bail!("scrub_bytes_per_sec: must be positive");
        }
        if self.identity.is_empty() {
            bail!("identity: must name a certificate in certs_dir");
        }
        Ok(())
    }

    pub fn advertised(&self) -> SocketAddr {
        self.advertise.unwrap_or(self.listen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
node_id = 1
listen = "127.0.0.1:7101"
certs_dir = "/tmp/certs"
identity = "cs1"
[store]
[[store.disks]]
path = "/tmp/d1"
"#;

    #[test]
    fn minimal_config_parses_with_defaults() {
        let config = ChunkServerConfig::parse(GOOD).expect("parses");
        assert_eq!(config.zone, "default");
        assert_eq!(config.heartbeat_interval_ms, 2_000);
        assert_eq!(config.advertised(), config.listen);
        assert_eq!(config.store.disks.len(), 1);
    }

    #[test]
    fn bad_values_name_the_field() {
        let cases = [
            (GOOD.replace("127.0.0.1:7101", "not-an-address"), "listen"),
            (GOOD.replace("node_id = 1", "node_id = 1\nbogus = 3"), "bogus"),
            (GOOD.replace("node_id = 1", "node_id = 0"), "node_id"),
            (GOOD.replace("[[store.disks]]\npath = \"/tmp/d1\"", ""), "disks"),
            (
                GOOD.replace("node_id = 1", "node_id = 1\nheartbeat_interval_ms = 5"),
                "heartbeat_interval_ms",
            ),
        ];
        for (text, field) in &cases {
            let error = format!("{:#}", ChunkServerConfig::parse(text).expect_err(field));
            assert!(error.contains(field), "error {error:?} should name {field}");
        }
    }
}
