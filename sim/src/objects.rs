//! The object register workload: the same per-key register as
//! [`crate::workload`], but every write stores a body through the gateway's
//! write protocol ([`Backend`]: uid, guard, GC entry, data erasure-coded
//! over the chunk servers, conditional name commit, confirm) and every read
//! fetches the body back and checks it byte for byte.
//!
//! A body carries its value and a filler derived from it, so a read that
//! returns wrong bytes is a violation, never a value. After the faults end,
//! every key is read once more until it answers: a name whose data cannot
//! be read is a violation (DESIGN §8: no name points at missing data).
//!
//! Beside the registers, a set: clients add elements, each an object under
//! its own key that is never overwritten, and at the end every element
//! whose write was acknowledged must read back whole. The registers are
//! overwritten within seconds, so only the set shows an acknowledged write
//! lost long after it was made.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use tessera_common::ns_api::{CommitCondition, CommitNameReq, ListObjectsReq, ObjectsPage, StoragePolicy};
use tessera_gateway::backend::Backend;
use tessera_gateway::write::BodyObserver;
use tessera_jepsen::sim::Rng;
use tessera_jepsen::Func;

use crate::observer::Observer;
use crate::workload::{write_outcome, Done, History, Op, BUCKET, KEYS};

/// The bucket's policy: EC 4+2 over the six chunk servers.
pub const POLICY: StoragePolicy = StoragePolicy::Ec { k: 4, m: 2 };
/// Body sizes (bytes) span several stripes' worth of fragments.
const BODY_BYTES: Range<u64> = 64..24_576;
/// How long the final reads may take to find each key readable.
const FINAL_READ_WAIT: Duration = Duration::from_secs(30);
/// Of every [`OP_KINDS`] operations, this many are set additions.
const SET_ADDS: u64 = 4;
const OP_KINDS: u64 = 24;

/// The set workload's acknowledged elements.
#[derive(Clone, Debug, Default)]
pub struct AckedSet {
    values: Arc<Mutex<Vec<u64>>>,
}

impl AckedSet {
    fn insert(&self, value: u64) {
        self.values.lock().unwrap_or_else(|p| p.into_inner()).push(value);
    }

    pub fn values(&self) -> Vec<u64> {
        self.values.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn set_key(value: u64) -> String {
    format!("set/{value:08}")
}

/// The body that stores `value`.
pub fn body(value: u64) -> Bytes {
    let header = format!("tessera-sim value {value}\n");
    let len = BODY_BYTES.start + value.wrapping_mul(2_654_435_761) % (BODY_BYTES.end - BODY_BYTES.start);
    let mut bytes = header.into_bytes();
    let filler = len.saturating_sub(bytes.len() as u64).max(1);
    bytes.extend((0..filler).map(|i| value.wrapping_mul(31).wrapping_add(i.wrapping_mul(7)) as u8));
    Bytes::from(bytes)
}

/// The value a body stores, if it is exactly a body [`body`] makes.
pub fn value_of(bytes: &[u8]) -> Option<u64> {
    let line_end = bytes.iter().position(|b| *b == b'\n')?;
    let line = std::str::from_utf8(&bytes[..line_end]).ok()?;
    let value: u64 = line.strip_prefix("tessera-sim value ")?.parse().ok()?;
    (body(value) == bytes).then_some(value)
}

struct Ignore;

impl BodyObserver for Ignore {
    fn observe(&mut self, _bytes: &[u8]) {}
}

/// A write of `value` through the write protocol.
async fn write(backend: &Backend, key: &str, value: u64, condition: CommitCondition) -> Done {
    let data = body(value);
    let size = data.len() as u64;
    let mut upload = match backend.begin_write(Some((BUCKET, key)), POLICY, size).await {
        Ok(upload) => upload,
        Err(e) => return Done::Fail(format!("begin_write: {e:?}")),
    };
    let stream = futures::stream::iter([Ok::<Bytes, s3s::StdError>(data)]);
    if let Err(e) = backend.write_body(&mut upload, stream, size, &mut Ignore).await {
        return Done::Fail(format!("write_body: {e:?}"));
    }
    let commit = CommitNameReq {
        bucket: BUCKET.into(),
        key: key.into(),
        uid: upload.uid,
        size,
        etag: format!("v{value}"),
        content_type: None,
        user_meta: Vec::new(),
        system_meta: Vec::new(),
        partition: upload.partition,
        condition,
    };
    let done = write_outcome(&backend.ns.commit_name(&commit).await);
    if matches!(done, Done::Ok(_)) {
        let os = backend.os.clone();
        let uid = upload.uid;
        tokio::spawn(async move { os.confirm(uid).await });
    }
    done
}

/// What a read found.
enum Read {
    Value(Option<u64>),
    /// The name exists but its data could not be read (yet).
    Unreadable(String),
    /// Bytes that are not the body of any value.
    Wrong(String),
    /// The name servers did not answer.
    Unknown(String),
}

async fn read(backend: &Backend, key: &str) -> Read {
    let info = match backend.ns.get_object(BUCKET, key).await {
        Ok(Some(info)) => info,
        Ok(None) => return Read::Value(None),
        Err(e) => return Read::Unknown(e.to_string()),
    };
    match backend.read_range(&info, 0..info.size).await {
        Ok(bytes) => match value_of(&bytes) {
            Some(value) if info.etag == format!("v{value}") => Read::Value(Some(value)),
            _ => Read::Wrong(format!(
                "{key} (uid {:032x}, etag {}): {} bytes that are not its body",
                info.uid,
                info.etag,
                bytes.len()
            )),
        },
        Err(e) => Read::Unreadable(format!("{key} (uid {:032x}): {e:?}", info.uid)),
    }
}

/// Runs one operation and records it; wrong bytes become a violation.
async fn run_op(backend: &Backend, history: &History, observer: &Observer, process: u64, key: &str, op: Op) {
    let (f, input) = match op {
        Op::Read => (Func::Read, Value::Null),
        Op::Write(value) => (Func::Write, json!(value)),
        Op::Create(value) => (Func::Create, json!(value)),
        Op::Delete => (Func::Delete, Value::Null),
    };
    history.invoke(process, f, key, input.clone());
    let done = match op {
        Op::Read => match read(backend, key).await {
            Read::Value(value) => Done::Ok(json!(value)),
            Read::Unreadable(why) | Read::Unknown(why) => Done::Info(why),
            Read::Wrong(why) => {
                observer.record_violation(now(), format!("read back wrong bytes: {why}"));
                Done::Info(why)
            }
        },
        Op::Write(value) => match write(backend, key, value, CommitCondition::None).await {
            Done::Ok(_) => Done::Ok(input.clone()),
            other => other,
        },
        Op::Create(value) => match write(backend, key, value, CommitCondition::IfNoneMatch).await {
            Done::Ok(_) => Done::Ok(input.clone()),
            other => other,
        },
        Op::Delete => write_outcome(&backend.ns.delete_name(BUCKET, key).await),
    };
    history.complete(process, f, key, input, done);
}

fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

/// What one client process shares with the others.
#[derive(Clone)]
pub struct Shared {
    pub backend: Arc<Backend>,
    pub history: History,
    pub observer: Observer,
    pub set: AckedSet,
    pub values: Arc<AtomicU64>,
}

/// One client process: random operations until `until` (simulated time).
pub async fn client_loop(shared: Shared, process: u64, seed: u64, until: Duration) {
    let mut rng = Rng::new(seed);
    while now() < until {
        let key = KEYS[rng.below(KEYS.len() as u64) as usize];
        let value = || shared.values.fetch_add(1, Ordering::SeqCst);
        let op = match rng.below(OP_KINDS) {
            0..=7 => Op::Read,
            8..=13 => Op::Write(value()),
            14..=17 => Op::Create(value()),
            roll if roll >= OP_KINDS - SET_ADDS => {
                let element = value();
                if matches!(
                    write(&shared.backend, &set_key(element), element, CommitCondition::None).await,
                    Done::Ok(_)
                ) {
                    shared.set.insert(element);
                }
                continue;
            }
            _ => Op::Delete,
        };
        run_op(&shared.backend, &shared.history, &shared.observer, process, key, op).await;
    }
}

/// After the faults: every acknowledged set element must read back whole
/// within [`FINAL_READ_WAIT`] (for all of them together).
pub async fn final_set_reads(backend: &Backend, set: &AckedSet, observer: &Observer) {
    let deadline = now() + FINAL_READ_WAIT;
    for element in set.values() {
        let key = set_key(element);
        loop {
            let why = match read(backend, &key).await {
                Read::Value(Some(value)) if value == element => break,
                Read::Value(Some(value)) => format!("holds value {value}"),
                Read::Value(None) => "has no name".to_string(),
                Read::Wrong(why) => format!("read back wrong bytes: {why}"),
                Read::Unreadable(why) | Read::Unknown(why) if now() < deadline => {
                    tracing::debug!(%key, %why, "set element not readable yet");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Read::Unreadable(why) | Read::Unknown(why) => format!("unreadable after the faults: {why}"),
            };
            observer.record_violation(now(), format!("acknowledged set element {key} {why}"));
            break;
        }
    }
}

/// After the faults: every key must become readable within
/// [`FINAL_READ_WAIT`]; its reads are recorded like any other.
pub async fn final_reads(backend: &Backend, history: &History, observer: &Observer, process: u64) {
    for key in KEYS {
        let deadline = now() + FINAL_READ_WAIT;
        loop {
            history.invoke(process, Func::Read, key, Value::Null);
            let (done, last) = match read(backend, key).await {
                Read::Value(value) => (Done::Ok(json!(value)), None),
                Read::Wrong(why) => {
                    observer.record_violation(now(), format!("read back wrong bytes: {why}"));
                    (Done::Info(why), None)
                }
                Read::Unreadable(why) | Read::Unknown(why) => (Done::Info(why.clone()), Some(why)),
            };
            let settled = last.is_none();
            history.complete(process, Func::Read, key, Value::Null, done);
            if settled {
                break;
            }
            if now() >= deadline {
                let why = last.unwrap_or_default();
                observer.record_violation(
                    now(),
                    format!("{key} unreadable {FINAL_READ_WAIT:?} after the faults: {why}"),
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// What the names of the bucket need: their count and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Live {
    pub objects: u64,
    pub bytes: u64,
}

/// Lists the bucket's current versions (retrying each page while the name
/// servers do not answer).
pub async fn live_objects(backend: &Backend) -> Result<Live, String> {
    let mut live = Live::default();
    let mut start_after = None;
    loop {
        let request = ListObjectsReq {
            bucket: BUCKET.into(),
            prefix: String::new(),
            delimiter: None,
            start_after: start_after.clone(),
            max_keys: 1_000,
        };
        let page = list_page(backend, &request).await?;
        live.objects += page.contents.len() as u64;
        live.bytes += page.contents.iter().map(|o| o.size).sum::<u64>();
        match page.next_marker {
            Some(marker) if page.is_truncated => start_after = Some(marker),
            _ => return Ok(live),
        }
    }
}

async fn list_page(backend: &Backend, request: &ListObjectsReq) -> Result<ObjectsPage, String> {
    let mut last = String::new();
    for _ in 0..20 {
        match backend.ns.list_objects(request).await {
            Ok(page) => return Ok(page),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!("listing the bucket failed: {last}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip_and_a_flipped_byte_is_no_value() {
        for value in [0, 1, 7, 12_345, u64::MAX] {
            let bytes = body(value);
            assert!(BODY_BYTES.contains(&(bytes.len() as u64)) || bytes.len() as u64 >= BODY_BYTES.start);
            assert_eq!(value_of(&bytes), Some(value));
            let mut flipped = bytes.to_vec();
            let last = flipped.len() - 1;
            flipped[last] ^= 1;
            assert_eq!(value_of(&flipped), None);
            assert_eq!(value_of(&bytes[..bytes.len() - 1]), None);
        }
    }
}
