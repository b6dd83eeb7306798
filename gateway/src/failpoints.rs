//! Failpoints of the write protocol (DESIGN §4): a test arms one step, and
//! the next write that reaches it stops there as a crashed gateway would,
//! with no cleanup and no further step (the client gets a 500). The
//! protocol needs no cleanup by design, so stopping the handler is the
//! crash: what is left behind must be collected by the TTLs alone.
//!
//! Armed through [`Failpoints::arm`] in-process, or at start from the
//! environment variable `TESSERA_FAILPOINT` (a step name, see
//! [`WriteStep::parse`]), for tests that run the binary.

use std::sync::Mutex;

use s3s::{s3_error, S3Error};

/// The protocol steps a write can crash after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteStep {
    /// After step 2: the guard entry exists.
    Guard,
    /// After step 3: the GC entry exists, no data yet.
    GcEntry,
    /// After step 4: every byte is durable, no name yet.
    Data,
    /// After step 5: the name is committed, `confirm` never sent.
    Commit,
}

impl WriteStep {
    pub fn parse(name: &str) -> Option<WriteStep> {
        match name {
            "after-guard" => Some(WriteStep::Guard),
            "after-gc-entry" => Some(WriteStep::GcEntry),
            "after-data" => Some(WriteStep::Data),
            "after-commit" => Some(WriteStep::Commit),
            _ => None,
        }
    }
}

/// At most one armed step; it fires on every write that reaches it until
/// disarmed.
#[derive(Debug, Default)]
pub struct Failpoints {
    armed: Mutex<Option<WriteStep>>,
}

impl Failpoints {
    /// Armed from `TESSERA_FAILPOINT` when set to a known step.
    pub fn from_env() -> Failpoints {
        let armed = std::env::var("TESSERA_FAILPOINT")
            .ok()
            .and_then(|name| WriteStep::parse(&name));
        if let Some(step) = armed {
            tracing::warn!(?step, "write-protocol failpoint armed from the environment");
        }
        Failpoints {
            armed: Mutex::new(armed),
        }
    }

    pub fn arm(&self, step: Option<WriteStep>) {
        *self.armed.lock().unwrap_or_else(|p| p.into_inner()) = step;
    }

    /// `Err` when `step` is armed: the write stops here.
    pub fn check(&self, step: WriteStep) -> Result<(), S3Error> {
        if *self.armed.lock().unwrap_or_else(|p| p.into_inner()) == Some(step) {
            tracing::warn!(?step, "failpoint: the write stops here");
            return Err(s3_error!(InternalError, "failpoint: write stopped after {step:?}"));
        }
        Ok(())
    }
}
