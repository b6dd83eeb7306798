//! What a partition stores, table by table, and the byte encodings of its
//! keys and values. Values are postcard; keys are big-endian so RocksDB's
//! byte order is the order the partition iterates in (uids, then offsets).

use serde::{Deserialize, Serialize};
use tessera_raft::kv::{self, KvRead, Table};

use super::StateError;
use crate::placement::{GroupId, GroupPlacement, Redundancy, StripeLoc};

/// uid → [`ObjectRecord`]: every uid with a GC entry or data.
pub const OBJECTS: Table = "os_objects";
/// uid → [`GcEntry`]: uids whose data is garbage unless a name points at
/// them (DESIGN §4); an index of the unconfirmed objects.
pub const GC: Table = "os_gc";
/// uid ++ logical offset → [`Extent`]; extents of one uid never overlap.
pub const EXTENTS: Table = "os_extents";
/// group id ++ uid ++ logical offset → empty: which extents live in a
/// group (compaction's index, kept in step with [`EXTENTS`]).
pub const GROUP_EXTENTS: Table = "os_group_extents";
/// group id → [`GroupRecord`]: the data log's chunk groups.
pub const GROUPS: Table = "os_groups";
/// Singleton counters ([`Meta`]).
pub const META: Table = "os_meta";
/// group id → [`LostColumns`]: columns of a group that do not hold every
/// recorded stripe (written degraded, or opened vacant); absent when none.
pub const GROUP_LOST: Table = "os_group_lost";

pub const TABLES: &[Table] = &[OBJECTS, GC, EXTENTS, GROUP_EXTENTS, GROUPS, META, GROUP_LOST];

const META_KEY: &[u8] = b"meta";

/// Upper bound of one extent's length: an extent lies within one stripe,
/// and a stripe carries at most this much data. Lookups rely on it to find
/// the extent covering an offset by scanning a bounded window before it.
pub const EXTENT_BYTES_MAX: u64 = 4 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRecord {
    pub redundancy: Redundancy,
    /// Highest byte written + 1.
    pub size_bytes: u64,
    /// Space reserved by `open_write`, released by confirm or delete.
    pub reserved_bytes: u64,
}

/// A GC entry: the uid's data is freed once `ttl_ms` has passed on the
/// partition leader's monotonic clock, unless the name servers answer
/// "referenced" to `reap`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcEntry {
    pub ttl_ms: u64,
    /// Log index of the `open_write` that created or renewed it.
    pub opened_index: u64,
}

/// A logical range of a uid mapped to stored bytes: `len` bytes of the
/// stripe's data starting at `data_offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    pub len: u64,
    pub group: GroupId,
    pub stripe: StripeLoc,
    pub data_offset: u32,
}

/// Life of a chunk group. Only the leader that opened a group appends to
/// it; every other state is terminal for appends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupState {
    /// Accepting stripes from the leader of term `epoch`.
    Open { epoch: u64 },
    /// No more stripes; its chunks are sealed at the group's `tail`.
    Sealed,
    /// Compacted: no extent points into it; its chunks are deleted once the
    /// grace period after `since_index` has passed, so reads in flight end.
    Releasing { since_index: u64 },
    /// Chunks deleted; the record stays as a tombstone for status.
    Released,
}

impl GroupState {
    pub fn name(&self) -> &'static str {
        match self {
            GroupState::Open { .. } => "open",
            GroupState::Sealed => "sealed",
            GroupState::Releasing { .. } => "releasing",
            GroupState::Released => "released",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub placement: GroupPlacement,
    pub state: GroupState,
    /// Chunk offset just past the last recorded stripe.
    pub tail: u64,
    /// Data bytes recorded in stripes (parity and padding excluded).
    pub written_bytes: u64,
    /// Stripes recorded.
    pub stripes: u64,
    /// Bytes still referenced by some extent (`<= written_bytes`).
    pub live_bytes: u64,
}

/// Fragment columns of a group that missed stripes: a degraded write was
/// recorded without them, or the group was opened with them vacant. Reads
/// decode around them; repair rebuilds each whole column elsewhere and
/// drops it from the set. Sorted, distinct, each below the group's
/// fragment count, and never more than its redundancy allows writes with
/// (`Redundancy::degraded_columns_max`) while stripes are recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostColumns(pub Vec<u32>);

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub next_group: u64,
    /// Sequence of the next chunk id this partition hands out.
    pub next_chunk_seq: u32,
    pub reserved_bytes: u64,
    /// Uids with a record.
    pub objects: u64,
}

pub fn uid_key(uid: u128) -> Vec<u8> {
    uid.to_be_bytes().to_vec()
}

pub fn extent_key(uid: u128, offset: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(24);
    key.extend_from_slice(&uid.to_be_bytes());
    key.extend_from_slice(&offset.to_be_bytes());
    key
}

pub fn group_extent_key(group: GroupId, uid: u128, offset: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(32);
    key.extend_from_slice(&group.0.to_be_bytes());
    key.extend_from_slice(&extent_key(uid, offset));
    key
}

/// The uid and offset of a group-extent key.
pub fn decode_group_extent_key(key: &[u8]) -> Result<(u128, u64), StateError> {
    if key.len() != 32 {
        return Err(corrupt(GROUP_EXTENTS, "key length"));
    }
    decode_extent_key(&key[8..])
}

pub fn group_key(group: GroupId) -> Vec<u8> {
    group.0.to_be_bytes().to_vec()
}

/// The uid and offset of an extent key.
pub fn decode_extent_key(key: &[u8]) -> Result<(u128, u64), StateError> {
    let bytes: [u8; 24] = key.try_into().map_err(|_| corrupt(EXTENTS, "extent key length"))?;
    let (uid, offset) = bytes.split_at(16);
    let uid = u128::from_be_bytes(uid.try_into().map_err(|_| corrupt(EXTENTS, "uid"))?);
    let offset = u64::from_be_bytes(offset.try_into().map_err(|_| corrupt(EXTENTS, "offset"))?);
    Ok((uid, offset))
}

pub fn decode_uid_key(table: Table, key: &[u8]) -> Result<u128, StateError> {
    let bytes: [u8; 16] = key.try_into().map_err(|_| corrupt(table, "uid key length"))?;
    Ok(u128::from_be_bytes(bytes))
}

pub use tessera_raft::kv::encode;

pub fn decode<T: for<'de> Deserialize<'de>>(table: Table, bytes: &[u8]) -> Result<T, StateError> {
    Ok(kv::decode(table, bytes)?)
}

pub fn corrupt(table: Table, detail: &str) -> StateError {
    StateError::Corrupt {
        table: table.to_string(),
        detail: detail.to_string(),
    }
}

pub fn get<R: KvRead + ?Sized, T: for<'de> Deserialize<'de>>(
    view: &R,
    table: Table,
    key: &[u8],
) -> Result<Option<T>, StateError> {
    Ok(kv::get(view, table, key)?)
}

pub fn meta<R: KvRead + ?Sized>(view: &R) -> Result<Meta, StateError> {
    Ok(get(view, META, META_KEY)?.unwrap_or_default())
}

pub fn put_meta<R: KvRead + ?Sized>(txn: &mut tessera_raft::kv::Txn<'_, R>, meta: &Meta) {
    txn.put(META, META_KEY.to_vec(), encode(meta));
}
