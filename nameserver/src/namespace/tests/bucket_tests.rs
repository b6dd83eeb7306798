//! Buckets: naming, create, delete when empty, list, policy, owner.

use super::*;

fn create(name: &str, owner: &str) -> Command {
    Command::CreateBucket {
        name: name.into(),
        owner: owner.into(),
        created_ms: 7,
    }
}

#[test]
fn create_get_and_refuse_duplicates_and_bad_names() {
    let mut db = Db::new();
    db.ok(create("photos", "alice"));
    let record = BucketRecord {
        name: "photos".into(),
        owner: "alice".into(),
        created_ms: 7,
    };
    assert_eq!(
        db.query(Query::GetBucket { name: "photos".into() }),
        QueryResponse::Bucket(Some(record))
    );
    assert_eq!(
        db.query(Query::GetBucket { name: "nope".into() }),
        QueryResponse::Bucket(None)
    );
    assert_eq!(
        db.refused(create("photos", "bob")),
        NamespaceError::BucketExists("photos".into())
    );
    for bad in ["ab", "Photos", "192.168.0.1", "a..b", "xn--x", "x-s3alias", "-ab"] {
        assert!(
            matches!(
                db.refused(create(bad, "alice")),
                NamespaceError::InvalidBucketName { .. }
            ),
            "{bad}"
        );
    }
}

#[test]
fn list_by_owner_and_policy_and_owner_changes() {
    let mut db = Db::new();
    db.ok(create("b-two", "bob"));
    db.ok(create("a-one", "alice"));
    db.ok(Command::CreateBucketWithPolicy {
        name: "c-three".into(),
        owner: "alice".into(),
        created_ms: 1,
        policy: StoragePolicy::Replicated { n: 3 },
    });
    let names = |owner: Option<&str>| match db.query(Query::ListBuckets {
        owner: owner.map(String::from),
    }) {
        QueryResponse::Buckets(list) => list.into_iter().map(|b| b.record.name).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(names(None), vec!["a-one", "b-two", "c-three"]);
    assert_eq!(names(Some("alice")), vec!["a-one", "c-three"]);
    let info = |db: &Db, name: &str| match db.query(Query::GetBucketInfo { name: name.into() }) {
        QueryResponse::BucketInfo(Some(info)) => info,
        other => panic!("{other:?}"),
    };
    assert_eq!(info(&db, "a-one").policy, StoragePolicy::Ec { k: 4, m: 2 });
    assert_eq!(info(&db, "c-three").policy, StoragePolicy::Replicated { n: 3 });
    db.ok(Command::SetBucketPolicy {
        name: "a-one".into(),
        policy: StoragePolicy::Ec { k: 8, m: 3 },
    });
    assert_eq!(info(&db, "a-one").policy, StoragePolicy::Ec { k: 8, m: 3 });
    let bad = StoragePolicy::Ec { k: 0, m: 1 };
    assert_eq!(
        db.refused(Command::SetBucketPolicy {
            name: "a-one".into(),
            policy: bad
        }),
        NamespaceError::InvalidPolicy(bad)
    );
    db.ok(Command::SetBucketOwner {
        name: "a-one".into(),
        owner: "carol".into(),
    });
    assert_eq!(info(&db, "a-one").record.owner, "carol");
    assert_eq!(
        db.refused(Command::SetBucketOwner {
            name: "zzz".into(),
            owner: "x".into()
        }),
        NamespaceError::NoSuchBucket("zzz".into())
    );
}

#[test]
fn delete_only_when_empty() {
    let mut db = Db::new();
    db.bucket("bkt");
    db.bucket("bkt-2");
    db.commit("bkt", "k", 1);
    db.commit("bkt-2", "k", 2);
    let delete = Command::DeleteBucket { name: "bkt".into() };
    assert_eq!(db.refused(delete.clone()), NamespaceError::BucketNotEmpty("bkt".into()));
    db.apply(Command::DeleteName {
        bucket: "bkt".into(),
        key: "k".into(),
    });
    db.ok(Command::CreateUpload {
        bucket: "bkt".into(),
        key: "mp".into(),
        upload_id: "up1".into(),
        initiated_ms: 1,
        meta: UploadMeta::default(),
    });
    assert_eq!(db.refused(delete.clone()), NamespaceError::BucketNotEmpty("bkt".into()));
    db.ok(Command::AbortUpload {
        upload_id: "up1".into(),
    });
    db.ok(delete.clone());
    assert_eq!(
        db.query(Query::GetBucket { name: "bkt".into() }),
        QueryResponse::Bucket(None)
    );
    assert_eq!(db.refused(delete), NamespaceError::NoSuchBucket("bkt".into()));
    // The neighbour (whose name extends this one) is untouched.
    assert_eq!(db.get("bkt-2", "k").map(|v| v.uid), Some(2));
}
