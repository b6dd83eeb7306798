//! The data log's writer for one redundancy class of one partition, run by
//! the partition leader for one term (DESIGN §5).
//!
//! Writes queue up while a stripe is in flight; the next stripe packs
//! everything queued (group commit), up to `stripe_data_bytes_max`, and a
//! lone write goes out at once as a short stripe. A stripe is recorded in
//! Raft only after every fragment is durable, and a write is answered only
//! after that record commits. When a proposal fails, the leadership is
//! gone and the writer stops (its callers see `Unavailable`).
//!
//! Degraded writes: when appends fail on a few columns, the writer marks
//! them lost in Raft and records the stripe anyway, as long as the
//! redundancy's write quorum of fragments is durable; the group goes on
//! without those columns. With fewer, the group is sealed and the stripe
//! retried in a fresh group. A fresh group avoids chunk servers that failed
//! lately, and opens with vacant columns when too few servers are live for
//! a full one (never below the quorum). Once a full group can be placed
//! again, a degraded open group is retired so repair can rebuild its
//! columns.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use bytes::{Bytes, BytesMut};
use tessera_common::ids::{ChunkId, Epoch, NodeId};
use tessera_common::os_api::OsError;
use tokio::sync::{mpsc, oneshot};

use super::{propose_error, PartitionCtx};
use crate::cluster::ChunkServerInfo;
use crate::group_io::{list, Columns, FragmentFailure};
use crate::placement::{FragmentLoc, GroupId, GroupPlacement, Redundancy, StripeLoc};
use crate::state::{Command, Extent, Query, QueryResponse, Relocation, Response, StateError, StripeWrite};

/// Queued writes per writer; senders wait when it is full (backpressure).
const QUEUE_DEPTH: usize = 256;
/// Fresh groups a stripe may try before its writes fail.
const STRIPE_ATTEMPTS: usize = 3;
/// How long new groups stay off a chunk server that failed an append or
/// create of this writer (the name servers declare a dead one dead well
/// within it; a live one is used again after it).
const AVOID_AFTER_FAILURE: Duration = Duration::from_secs(30);

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
            avoid: HashMap::new(),
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
    /// Columns marked lost in Raft (vacant or missed a stripe): appends
    /// skip them. At most `degraded_columns_max`.
    lost: Columns,
}

struct DataLog {
    ctx: Arc<PartitionCtx>,
    redundancy: Redundancy,
    epoch: u64,
    open: Option<OpenGroup>,
    /// Chunk servers that failed this writer, until when to avoid them.
    avoid: HashMap<NodeId, Instant>,
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
    /// `make(group, stripe)` once the write quorum of fragments is durable
    /// and the others are marked lost.
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
            if let Err(why) = self.ensure_room(fragment_len).await? {
                last_error = why;
                continue;
            }
            let Some(open) = self.open.as_ref() else {
                return Err(Stop(OsError::Internal("no open group after ensure_room".into())));
            };
            let (placement, tail, lost) = (open.placement.clone(), open.tail, open.lost.clone());
            let started = Instant::now();
            let appended = io
                .append_stripe_except(&placement, &lost, Epoch(self.epoch), tail, data)
                .await;
            let (stripe, failed) = match appended {
                Ok(appended) => appended,
                Err(e) => return Err(Stop(OsError::Internal(format!("stripe of {}: {e}", placement.id)))),
            };
            if !failed.is_empty() && !self.degrade(&placement, &failed).await? {
                last_error = list(&failed);
                tracing::warn!(partition = self.ctx.partition, group = %placement.id, error = %last_error,
                    "stripe append failed below the write quorum: sealing the group and retrying in a new one");
                self.retire_open_group().await?;
                continue;
            }
            metrics::histogram!("os_stripe_append_seconds").record(started.elapsed().as_secs_f64());
            metrics::counter!("os_stripe_bytes_total").increment(data.len() as u64);
            match self.propose(make(placement.id, stripe)).await? {
                // Repair sealed the group under us: the stripe is dead
                // bytes in it; write it again elsewhere.
                Response::Error(StateError::GroupNotOpen { .. }) => {
                    last_error = format!("group {} sealed meanwhile", placement.id);
                    self.open = None;
                }
                response => {
                    if let Some(open) = self.open.as_mut() {
                        open.tail = stripe.end();
                    }
                    return Ok(response);
                }
            }
        }
        Err(Stop(OsError::Unavailable(format!(
            "stripe append failed: {last_error}"
        ))))
    }

    /// A stripe of the open group failed on `failed` columns: marks them
    /// lost and answers true if the group still meets its write quorum
    /// (the stripe may then be recorded), false if it does not.
    async fn degrade(&mut self, placement: &GroupPlacement, failed: &[FragmentFailure]) -> Result<bool, Stop> {
        self.note_failures(failed);
        let Some(open) = self.open.as_mut() else {
            return Ok(false);
        };
        let mut lost = open.lost.clone();
        lost.extend(failed.iter().map(|f| f.index));
        if lost.len() > self.redundancy.degraded_columns_max() {
            return Ok(false);
        }
        if !self.mark_lost(placement.id, failed.iter().map(|f| f.index)).await? {
            return Ok(false);
        }
        metrics::counter!("os_degraded_writes_total").increment(1);
        for f in failed {
            tracing::warn!(partition = self.ctx.partition, group = %placement.id, fragment = f.index, node = %f.node,
                error = %f.error, "column lost: writing on without it until repair");
        }
        if let Some(open) = self.open.as_mut() {
            open.lost = lost;
        }
        Ok(true)
    }

    /// Records `columns` of `group` as lost in Raft; false if refused.
    async fn mark_lost(&self, group: GroupId, columns: impl Iterator<Item = usize>) -> Result<bool, Stop> {
        let columns = columns.map(|c| c as u32).collect();
        match self.propose(Command::MarkLost { group, columns }).await? {
            Response::Ok => Ok(true),
            other => {
                tracing::warn!(%group, answer = ?other, "marking columns lost refused");
                Ok(false)
            }
        }
    }

    fn note_failures(&mut self, failed: &[FragmentFailure]) {
        let until = Instant::now() + AVOID_AFTER_FAILURE;
        for f in failed {
            self.avoid.insert(f.node, until);
        }
    }

    /// Chunk servers new groups should stay off now.
    fn avoided(&mut self) -> BTreeSet<NodeId> {
        let now = Instant::now();
        self.avoid.retain(|_, until| *until > now);
        self.avoid.keys().copied().collect()
    }

    async fn propose(&self, command: Command) -> Result<Response, Stop> {
        self.ctx
            .raft
            .propose_local(command)
            .await
            .map_err(|e| Stop(propose_error(e)))
    }

    /// Makes sure an open group has room for a fragment of `fragment_len`;
    /// `Ok(Err(why))` when no group could be opened this time.
    async fn ensure_room(&mut self, fragment_len: u64) -> Result<Result<(), String>, Stop> {
        let full = self
            .open
            .as_ref()
            .is_some_and(|o| o.tail + fragment_len > self.ctx.settings.chunk_bytes_max);
        let degraded = self.open.as_ref().is_some_and(|o| !o.lost.is_empty());
        if full || (degraded && self.full_group_placeable()) {
            self.retire_open_group().await?;
        }
        if self.open.is_none() {
            match self.open_group().await? {
                Ok(open) => self.open = Some(open),
                Err(why) => return Ok(Err(why)),
            }
        }
        Ok(Ok(()))
    }

    fn full_group_placeable(&mut self) -> bool {
        let avoid = self.avoided();
        let usable = self
            .ctx
            .cluster
            .chunk_servers()
            .iter()
            .filter(|s| !avoid.contains(&s.node))
            .count();
        usable >= self.redundancy.total_fragments()
    }

    /// Seals the open group (see [`seal_group`]).
    async fn retire_open_group(&mut self) -> Result<(), Stop> {
        let Some(open) = self.open.take() else { return Ok(()) };
        seal_group(&self.ctx, &open.placement, self.epoch).await
    }

    /// The chunk servers of a new group: distinct live servers, those
    /// that failed lately only if needed, at least the write quorum.
    fn place(&mut self) -> Result<Vec<ChunkServerInfo>, String> {
        let total = self.redundancy.total_fragments();
        let quorum = self.redundancy.write_quorum();
        let servers = self.ctx.cluster.chunk_servers();
        for exclude in [self.avoided(), BTreeSet::new()] {
            let usable = servers.iter().filter(|s| !exclude.contains(&s.node)).count();
            if usable >= quorum {
                return crate::cluster::choose(&servers, usable.min(total), &exclude).map_err(|e| e.to_string());
            }
        }
        Err(format!(
            "{quorum} of {total} chunk servers needed for {:?}, {} live",
            self.redundancy,
            servers.len()
        ))
    }

    /// Opens a group on the servers [`Self::place`] picks, vacant columns
    /// (the last, parity first) for the servers missing; columns whose
    /// chunk cannot be created are lost too. `Ok(Err(why))` when the group
    /// could not be opened with its write quorum.
    async fn open_group(&mut self) -> Result<Result<OpenGroup, String>, Stop> {
        let meta = match self.ctx.raft.read_local(Query::Meta).await {
            Ok(QueryResponse::Meta(meta)) => meta,
            Ok(other) => return Err(Stop(OsError::Internal(format!("unexpected answer {other:?}")))),
            Err(e) => return Err(Stop(propose_error(e))),
        };
        let servers = match self.place() {
            Ok(servers) => servers,
            Err(why) => return Ok(Err(why)),
        };
        let total = self.redundancy.total_fragments();
        let partition_bits = u64::from(self.ctx.partition) << 32;
        let fragments: Vec<FragmentLoc> = (0..total)
            .map(|i| {
                let chunk = ChunkId(partition_bits | u64::from(meta.next_chunk_seq + i as u32));
                match servers.get(i) {
                    Some(s) => FragmentLoc {
                        node: s.node,
                        addr: s.addr,
                        chunk,
                    },
                    None => FragmentLoc::vacant(chunk),
                }
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
        let vacant: Columns = (servers.len()..total).collect();
        let failed = match self
            .ctx
            .io
            .create_chunks_except(&placement, &vacant, Epoch(self.epoch))
            .await
        {
            Ok(()) => Vec::new(),
            Err(crate::group_io::GroupIoError::Fragments { failed, .. }) => failed,
            Err(e) => {
                return Err(Stop(OsError::Internal(format!(
                    "creating chunks of {}: {e}",
                    placement.id
                ))))
            }
        };
        self.note_failures(&failed);
        let mut lost = vacant;
        lost.extend(failed.iter().map(|f| f.index));
        if lost.len() > self.redundancy.degraded_columns_max() {
            let why = format!("creating chunks of {}: {}", placement.id, list(&failed));
            tracing::warn!(partition = self.ctx.partition, group = %placement.id, error = %why, "group not opened");
            seal_group(&self.ctx, &placement, self.epoch).await?;
            return Ok(Err(why));
        }
        if !lost.is_empty() && !self.mark_lost(placement.id, lost.iter().copied()).await? {
            return Err(Stop(OsError::Internal(format!(
                "marking columns of {} lost refused",
                placement.id
            ))));
        }
        tracing::info!(partition = self.ctx.partition, group = %placement.id, epoch = self.epoch,
            servers = ?servers.iter().map(|s| s.node.0).collect::<Vec<_>>(), lost = ?lost, "opened chunk group");
        Ok(Ok(OpenGroup {
            placement,
            tail: 0,
            lost,
        }))
    }
}

/// Seals `placement` in Raft, then fences and seals its chunks at the
/// recorded length in the background: best effort, since only Raft decides
/// what a group holds (a stripe is never recorded into a sealed group) and
/// a dead chunk server must not hold up writes or a take-over.
pub(crate) async fn seal_group(ctx: &Arc<PartitionCtx>, placement: &GroupPlacement, epoch: u64) -> Result<(), Stop> {
    let length = match ctx.raft.propose_local(Command::SealGroup { group: placement.id }).await {
        Ok(Response::Sealed { length }) => length,
        Ok(other) => return Err(Stop(OsError::Internal(format!("seal answered {other:?}")))),
        Err(e) => return Err(Stop(propose_error(e))),
    };
    let (ctx, placement) = (ctx.clone(), placement.clone());
    tokio::spawn(async move {
        if let Err(e) = ctx.io.seal(&placement, Epoch(epoch), length).await {
            tracing::warn!(partition = ctx.partition, group = %placement.id, error = %e,
                "sealing chunks failed; the epoch fences them");
        }
    });
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
