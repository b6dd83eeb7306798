//! Multipart uploads: parts, completion rules, abort, listings, reap.

use super::*;

const MIB: u64 = 1024 * 1024;

fn create_upload(db: &mut Db, key: &str, upload_id: &str) {
    db.ok(Command::CreateUpload {
        bucket: "bkt".into(),
        key: key.into(),
        upload_id: upload_id.into(),
        initiated_ms: 11,
        meta: UploadMeta {
            content_type: Some("video/mp4".into()),
            user_meta: BTreeMap::from([("a".to_string(), "b".to_string())]),
            system_meta: BTreeMap::from([("cache-control".to_string(), "no-cache".to_string())]),
        },
    });
}

fn put_part(upload_id: &str, part_number: u32, uid: u128, size: u64) -> Command {
    Command::PutPart {
        upload_id: upload_id.into(),
        part_number,
        uid,
        etag: format!("e{uid}"),
        size,
        partition: 3,
    }
}

fn complete(upload_id: &str, parts: &[(u32, u128)], uid: u128) -> Command {
    Command::CompleteUpload {
        upload_id: upload_id.into(),
        parts: parts.iter().map(|(n, uid)| (*n, format!("\"e{uid}\""))).collect(),
        version: version(uid),
        condition: CommitCondition::None,
    }
}

fn setup() -> Db {
    let mut db = Db::new();
    db.bucket("bkt");
    create_upload(&mut db, "big", "up1");
    db.ok(put_part("up1", 1, 101, 5 * MIB));
    db.ok(put_part("up1", 2, 102, 5 * MIB));
    db.ok(put_part("up1", 3, 103, 1));
    db
}

#[test]
fn complete_commits_a_manifest_and_queues_unused_parts() {
    let mut db = setup();
    db.ok(put_part("up1", 4, 104, 7));
    assert_eq!(db.reap(101), Response::Reap(ReapOutcome::Referenced));
    db.ok(complete("up1", &[(1, 101), (3, 103)], 900));
    let object = db.get("bkt", "big").expect("committed");
    assert_eq!(object.parts.iter().map(|p| p.uid).collect::<Vec<_>>(), vec![101, 103]);
    assert_eq!(object.size, 5 * MIB + 1);
    assert_eq!(object.content_type.as_deref(), Some("video/mp4"));
    assert_eq!(
        object.system_meta.get("cache-control").map(String::as_str),
        Some("no-cache")
    );
    assert_eq!(object.uid, 900);
    assert_eq!(db.pending_uids(), BTreeSet::from([102, 104]));
    assert_eq!(db.reap(101), Response::Reap(ReapOutcome::Referenced));
    assert_eq!(db.reap(102), Response::Reap(ReapOutcome::Free));
    assert_eq!(
        db.refused(complete("up1", &[(1, 101)], 901)),
        NamespaceError::NoSuchUpload("up1".into())
    );
    // Overwriting the multipart object queues its manifest and its uid.
    db.commit("bkt", "big", 5);
    assert_eq!(db.pending_uids(), BTreeSet::from([102, 104, 101, 103, 900]));
    assert_eq!(db.reap(103), Response::Reap(ReapOutcome::Free));
}

#[test]
fn completion_rules() {
    let mut db = setup();
    assert_eq!(db.refused(complete("up1", &[], 900)), NamespaceError::EmptyPartList);
    assert_eq!(
        db.refused(complete("up1", &[(2, 102), (1, 101)], 900)),
        NamespaceError::InvalidPartOrder
    );
    assert_eq!(
        db.refused(complete("up1", &[(1, 101), (1, 101)], 900)),
        NamespaceError::InvalidPartOrder
    );
    assert_eq!(
        db.refused(complete("up1", &[(1, 101), (5, 105)], 900)),
        NamespaceError::InvalidPart(5)
    );
    assert_eq!(
        db.refused(complete("up1", &[(1, 101), (2, 999)], 900)),
        NamespaceError::InvalidPart(2)
    );
    assert_eq!(
        db.refused(complete("up1", &[(3, 103), (4, 104)], 900)),
        NamespaceError::InvalidPart(4)
    );
    db.ok(put_part("up1", 4, 104, 10));
    assert_eq!(
        db.refused(complete("up1", &[(3, 103), (4, 104)], 900)),
        NamespaceError::EntityTooSmall(3)
    );
    // A reaped version uid is refused, and nothing changed.
    assert_eq!(db.reap(900), Response::Reap(ReapOutcome::Free));
    assert_eq!(
        db.refused(complete("up1", &[(1, 101)], 900)),
        NamespaceError::UidReaped(900)
    );
    assert!(db.pending().is_empty());
    db.ok(complete("up1", &[(1, 101), (2, 102), (3, 103)], 901));
}

#[test]
fn complete_honours_if_none_match() {
    let mut db = setup();
    db.commit("bkt", "big", 1);
    let mut command = complete("up1", &[(1, 101)], 900);
    if let Command::CompleteUpload { condition, .. } = &mut command {
        *condition = CommitCondition::IfNoneMatch;
    }
    assert_eq!(db.refused(command), NamespaceError::PreconditionFailed);
    assert_eq!(db.get("bkt", "big").map(|v| v.uid), Some(1));
}

#[test]
fn replacing_a_part_queues_the_old_uid_and_bad_parts_are_refused() {
    let mut db = setup();
    db.ok(put_part("up1", 2, 202, 5 * MIB));
    assert_eq!(db.pending_uids(), BTreeSet::from([102]));
    assert_eq!(db.reap(102), Response::Reap(ReapOutcome::Free));
    // A retry with the same uid is harmless.
    db.ok(put_part("up1", 2, 202, 5 * MIB));
    assert_eq!(db.pending_uids(), BTreeSet::from([102]));
    assert_eq!(
        db.refused(put_part("up1", 0, 300, 1)),
        NamespaceError::InvalidPartNumber(0)
    );
    assert_eq!(
        db.refused(put_part("up1", 10_001, 300, 1)),
        NamespaceError::InvalidPartNumber(10_001)
    );
    db.ok(put_part("up1", 10_000, 300, 1));
    assert_eq!(db.reap(301), Response::Reap(ReapOutcome::Free));
    assert_eq!(db.refused(put_part("up1", 5, 301, 1)), NamespaceError::UidReaped(301));
}

#[test]
fn unknown_upload_ids_are_no_such_upload() {
    let mut db = setup();
    let missing = NamespaceError::NoSuchUpload("nope".into());
    assert_eq!(db.refused(put_part("nope", 1, 1, 1)), missing);
    assert_eq!(db.refused(complete("nope", &[(1, 101)], 9)), missing);
    assert_eq!(
        db.refused(Command::AbortUpload {
            upload_id: "nope".into()
        }),
        missing
    );
    let parts = db.query(Query::ListParts {
        upload_id: "nope".into(),
        part_number_marker: 0,
        max_parts: 10,
    });
    assert_eq!(parts, QueryResponse::Error(missing));
    assert_eq!(db.refused(put_part("", 1, 1, 1)), NamespaceError::InvalidUploadId);
}

#[test]
fn create_upload_checks_bucket_key_and_duplicates() {
    let mut db = setup();
    let command = |bucket: &str, key: &str, upload_id: &str| Command::CreateUpload {
        bucket: bucket.into(),
        key: key.into(),
        upload_id: upload_id.into(),
        initiated_ms: 1,
        meta: UploadMeta::default(),
    };
    assert_eq!(
        db.refused(command("bkt", "x", "up1")),
        NamespaceError::UploadExists("up1".into())
    );
    assert_eq!(
        db.refused(command("nobkt", "x", "up9")),
        NamespaceError::NoSuchBucket("nobkt".into())
    );
    assert_eq!(
        db.refused(command("bkt", &"x".repeat(1025), "up9")),
        NamespaceError::InvalidKey { len_bytes: 1025 }
    );
}

#[test]
fn abort_queues_every_part() {
    let mut db = setup();
    db.ok(Command::AbortUpload {
        upload_id: "up1".into(),
    });
    assert_eq!(db.pending_uids(), BTreeSet::from([101, 102, 103]));
    for uid in [101, 102, 103] {
        assert_eq!(db.reap(uid), Response::Reap(ReapOutcome::Free));
    }
    assert!(db.db.scan(PARTS, &[], None, 10).expect("scan").is_empty());
}

#[test]
fn list_parts_pages() {
    let db = setup();
    let page = |marker: u32, max: usize| match db.query(Query::ListParts {
        upload_id: "up1".into(),
        part_number_marker: marker,
        max_parts: max,
    }) {
        QueryResponse::Parts(page) => page,
        other => panic!("{other:?}"),
    };
    let first = page(0, 2);
    assert_eq!(
        first.parts.iter().map(|p| p.part_number).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(first.is_truncated);
    assert_eq!(first.next_part_number_marker, Some(2));
    assert_eq!(first.upload.as_ref().map(|u| u.key.as_str()), Some("big"));
    let rest = page(2, 2);
    assert_eq!(rest.parts.iter().map(|p| p.part_number).collect::<Vec<_>>(), vec![3]);
    assert!(!rest.is_truncated);
}

#[test]
fn list_uploads_by_key_then_upload_id_with_markers() {
    let mut db = Db::new();
    db.bucket("bkt");
    for (key, id) in [("b", "2"), ("a", "9"), ("b", "1"), ("c/d", "5"), ("b\0x", "3")] {
        create_upload(&mut db, key, id);
    }
    let list = |prefix: &str, key_marker: Option<&str>, upload_id_marker: Option<&str>, max: usize| match db.query(
        Query::ListUploads(ListUploadsRequest {
            bucket: "bkt".into(),
            prefix: prefix.into(),
            delimiter: None,
            key_marker: key_marker.map(String::from),
            upload_id_marker: upload_id_marker.map(String::from),
            max_uploads: max,
        }),
    ) {
        QueryResponse::Uploads(page) => page,
        other => panic!("{other:?}"),
    };
    let ids = |page: &UploadsPage| page.uploads.iter().map(|u| u.upload_id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&list("", None, None, 100)), vec!["9", "1", "2", "3", "5"]);
    assert_eq!(ids(&list("b", None, None, 100)), vec!["1", "2", "3"]);
    assert_eq!(ids(&list("", Some("b"), None, 100)), vec!["3", "5"]);
    assert_eq!(ids(&list("", Some("b"), Some("1"), 100)), vec!["2", "3", "5"]);
    let first = list("", None, None, 2);
    assert!(first.is_truncated);
    assert_eq!(first.next_marker, Some(("b".to_string(), Some("1".to_string()))));
    let second = list("", Some("b"), Some("1"), 2);
    assert_eq!(ids(&second), vec!["2", "3"]);
    assert_eq!(
        db.query(Query::ListUploads(ListUploadsRequest {
            bucket: "nobkt".into(),
            ..ListUploadsRequest::default()
        })),
        QueryResponse::Error(NamespaceError::NoSuchBucket("nobkt".into()))
    );
}

#[test]
fn list_uploads_rolls_keys_up_under_a_delimiter() {
    let mut db = Db::new();
    db.bucket("bkt");
    for (key, id) in [
        ("logs/a", "1"),
        ("logs/b", "2"),
        ("photos/c", "3"),
        ("top", "4"),
        ("logs/x/y", "5"),
    ] {
        create_upload(&mut db, key, id);
    }
    let list = |key_marker: Option<&str>, max: usize| match db.query(Query::ListUploads(ListUploadsRequest {
        bucket: "bkt".into(),
        delimiter: Some("/".into()),
        key_marker: key_marker.map(String::from),
        max_uploads: max,
        ..ListUploadsRequest::default()
    })) {
        QueryResponse::Uploads(page) => page,
        other => panic!("{other:?}"),
    };
    let all = list(None, 100);
    assert_eq!(all.common_prefixes, vec!["logs/".to_string(), "photos/".to_string()]);
    assert_eq!(
        all.uploads.iter().map(|u| u.key.as_str()).collect::<Vec<_>>(),
        vec!["top"]
    );
    assert!(!all.is_truncated);
    // Pages of one entry visit logs/, photos/, top once each.
    let mut seen = Vec::new();
    let mut marker: Option<String> = None;
    for _ in 0..10 {
        let page = list(marker.as_deref(), 1);
        seen.extend(page.common_prefixes.iter().cloned());
        seen.extend(page.uploads.iter().map(|u| u.key.clone()));
        if !page.is_truncated {
            break;
        }
        marker = page.next_marker.map(|(key, _)| key);
    }
    assert_eq!(seen, vec!["logs/", "photos/", "top"]);
}
