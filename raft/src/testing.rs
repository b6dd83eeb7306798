//! A tiny [`StateMachine`] for tests of the Raft layer and of code built on
//! it: named `i64` counters in one table. Adding past `i64` overflows is an
//! apply *error* (it stops the node), which tests use to exercise that path.

use serde::{Deserialize, Serialize};

use crate::kv::{KvRead, Table, Txn};
use crate::{ApplyCtx, SmError, StateMachine};

/// counter name → big-endian `i64`.
pub const COUNTERS: Table = "counters";

/// The counters' state machine.
pub struct Counter;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CounterCommand {
    Add { key: String, delta: i64 },
}

/// The counter's value after the command, and where it was applied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterResponse {
    pub value: i64,
    pub applied_at: ApplyCtx,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CounterQuery {
    Get { key: String },
}

fn value<R: KvRead + ?Sized>(view: &R, key: &str) -> Result<i64, SmError> {
    match view.get(COUNTERS, key.as_bytes())? {
        None => Ok(0),
        Some(bytes) => {
            let bytes: [u8; 8] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| format!("counter {key:?} holds {} bytes", bytes.len()))?;
            Ok(i64::from_be_bytes(bytes))
        }
    }
}

impl StateMachine for Counter {
    type Command = CounterCommand;
    type Response = CounterResponse;
    type Query = CounterQuery;
    type QueryResponse = i64;

    const TABLES: &'static [Table] = &[COUNTERS];
    const METRICS_PREFIX: &'static str = "test";

    fn apply(
        txn: &mut Txn<'_, rocksdb::DB>,
        command: &CounterCommand,
        ctx: &ApplyCtx,
    ) -> Result<CounterResponse, SmError> {
        let CounterCommand::Add { key, delta } = command;
        let value = value(&*txn, key)?
            .checked_add(*delta)
            .ok_or_else(|| format!("counter {key:?} overflows"))?;
        txn.put(COUNTERS, key.as_bytes().to_vec(), value.to_be_bytes().to_vec());
        Ok(CounterResponse {
            value,
            applied_at: *ctx,
        })
    }

    fn query(db: &rocksdb::DB, query: &CounterQuery) -> Result<i64, SmError> {
        let CounterQuery::Get { key } = query;
        value(db, key)
    }
}
