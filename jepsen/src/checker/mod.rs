//! Per-key linearizability checking.
//!
//! [`check`] partitions a paired history by key (P-compositionality: a
//! history of independent registers is linearizable iff each key's
//! sub-history is) and runs the WGL search (module `wgl`) on each key under a
//! step budget and a time limit. A key whose search runs out of budget is
//! reported [`KeyOutcome::Unknown`], never passed.
//!
//! For a key that is not linearizable the checker bisects the key's
//! sub-history for the shortest failing prefix (prefixes are monotone: an
//! operation still running at the cut is treated as unknown), so the report
//! names the completion at which the history stopped being linearizable.

pub mod models;
pub mod set;
mod wgl;

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::history::{pair, Event, HistoryError, Operation, Outcome};
use models::{Model, ModelError};
use wgl::{Call, Exhaustion, Limits, Search};

/// Budget of the search for one key.
#[derive(Clone, Copy, Debug)]
pub struct CheckOptions {
    /// Maximum search steps per search. The bisection of a failing key runs
    /// up to about log2(operations) more searches, each limited to twice the
    /// steps the full search took plus one million.
    pub max_steps: u64,
    /// Maximum memoized (linearized set, state) pairs per search.
    pub max_states: usize,
    /// Approximate memory bound of the memo per search, in bytes (an entry
    /// costs about 100 bytes plus one bit per operation of the key).
    pub max_memo_bytes: usize,
    /// Wall-clock limit per key, bisection included (a bisection cut short
    /// reports a longer failing prefix, never a wrong verdict).
    pub time_limit: Option<Duration>,
    /// Bisect a failing key for its shortest failing prefix.
    pub minimize: bool,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            max_steps: 50_000_000,
            max_states: 4_000_000,
            max_memo_bytes: 512 << 20,
            time_limit: Some(Duration::from_secs(30)),
            minimize: true,
        }
    }
}

/// Why a key is not linearizable.
#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    /// The key.
    pub key: String,
    /// Index of the event that ends the shortest failing prefix found: the
    /// key's events up to and including it are not linearizable.
    pub prefix_end: usize,
    /// The operation whose completion is at `prefix_end` (if it is one).
    pub culprit: Option<Operation>,
    /// The longest partial linearization of that prefix found, in order.
    pub linearized: Vec<Operation>,
    /// The model state after `linearized` (Debug text).
    pub state: String,
    /// The operation whose completion stopped that partial linearization.
    pub stuck: Operation,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "key {:?} is not linearizable by event {}", self.key, self.prefix_end)?;
        if let Some(c) = &self.culprit {
            writeln!(f, "  completion that breaks it: {c}")?;
        }
        writeln!(f, "  longest partial linearization ({} ops):", self.linearized.len())?;
        let skip = self.linearized.len().saturating_sub(10);
        if skip > 0 {
            writeln!(f, "    ... {skip} earlier ops")?;
        }
        for op in &self.linearized[skip..] {
            writeln!(f, "    {op}")?;
        }
        writeln!(f, "  state after it: {}", self.state)?;
        write!(f, "  cannot linearize next: {}", self.stuck)
    }
}

/// The verdict for one key.
#[derive(Clone, Debug, Serialize)]
pub enum KeyOutcome {
    /// A linearization exists.
    Linearizable,
    /// None exists.
    NotLinearizable(Box<Failure>),
    /// The budget ran out.
    Unknown {
        /// Which budget.
        reason: String,
    },
}

/// Statistics and verdict for one key.
#[derive(Clone, Debug, Serialize)]
pub struct KeyReport {
    /// The key.
    pub key: String,
    /// Operations of this key given to the search (after dropping those that
    /// cannot constrain it: failed ops, unknown reads).
    pub ops: usize,
    /// Search steps, over all searches of this key.
    pub steps: u64,
    /// Wall-clock time spent on this key.
    pub elapsed: Duration,
    /// The verdict.
    pub outcome: KeyOutcome,
}

/// The overall verdict.
#[derive(Clone, Debug, Serialize)]
pub enum CheckResult {
    /// Every key is linearizable.
    Linearizable,
    /// Some key is not (the first such key in key order).
    NotLinearizable(Box<Failure>),
    /// No key is known to fail, but some ran out of budget.
    Unknown {
        /// The keys that ran out.
        keys: Vec<String>,
        /// The first key's reason.
        reason: String,
    },
}

impl CheckResult {
    /// True only for [`CheckResult::Linearizable`].
    pub fn is_linearizable(&self) -> bool {
        matches!(self, CheckResult::Linearizable)
    }
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckResult::Linearizable => write!(f, "linearizable"),
            CheckResult::NotLinearizable(failure) => write!(f, "NOT linearizable: {failure}"),
            CheckResult::Unknown { keys, reason } => {
                write!(f, "UNKNOWN: {} key(s) out of budget ({reason}): {keys:?}", keys.len())
            }
        }
    }
}

/// A full report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The overall verdict.
    pub result: CheckResult,
    /// Per key, in key order.
    pub keys: Vec<KeyReport>,
}

/// A history that could not be checked.
#[derive(Debug)]
pub enum CheckError {
    /// The events are malformed.
    History(HistoryError),
    /// An operation does not fit the model.
    Model(ModelError),
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckError::History(e) => write!(f, "{e}"),
            CheckError::Model(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for CheckError {}

impl From<HistoryError> for CheckError {
    fn from(e: HistoryError) -> Self {
        CheckError::History(e)
    }
}

impl From<ModelError> for CheckError {
    fn from(e: ModelError) -> Self {
        CheckError::Model(e)
    }
}

/// Pairs `events` and checks them against `model`.
pub fn check_events<M: Model>(model: &M, events: &[Event], opts: &CheckOptions) -> Result<Report, CheckError> {
    let ops = pair(events)?;
    Ok(check(model, &ops, opts)?)
}

/// Checks paired operations against `model`, key by key.
pub fn check<M: Model>(model: &M, ops: &[Operation], opts: &CheckOptions) -> Result<Report, ModelError> {
    for op in ops {
        model.convert(op, op.outcome)?;
    }
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in ops {
        by_key.entry(&op.key).or_default().push(op);
    }
    let mut keys = Vec::with_capacity(by_key.len());
    for (key, key_ops) in by_key {
        keys.push(check_key(model, key, &key_ops, opts)?);
    }
    Ok(Report {
        result: overall(&keys),
        keys,
    })
}

fn overall(keys: &[KeyReport]) -> CheckResult {
    let mut unknown = Vec::new();
    let mut reason = String::new();
    for k in keys {
        match &k.outcome {
            KeyOutcome::NotLinearizable(f) => return CheckResult::NotLinearizable(f.clone()),
            KeyOutcome::Unknown { reason: r } => {
                if unknown.is_empty() {
                    reason = r.clone();
                }
                unknown.push(k.key.clone());
            }
            KeyOutcome::Linearizable => {}
        }
    }
    if unknown.is_empty() {
        CheckResult::Linearizable
    } else {
        CheckResult::Unknown { keys: unknown, reason }
    }
}

/// The calls of `ops` as seen at the end of event `cut` (`usize::MAX`: all).
fn calls_at<M: Model>(model: &M, ops: &[&Operation], cut: usize) -> Result<Vec<Call<M>>, ModelError> {
    let mut meta = Vec::with_capacity(ops.len());
    let mut pairs = Vec::with_capacity(ops.len());
    for op in ops.iter().filter(|op| op.invoke <= cut) {
        let finished = op.complete.filter(|&c| c <= cut && op.outcome != Outcome::Info);
        let outcome = if finished.is_some() { op.outcome } else { Outcome::Info };
        if let Some(pair) = model.convert(op, outcome)? {
            meta.push((op.id, op.invoke, finished));
            pairs.push(pair);
        }
    }
    model.prepare(&mut pairs);
    let calls = meta.into_iter().zip(pairs);
    Ok(calls
        .map(|((op, call, ret), (input, output))| Call {
            op,
            input,
            output,
            call,
            ret,
        })
        .collect())
}

fn limits(opts: &CheckOptions) -> Limits {
    Limits {
        max_steps: opts.max_steps,
        max_states: opts.max_states,
        max_memo_bytes: opts.max_memo_bytes,
        deadline: opts.time_limit.map(|t| Instant::now() + t),
    }
}

fn check_key<M: Model>(model: &M, key: &str, ops: &[&Operation], opts: &CheckOptions) -> Result<KeyReport, ModelError> {
    let start = Instant::now();
    let calls = calls_at(model, ops, usize::MAX)?;
    let n = calls.len();
    let limits = limits(opts);
    let (mut steps, outcome) = match wgl::search(model, &calls, limits) {
        Search::Linearizable { steps } => (steps, KeyOutcome::Linearizable),
        Search::Exhausted { steps, why } => (
            steps,
            KeyOutcome::Unknown {
                reason: budget_reason(why, opts),
            },
        ),
        Search::Violation {
            steps,
            longest,
            state,
            stuck,
        } => {
            let last = ops.iter().filter_map(|op| op.complete).max().unwrap_or(0);
            // Each bisection probe gets about twice what the full search took.
            let probe = Limits {
                max_steps: opts.max_steps.min(steps.saturating_mul(2).saturating_add(1_000_000)),
                ..limits
            };
            let (extra, failure) = explain(model, key, ops, opts, probe, (last, longest, state, stuck))?;
            (steps + extra, KeyOutcome::NotLinearizable(Box::new(failure)))
        }
    };
    steps = steps.max(1);
    Ok(KeyReport {
        key: key.to_string(),
        ops: n,
        steps,
        elapsed: start.elapsed(),
        outcome,
    })
}

fn budget_reason(why: Exhaustion, opts: &CheckOptions) -> String {
    match why {
        Exhaustion::Time => format!(
            "time limit of {:?} per key exceeded",
            opts.time_limit.unwrap_or_default()
        ),
        Exhaustion::States => format!(
            "memo budget ({} states or {} MiB) per key exceeded",
            opts.max_states,
            opts.max_memo_bytes >> 20
        ),
        Exhaustion::Steps => format!("budget of {} search steps per key exceeded", opts.max_steps),
    }
}

/// A violation found by one search: (cut, longest, state, stuck).
type Violation<S> = (usize, Vec<usize>, S, usize);

/// Finds the shortest failing prefix (when minimizing) and describes it;
/// `full` is the violation found on the whole key. A probe that runs out of
/// `limits` counts as "not known to fail", so the prefix found may be longer
/// than the shortest, never wrong.
fn explain<M: Model>(
    model: &M,
    key: &str,
    ops: &[&Operation],
    opts: &CheckOptions,
    limits: Limits,
    full: Violation<M::State>,
) -> Result<(u64, Failure), ModelError> {
    let mut cuts: Vec<usize> = ops
        .iter()
        .filter(|op| op.outcome != Outcome::Info)
        .filter_map(|op| op.complete)
        .collect();
    cuts.sort_unstable();
    let (mut lo, mut hi) = (0, cuts.len());
    let mut steps = 0;
    let mut best = full;
    // Invariant: the prefix ending at cuts[hi] (or the whole history when
    // hi == len) fails; those ending before cuts[lo] are not known to fail.
    for _ in 0..=usize::BITS {
        if !opts.minimize || lo >= hi {
            break;
        }
        let mid = lo + (hi - lo) / 2;
        match wgl::search(model, &calls_at(model, ops, cuts[mid])?, limits) {
            Search::Violation {
                steps: s,
                longest,
                state,
                stuck,
            } => {
                steps += s;
                hi = mid;
                best = (cuts[mid], longest, state, stuck);
            }
            Search::Linearizable { steps: s } | Search::Exhausted { steps: s, .. } => {
                steps += s;
                lo = mid + 1;
            }
        }
    }
    let (cut, longest, state, stuck) = best;
    Ok((steps, failure(key, ops, cut, &longest, &state, stuck)))
}

fn failure<S: fmt::Debug>(
    key: &str,
    ops: &[&Operation],
    cut: usize,
    longest: &[usize],
    state: &S,
    stuck: usize,
) -> Failure {
    let find = |id: usize| ops.iter().find(|op| op.id == id).map(|op| (*op).clone());
    let culprit = ops.iter().find(|op| op.complete == Some(cut)).map(|op| (*op).clone());
    Failure {
        key: key.to_string(),
        prefix_end: cut,
        culprit,
        linearized: longest.iter().filter_map(|&id| find(id)).collect(),
        state: format!("{state:?}"),
        stuck: find(stuck).unwrap_or_else(|| ops[0].clone()),
    }
}
