#!/usr/bin/env python3
"""A realistic boto3 session against `tessera dev`, run by cli/tests/dev_boto3.rs.

`boto3_session.py session MANIFEST` creates a bucket and does what an
application does: put/get/head/list (with pagination, prefixes and
delimiters), ranged GET, copy, delete, DeleteObjects, multipart through
`upload_fileobj` (a small multipart threshold, so it really uploads parts),
an aborted multipart upload, presigned GET and PUT URLs used with urllib,
and conditional writes and reads. boto3 runs with its defaults (CRC32
checksums in aws-chunked bodies with trailers) and without retries, so every
request has to succeed the first time. It writes MANIFEST: the objects that
must survive a restart, each with the seed and size of its bytes.

`boto3_session.py verify MANIFEST` checks, after a restart, that the bucket
lists exactly those objects and each reads back byte for byte.

The endpoint and keys come from TESSERA_S3_ENDPOINT, TESSERA_ACCESS_KEY,
TESSERA_SECRET_KEY and TESSERA_REGION. Any mismatch exits non-zero.
"""

import hashlib
import io
import json
import os
import random
import sys
import traceback
import urllib.error
import urllib.request

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError, ReadTimeoutError

BUCKET = "boto3-session"
MIB = 1024 * 1024


def client(read_timeout=60, signature_version="s3v4"):
    config = Config(
        signature_version=signature_version,
        s3={"addressing_style": "path"},
        retries={"total_max_attempts": 1},
        connect_timeout=5,
        read_timeout=read_timeout,
    )
    return boto3.client(
        "s3",
        endpoint_url=os.environ["TESSERA_S3_ENDPOINT"],
        region_name=os.environ["TESSERA_REGION"],
        aws_access_key_id=os.environ["TESSERA_ACCESS_KEY"],
        aws_secret_access_key=os.environ["TESSERA_SECRET_KEY"],
        config=config,
    )


def blob(seed, size):
    """Deterministic bytes: the same (seed, size) gives the same bytes."""
    return random.Random(seed).randbytes(size)


def check(condition, what):
    if not condition:
        raise AssertionError(what)


def expect_error(call, status, codes, what):
    """Runs call(); it must fail with HTTP `status` and one of `codes`."""
    try:
        call()
    except ClientError as e:
        got_status = e.response["ResponseMetadata"]["HTTPStatusCode"]
        got_code = e.response["Error"]["Code"]
        check(got_status == status, f"{what}: status {got_status}, want {status} ({got_code})")
        check(got_code in codes, f"{what}: code {got_code!r}, want one of {codes}")
        return
    raise AssertionError(f"{what}: succeeded, want {status} {codes}")


def md5_hex(data):
    return hashlib.md5(data).hexdigest()


def list_keys(s3, prefix=""):
    keys = []
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, Prefix=prefix, PaginationConfig={"PageSize": 2}
    )
    for page in pages:
        keys.extend(o["Key"] for o in page.get("Contents", []))
    return keys


def session(manifest_path):
    s3 = client()
    kept = {}  # key -> (seed, size): what must survive a restart

    def put(key, seed, size, **extra):
        data = blob(seed, size)
        out = s3.put_object(Bucket=BUCKET, Key=key, Body=data, **extra)
        check(out["ETag"].strip('"') == md5_hex(data), f"ETag of {key}")
        kept[key] = (seed, size)
        return data

    # Buckets.
    s3.create_bucket(Bucket=BUCKET)
    s3.head_bucket(Bucket=BUCKET)
    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    check(BUCKET in names, f"ListBuckets shows {BUCKET}: {names}")
    expect_error(
        lambda: s3.create_bucket(Bucket=BUCKET),
        409,
        ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"),
        "creating the bucket twice",
    )
    expect_error(lambda: s3.head_bucket(Bucket="no-such-bucket-here"), 404, ("404", "NoSuchBucket"), "HEAD of a missing bucket")

    # Small objects with metadata.
    hello = b"hello, tessera\n"
    s3.put_object(
        Bucket=BUCKET,
        Key="docs/hello.txt",
        Body=hello,
        ContentType="text/plain",
        Metadata={"owner": "boto3", "purpose": "session"},
    )
    kept["docs/hello.txt"] = None  # literal bytes, checked below
    got = s3.get_object(Bucket=BUCKET, Key="docs/hello.txt")
    check(got["Body"].read() == hello, "GET docs/hello.txt")
    check(got["ContentType"] == "text/plain", f"Content-Type: {got['ContentType']}")
    check(got["Metadata"] == {"owner": "boto3", "purpose": "session"}, f"metadata: {got['Metadata']}")
    head = s3.head_object(Bucket=BUCKET, Key="docs/hello.txt")
    check(head["ContentLength"] == len(hello), "HEAD length")
    check(head["ETag"].strip('"') == md5_hex(hello), "HEAD ETag")
    ranged = s3.get_object(Bucket=BUCKET, Key="docs/hello.txt", Range="bytes=7-13")
    check(ranged["Body"].read() == hello[7:14], "ranged GET")
    check(ranged["ContentRange"] == f"bytes 7-13/{len(hello)}", f"Content-Range: {ranged['ContentRange']}")

    for i in range(5):
        put(f"photos/2024/img{i}.jpg", 100 + i, 10_000 + i)
    put("photos/2025/new.jpg", 200, 4096)
    big = put("single/3mib.bin", 400, 3 * MIB + 17)
    check(s3.get_object(Bucket=BUCKET, Key="single/3mib.bin")["Body"].read() == big, "GET 3 MiB")

    # Listings: pagination (2 per page), prefix, delimiter, v1.
    check(list_keys(s3, "photos/2024/") == [f"photos/2024/img{i}.jpg" for i in range(5)], "paginated prefix listing")
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="photos/", Delimiter="/")
    prefixes = [p["Prefix"] for p in listed.get("CommonPrefixes", [])]
    check(prefixes == ["photos/2024/", "photos/2025/"], f"delimiter under photos/: {prefixes}")
    check(not listed.get("Contents"), f"no object directly under photos/: {listed.get('Contents')}")
    listed = s3.list_objects_v2(Bucket=BUCKET, Delimiter="/")
    prefixes = sorted(p["Prefix"] for p in listed.get("CommonPrefixes", []))
    check(prefixes == ["docs/", "photos/", "single/"], f"top-level prefixes: {prefixes}")
    check(not listed.get("Contents"), f"no top-level objects: {listed.get('Contents')}")
    v1 = s3.list_objects(Bucket=BUCKET, Prefix="photos/2025/")
    check([o["Key"] for o in v1.get("Contents", [])] == ["photos/2025/new.jpg"], "ListObjects v1")

    # Copy, then delete the source.
    s3.copy_object(Bucket=BUCKET, Key="photos/copy.jpg", CopySource={"Bucket": BUCKET, "Key": "photos/2024/img0.jpg"})
    kept["photos/copy.jpg"] = kept["photos/2024/img0.jpg"]
    copied = s3.get_object(Bucket=BUCKET, Key="photos/copy.jpg")["Body"].read()
    check(copied == blob(100, 10_000), "copied bytes")
    s3.delete_object(Bucket=BUCKET, Key="photos/2024/img0.jpg")
    del kept["photos/2024/img0.jpg"]
    expect_error(
        lambda: s3.get_object(Bucket=BUCKET, Key="photos/2024/img0.jpg"), 404, ("NoSuchKey",), "GET after DELETE"
    )
    deleted = s3.delete_objects(
        Bucket=BUCKET,
        Delete={"Objects": [{"Key": "photos/2024/img1.jpg"}, {"Key": "photos/2024/img2.jpg"}]},
    )
    check(sorted(d["Key"] for d in deleted.get("Deleted", [])) == ["photos/2024/img1.jpg", "photos/2024/img2.jpg"], "DeleteObjects")
    check(not deleted.get("Errors"), f"DeleteObjects errors: {deleted.get('Errors')}")
    del kept["photos/2024/img1.jpg"]
    del kept["photos/2024/img2.jpg"]

    # Multipart through the transfer manager: 13 MiB in 5 MiB parts.
    transfer = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB, max_concurrency=2)
    multi = blob(500, 13 * MIB + 5)
    s3.upload_fileobj(io.BytesIO(multi), BUCKET, "multipart/13mib.bin", Config=transfer)
    kept["multipart/13mib.bin"] = (500, len(multi))
    head = s3.head_object(Bucket=BUCKET, Key="multipart/13mib.bin")
    check(head["ContentLength"] == len(multi), "multipart length")
    check(head["ETag"].strip('"').endswith("-3"), f"a 3-part ETag: {head['ETag']}")
    back = io.BytesIO()
    s3.download_fileobj(BUCKET, "multipart/13mib.bin", back, Config=transfer)
    check(back.getvalue() == multi, "multipart bytes")
    part2 = s3.get_object(Bucket=BUCKET, Key="multipart/13mib.bin", PartNumber=2)
    check(part2["Body"].read() == multi[5 * MIB : 10 * MIB], "GET of part 2")

    # A multipart upload abandoned with AbortMultipartUpload.
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key="multipart/aborted")["UploadId"]
    s3.upload_part(Bucket=BUCKET, Key="multipart/aborted", UploadId=upload, PartNumber=1, Body=blob(600, 1000))
    uploads = s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    check([u["UploadId"] for u in uploads] == [upload], f"one upload in progress: {uploads}")
    s3.abort_multipart_upload(Bucket=BUCKET, Key="multipart/aborted", UploadId=upload)
    expect_error(
        lambda: s3.list_parts(Bucket=BUCKET, Key="multipart/aborted", UploadId=upload),
        404,
        ("NoSuchUpload",),
        "ListParts of an aborted upload",
    )
    check(not s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads"), "no upload in progress")
    expect_error(
        lambda: s3.head_object(Bucket=BUCKET, Key="multipart/aborted"), 404, ("404", "NoSuchKey"), "aborted upload unnamed"
    )

    # Presigned URLs used by a plain HTTP client: SigV4, and the SigV2 query
    # signature boto3 presigns with unless told otherwise.
    for version in ("s3v4", None):
        signer = client(signature_version=version)
        url = signer.generate_presigned_url(
            "get_object", Params={"Bucket": BUCKET, "Key": "single/3mib.bin"}, ExpiresIn=300
        )
        with urllib.request.urlopen(url, timeout=30) as response:
            check(response.status == 200, f"presigned GET status ({version or 'boto3 default'})")
            check(response.read() == big, f"presigned GET bytes ({version or 'boto3 default'})")
    url = s3.generate_presigned_url("put_object", Params={"Bucket": BUCKET, "Key": "presigned/put.bin"}, ExpiresIn=300)
    presigned_body = blob(700, 50_000)
    request = urllib.request.Request(url, data=presigned_body, method="PUT")
    with urllib.request.urlopen(request, timeout=30) as response:
        check(response.status == 200, "presigned PUT status")
    kept["presigned/put.bin"] = (700, 50_000)
    check(s3.get_object(Bucket=BUCKET, Key="presigned/put.bin")["Body"].read() == presigned_body, "presigned PUT bytes")
    tampered = url.replace("presigned/put.bin", "presigned/other.bin")
    try:
        urllib.request.urlopen(urllib.request.Request(tampered, data=b"x", method="PUT"), timeout=30)
        raise AssertionError("a tampered presigned PUT succeeded")
    except urllib.error.HTTPError as e:
        check(e.code == 403, f"tampered presigned PUT: {e.code}")

    # Conditional writes: create-only, compare-and-swap.
    failures = conditional_writes(kept, hello)
    put("docs/created-once", 801, 456, IfMatch=s3.head_object(Bucket=BUCKET, Key="docs/created-once")["ETag"])

    # Conditional reads.
    etag = s3.head_object(Bucket=BUCKET, Key="docs/created-once")["ETag"]
    expect_error(
        lambda: s3.get_object(Bucket=BUCKET, Key="docs/created-once", IfNoneMatch=etag), 304, ("304",), "GET If-None-Match"
    )
    expect_error(
        lambda: s3.get_object(Bucket=BUCKET, Key="docs/created-once", IfMatch='"' + "1" * 32 + '"'),
        412,
        ("PreconditionFailed",),
        "GET If-Match with another ETag",
    )
    check(len(s3.get_object(Bucket=BUCKET, Key="docs/created-once", IfMatch=etag)["Body"].read()) == 456, "GET If-Match")

    failures += zero_byte_put_then_another(kept)

    # What the bucket holds now is exactly what is kept.
    check(sorted(list_keys(s3)) == sorted(kept), f"final listing {sorted(list_keys(s3))} vs {sorted(kept)}")
    manifest = {key: (None if v is None else {"seed": v[0], "size": v[1]}) for key, v in kept.items()}
    manifest["docs/hello.txt"] = {"literal": hello.decode()}
    with open(manifest_path, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    if failures:
        raise AssertionError("; ".join(failures))
    print(f"session ok: {len(kept)} objects kept")


def next_request_works(s3, after, failures):
    """After `after` was refused before its body was sent, the next request
    on the same pooled connection must work. botocore sends `Expect:
    100-continue` with every put_object and, when the answer comes without
    `100 Continue`, does not send the body; a server that keeps such a
    connection open may take the next request's first bytes for that body
    (400 Bad Request, a reset) or leave botocore parsing the next answer
    against the refusal's status line (boto/botocore#3755)."""
    try:
        got = s3.get_object(Bucket=BUCKET, Key="docs/hello.txt")["Body"].read()
        if got != b"hello, tessera\n":
            failures.append(f"after {after}: the next GET on the connection read {got[:40]!r}")
    except Exception as e:  # noqa: BLE001 - any failure is the finding
        failures.append(f"after {after}: the next request on the same connection failed: {type(e).__name__}: {e}")


def conditional_writes(kept, hello):
    """Create-only and compare-and-swap PUTs. Each refusal (412, answered
    before the body) is followed by another request on the same connection;
    a new client after each, so one broken connection does not hide the
    next finding. Returns the failures of the follow-up requests."""
    failures = []
    for attempt in range(5):
        s3 = client(read_timeout=5)
        expect_error(
            lambda: s3.put_object(Bucket=BUCKET, Key="docs/hello.txt", Body=b"clobber", IfNoneMatch="*"),
            412,
            ("PreconditionFailed",),
            "create-only PUT over an existing key",
        )
        next_request_works(s3, f"a refused create-only PUT (try {attempt + 1})", failures)
    got = client().get_object(Bucket=BUCKET, Key="docs/hello.txt")["Body"].read()
    check(got == hello, "a refused create-only PUT did not clobber")

    s3 = client(read_timeout=5)
    data = blob(800, 123)
    out = s3.put_object(Bucket=BUCKET, Key="docs/created-once", Body=data, IfNoneMatch="*")
    check(out["ETag"].strip('"') == md5_hex(data), "create-only PUT of a new key")
    kept["docs/created-once"] = (801, 456)  # overwritten below
    s3 = client(read_timeout=5)
    expect_error(
        lambda: s3.put_object(Bucket=BUCKET, Key="docs/created-once", Body=b"x", IfMatch='"' + "0" * 32 + '"'),
        412,
        ("PreconditionFailed",),
        "PUT If-Match with a stale ETag",
    )
    next_request_works(s3, "a refused If-Match PUT", failures)
    got = client().get_object(Bucket=BUCKET, Key="docs/created-once")["Body"].read()
    check(got == data, "a refused If-Match PUT changed nothing")
    return failures


def zero_byte_put_then_another(kept):
    """A zero-byte put_object, then another PUT on the same pooled connection.

    botocore sends `Expect: 100-continue` even with an empty body; a server
    that answers such a request at once (no `100 Continue`, which is RFC
    conformant) and keeps the connection open leaves botocore parsing the
    next response on that connection against a stale status line, and the
    next request hangs until the read timeout (boto/botocore#3755). A
    server can spare its clients by closing such a connection. Own client
    with a short read timeout, so a hang costs seconds; the failures are
    returned, the session goes on.
    """
    s3 = client(read_timeout=5)
    failures = []
    out = s3.put_object(Bucket=BUCKET, Key="zero-bytes", Body=b"")
    check(out["ETag"].strip('"') == md5_hex(b""), "ETag of an empty object")
    kept["zero-bytes"] = (300, 0)
    try:
        s3.put_object(Bucket=BUCKET, Key="after-zero-bytes", Body=blob(301, 1000))
        kept["after-zero-bytes"] = (301, 1000)
    except ReadTimeoutError:
        # The server may well have stored it: the answer is what was lost.
        try:
            client().head_object(Bucket=BUCKET, Key="after-zero-bytes")
            kept["after-zero-bytes"] = (301, 1000)
        except ClientError:
            pass
        failures.append(
            "the PUT after a zero-byte put_object on the same connection hung "
            "(boto/botocore#3755: the gateway answered an `Expect: 100-continue` PUT of "
            "an empty body without `100 Continue` and without `Connection: close`)"
        )
    got = client().get_object(Bucket=BUCKET, Key="zero-bytes")
    check(got["Body"].read() == b"" and got["ContentLength"] == 0, "GET of an empty object")
    return failures


def verify(manifest_path):
    s3 = client()
    with open(manifest_path) as f:
        manifest = json.load(f)
    listed = sorted(list_keys(s3))
    check(listed == sorted(manifest), f"after restart the bucket lists {listed}, want {sorted(manifest)}")
    for key, entry in manifest.items():
        want = entry["literal"].encode() if "literal" in entry else blob(entry["seed"], entry["size"])
        got = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        check(got == want, f"after restart {key}: {len(got)} bytes, want {len(want)} (or different bytes)")
    print(f"verify ok: {len(manifest)} objects byte for byte")


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("session", "verify"):
        print(f"usage: {sys.argv[0]} session|verify MANIFEST", file=sys.stderr)
        return 2
    try:
        (session if sys.argv[1] == "session" else verify)(sys.argv[2])
    except (AssertionError, ClientError) as e:
        traceback.print_exc()
        print(f"FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
