//! A reference simulation that produces linearizable register histories.
//!
//! Threads (one per process) run random register operations against a
//! `Mutex`-protected map and record real invocation and completion order
//! with a [`Recorder`]: each operation takes effect under the map's lock,
//! between its two events, so the history is linearizable by construction.
//! Some operations are recorded `info` (applied or not, at random) or
//! `fail` (not applied), as a faulty network would make them. Used to test
//! the checker and to measure its throughput.

use std::collections::HashMap;
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};

use crate::history::{Event, EventType, Func, Recorder, PRECONDITION_FAILED};

/// A small deterministic PRNG (SplitMix64).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`; 0 when `n == 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// True with probability `pct` percent.
    pub fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}

/// Shape of a simulated run.
#[derive(Clone, Copy, Debug)]
pub struct SimConfig {
    /// Concurrent processes (threads).
    pub processes: usize,
    /// Keys, named `k0`, `k1`, ...
    pub keys: usize,
    /// Operations each process runs.
    pub ops_per_process: usize,
    /// Percent of writes recorded `info` (half of them applied).
    pub info_pct: u64,
    /// Percent of writes recorded `fail` (not applied).
    pub fail_pct: u64,
    /// Seed.
    pub seed: u64,
    /// Random pause of up to this many microseconds before and after each
    /// operation takes effect, to make operations overlap (0: just yield).
    pub max_delay_us: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            processes: 5,
            keys: 3,
            ops_per_process: 100,
            info_pct: 2,
            fail_pct: 2,
            seed: 1,
            max_delay_us: 0,
        }
    }
}

type Store = Mutex<HashMap<String, String>>;

/// Runs the simulation and returns the recorded history.
pub fn simulate_register(cfg: &SimConfig) -> Vec<Event> {
    let recorder = Recorder::new();
    let store: Store = Mutex::new(HashMap::new());
    thread::scope(|s| {
        for p in 0..cfg.processes {
            let (recorder, store) = (&recorder, &store);
            s.spawn(move || run_process(cfg, p as u64, recorder, store));
        }
    });
    recorder.events()
}

fn run_process(cfg: &SimConfig, p: u64, recorder: &Recorder, store: &Store) {
    let mut rng = Rng::new(cfg.seed.wrapping_mul(1_000_003).wrapping_add(p));
    for i in 0..cfg.ops_per_process {
        let key = format!("k{}", rng.below(cfg.keys as u64));
        let (f, value) = pick_op(&mut rng, store, &key, &format!("p{p}-{i}"));
        recorder.record(Event::new(EventType::Invoke, p, f, key.clone(), value.clone()));
        pause(&mut rng, cfg.max_delay_us);
        let fate = if f != Func::Read && rng.chance(cfg.info_pct) {
            Fate::Info { apply: rng.chance(50) }
        } else if f != Func::Read && rng.chance(cfg.fail_pct) {
            Fate::Fail
        } else {
            Fate::Normal
        };
        let done = apply(store, &key, f, &value, fate);
        pause(&mut rng, cfg.max_delay_us);
        recorder.record(done.into_event(p, f, key, value));
    }
}

fn pause(rng: &mut Rng, max_delay_us: u64) {
    match rng.below(max_delay_us + 1) {
        0 => thread::yield_now(),
        us => thread::sleep(Duration::from_micros(us)),
    }
}

/// What the simulated network does to an operation.
#[derive(Clone, Copy, Debug)]
enum Fate {
    Normal,
    Fail,
    Info { apply: bool },
}

/// The completion to record.
enum Done {
    Ok(Value),
    Rejected,
    Fail,
    Info,
}

impl Done {
    fn into_event(self, p: u64, f: Func, key: String, value: Value) -> Event {
        match self {
            Done::Ok(seen) if f == Func::Read => Event::new(EventType::Ok, p, f, key, seen),
            Done::Ok(_) => Event::new(EventType::Ok, p, f, key, value),
            Done::Rejected => Event::new(EventType::Fail, p, f, key, value).with_error(PRECONDITION_FAILED),
            Done::Fail => Event::new(EventType::Fail, p, f, key, value).with_error("unavailable"),
            Done::Info => Event::new(EventType::Info, p, f, key, value).with_error("timeout"),
        }
    }
}

fn pick_op(rng: &mut Rng, store: &Store, key: &str, fresh: &str) -> (Func, Value) {
    match rng.below(10) {
        0..=3 => (Func::Read, Value::Null),
        4..=5 => (Func::Write, json!(fresh)),
        6..=7 => {
            let current = store.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned();
            let from = match current {
                Some(v) if !rng.chance(20) => v,
                _ => format!("stale-{fresh}"),
            };
            (Func::Cas, json!({ "from": from, "to": fresh }))
        }
        8 => (Func::Create, json!(fresh)),
        _ => (Func::Delete, Value::Null),
    }
}

fn apply(store: &Store, key: &str, f: Func, value: &Value, fate: Fate) -> Done {
    let mut map = store.lock().unwrap_or_else(|p| p.into_inner());
    match fate {
        Fate::Fail | Fate::Info { apply: false } => {
            return if matches!(fate, Fate::Fail) {
                Done::Fail
            } else {
                Done::Info
            };
        }
        _ => {}
    }
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let done = match f {
        Func::Read => Done::Ok(map.get(key).map_or(Value::Null, |v| json!(v))),
        Func::Write => {
            map.insert(key.to_string(), text(value));
            Done::Ok(Value::Null)
        }
        Func::Cas => {
            let (from, to) = (text(&value["from"]), text(&value["to"]));
            if map.get(key) == Some(&from) {
                map.insert(key.to_string(), to);
                Done::Ok(Value::Null)
            } else {
                Done::Rejected
            }
        }
        Func::Create if map.contains_key(key) => Done::Rejected,
        Func::Create => {
            map.insert(key.to_string(), text(value));
            Done::Ok(Value::Null)
        }
        _ => {
            map.remove(key);
            Done::Ok(Value::Null)
        }
    };
    match (fate, done) {
        (Fate::Info { .. }, _) => Done::Info,
        (_, d) => d,
    }
}
