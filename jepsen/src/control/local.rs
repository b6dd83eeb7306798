//! The `local` backend, for machines without a Docker engine: the cluster
//! of deploy/ as plain processes of one `tessera` binary, each in a network
//! namespace the harness makes (`tsj-<node>`, a veth pair on the bridge
//! `tsj0`, 10.77.0.0/24, the same last octets as compose). Configs are
//! deploy/compose/*.toml with the addresses and paths rewritten; data,
//! certificates and logs live under one root directory.
//!
//! Kill is SIGKILL of the process and start spawns it again on its data;
//! pause is SIGSTOP/SIGCONT; partitions are the compose backend's iptables
//! rules, run in each namespace with `ip netns exec`; chunk-file damage
//! edits the node's data directory. Needs root, iproute2 and iptables.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::host::{self, run, run_with_input};
use super::{ns_servers, topology, Control, Grudge, Node, Role};
use crate::run::Credentials;

/// The namespaces' network, 10.77.0.0/24 (.1 is the host on the bridge).
pub const NETWORK: [u8; 3] = [10, 77, 0];
const BRIDGE: &str = "tsj0";
const NETNS_PREFIX: &str = "tsj-";
/// The compose network the configs in deploy/compose/ are written for.
const COMPOSE_NETWORK_PREFIX: &str = "172.28.0.";
const LOCAL_NETWORK_PREFIX: &str = "10.77.0.";
const S3_PORT: u16 = 9000;
const UP_TIMEOUT: Duration = Duration::from_secs(180);
/// Most copies of the bridge's FORWARD rule teardown removes.
const FORWARD_RULES_MAX: usize = 64;
/// A killed process is reaped within this.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// The running local cluster. Dropping it does not stop it: call
/// [`Local::down`].
pub struct Local {
    nodes: Vec<Node>,
    root: PathBuf,
    binary: PathBuf,
    /// The live process of each node, by name.
    children: Mutex<HashMap<String, Child>>,
}

impl Local {
    /// Builds the network from nothing (removing a previous run's), starts
    /// every node with the configs of `repo`/deploy/compose under `root`
    /// (emptied first), waits until the cluster is healthy and creates an
    /// access key.
    pub fn up(repo: &Path, binary: &Path, root: &Path) -> anyhow::Result<(Local, Credentials)> {
        let binary = binary
            .canonicalize()
            .with_context(|| format!("locating {}", binary.display()))?;
        teardown_network();
        if root.exists() {
            std::fs::remove_dir_all(root).with_context(|| format!("emptying {}", root.display()))?;
        }
        std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        let local = Local {
            nodes: topology(NETWORK),
            root: root.to_path_buf(),
            binary,
            children: Mutex::new(HashMap::new()),
        };
        build_network(&local.nodes)?;
        local.write_certs()?;
        for node in &local.nodes {
            let template = repo.join("deploy/compose").join(format!("{}.toml", node.name));
            let template =
                std::fs::read_to_string(&template).with_context(|| format!("reading {}", template.display()))?;
            std::fs::create_dir_all(local.data_dir(node))?;
            std::fs::write(local.config_path(node), local_config(&template, node, root))?;
        }
        for node in &local.nodes {
            local.start(node)?;
        }
        local.wait_healthy()?;
        let credentials = local.create_key()?;
        Ok((local, credentials))
    }

    /// Kills every process and removes the namespaces and the bridge; the
    /// root directory (logs, data) stays for inspection.
    pub fn down(&self) {
        for node in &self.nodes {
            let _ = self.kill(node);
        }
        teardown_network();
    }

    fn data_dir(&self, node: &Node) -> PathBuf {
        self.root.join(&node.name).join("data")
    }

    fn config_path(&self, node: &Node) -> PathBuf {
        self.root.join(&node.name).join("node.toml")
    }

    fn certs_dir(&self) -> PathBuf {
        self.root.join("certs")
    }

    fn write_certs(&self) -> anyhow::Result<()> {
        let certs = self.certs_dir();
        let certs = certs.to_string_lossy();
        let mut args = vec!["admin", "init", "--out", certs.as_ref()];
        for node in &self.nodes {
            args.extend_from_slice(&["--node", node.name.as_str()]);
        }
        run(&self.binary.to_string_lossy(), &args).map(drop)
    }

    /// Runs `tessera admin COMMAND --servers .. --certs .. ARGS` from the host.
    fn admin_command(&self, args: &[&str]) -> anyhow::Result<String> {
        let (command, rest) = args.split_first().context("an admin command needs a subcommand")?;
        let certs = self.certs_dir();
        let certs = certs.to_string_lossy();
        let servers = ns_servers(&self.nodes);
        let mut argv = vec!["admin", *command, "--servers", &servers, "--certs", certs.as_ref()];
        argv.extend_from_slice(rest);
        run(&self.binary.to_string_lossy(), &argv)
    }

    /// Until every node serves `/metrics` and `admin status` is healthy
    /// with the 9 object and chunk servers alive (as deploy/cluster.sh).
    fn wait_healthy(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + UP_TIMEOUT;
        loop {
            self.check_running()?;
            let serving = self.nodes.iter().all(|n| host::fetch_metrics(n).is_ok());
            if serving && self.admin_command(&["status"]).is_ok_and(|out| status_healthy(&out)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the local cluster is not healthy after {UP_TIMEOUT:?}; logs in {}",
                    self.root.display()
                );
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// Fails naming the first node whose process exited.
    fn check_running(&self) -> anyhow::Result<()> {
        let mut children = lock(&self.children);
        for (name, child) in children.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                bail!(
                    "{name} exited ({status}); see {}",
                    self.root.join(name).join("log").display()
                );
            }
        }
        Ok(())
    }

    fn create_key(&self) -> anyhow::Result<Credentials> {
        let out = self.admin_command(&["key", "create", "admin"])?;
        let key: serde_json::Value = serde_json::from_str(out.lines().next().unwrap_or_default())
            .with_context(|| format!("parsing the created key: {out:?}"))?;
        let field = |name: &str| -> anyhow::Result<String> {
            key.get(name)
                .and_then(|v| v.as_str())
                .map(String::from)
                .with_context(|| format!("no {name} in {out:?}"))
        };
        Ok(Credentials {
            s3_endpoints: self
                .of_role(Role::Gateway)
                .iter()
                .map(|gw| format!("http://{}:{S3_PORT}", gw.ip))
                .collect(),
            access_key: field("key_id")?,
            secret_key: field("secret")?,
            region: "us-east-1".into(),
        })
    }

    /// Runs `program ARGS` in `node`'s namespace with `input` on stdin.
    fn in_netns(node: &Node, program: &str, args: &[&str], input: &str) -> anyhow::Result<()> {
        let netns = netns(node);
        let mut argv = vec!["netns", "exec", netns.as_str(), program];
        argv.extend_from_slice(args);
        run_with_input("ip", &argv, input).map(drop)
    }

    fn signal(&self, node: &Node, signal: &str) -> anyhow::Result<()> {
        let children = lock(&self.children);
        let Some(child) = children.get(&node.name) else {
            return Ok(()); // not running: nothing to signal
        };
        run("kill", &[signal, &child.id().to_string()]).map(drop)
    }
}

impl Control for Local {
    fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    fn kill(&self, node: &Node) -> anyhow::Result<()> {
        let Some(mut child) = lock(&self.children).remove(&node.name) else {
            return Ok(());
        };
        // A paused process dies of SIGKILL too.
        child.kill().with_context(|| format!("killing {}", node.name))?;
        let deadline = Instant::now() + KILL_WAIT;
        while child.try_wait()?.is_none() {
            anyhow::ensure!(Instant::now() < deadline, "{} did not die of SIGKILL", node.name);
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Spawns the node's process on its data unless it is running.
    fn start(&self, node: &Node) -> anyhow::Result<()> {
        let mut children = lock(&self.children);
        if let Some(child) = children.get_mut(&node.name) {
            if child.try_wait()?.is_none() {
                return Ok(());
            }
        }
        let log_path = self.root.join(&node.name).join("log");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let config = self.config_path(node);
        let child = Command::new("ip")
            .args(["netns", "exec", &netns(node)])
            .arg(&self.binary)
            .arg(subcommand(node.role))
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", node.name))?;
        children.insert(node.name.clone(), child);
        Ok(())
    }

    fn pause(&self, node: &Node) -> anyhow::Result<()> {
        self.signal(node, "-STOP")
    }

    fn resume(&self, node: &Node) -> anyhow::Result<()> {
        self.signal(node, "-CONT")
    }

    fn cut(&self, grudge: &Grudge) -> anyhow::Result<()> {
        host::cut(grudge, Self::in_netns)
    }

    fn heal(&self) -> anyhow::Result<()> {
        host::heal(&self.nodes, Self::in_netns)
    }

    fn corrupt_chunks(&self, node: &Node, files_max: usize, seed: u64) -> anyhow::Result<usize> {
        host::corrupt_chunks(&self.data_dir(node).join("chunks"), files_max, seed)
    }

    fn truncate_chunks(&self, node: &Node, files_max: usize, seed: u64) -> anyhow::Result<usize> {
        host::truncate_chunks(&self.data_dir(node).join("chunks"), files_max, seed)
    }

    fn metrics(&self, node: &Node) -> anyhow::Result<String> {
        host::fetch_metrics(node)
    }

    fn admin(&self, args: &[&str]) -> anyhow::Result<String> {
        self.admin_command(args)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn netns(node: &Node) -> String {
    format!("{NETNS_PREFIX}{}", node.name)
}

fn subcommand(role: Role) -> &'static str {
    match role {
        Role::NameServer => "nameserver",
        Role::ObjectServer => "objserver",
        Role::ChunkServer => "chunkserver",
        Role::Gateway => "gateway",
    }
}

/// `template` (a deploy/compose config) for `node` of the local cluster:
/// compose addresses become the namespaces' and `/data`, `/certs` become
/// directories under `root`.
pub fn local_config(template: &str, node: &Node, root: &Path) -> String {
    let data = root.join(&node.name).join("data");
    let certs = root.join("certs");
    template
        .replace(COMPOSE_NETWORK_PREFIX, LOCAL_NETWORK_PREFIX)
        .replace("\"/data\"", &format!("{:?}", data.to_string_lossy()))
        .replace("\"/certs\"", &format!("{:?}", certs.to_string_lossy()))
}

/// Whether `tessera admin status` output says healthy with the 9 object
/// and chunk servers alive.
fn status_healthy(out: &str) -> bool {
    let Ok(status) = serde_json::from_str::<serde_json::Value>(out.trim()) else {
        return false;
    };
    let healthy = status.get("healthy").and_then(|h| h.as_bool()) == Some(true);
    let alive = status
        .get("nodes")
        .and_then(|n| n.as_array())
        .map(|nodes| {
            nodes
                .iter()
                .filter(|n| n.get("alive").and_then(|a| a.as_bool()) == Some(true))
                .count()
        })
        .unwrap_or(0);
    healthy && alive >= 9
}

/// The bridge with the host at .1, and one namespace per node on it. The
/// host's FORWARD chain must pass bridged traffic: with br_netfilter loaded
/// (Docker loads it) bridged frames traverse it, and Docker sets its policy
/// to DROP.
fn build_network(nodes: &[Node]) -> anyhow::Result<()> {
    let host_ip = format!("{LOCAL_NETWORK_PREFIX}1/24");
    run("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
    run("ip", &["addr", "add", &host_ip, "dev", BRIDGE])?;
    run("ip", &["link", "set", BRIDGE, "up"])?;
    run(
        "iptables",
        &["-w", "-I", "FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"],
    )?;
    for node in nodes {
        let netns = netns(node);
        let address = format!("{}/24", node.ip);
        run("ip", &["netns", "add", &netns])?;
        run(
            "ip",
            &[
                "link", "add", &netns, "type", "veth", "peer", "name", "eth0", "netns", &netns,
            ],
        )?;
        run("ip", &["link", "set", &netns, "master", BRIDGE, "up"])?;
        run("ip", &["-n", &netns, "addr", "add", &address, "dev", "eth0"])?;
        run("ip", &["-n", &netns, "link", "set", "eth0", "up"])?;
        run("ip", &["-n", &netns, "link", "set", "lo", "up"])?;
    }
    Ok(())
}

/// Removes what [`build_network`] made, as far as it exists.
fn teardown_network() {
    for node in topology(NETWORK) {
        let netns = netns(&node);
        let _ = run("ip", &["link", "del", &netns]);
        let _ = run("ip", &["netns", "del", &netns]);
    }
    // Every copy an interrupted run may have left; bounded all the same.
    for _ in 0..FORWARD_RULES_MAX {
        let deleted = run(
            "iptables",
            &["-w", "-D", "FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"],
        );
        if deleted.is_err() {
            break;
        }
    }
    let _ = run("ip", &["link", "del", BRIDGE]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_rewritten_to_the_namespaces_and_the_root() {
        let root = Path::new("/var/tmp/jepsen-local");
        for node in topology(NETWORK) {
            let path = format!("{}/../deploy/compose/{}.toml", env!("CARGO_MANIFEST_DIR"), node.name);
            let template = std::fs::read_to_string(&path).expect("deploy/compose config");
            let config = local_config(&template, &node, root);
            assert!(!config.contains("172.28."), "{}: {config}", node.name);
            assert!(
                !config.contains("\"/data\"") && !config.contains("\"/certs\""),
                "{config}"
            );
            assert!(config.contains("\"/var/tmp/jepsen-local/certs\""), "{config}");
            if node.role != Role::Gateway {
                assert!(
                    config.contains(&node.ip.to_string()),
                    "{} listens on {}",
                    node.name,
                    node.ip
                );
            }
            if matches!(node.role, Role::NameServer | Role::ChunkServer) {
                let data = format!("\"/var/tmp/jepsen-local/{}/data\"", node.name);
                assert!(config.contains(&data), "{config}");
            }
            toml::from_str::<toml::Value>(&config).expect("still TOML");
        }
    }

    #[test]
    fn status_needs_health_and_nine_live_servers() {
        let nodes = |alive: usize| -> String {
            let list: Vec<String> = (0..9).map(|i| format!(r#"{{"alive": {}}}"#, i < alive)).collect();
            format!(r#"{{"healthy": true, "nodes": [{}]}}"#, list.join(","))
        };
        assert!(status_healthy(&nodes(9)));
        assert!(!status_healthy(&nodes(8)));
        assert!(!status_healthy(&nodes(9).replace("true,", "false,")));
        assert!(!status_healthy("not json"));
    }
}
