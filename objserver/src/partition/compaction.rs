//! The leader's compaction and release of chunk groups (DESIGN §5). A
//! sealed group whose live bytes fall under the threshold has its live
//! extents copied to the log tail through the term's writer (each switch
//! is conditional, so a concurrent overwrite or delete wins); a sealed
//! group without live bytes starts releasing, and once the grace period
//! has passed on this leader's clock (reads that looked up the old
//! location finish) its chunks are deleted. Writes and reads go on
//! throughout: nothing here blocks the writer for longer than one stripe.

use std::collections::HashMap;
use std::sync::Arc;
use tokio::time::Instant;

use tokio::sync::oneshot;

use super::writer::WriteJob;
use super::Partition;
use crate::placement::GroupId;
use crate::state::{Command, GroupRecord, GroupState, Query, QueryResponse};

/// Extents copied per page of a group's index.
const PAGE: u32 = 256;

/// Runs until aborted (when leadership ends). Cancellation safe: a copy
/// interrupted midway leaves extents pointing at the old group or the new
/// one, both valid, and the next leader starts over.
pub async fn run(partition: Arc<Partition>) {
    let mut releasing_since: HashMap<GroupId, Instant> = HashMap::new();
    loop {
        tokio::time::sleep(partition.ctx.settings.compaction_interval).await;
        if let Err(e) = pass(&partition, &mut releasing_since).await {
            tracing::debug!(partition = partition.id(), error = %e, "compaction pass stopped early");
        }
    }
}

async fn pass(partition: &Arc<Partition>, releasing_since: &mut HashMap<GroupId, Instant>) -> Result<(), String> {
    let groups = match partition.ctx.raft.stale_query(Query::Groups).await {
        Ok(QueryResponse::Groups(groups)) => groups,
        Ok(other) => return Err(format!("unexpected answer {other:?}")),
        Err(e) => return Err(e.to_string()),
    };
    let settings = &partition.ctx.settings;
    for (id, record) in groups {
        match record.state {
            GroupState::Sealed if record.live_bytes == 0 => {
                propose(partition, Command::ReleaseGroup { group: id }).await?;
            }
            GroupState::Sealed if is_sparse(&record, settings.compaction_live_ratio) => {
                compact(partition, id, &record).await?;
                metrics::counter!("os_groups_compacted_total").increment(1);
            }
            GroupState::Releasing { .. } => {
                let since = *releasing_since.entry(id).or_insert_with(Instant::now);
                if since.elapsed() >= settings.release_grace {
                    partition
                        .ctx
                        .io
                        .delete_chunks(&record.placement)
                        .await
                        .map_err(|e| format!("deleting chunks of {id}: {e}"))?;
                    propose(partition, Command::GroupReleased { group: id }).await?;
                    releasing_since.remove(&id);
                    tracing::info!(partition = partition.id(), group = %id, "chunk group released");
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Live bytes below `ratio` of the bytes written.
fn is_sparse(record: &GroupRecord, ratio: f64) -> bool {
    record.written_bytes > 0 && (record.live_bytes as f64) < ratio * record.written_bytes as f64
}

async fn propose(partition: &Partition, command: Command) -> Result<(), String> {
    partition
        .ctx
        .raft
        .propose_local(command)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Copies every live extent of `group` to the log tail.
async fn compact(partition: &Arc<Partition>, group: GroupId, record: &GroupRecord) -> Result<(), String> {
    tracing::info!(partition = partition.id(), group = %group, live = record.live_bytes,
        written = record.written_bytes, "compacting chunk group");
    let mut after = None;
    loop {
        let query = Query::GroupExtents {
            group,
            after,
            limit: PAGE,
        };
        let page = match partition.ctx.raft.stale_query(query).await {
            Ok(QueryResponse::GroupExtents(page)) => page,
            Ok(other) => return Err(format!("unexpected answer {other:?}")),
            Err(e) => return Err(e.to_string()),
        };
        let mut replies = Vec::with_capacity(page.len());
        for (uid, offset, extent) in &page {
            let data = partition
                .ctx
                .io
                .read(&record.placement, extent.stripe, extent.data_offset, extent.len as u32)
                .await
                .map_err(|e| format!("reading live extent of {group}: {e}"))?;
            let (reply, answer) = oneshot::channel();
            let job = WriteJob {
                uid: *uid,
                offset: *offset,
                data,
                relocating: Some(*extent),
                reply,
            };
            partition
                .submit(record.placement.redundancy, job)
                .await
                .map_err(|e| e.to_string())?;
            replies.push(answer);
        }
        for answer in replies {
            answer
                .await
                .map_err(|_| "writer stopped".to_string())?
                .map_err(|e| e.to_string())?;
        }
        match page.last() {
            Some((uid, offset, _)) if page.len() == PAGE as usize => after = Some((*uid, *offset)),
            _ => return Ok(()),
        }
    }
}
