//! Multipart uploads. A part is written like an object (its own uid, GC
//! entry and data) and recorded with `ns.put_part`, which from then on
//! references it; completion is a guarded name commit of a fresh uid
//! naming the manifest (it holds no data, so it has no GC entry), whose
//! ETag is the MD5 of the parts' binary MD5s followed by `-N`.

use std::sync::Arc;

use s3s::dto::{
    AbortMultipartUploadInput, AbortMultipartUploadOutput, CommonPrefix, CompleteMultipartUploadInput,
    CompleteMultipartUploadOutput, CreateMultipartUploadInput, CreateMultipartUploadOutput, Initiator,
    ListMultipartUploadsInput, ListMultipartUploadsOutput, ListPartsInput, ListPartsOutput, MultipartUpload, Owner,
    Part, UploadPartInput, UploadPartOutput,
};
use s3s::{s3_error, S3Error, S3Request, S3Response, S3Result};
use tessera_common::ns_api::{
    CompleteUploadReq, CreateUploadReq, ListPartsReq, ListUploadsReq, PartInfo, PutPartReq, UploadMeta, UploadReq,
};

use super::digest::{hex, unhex, BodyDigest, ExpectedChecksums};
use super::meta::{self, check_key, Headers};
use super::objects::{body_len, commit_condition, precheck, receive, Received};
use crate::backend::Backend;
use crate::errors::{ns_error, os_error};
use crate::failpoints::WriteStep;
use crate::write::Upload;

/// S3's largest part.
pub const PART_BYTES_MAX: u64 = 5 << 30;
const PART_NUMBER_MAX: i32 = 10_000;
/// Entries of one listing at most.
const PAGE_MAX: i32 = 1000;

fn upload_req(bucket: &str, key: &str, upload_id: &str) -> UploadReq {
    UploadReq {
        bucket: bucket.to_string(),
        key: key.to_string(),
        upload_id: upload_id.to_string(),
    }
}

fn page_size(requested: Option<i32>) -> Result<u32, S3Error> {
    match requested {
        None => Ok(PAGE_MAX as u32),
        Some(n) if n < 0 => Err(s3_error!(InvalidArgument, "a negative page size")),
        Some(n) => Ok(n.min(PAGE_MAX) as u32),
    }
}

pub async fn create(
    backend: &Backend,
    req: S3Request<CreateMultipartUploadInput>,
) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
    let input = req.input;
    check_key(&input.key)?;
    let headers = Headers {
        content_encoding: input.content_encoding,
        content_disposition: input.content_disposition,
        content_language: input.content_language,
        cache_control: input.cache_control,
        expires: input.expires,
    };
    let request = CreateUploadReq {
        bucket: input.bucket.clone(),
        key: input.key.clone(),
        meta: UploadMeta {
            content_type: input.content_type,
            user_meta: meta::user_meta(input.metadata)?,
            system_meta: headers.to_system_meta(),
        },
    };
    let upload_id = backend.ns.create_upload(&request).await.map_err(ns_error)?;
    let output = CreateMultipartUploadOutput {
        bucket: Some(input.bucket),
        key: Some(input.key),
        upload_id: Some(upload_id),
        ..CreateMultipartUploadOutput::default()
    };
    Ok(S3Response::new(output))
}

fn part_number(number: i32) -> Result<u32, S3Error> {
    if !(1..=PART_NUMBER_MAX).contains(&number) {
        return Err(s3_error!(
            InvalidArgument,
            "Part number must be an integer between 1 and 10000, inclusive"
        ));
    }
    Ok(number as u32)
}

/// Records a written part (step 5 for parts), then confirms it.
#[allow(clippy::too_many_arguments)]
pub async fn record_part(
    backend: &Arc<Backend>,
    bucket: &str,
    key: &str,
    upload_id: &str,
    number: i32,
    upload: &Upload,
    size: u64,
    etag: &str,
) -> Result<(), S3Error> {
    let request = PutPartReq {
        upload: upload_req(bucket, key, upload_id),
        part: PartInfo {
            part_number: part_number(number)?,
            uid: upload.uid,
            size,
            etag: etag.to_string(),
            partition: upload.partition,
        },
    };
    backend.ns.put_part(&request).await.map_err(ns_error)?;
    backend.confirm_later(upload.uid)?;
    Ok(())
}

pub async fn upload_part(
    backend: &Arc<Backend>,
    req: S3Request<UploadPartInput>,
) -> S3Result<S3Response<UploadPartOutput>> {
    let trailers = req.trailing_headers.clone();
    let input = req.input;
    part_number(input.part_number)?;
    let declared = body_len(input.content_length, PART_BYTES_MAX)?;
    let bucket = backend
        .bucket(&input.bucket)
        .await
        .map_err(ns_error)?
        .ok_or_else(|| s3_error!(NoSuchBucket))?;
    let digest = BodyDigest::new(ExpectedChecksums {
        crc32: input.checksum_crc32,
        crc32c: input.checksum_crc32c,
        crc64nvme: input.checksum_crc64nvme,
        sha1: input.checksum_sha1,
        sha256: input.checksum_sha256,
        algorithm: input.checksum_algorithm,
        content_md5: input.content_md5,
    })?;
    // Fail fast on an unknown upload before streaming the body.
    let probe = ListPartsReq {
        upload: upload_req(&input.bucket, &input.key, &input.upload_id),
        part_number_marker: 0,
        max_parts: 0,
    };
    backend.ns.list_parts(&probe).await.map_err(ns_error)?;
    let mut upload = backend.begin_write(None, bucket.policy, declared.unwrap_or(0)).await?;
    let body = Received {
        body: input.body,
        declared,
        len_max: PART_BYTES_MAX,
        trailers,
    };
    let (size, digests) = receive(backend, &mut upload, body, digest).await?;
    let etag = hex(&digests.md5);
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
    let find = |name: &str| {
        digests
            .checksums
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    use tessera_common::ns_api::system_meta as sm;
    let output = UploadPartOutput {
        e_tag: Some(meta::etag(&etag)),
        checksum_crc32: find(sm::CHECKSUM_CRC32),
        checksum_crc32c: find(sm::CHECKSUM_CRC32C),
        checksum_crc64nvme: find(sm::CHECKSUM_CRC64NVME),
        checksum_sha1: find(sm::CHECKSUM_SHA1),
        checksum_sha256: find(sm::CHECKSUM_SHA256),
        ..UploadPartOutput::default()
    };
    Ok(S3Response::new(output))
}

/// The ETag of a completed upload: MD5 of the parts' binary MD5s, `-N`.
fn multipart_etag(part_etags: &[String]) -> Result<String, S3Error> {
    use s3s::crypto::{Checksum, Md5};
    let mut md5 = Md5::new();
    for (i, etag) in part_etags.iter().enumerate() {
        let binary = unhex(etag.trim_matches('"'))
            .filter(|b| b.len() == 16)
            .ok_or_else(|| s3_error!(InvalidPart, "part {}: not an ETag this service issued", i + 1))?;
        md5.update(&binary);
    }
    Ok(format!("{}-{}", hex(&md5.finalize()), part_etags.len()))
}

pub async fn complete(
    backend: &Arc<Backend>,
    req: S3Request<CompleteMultipartUploadInput>,
) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
    let input = req.input;
    check_key(&input.key)?;
    let listed = input
        .multipart_upload
        .and_then(|m| m.parts)
        .filter(|parts| !parts.is_empty())
        .ok_or_else(|| s3_error!(MalformedXML, "the request names no parts"))?;
    let mut parts = Vec::with_capacity(listed.len());
    for part in listed {
        let (Some(number), Some(etag)) = (part.part_number, part.e_tag) else {
            return Err(s3_error!(MalformedXML, "a part lacks its PartNumber or ETag"));
        };
        parts.push((part_number(number)?, etag.value().trim_matches('"').to_string()));
    }
    let etags: Vec<String> = parts.iter().map(|(_, e)| e.clone()).collect();
    let etag = multipart_etag(&etags)?;
    let condition = commit_condition(input.if_match, input.if_none_match)?;
    precheck(backend, &input.bucket, &input.key, &condition).await?;
    let uid = backend.fresh_uid().await;
    let ttl = std::time::Duration::from_millis(backend.settings.guard_ttl_ms);
    backend
        .ns
        .create_guard(&input.bucket, &input.key, uid, ttl)
        .await
        .map_err(ns_error)?;
    backend.failpoints.check(WriteStep::Guard)?;
    let request = CompleteUploadReq {
        upload: upload_req(&input.bucket, &input.key, &input.upload_id),
        uid,
        etag: etag.clone(),
        parts,
        partition: backend.os.partition_of(uid).map_err(os_error)?,
        condition,
    };
    backend.ns.complete_upload(&request).await.map_err(ns_error)?;
    let output = CompleteMultipartUploadOutput {
        location: Some(format!("/{}/{}", input.bucket, input.key)),
        bucket: Some(input.bucket),
        key: Some(input.key),
        e_tag: Some(meta::etag(&etag)),
        ..CompleteMultipartUploadOutput::default()
    };
    Ok(S3Response::new(output))
}

pub async fn abort(
    backend: &Backend,
    req: S3Request<AbortMultipartUploadInput>,
) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
    let input = req.input;
    let request = upload_req(&input.bucket, &input.key, &input.upload_id);
    backend.ns.abort_upload(&request).await.map_err(ns_error)?;
    Ok(S3Response::new(AbortMultipartUploadOutput::default()))
}

fn owner(name: &str) -> Owner {
    Owner {
        display_name: Some(name.to_string()),
        id: Some(name.to_string()),
    }
}

pub async fn list_parts(backend: &Backend, req: S3Request<ListPartsInput>) -> S3Result<S3Response<ListPartsOutput>> {
    let input = req.input;
    let marker = input.part_number_marker.unwrap_or(0).max(0) as u32;
    let max_parts = page_size(input.max_parts)?;
    let request = ListPartsReq {
        upload: upload_req(&input.bucket, &input.key, &input.upload_id),
        part_number_marker: marker,
        max_parts,
    };
    let page = backend.ns.list_parts(&request).await.map_err(ns_error)?;
    let initiated = meta::timestamp(page.upload.initiated_ms);
    let parts = page
        .parts
        .iter()
        .map(|p| Part {
            part_number: Some(p.part_number as i32),
            e_tag: Some(meta::etag(&p.etag)),
            size: Some(i64::try_from(p.size).unwrap_or(i64::MAX)),
            last_modified: Some(initiated.clone()),
            ..Part::default()
        })
        .collect();
    let bucket_owner = backend.bucket(&input.bucket).await.map_err(ns_error)?.map(|b| b.owner);
    let output = ListPartsOutput {
        bucket: Some(input.bucket),
        key: Some(input.key),
        upload_id: Some(input.upload_id),
        parts: Some(parts),
        is_truncated: Some(page.is_truncated),
        next_part_number_marker: page.next_part_number_marker.map(|n| n as i32),
        part_number_marker: Some(marker as i32),
        max_parts: Some(max_parts as i32),
        owner: bucket_owner.as_deref().map(owner),
        initiator: bucket_owner.map(|o| Initiator {
            display_name: Some(o.clone()),
            id: Some(o),
        }),
        storage_class: Some(String::from("STANDARD").into()),
        ..ListPartsOutput::default()
    };
    Ok(S3Response::new(output))
}

pub async fn list_uploads(
    backend: &Backend,
    req: S3Request<ListMultipartUploadsInput>,
) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
    let input = req.input;
    let max_uploads = page_size(input.max_uploads)?;
    let request = ListUploadsReq {
        bucket: input.bucket.clone(),
        prefix: input.prefix.clone().unwrap_or_default(),
        delimiter: input.delimiter.clone().filter(|d| !d.is_empty()),
        key_marker: input.key_marker.clone(),
        upload_id_marker: input.upload_id_marker.clone(),
        max_uploads,
    };
    let page = backend.ns.list_uploads(&request).await.map_err(ns_error)?;
    let uploads = page
        .uploads
        .iter()
        .map(|u| MultipartUpload {
            key: Some(u.key.clone()),
            upload_id: Some(u.upload_id.clone()),
            initiated: Some(meta::timestamp(u.initiated_ms)),
            storage_class: Some(String::from("STANDARD").into()),
            ..MultipartUpload::default()
        })
        .collect();
    let (next_key_marker, next_upload_id_marker) = match page.next_marker {
        Some((key, id)) => (Some(key), id),
        None => (None, None),
    };
    let common_prefixes: Vec<CommonPrefix> = page
        .common_prefixes
        .into_iter()
        .map(|p| CommonPrefix { prefix: Some(p) })
        .collect();
    let output = ListMultipartUploadsOutput {
        bucket: Some(input.bucket),
        prefix: input.prefix,
        key_marker: input.key_marker,
        upload_id_marker: input.upload_id_marker,
        max_uploads: Some(max_uploads as i32),
        is_truncated: Some(page.is_truncated),
        next_key_marker,
        next_upload_id_marker,
        uploads: Some(uploads),
        common_prefixes: (!common_prefixes.is_empty()).then_some(common_prefixes),
        delimiter: input.delimiter,
        ..ListMultipartUploadsOutput::default()
    };
    Ok(S3Response::new(output))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_etags_are_md5_of_md5s() {
        // Two parts whose MD5s are md5("a") and md5("b").
        let parts = [
            "0cc175b9c0f1b6a831c399e269772661".to_string(),
            "\"92eb5ffee6ae2fec3ad71c777531578f\"".to_string(),
        ];
        let etag = multipart_etag(&parts).expect("etag");
        assert!(etag.ends_with("-2"), "{etag}");
        assert_eq!(etag.len(), 32 + 2);
        assert!(multipart_etag(&["xyz".to_string()]).is_err());
    }

    #[test]
    fn part_numbers_are_bounded() {
        assert_eq!(part_number(1).expect("first"), 1);
        assert_eq!(part_number(10_000).expect("last"), 10_000);
        assert!(part_number(0).is_err());
        assert!(part_number(10_001).is_err());
    }
}
