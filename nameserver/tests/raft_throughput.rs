//! A quick throughput measurement of a 3-node name-server group (fsync on):
//! 1 and 64 concurrent clients proposing `CreateBucket` through the leader
//! for a short, fixed time. Prints proposals/s and latency; asserts only a
//! floor far below the goal so a loaded box does not make it flaky.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_common::pki::init_cluster;
use tessera_nameserver::config::{ClusterSettings, NameServerConfig, RaftTuning};
use tessera_nameserver::namespace::{Command, Response};
use tessera_nameserver::raft::RaftNode;

const RUN: Duration = Duration::from_secs(3);

async fn start_three(dir: &std::path::Path) -> Vec<Arc<RaftNode>> {
    let certs = dir.join("certs");
    let names: Vec<String> = (1..=3).map(|i| format!("ns{i}")).collect();
    init_cluster(&certs, &names).expect("certs");
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let config = NameServerConfig {
            node_id: id,
            listen: "127.0.0.1:0".parse().expect("addr"),
            advertise: None,
            data_dir: dir.join(format!("ns{id}")),
            certs_dir: certs.clone(),
            identity: format!("ns{id}"),
            metrics_listen: None,
            raft: RaftTuning {
                heartbeat_interval_ms: 100,
                election_timeout_min_ms: 1_000,
                election_timeout_max_ms: 2_000,
                ..RaftTuning::default()
            },
            bootstrap: Vec::new(),
            cluster: ClusterSettings::default(),
        };
        nodes.push(Arc::new(RaftNode::start(config).await.expect("start")));
    }
    let members = nodes.iter().map(|n| (n.id(), n.addr().to_string())).collect();
    nodes[0].bootstrap(members).await.expect("bootstrap");
    nodes
}

async fn leader(nodes: &[Arc<RaftNode>]) -> Arc<RaftNode> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(node) = nodes
            .iter()
            .find(|n| n.metrics().borrow().state == openraft::ServerState::Leader)
        {
            return node.clone();
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `clients` proposers for [`RUN`]; returns (proposals/s, mean latency).
async fn measure(node: Arc<RaftNode>, clients: usize, tag: &'static str) -> (f64, Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let latency_us = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let (node, stop, done, latency_us) = (node.clone(), stop.clone(), done.clone(), latency_us.clone());
        tasks.push(tokio::spawn(async move {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("{tag}-{client:03}-{seq:06}");
                seq += 1;
                let command = Command::CreateBucket {
                    name,
                    owner: "bench".into(),
                    created_ms: 1,
                };
                let t = Instant::now();
                let response = node.propose(command).await.expect("propose");
                assert_eq!(response, Response::Ok);
                latency_us.fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(RUN).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("client");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let count = done.load(Ordering::Relaxed).max(1);
    let mean = Duration::from_micros(latency_us.load(Ordering::Relaxed) / count);
    (count as f64 / elapsed, mean)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_throughput_1_and_64_clients() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = start_three(dir.path()).await;
    let leader = leader(&nodes).await;
    let (one_rate, one_latency) = measure(leader.clone(), 1, "one").await;
    let (many_rate, many_latency) = measure(leader, 64, "many").await;
    println!("ns raft, 3 nodes, fsync on: 1 client {one_rate:.0} proposals/s (mean {one_latency:?})");
    println!("ns raft, 3 nodes, fsync on: 64 clients {many_rate:.0} proposals/s (mean {many_latency:?})");
    assert!(one_rate > 10.0, "1 client: {one_rate:.1}/s");
    assert!(many_rate > 50.0, "64 clients: {many_rate:.1}/s");
    for node in nodes {
        if let Ok(node) = Arc::try_unwrap(node) {
            node.shutdown().await;
        }
    }
}
