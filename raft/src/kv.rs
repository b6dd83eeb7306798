//! The state machine's view of RocksDB: named tables (column families),
//! read through [`KvRead`], written through a [`Txn`] that buffers writes in
//! an overlay (reads see earlier writes of the same transaction) and turns
//! them into one atomic `WriteBatch`.
//!
//! `apply` logic reads and writes only through these, so applying a batch of
//! Raft entries is one RocksDB write, and the logic can be tested against a
//! real RocksDB without Raft.

use std::collections::BTreeMap;
use std::ops::Bound;

/// A table is one column family, named by a static string.
pub type Table = &'static str;

#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("table {0} does not exist")]
    NoTable(Table),
}

/// A stored value that does not decode: corruption, reported, never a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("table {table} corrupt: {detail}")]
pub struct Corrupt {
    pub table: Table,
    pub detail: String,
}

/// Why [`get`] found no usable value.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
}

/// Serializes a value for storage (postcard).
pub fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Serializing plain in-memory structs into a Vec cannot fail.
    postcard::to_stdvec(value).unwrap_or_default()
}

/// Deserializes a value stored in `table`.
pub fn decode<T: serde::de::DeserializeOwned>(table: Table, bytes: &[u8]) -> Result<T, Corrupt> {
    postcard::from_bytes(bytes).map_err(|e| Corrupt {
        table,
        detail: e.to_string(),
    })
}

/// Reads and decodes one value.
pub fn get<R: KvRead + ?Sized, T: serde::de::DeserializeOwned>(
    view: &R,
    table: Table,
    key: &[u8],
) -> Result<Option<T>, ReadError> {
    match view.get(table, key)? {
        Some(bytes) => Ok(Some(decode(table, &bytes)?)),
        None => Ok(None),
    }
}

/// One key/value pair as stored.
pub type Pair = (Vec<u8>, Vec<u8>);

/// Read access to the tables, at one consistent point.
pub trait KvRead {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, KvError>;
    /// Pairs with `start <= key` (inclusive) `< end` (if `end` is given), in
    /// key order, at most `limit`.
    fn scan(&self, table: Table, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<Pair>, KvError>;
}

impl KvRead for rocksdb::DB {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        let cf = self.cf_handle(table).ok_or(KvError::NoTable(table))?;
        Ok(self.get_cf(&cf, key)?)
    }

    fn scan(&self, table: Table, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<Pair>, KvError> {
        let cf = self.cf_handle(table).ok_or(KvError::NoTable(table))?;
        let mode = rocksdb::IteratorMode::From(start, rocksdb::Direction::Forward);
        take_range(self.iterator_cf(&cf, mode), end, limit)
    }
}

/// Buffered writes over a [`KvRead`] base; see the module doc.
pub struct Txn<'a, R: KvRead + ?Sized> {
    base: &'a R,
    /// `None` marks a delete.
    overlay: BTreeMap<(Table, Vec<u8>), Option<Vec<u8>>>,
}

impl<'a, R: KvRead + ?Sized> Txn<'a, R> {
    pub fn new(base: &'a R) -> Self {
        Txn {
            base,
            overlay: BTreeMap::new(),
        }
    }

    pub fn put(&mut self, table: Table, key: Vec<u8>, value: Vec<u8>) {
        self.overlay.insert((table, key), Some(value));
    }

    pub fn delete(&mut self, table: Table, key: Vec<u8>) {
        self.overlay.insert((table, key), None);
    }

    pub fn is_empty(&self) -> bool {
        self.overlay.is_empty()
    }

    /// The buffered writes, in (table, key) order.
    pub fn writes(&self) -> impl Iterator<Item = (Table, &[u8], Option<&[u8]>)> {
        self.overlay
            .iter()
            .map(|((table, key), value)| (*table, key.as_slice(), value.as_deref()))
    }

    /// Appends the buffered writes to `batch` (for the RocksDB store).
    pub fn write_into(&self, db: &rocksdb::DB, batch: &mut rocksdb::WriteBatch) -> Result<(), KvError> {
        for (table, key, value) in self.writes() {
            let cf = db.cf_handle(table).ok_or(KvError::NoTable(table))?;
            match value {
                Some(value) => batch.put_cf(&cf, key, value),
                None => batch.delete_cf(&cf, key),
            }
        }
        Ok(())
    }

    fn overlay_range(&self, table: Table, start: &[u8], end: Option<&[u8]>) -> Vec<(&[u8], Option<&[u8]>)> {
        let lower = Bound::Included((table, start.to_vec()));
        let upper = match end {
            Some(end) => Bound::Excluded((table, end.to_vec())),
            None => Bound::Unbounded,
        };
        self.overlay
            .range((lower, upper))
            .take_while(|((t, _), _)| *t == table)
            .map(|((_, key), value)| (key.as_slice(), value.as_deref()))
            .collect()
    }
}

impl<R: KvRead + ?Sized> KvRead for Txn<'_, R> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        match self.overlay.get(&(table, key.to_vec())) {
            Some(value) => Ok(value.clone()),
            None => self.base.get(table, key),
        }
    }

    fn scan(&self, table: Table, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<Pair>, KvError> {
        let overlay = self.overlay_range(table, start, end);
        // Deletes in the overlay may hide base pairs: fetch that many more.
        let hidden = overlay.iter().filter(|(_, v)| v.is_none()).count();
        let base = self.base.scan(table, start, end, limit.saturating_add(hidden))?;
        Ok(merge(base, overlay, limit))
    }
}

/// Merges sorted base pairs with sorted overlay writes (overlay wins).
fn merge(base: Vec<Pair>, overlay: Vec<(&[u8], Option<&[u8]>)>, limit: usize) -> Vec<Pair> {
    let mut out = Vec::with_capacity(limit.min(base.len() + overlay.len()));
    let mut base = base.into_iter().peekable();
    let mut overlay = overlay.into_iter().peekable();
    while out.len() < limit {
        let take_overlay = match (base.peek(), overlay.peek()) {
            (None, None) => break,
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (Some((bk, _)), Some((ok, _))) => {
                if bk.as_slice() == *ok {
                    base.next(); // shadowed by the overlay
                    true
                } else {
                    *ok < bk.as_slice()
                }
            }
        };
        if take_overlay {
            if let Some((key, Some(value))) = overlay.next() {
                out.push((key.to_vec(), value.to_vec()));
            }
        } else if let Some(pair) = base.next() {
            out.push(pair);
        }
    }
    out
}

/// The tables as of one RocksDB snapshot: several reads that must agree
/// (a whole-state audit) see one point even while entries are applied.
pub struct SnapshotView<'a> {
    db: &'a rocksdb::DB,
    snapshot: rocksdb::Snapshot<'a>,
}

impl<'a> SnapshotView<'a> {
    pub fn new(db: &'a rocksdb::DB) -> Self {
        SnapshotView {
            db,
            snapshot: db.snapshot(),
        }
    }
}

impl KvRead for SnapshotView<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        let cf = self.db.cf_handle(table).ok_or(KvError::NoTable(table))?;
        Ok(self.snapshot.get_cf(&cf, key)?)
    }

    fn scan(&self, table: Table, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<Pair>, KvError> {
        let cf = self.db.cf_handle(table).ok_or(KvError::NoTable(table))?;
        let mode = rocksdb::IteratorMode::From(start, rocksdb::Direction::Forward);
        take_range(self.snapshot.iterator_cf(&cf, mode), end, limit)
    }
}

/// The pairs of a forward RocksDB iterator below `end`, at most `limit`.
fn take_range(
    items: impl Iterator<Item = Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>>,
    end: Option<&[u8]>,
    limit: usize,
) -> Result<Vec<Pair>, KvError> {
    let mut out = Vec::new();
    for item in items {
        if out.len() >= limit {
            break;
        }
        let (key, value) = item?;
        if end.is_some_and(|end| &*key >= end) {
            break;
        }
        out.push((key.to_vec(), value.to_vec()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Table = "t";

    fn db(dir: &std::path::Path) -> rocksdb::DB {
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        rocksdb::DB::open_cf(&options, dir, [T, "u"]).expect("open rocksdb")
    }

    #[test]
    fn txn_reads_its_own_writes_and_merges_scans() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = db(dir.path());
        let cf = db.cf_handle(T).expect("cf");
        for k in [b"a", b"b", b"c", b"d"] {
            db.put_cf(&cf, k, b"base").expect("put");
        }
        let mut txn = Txn::new(&db);
        txn.delete(T, b"b".to_vec());
        txn.put(T, b"bb".to_vec(), b"new".to_vec());
        txn.put(T, b"c".to_vec(), b"over".to_vec());
        txn.put("u", b"a".to_vec(), b"other table".to_vec());
        assert_eq!(txn.get(T, b"b").expect("get"), None);
        assert_eq!(txn.get(T, b"c").expect("get").as_deref(), Some(&b"over"[..]));
        let keys = |pairs: Vec<Pair>| {
            pairs
                .into_iter()
                .map(|(k, v)| (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            keys(txn.scan(T, b"", None, 10).expect("scan")),
            vec![
                ("a".into(), "base".into()),
                ("bb".into(), "new".into()),
                ("c".into(), "over".into()),
                ("d".into(), "base".into())
            ]
        );
        assert_eq!(keys(txn.scan(T, b"b", Some(b"d"), 10).expect("scan")).len(), 2);
        assert_eq!(keys(txn.scan(T, b"", None, 2).expect("scan")).len(), 2);

        let mut batch = rocksdb::WriteBatch::default();
        txn.write_into(&db, &mut batch).expect("batch");
        db.write(batch).expect("write");
        assert_eq!(KvRead::get(&db, T, b"b").expect("get"), None);
        assert_eq!(
            KvRead::get(&db, "u", b"a").expect("get").as_deref(),
            Some(&b"other table"[..])
        );
    }
}
