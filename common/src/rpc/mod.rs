//! Cluster RPC: one bidirectional stream per call carrying a request frame
//! and, back, a response frame (see [`crate::wire`]).
//!
//! Node logic sees only [`Transport`] (client side) and [`Router`] (server
//! side); production wires them to QUIC for control and to a pooled TCP+TLS
//! data channel on the same port for bulk payloads ([`client`], [`server`]),
//! since QUIC costs 2.5-3.5x more CPU per byte here; a simulator can wire
//! them to anything else.
//! Calls carry deadlines; only [`Method::IDEMPOTENT`] calls are retried.

/// Declares a zero-sized [`Method`] type:
/// `rpc_method!(Name, "svc.verb", idempotent, Request => Response)`.
macro_rules! rpc_method {
    ($ty:ident, $name:literal, $idem:literal, $req:ty => $resp:ty) => {
        #[doc = concat!("`", $name, "`")]
        pub struct $ty;
        impl $crate::rpc::Method for $ty {
            const NAME: &'static str = $name;
            const IDEMPOTENT: bool = $idem;
            type Request = $req;
            type Response = $resp;
        }
    };
}
pub(crate) use rpc_method;

pub mod client;
pub mod custom;
pub mod frame;
pub mod router;
pub mod server;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;

use crate::wire::{CallStatus, Wire, WireError};

pub use client::{RpcClient, RpcClientConfig};
pub use custom::{CustomCall, CustomNetwork, CustomServer, Network};
pub use router::{RequestCtx, Router};
pub use server::{RpcServer, RpcServerConfig};

/// A typed RPC method. One zero-sized type per method.
pub trait Method: Send + Sync + 'static {
    /// Stable name on the wire and in metrics, `"<service>.<verb>"`.
    const NAME: &'static str;
    /// Whether a retry after an unknown outcome is safe.
    const IDEMPOTENT: bool;
    type Request: Wire + Send + Sync + 'static;
    type Response: Wire + Send + Sync + 'static;
}

/// Why a call failed at the RPC layer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RpcError {
    #[error("deadline of {0:?} exceeded")]
    Timeout(Duration),
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    /// The connection or stream failed mid-call: the outcome is unknown.
    #[error("transport failed: {0}")]
    Transport(String),
    #[error("malformed frame: {0}")]
    Frame(String),
    #[error("peer speaks wire version {0}, newer than ours")]
    Version(u16),
    #[error("unknown method {0}")]
    UnknownMethod(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("peer is shutting down")]
    ShuttingDown,
    #[error("remote internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Wire(#[from] WireErrorString),
}

/// [`WireError`] made `Clone` so `RpcError` can be cloned across retries.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct WireErrorString(pub String);

impl From<WireError> for RpcError {
    fn from(e: WireError) -> Self {
        RpcError::Wire(WireErrorString(e.to_string()))
    }
}

impl RpcError {
    /// Whether the request may not have reached the handler at all, so even
    /// a non-idempotent call could be retried. Conservative: only a failed
    /// connect qualifies.
    pub fn surely_not_sent(&self) -> bool {
        matches!(self, RpcError::Connect { .. })
    }

    /// The error a response status stands for (`None` for `Ok`).
    pub fn from_status(status: CallStatus) -> Option<RpcError> {
        match status {
            CallStatus::Ok => None,
            CallStatus::UnknownMethod => Some(RpcError::UnknownMethod(String::new())),
            CallStatus::BadRequest(m) => Some(RpcError::BadRequest(m)),
            CallStatus::DeadlineExceeded => Some(RpcError::Timeout(Duration::ZERO)),
            CallStatus::ShuttingDown => Some(RpcError::ShuttingDown),
            CallStatus::Internal(m) => Some(RpcError::Internal(m)),
        }
    }
}

/// Per-call knobs.
#[derive(Clone, Debug)]
pub struct CallOptions {
    /// Budget for one attempt, connect included.
    pub timeout: Duration,
    /// Extra attempts for idempotent methods (ignored otherwise).
    pub retries: u32,
    /// First backoff; doubles per attempt, with jitter.
    pub backoff: Duration,
    /// Hint that the response carries a large bulk payload (a read), so the
    /// call should take the bulk data channel even with a small request.
    pub prefer_bulk_channel: bool,
}

impl Default for CallOptions {
    fn default() -> Self {
        CallOptions {
            timeout: Duration::from_secs(10),
            retries: 3,
            backoff: Duration::from_millis(50),
            prefer_bulk_channel: false,
        }
    }
}

/// A response as received: body still encoded, bulk raw.
#[derive(Debug)]
pub struct RawResponse {
    pub body: Bytes,
    pub bulk: Bytes,
}

/// Client side of the RPC seam: send one call to a peer, get its response.
///
/// Implementations pick the path (QUIC stream, TCP+TLS for bulk, simulated
/// network) and enforce `opts.timeout` per attempt; [`call`] adds typing and
/// retries on top.
pub trait Transport: Send + Sync + 'static {
    fn call_raw(
        &self,
        peer: SocketAddr,
        method: &'static str,
        body: Bytes,
        bulk: Bytes,
        opts: &CallOptions,
    ) -> impl std::future::Future<Output = Result<RawResponse, RpcError>> + Send;
}

/// Call `M` on `peer`. Idempotent methods are retried with exponential
/// backoff on transport errors and timeouts; others only when the request
/// surely was not sent.
pub async fn call<M: Method, T: Transport>(
    transport: &T,
    peer: SocketAddr,
    request: &M::Request,
    bulk: Bytes,
    opts: &CallOptions,
) -> Result<(M::Response, Bytes), RpcError> {
    let body = Bytes::from(request.to_wire()?.into_vec());
    let mut backoff = opts.backoff;
    let mut attempt = 0u32;
    loop {
        let result = transport
            .call_raw(peer, M::NAME, body.clone(), bulk.clone(), opts)
            .await;
        match result {
            Ok(raw) => {
                let response = M::Response::from_wire(&raw.body)?;
                return Ok((response, raw.bulk));
            }
            Err(e) if attempt < opts.retries && retryable::<M>(&e) => {
                attempt += 1;
                metrics::counter!("rpc_client_retries_total", "method" => M::NAME).increment(1);
                tracing::debug!(method = M::NAME, %peer, attempt, error = %e, "retrying call");
                let jitter_ms = crate::rng::below(backoff.as_millis() as u64 + 1);
                tokio::time::sleep(backoff + Duration::from_millis(jitter_ms)).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}

fn retryable<M: Method>(e: &RpcError) -> bool {
    let transient = matches!(
        e,
        RpcError::Timeout(_) | RpcError::Connect { .. } | RpcError::Transport(_) | RpcError::ShuttingDown
    );
    transient && (M::IDEMPOTENT || e.surely_not_sent())
}
