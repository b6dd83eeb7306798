//! The client-facing name-server API on 3 nodes over loopback (QUIC +
//! mTLS), through `NameServerClient`: buckets, guard entries and commits
//! (DESIGN §4), conditional commits, reap ordering, leader loss between
//! guard and commit, and chunk-server heartbeats in the cluster map.
//! Tests run one at a time (a shared lock): the box has 2 cores.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tessera_common::chunk_api::{self, ChunkServerHeartbeat, DiskStatus};
use tessera_common::ids::{mint_uid, NodeId};
use tessera_common::ns_api::{
    Authz, CommitCondition, CommitNameReq, CommitOk, CompleteUploadReq, CreateUploadReq, ListObjectsReq, ListPartsReq,
    ListUploadsReq, NsError, PartInfo, Permission, PutPartReq, ReapOutcome, StoragePolicy, UploadMeta, UploadReq,
};
use tessera_common::ns_client::{NameServerClient, NsCallError, NsClientConfig};
use tessera_common::pki::{init_cluster, NodeIdentity};
use tessera_common::rpc::{self, CallOptions, RpcClient, RpcClientConfig};
use tessera_nameserver::config::{ClusterSettings, NameServerConfig, RaftTuning};
use tessera_nameserver::namespace::{NodeRole, Query, QueryResponse};
use tessera_nameserver::raft::RaftNode;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const WAIT: Duration = Duration::from_secs(20);
const TTL: Duration = Duration::from_secs(30);
const BUCKET: &str = "photos";

struct Cluster {
    _dir: tempfile::TempDir,
    certs: PathBuf,
    nodes: BTreeMap<u64, RaftNode>,
    addrs: BTreeMap<u64, SocketAddr>,
}

impl Cluster {
    /// Starts 3 nodes, bootstraps them and waits for a leader.
    async fn three() -> Cluster {
        Cluster::three_with(ClusterSettings::default()).await
    }

    async fn three_with(settings: ClusterSettings) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = dir.path().join("certs");
        init_cluster(&certs, &["ns1", "ns2", "ns3", "client"].map(String::from)).expect("certs");
        let mut nodes = BTreeMap::new();
        let mut addrs = BTreeMap::new();
        for id in 1..=3u64 {
            let config = NameServerConfig {
                node_id: id,
                listen: "127.0.0.1:0".parse().expect("addr"),
                advertise: None,
                data_dir: dir.path().join(format!("ns{id}")),
                certs_dir: certs.clone(),
                identity: format!("ns{id}"),
                metrics_listen: None,
                raft: RaftTuning::loopback(),
                bootstrap: Vec::new(),
                cluster: settings.clone(),
            };
            let node = RaftNode::start(config).await.expect("start node");
            addrs.insert(id, node.addr());
            nodes.insert(id, node);
        }
        let members = addrs.iter().map(|(id, a)| (*id, a.to_string())).collect();
        nodes[&1].bootstrap(members).await.expect("bootstrap");
        let cluster = Cluster {
            _dir: dir,
            certs,
            nodes,
            addrs,
        };
        cluster.leader().await;
        cluster
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

    fn rpc_client(&self) -> RpcClient {
        let identity = NodeIdentity::load(&self.certs, "client").expect("client identity");
        RpcClient::new(identity, RpcClientConfig::default()).expect("client")
    }

    /// A client whose first address is `first`, then the others.
    fn client(&self, first: u64) -> NameServerClient<RpcClient> {
        let mut addrs = vec![self.addrs[&first]];
        addrs.extend(self.addrs.iter().filter(|(id, _)| **id != first).map(|(_, a)| *a));
        let config = NsClientConfig {
            timeout: Duration::from_secs(3),
            ..NsClientConfig::default()
        };
        NameServerClient::new(self.rpc_client(), addrs, config)
    }

    async fn stop_all(mut self) {
        for (_, node) in std::mem::take(&mut self.nodes) {
            node.shutdown().await;
        }
    }
}

fn commit(key: &str, uid: u128, condition: CommitCondition) -> CommitNameReq {
    CommitNameReq {
        bucket: BUCKET.into(),
        key: key.into(),
        uid,
        size: 11,
        etag: format!("etag-{uid}"),
        content_type: Some("image/jpeg".into()),
        user_meta: vec![("camera".into(), "x100".into())],
        system_meta: Vec::new(),
        partition: 5,
        condition,
    }
}

fn refused(result: Result<impl std::fmt::Debug, NsCallError>) -> NsError {
    match result {
        Err(NsCallError::Ns(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guards_commits_conditions_reap_and_heartbeats() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::three().await;
    let leader = cluster.leader().await;
    let follower = *cluster.addrs.keys().find(|id| **id != leader).expect("follower");
    let client = cluster.client(follower);

    client
        .create_bucket(BUCKET, "alice", StoragePolicy::Ec { k: 4, m: 2 })
        .await
        .expect("create bucket via a follower");
    assert_eq!(
        refused(
            client
                .create_bucket(BUCKET, "bob", StoragePolicy::Replicated { n: 3 })
                .await
        ),
        NsError::BucketExists
    );

    // Guard at the leader (found through the follower's hint), commit by a
    // fresh client that first talks to the follower.
    client.create_guard(BUCKET, "a.jpg", 1, TTL).await.expect("guard");
    let fresh = cluster.client(follower);
    let ok = fresh
        .commit_name(&commit("a.jpg", 1, CommitCondition::None))
        .await
        .expect("commit");
    let info = client
        .get_object(BUCKET, "a.jpg")
        .await
        .expect("get")
        .expect("the name exists");
    assert_eq!((info.uid, info.size, info.partition), (1, 11, 5));
    assert_eq!(info.version_id, ok.version_id);
    assert_eq!(info.user_meta, vec![("camera".to_string(), "x100".to_string())]);

    // No guard; an expired guard leaves no name.
    assert_eq!(
        refused(client.commit_name(&commit("b.jpg", 2, CommitCondition::None)).await),
        NsError::NoGuard
    );
    client
        .create_guard(BUCKET, "b.jpg", 2, Duration::from_millis(300))
        .await
        .expect("guard");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        refused(client.commit_name(&commit("b.jpg", 2, CommitCondition::None)).await),
        NsError::GuardExpired
    );
    assert_eq!(client.get_object(BUCKET, "b.jpg").await.expect("get"), None);

    // If-None-Match: the second create of a name fails.
    client.create_guard(BUCKET, "a.jpg", 3, TTL).await.expect("guard");
    assert_eq!(
        refused(
            client
                .commit_name(&commit("a.jpg", 3, CommitCondition::IfNoneMatch))
                .await
        ),
        NsError::PreconditionFailed
    );
    assert_eq!(
        client.get_object(BUCKET, "a.jpg").await.expect("get").map(|i| i.uid),
        Some(1)
    );

    // DESIGN §4 ordering: a reaped uid can never be committed.
    assert_eq!(client.reap(1).await.expect("reap"), ReapOutcome::Referenced);
    client.create_guard(BUCKET, "c.jpg", 4, TTL).await.expect("guard");
    assert_eq!(client.reap(4).await.expect("reap"), ReapOutcome::Free);
    assert_eq!(
        refused(client.commit_name(&commit("c.jpg", 4, CommitCondition::None)).await),
        NsError::UidReaped
    );
    assert_eq!(client.get_object(BUCKET, "c.jpg").await.expect("get"), None);
    assert!(client.delete_name(BUCKET, "a.jpg").await.expect("delete").existed);
    assert_eq!(client.get_object(BUCKET, "a.jpg").await.expect("get"), None);

    // A chunk-server heartbeat sent to a follower lands in the cluster map.
    heartbeat_reaches_the_cluster_map(&cluster, follower).await;
    cluster.stop_all().await;
}

async fn heartbeat_reaches_the_cluster_map(cluster: &Cluster, via: u64) {
    let disk = |capacity, used, healthy| DiskStatus {
        path: "/data".into(),
        capacity_bytes: capacity,
        used_bytes: used,
        chunks: 1,
        healthy,
        corrupt_blocks: 0,
    };
    let hb = ChunkServerHeartbeat {
        node: NodeId(42),
        rpc_addr: "127.0.0.1:7100".into(),
        zone: "z1".into(),
        disks: vec![disk(1_000, 100, true), disk(2_000, 300, true)],
        corrupt_chunks: Vec::new(),
    };
    let transport = cluster.rpc_client();
    let opts = CallOptions::default();
    let (ack, _) = rpc::call::<chunk_api::Heartbeat, _>(&transport, cluster.addrs[&via], &hb, Bytes::new(), &opts)
        .await
        .expect("heartbeat");
    assert!(ack.interval_ms > 0);
    let answer = cluster.nodes[&via].read(Query::ListNodes).await.expect("list nodes");
    let QueryResponse::Nodes(nodes) = answer else {
        panic!("unexpected answer {answer:?}");
    };
    let node = nodes.iter().find(|n| n.node_id == 42).expect("chunk server registered");
    assert_eq!(node.role, NodeRole::ChunkServer);
    assert_eq!((node.capacity_bytes, node.used_bytes, node.healthy), (3_000, 400, true));
    assert_eq!(node.addr, "127.0.0.1:7100");
    transport.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_lost_with_its_leader_fails_the_commit_cleanly() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::three().await;
    let leader = cluster.leader().await;
    let client = cluster.client(leader);
    client
        .create_bucket(BUCKET, "alice", StoragePolicy::Replicated { n: 3 })
        .await
        .expect("create bucket");
    client.create_guard(BUCKET, "k", 9, TTL).await.expect("guard");

    let old = cluster.nodes.remove(&leader).expect("leader running");
    old.shutdown().await;
    let result = client.commit_name(&commit("k", 9, CommitCondition::None)).await;
    let committed = match &result {
        Ok(_) => true,
        Err(NsCallError::Ns(NsError::NoGuard))
        | Err(NsCallError::Ns(NsError::NotLeader { .. }))
        | Err(NsCallError::NoLeader { .. })
        | Err(NsCallError::OutcomeUnknown(_)) => false,
        Err(e) => panic!("unexpected failure {e:?}"),
    };
    eprintln!("commit after the leader stopped: {result:?}");
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);
    let named = client.get_object(BUCKET, "k").await.expect("get").map(|i| i.uid);
    if committed {
        assert_eq!(named, Some(9));
    } else if !matches!(result, Err(NsCallError::OutcomeUnknown(_))) {
        assert_eq!(named, None, "a failed commit left a name: {result:?}");
    }
    cluster.stop_all().await;
}

fn upload(key: &str, upload_id: &str) -> UploadReq {
    UploadReq {
        bucket: BUCKET.into(),
        key: key.into(),
        upload_id: upload_id.into(),
    }
}

fn part(number: u32, uid: u128, size: u64) -> PartInfo {
    PartInfo {
        part_number: number,
        uid,
        size,
        etag: format!("e{uid}"),
        partition: 1,
    }
}

/// What the S3 gateway asks besides guards and commits, through a
/// follower: secrets and grants, listings, multipart uploads and bucket
/// deletion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_facing_calls_work_over_the_wire() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::three().await;
    let leader = cluster.leader().await;
    let follower = *cluster.addrs.keys().find(|id| **id != leader).expect("follower");
    let client = cluster.client(follower);
    client
        .create_bucket(BUCKET, "alice", StoragePolicy::Ec { k: 4, m: 2 })
        .await
        .expect("bucket");
    let entry = client.get_bucket(BUCKET).await.expect("get").expect("exists");
    assert_eq!(
        (entry.owner.as_str(), entry.policy),
        ("alice", StoragePolicy::Ec { k: 4, m: 2 })
    );
    assert_eq!(client.get_bucket("nope").await.expect("get"), None);
    let listed = client.list_buckets(Some("alice")).await.expect("list");
    assert_eq!(listed.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(), vec![BUCKET]);
    assert!(client.list_buckets(Some("bob")).await.expect("list").is_empty());

    // Secrets and grants.
    let alice = client.key_create("alice").await.expect("key");
    let bob = client.key_create("bob").await.expect("key");
    let secret = client.get_secret(&alice.key_id).await.expect("secret").expect("known");
    assert_eq!(
        (secret.secret.as_str(), secret.owner.as_str()),
        (alice.secret.as_str(), "alice")
    );
    assert!(
        !format!("{secret:?}").contains(&alice.secret),
        "Debug redacts the secret"
    );
    assert_eq!(client.get_secret("TKNOSUCHKEY").await.expect("secret"), None);
    let allowed = |key: String, p: Permission| {
        let client = &client;
        async move { client.authorize(&key, BUCKET, p).await.expect("authorize") }
    };
    assert_eq!(allowed(alice.key_id.clone(), Permission::Owner).await, Authz::Allowed);
    assert_eq!(allowed(bob.key_id.clone(), Permission::Read).await, Authz::Denied);
    client
        .bucket_grant(&bob.key_id, BUCKET, Permission::Read, true)
        .await
        .expect("grant");
    assert_eq!(allowed(bob.key_id.clone(), Permission::Read).await, Authz::Allowed);
    assert_eq!(allowed(bob.key_id.clone(), Permission::Write).await, Authz::Denied);
    assert_eq!(allowed("TKNOSUCHKEY".into(), Permission::Read).await, Authz::UnknownKey);

    // Listing with a delimiter, in pages.
    for (i, key) in ["a/1", "a/2", "b", "c/x/y"].iter().enumerate() {
        let uid = 100 + i as u128;
        client.create_guard(BUCKET, key, uid, TTL).await.expect("guard");
        client
            .commit_name(&commit(key, uid, CommitCondition::None))
            .await
            .expect("commit");
    }
    let mut request = ListObjectsReq {
        bucket: BUCKET.into(),
        prefix: String::new(),
        delimiter: Some("/".into()),
        start_after: None,
        max_keys: 2,
    };
    let first = client.list_objects(&request).await.expect("list");
    assert_eq!(first.common_prefixes, vec!["a/".to_string()]);
    assert_eq!(
        first.contents.iter().map(|o| o.key.as_str()).collect::<Vec<_>>(),
        vec!["b"]
    );
    assert!(first.is_truncated);
    request.start_after = first.next_marker.clone();
    let second = client.list_objects(&request).await.expect("list");
    assert_eq!(second.common_prefixes, vec!["c/".to_string()]);
    assert!(second.contents.is_empty() && !second.is_truncated);

    // Multipart: parts, listings, completion under a guard, abort.
    let meta = UploadMeta {
        content_type: Some("video/mp4".into()),
        user_meta: vec![("m".into(), "1".into())],
        system_meta: vec![("cache-control".into(), "no-cache".into())],
    };
    let create = |key: &str| CreateUploadReq {
        bucket: BUCKET.into(),
        key: key.into(),
        meta: meta.clone(),
    };
    let id = client.create_upload(&create("big")).await.expect("create upload");
    let mib5 = 5 << 20;
    for (n, uid, size) in [(1, 201, mib5), (2, 202, 7)] {
        let req = PutPartReq {
            upload: upload("big", &id),
            part: part(n, uid, size),
        };
        client.put_part(&req).await.expect("put part");
    }
    let wrong_name = PutPartReq {
        upload: upload("other", &id),
        part: part(3, 203, 1),
    };
    assert_eq!(refused(client.put_part(&wrong_name).await), NsError::NoSuchUpload);
    let parts = client
        .list_parts(&ListPartsReq {
            upload: upload("big", &id),
            part_number_marker: 0,
            max_parts: 1,
        })
        .await
        .expect("list parts");
    assert_eq!(parts.parts, vec![part(1, 201, mib5)]);
    assert!(parts.is_truncated);
    assert_eq!(parts.upload.meta, meta);
    let uploads = client
        .list_uploads(&ListUploadsReq {
            bucket: BUCKET.into(),
            prefix: String::new(),
            delimiter: None,
            key_marker: None,
            upload_id_marker: None,
            max_uploads: 10,
        })
        .await
        .expect("list uploads");
    assert_eq!(uploads.uploads.len(), 1);
    let complete = CompleteUploadReq {
        upload: upload("big", &id),
        uid: 300,
        etag: "abc-2".into(),
        parts: vec![(1, "e201".into()), (2, "\"e202\"".into())],
        partition: 2,
        condition: CommitCondition::None,
    };
    assert_eq!(refused(client.complete_upload(&complete).await), NsError::NoGuard);
    client.create_guard(BUCKET, "big", 300, TTL).await.expect("guard");
    client.complete_upload(&complete).await.expect("complete");
    let object = client.get_object(BUCKET, "big").await.expect("get").expect("named");
    assert_eq!(object.size, mib5 + 7);
    assert_eq!(object.parts.iter().map(|p| p.uid).collect::<Vec<_>>(), vec![201, 202]);
    assert_eq!(object.content_type.as_deref(), Some("video/mp4"));
    assert_eq!(object.system_meta, meta.system_meta);
    assert_eq!(
        refused(client.abort_upload(&upload("big", &id)).await),
        NsError::NoSuchUpload
    );

    let small = client.create_upload(&create("small")).await.expect("create upload");
    for (n, uid, size) in [(1, 401, 1), (2, 402, 1)] {
        let req = PutPartReq {
            upload: upload("small", &small),
            part: part(n, uid, size),
        };
        client.put_part(&req).await.expect("put part");
    }
    client.create_guard(BUCKET, "small", 500, TTL).await.expect("guard");
    let too_small = CompleteUploadReq {
        upload: upload("small", &small),
        uid: 500,
        etag: "x-2".into(),
        parts: vec![(1, "e401".into()), (2, "e402".into())],
        partition: 0,
        condition: CommitCondition::None,
    };
    assert_eq!(
        refused(client.complete_upload(&too_small).await),
        NsError::EntityTooSmall(1)
    );

    // A bucket with names or uploads is not deleted; an empty one is.
    assert_eq!(refused(client.delete_bucket(BUCKET).await), NsError::BucketNotEmpty);
    client.abort_upload(&upload("small", &small)).await.expect("abort");
    for key in ["a/1", "a/2", "b", "c/x/y", "big"] {
        client.delete_name(BUCKET, key).await.expect("delete");
    }
    client.delete_bucket(BUCKET).await.expect("delete bucket");
    assert_eq!(client.get_bucket(BUCKET).await.expect("get"), None);
    assert_eq!(refused(client.delete_bucket(BUCKET).await), NsError::NoSuchBucket);
    cluster.stop_all().await;
}

/// Reaped uids are forgotten a retention after their reap, and what keeps
/// that safe holds on a live cluster: a uid born before the watermark is
/// refused whether it was reaped (its row may be gone) or not, and a uid
/// minted at a fresh log position commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reaped_uids_are_pruned_after_the_retention_and_older_births_refused() {
    let _serial = SERIAL.lock().await;
    let settings = ClusterSettings {
        reap_retention_ms: 1_500,
        reap_prune_interval_ms: 100,
        ..ClusterSettings::default()
    };
    let cluster = Cluster::three_with(settings).await;
    let client = cluster.client(1);
    client
        .create_bucket(BUCKET, "alice", StoragePolicy::Ec { k: 4, m: 2 })
        .await
        .expect("create bucket");
    let birth = client.log_position().await.expect("log position");
    let (reaped, unreaped) = (mint_uid(birth), mint_uid(birth));
    assert_eq!(client.reap(reaped).await.expect("reap"), ReapOutcome::Free);
    let leader = cluster.leader().await;
    let reap_index = applied(&cluster.nodes[&leader]);

    // Entries after the reap, so the index applied a retention ago passes it.
    let deadline = Instant::now() + WAIT;
    let mut filler = 0u128;
    loop {
        filler += 1;
        commit_fresh(&client, "filler").await.expect("commit");
        if watermark(&cluster, leader).await > reap_index {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reap watermark never passed index {reap_index}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(filler > 1, "pruning waited for the retention");

    for uid in [reaped, unreaped] {
        client.create_guard(BUCKET, "old", uid, TTL).await.expect("guard");
        assert_eq!(
            refused(client.commit_name(&commit("old", uid, CommitCondition::None)).await),
            NsError::UidReaped,
            "a uid born below the watermark"
        );
    }
    assert_eq!(client.get_object(BUCKET, "old").await.expect("get"), None);
    commit_fresh(&client, "new").await.expect("a freshly born uid commits");
    cluster.stop_all().await;
}

/// Guard and commit of `key` to a uid born at the current log position.
async fn commit_fresh(client: &NameServerClient<RpcClient>, key: &str) -> Result<CommitOk, NsCallError> {
    let uid = mint_uid(client.log_position().await.expect("log position"));
    client.create_guard(BUCKET, key, uid, TTL).await.expect("guard");
    client.commit_name(&commit(key, uid, CommitCondition::None)).await
}

fn applied(node: &RaftNode) -> u64 {
    node.metrics().borrow().last_applied.map_or(0, |log_id| log_id.index)
}

async fn watermark(cluster: &Cluster, via: u64) -> u64 {
    match cluster.nodes[&via].read(Query::ReapWatermark).await.expect("read") {
        QueryResponse::Watermark(w) => w,
        other => panic!("unexpected {other:?}"),
    }
}
