//! Sequential specifications ("models") the checker linearizes against.
//!
//! A [`Model`] turns each paired [`Operation`] into an input and an observed
//! output, and steps a state: `step` returns the next state if the operation,
//! applied to `state`, could have produced the output, and `None` otherwise.
//! States are hashed for memoization, so keep them small.
//!
//! * [`Register`]: one S3 object key: read, write, compare-and-set (If-Match),
//!   create-only write (If-None-Match) and delete.
//! * [`SetModel`]: a grow-only set with add and read-all.

use std::collections::{BTreeSet, HashSet};
use std::fmt::{self, Debug};
use std::hash::Hash;

use serde_json::Value;

use crate::history::{Func, Operation, Outcome, PRECONDITION_FAILED};

/// An operation the model cannot interpret (bad value or unsupported function).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelError {
    /// The operation's id.
    pub op: usize,
    /// The invocation's event index.
    pub event: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "operation {} (event {}): {}", self.op, self.event, self.message)
    }
}

impl std::error::Error for ModelError {}

/// An operation as the model sees it: `None` when it is dropped.
pub type Interpreted<I, O> = Option<(I, O)>;

/// A sequential specification.
pub trait Model {
    /// The model's state; hashed for memoization.
    type State: Clone + Eq + Hash + Debug;
    /// An operation's argument.
    type Input: Clone + Eq + Hash + Debug;
    /// An operation's observed result.
    type Output: Clone + Eq + Hash + Debug;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// The state after `input` produced `output` from `state`, or `None` if it could not.
    fn step(&self, state: &Self::State, input: &Self::Input, output: &Self::Output) -> Option<Self::State>;

    /// Interprets `op` as if it had ended with `outcome`; `Ok(None)` drops it
    /// (it has no effect that could constrain the history).
    fn convert(&self, op: &Operation, outcome: Outcome) -> Result<Interpreted<Self::Input, Self::Output>, ModelError>;

    /// Rewrites one key's operations before a search (the default keeps them).
    ///
    /// The search treats operations with an unknown outcome and equal input
    /// and output as interchangeable (it linearizes them in invocation
    /// order), so a model gains by mapping inputs whose differences cannot
    /// be observed to one canonical input. Must not change the verdict.
    fn prepare(&self, ops: &mut [(Self::Input, Self::Output)]) {
        let _ = ops;
    }
}

fn error(op: &Operation, message: impl Into<String>) -> ModelError {
    ModelError {
        op: op.id,
        event: op.invoke,
        message: message.into(),
    }
}

/// A register value: a JSON string, or an integer taken as its decimal text.
fn scalar(op: &Operation, value: &Value, what: &str) -> Result<String, ModelError> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
        other => Err(error(op, format!("{what} must be a string or integer, got {other}"))),
    }
}

fn optional_scalar(op: &Operation, value: &Value, what: &str) -> Result<Option<String>, ModelError> {
    match value {
        Value::Null => Ok(None),
        v => scalar(op, v, what).map(Some),
    }
}

/// Input of the [`Register`] model.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RegisterInput {
    /// Read the value.
    Read,
    /// Write unconditionally.
    Write(String),
    /// Write `to` if the value is `from`.
    Cas {
        /// Expected current value.
        from: String,
        /// New value.
        to: String,
    },
    /// Write if the key is absent.
    Create(String),
    /// Remove the key.
    Delete,
}

/// Output of the [`Register`] model.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RegisterOutput {
    /// A read saw this value (`None`: absent).
    Read(Option<String>),
    /// A write, conditional write or delete took effect.
    Done,
    /// A conditional write's precondition was false; nothing changed.
    Rejected,
    /// Unknown: a conditional write either took effect or never happened.
    Unknown,
}

/// The canonical value [`Register::prepare`] gives writes nobody observes.
pub const UNOBSERVED: &str = "\u{0}unobserved";

/// One S3 object key: absent (`None`) or holding a value. Values should be
/// unique per write so that a read identifies the write it saw.
#[derive(Clone, Copy, Debug, Default)]
pub struct Register;

impl Register {
    fn input(op: &Operation) -> Result<RegisterInput, ModelError> {
        Ok(match op.f {
            Func::Read => RegisterInput::Read,
            Func::Write => RegisterInput::Write(scalar(op, &op.input, "write value")?),
            Func::Create => RegisterInput::Create(scalar(op, &op.input, "create value")?),
            Func::Delete => RegisterInput::Delete,
            Func::Cas => Self::cas(op)?,
            f => return Err(error(op, format!("{f:?} is not a register operation"))),
        })
    }

    /// `{"from": a, "to": b}` or `[a, b]`.
    fn cas(op: &Operation) -> Result<RegisterInput, ModelError> {
        let (from, to) = match &op.input {
            Value::Object(m) => (m.get("from"), m.get("to")),
            Value::Array(a) if a.len() == 2 => (a.first(), a.get(1)),
            other => {
                return Err(error(
                    op,
                    format!("cas value must be {{\"from\":..,\"to\":..}}, got {other}"),
                ))
            }
        };
        let (Some(from), Some(to)) = (from, to) else {
            return Err(error(op, "cas value needs both \"from\" and \"to\""));
        };
        Ok(RegisterInput::Cas {
            from: scalar(op, from, "cas from")?,
            to: scalar(op, to, "cas to")?,
        })
    }
}

impl Model for Register {
    type State = Option<String>;
    type Input = RegisterInput;
    type Output = RegisterOutput;

    fn init(&self) -> Option<String> {
        None
    }

    fn step(&self, state: &Option<String>, input: &RegisterInput, output: &RegisterOutput) -> Option<Option<String>> {
        use RegisterInput as I;
        use RegisterOutput as O;
        match (input, output) {
            (I::Read, O::Read(seen)) => (state == seen).then(|| state.clone()),
            (I::Read, _) => Some(state.clone()),
            (I::Write(v), _) => Some(Some(v.clone())),
            (I::Delete, _) => Some(None),
            (I::Cas { from, .. }, O::Rejected) => (state.as_ref() != Some(from)).then(|| state.clone()),
            (I::Cas { from, to }, _) => (state.as_ref() == Some(from)).then(|| Some(to.clone())),
            (I::Create(_), O::Rejected) => state.is_some().then(|| state.clone()),
            (I::Create(v), _) => state.is_none().then(|| Some(v.clone())),
        }
    }

    /// Values written by unknown-outcome operations that no operation of the
    /// key observes (no read returns them, no CAS expects them) become one
    /// [`UNOBSERVED`] value: only their timing matters, not their identity.
    fn prepare(&self, ops: &mut [(RegisterInput, RegisterOutput)]) {
        let mut observed: HashSet<String> = HashSet::new();
        for (input, output) in ops.iter() {
            match (input, output) {
                (RegisterInput::Cas { from, .. }, _) => observed.insert(from.clone()),
                (_, RegisterOutput::Read(Some(v))) => observed.insert(v.clone()),
                _ => false,
            };
        }
        for (input, output) in ops.iter_mut() {
            let written = match input {
                RegisterInput::Write(v) | RegisterInput::Create(v) | RegisterInput::Cas { to: v, .. } => v,
                _ => continue,
            };
            if *output == RegisterOutput::Unknown && !observed.contains(written) {
                *written = UNOBSERVED.to_string();
            }
        }
    }

    fn convert(
        &self,
        op: &Operation,
        outcome: Outcome,
    ) -> Result<Interpreted<RegisterInput, RegisterOutput>, ModelError> {
        let input = Self::input(op)?;
        let conditional = matches!(input, RegisterInput::Cas { .. } | RegisterInput::Create(_));
        let output = match outcome {
            Outcome::Ok if input == RegisterInput::Read => {
                RegisterOutput::Read(optional_scalar(op, &op.output, "read result")?)
            }
            Outcome::Ok => RegisterOutput::Done,
            Outcome::Fail if conditional && op.error.as_deref() == Some(PRECONDITION_FAILED) => {
                RegisterOutput::Rejected
            }
            Outcome::Fail => return Ok(None),
            Outcome::Info if input == RegisterInput::Read => return Ok(None),
            Outcome::Info => RegisterOutput::Unknown,
        };
        Ok(Some((input, output)))
    }
}

/// Input of the [`SetModel`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SetInput {
    /// Add an element.
    Add(String),
    /// Read all elements.
    ReadAll,
}

/// Output of the [`SetModel`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SetOutput {
    /// An add took effect (or, for `info`, may have).
    Done,
    /// A read saw exactly these elements.
    Read(BTreeSet<String>),
}

/// A grow-only set per key: `add` an element, `read_all` the elements.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetModel;

impl SetModel {
    fn elements(op: &Operation) -> Result<BTreeSet<String>, ModelError> {
        match &op.output {
            Value::Null => Ok(BTreeSet::new()),
            Value::Array(items) => items.iter().map(|v| scalar(op, v, "set element")).collect(),
            other => Err(error(op, format!("read_all result must be a list, got {other}"))),
        }
    }
}

impl Model for SetModel {
    type State = BTreeSet<String>;
    type Input = SetInput;
    type Output = SetOutput;

    fn init(&self) -> BTreeSet<String> {
        BTreeSet::new()
    }

    fn step(&self, state: &BTreeSet<String>, input: &SetInput, output: &SetOutput) -> Option<BTreeSet<String>> {
        match (input, output) {
            (SetInput::Add(e), _) => {
                let mut next = state.clone();
                next.insert(e.clone());
                Some(next)
            }
            (SetInput::ReadAll, SetOutput::Read(seen)) => (state == seen).then(|| state.clone()),
            (SetInput::ReadAll, SetOutput::Done) => Some(state.clone()),
        }
    }

    fn convert(&self, op: &Operation, outcome: Outcome) -> Result<Interpreted<SetInput, SetOutput>, ModelError> {
        let input = match op.f {
            Func::Add => SetInput::Add(scalar(op, &op.input, "add element")?),
            Func::ReadAll => SetInput::ReadAll,
            f => return Err(error(op, format!("{f:?} is not a set operation"))),
        };
        match (outcome, &input) {
            (Outcome::Fail, _) | (Outcome::Info, SetInput::ReadAll) => Ok(None),
            (Outcome::Ok, SetInput::ReadAll) => Ok(Some((input, SetOutput::Read(Self::elements(op)?)))),
            _ => Ok(Some((input, SetOutput::Done))),
        }
    }
}
