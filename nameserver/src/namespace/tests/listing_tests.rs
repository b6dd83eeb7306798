//! Listing against a simple model over a few hundred keys.

use super::*;

/// The model: every entry (key or common prefix) in order, after
/// `start_after`, paged by `max`.
fn model(keys: &BTreeSet<String>, request: &ListObjectsRequest) -> (Vec<String>, Vec<String>, bool) {
    let mut entries: BTreeMap<String, bool> = BTreeMap::new(); // name → is prefix
    for key in keys.iter().filter(|k| k.starts_with(&request.prefix)) {
        let rest = &key[request.prefix.len()..];
        let rolled = request.delimiter.as_deref().and_then(|d| {
            rest.find(d)
                .map(|at| format!("{}{}", request.prefix, &rest[..at + d.len()]))
        });
        match rolled {
            Some(prefix) => entries.insert(prefix, true),
            None => entries.insert(key.clone(), false),
        };
    }
    let after: Vec<(String, bool)> = entries
        .into_iter()
        .filter(|(name, _)| request.start_after.as_ref().is_none_or(|after| name > after))
        .collect();
    let max = request.max_keys.min(1000);
    let page = &after[..after.len().min(max)];
    let contents = page.iter().filter(|(_, p)| !p).map(|(n, _)| n.clone()).collect();
    let prefixes = page.iter().filter(|(_, p)| *p).map(|(n, _)| n.clone()).collect();
    (contents, prefixes, after.len() > max)
}

fn keys() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for i in 0..300u32 {
        let key = match i % 6 {
            0 => format!("photos/2024/{:03}.jpg", i),
            1 => format!("photos/{:03}.png", i),
            2 => format!("docs/{}/readme-{}", i % 5, i),
            3 => format!("top-{:03}", i),
            4 => format!("a/b/c/{}", i * 7919 % 1000),
            _ => format!("photos-x/{}/{}", i % 3, i),
        };
        out.insert(key);
    }
    out.insert("photos/".into());
    out.insert("photos".into());
    out.insert("p\u{e9}che/1".into());
    out
}

fn list(db: &Db, request: &ListObjectsRequest) -> ListObjectsPage {
    match db.query(Query::ListObjects(request.clone())) {
        QueryResponse::Objects(page) => page,
        other => panic!("{other:?}"),
    }
}

fn loaded() -> (Db, BTreeSet<String>) {
    let mut db = Db::new();
    db.bucket("bkt");
    db.bucket("bkt-2");
    let keys = keys();
    let commands: Vec<Command> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| Command::CommitName {
            bucket: "bkt".into(),
            key: key.clone(),
            version: version(i as u128 + 1),
            condition: CommitCondition::None,
        })
        .collect();
    db.apply_all(&commands);
    // Noise in a neighbouring bucket must never show.
    db.commit("bkt-2", "photos/zzz", 10_000);
    db.commit("bkt-2", "aaa", 10_001);
    (db, keys)
}

#[test]
fn single_pages_match_the_model() {
    let (db, keys) = loaded();
    let cases: Vec<(&str, Option<&str>, Option<&str>, usize)> = vec![
        ("", None, None, 1000),
        ("", Some("/"), None, 1000),
        ("photos/", Some("/"), None, 1000),
        ("photos", Some("/"), None, 1000),
        ("photos/", None, Some("photos/100"), 17),
        ("", Some("/"), Some("photos/"), 3),
        ("", Some("/"), Some("photos/2024/000.jpg"), 5),
        ("a/", Some("/"), None, 1000),
        ("docs/", Some("-"), None, 1000),
        ("", Some("/2"), None, 1000),
        ("nothing-here", Some("/"), None, 10),
        ("", None, Some("zzzz"), 10),
        ("", None, None, 0),
        ("", None, None, 5000),
    ];
    for (prefix, delimiter, start_after, max_keys) in cases {
        let request = ListObjectsRequest {
            bucket: "bkt".into(),
            prefix: prefix.into(),
            delimiter: delimiter.map(String::from),
            start_after: start_after.map(String::from),
            max_keys,
        };
        let page = list(&db, &request);
        let (contents, prefixes, truncated) = model(&keys, &request);
        let got: Vec<String> = page.contents.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(got, contents, "{request:?}");
        assert_eq!(page.common_prefixes, prefixes, "{request:?}");
        assert_eq!(page.is_truncated, truncated, "{request:?}");
    }
}

#[test]
fn paging_with_the_next_marker_visits_every_entry_once() {
    let (db, keys) = loaded();
    for (prefix, delimiter, max_keys) in [
        ("", Some("/"), 2),
        ("", None, 37),
        ("photos", Some("/"), 3),
        ("a/b/", Some("/"), 7),
    ] {
        let mut request = ListObjectsRequest {
            bucket: "bkt".into(),
            prefix: prefix.into(),
            delimiter: delimiter.map(String::from),
            start_after: None,
            max_keys,
        };
        let (all_contents, all_prefixes, _) = model(
            &keys,
            &ListObjectsRequest {
                max_keys: 1000,
                ..request.clone()
            },
        );
        let (mut contents, mut prefixes) = (Vec::new(), Vec::new());
        loop {
            let page = list(&db, &request);
            assert!(page.contents.len() + page.common_prefixes.len() <= max_keys);
            contents.extend(page.contents.iter().map(|(k, _)| k.clone()));
            prefixes.extend(page.common_prefixes.iter().cloned());
            if !page.is_truncated {
                assert_eq!(page.next_marker, None);
                break;
            }
            request.start_after = page.next_marker.clone();
            assert!(request.start_after.is_some());
        }
        assert_eq!(contents, all_contents, "{prefix} {delimiter:?}");
        assert_eq!(prefixes, all_prefixes, "{prefix} {delimiter:?}");
    }
}

#[test]
fn listing_sees_deletes_and_returns_versions() {
    let (mut db, _) = loaded();
    db.apply(Command::DeleteName {
        bucket: "bkt".into(),
        key: "photos".into(),
    });
    let request = ListObjectsRequest {
        bucket: "bkt".into(),
        prefix: "photos".into(),
        delimiter: Some("/".into()),
        start_after: None,
        max_keys: 10,
    };
    let page = list(&db, &request);
    assert!(page.contents.is_empty());
    assert_eq!(page.common_prefixes, vec!["photos-x/", "photos/"]);
    let top = list(
        &db,
        &ListObjectsRequest {
            prefix: "top-003".into(),
            ..request.clone()
        },
    );
    assert_eq!(top.contents.len(), 1);
    assert_eq!(top.contents[0].1.etag, db.get("bkt", "top-003").expect("exists").etag);
    let missing = ListObjectsRequest {
        bucket: "nobkt".into(),
        ..request
    };
    assert_eq!(
        db.query(Query::ListObjects(missing)),
        QueryResponse::Error(NamespaceError::NoSuchBucket("nobkt".into()))
    );
}

/// A view that counts the pairs scans return.
struct Counting<'a> {
    db: &'a rocksdb::DB,
    pairs: std::cell::Cell<usize>,
}

impl KvRead for Counting<'_> {
    fn get(&self, table: tessera_raft::kv::Table, key: &[u8]) -> Result<Option<Vec<u8>>, tessera_raft::kv::KvError> {
        KvRead::get(self.db, table, key)
    }

    fn scan(
        &self,
        table: tessera_raft::kv::Table,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<tessera_raft::kv::Pair>, tessera_raft::kv::KvError> {
        let pairs = KvRead::scan(self.db, table, start, end, limit)?;
        self.pairs.set(self.pairs.get() + pairs.len());
        Ok(pairs)
    }
}

#[test]
fn a_common_prefix_is_skipped_by_seeking_not_scanning() {
    let mut db = Db::new();
    db.bucket("bkt");
    let mut commands: Vec<Command> = (0..500u128)
        .map(|i| Command::CommitName {
            bucket: "bkt".into(),
            key: format!("big/{i:04}"),
            version: version(i + 1),
            condition: CommitCondition::None,
        })
        .collect();
    for key in ["a", "big", "zz/1", "zz/2"] {
        commands.push(Command::CommitName {
            bucket: "bkt".into(),
            key: key.into(),
            version: version(1000),
            condition: CommitCondition::None,
        });
    }
    db.apply_all(&commands);
    let view = Counting {
        db: &db.db,
        pairs: std::cell::Cell::new(0),
    };
    let request = ListObjectsRequest {
        bucket: "bkt".into(),
        delimiter: Some("/".into()),
        max_keys: 1000,
        ..ListObjectsRequest::default()
    };
    let page = match query(&view, &Query::ListObjects(request)).expect("storage") {
        QueryResponse::Objects(page) => page,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        page.contents.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        vec!["a", "big"]
    );
    assert_eq!(page.common_prefixes, vec!["big/", "zz/"]);
    assert!(view.pairs.get() < 20, "read {} pairs", view.pairs.get());
}
