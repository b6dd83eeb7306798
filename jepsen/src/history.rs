//! Histories of client operations, as recorded by the fault-test harness.
//!
//! A history is a sequence of [`Event`]s, one JSON object per line (JSON
//! Lines). Each client *process* runs one operation at a time: an `invoke`
//! event, then exactly one completion:
//!
//! * `ok`: the operation took effect (for a read, `value` is what it saw);
//! * `fail`: the operation definitely did not take effect. With
//!   `"error": "precondition_failed"` on a conditional write (`cas`, `create`)
//!   it is also an observation: the precondition was evaluated and was false;
//! * `info`: the outcome is unknown: it may have taken effect at any time after
//!   its invocation, or never. An invocation with no completion at the end of
//!   the history is treated the same way.
//!
//! The position of an event in the history is its logical time; the optional
//! `time` field (nanoseconds on one monotonic clock) is kept for plots only.
//!
//! ```text
//! {"type":"invoke","process":0,"f":"write","key":"k1","value":"v1"}
//! {"type":"ok","process":0,"f":"write","key":"k1","value":"v1"}
//! {"type":"invoke","process":1,"f":"cas","key":"k1","value":{"from":"v1","to":"v2"}}
//! {"type":"invoke","process":2,"f":"read","key":"k1"}
//! {"type":"ok","process":2,"f":"read","key":"k1","value":"v1"}
//! {"type":"info","process":1,"f":"cas","key":"k1","value":{"from":"v1","to":"v2"}}
//! ```

use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, Write};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The `error` of a `fail` event that reports a conditional write whose
/// precondition was evaluated and found false (HTTP 412 for S3).
pub const PRECONDITION_FAILED: &str = "precondition_failed";

/// What an event reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// A process starts an operation.
    Invoke,
    /// The operation took effect.
    Ok,
    /// The operation definitely did not take effect.
    Fail,
    /// The outcome is unknown.
    Info,
}

/// The function an operation calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Func {
    /// Register read; the completion's `value` is the value seen (`null`: absent).
    Read,
    /// Unconditional register write of `value`.
    Write,
    /// Compare-and-set: `value` is `{"from": old, "to": new}` (If-Match).
    Cas,
    /// Create-only write of `value`: succeeds only if the key is absent (If-None-Match).
    Create,
    /// Unconditional delete.
    Delete,
    /// Set add of the element `value`.
    Add,
    /// Set read; the completion's `value` is the list of elements.
    ReadAll,
}

/// One line of a history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Invocation or completion.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The client process; one operation at a time per process.
    pub process: u64,
    /// The function called.
    pub f: Func,
    /// The key (register models are checked per key).
    pub key: String,
    /// Argument (on `invoke`) or result (on `ok` of a read).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub value: Value,
    /// Why a `fail` or `info` happened; see [`PRECONDITION_FAILED`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Nanoseconds on one monotonic clock (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<u64>,
}

impl Event {
    /// An event without error or time.
    pub fn new(kind: EventType, process: u64, f: Func, key: impl Into<String>, value: Value) -> Self {
        Event {
            kind,
            process,
            f,
            key: key.into(),
            value,
            error: None,
            time: None,
        }
    }

    /// Sets the `error` field.
    pub fn with_error(mut self, error: impl Into<String>) -> Self {
        self.error = Some(error.into());
        self
    }
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Took effect.
    Ok,
    /// Did not take effect.
    Fail,
    /// Unknown, or never completed.
    Info,
}

/// An invocation paired with its completion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    /// Index of this operation in the paired list.
    pub id: usize,
    /// The client process.
    pub process: u64,
    /// The key.
    pub key: String,
    /// The function called.
    pub f: Func,
    /// The invocation's value.
    pub input: Value,
    /// The completion's value (`null` when unknown).
    pub output: Value,
    /// How it ended.
    pub outcome: Outcome,
    /// The completion's `error`, if any.
    pub error: Option<String>,
    /// Index of the invocation event in the history.
    pub invoke: usize,
    /// Index of the completion event (`None`: never completed).
    pub complete: Option<usize>,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = self.complete.map_or_else(|| "-".to_string(), |c| c.to_string());
        write!(
            f,
            "#{} p{} {:?} {} in={} ",
            self.id, self.process, self.f, self.key, self.input
        )?;
        write!(f, "{:?} out={} [{}..{}]", self.outcome, self.output, self.invoke, end)?;
        if let Some(e) = &self.error {
            write!(f, " error={e}")?;
        }
        Ok(())
    }
}

/// A malformed history.
#[derive(Debug)]
pub enum HistoryError {
    /// Reading the file failed.
    Io(std::io::Error),
    /// A line is not a valid event (1-based line number).
    Parse { line: usize, message: String },
    /// The events do not pair up (0-based event index).
    Pairing { event: usize, message: String },
}

impl fmt::Display for HistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryError::Io(e) => write!(f, "reading history: {e}"),
            HistoryError::Parse { line, message } => write!(f, "line {line}: {message}"),
            HistoryError::Pairing { event, message } => write!(f, "event {event}: {message}"),
        }
    }
}

impl std::error::Error for HistoryError {}

impl From<std::io::Error> for HistoryError {
    fn from(e: std::io::Error) -> Self {
        HistoryError::Io(e)
    }
}

/// Parses JSON Lines; blank lines and lines starting with `#` are skipped.
pub fn parse_jsonl(text: &str) -> Result<Vec<Event>, HistoryError> {
    read_jsonl(text.as_bytes())
}

/// Reads JSON Lines from a reader; blank lines and `#` comments are skipped.
pub fn read_jsonl(reader: impl BufRead) -> Result<Vec<Event>, HistoryError> {
    let mut events = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line?;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let event = serde_json::from_str(trimmed).map_err(|e| HistoryError::Parse {
            line: i + 1,
            message: e.to_string(),
        })?;
        events.push(event);
    }
    Ok(events)
}

/// Writes events as JSON Lines.
pub fn write_jsonl(events: &[Event], mut writer: impl Write) -> std::io::Result<()> {
    for event in events {
        serde_json::to_writer(&mut writer, event)?;
        writer.write_all(b"\n")?;
    }
    writer.flush()
}

/// Pairs invocations with completions.
///
/// Errors: a completion with no pending invocation on its process, a second
/// invocation while one is pending, or a completion whose `f` or `key`
/// differs from its invocation's. An `info` frees its process for a new
/// invocation (the unknown operation stays pending forever).
pub fn pair(events: &[Event]) -> Result<Vec<Operation>, HistoryError> {
    let mut ops: Vec<Operation> = Vec::new();
    let mut pending: HashMap<u64, usize> = HashMap::new();
    for (index, event) in events.iter().enumerate() {
        if event.kind == EventType::Invoke {
            invoke(&mut ops, &mut pending, index, event)?;
        } else {
            complete(&mut ops, &mut pending, index, event)?;
        }
    }
    Ok(ops)
}

fn invoke(
    ops: &mut Vec<Operation>,
    pending: &mut HashMap<u64, usize>,
    index: usize,
    event: &Event,
) -> Result<(), HistoryError> {
    if let Some(&prev) = pending.get(&event.process) {
        let message = format!(
            "process {} invokes while event {} is pending",
            event.process, ops[prev].invoke
        );
        return Err(HistoryError::Pairing { event: index, message });
    }
    pending.insert(event.process, ops.len());
    ops.push(Operation {
        id: ops.len(),
        process: event.process,
        key: event.key.clone(),
        f: event.f,
        input: event.value.clone(),
        output: Value::Null,
        outcome: Outcome::Info,
        error: None,
        invoke: index,
        complete: None,
    });
    Ok(())
}

fn complete(
    ops: &mut [Operation],
    pending: &mut HashMap<u64, usize>,
    index: usize,
    event: &Event,
) -> Result<(), HistoryError> {
    let Some(id) = pending.remove(&event.process) else {
        let message = format!("process {} completes with no pending invocation", event.process);
        return Err(HistoryError::Pairing { event: index, message });
    };
    let op = &mut ops[id];
    if op.f != event.f || op.key != event.key {
        let message = format!(
            "completion {:?} {} does not match invocation {:?} {} (event {})",
            event.f, event.key, op.f, op.key, op.invoke
        );
        return Err(HistoryError::Pairing { event: index, message });
    }
    op.outcome = match event.kind {
        EventType::Ok => Outcome::Ok,
        EventType::Fail => Outcome::Fail,
        _ => Outcome::Info,
    };
    op.output = event.value.clone();
    op.error = event.error.clone();
    op.complete = Some(index);
    Ok(())
}

/// A thread-safe history recorder: the order of [`Recorder::record`] calls is
/// the history's order, so record the invocation before sending a request and
/// the completion after its response arrives.
#[derive(Debug)]
pub struct Recorder {
    events: Mutex<Vec<Event>>,
    start: Instant,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    /// An empty recorder; `time` is measured from now.
    pub fn new() -> Self {
        Recorder {
            events: Mutex::new(Vec::new()),
            start: Instant::now(),
        }
    }

    /// Appends an event (setting its `time`) and returns its index.
    pub fn record(&self, mut event: Event) -> usize {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        event.time = Some(u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX));
        events.push(event);
        events.len() - 1
    }

    /// The instant event times are measured from.
    pub fn started(&self) -> Instant {
        self.start
    }

    /// A copy of the events recorded so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
