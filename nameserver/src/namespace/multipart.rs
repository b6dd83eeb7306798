//! Multipart uploads: create, put part, complete (commits the name to a
//! manifest of part uids in one entry), abort, and their listings.
//!
//! Each stored part references its uid in `UID_REFS` (so reap answers
//! "referenced" while the upload is in progress); completion moves the
//! references of the parts it uses to the new version and queues the rest;
//! abort queues them all.

use std::collections::BTreeMap;

use super::codec::{self, decode_name_key, encode, key_after, name_key, name_prefix, prefix_end, str_component};
use super::names::{self, UidRef};
use super::{
    buckets, listing, ApplyCtx, CommitCondition, Fail, ListUploadsRequest, NamespaceError, ObjectVersion, PartRef,
    PartsPage, Res, Response, UploadMeta, UploadRecord, UploadsPage, VersionKind, PARTS, UPLOADS, UPLOAD_INDEX,
};
use tessera_raft::kv::{KvRead, Txn};

/// S3's smallest part that is not the last.
pub const MIN_PART_SIZE_BYTES: u64 = 5 * 1024 * 1024;
pub const MAX_PART_NUMBER: u32 = 10_000;
/// The most entries one listing returns.
pub const MAX_PAGE: usize = 1000;
const MAX_UPLOAD_ID_BYTES: usize = 1024;

fn validate_upload_id(upload_id: &str) -> Result<(), NamespaceError> {
    if upload_id.is_empty() || upload_id.len() > MAX_UPLOAD_ID_BYTES {
        return Err(NamespaceError::InvalidUploadId);
    }
    Ok(())
}

fn parts_prefix(upload_id: &str) -> Vec<u8> {
    let mut out = Vec::new();
    str_component(&mut out, upload_id);
    out
}

fn part_key(upload_id: &str, part_number: u32) -> Vec<u8> {
    let mut out = parts_prefix(upload_id);
    out.extend_from_slice(&part_number.to_be_bytes());
    out
}

fn index_key(bucket: &str, key: &str, upload_id: &str) -> Vec<u8> {
    let mut out = name_key(bucket, key);
    out.extend_from_slice(upload_id.as_bytes());
    out
}

fn part_referrer(upload_id: &str, part_number: u32) -> UidRef {
    UidRef::Part {
        upload_id: upload_id.to_string(),
        part_number,
    }
}

fn require_upload<R: KvRead + ?Sized>(view: &R, upload_id: &str) -> Res<UploadRecord> {
    validate_upload_id(upload_id)?;
    codec::get(view, UPLOADS, upload_id.as_bytes())?
        .ok_or_else(|| Fail::Refused(NamespaceError::NoSuchUpload(upload_id.to_string())))
}

/// Every stored part of an upload, by part number.
fn stored_parts<R: KvRead + ?Sized>(view: &R, upload_id: &str) -> Res<BTreeMap<u32, PartRef>> {
    let prefix = parts_prefix(upload_id);
    let end = prefix_end(&prefix);
    let mut out = BTreeMap::new();
    for (_, value) in view.scan(PARTS, &prefix, end.as_deref(), usize::MAX)? {
        let part: PartRef = codec::decode(PARTS, &value)?;
        out.insert(part.part_number, part);
    }
    Ok(out)
}

pub fn create<R: KvRead + ?Sized>(
    txn: &mut Txn<'_, R>,
    bucket: &str,
    key: &str,
    upload_id: &str,
    initiated_ms: u64,
    meta: &UploadMeta,
) -> Res<Response> {
    validate_upload_id(upload_id)?;
    names::validate_key(key)?;
    buckets::require(txn, bucket)?;
    if txn.get(UPLOADS, upload_id.as_bytes())?.is_some() {
        return Err(NamespaceError::UploadExists(upload_id.to_string()).into());
    }
    let record = UploadRecord {
        bucket: bucket.to_string(),
        key: key.to_string(),
        upload_id: upload_id.to_string(),
        initiated_ms,
        meta: meta.clone(),
    };
    txn.put(UPLOADS, upload_id.as_bytes().to_vec(), encode(&record));
    txn.put(UPLOAD_INDEX, index_key(bucket, key, upload_id), Vec::new());
    Ok(Response::Ok)
}

/// Stores a part; a replaced part's uid is queued for deletion.
pub fn put_part<R: KvRead + ?Sized>(
    txn: &mut Txn<'_, R>,
    upload_id: &str,
    part: PartRef,
    ctx: &ApplyCtx,
) -> Res<Response> {
    if !(1..=MAX_PART_NUMBER).contains(&part.part_number) {
        return Err(NamespaceError::InvalidPartNumber(part.part_number).into());
    }
    require_upload(txn, upload_id)?;
    super::reaped::check_not_reaped(txn, part.uid, ctx.log_index)?;
    let key = part_key(upload_id, part.part_number);
    let referrer = part_referrer(upload_id, part.part_number);
    let replaced = codec::get::<_, PartRef>(txn, PARTS, &key)?.filter(|old| old.uid != part.uid);
    names::add_ref(txn, part.uid, &referrer);
    txn.put(PARTS, key, encode(&part));
    if let Some(old) = replaced {
        names::remove_ref(txn, old.uid, &referrer);
        names::release(txn, &[(old.uid, old.partition)])?;
    }
    Ok(Response::Ok)
}

/// Builds the manifest of a completion: S3's order, then existence and
/// etag, then size rules.
fn manifest(requested: &[(u32, String)], stored: &BTreeMap<u32, PartRef>) -> Result<Vec<PartRef>, NamespaceError> {
    if requested.is_empty() {
        return Err(NamespaceError::EmptyPartList);
    }
    if requested.windows(2).any(|pair| pair[0].0 >= pair[1].0) {
        return Err(NamespaceError::InvalidPartOrder);
    }
    let mut out = Vec::with_capacity(requested.len());
    for (number, etag) in requested {
        let part = stored
            .get(number)
            .filter(|part| part.etag.trim_matches('"') == etag.trim_matches('"'))
            .ok_or(NamespaceError::InvalidPart(*number))?;
        out.push(part.clone());
    }
    let last = out.len() - 1;
    if let Some(small) = out[..last].iter().find(|part| part.size < MIN_PART_SIZE_BYTES) {
        return Err(NamespaceError::EntityTooSmall(small.part_number));
    }
    Ok(out)
}

/// Removes an upload, its parts and their references; returns the part
/// uids for [`names::release`].
fn drop_upload<R: KvRead + ?Sized>(
    txn: &mut Txn<'_, R>,
    upload: &UploadRecord,
    stored: &BTreeMap<u32, PartRef>,
) -> Vec<(u128, u32)> {
    let upload_id = upload.upload_id.as_str();
    for part in stored.values() {
        names::remove_ref(txn, part.uid, &part_referrer(upload_id, part.part_number));
        txn.delete(PARTS, part_key(upload_id, part.part_number));
    }
    txn.delete(UPLOADS, upload_id.as_bytes().to_vec());
    txn.delete(UPLOAD_INDEX, index_key(&upload.bucket, &upload.key, upload_id));
    stored.values().map(|part| (part.uid, part.partition)).collect()
}

/// Commits the upload's name to the manifest of the listed parts. The
/// version's size, content type, user metadata and parts come from the
/// upload; uid, version id, etag, mtime and partition from the proposer.
pub fn complete<R: KvRead + ?Sized>(
    txn: &mut Txn<'_, R>,
    upload_id: &str,
    requested: &[(u32, String)],
    version: &ObjectVersion,
    condition: &CommitCondition,
    ctx: &ApplyCtx,
) -> Res<Response> {
    let upload = require_upload(txn, upload_id)?;
    let stored = stored_parts(txn, upload_id)?;
    let parts = manifest(requested, &stored)?;
    let version = ObjectVersion {
        size: parts.iter().map(|part| part.size).sum(),
        content_type: upload.meta.content_type.clone(),
        user_meta: upload.meta.user_meta.clone(),
        system_meta: upload.meta.system_meta.clone(),
        kind: VersionKind::Object,
        parts,
        ..version.clone()
    };
    names::check_commit(txn, &upload.bucket, &upload.key, &version, condition, ctx.log_index)?;
    let released = drop_upload(txn, &upload, &stored);
    names::install(txn, &upload.bucket, &upload.key, version, ctx.command_seq())?;
    names::release(txn, &released)?;
    Ok(Response::Ok)
}

/// Drops the upload and queues every part.
pub fn abort<R: KvRead + ?Sized>(txn: &mut Txn<'_, R>, upload_id: &str) -> Res<Response> {
    let upload = require_upload(txn, upload_id)?;
    let stored = stored_parts(txn, upload_id)?;
    let released = drop_upload(txn, &upload, &stored);
    names::release(txn, &released)?;
    Ok(Response::Ok)
}

/// Where a ListMultipartUploads page starts.
fn uploads_start(request: &ListUploadsRequest, lower: &[u8]) -> Vec<u8> {
    let start = match (&request.key_marker, &request.upload_id_marker) {
        (None, _) => return lower.to_vec(),
        (Some(key), Some(id)) => key_after(&index_key(&request.bucket, key, id)),
        (Some(key), None) => prefix_end(&name_key(&request.bucket, key)).unwrap_or_default(),
    };
    start.max(lower.to_vec())
}

/// Pairs one scan of the upload index reads.
const UPLOADS_BATCH: usize = 64;

/// S3 ListMultipartUploads: by key, then upload id; with a delimiter,
/// keys roll up into common prefixes (each listed once, after the key
/// marker, counting toward the page size) and the scan seeks past them.
pub fn list_uploads<R: KvRead + ?Sized>(view: &R, request: &ListUploadsRequest) -> Res<UploadsPage> {
    buckets::require(view, &request.bucket)?;
    let max = request.max_uploads.min(MAX_PAGE);
    let lower = name_prefix(&request.bucket, &request.prefix);
    let upper = prefix_end(&lower);
    let mut cursor = uploads_start(request, &lower);
    let mut page = UploadsPage::default();
    let mut last: Option<(String, Option<String>)> = None;
    'scan: loop {
        let batch = view.scan(UPLOAD_INDEX, &cursor, upper.as_deref(), UPLOADS_BATCH)?;
        if batch.is_empty() {
            break;
        }
        for (index, _) in batch {
            let (_, key, id) = decode_name_key(UPLOAD_INDEX, &index)?;
            let rolled = listing::common_prefix(&request.prefix, request.delimiter.as_deref(), &key);
            let wanted = match &rolled {
                Some(prefix) => request.key_marker.as_ref().is_none_or(|m| prefix > m),
                None => true,
            };
            if wanted && page.uploads.len() + page.common_prefixes.len() == max {
                page.is_truncated = true;
                break 'scan;
            }
            match rolled {
                Some(prefix) => {
                    let Some(past) = prefix_end(&name_prefix(&request.bucket, &prefix)) else {
                        break 'scan;
                    };
                    if wanted {
                        page.common_prefixes.push(prefix.clone());
                        last = Some((prefix, None));
                    }
                    cursor = past;
                    continue 'scan;
                }
                None => {
                    let id = String::from_utf8(id.to_vec())
                        .map_err(|_| codec::corrupt(UPLOAD_INDEX, "upload id not utf-8"))?;
                    let upload = require_upload(view, &id)?;
                    last = Some((upload.key.clone(), Some(id)));
                    page.uploads.push(upload);
                    cursor = key_after(&index);
                }
            }
        }
    }
    if page.is_truncated {
        page.next_marker = last;
    }
    Ok(page)
}

/// S3 ListParts: parts with number > `marker`, at most `max_parts` (≤ 1000).
pub fn list_parts<R: KvRead + ?Sized>(view: &R, upload_id: &str, marker: u32, max_parts: usize) -> Res<PartsPage> {
    let upload = require_upload(view, upload_id)?;
    let max = max_parts.min(MAX_PAGE);
    let prefix = parts_prefix(upload_id);
    let end = prefix_end(&prefix);
    let start = part_key(upload_id, marker.saturating_add(1));
    let pairs = view.scan(PARTS, &start, end.as_deref(), max + 1)?;
    let mut page = PartsPage {
        upload: Some(upload),
        is_truncated: pairs.len() > max,
        ..PartsPage::default()
    };
    for (_, value) in pairs.iter().take(max) {
        page.parts.push(codec::decode(PARTS, value)?);
    }
    if page.is_truncated {
        page.next_part_number_marker = page.parts.last().map(|part| part.part_number);
    }
    Ok(page)
}
