//! What both backends do from the host: run commands, read a node's
//! `/metrics`, and damage chunk files in a chunk server's data directory
//! (bit flips, truncation) under the running server.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

use super::{Grudge, Node};
use crate::sim::Rng;

const METRICS_PORT: u16 = 9100;
const METRICS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Bit flips land within this many bytes of a chunk file's end.
const CORRUPT_WINDOW_BYTES: u64 = 256 << 10;

/// Records start after the chunk file's header (chunkserver `format.rs`).
const CHUNK_FILE_HEADER_BYTES: u64 = 4096;

/// Flips one random bit near the end of each of the `files_max` newest
/// chunk files in `chunks`; returns how many were hit.
pub fn corrupt_chunks(chunks: &Path, files_max: usize, seed: u64) -> anyhow::Result<usize> {
    let mut rng = Rng::new(seed);
    let files = newest_chunk_files(chunks, files_max)?;
    for (path, len) in &files {
        let recent_bytes = (len - CHUNK_FILE_HEADER_BYTES).min(CORRUPT_WINDOW_BYTES);
        let offset = len - recent_bytes + rng.below(recent_bytes);
        flip_bit(path, offset, rng.below(8) as u8).with_context(|| format!("corrupting {}", path.display()))?;
    }
    Ok(files.len())
}

/// Cuts each of the `files_max` newest chunk files in `chunks` short by
/// 1 B ..= `CORRUPT_WINDOW_BYTES`; returns how many were cut.
pub fn truncate_chunks(chunks: &Path, files_max: usize, seed: u64) -> anyhow::Result<usize> {
    let mut rng = Rng::new(seed);
    let files = newest_chunk_files(chunks, files_max)?;
    for (path, len) in &files {
        let cut_bytes = 1 + rng.below((len - CHUNK_FILE_HEADER_BYTES).min(CORRUPT_WINDOW_BYTES));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        file.set_len(len - cut_bytes)
            .with_context(|| format!("truncating {}", path.display()))?;
    }
    Ok(files.len())
}

/// Runs an iptables tool in a node's network namespace: (node, program,
/// arguments, stdin); nothing if the node is not running.
pub type InNetns = fn(&Node, &str, &[&str], &str) -> anyhow::Result<()>;

/// One `iptables-restore` per node of `grudge`, so a partition takes
/// effect within a fraction of a second rather than rule by rule.
pub fn cut(grudge: &Grudge, in_netns: InNetns) -> anyhow::Result<()> {
    for (node, peers) in grudge {
        in_netns(node, "iptables-restore", &["-w", "--noflush"], &drop_rules(peers))?;
    }
    Ok(())
}

/// Flushes the INPUT chain of every node: every partition healed.
pub fn heal(nodes: &[Node], in_netns: InNetns) -> anyhow::Result<()> {
    for node in nodes {
        in_netns(node, "iptables", &["-w", "-F", "INPUT"], "")?;
    }
    Ok(())
}

/// The `iptables-restore` input that drops every packet from `peers`.
fn drop_rules(peers: &[Node]) -> String {
    let mut rules = String::from("*filter\n");
    for peer in peers {
        rules.push_str(&format!("-A INPUT -s {} -j DROP\n", peer.ip));
    }
    rules.push_str("COMMIT\n");
    rules
}

/// `GET http://IP:9100/metrics` of a node: every role serves it.
pub fn fetch_metrics(node: &Node) -> anyhow::Result<String> {
    let address = std::net::SocketAddr::from((node.ip, METRICS_PORT));
    let mut stream = std::net::TcpStream::connect_timeout(&address, METRICS_TIMEOUT)
        .with_context(|| format!("connecting to {address}"))?;
    stream.set_read_timeout(Some(METRICS_TIMEOUT))?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    std::io::Read::read_to_string(&mut stream, &mut response).with_context(|| format!("reading {address}/metrics"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("a response without a header end")?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.1 200"),
        "GET {address}/metrics: {}",
        head.lines().next().unwrap_or("")
    );
    Ok(body.to_owned())
}

/// The `files_max` most recently written chunk files in `chunks` holding
/// records, with their lengths: the data the workload is about to read
/// back, not long-dead bytes.
fn newest_chunk_files(chunks: &Path, files_max: usize) -> anyhow::Result<Vec<(PathBuf, u64)>> {
    let mut files: Vec<(std::time::SystemTime, PathBuf, u64)> = std::fs::read_dir(chunks)
        .with_context(|| format!("listing {}", chunks.display()))?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".chunk"))
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((meta.modified().ok()?, e.path(), meta.len()))
        })
        .filter(|(_, _, len)| *len > CHUNK_FILE_HEADER_BYTES + 64)
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    Ok(files
        .into_iter()
        .take(files_max)
        .map(|(_, path, len)| (path, len))
        .collect())
}

fn flip_bit(path: &Path, offset: u64, bit: u8) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, offset)?;
    byte[0] ^= 1 << bit;
    file.write_all_at(&byte, offset)
}

/// Runs a command to completion; its stdout, or an error carrying stderr.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    run_with_input(program, args, "")
}

/// [`run`] with `input` on the command's stdin.
pub fn run_with_input(program: &str, args: &[&str], input: &str) -> anyhow::Result<String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program} {}", args.join(" ")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .with_context(|| format!("writing to {program}"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {program} {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
