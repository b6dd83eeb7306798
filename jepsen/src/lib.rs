//! Tessera's fault-test harness library (DESIGN §8, issue 6).
//!
//! * [`history`]: recorded client operations (JSON Lines) and their pairing;
//! * [`checker`]: per-key linearizability checking (WGL with memoization,
//!   bounded per key) against the models in [`checker::models`], and the
//!   set checker ([`checker::set`]);
//! * [`control`]: the cluster and its faults behind one trait (backend
//!   [`control::compose`]: the docker-compose cluster of `deploy/`);
//! * [`nemesis`]: faults on a schedule; [`workload`] and [`s3ops`]: the
//!   register, set and multipart workloads through the real S3 API;
//! * [`run`]: one scenario from start to verdict, [`plot`] its SVG, and
//!   [`smoke`] the matrix CI runs;
//! * [`ns_register`]: the register workload over the name-server client
//!   (the name-server fault test and `tessera-sim` run it);
//! * [`sim`]: a reference concurrent simulation producing linearizable
//!   histories, for tests and throughput measurements.
//!
//! The harness records with [`Recorder`] (or writes [`Event`]s itself),
//! then calls [`check_events`] with [`Register`] and [`CheckOptions`]; the
//! [`Report`] holds the overall [`CheckResult`] and one [`KeyReport`] per key.
//!
//! Throughput (release build, this 2-core machine, `examples/throughput.rs`):
//! a simulated linearizable history of 10,000 operations over 10 keys from 5
//! processes (2% unknown outcomes) checks in about 0.02 s; 100,000
//! operations in about 0.3 s. A violation costs more, since the search must
//! be exhaustive and the failing prefix is then bisected: with one corrupted
//! read, about 0.03 s at 2% unknown outcomes and 0.2 to 2.5 s at 10%. At
//! 20 to 30% unknown outcomes with 1,000 operations per key, some keys run
//! out of the default budget (reported unknown after about 2 to 3 s); at
//! ~150 operations per key (issue 6's workloads) the same rates take
//! milliseconds.

pub mod checker;
pub mod control;
pub mod history;
pub mod nemesis;
pub mod ns_register;
pub mod plot;
pub mod run;
pub mod s3ops;
pub mod sim;
pub mod smoke;
pub mod workload;

pub use checker::models::{Model, Register, SetModel};
pub use checker::{check, check_events, CheckError, CheckOptions, CheckResult, Failure, KeyOutcome, KeyReport, Report};
pub use history::{pair, parse_jsonl, read_jsonl, write_jsonl, Event, EventType, Func, Operation, Outcome, Recorder};
