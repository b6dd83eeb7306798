//! One partition replica on this object server: its Raft group, and, while
//! it leads, the per-term machinery (data-log writers, GC of expired
//! entries). Every client call enters here.
//!
//! Leadership: when this replica becomes leader of term `T` it first
//! confirms it (a linearizable read), then seals every group still open
//! (opened by an earlier term) in Raft, and only then accepts writes,
//! whose stripes carry epoch `T`. Those groups' chunks are fenced at epoch
//! `T` in the background; a deposed leader's appends are refused by the
//! chunk servers once fenced, and its proposals cannot commit, so its
//! late bytes are never recorded.

mod compaction;
mod gc;
pub mod orphans;
mod reader;
mod repair;
pub mod writer;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tessera_common::ns_api::StoragePolicy;
use tessera_common::ns_client::NameServerClient;
use tessera_common::os_api::{GroupStatus, OsError, PartitionStatus, UidStat};
use tessera_common::rpc::RpcClient;
use tessera_raft::{GroupHandle, ProposeError, RaftGroup};
use tokio::sync::oneshot;

use crate::cluster::ClusterView;
use crate::group_io::GroupIo;
use crate::placement::Redundancy;
use crate::state::{Command, GroupState, PartitionMachine, Query, QueryResponse, Response, StateError};
use writer::{WriteJob, Writer};

/// Knobs shared by every partition of a server.
#[derive(Clone, Debug)]
pub struct PartitionSettings {
    /// Most data bytes per stripe (one write larger than this is split).
    pub stripe_data_bytes_max: usize,
    /// A group is sealed once a fragment would end past this chunk offset.
    pub chunk_bytes_max: u64,
    /// How often the leader looks for expired GC entries.
    pub gc_scan_interval: Duration,
    /// How often the leader looks for groups to compact or release.
    pub compaction_interval: Duration,
    /// A sealed group is compacted when live bytes < this × written bytes.
    pub compaction_live_ratio: f64,
    /// How long a compacted group's chunks outlive it (reads in flight).
    pub release_grace: Duration,
    /// How often the leader looks for fragments on dead chunk servers.
    pub repair_interval: Duration,
    /// Rebuild rate limit per partition.
    pub repair_bytes_per_sec: u64,
    /// How often the leader looks for orphan chunks (see [`orphans`]).
    pub orphan_scan_interval: Duration,
    /// Chunks reserved more recently than this are never orphans.
    pub orphan_grace: Duration,
}

impl Default for PartitionSettings {
    fn default() -> Self {
        PartitionSettings {
            stripe_data_bytes_max: crate::state::EXTENT_BYTES_MAX as usize,
            chunk_bytes_max: 256 << 20,
            gc_scan_interval: Duration::from_secs(5),
            compaction_interval: Duration::from_secs(10),
            compaction_live_ratio: 0.5,
            release_grace: Duration::from_secs(30),
            repair_interval: Duration::from_secs(10),
            repair_bytes_per_sec: 100 << 20,
            orphan_scan_interval: Duration::from_secs(600),
            orphan_grace: Duration::from_secs(3600),
        }
    }
}

/// What a partition's tasks share.
pub struct PartitionCtx {
    pub partition: u32,
    pub raft: GroupHandle<PartitionMachine>,
    pub io: Arc<GroupIo<RpcClient>>,
    pub cluster: ClusterView,
    pub ns: Arc<NameServerClient<RpcClient>>,
    pub settings: PartitionSettings,
    /// Chunks the leader's repair is rebuilding into (not orphans).
    pub repairs: Arc<orphans::InFlight>,
}

/// The per-term state of a leader.
struct Term {
    term: u64,
    /// Ordered: dropping a term aborts its writers in this order, so a
    /// simulated run replays.
    writers: BTreeMap<Redundancy, Writer>,
    /// GC and compaction.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Term {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

pub struct Partition {
    ctx: Arc<PartitionCtx>,
    group: Mutex<Option<RaftGroup<PartitionMachine>>>,
    /// `Some` while this replica leads and has taken over.
    leading: Mutex<Option<Term>>,
    leadership_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Maps a Raft refusal to the object servers' wire error.
pub fn propose_error(e: ProposeError) -> OsError {
    match e {
        ProposeError::NotLeader { leader_addr, .. } => OsError::NotLeader { leader_addr },
        ProposeError::Unavailable(why) | ProposeError::Fatal(why) => OsError::Unavailable(why),
        ProposeError::Rejected(why) | ProposeError::Storage(why) => OsError::Internal(why),
        ProposeError::UnknownGroup(group) => OsError::NoSuchPartition(group.0 as u32),
    }
}

fn refused(e: StateError) -> OsError {
    match e {
        StateError::NoSuchUid => OsError::NoSuchUid,
        StateError::RedundancyMismatch | StateError::BadRequest(_) => OsError::BadRequest(e.to_string()),
        other => OsError::Internal(other.to_string()),
    }
}

pub fn redundancy_of(policy: StoragePolicy) -> Result<Redundancy, OsError> {
    let redundancy = match policy {
        StoragePolicy::Ec { k, m } => Redundancy::Ec { k, m },
        StoragePolicy::Replicated { n } => Redundancy::Replicated { n },
    };
    let valid = match redundancy {
        Redundancy::Ec { k, m } => k >= 1 && m >= 1 && usize::from(k) + usize::from(m) <= 32,
        Redundancy::Replicated { n } => (1..=8).contains(&n),
    };
    if valid {
        Ok(redundancy)
    } else {
        Err(OsError::BadRequest(format!("storage policy {policy:?}")))
    }
}

impl Partition {
    pub fn new(ctx: PartitionCtx, group: RaftGroup<PartitionMachine>) -> Arc<Partition> {
        let partition = Arc::new(Partition {
            ctx: Arc::new(ctx),
            group: Mutex::new(Some(group)),
            leading: Mutex::new(None),
            leadership_task: Mutex::new(None),
        });
        let task = tokio::spawn(partition.clone().follow_leadership());
        if let Ok(mut slot) = partition.leadership_task.lock() {
            *slot = Some(task);
        }
        partition
    }

    pub fn id(&self) -> u32 {
        self.ctx.partition
    }

    pub fn raft(&self) -> &GroupHandle<PartitionMachine> {
        &self.ctx.raft
    }

    /// Stops the partition's tasks, then its Raft group. The group waits
    /// until every handle of it is gone, so this consumes the caller's
    /// reference before waiting (the aborted tasks drop theirs).
    pub async fn shutdown(self: Arc<Self>) {
        if let Some(task) = self.leadership_task.lock().ok().and_then(|mut t| t.take()) {
            task.abort();
        }
        self.leading.lock().ok().map(|mut l| l.take());
        let group = self.group.lock().ok().and_then(|mut g| g.take());
        drop(self);
        if let Some(group) = group {
            group.shutdown().await;
        }
    }

    /// Watches Raft; takes over on becoming leader, steps down on losing it.
    async fn follow_leadership(self: Arc<Self>) {
        let mut metrics = self.ctx.raft.metrics();
        loop {
            let (leader, term) = {
                let m = metrics.borrow_and_update();
                (m.current_leader, m.current_term)
            };
            let leads = leader == Some(self.ctx.raft.id());
            let current = self.leading.lock().ok().and_then(|l| l.as_ref().map(|t| t.term));
            if !leads && current.is_some() {
                tracing::info!(partition = self.id(), term, "stepped down");
                self.leading.lock().ok().map(|mut l| l.take());
            }
            if leads && current != Some(term) {
                match self.take_over(term).await {
                    Ok(()) => tracing::info!(partition = self.id(), term, "leading"),
                    Err(e) => {
                        tracing::warn!(partition = self.id(), term, error = %e, "take-over failed; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                }
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }

    /// Confirms leadership of `term`, seals groups of earlier terms, and
    /// starts the term's machinery.
    async fn take_over(self: &Arc<Self>, term: u64) -> Result<(), OsError> {
        let groups = match self.ctx.raft.read_local(Query::Groups).await.map_err(propose_error)? {
            QueryResponse::Groups(groups) => groups,
            other => return Err(OsError::Internal(format!("unexpected answer {other:?}"))),
        };
        for (_, record) in groups {
            if matches!(record.state, GroupState::Open { .. }) {
                writer::seal_group(&self.ctx, &record.placement, term).await?;
            }
        }
        let tasks = vec![
            tokio::spawn(gc::run(self.ctx.clone())),
            tokio::spawn(compaction::run(self.clone())),
            tokio::spawn(repair::run(self.clone(), term)),
            tokio::spawn(orphans::run(self.ctx.clone())),
        ];
        let mut leading = self.leading.lock().map_err(|_| OsError::Internal("poisoned".into()))?;
        *leading = Some(Term {
            term,
            writers: BTreeMap::new(),
            tasks,
        });
        Ok(())
    }

    fn not_leader(&self) -> OsError {
        OsError::NotLeader {
            leader_addr: self.ctx.raft.leader().and_then(|(_, addr)| addr),
        }
    }

    async fn propose(&self, command: Command) -> Result<Response, OsError> {
        match self.ctx.raft.propose_local(command).await.map_err(propose_error)? {
            Response::Error(e) => Err(refused(e)),
            other => Ok(other),
        }
    }

    pub async fn open_write(
        &self,
        uid: u128,
        size_hint_bytes: u64,
        policy: StoragePolicy,
        ttl_ms: u64,
    ) -> Result<(), OsError> {
        let redundancy = redundancy_of(policy)?;
        let usable = self.ctx.cluster.chunk_servers().len();
        if usable < redundancy.write_quorum() {
            return Err(OsError::NoSpace(format!(
                "{} chunk servers needed for {redundancy:?} (its write quorum), {usable} live",
                redundancy.write_quorum()
            )));
        }
        let reserved_bytes = match self.ctx.raft.read_local(Query::Meta).await.map_err(propose_error)? {
            QueryResponse::Meta(meta) => meta.reserved_bytes,
            other => return Err(OsError::Internal(format!("unexpected answer {other:?}"))),
        };
        let wanted = reserved_bytes.saturating_add(size_hint_bytes);
        crate::cluster::check_room(&self.ctx.cluster.chunk_servers(), redundancy, wanted)
            .map_err(|why| OsError::NoSpace(format!("reserving {size_hint_bytes} bytes: {why}")))?;
        self.propose(Command::OpenWrite {
            uid,
            redundancy,
            size_hint_bytes,
            ttl_ms,
        })
        .await
        .map(|_| ())
    }

    pub async fn confirm(&self, uid: u128) -> Result<(), OsError> {
        self.propose(Command::Confirm { uid }).await.map(|_| ())
    }

    pub async fn delete(&self, uid: u128) -> Result<(), OsError> {
        self.propose(Command::Delete { uid }).await.map(|_| ())
    }

    pub async fn trim(&self, uid: u128, offset: u64, len: u64) -> Result<(), OsError> {
        self.propose(Command::Trim { uid, offset, len }).await.map(|_| ())
    }

    /// Writes `data` at `offset` of `uid`; `Ok` once every piece is durable
    /// and recorded. Returns the uid's size after the write.
    pub async fn write(&self, uid: u128, offset: u64, data: Bytes) -> Result<u64, OsError> {
        let redundancy = match self.ctx.raft.stale_query(Query::Object { uid }).await {
            Ok(QueryResponse::Object { object: Some(o), .. }) => o.redundancy,
            Ok(_) => return Err(OsError::NoSuchUid),
            Err(e) => return Err(propose_error(e)),
        };
        if data.is_empty() {
            return self.size_of(uid).await;
        }
        let mut replies = Vec::new();
        for start in (0..data.len()).step_by(self.ctx.settings.stripe_data_bytes_max) {
            let end = data.len().min(start + self.ctx.settings.stripe_data_bytes_max);
            let (reply, answer) = oneshot::channel();
            let job = WriteJob {
                uid,
                offset: offset + start as u64,
                data: data.slice(start..end),
                relocating: None,
                reply,
            };
            self.submit(redundancy, job).await?;
            replies.push(answer);
        }
        let mut size = 0;
        for answer in replies {
            size = answer
                .await
                .map_err(|_| OsError::Unavailable("the writer stopped mid-write".into()))??;
        }
        Ok(size)
    }

    async fn size_of(&self, uid: u128) -> Result<u64, OsError> {
        match self.ctx.raft.stale_query(Query::Object { uid }).await {
            Ok(QueryResponse::Object { object: Some(o), .. }) => Ok(o.size_bytes),
            Ok(_) => Err(OsError::NoSuchUid),
            Err(e) => Err(propose_error(e)),
        }
    }

    /// Hands `job` to the term's writer for `redundancy`, starting it (or
    /// restarting one that stopped) as needed.
    async fn submit(&self, redundancy: Redundancy, job: WriteJob) -> Result<(), OsError> {
        let sender = {
            let mut leading = self.leading.lock().map_err(|_| OsError::Internal("poisoned".into()))?;
            let Some(term) = leading.as_mut() else {
                return Err(self.not_leader());
            };
            let epoch = term.term;
            let writer = term
                .writers
                .entry(redundancy)
                .or_insert_with(|| Writer::spawn(self.ctx.clone(), redundancy, epoch));
            if !writer.is_running() {
                *writer = Writer::spawn(self.ctx.clone(), redundancy, epoch);
            }
            writer.sender()
        };
        sender
            .send(job)
            .await
            .map_err(|_| OsError::Unavailable("the partition's writer stopped".into()))
    }

    /// Every chunk group's placement, from the local state (for
    /// operators and tests).
    pub async fn placements(&self) -> Vec<crate::placement::GroupPlacement> {
        match self.ctx.raft.stale_query(Query::Groups).await {
            Ok(QueryResponse::Groups(groups)) => groups.into_iter().map(|(_, g)| g.placement).collect(),
            _ => Vec::new(),
        }
    }

    pub async fn read(&self, uid: u128, offset: u64, len: u64) -> Result<Bytes, OsError> {
        reader::read(&self.ctx, uid, offset, len).await
    }

    pub async fn stat(&self, uid: u128) -> Result<UidStat, OsError> {
        match self
            .ctx
            .raft
            .read_local(Query::Object { uid })
            .await
            .map_err(propose_error)?
        {
            QueryResponse::Object {
                object: Some(object),
                gc,
                extents,
                mapped_bytes,
            } => Ok(UidStat {
                size_bytes: object.size_bytes,
                mapped_bytes,
                extents,
                unconfirmed: gc.is_some(),
            }),
            QueryResponse::Object { object: None, .. } => Err(OsError::NoSuchUid),
            other => Err(OsError::Internal(format!("unexpected answer {other:?}"))),
        }
    }

    pub async fn status(&self) -> Result<PartitionStatus, OsError> {
        let raft = &self.ctx.raft;
        let groups = match raft.read_local(Query::Groups).await.map_err(propose_error)? {
            QueryResponse::Groups(groups) => groups,
            other => return Err(OsError::Internal(format!("unexpected answer {other:?}"))),
        };
        let meta = match raft.read_local(Query::Meta).await.map_err(propose_error)? {
            QueryResponse::Meta(meta) => meta,
            other => return Err(OsError::Internal(format!("unexpected answer {other:?}"))),
        };
        let gc_entries = match raft
            .read_local(Query::GcEntries {
                after: None,
                limit: u32::MAX,
            })
            .await
            .map_err(propose_error)?
        {
            QueryResponse::GcEntries(entries) => entries.len() as u64,
            other => return Err(OsError::Internal(format!("unexpected answer {other:?}"))),
        };
        let marked: HashMap<_, _> = match raft.read_local(Query::Lost).await.map_err(propose_error)? {
            QueryResponse::Lost(lost) => lost.into_iter().collect(),
            other => return Err(OsError::Internal(format!("unexpected answer {other:?}"))),
        };
        let live: std::collections::BTreeSet<_> = self.ctx.cluster.chunk_servers().iter().map(|s| s.node).collect();
        let groups: Vec<GroupStatus> = groups
            .into_iter()
            .map(|(id, g)| {
                let in_use = matches!(g.state, GroupState::Open { .. } | GroupState::Sealed);
                let lost = if in_use && !live.is_empty() {
                    let marked = marked.get(&id).map(|l| l.0.as_slice()).unwrap_or_default();
                    repair::lost_fragments(&g, marked, &live, &self.ctx.cluster).len()
                } else {
                    0
                };
                GroupStatus {
                    id: id.0,
                    state: g.state.name().to_string(),
                    fragments: g.placement.fragments.len() as u32,
                    written_bytes: g.written_bytes,
                    stripes: g.stripes,
                    live_bytes: g.live_bytes,
                    lost_fragments: lost as u32,
                    fragment_bytes: g.tail,
                }
            })
            .collect();
        Ok(PartitionStatus {
            partition: self.id(),
            leader: raft.leader().map(|(id, _)| id),
            epoch: raft.current_term(),
            objects: meta.objects,
            gc_entries,
            reserved_bytes: meta.reserved_bytes,
            repair_pending_bytes: groups
                .iter()
                .map(|g| u64::from(g.lost_fragments) * g.fragment_bytes)
                .sum(),
            repair_bytes_per_sec: self.ctx.settings.repair_bytes_per_sec,
            groups,
        })
    }
}
