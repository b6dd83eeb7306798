//! A cluster of `tessera` processes as an operator starts them (one name
//! server, six chunk servers, one object server, each from its TOML
//! config), inspected with `tessera admin status`: every node alive, every
//! partition led; after `kill -9` of a chunk server, the status reports it
//! dead.

mod support;

use support::{free_port, KillOnDrop, TESSERA};

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const PARTITIONS: u32 = 2;

fn tessera(args: &[&str]) -> Output {
    Command::new(TESSERA).args(args).output().expect("run tessera")
}

fn spawn(role: &str, config: &Path) -> KillOnDrop {
    let child = Command::new(TESSERA)
        .args([role, "--config", config.to_str().expect("utf8")])
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {role}: {e}"));
    KillOnDrop(child)
}

fn write(dir: &Path, name: &str, text: String) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

fn nameserver_config(dir: &Path, port: u16) -> PathBuf {
    let text = format!(
        "node_id = 1\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{data}\"\ncerts_dir = \"{certs}\"\n\
         identity = \"ns1\"\n[raft]\nheartbeat_interval_ms = 100\nelection_timeout_min_ms = 500\n\
         election_timeout_max_ms = 1000\n[cluster]\nheartbeat_interval_ms = 200\nnode_liveness_timeout_ms = 1500\n\
         partitions = {PARTITIONS}\npartition_replicas = 1\n\
         [[bootstrap]]\nid = 1\naddr = \"127.0.0.1:{port}\"\n",
        data = dir.join("ns1").display(),
        certs = dir.join("certs").display(),
    );
    write(dir, "ns1.toml", text)
}

fn chunkserver_config(dir: &Path, index: usize, port: u16, ns_port: u16) -> PathBuf {
    let disk = dir.join(format!("cs{index}"));
    std::fs::create_dir_all(&disk).expect("mkdir disk");
    let text = format!(
        "node_id = {node}\nlisten = \"127.0.0.1:{port}\"\ncerts_dir = \"{certs}\"\nidentity = \"cs{index}\"\n\
         name_servers = [\"127.0.0.1:{ns_port}\"]\nheartbeat_interval_ms = 200\n[store]\n[[store.disks]]\n\
         path = \"{disk}\"\n",
        node = 100 + index,
        certs = dir.join("certs").display(),
        disk = disk.display(),
    );
    write(dir, &format!("cs{index}.toml"), text)
}

fn objserver_config(dir: &Path, port: u16, ns_port: u16) -> PathBuf {
    let text = format!(
        "node_id = 11\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{data}\"\ncerts_dir = \"{certs}\"\n\
         identity = \"os1\"\nnameservers = [\"127.0.0.1:{ns_port}\"]\n\
         [data]\ncluster_refresh_interval_ms = 200\n",
        data = dir.join("os1").display(),
        certs = dir.join("certs").display(),
    );
    write(dir, "os1.toml", text)
}

/// `admin status` until `done` holds for its JSON (or the deadline).
fn status_until(certs: &Path, ns_port: u16, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let servers = format!("127.0.0.1:{ns_port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        let out = tessera(&[
            "admin",
            "status",
            "--servers",
            &servers,
            "--certs",
            certs.to_str().expect("utf8"),
        ]);
        if out.status.success() {
            let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status prints JSON");
            if done(&json) {
                return json;
            }
            last = json.to_string();
        } else {
            last = String::from_utf8_lossy(&out.stderr).to_string();
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("status never got there; last: {last}");
}

fn alive_by_role(json: &serde_json::Value, role: &str) -> usize {
    json["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["role"] == role && n["alive"] == true)
        .count()
}

#[test]
fn status_of_a_process_cluster_shows_every_node_and_a_killed_chunk_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    let mut names = vec!["--node", "ns1", "--node", "os1"];
    let cs_names: Vec<String> = (0..6).map(|i| format!("cs{i}")).collect();
    for name in &cs_names {
        names.extend(["--node", name.as_str()]);
    }
    let mut init = vec!["admin", "init", "--out", certs.to_str().expect("utf8")];
    init.extend(names);
    let out = tessera(&init);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let ns_port = free_port();
    let _ns = spawn("nameserver", &nameserver_config(dir.path(), ns_port));
    let mut chunk_servers: Vec<Option<KillOnDrop>> = (0..6)
        .map(|i| {
            Some(spawn(
                "chunkserver",
                &chunkserver_config(dir.path(), i, free_port(), ns_port),
            ))
        })
        .collect();
    let _os = spawn("objserver", &objserver_config(dir.path(), free_port(), ns_port));

    let json = status_until(&certs, ns_port, |j| {
        let partitions = j["partitions"].as_array().map(Vec::len).unwrap_or(0);
        let led = j["partitions"]
            .as_array()
            .is_some_and(|ps| ps.iter().all(|p| p["leader"] == 11 && p["epoch"].as_u64() >= Some(1)));
        alive_by_role(j, "ChunkServer") == 6 && alive_by_role(j, "ObjectServer") == 1 && partitions == 2 && led
    });
    assert_eq!(json["healthy"], true, "{json}");
    assert_eq!(json["repair"]["pending_bytes"], 0);

    // kill -9 one chunk server: the leader stops hearing it.
    drop(chunk_servers[3].take());
    let json = status_until(&certs, ns_port, |j| alive_by_role(j, "ChunkServer") == 5);
    assert_eq!(
        json["healthy"], false,
        "a dead node makes the cluster unhealthy: {json}"
    );
    let dead: Vec<&serde_json::Value> = json["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["alive"] == false)
        .collect();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["id"], 103);
}
