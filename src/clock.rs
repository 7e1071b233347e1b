//! Time, the only place that reads it.
//!
//! Every component that needs "now" takes a [`Clock`]: the proxy runs on [`SystemClock`], tests
//! and the demo on [`ManualClock`], which they move by hand (days pass in milliseconds). Nothing
//! else in the crate reads the wall clock (`clippy.toml` bans `SystemTime::now` and
//! `Timestamp::now`). Elapsed durations for metrics and I/O timeouts use tokio's monotonic timers,
//! which are not decisions about what time of day it is.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;

/// A source of wall-clock time.
pub trait Clock: Send + Sync + 'static {
    /// The current instant (UTC).
    fn now(&self) -> Timestamp;

    /// Nanoseconds since the Unix epoch; what the quota maths run on.
    fn now_nanos(&self) -> u64 {
        let ns = self.now().as_nanosecond();
        u64::try_from(ns).unwrap_or(0)
    }
}

/// Shared handle to a clock.
pub type SharedClock = Arc<dyn Clock>;

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one sanctioned read of the wall clock
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that only moves when told to. Starts at the instant given.
#[derive(Debug)]
pub struct ManualClock {
    nanos: AtomicI64,
}

impl ManualClock {
    /// A manual clock standing at `at`.
    pub fn new(at: Timestamp) -> Arc<Self> {
        Arc::new(Self { nanos: AtomicI64::new(at.as_nanosecond() as i64) })
    }

    /// Move the clock forward (or backward, for a negative duration).
    pub fn advance(&self, by: Duration) {
        self.nanos.fetch_add(by.as_nanos() as i64, Ordering::SeqCst);
    }

    /// Put the clock at `at`.
    pub fn set(&self, at: Timestamp) {
        self.nanos.store(at.as_nanosecond() as i64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_nanosecond(i128::from(self.nanos.load(Ordering::SeqCst)))
            .expect("manual clock within jiff's range")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let t0: Timestamp = "2024-05-04T07:00:00Z".parse().unwrap();
        let c = ManualClock::new(t0);
        assert_eq!(c.now(), t0);
        c.advance(Duration::from_secs(3600));
        assert_eq!(c.now(), "2024-05-04T08:00:00Z".parse::<Timestamp>().unwrap());
        assert_eq!(c.now_nanos(), 1_714_809_600_000_000_000);
    }
}
