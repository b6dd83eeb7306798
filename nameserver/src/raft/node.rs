//! A running name server: its RPC server (Raft routes of its registry, the
//! client API and the admin API) and its one Raft group ([`crate::raft::GROUP`]
//! of the namespace), behind [`RaftNode`].
//!
//! Any node accepts [`RaftNode::propose`] and [`RaftNode::read`]: the leader
//! serves them, a follower forwards them once to the leader (see
//! [`tessera_raft::GroupHandle`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tessera_common::pki::NodeIdentity;
use tessera_common::rpc::{Network, Router, RpcClient, RpcClientConfig, RpcServer, RpcServerConfig};
use tessera_raft::{GroupOptions, RaftGroup, Registry};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster_api::Liveness;
use crate::config::NameServerConfig;
use crate::namespace::{Command, Query, QueryResponse, Response};
use crate::raft::{Namespace, ProposeError, Raft, RaftMetrics, RaftNodeId, GROUP};

/// A name server's Raft node. Stop it with [`RaftNode::shutdown`].
pub struct RaftNode {
    group: RaftGroup<Namespace>,
    server: RpcServer,
    client: RpcClient,
    advertise: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl RaftNode {
    /// Opens the database, starts Raft and serves. Bootstraps the cluster
    /// from `config.bootstrap` if this node has never been initialized.
    pub async fn start(config: NameServerConfig) -> anyhow::Result<RaftNode> {
        config.validate()?;
        let identity = NodeIdentity::load(&config.certs_dir, &config.identity)
            .with_context(|| format!("loading identity {:?}", config.identity))?;
        Self::start_on(config, Network::Tls(identity)).await
    }

    /// [`Self::start`] on `network` (the simulator's, or TLS with an
    /// identity loaded elsewhere); the config's certificates are not read.
    pub async fn start_on(config: NameServerConfig, network: Network) -> anyhow::Result<RaftNode> {
        config.validate()?;
        let client = network
            .client(RpcClientConfig::default())
            .context("creating the RPC client")?;
        let registry = Arc::new(Registry::<Namespace>::new());
        let options = GroupOptions {
            group: GROUP,
            node_id: config.node_id,
            data_dir: config.data_dir.clone(),
            tuning: config.raft.clone(),
        };
        let group = match RaftGroup::start(options, client.clone(), registry.clone()).await {
            Ok(group) => group,
            Err(e) => {
                client.shutdown();
                return Err(e);
            }
        };
        let router = tessera_raft::routes(Router::new(), registry);
        // Extension point: the client-facing API (guards, names, heartbeats).
        let liveness = Arc::new(Liveness::new(
            Duration::from_millis(config.cluster.node_liveness_timeout_ms),
            config.cluster.heartbeat_interval_ms,
        ));
        let (router, api_task) = crate::api::routes(router, group.handle(), liveness.clone());
        let placement = crate::placer::PlacementSettings {
            partitions: config.cluster.partitions,
            replicas: config.cluster.partition_replicas,
            replace_after: Duration::from_millis(config.cluster.replica_replace_after_ms),
            interval: Duration::from_millis(config.cluster.heartbeat_interval_ms),
        };
        let placer = tokio::spawn(crate::placer::run(group.handle(), liveness.clone(), placement));
        let deleter = tokio::spawn(crate::deleter::run(
            group.handle(),
            liveness,
            client.clone(),
            Duration::from_millis(config.cluster.delete_handoff_interval_ms),
        ));
        let pruner = tokio::spawn(crate::reap_pruner::run(
            group.handle(),
            Duration::from_millis(config.cluster.reap_prune_interval_ms),
            Duration::from_millis(config.cluster.reap_retention_ms),
        ));
        let server_config = RpcServerConfig {
            shutdown_grace: Duration::from_secs(1),
            ..RpcServerConfig::default()
        };
        let server = match network.serve(config.listen, router, server_config).await {
            Ok(server) => server,
            Err(e) => {
                api_task.abort();
                deleter.abort();
                pruner.abort();
                placer.abort();
                group.shutdown().await;
                client.shutdown();
                return Err(e.context(format!("listening on {}", config.listen)));
            }
        };
        let advertise = config.advertise.unwrap_or(server.local_addr());
        let node = RaftNode {
            group,
            server,
            client,
            advertise,
            tasks: vec![api_task, deleter, pruner, placer],
        };
        if !config.bootstrap.is_empty() {
            let members = config.bootstrap.iter().map(|m| (m.id, m.addr.to_string())).collect();
            if let Err(e) = node.bootstrap(members).await {
                node.shutdown().await;
                return Err(anyhow::anyhow!("bootstrapping: {e}"));
            }
        }
        tracing::info!(node = config.node_id, addr = %advertise, "name server raft node serving");
        Ok(node)
    }

    pub fn id(&self) -> RaftNodeId {
        self.group.id()
    }

    /// The address peers and clients reach this node at.
    pub fn addr(&self) -> SocketAddr {
        self.advertise
    }

    pub fn raft(&self) -> &Raft {
        self.group.raft()
    }

    pub fn metrics(&self) -> watch::Receiver<RaftMetrics> {
        self.group.metrics()
    }

    /// Initializes a fresh cluster with `members` (id → address). Does
    /// nothing if this node was already initialized (idempotent).
    pub async fn bootstrap(&self, members: BTreeMap<RaftNodeId, String>) -> Result<(), ProposeError> {
        self.group.bootstrap(members).await
    }

    /// Adds `id` at `addr` as a learner and waits until it caught up. Only
    /// on the leader.
    pub async fn add_learner(&self, id: RaftNodeId, addr: String) -> Result<(), ProposeError> {
        self.group.add_learner(id, addr).await
    }

    /// Makes `voters` the voting members (others present become removed,
    /// not learners). Only on the leader.
    pub async fn change_membership(&self, voters: BTreeSet<RaftNodeId>) -> Result<(), ProposeError> {
        self.group.change_membership(voters).await
    }

    /// Proposes `command`; a follower forwards it to the leader.
    pub async fn propose(&self, command: Command) -> Result<Response, ProposeError> {
        self.group.propose(command).await
    }

    /// Answers `query` linearizably; a follower forwards it to the leader.
    pub async fn read(&self, query: Query) -> Result<QueryResponse, ProposeError> {
        self.group.read(query).await
    }

    /// Answers `query` from this node's applied state without any leadership
    /// check: possibly stale. For diagnostics and tests, never for clients.
    pub async fn stale_query(&self, query: Query) -> Result<QueryResponse, ProposeError> {
        self.group.stale_query(query).await
    }

    /// Stops the RPC server (and with it the API's hold on the group), then
    /// the group (waiting for its database to be released, so the same
    /// directory can be reopened), then the RPC client.
    pub async fn shutdown(self) {
        let id = self.group.id();
        for task in &self.tasks {
            task.abort();
        }
        self.server.shutdown().await;
        self.group.shutdown().await;
        self.client.shutdown();
        tracing::info!(node = id, "name server stopped");
    }
}

/// `tessera nameserver`: serves until SIGINT or SIGTERM.
pub async fn run(config: NameServerConfig) -> anyhow::Result<()> {
    if let Some(addr) = config.metrics_listen {
        tessera_common::telemetry::serve_metrics(addr)?;
    }
    let node = RaftNode::start(config).await?;
    tessera_common::signal::wait_for_shutdown_signal().await?;
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}
