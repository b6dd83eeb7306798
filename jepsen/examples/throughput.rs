//! Checker throughput: simulates a linearizable register history and times
//! the check.
//!
//! `cargo run --release -p tessera-jepsen --example throughput -- [OPS] [KEYS]
//! [PROCESSES] [OUT.jsonl] [INFO_PCT] [MAX_DELAY_US]` (defaults: 10000 ops, 10
//! keys, 5 processes, 2% of writes with unknown outcome, no delay). With
//! OUT the history is also written, for `tessera-jepsen check OUT`.

use std::time::Instant;

use tessera_jepsen::sim::{simulate_register, SimConfig};
use tessera_jepsen::{check_events, pair, write_jsonl, CheckOptions, Register};

fn arg(i: usize, default: usize) -> usize {
    std::env::args().nth(i).and_then(|a| a.parse().ok()).unwrap_or(default)
}

/// Largest and mean number of operations in flight at an invocation.
fn concurrency(events: &[tessera_jepsen::Event]) -> (usize, f64) {
    let (mut now, mut max, mut sum, mut invokes) = (0usize, 0usize, 0usize, 0usize);
    for e in events {
        if e.kind == tessera_jepsen::EventType::Invoke {
            now += 1;
            max = max.max(now);
            sum += now;
            invokes += 1;
        } else {
            now = now.saturating_sub(1);
        }
    }
    (max, sum as f64 / invokes.max(1) as f64)
}

fn main() {
    let (ops, keys, processes) = (arg(1, 10_000), arg(2, 10), arg(3, 5).max(1));
    let cfg = SimConfig {
        processes,
        keys,
        ops_per_process: ops / processes,
        ..SimConfig::default()
    };
    let cfg = SimConfig {
        info_pct: arg(5, 2) as u64,
        max_delay_us: arg(6, 0) as u64,
        ..cfg
    };
    let start = Instant::now();
    let events = simulate_register(&cfg);
    let paired = pair(&events).expect("simulated history pairs");
    let infos = paired
        .iter()
        .filter(|o| o.outcome == tessera_jepsen::Outcome::Info)
        .count();
    let (max, mean) = concurrency(&events);
    println!(
        "simulated {} ops ({} events, {infos} info, in flight at invoke: max {max}, mean {mean:.2}) in {:.3}s",
        paired.len(),
        events.len(),
        start.elapsed().as_secs_f64()
    );
    if let Some(path) = std::env::args().nth(4) {
        let file = std::fs::File::create(&path).expect("create output");
        write_jsonl(&events, std::io::BufWriter::new(file)).expect("write history");
        println!("wrote {path}");
    }
    let start = Instant::now();
    let report = check_events(&Register, &events, &CheckOptions::default()).expect("valid history");
    let steps: u64 = report.keys.iter().map(|k| k.steps).sum();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "checked {} keys, {steps} steps in {secs:.3}s: {}",
        report.keys.len(),
        report.result
    );
}
