//! PutObject, GetObject, HeadObject, DeleteObject and DeleteObjects.
//!
//! A PUT runs the write protocol ([`crate::write`]) and answers only after
//! the name commit; If-Match / If-None-Match become the commit's condition,
//! checked atomically by the name servers (a cheap early check avoids
//! streaming a body that is bound to be refused). A GET reads the current
//! version linearizably from the name servers, then its bytes.

use std::sync::Arc;

use futures::StreamExt;
use s3s::dto::{
    ChecksumMode, DeleteObjectInput, DeleteObjectOutput, DeleteObjectsInput, DeleteObjectsOutput, DeletedObject,
    ETagCondition, GetObjectInput, GetObjectOutput, HeadObjectInput, HeadObjectOutput, PutObjectInput, PutObjectOutput,
    StreamingBlob,
};
use s3s::{s3_error, S3Error, S3Request, S3Response, S3Result, TrailingHeaders};
use tessera_common::ns_api::{system_meta, CommitCondition, CommitNameReq, ObjectInfo};

use super::digest::{hex, BodyDigest, Digests, ExpectedChecksums};
use super::meta::{self, check_key, Headers, Preconditions};
use crate::backend::Backend;
use crate::errors::ns_error;
use crate::write::{Upload, PUT_BYTES_MAX};

/// Keys one DeleteObjects may name.
const DELETE_KEYS_MAX: usize = 1000;
/// Deletes of one DeleteObjects in flight.
const DELETE_CONCURRENCY: usize = 16;

/// The current version of (bucket, key), or `NoSuchKey`.
pub async fn current(backend: &Backend, bucket: &str, key: &str) -> Result<ObjectInfo, S3Error> {
    check_key(key)?;
    backend
        .ns
        .get_object(bucket, key)
        .await
        .map_err(ns_error)?
        .ok_or_else(|| s3_error!(NoSuchKey))
}

/// A PUT's If-Match / If-None-Match as a commit condition.
pub fn commit_condition(
    if_match: Option<ETagCondition>,
    if_none_match: Option<ETagCondition>,
) -> Result<CommitCondition, S3Error> {
    match (if_match, if_none_match) {
        (None, None) => Ok(CommitCondition::None),
        (Some(_), Some(_)) => Err(s3_error!(NotImplemented, "If-Match with If-None-Match on a write")),
        (Some(ETagCondition::Any), None) => Ok(CommitCondition::IfMatch("*".into())),
        (Some(ETagCondition::ETag(tag)), None) => Ok(CommitCondition::IfMatch(tag.value().to_string())),
        (None, Some(ETagCondition::Any)) => Ok(CommitCondition::IfNoneMatch),
        (None, Some(ETagCondition::ETag(_))) => {
            Err(s3_error!(NotImplemented, "If-None-Match on a write takes only \"*\""))
        }
    }
}

/// Refuses early a write whose condition already fails (the commit checks
/// again, atomically).
pub async fn precheck(backend: &Backend, bucket: &str, key: &str, condition: &CommitCondition) -> S3Result<()> {
    let current = match condition {
        CommitCondition::None => return Ok(()),
        _ => backend.ns.get_object(bucket, key).await.map_err(ns_error)?,
    };
    let ok = match (condition, current) {
        (CommitCondition::None, _) => true,
        (CommitCondition::IfNoneMatch, current) => current.is_none(),
        // S3 answers a write conditioned on a missing object 404.
        (CommitCondition::IfMatch(_), None) => return Err(s3_error!(NoSuchKey)),
        (CommitCondition::IfMatch(tag), Some(c)) => tag == "*" || c.etag.trim_matches('"') == tag.trim_matches('"'),
    };
    if ok {
        Ok(())
    } else {
        Err(s3_error!(PreconditionFailed))
    }
}

/// A declared body length as bytes, refused past `max`.
pub fn body_len(content_length: Option<i64>, max: u64) -> Result<Option<u64>, S3Error> {
    let Some(len) = content_length else { return Ok(None) };
    let len = u64::try_from(len).map_err(|_| s3_error!(InvalidArgument, "negative Content-Length"))?;
    if len > max {
        return Err(s3_error!(EntityTooLarge, "the body exceeds {max} bytes"));
    }
    Ok(Some(len))
}

/// The request body, or an empty one.
fn body_or_empty(body: Option<StreamingBlob>) -> StreamingBlob {
    body.unwrap_or_else(|| StreamingBlob::wrap(futures::stream::empty::<Result<bytes::Bytes, std::io::Error>>()))
}

/// A request body as it arrives: its stream, the `Content-Length` it
/// declared, its size bound and its trailers.
pub struct Received {
    pub body: Option<StreamingBlob>,
    pub declared: Option<u64>,
    pub len_max: u64,
    pub trailers: Option<TrailingHeaders>,
}

/// Step 4 of a write: streams `body` into `upload`, then checks that every
/// declared byte came and that the digests match. The size and digests.
pub async fn receive(
    backend: &Backend,
    upload: &mut Upload,
    body: Received,
    mut digest: BodyDigest,
) -> Result<(u64, Digests), S3Error> {
    let stream = body_or_empty(body.body);
    let size = backend.write_body(upload, stream, body.len_max, &mut digest).await?;
    if body.declared.is_some_and(|d| d != size) {
        return Err(s3_error!(
            IncompleteBody,
            "received {size} bytes of the declared Content-Length"
        ));
    }
    Ok((size, digest.verify(body.trailers.as_ref())?))
}

pub async fn put(backend: &Arc<Backend>, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
    let trailers = req.trailing_headers.clone();
    let input = req.input;
    check_key(&input.key)?;
    let declared = body_len(input.content_length, PUT_BYTES_MAX)?;
    let condition = commit_condition(input.if_match, input.if_none_match)?;
    let bucket = backend
        .bucket(&input.bucket)
        .await
        .map_err(ns_error)?
        .ok_or_else(|| s3_error!(NoSuchBucket))?;
    let user_meta = meta::user_meta(input.metadata)?;
    let headers = Headers {
        content_encoding: input.content_encoding,
        content_disposition: input.content_disposition,
        content_language: input.content_language,
        cache_control: input.cache_control,
        expires: input.expires,
    };
    let digest = BodyDigest::new(ExpectedChecksums {
        crc32: input.checksum_crc32,
        crc32c: input.checksum_crc32c,
        crc64nvme: input.checksum_crc64nvme,
        sha1: input.checksum_sha1,
        sha256: input.checksum_sha256,
        algorithm: input.checksum_algorithm,
        content_md5: input.content_md5,
    })?;
    precheck(backend, &input.bucket, &input.key, &condition).await?;
    let name = Some((input.bucket.as_str(), input.key.as_str()));
    let mut upload = backend.begin_write(name, bucket.policy, declared.unwrap_or(0)).await?;
    let body = Received {
        body: input.body,
        declared,
        len_max: PUT_BYTES_MAX,
        trailers,
    };
    let (size, digests) = receive(backend, &mut upload, body, digest).await?;
    let etag = hex(&digests.md5);
    let mut system_meta = headers.to_system_meta();
    system_meta.extend(digests.checksums.iter().cloned());
    let commit = CommitNameReq {
        bucket: input.bucket,
        key: input.key,
        uid: upload.uid,
        size,
        etag: etag.clone(),
        content_type: input.content_type,
        user_meta,
        system_meta,
        partition: upload.partition,
        condition,
    };
    backend.ns.commit_name(&commit).await.map_err(ns_error)?;
    backend.confirm_later(upload.uid)?;
    let output = PutObjectOutput {
        e_tag: Some(meta::etag(&etag)),
        ..checksums_out(&digests)
    };
    Ok(S3Response::new(output))
}

fn checksums_out(digests: &Digests) -> PutObjectOutput {
    let get = |name: &str| {
        digests
            .checksums
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    PutObjectOutput {
        checksum_crc32: get(system_meta::CHECKSUM_CRC32),
        checksum_crc32c: get(system_meta::CHECKSUM_CRC32C),
        checksum_crc64nvme: get(system_meta::CHECKSUM_CRC64NVME),
        checksum_sha1: get(system_meta::CHECKSUM_SHA1),
        checksum_sha256: get(system_meta::CHECKSUM_SHA256),
        ..PutObjectOutput::default()
    }
}

/// The byte range a GET or HEAD serves: a `Range` header or a part
/// number, else the whole object. `Some(range)` answers 206.
fn served_range(
    info: &ObjectInfo,
    range: Option<s3s::dto::Range>,
    part_number: Option<i32>,
) -> Result<(std::ops::Range<u64>, bool), S3Error> {
    if let Some(range) = range {
        return Ok((range.check(info.size)?, true));
    }
    let Some(number) = part_number else {
        return Ok((0..info.size, false));
    };
    if info.parts.is_empty() {
        return match number {
            1 => Ok((0..info.size, false)),
            _ => Err(invalid_part_number()),
        };
    }
    let index = usize::try_from(number)
        .ok()
        .and_then(|n| n.checked_sub(1))
        .filter(|i| *i < info.parts.len())
        .ok_or_else(invalid_part_number)?;
    let start: u64 = info.parts[..index].iter().map(|p| p.size).sum();
    Ok((start..start + info.parts[index].size, true))
}

/// S3's 416 `InvalidPartNumber` (not among `s3s`'s codes).
fn invalid_part_number() -> S3Error {
    let code = s3s::S3ErrorCode::Custom("InvalidPartNumber".into());
    let mut error = S3Error::with_message(code, "The requested partnumber is not satisfiable");
    error.set_status_code(http::StatusCode::RANGE_NOT_SATISFIABLE);
    error
}

fn content_range(range: &std::ops::Range<u64>, size: u64) -> String {
    format!("bytes {}-{}/{size}", range.start, range.end.saturating_sub(1))
}

pub async fn get(backend: &Arc<Backend>, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
    let input = req.input;
    let info = current(backend, &input.bucket, &input.key).await?;
    Preconditions {
        if_match: input.if_match,
        if_none_match: input.if_none_match,
        if_modified_since: input.if_modified_since,
        if_unmodified_since: input.if_unmodified_since,
    }
    .check(&info, false)?;
    let (range, partial) = served_range(&info, input.range, input.part_number)?;
    let whole = range.start == 0 && range.end == info.size;
    let body = backend.read_stream(&info, range.clone()).await?;
    let headers = Headers::from_system_meta(&info.system_meta);
    let checksums = whole
        && input
            .checksum_mode
            .as_ref()
            .is_some_and(|m| m.as_str() == ChecksumMode::ENABLED);
    let checksum = |name| checksums.then(|| meta::checksum(&info, name)).flatten();
    let output = GetObjectOutput {
        body: Some(body),
        accept_ranges: Some("bytes".into()),
        content_length: Some(i64::try_from(range.end - range.start).unwrap_or(i64::MAX)),
        content_range: partial.then(|| content_range(&range, info.size)),
        e_tag: Some(meta::etag(&info.etag)),
        last_modified: Some(meta::timestamp(info.mtime_ms)),
        metadata: meta::user_metadata(&info),
        content_type: input.response_content_type.or(info.content_type.clone()),
        content_encoding: input.response_content_encoding.or(headers.content_encoding),
        content_disposition: input.response_content_disposition.or(headers.content_disposition),
        content_language: input.response_content_language.or(headers.content_language),
        cache_control: input.response_cache_control.or(headers.cache_control),
        expires: input.response_expires.or(headers.expires),
        checksum_crc32: checksum(system_meta::CHECKSUM_CRC32),
        checksum_crc32c: checksum(system_meta::CHECKSUM_CRC32C),
        checksum_crc64nvme: checksum(system_meta::CHECKSUM_CRC64NVME),
        checksum_sha1: checksum(system_meta::CHECKSUM_SHA1),
        checksum_sha256: checksum(system_meta::CHECKSUM_SHA256),
        parts_count: input
            .part_number
            .and(i32::try_from(info.parts.len()).ok())
            .filter(|n| *n > 0),
        ..GetObjectOutput::default()
    };
    Ok(S3Response::new(output))
}

pub async fn head(backend: &Arc<Backend>, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
    let input = req.input;
    let info = current(backend, &input.bucket, &input.key).await?;
    Preconditions {
        if_match: input.if_match,
        if_none_match: input.if_none_match,
        if_modified_since: input.if_modified_since,
        if_unmodified_since: input.if_unmodified_since,
    }
    .check(&info, false)?;
    let (range, partial) = served_range(&info, input.range, input.part_number)?;
    let headers = Headers::from_system_meta(&info.system_meta);
    let checksums = input
        .checksum_mode
        .as_ref()
        .is_some_and(|m| m.as_str() == ChecksumMode::ENABLED);
    let checksum = |name| checksums.then(|| meta::checksum(&info, name)).flatten();
    let output = HeadObjectOutput {
        accept_ranges: Some("bytes".into()),
        content_length: Some(i64::try_from(range.end - range.start).unwrap_or(i64::MAX)),
        content_range: partial.then(|| content_range(&range, info.size)),
        e_tag: Some(meta::etag(&info.etag)),
        last_modified: Some(meta::timestamp(info.mtime_ms)),
        metadata: meta::user_metadata(&info),
        content_type: info.content_type.clone(),
        content_encoding: headers.content_encoding,
        content_disposition: headers.content_disposition,
        content_language: headers.content_language,
        cache_control: headers.cache_control,
        expires: headers.expires,
        checksum_crc32: checksum(system_meta::CHECKSUM_CRC32),
        checksum_crc32c: checksum(system_meta::CHECKSUM_CRC32C),
        checksum_crc64nvme: checksum(system_meta::CHECKSUM_CRC64NVME),
        checksum_sha1: checksum(system_meta::CHECKSUM_SHA1),
        checksum_sha256: checksum(system_meta::CHECKSUM_SHA256),
        parts_count: input
            .part_number
            .and(i32::try_from(info.parts.len()).ok())
            .filter(|n| *n > 0),
        ..HeadObjectOutput::default()
    };
    Ok(S3Response::new(output))
}

pub async fn delete(backend: &Backend, req: S3Request<DeleteObjectInput>) -> S3Result<S3Response<DeleteObjectOutput>> {
    let input = req.input;
    check_key(&input.key)?;
    backend
        .ns
        .delete_name(&input.bucket, &input.key)
        .await
        .map_err(ns_error)?;
    Ok(S3Response::new(DeleteObjectOutput::default()))
}

pub async fn delete_many(
    backend: &Backend,
    req: S3Request<DeleteObjectsInput>,
) -> S3Result<S3Response<DeleteObjectsOutput>> {
    let input = req.input;
    let objects = input.delete.objects;
    if objects.is_empty() || objects.len() > DELETE_KEYS_MAX {
        return Err(s3_error!(MalformedXML, "a Delete names 1 to {DELETE_KEYS_MAX} keys"));
    }
    let quiet = input.delete.quiet.unwrap_or(false);
    let bucket = input.bucket.as_str();
    let outcomes: Vec<(String, Result<(), S3Error>)> = futures::stream::iter(objects)
        .map(|object| async move {
            let result = match check_key(&object.key) {
                Ok(()) => backend
                    .ns
                    .delete_name(bucket, &object.key)
                    .await
                    .map(|_| ())
                    .map_err(ns_error),
                Err(e) => Err(e),
            };
            (object.key, result)
        })
        .buffered(DELETE_CONCURRENCY)
        .collect()
        .await;
    let mut deleted = Vec::new();
    let mut errors = Vec::new();
    for (key, result) in outcomes {
        match result {
            Ok(()) if quiet => {}
            Ok(()) => deleted.push(DeletedObject {
                key: Some(key),
                ..DeletedObject::default()
            }),
            Err(e) => errors.push(s3s::dto::Error {
                code: Some(e.code().as_str().to_string()),
                key: Some(key),
                message: e.message().map(String::from),
                version_id: None,
            }),
        }
    }
    let output = DeleteObjectsOutput {
        deleted: (!deleted.is_empty()).then_some(deleted),
        errors: (!errors.is_empty()).then_some(errors),
        ..DeleteObjectsOutput::default()
    };
    Ok(S3Response::new(output))
}

#[cfg(test)]
mod tests {
    use super::*;
    use s3s::dto::ETag;

    #[test]
    fn write_conditions_map_to_commit_conditions() {
        let tag = |v: &str| Some(ETagCondition::ETag(ETag::Strong(v.into())));
        assert_eq!(commit_condition(None, None).expect("none"), CommitCondition::None);
        assert_eq!(
            commit_condition(None, Some(ETagCondition::Any)).expect("create only"),
            CommitCondition::IfNoneMatch
        );
        assert_eq!(
            commit_condition(tag("abc"), None).expect("cas"),
            CommitCondition::IfMatch("abc".into())
        );
        assert!(commit_condition(None, tag("abc")).is_err());
        assert!(commit_condition(tag("a"), Some(ETagCondition::Any)).is_err());
    }

    #[test]
    fn body_lengths_are_bounded() {
        assert_eq!(body_len(None, 10).expect("none"), None);
        assert_eq!(body_len(Some(10), 10).expect("fits"), Some(10));
        assert_eq!(
            body_len(Some(11), 10).expect_err("big").code().as_str(),
            "EntityTooLarge"
        );
        assert!(body_len(Some(-1), 10).is_err());
    }
}
