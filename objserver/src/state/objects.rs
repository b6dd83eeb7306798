//! Uids: GC entries with their space reservations (open_write / confirm),
//! deletion and trimming, and the read-side descriptions.

use tessera_raft::kv::{KvRead, Txn};

use super::records::{
    decode, decode_uid_key, encode, get, meta, put_meta, uid_key, GcEntry, ObjectRecord, GC, OBJECTS,
};
use super::{extents, ApplyCtx, QueryResponse, Response, StateError};
use crate::placement::Redundancy;

fn object<R: KvRead + ?Sized>(view: &R, uid: u128) -> Result<Option<ObjectRecord>, StateError> {
    get(view, OBJECTS, &uid_key(uid))
}

/// Changes the partition's total reservation by `delta`.
fn reserve<R: KvRead + ?Sized>(txn: &mut Txn<'_, R>, delta: i128) -> Result<(), StateError> {
    let mut m = meta(&*txn)?;
    let total = i128::from(m.reserved_bytes) + delta;
    if total < 0 {
        return Err(StateError::Invariant(format!("reserved bytes would be {total}")));
    }
    m.reserved_bytes = total as u64;
    put_meta(txn, &m);
    Ok(())
}

pub fn open_write<R: KvRead + ?Sized>(
    txn: &mut Txn<'_, R>,
    uid: u128,
    redundancy: Redundancy,
    size_hint_bytes: u64,
    ttl_ms: u64,
    ctx: &ApplyCtx,
) -> Result<Response, StateError> {
    let mut record = match object(&*txn, uid)? {
        Some(existing) if existing.redundancy != redundancy => return Err(StateError::RedundancyMismatch),
        Some(existing) => existing,
        None => {
            let mut m = meta(&*txn)?;
            m.objects += 1;
            put_meta(txn, &m);
            ObjectRecord {
                redundancy,
                size_bytes: 0,
                reserved_bytes: 0,
            }
        }
    };
    let reserved = record.reserved_bytes.max(size_hint_bytes);
    reserve(txn, i128::from(reserved) - i128::from(record.reserved_bytes))?;
    record.reserved_bytes = reserved;
    txn.put(OBJECTS, uid_key(uid), encode(&record));
    let entry = GcEntry {
        ttl_ms,
        opened_index: ctx.log_index,
    };
    txn.put(GC, uid_key(uid), encode(&entry));
    Ok(Response::Ok)
}

pub fn confirm<R: KvRead + ?Sized>(txn: &mut Txn<'_, R>, uid: u128) -> Result<Response, StateError> {
    let mut record = object(&*txn, uid)?.ok_or(StateError::NoSuchUid)?;
    reserve(txn, -i128::from(record.reserved_bytes))?;
    record.reserved_bytes = 0;
    txn.put(OBJECTS, uid_key(uid), encode(&record));
    txn.delete(GC, uid_key(uid));
    Ok(Response::Ok)
}

/// Idempotent: deleting an unknown uid is `Ok`.
pub fn delete<R: KvRead + ?Sized>(txn: &mut Txn<'_, R>, uid: u128) -> Result<Response, StateError> {
    let Some(record) = object(&*txn, uid)? else {
        return Ok(Response::Ok);
    };
    extents::drop_all(txn, uid)?;
    reserve(txn, -i128::from(record.reserved_bytes))?;
    let mut m = meta(&*txn)?;
    m.objects = m
        .objects
        .checked_sub(1)
        .ok_or_else(|| StateError::Invariant("object count below 0".into()))?;
    put_meta(txn, &m);
    txn.delete(OBJECTS, uid_key(uid));
    txn.delete(GC, uid_key(uid));
    Ok(Response::Ok)
}

pub fn trim<R: KvRead + ?Sized>(
    txn: &mut Txn<'_, R>,
    uid: u128,
    offset: u64,
    len: u64,
) -> Result<Response, StateError> {
    object(&*txn, uid)?.ok_or(StateError::NoSuchUid)?;
    extents::cut(txn, uid, offset, len)?;
    Ok(Response::Ok)
}

pub fn describe<R: KvRead + ?Sized>(view: &R, uid: u128) -> Result<QueryResponse, StateError> {
    let object = object(view, uid)?;
    let gc = get(view, GC, &uid_key(uid))?;
    let all = extents::all(view, uid)?;
    Ok(QueryResponse::Object {
        object,
        gc,
        extents: all.len() as u64,
        mapped_bytes: all.iter().map(|p| p.extent.len).sum(),
    })
}

pub fn gc_entries<R: KvRead + ?Sized>(view: &R, after: Option<u128>, limit: u32) -> Result<QueryResponse, StateError> {
    let start = match after {
        Some(u128::MAX) => return Ok(QueryResponse::GcEntries(Vec::new())),
        Some(uid) => uid_key(uid + 1),
        None => Vec::new(),
    };
    let mut out = Vec::new();
    for (key, value) in view.scan(GC, &start, None, limit as usize)? {
        out.push((decode_uid_key(GC, &key)?, decode(GC, &value)?));
    }
    Ok(QueryResponse::GcEntries(out))
}
