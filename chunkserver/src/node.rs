//! A running chunk server: opens the store, serves RPC, heartbeats and
//! scrubs until told to stop.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tessera_common::clock::TokioClock;
use tessera_common::ids::NodeId;
use tessera_common::pki::NodeIdentity;
use tessera_common::rpc::{Network, RpcClientConfig, RpcServer, RpcServerConfig};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::ChunkServerConfig;
use crate::file_store::FileChunkStore;
use crate::heartbeat::{run_heartbeats, HeartbeatIdentity, RpcRegistry};
use crate::scrub::{run_scrub, CorruptChunks, ScrubConfig};
use crate::service;
use crate::store::ChunkStore;

/// A chunk server serving on its port. Stop it with [`ChunkServer::shutdown`].
/// Its disks are files ([`FileChunkStore`]) except in the simulator.
pub struct ChunkServer<S: ChunkStore = FileChunkStore> {
    server: RpcServer,
    store: Arc<S>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl ChunkServer {
    /// Opens the disks (recovering torn tails), then serves.
    pub async fn start(config: ChunkServerConfig) -> anyhow::Result<Self> {
        let identity = NodeIdentity::load(&config.certs_dir, &config.identity)
            .with_context(|| format!("loading identity {:?}", config.identity))?;
        Self::start_on(config, Network::Tls(identity)).await
    }

    /// [`Self::start`] on `network` (the simulator's, or TLS with an
    /// identity loaded elsewhere); the config's certificates are not read.
    pub async fn start_on(config: ChunkServerConfig, network: Network) -> anyhow::Result<Self> {
        let store = Arc::new(
            FileChunkStore::open(config.store.clone())
                .await
                .context("opening the chunk store")?,
        );
        ChunkServer::serve_store(config, network, store).await
    }
}

impl<S: ChunkStore> ChunkServer<S> {
    /// Serves `store` (opened by the caller; `config.store` is not read).
    pub async fn serve_store(config: ChunkServerConfig, network: Network, store: Arc<S>) -> anyhow::Result<Self> {
        let corrupt = CorruptChunks::default();
        let router = service::router(store.clone(), corrupt.clone());
        let server = network
            .serve(config.listen, router, RpcServerConfig::default())
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let scrub = ScrubConfig {
            bytes_per_sec: config.scrub_bytes_per_sec,
            pass_interval: Duration::from_secs(config.scrub_pass_interval_s),
        };
        tasks.push(tokio::spawn(run_scrub(
            TokioClock::default(),
            store.clone(),
            corrupt.clone(),
            scrub,
            shutdown_rx.clone(),
        )));
        if !config.name_servers.is_empty() {
            let client = network
                .client(RpcClientConfig::default())
                .context("creating the RPC client")?;
            let registry = RpcRegistry::new(client, config.name_servers.clone());
            let heartbeat_identity = HeartbeatIdentity {
                node: NodeId(config.node_id),
                rpc_addr: advertised_addr(&config, server.local_addr()),
                zone: config.zone.clone(),
            };
            let interval = Duration::from_millis(config.heartbeat_interval_ms);
            tasks.push(tokio::spawn(run_heartbeats(
                TokioClock::default(),
                store.clone(),
                registry,
                heartbeat_identity,
                corrupt,
                interval,
                shutdown_rx,
            )));
        }
        tracing::info!(node = config.node_id, addr = %server.local_addr(), "chunk server serving");
        Ok(ChunkServer {
            server,
            store,
            shutdown,
            tasks,
        })
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.server.local_addr()
    }

    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// Stops background tasks, then lets calls in flight finish.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        self.server.shutdown().await;
    }
}

fn advertised_addr(config: &ChunkServerConfig, bound: std::net::SocketAddr) -> String {
    match config.advertise {
        Some(addr) => addr.to_string(),
        None => bound.to_string(),
    }
}

/// `tessera chunkserver`: serves until SIGINT or SIGTERM.
pub async fn run(config: ChunkServerConfig) -> anyhow::Result<()> {
    if let Some(addr) = config.metrics_listen {
        tessera_common::telemetry::serve_metrics(addr)?;
    }
    let node = ChunkServer::start(config).await?;
    tessera_common::signal::wait_for_shutdown_signal().await?;
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}
