//! Object metadata between S3 and the name servers: ETags, times, the
//! stored HTTP headers (`system_meta`), user metadata limits, key limits,
//! and the conditional-request rules of GET, HEAD and copy sources.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use s3s::dto::{ETag, ETagCondition, Metadata, Timestamp, TimestampFormat};
use s3s::{s3_error, S3Error};
use tessera_common::ns_api::{system_meta, ObjectInfo};

/// S3's limit on user metadata (keys and values, UTF-8 bytes).
pub const USER_META_BYTES_MAX: usize = 2 << 10;
/// S3's limit on key length.
pub const KEY_BYTES_MAX: usize = 1024;

/// The ETag of a stored object (stored unquoted).
pub fn etag(stored: &str) -> ETag {
    ETag::Strong(stored.trim_matches('"').to_string())
}

/// Milliseconds since the epoch as an S3 timestamp.
pub fn timestamp(ms: u64) -> Timestamp {
    Timestamp::from(UNIX_EPOCH + Duration::from_millis(ms))
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn seconds(t: &Timestamp) -> i64 {
    time::OffsetDateTime::from(t.clone()).unix_timestamp()
}

pub fn check_key(key: &str) -> Result<(), S3Error> {
    if key.is_empty() {
        return Err(s3_error!(InvalidArgument, "the object key is empty"));
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(s3_error!(KeyTooLongError));
    }
    Ok(())
}

/// User metadata as stored, refused past [`USER_META_BYTES_MAX`].
pub fn user_meta(metadata: Option<Metadata>) -> Result<Vec<(String, String)>, S3Error> {
    let mut pairs: Vec<(String, String)> = metadata.unwrap_or_default().into_iter().collect();
    pairs.sort();
    let size_bytes: usize = pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size_bytes > USER_META_BYTES_MAX {
        return Err(s3_error!(MetadataTooLarge));
    }
    Ok(pairs)
}

pub fn user_metadata(info: &ObjectInfo) -> Option<Metadata> {
    (!info.user_meta.is_empty()).then(|| info.user_meta.iter().cloned().collect())
}

/// The stored HTTP headers of a write.
#[derive(Clone, Debug, Default)]
pub struct Headers {
    pub content_encoding: Option<String>,
    pub content_disposition: Option<String>,
    pub content_language: Option<String>,
    pub cache_control: Option<String>,
    pub expires: Option<Timestamp>,
}

impl Headers {
    pub fn to_system_meta(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut put = |name: &str, value: &Option<String>| {
            if let Some(v) = value {
                out.push((name.to_string(), v.clone()));
            }
        };
        put(system_meta::CONTENT_ENCODING, &self.content_encoding);
        put(system_meta::CONTENT_DISPOSITION, &self.content_disposition);
        put(system_meta::CONTENT_LANGUAGE, &self.content_language);
        put(system_meta::CACHE_CONTROL, &self.cache_control);
        if let Some(expires) = &self.expires {
            let mut text = Vec::new();
            if expires.format(TimestampFormat::HttpDate, &mut text).is_ok() {
                out.push((
                    system_meta::EXPIRES.to_string(),
                    String::from_utf8_lossy(&text).into_owned(),
                ));
            }
        }
        out
    }

    pub fn from_system_meta(meta: &[(String, String)]) -> Headers {
        let get = |name| system_meta::get(meta, name).map(String::from);
        Headers {
            content_encoding: get(system_meta::CONTENT_ENCODING),
            content_disposition: get(system_meta::CONTENT_DISPOSITION),
            content_language: get(system_meta::CONTENT_LANGUAGE),
            cache_control: get(system_meta::CACHE_CONTROL),
            expires: system_meta::get(meta, system_meta::EXPIRES)
                .and_then(|text| Timestamp::parse(TimestampFormat::HttpDate, text).ok()),
        }
    }
}

/// The stored checksums of an object (none for multipart objects).
pub fn checksum(info: &ObjectInfo, name: &str) -> Option<String> {
    system_meta::get(&info.system_meta, name).map(String::from)
}

/// The conditional headers of a read (or of a copy source).
#[derive(Clone, Debug, Default)]
pub struct Preconditions {
    pub if_match: Option<ETagCondition>,
    pub if_none_match: Option<ETagCondition>,
    pub if_modified_since: Option<Timestamp>,
    pub if_unmodified_since: Option<Timestamp>,
}

fn matches(condition: &ETagCondition, stored: &str) -> bool {
    match condition {
        ETagCondition::Any => true,
        ETagCondition::ETag(tag) => tag.value().trim_matches('"') == stored.trim_matches('"'),
    }
}

impl Preconditions {
    /// RFC 7232 as S3 applies it: If-Match beats If-Unmodified-Since,
    /// If-None-Match beats If-Modified-Since. A failed If-None-Match or
    /// If-Modified-Since is `NotModified` for reads and
    /// `PreconditionFailed` for copy sources (`for_copy`).
    pub fn check(&self, info: &ObjectInfo, for_copy: bool) -> Result<(), S3Error> {
        let modified_s = i64::try_from(info.mtime_ms / 1000).unwrap_or(i64::MAX);
        match &self.if_match {
            Some(condition) if !matches(condition, &info.etag) => return Err(s3_error!(PreconditionFailed)),
            Some(_) => {}
            None => {
                if self
                    .if_unmodified_since
                    .as_ref()
                    .is_some_and(|t| modified_s > seconds(t))
                {
                    return Err(s3_error!(PreconditionFailed));
                }
            }
        }
        let not_modified = match &self.if_none_match {
            Some(condition) => matches(condition, &info.etag),
            None => self
                .if_modified_since
                .as_ref()
                .is_some_and(|t| modified_s <= seconds(t)),
        };
        match (not_modified, for_copy) {
            (false, _) => Ok(()),
            (true, true) => Err(s3_error!(PreconditionFailed)),
            (true, false) => Err(s3_error!(NotModified)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(etag: &str, mtime_ms: u64) -> ObjectInfo {
        ObjectInfo {
            uid: 1,
            version_id: String::new(),
            size: 1,
            etag: etag.into(),
            content_type: None,
            user_meta: Vec::new(),
            mtime_ms,
            partition: 0,
            system_meta: Vec::new(),
            parts: Vec::new(),
        }
    }

    fn tag(value: &str) -> Option<ETagCondition> {
        Some(ETagCondition::ETag(ETag::Strong(value.into())))
    }

    #[test]
    fn preconditions_follow_s3_precedence() {
        let object = info("abc", 10_000);
        let before = Some(timestamp(5_000));
        let after = Some(timestamp(20_000));
        let code = |p: Preconditions, copy: bool| p.check(&object, copy).err().map(|e| e.code().as_str().to_string());
        assert_eq!(
            code(
                Preconditions {
                    if_match: tag("abc"),
                    ..Default::default()
                },
                false
            ),
            None
        );
        assert_eq!(
            code(
                Preconditions {
                    if_match: tag("x"),
                    ..Default::default()
                },
                false
            )
            .as_deref(),
            Some("PreconditionFailed")
        );
        // If-Match true wins over a failing If-Unmodified-Since.
        let p = Preconditions {
            if_match: tag("abc"),
            if_unmodified_since: before.clone(),
            ..Default::default()
        };
        assert_eq!(code(p, false), None);
        let p = Preconditions {
            if_unmodified_since: before,
            ..Default::default()
        };
        assert_eq!(code(p, false).as_deref(), Some("PreconditionFailed"));
        let p = Preconditions {
            if_none_match: tag("abc"),
            ..Default::default()
        };
        assert_eq!(code(p.clone(), false).as_deref(), Some("NotModified"));
        assert_eq!(code(p, true).as_deref(), Some("PreconditionFailed"));
        let p = Preconditions {
            if_modified_since: after,
            ..Default::default()
        };
        assert_eq!(code(p, false).as_deref(), Some("NotModified"));
        let p = Preconditions {
            if_none_match: tag("other"),
            if_modified_since: Some(timestamp(20_000)),
            ..Default::default()
        };
        assert_eq!(code(p, false), None, "If-None-Match beats If-Modified-Since");
    }

    #[test]
    fn system_headers_round_trip() {
        let headers = Headers {
            content_encoding: Some("gzip".into()),
            cache_control: Some("no-cache".into()),
            expires: Some(timestamp(1_700_000_000_000)),
            ..Headers::default()
        };
        let back = Headers::from_system_meta(&headers.to_system_meta());
        assert_eq!(back.content_encoding.as_deref(), Some("gzip"));
        assert_eq!(back.cache_control.as_deref(), Some("no-cache"));
        assert_eq!(back.expires, headers.expires);
        assert_eq!(back.content_language, None);
    }

    #[test]
    fn user_metadata_is_bounded() {
        let small: Metadata = [("a".to_string(), "b".to_string())].into_iter().collect();
        assert_eq!(user_meta(Some(small)).expect("fits"), vec![("a".into(), "b".into())]);
        let big: Metadata = [("a".to_string(), "x".repeat(3000))].into_iter().collect();
        assert_eq!(
            user_meta(Some(big)).expect_err("too big").code().as_str(),
            "MetadataTooLarge"
        );
    }
}
