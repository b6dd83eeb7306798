//! Reads of an object's bytes for GET and copies: the byte range is mapped
//! onto the uids that hold it (one uid, or the parts of a multipart
//! object in order) and read from the object servers in pieces. Every byte
//! was checksum-verified by the chunk servers and again in transit
//! (`OsClient::read`).
//!
//! The first piece is read before the response starts, so a failure there
//! is a proper S3 error; the rest is read by a task one piece ahead of the
//! client. A failure after the headers were sent can only cut the body
//! short: the client sees fewer bytes than the Content-Length.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use s3s::dto::StreamingBlob;
use s3s::S3Error;
use tessera_common::ns_api::ObjectInfo;

use crate::backend::Backend;
use crate::errors::os_error;

/// A contiguous range of one uid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub uid: u128,
    pub offset: u64,
    pub len: u64,
}

/// The pieces (each at most `piece_bytes`) holding `range` of the object.
pub fn pieces(info: &ObjectInfo, range: Range<u64>, piece_bytes: u64) -> Vec<Piece> {
    assert!(piece_bytes > 0 && range.end <= info.size, "a range inside the object");
    let extents: Vec<(u128, u64)> = if info.parts.is_empty() {
        vec![(info.uid, info.size)]
    } else {
        info.parts.iter().map(|p| (p.uid, p.size)).collect()
    };
    let mut out = Vec::new();
    let mut start = 0u64;
    for (uid, size) in extents {
        let (lo, hi) = (range.start.max(start), range.end.min(start + size));
        let mut at = lo;
        while at < hi {
            let len = (hi - at).min(piece_bytes);
            out.push(Piece {
                uid,
                offset: at - start,
                len,
            });
            at += len;
        }
        start += size;
    }
    debug_assert_eq!(out.iter().map(|p| p.len).sum::<u64>(), range.end - range.start);
    out
}

impl Backend {
    async fn read_piece(&self, piece: Piece) -> Result<Bytes, S3Error> {
        let bytes = self
            .os
            .read(piece.uid, piece.offset, piece.len)
            .await
            .map_err(os_error)?;
        if bytes.len() as u64 != piece.len {
            return Err(crate::errors::internal("object read", &"short read"));
        }
        Ok(bytes)
    }

    /// Reads `range` of the object whole (for small ranges and copies of
    /// a piece).
    pub async fn read_range(&self, info: &ObjectInfo, range: Range<u64>) -> Result<Bytes, S3Error> {
        let mut out = bytes::BytesMut::with_capacity((range.end - range.start) as usize);
        for piece in pieces(info, range, self.settings.read_piece_bytes as u64) {
            out.extend_from_slice(&self.read_piece(piece).await?);
        }
        Ok(out.freeze())
    }

    /// Streams `range` of the object (see the module documentation).
    pub async fn read_stream(self: &Arc<Self>, info: &ObjectInfo, range: Range<u64>) -> Result<StreamingBlob, S3Error> {
        let mut pieces = pieces(info, range, self.settings.read_piece_bytes as u64).into_iter();
        let first = match pieces.next() {
            Some(piece) => self.read_piece(piece).await?,
            None => Bytes::new(),
        };
        let rest: Vec<Piece> = pieces.collect();
        let head = futures::stream::once(futures::future::ready(Ok::<_, std::io::Error>(first)));
        if rest.is_empty() {
            return Ok(StreamingBlob::wrap(head));
        }
        let (mut tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        let backend = self.clone();
        tokio::spawn(async move {
            for piece in rest {
                let item = backend
                    .read_piece(piece)
                    .await
                    .map_err(|e| std::io::Error::other(format!("reading the object failed: {e}")));
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(StreamingBlob::wrap(head.chain(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_common::ns_api::PartInfo;

    fn object(size: u64, parts: &[(u128, u64)]) -> ObjectInfo {
        ObjectInfo {
            uid: 7,
            version_id: String::new(),
            size,
            etag: String::new(),
            content_type: None,
            user_meta: Vec::new(),
            mtime_ms: 0,
            partition: 0,
            system_meta: Vec::new(),
            parts: parts
                .iter()
                .enumerate()
                .map(|(i, (uid, size))| PartInfo {
                    part_number: i as u32 + 1,
                    uid: *uid,
                    size: *size,
                    etag: String::new(),
                    partition: 0,
                })
                .collect(),
        }
    }

    #[test]
    fn a_plain_object_is_cut_into_pieces() {
        let got = pieces(&object(10, &[]), 1..10, 4);
        let want = [(1, 4), (5, 4), (9, 1)].map(|(offset, len)| Piece { uid: 7, offset, len });
        assert_eq!(got, want);
        assert!(pieces(&object(0, &[]), 0..0, 4).is_empty());
    }

    #[test]
    fn a_range_spans_parts() {
        let info = object(15, &[(1, 5), (2, 5), (3, 5)]);
        let got = pieces(&info, 3..12, 100);
        let want = [(1, 3, 2), (2, 0, 5), (3, 0, 2)].map(|(uid, offset, len)| Piece { uid, offset, len });
        assert_eq!(got, want);
        assert_eq!(
            pieces(&info, 5..10, 100),
            vec![Piece {
                uid: 2,
                offset: 0,
                len: 5
            }]
        );
    }
}
