//! kill -9 of a `tessera chunkserver` process in the middle of concurrent
//! appends: after a restart every acknowledged append reads back byte-exact
//! and appending continues where the chunk now ends.

mod support;

use support::{free_port, KillOnDrop, TESSERA};

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tessera_common::chunk_client::ChunkServerClient;
use tessera_common::ids::{ChunkId, Epoch};
use tessera_common::pki::NodeIdentity;
use tessera_common::rpc::{CallOptions, RpcClient, RpcClientConfig};
use tokio::sync::Mutex;

const WRITERS: u64 = 8;
const APPEND_BYTES: usize = 48 * 1024;

fn spawn_server(config: &Path) -> KillOnDrop {
    let child = Command::new(TESSERA)
        .args(["chunkserver", "--config", config.to_str().expect("utf8")])
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn chunk server");
    KillOnDrop(child)
}

fn payload(writer: u64, n: u64) -> Bytes {
    tessera_common::testing::pattern(writer << 32 | n, APPEND_BYTES)
}

async fn wait_until_serving(client: &ChunkServerClient<RpcClient>) {
    for _ in 0..200 {
        if client.disks().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("chunk server did not start serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    let names = vec!["cs1".to_string(), "admin".to_string()];
    tessera_common::pki::init_cluster(&certs, &names).expect("pki");
    let port = free_port();
    let config = dir.path().join("cs.toml");
    let text = format!(
        "node_id = 1\nlisten = \"127.0.0.1:{port}\"\ncerts_dir = \"{}\"\nidentity = \"cs1\"\n[store]\n[[store.disks]]\npath = \"{}\"\n",
        certs.display(),
        dir.path().join("disk1").display()
    );
    std::fs::write(&config, text).expect("config");

    let identity = NodeIdentity::load(&certs, "admin").expect("identity");
    let options = CallOptions {
        timeout: Duration::from_secs(2),
        retries: 0,
        ..CallOptions::default()
    };
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    let new_client = || {
        let transport = RpcClient::new(identity.clone(), RpcClientConfig::default()).expect("client");
        ChunkServerClient::new(transport, addr, options.clone())
    };

    let mut server = spawn_server(&config);
    let client = Arc::new(new_client());
    wait_until_serving(&client).await;
    // acked[w] = appends acknowledged to writer w.
    let acked: Arc<Mutex<Vec<u64>>> = Arc::new(Mutex::new(vec![0; WRITERS as usize]));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let client = client.clone();
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            let chunk = ChunkId(w + 1);
            client.create(chunk, Epoch(1)).await.expect("create");
            for n in 0.. {
                let offset = n * APPEND_BYTES as u64;
                if client.append(chunk, offset, Epoch(1), payload(w, n)).await.is_err() {
                    return; // the server died under us
                }
                acked.lock().await[w as usize] = n + 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.0.kill().expect("kill -9");
    let _ = server.0.wait();
    for w in writers {
        w.await.expect("writer task");
    }
    let acked = acked.lock().await.clone();
    assert!(
        acked.iter().all(|&n| n > 0),
        "every writer got appends acknowledged: {acked:?}"
    );

    let _server = spawn_server(&config);
    let client = new_client();
    wait_until_serving(&client).await;
    for w in 0..WRITERS {
        let chunk = ChunkId(w + 1);
        let info = client.stat(chunk).await.expect("stat after restart");
        let acked_bytes = acked[w as usize] * APPEND_BYTES as u64;
        assert!(
            info.length >= acked_bytes,
            "chunk {chunk} lost acked bytes: {} < {acked_bytes}",
            info.length
        );
        assert_eq!(info.length % APPEND_BYTES as u64, 0, "a torn append survived recovery");
        for n in 0..info.length / APPEND_BYTES as u64 {
            let data = client
                .read(chunk, n * APPEND_BYTES as u64, APPEND_BYTES as u64)
                .await
                .expect("read back");
            assert_eq!(data, payload(w, n), "chunk {chunk} append {n} differs");
        }
        let next = info.length / APPEND_BYTES as u64;
        let after = client
            .append(chunk, info.length, Epoch(1), payload(w, next))
            .await
            .expect("append after restart");
        assert_eq!(after.length, info.length + APPEND_BYTES as u64);
    }
}
