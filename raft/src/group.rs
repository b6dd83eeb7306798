//! One running Raft group of a process: its RocksDB, its openraft instance
//! and its entry in the process's [`Registry`]. [`RaftGroup`] owns it (start,
//! shutdown); [`GroupHandle`] is the cheap clone the RPC handlers and the
//! application use to propose, read and manage membership.
//!
//! Members' addresses are the RPC addresses of the processes hosting them:
//! every group of a process is served by the same RPC server.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::ServerState;
use rocksdb::DB;
use tessera_common::rpc::RpcClient;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::log_store::LogStore;
use crate::machine::metric;
use crate::network::NetworkFactory;
use crate::state_machine::StateMachineStore;
use crate::{store, GroupId, Member, ProposeError, Raft, RaftMetrics, RaftNodeId, RaftTuning, Registry, StateMachine};

/// How long `shutdown` waits for every user of the database to let go.
const DB_RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a group is started with.
#[derive(Clone, Debug)]
pub struct GroupOptions {
    pub group: GroupId,
    /// This process's node id in the group.
    pub node_id: RaftNodeId,
    /// The group's own RocksDB directory.
    pub data_dir: PathBuf,
    pub tuning: RaftTuning,
}

pub(crate) struct Inner<S: StateMachine> {
    pub(crate) group: GroupId,
    pub(crate) id: RaftNodeId,
    pub(crate) raft: Raft<S>,
    pub(crate) db: Arc<DB>,
    pub(crate) client: RpcClient,
    pub(crate) propose_timeout: Duration,
    pub(crate) read_timeout: Duration,
    pub(crate) membership_timeout: Duration,
    /// The proposer that packs concurrent proposals into one entry.
    pub(crate) proposals: tokio::sync::mpsc::Sender<crate::batcher::Proposal<S>>,
}

/// A running group, as its users see it. Cheap to clone; holding one keeps
/// the group's database open, so drop it before [`RaftGroup::shutdown`].
pub struct GroupHandle<S: StateMachine> {
    pub(crate) inner: Arc<Inner<S>>,
}

impl<S: StateMachine> Clone for GroupHandle<S> {
    fn clone(&self) -> Self {
        GroupHandle {
            inner: self.inner.clone(),
        }
    }
}

/// A started group. Stop it with [`RaftGroup::shutdown`]; it dereferences
/// to its [`GroupHandle`].
pub struct RaftGroup<S: StateMachine> {
    handle: GroupHandle<S>,
    registry: Arc<Registry<S>>,
    metrics_task: JoinHandle<()>,
    proposer_task: JoinHandle<()>,
}

impl<S: StateMachine> Deref for RaftGroup<S> {
    type Target = GroupHandle<S>;

    fn deref(&self) -> &GroupHandle<S> {
        &self.handle
    }
}

impl<S: StateMachine> RaftGroup<S> {
    /// Opens the group's database, starts Raft and registers the group in
    /// `registry` (whose routes the process's RPC server serves). Does not
    /// bootstrap: see [`GroupHandle::bootstrap`].
    #[tracing::instrument(level = "info", skip_all, fields(group = options.group.0, node = options.node_id))]
    pub async fn start(options: GroupOptions, client: RpcClient, registry: Arc<Registry<S>>) -> anyhow::Result<Self> {
        options.tuning.validate()?;
        if registry.get(options.group).is_some() {
            anyhow::bail!("raft group {} is already running in this process", options.group);
        }
        let db = store::open(&options.data_dir, S::TABLES)?;
        let mut config = options.tuning.openraft_config()?;
        config.cluster_name = format!("tessera-{}-{}", S::METRICS_PREFIX, options.group);
        let network = NetworkFactory::<S>::new(options.group, options.node_id, client.clone());
        let raft = Raft::<S>::new(
            options.node_id,
            Arc::new(config),
            network,
            LogStore::<S>::new(db.clone()),
            StateMachineStore::<S>::open(db.clone(), options.data_dir.join("snapshots"))
                .with_context(|| format!("opening the state machine of raft group {}", options.group))?,
        )
        .await
        .with_context(|| format!("starting raft group {}", options.group))?;
        let tuning = &options.tuning;
        let (proposals, proposer_task) = crate::batcher::spawn(raft.clone());
        let handle = GroupHandle {
            inner: Arc::new(Inner {
                group: options.group,
                id: options.node_id,
                raft: raft.clone(),
                db,
                client,
                propose_timeout: Duration::from_millis(tuning.propose_timeout_ms),
                read_timeout: Duration::from_millis(tuning.read_timeout_ms),
                membership_timeout: Duration::from_millis(tuning.membership_timeout_ms),
                proposals,
            }),
        };
        if let Err(e) = registry.insert(handle.clone()) {
            proposer_task.abort();
            let _ = raft.shutdown().await;
            return Err(e.into());
        }
        let metrics_task = tokio::spawn(publish_metrics::<S>(raft.metrics(), options.node_id, options.group));
        tracing::info!("raft group started");
        Ok(RaftGroup {
            handle,
            registry,
            metrics_task,
            proposer_task,
        })
    }

    /// A handle for the RPC handlers or the application.
    pub fn handle(&self) -> GroupHandle<S> {
        self.handle.clone()
    }

    /// Unregisters the group (later calls for it get `UnknownGroup`), stops
    /// Raft, then waits for the database to be released (so the same
    /// directory can be reopened). Other [`GroupHandle`]s must be dropped.
    pub async fn shutdown(self) {
        let (group, id) = (self.handle.inner.group, self.handle.inner.id);
        self.registry.remove(group);
        self.metrics_task.abort();
        self.proposer_task.abort();
        if let Err(e) = self.handle.inner.raft.shutdown().await {
            tracing::warn!(%group, node = id, error = %e, "raft did not stop cleanly");
        }
        let db = self.handle.inner.db.clone();
        drop(self.handle);
        let deadline = Instant::now() + DB_RELEASE_TIMEOUT;
        while Arc::strong_count(&db) > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if Arc::strong_count(&db) > 1 {
            tracing::warn!(%group, node = id, "database still in use after shutdown");
        }
        tracing::info!(%group, node = id, "raft group stopped");
    }
}

impl<S: StateMachine> GroupHandle<S> {
    pub fn group(&self) -> GroupId {
        self.inner.group
    }

    /// This process's node id in the group.
    pub fn id(&self) -> RaftNodeId {
        self.inner.id
    }

    pub fn raft(&self) -> &Raft<S> {
        &self.inner.raft
    }

    /// The process's RPC client (shared by its groups).
    pub fn client(&self) -> &RpcClient {
        &self.inner.client
    }

    pub fn metrics(&self) -> watch::Receiver<RaftMetrics> {
        self.inner.raft.metrics()
    }

    /// Whether this node currently leads the group (as far as it knows).
    pub fn is_leader(&self) -> bool {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.inner.id)
    }

    pub fn current_term(&self) -> u64 {
        self.inner.raft.metrics().borrow().current_term
    }

    /// The leader this node knows of, and its address when known.
    pub fn leader(&self) -> Option<(RaftNodeId, Option<String>)> {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        let leader = m.current_leader?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone());
        Some((leader, addr))
    }

    /// Initializes a fresh group with `members` (node id → process RPC
    /// address). Does nothing if this node was already initialized.
    pub async fn bootstrap(&self, members: BTreeMap<RaftNodeId, String>) -> Result<(), ProposeError> {
        let raft = &self.inner.raft;
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
        let call = self.inner.raft.add_learner(id, Member { addr }, true);
        self.membership_call(call).await
    }

    /// Makes `voters` the voting members (others present become removed,
    /// not learners). Only on the leader.
    pub async fn change_membership(&self, voters: BTreeSet<RaftNodeId>) -> Result<(), ProposeError> {
        let call = self.inner.raft.change_membership(voters, false);
        self.membership_call(call).await
    }

    async fn membership_call<F>(&self, call: F) -> Result<(), ProposeError>
    where
        F: std::future::Future<
            Output = Result<
                openraft::raft::ClientWriteResponse<crate::TypeConfig<S>>,
                RaftError<RaftNodeId, ClientWriteError<RaftNodeId, Member>>,
            >,
        >,
    {
        let timeout = self.inner.membership_timeout;
        match tokio::time::timeout(timeout, call).await {
            Err(_) => Err(ProposeError::Unavailable(format!(
                "membership change not done within {timeout:?}"
            ))),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(crate::group_calls::write_error(e)),
        }
    }
}

/// Publishes the group's Raft state as `{prefix}_raft_*` gauges until Raft
/// stops.
async fn publish_metrics<S: StateMachine>(mut rx: watch::Receiver<RaftMetrics>, id: RaftNodeId, group: GroupId) {
    let labels = [("node", id.to_string()), ("group", group.to_string())];
    loop {
        {
            let m = rx.borrow_and_update();
            metrics::gauge!(metric::<S>("raft_term"), &labels).set(m.current_term as f64);
            metrics::gauge!(metric::<S>("raft_last_log_index"), &labels).set(m.last_log_index.unwrap_or(0) as f64);
            let applied = m.last_applied.map_or(0, |l| l.index);
            metrics::gauge!(metric::<S>("raft_last_applied_index"), &labels).set(applied as f64);
            let snapshot = m.snapshot.map_or(0, |l| l.index);
            metrics::gauge!(metric::<S>("raft_snapshot_index"), &labels).set(snapshot as f64);
            let leader = if m.current_leader == Some(id) { 1.0 } else { 0.0 };
            metrics::gauge!(metric::<S>("raft_is_leader"), &labels).set(leader);
        }
        if rx.changed().await.is_err() {
            break;
        }
    }
}
