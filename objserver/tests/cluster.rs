//! Object servers end to end on loopback, every part real: a name server
//! (Raft on RocksDB), 6 chunk servers (files), object servers with their
//! partitions' Raft groups, all over QUIC/TLS, driven through `OsClient`:
//! writes and reads (EC 4+2), overwrite and trim, group commit of
//! concurrent small writes, degraded reads with 2 chunk servers down, GC
//! entries settled through the name servers' reap, and a partition leader
//! killed mid-stream. Tests run one at a time: the box has 2 cores.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tessera_chunkserver::config::ChunkServerConfig;
use tessera_chunkserver::node::ChunkServer;
use tessera_common::ns_api::{CommitCondition, CommitNameReq, StoragePolicy};
use tessera_common::ns_client::{NameServerClient, NsClientConfig};
use tessera_common::os_api::OsError;
use tessera_common::os_client::{OsCallError, OsClient, OsClientConfig};
use tessera_common::pki::{init_cluster, NodeIdentity};
use tessera_common::rpc::{RpcClient, RpcClientConfig};
use tessera_common::testing::{flip_a_bit_in_file, pattern, stable_loopback_addr};
use tessera_nameserver::config::{BootstrapMember, ClusterSettings, NameServerConfig, RaftTuning};
use tessera_nameserver::raft::RaftNode;
use tessera_objserver::config::{DataSettings, ObjServerConfig};
use tessera_objserver::node::ObjServer;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const CHUNK_SERVERS: usize = 6;
const EC: StoragePolicy = StoragePolicy::Ec { k: 4, m: 2 };
const WAIT: Duration = Duration::from_secs(30);

struct Cluster {
    dir: tempfile::TempDir,
    certs: PathBuf,
    ns: RaftNode,
    chunk_servers: Vec<Option<ChunkServer>>,
    obj_servers: Vec<Option<ObjServer>>,
    os_configs: Vec<ObjServerConfig>,
    client: OsClient<RpcClient>,
    ns_client: NameServerClient<RpcClient>,
}

fn chunk_config(index: usize, certs: &Path, disk: &Path, ns: SocketAddr) -> ChunkServerConfig {
    let text = format!(
        r#"
node_id = {node}
listen = "127.0.0.1:0"
certs_dir = "{certs}"
identity = "cs{index}"
name_servers = ["{ns}"]
heartbeat_interval_ms = 200
scrub_pass_interval_s = 3600

[store]
[[store.disks]]
path = "{disk}"
"#,
        node = 100 + index,
        certs = certs.display(),
        disk = disk.display(),
    );
    ChunkServerConfig::parse(&text).expect("chunk server config")
}

impl Cluster {
    /// 1 name server, 6 chunk servers, `os_count` object servers hosting
    /// `partitions` partitions with `replicas` replicas each.
    async fn start(os_count: usize, partitions: u32, replicas: usize, data: DataSettings) -> Cluster {
        Cluster::start_with(CHUNK_SERVERS, os_count, partitions, replicas, data).await
    }

    async fn start_with(
        cs_count: usize,
        os_count: usize,
        partitions: u32,
        replicas: usize,
        data: DataSettings,
    ) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = dir.path().join("certs");
        let mut names: Vec<String> = vec!["ns1".into(), "client".into()];
        names.extend((0..cs_count).map(|i| format!("cs{i}")));
        names.extend((0..os_count).map(|i| format!("os{i}")));
        init_cluster(&certs, &names).expect("certs");

        let ns_addr = stable_loopback_addr();
        let ns = RaftNode::start(NameServerConfig {
            node_id: 1,
            listen: ns_addr,
            advertise: None,
            data_dir: dir.path().join("ns1"),
            certs_dir: certs.clone(),
            identity: "ns1".into(),
            metrics_listen: None,
            raft: RaftTuning::loopback(),
            bootstrap: vec![BootstrapMember { id: 1, addr: ns_addr }],
            cluster: ClusterSettings {
                partitions,
                partition_replicas: replicas,
                ..ClusterSettings::loopback()
            },
        })
        .await
        .expect("start name server");

        let mut chunk_servers = Vec::new();
        for index in 0..cs_count {
            let disk = dir.path().join(format!("disk{index}"));
            std::fs::create_dir_all(&disk).expect("mkdir");
            let config = chunk_config(index, &certs, &disk, ns_addr);
            chunk_servers.push(Some(ChunkServer::start(config).await.expect("start chunk server")));
        }

        let os_configs: Vec<ObjServerConfig> = (0..os_count)
            .map(|i| ObjServerConfig {
                node_id: 10 + i as u64,
                listen: stable_loopback_addr(),
                advertise: None,
                data_dir: dir.path().join(format!("os{i}")),
                certs_dir: certs.clone(),
                identity: format!("os{i}"),
                zone: "default".into(),
                nameservers: vec![ns_addr],
                metrics_listen: None,
                raft: RaftTuning::loopback(),
                data: data.clone(),
            })
            .collect();
        let starts = os_configs.iter().cloned().map(ObjServer::start);
        let obj_servers = futures::future::try_join_all(starts)
            .await
            .expect("start object servers")
            .into_iter()
            .map(Some)
            .collect();

        let identity = NodeIdentity::load(&certs, "client").expect("identity");
        let transport = RpcClient::new(identity, RpcClientConfig::default()).expect("rpc client");
        let client = OsClient::new(
            transport.clone(),
            os_configs.iter().map(|c| c.listen).collect(),
            partitions,
            OsClientConfig::default(),
        );
        let ns_client = NameServerClient::new(transport, vec![ns_addr], NsClientConfig::default());
        let cluster = Cluster {
            dir,
            certs,
            ns,
            chunk_servers,
            obj_servers,
            os_configs,
            client,
            ns_client,
        };
        cluster.wait_for_chunk_servers(cs_count).await;
        cluster.wait_for_leaders(partitions).await;
        cluster
    }

    /// Until the name server placed the partitions and each has a leader.
    async fn wait_for_leaders(&self, partitions: u32) {
        let deadline = Instant::now() + WAIT;
        loop {
            let led: std::collections::BTreeSet<u32> = self
                .obj_servers
                .iter()
                .flatten()
                .flat_map(|os| os.partitions())
                .filter(|p| p.raft().is_leader())
                .map(|p| p.id())
                .collect();
            if led.len() == partitions as usize {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "partitions with a leader: {led:?} of {partitions}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A fresh RPC client with the `client` identity.
    fn transport(&self) -> RpcClient {
        let identity = NodeIdentity::load(&self.certs, "client").expect("identity");
        RpcClient::new(identity, RpcClientConfig::default()).expect("rpc client")
    }

    /// Until every object server sees `count` live chunk servers.
    async fn wait_for_chunk_servers(&self, count: usize) {
        let deadline = Instant::now() + WAIT;
        loop {
            let seen: Vec<usize> = self
                .obj_servers
                .iter()
                .flatten()
                .map(|os| os.cluster().chunk_servers().len())
                .collect();
            if seen.iter().all(|n| *n == count) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "object servers see {seen:?} chunk servers, want {count}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop_chunk_server(&mut self, index: usize) {
        let server = self.chunk_servers[index].take().expect("running");
        server.shutdown().await;
    }

    /// Starts chunk server `index` again on its disk, on a new port.
    async fn restart_chunk_server(&mut self, index: usize) {
        let disk = self.dir.path().join(format!("disk{index}"));
        let config = chunk_config(index, &self.certs, &disk, self.ns.addr());
        let server = ChunkServer::start(config).await.expect("restart chunk server");
        self.chunk_servers[index] = Some(server);
    }

    async fn shutdown(mut self) {
        for os in self.obj_servers.iter_mut() {
            if let Some(os) = os.take() {
                os.shutdown().await;
            }
        }
        for cs in self.chunk_servers.iter_mut() {
            if let Some(cs) = cs.take() {
                cs.shutdown().await;
            }
        }
        self.ns.shutdown().await;
        let _ = (&self.dir, &self.certs, &self.os_configs);
    }
}

/// Test uid `n`, born at index 0 so the name servers accept it at any log
/// position (a birth above the committing index is refused as from the
/// future); the low bits stay distinct per `n`.
fn uid(n: u64) -> u128 {
    u128::from(n.wrapping_mul(0x2545_F491_4F6C_DD1D))
}

/// Stripes recorded in the first `partitions` partitions.
async fn stripes(client: &OsClient<RpcClient>, partitions: u32) -> u64 {
    let mut total = 0;
    for partition in 0..partitions {
        let status = client.partition_status(partition).await.expect("status");
        total += status.groups.iter().map(|g| g.stripes).sum::<u64>();
    }
    total
}

fn fast_data() -> DataSettings {
    DataSettings {
        gc_scan_interval_ms: 100,
        cluster_refresh_interval_ms: 200,
        orphan_scan_interval_ms: 300,
        orphan_grace_ms: 1_000,
        ..DataSettings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_read_back_exactly_including_overwrites_trims_and_degraded_reads() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(1, 2, 1, fast_data()).await;
    let client = cluster.client.clone();
    let id = uid(1);
    client.open_write(id, 8 << 20, EC, WAIT).await.expect("open");
    let original = pattern(1, (9 << 20) + 123);
    let size = client.write(id, 0, original.clone()).await.expect("write");
    assert_eq!(size, original.len() as u64);
    let back = client.read(id, 0, original.len() as u64).await.expect("read");
    assert!(back == original, "whole object reads back");
    for (offset, len) in [(0u64, 1u64), (4095, 2), (1 << 20, 3 << 20), ((9 << 20) + 100, 23)] {
        let got = client.read(id, offset, len).await.expect("range");
        assert!(
            got == original.slice(offset as usize..(offset + len) as usize),
            "range {offset}+{len}"
        );
    }

    // Overwrite a range in the middle, trim another: a log-structured map.
    let patch = pattern(2, 10_000);
    client.write(id, 5_000, patch.clone()).await.expect("overwrite");
    client.trim(id, 100_000, 4_096).await.expect("trim");
    let mut expected = original.to_vec();
    expected[5_000..15_000].copy_from_slice(&patch);
    expected[100_000..104_096].fill(0);
    let got = client.read(id, 0, 200_000).await.expect("read after patch");
    assert!(got[..] == expected[..200_000], "overwrite and trim visible");
    let stat = client.stat(id).await.expect("stat");
    assert_eq!(stat.size_bytes, original.len() as u64);
    assert_eq!(stat.mapped_bytes, original.len() as u64 - 4_096);
    assert!(stat.unconfirmed);
    client.confirm(id).await.expect("confirm");
    assert!(!client.stat(id).await.expect("stat").unconfirmed);

    // Objects of every size class, 0 B to 100 MiB, read back exactly.
    for (n, len) in [0usize, 1, 4096, 1 << 20, 100 << 20].into_iter().enumerate() {
        let sized = uid(50 + n as u64);
        client
            .open_write(sized, len as u64, EC, WAIT)
            .await
            .expect("open sized");
        let body = pattern(50 + n as u64, len);
        assert_eq!(
            client.write(sized, 0, body.clone()).await.expect("write sized"),
            len as u64
        );
        let back = client.read(sized, 0, len as u64).await.expect("read sized");
        assert!(back == body, "object of {len} bytes reads back");
        client.delete(sized).await.expect("delete sized");
    }

    // 32 concurrent small writers share stripes (group commit).
    let stripes_before = stripes(&client, 2).await;
    let writers = (0..32u64).map(|n| {
        let client = client.clone();
        async move {
            let small = uid(100 + n);
            client.open_write(small, 4096, EC, WAIT).await.expect("open small");
            let body = pattern(100 + n, 3000 + n as usize);
            client.write(small, 0, body.clone()).await.expect("write small");
            (small, body)
        }
    });
    let smalls = futures::future::join_all(writers).await;
    for (small, body) in &smalls {
        assert!(client.read(*small, 0, body.len() as u64).await.expect("read small") == *body);
    }
    let small_stripes = stripes(&client, 2).await - stripes_before;
    assert!(
        small_stripes < 32,
        "32 concurrent small writes took {small_stripes} stripes"
    );
    let mut groups_written = 0;
    for partition in 0..2 {
        let status = client.partition_status(partition).await.expect("status");
        groups_written += status.groups.iter().map(|g| g.written_bytes).sum::<u64>();
        for g in &status.groups {
            assert!(g.live_bytes <= g.written_bytes);
        }
    }
    assert!(groups_written >= original.len() as u64 + 10_000);

    // Two chunk servers down: every byte still reads (decoded from parity).
    cluster.stop_chunk_server(0).await;
    cluster.stop_chunk_server(3).await;
    let degraded = client.read(id, 0, 200_000).await.expect("degraded read");
    assert!(
        degraded[..] == expected[..200_000],
        "degraded read returns the same bytes"
    );
    for (small, body) in smalls.iter().take(4) {
        assert!(client.read(*small, 0, body.len() as u64).await.expect("degraded small") == *body);
    }
    cluster.shutdown().await;
}

/// Placements record the address a chunk server had; a server that comes
/// back elsewhere (a new port here, a new container IP in a cluster) is
/// found through the cluster map, with no repair.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunk_servers_that_come_back_on_new_addresses_are_found() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(1, 1, 1, fast_data()).await;
    let client = cluster.client.clone();
    let id = uid(7);
    let body = pattern(7, (2 << 20) + 17);
    client.open_write(id, body.len() as u64, EC, WAIT).await.expect("open");
    client.write(id, 0, body.clone()).await.expect("write");
    let old: Vec<SocketAddr> = (0..3)
        .map(|i| cluster.chunk_servers[i].as_ref().expect("running").local_addr())
        .collect();
    for index in 0..3 {
        cluster.stop_chunk_server(index).await;
        cluster.restart_chunk_server(index).await;
    }
    let new: Vec<SocketAddr> = (0..3)
        .map(|i| cluster.chunk_servers[i].as_ref().expect("running").local_addr())
        .collect();
    assert!(old.iter().zip(&new).all(|(a, b)| a != b), "new ports: {old:?} {new:?}");
    // Three of six fragments moved: without the cluster map's addresses
    // EC 4+2 could not decode. Reads succeed once the object server's view
    // is refreshed.
    let deadline = Instant::now() + WAIT;
    loop {
        match client.read(id, 0, body.len() as u64).await {
            Ok(back) if back == body => break,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "never readable again: {:?}",
                    other.map(|b| b.len())
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let status = client
        .partition_status(client.partition_of(id).expect("partition"))
        .await
        .expect("status");
    assert!(
        status.groups.iter().all(|g| g.lost_fragments == 0),
        "no fragment counted lost: {:?}",
        status.groups
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_gc_entries_are_freed_or_kept_as_the_name_servers_answer() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(1, 1, 1, fast_data()).await;
    let client = cluster.client.clone();
    let ns = &cluster.ns_client;
    ns.create_bucket("bkt", "owner", EC).await.expect("bucket");
    let ttl = Duration::from_millis(300);

    // Abandoned: data written, no name ever committed.
    let abandoned = uid(7);
    client.open_write(abandoned, 1000, EC, ttl).await.expect("open");
    client.write(abandoned, 0, pattern(7, 1000)).await.expect("write");

    // Named, but the confirm was lost.
    let named = uid(8);
    ns.create_guard("bkt", "k", named, Duration::from_secs(30))
        .await
        .expect("guard");
    client.open_write(named, 1000, EC, ttl).await.expect("open");
    client.write(named, 0, pattern(8, 1000)).await.expect("write");
    let commit = CommitNameReq {
        bucket: "bkt".into(),
        key: "k".into(),
        uid: named,
        size: 1000,
        etag: "\"e\"".into(),
        content_type: None,
        user_meta: Vec::new(),
        system_meta: Vec::new(),
        partition: client.partition_of(named).expect("partition"),
        condition: CommitCondition::None,
    };
    ns.commit_name(&commit).await.expect("commit");

    let deadline = Instant::now() + WAIT;
    loop {
        let gone = matches!(client.stat(abandoned).await, Err(OsCallError::Os(OsError::NoSuchUid)));
        let confirmed = client.stat(named).await.is_ok_and(|s| !s.unconfirmed);
        if gone && confirmed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "GC did not settle: gone={gone} confirmed={confirmed}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(client.read(named, 0, 1000).await.expect("named data kept") == pattern(8, 1000));
    let status = client.partition_status(0).await.expect("status");
    assert_eq!(status.gc_entries, 0);
    assert_eq!(status.objects, 1);
    assert_eq!(status.reserved_bytes, 0, "reservations released");
    let live: u64 = status.groups.iter().map(|g| g.live_bytes).sum();
    assert_eq!(live, 1000, "only the named object's bytes are live");
    // The reaped uid can never be named now.
    let late = CommitNameReq {
        key: "late".into(),
        uid: abandoned,
        ..commit
    };
    assert!(ns.commit_name(&late).await.is_err(), "a reaped uid cannot be committed");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_survives_its_leader_and_the_new_leader_seals_the_old_group() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(3, 1, 3, fast_data()).await;
    let client = cluster.client.clone();
    let id = uid(9);
    client.open_write(id, 1 << 20, EC, WAIT).await.expect("open");
    let first = pattern(9, 300_000);
    client.write(id, 0, first.clone()).await.expect("first write");
    let before = client.partition_status(0).await.expect("status");
    let leader = before.leader.expect("a leader");

    // A writer streams 64 KiB pieces of another uid while the leader dies:
    // each write either completes (and must read back) or fails cleanly.
    let streamed = uid(11);
    client
        .open_write(streamed, 1 << 20, EC, WAIT)
        .await
        .expect("open streamed");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            let mut piece = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let result = client
                    .write(streamed, piece * 65_536, pattern(1_000 + piece, 65_536))
                    .await;
                outcomes.push((piece, result.is_ok()));
                piece += 1;
            }
            outcomes
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let index = cluster
        .obj_servers
        .iter()
        .position(|os| os.as_ref().is_some_and(|os| os.node_id() == leader))
        .expect("leader is one of ours");
    cluster.obj_servers[index].take().expect("running").shutdown().await;

    let second = pattern(10, 200_000);
    client
        .write(id, 300_000, second.clone())
        .await
        .expect("write after failover");
    let after = client.partition_status(0).await.expect("status");
    assert_ne!(after.leader, Some(leader));
    assert!(
        after.epoch > before.epoch,
        "a new term: {} -> {}",
        before.epoch,
        after.epoch
    );
    let old_group = &after.groups[0];
    assert_eq!(old_group.state, "sealed", "the deposed leader's group is sealed");
    assert!(
        after.groups.iter().any(|g| g.state == "open"),
        "the new leader writes to a new group"
    );
    let all = client.read(id, 0, 500_000).await.expect("read all");
    assert!(all[..300_000] == first[..] && all[300_000..] == second[..]);

    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let outcomes = writer.await.expect("writer task");
    let acked: Vec<u64> = outcomes.iter().filter(|(_, ok)| *ok).map(|(p, _)| *p).collect();
    assert!(
        acked.len() >= 2,
        "the stream wrote before and after the failover: {outcomes:?}"
    );
    for piece in acked {
        let got = client
            .read(streamed, piece * 65_536, 65_536)
            .await
            .expect("read streamed");
        assert!(
            got == pattern(1_000 + piece, 65_536),
            "acknowledged piece {piece} reads back"
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sparse_sealed_groups_are_compacted_and_released_while_io_goes_on() {
    let _serial = SERIAL.lock().await;
    let data = DataSettings {
        // Small chunks so a few writes fill and seal groups.
        stripe_data_bytes_max: 128 << 10,
        chunk_bytes_max: 128 << 10,
        compaction_interval_ms: 200,
        release_grace_ms: 300,
        ..fast_data()
    };
    let cluster = Cluster::start(1, 1, 1, data).await;
    let client = cluster.client.clone();
    let keep = uid(20);
    let drop = uid(21);
    client.open_write(keep, 1 << 20, EC, WAIT).await.expect("open");
    client.open_write(drop, 1 << 20, EC, WAIT).await.expect("open");
    // Confirmed, so GC never reaps them while the test runs.
    client.confirm(keep).await.expect("confirm");
    client.confirm(drop).await.expect("confirm");
    let keep_body = pattern(20, 300_000);
    // Interleave the two uids so every early group holds both, with a third
    // of each group's bytes belonging to `keep`.
    for piece in 0..6u64 {
        let at = (piece * 50_000) as usize;
        client
            .write(keep, at as u64, keep_body.slice(at..at + 50_000))
            .await
            .expect("write keep");
        client
            .write(drop, piece * 100_000, pattern(21 + piece, 100_000))
            .await
            .expect("write drop");
    }
    client.delete(drop).await.expect("delete");
    let sealed_before: Vec<u64> = client
        .partition_status(0)
        .await
        .expect("status")
        .groups
        .iter()
        .filter(|g| g.state == "sealed")
        .map(|g| g.id)
        .collect();
    assert!(!sealed_before.is_empty(), "small chunks sealed some groups");

    // Reads and writes go on while compaction runs.
    let deadline = Instant::now() + WAIT;
    let mut round = 0u64;
    loop {
        let got = client
            .read(keep, 0, keep_body.len() as u64)
            .await
            .expect("read during compaction");
        assert!(got == keep_body, "reads stay exact during compaction (round {round})");
        let extra = uid(1000 + round);
        client.open_write(extra, 10, EC, WAIT).await.expect("open extra");
        client
            .write(extra, 0, pattern(round, 10))
            .await
            .expect("write during compaction");
        round += 1;
        let status = client.partition_status(0).await.expect("status");
        let done = sealed_before.iter().all(|id| {
            status
                .groups
                .iter()
                .any(|g| g.id == *id && g.state == "released" && g.live_bytes == 0)
        });
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "groups {sealed_before:?} not released: {:?}",
            status.groups
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = client.read(keep, 0, keep_body.len() as u64).await.expect("read after");
    assert!(got == keep_body);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fragments_on_two_dead_chunk_servers_are_rebuilt_elsewhere() {
    let _serial = SERIAL.lock().await;
    let data = DataSettings {
        repair_interval_ms: 200,
        ..fast_data()
    };
    let mut cluster = Cluster::start_with(8, 1, 1, 1, data).await;
    let client = cluster.client.clone();
    let id = uid(30);
    client.open_write(id, 1 << 20, EC, WAIT).await.expect("open");
    let body = pattern(30, (3 << 20) + 77);
    client.write(id, 0, body.clone()).await.expect("write");
    let placements = |cluster: &Cluster| {
        let partition = cluster.obj_servers[0].as_ref().expect("running").partitions()[0].clone();
        async move { partition.placements().await }
    };
    let before = placements(&cluster).await;
    let used: Vec<u64> = before[0].fragments.iter().map(|f| f.node.0).collect();
    let victims = [used[1], used[4]];
    for victim in victims {
        cluster.stop_chunk_server((victim - 100) as usize).await;
    }
    // Two servers down at once: every byte still reads (decoded).
    let got = client.read(id, 0, body.len() as u64).await.expect("read with two down");
    assert!(got == body, "reads survive m lost servers");

    // The name server declares them dead; the leader seals the open group
    // and rebuilds both lost fragments on the two spare servers.
    let deadline = Instant::now() + WAIT;
    let repaired = loop {
        let now = placements(&cluster).await;
        let group = now.iter().find(|g| g.id == before[0].id).expect("group").clone();
        if group.fragments.iter().all(|f| !victims.contains(&f.node.0)) {
            break group;
        }
        assert!(
            Instant::now() < deadline,
            "fragments on {victims:?} not repaired: {group:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let now_used: std::collections::BTreeSet<u64> = repaired.fragments.iter().map(|f| f.node.0).collect();
    assert_eq!(now_used.len(), 6, "six fragments on six distinct servers: {now_used:?}");
    let status = client.partition_status(0).await.expect("status");
    assert_eq!(status.repair_pending_bytes, 0, "nothing left to repair");

    // Lose two more original servers: parity plus the rebuilt fragments
    // still cover every byte.
    for gone in [used[0], used[2]] {
        cluster.stop_chunk_server((gone - 100) as usize).await;
    }
    let got = client
        .read(id, 0, body.len() as u64)
        .await
        .expect("read after repair and two more losses");
    assert!(got == body, "every byte survives");
    cluster.shutdown().await;
}

/// Opens and writes uid `n` with a pattern of `len` bytes.
async fn write_object(client: &OsClient<RpcClient>, n: u64, len: usize) -> (u128, Bytes) {
    let body = pattern(n, len);
    client.open_write(uid(n), len as u64, EC, WAIT).await.expect("open");
    client.write(uid(n), 0, body.clone()).await.expect("write");
    (uid(n), body)
}

/// Asserts every `(uid, body)` of `written` reads back exactly.
async fn assert_reads_back(client: &OsClient<RpcClient>, written: &[(u128, Bytes)], when: &str) {
    for (id, body) in written {
        let got = client
            .read(*id, 0, body.len() as u64)
            .await
            .unwrap_or_else(|e| panic!("read {when}: {e}"));
        assert!(got == *body, "uid {id:x} reads back {when}");
    }
}

/// Until every chunk group in use has all its columns on live servers,
/// none vacant or missing stripes; returns those groups.
async fn wait_until_fully_redundant(cluster: &Cluster) -> Vec<tessera_objserver::placement::GroupPlacement> {
    let client = &cluster.client;
    let deadline = Instant::now() + WAIT;
    loop {
        let status = client.partition_status(0).await.expect("status");
        let in_use: Vec<u64> = status
            .groups
            .iter()
            .filter(|g| g.state == "open" || g.state == "sealed")
            .map(|g| g.id)
            .collect();
        let lost: Vec<(u64, u32)> = status
            .groups
            .iter()
            .filter(|g| g.lost_fragments > 0)
            .map(|g| (g.id, g.lost_fragments))
            .collect();
        if lost.is_empty() && status.repair_pending_bytes == 0 {
            let partition = cluster.obj_servers[0].as_ref().expect("running").partitions()[0].clone();
            let placements = partition.placements().await;
            return placements.into_iter().filter(|p| in_use.contains(&p.id.0)).collect();
        }
        assert!(Instant::now() < deadline, "groups still missing columns: {lost:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_go_on_with_a_chunk_server_down_and_its_columns_are_rebuilt_when_it_returns() {
    let _serial = SERIAL.lock().await;
    // Small groups (eight 256 KiB stripes each), so writes roll over into
    // groups opened while the server is down.
    let data = DataSettings {
        repair_interval_ms: 200,
        stripe_data_bytes_max: 256 << 10,
        chunk_bytes_max: 512 << 10,
        ..fast_data()
    };
    let mut cluster = Cluster::start(1, 1, 1, data).await;
    let client = cluster.client.clone();
    let mut written: Vec<(u128, Bytes)> = Vec::new();
    written.push(write_object(&client, 40, (1 << 20) + 77).await);

    // One of six servers stops. Writes go on with 5 of 6 fragments durable:
    // first in the open group (its column marked lost), then in groups
    // opened around the failed server, and once the name server declares
    // it dead, in groups opened with a vacant column.
    cluster.stop_chunk_server(0).await;
    written.push(write_object(&client, 41, (2 << 20) + 5).await);
    cluster.wait_for_chunk_servers(5).await;
    written.push(write_object(&client, 42, 3 << 20).await);
    written.push(write_object(&client, 43, 1).await);

    let status = client.partition_status(0).await.expect("status");
    let degraded = status.groups.iter().filter(|g| g.lost_fragments > 0).count();
    assert!(
        degraded >= 3,
        "the groups written since the stop miss a column: {:?}",
        status.groups
    );
    assert!(status.repair_pending_bytes > 0, "repair is pending");
    let partition = cluster.obj_servers[0].as_ref().expect("running").partitions()[0].clone();
    let vacant = partition
        .placements()
        .await
        .iter()
        .filter(|p| p.fragments.iter().any(|f| f.is_vacant()))
        .count();
    assert!(
        vacant >= 1,
        "groups opened with only 5 live servers have a vacant column"
    );
    assert_reads_back(&client, &written, "while a column is missing").await;

    // The server returns: degraded groups are sealed and their missing
    // columns rebuilt on it, so every group has six live columns again.
    cluster.restart_chunk_server(0).await;
    cluster.wait_for_chunk_servers(6).await;
    let groups = wait_until_fully_redundant(&cluster).await;
    for group in &groups {
        let nodes: std::collections::BTreeSet<u64> = group.fragments.iter().map(|f| f.node.0).collect();
        assert_eq!(nodes.len(), 6, "six distinct servers in {group:?}");
        assert!(group.fragments.iter().all(|f| !f.is_vacant()));
    }
    written.push(write_object(&client, 44, 100_000).await);

    // Full redundancy is back: two other servers may go and every byte,
    // old and new, still reads.
    cluster.stop_chunk_server(1).await;
    cluster.stop_chunk_server(2).await;
    assert_reads_back(&client, &written, "with two more servers down after repair").await;
    cluster.shutdown().await;
}

/// Guard, GC entry, data, name commit, confirm: DESIGN §4 through the
/// real services.
async fn put(cluster: &Cluster, key: &str, id: u128, body: Bytes) {
    let ns = &cluster.ns_client;
    let client = &cluster.client;
    ns.create_guard("bkt", key, id, Duration::from_secs(30))
        .await
        .expect("guard");
    client.open_write(id, body.len() as u64, EC, WAIT).await.expect("open");
    client.write(id, 0, body.clone()).await.expect("write");
    let commit = CommitNameReq {
        bucket: "bkt".into(),
        key: key.into(),
        uid: id,
        size: body.len() as u64,
        etag: format!("\"{id:x}\""),
        content_type: None,
        user_meta: Vec::new(),
        system_meta: Vec::new(),
        partition: client.partition_of(id).expect("partition"),
        condition: CommitCondition::None,
    };
    ns.commit_name(&commit).await.expect("commit");
    client.confirm(id).await.expect("confirm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overwritten_and_deleted_names_free_their_data_through_the_pending_delete_queue() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(1, 2, 1, fast_data()).await;
    cluster
        .ns_client
        .create_bucket("bkt", "owner", EC)
        .await
        .expect("bucket");
    let (first, second, third) = (uid(40), uid(41), uid(42));
    put(&cluster, "k", first, pattern(40, 5000)).await;
    put(&cluster, "k", second, pattern(41, 6000)).await; // overwrites first
    put(&cluster, "other", third, pattern(42, 7000)).await;
    cluster
        .ns_client
        .delete_name("bkt", "other")
        .await
        .expect("delete name");

    let client = &cluster.client;
    let deadline = Instant::now() + WAIT;
    loop {
        let gone = |r: Result<_, OsCallError>| matches!(r, Err(OsCallError::Os(OsError::NoSuchUid)));
        let first_gone = gone(client.stat(first).await);
        let third_gone = gone(client.stat(third).await);
        if first_gone && third_gone {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pending deletes not handed off: first gone {first_gone}, third gone {third_gone}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let current = cluster
        .ns_client
        .get_object("bkt", "k")
        .await
        .expect("get")
        .expect("named");
    assert_eq!(current.uid, second);
    assert!(client.read(second, 0, 6000).await.expect("current data") == pattern(41, 6000));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupted_fragment_reads_correctly_and_is_rebuilt() {
    let _serial = SERIAL.lock().await;
    let data = DataSettings {
        repair_interval_ms: 200,
        ..fast_data()
    };
    let mut cluster = Cluster::start(1, 1, 1, data).await;
    let client = cluster.client.clone();
    let id = uid(60);
    client.open_write(id, 1 << 20, EC, WAIT).await.expect("open");
    let body = pattern(60, 1 << 20);
    client.write(id, 0, body.clone()).await.expect("write");
    let partition = cluster.obj_servers[0].as_ref().expect("running").partitions()[0].clone();
    let before = partition.placements().await[0].clone();
    let damaged = before.fragments[0].clone();
    let server = cluster.chunk_servers[(damaged.node.0 - 100) as usize]
        .as_ref()
        .expect("running");
    let path = server.store().chunk_path(damaged.chunk).expect("chunk file");
    flip_a_bit_in_file(&path, &body[..64]);

    // The read decodes around the bad block; its chunk server remembers the
    // chunk as corrupt and reports it; the leader rebuilds the fragment.
    let got = client
        .read(id, 0, body.len() as u64)
        .await
        .expect("read with a bad block");
    assert!(got == body, "the bad block is never returned");
    let deadline = Instant::now() + WAIT;
    let repaired = loop {
        let now = partition.placements().await[0].clone();
        if now.fragments[0].chunk != damaged.chunk {
            break now;
        }
        assert!(Instant::now() < deadline, "corrupt fragment not rebuilt: {now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        repaired.fragments[0].node, damaged.node,
        "six servers: the copy goes back to the same one"
    );
    // Lose two other servers: the rebuilt fragment must be right.
    for index in [1, 2] {
        let node = repaired.fragments[index].node.0;
        cluster.stop_chunk_server((node - 100) as usize).await;
    }
    let got = client.read(id, 0, body.len() as u64).await.expect("read after repair");
    assert!(got == body, "the rebuilt fragment holds the right bytes");
    cluster.shutdown().await;
}

/// Bytes held in chunk files on the running chunk servers.
async fn stored_bytes(cluster: &Cluster) -> u64 {
    let transport = cluster.transport();
    let mut total = 0;
    for server in cluster.chunk_servers.iter().flatten() {
        let client = tessera_common::chunk_client::ChunkServerClient::new(
            transport.clone(),
            server.local_addr(),
            tessera_common::rpc::CallOptions::default(),
        );
        total += client
            .list()
            .await
            .expect("list chunks")
            .iter()
            .map(|c| c.length)
            .sum::<u64>();
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_most_data_shrinks_the_stored_bytes_while_io_goes_on() {
    let _serial = SERIAL.lock().await;
    let data = DataSettings {
        chunk_bytes_max: 8 << 20,
        compaction_interval_ms: 200,
        release_grace_ms: 300,
        ..fast_data()
    };
    let cluster = Cluster::start(1, 1, 1, data).await;
    let client = cluster.client.clone();
    const OBJECTS: u64 = 40;
    const PIECES: u64 = 5;
    const MIB: usize = 1 << 20;
    for n in 0..OBJECTS {
        client.open_write(uid(200 + n), 5 << 20, EC, WAIT).await.expect("open");
        client.confirm(uid(200 + n)).await.expect("confirm");
    }
    // 200 MiB, interleaved so every chunk group holds every object.
    for piece in 0..PIECES {
        for n in 0..OBJECTS {
            let body = pattern(200 + n * PIECES + piece, MIB);
            client
                .write(uid(200 + n), piece * MIB as u64, body)
                .await
                .expect("write");
        }
    }
    let kept: Vec<u64> = (0..OBJECTS).filter(|n| n % 5 == 0).collect();
    for n in (0..OBJECTS).filter(|n| n % 5 != 0) {
        client.delete(uid(200 + n)).await.expect("delete");
    }
    let full = stored_bytes(&cluster).await;

    // A writer and a reader keep going while compaction runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            let mut written = 0u64;
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = uid(10_000 + n);
                client.open_write(id, 256 << 10, EC, WAIT).await.expect("writer open");
                client.confirm(id).await.expect("writer confirm");
                client
                    .write(id, 0, pattern(10_000 + n, 256 << 10))
                    .await
                    .expect("writer write");
                written += 256 << 10;
                n += 1;
            }
            written
        })
    };
    let reader = {
        let (client, stop, kept) = (client.clone(), stop.clone(), kept.clone());
        tokio::spawn(async move {
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for n in &kept {
                    let piece = reads % PIECES;
                    let got = client
                        .read(uid(200 + n), piece * MIB as u64, MIB as u64)
                        .await
                        .expect("reader read");
                    assert!(got == pattern(200 + n * PIECES + piece, MIB), "reader saw wrong bytes");
                    reads += 1;
                }
            }
            reads
        })
    };
    let live_kept = kept.len() as u64 * PIECES * MIB as u64;
    let deadline = Instant::now() + Duration::from_secs(90);
    let stored = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let stored = stored_bytes(&cluster).await;
        // The bound on the kept data alone; the writer's bytes only add
        // live data (the final check counts them).
        if (stored as f64) < 1.7 * live_kept as f64 * 6.0 / 4.0 {
            break stored;
        }
        assert!(
            Instant::now() < deadline,
            "stored {stored} bytes (from {full}) for {live_kept} live: compaction did not catch up"
        );
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.await.expect("writer");
    let reads = reader.await.expect("reader");
    assert!(
        reads > 0 && written > 0,
        "reads {reads}, writes {written} went on during compaction"
    );
    let live = live_kept + written;
    assert!(
        (stored as f64) < 1.7 * live as f64 * 6.0 / 4.0,
        "stored {stored} bytes for {live} live bytes"
    );
    assert!(stored < full / 2, "stored bytes went from {full} down to {stored}");
    for n in &kept {
        let got = client
            .read(uid(200 + n), 0, PIECES * MIB as u64)
            .await
            .expect("final read");
        for piece in 0..PIECES {
            let at = (piece as usize) * MIB;
            assert!(got[at..at + MIB] == pattern(200 + n * PIECES + piece, MIB)[..]);
        }
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_get_typed_errors_and_the_server_keeps_serving() {
    use tessera_common::os_api::{self, OpenWriteReq, RangeReq, WriteReq, IO_BYTES_MAX};
    use tessera_common::rpc::{self, CallOptions};
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(1, 1, 1, fast_data()).await;
    let client = cluster.client.clone();
    let transport = cluster.transport();
    let os = cluster.os_configs[0].listen;
    let options = CallOptions::default();
    let id = uid(70);
    client.open_write(id, 10, EC, WAIT).await.expect("open");

    let body = Bytes::from_static(b"0123456789");
    let damaged = WriteReq {
        partition: 0,
        uid: id,
        offset: 0,
        crc32c: crc32c::crc32c(&body) ^ 1,
    };
    let (answer, _) = rpc::call::<os_api::Write, _>(&transport, os, &damaged, body.clone(), &options)
        .await
        .expect("rpc");
    assert_eq!(answer, Err(OsError::Checksum), "a damaged payload is refused");
    let elsewhere = WriteReq {
        partition: 99,
        crc32c: crc32c::crc32c(&body),
        ..damaged.clone()
    };
    let (answer, _) = rpc::call::<os_api::Write, _>(&transport, os, &elsewhere, body.clone(), &options)
        .await
        .expect("rpc");
    assert_eq!(answer, Err(OsError::NoSuchPartition(99)));
    let too_long = RangeReq {
        partition: 0,
        uid: id,
        offset: 0,
        len: IO_BYTES_MAX + 1,
    };
    let (answer, _) = rpc::call::<os_api::Read, _>(&transport, os, &too_long, Bytes::new(), &options)
        .await
        .expect("rpc");
    assert!(matches!(answer, Err(OsError::BadRequest(_))), "{answer:?}");
    let bad_policy = OpenWriteReq {
        partition: 0,
        uid: uid(71),
        size_hint_bytes: 1,
        policy: StoragePolicy::Ec { k: 0, m: 2 },
        ttl_ms: 1000,
    };
    let (answer, _) = rpc::call::<os_api::OpenWrite, _>(&transport, os, &bad_policy, Bytes::new(), &options)
        .await
        .expect("rpc");
    assert!(matches!(answer, Err(OsError::BadRequest(_))), "{answer:?}");
    let never_opened = client.write(uid(72), 0, body.clone()).await;
    assert!(
        matches!(never_opened, Err(OsCallError::Os(OsError::NoSuchUid))),
        "{never_opened:?}"
    );

    // Nothing was written by the refused calls; a good write still works.
    assert_eq!(client.stat(id).await.expect("stat").size_bytes, 0);
    client.write(id, 0, body.clone()).await.expect("good write");
    assert_eq!(client.read(id, 0, 10).await.expect("read"), body);
    cluster.shutdown().await;
}

/// The replica set of `partition` in the name servers' map.
async fn map_replicas(cluster: &Cluster, partition: u32) -> Vec<u64> {
    let map = cluster.ns_client.cluster_map().await.expect("cluster map");
    let entry = map.partitions.iter().find(|p| p.partition == partition);
    entry.expect("partition placed").nodes.clone()
}

/// Until every partition's Raft voters are its map replicas, each replica
/// hosts it and has applied what its leader applied.
async fn wait_for_membership_to_match_the_map(cluster: &Cluster, partitions: u32) {
    let deadline = Instant::now() + WAIT;
    'retry: loop {
        assert!(Instant::now() < deadline, "membership never matched the partition map");
        tokio::time::sleep(Duration::from_millis(200)).await;
        for partition in 0..partitions {
            let target: std::collections::BTreeSet<u64> = map_replicas(cluster, partition).await.into_iter().collect();
            let hosts: Vec<_> = cluster
                .obj_servers
                .iter()
                .flatten()
                .flat_map(|os| os.partitions())
                .filter(|p| p.id() == partition)
                .collect();
            let Some(leader) = hosts.iter().find(|p| p.raft().is_leader()) else {
                continue 'retry;
            };
            let metrics = leader.raft().metrics().borrow().clone();
            let voters: std::collections::BTreeSet<u64> = metrics.membership_config.membership().voter_ids().collect();
            let applied = metrics.last_applied.map_or(0, |l| l.index);
            let hosted_on: std::collections::BTreeSet<u64> = hosts.iter().map(|p| p.raft().id()).collect();
            let caught_up = hosts
                .iter()
                .all(|p| p.raft().metrics().borrow().last_applied.map_or(0, |l| l.index) >= applied);
            if voters != target || hosted_on != target || !caught_up {
                continue 'retry;
            }
        }
        return;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_object_servers_replicas_move_and_it_drops_its_copies_when_it_returns() {
    let _serial = SERIAL.lock().await;
    // 4 object servers, 2 partitions of 3 replicas: every partition has a
    // spare server to move to.
    let mut cluster = Cluster::start(4, 2, 3, fast_data()).await;
    let client = cluster.client.clone();
    let mut written = Vec::new();
    for n in 300..306 {
        let (id, body) = write_object(&client, n, 70_000).await;
        client.confirm(id).await.expect("confirm");
        written.push((id, body));
    }
    let before = map_replicas(&cluster, 0).await;

    // Stop partition 0's leader; the name server moves its replicas after
    // replica_replace_after_ms (3 s on loopback).
    let leader = client
        .partition_status(0)
        .await
        .expect("status")
        .leader
        .expect("leader");
    let victim = cluster
        .obj_servers
        .iter()
        .position(|os| os.as_ref().is_some_and(|os| os.node_id() == leader))
        .expect("leader is one of ours");
    cluster.obj_servers[victim].take().expect("running").shutdown().await;
    let deadline = Instant::now() + WAIT;
    loop {
        let mut held = false;
        for partition in 0..2 {
            held |= map_replicas(&cluster, partition).await.contains(&leader);
        }
        if !held {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "object server {leader} never replaced in the map"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = map_replicas(&cluster, 0).await;
    assert_eq!(after.len(), 3, "replaced, not dropped: {before:?} -> {after:?}");
    wait_for_membership_to_match_the_map(&cluster, 2).await;

    // Everything written before reads back; writes go on.
    assert_reads_back(&client, &written, "after the move").await;
    let (id, body) = write_object(&client, 310, 50_000).await;
    assert!(client.read(id, 0, 50_000).await.expect("read a new write") == body);

    // The old server returns (on a new port): it is in no partition now,
    // so it stops and deletes its copies.
    let mut config = cluster.os_configs[victim].clone();
    config.listen = stable_loopback_addr();
    let partitions_dir = config.data_dir.join("partitions");
    let returned = ObjServer::start(config).await.expect("restart the old leader");
    let deadline = Instant::now() + WAIT;
    loop {
        let dirs = std::fs::read_dir(&partitions_dir).map(|d| d.count()).unwrap_or(0);
        if dirs == 0 && returned.partitions().is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the returned server still holds {dirs} partition directories"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.obj_servers[victim] = Some(returned);
    assert_reads_back(&client, &written, "at the end").await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deposed_leader_cannot_write_and_its_late_appends_are_refused_by_every_chunk() {
    use tessera_common::chunk_api::ChunkError;
    use tessera_common::chunk_client::{ChunkCallError, ChunkServerClient};
    use tessera_common::ids::Epoch;
    use tessera_common::os_api::{self, WriteReq};
    use tessera_common::rpc::{self, CallOptions};
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(3, 1, 3, fast_data()).await;
    let client = cluster.client.clone();
    let id = uid(80);
    let first = pattern(80, 100_000);
    client.open_write(id, 1 << 20, EC, WAIT).await.expect("open");
    client.write(id, 0, first.clone()).await.expect("write");
    let before = client.partition_status(0).await.expect("status");
    let (old_leader, old_epoch) = (before.leader.expect("a leader"), before.epoch);
    let open = before
        .groups
        .iter()
        .find(|g| g.state == "open")
        .expect("an open group")
        .id;
    let replica = |node: u64| {
        cluster
            .obj_servers
            .iter()
            .flatten()
            .find(|os| os.node_id() == node)
            .and_then(|os| os.partitions().into_iter().next())
            .expect("hosted")
    };
    let placement = replica(old_leader)
        .placements()
        .await
        .into_iter()
        .find(|p| p.id.0 == open)
        .expect("the open group's placement");

    // Depose the leader without stopping it: a follower campaigns.
    let follower = cluster
        .obj_servers
        .iter()
        .flatten()
        .map(|os| os.node_id())
        .find(|node| *node != old_leader)
        .expect("a follower");
    let deadline = Instant::now() + WAIT;
    let mut campaigned_at: Option<Instant> = None;
    let after = loop {
        // One campaign at a time: campaigning again while the last one is
        // still settling only raises the term and churns leadership.
        // A follower whose log lags is refused votes, and the old leader
        // wins the next term again: campaign with a log as long as its.
        let log_end = |node: u64| replica(node).raft().metrics().borrow().last_log_index;
        let idle = campaigned_at.is_none_or(|at| at.elapsed() > Duration::from_secs(5));
        if idle && log_end(follower) >= log_end(old_leader) {
            replica(follower)
                .raft()
                .raft()
                .trigger()
                .elect()
                .await
                .expect("campaign");
            campaigned_at = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let status = client.partition_status(0).await.expect("status");
        let sealed = status.groups.iter().any(|g| g.id == open && g.state == "sealed");
        if status.leader != Some(old_leader) && status.epoch > old_epoch && sealed {
            break status;
        }
        assert!(Instant::now() < deadline, "the leader was never deposed: {status:?}");
    };
    assert!(!replica(old_leader).raft().is_leader(), "the old leader stepped down");

    // The deposed leader's object API refuses writes (it cannot commit).
    let transport = cluster.transport();
    let old_addr = cluster
        .os_configs
        .iter()
        .find(|c| c.node_id == old_leader)
        .expect("config")
        .listen;
    let body = Bytes::from_static(b"late write");
    let late_write = WriteReq {
        partition: 0,
        uid: id,
        offset: 100_000,
        crc32c: crc32c::crc32c(&body),
    };
    let options = CallOptions::default();
    let (answer, _) = rpc::call::<os_api::Write, _>(&transport, old_addr, &late_write, body, &options)
        .await
        .expect("rpc");
    assert!(matches!(answer, Err(OsError::NotLeader { .. })), "{answer:?}");

    // Its chunks are fenced at the new epoch: an append at the old epoch,
    // at each chunk's tail, is refused by every chunk server.
    for fragment in &placement.fragments {
        let chunks = ChunkServerClient::new(transport.clone(), fragment.addr, options.clone());
        let deadline = Instant::now() + WAIT;
        let fenced = loop {
            let info = chunks.stat(fragment.chunk).await.expect("stat");
            if info.epoch > Epoch(old_epoch) {
                break info;
            }
            assert!(Instant::now() < deadline, "chunk {:?} never fenced", fragment.chunk);
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let late = chunks
            .append(
                fragment.chunk,
                fenced.length,
                Epoch(old_epoch),
                Bytes::from_static(b"late"),
            )
            .await;
        assert!(
            matches!(
                late,
                Err(ChunkCallError::Chunk(
                    ChunkError::StaleEpoch { .. } | ChunkError::Sealed(_)
                ))
            ),
            "a late append at epoch {old_epoch} must be refused: {late:?}"
        );
        let unchanged = chunks.stat(fragment.chunk).await.expect("stat");
        assert_eq!(unchanged.length, fenced.length, "nothing appended");
    }

    // The new leader writes on, in a new group, and every byte reads back.
    let second = pattern(81, 50_000);
    client
        .write(id, 100_000, second.clone())
        .await
        .expect("write at the new leader");
    let all = client.read(id, 0, 150_000).await.expect("read");
    assert!(all[..100_000] == first[..] && all[100_000..] == second[..]);
    assert!(after.epoch > old_epoch);
    cluster.shutdown().await;
}

/// The chunks chunk server `index` holds.
async fn chunks_on(cluster: &Cluster, index: usize) -> std::collections::BTreeSet<u64> {
    let transport = cluster.transport();
    let server = cluster.chunk_servers[index].as_ref().expect("running");
    let client = tessera_common::chunk_client::ChunkServerClient::new(
        transport,
        server.local_addr(),
        tessera_common::rpc::CallOptions::default(),
    );
    client
        .list()
        .await
        .expect("list chunks")
        .iter()
        .map(|c| c.chunk.0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunks_replaced_while_their_server_was_dead_are_deleted_when_it_returns() {
    let _serial = SERIAL.lock().await;
    let data = DataSettings {
        repair_interval_ms: 200,
        ..fast_data()
    };
    // Seven chunk servers: a group of six has a spare to be repaired onto.
    let mut cluster = Cluster::start_with(7, 1, 1, 1, data).await;
    let client = cluster.client.clone();
    let mut written = Vec::new();
    for n in 400..404 {
        let (id, body) = write_object(&client, n, 300_000).await;
        client.confirm(id).await.expect("confirm");
        written.push((id, body));
    }
    let mut victim = None;
    for index in 0..7 {
        let chunks = chunks_on(&cluster, index).await;
        if !chunks.is_empty() {
            victim = Some((index, chunks));
            break;
        }
    }
    let (victim, old) = victim.expect("some server holds chunks");

    // Its fragments are rebuilt on the spare once it is declared dead.
    cluster.stop_chunk_server(victim).await;
    cluster.wait_for_chunk_servers(6).await;
    let groups = wait_until_fully_redundant(&cluster).await;
    let moved = groups
        .iter()
        .flat_map(|g| &g.fragments)
        .all(|f| !old.contains(&f.chunk.0));
    assert!(moved, "no group references the stopped server's chunks any more");

    // It returns holding the replaced chunks: orphans, deleted.
    cluster.restart_chunk_server(victim).await;
    cluster.wait_for_chunk_servers(7).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let left: Vec<u64> = chunks_on(&cluster, victim).await.intersection(&old).copied().collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "orphan chunks never deleted: {left:x?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let groups = wait_until_fully_redundant(&cluster).await;
    assert!(!groups.is_empty());
    assert_reads_back(&client, &written, "after the orphans went").await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reservations_beyond_the_free_space_are_refused_and_released_ones_count_no_more() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(1, 1, 1, fast_data()).await;
    let client = cluster.client.clone();
    let map = cluster.ns_client.cluster_map().await.expect("cluster map");
    let free_min = map
        .nodes
        .iter()
        .filter(|n| n.role == tessera_common::ns_api::NodeRole::ChunkServer)
        .map(|n| n.capacity_bytes.saturating_sub(n.used_bytes))
        .min()
        .expect("chunk servers");
    assert!(free_min > 0, "the test disk has room");
    // EC 4+2: a fragment share is a quarter of the logical bytes.
    let most = free_min / 10 * 6 * 4;

    let refused = client.open_write(uid(90), u64::MAX / 2, EC, WAIT).await;
    assert!(
        matches!(refused, Err(OsCallError::Os(OsError::NoSpace(_)))),
        "far beyond the free space: {refused:?}"
    );
    client
        .open_write(uid(91), most, EC, WAIT)
        .await
        .expect("60% of the room");
    let second = client.open_write(uid(92), most, EC, WAIT).await;
    assert!(
        matches!(second, Err(OsCallError::Os(OsError::NoSpace(_)))),
        "the first reservation still holds its room: {second:?}"
    );
    client.delete(uid(91)).await.expect("drop the first");
    client
        .open_write(uid(92), most, EC, WAIT)
        .await
        .expect("its room was released");
    let status = client.partition_status(0).await.expect("status");
    assert_eq!(status.reserved_bytes, most);
    cluster.shutdown().await;
}
