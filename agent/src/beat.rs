//! The agent's beat: its periodic work wakes on the policy sampler's
//! passes, not between them.
//!
//! Why: on an idle host every wake-up costs more than the work it does
//! (under emulation a clock read through an emulated HPET, a context
//! switch and a page-table switch; the tokio driver reads the clock twice
//! a park). The sampler passes every 250 ms; the refresh (2 s), each
//! inventory stream's tick (1 s) and the guard's sweep (5 s) woke at their
//! own phases, each a wake-up of its own. Rounded up to the next pass,
//! their deadlines fall on the same instants as the sampler's, and tokio's
//! timer wheel fires them in one wake-up. The cost is a delay of less than
//! one beat.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

/// A period (the sampler's interval) counted from one process-wide
/// instant, so that every beat made with the same period falls on the
/// same instants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beat {
    period: Duration,
}

/// The instant every beat counts from: the first use.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Beat {
    /// Beats `period` apart (at least 1 ms: tokio's timer resolution).
    pub fn new(period: Duration) -> Self {
        Beat {
            period: period.max(Duration::from_millis(1)),
        }
    }

    /// The first beat at or after `t`.
    pub fn at_or_after(&self, t: Instant) -> Instant {
        let epoch = epoch();
        let since = t.saturating_duration_since(epoch).as_nanos();
        let period = self.period.as_nanos();
        let beats = since.div_ceil(period);
        // u128 nanoseconds: 2^64 ns is 584 years, beyond any uptime.
        epoch + Duration::from_nanos((beats * period).min(u64::MAX as u128) as u64)
    }

    /// Sleep until the first beat `pause` or more from now.
    pub async fn sleep(self, pause: Duration) {
        tokio::time::sleep_until(self.at_or_after(Instant::now() + pause)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deadlines rounded by two beats of the same period meet; none comes
    /// early, and none later than one period.
    #[test]
    fn deadlines_fall_on_the_same_instants() {
        let ms = Duration::from_millis;
        let a = Beat::new(ms(250));
        let b = Beat::new(ms(250));
        let t0 = Instant::now();
        for offset in [0, 1, 99, 250, 251, 1000, 1999, 5003] {
            let t = t0 + ms(offset);
            let ta = a.at_or_after(t);
            assert_eq!(ta, b.at_or_after(t));
            assert!(ta >= t, "early for +{offset} ms");
            assert!(ta - t < ms(250), "a whole beat late for +{offset} ms");
            // A beat rounds to itself.
            assert_eq!(a.at_or_after(ta), ta);
        }
        // Two deadlines inside one beat share it.
        let first = a.at_or_after(t0 + ms(1000));
        assert_eq!(a.at_or_after(first - ms(100)), first);
    }
}
