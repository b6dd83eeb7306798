//! The `tessera-sim` command line, both ways: [`Args::options`] reads the
//! flags into a run's [`SimOptions`], and [`flags_of`] writes a run's
//! options back as flags. A failure's replay command and the arguments of
//! a seed's own process ([`crate::process`]) come from [`flags_of`], and a
//! test holds the two to being inverses.

use std::time::Duration;

use clap::Parser;

use crate::run::SimOptions;

#[derive(Parser, Debug)]
#[command(name = "tessera-sim", about = "Deterministic simulation of a Tessera cluster")]
pub struct Args {
    /// Run exactly this seed, in this process.
    #[arg(long)]
    pub seed: Option<u64>,
    /// First seed of a range (with --seeds).
    #[arg(long, default_value_t = 1)]
    pub first: u64,
    /// How many consecutive seeds from --first (each in its own process).
    #[arg(long)]
    pub seeds: Option<u64>,
    /// Run random seeds (each in its own process) until this many minutes
    /// have passed.
    #[arg(long)]
    pub minutes: Option<f64>,
    /// Simulated seconds of client workload per seed (default: 20, 30
    /// with --whole-cluster).
    #[arg(long)]
    pub workload_seconds: Option<u64>,
    /// Concurrent client processes (default: 4).
    #[arg(long)]
    pub clients: Option<u64>,
    /// Also run 3 object servers and 6 chunk servers, with the object
    /// workload through the gateway's write protocol.
    #[arg(long)]
    pub whole_cluster: bool,
    /// Turn the deliberate stale-read bug on (to see it caught).
    #[arg(long)]
    pub stale_reads_bug: bool,
    /// Turn the deliberate ack-before-fsync bug of the chunk servers' disks
    /// on (with --whole-cluster).
    #[arg(long)]
    pub ack_before_sync_bug: bool,
    /// Turn the deliberate bug of Raft writes not synced on (name and
    /// object servers).
    #[arg(long)]
    pub unsynced_log_bug: bool,
    /// Print each passing seed's faults and clock drift too.
    #[arg(long)]
    pub show_faults: bool,
    /// Bound of each host's clock-rate drift, in parts per million (0:
    /// no drift).
    #[arg(long, default_value_t = crate::run::DRIFT_PPM_MAX)]
    pub drift: u64,
    /// Skip the whole-cluster garbage check (and its quiet period) at the
    /// end of each seed.
    #[arg(long)]
    pub no_garbage_check: bool,
    /// Seeds run at once, each in its own process (default: one per
    /// core).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Stop at the first failing seed (seeds already running finish).
    #[arg(long)]
    pub stop_at_failure: bool,
    /// Print each seed's outcome as one JSON line (what a parent
    /// `tessera-sim` or test reads from a seed's process).
    #[arg(long)]
    pub json: bool,
}

impl Args {
    /// The options of a run of `seed` as these flags ask.
    pub fn options(&self, seed: u64) -> SimOptions {
        let base = base_options(seed, self.whole_cluster);
        SimOptions {
            workload: self.workload_seconds.map_or(base.workload, Duration::from_secs),
            clients: self.clients.unwrap_or(base.clients),
            stale_reads_bug: self.stale_reads_bug,
            ack_before_sync_bug: self.ack_before_sync_bug,
            unsynced_log_bug: self.unsynced_log_bug,
            drift_ppm_max: self.drift,
            garbage_check: base.garbage_check && !self.no_garbage_check,
            ..base
        }
    }
}

fn base_options(seed: u64, whole_cluster: bool) -> SimOptions {
    match whole_cluster {
        true => SimOptions::whole_cluster(seed),
        false => SimOptions::new(seed),
    }
}

/// The flags that make `tessera-sim` run `options`, beginning with
/// `--seed N`.
pub fn flags_of(options: &SimOptions) -> Vec<String> {
    let base = base_options(options.seed, options.storage);
    let mut flags = vec!["--seed".to_string(), options.seed.to_string()];
    if options.storage {
        flags.push("--whole-cluster".into());
    }
    if options.workload != base.workload {
        flags.extend(["--workload-seconds".into(), options.workload.as_secs().to_string()]);
    }
    if options.clients != base.clients {
        flags.extend(["--clients".into(), options.clients.to_string()]);
    }
    if options.stale_reads_bug {
        flags.push("--stale-reads-bug".into());
    }
    if options.ack_before_sync_bug {
        flags.push("--ack-before-sync-bug".into());
    }
    if options.unsynced_log_bug {
        flags.push("--unsynced-log-bug".into());
    }
    if options.drift_ppm_max != base.drift_ppm_max {
        flags.extend(["--drift".into(), options.drift_ppm_max.to_string()]);
    }
    if options.garbage_check != base.garbage_check {
        flags.push("--no-garbage-check".into());
    }
    flags
}

/// How to run `options` again: `tessera-sim` with the same flags (the
/// debug binary `cargo test` builds sits in the target directory), and the
/// replay test when the options are a test's defaults.
pub fn replay_command(options: &SimOptions) -> String {
    let flags = flags_of(options);
    let command = format!("tessera-sim {}", flags.join(" "));
    let defaults = flags_of(&base_options(options.seed, options.storage));
    if flags != defaults {
        return command;
    }
    let (env, test) = match options.storage {
        true => ("TESSERA_SIM_WHOLE_CLUSTER=1 ", "whole_cluster_replays"),
        false => ("", "replay"),
    };
    format!(
        "{command}, or {env}TESSERA_SIM_SEED={} cargo test --workspace --test seeds -- {test} --exact",
        options.seed
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(flags: &[String]) -> SimOptions {
        let args = Args::try_parse_from(std::iter::once("tessera-sim".to_string()).chain(flags.iter().cloned()))
            .unwrap_or_else(|e| panic!("{flags:?} do not parse: {e}"));
        args.options(args.seed.expect("flags_of writes --seed"))
    }

    #[test]
    fn the_flags_of_a_run_read_back_as_the_same_run() {
        let runs = [
            SimOptions::new(3),
            SimOptions::whole_cluster(4),
            SimOptions {
                workload: Duration::from_secs(7),
                clients: 2,
                stale_reads_bug: true,
                unsynced_log_bug: true,
                drift_ppm_max: 1_000,
                ..SimOptions::new(5)
            },
            SimOptions {
                ack_before_sync_bug: true,
                garbage_check: false,
                drift_ppm_max: 0,
                ..SimOptions::whole_cluster(6)
            },
        ];
        for options in runs {
            assert_eq!(parsed(&flags_of(&options)), options);
        }
    }

    #[test]
    fn only_default_runs_offer_the_replay_test() {
        let plain = replay_command(&SimOptions::whole_cluster(9));
        assert!(plain.starts_with("tessera-sim --seed 9 --whole-cluster, or TESSERA_SIM_WHOLE_CLUSTER=1"));
        let bugged = replay_command(&SimOptions {
            stale_reads_bug: true,
            ..SimOptions::new(9)
        });
        assert_eq!(bugged, "tessera-sim --seed 9 --stale-reads-bug");
    }
}
