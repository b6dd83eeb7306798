//! Invariants of DESIGN §8 checked at every step of a run, from what each
//! Raft group's members report (their metrics, read inside the node's
//! host): the name servers' group, and every partition group of the object
//! servers. Per group:
//!
//! - no two nodes apply different entries at the same log index (state
//!   machine safety): the log id each node reports as applied is recorded
//!   per index and must agree;
//! - a leader id leads on one node only, and a node's term never goes back;
//! - a node's applied index never goes back, across restarts too, but for
//!   a power loss: applying is not synced (the log is, and a restarted node
//!   applies it again), so a node that lost power starts a new floor.
//!
//! "At most one leader per term" is not checked as such: openraft (without
//! its `single-term-leader` feature) identifies a leader by (term, node id)
//! and lets a higher node id win a term a lower one also won, which then
//! can no longer commit; the log-id agreement above is the safety that
//! rule protects.
//!
//! Object servers also audit each partition replica's applied state
//! (`tessera_objserver::state::audit`: no extent points at a releasing or
//! released chunk group, live bytes add up) and report what they find.
//! A violation is recorded with the simulated time and fails the run.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::ServerState;
use tessera_nameserver::raft::RaftMetrics;
use tessera_objserver::state::audit::AuditReport;
use tessera_raft::machine::LogId;

use crate::chunk_check::Layout;

/// The name servers' Raft group in reports.
pub const NAME_SERVICE: &str = "ns";

/// One member of one Raft group: (group label, node id).
type Member = (String, u64);

#[derive(Default)]
struct State {
    /// (group, term, node) triples that led.
    leaders: BTreeSet<(String, u64, u64)>,
    /// (group, index) → the log id applied there by the first member to
    /// report it.
    applied_ids: BTreeMap<(String, u64), LogId>,
    /// member → highest term reported.
    terms: BTreeMap<Member, u64>,
    /// member → highest applied index reported.
    applied: BTreeMap<Member, u64>,
    /// name server → (term, leader) it reports now.
    current: BTreeMap<u64, (u64, Option<u64>)>,
    violations: Vec<String>,
    reports: u64,
    /// Partition-state audits that came back clean.
    audits_clean: u64,
    /// member → its latest audit.
    latest_audits: BTreeMap<Member, Audit>,
}

/// One replica's audit: when, of which applied index, what it found, and
/// the chunk groups it holds.
struct Audit {
    at: Duration,
    applied: u64,
    report: AuditReport,
    layout: Layout,
}

/// What the partitions hold (from their audits).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stored {
    pub objects: u64,
    pub gc_entries: u64,
    pub live_bytes: u64,
    /// Each partition's chunk groups.
    pub layouts: Vec<Layout>,
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

    /// One metrics report of node `node` of the group labelled `group`
    /// ([`NAME_SERVICE`] or a partition's) at simulated time `at`.
    pub fn report(&self, group: &str, node: u64, metrics: &RaftMetrics, at: Duration) {
        let mut state = self.lock();
        state.reports += 1;
        let member: Member = (group.to_string(), node);
        let term = metrics.current_term;
        let term_before = state.terms.get(&member).copied().unwrap_or(0);
        if term < term_before {
            let violation = format!("{at:?}: {group} n{node}'s term went back from {term_before} to {term}");
            state.violations.push(violation);
        }
        state.terms.insert(member.clone(), term.max(term_before));
        if metrics.state == ServerState::Leader {
            match metrics.vote.leader_id().voted_for() {
                Some(leader) if leader != node => {
                    let violation = format!("{at:?}: {group} n{node} leads under n{leader}'s leader id in term {term}");
                    state.violations.push(violation);
                }
                _ => {
                    state.leaders.insert((group.to_string(), term, node));
                }
            }
        }
        if let Some(log_id) = metrics.last_applied {
            let at_index = (group.to_string(), log_id.index);
            match state.applied_ids.get(&at_index) {
                Some(first) if *first != log_id => {
                    let violation = format!(
                        "{at:?}: {group} n{node} applied {log_id} at index {} where another member applied {first}",
                        log_id.index
                    );
                    state.violations.push(violation);
                }
                Some(_) => {}
                None => {
                    state.applied_ids.insert(at_index, log_id);
                }
            }
        }
        let applied = metrics.last_applied.map_or(0, |log_id| log_id.index);
        let before = state.applied.get(&member).copied().unwrap_or(0);
        if applied < before {
            let violation = format!("{at:?}: {group} n{node} applied index went back from {before} to {applied}");
            state.violations.push(violation);
        }
        state.applied.insert(member, applied.max(before));
        if group == NAME_SERVICE {
            state.current.insert(node, (term, metrics.current_leader));
        }
    }

    /// One partition replica's state audit, of its state at log index
    /// `applied`, with its chunk groups.
    pub fn audited(&self, group: &str, node: u64, applied: u64, report: AuditReport, layout: Layout, at: Duration) {
        let mut state = self.lock();
        let member = (group.to_string(), node);
        let clean = report.is_clean();
        let problems = format!(
            "{} audit problems: {}",
            report.problems_total,
            report.problems.join("; ")
        );
        let audit = Audit {
            at,
            applied,
            report,
            layout,
        };
        state.latest_audits.insert(member, audit);
        if clean {
            state.audits_clean += 1;
        } else {
            state.violations.push(format!("{at:?}: {group} on n{node}: {problems}"));
        }
    }

    /// What the partitions hold, summed over partition groups from each
    /// group's most advanced replica audited at or after `since`; `Err`
    /// names a group without such an audit.
    pub fn stored_since(&self, since: Duration) -> Result<Stored, String> {
        let state = self.lock();
        let mut best: BTreeMap<&str, Option<&Audit>> = BTreeMap::new();
        for ((group, _), audit) in &state.latest_audits {
            let slot = best.entry(group.as_str()).or_default();
            let newer = slot.is_none_or(|best| audit.applied > best.applied);
            if audit.at >= since && newer {
                *slot = Some(audit);
            }
        }
        let mut stored = Stored::default();
        for (group, slot) in best {
            let Some(audit) = slot else {
                return Err(format!("{group}: no replica audited after {since:?}"));
            };
            stored.objects += audit.report.objects;
            stored.gc_entries += audit.report.gc_entries;
            stored.live_bytes += audit.report.live_bytes;
            stored.layouts.push(audit.layout.clone());
        }
        Ok(stored)
    }

    /// Node `node` lost power: what it applied after its last synced write
    /// is gone (it applies it again from its log), so its applied indexes
    /// may go back once.
    pub fn power_lost(&self, node: u64) {
        self.lock().applied.retain(|(_, member), _| *member != node);
    }

    /// Partition-state audits that came back clean.
    pub fn audits_clean(&self) -> u64 {
        self.lock().audits_clean
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

    /// The name server that leads the highest term any name server
    /// reports, if one does.
    pub fn leader(&self) -> Option<u64> {
        let state = self.lock();
        state
            .current
            .values()
            .max_by_key(|(term, _)| *term)
            .and_then(|(_, leader)| *leader)
    }

    /// How many (group, term, node) triples led: elections won.
    pub fn elections_won(&self) -> usize {
        self.lock().leaders.len()
    }

    /// Highest applied index of any name server.
    pub fn applied_max(&self) -> u64 {
        let state = self.lock();
        let name_servers = state.applied.iter().filter(|((group, _), _)| group == NAME_SERVICE);
        name_servers.map(|(_, applied)| *applied).max().unwrap_or(0)
    }

    pub fn reports(&self) -> u64 {
        self.lock().reports
    }
}
