//! `tessera gateway --config FILE`: the TOML configuration, validated with
//! errors that name the offending field.
//!
//! ```toml
//! listen = "127.0.0.1:9000"          # S3 over HTTP
//! certs_dir = "/etc/tessera/certs"   # the cluster CA and this node's cert
//! identity = "gw1"
//! nameservers = ["127.0.0.1:7001"]
//! metrics_listen = "127.0.0.1:9100"  # optional
//! region = "us-east-1"               # optional
//! virtual_host_domains = ["s3.example.com"]  # optional: bucket.s3.example.com
//!
//! [protocol]                         # optional: DESIGN §4 TTLs, caches, limits
//! guard_ttl_ms = 300000
//! gc_ttl_ms = 900000
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;
use tessera_common::ns_api::StoragePolicy;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    pub certs_dir: PathBuf,
    pub identity: String,
    /// The object servers and their partitions come from these name
    /// servers' cluster map.
    pub nameservers: Vec<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
    #[serde(default = "default_region")]
    pub region: String,
    /// Base domains of virtual-host style requests (`bucket.domain`);
    /// path style always works.
    #[serde(default)]
    pub virtual_host_domains: Vec<String>,
    /// Storage policy of buckets created through S3: `ec:K:M` or `rep:N`.
    #[serde(default = "default_bucket_policy")]
    pub bucket_policy: String,
    #[serde(default)]
    pub protocol: ProtocolSettings,
}

/// The write protocol's TTLs (DESIGN §4, §11), caches and limits.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ProtocolSettings {
    /// Lifetime of a guard entry on the name-server leader.
    pub guard_ttl_ms: u64,
    /// Lifetime of a GC entry on the object server (> guard TTL).
    pub gc_ttl_ms: u64,
    /// How long an access key's secret, a grant or a bucket's settings are
    /// reused before asking the name servers again (revocation delay).
    pub auth_cache_ttl_ms: u64,
    /// Bytes of one object-server write while streaming a body.
    pub write_piece_bytes: usize,
    /// Object-server writes one upload keeps in flight.
    pub write_pipeline_depth: usize,
    /// Bytes of one object-server read while streaming a body.
    pub read_piece_bytes: usize,
    /// Largest request header block (431 beyond it).
    pub header_bytes_max: usize,
}

impl Default for ProtocolSettings {
    fn default() -> Self {
        ProtocolSettings {
            guard_ttl_ms: 300_000,
            gc_ttl_ms: 900_000,
            auth_cache_ttl_ms: 1_000,
            write_piece_bytes: 4 << 20,
            write_pipeline_depth: 4,
            read_piece_bytes: 4 << 20,
            header_bytes_max: 64 << 10,
        }
    }
}

fn default_region() -> String {
    "us-east-1".into()
}

fn default_bucket_policy() -> String {
    "ec:4:2".into()
}

impl GatewayConfig {
    pub fn load(path: &Path) -> anyhow::Result<GatewayConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        GatewayConfig::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<GatewayConfig> {
        let config: GatewayConfig = toml::from_str(text).context("parsing the gateway configuration")?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.nameservers.is_empty() {
            bail!("nameservers: at least one name server address is required");
        }
        if self.identity.is_empty() {
            bail!("identity: the name of this node's certificate is required");
        }
        self.policy()?;
        self.protocol.validate()
    }
}

impl GatewayConfig {
    /// The storage policy of new buckets.
    pub fn policy(&self) -> anyhow::Result<StoragePolicy> {
        self.bucket_policy
            .parse()
            .map_err(|e: String| anyhow::anyhow!("bucket_policy: {e}"))
    }
}

impl ProtocolSettings {
    fn validate(&self) -> anyhow::Result<()> {
        if self.guard_ttl_ms == 0 {
            bail!("protocol.guard_ttl_ms: must be positive");
        }
        if self.gc_ttl_ms <= self.guard_ttl_ms {
            bail!(
                "protocol.gc_ttl_ms ({}) must exceed protocol.guard_ttl_ms ({}): a GC entry must outlive the guard (DESIGN §4)",
                self.gc_ttl_ms,
                self.guard_ttl_ms
            );
        }
        if !(64 << 10..=8 << 20).contains(&self.write_piece_bytes) {
            bail!("protocol.write_piece_bytes: must be within 64 KiB..=8 MiB");
        }
        if !(64 << 10..=8 << 20).contains(&self.read_piece_bytes) {
            bail!("protocol.read_piece_bytes: must be within 64 KiB..=8 MiB");
        }
        if !(1..=64).contains(&self.write_pipeline_depth) {
            bail!("protocol.write_pipeline_depth: must be within 1..=64");
        }
        if self.header_bytes_max < 8 << 10 {
            bail!("protocol.header_bytes_max: must be at least 8 KiB");
        }
        Ok(())
    }

    /// Settings for tests: TTLs in seconds instead of minutes.
    pub fn short_ttls(guard_ttl_ms: u64, gc_ttl_ms: u64) -> ProtocolSettings {
        ProtocolSettings {
            guard_ttl_ms,
            gc_ttl_ms,
            ..ProtocolSettings::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        listen = "127.0.0.1:9000"
        certs_dir = "/tmp/certs"
        identity = "gw1"
        nameservers = ["127.0.0.1:7001"]
    "#;

    #[test]
    fn minimal_config_gets_defaults() {
        let config = GatewayConfig::parse(MINIMAL).expect("parse");
        assert_eq!(config.region, "us-east-1");
        assert_eq!(config.protocol, ProtocolSettings::default());
        assert!(config.virtual_host_domains.is_empty());
    }

    #[test]
    fn bad_settings_name_their_field() {
        let cases = [
            (
                format!("{MINIMAL}\n[protocol]\ngc_ttl_ms = 1000\nguard_ttl_ms = 2000\n"),
                "gc_ttl_ms",
            ),
            (format!("{MINIMAL}\nobjservers = [\"127.0.0.1:7201\"]\n"), "objservers"),
            (
                MINIMAL.replace("nameservers = [\"127.0.0.1:7001\"]", "nameservers = []"),
                "nameservers",
            ),
            (format!("{MINIMAL}\nbogus = 1\n"), "bogus"),
            (format!("{MINIMAL}\nbucket_policy = \"raid5\"\n"), "bucket_policy"),
            (
                format!("{MINIMAL}\n[protocol]\nwrite_piece_bytes = 1\n"),
                "write_piece_bytes",
            ),
        ];
        for (text, field) in cases {
            let error = format!("{:#}", GatewayConfig::parse(&text).expect_err("refused"));
            assert!(error.contains(field), "{field}: {error}");
        }
    }
}
