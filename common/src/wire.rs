//! Wire encoding: every message is an rkyv archive, validated (bytecheck) on
//! receipt. A call on the wire is one stream carrying a frame:
//!
//! ```text
//! magic u16 "TS" | version u16 | header_len u32 | header | body | bulk
//! ```
//!
//! `header` is a [`RequestHeader`] or [`ResponseHeader`] archive, `body` the
//! method's request or response archive (`header.body_len` bytes), and `bulk`
//! an optional raw payload (`header.bulk_len` bytes) that is never copied into
//! an archive. Every length is bounded before anything is allocated.

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

/// First two bytes of every frame.
pub const FRAME_MAGIC: u16 = 0x5453; // "TS"
/// Wire format version this build speaks. A peer sending a higher version
/// gets `RpcError::Version`; new fields go into new methods or versions.
pub const WIRE_VERSION: u16 = 1;
/// Upper bound of an encoded header.
pub const HEADER_BYTES_MAX: u32 = 16 * 1024;
/// Upper bound of an encoded request or response body.
pub const BODY_BYTES_MAX: u32 = 4 * 1024 * 1024;
/// Upper bound of a bulk payload carried by one call.
pub const BULK_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// Failure to encode or decode one message.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("encode failed: {0}")]
    Encode(String),
    #[error("decode failed (invalid or truncated archive): {0}")]
    Decode(String),
}

/// A type that travels on the wire as a validated rkyv archive.
///
/// Implemented for every type whose archive can be checked and deserialized;
/// callers only ever write `T: Wire`.
pub trait Wire: Sized {
    fn to_wire(&self) -> Result<AlignedVec, WireError>;
    /// Validates `bytes` before reading anything; never panics on hostile input.
    fn from_wire(bytes: &[u8]) -> Result<Self, WireError>;
}

impl<T> Wire for T
where
    T: Archive + for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>> + Deserialize<T, HighDeserializer<rancor::Error>>,
{
    fn to_wire(&self) -> Result<AlignedVec, WireError> {
        rkyv::to_bytes::<rancor::Error>(self).map_err(|e| WireError::Encode(e.to_string()))
    }

    fn from_wire(bytes: &[u8]) -> Result<Self, WireError> {
        // rkyv needs the archive aligned; received buffers have no such promise.
        let mut aligned = AlignedVec::<16>::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        rkyv::from_bytes::<T, rancor::Error>(&aligned).map_err(|e| WireError::Decode(e.to_string()))
    }
}

/// Sent first on every request stream.
#[derive(Clone, Debug, PartialEq, Archive, Serialize, Deserialize)]
pub struct RequestHeader {
    /// Correlates logs across nodes; chosen by the caller.
    pub request_id: u64,
    /// [`crate::rpc::Method::NAME`] of the call.
    pub method: String,
    /// Budget left for the call when sent; the server gives up after it.
    pub deadline_ms: u32,
    pub body_len: u32,
    pub bulk_len: u64,
}

/// Outcome of a call at the RPC layer. Application errors travel inside the
/// method's response body (typically `Result<T, E>`), not here.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum CallStatus {
    Ok,
    UnknownMethod,
    BadRequest(String),
    DeadlineExceeded,
    ShuttingDown,
    Internal(String),
}

/// Sent first on every response stream.
#[derive(Clone, Debug, PartialEq, Archive, Serialize, Deserialize)]
pub struct ResponseHeader {
    pub request_id: u64,
    pub status: CallStatus,
    pub body_len: u32,
    pub bulk_len: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = RequestHeader {
            request_id: 7,
            method: "chunk.append".into(),
            deadline_ms: 1000,
            body_len: 10,
            bulk_len: 4096,
        };
        let bytes = h.to_wire().unwrap();
        assert_eq!(RequestHeader::from_wire(&bytes).unwrap(), h);
    }

    #[test]
    fn truncated_or_garbage_archive_is_an_error_not_a_panic() {
        let h = RequestHeader {
            request_id: 7,
            method: "chunk.append".into(),
            deadline_ms: 1000,
            body_len: 10,
            bulk_len: 4096,
        };
        let bytes = h.to_wire().unwrap();
        for cut in 0..bytes.len() {
            let _ = RequestHeader::from_wire(&bytes[..cut]); // must not panic
        }
        assert!(RequestHeader::from_wire(&[]).is_err());
        let mut garbage = bytes.to_vec();
        for b in garbage.iter_mut() {
            *b = b.wrapping_mul(31).wrapping_add(17);
        }
        let _ = RequestHeader::from_wire(&garbage); // must not panic
        assert!(RequestHeader::from_wire(&[0xff; 3]).is_err());
    }
}
