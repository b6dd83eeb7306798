//! Faults from the seed, one at a time: a name server cut off from its
//! peers (clients still reach it), a crash and restart (state kept as after
//! `kill -9`), a slow network, or a lossy one (requests and responses
//! dropped, so callers see timeouts after the server may have acted). Targets lean toward the current leader,
//! where faults matter most.

use std::time::Duration;

use tessera_jepsen::sim::Rng;
use turmoil::Sim;

use crate::cluster::{host_name, NAME_SERVERS};
use crate::net::TurmoilNetwork;

/// Message latency when no fault slows the network.
pub const LATENCY_MAX: Duration = Duration::from_millis(10);
const SLOW_LATENCY_MAX: Duration = Duration::from_millis(400);
/// While the network is lossy: the probability that a call loses its
/// request, and separately its response.
const LOSS_PER_MILLION: u32 = 100_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Partitioned from every other name server.
    Isolate(u64),
    /// Crashed; restarted when the fault heals.
    Crash(u64),
    /// Every message takes up to [`SLOW_LATENCY_MAX`].
    Slow,
    /// Calls lose their request or response with [`LOSS_PER_MILLION`].
    Lossy,
}

pub struct Nemesis {
    rng: Rng,
    network: TurmoilNetwork,
    /// When the next fault starts (none after `last_start`).
    next_at: Duration,
    last_start: Duration,
    active: Option<(Fault, Duration)>,
    /// What was done, with the simulated time.
    pub log: Vec<String>,
}

impl Nemesis {
    pub fn new(seed: u64, network: TurmoilNetwork, first_at: Duration, last_start: Duration) -> Nemesis {
        Nemesis {
            rng: Rng::new(seed ^ 0x6E65_6D65_7369_7300),
            network,
            next_at: first_at,
            last_start,
            active: None,
            log: Vec::new(),
        }
    }

    /// Starts or heals a fault when due. `leader`: who leads now, if known.
    pub fn step(&mut self, sim: &mut Sim<'_>, now: Duration, leader: Option<u64>) {
        match self.active {
            Some((fault, heal_at)) if now >= heal_at => {
                heal(sim, &self.network, fault);
                self.log.push(format!("{now:?} heal {fault:?}"));
                self.active = None;
                self.next_at = now + self.between(500, 2_000);
            }
            None if now >= self.next_at && now <= self.last_start => {
                let fault = self.choose(leader);
                inflict(sim, &self.network, fault);
                self.log.push(format!("{now:?} {fault:?}"));
                self.active = Some((fault, now + self.between(500, 3_000)));
            }
            _ => {}
        }
    }

    /// Heals whatever is still active (before the final checks).
    pub fn heal_all(&mut self, sim: &mut Sim<'_>) {
        if let Some((fault, _)) = self.active.take() {
            heal(sim, &self.network, fault);
            self.log.push(format!("end heal {fault:?}"));
        }
    }

    /// Faults inflicted so far.
    pub fn faults(&self) -> usize {
        self.log.iter().filter(|line| !line.contains("heal")).count()
    }

    fn choose(&mut self, leader: Option<u64>) -> Fault {
        let target = match leader {
            Some(leader) if self.rng.below(3) < 2 => leader,
            _ => 1 + self.rng.below(NAME_SERVERS),
        };
        match self.rng.below(6) {
            0 | 1 => Fault::Isolate(target),
            2 | 3 => Fault::Crash(target),
            4 => Fault::Slow,
            _ => Fault::Lossy,
        }
    }

    fn between(&mut self, min_ms: u64, max_ms: u64) -> Duration {
        Duration::from_millis(min_ms + self.rng.below(max_ms - min_ms + 1))
    }
}

fn peers(node: u64) -> impl Iterator<Item = String> {
    (1..=NAME_SERVERS).filter(move |n| *n != node).map(host_name)
}

fn inflict(sim: &mut Sim<'_>, network: &TurmoilNetwork, fault: Fault) {
    match fault {
        Fault::Isolate(node) => {
            for peer in peers(node) {
                sim.partition(host_name(node), peer);
            }
        }
        Fault::Crash(node) => sim.crash(host_name(node)),
        Fault::Slow => sim.set_max_message_latency(SLOW_LATENCY_MAX),
        Fault::Lossy => network.set_loss_per_million(LOSS_PER_MILLION),
    }
}

fn heal(sim: &mut Sim<'_>, network: &TurmoilNetwork, fault: Fault) {
    match fault {
        Fault::Isolate(node) => {
            for peer in peers(node) {
                sim.repair(host_name(node), peer);
            }
        }
        Fault::Crash(node) => sim.bounce(host_name(node)),
        Fault::Slow => sim.set_max_message_latency(LATENCY_MAX),
        Fault::Lossy => network.set_loss_per_million(0),
    }
}
