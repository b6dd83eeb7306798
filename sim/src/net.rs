//! The cluster RPC over turmoil's simulated TCP: every call opens its own
//! simulated connection to the peer, sends one request frame (the real wire
//! format of `tessera_common::rpc::frame`) and reads one response frame, so
//! turmoil's partitions, latency and crashes apply to every call. Servers
//! dispatch to the node's real [`Router`] within the request's deadline.
//!
//! Message loss: while [`TurmoilNetwork::set_loss_per_million`] is above
//! zero, each call loses its request (the server never sees it) or its
//! response (the server acted, the caller never hears) with that
//! probability each, drawn from the thread's seeded generator. Either way the
//! caller waits out its timeout, as over a TCP connection that went dark.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tessera_common::rpc::custom::BoxFuture;
use tessera_common::rpc::frame::{read_frame, write_frame};
use tessera_common::rpc::{CustomCall, CustomNetwork, CustomServer, RawResponse, RequestCtx, Router, RpcError};
use tessera_common::wire::{CallStatus, RequestHeader, ResponseHeader};
use tokio::task::JoinHandle;
use turmoil::net::{TcpListener, TcpStream};

/// A request not fully received within this is dropped (a peer that
/// crashed mid-send).
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(5);

const PER_MILLION: u32 = 1_000_000;

/// The simulator's network; clones share the loss setting, one value
/// serves every host of a run.
#[derive(Clone, Debug, Default)]
pub struct TurmoilNetwork {
    loss_per_million: Arc<AtomicU32>,
}

impl TurmoilNetwork {
    pub fn handle(&self) -> Arc<dyn CustomNetwork> {
        Arc::new(self.clone())
    }

    /// Probability (in millionths, at most one million) that a call loses
    /// its request, and separately its response.
    pub fn set_loss_per_million(&self, loss_per_million: u32) {
        assert!(loss_per_million <= PER_MILLION, "a probability above one");
        self.loss_per_million.store(loss_per_million, Ordering::Relaxed);
    }

    fn loses_message(&self) -> bool {
        let loss_per_million = self.loss_per_million.load(Ordering::Relaxed);
        loss_per_million > 0 && tessera_common::rng::below(u64::from(PER_MILLION)) < u64::from(loss_per_million)
    }
}

/// Which message of a call the network drops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loss {
    None,
    Request,
    Response,
}

impl CustomNetwork for TurmoilNetwork {
    fn call(&self, call: CustomCall) -> BoxFuture<Result<RawResponse, RpcError>> {
        let loss = match (self.loses_message(), self.loses_message()) {
            (true, _) => Loss::Request,
            (false, true) => Loss::Response,
            (false, false) => Loss::None,
        };
        Box::pin(async move {
            let timeout = call.timeout;
            tokio::time::timeout(timeout, exchange(call, loss))
                .await
                .map_err(|_| RpcError::Timeout(timeout))?
        })
    }

    fn serve(&self, listen: SocketAddr, router: Router) -> BoxFuture<anyhow::Result<Box<dyn CustomServer>>> {
        Box::pin(async move {
            // A simulated host has one address, and turmoil binds only the
            // unspecified one: binding it is binding the host's address.
            let any = SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), listen.port());
            let listener = TcpListener::bind(any)
                .await
                .map_err(|e| anyhow::anyhow!("binding {listen} in the simulation: {e}"))?;
            let local_addr = match listen.ip().is_unspecified() {
                true => listener
                    .local_addr()
                    .map_err(|e| anyhow::anyhow!("reading the bound address: {e}"))?,
                false => listen,
            };
            let accept = tokio::spawn(accept_loop(listener, router));
            Ok(Box::new(SimServer { local_addr, accept }) as Box<dyn CustomServer>)
        })
    }
}

async fn exchange(call: CustomCall, loss: Loss) -> Result<RawResponse, RpcError> {
    if loss == Loss::Request {
        return std::future::pending().await;
    }
    let mut stream = TcpStream::connect(call.peer).await.map_err(|e| RpcError::Connect {
        addr: call.peer,
        reason: e.to_string(),
    })?;
    let header = RequestHeader {
        request_id: call.request_id,
        method: call.method.to_string(),
        deadline_ms: u32::try_from(call.timeout.as_millis()).unwrap_or(u32::MAX).max(1),
        body_len: u32::try_from(call.body.len()).map_err(|_| RpcError::Frame("request body too large".into()))?,
        bulk_len: call.bulk.len() as u64,
    };
    write_frame(&mut stream, &header, &call.body, &call.bulk).await?;
    let response = read_frame::<ResponseHeader, _>(&mut stream).await?;
    if loss == Loss::Response {
        return std::future::pending().await;
    }
    if response.header.request_id != call.request_id {
        return Err(RpcError::Frame(format!(
            "response for request {} to request {}",
            response.header.request_id, call.request_id
        )));
    }
    match RpcError::from_status(response.header.status) {
        None => Ok(RawResponse {
            body: response.body,
            bulk: response.bulk,
        }),
        Some(RpcError::UnknownMethod(_)) => Err(RpcError::UnknownMethod(call.method.to_string())),
        Some(RpcError::Timeout(_)) => Err(RpcError::Timeout(call.timeout)),
        Some(e) => Err(e),
    }
}

struct SimServer {
    local_addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl CustomServer for SimServer {
    fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    fn shutdown(self: Box<Self>) -> BoxFuture<()> {
        self.accept.abort();
        Box::pin(async {})
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, router: Router) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(serve_call(stream, peer, router.clone()));
            }
            Err(e) => {
                tracing::debug!(error = %e, "simulated accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn serve_call(mut stream: TcpStream, peer: SocketAddr, router: Router) {
    let request = match tokio::time::timeout(REQUEST_READ_TIMEOUT, read_frame::<RequestHeader, _>(&mut stream)).await {
        Ok(Ok(request)) => request,
        Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "simulated request unreadable"),
        Err(_) => return tracing::debug!(%peer, "simulated request not received in time"),
    };
    let RequestHeader {
        request_id,
        method,
        deadline_ms,
        ..
    } = request.header;
    let ctx = RequestCtx {
        request_id,
        peer,
        peer_name: None,
    };
    let deadline = Duration::from_millis(u64::from(deadline_ms.max(1)));
    let dispatch = router.dispatch(&method, ctx, request.body, request.bulk);
    let (status, body, bulk) = match tokio::time::timeout(deadline, dispatch).await {
        Ok(reply) => (reply.status, reply.body, reply.bulk),
        Err(_) => (CallStatus::DeadlineExceeded, Default::default(), Default::default()),
    };
    let header = ResponseHeader {
        request_id,
        status,
        body_len: body.len() as u32,
        bulk_len: bulk.len() as u64,
    };
    if let Err(e) = write_frame(&mut stream, &header, &body, &bulk).await {
        tracing::debug!(%peer, error = %e, "simulated response not delivered");
    }
}
