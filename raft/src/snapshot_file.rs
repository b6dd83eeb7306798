//! The file a group's snapshot lives in: every table of the state machine
//! as a stream of records, written and read one pair at a time so a
//! snapshot is never held in memory, and a blake3 checksum at the end so a
//! torn or corrupt file is refused before anything is installed from it.
//!
//! Layout: `MAGIC`, then records, each a tag byte:
//! - `TAG_TABLE`, u16 name length, name: the pairs that follow belong to it;
//! - `TAG_PAIR`, u32 key length, key, u32 value length, value;
//! - `TAG_END`, then the 32-byte blake3 hash of every byte before it.
//!
//! Lengths are big-endian. Nothing may follow the hash.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

const MAGIC: &[u8; 8] = b"TSRSNAP1";
const TAG_TABLE: u8 = 1;
const TAG_PAIR: u8 = 2;
const TAG_END: u8 = 3;
/// Larger keys or values are refused as corrupt rather than allocated.
const FIELD_BYTES_MAX: u32 = 256 << 20;
const IO_BUFFER_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    #[error("snapshot file I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("snapshot file corrupt: {0}")]
    Corrupt(String),
    #[error("installing from the snapshot file: {0}")]
    Visit(String),
}

/// One record of a snapshot, as [`scan`] hands them out.
#[derive(Debug, PartialEq, Eq)]
pub enum Item<'a> {
    Table(&'a str),
    Pair(&'a [u8], &'a [u8]),
}

/// What a scan saw.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub tables: u64,
    pub pairs: u64,
    pub size_bytes: u64,
}

/// Writes a snapshot file. [`Writer::finish`] makes it durable; a file
/// without its end record is never accepted by [`scan`].
pub struct Writer {
    out: BufWriter<File>,
    hasher: blake3::Hasher,
}

impl Writer {
    pub fn create(path: &Path) -> Result<Writer, SnapshotFileError> {
        let file = File::create(path)?;
        let mut writer = Writer {
            out: BufWriter::with_capacity(IO_BUFFER_BYTES, file),
            hasher: blake3::Hasher::new(),
        };
        writer.put(MAGIC)?;
        Ok(writer)
    }

    pub fn table(&mut self, name: &str) -> Result<(), SnapshotFileError> {
        let len = u16::try_from(name.len()).map_err(|_| SnapshotFileError::Corrupt(format!("table name {name:?}")))?;
        self.put(&[TAG_TABLE])?;
        self.put(&len.to_be_bytes())?;
        self.put(name.as_bytes())
    }

    pub fn pair(&mut self, key: &[u8], value: &[u8]) -> Result<(), SnapshotFileError> {
        self.put(&[TAG_PAIR])?;
        self.field(key)?;
        self.field(value)
    }

    /// Appends the end record and fsyncs the file.
    pub fn finish(mut self) -> Result<(), SnapshotFileError> {
        self.put(&[TAG_END])?;
        let hash = self.hasher.finalize();
        self.out.write_all(hash.as_bytes())?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(())
    }

    fn field(&mut self, bytes: &[u8]) -> Result<(), SnapshotFileError> {
        let len = u32::try_from(bytes.len())
            .ok()
            .filter(|len| *len <= FIELD_BYTES_MAX)
            .ok_or_else(|| SnapshotFileError::Corrupt(format!("a field of {} bytes", bytes.len())))?;
        self.put(&len.to_be_bytes())?;
        self.put(bytes)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), SnapshotFileError> {
        self.hasher.update(bytes);
        self.out.write_all(bytes)?;
        Ok(())
    }
}

/// Reads the file at `path` record by record, handing each to `visit`, and
/// checks its checksum at the end. `visit` sees records before the checksum
/// is known: run a scan with a no-op visitor first ([`verify`]) before
/// acting on a file that may be damaged.
pub fn scan(path: &Path, visit: &mut dyn FnMut(Item<'_>) -> Result<(), String>) -> Result<Summary, SnapshotFileError> {
    let mut reader = HashingReader {
        inner: BufReader::with_capacity(IO_BUFFER_BYTES, File::open(path)?),
        hasher: blake3::Hasher::new(),
        read_bytes: 0,
    };
    let mut magic = [0u8; 8];
    reader.exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(SnapshotFileError::Corrupt("not a snapshot file (bad magic)".into()));
    }
    let mut summary = Summary::default();
    let mut in_table = false;
    let (mut key, mut value) = (Vec::new(), Vec::new());
    loop {
        let mut tag = [0u8; 1];
        reader.exact(&mut tag)?;
        match tag[0] {
            TAG_TABLE => {
                let mut len = [0u8; 2];
                reader.exact(&mut len)?;
                let mut name = vec![0u8; usize::from(u16::from_be_bytes(len))];
                reader.exact(&mut name)?;
                let name = String::from_utf8(name)
                    .map_err(|_| SnapshotFileError::Corrupt("a table name is not UTF-8".into()))?;
                visit(Item::Table(&name)).map_err(SnapshotFileError::Visit)?;
                summary.tables += 1;
                in_table = true;
            }
            TAG_PAIR if in_table => {
                reader.field(&mut key)?;
                reader.field(&mut value)?;
                visit(Item::Pair(&key, &value)).map_err(SnapshotFileError::Visit)?;
                summary.pairs += 1;
            }
            TAG_PAIR => return Err(SnapshotFileError::Corrupt("a pair before any table".into())),
            TAG_END => break,
            other => return Err(SnapshotFileError::Corrupt(format!("unknown record tag {other}"))),
        }
    }
    let computed = reader.hasher.finalize();
    let mut stored = [0u8; 32];
    reader.inner.read_exact(&mut stored).map_err(truncated)?;
    if computed.as_bytes() != &stored {
        return Err(SnapshotFileError::Corrupt("checksum mismatch".into()));
    }
    let mut trailing = [0u8; 1];
    if reader.inner.read(&mut trailing)? != 0 {
        return Err(SnapshotFileError::Corrupt("bytes after the checksum".into()));
    }
    summary.size_bytes = reader.read_bytes + 32;
    Ok(summary)
}

/// Checks a whole file (format and checksum) without acting on it.
pub fn verify(path: &Path) -> Result<Summary, SnapshotFileError> {
    scan(path, &mut |_| Ok(()))
}

fn truncated(e: std::io::Error) -> SnapshotFileError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        SnapshotFileError::Corrupt("truncated".into())
    } else {
        SnapshotFileError::Io(e)
    }
}

struct HashingReader {
    inner: BufReader<File>,
    hasher: blake3::Hasher,
    read_bytes: u64,
}

impl HashingReader {
    fn exact(&mut self, buf: &mut [u8]) -> Result<(), SnapshotFileError> {
        self.inner.read_exact(buf).map_err(truncated)?;
        self.hasher.update(buf);
        self.read_bytes += buf.len() as u64;
        Ok(())
    }

    /// Reads a length-prefixed field into `out` (reused across records).
    fn field(&mut self, out: &mut Vec<u8>) -> Result<(), SnapshotFileError> {
        let mut len = [0u8; 4];
        self.exact(&mut len)?;
        let len = u32::from_be_bytes(len);
        if len > FIELD_BYTES_MAX {
            return Err(SnapshotFileError::Corrupt(format!("a field of {len} bytes")));
        }
        out.resize(len as usize, 0);
        self.exact(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(path: &Path) {
        let mut writer = Writer::create(path).expect("create");
        writer.table("a").expect("table");
        writer.pair(b"k1", b"v1").expect("pair");
        writer.pair(b"", b"").expect("pair");
        writer.table("b").expect("table");
        writer.pair(b"k2", &[7u8; 3000]).expect("pair");
        writer.finish().expect("finish");
    }

    fn items(path: &Path) -> Result<Vec<String>, SnapshotFileError> {
        let mut seen = Vec::new();
        scan(path, &mut |item| {
            seen.push(match item {
                Item::Table(name) => format!("table {name}"),
                Item::Pair(k, v) => format!("{} = {} bytes", String::from_utf8_lossy(k), v.len()),
            });
            Ok(())
        })?;
        Ok(seen)
    }

    #[test]
    fn a_written_file_reads_back_record_by_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s");
        sample(&path);
        assert_eq!(
            items(&path).expect("scan"),
            ["table a", "k1 = 2 bytes", " = 0 bytes", "table b", "k2 = 3000 bytes"]
        );
        let summary = verify(&path).expect("verify");
        assert_eq!((summary.tables, summary.pairs), (2, 3));
        assert_eq!(summary.size_bytes, std::fs::metadata(&path).expect("stat").len());
    }

    #[test]
    fn every_flipped_byte_and_every_truncation_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s");
        sample(&path);
        let good = std::fs::read(&path).expect("read");
        let damaged = dir.path().join("d");
        for at in 0..good.len() {
            let mut bytes = good.clone();
            bytes[at] ^= 0x10;
            std::fs::write(&damaged, &bytes).expect("write");
            assert!(verify(&damaged).is_err(), "flip at byte {at} accepted");
        }
        for len in 0..good.len() {
            std::fs::write(&damaged, &good[..len]).expect("write");
            assert!(verify(&damaged).is_err(), "truncation to {len} bytes accepted");
        }
        let mut longer = good.clone();
        longer.push(0);
        std::fs::write(&damaged, &longer).expect("write");
        assert!(verify(&damaged).is_err(), "a trailing byte accepted");
    }

    #[test]
    fn a_visitor_error_stops_the_scan() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s");
        sample(&path);
        let result = scan(&path, &mut |item| match item {
            Item::Table("b") => Err("unknown table b".into()),
            _ => Ok(()),
        });
        assert!(matches!(result, Err(SnapshotFileError::Visit(m)) if m.contains("unknown table b")));
    }
}
