//! Wire API of the name servers for gateways and object servers (DESIGN §4):
//! buckets, guard entries, name commits, reads, deletes and the reap check.
//! Independent of the name servers' internal Raft commands.
//!
//! Every method answers `Result<T, NsError>`. [`NsError::NotLeader`] means
//! the call was not executed (retry at the leader); [`NsError::Unavailable`]
//! means the outcome is unknown. Guard entries live in the leader's memory
//! only: `ns.create_guard` and `ns.commit_name` are never forwarded by a
//! follower, they answer `NotLeader` with the leader's address instead.

use rkyv::{Archive, Deserialize, Serialize};

use crate::rpc::rpc_method;

mod access;
mod buckets;
mod multipart;
pub mod system_meta;

pub use access::*;
pub use buckets::*;
pub use multipart::*;

/// How a bucket's objects are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub enum StoragePolicy {
    /// Erasure coded: `k` data and `m` parity fragments.
    Ec { k: u8, m: u8 },
    /// `n` full copies.
    Replicated { n: u8 },
}

impl std::str::FromStr for StoragePolicy {
    type Err = String;

    /// `ec:K:M` (erasure coded) or `rep:N` (replicated).
    fn from_str(text: &str) -> Result<Self, String> {
        let number = |s: &str| {
            s.parse::<u8>()
                .map_err(|_| format!("{s:?} in policy {text:?} is not a number"))
        };
        match text.split(':').collect::<Vec<_>>().as_slice() {
            ["ec", k, m] => Ok(StoragePolicy::Ec {
                k: number(k)?,
                m: number(m)?,
            }),
            ["rep", n] => Ok(StoragePolicy::Replicated { n: number(n)? }),
            _ => Err(format!("policy {text:?}: expected ec:K:M or rep:N")),
        }
    }
}

impl std::fmt::Display for StoragePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoragePolicy::Ec { k, m } => write!(f, "ec:{k}:{m}"),
            StoragePolicy::Replicated { n } => write!(f, "rep:{n}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct CreateBucketReq {
    pub name: String,
    pub owner: String,
    pub policy: StoragePolicy,
}

/// DESIGN §4 step 2: `uid` may become the value of (bucket, key) for `ttl_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct CreateGuardReq {
    pub bucket: String,
    pub key: String,
    pub uid: u128,
    pub ttl_ms: u64,
}

/// A condition a commit places on the name's current version.
#[derive(Clone, Debug, Default, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub enum CommitCondition {
    #[default]
    None,
    /// Create only: fails if a current version exists (S3 If-None-Match: *).
    IfNoneMatch,
    /// Fails unless the current version has this etag (S3 If-Match).
    IfMatch(String),
}

/// DESIGN §4 step 5: make `uid` the current version of (bucket, key).
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct CommitNameReq {
    pub bucket: String,
    pub key: String,
    pub uid: u128,
    pub size: u64,
    pub etag: String,
    pub content_type: Option<String>,
    pub user_meta: Vec<(String, String)>,
    /// Stored HTTP headers and checksums ([`system_meta`] names them).
    pub system_meta: Vec<(String, String)>,
    /// The object-server partition of `uid`.
    pub partition: u32,
    pub condition: CommitCondition,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct CommitOk {
    pub version_id: String,
}

/// Names one object: `ns.get_object`, `ns.delete_name`.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct NameReq {
    pub bucket: String,
    pub key: String,
}

/// The current version of a name.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct ObjectInfo {
    pub uid: u128,
    pub version_id: String,
    pub size: u64,
    pub etag: String,
    pub content_type: Option<String>,
    pub user_meta: Vec<(String, String)>,
    /// The committing leader's wall clock (metadata only).
    pub mtime_ms: u64,
    pub partition: u32,
    /// Stored HTTP headers and checksums ([`system_meta`] names them).
    pub system_meta: Vec<(String, String)>,
    /// The parts of a multipart object, in part order (empty otherwise):
    /// the object's bytes are their bytes, concatenated; `uid` holds none.
    pub parts: Vec<PartInfo>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct DeleteOk {
    /// Whether a current version existed.
    pub existed: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ReapReq {
    pub uid: u128,
}

/// The answer of `ns.reap` (DESIGN §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub enum ReapOutcome {
    /// A name points at the uid: keep the data.
    Referenced,
    /// Recorded as reaped: no commit can name it any more; free the data.
    Free,
}

/// Typed refusals of the name servers; callers branch on these.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub enum NsError {
    /// Not executed: retry at `leader_addr` (when known).
    #[error("not the leader; leader at {leader_addr:?}")]
    NotLeader { leader_addr: Option<String> },
    #[error("no guard entry for this name and uid")]
    NoGuard,
    #[error("the guard entry expired")]
    GuardExpired,
    #[error("too many guard entries")]
    TooManyGuards,
    #[error("the uid was reaped: its data may be freed")]
    UidReaped,
    #[error("no such bucket")]
    NoSuchBucket,
    #[error("precondition failed")]
    PreconditionFailed,
    #[error("invalid object key")]
    InvalidKey,
    #[error("bucket already exists")]
    BucketExists,
    #[error("invalid bucket name: {0}")]
    InvalidBucketName(String),
    #[error("invalid storage policy")]
    InvalidPolicy,
    /// No quorum, timeout, or the leader changed mid-call: for a write the
    /// outcome is UNKNOWN.
    #[error("unavailable (outcome unknown): {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// Raft refused the membership change (e.g. one already in progress,
    /// the node is not a member, or already a voter).
    #[error("membership change rejected: {0}")]
    MembershipRejected(String),
    /// Removing the only voter would leave the group without a quorum.
    #[error("refusing to remove the last voter")]
    LastVoter,
    #[error("no such access key")]
    NoSuchAccessKey,
    #[error("access key already exists")]
    AccessKeyExists,
    #[error("invalid access key id")]
    InvalidAccessKeyId,
    #[error("bucket not empty")]
    BucketNotEmpty,
    #[error("no such upload")]
    NoSuchUpload,
    #[error("part number {0} outside 1..=10000")]
    InvalidPartNumber(u32),
    #[error("part {0} missing or its etag differs")]
    InvalidPart(u32),
    #[error("parts not in ascending order")]
    InvalidPartOrder,
    #[error("part {0} is smaller than 5 MiB and not the last")]
    EntityTooSmall(u32),
    #[error("no parts given")]
    EmptyPartList,
}

/// One member of the name servers' Raft group.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct Member {
    pub id: u64,
    pub addr: String,
    /// Highest log index the leader knows this member has (the leader's
    /// own last log index for the leader); `None` if unknown.
    pub matched: Option<u64>,
}

/// The answer of `ns.admin_members`, as the leader sees it.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct MembersInfo {
    pub leader: Option<u64>,
    pub term: u64,
    pub voters: Vec<Member>,
    pub learners: Vec<Member>,
    /// The leader's last log index and last applied index.
    pub last_log: Option<u64>,
    pub applied: Option<u64>,
}

/// `ns.admin_members` takes no arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct MembersReq;

/// Adds node `id` at `addr` as a learner, waits until it has caught up,
/// then, if `promote`, makes it a voter.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct AddMemberReq {
    pub id: u64,
    pub addr: String,
    pub promote: bool,
}

/// Removes voter or learner `id` from the group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct RemoveMemberReq {
    pub id: u64,
}

/// A node's role in the cluster map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub enum NodeRole {
    NameServer,
    ObjectServer,
    ChunkServer,
    Gateway,
}

/// One node of the cluster map, with liveness as the leader judges it.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct NodeInfo {
    pub id: u64,
    pub role: NodeRole,
    pub addr: String,
    pub zone: String,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub healthy: bool,
    /// Time since the last heartbeat on the leader's clock.
    pub heartbeat_age_ms: u64,
    /// Heard from within the leader's liveness timeout.
    pub alive: bool,
    /// Chunks this (chunk) server reported corrupt in its last heartbeat.
    pub corrupt_chunks: Vec<u64>,
}

/// A permission of an access key on a bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub enum Permission {
    Read,
    Write,
    /// Implies read and write.
    Owner,
}

/// `ns.key_create`: a new access key for `owner`; the leader draws the id
/// and the secret.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct KeyCreateReq {
    pub owner: String,
}

/// A new access key, the only time its secret travels.
#[derive(Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct NewAccessKey {
    pub key_id: String,
    pub secret: String,
    pub owner: String,
}

impl std::fmt::Debug for NewAccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "NewAccessKey {{ key_id: {:?}, owner: {:?}, secret: <redacted> }}",
            self.key_id, self.owner
        )
    }
}

/// `ns.key_list`: keys of `owner`, or all.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct KeyListReq {
    pub owner: Option<String>,
}

/// An access key as listed (no secret).
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct AccessKeyInfo {
    pub key_id: String,
    pub owner: String,
    pub created_ms: u64,
}

/// `ns.key_revoke`: deletes a key and all its grants.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct KeyRevokeReq {
    pub key_id: String,
}

/// `ns.bucket_allow` / `ns.bucket_disallow`.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct GrantReq {
    pub key_id: String,
    pub bucket: String,
    pub permission: Permission,
}

/// An object server announcing itself to the cluster map.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ObjServerHeartbeat {
    pub node: u64,
    /// Address other nodes reach its RPC on.
    pub rpc_addr: String,
    pub zone: String,
}

/// `ns.cluster_map` takes no arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ClusterMapReq;

/// The replicas of one object-server partition.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct PartitionReplicas {
    pub partition: u32,
    /// Object-server node ids; the first bootstraps the group while
    /// `generation` is 0.
    pub nodes: Vec<u64>,
    /// Changes of `nodes` since the partition was first placed.
    pub generation: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct ClusterMap {
    pub nodes: Vec<NodeInfo>,
    pub partitions: Vec<PartitionReplicas>,
}

/// `ns.log_position`: asks for a birth stamp for new uids.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct LogPositionReq;

// A retry after an unknown outcome may answer BucketExists for a bucket
// the first attempt created: not marked idempotent.
rpc_method!(CreateBucket, "ns.create_bucket", false, CreateBucketReq => Result<(), NsError>);
// Creating a guard again renews it: idempotent.
rpc_method!(CreateGuard, "ns.create_guard", true, CreateGuardReq => Result<(), NsError>);
// The first attempt consumes the guard; never retried blindly.
rpc_method!(CommitName, "ns.commit_name", false, CommitNameReq => Result<CommitOk, NsError>);
rpc_method!(GetObject, "ns.get_object", true, NameReq => Result<Option<ObjectInfo>, NsError>);
// With versioning a delete adds a delete marker: not idempotent.
rpc_method!(DeleteName, "ns.delete_name", false, NameReq => Result<DeleteOk, NsError>);
// Idempotent: once `Free`, the uid is recorded as reaped and no commit can
// ever reference it, so every later reap answers `Free` too; a `Referenced`
// answer followed by `Free` on retry reflects a delete in between, and the
// caller acts on the latest answer, which is the log's truth at its position.
rpc_method!(Reap, "ns.reap", true, ReapReq => Result<ReapOutcome, NsError>);
// The answering node's last applied log index: committed, so a uid minted
// after the answer may carry it as its birth (`ids::mint_uid`). Any node
// answers; a stale answer is safe (the uid is only refused sooner).
rpc_method!(LogPosition, "ns.log_position", true, LogPositionReq => Result<u64, NsError>);
// Access keys and grants (operators; secrets never logged).
rpc_method!(KeyCreate, "ns.key_create", false, KeyCreateReq => Result<NewAccessKey, NsError>);
rpc_method!(KeyList, "ns.key_list", true, KeyListReq => Result<Vec<AccessKeyInfo>, NsError>);
// A retry after a revoke answers NoSuchAccessKey.
rpc_method!(KeyRevoke, "ns.key_revoke", false, KeyRevokeReq => Result<(), NsError>);
// Granting twice leaves one grant.
rpc_method!(BucketAllow, "ns.bucket_allow", true, GrantReq => Result<(), NsError>);
rpc_method!(BucketDisallow, "ns.bucket_disallow", true, GrantReq => Result<(), NsError>);
// Recorded by the leader (a follower forwards it); a lost one is repaired
// by the next.
rpc_method!(ObjServerBeat, "ns.objserver_heartbeat", true, ObjServerHeartbeat => Result<(), NsError>);
// A linearizable read of the cluster map, liveness judged by the leader.
rpc_method!(GetClusterMap, "ns.cluster_map", true, ClusterMapReq => Result<ClusterMap, NsError>);
// Admin (served by the leader only): membership of the Raft group.
rpc_method!(AdminMembers, "ns.admin_members", true, MembersReq => Result<MembersInfo, NsError>);
// A retry after a promotion may answer MembershipRejected (already a voter).
rpc_method!(AdminAdd, "ns.admin_add", false, AddMemberReq => Result<(), NsError>);
// A retry after a removal answers MembershipRejected (not a member).
rpc_method!(AdminRemove, "ns.admin_remove", false, RemoveMemberReq => Result<(), NsError>);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Wire;

    #[test]
    fn commit_request_and_errors_round_trip() {
        let req = CommitNameReq {
            bucket: "b".into(),
            key: "k".into(),
            uid: u128::MAX - 5,
            size: 42,
            etag: "\"e\"".into(),
            content_type: Some("text/plain".into()),
            user_meta: vec![("a".into(), "1".into())],
            system_meta: vec![("cache-control".into(), "no-cache".into())],
            partition: 3,
            condition: CommitCondition::IfMatch("x".into()),
        };
        let bytes = req.to_wire().expect("encode");
        assert_eq!(CommitNameReq::from_wire(&bytes).expect("decode"), req);
        let answer: Result<CommitOk, NsError> = Err(NsError::NotLeader {
            leader_addr: Some("127.0.0.1:1".into()),
        });
        let bytes = answer.to_wire().expect("encode");
        assert_eq!(Result::<CommitOk, NsError>::from_wire(&bytes).expect("decode"), answer);
    }

    #[test]
    fn membership_answers_round_trip() {
        let member = |id| Member {
            id,
            addr: format!("127.0.0.1:{id}"),
            matched: Some(7),
        };
        let answer: Result<MembersInfo, NsError> = Ok(MembersInfo {
            leader: Some(1),
            term: 3,
            voters: vec![member(1), member(2)],
            learners: vec![member(4)],
            last_log: Some(7),
            applied: None,
        });
        let bytes = answer.to_wire().expect("encode");
        assert_eq!(
            Result::<MembersInfo, NsError>::from_wire(&bytes).expect("decode"),
            answer
        );
        for refusal in [NsError::LastVoter, NsError::MembershipRejected("in progress".into())] {
            let answer: Result<(), NsError> = Err(refusal);
            let bytes = answer.to_wire().expect("encode");
            assert_eq!(Result::<(), NsError>::from_wire(&bytes).expect("decode"), answer);
        }
    }

    #[test]
    fn policies_parse_and_print() {
        for text in ["ec:4:2", "rep:3"] {
            let policy: StoragePolicy = text.parse().expect("parse");
            assert_eq!(policy.to_string(), text);
        }
        for bad in ["ec:4", "rep:x", "raid:5", "ec:300:1"] {
            assert!(bad.parse::<StoragePolicy>().is_err(), "{bad}");
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(CommitNameReq::from_wire(&[0xff; 7]).is_err());
        assert!(Result::<Option<ObjectInfo>, NsError>::from_wire(&[]).is_err());
    }
}
