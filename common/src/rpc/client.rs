//! RPC client: the production [`Transport`]. Owns one quinn client endpoint
//! with one cached QUIC connection per peer (one bidirectional stream per
//! call), and a small pool of idle TCP+TLS connections per peer for the bulk
//! data channel (one call at a time per connection). Both paths use mutual
//! TLS with the node's certificate and trust only the cluster CA.
//!
//! Path choice: a call goes over the data channel when its request bulk is at
//! least [`RpcClientConfig::bulk_threshold_bytes`] or when the caller sets
//! [`CallOptions::prefer_bulk_channel`] (for calls whose response is bulk,
//! like `chunk.read`); every other call goes over QUIC. Each attempt is
//! bounded by `opts.timeout`, connect included. Also defines [`QuicTuning`],
//! the QUIC transport knobs shared with the server.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use quinn::crypto::rustls::QuicClientConfig;
use quinn::{MtuDiscoveryConfig, VarInt};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant as TokioInstant;
use tokio_rustls::client::TlsStream;
use tracing::Instrument;

use super::custom::{CustomCall, CustomNetwork};
use super::frame::{self, Frame};
use super::{CallOptions, RawResponse, RpcError, Transport};
use crate::pki::{self, NodeIdentity};
use crate::wire::{CallStatus, RequestHeader, ResponseHeader};

/// Application error code a client uses when it abandons a stream.
const CODE_CANCELLED: u32 = 1;
/// Idle data-channel connections kept per peer.
const TCP_IDLE_PER_PEER_MAX: usize = 8;
/// An idle data-channel connection older than this is dropped rather than
/// reused (kept well below the server's idle timeout).
const TCP_IDLE_MAX: Duration = Duration::from_secs(30);

/// QUIC transport knobs, shared by client and server. Bulk normally takes
/// the TCP+TLS data channel (QUIC measured ~2.5x its CPU per byte, see
/// `common/benches/bulk.rs`), so the defaults favour robustness: windows
/// large enough for a few MiB per call, and MTU discovery from QUIC's safe
/// 1200 bytes up to Ethernet's 1452 (larger datagrams lost packets and
/// collapsed to 1200 in the loopback measurements).
#[derive(Clone, Debug)]
pub struct QuicTuning {
    /// Flow-control window of one stream (one call).
    pub stream_receive_window_bytes: u32,
    /// Flow-control window of a whole connection.
    pub receive_window_bytes: u32,
    /// Bytes buffered for sending per connection.
    pub send_window_bytes: u64,
    /// Datagram size used before MTU discovery confirms a larger one.
    pub initial_mtu_bytes: u16,
    /// Upper bound of MTU discovery, and the largest UDP payload accepted.
    pub mtu_upper_bytes: u16,
    /// Datagram size assumed always to pass (QUIC's floor is 1200). Raising
    /// it above the real path MTU breaks connections: only for known links.
    pub min_mtu_bytes: u16,
    /// UDP segmentation offload (GSO). On loopback with datagrams above
    /// ~1.5 KB it lost a third of the packets in our measurements.
    pub segmentation_offload: bool,
    /// SO_RCVBUF / SO_SNDBUF requested for the UDP socket (the kernel caps it).
    pub socket_buffer_bytes: usize,
    /// A connection silent for this long is closed.
    pub idle_timeout: Duration,
    /// Keep-alive interval, below `idle_timeout`, so cached connections stay up.
    pub keep_alive_interval: Duration,
    /// Starting RTT estimate (drives handshake retransmission).
    pub initial_rtt: Duration,
}

impl Default for QuicTuning {
    fn default() -> Self {
        QuicTuning {
            stream_receive_window_bytes: 8 * 1024 * 1024,
            receive_window_bytes: 32 * 1024 * 1024,
            send_window_bytes: 32 * 1024 * 1024,
            initial_mtu_bytes: 1200,
            mtu_upper_bytes: 1452,
            min_mtu_bytes: 1200,
            segmentation_offload: true,
            socket_buffer_bytes: 4 * 1024 * 1024,
            // A killed peer never closes its connections, so silence is the
            // only sign: calls on a dead cached connection fail within this
            // bound instead of timing out one by one (the fault tests saw
            // 20-40 s stalls at 30 s).
            idle_timeout: Duration::from_secs(6),
            keep_alive_interval: Duration::from_secs(1),
            initial_rtt: Duration::from_millis(50),
        }
    }
}

impl QuicTuning {
    /// Transport configuration allowing `max_bidi_streams` concurrent calls
    /// opened by the peer.
    pub fn transport_config(&self, max_bidi_streams: u32) -> anyhow::Result<quinn::TransportConfig> {
        let mut t = quinn::TransportConfig::default();
        t.max_concurrent_bidi_streams(VarInt::from_u32(max_bidi_streams))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .stream_receive_window(VarInt::from_u32(self.stream_receive_window_bytes))
            .receive_window(VarInt::from_u32(self.receive_window_bytes))
            .send_window(self.send_window_bytes)
            .initial_mtu(self.initial_mtu_bytes)
            .min_mtu(self.min_mtu_bytes.min(self.initial_mtu_bytes))
            .initial_rtt(self.initial_rtt)
            .keep_alive_interval(Some(self.keep_alive_interval))
            .max_idle_timeout(Some(
                self.idle_timeout.try_into().context("QUIC idle timeout out of range")?,
            ));
        let mut mtud = MtuDiscoveryConfig::default();
        mtud.upper_bound(self.mtu_upper_bytes.max(self.initial_mtu_bytes));
        t.mtu_discovery_config(Some(mtud));
        t.enable_segmentation_offload(self.segmentation_offload);
        Ok(t)
    }

    /// Endpoint configuration accepting datagrams up to `mtu_upper_bytes`.
    pub fn endpoint_config(&self) -> anyhow::Result<quinn::EndpointConfig> {
        let mut e = quinn::EndpointConfig::default();
        let max_payload = self.mtu_upper_bytes.max(self.initial_mtu_bytes).max(1200);
        e.max_udp_payload_size(max_payload)
            .context("QUIC max UDP payload size out of range")?;
        Ok(e)
    }

    /// Binds a UDP socket for an endpoint with this tuning's buffer sizes.
    pub fn bind_udp(&self, addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
        let domain = socket2::Domain::for_address(addr);
        let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
        if addr.is_ipv6() && addr.ip().is_unspecified() {
            // Dual stack, so one client endpoint reaches IPv4 and IPv6 peers.
            socket.set_only_v6(false)?;
        }
        // Best effort: the kernel caps these at net.core.{r,w}mem_max.
        let _ = socket.set_recv_buffer_size(self.socket_buffer_bytes);
        let _ = socket.set_send_buffer_size(self.socket_buffer_bytes);
        socket.bind(&addr.into())?;
        Ok(socket.into())
    }
}

#[derive(Clone, Debug)]
pub struct RpcClientConfig {
    /// Bulk payloads at least this large go over the TCP+TLS data channel.
    pub bulk_threshold_bytes: usize,
    pub connect_timeout: Duration,
    /// QUIC transport knobs (must be compatible with the servers').
    pub quic: QuicTuning,
}

impl Default for RpcClientConfig {
    fn default() -> Self {
        RpcClientConfig {
            bulk_threshold_bytes: 64 * 1024,
            connect_timeout: Duration::from_secs(3),
            quic: QuicTuning::default(),
        }
    }
}

/// Cheap to clone; connections are shared and reused.
#[derive(Clone)]
pub struct RpcClient {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Quic(Arc<ClientInner>),
    Custom(Arc<dyn CustomNetwork>),
}

type QuicSlot = Arc<tokio::sync::Mutex<Option<quinn::Connection>>>;

struct IdleTls {
    stream: TlsStream<TcpStream>,
    idle_since: Instant,
}

struct ClientInner {
    endpoint: quinn::Endpoint,
    tls: tokio_rustls::TlsConnector,
    config: RpcClientConfig,
    quic_conns: Mutex<HashMap<SocketAddr, QuicSlot>>,
    tcp_idle: Mutex<HashMap<SocketAddr, Vec<IdleTls>>>,
    closed: AtomicBool,
}

impl RpcClient {
    /// Creates the client endpoint. Must run inside a tokio runtime.
    pub fn new(identity: NodeIdentity, config: RpcClientConfig) -> anyhow::Result<Self> {
        let tls = identity.client_tls_config()?;
        let quic_crypto = QuicClientConfig::try_from(tls.clone()).context("making the TLS config QUIC-compatible")?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(quic_crypto));
        client_config.transport_config(Arc::new(config.quic.transport_config(0)?));
        let mut endpoint = client_endpoint(&config.quic)?;
        endpoint.set_default_client_config(client_config);
        Ok(RpcClient {
            backend: Backend::Quic(Arc::new(ClientInner {
                endpoint,
                tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
                config,
                quic_conns: Mutex::new(HashMap::new()),
                tcp_idle: Mutex::new(HashMap::new()),
                closed: AtomicBool::new(false),
            })),
        })
    }

    /// A client whose calls go over `network` (see [`super::Network`]).
    pub fn custom(network: Arc<dyn CustomNetwork>) -> Self {
        RpcClient {
            backend: Backend::Custom(network),
        }
    }

    /// Closes every connection; calls in flight fail, later calls fail with
    /// [`RpcError::Connect`]. A custom network's client has none to close.
    pub fn shutdown(&self) {
        let Backend::Quic(inner) = &self.backend else { return };
        inner.closed.store(true, Ordering::SeqCst);
        inner.endpoint.close(VarInt::from_u32(0), b"client shutdown");
        lock(&inner.quic_conns).clear();
        lock(&inner.tcp_idle).clear();
    }

    /// Statistics of the cached QUIC connection to `peer`, if there is one
    /// (for diagnostics and benchmarks).
    pub fn quic_stats(&self, peer: SocketAddr) -> Option<quinn::ConnectionStats> {
        let Backend::Quic(inner) = &self.backend else {
            return None;
        };
        let slot = lock(&inner.quic_conns).get(&peer)?.clone();
        let cached = slot.try_lock().ok()?;
        cached.as_ref().map(quinn::Connection::stats)
    }

    /// Idle data-channel connections pooled for `peer` (for tests and
    /// diagnostics).
    pub fn idle_data_connections(&self, peer: SocketAddr) -> usize {
        let Backend::Quic(inner) = &self.backend else { return 0 };
        lock(&inner.tcp_idle).get(&peer).map_or(0, Vec::len)
    }
}

fn client_endpoint(tuning: &QuicTuning) -> anyhow::Result<quinn::Endpoint> {
    let runtime = quinn::default_runtime().context("the RPC client needs a tokio runtime")?;
    let socket = tuning
        .bind_udp(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)))
        .or_else(|_| tuning.bind_udp(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))))
        .context("binding the client UDP socket")?;
    quinn::Endpoint::new(tuning.endpoint_config()?, None, socket, runtime).context("creating the QUIC client endpoint")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data: keep going.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Transport for RpcClient {
    async fn call_raw(
        &self,
        peer: SocketAddr,
        method: &'static str,
        body: Bytes,
        bulk: Bytes,
        opts: &CallOptions,
    ) -> Result<RawResponse, RpcError> {
        let request_id = crate::rng::random_u64().max(1);
        let (channel, result, started) = match &self.backend {
            Backend::Quic(inner) => {
                let data_channel = bulk.len() >= inner.config.bulk_threshold_bytes || opts.prefer_bulk_channel;
                let channel = if data_channel { "tcp" } else { "quic" };
                let span = tracing::debug_span!("rpc_call", method, request_id, %peer, channel);
                let started = Instant::now();
                let result = inner
                    .attempt(peer, method, request_id, body, bulk, opts, data_channel)
                    .instrument(span.clone())
                    .await;
                (channel, result, started)
            }
            Backend::Custom(network) => {
                let call = CustomCall {
                    peer,
                    method,
                    request_id,
                    body,
                    bulk,
                    timeout: opts.timeout,
                };
                let span = tracing::debug_span!("rpc_call", method, request_id, %peer, channel = "custom");
                let started = Instant::now();
                let result = network.call(call).instrument(span).await;
                ("custom", result, started)
            }
        };
        let outcome = outcome_label(&result);
        metrics::counter!("rpc_client_calls_total", "method" => method, "outcome" => outcome).increment(1);
        metrics::histogram!("rpc_client_seconds", "method" => method).record(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            tracing::debug!(method, request_id, %peer, channel, error = %e, "call failed");
        }
        result
    }
}

impl ClientInner {
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        peer: SocketAddr,
        method: &'static str,
        request_id: u64,
        body: Bytes,
        bulk: Bytes,
        opts: &CallOptions,
        data_channel: bool,
    ) -> Result<RawResponse, RpcError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(connect_error(peer, "client shut down"));
        }
        let body_len = u32::try_from(body.len()).map_err(|_| RpcError::Frame("request body too large".into()))?;
        let header = RequestHeader {
            request_id,
            method: method.to_string(),
            deadline_ms: timeout_ms(opts.timeout),
            body_len,
            bulk_len: bulk.len() as u64,
        };
        let deadline = TokioInstant::now() + opts.timeout;
        let connect_deadline = deadline.min(TokioInstant::now() + self.config.connect_timeout);
        let exchange = async {
            if data_channel {
                self.call_tcp(peer, &header, &body, &bulk, connect_deadline).await
            } else {
                self.call_quic(peer, &header, &body, &bulk, connect_deadline).await
            }
        };
        let frame = tokio::time::timeout_at(deadline, exchange)
            .await
            .map_err(|_| RpcError::Timeout(opts.timeout))??;
        check_response(frame, request_id, method, opts.timeout)
    }

    async fn call_quic(
        &self,
        peer: SocketAddr,
        header: &RequestHeader,
        body: &Bytes,
        bulk: &Bytes,
        connect_deadline: TokioInstant,
    ) -> Result<Frame<ResponseHeader>, RpcError> {
        let (send, mut recv) = tokio::time::timeout_at(connect_deadline, self.open_stream(peer))
            .await
            .map_err(|_| connect_error(peer, "timed out"))??;
        let mut send = ResetOnDrop(Some(send));
        let stream = send
            .0
            .as_mut()
            .ok_or_else(|| RpcError::Transport("stream gone".into()))?;
        frame::write_frame_quic(stream, header, body, bulk).await?;
        // Finishing fails only if the peer already stopped the stream, which
        // the read below reports.
        let _ = stream.finish();
        let response = frame::read_frame::<ResponseHeader, _>(&mut recv).await?;
        send.disarm();
        Ok(response)
    }

    /// Opens a stream on the cached connection to `peer`, connecting (or
    /// reconnecting once, if the cached one turns out closed) as needed.
    /// Nothing is sent yet, so every failure here is [`RpcError::Connect`].
    async fn open_stream(&self, peer: SocketAddr) -> Result<(quinn::SendStream, quinn::RecvStream), RpcError> {
        let conn = self.quic_connection(peer, None).await?;
        match conn.open_bi().await {
            Ok(streams) => Ok(streams),
            Err(e) => {
                tracing::debug!(%peer, error = %e, "cached QUIC connection failed, reconnecting");
                let conn = self.quic_connection(peer, Some(conn.stable_id())).await?;
                conn.open_bi().await.map_err(|e| connect_error(peer, e))
            }
        }
    }

    /// The cached connection to `peer` unless it is closed or is `stale`;
    /// otherwise a new one. Concurrent callers share one connect.
    async fn quic_connection(&self, peer: SocketAddr, stale: Option<usize>) -> Result<quinn::Connection, RpcError> {
        let slot = lock(&self.quic_conns).entry(peer).or_default().clone();
        let mut cached = slot.lock().await;
        if let Some(conn) = cached.as_ref() {
            if conn.close_reason().is_none() && Some(conn.stable_id()) != stale {
                return Ok(conn.clone());
            }
        }
        *cached = None;
        let conn = self.connect_quic(peer).await?;
        *cached = Some(conn.clone());
        Ok(conn)
    }

    async fn connect_quic(&self, peer: SocketAddr) -> Result<quinn::Connection, RpcError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(connect_error(peer, "client shut down"));
        }
        let connecting = self
            .endpoint
            .connect(peer, pki::server_name())
            .map_err(|e| connect_error(peer, e))?;
        let conn = connecting.await.map_err(|e| connect_error(peer, e))?;
        tracing::debug!(%peer, "QUIC connection established");
        Ok(conn)
    }

    async fn call_tcp(
        &self,
        peer: SocketAddr,
        header: &RequestHeader,
        body: &Bytes,
        bulk: &Bytes,
        connect_deadline: TokioInstant,
    ) -> Result<Frame<ResponseHeader>, RpcError> {
        let mut stream = match self.take_idle_tcp(peer) {
            Some(stream) => stream,
            None => tokio::time::timeout_at(connect_deadline, self.connect_tcp(peer))
                .await
                .map_err(|_| connect_error(peer, "timed out"))??,
        };
        frame::write_frame(&mut stream, header, body, bulk).await?;
        let response = frame::read_frame::<ResponseHeader, _>(&mut stream).await?;
        self.put_idle_tcp(peer, stream);
        Ok(response)
    }

    async fn connect_tcp(&self, peer: SocketAddr) -> Result<TlsStream<TcpStream>, RpcError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(connect_error(peer, "client shut down"));
        }
        let tcp = TcpStream::connect(peer).await.map_err(|e| connect_error(peer, e))?;
        tcp.set_nodelay(true).map_err(|e| connect_error(peer, e))?;
        let name = ServerName::try_from(pki::server_name()).map_err(|e| connect_error(peer, e))?;
        let stream = self.tls.connect(name, tcp).await.map_err(|e| connect_error(peer, e))?;
        tracing::debug!(%peer, "data channel connection established");
        Ok(stream)
    }

    /// An idle pooled connection that still looks usable: not too old, and
    /// neither closed by the peer nor carrying unexpected bytes.
    fn take_idle_tcp(&self, peer: SocketAddr) -> Option<TlsStream<TcpStream>> {
        let mut pool = lock(&self.tcp_idle);
        let idle = pool.get_mut(&peer)?;
        while let Some(mut entry) = idle.pop() {
            if entry.idle_since.elapsed() < TCP_IDLE_MAX && still_open(&mut entry.stream) {
                return Some(entry.stream);
            }
        }
        None
    }

    fn put_idle_tcp(&self, peer: SocketAddr, stream: TlsStream<TcpStream>) {
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        let mut pool = lock(&self.tcp_idle);
        let idle = pool.entry(peer).or_default();
        if idle.len() < TCP_IDLE_PER_PEER_MAX {
            idle.push(IdleTls {
                stream,
                idle_since: Instant::now(),
            });
        }
    }
}

/// Polls an idle connection once without waiting: `Pending` means nothing
/// arrived (the normal case); EOF, an error or stray data mean "do not reuse".
fn still_open(stream: &mut TlsStream<TcpStream>) -> bool {
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    matches!(Pin::new(stream).poll_read(&mut cx, &mut buf), Poll::Pending)
}

/// Resets the send half if the call is abandoned before its response
/// arrived (timeout, error), so the server sees a reset, not a short frame.
struct ResetOnDrop(Option<quinn::SendStream>);

impl ResetOnDrop {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        if let Some(mut send) = self.0.take() {
            let _ = send.reset(VarInt::from_u32(CODE_CANCELLED));
        }
    }
}

fn check_response(
    frame: Frame<ResponseHeader>,
    request_id: u64,
    method: &'static str,
    timeout: Duration,
) -> Result<RawResponse, RpcError> {
    let header = frame.header;
    // Request id 0 marks an error reply to a request the server could not
    // decode (e.g. a newer wire version).
    let error_reply = header.request_id == 0 && header.status != CallStatus::Ok;
    if header.request_id != request_id && !error_reply {
        return Err(RpcError::Frame(format!(
            "response for request {} to request {request_id}",
            header.request_id
        )));
    }
    match RpcError::from_status(header.status) {
        None => Ok(RawResponse {
            body: frame.body,
            bulk: frame.bulk,
        }),
        Some(RpcError::UnknownMethod(_)) => Err(RpcError::UnknownMethod(method.to_string())),
        Some(RpcError::Timeout(_)) => Err(RpcError::Timeout(timeout)),
        Some(e) => Err(e),
    }
}

fn timeout_ms(timeout: Duration) -> u32 {
    u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX).max(1)
}

fn connect_error(addr: SocketAddr, reason: impl std::fmt::Display) -> RpcError {
    RpcError::Connect {
        addr,
        reason: reason.to_string(),
    }
}

fn outcome_label(result: &Result<RawResponse, RpcError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(RpcError::Timeout(_)) => "timeout",
        Err(RpcError::Connect { .. }) => "connect",
        Err(RpcError::Transport(_)) => "transport",
        Err(RpcError::Frame(_)) => "frame",
        Err(RpcError::Version(_)) => "version",
        Err(RpcError::UnknownMethod(_)) => "unknown_method",
        Err(RpcError::BadRequest(_)) => "bad_request",
        Err(RpcError::ShuttingDown) => "shutting_down",
        Err(RpcError::Internal(_)) => "internal",
        Err(RpcError::Wire(_)) => "wire",
    }
}
