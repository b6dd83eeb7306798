//! The `tessera` binary as an operator runs it: `admin init`, `chunkserver
//! --config`, `admin chunkserver disks`, `/metrics`, SIGTERM.

mod support;

use support::{free_port, KillOnDrop, TESSERA};

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn tessera(args: &[&str]) -> Output {
    Command::new(TESSERA).args(args).output().expect("run tessera")
}

fn write_config(dir: &Path, rpc_port: u16, metrics_port: u16) -> std::path::PathBuf {
    let path = dir.join("cs.toml");
    let text = format!(
        r#"
node_id = 1
listen = "127.0.0.1:{rpc_port}"
certs_dir = "{certs}"
identity = "cs1"
metrics_listen = "127.0.0.1:{metrics_port}"
[store]
[[store.disks]]
path = "{disk}"
"#,
        certs = dir.join("certs").display(),
        disk = dir.join("disk1").display(),
    );
    std::fs::write(&path, text).expect("write config");
    path
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    Some(body)
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn operator_session_init_run_inspect_metrics_and_stop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    let certs_arg = certs.to_str().expect("utf8");
    let init = tessera(&["admin", "init", "--out", certs_arg, "--node", "cs1"]);
    assert!(
        init.status.success(),
        "init failed: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    assert!(certs.join("ca.pem").exists() && certs.join("cs1.key").exists() && certs.join("admin.pem").exists());
    let again = tessera(&["admin", "init", "--out", certs_arg, "--node", "cs1"]);
    assert!(!again.status.success(), "a second init must refuse to overwrite the CA");
    let idempotent = tessera(&["admin", "init", "--out", certs_arg, "--node", "cs1", "--if-missing"]);
    assert!(idempotent.status.success());

    let (rpc_port, metrics_port) = (free_port(), free_port());
    let config = write_config(dir.path(), rpc_port, metrics_port);
    let child = Command::new(TESSERA)
        .args(["chunkserver", "--config", config.to_str().expect("utf8")])
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn chunk server");
    let mut server = KillOnDrop(child);

    let addr = format!("127.0.0.1:{rpc_port}");
    let mut disks = None;
    let served = wait_until(Duration::from_secs(20), || {
        let out = tessera(&["admin", "chunkserver", "--addr", &addr, "--certs", certs_arg, "disks"]);
        disks = Some(String::from_utf8_lossy(&out.stdout).to_string());
        out.status.success()
    });
    assert!(served, "chunk server never answered `admin chunkserver disks`");
    let disks = disks.expect("output");
    assert!(disks.contains("\"healthy\":true") && disks.contains("disk1"), "{disks}");

    let metrics = http_get(metrics_port, "/metrics").expect("metrics endpoint answers");
    assert!(
        metrics.contains("rpc_server_calls_total"),
        "no RPC metrics in:\n{metrics}"
    );
    assert!(metrics.contains("chunk.disks"), "per-method label missing:\n{metrics}");

    // SIGTERM: a clean, successful exit.
    let pid = server.0.id() as i32;
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let exited = wait_until(Duration::from_secs(15), || matches!(server.0.try_wait(), Ok(Some(_))));
    assert!(exited, "chunk server did not stop on SIGTERM");
    let status = server.0.wait().expect("status");
    assert!(status.success(), "exit status {status}");
}

#[test]
fn bad_config_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "node_id = \"one\"\n").expect("write");
    let out = tessera(&["chunkserver", "--config", path.to_str().expect("utf8")]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("node_id") && stderr.contains("bad.toml"), "{stderr}");
    let missing = tessera(&["chunkserver", "--config", "/nonexistent/cs.toml"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("reading config /nonexistent/cs.toml"));
}
