//! Access keys, permissions, authorization, secrets.

use super::*;

fn create_key(key_id: &str, owner: &str) -> Command {
    Command::CreateAccessKey {
        key_id: key_id.into(),
        secret: Secret("s3cr3t-value".into()),
        owner: owner.into(),
        created_ms: 3,
    }
}

fn authz(db: &Db, key_id: &str, bucket: &str, op: Permission) -> Authz {
    match db.query(Query::Authorize {
        key_id: key_id.into(),
        bucket: bucket.into(),
        op,
    }) {
        QueryResponse::Authz(answer) => answer,
        other => panic!("{other:?}"),
    }
}

fn grant(key_id: &str, bucket: &str, permission: Permission) -> Command {
    Command::GrantPermission {
        key_id: key_id.into(),
        bucket: bucket.into(),
        permission,
    }
}

#[test]
fn secrets_never_show_in_debug() {
    let command = create_key("AKID1", "alice");
    assert!(!format!("{command:?}").contains("s3cr3t"));
    let mut db = Db::new();
    db.ok(command);
    let answer = db.query(Query::GetSecret { key_id: "AKID1".into() });
    assert!(!format!("{answer:?}").contains("s3cr3t"));
    match answer {
        QueryResponse::Secret(Some(info)) => {
            assert_eq!((info.secret.0.as_str(), info.owner.as_str()), ("s3cr3t-value", "alice"))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        db.query(Query::GetSecret { key_id: "nope".into() }),
        QueryResponse::Secret(None)
    );
}

#[test]
fn create_list_revoke() {
    let mut db = Db::new();
    db.ok(create_key("AKID2", "bob"));
    db.ok(create_key("AKID1", "alice"));
    assert_eq!(
        db.refused(create_key("AKID1", "x")),
        NamespaceError::AccessKeyExists("AKID1".into())
    );
    assert_eq!(db.refused(create_key("a", "x")), NamespaceError::InvalidAccessKeyId);
    assert_eq!(
        db.refused(create_key("bad key!", "x")),
        NamespaceError::InvalidAccessKeyId
    );
    let listed = db.query(Query::ListAccessKeys { owner: None });
    assert!(!format!("{listed:?}").contains("s3cr3t"));
    let ids = |listed: QueryResponse| match listed {
        QueryResponse::AccessKeys(keys) => keys.into_iter().map(|k| k.key_id).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(ids(listed), vec!["AKID1", "AKID2"]);
    assert_eq!(
        ids(db.query(Query::ListAccessKeys {
            owner: Some("bob".into())
        })),
        vec!["AKID2"]
    );
    db.ok(Command::RevokeAccessKey { key_id: "AKID2".into() });
    assert_eq!(ids(db.query(Query::ListAccessKeys { owner: None })), vec!["AKID1"]);
    assert_eq!(
        db.refused(Command::RevokeAccessKey { key_id: "AKID2".into() }),
        NamespaceError::NoSuchAccessKey("AKID2".into())
    );
}

#[test]
fn authorize_by_bucket_owner_and_grants() {
    let mut db = Db::new();
    db.bucket("bkt"); // owned by alice
    db.ok(create_key("ALICEKEY", "alice"));
    db.ok(create_key("BOBKEY", "bob"));
    assert_eq!(authz(&db, "ALICEKEY", "bkt", Permission::Write), Authz::Allowed);
    assert_eq!(authz(&db, "BOBKEY", "bkt", Permission::Read), Authz::Denied);
    assert_eq!(authz(&db, "NOKEY", "bkt", Permission::Read), Authz::UnknownKey);
    db.ok(grant("BOBKEY", "bkt", Permission::Read));
    assert_eq!(authz(&db, "BOBKEY", "bkt", Permission::Read), Authz::Allowed);
    assert_eq!(authz(&db, "BOBKEY", "bkt", Permission::Write), Authz::Denied);
    db.ok(grant("BOBKEY", "bkt", Permission::Owner));
    assert_eq!(authz(&db, "BOBKEY", "bkt", Permission::Write), Authz::Allowed);
    db.ok(Command::RevokePermission {
        key_id: "BOBKEY".into(),
        bucket: "bkt".into(),
        permission: Permission::Owner,
    });
    assert_eq!(authz(&db, "BOBKEY", "bkt", Permission::Write), Authz::Denied);
    assert_eq!(authz(&db, "BOBKEY", "bkt", Permission::Read), Authz::Allowed);
    assert_eq!(
        db.refused(grant("BOBKEY", "nobkt", Permission::Read)),
        NamespaceError::NoSuchBucket("nobkt".into())
    );
    assert_eq!(
        db.refused(grant("NOKEY", "bkt", Permission::Read)),
        NamespaceError::NoSuchAccessKey("NOKEY".into())
    );
}

#[test]
fn grants_die_with_their_key_and_their_bucket() {
    let mut db = Db::new();
    db.bucket("bkt");
    db.ok(create_key("BOBKEY", "bob"));
    db.ok(grant("BOBKEY", "bkt", Permission::Read));
    // A revoked and re-created key does not inherit the old grants.
    db.ok(Command::RevokeAccessKey {
        key_id: "BOBKEY".into(),
    });
    assert_eq!(authz(&db, "BOBKEY", "bkt", Permission::Read), Authz::UnknownKey);
    db.ok(create_key("BOBKEY", "bob"));
    assert_eq!(authz(&db, "BOBKEY", "bkt", Permission::Read), Authz::Denied);
    // A deleted and re-created bucket does not either.
    db.ok(grant("BOBKEY", "bkt", Permission::Read));
    db.ok(Command::DeleteBucket { name: "bkt".into() });
    db.ok(Command::CreateBucket {
        name: "bkt".into(),
        owner: "carol".into(),
        created_ms: 9,
    });
    assert_eq!(authz(&db, "BOBKEY", "bkt", Permission::Read), Authz::Denied);
    assert!(db.db.scan(GRANTS, &[], None, 10).expect("scan").is_empty());
    assert!(db.db.scan(KEY_GRANTS, &[], None, 10).expect("scan").is_empty());
}
