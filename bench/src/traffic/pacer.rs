//! Rate limiting for the generator: how many packets the next `BPF_PROG_TEST_RUN` call may
//! send, or how long to wait first, so that the average rate stays at or below the limit.

use std::time::Duration;

/// The next step of the send loop.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Step {
    /// Send this many packets now (at least 1).
    Send(u32),
    /// Sleep this long, then ask again.
    Wait(Duration),
}

#[derive(Clone, Copy, Debug)]
pub struct Pacer {
    /// Packets per second; `None` is as fast as possible.
    rate: Option<f64>,
    /// Most packets one call may send.
    max_chunk: u32,
}

impl Pacer {
    /// `rate` in packets per second (`None` or 0: unlimited); `max_chunk` at least 1.
    pub fn new(rate: Option<u64>, max_chunk: u32) -> Self {
        Self {
            rate: rate.filter(|&r| r > 0).map(|r| r as f64),
            max_chunk: max_chunk.max(1),
        }
    }

    /// With `sent` packets sent `elapsed` after the start and `left` still to send (> 0):
    /// the next step. Rate-limited sends go in quanta of about a millisecond's worth, never
    /// more than is owed at that moment, and a loop that fell behind catches up at most
    /// `max_chunk` at a time.
    pub fn next(&self, elapsed: Duration, sent: u64, left: u64) -> Step {
        let cap = left.min(u64::from(self.max_chunk)).max(1);
        let Some(rate) = self.rate else {
            return Step::Send(cap as u32);
        };
        let quantum = ((rate / 1000.0) as u64).clamp(1, cap);
        let owed = (rate * elapsed.as_secs_f64()).floor() as u64;
        let deficit = owed.saturating_sub(sent);
        if deficit >= quantum {
            return Step::Send(deficit.min(cap) as u32);
        }
        let due = (sent + quantum) as f64 / rate;
        Step::Wait(Duration::from_secs_f64(
            (due - elapsed.as_secs_f64()).max(1e-6),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives the pacer on a virtual clock where a send of n packets takes `cost` per packet.
    fn simulate(pacer: Pacer, total: u64, cost: Duration, until: Duration) -> (u64, u32) {
        let (mut now, mut sent, mut max_burst) = (Duration::ZERO, 0u64, 0u32);
        for _ in 0..10_000_000 {
            if sent >= total || now >= until {
                break;
            }
            match pacer.next(now, sent, total - sent) {
                Step::Send(n) => {
                    assert!(n >= 1 && u64::from(n) <= total - sent);
                    sent += u64::from(n);
                    max_burst = max_burst.max(n);
                    now += cost * n;
                }
                Step::Wait(d) => {
                    assert!(d > Duration::ZERO);
                    now += d;
                }
            }
        }
        (sent, max_burst)
    }

    #[test]
    fn unlimited_sends_full_chunks_and_stops_at_the_count() {
        let p = Pacer::new(None, 4096);
        assert_eq!(p.next(Duration::ZERO, 0, 10_000), Step::Send(4096));
        assert_eq!(p.next(Duration::ZERO, 0, 7), Step::Send(7));
        assert_eq!(
            Pacer::new(Some(0), 64).next(Duration::ZERO, 0, 100),
            Step::Send(64)
        );
        let (sent, _) = simulate(p, 10_000, Duration::from_nanos(100), Duration::from_secs(1));
        assert_eq!(sent, 10_000);
    }

    #[test]
    fn limited_rate_holds_the_average() {
        for rate in [1_000u64, 250_000, 3_000_000] {
            let p = Pacer::new(Some(rate), 65_536);
            let (sent, burst) = simulate(
                p,
                u64::MAX / 2,
                Duration::from_nanos(50),
                Duration::from_secs(2),
            );
            let expected = 2 * rate;
            let slack = (rate / 1000).max(1) + 1;
            assert!(
                sent <= expected + slack && sent + 2 * slack >= expected,
                "rate {rate}: {sent} sent in 2 s"
            );
            // Never much more than a millisecond's worth at once (what came due while the
            // previous send ran may be added).
            assert!(
                u64::from(burst) <= 2 * (rate / 1000).max(1),
                "burst {burst}"
            );
        }
    }

    #[test]
    fn waits_until_a_quantum_is_owed() {
        let p = Pacer::new(Some(1_000), 100);
        // Nothing owed at t = 0: wait 1 ms for the first packet.
        assert_eq!(
            p.next(Duration::ZERO, 0, 10),
            Step::Wait(Duration::from_millis(1))
        );
        assert_eq!(p.next(Duration::from_millis(5), 0, 10), Step::Send(5));
        // A loop far behind catches up at most max_chunk at once.
        assert_eq!(
            p.next(Duration::from_secs(10), 0, 1_000_000),
            Step::Send(100)
        );
    }
}
