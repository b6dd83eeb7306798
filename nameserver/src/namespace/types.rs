//! The namespace's commands, queries, answers, records and typed refusals.
//! All of them travel (serde) between proposer and state machine.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A secret that never shows in `Debug` output (logs).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// How a bucket's objects are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoragePolicy {
    /// Erasure coded: `k` data and `m` parity fragments.
    Ec { k: u8, m: u8 },
    /// `n` full copies.
    Replicated { n: u8 },
}

impl Default for StoragePolicy {
    /// DESIGN §11: 4+2.
    fn default() -> Self {
        StoragePolicy::Ec { k: 4, m: 2 }
    }
}

/// A permission of an access key on a bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Permission {
    Read,
    Write,
    /// Implies read and write.
    Owner,
}

/// A condition a commit places on the name's current version.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommitCondition {
    #[default]
    None,
    /// Create only: fails if a current version (not a delete marker) exists.
    IfNoneMatch,
    /// Fails unless the current version (not a delete marker) has this etag.
    IfMatch(String),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum VersionKind {
    #[default]
    Object,
    DeleteMarker,
}

/// One part of a multipart upload, or of a completed object's manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRef {
    pub part_number: u32,
    pub uid: u128,
    pub size: u64,
    pub etag: String,
    pub partition: u32,
}

/// One version of a name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectVersion {
    pub uid: u128,
    pub version_id: String,
    pub size: u64,
    pub etag: String,
    pub content_type: Option<String>,
    pub user_meta: BTreeMap<String, String>,
    /// Stored HTTP headers and checksums (`tessera_common::ns_api::system_meta`).
    pub system_meta: BTreeMap<String, String>,
    pub mtime_ms: u64,
    /// The object-server partition of `uid`.
    pub partition: u32,
    pub kind: VersionKind,
    /// The manifest of a multipart object (empty for a simple one).
    pub parts: Vec<PartRef>,
}

/// Metadata fixed when a multipart upload starts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadMeta {
    pub content_type: Option<String>,
    pub user_meta: BTreeMap<String, String>,
    pub system_meta: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    pub bucket: String,
    pub key: String,
    pub upload_id: String,
    pub initiated_ms: u64,
    pub meta: UploadMeta,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node_id: u64,
    pub role: NodeRole,
    pub addr: String,
    pub zone: String,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub healthy: bool,
    /// The proposer's time of the last heartbeat.
    pub at_ms: u64,
}

/// One partition's entry in the partition map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionPlacement {
    /// The object servers holding a replica; the first one bootstraps the
    /// partition's Raft group while `generation` is 0.
    pub replicas: Vec<u64>,
    /// How many times the replicas were changed since the partition was
    /// first placed. Only a generation-0 entry may bootstrap a group: a
    /// replica added later joins the existing group (its leader adds it).
    pub generation: u64,
}

/// A change to one partition of the map (see [`Command::SetPartitionMap`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionChange {
    /// The new replicas; empty removes the partition.
    pub replicas: Vec<u64>,
    /// The generation the proposer planned from (`None`: the partition was
    /// absent). A stale plan is refused whole.
    pub expected_generation: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeRole {
    NameServer,
    ObjectServer,
    ChunkServer,
    Gateway,
}

/// A state-machine command: one Raft entry's payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Creates a bucket with the default storage policy.
    CreateBucket {
        name: String,
        owner: String,
        created_ms: u64,
    },
    CreateBucketWithPolicy {
        name: String,
        owner: String,
        created_ms: u64,
        policy: StoragePolicy,
    },
    DeleteBucket {
        name: String,
    },
    SetBucketPolicy {
        name: String,
        policy: StoragePolicy,
    },
    SetBucketOwner {
        name: String,
        owner: String,
    },
    CreateAccessKey {
        key_id: String,
        secret: Secret,
        owner: String,
        created_ms: u64,
    },
    RevokeAccessKey {
        key_id: String,
    },
    GrantPermission {
        key_id: String,
        bucket: String,
        permission: Permission,
    },
    RevokePermission {
        key_id: String,
        bucket: String,
        permission: Permission,
    },
    /// DESIGN §4 step 5 (the guard was checked by the leader before proposing).
    CommitName {
        bucket: String,
        key: String,
        version: ObjectVersion,
        condition: CommitCondition,
    },
    DeleteName {
        bucket: String,
        key: String,
    },
    Reap {
        uid: u128,
    },
    AckDeletes {
        seqs: Vec<u64>,
    },
    /// Raises the reap watermark to `below_index` (never lowers it) and
    /// forgets up to [`reaped::PRUNE_BATCH_MAX`](super::reaped::PRUNE_BATCH_MAX)
    /// uids reaped below it; commits of uids born below the watermark are
    /// refused from then on (DESIGN §4). Refused if `below_index` is past
    /// the entry's own index.
    PruneReaped {
        below_index: u64,
    },
    CreateUpload {
        bucket: String,
        key: String,
        upload_id: String,
        initiated_ms: u64,
        meta: UploadMeta,
    },
    PutPart {
        upload_id: String,
        part_number: u32,
        uid: u128,
        etag: String,
        size: u64,
        partition: u32,
    },
    CompleteUpload {
        upload_id: String,
        parts: Vec<(u32, String)>,
        version: ObjectVersion,
        condition: CommitCondition,
    },
    AbortUpload {
        upload_id: String,
    },
    NodeHeartbeat(NodeRecord),
    /// Sets each listed partition's replicas (an empty list removes it),
    /// all or nothing: refused with `PreconditionFailed` when any
    /// partition's generation is not the one the change was planned from.
    SetPartitionMap {
        changes: BTreeMap<u32, PartitionChange>,
    },
}

/// The answer of [`Command::Reap`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReapOutcome {
    /// A name, version or part points at the uid: keep the data.
    Referenced,
    /// Recorded as reaped: no commit can name it any more; free the data.
    Free,
}

/// The answer to a command, returned to the proposer. Blank and membership
/// entries answer the default, `Ok`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    #[default]
    Ok,
    Error(NamespaceError),
    /// Whether a delete removed something.
    Deleted {
        existed: bool,
    },
    Reap(ReapOutcome),
    /// How many reaped uids a [`Command::PruneReaped`] forgot.
    Pruned {
        removed: u64,
    },
}

/// Typed refusals; callers branch on these.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum NamespaceError {
    #[error("bucket {0} already exists")]
    BucketExists(String),
    #[error("no such bucket {0}")]
    NoSuchBucket(String),
    #[error("invalid bucket name {name:?}: {reason}")]
    InvalidBucketName { name: String, reason: String },
    #[error("bucket {0} is not empty")]
    BucketNotEmpty(String),
    #[error("invalid storage policy {0:?}")]
    InvalidPolicy(StoragePolicy),
    #[error("object key is {len_bytes} bytes (1..=1024 allowed)")]
    InvalidKey { len_bytes: usize },
    #[error("uid {0:x} was reaped: its data may be freed")]
    UidReaped(u128),
    /// Born below the reap watermark: it may have been reaped and forgotten.
    #[error("uid {uid:x} was born at log index {birth}, below the reap watermark {watermark}")]
    UidTooOld { uid: u128, birth: u64, watermark: u64 },
    /// Born above the entry that names it: no minter can know that index.
    #[error("uid {uid:x} claims birth at log index {birth}, beyond the entry's index {log_index}")]
    UidFromFuture { uid: u128, birth: u64, log_index: u64 },
    #[error("prune below index {below_index} refused at log index {log_index}")]
    PruneAhead { below_index: u64, log_index: u64 },
    #[error("precondition failed")]
    PreconditionFailed,
    #[error("no such upload {0}")]
    NoSuchUpload(String),
    #[error("upload {0} already exists")]
    UploadExists(String),
    #[error("invalid upload id")]
    InvalidUploadId,
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
    #[error("invalid access key id")]
    InvalidAccessKeyId,
    #[error("access key {0} already exists")]
    AccessKeyExists(String),
    #[error("no such access key {0}")]
    NoSuchAccessKey(String),
    #[error("corrupt value in table {table}: {detail}")]
    Corrupt { table: String, detail: String },
}

/// The listing request (S3 ListObjects / ListObjectsV2).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListObjectsRequest {
    pub bucket: String,
    pub prefix: String,
    pub delimiter: Option<String>,
    /// Start after this key (start-after, marker or a continuation token's key).
    pub start_after: Option<String>,
    /// Capped at 1000.
    pub max_keys: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListObjectsPage {
    pub contents: Vec<(String, ObjectVersion)>,
    pub common_prefixes: Vec<String>,
    pub is_truncated: bool,
    /// When truncated: the last key or common prefix returned; pass it as
    /// `start_after` for the next page.
    pub next_marker: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListUploadsRequest {
    pub bucket: String,
    pub prefix: String,
    /// Rolls keys up into common prefixes, as in object listings.
    pub delimiter: Option<String>,
    pub key_marker: Option<String>,
    pub upload_id_marker: Option<String>,
    /// Capped at 1000.
    pub max_uploads: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadsPage {
    pub uploads: Vec<UploadRecord>,
    pub common_prefixes: Vec<String>,
    pub is_truncated: bool,
    /// When truncated: the key marker (the last key or common prefix) and
    /// the upload id marker (when the last entry was an upload).
    pub next_marker: Option<(String, Option<String>)>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartsPage {
    pub upload: Option<UploadRecord>,
    pub parts: Vec<PartRef>,
    pub is_truncated: bool,
    pub next_part_number_marker: Option<u32>,
}

/// One entry of the pending-delete queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingDelete {
    pub seq: u64,
    pub uid: u128,
    pub partition: u32,
}

/// An access key as stored (the secret is redacted in `Debug`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessKeyRecord {
    pub key_id: String,
    pub secret: Secret,
    pub owner: String,
    pub created_ms: u64,
}

/// An access key as listed: no secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessKeyInfo {
    pub key_id: String,
    pub owner: String,
    pub created_ms: u64,
}

/// What SigV4 verification needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretInfo {
    pub secret: Secret,
    pub owner: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Authz {
    Allowed,
    Denied,
    UnknownKey,
}

/// A read of the state machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    GetBucket {
        name: String,
    },
    GetBucketInfo {
        name: String,
    },
    /// All buckets, or those of one owner, by name.
    ListBuckets {
        owner: Option<String>,
    },
    GetObject {
        bucket: String,
        key: String,
    },
    ListObjects(ListObjectsRequest),
    /// The next `limit` queue entries with seq > `after_seq`.
    PendingDeletes {
        after_seq: Option<u64>,
        limit: usize,
    },
    IsReferenced {
        uid: u128,
    },
    ListAccessKeys {
        owner: Option<String>,
    },
    GetSecret {
        key_id: String,
    },
    Authorize {
        key_id: String,
        bucket: String,
        op: Permission,
    },
    ListUploads(ListUploadsRequest),
    ListParts {
        upload_id: String,
        part_number_marker: u32,
        max_parts: usize,
    },
    ListNodes,
    PartitionMap,
    /// The reap watermark (0 until the first prune).
    ReapWatermark,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryResponse {
    Bucket(Option<BucketRecord>),
    Error(NamespaceError),
    BucketInfo(Option<BucketInfo>),
    Buckets(Vec<BucketInfo>),
    Object(Option<ObjectVersion>),
    Objects(ListObjectsPage),
    PendingDeletes(Vec<PendingDelete>),
    Flag(bool),
    AccessKeys(Vec<AccessKeyInfo>),
    Secret(Option<SecretInfo>),
    Authz(Authz),
    Uploads(UploadsPage),
    Parts(PartsPage),
    Nodes(Vec<NodeRecord>),
    PartitionMap(BTreeMap<u32, PartitionPlacement>),
    Watermark(u64),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketRecord {
    pub name: String,
    pub owner: String,
    pub created_ms: u64,
}

/// A bucket as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketInfo {
    pub record: BucketRecord,
    pub policy: StoragePolicy,
}
