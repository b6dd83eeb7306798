//! The gateway's hold on the cluster: clients of the name servers and the
//! object servers, the protocol settings, the failpoints, and short-lived
//! caches of what every request asks (access-key secrets, grants, bucket
//! settings). The write protocol lives in [`crate::write`], the read path
//! in [`crate::read`]; both are methods of [`Backend`].

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use tessera_common::ns_api::{Authz, BucketEntry, KeySecret, Permission, StoragePolicy};
use tessera_common::ns_client::{NameServerClient, NsCallError, NsClientConfig};
use tessera_common::os_client::{OsClient, OsClientConfig};
use tessera_common::rpc::RpcClient;

use crate::cache::TtlCache;
use crate::config::{GatewayConfig, ProtocolSettings};
use crate::failpoints::Failpoints;

/// Entries each cache holds at most.
const CACHE_ENTRIES_MAX: usize = 10_000;

pub struct Backend {
    pub ns: NameServerClient<RpcClient>,
    pub os: OsClient<RpcClient>,
    pub settings: ProtocolSettings,
    pub failpoints: Arc<Failpoints>,
    pub region: String,
    /// The storage policy of buckets created through S3.
    pub bucket_policy: StoragePolicy,
    buckets: TtlCache<String, Option<BucketEntry>>,
    secrets: TtlCache<String, Option<KeySecret>>,
    grants: TtlCache<(String, String, u8), bool>,
    /// The birth stamp for new uids (`write::fresh_uid`) and the newest
    /// one seen.
    pub(crate) births: TtlCache<(), u64>,
    pub(crate) birth_last: AtomicU64,
}

fn permission_tag(p: Permission) -> u8 {
    match p {
        Permission::Read => 0,
        Permission::Write => 1,
        Permission::Owner => 2,
    }
}

impl Backend {
    pub fn new(config: &GatewayConfig, transport: RpcClient, failpoints: Arc<Failpoints>) -> anyhow::Result<Backend> {
        let ttl = Duration::from_millis(config.protocol.auth_cache_ttl_ms);
        Ok(Backend {
            ns: NameServerClient::new(transport.clone(), config.nameservers.clone(), NsClientConfig::default()),
            os: OsClient::new(transport, Vec::new(), 0, OsClientConfig::default()),
            settings: config.protocol.clone(),
            failpoints,
            region: config.region.clone(),
            bucket_policy: config.policy()?,
            buckets: TtlCache::new(ttl, CACHE_ENTRIES_MAX),
            secrets: TtlCache::new(ttl, CACHE_ENTRIES_MAX),
            grants: TtlCache::new(ttl, CACHE_ENTRIES_MAX),
            births: TtlCache::new(crate::write::BIRTH_REFRESH, 1),
            birth_last: AtomicU64::new(0),
        })
    }

    /// A bucket's settings (cached).
    pub async fn bucket(&self, name: &str) -> Result<Option<BucketEntry>, NsCallError> {
        if let Some(found) = self.buckets.get(&name.to_string()) {
            return Ok(found);
        }
        let found = self.ns.get_bucket(name).await?;
        self.buckets.insert(name.to_string(), found.clone());
        Ok(found)
    }

    /// Forgets what is cached of `bucket` (after this gateway changed it).
    pub fn forget_bucket(&self, name: &str) {
        self.buckets.remove(&name.to_string());
        self.grants.remove_where(|(_, bucket, _)| bucket == name);
    }

    /// An access key's secret and owner (cached).
    pub async fn secret(&self, key_id: &str) -> Result<Option<KeySecret>, NsCallError> {
        if let Some(found) = self.secrets.get(&key_id.to_string()) {
            return Ok(found);
        }
        let found = self.ns.get_secret(key_id).await?;
        self.secrets.insert(key_id.to_string(), found.clone());
        Ok(found)
    }

    /// Whether `key_id` may do `permission` on `bucket` (cached).
    pub async fn allowed(&self, key_id: &str, bucket: &str, permission: Permission) -> Result<bool, NsCallError> {
        let cache_key = (key_id.to_string(), bucket.to_string(), permission_tag(permission));
        if let Some(allowed) = self.grants.get(&cache_key) {
            return Ok(allowed);
        }
        let allowed = self.ns.authorize(key_id, bucket, permission).await? == Authz::Allowed;
        self.grants.insert(cache_key, allowed);
        Ok(allowed)
    }
}
