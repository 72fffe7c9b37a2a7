//! `GET /v1/stats`' answer: counters by name, with rates.

use std::{collections::BTreeMap, net::SocketAddr};

use serde::{Deserialize, Serialize};

use crate::{dataplane, source::api_state::Source};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub generation: u64,
    /// Global counters by slot label (see `lb_common::stats`).
    pub global: BTreeMap<String, u64>,
    pub services: Vec<ServiceReport>,
    /// Per service name: backends taking new flows, and draining ones (weight 0), as
    /// configured (a backend serving several ports counts once).
    #[serde(default)]
    pub backend_states: BTreeMap<String, BackendStates>,
    pub conntrack: Occupancy,
    /// The flood guard's state as of the last sample (see `control::flood`).
    #[serde(default)]
    pub flood: Flood,
}

/// Whether new flows that are never confirmed arrive fast enough to push unconfirmed flows
/// out of their table within a second (a flood), and how fast they arrive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Flood {
    pub active: bool,
    pub unconfirmed_flows_per_s: f64,
    /// The rate above which it is a flood: the unconfirmed table's capacity in flows.
    pub threshold_per_s: f64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStates {
    /// Taking new flows: a weight above 0 and not down.
    pub active: u64,
    /// Weight 0 (drained), whatever their health.
    pub draining: u64,
    /// Down by the health checks (a weight above 0): no new flows, unless every backend
    /// that takes flows is down and the service says `when_all_down: keep`.
    #[serde(default)]
    pub down: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Occupancy {
    pub entries: u64,
    pub capacity: u32,
    /// How long ago the entries were counted (counting walks the table, so lbd counts in
    /// the background, at most every few seconds); `None`: not counted yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counted_s_ago: Option<u64>,
    /// Forward keys the count's walk set in the SYN filter (`CONNTRACK_FILTER`), which it
    /// rebuilt; `None`: not rebuilt by lbd's walks yet (a SYN then asks the table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syn_filter_keys: Option<u64>,
}

/// One kernel service: a service's port mapping in one address family.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServiceReport {
    /// Kernel id, to read the counters.
    #[serde(skip)]
    pub id: u32,
    pub name: String,
    /// The mapping as written (`80:8080/tcp`).
    pub frontend: String,
    pub family: String,
    pub source: Source,
    pub frontends: Vec<SocketAddr>,
    pub totals: Totals,
    /// The socket-level path (local clients' `connect` and `sendmsg`), which no packet
    /// counter sees.
    #[serde(default)]
    pub socket: dataplane::SocketTotals,
    pub backends: Vec<BackendReport>,
}

impl ServiceReport {
    /// What the service's totals count beyond its listed backends' (packets, bytes, new
    /// flows): backends since removed, or out of the plan while their checks fail. `None`
    /// when the rows add up.
    pub fn unlisted(&self) -> Option<Totals> {
        let sum = |count: fn(&Totals) -> u64| -> u64 {
            self.backends.iter().map(|b| count(&b.totals)).sum()
        };
        let unlisted = Totals {
            packets: self.totals.packets.saturating_sub(sum(|t| t.packets)),
            bytes: self.totals.bytes.saturating_sub(sum(|t| t.bytes)),
            new_flows: self.totals.new_flows.saturating_sub(sum(|t| t.new_flows)),
            ..Totals::default()
        };
        (unlisted != Totals::default()).then_some(unlisted)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackendReport {
    #[serde(skip)]
    pub id: u32,
    pub target: SocketAddr,
    pub weight: u32,
    /// `active` or `draining` (weight 0).
    pub state: String,
    pub totals: Totals,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Per second over the last sampling interval, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets_per_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_flows_per_s: Option<f64>,
}

impl Report {
    /// The kernel ids whose counters [`Report::fill`] needs: (services, backends).
    pub fn ids(&self) -> (Vec<u32>, Vec<u32>) {
        let services = self.services.iter().map(|s| s.id).collect();
        let backends = self
            .services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| b.id))
            .collect();
        (services, backends)
    }

    /// Writes the counters into the skeleton.
    pub fn fill(&mut self, stats: &dataplane::StatsSnapshot) {
        let totals = |t: Option<&dataplane::TrafficTotals>| {
            let t = t.copied().unwrap_or_default();
            Totals {
                packets: t.packets,
                bytes: t.bytes,
                new_flows: t.new_flows,
                ..Totals::default()
            }
        };
        self.global = stats
            .global
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect();
        for s in &mut self.services {
            s.totals = totals(stats.services.get(&s.id));
            s.socket = stats.sockets.get(&s.id).copied().unwrap_or_default();
            for b in &mut s.backends {
                b.totals = totals(stats.backends.get(&b.id));
            }
        }
    }

    /// Adds per-second rates from an earlier report of the same services.
    pub fn with_rates(mut self, earlier: &Report, seconds: f64) -> Report {
        if seconds <= 0.0 {
            return self;
        }
        let rate = |now: u64, then: u64| Some(now.saturating_sub(then) as f64 / seconds);
        for s in &mut self.services {
            let Some(old) = earlier
                .services
                .iter()
                .find(|o| o.name == s.name && o.frontend == s.frontend && o.family == s.family)
            else {
                continue;
            };
            s.totals.packets_per_s = rate(s.totals.packets, old.totals.packets);
            s.totals.new_flows_per_s = rate(s.totals.new_flows, old.totals.new_flows);
            for b in &mut s.backends {
                if let Some(ob) = old.backends.iter().find(|ob| ob.target == b.target) {
                    b.totals.packets_per_s = rate(b.totals.packets, ob.totals.packets);
                    b.totals.new_flows_per_s = rate(b.totals.new_flows, ob.totals.new_flows);
                }
            }
        }
        self
    }

    /// Copies the rates of `rated` (a report with rates) onto the same services here.
    pub fn rates_from(mut self, rated: &Report) -> Report {
        for s in &mut self.services {
            let Some(r) = rated
                .services
                .iter()
                .find(|r| r.name == s.name && r.frontend == s.frontend && r.family == s.family)
            else {
                continue;
            };
            s.totals.packets_per_s = r.totals.packets_per_s;
            s.totals.new_flows_per_s = r.totals.new_flows_per_s;
            for b in &mut s.backends {
                if let Some(rb) = r.backends.iter().find(|rb| rb.target == b.target) {
                    b.totals.packets_per_s = rb.totals.packets_per_s;
                    b.totals.new_flows_per_s = rb.totals.new_flows_per_s;
                }
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(packets: u64, bytes: u64, new_flows: u64) -> Totals {
        Totals {
            packets,
            bytes,
            new_flows,
            ..Totals::default()
        }
    }

    #[test]
    fn what_the_listed_backends_do_not_count_is_unlisted() {
        let backend = |port: u16, t: Totals| BackendReport {
            id: 0,
            target: SocketAddr::from(([198, 18, 2, 10], port)),
            weight: 1,
            state: "active".into(),
            totals: t,
        };
        let mut service = ServiceReport {
            id: 0,
            name: "web".into(),
            frontend: "80:8080/tcp".into(),
            family: "ipv4".into(),
            source: Source::File,
            frontends: Vec::new(),
            totals: totals(138, 9000, 12),
            socket: Default::default(),
            backends: vec![
                backend(8080, totals(50, 4000, 5)),
                backend(8081, totals(63, 3000, 4)),
            ],
        };
        assert_eq!(service.unlisted(), Some(totals(25, 2000, 3)));
        service.totals = totals(113, 7000, 9);
        assert_eq!(service.unlisted(), None, "the rows add up");
    }
}
