//! The S3 gateway under hostile input and crashes, on a whole in-process
//! cluster (name server, six chunk servers with EC 4+2, object server,
//! gateway) with short TTLs: bad input loses nothing and crashes leave no
//! garbage.
//!
//! - Raw HTTP that no SDK would send (malformed XML, XML bombs, huge and
//!   deeply nested XML, wrong or missing signatures, expired or tampered
//!   presigned URLs, lying digests, oversize headers, garbage bytes) is
//!   refused with a clear 4xx in S3's XML error format carrying
//!   `x-amz-request-id`; no name is written, the objects and the multipart
//!   upload that were there stay intact, and the server keeps serving.
//! - Hostile key names (unicode, `..`, `%`, `+`, spaces, XML specials,
//!   1024 bytes) round trip through PUT, GET, HEAD, LIST and DeleteObjects;
//!   1025 bytes is `KeyTooLongError`; zero-byte objects work.
//! - A client that drops its connection mid-PUT leaves no name, and once
//!   the TTLs pass no GC entry, no reservation and no live byte beyond the
//!   objects that exist.
//! - A gateway crash after each step of the write protocol (DESIGN §4),
//!   simulated with the failpoints, leaves a name only after the commit
//!   step, and once the TTLs pass the space accounting is exactly what the
//!   named objects need; a multipart completion crashed after its guard
//!   names nothing and can be completed again.
//!
//! After each scenario the accounting check polls every partition until
//! `gc_entries == 0`, `reserved_bytes == 0` and the live bytes of all
//! chunk groups equal the sizes of the objects and multipart parts that
//! exist, or fails with what it last saw.

#[path = "support/hostile.rs"]
mod hostile;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use aws_sdk_s3::Client;
use bytes::Bytes;
use hostile::{exchange_raw, object_path, xml_elements, Checks, Creds, Request};
use md5::{Digest, Md5};
use tempfile::TempDir;
use tessera_cli::local_cluster::{GatewaySpec, LocalCluster, LocalSpec};
use tessera_common::testing::pattern;
use tessera_gateway::config::ProtocolSettings;
use tessera_gateway::failpoints::WriteStep;
use tessera_objserver::config::DataSettings;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

/// One cluster at a time: the machine has two cores.
static SERIAL: Mutex<()> = Mutex::const_new(());

const GUARD_TTL_MS: u64 = 1_000;
const GC_TTL_MS: u64 = 3_000;
/// Small pieces, so that a body cut after 1 MiB has reached the object
/// servers in several writes.
const WRITE_PIECE_BYTES: usize = 256 << 10;
/// From the last write to a settled accounting: GC TTL, GC scans, reaps,
/// pending-delete hand-offs, with a wide margin for a loaded machine.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
const MIB: usize = 1 << 20;

/// A running cluster with a gateway and one access key.
struct Harness {
    cluster: LocalCluster,
    addr: SocketAddr,
    creds: Creds,
    s3: Client,
    _dir: TempDir,
}

impl Harness {
    async fn start() -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = DataSettings {
            gc_scan_interval_ms: 100,
            cluster_refresh_interval_ms: 200,
            ..DataSettings::default()
        };
        let protocol = ProtocolSettings {
            write_piece_bytes: WRITE_PIECE_BYTES,
            ..ProtocolSettings::short_ttls(GUARD_TTL_MS, GC_TTL_MS)
        };
        let spec = LocalSpec {
            data,
            gateway: Some(GatewaySpec {
                listen: "127.0.0.1:0".parse().expect("addr"),
                protocol,
                virtual_host_domains: vec![],
            }),
            ..LocalSpec::new(6, 4)
        };
        let cluster = LocalCluster::start(dir.path(), &spec).await.expect("start the cluster");
        let key = cluster.create_key("alice").await.expect("access key");
        let addr = cluster.gateway().expect("a gateway").local_addr();
        let endpoint = cluster.s3_endpoint().expect("an S3 endpoint");
        let s3 = tessera_cli::bench_s3::s3_client(&endpoint, &key.key_id, &key.secret, "us-east-1");
        let creds = Creds {
            key_id: key.key_id,
            secret: key.secret,
            region: "us-east-1".into(),
        };
        Harness {
            cluster,
            addr,
            creds,
            s3,
            _dir: dir,
        }
    }

    async fn create_bucket(&self, bucket: &str) {
        self.s3
            .create_bucket()
            .bucket(bucket)
            .send()
            .await
            .expect("create bucket");
    }

    async fn put(&self, bucket: &str, key: &str, body: Bytes) {
        self.s3
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(body))
            .send()
            .await
            .unwrap_or_else(|e| panic!("PUT {key:?}: {:?}", e.code()));
    }

    async fn get(&self, bucket: &str, key: &str) -> Bytes {
        let out = self
            .s3
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {key:?}: {:?}", e.code()));
        out.body.collect().await.expect("GET body").into_bytes()
    }

    /// Checks that `key` has no name, as S3 and the name servers see it.
    async fn check_unnamed(&self, c: &mut Checks, bucket: &str, key: &str, what: &str) {
        let answer = Request::new(self.addr, "GET", &object_path(bucket, key))
            .signed(&self.creds)
            .send(self.addr)
            .await;
        c.error(&answer, 404, "NoSuchKey", &format!("{what}: GET {key:?}"));
        let ns = self.cluster.ns_client().expect("name-server client");
        let named = ns.get_object(bucket, key).await.expect("name-server lookup");
        c.check(named.is_none(), || {
            format!("{what}: the name servers name {key:?}: {named:?}")
        });
    }

    /// A raw request to this gateway, signed with the harness's key.
    fn request(&self, method: &str, path: &str) -> Request {
        Request::new(self.addr, method, path)
    }

    /// The same client without retries: a failed attempt is the answer.
    fn s3_no_retries(&self) -> Client {
        let config = self
            .s3
            .config()
            .to_builder()
            .retry_config(RetryConfig::disabled())
            .build();
        Client::from_conf(config)
    }
}

/// Space accounting summed over every partition.
#[derive(Debug, Default, PartialEq, Eq)]
struct Accounting {
    gc_entries: u64,
    reserved_bytes: u64,
    live_bytes: u64,
}

async fn accounting(cluster: &LocalCluster) -> Accounting {
    let os = cluster.os_client().expect("object-server client");
    let mut total = Accounting::default();
    for partition in 0..cluster.partitions {
        let status = os.partition_status(partition).await.expect("partition status");
        total.gc_entries += status.gc_entries;
        total.reserved_bytes += status.reserved_bytes;
        total.live_bytes += status.groups.iter().map(|g| g.live_bytes).sum::<u64>();
    }
    total
}

/// Bytes the objects and the parts of open multipart uploads of every
/// bucket hold, as S3 lists them.
async fn existing_bytes(s3: &Client) -> u64 {
    let buckets = s3.list_buckets().send().await.expect("list buckets");
    let mut total = 0u64;
    for bucket in buckets.buckets() {
        let name = bucket.name().expect("bucket name");
        let mut pages = s3.list_objects_v2().bucket(name).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.expect("list objects");
            total += page
                .contents()
                .iter()
                .map(|o| o.size().unwrap_or(0) as u64)
                .sum::<u64>();
        }
        let uploads = s3
            .list_multipart_uploads()
            .bucket(name)
            .send()
            .await
            .expect("list uploads");
        for upload in uploads.uploads() {
            let parts = s3
                .list_parts()
                .bucket(name)
                .key(upload.key().expect("upload key"))
                .upload_id(upload.upload_id().expect("upload id"))
                .send()
                .await
                .expect("list parts");
            total += parts.parts().iter().map(|p| p.size().unwrap_or(0) as u64).sum::<u64>();
        }
    }
    total
}

/// Waits until no GC entry and no reservation is left and the live bytes
/// are exactly what the existing objects and parts need; a failed check
/// after [`SETTLE_TIMEOUT`].
async fn check_settled(h: &Harness, c: &mut Checks, what: &str) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let expected = existing_bytes(&h.s3).await;
        let seen = accounting(&h.cluster).await;
        let want = Accounting {
            gc_entries: 0,
            reserved_bytes: 0,
            live_bytes: expected,
        };
        if seen == want {
            return;
        }
        if Instant::now() > deadline {
            c.check(false, || {
                format!("{what}: accounting not settled after {SETTLE_TIMEOUT:?}: saw {seen:?}, want {want:?}")
            });
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn md5_base64(bytes: &[u8]) -> String {
    hostile::base64(&Md5::digest(bytes))
}

fn md5_hex(bytes: &[u8]) -> String {
    hostile::hex(&Md5::digest(bytes))
}

/// `<CompleteMultipartUpload>` naming `parts` (number, ETag).
fn complete_xml(parts: &[(i32, String)]) -> String {
    let mut xml = String::from("<CompleteMultipartUpload>");
    for (number, etag) in parts {
        xml.push_str(&format!(
            "<Part><PartNumber>{number}</PartNumber><ETag>{etag}</ETag></Part>"
        ));
    }
    xml.push_str("</CompleteMultipartUpload>");
    xml
}

/// `<Delete>` naming `keys`.
fn delete_xml(keys: &[&str]) -> String {
    let mut xml = String::from("<Delete>");
    for key in keys {
        xml.push_str(&format!("<Object><Key>{key}</Key></Object>"));
    }
    xml.push_str("</Delete>");
    xml
}

/// The classic "billion laughs": ten levels of ten-fold entity expansion.
fn billion_laughs(root: &str) -> String {
    let mut xml = String::from("<?xml version=\"1.0\"?>\n<!DOCTYPE lolz [\n<!ENTITY lol \"lol\">\n");
    for level in 1..=9 {
        let previous = if level == 1 {
            "lol".to_string()
        } else {
            format!("lol{}", level - 1)
        };
        let refs = format!("&{previous};").repeat(10);
        xml.push_str(&format!("<!ENTITY lol{level} \"{refs}\">\n"));
    }
    xml.push_str(&format!("]>\n<{root}><Object><Key>&lol9;</Key></Object></{root}>"));
    xml
}

/// `depth` nested unknown elements inside `root`, closed or not.
fn deeply_nested(root: &str, depth: usize, closed: bool) -> String {
    let mut xml = format!("<{root}>");
    xml.push_str(&"<a>".repeat(depth));
    if closed {
        xml.push_str(&"</a>".repeat(depth));
        xml.push_str(&format!("</{root}>"));
    }
    xml
}

/// A liveness probe: an authenticated ListBuckets on a new connection.
async fn check_serving(h: &Harness, c: &mut Checks, what: &str) {
    let answer = h.request("GET", "/").signed(&h.creds).send(h.addr).await;
    c.status(&answer, 200, &format!("{what}: ListBuckets (still serving)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_http_is_refused_and_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let h = Harness::start().await;
    let mut c = Checks::default();
    let bucket = "hostile";
    h.create_bucket(bucket).await;
    let keep = pattern(1, 70_000);
    h.put(bucket, "keep/one", keep.clone()).await;
    h.put(bucket, "keep/two", pattern(2, 1000)).await;

    malformed_completions(&h, &mut c, bucket).await;
    malformed_deletes(&h, &mut c, bucket).await;
    bad_credentials(&h, &mut c, bucket).await;
    presigned_urls(&h, &mut c, bucket).await;
    lying_digests(&h, &mut c, bucket).await;
    expect_continue(&h, &mut c, bucket).await;
    oversize_and_garbage(&h, &mut c).await;

    // Everything the hostile requests touched is as it was.
    c.equal(h.get(bucket, "keep/one").await, keep, "keep/one intact");
    let listed = h.s3.list_objects_v2().bucket(bucket).send().await.expect("list");
    let mut keys: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    keys.sort();
    c.equal(keys, vec!["keep/one", "mp/object"], "only the good writes are named");
    check_settled(&h, &mut c, "after hostile input").await;
    h.cluster.shutdown().await;
    c.finish("hostile HTTP");
}

/// CompleteMultipartUpload with bad bodies: 400 each time, the upload and
/// its parts untouched; then good XML completes it byte for byte.
async fn malformed_completions(h: &Harness, c: &mut Checks, bucket: &str) {
    let key = "mp/object";
    let created =
        h.s3.create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .expect("create upload");
    let upload_id = created.upload_id().expect("upload id").to_string();
    let part1 = pattern(10, 5 * MIB);
    let part2 = pattern(11, 3000);
    let mut etags = Vec::new();
    for (number, body) in [(1, part1.clone()), (2, part2.clone())] {
        let out =
            h.s3.upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .part_number(number)
                .body(ByteStream::from(body))
                .send()
                .await
                .expect("upload part");
        etags.push((number, out.e_tag().expect("part ETag").to_string()));
    }
    let path = object_path(bucket, key);
    let complete = |body: Vec<u8>| h.request("POST", &path).query("uploadId", &upload_id).body(body);

    let malformed: Vec<(&str, Vec<u8>)> = vec![
        ("empty body", Vec::new()),
        ("not XML", b"this is not xml at all".to_vec()),
        ("truncated", b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber>".to_vec()),
        (
            "mismatched tags",
            b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber></Prat></CompleteMultipartUpload>".to_vec(),
        ),
        (
            "a part number that is not a number",
            b"<CompleteMultipartUpload><Part><PartNumber>one</PartNumber><ETag>\"x\"</ETag></Part></CompleteMultipartUpload>"
                .to_vec(),
        ),
        ("no parts", b"<CompleteMultipartUpload></CompleteMultipartUpload>".to_vec()),
        (
            "a part without its ETag",
            b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber></Part></CompleteMultipartUpload>".to_vec(),
        ),
        ("billion laughs", billion_laughs("CompleteMultipartUpload").into_bytes()),
        (
            "100k nested elements",
            deeply_nested("CompleteMultipartUpload", 100_000, true).into_bytes(),
        ),
        (
            "100k unclosed elements",
            deeply_nested("CompleteMultipartUpload", 100_000, false).into_bytes(),
        ),
        (
            "invalid UTF-8",
            b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>\xff\xfe</ETag></Part></CompleteMultipartUpload>"
                .to_vec(),
        ),
    ];
    for (what, body) in malformed {
        let answer = complete(body).signed(&h.creds).send(h.addr).await;
        c.error(
            &answer,
            400,
            "MalformedXML",
            &format!("CompleteMultipartUpload, {what}"),
        );
    }

    // Well-formed but wrong: a part that was never uploaded, parts out of
    // order.
    let wrong_etag = complete_xml(&[(1, etags[0].1.clone()), (2, format!("\"{}\"", "0".repeat(32)))]);
    let answer = complete(wrong_etag.into_bytes()).signed(&h.creds).send(h.addr).await;
    c.error(&answer, 400, "InvalidPart", "CompleteMultipartUpload, a wrong ETag");
    let reversed = complete_xml(&[etags[1].clone(), etags[0].clone()]);
    let answer = complete(reversed.into_bytes()).signed(&h.creds).send(h.addr).await;
    c.error(
        &answer,
        400,
        "InvalidPartOrder",
        "CompleteMultipartUpload, parts out of order",
    );

    // Larger than any XML the gateway accepts (s3s: 20 MiB), unsigned so
    // that only the size is wrong. S3 answers 400 MaxMessageLengthExceeded.
    let huge = format!(
        "<CompleteMultipartUpload>{}</CompleteMultipartUpload>",
        " ".repeat(21 * MIB)
    );
    let answer = complete(huge.into_bytes())
        .signed_unsigned_payload(&h.creds)
        .send(h.addr)
        .await;
    c.client_error(&answer, "CompleteMultipartUpload, a 21 MiB body");
    check_serving(h, c, "after a 21 MiB XML body").await;

    // Nothing was named, the parts are all still there.
    h.check_unnamed(c, bucket, key, "after malformed completions").await;
    let parts =
        h.s3.list_parts()
            .bucket(bucket)
            .key(key)
            .upload_id(&upload_id)
            .send()
            .await
            .expect("list parts");
    let listed: Vec<(i32, i64)> = parts
        .parts()
        .iter()
        .map(|p| (p.part_number().unwrap_or(0), p.size().unwrap_or(0)))
        .collect();
    c.equal(
        listed,
        vec![(1, part1.len() as i64), (2, part2.len() as i64)],
        "parts intact after malformed completions",
    );

    let good = complete(complete_xml(&etags).into_bytes())
        .signed(&h.creds)
        .send(h.addr)
        .await;
    c.status(&good, 200, "CompleteMultipartUpload with good XML");
    let mut whole = part1.to_vec();
    whole.extend_from_slice(&part2);
    c.equal(h.get(bucket, key).await, Bytes::from(whole), "the completed object");
}

/// DeleteObjects with bad bodies: 400 each time, nothing deleted; then a
/// good one deletes exactly what it names.
async fn malformed_deletes(h: &Harness, c: &mut Checks, bucket: &str) {
    let path = format!("/{bucket}");
    let delete = |body: Vec<u8>| {
        let md5 = md5_base64(&body);
        h.request("POST", &path)
            .query("delete", "")
            .header("Content-MD5", &md5)
            .body(body)
    };
    let too_many: Vec<String> = (0..1001).map(|i| format!("keep/{i}")).collect();
    let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
    let malformed: Vec<(&str, Vec<u8>)> = vec![
        ("not XML", b"\x00\x01garbage".to_vec()),
        ("truncated", b"<Delete><Object><Key>keep/one</Key>".to_vec()),
        (
            "mismatched tags",
            b"<Delete><Object><Key>keep/one</Kye></Object></Delete>".to_vec(),
        ),
        ("no keys", b"<Delete></Delete>".to_vec()),
        ("1001 keys", delete_xml(&too_many).into_bytes()),
        ("billion laughs", billion_laughs("Delete").into_bytes()),
        (
            "100k unclosed elements",
            deeply_nested("Delete", 100_000, false).into_bytes(),
        ),
    ];
    for (what, body) in malformed {
        let answer = delete(body).signed(&h.creds).send(h.addr).await;
        c.error(&answer, 400, "MalformedXML", &format!("DeleteObjects, {what}"));
    }
    let empty = delete(Vec::new()).signed(&h.creds).send(h.addr).await;
    c.status(&empty, 400, "DeleteObjects, empty body");
    c.error_document(&empty, "DeleteObjects, empty body");

    // A body other than the one whose SHA-256 was signed (same length).
    let signed_body = delete_xml(&["keep/two"]).into_bytes();
    let mut swapped = delete(signed_body).signed(&h.creds);
    swapped.body = delete_xml(&["keep/one"]).into_bytes();
    let answer = swapped.send(h.addr).await;
    c.client_error(&answer, "DeleteObjects with a body that is not the signed one");

    for key in ["keep/one", "keep/two"] {
        let head = h.s3.head_object().bucket(bucket).key(key).send().await;
        c.check(head.is_ok(), || format!("{key} survives bad DeleteObjects: {head:?}"));
    }
    let good = delete(delete_xml(&["keep/two", "never/was"]).into_bytes())
        .signed(&h.creds)
        .send(h.addr)
        .await;
    c.status(&good, 200, "DeleteObjects with good XML");
    let mut deleted = xml_elements(&good.text(), "Key");
    deleted.sort();
    c.equal(
        deleted,
        vec!["keep/two".to_string(), "never/was".to_string()],
        "DeleteObjects answer",
    );
    h.check_unnamed(c, bucket, "keep/two", "deleted by a good DeleteObjects")
        .await;
}

/// Wrong, unknown, missing and stale credentials: 403 with the right code,
/// and nothing written.
async fn bad_credentials(h: &Harness, c: &mut Checks, bucket: &str) {
    let path = object_path(bucket, "keep/one");
    let wrong_secret = Creds {
        secret: "not-the-secret".into(),
        ..h.creds.clone()
    };
    let unknown_key = Creds {
        key_id: "TKNOSUCHKEY00000000".into(),
        ..h.creds.clone()
    };
    let answer = h.request("GET", &path).signed(&wrong_secret).send(h.addr).await;
    c.error(&answer, 403, "SignatureDoesNotMatch", "GET with a wrong secret");
    let answer = h.request("GET", &path).signed(&unknown_key).send(h.addr).await;
    c.error(&answer, 403, "InvalidAccessKeyId", "GET with an unknown key");
    let answer = h.request("GET", &path).send(h.addr).await;
    c.error(&answer, 403, "AccessDenied", "anonymous GET");
    let answer = h.request("GET", "/").send(h.addr).await;
    c.error(&answer, 403, "AccessDenied", "anonymous ListBuckets");

    // Signed correctly, then tampered with: another key in the path.
    let mut tampered = h.request("GET", &path).signed(&h.creds);
    tampered.path = object_path(bucket, "keep/two");
    let answer = tampered.send(h.addr).await;
    c.error(&answer, 403, "SignatureDoesNotMatch", "GET of another key than signed");

    // An hour old: outside the 15 minutes of allowed skew.
    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    let body = b"stale".to_vec();
    let answer = h
        .request("PUT", &object_path(bucket, "stale"))
        .body(body.clone())
        .signed_as(&h.creds, &hostile::sha256_hex(&body), an_hour_ago)
        .send(h.addr)
        .await;
    c.error(&answer, 403, "RequestTimeTooSkewed", "PUT signed an hour ago");

    let forged = || h.request("PUT", &object_path(bucket, "forged")).body("x");
    for (what, request) in [
        ("PUT with a wrong secret", forged().signed(&wrong_secret)),
        ("PUT with an unknown key", forged().signed(&unknown_key)),
        ("anonymous PUT", forged()),
    ] {
        let answer = request.send(h.addr).await;
        c.status(&answer, 403, what);
        c.error_document(&answer, what);
    }
    h.check_unnamed(c, bucket, "forged", "after forged PUTs").await;
    h.check_unnamed(c, bucket, "stale", "after a stale PUT").await;
}

/// Presigned GETs: a fresh one works; an expired one is 403 AccessDenied;
/// one whose path was changed is 403 SignatureDoesNotMatch.
async fn presigned_urls(h: &Harness, c: &mut Checks, bucket: &str) {
    let presign = |expires: Duration| async move {
        let config = PresigningConfig::expires_in(expires).expect("presigning config");
        h.s3.get_object()
            .bucket(bucket)
            .key("keep/one")
            .presigned(config)
            .await
            .expect("presign")
            .uri()
            .to_string()
    };
    let fetch = |uri: String| async move {
        let without_scheme = uri.strip_prefix("http://").expect("an http URL");
        let target = &without_scheme[without_scheme.find('/').expect("a path")..];
        let head = format!("GET {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", h.addr);
        hostile::exchange(h.addr, head.into_bytes(), Vec::new()).await
    };
    let short = presign(Duration::from_secs(1)).await;
    let fresh = presign(Duration::from_secs(300)).await;
    let answer = fetch(fresh.clone()).await;
    c.status(&answer, 200, "a fresh presigned GET");
    c.equal(answer.body.len(), 70_000, "a fresh presigned GET's body");
    let answer = fetch(fresh.replace("keep/one", "keep/two")).await;
    c.error(&answer, 403, "SignatureDoesNotMatch", "a presigned GET of another key");
    // The URL's validity counts whole seconds from its signing time.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let answer = fetch(short).await;
    c.error(&answer, 403, "AccessDenied", "a presigned GET past its expiry");
}

/// Bodies that do not match their Content-MD5, checksum or signed
/// SHA-256, or are too large to accept: refused, and no name.
async fn lying_digests(h: &Harness, c: &mut Checks, bucket: &str) {
    let body = pattern(20, 700_000).to_vec();
    let put = |key: &str| h.request("PUT", &object_path(bucket, key)).body(body.clone());

    let wrong_md5 = md5_base64(b"some other body");
    let answer = put("bad/md5")
        .header("Content-MD5", &wrong_md5)
        .signed(&h.creds)
        .send(h.addr)
        .await;
    c.error(&answer, 400, "BadDigest", "PUT with a wrong Content-MD5");
    h.check_unnamed(c, bucket, "bad/md5", "after a wrong Content-MD5").await;

    let answer = put("bad/md5-format")
        .header("Content-MD5", "not base64!")
        .signed(&h.creds)
        .send(h.addr)
        .await;
    c.error(&answer, 400, "InvalidDigest", "PUT with a malformed Content-MD5");
    h.check_unnamed(c, bucket, "bad/md5-format", "after a malformed Content-MD5")
        .await;

    let answer = put("bad/crc32c")
        .header("x-amz-checksum-crc32c", "AAAAAA==")
        .signed(&h.creds)
        .send(h.addr)
        .await;
    c.error(&answer, 400, "BadDigest", "PUT with a wrong x-amz-checksum-crc32c");
    h.check_unnamed(c, bucket, "bad/crc32c", "after a wrong CRC32C").await;

    // Signed with the SHA-256 of another body.
    let other_hash = hostile::sha256_hex(b"some other body");
    let answer = put("bad/sha256")
        .signed_as(&h.creds, &other_hash, SystemTime::now())
        .send(h.addr)
        .await;
    c.client_error(&answer, "PUT whose body is not the signed SHA-256");
    h.check_unnamed(c, bucket, "bad/sha256", "after a wrong x-amz-content-sha256")
        .await;

    let answer = put("bad/sha256-format")
        .signed_as(&h.creds, "not-a-hash", SystemTime::now())
        .send(h.addr)
        .await;
    c.client_error(&answer, "x-amz-content-sha256 that is not hex");
    h.check_unnamed(c, bucket, "bad/sha256-format", "after a malformed x-amz-content-sha256")
        .await;

    // Declares 6 GiB (over S3's 5 GiB PUT limit) and sends nothing: refused
    // from the headers alone.
    let answer = h
        .request("PUT", &object_path(bucket, "bad/huge"))
        .declared_len(6 << 30)
        .signed_unsigned_payload(&h.creds)
        .send(h.addr)
        .await;
    c.error(&answer, 400, "EntityTooLarge", "PUT declaring 6 GiB");
    h.check_unnamed(c, bucket, "bad/huge", "after a 6 GiB declaration")
        .await;

    // The same body with the right digests is accepted: the refusals above
    // were about the digests.
    let good = put("good/md5")
        .header("Content-MD5", &md5_base64(&body))
        .signed(&h.creds)
        .send(h.addr)
        .await;
    c.status(&good, 200, "PUT with the right Content-MD5");
    let etag = good.header("ETag").unwrap_or("").trim_matches('"').to_string();
    c.equal(etag, md5_hex(&body), "ETag of a good PUT");
    h.s3.delete_object()
        .bucket(bucket)
        .key("good/md5")
        .send()
        .await
        .expect("delete good/md5");
}

/// PUTs that ask for `100 Continue` and are answered without it, so the
/// client never sends the body (botocore does this with every put_object):
/// a refusal before the body, and an empty body. The answer must say
/// `Connection: close` (RFC 9110 §10.1.1: a server answering before
/// reading the content says whether it closes), or the client and the
/// server disagree about where the next request starts: the server may
/// take the next request's first bytes for the unsent body, and botocore
/// parses the next answer on that connection against this one's status
/// line (boto/botocore#3755).
async fn expect_continue(h: &Harness, c: &mut Checks, bucket: &str) {
    let mut refused = h
        .request("PUT", &object_path(bucket, "keep/one"))
        .header("Expect", "100-continue")
        .header("If-None-Match", "*")
        .body("clobber")
        .signed(&h.creds);
    refused.keep_alive = true;
    let answer = hostile::exchange_head_only(h.addr, &refused.head_bytes()).await;
    c.error(
        &answer,
        412,
        "PreconditionFailed",
        "Expect: 100-continue PUT refused before its body",
    );
    c.equal(
        answer.header("connection").map(str::to_ascii_lowercase),
        Some("close".to_string()),
        "Connection header of a refusal sent before the body of an Expect: 100-continue PUT",
    );

    let mut empty = h
        .request("PUT", &object_path(bucket, "expect/empty"))
        .header("Expect", "100-continue")
        .signed(&h.creds);
    empty.keep_alive = true;
    let answer = hostile::exchange_head_only(h.addr, &empty.head_bytes()).await;
    c.status(&answer, 200, "Expect: 100-continue PUT of an empty body");
    c.equal(
        answer.header("connection").map(str::to_ascii_lowercase),
        Some("close".to_string()),
        "Connection header of the answer to an Expect: 100-continue PUT of an empty body",
    );
    h.s3.delete_object()
        .bucket(bucket)
        .key("expect/empty")
        .send()
        .await
        .expect("delete expect/empty");
}

/// A 100 KiB header, too many headers, garbage bytes: the connection is
/// refused or closed, and the next connection is served.
async fn oversize_and_garbage(h: &Harness, c: &mut Checks) {
    // A 100 KiB header block, in one write and trickled in 1000-byte
    // writes: the bound must not depend on how TCP cuts the bytes.
    let big = "a".repeat(100 << 10);
    let oversize = h.request("GET", "/").signed(&h.creds).header("x-amz-meta-big", &big);
    let answer = oversize.send(h.addr).await;
    c.status(&answer, 431, "a 100 KiB header in one write");
    check_serving(h, c, "after a 100 KiB header").await;
    let answer = hostile::exchange_trickled(h.addr, &oversize.head_bytes(), 1000).await;
    c.status(&answer, 431, "a 100 KiB header in 1000-byte writes");
    check_serving(h, c, "after a trickled 100 KiB header").await;

    let mut many = h.request("GET", "/").signed(&h.creds);
    for i in 0..200 {
        many = many.header(&format!("x-junk-{i}"), "1");
    }
    let answer = many.send(h.addr).await;
    c.status(&answer, 431, "200 headers");
    check_serving(h, c, "after 200 headers").await;

    let long_target = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "k".repeat(100 << 10));
    let garbage: Vec<(&str, Vec<u8>)> = vec![
        ("binary noise", pattern(30, 4096).to_vec()),
        (
            "a TLS ClientHello",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
        ),
        ("HTTP/9.9", b"GET / HTTP/9.9\r\nHost: x\r\n\r\n".to_vec()),
        ("a header without a colon", b"GET / HTTP/1.1\r\nHost x\r\n\r\n".to_vec()),
        ("a 100 KiB request target", long_target.into_bytes()),
        (
            "a negative Content-Length",
            b"PUT /b/k HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n".to_vec(),
        ),
        (
            "two different Content-Lengths",
            b"PUT /b/k HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".to_vec(),
        ),
        (
            "a bad chunk size",
            b"PUT /b/k HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
        ),
    ];
    for (what, bytes) in garbage {
        // The server closes the connection with at most a 4xx; never a
        // success, never a hang.
        if let Some(answer) = exchange_raw(h.addr, &bytes).await {
            c.check((400..500).contains(&answer.status), || {
                format!("{what}: answered {} {}", answer.status, answer.short_text())
            });
        }
        check_serving(h, c, &format!("after {what}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_key_names_round_trip() {
    let _serial = SERIAL.lock().await;
    let h = Harness::start().await;
    let mut c = Checks::default();
    let bucket = "keys";
    h.create_bucket(bucket).await;
    let long_ascii = format!("long/{}", "x".repeat(1024 - 5));
    // 341 three-byte characters and one byte: 1024 bytes, 342 characters.
    let long_utf8 = format!("{}a", "€".repeat(341));
    let keys: Vec<String> = [
        "ünïcødé/日本語/файл 🦀.txt",
        "a/../b",
        "../escape",
        "./dot",
        "..",
        "100%",
        "%2F%25 literally",
        "spaces in  the  name ",
        "plus+sign+",
        "amp&lt<gt>quote\"apos'",
        "question?hash#semi;colon:",
        "tilde~star*bang!(paren)",
        "tab\there",
        "trailing/",
    ]
    .iter()
    .map(|k| k.to_string())
    .chain([long_ascii.clone(), long_utf8.clone()])
    .collect();
    assert_eq!(long_ascii.len(), 1024);
    assert_eq!(long_utf8.len(), 1024);

    for (i, key) in keys.iter().enumerate() {
        h.put(bucket, key, pattern(100 + i as u64, 100 + i)).await;
    }
    for (i, key) in keys.iter().enumerate() {
        c.equal(
            h.get(bucket, key).await,
            pattern(100 + i as u64, 100 + i),
            &format!("GET {key:?}"),
        );
        let head =
            h.s3.head_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .unwrap_or_else(|e| panic!("HEAD {key:?}: {:?}", e.code()));
        c.equal(head.content_length(), Some(100 + i as i64), &format!("HEAD {key:?}"));
    }
    // The same keys as raw, hand-encoded paths (not the SDK's encoding).
    for (i, key) in keys.iter().enumerate() {
        let answer = h
            .request("GET", &object_path(bucket, key))
            .signed(&h.creds)
            .send(h.addr)
            .await;
        c.status(&answer, 200, &format!("raw GET {key:?}"));
        c.equal(
            answer.body,
            pattern(100 + i as u64, 100 + i).to_vec(),
            &format!("raw GET {key:?}"),
        );
    }
    let mut expected = keys.clone();
    expected.sort();
    c.equal(
        list_keys(&h.s3, bucket, None).await,
        expected,
        "LIST returns every key exactly",
    );
    c.equal(
        list_keys(&h.s3, bucket, Some("ünïcødé/")).await,
        vec!["ünïcødé/日本語/файл 🦀.txt".to_string()],
        "LIST with a unicode prefix",
    );

    // One byte too long, in ASCII and in UTF-8.
    for key in [format!("{long_ascii}y"), format!("{}ab", "€".repeat(341))] {
        assert_eq!(key.len(), 1025);
        let error =
            h.s3.put_object()
                .bucket(bucket)
                .key(&key)
                .body(ByteStream::from_static(b"too long"))
                .send()
                .await
                .expect_err("a 1025-byte key is refused");
        c.equal(error.code(), Some("KeyTooLongError"), "SDK PUT of a 1025-byte key");
        let raw = h
            .request("PUT", &object_path(bucket, &key))
            .body("too long")
            .signed(&h.creds)
            .send(h.addr)
            .await;
        c.error(&raw, 400, "KeyTooLongError", "raw PUT of a 1025-byte key");
    }

    // Zero-byte objects, through the SDK and as a raw PUT without a body.
    h.put(bucket, "empty/sdk", Bytes::new()).await;
    let raw = h
        .request("PUT", &object_path(bucket, "empty/raw"))
        .signed(&h.creds)
        .send(h.addr)
        .await;
    c.status(&raw, 200, "raw empty PUT");
    for key in ["empty/sdk", "empty/raw"] {
        c.equal(h.get(bucket, key).await, Bytes::new(), &format!("{key} is empty"));
        let head =
            h.s3.head_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .expect("HEAD empty");
        c.equal(head.content_length(), Some(0), &format!("{key} length"));
        c.equal(
            head.e_tag().map(|e| e.trim_matches('"')),
            Some("d41d8cd98f00b204e9800998ecf8427e"),
            &format!("{key} ETag is the MD5 of nothing"),
        );
    }
    let empties =
        h.s3.list_objects_v2()
            .bucket(bucket)
            .prefix("empty/")
            .send()
            .await
            .expect("list");
    let sizes: Vec<i64> = empties.contents().iter().map(|o| o.size().unwrap_or(-1)).collect();
    c.equal(sizes, vec![0, 0], "empty objects list with size 0");
    check_settled(&h, &mut c, "after hostile key names").await;

    // DeleteObjects (the keys inside XML) removes every one of them.
    let mut all = keys.clone();
    all.extend(["empty/sdk".to_string(), "empty/raw".to_string()]);
    let objects: Vec<ObjectIdentifier> = all
        .iter()
        .map(|k| ObjectIdentifier::builder().key(k).build().expect("identifier"))
        .collect();
    let delete = Delete::builder().set_objects(Some(objects)).build().expect("delete");
    let out =
        h.s3.delete_objects()
            .bucket(bucket)
            .delete(delete)
            .send()
            .await
            .expect("DeleteObjects");
    c.check(out.errors().is_empty(), || {
        format!("DeleteObjects errors: {:?}", out.errors())
    });
    let mut deleted: Vec<String> = out.deleted().iter().filter_map(|d| d.key().map(String::from)).collect();
    deleted.sort();
    all.sort();
    c.equal(deleted, all, "DeleteObjects deleted every key, named as sent");
    c.equal(
        list_keys(&h.s3, bucket, None).await,
        Vec::<String>::new(),
        "the bucket is empty",
    );
    check_settled(&h, &mut c, "after deleting every hostile key").await;
    h.cluster.shutdown().await;
    c.finish("hostile key names");
}

async fn list_keys(s3: &Client, bucket: &str, prefix: Option<&str>) -> Vec<String> {
    let mut keys = Vec::new();
    let mut pages = s3
        .list_objects_v2()
        .bucket(bucket)
        .set_prefix(prefix.map(String::from))
        .max_keys(5)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.expect("list page");
        keys.extend(page.contents().iter().filter_map(|o| o.key().map(String::from)));
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_put_leaves_no_garbage() {
    let _serial = SERIAL.lock().await;
    let h = Harness::start().await;
    let mut c = Checks::default();
    let bucket = "drops";
    h.create_bucket(bucket).await;
    let kept = pattern(40, 300_000);
    h.put(bucket, "kept", kept.clone()).await;
    check_settled(&h, &mut c, "before the drops").await;

    // (key, bytes sent before the close) of an 8 MiB PUT.
    let declared = 8 * MIB as u64;
    let drops = [
        ("dropped/headers-only", 0),
        ("dropped/one-mib", MIB),
        ("dropped/all-but-one", 8 * MIB - 1),
    ];
    for (key, sent) in drops {
        let request = h
            .request("PUT", &object_path(bucket, key))
            .declared_len(declared)
            .signed_unsigned_payload(&h.creds);
        let mut stream = tokio::net::TcpStream::connect(h.addr).await.expect("connect");
        stream.write_all(&request.head_bytes()).await.expect("send headers");
        stream
            .write_all(&pattern(41, sent))
            .await
            .expect("send part of the body");
        stream.flush().await.expect("flush");
        // Let the gateway stream what it got to the object servers.
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(stream);
    }
    // The writes began (their GC entries live until the TTL) and wrote data.
    let early = accounting(&h.cluster).await;
    c.check(early.gc_entries >= 1, || {
        format!("the dropped PUTs opened writes: {early:?}")
    });
    c.check(early.live_bytes > kept.len() as u64, || {
        format!("the dropped PUTs wrote data before the drop: {early:?}")
    });
    for (key, _) in drops {
        h.check_unnamed(&mut c, bucket, key, "right after the drop").await;
    }
    check_settled(&h, &mut c, "after dropped PUTs").await;
    c.equal(
        accounting(&h.cluster).await.live_bytes,
        kept.len() as u64,
        "live bytes after dropped PUTs",
    );
    for (key, _) in drops {
        h.check_unnamed(&mut c, bucket, key, "after the TTLs").await;
    }
    c.equal(h.get(bucket, "kept").await, kept, "the kept object");
    check_serving(&h, &mut c, "after dropped PUTs").await;
    h.cluster.shutdown().await;
    c.finish("dropped PUTs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_each_write_step_leaves_no_garbage() {
    let _serial = SERIAL.lock().await;
    let h = Harness::start().await;
    let mut c = Checks::default();
    let bucket = "crashes";
    h.create_bucket(bucket).await;
    let failpoints = h.cluster.gateway().expect("gateway").failpoints().clone();
    let source = pattern(50, 400_000);
    h.put(bucket, "source", source.clone()).await;

    let steps = [
        (WriteStep::Guard, "crash/after-guard"),
        (WriteStep::GcEntry, "crash/after-gc-entry"),
        (WriteStep::Data, "crash/after-data"),
        (WriteStep::Commit, "crash/after-commit"),
    ];
    let body_of = |i: usize| pattern(60 + i as u64, MIB + 12_345);
    for (i, (step, key)) in steps.iter().enumerate() {
        failpoints.arm(Some(*step));
        let answer = h
            .request("PUT", &object_path(bucket, key))
            .body(body_of(i).to_vec())
            .signed(&h.creds)
            .send(h.addr)
            .await;
        failpoints.arm(None);
        let what = format!("PUT crashed after {step:?}");
        c.check(answer.status >= 500, || {
            format!("{what}: answered {} instead of a 5xx", answer.status)
        });
        if answer.status >= 500 {
            c.error_document(&answer, &what);
        }
    }
    for (step, key) in &steps[..3] {
        h.check_unnamed(&mut c, bucket, key, &format!("PUT crashed after {step:?}"))
            .await;
    }
    c.equal(
        h.get(bucket, "crash/after-commit").await,
        body_of(3),
        "an object committed before the crash reads",
    );

    // A copy whose target write crashes after its data: no target name.
    failpoints.arm(Some(WriteStep::Data));
    let copy = h
        .s3_no_retries()
        .copy_object()
        .bucket(bucket)
        .key("crash/copy")
        .copy_source(format!("{bucket}/source"))
        .send()
        .await;
    failpoints.arm(None);
    let status = copy
        .as_ref()
        .err()
        .and_then(|e| e.raw_response())
        .map(|r| r.status().as_u16());
    c.check(status.is_some_and(|s| s >= 500), || {
        format!("CopyObject crashed after Data: {status:?}, want a 5xx")
    });
    h.check_unnamed(&mut c, bucket, "crash/copy", "copy crashed after Data")
        .await;

    multipart_crash(&h, &mut c, bucket).await;

    // Once the TTLs pass: nothing left but what the names reference, and
    // the object committed before the crash still reads (reap answered
    // "referenced").
    check_settled(&h, &mut c, "after crashes at every step").await;
    c.equal(
        h.get(bucket, "crash/after-commit").await,
        body_of(3),
        "committed-then-crashed object after GC",
    );
    c.equal(h.get(bucket, "source").await, source, "the copy source");
    for (step, key) in &steps[..3] {
        let what = format!("after the TTLs, crash after {step:?}");
        h.check_unnamed(&mut c, bucket, key, &what).await;
    }
    // The gateway writes normally again.
    h.put(bucket, "crash/after-guard", pattern(70, 5000)).await;
    c.equal(
        h.get(bucket, "crash/after-guard").await,
        pattern(70, 5000),
        "a normal write after the crashes",
    );
    check_settled(&h, &mut c, "after a normal write").await;
    h.cluster.shutdown().await;
    c.finish("crashes in the write protocol");
}

/// A part upload crashed after its data is not listed; a completion
/// crashed after its guard names nothing, keeps the parts, and completing
/// again works.
async fn multipart_crash(h: &Harness, c: &mut Checks, bucket: &str) {
    let failpoints = h.cluster.gateway().expect("gateway").failpoints().clone();
    let key = "crash/multipart";
    let s3 = h.s3_no_retries();
    let created = s3
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .expect("create upload");
    let upload_id = created.upload_id().expect("upload id").to_string();
    let upload_part = |number: i32, body: Bytes| {
        s3.upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(&upload_id)
            .part_number(number)
            .body(ByteStream::from(body))
            .send()
    };
    let list_parts = || async {
        let listed = s3
            .list_parts()
            .bucket(bucket)
            .key(key)
            .upload_id(&upload_id)
            .send()
            .await
            .expect("list parts");
        listed
            .parts()
            .iter()
            .filter_map(|p| p.part_number())
            .collect::<Vec<i32>>()
    };
    let part1 = pattern(80, 5 * MIB);
    let part2 = pattern(81, 777_777);

    failpoints.arm(Some(WriteStep::Data));
    let crashed = upload_part(1, part1.clone()).await;
    failpoints.arm(None);
    c.check(crashed.is_err(), || "UploadPart crashed after Data succeeded".into());
    c.equal(list_parts().await, vec![], "a part crashed after Data is not listed");

    let e1 = upload_part(1, part1.clone()).await.expect("part 1");
    let e2 = upload_part(2, part2.clone()).await.expect("part 2");
    let completed = CompletedMultipartUpload::builder()
        .parts(
            CompletedPart::builder()
                .part_number(1)
                .e_tag(e1.e_tag().expect("etag"))
                .build(),
        )
        .parts(
            CompletedPart::builder()
                .part_number(2)
                .e_tag(e2.e_tag().expect("etag"))
                .build(),
        )
        .build();
    let complete = || {
        s3.complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(&upload_id)
            .multipart_upload(completed.clone())
            .send()
    };
    failpoints.arm(Some(WriteStep::Guard));
    let crashed = complete().await;
    failpoints.arm(None);
    let status = crashed
        .as_ref()
        .err()
        .and_then(|e| e.raw_response())
        .map(|r| r.status().as_u16());
    c.check(status.is_some_and(|s| s >= 500), || {
        format!("CompleteMultipartUpload crashed after its guard: {status:?}, want a 5xx")
    });
    h.check_unnamed(c, bucket, key, "completion crashed after its guard")
        .await;
    c.equal(list_parts().await, vec![1, 2], "the parts survive a crashed completion");

    // Past the guard's TTL, so a leftover guard cannot be what lets it pass.
    tokio::time::sleep(Duration::from_millis(GUARD_TTL_MS + 200)).await;
    complete().await.expect("completing again after the crash");
    let mut whole = part1.to_vec();
    whole.extend_from_slice(&part2);
    c.equal(h.get(bucket, key).await, Bytes::from(whole), "the completed object");
}
