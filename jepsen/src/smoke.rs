//! `tessera-jepsen smoke`: what CI runs on every change. It builds the
//! image from a `tessera` binary, brings the compose cluster up from
//! nothing, runs each scenario (register, set and multipart workloads under
//! one nemesis), takes the cluster down, and prints the scenario × verdict
//! table. Any invalid or undecided verdict fails it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::control::compose::Compose;
use crate::control::Control;
use crate::nemesis::{NemesisKind, Schedule};
use crate::run::{run_scenario, Credentials, Scenario, Verdict};
use crate::workload::WorkloadConfig;

/// Options of `smoke` and `run`.
#[derive(clap::Args, Debug, Clone)]
pub struct SmokeArgs {
    /// The repository (holding deploy/).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/.."))]
    pub repo: PathBuf,
    /// The `tessera` binary the image is built from (default: the one next
    /// to this harness, i.e. the same cargo profile).
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// Scenarios to run, in order.
    #[arg(long, value_delimiter = ',', default_value = "kill,pause,partition,corrupt")]
    pub scenarios: Vec<NemesisKind>,
    /// Seconds of workload per scenario.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Runs of each scenario.
    #[arg(long, default_value_t = 1)]
    pub runs: u32,
    /// Seed of the workload and the nemesis.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where results directories go.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results"))]
    pub results: PathBuf,
    /// Leave the cluster running afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Use the running cluster as it is (no image build, no restart).
    #[arg(long)]
    pub reuse: bool,
}

/// Runs the smoke matrix; Ok(true) when every verdict is valid.
pub async fn smoke(args: &SmokeArgs) -> anyhow::Result<bool> {
    require_tools()?;
    if !args.reuse {
        let binary = match &args.binary {
            Some(binary) => binary.clone(),
            None => std::env::current_exe()
                .context("locating this harness")?
                .with_file_name("tessera"),
        };
        script(
            &args.repo,
            "deploy/build-image.sh",
            &[binary.to_string_lossy().as_ref()],
        )?;
        script(&args.repo, "deploy/cluster.sh", &["down"])?;
        script(&args.repo, "deploy/cluster.sh", &["up"])?;
    }
    let outcome = run_matrix(args).await;
    if !args.keep {
        if let Err(e) = script(&args.repo, "deploy/cluster.sh", &["down"]) {
            eprintln!("tessera-jepsen: taking the cluster down: {e:#}");
        }
    }
    let verdicts = outcome?;
    print_table(&verdicts);
    Ok(verdicts.iter().all(|v| v.valid))
}

async fn run_matrix(args: &SmokeArgs) -> anyhow::Result<Vec<Verdict>> {
    let credentials = Credentials::load(&args.repo.join("deploy/.cluster/credentials.json"))?;
    let control: Arc<dyn Control> = Arc::new(Compose::new());
    let mut verdicts = Vec::new();
    for run in 0..args.runs {
        for (i, kind) in args.scenarios.iter().enumerate() {
            let scenario = Scenario {
                nemesis: *kind,
                duration: Duration::from_secs(args.seconds),
                schedule: Schedule::default(),
                workload: WorkloadConfig {
                    seed: args.seed.wrapping_add(u64::from(run) * 100 + i as u64),
                    ..WorkloadConfig::default()
                },
                quiesce_max: Duration::from_secs(180),
            };
            eprintln!("tessera-jepsen: scenario {kind:?}, run {}, {} s", run + 1, args.seconds);
            let verdict = run_scenario(Arc::clone(&control), &credentials, &scenario, &args.results).await?;
            eprintln!(
                "tessera-jepsen: {kind:?}: {} ({})",
                if verdict.valid { "valid" } else { "INVALID" },
                verdict.results_dir.display()
            );
            verdicts.push(verdict);
        }
    }
    Ok(verdicts)
}

fn print_table(verdicts: &[Verdict]) {
    let mark = |ok: bool| if ok { "ok" } else { "FAIL" };
    println!(
        "{:<10} {:>6} {:>5} {:>5} {:>5} {:<9} {:<9} {:<9} {:<9} {:>6}",
        "scenario", "faults", "ok", "fail", "info", "register", "set", "integrity", "garbage", "valid"
    );
    for v in verdicts {
        println!(
            "{:<10} {:>6} {:>5} {:>5} {:>5} {:<9} {:<9} {:<9} {:<9} {:>6}",
            format!("{:?}", v.scenario).to_lowercase(),
            v.faults.len(),
            v.register.ok,
            v.register.fail,
            v.register.info,
            mark(v.register.valid),
            mark(v.set.valid),
            mark(v.integrity.valid),
            mark(v.garbage.valid),
            mark(v.valid)
        );
        let counters: Vec<String> = v.cluster_counters.iter().map(|(k, n)| format!("{k}={n}")).collect();
        println!("  cluster counters so far: {}", counters.join(" "));
        if !v.valid {
            println!("  register: {}", v.register.result);
            println!(
                "  set: lost {:?} unexpected {:?} stale {:?} {:?}",
                v.set.lost, v.set.unexpected, v.set.stale, v.set.error
            );
            println!("  integrity: {:?}", v.integrity.violations);
            println!("  garbage: {:?}", v.garbage);
            println!("  results: {}", v.results_dir.display());
        }
    }
}

/// Fails with a clear message when this machine cannot run the fault tests.
fn require_tools() -> anyhow::Result<()> {
    let checks: [(&str, &[&str]); 3] = [
        ("docker", &["info", "--format", "{{.ServerVersion}}"]),
        ("nsenter", &["--version"]),
        ("iptables-restore", &["--version"]),
    ];
    for (program, args) in checks {
        let ok = Command::new(program)
            .args(args)
            .output()
            .is_ok_and(|out| out.status.success());
        if !ok {
            bail!(
                "the fault tests need a running Docker engine, nsenter and iptables-restore, \
                 and root: `{program} {}` failed",
                args.join(" ")
            );
        }
    }
    Ok(())
}

fn script(repo: &Path, path: &str, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(repo.join(path))
        .args(args)
        .current_dir(repo)
        .status()
        .with_context(|| format!("running {path}"))?;
    if !status.success() {
        bail!("{path} {} failed ({status})", args.join(" "));
    }
    Ok(())
}
