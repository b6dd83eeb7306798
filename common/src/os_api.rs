//! Wire API of the object servers for gateways and name servers (DESIGN §4,
//! §5): GC entries (`open_write` / `confirm`), data (`write`, `read`,
//! `trim`), deletion, and partition status for operators.
//!
//! Every request names the partition of its uid ([`partition_of`]); a
//! server that does not lead that partition answers
//! [`OsError::NotLeader`] with the leader's address when it knows it.
//! Bulk data travels as the RPC's raw bulk payload with a crc32c in the
//! header, checked on both ends.

use rkyv::{Archive, Deserialize, Serialize};

use crate::ns_api::StoragePolicy;
use crate::rpc::rpc_method;

/// Largest payload of one `os.write` / `os.read`; callers split larger
/// ranges.
pub const IO_BYTES_MAX: u64 = 8 << 20;

/// The partition owning `uid` among `partitions` (> 0) partitions: uids are
/// random, so their low bits spread evenly.
pub fn partition_of(uid: u128, partitions: u32) -> u32 {
    assert!(partitions > 0, "a cluster has at least one partition");
    (uid % u128::from(partitions)) as u32
}

/// DESIGN §4 step 3: create the GC entry of `uid` and reserve
/// `size_hint_bytes`, in one Raft entry. The data is garbage unless a name
/// points at it once the entry's `ttl_ms` has passed.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct OpenWriteReq {
    pub partition: u32,
    pub uid: u128,
    pub size_hint_bytes: u64,
    pub policy: StoragePolicy,
    pub ttl_ms: u64,
}

/// Writes the bulk payload at `offset` of `uid` (a newer write shadows
/// older bytes of the same range). Durable on every fragment and recorded
/// in the partition's Raft log when `Ok`.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct WriteReq {
    pub partition: u32,
    pub uid: u128,
    pub offset: u64,
    /// crc32c of the bulk payload.
    pub crc32c: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct WriteOk {
    /// The uid's logical size after this write (highest byte written + 1).
    pub size_bytes: u64,
}

/// Names one uid: `os.confirm`, `os.delete`, `os.stat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct UidReq {
    pub partition: u32,
    pub uid: u128,
}

/// A byte range of one uid: `os.read` (at most [`IO_BYTES_MAX`]), `os.trim`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct RangeReq {
    pub partition: u32,
    pub uid: u128,
    pub offset: u64,
    pub len: u64,
}

/// Header of a read's answer; the bytes are the bulk payload. Ranges never
/// written (holes, or past the end) read as zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct ReadOk {
    pub len: u64,
    pub crc32c: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct UidStat {
    pub size_bytes: u64,
    /// Bytes of the uid that are mapped to stored data.
    pub mapped_bytes: u64,
    pub extents: u64,
    /// Whether the GC entry still exists (not yet confirmed).
    pub unconfirmed: bool,
}

/// `os.partition_status`: which partition to describe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct PartitionReq {
    pub partition: u32,
}

/// One chunk group of a partition's data log, as an operator sees it.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct GroupStatus {
    pub id: u64,
    /// "open", "sealed", "releasing" or "released".
    pub state: String,
    pub fragments: u32,
    /// Stripe data bytes appended (excluding parity).
    pub written_bytes: u64,
    /// Stripes appended (concurrent small writes share one).
    pub stripes: u64,
    /// Bytes still referenced by some extent.
    pub live_bytes: u64,
    /// Fragments on chunk servers the cluster map does not list as live.
    pub lost_fragments: u32,
    /// Bytes per fragment (the chunk length).
    pub fragment_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct PartitionStatus {
    pub partition: u32,
    pub leader: Option<u64>,
    pub epoch: u64,
    pub objects: u64,
    pub gc_entries: u64,
    pub reserved_bytes: u64,
    pub groups: Vec<GroupStatus>,
    /// Fragment bytes to rebuild (fragments on chunk servers not live).
    pub repair_pending_bytes: u64,
    /// The partition's repair rate limit (for an ETA).
    pub repair_bytes_per_sec: u64,
}

/// Typed refusals of the object servers; callers branch on these.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub enum OsError {
    /// Not executed: retry at `leader_addr` (when known).
    #[error("not the leader of this partition; leader at {leader_addr:?}")]
    NotLeader { leader_addr: Option<String> },
    #[error("partition {0} is not hosted here")]
    NoSuchPartition(u32),
    /// No GC entry and no data: never opened, or already deleted or reaped.
    #[error("no such uid")]
    NoSuchUid,
    #[error("not enough space: {0}")]
    NoSpace(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The payload does not match its crc32c.
    #[error("payload checksum mismatch")]
    Checksum,
    /// Fewer than k fragments of a stripe could be read intact.
    #[error("data unavailable: {0}")]
    DataUnavailable(String),
    /// No quorum, timeout, or leader change mid-call: for a write the
    /// outcome is UNKNOWN.
    #[error("unavailable (outcome unknown): {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

// Opening again with the same uid renews the entry: idempotent.
rpc_method!(OpenWrite, "os.open_write", true, OpenWriteReq => Result<(), OsError>);
// The same bytes at the same offset shadow themselves: idempotent.
rpc_method!(Write, "os.write", true, WriteReq => Result<WriteOk, OsError>);
rpc_method!(Confirm, "os.confirm", true, UidReq => Result<(), OsError>);
rpc_method!(Read, "os.read", true, RangeReq => Result<ReadOk, OsError>);
rpc_method!(Trim, "os.trim", true, RangeReq => Result<(), OsError>);
rpc_method!(Delete, "os.delete", true, UidReq => Result<(), OsError>);
rpc_method!(Stat, "os.stat", true, UidReq => Result<UidStat, OsError>);
rpc_method!(Status, "os.partition_status", true, PartitionReq => Result<PartitionStatus, OsError>);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Wire;

    #[test]
    fn partitions_spread_and_stay_in_range() {
        let mut counts = [0u32; 4];
        for uid in 0..4_000u128 {
            let p = partition_of(uid.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835), 4);
            counts[p as usize] += 1;
        }
        assert!(counts.iter().all(|c| *c > 800), "{counts:?}");
        assert_eq!(partition_of(u128::MAX, 1), 0);
    }

    #[test]
    fn requests_and_errors_round_trip() {
        let req = OpenWriteReq {
            partition: 3,
            uid: u128::MAX - 1,
            size_hint_bytes: 1 << 30,
            policy: StoragePolicy::Ec { k: 4, m: 2 },
            ttl_ms: 900_000,
        };
        let bytes = req.to_wire().expect("encode");
        assert_eq!(OpenWriteReq::from_wire(&bytes).expect("decode"), req);
        let answer: Result<ReadOk, OsError> = Err(OsError::NotLeader {
            leader_addr: Some("127.0.0.1:7".into()),
        });
        let bytes = answer.to_wire().expect("encode");
        assert_eq!(Result::<ReadOk, OsError>::from_wire(&bytes).expect("decode"), answer);
        assert!(RangeReq::from_wire(&[0xff; 3]).is_err());
    }
}
