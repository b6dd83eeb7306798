//! The nemesis: faults on a schedule. Each cycle waits a quiet period,
//! inflicts one fault, holds it, and heals it; the run ends with every
//! fault healed. Targets rotate so one run covers the name-server leader,
//! a random name server, object servers and (for `kill`) two chunk servers
//! at once, which EC 4+2 must survive; partitions rotate over an isolated
//! leader, a minority, random halves and a bridge; chunk-file damage over
//! bit flips and truncation; membership removes a name server and adds it
//! back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::control::{grudge_of_bridges, Control, Grudge, Node, Role, NS_RPC_PORT};
use crate::sim::Rng;

/// Which faults a scenario inflicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum NemesisKind {
    /// No faults (a baseline).
    None,
    /// kill -9 and restart.
    Kill,
    /// SIGSTOP and SIGCONT.
    Pause,
    /// Network partitions.
    Partition,
    /// Bit flips in, and truncation of, the chunk files of two chunk
    /// servers (at most `m` = 2 fragments of any stripe), under the running
    /// servers.
    Corrupt,
    /// A name server removed from the Raft group, then added back.
    Membership,
}

/// One fault as it happened, in seconds since the run's start.
#[derive(Clone, Debug, Serialize)]
pub struct FaultInterval {
    pub kind: NemesisKind,
    pub target: String,
    pub start_s: f64,
    pub end_s: f64,
    /// Set when inflicting or healing the fault failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How long faults last and how long the cluster rests between them.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub quiet: Duration,
    pub fault: Duration,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            quiet: Duration::from_secs(5),
            fault: Duration::from_secs(10),
        }
    }
}

/// A fault chosen for one cycle.
enum Fault {
    Kill(Vec<Node>),
    Pause(Vec<Node>),
    Partition(Vec<Vec<Node>>),
    Bridge(Grudge),
    Corrupt {
        node: Node,
        seed: u64,
    },
    Truncate {
        node: Node,
        seed: u64,
    },
    /// Remove this name server from the group; heal adds it back.
    Membership(Node),
}

/// Chunk files hit per corruption.
const CORRUPT_FILES: usize = 3;

impl Fault {
    fn describe(&self) -> String {
        let names = |nodes: &[Node]| nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join("+");
        match self {
            Fault::Kill(nodes) => format!("kill {}", names(nodes)),
            Fault::Pause(nodes) => format!("pause {}", names(nodes)),
            Fault::Partition(groups) => {
                let groups: Vec<String> = groups.iter().map(|g| names(g)).collect();
                format!("partition {}", groups.join(" | "))
            }
            Fault::Bridge(grudge) => {
                let cuts: Vec<String> = grudge
                    .iter()
                    .flat_map(|(node, peers)| peers.iter().map(move |p| (node, p)))
                    .filter(|(node, peer)| node.name < peer.name)
                    .map(|(node, peer)| format!("{}-/-{}", node.name, peer.name))
                    .collect();
                format!("bridge {}", cuts.join(" "))
            }
            Fault::Corrupt { node, .. } => format!("corrupt {CORRUPT_FILES} chunk files of {}", node.name),
            Fault::Truncate { node, .. } => format!("truncate {CORRUPT_FILES} chunk files of {}", node.name),
            Fault::Membership(node) => format!("remove {} from the name-server group", node.name),
        }
    }

    fn inflict(&self, control: &dyn Control) -> anyhow::Result<()> {
        match self {
            Fault::Kill(nodes) => nodes.iter().try_for_each(|n| control.kill(n)),
            Fault::Pause(nodes) => nodes.iter().try_for_each(|n| control.pause(n)),
            Fault::Partition(groups) => control.partition(groups),
            Fault::Bridge(grudge) => control.cut(grudge),
            Fault::Corrupt { node, seed } => control.corrupt_chunks(node, CORRUPT_FILES, *seed).map(drop),
            Fault::Truncate { node, seed } => control.truncate_chunks(node, CORRUPT_FILES, *seed).map(drop),
            Fault::Membership(node) => control
                .admin(&["ns", "remove", "--id", &node.raft_id.to_string()])
                .map(drop),
        }
    }

    fn heal(&self, control: &dyn Control) -> anyhow::Result<()> {
        match self {
            Fault::Kill(nodes) => nodes.iter().try_for_each(|n| control.start(n)),
            Fault::Pause(nodes) => nodes.iter().try_for_each(|n| control.resume(n)),
            Fault::Partition(_) | Fault::Bridge(_) => control.heal(),
            // Bit rot stays: reads decode around it, scrub repairs it.
            Fault::Corrupt { .. } | Fault::Truncate { .. } => Ok(()),
            Fault::Membership(node) => ensure_voter(control, node),
        }
    }
}

/// Runs faults of `kind` until `deadline`, then heals; returns what it did.
pub async fn run(
    control: Arc<dyn Control>,
    kind: NemesisKind,
    schedule: Schedule,
    base: Instant,
    deadline: Instant,
    seed: u64,
) -> Vec<FaultInterval> {
    let mut rng = Rng::new(seed);
    let mut done = Vec::new();
    let mut cycle = 0u64;
    while kind != NemesisKind::None && Instant::now() + schedule.quiet + schedule.fault <= deadline {
        tokio::time::sleep(schedule.quiet).await;
        let (c, mut r) = (Arc::clone(&control), rng.clone());
        let Ok((fault, next_rng)) = blocking(move || Ok((choose(&*c, kind, cycle, &mut r), r))).await else {
            continue;
        };
        rng = next_rng;
        cycle += 1;
        let start_s = base.elapsed().as_secs_f64();
        let target = fault.describe();
        let fault = Arc::new(fault);
        let (c, f) = (Arc::clone(&control), Arc::clone(&fault));
        let mut error = blocking(move || f.inflict(&*c))
            .await
            .err()
            .map(|e| format!("inflicting: {e:#}"));
        tokio::time::sleep(schedule.fault).await;
        let (c, f) = (Arc::clone(&control), Arc::clone(&fault));
        if let Err(e) = blocking(move || f.heal(&*c)).await {
            error = Some(format!("{}healing: {e:#}", error.map(|e| e + "; ").unwrap_or_default()));
        }
        done.push(FaultInterval {
            kind,
            target,
            start_s,
            end_s: base.elapsed().as_secs_f64(),
            error,
        });
    }
    done
}

/// Heals everything a nemesis may have left: partitions, paused and killed
/// nodes. Run after every scenario, whatever happened.
pub async fn heal_all(control: Arc<dyn Control>) -> anyhow::Result<()> {
    blocking(move || {
        control.heal()?;
        for node in control.nodes() {
            control.resume(node)?;
            control.start(node)?;
        }
        for node in control.of_role(Role::NameServer) {
            ensure_voter(&*control, &node)?;
        }
        Ok(())
    })
    .await
}

/// Makes name server `node` a voter again if it is not one (a heal that
/// must survive the leader changing under it, so it retries).
fn ensure_voter(control: &dyn Control, node: &Node) -> anyhow::Result<()> {
    let id = node.raft_id.to_string();
    let addr = format!("{}:{NS_RPC_PORT}", node.ip);
    let mut last = None;
    for _ in 0..MEMBERSHIP_HEAL_ATTEMPTS {
        let voters = control.admin(&["ns", "list"]).and_then(|out| voter_ids(&out));
        match voters {
            Ok(voters) if voters.contains(&node.raft_id) => return Ok(()),
            Ok(_) => match control.admin(&["ns", "add", "--id", &id, "--addr", &addr]) {
                Ok(_) => return Ok(()),
                Err(e) => last = Some(e),
            },
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    Err(last
        .unwrap_or_else(|| anyhow::anyhow!("no attempt made"))
        .context(format!("making {} a voter again", node.name)))
}

/// The voter ids in the output of `tessera admin ns list`.
fn voter_ids(ns_list: &str) -> anyhow::Result<Vec<u64>> {
    let value: serde_json::Value = serde_json::from_str(ns_list.trim())?;
    let voters = value
        .get("voters")
        .and_then(|v| v.as_array())
        .ok_or_else(|| anyhow::anyhow!("no voters in {ns_list:?}"))?;
    Ok(voters.iter().filter_map(|v| v.get("id")?.as_u64()).collect())
}

const MEMBERSHIP_HEAL_ATTEMPTS: u32 = 10;

/// `nodes` in a random order.
fn shuffled(mut nodes: Vec<Node>, rng: &mut Rng) -> Vec<Node> {
    for i in (1..nodes.len()).rev() {
        nodes.swap(i, rng.below(i as u64 + 1) as usize);
    }
    nodes
}

fn choose(control: &dyn Control, kind: NemesisKind, cycle: u64, rng: &mut Rng) -> Fault {
    let leader = || control.ns_leader();
    let pick = |nodes: Vec<Node>, rng: &mut Rng| nodes[rng.below(nodes.len() as u64) as usize].clone();
    let name_servers = control.of_role(Role::NameServer);
    let object_servers = control.of_role(Role::ObjectServer);
    let one_ns = |rng: &mut Rng| leader().unwrap_or_else(|| pick(name_servers.clone(), rng));
    match (kind, cycle % 4) {
        (NemesisKind::Kill, 0) => Fault::Kill(vec![one_ns(rng)]),
        (NemesisKind::Kill, 1) => Fault::Kill(vec![pick(object_servers.clone(), rng)]),
        (NemesisKind::Kill, 2) => {
            let mut chunk_servers = control.of_role(Role::ChunkServer);
            let first = chunk_servers.remove(rng.below(chunk_servers.len() as u64) as usize);
            Fault::Kill(vec![first, pick(chunk_servers, rng)])
        }
        (NemesisKind::Kill, _) => Fault::Kill(vec![pick(name_servers.clone(), rng)]),
        (NemesisKind::Pause, 0 | 2) => Fault::Pause(vec![one_ns(rng)]),
        (NemesisKind::Pause, _) => Fault::Pause(vec![pick(object_servers.clone(), rng)]),
        (NemesisKind::Partition, 0) => {
            let isolated = one_ns(rng);
            let rest: Vec<Node> = control.nodes().iter().filter(|n| **n != isolated).cloned().collect();
            Fault::Partition(vec![vec![isolated], rest])
        }
        (NemesisKind::Partition, 2) => {
            // Random halves of the whole cluster (Jepsen's
            // partition-random-halves): one side holds a majority of each
            // Raft group or not, by chance.
            let mut nodes = shuffled(control.nodes().to_vec(), rng);
            let other = nodes.split_off(nodes.len() / 2);
            Fault::Partition(vec![nodes, other])
        }
        (NemesisKind::Partition, 3) => {
            let rings = [
                shuffled(name_servers.clone(), rng),
                shuffled(object_servers.clone(), rng),
            ];
            Fault::Bridge(grudge_of_bridges(&rings))
        }
        (NemesisKind::Corrupt, _) => {
            // Always the same two chunk servers: a stripe has at most one
            // fragment on each, so no stripe loses more than m = 2.
            let chunk_servers = control.of_role(Role::ChunkServer);
            let node = chunk_servers[(cycle % 2) as usize % chunk_servers.len()].clone();
            let seed = rng.next_u64();
            if cycle % 4 < 2 {
                Fault::Corrupt { node, seed }
            } else {
                Fault::Truncate { node, seed }
            }
        }
        (NemesisKind::Membership, _) => {
            // The leader on even cycles (the group must elect anew and
            // commit the change), a follower on odd ones.
            let target = match leader() {
                Some(leader) if cycle.is_multiple_of(2) => leader,
                Some(leader) => pick(name_servers.iter().filter(|n| **n != leader).cloned().collect(), rng),
                None => pick(name_servers.clone(), rng),
            };
            Fault::Membership(target)
        }
        (NemesisKind::Partition, _) | (NemesisKind::None, _) => {
            // A minority (one name server and one object server) against
            // the majority of both Raft groups; chunk servers and gateways
            // stay with the majority.
            let minority = vec![pick(name_servers.clone(), rng), pick(object_servers.clone(), rng)];
            let majority: Vec<Node> = control
                .nodes()
                .iter()
                .filter(|n| !minority.contains(n))
                .cloned()
                .collect();
            Fault::Partition(vec![minority, majority])
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> anyhow::Result<T> + Send + 'static) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(anyhow::Error::from)?
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    use super::*;
    use crate::control::compose::Compose;

    /// The compose topology with a fixed leader (ns2) and a name-server
    /// membership it keeps; records what it was asked.
    struct Recording {
        topology: Compose,
        calls: Mutex<Vec<String>>,
        voters: Mutex<BTreeSet<u64>>,
    }

    impl Recording {
        fn record(&self, call: String) {
            self.calls.lock().unwrap().push(call);
        }
    }

    impl Control for Recording {
        fn nodes(&self) -> &[Node] {
            self.topology.nodes()
        }
        fn kill(&self, node: &Node) -> anyhow::Result<()> {
            self.record(format!("kill {}", node.name));
            Ok(())
        }
        fn start(&self, node: &Node) -> anyhow::Result<()> {
            self.record(format!("start {}", node.name));
            Ok(())
        }
        fn pause(&self, node: &Node) -> anyhow::Result<()> {
            self.record(format!("pause {}", node.name));
            Ok(())
        }
        fn resume(&self, node: &Node) -> anyhow::Result<()> {
            self.record(format!("resume {}", node.name));
            Ok(())
        }
        fn cut(&self, grudge: &Grudge) -> anyhow::Result<()> {
            let links: usize = grudge.iter().map(|(_, peers)| peers.len()).sum();
            self.record(format!("cut {} nodes, {links} links", grudge.len()));
            Ok(())
        }
        fn heal(&self) -> anyhow::Result<()> {
            self.record("heal".into());
            Ok(())
        }
        fn corrupt_chunks(&self, node: &Node, files_max: usize, _seed: u64) -> anyhow::Result<usize> {
            self.record(format!("corrupt {} x{files_max}", node.name));
            Ok(files_max)
        }
        fn truncate_chunks(&self, node: &Node, files_max: usize, _seed: u64) -> anyhow::Result<usize> {
            self.record(format!("truncate {} x{files_max}", node.name));
            Ok(files_max)
        }
        fn metrics(&self, node: &Node) -> anyhow::Result<String> {
            Ok(format!("# TYPE x counter\nx{{node=\"{}\"}} 2\ny 1\n", node.name))
        }
        fn admin(&self, args: &[&str]) -> anyhow::Result<String> {
            self.record(format!("admin {}", args.join(" ")));
            let mut voters = self.voters.lock().unwrap();
            match args {
                ["ns", "remove", "--id", id] => voters.remove(&id.parse()?),
                ["ns", "add", "--id", id, "--addr", _] => voters.insert(id.parse()?),
                _ => false,
            };
            let list: Vec<serde_json::Value> = voters.iter().map(|id| serde_json::json!({ "id": id })).collect();
            Ok(serde_json::json!({ "leader": 12, "term": 5, "voters": list }).to_string())
        }
    }

    fn recording() -> Recording {
        Recording {
            topology: Compose::new(),
            calls: Mutex::new(Vec::new()),
            voters: Mutex::new(BTreeSet::from([11, 12, 13])),
        }
    }

    #[test]
    fn kills_rotate_over_the_leader_an_object_server_and_two_chunk_servers() {
        let control = recording();
        let mut rng = Rng::new(7);
        let faults: Vec<String> = (0..4)
            .map(|cycle| choose(&control, NemesisKind::Kill, cycle, &mut rng).describe())
            .collect();
        assert_eq!(faults[0], "kill ns2", "the leader first");
        assert!(faults[1].starts_with("kill os"), "{faults:?}");
        let chunk_servers: Vec<&str> = faults[2].trim_start_matches("kill ").split('+').collect();
        assert_eq!(chunk_servers.len(), 2, "{faults:?}");
        assert!(chunk_servers.iter().all(|n| n.starts_with("cs")) && chunk_servers[0] != chunk_servers[1]);
        assert!(faults[3].starts_with("kill ns"), "{faults:?}");
    }

    #[test]
    fn partitions_isolate_the_leader_cut_a_minority_or_halves_and_heal_fully() {
        let control = recording();
        let mut rng = Rng::new(3);
        let isolate = choose(&control, NemesisKind::Partition, 0, &mut rng);
        assert!(
            isolate.describe().starts_with("partition ns2 | "),
            "{}",
            isolate.describe()
        );
        let minority = choose(&control, NemesisKind::Partition, 1, &mut rng);
        let Fault::Partition(groups) = &minority else {
            panic!("not a partition: {}", minority.describe());
        };
        assert_eq!(groups[0].len(), 2);
        assert_eq!(groups[0].len() + groups[1].len(), control.nodes().len());
        control.calls.lock().unwrap().clear(); // choosing asked for the leader
        minority.inflict(&control).unwrap();
        minority.heal(&control).unwrap();
        assert_eq!(
            *control.calls.lock().unwrap(),
            vec!["cut 14 nodes, 48 links".to_string(), "heal".into()]
        );
        let halves = choose(&control, NemesisKind::Partition, 2, &mut rng);
        let Fault::Partition(groups) = &halves else {
            panic!("not a partition: {}", halves.describe());
        };
        assert_eq!((groups[0].len(), groups[1].len()), (7, 7));
        let all: BTreeSet<&str> = groups.iter().flatten().map(|n| n.name.as_str()).collect();
        assert_eq!(all.len(), 14, "halves cover every node once");
    }

    #[test]
    fn a_bridge_cuts_one_link_in_each_raft_group_both_ways() {
        let control = recording();
        let mut rng = Rng::new(5);
        let bridge = choose(&control, NemesisKind::Partition, 3, &mut rng);
        let Fault::Bridge(grudge) = &bridge else {
            panic!("not a bridge: {}", bridge.describe());
        };
        assert_eq!(grudge.len(), 4, "{}", bridge.describe());
        for (node, peers) in grudge {
            assert_eq!(peers.len(), 1);
            let peer = &peers[0];
            assert_eq!(node.role, peer.role, "{}", bridge.describe());
            assert!(
                grudge.iter().any(|(n, p)| n == peer && p == &vec![node.clone()]),
                "symmetric"
            );
        }
        let described = bridge.describe();
        assert!(described.contains("ns") && described.contains("os"), "{described}");
    }

    #[test]
    fn chunk_damage_alternates_flips_and_truncation_on_two_servers_only() {
        let control = recording();
        let mut rng = Rng::new(9);
        let faults: Vec<String> = (0..8)
            .map(|cycle| choose(&control, NemesisKind::Corrupt, cycle, &mut rng).describe())
            .collect();
        assert_eq!(faults[0], "corrupt 3 chunk files of cs1");
        assert_eq!(faults[1], "corrupt 3 chunk files of cs2");
        assert_eq!(faults[2], "truncate 3 chunk files of cs1");
        assert_eq!(faults[3], "truncate 3 chunk files of cs2");
        assert_eq!(faults[4..], faults[..4]);
    }

    #[test]
    fn membership_removes_the_leader_or_a_follower_and_heal_adds_it_back() {
        let control = recording();
        let mut rng = Rng::new(1);
        let remove_leader = choose(&control, NemesisKind::Membership, 0, &mut rng);
        assert_eq!(remove_leader.describe(), "remove ns2 from the name-server group");
        remove_leader.inflict(&control).unwrap();
        assert_eq!(*control.voters.lock().unwrap(), BTreeSet::from([11, 13]));
        remove_leader.heal(&control).unwrap();
        assert_eq!(*control.voters.lock().unwrap(), BTreeSet::from([11, 12, 13]));
        assert!(control
            .calls
            .lock()
            .unwrap()
            .contains(&"admin ns add --id 12 --addr 172.28.0.12:7001".to_string()));
        let follower = choose(&control, NemesisKind::Membership, 1, &mut rng);
        assert!(
            [
                "remove ns1 from the name-server group",
                "remove ns3 from the name-server group"
            ]
            .contains(&follower.describe().as_str()),
            "{}",
            follower.describe()
        );
        // Healing a member that is still a voter adds nothing.
        let calls_before = control.calls.lock().unwrap().len();
        follower.heal(&control).unwrap();
        assert_eq!(
            control.calls.lock().unwrap().len(),
            calls_before + 1,
            "one ns list, no add"
        );
    }

    #[test]
    fn counters_are_summed_over_every_node() {
        let control = recording();
        let totals = control.counter_totals(&["x", "absent"]);
        assert_eq!(totals["x"], 2.0 * control.nodes().len() as f64);
        assert_eq!(totals["absent"], 0.0);
        assert!(!totals.contains_key("y"));
    }

    #[tokio::test]
    async fn heal_all_resumes_starts_every_node_and_restores_voters() {
        let control = Arc::new(recording());
        control.voters.lock().unwrap().remove(&13);
        heal_all(control.clone()).await.unwrap();
        let calls = control.calls.lock().unwrap();
        assert_eq!(calls[0], "heal");
        let admin_calls = calls.iter().filter(|c| c.starts_with("admin")).count();
        assert_eq!(calls.len(), 1 + 2 * control.nodes().len() + admin_calls);
        assert_eq!(*control.voters.lock().unwrap(), BTreeSet::from([11, 12, 13]));
    }
}
