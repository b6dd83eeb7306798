//! `tessera bench nameserver` (see [`crate::bench`]): a 3-node name-server
//! group in this process, clients committing unique names through
//! `NameServerClient` (guard, then commit), against this disk's fdatasync
//! rate measured in the same directory and run.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tessera_common::ns_api::{CommitCondition, CommitNameReq, StoragePolicy};
use tessera_common::ns_client::{NameServerClient, NsClientConfig};
use tessera_common::pki::{self, NodeIdentity};
use tessera_common::rpc::{RpcClient, RpcClientConfig};
use tessera_common::testing::stable_loopback_addr;
use tessera_nameserver::config::{BootstrapMember, ClusterSettings, NameServerConfig, RaftTuning};
use tessera_nameserver::raft::RaftNode;

const BUCKET: &str = "bench";

pub async fn nameserver(dir: &Path, run: Duration) -> anyhow::Result<()> {
    let fsyncs = fdatasync_rate(dir, run.min(Duration::from_secs(3)))?;
    println!("{:<40} {fsyncs:>12.1} fsyncs/s", "fdatasync of a 128-byte append");
    let (nodes, certs) = start_three(dir).await?;
    let identity = NodeIdentity::load(&certs, "admin")?;
    let transport = RpcClient::new(identity, RpcClientConfig::default())?;
    let addrs = nodes.iter().map(|n| n.addr()).collect();
    let ns = Arc::new(NameServerClient::new(transport, addrs, NsClientConfig::default()));
    create_bucket(&ns).await?;
    let mut summary = serde_json::json!({ "fdatasync_per_s": fsyncs });
    for clients in [1usize, 64] {
        let (rate, p99_ms) = commits(&ns, clients, run).await?;
        println!(
            "{:<40} {rate:>12.1} commits/s (p99 {p99_ms:.1} ms)",
            format!("name commits, {clients} clients")
        );
        summary[format!("commits_per_s_{clients}")] = rate.into();
        summary[format!("p99_ms_{clients}")] = p99_ms.into();
        summary[format!("commits_per_fsync_{clients}")] = (rate / fsyncs.max(1e-9)).into();
    }
    println!("{summary}");
    for node in nodes {
        node.shutdown().await;
    }
    Ok(())
}

/// Sequential 128-byte appends, each followed by fdatasync.
fn fdatasync_rate(dir: &Path, run: Duration) -> anyhow::Result<f64> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("fsync-reference");
    let mut file = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let started = Instant::now();
    let mut count = 0u64;
    while started.elapsed() < run {
        file.write_all(&[7u8; 128])?;
        file.sync_data()?;
        count += 1;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    std::fs::remove_file(&path).ok();
    Ok(rate)
}

async fn start_three(dir: &Path) -> anyhow::Result<(Vec<RaftNode>, std::path::PathBuf)> {
    let certs = dir.join("certs");
    let names: Vec<String> = ["ns1", "ns2", "ns3", "admin"].map(String::from).to_vec();
    pki::init_cluster(&certs, &names).context("creating certificates")?;
    let addrs: Vec<_> = (0..3).map(|_| stable_loopback_addr()).collect();
    let bootstrap: Vec<BootstrapMember> = addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| BootstrapMember {
            id: i as u64 + 1,
            addr: *addr,
        })
        .collect();
    let mut nodes = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let id = i as u64 + 1;
        let config = NameServerConfig {
            node_id: id,
            listen: *addr,
            advertise: None,
            data_dir: dir.join(format!("ns{id}")),
            certs_dir: certs.clone(),
            identity: format!("ns{id}"),
            metrics_listen: None,
            raft: RaftTuning::loopback(),
            bootstrap: if id == 1 { bootstrap.clone() } else { Vec::new() },
            cluster: ClusterSettings::default(),
        };
        nodes.push(
            RaftNode::start(config)
                .await
                .with_context(|| format!("starting ns{id}"))?,
        );
    }
    Ok((nodes, certs))
}

async fn create_bucket(ns: &NameServerClient<RpcClient>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match ns
            .create_bucket(BUCKET, "bench", StoragePolicy::Ec { k: 4, m: 2 })
            .await
        {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e).context("creating the bench bucket"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// `clients` tasks committing unique names for `run`; (commits/s, p99 ms).
async fn commits(ns: &Arc<NameServerClient<RpcClient>>, clients: usize, run: Duration) -> anyhow::Result<(f64, f64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    // Uids must carry a birth at or below the log index that commits them
    // (DESIGN §4, reaped pruning): one committed position serves the run.
    let birth = ns
        .log_position()
        .await
        .context("reading the name-server log position")?;
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (ns, stop, done) = (ns.clone(), stop.clone(), done.clone());
            tokio::spawn(async move {
                let mut latencies_us = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let uid = bench_uid(birth, c as u64, n);
                    let key = format!("c{c}/k{n}");
                    let at = Instant::now();
                    ns.create_guard(BUCKET, &key, uid, Duration::from_secs(60)).await?;
                    let request = CommitNameReq {
                        bucket: BUCKET.into(),
                        key,
                        uid,
                        size: 1,
                        etag: "\"bench\"".into(),
                        content_type: None,
                        user_meta: Vec::new(),
                        system_meta: Vec::new(),
                        partition: 0,
                        condition: CommitCondition::None,
                    };
                    ns.commit_name(&request).await?;
                    latencies_us.push(at.elapsed().as_micros() as u64);
                    done.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
                anyhow::Ok(latencies_us)
            })
        })
        .collect();
    tokio::time::sleep(run).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.context("bench client panicked")??);
    }
    let rate = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let p99 = latencies
        .get(latencies.len().saturating_sub(1) * 99 / 100)
        .copied()
        .unwrap_or(0) as f64
        / 1000.0;
    Ok((rate, p99))
}

/// A uid born at `birth`, unique per (client, n) within one run; the random
/// bits keep runs against one cluster apart.
fn bench_uid(birth: u64, client: u64, n: u64) -> u128 {
    let low = (rand::random::<u64>() << 48) ^ (client << 40) ^ n;
    (u128::from(birth) << 64) | u128::from(low | 1 << 63)
}
