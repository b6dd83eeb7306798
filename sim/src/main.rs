//! `tessera-sim`: runs simulated seeds for as long as asked, printing one
//! line per seed and the failing seeds' replay commands. One seed
//! (`--seed N`) runs in this process; many seeds run each in a process of
//! its own ([`tessera_sim::process`]), so each replays alone.
//!
//! ```text
//! tessera-sim --seed 42                 # one seed
//! tessera-sim --first 1 --seeds 100     # seeds 1..=100
//! tessera-sim --minutes 30              # random seeds for 30 minutes
//! tessera-sim --minutes 5 --stale-reads-bug   # how fast the bug is caught
//! tessera-sim --whole-cluster --seeds 10       # with object and chunk servers
//! tessera-sim --minutes 30 --jobs 1     # one seed at a time (default: one per core)
//! tessera-sim --seeds 20 --unsynced-log-bug   # which seeds catch Raft writes not synced
//! ```

use std::path::Path;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::Parser;
use tessera_sim::cli::Args;
use tessera_sim::process::{run_alone, Outcome};
use tessera_sim::report::{SeedReport, SimFailure};
use tessera_sim::run::run_seed;

// Power loss of name and object servers observes every fsync.
tessera_sim::interpose_fsync!();

fn main() -> ExitCode {
    let args = Args::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    if let Some(seed) = args.seed {
        tessera_sim::process::report_first_panic();
        let result = run_seed(&args.options(seed));
        let passed = result.is_ok();
        print_outcome(&args, result);
        return if passed { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }
    let tessera_sim = match std::env::current_exe() {
        Ok(path) => path,
        Err(e) => {
            eprintln!("error: finding this executable to run each seed in a process of its own: {e}");
            return ExitCode::FAILURE;
        }
    };
    run_many(&args, &tessera_sim)
}

/// What the workers of [`run_many`] share: the seeds not yet taken and
/// the outcomes so far.
struct Progress {
    seeds: Box<dyn Iterator<Item = u64> + Send>,
    passed: u64,
    failed: Vec<u64>,
}

/// Runs the seeds `args` ask for, each in a process of its own, `--jobs`
/// at a time; outcomes print as they come.
fn run_many(args: &Args, tessera_sim: &Path) -> ExitCode {
    let started = Instant::now();
    let deadline = args.minutes.map(|m| started + Duration::from_secs_f64(m * 60.0));
    let seeds: Box<dyn Iterator<Item = u64> + Send> = match (args.seeds, deadline) {
        (Some(count), _) => Box::new(args.first..args.first.saturating_add(count)),
        (None, Some(_)) => Box::new(std::iter::repeat_with(tessera_common::rng::random_u64)),
        (None, None) => Box::new(std::iter::once(args.first)),
    };
    let progress = Mutex::new(Progress {
        seeds,
        passed: 0,
        failed: Vec::new(),
    });
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| run_seeds(args, tessera_sim, deadline, &progress));
        }
    });
    let progress = progress.into_inner().unwrap_or_else(|p| p.into_inner());
    let (passed, failed) = (progress.passed, progress.failed);
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    let total = passed + failed.len() as u64;
    println!(
        "{total} seeds in {minutes:.2} min ({:.1} per minute): {passed} passed, {} failed {failed:?}",
        total as f64 / minutes.max(1e-9),
        failed.len()
    );
    match failed.is_empty() {
        true => ExitCode::SUCCESS,
        false => ExitCode::FAILURE,
    }
}

/// One worker of [`run_many`]: takes the next seed until none is left,
/// the deadline passed, or (with `--stop-at-failure`) a seed failed.
fn run_seeds(args: &Args, tessera_sim: &Path, deadline: Option<Instant>, progress: &Mutex<Progress>) {
    let lock = || progress.lock().unwrap_or_else(|p| p.into_inner());
    while deadline.is_none_or(|d| Instant::now() < d) {
        let seed = {
            let mut progress = lock();
            if args.stop_at_failure && !progress.failed.is_empty() {
                return;
            }
            match progress.seeds.next() {
                Some(seed) => seed,
                None => return,
            }
        };
        let result = run_alone(tessera_sim, &args.options(seed));
        let mut progress = lock();
        match result.is_ok() {
            true => progress.passed += 1,
            false => progress.failed.push(seed),
        }
        print_outcome(args, result);
    }
}

fn print_outcome(args: &Args, result: Result<SeedReport, SimFailure>) {
    if args.json {
        println!("{}", Outcome::of(result).to_line());
        return;
    }
    match result {
        Ok(report) => {
            println!("{report}");
            if args.show_faults {
                println!("  faults: {}", report.fault_log.join("; "));
                println!("  clock drift: {}", report.drift);
            }
        }
        Err(failure) => println!("FAILED {failure}"),
    }
}
