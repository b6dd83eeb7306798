//! The operations the workloads run through the real S3 API, and what each
//! outcome means for the history: an answer that proves the operation did
//! not happen is a `fail`, anything else that is not a success (a 5xx, a
//! timeout, a dropped connection) leaves a write's outcome unknown (`info`).
//! Reads change nothing, so a read that fails for any reason is a `fail`.
//!
//! Bodies verify themselves: they name their key and value and end with the
//! BLAKE3 hash of everything before it, so a read that returns the wrong
//! object, a torn one or flipped bits is caught ([`OpError::Corrupt`]).

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use bytes::Bytes;
use md5::{Digest, Md5};

const MAGIC: &str = "tessera-jepsen";
/// Filler per body: 256 bytes to a little over 4 KiB, chosen by the value.
const FILLER_BYTES_MIN: usize = 256;
const FILLER_BYTES_SPREAD: u64 = 4096;

/// Why an operation did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// A conditional write's precondition was false (HTTP 412).
    #[error("precondition failed")]
    Precondition,
    /// The operation certainly did not take effect.
    #[error("failed: {0}")]
    Definite(String),
    /// The operation may or may not have taken effect.
    #[error("unknown outcome: {0}")]
    Indefinite(String),
    /// A read returned a body that does not verify.
    #[error("corrupt body: {0}")]
    Corrupt(String),
}

/// The self-verifying body of `value` written under `key`.
pub fn body(key: &str, value: &str) -> Bytes {
    let mut out = format!("{MAGIC}\nkey={key}\nvalue={value}\n").into_bytes();
    let seed = blake3::hash(value.as_bytes());
    let spread = u64::from_le_bytes(seed.as_bytes()[..8].try_into().unwrap_or([0; 8])) % FILLER_BYTES_SPREAD;
    let mut filler = vec![0u8; FILLER_BYTES_MIN + spread as usize];
    blake3::Hasher::new_keyed(seed.as_bytes())
        .finalize_xof()
        .fill(&mut filler);
    out.extend_from_slice(&filler);
    let hash = blake3::hash(&out).to_hex();
    out.extend_from_slice(format!("\nhash={hash}\n").as_bytes());
    Bytes::from(out)
}

/// The value a body read under `key` holds, if it verifies.
pub fn verify(key: &str, bytes: &[u8]) -> Result<String, OpError> {
    let corrupt = |why: &str| OpError::Corrupt(format!("{key}: {why} ({} bytes)", bytes.len()));
    let split = bytes
        .len()
        .checked_sub(1 + 5 + 64 + 1)
        .ok_or_else(|| corrupt("too short"))?;
    let (content, trailer) = bytes.split_at(split);
    let expected = format!("\nhash={}\n", blake3::hash(content).to_hex());
    if trailer != expected.as_bytes() {
        return Err(corrupt("hash mismatch"));
    }
    let text = String::from_utf8_lossy(&content[..content.len().min(512)]);
    let mut lines = text.split('\n');
    if lines.next() != Some(MAGIC) || lines.next() != Some(&format!("key={key}")) {
        return Err(corrupt("written under another key"));
    }
    let value = lines
        .next()
        .and_then(|l| l.strip_prefix("value="))
        .ok_or_else(|| corrupt("no value"))?;
    if bytes != body(key, value).as_ref() {
        return Err(corrupt("filler differs"));
    }
    Ok(value.to_owned())
}

/// The ETag S3 gives a single PUT of `body`: its quoted MD5.
pub fn etag_of(body: &[u8]) -> String {
    let digest = Md5::digest(body);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

/// One register key in one bucket, through one S3 client.
#[derive(Clone)]
pub struct S3Register {
    pub client: Client,
    pub bucket: String,
}

impl S3Register {
    /// The value under `key`, `None` when absent.
    pub async fn read(&self, key: &str) -> Result<Option<String>, OpError> {
        let answer = self.client.get_object().bucket(&self.bucket).key(key).send().await;
        let output = match answer {
            Ok(output) => output,
            Err(e) if status_of(&e) == Some(404) => return Ok(None),
            Err(e) => return Err(OpError::Definite(describe(&e))),
        };
        let bytes = output
            .body
            .collect()
            .await
            .map_err(|e| OpError::Definite(format!("reading the body: {e}")))?
            .into_bytes();
        verify(key, &bytes).map(Some)
    }

    /// PUT `value`, unconditionally.
    pub async fn write(&self, key: &str, value: &str) -> Result<(), OpError> {
        self.put(key, value, false, |put| put).await
    }

    /// PUT `to` if the current body is that of `from` (If-Match on its ETag).
    pub async fn cas(&self, key: &str, from: &str, to: &str) -> Result<(), OpError> {
        let etag = etag_of(&body(key, from));
        self.put(key, to, true, |put| put.if_match(etag)).await
    }

    /// PUT `value` if the key is absent (If-None-Match: *).
    pub async fn create(&self, key: &str, value: &str) -> Result<(), OpError> {
        self.put(key, value, false, |put| put.if_none_match("*")).await
    }

    /// DELETE the key (succeeds when absent too).
    pub async fn delete(&self, key: &str) -> Result<(), OpError> {
        let answer = self.client.delete_object().bucket(&self.bucket).key(key).send().await;
        answer.map(drop).map_err(|e| write_error(&e))
    }

    /// `if_match`: a 404 means the expected body is not there, which is the
    /// precondition failing (S3 answers If-Match on a missing key so).
    async fn put<F>(&self, key: &str, value: &str, if_match: bool, condition: F) -> Result<(), OpError>
    where
        F: FnOnce(
            aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder,
        ) -> aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder,
    {
        let put = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(body(key, value)));
        condition(put).send().await.map(drop).map_err(|e| match status_of(&e) {
            Some(404) if if_match => OpError::Precondition,
            _ => write_error(&e),
        })
    }
}

/// A failed write: definite only when the server answered with a 4xx.
pub fn write_error<E>(e: &SdkError<E, HttpResponse>) -> OpError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match status_of(e) {
        Some(412) => OpError::Precondition,
        Some(status) if (400..500).contains(&status) => OpError::Definite(describe(e)),
        _ => OpError::Indefinite(describe(e)),
    }
}

/// The HTTP status of the answer, if one arrived (none for timeouts and
/// I/O errors).
pub fn status_of<E>(e: &SdkError<E, HttpResponse>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

/// A one-line description: the S3 error code and message, or the SDK's
/// error chain for timeouts and I/O.
pub fn describe<E>(e: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    if let SdkError::ServiceError(service) = e {
        let err = service.err();
        return format!(
            "{} {}: {}",
            status_of(e).unwrap_or(0),
            err.code().unwrap_or("?"),
            err.message().unwrap_or("")
        );
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_verifies_as_its_own_value() {
        let b = body("k1", "3-17");
        assert_eq!(verify("k1", &b).unwrap(), "3-17");
    }

    #[test]
    fn a_flipped_bit_a_truncation_or_another_key_is_corrupt() {
        let b = body("k1", "3-17").to_vec();
        let mut flipped = b.clone();
        flipped[b.len() / 2] ^= 1;
        assert!(matches!(verify("k1", &flipped), Err(OpError::Corrupt(_))));
        assert!(matches!(verify("k1", &b[..b.len() - 10]), Err(OpError::Corrupt(_))));
        assert!(matches!(verify("k2", &b), Err(OpError::Corrupt(_))));
        assert!(matches!(verify("k1", b""), Err(OpError::Corrupt(_))));
    }

    #[test]
    fn the_etag_is_the_quoted_md5() {
        assert_eq!(etag_of(b""), "\"d41d8cd98f00b204e9800998ecf8427e\"");
    }
}
