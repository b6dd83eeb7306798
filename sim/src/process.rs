//! One seed, one process. A run's history is a function of its seed only
//! in a fresh process: tokio numbers every task from one process-wide
//! counter, and a crashed host's runtime drops its tasks in an order taken
//! from those numbers (its task list is sharded by task id), so a seed run
//! after another in the same process can take another course than the same
//! seed alone, and a failure found deep in a long run would not replay.
//! [`run_alone`] runs a seed in a `tessera-sim --seed N --json` process of
//! its own; every runner of many seeds (`tessera-sim --seeds`, `--minutes`,
//! the seed tests) goes through it, so every seed it reports replays with
//! the command it prints.

use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::cli::{flags_of, replay_command};
use crate::report::{SeedReport, SimFailure};
use crate::run::SimOptions;

/// A seed's outcome as its process prints it: one JSON line.
#[derive(Debug, Serialize, Deserialize)]
pub enum Outcome {
    Passed(SeedReport),
    Failed(SimFailure),
}

impl Outcome {
    pub fn of(result: Result<SeedReport, SimFailure>) -> Outcome {
        match result {
            Ok(report) => Outcome::Passed(report),
            Err(failure) => Outcome::Failed(failure),
        }
    }

    pub fn into_result(self) -> Result<SeedReport, SimFailure> {
        match self {
            Outcome::Passed(report) => Ok(report),
            Outcome::Failed(failure) => Err(failure),
        }
    }

    /// The JSON line.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"unprintable outcome\": \"{e}\"}}"))
    }
}

/// Marks the line [`report_first_panic`] prints.
const FIRST_PANIC: &str = "tessera-sim: first panic: ";

/// Makes the first panic of this process (a node's assertion, say) print
/// as one marked line before the default report, so that [`run_alone`]
/// names the cause and not the panics that follow it as the runtime
/// unwinds.
pub fn report_first_panic() {
    let default = std::panic::take_hook();
    let reported = std::sync::atomic::AtomicBool::new(false);
    std::panic::set_hook(Box::new(move |info| {
        if !reported.swap(true, std::sync::atomic::Ordering::SeqCst) {
            eprintln!("{FIRST_PANIC}{}", info.to_string().replace('\n', " "));
        }
        default(info);
    }));
}

/// Runs `options` in a process of its own: `tessera_sim` (the
/// `tessera-sim` binary) with the run's flags and `--json`. A process
/// that dies or prints no outcome is a failure of the seed, with the end
/// of its standard error.
pub fn run_alone(tessera_sim: &Path, options: &SimOptions) -> Result<SeedReport, SimFailure> {
    let failure = |reason: String| SimFailure {
        seed: options.seed,
        replay: replay_command(options),
        reason,
        faults: Vec::new(),
        drift: Default::default(),
    };
    let output = Command::new(tessera_sim)
        .args(flags_of(options))
        .arg("--json")
        .output()
        .map_err(|e| failure(format!("starting {}: {e}", tessera_sim.display())))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let outcome = stdout
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str::<Outcome>(line).ok());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let panic = stderr.lines().find_map(|line| line.strip_prefix(FIRST_PANIC));
    match (outcome, panic) {
        (Some(outcome), _) => outcome.into_result(),
        (None, Some(panic)) => Err(failure(format!(
            "its process ended ({}) in a panic: {panic}; its last output:\n{}",
            output.status,
            tail(&stderr, 20)
        ))),
        (None, None) => Err(failure(format!(
            "its process ended ({}) without an outcome; its last output:\n{}\n{}",
            output.status,
            tail(&stdout, 20),
            tail(&stderr, 40)
        ))),
    }
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outcome_reads_back_from_its_line() {
        let failure = SimFailure {
            seed: 4,
            replay: "tessera-sim --seed 4".into(),
            reason: "not linearizable".into(),
            faults: vec!["1.2s crash ns2".into()],
            drift: Default::default(),
        };
        let line = Outcome::Failed(failure).to_line();
        assert!(!line.contains('\n'));
        let Ok(Outcome::Failed(back)) = serde_json::from_str::<Outcome>(&line) else {
            panic!("{line} did not read back as a failure");
        };
        assert_eq!((back.seed, back.reason.as_str()), (4, "not linearizable"));
    }

    #[test]
    fn a_process_without_an_outcome_is_a_failure_of_the_seed() {
        let failure = run_alone(Path::new("/bin/false"), &SimOptions::new(5)).expect_err("no outcome");
        assert_eq!(failure.seed, 5);
        assert!(failure.reason.contains("without an outcome"), "{}", failure.reason);
        assert!(failure.replay.starts_with("tessera-sim --seed 5"));
    }
}
