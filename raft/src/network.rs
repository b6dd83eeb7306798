//! openraft's network of one group over the cluster RPC ([`RpcClient`],
//! QUIC + mTLS, shared by every group of the process). Every call names the
//! group ([`GroupId`]).
//!
//! Error mapping: a peer we cannot connect to (or that is shutting down, or
//! that does not host the group) is `Unreachable` (openraft backs off); a deadline is `Timeout`; a failure
//! mid-call or an undecodable answer is a `NetworkError` (retried at once);
//! an error returned by the peer's Raft is a `RemoteError`. Calls are never
//! retried by the RPC layer: openraft drives its own retries.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{AnyError, RPCTypes};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tessera_common::rpc::{self, CallOptions, Method, RpcClient, RpcError};

use crate::codec::decode;
use crate::machine::metric;
use crate::service::{
    encoded, envelope, opened, GroupCall, RaftAppend, RaftBlob, RaftSnapshotChunk, RaftVote, RemoteResult,
};
use crate::{GroupId, Member, RaftNodeId, StateMachine, TypeConfig};

/// Creates one [`PeerNetwork`] per replication target of a group.
pub struct NetworkFactory<S> {
    group: GroupId,
    id: RaftNodeId,
    client: RpcClient,
    _machine: PhantomData<fn() -> S>,
}

impl<S> NetworkFactory<S> {
    pub fn new(group: GroupId, id: RaftNodeId, client: RpcClient) -> Self {
        NetworkFactory {
            group,
            id,
            client,
            _machine: PhantomData,
        }
    }
}

impl<S: StateMachine> RaftNetworkFactory<TypeConfig<S>> for NetworkFactory<S> {
    type Network = PeerNetwork<S>;

    async fn new_client(&mut self, target: RaftNodeId, node: &Member) -> PeerNetwork<S> {
        PeerNetwork {
            group: self.group,
            id: self.id,
            target,
            addr: node.addr.clone(),
            client: self.client.clone(),
            _machine: PhantomData,
        }
    }
}

/// The connection to one peer's group (connections are pooled by the RPC
/// client).
pub struct PeerNetwork<S> {
    group: GroupId,
    id: RaftNodeId,
    target: RaftNodeId,
    addr: String,
    client: RpcClient,
    _machine: PhantomData<fn() -> S>,
}

/// Why a Raft call to a peer failed, before mapping to openraft's types.
enum CallFailure<E> {
    Unreachable(Unreachable),
    Timeout(Duration),
    Network(NetworkError),
    Remote(E),
}

fn any(msg: impl ToString) -> AnyError {
    AnyError::error(msg)
}

impl<S: StateMachine> PeerNetwork<S> {
    fn peer(&self) -> Result<SocketAddr, Unreachable> {
        self.addr.parse().map_err(|e| {
            Unreachable::new(&any(format!(
                "bad address {:?} of node {}: {e}",
                self.addr, self.target
            )))
        })
    }

    async fn call<M, Req, T, E>(&self, request: &Req, bulk: Bytes, ttl: Duration) -> Result<T, CallFailure<E>>
    where
        M: Method<Request = GroupCall, Response = RaftBlob>,
        Req: Serialize,
        T: DeserializeOwned,
        E: DeserializeOwned,
    {
        let peer = self.peer().map_err(CallFailure::Unreachable)?;
        let opts = CallOptions {
            timeout: ttl,
            retries: 0,
            ..CallOptions::default()
        };
        // With a bulk payload of its own (a snapshot) the request stays inline.
        let (body, bulk) = if bulk.is_empty() {
            envelope(self.group, request)
        } else {
            let bytes = encoded(request);
            (
                GroupCall {
                    group: self.group.0,
                    bytes,
                },
                bulk,
            )
        };
        let (response, response_bulk) = rpc::call::<M, _>(&self.client, peer, &body, bulk, &opts)
            .await
            .map_err(|e| classify(&e, ttl))?;
        match decode::<RemoteResult<T, E>>("raft reply", opened(&response.bytes, &response_bulk)) {
            Ok(RemoteResult::Ok(v)) => Ok(v),
            Ok(RemoteResult::Err(e)) => Err(CallFailure::Remote(e)),
            Ok(RemoteResult::Malformed(m)) => Err(CallFailure::Network(NetworkError::new(&any(format!(
                "{} refused our request as malformed: {m}",
                M::NAME
            ))))),
            Ok(RemoteResult::UnknownGroup(group)) => Err(CallFailure::Unreachable(Unreachable::new(&any(format!(
                "node {} at {} does not host group {group}",
                self.target, self.addr
            ))))),
            Err(e) => Err(CallFailure::Network(NetworkError::new(&e))),
        }
    }

    fn rpc_error<E: std::error::Error>(
        &self,
        action: RPCTypes,
        failure: CallFailure<E>,
    ) -> RPCError<RaftNodeId, Member, E> {
        match failure {
            CallFailure::Unreachable(u) => RPCError::Unreachable(u),
            CallFailure::Network(n) => RPCError::Network(n),
            CallFailure::Timeout(timeout) => RPCError::Timeout(Timeout {
                action,
                id: self.id,
                target: self.target,
                timeout,
            }),
            CallFailure::Remote(e) => RPCError::RemoteError(RemoteError::new(self.target, e)),
        }
    }
}

fn classify<E>(e: &RpcError, ttl: Duration) -> CallFailure<E> {
    match e {
        RpcError::Connect { .. } | RpcError::ShuttingDown => CallFailure::Unreachable(Unreachable::new(e)),
        RpcError::Timeout(_) => CallFailure::Timeout(ttl),
        _ => CallFailure::Network(NetworkError::new(e)),
    }
}

fn record<S: StateMachine>(method: &'static str, ok: bool) {
    let outcome = if ok { "ok" } else { "error" };
    metrics::counter!(metric::<S>("raft_rpc_sent_total"), "method" => method, "outcome" => outcome).increment(1);
}

impl<S: StateMachine> RaftNetwork<TypeConfig<S>> for PeerNetwork<S> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig<S>>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<RaftNodeId>, RPCError<RaftNodeId, Member, RaftError<RaftNodeId>>> {
        let result = self
            .call::<RaftAppend, _, _, RaftError<RaftNodeId>>(&rpc, Bytes::new(), option.hard_ttl())
            .await;
        record::<S>(RaftAppend::NAME, result.is_ok());
        result.map_err(|f| self.rpc_error(RPCTypes::AppendEntries, f))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<RaftNodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<RaftNodeId>, RPCError<RaftNodeId, Member, RaftError<RaftNodeId>>> {
        let result = self
            .call::<RaftVote, _, _, RaftError<RaftNodeId>>(&rpc, Bytes::new(), option.hard_ttl())
            .await;
        record::<S>(RaftVote::NAME, result.is_ok());
        result.map_err(|f| self.rpc_error(RPCTypes::Vote, f))
    }

    /// One chunk of a snapshot (openraft's default `full_snapshot` reads
    /// the snapshot file and sends it chunk by chunk,
    /// `snapshot_max_chunk_size` bytes each; the peer writes them into its
    /// receiving file and installs the whole once the last one arrives).
    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig<S>>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<RaftNodeId>,
        RPCError<RaftNodeId, Member, RaftError<RaftNodeId, InstallSnapshotError>>,
    > {
        let result = self
            .call::<RaftSnapshotChunk, _, _, RaftError<RaftNodeId, InstallSnapshotError>>(
                &rpc,
                Bytes::new(),
                option.hard_ttl(),
            )
            .await;
        record::<S>(RaftSnapshotChunk::NAME, result.is_ok());
        result.map_err(|f| self.rpc_error(RPCTypes::InstallSnapshot, f))
    }

    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(250)))
    }
}
