//! RPC methods of the name servers' Raft group and their server-side
//! handlers. Bodies are an rkyv [`RaftBlob`] wrapping postcard bytes (the
//! openraft messages are serde types); a snapshot's data travels as the raw
//! bulk payload of one call.
//!
//! - `ns.raft_append`, `ns.raft_vote`, `ns.raft_snapshot`: replication.
//! - `ns.propose`, `ns.read`: client calls, served by the receiving node
//!   only: a non-leader answers `NotLeader` with the leader's address. A
//!   follower's [`crate::raft::RaftNode::propose`] / `read` forward here, so
//!   a call is forwarded at most once.

use std::io::Cursor;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tessera_common::rpc::{Method, RequestCtx, Router};

use crate::namespace::{Command, Query};
use crate::raft::codec::{decode, encode};
use crate::raft::node::NodeShared;
use crate::raft::{ProposeError, TypeConfig};
use crate::raft::{Raft, SnapshotMeta, Vote};

/// Postcard bytes in an rkyv envelope.
#[derive(Clone, Debug, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct RaftBlob {
    pub bytes: Vec<u8>,
}

/// What a Raft handler answers: the handler's result, or a request that
/// could not be decoded.
#[derive(Debug, Serialize, Deserialize)]
pub enum RemoteResult<T, E> {
    Ok(T),
    Err(E),
    Malformed(String),
}

/// Vote and meta of a snapshot sent with `ns.raft_snapshot` (data in bulk).
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotHeader {
    pub vote: Vote,
    pub meta: SnapshotMeta,
}

pub struct RaftAppend;
impl Method for RaftAppend {
    const NAME: &'static str = "ns.raft_append";
    const IDEMPOTENT: bool = false; // openraft retries by itself
    type Request = RaftBlob;
    type Response = RaftBlob;
}

pub struct RaftVote;
impl Method for RaftVote {
    const NAME: &'static str = "ns.raft_vote";
    const IDEMPOTENT: bool = false;
    type Request = RaftBlob;
    type Response = RaftBlob;
}

pub struct RaftSnapshot;
impl Method for RaftSnapshot {
    const NAME: &'static str = "ns.raft_snapshot";
    const IDEMPOTENT: bool = false;
    type Request = RaftBlob;
    type Response = RaftBlob;
}

/// Body: postcard [`Command`]; answer: postcard `Result<Response, ProposeError>`.
pub struct Propose;
impl Method for Propose {
    const NAME: &'static str = "ns.propose";
    const IDEMPOTENT: bool = false;
    type Request = RaftBlob;
    type Response = RaftBlob;
}

/// Body: postcard [`Query`]; answer: postcard `Result<QueryResponse, ProposeError>`.
pub struct Read;
impl Method for Read {
    const NAME: &'static str = "ns.read";
    const IDEMPOTENT: bool = true;
    type Request = RaftBlob;
    type Response = RaftBlob;
}

/// Request and reply bodies over this size travel as the call's bulk
/// payload instead: an RPC body is bounded (`BODY_BYTES_MAX`), an append of
/// many or large entries is not.
pub const INLINE_BYTES_MAX: usize = 64 * 1024;

/// Encodes `value` into a blob; encoding our own serde types cannot fail
/// short of a bug, which becomes an empty blob the peer reports as malformed.
pub fn blob<T: Serialize>(value: &T) -> RaftBlob {
    let bytes = encode("rpc body", value).unwrap_or_else(|e| {
        tracing::error!(error = %e, "encoding an RPC body failed");
        Vec::new()
    });
    RaftBlob { bytes }
}

/// Encodes `value` as a call's (body, bulk): inline when small, else as bulk
/// with an empty body. Our messages never encode to zero bytes.
pub fn envelope<T: Serialize>(value: &T) -> (RaftBlob, Bytes) {
    let blob = blob(value);
    if blob.bytes.len() > INLINE_BYTES_MAX {
        (RaftBlob::default(), Bytes::from(blob.bytes))
    } else {
        (blob, Bytes::new())
    }
}

/// The encoded bytes of an [`envelope`].
pub fn opened<'a>(body: &'a RaftBlob, bulk: &'a Bytes) -> &'a [u8] {
    if body.bytes.is_empty() {
        bulk
    } else {
        &body.bytes
    }
}

async fn handle<Req, T, E, F, Fut>(bytes: &[u8], f: F) -> (RaftBlob, Bytes)
where
    Req: DeserializeOwned,
    T: Serialize,
    E: Serialize,
    F: FnOnce(Req) -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let result = match decode::<Req>("rpc request", bytes) {
        Err(e) => RemoteResult::Malformed(e.to_string()),
        Ok(req) => match f(req).await {
            Ok(v) => RemoteResult::Ok(v),
            Err(e) => RemoteResult::Err(e),
        },
    };
    envelope::<RemoteResult<T, E>>(&result)
}

/// The header travels inline, the snapshot data as bulk.
async fn install_snapshot(raft: Raft, request: RaftBlob, bulk: Bytes) -> (RaftBlob, Bytes) {
    handle(&request.bytes, |header: SnapshotHeader| async move {
        let snapshot = openraft::Snapshot::<TypeConfig> {
            meta: header.meta,
            snapshot: Box::new(Cursor::new(bulk.to_vec())),
        };
        raft.install_full_snapshot(header.vote, snapshot).await
    })
    .await
}

/// Adds the Raft and client methods of this node to `router`.
pub fn routes(router: Router, raft: Raft, node: Arc<NodeShared>) -> Router {
    let (vote_raft, snapshot_raft) = (raft.clone(), raft.clone());
    let read_node = node.clone();
    router
        .add::<RaftAppend, _, _>(move |_ctx: RequestCtx, req, bulk| {
            let raft = raft.clone();
            async move { handle(opened(&req, &bulk), |r| async move { raft.append_entries(r).await }).await }
        })
        .add::<RaftVote, _, _>(move |_ctx: RequestCtx, req, bulk| {
            let raft = vote_raft.clone();
            async move { handle(opened(&req, &bulk), |r| async move { raft.vote(r).await }).await }
        })
        .add::<RaftSnapshot, _, _>(move |_ctx: RequestCtx, req, bulk| {
            install_snapshot(snapshot_raft.clone(), req, bulk)
        })
        .add::<Propose, _, _>(move |_ctx: RequestCtx, req, bulk| {
            let node = node.clone();
            async move {
                client_reply(
                    opened(&req, &bulk),
                    |c: Command| async move { node.propose_local(c).await },
                )
                .await
            }
        })
        .add::<Read, _, _>(move |_ctx: RequestCtx, req, bulk| {
            let node = read_node.clone();
            async move { client_reply(opened(&req, &bulk), |q: Query| async move { node.read_local(q).await }).await }
        })
}

async fn client_reply<Req, T, F, Fut>(bytes: &[u8], f: F) -> (RaftBlob, Bytes)
where
    Req: DeserializeOwned,
    T: Serialize,
    F: FnOnce(Req) -> Fut,
    Fut: std::future::Future<Output = Result<T, ProposeError>>,
{
    let result = match decode::<Req>("client request", bytes) {
        Ok(req) => f(req).await,
        Err(e) => Err(ProposeError::Fatal(format!("malformed request: {e}"))),
    };
    envelope(&result)
}

/// Decodes the answer (body and bulk) of an `ns.propose` or `ns.read` call.
pub fn decode_client_reply<T: DeserializeOwned>(response: &RaftBlob, bulk: &Bytes) -> Result<T, ProposeError> {
    match decode::<Result<T, ProposeError>>("client reply", opened(response, bulk)) {
        Ok(result) => result,
        Err(e) => Err(ProposeError::Unavailable(format!(
            "undecodable reply from the leader: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_bodies_travel_as_bulk_and_small_ones_inline() {
        let small = vec![7u8; 100];
        let (body, bulk) = envelope(&small);
        assert!(bulk.is_empty());
        assert_eq!(decode::<Vec<u8>>("t", opened(&body, &bulk)).expect("decode"), small);

        let large = vec![9u8; INLINE_BYTES_MAX * 3];
        let (body, bulk) = envelope(&large);
        assert!(body.bytes.is_empty());
        assert!(bulk.len() > INLINE_BYTES_MAX);
        assert_eq!(decode::<Vec<u8>>("t", opened(&body, &bulk)).expect("decode"), large);
    }

    #[test]
    fn a_garbage_client_reply_is_unavailable_not_a_panic() {
        let garbage = RaftBlob { bytes: vec![0xff; 3] };
        let result = decode_client_reply::<crate::namespace::Response>(&garbage, &Bytes::new());
        assert!(matches!(result, Err(ProposeError::Unavailable(_))));
    }
}
