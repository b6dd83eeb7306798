//! `tessera dev` as a user runs it, driven by boto3: the real binary starts
//! on a fresh data directory and prints `ready`; `boto3_session.py session`
//! runs a realistic S3 session against it (buckets, put/get/head/list,
//! copy, delete, multipart via the transfer manager, presigned URLs,
//! conditional requests) with boto3's default checksums and no retries;
//! `/metrics` counts the S3 requests; after SIGTERM the process exits
//! cleanly, and a second start on the same directory serves every object
//! written before byte for byte (`boto3_session.py verify`).
//!
//! Needs `python3` with boto3 (`pip install boto3`); without it the test
//! fails and says so.

mod support;

use support::{free_port, KillOnDrop, TESSERA};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/boto3_session.py");

/// A running `tessera dev` and where its log goes.
struct Dev {
    process: KillOnDrop,
    log: PathBuf,
}

impl Dev {
    /// Starts `tessera dev` and waits for its `ready` line.
    fn start(data: &Path, s3: SocketAddr, metrics: SocketAddr, run: usize) -> Dev {
        let log = data.with_file_name(format!("dev-{run}.log"));
        let stderr = std::fs::File::create(&log).expect("create the dev log");
        let mut child = Command::new(TESSERA)
            .args(["dev", "--data"])
            .arg(data)
            .args(["--s3", &s3.to_string(), "--metrics", &metrics.to_string()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn tessera dev");
        let stdout = child.stdout.take().expect("dev stdout");
        let dev = Dev {
            process: KillOnDrop(child),
            log,
        };
        let (lines, seen) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut printed = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match seen.recv_timeout(left) {
                Ok(line) if line.trim() == "ready" => return dev,
                Ok(line) => printed.push(line),
                Err(_) => panic!(
                    "tessera dev printed no `ready` within {READY_TIMEOUT:?}; stdout {printed:?}; log:\n{}",
                    dev.log_tail()
                ),
            }
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// SIGTERM, then waits for a clean exit.
    fn terminate(mut self) {
        let pid = libc::pid_t::try_from(self.process.0.id()).expect("pid");
        // SAFETY: kill(2) on the pid of a child this test spawned and has
        // not reaped yet.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(sent, 0, "SIGTERM to tessera dev");
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = self.process.0.try_wait().expect("wait for tessera dev") {
                assert!(
                    status.success(),
                    "tessera dev exited with {status} after SIGTERM; log:\n{}",
                    self.log_tail()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tessera dev still running {EXIT_TIMEOUT:?} after SIGTERM; log:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Fails (never skips) when boto3 cannot be imported.
fn require_boto3() {
    let probe = Command::new("python3").args(["-c", "import boto3"]).output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "this test needs boto3: `pip install boto3` (python3 -c 'import boto3' failed: {})",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!("this test needs python3 with boto3 (`pip install boto3`): running python3 failed: {e}"),
    }
}

/// The fields of `DIR/dev.json` the script needs.
fn dev_env(data: &Path) -> Vec<(&'static str, String)> {
    let path = data.join("dev.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let info: serde_json::Value = serde_json::from_str(&text).expect("dev.json is JSON");
    let field = |name: &str| {
        info[name]
            .as_str()
            .unwrap_or_else(|| panic!("dev.json lacks {name}: {text}"))
            .to_string()
    };
    vec![
        ("TESSERA_S3_ENDPOINT", field("s3_endpoint")),
        ("TESSERA_ACCESS_KEY", field("access_key")),
        ("TESSERA_SECRET_KEY", field("secret_key")),
        ("TESSERA_REGION", field("region")),
    ]
}

/// Runs `boto3_session.py MODE MANIFEST`; `Err` with its output unless
/// it exits 0.
fn run_script(mode: &str, manifest: &Path, env: &[(&str, String)], dev: &Dev) -> Result<(), String> {
    let out = Command::new("python3")
        .arg(SCRIPT)
        .arg(mode)
        .arg(manifest)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run python3");
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "boto3 {mode} failed ({}):\nstdout:\n{}\nstderr:\n{}\ndev log tail:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        dev.log_tail()
    ))
}

/// `GET /metrics` over a plain TCP connection; the body.
fn scrape(metrics: SocketAddr) -> String {
    let mut stream = TcpStream::connect(metrics).expect("connect to /metrics");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {metrics}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("send GET /metrics");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read /metrics");
    let text = String::from_utf8_lossy(&raw).into_owned();
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "GET /metrics: {}",
        &text[..text.len().min(200)]
    );
    text
}

#[test]
fn boto3_session_against_tessera_dev_survives_a_restart() {
    require_boto3();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let manifest = dir.path().join("manifest.json");
    let s3: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");

    let dev = Dev::start(&data, s3, metrics, 1);
    let env = dev_env(&data);
    assert_eq!(env[0].1, format!("http://{s3}"), "dev.json names the S3 endpoint");
    // A failed session still leaves its manifest (what it stored): the
    // restart is checked either way, the failures reported at the end.
    let mut failures = Vec::new();
    failures.extend(run_script("session", &manifest, &env, &dev).err());
    assert!(manifest.exists(), "the session wrote no manifest: {failures:?}");
    let scraped = scrape(metrics);
    assert!(
        scraped.lines().any(|l| l.starts_with("s3_requests_total{")),
        "/metrics has s3_requests_total:\n{scraped}"
    );
    dev.terminate();

    let dev = Dev::start(&data, s3, metrics, 2);
    assert_eq!(dev_env(&data), env, "the restart keeps the endpoint and the access key");
    failures.extend(run_script("verify", &manifest, &env, &dev).err());
    dev.terminate();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
