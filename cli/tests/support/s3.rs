//! Helpers of the S3 API tests (`s3_api.rs`): a whole cluster with a
//! gateway, the SDK client variants (default checksums with `aws-chunked`
//! trailers and a log of what went on the wire; virtual-host addressing
//! with `*.localhost` resolved to loopback), SDK error inspection, raw
//! HTTP/1.1 GETs, and the digests S3 speaks (MD5 ETags, CRC32, CRC32C,
//! SHA-256, base64), spelled out so the tests check the gateway against an
//! independent computation.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, ConfigBag, Credentials, Intercept, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    RuntimeComponents, SharedHttpClient,
};
use aws_sdk_s3::error::{BoxError, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::RequestId;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use aws_smithy_http_client::tls;
use aws_smithy_runtime_api::client::dns::{DnsFuture, ResolveDns};
use md5::{Digest, Md5};
use tessera_cli::local_cluster::{GatewaySpec, LocalCluster, LocalSpec};
use tessera_common::ns_api::NewAccessKey;
use tessera_gateway::config::ProtocolSettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const REGION: &str = "us-east-1";
pub const KIB: usize = 1 << 10;
pub const MIB: usize = 1 << 20;
/// How long one raw HTTP exchange may take.
const RAW_TIMEOUT: Duration = Duration::from_secs(30);

/// A cluster with a gateway (virtual hosts under `localhost`), in its own
/// temporary directory, and the key of its first user, alice.
pub struct S3Cluster {
    pub cluster: LocalCluster,
    pub endpoint: String,
    pub alice: NewAccessKey,
    _dir: tempfile::TempDir,
}

impl S3Cluster {
    /// One name server, six chunk servers (EC 4+2), one object server
    /// with four partitions, and the gateway.
    pub async fn start() -> S3Cluster {
        let dir = tempfile::tempdir().expect("a temporary directory for the cluster");
        let spec = LocalSpec {
            gateway: Some(GatewaySpec {
                listen: "127.0.0.1:0".parse().expect("a listen address"),
                protocol: ProtocolSettings::default(),
                virtual_host_domains: vec!["localhost".into()],
            }),
            ..LocalSpec::new(6, 4)
        };
        let cluster = LocalCluster::start(dir.path(), &spec)
            .await
            .expect("the local cluster starts");
        let endpoint = cluster.s3_endpoint().expect("the cluster serves S3");
        let alice = cluster.create_key("alice").await.expect("alice's access key");
        S3Cluster {
            cluster,
            endpoint,
            alice,
            _dir: dir,
        }
    }

    /// The gateway's port.
    pub fn port(&self) -> u16 {
        self.endpoint
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("the endpoint ends in a port")
    }

    /// The SDK client of the project (`bench_s3::s3_client`: path style,
    /// checksums only where required) for `key`.
    pub fn client(&self, key: &NewAccessKey) -> Client {
        tessera_cli::bench_s3::s3_client(&self.endpoint, &key.key_id, &key.secret, REGION)
    }

    pub async fn shutdown(self) {
        self.cluster.shutdown().await;
    }
}

/// The `s3_client` configuration, for variants of it.
fn config(endpoint: &str, key: &NewAccessKey) -> aws_sdk_s3::config::Builder {
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .read_timeout(Duration::from_secs(60))
        .build();
    let credentials = Credentials::new(&key.key_id, &key.secret, None, None, "tessera-test");
    aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new(REGION))
        .credentials_provider(credentials)
        .timeout_config(timeouts)
}

/// The SDK's hyper client (rustls with ring, as `s3_client` builds it),
/// resolving names with `resolver` when given.
fn http_client(resolver: Option<LocalhostResolver>) -> SharedHttpClient {
    let builder = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring));
    match resolver {
        Some(resolver) => builder.build_with_resolver(resolver),
        None => builder.build_https(),
    }
}

/// The pseudo-header of [`WireLog`] holding a request's URI.
pub const URI: &str = ":uri";

/// The headers of one request, in order.
pub type Headers = Vec<(String, String)>;

/// The headers of every request a client sent, in order (with its URI
/// as [`URI`]).
#[derive(Clone, Debug, Default)]
pub struct WireLog(Arc<Mutex<Vec<Headers>>>);

impl WireLog {
    /// The headers of the last request sent.
    pub fn last(&self) -> Headers {
        self.0
            .lock()
            .expect("the wire log lock")
            .last()
            .cloned()
            .expect("a request was sent")
    }

    /// The value of `name` in the last request sent.
    pub fn last_header(&self, name: &str) -> Option<String> {
        self.last()
            .into_iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}

impl Intercept for WireLog {
    fn name(&self) -> &'static str {
        "WireLog"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let request = context.request();
        let uri = (URI.to_string(), request.uri().to_string());
        let headers = std::iter::once(uri)
            .chain(request.headers().iter().map(|(n, v)| (n.to_string(), v.to_string())))
            .collect();
        self.0.lock().expect("the wire log lock").push(headers);
        Ok(())
    }
}

/// A path-style client with the SDK's default checksum behaviour
/// (`WhenSupported`: a CRC32 on every upload; a streaming body goes as
/// `aws-chunked` with the checksum in a trailer) and validation of the
/// checksums GETs return; `WireLog` records the request headers.
pub fn default_checksum_client(endpoint: &str, key: &NewAccessKey) -> (Client, WireLog) {
    let log = WireLog::default();
    let config = config(endpoint, key)
        .force_path_style(true)
        .http_client(http_client(None))
        .request_checksum_calculation(RequestChecksumCalculation::WhenSupported)
        .response_checksum_validation(ResponseChecksumValidation::WhenSupported)
        .interceptor(log.clone())
        .build();
    (Client::from_conf(config), log)
}

/// Resolves `localhost` and every `*.localhost` to 127.0.0.1 (the
/// system resolver here knows only `localhost`).
#[derive(Clone, Debug)]
struct LocalhostResolver;

impl ResolveDns for LocalhostResolver {
    fn resolve_dns<'a>(&'a self, name: &'a str) -> DnsFuture<'a> {
        let found = if name == "localhost" || name.ends_with(".localhost") {
            Ok(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)])
        } else {
            Err(aws_smithy_runtime_api::client::dns::ResolveDnsError::new(format!(
                "{name} is not under localhost"
            )))
        };
        DnsFuture::ready(found)
    }
}

/// A virtual-host style client (`http://BUCKET.localhost:PORT/KEY`);
/// `WireLog` records the request headers (the `host` they were signed for).
pub fn virtual_host_client(port: u16, key: &NewAccessKey) -> (Client, WireLog) {
    let log = WireLog::default();
    let config = config(&format!("http://localhost:{port}"), key)
        .force_path_style(false)
        .http_client(http_client(Some(LocalhostResolver)))
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .interceptor(log.clone())
        .build();
    (Client::from_conf(config), log)
}

/// What an S3 call that failed answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub code: Option<String>,
    pub request_id: Option<String>,
}

/// The HTTP status and S3 error code of a failed call; panics (naming
/// `what`) when it succeeded or never got an answer.
pub fn refusal<T, E>(result: Result<T, SdkError<E>>, what: &str) -> Refusal
where
    T: std::fmt::Debug,
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let error = match result {
        Ok(output) => panic!("{what}: expected a refusal, it succeeded: {output:?}"),
        Err(error) => error,
    };
    let Some(response) = error.raw_response() else {
        panic!(
            "{what}: no HTTP answer: {}",
            aws_sdk_s3::error::DisplayErrorContext(&error)
        )
    };
    Refusal {
        status: response.status().as_u16(),
        code: error.code().map(String::from),
        request_id: error.request_id().map(String::from),
    }
}

/// Asserts that a call failed with `status` and (when given) S3 `code`,
/// carrying a request id.
#[track_caller]
pub fn assert_refused<T, E>(result: Result<T, SdkError<E>>, status: u16, code: Option<&str>, what: &str)
where
    T: std::fmt::Debug,
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let got = refusal(result, what);
    assert_eq!(got.status, status, "{what}: status of {got:?}");
    if let Some(code) = code {
        assert_eq!(got.code.as_deref(), Some(code), "{what}: code of {got:?}");
    }
    assert!(
        got.request_id.as_deref().is_some_and(|id| !id.is_empty()),
        "{what}: the refusal carries no x-amz-request-id: {got:?}"
    );
}

/// Unwraps an SDK result, naming `what` and the full error chain.
#[track_caller]
pub fn ok<T: RequestId, E: std::error::Error + Send + Sync + 'static>(result: Result<T, SdkError<E>>, what: &str) -> T {
    match result {
        Ok(output) => {
            assert!(
                output.request_id().is_some_and(|id| !id.is_empty()),
                "{what}: the answer carries no x-amz-request-id"
            );
            output
        }
        Err(error) => panic!("{what}: {}", aws_sdk_s3::error::DisplayErrorContext(&error)),
    }
}

/// The whole body of a GET.
pub async fn body_bytes(body: ByteStream, what: &str) -> Vec<u8> {
    body.collect()
        .await
        .unwrap_or_else(|e| panic!("{what}: reading the body: {e}"))
        .into_bytes()
        .to_vec()
}

/// Retries `attempt` until it returns true, for up to `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut attempt: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if attempt().await {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `len` bytes that differ with `seed` and position (no two 4 KiB
/// stretches alike, so misplaced pieces are caught).
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn md5(bytes: &[u8]) -> [u8; 16] {
    let digest = Md5::digest(bytes);
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest);
    out
}

/// The ETag of a single PUT of `bytes`, quoted as the SDK returns it.
pub fn quoted_md5(bytes: &[u8]) -> String {
    format!("\"{}\"", hex(&md5(bytes)))
}

/// The ETag of a multipart object: MD5 of the parts' binary MD5s, `-N`.
pub fn multipart_etag(parts: &[&[u8]]) -> String {
    let joined: Vec<u8> = parts.iter().flat_map(|p| md5(p)).collect();
    format!("\"{}-{}\"", hex(&md5(&joined)), parts.len())
}

pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A reflected CRC-32 with polynomial `poly`, bit by bit.
fn crc(bytes: &[u8], poly: u32) -> u32 {
    let mut crc = !0u32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ poly } else { crc >> 1 };
        }
    }
    !crc
}

/// `x-amz-checksum-crc32` of `bytes` (base64 of the big-endian CRC).
pub fn crc32_b64(bytes: &[u8]) -> String {
    base64(&crc(bytes, 0xEDB8_8320).to_be_bytes())
}

/// `x-amz-checksum-crc32c` of `bytes`.
pub fn crc32c_b64(bytes: &[u8]) -> String {
    base64(&crc(bytes, 0x82F6_3B78).to_be_bytes())
}

/// `x-amz-checksum-sha256` of `bytes`.
pub fn sha256_b64(bytes: &[u8]) -> String {
    base64(&sha2::Sha256::digest(bytes))
}

/// One raw HTTP answer.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `method path_and_query` with `body` over a fresh connection to `addr`
/// (`ip:port`) with `Host: host` and `Connection: close`; the answer read
/// to the end.
pub async fn raw_request(addr: &str, host: &str, method: &str, path_and_query: &str, body: &[u8]) -> RawResponse {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect to the gateway");
        let head = format!(
            "{method} {path_and_query} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.expect("send the request head");
        stream.write_all(body).await.expect("send the request body");
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.expect("read the answer");
        answer
    };
    let answer = tokio::time::timeout(RAW_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path_and_query}: no answer within {RAW_TIMEOUT:?}"));
    parse_response(&answer)
}

/// `GET path_and_query` (see [`raw_request`]).
pub async fn raw_get(addr: &str, host: &str, path_and_query: &str) -> RawResponse {
    raw_request(addr, host, "GET", path_and_query, b"").await
}

/// `method` of an absolute `http://host:port/...` URL (a presigned one).
pub async fn raw_url(method: &str, url: &str, body: &[u8]) -> RawResponse {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    raw_request(host, host, method, path, body).await
}

fn parse_response(answer: &[u8]) -> RawResponse {
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header block in {:?}", String::from_utf8_lossy(answer)));
    let head = String::from_utf8_lossy(&answer[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("a status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status code in {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let raw_body = &answer[end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked { dechunk(raw_body) } else { raw_body.to_vec() };
    RawResponse { status, headers, body }
}

/// The payload of a `Transfer-Encoding: chunked` body.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n").expect("a chunk size line");
        let size_text = String::from_utf8_lossy(&raw[..line_end]);
        let size_hex = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16).expect("a hex chunk size");
        raw = &raw[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_match_known_values() {
        assert_eq!(base64(b"hello"), "aGVsbG8=");
        assert_eq!(base64(b"hi"), "aGk=");
        assert_eq!(base64(b"abc"), "YWJj");
        // RFC 3720 / zlib check values of "123456789".
        assert_eq!(crc(b"123456789", 0x82F6_3B78), 0xE306_9283);
        assert_eq!(crc(b"123456789", 0xEDB8_8320), 0xCBF4_3926);
        assert_eq!(hex(&md5(b"")), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), b"abcde");
    }
}
