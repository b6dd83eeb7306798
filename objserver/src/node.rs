//! A running object server: one RPC server (Raft routes of every hosted
//! partition plus the object API), one Raft group per hosted partition
//! (which ones: [`crate::hosting`], from the name servers' partition map),
//! the cluster view refreshed from the name servers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tessera_common::ns_api::ObjServerHeartbeat;
use tessera_common::ns_client::{NameServerClient, NsClientConfig};
use tessera_common::pki::NodeIdentity;
use tessera_common::rpc::{Network, Router, RpcClient, RpcClientConfig, RpcServer, RpcServerConfig};
use tessera_raft::Registry;
use tokio::task::JoinHandle;

use crate::cluster::ClusterView;
use crate::config::ObjServerConfig;
use crate::group_io::{GroupIo, GroupIoOptions};
use crate::hosting::Hosting;
use crate::partition::Partition;
use crate::service::{self, Partitions};
use crate::state::PartitionMachine;

pub struct ObjServer {
    node_id: u64,
    server: RpcServer,
    client: RpcClient,
    partitions: Partitions,
    cluster: ClusterView,
    tasks: Vec<JoinHandle<()>>,
}

impl ObjServer {
    /// Serves, announces itself to the name servers and starts hosting the
    /// partitions their map gives it (in the background: the map may not
    /// exist yet).
    pub async fn start(config: ObjServerConfig) -> anyhow::Result<ObjServer> {
        config.validate()?;
        let identity = NodeIdentity::load(&config.certs_dir, &config.identity)
            .with_context(|| format!("loading identity {:?}", config.identity))?;
        Self::start_on(config, Network::Tls(identity)).await
    }

    /// [`Self::start`] on `network` (the simulator's, or TLS with an
    /// identity loaded elsewhere); the config's certificates are not read.
    pub async fn start_on(config: ObjServerConfig, network: Network) -> anyhow::Result<ObjServer> {
        config.validate()?;
        let client = network
            .client(RpcClientConfig::default())
            .context("creating the RPC client")?;
        let ns = Arc::new(NameServerClient::new(
            client.clone(),
            config.nameservers.clone(),
            NsClientConfig::default(),
        ));
        let cluster = ClusterView::new();
        let refresh = Duration::from_millis(config.data.cluster_refresh_interval_ms);
        let mut tasks = vec![tokio::spawn(cluster.clone().refresh_loop(ns.clone(), refresh))];
        let io_options = GroupIoOptions {
            read_deadline_ms: config.data.read_deadline_ms,
            ..GroupIoOptions::default()
        };
        let io = Arc::new(GroupIo::new(client.clone(), io_options).with_directory(cluster.clone()));
        let registry = Arc::new(Registry::<PartitionMachine>::new());
        let partitions = Partitions::default();
        let router = service::routes(
            tessera_raft::routes(Router::new(), registry.clone()),
            partitions.clone(),
        );
        let server_config = RpcServerConfig {
            shutdown_grace: Duration::from_secs(1),
            ..RpcServerConfig::default()
        };
        let server = match network.serve(config.listen, router, server_config).await {
            Ok(server) => server,
            Err(e) => {
                tasks.iter().for_each(JoinHandle::abort);
                client.shutdown();
                return Err(e.context(format!("listening on {}", config.listen)));
            }
        };
        let beat = ObjServerHeartbeat {
            node: config.node_id,
            rpc_addr: config.advertise.unwrap_or(server.local_addr()).to_string(),
            zone: config.zone.clone(),
        };
        tasks.push(tokio::spawn(ClusterView::announce_loop(ns.clone(), beat, refresh)));
        let hosting = Arc::new(Hosting {
            node_id: config.node_id,
            data_dir: config.data_dir.clone(),
            tuning: config.raft.clone(),
            client: client.clone(),
            registry,
            io,
            cluster: cluster.clone(),
            ns,
            settings: config.data.partition_settings(),
            partitions: partitions.clone(),
            changing: Default::default(),
        });
        tasks.push(tokio::spawn(hosting.run(refresh)));
        let node = ObjServer {
            node_id: config.node_id,
            server,
            client,
            partitions,
            cluster,
            tasks,
        };
        tracing::info!(node = config.node_id, addr = %node.addr(), "object server serving");
        Ok(node)
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    pub fn partitions(&self) -> Vec<Arc<Partition>> {
        self.partitions.all()
    }

    pub fn cluster(&self) -> &ClusterView {
        &self.cluster
    }

    /// Stops serving, then every partition, then the client.
    pub async fn shutdown(self) {
        for task in &self.tasks {
            task.abort();
        }
        self.server.shutdown().await;
        for partition in self.partitions.drain() {
            partition.shutdown().await;
        }
        self.client.shutdown();
        tracing::info!(node = self.node_id, "object server stopped");
    }
}

/// `tessera objserver --config FILE`: runs until SIGINT/SIGTERM.
pub async fn run(config: ObjServerConfig) -> anyhow::Result<()> {
    if let Some(addr) = config.metrics_listen {
        tessera_common::telemetry::serve_metrics(addr)?;
    }
    let node = ObjServer::start(config).await?;
    tessera_common::signal::wait_for_shutdown_signal().await?;
    node.shutdown().await;
    Ok(())
}
