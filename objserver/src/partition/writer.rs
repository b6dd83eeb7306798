//! The data log's writer for one redundancy class of one partition, run by
//! the partition leader for one term (DESIGN §5).
//!
//! Writes queue up while a stripe is in flight; the next stripe packs
//! everything queued (group commit), up to `stripe_data_bytes_max`, and a
//! lone write goes out at once as a short stripe. A stripe is recorded in
//! Raft only after every fragment is durable, and a write is answered only
//! after that record commits. When an append fails, the group is sealed
//! and the stripe retried in a fresh group; when a proposal fails, the
//! leadership is gone and the writer stops (its callers see `Unavailable`).

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tessera_common::ids::{ChunkId, Epoch};
use tessera_common::os_api::OsError;
use tokio::sync::{mpsc, oneshot};

use super::{propose_error, PartitionCtx};
use crate::placement::{FragmentLoc, GroupId, GroupPlacement, Redundancy, StripeLoc};
use crate::state::{Command, Extent, Query, QueryResponse, Relocation, Response, StateError, StripeWrite};

/// Queued writes per writer; senders wait when it is full (backpressure).
const QUEUE_DEPTH: usize = 256;
/// Fresh groups a stripe may try before its writes fail.
const STRIPE_ATTEMPTS: usize = 3;

/// One piece of a client write (at most a stripe's data), or a copy of a
/// live extent made by compaction.
pub struct WriteJob {
    pub uid: u128,
    pub offset: u64,
    pub data: Bytes,
    /// `Some(old)`: compaction's copy of extent `old` (switched only if it
    /// is still `old` when recorded).
    pub relocating: Option<Extent>,
    /// The uid's size after the write once recorded (0 for relocations).
    pub reply: oneshot::Sender<Result<u64, OsError>>,
}

/// Handle of a running writer; dropping it stops the writer after the
/// queued jobs fail.
pub struct Writer {
    tx: mpsc::Sender<WriteJob>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Writer {
    pub fn spawn(ctx: Arc<PartitionCtx>, redundancy: Redundancy, epoch: u64) -> Writer {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let log = DataLog {
            ctx,
            redundancy,
            epoch,
            open: None,
        };
        Writer {
            tx,
            task: tokio::spawn(log.run(rx)),
        }
    }

    /// Whether the writer still runs (it stops when its leadership ends).
    pub fn is_running(&self) -> bool {
        !self.tx.is_closed()
    }

    /// The queue's sender: a send waits while the queue is full and fails
    /// once the writer stopped. A job whose caller went away may still be
    /// written (writes are idempotent).
    pub fn sender(&self) -> mpsc::Sender<WriteJob> {
        self.tx.clone()
    }
}

/// The open group a writer appends to, and where its next stripe goes.
struct OpenGroup {
    placement: GroupPlacement,
    tail: u64,
}

struct DataLog {
    ctx: Arc<PartitionCtx>,
    redundancy: Redundancy,
    epoch: u64,
    open: Option<OpenGroup>,
}

/// A writer stops on this: its leadership (or storage) is gone.
pub(crate) struct Stop(pub(crate) OsError);

impl DataLog {
    async fn run(mut self, mut rx: mpsc::Receiver<WriteJob>) {
        let max = self.ctx.settings.stripe_data_bytes_max;
        let mut carry: Option<WriteJob> = None;
        if let Err(Stop(error)) = self.seal_leftover_groups().await {
            tracing::info!(partition = self.ctx.partition, error = %error, "data log writer cannot start");
            rx.close();
            while let Some(job) = rx.recv().await {
                let _ = job.reply.send(Err(error.clone()));
            }
            return;
        }
        loop {
            let first = match carry.take() {
                Some(job) => job,
                None => match rx.recv().await {
                    Some(job) => job,
                    None => return,
                },
            };
            let mut batch_bytes = first.data.len();
            let relocating = first.relocating.is_some();
            let mut batch = vec![first];
            while let Ok(job) = rx.try_recv() {
                if batch_bytes + job.data.len() > max || job.relocating.is_some() != relocating {
                    carry = Some(job);
                    break;
                }
                batch_bytes += job.data.len();
                batch.push(job);
            }
            if let Err(Stop(error)) = self.write_batch(batch).await {
                tracing::info!(partition = self.ctx.partition, error = %error, "data log writer stops");
                rx.close();
                fail_all(carry.take().into_iter(), &error);
                while let Some(job) = rx.recv().await {
                    let _ = job.reply.send(Err(error.clone()));
                }
                return;
            }
        }
    }

    /// Seals groups of this class still open: a writer of this term that
    /// stopped (a failed proposal) may have left one; only one writer per
    /// class appends at a time, so nothing else is using them.
    async fn seal_leftover_groups(&self) -> Result<(), Stop> {
        let groups = match self.ctx.raft.read_local(Query::Groups).await {
            Ok(QueryResponse::Groups(groups)) => groups,
            Ok(other) => return Err(Stop(OsError::Internal(format!("unexpected answer {other:?}")))),
            Err(e) => return Err(Stop(propose_error(e))),
        };
        for (_, record) in groups {
            let open = matches!(record.state, crate::state::GroupState::Open { .. });
            if open && record.placement.redundancy == self.redundancy {
                seal_group(&self.ctx, &record.placement, self.epoch).await?;
            }
        }
        Ok(())
    }

    /// Writes one stripe holding `batch` (all writes or all relocations)
    /// and answers every job.
    async fn write_batch(&mut self, batch: Vec<WriteJob>) -> Result<(), Stop> {
        let mut data = BytesMut::with_capacity(batch.iter().map(|j| j.data.len()).sum());
        let mut offsets = Vec::with_capacity(batch.len());
        for job in &batch {
            offsets.push(data.len() as u32);
            data.extend_from_slice(&job.data);
        }
        let data = data.freeze();
        let make = |group: GroupId, stripe: StripeLoc| -> Command {
            if batch[0].relocating.is_some() {
                let moves = batch
                    .iter()
                    .zip(&offsets)
                    .filter_map(|(job, data_offset)| {
                        job.relocating.map(|old| Relocation {
                            uid: job.uid,
                            offset: job.offset,
                            old,
                            data_offset: *data_offset,
                        })
                    })
                    .collect();
                Command::Relocate { group, stripe, moves }
            } else {
                let writes = batch
                    .iter()
                    .zip(&offsets)
                    .map(|(job, data_offset)| StripeWrite {
                        uid: job.uid,
                        offset: job.offset,
                        len: job.data.len() as u64,
                        data_offset: *data_offset,
                    })
                    .collect();
                Command::RecordStripe { group, stripe, writes }
            }
        };
        let answers: Result<Vec<Result<u64, OsError>>, Stop> = match self.append_and_record(&data, make).await {
            Ok(Response::Recorded(results)) => Ok(results
                .into_iter()
                .map(|r| {
                    r.map_err(|e| match e {
                        StateError::NoSuchUid => OsError::NoSuchUid,
                        other => OsError::Internal(other.to_string()),
                    })
                })
                .collect()),
            Ok(Response::Relocated { .. }) => Ok(batch.iter().map(|_| Ok(0)).collect()),
            Ok(other) => Err(Stop(OsError::Unavailable(format!("stripe not recorded: {other:?}")))),
            Err(stop) => Err(stop),
        };
        match answers {
            Ok(answers) => {
                for (job, answer) in batch.into_iter().zip(answers) {
                    let _ = job.reply.send(answer);
                }
                Ok(())
            }
            Err(Stop(error)) => {
                fail_all(batch.into_iter(), &error);
                Err(Stop(error))
            }
        }
    }

    /// Appends `data` as one stripe (retrying in fresh groups) and proposes
    /// `make(group, stripe)` once every fragment is durable.
    async fn append_and_record(
        &mut self,
        data: &Bytes,
        make: impl Fn(GroupId, StripeLoc) -> Command,
    ) -> Result<Response, Stop> {
        let io = self.ctx.io.clone();
        let mut last_error = String::new();
        for _ in 0..STRIPE_ATTEMPTS {
            let fragment_len = (data.len() as u64)
                .div_ceil(self.redundancy.data_fragments() as u64)
                .max(1);
            self.ensure_room(fragment_len).await?;
            let Some(open) = self.open.as_ref() else {
                return Err(Stop(OsError::Internal("no open group after ensure_room".into())));
            };
            let (placement, tail) = (open.placement.clone(), open.tail);
            let started = std::time::Instant::now();
            match io.append_stripe(&placement, Epoch(self.epoch), tail, data).await {
                Ok(stripe) => {
                    metrics::histogram!("os_stripe_append_seconds").record(started.elapsed().as_secs_f64());
                    metrics::counter!("os_stripe_bytes_total").increment(data.len() as u64);
                    let response = self.propose(make(placement.id, stripe)).await?;
                    if let Some(open) = self.open.as_mut() {
                        open.tail = stripe.end();
                    }
                    return Ok(response);
                }
                Err(e) => {
                    tracing::warn!(partition = self.ctx.partition, group = %placement.id, error = %e,
                        "stripe append failed: sealing the group and retrying in a new one");
                    last_error = e.to_string();
                    self.retire_open_group().await?;
                }
            }
        }
        Err(Stop(OsError::Unavailable(format!(
            "stripe append failed: {last_error}"
        ))))
    }

    async fn propose(&self, command: Command) -> Result<Response, Stop> {
        self.ctx
            .raft
            .propose_local(command)
            .await
            .map_err(|e| Stop(propose_error(e)))
    }

    /// Makes sure an open group has room for a fragment of `fragment_len`.
    async fn ensure_room(&mut self, fragment_len: u64) -> Result<(), Stop> {
        let full = self
            .open
            .as_ref()
            .is_some_and(|o| o.tail + fragment_len > self.ctx.settings.chunk_bytes_max);
        if full {
            self.retire_open_group().await?;
        }
        if self.open.is_none() {
            self.open = Some(self.open_group().await?);
        }
        Ok(())
    }

    /// Seals the open group in Raft, then on its chunks (best effort: the
    /// epoch already fences them against older leaders).
    async fn retire_open_group(&mut self) -> Result<(), Stop> {
        let Some(open) = self.open.take() else { return Ok(()) };
        seal_group(&self.ctx, &open.placement, self.epoch).await
    }

    async fn open_group(&self) -> Result<OpenGroup, Stop> {
        let meta = match self.ctx.raft.read_local(Query::Meta).await {
            Ok(QueryResponse::Meta(meta)) => meta,
            Ok(other) => return Err(Stop(OsError::Internal(format!("unexpected answer {other:?}")))),
            Err(e) => return Err(Stop(propose_error(e))),
        };
        let total = self.redundancy.total_fragments();
        let servers = self
            .ctx
            .cluster
            .choose(total, &BTreeSet::new())
            .map_err(|e| Stop(OsError::NoSpace(e.to_string())))?;
        let partition_bits = u64::from(self.ctx.partition) << 32;
        let fragments = servers
            .iter()
            .enumerate()
            .map(|(i, s)| FragmentLoc {
                node: s.node,
                addr: s.addr,
                chunk: ChunkId(partition_bits | u64::from(meta.next_chunk_seq + i as u32)),
            })
            .collect();
        let placement = GroupPlacement {
            id: GroupId(meta.next_group),
            redundancy: self.redundancy,
            fragments,
        };
        match self
            .propose(Command::OpenGroup {
                placement: placement.clone(),
            })
            .await?
        {
            Response::Group(_) => {}
            other => return Err(Stop(OsError::Unavailable(format!("group not opened: {other:?}")))),
        }
        if let Err(e) = self.ctx.io.create_chunks(&placement, Epoch(self.epoch)).await {
            tracing::warn!(partition = self.ctx.partition, group = %placement.id, error = %e, "creating chunks failed");
            seal_group(&self.ctx, &placement, self.epoch).await?;
            return Err(Stop(OsError::Unavailable(format!("creating chunks: {e}"))));
        }
        tracing::info!(partition = self.ctx.partition, group = %placement.id, epoch = self.epoch,
            servers = ?servers.iter().map(|s| s.node.0).collect::<Vec<_>>(), "opened chunk group");
        Ok(OpenGroup { placement, tail: 0 })
    }
}

/// Seals `placement` in Raft, then fences and seals its chunks at the
/// recorded length (best effort).
pub(crate) async fn seal_group(ctx: &PartitionCtx, placement: &GroupPlacement, epoch: u64) -> Result<(), Stop> {
    let length = match ctx.raft.propose_local(Command::SealGroup { group: placement.id }).await {
        Ok(Response::Sealed { length }) => length,
        Ok(other) => return Err(Stop(OsError::Internal(format!("seal answered {other:?}")))),
        Err(e) => return Err(Stop(propose_error(e))),
    };
    if let Err(e) = ctx.io.seal(placement, Epoch(epoch), length).await {
        tracing::warn!(partition = ctx.partition, group = %placement.id, error = %e,
            "sealing chunks failed; the epoch fences them");
    }
    Ok(())
}

fn fail_all(jobs: impl Iterator<Item = WriteJob>, error: &OsError) {
    for job in jobs {
        let _ = job.reply.send(Err(error.clone()));
    }
}

/// Used by the leader's take-over: a `Stop` is just an error there.
impl From<Stop> for OsError {
    fn from(stop: Stop) -> OsError {
        stop.0
    }
}
