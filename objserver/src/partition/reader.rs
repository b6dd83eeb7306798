//! Reads of a uid's range: a linearizable lookup of the extents covering
//! it, then the stripes' data fragments (degraded decode inside
//! [`crate::group_io::GroupIo::read`] when one is missing or damaged).
//! Holes read as zeros.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use futures::stream::{self, StreamExt, TryStreamExt};
use tessera_common::os_api::{OsError, IO_BYTES_MAX};

use super::{propose_error, PartitionCtx};
use crate::group_io::GroupIoError;
use crate::placement::GroupId;
use crate::state::{Query, QueryResponse};

/// Fragment reads in flight per client read.
const READS_IN_FLIGHT: usize = 8;

/// Cancellation safe (reads only).
pub async fn read(ctx: &PartitionCtx, uid: u128, offset: u64, len: u64) -> Result<Bytes, OsError> {
    if len > IO_BYTES_MAX {
        return Err(OsError::BadRequest(format!(
            "read of {len} bytes, at most {IO_BYTES_MAX}"
        )));
    }
    let end = offset
        .checked_add(len)
        .ok_or_else(|| OsError::BadRequest("range past 2^64".into()))?;
    let (object, extents, groups) = match ctx
        .raft
        .read_local(Query::Lookup { uid, offset, len })
        .await
        .map_err(propose_error)?
    {
        QueryResponse::Lookup {
            object,
            extents,
            groups,
        } => (object, extents, groups),
        other => return Err(OsError::Internal(format!("unexpected answer {other:?}"))),
    };
    if object.is_none() {
        return Err(OsError::NoSuchUid);
    }
    let placements: BTreeMap<GroupId, _> = groups.into_iter().map(|g| (g.id, g)).collect();
    let mut pieces = Vec::with_capacity(extents.len());
    for (at, extent) in extents {
        let start = at.max(offset);
        let stop = (at + extent.len).min(end);
        if start >= stop {
            continue;
        }
        let placement = placements
            .get(&extent.group)
            .ok_or_else(|| OsError::Internal(format!("extent in unknown group {}", extent.group)))?;
        let data_offset = extent.data_offset + (start - at) as u32;
        pieces.push((
            start - offset,
            placement.clone(),
            extent.stripe,
            data_offset,
            (stop - start) as u32,
        ));
    }
    let fetched: Vec<(u64, Bytes)> = stream::iter(pieces)
        .map(|(into, placement, stripe, data_offset, piece_len)| async move {
            let bytes = ctx.io.read(&placement, stripe, data_offset, piece_len).await?;
            Ok::<_, GroupIoError>((into, bytes))
        })
        .buffered(READS_IN_FLIGHT)
        .try_collect()
        .await
        .map_err(|e| OsError::DataUnavailable(e.to_string()))?;
    let mut out = BytesMut::zeroed(len as usize);
    for (into, bytes) in fetched {
        let into = into as usize;
        out[into..into + bytes.len()].copy_from_slice(&bytes);
    }
    metrics::counter!("os_read_bytes_total").increment(len);
    Ok(out.freeze())
}
