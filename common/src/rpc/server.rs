//! RPC server: accepts calls on one port number over QUIC (UDP) and over the
//! TCP+TLS bulk data channel (TCP), both with mutual TLS requiring a client
//! certificate signed by the cluster CA, and hands each call to the
//! [`Router`].
//!
//! One task per QUIC stream; one task per TCP connection serving its calls
//! in turn. Each call: read the request frame (bounded by
//! `request_read_timeout`), dispatch within the header's deadline (else
//! `DeadlineExceeded`), write the response frame. A malformed frame closes
//! only its own stream (QUIC) or connection (TCP) and is counted in
//! `rpc_server_bad_frames_total`. `shutdown` stops accepting, answers new
//! calls with `ShuttingDown`, waits up to `shutdown_grace` for calls in
//! flight, then closes everything.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use quinn::crypto::rustls::QuicServerConfig;
use quinn::VarInt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::client::QuicTuning;
use super::custom::CustomServer;
use super::frame::{self, Frame, PREFIX_BYTES};
use super::router::{error_reply, Reply};
use super::{RequestCtx, Router, RpcError};
use crate::pki::{self, NodeIdentity};
use crate::wire::{CallStatus, RequestHeader, ResponseHeader, BODY_BYTES_MAX, BULK_BYTES_MAX, WIRE_VERSION};

/// QUIC application error codes the server closes streams and connections with.
const CODE_BAD_FRAME: u32 = 2;
const CODE_SHUTDOWN: u32 = 3;
/// Bound of a TLS handshake on either path.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Fresh-port attempts when binding port 0 finds the TCP port taken.
const BIND_ATTEMPTS: usize = 8;
/// Data-channel connections served at once (handshakes included).
const TCP_CONNECTIONS_MAX: usize = 4096;
/// How long `shutdown` waits for QUIC connections to drain after closing.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct RpcServerConfig {
    /// How long `shutdown` waits for calls in flight.
    pub shutdown_grace: Duration,
    /// Calls served at once per connection.
    pub max_concurrent_streams: u32,
    /// Bound on receiving one whole request frame.
    pub request_read_timeout: Duration,
    /// An idle data-channel connection is closed after this long.
    pub tcp_idle_timeout: Duration,
    /// QUIC transport knobs (must be compatible with the clients').
    pub quic: QuicTuning,
}

impl Default for RpcServerConfig {
    fn default() -> Self {
        RpcServerConfig {
            shutdown_grace: Duration::from_secs(5),
            max_concurrent_streams: 256,
            request_read_timeout: Duration::from_secs(30),
            tcp_idle_timeout: Duration::from_secs(120),
            quic: QuicTuning::default(),
        }
    }
}

pub struct RpcServer {
    local_addr: SocketAddr,
    kind: ServerKind,
}

enum ServerKind {
    Quic(QuicServer),
    /// Taken by `shutdown`.
    Custom(Option<Box<dyn CustomServer>>),
}

struct QuicServer {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    accept_tasks: Vec<JoinHandle<()>>,
}

/// State every connection and call task sees.
struct Shared {
    router: Router,
    config: RpcServerConfig,
    /// Cancelled when `shutdown` starts: stop accepting, refuse new calls.
    stopping: CancellationToken,
    /// Cancelled when the grace period ends: abandon everything.
    closing: CancellationToken,
    /// Calls in flight (QUIC stream tasks; TCP connections while serving).
    calls: TaskTracker,
}

impl RpcServer {
    /// Listens on `addr` (UDP for QUIC and TCP for bulk, same port).
    pub async fn bind(
        addr: SocketAddr,
        identity: NodeIdentity,
        router: Router,
        config: RpcServerConfig,
    ) -> anyhow::Result<Self> {
        let runtime = quinn::default_runtime().context("the RPC server needs a tokio runtime")?;
        let (udp, listener) = bind_sockets(addr, &config.quic).await?;
        let local_addr = udp.local_addr().context("reading the bound UDP address")?;
        let tls = identity.server_tls_config()?;
        let quic_crypto = QuicServerConfig::try_from(tls.clone()).context("making the TLS config QUIC-compatible")?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(quic_crypto));
        server_config.transport_config(Arc::new(config.quic.transport_config(config.max_concurrent_streams)?));
        server_config.migration(false);
        let endpoint = quinn::Endpoint::new(config.quic.endpoint_config()?, Some(server_config), udp, runtime)
            .context("creating the QUIC server endpoint")?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let shared = Arc::new(Shared {
            router,
            config,
            stopping: CancellationToken::new(),
            closing: CancellationToken::new(),
            calls: TaskTracker::new(),
        });
        let accept_tasks = vec![
            tokio::spawn(accept_quic(endpoint.clone(), shared.clone())),
            tokio::spawn(accept_tcp(listener, acceptor, shared.clone())),
        ];
        tracing::info!(addr = %local_addr, node = %identity.name, "RPC server listening (QUIC + TCP data channel)");
        Ok(RpcServer {
            local_addr,
            kind: ServerKind::Quic(QuicServer {
                endpoint,
                shared,
                accept_tasks,
            }),
        })
    }

    /// A server on a custom network (see [`super::Network`]).
    pub fn custom(server: Box<dyn CustomServer>) -> Self {
        RpcServer {
            local_addr: server.local_addr(),
            kind: ServerKind::Custom(Some(server)),
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets calls in flight finish within the grace period.
    pub async fn shutdown(mut self) {
        match &mut self.kind {
            ServerKind::Quic(quic) => quic.shutdown(self.local_addr).await,
            ServerKind::Custom(server) => {
                if let Some(server) = server.take() {
                    server.shutdown().await;
                }
            }
        }
    }
}

impl QuicServer {
    async fn shutdown(&mut self, local_addr: SocketAddr) {
        let shared = self.shared.clone();
        shared.stopping.cancel();
        shared.calls.close();
        if tokio::time::timeout(shared.config.shutdown_grace, shared.calls.wait())
            .await
            .is_err()
        {
            tracing::warn!(addr = %local_addr, calls = shared.calls.len(), "shutdown grace over, abandoning calls");
        }
        shared.closing.cancel();
        self.endpoint
            .close(VarInt::from_u32(CODE_SHUTDOWN), b"server shutting down");
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, self.endpoint.wait_idle()).await;
        for task in self.accept_tasks.drain(..) {
            let _ = task.await;
        }
        // Connections accepted while the first close ran: close them too, so
        // the UDP port is free once `shutdown` returns.
        self.endpoint
            .close(VarInt::from_u32(CODE_SHUTDOWN), b"server shutting down");
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, self.endpoint.wait_idle()).await;
        // Abandoned calls notice `closing` at their next await point.
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, shared.calls.wait()).await;
        tracing::info!(addr = %local_addr, "RPC server stopped");
    }
}

impl Drop for QuicServer {
    fn drop(&mut self) {
        // Without a `shutdown`, stop at once.
        self.shared.stopping.cancel();
        self.shared.closing.cancel();
        self.endpoint.close(VarInt::from_u32(CODE_SHUTDOWN), b"server dropped");
    }
}

/// Binds UDP then TCP on the same port number; for port 0, retries with a
/// fresh port if the TCP port is taken.
async fn bind_sockets(addr: SocketAddr, tuning: &QuicTuning) -> anyhow::Result<(std::net::UdpSocket, TcpListener)> {
    let attempts = if addr.port() == 0 { BIND_ATTEMPTS } else { 1 };
    let mut last_error = None;
    for _ in 0..attempts {
        let udp = tuning.bind_udp(addr).with_context(|| format!("binding UDP {addr}"))?;
        let port = udp.local_addr().context("reading the bound UDP address")?.port();
        let tcp_addr = SocketAddr::new(addr.ip(), port);
        match TcpListener::bind(tcp_addr).await {
            Ok(listener) => return Ok((udp, listener)),
            Err(e) => last_error = Some(anyhow::Error::new(e).context(format!("binding TCP {tcp_addr}"))),
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow::anyhow!("binding {addr}: no attempt made")))
}

async fn accept_quic(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            _ = shared.closing.cancelled() => break,
        };
        let Some(incoming) = incoming else { break };
        if shared.stopping.is_cancelled() {
            incoming.refuse();
            continue;
        }
        tokio::spawn(serve_quic_connection(incoming, shared.clone()));
    }
}

async fn serve_quic_connection(incoming: quinn::Incoming, shared: Arc<Shared>) {
    let peer = incoming.remote_address();
    // A handshake still running when the server closes must end with it:
    // a connection born after `Endpoint::close` would otherwise keep the
    // endpoint (and its UDP port) alive until the peer goes idle.
    let handshake = tokio::select! {
        handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming) => handshake,
        _ = shared.closing.cancelled() => return,
    };
    let conn = match handshake {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return handshake_failed(peer, "quic", &e),
        Err(_) => return handshake_failed(peer, "quic", &"timed out"),
    };
    let peer_name = conn
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>().ok())
        .and_then(|certs| certs.first().and_then(pki::common_name));
    tracing::debug!(%peer, ?peer_name, "QUIC connection accepted");
    loop {
        let streams = tokio::select! {
            streams = conn.accept_bi() => streams,
            _ = shared.closing.cancelled() => break,
        };
        let Ok((send, recv)) = streams else { break };
        let ctx = CallPeer {
            addr: peer,
            name: peer_name.clone(),
        };
        shared.calls.spawn(serve_quic_stream(send, recv, ctx, shared.clone()));
    }
    conn.close(VarInt::from_u32(CODE_SHUTDOWN), b"server shutting down");
}

/// Who sent a call, as the transport authenticated it.
#[derive(Clone)]
struct CallPeer {
    addr: SocketAddr,
    name: Option<String>,
}

impl CallPeer {
    fn ctx(&self, request_id: u64) -> RequestCtx {
        RequestCtx {
            request_id,
            peer: self.addr,
            peer_name: self.name.clone(),
        }
    }
}

async fn serve_quic_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    peer: CallPeer,
    shared: Arc<Shared>,
) {
    let work = async {
        let read = read_request(&shared, frame::read_frame::<RequestHeader, _>(&mut recv)).await;
        let (header, reply) = match read {
            Ok(request) => handle(&shared, request, &peer).await,
            Err(RpcError::Version(v)) => version_reply(v),
            Err(e) => {
                bad_frame(peer.addr, "quic", &e);
                let _ = send.reset(VarInt::from_u32(CODE_BAD_FRAME));
                let _ = recv.stop(VarInt::from_u32(CODE_BAD_FRAME));
                return;
            }
        };
        if let Err(e) = frame::write_frame_quic(&mut send, &header, &reply.body, &reply.bulk).await {
            tracing::debug!(peer = %peer.addr, error = %e, "writing response failed");
            return;
        }
        let _ = send.finish();
        // Stay in flight until the peer has the whole response, so a
        // graceful shutdown never cuts one off.
        let _ = send.stopped().await;
    };
    tokio::select! {
        _ = work => {}
        _ = shared.closing.cancelled() => {}
    }
}

async fn accept_tcp(listener: TcpListener, acceptor: tokio_rustls::TlsAcceptor, shared: Arc<Shared>) {
    let connections = Arc::new(Semaphore::new(TCP_CONNECTIONS_MAX));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shared.stopping.cancelled() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // E.g. out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, "accepting a data channel connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            metrics::counter!("rpc_server_refused_connections_total", "transport" => "tcp").increment(1);
            tracing::warn!(%peer, max = TCP_CONNECTIONS_MAX, "too many data channel connections, refusing");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            serve_tcp_connection(tcp, peer, acceptor, shared).await;
            drop(permit);
        });
    }
}

async fn serve_tcp_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
) {
    let mut tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return handshake_failed(peer, "tcp", &e),
        Err(_) => return handshake_failed(peer, "tcp", &"timed out"),
    };
    let peer_name = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first().and_then(pki::common_name));
    tracing::debug!(%peer, ?peer_name, "data channel connection accepted");
    let peer = CallPeer {
        addr: peer,
        name: peer_name,
    };
    loop {
        let prefix = tokio::select! {
            prefix = read_prefix(&mut tls) => prefix,
            _ = tokio::time::sleep(shared.config.tcp_idle_timeout) => break,
            _ = shared.stopping.cancelled() => break,
        };
        let prefix = match prefix {
            Ok(Some(prefix)) => prefix,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(peer = %peer.addr, error = %e, "data channel read failed");
                break;
            }
        };
        // Counted as in flight while serving, so shutdown waits for it.
        let _in_flight = shared.calls.token();
        let keep = tokio::select! {
            keep = serve_tcp_call(&mut tls, prefix, &peer, &shared) => keep,
            _ = shared.closing.cancelled() => false,
        };
        if !keep {
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_millis(100), tls.shutdown()).await;
}

/// Serves one call on a data-channel connection; false if the connection
/// must be closed afterwards.
async fn serve_tcp_call(
    tls: &mut TlsStream<TcpStream>,
    prefix: [u8; PREFIX_BYTES],
    peer: &CallPeer,
    shared: &Shared,
) -> bool {
    let read = read_request(shared, frame::read_frame_after_prefix::<RequestHeader, _>(tls, prefix)).await;
    let (header, reply, keep) = match read {
        Ok(request) => {
            let (header, reply) = handle(shared, request, peer).await;
            (header, reply, !shared.stopping.is_cancelled())
        }
        Err(RpcError::Version(v)) => {
            let (header, reply) = version_reply(v);
            (header, reply, false)
        }
        Err(e) => {
            bad_frame(peer.addr, "tcp", &e);
            return false;
        }
    };
    match frame::write_frame(tls, &header, &reply.body, &reply.bulk).await {
        Ok(()) => keep,
        Err(e) => {
            tracing::debug!(peer = %peer.addr, error = %e, "writing response failed");
            false
        }
    }
}

/// Waits for the first bytes of the next request. `None`: the peer closed
/// the connection between calls.
async fn read_prefix(tls: &mut TlsStream<TcpStream>) -> std::io::Result<Option<[u8; PREFIX_BYTES]>> {
    let mut prefix = [0u8; PREFIX_BYTES];
    match tls.read(&mut prefix[..1]).await {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    tls.read_exact(&mut prefix[1..]).await?;
    Ok(Some(prefix))
}

async fn read_request<F>(shared: &Shared, read: F) -> Result<Frame<RequestHeader>, RpcError>
where
    F: std::future::Future<Output = Result<Frame<RequestHeader>, RpcError>>,
{
    let limit = shared.config.request_read_timeout;
    tokio::time::timeout(limit, read)
        .await
        .map_err(|_| RpcError::Frame(format!("request not received within {limit:?}")))?
}

/// Dispatches one request within its deadline; returns the response header
/// and reply to send.
async fn handle(shared: &Shared, request: Frame<RequestHeader>, peer: &CallPeer) -> (ResponseHeader, Reply) {
    let RequestHeader {
        request_id,
        method,
        deadline_ms,
        ..
    } = request.header;
    let reply = if shared.stopping.is_cancelled() {
        error_reply(CallStatus::ShuttingDown)
    } else {
        let dispatch = shared
            .router
            .dispatch(&method, peer.ctx(request_id), request.body, request.bulk);
        if deadline_ms == 0 {
            dispatch.await
        } else {
            let deadline = Duration::from_millis(u64::from(deadline_ms));
            tokio::time::timeout(deadline, dispatch).await.unwrap_or_else(|_| {
                metrics::counter!("rpc_server_deadline_exceeded_total").increment(1);
                error_reply(CallStatus::DeadlineExceeded)
            })
        }
    };
    let reply = bounded_reply(reply, &method);
    (response_header(request_id, &reply), reply)
}

/// A handler's reply too large for a frame becomes an internal error.
fn bounded_reply(reply: Reply, method: &str) -> Reply {
    if reply.body.len() > BODY_BYTES_MAX as usize || reply.bulk.len() as u64 > BULK_BYTES_MAX {
        tracing::error!(
            method,
            body = reply.body.len(),
            bulk = reply.bulk.len(),
            "reply exceeds frame limits"
        );
        return error_reply(CallStatus::Internal("reply exceeds frame limits".into()));
    }
    reply
}

fn response_header(request_id: u64, reply: &Reply) -> ResponseHeader {
    ResponseHeader {
        request_id,
        status: reply.status.clone(),
        body_len: reply.body.len() as u32,
        bulk_len: reply.bulk.len() as u64,
    }
}

/// Answer to a request in a newer wire version than ours (its header is
/// unreadable, hence request id 0); the stream or connection then closes.
fn version_reply(version: u16) -> (ResponseHeader, Reply) {
    metrics::counter!("rpc_server_version_mismatch_total").increment(1);
    let reply = error_reply(CallStatus::BadRequest(format!(
        "wire version {version} not supported; this node speaks {WIRE_VERSION}"
    )));
    (response_header(0, &reply), reply)
}

fn bad_frame(peer: SocketAddr, transport: &'static str, e: &RpcError) {
    if let RpcError::Transport(_) = e {
        // The peer went away mid-request (reset, timeout on its side).
        tracing::debug!(%peer, transport, error = %e, "request stream failed");
        return;
    }
    metrics::counter!("rpc_server_bad_frames_total", "transport" => transport).increment(1);
    tracing::warn!(%peer, transport, error = %e, "malformed request frame, closing the stream");
}

fn handshake_failed(peer: SocketAddr, transport: &'static str, e: &dyn std::fmt::Display) {
    metrics::counter!("rpc_server_handshake_failures_total", "transport" => transport).increment(1);
    tracing::debug!(%peer, transport, error = %e, "TLS handshake refused or failed");
}
