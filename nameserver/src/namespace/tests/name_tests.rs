//! Commit, conditional commit, delete, reap and the pending-delete queue.

use super::*;

#[test]
fn commit_then_get_and_overwrite_queues_the_old_uid() {
    let mut db = Db::new();
    db.bucket("bkt");
    assert_eq!(db.commit("bkt", "a/b", 1), Response::Ok);
    assert_eq!(db.get("bkt", "a/b"), Some(version(1)));
    assert!(db.pending().is_empty());
    assert_eq!(db.commit("bkt", "a/b", 2), Response::Ok);
    assert_eq!(db.get("bkt", "a/b"), Some(version(2)));
    let pending = db.pending();
    assert_eq!(pending.len(), 1);
    assert_eq!((pending[0].uid, pending[0].partition), (1, version(1).partition));
    assert!(!db.referenced(1));
    assert!(db.referenced(2));
}

#[test]
fn recommitting_the_same_uid_does_not_queue_it() {
    let mut db = Db::new();
    db.bucket("bkt");
    db.commit("bkt", "k", 1);
    db.commit("bkt", "k", 1);
    assert!(db.pending().is_empty());
    assert!(db.referenced(1));
}

#[test]
fn bad_names_get_typed_errors() {
    let mut db = Db::new();
    db.bucket("bkt");
    let long = "k".repeat(1025);
    assert_eq!(
        db.commit("bkt", &long, 1),
        Response::Error(NamespaceError::InvalidKey { len_bytes: 1025 })
    );
    assert_eq!(
        db.commit("bkt", "", 1),
        Response::Error(NamespaceError::InvalidKey { len_bytes: 0 })
    );
    assert_eq!(db.commit("bkt", &"k".repeat(1024), 1), Response::Ok);
    assert_eq!(
        db.commit("nobucket", "k", 2),
        Response::Error(NamespaceError::NoSuchBucket("nobucket".into()))
    );
    let error = db.refused(Command::DeleteName {
        bucket: "bkt".into(),
        key: long,
    });
    assert_eq!(error, NamespaceError::InvalidKey { len_bytes: 1025 });
}

#[test]
fn commit_of_a_reaped_uid_fails_and_leaves_the_name_alone() {
    let mut db = Db::new();
    db.bucket("bkt");
    db.commit("bkt", "k", 1);
    // Reap before commit: the log orders them, reap wins.
    assert_eq!(db.reap(2), Response::Reap(ReapOutcome::Free));
    assert_eq!(db.commit("bkt", "k", 2), Response::Error(NamespaceError::UidReaped(2)));
    assert_eq!(db.get("bkt", "k").map(|v| v.uid), Some(1));
    assert!(db.pending().is_empty());
    assert!(!db.referenced(2));
}

#[test]
fn reap_after_commit_says_referenced_and_marks_nothing() {
    let mut db = Db::new();
    db.bucket("bkt");
    db.commit("bkt", "k", 1);
    assert_eq!(db.reap(1), Response::Reap(ReapOutcome::Referenced));
    // Not recorded as reaped: the same uid can still be committed (a retry).
    assert_eq!(db.commit("bkt", "k2", 1), Response::Ok);
}

#[test]
fn reap_of_an_overwritten_or_deleted_uid_is_free() {
    let mut db = Db::new();
    db.bucket("bkt");
    db.commit("bkt", "k", 1);
    db.commit("bkt", "k", 2);
    assert_eq!(db.reap(1), Response::Reap(ReapOutcome::Free));
    db.apply(Command::DeleteName {
        bucket: "bkt".into(),
        key: "k".into(),
    });
    assert_eq!(db.reap(2), Response::Reap(ReapOutcome::Free));
}

#[test]
fn if_none_match_is_create_only() {
    let mut db = Db::new();
    db.bucket("bkt");
    assert_eq!(db.commit_if("bkt", "k", 1, CommitCondition::IfNoneMatch), Response::Ok);
    assert_eq!(
        db.commit_if("bkt", "k", 2, CommitCondition::IfNoneMatch),
        Response::Error(NamespaceError::PreconditionFailed)
    );
    assert_eq!(db.get("bkt", "k").map(|v| v.uid), Some(1));
    // A delete marker counts as absent.
    let mut marker = version(3);
    marker.kind = VersionKind::DeleteMarker;
    db.ok(Command::CommitName {
        bucket: "bkt".into(),
        key: "k".into(),
        version: marker,
        condition: CommitCondition::None,
    });
    assert_eq!(db.commit_if("bkt", "k", 4, CommitCondition::IfNoneMatch), Response::Ok);
}

#[test]
fn if_match_compares_the_current_etag() {
    let mut db = Db::new();
    db.bucket("bkt");
    assert_eq!(
        db.commit_if("bkt", "k", 1, CommitCondition::IfMatch("*".into())),
        Response::Error(NamespaceError::PreconditionFailed)
    );
    db.commit("bkt", "k", 1);
    assert_eq!(
        db.commit_if("bkt", "k", 2, CommitCondition::IfMatch("etag9".into())),
        Response::Error(NamespaceError::PreconditionFailed)
    );
    // Quotes do not matter.
    assert_eq!(
        db.commit_if("bkt", "k", 2, CommitCondition::IfMatch("etag1".into())),
        Response::Ok
    );
    assert_eq!(
        db.commit_if("bkt", "k", 3, CommitCondition::IfMatch("\"etag2\"".into())),
        Response::Ok
    );
}

#[test]
fn delete_removes_and_queues_and_reports_whether_it_existed() {
    let mut db = Db::new();
    db.bucket("bkt");
    db.commit("bkt", "k", 1);
    let delete = Command::DeleteName {
        bucket: "bkt".into(),
        key: "k".into(),
    };
    assert_eq!(db.apply(delete.clone()), Response::Deleted { existed: true });
    assert_eq!(db.get("bkt", "k"), None);
    assert_eq!(db.pending_uids(), BTreeSet::from([1]));
    assert_eq!(db.apply(delete), Response::Deleted { existed: false });
    let error = db.refused(Command::DeleteName {
        bucket: "nobkt".into(),
        key: "k".into(),
    });
    assert_eq!(error, NamespaceError::NoSuchBucket("nobkt".into()));
}

#[test]
fn pending_deletes_page_and_ack() {
    let mut db = Db::new();
    db.bucket("bkt");
    for uid in 1..=5 {
        db.commit("bkt", "k", uid);
    }
    let pending = db.pending();
    assert_eq!(pending.iter().map(|e| e.uid).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    let page = db.query(Query::PendingDeletes {
        after_seq: Some(pending[1].seq),
        limit: 1,
    });
    assert_eq!(page, QueryResponse::PendingDeletes(vec![pending[2]]));
    db.ok(Command::AckDeletes {
        seqs: vec![pending[0].seq, pending[2].seq, 999],
    });
    assert_eq!(db.pending_uids(), BTreeSet::from([2, 4]));
    // Sequence numbers keep growing after acks.
    db.commit("bkt", "k", 6);
    let last = db.pending().last().copied().expect("entry");
    assert_eq!(last.uid, 5);
    assert!(last.seq > pending[3].seq);
}

#[test]
fn versions_table_keeps_one_row_per_unversioned_name() {
    let mut db = Db::new();
    db.bucket("bkt");
    for uid in 1..=3 {
        db.commit("bkt", "k", uid);
    }
    let prefix = codec::name_key("bkt", "k");
    let rows = db.db.scan(VERSIONS, &prefix, None, 10).expect("scan");
    assert_eq!(rows.len(), 1);
    let stored: ObjectVersion = codec::decode(VERSIONS, &rows[0].1).expect("decode");
    assert_eq!(stored.uid, 3);
}

#[test]
fn a_commit_proposed_under_a_live_guard_but_applied_after_a_reap_fails() {
    use crate::guards::GuardTable;
    use std::time::Duration;
    let mut db = Db::new();
    db.bucket("bkt");
    let mut guards = GuardTable::new(16);
    guards
        .create("bkt", "k", 7, Duration::from_secs(300), Duration::ZERO)
        .expect("guard");
    // The leader takes the guard while it is alive and proposes the commit...
    guards
        .take("bkt", "k", 7, Duration::from_secs(299))
        .expect("live guard");
    let commit = Command::CommitName {
        bucket: "bkt".into(),
        key: "k".into(),
        version: version(7),
        condition: CommitCondition::None,
    };
    // ...but the log orders the object server's reap (its GCE expired) first.
    let responses = db.apply_all(&[Command::Reap { uid: 7 }, commit]);
    assert_eq!(
        responses,
        vec![
            Response::Reap(ReapOutcome::Free),
            Response::Error(NamespaceError::UidReaped(7))
        ]
    );
    assert_eq!(db.get("bkt", "k"), None);
    // The other order: the commit wins and the reap keeps the data.
    let responses = db.apply_all(&[
        Command::CommitName {
            bucket: "bkt".into(),
            key: "k".into(),
            version: version(8),
            condition: CommitCondition::None,
        },
        Command::Reap { uid: 8 },
    ]);
    assert_eq!(responses, vec![Response::Ok, Response::Reap(ReapOutcome::Referenced)]);
    assert_eq!(db.get("bkt", "k").map(|v| v.uid), Some(8));
}
