//! The flood guard's state, as operators see it. The kernel guards by itself: a new flow waits
//! in the table of unconfirmed flows (`PENDING`) until its client's second packet, so a flood
//! of new flows only churns that table and never evicts an established flow. What a flood
//! still costs is legitimate new flows: an unconfirmed flow is pushed out after about
//! `PENDING`'s capacity of newer unconfirmed flows. This watch calls it a flood when that
//! happens within a second (a client then has less than a second to answer its SYN-ACK), from
//! the kernel's counters: `new_flow` minus `flow_confirmed` is the flows never confirmed.

use std::time::Instant;

use lb_common::{limits, stats::StatSlot};

use crate::api::report::{Flood, Report};

/// Leaves the flood state below this share of the entering rate, so a rate near the
/// threshold does not flap.
const LEAVE_SHARE: f64 = 0.5;

/// Watches the unconfirmed-flow rate across samples.
#[derive(Debug, Default)]
pub struct FloodWatch {
    last: Option<(Instant, u64)>,
    state: Flood,
}

/// A change of state, to be logged.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FloodChange {
    Entered(Flood),
    Left(Flood),
}

impl FloodWatch {
    /// The state as of the last sample.
    pub fn state(&self) -> Flood {
        self.state
    }

    /// Takes the sample `report` (taken at `at`); answers a change of state.
    pub fn observe(&mut self, at: Instant, report: &Report) -> Option<FloodChange> {
        let counter = |slot: StatSlot| report.global.get(slot.label()).copied().unwrap_or(0);
        let unconfirmed =
            counter(StatSlot::NewFlow).saturating_sub(counter(StatSlot::FlowConfirmed));
        let threshold = f64::from(limits::pending_entries(report.conntrack.capacity) / 2);
        let previous = self.last.replace((at, unconfirmed));
        let (then, before) = previous?;
        let seconds = at.duration_since(then).as_secs_f64();
        if seconds <= 0.0 {
            return None;
        }
        let rate = unconfirmed.saturating_sub(before) as f64 / seconds;
        let was = self.state.active;
        let active = if was {
            rate >= threshold * LEAVE_SHARE
        } else {
            rate > threshold
        };
        self.state = Flood {
            active,
            unconfirmed_flows_per_s: rate,
            threshold_per_s: threshold,
        };
        match (was, active) {
            (false, true) => Some(FloodChange::Entered(self.state)),
            (true, false) => Some(FloodChange::Left(self.state)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::api::report::Occupancy;

    fn report(new_flows: u64, confirmed: u64) -> Report {
        let mut r = Report {
            conntrack: Occupancy {
                entries: 0,
                capacity: 65_536,
                counted_s_ago: None,
                syn_filter_keys: None,
            },
            ..Report::default()
        };
        r.global.insert(StatSlot::NewFlow.label().into(), new_flows);
        r.global
            .insert(StatSlot::FlowConfirmed.label().into(), confirmed);
        r
    }

    #[test]
    fn enters_above_the_unconfirmed_tables_capacity_per_second_and_leaves_below_half() {
        // 65,536 entries: 16,384 unconfirmed entries, 8,192 flows.
        let mut watch = FloodWatch::default();
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        assert_eq!(watch.observe(s(0), &report(0, 0)), None);
        // Busy but confirmed: 100k new flows a second, all confirmed.
        assert_eq!(watch.observe(s(5), &report(500_000, 500_000)), None);
        assert!(!watch.state().active);
        // 9,000 unconfirmed a second: a flood.
        let change = watch.observe(s(10), &report(545_000, 500_000));
        let Some(FloodChange::Entered(state)) = change else {
            panic!("{change:?}");
        };
        assert_eq!(state.threshold_per_s, 8192.0);
        assert_eq!(state.unconfirmed_flows_per_s, 9000.0);
        // 5,000 a second: still above half the threshold, still a flood.
        assert_eq!(watch.observe(s(15), &report(570_000, 500_000)), None);
        assert!(watch.state().active);
        // 1,000 a second: over.
        let change = watch.observe(s(20), &report(575_000, 500_000));
        assert!(matches!(change, Some(FloodChange::Left(_))), "{change:?}");
        assert!(!watch.state().active);
    }
}
