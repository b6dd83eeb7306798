//! A partition's replicated state (DESIGN §4, §5): GC entries, each uid's
//! extent map, and the data log's chunk groups with their live bytes. It
//! changes only by applying [`Command`]s in Raft log order, through a
//! [`Txn`], so applying a batch is one RocksDB write and the logic is
//! tested against a real RocksDB without Raft.
//!
//! Ordering guarantees the protocol relies on:
//! - stripes are recorded only into an `Open` group, at or after its tail,
//!   so a stripe of a deposed leader recorded after the new leader sealed
//!   the group is refused, never mapped;
//! - writes to a uid without a record (never opened, deleted, or reaped)
//!   are dropped, so a late stripe cannot revive freed data.

pub mod audit;
mod extents;
mod groups;
mod objects;
pub mod records;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};
use tessera_raft::kv::{KvError, KvRead, Txn};
pub use tessera_raft::ApplyCtx;

pub use extents::Placed;
pub use records::{
    Extent, GcEntry, GroupRecord, GroupState, LostColumns, Meta, ObjectRecord, EXTENT_BYTES_MAX, TABLES,
};

use tessera_common::ids::ChunkId;

use crate::placement::{FragmentLoc, GroupId, GroupPlacement, Redundancy, StripeLoc};

/// Refusals of a command (answered to the proposer) and corruption
/// (stops the node).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum StateError {
    #[error("no such uid")]
    NoSuchUid,
    #[error("no such chunk group {0}")]
    NoSuchGroup(u64),
    #[error("chunk group {group} is {state}, not open for term {term}")]
    GroupNotOpen { group: u64, state: String, term: u64 },
    #[error("stripe at {chunk_offset} of group {group} is before its tail {tail}")]
    StripeBeforeTail { group: u64, chunk_offset: u64, tail: u64 },
    #[error("proposal made from a stale view: {0}")]
    StaleProposal(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("bad placement: {0}")]
    BadPlacement(String),
    #[error("uid already has data with another redundancy")]
    RedundancyMismatch,
    #[error("invariant violated: {0}")]
    Invariant(String),
    #[error("table {table} corrupt: {detail}")]
    Corrupt { table: String, detail: String },
    #[error("storage: {0}")]
    Storage(String),
}

impl From<KvError> for StateError {
    fn from(e: KvError) -> Self {
        StateError::Storage(e.to_string())
    }
}

impl From<tessera_raft::kv::Corrupt> for StateError {
    fn from(e: tessera_raft::kv::Corrupt) -> Self {
        StateError::Corrupt {
            table: e.table.to_string(),
            detail: e.detail,
        }
    }
}

impl From<tessera_raft::kv::ReadError> for StateError {
    fn from(e: tessera_raft::kv::ReadError) -> Self {
        match e {
            tessera_raft::kv::ReadError::Kv(e) => e.into(),
            tessera_raft::kv::ReadError::Corrupt(e) => e.into(),
        }
    }
}

impl StateError {
    /// Whether this error means the state itself is broken (the node must
    /// stop) rather than a refusal of one command.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            StateError::Corrupt { .. } | StateError::Storage(_) | StateError::Invariant(_)
        )
    }
}

/// One uid's share of a recorded stripe: `len` bytes at logical `offset`
/// of `uid` are stripe data bytes `data_offset..data_offset + len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StripeWrite {
    pub uid: u128,
    pub offset: u64,
    pub len: u64,
    pub data_offset: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// DESIGN §4 step 3: GC entry + reservation (renews an existing entry).
    OpenWrite {
        uid: u128,
        redundancy: Redundancy,
        size_hint_bytes: u64,
        ttl_ms: u64,
    },
    /// DESIGN §4 step 7: the name commit happened; drop the GC entry.
    Confirm { uid: u128 },
    /// Drop the uid and its extents (a pending delete from the name
    /// servers, or a GC entry whose reap answered "free").
    Delete { uid: u128 },
    /// Unmap a range of a uid.
    Trim { uid: u128, offset: u64, len: u64 },
    /// Start a chunk group; it is `Open` for the proposing leader's term.
    OpenGroup { placement: GroupPlacement },
    /// Record a stripe whose every fragment is durable.
    RecordStripe {
        group: GroupId,
        stripe: StripeLoc,
        writes: Vec<StripeWrite>,
    },
    /// Stop appending to a group; its chunks are sealed at its tail.
    SealGroup { group: GroupId },
    /// Compaction: a stripe holding copies of live extents; each extent is
    /// switched to its copy only if it is still exactly `old`.
    Relocate {
        group: GroupId,
        stripe: StripeLoc,
        moves: Vec<Relocation>,
    },
    /// Compaction done: a sealed group without live bytes starts its grace
    /// period before its chunks are deleted.
    ReleaseGroup { group: GroupId },
    /// The grace period passed and the chunks were deleted.
    GroupReleased { group: GroupId },
    /// Hands out `count` chunk ids (repair creates its chunks only after
    /// this commits, so no two chunks ever share an id).
    ReserveChunks { count: u32 },
    /// Repair: fragment `index` of a sealed group was rebuilt into `new`;
    /// applies only if the fragment is still `old` (a concurrent repair of
    /// the same fragment loses).
    ReplaceFragment {
        group: GroupId,
        index: u32,
        old: ChunkId,
        new: FragmentLoc,
    },
    /// Columns of a group that miss stripes from now on (a degraded write
    /// is recorded only after its missing columns are marked) or were
    /// opened vacant; repair rebuilds them.
    MarkLost { group: GroupId, columns: Vec<u32> },
}

/// One extent copied by compaction: the copy is stripe data bytes
/// `data_offset..data_offset + old.len` of the relocation stripe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relocation {
    pub uid: u128,
    pub offset: u64,
    pub old: Extent,
    pub data_offset: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    #[default]
    Ok,
    /// `OpenGroup`: the id given to the group.
    Group(GroupId),
    /// `SealGroup`: the length the chunks are sealed at.
    Sealed {
        length: u64,
    },
    /// `ReserveChunks`: the first reserved chunk sequence number.
    Chunks {
        first_seq: u32,
    },
    /// `Relocate`: how many extents switched to their copies.
    Relocated {
        switched: u64,
    },
    /// `RecordStripe`: per write, the uid's size after it, or why it was
    /// dropped.
    Recorded(Vec<Result<u64, StateError>>),
    Error(StateError),
}

/// Applies one command. `Err` only for fatal errors; refusals are
/// `Ok(Response::Error)`.
pub fn apply<R: KvRead + ?Sized>(
    txn: &mut Txn<'_, R>,
    command: &Command,
    ctx: &ApplyCtx,
) -> Result<Response, StateError> {
    let result = match command {
        Command::OpenWrite {
            uid,
            redundancy,
            size_hint_bytes,
            ttl_ms,
        } => objects::open_write(txn, *uid, *redundancy, *size_hint_bytes, *ttl_ms, ctx),
        Command::Confirm { uid } => objects::confirm(txn, *uid),
        Command::Delete { uid } => objects::delete(txn, *uid),
        Command::Trim { uid, offset, len } => objects::trim(txn, *uid, *offset, *len),
        Command::OpenGroup { placement } => groups::open(txn, placement, ctx),
        Command::RecordStripe { group, stripe, writes } => groups::record_stripe(txn, *group, *stripe, writes, ctx),
        Command::SealGroup { group } => groups::seal(txn, *group),
        Command::Relocate { group, stripe, moves } => groups::relocate(txn, *group, *stripe, moves, ctx),
        Command::ReleaseGroup { group } => groups::release(txn, *group, ctx),
        Command::GroupReleased { group } => groups::released(txn, *group),
        Command::ReserveChunks { count } => groups::reserve_chunks(txn, *count),
        Command::ReplaceFragment { group, index, old, new } => groups::replace_fragment(txn, *group, *index, *old, new),
        Command::MarkLost { group, columns } => groups::mark_lost(txn, *group, columns),
    };
    match result {
        Ok(response) => Ok(response),
        Err(e) if e.is_fatal() => Err(e),
        Err(e) => Ok(Response::Error(e)),
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    /// The extents covering a range of a uid, and its record.
    Lookup {
        uid: u128,
        offset: u64,
        len: u64,
    },
    Object {
        uid: u128,
    },
    /// GC entries, uid order, starting at `after` (exclusive).
    GcEntries {
        after: Option<u128>,
        limit: u32,
    },
    Groups,
    Meta,
    /// Extents in a group (for compaction), after `after` (exclusive).
    GroupExtents {
        group: GroupId,
        after: Option<(u128, u64)>,
        limit: u32,
    },
    /// Groups with lost columns.
    Lost,
    /// A consistency check of the whole state ([`audit::audit`]).
    Audit,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryResponse {
    Lookup {
        object: Option<ObjectRecord>,
        extents: Vec<(u64, Extent)>,
        /// Where the groups of those extents live.
        groups: Vec<GroupPlacement>,
    },
    Object {
        object: Option<ObjectRecord>,
        gc: Option<GcEntry>,
        extents: u64,
        mapped_bytes: u64,
    },
    GcEntries(Vec<(u128, GcEntry)>),
    /// (uid, logical offset, extent).
    GroupExtents(Vec<(u128, u64, Extent)>),
    Groups(Vec<(GroupId, GroupRecord)>),
    Meta(Meta),
    Lost(Vec<(GroupId, LostColumns)>),
    Audit(audit::AuditReport),
}

pub fn query<R: KvRead + ?Sized>(view: &R, query: &Query) -> Result<QueryResponse, StateError> {
    match query {
        Query::Lookup { uid, offset, len } => lookup(view, *uid, *offset, *len),
        Query::Object { uid } => objects::describe(view, *uid),
        Query::GcEntries { after, limit } => objects::gc_entries(view, *after, *limit),
        Query::Groups => groups::all(view).map(QueryResponse::Groups),
        Query::Meta => records::meta(view).map(QueryResponse::Meta),
        Query::GroupExtents { group, after, limit } => Ok(QueryResponse::GroupExtents(
            extents::in_group(view, *group, *after, *limit as usize)?
                .into_iter()
                .map(|(uid, p)| (uid, p.offset, p.extent))
                .collect(),
        )),
        Query::Lost => groups::all_lost(view).map(QueryResponse::Lost),
        Query::Audit => audit::audit(view).map(QueryResponse::Audit),
    }
}

fn lookup<R: KvRead + ?Sized>(view: &R, uid: u128, offset: u64, len: u64) -> Result<QueryResponse, StateError> {
    let extents: Vec<(u64, Extent)> = extents::overlapping(view, uid, offset, len)?
        .into_iter()
        .map(|p| (p.offset, p.extent))
        .collect();
    let ids: std::collections::BTreeSet<GroupId> = extents.iter().map(|(_, e)| e.group).collect();
    let mut groups = Vec::with_capacity(ids.len());
    for id in ids {
        let record: GroupRecord =
            records::get(view, records::GROUPS, &records::group_key(id))?.ok_or(StateError::NoSuchGroup(id.0))?;
        groups.push(record.placement);
    }
    Ok(QueryResponse::Lookup {
        object: records::get(view, records::OBJECTS, &records::uid_key(uid))?,
        extents,
        groups,
    })
}

/// The partition's state machine as a Raft group runs it.
pub struct PartitionMachine;

impl tessera_raft::StateMachine for PartitionMachine {
    type Command = Command;
    type Response = Response;
    type Query = Query;
    type QueryResponse = QueryResponse;

    const TABLES: &'static [&'static str] = TABLES;
    const METRICS_PREFIX: &'static str = "os";

    fn apply(
        txn: &mut Txn<'_, rocksdb::DB>,
        command: &Command,
        ctx: &ApplyCtx,
    ) -> Result<Response, tessera_raft::SmError> {
        apply(txn, command, ctx).map_err(Into::into)
    }

    fn query(db: &rocksdb::DB, q: &Query) -> Result<QueryResponse, tessera_raft::SmError> {
        match q {
            // Many reads that must agree: one snapshot.
            Query::Audit => query(&tessera_raft::kv::SnapshotView::new(db), q),
            _ => query(db, q),
        }
        .map_err(Into::into)
    }
}
