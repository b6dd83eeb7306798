//! Clock-rate drift: each host's clock runs fast by its own rate, drawn
//! from the seed, up to [`SimOptions::drift_ppm_max`] parts per million.
//!
//! turmoil advances every host's (paused) tokio clock by the same tick, so
//! a drifting host runs a task that puts its own clock one millisecond
//! further ahead every `1 ms × 10⁶ / ppm` of its time: everything the host
//! times (Raft election timeouts and heartbeats, guard deadlines, GC TTLs,
//! the release grace period, RPC timeouts, liveness judgements) runs that
//! much faster than on a host without drift. Rates are relative: one clock
//! cannot run slow, but two hosts differ by up to the maximum. A crash
//! restarts the host's clock (turmoil gives a crashed host a new runtime),
//! so drift builds up again from the restart.
//!
//! A run with drift replays like any other when the seed runs in a process
//! of its own, as every runner of many seeds does ([`crate::process`]).
//!
//! [`SimOptions::drift_ppm_max`]: crate::run::SimOptions::drift_ppm_max

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use tessera_jepsen::sim::Rng;

/// Host name → how fast its clock runs, in parts per million.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DriftRates(BTreeMap<String, u64>);

impl DriftRates {
    /// Rates for `hosts` from `seed`, each in `0..=ppm_max` (from a source
    /// of its own, so the faults drawn from the seed stay the same).
    pub fn draw(seed: u64, hosts: &[String], ppm_max: u64) -> DriftRates {
        let mut rng = Rng::new(seed ^ 0x6472_6966_7400_0000);
        let rates = hosts
            .iter()
            .map(|host| (host.clone(), rng.below(ppm_max.saturating_add(1))));
        DriftRates(rates.collect())
    }

    pub fn of(&self, host: &str) -> u64 {
        self.0.get(host).copied().unwrap_or(0)
    }
}

impl std::fmt::Display for DriftRates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rates: Vec<String> = self
            .0
            .iter()
            .map(|(host, ppm)| format!("{host} +{:.2}%", *ppm as f64 / 10_000.0))
            .collect();
        write!(f, "{}", rates.join(", "))
    }
}

/// Runs a host's `software` with its clock drifting by `ppm`.
pub async fn with_drift<F: Future<Output = turmoil::Result>>(ppm: u64, software: F) -> turmoil::Result {
    let drift = (ppm > 0).then(|| tokio::spawn(drift(ppm)));
    let result = software.await;
    if let Some(drift) = drift {
        drift.abort();
    }
    result
}

/// turmoil's tick in every run: how far it moves each host's clock per
/// step.
pub const TICK: Duration = Duration::from_millis(1);

/// Advances this host's clock by 1 ms every `10⁶ / ppm` ms. `ppm > 0`.
///
/// turmoil moves a host's clock by letting a sleep of one [`TICK`] expire
/// each step; an advance made during the step counts toward that sleep, so
/// the advance is one tick longer than the drift it adds.
async fn drift(ppm: u64) {
    debug_assert!(ppm > 0);
    let every = Duration::from_micros(1_000_000_000 / ppm.max(1));
    loop {
        tokio::time::sleep(every).await;
        tokio::time::advance(TICK + Duration::from_millis(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_the_seed_within_the_bound() {
        let hosts: Vec<String> = (1..=12).map(|i| format!("h{i}")).collect();
        let first = DriftRates::draw(5, &hosts, 50_000);
        assert_eq!(first, DriftRates::draw(5, &hosts, 50_000));
        assert_ne!(first, DriftRates::draw(6, &hosts, 50_000));
        assert!(hosts.iter().all(|h| first.of(h) <= 50_000));
        assert!(hosts.iter().any(|h| first.of(h) > 0));
        assert!(hosts.iter().all(|h| DriftRates::draw(5, &hosts, 0).of(h) == 0));
    }

    /// A host drifting by 5% is 1 s ahead of one without drift after 20 s.
    #[test]
    fn a_drifting_host_gets_ahead_by_its_rate() -> turmoil::Result {
        let mut sim = turmoil::Builder::new()
            .simulation_duration(Duration::from_secs(60))
            .tick_duration(TICK)
            .build();
        let clocks: std::sync::Arc<std::sync::Mutex<BTreeMap<&'static str, Duration>>> = Default::default();
        for (host, ppm) in [("steady", 0), ("fast", 50_000)] {
            let clocks = clocks.clone();
            sim.host(host, move || {
                let clocks = clocks.clone();
                with_drift(ppm, async move {
                    let start = tokio::time::Instant::now();
                    loop {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        let mut clocks = clocks.lock().unwrap_or_else(|p| p.into_inner());
                        clocks.insert(host, start.elapsed());
                    }
                })
            });
        }
        sim.client("observer", async {
            tokio::time::sleep(Duration::from_secs(20)).await;
            Ok(())
        });
        sim.run()?;
        let clocks = clocks.lock().unwrap_or_else(|p| p.into_inner());
        let (steady, fast) = (clocks["steady"], clocks["fast"]);
        let ahead = fast.saturating_sub(steady);
        assert!(
            (Duration::from_millis(900)..=Duration::from_millis(1_100)).contains(&ahead),
            "after {steady:?}, the fast host is {ahead:?} ahead"
        );
        Ok(())
    }
}
