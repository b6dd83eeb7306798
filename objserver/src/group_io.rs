//! Stripe I/O of one chunk group over its chunk servers (DESIGN §5, §6):
//! creating a group's chunks, appending erasure-coded stripes (durable only
//! when every fragment is), reading byte ranges with a fast path over the
//! data fragments and a degraded path that decodes from any `k` fragments,
//! reading and rebuilding whole fragments for repair, fencing and sealing a
//! group, and deleting its chunks. It owns no state beyond a codec cache:
//! where stripes are and which group is open is the caller's (the
//! partition's) business.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesUnordered, StreamExt};
use tessera_common::chunk_api::ChunkError;
use tessera_common::chunk_client::{ChunkCallError, ChunkServerClient};
use tessera_common::ids::{Epoch, NodeId};
use tessera_common::rpc::{CallOptions, RpcError, Transport};

use crate::cluster::ClusterView;
use crate::ec::{Codec, CodecError};
use crate::placement::{FragmentLoc, GroupId, GroupPlacement, Redundancy, StripeLoc};

/// Knobs of [`GroupIo`].
#[derive(Clone, Debug)]
pub struct GroupIoOptions {
    /// Budget of one attempt of a create, read, fence, seal or delete call.
    pub call_timeout_ms: u64,
    /// Extra attempts of those calls after transport errors and timeouts.
    pub call_retries: u32,
    /// Budget of one fragment's append, retries included.
    pub append_timeout_ms: u64,
    /// How long the fast path of a read waits for the data fragments before
    /// it reads the other fragments and decodes.
    pub read_deadline_ms: u64,
    /// After a chunk server fails a read at the transport level (or misses
    /// the deadline), reads skip it for this long and decode instead, so a
    /// dead server costs one deadline, not one per read.
    pub suspect_ms: u64,
}

impl Default for GroupIoOptions {
    fn default() -> Self {
        GroupIoOptions {
            call_timeout_ms: 5_000,
            call_retries: 2,
            append_timeout_ms: 10_000,
            read_deadline_ms: 500,
            suspect_ms: 5_000,
        }
    }
}

/// One fragment (chunk) of a group that a call failed on.
#[derive(Clone, Debug)]
pub struct FragmentFailure {
    /// Fragment index in the group (data first, then parity).
    pub index: usize,
    pub node: NodeId,
    pub error: ChunkCallError,
}

impl fmt::Display for FragmentFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fragment {} on {}: {}", self.index, self.node, self.error)
    }
}

/// The failures, one per fragment, for messages.
pub fn list(failed: &[FragmentFailure]) -> String {
    let items: Vec<String> = failed.iter().map(ToString::to_string).collect();
    items.join("; ")
}

/// Why a group operation failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum GroupIoError {
    /// Some fragments failed where every one had to succeed (or more than
    /// `m` where `m` may fail).
    #[error("group {group}: {}", list(failed))]
    Fragments {
        group: GroupId,
        failed: Vec<FragmentFailure>,
    },
    /// Fewer than `k` fragments could serve a read or rebuild.
    #[error(
        "group {group}: needs {needed} fragments, only {available} could serve ({})",
        list(failed)
    )]
    NotEnoughFragments {
        group: GroupId,
        needed: usize,
        available: usize,
        failed: Vec<FragmentFailure>,
    },
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("group {group} lists {got} fragments but its redundancy has {expected}")]
    Placement {
        group: GroupId,
        expected: usize,
        got: usize,
    },
    #[error("range {data_offset}+{len_bytes} outside a stripe of {stripe_bytes} data bytes")]
    OutOfRange {
        data_offset: u32,
        len_bytes: u32,
        stripe_bytes: u64,
    },
    #[error("fragment index {index} out of range (the group has {total})")]
    BadIndex { index: usize, total: usize },
}

/// Fragment indexes of a group (columns) an operation leaves out.
pub type Columns = BTreeSet<usize>;

/// What [`GroupIo::seal`] could not reach (at most `m` fragments).
#[derive(Clone, Debug, Default)]
pub struct SealReport {
    pub failed: Vec<FragmentFailure>,
}

/// A byte range `[start, end)` of one fragment.
#[derive(Clone, Copy, Debug)]
struct Span {
    index: usize,
    start: u64,
    end: u64,
}

/// Stripe I/O for chunk groups, over any [`Transport`]. Cheap to share.
pub struct GroupIo<T: Transport + Clone> {
    transport: T,
    options: GroupIoOptions,
    codecs: Mutex<HashMap<Redundancy, Arc<Codec>>>,
    /// Chunk servers reads skip until the given time (see `suspect_ms`).
    suspects: Mutex<HashMap<SocketAddr, Instant>>,
    /// Where each chunk server is now: a placement records the address a
    /// server had when the group was made, and a restarted server may
    /// come back elsewhere (another port, another container IP).
    directory: Option<ClusterView>,
}

impl<T: Transport + Clone> GroupIo<T> {
    pub fn new(transport: T, options: GroupIoOptions) -> Self {
        GroupIo {
            transport,
            options,
            codecs: Mutex::default(),
            suspects: Mutex::default(),
            directory: None,
        }
    }

    /// Resolves chunk servers through `view` (the cluster map), falling
    /// back to the address a placement recorded.
    pub fn with_directory(mut self, view: ClusterView) -> Self {
        self.directory = Some(view);
        self
    }

    /// The address of `loc`'s chunk server now.
    fn addr_of(&self, loc: &FragmentLoc) -> SocketAddr {
        self.directory
            .as_ref()
            .and_then(|view| view.addr_of(loc.node))
            .unwrap_or(loc.addr)
    }

    fn is_suspect(&self, addr: SocketAddr) -> bool {
        let mut suspects = self.suspects.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match suspects.get(&addr) {
            Some(until) if Instant::now() < *until => true,
            Some(_) => {
                suspects.remove(&addr);
                false
            }
            None => false,
        }
    }

    fn suspect(&self, addr: SocketAddr) {
        let until = Instant::now() + Duration::from_millis(self.options.suspect_ms);
        let mut suspects = self.suspects.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        suspects.insert(addr, until);
    }

    pub fn options(&self) -> &GroupIoOptions {
        &self.options
    }

    /// The codec of `placement`'s redundancy, after checking the placement
    /// lists one fragment per chunk of it.
    pub fn codec(&self, placement: &GroupPlacement) -> Result<Arc<Codec>, GroupIoError> {
        let expected = placement.redundancy.total_fragments();
        if placement.fragments.len() != expected {
            return Err(GroupIoError::Placement {
                group: placement.id,
                expected,
                got: placement.fragments.len(),
            });
        }
        let mut codecs = self.codecs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(codec) = codecs.get(&placement.redundancy) {
            return Ok(codec.clone());
        }
        let codec = Arc::new(Codec::new(placement.redundancy)?);
        codecs.insert(placement.redundancy, codec.clone());
        Ok(codec)
    }

    fn client(&self, loc: &FragmentLoc, timeout_ms: u64, retries: u32) -> ChunkServerClient<T> {
        let options = CallOptions {
            timeout: Duration::from_millis(timeout_ms),
            retries,
            ..CallOptions::default()
        };
        ChunkServerClient::new(self.transport.clone(), self.addr_of(loc), options)
    }

    fn call_client(&self, loc: &FragmentLoc) -> ChunkServerClient<T> {
        self.client(loc, self.options.call_timeout_ms, self.options.call_retries)
    }

    /// Runs `op` on the chunk of every fragment not in `skip` and not
    /// vacant, in parallel; returns the failures.
    async fn on_every_chunk<'a, F, Fut>(
        &'a self,
        placement: &'a GroupPlacement,
        skip: &Columns,
        op: F,
    ) -> Vec<FragmentFailure>
    where
        F: Fn(usize, &'a FragmentLoc) -> Fut,
        Fut: Future<Output = Result<(), ChunkCallError>> + 'a,
    {
        let calls = placement
            .fragments
            .iter()
            .enumerate()
            .filter(|(index, loc)| !skip.contains(index) && !loc.is_vacant())
            .map(|(index, loc)| {
                let call = op(index, loc);
                async move { call.await.err().map(|error| failure(index, loc, error)) }
            });
        futures::future::join_all(calls).await.into_iter().flatten().collect()
    }

    /// Creates every chunk of the group at `epoch`. A chunk that already
    /// exists counts as created, so a retry after a partial failure is safe.
    /// Cancellation: safe; dropping it may leave some chunks created, which
    /// a retry or [`GroupIo::delete_chunks`] handles.
    pub async fn create_chunks(&self, placement: &GroupPlacement, epoch: Epoch) -> Result<(), GroupIoError> {
        self.create_chunks_except(placement, &Columns::new(), epoch).await
    }

    /// [`GroupIo::create_chunks`] for every column but `skip` (and vacant
    /// ones).
    pub async fn create_chunks_except(
        &self,
        placement: &GroupPlacement,
        skip: &Columns,
        epoch: Epoch,
    ) -> Result<(), GroupIoError> {
        self.codec(placement)?;
        let failed = self
            .on_every_chunk(placement, skip, |_, loc| async move {
                match self.call_client(loc).create(loc.chunk, epoch).await {
                    Ok(_) | Err(ChunkCallError::Chunk(ChunkError::AlreadyExists(_))) => Ok(()),
                    Err(e) => Err(e),
                }
            })
            .await;
        all_or_error(placement.id, failed)
    }

    /// Encodes `data` into one stripe and appends every fragment at
    /// `chunk_offset` of its chunk, in parallel. `Ok` only when every
    /// fragment is durable on its chunk server; otherwise `Fragments` names
    /// each failed fragment (the caller seals the group and opens another).
    /// Cancellation: safe to drop, but then some fragments may be written:
    /// treat it as a failure. Retrying the same data at the same offset and
    /// epoch is idempotent (encoding is deterministic).
    pub async fn append_stripe(
        &self,
        placement: &GroupPlacement,
        epoch: Epoch,
        chunk_offset: u64,
        data: &[u8],
    ) -> Result<StripeLoc, GroupIoError> {
        let (stripe, failed) = self
            .append_stripe_except(placement, &Columns::new(), epoch, chunk_offset, data)
            .await?;
        all_or_error(placement.id, failed)?;
        Ok(stripe)
    }

    /// Appends the stripe's fragments to every column but `skip` (and
    /// vacant ones), like [`GroupIo::append_stripe`], and answers where the
    /// stripe is with the fragments that failed: the caller decides whether
    /// the others are enough (a degraded write, recorded only after the
    /// skipped and failed columns are marked lost).
    pub async fn append_stripe_except(
        &self,
        placement: &GroupPlacement,
        skip: &Columns,
        epoch: Epoch,
        chunk_offset: u64,
        data: &[u8],
    ) -> Result<(StripeLoc, Vec<FragmentFailure>), GroupIoError> {
        let codec = self.codec(placement)?;
        let (fragment_len, fragments) = codec.encode(data)?;
        assert_eq!(fragments.len(), placement.fragments.len(), "one fragment per chunk");
        let stripe = StripeLoc {
            chunk_offset,
            fragment_len,
        };
        let budget = Duration::from_millis(self.options.append_timeout_ms);
        let failed = self
            .on_every_chunk(placement, skip, |index, loc| {
                let client = self.client(loc, self.options.append_timeout_ms, self.options.call_retries);
                let bytes = fragments[index].clone();
                async move {
                    let append = client.append(loc.chunk, chunk_offset, epoch, bytes);
                    within(budget, append).await.map(|_| ())
                }
            })
            .await;
        Ok((stripe, failed))
    }

    /// Reads `len_bytes` of the stripe's data from `data_offset`.
    ///
    /// Fast path: only the data fragments covering the range, only the byte
    /// sub-ranges needed, within `read_deadline_ms`. If any of them fails
    /// (error, checksum, deadline) the same byte columns are read from the
    /// other fragments (and again from one that only missed the deadline)
    /// and decoded from the first `k` to answer; the error is `NotEnoughFragments` only when
    /// fewer than `k` fragments can serve. Every byte returned was verified
    /// by its chunk server's checksums and end to end.
    /// Cancellation: safe (reads only).
    pub async fn read(
        &self,
        placement: &GroupPlacement,
        stripe: StripeLoc,
        data_offset: u32,
        len_bytes: u32,
    ) -> Result<Bytes, GroupIoError> {
        let codec = self.codec(placement)?;
        let spans = data_spans(codec.data_fragments(), stripe, data_offset, len_bytes)?;
        let fast = self.fast_reads(placement, stripe, &spans).await;
        let failed: Vec<FragmentFailure> = fast
            .iter()
            .zip(&spans)
            .filter_map(|(result, span)| {
                let error = result.as_ref().err()?.clone();
                Some(failure(span.index, &placement.fragments[span.index], error))
            })
            .collect();
        let pieces = if failed.is_empty() {
            fast.into_iter().flatten().collect()
        } else {
            self.degraded(placement, stripe, &codec, &spans, fast, failed).await?
        };
        Ok(concat(pieces, len_bytes as usize))
    }

    /// The fast path: every span read in parallel, each cut off at the
    /// read deadline.
    async fn fast_reads(
        &self,
        placement: &GroupPlacement,
        stripe: StripeLoc,
        spans: &[Span],
    ) -> Vec<Result<Bytes, ChunkCallError>> {
        let deadline = Duration::from_millis(self.options.read_deadline_ms);
        let reads = spans
            .iter()
            .map(|span| within(deadline, self.read_span(placement, stripe, *span)));
        let results = futures::future::join_all(reads).await;
        for (span, result) in spans.iter().zip(&results) {
            if matches!(result, Err(e) if missed_deadline(e, deadline)) {
                self.suspect(self.addr_of(&placement.fragments[span.index]));
            }
        }
        results
    }

    /// Rebuilds the spans whose fast read failed from the same byte columns
    /// of `k` other fragments; returns every span's bytes in order.
    async fn degraded(
        &self,
        placement: &GroupPlacement,
        stripe: StripeLoc,
        codec: &Codec,
        spans: &[Span],
        fast: Vec<Result<Bytes, ChunkCallError>>,
        mut failed: Vec<FragmentFailure>,
    ) -> Result<Vec<Bytes>, GroupIoError> {
        metrics::counter!("os_degraded_reads_total").increment(1);
        for f in &failed {
            tracing::debug!(group = %placement.id, fragment = f.index, node = %f.node, error = %f.error, "degraded read");
        }
        let lost: Vec<usize> = failed.iter().map(|f| f.index).collect();
        // A fragment that only missed the deadline may still answer: it is
        // asked again along with the others, and the first k answers serve.
        let deadline = Duration::from_millis(self.options.read_deadline_ms);
        let broken: Vec<usize> = failed
            .iter()
            .filter(|f| !missed_deadline(&f.error, deadline))
            .map(|f| f.index)
            .collect();
        let (lo, hi) = hull(spans, &lost);
        let mut columns: Vec<Option<Bytes>> = vec![None; codec.total_fragments()];
        for (span, result) in spans.iter().zip(&fast) {
            if let Ok(bytes) = result {
                if span.start <= lo && hi <= span.end {
                    columns[span.index] = Some(bytes.slice(offset(lo - span.start)..offset(hi - span.start)));
                }
            }
        }
        let columns = self
            .gather_columns(placement, stripe, codec, (lo, hi), columns, &broken, &mut failed)
            .await?;
        let rebuilt: HashMap<usize, Bytes> = lost.iter().copied().zip(codec.reconstruct(columns, &lost)?).collect();
        let pieces = spans.iter().zip(fast).map(|(span, result)| match result {
            Ok(bytes) => bytes,
            Err(_) => rebuilt[&span.index].slice(offset(span.start - lo)..offset(span.end - lo)),
        });
        Ok(pieces.collect())
    }

    /// Reads byte columns `[lo, hi)` from fragments not in `exclude` and not
    /// yet in `columns`, all in parallel, until `k` columns are present.
    #[allow(clippy::too_many_arguments)]
    async fn gather_columns(
        &self,
        placement: &GroupPlacement,
        stripe: StripeLoc,
        codec: &Codec,
        (lo, hi): (u64, u64),
        mut columns: Vec<Option<Bytes>>,
        exclude: &[usize],
        failed: &mut Vec<FragmentFailure>,
    ) -> Result<Vec<Option<Bytes>>, GroupIoError> {
        let needed = codec.data_fragments();
        let mut available = columns.iter().filter(|c| c.is_some()).count();
        let mut pending: FuturesUnordered<_> = (0..columns.len())
            .filter(|i| columns[*i].is_none() && !exclude.contains(i))
            .map(|index| async move {
                let span = Span {
                    index,
                    start: lo,
                    end: hi,
                };
                (index, self.read_span(placement, stripe, span).await)
            })
            .collect();
        while available < needed {
            match pending.next().await {
                Some((index, Ok(bytes))) => {
                    columns[index] = Some(bytes);
                    available += 1;
                }
                Some((index, Err(error))) => failed.push(failure(index, &placement.fragments[index], error)),
                None => {
                    return Err(GroupIoError::NotEnoughFragments {
                        group: placement.id,
                        needed,
                        available,
                        failed: std::mem::take(failed),
                    })
                }
            }
        }
        Ok(columns)
    }

    async fn read_span(
        &self,
        placement: &GroupPlacement,
        stripe: StripeLoc,
        span: Span,
    ) -> Result<Bytes, ChunkCallError> {
        debug_assert!(span.start <= span.end && span.end <= u64::from(stripe.fragment_len));
        let loc = &placement.fragments[span.index];
        let addr = self.addr_of(loc);
        if loc.is_vacant() {
            let reason = "vacant column (awaiting repair)".to_string();
            return Err(ChunkCallError::Rpc(RpcError::Connect { addr, reason }));
        }
        if self.is_suspect(addr) {
            let reason = "failed recently; decoding instead".to_string();
            return Err(ChunkCallError::Rpc(RpcError::Connect { addr, reason }));
        }
        // No retries: decoding from other fragments is the fallback.
        let result = self
            .client(loc, self.options.call_timeout_ms, 0)
            .read(loc.chunk, stripe.chunk_offset + span.start, span.end - span.start)
            .await;
        if let Err(ChunkCallError::Rpc(
            RpcError::Connect { .. } | RpcError::Timeout(_) | RpcError::Transport(_) | RpcError::ShuttingDown,
        )) = &result
        {
            self.suspect(addr);
        }
        result
    }

    /// Reads fragment `index` of the stripe whole (for repair and scrub).
    /// Cancellation: safe (reads only).
    pub async fn read_fragment(
        &self,
        placement: &GroupPlacement,
        stripe: StripeLoc,
        index: usize,
    ) -> Result<Bytes, GroupIoError> {
        self.check_index(placement, index)?;
        let span = Span {
            index,
            start: 0,
            end: u64::from(stripe.fragment_len),
        };
        self.read_span(placement, stripe, span)
            .await
            .map_err(|error| GroupIoError::Fragments {
                group: placement.id,
                failed: vec![failure(index, &placement.fragments[index], error)],
            })
    }

    /// Rebuilds fragment `index` of the stripe from `k` other fragments,
    /// without reading fragment `index` itself (for repair).
    /// Cancellation: safe (reads only).
    pub async fn rebuild_fragment(
        &self,
        placement: &GroupPlacement,
        stripe: StripeLoc,
        index: usize,
    ) -> Result<Bytes, GroupIoError> {
        let codec = self.codec(placement)?;
        self.check_index(placement, index)?;
        let columns = vec![None; codec.total_fragments()];
        let whole = (0, u64::from(stripe.fragment_len));
        let mut failed = Vec::new();
        let columns = self
            .gather_columns(placement, stripe, &codec, whole, columns, &[index], &mut failed)
            .await?;
        let mut rebuilt = codec.reconstruct(columns, &[index])?;
        assert_eq!(rebuilt.len(), 1, "one fragment asked for");
        Ok(rebuilt.swap_remove(0))
    }

    fn check_index(&self, placement: &GroupPlacement, index: usize) -> Result<(), GroupIoError> {
        let total = placement.fragments.len();
        if index >= total {
            return Err(GroupIoError::BadIndex { index, total });
        }
        Ok(())
    }

    /// Fences every chunk of the group at `epoch` (so appends from older
    /// epochs are refused) and seals it at `length`. Succeeds when at most
    /// `m` chunks failed, and reports them; a chunk that is shorter than
    /// `length` (it missed an append) fails its seal and counts among them,
    /// and so does a vacant column (not called).
    /// Cancellation: safe; fencing and sealing are idempotent, so rerun it.
    pub async fn seal(
        &self,
        placement: &GroupPlacement,
        epoch: Epoch,
        length: u64,
    ) -> Result<SealReport, GroupIoError> {
        let codec = self.codec(placement)?;
        let failed = self
            .on_every_chunk(placement, &Columns::new(), |_, loc| async move {
                let client = self.call_client(loc);
                client.fence(loc.chunk, epoch).await?;
                client.seal(loc.chunk, epoch, Some(length)).await.map(|_| ())
            })
            .await;
        let tolerated = codec.redundancy().tolerated_losses();
        let vacant = placement.fragments.iter().filter(|f| f.is_vacant()).count();
        if failed.len() + vacant > tolerated {
            return Err(GroupIoError::Fragments {
                group: placement.id,
                failed,
            });
        }
        for f in &failed {
            tracing::warn!(group = %placement.id, fragment = f.index, node = %f.node, error = %f.error, "seal missed a chunk");
        }
        Ok(SealReport { failed })
    }

    /// Deletes every chunk of the group, best effort: all are tried, and a
    /// chunk already gone counts as deleted; the others are reported.
    /// Cancellation: safe; rerun it.
    pub async fn delete_chunks(&self, placement: &GroupPlacement) -> Result<(), GroupIoError> {
        let failed = self
            .on_every_chunk(placement, &Columns::new(), |_, loc| async move {
                match self.call_client(loc).delete(loc.chunk).await {
                    Ok(()) | Err(ChunkCallError::Chunk(ChunkError::NotFound(_))) => Ok(()),
                    Err(e) => Err(e),
                }
            })
            .await;
        all_or_error(placement.id, failed)
    }
}

fn failure(index: usize, loc: &FragmentLoc, error: ChunkCallError) -> FragmentFailure {
    FragmentFailure {
        index,
        node: loc.node,
        error,
    }
}

fn all_or_error(group: GroupId, failed: Vec<FragmentFailure>) -> Result<(), GroupIoError> {
    if failed.is_empty() {
        Ok(())
    } else {
        Err(GroupIoError::Fragments { group, failed })
    }
}

/// `call`, or a timeout error after `budget`.
async fn within<R>(
    budget: Duration,
    call: impl Future<Output = Result<R, ChunkCallError>>,
) -> Result<R, ChunkCallError> {
    match tokio::time::timeout(budget, call).await {
        Ok(result) => result,
        Err(_) => Err(ChunkCallError::Rpc(RpcError::Timeout(budget))),
    }
}

/// Whether `error` is the read deadline of the fast path running out.
fn missed_deadline(error: &ChunkCallError, deadline: Duration) -> bool {
    matches!(error, ChunkCallError::Rpc(RpcError::Timeout(budget)) if *budget == deadline)
}

/// The smallest column range `[lo, hi)` holding every span of `lost`.
fn hull(spans: &[Span], lost: &[usize]) -> (u64, u64) {
    let (lo, hi) = spans
        .iter()
        .filter(|s| lost.contains(&s.index))
        .fold((u64::MAX, 0), |(lo, hi), s| (lo.min(s.start), hi.max(s.end)));
    assert!(lo <= hi, "every lost fragment has a span");
    (lo, hi)
}

/// An in-fragment offset as a slice index (fragments are at most 4 GiB).
fn offset(at: u64) -> usize {
    usize::try_from(at).expect("fragment offsets fit in usize")
}

/// The pieces of data fragments holding stripe data `[data_offset,
/// data_offset + len_bytes)`, in order.
fn data_spans(k: usize, stripe: StripeLoc, data_offset: u32, len_bytes: u32) -> Result<Vec<Span>, GroupIoError> {
    let fragment_len = u64::from(stripe.fragment_len);
    let stripe_bytes = k as u64 * fragment_len;
    let end = u64::from(data_offset) + u64::from(len_bytes);
    if end > stripe_bytes {
        return Err(GroupIoError::OutOfRange {
            data_offset,
            len_bytes,
            stripe_bytes,
        });
    }
    let mut spans = Vec::new();
    let mut at = u64::from(data_offset);
    while at < end {
        let start = at % fragment_len;
        let stop = fragment_len.min(start + (end - at));
        spans.push(Span {
            index: offset(at / fragment_len),
            start,
            end: stop,
        });
        at += stop - start;
    }
    Ok(spans)
}

/// The pieces joined, without a copy when there is one.
fn concat(mut pieces: Vec<Bytes>, len_bytes: usize) -> Bytes {
    if pieces.len() == 1 {
        return pieces.swap_remove(0);
    }
    let mut out = BytesMut::with_capacity(len_bytes);
    for piece in &pieces {
        out.extend_from_slice(piece);
    }
    assert_eq!(out.len(), len_bytes, "spans cover the range exactly");
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(k: usize, fragment_len: u32, data_offset: u32, len: u32) -> Vec<(usize, u64, u64)> {
        let stripe = StripeLoc {
            chunk_offset: 100,
            fragment_len,
        };
        data_spans(k, stripe, data_offset, len)
            .expect("in range")
            .iter()
            .map(|s| (s.index, s.start, s.end))
            .collect()
    }

    #[test]
    fn spans_cover_ranges() {
        assert_eq!(spans(4, 10, 0, 0), vec![]);
        assert_eq!(spans(4, 10, 3, 4), vec![(0, 3, 7)]);
        assert_eq!(spans(4, 10, 8, 4), vec![(0, 8, 10), (1, 0, 2)]);
        assert_eq!(
            spans(4, 10, 0, 40),
            vec![(0, 0, 10), (1, 0, 10), (2, 0, 10), (3, 0, 10)]
        );
        assert_eq!(spans(4, 10, 39, 1), vec![(3, 9, 10)]);
        assert_eq!(spans(1, 10, 2, 8), vec![(0, 2, 10)]);
        let stripe = StripeLoc {
            chunk_offset: 0,
            fragment_len: 10,
        };
        assert!(matches!(
            data_spans(4, stripe, 35, 6),
            Err(GroupIoError::OutOfRange { stripe_bytes: 40, .. })
        ));
        let all = data_spans(4, stripe, 5, 30).expect("in range");
        assert_eq!(hull(&all, &[0]), (5, 10));
        assert_eq!(hull(&all, &[0, 3]), (0, 10));
        assert_eq!(hull(&all, &[1, 2]), (0, 10));
        assert_eq!(hull(&all, &[3]), (0, 5));
        assert!(matches!(
            data_spans(4, stripe, u32::MAX, u32::MAX),
            Err(GroupIoError::OutOfRange { .. })
        ));
    }
}
