//! What the HTTP server checks on a request before `s3s` sees it, where
//! `s3s` alone would answer wrongly:
//!
//! - the header block's size: hyper bounds only a header block that
//!   arrives in pieces (its read buffer), so one that arrives in a single
//!   large read is measured here (431 beyond `header_bytes_max`);
//! - bodies that `s3s` reads whole (the XML of CompleteMultipartUpload,
//!   DeleteObjects, CreateBucket, ...): read here, bounded, and checked
//!   against a signed `x-amz-content-sha256`, because `s3s` answers both an
//!   oversize streamed body and a hash mismatch with a bare 500.
//!   Object and part uploads (PUT with a key, POST form uploads) stream
//!   through untouched.
//!
//! A refusal is an S3 error document; the handler names the request in it.

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use hyper::body::Incoming;
use s3s::crypto::{Checksum, Sha256};
use s3s::Body;

use crate::s3::digest::hex;
use crate::s3::host::VirtualHosts;

/// The largest body read whole (the `s3s` default for XML bodies): a
/// DeleteObjects of 1000 keys of 1024 bytes, escaped, fits.
pub const XML_BODY_BYTES_MAX: usize = 20 << 20;

/// Why a request is refused before `s3s` sees it.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            code,
            message: message.into(),
        }
    }

    /// The S3 error document.
    pub fn into_response(self, request_id: &str) -> s3s::HttpResponse {
        let xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{}</Code><Message>{}</Message><RequestId>{}</RequestId></Error>",
            self.code,
            escape_xml(&self.message),
            request_id
        );
        let mut response = http::Response::new(Body::from(xml));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/xml"),
        );
        // The body may be unread: the connection cannot carry another request.
        headers.insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
        response
    }
}

/// What [`admit`] needs to know of the gateway's configuration.
pub struct Intake {
    pub header_bytes_max: usize,
    /// The virtual-host domains, when configured.
    pub hosts: Option<VirtualHosts>,
}

/// Checks `request` and hands it on with an `s3s` body: read whole when
/// `s3s` would read it whole, streamed otherwise.
///
/// Cancellation safe: dropping it drops the request.
pub async fn admit(request: Request<Incoming>, intake: &Intake) -> Result<Request<Body>, Refusal> {
    let header_bytes_max = intake.header_bytes_max;
    let hosts = intake.hosts.as_ref();
    let header_bytes = header_block_bytes(&request);
    if header_bytes > header_bytes_max {
        return Err(Refusal::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "RequestHeaderSectionTooLarge",
            format!("the request's headers take {header_bytes} bytes, more than the {header_bytes_max} allowed"),
        ));
    }
    let streamed = body_streams(&request, hosts);
    let (parts, incoming) = request.into_parts();
    let mut body = Body::from(incoming);
    if !streamed {
        let bytes = read_whole(&parts.headers, &mut body).await?;
        verify_payload_hash(&parts.headers, &bytes)?;
    }
    Ok(Request::from_parts(parts, body))
}

/// The bytes of the request line's target and of every header line.
fn header_block_bytes<B>(request: &Request<B>) -> usize {
    let target = request.uri().path_and_query().map_or(0, |p| p.as_str().len());
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    target + headers
}

/// Whether the body is object data that the handlers stream: a PUT naming
/// a key (PutObject, UploadPart) or a browser form upload.
fn body_streams<B>(request: &Request<B>, hosts: Option<&VirtualHosts>) -> bool {
    match *request.method() {
        Method::PUT => names_key(request, hosts),
        Method::POST => request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|t| t.as_bytes().starts_with(b"multipart/form-data")),
        _ => false,
    }
}

fn names_key<B>(request: &Request<B>, hosts: Option<&VirtualHosts>) -> bool {
    let path = request.uri().path().trim_start_matches('/');
    let virtual_bucket = request
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|host| hosts?.bucket_of(host));
    match virtual_bucket {
        Some(_) => !path.is_empty(),
        None => path.split_once('/').is_some_and(|(_, key)| !key.is_empty()),
    }
}

async fn read_whole(headers: &HeaderMap, body: &mut Body) -> Result<Bytes, Refusal> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > XML_BODY_BYTES_MAX as u64) {
        return Err(too_long());
    }
    body.store_all_limited(XML_BODY_BYTES_MAX).await.map_err(|e| {
        if e.to_string().contains("limit") {
            too_long()
        } else {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                "IncompleteBody",
                format!("the request body could not be read: {e}"),
            )
        }
    })
}

fn too_long() -> Refusal {
    Refusal::new(
        StatusCode::BAD_REQUEST,
        "MaxMessageLengthExceeded",
        format!("the request body is longer than {XML_BODY_BYTES_MAX} bytes"),
    )
}

/// A signed `x-amz-content-sha256` (64 hex digits) must be the body's.
fn verify_payload_hash(headers: &HeaderMap, body: &Bytes) -> Result<(), Refusal> {
    let Some(claimed) = headers.get("x-amz-content-sha256").and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    if claimed.len() != 64 || !claimed.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(()); // UNSIGNED-PAYLOAD, STREAMING-*: not a hash of the body
    }
    let computed = hex(Sha256::checksum(body).as_ref());
    if computed.eq_ignore_ascii_case(claimed) {
        return Ok(());
    }
    Err(Refusal::new(
        StatusCode::BAD_REQUEST,
        "XAmzContentSHA256Mismatch",
        format!("the body's SHA-256 is {computed}, the request claims {claimed}"),
    ))
}

fn escape_xml(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, host: &str, target: &str) -> Request<()> {
        Request::builder()
            .method(method)
            .uri(target)
            .header("host", host)
            .body(())
            .expect("request")
    }

    #[test]
    fn only_object_uploads_stream() {
        let hosts = VirtualHosts::new(&["localhost".to_string()]);
        let streams = |m: Method, host: &str, target: &str| body_streams(&request(m, host, target), Some(&hosts));
        assert!(streams(Method::PUT, "127.0.0.1:9000", "/bucket/key"));
        assert!(streams(
            Method::PUT,
            "127.0.0.1:9000",
            "/bucket/a/b?partNumber=1&uploadId=x"
        ));
        assert!(streams(Method::PUT, "bucket.localhost:9000", "/key"));
        assert!(!streams(Method::PUT, "127.0.0.1:9000", "/bucket"));
        assert!(!streams(Method::PUT, "127.0.0.1:9000", "/bucket/"));
        assert!(!streams(Method::PUT, "bucket.localhost:9000", "/"));
        assert!(!streams(Method::POST, "127.0.0.1:9000", "/bucket?delete"));
        assert!(!streams(Method::POST, "127.0.0.1:9000", "/bucket/key?uploadId=x"));
    }

    #[test]
    fn a_signed_payload_hash_must_match() {
        let mut headers = HeaderMap::new();
        let body = Bytes::from_static(b"<Delete/>");
        assert!(verify_payload_hash(&headers, &body).is_ok(), "no claim");
        headers.insert("x-amz-content-sha256", "UNSIGNED-PAYLOAD".parse().expect("value"));
        assert!(verify_payload_hash(&headers, &body).is_ok(), "unsigned");
        let right = hex(Sha256::checksum(&body).as_ref());
        headers.insert("x-amz-content-sha256", right.parse().expect("value"));
        assert!(verify_payload_hash(&headers, &body).is_ok(), "the right hash");
        headers.insert("x-amz-content-sha256", "0".repeat(64).parse().expect("value"));
        let refusal = verify_payload_hash(&headers, &body).expect_err("a wrong hash");
        assert_eq!(refusal.code, "XAmzContentSHA256Mismatch");
    }

    #[test]
    fn the_header_block_counts_every_line() {
        let small = request(Method::GET, "h", "/");
        let big = Request::builder()
            .uri("/")
            .header("x-amz-meta-big", "a".repeat(100 << 10))
            .body(())
            .expect("request");
        assert!(header_block_bytes(&small) < 100);
        assert!(header_block_bytes(&big) > 100 << 10);
    }
}
