//! A running gateway: the S3 service over HTTP on `listen`, speaking to
//! the cluster as the node `identity` (mutual TLS). `tessera gateway
//! --config FILE` runs one until SIGINT or SIGTERM; `tessera dev` starts
//! one in-process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use s3s::service::S3ServiceBuilder;
use tessera_common::ns_client::{NameServerClient, NsClientConfig};
use tessera_common::pki::NodeIdentity;
use tessera_common::rpc::{RpcClient, RpcClientConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::backend::Backend;
use crate::config::GatewayConfig;
use crate::failpoints::Failpoints;
use crate::intake::Intake;
use crate::s3::access::{Access, Auth};
use crate::s3::host::VirtualHosts;
use crate::s3::TesseraS3;

/// How often the object servers' topology is read from the cluster map.
const TOPOLOGY_REFRESH: Duration = Duration::from_secs(2);

/// A serving gateway. Stop it with [`Gateway::shutdown`].
pub struct Gateway {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
    /// Keeps the object-server topology fresh from the cluster map.
    topology: JoinHandle<()>,
    client: RpcClient,
    failpoints: Arc<Failpoints>,
}

impl Gateway {
    pub async fn start(config: GatewayConfig) -> anyhow::Result<Gateway> {
        config.validate()?;
        let identity = NodeIdentity::load(&config.certs_dir, &config.identity)
            .with_context(|| format!("loading identity {:?}", config.identity))?;
        let client = RpcClient::new(identity, RpcClientConfig::default()).context("creating the RPC client")?;
        let failpoints = Arc::new(Failpoints::from_env());
        let backend = Arc::new(Backend::new(&config, client.clone(), failpoints.clone())?);
        let ns = Arc::new(NameServerClient::new(
            client.clone(),
            config.nameservers.clone(),
            NsClientConfig::default(),
        ));
        let topology = tokio::spawn(backend.os.clone().refresh_loop(ns, TOPOLOGY_REFRESH));
        let mut builder = S3ServiceBuilder::new(TesseraS3::new(backend.clone()));
        builder.set_auth(Auth(backend.clone()));
        builder.set_access(Access(backend));
        if !config.virtual_host_domains.is_empty() {
            builder.set_host(VirtualHosts::new(&config.virtual_host_domains));
        }
        let service = builder.build();
        let listener = match TcpListener::bind(config.listen).await {
            Ok(listener) => listener,
            Err(e) => {
                topology.abort();
                return Err(e).with_context(|| format!("listening for S3 on {}", config.listen));
            }
        };
        let addr = listener.local_addr().context("reading the S3 listen address")?;
        let (stop, stopped) = watch::channel(false);
        let intake = Intake {
            header_bytes_max: config.protocol.header_bytes_max,
            hosts: (!config.virtual_host_domains.is_empty()).then(|| VirtualHosts::new(&config.virtual_host_domains)),
        };
        let server = tokio::spawn(crate::server::serve(listener, service, intake, stopped));
        tracing::info!(%addr, "S3 gateway serving");
        Ok(Gateway {
            addr,
            stop,
            server,
            topology,
            client,
            failpoints,
        })
    }

    /// Where S3 is served.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The write-protocol failpoints (tests arm them).
    pub fn failpoints(&self) -> &Arc<Failpoints> {
        &self.failpoints
    }

    /// Stops accepting, lets requests in flight finish (bounded), closes
    /// the cluster connections.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.topology.abort();
        if let Err(e) = self.server.await {
            tracing::warn!(error = %e, "the S3 server task failed");
        }
        self.client.shutdown();
        tracing::info!(addr = %self.addr, "S3 gateway stopped");
    }
}

/// `tessera gateway`: serves until SIGINT or SIGTERM.
pub async fn run(config: GatewayConfig) -> anyhow::Result<()> {
    if let Some(addr) = config.metrics_listen {
        tessera_common::telemetry::serve_metrics(addr)?;
    }
    let gateway = Gateway::start(config).await?;
    tessera_common::signal::wait_for_shutdown_signal().await?;
    tracing::info!("shutting down");
    gateway.shutdown().await;
    Ok(())
}
