//! Registration and heartbeats to the name servers. The first heartbeat
//! registers the chunk server; each carries capacity, usage, disk health and
//! chunks known to be corrupt. The name-server side is behind
//! [`ClusterRegistry`], so tests (and, until the name servers exist, any
//! peer serving `ns.chunkserver_heartbeat`) can supply the other end.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tessera_common::chunk_api::{self, ChunkServerHeartbeat, HeartbeatAck};
use tessera_common::clock::Clock;
use tessera_common::ids::NodeId;
use tessera_common::rpc::{self, CallOptions, RpcError, Transport};
use tokio::sync::watch;

use crate::scrub::CorruptChunks;
use crate::store::ChunkStore;

/// Where heartbeats go.
pub trait ClusterRegistry: Send + Sync + 'static {
    fn heartbeat(&self, beat: ChunkServerHeartbeat) -> impl Future<Output = Result<HeartbeatAck, RpcError>> + Send;
}

/// Sends heartbeats over RPC to the first name server that answers.
pub struct RpcRegistry<T> {
    transport: T,
    name_servers: Vec<SocketAddr>,
    options: CallOptions,
}

impl<T: Transport> RpcRegistry<T> {
    pub fn new(transport: T, name_servers: Vec<SocketAddr>) -> Self {
        let options = CallOptions {
            timeout: Duration::from_secs(2),
            retries: 0,
            ..CallOptions::default()
        };
        RpcRegistry {
            transport,
            name_servers,
            options,
        }
    }
}

impl<T: Transport> ClusterRegistry for RpcRegistry<T> {
    async fn heartbeat(&self, beat: ChunkServerHeartbeat) -> Result<HeartbeatAck, RpcError> {
        let mut last_error = RpcError::Transport("no name servers configured".into());
        for &peer in &self.name_servers {
            let result =
                rpc::call::<chunk_api::Heartbeat, T>(&self.transport, peer, &beat, bytes::Bytes::new(), &self.options)
                    .await;
            match result {
                Ok((ack, _)) => return Ok(ack),
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }
}

/// Identity fields of every heartbeat.
#[derive(Clone, Debug)]
pub struct HeartbeatIdentity {
    pub node: NodeId,
    pub rpc_addr: String,
    pub zone: String,
}

/// Sends a heartbeat every interval until `shutdown` flips to true. The
/// interval is the name server's latest answer, else `default_interval`.
pub async fn run_heartbeats<S: ChunkStore, R: ClusterRegistry, C: Clock>(
    clock: C,
    store: Arc<S>,
    registry: R,
    identity: HeartbeatIdentity,
    corrupt: CorruptChunks,
    default_interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut interval = default_interval;
    let mut registered = false;
    loop {
        let beat = ChunkServerHeartbeat {
            node: identity.node,
            rpc_addr: identity.rpc_addr.clone(),
            zone: identity.zone.clone(),
            disks: store.disks().await,
            corrupt_chunks: corrupt.snapshot(),
        };
        match registry.heartbeat(beat).await {
            Ok(ack) => {
                if !registered {
                    tracing::info!(node = %identity.node, "registered with the name servers");
                    registered = true;
                }
                metrics::counter!("chunkserver_heartbeats_total", "outcome" => "ok").increment(1);
                interval = Duration::from_millis(ack.interval_ms.clamp(100, 60_000));
            }
            Err(e) => {
                metrics::counter!("chunkserver_heartbeats_total", "outcome" => "error").increment(1);
                tracing::warn!(error = %e, "heartbeat to the name servers failed");
            }
        }
        tokio::select! {
            _ = clock.sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}
