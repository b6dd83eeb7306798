//! The deterministic simulation in `cargo test` (issue 7): a fixed set of
//! seeds must hold every invariant; a seed replays exactly; and the
//! deliberate stale-read bug is caught within a few seeds.
//!
//! The same holds for the deliberate Raft log bug (log and votes not
//! synced), which only a power loss of name servers shows.
//!
//! The whole cluster (3 name servers, 3 object servers, 6 chunk servers,
//! objects written through the gateway's write protocol) runs a fixed set
//! of seeds too, with every partition replica audited and the garbage
//! check at the end, and replays.
//!
//! Every seed runs in a `tessera-sim` process of its own
//! ([`tessera_sim::process`]), so what a test saw of a seed is what the
//! seed does alone. Replay a failing seed with the command its failure
//! prints: `tessera-sim --seed N ...`, or for a seed with the tests'
//! default options `TESSERA_SIM_SEED=N cargo test --workspace --test seeds
//! -- replay --exact` (`TESSERA_SIM_WHOLE_CLUSTER=1 ... --
//! whole_cluster_replays --exact` for a whole-cluster seed), which runs it
//! twice and compares the histories.

use std::path::Path;

use tessera_sim::process::run_alone;
use tessera_sim::report::{SeedReport, SimFailure};
use tessera_sim::run::SimOptions;

/// Seeds every `cargo test` runs.
const FIXED_SEEDS: [u64; 4] = [1, 2, 3, 4];
/// Whole-cluster seeds, each with or without clock drift (without:
/// `tessera-sim --seed N --whole-cluster --drift 0`).
const WHOLE_CLUSTER_SEEDS: [(u64, bool); 2] = [(1, false), (2, true)];
/// The ack-before-fsync bug must be caught by one of these (measured with
/// clock drift on by default, open chunks scrubbed and name and object
/// servers losing power too: seed 1, whose faults include a power loss of
/// every chunk server at 9.1 s, catches it in 0.70 min, with snapshots too; before pauses were
/// among the faults, seeds 3 and 4 did and 1, 2 and 5 did not).
const ACK_BUG_SEEDS: std::ops::RangeInclusive<u64> = 1..=6;
/// The stale-read bug must be caught by one of these (measured with clock
/// drift, name-server power losses and snapshots every 300 entries: seed 6
/// catches it, 0.59 min after seed 1 began; in earlier builds seed 2 or 1,
/// and 8 of seeds 1..=30).
const BUG_SEEDS: std::ops::RangeInclusive<u64> = 1..=16;
/// The unsynced Raft log bug must be caught by one of these (measured:
/// seed 2, whose name server n1 loses power at 8.4 s and comes back at
/// 11.0 s in term 1 after voting in term 2, 0.16 min after seed 1 began;
/// among whole-cluster seeds 1..=4, 2, 3 and 4 catch it, 2 and 4 as
/// openraft's own panic at a partition follower's log going back).
const UNSYNCED_LOG_BUG_SEEDS: std::ops::RangeInclusive<u64> = 1..=16;
/// How a forgotten vote or entry shows: a term went back, two members
/// applied different entries at one index, openraft's leader saw a
/// follower's log go back (it panics), or the history broke.
const UNSYNCED_LOG_SYMPTOMS: &[&str] = &[
    "term went back",
    "where another member applied",
    "follower log reversion",
    "not linearizable",
];

fn replay_seed() -> Option<u64> {
    let text = std::env::var("TESSERA_SIM_SEED").ok()?;
    match text.trim().parse() {
        Ok(seed) => Some(seed),
        Err(e) => panic!("TESSERA_SIM_SEED={text:?} is not a seed: {e}"),
    }
}

#[test]
fn fixed_seeds_hold_every_invariant() {
    for seed in FIXED_SEEDS {
        let report = run(&SimOptions::new(seed)).unwrap_or_else(|failure| panic!("{failure}"));
        println!("{report}");
        at_least(seed, report.faults, 3, "faults inflicted");
        at_least(seed, report.tally.ok, 100, "ok operations");
        assert!(
            report.elections_won >= 2,
            "seed {seed}: no leader change ({} elections won)",
            report.elections_won
        );
    }
}

/// Runs `TESSERA_SIM_SEED` (or seed 7) twice: same history, same counts.
#[test]
fn replay() {
    let seed = replay_seed().unwrap_or(7);
    let (first, second) = run_twice(&SimOptions::new(seed));
    assert_eq!(first.tally, second.tally);
    assert_eq!(first.applied_max, second.applied_max);
}

#[test]
fn the_deliberate_stale_read_bug_is_caught() {
    let options = |seed| SimOptions {
        stale_reads_bug: true,
        ..SimOptions::new(seed)
    };
    first_catch("the stale-read bug", BUG_SEEDS, options, &["not linearizable"]);
}

/// Name servers whose Raft log and votes are not synced forget entries and
/// votes they acknowledged when they lose power; a forgotten vote lets a
/// second leader into the term, a forgotten entry lets a new leader
/// overwrite a committed one.
#[test]
fn the_deliberate_unsynced_raft_log_bug_is_caught() {
    let options = |seed| SimOptions {
        unsynced_log_bug: true,
        ..SimOptions::new(seed)
    };
    first_catch(
        "the unsynced Raft log bug",
        UNSYNCED_LOG_BUG_SEEDS,
        options,
        UNSYNCED_LOG_SYMPTOMS,
    );
}

/// Runs `options(seed)` for each of `seeds` until one fails with one of
/// `symptoms` in its reason; panics if none fails, or one fails otherwise.
fn first_catch(
    bug: &str,
    seeds: std::ops::RangeInclusive<u64>,
    options: impl Fn(u64) -> SimOptions,
    symptoms: &[&str],
) {
    let mut passed = Vec::new();
    for seed in seeds {
        match run(&options(seed)) {
            Ok(report) => passed.push(report.seed),
            Err(failure) => {
                println!(
                    "{bug} caught by seed {seed} after {} passing seeds:\n{failure}",
                    passed.len()
                );
                assert!(
                    symptoms.iter().any(|symptom| failure.reason.contains(symptom)),
                    "seed {seed} failed for another reason than {symptoms:?}: {failure}"
                );
                return;
            }
        }
    }
    panic!("{bug} passed seeds {passed:?}: the simulation does not catch it");
}

#[test]
fn whole_cluster_seeds_hold_every_invariant() {
    for (seed, drift) in WHOLE_CLUSTER_SEEDS {
        let whole_cluster = SimOptions::whole_cluster(seed);
        let options = SimOptions {
            drift_ppm_max: if drift { whole_cluster.drift_ppm_max } else { 0 },
            ..whole_cluster
        };
        let report = run(&options).unwrap_or_else(|failure| panic!("{failure}"));
        println!("{report}");
        at_least(seed, report.faults, 3, "faults inflicted");
        at_least(seed, report.tally.ok_writes, 50, "objects written");
        at_least(seed, report.tally.ok, 200, "ok operations");
        at_least(seed, report.audits_clean, 100, "partition states audited");
        let checked = report.garbage_checked.expect("the garbage check ran");
        at_least(seed, checked.live.objects, 50, "names checked for garbage");
        at_least(seed, checked.chunks.referenced, 6, "columns checked on chunk servers");
    }
}

/// Runs a whole-cluster seed (`TESSERA_SIM_SEED` when
/// `TESSERA_SIM_WHOLE_CLUSTER` is set, else seed 3) twice: same history.
#[test]
fn whole_cluster_replays() {
    let chosen = std::env::var_os("TESSERA_SIM_WHOLE_CLUSTER").and_then(|_| replay_seed());
    // A chosen seed runs as the fixed seeds do; the default one without
    // the garbage check, whose quiet period adds no history.
    let options = match chosen {
        Some(seed) => SimOptions::whole_cluster(seed),
        None => SimOptions {
            garbage_check: false,
            ..SimOptions::whole_cluster(3)
        },
    };
    let (first, second) = run_twice(&options);
    assert_eq!(first.tally, second.tally);
    assert_eq!(first.set_elements, second.set_elements);
}

/// Asserts that a seed's report counted at least `min` of `what`.
fn at_least<T: PartialOrd + std::fmt::Display>(seed: u64, counted: T, min: T, what: &str) {
    assert!(counted >= min, "seed {seed}: only {counted} {what}");
}

/// Runs a seed in a `tessera-sim` process of its own.
fn run(options: &SimOptions) -> Result<SeedReport, SimFailure> {
    run_alone(Path::new(env!("CARGO_BIN_EXE_tessera-sim")), options)
}

/// Runs `options` in two processes at once; both must pass with the same
/// history.
fn run_twice(options: &SimOptions) -> (SeedReport, SeedReport) {
    let (first, second) = std::thread::scope(|scope| {
        let first = scope.spawn(|| run(options));
        let second = run(options);
        (first.join().expect("the first run's thread"), second)
    });
    let passed = |run: Result<SeedReport, SimFailure>| run.unwrap_or_else(|failure| panic!("{failure}"));
    let (first, second) = (passed(first), passed(second));
    println!("{first}\n{second}");
    assert_eq!(
        first.digest, second.digest,
        "seed {} did not replay: histories differ",
        options.seed
    );
    (first, second)
}

/// Chunk servers that acknowledge appends before they are synced lose
/// acknowledged objects when every chunk server loses power at once; the
/// final reads of the set workload must notice.
#[test]
fn the_deliberate_ack_before_sync_bug_is_caught() {
    let options = |seed| SimOptions {
        ack_before_sync_bug: true,
        garbage_check: false,
        ..SimOptions::whole_cluster(seed)
    };
    first_catch(
        "the ack-before-sync bug",
        ACK_BUG_SEEDS,
        options,
        &["acknowledged set element"],
    );
}
