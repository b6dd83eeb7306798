//! One simulated run from one seed: three name servers (with
//! [`SimOptions::storage`], also three object servers and six chunk
//! servers) and a client host under turmoil on this thread, node logic
//! drawing from a generator seeded with the seed, RocksDB calls run in
//! place, faults and clock drift from the seed, the invariants of
//! [`crate::observer`] checked after every step, and the history checked
//! for linearizability at the end.
//!
//! The seed decides everything that varies: turmoil's message latencies,
//! Raft's election timeouts, uids and retry jitter, the workload, the
//! faults and each host's clock rate. The same seed gives the same history
//! ([`SeedReport::digest`]) when it is the first run of its process
//! ([`crate::process`]).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tessera_common::ids::NodeId;
use tessera_common::ns_api::{NsError, StoragePolicy};
use tessera_common::ns_client::{NameServerClient, NsCallError, NsClientConfig};
use tessera_common::rpc::RpcClient;
use tessera_jepsen::{check_events, CheckOptions, CheckResult, Event, Register};

use tessera_gateway::backend::Backend;
use tessera_gateway::config::{GatewayConfig, ProtocolSettings};

use crate::chunks::{MemChunkStore, MemStoreConfig};
use crate::cli::replay_command;
use crate::cluster::{self, host_name, NAME_SERVERS};
use crate::drift::{with_drift, DriftRates};
use crate::nemesis::{Nemesis, RocksHost, Targets, LATENCY_MAX};
use crate::net::TurmoilNetwork;
use crate::observer::Observer;
use crate::report::{NoGarbage, SeedReport, SimFailure};
use crate::workload::{self, History, Tally, BUCKET};
use crate::{chunk_check, objects, storage};

/// What a run does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimOptions {
    pub seed: u64,
    /// Simulated time the clients run.
    pub workload: Duration,
    pub clients: u64,
    /// Turn on [`tessera_nameserver::deliberate_bugs::set_stale_reads`].
    pub stale_reads_bug: bool,
    /// Turn on [`MemChunkStore::set_ack_before_sync`] on every chunk
    /// server (whole-cluster runs).
    pub ack_before_sync_bug: bool,
    /// Turn on [`tessera_raft::deliberate_bugs::set_unsynced_log`] on every
    /// name server and object server.
    pub unsynced_log_bug: bool,
    /// Also run object and chunk servers, and the object workload through
    /// the gateway's write protocol instead of the name-server one.
    pub storage: bool,
    /// Each host's clock runs fast by a rate from the seed up to this many
    /// parts per million ([`crate::drift`]); 0 turns drift off.
    pub drift_ppm_max: u64,
    /// Whole-cluster runs: after the final reads, let the cluster run
    /// [`QUIET`] without faults or clients, then check that nothing is
    /// left but what the names need ([`check_no_garbage`]).
    pub garbage_check: bool,
}

/// The bound of clock-rate drift runs use unless told otherwise
/// (`tessera-sim --drift PPM`): 5%, far beyond a quartz clock's 0.01%, so
/// that a 30-second run sees timing differences a real cluster takes hours
/// or a misbehaving hypervisor to build up.
pub const DRIFT_PPM_MAX: u64 = 50_000;

impl SimOptions {
    pub fn new(seed: u64) -> SimOptions {
        SimOptions {
            seed,
            workload: Duration::from_secs(20),
            clients: 4,
            stale_reads_bug: false,
            ack_before_sync_bug: false,
            unsynced_log_bug: false,
            storage: false,
            drift_ppm_max: DRIFT_PPM_MAX,
            garbage_check: false,
        }
    }

    /// The whole cluster: 3 name servers, 3 object servers, 6 chunk
    /// servers, the object workload.
    pub fn whole_cluster(seed: u64) -> SimOptions {
        SimOptions {
            workload: Duration::from_secs(30),
            storage: true,
            garbage_check: true,
            ..SimOptions::new(seed)
        }
    }
}

/// Held by a run: runs in one process take turns. Even so, a run replays
/// exactly only as the first in its process ([`crate::process`]).
static RUNS: Mutex<()> = Mutex::new(());

/// Runs one seed on this thread (after any other thread's run ends).
pub fn run_seed(options: &SimOptions) -> Result<SeedReport, SimFailure> {
    let _turn = RUNS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let _thread = ThreadSetup::enter(options);
    let started = Instant::now();
    let seed = options.seed;
    let drift = DriftRates::draw(seed, &host_names(options), options.drift_ppm_max);
    let fail = |reason: String, faults: Vec<String>| SimFailure {
        seed,
        replay: replay_command(options),
        reason,
        faults,
        drift: drift.clone(),
    };
    crate::power::check_interposed().map_err(|e| fail(e, Vec::new()))?;
    let data = data_dir().map_err(|e| fail(format!("creating a data directory: {e}"), Vec::new()))?;
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(options.workload + Duration::from_secs(150))
        .tick_duration(crate::drift::TICK)
        // A paused host's held connection attempts all arrive at once when
        // it resumes; turmoil panics past a listener's backlog, so it is
        // as deep as Linux's default `somaxconn`.
        .tcp_capacity(4_096)
        .min_message_latency(Duration::from_micros(200))
        .max_message_latency(LATENCY_MAX)
        .build();
    let members: Vec<(u64, IpAddr)> = (1..=NAME_SERVERS).map(|id| (id, sim.lookup(host_name(id)))).collect();
    let observer = Observer::default();
    let network = TurmoilNetwork::default();
    let mut rocksdb_hosts = BTreeMap::new();
    for (id, _) in &members {
        let config = cluster::name_server_config(*id, &members, data.path(), options.storage)
            .map_err(|e| fail(format!("{e:#}"), Vec::new()))?;
        let data_dir = config.data_dir.clone();
        rocksdb_hosts.insert(host_name(*id), RocksHost { node: *id, data_dir });
        let (observer, network) = (observer.clone(), network.clone());
        let ppm = drift.of(&host_name(*id));
        sim.host(host_name(*id), move || {
            with_drift(
                ppm,
                cluster::name_server(config.clone(), network.clone(), observer.clone()),
            )
        });
    }
    let mut targets = Targets {
        name_servers: members.iter().map(|(id, _)| *id).collect(),
        clients: vec![CLIENT.to_string()],
        rocksdb_hosts,
        ..Targets::default()
    };
    if options.storage {
        targets = storage_hosts(&mut sim, &network, &observer, &drift, &members, data.path(), targets);
        for (_, store) in &targets.chunk_servers {
            store.set_ack_before_sync(options.ack_before_sync_bug);
        }
    }
    let disks: Vec<(NodeId, MemChunkStore)> = (1..=storage::CHUNK_SERVERS)
        .map(storage::chunk_node)
        .zip(targets.chunk_servers.iter().map(|(_, store)| store.clone()))
        .collect();
    let history = History::default();
    let outcome = ClientOutcome::default();
    let finished = outcome.finished.clone();
    let addresses = cluster::addresses(&members);
    if options.storage {
        let clients = object_clients(
            options.clone(),
            network.clone(),
            addresses,
            history.clone(),
            observer.clone(),
            outcome.clone(),
        );
        sim.client(CLIENT, with_drift(drift.of(CLIENT), clients));
    } else {
        let clients = clients(
            options.clone(),
            network.clone(),
            addresses,
            history.clone(),
            finished.clone(),
        );
        sim.client(CLIENT, with_drift(drift.of(CLIENT), clients));
    }
    let mut nemesis = Nemesis::new(
        seed,
        network,
        targets,
        observer.clone(),
        Duration::from_secs(2),
        options.workload.saturating_sub(Duration::from_secs(3)),
    );
    loop {
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => return Err(fail(format!("the simulation failed: {e}"), nemesis.log)),
        }
        let now = sim.elapsed();
        if let Err(reason) = nemesis.step(&mut sim, now, observer.leader()) {
            return Err(fail(reason, nemesis.log));
        }
        let violations = observer.violations();
        if !violations.is_empty() {
            return Err(fail(violations.join("; "), nemesis.log));
        }
    }
    if let Err(reason) = nemesis.heal_all(&mut sim) {
        return Err(fail(reason, nemesis.log));
    }
    let simulated = sim.elapsed();
    drop(sim);
    if let Some(Err(e)) = finished.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(fail(e, nemesis.log));
    }
    let garbage_checked = match options.storage && options.garbage_check {
        true => {
            Some(check_no_garbage(&observer, &outcome, &disks).map_err(|reason| fail(reason, nemesis.log.clone()))?)
        }
        false => None,
    };
    let events = history.events();
    check_linearizable(&events).map_err(|reason| fail(reason, nemesis.log.clone()))?;
    Ok(SeedReport {
        seed,
        tally: Tally::of(&events),
        faults: nemesis.faults(),
        fault_log: nemesis.log.clone(),
        drift: drift.clone(),
        set_elements: outcome.set_elements.load(std::sync::atomic::Ordering::Relaxed),
        audits_clean: observer.audits_clean(),
        garbage_checked,
        elections_won: observer.elections_won(),
        applied_max: observer.applied_max(),
        digest: digest(&events),
        simulated,
        wall: started.elapsed(),
    })
}

/// The host the clients run on.
const CLIENT: &str = "client";
/// After the final reads of a whole-cluster run, how long the cluster runs
/// without faults or clients before the garbage check: past the GC TTL
/// (8 s), the hand-off of pending deletes and the release grace.
const QUIET: Duration = Duration::from_secs(20);

/// What the client host hands back to the run.
#[derive(Clone, Default)]
struct ClientOutcome {
    /// Set when the clients are done: whether they could run at all.
    finished: Arc<Mutex<Option<Result<(), String>>>>,
    set_elements: Arc<AtomicU64>,
    /// After the quiet period: when the bucket was listed, and what its
    /// names need.
    listed: Arc<Mutex<Option<Listing>>>,
}

/// When the bucket was listed, and what its names need (or why the
/// listing failed).
type Listing = (Duration, Result<objects::Live, String>);

/// DESIGN §8.3: once the TTLs have passed, nothing is left but what the
/// live names need: no GC entry (every write committed and confirmed, or
/// reaped), one object record per name, live bytes exactly the names'
/// sizes (every overwritten or deleted version freed), and on the chunk
/// servers exactly the chunks of the groups ([`chunk_check`]).
fn check_no_garbage(
    observer: &Observer,
    outcome: &ClientOutcome,
    disks: &[(NodeId, MemChunkStore)],
) -> Result<NoGarbage, String> {
    let listed = outcome.listed.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let Some((listed_at, live)) = listed else {
        return Err("the clients did not list the bucket after the quiet period".into());
    };
    let live = live?;
    let stored = observer.stored_since(listed_at)?;
    let clean = stored.gc_entries == 0 && stored.objects == live.objects && stored.live_bytes == live.bytes;
    match clean {
        true => Ok(NoGarbage {
            live,
            chunks: chunk_check::check(&stored.layouts, disks)?,
        }),
        false => Err(format!(
            "garbage {QUIET:?} after the faults: the names need {} objects of {} bytes; the partitions hold {} objects, {} live bytes, {} GC entries",
            live.objects, live.bytes, stored.objects, stored.live_bytes, stored.gc_entries
        )),
    }
}

/// Every host a run of `options` has.
fn host_names(options: &SimOptions) -> Vec<String> {
    let mut hosts: Vec<String> = (1..=NAME_SERVERS).map(host_name).collect();
    if options.storage {
        hosts.extend((1..=storage::OBJECT_SERVERS).map(storage::object_host));
        hosts.extend((1..=storage::CHUNK_SERVERS).map(storage::chunk_host));
    }
    hosts.push(CLIENT.to_string());
    hosts
}

/// The client host: creates the bucket, then runs the client processes
/// until the workload time is over.
async fn clients(
    options: SimOptions,
    network: TurmoilNetwork,
    addresses: Vec<std::net::SocketAddr>,
    history: History,
    finished: Arc<Mutex<Option<Result<(), String>>>>,
) -> turmoil::Result {
    let client = || {
        let config = NsClientConfig {
            timeout: Duration::from_secs(1),
            max_attempts: 6,
            backoff: Duration::from_millis(50),
            backoff_max: Duration::from_millis(400),
        };
        NameServerClient::new(RpcClient::custom(network.handle()), addresses.clone(), config)
    };
    let outcome = create_bucket(&client(), StoragePolicy::Replicated { n: 3 }).await;
    if outcome.is_ok() {
        let uids = Arc::new(AtomicU64::new(1));
        let mut processes = tokio::task::JoinSet::new();
        for process in 0..options.clients {
            processes.spawn(workload::client_loop(
                client(),
                history.clone(),
                process,
                options.seed.wrapping_mul(31).wrapping_add(process),
                uids.clone(),
                options.workload,
            ));
        }
        while processes.join_next().await.is_some() {}
    }
    *finished.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
    Ok(())
}

async fn create_bucket(client: &NameServerClient<RpcClient>, policy: StoragePolicy) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..20 {
        match client.create_bucket(BUCKET, "sim", policy).await {
            Ok(()) | Err(NsCallError::Ns(NsError::BucketExists)) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("the bucket could not be created: {last}"))
}

/// Adds the object and chunk servers to `sim`; returns `targets` with them.
fn storage_hosts(
    sim: &mut turmoil::Sim<'_>,
    network: &TurmoilNetwork,
    observer: &Observer,
    drift: &DriftRates,
    members: &[(u64, IpAddr)],
    data_root: &std::path::Path,
    mut targets: Targets,
) -> Targets {
    let name_servers = cluster::addresses(members);
    for index in 1..=storage::OBJECT_SERVERS {
        let host = storage::object_host(index);
        let config = storage::object_server_config(index, sim.lookup(host.as_str()), &name_servers, data_root);
        let (node, data_dir) = (config.node_id, config.data_dir.clone());
        targets.rocksdb_hosts.insert(host.clone(), RocksHost { node, data_dir });
        let (network, observer, ppm) = (network.clone(), observer.clone(), drift.of(&host));
        sim.host(host.as_str(), move || {
            with_drift(
                ppm,
                storage::object_server(config.clone(), network.clone(), observer.clone()),
            )
        });
        targets.object_servers.push(host);
    }
    for index in 1..=storage::CHUNK_SERVERS {
        let host = storage::chunk_host(index);
        let config = storage::chunk_server_config(index, sim.lookup(host.as_str()), &name_servers);
        let store = MemChunkStore::new(MemStoreConfig::default());
        let (network, disk, ppm) = (network.clone(), store.clone(), drift.of(&host));
        sim.host(host.as_str(), move || {
            with_drift(
                ppm,
                storage::chunk_server(config.clone(), disk.clone(), network.clone()),
            )
        });
        targets.chunk_servers.push((host, store));
    }
    targets
}

/// The client host of a whole-cluster run: a gateway backend (its name-
/// and object-server clients, the write protocol) shared by the client
/// processes; after the workload, the final reads.
async fn object_clients(
    options: SimOptions,
    network: TurmoilNetwork,
    addresses: Vec<std::net::SocketAddr>,
    history: History,
    observer: Observer,
    results: ClientOutcome,
) -> turmoil::Result {
    let config = GatewayConfig {
        listen: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
        certs_dir: "/nonexistent".into(),
        identity: "gw".into(),
        nameservers: addresses.clone(),
        metrics_listen: None,
        region: "us-east-1".into(),
        virtual_host_domains: Vec::new(),
        bucket_policy: "ec:4:2".into(),
        protocol: ProtocolSettings {
            guard_ttl_ms: 4_000,
            gc_ttl_ms: 8_000,
            ..ProtocolSettings::default()
        },
    };
    let backend = Backend::new(&config, RpcClient::custom(network.handle()), Arc::default())
        .map_err(|e| format!("creating the gateway backend: {e:#}"))?;
    let backend = Arc::new(backend);
    let ns = Arc::new(NameServerClient::new(
        RpcClient::custom(network.handle()),
        addresses,
        NsClientConfig::default(),
    ));
    tokio::spawn(backend.os.clone().refresh_loop(ns, Duration::from_millis(500)));
    let outcome = create_bucket(&backend.ns, objects::POLICY).await;
    if outcome.is_ok() {
        let shared = objects::Shared {
            backend: backend.clone(),
            history: history.clone(),
            observer: observer.clone(),
            set: objects::AckedSet::default(),
            values: Arc::new(AtomicU64::new(1)),
        };
        let mut processes = tokio::task::JoinSet::new();
        for process in 0..options.clients {
            let seed = options.seed.wrapping_mul(31).wrapping_add(process);
            processes.spawn(objects::client_loop(shared.clone(), process, seed, options.workload));
        }
        while processes.join_next().await.is_some() {}
        objects::final_reads(&backend, &history, &observer, options.clients).await;
        objects::final_set_reads(&backend, &shared.set, &observer).await;
        let set_elements = shared.set.values().len() as u64;
        results
            .set_elements
            .store(set_elements, std::sync::atomic::Ordering::Relaxed);
        if !options.garbage_check {
            *results.finished.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
            return Ok(());
        }
        tokio::time::sleep(QUIET).await;
        let listed_at = turmoil::sim_elapsed().unwrap_or_default();
        let live = objects::live_objects(&backend).await;
        *results.listed.lock().unwrap_or_else(|p| p.into_inner()) = Some((listed_at, live));
        // Every replica audits its state again after the listing.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    *results.finished.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
    Ok(())
}

fn check_linearizable(events: &[Event]) -> Result<(), String> {
    let options = CheckOptions {
        time_limit: Some(Duration::from_secs(30)),
        ..CheckOptions::default()
    };
    let report = check_events(&Register, events, &options).map_err(|e| format!("history unreadable: {e}"))?;
    match report.result {
        CheckResult::Linearizable => Ok(()),
        CheckResult::NotLinearizable(failure) => Err(format!("not linearizable: {failure}")),
        CheckResult::Unknown { keys, reason } => Err(format!("linearizability undecided on {keys:?}: {reason}")),
    }
}

/// The nodes' RocksDB directories: in RAM when /dev/shm exists, since a
/// real disk's fsyncs would only slow the simulation down.
fn data_dir() -> std::io::Result<tempfile::TempDir> {
    let shm = std::path::Path::new("/dev/shm");
    let mut builder = tempfile::Builder::new();
    builder.prefix("tessera-sim-");
    if shm.is_dir() {
        if let Ok(dir) = builder.tempdir_in(shm) {
            return Ok(dir);
        }
    }
    builder.tempdir()
}

/// blake3 of the events without their wall-clock times.
pub fn digest(events: &[Event]) -> String {
    let mut hasher = blake3::Hasher::new();
    for event in events {
        let mut event = event.clone();
        event.time = None;
        let line = serde_json::to_string(&event).unwrap_or_default();
        hasher.update(line.as_bytes());
        hasher.update(b"\n");
    }
    hasher.finalize().to_hex().to_string()
}

/// The thread-local settings of a run, undone when it ends.
struct ThreadSetup;

impl ThreadSetup {
    fn enter(options: &SimOptions) -> ThreadSetup {
        tessera_common::rng::seed_thread(options.seed);
        tessera_common::blocking::inline_on_this_thread(true);
        tessera_nameserver::deliberate_bugs::set_stale_reads(options.stale_reads_bug);
        tessera_raft::deliberate_bugs::set_unsynced_log(options.unsynced_log_bug);
        ThreadSetup
    }
}

impl Drop for ThreadSetup {
    fn drop(&mut self) {
        tessera_common::rng::unseed_thread();
        tessera_common::blocking::inline_on_this_thread(false);
        tessera_nameserver::deliberate_bugs::set_stale_reads(false);
        tessera_raft::deliberate_bugs::set_unsynced_log(false);
    }
}
