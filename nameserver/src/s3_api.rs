//! What the S3 gateway needs of the name servers besides guards and name
//! commits ([`crate::api`]): bucket reads and deletes, object listings,
//! access-key secrets and authorization, and multipart uploads (all but
//! completion, which is a guarded commit and lives with the guards).
//!
//! Writes go through [`NsGroup::propose`] and reads through
//! [`NsGroup::read`] (linearizable); a follower forwards both to the
//! leader. An upload's (bucket, key) never changes once created and its id
//! is drawn at random by the leader, so checking that a request's upload
//! belongs to its (bucket, key) before proposing cannot race.

use std::collections::BTreeMap;

use bytes::Bytes;
use tessera_common::ns_api::{
    self, AuthorizeReq, Authz, BucketEntry, BucketReq, CreateUploadReq, KeySecret, ListBucketsReq, ListObjectsReq,
    ListPartsReq, ListUploadsReq, ListedObject, NsError, ObjectsPage, PartInfo, PartsPage, PutPartReq, SecretReq,
    UploadInfo, UploadReq, UploadsPage,
};
use tessera_common::rpc::{RequestCtx, Router};

use crate::api::{namespace_error, propose_error, response_error, wall_ms};
use crate::namespace::{
    self, BucketInfo, Command, ListObjectsRequest, ListUploadsRequest, PartRef, Permission, Query, QueryResponse,
    Response, UploadMeta, UploadRecord,
};
use crate::raft::NsGroup;

macro_rules! route {
    ($router:expr, $node:expr, $m:ty, $f:ident) => {{
        let node = $node.clone();
        $router.add::<$m, _, _>(move |_ctx: RequestCtx, req, _bulk: Bytes| {
            let node = node.clone();
            async move { ($f(&node, req).await, Bytes::new()) }
        })
    }};
}

pub fn routes(router: Router, node: NsGroup) -> Router {
    let router = route!(router, node, ns_api::GetBucket, get_bucket);
    let router = route!(router, node, ns_api::ListBuckets, list_buckets);
    let router = route!(router, node, ns_api::DeleteBucket, delete_bucket);
    let router = route!(router, node, ns_api::ListObjects, list_objects);
    let router = route!(router, node, ns_api::GetSecret, get_secret);
    let router = route!(router, node, ns_api::Authorize, authorize);
    let router = route!(router, node, ns_api::CreateUpload, create_upload);
    let router = route!(router, node, ns_api::PutPart, put_part);
    let router = route!(router, node, ns_api::AbortUpload, abort_upload);
    let router = route!(router, node, ns_api::ListUploads, list_uploads);
    route!(router, node, ns_api::ListParts, list_parts)
}

/// A linearizable read; refusals become their wire error.
async fn read(node: &NsGroup, query: Query) -> Result<QueryResponse, NsError> {
    match node.read(query).await.map_err(propose_error)? {
        QueryResponse::Error(e) => Err(namespace_error(e)),
        answer => Ok(answer),
    }
}

async fn propose_ok(node: &NsGroup, command: Command) -> Result<(), NsError> {
    match node.propose(command).await.map_err(propose_error)? {
        Response::Ok => Ok(()),
        other => Err(response_error(other)),
    }
}

fn unexpected(answer: QueryResponse) -> NsError {
    NsError::Internal(format!("unexpected answer {answer:?}"))
}

fn bucket_entry(info: BucketInfo) -> BucketEntry {
    let policy = match info.policy {
        namespace::StoragePolicy::Ec { k, m } => ns_api::StoragePolicy::Ec { k, m },
        namespace::StoragePolicy::Replicated { n } => ns_api::StoragePolicy::Replicated { n },
    };
    BucketEntry {
        name: info.record.name,
        owner: info.record.owner,
        created_ms: info.record.created_ms,
        policy,
    }
}

async fn get_bucket(node: &NsGroup, req: BucketReq) -> Result<Option<BucketEntry>, NsError> {
    match read(node, Query::GetBucketInfo { name: req.name }).await? {
        QueryResponse::BucketInfo(info) => Ok(info.map(bucket_entry)),
        other => Err(unexpected(other)),
    }
}

async fn list_buckets(node: &NsGroup, req: ListBucketsReq) -> Result<Vec<BucketEntry>, NsError> {
    match read(node, Query::ListBuckets { owner: req.owner }).await? {
        QueryResponse::Buckets(list) => Ok(list.into_iter().map(bucket_entry).collect()),
        other => Err(unexpected(other)),
    }
}

async fn delete_bucket(node: &NsGroup, req: BucketReq) -> Result<(), NsError> {
    propose_ok(node, Command::DeleteBucket { name: req.name }).await
}

async fn list_objects(node: &NsGroup, req: ListObjectsReq) -> Result<ObjectsPage, NsError> {
    let request = ListObjectsRequest {
        bucket: req.bucket,
        prefix: req.prefix,
        delimiter: req.delimiter,
        start_after: req.start_after,
        max_keys: req.max_keys as usize,
    };
    let page = match read(node, Query::ListObjects(request)).await? {
        QueryResponse::Objects(page) => page,
        other => return Err(unexpected(other)),
    };
    let contents = page
        .contents
        .into_iter()
        .map(|(key, v)| ListedObject {
            key,
            size: v.size,
            etag: v.etag,
            mtime_ms: v.mtime_ms,
        })
        .collect();
    Ok(ObjectsPage {
        contents,
        common_prefixes: page.common_prefixes,
        is_truncated: page.is_truncated,
        next_marker: page.next_marker,
    })
}

async fn get_secret(node: &NsGroup, req: SecretReq) -> Result<Option<KeySecret>, NsError> {
    match read(node, Query::GetSecret { key_id: req.key_id }).await? {
        QueryResponse::Secret(found) => Ok(found.map(|s| KeySecret {
            secret: s.secret.0,
            owner: s.owner,
        })),
        other => Err(unexpected(other)),
    }
}

async fn authorize(node: &NsGroup, req: AuthorizeReq) -> Result<Authz, NsError> {
    let op = match req.permission {
        ns_api::Permission::Read => Permission::Read,
        ns_api::Permission::Write => Permission::Write,
        ns_api::Permission::Owner => Permission::Owner,
    };
    let query = Query::Authorize {
        key_id: req.key_id,
        bucket: req.bucket,
        op,
    };
    match read(node, query).await? {
        QueryResponse::Authz(namespace::Authz::Allowed) => Ok(Authz::Allowed),
        QueryResponse::Authz(namespace::Authz::Denied) => Ok(Authz::Denied),
        QueryResponse::Authz(namespace::Authz::UnknownKey) => Ok(Authz::UnknownKey),
        other => Err(unexpected(other)),
    }
}

fn pairs(meta: &[(String, String)]) -> BTreeMap<String, String> {
    meta.iter().cloned().collect()
}

async fn create_upload(node: &NsGroup, req: CreateUploadReq) -> Result<String, NsError> {
    let upload_id = format!(
        "{:016x}{:016x}",
        tessera_common::rng::random_u64(),
        tessera_common::rng::random_u64()
    );
    let command = Command::CreateUpload {
        bucket: req.bucket,
        key: req.key,
        upload_id: upload_id.clone(),
        initiated_ms: wall_ms(),
        meta: UploadMeta {
            content_type: req.meta.content_type,
            user_meta: pairs(&req.meta.user_meta),
            system_meta: pairs(&req.meta.system_meta),
        },
    };
    propose_ok(node, command).await?;
    Ok(upload_id)
}

fn upload_info(record: UploadRecord) -> UploadInfo {
    UploadInfo {
        bucket: record.bucket,
        key: record.key,
        upload_id: record.upload_id,
        initiated_ms: record.initiated_ms,
        meta: ns_api::UploadMeta {
            content_type: record.meta.content_type,
            user_meta: record.meta.user_meta.into_iter().collect(),
            system_meta: record.meta.system_meta.into_iter().collect(),
        },
    }
}

pub(crate) fn part_info(part: PartRef) -> PartInfo {
    PartInfo {
        part_number: part.part_number,
        uid: part.uid,
        size: part.size,
        etag: part.etag,
        partition: part.partition,
    }
}

/// Parts of an upload after `marker`; `NoSuchUpload` when the upload does
/// not exist or belongs to another name.
async fn parts_page(node: &NsGroup, upload: &UploadReq, marker: u32, max_parts: usize) -> Result<PartsPage, NsError> {
    let query = Query::ListParts {
        upload_id: upload.upload_id.clone(),
        part_number_marker: marker,
        max_parts,
    };
    let page = match read(node, query).await? {
        QueryResponse::Parts(page) => page,
        other => return Err(unexpected(other)),
    };
    let record = page
        .upload
        .filter(|r| r.bucket == upload.bucket && r.key == upload.key)
        .ok_or(NsError::NoSuchUpload)?;
    Ok(PartsPage {
        upload: upload_info(record),
        parts: page.parts.into_iter().map(part_info).collect(),
        is_truncated: page.is_truncated,
        next_part_number_marker: page.next_part_number_marker,
    })
}

/// The upload `upload` names, if it belongs to its (bucket, key).
pub(crate) async fn upload_of(node: &NsGroup, upload: &UploadReq) -> Result<UploadInfo, NsError> {
    Ok(parts_page(node, upload, 0, 0).await?.upload)
}

async fn put_part(node: &NsGroup, req: PutPartReq) -> Result<(), NsError> {
    upload_of(node, &req.upload).await?;
    let command = Command::PutPart {
        upload_id: req.upload.upload_id,
        part_number: req.part.part_number,
        uid: req.part.uid,
        etag: req.part.etag,
        size: req.part.size,
        partition: req.part.partition,
    };
    propose_ok(node, command).await
}

async fn abort_upload(node: &NsGroup, req: UploadReq) -> Result<(), NsError> {
    upload_of(node, &req).await?;
    propose_ok(
        node,
        Command::AbortUpload {
            upload_id: req.upload_id,
        },
    )
    .await
}

async fn list_uploads(node: &NsGroup, req: ListUploadsReq) -> Result<UploadsPage, NsError> {
    let request = ListUploadsRequest {
        bucket: req.bucket,
        prefix: req.prefix,
        delimiter: req.delimiter,
        key_marker: req.key_marker,
        upload_id_marker: req.upload_id_marker,
        max_uploads: req.max_uploads as usize,
    };
    match read(node, Query::ListUploads(request)).await? {
        QueryResponse::Uploads(page) => Ok(UploadsPage {
            uploads: page.uploads.into_iter().map(upload_info).collect(),
            common_prefixes: page.common_prefixes,
            is_truncated: page.is_truncated,
            next_marker: page.next_marker,
        }),
        other => Err(unexpected(other)),
    }
}

async fn list_parts(node: &NsGroup, req: ListPartsReq) -> Result<PartsPage, NsError> {
    parts_page(node, &req.upload, req.part_number_marker, req.max_parts as usize).await
}
