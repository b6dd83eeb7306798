//! The object server's wire API ([`tessera_common::os_api`]): each call is
//! routed to the partition it names; a partition not hosted here answers
//! `NoSuchPartition`, one this replica does not lead answers `NotLeader`
//! (from the partition's Raft calls). Payload checksums are checked before
//! anything is written and computed for every read.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use tessera_common::os_api::{
    self, OpenWriteReq, OsError, PartitionReq, PartitionStatus, RangeReq, ReadOk, UidReq, UidStat, WriteOk, WriteReq,
    IO_BYTES_MAX,
};
use tessera_common::rpc::{RequestCtx, Router};

use crate::partition::Partition;

/// The partitions this server hosts, by id (see [`crate::hosting`]).
#[derive(Clone, Default)]
pub struct Partitions {
    map: Arc<RwLock<BTreeMap<u32, Arc<Partition>>>>,
}

impl Partitions {
    pub fn insert(&self, partition: Arc<Partition>) {
        if let Ok(mut map) = self.map.write() {
            map.insert(partition.id(), partition);
        }
    }

    pub fn get(&self, id: u32) -> Result<Arc<Partition>, OsError> {
        self.map
            .read()
            .ok()
            .and_then(|m| m.get(&id).cloned())
            .ok_or(OsError::NoSuchPartition(id))
    }

    pub fn all(&self) -> Vec<Arc<Partition>> {
        self.map
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn remove(&self, id: u32) -> Option<Arc<Partition>> {
        self.map.write().ok()?.remove(&id)
    }

    /// Removes every partition (for shutdown).
    pub fn drain(&self) -> Vec<Arc<Partition>> {
        self.map
            .write()
            .map(|mut m| std::mem::take(&mut *m).into_values().collect())
            .unwrap_or_default()
    }
}

macro_rules! route {
    ($router:expr, $parts:expr, $m:ty, $f:ident) => {{
        let parts = $parts.clone();
        $router.add::<$m, _, _>(move |_ctx: RequestCtx, req, bulk: Bytes| {
            let parts = parts.clone();
            async move { $f(parts, req, bulk).await }
        })
    }};
}

pub fn routes(router: Router, partitions: Partitions) -> Router {
    let router = route!(router, partitions, os_api::OpenWrite, open_write);
    let router = route!(router, partitions, os_api::Write, write);
    let router = route!(router, partitions, os_api::Confirm, confirm);
    let router = route!(router, partitions, os_api::Read, read);
    let router = route!(router, partitions, os_api::Trim, trim);
    let router = route!(router, partitions, os_api::Delete, delete);
    let router = route!(router, partitions, os_api::Stat, stat);
    route!(router, partitions, os_api::Status, status)
}

type Reply<T> = (Result<T, OsError>, Bytes);

fn no_bulk<T>(result: Result<T, OsError>) -> Reply<T> {
    (result, Bytes::new())
}

async fn open_write(parts: Partitions, req: OpenWriteReq, _: Bytes) -> Reply<()> {
    let result = match parts.get(req.partition) {
        Ok(p) => p.open_write(req.uid, req.size_hint_bytes, req.policy, req.ttl_ms).await,
        Err(e) => Err(e),
    };
    no_bulk(result)
}

async fn write(parts: Partitions, req: WriteReq, bulk: Bytes) -> Reply<WriteOk> {
    if crc32c::crc32c(&bulk) != req.crc32c {
        return no_bulk(Err(OsError::Checksum));
    }
    if bulk.len() as u64 > IO_BYTES_MAX || req.offset.checked_add(bulk.len() as u64).is_none() {
        return no_bulk(Err(OsError::BadRequest(format!(
            "write of {} bytes at {}",
            bulk.len(),
            req.offset
        ))));
    }
    let result = match parts.get(req.partition) {
        Ok(p) => p
            .write(req.uid, req.offset, bulk)
            .await
            .map(|size_bytes| WriteOk { size_bytes }),
        Err(e) => Err(e),
    };
    no_bulk(result)
}

async fn read(parts: Partitions, req: RangeReq, _: Bytes) -> Reply<ReadOk> {
    let result = match parts.get(req.partition) {
        Ok(p) => p.read(req.uid, req.offset, req.len).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(data) => {
            let ok = ReadOk {
                len: data.len() as u64,
                crc32c: crc32c::crc32c(&data),
            };
            (Ok(ok), data)
        }
        Err(e) => no_bulk(Err(e)),
    }
}

async fn confirm(parts: Partitions, req: UidReq, _: Bytes) -> Reply<()> {
    let result = match parts.get(req.partition) {
        Ok(p) => p.confirm(req.uid).await,
        Err(e) => Err(e),
    };
    no_bulk(result)
}

async fn delete(parts: Partitions, req: UidReq, _: Bytes) -> Reply<()> {
    let result = match parts.get(req.partition) {
        Ok(p) => p.delete(req.uid).await,
        Err(e) => Err(e),
    };
    no_bulk(result)
}

async fn trim(parts: Partitions, req: RangeReq, _: Bytes) -> Reply<()> {
    let result = match parts.get(req.partition) {
        Ok(p) => p.trim(req.uid, req.offset, req.len).await,
        Err(e) => Err(e),
    };
    no_bulk(result)
}

async fn stat(parts: Partitions, req: UidReq, _: Bytes) -> Reply<UidStat> {
    let result = match parts.get(req.partition) {
        Ok(p) => p.stat(req.uid).await,
        Err(e) => Err(e),
    };
    no_bulk(result)
}

async fn status(parts: Partitions, req: PartitionReq, _: Bytes) -> Reply<PartitionStatus> {
    let result = match parts.get(req.partition) {
        Ok(p) => p.status().await,
        Err(e) => Err(e),
    };
    no_bulk(result)
}
