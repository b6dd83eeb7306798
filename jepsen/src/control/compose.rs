//! The `compose` backend: the cluster of `deploy/docker-compose.yml`, one
//! container per node (`tessera-<node>`) on a bridge network with fixed
//! addresses. Kill is `docker kill -s KILL`, restart `docker start`, pause
//! `docker pause` (the cgroup freezer); partitions are iptables rules run by
//! the host's `iptables` inside each container's network namespace
//! (`nsenter -t PID -n`), so the image needs no tools.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::host::{self, run, run_with_input};
use super::{ns_servers, topology, Control, Grudge, Node, Role};

/// deploy/docker-compose.yml's network, 172.28.0.0/24.
const NETWORK: [u8; 3] = [172, 28, 0];

/// The certificates inside every container.
const CERTS_DIR: &str = "/certs";
/// Tries of `docker pause` (see [`Compose::pause`]).
const PAUSE_ATTEMPTS: u32 = 3;

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
        Compose {
            nodes: topology(NETWORK),
        }
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

    /// Retried: the cgroup freezer sometimes fails with "unable to freeze"
    /// while the container's processes are busy.
    fn pause(&self, node: &Node) -> anyhow::Result<()> {
        let container = Self::container(node);
        let mut attempt = 1;
        loop {
            match run("docker", &["pause", &container]) {
                Err(e) if attempt < PAUSE_ATTEMPTS && format!("{e:#}").contains("unable to freeze") => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                other => return other.map(drop),
            }
        }
    }

    fn resume(&self, node: &Node) -> anyhow::Result<()> {
        match run("docker", &["unpause", &Self::container(node)]) {
            // Nothing to resume: running, or killed (start brings it back).
            Err(e) if format!("{e:#}").contains("is not paused") || format!("{e:#}").contains("not running") => Ok(()),
            other => other.map(drop),
        }
    }

    fn cut(&self, grudge: &Grudge) -> anyhow::Result<()> {
        host::cut(grudge, Self::in_netns)
    }

    fn heal(&self) -> anyhow::Result<()> {
        host::heal(&self.nodes, Self::in_netns)
    }

    /// Edits the files in the node's data volume from the host: the page
    /// cache is shared, so the running chunk server reads the flipped bit.
    fn corrupt_chunks(&self, node: &Node, files_max: usize, seed: u64) -> anyhow::Result<usize> {
        host::corrupt_chunks(&chunks_dir(node)?, files_max, seed)
    }

    fn truncate_chunks(&self, node: &Node, files_max: usize, seed: u64) -> anyhow::Result<usize> {
        host::truncate_chunks(&chunks_dir(node)?, files_max, seed)
    }

    /// Every role serves `/metrics` on :9100 of its address (the host
    /// reaches the bridge network).
    fn metrics(&self, node: &Node) -> anyhow::Result<String> {
        host::fetch_metrics(node)
    }

    /// Runs in the first gateway or name-server container that answers:
    /// a killed or paused node cannot run it, a partitioned one times out.
    fn admin(&self, args: &[&str]) -> anyhow::Result<String> {
        let (command, rest) = args.split_first().context("an admin command needs a subcommand")?;
        let mut last_error = None;
        let servers = ns_servers(&self.nodes);
        let candidates = self
            .of_role(Role::Gateway)
            .into_iter()
            .chain(self.of_role(Role::NameServer));
        for node in candidates {
            let container = Self::container(&node);
            let mut argv = vec!["exec", container.as_str(), "/tessera", "admin", command];
            argv.extend_from_slice(&["--servers", &servers, "--certs", CERTS_DIR]);
            argv.extend_from_slice(rest);
            match run("docker", &argv) {
                Ok(out) => return Ok(out),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("the cluster has no gateway or name server")))
    }
}

/// The chunk directory of a chunk server, in its data volume on the host.
fn chunks_dir(node: &Node) -> anyhow::Result<PathBuf> {
    let volume = format!("tessera_{}-data", node.name);
    let mountpoint = run("docker", &["volume", "inspect", "-f", "{{.Mountpoint}}", &volume])?;
    Ok(Path::new(mountpoint.trim()).join("chunks"))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

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
            ("ns2", Ipv4Addr::new(172, 28, 0, 12), 12)
        );
        let ns_configs = [
            include_str!("../../../deploy/compose/ns1.toml"),
            include_str!("../../../deploy/compose/ns2.toml"),
            include_str!("../../../deploy/compose/ns3.toml"),
        ];
        let gateway_config = include_str!("../../../deploy/compose/gw1.toml");
        let servers = ns_servers(compose.nodes());
        assert_eq!(servers.split(',').count(), 3);
        for addr in servers.split(',') {
            assert!(
                gateway_config.contains(&format!("\"{addr}\"")),
                "{addr} is a name server of the configs"
            );
        }
        for (node, config) in compose.of_role(Role::NameServer).iter().zip(ns_configs) {
            let line = format!("node_id = {}\n", node.raft_id);
            assert!(
                config.contains(&line),
                "{} must have raft id {}",
                node.name,
                node.raft_id
            );
        }
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
