//! Bulk transfer benchmark of the cluster RPC on loopback: moves
//! `BULK_BENCH_BYTES` (default 1 GiB) in `BULK_BENCH_PAYLOAD` (default 4 MiB)
//! payloads through `RpcClient`/`RpcServer`, as uploads (request bulk) and
//! downloads (response bulk), over several QUIC tunings and over the TCP+TLS
//! data channel, and prints GB/s and CPU-seconds per GB (user + system of the
//! whole process, so client and server together) plus small-call latency.
//!
//! Run: `cargo bench -p tessera-common --bench bulk`
//! (env: `BULK_BENCH_BYTES`, `BULK_BENCH_PAYLOAD`, `BULK_BENCH_INFLIGHT`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rkyv::{Archive, Deserialize, Serialize};
use tessera_common::pki::{self, NodeIdentity};
use tessera_common::rpc::client::QuicTuning;
use tessera_common::rpc::{call, CallOptions, Method, Router, RpcClient, RpcClientConfig, RpcServer, RpcServerConfig};

#[derive(Clone, Debug, Archive, Serialize, Deserialize)]
struct Size {
    bytes: u64,
}

/// Upload: the request carries the bulk; the reply says how much arrived.
struct Sink;
impl Method for Sink {
    const NAME: &'static str = "bench.sink";
    const IDEMPOTENT: bool = true;
    type Request = Size;
    type Response = Size;
}

/// Download: the reply carries `bytes` of bulk.
struct Source;
impl Method for Source {
    const NAME: &'static str = "bench.source";
    const IDEMPOTENT: bool = true;
    type Request = Size;
    type Response = Size;
}

struct Variant {
    name: &'static str,
    tuning: QuicTuning,
    data_channel: bool,
}

/// `BULK_BENCH_QUIC=stream_win,conn_win,send_win,initial_mtu,mtu_upper,sockbuf,min_mtu`
/// (bytes) adds a custom QUIC variant; `BULK_BENCH_ONLY=substring` filters.
fn custom_variant() -> Option<Variant> {
    let spec = std::env::var("BULK_BENCH_QUIC").ok()?;
    let v: Vec<u64> = spec.split(',').map(|x| x.trim().parse().expect("number")).collect();
    let [stream, conn, send, initial, upper, sockbuf, min] = v[..] else {
        panic!("BULK_BENCH_QUIC needs 7 numbers");
    };
    let tuning = QuicTuning {
        stream_receive_window_bytes: stream as u32,
        receive_window_bytes: conn as u32,
        send_window_bytes: send,
        initial_mtu_bytes: initial as u16,
        mtu_upper_bytes: upper as u16,
        socket_buffer_bytes: sockbuf as usize,
        min_mtu_bytes: min as u16,
        ..QuicTuning::default()
    };
    Some(Variant {
        name: "quic custom",
        tuning,
        data_channel: false,
    })
}

fn variants() -> Vec<Variant> {
    let only = std::env::var("BULK_BENCH_ONLY").unwrap_or_default();
    all_variants()
        .into_iter()
        .chain(custom_variant())
        .filter(|v| v.name.contains(&only))
        .collect()
}

fn all_variants() -> Vec<Variant> {
    let tuned = QuicTuning::default();
    // quinn 0.11's own defaults.
    let quinn_defaults = QuicTuning {
        stream_receive_window_bytes: 1_250_000,
        receive_window_bytes: u32::MAX >> 2,
        send_window_bytes: 10_000_000,
        initial_mtu_bytes: 1200,
        mtu_upper_bytes: 1452,
        socket_buffer_bytes: 212_992,
        ..tuned.clone()
    };
    let big_windows = QuicTuning {
        stream_receive_window_bytes: 16 << 20,
        receive_window_bytes: 64 << 20,
        send_window_bytes: 64 << 20,
        initial_mtu_bytes: 1452,
        ..tuned.clone()
    };
    let mtu_9k = QuicTuning {
        initial_mtu_bytes: 1452,
        mtu_upper_bytes: 8952,
        ..big_windows.clone()
    };
    let mtu_64k = QuicTuning {
        mtu_upper_bytes: 65527,
        ..mtu_9k.clone()
    };
    // Jumbo datagrams without falling back (only safe on known links).
    let fixed_9k_no_gso = QuicTuning {
        initial_mtu_bytes: 8952,
        min_mtu_bytes: 8952,
        mtu_upper_bytes: 8952,
        segmentation_offload: false,
        ..tuned.clone()
    };
    vec![
        Variant {
            name: "quic quinn-defaults",
            tuning: quinn_defaults,
            data_channel: false,
        },
        Variant {
            name: "quic tessera defaults",
            tuning: tuned.clone(),
            data_channel: false,
        },
        Variant {
            name: "quic 16/64MiB win, mtu 1452",
            tuning: big_windows,
            data_channel: false,
        },
        Variant {
            name: "quic 16/64MiB win, mtud 9k",
            tuning: mtu_9k,
            data_channel: false,
        },
        Variant {
            name: "quic 16/64MiB win, mtud 64k",
            tuning: mtu_64k,
            data_channel: false,
        },
        Variant {
            name: "quic 8952 fixed, no GSO",
            tuning: fixed_9k_no_gso,
            data_channel: false,
        },
        Variant {
            name: "tcp+tls data channel",
            tuning: tuned,
            data_channel: true,
        },
    ]
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// User + system CPU time of this process.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes into the struct we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

struct Measured {
    gb_per_s: f64,
    cpu_s_per_gb: f64,
}

fn measure(bytes: usize, wall: Duration, cpu: Duration) -> Measured {
    let gb = bytes as f64 / 1e9;
    Measured {
        gb_per_s: gb / wall.as_secs_f64(),
        cpu_s_per_gb: cpu.as_secs_f64() / gb,
    }
}

fn router(payload: Bytes) -> Router {
    Router::new()
        .add::<Sink, _, _>(|_ctx, _req: Size, bulk: Bytes| async move {
            (
                Size {
                    bytes: bulk.len() as u64,
                },
                Bytes::new(),
            )
        })
        .add::<Source, _, _>(move |_ctx, req: Size, _bulk| {
            let payload = payload.slice(..(req.bytes as usize).min(payload.len()));
            async move {
                (
                    Size {
                        bytes: payload.len() as u64,
                    },
                    payload,
                )
            }
        })
}

async fn transfer(
    client: &RpcClient,
    addr: SocketAddr,
    opts: &CallOptions,
    payload: &Bytes,
    total: usize,
    inflight: usize,
    upload: bool,
) -> Measured {
    let calls = total / payload.len();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let cpu_before = cpu_time();
    let started = Instant::now();
    let worker = || async {
        while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < calls {
            let (size, bulk) = if upload {
                call::<Sink, _>(client, addr, &Size { bytes: 0 }, payload.clone(), opts).await
            } else {
                call::<Source, _>(
                    client,
                    addr,
                    &Size {
                        bytes: payload.len() as u64,
                    },
                    Bytes::new(),
                    opts,
                )
                .await
            }
            .expect("bench call failed");
            assert_eq!(size.bytes as usize, payload.len());
            assert_eq!(bulk.len(), if upload { 0 } else { payload.len() });
        }
    };
    futures::future::join_all((0..inflight).map(|_| worker())).await;
    measure(calls * payload.len(), started.elapsed(), cpu_time() - cpu_before)
}

/// Mean round trip of small calls, in microseconds.
async fn small_call_us(client: &RpcClient, addr: SocketAddr, opts: &CallOptions) -> f64 {
    const CALLS: u32 = 2000;
    let started = Instant::now();
    for _ in 0..CALLS {
        call::<Sink, _>(client, addr, &Size { bytes: 0 }, Bytes::from_static(b"x"), opts)
            .await
            .expect("small call failed");
    }
    started.elapsed().as_secs_f64() * 1e6 / f64::from(CALLS)
}

async fn run_variant(dir: &std::path::Path, variant: &Variant, payload: &Bytes, total: usize, inflight: usize) {
    let server_config = RpcServerConfig {
        quic: variant.tuning.clone(),
        ..RpcServerConfig::default()
    };
    let server = RpcServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        NodeIdentity::load(dir, "server").unwrap(),
        router(payload.clone()),
        server_config,
    )
    .await
    .unwrap();
    let client_config = RpcClientConfig {
        bulk_threshold_bytes: usize::MAX,
        quic: variant.tuning.clone(),
        ..RpcClientConfig::default()
    };
    let client = RpcClient::new(NodeIdentity::load(dir, "client").unwrap(), client_config).unwrap();
    let addr = server.local_addr();
    let opts = CallOptions {
        timeout: Duration::from_secs(60),
        retries: 0,
        prefer_bulk_channel: variant.data_channel,
        ..CallOptions::default()
    };
    // Warm up: connections, MTU discovery, congestion window.
    transfer(
        &client,
        addr,
        &opts,
        payload,
        64 * payload.len().min(1 << 20),
        inflight,
        true,
    )
    .await;
    let up = transfer(&client, addr, &opts, payload, total, inflight, true).await;
    let down = transfer(&client, addr, &opts, payload, total, inflight, false).await;
    let rtt_us = small_call_us(&client, addr, &opts).await;
    println!(
        "{:<30} | {:>8.2} {:>9.2} | {:>8.2} {:>9.2} | {:>8.0}",
        variant.name, up.gb_per_s, up.cpu_s_per_gb, down.gb_per_s, down.cpu_s_per_gb, rtt_us
    );
    if let (Some(stats), true) = (client.quic_stats(addr), std::env::var_os("BULK_BENCH_STATS").is_some()) {
        let p = stats.path;
        println!(
            "    client path: mtu {} cwnd {} lost {}/{} pkts, congestion events {}, udp tx {} datagrams in {} ios, rx {} in {} ios",
            p.current_mtu, p.cwnd, p.lost_packets, p.sent_packets, p.congestion_events,
            stats.udp_tx.datagrams, stats.udp_tx.ios, stats.udp_rx.datagrams, stats.udp_rx.ios
        );
    }
    client.shutdown();
    server.shutdown().await;
}

fn main() {
    let total = env_usize("BULK_BENCH_BYTES", 1 << 30);
    let payload_len = env_usize("BULK_BENCH_PAYLOAD", 4 << 20);
    let inflight = env_usize("BULK_BENCH_INFLIGHT", 2).max(1);
    let dir = tempfile::tempdir().expect("tempdir");
    pki::init_cluster(dir.path(), &["server".to_string(), "client".to_string()]).expect("pki");
    let payload = Bytes::from((0..payload_len).map(|i| (i * 7) as u8).collect::<Vec<_>>());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "loopback, {} MiB per variant and direction, {} KiB payloads, {inflight} in flight; CPU = user+sys of client and server together",
        total >> 20,
        payload_len >> 10
    );
    println!(
        "{:<30} | {:>8} {:>9} | {:>8} {:>9} | {:>8}",
        "path", "up GB/s", "up CPUs/GB", "down GB/s", "dn CPUs/GB", "rtt us"
    );
    runtime.block_on(async {
        for variant in variants() {
            run_variant(dir.path(), &variant, &payload, total, inflight).await;
        }
    });
}
