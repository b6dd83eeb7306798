//! What a write computes over its body while it streams, and checks before
//! the name commit: the MD5 (the ETag, and `Content-MD5` when sent) and the
//! flexible checksums (`x-amz-checksum-{crc32,crc32c,crc64nvme,sha1,sha256}`),
//! whose expected values arrive as headers or, with `aws-chunked` bodies,
//! as trailers. A mismatch is `BadDigest` and nothing is named.

use s3s::checksum::ChecksumHasher;
use s3s::crypto::{Checksum, Md5};
use s3s::dto::ChecksumAlgorithm;
use s3s::{s3_error, S3Error, TrailingHeaders};
use tessera_common::ns_api::system_meta;

use crate::write::BodyObserver;

/// The expected checksums a request carries (base64 values).
#[derive(Clone, Debug, Default)]
pub struct ExpectedChecksums {
    pub crc32: Option<String>,
    pub crc32c: Option<String>,
    pub crc64nvme: Option<String>,
    pub sha1: Option<String>,
    pub sha256: Option<String>,
    /// Announced algorithm (its value may come as a trailer).
    pub algorithm: Option<ChecksumAlgorithm>,
    /// `Content-MD5` (base64).
    pub content_md5: Option<String>,
}

/// The digests of one body, as it streams.
pub struct BodyDigest {
    md5: Md5,
    hasher: ChecksumHasher,
    expected: ExpectedChecksums,
}

/// What a verified body yields.
#[derive(Clone, Debug)]
pub struct Digests {
    pub md5: [u8; 16],
    /// `(header name, base64 value)` of each checksum computed.
    pub checksums: Vec<(String, String)>,
}

impl BodyDigest {
    pub fn new(expected: ExpectedChecksums) -> Result<BodyDigest, S3Error> {
        let mut hasher = ChecksumHasher::default();
        let wanted = |value: &Option<String>, name: &str| {
            value.is_some()
                || expected
                    .algorithm
                    .as_ref()
                    .is_some_and(|a| a.as_str().eq_ignore_ascii_case(name))
        };
        if wanted(&expected.crc32, ChecksumAlgorithm::CRC32) {
            hasher.crc32 = Some(Default::default());
        }
        if wanted(&expected.crc32c, ChecksumAlgorithm::CRC32C) {
            hasher.crc32c = Some(Default::default());
        }
        if wanted(&expected.crc64nvme, ChecksumAlgorithm::CRC64NVME) {
            hasher.crc64nvme = Some(Default::default());
        }
        if wanted(&expected.sha1, ChecksumAlgorithm::SHA1) {
            hasher.sha1 = Some(Default::default());
        }
        if wanted(&expected.sha256, ChecksumAlgorithm::SHA256) {
            hasher.sha256 = Some(Default::default());
        }
        if let Some(algorithm) = &expected.algorithm {
            let known = [
                ChecksumAlgorithm::CRC32,
                ChecksumAlgorithm::CRC32C,
                ChecksumAlgorithm::CRC64NVME,
                ChecksumAlgorithm::SHA1,
                ChecksumAlgorithm::SHA256,
            ];
            if !known.iter().any(|k| algorithm.as_str().eq_ignore_ascii_case(k)) {
                return Err(s3_error!(InvalidRequest, "unsupported checksum algorithm"));
            }
        }
        Ok(BodyDigest {
            md5: Md5::new(),
            hasher,
            expected,
        })
    }

    /// Checks the body against every expected value (trailers included,
    /// once the body has been read to its end).
    pub fn verify(self, trailers: Option<&TrailingHeaders>) -> Result<Digests, S3Error> {
        let md5 = self.md5.finalize();
        let mut expected = self.expected;
        if let Some(trailers) = trailers.and_then(TrailingHeaders::take) {
            let value = |name: &str| trailers.get(name).and_then(|v| v.to_str().ok()).map(String::from);
            expected.crc32 = expected.crc32.or(value(system_meta::CHECKSUM_CRC32));
            expected.crc32c = expected.crc32c.or(value(system_meta::CHECKSUM_CRC32C));
            expected.crc64nvme = expected.crc64nvme.or(value(system_meta::CHECKSUM_CRC64NVME));
            expected.sha1 = expected.sha1.or(value(system_meta::CHECKSUM_SHA1));
            expected.sha256 = expected.sha256.or(value(system_meta::CHECKSUM_SHA256));
        }
        if let Some(content_md5) = &expected.content_md5 {
            check_content_md5(content_md5, &md5)?;
        }
        let computed = self.hasher.finalize();
        let pairs = [
            (system_meta::CHECKSUM_CRC32, computed.checksum_crc32, expected.crc32),
            (system_meta::CHECKSUM_CRC32C, computed.checksum_crc32c, expected.crc32c),
            (
                system_meta::CHECKSUM_CRC64NVME,
                computed.checksum_crc64nvme,
                expected.crc64nvme,
            ),
            (system_meta::CHECKSUM_SHA1, computed.checksum_sha1, expected.sha1),
            (system_meta::CHECKSUM_SHA256, computed.checksum_sha256, expected.sha256),
        ];
        let mut checksums = Vec::new();
        for (name, computed, expected) in pairs {
            let Some(computed) = computed else { continue };
            if expected.as_deref().is_some_and(|e| e != computed) {
                return Err(s3_error!(BadDigest, "the {name} you specified did not match the body"));
            }
            checksums.push((name.to_string(), computed));
        }
        Ok(Digests { md5, checksums })
    }
}

impl BodyObserver for BodyDigest {
    fn observe(&mut self, bytes: &[u8]) {
        self.md5.update(bytes);
        self.hasher.update(bytes);
    }
}

fn check_content_md5(content_md5: &str, md5: &[u8; 16]) -> Result<(), S3Error> {
    let decoded = decode_base64(content_md5)
        .filter(|d| d.len() == 16)
        .ok_or_else(|| s3_error!(InvalidDigest, "the Content-MD5 you specified is not valid"))?;
    if decoded != md5 {
        return Err(s3_error!(
            BadDigest,
            "the Content-MD5 you specified did not match the body"
        ));
    }
    Ok(())
}

/// Standard base64 with padding; `None` when malformed.
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes = text.trim().as_bytes();
    if bytes.is_empty() || !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for quad in bytes.chunks(4) {
        let pad = quad.iter().rev().take_while(|c| **c == b'=').count();
        if pad > 2 {
            return None;
        }
        let mut n = 0u32;
        for (i, c) in quad.iter().enumerate() {
            let v = if i >= 4 - pad { 0 } else { value(*c)? };
            n = (n << 6) | v;
        }
        let group = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&group[..3 - pad]);
    }
    Some(out)
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of a hex string; `None` when malformed.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_garbage() {
        assert_eq!(unhex(&hex(&[0x0a, 0xff])), Some(vec![0x0a, 0xff]));
        for bad in ["0g", "abc", "é0"] {
            assert_eq!(unhex(bad), None, "{bad}");
        }
    }

    #[test]
    fn base64_decodes_padding_and_refuses_garbage() {
        assert_eq!(decode_base64("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(decode_base64("aGk=").as_deref(), Some(&b"hi"[..]));
        assert_eq!(decode_base64("YWJj").as_deref(), Some(&b"abc"[..]));
        for bad in ["", "a", "a===", "@@@@", "aGVsbG8"] {
            assert_eq!(decode_base64(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn content_md5_and_checksums_are_verified() {
        let body = b"hello world";
        // md5("hello world") = 5eb63bbbe01eeed093cb22bb8f5acdc3
        let good = ExpectedChecksums {
            content_md5: Some("XrY7u+Ae7tCTyyK7j1rNww==".into()),
            crc32c: Some("yZRlqg==".into()),
            ..ExpectedChecksums::default()
        };
        let mut digest = BodyDigest::new(good.clone()).expect("digest");
        digest.observe(body);
        let digests = digest.verify(None).expect("matches");
        assert_eq!(hex(&digests.md5), "5eb63bbbe01eeed093cb22bb8f5acdc3");
        assert_eq!(
            digests.checksums,
            vec![("x-amz-checksum-crc32c".to_string(), "yZRlqg==".to_string())]
        );

        let mut wrong_md5 = BodyDigest::new(ExpectedChecksums {
            content_md5: Some("AAAAAAAAAAAAAAAAAAAAAA==".into()),
            ..good.clone()
        })
        .expect("digest");
        wrong_md5.observe(body);
        let error = wrong_md5.verify(None).expect_err("mismatch");
        assert_eq!(error.code().as_str(), "BadDigest");

        let mut wrong_crc = BodyDigest::new(ExpectedChecksums {
            crc32c: Some("AAAAAA==".into()),
            ..good
        })
        .expect("digest");
        wrong_crc.observe(body);
        assert_eq!(
            wrong_crc.verify(None).expect_err("mismatch").code().as_str(),
            "BadDigest"
        );
    }
}
