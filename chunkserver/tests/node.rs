//! A real chunk server (files, QUIC + TCP/TLS on loopback, mTLS) driven by
//! the cluster's own client, as other roles will use it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tessera_chunkserver::config::ChunkServerConfig;
use tessera_chunkserver::node::ChunkServer;
use tessera_common::chunk_api::{self, ChunkError, ChunkServerHeartbeat, HeartbeatAck};
use tessera_common::chunk_client::{ChunkCallError, ChunkServerClient};
use tessera_common::ids::{ChunkId, Epoch, NodeId};
use tessera_common::pki::{self, NodeIdentity};
use tessera_common::rpc::{CallOptions, RequestCtx, Router, RpcClient, RpcClientConfig, RpcServer, RpcServerConfig};
use tessera_common::testing::pattern;

fn config_toml(certs: &Path, disk: &Path, name_servers: &[SocketAddr]) -> String {
    let ns: Vec<String> = name_servers.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        r#"
node_id = 7
listen = "127.0.0.1:0"
certs_dir = "{certs}"
identity = "cs1"
name_servers = [{ns}]
heartbeat_interval_ms = 100
scrub_pass_interval_s = 1

[store]
[[store.disks]]
path = "{disk}"
"#,
        certs = certs.display(),
        disk = disk.display(),
        ns = ns.join(", "),
    )
}

struct Cluster {
    _dir: tempfile::TempDir,
    certs: std::path::PathBuf,
    disk: std::path::PathBuf,
}

fn cluster() -> Cluster {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    let names = vec!["cs1".to_string(), "client".to_string(), "ns1".to_string()];
    pki::init_cluster(&certs, &names).expect("init pki");
    let disk = dir.path().join("disk1");
    std::fs::create_dir_all(&disk).expect("mkdir disk");
    Cluster { _dir: dir, certs, disk }
}

fn client(c: &Cluster, addr: SocketAddr) -> ChunkServerClient<RpcClient> {
    let identity = NodeIdentity::load(&c.certs, "client").expect("identity");
    let transport = RpcClient::new(identity, RpcClientConfig::default()).expect("client");
    let options = CallOptions {
        timeout: Duration::from_secs(5),
        ..CallOptions::default()
    };
    ChunkServerClient::new(transport, addr, options)
}

async fn start(c: &Cluster, name_servers: &[SocketAddr]) -> ChunkServer {
    let config = ChunkServerConfig::parse(&config_toml(&c.certs, &c.disk, name_servers)).expect("config");
    ChunkServer::start(config).await.expect("start chunk server")
}

#[tokio::test]
async fn append_read_fence_seal_over_rpc_and_survive_restart() {
    let c = cluster();
    let server = start(&c, &[]).await;
    let cs = client(&c, server.local_addr());
    let chunk = ChunkId(1);
    cs.create(chunk, Epoch(1)).await.expect("create");
    let small = pattern(1, 4096);
    let large = pattern(2, 3 << 20); // takes the bulk data channel
    assert_eq!(
        cs.append(chunk, 0, Epoch(1), small.clone())
            .await
            .expect("append")
            .length,
        4096
    );
    let info = cs
        .append(chunk, 4096, Epoch(1), large.clone())
        .await
        .expect("append large");
    assert_eq!(info.length, 4096 + large.len() as u64);
    // Idempotent retry, conflicting retry, wrong offset.
    assert_eq!(
        cs.append(chunk, 0, Epoch(1), small.clone())
            .await
            .expect("retry")
            .length,
        info.length
    );
    let conflict = cs.append(chunk, 0, Epoch(1), pattern(9, 4096)).await;
    assert!(
        matches!(conflict, Err(ChunkCallError::Chunk(ChunkError::Conflict { .. }))),
        "{conflict:?}"
    );
    let gap = cs.append(chunk, info.length + 1, Epoch(1), small.clone()).await;
    assert!(
        matches!(gap, Err(ChunkCallError::Chunk(ChunkError::WrongOffset { .. }))),
        "{gap:?}"
    );

    // A new leader fences; the deposed one can no longer append.
    assert_eq!(cs.fence(chunk, Epoch(2)).await.expect("fence").epoch, Epoch(2));
    let stale = cs.append(chunk, info.length, Epoch(1), small.clone()).await;
    assert!(
        matches!(stale, Err(ChunkCallError::Chunk(ChunkError::StaleEpoch { .. }))),
        "{stale:?}"
    );
    let sealed = cs.seal(chunk, Epoch(2), Some(info.length)).await.expect("seal");
    assert!(sealed.sealed);

    let read = cs.read(chunk, 4000, 10_000).await.expect("read across records");
    let mut expected = small[4000..].to_vec();
    expected.extend_from_slice(&large[..10_000 - 96]);
    assert_eq!(&read[..], &expected[..]);

    server.shutdown().await;
    let server = start(&c, &[]).await;
    let cs = client(&c, server.local_addr());
    let info = cs.stat(chunk).await.expect("stat after restart");
    assert!(info.sealed && info.epoch == Epoch(2) && info.length == 4096 + large.len() as u64);
    assert_eq!(
        cs.read(chunk, 4096, large.len() as u64).await.expect("read large"),
        large
    );
    cs.delete(chunk).await.expect("delete");
    let gone = cs.stat(chunk).await;
    assert!(
        matches!(gone, Err(ChunkCallError::Chunk(ChunkError::NotFound(_)))),
        "{gone:?}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn thirty_two_concurrent_appenders_over_rpc_are_all_durable() {
    let c = cluster();
    let server = start(&c, &[]).await;
    let cs = Arc::new(client(&c, server.local_addr()));
    let appends_per_chunk = 16u64;
    let mut tasks = Vec::new();
    for i in 0..32u64 {
        let cs = cs.clone();
        tasks.push(tokio::spawn(async move {
            let chunk = ChunkId(100 + i);
            cs.create(chunk, Epoch(1)).await.expect("create");
            for n in 0..appends_per_chunk {
                let data = pattern(i * 1000 + n, 4096);
                cs.append(chunk, n * 4096, Epoch(1), data).await.expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.expect("appender");
    }
    server.shutdown().await;
    let server = start(&c, &[]).await;
    let cs = client(&c, server.local_addr());
    for i in 0..32u64 {
        let chunk = ChunkId(100 + i);
        let all = cs.read(chunk, 0, appends_per_chunk * 4096).await.expect("read back");
        for n in 0..appends_per_chunk as usize {
            assert_eq!(&all[n * 4096..(n + 1) * 4096], &pattern(i * 1000 + n as u64, 4096)[..]);
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn flipped_bit_is_found_by_scrub_reported_by_heartbeat_and_never_returned() {
    let c = cluster();
    let beats: Arc<Mutex<Vec<ChunkServerHeartbeat>>> = Arc::default();
    let ns = fake_name_server(&c, beats.clone()).await;
    let server = start(&c, &[ns.local_addr()]).await;
    let cs = client(&c, server.local_addr());
    let chunk = ChunkId(5);
    cs.create(chunk, Epoch(1)).await.expect("create");
    let data = pattern(5, 64 * 1024);
    cs.append(chunk, 0, Epoch(1), data.clone()).await.expect("append");
    // A later record, so the damaged one is not the tail (which recovery
    // would treat as torn).
    cs.append(chunk, 64 * 1024, Epoch(1), pattern(6, 4096))
        .await
        .expect("append");
    // Not sealed: scrub covers open chunks too (an open group can stay
    // open for as long as its partition leader does).
    server.shutdown().await;

    flip_a_bit_of(&c.disk, &data[20_000..20_064]);
    let server = start(&c, &[ns.local_addr()]).await;
    // Scrub finds it without any read, and the heartbeat reports it.
    let reported = wait_for(|| beats.lock().unwrap().iter().any(|b| b.corrupt_chunks.contains(&chunk))).await;
    assert!(reported, "scrub + heartbeat never reported the corrupt chunk");
    let last = beats.lock().unwrap().last().cloned().expect("a heartbeat");
    assert_eq!(last.node, NodeId(7));
    assert!(last.disks.iter().all(|d| d.healthy) && last.disks[0].corrupt_blocks >= 1);

    let cs = client(&c, server.local_addr());
    let bad = cs.read(chunk, 0, 64 * 1024).await;
    let Err(ChunkCallError::Chunk(ChunkError::Corrupt {
        chunk: bad_chunk,
        offset,
    })) = bad
    else {
        panic!("expected Corrupt, got {bad:?}");
    };
    assert_eq!(bad_chunk, chunk);
    assert_eq!(offset, 16_384, "the 4 KiB block holding byte 20000");
    // Blocks before the damage still read fine.
    assert_eq!(cs.read(chunk, 0, 4096).await.expect("clean block"), data.slice(..4096));
    assert_eq!(
        cs.read(chunk, 20_480, 4096).await.expect("clean block"),
        data.slice(20_480..24_576)
    );
    server.shutdown().await;
    ns.shutdown().await;
}

/// Flips one bit inside `needle`, found in the only chunk file.
fn flip_a_bit_of(disk: &Path, needle: &[u8]) {
    let chunk_dir = disk.join("chunks");
    let file = std::fs::read_dir(&chunk_dir)
        .expect("chunks dir")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "chunk"))
        .expect("a chunk file");
    let mut bytes = std::fs::read(&file).expect("read chunk file");
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the data is stored verbatim");
    bytes[at + 1] ^= 0x10;
    std::fs::write(&file, bytes).expect("write chunk file");
}

async fn fake_name_server(c: &Cluster, beats: Arc<Mutex<Vec<ChunkServerHeartbeat>>>) -> RpcServer {
    let identity = NodeIdentity::load(&c.certs, "ns1").expect("ns identity");
    let count = Arc::new(AtomicU64::new(0));
    let router = Router::new().add::<chunk_api::Heartbeat, _, _>(move |_ctx: RequestCtx, beat, _bulk| {
        let beats = beats.clone();
        count.fetch_add(1, Ordering::Relaxed);
        async move {
            beats.lock().unwrap().push(beat);
            (HeartbeatAck { interval_ms: 100 }, Bytes::new())
        }
    });
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    RpcServer::bind(addr, identity, router, RpcServerConfig::default())
        .await
        .expect("fake name server")
}

async fn wait_for(mut condition: impl FnMut() -> bool) -> bool {
    for _ in 0..100 {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
