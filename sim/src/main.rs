//! `tessera-sim`: runs simulated seeds for as long as asked, printing one
//! line per seed and the failing seeds' replay commands.
//!
//! ```text
//! tessera-sim --seed 42                 # one seed
//! tessera-sim --first 1 --seeds 100     # seeds 1..=100
//! tessera-sim --minutes 30              # random seeds for 30 minutes
//! tessera-sim --minutes 5 --stale-reads-bug   # how fast the bug is caught
//! tessera-sim --whole-cluster --seeds 10       # with object and chunk servers
//! ```

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use tessera_sim::run::{run_seed, SimOptions};

#[derive(Parser, Debug)]
#[command(name = "tessera-sim", about = "Deterministic simulation of a Tessera cluster")]
struct Args {
    /// Run exactly this seed.
    #[arg(long)]
    seed: Option<u64>,
    /// First seed of a range (with --seeds).
    #[arg(long, default_value_t = 1)]
    first: u64,
    /// How many consecutive seeds from --first.
    #[arg(long)]
    seeds: Option<u64>,
    /// Run random seeds until this many minutes have passed.
    #[arg(long)]
    minutes: Option<f64>,
    /// Simulated seconds of client workload per seed (default: 20, 30
    /// with --whole-cluster).
    #[arg(long)]
    workload_seconds: Option<u64>,
    /// Also run 3 object servers and 6 chunk servers, with the object
    /// workload through the gateway's write protocol.
    #[arg(long)]
    whole_cluster: bool,
    /// Turn the deliberate stale-read bug on (to see it caught).
    #[arg(long)]
    stale_reads_bug: bool,
    /// Turn the deliberate ack-before-fsync bug of the chunk servers' disks
    /// on (with --whole-cluster).
    #[arg(long)]
    ack_before_sync_bug: bool,
    /// Print each passing seed's faults and clock drift too.
    #[arg(long)]
    show_faults: bool,
    /// Bound of each host's clock-rate drift, in parts per million (0:
    /// no drift; --drift alone: 50000, i.e. 5%). A failing seed with drift
    /// replays when run alone (`--seed N`).
    #[arg(long, num_args = 0..=1, default_value_t = 0, default_missing_value = "50000")]
    drift: u64,
    /// Skip the whole-cluster garbage check (and its quiet period) at the
    /// end of each seed.
    #[arg(long)]
    no_garbage_check: bool,
    /// Stop at the first failing seed.
    #[arg(long)]
    stop_at_failure: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let started = Instant::now();
    let deadline = args.minutes.map(|m| started + Duration::from_secs_f64(m * 60.0));
    let mut seeds: Box<dyn Iterator<Item = u64>> = match (args.seed, args.seeds, deadline) {
        (Some(seed), _, _) => Box::new(std::iter::once(seed)),
        (None, Some(count), _) => Box::new(args.first..args.first.saturating_add(count)),
        (None, None, Some(_)) => Box::new(std::iter::repeat_with(rand_seed)),
        (None, None, None) => Box::new(std::iter::once(args.first)),
    };
    let (mut passed, mut failed) = (0u64, Vec::new());
    while deadline.is_none_or(|d| Instant::now() < d) {
        let Some(seed) = seeds.next() else { break };
        let base = match args.whole_cluster {
            true => SimOptions::whole_cluster(seed),
            false => SimOptions::new(seed),
        };
        let options = SimOptions {
            workload: args.workload_seconds.map_or(base.workload, Duration::from_secs),
            stale_reads_bug: args.stale_reads_bug,
            ack_before_sync_bug: args.ack_before_sync_bug,
            drift_ppm_max: args.drift,
            garbage_check: base.garbage_check && !args.no_garbage_check,
            ..base
        };
        match run_seed(&options) {
            Ok(report) => {
                passed += 1;
                println!("{report}");
                if args.show_faults {
                    println!("  faults: {}", report.fault_log.join("; "));
                    println!("  clock drift: {}", report.drift);
                }
            }
            Err(failure) => {
                println!("FAILED {failure}");
                failed.push(seed);
                if args.stop_at_failure {
                    break;
                }
            }
        }
    }
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    let total = passed + failed.len() as u64;
    println!(
        "{total} seeds in {minutes:.2} min ({:.1} per minute): {passed} passed, {} failed {failed:?}",
        total as f64 / minutes.max(1e-9),
        failed.len()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn rand_seed() -> u64 {
    tessera_common::rng::random_u64()
}
