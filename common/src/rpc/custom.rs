//! A network other than QUIC and TLS under [`RpcClient`] and [`RpcServer`],
//! chosen by [`Network`]: the deterministic simulator plugs its simulated
//! sockets in here, so node code runs unchanged on top of it. Production
//! always uses [`Network::Tls`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{RawResponse, Router, RpcClient, RpcClientConfig, RpcError, RpcServer, RpcServerConfig};
use crate::pki::NodeIdentity;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// One call as a custom network carries it.
#[derive(Debug, Clone)]
pub struct CustomCall {
    pub peer: SocketAddr,
    pub method: &'static str,
    pub request_id: u64,
    pub body: Bytes,
    pub bulk: Bytes,
    /// Budget of this attempt; the network fails it with
    /// [`RpcError::Timeout`] when over.
    pub timeout: Duration,
}

/// The client and server halves of a custom network.
pub trait CustomNetwork: Send + Sync + 'static {
    /// Delivers one call and waits for its response.
    fn call(&self, call: CustomCall) -> BoxFuture<Result<RawResponse, RpcError>>;

    /// Serves `router` on `listen` until the returned server is shut down.
    fn serve(&self, listen: SocketAddr, router: Router) -> BoxFuture<anyhow::Result<Box<dyn CustomServer>>>;
}

/// A listening custom server.
pub trait CustomServer: Send + Sync + 'static {
    fn local_addr(&self) -> SocketAddr;
    /// Stops accepting and serving; calls in flight are abandoned.
    fn shutdown(self: Box<Self>) -> BoxFuture<()>;
}

/// How a node reaches its peers and serves them.
#[derive(Clone)]
pub enum Network {
    /// QUIC plus the TCP+TLS data channel, with this node's certificate.
    Tls(NodeIdentity),
    /// Another network (the simulator's).
    Custom(Arc<dyn CustomNetwork>),
}

impl Network {
    /// A client on this network. Must run inside a tokio runtime.
    pub fn client(&self, config: RpcClientConfig) -> anyhow::Result<RpcClient> {
        match self {
            Network::Tls(identity) => RpcClient::new(identity.clone(), config),
            Network::Custom(net) => Ok(RpcClient::custom(net.clone())),
        }
    }

    /// Serves `router` on `listen` over this network.
    pub async fn serve(
        &self,
        listen: SocketAddr,
        router: Router,
        config: RpcServerConfig,
    ) -> anyhow::Result<RpcServer> {
        match self {
            Network::Tls(identity) => RpcServer::bind(listen, identity.clone(), router, config).await,
            Network::Custom(net) => Ok(RpcServer::custom(net.serve(listen, router).await?)),
        }
    }
}
