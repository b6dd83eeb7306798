//! Random interleavings of commit, delete, reap and ack (uids shared
//! between names on purpose) checked against a model after every step, and
//! a replay showing apply is deterministic byte for byte.

use super::*;

/// xorshift64: enough randomness for a test, no dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[derive(Default)]
struct Model {
    current: BTreeMap<String, u128>,
    reaped: BTreeSet<u128>,
    next_seq: u64,
}

impl Model {
    fn referenced(&self, uid: u128) -> bool {
        self.current.values().any(|u| *u == uid)
    }
}

fn step(db: &mut Db, model: &mut Model, rng: &mut Rng) {
    let key = format!("k{}", rng.below(4));
    let uid = u128::from(rng.below(24)) + 1;
    match rng.below(10) {
        0..=4 => {
            let response = db.commit("bkt", &key, uid);
            if model.reaped.contains(&uid) {
                assert_eq!(response, Response::Error(NamespaceError::UidReaped(uid)));
            } else {
                assert_eq!(response, Response::Ok);
                model.current.insert(key, uid);
            }
        }
        5 | 6 => {
            let response = db.apply(Command::DeleteName {
                bucket: "bkt".into(),
                key: key.clone(),
            });
            let existed = model.current.remove(&key).is_some();
            assert_eq!(response, Response::Deleted { existed });
        }
        7 | 8 => {
            let expected = if model.referenced(uid) {
                ReapOutcome::Referenced
            } else {
                model.reaped.insert(uid);
                ReapOutcome::Free
            };
            assert_eq!(db.reap(uid), Response::Reap(expected));
        }
        _ => {
            let seqs = db.pending().iter().map(|entry| entry.seq).collect();
            db.ok(Command::AckDeletes { seqs });
        }
    }
}

fn check(db: &Db, model: &mut Model) {
    for (key, uid) in &model.current {
        assert_eq!(db.get("bkt", key).map(|v| v.uid), Some(*uid), "{key}");
        assert!(!model.reaped.contains(uid), "{key} names reaped uid {uid}");
        assert!(db.referenced(*uid));
    }
    for key in (0..4).map(|i| format!("k{i}")) {
        if !model.current.contains_key(&key) {
            assert_eq!(db.get("bkt", &key), None);
        }
    }
    // A uid is queued for deletion only when nothing references it.
    let since = model.next_seq;
    for entry in db.pending().iter().filter(|entry| entry.seq >= since) {
        assert!(!model.referenced(entry.uid), "queued uid {} is still named", entry.uid);
        model.next_seq = entry.seq + 1;
    }
}

fn run(seed: u64, steps: usize) -> Db {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut db = Db::new();
    db.bucket("bkt");
    let mut model = Model::default();
    for _ in 0..steps {
        step(&mut db, &mut model, &mut rng);
        check(&db, &mut model);
    }
    db
}

#[test]
fn random_interleavings_never_name_a_reaped_uid_nor_queue_a_named_one() {
    for seed in 1..=16 {
        run(seed, 150);
    }
}

fn dump(db: &Db) -> Vec<(Table, Vec<tessera_raft::kv::Pair>)> {
    TABLES
        .iter()
        .map(|table| (*table, db.db.scan(table, &[], None, usize::MAX).expect("scan")))
        .collect()
}

#[test]
fn replaying_the_same_entries_gives_the_same_bytes() {
    let first = run(99, 200);
    let second = run(99, 200);
    assert_eq!(dump(&first), dump(&second));
    assert!(!dump(&first)[1].1.is_empty(), "the scenario committed names");
}
