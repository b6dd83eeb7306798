//! The register workload over the name-server client, shared by the
//! name-server fault test (`tests/ns_linearizable.rs`, real processes) and
//! the deterministic simulator (`tessera-sim`): random reads, writes
//! (guard + commit), create-only writes (guard + commit If-None-Match) and
//! deletes on a few keys, each recorded (invocation before the first
//! request, completion after the last answer) for the linearizability
//! checker against [`crate::Register`].
//!
//! Outcomes: success is `ok` (a read's value is the uid it saw, or null);
//! a definite refusal is `fail` (a create-only commit that found the key
//! present is [`PRECONDITION_FAILED`]); an unknown outcome is `info`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tessera_common::ns_api::{CommitCondition, CommitNameReq, NsError, ObjectInfo};
use tessera_common::ns_client::{NameServerClient, NsCallError};
use tessera_common::rpc::{RpcClient, RpcError};

use crate::history::PRECONDITION_FAILED;
use crate::{Event, EventType, Func, Recorder};

/// How an operation ended, as the history records it.
#[derive(Clone, Debug, PartialEq)]
pub enum Done {
    /// Took effect; the completion's value (a read's result).
    Ok(Value),
    /// Definitely did not take effect; the error text.
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

/// Records operations of client processes in one shared [`Recorder`]: the
/// order of the calls is the history's order.
#[derive(Clone, Default)]
pub struct History {
    recorder: Arc<Recorder>,
}

impl History {
    pub fn new() -> History {
        History::default()
    }

    /// Call right before the first request of the operation is sent.
    pub fn invoke(&self, process: u64, f: Func, key: &str, value: Value) {
        self.recorder
            .record(Event::new(EventType::Invoke, process, f, key, value));
    }

    /// Call right after the last answer of the operation arrived.
    pub fn complete(&self, process: u64, f: Func, key: &str, input: Value, done: Done) {
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

/// The outcome of a write-like call (`create_guard`, `commit_name`,
/// `delete_name`).
pub fn write_outcome<T>(result: &Result<T, NsCallError>) -> Done {
    match result {
        Ok(_) => Done::Ok(Value::Null),
        Err(NsCallError::Ns(NsError::PreconditionFailed)) => Done::Fail(PRECONDITION_FAILED.to_string()),
        Err(NsCallError::Ns(e)) if definite_refusal(e) => Done::Fail(e.to_string()),
        // The client returns NoLeader for a non-idempotent call only when no
        // attempt could have executed it.
        Err(e @ NsCallError::NoLeader { .. }) => Done::Fail(e.to_string()),
        Err(NsCallError::Rpc(e @ (RpcError::UnknownMethod(_) | RpcError::BadRequest(_) | RpcError::Version(_)))) => {
            Done::Fail(e.to_string())
        }
        Err(e) => Done::Info(e.to_string()),
    }
}

/// The outcome of a read: the uid seen (`null`: absent); any error leaves
/// it unknown (the checker drops unknown reads).
pub fn read_outcome(result: &Result<Option<ObjectInfo>, NsCallError>) -> Done {
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

fn commit_req(bucket: &str, key: &str, uid: u64, condition: CommitCondition) -> CommitNameReq {
    CommitNameReq {
        bucket: bucket.into(),
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

/// Where operations go: the bucket, and the guards' lifetime.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    pub bucket: &'a str,
    pub guard_ttl: Duration,
}

/// Runs one operation against the name servers and records it.
pub async fn run_op(
    client: &NameServerClient<RpcClient>,
    history: &History,
    target: Target<'_>,
    process: u64,
    key: &str,
    op: Op,
) -> Done {
    let (f, input) = match op {
        Op::Read => (Func::Read, Value::Null),
        Op::Write(uid) => (Func::Write, json!(uid)),
        Op::Create(uid) => (Func::Create, json!(uid)),
        Op::Delete => (Func::Delete, Value::Null),
    };
    history.invoke(process, f, key, input.clone());
    let done = match op {
        Op::Read => read_outcome(&client.get_object(target.bucket, key).await),
        Op::Write(uid) | Op::Create(uid) => {
            let condition = match op {
                Op::Create(_) => CommitCondition::IfNoneMatch,
                _ => CommitCondition::None,
            };
            let guard = client
                .create_guard(target.bucket, key, u128::from(uid), target.guard_ttl)
                .await;
            match guard {
                // No guard: the commit is never sent, the write never happens.
                Err(e) => Done::Fail(format!("create_guard: {e}")),
                Ok(()) => match write_outcome(
                    &client
                        .commit_name(&commit_req(target.bucket, key, uid, condition))
                        .await,
                ) {
                    Done::Ok(_) => Done::Ok(input.clone()),
                    other => other,
                },
            }
        }
        Op::Delete => write_outcome(&client.delete_name(target.bucket, key).await),
    };
    history.complete(process, f, key, input, done.clone());
    done
}
