//! Names and their versions, the uid reference index, reap (DESIGN §4) and
//! the pending-delete queue.
//!
//! A name's current version is in `CURRENT` (with the sequence number, the
//! log index that wrote it); every retained version is in `VERSIONS` under
//! `name key ++ (u64::MAX - seq)`, newest first, so S3 versioning can keep
//! several versions per key later without a migration. Buckets are
//! unversioned today: a commit replaces the current version and queues the
//! uids the new version no longer holds.
//!
//! `UID_REFS` holds one row per (uid, referrer) — a version or a multipart
//! part — kept by every command that adds or removes a reference, so `reap`
//! answers without scanning names. Reaped uids are [`super::reaped`]'s;
//! `commit` and `put_part` refuse them at apply time, so whichever of reap
//! and commit the log orders first wins.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::codec::{self, be_tail, encode, name_key, prefix_end};
use super::{
    buckets, ApplyCtx, CommitCondition, NamespaceError, ObjectVersion, PendingDelete, Res, Response, VersionKind,
    CURRENT, META, PENDING_DELETES, UID_REFS, VERSIONS,
};
use tessera_raft::kv::{KvRead, Txn};

/// S3's limit on object key length.
pub const MAX_KEY_BYTES: usize = 1024;

/// The most pending deletes one query returns.
pub const MAX_PENDING_PAGE: usize = 10_000;

const NEXT_DELETE_SEQ: &[u8] = b"next_delete_seq";

/// The value of `CURRENT`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrentEntry {
    pub seq: u64,
    pub version: ObjectVersion,
}

/// Who references a uid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UidRef {
    Version { bucket: String, key: String, seq: u64 },
    Part { upload_id: String, part_number: u32 },
}

#[derive(Serialize, Deserialize)]
struct QueuedDelete {
    uid: u128,
    partition: u32,
}

pub fn validate_key(key: &str) -> Result<(), NamespaceError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(NamespaceError::InvalidKey { len_bytes: key.len() });
    }
    Ok(())
}

fn uid_ref_key(uid: u128, referrer: &UidRef) -> Vec<u8> {
    let mut out = uid.to_be_bytes().to_vec();
    out.extend_from_slice(&encode(referrer));
    out
}

pub fn add_ref<R: KvRead + ?Sized>(txn: &mut Txn<'_, R>, uid: u128, referrer: &UidRef) {
    txn.put(UID_REFS, uid_ref_key(uid, referrer), Vec::new());
}

pub fn remove_ref<R: KvRead + ?Sized>(txn: &mut Txn<'_, R>, uid: u128, referrer: &UidRef) {
    txn.delete(UID_REFS, uid_ref_key(uid, referrer));
}

/// Whether any version or part references `uid`.
pub fn is_referenced<R: KvRead + ?Sized>(view: &R, uid: u128) -> Res<bool> {
    let prefix = uid.to_be_bytes();
    let end = prefix_end(&prefix);
    Ok(!view.scan(UID_REFS, &prefix, end.as_deref(), 1)?.is_empty())
}

/// Every (uid, partition) a version holds: its own uid and its manifest's.
pub fn version_uids(version: &ObjectVersion) -> Vec<(u128, u32)> {
    let mut out = vec![(version.uid, version.partition)];
    out.extend(version.parts.iter().map(|part| (part.uid, part.partition)));
    out
}

/// Appends `uid` to the pending-delete queue.
pub fn queue_delete<R: KvRead + ?Sized>(txn: &mut Txn<'_, R>, uid: u128, partition: u32) -> Res<()> {
    let seq: u64 = codec::get(txn, META, NEXT_DELETE_SEQ)?.unwrap_or(0);
    txn.put(META, NEXT_DELETE_SEQ.to_vec(), encode(&(seq + 1)));
    txn.put(
        PENDING_DELETES,
        seq.to_be_bytes().to_vec(),
        encode(&QueuedDelete { uid, partition }),
    );
    Ok(())
}

fn version_key(bucket: &str, key: &str, seq: u64) -> Vec<u8> {
    let mut out = name_key(bucket, key);
    out.extend_from_slice(&(u64::MAX - seq).to_be_bytes());
    out
}

pub fn current_entry<R: KvRead + ?Sized>(view: &R, bucket: &str, key: &str) -> Res<Option<CurrentEntry>> {
    codec::get(view, CURRENT, &name_key(bucket, key))
}

/// The current version (possibly a delete marker).
pub fn get_current<R: KvRead + ?Sized>(view: &R, bucket: &str, key: &str) -> Res<Option<ObjectVersion>> {
    Ok(current_entry(view, bucket, key)?.map(|entry| entry.version))
}

/// Queues each uid that nothing references any more (call after the
/// command's references are updated).
pub fn release<R: KvRead + ?Sized>(txn: &mut Txn<'_, R>, uids: &[(u128, u32)]) -> Res<()> {
    let mut seen = BTreeSet::new();
    for &(uid, partition) in uids {
        if seen.insert(uid) && !is_referenced(txn, uid)? {
            queue_delete(txn, uid, partition)?;
        }
    }
    Ok(())
}

/// Removes a version's row and references; returns its uids for [`release`].
fn remove_version<R: KvRead + ?Sized>(
    txn: &mut Txn<'_, R>,
    bucket: &str,
    key: &str,
    old: &CurrentEntry,
) -> Vec<(u128, u32)> {
    txn.delete(VERSIONS, version_key(bucket, key, old.seq));
    let referrer = UidRef::Version {
        bucket: bucket.to_string(),
        key: key.to_string(),
        seq: old.seq,
    };
    let uids = version_uids(&old.version);
    for (uid, _) in &uids {
        remove_ref(txn, *uid, &referrer);
    }
    uids
}

/// Makes `version` the current version of the name (unversioned: replaces
/// the previous one and queues its uids that nothing else references).
/// Callers have validated everything.
pub fn install<R: KvRead + ?Sized>(
    txn: &mut Txn<'_, R>,
    bucket: &str,
    key: &str,
    version: ObjectVersion,
    seq: u64,
) -> Res<()> {
    let released = match current_entry(txn, bucket, key)? {
        Some(old) => remove_version(txn, bucket, key, &old),
        None => Vec::new(),
    };
    let referrer = UidRef::Version {
        bucket: bucket.to_string(),
        key: key.to_string(),
        seq,
    };
    for (uid, _) in version_uids(&version) {
        add_ref(txn, uid, &referrer);
    }
    txn.put(VERSIONS, version_key(bucket, key, seq), encode(&version));
    txn.put(CURRENT, name_key(bucket, key), encode(&CurrentEntry { seq, version }));
    release(txn, &released)
}

fn same_etag(a: &str, b: &str) -> bool {
    a.trim_matches('"') == b.trim_matches('"')
}

/// Checks a commit condition against the name's live version.
pub fn check_condition<R: KvRead + ?Sized>(view: &R, bucket: &str, key: &str, condition: &CommitCondition) -> Res<()> {
    let live = get_current(view, bucket, key)?.filter(|v| v.kind == VersionKind::Object);
    let ok = match condition {
        CommitCondition::None => true,
        CommitCondition::IfNoneMatch => live.is_none(),
        CommitCondition::IfMatch(etag) => live.is_some_and(|v| etag == "*" || same_etag(etag, &v.etag)),
    };
    if ok {
        Ok(())
    } else {
        Err(NamespaceError::PreconditionFailed.into())
    }
}

/// Validates a commit of `version` to the name: key, bucket, no reaped uid,
/// the condition.
pub fn check_commit<R: KvRead + ?Sized>(
    view: &R,
    bucket: &str,
    key: &str,
    version: &ObjectVersion,
    condition: &CommitCondition,
    log_index: u64,
) -> Res<()> {
    validate_key(key)?;
    buckets::require(view, bucket)?;
    for (uid, _) in version_uids(version) {
        super::reaped::check_not_reaped(view, uid, log_index)?;
    }
    check_condition(view, bucket, key, condition)
}

/// DESIGN §4 step 5, at apply time.
pub fn commit<R: KvRead + ?Sized>(
    txn: &mut Txn<'_, R>,
    bucket: &str,
    key: &str,
    version: &ObjectVersion,
    condition: &CommitCondition,
    ctx: &ApplyCtx,
) -> Res<Response> {
    check_commit(txn, bucket, key, version, condition, ctx.log_index)?;
    install(txn, bucket, key, version.clone(), ctx.command_seq())?;
    Ok(Response::Ok)
}

/// Removes the current version (unversioned delete) and queues its uids.
pub fn delete<R: KvRead + ?Sized>(txn: &mut Txn<'_, R>, bucket: &str, key: &str) -> Res<Response> {
    validate_key(key)?;
    buckets::require(txn, bucket)?;
    let Some(old) = current_entry(txn, bucket, key)? else {
        return Ok(Response::Deleted { existed: false });
    };
    let released = remove_version(txn, bucket, key, &old);
    txn.delete(CURRENT, name_key(bucket, key));
    release(txn, &released)?;
    Ok(Response::Deleted {
        existed: old.version.kind == VersionKind::Object,
    })
}

/// Dequeues entries the object servers confirmed; unknown seqs are ignored.
pub fn ack_deletes<R: KvRead + ?Sized>(txn: &mut Txn<'_, R>, seqs: &[u64]) -> Res<Response> {
    for seq in seqs {
        txn.delete(PENDING_DELETES, seq.to_be_bytes().to_vec());
    }
    Ok(Response::Ok)
}

/// The next `limit` (at most [`MAX_PENDING_PAGE`]) queue entries after `after_seq`.
pub fn pending<R: KvRead + ?Sized>(view: &R, after_seq: Option<u64>, limit: usize) -> Res<Vec<PendingDelete>> {
    let start = match after_seq {
        Some(seq) => match seq.checked_add(1) {
            Some(next) => next.to_be_bytes().to_vec(),
            None => return Ok(Vec::new()),
        },
        None => Vec::new(),
    };
    let pairs = view.scan(PENDING_DELETES, &start, None, limit.min(MAX_PENDING_PAGE))?;
    pairs
        .iter()
        .map(|(key, value)| -> Res<PendingDelete> {
            let seq = u64::from_be_bytes(be_tail::<8>(PENDING_DELETES, key)?);
            let queued: QueuedDelete = codec::decode(PENDING_DELETES, value)?;
            Ok(PendingDelete {
                seq,
                uid: queued.uid,
                partition: queued.partition,
            })
        })
        .collect()
}
