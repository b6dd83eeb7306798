//! Stripe I/O over six real chunk servers in-process (files in a tempdir,
//! QUIC/TLS with the cluster's mTLS on loopback): EC 4+2 and replicated
//! n=3 appends and exact sub-range reads, degraded reads with servers down
//! or a corrupted fragment on disk or a slow fragment, failed appends,
//! sealing with servers down and fencing, fragment rebuild.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tessera_chunkserver::config::ChunkServerConfig;
use tessera_chunkserver::node::ChunkServer;
use tessera_common::chunk_api::ChunkError;
use tessera_common::chunk_client::ChunkCallError;
use tessera_common::ids::{ChunkId, Epoch, NodeId};
use tessera_common::pki::{self, NodeIdentity};
use tessera_common::rpc::{CallOptions, RawResponse, RpcClient, RpcClientConfig, RpcError, Transport};
use tessera_common::testing::pattern;
use tessera_objserver::ec::Codec;
use tessera_objserver::group_io::{GroupIo, GroupIoError, GroupIoOptions};
use tessera_objserver::placement::{FragmentLoc, GroupId, GroupPlacement, Redundancy, StripeLoc};

const SERVERS: usize = 6;
const E1: Epoch = Epoch(1);
const EC42: Redundancy = Redundancy::Ec { k: 4, m: 2 };
const STRIPE_SIZES: [usize; 3] = [1, 4096 + 3, (1 << 20) + 17];

struct Cluster {
    _dir: tempfile::TempDir,
    certs: PathBuf,
    disks: Vec<PathBuf>,
    addrs: Vec<SocketAddr>,
    servers: Vec<Option<ChunkServer>>,
    io: GroupIo<RpcClient>,
}

fn config_toml(index: usize, certs: &Path, disk: &Path) -> String {
    format!(
        r#"
node_id = {node}
listen = "127.0.0.1:0"
certs_dir = "{certs}"
identity = "cs{node}"
scrub_pass_interval_s = 3600

[store]
[[store.disks]]
path = "{disk}"
"#,
        node = index + 1,
        certs = certs.display(),
        disk = disk.display(),
    )
}

async fn cluster() -> Cluster {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    let mut names: Vec<String> = (1..=SERVERS).map(|i| format!("cs{i}")).collect();
    names.push("os1".to_string());
    pki::init_cluster(&certs, &names).expect("init pki");
    let mut disks = Vec::new();
    let mut servers = Vec::new();
    for index in 0..SERVERS {
        let disk = dir.path().join(format!("disk{index}"));
        std::fs::create_dir_all(&disk).expect("mkdir disk");
        let config = ChunkServerConfig::parse(&config_toml(index, &certs, &disk)).expect("config");
        servers.push(Some(ChunkServer::start(config).await.expect("start chunk server")));
        disks.push(disk);
    }
    let addrs = servers.iter().flatten().map(ChunkServer::local_addr).collect();
    Cluster {
        io: GroupIo::new(rpc_client(&certs), test_options()),
        _dir: dir,
        certs,
        disks,
        addrs,
        servers,
    }
}

fn rpc_client(certs: &Path) -> RpcClient {
    let identity = NodeIdentity::load(certs, "os1").expect("identity");
    RpcClient::new(identity, RpcClientConfig::default()).expect("rpc client")
}

fn test_options() -> GroupIoOptions {
    GroupIoOptions {
        call_timeout_ms: 1_000,
        call_retries: 0,
        append_timeout_ms: 3_000,
        read_deadline_ms: 500,
        suspect_ms: 5_000,
    }
}

/// A transport that answers late for one peer, as a loaded disk would.
#[derive(Clone)]
struct SlowPeer {
    inner: RpcClient,
    slow: SocketAddr,
    delay_ms: u64,
}

impl Transport for SlowPeer {
    fn call_raw(
        &self,
        peer: SocketAddr,
        method: &'static str,
        body: Bytes,
        bulk: Bytes,
        opts: &CallOptions,
    ) -> impl std::future::Future<Output = Result<RawResponse, RpcError>> + Send {
        let this = self.clone();
        let opts = opts.clone();
        async move {
            if peer == this.slow {
                tokio::time::sleep(Duration::from_millis(this.delay_ms)).await;
            }
            this.inner.call_raw(peer, method, body, bulk, &opts).await
        }
    }
}

impl Cluster {
    /// A group whose fragment `i` is chunk `first_chunk + i` on server
    /// `servers[i]`.
    fn group(&self, id: u64, redundancy: Redundancy, servers: &[usize], first_chunk: u64) -> GroupPlacement {
        assert_eq!(servers.len(), redundancy.total_fragments());
        let fragments = servers
            .iter()
            .enumerate()
            .map(|(i, &server)| FragmentLoc {
                node: NodeId(server as u64 + 1),
                addr: self.addrs[server],
                chunk: ChunkId(first_chunk + i as u64),
            })
            .collect();
        GroupPlacement {
            id: GroupId(id),
            redundancy,
            fragments,
        }
    }

    async fn stop(&mut self, server: usize) {
        let running = self.servers[server].take().expect("server running");
        running.shutdown().await;
    }

    async fn shutdown(mut self) {
        for server in 0..SERVERS {
            if self.servers[server].is_some() {
                self.stop(server).await;
            }
        }
    }

    /// Appends one stripe per size at consecutive offsets.
    async fn append_stripes(&self, group: &GroupPlacement, seed: u64) -> Vec<(StripeLoc, Bytes)> {
        let mut offset = 0;
        let mut stripes = Vec::new();
        for (n, size) in STRIPE_SIZES.into_iter().enumerate() {
            let data = pattern(seed + n as u64, size);
            let stripe = self
                .io
                .append_stripe(group, E1, offset, &data)
                .await
                .expect("append stripe");
            let k = group.redundancy.data_fragments();
            assert_eq!(stripe.chunk_offset, offset);
            assert_eq!(stripe.fragment_len as usize, size.div_ceil(k));
            offset = stripe.end();
            stripes.push((stripe, data));
        }
        stripes
    }

    /// Reads every boundary case of every stripe and compares.
    async fn check_reads(&self, group: &GroupPlacement, stripes: &[(StripeLoc, Bytes)]) {
        for (stripe, data) in stripes {
            let k = group.redundancy.data_fragments();
            for (offset, len) in boundary_ranges(data.len(), stripe.fragment_len as usize, k) {
                let got = self
                    .io
                    .read(group, *stripe, offset as u32, len as u32)
                    .await
                    .unwrap_or_else(|e| panic!("read {offset}+{len} of a {}-byte stripe: {e}", data.len()));
                let mut padded = data.to_vec();
                padded.resize(k * stripe.fragment_len as usize, 0);
                assert!(
                    got[..] == padded[offset..offset + len],
                    "read {offset}+{len} of a {}-byte stripe returned other bytes",
                    data.len()
                );
            }
        }
    }
}

/// Ranges `(data_offset, len)`: first and last byte, within one fragment,
/// across fragment boundaries, the whole stripe, the last (partial)
/// fragment, the zero padding, an empty range.
fn boundary_ranges(len: usize, fragment_len: usize, k: usize) -> Vec<(usize, usize)> {
    let mut ranges = vec![(0, 1), (len - 1, 1), (0, len), (0, 0)];
    if fragment_len > 3 {
        ranges.push((1, fragment_len - 2));
    }
    for boundary in (1..k).map(|i| i * fragment_len).filter(|&b| b < len) {
        ranges.push((boundary - 1, 2));
        ranges.push((boundary, (len - boundary).min(fragment_len)));
    }
    if len > fragment_len {
        ranges.push((fragment_len / 2, len - fragment_len));
    }
    let last = (k - 1) * fragment_len;
    if last < len {
        ranges.push((last, len - last));
    }
    ranges.push((0, k * fragment_len));
    ranges.push((len, k * fragment_len - len));
    ranges
}

fn failed_indexes(error: &GroupIoError) -> Vec<usize> {
    match error {
        GroupIoError::Fragments { failed, .. } | GroupIoError::NotEnoughFragments { failed, .. } => {
            let mut indexes: Vec<usize> = failed.iter().map(|f| f.index).collect();
            indexes.sort_unstable();
            indexes
        }
        other => panic!("expected a fragment failure, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ec_and_replicated_stripes_read_back_exact_ranges_and_rebuild() {
    let c = cluster().await;
    let ec = c.group(1, EC42, &[0, 1, 2, 3, 4, 5], 100);
    let replicated = c.group(2, Redundancy::Replicated { n: 3 }, &[3, 4, 5], 200);
    for group in [&ec, &replicated] {
        c.io.create_chunks(group, E1).await.expect("create");
        c.io.create_chunks(group, E1).await.expect("create again is fine");
        let stripes = c.append_stripes(group, group.id.0 * 10).await;
        c.check_reads(group, &stripes).await;
        let codec = Codec::new(group.redundancy).expect("codec");
        for (stripe, data) in &stripes {
            let (_, fragments) = codec.encode(data).expect("encode");
            for (index, original) in fragments.iter().enumerate() {
                let stored = c.io.read_fragment(group, *stripe, index).await.expect("read fragment");
                assert_eq!(&stored, original, "fragment {index} as stored");
                let rebuilt =
                    c.io.rebuild_fragment(group, *stripe, index)
                        .await
                        .expect("rebuild fragment");
                assert_eq!(&rebuilt, original, "fragment {index} rebuilt");
            }
        }
        let (stripe, _) = stripes[0];
        let beyond = c.io.read(group, stripe, 0, stripe.fragment_len * 4 + 1).await;
        assert!(matches!(beyond, Err(GroupIoError::OutOfRange { .. })), "{beyond:?}");
        let bad_index = c.io.rebuild_fragment(group, stripe, 6).await;
        assert!(matches!(bad_index, Err(GroupIoError::BadIndex { .. })), "{bad_index:?}");
        c.io.delete_chunks(group).await.expect("delete");
        c.io.delete_chunks(group).await.expect("delete again is fine");
        let gone = c.io.read(group, stripe, 0, 1).await;
        assert!(matches!(gone, Err(GroupIoError::NotEnoughFragments { .. })), "{gone:?}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degraded_reads_survive_two_lost_servers_and_refuse_with_three() {
    let mut c = cluster().await;
    let ec = c.group(1, EC42, &[0, 1, 2, 3, 4, 5], 100);
    let replicated = c.group(2, Redundancy::Replicated { n: 3 }, &[0, 1, 2], 200);
    let mut written = Vec::new();
    for group in [&ec, &replicated] {
        c.io.create_chunks(group, E1).await.expect("create");
        written.push(c.append_stripes(group, group.id.0 * 10).await);
    }
    // Two data fragments of the EC group, two replicas of the other.
    c.stop(0).await;
    c.stop(1).await;
    for (group, stripes) in [&ec, &replicated].into_iter().zip(&written) {
        c.check_reads(group, stripes).await;
        let (stripe, _) = stripes[2];
        for index in 0..2 {
            let rebuilt = c.io.rebuild_fragment(group, stripe, index).await;
            let read = c.io.read_fragment(group, stripe, 2).await.expect("read a survivor");
            if group.redundancy == EC42 {
                let codec = Codec::new(EC42).expect("codec");
                let (_, fragments) = codec.encode(&stripes[2].1).expect("encode");
                assert_eq!(rebuilt.expect("rebuild"), fragments[index]);
            } else {
                assert_eq!(rebuilt.expect("rebuild"), read);
            }
        }
    }
    c.stop(2).await;
    for (group, stripes) in [&ec, &replicated].into_iter().zip(&written) {
        let (stripe, _) = stripes[2];
        let read = c.io.read(group, stripe, 0, 4096).await;
        let needed = group.redundancy.data_fragments();
        match read {
            Err(GroupIoError::NotEnoughFragments {
                needed: n, available, ..
            }) => assert!(n == needed && available < needed, "{n} {available}"),
            other => panic!("expected NotEnoughFragments, got {other:?}"),
        }
    }
    // A range held only by a surviving data fragment still reads.
    let (stripe, data) = &written[0][2];
    let last = 3 * stripe.fragment_len;
    let tail = c.io.read(&ec, *stripe, last, 100).await.expect("fast path");
    assert_eq!(tail, data.slice(last as usize..last as usize + 100));
    c.shutdown().await;
}

/// Flips one bit inside `needle`, found in `chunk`'s file on `disk`, while
/// the chunk server runs (it reads the file on every read).
fn flip_a_bit_of(disk: &Path, chunk: ChunkId, needle: &[u8]) {
    let path = disk.join("chunks").join(format!("{:016x}.chunk", chunk.0));
    tessera_common::testing::flip_a_bit_in_file(&path, needle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_fragment_on_disk_reads_correctly_via_decode() {
    let c = cluster().await;
    let ec = c.group(1, EC42, &[0, 1, 2, 3, 4, 5], 100);
    c.io.create_chunks(&ec, E1).await.expect("create");
    let stripes = c.append_stripes(&ec, 7).await;
    let (stripe, data) = &stripes[2];
    let fragment_len = stripe.fragment_len as usize;
    // Damage fragment 1 around 10 000 bytes into it.
    let damaged = fragment_len + 10_000;
    flip_a_bit_of(&c.disks[1], ec.fragments[1].chunk, &data[damaged..damaged + 64]);

    let direct = c.io.read_fragment(&ec, *stripe, 1).await;
    match direct {
        Err(GroupIoError::Fragments { failed, .. }) => assert!(
            matches!(failed[0].error, ChunkCallError::Chunk(ChunkError::Corrupt { .. })),
            "{:?}",
            failed[0].error
        ),
        other => panic!("expected the corrupt fragment to be refused, got {other:?}"),
    }
    let around =
        c.io.read(&ec, *stripe, damaged as u32 - 5_000, 10_000)
            .await
            .expect("degraded read");
    assert_eq!(around, data.slice(damaged - 5_000..damaged + 5_000));
    c.check_reads(&ec, &stripes).await;
    let codec = Codec::new(EC42).expect("codec");
    let (_, fragments) = codec.encode(data).expect("encode");
    let rebuilt = c.io.rebuild_fragment(&ec, *stripe, 1).await.expect("rebuild");
    assert_eq!(rebuilt, fragments[1]);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_with_a_server_down_fails_and_names_the_fragment() {
    let mut c = cluster().await;
    let ec = c.group(1, EC42, &[0, 1, 2, 3, 4, 5], 100);
    c.io.create_chunks(&ec, E1).await.expect("create");
    let first = c.io.append_stripe(&ec, E1, 0, &pattern(1, 5000)).await.expect("append");
    c.stop(3).await;
    let error =
        c.io.append_stripe(&ec, E1, first.end(), &pattern(2, 5000))
            .await
            .expect_err("a fragment cannot be durable");
    assert_eq!(failed_indexes(&error), vec![3]);
    let GroupIoError::Fragments { failed, .. } = &error else {
        panic!("{error}");
    };
    assert_eq!(failed[0].node, NodeId(4));
    assert!(error.to_string().contains("fragment 3 on n4"), "{error}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seal_with_two_down_succeeds_and_fences_older_epochs() {
    let mut c = cluster().await;
    let ec = c.group(1, EC42, &[0, 1, 2, 3, 4, 5], 100);
    c.io.create_chunks(&ec, E1).await.expect("create");
    let stripes = c.append_stripes(&ec, 3).await;
    let length = stripes.last().expect("stripes").0.end();
    c.stop(1).await;
    c.stop(4).await;
    let report = c.io.seal(&ec, Epoch(2), length).await.expect("seal with m down");
    let mut unreachable: Vec<usize> = report.failed.iter().map(|f| f.index).collect();
    unreachable.sort_unstable();
    assert_eq!(unreachable, vec![1, 4]);
    // Sealing again is idempotent.
    c.io.seal(&ec, Epoch(2), length).await.expect("seal again");

    let stale =
        c.io.append_stripe(&ec, E1, length, &pattern(9, 100))
            .await
            .expect_err("the deposed epoch cannot append");
    let GroupIoError::Fragments { failed, .. } = &stale else {
        panic!("{stale}");
    };
    for f in failed.iter().filter(|f| ![1, 4].contains(&f.index)) {
        assert!(
            matches!(f.error, ChunkCallError::Chunk(ChunkError::StaleEpoch { .. })),
            "fragment {}: {:?}",
            f.index,
            f.error
        );
    }
    assert_eq!(failed_indexes(&stale), vec![0, 1, 2, 3, 4, 5]);
    let newer = c.io.append_stripe(&ec, Epoch(2), length, &pattern(9, 100)).await;
    assert!(newer.is_err(), "a sealed group takes no appends");
    c.check_reads(&ec, &stripes).await;
    // With a third chunk server gone the seal cannot be trusted.
    c.stop(0).await;
    let too_few = c.io.seal(&ec, Epoch(3), length).await.expect_err("three down");
    assert_eq!(failed_indexes(&too_few), vec![0, 1, 4]);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_data_fragment_misses_the_deadline_and_the_read_decodes() {
    let c = cluster().await;
    let ec = c.group(1, EC42, &[0, 1, 2, 3, 4, 5], 100);
    c.io.create_chunks(&ec, E1).await.expect("create");
    let stripes = c.append_stripes(&ec, 5).await;
    let (stripe, data) = &stripes[2];
    let slow = SlowPeer {
        inner: rpc_client(&c.certs),
        slow: c.addrs[0],
        delay_ms: 5_000,
    };
    let options = GroupIoOptions {
        call_timeout_ms: 10_000,
        ..test_options()
    };
    let io = GroupIo::new(slow, options);
    let started = Instant::now();
    let read = io.read(&ec, *stripe, 1_000, 300_000).await.expect("degraded read");
    assert!(
        started.elapsed() < Duration::from_millis(4_000),
        "waited for the slow fragment: {:?}",
        started.elapsed()
    );
    assert_eq!(read, data.slice(1_000..301_000));
    // A range held by healthy fragments only takes the fast path.
    let fragment_len = stripe.fragment_len;
    let fast = io.read(&ec, *stripe, fragment_len, 1_000).await.expect("fast read");
    assert_eq!(fast, data.slice(fragment_len as usize..fragment_len as usize + 1_000));
    c.shutdown().await;
}
