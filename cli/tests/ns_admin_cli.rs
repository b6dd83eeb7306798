//! `tessera admin ns list|add|remove` against `tessera nameserver`
//! processes: a one-member group grows to two voters and shrinks back; the
//! last voter cannot be removed.

mod support;

use support::{free_port, KillOnDrop, TESSERA};

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn tessera(args: &[&str]) -> Output {
    Command::new(TESSERA).args(args).output().expect("run tessera")
}

/// Writes node `id`'s config; `bootstrap` makes it the group's only voter.
fn write_config(dir: &Path, id: u64, port: u16, bootstrap: bool) -> PathBuf {
    let path = dir.join(format!("ns{id}.toml"));
    let mut text = format!(
        r#"
node_id = {id}
listen = "127.0.0.1:{port}"
data_dir = "{data}"
certs_dir = "{certs}"
identity = "ns{id}"
[raft]
heartbeat_interval_ms = 100
election_timeout_min_ms = 500
election_timeout_max_ms = 1000
"#,
        data = dir.join(format!("ns{id}")).display(),
        certs = dir.join("certs").display(),
    );
    if bootstrap {
        text.push_str(&format!("[[bootstrap]]\nid = {id}\naddr = \"127.0.0.1:{port}\"\n"));
    }
    std::fs::write(&path, text).expect("write config");
    path
}

fn spawn_nameserver(config: &Path) -> KillOnDrop {
    let child = Command::new(TESSERA)
        .args(["nameserver", "--config", config.to_str().expect("utf8")])
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn nameserver");
    KillOnDrop(child)
}

/// Runs `tessera admin ns --servers SERVERS --certs CERTS ARGS...`.
fn admin_ns(certs: &Path, servers: &str, args: &[&str]) -> Output {
    admin("ns", certs, servers, args)
}

/// The ids of `list`'s voters, retried until a leader answers.
fn voters(certs: &Path, servers: &str) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = admin_ns(certs, servers, &["list"]);
        if out.status.success() {
            let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("list prints JSON");
            assert!(json["leader"].is_u64(), "{json}");
            let voters = json["voters"].as_array().expect("voters");
            return voters.iter().map(|v| v["id"].as_u64().expect("id")).collect();
        }
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(Instant::now() < deadline, "list kept failing: {stderr}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn list_add_remove_and_the_last_voter_is_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    let init = tessera(&[
        "admin",
        "init",
        "--out",
        certs.to_str().expect("utf8"),
        "--node",
        "ns1",
        "--node",
        "ns2",
    ]);
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let (port1, port2) = (free_port(), free_port());
    let _ns1 = spawn_nameserver(&write_config(dir.path(), 1, port1, true));
    let _ns2 = spawn_nameserver(&write_config(dir.path(), 2, port2, false));
    let servers = format!("127.0.0.1:{port1},127.0.0.1:{port2}");
    assert_eq!(voters(&certs, &servers), vec![1]);

    let addr2 = format!("127.0.0.1:{port2}");
    let add = admin_ns(&certs, &servers, &["add", "--id", "2", "--addr", &addr2]);
    assert!(add.status.success(), "{}", String::from_utf8_lossy(&add.stderr));
    assert_eq!(voters(&certs, &servers), vec![1, 2]);

    let remove = admin_ns(&certs, &servers, &["remove", "--id", "2"]);
    assert!(remove.status.success(), "{}", String::from_utf8_lossy(&remove.stderr));
    assert_eq!(voters(&certs, &format!("127.0.0.1:{port1}")), vec![1]);

    let last = admin_ns(&certs, &format!("127.0.0.1:{port1}"), &["remove", "--id", "1"]);
    assert!(!last.status.success());
    let stderr = String::from_utf8_lossy(&last.stderr);
    assert!(
        stderr.contains("removing name server 1") && stderr.contains("last voter"),
        "{stderr}"
    );
}

/// Runs `tessera admin GROUP --servers SERVERS --certs CERTS ARGS...`.
fn admin(group: &str, certs: &Path, servers: &str, args: &[&str]) -> Output {
    let mut all = vec![
        "admin",
        group,
        "--servers",
        servers,
        "--certs",
        certs.to_str().expect("utf8"),
    ];
    all.extend_from_slice(args);
    tessera(&all)
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

#[test]
fn keys_and_grants_through_the_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    let init = tessera(&["admin", "init", "--out", certs.to_str().expect("utf8"), "--node", "ns1"]);
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let port = free_port();
    let _ns1 = spawn_nameserver(&write_config(dir.path(), 1, port, true));
    let servers = format!("127.0.0.1:{port}");
    assert_eq!(voters(&certs, &servers), vec![1]);

    let bucket = json_lines(&admin(
        "bucket",
        &certs,
        &servers,
        &["create", "photos", "--owner", "alice"],
    ));
    assert_eq!(bucket[0]["created"], "photos");
    let bad = admin("bucket", &certs, &servers, &["create", "other", "--policy", "ec:4"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("expected ec:K:M or rep:N"));

    let created = json_lines(&admin("key", &certs, &servers, &["create", "alice"]));
    let key_id = created[0]["key_id"].as_str().expect("key id").to_string();
    let secret = created[0]["secret"].as_str().expect("secret");
    assert!(key_id.starts_with("TK") && key_id.len() == 20, "{key_id}");
    assert_eq!(secret.len(), 40);
    let listed = json_lines(&admin("key", &certs, &servers, &["list", "--owner", "alice"]));
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["key_id"], key_id.as_str());
    assert!(listed[0].get("secret").is_none(), "listing never shows secrets");

    let allowed = admin("bucket", &certs, &servers, &["allow", &key_id, "photos", "write"]);
    assert!(allowed.status.success(), "{}", String::from_utf8_lossy(&allowed.stderr));
    let missing = admin(
        "bucket",
        &certs,
        &servers,
        &["allow", "TKNOSUCHKEY000000000", "photos", "read"],
    );
    assert!(!missing.status.success(), "granting to an unknown key fails");

    let revoked = json_lines(&admin("key", &certs, &servers, &["revoke", &key_id]));
    assert_eq!(revoked[0]["revoked"], key_id.as_str());
    assert!(json_lines(&admin("key", &certs, &servers, &["list"])).is_empty());
    let again = admin("key", &certs, &servers, &["revoke", &key_id]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("no such access key"));
}
