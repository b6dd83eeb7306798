//! Invariants of DESIGN §8 checked at every step of a run, from what each
//! node's Raft reports (its metrics channel, read inside the node's host):
//!
//! - no two nodes apply different entries at the same log index (state
//!   machine safety): the log id each node reports as applied is recorded
//!   per index and must agree;
//! - a leader id leads on one node only, and a node's term never goes back;
//! - a node's applied index never goes back, across restarts too (what a
//!   node applied is durable before it is reported).
//!
//! "At most one leader per term" is not checked as such: openraft (without
//! its `single-term-leader` feature) identifies a leader by (term, node id)
//! and lets a higher node id win a term a lower one also won, which then
//! can no longer commit; the log-id agreement above is the safety that
//! rule protects. A violation is recorded with the simulated time and
//! fails the run.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::ServerState;
use tessera_nameserver::raft::RaftMetrics;
use tessera_raft::machine::LogId;

#[derive(Default)]
struct State {
    /// (term, node) pairs that led.
    leaders: BTreeSet<(u64, u64)>,
    /// index → the log id applied there by the first node to report it.
    applied_ids: BTreeMap<u64, LogId>,
    /// node → highest term reported.
    terms: BTreeMap<u64, u64>,
    /// node → highest applied index reported.
    applied: BTreeMap<u64, u64>,
    /// node → (term, leader) it reports now.
    current: BTreeMap<u64, (u64, Option<u64>)>,
    violations: Vec<String>,
    reports: u64,
}

/// Shared by the hosts (which report) and the run loop (which checks).
#[derive(Clone, Default)]
pub struct Observer {
    state: Arc<Mutex<State>>,
}

impl Observer {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// One metrics report of node `node` at simulated time `at`.
    pub fn report(&self, node: u64, metrics: &RaftMetrics, at: Duration) {
        let mut state = self.lock();
        state.reports += 1;
        let term = metrics.current_term;
        let term_before = state.terms.get(&node).copied().unwrap_or(0);
        if term < term_before {
            let violation = format!("{at:?}: n{node}'s term went back from {term_before} to {term}");
            state.violations.push(violation);
        }
        state.terms.insert(node, term.max(term_before));
        if metrics.state == ServerState::Leader {
            match metrics.vote.leader_id().voted_for() {
                Some(leader) if leader != node => {
                    let violation = format!("{at:?}: n{node} leads under n{leader}'s leader id in term {term}");
                    state.violations.push(violation);
                }
                _ => {
                    state.leaders.insert((term, node));
                }
            }
        }
        if let Some(log_id) = metrics.last_applied {
            match state.applied_ids.get(&log_id.index) {
                Some(first) if *first != log_id => {
                    let violation = format!(
                        "{at:?}: n{node} applied {log_id} at index {} where another node applied {first}",
                        log_id.index
                    );
                    state.violations.push(violation);
                }
                Some(_) => {}
                None => {
                    state.applied_ids.insert(log_id.index, log_id);
                }
            }
        }
        let applied = metrics.last_applied.map_or(0, |log_id| log_id.index);
        let before = state.applied.get(&node).copied().unwrap_or(0);
        if applied < before {
            let violation = format!("{at:?}: n{node} applied index went back from {before} to {applied}");
            state.violations.push(violation);
        }
        state.applied.insert(node, applied.max(before));
        state.current.insert(node, (term, metrics.current_leader));
    }

    /// A violation the clients found (bytes read back wrong, a name whose
    /// data cannot be read), at simulated time `at`.
    pub fn record_violation(&self, at: Duration, what: String) {
        self.lock().violations.push(format!("{at:?}: {what}"));
    }

    /// The violations so far.
    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// The node that leads the highest term any node reports, if one does.
    pub fn leader(&self) -> Option<u64> {
        let state = self.lock();
        state
            .current
            .values()
            .max_by_key(|(term, _)| *term)
            .and_then(|(_, leader)| *leader)
    }

    /// How many (term, node) pairs led: elections won.
    pub fn elections_won(&self) -> usize {
        self.lock().leaders.len()
    }

    /// Highest applied index of any node.
    pub fn applied_max(&self) -> u64 {
        self.lock().applied.values().copied().max().unwrap_or(0)
    }

    pub fn reports(&self) -> u64 {
        self.lock().reports
    }
}
