//! The daemon behind its lock, and what the admin API and the metrics endpoint keep beside it.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard, TryLockError},
    time::Instant,
};

use super::flood::FloodChange;
use crate::{
    api::report::{Occupancy, Report},
    daemon::{Daemon, DaemonError},
};

/// The daemon and what the API keeps beside it.
pub struct Shared {
    daemon: Mutex<Daemon>,
    /// The connection table and counters, read without holding the daemon's lock.
    pub(super) readers: crate::dataplane::MapReaders,
    /// API answers by HTTP status.
    pub requests: Mutex<BTreeMap<u16, u64>>,
    pub sampler: Mutex<Sampler>,
    /// How long successful health checks take, by service (kept across scrapes).
    pub check_latency: crate::metrics::CheckLatency,
    /// How announcing through BIRD goes, when lbd does (`announce_task`).
    pub announce: Mutex<Option<super::announce_health::AnnounceHealth>>,
}

/// The last two counter reports, for rates, and the connection-table occupancy (counting it
/// walks the table, so it is refreshed by the sampler, not per request).
#[derive(Default)]
pub struct Sampler {
    previous: Option<(Instant, Report)>,
    latest: Option<(Instant, Report)>,
    pub conntrack: Occupancy,
    /// When the occupancy was last counted, and how long that took.
    counted: Option<(Instant, std::time::Duration)>,
    flood: super::flood::FloodWatch,
}

/// The occupancy is counted again once this many times the last count's duration has
/// passed (and at most every sample): counting costs at most 2% of a CPU, however large the
/// table (2 million entries take most of a second).
const OCCUPANCY_COST_RATIO: u32 = 50;

impl Shared {
    pub fn new(daemon: Daemon) -> Result<Arc<Shared>, DaemonError> {
        let readers = daemon.dataplane().readers()?;
        Ok(Arc::new(Shared {
            daemon: Mutex::new(daemon),
            readers,
            requests: Mutex::default(),
            sampler: Mutex::default(),
            check_latency: Default::default(),
            announce: Mutex::default(),
        }))
    }

    /// How announcing through BIRD goes, if lbd does (`lbctl status`, the metrics).
    pub fn bgp_status(&self) -> Option<crate::api::BgpStatus> {
        lock(&self.announce).as_ref().map(|h| h.status())
    }

    /// Counters now: the shape under the daemon's lock, the reads outside it.
    fn fresh_report(&self, occupancy: Occupancy) -> Result<Report, DaemonError> {
        let mut report = self.daemon().report_skeleton(occupancy);
        let (services, backends) = report.ids();
        report.fill(&self.readers.traffic(services, backends)?);
        Ok(report)
    }

    /// The daemon, locked. The one policy for a poisoned lock: carry on with the daemon as
    /// it is. A panic in the middle of a change leaves it as consistent as a failed change
    /// does (the maps hold the last complete write; the next change rewrites the difference),
    /// and stopping every admin path instead would leave the dataplane unmanaged.
    pub fn daemon(&self) -> MutexGuard<'_, Daemon> {
        lock(&self.daemon)
    }

    /// The daemon if no one holds it now (the same policy for a poisoned lock): for an async
    /// task that can do its part at its next turn, so that a long change (a whole replan,
    /// about a second beside 10,000 services) holding the lock never blocks one of the
    /// runtime's threads, on which the health checks' own timers run.
    pub fn try_daemon(&self) -> Option<MutexGuard<'_, Daemon>> {
        match self.daemon.try_lock() {
            Ok(daemon) => Some(daemon),
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// Takes a sample: occupancy (when due), then counters. Called every few seconds.
    pub fn sample(&self) -> Result<(), DaemonError> {
        let (due, mut occupancy) = {
            let sampler = lock(&self.sampler);
            let due = sampler
                .counted
                .is_none_or(|(at, took)| at.elapsed() >= took * OCCUPANCY_COST_RATIO);
            (due, sampler.conntrack)
        };
        let mut counted = None;
        if due {
            let started = Instant::now();
            let walk = self.readers.walk_conntrack()?;
            tracing::debug!(
                entries = walk.entries,
                forward_keys = walk.forward_keys,
                took_ms = started.elapsed().as_millis() as u64,
                "connection table walked: occupancy counted, its filter rebuilt"
            );
            occupancy = Occupancy {
                entries: walk.entries,
                capacity: walk.capacity,
                counted_s_ago: Some(0),
                syn_filter_keys: Some(walk.forward_keys),
            };
            counted = Some((started, started.elapsed()));
        }
        let report = self.fresh_report(occupancy)?;
        let mut sampler = lock(&self.sampler);
        sampler.conntrack = occupancy;
        if counted.is_some() {
            sampler.counted = counted;
        }
        let at = Instant::now();
        match sampler.flood.observe(at, &report) {
            Some(FloodChange::Entered(f)) => tracing::warn!(
                "flood guard: {:.0} new flows a second are never confirmed (more than the {:.0} \
                 the unconfirmed-flow table holds): established flows are kept, new clients \
                 must answer within a second",
                f.unconfirmed_flows_per_s,
                f.threshold_per_s
            ),
            Some(FloodChange::Left(f)) => tracing::info!(
                "flood guard: over ({:.0} unconfirmed new flows a second)",
                f.unconfirmed_flows_per_s
            ),
            None => {}
        }
        sampler.previous = sampler.latest.take();
        sampler.latest = Some((at, report));
        Ok(())
    }

    /// Counters now, with rates over the last sampling interval.
    pub fn report(&self) -> Result<Report, DaemonError> {
        let occupancy = {
            let sampler = lock(&self.sampler);
            Occupancy {
                counted_s_ago: sampler.counted.map(|(at, _)| at.elapsed().as_secs()),
                ..sampler.conntrack
            }
        };
        let mut now = self.fresh_report(occupancy)?;
        let sampler = lock(&self.sampler);
        now.flood = sampler.flood.state();
        Ok(match (&sampler.previous, &sampler.latest) {
            // Rates over the sampler's last whole interval, laid on the fresh counters.
            (Some((t0, r0)), Some((t1, r1))) => now.rates_from(
                &r1.clone()
                    .with_rates(r0, t1.duration_since(*t0).as_secs_f64()),
            ),
            _ => now,
        })
    }
}

/// Locks `mutex` under the poisoned-lock policy of [`Shared::daemon`].
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
