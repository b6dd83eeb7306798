//! `tessera admin ...`: cluster PKI and inspection of running nodes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use tessera_common::chunk_client::ChunkServerClient;
use tessera_common::pki::{self, NodeIdentity};
use tessera_common::rpc::{CallOptions, RpcClient, RpcClientConfig};

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Create a cluster CA and node certificates in DIR.
    Init {
        #[arg(long)]
        out: PathBuf,
        /// Node names to issue certificates for (repeatable).
        #[arg(long = "node")]
        nodes: Vec<String>,
        /// Succeed without changes when DIR already holds a CA.
        #[arg(long)]
        if_missing: bool,
    },
    /// Issue a certificate for one more node from the CA in DIR.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        node: String,
    },
    /// Inspect a chunk server.
    Chunkserver {
        /// Its RPC address.
        #[arg(long)]
        addr: SocketAddr,
        /// Cluster certificates directory and the identity to call with.
        #[arg(long)]
        certs: PathBuf,
        #[arg(long, default_value = "admin")]
        identity: String,
        #[command(subcommand)]
        what: ChunkserverQuery,
    },
}

#[derive(Subcommand)]
pub enum ChunkserverQuery {
    /// Disks with capacity, usage and health (JSON).
    Disks,
    /// Chunks with length, epoch and sealed state (JSON lines).
    Chunks,
}

pub async fn run(command: AdminCommand) -> anyhow::Result<()> {
    match command {
        AdminCommand::Init { out, nodes, if_missing } => {
            if if_missing && out.join("ca.pem").exists() {
                println!("{} already holds a cluster CA; nothing to do", out.display());
                return Ok(());
            }
            let mut names = nodes;
            if !names.iter().any(|n| n == "admin") {
                names.push("admin".into());
            }
            pki::init_cluster(&out, &names)
                .with_context(|| format!("initialising the cluster PKI in {}", out.display()))?;
            println!(
                "created cluster CA and certificates for {} in {}",
                names.join(", "),
                out.display()
            );
            Ok(())
        }
        AdminCommand::Issue { dir, node } => {
            pki::issue_node(&dir, &node).with_context(|| format!("issuing a certificate for {node}"))?;
            println!("issued {}/{node}.pem", dir.display());
            Ok(())
        }
        AdminCommand::Chunkserver {
            addr,
            certs,
            identity,
            what,
        } => {
            let identity = NodeIdentity::load(&certs, &identity)?;
            let transport = RpcClient::new(identity, RpcClientConfig::default())?;
            let options = CallOptions {
                timeout: Duration::from_secs(5),
                ..CallOptions::default()
            };
            let client = ChunkServerClient::new(transport, addr, options);
            query_chunkserver(&client, what).await
        }
    }
}

async fn query_chunkserver(client: &ChunkServerClient<RpcClient>, what: ChunkserverQuery) -> anyhow::Result<()> {
    match what {
        ChunkserverQuery::Disks => {
            let disks = client.disks().await.context("asking for disks")?;
            for d in disks {
                let line = serde_json::json!({
                    "path": d.path, "capacity_bytes": d.capacity_bytes, "used_bytes": d.used_bytes,
                    "chunks": d.chunks, "healthy": d.healthy, "corrupt_blocks": d.corrupt_blocks,
                });
                println!("{line}");
            }
        }
        ChunkserverQuery::Chunks => {
            let chunks = client.list().await.context("listing chunks")?;
            for c in chunks {
                let line = serde_json::json!({
                    "chunk": c.chunk.to_string(), "length": c.length, "epoch": c.epoch.0, "sealed": c.sealed,
                });
                println!("{line}");
            }
        }
    }
    Ok(())
}
