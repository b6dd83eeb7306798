//! Group commit of proposals: commands proposed concurrently on one node
//! travel as one log entry, so one append (one fsync) and one replication
//! round serve them all. openraft 0.9 appends and syncs every client write
//! on its own, so without this a busy group pays one fsync per command.
//!
//! A lone proposal leaves at once. While [`IN_FLIGHT_MAX`] entries are
//! being committed, new proposals queue and leave together as the next
//! entry: at most [`COMMANDS_MAX`] commands, and no more once the entry
//! holds [`ENTRY_BYTES_SOFT_MAX`] encoded bytes. The commands of an entry
//! apply in order, each answered on its own; a refusal of one does not
//! touch the others (refusals are answers, not errors).

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::group_calls::write_error;
use crate::machine::metric;
use crate::{ProposeError, Raft, StateMachine};

/// Entries being committed at once by one node's proposer.
const IN_FLIGHT_MAX: usize = 2;
/// Most commands in one entry.
const COMMANDS_MAX: usize = 128;
const _: () = assert!(COMMANDS_MAX <= crate::machine::ENTRY_COMMANDS_MAX);
/// An entry takes no more commands once it holds this many bytes.
const ENTRY_BYTES_SOFT_MAX: usize = 1 << 20;
/// Proposals waiting for the next entry; proposers wait when it is full.
const QUEUE_DEPTH: usize = 1024;

/// One command waiting to be proposed, and where its answer goes.
pub(crate) struct Proposal<S: StateMachine> {
    pub(crate) command: S::Command,
    pub(crate) reply: oneshot::Sender<Result<S::Response, ProposeError>>,
}

/// Starts the proposer of `raft`; it runs until the sender is dropped or
/// the task aborted (Raft's shutdown makes every pending proposal fail).
pub(crate) fn spawn<S: StateMachine>(raft: Raft<S>) -> (mpsc::Sender<Proposal<S>>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
    (tx, tokio::spawn(run(raft, rx)))
}

async fn run<S: StateMachine>(raft: Raft<S>, mut rx: mpsc::Receiver<Proposal<S>>) {
    let mut in_flight = FuturesUnordered::new();
    loop {
        tokio::select! {
            // Finished entries first: they make room.
            biased;
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            next = rx.recv(), if in_flight.len() < IN_FLIGHT_MAX => {
                let Some(first) = next else { break };
                let batch = collect::<S>(first, &mut rx);
                in_flight.push(commit(raft.clone(), batch));
            }
        }
    }
    while in_flight.next().await.is_some() {}
}

/// `first` and whatever else is queued now, within the entry's bounds.
fn collect<S: StateMachine>(first: Proposal<S>, rx: &mut mpsc::Receiver<Proposal<S>>) -> Vec<Proposal<S>> {
    let mut bytes = encoded_len(&first.command);
    let mut batch = vec![first];
    while batch.len() < COMMANDS_MAX && bytes < ENTRY_BYTES_SOFT_MAX {
        let Ok(next) = rx.try_recv() else { break };
        bytes += encoded_len(&next.command);
        batch.push(next);
    }
    batch
}

fn encoded_len<T: serde::Serialize>(value: &T) -> usize {
    postcard::experimental::serialized_size(value).unwrap_or(0)
}

/// Proposes `batch` as one entry and answers each proposer.
async fn commit<S: StateMachine>(raft: Raft<S>, batch: Vec<Proposal<S>>) {
    let (commands, replies): (Vec<S::Command>, Vec<_>) = batch.into_iter().map(|p| (p.command, p.reply)).unzip();
    metrics::histogram!(metric::<S>("raft_entry_commands")).record(commands.len() as f64);
    let count = commands.len();
    match raft.client_write(commands).await {
        Ok(written) if written.data.len() == count => {
            for (reply, response) in replies.into_iter().zip(written.data) {
                let _ = reply.send(Ok(response));
            }
        }
        Ok(written) => {
            // apply answers every command of an entry; anything else is a bug.
            let error = format!("an entry of {count} commands got {} answers", written.data.len());
            tracing::error!(%error, "raft answered a batch wrongly");
            fail(replies, &ProposeError::Storage(error));
        }
        Err(e) => fail(replies, &write_error(e)),
    }
}

fn fail<R>(replies: Vec<oneshot::Sender<Result<R, ProposeError>>>, error: &ProposeError) {
    for reply in replies {
        let _ = reply.send(Err(error.clone()));
    }
}
