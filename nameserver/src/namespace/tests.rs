//! State-machine tests against a real RocksDB in a temp dir: every command
//! goes through `apply` on a `Txn`, then `write_into` and `db.write`.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use tessera_raft::kv::{KvRead, Txn};

mod access_tests;
mod bucket_tests;
mod listing_tests;
mod model_tests;
mod multipart_tests;
mod name_tests;
mod reaped_tests;

pub struct Db {
    _dir: tempfile::TempDir,
    pub db: rocksdb::DB,
    pub index: u64,
}

impl Db {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let db = rocksdb::DB::open_cf(&options, dir.path(), TABLES).expect("open rocksdb");
        Db {
            _dir: dir,
            db,
            index: 0,
        }
    }

    /// Applies one command as one Raft entry.
    pub fn apply(&mut self, command: Command) -> Response {
        self.apply_all(&[command]).remove(0)
    }

    /// Applies several commands as consecutive entries written in one batch.
    pub fn apply_all(&mut self, commands: &[Command]) -> Vec<Response> {
        let mut txn = Txn::new(&self.db);
        let mut out = Vec::new();
        for command in commands {
            self.index += 1;
            let ctx = ApplyCtx {
                log_index: self.index,
                term: 1,
                position: 0,
            };
            out.push(apply(&mut txn, command, &ctx).expect("storage"));
        }
        let mut batch = rocksdb::WriteBatch::default();
        txn.write_into(&self.db, &mut batch).expect("batch");
        self.db.write(batch).expect("write");
        out
    }

    pub fn query(&self, q: Query) -> QueryResponse {
        query(&self.db, &q).expect("storage")
    }

    pub fn ok(&mut self, command: Command) {
        let what = format!("{command:?}");
        assert_eq!(self.apply(command), Response::Ok, "{what}");
    }

    pub fn refused(&mut self, command: Command) -> NamespaceError {
        match self.apply(command) {
            Response::Error(error) => error,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    pub fn bucket(&mut self, name: &str) {
        self.ok(Command::CreateBucket {
            name: name.into(),
            owner: "alice".into(),
            created_ms: 1,
        });
    }

    pub fn commit(&mut self, bucket: &str, key: &str, uid: u128) -> Response {
        self.commit_if(bucket, key, uid, CommitCondition::None)
    }

    pub fn commit_if(&mut self, bucket: &str, key: &str, uid: u128, condition: CommitCondition) -> Response {
        self.apply(Command::CommitName {
            bucket: bucket.into(),
            key: key.into(),
            version: version(uid),
            condition,
        })
    }

    pub fn get(&self, bucket: &str, key: &str) -> Option<ObjectVersion> {
        match self.query(Query::GetObject {
            bucket: bucket.into(),
            key: key.into(),
        }) {
            QueryResponse::Object(found) => found,
            other => panic!("unexpected {other:?}"),
        }
    }

    pub fn pending(&self) -> Vec<PendingDelete> {
        match self.query(Query::PendingDeletes {
            after_seq: None,
            limit: 1000,
        }) {
            QueryResponse::PendingDeletes(entries) => entries,
            other => panic!("unexpected {other:?}"),
        }
    }

    pub fn pending_uids(&self) -> BTreeSet<u128> {
        self.pending().iter().map(|entry| entry.uid).collect()
    }

    pub fn reap(&mut self, uid: u128) -> Response {
        self.apply(Command::Reap { uid })
    }

    pub fn referenced(&self, uid: u128) -> bool {
        self.query(Query::IsReferenced { uid }) == QueryResponse::Flag(true)
    }
}

pub fn version(uid: u128) -> ObjectVersion {
    ObjectVersion {
        uid,
        version_id: format!("v{uid}"),
        size: 10,
        etag: format!("\"etag{uid}\""),
        content_type: Some("text/plain".into()),
        user_meta: BTreeMap::from([("k".to_string(), "v".to_string())]),
        system_meta: BTreeMap::new(),
        mtime_ms: 5,
        partition: (uid % 7) as u32,
        kind: VersionKind::Object,
        parts: Vec::new(),
    }
}

#[test]
fn a_refused_command_in_a_shared_batch_writes_nothing() {
    let mut db = Db::new();
    db.bucket("bkt");
    let responses = db.apply_all(&[
        Command::CommitName {
            bucket: "bkt".into(),
            key: "a".into(),
            version: version(1),
            condition: CommitCondition::None,
        },
        // Refused at the condition check, after nothing was written.
        Command::CommitName {
            bucket: "bkt".into(),
            key: "a".into(),
            version: version(2),
            condition: CommitCondition::IfNoneMatch,
        },
        Command::DeleteBucket { name: "nope".into() },
    ]);
    assert_eq!(responses[0], Response::Ok);
    assert_eq!(responses[1], Response::Error(NamespaceError::PreconditionFailed));
    assert!(matches!(responses[2], Response::Error(NamespaceError::NoSuchBucket(_))));
    assert_eq!(db.get("bkt", "a").map(|v| v.uid), Some(1));
    assert!(db.pending().is_empty());
    assert!(!db.referenced(2));
}

#[test]
fn corrupt_stored_values_are_typed_errors_not_panics() {
    let mut db = Db::new();
    db.bucket("bkt");
    let cf = db.db.cf_handle(CURRENT).expect("cf");
    db.db
        .put_cf(&cf, codec::name_key("bkt", "k"), [0xFF, 0xFF, 0xFF])
        .expect("put");
    let bucket_cf = db.db.cf_handle(BUCKETS).expect("cf");
    db.db.put_cf(&bucket_cf, b"bad", [0xFF]).expect("put");
    assert!(matches!(
        db.refused(Command::DeleteName {
            bucket: "bkt".into(),
            key: "k".into()
        }),
        NamespaceError::Corrupt { .. }
    ));
    assert!(matches!(
        db.query(Query::GetObject {
            bucket: "bkt".into(),
            key: "k".into()
        }),
        QueryResponse::Error(NamespaceError::Corrupt { .. })
    ));
    assert!(matches!(
        db.query(Query::ListBuckets { owner: None }),
        QueryResponse::Error(NamespaceError::Corrupt { .. })
    ));
}

#[test]
fn cluster_map_nodes_and_partitions() {
    let mut db = Db::new();
    let node = |id: u64, used_bytes: u64, at_ms: u64| NodeRecord {
        node_id: id,
        role: NodeRole::ObjectServer,
        addr: format!("127.0.0.1:{}", 7000 + id),
        zone: "z1".into(),
        capacity_bytes: 1000,
        used_bytes,
        healthy: true,
        at_ms,
    };
    db.ok(Command::NodeHeartbeat(node(2, 10, 100)));
    db.ok(Command::NodeHeartbeat(node(1, 10, 100)));
    db.ok(Command::NodeHeartbeat(node(2, 20, 200)));
    assert_eq!(
        db.query(Query::ListNodes),
        QueryResponse::Nodes(vec![node(1, 10, 100), node(2, 20, 200)])
    );
    let placed = |replicas: Vec<u64>, generation| PartitionPlacement { replicas, generation };
    let map = cluster::round_robin(3, &[1, 2], &cluster::Zones::new(), 2);
    db.ok(Command::SetPartitionMap {
        changes: cluster::initial_changes(3, &[1, 2], &cluster::Zones::new(), 2),
    });
    let first: BTreeMap<u32, PartitionPlacement> = map.iter().map(|(p, r)| (*p, placed(r.clone(), 0))).collect();
    assert_eq!(
        db.query(Query::PartitionMap),
        QueryResponse::PartitionMap(first.clone())
    );

    // Planned from a stale generation: refused whole, nothing changes.
    let change = |replicas: Vec<u64>, expected_generation| PartitionChange {
        replicas,
        expected_generation,
    };
    let stale = Command::SetPartitionMap {
        changes: BTreeMap::from([(0, change(vec![2], Some(0))), (2, change(vec![1], None))]),
    };
    assert_eq!(db.refused(stale), NamespaceError::PreconditionFailed);
    assert_eq!(
        db.query(Query::PartitionMap),
        QueryResponse::PartitionMap(first.clone())
    );

    db.ok(Command::SetPartitionMap {
        changes: BTreeMap::from([(1, change(vec![], Some(0))), (2, change(vec![2], Some(0)))]),
    });
    let expected = BTreeMap::from([(0, first[&0].clone()), (2, placed(vec![2], 1))]);
    assert_eq!(db.query(Query::PartitionMap), QueryResponse::PartitionMap(expected));
}
