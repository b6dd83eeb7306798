//! Buckets: S3 naming rules, create, delete (only when empty: no names, no
//! versions, no multipart uploads in progress), list, storage policy, owner.

use super::codec::{self, encode, name_prefix, prefix_end};
use super::{
    BucketInfo, BucketRecord, Fail, NamespaceError, Res, Response, StoragePolicy, BUCKETS, CURRENT, UPLOAD_INDEX,
    VERSIONS,
};
use tessera_raft::kv::{KvRead, Txn};

/// Checks S3's bucket naming rules.
pub fn validate_name(name: &str) -> Result<(), NamespaceError> {
    let refuse = |reason: &str| {
        Err(NamespaceError::InvalidBucketName {
            name: name.to_string(),
            reason: reason.to_string(),
        })
    };
    let bytes = name.as_bytes();
    if !(3..=63).contains(&bytes.len()) {
        return refuse("length must be 3 to 63");
    }
    let allowed = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'.' || *b == b'-';
    if !bytes.iter().all(allowed) {
        return refuse("only lowercase letters, digits, '.' and '-' allowed");
    }
    let alnum = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !alnum(bytes.first()) || !alnum(bytes.last()) {
        return refuse("must start and end with a letter or digit");
    }
    if name.contains("..") {
        return refuse("must not contain \"..\"");
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return refuse("must not be an IP address");
    }
    if name.starts_with("xn--") || name.starts_with("sthree-") {
        return refuse("reserved prefix");
    }
    if name.ends_with("-s3alias") || name.ends_with("--ol-s3") {
        return refuse("reserved suffix");
    }
    Ok(())
}

fn validate_policy(policy: StoragePolicy) -> Result<(), NamespaceError> {
    let ok = match policy {
        StoragePolicy::Ec { k, m } => (1..=32).contains(&k) && m <= 16,
        StoragePolicy::Replicated { n } => (1..=16).contains(&n),
    };
    if ok {
        Ok(())
    } else {
        Err(NamespaceError::InvalidPolicy(policy))
    }
}

/// Reads a bucket.
pub fn get<R: KvRead + ?Sized>(view: &R, name: &str) -> Res<Option<BucketInfo>> {
    codec::get(view, BUCKETS, name.as_bytes())
}

/// Reads a bucket that must exist.
pub fn require<R: KvRead + ?Sized>(view: &R, name: &str) -> Res<BucketInfo> {
    get(view, name)?.ok_or_else(|| Fail::Refused(NamespaceError::NoSuchBucket(name.to_string())))
}

pub fn create<R: KvRead + ?Sized>(
    txn: &mut Txn<'_, R>,
    name: &str,
    owner: &str,
    created_ms: u64,
    policy: StoragePolicy,
) -> Res<Response> {
    validate_name(name)?;
    validate_policy(policy)?;
    if txn.get(BUCKETS, name.as_bytes())?.is_some() {
        return Err(NamespaceError::BucketExists(name.to_string()).into());
    }
    let record = BucketRecord {
        name: name.to_string(),
        owner: owner.to_string(),
        created_ms,
    };
    txn.put(
        BUCKETS,
        name.as_bytes().to_vec(),
        encode(&BucketInfo { record, policy }),
    );
    Ok(Response::Ok)
}

/// Whether any key of `table` starts with `prefix`.
fn any_with_prefix<R: KvRead + ?Sized>(view: &R, table: tessera_raft::kv::Table, prefix: &[u8]) -> Res<bool> {
    let end = prefix_end(prefix);
    Ok(!view.scan(table, prefix, end.as_deref(), 1)?.is_empty())
}

pub fn delete<R: KvRead + ?Sized>(txn: &mut Txn<'_, R>, name: &str) -> Res<Response> {
    require(txn, name)?;
    let names = name_prefix(name, "");
    for table in [CURRENT, VERSIONS, UPLOAD_INDEX] {
        if any_with_prefix(txn, table, &names)? {
            return Err(NamespaceError::BucketNotEmpty(name.to_string()).into());
        }
    }
    super::access::drop_bucket_grants(txn, name)?;
    txn.delete(BUCKETS, name.as_bytes().to_vec());
    Ok(Response::Ok)
}

fn update<R: KvRead + ?Sized>(txn: &mut Txn<'_, R>, name: &str, change: impl FnOnce(&mut BucketInfo)) -> Res<Response> {
    let mut info = require(txn, name)?;
    change(&mut info);
    txn.put(BUCKETS, name.as_bytes().to_vec(), encode(&info));
    Ok(Response::Ok)
}

pub fn set_policy<R: KvRead + ?Sized>(txn: &mut Txn<'_, R>, name: &str, policy: StoragePolicy) -> Res<Response> {
    validate_policy(policy)?;
    update(txn, name, |info| info.policy = policy)
}

pub fn set_owner<R: KvRead + ?Sized>(txn: &mut Txn<'_, R>, name: &str, owner: &str) -> Res<Response> {
    update(txn, name, |info| info.record.owner = owner.to_string())
}

/// All buckets (or one owner's), by name.
pub fn list<R: KvRead + ?Sized>(view: &R, owner: Option<&str>) -> Res<Vec<BucketInfo>> {
    let mut out = Vec::new();
    let mut start = Vec::new();
    loop {
        let batch = view.scan(BUCKETS, &start, None, 256)?;
        let Some((last, _)) = batch.last() else { break };
        start = codec::key_after(last);
        for (_, value) in &batch {
            let info: BucketInfo = codec::decode(BUCKETS, value)?;
            if owner.is_none_or(|owner| owner == info.record.owner) {
                out.push(info);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names_follow_s3_rules() {
        for good in ["abc", "my-bucket.1", "a1b", &"a".repeat(63), "1.2.3"] {
            assert_eq!(validate_name(good), Ok(()), "{good}");
        }
        let long = "a".repeat(64);
        for bad in [
            "ab",
            long.as_str(),
            "ABC",
            "a_b",
            "-ab",
            "ab-",
            ".ab",
            "a..b",
            "192.168.1.1",
            "xn--abc",
            "abc-s3alias",
            "a b",
            "ab\u{e9}",
            "",
        ] {
            assert!(
                matches!(validate_name(bad), Err(NamespaceError::InvalidBucketName { .. })),
                "{bad}"
            );
        }
    }
}
