//! Raft timing and log-compaction knobs of a group ([`RaftTuning`]), as
//! they appear in a role's TOML config under `[raft]`, validated with
//! errors that name the field, and the openraft configuration they describe.

use anyhow::{bail, Context};
use serde::Deserialize;

/// Raft timing and log-compaction knobs.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftTuning {
    /// Leader heartbeat period; also the deadline of one append RPC.
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many entries since the last one.
    pub snapshot_logs_since_last: u64,
    /// Entries kept in the log after they are covered by a snapshot.
    pub max_in_snapshot_log_to_keep: u64,
    /// Entries per append RPC at most.
    pub max_payload_entries: u64,
    /// Deadline of sending and installing one snapshot.
    pub install_snapshot_timeout_ms: u64,
    /// How long a proposal may wait for its commit before `Unavailable`.
    pub propose_timeout_ms: u64,
    /// How long a linearizable read may wait for leadership confirmation.
    pub read_timeout_ms: u64,
    /// How long adding a learner (until it caught up) or changing
    /// membership may take.
    pub membership_timeout_ms: u64,
}

impl RaftTuning {
    /// Tight timings for a cluster on one machine's loopback (tests, a
    /// laptop): fast elections, bounded client waits.
    pub fn loopback() -> Self {
        RaftTuning {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 800,
            election_timeout_max_ms: 1_600,
            propose_timeout_ms: 5_000,
            read_timeout_ms: 5_000,
            ..RaftTuning::default()
        }
    }
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat_interval_ms: 200,
            election_timeout_min_ms: 1_000,
            election_timeout_max_ms: 2_000,
            snapshot_logs_since_last: 10_000,
            max_in_snapshot_log_to_keep: 1_000,
            max_payload_entries: 256,
            install_snapshot_timeout_ms: 30_000,
            propose_timeout_ms: 5_000,
            read_timeout_ms: 5_000,
            membership_timeout_ms: 30_000,
        }
    }
}

impl RaftTuning {
    /// Checks the knobs; errors name the field (`raft.<knob>`).
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.heartbeat_interval_ms < 20 {
            bail!(
                "raft.heartbeat_interval_ms = {}: must be at least 20",
                self.heartbeat_interval_ms
            );
        }
        if self.election_timeout_min_ms < 3 * self.heartbeat_interval_ms {
            bail!(
                "raft.election_timeout_min_ms = {}: must be at least 3 x heartbeat_interval_ms ({})",
                self.election_timeout_min_ms,
                self.heartbeat_interval_ms
            );
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            bail!(
                "raft.election_timeout_max_ms = {}: must exceed election_timeout_min_ms ({})",
                self.election_timeout_max_ms,
                self.election_timeout_min_ms
            );
        }
        let positive = [
            ("raft.snapshot_logs_since_last", self.snapshot_logs_since_last),
            ("raft.max_payload_entries", self.max_payload_entries),
            ("raft.install_snapshot_timeout_ms", self.install_snapshot_timeout_ms),
            ("raft.propose_timeout_ms", self.propose_timeout_ms),
            ("raft.read_timeout_ms", self.read_timeout_ms),
            ("raft.membership_timeout_ms", self.membership_timeout_ms),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            bail!("{name}: must be positive");
        }
        Ok(())
    }

    /// The openraft configuration these knobs describe.
    pub fn openraft_config(&self) -> anyhow::Result<openraft::Config> {
        let config = openraft::Config {
            cluster_name: "tessera".into(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            install_snapshot_timeout: self.install_snapshot_timeout_ms,
            max_payload_entries: self.max_payload_entries,
            replication_lag_threshold: self.snapshot_logs_since_last + self.max_in_snapshot_log_to_keep,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_logs_since_last),
            max_in_snapshot_log_to_keep: self.max_in_snapshot_log_to_keep,
            ..openraft::Config::default()
        };
        config.validate().context("raft: invalid openraft configuration")
    }
}
