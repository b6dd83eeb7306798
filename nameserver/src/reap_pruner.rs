//! The leader's pruning of reaped uids (`namespace::reaped`): every node
//! samples its applied log index over time; the leader proposes
//! `PruneReaped` at the index applied `retention` ago, so the reaped table
//! holds about one retention period of reaps. Uids minted before that
//! index can no longer be committed: a write slower than the retention
//! fails (its data may be gone) and the client retries. Safety does not
//! depend on the samples' clock; see `namespace::reaped`.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::namespace::{reaped::PRUNE_BATCH_MAX, Command, Response};
use crate::raft::NsGroup;

/// Samples kept at most; the retention is covered by spacing them out.
const SAMPLES_MAX: usize = 1024;

/// (when, applied index) samples, oldest first, bounded.
#[derive(Debug, Default)]
pub struct Samples {
    samples: VecDeque<(Instant, u64)>,
}

impl Samples {
    /// Records `applied` at `now`; keeps at most [`SAMPLES_MAX`] samples
    /// spread over `retention`.
    pub fn record(&mut self, now: Instant, applied: u64, retention: Duration) {
        let spacing = retention / SAMPLES_MAX as u32;
        if self
            .samples
            .back()
            .is_some_and(|(last, _)| now.saturating_duration_since(*last) < spacing)
        {
            return;
        }
        self.samples.push_back((now, applied));
        while self.samples.len() > SAMPLES_MAX {
            self.samples.pop_front();
        }
    }

    /// The newest index applied at least `retention` before `now`, dropping
    /// the samples older than it.
    pub fn index_older_than(&mut self, now: Instant, retention: Duration) -> Option<u64> {
        let old_enough = |(at, _): &(Instant, u64)| now.saturating_duration_since(*at) >= retention;
        while self.samples.get(1).is_some_and(old_enough) {
            self.samples.pop_front();
        }
        self.samples.front().filter(|s| old_enough(s)).map(|(_, index)| *index)
    }
}

/// Runs until aborted. Cancellation safe: pruning is idempotent.
pub async fn run(node: NsGroup, interval: Duration, retention: Duration) {
    let mut samples = Samples::default();
    let mut pruned_below = 0;
    loop {
        tokio::time::sleep(interval).await;
        let applied = node.metrics().borrow().last_applied.map_or(0, |log_id| log_id.index);
        let now = Instant::now();
        samples.record(now, applied, retention);
        let Some(below) = samples.index_older_than(now, retention) else {
            continue;
        };
        if below <= pruned_below || !node.is_leader() {
            continue;
        }
        match prune(&node, below).await {
            Ok(removed) => {
                pruned_below = below;
                metrics::counter!("ns_reaped_pruned_total").increment(removed);
                tracing::debug!(below, removed, "reaped uids pruned");
            }
            Err(e) => tracing::info!(below, error = %e, "pruning reaped uids stopped; next pass retries"),
        }
    }
}

/// Proposes `PruneReaped { below }` until a pass forgets fewer than a full
/// batch; returns how many uids were forgotten.
async fn prune(node: &NsGroup, below: u64) -> Result<u64, String> {
    let mut removed_total = 0;
    loop {
        match node.propose(Command::PruneReaped { below_index: below }).await {
            Ok(Response::Pruned { removed }) => {
                removed_total += removed;
                if removed < PRUNE_BATCH_MAX as u64 {
                    return Ok(removed_total);
                }
            }
            Ok(other) => return Err(format!("unexpected answer {other:?}")),
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RETENTION: Duration = Duration::from_secs(100);

    #[test]
    fn the_index_applied_a_retention_ago_is_chosen_and_samples_stay_bounded() {
        let start = Instant::now();
        let mut samples = Samples::default();
        for second in 0..1000u64 {
            samples.record(start + Duration::from_secs(second), second * 10, RETENTION);
            assert!(samples.samples.len() <= SAMPLES_MAX);
        }
        let now = start + Duration::from_secs(999);
        assert_eq!(samples.index_older_than(now, RETENTION), Some(8990));
        assert_eq!(samples.index_older_than(now, Duration::from_secs(5000)), None);
    }

    #[test]
    fn nothing_is_old_enough_before_a_retention_has_passed() {
        let start = Instant::now();
        let mut samples = Samples::default();
        samples.record(start, 5, RETENTION);
        assert_eq!(
            samples.index_older_than(start + Duration::from_secs(99), RETENTION),
            None
        );
        assert_eq!(samples.index_older_than(start + RETENTION, RETENTION), Some(5));
    }
}
