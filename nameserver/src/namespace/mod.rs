//! The namespace state machine: deterministic application of Raft entries
//! ([`Command`]) to the tables, and reads ([`Query`]) of them. Everything a
//! command needs to be deterministic (times, ids) is in the command itself,
//! chosen by the proposer; apply never consults clocks or randomness.
//!
//! A command either applies completely or not at all: [`apply`] runs it on
//! a nested [`Txn`] and copies its writes into the caller's transaction only
//! when it succeeds, so a refusal (`Response::Error`) leaves no trace even
//! when many entries share one transaction. Stored values that fail to
//! decode are refused as [`NamespaceError::Corrupt`] (deterministic: every
//! replica holds the same bytes), never a panic.
//!
//! Submodules: [`codec`] (key and value encodings), [`buckets`],
//! [`access`] (access keys and permissions), [`names`] (versions, deletes,
//! the pending-delete queue), [`reaped`] (reap and its pruning),
//! [`multipart`], [`listing`], [`cluster`].

pub mod access;
pub mod buckets;
pub mod cluster;
pub mod codec;
pub mod listing;
pub mod multipart;
pub mod names;
pub mod reaped;
mod types;

#[cfg(test)]
mod tests;

pub use types::*;

use tessera_raft::kv::{KvError, KvRead, Table, Txn};
/// Position of the entry being applied.
pub use tessera_raft::ApplyCtx;

/// Every table of the namespace (column families besides Raft's own).
pub const TABLES: &[Table] = &[
    BUCKETS,
    CURRENT,
    VERSIONS,
    UID_REFS,
    REAPED,
    REAPED_ORDER,
    PENDING_DELETES,
    META,
    UPLOADS,
    UPLOAD_INDEX,
    PARTS,
    ACCESS_KEYS,
    GRANTS,
    KEY_GRANTS,
    NODES,
    PARTITIONS,
];

/// bucket name → [`BucketInfo`].
pub const BUCKETS: Table = "buckets";
/// name key → [`names::CurrentEntry`]: the current version of each name.
pub const CURRENT: Table = "current";
/// name key ++ inverted seq → [`ObjectVersion`]: every retained version.
pub const VERSIONS: Table = "versions";
/// uid ++ [`names::UidRef`] → (): who references each uid.
pub const UID_REFS: Table = "uid_refs";
/// uid → log index: uids the object servers were told are free.
pub const REAPED: Table = "reaped";
/// reap log index ++ uid → (): [`REAPED`] in reap order, for pruning.
pub const REAPED_ORDER: Table = "reaped_order";
/// seq → [`PendingDelete`]: uids to drop on the object servers.
pub const PENDING_DELETES: Table = "pending_deletes";
/// Counters.
pub const META: Table = "meta";
/// upload id → [`UploadRecord`].
pub const UPLOADS: Table = "uploads";
/// name key ++ upload id → (): uploads in S3 listing order.
pub const UPLOAD_INDEX: Table = "upload_index";
/// upload id ++ part number → [`PartRef`].
pub const PARTS: Table = "parts";
/// access key id → [`AccessKeyRecord`].
pub const ACCESS_KEYS: Table = "access_keys";
/// bucket 0x00 key id → permissions of that key on that bucket.
pub const GRANTS: Table = "grants";
/// key id ++ bucket → (): the buckets a key has grants on.
pub const KEY_GRANTS: Table = "key_grants";
/// node id → [`NodeRecord`].
pub const NODES: Table = "nodes";
/// partition → replica node ids.
pub const PARTITIONS: Table = "partitions";

/// Why a command or query did not produce its answer: a storage failure or
/// a typed refusal.
#[derive(Debug)]
pub enum Fail {
    Kv(KvError),
    Refused(NamespaceError),
}

impl From<KvError> for Fail {
    fn from(error: KvError) -> Self {
        Fail::Kv(error)
    }
}

impl From<tessera_raft::kv::Corrupt> for Fail {
    fn from(e: tessera_raft::kv::Corrupt) -> Self {
        Fail::Refused(NamespaceError::Corrupt {
            table: e.table.to_string(),
            detail: e.detail,
        })
    }
}

impl From<tessera_raft::kv::ReadError> for Fail {
    fn from(e: tessera_raft::kv::ReadError) -> Self {
        match e {
            tessera_raft::kv::ReadError::Kv(e) => e.into(),
            tessera_raft::kv::ReadError::Corrupt(e) => e.into(),
        }
    }
}

impl From<NamespaceError> for Fail {
    fn from(error: NamespaceError) -> Self {
        Fail::Refused(error)
    }
}

pub type Res<T> = Result<T, Fail>;

/// Applies one command. Storage failures are errors (the node must stop
/// applying); refusals are `Response::Error` and write nothing.
pub fn apply<R: KvRead + ?Sized>(txn: &mut Txn<'_, R>, command: &Command, ctx: &ApplyCtx) -> Result<Response, KvError> {
    let mut inner = Txn::new(&*txn);
    let outcome = dispatch(&mut inner, command, ctx);
    let writes: Vec<(Table, Vec<u8>, Option<Vec<u8>>)> = inner
        .writes()
        .map(|(table, key, value)| (table, key.to_vec(), value.map(<[u8]>::to_vec)))
        .collect();
    drop(inner);
    match outcome {
        Ok(response) => {
            for (table, key, value) in writes {
                match value {
                    Some(value) => txn.put(table, key, value),
                    None => txn.delete(table, key),
                }
            }
            Ok(response)
        }
        Err(Fail::Refused(error)) => Ok(Response::Error(error)),
        Err(Fail::Kv(error)) => Err(error),
    }
}

fn dispatch<R: KvRead + ?Sized>(txn: &mut Txn<'_, R>, command: &Command, ctx: &ApplyCtx) -> Res<Response> {
    match command {
        Command::CreateBucket {
            name,
            owner,
            created_ms,
        } => buckets::create(txn, name, owner, *created_ms, StoragePolicy::default()),
        Command::CreateBucketWithPolicy {
            name,
            owner,
            created_ms,
            policy,
        } => buckets::create(txn, name, owner, *created_ms, *policy),
        Command::DeleteBucket { name } => buckets::delete(txn, name),
        Command::SetBucketPolicy { name, policy } => buckets::set_policy(txn, name, *policy),
        Command::SetBucketOwner { name, owner } => buckets::set_owner(txn, name, owner),
        Command::CreateAccessKey {
            key_id,
            secret,
            owner,
            created_ms,
        } => access::create(txn, key_id, secret, owner, *created_ms),
        Command::RevokeAccessKey { key_id } => access::revoke(txn, key_id),
        Command::GrantPermission {
            key_id,
            bucket,
            permission,
        } => access::grant(txn, key_id, bucket, *permission),
        Command::RevokePermission {
            key_id,
            bucket,
            permission,
        } => access::ungrant(txn, key_id, bucket, *permission),
        Command::CommitName {
            bucket,
            key,
            version,
            condition,
        } => names::commit(txn, bucket, key, version, condition, ctx),
        Command::DeleteName { bucket, key } => names::delete(txn, bucket, key),
        Command::Reap { uid } => reaped::reap(txn, *uid, ctx),
        Command::PruneReaped { below_index } => reaped::prune(txn, *below_index, ctx),
        Command::AckDeletes { seqs } => names::ack_deletes(txn, seqs),
        Command::CreateUpload {
            bucket,
            key,
            upload_id,
            initiated_ms,
            meta,
        } => multipart::create(txn, bucket, key, upload_id, *initiated_ms, meta),
        Command::PutPart {
            upload_id,
            part_number,
            uid,
            etag,
            size,
            partition,
        } => {
            let part = PartRef {
                part_number: *part_number,
                uid: *uid,
                size: *size,
                etag: etag.clone(),
                partition: *partition,
            };
            multipart::put_part(txn, upload_id, part, ctx)
        }
        Command::CompleteUpload {
            upload_id,
            parts,
            version,
            condition,
        } => multipart::complete(txn, upload_id, parts, version, condition, ctx),
        Command::AbortUpload { upload_id } => multipart::abort(txn, upload_id),
        Command::NodeHeartbeat(node) => cluster::heartbeat(txn, node),
        Command::SetPartitionMap { changes } => cluster::set_partitions(txn, changes),
    }
}

/// Answers one read against a consistent view. Refusals (unknown bucket or
/// upload, corruption) are `QueryResponse::Error`.
pub fn query<R: KvRead + ?Sized>(view: &R, query: &Query) -> Result<QueryResponse, KvError> {
    match answer(view, query) {
        Ok(response) => Ok(response),
        Err(Fail::Refused(error)) => Ok(QueryResponse::Error(error)),
        Err(Fail::Kv(error)) => Err(error),
    }
}

fn answer<R: KvRead + ?Sized>(view: &R, query: &Query) -> Res<QueryResponse> {
    Ok(match query {
        Query::GetBucket { name } => QueryResponse::Bucket(buckets::get(view, name)?.map(|info| info.record)),
        Query::GetBucketInfo { name } => QueryResponse::BucketInfo(buckets::get(view, name)?),
        Query::ListBuckets { owner } => QueryResponse::Buckets(buckets::list(view, owner.as_deref())?),
        Query::GetObject { bucket, key } => QueryResponse::Object(names::get_current(view, bucket, key)?),
        Query::ListObjects(request) => QueryResponse::Objects(listing::list(view, request)?),
        Query::PendingDeletes { after_seq, limit } => {
            QueryResponse::PendingDeletes(names::pending(view, *after_seq, *limit)?)
        }
        Query::IsReferenced { uid } => QueryResponse::Flag(names::is_referenced(view, *uid)?),
        Query::ListAccessKeys { owner } => QueryResponse::AccessKeys(access::list(view, owner.as_deref())?),
        Query::GetSecret { key_id } => QueryResponse::Secret(access::secret(view, key_id)?),
        Query::Authorize { key_id, bucket, op } => QueryResponse::Authz(access::authorize(view, key_id, bucket, *op)?),
        Query::ListUploads(request) => QueryResponse::Uploads(multipart::list_uploads(view, request)?),
        Query::ListParts {
            upload_id,
            part_number_marker,
            max_parts,
        } => QueryResponse::Parts(multipart::list_parts(view, upload_id, *part_number_marker, *max_parts)?),
        Query::ListNodes => QueryResponse::Nodes(cluster::nodes(view)?),
        Query::PartitionMap => QueryResponse::PartitionMap(cluster::partitions(view)?),
        Query::ReapWatermark => QueryResponse::Watermark(reaped::watermark(view)?),
    })
}
