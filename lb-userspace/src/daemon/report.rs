//! Counters by name (`lbctl stats`, `/metrics`): the report's shape under the daemon's lock.

use super::*;
use crate::api::report::{BackendReport, BackendStates, Occupancy, Report, ServiceReport, Totals};

const BACKEND_ACTIVE: &str = "active";
const BACKEND_DRAINING: &str = "draining";
const BACKEND_DOWN: &str = "down";

impl Daemon {
    /// Reads every counter. The connection-table occupancy is passed in: counting it walks
    /// the table, which the caller does at its own pace.
    pub fn report(&self, conntrack: Occupancy) -> Result<Report, DaemonError> {
        let mut report = self.report_skeleton(conntrack);
        let (services, backends) = report.ids();
        report.fill(&self.dp.traffic(services, backends)?);
        Ok(report)
    }

    /// The report without its counters (names, ids, weights): cheap, so it can be taken under
    /// a lock and filled outside it (see [`Report::fill`]).
    pub fn report_skeleton(&self, conntrack: Occupancy) -> Report {
        let services = self
            .running
            .services
            .iter()
            .map(|s| ServiceReport {
                id: s.id,
                name: s.name.clone(),
                frontend: s.mapping.to_string(),
                family: family_of(&s.frontends, &s.backends),
                source: source_of(&self.merged, &s.name),
                frontends: s.frontends.clone(),
                totals: Totals::default(),
                socket: dataplane::SocketTotals::default(),
                backends: s
                    .backends
                    .iter()
                    .map(|b| BackendReport {
                        id: b.id,
                        target: b.target,
                        weight: b.weight,
                        state: if b.weight == 0 { "draining" } else { "active" }.into(),
                        totals: Totals::default(),
                    })
                    .collect(),
            })
            .collect();
        Report {
            generation: self.generation,
            global: BTreeMap::new(),
            services,
            backend_states: self
                .merged
                .file
                .services
                .iter()
                .map(|(name, spec)| {
                    let mut states = BackendStates::default();
                    for backend in &spec.backends {
                        *match self.backend_state(spec, backend) {
                            BACKEND_DRAINING => &mut states.draining,
                            BACKEND_DOWN => &mut states.down,
                            _ => &mut states.active,
                        } += 1;
                    }
                    (name.clone(), states)
                })
                .collect(),
            conntrack,
            flood: Default::default(),
        }
    }

    /// A backend's state as `lbctl list` and `meshlb_backends{state}` name it: draining
    /// (weight 0), down (its checks failed), else active (taking new flows).
    pub fn backend_state(
        &self,
        spec: &crate::source::file::ServiceSpec,
        backend: &crate::source::file::BackendSpec,
    ) -> &'static str {
        if backend.weight == 0 {
            BACKEND_DRAINING
        } else if self
            .backend_health(spec, backend)
            .is_some_and(|h| h.state == crate::source::health::Health::Down)
        {
            BACKEND_DOWN
        } else {
            BACKEND_ACTIVE
        }
    }

    pub fn conntrack_occupancy(&self) -> Result<Occupancy, DaemonError> {
        let (entries, capacity) = self.dp.conntrack_occupancy()?;
        Ok(Occupancy {
            entries,
            capacity,
            counted_s_ago: Some(0),
            syn_filter_keys: None,
        })
    }
}

fn family_of(frontends: &[SocketAddr], backends: &[plan::PlannedBackend]) -> String {
    let v6 = frontends
        .first()
        .map(|f| f.is_ipv6())
        .or_else(|| backends.first().map(|b| b.target.is_ipv6()))
        .unwrap_or(false);
    if v6 { "ipv6" } else { "ipv4" }.into()
}
