//! What a run hands back: a [`SeedReport`] when every invariant held, a
//! [`SimFailure`] (with the command that replays it) when one broke. Both
//! cross process boundaries as JSON ([`crate::process`]).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::chunk_check::ChunksChecked;
use crate::drift::DriftRates;
use crate::objects;
use crate::workload::Tally;

/// A run that held every invariant.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SeedReport {
    pub seed: u64,
    pub tally: Tally,
    pub faults: usize,
    /// The faults and heals, with simulated times.
    pub fault_log: Vec<String>,
    /// Each host's clock-rate drift.
    pub drift: DriftRates,
    /// Acknowledged set elements, all read back whole at the end
    /// (whole-cluster runs).
    pub set_elements: u64,
    /// Partition-replica state audits that came back clean (whole-cluster
    /// runs; an unclean one fails the run).
    pub audits_clean: u64,
    /// What the garbage check compared when it found nothing beside what
    /// the names need (runs with [`SimOptions::garbage_check`]).
    pub garbage_checked: Option<NoGarbage>,
    pub elections_won: usize,
    pub applied_max: u64,
    /// blake3 of the history without wall-clock times: equal for equal runs.
    pub digest: String,
    pub simulated: Duration,
    pub wall: Duration,
}

impl fmt::Display for SeedReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {}: ok {} ({} writes) fail {} info {}, {} set elements, {} clean audits, {}, {} faults, {} elections won, applied {}, {:?} simulated in {:?}, history {}",
            self.seed,
            self.tally.ok,
            self.tally.ok_writes,
            self.tally.fail,
            self.tally.info,
            self.set_elements,
            self.audits_clean,
            match self.garbage_checked {
                Some(NoGarbage { live, chunks }) => format!(
                    "no garbage beside {} names of {} bytes in {} chunks ({} group columns)",
                    live.objects, live.bytes, chunks.held, chunks.referenced
                ),
                None => "no garbage check".to_string(),
            },
            self.faults,
            self.elections_won,
            self.applied_max,
            self.simulated,
            self.wall,
            &self.digest[..16]
        )
    }
}

/// What a passed garbage check compared: the partitions held exactly what
/// the names need, the chunk servers exactly the groups' chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoGarbage {
    pub live: objects::Live,
    pub chunks: ChunksChecked,
}

/// A run that broke an invariant or could not run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimFailure {
    pub seed: u64,
    /// The command that runs the seed again, with the same options.
    pub replay: String,
    pub reason: String,
    /// The faults, with simulated times.
    pub faults: Vec<String>,
    /// Each host's clock-rate drift.
    pub drift: DriftRates,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "seed {} failed: {}", self.seed, self.reason)?;
        writeln!(f, "faults: {}", self.faults.join("; "))?;
        writeln!(f, "clock drift: {}", self.drift)?;
        write!(f, "replay: {}", self.replay)
    }
}

impl std::error::Error for SimFailure {}
