//! Access keys and per-bucket permissions.
//!
//! A key is allowed an operation on a bucket when its owner owns the bucket,
//! or when it holds the permission (or `Owner`, which implies read and
//! write) on that bucket. Grants live under `bucket 0x00 key id` (so a
//! deleted bucket drops them) with a reverse index under `key id ++ bucket`
//! (so a revoked key drops them); neither path scans the whole table.

use std::collections::BTreeSet;

use super::codec::{self, encode, prefix_end, str_component};
use super::{
    buckets, AccessKeyInfo, AccessKeyRecord, Authz, Fail, NamespaceError, Permission, Res, Response, Secret,
    SecretInfo, ACCESS_KEYS, GRANTS, KEY_GRANTS,
};
use tessera_raft::kv::{KvRead, Txn};

type Perms = BTreeSet<Permission>;

fn validate_key_id(key_id: &str) -> Result<(), NamespaceError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if (3..=128).contains(&key_id.len()) && key_id.chars().all(ok_char) {
        Ok(())
    } else {
        Err(NamespaceError::InvalidAccessKeyId)
    }
}

fn grant_key(bucket: &str, key_id: &str) -> Vec<u8> {
    let mut out = bucket.as_bytes().to_vec();
    out.push(0);
    out.extend_from_slice(key_id.as_bytes());
    out
}

fn key_grant_key(key_id: &str, bucket: &str) -> Vec<u8> {
    let mut out = Vec::new();
    str_component(&mut out, key_id);
    out.extend_from_slice(bucket.as_bytes());
    out
}

fn get_key<R: KvRead + ?Sized>(view: &R, key_id: &str) -> Res<Option<AccessKeyRecord>> {
    codec::get(view, ACCESS_KEYS, key_id.as_bytes())
}

fn require_key<R: KvRead + ?Sized>(view: &R, key_id: &str) -> Res<AccessKeyRecord> {
    get_key(view, key_id)?.ok_or_else(|| Fail::Refused(NamespaceError::NoSuchAccessKey(key_id.to_string())))
}

pub fn create<R: KvRead + ?Sized>(
    txn: &mut Txn<'_, R>,
    key_id: &str,
    secret: &Secret,
    owner: &str,
    created_ms: u64,
) -> Res<Response> {
    validate_key_id(key_id)?;
    if get_key(txn, key_id)?.is_some() {
        return Err(NamespaceError::AccessKeyExists(key_id.to_string()).into());
    }
    let record = AccessKeyRecord {
        key_id: key_id.to_string(),
        secret: secret.clone(),
        owner: owner.to_string(),
        created_ms,
    };
    txn.put(ACCESS_KEYS, key_id.as_bytes().to_vec(), encode(&record));
    Ok(Response::Ok)
}

/// Deletes the key and every grant it holds.
pub fn revoke<R: KvRead + ?Sized>(txn: &mut Txn<'_, R>, key_id: &str) -> Res<Response> {
    require_key(txn, key_id)?;
    let mut prefix = Vec::new();
    str_component(&mut prefix, key_id);
    let end = prefix_end(&prefix);
    for (index_key, _) in txn.scan(KEY_GRANTS, &prefix, end.as_deref(), usize::MAX)? {
        let bucket = String::from_utf8_lossy(&index_key[prefix.len()..]).into_owned();
        txn.delete(GRANTS, grant_key(&bucket, key_id));
        txn.delete(KEY_GRANTS, index_key);
    }
    txn.delete(ACCESS_KEYS, key_id.as_bytes().to_vec());
    Ok(Response::Ok)
}

fn perms<R: KvRead + ?Sized>(view: &R, key_id: &str, bucket: &str) -> Res<Perms> {
    Ok(codec::get(view, GRANTS, &grant_key(bucket, key_id))?.unwrap_or_default())
}

fn store_perms<R: KvRead + ?Sized>(txn: &mut Txn<'_, R>, key_id: &str, bucket: &str, perms: &Perms) {
    if perms.is_empty() {
        txn.delete(GRANTS, grant_key(bucket, key_id));
        txn.delete(KEY_GRANTS, key_grant_key(key_id, bucket));
    } else {
        txn.put(GRANTS, grant_key(bucket, key_id), encode(perms));
        txn.put(KEY_GRANTS, key_grant_key(key_id, bucket), Vec::new());
    }
}

pub fn grant<R: KvRead + ?Sized>(
    txn: &mut Txn<'_, R>,
    key_id: &str,
    bucket: &str,
    permission: Permission,
) -> Res<Response> {
    require_key(txn, key_id)?;
    buckets::require(txn, bucket)?;
    let mut held = perms(txn, key_id, bucket)?;
    held.insert(permission);
    store_perms(txn, key_id, bucket, &held);
    Ok(Response::Ok)
}

pub fn ungrant<R: KvRead + ?Sized>(
    txn: &mut Txn<'_, R>,
    key_id: &str,
    bucket: &str,
    permission: Permission,
) -> Res<Response> {
    require_key(txn, key_id)?;
    let mut held = perms(txn, key_id, bucket)?;
    held.remove(&permission);
    store_perms(txn, key_id, bucket, &held);
    Ok(Response::Ok)
}

/// Drops every grant on `bucket` (called when the bucket is deleted).
pub fn drop_bucket_grants<R: KvRead + ?Sized>(txn: &mut Txn<'_, R>, bucket: &str) -> Res<()> {
    let prefix = grant_key(bucket, "");
    let end = prefix_end(&prefix);
    for (key, _) in txn.scan(GRANTS, &prefix, end.as_deref(), usize::MAX)? {
        let key_id = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
        txn.delete(KEY_GRANTS, key_grant_key(&key_id, bucket));
        txn.delete(GRANTS, key);
    }
    Ok(())
}

/// Every key (or one owner's), by id, without secrets.
pub fn list<R: KvRead + ?Sized>(view: &R, owner: Option<&str>) -> Res<Vec<AccessKeyInfo>> {
    let mut out = Vec::new();
    for (_, value) in view.scan(ACCESS_KEYS, &[], None, usize::MAX)? {
        let record: AccessKeyRecord = codec::decode(ACCESS_KEYS, &value)?;
        if owner.is_none_or(|owner| owner == record.owner) {
            out.push(AccessKeyInfo {
                key_id: record.key_id,
                owner: record.owner,
                created_ms: record.created_ms,
            });
        }
    }
    Ok(out)
}

/// The secret of a key, for SigV4 verification.
pub fn secret<R: KvRead + ?Sized>(view: &R, key_id: &str) -> Res<Option<SecretInfo>> {
    Ok(get_key(view, key_id)?.map(|record| SecretInfo {
        secret: record.secret,
        owner: record.owner,
    }))
}

pub fn authorize<R: KvRead + ?Sized>(view: &R, key_id: &str, bucket: &str, op: Permission) -> Res<Authz> {
    let Some(record) = get_key(view, key_id)? else {
        return Ok(Authz::UnknownKey);
    };
    if buckets::get(view, bucket)?.is_some_and(|info| info.record.owner == record.owner) {
        return Ok(Authz::Allowed);
    }
    let held = perms(view, key_id, bucket)?;
    if held.contains(&op) || held.contains(&Permission::Owner) {
        Ok(Authz::Allowed)
    } else {
        Ok(Authz::Denied)
    }
}
