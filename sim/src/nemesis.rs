//! Faults from the seed, one at a time: a server cut off from its Raft
//! peers (clients still reach it), a crash and restart (RocksDB state kept
//! as after `kill -9`; a chunk server's disk loses what was not synced), a
//! power loss (every disk of the hosts loses what was not synced, RocksDB's
//! included: [`PowerCut`]) of one name or object server, of every chunk
//! server, of the name service or of the whole cluster at once, a pause
//! (every message to and from a server held, then delivered at once, late:
//! what peers see of a stalled process), a slow network, a lossy one (requests and responses
//! dropped, so callers see timeouts after the server may have acted), or
//! one byte of a stored chunk fragment flipped. Name-server targets lean
//! toward the current leader, where faults matter most.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use tessera_jepsen::sim::Rng;
use turmoil::Sim;

use crate::chunks::MemChunkStore;
use crate::cluster::host_name;
use crate::net::TurmoilNetwork;
use crate::observer::Observer;
use crate::power::PowerCut;

/// Message latency when no fault slows the network.
pub const LATENCY_MAX: Duration = Duration::from_millis(10);
const SLOW_LATENCY_MAX: Duration = Duration::from_millis(400);
/// While the network is lossy: the probability that a call loses its
/// request, and separately its response.
const LOSS_PER_MILLION: u32 = 100_000;

/// The hosts faults may hit.
#[derive(Clone, Debug, Default)]
pub struct Targets {
    /// Name-server node ids (hosts `ns{id}`).
    pub name_servers: Vec<u64>,
    /// Object-server hosts (one Raft group per partition among them).
    pub object_servers: Vec<String>,
    /// Chunk-server hosts with their disks.
    pub chunk_servers: Vec<(String, MemChunkStore)>,
    /// Client hosts (never faulted; a paused server's messages to them are
    /// held too).
    pub clients: Vec<String>,
    /// The name- and object-server hosts: their node ids and RocksDB
    /// directories.
    pub rocksdb_hosts: BTreeMap<String, RocksHost>,
}

/// A host whose state is in RocksDB.
#[derive(Clone, Debug)]
pub struct RocksHost {
    pub node: u64,
    pub data_dir: PathBuf,
}

impl Targets {
    /// Every server host (not the clients).
    fn servers(&self) -> Vec<String> {
        let name_servers = self.name_servers.iter().map(|n| host_name(*n));
        let chunk_servers = self.chunk_servers.iter().map(|(h, _)| h.clone());
        let hosts = name_servers
            .chain(self.object_servers.iter().cloned())
            .chain(chunk_servers);
        hosts.collect()
    }

    /// Every host but `host`.
    fn all_but(&self, host: &str) -> Vec<String> {
        let hosts = self.servers().into_iter().chain(self.clients.iter().cloned());
        hosts.filter(|h| h != host).collect()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Partitioned from these peers.
    Isolate { host: String, peers: Vec<String> },
    /// Crashed; restarted when the fault heals.
    Crash(String),
    /// These hosts crashed at once, each disk keeping only what it synced
    /// (a chunk server's, and a name or object server's RocksDB files).
    /// Restarted when the fault heals.
    PowerLoss(Vec<String>),
    /// Messages between the host and `peers` held; delivered when the
    /// fault heals.
    Pause { host: String, peers: Vec<String> },
    /// Every message takes up to [`SLOW_LATENCY_MAX`].
    Slow,
    /// Calls lose their request or response with [`LOSS_PER_MILLION`].
    Lossy,
    /// One byte of a chunk fragment on this host flipped (nothing to heal:
    /// reads verify checksums, scrub and repair rebuild it).
    Corrupt { host: String, detail: String },
}

pub struct Nemesis {
    rng: Rng,
    network: TurmoilNetwork,
    targets: Targets,
    observer: Observer,
    /// When the next fault starts (none after `last_start`).
    next_at: Duration,
    last_start: Duration,
    active: Option<(Fault, Duration)>,
    /// The active power loss's cuts, applied before its hosts restart.
    cuts: Vec<PowerCut>,
    /// What was done, with the simulated time.
    pub log: Vec<String>,
}

impl Nemesis {
    pub fn new(
        seed: u64,
        network: TurmoilNetwork,
        targets: Targets,
        observer: Observer,
        first_at: Duration,
        last_start: Duration,
    ) -> Nemesis {
        assert!(!targets.name_servers.is_empty(), "a cluster without name servers");
        Nemesis {
            rng: Rng::new(seed ^ 0x6E65_6D65_7369_7300),
            network,
            targets,
            observer,
            next_at: first_at,
            last_start,
            active: None,
            cuts: Vec::new(),
            log: Vec::new(),
        }
    }

    /// Starts or heals a fault when due. `leader`: the name-server leader,
    /// if known. Fails when a power loss cannot be done to the disks.
    pub fn step(&mut self, sim: &mut Sim<'_>, now: Duration, leader: Option<u64>) -> Result<(), String> {
        match self.active.take() {
            Some((fault, heal_at)) if now >= heal_at => {
                let healed = self.heal(sim, &fault)?;
                self.log.push(format!("{now:?} heal {fault:?}{healed}"));
                self.next_at = now + self.between(500, 2_000);
            }
            Some(active) => self.active = Some(active),
            None if now >= self.next_at && now <= self.last_start => {
                let fault = self.choose(leader);
                let inflicted = self.inflict(sim, &fault)?;
                self.log.push(format!("{now:?} {fault:?}{inflicted}"));
                let heal_at = now + self.between(500, 3_000);
                self.active = Some((fault, heal_at));
            }
            None => {}
        }
        Ok(())
    }

    /// Heals whatever is still active (before the final checks).
    pub fn heal_all(&mut self, sim: &mut Sim<'_>) -> Result<(), String> {
        if let Some((fault, _)) = self.active.take() {
            let healed = self.heal(sim, &fault)?;
            self.log.push(format!("end heal {fault:?}{healed}"));
        }
        Ok(())
    }

    /// Faults inflicted so far.
    pub fn faults(&self) -> usize {
        self.log.iter().filter(|line| !line.contains("heal")).count()
    }

    fn choose(&mut self, leader: Option<u64>) -> Fault {
        let storage = !self.targets.object_servers.is_empty();
        // Name-server faults, then (with storage hosts) storage faults.
        match self.rng.below(if storage { 12 } else { 7 }) {
            0 | 1 => {
                let node = self.name_server(leader);
                let peers = self
                    .targets
                    .name_servers
                    .iter()
                    .filter(|n| **n != node)
                    .map(|n| host_name(*n));
                Fault::Isolate {
                    host: host_name(node),
                    peers: peers.collect(),
                }
            }
            2 => Fault::Crash(host_name(self.name_server(leader))),
            3 => match self.rng.below(3) {
                0 => Fault::PowerLoss(self.targets.name_servers.iter().map(|n| host_name(*n)).collect()),
                _ => Fault::PowerLoss(vec![host_name(self.name_server(leader))]),
            },
            4 => Fault::Slow,
            5 => Fault::Lossy,
            6 => {
                let host = match storage && self.rng.below(2) == 0 {
                    true => self.pick(&self.targets.object_servers.clone()),
                    false => host_name(self.name_server(leader)),
                };
                let peers = self.targets.all_but(&host);
                Fault::Pause { host, peers }
            }
            7 => {
                let host = self.pick(&self.targets.object_servers.clone());
                let peers = self
                    .targets
                    .object_servers
                    .iter()
                    .filter(|h| **h != host)
                    .cloned()
                    .collect();
                Fault::Isolate { host, peers }
            }
            8 => {
                let host = self.pick(&self.targets.object_servers.clone());
                match self.rng.below(2) {
                    0 => Fault::Crash(host),
                    _ => Fault::PowerLoss(vec![host]),
                }
            }
            9 => {
                let hosts: Vec<String> = self.targets.chunk_servers.iter().map(|(h, _)| h.clone()).collect();
                Fault::Crash(self.pick(&hosts))
            }
            10 => self.corrupt(),
            _ => {
                let chunk_servers = self.targets.chunk_servers.iter().map(|(h, _)| h.clone());
                match self.rng.below(3) {
                    0 => Fault::PowerLoss(self.targets.servers()),
                    _ => Fault::PowerLoss(chunk_servers.collect()),
                }
            }
        }
    }

    fn name_server(&mut self, leader: Option<u64>) -> u64 {
        match leader {
            Some(leader) if self.rng.below(3) < 2 => leader,
            _ => self.targets.name_servers[self.rng.below(self.targets.name_servers.len() as u64) as usize],
        }
    }

    fn pick(&mut self, hosts: &[String]) -> String {
        hosts[self.rng.below(hosts.len() as u64) as usize].clone()
    }

    /// Flips a byte of a random chunk on a random chunk server (or, when it
    /// holds none yet, slows the network instead).
    fn corrupt(&mut self) -> Fault {
        let index = self.rng.below(self.targets.chunk_servers.len() as u64) as usize;
        let (host, store) = self.targets.chunk_servers[index].clone();
        let chunks = store.chunk_ids();
        if chunks.is_empty() {
            return Fault::Slow;
        }
        let chunk = chunks[self.rng.below(chunks.len() as u64) as usize];
        let nth = self.rng.below(u64::MAX);
        let flipped = store.corrupt(chunk, nth);
        Fault::Corrupt {
            host,
            detail: format!("{chunk} byte #{nth} (flipped: {flipped})"),
        }
    }

    fn between(&mut self, min_ms: u64, max_ms: u64) -> Duration {
        Duration::from_millis(min_ms + self.rng.below(max_ms - min_ms + 1))
    }
}

impl Nemesis {
    /// Starts `fault`; returns what to add to its log line.
    fn inflict(&mut self, sim: &mut Sim<'_>, fault: &Fault) -> Result<String, String> {
        match fault {
            Fault::Isolate { host, peers } => {
                for peer in peers {
                    sim.partition(host.as_str(), peer.as_str());
                }
            }
            Fault::Crash(host) => sim.crash(host.as_str()),
            Fault::PowerLoss(hosts) => {
                for host in hosts {
                    sim.crash(host.as_str());
                }
                return self.cut_power(hosts);
            }
            Fault::Pause { host, peers } => {
                for peer in peers {
                    sim.hold(host.as_str(), peer.as_str());
                }
            }
            Fault::Slow => sim.set_max_message_latency(SLOW_LATENCY_MAX),
            Fault::Lossy => self.network.set_loss_per_million(LOSS_PER_MILLION),
            Fault::Corrupt { .. } => {}
        }
        Ok(String::new())
    }

    /// Decides what the crashed `hosts`' RocksDB files lose (applied when
    /// they restart: [`Nemesis::heal`]).
    fn cut_power(&mut self, hosts: &[String]) -> Result<String, String> {
        let mut files = None;
        for host in hosts {
            let Some(RocksHost { node, data_dir }) = self.targets.rocksdb_hosts.get(host) else {
                continue; // a chunk server: its store drops on restart
            };
            let cut = PowerCut::at_crash(data_dir)
                .map_err(|e| format!("cutting the power of {}: {e}", data_dir.display()))?;
            *files.get_or_insert(0) += cut.files();
            self.cuts.push(cut);
            self.observer.power_lost(*node);
        }
        Ok(files.map_or_else(String::new, |files| {
            format!(" ({files} RocksDB files with unsynced tails)")
        }))
    }

    /// Ends `fault`; returns what to add to its log line.
    fn heal(&mut self, sim: &mut Sim<'_>, fault: &Fault) -> Result<String, String> {
        match fault {
            Fault::Isolate { host, peers } => {
                for peer in peers {
                    sim.repair(host.as_str(), peer.as_str());
                }
            }
            Fault::Crash(host) => sim.bounce(host.as_str()),
            Fault::PowerLoss(hosts) => {
                let lost = self.restore_power()?;
                for host in hosts {
                    sim.bounce(host.as_str());
                }
                return Ok(lost);
            }
            Fault::Pause { host, peers } => {
                for peer in peers {
                    sim.release(host.as_str(), peer.as_str());
                }
            }
            Fault::Slow => sim.set_max_message_latency(LATENCY_MAX),
            Fault::Lossy => self.network.set_loss_per_million(0),
            Fault::Corrupt { .. } => {}
        }
        Ok(String::new())
    }

    /// Applies the pending cuts (the hosts are down, their databases
    /// closed).
    fn restore_power(&mut self) -> Result<String, String> {
        if self.cuts.is_empty() {
            return Ok(String::new()); // chunk servers only
        }
        let mut lost_bytes = 0;
        for cut in std::mem::take(&mut self.cuts) {
            lost_bytes += cut.apply().map_err(|e| format!("applying a power cut: {e}"))?;
        }
        Ok(format!(" ({lost_bytes} unsynced RocksDB bytes lost)"))
    }
}
