//! Client of the name-server group over any [`Transport`]: the calls of
//! [`crate::ns_api`], sent to the leader.
//!
//! The client knows a list of name-server addresses and caches the leader.
//! A call answered `NotLeader` (not executed) is retried at the hinted
//! leader, or at the next address; a call that surely never reached a
//! server (connect failure, server shutting down) is retried at the next
//! address. A call whose outcome is unknown (timeout or transport failure
//! after sending, `Unavailable`) is retried with backoff only when its
//! method is idempotent; otherwise it fails with
//! [`NsCallError::OutcomeUnknown`] and is never retried silently. Attempts
//! are bounded by [`NsClientConfig::max_attempts`].

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;

use crate::ns_api::{
    self, AccessKeyInfo, AddMemberReq, AuthorizeReq, Authz, BucketEntry, BucketReq, ClusterMap, ClusterMapReq,
    CommitNameReq, CommitOk, CompleteUploadReq, CreateBucketReq, CreateGuardReq, CreateUploadReq, DeleteOk, GrantReq,
    KeyCreateReq, KeyListReq, KeyRevokeReq, KeySecret, ListBucketsReq, ListObjectsReq, ListPartsReq, ListUploadsReq,
    LogPositionReq, MembersInfo, MembersReq, NameReq, NewAccessKey, NsError, ObjServerHeartbeat, ObjectInfo,
    ObjectsPage, PartsPage, Permission, PutPartReq, ReapOutcome, ReapReq, RemoveMemberReq, SecretReq, StoragePolicy,
    UploadReq, UploadsPage,
};
use crate::rpc::{self, CallOptions, Method, RpcError, Transport};

/// Why a name-server call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NsCallError {
    /// A definitive refusal by the leader; nothing was changed.
    #[error(transparent)]
    Ns(NsError),
    /// The call may or may not have taken effect (a non-idempotent write
    /// whose answer was lost). Never retried by this client.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// No leader answered within the attempt budget; for a non-idempotent
    /// call this is only returned when no attempt could have executed it.
    #[error("no name-server leader reachable after {attempts} attempts: {last}")]
    NoLeader { attempts: u32, last: String },
    /// A failure of the RPC layer that retrying will not fix.
    #[error(transparent)]
    Rpc(RpcError),
}

/// Knobs of [`NameServerClient`].
#[derive(Clone, Debug)]
pub struct NsClientConfig {
    /// Budget of one attempt.
    pub timeout: Duration,
    /// Attempts per call, over all addresses.
    pub max_attempts: u32,
    /// First backoff between attempts that found no leader; doubles.
    pub backoff: Duration,
    pub backoff_max: Duration,
}

impl Default for NsClientConfig {
    fn default() -> Self {
        NsClientConfig {
            timeout: Duration::from_secs(10),
            max_attempts: 12,
            backoff: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
        }
    }
}

/// What one attempt decided.
enum Next<R> {
    Done(Result<R, NsCallError>),
    /// Try `Some(addr)` next (a leader hint), or the next address; `wait`
    /// says whether to back off first.
    Retry {
        hint: Option<SocketAddr>,
        wait: bool,
        reason: String,
    },
}

pub struct NameServerClient<T> {
    transport: T,
    addrs: Vec<SocketAddr>,
    config: NsClientConfig,
    /// Cached leader, and the index of the next address to try otherwise.
    state: Mutex<(Option<SocketAddr>, usize)>,
}

impl<T: Transport> NameServerClient<T> {
    pub fn new(transport: T, addrs: Vec<SocketAddr>, config: NsClientConfig) -> Self {
        NameServerClient {
            transport,
            addrs,
            config,
            state: Mutex::new((None, 0)),
        }
    }

    /// The cached leader, if any.
    pub fn leader(&self) -> Option<SocketAddr> {
        self.lock().0
    }

    pub async fn create_bucket(&self, name: &str, owner: &str, policy: StoragePolicy) -> Result<(), NsCallError> {
        let req = CreateBucketReq {
            name: name.to_string(),
            owner: owner.to_string(),
            policy,
        };
        self.call::<ns_api::CreateBucket, ()>(&req).await
    }

    pub async fn create_guard(&self, bucket: &str, key: &str, uid: u128, ttl: Duration) -> Result<(), NsCallError> {
        let req = CreateGuardReq {
            bucket: bucket.to_string(),
            key: key.to_string(),
            uid,
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        };
        self.call::<ns_api::CreateGuard, ()>(&req).await
    }

    pub async fn commit_name(&self, req: &CommitNameReq) -> Result<CommitOk, NsCallError> {
        self.call::<ns_api::CommitName, CommitOk>(req).await
    }

    pub async fn get_object(&self, bucket: &str, key: &str) -> Result<Option<ObjectInfo>, NsCallError> {
        self.call::<ns_api::GetObject, Option<ObjectInfo>>(&name_req(bucket, key))
            .await
    }

    pub async fn delete_name(&self, bucket: &str, key: &str) -> Result<DeleteOk, NsCallError> {
        self.call::<ns_api::DeleteName, DeleteOk>(&name_req(bucket, key)).await
    }

    /// A birth stamp for new uids (`ns.log_position`).
    pub async fn log_position(&self) -> Result<u64, NsCallError> {
        self.call::<ns_api::LogPosition, u64>(&LogPositionReq).await
    }

    pub async fn reap(&self, uid: u128) -> Result<ReapOutcome, NsCallError> {
        self.call::<ns_api::Reap, ReapOutcome>(&ReapReq { uid }).await
    }

    pub async fn get_bucket(&self, name: &str) -> Result<Option<BucketEntry>, NsCallError> {
        let req = BucketReq { name: name.to_string() };
        self.call::<ns_api::GetBucket, Option<BucketEntry>>(&req).await
    }

    /// Every bucket, or those of `owner`, by name.
    pub async fn list_buckets(&self, owner: Option<&str>) -> Result<Vec<BucketEntry>, NsCallError> {
        let req = ListBucketsReq {
            owner: owner.map(String::from),
        };
        self.call::<ns_api::ListBuckets, Vec<BucketEntry>>(&req).await
    }

    /// Deletes an empty bucket (no names, no uploads in progress).
    pub async fn delete_bucket(&self, name: &str) -> Result<(), NsCallError> {
        let req = BucketReq { name: name.to_string() };
        self.call::<ns_api::DeleteBucket, ()>(&req).await
    }

    pub async fn list_objects(&self, req: &ListObjectsReq) -> Result<ObjectsPage, NsCallError> {
        self.call::<ns_api::ListObjects, ObjectsPage>(req).await
    }

    /// The secret and owner of an access key (`None`: no such key).
    pub async fn get_secret(&self, key_id: &str) -> Result<Option<KeySecret>, NsCallError> {
        let req = SecretReq {
            key_id: key_id.to_string(),
        };
        self.call::<ns_api::GetSecret, Option<KeySecret>>(&req).await
    }

    pub async fn authorize(&self, key_id: &str, bucket: &str, permission: Permission) -> Result<Authz, NsCallError> {
        let req = AuthorizeReq {
            key_id: key_id.to_string(),
            bucket: bucket.to_string(),
            permission,
        };
        self.call::<ns_api::Authorize, Authz>(&req).await
    }

    /// Starts a multipart upload; answers its id.
    pub async fn create_upload(&self, req: &CreateUploadReq) -> Result<String, NsCallError> {
        self.call::<ns_api::CreateUpload, String>(req).await
    }

    pub async fn put_part(&self, req: &PutPartReq) -> Result<(), NsCallError> {
        self.call::<ns_api::PutPart, ()>(req).await
    }

    /// Commits the upload's name (needs a guard on the request's uid).
    pub async fn complete_upload(&self, req: &CompleteUploadReq) -> Result<CommitOk, NsCallError> {
        self.call::<ns_api::CompleteUpload, CommitOk>(req).await
    }

    pub async fn abort_upload(&self, req: &UploadReq) -> Result<(), NsCallError> {
        self.call::<ns_api::AbortUpload, ()>(req).await
    }

    pub async fn list_uploads(&self, req: &ListUploadsReq) -> Result<UploadsPage, NsCallError> {
        self.call::<ns_api::ListUploads, UploadsPage>(req).await
    }

    pub async fn list_parts(&self, req: &ListPartsReq) -> Result<PartsPage, NsCallError> {
        self.call::<ns_api::ListParts, PartsPage>(req).await
    }

    /// A new access key for `owner` (the secret is in the answer only).
    pub async fn key_create(&self, owner: &str) -> Result<NewAccessKey, NsCallError> {
        let req = KeyCreateReq { owner: owner.into() };
        self.call::<ns_api::KeyCreate, NewAccessKey>(&req).await
    }

    pub async fn key_list(&self, owner: Option<&str>) -> Result<Vec<AccessKeyInfo>, NsCallError> {
        let req = KeyListReq {
            owner: owner.map(String::from),
        };
        self.call::<ns_api::KeyList, Vec<AccessKeyInfo>>(&req).await
    }

    pub async fn key_revoke(&self, key_id: &str) -> Result<(), NsCallError> {
        let req = KeyRevokeReq { key_id: key_id.into() };
        self.call::<ns_api::KeyRevoke, ()>(&req).await
    }

    /// Grants (`allow`) or takes back (`!allow`) `permission` on `bucket`.
    pub async fn bucket_grant(
        &self,
        key_id: &str,
        bucket: &str,
        permission: Permission,
        allow: bool,
    ) -> Result<(), NsCallError> {
        let req = GrantReq {
            key_id: key_id.into(),
            bucket: bucket.into(),
            permission,
        };
        if allow {
            self.call::<ns_api::BucketAllow, ()>(&req).await
        } else {
            self.call::<ns_api::BucketDisallow, ()>(&req).await
        }
    }

    /// Announces an object server (its address) to the cluster map.
    pub async fn objserver_heartbeat(&self, beat: &ObjServerHeartbeat) -> Result<(), NsCallError> {
        self.call::<ns_api::ObjServerBeat, ()>(beat).await
    }

    /// The cluster map (nodes with liveness, partition replicas).
    pub async fn cluster_map(&self) -> Result<ClusterMap, NsCallError> {
        self.call::<ns_api::GetClusterMap, ClusterMap>(&ClusterMapReq).await
    }

    /// The Raft group's members as the leader sees them.
    pub async fn members(&self) -> Result<MembersInfo, NsCallError> {
        self.call::<ns_api::AdminMembers, MembersInfo>(&MembersReq).await
    }

    /// Adds name server `id` at `addr` as a learner, waits until it caught
    /// up, then makes it a voter if `promote`.
    pub async fn add_member(&self, id: u64, addr: &str, promote: bool) -> Result<(), NsCallError> {
        let req = AddMemberReq {
            id,
            addr: addr.to_string(),
            promote,
        };
        self.call::<ns_api::AdminAdd, ()>(&req).await
    }

    /// Removes name server `id` from the group; the last voter is refused.
    pub async fn remove_member(&self, id: u64) -> Result<(), NsCallError> {
        self.call::<ns_api::AdminRemove, ()>(&RemoveMemberReq { id }).await
    }

    /// Sends `M` to the leader, following hints and retrying as the module
    /// documentation says.
    async fn call<M, R>(&self, request: &M::Request) -> Result<R, NsCallError>
    where
        M: Method<Response = Result<R, NsError>>,
    {
        let mut backoff = self.config.backoff;
        let mut last = String::from("no name-server address configured");
        for attempt in 0..self.config.max_attempts {
            let Some(peer) = self.target() else { break };
            match self.attempt::<M, R>(peer, request).await {
                Next::Done(result) => return result,
                Next::Retry { hint, wait, reason } => {
                    tracing::debug!(method = M::NAME, %peer, attempt, %reason, "name-server call retried");
                    self.forget(peer, hint);
                    last = reason;
                    if wait {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(self.config.backoff_max);
                    }
                }
            }
        }
        Err(NsCallError::NoLeader {
            attempts: self.config.max_attempts,
            last,
        })
    }

    async fn attempt<M, R>(&self, peer: SocketAddr, request: &M::Request) -> Next<R>
    where
        M: Method<Response = Result<R, NsError>>,
    {
        let opts = CallOptions {
            timeout: self.config.timeout,
            retries: 0,
            ..CallOptions::default()
        };
        match rpc::call::<M, T>(&self.transport, peer, request, Bytes::new(), &opts).await {
            Ok((Ok(value), _)) => {
                self.lock().0 = Some(peer);
                Next::Done(Ok(value))
            }
            Ok((Err(e), _)) => answer::<M, R>(e),
            Err(e) => rpc_failure::<M, R>(peer, e),
        }
    }

    /// The cached leader, else the next address in turn.
    fn target(&self) -> Option<SocketAddr> {
        let mut state = self.lock();
        if let Some(leader) = state.0 {
            return Some(leader);
        }
        let addr = self.addrs.get(state.1 % self.addrs.len().max(1)).copied();
        state.1 = state.1.wrapping_add(1);
        addr
    }

    /// Drops `failed` as the cached leader; adopts `hint` if any.
    fn forget(&self, failed: SocketAddr, hint: Option<SocketAddr>) {
        let mut state = self.lock();
        if hint.is_some() && hint != Some(failed) {
            state.0 = hint;
        } else if state.0 == Some(failed) || hint == Some(failed) {
            state.0 = None;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Option<SocketAddr>, usize)> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn name_req(bucket: &str, key: &str) -> NameReq {
    NameReq {
        bucket: bucket.to_string(),
        key: key.to_string(),
    }
}

/// Decides on an application-level refusal.
fn answer<M: Method, R>(e: NsError) -> Next<R> {
    match e {
        NsError::NotLeader { leader_addr } => {
            let hint = leader_addr.as_deref().and_then(|a| a.parse::<SocketAddr>().ok());
            Next::Retry {
                wait: hint.is_none(),
                hint,
                reason: format!("not leader (hint {leader_addr:?})"),
            }
        }
        NsError::Unavailable(reason) if M::IDEMPOTENT => Next::Retry {
            hint: None,
            wait: true,
            reason,
        },
        NsError::Unavailable(reason) => Next::Done(Err(NsCallError::OutcomeUnknown(reason))),
        other => Next::Done(Err(NsCallError::Ns(other))),
    }
}

/// Decides on an RPC failure. Only a call that never reached a handler
/// (connect failure, server shutting down, unknown method, bad request)
/// is known not to have executed; any other failure leaves a
/// non-idempotent call's outcome unknown.
fn rpc_failure<M: Method, R>(peer: SocketAddr, e: RpcError) -> Next<R> {
    let reason = format!("{peer}: {e}");
    match e {
        RpcError::Connect { .. } | RpcError::ShuttingDown => Next::Retry {
            hint: None,
            wait: true,
            reason,
        },
        RpcError::UnknownMethod(_) | RpcError::BadRequest(_) | RpcError::Version(_) => {
            Next::Done(Err(NsCallError::Rpc(e)))
        }
        RpcError::Timeout(_) | RpcError::Transport(_) if M::IDEMPOTENT => Next::Retry {
            hint: None,
            wait: true,
            reason,
        },
        _ if M::IDEMPOTENT => Next::Done(Err(NsCallError::Rpc(e))),
        _ => Next::Done(Err(NsCallError::OutcomeUnknown(reason))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::RawResponse;
    use crate::wire::Wire;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    /// One scripted answer: an encoded reply, or an RPC failure.
    type Answer = Result<Bytes, RpcError>;

    fn reply<T: Wire>(value: T) -> Answer {
        Ok(Bytes::from(value.to_wire().map_err(RpcError::from)?.into_vec()))
    }

    /// Answers every call with the next scripted result, recording peers.
    #[derive(Clone)]
    struct Scripted {
        answers: Arc<Mutex<Vec<Answer>>>,
        calls: Arc<AtomicU32>,
        peers: Arc<Mutex<Vec<SocketAddr>>>,
    }

    impl Transport for Scripted {
        async fn call_raw(
            &self,
            peer: SocketAddr,
            _method: &'static str,
            _body: Bytes,
            _bulk: Bytes,
            _opts: &CallOptions,
        ) -> Result<RawResponse, RpcError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.peers.lock().expect("lock").push(peer);
            let next = self.answers.lock().expect("lock").remove(0);
            Ok(RawResponse {
                body: next?,
                bulk: Bytes::new(),
            })
        }
    }

    fn client(answers: Vec<Answer>) -> (NameServerClient<Scripted>, Scripted) {
        let t = Scripted {
            answers: Arc::new(Mutex::new(answers)),
            calls: Arc::new(AtomicU32::new(0)),
            peers: Arc::new(Mutex::new(Vec::new())),
        };
        let addrs = vec!["127.0.0.1:1".parse().expect("a"), "127.0.0.1:2".parse().expect("a")];
        let config = NsClientConfig {
            backoff: Duration::from_millis(1),
            max_attempts: 4,
            ..NsClientConfig::default()
        };
        (NameServerClient::new(t.clone(), addrs, config), t)
    }

    fn commit_req() -> CommitNameReq {
        CommitNameReq {
            bucket: "b".into(),
            key: "k".into(),
            uid: 1,
            size: 0,
            etag: String::new(),
            content_type: None,
            user_meta: Vec::new(),
            system_meta: Vec::new(),
            partition: 0,
            condition: Default::default(),
        }
    }

    #[tokio::test]
    async fn follows_the_leader_hint_and_caches_it() {
        let ok = CommitOk { version_id: "v".into() };
        let (c, t) = client(vec![
            reply(Result::<CommitOk, NsError>::Err(NsError::NotLeader {
                leader_addr: Some("127.0.0.1:9".into()),
            })),
            reply(Result::<CommitOk, NsError>::Ok(ok.clone())),
        ]);
        assert_eq!(c.commit_name(&commit_req()).await.expect("commit"), ok);
        let leader: SocketAddr = "127.0.0.1:9".parse().expect("a");
        assert_eq!(t.peers.lock().expect("lock").last(), Some(&leader));
        assert_eq!(c.leader(), Some(leader));
    }

    #[tokio::test]
    async fn a_lost_commit_answer_is_outcome_unknown_and_not_retried() {
        let (c, t) = client(vec![Err(RpcError::Transport("reset".into()))]);
        let result = c.commit_name(&commit_req()).await;
        assert!(matches!(result, Err(NsCallError::OutcomeUnknown(_))), "{result:?}");
        assert_eq!(t.calls.load(Ordering::SeqCst), 1);

        let (c, t) = client(vec![Err(RpcError::Internal("reply not encodable".into()))]);
        let result = c.commit_name(&commit_req()).await;
        assert!(matches!(result, Err(NsCallError::OutcomeUnknown(_))), "{result:?}");
        assert_eq!(t.calls.load(Ordering::SeqCst), 1);

        let (c, t) = client(vec![reply(Result::<CommitOk, NsError>::Err(NsError::Unavailable(
            "no quorum".into(),
        )))]);
        let result = c.commit_name(&commit_req()).await;
        assert!(matches!(result, Err(NsCallError::OutcomeUnknown(_))), "{result:?}");
        assert_eq!(t.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn connect_failures_rotate_addresses_and_are_bounded() {
        let refused = || {
            Err(RpcError::Connect {
                addr: "127.0.0.1:1".parse().expect("a"),
                reason: "refused".into(),
            })
        };
        let (c, t) = client(vec![refused(), refused(), refused(), refused()]);
        let result = c.commit_name(&commit_req()).await;
        assert!(
            matches!(result, Err(NsCallError::NoLeader { attempts: 4, .. })),
            "{result:?}"
        );
        let peers = t.peers.lock().expect("lock").clone();
        assert_ne!(peers[0], peers[1], "rotates over the addresses");
    }

    #[tokio::test]
    async fn refusals_are_returned_as_is() {
        let (c, _) = client(vec![reply(Result::<CommitOk, NsError>::Err(NsError::NoGuard))]);
        assert!(matches!(
            c.commit_name(&commit_req()).await,
            Err(NsCallError::Ns(NsError::NoGuard))
        ));
    }

    #[tokio::test]
    async fn membership_changes_are_never_retried_blindly() {
        let (c, t) = client(vec![reply(Result::<(), NsError>::Err(NsError::Unavailable(
            "timeout".into(),
        )))]);
        let result = c.add_member(4, "127.0.0.1:4", true).await;
        assert!(matches!(result, Err(NsCallError::OutcomeUnknown(_))), "{result:?}");
        assert_eq!(t.calls.load(Ordering::SeqCst), 1);

        let (c, _) = client(vec![
            reply(Result::<(), NsError>::Err(NsError::NotLeader {
                leader_addr: Some("127.0.0.1:9".into()),
            })),
            reply(Result::<(), NsError>::Err(NsError::LastVoter)),
        ]);
        assert!(matches!(
            c.remove_member(1).await,
            Err(NsCallError::Ns(NsError::LastVoter))
        ));
    }

    #[tokio::test]
    async fn idempotent_calls_are_retried_when_the_outcome_is_unknown() {
        let (c, t) = client(vec![
            Err(RpcError::Timeout(Duration::from_secs(1))),
            reply(Result::<(), NsError>::Err(NsError::Unavailable("election".into()))),
            reply(Result::<(), NsError>::Ok(())),
        ]);
        c.create_guard("b", "k", 1, Duration::from_secs(1))
            .await
            .expect("guard");
        assert_eq!(t.calls.load(Ordering::SeqCst), 3);
    }
}
