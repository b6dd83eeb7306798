//! Cluster control for the fault tests: which nodes a cluster has and the
//! faults the nemesis can inflict on them (kill -9, restart, pause, network
//! partitions), behind one trait so a scenario runs the same on any backend.
//!
//! Every method blocks (it runs `docker` or `iptables`); async callers use
//! `spawn_blocking`. Methods are idempotent where the fault allows it:
//! healing a healed network or resuming a running node succeeds.

pub mod compose;
pub mod host;
pub mod local;

use std::net::Ipv4Addr;

use serde::Serialize;

/// The cluster of deploy/ (3 name servers, 3 object servers, 6 chunk
/// servers, 2 gateways) on network `net`.0/24: a node's address ends in
/// 10 + i for name servers, 20 + i object servers, 30 + i chunk servers and
/// 40 + i gateways, and a name server's Raft id is that last octet
/// (deploy/compose/nsN.toml).
pub fn topology(net: [u8; 3]) -> Vec<Node> {
    let mut nodes = Vec::new();
    let mut add = |prefix: &str, role: Role, count: u8, ip_base: u8| {
        for i in 1..=count {
            nodes.push(Node {
                name: format!("{prefix}{i}"),
                role,
                ip: Ipv4Addr::new(net[0], net[1], net[2], ip_base + i),
                raft_id: if role == Role::NameServer {
                    u64::from(ip_base + i)
                } else {
                    0
                },
            });
        }
    };
    add("ns", Role::NameServer, 3, 10);
    add("os", Role::ObjectServer, 3, 20);
    add("cs", Role::ChunkServer, 6, 30);
    add("gw", Role::Gateway, 2, 40);
    nodes
}

/// The name servers' RPC port (deploy/compose/ns*.toml).
pub const NS_RPC_PORT: u16 = 7001;

/// `IP:port` of every name server, comma-separated (`tessera admin
/// --servers`).
pub fn ns_servers(nodes: &[Node]) -> String {
    let addrs: Vec<String> = nodes
        .iter()
        .filter(|n| n.role == Role::NameServer)
        .map(|n| format!("{}:{NS_RPC_PORT}", n.ip))
        .collect();
    addrs.join(",")
}

/// For each node, the peers whose packets it drops.
pub type Grudge = Vec<(Node, Vec<Node>)>;

/// The grudge of a partition into `groups`: every node drops packets from
/// the nodes of every other group.
pub fn grudge_of_groups(groups: &[Vec<Node>]) -> Grudge {
    let mut grudge = Vec::new();
    for (i, group) in groups.iter().enumerate() {
        let others: Vec<Node> = groups
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .flat_map(|(_, g)| g.iter().cloned())
            .collect();
        grudge.extend(group.iter().map(|node| (node.clone(), others.clone())));
    }
    grudge
}

/// The grudge of a bridge over each of `rings` (the Raft groups' members):
/// two members of each cannot reach each other but both reach the rest,
/// so each still sees a majority, and no two see the same one (Jepsen's
/// majorities ring, which for three members is this bridge).
pub fn grudge_of_bridges(rings: &[Vec<Node>]) -> Grudge {
    let mut grudge = Vec::new();
    for members in rings.iter().filter(|m| m.len() >= 3) {
        let (a, b) = (&members[0], &members[1]);
        grudge.push((a.clone(), vec![b.clone()]));
        grudge.push((b.clone(), vec![a.clone()]));
    }
    grudge
}

/// What a node runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    NameServer,
    ObjectServer,
    ChunkServer,
    Gateway,
}

/// One process of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Node {
    /// Short name (`ns1`, `os2`, `cs6`, `gw1`).
    pub name: String,
    pub role: Role,
    /// Its address on the cluster network (what partitions cut).
    pub ip: Ipv4Addr,
    /// Raft node id of a name server (0 for other roles).
    pub raft_id: u64,
}

/// The faults a nemesis can inflict, and the admin commands it needs to
/// aim them (the name-server leader, the cluster's accounting).
pub trait Control: Send + Sync {
    /// Every node of the cluster.
    fn nodes(&self) -> &[Node];

    /// SIGKILL: the process dies without flushing anything.
    fn kill(&self, node: &Node) -> anyhow::Result<()>;

    /// Starts a killed node again on its data.
    fn start(&self, node: &Node) -> anyhow::Result<()>;

    /// SIGSTOP every process of the node.
    fn pause(&self, node: &Node) -> anyhow::Result<()>;

    /// SIGCONT every process of the node.
    fn resume(&self, node: &Node) -> anyhow::Result<()>;

    /// Makes each node of `grudge` drop every packet from the peers listed
    /// with it (Jepsen's grudge: one-way, so symmetric cuts list both ends).
    fn cut(&self, grudge: &Grudge) -> anyhow::Result<()>;

    /// Drops every packet between nodes of different groups; nodes in no
    /// group keep talking to everyone.
    fn partition(&self, groups: &[Vec<Node>]) -> anyhow::Result<()> {
        self.cut(&grudge_of_groups(groups))
    }

    /// Removes every partition.
    fn heal(&self) -> anyhow::Result<()>;

    /// Flips one random bit near the end of each of the `files_max` most
    /// recently written chunk files of a chunk server (bit rot under a
    /// running server, in data the workload still reads); returns how many
    /// files were hit.
    fn corrupt_chunks(&self, node: &Node, files_max: usize, seed: u64) -> anyhow::Result<usize>;

    /// Cuts up to `files_max` of the most recently written chunk files of a
    /// chunk server short by up to 256 KiB (data acknowledged
    /// and lost under the running server); returns how many were cut.
    fn truncate_chunks(&self, node: &Node, files_max: usize, seed: u64) -> anyhow::Result<usize>;

    /// The node's Prometheus metrics (the text of `/metrics`).
    fn metrics(&self, node: &Node) -> anyhow::Result<String>;

    /// Runs `tessera admin ARGS` against the name servers from inside the
    /// cluster and returns its stdout.
    fn admin(&self, args: &[&str]) -> anyhow::Result<String>;

    /// The sum over every node of each counter named in `names` (nodes
    /// that do not answer count nothing).
    fn counter_totals(&self, names: &[&str]) -> std::collections::BTreeMap<String, f64> {
        let mut totals: std::collections::BTreeMap<String, f64> = names.iter().map(|n| (n.to_string(), 0.0)).collect();
        for node in self.nodes() {
            let Ok(text) = self.metrics(node) else { continue };
            for line in text.lines().filter(|l| !l.starts_with('#')) {
                let Some((series, value)) = line.rsplit_once(' ') else {
                    continue;
                };
                let name = series.split('{').next().unwrap_or(series);
                if let (Some(total), Ok(value)) = (totals.get_mut(name), value.parse::<f64>()) {
                    *total += value;
                }
            }
        }
        totals
    }

    /// The nodes of one role.
    fn of_role(&self, role: Role) -> Vec<Node> {
        self.nodes().iter().filter(|n| n.role == role).cloned().collect()
    }

    /// The name server the Raft group currently follows, if one is known.
    fn ns_leader(&self) -> Option<Node> {
        let out = self.admin(&["ns", "list"]).ok()?;
        let leader = serde_json::from_str::<serde_json::Value>(out.trim())
            .ok()?
            .get("leader")?
            .as_u64()?;
        self.of_role(Role::NameServer).into_iter().find(|n| n.raft_id == leader)
    }
}
