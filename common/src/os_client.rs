//! Client of the object servers: routes each call to the leader of the
//! uid's partition (cached per partition, learned from `NotLeader`
//! answers or by trying the partition's replicas, then every object
//! server), splits large reads and writes into [`IO_BYTES_MAX`] calls, and
//! checks payload checksums. Where the partitions live ([`OsTopology`]) is
//! fixed at creation or refreshed from the name servers' cluster map
//! ([`OsClient::refresh_loop`]).
//!
//! Every object-server method is idempotent, so a call whose outcome is
//! unknown (a timeout, a leader change) is retried at the new leader within
//! the attempt budget.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::ns_api::{ClusterMap, NodeRole, StoragePolicy};
use crate::ns_client::NameServerClient;
use crate::os_api::{
    self, partition_of, OpenWriteReq, OsError, PartitionReq, PartitionStatus, RangeReq, ReadOk, UidReq, UidStat,
    WriteOk, WriteReq, IO_BYTES_MAX,
};
use crate::rpc::{self, CallOptions, Method, RpcError, Transport};

#[derive(Debug, Clone, thiserror::Error)]
pub enum OsCallError {
    #[error(transparent)]
    Os(#[from] OsError),
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error("read of {len} bytes at {offset}: bytes damaged in transit")]
    TransitChecksum { offset: u64, len: u64 },
    #[error("no object server answered for partition {partition}: {last}")]
    NoLeader { partition: u32, last: String },
    #[error("the partition map is not known yet (object servers not placed)")]
    NoPartitionMap,
}

#[derive(Clone, Debug)]
pub struct OsClientConfig {
    pub call: CallOptions,
    /// Rounds over all servers before giving up on finding a leader.
    pub rounds: u32,
    /// Pause between rounds (elections take a moment).
    pub round_pause: Duration,
}

impl Default for OsClientConfig {
    fn default() -> Self {
        OsClientConfig {
            call: CallOptions {
                timeout: Duration::from_secs(10),
                retries: 1,
                ..CallOptions::default()
            },
            rounds: 20,
            round_pause: Duration::from_millis(250),
        }
    }
}

/// How often a client without a partition map asks for one.
const UNPLACED_RETRY: Duration = Duration::from_millis(200);

/// Where the partitions live.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OsTopology {
    /// Every object server (tried last).
    pub servers: Vec<SocketAddr>,
    /// The cluster's partition count; 0 while not known.
    pub partitions: u32,
    /// Each partition's replicas, when known (tried first).
    pub replicas: HashMap<u32, Vec<SocketAddr>>,
}

impl OsTopology {
    /// The object servers and partitions of a cluster map; servers with an
    /// unparsable address are left out.
    pub fn from_cluster_map(map: &ClusterMap) -> OsTopology {
        let addrs: HashMap<u64, SocketAddr> = map
            .nodes
            .iter()
            .filter(|n| n.role == NodeRole::ObjectServer)
            .filter_map(|n| Some((n.id, n.addr.parse().ok()?)))
            .collect();
        let mut servers: Vec<SocketAddr> = addrs.values().copied().collect();
        servers.sort_unstable();
        let replicas = map
            .partitions
            .iter()
            .map(|p| {
                (
                    p.partition,
                    p.nodes.iter().filter_map(|n| addrs.get(n).copied()).collect(),
                )
            })
            .collect();
        OsTopology {
            servers,
            partitions: u32::try_from(map.partitions.len()).unwrap_or(u32::MAX),
            replicas,
        }
    }
}

/// Cheap to clone; clones share the leader cache and the topology.
#[derive(Clone)]
pub struct OsClient<T> {
    transport: T,
    topology: Arc<RwLock<Arc<OsTopology>>>,
    leaders: Arc<Mutex<HashMap<u32, SocketAddr>>>,
    config: OsClientConfig,
}

/// What one attempt at one server told us.
enum Attempt<R> {
    Done(R),
    Redirect(Option<SocketAddr>),
    Failed(String),
}

impl<T: Transport> OsClient<T> {
    /// `servers`: every object server; `partitions`: the cluster's
    /// partition count (0 until [`OsClient::set_topology`] tells it).
    pub fn new(transport: T, servers: Vec<SocketAddr>, partitions: u32, config: OsClientConfig) -> Self {
        let topology = OsTopology {
            servers,
            partitions,
            replicas: HashMap::new(),
        };
        OsClient {
            transport,
            topology: Arc::new(RwLock::new(Arc::new(topology))),
            leaders: Arc::new(Mutex::new(HashMap::new())),
            config,
        }
    }

    /// Replaces where the partitions live. The partition count never
    /// changes once known (uids are spread by it): a different non-zero
    /// count is refused (logged) and the old topology kept.
    pub fn set_topology(&self, next: OsTopology) {
        let Ok(mut current) = self.topology.write() else {
            return;
        };
        if current.partitions != 0 && next.partitions != current.partitions {
            tracing::error!(
                known = current.partitions,
                offered = next.partitions,
                "partition count changed; keeping the known one"
            );
            return;
        }
        if **current != next {
            *current = Arc::new(next);
        }
    }

    pub fn topology(&self) -> Arc<OsTopology> {
        self.topology.read().map(|t| t.clone()).unwrap_or_default()
    }

    /// Refreshes the topology from the name servers' cluster map every
    /// `interval` (more often while no partition map is known) until the
    /// task is aborted. Cancellation safe.
    pub async fn refresh_loop(self, ns: Arc<NameServerClient<T>>, interval: Duration) {
        loop {
            match ns.cluster_map().await {
                Ok(map) if !map.partitions.is_empty() => self.set_topology(OsTopology::from_cluster_map(&map)),
                Ok(_) => tracing::debug!("no partition map yet"),
                Err(e) => tracing::debug!(error = %e, "cluster map refresh failed"),
            }
            let known = self.topology().partitions != 0;
            tokio::time::sleep(if known { interval } else { interval.min(UNPLACED_RETRY) }).await;
        }
    }

    /// The partition of `uid`; fails until the partition count is known.
    pub fn partition_of(&self, uid: u128) -> Result<u32, OsCallError> {
        match self.topology().partitions {
            0 => Err(OsCallError::NoPartitionMap),
            partitions => Ok(partition_of(uid, partitions)),
        }
    }

    fn cached_leader(&self, partition: u32) -> Option<SocketAddr> {
        self.leaders.lock().ok().and_then(|m| m.get(&partition).copied())
    }

    fn remember(&self, partition: u32, leader: Option<SocketAddr>) {
        if let Ok(mut map) = self.leaders.lock() {
            match leader {
                Some(addr) => map.insert(partition, addr),
                None => map.remove(&partition),
            };
        }
    }

    async fn attempt<M, R>(
        &self,
        peer: SocketAddr,
        request: &M::Request,
        bulk: Bytes,
    ) -> Attempt<Result<(R, Bytes), OsError>>
    where
        M: Method<Response = Result<R, OsError>>,
    {
        match rpc::call::<M, T>(&self.transport, peer, request, bulk, &self.config.call).await {
            Ok((Ok(value), bulk)) => Attempt::Done(Ok((value, bulk))),
            Ok((Err(OsError::NotLeader { leader_addr }), _)) => {
                Attempt::Redirect(leader_addr.and_then(|a| a.parse().ok()))
            }
            Ok((Err(OsError::Unavailable(why)), _)) => Attempt::Failed(why),
            Ok((Err(OsError::NoSuchPartition(p)), _)) => Attempt::Failed(format!("{peer} does not host {p}")),
            Ok((Err(other), _)) => Attempt::Done(Err(other)),
            Err(e) => Attempt::Failed(e.to_string()),
        }
    }

    /// Calls `M` at the leader of `partition`, following redirects.
    async fn call<M, R>(&self, partition: u32, request: &M::Request, bulk: Bytes) -> Result<(R, Bytes), OsCallError>
    where
        M: Method<Response = Result<R, OsError>>,
    {
        let mut last = String::from("no attempt");
        for round in 0..self.config.rounds {
            if round > 0 {
                tokio::time::sleep(self.config.round_pause).await;
            }
            let topology = self.topology();
            let mut candidates: Vec<SocketAddr> = Vec::new();
            let replicas = topology.replicas.get(&partition).into_iter().flatten();
            for addr in self
                .cached_leader(partition)
                .iter()
                .chain(replicas)
                .chain(&topology.servers)
            {
                if !candidates.contains(addr) {
                    candidates.push(*addr);
                }
            }
            let budget = candidates.len() + 2;
            let mut tried = 0;
            while let Some(peer) = candidates.first().copied() {
                candidates.remove(0);
                tried += 1;
                if tried > budget {
                    break;
                }
                match self.attempt::<M, R>(peer, request, bulk.clone()).await {
                    Attempt::Done(result) => {
                        self.remember(partition, Some(peer));
                        return result.map_err(OsCallError::Os);
                    }
                    Attempt::Redirect(Some(leader)) if leader != peer => candidates.insert(0, leader),
                    Attempt::Redirect(_) => last = format!("{peer}: not the leader"),
                    Attempt::Failed(why) => {
                        self.remember(partition, None);
                        last = format!("{peer}: {why}");
                    }
                }
            }
        }
        Err(OsCallError::NoLeader { partition, last })
    }

    pub async fn open_write(
        &self,
        uid: u128,
        size_hint_bytes: u64,
        policy: StoragePolicy,
        ttl: Duration,
    ) -> Result<(), OsCallError> {
        let partition = self.partition_of(uid)?;
        let request = OpenWriteReq {
            partition,
            uid,
            size_hint_bytes,
            policy,
            ttl_ms: ttl.as_millis() as u64,
        };
        self.call::<os_api::OpenWrite, ()>(partition, &request, Bytes::new())
            .await
            .map(|_| ())
    }

    /// Writes `data` at `offset` of `uid`, in calls of at most
    /// [`IO_BYTES_MAX`]; durable when `Ok`. Returns the uid's size after.
    pub async fn write(&self, uid: u128, offset: u64, data: Bytes) -> Result<u64, OsCallError> {
        let partition = self.partition_of(uid)?;
        let mut size_bytes = 0;
        let mut done = 0usize;
        while done < data.len() {
            let piece = data.slice(done..data.len().min(done + IO_BYTES_MAX as usize));
            let request = WriteReq {
                partition,
                uid,
                offset: offset + done as u64,
                crc32c: crc32c::crc32c(&piece),
            };
            done += piece.len();
            let (ok, _) = self.call::<os_api::Write, WriteOk>(partition, &request, piece).await?;
            size_bytes = ok.size_bytes;
        }
        Ok(size_bytes)
    }

    /// Reads `len` bytes at `offset` (holes read as zeros).
    pub async fn read(&self, uid: u128, offset: u64, len: u64) -> Result<Bytes, OsCallError> {
        let partition = self.partition_of(uid)?;
        let mut out = BytesMut::with_capacity(len.min(IO_BYTES_MAX * 4) as usize);
        let mut done = 0;
        while done < len {
            let piece = (len - done).min(IO_BYTES_MAX);
            let request = RangeReq {
                partition,
                uid,
                offset: offset + done,
                len: piece,
            };
            let (ok, data) = self
                .call::<os_api::Read, ReadOk>(partition, &request, Bytes::new())
                .await?;
            if ok.len != piece || data.len() as u64 != piece || crc32c::crc32c(&data) != ok.crc32c {
                return Err(OsCallError::TransitChecksum {
                    offset: offset + done,
                    len: piece,
                });
            }
            out.extend_from_slice(&data);
            done += piece;
        }
        Ok(out.freeze())
    }

    pub async fn confirm(&self, uid: u128) -> Result<(), OsCallError> {
        self.uid_call::<os_api::Confirm, ()>(uid).await
    }

    pub async fn delete(&self, uid: u128) -> Result<(), OsCallError> {
        self.uid_call::<os_api::Delete, ()>(uid).await
    }

    /// Deletes `uid` in the partition recorded with it (the name servers'
    /// pending deletes carry it), whatever this client's partition count.
    pub async fn delete_in(&self, partition: u32, uid: u128) -> Result<(), OsCallError> {
        let request = UidReq { partition, uid };
        self.call::<os_api::Delete, ()>(partition, &request, Bytes::new())
            .await
            .map(|_| ())
    }

    pub async fn stat(&self, uid: u128) -> Result<UidStat, OsCallError> {
        self.uid_call::<os_api::Stat, UidStat>(uid).await
    }

    pub async fn trim(&self, uid: u128, offset: u64, len: u64) -> Result<(), OsCallError> {
        let partition = self.partition_of(uid)?;
        let request = RangeReq {
            partition,
            uid,
            offset,
            len,
        };
        self.call::<os_api::Trim, ()>(partition, &request, Bytes::new())
            .await
            .map(|_| ())
    }

    pub async fn partition_status(&self, partition: u32) -> Result<PartitionStatus, OsCallError> {
        let request = PartitionReq { partition };
        let (status, _) = self
            .call::<os_api::Status, PartitionStatus>(partition, &request, Bytes::new())
            .await?;
        Ok(status)
    }

    async fn uid_call<M, R>(&self, uid: u128) -> Result<R, OsCallError>
    where
        M: Method<Request = UidReq, Response = Result<R, OsError>>,
    {
        let partition = self.partition_of(uid)?;
        let (value, _) = self
            .call::<M, R>(partition, &UidReq { partition, uid }, Bytes::new())
            .await?;
        Ok(value)
    }
}
