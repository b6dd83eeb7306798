//! Pruning reaped uids: the watermark, what it forgets, what it refuses.

use super::*;
use crate::namespace::reaped::PRUNE_BATCH_MAX;

/// A uid born at `birth` (the high 64 bits, as `ids::mint_uid` makes them).
fn born(birth: u64, n: u64) -> u128 {
    (u128::from(birth) << 64) | u128::from(n)
}

fn rows(db: &Db, table: Table) -> usize {
    db.db.scan(table, &[], None, usize::MAX).expect("scan").len()
}

fn prune(db: &mut Db, below_index: u64) -> Response {
    db.apply(Command::PruneReaped { below_index })
}

fn watermark(db: &Db) -> u64 {
    match db.query(Query::ReapWatermark) {
        QueryResponse::Watermark(w) => w,
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn pruning_forgets_uids_reaped_below_the_watermark_and_refuses_older_births() {
    let mut db = Db::new();
    db.bucket("bkt");
    let early = born(1, 1);
    assert_eq!(db.reap(early), Response::Reap(ReapOutcome::Free));
    let reap_index = db.index;
    let late = born(db.index, 2);
    assert_eq!(db.reap(late), Response::Reap(ReapOutcome::Free));
    assert_eq!((rows(&db, REAPED), rows(&db, REAPED_ORDER)), (2, 2));
    assert_eq!(watermark(&db), 0);

    assert_eq!(prune(&mut db, reap_index + 1), Response::Pruned { removed: 1 });
    assert_eq!(watermark(&db), reap_index + 1);
    assert_eq!((rows(&db, REAPED), rows(&db, REAPED_ORDER)), (1, 1));
    // The forgotten uid is still refused, by its birth.
    assert!(matches!(
        db.commit("bkt", "a", early),
        Response::Error(NamespaceError::UidTooOld { .. })
    ));
    // A uid born at or above the watermark and reaped above it: by its row.
    let late_born_above = born(reap_index + 1, 2);
    assert_eq!(db.reap(late_born_above), Response::Reap(ReapOutcome::Free));
    assert_eq!(
        db.commit("bkt", "a", late_born_above),
        Response::Error(NamespaceError::UidReaped(late_born_above))
    );
    // Never reaped and born at the watermark: commits.
    assert_eq!(db.commit("bkt", "a", born(reap_index + 1, 3)), Response::Ok);
    // Never reaped but born below: refused (it may have been reaped and forgotten).
    assert!(matches!(
        db.commit("bkt", "b", born(reap_index, 4)),
        Response::Error(NamespaceError::UidTooOld { .. })
    ));
    assert_eq!(db.get("bkt", "b"), None);
}

#[test]
fn the_watermark_never_goes_back_nor_ahead_of_the_log() {
    let mut db = Db::new();
    db.bucket("bkt");
    assert_eq!(prune(&mut db, 2), Response::Pruned { removed: 0 });
    assert_eq!(prune(&mut db, 1), Response::Pruned { removed: 0 });
    assert_eq!(watermark(&db), 2, "a lower prune leaves the watermark");
    let ahead = db.index + 2;
    assert_eq!(
        prune(&mut db, ahead),
        Response::Error(NamespaceError::PruneAhead {
            below_index: ahead,
            log_index: db.index,
        })
    );
    assert_eq!(watermark(&db), 2);
}

#[test]
fn a_part_born_below_the_watermark_is_refused() {
    let mut db = Db::new();
    db.bucket("bkt");
    db.ok(Command::CreateUpload {
        bucket: "bkt".into(),
        key: "big".into(),
        upload_id: "u1".into(),
        initiated_ms: 1,
        meta: UploadMeta::default(),
    });
    assert_eq!(prune(&mut db, 3), Response::Pruned { removed: 0 });
    let part = |uid: u128| Command::PutPart {
        upload_id: "u1".into(),
        part_number: 1,
        uid,
        etag: "e".into(),
        size: 1,
        partition: 0,
    };
    assert!(matches!(
        db.refused(part(born(2, 1))),
        NamespaceError::UidTooOld {
            birth: 2,
            watermark: 3,
            ..
        }
    ));
    db.ok(part(born(3, 1)));
}

#[test]
fn a_prune_forgets_a_bounded_batch_and_the_next_one_the_rest() {
    let mut db = Db::new();
    let extra = 10;
    let reaps: Vec<Command> = (1..=(PRUNE_BATCH_MAX + extra) as u64)
        .map(|n| Command::Reap { uid: born(0, n) })
        .collect();
    db.apply_all(&reaps);
    let below = db.index + 1;
    assert_eq!(
        prune(&mut db, below),
        Response::Pruned {
            removed: PRUNE_BATCH_MAX as u64
        }
    );
    assert_eq!(rows(&db, REAPED), extra);
    assert_eq!(prune(&mut db, below), Response::Pruned { removed: extra as u64 });
    assert_eq!((rows(&db, REAPED), rows(&db, REAPED_ORDER)), (0, 0));
}

#[test]
fn reaping_twice_keeps_the_first_reap_index() {
    let mut db = Db::new();
    let uid = born(0, 9);
    db.reap(uid);
    let first = db.index;
    db.reap(uid);
    assert_eq!(rows(&db, REAPED_ORDER), 1);
    assert_eq!(prune(&mut db, first), Response::Pruned { removed: 0 });
    assert_eq!(prune(&mut db, first + 1), Response::Pruned { removed: 1 });
}

/// A birth above the committing entry's index is refused: its reap could be
/// pruned while the birth still cleared the watermark.
#[test]
fn a_uid_born_beyond_the_log_is_refused() {
    let mut db = Db::new();
    db.bucket("bkt");
    let future = born(db.index + 100, 7);
    assert!(matches!(
        db.commit("bkt", "a", future),
        Response::Error(NamespaceError::UidFromFuture { .. })
    ));
    assert_eq!(db.get("bkt", "a"), None);
    assert_eq!(db.commit("bkt", "a", born(db.index, 8)), Response::Ok);
}
