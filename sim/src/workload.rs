//! The register workload of the name-server fault test
//! ([`tessera_jepsen::ns_register`]), run by simulated client processes,
//! and the tally of a history's outcomes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tessera_common::ns_client::NameServerClient;
use tessera_common::rpc::RpcClient;
use tessera_jepsen::ns_register::{run_op, Target};
pub use tessera_jepsen::ns_register::{write_outcome, Done, History, Op};
use tessera_jepsen::sim::Rng;
use tessera_jepsen::{Event, EventType, Func};

pub const BUCKET: &str = "sim";
pub const KEYS: [&str; 3] = ["k0", "k1", "k2"];
const TARGET: Target<'static> = Target {
    bucket: BUCKET,
    guard_ttl: Duration::from_secs(10),
};

/// Ok, fail and info counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tally {
    pub ok: usize,
    pub fail: usize,
    pub info: usize,
    /// Writes and create-only writes that took effect.
    pub ok_writes: usize,
}

impl Tally {
    pub fn of(events: &[Event]) -> Tally {
        let mut tally = Tally::default();
        for event in events {
            match event.kind {
                EventType::Ok => {
                    tally.ok += 1;
                    if matches!(event.f, Func::Write | Func::Create) {
                        tally.ok_writes += 1;
                    }
                }
                EventType::Fail => tally.fail += 1,
                EventType::Info => tally.info += 1,
                EventType::Invoke => {}
            }
        }
        tally
    }
}

/// One client process: random operations until `until` (simulated time
/// since the start of the run).
pub async fn client_loop(
    client: NameServerClient<RpcClient>,
    history: History,
    process: u64,
    seed: u64,
    uids: Arc<AtomicU64>,
    until: Duration,
) {
    let mut rng = Rng::new(seed);
    while turmoil::sim_elapsed().unwrap_or_default() < until {
        let key = KEYS[rng.below(KEYS.len() as u64) as usize];
        let op = match rng.below(20) {
            0..=7 => Op::Read,
            8..=12 => Op::Write(uids.fetch_add(1, Ordering::SeqCst)),
            13..=16 => Op::Create(uids.fetch_add(1, Ordering::SeqCst)),
            _ => Op::Delete,
        };
        run_op(&client, &history, TARGET, process, key, op).await;
    }
}
