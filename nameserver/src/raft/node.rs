//! A running name-server Raft node: its RocksDB, its RPC server (Raft and
//! client routes) and its openraft instance, behind [`RaftNode`].
//!
//! Any node accepts [`RaftNode::propose`] and [`RaftNode::read`]: the leader
//! serves them, a follower forwards them once to the leader it knows (the
//! leader never forwards again) or answers [`ProposeError::NotLeader`].
//! Reads are linearizable: `ensure_linearizable` (read index confirmed by a
//! quorum, applied locally) before reading RocksDB.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, InitializeError, RaftError};
use rocksdb::DB;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tessera_common::pki::NodeIdentity;
use tessera_common::rpc::{
    self, CallOptions, Method, RpcClient, RpcClientConfig, RpcError, RpcServer, RpcServerConfig,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::config::NameServerConfig;
use crate::namespace::{self, Command, Query, QueryResponse, Response};
use crate::raft::log_store::LogStore;
use crate::raft::network::NetworkFactory;
use crate::raft::service::{self, decode_client_reply, envelope, Propose, RaftBlob, Read};
use crate::raft::state_machine::StateMachineStore;
use crate::raft::{store, Member, ProposeError, Raft, RaftMetrics, RaftNodeId, TypeConfig};

/// How long `shutdown` waits for every user of the database to let go.
const DB_RELEASE_TIMEOUT: Duration = Duration::from_secs(10);
/// Extra time a forwarded call gets over the leader's own deadline.
const FORWARD_MARGIN: Duration = Duration::from_secs(1);

/// What the RPC handlers and [`RaftNode`] share.
pub struct NodeShared {
    pub(crate) id: RaftNodeId,
    pub(crate) raft: Raft,
    db: Arc<DB>,
    pub(crate) client: RpcClient,
    propose_timeout: Duration,
    read_timeout: Duration,
    membership_timeout: Duration,
}

/// A name server's Raft node. Stop it with [`RaftNode::shutdown`].
pub struct RaftNode {
    shared: Arc<NodeShared>,
    server: RpcServer,
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
        let db = store::open(&config.data_dir)?;
        let client = RpcClient::new(identity.clone(), RpcClientConfig::default()).context("creating the RPC client")?;
        let raft_config = Arc::new(config.raft.openraft_config()?);
        let network = NetworkFactory::new(config.node_id, client.clone());
        let raft = Raft::new(
            config.node_id,
            raft_config,
            network,
            LogStore::new(db.clone()),
            StateMachineStore::new(db.clone()),
        )
        .await
        .context("starting raft")?;
        let shared = Arc::new(NodeShared {
            id: config.node_id,
            raft: raft.clone(),
            db,
            client,
            propose_timeout: Duration::from_millis(config.raft.propose_timeout_ms),
            read_timeout: Duration::from_millis(config.raft.read_timeout_ms),
            membership_timeout: Duration::from_millis(config.raft.membership_timeout_ms),
        });
        let router = service::routes(tessera_common::rpc::Router::new(), raft.clone(), shared.clone());
        // Extension point: the client-facing API (guards, names, heartbeats).
        let (router, api_task) = crate::api::routes(router, shared.clone());
        let server_config = RpcServerConfig {
            shutdown_grace: Duration::from_secs(1),
            ..RpcServerConfig::default()
        };
        let server = match RpcServer::bind(config.listen, identity, router, server_config).await {
            Ok(server) => server,
            Err(e) => {
                api_task.abort();
                let _ = raft.shutdown().await;
                return Err(e.context(format!("listening on {}", config.listen)));
            }
        };
        let advertise = config.advertise.unwrap_or(server.local_addr());
        let tasks = vec![tokio::spawn(publish_metrics(raft.metrics(), config.node_id)), api_task];
        let node = RaftNode {
            shared,
            server,
            advertise,
            tasks,
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
        self.shared.id
    }

    /// The address peers and clients reach this node at.
    pub fn addr(&self) -> SocketAddr {
        self.advertise
    }

    pub fn raft(&self) -> &Raft {
        &self.shared.raft
    }

    pub fn metrics(&self) -> watch::Receiver<RaftMetrics> {
        self.shared.raft.metrics()
    }

    /// Initializes a fresh cluster with `members` (id → address). Does
    /// nothing if this node was already initialized (idempotent).
    pub async fn bootstrap(&self, members: BTreeMap<RaftNodeId, String>) -> Result<(), ProposeError> {
        let raft = &self.shared.raft;
        if raft.is_initialized().await.map_err(|e| ProposeError::from_fatal(&e))? {
            return Ok(());
        }
        let members: BTreeMap<RaftNodeId, Member> =
            members.into_iter().map(|(id, addr)| (id, Member { addr })).collect();
        match raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(RaftError::APIError(e)) => Err(ProposeError::Rejected(e.to_string())),
            Err(RaftError::Fatal(f)) => Err(ProposeError::from_fatal(&f)),
        }
    }

    /// Adds `id` at `addr` as a learner and waits until it caught up. Only
    /// on the leader.
    pub async fn add_learner(&self, id: RaftNodeId, addr: String) -> Result<(), ProposeError> {
        let call = self.shared.raft.add_learner(id, Member { addr }, true);
        self.shared.membership_call(call).await
    }

    /// Makes `voters` the voting members (others present become removed,
    /// not learners). Only on the leader.
    pub async fn change_membership(&self, voters: BTreeSet<RaftNodeId>) -> Result<(), ProposeError> {
        let call = self.shared.raft.change_membership(voters, false);
        self.shared.membership_call(call).await
    }

    /// Proposes `command`; a follower forwards it to the leader.
    pub async fn propose(&self, command: Command) -> Result<Response, ProposeError> {
        self.shared.propose(command).await
    }

    /// Answers `query` linearizably; a follower forwards it to the leader.
    pub async fn read(&self, query: Query) -> Result<QueryResponse, ProposeError> {
        self.shared.read(query).await
    }

    /// Answers `query` from this node's applied state without any leadership
    /// check: possibly stale. For diagnostics and tests, never for clients.
    pub async fn stale_query(&self, query: Query) -> Result<QueryResponse, ProposeError> {
        self.shared.query_db(query).await
    }

    /// Stops Raft, then the RPC server and client, then waits for the
    /// database to be released (so the same directory can be reopened).
    pub async fn shutdown(self) {
        let id = self.shared.id;
        for task in &self.tasks {
            task.abort();
        }
        if let Err(e) = self.shared.raft.shutdown().await {
            tracing::warn!(node = id, error = %e, "raft did not stop cleanly");
        }
        self.server.shutdown().await;
        self.shared.client.shutdown();
        let db = self.shared.db.clone();
        drop(self.shared);
        let deadline = Instant::now() + DB_RELEASE_TIMEOUT;
        while Arc::strong_count(&db) > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if Arc::strong_count(&db) > 1 {
            tracing::warn!(node = id, "database still in use after shutdown");
        }
        tracing::info!(node = id, "name server raft node stopped");
    }
}

fn record<T>(op: &'static str, result: &Result<T, ProposeError>, started: Instant) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(ProposeError::NotLeader { .. }) => "not_leader",
        Err(ProposeError::Unavailable(_)) => "unavailable",
        Err(ProposeError::Rejected(_)) => "rejected",
        Err(ProposeError::Storage(_)) => "storage",
        Err(ProposeError::Fatal(_)) => "fatal",
    };
    metrics::counter!("ns_raft_client_calls_total", "op" => op, "outcome" => outcome).increment(1);
    metrics::histogram!("ns_raft_client_seconds", "op" => op).record(started.elapsed().as_secs_f64());
}

fn not_leader(f: ForwardToLeader<RaftNodeId, Member>) -> ProposeError {
    ProposeError::NotLeader {
        leader_id: f.leader_id,
        leader_addr: f.leader_node.map(|n| n.addr),
    }
}

fn write_error(e: RaftError<RaftNodeId, ClientWriteError<RaftNodeId, Member>>) -> ProposeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => not_leader(f),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => ProposeError::Rejected(c.to_string()),
        RaftError::Fatal(f) => ProposeError::from_fatal(&f),
    }
}

impl NodeShared {
    /// Proposes `command`; a follower forwards it to the leader.
    pub(crate) async fn propose(&self, command: Command) -> Result<Response, ProposeError> {
        let started = Instant::now();
        let result = match self.propose_local(command.clone()).await {
            Err(ProposeError::NotLeader {
                leader_id: Some(leader),
                leader_addr: Some(addr),
            }) if leader != self.id => {
                let timeout = self.propose_timeout + FORWARD_MARGIN;
                self.forward::<Propose, _, _>(leader, &addr, &command, timeout, 0).await
            }
            other => other,
        };
        record("propose", &result, started);
        result
    }

    /// Answers `query` linearizably; a follower forwards it to the leader.
    pub(crate) async fn read(&self, query: Query) -> Result<QueryResponse, ProposeError> {
        let started = Instant::now();
        let result = match self.read_local(query.clone()).await {
            Err(ProposeError::NotLeader {
                leader_id: Some(leader),
                leader_addr: Some(addr),
            }) if leader != self.id => {
                let timeout = self.read_timeout + FORWARD_MARGIN;
                self.forward::<Read, _, _>(leader, &addr, &query, timeout, 1).await
            }
            other => other,
        };
        record("read", &result, started);
        result
    }

    /// Proposes on this node only (the handler of forwarded proposals).
    pub(crate) async fn propose_local(&self, command: Command) -> Result<Response, ProposeError> {
        let span = tracing::debug_span!("propose", node = self.id);
        match tokio::time::timeout(self.propose_timeout, self.raft.client_write(command).instrument(span)).await {
            Err(_) => Err(ProposeError::Unavailable(format!(
                "not committed within {:?}",
                self.propose_timeout
            ))),
            Ok(Ok(response)) => Ok(response.data),
            Ok(Err(e)) => Err(write_error(e)),
        }
    }

    /// Serves a linearizable read on this node only.
    pub(crate) async fn read_local(&self, query: Query) -> Result<QueryResponse, ProposeError> {
        let span = tracing::debug_span!("read", node = self.id);
        match tokio::time::timeout(self.read_timeout, self.raft.ensure_linearizable().instrument(span)).await {
            Err(_) => {
                return Err(ProposeError::Unavailable(format!(
                    "leadership not confirmed within {:?}",
                    self.read_timeout
                )))
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => return Err(not_leader(f)),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)))) => {
                return Err(ProposeError::Unavailable(q.to_string()))
            }
            Ok(Err(RaftError::Fatal(f))) => return Err(ProposeError::from_fatal(&f)),
            Ok(Ok(_)) => {}
        }
        self.query_db(query).await
    }

    async fn query_db(&self, query: Query) -> Result<QueryResponse, ProposeError> {
        let db = self.db.clone();
        match tokio::task::spawn_blocking(move || namespace::query(&*db, &query)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(ProposeError::Storage(e.to_string())),
            Err(e) => Err(ProposeError::Storage(format!("read task failed: {e}"))),
        }
    }

    async fn membership_call<F>(&self, call: F) -> Result<(), ProposeError>
    where
        F: std::future::Future<
            Output = Result<
                openraft::raft::ClientWriteResponse<TypeConfig>,
                RaftError<RaftNodeId, ClientWriteError<RaftNodeId, Member>>,
            >,
        >,
    {
        match tokio::time::timeout(self.membership_timeout, call).await {
            Err(_) => Err(ProposeError::Unavailable(format!(
                "membership change not done within {:?}",
                self.membership_timeout
            ))),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(write_error(e)),
        }
    }

    /// Sends a client call to the leader once. A failed connect means the
    /// leader never saw it (`NotLeader`, safe to retry); any later failure
    /// leaves the outcome unknown (`Unavailable`).
    async fn forward<M, Req, T>(
        &self,
        leader: RaftNodeId,
        addr: &str,
        request: &Req,
        timeout: Duration,
        retries: u32,
    ) -> Result<T, ProposeError>
    where
        M: Method<Request = RaftBlob, Response = RaftBlob>,
        Req: Serialize,
        T: DeserializeOwned,
    {
        let not_leader = || ProposeError::NotLeader {
            leader_id: Some(leader),
            leader_addr: Some(addr.to_string()),
        };
        let peer: SocketAddr = addr.parse().map_err(|_| not_leader())?;
        metrics::counter!("ns_raft_forwarded_total", "method" => M::NAME).increment(1);
        let opts = CallOptions {
            timeout,
            retries,
            ..CallOptions::default()
        };
        let (body, bulk) = envelope(request);
        match rpc::call::<M, _>(&self.client, peer, &body, bulk, &opts).await {
            Ok((response, bulk)) => decode_client_reply(&response, &bulk),
            Err(RpcError::Connect { .. }) => Err(not_leader()),
            Err(e) => Err(ProposeError::Unavailable(format!(
                "forwarding to leader {leader} at {addr}: {e}"
            ))),
        }
    }
}

/// Publishes the node's Raft state as `ns_raft_*` gauges until Raft stops.
async fn publish_metrics(mut rx: watch::Receiver<RaftMetrics>, id: RaftNodeId) {
    let node = id.to_string();
    loop {
        {
            let m = rx.borrow_and_update();
            let label = [("node", node.clone())];
            metrics::gauge!("ns_raft_term", &label).set(m.current_term as f64);
            metrics::gauge!("ns_raft_last_log_index", &label).set(m.last_log_index.unwrap_or(0) as f64);
            let applied = m.last_applied.map_or(0, |l| l.index);
            metrics::gauge!("ns_raft_last_applied_index", &label).set(applied as f64);
            let snapshot = m.snapshot.map_or(0, |l| l.index);
            metrics::gauge!("ns_raft_snapshot_index", &label).set(snapshot as f64);
            let leader = if m.current_leader == Some(id) { 1.0 } else { 0.0 };
            metrics::gauge!("ns_raft_is_leader", &label).set(leader);
        }
        if rx.changed().await.is_err() {
            break;
        }
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
