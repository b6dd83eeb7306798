//! The nemesis: faults on a schedule. Each cycle waits a quiet period,
//! inflicts one fault, holds it, and heals it; the run ends with every
//! fault healed. Targets rotate so one run covers the name-server leader,
//! a random name server, object servers and (for `kill`) two chunk servers
//! at once, which EC 4+2 must survive.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::control::{Control, Node, Role};
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
    /// Bit flips in the chunk files of two chunk servers (at most `m` = 2
    /// fragments of any stripe), under the running servers.
    Corrupt,
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
    Corrupt { node: Node, seed: u64 },
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
            Fault::Corrupt { node, .. } => format!("corrupt {CORRUPT_FILES} chunk files of {}", node.name),
        }
    }

    fn inflict(&self, control: &dyn Control) -> anyhow::Result<()> {
        match self {
            Fault::Kill(nodes) => nodes.iter().try_for_each(|n| control.kill(n)),
            Fault::Pause(nodes) => nodes.iter().try_for_each(|n| control.pause(n)),
            Fault::Partition(groups) => control.partition(groups),
            Fault::Corrupt { node, seed } => control.corrupt_chunks(node, CORRUPT_FILES, *seed).map(drop),
        }
    }

    fn heal(&self, control: &dyn Control) -> anyhow::Result<()> {
        match self {
            Fault::Kill(nodes) => nodes.iter().try_for_each(|n| control.start(n)),
            Fault::Pause(nodes) => nodes.iter().try_for_each(|n| control.resume(n)),
            Fault::Partition(_) => control.heal(),
            // Bit rot stays: reads decode around it, scrub repairs it.
            Fault::Corrupt { .. } => Ok(()),
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
        Ok(())
    })
    .await
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
        (NemesisKind::Partition, 0 | 2) => {
            let isolated = one_ns(rng);
            let rest: Vec<Node> = control.nodes().iter().filter(|n| **n != isolated).cloned().collect();
            Fault::Partition(vec![vec![isolated], rest])
        }
        (NemesisKind::Corrupt, _) => {
            // Always the same two chunk servers: a stripe has at most one
            // fragment on each, so no stripe loses more than m = 2.
            let chunk_servers = control.of_role(Role::ChunkServer);
            let node = chunk_servers[(cycle % 2) as usize % chunk_servers.len()].clone();
            Fault::Corrupt {
                node,
                seed: rng.next_u64(),
            }
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
    use std::sync::Mutex;

    use super::*;
    use crate::control::compose::Compose;

    /// The compose topology with a fixed leader; records what it was asked.
    struct Recording {
        topology: Compose,
        calls: Mutex<Vec<String>>,
    }

    impl Control for Recording {
        fn nodes(&self) -> &[Node] {
            self.topology.nodes()
        }
        fn kill(&self, node: &Node) -> anyhow::Result<()> {
            self.calls.lock().unwrap().push(format!("kill {}", node.name));
            Ok(())
        }
        fn start(&self, node: &Node) -> anyhow::Result<()> {
            self.calls.lock().unwrap().push(format!("start {}", node.name));
            Ok(())
        }
        fn pause(&self, node: &Node) -> anyhow::Result<()> {
            self.calls.lock().unwrap().push(format!("pause {}", node.name));
            Ok(())
        }
        fn resume(&self, node: &Node) -> anyhow::Result<()> {
            self.calls.lock().unwrap().push(format!("resume {}", node.name));
            Ok(())
        }
        fn partition(&self, groups: &[Vec<Node>]) -> anyhow::Result<()> {
            let sizes: Vec<usize> = groups.iter().map(Vec::len).collect();
            self.calls.lock().unwrap().push(format!("partition {sizes:?}"));
            Ok(())
        }
        fn heal(&self) -> anyhow::Result<()> {
            self.calls.lock().unwrap().push("heal".into());
            Ok(())
        }
        fn corrupt_chunks(&self, node: &Node, files_max: usize, _seed: u64) -> anyhow::Result<usize> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("corrupt {} x{files_max}", node.name));
            Ok(files_max)
        }
        fn metrics(&self, node: &Node) -> anyhow::Result<String> {
            Ok(format!("# TYPE x counter\nx{{node=\"{}\"}} 2\ny 1\n", node.name))
        }
        fn admin(&self, _args: &[&str]) -> anyhow::Result<String> {
            Ok(r#"{"leader": 2, "term": 5}"#.into())
        }
    }

    fn recording() -> Recording {
        Recording {
            topology: Compose::new(),
            calls: Mutex::new(Vec::new()),
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
    fn partitions_isolate_the_leader_or_cut_a_minority_and_heal_fully() {
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
        minority.inflict(&control).unwrap();
        minority.heal(&control).unwrap();
        assert_eq!(
            *control.calls.lock().unwrap(),
            vec!["partition [2, 12]".to_string(), "heal".into()]
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
    async fn heal_all_resumes_and_starts_every_node() {
        let control = Arc::new(recording());
        heal_all(control.clone()).await.unwrap();
        let calls = control.calls.lock().unwrap();
        assert_eq!(calls[0], "heal");
        assert_eq!(calls.len(), 1 + 2 * control.nodes().len());
    }
}
