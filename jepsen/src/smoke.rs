//! `tessera-jepsen smoke`: what CI runs on every change. It brings a
//! cluster up from nothing (the compose backend: builds the image from a
//! `tessera` binary and starts deploy/'s containers; the local backend: the
//! same topology as processes in network namespaces), runs each scenario
//! (register, set and multipart workloads under one nemesis), takes the
//! cluster down, and prints the scenario × verdict table. Any invalid or
//! undecided verdict fails it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::control::compose::Compose;
use crate::control::local::Local;
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
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kill,pause,partition,corrupt,membership"
    )]
    pub scenarios: Vec<NemesisKind>,
    /// Seconds of workload per scenario (70: four fault cycles, so every
    /// rotation of a nemesis is reached).
    #[arg(long, default_value_t = 70)]
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
    /// Which cluster: `compose` (deploy/'s containers) or `local` (the same
    /// topology as processes in network namespaces, no Docker needed).
    #[arg(long, value_enum, default_value = "compose")]
    pub backend: Backend,
    /// Where the local backend keeps configs, data, certificates and logs
    /// (emptied at the start of a run, kept afterwards).
    #[arg(long, default_value = "/var/tmp/tessera-jepsen-local")]
    pub local_root: PathBuf,
    /// Use the running cluster as it is (no image build, no restart).
    #[arg(long)]
    pub reuse: bool,
}

/// Where the fault tests run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    Compose,
    Local,
}

/// Runs the smoke matrix; Ok(true) when every verdict is valid.
pub async fn smoke(args: &SmokeArgs) -> anyhow::Result<bool> {
    let verdicts = match args.backend {
        Backend::Compose => smoke_compose(args).await?,
        Backend::Local => smoke_local(args).await?,
    };
    print_table(&verdicts);
    Ok(verdicts.iter().all(|v| v.valid))
}

/// The `tessera` binary the cluster runs.
fn tessera_binary(args: &SmokeArgs) -> anyhow::Result<PathBuf> {
    match &args.binary {
        Some(binary) => Ok(binary.clone()),
        None => Ok(std::env::current_exe()
            .context("locating this harness")?
            .with_file_name("tessera")),
    }
}

async fn smoke_local(args: &SmokeArgs) -> anyhow::Result<Vec<Verdict>> {
    anyhow::ensure!(!args.reuse, "--reuse needs the compose backend");
    require(
        &[("ip", &["-V"]), ("iptables-restore", &["--version"])],
        "iproute2, iptables-restore and root",
    )?;
    let (binary, repo, root) = (tessera_binary(args)?, args.repo.clone(), args.local_root.clone());
    let (local, credentials) = tokio::task::spawn_blocking(move || Local::up(&repo, &binary, &root))
        .await
        .context("joining the local cluster's start")?
        .context("starting the local cluster")?;
    let local = Arc::new(local);
    let outcome = run_matrix(args, local.clone(), &credentials).await;
    if !args.keep {
        let stopping = local.clone();
        let _ = tokio::task::spawn_blocking(move || stopping.down()).await;
    }
    outcome
}

async fn smoke_compose(args: &SmokeArgs) -> anyhow::Result<Vec<Verdict>> {
    require(
        &[
            ("docker", &["info", "--format", "{{.ServerVersion}}"]),
            ("nsenter", &["--version"]),
            ("iptables-restore", &["--version"]),
        ],
        "a running Docker engine, nsenter and iptables-restore, and root",
    )?;
    if !args.reuse {
        let binary = tessera_binary(args)?;
        script(
            &args.repo,
            "deploy/build-image.sh",
            &[binary.to_string_lossy().as_ref()],
        )?;
        script(&args.repo, "deploy/cluster.sh", &["down"])?;
        script(&args.repo, "deploy/cluster.sh", &["up"])?;
    }
    let credentials = Credentials::load(&args.repo.join("deploy/.cluster/credentials.json"))?;
    let outcome = run_matrix(args, Arc::new(Compose::new()), &credentials).await;
    if !args.keep {
        if let Err(e) = script(&args.repo, "deploy/cluster.sh", &["down"]) {
            eprintln!("tessera-jepsen: taking the cluster down: {e:#}");
        }
    }
    outcome
}

async fn run_matrix(
    args: &SmokeArgs,
    control: Arc<dyn Control>,
    credentials: &Credentials,
) -> anyhow::Result<Vec<Verdict>> {
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
            let verdict = run_scenario(Arc::clone(&control), credentials, &scenario, &args.results).await?;
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
        "{:<10} {:>6} {:>5} {:>5} {:>5} {:<9} {:<9} {:<9} {:<9} {:<9} {:>6}",
        "scenario", "faults", "ok", "fail", "info", "register", "set", "integrity", "garbage", "felt", "valid"
    );
    for v in verdicts {
        println!(
            "{:<10} {:>6} {:>5} {:>5} {:>5} {:<9} {:<9} {:<9} {:<9} {:<9} {:>6}",
            format!("{:?}", v.scenario).to_lowercase(),
            v.faults.len(),
            v.register.ok,
            v.register.fail,
            v.register.info,
            mark(v.register.valid),
            mark(v.set.valid),
            mark(v.integrity.valid),
            mark(v.garbage.valid),
            mark(v.faults_felt.valid),
            mark(v.valid)
        );
        let counters: Vec<String> = v.cluster_counters.iter().map(|(k, n)| format!("{k}={n}")).collect();
        println!("  cluster counters during the run: {}", counters.join(" "));
        println!("  faults: {}", v.faults_felt.why);
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

/// Fails with a clear message when this machine lacks a tool the fault
/// tests need (`needs` says what, for the message).
fn require(checks: &[(&str, &[&str])], needs: &str) -> anyhow::Result<()> {
    for (program, args) in checks {
        let ok = Command::new(program)
            .args(*args)
            .output()
            .is_ok_and(|out| out.status.success());
        if !ok {
            bail!("the fault tests need {needs}: `{program} {}` failed", args.join(" "));
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
