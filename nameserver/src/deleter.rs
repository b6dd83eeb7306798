//! The leader's hand-off of pending deletes to the object servers (DESIGN
//! §4): the uid of an overwritten or deleted name waits in the queue until
//! the object server of its partition acknowledged dropping it; only then
//! is its entry removed (one Raft entry per batch of acknowledgements). An
//! object server that is down delays the queue, never loses an entry;
//! object-server deletes are idempotent, so a repeat after a leader change
//! is harmless.

use std::sync::Arc;
use std::time::Duration;

use tessera_common::os_client::{OsClient, OsClientConfig};
use tessera_common::rpc::{CallOptions, RpcClient};

use crate::cluster_api::Liveness;
use crate::namespace::{Command, NodeRole, Query, QueryResponse};
use crate::raft::NsGroup;

/// Queue entries handed off per pass.
const BATCH: usize = 256;

/// Runs until aborted. Cancellation safe: an entry is acknowledged only
/// after its delete succeeded.
pub async fn run(node: NsGroup, liveness: Arc<Liveness>, client: RpcClient, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        if !node.is_leader() {
            continue;
        }
        match pass(&node, &liveness, &client).await {
            Ok(0) => {}
            Ok(done) => tracing::debug!(done, "pending deletes handed to object servers"),
            Err(e) => tracing::debug!(error = %e, "pending-delete hand-off stopped early"),
        }
    }
}

/// Hands one batch off; returns how many entries were acknowledged.
async fn pass(node: &NsGroup, liveness: &Liveness, client: &RpcClient) -> Result<usize, String> {
    let pending = match node
        .read_local(Query::PendingDeletes {
            after_seq: None,
            limit: BATCH,
        })
        .await
    {
        Ok(QueryResponse::PendingDeletes(pending)) => pending,
        Ok(other) => return Err(format!("unexpected answer {other:?}")),
        Err(e) => return Err(e.to_string()),
    };
    if pending.is_empty() {
        return Ok(0);
    }
    let nodes = match node.read_local(Query::ListNodes).await {
        Ok(QueryResponse::Nodes(nodes)) => nodes,
        Ok(other) => return Err(format!("unexpected answer {other:?}")),
        Err(e) => return Err(e.to_string()),
    };
    let term = node.current_term();
    let servers: Vec<_> = nodes
        .iter()
        .filter(|n| n.role == NodeRole::ObjectServer && liveness.judge(term, n.node_id).1)
        .filter_map(|n| n.addr.parse().ok())
        .collect();
    if servers.is_empty() {
        return Err(format!("{} pending deletes, no live object server", pending.len()));
    }
    let config = OsClientConfig {
        call: CallOptions {
            timeout: Duration::from_secs(5),
            retries: 0,
            ..CallOptions::default()
        },
        rounds: 1,
        round_pause: Duration::ZERO,
    };
    let os = OsClient::new(client.clone(), servers, 1, config);
    let mut acked = Vec::new();
    for entry in &pending {
        match os.delete_in(entry.partition, entry.uid).await {
            Ok(()) => acked.push(entry.seq),
            Err(e) => tracing::debug!(uid = format!("{:x}", entry.uid), error = %e, "delete not handed off yet"),
        }
    }
    if acked.is_empty() {
        return Ok(0);
    }
    let done = acked.len();
    node.propose_local(Command::AckDeletes { seqs: acked })
        .await
        .map_err(|e| e.to_string())?;
    metrics::counter!("ns_pending_deletes_handed_off_total").increment(done as u64);
    Ok(done)
}
