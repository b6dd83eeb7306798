//! Buckets and object listings on the wire: what the S3 gateway needs for
//! ListBuckets, HeadBucket, DeleteBucket and ListObjects (v1 and v2).

use rkyv::{Archive, Deserialize, Serialize};

use super::{NsError, StoragePolicy};
use crate::rpc::rpc_method;

/// A bucket as stored.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct BucketEntry {
    pub name: String,
    pub owner: String,
    pub created_ms: u64,
    pub policy: StoragePolicy,
}

/// Names one bucket: `ns.get_bucket`, `ns.delete_bucket`.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct BucketReq {
    pub name: String,
}

/// `ns.list_buckets`: every bucket, or those of one owner, by name.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ListBucketsReq {
    pub owner: Option<String>,
}

/// `ns.list_objects`: current versions in key order (S3 ListObjects).
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ListObjectsReq {
    pub bucket: String,
    pub prefix: String,
    /// Rolls keys up into common prefixes (empty or absent: no roll-up).
    pub delimiter: Option<String>,
    /// Only entries (keys or common prefixes) after this one.
    pub start_after: Option<String>,
    /// At most this many keys plus common prefixes (capped at 1000).
    pub max_keys: u32,
}

/// One current version in a listing.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct ListedObject {
    pub key: String,
    pub size: u64,
    pub etag: String,
    pub mtime_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct ObjectsPage {
    pub contents: Vec<ListedObject>,
    pub common_prefixes: Vec<String>,
    pub is_truncated: bool,
    /// When truncated: the last entry returned (key or common prefix);
    /// pass it as `start_after` for the next page.
    pub next_marker: Option<String>,
}

rpc_method!(GetBucket, "ns.get_bucket", true, BucketReq => Result<Option<BucketEntry>, NsError>);
rpc_method!(ListBuckets, "ns.list_buckets", true, ListBucketsReq => Result<Vec<BucketEntry>, NsError>);
// A retry after an unknown outcome may answer NoSuchBucket.
rpc_method!(DeleteBucket, "ns.delete_bucket", false, BucketReq => Result<(), NsError>);
rpc_method!(ListObjects, "ns.list_objects", true, ListObjectsReq => Result<ObjectsPage, NsError>);
