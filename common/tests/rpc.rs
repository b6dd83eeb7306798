//! End-to-end tests of the cluster RPC over real loopback sockets: QUIC and
//! the TCP+TLS data channel, mutual TLS with certificates from `pki`,
//! hostile input, deadlines, retries and graceful shutdown.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rkyv::{Archive, Deserialize, Serialize};
use tessera_common::pki::{self, NodeIdentity};
use tessera_common::rpc::frame::{self, encode_head};
use tessera_common::rpc::{
    call, CallOptions, Method, RequestCtx, Router, RpcClient, RpcClientConfig, RpcError, RpcServer, RpcServerConfig,
};
use tessera_common::wire::{CallStatus, RequestHeader, ResponseHeader, Wire, FRAME_MAGIC, WIRE_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

#[derive(Clone, Debug, PartialEq, Archive, Serialize, Deserialize)]
struct EchoReq {
    text: String,
}

#[derive(Clone, Debug, PartialEq, Archive, Serialize, Deserialize)]
struct SleepReq {
    sleep_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Archive, Serialize, Deserialize)]
struct Done {
    invocation: u64,
}

/// Echoes the text and the bulk payload back.
struct Echo;
impl Method for Echo {
    const NAME: &'static str = "test.echo";
    const IDEMPOTENT: bool = true;
    type Request = EchoReq;
    type Response = EchoReq;
}

/// Sleeps, then answers. Idempotent.
struct Sleep;
impl Method for Sleep {
    const NAME: &'static str = "test.sleep";
    const IDEMPOTENT: bool = true;
    type Request = SleepReq;
    type Response = Done;
}

/// Sleeps, then answers. Not idempotent.
struct SleepOnce;
impl Method for SleepOnce {
    const NAME: &'static str = "test.sleep_once";
    const IDEMPOTENT: bool = false;
    type Request = SleepReq;
    type Response = Done;
}

const LOCALHOST_ANY_PORT: &str = "127.0.0.1:0";

/// Handler invocations, and a signal sent when a sleeping handler starts.
#[derive(Clone)]
struct Probe {
    invocations: Arc<AtomicUsize>,
    started: mpsc::UnboundedSender<()>,
    /// Certificate names of the peers of echo calls, as the server saw them.
    peer_names: Arc<std::sync::Mutex<Vec<Option<String>>>>,
}

fn router(probe: &Probe) -> Router {
    let echo_probe = probe.clone();
    let sleep_probe = probe.clone();
    let once_probe = probe.clone();
    Router::new()
        .add::<Echo, _, _>(move |ctx: RequestCtx, req: EchoReq, bulk: Bytes| {
            echo_probe.invocations.fetch_add(1, Ordering::SeqCst);
            echo_probe.peer_names.lock().unwrap().push(ctx.peer_name);
            async move { (req, bulk) }
        })
        .add::<Sleep, _, _>(move |_ctx, req: SleepReq, _bulk| sleeper(sleep_probe.clone(), req))
        .add::<SleepOnce, _, _>(move |_ctx, req: SleepReq, _bulk| sleeper(once_probe.clone(), req))
}

async fn sleeper(probe: Probe, req: SleepReq) -> (Done, Bytes) {
    let invocation = probe.invocations.fetch_add(1, Ordering::SeqCst) as u64 + 1;
    let _ = probe.started.send(());
    tokio::time::sleep(Duration::from_millis(req.sleep_ms)).await;
    (Done { invocation }, Bytes::new())
}

fn probe() -> (Probe, mpsc::UnboundedReceiver<()>) {
    let (started, rx) = mpsc::unbounded_channel();
    let probe = Probe {
        invocations: Arc::new(AtomicUsize::new(0)),
        started,
        peer_names: Arc::default(),
    };
    (probe, rx)
}

fn cluster(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    pki::init_cluster(dir.path(), &names).unwrap();
    dir
}

fn server_config(grace: Duration) -> RpcServerConfig {
    RpcServerConfig {
        shutdown_grace: grace,
        ..RpcServerConfig::default()
    }
}

async fn start_server(dir: &Path, addr: SocketAddr, probe: &Probe, grace: Duration) -> anyhow::Result<RpcServer> {
    let identity = NodeIdentity::load(dir, "server")?;
    RpcServer::bind(addr, identity, router(probe), server_config(grace)).await
}

fn client(dir: &Path, name: &str) -> RpcClient {
    let config = RpcClientConfig {
        connect_timeout: Duration::from_millis(300),
        ..RpcClientConfig::default()
    };
    RpcClient::new(NodeIdentity::load(dir, name).unwrap(), config).unwrap()
}

fn opts(timeout_ms: u64, retries: u32, data_channel: bool) -> CallOptions {
    CallOptions {
        timeout: Duration::from_millis(timeout_ms),
        retries,
        backoff: Duration::from_millis(20),
        prefer_bulk_channel: data_channel,
    }
}

fn pattern(len: usize, seed: u8) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<_>>(),
    )
}

async fn echo(
    client: &RpcClient,
    addr: SocketAddr,
    text: &str,
    bulk: Bytes,
    data_channel: bool,
) -> Result<(EchoReq, Bytes), RpcError> {
    let req = EchoReq { text: text.into() };
    call::<Echo, _>(client, addr, &req, bulk, &opts(5000, 0, data_channel)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_round_trips_on_both_paths() {
    let dir = cluster(&["server", "client"]);
    let (probe, _started) = probe();
    let server = start_server(
        dir.path(),
        LOCALHOST_ANY_PORT.parse().unwrap(),
        &probe,
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    let client = client(dir.path(), "client");
    let bulk = pattern(1024 * 1024, 7);

    // QUIC: below the threshold and not asked for the data channel.
    let quic_only = RpcClient::new(
        NodeIdentity::load(dir.path(), "client").unwrap(),
        RpcClientConfig {
            bulk_threshold_bytes: usize::MAX,
            ..RpcClientConfig::default()
        },
    )
    .unwrap();
    let (resp, back) = echo(&quic_only, addr, "over quic", bulk.clone(), false).await.unwrap();
    assert_eq!(resp.text, "over quic");
    assert_eq!(back, bulk);
    assert_eq!(
        quic_only.idle_data_connections(addr),
        0,
        "QUIC call used the data channel"
    );

    // Data channel: 1 MiB is above the default threshold.
    let (resp, back) = echo(&client, addr, "over tcp", bulk.clone(), false).await.unwrap();
    assert_eq!(resp.text, "over tcp");
    assert_eq!(back, bulk);
    assert_eq!(
        client.idle_data_connections(addr),
        1,
        "bulk call did not use the data channel"
    );
    // The pooled connection is reused, not multiplied.
    let (_, back) = echo(&client, addr, "again", pattern(200_000, 9), false).await.unwrap();
    assert_eq!(back, pattern(200_000, 9));
    assert_eq!(client.idle_data_connections(addr), 1);
    // Small request asking for the data channel (bulk response), and empty bulk.
    let (resp, back) = echo(&client, addr, "small", Bytes::new(), true).await.unwrap();
    assert_eq!((resp.text.as_str(), back.len()), ("small", 0));
    let (resp, _) = echo(&client, addr, "small quic", Bytes::from_static(b"xy"), false)
        .await
        .unwrap();
    assert_eq!(resp.text, "small quic");
    assert_eq!(probe.invocations.load(Ordering::SeqCst), 5);
    let names = probe.peer_names.lock().unwrap().clone();
    assert_eq!(names, vec![Some("client".to_string()); 5], "peer certificate names");

    let err = call::<UnknownToServer, _>(
        &client,
        addr,
        &EchoReq { text: "?".into() },
        Bytes::new(),
        &opts(2000, 0, false),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, RpcError::UnknownMethod(ref m) if m == "test.unknown"),
        "{err:?}"
    );
    server.shutdown().await;
}

struct UnknownToServer;
impl Method for UnknownToServer {
    const NAME: &'static str = "test.unknown";
    const IDEMPOTENT: bool = true;
    type Request = EchoReq;
    type Response = EchoReq;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_calls_on_one_client() {
    let dir = cluster(&["server", "client"]);
    let (probe, _started) = probe();
    let server = start_server(
        dir.path(),
        LOCALHOST_ANY_PORT.parse().unwrap(),
        &probe,
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    let client = client(dir.path(), "client");
    let calls = (0..64u8).map(|i| {
        let client = client.clone();
        async move {
            let bulk = pattern(1000 + i as usize * 1000, i);
            let (resp, back) = echo(&client, addr, &format!("call {i}"), bulk.clone(), i % 4 == 0)
                .await
                .unwrap();
            assert_eq!(resp.text, format!("call {i}"));
            assert_eq!(back, bulk);
        }
    });
    futures::future::join_all(calls).await;
    assert_eq!(probe.invocations.load(Ordering::SeqCst), 64);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_from_another_ca_are_refused() {
    let ours = cluster(&["server", "client"]);
    let theirs = cluster(&["server", "intruder"]);
    let (probe, _started) = probe();
    let server = start_server(
        ours.path(),
        LOCALHOST_ANY_PORT.parse().unwrap(),
        &probe,
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    let addr = server.local_addr();

    let intruder = client(theirs.path(), "intruder");
    for data_channel in [false, true] {
        let result = echo(&intruder, addr, "let me in", Bytes::from_static(b"x"), data_channel).await;
        assert!(
            result.is_err(),
            "foreign client got through (data channel: {data_channel})"
        );
    }
    assert_eq!(
        probe.invocations.load(Ordering::SeqCst),
        0,
        "a handler ran for a foreign client"
    );

    // A client presenting no certificate at all: refused on both paths.
    let anonymous = anonymous_tls(ours.path());
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(anonymous.clone()).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let quic_result = async {
        let conn = endpoint
            .connect(addr, pki::server_name())
            .unwrap()
            .await
            .map_err(|e| e.to_string())?;
        raw_stream(&conn, &echo_frame(5, "anonymous"), false).await
    }
    .await;
    assert!(quic_result.is_err(), "anonymous QUIC client got an answer");
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(pki::server_name()).unwrap();
    let tcp_result = async {
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(anonymous))
            .connect(name, tcp)
            .await?;
        tls.write_all(&echo_frame(6, "anonymous")).await?;
        tls.flush().await?;
        let mut answer = Vec::new();
        tls.read_to_end(&mut answer).await.map(|_| answer)
    }
    .await;
    assert!(
        tcp_result.map_or(true, |answer| answer.is_empty()),
        "anonymous TCP client got an answer"
    );
    assert_eq!(
        probe.invocations.load(Ordering::SeqCst),
        0,
        "a handler ran for an anonymous client"
    );

    // A legit client refuses a server whose certificate is from another CA.
    let (foreign_probe, _s) = self::probe();
    let foreign = start_server(
        theirs.path(),
        LOCALHOST_ANY_PORT.parse().unwrap(),
        &foreign_probe,
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    let legit = client(ours.path(), "client");
    for data_channel in [false, true] {
        let err = echo(&legit, foreign.local_addr(), "hello?", Bytes::new(), data_channel)
            .await
            .unwrap_err();
        assert!(matches!(err, RpcError::Connect { .. }), "{err:?}");
    }
    assert_eq!(foreign_probe.invocations.load(Ordering::SeqCst), 0);

    // And the legit pair still works.
    echo(&legit, addr, "hi", Bytes::new(), false).await.unwrap();
    assert_eq!(probe.invocations.load(Ordering::SeqCst), 1);
    server.shutdown().await;
    foreign.shutdown().await;
}

/// TLS trusting the cluster CA but presenting no client certificate.
fn anonymous_tls(dir: &Path) -> rustls::ClientConfig {
    let ca = NodeIdentity::load(dir, "client").unwrap().ca;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![pki::ALPN_RPC.to_vec()];
    config
}

/// A raw QUIC connection with a valid client certificate.
async fn raw_quic(dir: &Path, addr: SocketAddr) -> (quinn::Endpoint, quinn::Connection) {
    let tls = NodeIdentity::load(dir, "client").unwrap().client_tls_config().unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let conn = endpoint.connect(addr, pki::server_name()).unwrap().await.unwrap();
    (endpoint, conn)
}

/// Sends `bytes` on a fresh stream (finishing it unless `keep_open`) and
/// returns what came back.
async fn raw_stream(conn: &quinn::Connection, bytes: &[u8], keep_open: bool) -> Result<Vec<u8>, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(bytes).await.map_err(|e| e.to_string())?;
    if !keep_open {
        send.finish().map_err(|e| e.to_string())?;
    }
    let read = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1 << 20))
        .await
        .map_err(|_| "no answer within 5 s".to_string())?;
    read.map_err(|e| e.to_string())
}

fn random_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|_| rand::random::<u8>()).collect()
}

fn echo_frame(request_id: u64, text: &str) -> Vec<u8> {
    let body = EchoReq { text: text.into() }.to_wire().unwrap();
    let header = RequestHeader {
        request_id,
        method: Echo::NAME.into(),
        deadline_ms: 5000,
        body_len: body.len() as u32,
        bulk_len: 0,
    };
    encode_head(&header, &body, 0).unwrap().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_closes_only_its_own_stream_or_connection() {
    let dir = cluster(&["server", "client"]);
    let (probe, _started) = probe();
    let server = start_server(
        dir.path(),
        LOCALHOST_ANY_PORT.parse().unwrap(),
        &probe,
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    let client = client(dir.path(), "client");
    // A legit call in flight on another connection while garbage arrives.
    let legit = tokio::spawn({
        let client = client.clone();
        async move { echo(&client, addr, "before", pattern(300_000, 1), false).await }
    });

    // Raw TCP garbage: no TLS, the server drops the connection.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&random_bytes(4096)).await.unwrap();
    let mut sink = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut sink)).await;
    assert!(read.is_ok(), "server kept a garbage TCP connection open");

    // QUIC with a valid certificate, garbage on single streams.
    let (_endpoint, conn) = raw_quic(dir.path(), addr).await;
    assert!(
        raw_stream(&conn, &random_bytes(1000), false).await.is_err(),
        "random bytes"
    );
    let valid = echo_frame(1, "x");
    assert!(
        raw_stream(&conn, &valid[..valid.len() - 3], false).await.is_err(),
        "truncated frame"
    );
    let mut huge = Vec::new();
    huge.extend_from_slice(&FRAME_MAGIC.to_le_bytes());
    huge.extend_from_slice(&WIRE_VERSION.to_le_bytes());
    huge.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(raw_stream(&conn, &huge, true).await.is_err(), "huge header_len");
    // A newer wire version gets an explanatory error reply, not a hang.
    let mut newer = valid.clone();
    newer[2..4].copy_from_slice(&(WIRE_VERSION + 1).to_le_bytes());
    let reply = raw_stream(&conn, &newer, false).await.unwrap();
    let reply = frame::read_frame::<ResponseHeader, _>(&mut reply.as_slice())
        .await
        .unwrap();
    assert!(
        matches!(reply.header.status, CallStatus::BadRequest(_)),
        "{:?}",
        reply.header
    );

    // The same connection still serves a well-formed call.
    let reply = raw_stream(&conn, &echo_frame(77, "still here"), false).await.unwrap();
    let reply = frame::read_frame::<ResponseHeader, _>(&mut reply.as_slice())
        .await
        .unwrap();
    assert_eq!((reply.header.request_id, reply.header.status), (77, CallStatus::Ok));
    assert_eq!(EchoReq::from_wire(&reply.body).unwrap().text, "still here");

    // Data channel with valid TLS but a garbage frame: that connection closes.
    let tls = NodeIdentity::load(dir.path(), "client")
        .unwrap()
        .client_tls_config()
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(pki::server_name()).unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(&random_bytes(2048)).await.unwrap();
    tls.flush().await.unwrap();
    let mut sink = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut sink)).await;
    assert!(read.is_ok(), "server kept a data channel with garbage open");
    assert!(sink.is_empty(), "server answered garbage");

    let (resp, _) = legit.await.unwrap().unwrap();
    assert_eq!(resp.text, "before");
    for data_channel in [false, true] {
        let (resp, back) = echo(&client, addr, "after", pattern(100_000, 3), data_channel)
            .await
            .unwrap();
        assert_eq!((resp.text.as_str(), back), ("after", pattern(100_000, 3)));
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_handler_times_out_within_the_deadline() {
    let dir = cluster(&["server", "client"]);
    let (probe, _started) = probe();
    let server = start_server(
        dir.path(),
        LOCALHOST_ANY_PORT.parse().unwrap(),
        &probe,
        Duration::from_millis(100),
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    let client = client(dir.path(), "client");
    for data_channel in [false, true] {
        let started = Instant::now();
        let err = call::<Sleep, _>(
            &client,
            addr,
            &SleepReq { sleep_ms: 5000 },
            Bytes::new(),
            &opts(300, 0, data_channel),
        )
        .await
        .unwrap_err();
        let elapsed = started.elapsed();
        assert!(
            matches!(err, RpcError::Timeout(t) if t == Duration::from_millis(300)),
            "{err:?}"
        );
        assert!(
            elapsed >= Duration::from_millis(290) && elapsed < Duration::from_millis(1500),
            "{elapsed:?}"
        );
    }
    // The connection is still usable after an abandoned call.
    echo(&client, addr, "ok", Bytes::new(), false).await.unwrap();
    server.shutdown().await;
}

/// Binds a server on `addr`, retrying while the port is still being released.
async fn rebind(dir: &Path, addr: SocketAddr, probe: &Probe) -> RpcServer {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match start_server(dir, addr, probe, Duration::from_secs(1)).await {
            Ok(server) => return server,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "port not free yet");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("rebinding {addr}: {e:#}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_call_retries_until_the_server_is_up() {
    let dir = cluster(&["server", "client"]);
    let (probe, _started) = probe();
    // Find a port that is free on UDP and TCP, then free it again.
    let placeholder = start_server(dir.path(), LOCALHOST_ANY_PORT.parse().unwrap(), &probe, Duration::ZERO)
        .await
        .unwrap();
    let addr = placeholder.local_addr();
    placeholder.shutdown().await;

    let client = client(dir.path(), "client");
    let started = Instant::now();
    let pending = tokio::spawn({
        let client = client.clone();
        async move {
            call::<Sleep, _>(
                &client,
                addr,
                &SleepReq { sleep_ms: 0 },
                Bytes::new(),
                &opts(400, 30, false),
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(600)).await;
    let server = rebind(dir.path(), addr, &probe).await;
    let (done, _) = pending.await.unwrap().unwrap();
    assert!(started.elapsed() >= Duration::from_millis(600));
    assert_eq!(done.invocation, 1);
    server.shutdown().await;
}

/// Starts `M` (sleeping 10 s in the handler) on a server that is then killed
/// mid-call and restarted on the same port; returns the call's outcome and
/// how many times a handler ran.
async fn call_through_a_crash<M>() -> (Result<(Done, Bytes), RpcError>, usize)
where
    M: Method<Request = SleepReq, Response = Done>,
{
    let dir = cluster(&["server", "client"]);
    let (probe, mut started) = probe();
    let server = start_server(dir.path(), LOCALHOST_ANY_PORT.parse().unwrap(), &probe, Duration::ZERO)
        .await
        .unwrap();
    let addr = server.local_addr();
    let client = client(dir.path(), "client");
    let pending = tokio::spawn({
        let client = client.clone();
        async move {
            call::<M, _>(
                &client,
                addr,
                &SleepReq { sleep_ms: 10_000 },
                Bytes::new(),
                &opts(5000, 10, false),
            )
            .await
        }
    });
    started.recv().await.unwrap();
    server.shutdown().await; // grace 0: the in-flight call is cut off
                             // The restarted server answers quickly: a retry would succeed there.
    let restarted = rebind_fast(dir.path(), addr, &probe).await;
    let result = pending.await.unwrap();
    let invocations = probe.invocations.load(Ordering::SeqCst);
    restarted.shutdown().await;
    (result, invocations)
}

/// Like [`rebind`], with a router whose sleep methods return at once.
async fn rebind_fast(dir: &Path, addr: SocketAddr, probe: &Probe) -> RpcServer {
    let quick = |p: Probe| {
        move |_ctx: RequestCtx, _req: SleepReq, _bulk: Bytes| {
            let p = p.clone();
            async move {
                let invocation = p.invocations.fetch_add(1, Ordering::SeqCst) as u64 + 1;
                (Done { invocation }, Bytes::new())
            }
        }
    };
    let router = Router::new()
        .add::<Sleep, _, _>(quick(probe.clone()))
        .add::<SleepOnce, _, _>(quick(probe.clone()));
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let identity = NodeIdentity::load(dir, "server").unwrap();
        match RpcServer::bind(addr, identity, router.clone(), server_config(Duration::from_secs(1))).await {
            Ok(server) => return server,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("rebinding {addr}: {e:#}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_idempotent_call_gets_exactly_one_attempt_when_the_connection_fails() {
    let (result, invocations) = call_through_a_crash::<SleepOnce>().await;
    let err = result.unwrap_err();
    assert!(matches!(err, RpcError::Transport(_)), "{err:?}");
    assert_eq!(invocations, 1, "a non-idempotent call was retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_call_is_retried_when_the_connection_fails() {
    let (result, invocations) = call_through_a_crash::<Sleep>().await;
    let (done, _) = result.unwrap();
    assert_eq!((done.invocation, invocations), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_calls_in_flight_and_refuses_new_ones() {
    let dir = cluster(&["server", "client"]);
    let (probe, mut started) = probe();
    let server = start_server(
        dir.path(),
        LOCALHOST_ANY_PORT.parse().unwrap(),
        &probe,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    let client = client(dir.path(), "client");
    let in_flight = |data_channel: bool| {
        let client = client.clone();
        tokio::spawn(async move {
            call::<SleepOnce, _>(
                &client,
                addr,
                &SleepReq { sleep_ms: 500 },
                Bytes::new(),
                &opts(5000, 0, data_channel),
            )
            .await
        })
    };
    let quic_call = in_flight(false);
    let tcp_call = in_flight(true);
    started.recv().await.unwrap();
    started.recv().await.unwrap();

    let shutdown_started = Instant::now();
    let shutdown = tokio::spawn(server.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    // While draining: new calls are refused, not queued.
    let err = call::<SleepOnce, _>(
        &client,
        addr,
        &SleepReq { sleep_ms: 0 },
        Bytes::new(),
        &opts(2000, 0, false),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, RpcError::ShuttingDown), "{err:?}");

    let quic_done = quic_call.await.unwrap().unwrap().0;
    let tcp_done = tcp_call.await.unwrap().unwrap().0;
    assert_eq!(quic_done.invocation + tcp_done.invocation, 3);
    shutdown.await.unwrap();
    assert!(shutdown_started.elapsed() < Duration::from_secs(3));
    assert_eq!(probe.invocations.load(Ordering::SeqCst), 2);

    for data_channel in [false, true] {
        let result = call::<SleepOnce, _>(
            &client,
            addr,
            &SleepReq { sleep_ms: 0 },
            Bytes::new(),
            &opts(1000, 0, data_channel),
        )
        .await;
        assert!(
            result.is_err(),
            "a call succeeded after shutdown (data channel: {data_channel})"
        );
    }
    assert_eq!(probe.invocations.load(Ordering::SeqCst), 2);
}
