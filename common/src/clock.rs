//! Time as node logic sees it. Production uses tokio's clock; a simulator
//! supplies its own. Only monotonic durations: correctness never depends on
//! wall-clock agreement between nodes (DESIGN §4).

use std::future::Future;
use std::time::Duration;

pub trait Clock: Clone + Send + Sync + 'static {
    /// Monotonic time since an arbitrary origin fixed for this clock.
    fn now(&self) -> Duration;
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send;
}

/// tokio's monotonic clock (so paused/simulated tokio time also works).
#[derive(Clone, Debug)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(duration)
    }
}
