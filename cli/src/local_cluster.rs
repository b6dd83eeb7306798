//! A whole cluster in this process over real loopback sockets: one name
//! server, `chunk_servers` chunk servers (a directory each), one object
//! server hosting every partition. The same role libraries as a real
//! cluster; what `tessera bench objserver` measures (and what `tessera dev`
//! will serve).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tessera_chunkserver::config::ChunkServerConfig;
use tessera_chunkserver::node::ChunkServer;
use tessera_common::os_client::{OsClient, OsClientConfig};
use tessera_common::pki::{self, NodeIdentity};
use tessera_common::rpc::{RpcClient, RpcClientConfig};
use tessera_common::testing::stable_loopback_addr;
use tessera_nameserver::config::{BootstrapMember, ClusterSettings, NameServerConfig, RaftTuning};
use tessera_nameserver::raft::RaftNode;
use tessera_objserver::config::{DataSettings, ObjServerConfig, Peer};
use tessera_objserver::node::ObjServer;

/// What to start.
#[derive(Clone, Debug)]
pub struct LocalSpec {
    pub chunk_servers: usize,
    pub partitions: u32,
}

pub struct LocalCluster {
    pub certs: PathBuf,
    pub os_addr: SocketAddr,
    pub partitions: u32,
    ns: RaftNode,
    chunk_servers: Vec<Option<ChunkServer>>,
    obj: ObjServer,
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
        let certs = dir.join("certs");
        let mut names: Vec<String> = vec!["ns1".into(), "os1".into(), "admin".into()];
        names.extend((0..spec.chunk_servers).map(|i| format!("cs{i}")));
        if !certs.join("ca.pem").exists() {
            pki::init_cluster(&certs, &names).context("creating certificates")?;
        }
        let ns_addr = stable_loopback_addr();
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
            cluster: ClusterSettings::loopback(),
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
        let os_addr = stable_loopback_addr();
        let obj = ObjServer::start(ObjServerConfig {
            node_id: 11,
            listen: os_addr,
            data_dir: dir.join("os1"),
            certs_dir: certs.clone(),
            identity: "os1".into(),
            zone: "default".into(),
            nameservers: vec![ns_addr],
            partitions: spec.partitions,
            replicas: 1,
            objservers: vec![Peer { id: 11, addr: os_addr }],
            metrics_listen: None,
            raft: RaftTuning::loopback(),
            data: DataSettings::default(),
        })
        .await
        .context("starting the object server")?;
        let cluster = LocalCluster {
            certs,
            os_addr,
            partitions: spec.partitions,
            ns,
            chunk_servers,
            obj,
        };
        cluster.wait_for_chunk_servers(spec.chunk_servers).await?;
        Ok(cluster)
    }

    async fn wait_for_chunk_servers(&self, count: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.obj.cluster().chunk_servers().len() < count {
            if Instant::now() > deadline {
                bail!(
                    "the object server sees {} of {count} chunk servers",
                    self.obj.cluster().chunk_servers().len()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
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

    /// The address of running chunk server `index`.
    pub fn chunk_server_addr(&self, index: usize) -> Option<SocketAddr> {
        self.chunk_servers.get(index)?.as_ref().map(ChunkServer::local_addr)
    }

    pub async fn stop_chunk_server(&mut self, index: usize) {
        if let Some(server) = self.chunk_servers.get_mut(index).and_then(Option::take) {
            server.shutdown().await;
        }
    }

    pub async fn shutdown(self) {
        self.obj.shutdown().await;
        for server in self.chunk_servers.into_iter().flatten() {
            server.shutdown().await;
        }
        self.ns.shutdown().await;
    }
}
