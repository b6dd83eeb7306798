//! ListObjects (v1) and ListObjectsV2: one page of the name servers'
//! listing (prefix, delimiter, start-after, max keys; consistent with every
//! committed write). A v2 continuation token is the hex of the last entry
//! returned, opaque to clients; `encoding-type=url` percent-encodes keys
//! and prefixes in the answer.

use s3s::dto::{
    CommonPrefix, ListObjectsInput, ListObjectsOutput, ListObjectsV2Input, ListObjectsV2Output, Object, Owner,
};
use s3s::{s3_error, S3Error, S3Request, S3Response, S3Result};
use tessera_common::ns_api::{ListObjectsReq, ObjectsPage};

use super::digest::{hex, unhex};
use super::meta;
use crate::backend::Backend;
use crate::errors::ns_error;

const MAX_KEYS: i32 = 1000;

/// Percent-encodes all but unreserved characters and `/`, as S3 does for
/// `encoding-type=url`.
pub fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => out.push(byte as char),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

fn decode_token(token: &str) -> Result<String, S3Error> {
    let invalid = || s3_error!(InvalidArgument, "The continuation token provided is incorrect");
    String::from_utf8(unhex(token).ok_or_else(invalid)?).map_err(|_| invalid())
}

fn max_keys(requested: Option<i32>) -> Result<u32, S3Error> {
    match requested {
        None => Ok(MAX_KEYS as u32),
        Some(n) if n < 0 => Err(s3_error!(InvalidArgument, "max-keys must not be negative")),
        Some(n) => Ok(n.min(MAX_KEYS) as u32),
    }
}

/// One page of the bucket's listing; an empty page when `max_keys` is 0.
async fn page(
    backend: &Backend,
    bucket: &str,
    prefix: Option<&str>,
    delimiter: Option<&str>,
    start_after: Option<String>,
    max_keys: u32,
) -> Result<ObjectsPage, S3Error> {
    if max_keys == 0 {
        return Ok(ObjectsPage {
            contents: Vec::new(),
            common_prefixes: Vec::new(),
            is_truncated: false,
            next_marker: None,
        });
    }
    let request = ListObjectsReq {
        bucket: bucket.to_string(),
        prefix: prefix.unwrap_or_default().to_string(),
        delimiter: delimiter.filter(|d| !d.is_empty()).map(String::from),
        start_after,
        max_keys,
    };
    backend.ns.list_objects(&request).await.map_err(ns_error)
}

struct Rendered {
    contents: Option<Vec<Object>>,
    common_prefixes: Option<Vec<CommonPrefix>>,
}

fn render(page: &ObjectsPage, url: bool, owner: Option<&str>) -> Rendered {
    let encode = |s: &str| if url { url_encode(s) } else { s.to_string() };
    let contents: Vec<Object> = page
        .contents
        .iter()
        .map(|o| Object {
            key: Some(encode(&o.key)),
            size: Some(i64::try_from(o.size).unwrap_or(i64::MAX)),
            e_tag: Some(meta::etag(&o.etag)),
            last_modified: Some(meta::timestamp(o.mtime_ms)),
            storage_class: Some(String::from("STANDARD").into()),
            owner: owner.map(|name| Owner {
                display_name: Some(name.to_string()),
                id: Some(name.to_string()),
            }),
            ..Object::default()
        })
        .collect();
    let prefixes: Vec<CommonPrefix> = page
        .common_prefixes
        .iter()
        .map(|p| CommonPrefix {
            prefix: Some(encode(p)),
        })
        .collect();
    Rendered {
        contents: (!contents.is_empty()).then_some(contents),
        common_prefixes: (!prefixes.is_empty()).then_some(prefixes),
    }
}

fn wants_url(encoding: Option<&s3s::dto::EncodingType>) -> Result<bool, S3Error> {
    match encoding.map(|e| e.as_str()) {
        None => Ok(false),
        Some("url") => Ok(true),
        Some(_) => Err(s3_error!(
            InvalidArgument,
            "Invalid Encoding Method specified in Request"
        )),
    }
}

async fn bucket_owner(backend: &Backend, bucket: &str) -> Result<Option<String>, S3Error> {
    Ok(backend.bucket(bucket).await.map_err(ns_error)?.map(|b| b.owner))
}

pub async fn list_v2(
    backend: &Backend,
    req: S3Request<ListObjectsV2Input>,
) -> S3Result<S3Response<ListObjectsV2Output>> {
    let input = req.input;
    let url = wants_url(input.encoding_type.as_ref())?;
    let max = max_keys(input.max_keys)?;
    let token = input.continuation_token.as_deref().map(decode_token).transpose()?;
    let start_after = match (token, input.start_after.clone()) {
        (Some(t), Some(s)) => Some(t.max(s)),
        (t, s) => t.or(s),
    };
    let page = page(
        backend,
        &input.bucket,
        input.prefix.as_deref(),
        input.delimiter.as_deref(),
        start_after,
        max,
    )
    .await?;
    let owner = match input.fetch_owner {
        Some(true) => bucket_owner(backend, &input.bucket).await?,
        _ => None,
    };
    let rendered = render(&page, url, owner.as_deref());
    let encode = |s: Option<String>| if url { s.map(|s| url_encode(&s)) } else { s };
    let output = ListObjectsV2Output {
        name: Some(input.bucket),
        key_count: Some((page.contents.len() + page.common_prefixes.len()) as i32),
        max_keys: Some(max as i32),
        is_truncated: Some(page.is_truncated),
        continuation_token: input.continuation_token,
        next_continuation_token: page.next_marker.as_deref().map(|m| hex(m.as_bytes())),
        contents: rendered.contents,
        common_prefixes: rendered.common_prefixes,
        prefix: encode(input.prefix),
        delimiter: encode(input.delimiter),
        start_after: encode(input.start_after),
        encoding_type: input.encoding_type,
        ..ListObjectsV2Output::default()
    };
    Ok(S3Response::new(output))
}

pub async fn list_v1(backend: &Backend, req: S3Request<ListObjectsInput>) -> S3Result<S3Response<ListObjectsOutput>> {
    let input = req.input;
    let url = wants_url(input.encoding_type.as_ref())?;
    let max = max_keys(input.max_keys)?;
    let page = page(
        backend,
        &input.bucket,
        input.prefix.as_deref(),
        input.delimiter.as_deref(),
        input.marker.clone(),
        max,
    )
    .await?;
    let owner = bucket_owner(backend, &input.bucket).await?;
    let rendered = render(&page, url, owner.as_deref());
    let encode = |s: Option<String>| if url { s.map(|s| url_encode(&s)) } else { s };
    let output = ListObjectsOutput {
        name: Some(input.bucket),
        max_keys: Some(max as i32),
        is_truncated: Some(page.is_truncated),
        marker: encode(input.marker),
        next_marker: encode(page.next_marker),
        contents: rendered.contents,
        common_prefixes: rendered.common_prefixes,
        prefix: encode(input.prefix),
        delimiter: encode(input.delimiter),
        encoding_type: input.encoding_type,
        ..ListObjectsOutput::default()
    };
    Ok(S3Response::new(output))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_encoding_keeps_unreserved_and_slashes() {
        assert_eq!(url_encode("a/b c%é+"), "a/b%20c%25%C3%A9%2B");
        assert_eq!(url_encode("plain-key_1.txt~"), "plain-key_1.txt~");
    }

    #[test]
    fn continuation_tokens_round_trip_and_refuse_garbage() {
        let key = "dir/ünïcode key";
        assert_eq!(decode_token(&hex(key.as_bytes())).expect("decode"), key);
        for bad in ["abc", "zz", "ff"] {
            assert!(decode_token(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn max_keys_is_capped_and_validated() {
        assert_eq!(max_keys(None).expect("default"), 1000);
        assert_eq!(max_keys(Some(5000)).expect("capped"), 1000);
        assert_eq!(max_keys(Some(0)).expect("zero"), 0);
        assert!(max_keys(Some(-1)).is_err());
    }
}
