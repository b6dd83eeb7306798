//! The client side of a fault test: workers that run S3 operations through
//! every gateway and record each one in a history (invocation before the
//! request, completion after the answer).
//!
//! * **register**: per-key PUT, GET, DELETE, and conditional PUTs as
//!   compare-and-set (`If-Match` on the ETag of the expected body) and
//!   create (`If-None-Match: *`), with unique values and self-verifying
//!   bodies. Keys rotate after [`WorkloadConfig::ops_per_key_max`]
//!   invocations, so each key's history stays small enough to check.
//! * **set**: PUTs of unique keys under one prefix, and LISTs of the prefix.
//! * **multipart**: large multipart objects of random bytes, read back and
//!   compared byte for byte after the faults.
//!
//! A process whose operation ended `info` is retired (it may still be in
//! flight at the server): the worker goes on as a new process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::Bytes;
use serde_json::{json, Value};

use crate::history::{Event, EventType, Func, Recorder, PRECONDITION_FAILED};
use crate::s3ops::{describe, write_error, OpError, S3Register};
use crate::sim::Rng;

/// Shape of the workload.
#[derive(Clone, Copy, Debug)]
pub struct WorkloadConfig {
    pub register_workers: usize,
    pub set_workers: usize,
    /// One worker uploading large multipart objects, or none.
    pub multipart: bool,
    /// Keys written at once by the register workers.
    pub keys_active: usize,
    /// Invocations per register key before it is retired.
    pub ops_per_key_max: u64,
    pub seed: u64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            register_workers: 8,
            set_workers: 2,
            multipart: true,
            keys_active: 4,
            ops_per_key_max: 150,
            seed: 1,
        }
    }
}

const SET_KEY: &str = "set";
const SET_PREFIX: &str = "set/";
const MULTIPART_PREFIX: &str = "multipart/";
const MULTIPART_PART_BYTES: usize = 5 << 20;
const MULTIPART_PARTS: usize = 3;
/// Between operations of one worker, so a 2-core machine is not saturated.
const THINK_TIME: Duration = Duration::from_millis(10);

/// A large object written by the multipart worker and whether its
/// completion was acknowledged.
#[derive(Clone, Debug)]
struct LargeObject {
    key: String,
    seed: u64,
    acknowledged: bool,
}

/// Which register keys are being written and how often each was used.
#[derive(Debug, Default)]
struct KeyRotation {
    active: Vec<(String, u64)>,
    next: u64,
    /// Every key ever used, for the final reads.
    all: Vec<String>,
}

/// Everything the workers share: clients, recorders and the findings that
/// are not linearizability (corrupt bodies, multipart mismatches).
pub struct Workload {
    config: WorkloadConfig,
    gateways: Vec<Client>,
    bucket: String,
    pub register: Recorder,
    pub set: Recorder,
    integrity: Mutex<Vec<String>>,
    keys: Mutex<KeyRotation>,
    last_values: Mutex<HashMap<String, String>>,
    large: Mutex<Vec<LargeObject>>,
    next_process: AtomicU64,
    next_value: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Workload {
    /// `gateways`: one client per gateway; worker `i` uses gateway `i % n`.
    pub fn new(config: WorkloadConfig, gateways: Vec<Client>, bucket: String) -> Arc<Self> {
        assert!(!gateways.is_empty(), "a workload needs at least one gateway");
        Arc::new(Workload {
            config,
            gateways,
            bucket,
            register: Recorder::new(),
            set: Recorder::new(),
            integrity: Mutex::new(Vec::new()),
            keys: Mutex::new(KeyRotation::default()),
            last_values: Mutex::new(HashMap::new()),
            large: Mutex::new(Vec::new()),
            next_process: AtomicU64::new(0),
            next_value: AtomicU64::new(0),
        })
    }

    /// Integrity violations found so far (corrupt reads, large objects that
    /// differ).
    pub fn integrity_violations(&self) -> Vec<String> {
        lock(&self.integrity).clone()
    }

    /// Runs every worker until `deadline`. Cancellation safe: an operation
    /// cut off is simply never completed in the history (= unknown).
    pub async fn run(self: &Arc<Self>, deadline: Instant) {
        let mut tasks = Vec::new();
        for worker in 0..self.config.register_workers {
            let this = Arc::clone(self);
            tasks.push(tokio::spawn(
                async move { this.register_worker(worker, deadline).await },
            ));
        }
        for worker in 0..self.config.set_workers {
            let this = Arc::clone(self);
            tasks.push(tokio::spawn(async move { this.set_worker(worker, deadline).await }));
        }
        if self.config.multipart {
            let this = Arc::clone(self);
            tasks.push(tokio::spawn(async move { this.multipart_worker(deadline).await }));
        }
        for task in tasks {
            let _ = task.await;
        }
    }

    fn client(&self, worker: usize) -> &Client {
        &self.gateways[worker % self.gateways.len()]
    }

    fn fresh_process(&self) -> u64 {
        self.next_process.fetch_add(1, Ordering::Relaxed)
    }

    fn fresh_value(&self, process: u64) -> String {
        format!("{process}-{}", self.next_value.fetch_add(1, Ordering::Relaxed))
    }

    fn pick_key(&self, rng: &mut Rng) -> String {
        let mut keys = lock(&self.keys);
        while keys.active.len() < self.config.keys_active {
            let key = format!("register/k{}", keys.next);
            keys.next += 1;
            keys.all.push(key.clone());
            keys.active.push((key, 0));
        }
        let slot = rng.below(keys.active.len() as u64) as usize;
        keys.active[slot].1 += 1;
        let (key, used) = keys.active[slot].clone();
        if used >= self.config.ops_per_key_max {
            keys.active.swap_remove(slot);
        }
        key
    }

    async fn register_worker(self: Arc<Self>, worker: usize, deadline: Instant) {
        let mut rng = Rng::new(self.config.seed ^ (worker as u64 + 1).wrapping_mul(0x9E37_79B9));
        let register = S3Register {
            client: self.client(worker).clone(),
            bucket: self.bucket.clone(),
        };
        let mut process = self.fresh_process();
        while Instant::now() < deadline {
            let key = self.pick_key(&mut rng);
            if self.register_op(&register, process, &key, &mut rng).await == EventType::Info {
                process = self.fresh_process();
            }
            tokio::time::sleep(THINK_TIME).await;
        }
    }

    /// One random register operation, recorded; returns how it ended.
    async fn register_op(&self, register: &S3Register, process: u64, key: &str, rng: &mut Rng) -> EventType {
        let roll = rng.below(100);
        if roll < 40 {
            return self.read(register, process, key).await;
        }
        let value = self.fresh_value(process);
        let last = lock(&self.last_values).get(key).cloned();
        let (f, input) = match (roll, last) {
            (40..=59, _) => (Func::Write, json!(value)),
            (60..=79, Some(from)) => (Func::Cas, json!({ "from": from, "to": value })),
            (60..=89, _) => (Func::Create, json!(value)),
            _ => (Func::Delete, Value::Null),
        };
        self.register
            .record(Event::new(EventType::Invoke, process, f, key, input.clone()));
        let result = match f {
            Func::Write => register.write(key, &value).await,
            Func::Create => register.create(key, &value).await,
            Func::Cas => {
                let from = input["from"].as_str().unwrap_or_default().to_owned();
                register.cas(key, &from, &value).await
            }
            _ => register.delete(key).await,
        };
        if result.is_ok() && f != Func::Delete {
            lock(&self.last_values).insert(key.to_owned(), value);
        }
        let (kind, error) = completion(&result);
        let mut event = Event::new(kind, process, f, key, input);
        if let Some(error) = error {
            event = event.with_error(error);
        }
        self.register.record(event);
        kind
    }

    async fn read(&self, register: &S3Register, process: u64, key: &str) -> EventType {
        self.register
            .record(Event::new(EventType::Invoke, process, Func::Read, key, Value::Null));
        let (kind, value, error) = match register.read(key).await {
            Ok(Some(value)) => {
                lock(&self.last_values).insert(key.to_owned(), value.clone());
                (EventType::Ok, json!(value), None)
            }
            Ok(None) => (EventType::Ok, Value::Null, None),
            Err(e) => {
                if matches!(e, OpError::Corrupt(_)) {
                    lock(&self.integrity).push(format!("read of {key}: {e}"));
                }
                (EventType::Fail, Value::Null, Some(e.to_string()))
            }
        };
        let mut event = Event::new(kind, process, Func::Read, key, value);
        if let Some(error) = error {
            event = event.with_error(error);
        }
        self.register.record(event);
        kind
    }

    /// Reads every register key once more (after the faults healed) with a
    /// fresh process, so the last value of each key is observed.
    pub async fn final_register_reads(&self) {
        let keys = lock(&self.keys).all.clone();
        let register = S3Register {
            client: self.client(0).clone(),
            bucket: self.bucket.clone(),
        };
        let process = self.fresh_process();
        for key in keys {
            self.read(&register, process, &key).await;
        }
    }

    async fn set_worker(self: Arc<Self>, worker: usize, deadline: Instant) {
        let client = self.client(worker + 1).clone();
        let mut process = self.fresh_process();
        let mut ops = 0u64;
        while Instant::now() < deadline {
            ops += 1;
            let kind = if ops.is_multiple_of(10) {
                self.set_read(&client, process).await
            } else {
                self.set_add(&client, process).await
            };
            if kind == EventType::Info {
                process = self.fresh_process();
            }
            tokio::time::sleep(THINK_TIME).await;
        }
    }

    async fn set_add(&self, client: &Client, process: u64) -> EventType {
        let element = format!("e{}", self.fresh_value(process));
        self.set.record(Event::new(
            EventType::Invoke,
            process,
            Func::Add,
            SET_KEY,
            json!(element),
        ));
        let key = format!("{SET_PREFIX}{element}");
        let answer = client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .body(ByteStream::from(crate::s3ops::body(&key, &element)))
            .send()
            .await;
        let result = answer.map(drop).map_err(|e| write_error(&e));
        let (kind, error) = completion(&result);
        let mut event = Event::new(kind, process, Func::Add, SET_KEY, json!(element));
        if let Some(error) = error {
            event = event.with_error(error);
        }
        self.set.record(event);
        kind
    }

    /// LISTs the whole set prefix; a failed listing is a `fail` (reads
    /// change nothing).
    pub async fn set_read(&self, client: &Client, process: u64) -> EventType {
        self.set.record(Event::new(
            EventType::Invoke,
            process,
            Func::ReadAll,
            SET_KEY,
            Value::Null,
        ));
        let event = match self.list(client, SET_PREFIX).await {
            Ok(keys) => {
                let elements: Vec<String> = keys
                    .into_iter()
                    .filter_map(|(k, _)| k.strip_prefix(SET_PREFIX).map(str::to_owned))
                    .collect();
                Event::new(EventType::Ok, process, Func::ReadAll, SET_KEY, json!(elements))
            }
            Err(e) => Event::new(EventType::Fail, process, Func::ReadAll, SET_KEY, Value::Null).with_error(e),
        };
        let kind = event.kind;
        self.set.record(event);
        kind
    }

    /// The final read of the set, retried until a listing succeeds.
    pub async fn final_set_read(&self, patience: Duration) -> bool {
        let until = Instant::now() + patience;
        let process = self.fresh_process();
        loop {
            if self.set_read(self.client(0), process).await == EventType::Ok {
                return true;
            }
            if Instant::now() > until {
                return false;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Every (key, size) under `prefix` (all pages).
    pub async fn list(&self, client: &Client, prefix: &str) -> Result<Vec<(String, u64)>, String> {
        list_objects(client, &self.bucket, prefix).await
    }

    async fn multipart_worker(self: Arc<Self>, deadline: Instant) {
        let client = self.client(0).clone();
        let mut n = 0u64;
        while Instant::now() < deadline {
            n += 1;
            let object = LargeObject {
                key: format!("{MULTIPART_PREFIX}m{n}"),
                seed: self.config.seed.wrapping_mul(1000).wrapping_add(n),
                acknowledged: false,
            };
            let acknowledged = upload_large(&client, &self.bucket, &object).await.is_ok();
            lock(&self.large).push(LargeObject { acknowledged, ..object });
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Reads back every large object: an acknowledged one must be there
    /// byte for byte; an unacknowledged one absent or byte for byte.
    /// Returns (objects checked, acknowledged).
    pub async fn check_large_objects(&self) -> (usize, usize) {
        let objects = lock(&self.large).clone();
        let client = self.client(1);
        for object in &objects {
            let expected = large_body(object.seed);
            let answer = client.get_object().bucket(&self.bucket).key(&object.key).send().await;
            let problem = match answer {
                Ok(output) => match output.body.collect().await.map(|b| b.into_bytes()) {
                    Ok(body) if body == expected => None,
                    Ok(_) => Some("differs from what was written".to_owned()),
                    Err(e) => Some(format!("could not be read: {e}")),
                },
                Err(e) if crate::s3ops::status_of(&e) == Some(404) && !object.acknowledged => None,
                Err(e) => Some(format!("could not be read: {}", describe(&e))),
            };
            if let Some(problem) = problem {
                let state = if object.acknowledged {
                    "acknowledged"
                } else {
                    "unacknowledged"
                };
                lock(&self.integrity).push(format!("{state} multipart object {}: {problem}", object.key));
            }
        }
        (objects.len(), objects.iter().filter(|o| o.acknowledged).count())
    }
}

/// The history completion of a write's result.
fn completion(result: &Result<(), OpError>) -> (EventType, Option<String>) {
    match result {
        Ok(()) => (EventType::Ok, None),
        Err(OpError::Precondition) => (EventType::Fail, Some(PRECONDITION_FAILED.to_owned())),
        Err(e @ (OpError::Definite(_) | OpError::Corrupt(_))) => (EventType::Fail, Some(e.to_string())),
        Err(e @ OpError::Indefinite(_)) => (EventType::Info, Some(e.to_string())),
    }
}

/// Every (key, size) under `prefix` in `bucket`, all pages.
pub async fn list_objects(client: &Client, bucket: &str, prefix: &str) -> Result<Vec<(String, u64)>, String> {
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let page = client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_continuation_token(token)
            .send()
            .await
            .map_err(|e| describe(&e))?;
        for object in page.contents() {
            let size = object.size().unwrap_or(0).max(0) as u64;
            out.push((object.key().unwrap_or_default().to_owned(), size));
        }
        token = page.next_continuation_token().map(str::to_owned);
        if token.is_none() {
            return Ok(out);
        }
    }
}

fn large_body(seed: u64) -> Bytes {
    let mut bytes = vec![0u8; MULTIPART_PART_BYTES * MULTIPART_PARTS];
    blake3::Hasher::new_keyed(blake3::hash(&seed.to_le_bytes()).as_bytes())
        .finalize_xof()
        .fill(&mut bytes);
    Bytes::from(bytes)
}

async fn upload_large(client: &Client, bucket: &str, object: &LargeObject) -> Result<(), String> {
    let body = large_body(object.seed);
    let upload = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(&object.key)
        .send()
        .await
        .map_err(|e| describe(&e))?;
    let upload_id = upload.upload_id().unwrap_or_default().to_owned();
    let mut parts = Vec::new();
    for (index, chunk) in body.chunks(MULTIPART_PART_BYTES).enumerate() {
        let number = index as i32 + 1;
        let part = client
            .upload_part()
            .bucket(bucket)
            .key(&object.key)
            .upload_id(&upload_id)
            .part_number(number)
            .body(ByteStream::from(Bytes::copy_from_slice(chunk)))
            .send()
            .await
            .map_err(|e| describe(&e))?;
        parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(part.e_tag().map(str::to_owned))
                .build(),
        );
    }
    client
        .complete_multipart_upload()
        .bucket(bucket)
        .key(&object.key)
        .upload_id(&upload_id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await
        .map_err(|e| describe(&e))?;
    Ok(())
}
