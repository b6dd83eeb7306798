//! The `compose` backend: the cluster of `deploy/docker-compose.yml`, one
//! container per node (`tessera-<node>`) on a bridge network with fixed
//! addresses. Kill is `docker kill -s KILL`, restart `docker start`, pause
//! `docker pause` (the cgroup freezer); partitions are iptables rules run by
//! the host's `iptables` inside each container's network namespace
//! (`nsenter -t PID -n`), so the image needs no tools.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

use super::{Control, Node, Role};
use crate::sim::Rng;

/// The name servers' RPC addresses and the certificates inside every container.
const NS_SERVERS: &str = "172.28.0.11:7001,172.28.0.12:7001,172.28.0.13:7001";
const CERTS_DIR: &str = "/certs";
/// The object servers' partition count (`partitions` in deploy/compose/).
const PARTITIONS: &str = "8";

/// The topology of `deploy/docker-compose.yml`.
pub struct Compose {
    nodes: Vec<Node>,
}

impl Default for Compose {
    fn default() -> Self {
        Compose::new()
    }
}

impl Compose {
    pub fn new() -> Self {
        let mut nodes = Vec::new();
        let mut add = |prefix: &str, role: Role, count: u8, ip_base: u8| {
            for i in 1..=count {
                nodes.push(Node {
                    name: format!("{prefix}{i}"),
                    role,
                    ip: Ipv4Addr::new(172, 28, 0, ip_base + i),
                    raft_id: if role == Role::NameServer { u64::from(i) } else { 0 },
                });
            }
        };
        add("ns", Role::NameServer, 3, 10);
        add("os", Role::ObjectServer, 3, 20);
        add("cs", Role::ChunkServer, 6, 30);
        add("gw", Role::Gateway, 2, 40);
        Compose { nodes }
    }

    fn container(node: &Node) -> String {
        format!("tessera-{}", node.name)
    }

    fn pid(node: &Node) -> anyhow::Result<Option<u32>> {
        let out = run("docker", &["inspect", "-f", "{{.State.Pid}}", &Self::container(node)])?;
        let pid: u32 = out
            .trim()
            .parse()
            .with_context(|| format!("parsing the pid of {}", node.name))?;
        Ok((pid != 0).then_some(pid))
    }

    /// Runs `program ARGS` (an iptables tool) in the network namespace of
    /// `node` with `input` on stdin; nothing if the node is not running.
    fn in_netns(node: &Node, program: &str, args: &[&str], input: &str) -> anyhow::Result<()> {
        let Some(pid) = Self::pid(node)? else {
            return Ok(()); // a stopped container has no network to cut
        };
        let pid = pid.to_string();
        let mut argv = vec!["-t", pid.as_str(), "-n", program];
        argv.extend_from_slice(args);
        run_with_input("nsenter", &argv, input).map(drop)
    }
}

impl Control for Compose {
    fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    fn kill(&self, node: &Node) -> anyhow::Result<()> {
        run("docker", &["kill", "-s", "KILL", &Self::container(node)]).map(drop)
    }

    fn start(&self, node: &Node) -> anyhow::Result<()> {
        run("docker", &["start", &Self::container(node)]).map(drop)
    }

    fn pause(&self, node: &Node) -> anyhow::Result<()> {
        run("docker", &["pause", &Self::container(node)]).map(drop)
    }

    fn resume(&self, node: &Node) -> anyhow::Result<()> {
        match run("docker", &["unpause", &Self::container(node)]) {
            // Nothing to resume: running, or killed (start brings it back).
            Err(e) if format!("{e:#}").contains("is not paused") || format!("{e:#}").contains("not running") => Ok(()),
            other => other.map(drop),
        }
    }

    /// One `iptables-restore` per node, so a partition takes effect within
    /// a fraction of a second rather than rule by rule.
    fn partition(&self, groups: &[Vec<Node>]) -> anyhow::Result<()> {
        for (i, group) in groups.iter().enumerate() {
            let mut rules = String::from("*filter\n");
            for peer in groups.iter().enumerate().filter(|(j, _)| *j != i).flat_map(|(_, g)| g) {
                rules.push_str(&format!("-A INPUT -s {} -j DROP\n", peer.ip));
            }
            rules.push_str("COMMIT\n");
            for node in group {
                Self::in_netns(node, "iptables-restore", &["-w", "--noflush"], &rules)?;
            }
        }
        Ok(())
    }

    fn heal(&self) -> anyhow::Result<()> {
        for node in &self.nodes {
            Self::in_netns(node, "iptables", &["-w", "-F", "INPUT"], "")?;
        }
        Ok(())
    }

    /// Edits the files in the node's data volume from the host: the page
    /// cache is shared, so the running chunk server reads the flipped bit.
    fn corrupt_chunks(&self, node: &Node, files_max: usize, seed: u64) -> anyhow::Result<usize> {
        let volume = format!("tessera_{}-data", node.name);
        let mountpoint = run("docker", &["volume", "inspect", "-f", "{{.Mountpoint}}", &volume])?;
        let chunks = Path::new(mountpoint.trim()).join("chunks");
        // The most recently written files, near their ends: the data the
        // workload is about to read back, not long-dead bytes.
        let mut files: Vec<(std::time::SystemTime, PathBuf, u64)> = std::fs::read_dir(&chunks)
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
        let mut rng = Rng::new(seed);
        let mut hit = 0;
        for (_, path, len) in files.into_iter().take(files_max) {
            let recent_bytes = (len - CHUNK_FILE_HEADER_BYTES).min(CORRUPT_WINDOW_BYTES);
            let offset = len - recent_bytes + rng.below(recent_bytes);
            flip_bit(&path, offset, rng.below(8) as u8).with_context(|| format!("corrupting {}", path.display()))?;
            hit += 1;
        }
        Ok(hit)
    }

    /// Every role serves `/metrics` on :9100 of its address (the host
    /// reaches the bridge network).
    fn metrics(&self, node: &Node) -> anyhow::Result<String> {
        let address = std::net::SocketAddr::from((node.ip, METRICS_PORT));
        let mut stream = std::net::TcpStream::connect_timeout(&address, METRICS_TIMEOUT)
            .with_context(|| format!("connecting to {address}"))?;
        stream.set_read_timeout(Some(METRICS_TIMEOUT))?;
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes())?;
        let mut response = String::new();
        std::io::Read::read_to_string(&mut stream, &mut response)
            .with_context(|| format!("reading {address}/metrics"))?;
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

    /// Runs in the first gateway or name-server container that answers:
    /// a killed or paused node cannot run it, a partitioned one times out.
    fn admin(&self, args: &[&str]) -> anyhow::Result<String> {
        let (command, rest) = args.split_first().context("an admin command needs a subcommand")?;
        let mut last_error = None;
        let candidates = self
            .of_role(Role::Gateway)
            .into_iter()
            .chain(self.of_role(Role::NameServer));
        for node in candidates {
            let container = Self::container(&node);
            let mut argv = vec!["exec", container.as_str(), "/tessera", "admin", command];
            argv.extend_from_slice(&["--servers", NS_SERVERS, "--certs", CERTS_DIR]);
            if *command == "status" {
                argv.extend_from_slice(&["--partitions", PARTITIONS]);
            }
            argv.extend_from_slice(rest);
            match run("docker", &argv) {
                Ok(out) => return Ok(out),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("the cluster has no gateway or name server")))
    }
}

const METRICS_PORT: u16 = 9100;
const METRICS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Bit flips land within this many bytes of a chunk file's end.
const CORRUPT_WINDOW_BYTES: u64 = 256 << 10;

/// Records start after the chunk file's header (chunkserver `format.rs`).
const CHUNK_FILE_HEADER_BYTES: u64 = 4096;

fn flip_bit(path: &Path, offset: u64, bit: u8) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, offset)?;
    byte[0] ^= 1 << bit;
    file.write_all_at(&byte, offset)
}

/// Runs a command to completion; its stdout, or an error carrying stderr.
fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    run_with_input(program, args, "")
}

/// [`run`] with `input` on the command's stdin.
fn run_with_input(program: &str, args: &[&str], input: &str) -> anyhow::Result<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_topology_is_the_compose_files() {
        let compose = Compose::new();
        let count = |role| compose.of_role(role).len();
        assert_eq!(
            (
                count(Role::NameServer),
                count(Role::ObjectServer),
                count(Role::ChunkServer),
                count(Role::Gateway)
            ),
            (3, 3, 6, 2)
        );
        let ns2 = &compose.of_role(Role::NameServer)[1];
        assert_eq!(
            (ns2.name.as_str(), ns2.ip, ns2.raft_id),
            ("ns2", Ipv4Addr::new(172, 28, 0, 12), 2)
        );
        assert_eq!(Compose::container(ns2), "tessera-ns2");
        let compose_file = include_str!("../../../deploy/docker-compose.yml");
        for node in compose.nodes() {
            assert!(
                compose_file.contains(&format!("container_name: tessera-{}", node.name)),
                "{}",
                node.name
            );
            assert!(
                compose_file.contains(&node.ip.to_string()),
                "{} at {}",
                node.name,
                node.ip
            );
        }
    }
}
