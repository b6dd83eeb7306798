//! Fault-test harness binary (DESIGN §8, issue 6).
//!
//! `tessera-jepsen check FILE [--model register|set] [--max-steps N]
//! [--max-states N] [--max-memo-mib N] [--time-limit-ms N] [--no-minimize]
//! [--json]` checks a JSON Lines history for linearizability (`--json`
//! prints the full per-key report as JSON). Exit status:
//! 0 linearizable, 1 not linearizable, 2 error (bad arguments or malformed
//! history), 3 unknown (a key ran out of budget).
//!
//! `tessera-jepsen smoke [--seconds N] [--runs N] [--scenarios kill,pause,partition,corrupt,membership]
//! [--binary PATH] [--keep] [--reuse]` runs the fault tests against the
//! docker-compose cluster of `deploy/` (see [`tessera_jepsen::smoke`]).
//! Exit status: 0 every verdict valid, 1 some verdict invalid, 2 error.

use std::fs::File;
use std::io::{BufReader, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tessera_jepsen::smoke::SmokeArgs;
use tessera_jepsen::{check_events, read_jsonl, CheckOptions, CheckResult, Event, Model, Register, Report, SetModel};

const USAGE: &str = concat!(
    "usage: tessera-jepsen smoke [--help]\n",
    "       tessera-jepsen check FILE [--model register|set] [--max-steps N] [--max-states N]\n",
    "       [--max-memo-mib N] [--time-limit-ms N] [--no-minimize] [--json]"
);

struct Args {
    file: String,
    model: String,
    opts: CheckOptions,
    json: bool,
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("smoke") {
        return smoke(&argv);
    }
    if argv.first().map(String::as_str) != Some("check") {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    match parse_args(&argv[1..]).and_then(|args| run(&args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tessera-jepsen: {e}");
            ExitCode::from(2)
        }
    }
}

#[derive(clap::Parser)]
#[command(
    name = "tessera-jepsen smoke",
    about = "Fault tests against the docker-compose cluster"
)]
struct SmokeCommand {
    #[command(flatten)]
    args: SmokeArgs,
}

fn smoke(argv: &[String]) -> ExitCode {
    let command = <SmokeCommand as clap::Parser>::parse_from(argv);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tessera-jepsen: starting the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(tessera_jepsen::smoke::smoke(&command.args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("tessera-jepsen: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn parse_args(argv: &[String]) -> Result<Args, String> {
    let mut args = Args {
        file: String::new(),
        model: "register".into(),
        opts: CheckOptions::default(),
        json: false,
    };
    let mut it = argv.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or(format!("{name} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--model" => args.model = value("--model")?,
            "--max-steps" => args.opts.max_steps = number(&value("--max-steps")?)?,
            "--max-states" => args.opts.max_states = number(&value("--max-states")?)? as usize,
            "--max-memo-mib" => {
                args.opts.max_memo_bytes = (number(&value("--max-memo-mib")?)? as usize).saturating_mul(1 << 20)
            }
            "--time-limit-ms" => {
                args.opts.time_limit = Some(Duration::from_millis(number(&value("--time-limit-ms")?)?))
            }
            "--no-minimize" => args.opts.minimize = false,
            "--json" => args.json = true,
            a if a.starts_with("--") => return Err(format!("unknown option {a}\n{USAGE}")),
            a if args.file.is_empty() => args.file = a.to_string(),
            a => return Err(format!("unexpected argument {a}\n{USAGE}")),
        }
    }
    if args.file.is_empty() {
        return Err(format!("missing FILE\n{USAGE}"));
    }
    Ok(args)
}

fn number(s: &str) -> Result<u64, String> {
    s.parse().map_err(|_| format!("not a number: {s}"))
}

fn run(args: &Args) -> Result<ExitCode, String> {
    let file = File::open(&args.file).map_err(|e| format!("{}: {e}", args.file))?;
    let events = read_jsonl(BufReader::new(file)).map_err(|e| format!("{}: {e}", args.file))?;
    match args.model.as_str() {
        "register" => verdict(&Register, &events, &args.opts, args.json),
        "set" => verdict(&SetModel, &events, &args.opts, args.json),
        m => Err(format!("unknown model {m} (register or set)")),
    }
}

fn verdict<M: Model>(model: &M, events: &[Event], opts: &CheckOptions, json: bool) -> Result<ExitCode, String> {
    let start = Instant::now();
    let report = check_events(model, events, opts).map_err(|e| e.to_string())?;
    let text = if json {
        serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
    } else {
        format!("{}\n{}", summary(&report, events.len(), start.elapsed()), report.result)
    };
    // A closed stdout (e.g. piped into `head`) must not turn into a panic.
    let _ = writeln!(std::io::stdout().lock(), "{text}");
    Ok(ExitCode::from(match report.result {
        CheckResult::Linearizable => 0,
        CheckResult::NotLinearizable(_) => 1,
        CheckResult::Unknown { .. } => 3,
    }))
}

fn summary(report: &Report, events: usize, elapsed: Duration) -> String {
    let steps: u64 = report.keys.iter().map(|k| k.steps).sum();
    let ops: usize = report.keys.iter().map(|k| k.ops).sum();
    format!(
        "{events} events, {ops} checked ops, {} keys, {steps} search steps in {:.3}s",
        report.keys.len(),
        elapsed.as_secs_f64()
    )
}
