//! The register workload of the name-server fault test, run by simulated
//! client processes: random reads, writes (guard + commit), create-only
//! writes (guard + commit If-None-Match) and deletes on a few keys, each
//! recorded (invocation before the first request, completion after the
//! last answer) for the linearizability checker.
//!
//! Outcomes: success is `ok` (a read's value is the uid it saw, or null);
//! a definite refusal is `fail` (a create-only commit that found the key
//! present is [`PRECONDITION_FAILED`]); an unknown outcome is `info`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tessera_common::ns_api::{CommitCondition, CommitNameReq, NsError, ObjectInfo};
use tessera_common::ns_client::{NameServerClient, NsCallError};
use tessera_common::rpc::{RpcClient, RpcError};
use tessera_jepsen::history::PRECONDITION_FAILED;
use tessera_jepsen::sim::Rng;
use tessera_jepsen::{Event, EventType, Func, Recorder};

pub const BUCKET: &str = "sim";
pub const KEYS: [&str; 3] = ["k0", "k1", "k2"];
const GUARD_TTL: Duration = Duration::from_secs(10);

/// How an operation ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Done {
    /// Took effect; the completion's value (a read's result).
    Ok(Value),
    /// Surely did not take effect; why.
    Fail(String),
    /// Unknown outcome; why.
    Info(String),
}

/// What a client asks.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    Read,
    Write(u64),
    Create(u64),
    Delete,
}

/// Operations recorded by every client process, in the order they happen.
#[derive(Clone, Default)]
pub struct History {
    recorder: Arc<Recorder>,
}

impl History {
    fn invoke(&self, process: u64, f: Func, key: &str, value: Value) {
        self.recorder
            .record(Event::new(EventType::Invoke, process, f, key, value));
    }

    fn complete(&self, process: u64, f: Func, key: &str, input: Value, done: Done) {
        let event = match done {
            Done::Ok(value) => Event::new(EventType::Ok, process, f, key, value),
            Done::Fail(error) => Event::new(EventType::Fail, process, f, key, input).with_error(error),
            Done::Info(error) => Event::new(EventType::Info, process, f, key, input).with_error(error),
        };
        self.recorder.record(event);
    }

    pub fn events(&self) -> Vec<Event> {
        self.recorder.events()
    }
}

/// Ok, fail and info counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub ok: usize,
    pub fail: usize,
    pub info: usize,
}

impl Tally {
    pub fn of(events: &[Event]) -> Tally {
        let mut tally = Tally::default();
        for event in events {
            match event.kind {
                EventType::Ok => tally.ok += 1,
                EventType::Fail => tally.fail += 1,
                EventType::Info => tally.info += 1,
                EventType::Invoke => {}
            }
        }
        tally
    }
}

/// A refusal after which the call surely did not take effect.
fn definite_refusal(e: &NsError) -> bool {
    matches!(
        e,
        NsError::NotLeader { .. }
            | NsError::NoGuard
            | NsError::GuardExpired
            | NsError::TooManyGuards
            | NsError::UidReaped
            | NsError::NoSuchBucket
            | NsError::InvalidKey
            | NsError::PreconditionFailed
    )
}

fn write_outcome<T>(result: &Result<T, NsCallError>) -> Done {
    match result {
        Ok(_) => Done::Ok(Value::Null),
        Err(NsCallError::Ns(NsError::PreconditionFailed)) => Done::Fail(PRECONDITION_FAILED.to_string()),
        Err(NsCallError::Ns(e)) if definite_refusal(e) => Done::Fail(e.to_string()),
        // NoLeader for a non-idempotent call: no attempt could have run it.
        Err(e @ NsCallError::NoLeader { .. }) => Done::Fail(e.to_string()),
        Err(NsCallError::Rpc(e @ (RpcError::UnknownMethod(_) | RpcError::BadRequest(_) | RpcError::Version(_)))) => {
            Done::Fail(e.to_string())
        }
        Err(e) => Done::Info(e.to_string()),
    }
}

fn read_outcome(result: &Result<Option<ObjectInfo>, NsCallError>) -> Done {
    match result {
        Ok(Some(info)) => Done::Ok(uid_value(info.uid)),
        Ok(None) => Done::Ok(Value::Null),
        Err(e) => Done::Info(e.to_string()),
    }
}

fn uid_value(uid: u128) -> Value {
    match u64::try_from(uid) {
        Ok(n) => json!(n),
        Err(_) => json!(uid.to_string()),
    }
}

fn commit_req(key: &str, uid: u64, condition: CommitCondition) -> CommitNameReq {
    CommitNameReq {
        bucket: BUCKET.into(),
        key: key.into(),
        uid: u128::from(uid),
        size: 1,
        etag: format!("etag-{uid}"),
        content_type: None,
        user_meta: Vec::new(),
        system_meta: Vec::new(),
        partition: 0,
        condition,
    }
}

/// Runs one operation and records it.
pub async fn run_op(client: &NameServerClient<RpcClient>, history: &History, process: u64, key: &str, op: Op) -> Done {
    let (f, input) = match op {
        Op::Read => (Func::Read, Value::Null),
        Op::Write(uid) => (Func::Write, json!(uid)),
        Op::Create(uid) => (Func::Create, json!(uid)),
        Op::Delete => (Func::Delete, Value::Null),
    };
    history.invoke(process, f, key, input.clone());
    let done = match op {
        Op::Read => read_outcome(&client.get_object(BUCKET, key).await),
        Op::Write(uid) | Op::Create(uid) => {
            let condition = match op {
                Op::Create(_) => CommitCondition::IfNoneMatch,
                _ => CommitCondition::None,
            };
            match client.create_guard(BUCKET, key, u128::from(uid), GUARD_TTL).await {
                // No guard: the commit is never sent, the write never happens.
                Err(e) => Done::Fail(format!("create_guard: {e}")),
                Ok(()) => match write_outcome(&client.commit_name(&commit_req(key, uid, condition)).await) {
                    Done::Ok(_) => Done::Ok(input.clone()),
                    other => other,
                },
            }
        }
        Op::Delete => write_outcome(&client.delete_name(BUCKET, key).await),
    };
    history.complete(process, f, key, input, done.clone());
    done
}

/// One client process: random operations until `until` (simulated time
/// since the start of the run).
pub async fn client_loop(
    client: NameServerClient<RpcClient>,
    history: History,
    process: u64,
    seed: u64,
    uids: Arc<AtomicU64>,
    until: Duration,
) {
    let mut rng = Rng::new(seed);
    while turmoil::sim_elapsed().unwrap_or_default() < until {
        let key = KEYS[rng.below(KEYS.len() as u64) as usize];
        let op = match rng.below(20) {
            0..=7 => Op::Read,
            8..=12 => Op::Write(uids.fetch_add(1, Ordering::SeqCst)),
            13..=16 => Op::Create(uids.fetch_add(1, Ordering::SeqCst)),
            _ => Op::Delete,
        };
        run_op(&client, &history, process, key, op).await;
    }
}
