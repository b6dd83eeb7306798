//! The leader's garbage collection of expired GC entries (DESIGN §4): an
//! entry whose TTL has passed on this leader's monotonic clock is checked
//! with the name servers' `reap` (a Raft write there): "free" deletes the
//! uid here, "referenced" confirms it (the commit happened but its confirm
//! was lost). A TTL counts from when this leader first saw the entry, so a
//! new leader never frees early; correctness does not rest on clocks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use tessera_common::ns_api::ReapOutcome;

use super::PartitionCtx;
use crate::state::{Command, Query, QueryResponse};

/// GC entries read per page.
const PAGE: u32 = 1024;

/// Runs until aborted (when leadership ends). Cancellation safe.
pub async fn run(ctx: Arc<PartitionCtx>) {
    let mut first_seen: HashMap<u128, Instant> = HashMap::new();
    loop {
        tokio::time::sleep(ctx.settings.gc_scan_interval).await;
        if let Err(e) = scan(&ctx, &mut first_seen).await {
            tracing::debug!(partition = ctx.partition, error = %e, "GC scan stopped early");
        }
    }
}

async fn scan(ctx: &PartitionCtx, first_seen: &mut HashMap<u128, Instant>) -> Result<(), String> {
    let now = Instant::now();
    let mut after = None;
    let mut present = HashMap::with_capacity(first_seen.len());
    loop {
        let page = match ctx.raft.stale_query(Query::GcEntries { after, limit: PAGE }).await {
            Ok(QueryResponse::GcEntries(page)) => page,
            Ok(other) => return Err(format!("unexpected answer {other:?}")),
            Err(e) => return Err(e.to_string()),
        };
        for (uid, entry) in &page {
            let seen = *first_seen.get(uid).unwrap_or(&now);
            present.insert(*uid, seen);
            if now.duration_since(seen) >= Duration::from_millis(entry.ttl_ms) {
                reap(ctx, *uid).await?;
                present.remove(uid);
            }
        }
        match page.last() {
            Some((uid, _)) if page.len() == PAGE as usize => after = Some(*uid),
            _ => break,
        }
    }
    *first_seen = present;
    Ok(())
}

async fn reap(ctx: &PartitionCtx, uid: u128) -> Result<(), String> {
    let outcome = ctx.ns.reap(uid).await.map_err(|e| format!("reap of {uid:x}: {e}"))?;
    let command = match outcome {
        ReapOutcome::Free => Command::Delete { uid },
        ReapOutcome::Referenced => Command::Confirm { uid },
    };
    ctx.raft.propose_local(command).await.map_err(|e| e.to_string())?;
    metrics::counter!("os_gc_reaped_total", "outcome" => format!("{outcome:?}")).increment(1);
    tracing::info!(
        partition = ctx.partition,
        uid = format!("{uid:x}"),
        ?outcome,
        "expired GC entry settled"
    );
    Ok(())
}
