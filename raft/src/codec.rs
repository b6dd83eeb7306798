//! Postcard encoding of everything Raft stores or sends, with typed errors
//! (decoding never panics on hostile or corrupt bytes), and the big-endian
//! keys of the log so RocksDB orders entries by index.

use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("encoding {what}: {source}")]
    Encode {
        what: &'static str,
        source: postcard::Error,
    },
    #[error("decoding {what}: {source}")]
    Decode {
        what: &'static str,
        source: postcard::Error,
    },
    #[error("log key of {0} bytes, expected 8")]
    BadLogKey(usize),
}

pub fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, CodecError> {
    postcard::to_stdvec(value).map_err(|source| CodecError::Encode { what, source })
}

pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, CodecError> {
    postcard::from_bytes(bytes).map_err(|source| CodecError::Decode { what, source })
}

/// Key of the log entry at `index`: big-endian, so key order is index order.
pub fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

pub fn log_index(key: &[u8]) -> Result<u64, CodecError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| CodecError::BadLogKey(key.len()))?;
    Ok(u64::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_by_index_and_round_trip() {
        let indexes = [0u64, 1, 255, 256, 65_536, u64::MAX - 1];
        let mut keys: Vec<_> = indexes.iter().map(|i| log_key(*i)).collect();
        keys.sort();
        let back: Vec<u64> = keys.iter().map(|k| log_index(k).expect("8 bytes")).collect();
        assert_eq!(back, indexes);
        assert!(log_index(&[1, 2, 3]).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode::<crate::LogId>("log id", &[0xff; 5]).is_err());
        assert!(decode::<crate::Vote>("vote", &[]).is_err());
    }
}
