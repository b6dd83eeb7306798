//! Access keys and bucket grants on the wire (`ns.key_*`,
//! `ns.bucket_allow` / `ns.bucket_disallow`): what `tessera admin key` and
//! `tessera admin bucket allow` call. The proposer draws a new key's id and
//! secret (apply stays deterministic); the secret leaves the cluster only
//! in the answer to its creation and is never logged.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rand::distr::{Alphanumeric, SampleString};
use tessera_common::ns_api::{
    self, AccessKeyInfo, GrantReq, KeyCreateReq, KeyListReq, KeyRevokeReq, NewAccessKey, NsError,
};
use tessera_common::rpc::{RequestCtx, Router};

use crate::api::{propose_error, response_error};
use crate::namespace::{Command, Permission, Query, QueryResponse, Response, Secret};
use crate::raft::NsGroup;

/// Key ids look like AWS's: 20 upper-case letters and digits, ours
/// starting with "TK".
fn new_key_id() -> String {
    format!(
        "TK{}",
        Alphanumeric.sample_string(&mut rand::rng(), 18).to_ascii_uppercase()
    )
}

fn new_secret() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 40)
}

fn permission(p: ns_api::Permission) -> Permission {
    match p {
        ns_api::Permission::Read => Permission::Read,
        ns_api::Permission::Write => Permission::Write,
        ns_api::Permission::Owner => Permission::Owner,
    }
}

macro_rules! route {
    ($router:expr, $node:expr, $m:ty, $f:ident) => {{
        let node = $node.clone();
        $router.add::<$m, _, _>(move |_ctx: RequestCtx, req, _bulk: Bytes| {
            let node = node.clone();
            async move { ($f(&node, req).await, Bytes::new()) }
        })
    }};
}

pub fn routes(router: Router, node: NsGroup) -> Router {
    let router = route!(router, node, ns_api::KeyCreate, key_create);
    let router = route!(router, node, ns_api::KeyList, key_list);
    let router = route!(router, node, ns_api::KeyRevoke, key_revoke);
    let router = route!(router, node, ns_api::BucketAllow, bucket_allow);
    route!(router, node, ns_api::BucketDisallow, bucket_disallow)
}

async fn propose_ok(node: &NsGroup, command: Command) -> Result<(), NsError> {
    match node.propose(command).await.map_err(propose_error)? {
        Response::Ok => Ok(()),
        other => Err(response_error(other)),
    }
}

async fn key_create(node: &NsGroup, req: KeyCreateReq) -> Result<NewAccessKey, NsError> {
    let key_id = new_key_id();
    let secret = new_secret();
    let created_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let command = Command::CreateAccessKey {
        key_id: key_id.clone(),
        secret: Secret(secret.clone()),
        owner: req.owner.clone(),
        created_ms,
    };
    propose_ok(node, command).await?;
    tracing::info!(key_id, owner = %req.owner, "access key created");
    Ok(NewAccessKey {
        key_id,
        secret,
        owner: req.owner,
    })
}

async fn key_list(node: &NsGroup, req: KeyListReq) -> Result<Vec<AccessKeyInfo>, NsError> {
    match node
        .read(Query::ListAccessKeys { owner: req.owner })
        .await
        .map_err(propose_error)?
    {
        QueryResponse::AccessKeys(keys) => Ok(keys
            .into_iter()
            .map(|k| AccessKeyInfo {
                key_id: k.key_id,
                owner: k.owner,
                created_ms: k.created_ms,
            })
            .collect()),
        other => Err(NsError::Internal(format!("unexpected answer {other:?}"))),
    }
}

async fn key_revoke(node: &NsGroup, req: KeyRevokeReq) -> Result<(), NsError> {
    propose_ok(node, Command::RevokeAccessKey { key_id: req.key_id }).await
}

async fn bucket_allow(node: &NsGroup, req: GrantReq) -> Result<(), NsError> {
    let command = Command::GrantPermission {
        key_id: req.key_id,
        bucket: req.bucket,
        permission: permission(req.permission),
    };
    propose_ok(node, command).await
}

async fn bucket_disallow(node: &NsGroup, req: GrantReq) -> Result<(), NsError> {
    let command = Command::RevokePermission {
        key_id: req.key_id,
        bucket: req.bucket,
        permission: permission(req.permission),
    };
    propose_ok(node, command).await
}
