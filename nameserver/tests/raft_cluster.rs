//! Name-server Raft groups of 3-4 nodes in one process, each with its own
//! RocksDB (tempdir) and RPC server (QUIC + mTLS on 127.0.0.1): replication,
//! forwarding, leader loss, restarts, snapshots, membership, durability.
//! Tests run one at a time (a shared lock): the box has 2 cores.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tessera_common::pki::{init_cluster, NodeIdentity};
use tessera_common::rpc::{self, CallOptions, RpcClient, RpcClientConfig};
use tessera_nameserver::config::{ClusterSettings, NameServerConfig, RaftTuning};
use tessera_nameserver::namespace::{Command, NamespaceError, Query, QueryResponse, Response};
use tessera_nameserver::raft::{ProposeError, RaftNode, GROUP};
use tessera_raft::service::{decode_client_reply, envelope, Propose};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const WAIT: Duration = Duration::from_secs(20);

fn bucket(name: &str) -> Command {
    Command::CreateBucket {
        name: name.to_string(),
        owner: "tester".into(),
        created_ms: 1,
    }
}

fn get(name: &str) -> Query {
    Query::GetBucket { name: name.to_string() }
}

struct Cluster {
    dir: tempfile::TempDir,
    certs: PathBuf,
    tuning: RaftTuning,
    nodes: BTreeMap<u64, RaftNode>,
    addrs: BTreeMap<u64, SocketAddr>,
}

impl Cluster {
    fn new(tuning: RaftTuning) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = dir.path().join("certs");
        let names: Vec<String> = (1..=5)
            .map(|i| format!("ns{i}"))
            .chain(["client".to_string()])
            .collect();
        init_cluster(&certs, &names).expect("certs");
        Cluster {
            dir,
            certs,
            tuning,
            nodes: BTreeMap::new(),
            addrs: BTreeMap::new(),
        }
    }

    /// Starts 3 nodes and bootstraps them.
    async fn three(tuning: RaftTuning) -> Cluster {
        let mut cluster = Cluster::new(tuning);
        for id in 1..=3 {
            cluster.start(id).await;
        }
        let members = cluster.addrs.iter().map(|(id, a)| (*id, a.to_string())).collect();
        cluster.node(1).bootstrap(members).await.expect("bootstrap");
        cluster
    }

    /// Starts (or restarts, on its old port and data dir) node `id`.
    async fn start(&mut self, id: u64) {
        let listen = self
            .addrs
            .get(&id)
            .copied()
            .unwrap_or_else(tessera_common::testing::stable_loopback_addr);
        let config = NameServerConfig {
            node_id: id,
            listen,
            advertise: None,
            data_dir: self.dir.path().join(format!("ns{id}")),
            certs_dir: self.certs.clone(),
            identity: format!("ns{id}"),
            metrics_listen: None,
            raft: self.tuning.clone(),
            bootstrap: Vec::new(),
            cluster: ClusterSettings::default(),
        };
        let node = RaftNode::start(config).await.expect("start node");
        self.addrs.insert(id, node.addr());
        self.nodes.insert(id, node);
    }

    async fn stop(&mut self, id: u64) {
        let node = self.nodes.remove(&id).expect("node running");
        node.shutdown().await;
    }

    async fn stop_all(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }

    fn node(&self, id: u64) -> &RaftNode {
        self.nodes.get(&id).expect("node running")
    }

    /// The leader every running voter agrees on.
    async fn leader(&self) -> u64 {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(leader) = self.agreed_leader() {
                return leader;
            }
            assert!(Instant::now() < deadline, "no leader agreed within {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A node that is leader and that every running member of its
    /// membership (voter or learner) follows.
    fn agreed_leader(&self) -> Option<u64> {
        let (leader, node) = self
            .nodes
            .iter()
            .find(|(_, n)| n.metrics().borrow().state == openraft::ServerState::Leader)?;
        let membership = node.metrics().borrow().membership_config.clone();
        let members: BTreeSet<u64> = membership.membership().nodes().map(|(id, _)| *id).collect();
        let agreed = self
            .nodes
            .iter()
            .filter(|(id, _)| members.contains(id))
            .all(|(_, n)| n.metrics().borrow().current_leader == Some(*leader));
        agreed.then_some(*leader)
    }

    fn follower(&self, leader: u64) -> u64 {
        *self.nodes.keys().find(|id| **id != leader).expect("a follower")
    }

    fn applied(&self, id: u64) -> u64 {
        self.node(id).metrics().borrow().last_applied.map_or(0, |l| l.index)
    }

    /// Waits until node `id` has applied everything the leader has.
    async fn caught_up(&self, id: u64) {
        let leader = self.leader().await;
        let target = self.applied(leader);
        let deadline = Instant::now() + WAIT;
        while self.applied(id) < target {
            assert!(
                Instant::now() < deadline,
                "node {id} stuck at {} < {target}",
                self.applied(id)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Creates `names` through node `via`, retrying while leadership settles.
    async fn create_all(&self, via: u64, names: &[String]) {
        for name in names {
            let deadline = Instant::now() + WAIT;
            loop {
                match self.node(via).propose(bucket(name)).await {
                    Ok(response) => {
                        assert_eq!(response, Response::Ok, "creating {name}");
                        break;
                    }
                    Err(e @ ProposeError::NotLeader { .. }) => {
                        assert!(Instant::now() < deadline, "{e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("creating {name}: {e}"),
                }
            }
        }
    }

    /// Asserts node `id` holds every bucket in `names` in its own RocksDB.
    async fn holds_locally(&self, id: u64, names: &[String]) {
        for name in names {
            let answer = self.node(id).stale_query(get(name)).await.expect("local query");
            assert!(
                matches!(&answer, QueryResponse::Bucket(Some(b)) if b.name == *name),
                "node {id} lacks {name}: {answer:?}"
            );
        }
    }
}

fn names(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i:04}")).collect()
}

/// A client outside the cluster writing over RPC, following leader hints.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn spawn(cluster: &Cluster, prefix: &'static str) -> Writer {
        let identity = NodeIdentity::load(&cluster.certs, "client").expect("client identity");
        let client = RpcClient::new(identity, RpcClientConfig::default()).expect("client");
        let addrs: Vec<SocketAddr> = cluster.addrs.values().copied().collect();
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(write_loop(client, addrs, prefix, stop.clone(), acked.clone()));
        Writer { stop, acked, task }
    }

    fn acked(&self) -> Vec<String> {
        self.acked.lock().expect("lock").clone()
    }

    async fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("writer");
        let acked = self.acked.lock().expect("lock").clone();
        acked
    }
}

async fn write_loop(
    client: RpcClient,
    addrs: Vec<SocketAddr>,
    prefix: &'static str,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
) {
    let opts = CallOptions {
        timeout: Duration::from_secs(3),
        retries: 0,
        ..CallOptions::default()
    };
    let mut target = addrs[0];
    let mut next = 0usize;
    let mut seq = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let name = format!("{prefix}-{seq:06}");
        seq += 1;
        let (body, bulk) = envelope(GROUP, &bucket(&name));
        let call = rpc::call::<Propose, _>(&client, target, &body, bulk, &opts).await;
        match call
            .map_err(|e| ProposeError::Unavailable(e.to_string()))
            .and_then(|(r, bulk)| decode_client_reply::<Response>(&r, &bulk))
        {
            Ok(Response::Ok) => acked.lock().expect("lock").push(name),
            Ok(other) => panic!("unexpected answer to {name}: {other:?}"),
            Err(ProposeError::NotLeader {
                leader_addr: Some(addr),
                ..
            }) => target = addr.parse().unwrap_or(target),
            Err(_) => {
                next = (next + 1) % addrs.len();
                target = addrs[next];
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    client.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_replicates_forwards_and_reads_linearizably_everywhere() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::three(RaftTuning::loopback()).await;
    let leader = cluster.leader().await;
    let follower = cluster.follower(leader);
    let via_leader = names("lead", 0..10);
    let via_follower = names("fwd", 0..10);
    cluster.create_all(leader, &via_leader).await;
    cluster.create_all(follower, &via_follower).await;
    let duplicate = cluster.node(follower).propose(bucket(&via_leader[0])).await;
    assert_eq!(
        duplicate.expect("answered"),
        Response::Error(NamespaceError::BucketExists(via_leader[0].clone()))
    );
    let all: Vec<String> = via_leader.iter().chain(&via_follower).cloned().collect();
    for id in 1..=3 {
        for name in &all {
            let answer = cluster.node(id).read(get(name)).await.expect("linearizable read");
            assert!(matches!(answer, QueryResponse::Bucket(Some(_))), "{name} via {id}");
        }
        cluster.caught_up(id).await;
        cluster.holds_locally(id, &all).await;
    }
    let missing = cluster.node(follower).read(get("never-created")).await.expect("read");
    assert_eq!(missing, QueryResponse::Bucket(None));
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_acknowledged_writes_survive_leader_kill() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::three(RaftTuning::loopback()).await;
    let old_leader = cluster.leader().await;
    let writer = Writer::spawn(&cluster, "kill");
    wait_for_acks(&writer, 20).await;
    cluster.stop(old_leader).await;
    let acked_at_kill = writer.acked().len();
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, old_leader);
    wait_for_acks(&writer, acked_at_kill + 20).await;
    let acked = writer.finish().await;
    let survivor = cluster.follower(new_leader);
    for name in &acked {
        let answer = cluster
            .node(survivor)
            .read(get(name))
            .await
            .expect("read after failover");
        assert!(
            matches!(answer, QueryResponse::Bucket(Some(_))),
            "acknowledged {name} lost"
        );
    }
    cluster.stop_all().await;
}

async fn wait_for_acks(writer: &Writer, count: usize) {
    let deadline = Instant::now() + WAIT;
    while writer.acked().len() < count {
        assert!(
            Instant::now() < deadline,
            "only {} writes acknowledged",
            writer.acked().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_restarted_follower_catches_up_from_its_disk() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::three(RaftTuning::loopback()).await;
    let leader = cluster.leader().await;
    let follower = cluster.follower(leader);
    let before = names("before", 0..10);
    cluster.create_all(leader, &before).await;
    cluster.caught_up(follower).await;
    cluster.stop(follower).await;
    let during = names("during", 0..30);
    cluster.create_all(leader, &during).await;
    cluster.start(follower).await;
    cluster.caught_up(follower).await;
    cluster.holds_locally(follower, &before).await;
    cluster.holds_locally(follower, &during).await;
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_lagging_follower_and_new_learner_get_a_snapshot() {
    let _serial = SERIAL.lock().await;
    let tuning = RaftTuning {
        snapshot_logs_since_last: 20,
        max_in_snapshot_log_to_keep: 0,
        ..RaftTuning::loopback()
    };
    let mut cluster = Cluster::three(tuning).await;
    let leader = cluster.leader().await;
    let follower = cluster.follower(leader);
    let early = names("early", 0..5);
    cluster.create_all(leader, &early).await;
    cluster.caught_up(follower).await;
    cluster.stop(follower).await;
    let late = names("late", 0..60);
    cluster.create_all(leader, &late).await;
    let follower_applied = 5;
    let deadline = Instant::now() + WAIT;
    loop {
        let purged = cluster.node(leader).metrics().borrow().purged.map_or(0, |l| l.index);
        if purged > follower_applied + 10 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "leader never purged its log (purged {purged})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.start(follower).await;
    cluster.caught_up(follower).await;
    let snapshot = cluster.node(follower).metrics().borrow().snapshot;
    assert!(snapshot.is_some(), "follower caught up without a snapshot");
    cluster.holds_locally(follower, &early).await;
    cluster.holds_locally(follower, &late).await;
    // The installed snapshot is kept on disk: it is there again after a restart.
    cluster.stop(follower).await;
    cluster.start(follower).await;
    let reloaded = cluster
        .node(follower)
        .raft()
        .wait(Some(WAIT))
        .metrics(|m| m.snapshot.is_some(), "snapshot reloaded")
        .await;
    assert!(reloaded.is_ok(), "snapshot lost across restart: {reloaded:?}");

    cluster.start(4).await;
    let addr = cluster.addrs[&4].to_string();
    cluster.node(leader).add_learner(4, addr).await.expect("add learner");
    cluster.caught_up(4).await;
    assert!(
        cluster.node(4).metrics().borrow().snapshot.is_some(),
        "learner caught up without a snapshot"
    );
    cluster.holds_locally(4, &late).await;
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_membership_changes_while_a_client_writes() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::three(RaftTuning::loopback()).await;
    let writer = Writer::spawn(&cluster, "member");
    wait_for_acks(&writer, 10).await;
    cluster.start(4).await;
    let addr4 = cluster.addrs[&4].to_string();
    let leader = cluster.leader().await;
    cluster.node(leader).add_learner(4, addr4).await.expect("add learner");
    let voters: BTreeSet<u64> = [1, 2, 3, 4].into();
    cluster.node(leader).change_membership(voters).await.expect("promote");
    let removed = *[1u64, 2, 3].iter().find(|id| **id != leader).expect("a follower");
    let remaining: BTreeSet<u64> = [1u64, 2, 3, 4].into_iter().filter(|id| *id != removed).collect();
    cluster
        .node(leader)
        .change_membership(remaining.clone())
        .await
        .expect("remove");
    let acked_before = writer.acked().len();
    wait_for_acks(&writer, acked_before + 10).await;
    let acked = writer.finish().await;
    cluster.stop(removed).await;
    let leader = cluster.leader().await;
    let membership = cluster.node(leader).metrics().borrow().membership_config.clone();
    let voters: BTreeSet<u64> = membership.membership().voter_ids().collect();
    assert_eq!(voters, remaining);
    cluster.caught_up(4).await;
    cluster.holds_locally(4, &acked).await;
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_vote_and_log_survive_a_full_restart() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::three(RaftTuning::loopback()).await;
    let leader = cluster.leader().await;
    let first = names("first", 0..20);
    cluster.create_all(leader, &first).await;
    let term = cluster.node(leader).metrics().borrow().current_term;
    let mut before = BTreeMap::new();
    for id in 1..=3 {
        cluster.caught_up(id).await;
        let m = cluster.node(id).metrics().borrow().clone();
        before.insert(id, (m.vote, m.last_log_index));
    }
    cluster.stop_all().await;
    for id in 1..=3 {
        cluster.start(id).await;
        // Metrics are published once the restarted core has loaded its state.
        let (vote, last_log) = before[&id];
        let recovered = cluster
            .node(id)
            .raft()
            .wait(Some(WAIT))
            .metrics(
                |m| m.vote >= vote && m.last_log_index >= last_log,
                "vote and log recovered",
            )
            .await;
        assert!(recovered.is_ok(), "node {id} lost its vote or log: {recovered:?}");
    }
    let leader = cluster.leader().await;
    let new_term = cluster.node(leader).metrics().borrow().current_term;
    // openraft 0.9 lets a restarted leader whose committed vote survived
    // resume in the same term; a term can never go backwards.
    assert!(new_term >= term, "term went backwards: {new_term} < {term}");
    for id in 1..=3 {
        for name in &first {
            let answer = cluster.node(id).read(get(name)).await.expect("read after restart");
            assert!(matches!(answer, QueryResponse::Bucket(Some(_))), "{name} lost");
        }
    }
    cluster.create_all(leader, &names("second", 0..5)).await;
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_errors_distinguish_no_leader_from_no_quorum() {
    let _serial = SERIAL.lock().await;
    let tuning = RaftTuning {
        propose_timeout_ms: 1_000,
        read_timeout_ms: 1_000,
        ..RaftTuning::loopback()
    };
    let mut cluster = Cluster::new(tuning);
    for id in 1..=3 {
        cluster.start(id).await;
    }
    let unknown = cluster.node(2).propose(bucket("before-bootstrap")).await;
    assert!(
        matches!(unknown, Err(ProposeError::NotLeader { leader_id: None, .. })),
        "{unknown:?}"
    );
    let members = cluster.addrs.iter().map(|(id, a)| (*id, a.to_string())).collect();
    cluster.node(1).bootstrap(members).await.expect("bootstrap");
    let again: BTreeMap<u64, String> = cluster.addrs.iter().map(|(id, a)| (*id, a.to_string())).collect();
    cluster.node(2).bootstrap(again).await.expect("bootstrap is idempotent");
    let leader = cluster.leader().await;
    cluster.create_all(leader, &names("quorum", 0..3)).await;
    let followers: Vec<u64> = cluster.nodes.keys().copied().filter(|id| *id != leader).collect();
    for id in followers {
        cluster.stop(id).await;
    }
    let lost = cluster.node(leader).propose(bucket("no-quorum")).await;
    match lost {
        Err(e @ ProposeError::Unavailable(_)) => assert!(e.outcome_unknown()),
        other => panic!("expected Unavailable without a quorum, got {other:?}"),
    }
    let read = cluster.node(leader).read(get("quorum-0000")).await;
    assert!(matches!(read, Err(ProposeError::Unavailable(_))), "{read:?}");
    cluster.stop_all().await;
}
