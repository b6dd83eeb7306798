//! The name servers' client-facing API ([`tessera_common::ns_api`]) and the
//! chunk-server heartbeat, served on every node's RPC router.
//!
//! Guard entries (DESIGN §4) live in one [`GuardTable`] per node, used only
//! while this node leads: `ns.create_guard` and `ns.commit_name` on a
//! non-leader answer `NotLeader` with the leader's address and are never
//! forwarded (the guard must live on the leader that checks it). The table
//! is tagged with the Raft term it was filled in and cleared whenever this
//! node's leadership or term changes, so a guard never outlives its
//! leader's term. Guard deadlines use the monotonic [`TokioClock`]; the
//! version's `mtime_ms` is the leader's wall clock (metadata only).
//!
//! Other writes and reads go through [`NsGroup::propose`] /
//! [`NsGroup::read`], which a follower forwards to the leader. A
//! heartbeat reaching a follower is forwarded once to the leader with the
//! internal `ns.chunkserver_heartbeat_forwarded`, so that `at_ms` always
//! comes from the leader's clock.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use openraft::ServerState;
use tessera_common::chunk_api::{self, ChunkServerHeartbeat, HeartbeatAck};
use tessera_common::clock::{Clock, TokioClock};
use tessera_common::ns_api::{
    self, CommitNameReq, CommitOk, CompleteUploadReq, CreateBucketReq, CreateGuardReq, DeleteOk, LogPositionReq,
    NameReq, NsError, ObjectInfo, ReapReq,
};
use tessera_common::rpc::{self, CallOptions, Method, RequestCtx, Router};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster_api::Liveness;
use crate::guards::{GuardError, GuardTable};
use crate::namespace::{
    Command, CommitCondition, NamespaceError, NodeRecord, NodeRole, ObjectVersion, Query, QueryResponse, ReapOutcome,
    Response, StoragePolicy, VersionKind,
};
use crate::raft::{NsGroup, ProposeError, RaftMetrics};

/// Live guard entries per leader at most.
pub const GUARDS_MAX: usize = 100_000;
/// Budget of forwarding a heartbeat to the leader.
const HEARTBEAT_FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// How often expired guard entries are dropped and `ns_guard_entries`
/// (the live ones) published.
const GUARD_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Internal: a heartbeat a follower forwards to the leader. Served by the
/// leader only (never forwarded again).
pub struct ForwardedHeartbeat;
impl Method for ForwardedHeartbeat {
    const NAME: &'static str = "ns.chunkserver_heartbeat_forwarded";
    const IDEMPOTENT: bool = true;
    type Request = ChunkServerHeartbeat;
    type Response = Result<HeartbeatAck, NsError>;
}

/// The guard table and the term it belongs to.
struct Guards {
    term: u64,
    table: GuardTable,
}

impl Guards {
    /// The table of `term`: a newer term clears it first; an older one (a
    /// leadership seen before a change) gets none.
    fn at_term(&mut self, term: u64) -> Option<&mut GuardTable> {
        if term > self.term {
            self.table.clear();
            self.term = term;
        }
        (term == self.term).then_some(&mut self.table)
    }

    /// Leadership or term changed: drop every guard. Returns how many.
    fn reset(&mut self, term: u64) -> usize {
        let dropped = self.table.len();
        self.table.clear();
        self.term = self.term.max(term);
        dropped
    }
}

/// Handlers' shared state.
pub struct Api {
    node: NsGroup,
    clock: TokioClock,
    guards: Mutex<Guards>,
    liveness: Arc<Liveness>,
}

/// Registers a handler `$f` of `Api` for method `$m`.
macro_rules! route {
    ($router:expr, $api:expr, $m:ty, $f:ident) => {{
        let api = $api.clone();
        $router.add::<$m, _, _>(move |_ctx: RequestCtx, req, _bulk: Bytes| {
            let api = api.clone();
            async move { (api.$f(req).await, Bytes::new()) }
        })
    }};
}

/// Adds the API's methods to `router`; the returned task clears the guard
/// table on leadership changes (abort it on shutdown).
pub fn routes(router: Router, node: NsGroup, liveness: Arc<Liveness>) -> (Router, JoinHandle<()>) {
    let metrics = node.metrics();
    let api = Arc::new(Api {
        node,
        clock: TokioClock::default(),
        guards: Mutex::new(Guards {
            term: 0,
            table: GuardTable::new(GUARDS_MAX),
        }),
        liveness,
    });
    let task = tokio::spawn(watch_leadership(api.clone(), metrics));
    let router = route!(router, api, ns_api::CreateBucket, create_bucket);
    let router = route!(router, api, ns_api::CreateGuard, create_guard);
    let router = route!(router, api, ns_api::CommitName, commit_name);
    let router = route!(router, api, ns_api::CompleteUpload, complete_upload);
    let router = route!(router, api, ns_api::GetObject, get_object);
    let router = route!(router, api, ns_api::DeleteName, delete_name);
    let router = route!(router, api, ns_api::Reap, reap);
    let router = route!(router, api, ns_api::LogPosition, log_position);
    let router = route!(router, api, chunk_api::Heartbeat, heartbeat);
    let router = route!(router, api, ForwardedHeartbeat, forwarded_heartbeat);
    let router = route!(router, api, ns_api::ObjServerBeat, objserver_heartbeat);
    let router = route!(router, api, ns_api::GetClusterMap, cluster_map);
    let router = crate::keys_api::routes(router, api.node.clone());
    let router = crate::s3_api::routes(router, api.node.clone());
    let router = crate::admin_api::routes(router, api.node.clone());
    (router, task)
}

/// Clears the guard table whenever this node's (leader?, term) changes,
/// and every [`GUARD_SWEEP_INTERVAL`] drops expired guards and publishes
/// the live count (`ns_guard_entries`: after quiescence every node shows 0,
/// which the fault tests' garbage check asserts).
async fn watch_leadership(api: Arc<Api>, mut rx: watch::Receiver<RaftMetrics>) {
    let mut seen: Option<(bool, u64)> = None;
    let mut sweep = tokio::time::interval(GUARD_SWEEP_INTERVAL);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let now = {
            let m = rx.borrow_and_update();
            (m.current_leader == Some(api.node.id()), m.current_term)
        };
        if seen.is_some_and(|s| s != now) {
            let dropped = api.lock_guards().reset(now.1);
            tracing::info!(
                node = api.node.id(),
                leader = now.0,
                term = now.1,
                dropped,
                "leadership changed: guard entries cleared"
            );
        }
        seen = Some(now);
        loop {
            tokio::select! {
                changed = rx.changed() => match changed {
                    Ok(()) => break,
                    Err(_) => return,
                },
                _ = sweep.tick() => api.sweep_guards(),
            }
        }
    }
}

impl Api {
    fn lock_guards(&self) -> MutexGuard<'_, Guards> {
        self.guards.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn sweep_guards(&self) {
        let now = self.clock.now();
        let mut guards = self.lock_guards();
        guards.table.sweep(now);
        metrics::gauge!("ns_guard_entries").set(guards.table.len() as f64);
    }

    /// The current term if this node leads, else `NotLeader` with the
    /// leader's address when known.
    fn leader_term(&self) -> Result<u64, NsError> {
        let rx = self.node.metrics();
        let m = rx.borrow();
        if m.state == ServerState::Leader && m.current_leader == Some(self.node.id()) {
            return Ok(m.current_term);
        }
        let leader_addr = m
            .current_leader
            .filter(|l| *l != self.node.id())
            .and_then(|l| m.membership_config.membership().get_node(&l).map(|n| n.addr.clone()));
        Err(NsError::NotLeader { leader_addr })
    }

    /// Runs `f` on the guard table of `term`: a newer term clears it first;
    /// an older one (leadership seen before a change) is refused.
    fn with_guards<R>(
        &self,
        term: u64,
        f: impl FnOnce(&mut GuardTable) -> Result<R, GuardError>,
    ) -> Result<R, NsError> {
        let mut guards = self.lock_guards();
        let table = guards.at_term(term).ok_or(NsError::NotLeader { leader_addr: None })?;
        f(table).map_err(guard_error)
    }

    async fn create_bucket(&self, req: CreateBucketReq) -> Result<(), NsError> {
        let command = Command::CreateBucketWithPolicy {
            name: req.name,
            owner: req.owner,
            created_ms: wall_ms(),
            policy: policy(req.policy),
        };
        match self.node.propose(command).await.map_err(propose_error)? {
            Response::Ok => Ok(()),
            other => Err(response_error(other)),
        }
    }

    async fn create_guard(&self, req: CreateGuardReq) -> Result<(), NsError> {
        let term = self.leader_term()?;
        let (ttl, now) = (Duration::from_millis(req.ttl_ms), self.clock.now());
        self.with_guards(term, |t| t.create(&req.bucket, &req.key, req.uid, ttl, now))?;
        tracing::debug!(bucket = %req.bucket, key = %req.key, uid = %format_args!("{:x}", req.uid), "guard created");
        Ok(())
    }

    async fn commit_name(&self, req: CommitNameReq) -> Result<CommitOk, NsError> {
        let term = self.leader_term()?;
        let now = self.clock.now();
        self.with_guards(term, |t| t.take(&req.bucket, &req.key, req.uid, now))?;
        let version = version_of(&req);
        let version_id = version.version_id.clone();
        let command = Command::CommitName {
            bucket: req.bucket,
            key: req.key,
            version,
            condition: condition(req.condition),
        };
        match self.node.propose_local(command).await.map_err(propose_error)? {
            Response::Ok => Ok(CommitOk { version_id }),
            other => Err(response_error(other)),
        }
    }

    /// Completes a multipart upload: a name commit (DESIGN §4 step 5) of
    /// the guarded manifest uid, served by the leader only.
    async fn complete_upload(&self, req: CompleteUploadReq) -> Result<CommitOk, NsError> {
        let term = self.leader_term()?;
        crate::s3_api::upload_of(&self.node, &req.upload).await?;
        let now = self.clock.now();
        let (bucket, key) = (&req.upload.bucket, &req.upload.key);
        self.with_guards(term, |t| t.take(bucket, key, req.uid, now))?;
        let version_id = format!("{:032x}", req.uid);
        let command = Command::CompleteUpload {
            upload_id: req.upload.upload_id,
            parts: req.parts,
            version: ObjectVersion {
                uid: req.uid,
                version_id: version_id.clone(),
                etag: req.etag,
                mtime_ms: wall_ms(),
                partition: req.partition,
                ..ObjectVersion::default()
            },
            condition: condition(req.condition),
        };
        match self.node.propose_local(command).await.map_err(propose_error)? {
            Response::Ok => Ok(CommitOk { version_id }),
            other => Err(response_error(other)),
        }
    }

    async fn get_object(&self, req: NameReq) -> Result<Option<ObjectInfo>, NsError> {
        let query = Query::GetObject {
            bucket: req.bucket,
            key: req.key,
        };
        let answer = if crate::deliberate_bugs::stale_reads() {
            self.node.stale_query(query).await
        } else {
            self.node.read(query).await
        };
        match answer.map_err(propose_error)? {
            QueryResponse::Object(version) => Ok(version.filter(|v| v.kind == VersionKind::Object).map(object_info)),
            QueryResponse::Error(e) => Err(namespace_error(e)),
            other => Err(NsError::Internal(format!("unexpected answer {other:?}"))),
        }
    }

    async fn delete_name(&self, req: NameReq) -> Result<DeleteOk, NsError> {
        let command = Command::DeleteName {
            bucket: req.bucket,
            key: req.key,
        };
        match self.node.propose(command).await.map_err(propose_error)? {
            Response::Deleted { existed } => Ok(DeleteOk { existed }),
            other => Err(response_error(other)),
        }
    }

    async fn reap(&self, req: ReapReq) -> Result<ns_api::ReapOutcome, NsError> {
        match self
            .node
            .propose(Command::Reap { uid: req.uid })
            .await
            .map_err(propose_error)?
        {
            Response::Reap(ReapOutcome::Referenced) => Ok(ns_api::ReapOutcome::Referenced),
            Response::Reap(ReapOutcome::Free) => Ok(ns_api::ReapOutcome::Free),
            other => Err(response_error(other)),
        }
    }

    /// This node's last applied index: committed, so a birth stamp for
    /// new uids (see `namespace::reaped`).
    async fn log_position(&self, _req: LogPositionReq) -> Result<u64, NsError> {
        Ok(self
            .node
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |log_id| log_id.index))
    }

    /// `ns.chunkserver_heartbeat`: recorded by the leader, forwarded to it
    /// by a follower. The ack carries no error: a lost heartbeat is
    /// repaired by the next one.
    async fn heartbeat(&self, hb: ChunkServerHeartbeat) -> HeartbeatAck {
        let result = match self.leader_term() {
            Ok(_) => self.record_heartbeat(hb.clone()).await,
            Err(NsError::NotLeader {
                leader_addr: Some(addr),
            }) => self.forward_heartbeat(&addr, &hb).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!(node = %hb.node, error = %e, "chunk-server heartbeat not recorded");
        }
        HeartbeatAck {
            interval_ms: self.liveness.heartbeat_interval_ms(),
        }
    }

    async fn forwarded_heartbeat(&self, hb: ChunkServerHeartbeat) -> Result<HeartbeatAck, NsError> {
        self.leader_term()?;
        self.record_heartbeat(hb).await?;
        Ok(HeartbeatAck {
            interval_ms: self.liveness.heartbeat_interval_ms(),
        })
    }

    async fn forward_heartbeat(&self, leader: &str, hb: &ChunkServerHeartbeat) -> Result<(), NsError> {
        let peer: SocketAddr = leader
            .parse()
            .map_err(|_| NsError::Internal(format!("bad leader address {leader:?}")))?;
        let opts = CallOptions {
            timeout: HEARTBEAT_FORWARD_TIMEOUT,
            retries: 0,
            ..CallOptions::default()
        };
        match rpc::call::<ForwardedHeartbeat, _>(self.node.client(), peer, hb, Bytes::new(), &opts).await {
            Ok((answer, _)) => answer.map(|_| ()),
            Err(e) => Err(NsError::Unavailable(format!("forwarding heartbeat to {peer}: {e}"))),
        }
    }

    /// Proposes the heartbeat on this node (the leader), stamped with its
    /// monotonic clock.
    async fn record_heartbeat(&self, hb: ChunkServerHeartbeat) -> Result<(), NsError> {
        let at_ms = u64::try_from(self.clock.now().as_millis()).unwrap_or(u64::MAX);
        let (node, corrupt) = (hb.node.0, hb.corrupt_chunks.iter().map(|c| c.0).collect());
        self.record_node(node_record(hb, at_ms)).await?;
        self.liveness.report_corrupt(node, corrupt);
        Ok(())
    }

    /// Records a node's heartbeat in the cluster map and in this leader's
    /// liveness memory.
    async fn record_node(&self, record: NodeRecord) -> Result<(), NsError> {
        let term = self.leader_term()?;
        let node = record.node_id;
        match self
            .node
            .propose_local(Command::NodeHeartbeat(record))
            .await
            .map_err(propose_error)?
        {
            Response::Ok => {
                self.liveness.saw(term, node);
                Ok(())
            }
            other => Err(response_error(other)),
        }
    }

    /// `ns.objserver_heartbeat`: recorded by the leader; a follower answers
    /// `NotLeader` and the client retries there.
    async fn objserver_heartbeat(&self, beat: ns_api::ObjServerHeartbeat) -> Result<(), NsError> {
        let at_ms = u64::try_from(self.clock.now().as_millis()).unwrap_or(u64::MAX);
        self.record_node(NodeRecord {
            node_id: beat.node,
            role: NodeRole::ObjectServer,
            addr: beat.rpc_addr,
            zone: beat.zone,
            capacity_bytes: 0,
            used_bytes: 0,
            healthy: true,
            at_ms,
        })
        .await
    }

    /// `ns.cluster_map`, served by the leader (its liveness memory).
    async fn cluster_map(&self, _: ns_api::ClusterMapReq) -> Result<ns_api::ClusterMap, NsError> {
        let term = self.leader_term()?;
        crate::cluster_api::cluster_map(&self.node, &self.liveness, term).await
    }
}

/// The cluster-map record of a chunk server's heartbeat.
fn node_record(hb: ChunkServerHeartbeat, at_ms: u64) -> NodeRecord {
    NodeRecord {
        node_id: hb.node.0,
        role: NodeRole::ChunkServer,
        addr: hb.rpc_addr,
        zone: hb.zone,
        capacity_bytes: hb.disks.iter().map(|d| d.capacity_bytes).fold(0, u64::saturating_add),
        used_bytes: hb.disks.iter().map(|d| d.used_bytes).fold(0, u64::saturating_add),
        healthy: hb.disks.iter().all(|d| d.healthy),
        at_ms,
    }
}

/// The version a commit installs. Its id is derived from the uid (unique
/// per write, chosen by the proposer so apply stays deterministic).
fn version_of(req: &CommitNameReq) -> ObjectVersion {
    ObjectVersion {
        uid: req.uid,
        version_id: format!("{:032x}", req.uid),
        size: req.size,
        etag: req.etag.clone(),
        content_type: req.content_type.clone(),
        user_meta: req.user_meta.iter().cloned().collect::<BTreeMap<_, _>>(),
        system_meta: req.system_meta.iter().cloned().collect::<BTreeMap<_, _>>(),
        mtime_ms: wall_ms(),
        partition: req.partition,
        kind: VersionKind::Object,
        parts: Vec::new(),
    }
}

fn object_info(v: ObjectVersion) -> ObjectInfo {
    ObjectInfo {
        uid: v.uid,
        version_id: v.version_id,
        size: v.size,
        etag: v.etag,
        content_type: v.content_type,
        user_meta: v.user_meta.into_iter().collect(),
        mtime_ms: v.mtime_ms,
        partition: v.partition,
        system_meta: v.system_meta.into_iter().collect(),
        parts: v.parts.into_iter().map(crate::s3_api::part_info).collect(),
    }
}

pub(crate) fn policy(p: ns_api::StoragePolicy) -> StoragePolicy {
    match p {
        ns_api::StoragePolicy::Ec { k, m } => StoragePolicy::Ec { k, m },
        ns_api::StoragePolicy::Replicated { n } => StoragePolicy::Replicated { n },
    }
}

pub(crate) fn condition(c: ns_api::CommitCondition) -> CommitCondition {
    match c {
        ns_api::CommitCondition::None => CommitCondition::None,
        ns_api::CommitCondition::IfNoneMatch => CommitCondition::IfNoneMatch,
        ns_api::CommitCondition::IfMatch(etag) => CommitCondition::IfMatch(etag),
    }
}

/// The leader's wall clock in ms since the epoch (metadata only).
pub(crate) fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn guard_error(e: GuardError) -> NsError {
    match e {
        GuardError::Missing => NsError::NoGuard,
        GuardError::Expired => NsError::GuardExpired,
        GuardError::Full(_) => NsError::TooManyGuards,
    }
}

/// `NotLeader` was not executed; every other failure of a proposal may
/// still commit, so it is `Unavailable` (outcome unknown).
pub(crate) fn propose_error(e: ProposeError) -> NsError {
    match e {
        ProposeError::NotLeader { leader_addr, .. } => NsError::NotLeader { leader_addr },
        ProposeError::Rejected(m) => NsError::Internal(m),
        ProposeError::UnknownGroup(g) => NsError::Internal(format!("no namespace group {g} on this node")),
        ProposeError::Unavailable(m) | ProposeError::Storage(m) | ProposeError::Fatal(m) => NsError::Unavailable(m),
    }
}

pub(crate) fn response_error(r: Response) -> NsError {
    match r {
        Response::Error(e) => namespace_error(e),
        other => NsError::Internal(format!("unexpected answer {other:?}")),
    }
}

pub(crate) fn namespace_error(e: NamespaceError) -> NsError {
    match e {
        NamespaceError::BucketExists(_) => NsError::BucketExists,
        NamespaceError::NoSuchBucket(_) => NsError::NoSuchBucket,
        NamespaceError::InvalidBucketName { reason, .. } => NsError::InvalidBucketName(reason),
        NamespaceError::InvalidPolicy(_) => NsError::InvalidPolicy,
        NamespaceError::InvalidKey { .. } => NsError::InvalidKey,
        NamespaceError::UidReaped(_) | NamespaceError::UidTooOld { .. } | NamespaceError::UidFromFuture { .. } => {
            NsError::UidReaped
        }
        NamespaceError::PreconditionFailed => NsError::PreconditionFailed,
        NamespaceError::NoSuchAccessKey(_) => NsError::NoSuchAccessKey,
        NamespaceError::AccessKeyExists(_) => NsError::AccessKeyExists,
        NamespaceError::InvalidAccessKeyId => NsError::InvalidAccessKeyId,
        NamespaceError::BucketNotEmpty(_) => NsError::BucketNotEmpty,
        NamespaceError::NoSuchUpload(_) | NamespaceError::InvalidUploadId => NsError::NoSuchUpload,
        NamespaceError::InvalidPartNumber(n) => NsError::InvalidPartNumber(n),
        NamespaceError::InvalidPart(n) => NsError::InvalidPart(n),
        NamespaceError::InvalidPartOrder => NsError::InvalidPartOrder,
        NamespaceError::EntityTooSmall(n) => NsError::EntityTooSmall(n),
        NamespaceError::EmptyPartList => NsError::EmptyPartList,
        other => NsError::Internal(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_common::chunk_api::DiskStatus;
    use tessera_common::ids::NodeId;

    fn disk(capacity: u64, used: u64, healthy: bool) -> DiskStatus {
        DiskStatus {
            path: "/d".into(),
            capacity_bytes: capacity,
            used_bytes: used,
            chunks: 0,
            healthy,
            corrupt_blocks: 0,
        }
    }

    #[test]
    fn heartbeat_sums_disks_and_ands_health() {
        let hb = ChunkServerHeartbeat {
            node: NodeId(7),
            rpc_addr: "127.0.0.1:1".into(),
            zone: "z".into(),
            disks: vec![disk(10, 3, true), disk(u64::MAX, 4, false)],
            corrupt_chunks: Vec::new(),
        };
        let r = node_record(hb, 99);
        assert_eq!((r.node_id, r.capacity_bytes, r.used_bytes), (7, u64::MAX, 7));
        assert!(!r.healthy);
        assert_eq!((r.role, r.at_ms), (NodeRole::ChunkServer, 99));
    }

    #[test]
    fn guards_never_outlive_their_term() {
        let mut guards = Guards {
            term: 0,
            table: GuardTable::new(10),
        };
        let (ttl, now) = (Duration::from_secs(30), Duration::ZERO);
        let table = guards.at_term(3).expect("term 3");
        table.create("b", "k", 1, ttl, now).expect("create");
        assert!(guards.at_term(2).is_none(), "a stale term gets no table");
        let table = guards.at_term(4).expect("term 4");
        assert_eq!(table.take("b", "k", 1, now), Err(GuardError::Missing));
        table.create("b", "k", 2, ttl, now).expect("create");
        assert_eq!(guards.reset(4), 1);
        assert!(guards.at_term(4).expect("term 4").is_empty());
    }

    #[test]
    fn errors_map_to_their_wire_form() {
        assert_eq!(guard_error(GuardError::Missing), NsError::NoGuard);
        assert_eq!(guard_error(GuardError::Expired), NsError::GuardExpired);
        assert_eq!(
            propose_error(ProposeError::Fatal("x".into())),
            NsError::Unavailable("x".into())
        );
        assert_eq!(namespace_error(NamespaceError::UidReaped(3)), NsError::UidReaped);
        let too_old = NamespaceError::UidTooOld {
            uid: 3,
            birth: 1,
            watermark: 2,
        };
        assert_eq!(namespace_error(too_old), NsError::UidReaped);
        assert_eq!(
            response_error(Response::Error(NamespaceError::PreconditionFailed)),
            NsError::PreconditionFailed
        );
    }
}
