//! `tessera dev`: the whole cluster in one process for a laptop — one name
//! server, one object server, six chunk servers (EC 4+2, a directory each
//! under the data directory) and the S3 gateway, over real loopback
//! sockets, with `/metrics` served.
//!
//! The first start creates an access key and writes `DIR/dev.json`
//! (`{"s3_endpoint", "access_key", "secret_key", "region", ...}`) for
//! scripts; a restart on the same directory reuses it and keeps every
//! object. Once S3 is served it prints the endpoint, the keys and a line
//! `ready`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tessera_gateway::config::ProtocolSettings;

use crate::local_cluster::{write_atomically, GatewaySpec, LocalCluster, LocalSpec};

const CHUNK_SERVERS: usize = 6;
const PARTITIONS: u32 = 4;

#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// Where the cluster keeps its data (created if missing).
    #[arg(long, default_value_os_t = default_data_dir())]
    pub data: PathBuf,
    /// Where S3 is served.
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub s3: SocketAddr,
    /// Where Prometheus metrics are served.
    #[arg(long, default_value = "127.0.0.1:9100")]
    pub metrics: SocketAddr,
}

fn default_data_dir() -> PathBuf {
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/tessera-dev"),
        None => PathBuf::from("tessera-dev"),
    }
}

/// What `DIR/dev.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DevInfo {
    pub s3_endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
    pub metrics: String,
    pub data_dir: PathBuf,
    pub certs_dir: PathBuf,
    pub nameserver: SocketAddr,
}

/// The access key of an earlier start, if any.
fn earlier_keys(path: &Path) -> anyhow::Result<Option<(String, String)>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let info: DevInfo = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(Some((info.access_key, info.secret_key)))
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    tessera_common::telemetry::serve_metrics(args.metrics)?;
    let spec = LocalSpec {
        gateway: Some(GatewaySpec {
            listen: args.s3,
            protocol: ProtocolSettings::default(),
            virtual_host_domains: vec!["localhost".into()],
        }),
        ..LocalSpec::new(CHUNK_SERVERS, PARTITIONS)
    };
    let cluster = LocalCluster::start(&args.data, &spec).await?;
    let served = serve(&cluster, &args).await;
    if let Err(e) = &served {
        tracing::error!(error = %format!("{e:#}"), "tessera dev failed");
    }
    cluster.shutdown().await;
    served
}

async fn serve(cluster: &LocalCluster, args: &DevArgs) -> anyhow::Result<()> {
    let info_path = args.data.join("dev.json");
    let (access_key, secret_key) = match earlier_keys(&info_path)? {
        Some(keys) => keys,
        None => {
            let key = cluster.create_key("dev").await?;
            (key.key_id, key.secret)
        }
    };
    let info = DevInfo {
        s3_endpoint: cluster.s3_endpoint().context("the dev cluster has a gateway")?,
        access_key,
        secret_key,
        region: "us-east-1".into(),
        metrics: format!("http://{}/metrics", args.metrics),
        data_dir: args.data.clone(),
        certs_dir: cluster.certs.clone(),
        nameserver: cluster.ns_addr,
    };
    write_atomically(&info_path, serde_json::to_string_pretty(&info)?.as_bytes())?;
    println!("S3 endpoint:  {}", info.s3_endpoint);
    println!("access key:   {}", info.access_key);
    println!("secret key:   {}", info.secret_key);
    println!("region:       {}", info.region);
    println!("metrics:      {}", info.metrics);
    println!(
        "data:         {} (settings in {})",
        args.data.display(),
        info_path.display()
    );
    println!("ready");
    tessera_common::signal::wait_for_shutdown_signal().await?;
    tracing::info!("shutting down");
    Ok(())
}
