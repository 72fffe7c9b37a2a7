//! `/metrics` in the Prometheus/OpenMetrics text format, built from one counter report per
//! scrape. Label sets are bounded by the configuration: services, their port mappings and
//! backends, the kernel's counter slots, and HTTP status codes.
//!
//! The metric names are listed in `METRIC_NAMES`; the Grafana dashboard in
//! `deploy/grafana/` uses only those (a test checks).

use std::collections::BTreeMap;

use lb_common::stats::{SlotKind, StatSlot};
use prometheus_client::{
    encoding::text::encode,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::{
    api::{Outcome, Trigger, report::Report},
    source::{file::ServiceFile, health::HealthBook},
};

type Labels = Vec<(&'static str, String)>;

/// Every metric family served, as scraped (counters with `_total`).
pub const METRIC_NAMES: &[&str] = &[
    "meshlb_xdp_packets_total",
    "meshlb_forwarded_packets_total",
    "meshlb_passed_packets_total",
    "meshlb_dropped_packets_total",
    "meshlb_events_total",
    "meshlb_tc_packets_total",
    "meshlb_service_packets_total",
    "meshlb_service_bytes_total",
    "meshlb_service_new_flows_total",
    "meshlb_service_socket_connections_total",
    "meshlb_service_socket_datagrams_total",
    "meshlb_service_socket_no_backend_total",
    "meshlb_backend_packets_total",
    "meshlb_backend_bytes_total",
    "meshlb_backend_new_flows_total",
    "meshlb_backends",
    "meshlb_conntrack_entries",
    "meshlb_conntrack_capacity",
    "meshlb_syn_filter_keys",
    "meshlb_flood",
    "meshlb_unconfirmed_flows_per_second",
    "meshlb_config_generation",
    "meshlb_reloads_total",
    "meshlb_api_requests_total",
    "meshlb_service_info",
    "meshlb_swarm_engine_up",
    "meshlb_swarm_engine_reads_total",
    "meshlb_swarm_services",
    "meshlb_swarm_tasks",
    "meshlb_swarm_stop_notices_total",
    "meshlb_bgp_in_sync",
    "meshlb_bgp_vips_announced",
    "meshlb_bgp_session_established",
    "meshlb_bgp_failures_total",
    "meshlb_interface_attached",
    "meshlb_interface_reattached_total",
    "meshlb_backend_up",
    "meshlb_backend_health_transitions_total",
    "meshlb_health_check_seconds",
];

/// Where a global counter slot goes: (metric without `meshlb_` and `_total`, label, value).
fn slot_metric(slot: StatSlot) -> (&'static str, &'static str, &'static str) {
    let label = slot.label();
    match slot.kind() {
        SlotKind::Seen => ("xdp_packets", "", ""),
        SlotKind::Tc => ("tc_packets", "outcome", label.trim_start_matches("tc_")),
        SlotKind::Event => ("events", "event", label),
        SlotKind::Outcome => {
            if let Some(reason) = label.strip_prefix("drop_") {
                ("dropped_packets", "reason", reason)
            } else if let Some(reason) = label.strip_prefix("pass_") {
                ("passed_packets", "reason", reason)
            } else {
                ("forwarded_packets", "path", label.trim_start_matches("tx_"))
            }
        }
    }
}

/// Registers `metric`; the client library ends every HELP with a period, so `help` is given
/// without one.
fn register(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: impl prometheus_client::registry::Metric,
) {
    registry.register(name, help.trim_end_matches('.'), metric);
}

fn counter_family(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let family = Family::<Labels, Counter>::default();
    register(registry, name, help, family.clone());
    family
}

fn gauge_family(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let family = Family::<Labels, Gauge>::default();
    register(registry, name, help, family.clone());
    family
}

/// How long successful health checks take, by service: a histogram cannot be rebuilt from a
/// report, so this one lives as long as lbd and every scrape registers it.
#[derive(Clone)]
pub struct CheckLatency(Family<Labels, Histogram, fn() -> Histogram>);

impl Default for CheckLatency {
    fn default() -> Self {
        // 0.5 ms to about 2 s.
        Self(Family::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 13))
        }))
    }
}

impl CheckLatency {
    pub fn observe(&self, service: &str, took: std::time::Duration) {
        self.0
            .get_or_create(&vec![("service", service.to_owned())])
            .observe(took.as_secs_f64());
    }

    /// Drops the series of a service no longer checked (removed, or its checks taken out),
    /// so `/metrics` does not list it for the rest of lbd's life.
    pub fn forget(&self, service: &str) {
        self.0.remove(&vec![("service", service.to_owned())]);
    }
}

/// The health checks: each checked backend's state and transitions, and check latency.
pub struct HealthMetrics<'a> {
    /// From `Daemon::health_states`.
    pub states: &'a [CheckedBackend],
    pub latency: &'a CheckLatency,
}

/// One checked backend, as `meshlb_backend_up` and its transitions show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedBackend {
    pub service: String,
    /// The address its check goes to.
    pub addr: std::net::SocketAddr,
    /// Whether the plan serves it: up or not checked yet, or down in a service that keeps
    /// them all when all are down (`when_all_down: keep`).
    pub served: bool,
    pub transitions: u64,
}

/// Each backend `book` checks, served or not as the plan of `file` (the services it was
/// synced with) sees it (`HealthBook::serving`).
pub fn checked_backends(book: &HealthBook, file: &ServiceFile) -> Vec<CheckedBackend> {
    let left_out = book.left_out(file);
    book.states()
        .map(|(key, state)| CheckedBackend {
            service: key.service.clone(),
            addr: key.addr,
            served: !left_out.contains(key),
            transitions: state.transitions,
        })
        .collect()
}

/// The scrape's text.
pub fn render(
    report: &Report,
    changes: &BTreeMap<(Trigger, Outcome), u64>,
    api_requests: &BTreeMap<u16, u64>,
    swarm: Option<&crate::api::SwarmStatus>,
    bgp: Option<&crate::api::BgpStatus>,
    attachments: &[crate::api::AttachmentStatus],
    health: &HealthMetrics<'_>,
) -> String {
    let mut registry = Registry::with_prefix("meshlb");
    register_health(&mut registry, health);
    register_interfaces(&mut registry, attachments);
    register_global(&mut registry, report);
    register_services(&mut registry, report);
    register_conntrack(&mut registry, report);
    register_changes(&mut registry, changes, api_requests);
    register_sources(&mut registry, report);
    if let Some(swarm) = swarm {
        register_swarm(&mut registry, swarm);
    }
    if let Some(bgp) = bgp {
        register_bgp(&mut registry, bgp);
    }
    let mut text = String::new();
    encode(&mut text, &registry).expect("writing to a String does not fail");
    text
}

/// The global counters, one family per kind of slot.
fn register_global(registry: &mut Registry, report: &Report) {
    let mut global: BTreeMap<&str, Family<Labels, Counter>> = BTreeMap::new();
    for (name, help) in [
        ("xdp_packets", "Packets the XDP program saw."),
        (
            "forwarded_packets",
            "Packets sent on by path (xdp_redirect, via_tc, local).",
        ),
        (
            "passed_packets",
            "Packets passed to the kernel untouched, by reason.",
        ),
        ("dropped_packets", "Packets dropped, by reason."),
        (
            "events",
            "Things that happened on the way: rewrites, new flows, ICMP handled.",
        ),
        ("tc_packets", "Packets the TC program handled, by outcome."),
    ] {
        global.insert(name, counter_family(registry, name, help));
    }
    for slot in StatSlot::ALL {
        let (name, key, value) = slot_metric(*slot);
        let labels: Labels = if key.is_empty() {
            Vec::new()
        } else {
            vec![(key, value.to_owned())]
        };
        let count = report.global.get(slot.label()).copied().unwrap_or(0);
        global[name].get_or_create(&labels).inc_by(count);
    }
}

/// Per service and per backend: traffic, socket-level path, backend states.
fn register_services(registry: &mut Registry, report: &Report) {
    let service_packets = counter_family(
        registry,
        "service_packets",
        "Packets of a service's flows, both directions.",
    );
    let service_bytes = counter_family(
        registry,
        "service_bytes",
        "Bytes of a service's flows, both directions.",
    );
    let service_flows = counter_family(registry, "service_new_flows", "New flows of a service.");
    let socket_connections = counter_family(
        registry,
        "service_socket_connections",
        "Local clients' connect() calls to a service's frontend sent to a backend (socket-level path).",
    );
    let socket_datagrams = counter_family(
        registry,
        "service_socket_datagrams",
        "Local clients' unconnected UDP datagrams to a service's frontend sent to a backend (socket-level path).",
    );
    let socket_no_backend = counter_family(
        registry,
        "service_socket_no_backend",
        "Local clients' connect() or sendmsg() to a service's frontend refused: no usable backend (socket-level path).",
    );
    let backend_packets = counter_family(
        registry,
        "backend_packets",
        "Packets of a backend's flows, both directions.",
    );
    let backend_bytes = counter_family(
        registry,
        "backend_bytes",
        "Bytes of a backend's flows, both directions.",
    );
    let backend_flows = counter_family(
        registry,
        "backend_new_flows",
        "New flows given to a backend.",
    );
    let backends = gauge_family(
        registry,
        "backends",
        "Backends by state (active: taking new flows; draining: weight 0; down: by its health checks).",
    );
    for s in &report.services {
        let labels: Labels = vec![
            ("service", s.name.clone()),
            ("frontend", s.frontend.clone()),
            ("family", s.family.clone()),
        ];
        service_packets
            .get_or_create(&labels)
            .inc_by(s.totals.packets);
        service_bytes.get_or_create(&labels).inc_by(s.totals.bytes);
        service_flows
            .get_or_create(&labels)
            .inc_by(s.totals.new_flows);
        socket_connections
            .get_or_create(&labels)
            .inc_by(s.socket.connections);
        socket_datagrams
            .get_or_create(&labels)
            .inc_by(s.socket.datagrams);
        socket_no_backend
            .get_or_create(&labels)
            .inc_by(s.socket.no_backend);
        for b in &s.backends {
            let mut labels = labels.clone();
            labels.push(("backend", b.target.to_string()));
            backend_packets
                .get_or_create(&labels)
                .inc_by(b.totals.packets);
            backend_bytes.get_or_create(&labels).inc_by(b.totals.bytes);
            backend_flows
                .get_or_create(&labels)
                .inc_by(b.totals.new_flows);
        }
    }
    for (service, states) in &report.backend_states {
        for (state, count) in [
            ("active", states.active),
            ("draining", states.draining),
            ("down", states.down),
        ] {
            backends
                .get_or_create(&vec![
                    ("service", service.clone()),
                    ("state", state.to_owned()),
                ])
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }
}

/// The connection table's occupancy and the configuration generation.
fn register_conntrack(registry: &mut Registry, report: &Report) {
    let entries = Gauge::<i64>::default();
    entries.set(i64::try_from(report.conntrack.entries).unwrap_or(i64::MAX));
    register(
        registry,
        "conntrack_entries",
        "Connection-table entries (a flow takes two), sampled.",
        entries,
    );
    let capacity = Gauge::<i64>::default();
    capacity.set(i64::from(report.conntrack.capacity));
    register(
        registry,
        "conntrack_capacity",
        "Connection-table capacity in entries.",
        capacity,
    );
    if let Some(keys) = report.conntrack.syn_filter_keys {
        let filter = Gauge::<i64>::default();
        filter.set(i64::try_from(keys).unwrap_or(i64::MAX));
        register(
            registry,
            "syn_filter_keys",
            "Forward keys in the SYN filter, rebuilt with each occupancy count (absent until \
             the first: SYNs then ask the connection table).",
            filter,
        );
    }
    let flood = Gauge::<i64>::default();
    flood.set(i64::from(report.flood.active));
    registry.register(
        "flood",
        "1 while new flows that are never confirmed push unconfirmed flows out of their table \
         within a second (established flows are kept), sampled",
        flood,
    );
    let unconfirmed = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    unconfirmed.set(report.flood.unconfirmed_flows_per_s);
    registry.register(
        "unconfirmed_flows_per_second",
        "New flows a second that were never confirmed by their client's second packet, sampled",
        unconfirmed,
    );
    let generation = Gauge::<i64>::default();
    generation.set(i64::try_from(report.generation).unwrap_or(i64::MAX));
    register(
        registry,
        "config_generation",
        "Configurations programmed since start.",
        generation,
    );
}

/// Configuration changes and admin API requests.
fn register_changes(
    registry: &mut Registry,
    changes: &BTreeMap<(Trigger, Outcome), u64>,
    api_requests: &BTreeMap<u16, u64>,
) {
    let reloads = counter_family(
        registry,
        "reloads",
        "Configuration changes by source and result.",
    );
    for ((trigger, outcome), count) in changes {
        reloads
            .get_or_create(&vec![
                ("source", trigger.as_str().to_owned()),
                ("result", outcome.as_str().to_owned()),
            ])
            .inc_by(*count);
    }
    let requests = counter_family(
        registry,
        "api_requests",
        "Admin API requests by HTTP status.",
    );
    for (code, count) in api_requests {
        requests
            .get_or_create(&vec![("code", code.to_string())])
            .inc_by(*count);
    }
}

/// Where each service is defined.
fn register_sources(registry: &mut Registry, report: &Report) {
    let info = gauge_family(
        registry,
        "service_info",
        "1 per service, labelled with where it is defined (file, api, swarm).",
    );
    for service in &report.services {
        let source = serde_json::to_value(service.source)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        info.get_or_create(&vec![("service", service.name.clone()), ("source", source)])
            .set(1);
    }
}

/// The interfaces meshlb is attached to: missing ones, and re-attachments.
fn register_interfaces(registry: &mut Registry, attachments: &[crate::api::AttachmentStatus]) {
    let attached = gauge_family(
        registry,
        "interface_attached",
        "1 per interface meshlb is attached to; 0 while it is missing (deleted, waiting for an interface of that name).",
    );
    let reattached = counter_family(
        registry,
        "interface_reattached",
        "Times meshlb attached again to an interface that was deleted and made again.",
    );
    for a in attachments {
        let labels: Labels = vec![("interface", a.interface.clone())];
        attached
            .get_or_create(&labels)
            .set(i64::from(!a.is_missing()));
        reattached.get_or_create(&labels).inc_by(a.reattached);
    }
}

/// `meshlb_backend_up` is 1 for a backend served (up, not checked yet, or kept with all its
/// service's backends down under `when_all_down: keep`) and 0 for one left out; backends of
/// services without checks are not listed.
fn register_health(registry: &mut Registry, health: &HealthMetrics<'_>) {
    let up = gauge_family(
        registry,
        "backend_up",
        "1 per checked backend that is served (up, not checked yet, or all down under when_all_down keep), 0 per one left out as down; by service and address checked.",
    );
    let transitions = counter_family(
        registry,
        "backend_health_transitions",
        "Times a checked backend went down or came back up.",
    );
    for backend in health.states {
        let labels: Labels = vec![
            ("service", backend.service.clone()),
            ("backend", backend.addr.to_string()),
        ];
        up.get_or_create(&labels).set(i64::from(backend.served));
        transitions
            .get_or_create(&labels)
            .inc_by(backend.transitions);
    }
    register(
        registry,
        "health_check_seconds",
        "How long successful health checks took, by service.",
        health.latency.0.clone(),
    );
}

/// Announcing through BIRD.
fn register_bgp(registry: &mut Registry, bgp: &crate::api::BgpStatus) {
    if let Some(in_sync) = bgp.in_sync {
        let gauge = Gauge::<i64>::default();
        gauge.set(i64::from(in_sync));
        register(
            registry,
            "bgp_in_sync",
            "1 when BIRD took the last change of the VIPs and runs them (asked every 5 s).",
            gauge,
        );
    }
    let vips = Gauge::<i64>::default();
    vips.set(i64::try_from(bgp.vips.len()).unwrap_or(i64::MAX));
    register(
        registry,
        "bgp_vips_announced",
        "VIPs lbd announces through BIRD (those with a usable backend, and the reply anchor).",
        vips,
    );
    let sessions = gauge_family(
        registry,
        "bgp_session_established",
        "1 for each BGP session of BIRD's that is established, 0 for one that is not (disabled ones left out), as lbd's last check found them; 0 for each while lbd's last round with BIRD failed (not reached, refused, or not running the VIPs).",
    );
    let enabled = |s: &&crate::announce::BgpSession| {
        s.condition() != crate::announce::SessionCondition::Disabled
    };
    match &bgp.sessions {
        Some(found) => {
            for s in found.iter().filter(enabled) {
                sessions
                    .get_or_create(&vec![("protocol", s.protocol.clone())])
                    .set(i64::from(s.established()));
            }
        }
        // Not known now (BIRD not reached, or not running the VIPs): an alert on 0 fires.
        None => {
            for protocol in &bgp.sessions_last_known {
                sessions
                    .get_or_create(&vec![("protocol", protocol.clone())])
                    .set(0);
            }
        }
    }
    let failures = Counter::<u64>::default();
    failures.inc_by(bgp.failures);
    register(
        registry,
        "bgp_failures",
        "Rounds in which BIRD could not be told of the VIPs, or did not run them.",
        failures,
    );
}

/// The swarm follower's health.
fn register_swarm(registry: &mut Registry, swarm: &crate::api::SwarmStatus) {
    let up = Gauge::<i64>::default();
    up.set(i64::from(swarm.engine_up));
    register(
        registry,
        "swarm_engine_up",
        "1 when the last read of the Docker Engine succeeded; 0 while forwarding keeps the last swarm state.",
        up,
    );
    let reads = counter_family(
        registry,
        "swarm_engine_reads",
        "Reads of the Docker Engine by result.",
    );
    reads
        .get_or_create(&vec![("result", "ok".to_owned())])
        .inc_by(swarm.reads_ok);
    reads
        .get_or_create(&vec![("result", "failed".to_owned())])
        .inc_by(swarm.reads_failed);
    let services = Gauge::<i64>::default();
    services.set(i64::try_from(swarm.services).unwrap_or(i64::MAX));
    register(
        registry,
        "swarm_services",
        "Swarm services known from the Engine (published or not).",
        services,
    );
    let tasks = gauge_family(
        registry,
        "swarm_tasks",
        "Swarm tasks that take no new flows here, by why: stopping (known on managers, and on a \
         task's own node), unhealthy (a local task's health check has not passed).",
    );
    for (state, count) in [
        ("stopping", swarm.tasks_stopping),
        ("unhealthy", swarm.tasks_unhealthy),
    ] {
        tasks
            .get_or_create(&vec![("state", state.to_owned())])
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
    let notices = counter_family(
        registry,
        "swarm_stop_notices",
        "Stop notices (datagrams naming tasks being stopped) sent to the other nodes' lbd, \
         heard from them, and refused by lbd (not from a swarm node's lbd, or malformed).",
    );
    for (event, count) in [
        ("sent", swarm.notices.sent),
        ("heard", swarm.notices.heard),
        ("refused", swarm.notices.refused),
    ] {
        notices
            .get_or_create(&vec![("event", event.to_owned())])
            .inc_by(count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::report::{BackendReport, BackendStates, Occupancy, ServiceReport, Totals};

    #[test]
    fn every_slot_has_a_home_and_names_are_listed() {
        let report = Report {
            generation: 3,
            global: StatSlot::ALL
                .iter()
                .map(|s| (s.label().to_owned(), 7))
                .collect(),
            services: vec![ServiceReport {
                id: 0,
                name: "web".into(),
                frontend: "80:8080/tcp".into(),
                family: "ipv4".into(),
                source: crate::source::api_state::Source::File,
                frontends: vec![],
                totals: Totals {
                    packets: 10,
                    bytes: 600,
                    new_flows: 2,
                    ..Default::default()
                },
                socket: crate::dataplane::SocketTotals {
                    connections: 3,
                    datagrams: 0,
                    no_backend: 1,
                },
                backends: vec![BackendReport {
                    id: 1,
                    target: "198.18.2.10:8080".parse().unwrap(),
                    weight: 0,
                    state: "draining".into(),
                    totals: Totals {
                        packets: 10,
                        bytes: 600,
                        new_flows: 2,
                        ..Default::default()
                    },
                }],
            }],
            backend_states: [(
                "web".to_owned(),
                BackendStates {
                    active: 0,
                    draining: 1,
                    down: 2,
                },
            )]
            .into(),
            conntrack: Occupancy {
                entries: 4,
                capacity: 65536,
                counted_s_ago: Some(1),
                syn_filter_keys: Some(3),
            },
            flood: crate::api::report::Flood {
                active: true,
                unconfirmed_flows_per_s: 9000.0,
                threshold_per_s: 8192.0,
            },
        };
        let changes = [((Trigger::Api, Outcome::Rejected), 2)].into();
        let swarm = crate::api::SwarmStatus {
            docker_host: "unix:///var/run/docker.sock".into(),
            engine_up: false,
            reads_ok: 5,
            reads_failed: 2,
            last_error: Some("down".into()),
            last_ok_age_s: Some(3),
            node_addr: None,
            mesh_addr: None,
            services: 4,
            stopping_known: false,
            last_read: None,
            tasks_stopping: 3,
            tasks_unhealthy: 0,
            notices: crate::source::swarm::notices::NoticeStatus {
                sent: 7,
                ..Default::default()
            },
            container_starts: 0,
        };
        let attachments = [crate::api::AttachmentStatus {
            interface: "eth0".into(),
            ifindex: 7,
            mode: "generic".into(),
            adopted: false,
            state: "missing".into(),
            reattached: 2,
        }];
        let latency = CheckLatency::default();
        latency.observe("web", std::time::Duration::from_millis(3));
        // A service no longer checked leaves no series behind.
        latency.observe("gone", std::time::Duration::from_millis(3));
        latency.forget("gone");
        let states = [
            ("198.18.2.10:8080", true, 2),
            ("198.18.2.11:8080", false, 1),
        ]
        .map(|(addr, served, transitions)| CheckedBackend {
            service: "web".into(),
            addr: addr.parse().unwrap(),
            served,
            transitions,
        });
        let text = render(
            &report,
            &changes,
            &[(401, 1)].into(),
            Some(&swarm),
            Some(&crate::api::BgpStatus {
                include: "/etc/bird/meshlb-vips.conf".into(),
                socket: "/run/bird/bird.ctl".into(),
                vips: vec!["198.18.100.1".parse().unwrap()],
                in_sync: Some(false),
                sessions: Some(
                    [("router_a", "up"), ("router_b", "start"), ("old", "down")]
                        .map(|(protocol, state)| crate::announce::BgpSession {
                            protocol: protocol.into(),
                            state: state.into(),
                            info: String::new(),
                        })
                        .into(),
                ),
                sessions_last_known: vec![],
                failures: 2,
                last_error: Some("down".into()),
                last_ok_age_s: None,
                record_error: None,
            }),
            &attachments,
            &HealthMetrics {
                states: &states,
                latency: &latency,
            },
        );
        for line in [
            "meshlb_backend_up{service=\"web\",backend=\"198.18.2.10:8080\"} 1",
            "meshlb_backend_up{service=\"web\",backend=\"198.18.2.11:8080\"} 0",
            "meshlb_backend_health_transitions_total{service=\"web\",backend=\"198.18.2.10:8080\"} 2",
            "meshlb_health_check_seconds_count{service=\"web\"} 1",
            "meshlb_health_check_seconds_bucket{le=\"0.004\",service=\"web\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
            assert!(!text.contains("service=\"gone\""), "{text}");
        }
        assert!(text.contains("meshlb_swarm_engine_up 0"), "{text}");
        for line in [
            "meshlb_bgp_in_sync 0",
            "meshlb_bgp_vips_announced 1",
            "meshlb_bgp_failures_total 2",
            "meshlb_bgp_session_established{protocol=\"router_a\"} 1",
            "meshlb_bgp_session_established{protocol=\"router_b\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        assert!(
            !text.contains("protocol=\"old\""),
            "disabled: left out\n{text}"
        );
        assert!(
            text.contains("meshlb_swarm_tasks{state=\"stopping\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("meshlb_swarm_stop_notices_total{event=\"sent\"} 7"),
            "{text}"
        );
        assert!(text.contains("meshlb_flood 1"), "{text}");
        assert!(
            text.contains("meshlb_unconfirmed_flows_per_second 9000.0"),
            "{text}"
        );
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with("# HELP") && l.ends_with("..")),
            "HELP ends with one period: {text}"
        );
        assert!(
            text.contains("meshlb_interface_attached{interface=\"eth0\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("meshlb_interface_reattached_total{interface=\"eth0\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("meshlb_swarm_engine_reads_total{result=\"failed\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("meshlb_service_info{service=\"web\",source=\"file\"} 1"),
            "{text}"
        );
        for name in METRIC_NAMES {
            assert!(
                text.contains(&format!("\n{name}")),
                "{name} missing:\n{text}"
            );
        }
        assert!(
            text.contains("meshlb_dropped_packets_total{reason=\"no_backend\"} 7"),
            "{text}"
        );
        assert!(
            text.contains(
                "meshlb_service_socket_connections_total{service=\"web\",frontend=\"80:8080/tcp\",family=\"ipv4\"} 3"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "meshlb_service_socket_no_backend_total{service=\"web\",frontend=\"80:8080/tcp\",family=\"ipv4\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("meshlb_forwarded_packets_total{path=\"xdp_redirect\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("meshlb_passed_packets_total{reason=\"not_frontend\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("meshlb_tc_packets_total{outcome=\"redirect_neigh\"} 7"),
            "{text}"
        );
        assert!(text.contains(
            "meshlb_backend_new_flows_total{service=\"web\",frontend=\"80:8080/tcp\",family=\"ipv4\",backend=\"198.18.2.10:8080\"} 2"
        ), "{text}");
        assert!(
            text.contains("meshlb_backends{service=\"web\",state=\"draining\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("meshlb_backends{service=\"web\",state=\"active\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("meshlb_backends{service=\"web\",state=\"down\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("meshlb_reloads_total{source=\"api\",result=\"rejected\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("meshlb_api_requests_total{code=\"401\"} 1"),
            "{text}"
        );
        assert!(text.contains("meshlb_conntrack_capacity 65536"), "{text}");
        assert!(text.contains("meshlb_syn_filter_keys 3"), "{text}");
        // Every family served is listed, so the dashboard check covers them all.
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let name = line.split_whitespace().nth(2).unwrap();
            assert!(
                METRIC_NAMES
                    .iter()
                    .any(|n| n.trim_end_matches("_total") == name),
                "{name} is served but not in METRIC_NAMES"
            );
        }
    }

    /// The families `register` adds, as scraped.
    fn scraped(register: impl FnOnce(&mut Registry)) -> String {
        let mut registry = Registry::with_prefix("meshlb");
        register(&mut registry);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        text
    }

    /// `meshlb_backend_up` says what the plan serves: with every backend of a service down
    /// and `when_all_down: keep`, all of them.
    #[test]
    fn backend_up_is_1_for_every_backend_served() {
        let file = ServiceFile::parse(
            r#"
services:
  web:
    ports: ["80:8080"]
    backends: ["198.18.2.10", "198.18.2.11"]
    health: { tcp: {}, rise: 1, fall: 1 }
  keep:
    vip: 198.18.100.2
    ports: ["80:8080"]
    backends: ["198.18.2.20", "198.18.2.21"]
    health: { tcp: {}, rise: 1, fall: 1, when_all_down: keep }
"#,
            std::path::Path::new("services.yaml"),
        )
        .unwrap();
        let mut book = HealthBook::default();
        book.sync(&file, std::time::SystemTime::now());
        let fail = |book: &mut HealthBook, service: &str, addr: &str| {
            let key = crate::source::health::TargetKey {
                service: service.into(),
                addr: addr.parse().unwrap(),
            };
            book.record(&key, Err("refused".into()), std::time::SystemTime::now());
        };
        for (service, addr) in [
            ("web", "198.18.2.11:8080"),
            ("keep", "198.18.2.20:8080"),
            ("keep", "198.18.2.21:8080"),
        ] {
            fail(&mut book, service, addr);
        }
        let states = checked_backends(&book, &file);
        let latency = CheckLatency::default();
        let text = scraped(|r| {
            register_health(
                r,
                &HealthMetrics {
                    states: &states,
                    latency: &latency,
                },
            );
        });
        for (service, backend, up) in [
            ("web", "198.18.2.10:8080", 1),
            ("web", "198.18.2.11:8080", 0),
            ("keep", "198.18.2.20:8080", 1),
            ("keep", "198.18.2.21:8080", 1),
        ] {
            let line =
                format!("meshlb_backend_up{{service=\"{service}\",backend=\"{backend}\"}} {up}");
            assert!(text.contains(&line), "{line} missing:\n{text}");
        }
    }

    /// While BIRD does not answer, the sessions it had read 0, so an alert on 0 fires; before
    /// any check answered none is known.
    #[test]
    fn bgp_sessions_read_0_while_bird_does_not_answer() {
        let mut bgp = crate::api::BgpStatus {
            include: "/etc/bird/meshlb-vips.conf".into(),
            socket: "/run/bird/bird.ctl".into(),
            vips: vec![],
            in_sync: Some(false),
            sessions: None,
            sessions_last_known: vec!["router_a".into(), "router_b".into()],
            failures: 1,
            last_error: Some("BIRD's control socket does not answer".into()),
            last_ok_age_s: Some(6),
            record_error: None,
        };
        let text = scraped(|r| register_bgp(r, &bgp));
        for protocol in ["router_a", "router_b"] {
            let line = format!("meshlb_bgp_session_established{{protocol=\"{protocol}\"}} 0");
            assert!(text.contains(&line), "{line} missing:\n{text}");
        }
        bgp.sessions_last_known.clear();
        let text = scraped(|r| register_bgp(r, &bgp));
        assert!(!text.contains("protocol="), "{text}");
    }

    #[test]
    fn the_dashboard_uses_only_served_metrics() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/grafana/meshlb-dashboard.json"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(
            dashboard["panels"]
                .as_array()
                .is_some_and(|p| !p.is_empty())
        );
        let mut used = 0;
        for (i, _) in text.match_indices("meshlb_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name.starts_with("meshlb_") && name.len() > "meshlb_".len() {
                used += 1;
                assert!(
                    METRIC_NAMES.contains(&name.as_str()),
                    "the dashboard uses {name}, which lbd does not serve"
                );
            }
        }
        assert!(used > 10, "the dashboard queries meshlb metrics");
    }
}
