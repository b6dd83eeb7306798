//! Names of the stored HTTP headers and checksums of an object
//! ([`super::ObjectInfo::system_meta`]): what S3 returns on GET and HEAD
//! besides the content type and user metadata. Keys are the lower-case
//! HTTP header names; values are the header values as received.

pub const CONTENT_ENCODING: &str = "content-encoding";
pub const CONTENT_DISPOSITION: &str = "content-disposition";
pub const CONTENT_LANGUAGE: &str = "content-language";
pub const CACHE_CONTROL: &str = "cache-control";
pub const EXPIRES: &str = "expires";
pub const CHECKSUM_CRC32: &str = "x-amz-checksum-crc32";
pub const CHECKSUM_CRC32C: &str = "x-amz-checksum-crc32c";
pub const CHECKSUM_SHA1: &str = "x-amz-checksum-sha1";
pub const CHECKSUM_SHA256: &str = "x-amz-checksum-sha256";
pub const CHECKSUM_CRC64NVME: &str = "x-amz-checksum-crc64nvme";

/// The value stored under `name`, if any.
pub fn get<'a>(meta: &'a [(String, String)], name: &str) -> Option<&'a str> {
    meta.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}
