//! The partition state machine against a real RocksDB: extent shadowing and
//! live-byte accounting, GC entries and reservations, group life, and the
//! ordering rules that keep a late stripe from reviving freed data.

use std::net::SocketAddr;

use tessera_common::ids::{ChunkId, NodeId};
use tessera_raft::kv::Txn;

use super::*;
use crate::placement::FragmentLoc;

struct Db {
    _dir: tempfile::TempDir,
    db: rocksdb::DB,
    index: u64,
}

impl Db {
    fn new() -> Db {
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

    fn apply_in(&mut self, command: Command, term: u64) -> Response {
        self.index += 1;
        let ctx = ApplyCtx {
            log_index: self.index,
            term,
            position: 0,
        };
        let mut txn = Txn::new(&self.db);
        let response = apply(&mut txn, &command, &ctx).expect("not fatal");
        let mut batch = rocksdb::WriteBatch::default();
        txn.write_into(&self.db, &mut batch).expect("batch");
        self.db.write(batch).expect("write");
        self.check_invariants();
        response
    }

    fn apply(&mut self, command: Command) -> Response {
        self.apply_in(command, 1)
    }

    fn query(&self, q: Query) -> QueryResponse {
        query(&self.db, &q).expect("query")
    }

    fn groups(&self) -> Vec<(GroupId, GroupRecord)> {
        match self.query(Query::Groups) {
            QueryResponse::Groups(groups) => groups,
            other => panic!("{other:?}"),
        }
    }

    fn extents(&self, uid: u128) -> Vec<(u64, u64, u32)> {
        match self.query(Query::Lookup {
            uid,
            offset: 0,
            len: u64::MAX,
        }) {
            QueryResponse::Lookup { extents, .. } => extents.iter().map(|(o, e)| (*o, e.len, e.data_offset)).collect(),
            other => panic!("{other:?}"),
        }
    }

    /// The whole-state audit finds nothing, and lost columns are sane.
    fn check_invariants(&self) {
        let report = self.audit();
        assert!(report.is_clean(), "audit: {:?}", report.problems);
        let groups: std::collections::BTreeMap<GroupId, GroupRecord> = self.groups().into_iter().collect();
        for (id, lost) in self.lost() {
            let group = groups.get(&id).expect("lost columns belong to a known group");
            assert!(!lost.0.is_empty(), "an empty set is not stored");
            assert!(lost.0.windows(2).all(|w| w[0] < w[1]), "sorted and distinct");
            assert!(lost.0.iter().all(|c| (*c as usize) < group.placement.fragments.len()));
        }
    }

    fn audit(&self) -> audit::AuditReport {
        match self.query(Query::Audit) {
            QueryResponse::Audit(report) => report,
            other => panic!("{other:?}"),
        }
    }

    /// Writes `pairs` straight into RocksDB, around `apply` (a damaged
    /// state for the audit to find).
    fn damage(&self, pairs: &[Damage]) {
        let mut txn = Txn::new(&self.db);
        for (table, key, value) in pairs {
            match value {
                Some(value) => txn.put(table, key.clone(), value.clone()),
                None => txn.delete(table, key.clone()),
            }
        }
        let mut batch = rocksdb::WriteBatch::default();
        txn.write_into(&self.db, &mut batch).expect("batch");
        self.db.write(batch).expect("write");
    }

    fn lost(&self) -> Vec<(GroupId, LostColumns)> {
        match self.query(Query::Lost) {
            QueryResponse::Lost(lost) => lost,
            other => panic!("{other:?}"),
        }
    }
}

/// A raw write around `apply`: (table, key, value or delete).
type Damage = (&'static str, Vec<u8>, Option<Vec<u8>>);

const EC: Redundancy = Redundancy::Ec { k: 4, m: 2 };

fn placement(id: u64, first_seq: u32) -> GroupPlacement {
    let addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
    GroupPlacement {
        id: GroupId(id),
        redundancy: EC,
        fragments: (0..6)
            .map(|i| FragmentLoc {
                node: NodeId(i),
                addr,
                chunk: ChunkId(u64::from(first_seq) + i),
            })
            .collect(),
    }
}

fn open(uid: u128) -> Command {
    Command::OpenWrite {
        uid,
        redundancy: EC,
        size_hint_bytes: 1000,
        ttl_ms: 60_000,
    }
}

/// A 4 KiB-fragment stripe at `chunk_offset` with the given writes.
fn stripe(group: u64, chunk_offset: u64, writes: &[(u128, u64, u64, u32)]) -> Command {
    Command::RecordStripe {
        group: GroupId(group),
        stripe: StripeLoc {
            chunk_offset,
            fragment_len: 4096,
        },
        writes: writes
            .iter()
            .map(|&(uid, offset, len, data_offset)| StripeWrite {
                uid,
                offset,
                len,
                data_offset,
            })
            .collect(),
    }
}

#[test]
fn newer_writes_shadow_older_ones_and_live_bytes_follow() {
    let mut db = Db::new();
    db.apply(open(7));
    assert_eq!(
        db.apply(Command::OpenGroup {
            placement: placement(0, 0)
        }),
        Response::Group(GroupId(0))
    );
    db.apply(stripe(0, 0, &[(7, 0, 10_000, 0)]));
    // Overwrite the middle, then a range covering the end and beyond.
    db.apply(stripe(0, 4096, &[(7, 1000, 500, 0), (7, 9000, 2000, 500)]));
    assert_eq!(
        db.extents(7),
        vec![(0, 1000, 0), (1000, 500, 0), (1500, 7500, 1500), (9000, 2000, 500)]
    );
    let group = &db.groups()[0].1;
    assert_eq!(group.written_bytes, 12_500);
    assert_eq!(group.live_bytes, 11_000);
    assert_eq!(group.tail, 8192);
    assert_eq!(group.stripes, 2);

    db.apply(Command::Trim {
        uid: 7,
        offset: 500,
        len: 1000,
    });
    assert_eq!(db.extents(7), vec![(0, 500, 0), (1500, 7500, 1500), (9000, 2000, 500)]);
    match db.query(Query::Object { uid: 7 }) {
        QueryResponse::Object {
            object: Some(o),
            mapped_bytes,
            ..
        } => {
            assert_eq!(o.size_bytes, 11_000);
            assert_eq!(mapped_bytes, 10_000);
        }
        other => panic!("{other:?}"),
    }
    db.apply(Command::Delete { uid: 7 });
    assert!(db.extents(7).is_empty());
    assert_eq!(db.groups()[0].1.live_bytes, 0);
}

#[test]
fn gc_entries_and_reservations() {
    let mut db = Db::new();
    db.apply(open(1));
    db.apply(open(2));
    db.apply(open(2)); // renewal keeps one reservation
    let reserved = |db: &Db| match db.query(Query::Meta) {
        QueryResponse::Meta(m) => m.reserved_bytes,
        other => panic!("{other:?}"),
    };
    assert_eq!(reserved(&db), 2000);
    let gc = |db: &Db| match db.query(Query::GcEntries { after: None, limit: 10 }) {
        QueryResponse::GcEntries(entries) => entries.into_iter().map(|(uid, _)| uid).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(gc(&db), vec![1, 2]);
    db.apply(Command::Confirm { uid: 1 });
    assert_eq!(gc(&db), vec![2]);
    assert_eq!(reserved(&db), 1000);
    db.apply(Command::Delete { uid: 2 });
    assert_eq!(reserved(&db), 0);
    assert!(gc(&db).is_empty());
    assert_eq!(
        db.apply(Command::Confirm { uid: 2 }),
        Response::Error(StateError::NoSuchUid)
    );
    assert_eq!(db.apply(Command::Delete { uid: 2 }), Response::Ok, "idempotent");
    let other = Command::OpenWrite {
        uid: 1,
        redundancy: Redundancy::Replicated { n: 3 },
        size_hint_bytes: 0,
        ttl_ms: 1,
    };
    assert_eq!(db.apply(other), Response::Error(StateError::RedundancyMismatch));
}

#[test]
fn a_stripe_for_a_deleted_uid_stays_dead() {
    let mut db = Db::new();
    db.apply(open(5));
    db.apply(Command::OpenGroup {
        placement: placement(0, 0),
    });
    db.apply(Command::Delete { uid: 5 }); // reaped while its stripe was in flight
    let response = db.apply(stripe(0, 0, &[(5, 0, 100, 0)]));
    assert_eq!(response, Response::Recorded(vec![Err(StateError::NoSuchUid)]));
    assert!(db.extents(5).is_empty());
    let group = &db.groups()[0].1;
    assert_eq!((group.written_bytes, group.live_bytes), (100, 0));
}

#[test]
fn only_the_opening_term_records_and_never_before_the_tail() {
    let mut db = Db::new();
    db.apply(open(1));
    db.apply_in(
        Command::OpenGroup {
            placement: placement(0, 0),
        },
        3,
    );
    assert!(matches!(
        db.apply_in(stripe(0, 0, &[(1, 0, 10, 0)]), 2),
        Response::Error(StateError::GroupNotOpen { .. })
    ));
    db.apply_in(stripe(0, 0, &[(1, 0, 10, 0)]), 3);
    assert!(matches!(
        db.apply_in(stripe(0, 0, &[(1, 0, 10, 0)]), 3),
        Response::Error(StateError::StripeBeforeTail { .. })
    ));
    assert_eq!(
        db.apply_in(Command::SealGroup { group: GroupId(0) }, 4),
        Response::Sealed { length: 4096 }
    );
    assert!(matches!(
        db.apply_in(stripe(0, 4096, &[(1, 0, 10, 0)]), 3),
        Response::Error(StateError::GroupNotOpen { .. })
    ));
    assert_eq!(
        db.apply_in(Command::SealGroup { group: GroupId(0) }, 4),
        Response::Sealed { length: 4096 }
    );
    assert!(matches!(
        db.apply(stripe(0, 8192, &[(1, 0, 20_000, 0)])),
        Response::Error(StateError::GroupNotOpen { .. })
    ));
}

#[test]
fn group_proposals_from_a_stale_view_are_refused() {
    let mut db = Db::new();
    db.apply(Command::OpenGroup {
        placement: placement(0, 0),
    });
    assert!(matches!(
        db.apply(Command::OpenGroup {
            placement: placement(0, 6)
        }),
        Response::Error(StateError::StaleProposal(_))
    ));
    assert!(matches!(
        db.apply(Command::OpenGroup {
            placement: placement(1, 3)
        }),
        Response::Error(StateError::StaleProposal(_))
    ));
    assert_eq!(
        db.apply(Command::OpenGroup {
            placement: placement(1, 6)
        }),
        Response::Group(GroupId(1))
    );
    match db.query(Query::Meta) {
        QueryResponse::Meta(m) => assert_eq!((m.next_group, m.next_chunk_seq), (2, 12)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_write_beyond_the_stripe_is_refused() {
    let mut db = Db::new();
    db.apply(open(1));
    db.apply(Command::OpenGroup {
        placement: placement(0, 0),
    });
    assert!(matches!(
        db.apply(stripe(0, 0, &[(1, 0, 16_385, 0)])),
        Response::Error(StateError::BadRequest(_))
    ));
    assert!(db.extents(1).is_empty());
    assert_eq!(db.groups()[0].1.tail, 0, "a refused stripe leaves the group as it was");
}

#[test]
fn lost_columns_allow_degraded_stripes_up_to_the_quorum_and_repair_clears_them() {
    let mut db = Db::new();
    db.apply(open(1));
    db.apply(Command::OpenGroup {
        placement: placement(0, 0),
    });
    let mark = |columns: &[u32]| Command::MarkLost {
        group: GroupId(0),
        columns: columns.to_vec(),
    };
    assert!(matches!(
        db.apply(mark(&[6])),
        Response::Error(StateError::BadRequest(_))
    ));
    assert_eq!(db.apply(mark(&[2])), Response::Ok);
    assert_eq!(db.apply(mark(&[2])), Response::Ok, "marking is idempotent");
    assert_eq!(db.lost(), vec![(GroupId(0), LostColumns(vec![2]))]);
    // EC 4+2 records stripes with one column lost (5 of 6 durable)...
    assert!(matches!(
        db.apply(stripe(0, 0, &[(1, 0, 10, 0)])),
        Response::Recorded(_)
    ));
    // ...but not with two: the data would be one loss away from gone.
    assert_eq!(db.apply(mark(&[5, 0])), Response::Ok);
    assert_eq!(db.lost(), vec![(GroupId(0), LostColumns(vec![0, 2, 5]))]);
    assert!(matches!(
        db.apply(stripe(0, 4096, &[(1, 10, 10, 0)])),
        Response::Error(StateError::BadRequest(_))
    ));
    assert_eq!(db.extents(1), vec![(0, 10, 0)], "the refused stripe mapped nothing");

    // Repair replaces sealed columns one by one; each leaves the set.
    db.apply(Command::SealGroup { group: GroupId(0) });
    for (column, chunk) in [(0u32, 100u64), (2, 101), (5, 102)] {
        let response = db.apply(Command::ReplaceFragment {
            group: GroupId(0),
            index: column,
            old: ChunkId(u64::from(column)),
            new: FragmentLoc {
                node: NodeId(50 + u64::from(column)),
                addr: "127.0.0.1:2".parse().expect("addr"),
                chunk: ChunkId(chunk),
            },
        });
        assert_eq!(response, Response::Ok);
    }
    assert!(db.lost().is_empty(), "every lost column was rebuilt");
    db.apply(Command::Delete { uid: 1 });
    assert_eq!(db.apply(Command::ReleaseGroup { group: GroupId(0) }), Response::Ok);
    assert!(matches!(
        db.apply(mark(&[1])),
        Response::Error(StateError::BadRequest(_))
    ));
}

#[test]
fn compaction_switches_only_unchanged_extents_then_releases() {
    let mut db = Db::new();
    db.apply(open(1));
    db.apply(open(2));
    db.apply(Command::OpenGroup {
        placement: placement(0, 0),
    });
    db.apply(stripe(0, 0, &[(1, 0, 1000, 0), (2, 0, 1000, 1000)]));
    db.apply(Command::SealGroup { group: GroupId(0) });
    db.apply(Command::OpenGroup {
        placement: placement(1, 6),
    });
    let old = |uid| match db.query(Query::Lookup { uid, offset: 0, len: 1 }) {
        QueryResponse::Lookup { extents, .. } => extents[0].1,
        other => panic!("{other:?}"),
    };
    let (old1, old2) = (old(1), old(2));
    // uid 2 is overwritten after compaction copied it: its copy must lose.
    db.apply(stripe(1, 0, &[(2, 0, 1000, 0)]));
    let moves = vec![
        Relocation {
            uid: 1,
            offset: 0,
            old: old1,
            data_offset: 0,
        },
        Relocation {
            uid: 2,
            offset: 0,
            old: old2,
            data_offset: 1000,
        },
    ];
    let relocation = Command::Relocate {
        group: GroupId(1),
        stripe: StripeLoc {
            chunk_offset: 4096,
            fragment_len: 4096,
        },
        moves,
    };
    assert_eq!(db.apply(relocation), Response::Relocated { switched: 1 });
    assert_eq!(db.extents(2), vec![(0, 1000, 0)], "the overwrite survived");
    let groups = db.groups();
    assert_eq!(groups[0].1.live_bytes, 0);
    assert_eq!(groups[1].1.live_bytes, 2000);
    assert_eq!(db.apply(Command::ReleaseGroup { group: GroupId(0) }), Response::Ok);
    assert!(matches!(
        db.apply(Command::ReleaseGroup { group: GroupId(1) }),
        Response::Error(StateError::BadRequest(_))
    ));
    assert_eq!(db.apply(Command::GroupReleased { group: GroupId(0) }), Response::Ok);
    assert_eq!(db.groups()[0].1.state, GroupState::Released);
}

#[test]
fn the_audit_finds_an_extent_in_a_released_group_and_wrong_live_bytes() {
    let mut db = Db::new();
    db.apply(open(1));
    db.apply(Command::OpenGroup {
        placement: placement(0, 0),
    });
    db.apply(stripe(0, 0, &[(1, 0, 1000, 0)]));
    db.apply(Command::SealGroup { group: GroupId(0) });
    db.apply(Command::Trim {
        uid: 1,
        offset: 0,
        len: 1000,
    });
    db.apply(Command::ReleaseGroup { group: GroupId(0) });
    db.apply(Command::GroupReleased { group: GroupId(0) });
    let clean = db.audit();
    assert!(clean.is_clean(), "{:?}", clean.problems);
    assert_eq!(
        (clean.objects, clean.extents, clean.groups, clean.released_groups),
        (1, 0, 1, 1)
    );

    // An extent into the released group, as a lost trim or a wrong switch
    // would leave: its bytes are gone from the chunk servers.
    let extent = Extent {
        len: 1000,
        group: GroupId(0),
        stripe: StripeLoc {
            chunk_offset: 0,
            fragment_len: 4096,
        },
        data_offset: 0,
    };
    db.damage(&[
        (
            records::EXTENTS,
            records::extent_key(1, 0),
            Some(records::encode(&extent)),
        ),
        (
            records::GROUP_EXTENTS,
            records::group_extent_key(GroupId(0), 1, 0),
            Some(Vec::new()),
        ),
    ]);
    let report = db.audit();
    assert_eq!(report.extents, 1);
    assert!(!report.is_clean());
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("points at released group g0")),
        "{:?}",
        report.problems
    );
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("records 0 live bytes") && p.contains("hold 1000")),
        "{:?}",
        report.problems
    );

    // An index entry without its extent, and an extent of a uid without a
    // record.
    db.damage(&[
        (records::EXTENTS, records::extent_key(1, 0), None),
        (
            records::EXTENTS,
            records::extent_key(9, 0),
            Some(records::encode(&extent)),
        ),
    ]);
    let report = db.audit();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("lists 1@0, not an extent in it")),
        "{:?}",
        report.problems
    );
    assert!(
        report.problems.iter().any(|p| p == "9 has extents but no record"),
        "{:?}",
        report.problems
    );
}
