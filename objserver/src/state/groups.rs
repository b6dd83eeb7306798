//! The data log's chunk groups: opening one for the current leader's term,
//! recording durable stripes into it (mapping each write's range), sealing.

use tessera_raft::kv::{KvRead, Txn};

use super::extents::{self, Placed};
use super::records::{
    decode, encode, get, group_key, meta, put_meta, uid_key, Extent, GroupRecord, GroupState, LostColumns,
    ObjectRecord, GROUPS, GROUP_LOST, OBJECTS,
};
use super::{ApplyCtx, Relocation, Response, StateError, StripeWrite};
use tessera_common::ids::ChunkId;

use crate::placement::{FragmentLoc, GroupId, GroupPlacement, StripeLoc};

/// The sequence part of a chunk id (the low 32 bits; the high bits are the
/// partition, so chunk ids never collide across partitions).
pub fn chunk_seq(chunk: u64) -> u32 {
    chunk as u32
}

fn group<R: KvRead + ?Sized>(view: &R, id: GroupId) -> Result<GroupRecord, StateError> {
    get(view, GROUPS, &group_key(id))?.ok_or(StateError::NoSuchGroup(id.0))
}

/// Records a new group. The proposer picks its id and chunk ids from
/// [`super::Meta`]; a proposal made from a stale view (ids already used) is
/// refused, so two groups never share a chunk.
pub fn open<R: KvRead + ?Sized>(
    txn: &mut Txn<'_, R>,
    placement: &GroupPlacement,
    ctx: &ApplyCtx,
) -> Result<Response, StateError> {
    let mut m = meta(&*txn)?;
    let seqs: Vec<u32> = placement.fragments.iter().map(|f| chunk_seq(f.chunk.0)).collect();
    if placement.fragments.len() != placement.redundancy.total_fragments() {
        return Err(StateError::BadPlacement(format!(
            "{} fragments for {:?}",
            placement.fragments.len(),
            placement.redundancy
        )));
    }
    if placement.id.0 < m.next_group || seqs.iter().any(|s| *s < m.next_chunk_seq) {
        return Err(StateError::StaleProposal(format!(
            "group {} or its chunks below next group {} / chunk seq {}",
            placement.id, m.next_group, m.next_chunk_seq
        )));
    }
    m.next_group = placement.id.0 + 1;
    m.next_chunk_seq = seqs.iter().max().map_or(m.next_chunk_seq, |s| s.saturating_add(1));
    put_meta(txn, &m);
    let record = GroupRecord {
        placement: placement.clone(),
        state: GroupState::Open { epoch: ctx.term },
        tail: 0,
        written_bytes: 0,
        stripes: 0,
        live_bytes: 0,
    };
    txn.put(GROUPS, group_key(placement.id), encode(&record));
    Ok(Response::Group(placement.id))
}

/// Checks that `stripe` may be recorded into group `id` by the leader of
/// `ctx.term` with `data_bytes` of writes at the given data ranges, and
/// advances the group's tail and written bytes.
fn append_stripe<R: KvRead + ?Sized>(
    txn: &mut Txn<'_, R>,
    id: GroupId,
    stripe: StripeLoc,
    ranges: impl Iterator<Item = (u32, u64)>,
    ctx: &ApplyCtx,
) -> Result<(), StateError> {
    let mut record = group(&*txn, id)?;
    if record.state != (GroupState::Open { epoch: ctx.term }) {
        return Err(StateError::GroupNotOpen {
            group: id.0,
            state: record.state.name().to_string(),
            term: ctx.term,
        });
    }
    if stripe.chunk_offset < record.tail {
        return Err(StateError::StripeBeforeTail {
            group: id.0,
            chunk_offset: stripe.chunk_offset,
            tail: record.tail,
        });
    }
    let lost = lost_columns(&*txn, id)?;
    let degraded_max = record.placement.redundancy.degraded_columns_max();
    if lost.0.len() > degraded_max {
        return Err(StateError::BadRequest(format!(
            "group {id} lost {} columns, writes allow {degraded_max}",
            lost.0.len()
        )));
    }
    let capacity = record.placement.redundancy.data_fragments() as u64 * u64::from(stripe.fragment_len);
    let mut data_bytes = 0;
    for (data_offset, len) in ranges {
        if len == 0 || u64::from(data_offset) + len > capacity {
            return Err(StateError::BadRequest(format!(
                "stripe range {data_offset}+{len} outside {capacity} data bytes"
            )));
        }
        data_bytes += len;
    }
    record.tail = stripe.end();
    record.written_bytes += data_bytes;
    record.stripes += 1;
    txn.put(GROUPS, group_key(id), encode(&record));
    Ok(())
}

pub fn record_stripe<R: KvRead + ?Sized>(
    txn: &mut Txn<'_, R>,
    id: GroupId,
    stripe: StripeLoc,
    writes: &[StripeWrite],
    ctx: &ApplyCtx,
) -> Result<Response, StateError> {
    append_stripe(txn, id, stripe, writes.iter().map(|w| (w.data_offset, w.len)), ctx)?;
    let mut results = Vec::with_capacity(writes.len());
    for w in writes {
        results.push(map_write(txn, id, stripe, w)?);
    }
    Ok(Response::Recorded(results))
}

pub fn relocate<R: KvRead + ?Sized>(
    txn: &mut Txn<'_, R>,
    id: GroupId,
    stripe: StripeLoc,
    moves: &[Relocation],
    ctx: &ApplyCtx,
) -> Result<Response, StateError> {
    append_stripe(txn, id, stripe, moves.iter().map(|m| (m.data_offset, m.old.len)), ctx)?;
    let mut switched = 0;
    for m in moves {
        let new = Extent {
            len: m.old.len,
            group: id,
            stripe,
            data_offset: m.data_offset,
        };
        if extents::switch(txn, m.uid, m.offset, &m.old, &new)? {
            switched += 1;
        }
    }
    Ok(Response::Relocated { switched })
}

/// A sealed group with no live bytes starts releasing.
pub fn release<R: KvRead + ?Sized>(txn: &mut Txn<'_, R>, id: GroupId, ctx: &ApplyCtx) -> Result<Response, StateError> {
    let mut record = group(&*txn, id)?;
    if record.state != GroupState::Sealed || record.live_bytes != 0 {
        return Err(StateError::BadRequest(format!(
            "group {id} is {} with {} live bytes: not releasable",
            record.state.name(),
            record.live_bytes
        )));
    }
    record.state = GroupState::Releasing {
        since_index: ctx.log_index,
    };
    txn.put(GROUPS, group_key(id), encode(&record));
    Ok(Response::Ok)
}

pub fn released<R: KvRead + ?Sized>(txn: &mut Txn<'_, R>, id: GroupId) -> Result<Response, StateError> {
    let mut record = group(&*txn, id)?;
    match record.state {
        GroupState::Releasing { .. } | GroupState::Released => {
            record.state = GroupState::Released;
            txn.put(GROUPS, group_key(id), encode(&record));
            Ok(Response::Ok)
        }
        other => Err(StateError::BadRequest(format!(
            "group {id} is {}, not releasing",
            other.name()
        ))),
    }
}

/// Maps one write of a recorded stripe; a uid without a record (deleted or
/// reaped meanwhile) is refused and its bytes stay dead.
fn map_write<R: KvRead + ?Sized>(
    txn: &mut Txn<'_, R>,
    group: GroupId,
    stripe: StripeLoc,
    w: &StripeWrite,
) -> Result<Result<u64, StateError>, StateError> {
    let Some(mut object) = get::<_, ObjectRecord>(&*txn, OBJECTS, &uid_key(w.uid))? else {
        return Ok(Err(StateError::NoSuchUid));
    };
    let placed = Placed {
        offset: w.offset,
        extent: Extent {
            len: w.len,
            group,
            stripe,
            data_offset: w.data_offset,
        },
    };
    extents::write(txn, w.uid, &placed)?;
    object.size_bytes = object.size_bytes.max(placed.end());
    txn.put(OBJECTS, uid_key(w.uid), encode(&object));
    Ok(Ok(object.size_bytes))
}

/// Idempotent: sealing a sealed group answers its length again.
pub fn seal<R: KvRead + ?Sized>(txn: &mut Txn<'_, R>, id: GroupId) -> Result<Response, StateError> {
    let mut record = group(&*txn, id)?;
    match record.state {
        GroupState::Open { .. } => {
            record.state = GroupState::Sealed;
            txn.put(GROUPS, group_key(id), encode(&record));
            Ok(Response::Sealed { length: record.tail })
        }
        GroupState::Sealed => Ok(Response::Sealed { length: record.tail }),
        other => Err(StateError::GroupNotOpen {
            group: id.0,
            state: other.name().to_string(),
            term: 0,
        }),
    }
}

pub fn reserve_chunks<R: KvRead + ?Sized>(txn: &mut Txn<'_, R>, count: u32) -> Result<Response, StateError> {
    let mut m = meta(&*txn)?;
    let first_seq = m.next_chunk_seq;
    m.next_chunk_seq = first_seq
        .checked_add(count)
        .ok_or_else(|| StateError::BadRequest("chunk ids of this partition exhausted".into()))?;
    put_meta(txn, &m);
    Ok(Response::Chunks { first_seq })
}

pub fn replace_fragment<R: KvRead + ?Sized>(
    txn: &mut Txn<'_, R>,
    id: GroupId,
    index: u32,
    old: ChunkId,
    new: &FragmentLoc,
) -> Result<Response, StateError> {
    let mut record = group(&*txn, id)?;
    if record.state != GroupState::Sealed {
        return Err(StateError::BadRequest(format!(
            "group {id} is {}: only sealed groups are repaired",
            record.state.name()
        )));
    }
    let slot = record
        .placement
        .fragments
        .get_mut(index as usize)
        .ok_or_else(|| StateError::BadRequest(format!("group {id} has no fragment {index}")))?;
    if slot.chunk != old {
        return Err(StateError::StaleProposal(format!(
            "fragment {index} of {id} is {}, not {old}",
            slot.chunk
        )));
    }
    *slot = new.clone();
    txn.put(GROUPS, group_key(id), encode(&record));
    let mut lost = lost_columns(&*txn, id)?;
    lost.0.retain(|column| *column != index);
    put_lost(txn, id, &lost);
    Ok(Response::Ok)
}

/// The columns of group `id` that missed stripes (empty when none did).
pub fn lost_columns<R: KvRead + ?Sized>(view: &R, id: GroupId) -> Result<LostColumns, StateError> {
    Ok(get(view, GROUP_LOST, &group_key(id))?.unwrap_or_default())
}

fn put_lost<R: KvRead + ?Sized>(txn: &mut Txn<'_, R>, id: GroupId, lost: &LostColumns) {
    if lost.0.is_empty() {
        txn.delete(GROUP_LOST, group_key(id));
    } else {
        txn.put(GROUP_LOST, group_key(id), encode(lost));
    }
}

/// Records that `columns` of an open or sealed group miss stripes: the
/// proposer marks them before recording a stripe written without them.
/// Marking is a fact, never refused for being too many (recording is).
pub fn mark_lost<R: KvRead + ?Sized>(
    txn: &mut Txn<'_, R>,
    id: GroupId,
    columns: &[u32],
) -> Result<Response, StateError> {
    let record = group(&*txn, id)?;
    if !matches!(record.state, GroupState::Open { .. } | GroupState::Sealed) {
        return Err(StateError::BadRequest(format!(
            "group {id} is {}: no columns to lose",
            record.state.name()
        )));
    }
    let total = record.placement.fragments.len();
    if let Some(bad) = columns.iter().find(|c| **c as usize >= total) {
        return Err(StateError::BadRequest(format!("group {id} has no column {bad}")));
    }
    let mut lost = lost_columns(&*txn, id)?;
    lost.0.extend_from_slice(columns);
    lost.0.sort_unstable();
    lost.0.dedup();
    assert!(lost.0.len() <= total, "lost columns are distinct columns of the group");
    put_lost(txn, id, &lost);
    Ok(Response::Ok)
}

/// Every group with lost columns.
pub fn all_lost<R: KvRead + ?Sized>(view: &R) -> Result<Vec<(GroupId, LostColumns)>, StateError> {
    let mut out = Vec::new();
    for (key, value) in view.scan(GROUP_LOST, &[], None, usize::MAX)? {
        let bytes: [u8; 8] = key
            .as_slice()
            .try_into()
            .map_err(|_| super::records::corrupt(GROUP_LOST, "group key length"))?;
        out.push((GroupId(u64::from_be_bytes(bytes)), decode(GROUP_LOST, &value)?));
    }
    Ok(out)
}

pub fn all<R: KvRead + ?Sized>(view: &R) -> Result<Vec<(GroupId, GroupRecord)>, StateError> {
    let mut out = Vec::new();
    for (_, value) in view.scan(GROUPS, &[], None, usize::MAX)? {
        let record: GroupRecord = decode(GROUPS, &value)?;
        out.push((record.placement.id, record));
    }
    Ok(out)
}
