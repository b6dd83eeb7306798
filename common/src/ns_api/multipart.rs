//! Multipart uploads on the wire (S3 CreateMultipartUpload, UploadPart,
//! CompleteMultipartUpload, AbortMultipartUpload, ListParts,
//! ListMultipartUploads).
//!
//! A part's data is written like any object's (its own uid, GC entry and
//! data on the object servers); `ns.put_part` then records it, and from
//! that entry on the part's uid is referenced (reap answers "referenced").
//! Completion is a name commit (DESIGN §4 step 5): it needs a guard entry
//! on (bucket, key, uid) like `ns.commit_name`, where `uid` is a fresh uid
//! naming the manifest (it holds no data), and in one entry names the
//! object, drops the upload and queues the parts it did not use.

use rkyv::{Archive, Deserialize, Serialize};

use super::{CommitCondition, CommitOk, NsError};
use crate::rpc::rpc_method;

/// Metadata fixed when an upload starts; the completed object gets it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct UploadMeta {
    pub content_type: Option<String>,
    pub user_meta: Vec<(String, String)>,
    pub system_meta: Vec<(String, String)>,
}

/// `ns.create_upload`: the leader draws the upload id.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct CreateUploadReq {
    pub bucket: String,
    pub key: String,
    pub meta: UploadMeta,
}

/// Names one upload of (bucket, key): `ns.abort_upload`; an upload of
/// another name answers `NoSuchUpload`.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct UploadReq {
    pub bucket: String,
    pub key: String,
    pub upload_id: String,
}

/// `ns.put_part`: records a written part (replacing one of the same
/// number, whose uid is queued for deletion).
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct PutPartReq {
    pub upload: UploadReq,
    pub part: PartInfo,
}

/// One part: of an upload in progress, or of a completed object.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct PartInfo {
    pub part_number: u32,
    pub uid: u128,
    pub size: u64,
    pub etag: String,
    /// The object-server partition of `uid`.
    pub partition: u32,
}

/// `ns.complete_upload`: names (bucket, key) the concatenation of the
/// listed parts (number, etag), in ascending part order.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct CompleteUploadReq {
    pub upload: UploadReq,
    /// The guarded uid naming the manifest.
    pub uid: u128,
    /// The object's ETag (`md5-of-md5s-N`), computed by the gateway.
    pub etag: String,
    pub parts: Vec<(u32, String)>,
    pub partition: u32,
    pub condition: CommitCondition,
}

/// An upload in progress.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct UploadInfo {
    pub bucket: String,
    pub key: String,
    pub upload_id: String,
    pub initiated_ms: u64,
    pub meta: UploadMeta,
}

/// `ns.list_uploads`: uploads of a bucket by key, then upload id.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ListUploadsReq {
    pub bucket: String,
    pub prefix: String,
    /// Rolls keys up into common prefixes.
    pub delimiter: Option<String>,
    pub key_marker: Option<String>,
    pub upload_id_marker: Option<String>,
    /// Capped at 1000.
    pub max_uploads: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct UploadsPage {
    pub uploads: Vec<UploadInfo>,
    pub common_prefixes: Vec<String>,
    pub is_truncated: bool,
    /// When truncated: the key marker of the next page and its upload id
    /// marker (when the page ended with an upload, not a common prefix).
    pub next_marker: Option<(String, Option<String>)>,
}

/// `ns.list_parts`: parts numbered above `part_number_marker`.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ListPartsReq {
    pub upload: UploadReq,
    pub part_number_marker: u32,
    /// Capped at 1000.
    pub max_parts: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct PartsPage {
    pub upload: UploadInfo,
    pub parts: Vec<PartInfo>,
    pub is_truncated: bool,
    pub next_part_number_marker: Option<u32>,
}

// A retry creates a second upload, which expires unused: not idempotent.
rpc_method!(CreateUpload, "ns.create_upload", false, CreateUploadReq => Result<String, NsError>);
// Recording the same part again changes nothing.
rpc_method!(PutPart, "ns.put_part", true, PutPartReq => Result<(), NsError>);
// The first attempt consumes the guard; never retried blindly.
rpc_method!(CompleteUpload, "ns.complete_upload", false, CompleteUploadReq => Result<CommitOk, NsError>);
// A retry after an abort answers NoSuchUpload.
rpc_method!(AbortUpload, "ns.abort_upload", false, UploadReq => Result<(), NsError>);
rpc_method!(ListUploads, "ns.list_uploads", true, ListUploadsReq => Result<UploadsPage, NsError>);
rpc_method!(ListParts, "ns.list_parts", true, ListPartsReq => Result<PartsPage, NsError>);
