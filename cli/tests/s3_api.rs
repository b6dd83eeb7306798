//! The S3 API of the gateway end to end, through the official AWS SDK for
//! Rust, on a whole in-process cluster (name server, six chunk servers
//! with EC 4+2, object server, gateway): every operation the gateway
//! implements answers what S3 answers.
//!
//! - Buckets: ListBuckets (per owner), CreateBucket (and its two
//!   "already exists" refusals), HeadBucket, GetBucketLocation,
//!   DeleteBucket (refused while an object or a multipart upload is in it).
//! - Objects: PUT/GET byte for byte from 0 bytes to 9 MiB + 3 (across the
//!   gateway's 4 MiB write pieces), ranges, HEAD, stored headers and user
//!   metadata, Content-MD5 and flexible checksums (sent as headers, and
//!   as `aws-chunked` trailers by the SDK's default client), deletes
//!   (single and batch, quiet and verbose), hostile key names and the
//!   1024-byte key limit.
//! - CopyObject (COPY / REPLACE metadata, copy onto itself, conditional
//!   copy sources, multipart sources) and conditional PUT / GET / HEAD.
//! - ListObjects v1 and v2: prefixes, delimiters, pagination (the pages
//!   concatenate to the full sorted listing), start-after, URL encoding,
//!   owners.
//! - Multipart uploads: parts (replaced when uploaded again), ListParts
//!   paging, ListMultipartUploads (prefix, delimiter), the
//!   `md5-of-md5s-N` ETag, ranges and part numbers across parts,
//!   UploadPartCopy, conditional completions, completions of a subset of
//!   the parts, abort, and the completion refusals.
//! - Access: other users' keys are refused until granted, grants are read
//!   or write, revoked keys stop working within seconds, presigned GETs
//!   and PUTs work from a plain HTTP client, and virtual-host style
//!   addressing works.
//! - Every answer carries `x-amz-request-id`, and every error's XML names
//!   the same id.
//!
//! Every test starts one cluster and runs many checks; tests run one at a
//! time (the machine has two cores).

#[path = "support/s3.rs"]
mod s3;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::{ByteStream, DateTime, DateTimeFormat};
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumMode, CompletedMultipartUpload, CompletedPart, Delete, EncodingType, MetadataDirective,
    ObjectIdentifier,
};
use aws_sdk_s3::Client;
use s3::{
    assert_refused, base64, body_bytes, crc32_b64, crc32c_b64, default_checksum_client, eventually, md5,
    multipart_etag, ok, pattern, quoted_md5, raw_get, raw_url, sha256_b64, virtual_host_client, S3Cluster, KIB, MIB,
    URI,
};
use tessera_common::ns_api::Permission;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a grant or a revocation may take to reach the gateway (it
/// caches them for about a second).
const PROPAGATION: Duration = Duration::from_secs(5);

/// Asserts two byte strings are equal without printing megabytes.
#[track_caller]
fn assert_bytes(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let first_difference = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: {} bytes received, {} expected; first difference at {first_difference:?}",
            got.len(),
            want.len()
        );
    }
}

async fn create_bucket(client: &Client, bucket: &str) {
    ok(
        client.create_bucket().bucket(bucket).send().await,
        &format!("CreateBucket {bucket}"),
    );
}

/// PUT `data` at `bucket/key`; returns the quoted ETag.
async fn put_data(client: &Client, bucket: &str, key: &str, data: &[u8]) -> String {
    let output = ok(
        client
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(data.to_vec()))
            .send()
            .await,
        &format!("PutObject {bucket}/{key}"),
    );
    output.e_tag().expect("PutObject returns an ETag").to_string()
}

/// GET `bucket/key` whole.
async fn get(client: &Client, bucket: &str, key: &str) -> Vec<u8> {
    let what = format!("GetObject {bucket}/{key}");
    let output = ok(client.get_object().bucket(bucket).key(key).send().await, &what);
    body_bytes(output.body, &what).await
}

/// GET `bucket/key` with a `Range` header: (Content-Range, body).
async fn get_range(client: &Client, bucket: &str, key: &str, range: &str) -> (Option<String>, Vec<u8>) {
    let what = format!("GetObject {bucket}/{key} Range: {range}");
    let output = ok(
        client.get_object().bucket(bucket).key(key).range(range).send().await,
        &what,
    );
    let content_range = output.content_range().map(String::from);
    (content_range, body_bytes(output.body, &what).await)
}

/// Every key of `bucket` under `prefix`, from one ListObjectsV2 page.
async fn keys_under(client: &Client, bucket: &str, prefix: &str) -> Vec<String> {
    let output = ok(
        client.list_objects_v2().bucket(bucket).prefix(prefix).send().await,
        &format!("ListObjectsV2 {bucket} prefix {prefix:?}"),
    );
    assert_eq!(output.is_truncated(), Some(false), "one page holds {prefix:?}");
    output
        .contents()
        .iter()
        .filter_map(|o| o.key())
        .map(String::from)
        .collect()
}

async fn bucket_names(client: &Client) -> Vec<String> {
    let output = ok(client.list_buckets().send().await, "ListBuckets");
    output
        .buckets()
        .iter()
        .filter_map(|b| b.name())
        .map(String::from)
        .collect()
}

fn metadata(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Percent-encodes all but unreserved characters and `/` (a copy source).
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Decodes a key of an `encoding-type=url` listing as botocore does
/// (`unquote_plus`).
fn url_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = text.get(i + 1..i + 3).expect("two hex digits after %");
                out.push(u8::from_str_radix(hex, 16).expect("a percent escape"));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            other => {
                out.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8(out).expect("a decoded key is UTF-8")
}

fn now_secs() -> i64 {
    DateTime::from(SystemTime::now()).secs()
}

fn completed(parts: &[(i32, &str)]) -> CompletedMultipartUpload {
    let parts = parts
        .iter()
        .map(|(number, etag)| CompletedPart::builder().part_number(*number).e_tag(*etag).build())
        .collect();
    CompletedMultipartUpload::builder().set_parts(Some(parts)).build()
}

fn identifiers(keys: &[&str]) -> Vec<ObjectIdentifier> {
    keys.iter()
        .map(|k| {
            ObjectIdentifier::builder()
                .key(*k)
                .build()
                .expect("an object identifier")
        })
        .collect()
}

/// Writes `data` to a file in `dir` and streams it: the SDK sends a body
/// it does not hold in memory as `aws-chunked`.
async fn file_body(dir: &std::path::Path, name: &str, data: &[u8]) -> ByteStream {
    let path = dir.join(name);
    std::fs::write(&path, data).expect("write the body file");
    ByteStream::from_path(&path)
        .await
        .expect("a streaming body from the file")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn buckets_are_created_listed_located_and_deleted_by_their_owner() {
    let _serial = SERIAL.lock().await;
    let s3 = S3Cluster::start().await;
    let bob_key = s3.cluster.create_key("bob").await.expect("bob's access key");
    let alice = s3.client(&s3.alice);
    let bob = s3.client(&bob_key);

    assert!(bucket_names(&alice).await.is_empty(), "a new user owns no bucket");
    for bucket in ["beta", "alpha"] {
        create_bucket(&alice, bucket).await;
    }
    let listed = ok(alice.list_buckets().send().await, "ListBuckets");
    let names: Vec<&str> = listed.buckets().iter().filter_map(|b| b.name()).collect();
    assert_eq!(
        names,
        ["alpha", "beta"],
        "ListBuckets lists the owner's buckets in order"
    );
    assert!(
        listed.buckets().iter().all(|b| b.creation_date().is_some()),
        "every bucket has a creation date"
    );
    assert_eq!(
        listed.owner().and_then(|o| o.id()),
        Some("alice"),
        "ListBuckets names its owner"
    );
    assert!(bucket_names(&bob).await.is_empty(), "bob does not see alice's buckets");
    let prefixed = ok(alice.list_buckets().prefix("al").send().await, "ListBuckets prefix");
    let names: Vec<&str> = prefixed.buckets().iter().filter_map(|b| b.name()).collect();
    assert_eq!(names, ["alpha"], "ListBuckets with a prefix");

    assert_refused(
        alice.create_bucket().bucket("alpha").send().await,
        409,
        Some("BucketAlreadyOwnedByYou"),
        "alice creates her bucket again",
    );
    assert_refused(
        bob.create_bucket().bucket("alpha").send().await,
        409,
        Some("BucketAlreadyExists"),
        "bob creates alice's bucket",
    );
    assert_refused(
        alice.create_bucket().bucket("Not_A_Bucket").send().await,
        400,
        Some("InvalidBucketName"),
        "a bucket name with capitals and underscores",
    );

    ok(alice.head_bucket().bucket("alpha").send().await, "HeadBucket alpha");
    assert_refused(
        alice.head_bucket().bucket("missing").send().await,
        404,
        None,
        "HeadBucket of a missing bucket",
    );
    let location = ok(
        alice.get_bucket_location().bucket("alpha").send().await,
        "GetBucketLocation",
    );
    assert_eq!(
        location.location_constraint().map(|c| c.as_str()).unwrap_or_default(),
        "",
        "us-east-1 is the empty location constraint"
    );
    assert_refused(
        alice.get_bucket_location().bucket("missing").send().await,
        404,
        Some("NoSuchBucket"),
        "GetBucketLocation of a missing bucket",
    );

    put_data(&alice, "alpha", "object", b"x").await;
    assert_refused(
        alice.delete_bucket().bucket("alpha").send().await,
        409,
        Some("BucketNotEmpty"),
        "DeleteBucket of a bucket holding an object",
    );
    ok(
        alice.delete_object().bucket("alpha").key("object").send().await,
        "DeleteObject",
    );
    let upload = ok(
        alice
            .create_multipart_upload()
            .bucket("alpha")
            .key("pending")
            .send()
            .await,
        "CreateMultipartUpload",
    );
    let upload_id = upload.upload_id().expect("an upload id");
    assert_refused(
        alice.delete_bucket().bucket("alpha").send().await,
        409,
        Some("BucketNotEmpty"),
        "DeleteBucket of a bucket with a multipart upload in progress",
    );
    ok(
        alice
            .abort_multipart_upload()
            .bucket("alpha")
            .key("pending")
            .upload_id(upload_id)
            .send()
            .await,
        "AbortMultipartUpload",
    );
    assert_refused(
        bob.delete_bucket().bucket("alpha").send().await,
        403,
        Some("AccessDenied"),
        "bob deletes alice's bucket",
    );
    ok(
        alice.delete_bucket().bucket("alpha").send().await,
        "DeleteBucket of an empty bucket",
    );
    assert_refused(
        alice.head_bucket().bucket("alpha").send().await,
        404,
        None,
        "HeadBucket after DeleteBucket",
    );
    assert_refused(
        alice.delete_bucket().bucket("alpha").send().await,
        404,
        Some("NoSuchBucket"),
        "DeleteBucket of a deleted bucket",
    );
    assert_refused(
        alice
            .put_object()
            .bucket("alpha")
            .key("k")
            .body(ByteStream::from_static(b"x"))
            .send()
            .await,
        404,
        Some("NoSuchBucket"),
        "PutObject into a deleted bucket",
    );
    assert_eq!(
        bucket_names(&alice).await,
        ["beta"],
        "the deleted bucket is no longer listed"
    );
    create_bucket(&bob, "alpha").await;
    assert_eq!(
        bucket_names(&bob).await,
        ["alpha"],
        "a deleted bucket's name is free again"
    );
    s3.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn objects_round_trip_with_ranges_headers_checksums_and_deletes() {
    let _serial = SERIAL.lock().await;
    let s3 = S3Cluster::start().await;
    let client = s3.client(&s3.alice);
    let bucket = "objects";
    create_bucket(&client, bucket).await;

    // Sizes around the gateway's 4 MiB write and read pieces.
    let sizes = [0, 1, 4 * KIB, MIB, 9 * MIB + 3];
    for (seed, size) in sizes.into_iter().enumerate() {
        let data = pattern(size, seed as u64);
        let key = format!("sized/{size}");
        let before = now_secs();
        let put = ok(
            client
                .put_object()
                .bucket(bucket)
                .key(&key)
                .content_type("application/x-tessera-test")
                .body(ByteStream::from(data.clone()))
                .send()
                .await,
            &format!("PUT {size} bytes"),
        );
        let after = now_secs();
        assert_eq!(
            put.e_tag(),
            Some(quoted_md5(&data).as_str()),
            "the ETag of {size} bytes is their MD5"
        );
        let got = ok(client.get_object().bucket(bucket).key(&key).send().await, "GET");
        assert_eq!(
            got.content_length(),
            Some(size as i64),
            "GET Content-Length of {size} bytes"
        );
        assert_eq!(got.e_tag(), put.e_tag(), "GET ETag of {size} bytes");
        assert_bytes(
            &body_bytes(got.body, "GET").await,
            &data,
            &format!("GET of {size} bytes"),
        );
        let head = ok(client.head_object().bucket(bucket).key(&key).send().await, "HEAD");
        assert_eq!(
            head.content_length(),
            Some(size as i64),
            "HEAD Content-Length of {size} bytes"
        );
        assert_eq!(head.e_tag(), put.e_tag(), "HEAD ETag of {size} bytes");
        assert_eq!(
            head.content_type(),
            Some("application/x-tessera-test"),
            "HEAD Content-Type"
        );
        let modified = head.last_modified().expect("HEAD has Last-Modified").secs();
        assert!(
            (before - 1..=after + 1).contains(&modified),
            "Last-Modified {modified} is the time of the PUT ({before}..={after})"
        );
    }

    // Ranges of the 9 MiB + 3 object.
    let size = 9 * MIB + 3;
    let data = pattern(size, 4);
    let key = format!("sized/{size}");
    let piece = 4 * MIB;
    let cases = [
        ("bytes=5-10".to_string(), 5..11),
        ("bytes=100-".to_string(), 100..size),
        ("bytes=-7".to_string(), size - 7..size),
        ("bytes=0-0".to_string(), 0..1),
        (format!("bytes={}-{}", piece - 10, piece + 9), piece - 10..piece + 10),
        (format!("bytes={}-{}", size - 5, size + 1000), size - 5..size),
    ];
    for (range, want) in cases {
        let (content_range, body) = get_range(&client, bucket, &key, &range).await;
        let expected = format!("bytes {}-{}/{size}", want.start, want.end - 1);
        assert_eq!(
            content_range.as_deref(),
            Some(expected.as_str()),
            "Content-Range of {range}"
        );
        assert_bytes(&body, &data[want], &range);
    }
    assert_refused(
        client
            .get_object()
            .bucket(bucket)
            .key(&key)
            .range(format!("bytes={size}-"))
            .send()
            .await,
        416,
        Some("InvalidRange"),
        "a range starting at the object's end",
    );
    assert_refused(
        client
            .get_object()
            .bucket(bucket)
            .key("sized/0")
            .range("bytes=0-0")
            .send()
            .await,
        416,
        Some("InvalidRange"),
        "a range of an empty object",
    );
    assert_refused(
        client.get_object().bucket(bucket).key("never-written").send().await,
        404,
        Some("NoSuchKey"),
        "GET of a missing key",
    );
    assert_refused(
        client.head_object().bucket(bucket).key("never-written").send().await,
        404,
        None,
        "HEAD of a missing key",
    );

    // Stored headers and user metadata come back on GET and HEAD.
    let expires = DateTime::from_secs(1_900_000_000);
    ok(
        client
            .put_object()
            .bucket(bucket)
            .key("described")
            .body(ByteStream::from_static(b"described body"))
            .content_type("text/plain; charset=utf-8")
            .content_encoding("gzip")
            .content_disposition("attachment; filename=\"report.txt\"")
            .content_language("de-CH")
            .cache_control("max-age=60, private")
            .expires(expires)
            .metadata("color", "blue")
            .metadata("purpose", "api test")
            .send()
            .await,
        "PUT with headers and metadata",
    );
    let want_meta = metadata(&[("color", "blue"), ("purpose", "api test")]);
    let got = ok(
        client.get_object().bucket(bucket).key("described").send().await,
        "GET described",
    );
    assert_eq!(got.metadata(), Some(&want_meta), "GET user metadata");
    assert_eq!(
        got.content_type(),
        Some("text/plain; charset=utf-8"),
        "GET Content-Type"
    );
    assert_eq!(got.content_encoding(), Some("gzip"), "GET Content-Encoding");
    assert_eq!(
        got.content_disposition(),
        Some("attachment; filename=\"report.txt\""),
        "GET Content-Disposition"
    );
    assert_eq!(got.content_language(), Some("de-CH"), "GET Content-Language");
    assert_eq!(got.cache_control(), Some("max-age=60, private"), "GET Cache-Control");
    let got_expires = got.expires_string().expect("GET has Expires");
    assert_eq!(
        DateTime::from_str(got_expires, DateTimeFormat::HttpDate)
            .map(|t| t.secs())
            .ok(),
        Some(expires.secs()),
        "GET Expires {got_expires:?}"
    );
    let head = ok(
        client.head_object().bucket(bucket).key("described").send().await,
        "HEAD described",
    );
    assert_eq!(head.metadata(), Some(&want_meta), "HEAD user metadata");
    assert_eq!(
        head.content_type(),
        Some("text/plain; charset=utf-8"),
        "HEAD Content-Type"
    );
    assert_eq!(head.content_encoding(), Some("gzip"), "HEAD Content-Encoding");
    assert_eq!(
        head.content_disposition(),
        Some("attachment; filename=\"report.txt\""),
        "HEAD Content-Disposition"
    );
    assert_eq!(head.content_language(), Some("de-CH"), "HEAD Content-Language");
    assert_eq!(head.cache_control(), Some("max-age=60, private"), "HEAD Cache-Control");
    let head_expires = head.expires_string().expect("HEAD has Expires");
    assert_eq!(
        DateTime::from_str(head_expires, DateTimeFormat::HttpDate)
            .map(|t| t.secs())
            .ok(),
        Some(expires.secs()),
        "HEAD Expires {head_expires:?}"
    );
    let overridden = ok(
        client
            .get_object()
            .bucket(bucket)
            .key("described")
            .response_content_type("application/x-override")
            .response_cache_control("no-cache")
            .send()
            .await,
        "GET with response-content-type",
    );
    assert_eq!(
        overridden.content_type(),
        Some("application/x-override"),
        "response-content-type"
    );
    assert_eq!(overridden.cache_control(), Some("no-cache"), "response-cache-control");

    // Content-MD5 and flexible checksums are verified; a mismatch names
    // nothing.
    let data = pattern(100 * KIB + 5, 40);
    let md5_b64 = base64(&md5(&data));
    ok(
        client
            .put_object()
            .bucket(bucket)
            .key("md5")
            .content_md5(&md5_b64)
            .body(ByteStream::from(data.clone()))
            .send()
            .await,
        "PUT with a correct Content-MD5",
    );
    assert_refused(
        client
            .put_object()
            .bucket(bucket)
            .key("md5")
            .content_md5(base64(&md5(b"other bytes")))
            .body(ByteStream::from_static(b"replacement"))
            .send()
            .await,
        400,
        Some("BadDigest"),
        "PUT with a wrong Content-MD5",
    );
    assert_bytes(
        &get(&client, bucket, "md5").await,
        &data,
        "the object a bad PUT did not replace",
    );

    // Flexible checksums. `s3_client` (checksums only when required)
    // sends a value the test computed; the SDK's default client computes
    // them itself: as a header for a body in memory, as an aws-chunked
    // trailer for a streamed one.
    let (chunky, wire) = default_checksum_client(&s3.endpoint, &s3.alice);
    let put = ok(
        client
            .put_object()
            .bucket(bucket)
            .key("crc32c")
            .checksum_crc32_c(crc32c_b64(&data))
            .body(ByteStream::from(data.clone()))
            .send()
            .await,
        "PUT with x-amz-checksum-crc32c",
    );
    assert_eq!(
        put.checksum_crc32_c(),
        Some(crc32c_b64(&data).as_str()),
        "PUT echoes the CRC32C"
    );
    let got = ok(
        client
            .get_object()
            .bucket(bucket)
            .key("crc32c")
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await,
        "GET with checksum mode (the SDK validates the CRC32C)",
    );
    assert_eq!(
        got.checksum_crc32_c(),
        Some(crc32c_b64(&data).as_str()),
        "GET returns the stored CRC32C"
    );
    assert_bytes(&body_bytes(got.body, "GET crc32c").await, &data, "GET crc32c");
    let head = ok(
        client
            .head_object()
            .bucket(bucket)
            .key("crc32c")
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await,
        "HEAD with checksum mode",
    );
    assert_eq!(
        head.checksum_crc32_c(),
        Some(crc32c_b64(&data).as_str()),
        "HEAD returns the stored CRC32C"
    );
    let plain = ok(
        client.get_object().bucket(bucket).key("crc32c").send().await,
        "GET without checksum mode",
    );
    assert_eq!(
        plain.checksum_crc32_c(),
        None,
        "checksums only come back in checksum mode"
    );

    let put = ok(
        chunky
            .put_object()
            .bucket(bucket)
            .key("sha256")
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .body(ByteStream::from(data.clone()))
            .send()
            .await,
        "PUT with the SDK's x-amz-checksum-sha256",
    );
    assert_eq!(
        wire.last_header("x-amz-checksum-sha256"),
        Some(sha256_b64(&data)),
        "the SDK sent the SHA-256 as a header"
    );
    assert_eq!(
        put.checksum_sha256(),
        Some(sha256_b64(&data).as_str()),
        "PUT echoes the SHA-256"
    );
    let got = ok(
        chunky
            .get_object()
            .bucket(bucket)
            .key("sha256")
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await,
        "GET sha256 with checksum mode",
    );
    assert_eq!(
        got.checksum_sha256(),
        Some(sha256_b64(&data).as_str()),
        "GET returns the stored SHA-256"
    );
    for (algorithm, wrong) in [
        ("crc32c", crc32c_b64(b"other bytes")),
        ("sha256", sha256_b64(b"other bytes")),
    ] {
        let request = client
            .put_object()
            .bucket(bucket)
            .key("bad-checksum")
            .body(ByteStream::from(data.clone()));
        let request = match algorithm {
            "crc32c" => request.checksum_crc32_c(wrong),
            _ => request.checksum_sha256(wrong),
        };
        assert_refused(
            request.send().await,
            400,
            Some("BadDigest"),
            &format!("PUT with a wrong x-amz-checksum-{algorithm}"),
        );
    }
    assert_refused(
        client.head_object().bucket(bucket).key("bad-checksum").send().await,
        404,
        None,
        "a PUT refused for its checksum names nothing",
    );

    let files = tempfile::tempdir().expect("a directory for body files");
    let streamed = pattern(5 * MIB + 17, 41);
    let put = ok(
        chunky
            .put_object()
            .bucket(bucket)
            .key("chunked")
            .body(file_body(files.path(), "chunked", &streamed).await)
            .send()
            .await,
        "PUT of an aws-chunked body with a trailing checksum",
    );
    assert!(
        wire.last_header("content-encoding")
            .is_some_and(|v| v.contains("aws-chunked")),
        "the SDK sent aws-chunked: {:?}",
        wire.last()
    );
    assert_eq!(
        wire.last_header("x-amz-trailer").as_deref(),
        Some("x-amz-checksum-crc32"),
        "the trailer announced"
    );
    assert_eq!(
        put.e_tag(),
        Some(quoted_md5(&streamed).as_str()),
        "the ETag of the decoded body"
    );
    assert_eq!(
        put.checksum_crc32(),
        Some(crc32_b64(&streamed).as_str()),
        "PUT echoes the trailer's CRC32"
    );
    let got = ok(
        chunky
            .get_object()
            .bucket(bucket)
            .key("chunked")
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await,
        "GET of the aws-chunked object (the SDK validates its CRC32)",
    );
    assert_eq!(
        got.checksum_crc32(),
        Some(crc32_b64(&streamed).as_str()),
        "GET returns the trailer's CRC32"
    );
    assert_bytes(
        &body_bytes(got.body, "GET chunked").await,
        &streamed,
        "GET of the aws-chunked upload",
    );
    let put = ok(
        chunky
            .put_object()
            .bucket(bucket)
            .key("chunked-crc32c")
            .checksum_algorithm(ChecksumAlgorithm::Crc32C)
            .body(file_body(files.path(), "chunked-crc32c", &data).await)
            .send()
            .await,
        "PUT of an aws-chunked body with a trailing CRC32C",
    );
    assert_eq!(
        wire.last_header("x-amz-trailer").as_deref(),
        Some("x-amz-checksum-crc32c"),
        "the CRC32C trailer announced"
    );
    assert_eq!(
        put.checksum_crc32_c(),
        Some(crc32c_b64(&data).as_str()),
        "PUT echoes the trailer's CRC32C"
    );
    let small = pattern(1000, 42);
    ok(
        chunky
            .put_object()
            .bucket(bucket)
            .key("default-crc32")
            .body(ByteStream::from(small.clone()))
            .send()
            .await,
        "PUT of an in-memory body by the default client",
    );
    assert_eq!(
        wire.last_header("x-amz-checksum-crc32"),
        Some(crc32_b64(&small)),
        "the default client sends the CRC32 of an in-memory body as a header"
    );
    let head = ok(
        client
            .head_object()
            .bucket(bucket)
            .key("default-crc32")
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await,
        "HEAD default-crc32",
    );
    assert_eq!(
        head.checksum_crc32(),
        Some(crc32_b64(&small).as_str()),
        "the header CRC32 is stored"
    );

    // DeleteObject, also of a missing key.
    ok(
        client.delete_object().bucket(bucket).key("sized/1").send().await,
        "DeleteObject",
    );
    assert_refused(
        client.get_object().bucket(bucket).key("sized/1").send().await,
        404,
        Some("NoSuchKey"),
        "GET of a deleted object",
    );
    ok(
        client.delete_object().bucket(bucket).key("never-written").send().await,
        "DeleteObject of a missing key succeeds",
    );
    // The status itself, through presigned DELETEs: 204 for an existing
    // and for a missing key.
    for key in ["sized/4096", "never-written"] {
        let config = PresigningConfig::expires_in(Duration::from_secs(300)).expect("a presigning config");
        let presigned = client.delete_object().bucket(bucket).key(key).presigned(config).await;
        let answer = raw_url("DELETE", presigned.expect("a presigned DELETE").uri(), b"").await;
        assert_eq!(answer.status, 204, "DELETE {key}: {}", answer.text());
    }
    assert_refused(
        client.head_object().bucket(bucket).key("sized/4096").send().await,
        404,
        None,
        "HEAD after a presigned DELETE",
    );

    // DeleteObjects, verbose then quiet.
    for key in ["batch/a", "batch/b", "batch/c", "batch/d", "batch/e"] {
        put_data(&client, bucket, key, key.as_bytes()).await;
    }
    let verbose = ok(
        client
            .delete_objects()
            .bucket(bucket)
            .delete(
                Delete::builder()
                    .set_objects(Some(identifiers(&["batch/a", "batch/b", "batch/c", "batch/missing"])))
                    .quiet(false)
                    .build()
                    .expect("a delete request"),
            )
            .send()
            .await,
        "DeleteObjects (verbose)",
    );
    let deleted: BTreeSet<&str> = verbose.deleted().iter().filter_map(|d| d.key()).collect();
    assert_eq!(
        deleted,
        BTreeSet::from(["batch/a", "batch/b", "batch/c", "batch/missing"]),
        "verbose DeleteObjects lists every key"
    );
    assert!(verbose.errors().is_empty(), "no errors: {:?}", verbose.errors());
    let quiet = ok(
        client
            .delete_objects()
            .bucket(bucket)
            .delete(
                Delete::builder()
                    .set_objects(Some(identifiers(&["batch/d", "batch/e"])))
                    .quiet(true)
                    .build()
                    .expect("a delete request"),
            )
            .send()
            .await,
        "DeleteObjects (quiet)",
    );
    assert!(
        quiet.deleted().is_empty(),
        "quiet DeleteObjects lists none: {:?}",
        quiet.deleted()
    );
    assert!(quiet.errors().is_empty(), "no errors: {:?}", quiet.errors());
    assert!(
        keys_under(&client, bucket, "batch/").await.is_empty(),
        "the batch is gone from the listing"
    );
    for key in ["batch/a", "batch/e"] {
        assert_refused(
            client.get_object().bucket(bucket).key(key).send().await,
            404,
            Some("NoSuchKey"),
            "GET after DeleteObjects",
        );
    }

    // Hostile key names round trip; 1025 bytes is too long.
    let long_key = "k".repeat(1024);
    let keys = [
        "ünïcødé/ключ/鍵.txt",
        "with space/and  two",
        "per%cent%20literal",
        "plus+sign+",
        "a/../b",
        "./dot/./segments",
        "trailing/",
        "double//slash",
        long_key.as_str(),
    ];
    create_bucket(&client, "keys").await;
    for key in keys {
        put_data(&client, "keys", key, key.as_bytes()).await;
        assert_bytes(
            &get(&client, "keys", key).await,
            key.as_bytes(),
            &format!("GET {key:?}"),
        );
        ok(
            client.head_object().bucket("keys").key(key).send().await,
            &format!("HEAD {key:?}"),
        );
    }
    let mut sorted: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    sorted.sort();
    assert_eq!(
        keys_under(&client, "keys", "").await,
        sorted,
        "the listing holds every key, sorted"
    );
    let too_long = "k".repeat(1025);
    assert_refused(
        client
            .put_object()
            .bucket("keys")
            .key(&too_long)
            .body(ByteStream::from_static(b"x"))
            .send()
            .await,
        400,
        Some("KeyTooLongError"),
        "PUT of a 1025-byte key",
    );
    assert_refused(
        client.get_object().bucket("keys").key(&too_long).send().await,
        400,
        Some("KeyTooLongError"),
        "GET of a 1025-byte key",
    );
    let batch = ok(
        client
            .delete_objects()
            .bucket("keys")
            .delete(
                Delete::builder()
                    .set_objects(Some(identifiers(&["plus+sign+", &too_long])))
                    .quiet(true)
                    .build()
                    .expect("a delete request"),
            )
            .send()
            .await,
        "DeleteObjects naming a 1025-byte key",
    );
    let errors: Vec<(Option<&str>, Option<&str>)> = batch.errors().iter().map(|e| (e.key(), e.code())).collect();
    assert_eq!(
        errors,
        [(Some(too_long.as_str()), Some("KeyTooLongError"))],
        "DeleteObjects reports the bad key, even when quiet"
    );
    assert_refused(
        client.head_object().bucket("keys").key("plus+sign+").send().await,
        404,
        None,
        "the good key of the batch was deleted",
    );

    // User metadata is limited to 2 KiB.
    assert_refused(
        client
            .put_object()
            .bucket(bucket)
            .key("fat-metadata")
            .metadata("big", "m".repeat(2100))
            .body(ByteStream::from_static(b"x"))
            .send()
            .await,
        400,
        Some("MetadataTooLarge"),
        "PUT with 2100 bytes of user metadata",
    );
    s3.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copies_and_conditional_requests_follow_s3() {
    let _serial = SERIAL.lock().await;
    let s3 = S3Cluster::start().await;
    let client = s3.client(&s3.alice);
    let bucket = "copies";
    create_bucket(&client, bucket).await;
    create_bucket(&client, "elsewhere").await;

    let source = pattern(300 * KIB + 1, 50);
    let source_key = "src dir/ü+%.bin";
    let source_path = format!("{bucket}/{}", url_encode(source_key));
    ok(
        client
            .put_object()
            .bucket(bucket)
            .key(source_key)
            .content_type("text/x-source")
            .cache_control("no-store")
            .metadata("color", "red")
            .body(ByteStream::from(source.clone()))
            .send()
            .await,
        "PUT the copy source",
    );
    let source_etag = quoted_md5(&source);

    // COPY keeps the source's metadata; REPLACE takes the request's.
    let copied = ok(
        client
            .copy_object()
            .bucket(bucket)
            .key("copy")
            .copy_source(&source_path)
            .send()
            .await,
        "CopyObject (COPY)",
    );
    assert_eq!(
        copied.copy_object_result().and_then(|r| r.e_tag()),
        Some(source_etag.as_str()),
        "the copy's ETag is the MD5 of the bytes"
    );
    assert!(
        copied.copy_object_result().and_then(|r| r.last_modified()).is_some(),
        "CopyObjectResult has LastModified"
    );
    assert_bytes(&get(&client, bucket, "copy").await, &source, "GET of the copy");
    let head = ok(
        client.head_object().bucket(bucket).key("copy").send().await,
        "HEAD copy",
    );
    assert_eq!(
        head.metadata(),
        Some(&metadata(&[("color", "red")])),
        "COPY keeps the user metadata"
    );
    assert_eq!(
        head.content_type(),
        Some("text/x-source"),
        "COPY keeps the Content-Type"
    );
    assert_eq!(head.cache_control(), Some("no-store"), "COPY keeps the stored headers");

    ok(
        client
            .copy_object()
            .bucket("elsewhere")
            .key("replaced")
            .copy_source(&source_path)
            .metadata_directive(MetadataDirective::Replace)
            .content_type("text/x-new")
            .metadata("color", "green")
            .send()
            .await,
        "CopyObject (REPLACE) to another bucket",
    );
    assert_bytes(
        &get(&client, "elsewhere", "replaced").await,
        &source,
        "GET of the replaced copy",
    );
    let head = ok(
        client.head_object().bucket("elsewhere").key("replaced").send().await,
        "HEAD replaced",
    );
    assert_eq!(
        head.metadata(),
        Some(&metadata(&[("color", "green")])),
        "REPLACE takes the new metadata"
    );
    assert_eq!(
        head.content_type(),
        Some("text/x-new"),
        "REPLACE takes the new Content-Type"
    );
    assert_eq!(head.cache_control(), None, "REPLACE drops the source's stored headers");

    assert_refused(
        client
            .copy_object()
            .bucket(bucket)
            .key(source_key)
            .copy_source(&source_path)
            .send()
            .await,
        400,
        Some("InvalidRequest"),
        "copying an object onto itself without REPLACE",
    );
    ok(
        client
            .copy_object()
            .bucket(bucket)
            .key(source_key)
            .copy_source(&source_path)
            .metadata_directive(MetadataDirective::Replace)
            .metadata("color", "purple")
            .send()
            .await,
        "copying an object onto itself with REPLACE",
    );
    let head = ok(
        client.head_object().bucket(bucket).key(source_key).send().await,
        "HEAD source",
    );
    assert_eq!(
        head.metadata(),
        Some(&metadata(&[("color", "purple")])),
        "the self-copy replaced the metadata"
    );
    assert_bytes(
        &get(&client, bucket, source_key).await,
        &source,
        "the self-copy kept the bytes",
    );

    // Conditional copy sources.
    assert_refused(
        client
            .copy_object()
            .bucket(bucket)
            .key("conditional")
            .copy_source(&source_path)
            .copy_source_if_match("\"0123456789abcdef0123456789abcdef\"")
            .send()
            .await,
        412,
        Some("PreconditionFailed"),
        "x-amz-copy-source-if-match with another ETag",
    );
    assert_refused(
        client
            .copy_object()
            .bucket(bucket)
            .key("conditional")
            .copy_source(&source_path)
            .copy_source_if_none_match(&source_etag)
            .send()
            .await,
        412,
        Some("PreconditionFailed"),
        "x-amz-copy-source-if-none-match with the source's ETag",
    );
    assert_refused(
        client.head_object().bucket(bucket).key("conditional").send().await,
        404,
        None,
        "a refused copy names nothing",
    );
    ok(
        client
            .copy_object()
            .bucket(bucket)
            .key("conditional")
            .copy_source(&source_path)
            .copy_source_if_match(&source_etag)
            .copy_source_if_none_match("\"0123456789abcdef0123456789abcdef\"")
            .send()
            .await,
        "a copy whose source conditions hold",
    );
    assert_refused(
        client
            .copy_object()
            .bucket(bucket)
            .key("nothing")
            .copy_source(format!("{bucket}/no-such-key"))
            .send()
            .await,
        404,
        Some("NoSuchKey"),
        "a copy of a missing key",
    );
    assert_refused(
        client
            .copy_object()
            .bucket(bucket)
            .key("nothing")
            .copy_source("no-such-bucket/key")
            .send()
            .await,
        404,
        Some("NoSuchBucket"),
        "a copy from a missing bucket",
    );

    // Conditional PUT: create-only and compare-and-swap.
    let first = pattern(1000, 51);
    let created = ok(
        client
            .put_object()
            .bucket(bucket)
            .key("cas")
            .if_none_match("*")
            .body(ByteStream::from(first.clone()))
            .send()
            .await,
        "PUT If-None-Match: * of a new key",
    );
    assert_refused(
        client
            .put_object()
            .bucket(bucket)
            .key("cas")
            .if_none_match("*")
            .body(ByteStream::from_static(b"second"))
            .send()
            .await,
        412,
        Some("PreconditionFailed"),
        "PUT If-None-Match: * of an existing key",
    );
    assert_bytes(
        &get(&client, bucket, "cas").await,
        &first,
        "the create-only PUT kept the first body",
    );
    let first_etag = created.e_tag().expect("an ETag").to_string();
    let second = pattern(1000, 52);
    let swapped = ok(
        client
            .put_object()
            .bucket(bucket)
            .key("cas")
            .if_match(&first_etag)
            .body(ByteStream::from(second.clone()))
            .send()
            .await,
        "PUT If-Match with the current ETag",
    );
    assert_refused(
        client
            .put_object()
            .bucket(bucket)
            .key("cas")
            .if_match(&first_etag)
            .body(ByteStream::from_static(b"stale"))
            .send()
            .await,
        412,
        Some("PreconditionFailed"),
        "PUT If-Match with a stale ETag",
    );
    assert_bytes(
        &get(&client, bucket, "cas").await,
        &second,
        "the compare-and-swap wrote once",
    );
    assert_eq!(
        swapped.e_tag(),
        Some(quoted_md5(&second).as_str()),
        "the swapped object's ETag"
    );

    // Conditional GET and HEAD.
    let etag = quoted_md5(&second);
    let other = "\"0123456789abcdef0123456789abcdef\"";
    let head = ok(client.head_object().bucket(bucket).key("cas").send().await, "HEAD cas");
    let modified = head.last_modified().expect("Last-Modified").secs();
    let hour_before = DateTime::from_secs(modified - 3600);
    let hour_after = DateTime::from_secs(modified + 3600);
    let at_modification = DateTime::from_secs(modified);
    let conditional = || client.get_object().bucket(bucket).key("cas");
    ok(conditional().if_match(&etag).send().await, "GET If-Match with the ETag");
    assert_refused(
        conditional().if_match(other).send().await,
        412,
        Some("PreconditionFailed"),
        "GET If-Match with another ETag",
    );
    assert_refused(
        conditional().if_none_match(&etag).send().await,
        304,
        None,
        "GET If-None-Match with the ETag",
    );
    ok(
        conditional().if_none_match(other).send().await,
        "GET If-None-Match with another ETag",
    );
    assert_refused(
        conditional().if_modified_since(at_modification).send().await,
        304,
        None,
        "GET If-Modified-Since its Last-Modified",
    );
    ok(
        conditional().if_modified_since(hour_before).send().await,
        "GET If-Modified-Since an hour before",
    );
    assert_refused(
        conditional().if_unmodified_since(hour_before).send().await,
        412,
        Some("PreconditionFailed"),
        "GET If-Unmodified-Since an hour before",
    );
    ok(
        conditional().if_unmodified_since(hour_after).send().await,
        "GET If-Unmodified-Since an hour after",
    );
    ok(
        conditional()
            .if_match(&etag)
            .if_unmodified_since(hour_before)
            .send()
            .await,
        "a matching If-Match wins over a failing If-Unmodified-Since",
    );
    assert_refused(
        client
            .head_object()
            .bucket(bucket)
            .key("cas")
            .if_none_match(&etag)
            .send()
            .await,
        304,
        None,
        "HEAD If-None-Match with the ETag",
    );
    assert_refused(
        client
            .head_object()
            .bucket(bucket)
            .key("cas")
            .if_match(other)
            .send()
            .await,
        412,
        None,
        "HEAD If-Match with another ETag",
    );
    s3.shutdown().await;
}

/// Collects a ListObjectsV2 listing page by page: (keys and common
/// prefixes in page order, page count). Every page but the last is full
/// and carries a continuation token.
async fn list_v2_pages(
    client: &Client,
    bucket: &str,
    prefix: &str,
    delimiter: Option<&str>,
    max: i32,
) -> (Vec<String>, usize) {
    let mut entries = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let output = ok(
            client
                .list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .set_delimiter(delimiter.map(String::from))
                .max_keys(max)
                .set_continuation_token(token.clone())
                .send()
                .await,
            "ListObjectsV2 page",
        );
        pages += 1;
        assert!(pages < 100, "the v2 listing of {prefix:?} never ends");
        let mut page: Vec<String> = output
            .contents()
            .iter()
            .filter_map(|o| o.key())
            .map(String::from)
            .collect();
        page.extend(
            output
                .common_prefixes()
                .iter()
                .filter_map(|p| p.prefix())
                .map(String::from),
        );
        page.sort();
        assert!(page.len() <= max as usize, "a page holds at most max-keys: {page:?}");
        assert_eq!(
            output.key_count(),
            Some(page.len() as i32),
            "KeyCount counts keys and prefixes"
        );
        assert_eq!(
            output.continuation_token(),
            token.as_deref(),
            "the page echoes its token"
        );
        entries.extend(page);
        if output.is_truncated() != Some(true) {
            assert_eq!(
                output.next_continuation_token(),
                None,
                "the last page has no next token"
            );
            return (entries, pages);
        }
        token = Some(
            output
                .next_continuation_token()
                .expect("a truncated page has a next token")
                .to_string(),
        );
    }
}

/// The same with ListObjects (v1) and markers.
async fn list_v1_pages(
    client: &Client,
    bucket: &str,
    prefix: &str,
    delimiter: Option<&str>,
    max: i32,
) -> (Vec<String>, usize) {
    let mut entries = Vec::new();
    let mut marker: Option<String> = None;
    let mut pages = 0;
    loop {
        let output = ok(
            client
                .list_objects()
                .bucket(bucket)
                .prefix(prefix)
                .set_delimiter(delimiter.map(String::from))
                .max_keys(max)
                .set_marker(marker.clone())
                .send()
                .await,
            "ListObjects page",
        );
        pages += 1;
        assert!(pages < 100, "the v1 listing of {prefix:?} never ends");
        let mut page: Vec<String> = output
            .contents()
            .iter()
            .filter_map(|o| o.key())
            .map(String::from)
            .collect();
        page.extend(
            output
                .common_prefixes()
                .iter()
                .filter_map(|p| p.prefix())
                .map(String::from),
        );
        page.sort();
        assert!(page.len() <= max as usize, "a page holds at most max-keys: {page:?}");
        let last = page.last().cloned();
        entries.extend(page);
        if output.is_truncated() != Some(true) {
            return (entries, pages);
        }
        // NextMarker when given (S3 gives it with a delimiter), else the
        // last key.
        marker = Some(
            output
                .next_marker()
                .map(String::from)
                .or(last)
                .expect("a truncated page has entries"),
        );
    }
}

#[track_caller]
fn assert_unique_sorted(entries: &[String], want: &[String], what: &str) {
    let unique: BTreeSet<&String> = entries.iter().collect();
    assert_eq!(unique.len(), entries.len(), "{what}: no entry twice: {entries:?}");
    assert_eq!(
        entries, want,
        "{what}: the pages concatenate to the full sorted listing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listings_filter_paginate_and_encode() {
    let _serial = SERIAL.lock().await;
    let s3 = S3Cluster::start().await;
    let client = s3.client(&s3.alice);
    let bucket = "listing";
    create_bucket(&client, bucket).await;
    let paged: Vec<String> = (0..25).map(|i| format!("page/{i:02}")).collect();
    let others = ["dir/a/1", "dir/a/2", "dir/b/1", "dir/c", "top1", "top2"];
    let encoded = [
        "enc/with space",
        "enc/ünï",
        "enc/per%cent",
        "enc/plus+sign",
        "enc/amp&lt<",
    ];
    let mut all: Vec<String> = paged.clone();
    all.extend(others.iter().chain(&encoded).map(|k| k.to_string()));
    all.sort();
    let writes = all.iter().map(|key| put_data(&client, bucket, key, key.as_bytes()));
    futures::future::join_all(writes).await;

    let full = ok(client.list_objects_v2().bucket(bucket).send().await, "ListObjectsV2");
    let keys: Vec<&str> = full.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, all, "ListObjectsV2 lists every key in order");
    assert_eq!(full.key_count(), Some(all.len() as i32), "KeyCount");
    let first = &full.contents()[0];
    assert_eq!(
        first.size(),
        Some(first.key().map_or(0, |k| k.len() as i64)),
        "an entry's size"
    );
    assert_eq!(
        first.e_tag().map(String::from),
        first.key().map(|k| quoted_md5(k.as_bytes())),
        "an entry's ETag"
    );
    assert!(first.last_modified().is_some(), "an entry's LastModified");
    assert!(first.owner().is_none(), "ListObjectsV2 names no owner unless asked");

    // Prefix and delimiter.
    assert_eq!(
        keys_under(&client, bucket, "dir/").await,
        ["dir/a/1", "dir/a/2", "dir/b/1", "dir/c"],
        "prefix dir/"
    );
    let rolled = ok(
        client
            .list_objects_v2()
            .bucket(bucket)
            .prefix("dir/")
            .delimiter("/")
            .send()
            .await,
        "ListObjectsV2 prefix + delimiter",
    );
    let keys: Vec<&str> = rolled.contents().iter().filter_map(|o| o.key()).collect();
    let prefixes: Vec<&str> = rolled.common_prefixes().iter().filter_map(|p| p.prefix()).collect();
    assert_eq!(keys, ["dir/c"], "keys beside the common prefixes");
    assert_eq!(prefixes, ["dir/a/", "dir/b/"], "common prefixes under dir/");
    assert_eq!(rolled.delimiter(), Some("/"), "the delimiter echoed");
    let v1 = ok(
        client.list_objects().bucket(bucket).delimiter("/").send().await,
        "ListObjects with a delimiter",
    );
    let keys: Vec<&str> = v1.contents().iter().filter_map(|o| o.key()).collect();
    let prefixes: Vec<&str> = v1.common_prefixes().iter().filter_map(|p| p.prefix()).collect();
    assert_eq!(keys, ["top1", "top2"], "v1 top-level keys");
    assert_eq!(prefixes, ["dir/", "enc/", "page/"], "v1 top-level common prefixes");
    assert!(
        v1.contents()
            .iter()
            .all(|o| o.owner().and_then(|w| w.id()) == Some("alice")),
        "ListObjects (v1) names the owner"
    );

    // 25 keys with max-keys 7: four pages, nothing twice, nothing lost.
    let (entries, pages) = list_v2_pages(&client, bucket, "page/", None, 7).await;
    assert_unique_sorted(&entries, &paged, "v2 max-keys 7");
    assert_eq!(pages, 4, "25 keys make 4 pages of 7");
    let (entries, pages) = list_v1_pages(&client, bucket, "page/", None, 7).await;
    assert_unique_sorted(&entries, &paged, "v1 max-keys 7");
    assert_eq!(pages, 4, "25 keys make 4 pages of 7 (v1)");
    // Pages of one across common prefixes resume after each prefix.
    let top: Vec<String> = ["dir/", "enc/", "page/", "top1", "top2"].map(String::from).to_vec();
    let (entries, _) = list_v2_pages(&client, bucket, "", Some("/"), 1).await;
    assert_unique_sorted(&entries, &top, "v2 max-keys 1 with a delimiter");
    let (entries, _) = list_v1_pages(&client, bucket, "", Some("/"), 1).await;
    assert_unique_sorted(&entries, &top, "v1 max-keys 1 with a delimiter");

    // start-after (v2) and marker (v1).
    let after = ok(
        client
            .list_objects_v2()
            .bucket(bucket)
            .prefix("page/")
            .start_after("page/20")
            .send()
            .await,
        "ListObjectsV2 start-after",
    );
    let keys: Vec<&str> = after.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(
        keys,
        ["page/21", "page/22", "page/23", "page/24"],
        "start-after page/20"
    );
    assert_eq!(after.start_after(), Some("page/20"), "StartAfter echoed");
    let after = ok(
        client
            .list_objects()
            .bucket(bucket)
            .prefix("page/")
            .marker("page/21")
            .send()
            .await,
        "ListObjects marker",
    );
    let keys: Vec<&str> = after.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, ["page/22", "page/23", "page/24"], "marker page/21");

    // fetch-owner.
    let owned = ok(
        client
            .list_objects_v2()
            .bucket(bucket)
            .prefix("top")
            .fetch_owner(true)
            .send()
            .await,
        "ListObjectsV2 fetch-owner",
    );
    assert_eq!(owned.contents().len(), 2, "two top-level keys");
    for object in owned.contents() {
        assert_eq!(
            object.owner().and_then(|o| o.id()),
            Some("alice"),
            "fetch-owner names the owner"
        );
    }

    // encoding-type=url: keys come back percent-encoded (or decoded by
    // the SDK); either way they decode to the keys.
    let mut want_encoded: Vec<String> = encoded.iter().map(|k| k.to_string()).collect();
    want_encoded.sort();
    for version in ["v1", "v2"] {
        let (returned, prefix) = if version == "v2" {
            let output = ok(
                client
                    .list_objects_v2()
                    .bucket(bucket)
                    .prefix("enc/")
                    .encoding_type(EncodingType::Url)
                    .send()
                    .await,
                "ListObjectsV2 encoding-type=url",
            );
            let keys: Vec<String> = output
                .contents()
                .iter()
                .filter_map(|o| o.key())
                .map(String::from)
                .collect();
            (keys, output.prefix().map(String::from))
        } else {
            let output = ok(
                client
                    .list_objects()
                    .bucket(bucket)
                    .prefix("enc/")
                    .encoding_type(EncodingType::Url)
                    .send()
                    .await,
                "ListObjects encoding-type=url",
            );
            let keys: Vec<String> = output
                .contents()
                .iter()
                .filter_map(|o| o.key())
                .map(String::from)
                .collect();
            (keys, output.prefix().map(String::from))
        };
        let decoded: Vec<String> = returned.iter().map(|k| url_decode(k)).collect();
        assert_eq!(
            decoded, want_encoded,
            "{version}: url-encoded keys decode to the keys: {returned:?}"
        );
        for key in &returned {
            assert!(
                !key.contains(' ') && key.is_ascii(),
                "{version}: {key:?} is percent-encoded (no space, ASCII only)"
            );
        }
        assert_eq!(
            prefix.as_deref().map(url_decode).as_deref(),
            Some("enc/"),
            "{version}: Prefix"
        );
    }

    assert_refused(
        client.list_objects_v2().bucket("no-such-bucket").send().await,
        404,
        Some("NoSuchBucket"),
        "ListObjectsV2 of a missing bucket",
    );
    assert_refused(
        client
            .list_objects_v2()
            .bucket(bucket)
            .continuation_token("not a token")
            .send()
            .await,
        400,
        Some("InvalidArgument"),
        "ListObjectsV2 with a forged continuation token",
    );
    s3.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multipart_uploads_assemble_copy_list_and_refuse_bad_completions() {
    let _serial = SERIAL.lock().await;
    let s3 = S3Cluster::start().await;
    let client = s3.client(&s3.alice);
    let (chunky, wire) = default_checksum_client(&s3.endpoint, &s3.alice);
    let files = tempfile::tempdir().expect("a directory for body files");
    let bucket = "multi";
    create_bucket(&client, bucket).await;

    let parts = [pattern(5 * MIB, 61), pattern(5 * MIB, 62), pattern(MIB, 63)];
    let whole: Vec<u8> = parts.concat();
    let created = ok(
        client
            .create_multipart_upload()
            .bucket(bucket)
            .key("big.bin")
            .content_type("application/x-multi")
            .metadata("kind", "multipart")
            .send()
            .await,
        "CreateMultipartUpload",
    );
    let upload_id = created.upload_id().expect("an upload id").to_string();
    let mut etags = Vec::new();
    for (index, data) in parts.iter().enumerate() {
        let number = index as i32 + 1;
        let request = if number == 2 {
            // The second part through the SDK's default client: an
            // aws-chunked body with a trailing CRC32.
            chunky.upload_part().body(file_body(files.path(), "part2", data).await)
        } else {
            client.upload_part().body(ByteStream::from(data.clone()))
        };
        let uploaded = ok(
            request
                .bucket(bucket)
                .key("big.bin")
                .upload_id(&upload_id)
                .part_number(number)
                .send()
                .await,
            &format!("UploadPart {number}"),
        );
        if number == 2 {
            assert!(
                wire.last_header("content-encoding")
                    .is_some_and(|v| v.contains("aws-chunked")),
                "the part went as aws-chunked: {:?}",
                wire.last()
            );
            assert_eq!(
                uploaded.checksum_crc32(),
                Some(crc32_b64(data).as_str()),
                "the part's trailer CRC32"
            );
        }
        assert_eq!(
            uploaded.e_tag(),
            Some(quoted_md5(data).as_str()),
            "part {number}'s ETag is its MD5"
        );
        etags.push(uploaded.e_tag().expect("an ETag").to_string());
    }

    let listed = ok(
        client
            .list_parts()
            .bucket(bucket)
            .key("big.bin")
            .upload_id(&upload_id)
            .send()
            .await,
        "ListParts",
    );
    let seen: Vec<(Option<i32>, Option<i64>, Option<&str>)> = listed
        .parts()
        .iter()
        .map(|p| (p.part_number(), p.size(), p.e_tag()))
        .collect();
    let want: Vec<(Option<i32>, Option<i64>, Option<&str>)> = parts
        .iter()
        .zip(&etags)
        .enumerate()
        .map(|(i, (data, etag))| (Some(i as i32 + 1), Some(data.len() as i64), Some(etag.as_str())))
        .collect();
    assert_eq!(seen, want, "ListParts lists every part with its size and ETag");
    assert_eq!(listed.is_truncated(), Some(false), "one page holds three parts");
    let first_page = ok(
        client
            .list_parts()
            .bucket(bucket)
            .key("big.bin")
            .upload_id(&upload_id)
            .max_parts(2)
            .send()
            .await,
        "ListParts max-parts 2",
    );
    let numbers: Vec<i32> = first_page.parts().iter().filter_map(|p| p.part_number()).collect();
    assert_eq!(numbers, [1, 2], "the first page of two parts");
    assert_eq!(first_page.is_truncated(), Some(true), "the first page is truncated");
    let marker = first_page
        .next_part_number_marker()
        .expect("a next part marker")
        .to_string();
    assert_eq!(marker, "2", "the next part number marker");
    let second_page = ok(
        client
            .list_parts()
            .bucket(bucket)
            .key("big.bin")
            .upload_id(&upload_id)
            .max_parts(2)
            .part_number_marker(&marker)
            .send()
            .await,
        "ListParts after the marker",
    );
    let numbers: Vec<i32> = second_page.parts().iter().filter_map(|p| p.part_number()).collect();
    assert_eq!(numbers, [3], "the second page");
    assert_eq!(
        second_page.is_truncated(),
        Some(false),
        "the last page is not truncated"
    );

    let uploads = ok(
        client.list_multipart_uploads().bucket(bucket).send().await,
        "ListMultipartUploads",
    );
    let listed: Vec<(Option<&str>, Option<&str>)> =
        uploads.uploads().iter().map(|u| (u.key(), u.upload_id())).collect();
    assert_eq!(
        listed,
        [(Some("big.bin"), Some(upload_id.as_str()))],
        "the upload in progress"
    );
    let filtered = ok(
        client
            .list_multipart_uploads()
            .bucket(bucket)
            .prefix("other")
            .send()
            .await,
        "ListMultipartUploads with another prefix",
    );
    assert!(
        filtered.uploads().is_empty(),
        "the prefix filters uploads: {:?}",
        filtered.uploads()
    );

    let numbered: Vec<(i32, &str)> = etags
        .iter()
        .enumerate()
        .map(|(i, e)| (i as i32 + 1, e.as_str()))
        .collect();
    let completed_upload = ok(
        client
            .complete_multipart_upload()
            .bucket(bucket)
            .key("big.bin")
            .upload_id(&upload_id)
            .multipart_upload(completed(&numbered))
            .send()
            .await,
        "CompleteMultipartUpload",
    );
    let slices: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    let want_etag = multipart_etag(&slices);
    assert_eq!(
        completed_upload.e_tag(),
        Some(want_etag.as_str()),
        "the md5-of-md5s-3 ETag"
    );
    assert_bytes(
        &get(&client, bucket, "big.bin").await,
        &whole,
        "GET of the completed upload",
    );
    let head = ok(
        client.head_object().bucket(bucket).key("big.bin").send().await,
        "HEAD big.bin",
    );
    assert_eq!(head.content_length(), Some(whole.len() as i64), "the completed size");
    assert_eq!(
        head.e_tag(),
        Some(want_etag.as_str()),
        "HEAD ETag of the multipart object"
    );
    assert_eq!(
        head.content_type(),
        Some("application/x-multi"),
        "the upload's Content-Type"
    );
    assert_eq!(
        head.metadata(),
        Some(&metadata(&[("kind", "multipart")])),
        "the upload's metadata"
    );

    // Ranges across part boundaries, and part numbers.
    let boundary = 5 * MIB;
    for (start, end) in [
        (boundary - 10, boundary + 10),
        (2 * boundary - 3, 2 * boundary + 3),
        (3, whole.len() - 3),
    ] {
        let range = format!("bytes={start}-{}", end - 1);
        let (content_range, body) = get_range(&client, bucket, "big.bin", &range).await;
        let expected = format!("bytes {start}-{}/{}", end - 1, whole.len());
        assert_eq!(
            content_range.as_deref(),
            Some(expected.as_str()),
            "Content-Range of {range}"
        );
        assert_bytes(&body, &whole[start..end], &range);
    }
    let part_two = ok(
        client
            .get_object()
            .bucket(bucket)
            .key("big.bin")
            .part_number(2)
            .send()
            .await,
        "GET partNumber=2",
    );
    assert_eq!(part_two.parts_count(), Some(3), "PartsCount");
    let expected = format!("bytes {boundary}-{}/{}", 2 * boundary - 1, whole.len());
    assert_eq!(
        part_two.content_range(),
        Some(expected.as_str()),
        "Content-Range of part 2"
    );
    assert_bytes(
        &body_bytes(part_two.body, "part 2").await,
        &parts[1],
        "GET partNumber=2",
    );
    let part_three = ok(
        client
            .head_object()
            .bucket(bucket)
            .key("big.bin")
            .part_number(3)
            .send()
            .await,
        "HEAD partNumber=3",
    );
    assert_eq!(
        part_three.content_length(),
        Some(MIB as i64),
        "HEAD partNumber=3 Content-Length"
    );
    assert_refused(
        client
            .get_object()
            .bucket(bucket)
            .key("big.bin")
            .part_number(4)
            .send()
            .await,
        416,
        Some("InvalidPartNumber"),
        "GET of a part number beyond the parts",
    );

    let after = ok(
        client.list_multipart_uploads().bucket(bucket).send().await,
        "ListMultipartUploads",
    );
    assert!(
        after.uploads().is_empty(),
        "a completed upload is no longer listed: {:?}",
        after.uploads()
    );
    assert_refused(
        client
            .list_parts()
            .bucket(bucket)
            .key("big.bin")
            .upload_id(&upload_id)
            .send()
            .await,
        404,
        Some("NoSuchUpload"),
        "ListParts of a completed upload",
    );

    // A copy of a multipart object.
    ok(
        client
            .copy_object()
            .bucket(bucket)
            .key("big-copy.bin")
            .copy_source(format!("{bucket}/big.bin"))
            .send()
            .await,
        "CopyObject of a multipart object",
    );
    assert_bytes(
        &get(&client, bucket, "big-copy.bin").await,
        &whole,
        "GET of the multipart object's copy",
    );
    let head = ok(
        client.head_object().bucket(bucket).key("big-copy.bin").send().await,
        "HEAD big-copy.bin",
    );
    assert_eq!(
        head.metadata(),
        Some(&metadata(&[("kind", "multipart")])),
        "the copy keeps the metadata"
    );

    // UploadPartCopy: a range of the multipart object, then a whole object.
    let small = pattern(3 * KIB, 64);
    put_data(&client, bucket, "small", &small).await;
    let created = ok(
        client
            .create_multipart_upload()
            .bucket(bucket)
            .key("assembled")
            .send()
            .await,
        "CreateMultipartUpload assembled",
    );
    let assembled_id = created.upload_id().expect("an upload id").to_string();
    let range_start = 5 * MIB - 100;
    let range_end = range_start + 5 * MIB; // exclusive
    let copied_range = ok(
        client
            .upload_part_copy()
            .bucket(bucket)
            .key("assembled")
            .upload_id(&assembled_id)
            .part_number(1)
            .copy_source(format!("{bucket}/big.bin"))
            .copy_source_range(format!("bytes={range_start}-{}", range_end - 1))
            .send()
            .await,
        "UploadPartCopy with a range across parts",
    );
    let first_etag = copied_range
        .copy_part_result()
        .and_then(|r| r.e_tag())
        .expect("the copied part's ETag")
        .to_string();
    assert_eq!(
        first_etag,
        quoted_md5(&whole[range_start..range_end]),
        "the ranged copy part's ETag"
    );
    let copied_whole = ok(
        client
            .upload_part_copy()
            .bucket(bucket)
            .key("assembled")
            .upload_id(&assembled_id)
            .part_number(2)
            .copy_source(format!("{bucket}/small"))
            .send()
            .await,
        "UploadPartCopy of a whole object",
    );
    let second_etag = copied_whole
        .copy_part_result()
        .and_then(|r| r.e_tag())
        .expect("the copied part's ETag")
        .to_string();
    assert_eq!(second_etag, quoted_md5(&small), "the whole copy part's ETag");
    assert_refused(
        client
            .upload_part_copy()
            .bucket(bucket)
            .key("assembled")
            .upload_id(&assembled_id)
            .part_number(3)
            .copy_source(format!("{bucket}/small"))
            .copy_source_range(format!("bytes=0-{}", small.len()))
            .send()
            .await,
        416,
        Some("InvalidRange"),
        "UploadPartCopy with a range past the source's end",
    );
    let done = ok(
        client
            .complete_multipart_upload()
            .bucket(bucket)
            .key("assembled")
            .upload_id(&assembled_id)
            .multipart_upload(completed(&[(1, first_etag.as_str()), (2, second_etag.as_str())]))
            .send()
            .await,
        "CompleteMultipartUpload of copied parts",
    );
    let want: Vec<u8> = [&whole[range_start..range_end], &small[..]].concat();
    assert_eq!(
        done.e_tag(),
        Some(multipart_etag(&[&whole[range_start..range_end], &small]).as_str()),
        "the ETag of copied parts"
    );
    assert_bytes(
        &get(&client, bucket, "assembled").await,
        &want,
        "GET of the upload of copied parts",
    );

    // Conditional completions: create-only refused over an existing key,
    // compare-and-swap with its ETag accepted.
    let assembled_etag = done.e_tag().expect("an ETag").to_string();
    let created = ok(
        client
            .create_multipart_upload()
            .bucket(bucket)
            .key("assembled")
            .send()
            .await,
        "CreateMultipartUpload over an existing key",
    );
    let again_id = created.upload_id().expect("an upload id").to_string();
    let replacement = pattern(2 * KIB, 67);
    let uploaded = ok(
        client
            .upload_part()
            .bucket(bucket)
            .key("assembled")
            .upload_id(&again_id)
            .part_number(1)
            .body(ByteStream::from(replacement.clone()))
            .send()
            .await,
        "UploadPart of the replacement",
    );
    let replacement_etag = uploaded.e_tag().expect("an ETag").to_string();
    let finish = || {
        client
            .complete_multipart_upload()
            .bucket(bucket)
            .key("assembled")
            .upload_id(&again_id)
            .multipart_upload(completed(&[(1, replacement_etag.as_str())]))
    };
    assert_refused(
        finish().if_none_match("*").send().await,
        412,
        Some("PreconditionFailed"),
        "CompleteMultipartUpload If-None-Match: * over an existing key",
    );
    assert_refused(
        finish().if_match("\"0123456789abcdef0123456789abcdef-2\"").send().await,
        412,
        Some("PreconditionFailed"),
        "CompleteMultipartUpload If-Match with another ETag",
    );
    assert_bytes(
        &get(&client, bucket, "assembled").await,
        &want,
        "refused completions kept the object",
    );
    ok(
        finish().if_match(&assembled_etag).send().await,
        "CompleteMultipartUpload If-Match with the current ETag",
    );
    assert_bytes(
        &get(&client, bucket, "assembled").await,
        &replacement,
        "the conditional completion replaced the object",
    );

    // Refused completions, then abort.
    let created = ok(
        client
            .create_multipart_upload()
            .bucket(bucket)
            .key("refused")
            .send()
            .await,
        "CreateMultipartUpload refused",
    );
    let refused_id = created.upload_id().expect("an upload id").to_string();
    let tiny = [pattern(KIB, 65), pattern(KIB, 66)];
    let mut tiny_etags = Vec::new();
    for (index, data) in tiny.iter().enumerate() {
        let uploaded = ok(
            client
                .upload_part()
                .bucket(bucket)
                .key("refused")
                .upload_id(&refused_id)
                .part_number(index as i32 + 1)
                .body(ByteStream::from(data.clone()))
                .send()
                .await,
            "UploadPart of 1 KiB",
        );
        tiny_etags.push(uploaded.e_tag().expect("an ETag").to_string());
    }
    let complete = |parts: &[(i32, &str)]| {
        client
            .complete_multipart_upload()
            .bucket(bucket)
            .key("refused")
            .upload_id(&refused_id)
            .multipart_upload(completed(parts))
            .send()
    };
    let wrong = "\"0123456789abcdef0123456789abcdef\"";
    assert_refused(
        complete(&[(1, wrong), (2, tiny_etags[1].as_str())]).await,
        400,
        Some("InvalidPart"),
        "a completion naming a wrong ETag",
    );
    assert_refused(
        complete(&[(1, tiny_etags[0].as_str()), (3, tiny_etags[1].as_str())]).await,
        400,
        Some("InvalidPart"),
        "a completion naming a part never uploaded",
    );
    assert_refused(
        complete(&[(2, tiny_etags[1].as_str()), (1, tiny_etags[0].as_str())]).await,
        400,
        Some("InvalidPartOrder"),
        "a completion listing parts in descending order",
    );
    assert_refused(
        complete(&[(1, tiny_etags[0].as_str()), (2, tiny_etags[1].as_str())]).await,
        400,
        Some("EntityTooSmall"),
        "a completion with a 1 KiB part that is not the last",
    );
    assert_refused(
        client.head_object().bucket(bucket).key("refused").send().await,
        404,
        None,
        "refused completions name nothing",
    );
    ok(
        client
            .abort_multipart_upload()
            .bucket(bucket)
            .key("refused")
            .upload_id(&refused_id)
            .send()
            .await,
        "AbortMultipartUpload",
    );
    assert_refused(
        client
            .list_parts()
            .bucket(bucket)
            .key("refused")
            .upload_id(&refused_id)
            .send()
            .await,
        404,
        Some("NoSuchUpload"),
        "ListParts of an aborted upload",
    );
    assert_refused(
        client
            .upload_part()
            .bucket(bucket)
            .key("refused")
            .upload_id(&refused_id)
            .part_number(3)
            .body(ByteStream::from_static(b"late"))
            .send()
            .await,
        404,
        Some("NoSuchUpload"),
        "UploadPart to an aborted upload",
    );
    assert_refused(
        complete(&[(1, tiny_etags[0].as_str())]).await,
        404,
        Some("NoSuchUpload"),
        "CompleteMultipartUpload of an aborted upload",
    );
    assert_refused(
        client
            .upload_part()
            .bucket(bucket)
            .key("refused")
            .upload_id("no-such-upload")
            .part_number(1)
            .body(ByteStream::from_static(b"x"))
            .send()
            .await,
        404,
        Some("NoSuchUpload"),
        "UploadPart to an unknown upload id",
    );

    // A part uploaded again replaces the first; a completion may name a
    // subset of the parts.
    let created = ok(
        client
            .create_multipart_upload()
            .bucket(bucket)
            .key("subset")
            .send()
            .await,
        "CreateMultipartUpload subset",
    );
    let subset_id = created.upload_id().expect("an upload id").to_string();
    let upload = |number: i32, data: Vec<u8>| {
        client
            .upload_part()
            .bucket(bucket)
            .key("subset")
            .upload_id(&subset_id)
            .part_number(number)
            .body(ByteStream::from(data))
            .send()
    };
    let versions = [pattern(KIB, 80), pattern(KIB + 1, 81), pattern(KIB + 2, 82)];
    ok(upload(1, versions[0].clone()).await, "UploadPart 1");
    ok(upload(2, versions[1].clone()).await, "UploadPart 2");
    let replaced = ok(upload(2, versions[2].clone()).await, "UploadPart 2 again");
    let listed = ok(
        client
            .list_parts()
            .bucket(bucket)
            .key("subset")
            .upload_id(&subset_id)
            .send()
            .await,
        "ListParts after a part was replaced",
    );
    let seen: Vec<(Option<i32>, Option<i64>, Option<&str>)> = listed
        .parts()
        .iter()
        .map(|p| (p.part_number(), p.size(), p.e_tag()))
        .collect();
    assert_eq!(
        seen,
        [
            (Some(1), Some(KIB as i64), Some(quoted_md5(&versions[0]).as_str())),
            (Some(2), Some(KIB as i64 + 2), replaced.e_tag()),
        ],
        "the replaced part is listed once, with its last upload"
    );
    let done = ok(
        client
            .complete_multipart_upload()
            .bucket(bucket)
            .key("subset")
            .upload_id(&subset_id)
            .multipart_upload(completed(&[(2, replaced.e_tag().expect("an ETag"))]))
            .send()
            .await,
        "CompleteMultipartUpload naming only part 2",
    );
    assert_eq!(
        done.e_tag(),
        Some(multipart_etag(&[&versions[2]]).as_str()),
        "the ETag of one part"
    );
    assert_bytes(
        &get(&client, bucket, "subset").await,
        &versions[2],
        "the object is the named part's last upload",
    );
    s3.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn access_control_presigned_urls_request_ids_and_virtual_hosts() {
    let _serial = SERIAL.lock().await;
    let s3 = S3Cluster::start().await;
    let ns = s3.cluster.ns_client().expect("a name-server client");
    let bob_key = s3.cluster.create_key("bob").await.expect("bob's access key");
    let alice = s3.client(&s3.alice);
    let bob = s3.client(&bob_key);
    let bucket = "private";
    create_bucket(&alice, bucket).await;
    create_bucket(&bob, "bobs").await;
    let doc = pattern(10 * KIB, 70);
    put_data(&alice, bucket, "doc", &doc).await;

    // Another user is refused everything until granted.
    assert_refused(
        bob.get_object().bucket(bucket).key("doc").send().await,
        403,
        Some("AccessDenied"),
        "bob GETs alice's object",
    );
    assert_refused(
        bob.head_object().bucket(bucket).key("doc").send().await,
        403,
        None,
        "bob HEADs alice's object",
    );
    assert_refused(
        bob.put_object()
            .bucket(bucket)
            .key("intruder")
            .body(ByteStream::from_static(b"x"))
            .send()
            .await,
        403,
        Some("AccessDenied"),
        "bob PUTs into alice's bucket",
    );
    assert_refused(
        bob.list_objects_v2().bucket(bucket).send().await,
        403,
        Some("AccessDenied"),
        "bob lists alice's bucket",
    );
    assert_refused(
        bob.head_bucket().bucket(bucket).send().await,
        403,
        None,
        "bob HEADs alice's bucket",
    );
    assert_refused(
        bob.copy_object()
            .bucket("bobs")
            .key("stolen")
            .copy_source(format!("{bucket}/doc"))
            .send()
            .await,
        403,
        Some("AccessDenied"),
        "bob copies from alice's bucket into his own",
    );

    ns.bucket_grant(&bob_key.key_id, bucket, Permission::Read, true)
        .await
        .expect("grant bob read on alice's bucket");
    eventually(PROPAGATION, "bob's read grant takes effect", || {
        let bob = &bob;
        async move { bob.get_object().bucket(bucket).key("doc").send().await.is_ok() }
    })
    .await;
    assert_bytes(&get(&bob, bucket, "doc").await, &doc, "bob reads with a read grant");
    assert_eq!(
        keys_under(&bob, bucket, "").await,
        ["doc"],
        "bob lists with a read grant"
    );
    assert_refused(
        bob.put_object()
            .bucket(bucket)
            .key("intruder")
            .body(ByteStream::from_static(b"x"))
            .send()
            .await,
        403,
        Some("AccessDenied"),
        "bob PUTs with only a read grant",
    );
    assert_refused(
        bob.delete_object().bucket(bucket).key("doc").send().await,
        403,
        Some("AccessDenied"),
        "bob deletes with only a read grant",
    );
    assert_refused(
        bob.create_multipart_upload()
            .bucket(bucket)
            .key("intruder")
            .send()
            .await,
        403,
        Some("AccessDenied"),
        "bob starts a multipart upload with only a read grant",
    );
    ok(
        bob.head_bucket().bucket(bucket).send().await,
        "bob HEADs a bucket he may read",
    );
    ok(
        bob.copy_object()
            .bucket("bobs")
            .key("copied")
            .copy_source(format!("{bucket}/doc"))
            .send()
            .await,
        "bob copies from a bucket he may read",
    );
    assert_bytes(&get(&bob, "bobs", "copied").await, &doc, "bob's copy");

    ns.bucket_grant(&bob_key.key_id, bucket, Permission::Write, true)
        .await
        .expect("grant bob write on alice's bucket");
    eventually(PROPAGATION, "bob's write grant takes effect", || {
        let bob = &bob;
        async move {
            let body = ByteStream::from_static(b"hello");
            bob.put_object()
                .bucket(bucket)
                .key("from-bob")
                .body(body)
                .send()
                .await
                .is_ok()
        }
    })
    .await;
    assert_eq!(
        get(&alice, bucket, "from-bob").await,
        b"hello",
        "alice reads what bob wrote"
    );
    assert_refused(
        bob.delete_bucket().bucket(bucket).send().await,
        403,
        Some("AccessDenied"),
        "deleting a bucket needs ownership, not a write grant",
    );

    // Unknown keys and wrong secrets.
    let mut stranger = s3.alice.clone();
    stranger.key_id = "TKNOSUCHKEY000000000".into();
    assert_refused(
        s3.client(&stranger).list_buckets().send().await,
        403,
        Some("InvalidAccessKeyId"),
        "an unknown access key",
    );
    let mut forger = s3.alice.clone();
    forger.secret = "not-the-secret".into();
    assert_refused(
        s3.client(&forger).get_object().bucket(bucket).key("doc").send().await,
        403,
        Some("SignatureDoesNotMatch"),
        "alice's key id with a wrong secret",
    );

    // A revoked key is refused within seconds.
    ns.key_revoke(&bob_key.key_id).await.expect("revoke bob's key");
    let revoked_at = Instant::now();
    eventually(PROPAGATION, "bob's revoked key is refused", || {
        let bob = &bob;
        async move {
            match bob.list_buckets().send().await {
                Ok(_) => false,
                Err(e) => e.code() == Some("InvalidAccessKeyId"),
            }
        }
    })
    .await;
    let delay = revoked_at.elapsed();
    assert_refused(
        bob.get_object().bucket(bucket).key("doc").send().await,
        403,
        Some("InvalidAccessKeyId"),
        "a GET with a revoked key",
    );
    assert_bytes(
        &get(&alice, bucket, "doc").await,
        &doc,
        "alice is unaffected by bob's revocation",
    );

    // Presigned GETs from a plain HTTP client.
    let odd_key = "dir/ü space+plus.txt";
    put_data(&alice, bucket, odd_key, b"odd key body").await;
    for (key, body) in [("doc", doc.as_slice()), (odd_key, b"odd key body".as_slice())] {
        let presigned = alice
            .get_object()
            .bucket(bucket)
            .key(key)
            .presigned(PresigningConfig::expires_in(Duration::from_secs(300)).expect("a presigning config"))
            .await
            .expect("a presigned GET");
        let answer = raw_url("GET", presigned.uri(), b"").await;
        assert_eq!(answer.status, 200, "presigned GET of {key:?}: {}", answer.text());
        assert_bytes(&answer.body, body, &format!("presigned GET of {key:?}"));
        assert_eq!(
            answer.header("etag"),
            Some(quoted_md5(body).as_str()),
            "presigned GET ETag"
        );
        assert!(answer.header("x-amz-request-id").is_some(), "presigned GET request id");
        let tampered = presigned.uri().replacen("/private/", "/bobs/", 1);
        let refused = raw_url("GET", &tampered, b"").await;
        assert_eq!(
            refused.status,
            403,
            "a presigned URL for another bucket: {}",
            refused.text()
        );
        assert!(
            refused.text().contains("<Code>SignatureDoesNotMatch</Code>"),
            "a tampered presigned URL: {}",
            refused.text()
        );
    }

    // A presigned PUT from a plain HTTP client (an unsigned payload).
    let uploaded = pattern(3 * KIB + 1, 71);
    let presigned = alice
        .put_object()
        .bucket(bucket)
        .key("presigned/upload.bin")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(300)).expect("a presigning config"))
        .await
        .expect("a presigned PUT");
    let answer = raw_url("PUT", presigned.uri(), &uploaded).await;
    assert_eq!(answer.status, 200, "presigned PUT: {}", answer.text());
    assert_eq!(
        answer.header("etag"),
        Some(quoted_md5(&uploaded).as_str()),
        "presigned PUT ETag"
    );
    assert_bytes(
        &get(&alice, bucket, "presigned/upload.bin").await,
        &uploaded,
        "GET of the presigned upload",
    );

    // Virtual-host style: BUCKET.localhost:PORT.
    let (virtual_client, wire) = virtual_host_client(s3.port(), &s3.alice);
    ok(
        virtual_client
            .put_object()
            .bucket(bucket)
            .key("vhost/key.txt")
            .body(ByteStream::from_static(b"by virtual host"))
            .send()
            .await,
        "PUT in virtual-host style",
    );
    let uri = wire.last_header(URI).expect("the logged URI");
    assert!(
        uri.starts_with(&format!("http://{bucket}.localhost:{}/vhost/key.txt", s3.port())),
        "the request was addressed in virtual-host style: {uri}"
    );
    assert_eq!(
        get(&alice, bucket, "vhost/key.txt").await,
        b"by virtual host",
        "path style reads it"
    );
    assert_bytes(
        &get(&virtual_client, bucket, "doc").await,
        &doc,
        "GET in virtual-host style",
    );
    assert_eq!(
        keys_under(&virtual_client, bucket, "vhost/").await,
        ["vhost/key.txt"],
        "ListObjectsV2 in virtual-host style"
    );
    ok(
        virtual_client.head_bucket().bucket(bucket).send().await,
        "HeadBucket in virtual-host style",
    );
    assert_refused(
        virtual_client
            .get_object()
            .bucket("no-such-bucket")
            .key("doc")
            .send()
            .await,
        404,
        Some("NoSuchBucket"),
        "a missing bucket named by the host",
    );
    eprintln!("revocation took effect after {delay:?}");
    s3.shutdown().await;
}

/// S3 names the request id in the XML of every error, as in the
/// `x-amz-request-id` header: for a refusal of a handler (NoSuchKey), of
/// the access check (an anonymous request) and of the signature check (a
/// tampered presigned URL).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_error_body_names_its_request_id() {
    let _serial = SERIAL.lock().await;
    let s3 = S3Cluster::start().await;
    let alice = s3.client(&s3.alice);
    create_bucket(&alice, "ids").await;
    put_data(&alice, "ids", "doc", b"doc").await;
    let presign = |key: &'static str| {
        let alice = &alice;
        async move {
            let config = PresigningConfig::expires_in(Duration::from_secs(300)).expect("a presigning config");
            let presigned = alice.get_object().bucket("ids").key(key).presigned(config).await;
            presigned.expect("a presigned GET").uri().to_string()
        }
    };
    let addr = s3.endpoint.trim_start_matches("http://").to_string();
    let missing = raw_url("GET", &presign("no-such-key").await, b"").await;
    let anonymous = raw_get(&addr, &addr, "/ids/doc").await;
    let tampered = raw_url("GET", &presign("doc").await.replacen("/doc?", "/other?", 1), b"").await;
    let cases = [
        ("a handler's refusal", missing, 404, "NoSuchKey"),
        ("an anonymous request", anonymous, 403, "AccessDenied"),
        ("a tampered presigned URL", tampered, 403, "SignatureDoesNotMatch"),
    ];
    let mut unnamed = Vec::new();
    for (what, answer, status, code) in cases {
        assert_eq!(answer.status, status, "{what}: {}", answer.text());
        assert!(
            answer.text().contains(&format!("<Code>{code}</Code>")),
            "{what}: {}",
            answer.text()
        );
        let id = answer.header("x-amz-request-id").expect("x-amz-request-id on an error");
        assert!(!id.is_empty(), "{what}: a non-empty request id");
        if !answer.text().contains(&format!("<RequestId>{id}</RequestId>")) {
            unnamed.push(format!("{what} (header {id}): {}", answer.text()));
        }
    }
    assert!(
        unnamed.is_empty(),
        "error XML without the header's request id:\n{}",
        unnamed.join("\n")
    );
    s3.shutdown().await;
}

/// ListMultipartUploads with a delimiter rolls the uploads under each
/// common prefix up into one `CommonPrefixes` entry, as ListObjects does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multipart_upload_listings_roll_up_common_prefixes() {
    let _serial = SERIAL.lock().await;
    let s3 = S3Cluster::start().await;
    let client = s3.client(&s3.alice);
    create_bucket(&client, "uploads").await;
    for key in ["logs/a", "logs/b", "photos/c", "top"] {
        ok(
            client.create_multipart_upload().bucket("uploads").key(key).send().await,
            &format!("CreateMultipartUpload {key}"),
        );
    }
    let listed = ok(
        client
            .list_multipart_uploads()
            .bucket("uploads")
            .delimiter("/")
            .send()
            .await,
        "ListMultipartUploads with a delimiter",
    );
    let keys: Vec<&str> = listed.uploads().iter().filter_map(|u| u.key()).collect();
    let prefixes: Vec<&str> = listed.common_prefixes().iter().filter_map(|p| p.prefix()).collect();
    assert_eq!(
        (keys, prefixes),
        (vec!["top"], vec!["logs/", "photos/"]),
        "uploads beside their common prefixes"
    );
    assert_eq!(listed.delimiter(), Some("/"), "the delimiter echoed");
    s3.shutdown().await;
}
