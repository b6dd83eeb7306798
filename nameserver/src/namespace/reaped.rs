//! Reaped uids (DESIGN §4): `reap` records a uid no commit may name any
//! more, and the table is pruned without trusting any clock.
//!
//! A uid carries its birth (`tessera_common::ids::uid_birth`): a log index
//! that was committed before the uid was minted. Its GC entry exists only
//! after the uid was minted, so a reap of it is committed at an index above
//! its birth. [`prune`] raises the watermark `W` and forgets the uids reaped
//! below `W`; [`check_not_reaped`] refuses every uid born below `W`. For a
//! uid born at `b >= W`, any reap sits at `r > b >= W` and is still in the
//! table, so it is refused; a uid born below `W` is refused outright. Either
//! way a commit never names a freed uid. The leader's pruner picks `W` as
//! the index it applied a retention period ago (a day by default), so
//! clocks only decide how soon an honest but very slow write is refused,
//! never whether a name can point at freed data.

use super::codec::{self, encode};
use super::{ApplyCtx, NamespaceError, ReapOutcome, Res, Response, META, REAPED, REAPED_ORDER};
use tessera_common::ids::uid_birth;
use tessera_raft::kv::{KvRead, Txn};

/// Reaped uids one [`Command::PruneReaped`](super::Command::PruneReaped)
/// forgets at most; the pruner proposes again while it hits the bound.
pub const PRUNE_BATCH_MAX: usize = 4096;

const WATERMARK: &[u8] = b"reap_watermark";

/// The reap watermark: uids born below it are refused (0 before any prune).
pub fn watermark<R: KvRead + ?Sized>(view: &R) -> Res<u64> {
    Ok(codec::get(view, META, WATERMARK)?.unwrap_or(0))
}

/// Refuses a uid that was reaped or may have been (born below the
/// watermark): its data may already be freed. Also refuses a birth above
/// `log_index` (the applying entry's): no honest minter can stamp one, and
/// its reap could be pruned while the birth still passed the watermark.
pub fn check_not_reaped<R: KvRead + ?Sized>(view: &R, uid: u128, log_index: u64) -> Res<()> {
    let watermark = watermark(view)?;
    let birth = uid_birth(uid);
    if birth > log_index {
        return Err(NamespaceError::UidFromFuture { uid, birth, log_index }.into());
    }
    if birth < watermark {
        return Err(NamespaceError::UidTooOld { uid, birth, watermark }.into());
    }
    if view.get(REAPED, &uid.to_be_bytes())?.is_some() {
        return Err(NamespaceError::UidReaped(uid).into());
    }
    Ok(())
}

/// DESIGN §4: referenced, or recorded as reaped (at this entry's index).
pub fn reap<R: KvRead + ?Sized>(txn: &mut Txn<'_, R>, uid: u128, ctx: &ApplyCtx) -> Res<Response> {
    if super::names::is_referenced(txn, uid)? {
        return Ok(Response::Reap(ReapOutcome::Referenced));
    }
    if txn.get(REAPED, &uid.to_be_bytes())?.is_none() {
        txn.put(REAPED, uid.to_be_bytes().to_vec(), encode(&ctx.log_index));
        txn.put(REAPED_ORDER, order_key(ctx.log_index, uid), Vec::new());
    }
    Ok(Response::Reap(ReapOutcome::Free))
}

/// Raises the watermark to `below_index` and forgets up to
/// [`PRUNE_BATCH_MAX`] uids reaped below the watermark, oldest first.
pub fn prune<R: KvRead + ?Sized>(txn: &mut Txn<'_, R>, below_index: u64, ctx: &ApplyCtx) -> Res<Response> {
    if below_index > ctx.log_index {
        return Err(NamespaceError::PruneAhead {
            below_index,
            log_index: ctx.log_index,
        }
        .into());
    }
    let watermark = watermark(txn)?.max(below_index);
    txn.put(META, WATERMARK.to_vec(), encode(&watermark));
    let forgotten = txn.scan(REAPED_ORDER, &[], Some(&watermark.to_be_bytes()), PRUNE_BATCH_MAX)?;
    for (key, _) in &forgotten {
        let uid = key.get(8..).unwrap_or_default();
        debug_assert_eq!(uid.len(), 16, "reaped_order keys are index ++ uid");
        txn.delete(REAPED, uid.to_vec());
        txn.delete(REAPED_ORDER, key.clone());
    }
    Ok(Response::Pruned {
        removed: forgotten.len() as u64,
    })
}

/// `REAPED_ORDER` key: reap index then uid, both big-endian, so a scan up
/// to `index.to_be_bytes()` yields exactly the uids reaped below `index`.
fn order_key(log_index: u64, uid: u128) -> Vec<u8> {
    let mut key = log_index.to_be_bytes().to_vec();
    key.extend_from_slice(&uid.to_be_bytes());
    key
}
