//! CopyObject and UploadPartCopy: the source's bytes, read like a GET,
//! become the body of a new write (DESIGN §4 for the target). The source
//! is the current version at the time of the read; its conditional headers
//! (`x-amz-copy-source-if-*`) are checked against it. CopyObject keeps the
//! source's metadata (COPY, the default) or takes the request's (REPLACE).

use std::sync::Arc;

use s3s::dto::{
    CopyObjectInput, CopyObjectOutput, CopyObjectResult, CopyPartResult, CopySource, MetadataDirective,
    UploadPartCopyInput, UploadPartCopyOutput,
};
use s3s::{s3_error, S3Error, S3Request, S3Response, S3Result};
use tessera_common::ns_api::{CommitCondition, CommitNameReq, ObjectInfo};

use super::digest::{hex, BodyDigest, ExpectedChecksums};
use super::meta::{self, Headers, Preconditions};
use super::multipart::{record_part, PART_BYTES_MAX};
use super::objects::current;
use crate::backend::Backend;
use crate::errors::ns_error;
use crate::write::PUT_BYTES_MAX;

fn source_name(source: &CopySource) -> Result<(&str, &str), S3Error> {
    match source {
        CopySource::Bucket { bucket, key, .. } => Ok((bucket, key)),
        _ => Err(s3_error!(NotImplemented, "only bucket/key copy sources are supported")),
    }
}

/// Streams `range` of `source` into a new write of `name` (or of a part
/// when `name` is `None`); returns the uid, its partition and the MD5.
async fn copy_bytes(
    backend: &Arc<Backend>,
    source: &ObjectInfo,
    range: std::ops::Range<u64>,
    name: Option<(&str, &str)>,
    policy: tessera_common::ns_api::StoragePolicy,
) -> Result<(crate::write::Upload, u64, [u8; 16]), S3Error> {
    let len = range.end - range.start;
    let mut upload = backend.begin_write(name, policy, len).await?;
    let body = backend.read_stream(source, range).await?;
    let mut digest = BodyDigest::new(ExpectedChecksums::default())?;
    let size = backend.write_body(&mut upload, body, len, &mut digest).await?;
    if size != len {
        return Err(crate::errors::internal(
            "copy",
            &format!("copied {size} of {len} bytes"),
        ));
    }
    Ok((upload, size, digest.verify(None)?.md5))
}

pub async fn copy_object(
    backend: &Arc<Backend>,
    req: S3Request<CopyObjectInput>,
) -> S3Result<S3Response<CopyObjectOutput>> {
    let input = req.input;
    meta::check_key(&input.key)?;
    let (src_bucket, src_key) = source_name(&input.copy_source)?;
    let source = current(backend, src_bucket, src_key).await?;
    Preconditions {
        if_match: input.copy_source_if_match,
        if_none_match: input.copy_source_if_none_match,
        if_modified_since: input.copy_source_if_modified_since,
        if_unmodified_since: input.copy_source_if_unmodified_since,
    }
    .check(&source, true)?;
    if source.size > PUT_BYTES_MAX {
        return Err(s3_error!(
            InvalidRequest,
            "sources above 5 GiB are copied with UploadPartCopy"
        ));
    }
    let replace = input
        .metadata_directive
        .as_ref()
        .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
    if !replace && src_bucket == input.bucket && src_key == input.key {
        return Err(s3_error!(
            InvalidRequest,
            "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata"
        ));
    }
    let (content_type, user_meta, system_meta) = if replace {
        let headers = Headers {
            content_encoding: input.content_encoding,
            content_disposition: input.content_disposition,
            content_language: input.content_language,
            cache_control: input.cache_control,
            expires: input.expires,
        };
        (
            input.content_type,
            meta::user_meta(input.metadata)?,
            headers.to_system_meta(),
        )
    } else {
        (
            source.content_type.clone(),
            source.user_meta.clone(),
            source.system_meta.clone(),
        )
    };
    let bucket = backend
        .bucket(&input.bucket)
        .await
        .map_err(ns_error)?
        .ok_or_else(|| s3_error!(NoSuchBucket))?;
    let name = Some((input.bucket.as_str(), input.key.as_str()));
    let (upload, size, md5) = copy_bytes(backend, &source, 0..source.size, name, bucket.policy).await?;
    let etag = hex(&md5);
    let commit = CommitNameReq {
        bucket: input.bucket,
        key: input.key,
        uid: upload.uid,
        size,
        etag: etag.clone(),
        content_type,
        user_meta,
        system_meta,
        partition: upload.partition,
        condition: CommitCondition::None,
    };
    backend.ns.commit_name(&commit).await.map_err(ns_error)?;
    backend.confirm_later(upload.uid)?;
    let output = CopyObjectOutput {
        copy_object_result: Some(CopyObjectResult {
            e_tag: Some(meta::etag(&etag)),
            last_modified: Some(meta::timestamp(meta::now_ms())),
            ..CopyObjectResult::default()
        }),
        ..CopyObjectOutput::default()
    };
    Ok(S3Response::new(output))
}

/// `bytes=first-last` of `x-amz-copy-source-range`, inside the source.
fn source_range(text: Option<&str>, size: u64) -> Result<std::ops::Range<u64>, S3Error> {
    let Some(text) = text else { return Ok(0..size) };
    let range = s3s::dto::Range::parse(text).map_err(|_| s3_error!(InvalidArgument, "bad x-amz-copy-source-range"))?;
    match range {
        s3s::dto::Range::Int {
            first,
            last: Some(last),
        } if first <= last && last < size => Ok(first..last + 1),
        _ => Err(s3_error!(
            InvalidRange,
            "the copy source range is not within the source"
        )),
    }
}

pub async fn upload_part_copy(
    backend: &Arc<Backend>,
    req: S3Request<UploadPartCopyInput>,
) -> S3Result<S3Response<UploadPartCopyOutput>> {
    let input = req.input;
    let (src_bucket, src_key) = source_name(&input.copy_source)?;
    let source = current(backend, src_bucket, src_key).await?;
    Preconditions {
        if_match: input.copy_source_if_match,
        if_none_match: input.copy_source_if_none_match,
        if_modified_since: input.copy_source_if_modified_since,
        if_unmodified_since: input.copy_source_if_unmodified_since,
    }
    .check(&source, true)?;
    let range = source_range(input.copy_source_range.as_deref(), source.size)?;
    if range.end - range.start > PART_BYTES_MAX {
        return Err(s3_error!(EntityTooLarge, "a part holds at most 5 GiB"));
    }
    let bucket = backend
        .bucket(&input.bucket)
        .await
        .map_err(ns_error)?
        .ok_or_else(|| s3_error!(NoSuchBucket))?;
    let (upload, size, md5) = copy_bytes(backend, &source, range, None, bucket.policy).await?;
    let etag = hex(&md5);
    record_part(
        backend,
        &input.bucket,
        &input.key,
        &input.upload_id,
        input.part_number,
        &upload,
        size,
        &etag,
    )
    .await?;
    let output = UploadPartCopyOutput {
        copy_part_result: Some(CopyPartResult {
            e_tag: Some(meta::etag(&etag)),
            last_modified: Some(meta::timestamp(meta::now_ms())),
            ..CopyPartResult::default()
        }),
        ..UploadPartCopyOutput::default()
    };
    Ok(S3Response::new(output))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_source_ranges_must_lie_inside_the_source() {
        assert_eq!(source_range(None, 10).expect("whole"), 0..10);
        assert_eq!(source_range(Some("bytes=2-5"), 10).expect("inside"), 2..6);
        assert!(source_range(Some("bytes=2-10"), 10).is_err());
        assert!(source_range(Some("bytes=-3"), 10).is_err());
        assert!(source_range(Some("nonsense"), 10).is_err());
    }
}
