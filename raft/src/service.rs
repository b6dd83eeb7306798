//! The Raft RPC methods of a process and their server-side handlers, shared
//! by every group it hosts: each request is a [`GroupCall`] naming its
//! [`GroupId`], dispatched through the process's [`Registry`]. Bodies are
//! postcard bytes (the openraft messages are serde types) in an rkyv
//! envelope (large ones as the call's bulk payload).
//!
//! - `raft.append`, `raft.vote`, `raft.snapshot_chunk`: replication. A call for a
//!   group this process does not host answers [`RemoteResult::UnknownGroup`]
//!   (the sender's openraft sees the peer unreachable and backs off).
//! - `raft.propose`, `raft.read`: client calls, served by the receiving node
//!   only: a non-leader answers `NotLeader` with the leader's address, an
//!   unknown group [`ProposeError::UnknownGroup`]. A follower's
//!   [`crate::GroupHandle::propose`] / `read` forward here, so a call is
//!   forwarded at most once.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tessera_common::rpc::{self, CallOptions, Method, RequestCtx, Router, RpcClient, RpcError};

use crate::codec::{decode, encode};
use crate::machine::metric;
use crate::{GroupHandle, GroupId, ProposeError, Registry, StateMachine};

/// A request to one group: postcard bytes in an rkyv envelope, or empty
/// bytes when they travel as the call's bulk payload.
#[derive(Clone, Debug, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct GroupCall {
    pub group: u64,
    pub bytes: Vec<u8>,
}

/// An answer: postcard bytes in an rkyv envelope (empty: see the bulk).
#[derive(Clone, Debug, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct RaftBlob {
    pub bytes: Vec<u8>,
}

/// What a replication handler answers: the handler's result, a request that
/// could not be decoded, or a group this process does not host.
#[derive(Debug, Serialize, Deserialize)]
pub enum RemoteResult<T, E> {
    Ok(T),
    Err(E),
    Malformed(String),
    UnknownGroup(GroupId),
}

macro_rules! raft_method {
    ($ty:ident, $name:literal, $idem:literal, $doc:literal) => {
        #[doc = $doc]
        pub struct $ty;
        impl Method for $ty {
            const NAME: &'static str = $name;
            const IDEMPOTENT: bool = $idem;
            type Request = GroupCall;
            type Response = RaftBlob;
        }
    };
}

// openraft retries replication calls by itself.
raft_method!(
    RaftAppend,
    "raft.append",
    false,
    "`raft.append`: openraft's AppendEntries."
);
raft_method!(RaftVote, "raft.vote", false, "`raft.vote`: openraft's Vote.");
raft_method!(
    RaftSnapshotChunk,
    "raft.snapshot_chunk",
    false,
    "`raft.snapshot_chunk`: openraft's InstallSnapshot, one chunk of a snapshot."
);
raft_method!(
    Propose,
    "raft.propose",
    false,
    "`raft.propose`: postcard `Command` in, postcard `Result<Response, ProposeError>` out."
);
raft_method!(
    Read,
    "raft.read",
    true,
    "`raft.read`: postcard `Query` in, postcard `Result<QueryResponse, ProposeError>` out."
);

/// Request and reply bodies over this size travel as the call's bulk
/// payload instead: an RPC body is bounded (`BODY_BYTES_MAX`), an append of
/// many or large entries is not.
pub const INLINE_BYTES_MAX: usize = 64 * 1024;

/// Encodes `value`; encoding our own serde types cannot fail short of a
/// bug, which becomes empty bytes the peer reports as malformed.
pub fn encoded<T: Serialize>(value: &T) -> Vec<u8> {
    encode("rpc body", value).unwrap_or_else(|e| {
        tracing::error!(error = %e, "encoding an RPC body failed");
        Vec::new()
    })
}

/// Inline bytes and bulk of an encoded message: inline when small, else as
/// bulk with empty inline bytes. Our messages never encode to zero bytes.
fn split(bytes: Vec<u8>) -> (Vec<u8>, Bytes) {
    if bytes.len() > INLINE_BYTES_MAX {
        (Vec::new(), Bytes::from(bytes))
    } else {
        (bytes, Bytes::new())
    }
}

/// A request to `group` carrying `value`, as a call's (body, bulk).
pub fn envelope<T: Serialize>(group: GroupId, value: &T) -> (GroupCall, Bytes) {
    let (bytes, bulk) = split(encoded(value));
    (GroupCall { group: group.0, bytes }, bulk)
}

/// An answer carrying `value`, as a call's (body, bulk).
pub fn reply<T: Serialize>(value: &T) -> (RaftBlob, Bytes) {
    let (bytes, bulk) = split(encoded(value));
    (RaftBlob { bytes }, bulk)
}

/// The encoded bytes of an [`envelope`] or a [`reply`].
pub fn opened<'a>(inline: &'a [u8], bulk: &'a Bytes) -> &'a [u8] {
    if inline.is_empty() {
        bulk
    } else {
        inline
    }
}

/// Why a call did not reach its handler.
enum Refused {
    UnknownGroup(GroupId),
    Malformed(String),
}

/// The group a call names and its decoded request.
fn open_call<S: StateMachine, Req: DeserializeOwned>(
    registry: &Registry<S>,
    call: &GroupCall,
    bytes: &[u8],
) -> Result<(GroupHandle<S>, Req), Refused> {
    let group = GroupId(call.group);
    let Some(handle) = registry.get(group) else {
        metrics::counter!(metric::<S>("raft_unknown_group_total")).increment(1);
        return Err(Refused::UnknownGroup(group));
    };
    let request = decode::<Req>("rpc request", bytes).map_err(|e| Refused::Malformed(e.to_string()))?;
    Ok((handle, request))
}

/// A replication call: runs `f` on the group and request, answers a
/// [`RemoteResult`].
async fn serve<S, Req, T, E, F, Fut>(registry: &Registry<S>, call: &GroupCall, bytes: &[u8], f: F) -> (RaftBlob, Bytes)
where
    S: StateMachine,
    Req: DeserializeOwned,
    T: Serialize,
    E: Serialize,
    F: FnOnce(GroupHandle<S>, Req) -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let result = match open_call(registry, call, bytes) {
        Err(Refused::UnknownGroup(group)) => RemoteResult::UnknownGroup(group),
        Err(Refused::Malformed(m)) => RemoteResult::Malformed(m),
        Ok((group, request)) => match f(group, request).await {
            Ok(v) => RemoteResult::Ok(v),
            Err(e) => RemoteResult::Err(e),
        },
    };
    reply::<RemoteResult<T, E>>(&result)
}

/// A client call: the answer is `Result<T, ProposeError>` whatever happens.
async fn serve_client<S, Req, T, F, Fut>(
    registry: &Registry<S>,
    call: &GroupCall,
    bulk: &Bytes,
    f: F,
) -> (RaftBlob, Bytes)
where
    S: StateMachine,
    Req: DeserializeOwned,
    T: Serialize,
    F: FnOnce(GroupHandle<S>, Req) -> Fut,
    Fut: std::future::Future<Output = Result<T, ProposeError>>,
{
    let result = match open_call(registry, call, opened(&call.bytes, bulk)) {
        Err(Refused::UnknownGroup(group)) => Err(ProposeError::UnknownGroup(group)),
        Err(Refused::Malformed(m)) => Err(ProposeError::Fatal(format!("malformed request: {m}"))),
        Ok((group, request)) => f(group, request).await,
    };
    reply(&result)
}

/// Adds the Raft and client methods of every group in `registry` to
/// `router`. Call once per RPC server: the method names are fixed, so the
/// groups one server hosts all run the same state machine type.
pub fn routes<S: StateMachine>(router: Router, registry: Arc<Registry<S>>) -> Router {
    let (r_vote, r_snapshot, r_propose, r_read) =
        (registry.clone(), registry.clone(), registry.clone(), registry.clone());
    router
        .add::<RaftAppend, _, _>(move |_ctx: RequestCtx, call, bulk| {
            let registry = registry.clone();
            async move {
                let bytes = opened(&call.bytes, &bulk);
                serve(&registry, &call, bytes, |g, r| async move {
                    g.raft().append_entries(r).await
                })
                .await
            }
        })
        .add::<RaftVote, _, _>(move |_ctx: RequestCtx, call, bulk| {
            let registry = r_vote.clone();
            async move {
                let bytes = opened(&call.bytes, &bulk);
                serve(&registry, &call, bytes, |g, r| async move { g.raft().vote(r).await }).await
            }
        })
        .add::<RaftSnapshotChunk, _, _>(move |_ctx: RequestCtx, call, bulk| {
            let registry = r_snapshot.clone();
            async move {
                let bytes = opened(&call.bytes, &bulk);
                serve(&registry, &call, bytes, |g, r| async move {
                    g.raft().install_snapshot(r).await
                })
                .await
            }
        })
        .add::<Propose, _, _>(move |_ctx: RequestCtx, call, bulk| {
            let registry = r_propose.clone();
            async move {
                serve_client(&registry, &call, &bulk, |g, c: S::Command| async move {
                    g.propose_local(c).await
                })
                .await
            }
        })
        .add::<Read, _, _>(move |_ctx: RequestCtx, call, bulk| {
            let registry = r_read.clone();
            async move {
                serve_client(&registry, &call, &bulk, |g, q: S::Query| async move {
                    g.read_local(q).await
                })
                .await
            }
        })
}

/// Decodes the answer (body and bulk) of a `raft.propose` or `raft.read` call.
pub fn decode_client_reply<T: DeserializeOwned>(response: &RaftBlob, bulk: &Bytes) -> Result<T, ProposeError> {
    match decode::<Result<T, ProposeError>>("client reply", opened(&response.bytes, bulk)) {
        Ok(result) => result,
        Err(e) => Err(ProposeError::Unavailable(format!("undecodable reply: {e}"))),
    }
}

/// Sends client call `M` ([`Propose`] or [`Read`]) for `group` to the
/// process at `peer`, which serves it itself (it never forwards). The outer
/// error is the RPC layer's; the inner one the group's answer.
pub async fn call_group<M, Req, T>(
    client: &RpcClient,
    peer: SocketAddr,
    group: GroupId,
    request: &Req,
    opts: &CallOptions,
) -> Result<Result<T, ProposeError>, RpcError>
where
    M: Method<Request = GroupCall, Response = RaftBlob>,
    Req: Serialize,
    T: DeserializeOwned,
{
    let (body, bulk) = envelope(group, request);
    let (response, bulk) = rpc::call::<M, _>(client, peer, &body, bulk, opts).await?;
    Ok(decode_client_reply(&response, &bulk))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_bodies_travel_as_bulk_and_small_ones_inline() {
        let small = vec![7u8; 100];
        let (call, bulk) = envelope(GroupId(3), &small);
        assert!(bulk.is_empty());
        assert_eq!(call.group, 3);
        assert_eq!(
            decode::<Vec<u8>>("t", opened(&call.bytes, &bulk)).expect("decode"),
            small
        );

        let large = vec![9u8; INLINE_BYTES_MAX * 3];
        let (body, bulk) = reply(&large);
        assert!(body.bytes.is_empty());
        assert!(bulk.len() > INLINE_BYTES_MAX);
        assert_eq!(
            decode::<Vec<u8>>("t", opened(&body.bytes, &bulk)).expect("decode"),
            large
        );
    }

    #[test]
    fn a_garbage_client_reply_is_unavailable_not_a_panic() {
        let garbage = RaftBlob { bytes: vec![0xff; 3] };
        let result = decode_client_reply::<u64>(&garbage, &Bytes::new());
        assert!(matches!(result, Err(ProposeError::Unavailable(_))));
    }
}
