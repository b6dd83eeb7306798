//! `tessera bench objserver`: the object servers' write and read rates on a
//! whole cluster in this process (1 name server, 6 chunk servers, 1 object
//! server, EC 4+2, everything on this machine's one disk), against
//! references measured in the same run: one chunk server's raw append rate
//! and the Reed-Solomon encode rate.
//!
//! `tessera bench nameserver`: name commits (guard entry + conditional
//! commit, DESIGN §4 steps 2 and 5) through the RPC client on a 3-node
//! name-server group in this process, 1 and 64 clients, against the disk's
//! fdatasync rate measured in the same run (commits per fsync shows how
//! well Raft and RocksDB batch).
//!
//! `tessera bench s3`: any S3 endpoint through the AWS SDK, see
//! [`tessera_cli::bench_s3`].
//!
//! All print one line per measurement and a JSON summary with ratios.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Subcommand;
use tessera_common::chunk_client::ChunkServerClient;
use tessera_common::ids::{ChunkId, Epoch};
use tessera_common::ns_api::StoragePolicy;
use tessera_common::os_client::OsClient;
use tessera_common::rpc::{CallOptions, RpcClient};
use tessera_common::testing::pattern;
use tessera_objserver::ec::Codec;
use tessera_objserver::placement::Redundancy;

use tessera_cli::local_cluster::{LocalCluster, LocalSpec};

const MIB: usize = 1 << 20;
const EC: StoragePolicy = StoragePolicy::Ec { k: 4, m: 2 };
const WRITERS: usize = 32;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Object-server writes and reads vs raw chunk appends and RS encode.
    Objserver {
        /// MiB written per large-write workload.
        #[arg(long, default_value_t = 64)]
        mib: usize,
        /// 4 KiB writes per small-write workload.
        #[arg(long, default_value_t = 2000)]
        small_writes: usize,
        /// Where the cluster's files go (a fresh temporary directory if unset).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Name commits through the RPC client on a 3-node group vs fdatasync.
    Nameserver {
        /// Seconds per client count.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Where the name servers' files go (a fresh temporary directory if unset).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Any S3 endpoint: 4 KiB PUT/GET rates and latency, single-stream large objects vs MD5.
    S3(tessera_cli::bench_s3::S3BenchArgs),
}

pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Objserver { mib, small_writes, dir } => {
            let temp = tempfile::tempdir().context("creating a temporary directory")?;
            let dir = dir.unwrap_or_else(|| temp.path().to_path_buf());
            objserver(&dir, mib.max(1), small_writes.max(1)).await
        }
        BenchCommand::Nameserver { seconds, dir } => {
            let temp = tempfile::tempdir().context("creating a temporary directory")?;
            let dir = dir.unwrap_or_else(|| temp.path().to_path_buf());
            crate::bench_ns::nameserver(&dir, Duration::from_secs(seconds.max(1))).await
        }
        BenchCommand::S3(args) => tessera_cli::bench_s3::run(args).await,
    }
}

fn rate(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / MIB as f64 / elapsed.as_secs_f64().max(1e-9)
}

fn report(name: &str, value: f64, unit: &str) {
    println!("{name:<40} {value:>12.1} {unit}");
}

async fn objserver(dir: &std::path::Path, mib: usize, small_writes: usize) -> anyhow::Result<()> {
    let mut cluster = LocalCluster::start(dir, &LocalSpec::new(6, 4)).await?;
    let raw = raw_append_rate(&cluster, mib).await?;
    report("raw chunk append, 1 MiB, 1 writer", raw, "MiB/s");
    let encode = encode_rate(mib);
    report("RS 4+2 encode, 4 MiB stripes", encode, "MiB/s");
    let os = cluster.os_client()?;
    let (one, uid) = large_writes(&os, mib, 1, 1).await?;
    report("object write, 1 MiB, 1 writer", one, "MiB/s");
    let (many, _) = large_writes(&os, mib, WRITERS, 1_000).await?;
    report("object write, 1 MiB, 32 writers", many, "MiB/s");
    let small_one = small(&os, small_writes, 1, 10_000).await?;
    report("object write, 4 KiB, 1 writer", small_one, "writes/s");
    let small_many = small(&os, small_writes, WRITERS, 20_000).await?;
    report("object write, 4 KiB, 32 writers", small_many, "writes/s");
    let healthy = reads(&os, uid, mib).await?;
    report("object read, 1 MiB, healthy", healthy, "MiB/s");
    cluster.stop_chunk_server(0).await;
    cluster.stop_chunk_server(1).await;
    let degraded = reads(&os, uid, mib).await?;
    report("object read, 1 MiB, 2 chunk servers down", degraded, "MiB/s");
    let target = raw * 4.0 / 6.0;
    let summary = serde_json::json!({
        "raw_append_mib_s": raw, "encode_mib_s": encode,
        "write_1mib_1_mib_s": one, "write_1mib_32_mib_s": many,
        "write_4kib_1_per_s": small_one, "write_4kib_32_per_s": small_many,
        "read_healthy_mib_s": healthy, "read_degraded_mib_s": degraded,
        "ratio_write_1_vs_raw_k_over_n": one / target,
        "ratio_write_32_vs_raw_k_over_n": many / target,
        "ratio_degraded_vs_healthy": degraded / healthy,
    });
    println!("{summary}");
    cluster.shutdown().await;
    Ok(())
}

/// One chunk server, one chunk, sequential fsynced 1 MiB appends.
async fn raw_append_rate(cluster: &LocalCluster, mib: usize) -> anyhow::Result<f64> {
    let addr = cluster.chunk_server_addr(2).context("chunk server 2 is running")?;
    let client = ChunkServerClient::new(cluster.transport()?, addr, CallOptions::default());
    let chunk = ChunkId(u64::MAX - 1);
    client
        .create(chunk, Epoch(1))
        .await
        .context("creating the reference chunk")?;
    let data = pattern(1, MIB);
    let started = Instant::now();
    for i in 0..mib {
        client
            .append(chunk, (i * MIB) as u64, Epoch(1), data.clone())
            .await
            .context("appending to the reference chunk")?;
    }
    let elapsed = started.elapsed();
    client.delete(chunk).await.context("deleting the reference chunk")?;
    Ok(rate(mib * MIB, elapsed))
}

fn encode_rate(mib: usize) -> f64 {
    let Ok(codec) = Codec::new(Redundancy::Ec { k: 4, m: 2 }) else {
        return 0.0;
    };
    let data = pattern(2, 4 * MIB);
    let rounds = mib.div_ceil(4).max(8);
    let started = Instant::now();
    for _ in 0..rounds {
        let _ = std::hint::black_box(codec.encode(&data));
    }
    rate(rounds * 4 * MIB, started.elapsed())
}

/// `mib` MiB in 1 MiB writes spread over `writers` uids written at once.
/// Returns the rate and the first uid (for the read workloads).
async fn large_writes(os: &OsClient<RpcClient>, mib: usize, writers: usize, seed: u128) -> anyhow::Result<(f64, u128)> {
    let per_writer = mib.div_ceil(writers);
    let data = pattern(3, MIB);
    let started = Instant::now();
    let tasks = (0..writers).map(|w| {
        let os = os.clone();
        let data = data.clone();
        let uid = (seed << 64) | w as u128;
        async move {
            os.open_write(uid, (per_writer * MIB) as u64, EC, Duration::from_secs(3600))
                .await?;
            for i in 0..per_writer {
                os.write(uid, (i * MIB) as u64, data.clone()).await?;
            }
            os.confirm(uid).await?;
            anyhow::Ok(())
        }
    });
    for result in futures::future::join_all(tasks).await {
        result.context("large write")?;
    }
    Ok((rate(per_writer * writers * MIB, started.elapsed()), seed << 64))
}

/// `count` 4 KiB writes, each its own uid, from `writers` concurrent tasks.
async fn small(os: &OsClient<RpcClient>, count: usize, writers: usize, seed: u128) -> anyhow::Result<f64> {
    let per_writer = count.div_ceil(writers);
    let data: Bytes = pattern(4, 4096);
    let started = Instant::now();
    let tasks = (0..writers).map(|w| {
        let os = os.clone();
        let data = data.clone();
        async move {
            for i in 0..per_writer {
                let uid = (seed << 64) | ((w as u128) << 32) | i as u128;
                os.open_write(uid, 4096, EC, Duration::from_secs(3600)).await?;
                os.write(uid, 0, data.clone()).await?;
            }
            anyhow::Ok(())
        }
    });
    for result in futures::future::join_all(tasks).await {
        result.context("small write")?;
    }
    Ok((per_writer * writers) as f64 / started.elapsed().as_secs_f64().max(1e-9))
}

/// Reads `mib` MiB of `uid` in 1 MiB reads, checking every byte.
async fn reads(os: &OsClient<RpcClient>, uid: u128, mib: usize) -> anyhow::Result<f64> {
    let expected = pattern(3, MIB);
    let started = Instant::now();
    for i in 0..mib {
        let got = os.read(uid, (i * MIB) as u64, MIB as u64).await.context("reading")?;
        anyhow::ensure!(got == expected, "read {i} returned wrong bytes");
    }
    Ok(rate(mib * MIB, started.elapsed()))
}
