//! Linearizability of the name servers' client API under leader kills
//! (issue 3, Tests): 3 name servers, each a separate `tessera nameserver`
//! process (the debug binary next to this test's `deps/` directory) on
//! fixed loopback ports (QUIC + mTLS) with its own data directory, several
//! clients running random reads, writes (guard + commit), create-only
//! writes (guard + commit If-None-Match) and deletes on a few keys while a
//! nemesis repeatedly kills the leader's process with SIGKILL and restarts
//! it on the same port and data directory. Leaders are found by asking
//! every running node `ns.admin_members` directly. Every operation is
//! recorded (invocation before sending, completion right after the answer)
//! and the history is checked with the WGL checker of this crate against
//! the [`Register`] model. The processes are killed when the cluster is
//! dropped (a failing test leaves none behind); their output goes to log
//! files in the temp directory, whose tails startup and election failures
//! quote.
//!
//! Outcome mapping: success is `ok` (a read's value is the uid it saw, or
//! `null`); a definite refusal (no guard, expired guard, not leader, no
//! leader reachable, a failed `create_guard`...) is `fail`, with
//! [`PRECONDITION_FAILED`] for a create-only commit that found the key
//! present; an unknown outcome (`OutcomeUnknown`, timeout, unavailable) is
//! `info`.
//!
//! A second test proves the harness can fail: a history recorded through
//! the same code path, with a stale read injected, is reported not
//! linearizable. The cluster test also injects a stale read into its own
//! recorded history and expects the checker to reject it.
//!
//! The cluster test asserts a `Linearizable` verdict (an undecided check
//! fails it), more than [`MIN_OK_OPS`] ok operations, [`MIN_OK_WRITES`] ok
//! writes/creates/deletes and [`MIN_LEADER_CHANGES`] leader changes; the
//! history is written to a JSON Lines file in the temp directory, whose path
//! every failure message names (removed on success). A typical run on 2
//! cores: ~23 s of workload, 900 to 2,000 ok operations, 3 leader changes
//! (elections ~3 s or ~6 s after a kill), a check of ~10 ms; the whole
//! file takes 24 to 27 s. The [`Recorder`] serializes recording (its own
//! mutex), so the history's order is the real order of invocations and
//! completions.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};
use tessera_common::ns_api::{AdminMembers, MembersReq, NsError, ObjectInfo, StoragePolicy};
use tessera_common::ns_client::{NameServerClient, NsCallError, NsClientConfig};
use tessera_common::pki::{init_cluster, NodeIdentity};
use tessera_common::rpc::{self, CallOptions, RpcClient, RpcClientConfig};
use tessera_jepsen::checker::KeyOutcome;
use tessera_jepsen::history::PRECONDITION_FAILED;
use tessera_jepsen::ns_register::{read_outcome, run_op, write_outcome, Done, History, Op, Target};
use tessera_jepsen::{
    check_events, pair, write_jsonl, CheckOptions, CheckResult, Event, EventType, Func, Outcome, Register, Report,
};
use tessera_nameserver::config::NameServerConfig;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const BUCKET: &str = "lin";
const KEYS: [&str; 3] = ["k0", "k1", "k2"];
const CLIENTS: u64 = 5;
/// How long the clients run at least (longer if the nemesis is still busy).
const WORKLOAD: Duration = Duration::from_secs(13);
/// The clients keep running this long after the nemesis is done.
const TAIL: Duration = Duration::from_secs(1);
/// No leader kill starts after this point of the workload. A kill-elect-
/// restart-catch-up cycle takes ~6.5 s (see [`CAUGHT_UP_LAG`]): room for
/// 3 kills, or a fourth attempt after an election that took too long.
const LAST_KILL: Duration = Duration::from_secs(20);
const FIRST_KILL: Duration = Duration::from_secs(2);
const KILL_EVERY: Duration = Duration::from_secs(3);
/// Clients run against a stable leader at least this long between kills.
const STABLE_FOR: Duration = Duration::from_millis(500);
const DOWN_FOR: Duration = Duration::from_millis(1_500);
const TARGET_CHANGES: usize = 3;
/// How long the survivors of a kill get to elect a new leader: ~3 s when
/// the first candidate holds the longest log (leader lease 1.6 s plus an
/// election timeout), ~6 s when it is refused and another one must time
/// out.
const ELECTION_WAIT: Duration = Duration::from_secs(12);
/// Budget of a process start (until it answers) and of an agreement.
const WAIT: Duration = Duration::from_secs(15);
const GUARD_TTL: Duration = Duration::from_secs(10);
const MIN_OK_OPS: usize = 50;
const MIN_OK_WRITES: usize = 20;
const MIN_LEADER_CHANGES: usize = 2;

/// The name servers' `[raft]` timing: fast elections, bounded client waits.
const HEARTBEAT_MS: u64 = 100;
const ELECTION_MIN_MS: u64 = 800;
const ELECTION_MAX_MS: u64 = 1_600;
/// `propose_timeout_ms` and `read_timeout_ms`.
const CLIENT_WAIT_MS: u64 = 3_000;
/// Budget of one `ns.admin_members` call asked of one node.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Before a kill every running node is at most this many entries behind
/// the leader. Its peers reach a restarted node only once their QUIC
/// connections to the killed process timed out (`QuicTuning::idle_timeout`,
/// 6 s after the kill; a SIGKILLed process closes nothing), meanwhile it
/// lags and calls elections of its own; killing the leader then leaves a
/// single survivor able to win (measured: elections of up to 10 s, with
/// extra terms).
const CAUGHT_UP_LAG: u64 = 32;
/// Lines of each node's log quoted by a failure message.
const LOG_TAIL: usize = 25;

fn check_options() -> CheckOptions {
    CheckOptions {
        time_limit: Some(Duration::from_secs(10)),
        ..CheckOptions::default()
    }
}

// ---------------------------------------------------------------------------
// Recording: one code path (`tessera_jepsen::ns_register`) for the cluster
// test, the synthetic history and the simulator.

const TARGET: Target<'static> = Target {
    bucket: BUCKET,
    guard_ttl: GUARD_TTL,
};

// ---------------------------------------------------------------------------
// The cluster.

/// How one running node answered `ns.admin_members`.
enum View {
    /// It leads: the leader and term it reports, and how far behind its
    /// last log entry each voter is known to be (`None`: not reached yet).
    Leads {
        leader: Option<u64>,
        term: u64,
        lag: BTreeMap<u64, Option<u64>>,
    },
    /// A follower: the leader address it names, if any.
    Follows(Option<String>),
    /// Another refusal.
    Refused(String),
    /// No answer (not serving yet, or the call failed).
    Unreachable(String),
}

impl std::fmt::Display for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            View::Leads { leader, term, lag } => {
                write!(f, "leads: leader {leader:?} term {term}, voters behind {lag:?}")
            }
            View::Follows(leader) => write!(f, "follows {leader:?}"),
            View::Refused(e) => write!(f, "refused: {e}"),
            View::Unreachable(e) => write!(f, "unreachable: {e}"),
        }
    }
}

/// A client for [`ask`], with the workload's identity.
fn probe_client(certs: &Path) -> RpcClient {
    let identity = NodeIdentity::load(certs, "client").expect("client identity");
    let config = RpcClientConfig {
        connect_timeout: PROBE_TIMEOUT,
        ..RpcClientConfig::default()
    };
    RpcClient::new(identity, config).expect("probe client")
}

/// Asks the node at `addr` itself (no redirection, no retry) for the
/// members.
async fn ask(probe: &RpcClient, addr: SocketAddr) -> View {
    let opts = CallOptions {
        timeout: PROBE_TIMEOUT,
        retries: 0,
        ..CallOptions::default()
    };
    match rpc::call::<AdminMembers, RpcClient>(probe, addr, &MembersReq, Bytes::new(), &opts).await {
        Ok((Ok(info), _)) => {
            let last = info.last_log.unwrap_or(0);
            View::Leads {
                leader: info.leader,
                term: info.term,
                lag: info
                    .voters
                    .iter()
                    .map(|m| (m.id, m.matched.map(|i| last.saturating_sub(i))))
                    .collect(),
            }
        }
        Ok((Err(NsError::NotLeader { leader_addr }), _)) => View::Follows(leader_addr),
        Ok((Err(e), _)) => View::Refused(e.to_string()),
        Err(e) => View::Unreachable(e.to_string()),
    }
}

/// `<target>/debug/tessera`: the test executable is
/// `<target>/debug/deps/ns_linearizable-<hash>`.
fn tessera_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("locating the test executable");
    let binary = exe
        .parent()
        .and_then(Path::parent)
        .map(|debug| debug.join("tessera"))
        .unwrap_or_else(|| panic!("no target directory above {}", exe.display()));
    assert!(
        binary.is_file(),
        "{} is missing: build it first with `cargo build -p tessera-cli --bin tessera` \
         (`cargo test --workspace` builds it)",
        binary.display()
    );
    binary
}

/// The last `lines` lines of `path`.
fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}

/// 3 `tessera nameserver` processes on fixed loopback ports; every child
/// is killed (SIGKILL) when the cluster is dropped.
struct Cluster {
    dir: tempfile::TempDir,
    certs: PathBuf,
    binary: PathBuf,
    addrs: BTreeMap<u64, SocketAddr>,
    /// The running processes.
    children: BTreeMap<u64, Child>,
    /// Asks one node at a time; replaced on every start so that no cached
    /// connection to a killed process is reused.
    probe: RpcClient,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Cluster {
    async fn three() -> Cluster {
        let binary = tessera_binary();
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = dir.path().join("certs");
        init_cluster(&certs, &["ns1", "ns2", "ns3", "client"].map(String::from)).expect("certs");
        let mut addrs = BTreeMap::new();
        while addrs.len() < 3 {
            let addr = tessera_common::testing::stable_loopback_addr();
            if !addrs.values().any(|a| *a == addr) {
                addrs.insert(addrs.len() as u64 + 1, addr);
            }
        }
        let probe = probe_client(&certs);
        let mut cluster = Cluster {
            dir,
            certs,
            binary,
            addrs,
            children: BTreeMap::new(),
            probe,
        };
        for id in 1..=3 {
            cluster.write_config(id);
        }
        for id in 1..=3 {
            cluster.start(id).await;
        }
        cluster
    }

    fn config_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("ns{id}.toml"))
    }

    fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("ns{id}.log"))
    }

    /// Every node's config lists all three as bootstrap members, as
    /// deploy/compose does: applied only while a node's log is empty, so a
    /// restart on the same data dir ignores it.
    fn write_config(&self, id: u64) {
        let path = |p: &Path| toml::Value::String(p.display().to_string());
        let mut text = format!(
            "node_id = {id}\nlisten = \"{}\"\ndata_dir = {}\ncerts_dir = {}\nidentity = \"ns{id}\"\n\n\
             [raft]\nheartbeat_interval_ms = {HEARTBEAT_MS}\nelection_timeout_min_ms = {ELECTION_MIN_MS}\n\
             election_timeout_max_ms = {ELECTION_MAX_MS}\npropose_timeout_ms = {CLIENT_WAIT_MS}\n\
             read_timeout_ms = {CLIENT_WAIT_MS}\n",
            self.addrs[&id],
            path(&self.dir.path().join(format!("ns{id}"))),
            path(&self.certs),
        );
        for (member, addr) in &self.addrs {
            text.push_str(&format!("\n[[bootstrap]]\nid = {member}\naddr = \"{addr}\"\n"));
        }
        // The binary parses it the same way.
        let config = NameServerConfig::parse(&text).unwrap_or_else(|e| panic!("config of n{id}: {e:#}\n{text}"));
        assert_eq!(config.raft.election_timeout_max_ms, ELECTION_MAX_MS);
        std::fs::write(self.config_path(id), text).expect("writing a config");
    }

    /// The tails of every node's log, for failure messages.
    fn logs(&self) -> String {
        self.addrs
            .keys()
            .map(|id| {
                format!(
                    "--- n{id} ({}), last {LOG_TAIL} lines:\n{}",
                    self.log_path(*id).display(),
                    tail(&self.log_path(*id), LOG_TAIL)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Starts (or restarts, on its port and data dir) node `id` and waits
    /// until it answers RPCs. A process that exits first (say, its port is
    /// not free yet) is started again until [`WAIT`].
    async fn start(&mut self, id: u64) {
        assert!(!self.children.contains_key(&id), "n{id} is running");
        self.probe.shutdown();
        self.probe = probe_client(&self.certs);
        let deadline = Instant::now() + WAIT;
        let mut child = self.spawn(id);
        loop {
            if let Some(status) = child.try_wait().expect("waiting for a child") {
                if Instant::now() >= deadline {
                    panic!(
                        "n{id} exited ({status}) and did not start within {WAIT:?}\n{}",
                        self.logs()
                    );
                }
                eprintln!("n{id} exited ({status}) while starting, starting it again");
                tokio::time::sleep(Duration::from_millis(200)).await;
                child = self.spawn(id);
                continue;
            }
            if !matches!(self.ask(id).await, View::Unreachable(_)) {
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("n{id} did not answer within {WAIT:?}\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.children.insert(id, child);
    }

    fn spawn(&self, id: u64) -> Child {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .expect("opening a log");
        Command::new(&self.binary)
            .arg("nameserver")
            .arg("--config")
            .arg(self.config_path(id))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {} for n{id}: {e}", self.binary.display()))
    }

    /// SIGKILL, then reaps the process.
    async fn kill(&mut self, id: u64) {
        let mut child = self.children.remove(&id).expect("node running");
        child.kill().expect("SIGKILL");
        let deadline = Instant::now() + WAIT;
        while child.try_wait().expect("waiting for a child").is_none() {
            assert!(Instant::now() < deadline, "n{id} survived SIGKILL for {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Restarts every killed node.
    async fn heal(&mut self) {
        let stopped: Vec<u64> = self
            .addrs
            .keys()
            .copied()
            .filter(|id| !self.children.contains_key(id))
            .collect();
        for id in stopped {
            self.start(id).await;
        }
    }

    async fn kill_all(&mut self) {
        let ids: Vec<u64> = self.children.keys().copied().collect();
        for id in ids {
            self.kill(id).await;
        }
    }

    /// Asks node `id` itself (no redirection) for the members.
    async fn ask(&self, id: u64) -> View {
        ask(&self.probe, self.addrs[&id]).await
    }

    /// Every running node's view, asked concurrently.
    async fn views(&self) -> BTreeMap<u64, View> {
        let mut asks = tokio::task::JoinSet::new();
        for id in self.children.keys() {
            let (probe, addr, id) = (self.probe.clone(), self.addrs[id], *id);
            asks.spawn(async move { (id, ask(&probe, addr).await) });
        }
        let mut views = BTreeMap::new();
        while let Some(answer) = asks.join_next().await {
            let (id, view) = answer.expect("ask task");
            views.insert(id, view);
        }
        views
    }

    /// `(leader, term)` if one running node leads (reporting itself leader
    /// of `term`) and every other running node names it as the leader.
    /// Only the leader answers `ns.admin_members`; a follower answers
    /// `NotLeader` with the leader's address but not its term. With
    /// `caught_up`, the leader must also have replicated to every running
    /// node up to [`CAUGHT_UP_LAG`] entries.
    fn agreed(&self, views: &BTreeMap<u64, View>, caught_up: bool) -> Option<(u64, u64)> {
        let (leader, term, lag) = views.iter().find_map(|(id, v)| match v {
            View::Leads { leader, term, lag } if *leader == Some(*id) => Some((*id, *term, lag)),
            _ => None,
        })?;
        let addr = self.addrs[&leader];
        let followed = views
            .iter()
            .filter(|(id, _)| **id != leader)
            .all(|(_, v)| matches!(v, View::Follows(Some(a)) if a.parse::<SocketAddr>().ok() == Some(addr)));
        let replicated = !caught_up
            || self
                .children
                .keys()
                .all(|id| matches!(lag.get(id), Some(Some(behind)) if *behind <= CAUGHT_UP_LAG));
        (followed && replicated && views.len() == self.children.len()).then_some((leader, term))
    }

    /// Polls for an agreed leader (see [`Cluster::agreed`]) whose term is
    /// above `above`; on timeout the last views and the logs' tails.
    async fn leader_after(&self, above: u64, caught_up: bool, timeout: Duration) -> Result<(u64, u64), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let views = self.views().await;
            if let Some((id, term)) = self.agreed(&views, caught_up) {
                if term > above {
                    return Ok((id, term));
                }
            }
            if Instant::now() >= deadline {
                let views: Vec<String> = views.iter().map(|(id, v)| format!("n{id} {v}")).collect();
                return Err(format!("views: {}\n{}", views.join("; "), self.logs()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn client(&self) -> NameServerClient<RpcClient> {
        let identity = NodeIdentity::load(&self.certs, "client").expect("client identity");
        let rpc = RpcClient::new(
            identity,
            RpcClientConfig {
                connect_timeout: Duration::from_secs(1),
                ..RpcClientConfig::default()
            },
        )
        .expect("rpc client");
        let config = NsClientConfig {
            timeout: Duration::from_secs(2),
            max_attempts: 10,
            backoff: Duration::from_millis(50),
            backoff_max: Duration::from_millis(400),
        };
        NameServerClient::new(rpc, self.addrs.values().copied().collect(), config)
    }
}

// ---------------------------------------------------------------------------
// Workload.

/// xorshift64*: enough randomness for choosing operations.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

#[derive(Default, Debug)]
struct Tally {
    ok: usize,
    fail: usize,
    info: usize,
}

impl Tally {
    fn add(&mut self, done: &Done) {
        match done {
            Done::Ok(_) => self.ok += 1,
            Done::Fail(_) => self.fail += 1,
            Done::Info(_) => self.info += 1,
        }
    }
}

async fn client_loop(
    client: NameServerClient<RpcClient>,
    history: History,
    process: u64,
    seed: u64,
    uids: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Tally {
    let mut rng = Rng::new(seed);
    let mut tally = Tally::default();
    while !stop.load(Ordering::SeqCst) {
        let key = KEYS[rng.below(KEYS.len() as u64) as usize];
        let op = match rng.below(20) {
            0..=7 => Op::Read,
            8..=12 => Op::Write(uids.fetch_add(1, Ordering::SeqCst)),
            13..=16 => Op::Create(uids.fetch_add(1, Ordering::SeqCst)),
            _ => Op::Delete,
        };
        let done = run_op(&client, &history, TARGET, process, key, op).await;
        tally.add(&done);
    }
    tally
}

/// Kills the leader's process with SIGKILL (first at [`FIRST_KILL`], then
/// every [`KILL_EVERY`] or [`STABLE_FOR`] after the previous kill's new
/// leader, whichever is later, and only once every running node has caught
/// up with the leader, see [`CAUGHT_UP_LAG`]), keeps it down at least
/// [`DOWN_FOR`] and until the survivors elect a new leader, then restarts
/// it on its port and data directory. Stops after
/// [`TARGET_CHANGES`] leader changes or when no kill may start any more
/// ([`LAST_KILL`]). Returns the leader changes seen: a kill followed by an
/// agreed leader in a later term.
async fn nemesis(cluster: &mut Cluster, started: Instant) -> Vec<String> {
    let mut changes = Vec::new();
    let mut next_kill = started + FIRST_KILL;
    while changes.len() < TARGET_CHANGES && next_kill < started + LAST_KILL {
        tokio::time::sleep_until(next_kill.into()).await;
        let (leader, term) = match cluster.leader_after(0, true, WAIT).await {
            Ok(agreed) => agreed,
            Err(why) => panic!("no agreed leader with every node caught up within {WAIT:?} before a kill: {why}"),
        };
        let killed_at = started.elapsed();
        let down_until = Instant::now() + DOWN_FOR;
        cluster.kill(leader).await;
        // The survivors elect a new leader while the old one is down.
        match cluster.leader_after(term, false, ELECTION_WAIT).await {
            Ok((new_leader, new_term)) => changes.push(format!(
                "t={:.1}s killed n{leader} (term {term}) -> n{new_leader} leads term {new_term} at t={:.1}s",
                killed_at.as_secs_f64(),
                started.elapsed().as_secs_f64()
            )),
            Err(why) => eprintln!("no new leader within {ELECTION_WAIT:?} after killing n{leader}: {why}"),
        }
        tokio::time::sleep_until(down_until.into()).await;
        cluster.start(leader).await;
        next_kill = (next_kill + KILL_EVERY).max(Instant::now() + STABLE_FOR);
    }
    changes
}

/// Operations per (function, outcome), and the most common errors.
fn breakdown(events: &[Event]) -> (BTreeMap<String, usize>, BTreeMap<String, usize>) {
    let mut by_kind = BTreeMap::new();
    let mut errors = BTreeMap::new();
    for op in pair(events).expect("pairable history") {
        *by_kind.entry(format!("{:?}/{:?}", op.f, op.outcome)).or_insert(0) += 1;
        if let Some(e) = op.error {
            let e: String = e.chars().take(60).collect();
            *errors.entry(format!("{:?}/{:?}: {e}", op.f, op.outcome)).or_insert(0) += 1;
        }
    }
    (by_kind, errors)
}

fn save(events: &[Event], path: &Path) {
    let file = std::fs::File::create(path).expect("history file");
    write_jsonl(events, std::io::BufWriter::new(file)).expect("write history");
}

fn describe(report: &Report) -> String {
    report
        .keys
        .iter()
        .map(|k| format!("{}: {} ops, {} steps, {:?}", k.key, k.ops, k.steps, k.elapsed))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Appends a read at the end of `events` that returns a value overwritten
/// long ago: an `ok` write of `v` completed, then another `ok` write,
/// create or delete of the same key was invoked after that completion, so
/// no linearization can end with `v` (values are unique). `None` if the
/// history has no such pair.
fn inject_stale_read(events: &[Event]) -> Option<(Vec<Event>, String, Value)> {
    let ops = pair(events).expect("pairable history");
    let effective = |f: Func| matches!(f, Func::Write | Func::Create | Func::Delete);
    for a in ops
        .iter()
        .filter(|o| o.outcome == Outcome::Ok && matches!(o.f, Func::Write | Func::Create))
    {
        let Some(done) = a.complete else { continue };
        let overwritten = ops
            .iter()
            .any(|b| b.key == a.key && b.outcome == Outcome::Ok && effective(b.f) && b.invoke > done);
        if overwritten {
            let mut stale = events.to_vec();
            let p = u64::MAX;
            stale.push(Event::new(EventType::Invoke, p, Func::Read, a.key.clone(), Value::Null));
            stale.push(Event::new(EventType::Ok, p, Func::Read, a.key.clone(), a.input.clone()));
            return Some((stale, a.key.clone(), a.input.clone()));
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ns_commit_get_delete_is_linearizable_while_leaders_are_killed() {
    let _serial = SERIAL.lock().await;
    let test_start = Instant::now();
    let mut cluster = Cluster::three().await;
    if let Err(why) = cluster.leader_after(0, false, WAIT).await {
        panic!("no initial leader within {WAIT:?}: {why}");
    }
    let setup = cluster.client();
    if let Err(e) = setup
        .create_bucket(BUCKET, "jepsen", StoragePolicy::Replicated { n: 3 })
        .await
    {
        panic!("create bucket: {e}\n{}", cluster.logs());
    }

    let history = History::new();
    let uids = Arc::new(AtomicU64::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let seed = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos()
            & u128::from(u64::MAX),
    )
    .expect("masked");
    eprintln!("seed {seed}");
    let started = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|p| {
            let client = cluster.client();
            let seed = seed.wrapping_add(p.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            tokio::spawn(client_loop(
                client,
                history.clone(),
                p,
                seed,
                uids.clone(),
                stop.clone(),
            ))
        })
        .collect();

    let changes = nemesis(&mut cluster, started).await;
    cluster.heal().await;
    tokio::time::sleep_until((started + WORKLOAD).max(Instant::now() + TAIL).into()).await;
    stop.store(true, Ordering::SeqCst);
    let mut tally = Tally::default();
    for task in tasks {
        let t = task.await.expect("client task");
        tally.ok += t.ok;
        tally.fail += t.fail;
        tally.info += t.info;
    }
    let workload = started.elapsed();
    // After healing, one final read per key: the state everyone converged on.
    if let Err(why) = cluster.leader_after(0, false, WAIT).await {
        panic!("no leader within {WAIT:?} after healing: {why}");
    }
    for key in KEYS {
        let done = run_op(&setup, &history, TARGET, CLIENTS, key, Op::Read).await;
        tally.add(&done);
    }
    cluster.kill_all().await;

    let events = history.events();
    let path = std::env::temp_dir().join(format!("tessera-ns-linearizable-{}.jsonl", std::process::id()));
    save(&events, &path);
    let check_start = Instant::now();
    let report = check_events(&Register, &events, &check_options()).expect("checkable history");
    let check_time = check_start.elapsed();
    eprintln!(
        "{} events; ops ok {} fail {} info {}; workload {:.1}s; {} leader changes: {changes:#?}",
        events.len(),
        tally.ok,
        tally.fail,
        tally.info,
        workload.as_secs_f64(),
        changes.len()
    );
    eprintln!("check took {check_time:?}: {}", describe(&report));
    let (by_kind, errors) = breakdown(&events);
    eprintln!("operations: {by_kind:?}");
    eprintln!("errors: {errors:#?}");
    match &report.result {
        CheckResult::Linearizable => {}
        CheckResult::NotLinearizable(_) => panic!("history {} is {}", path.display(), report.result),
        CheckResult::Unknown { .. } => panic!(
            "the checker could not decide history {} ({}); an undecided history never passes",
            path.display(),
            report.result
        ),
    }
    assert!(
        tally.ok > MIN_OK_OPS,
        "only {} ok operations (history {})",
        tally.ok,
        path.display()
    );
    let ok_writes: usize = ["Write/Ok", "Create/Ok", "Delete/Ok"]
        .iter()
        .map(|k| by_kind.get(*k).copied().unwrap_or(0))
        .sum();
    assert!(
        ok_writes >= MIN_OK_WRITES,
        "only {ok_writes} ok writes, creates and deletes: {by_kind:?} (history {})",
        path.display()
    );
    assert!(
        changes.len() >= MIN_LEADER_CHANGES,
        "only {} leader changes: {changes:?} (history {})",
        changes.len(),
        path.display()
    );

    // The verdict is not vacuous: the same history with one stale read
    // appended is rejected.
    let (stale, key, value) = inject_stale_read(&events).expect("an overwritten ok write in the history");
    let opts = CheckOptions {
        minimize: false,
        ..check_options()
    };
    let inject_start = Instant::now();
    let report = check_events(&Register, &stale, &opts).expect("checkable history");
    eprintln!(
        "stale read of {value} on {key} appended: {} in {:?}",
        match &report.result {
            CheckResult::Linearizable => "linearizable",
            CheckResult::NotLinearizable(_) => "not linearizable",
            CheckResult::Unknown { .. } => "unknown",
        },
        inject_start.elapsed()
    );
    assert!(
        matches!(report.result, CheckResult::NotLinearizable(_)),
        "a stale read appended to history {} was not rejected: {}",
        path.display(),
        report.result
    );
    let _ = std::fs::remove_file(&path);
    eprintln!("whole test {:.1}s", test_start.elapsed().as_secs_f64());
}

fn object(uid: u128) -> ObjectInfo {
    ObjectInfo {
        uid,
        version_id: format!("v{uid}"),
        size: 1,
        etag: String::new(),
        content_type: None,
        user_meta: Vec::new(),
        system_meta: Vec::new(),
        mtime_ms: 0,
        partition: 0,
        parts: Vec::new(),
    }
}

/// The harness can fail: a history recorded through [`History`] and the
/// same outcome mapping is linearizable, and the same history with a stale
/// read is not.
#[test]
fn injected_stale_read_is_not_linearizable() {
    // Outcome mapping of the cluster test.
    assert_eq!(
        write_outcome::<()>(&Err(NsCallError::Ns(NsError::PreconditionFailed))),
        Done::Fail(PRECONDITION_FAILED.to_string())
    );
    assert!(matches!(
        write_outcome::<()>(&Err(NsCallError::Ns(NsError::NoGuard))),
        Done::Fail(_)
    ));
    assert!(matches!(
        write_outcome::<()>(&Err(NsCallError::OutcomeUnknown("lost".into()))),
        Done::Info(_)
    ));
    assert!(matches!(
        write_outcome::<()>(&Err(NsCallError::Ns(NsError::Unavailable("no quorum".into())))),
        Done::Info(_)
    ));

    let build = |stale: bool| {
        let h = History::new();
        let k = "k0";
        // p0 writes 1; p1 create-only 2 fails its precondition; p2 reads 1.
        h.invoke(0, Func::Write, k, json!(1));
        h.complete(0, Func::Write, k, json!(1), Done::Ok(json!(1)));
        h.invoke(1, Func::Create, k, json!(2));
        let refused = write_outcome::<()>(&Err(NsCallError::Ns(NsError::PreconditionFailed)));
        h.complete(1, Func::Create, k, json!(2), refused);
        h.invoke(2, Func::Read, k, Value::Null);
        h.complete(2, Func::Read, k, Value::Null, read_outcome(&Ok(Some(object(1)))));
        // p3's delete has an unknown outcome; p0 then writes 3, which p1 reads.
        h.invoke(3, Func::Delete, k, Value::Null);
        let unknown = write_outcome::<()>(&Err(NsCallError::OutcomeUnknown("lost".into())));
        h.complete(3, Func::Delete, k, Value::Null, unknown);
        h.invoke(0, Func::Write, k, json!(3));
        h.complete(0, Func::Write, k, json!(3), Done::Ok(json!(3)));
        h.invoke(1, Func::Read, k, Value::Null);
        h.complete(1, Func::Read, k, Value::Null, read_outcome(&Ok(Some(object(3)))));
        if stale {
            // Reads 1 after 3 was written and read: stale.
            h.invoke(2, Func::Read, k, Value::Null);
            h.complete(2, Func::Read, k, Value::Null, Done::Ok(json!(1)));
        }
        h.events()
    };

    let good = check_events(&Register, &build(false), &check_options()).expect("checkable");
    assert!(good.result.is_linearizable(), "{}", good.result);

    let bad_events = build(true);
    let bad = check_events(&Register, &bad_events, &check_options()).expect("checkable");
    let CheckResult::NotLinearizable(failure) = &bad.result else {
        panic!("a stale read passed: {}", bad.result);
    };
    assert_eq!(failure.prefix_end, bad_events.len() - 1, "{failure}");
    assert!(matches!(bad.keys[0].outcome, KeyOutcome::NotLinearizable(_)));

    // The injector used on the cluster's history finds the same kind of read.
    let (stale, key, value) = inject_stale_read(&build(false)).expect("an overwritten write");
    assert_eq!((key.as_str(), value), ("k0", json!(1)));
    let report = check_events(&Register, &stale, &check_options()).expect("checkable");
    assert!(
        matches!(report.result, CheckResult::NotLinearizable(_)),
        "{}",
        report.result
    );
}
