//! Reading and writing frames (see [`crate::wire`]) on any byte stream: the
//! same format on QUIC streams and on the TCP+TLS data channel.
//!
//! ```text
//! magic u16 LE | version u16 LE | header_len u32 LE | header | body | bulk
//! ```
//!
//! Every length is checked against its bound before anything is allocated,
//! and payload buffers grow with the bytes actually received, so a hostile
//! peer can neither panic the reader nor make it allocate more than it sends
//! (plus one bounded step). Malformed input is [`RpcError::Frame`]; a newer
//! wire version is [`RpcError::Version`]. Bulk is written as the caller's
//! [`Bytes`], never copied into the frame buffer.

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::RpcError;
use crate::wire::{
    RequestHeader, ResponseHeader, Wire, BODY_BYTES_MAX, BULK_BYTES_MAX, FRAME_MAGIC, HEADER_BYTES_MAX, WIRE_VERSION,
};

/// Bytes before the header: magic, version, header length.
pub const PREFIX_BYTES: usize = 8;
/// Largest step by which a payload buffer grows ahead of the bytes received.
const PAYLOAD_STEP_BYTES_MAX: usize = 8 * 1024 * 1024;

/// A request or response header: it announces the lengths that follow it.
pub trait FrameHeader: Wire {
    fn body_len(&self) -> u32;
    fn bulk_len(&self) -> u64;
}

impl FrameHeader for RequestHeader {
    fn body_len(&self) -> u32 {
        self.body_len
    }
    fn bulk_len(&self) -> u64 {
        self.bulk_len
    }
}

impl FrameHeader for ResponseHeader {
    fn body_len(&self) -> u32 {
        self.body_len
    }
    fn bulk_len(&self) -> u64 {
        self.bulk_len
    }
}

/// One decoded frame: header validated, body still encoded, bulk raw.
#[derive(Debug)]
pub struct Frame<H> {
    pub header: H,
    pub body: Bytes,
    pub bulk: Bytes,
}

/// Encodes prefix, header and body into one buffer. The caller sends `bulk`
/// (of `bulk_len` bytes) right after it. Checks that the header announces the
/// lengths actually sent and that all are within bounds.
pub fn encode_head<H: FrameHeader>(header: &H, body: &[u8], bulk_len: usize) -> Result<Bytes, RpcError> {
    if header.body_len() as usize != body.len() || header.bulk_len() != bulk_len as u64 {
        return Err(RpcError::Frame(format!(
            "header announces body {} / bulk {} bytes but {} / {} are sent",
            header.body_len(),
            header.bulk_len(),
            body.len(),
            bulk_len
        )));
    }
    check_payload_lens(header.body_len(), header.bulk_len())?;
    let encoded = header.to_wire()?;
    let header_len = u32::try_from(encoded.len()).unwrap_or(u32::MAX);
    if header_len > HEADER_BYTES_MAX {
        return Err(RpcError::Frame(format!(
            "header of {header_len} bytes exceeds {HEADER_BYTES_MAX}"
        )));
    }
    let mut head = BytesMut::with_capacity(PREFIX_BYTES + encoded.len() + body.len());
    head.put_u16_le(FRAME_MAGIC);
    head.put_u16_le(WIRE_VERSION);
    head.put_u32_le(header_len);
    head.put_slice(&encoded);
    head.put_slice(body);
    Ok(head.freeze())
}

/// Writes one frame and flushes. I/O failures are [`RpcError::Transport`].
pub async fn write_frame<H, W>(w: &mut W, header: &H, body: &[u8], bulk: &Bytes) -> Result<(), RpcError>
where
    H: FrameHeader,
    W: AsyncWrite + Unpin,
{
    let head = encode_head(header, body, bulk.len())?;
    w.write_all(&head).await.map_err(io_error)?;
    if !bulk.is_empty() {
        w.write_all(bulk).await.map_err(io_error)?;
    }
    w.flush().await.map_err(io_error)
}

/// Writes one frame on a QUIC stream, handing `bulk` to quinn without a
/// copy. Does not finish the stream.
pub async fn write_frame_quic<H: FrameHeader>(
    send: &mut quinn::SendStream,
    header: &H,
    body: &[u8],
    bulk: &Bytes,
) -> Result<(), RpcError> {
    let head = encode_head(header, body, bulk.len())?;
    let mut chunks = [head, bulk.clone()];
    send.write_all_chunks(&mut chunks)
        .await
        .map_err(|e| RpcError::Transport(format!("writing frame: {e}")))
}

/// Reads one whole frame.
pub async fn read_frame<H, R>(r: &mut R) -> Result<Frame<H>, RpcError>
where
    H: FrameHeader,
    R: AsyncRead + Unpin,
{
    let mut prefix = [0u8; PREFIX_BYTES];
    r.read_exact(&mut prefix)
        .await
        .map_err(|e| truncated_or_io(e, "prefix"))?;
    read_frame_after_prefix(r, prefix).await
}

/// Reads the rest of a frame whose first [`PREFIX_BYTES`] were already read
/// (e.g. while waiting for the next request on an idle connection).
pub async fn read_frame_after_prefix<H, R>(r: &mut R, prefix: [u8; PREFIX_BYTES]) -> Result<Frame<H>, RpcError>
where
    H: FrameHeader,
    R: AsyncRead + Unpin,
{
    let header_len = check_prefix(prefix)?;
    let mut header_bytes = vec![0u8; header_len as usize];
    r.read_exact(&mut header_bytes)
        .await
        .map_err(|e| truncated_or_io(e, "header"))?;
    let header = H::from_wire(&header_bytes).map_err(|e| RpcError::Frame(format!("bad header: {e}")))?;
    check_payload_lens(header.body_len(), header.bulk_len())?;
    let body = read_payload(r, header.body_len() as u64, "body").await?;
    let bulk = read_payload(r, header.bulk_len(), "bulk").await?;
    Ok(Frame { header, body, bulk })
}

/// Validates magic, version and header length; returns the header length.
pub fn check_prefix(prefix: [u8; PREFIX_BYTES]) -> Result<u32, RpcError> {
    let magic = u16::from_le_bytes([prefix[0], prefix[1]]);
    let version = u16::from_le_bytes([prefix[2], prefix[3]]);
    let header_len = u32::from_le_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]);
    if magic != FRAME_MAGIC {
        return Err(RpcError::Frame(format!("bad magic {magic:#06x}")));
    }
    if version > WIRE_VERSION {
        return Err(RpcError::Version(version));
    }
    if version == 0 {
        return Err(RpcError::Frame("wire version 0".into()));
    }
    if header_len == 0 || header_len > HEADER_BYTES_MAX {
        return Err(RpcError::Frame(format!(
            "header length {header_len} outside 1..={HEADER_BYTES_MAX}"
        )));
    }
    Ok(header_len)
}

fn check_payload_lens(body_len: u32, bulk_len: u64) -> Result<(), RpcError> {
    if body_len > BODY_BYTES_MAX {
        return Err(RpcError::Frame(format!(
            "body of {body_len} bytes exceeds {BODY_BYTES_MAX}"
        )));
    }
    if bulk_len > BULK_BYTES_MAX {
        return Err(RpcError::Frame(format!(
            "bulk of {bulk_len} bytes exceeds {BULK_BYTES_MAX}"
        )));
    }
    Ok(())
}

/// Reads exactly `len` bytes (already bounded by the caller), growing the
/// buffer at most [`PAYLOAD_STEP_BYTES_MAX`] ahead of what arrived.
async fn read_payload<R: AsyncRead + Unpin>(r: &mut R, len: u64, what: &str) -> Result<Bytes, RpcError> {
    let len = usize::try_from(len).map_err(|_| RpcError::Frame(format!("{what} length {len} too large")))?;
    if len == 0 {
        return Ok(Bytes::new());
    }
    let mut buf = BytesMut::with_capacity(len.min(PAYLOAD_STEP_BYTES_MAX));
    while buf.len() < len {
        let missing = len - buf.len();
        if buf.capacity() == buf.len() {
            buf.reserve(missing.min(buf.len().clamp(1, PAYLOAD_STEP_BYTES_MAX)));
        }
        let n = (&mut *r)
            .take(missing as u64)
            .read_buf(&mut buf)
            .await
            .map_err(io_error)?;
        if n == 0 {
            return Err(RpcError::Frame(format!(
                "truncated {what}: got {} of {len} bytes",
                buf.len()
            )));
        }
    }
    Ok(buf.freeze())
}

fn truncated_or_io(e: std::io::Error, what: &str) -> RpcError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        RpcError::Frame(format!("truncated {what}"))
    } else {
        io_error(e)
    }
}

fn io_error(e: std::io::Error) -> RpcError {
    RpcError::Transport(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body_len: u32, bulk_len: u64) -> RequestHeader {
        RequestHeader {
            request_id: 42,
            method: "test.echo".into(),
            deadline_ms: 1000,
            body_len,
            bulk_len,
        }
    }

    async fn encode(body: &[u8], bulk: &Bytes) -> Vec<u8> {
        let mut out = Vec::new();
        let header = request(body.len() as u32, bulk.len() as u64);
        write_frame(&mut out, &header, body, bulk).await.unwrap();
        out
    }

    #[tokio::test]
    async fn round_trip() {
        let bulk = Bytes::from((0..100_000u32).map(|i| i as u8).collect::<Vec<_>>());
        let wire = encode(b"hello", &bulk).await;
        let frame: Frame<RequestHeader> = read_frame(&mut wire.as_slice()).await.unwrap();
        assert_eq!(frame.header, request(5, bulk.len() as u64));
        assert_eq!(&frame.body[..], b"hello");
        assert_eq!(frame.bulk, bulk);
    }

    #[tokio::test]
    async fn every_truncation_is_a_frame_error() {
        let wire = encode(b"body", &Bytes::from_static(b"bulk bytes")).await;
        for cut in 0..wire.len() {
            let err = read_frame::<RequestHeader, _>(&mut &wire[..cut]).await.unwrap_err();
            assert!(matches!(err, RpcError::Frame(_)), "cut {cut}: {err:?}");
        }
    }

    #[tokio::test]
    async fn bad_prefixes_are_rejected_before_allocating() {
        let mut wire = encode(b"", &Bytes::new()).await;
        wire[0] ^= 0xff;
        assert!(matches!(
            read_frame::<RequestHeader, _>(&mut wire.as_slice()).await,
            Err(RpcError::Frame(_))
        ));

        let mut wire = encode(b"", &Bytes::new()).await;
        wire[2..4].copy_from_slice(&(WIRE_VERSION + 1).to_le_bytes());
        let err = read_frame::<RequestHeader, _>(&mut wire.as_slice()).await.unwrap_err();
        assert!(matches!(err, RpcError::Version(v) if v == WIRE_VERSION + 1));

        let mut wire = encode(b"", &Bytes::new()).await;
        wire[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            read_frame::<RequestHeader, _>(&mut wire.as_slice()).await,
            Err(RpcError::Frame(_))
        ));
    }

    #[tokio::test]
    async fn oversized_lengths_in_header_are_rejected() {
        for (body_len, bulk_len) in [(BODY_BYTES_MAX + 1, 0), (0, BULK_BYTES_MAX + 1), (u32::MAX, u64::MAX)] {
            let header = request(body_len, bulk_len).to_wire().unwrap();
            let mut wire = Vec::new();
            wire.extend_from_slice(&FRAME_MAGIC.to_le_bytes());
            wire.extend_from_slice(&WIRE_VERSION.to_le_bytes());
            wire.extend_from_slice(&(header.len() as u32).to_le_bytes());
            wire.extend_from_slice(&header);
            let err = read_frame::<RequestHeader, _>(&mut wire.as_slice()).await.unwrap_err();
            assert!(matches!(err, RpcError::Frame(_)), "{err:?}");
        }
    }

    #[tokio::test]
    async fn garbage_never_panics() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..300usize {
            let mut garbage = Vec::with_capacity(len + PREFIX_BYTES);
            if len % 2 == 0 {
                // A valid prefix followed by junk exercises the header decoder.
                garbage.extend_from_slice(&FRAME_MAGIC.to_le_bytes());
                garbage.extend_from_slice(&WIRE_VERSION.to_le_bytes());
                garbage.extend_from_slice(&(len as u32).to_le_bytes());
            }
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                garbage.push(seed as u8);
            }
            assert!(read_frame::<ResponseHeader, _>(&mut garbage.as_slice()).await.is_err());
        }
    }

    #[test]
    fn encode_refuses_lengths_that_disagree() {
        assert!(matches!(encode_head(&request(3, 0), b"ab", 0), Err(RpcError::Frame(_))));
        assert!(matches!(encode_head(&request(0, 1), b"", 0), Err(RpcError::Frame(_))));
    }
}
