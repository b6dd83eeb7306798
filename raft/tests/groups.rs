//! Raft groups of the tiny counter state machine hosted by 3 processes on
//! loopback, each process one RPC server + client + registry with real
//! RocksDB per group: propose, linearizable reads, forwarding, two groups
//! sharing the same processes, calls for unknown groups, restarts. Tests
//! run one at a time (a shared lock): the box has 2 cores.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;
use tessera_common::pki::{init_cluster, NodeIdentity};
use tessera_common::rpc::{CallOptions, Router, RpcClient, RpcClientConfig, RpcServer, RpcServerConfig};
use tessera_raft::service::{call_group, Propose, Read};
use tessera_raft::testing::{Counter, CounterCommand, CounterQuery, CounterResponse};
use tessera_raft::{GroupId, GroupOptions, ProposeError, RaftGroup, RaftTuning, Registry};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const WAIT: Duration = Duration::from_secs(20);
const G1: GroupId = GroupId(1);
const G2: GroupId = GroupId(2);

fn add(key: &str, delta: i64) -> CounterCommand {
    CounterCommand::Add {
        key: key.to_string(),
        delta,
    }
}

fn get(key: &str) -> CounterQuery {
    CounterQuery::Get { key: key.to_string() }
}

/// One process: an RPC server serving its registry's groups.
struct Process {
    server: RpcServer,
    client: RpcClient,
    registry: Arc<Registry<Counter>>,
    groups: BTreeMap<GroupId, RaftGroup<Counter>>,
}

struct Cluster {
    dir: tempfile::TempDir,
    certs: PathBuf,
    procs: BTreeMap<u64, Process>,
    addrs: BTreeMap<u64, SocketAddr>,
}

impl Cluster {
    /// Starts processes 1..=3 (no groups yet).
    async fn three() -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = dir.path().join("certs");
        let names: Vec<String> = (1..=3).map(|i| format!("os{i}")).chain(["client".into()]).collect();
        init_cluster(&certs, &names).expect("certs");
        let mut cluster = Cluster {
            dir,
            certs,
            procs: BTreeMap::new(),
            addrs: BTreeMap::new(),
        };
        for id in 1..=3 {
            cluster.start_process(id).await;
        }
        cluster
    }

    /// Starts (or restarts, on its old port) process `id`, hosting no group.
    async fn start_process(&mut self, id: u64) {
        let listen = self
            .addrs
            .get(&id)
            .copied()
            .unwrap_or_else(tessera_common::testing::stable_loopback_addr);
        let identity = NodeIdentity::load(&self.certs, &format!("os{id}")).expect("identity");
        let client = RpcClient::new(identity.clone(), RpcClientConfig::default()).expect("client");
        let registry = Arc::new(Registry::new());
        let router = tessera_raft::routes(Router::new(), registry.clone());
        let config = RpcServerConfig {
            shutdown_grace: Duration::from_millis(200),
            ..RpcServerConfig::default()
        };
        // A restart can briefly find the port still held by the endpoint
        // just shut down (a lingering QUIC connection): retry a while.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let server = loop {
            match RpcServer::bind(listen, identity.clone(), router.clone(), config.clone()).await {
                Ok(server) => break server,
                Err(e) if std::time::Instant::now() < deadline => {
                    eprintln!("binding process {id} on {listen} failed, retrying: {e:#}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("binding process {id} on {listen}: {e:#}"),
            }
        };
        self.addrs.insert(id, server.local_addr());
        let process = Process {
            server,
            client,
            registry,
            groups: BTreeMap::new(),
        };
        self.procs.insert(id, process);
    }

    /// Starts group `group` in process `id`, on its own RocksDB directory.
    async fn start_group(&mut self, id: u64, group: GroupId) {
        let data_dir = self.dir.path().join(format!("p{id}")).join(format!("g{}", group.0));
        let process = self.procs.get_mut(&id).expect("process running");
        let options = GroupOptions {
            group,
            node_id: id,
            data_dir,
            tuning: RaftTuning::loopback(),
        };
        let started = RaftGroup::start(options, process.client.clone(), process.registry.clone()).await;
        process.groups.insert(group, started.expect("start group"));
    }

    /// Starts `group` on processes 1..=3 and bootstraps it from node `from`
    /// (which then most likely leads it first).
    async fn group_on_all(&mut self, group: GroupId, from: u64) {
        for id in 1..=3 {
            self.start_group(id, group).await;
        }
        let members = self.addrs.iter().map(|(id, a)| (*id, a.to_string())).collect();
        self.group(from, group).bootstrap(members).await.expect("bootstrap");
    }

    async fn stop_group(&mut self, id: u64, group: GroupId) {
        let process = self.procs.get_mut(&id).expect("process running");
        process.groups.remove(&group).expect("group running").shutdown().await;
    }

    async fn stop_process(&mut self, id: u64) {
        let process = self.procs.remove(&id).expect("process running");
        for (_, group) in process.groups {
            group.shutdown().await;
        }
        assert!(process.registry.is_empty());
        process.server.shutdown().await;
        process.client.shutdown();
    }

    async fn stop_all(&mut self) {
        let ids: Vec<u64> = self.procs.keys().copied().collect();
        for id in ids {
            self.stop_process(id).await;
        }
    }

    fn group(&self, id: u64, group: GroupId) -> &RaftGroup<Counter> {
        self.procs[&id].groups.get(&group).expect("group running")
    }

    /// The leader of `group` every running member agrees on.
    async fn leader(&self, group: GroupId) -> u64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let members: Vec<(u64, &RaftGroup<Counter>)> = self
                .procs
                .iter()
                .filter_map(|(id, p)| p.groups.get(&group).map(|g| (*id, g)))
                .collect();
            let leader = members.iter().find(|(_, g)| g.is_leader()).map(|(id, _)| *id);
            if let Some(leader) = leader {
                if members.iter().all(|(_, g)| g.leader().map(|l| l.0) == Some(leader)) {
                    return leader;
                }
            }
            assert!(
                Instant::now() < deadline,
                "group {group}: no leader agreed within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn follower(&self, group: GroupId, leader: u64) -> u64 {
        *self
            .procs
            .iter()
            .find(|(id, p)| **id != leader && p.groups.contains_key(&group))
            .expect("a follower")
            .0
    }

    /// Proposes through node `via`, retrying while leadership settles.
    async fn propose(&self, via: u64, group: GroupId, command: CounterCommand) -> CounterResponse {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.group(via, group).propose(command.clone()).await {
                Ok(response) => return response,
                Err(e @ ProposeError::NotLeader { .. }) => {
                    assert!(Instant::now() < deadline, "{e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("proposing {command:?} to group {group} via {via}: {e}"),
            }
        }
    }

    fn applied(&self, id: u64, group: GroupId) -> u64 {
        self.group(id, group)
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |l| l.index)
    }

    /// Waits until node `id` of `group` applied everything its leader has.
    async fn caught_up(&self, id: u64, group: GroupId) {
        let leader = self.leader(group).await;
        let target = self.applied(leader, group);
        let deadline = Instant::now() + WAIT;
        while self.applied(id, group) < target {
            assert!(Instant::now() < deadline, "node {id} of group {group} stuck");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn outside_client(&self) -> RpcClient {
        let identity = NodeIdentity::load(&self.certs, "client").expect("client identity");
        RpcClient::new(identity, RpcClientConfig::default()).expect("client")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_proposes_forwards_and_reads_linearizably() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::three().await;
    cluster.group_on_all(G1, 1).await;
    let leader = cluster.leader(G1).await;
    let follower = cluster.follower(G1, leader);
    let first = cluster.propose(leader, G1, add("x", 2)).await;
    assert_eq!(first.value, 2);
    let term = cluster.group(leader, G1).current_term();
    assert_eq!(first.applied_at.term, term, "apply sees the entry's leader term");
    let forwarded = cluster.propose(follower, G1, add("x", 3)).await;
    assert_eq!(forwarded.value, 5);
    assert!(forwarded.applied_at.log_index > first.applied_at.log_index);
    for id in 1..=3 {
        let value = cluster.group(id, G1).read(get("x")).await.expect("linearizable read");
        assert_eq!(value, 5, "read via node {id}");
        cluster.caught_up(id, G1).await;
        assert_eq!(cluster.group(id, G1).stale_query(get("x")).await.expect("local"), 5);
    }
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_share_the_processes_with_independent_leaders_and_logs() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::three().await;
    cluster.group_on_all(G1, 1).await;
    let leader1 = cluster.leader(G1).await;
    cluster.group_on_all(G2, cluster.follower(G1, leader1)).await;
    // Should group 2 still elect group 1's leader, stop it there until
    // another node leads group 2.
    if cluster.leader(G2).await == leader1 {
        cluster.stop_group(leader1, G2).await;
        cluster.leader(G2).await;
        cluster.start_group(leader1, G2).await;
    }
    let leader2 = cluster.leader(G2).await;
    assert_ne!(leader1, leader2, "independent leaders");
    for i in 0..10 {
        cluster.propose(1 + i % 3, G1, add("a", 1)).await;
    }
    cluster.propose(2, G2, add("b", 7)).await;
    for id in 1..=3 {
        assert_eq!(cluster.group(id, G1).read(get("a")).await.expect("read"), 10);
        assert_eq!(cluster.group(id, G1).read(get("b")).await.expect("read"), 0);
        assert_eq!(cluster.group(id, G2).read(get("a")).await.expect("read"), 0);
        assert_eq!(cluster.group(id, G2).read(get("b")).await.expect("read"), 7);
    }
    let log1 = cluster
        .group(leader1, G1)
        .metrics()
        .borrow()
        .last_log_index
        .unwrap_or(0);
    let log2 = cluster
        .group(leader2, G2)
        .metrics()
        .borrow()
        .last_log_index
        .unwrap_or(0);
    assert!(
        log1 > log2 + 5,
        "independent logs: group 1 at {log1}, group 2 at {log2}"
    );
    // Stopping one group leaves the other serving on the same processes.
    cluster.stop_group(leader2, G2).await;
    cluster.propose(leader2, G1, add("a", 1)).await;
    assert_eq!(cluster.group(leader2, G1).read(get("a")).await.expect("read"), 11);
    let survivor = cluster.follower(G2, leader2);
    assert_eq!(cluster.propose(survivor, G2, add("b", 1)).await.value, 8);
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_for_an_unknown_group_are_errors_not_panics() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::three().await;
    let client = cluster.outside_client();
    let opts = CallOptions {
        timeout: Duration::from_secs(3),
        retries: 0,
        ..CallOptions::default()
    };
    let peer = cluster.addrs[&1];
    let proposed = call_group::<Propose, _, CounterResponse>(&client, peer, GroupId(99), &add("x", 1), &opts).await;
    assert_eq!(proposed.expect("rpc ok"), Err(ProposeError::UnknownGroup(GroupId(99))));
    let read = call_group::<Read, _, i64>(&client, peer, GroupId(99), &get("x"), &opts).await;
    assert_eq!(read.expect("rpc ok"), Err(ProposeError::UnknownGroup(GroupId(99))));
    // A group whose peer process does not host it yet: replication calls
    // fail (openraft sees the peer unreachable) until it starts there.
    cluster.start_group(1, G1).await;
    let duplicate = GroupOptions {
        group: G1,
        node_id: 1,
        data_dir: cluster.dir.path().join("duplicate"),
        tuning: RaftTuning::loopback(),
    };
    let registry = cluster.procs[&1].registry.clone();
    let again = RaftGroup::<Counter>::start(duplicate, client.clone(), registry).await;
    assert!(again.is_err(), "a group runs at most once per process");
    let members: BTreeMap<u64, String> = [1u64, 2]
        .iter()
        .map(|id| (*id, cluster.addrs[id].to_string()))
        .collect();
    cluster.group(1, G1).bootstrap(members).await.expect("bootstrap");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!cluster.group(1, G1).is_leader(), "no quorum without node 2's group");
    assert_ne!(cluster.group(1, G1).metrics().borrow().state, ServerState::Shutdown);
    cluster.start_group(2, G1).await;
    let leader = cluster.leader(G1).await;
    assert_eq!(cluster.propose(leader, G1, add("x", 4)).await.value, 4);
    client.shutdown();
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_nodes_keep_their_state() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::three().await;
    cluster.group_on_all(G1, 1).await;
    let leader = cluster.leader(G1).await;
    let follower = cluster.follower(G1, leader);
    cluster.propose(leader, G1, add("k", 1)).await;
    cluster.caught_up(follower, G1).await;
    cluster.stop_process(follower).await;
    for _ in 0..5 {
        cluster.propose(leader, G1, add("k", 1)).await;
    }
    cluster.start_process(follower).await;
    cluster.start_group(follower, G1).await;
    cluster.caught_up(follower, G1).await;
    assert_eq!(
        cluster.group(follower, G1).stale_query(get("k")).await.expect("local"),
        6
    );
    // A full restart: every node recovers its log, vote and state from disk.
    let term = cluster.group(leader, G1).current_term();
    let mut applied = BTreeMap::new();
    for id in 1..=3 {
        cluster.caught_up(id, G1).await;
        applied.insert(id, cluster.applied(id, G1));
    }
    cluster.stop_all().await;
    for id in 1..=3 {
        cluster.start_process(id).await;
        cluster.start_group(id, G1).await;
    }
    for id in 1..=3 {
        let recovered = cluster
            .group(id, G1)
            .raft()
            .wait(Some(WAIT))
            .metrics(
                |m| m.last_applied.is_some_and(|l| l.index >= applied[&id]),
                "state recovered",
            )
            .await;
        assert!(recovered.is_ok(), "node {id}: {recovered:?}");
        assert_eq!(cluster.group(id, G1).stale_query(get("k")).await.expect("local"), 6);
    }
    let leader = cluster.leader(G1).await;
    assert!(cluster.group(leader, G1).current_term() >= term);
    let voters: BTreeSet<u64> = cluster
        .group(leader, G1)
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .collect();
    assert_eq!(voters, BTreeSet::from([1, 2, 3]));
    assert_eq!(cluster.propose(leader, G1, add("k", 1)).await.value, 7);
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_proposals_share_log_entries_and_each_gets_its_own_answer() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::three().await;
    cluster.group_on_all(G1, 1).await;
    let leader = cluster.leader(G1).await;
    cluster.propose(leader, G1, add("warm", 1)).await;
    let before = cluster.applied(leader, G1);

    const PROPOSALS: i64 = 200;
    let handle = cluster.group(leader, G1).handle();
    let calls = (1..=PROPOSALS).map(|delta| {
        let handle = handle.clone();
        tokio::spawn(async move { (delta, handle.propose(add("sum", delta)).await) })
    });
    let answers = futures::future::join_all(calls).await;
    let mut seen = BTreeSet::new();
    for answer in answers {
        let (delta, result) = answer.expect("task");
        let response = result.unwrap_or_else(|e| panic!("proposal {delta}: {e}"));
        assert!(response.value >= delta, "each answer is the sum after its own add");
        assert!(seen.insert(response.value), "no two commands answered alike");
    }
    let total = PROPOSALS * (PROPOSALS + 1) / 2;
    assert_eq!(seen.last().copied(), Some(total), "the last add sees all of them");
    let entries = cluster.applied(leader, G1) - before;
    assert!(
        entries < PROPOSALS as u64 / 2,
        "{PROPOSALS} concurrent proposals took {entries} log entries: they were not batched"
    );
    for id in 1..=3 {
        cluster.caught_up(id, G1).await;
        let value = cluster.group(id, G1).stale_query(get("sum")).await.expect("local");
        assert_eq!(value, total, "node {id} applied every command once");
    }
    cluster.stop_all().await;
}
