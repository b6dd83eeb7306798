//! Linearizability checker tests: hand-written histories with known verdicts,
//! randomized histories from a real concurrent simulation (and corrupted
//! copies), budget exhaustion, malformed input, and the binary's exit codes.

use serde_json::{json, Value};
use tessera_jepsen::checker::KeyOutcome;
use tessera_jepsen::history::PRECONDITION_FAILED;
use tessera_jepsen::sim::{simulate_register, Rng, SimConfig};
use tessera_jepsen::{
    check_events, pair, parse_jsonl, write_jsonl, CheckError, CheckOptions, CheckResult, Event, EventType, Func,
    Outcome, Register, SetModel,
};

use EventType::{Fail, Info, Invoke, Ok};
use Func::{Cas, Create, Delete, Read, Write};

/// An event on key "x".
fn ev(kind: EventType, p: u64, f: Func, value: Value) -> Event {
    Event::new(kind, p, f, "x", value)
}

/// A complete operation (invoke then completion) on key "x".
fn op(p: u64, f: Func, input: Value, kind: EventType, output: Value) -> [Event; 2] {
    [ev(Invoke, p, f, input), ev(kind, p, f, output)]
}

fn write(p: u64, v: &str) -> [Event; 2] {
    op(p, Write, json!(v), Ok, json!(v))
}

fn read(p: u64, seen: Value) -> [Event; 2] {
    op(p, Read, Value::Null, Ok, seen)
}

fn cas(p: u64, from: &str, to: &str, kind: EventType) -> Vec<Event> {
    let v = json!({"from": from, "to": to});
    let mut done = ev(kind, p, Cas, v.clone());
    if kind == Fail {
        done = done.with_error(PRECONDITION_FAILED);
    }
    vec![ev(Invoke, p, Cas, v), done]
}

fn history(parts: &[&[Event]]) -> Vec<Event> {
    parts.iter().flat_map(|p| p.iter().cloned()).collect()
}

fn result(events: &[Event]) -> CheckResult {
    check_events(&Register, events, &CheckOptions::default())
        .expect("well-formed history")
        .result
}

fn assert_ok(events: &[Event]) {
    let r = result(events);
    assert!(r.is_linearizable(), "expected linearizable, got {r}");
}

/// Asserts a violation and returns the index of its shortest failing prefix.
fn assert_bad(events: &[Event]) -> usize {
    match result(events) {
        CheckResult::NotLinearizable(f) => f.prefix_end,
        other => panic!("expected NOT linearizable, got {other}"),
    }
}

#[test]
fn sequential_history_is_linearizable() {
    let h = history(&[
        &read(0, Value::Null),
        &write(0, "a"),
        &read(1, json!("a")),
        &cas(2, "a", "b", Ok),
        &read(0, json!("b")),
        &op(1, Delete, Value::Null, Ok, Value::Null),
        &read(2, Value::Null),
        &op(0, Create, json!("c"), Ok, Value::Null),
        &read(1, json!("c")),
    ]);
    assert_ok(&h);
}

#[test]
fn concurrent_writes_may_be_seen_in_either_order() {
    for last in ["a", "b"] {
        let h = history(&[
            &[ev(Invoke, 0, Write, json!("a")), ev(Invoke, 1, Write, json!("b"))],
            &[ev(Invoke, 2, Read, Value::Null), ev(Ok, 2, Read, json!(last))],
            &[ev(Ok, 0, Write, json!("a")), ev(Ok, 1, Write, json!("b"))],
            &read(2, json!(last)),
        ]);
        assert_ok(&h);
    }
    // ...but once both writes completed, readers cannot disagree later.
    let h = history(&[
        &[ev(Invoke, 0, Write, json!("a")), ev(Invoke, 1, Write, json!("b"))],
        &[ev(Ok, 0, Write, json!("a")), ev(Ok, 1, Write, json!("b"))],
        &read(2, json!("a")),
        &read(3, json!("b")),
    ]);
    assert_bad(&h);
}

#[test]
fn stale_read_after_completed_write_is_not_linearizable() {
    let h = history(&[&write(0, "a"), &write(1, "b"), &read(2, json!("a"))]);
    let end = assert_bad(&h);
    assert_eq!(end, 5, "the failing prefix ends at the stale read's completion");
    let CheckResult::NotLinearizable(f) = result(&h) else {
        unreachable!()
    };
    let culprit = f.culprit.clone().expect("culprit");
    assert_eq!((culprit.f, culprit.output.clone()), (Read, json!("a")));
    assert_eq!(f.key, "x");
    assert_eq!(f.linearized.len(), 2, "both writes linearize: {f}");
    assert_eq!((f.stuck.f, f.state.as_str()), (Read, "Some(\"b\")"), "{f}");
}

#[test]
fn lost_write_is_not_linearizable() {
    // The write of "b" is acknowledged, but later reads keep seeing "a".
    let h = history(&[
        &write(0, "a"),
        &write(1, "b"),
        &read(2, json!("a")),
        &read(0, json!("a")),
    ]);
    assert_bad(&h);
    // An absent value after an acknowledged write is lost too.
    assert_bad(&history(&[&write(0, "a"), &read(1, Value::Null)]));
}

#[test]
fn compare_and_set_semantics() {
    assert_ok(&history(&[&write(0, "a"), &cas(1, "a", "b", Ok), &read(2, json!("b"))]));
    // A CAS from a value that is not current cannot succeed.
    assert_bad(&history(&[&write(0, "a"), &cas(1, "z", "b", Ok)]));
    // A CAS on an absent key cannot succeed.
    assert_bad(&history(&[&cas(1, "a", "b", Ok)]));
    // A precondition failure is fine when the value differs...
    assert_ok(&history(&[
        &write(0, "a"),
        &cas(1, "z", "b", Fail),
        &read(2, json!("a")),
    ]));
    // ...but not when the precondition held throughout.
    assert_bad(&history(&[&write(0, "a"), &cas(1, "a", "b", Fail)]));
    // Two successful CAS from the same value: only one can win.
    let h = history(&[
        &write(0, "a"),
        &[
            ev(Invoke, 1, Cas, json!({"from":"a","to":"b"})),
            ev(Invoke, 2, Cas, json!({"from":"a","to":"c"})),
        ],
        &[
            ev(Ok, 1, Cas, json!({"from":"a","to":"b"})),
            ev(Ok, 2, Cas, json!({"from":"a","to":"c"})),
        ],
    ]);
    assert_bad(&h);
    // Chained CAS a -> b -> c in either concurrent order resolves.
    let h = history(&[
        &write(0, "a"),
        &[
            ev(Invoke, 2, Cas, json!(["b", "c"])),
            ev(Invoke, 1, Cas, json!(["a", "b"])),
        ],
        &[ev(Ok, 2, Cas, json!(["b", "c"])), ev(Ok, 1, Cas, json!(["a", "b"]))],
        &read(0, json!("c")),
    ]);
    assert_ok(&h);
}

#[test]
fn create_only_semantics() {
    let both = history(&[
        &[ev(Invoke, 0, Create, json!("a")), ev(Invoke, 1, Create, json!("b"))],
        &[ev(Ok, 0, Create, json!("a")), ev(Ok, 1, Create, json!("b"))],
    ]);
    assert_bad(&both);
    let one = history(&[
        &[ev(Invoke, 0, Create, json!("a")), ev(Invoke, 1, Create, json!("b"))],
        &[
            ev(Ok, 0, Create, json!("a")),
            ev(Fail, 1, Create, json!("b")).with_error(PRECONDITION_FAILED),
        ],
        &read(2, json!("a")),
    ]);
    assert_ok(&one);
    assert_bad(&history(&[&write(0, "a"), &op(1, Create, json!("b"), Ok, Value::Null)]));
    // Rejected on an absent key: wrong.
    let rejected = [
        ev(Invoke, 0, Create, json!("a")),
        ev(Fail, 0, Create, json!("a")).with_error(PRECONDITION_FAILED),
    ];
    assert_bad(&rejected);
    // Create after delete is fine.
    let h = history(&[
        &write(0, "a"),
        &op(0, Delete, Value::Null, Ok, Value::Null),
        &op(1, Create, json!("b"), Ok, Value::Null),
        &read(2, json!("b")),
    ]);
    assert_ok(&h);
}

#[test]
fn unknown_outcome_may_take_effect_later() {
    // The info write of "b" takes effect after its info event, between reads.
    let h = history(&[
        &write(0, "a"),
        &op(1, Write, json!("b"), Info, json!("b")),
        &read(2, json!("a")),
        &read(2, json!("b")),
    ]);
    assert_ok(&h);
    // Same with an invocation that never completes, and with a CAS.
    let h = history(&[
        &write(0, "a"),
        &[ev(Invoke, 1, Cas, json!({"from":"a","to":"b"}))],
        &read(2, json!("a")),
        &read(2, json!("b")),
    ]);
    assert_ok(&h);
}

#[test]
fn unknown_outcome_may_never_take_effect() {
    let h = history(&[
        &write(0, "a"),
        &op(1, Write, json!("b"), Info, Value::Null),
        &read(2, json!("a")),
        &read(2, json!("a")),
    ]);
    assert_ok(&h);
    // An info CAS whose precondition never holds is simply never applied.
    let h = history(&[&write(0, "a"), &cas(1, "z", "b", Info), &read(2, json!("a"))]);
    assert_ok(&h);
    // But an unknown write cannot take effect before it was invoked.
    let h = history(&[
        &write(0, "a"),
        &read(2, json!("b")),
        &op(1, Write, json!("b"), Info, Value::Null),
    ]);
    assert_bad(&h);
}

#[test]
fn failed_operation_whose_effect_is_seen_is_not_linearizable() {
    let h = history(&[
        &write(0, "a"),
        &op(1, Write, json!("b"), Fail, Value::Null),
        &read(2, json!("b")),
    ]);
    assert_bad(&h);
}

#[test]
fn keys_are_checked_independently() {
    let mut h = history(&[&write(0, "a"), &read(1, json!("a"))]);
    h.push(Event::new(Invoke, 2, Write, "y", json!("a")));
    h.push(Event::new(Ok, 2, Write, "y", json!("a")));
    h.push(Event::new(Invoke, 2, Read, "y", Value::Null));
    h.push(Event::new(Ok, 2, Read, "y", Value::Null));
    let report = check_events(&Register, &h, &CheckOptions::default()).unwrap();
    assert_eq!(report.keys.len(), 2);
    assert!(matches!(report.keys[0].outcome, KeyOutcome::Linearizable));
    match report.result {
        CheckResult::NotLinearizable(f) => assert_eq!(f.key, "y"),
        other => panic!("expected y to fail, got {other}"),
    }
}

#[test]
fn budget_exhaustion_is_unknown_not_ok() {
    // 24 concurrent unknown writes, each value seen by a concurrent read, and
    // a read of a value nobody wrote: the search must try (nearly) every
    // order of the writes and reads before giving up.
    let mut h = vec![];
    for p in 0..24 {
        h.push(ev(Invoke, p, Write, json!(format!("v{p}"))));
        h.push(ev(Invoke, 100 + p, Read, Value::Null));
    }
    for p in 0..24 {
        h.push(ev(Ok, 100 + p, Read, json!(format!("v{p}"))));
    }
    h.extend(read(200, json!("nobody")));
    let opts = CheckOptions {
        max_steps: 10_000,
        ..CheckOptions::default()
    };
    let report = check_events(&Register, &h, &opts).unwrap();
    match &report.result {
        CheckResult::Unknown { keys, reason } => {
            assert_eq!(keys, &["x".to_string()]);
            assert!(reason.contains("budget"), "{reason}");
        }
        other => panic!("expected unknown, got {other}"),
    }
    assert!(!report.result.is_linearizable());
    // A time limit also yields unknown.
    let opts = CheckOptions {
        max_steps: u64::MAX,
        max_states: usize::MAX,
        time_limit: Some(std::time::Duration::from_millis(50)),
        ..opts
    };
    let report = check_events(&Register, &h, &opts).unwrap();
    assert!(report.result.to_string().contains("time limit"), "{}", report.result);
    // So does the memo limit.
    let opts = CheckOptions {
        max_states: 1_000,
        time_limit: None,
        ..opts
    };
    let report = check_events(&Register, &h, &opts).unwrap();
    assert!(report.result.to_string().contains("memo budget"), "{}", report.result);
}

#[test]
fn many_unobserved_unknown_writes_stay_cheap() {
    // Unknown writes nobody observes are interchangeable: 60 of them before a
    // stale read must not make the search exponential.
    let mut h = history(&[&write(0, "a"), &write(0, "b")]);
    for p in 1..=60 {
        h.push(ev(Invoke, p, Write, json!(format!("lost{p}"))));
    }
    h.extend(read(100, json!("a")));
    let opts = CheckOptions {
        max_steps: 100_000,
        ..CheckOptions::default()
    };
    let report = check_events(&Register, &h, &opts).unwrap();
    assert!(
        matches!(report.result, CheckResult::NotLinearizable(_)),
        "{}",
        report.result
    );
    // The same writes may explain a rejected CAS while keeping it cheap.
    let mut h = history(&[&write(0, "a")]);
    for p in 1..=60 {
        h.push(ev(Invoke, p, Write, json!(format!("lost{p}"))));
    }
    h.extend(cas(100, "a", "b", Fail));
    h.extend(read(101, json!("a")));
    let report = check_events(&Register, &h, &opts).unwrap();
    assert!(
        matches!(report.result, CheckResult::NotLinearizable(_)),
        "{}",
        report.result
    );
    h.truncate(h.len() - 2);
    let report = check_events(&Register, &h, &opts).unwrap();
    assert!(report.result.is_linearizable(), "{}", report.result);
}

#[test]
fn set_model() {
    let s = |kind, p, f, v: Value| Event::new(kind, p, f, "s", v);
    let h = vec![
        s(Invoke, 0, Func::Add, json!("a")),
        s(Invoke, 1, Func::Add, json!("b")),
        s(Invoke, 2, Func::ReadAll, Value::Null),
        s(Ok, 2, Func::ReadAll, json!(["b"])),
        s(Ok, 0, Func::Add, json!("a")),
        s(Ok, 1, Func::Add, json!("b")),
        s(Invoke, 2, Func::ReadAll, Value::Null),
        s(Ok, 2, Func::ReadAll, json!(["a", "b"])),
    ];
    let ok = check_events(&SetModel, &h, &CheckOptions::default()).unwrap();
    assert!(ok.result.is_linearizable(), "{}", ok.result);
    let mut lost = h.clone();
    lost[7].value = json!(["a"]);
    let bad = check_events(&SetModel, &lost, &CheckOptions::default()).unwrap();
    assert!(matches!(bad.result, CheckResult::NotLinearizable(_)), "{}", bad.result);
}

#[test]
fn malformed_histories_are_errors_not_panics() {
    let bad_json = "{\"type\":\"invoke\",\"process\":0,\"f\":\"read\",\"key\":\"x\"}\n{not json}\n";
    let e = parse_jsonl(bad_json).unwrap_err();
    assert!(e.to_string().starts_with("line 2:"), "{e}");
    let bad_field = "{\"type\":\"invoke\",\"process\":0,\"f\":\"frobnicate\",\"key\":\"x\"}";
    assert!(parse_jsonl(bad_field).is_err());
    let missing_key = "{\"type\":\"invoke\",\"process\":0,\"f\":\"read\"}";
    assert!(parse_jsonl(missing_key).is_err());

    let orphan = [ev(Ok, 0, Read, Value::Null)];
    assert!(pair(&orphan).is_err());
    let twice = [ev(Invoke, 0, Read, Value::Null), ev(Invoke, 0, Read, Value::Null)];
    assert!(pair(&twice).is_err());
    let mismatch = [ev(Invoke, 0, Read, Value::Null), ev(Ok, 0, Write, json!("a"))];
    assert!(pair(&mismatch).is_err());

    let opts = CheckOptions::default();
    let bad_cas = op(0, Cas, json!({"from": "a"}), Ok, Value::Null);
    assert!(matches!(
        check_events(&Register, &bad_cas, &opts),
        Err(CheckError::Model(_))
    ));
    let bad_write = op(0, Write, json!({"v": 1}), Ok, Value::Null);
    assert!(matches!(
        check_events(&Register, &bad_write, &opts),
        Err(CheckError::Model(_))
    ));
    let bad_read = read(0, json!([1]));
    assert!(matches!(
        check_events(&Register, &bad_read, &opts),
        Err(CheckError::Model(_))
    ));
    let wrong_model = op(0, Func::Add, json!("a"), Ok, Value::Null);
    assert!(check_events(&Register, &wrong_model, &opts).is_err());
}

#[test]
fn jsonl_round_trip() {
    let events = simulate_register(&SimConfig {
        ops_per_process: 20,
        ..SimConfig::default()
    });
    let mut buf = Vec::new();
    write_jsonl(&events, &mut buf).unwrap();
    let back = parse_jsonl(std::str::from_utf8(&buf).unwrap()).unwrap();
    assert_eq!(back, events);
}

fn sim(seed: u64) -> Vec<Event> {
    // Odd seeds pause up to 50 µs around each effect so operations overlap more.
    let max_delay_us = if seed % 2 == 1 { 50 } else { 0 };
    let cfg = SimConfig {
        processes: 5,
        keys: 3,
        ops_per_process: 120,
        info_pct: 3,
        fail_pct: 3,
        seed,
        max_delay_us,
    };
    simulate_register(&cfg)
}

/// Indices of `ok` read completions.
fn ok_reads(events: &[Event]) -> Vec<usize> {
    (0..events.len())
        .filter(|&i| events[i].kind == Ok && events[i].f == Read)
        .collect()
}

#[test]
fn simulated_histories_are_linearizable() {
    for seed in 1..=20 {
        let events = sim(seed);
        let r = result(&events);
        assert!(r.is_linearizable(), "seed {seed}: {r}");
    }
}

#[test]
fn simulated_history_with_never_written_read_value_is_not() {
    for seed in 1..=20 {
        let mut events = sim(seed);
        let reads = ok_reads(&events);
        let i = reads[Rng::new(seed).below(reads.len() as u64) as usize];
        events[i].value = json!("never-written");
        assert_eq!(assert_bad(&events), i, "seed {seed}: culprit is the corrupted read");
    }
}

#[test]
fn simulated_history_with_read_from_the_future_is_not() {
    let mut tested = 0;
    for seed in 1..=20 {
        let mut events = sim(seed);
        let ops = pair(&events).unwrap();
        // A read, and a value first written by an operation invoked after it completed.
        let found = ops
            .iter()
            .filter(|r| r.f == Read && r.outcome == Outcome::Ok)
            .find_map(|r| {
                let done = r.complete?;
                let w = ops
                    .iter()
                    .find(|w| w.key == r.key && w.invoke > done && matches!(w.f, Write | Create))?;
                Some((done, w.input.clone()))
            });
        let Some((i, future)) = found else { continue };
        events[i].value = future;
        assert_eq!(assert_bad(&events), i, "seed {seed}");
        tested += 1;
    }
    assert!(tested >= 15, "only {tested} seeds had a read before a later write");
}

#[test]
fn binary_exit_codes() {
    let dir = std::env::temp_dir().join(format!("tessera-jepsen-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |name: &str, events: &[Event]| {
        let path = dir.join(name);
        write_jsonl(events, std::fs::File::create(&path).unwrap()).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera-jepsen"))
            .arg("check")
            .arg(&path)
            .output();
        out.unwrap().status.code()
    };
    assert_eq!(
        run("ok.jsonl", &history(&[&write(0, "a"), &read(1, json!("a"))])),
        Some(0)
    );
    assert_eq!(
        run("bad.jsonl", &history(&[&write(0, "a"), &read(1, json!("b"))])),
        Some(1)
    );
    assert_eq!(run("err.jsonl", &[ev(Ok, 0, Read, Value::Null)]), Some(2));
    std::fs::write(dir.join("garbage.jsonl"), "not json\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera-jepsen"))
        .args(["check", dir.join("garbage.jsonl").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}
