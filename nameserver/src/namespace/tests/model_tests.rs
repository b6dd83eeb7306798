//! Random interleavings of commit, delete, reap, ack, re-minting uids and
//! pruning the reaped table (uids shared between names on purpose) checked
//! against a model after every step, and a replay showing apply is
//! deterministic byte for byte.

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

const SLOTS: u64 = 24;

#[derive(Default)]
struct Model {
    current: BTreeMap<String, u128>,
    /// Every uid ever reaped, pruned or not: none may ever be named.
    reaped: BTreeSet<u128>,
    next_seq: u64,
    /// Each slot's uid birth: the log index when it was (re)minted.
    births: BTreeMap<u64, u64>,
    watermark: u64,
    /// Commits that took effect.
    commits: usize,
}

impl Model {
    /// Slot `n`'s current uid: its birth in the high 64 bits, as
    /// `ids::mint_uid` makes them.
    fn uid(&self, n: u64) -> u128 {
        (u128::from(self.births.get(&n).copied().unwrap_or(0)) << 64) | u128::from(n + 1)
    }

    fn referenced(&self, uid: u128) -> bool {
        self.current.values().any(|u| *u == uid)
    }
}

fn step(db: &mut Db, model: &mut Model, rng: &mut Rng) {
    let key = format!("k{}", rng.below(4));
    let slot = rng.below(SLOTS);
    let uid = model.uid(slot);
    match rng.below(12) {
        0..=4 => {
            let response = db.commit("bkt", &key, uid);
            if ((uid >> 64) as u64) < model.watermark {
                assert!(
                    matches!(response, Response::Error(NamespaceError::UidTooOld { .. })),
                    "{response:?}"
                );
            } else if model.reaped.contains(&uid) {
                assert_eq!(response, Response::Error(NamespaceError::UidReaped(uid)));
            } else {
                assert_eq!(response, Response::Ok);
                model.current.insert(key, uid);
                model.commits += 1;
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
        9 => {
            let seqs = db.pending().iter().map(|entry| entry.seq).collect();
            db.ok(Command::AckDeletes { seqs });
        }
        10 => {
            model.births.insert(slot, db.index);
        }
        _ => {
            let below = db.index.saturating_sub(rng.below(40));
            assert!(matches!(
                db.apply(Command::PruneReaped { below_index: below }),
                Response::Pruned { .. }
            ));
            model.watermark = model.watermark.max(below);
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

/// The database after `steps` random steps, and how many commits took
/// effect.
fn run(seed: u64, steps: usize) -> (Db, usize) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut db = Db::new();
    db.bucket("bkt");
    let mut model = Model::default();
    for _ in 0..steps {
        step(&mut db, &mut model, &mut rng);
        check(&db, &mut model);
    }
    (db, model.commits)
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
    let (first, commits) = run(99, 200);
    let (second, _) = run(99, 200);
    assert_eq!(dump(&first), dump(&second));
    assert!(commits > 10, "the scenario committed names: {commits}");
}
