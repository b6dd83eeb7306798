//! Byte encodings of the namespace tables' keys and values.
//!
//! Values are postcard. Keys are built so that RocksDB's byte order is the
//! order the namespace needs: a name key is `bucket 0x00 escaped(key) 0x00
//! 0x01`, where `escaped` turns every `0x00` byte of the object key into
//! `0x00 0xFF`. Bucket names never contain `0x00`, and the escape keeps byte
//! order, so name keys sort by bucket, then by key bytes (S3 order), and the
//! escaped form of a key prefix is a byte prefix of the escaped form of every
//! key that starts with it (what listing uses to skip a common prefix).

use serde::Deserialize;

use super::{Fail, NamespaceError};
use tessera_raft::kv::{self, KvRead, Table};

pub use tessera_raft::kv::encode;

/// Deserializes a stored value; a failure is corruption, not a panic.
pub fn decode<T: for<'de> Deserialize<'de>>(table: Table, bytes: &[u8]) -> Result<T, Fail> {
    Ok(kv::decode(table, bytes)?)
}

/// The corruption refusal for `table`.
pub fn corrupt(table: Table, detail: &str) -> Fail {
    Fail::Refused(NamespaceError::Corrupt {
        table: table.to_string(),
        detail: detail.to_string(),
    })
}

/// Reads and decodes one value.
pub fn get<R: KvRead + ?Sized, T: for<'de> Deserialize<'de>>(
    view: &R,
    table: Table,
    key: &[u8],
) -> Result<Option<T>, Fail> {
    Ok(kv::get(view, table, key)?)
}

/// Appends the order-preserving escape of `bytes` (no terminator).
fn escape_into(out: &mut Vec<u8>, bytes: &[u8]) {
    for &byte in bytes {
        out.push(byte);
        if byte == 0 {
            out.push(0xFF);
        }
    }
}

/// `bucket 0x00 escaped(prefix)`: a byte prefix of the name key of every key
/// of `bucket` starting with `prefix`.
pub fn name_prefix(bucket: &str, prefix: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(bucket.len() + prefix.len() + 3);
    out.extend_from_slice(bucket.as_bytes());
    out.push(0);
    escape_into(&mut out, prefix.as_bytes());
    out
}

/// The full name key of `(bucket, key)`.
pub fn name_key(bucket: &str, key: &str) -> Vec<u8> {
    let mut out = name_prefix(bucket, key);
    out.extend_from_slice(&[0, 1]);
    out
}

/// Splits a name key (possibly followed by a suffix) into bucket, object key
/// and the suffix.
pub fn decode_name_key(table: Table, bytes: &[u8]) -> Result<(String, String, &[u8]), Fail> {
    let split = bytes
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| corrupt(table, "name key without bucket separator"))?;
    let bucket = utf8(table, &bytes[..split])?;
    let mut key = Vec::new();
    let mut index = split + 1;
    loop {
        match (bytes.get(index), bytes.get(index + 1)) {
            (Some(&0), Some(&0xFF)) => key.push(0),
            (Some(&0), Some(&1)) => break,
            (Some(&byte), _) if byte != 0 => {
                key.push(byte);
                index += 1;
                continue;
            }
            _ => return Err(corrupt(table, "bad escape in name key")),
        }
        index += 2;
    }
    let key = utf8(table, &key)?;
    Ok((bucket, key, &bytes[index + 2..]))
}

fn utf8(table: Table, bytes: &[u8]) -> Result<String, Fail> {
    String::from_utf8(bytes.to_vec()).map_err(|_| corrupt(table, "key is not utf-8"))
}

/// The smallest byte string greater than every string starting with
/// `prefix`; `None` when there is none (all bytes 0xFF).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut out = prefix.to_vec();
    while let Some(last) = out.pop() {
        if last < 0xFF {
            out.push(last + 1);
            return Some(out);
        }
    }
    None
}

/// The smallest byte string greater than `key`.
pub fn key_after(key: &[u8]) -> Vec<u8> {
    let mut out = key.to_vec();
    out.push(0);
    out
}

/// A string as a length-prefixed key component (ids chosen by proposers).
pub fn str_component(out: &mut Vec<u8>, text: &str) {
    // Callers validate ids to at most u16::MAX bytes.
    let len = u16::try_from(text.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// Parses a big-endian integer of `N` bytes at the end of a key.
pub fn be_tail<const N: usize>(table: Table, bytes: &[u8]) -> Result<[u8; N], Fail> {
    bytes
        .len()
        .checked_sub(N)
        .and_then(|start| bytes[start..].try_into().ok())
        .ok_or_else(|| corrupt(table, "key too short"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_keys_sort_in_s3_order_and_round_trip() {
        let keys = ["", "a", "a\0", "a\0b", "a\u{1}", "a/b", "ab", "b"];
        let encoded: Vec<Vec<u8>> = keys.iter().map(|k| name_key("bk", k)).collect();
        let mut sorted = encoded.clone();
        sorted.sort();
        assert_eq!(encoded, sorted);
        assert!(name_key("bk", "zzz") < name_key("bl", ""));
        assert!(name_key("b", "zzz") < name_key("bk", ""));
        for key in keys {
            let mut bytes = name_key("bk", key);
            bytes.extend_from_slice(b"tail");
            let (bucket, decoded, rest) = decode_name_key("t", &bytes).expect("decode");
            assert_eq!((bucket.as_str(), decoded.as_str(), rest), ("bk", key, &b"tail"[..]));
        }
    }

    #[test]
    fn prefixes_bound_their_keys() {
        let prefix = name_prefix("bk", "a\0");
        let end = prefix_end(&prefix).expect("end");
        for key in ["a\0", "a\0\0", "a\0zz"] {
            let k = name_key("bk", key);
            assert!(k.starts_with(&prefix) && k < end, "{key:?}");
        }
        assert!(name_key("bk", "a\u{1}") >= end);
        assert_eq!(prefix_end(&[1, 0xFF, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xFF]), None);
    }

    #[test]
    fn garbage_is_corruption_not_panic() {
        assert!(decode_name_key("t", b"nozero").is_err());
        assert!(decode_name_key("t", b"b\0a\0").is_err());
        assert!(decode::<(u64, String)>("t", &[0xFF, 0xFF]).is_err());
        assert!(be_tail::<8>("t", b"abc").is_err());
    }
}
