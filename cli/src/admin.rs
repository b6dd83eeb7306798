//! `tessera admin ...`: cluster PKI, inspection of running nodes and the
//! name servers' Raft membership.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use tessera_common::chunk_client::ChunkServerClient;
use tessera_common::ns_api::{Member, MembersInfo};
use tessera_common::ns_client::{NameServerClient, NsClientConfig};
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
    /// Every node's liveness and every object-server partition (JSON).
    Status {
        #[command(flatten)]
        target: NsTarget,
    },
    /// Access keys (S3 credentials).
    Key {
        #[command(flatten)]
        target: NsTarget,
        #[command(subcommand)]
        action: crate::keys::KeyAction,
    },
    /// Buckets and the permissions keys hold on them.
    Bucket {
        #[command(flatten)]
        target: NsTarget,
        #[command(subcommand)]
        action: crate::keys::BucketAction,
    },
    /// Manage the name servers' Raft membership (served by the leader).
    Ns {
        #[command(flatten)]
        target: NsTarget,
        #[command(subcommand)]
        action: NsAction,
    },
    /// One HTTP GET (the containers' health check): exit 0 on a 2xx status.
    Probe(crate::probe::ProbeArgs),
}

/// Which name servers to call, as whom.
#[derive(clap::Args)]
pub struct NsTarget {
    /// Name-server RPC addresses, comma separated; the leader is found.
    #[arg(long, value_delimiter = ',', required = true)]
    servers: Vec<SocketAddr>,
    /// Cluster certificates directory and the identity to call with.
    #[arg(long)]
    certs: PathBuf,
    #[arg(long, default_value = "admin")]
    identity: String,
}

impl NsTarget {
    fn transport(&self) -> anyhow::Result<RpcClient> {
        let identity = NodeIdentity::load(&self.certs, &self.identity)
            .with_context(|| format!("loading identity {:?} from {}", self.identity, self.certs.display()))?;
        RpcClient::new(identity, RpcClientConfig::default()).context("creating the RPC client")
    }

    fn client(&self, config: NsClientConfig) -> anyhow::Result<NameServerClient<RpcClient>> {
        Ok(NameServerClient::new(self.transport()?, self.servers.clone(), config))
    }
}

#[derive(Subcommand)]
pub enum NsAction {
    /// Leader, term, voters and learners (one JSON object).
    List,
    /// Add a name server as a learner, wait until it caught up, promote it.
    Add {
        /// Its Raft node id.
        #[arg(long)]
        id: u64,
        /// Its RPC address.
        #[arg(long)]
        addr: SocketAddr,
        /// Leave it a learner.
        #[arg(long)]
        no_promote: bool,
    },
    /// Remove a name server from the group (never the last voter).
    Remove {
        #[arg(long)]
        id: u64,
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
        AdminCommand::Status { target } => {
            let transport = target.transport()?;
            let ns = NameServerClient::new(transport.clone(), target.servers.clone(), NsClientConfig::default());
            crate::status::status(&ns, transport).await
        }
        AdminCommand::Key { target, action } => {
            crate::keys::key(&target.client(NsClientConfig::default())?, action).await
        }
        AdminCommand::Bucket { target, action } => {
            crate::keys::bucket(&target.client(NsClientConfig::default())?, action).await
        }
        AdminCommand::Ns { target, action } => {
            let config = NsClientConfig {
                // Adding a learner waits until it caught up.
                timeout: Duration::from_secs(90),
                ..NsClientConfig::default()
            };
            ns_action(&target.client(config)?, action).await
        }
        AdminCommand::Probe(args) => crate::probe::run(args).await,
    }
}

async fn ns_action(client: &NameServerClient<RpcClient>, action: NsAction) -> anyhow::Result<()> {
    match action {
        NsAction::List => {
            let info = client.members().await.context("listing name-server members")?;
            println!("{}", members_json(&info));
        }
        NsAction::Add { id, addr, no_promote } => {
            let promote = !no_promote;
            client
                .add_member(id, &addr.to_string(), promote)
                .await
                .with_context(|| format!("adding name server {id} at {addr}"))?;
            let role = if promote { "voter" } else { "learner" };
            println!(
                "{}",
                serde_json::json!({ "added": id, "addr": addr.to_string(), "role": role })
            );
        }
        NsAction::Remove { id } => {
            client
                .remove_member(id)
                .await
                .with_context(|| format!("removing name server {id}"))?;
            println!("{}", serde_json::json!({ "removed": id }));
        }
    }
    Ok(())
}

fn members_json(info: &MembersInfo) -> serde_json::Value {
    let list = |members: &[Member]| -> Vec<serde_json::Value> {
        members
            .iter()
            .map(|m| serde_json::json!({ "id": m.id, "addr": m.addr, "matched": m.matched }))
            .collect()
    };
    serde_json::json!({
        "leader": info.leader, "term": info.term, "last_log": info.last_log, "applied": info.applied,
        "voters": list(&info.voters), "learners": list(&info.learners),
    })
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
