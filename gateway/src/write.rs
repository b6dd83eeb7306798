//! The write protocol of DESIGN §4, as the gateway runs it for every PUT,
//! copy target, multipart part and multipart completion:
//!
//! 1. a fresh uid, born at a recent name-server log position;
//! 2. `ns.create_guard(name, uid)` (names only, not parts) and
//! 3. `os.open_write(uid)` (the GC entry and its reservation), both at once;
//! 4. the body streamed to the object servers in pieces, a few in flight;
//! 5. the name commit (by the caller: `ns.commit_name`, `ns.put_part` or
//!    `ns.complete_upload`);
//! 6. the answer to the client;
//! 7. `os.confirm(uid)` in the background: a lost confirm is settled by
//!    the GC entry's expiry and `reap` answering "referenced".
//!
//! Nothing is cleaned up on failure: the guard and the GC entry expire and
//! the object server frees the data. A body longer than the TTLs renews
//! both while it streams.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use s3s::{s3_error, S3Error, StdError};
use tessera_common::ids::mint_uid;
use tessera_common::ns_api::StoragePolicy;
use tessera_common::os_client::{OsCallError, OsClient};
use tessera_common::rpc::RpcClient;
use tokio::task::{JoinError, JoinSet};

use crate::backend::Backend;
use crate::errors::{ns_error, os_error};
use crate::failpoints::WriteStep;

/// How long a birth stamp for new uids is reused before the name servers
/// are asked again.
pub const BIRTH_REFRESH: Duration = Duration::from_secs(5);

/// S3's largest single PUT.
pub const PUT_BYTES_MAX: u64 = 5 << 30;

/// A write in progress: steps 1–3 done.
#[derive(Debug)]
pub struct Upload {
    pub uid: u128,
    pub partition: u32,
    policy: StoragePolicy,
    size_hint_bytes: u64,
    /// The guarded name, for names (not parts).
    guard: Option<(String, String)>,
    renewed_at: Instant,
}

/// Sees every byte of a body as it streams (MD5, checksums).
pub trait BodyObserver: Send {
    fn observe(&mut self, bytes: &[u8]);
}

impl Backend {
    /// Steps 1–3: a fresh uid, the guard on `name` (when given) and the GC
    /// entry with `size_hint_bytes` reserved.
    pub async fn begin_write(
        &self,
        name: Option<(&str, &str)>,
        policy: StoragePolicy,
        size_hint_bytes: u64,
    ) -> Result<Upload, S3Error> {
        let uid = self.fresh_uid().await;
        let upload = Upload {
            uid,
            partition: self.os.partition_of(uid).map_err(os_error)?,
            policy,
            size_hint_bytes,
            guard: name.map(|(b, k)| (b.to_string(), k.to_string())),
            renewed_at: Instant::now(),
        };
        tracing::debug!(uid = %format_args!("{uid:032x}"), ?name, "write begins");
        self.renew(&upload).await?;
        Ok(upload)
    }

    /// A fresh uid born at the name servers' log position (see
    /// `tessera_common::ids::uid_birth`), fetched at most once per
    /// [`BIRTH_REFRESH`]. When they cannot answer, the last known position
    /// (or 0) is used: an older birth is safe, the uid is only refused
    /// sooner by the reap watermark.
    pub async fn fresh_uid(&self) -> u128 {
        let birth = match self.births.get(&()) {
            Some(birth) => birth,
            None => match self.ns.log_position().await {
                Ok(position) => {
                    let birth = self.birth_last.fetch_max(position, Ordering::Relaxed).max(position);
                    self.births.insert((), birth);
                    birth
                }
                Err(e) => {
                    tracing::debug!(error = %e, "no log position; minting with the last known birth");
                    self.birth_last.load(Ordering::Relaxed)
                }
            },
        };
        mint_uid(birth)
    }

    /// (Re)creates the guard and the GC entry (both idempotent), at once.
    async fn renew(&self, upload: &Upload) -> Result<(), S3Error> {
        let guard = async {
            match &upload.guard {
                Some((bucket, key)) => {
                    let ttl = Duration::from_millis(self.settings.guard_ttl_ms);
                    self.ns
                        .create_guard(bucket, key, upload.uid, ttl)
                        .await
                        .map_err(ns_error)?;
                    self.failpoints.check(WriteStep::Guard)
                }
                None => Ok(()),
            }
        };
        let gc_entry = async {
            let ttl = Duration::from_millis(self.settings.gc_ttl_ms);
            self.os
                .open_write(upload.uid, upload.size_hint_bytes, upload.policy, ttl)
                .await
                .map_err(os_error)
        };
        tokio::try_join!(guard, gc_entry)?;
        self.failpoints.check(WriteStep::GcEntry)
    }

    /// Step 4: streams `body` (at most `len_max` bytes) to the object
    /// servers, `observer` seeing every byte; returns the bytes written.
    /// When `Ok`, every byte is durable and recorded.
    pub async fn write_body<S>(
        &self,
        upload: &mut Upload,
        mut body: S,
        len_max: u64,
        observer: &mut dyn BodyObserver,
    ) -> Result<u64, S3Error>
    where
        S: Stream<Item = Result<Bytes, StdError>> + Unpin,
    {
        let piece_bytes = self.settings.write_piece_bytes;
        let depth = self.settings.write_pipeline_depth;
        // Spawned so they progress while the body is being received; the
        // set aborts them if this request is dropped.
        let mut in_flight = JoinSet::new();
        let mut buffer = BytesMut::with_capacity(piece_bytes);
        let mut offset = 0u64;
        let mut received = 0u64;
        while let Some(item) = body.next().await {
            let bytes = item.map_err(body_error)?;
            received += bytes.len() as u64;
            if received > len_max {
                return Err(s3_error!(EntityTooLarge, "the body exceeds {len_max} bytes"));
            }
            observer.observe(&bytes);
            buffer.extend_from_slice(&bytes);
            while buffer.len() >= piece_bytes {
                let piece = buffer.split_to(piece_bytes).freeze();
                in_flight.spawn(write_piece(self.os.clone(), upload.uid, offset, piece));
                offset += piece_bytes as u64;
                if in_flight.len() >= depth {
                    settle(in_flight.join_next().await)?;
                }
            }
            self.renew_if_due(upload).await?;
        }
        if !buffer.is_empty() {
            let len = buffer.len() as u64;
            in_flight.spawn(write_piece(self.os.clone(), upload.uid, offset, buffer.freeze()));
            offset += len;
        }
        while let Some(done) = in_flight.join_next().await {
            settle(Some(done))?;
        }
        debug_assert_eq!(offset, received, "every received byte was written");
        self.failpoints.check(WriteStep::Data)?;
        Ok(received)
    }

    async fn renew_if_due(&self, upload: &mut Upload) -> Result<(), S3Error> {
        let ttl_ms = self.settings.guard_ttl_ms.min(self.settings.gc_ttl_ms);
        if upload.renewed_at.elapsed() >= Duration::from_millis(ttl_ms / 3) {
            self.renew(upload).await?;
            upload.renewed_at = Instant::now();
        }
        Ok(())
    }

    /// Step 7, after the answer: drops the GC entry. A failure is only
    /// logged; the entry's expiry settles it (reap answers "referenced").
    /// `Err` only from the `Commit` failpoint: the gateway "crashed" after
    /// the name commit, so the client gets no success and no confirm is
    /// sent.
    pub fn confirm_later(self: &std::sync::Arc<Self>, uid: u128) -> Result<(), S3Error> {
        self.failpoints.check(WriteStep::Commit)?;
        let backend = self.clone();
        tokio::spawn(async move {
            if let Err(e) = backend.os.confirm(uid).await {
                tracing::info!(uid = %format_args!("{uid:032x}"), error = %e, "confirm lost; GC expiry settles it");
            }
        });
        Ok(())
    }
}

async fn write_piece(os: OsClient<RpcClient>, uid: u128, offset: u64, piece: Bytes) -> Result<u64, OsCallError> {
    os.write(uid, offset, piece).await
}

fn settle(done: Option<Result<Result<u64, OsCallError>, JoinError>>) -> Result<(), S3Error> {
    match done {
        Some(Ok(Ok(_))) | None => Ok(()),
        Some(Ok(Err(e))) => Err(os_error(e)),
        Some(Err(e)) => Err(crate::errors::internal("object-server write task", &e)),
    }
}

/// A body that failed mid-stream: the client's fault (a bad signature
/// chunk, a checksum mismatch s3s found, a dropped connection).
fn body_error(e: StdError) -> S3Error {
    match e.downcast::<S3Error>() {
        Ok(s3) => *s3,
        Err(other) => {
            tracing::info!(error = %other, "request body failed");
            s3_error!(IncompleteBody, "the request body could not be read: {other}")
        }
    }
}
