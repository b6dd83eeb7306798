//! The name servers' membership admin API (`ns.admin_members`,
//! `ns.admin_add`, `ns.admin_remove`) on real nodes over loopback (QUIC +
//! mTLS), through `NameServerClient`: a 4th node added as a learner and
//! promoted, serving reads, then followers removed down to the last voter,
//! which is refused. Tests run one at a time (a shared lock): the box has
//! 2 cores.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tessera_common::ns_api::{MembersInfo, NsError, StoragePolicy};
use tessera_common::ns_client::{NameServerClient, NsCallError, NsClientConfig};
use tessera_common::pki::{init_cluster, NodeIdentity};
use tessera_common::rpc::{RpcClient, RpcClientConfig};
use tessera_nameserver::config::{ClusterSettings, NameServerConfig, RaftTuning};
use tessera_nameserver::namespace::{Query, QueryResponse};
use tessera_nameserver::raft::RaftNode;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const WAIT: Duration = Duration::from_secs(20);
const BUCKET: &str = "photos";

fn config(dir: &Path, certs: &Path, id: u64) -> NameServerConfig {
    NameServerConfig {
        node_id: id,
        listen: "127.0.0.1:0".parse().expect("addr"),
        advertise: None,
        data_dir: dir.join(format!("ns{id}")),
        certs_dir: certs.to_path_buf(),
        identity: format!("ns{id}"),
        metrics_listen: None,
        raft: RaftTuning::loopback(),
        bootstrap: Vec::new(),
        cluster: ClusterSettings::default(),
    }
}

struct Cluster {
    dir: tempfile::TempDir,
    certs: PathBuf,
    nodes: BTreeMap<u64, RaftNode>,
}

impl Cluster {
    /// Starts 3 nodes, bootstraps them and waits for a leader; certificates
    /// for a 4th node and the admin are issued too.
    async fn three() -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = dir.path().join("certs");
        init_cluster(&certs, &["ns1", "ns2", "ns3", "ns4", "admin"].map(String::from)).expect("certs");
        let mut cluster = Cluster {
            dir,
            certs,
            nodes: BTreeMap::new(),
        };
        for id in 1..=3u64 {
            cluster.start(id).await;
        }
        let members = cluster.addrs().iter().map(|(id, a)| (*id, a.to_string())).collect();
        cluster.nodes[&1].bootstrap(members).await.expect("bootstrap");
        cluster.leader().await;
        cluster
    }

    /// Starts node `id` without bootstrapping it; returns its address.
    async fn start(&mut self, id: u64) -> SocketAddr {
        let node = RaftNode::start(config(self.dir.path(), &self.certs, id))
            .await
            .expect("start node");
        let addr = node.addr();
        self.nodes.insert(id, node);
        addr
    }

    fn addrs(&self) -> BTreeMap<u64, SocketAddr> {
        self.nodes.iter().map(|(id, n)| (*id, n.addr())).collect()
    }

    /// A leader every running node follows.
    async fn leader(&self) -> u64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let leaders: Vec<Option<u64>> = self
                .nodes
                .values()
                .map(|n| n.metrics().borrow().current_leader)
                .collect();
            if let Some(Some(l)) = leaders.first() {
                if self.nodes.contains_key(l) && leaders.iter().all(|x| x == &Some(*l)) {
                    return *l;
                }
            }
            assert!(Instant::now() < deadline, "no leader agreed within {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// An admin client of every running node, `first` tried first.
    fn client(&self, first: u64) -> NameServerClient<RpcClient> {
        let identity = NodeIdentity::load(&self.certs, "admin").expect("admin identity");
        let transport = RpcClient::new(identity, RpcClientConfig::default()).expect("client");
        let all = self.addrs();
        let mut addrs = vec![all[&first]];
        addrs.extend(all.iter().filter(|(id, _)| **id != first).map(|(_, a)| *a));
        let config = NsClientConfig {
            timeout: Duration::from_secs(30),
            ..NsClientConfig::default()
        };
        NameServerClient::new(transport, addrs, config)
    }

    async fn stop(&mut self, id: u64) {
        if let Some(node) = self.nodes.remove(&id) {
            node.shutdown().await;
        }
    }

    async fn stop_all(mut self) {
        for (_, node) in std::mem::take(&mut self.nodes) {
            node.shutdown().await;
        }
    }
}

fn ids(members: &[tessera_common::ns_api::Member]) -> Vec<u64> {
    members.iter().map(|m| m.id).collect()
}

fn refused(result: Result<impl std::fmt::Debug, NsCallError>) -> NsError {
    match result {
        Err(NsCallError::Ns(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Waits until node `id` has applied the bucket (read from its own state).
async fn wait_applied(cluster: &Cluster, id: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let query = Query::GetBucket { name: BUCKET.into() };
        let answer = cluster.nodes[&id].stale_query(query).await.expect("stale query");
        if matches!(answer, QueryResponse::Bucket(Some(_))) {
            return;
        }
        assert!(Instant::now() < deadline, "node {id} did not apply the bucket");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn members(client: &NameServerClient<RpcClient>) -> MembersInfo {
    client.members().await.expect("list members")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_promote_serve_and_remove_down_to_the_last_voter() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::three().await;
    let leader = cluster.leader().await;
    let follower = *cluster.nodes.keys().find(|id| **id != leader).expect("follower");

    // Listed through a follower: the client follows its NotLeader hint.
    let info = members(&cluster.client(follower)).await;
    assert_eq!(info.leader, Some(leader));
    assert_eq!(ids(&info.voters), vec![1, 2, 3]);
    assert!(info.learners.is_empty());
    assert!(info.term > 0);
    assert!(info.voters.iter().all(|m| !m.addr.is_empty()));

    // Node 4: a learner first, then promoted.
    let addr4 = cluster.start(4).await;
    let client = cluster.client(follower);
    client
        .add_member(4, &addr4.to_string(), false)
        .await
        .expect("add learner");
    let info = members(&client).await;
    assert_eq!((ids(&info.voters), ids(&info.learners)), (vec![1, 2, 3], vec![4]));
    assert!(matches!(
        refused(client.add_member(4, "127.0.0.1:1", true).await),
        NsError::MembershipRejected(_)
    ));
    client.add_member(4, &addr4.to_string(), true).await.expect("promote");
    let info = members(&client).await;
    assert_eq!((ids(&info.voters), ids(&info.learners)), (vec![1, 2, 3, 4], vec![]));
    assert!(matches!(
        refused(client.add_member(4, &addr4.to_string(), true).await),
        NsError::MembershipRejected(_)
    ));

    // Node 4 holds and serves what is written afterwards.
    client
        .create_bucket(BUCKET, "alice", StoragePolicy::Replicated { n: 3 })
        .await
        .expect("create bucket");
    wait_applied(&cluster, 4).await;
    let answer = cluster.nodes[&4]
        .read(Query::GetBucket { name: BUCKET.into() })
        .await
        .expect("linearizable read at node 4");
    assert!(matches!(answer, QueryResponse::Bucket(Some(_))), "{answer:?}");

    // Remove every follower; the last voter is refused.
    let followers: Vec<u64> = cluster.nodes.keys().copied().filter(|id| *id != leader).collect();
    let client = cluster.client(leader);
    for (n, id) in followers.iter().enumerate() {
        client.remove_member(*id).await.expect("remove a follower");
        cluster.stop(*id).await;
        let info = members(&client).await;
        assert_eq!(info.voters.len(), 3 - n, "after removing {id}: {info:?}");
        assert!(!ids(&info.voters).contains(id));
    }
    assert_eq!(refused(client.remove_member(leader).await), NsError::LastVoter);
    assert!(matches!(
        refused(client.remove_member(99).await),
        NsError::MembershipRejected(_)
    ));
    assert_eq!(ids(&members(&client).await.voters), vec![leader]);
    cluster.stop_all().await;
}
