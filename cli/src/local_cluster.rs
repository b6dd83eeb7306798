//! A whole cluster in this process over real loopback sockets: one name
//! server, `chunk_servers` chunk servers (a directory each), one object
//! server hosting every partition, and optionally an S3 gateway. The same
//! role libraries as a real cluster; what `tessera dev` serves, what
//! `tessera bench objserver` measures and what the S3 tests run against.
//!
//! The nodes' addresses are chosen on the first start and kept in
//! `DIR/addresses.json`, so a restart on the same directory finds the same
//! cluster (Raft memberships and the cluster map name addresses).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tessera_chunkserver::config::ChunkServerConfig;
use tessera_chunkserver::node::ChunkServer;
use tessera_common::ns_api::NewAccessKey;
use tessera_common::ns_client::{NameServerClient, NsClientConfig};
use tessera_common::os_client::{OsClient, OsClientConfig};
use tessera_common::pki::{self, NodeIdentity};
use tessera_common::rpc::{RpcClient, RpcClientConfig};
use tessera_common::testing::stable_loopback_addr;
use tessera_gateway::config::{GatewayConfig, ProtocolSettings};
use tessera_gateway::node::Gateway;
use tessera_nameserver::config::{BootstrapMember, ClusterSettings, NameServerConfig, RaftTuning};
use tessera_nameserver::raft::RaftNode;
use tessera_objserver::config::{DataSettings, ObjServerConfig};
use tessera_objserver::node::ObjServer;

/// What to start.
#[derive(Clone, Debug)]
pub struct LocalSpec {
    pub chunk_servers: usize,
    pub partitions: u32,
    /// The object server's data-log knobs.
    pub data: DataSettings,
    /// An S3 gateway, if any.
    pub gateway: Option<GatewaySpec>,
}

impl LocalSpec {
    /// `chunk_servers` chunk servers, `partitions` partitions, default
    /// settings, no gateway.
    pub fn new(chunk_servers: usize, partitions: u32) -> LocalSpec {
        LocalSpec {
            chunk_servers,
            partitions,
            data: DataSettings::default(),
            gateway: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct GatewaySpec {
    /// Where S3 is served (`127.0.0.1:0` for any port).
    pub listen: SocketAddr,
    pub protocol: ProtocolSettings,
    pub virtual_host_domains: Vec<String>,
}

/// The nodes' addresses, kept across restarts.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Addresses {
    nameserver: SocketAddr,
    objserver: SocketAddr,
}

impl Addresses {
    fn load_or_choose(dir: &Path) -> anyhow::Result<Addresses> {
        let path = dir.join("addresses.json");
        if path.exists() {
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            return serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()));
        }
        let chosen = Addresses {
            nameserver: stable_loopback_addr(),
            objserver: stable_loopback_addr(),
        };
        write_atomically(&path, serde_json::to_string_pretty(&chosen)?.as_bytes())?;
        Ok(chosen)
    }
}

/// Writes `bytes` to `path` through a synced temporary file and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let temp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temp).with_context(|| format!("creating {}", temp.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", temp.display()))?;
    std::fs::rename(&temp, path).with_context(|| format!("renaming {} to {}", temp.display(), path.display()))?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", parent.display()))?;
    }
    Ok(())
}

pub struct LocalCluster {
    pub certs: PathBuf,
    pub ns_addr: SocketAddr,
    pub os_addr: SocketAddr,
    pub partitions: u32,
    ns: RaftNode,
    chunk_servers: Vec<Option<ChunkServer>>,
    obj: ObjServer,
    gateway: Option<Gateway>,
}

fn chunk_config(index: usize, certs: &Path, disk: &Path, ns: SocketAddr) -> anyhow::Result<ChunkServerConfig> {
    let text = format!(
        "node_id = {node}\nlisten = \"127.0.0.1:0\"\ncerts_dir = \"{certs}\"\nidentity = \"cs{index}\"\n\
         name_servers = [\"{ns}\"]\nheartbeat_interval_ms = 200\n\n[store]\n[[store.disks]]\npath = \"{disk}\"\n",
        node = 100 + index,
        certs = certs.display(),
        disk = disk.display(),
    );
    ChunkServerConfig::parse(&text)
}

impl LocalCluster {
    /// Starts everything under `dir` and waits until the object server
    /// sees every chunk server.
    pub async fn start(dir: &Path, spec: &LocalSpec) -> anyhow::Result<LocalCluster> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let certs = dir.join("certs");
        let mut names: Vec<String> = vec!["ns1".into(), "os1".into(), "gw1".into(), "admin".into()];
        names.extend((0..spec.chunk_servers).map(|i| format!("cs{i}")));
        if !certs.join("ca.pem").exists() {
            pki::init_cluster(&certs, &names).context("creating certificates")?;
        }
        let addresses = Addresses::load_or_choose(dir)?;
        let ns_addr = addresses.nameserver;
        let ns = RaftNode::start(NameServerConfig {
            node_id: 1,
            listen: ns_addr,
            advertise: None,
            data_dir: dir.join("ns1"),
            certs_dir: certs.clone(),
            identity: "ns1".into(),
            metrics_listen: None,
            raft: RaftTuning::loopback(),
            bootstrap: vec![BootstrapMember { id: 1, addr: ns_addr }],
            cluster: ClusterSettings {
                partitions: spec.partitions,
                partition_replicas: 1,
                ..ClusterSettings::loopback()
            },
        })
        .await
        .context("starting the name server")?;
        let mut chunk_servers = Vec::new();
        for index in 0..spec.chunk_servers {
            let disk = dir.join(format!("cs{index}"));
            std::fs::create_dir_all(&disk).with_context(|| format!("creating {}", disk.display()))?;
            let server = ChunkServer::start(chunk_config(index, &certs, &disk, ns_addr)?)
                .await
                .with_context(|| format!("starting chunk server {index}"))?;
            chunk_servers.push(Some(server));
        }
        let os_addr = addresses.objserver;
        let obj = ObjServer::start(ObjServerConfig {
            node_id: 11,
            listen: os_addr,
            advertise: None,
            data_dir: dir.join("os1"),
            certs_dir: certs.clone(),
            identity: "os1".into(),
            zone: "default".into(),
            nameservers: vec![ns_addr],
            metrics_listen: None,
            raft: RaftTuning::loopback(),
            data: spec.data.clone(),
        })
        .await
        .context("starting the object server")?;
        let mut cluster = LocalCluster {
            certs,
            ns_addr,
            os_addr,
            partitions: spec.partitions,
            ns,
            chunk_servers,
            obj,
            gateway: None,
        };
        cluster.wait_for_chunk_servers().await?;
        cluster.partitions = cluster.wait_for_partitions().await?;
        if let Some(gateway) = &spec.gateway {
            cluster.gateway = Some(cluster.start_gateway(gateway).await?);
        }
        Ok(cluster)
    }

    async fn start_gateway(&self, spec: &GatewaySpec) -> anyhow::Result<Gateway> {
        let config = GatewayConfig {
            listen: spec.listen,
            certs_dir: self.certs.clone(),
            identity: "gw1".into(),
            nameservers: vec![self.ns_addr],
            metrics_listen: None,
            region: "us-east-1".into(),
            virtual_host_domains: spec.virtual_host_domains.clone(),
            bucket_policy: "ec:4:2".into(),
            protocol: spec.protocol.clone(),
        };
        Gateway::start(config).await.context("starting the S3 gateway")
    }

    /// Waits until the object server sees every running chunk server at
    /// its current address: chunk servers listen on a fresh port at each
    /// start, and after a restart the cluster map still lists the old
    /// ports until each server registers again.
    async fn wait_for_chunk_servers(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let running: Vec<SocketAddr> = self.chunk_servers.iter().flatten().map(|cs| cs.local_addr()).collect();
        loop {
            let seen: Vec<SocketAddr> = self.obj.cluster().chunk_servers().iter().map(|s| s.addr).collect();
            let missing = running.iter().filter(|addr| !seen.contains(addr)).count();
            if missing == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the object server does not see {missing} of {} chunk servers at their addresses",
                    running.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the object server leads every partition of the map
    /// (placed by the name server once the object server heartbeats; a
    /// data directory from an earlier run keeps its count). Returns the
    /// partition count.
    async fn wait_for_partitions(&self) -> anyhow::Result<u32> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let placed = self.obj.cluster().partition_map().map_or(0, |map| map.len());
            let leading = self.obj.partitions().iter().filter(|p| p.raft().is_leader()).count();
            if placed > 0 && leading == placed {
                return u32::try_from(placed).context("partition count");
            }
            if Instant::now() > deadline {
                bail!("the object server leads {leading} of {placed} placed partitions");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// An RPC client with the `admin` identity.
    pub fn transport(&self) -> anyhow::Result<RpcClient> {
        let identity = NodeIdentity::load(&self.certs, "admin")?;
        RpcClient::new(identity, RpcClientConfig::default())
    }

    pub fn os_client(&self) -> anyhow::Result<OsClient<RpcClient>> {
        Ok(OsClient::new(
            self.transport()?,
            vec![self.os_addr],
            self.partitions,
            OsClientConfig::default(),
        ))
    }

    pub fn ns_client(&self) -> anyhow::Result<NameServerClient<RpcClient>> {
        Ok(NameServerClient::new(
            self.transport()?,
            vec![self.ns_addr],
            NsClientConfig::default(),
        ))
    }

    /// A new access key for `owner`.
    pub async fn create_key(&self, owner: &str) -> anyhow::Result<NewAccessKey> {
        let ns = self.ns_client()?;
        ns.key_create(owner).await.context("creating an access key")
    }

    /// The S3 gateway, when the spec asked for one.
    pub fn gateway(&self) -> Option<&Gateway> {
        self.gateway.as_ref()
    }

    /// `http://addr` of the S3 gateway.
    pub fn s3_endpoint(&self) -> Option<String> {
        self.gateway.as_ref().map(|g| format!("http://{}", g.local_addr()))
    }

    /// The address of running chunk server `index`.
    pub fn chunk_server_addr(&self, index: usize) -> Option<SocketAddr> {
        self.chunk_servers.get(index)?.as_ref().map(ChunkServer::local_addr)
    }

    pub async fn stop_chunk_server(&mut self, index: usize) {
        if let Some(server) = self.chunk_servers.get_mut(index).and_then(Option::take) {
            server.shutdown().await;
        }
    }

    /// Stops the gateway first (requests in flight finish), then the
    /// object server, the chunk servers and the name server.
    pub async fn shutdown(self) {
        if let Some(gateway) = self.gateway {
            gateway.shutdown().await;
        }
        self.obj.shutdown().await;
        for server in self.chunk_servers.into_iter().flatten() {
            server.shutdown().await;
        }
        self.ns.shutdown().await;
    }
}
