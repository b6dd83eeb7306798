//! The leader's repair of chunk groups (DESIGN §5): a fragment whose chunk
//! server the name servers no longer list as live, whose chunk its server
//! reported corrupt (scrub or a read found a bad block), or whose column
//! missed stripes (a degraded write, a vacant column), is rebuilt,
//! byte column by byte column, from `k` other fragments onto a chunk server
//! outside the group (a corrupt chunk's own, still live server may take the
//! new copy), and the group's placement switches to it. Reed-Solomon works per byte
//! column and every stripe sits at the same offset of every chunk, so a
//! chunk is rebuilt in fixed blocks without knowing stripe boundaries.
//! Open groups with a lost fragment are sealed first, once servers to
//! rebuild onto exist (until then the writer goes on degraded); repair is
//! throttled to `repair_bytes_per_sec`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tessera_common::ids::{ChunkId, Epoch, NodeId};

use super::{writer, Partition};
use crate::cluster::ClusterView;
use crate::placement::{FragmentLoc, GroupId, GroupPlacement, Redundancy, StripeLoc};
use crate::state::{Command, GroupRecord, GroupState, LostColumns, Query, QueryResponse, Response};

/// Bytes of a fragment rebuilt per step.
const BLOCK_BYTES: u64 = 1 << 20;

/// Runs until aborted (when leadership ends). Cancellation safe: an
/// interrupted rebuild leaves an orphan chunk; the placement never points
/// at a partial one.
pub async fn run(partition: Arc<Partition>, term: u64) {
    loop {
        tokio::time::sleep(partition.ctx.settings.repair_interval).await;
        if let Err(e) = pass(&partition, term).await {
            tracing::warn!(partition = partition.id(), error = %e, "repair pass stopped early");
        }
    }
}

async fn pass(partition: &Partition, term: u64) -> Result<(), String> {
    let live: BTreeSet<NodeId> = partition.ctx.cluster.chunk_servers().iter().map(|s| s.node).collect();
    if live.is_empty() {
        return Ok(()); // no view of the cluster yet: never judge everything dead
    }
    let groups = match partition.ctx.raft.stale_query(Query::Groups).await {
        Ok(QueryResponse::Groups(groups)) => groups,
        Ok(other) => return Err(format!("unexpected answer {other:?}")),
        Err(e) => return Err(e.to_string()),
    };
    let marked = lost_columns(partition).await?;
    let mut pending = 0u64;
    for (id, record) in &groups {
        let marked = marked.get(id).map(|l| l.0.as_slice()).unwrap_or_default();
        let lost: Vec<usize> = lost_fragments(record, marked, &live, &partition.ctx.cluster);
        if lost.is_empty() || !matches!(record.state, GroupState::Open { .. } | GroupState::Sealed) {
            continue;
        }
        pending += lost.len() as u64;
        if lost.len() > record.placement.redundancy.tolerated_losses() {
            metrics::counter!("os_groups_unrecoverable_total").increment(1);
            tracing::error!(partition = partition.id(), group = %id, ?lost, "more fragments lost than parity covers");
            continue;
        }
        if !replacements_exist(partition, record, &lost) {
            continue; // nowhere to rebuild yet; reads decode meanwhile
        }
        if matches!(record.state, GroupState::Open { .. }) {
            writer::seal_group(&partition.ctx, &record.placement, term)
                .await
                .map_err(|stop| stop.0.to_string())?;
            continue; // repaired on the next pass, once sealed
        }
        // Each repair sees the fragments placed by the previous ones, so two
        // rebuilt fragments never land on one server.
        let mut current = record.clone();
        for index in lost {
            let new = repair_fragment(partition, *id, &current, index, term).await?;
            current.placement.fragments[index] = new;
            pending -= 1;
        }
    }
    metrics::gauge!("os_repair_pending_fragments", "partition" => partition.id().to_string()).set(pending as f64);
    Ok(())
}

async fn lost_columns(partition: &Partition) -> Result<BTreeMap<GroupId, LostColumns>, String> {
    match partition.ctx.raft.stale_query(Query::Lost).await {
        Ok(QueryResponse::Lost(lost)) => Ok(lost.into_iter().collect()),
        Ok(other) => Err(format!("unexpected answer {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Fragments that are vacant, marked lost (they missed stripes), on
/// servers not live, or reported corrupt by their server.
pub(super) fn lost_fragments(
    record: &GroupRecord,
    marked: &[u32],
    live: &BTreeSet<NodeId>,
    cluster: &ClusterView,
) -> Vec<usize> {
    let fragments = &record.placement.fragments;
    (0..fragments.len())
        .filter(|i| {
            let f = &fragments[*i];
            f.is_vacant()
                || marked.contains(&(*i as u32))
                || !live.contains(&f.node)
                || cluster.is_corrupt(f.node, f.chunk)
        })
        .collect()
}

/// Whether live chunk servers outside the group's intact columns can take
/// every lost fragment (a lost fragment's own server, if live, may).
fn replacements_exist(partition: &Partition, record: &GroupRecord, lost: &[usize]) -> bool {
    let intact: BTreeSet<NodeId> = record
        .placement
        .fragments
        .iter()
        .enumerate()
        .filter(|(i, _)| !lost.contains(i))
        .map(|(_, f)| f.node)
        .collect();
    partition.ctx.cluster.choose(lost.len(), &intact).is_ok()
}

/// Rebuilds fragment `index` of sealed group `id` on a new chunk server;
/// returns where it now lives.
async fn repair_fragment(
    partition: &Partition,
    id: GroupId,
    record: &GroupRecord,
    index: usize,
    term: u64,
) -> Result<FragmentLoc, String> {
    let ctx = &partition.ctx;
    let placement = &record.placement;
    let lost = &placement.fragments[index];
    // A live server whose chunk is corrupt may hold the rebuilt copy.
    let in_group: BTreeSet<NodeId> = placement
        .fragments
        .iter()
        .filter(|f| f.node != lost.node || !ctx.cluster.chunk_servers().iter().any(|s| s.node == lost.node))
        .map(|f| f.node)
        .collect();
    let server = ctx
        .cluster
        .choose(1, &in_group)
        .map_err(|e| format!("no chunk server to repair {id} onto: {e}"))?
        .remove(0);
    let first_seq = match ctx.raft.propose_local(Command::ReserveChunks { count: 1 }).await {
        Ok(Response::Chunks { first_seq }) => first_seq,
        Ok(other) => return Err(format!("reserve answered {other:?}")),
        Err(e) => return Err(e.to_string()),
    };
    let new = FragmentLoc {
        node: server.node,
        addr: server.addr,
        chunk: ChunkId((u64::from(ctx.partition) << 32) | u64::from(first_seq)),
    };
    // Not an orphan while it is rebuilt and until the group references it.
    let _in_flight = ctx.repairs.hold(new.chunk);
    tracing::info!(partition = ctx.partition, group = %id, fragment = index, from = %placement.fragments[index].node,
        to = %new.node, bytes = record.tail, "repairing fragment");
    rebuild_into(partition, placement, index, record.tail, &new, term).await?;
    let command = Command::ReplaceFragment {
        group: id,
        index: index as u32,
        old: placement.fragments[index].chunk,
        new: new.clone(),
    };
    match ctx.raft.propose_local(command).await {
        Ok(Response::Ok) => {
            metrics::counter!("os_repaired_fragments_total").increment(1);
            drop_replaced_chunk(partition, placement, lost).await;
            Ok(new)
        }
        Ok(other) => Err(format!("replacing fragment answered {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Deletes the chunk a repair replaced, if its server still answers (a
/// corrupt chunk); a dead server's chunks stay orphaned until it returns.
async fn drop_replaced_chunk(partition: &Partition, placement: &GroupPlacement, old: &FragmentLoc) {
    let single = GroupPlacement {
        id: placement.id,
        redundancy: Redundancy::Replicated { n: 1 },
        fragments: vec![old.clone()],
    };
    if let Err(e) = partition.ctx.io.delete_chunks(&single).await {
        tracing::debug!(group = %placement.id, chunk = %old.chunk, error = %e, "replaced chunk not deleted");
    }
}

/// Writes fragment `index` of `placement`, rebuilt from the others over
/// `[0, length)`, into the new chunk `into`, then seals it at `length`.
async fn rebuild_into(
    partition: &Partition,
    placement: &GroupPlacement,
    index: usize,
    length: u64,
    into: &FragmentLoc,
    term: u64,
) -> Result<(), String> {
    let io = &partition.ctx.io;
    let single = GroupPlacement {
        id: placement.id,
        redundancy: Redundancy::Replicated { n: 1 },
        fragments: vec![into.clone()],
    };
    let epoch = Epoch(term);
    io.create_chunks(&single, epoch).await.map_err(|e| e.to_string())?;
    let rate = partition.ctx.settings.repair_bytes_per_sec.max(1);
    // tokio's clock, as the sleep below: a paused or simulated clock must
    // not mix with the machine's.
    let started = tokio::time::Instant::now();
    let mut offset = 0;
    while offset < length {
        let len = BLOCK_BYTES.min(length - offset);
        let block = StripeLoc {
            chunk_offset: offset,
            fragment_len: len as u32,
        };
        let bytes = io
            .rebuild_fragment(placement, block, index)
            .await
            .map_err(|e| format!("rebuilding {}: {e}", placement.id))?;
        io.append_stripe(&single, epoch, offset, &bytes)
            .await
            .map_err(|e| format!("writing the rebuilt fragment: {e}"))?;
        offset += len;
        metrics::counter!("os_repair_bytes_total").increment(len);
        let due = Duration::from_secs_f64(offset as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    io.seal(&single, epoch, length).await.map_err(|e| e.to_string())?;
    Ok(())
}
