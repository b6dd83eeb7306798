//! A uid's extent map: non-overlapping logical ranges, each mapped into one
//! stripe of one chunk group. Writing a range shadows whatever it overlaps
//! (the overlapped extents are cut, their groups lose the live bytes);
//! trimming cuts without writing. Every change to an extent keeps its
//! group's `live_bytes` exact, which compaction relies on.

use tessera_raft::kv::{KvRead, Txn};

use super::records::{
    decode, decode_extent_key, decode_group_extent_key, encode, extent_key, get, group_extent_key, group_key, Extent,
    GroupRecord, EXTENTS, EXTENT_BYTES_MAX, GROUPS, GROUP_EXTENTS,
};
use super::StateError;
use crate::placement::GroupId;

/// One extent of a uid with its logical offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placed {
    pub offset: u64,
    pub extent: Extent,
}

impl Placed {
    pub fn end(&self) -> u64 {
        self.offset + self.extent.len
    }
}

/// The extents of `uid` overlapping `[offset, offset + len)`, in offset
/// order (untrimmed: a returned extent may start before or end after).
pub fn overlapping<R: KvRead + ?Sized>(view: &R, uid: u128, offset: u64, len: u64) -> Result<Vec<Placed>, StateError> {
    let end = offset.saturating_add(len);
    let window_start = offset.saturating_sub(EXTENT_BYTES_MAX);
    let pairs = view.scan(
        EXTENTS,
        &extent_key(uid, window_start),
        Some(&extent_key(uid, end)),
        usize::MAX,
    )?;
    let mut out = Vec::new();
    for (key, value) in pairs {
        let (_, at) = decode_extent_key(&key)?;
        let placed = Placed {
            offset: at,
            extent: decode(EXTENTS, &value)?,
        };
        if placed.end() > offset {
            out.push(placed);
        }
    }
    Ok(out)
}

/// Every extent of `uid`, in offset order.
pub fn all<R: KvRead + ?Sized>(view: &R, uid: u128) -> Result<Vec<Placed>, StateError> {
    overlapping(view, uid, 0, u64::MAX)
}

/// Adds `delta` (may be negative) to the live bytes of `group`.
fn adjust_live<R: KvRead + ?Sized>(txn: &mut Txn<'_, R>, group: GroupId, delta: i64) -> Result<(), StateError> {
    let key = group_key(group);
    let mut record: GroupRecord = get(&*txn, GROUPS, &key)?.ok_or(StateError::NoSuchGroup(group.0))?;
    let live = i128::from(record.live_bytes) + i128::from(delta);
    if live < 0 || live > i128::from(record.written_bytes) {
        return Err(StateError::Invariant(format!(
            "group {group}: live bytes {live} outside 0..={}",
            record.written_bytes
        )));
    }
    record.live_bytes = live as u64;
    txn.put(GROUPS, key, encode(&record));
    Ok(())
}

fn put_extent<R: KvRead + ?Sized>(txn: &mut Txn<'_, R>, uid: u128, placed: &Placed) {
    debug_assert!(placed.extent.len > 0 && placed.extent.len <= EXTENT_BYTES_MAX);
    txn.put(EXTENTS, extent_key(uid, placed.offset), encode(&placed.extent));
    txn.put(
        GROUP_EXTENTS,
        group_extent_key(placed.extent.group, uid, placed.offset),
        Vec::new(),
    );
}

fn delete_extent<R: KvRead + ?Sized>(txn: &mut Txn<'_, R>, uid: u128, placed: &Placed) {
    txn.delete(EXTENTS, extent_key(uid, placed.offset));
    txn.delete(GROUP_EXTENTS, group_extent_key(placed.extent.group, uid, placed.offset));
}

/// Up to `limit` extents in `group`, in (uid, offset) order, starting after
/// `after` (exclusive).
pub fn in_group<R: KvRead + ?Sized>(
    view: &R,
    group: GroupId,
    after: Option<(u128, u64)>,
    limit: usize,
) -> Result<Vec<(u128, Placed)>, StateError> {
    let start = match after {
        Some((uid, offset)) => {
            let mut key = group_extent_key(group, uid, offset);
            key.push(0); // just past it
            key
        }
        None => group.0.to_be_bytes().to_vec(),
    };
    let end = group_key(GroupId(group.0 + 1));
    let mut out = Vec::new();
    for (key, _) in view.scan(GROUP_EXTENTS, &start, Some(&end), limit)? {
        let (uid, offset) = decode_group_extent_key(&key)?;
        let extent: Extent = get(view, EXTENTS, &extent_key(uid, offset))?
            .ok_or_else(|| StateError::Invariant(format!("group index names a missing extent {uid:x}:{offset}")))?;
        out.push((uid, Placed { offset, extent }));
    }
    Ok(out)
}

/// Removes `[offset, offset + len)` from the map of `uid`, keeping the
/// parts of cut extents outside it. Returns the bytes unmapped.
pub fn cut<R: KvRead + ?Sized>(txn: &mut Txn<'_, R>, uid: u128, offset: u64, len: u64) -> Result<u64, StateError> {
    let end = offset.saturating_add(len);
    let mut unmapped = 0;
    for old in overlapping(&*txn, uid, offset, len)? {
        delete_extent(txn, uid, &old);
        if old.offset < offset {
            let mut head = old;
            head.extent.len = offset - old.offset;
            put_extent(txn, uid, &head);
        }
        if old.end() > end {
            let skip = end - old.offset;
            let mut tail = old;
            tail.offset = end;
            tail.extent.len = old.end() - end;
            tail.extent.data_offset = old.extent.data_offset + skip as u32;
            put_extent(txn, uid, &tail);
        }
        let removed = old.end().min(end) - old.offset.max(offset);
        adjust_live(txn, old.extent.group, -(removed as i64))?;
        unmapped += removed;
    }
    Ok(unmapped)
}

/// Maps `[placed.offset, placed.end())` of `uid` to `placed.extent`,
/// shadowing what was there.
pub fn write<R: KvRead + ?Sized>(txn: &mut Txn<'_, R>, uid: u128, placed: &Placed) -> Result<(), StateError> {
    if placed.extent.len == 0 || placed.extent.len > EXTENT_BYTES_MAX {
        return Err(StateError::Invariant(format!("extent of {} bytes", placed.extent.len)));
    }
    cut(txn, uid, placed.offset, placed.extent.len)?;
    put_extent(txn, uid, placed);
    adjust_live(txn, placed.extent.group, placed.extent.len as i64)
}

/// Drops every extent of `uid`; returns the bytes unmapped.
pub fn drop_all<R: KvRead + ?Sized>(txn: &mut Txn<'_, R>, uid: u128) -> Result<u64, StateError> {
    cut(txn, uid, 0, u64::MAX)
}

/// Switches the extent at `offset` of `uid` to `new` only if it is still
/// exactly `old` (compaction's conditional switch: a concurrent overwrite
/// or delete wins). Returns whether it switched.
pub fn switch<R: KvRead + ?Sized>(
    txn: &mut Txn<'_, R>,
    uid: u128,
    offset: u64,
    old: &Extent,
    new: &Extent,
) -> Result<bool, StateError> {
    let key = extent_key(uid, offset);
    let current: Option<Extent> = get(&*txn, EXTENTS, &key)?;
    if current.as_ref() != Some(old) || old.len != new.len {
        return Ok(false);
    }
    delete_extent(txn, uid, &Placed { offset, extent: *old });
    put_extent(txn, uid, &Placed { offset, extent: *new });
    adjust_live(txn, old.group, -(old.len as i64))?;
    adjust_live(txn, new.group, new.len as i64)?;
    Ok(true)
}
