//! Which partitions this object server hosts: the name servers' partition
//! map decides (DESIGN §1; the map is written by the name-server leader's
//! placer). Every pass:
//!
//! - a partition the map gives this node and it does not host is started
//!   (the first replica of a generation-0 entry bootstraps its Raft group;
//!   any other starts empty and waits for the group's leader to add it);
//! - on each partition this node leads, the Raft voters are changed to the
//!   map's replicas: a new replica is added as a learner first and becomes
//!   a voter once it caught up (by log or snapshot), then the replaced one
//!   is removed;
//! - a hosted partition the map no longer gives this node is stopped, and
//!   every partition directory the map does not give it is deleted: its
//!   replicas moved while this node was dead.
//!
//! Cancellation safe: a pass interrupted between steps is redone by the
//! next one, and membership changes are idempotent.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tessera_common::ns_api::PartitionReplicas;
use tessera_common::ns_client::NameServerClient;
use tessera_common::rpc::RpcClient;
use tessera_raft::{GroupId, GroupOptions, RaftGroup, RaftTuning, Registry};

use crate::cluster::ClusterView;
use crate::group_io::GroupIo;
use crate::partition::{Partition, PartitionCtx, PartitionSettings};
use crate::service::Partitions;
use crate::state::PartitionMachine;

/// What starting a partition needs.
pub struct Hosting {
    pub node_id: u64,
    pub data_dir: PathBuf,
    pub tuning: RaftTuning,
    pub client: RpcClient,
    pub registry: Arc<Registry<PartitionMachine>>,
    pub io: Arc<GroupIo<RpcClient>>,
    pub cluster: ClusterView,
    pub ns: Arc<NameServerClient<RpcClient>>,
    pub settings: PartitionSettings,
    pub partitions: Partitions,
    /// Partitions with a membership change in flight (one at a time
    /// each); empty at start.
    pub(crate) changing: Mutex<BTreeSet<u32>>,
}

impl Hosting {
    /// Follows the partition map every `interval` until aborted.
    pub async fn run(self: Arc<Self>, interval: Duration) {
        loop {
            self.pass().await;
            tokio::time::sleep(interval).await;
        }
    }

    /// One reconciliation with the current partition map (none before the
    /// name servers placed the partitions).
    pub async fn pass(self: &Arc<Self>) {
        let Some(map) = self.cluster.partition_map() else {
            return;
        };
        for entry in map.values() {
            let mine = entry.nodes.contains(&self.node_id);
            let hosted = self.partitions.get(entry.partition).ok();
            match (mine, hosted) {
                (true, None) => {
                    if let Err(e) = self.start(entry).await {
                        tracing::warn!(partition = entry.partition, error = %e, "starting a partition replica failed");
                    }
                }
                (true, Some(partition)) if partition.raft().is_leader() => self.converge(partition, entry),
                (false, Some(partition)) => {
                    drop(partition);
                    self.retire(entry.partition).await;
                }
                _ => {}
            }
        }
        self.sweep_unplaced_dirs(&map);
    }

    /// Deletes partition directories the map does not give this node and
    /// no replica here uses: left by replicas moved while this node was
    /// down (or a retire interrupted by a crash).
    fn sweep_unplaced_dirs(&self, map: &BTreeMap<u32, PartitionReplicas>) {
        let Ok(dirs) = std::fs::read_dir(self.data_dir.join("partitions")) else {
            return;
        };
        for dir in dirs.flatten() {
            let Some(id) = dir.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
                continue;
            };
            let placed_here = map.get(&id).is_some_and(|e| e.nodes.contains(&self.node_id));
            if placed_here || self.partitions.get(id).is_ok() {
                continue;
            }
            match std::fs::remove_dir_all(dir.path()) {
                Ok(()) => tracing::warn!(partition = id, "deleted the directory of a replica moved away"),
                Err(e) => tracing::error!(partition = id, error = %e, "deleting a moved replica's directory failed"),
            }
        }
    }

    fn partition_dir(&self, partition: u32) -> PathBuf {
        self.data_dir.join("partitions").join(partition.to_string())
    }

    async fn start(&self, entry: &PartitionReplicas) -> anyhow::Result<()> {
        let partition = entry.partition;
        let bootstraps = entry.generation == 0 && entry.nodes.first() == Some(&self.node_id);
        let members = bootstraps.then(|| self.member_addrs(&entry.nodes)).transpose()?;
        let options = GroupOptions {
            group: GroupId(u64::from(partition)),
            node_id: self.node_id,
            data_dir: self.partition_dir(partition),
            tuning: self.tuning.clone(),
        };
        let group = RaftGroup::start(options, self.client.clone(), self.registry.clone()).await?;
        if let Some(members) = members {
            if let Err(e) = group.bootstrap(members).await {
                group.shutdown().await;
                anyhow::bail!("bootstrapping partition {partition}: {e}");
            }
        }
        let ctx = PartitionCtx {
            partition,
            raft: group.handle(),
            io: self.io.clone(),
            cluster: self.cluster.clone(),
            ns: self.ns.clone(),
            settings: self.settings.clone(),
            repairs: Arc::default(),
        };
        self.partitions.insert(Partition::new(ctx, group));
        tracing::info!(
            partition,
            generation = entry.generation,
            bootstraps,
            "hosting a partition replica"
        );
        Ok(())
    }

    /// Node id → RPC address of `nodes`, all of which must be known.
    fn member_addrs(&self, nodes: &[u64]) -> anyhow::Result<BTreeMap<u64, String>> {
        nodes
            .iter()
            .map(|node| match self.cluster.objserver_addr(*node) {
                Some(addr) => Ok((*node, addr)),
                None => Err(anyhow::anyhow!("object server {node} is not in the cluster map")),
            })
            .collect()
    }

    /// On the leader: moves the Raft voters to the map's replicas, in the
    /// background (adding a learner waits until it caught up).
    fn converge(self: &Arc<Self>, partition: Arc<Partition>, entry: &PartitionReplicas) {
        let target: BTreeSet<u64> = entry.nodes.iter().copied().collect();
        let membership = partition
            .raft()
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        if voters == target || membership.get_joint_config().len() > 1 {
            return;
        }
        let id = partition.id();
        {
            let Ok(mut changing) = self.changing.lock() else {
                return;
            };
            if !changing.insert(id) {
                return;
            }
        }
        let this = self.clone();
        tokio::spawn(async move {
            let result = this.change_voters(&partition, &voters, target.clone()).await;
            match result {
                Ok(()) => {
                    metrics::counter!("os_partition_membership_changes_total").increment(1);
                    tracing::warn!(partition = id, from = ?voters, to = ?target, "partition replicas moved");
                }
                Err(e) => {
                    tracing::info!(partition = id, error = %e, "membership change not done; the next pass retries")
                }
            }
            if let Ok(mut changing) = this.changing.lock() {
                changing.remove(&id);
            }
        });
    }

    async fn change_voters(
        &self,
        partition: &Partition,
        voters: &BTreeSet<u64>,
        target: BTreeSet<u64>,
    ) -> anyhow::Result<()> {
        let raft = partition.raft();
        let joining: Vec<u64> = target.difference(voters).copied().collect();
        for (node, addr) in self.member_addrs(&joining)? {
            raft.add_learner(node, addr)
                .await
                .map_err(|e| anyhow::anyhow!("adding {node} as a learner: {e}"))?;
        }
        raft.change_membership(target)
            .await
            .map_err(|e| anyhow::anyhow!("changing the voters: {e}"))
    }

    /// Stops a replica the map moved away; the same pass's sweep then
    /// deletes its directory.
    async fn retire(&self, id: u32) {
        if let Some(partition) = self.partitions.remove(id) {
            partition.shutdown().await;
            tracing::warn!(partition = id, "replica moved away: stopped");
        }
    }
}
