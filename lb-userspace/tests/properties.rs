//! A property test of the loaded kernel program: thousands of random and mutated packets
//! through BPF_PROG_TEST_RUN, checked against what must hold whatever the packet is:
//!
//! - the program never aborts: every run ends in XDP_DROP, XDP_PASS, XDP_TX or XDP_REDIRECT;
//! - the length never changes (the output is the input, plus the 8-byte metadata area in front
//!   of a packet handed to the TC program);
//! - a packet the program does not translate comes out byte for byte as it went in;
//! - a packet it translates and sends on changes only where its translation says (one side's
//!   address and port, or for ICMP the addresses, type, and the quoted packet's side), the
//!   checksums and (XDP_REDIRECT) the MACs, and its checksums are right: valid in, valid out,
//!   verified from scratch (`testkit::packet::parse_ipv4` for TCP/UDP, `parse_ipv6` for IPv6
//!   translations, which the same checks cover: what may change, the one's complement sums of
//!   the segment with its IPv6 pseudo-header, and the length). A packet that came in
//!   with a wrong checksum must keep exactly its error: the program does not verify checksums
//!   (the receiver drops the packet as it would have dropped the original), but it must never
//!   make a corrupt packet look valid, nor a valid one corrupt;
//! - the counters add up, for every run and over the batch: `rx` counts every run, every run
//!   ends in exactly one outcome counter, which matches the action, and the translation
//!   counters (`nat_forward + nat_reply`, plus the ICMP ones) count exactly the runs whose
//!   IP/L4 bytes changed.
//!
//! Well-formed packets also get their expected fate: translated to one of their service's
//! backends (under full NAT from the node's address), dropped for want of backends, passed
//! as unrelated, replies and ICMP errors on flows the program opened translated back, echo
//! requests to a VIP answered. Some of them carry 802.1Q/QinQ tags, which change nothing.
//!
//! The cases: 16,000 random ones (well-formed packets of each kind, mutations of them, random
//! bytes), then one client port reused for ten connections per service, then every prefix
//! (0 to all bytes) of a few well-formed frames. Frames under 14 bytes never reach the
//! program: BPF_PROG_TEST_RUN refuses them (EINVAL), which is checked, and they are not runs.
//! A violation does not stop the batch: each kind is counted and its first case printed with
//! the bytes in and out, and the test fails at the end. Four checks (IPv4-mapped IPv6, total
//! length, writes past the packet, full-NAT port reuse) caught real bugs when first written;
//! they stay as regression checks.
//!
//! The packets come from a small seeded PRNG: a fixed seed by default (CI is repeatable),
//! `MESHLB_PROPTEST_SEED=random` for a new one each run. The seed is printed; rerun with
//! `MESHLB_PROPTEST_SEED=<seed>` to get the same packets again.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    path::Path,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use aya::programs::ProgramError;
use lb_common::{
    limits::{FULLNAT_PORT_MAX, FULLNAT_PORT_MIN},
    maps::{XDP_META_MAGIC, proto, service_flags},
    stats::{SlotKind, StatSlot},
};
use lb_testkit::{
    Netns, e2e_enabled,
    packet::{
        CLIENT_MAC, Ipv4Frame, Ipv6Frame, L4, NODE_MAC, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST,
        TCP_SYN, checksum, parse_ipv4, parse_ipv6,
    },
    progtest::{self, ProgNode, ProgOutcome, delta, read_mac, test_run},
    rng::SplitMix64,
};
use lb_userspace::{
    dataplane::{self, Dataplane, LoadOptions, StatsSnapshot},
    plan::{self, DesiredState},
    source::file::ServiceFile,
};

const XDP_ABORTED: u32 = 0;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

/// Random cases: the first half with the backend side handed to TC, the second half with
/// XDP_REDIRECT allowed there. The truncation sweeps come on top.
const RANDOM_CASES: usize = 16_000;
/// A case opens at most one flow (two entries), so the table never fills: no insert fails and
/// the LRU evicts nothing.
const CONNTRACK_ENTRIES: u32 = 65_536;
/// Flows remembered, for replies, ICMP errors and mid-flow packets.
const MAX_FLOWS: usize = 4_096;

/// The counters of a translation: each run that rewrites a packet counts exactly one. That is
/// `nat_forward + nat_reply`, plus the ICMP translations, which rewrite packets too: an echo
/// request to a VIP answered in place, an error about a tracked flow translated.
const TRANSLATIONS: [StatSlot; 5] = [
    StatSlot::NatForward,
    StatSlot::NatReply,
    StatSlot::IcmpEchoReply,
    StatSlot::IcmpErrorToBackend,
    StatSlot::IcmpErrorToClient,
];

const NODE_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
const NODE_BACKEND_SIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 2);
/// Routers that send ICMP errors, one on each side.
const CLIENT_SIDE_ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 99);
const BACKEND_SIDE_ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 99);
const BACKENDS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(198, 18, 2, 10),
    Ipv4Addr::new(198, 18, 2, 11),
    Ipv4Addr::new(198, 18, 2, 12),
];

/// IPv6: the client (with a neighbour entry) and the node's address toward the backends (full
/// NAT's source).
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 2);
const NODE6_BACKEND_SIDE: Ipv6Addr = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 1);

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_ECHO: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;

/// Both schedulers, a VIP with TCP and UDP ports, ports published on the node addresses, a
/// drained backend, client-address affinity, a service with no backends (drops), and one
/// with full NAT (the source becomes the node's, from a port of its own); and IPv6 VIPs with
/// NAT and full NAT.
/// Every backend endpoint (address, port, protocol) belongs to one kernel service only.
const SERVICES: &str = r#"
services:
  web:
    vip: 198.18.100.1
    ports: ["80:8080/tcp", "53:5353/udp"]
    backends: ["198.18.2.10", "198.18.2.11", "198.18.2.12"]
  api:
    ports: ["8000:9000/tcp", "8053:9053/udp"]
    scheduler: round-robin
    backends:
      - "198.18.2.10"
      - { address: "198.18.2.11", weight: 2 }
      - { address: "198.18.2.12", weight: 0 }
  sticky:
    vip: 198.18.100.3
    ports: ["443:8443/tcp"]
    affinity: client-ip
    backends: ["198.18.2.10", "198.18.2.12"]
  empty:
    vip: 198.18.100.2
    ports: ["80/tcp", "53/udp"]
    backends: []
  full:
    vip: 198.18.100.4
    ports: ["80:8081/tcp", "53:5354/udp"]
    forwarding: fullnat
    backends: ["198.18.2.10", "198.18.2.11"]
  web6:
    vip: "fd00:100::1"
    ports: ["80:8080/tcp", "53:5353/udp"]
    backends: ["fd00:2::a", "fd00:2::b"]
  full6:
    vip: "fd00:100::4"
    ports: ["80:8081/tcp", "53:5354/udp"]
    forwarding: fullnat
    backends: ["fd00:2::a", "fd00:2::b"]
"#;

#[test]
fn random_and_mutated_packets_keep_the_invariants() {
    if !e2e_enabled() {
        return;
    }
    let seed = seed();
    println!("seed {seed:#x}: rerun with MESHLB_PROPTEST_SEED={seed:#x}");
    let ns = node();
    let backend_if_mac = read_mac(&ns, "lbb").expect("MAC of lbb");
    ns.run(move || {
        let file = ServiceFile::parse(SERVICES, Path::new("properties.yaml")).expect("services");
        let node_addrs = [IpAddr::V4(NODE_CLIENT_SIDE), IpAddr::V4(NODE_BACKEND_SIDE)];
        let desired = plan::plan(&file, &node_addrs).expect("plan");
        let mut dp = Dataplane::load(LoadOptions {
            conntrack_entries: CONNTRACK_ENTRIES,
            ..LoadOptions::default()
        })
        .expect("load");
        dp.apply(None, &desired).expect("apply");
        let ifaces = Interfaces {
            client: dataplane::ifindex("lbc").unwrap(),
            backend: dataplane::ifindex("lbb").unwrap(),
            lo: dataplane::ifindex("lo").unwrap(),
            backend_mac: backend_if_mac,
        };
        let model = Model::new(&desired);
        let mut generator = Generator {
            rng: Rng(SplitMix64(seed)),
            model: &model,
            ifaces,
            flows: Vec::new(),
            flows6: Vec::new(),
        };
        let mut runner = Runner::new(dp, &model, ifaces);
        let first = runner.last.clone();
        let started = Instant::now();

        for i in 0..RANDOM_CASES {
            if i == RANDOM_CASES / 2 {
                runner.dp.allow_xdp_redirect(ifaces.backend).unwrap();
            }
            let case = generator.case();
            let new_before = runner.last.get(StatSlot::NewFlow);
            let opened = runner.run(&case);
            if let Some(flow6) = runner.opened6.take() {
                generator.remember6(flow6);
            } else if let Some(flow) = opened {
                generator.remember(flow);
            } else if runner.last.get(StatSlot::NewFlow) > new_before {
                // The packet re-opened a tracked flow (a mutated packet can be a valid SYN):
                // the program removed the old flow's reply entry and tracks a new flow this
                // test did not learn. The old one is gone.
                generator.forget(&case.frame);
                generator.forget6(&case.frame);
            }
        }
        let random_runs = runner.runs;
        // Clients reuse ports: a SYN after a FIN opens a new flow every time ("clients that
        // reuse ports never stall"), whatever the service.
        for case in generator.port_reuse() {
            if let Some(flow) = runner.run(&case) {
                generator.remember(flow);
            }
        }
        let reuse_runs = runner.runs - random_runs;
        for base in generator.sweep_bases() {
            for len in 0..=base.frame.len() {
                let case = Case {
                    frame: base.frame[..len].to_vec(),
                    class: if len == base.frame.len() {
                        base.class
                    } else {
                        Class::Mutated
                    },
                    what: format!("{}, truncated to {len} bytes", base.what),
                    ..base.clone()
                };
                runner.run(&case);
            }
        }
        let elapsed = started.elapsed();

        let last = runner.last.clone();
        let total = |kind: SlotKind| -> u64 {
            StatSlot::ALL
                .iter()
                .filter(|s| s.kind() == kind)
                .map(|s| delta(&first, &last, *s))
                .sum()
        };
        println!(
            "{} runs ({random_runs} random, {reuse_runs} reusing client ports, {} in truncation sweeps) in {elapsed:.1?}; {} frames under 14 bytes refused by BPF_PROG_TEST_RUN (never reach the program); {} rewritten",
            runner.runs,
            runner.runs - random_runs - reuse_runs,
            runner.refused,
            runner.changed,
        );
        let line: Vec<String> = StatSlot::ALL
            .iter()
            .map(|s| format!("{}={}", s.label(), delta(&first, &last, *s)))
            .collect();
        println!("counters over the batch: {}", line.join(" "));
        println!(
            "IPv6 translations checked: {} forward, {} reply",
            runner.checked6[0], runner.checked6[1]
        );
        runner.findings.print();

        // Counters over the whole batch.
        let rx = delta(&first, &last, StatSlot::Rx);
        assert_eq!(rx, runner.runs, "rx must count every run (seed {seed:#x})");
        assert_eq!(
            rx,
            total(SlotKind::Outcome),
            "every run ends in exactly one outcome counter (seed {seed:#x})"
        );
        let translations: u64 = TRANSLATIONS.iter().map(|s| delta(&first, &last, *s)).sum();
        assert_eq!(
            translations,
            runner.changed,
            "nat_forward + nat_reply (+ the ICMP translations) must count the runs whose IP/L4 bytes changed (seed {seed:#x})"
        );
        assert_eq!(total(SlotKind::Tc), 0, "only the XDP program ran");
        // The generators must reach every path worth reaching, or the properties prove little.
        for slot in [
            StatSlot::PassNotFrontend,
            StatSlot::PassMalformed,
            StatSlot::PassFragment,
            StatSlot::PassIpOptions,
            StatSlot::NatForward,
            StatSlot::NatReply,
            StatSlot::IcmpEchoReply,
            StatSlot::IcmpErrorToBackend,
            StatSlot::IcmpErrorToClient,
            StatSlot::NewFlow,
            StatSlot::TxXdpRedirect,
            StatSlot::TxViaTc,
            StatSlot::TxLocal,
            StatSlot::DropNoBackend,
            StatSlot::DropFibFailed,
            StatSlot::DropNoFlow,
        ] {
            assert!(
                delta(&first, &last, slot) > 0,
                "generator coverage: no run ended in or went through {} (seed {seed:#x})",
                slot.label()
            );
        }
        assert!(
            runner.checked6[0] > 0 && runner.checked6[1] > 0,
            "generator coverage: IPv6 translations checked {:?} (forward, reply) (seed {seed:#x})",
            runner.checked6
        );
        runner.findings.assert_none(seed);
    })
    .expect("run in netns");
}

// ---------------------------------------------------------------------------------------------
// The node: one namespace, the program loaded as lbd loads it

/// The shared program-test node (client side, backend side, neighbours resolved), plus
/// routes the FIB refuses, so replies to clients behind them are dropped and counted.
fn node() -> Netns {
    ProgNode::new(
        "prop",
        &[
            "route add blackhole 198.18.9.0/24".to_owned(),
            "route add unreachable 198.18.8.0/24".to_owned(),
        ],
    )
    .expect("node namespace")
    .ns
}

#[derive(Clone, Copy)]
struct Interfaces {
    client: u32,
    backend: u32,
    lo: u32,
    backend_mac: [u8; 6],
}

impl Interfaces {
    fn name(&self, ifindex: u32) -> &'static str {
        match ifindex {
            i if i == self.client => "lbc (client side)",
            i if i == self.backend => "lbb (backend side)",
            i if i == self.lo => "lo",
            _ => "?",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What the maps hold, as the generators and the checks need it

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Endpoint {
    addr: SocketAddrV4,
    proto: u8,
}

struct ServiceModel {
    round_robin: bool,
    /// Full NAT: the source is translated too.
    fullnat: bool,
    /// Has a backend with a non-zero weight.
    usable: bool,
    frontends: Vec<SocketAddrV4>,
    backends: Vec<SocketAddrV4>,
}

/// An IPv6 service: its frontends and backends.
struct ServiceModel6 {
    fullnat: bool,
    frontends: Vec<SocketAddrV6>,
    backends: Vec<SocketAddrV6>,
}

/// The IPv6 part of what the maps hold (VIP services only).
#[derive(Default)]
struct Model6 {
    /// TCP and UDP frontends: (VIP and port, protocol, service).
    frontends: Vec<(SocketAddrV6, u8, u32)>,
    services: HashMap<u32, ServiceModel6>,
    backend_endpoints: HashSet<(SocketAddrV6, u8)>,
}

impl Model6 {
    fn service_of_frontend(&self, addr: SocketAddrV6, protocol: u8) -> Option<u32> {
        self.frontends
            .iter()
            .find(|(a, p, _)| *a == addr && *p == protocol)
            .map(|f| f.2)
    }

    fn service_of_backend(&self, addr: SocketAddrV6) -> Option<u32> {
        self.services
            .iter()
            .find(|(_, s)| s.backends.contains(&addr))
            .map(|(id, _)| *id)
    }
}

struct Model {
    v6: Model6,
    /// TCP and UDP frontends.
    frontends: Vec<(Endpoint, u32)>,
    service_of: HashMap<Endpoint, u32>,
    services: HashMap<u32, ServiceModel>,
    backend_endpoints: HashSet<Endpoint>,
    /// The service of each backend endpoint (each belongs to one).
    service_of_backend: HashMap<Endpoint, u32>,
    /// VIPs that answer echo requests.
    icmp_vips: Vec<Ipv4Addr>,
}

fn v4(addr: &lb_common::Addr) -> Ipv4Addr {
    match std::net::IpAddr::from(*addr) {
        IpAddr::V4(ip) => ip,
        other => panic!("an IPv4 address expected, got {other}"),
    }
}

impl Model {
    fn new(desired: &DesiredState) -> Self {
        let mut model = Self {
            v6: Model6::default(),
            frontends: Vec::new(),
            service_of: HashMap::new(),
            services: HashMap::new(),
            backend_endpoints: HashSet::new(),
            service_of_backend: HashMap::new(),
            icmp_vips: Vec::new(),
        };
        for (key, svc) in &desired.frontends {
            if let IpAddr::V6(vip) = std::net::IpAddr::from(key.addr) {
                if key.proto != proto::ICMPV6 {
                    let addr = SocketAddrV6::new(vip, u16::from_be(key.port_be), 0, 0);
                    model.v6.frontends.push((addr, key.proto, svc.id));
                    model
                        .v6
                        .services
                        .entry(svc.id)
                        .or_insert_with(|| ServiceModel6 {
                            fullnat: svc.flags & service_flags::FULLNAT != 0,
                            frontends: Vec::new(),
                            backends: Vec::new(),
                        })
                        .frontends
                        .push(addr);
                }
                continue;
            }
            if key.proto == proto::ICMP {
                model.icmp_vips.push(v4(&key.addr));
                continue;
            }
            let ep = Endpoint {
                addr: SocketAddrV4::new(v4(&key.addr), u16::from_be(key.port_be)),
                proto: key.proto,
            };
            model.frontends.push((ep, svc.id));
            model.service_of.insert(ep, svc.id);
            model
                .services
                .entry(svc.id)
                .or_insert_with(|| ServiceModel {
                    round_robin: svc.flags & service_flags::ROUND_ROBIN != 0,
                    fullnat: svc.flags & service_flags::FULLNAT != 0,
                    usable: false,
                    frontends: Vec::new(),
                    backends: Vec::new(),
                })
                .frontends
                .push(ep.addr);
        }
        for planned in &desired.services {
            if let Some(s6) = model.v6.services.get_mut(&planned.id) {
                for b in &planned.backends {
                    let SocketAddr::V6(a) = b.target else {
                        panic!("an IPv6 service with an IPv4 backend");
                    };
                    s6.backends.push(a);
                    model
                        .v6
                        .backend_endpoints
                        .insert((a, planned.mapping.protocol.number()));
                }
                continue;
            }
            let s = model
                .services
                .get_mut(&planned.id)
                .expect("planned service");
            s.usable = planned.backends.iter().any(|b| b.weight > 0);
            for b in &planned.backends {
                if let SocketAddr::V4(a) = b.target {
                    let ep = Endpoint {
                        addr: a,
                        proto: planned.mapping.protocol.number(),
                    };
                    let previous = model.service_of_backend.insert(ep, planned.id);
                    assert!(previous.is_none(), "{a} serves two services");
                }
            }
            s.backends = planned
                .backends
                .iter()
                .map(|b| match b.target {
                    SocketAddr::V4(a) => a,
                    other => panic!("IPv4 backends only, got {other}"),
                })
                .collect();
        }
        for key in desired.endpoints.keys() {
            if !key.addr.is_v4() {
                continue;
            }
            model.backend_endpoints.insert(Endpoint {
                addr: SocketAddrV4::new(v4(&key.addr), u16::from_be(key.port_be)),
                proto: key.proto,
            });
        }
        assert!(model.services.values().any(|s| s.round_robin && s.usable));
        assert!(model.services.values().any(|s| !s.round_robin && s.usable));
        assert!(model.services.values().any(|s| !s.usable));
        assert!(model.services.values().any(|s| s.fullnat && s.usable));
        assert!(model.icmp_vips.contains(&VIP));
        assert!(model.v6.services.values().any(|s| s.fullnat));
        assert!(model.v6.services.values().any(|s| !s.fullnat));
        model
    }

    fn is_endpoint(&self, ep: Endpoint) -> bool {
        self.service_of.contains_key(&ep) || self.backend_endpoints.contains(&ep)
    }

    /// Whether the service a frontend (or else a backend endpoint) belongs to uses full NAT.
    fn fullnat(&self, ep: Endpoint) -> bool {
        let service = self
            .service_of
            .get(&ep)
            .or_else(|| self.service_of_backend.get(&ep));
        service.is_some_and(|id| self.services[id].fullnat)
    }
}

// ---------------------------------------------------------------------------------------------
// Generators

/// The shared SplitMix64, with the draws the generators need.
struct Rng(SplitMix64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is irrelevant here).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn u8(&mut self) -> u8 {
        self.next() as u8
    }

    fn u16(&mut self) -> u16 {
        self.next() as u16
    }

    fn u32(&mut self) -> u32 {
        self.next() as u32
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u8()).collect()
    }
}

fn seed() -> u64 {
    match std::env::var("MESHLB_PROPTEST_SEED") {
        Ok(text) if text.trim() == "random" => {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64;
            nanos ^ (u64::from(std::process::id()) << 40)
        }
        Ok(text) => {
            let t = text.trim();
            let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => t.parse(),
            };
            parsed.unwrap_or_else(|_| {
                panic!("MESHLB_PROPTEST_SEED={text:?} is not a u64 (decimal or 0x-hex)")
            })
        }
        // A fixed default keeps CI repeatable; `MESHLB_PROPTEST_SEED=random` explores.
        Err(_) => DEFAULT_SEED,
    }
}

const DEFAULT_SEED: u64 = 0x6d65_7368_6c62;

/// What a case is expected to do, beyond the invariants every run must keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// Well-formed, to a frontend whose service has a usable backend: translated to one of the
    /// service's backends (or, round-robin and mid-flow without a flow, dropped).
    ToFrontend { service: u32 },
    /// Well-formed, to a frontend whose service has no usable backend: dropped.
    ToEmptyFrontend,
    /// Well-formed reply of a backend on a flow the program opened: translated back, to the
    /// client.
    Reply { service: u32, client: SocketAddrV4 },
    /// An echo request to a VIP: answered.
    EchoToVip,
    /// An ICMP error about a packet of a tracked flow: translated, toward the backend (the
    /// quote is a reply the client got) or the client (the quote is what a backend got).
    IcmpError {
        service: u32,
        to_backend: bool,
        client: SocketAddrV4,
    },
    /// Well-formed, neither to a frontend nor from a backend endpoint, nor an ICMP message
    /// the program answers or translates: passed untouched.
    Unrelated,
    /// IPv6 with IPv4-mapped addresses (`::ffff:a.b.c.d`) of a frontend or a tracked flow:
    /// no IPv6 service has such an address, so passed untouched.
    V4Mapped,
    /// IPv6, well-formed, to a VIP whose service has backends: translated to one of them.
    ToFrontend6 { service: u32 },
    /// IPv6, a backend's reply on a flow the program opened: translated back to the client.
    Reply6 { service: u32, client: SocketAddrV6 },
    /// Mutated, truncated or random: only the invariants.
    Mutated,
}

#[derive(Clone)]
struct Case {
    frame: Vec<u8>,
    ingress: u32,
    class: Class,
    what: String,
}

/// A flow the program opened, as the translated packet showed it.
#[derive(Clone, Copy, Debug)]
struct Flow {
    client: SocketAddrV4,
    /// The client as the backend sees it: the client itself, or under full NAT the node
    /// address and port that replace it.
    seen_as: SocketAddrV4,
    frontend: SocketAddrV4,
    backend: SocketAddrV4,
    proto: u8,
    service: u32,
}

/// An IPv6 flow the program opened (see `Flow`).
#[derive(Clone, Copy, Debug)]
struct Flow6 {
    client: SocketAddrV6,
    seen_as: SocketAddrV6,
    frontend: SocketAddrV6,
    backend: SocketAddrV6,
    proto: u8,
    service: u32,
}

struct Generator<'a> {
    rng: Rng,
    model: &'a Model,
    ifaces: Interfaces,
    flows: Vec<Flow>,
    flows6: Vec<Flow6>,
}

fn proto_name(proto: u8) -> &'static str {
    match proto {
        proto::TCP => "tcp",
        proto::UDP => "udp",
        proto::ICMP => "icmp",
        _ => "ip",
    }
}

fn backend_mac(ip: &Ipv4Addr) -> [u8; 6] {
    BACKENDS
        .iter()
        .position(|b| b == ip)
        .map_or(progtest::backend_mac(0), progtest::backend_mac)
}

impl Generator<'_> {
    fn case(&mut self) -> Case {
        let mut case = match self.rng.below(100) {
            0..=19 => self.for_frontend(),
            20..=24 => self.ipv6(),
            25..=36 => self.reply(),
            37..=39 => self.echo_to_vip(),
            40..=44 => self.icmp_error(),
            45..=52 => self.unrelated(),
            53..=54 => self.v4_mapped(),
            55..=59 => self.random_bytes(),
            _ => return self.mutated(),
        };
        if self.rng.chance(10) {
            let tags = self.vlan_tags(&mut case.frame);
            case.what.push_str(&tags);
        }
        case
    }

    /// Forgets the remembered flow whose client and frontend `frame` (IPv4, maybe tagged)
    /// carries.
    fn forget(&mut self, frame: &[u8]) {
        let Some(l3) = ipv4_offset(frame) else {
            return;
        };
        let (client, frontend) = endpoints(&frame[l3..]);
        self.flows.retain(|f| {
            !(f.client == client && f.frontend == frontend && f.proto == frame[l3 + 9])
        });
    }

    fn remember(&mut self, flow: Flow) {
        // A flow re-opened on the same tuple (SYN after FIN, or after expiry) replaces the
        // old one: the program removes the old reply entry, so the old backend's late
        // packets are no longer translated.
        if let Some(old) = self.flows.iter_mut().find(|f| {
            f.client == flow.client && f.frontend == flow.frontend && f.proto == flow.proto
        }) {
            *old = flow;
            return;
        }
        if self.flows.len() < MAX_FLOWS {
            self.flows.push(flow);
        } else {
            let i = self.rng.below(MAX_FLOWS);
            self.flows[i] = flow;
        }
    }

    /// Mostly the client that has a neighbour entry, sometimes ones whose replies the FIB
    /// sends to the node itself (node addresses, no route) or refuses (blackhole, unreachable).
    fn client(&mut self) -> SocketAddrV4 {
        let ip = match self.rng.below(20) {
            0 => self.rng.pick(&[NODE_CLIENT_SIDE, NODE_BACKEND_SIDE]),
            1 => Ipv4Addr::new(198, 18, 9, self.rng.u8()),
            2 => Ipv4Addr::new(198, 18, 8, self.rng.u8()),
            3 => Ipv4Addr::new(198, 19, self.rng.u8(), self.rng.u8()),
            4..=9 => Ipv4Addr::new(198, 18, 1, 3 + self.rng.below(6) as u8),
            _ => CLIENT,
        };
        let port = if self.rng.chance(80) {
            40_000 + self.rng.below(64) as u16
        } else {
            self.rng.u16()
        };
        SocketAddrV4::new(ip, port)
    }

    fn tcp_flags(&mut self) -> u8 {
        let random = self.rng.u8();
        self.rng.pick(&[
            TCP_SYN,
            TCP_SYN,
            TCP_ACK,
            TCP_ACK | TCP_PSH,
            TCP_SYN | TCP_ACK,
            TCP_FIN | TCP_ACK,
            TCP_RST,
            TCP_RST | TCP_ACK,
            0,
            random,
        ])
    }

    /// A well-formed TCP or UDP packet, from the IPv4 header on (for ICMP quotes).
    fn packet(&mut self, src: SocketAddrV4, dst: SocketAddrV4, protocol: u8) -> Vec<u8> {
        let mut f = self.frame(src, dst, protocol, (CLIENT_MAC, NODE_MAC));
        let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
        f.truncate(14 + total);
        f.split_off(14)
    }

    /// A well-formed frame with random flags, payload, TTL and id; sometimes UDP without a
    /// checksum, sometimes with Ethernet padding (a total length shorter than the frame, as on
    /// the wire). `macs` is (source, destination).
    fn frame(
        &mut self,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        protocol: u8,
        macs: ([u8; 6], [u8; 6]),
    ) -> Vec<u8> {
        let l4 = if protocol == proto::TCP {
            L4::Tcp {
                flags: self.tcp_flags(),
                seq: self.rng.u32(),
                ack: self.rng.u32(),
            }
        } else if self.rng.chance(20) {
            L4::UdpNoChecksum
        } else {
            L4::Udp
        };
        let payload_len = self.rng.below(65);
        let mut f = Ipv4Frame {
            eth_src: macs.0,
            eth_dst: macs.1,
            src,
            dst,
            l4,
            ttl: 1 + self.rng.below(255) as u8,
            ip_id: self.rng.u16(),
            payload: self.rng.bytes(payload_len),
        }
        .build();
        if f.len() < 60 && self.rng.chance(15) {
            f.resize(60, 0);
        }
        f
    }

    fn any_ingress(&mut self) -> u32 {
        match self.rng.below(10) {
            0 => self.ifaces.lo,
            1..=3 => self.ifaces.backend,
            _ => self.ifaces.client,
        }
    }

    /// One or two VLAN tags (802.1Q, or 802.1ad outside 802.1Q), which change nothing.
    fn vlan_tags(&mut self, f: &mut Vec<u8>) -> String {
        let mut tags = Vec::new();
        let qinq = self.rng.chance(30);
        if qinq {
            tags.extend_from_slice(&[0x88, 0xa8]);
            tags.extend_from_slice(&(self.rng.u16() & 0x0fff).to_be_bytes());
        }
        tags.extend_from_slice(&[0x81, 0x00]);
        tags.extend_from_slice(&(self.rng.u16() & 0x0fff).to_be_bytes());
        f.splice(12..12, tags);
        if qinq {
            ", QinQ-tagged".into()
        } else {
            ", VLAN-tagged".into()
        }
    }

    fn for_frontend(&mut self) -> Case {
        let (client, frontend, protocol, service) = if !self.flows.is_empty() && self.rng.chance(40)
        {
            let f = self.rng.pick(&self.flows);
            (f.client, f.frontend, f.proto, f.service)
        } else {
            let (ep, service) = self.rng.pick(&self.model.frontends);
            (self.client(), ep.addr, ep.proto, service)
        };
        let frame = self.frame(client, frontend, protocol, (CLIENT_MAC, NODE_MAC));
        let ingress = if self.rng.chance(85) {
            self.ifaces.client
        } else {
            self.ifaces.backend
        };
        let class = if self.model.services[&service].usable {
            Class::ToFrontend { service }
        } else {
            Class::ToEmptyFrontend
        };
        Case {
            frame,
            ingress,
            class,
            what: format!("{} {client} -> frontend {frontend}", proto_name(protocol)),
        }
    }

    /// An IPv6 packet to a VIP (a new or a tracked flow), or a backend's reply on a tracked
    /// flow.
    fn ipv6(&mut self) -> Case {
        if !self.flows6.is_empty() && self.rng.chance(40) {
            let flow = self.rng.pick(&self.flows6);
            let frame = self.frame6(
                flow.backend,
                flow.seen_as,
                flow.proto,
                (progtest::backend_mac(0), self.ifaces.backend_mac),
            );
            return Case {
                frame,
                ingress: self.ifaces.backend,
                class: Class::Reply6 {
                    service: flow.service,
                    client: flow.client,
                },
                what: format!(
                    "IPv6 {} reply {} -> {} on a flow {} -> {}",
                    proto_name(flow.proto),
                    flow.backend,
                    flow.seen_as,
                    flow.client,
                    flow.frontend
                ),
            };
        }
        let (client, frontend, protocol, service) =
            if !self.flows6.is_empty() && self.rng.chance(40) {
                let f = self.rng.pick(&self.flows6);
                (f.client, f.frontend, f.proto, f.service)
            } else {
                let (frontend, protocol, service) = self.rng.pick(&self.model.v6.frontends);
                let port = 40_000 + self.rng.below(64) as u16;
                (
                    SocketAddrV6::new(CLIENT6, port, 0, 0),
                    frontend,
                    protocol,
                    service,
                )
            };
        Case {
            frame: self.frame6(client, frontend, protocol, (CLIENT_MAC, NODE_MAC)),
            ingress: self.ifaces.client,
            class: Class::ToFrontend6 { service },
            what: format!(
                "IPv6 {} {client} -> frontend {frontend}",
                proto_name(protocol)
            ),
        }
    }

    /// A well-formed IPv6 frame with random flags, payload and hop limit; sometimes UDP
    /// without a checksum (the program keeps it zero); sometimes Ethernet padding.
    fn frame6(
        &mut self,
        src: SocketAddrV6,
        dst: SocketAddrV6,
        protocol: u8,
        macs: ([u8; 6], [u8; 6]),
    ) -> Vec<u8> {
        let l4 = if protocol == proto::TCP {
            L4::Tcp {
                flags: self.tcp_flags(),
                seq: self.rng.u32(),
                ack: self.rng.u32(),
            }
        } else if self.rng.chance(10) {
            L4::UdpNoChecksum
        } else {
            L4::Udp
        };
        let payload_len = self.rng.below(65);
        let mut f = Ipv6Frame {
            eth_src: macs.0,
            eth_dst: macs.1,
            src,
            dst,
            l4,
            hop_limit: 1 + self.rng.below(255) as u8,
            payload: self.rng.bytes(payload_len),
        }
        .build();
        if f.len() < 80 && self.rng.chance(15) {
            f.resize(80, 0);
        }
        f
    }

    fn remember6(&mut self, flow: Flow6) {
        if let Some(old) = self.flows6.iter_mut().find(|f| {
            f.client == flow.client && f.frontend == flow.frontend && f.proto == flow.proto
        }) {
            *old = flow;
        } else if self.flows6.len() < MAX_FLOWS {
            self.flows6.push(flow);
        }
    }

    /// Forgets the remembered IPv6 flow whose client and frontend `frame` carries.
    fn forget6(&mut self, frame: &[u8]) {
        let Some(l3) = ipv6_offset(frame).filter(|l3| frame.len() >= l3 + 44) else {
            return;
        };
        let (client, frontend) = endpoints6(&frame[l3..]);
        let protocol = frame[l3 + 6];
        self.flows6
            .retain(|f| !(f.client == client && f.frontend == frontend && f.proto == protocol));
    }

    fn reply(&mut self) -> Case {
        if self.flows.is_empty() {
            return self.for_frontend();
        }
        let flow = self.rng.pick(&self.flows);
        let frame = self.frame(
            flow.backend,
            flow.seen_as,
            flow.proto,
            (backend_mac(flow.backend.ip()), self.ifaces.backend_mac),
        );
        let ingress = if self.rng.chance(90) {
            self.ifaces.backend
        } else {
            self.ifaces.client
        };
        Case {
            frame,
            ingress,
            class: Class::Reply {
                service: flow.service,
                client: flow.client,
            },
            what: format!(
                "{} reply {} -> {} on a flow {} -> {}",
                proto_name(flow.proto),
                flow.backend,
                flow.seen_as,
                flow.client,
                flow.frontend
            ),
        }
    }

    fn echo_to_vip(&mut self) -> Case {
        let vip = self.rng.pick(&self.model.icmp_vips);
        let client = *self.client().ip();
        let rest = self.rng.u32().to_be_bytes();
        let len = self.rng.below(57);
        let body = self.rng.bytes(len);
        Case {
            frame: icmp_frame(
                (CLIENT_MAC, NODE_MAC),
                client,
                vip,
                ICMP_ECHO,
                0,
                rest,
                &body,
            ),
            ingress: self.ifaces.client,
            class: Class::EchoToVip,
            what: format!("icmp echo request {client} -> VIP {vip}"),
        }
    }

    /// An ICMP error about a tracked flow: from the backend side about what a backend got
    /// (for the client), or from the client side about a reply the client got (for the
    /// backend). The quote is the whole packet or, as RFC 792 allows, its first 8 L4 bytes.
    fn icmp_error(&mut self) -> Case {
        if self.flows.is_empty() {
            return self.echo_to_vip();
        }
        let flow = self.rng.pick(&self.flows);
        let to_backend = self.rng.chance(50);
        let (mut quote, outer_src, outer_dst, macs, ingress) = if to_backend {
            let quote = self.packet(flow.frontend, flow.client, flow.proto);
            let src = if self.rng.chance(50) {
                *flow.client.ip()
            } else {
                CLIENT_SIDE_ROUTER
            };
            let macs = (CLIENT_MAC, NODE_MAC);
            (quote, src, *flow.frontend.ip(), macs, self.ifaces.client)
        } else {
            let quote = self.packet(flow.seen_as, flow.backend, flow.proto);
            let src = if self.rng.chance(50) {
                *flow.backend.ip()
            } else {
                BACKEND_SIDE_ROUTER
            };
            let macs = (backend_mac(flow.backend.ip()), self.ifaces.backend_mac);
            (quote, src, *flow.seen_as.ip(), macs, self.ifaces.backend)
        };
        let complete = self.rng.chance(60);
        if !complete {
            quote.truncate(28);
        }
        let pointer = self.rng.below(20) as u8;
        let (ty, code, rest) = self.rng.pick(&[
            (ICMP_DEST_UNREACH, 3, [0; 4]),
            (ICMP_DEST_UNREACH, 1, [0; 4]),
            (ICMP_DEST_UNREACH, 4, [0, 0, 0x05, 0x78]),
            (ICMP_TIME_EXCEEDED, 0, [0; 4]),
            (ICMP_PARAMETER_PROBLEM, 0, [pointer, 0, 0, 0]),
        ]);
        Case {
            frame: icmp_frame(macs, outer_src, outer_dst, ty, code, rest, &quote),
            ingress,
            class: Class::IcmpError {
                service: flow.service,
                to_backend,
                client: flow.client,
            },
            what: format!(
                "icmp type {ty} code {code} {outer_src} -> {outer_dst} quoting {} bytes of a {} packet {} (flow {} -> {} to {})",
                quote.len(),
                proto_name(flow.proto),
                if to_backend {
                    "the client got"
                } else {
                    "a backend got"
                },
                flow.client,
                flow.frontend,
                flow.backend
            ),
        }
    }

    fn unrelated(&mut self) -> Case {
        loop {
            let src = SocketAddrV4::new(
                Ipv4Addr::new(
                    198,
                    18 + self.rng.below(2) as u8,
                    self.rng.u8(),
                    self.rng.u8(),
                ),
                self.rng.u16(),
            );
            // Often a frontend's or backend's address with another port or protocol.
            let dst_ip = if self.rng.chance(40) {
                *self.rng.pick(&self.model.frontends).0.addr.ip()
            } else if self.rng.chance(20) {
                self.rng.pick(&BACKENDS)
            } else {
                Ipv4Addr::new(
                    198,
                    18 + self.rng.below(2) as u8,
                    self.rng.u8(),
                    self.rng.u8(),
                )
            };
            let dst = SocketAddrV4::new(dst_ip, self.rng.u16());
            let protocol = self.rng.pick(&[proto::TCP, proto::UDP, proto::ICMP]);
            if protocol == proto::ICMP {
                return self.unrelated_icmp(*src.ip(), dst_ip);
            }
            if self.model.is_endpoint(Endpoint {
                addr: dst,
                proto: protocol,
            }) || self.model.is_endpoint(Endpoint {
                addr: src,
                proto: protocol,
            }) {
                continue;
            }
            let mut frame = self.frame(src, dst, protocol, (CLIENT_MAC, NODE_MAC));
            let mut what = format!("{} {src} -> {dst}, no frontend", proto_name(protocol));
            if self.rng.chance(5) {
                frame.truncate(42);
                frame[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
                what = "ARP-sized frame with ethertype 0x0806".into();
            }
            let ingress = self.any_ingress();
            return Case {
                frame,
                ingress,
                class: Class::Unrelated,
                what,
            };
        }
    }

    /// ICMP the program leaves alone: echo replies, echo requests to anything but a VIP,
    /// timestamps, and errors about packets of no tracked flow.
    fn unrelated_icmp(&mut self, src: Ipv4Addr, dst: Ipv4Addr) -> Case {
        let rest = self.rng.u32().to_be_bytes();
        let (ty, body) = match self.rng.below(4) {
            0 => (ICMP_ECHO_REPLY, self.rng.bytes(16)),
            1 if !self.model.icmp_vips.contains(&dst) => (ICMP_ECHO, self.rng.bytes(16)),
            2 => (13, self.rng.bytes(12)),
            _ => {
                let quoted_src = SocketAddrV4::new(Ipv4Addr::new(198, 19, 200, 1), 1);
                let quoted_dst = SocketAddrV4::new(Ipv4Addr::new(198, 19, 200, 2), 2);
                let protocol = self.rng.pick(&[proto::TCP, proto::UDP]);
                (
                    ICMP_DEST_UNREACH,
                    self.packet(quoted_src, quoted_dst, protocol),
                )
            }
        };
        Case {
            frame: icmp_frame((CLIENT_MAC, NODE_MAC), src, dst, ty, 0, rest, &body),
            ingress: self.any_ingress(),
            class: Class::Unrelated,
            what: format!("icmp type {ty} {src} -> {dst}, nothing the program answers"),
        }
    }

    /// IPv6 packets whose addresses are the IPv4-mapped forms of a frontend (to it) or of a
    /// tracked flow's backend and client (a reply).
    fn v4_mapped(&mut self) -> Case {
        let (src, dst, protocol) = if !self.flows.is_empty() && self.rng.chance(50) {
            let f = self.rng.pick(&self.flows);
            (f.backend, f.seen_as, f.proto)
        } else {
            let (ep, _) = self.rng.pick(&self.model.frontends);
            (self.client(), ep.addr, ep.proto)
        };
        let flags = self.tcp_flags();
        let payload = self.rng.bytes(8);
        Case {
            frame: ipv6_frame(
                (CLIENT_MAC, NODE_MAC),
                (src.ip().to_ipv6_mapped(), src.port()),
                (dst.ip().to_ipv6_mapped(), dst.port()),
                protocol,
                flags,
                &payload,
            ),
            ingress: self.any_ingress(),
            class: Class::V4Mapped,
            what: format!(
                "IPv6 {} [::ffff:{}]:{} -> [::ffff:{}]:{}",
                proto_name(protocol),
                src.ip(),
                src.port(),
                dst.ip(),
                dst.port()
            ),
        }
    }

    fn random_bytes(&mut self) -> Case {
        let len = 14 + self.rng.below(187);
        let mut frame = self.rng.bytes(len);
        let mut what = format!("{len} random bytes");
        // Most of them get past the first checks, to reach deeper.
        match self.rng.below(4) {
            0 if len >= 15 => {
                frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
                frame[14] = 0x45;
                what.push_str(", IPv4 ethertype and version/IHL");
            }
            1 if len >= 21 => {
                frame[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
                frame[14] = 0x60;
                frame[20] = self.rng.pick(&[6, 17, 58, 0, 43, 44, 60, 59]);
                what.push_str(", IPv6 ethertype, version and next header");
            }
            _ => {}
        }
        let ingress = self.any_ingress();
        Case {
            frame,
            ingress,
            class: Class::Mutated,
            what,
        }
    }

    fn mutated(&mut self) -> Case {
        let mut case = match self.rng.below(20) {
            0..=8 => self.for_frontend(),
            9..=10 => self.ipv6(),
            11..=14 => self.reply(),
            15 => self.echo_to_vip(),
            16..=17 => self.icmp_error(),
            _ => self.unrelated(),
        };
        let mut what = Vec::new();
        if self.rng.chance(10) {
            what.push(self.vlan_tags(&mut case.frame));
        }
        for _ in 0..1 + self.rng.below(3) {
            what.push(self.mutate(&mut case.frame));
        }
        // Half of them get correct checksums again, so they are refused (or not) on their
        // merits and not just for a checksum the program does not verify anyway.
        if self.rng.chance(50) {
            refresh_checksums(&mut case.frame);
            what.push("checksums recomputed".into());
        }
        if self.rng.chance(10) {
            case.ingress = self.any_ingress();
        }
        case.class = Class::Mutated;
        case.what = format!("{}; mutated: {}", case.what, what.join(", "));
        case
    }

    fn mutate(&mut self, f: &mut Vec<u8>) -> String {
        let len = f.len();
        let l3 = ipv4_offset(f).unwrap_or(14);
        match self.rng.below(12) {
            0 | 1 => {
                // Any header byte: Ethernet and VLAN tags, IPv4 and the first 28 bytes after
                // it (an L4 header, or an ICMP header and the quoted IPv4 header).
                let at = self.rng.below(len.min(l3 + 20 + 28));
                let x = 1 + self.rng.below(255) as u8;
                f[at] ^= x;
                format!("byte {at} ^= {x:#04x}")
            }
            2 => {
                let to = 14 + self.rng.below(len - 14 + 1);
                f.truncate(to);
                format!("truncated to {to}")
            }
            3 => {
                let random = self.rng.u16();
                let t = self.rng.pick(&[
                    0x0800, 0x86dd, 0x8100, 0x88a8, 0x0806, 0x0000, 0xffff, random,
                ]);
                let at = self.rng.pick(&[12, l3 - 2]);
                set_u16(f, at, t);
                format!("ethertype at {at} {t:#06x}")
            }
            4 => {
                let ihl = self.rng.below(16) as u8;
                set_u8(f, l3, |b| (b & 0xf0) | ihl);
                format!("IHL {ihl}")
            }
            5 => {
                let version = self.rng.below(16) as u8;
                set_u8(f, l3, |b| (b & 0x0f) | version << 4);
                format!("version {version}")
            }
            6 => {
                let random = self.rng.u16();
                let frag = self.rng.pick(&[
                    0x2000, 0x6000, 0x0001, 0x1fff, 0x3fff, 0x8000, 0x4000, 0x0000, random,
                ]);
                set_u16(f, l3 + 6, frag);
                format!("flags/fragment offset {frag:#06x}")
            }
            7 => {
                let random = self.rng.u8();
                let p = self
                    .rng
                    .pick(&[0, 1, 6, 17, 41, 47, 58, 132, 136, 255, random]);
                set_u8(f, l3 + 9, |_| p);
                format!("protocol {p}")
            }
            8 => {
                let actual = len.saturating_sub(l3) as u16;
                let random = self.rng.u16();
                let total = self.rng.pick(&[
                    0,
                    1,
                    19,
                    20,
                    27,
                    28,
                    39,
                    40,
                    actual.wrapping_sub(1),
                    actual.wrapping_add(1),
                    actual.wrapping_add(100),
                    1500,
                    1501,
                    0xffff,
                    random,
                ]);
                set_u16(f, l3 + 2, total);
                format!("total length {total} ({actual} bytes from the IPv4 header on)")
            }
            9 => {
                // UDP without a checksum (or two zero bytes where TCP or ICMP has others).
                set_u16(f, l3 + 20 + 6, 0);
                "L4 bytes 6..8 zeroed (UDP: no checksum)".into()
            }
            10 => {
                // TCP flags, or in ICMP the type.
                let value = self.rng.u8();
                let at = self.rng.pick(&[l3 + 20 + 13, l3 + 20]);
                set_u8(f, at, |_| value);
                format!("byte {at} (TCP flags / ICMP type) = {value:#04x}")
            }
            _ => {
                let n = 1 + self.rng.below(32);
                let garbage = self.rng.bytes(n);
                f.extend_from_slice(&garbage);
                format!("{n} bytes of trailing garbage")
            }
        }
    }

    /// For one TCP frontend of each service with backends, one client port used for ten
    /// connections in a row (SYN, then FIN).
    fn port_reuse(&self) -> Vec<Case> {
        let mut cases = Vec::new();
        let mut services = HashSet::new();
        for (i, (ep, service)) in self.model.frontends.iter().enumerate() {
            if ep.proto != proto::TCP
                || !self.model.services[service].usable
                || !services.insert(*service)
            {
                continue;
            }
            let client = SocketAddrV4::new(CLIENT, 39_000 + i as u16);
            for round in 1..=10 {
                for (flags, name) in [(TCP_SYN, "SYN"), (TCP_FIN | TCP_ACK, "FIN")] {
                    cases.push(Case {
                        frame: Ipv4Frame::tcp(client, ep.addr, flags).build(),
                        ingress: self.ifaces.client,
                        class: Class::ToFrontend { service: *service },
                        what: format!(
                            "port reuse: {name} of connection {round} of 10, {client} -> {}",
                            ep.addr
                        ),
                    });
                }
            }
        }
        cases
    }

    /// Frames whose every prefix is run: to each kind of frontend, one with Ethernet padding,
    /// an echo request to the VIP, and (with a tracked flow) a reply and ICMP errors.
    fn sweep_bases(&mut self) -> Vec<Case> {
        let client = |port| SocketAddrV4::new(CLIENT, port);
        let named = |frame: Vec<u8>, what: &str, class| Case {
            frame,
            ingress: self.ifaces.client,
            class,
            what: what.to_owned(),
        };
        let to = |addr: SocketAddrV4, protocol| Class::ToFrontend {
            service: self.model.service_of[&Endpoint {
                addr,
                proto: protocol,
            }],
        };
        let vip80 = SocketAddrV4::new(VIP, 80);
        let vip53 = SocketAddrV4::new(VIP, 53);
        let node8000 = SocketAddrV4::new(NODE_BACKEND_SIDE, 8000);
        let node8053 = SocketAddrV4::new(NODE_CLIENT_SIDE, 8053);
        let mut padded = Ipv4Frame {
            payload: Vec::new(),
            ..Ipv4Frame::udp(client(50_005), vip53)
        }
        .build();
        padded.resize(60, 0);
        let mut bases = vec![
            named(
                Ipv4Frame::tcp(client(50_000), vip80, TCP_SYN).build(),
                "sweep: tcp SYN to the VIP",
                to(vip80, proto::TCP),
            ),
            named(
                Ipv4Frame::udp(client(50_001), vip53).build(),
                "sweep: udp to the VIP",
                to(vip53, proto::UDP),
            ),
            named(
                Ipv4Frame::tcp(client(50_002), node8000, TCP_SYN).build(),
                "sweep: tcp SYN to a published port (round-robin)",
                to(node8000, proto::TCP),
            ),
            named(
                Ipv4Frame {
                    l4: L4::UdpNoChecksum,
                    ..Ipv4Frame::udp(client(50_003), node8053)
                }
                .build(),
                "sweep: udp without checksum to a published port",
                to(node8053, proto::UDP),
            ),
            named(
                Ipv4Frame::tcp(client(50_004), SocketAddrV4::new(EMPTY_VIP, 80), TCP_SYN).build(),
                "sweep: tcp SYN to the VIP without backends",
                Class::ToEmptyFrontend,
            ),
            named(
                padded,
                "sweep: udp with Ethernet padding to the VIP",
                to(vip53, proto::UDP),
            ),
            named(
                icmp_frame(
                    (CLIENT_MAC, NODE_MAC),
                    CLIENT,
                    VIP,
                    ICMP_ECHO,
                    0,
                    [0, 1, 0, 1],
                    b"meshlb ping",
                ),
                "sweep: icmp echo request to the VIP",
                Class::EchoToVip,
            ),
        ];
        // A flow of a NAT service and one of the full-NAT service, TCP.
        let mut flows: Vec<Flow> = Vec::new();
        for fullnat in [false, true] {
            let flow = self.flows.iter().find(|f| {
                f.proto == proto::TCP && self.model.services[&f.service].fullnat == fullnat
            });
            flows.extend(flow.copied());
        }
        for flow in flows {
            let mode = if self.model.services[&flow.service].fullnat {
                "full NAT"
            } else {
                "NAT"
            };
            let from_backend = (backend_mac(flow.backend.ip()), self.ifaces.backend_mac);
            let mut reply = named(
                Ipv4Frame::tcp(flow.backend, flow.seen_as, TCP_SYN | TCP_ACK)
                    .with_macs(from_backend.0, from_backend.1)
                    .build(),
                &format!("sweep: tcp reply from a backend on a tracked flow ({mode})"),
                Class::Reply {
                    service: flow.service,
                    client: flow.client,
                },
            );
            reply.ingress = self.ifaces.backend;
            let error = |to_backend| Class::IcmpError {
                service: flow.service,
                to_backend,
                client: flow.client,
            };
            let got = Ipv4Frame::tcp(flow.seen_as, flow.backend, TCP_ACK).build();
            let mut to_client = named(
                icmp_frame(
                    from_backend,
                    *flow.backend.ip(),
                    *flow.seen_as.ip(),
                    ICMP_DEST_UNREACH,
                    3,
                    [0; 4],
                    &got[14..],
                ),
                &format!("sweep: icmp port unreachable from a backend about what it got ({mode})"),
                error(false),
            );
            to_client.ingress = self.ifaces.backend;
            let sent = Ipv4Frame::tcp(flow.frontend, flow.client, TCP_ACK).build();
            let to_backend = named(
                icmp_frame(
                    (CLIENT_MAC, NODE_MAC),
                    CLIENT_SIDE_ROUTER,
                    *flow.frontend.ip(),
                    ICMP_DEST_UNREACH,
                    4,
                    [0, 0, 0x05, 0x78],
                    &sent[14..],
                ),
                &format!("sweep: icmp fragmentation needed from a router about a reply ({mode})"),
                error(true),
            );
            // An 8-byte quote, then trailing bytes (padding, a trailer): the packet ends
            // where its total length says, whatever follows.
            let mut short_quote = icmp_frame(
                from_backend,
                BACKEND_SIDE_ROUTER,
                *flow.seen_as.ip(),
                ICMP_TIME_EXCEEDED,
                0,
                [0; 4],
                &got[14..14 + 28],
            );
            short_quote.extend_from_slice(&[0; 12]);
            let mut short_quote = named(
                short_quote,
                &format!(
                    "sweep: icmp time exceeded quoting 8 bytes of TCP, then 12 trailing bytes ({mode})"
                ),
                error(false),
            );
            short_quote.ingress = self.ifaces.backend;
            bases.extend([reply, to_client, to_backend, short_quote]);
        }
        bases
    }
}

fn set_u8(f: &mut [u8], at: usize, change: impl FnOnce(u8) -> u8) {
    if let Some(b) = f.get_mut(at) {
        *b = change(*b);
    }
}

fn set_u16(f: &mut [u8], at: usize, value: u16) {
    if let Some(bytes) = f.get_mut(at..at + 2) {
        bytes.copy_from_slice(&value.to_be_bytes());
    }
}

/// An Ethernet + IPv4 + ICMP frame with both checksums right. `rest` is the second word of
/// the ICMP header (echo id and sequence; unused, a pointer or the next-hop MTU in errors).
fn icmp_frame(
    macs: ([u8; 6], [u8; 6]),
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ty: u8,
    code: u8,
    rest: [u8; 4],
    body: &[u8],
) -> Vec<u8> {
    let total = 20 + 8 + body.len();
    let mut f = Vec::with_capacity(14 + total);
    f.extend_from_slice(&macs.1);
    f.extend_from_slice(&macs.0);
    f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
    f.extend_from_slice(&(total as u16).to_be_bytes());
    f.extend_from_slice(&[0, 1, 0, 0, 64, proto::ICMP, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    let c = checksum(&f[14..34], 0);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&[ty, code, 0, 0]);
    f.extend_from_slice(&rest);
    f.extend_from_slice(body);
    let c = checksum(&f[34..], 0);
    f[36..38].copy_from_slice(&c.to_be_bytes());
    f
}

/// An Ethernet + IPv6 + TCP/UDP frame with a correct L4 checksum.
fn ipv6_frame(
    macs: ([u8; 6], [u8; 6]),
    src: (Ipv6Addr, u16),
    dst: (Ipv6Addr, u16),
    protocol: u8,
    tcp_flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&src.1.to_be_bytes());
    l4.extend_from_slice(&dst.1.to_be_bytes());
    let csum_at = if protocol == proto::TCP {
        l4.extend_from_slice(&[
            0, 0, 0, 1, 0, 0, 0, 0, 0x50, tcp_flags, 0xff, 0xff, 0, 0, 0, 0,
        ]);
        16
    } else {
        l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
        6
    };
    l4.extend_from_slice(payload);
    let words = |a: &Ipv6Addr| -> u32 { a.segments().iter().map(|s| u32::from(*s)).sum() };
    let pseudo = words(&src.0) + words(&dst.0) + l4.len() as u32 + u32::from(protocol);
    let mut c = checksum(&l4, pseudo);
    if protocol == proto::UDP && c == 0 {
        c = 0xffff;
    }
    l4[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&macs.1);
    f.extend_from_slice(&macs.0);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    f.extend_from_slice(&[protocol, 64]);
    f.extend_from_slice(&src.0.octets());
    f.extend_from_slice(&dst.0.octets());
    f.extend_from_slice(&l4);
    f
}

/// The one's complement sum of the IPv4 pseudo-header for an L4 segment of `l4_len` bytes.
fn pseudo_sum(ip: &[u8], l4_len: usize) -> u32 {
    let words: u32 = ip[12..20]
        .chunks(2)
        .map(|p| u32::from(u16::from_be_bytes([p[0], p[1]])))
        .sum();
    words + u32::from(ip[9]) + l4_len as u32
}

/// Makes the IPv4 header checksum, and the TCP/UDP/ICMP one (over what the total length
/// covers or what the frame holds, whichever is shorter), right again after a mutation. A
/// zero UDP checksum stays zero.
fn refresh_checksums(f: &mut [u8]) {
    let Some(l3) = ipv4_offset(f) else {
        return;
    };
    if f.len() < l3 + 20 {
        return;
    }
    let ihl = usize::from(f[l3] & 0x0f) * 4;
    if ihl < 20 || f.len() < l3 + ihl {
        return;
    }
    f[l3 + 10..l3 + 12].fill(0);
    let c = checksum(&f[l3..l3 + ihl], 0);
    f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
    let total = usize::from(u16::from_be_bytes([f[l3 + 2], f[l3 + 3]]));
    let end = (l3 + total).min(f.len());
    let l4 = l3 + ihl;
    let protocol = f[l3 + 9];
    let at = match protocol {
        proto::TCP => l4 + 16,
        proto::UDP => l4 + 6,
        proto::ICMP => l4 + 2,
        _ => return,
    };
    if at + 2 > end || (protocol == proto::UDP && f[at..at + 2] == [0, 0]) {
        return;
    }
    f[at..at + 2].fill(0);
    let pseudo = if protocol == proto::ICMP {
        0
    } else {
        pseudo_sum(&f[l3..l3 + 20], end - l4)
    };
    let mut c = checksum(&f[l4..end], pseudo);
    if protocol == proto::UDP && c == 0 {
        c = 0xffff;
    }
    f[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

// ---------------------------------------------------------------------------------------------
// Running and checking

/// Every kind of violation, with how often it happened and the first case that showed it.
#[derive(Default)]
struct Findings(BTreeMap<&'static str, (u64, String)>);

const ABORTED: &str = "the program returned XDP_ABORTED or an unknown action";
const RUN_FAILED: &str = "BPF_PROG_TEST_RUN failed on a frame of at least 14 bytes";
const REFUSED: &str =
    "BPF_PROG_TEST_RUN refused a short frame with something else than EINVAL, or counters moved";
const LENGTH: &str = "the frame length changed, or the metadata area is neither 0 nor 8 bytes";
const META: &str = "metadata with a wrong magic or egress interface";
const COUNTERS: &str = "counters of one run do not add up (rx 1, exactly one outcome, at most one translation, events at most once, new_flow only with nat_forward)";
const UNKNOWN_OUTCOME: &str = "an outcome counter this test does not know";
const ACTION: &str = "the action does not match the outcome counter";
const UNTOUCHED: &str = "a packet that was not translated came out changed";
const NO_CHANGE: &str = "a translation was counted but the IP/L4 bytes did not change";
const STRAY_WRITE: &str = "a translated packet changed bytes its translation does not touch (only addresses, ports, ICMP type, checksums and, with XDP_REDIRECT, the MACs may change)";
const TARGET: &str = "a translated packet's new addresses are not what the translation gives (backend, frontend, swapped echo)";
const UNPARSEABLE: &str = "translated a packet the parser must pass untouched (IPv4 options, fragment, wrong protocol or ICMP type)";
const NOT_IPV4: &str = "translated a packet that is neither IPv4 nor IPv6";
const V4_MAPPED: &str = "an IPv6 packet whose addresses are the IPv4-mapped forms (::ffff:a.b.c.d) of an IPv4 frontend, or of a tracked IPv4 flow's backend and client, is taken for that IPv4 traffic (flow opened, IPv6 header rewritten to ::ffff:backend, forwarded or dropped) instead of being passed untouched: no IPv6 service has such addresses, and keys do not tell the families apart";
const TRAILER_WRITE: &str = "an ICMP error translation wrote past the end of the IPv4 packet (its total length) into trailing bytes of the frame: with a quote that stops after 8 L4 bytes, the 'quoted TCP checksum' it updates is whatever follows the packet, and it folds that change into the ICMP checksum, which comes out wrong";
const CHECKSUM: &str =
    "forwarded a packet with a wrong checksum (its checksums were valid on the way in)";
const CHECKSUM_ERROR: &str = "forwarded a corrupt packet whose checksum error changed";
const UDP_ZERO: &str = "a UDP checksum changed between zero (none) and non-zero";
const TOTAL_LENGTH: &str = "translated and forwarded a packet whose IPv4 total length disagrees with the frame (more bytes than the frame holds, or too few for the headers the program rewrites); it must pass untouched as pass_malformed";
const SNAT_PORT_STALL: &str = "full NAT dropped a well-formed new flow as drop_no_snat_port: a client that reuses its source port gets no new flow after 8 (FULLNAT_PORT_ATTEMPTS) connections, because every new flow of one 5-tuple searches the same ports (from the flow's hash) and the earlier flows' reply entries hold them until idle past the service timeout (24h for TCP); clients that reuse ports must never stall";
const EXPECTED: &str = "a well-formed packet did not get its expected fate";

impl Findings {
    fn add(&mut self, what: &'static str, example: impl FnOnce() -> String) {
        let entry = self.0.entry(what).or_insert_with(|| (0, String::new()));
        if entry.0 == 0 {
            entry.1 = example();
        }
        entry.0 += 1;
    }

    fn print(&self) {
        for (what, (count, example)) in &self.0 {
            println!("\nFOUND {count}x: {what}\nfirst case: {example}");
        }
    }

    fn assert_none(&self, seed: u64) {
        if self.0.is_empty() {
            return;
        }
        let list: Vec<String> = self
            .0
            .iter()
            .map(|(what, (count, _))| format!("  {count}x {what}"))
            .collect();
        panic!(
            "seed {seed:#x} (rerun with MESHLB_PROPTEST_SEED={seed:#x}); violations (first case of each printed above):\n{}",
            list.join("\n")
        );
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        write!(s, "{b:02x}").unwrap();
    }
    s
}

/// Where the IPv4 header starts, past up to two VLAN tags as the program parses them. `None`
/// for anything but IPv4.
fn ipv4_offset(frame: &[u8]) -> Option<usize> {
    let mut at = 12;
    for _ in 0..3 {
        let t = u16::from_be_bytes(frame.get(at..at + 2)?.try_into().unwrap());
        match t {
            0x0800 => return Some(at + 2),
            0x8100 | 0x88a8 => at += 4,
            _ => return None,
        }
    }
    None
}

/// The frame without VLAN tags, for `parse_ipv4`.
fn untagged(frame: &[u8], l3: usize) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&frame[l3..]);
    f
}

/// Where the IPv6 header starts, past up to two VLAN tags. `None` for anything but IPv6.
fn ipv6_offset(frame: &[u8]) -> Option<usize> {
    let mut at = 12;
    for _ in 0..3 {
        let t = u16::from_be_bytes(frame.get(at..at + 2)?.try_into().unwrap());
        match t {
            0x86dd => return Some(at + 2),
            0x8100 | 0x88a8 => at += 4,
            _ => return None,
        }
    }
    None
}

/// The IPv6 frame without VLAN tags, for `parse_ipv6`.
fn untagged6(frame: &[u8], l3: usize) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&[0x86, 0xdd]);
    f.extend_from_slice(&frame[l3..]);
    f
}

/// Source and destination of the IPv6 header at `ip` and the ports after its 40 bytes.
fn endpoints6(ip: &[u8]) -> (SocketAddrV6, SocketAddrV6) {
    let addr = |at: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&ip[at..at + 16]).unwrap());
    let port = |at: usize| u16::from_be_bytes([ip[at], ip[at + 1]]);
    (
        SocketAddrV6::new(addr(8), port(40), 0, 0),
        SocketAddrV6::new(addr(24), port(42), 0, 0),
    )
}

/// Full NAT's IPv6 source: the node's address toward the backends, a port of its range.
fn is_snat_source6(addr: SocketAddrV6) -> bool {
    *addr.ip() == NODE6_BACKEND_SIDE && (FULLNAT_PORT_MIN..=FULLNAT_PORT_MAX).contains(&addr.port())
}

/// The flow an IPv6 packet to a frontend of `service` opened, as its translation shows it.
fn opened6(frame: &[u8], out: &ProgOutcome, service: u32) -> Option<Flow6> {
    let l3 = ipv6_offset(frame)?;
    let parsed = parse_ipv6(&untagged6(&out.packet, l3)).ok()?;
    let (client, frontend) = endpoints6(&frame[l3..]);
    Some(Flow6 {
        client,
        seen_as: parsed.src,
        frontend,
        backend: parsed.dst,
        proto: parsed.proto,
        service,
    })
}

/// The one's complement sum of the TCP/UDP segment of the IPv6 packet `ip` (`payload`
/// bytes after the header) with its pseudo-header; protocol from `layout` (the input).
/// `None` for UDP without a checksum; both zeros are made 0xffff, what a valid segment sums
/// to (as `sums`).
fn sum6(ip: &[u8], payload: usize, layout: &[u8]) -> Option<u16> {
    let l4 = &ip[40..40 + payload];
    if layout[6] == proto::UDP && l4[6..8] == [0, 0] {
        return None;
    }
    let pseudo: u32 = ip[8..40]
        .chunks(2)
        .map(|p| u32::from(u16::from_be_bytes([p[0], p[1]])))
        .sum::<u32>()
        + u32::from(layout[6])
        + payload as u32;
    let s = !checksum(l4, pseudo);
    Some(if s == 0 { 0xffff } else { s })
}

/// Source and destination of the IPv4 header at `ip` and the ports after its 20 bytes.
fn endpoints(ip: &[u8]) -> (SocketAddrV4, SocketAddrV4) {
    let addr = |at: usize| Ipv4Addr::new(ip[at], ip[at + 1], ip[at + 2], ip[at + 3]);
    let port = |at: usize| u16::from_be_bytes([ip[at], ip[at + 1]]);
    (
        SocketAddrV4::new(addr(12), port(20)),
        SocketAddrV4::new(addr(16), port(22)),
    )
}

/// A full-NAT source: the node's address toward the backends and a port of full NAT's range.
/// NAT keeps the client's address, but gives a flow whose client port clashes with a live
/// flow's toward the same backend a port of the full-NAT range.
fn is_port_remap(src: SocketAddrV4, client: SocketAddrV4) -> bool {
    src.ip() == client.ip() && (FULLNAT_PORT_MIN..=FULLNAT_PORT_MAX).contains(&src.port())
}

fn is_snat_source(addr: SocketAddrV4) -> bool {
    *addr.ip() == NODE_BACKEND_SIDE && (FULLNAT_PORT_MIN..=FULLNAT_PORT_MAX).contains(&addr.port())
}

fn is_icmp_error(ty: u8) -> bool {
    matches!(
        ty,
        ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM
    )
}

/// The one's complement sums of every checksummed region of the IPv4 packet `ip` (`total`
/// bytes long, as the input said; the layout is read from `layout`, the input): the header;
/// the TCP/UDP segment with its pseudo-header or the ICMP message; and in an ICMP error, the
/// quoted header and, if the quote holds all of it, the quoted TCP/UDP segment. Both zeros
/// are made 0xffff, which is what a valid region sums to; `None` is a UDP segment without a
/// checksum. An incremental update keeps each sum as it was.
fn sums(ip: &[u8], total: usize, layout: &[u8]) -> Vec<Option<u16>> {
    let sum = |data: &[u8], initial: u32| {
        let s = !checksum(data, initial);
        Some(if s == 0 { 0xffff } else { s })
    };
    let segment = |ip: &[u8], l4: &[u8], protocol: u8| match protocol {
        proto::UDP if l4[6..8] == [0, 0] => None,
        _ => sum(l4, pseudo_sum(ip, l4.len())),
    };
    let mut sums = vec![sum(&ip[..20], 0)];
    let l4 = &ip[20..total];
    match layout[9] {
        proto::TCP | proto::UDP => sums.push(segment(ip, l4, layout[9])),
        proto::ICMP => {
            sums.push(sum(l4, 0));
            let q = &l4[8..];
            let lq = &layout[28..total];
            if is_icmp_error(layout[20]) && lq.len() >= 28 && lq[0] == 0x45 {
                sums.push(sum(&q[..20], 0));
                let q_total = usize::from(u16::from_be_bytes([lq[2], lq[3]]));
                let min = if lq[9] == proto::TCP { 40 } else { 28 };
                if matches!(lq[9], proto::TCP | proto::UDP) && (min..=lq.len()).contains(&q_total) {
                    sums.push(segment(q, &q[20..q_total], lq[9]));
                }
            }
        }
        _ => {}
    }
    sums
}

fn valid(sums: &[Option<u16>]) -> bool {
    sums.iter().all(|s| s.is_none_or(|s| s == 0xffff))
}

/// The action and metadata an outcome counter stands for.
fn action_of(slot: StatSlot) -> Option<(u32, bool)> {
    match slot {
        StatSlot::TxViaTc => Some((XDP_PASS, true)),
        StatSlot::TxXdpRedirect => Some((XDP_REDIRECT, false)),
        StatSlot::TxLocal => Some((XDP_PASS, false)),
        s if s.label().starts_with("pass_") => Some((XDP_PASS, false)),
        s if s.label().starts_with("drop_") => Some((XDP_DROP, false)),
        _ => None,
    }
}

struct Runner<'a> {
    dp: Dataplane,
    model: &'a Model,
    ifaces: Interfaces,
    /// Counters after the last run.
    last: StatsSnapshot,
    findings: Findings,
    /// Runs the program saw.
    runs: u64,
    /// Frames BPF_PROG_TEST_RUN refused (shorter than an Ethernet header).
    refused: u64,
    /// Runs whose IP/L4 bytes changed.
    changed: u64,
    index: u64,
    /// The IPv6 flow the last run opened (`run` returns IPv4 ones).
    opened6: Option<Flow6>,
    /// IPv6 translations checked: forward, reply.
    checked6: [u64; 2],
}

impl<'a> Runner<'a> {
    fn new(dp: Dataplane, model: &'a Model, ifaces: Interfaces) -> Self {
        let last = dp.stats().unwrap();
        Self {
            dp,
            model,
            ifaces,
            last,
            findings: Findings::default(),
            runs: 0,
            refused: 0,
            changed: 0,
            index: 0,
            opened6: None,
            checked6: [0; 2],
        }
    }

    /// Runs one case, checks it, and returns the flow it opened, if any.
    fn run(&mut self, case: &Case) -> Option<Flow> {
        self.index += 1;
        let index = self.index;
        let ingress = self.ifaces.name(case.ingress);
        let result = test_run(&mut self.dp, &case.frame, case.ingress);
        let now = self.dp.stats().unwrap();
        let deltas: Vec<(StatSlot, u64)> = StatSlot::ALL
            .iter()
            .map(|s| (*s, delta(&self.last, &now, *s)))
            .collect();
        self.last = now;
        let moved = || {
            deltas
                .iter()
                .filter(|(_, n)| *n != 0)
                .map(|(s, n)| format!("{}+{n}", s.label()))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let out = match result {
            Ok(out) => out,
            Err(e) => {
                let report = || {
                    format!(
                        "case #{index}: {} ({} bytes): {e}\n  in: {}\n  counters: {}",
                        case.what,
                        case.frame.len(),
                        hex(&case.frame),
                        moved()
                    )
                };
                let einval = matches!(&e, ProgramError::SyscallError(s)
                    if s.io_error.raw_os_error() == Some(libc::EINVAL));
                if case.frame.len() >= 14 {
                    self.findings.add(RUN_FAILED, report);
                } else if !einval || deltas.iter().any(|(_, n)| *n != 0) {
                    self.findings.add(REFUSED, report);
                } else {
                    self.refused += 1;
                }
                return None;
            }
        };
        self.runs += 1;
        let mut found: Vec<(&'static str, String)> = Vec::new();
        let flow = self.check(case, &out, &deltas, &mut found);
        for (what, detail) in found {
            self.findings.add(what, || {
                format!(
                    "case #{index}: {}\n  ingress {ingress}\n  in  ({} bytes): {}\n  action {}, metadata [{}], counters: {}\n  out ({} bytes): {}\n  {detail}",
                    case.what,
                    case.frame.len(),
                    hex(&case.frame),
                    out.action,
                    hex(&out.meta),
                    moved(),
                    out.packet.len(),
                    hex(&out.packet),
                )
            });
        }
        flow
    }

    fn check(
        &mut self,
        case: &Case,
        out: &ProgOutcome,
        deltas: &[(StatSlot, u64)],
        found: &mut Vec<(&'static str, String)>,
    ) -> Option<Flow> {
        let d = |slot: StatSlot| deltas[slot as usize].1;
        let mut fail = |what: &'static str, detail: String| found.push((what, detail));
        let frame = &case.frame;

        if !matches!(out.action, XDP_DROP | XDP_PASS | XDP_TX | XDP_REDIRECT) {
            let name = if out.action == XDP_ABORTED {
                "XDP_ABORTED"
            } else {
                "unknown"
            };
            fail(ABORTED, format!("returned {} ({name})", out.action));
        }
        if out.packet.len() != frame.len() || !matches!(out.meta.len(), 0 | 8) {
            fail(
                LENGTH,
                format!(
                    "{} bytes in, {} out after {} bytes of metadata",
                    frame.len(),
                    out.packet.len(),
                    out.meta.len()
                ),
            );
        }
        let meta = (out.meta.len() == 8).then(|| {
            (
                u32::from_ne_bytes(out.meta[0..4].try_into().unwrap()),
                u32::from_ne_bytes(out.meta[4..8].try_into().unwrap()),
            )
        });
        if let Some((magic, ifindex)) = meta
            && (magic != XDP_META_MAGIC
                || (ifindex != self.ifaces.client && ifindex != self.ifaces.backend))
        {
            fail(META, format!("magic {magic:#x}, ifindex {ifindex}"));
        }

        // The counters of this run.
        let sum_of = |kind: SlotKind| -> u64 {
            deltas
                .iter()
                .filter(|(s, _)| s.kind() == kind)
                .map(|(_, n)| n)
                .sum()
        };
        let outcomes: Vec<StatSlot> = deltas
            .iter()
            .filter(|(s, n)| s.kind() == SlotKind::Outcome && *n != 0)
            .map(|(s, _)| *s)
            .collect();
        let events_ok = deltas
            .iter()
            .filter(|(s, _)| s.kind() == SlotKind::Event)
            .all(|(_, n)| *n <= 1);
        let translation: Vec<StatSlot> = TRANSLATIONS.into_iter().filter(|s| d(*s) != 0).collect();
        if d(StatSlot::Rx) != 1
            || sum_of(SlotKind::Outcome) != 1
            || !events_ok
            || sum_of(SlotKind::Tc) != 0
            || translation.len() > 1
            || d(StatSlot::NewFlow) > d(StatSlot::NatForward)
        {
            fail(COUNTERS, String::new());
        }
        if let [slot] = outcomes[..] {
            match action_of(slot) {
                Some((action, with_meta)) => {
                    if out.action != action || meta.is_some() != with_meta {
                        fail(
                            ACTION,
                            format!(
                                "{} means action {action}, metadata {with_meta}",
                                slot.label()
                            ),
                        );
                    }
                }
                None => fail(UNKNOWN_OUTCOME, slot.label().to_owned()),
            }
        }

        // Untouched unless translated; translated means changed.
        let changed = out.packet.len() != frame.len() || out.packet[12..] != frame[12..];
        if changed {
            self.changed += 1;
        }
        if translation.is_empty() && out.packet != *frame {
            fail(UNTOUCHED, String::new());
        }
        if !translation.is_empty() && !changed {
            fail(NO_CHANGE, String::new());
        }

        // What the program sends on must be right. (What it drops after translating, when
        // the FIB refuses, goes nowhere.)
        if let [event] = translation[..]
            && out.action != XDP_DROP
            && out.packet.len() == frame.len()
        {
            self.check_translated(frame, out, event, &mut fail);
        }

        // The expected fate of well-formed packets.
        let l3 = ipv4_offset(frame);
        let ip_in = l3.map(|l3| &frame[l3..]);
        let ip_out = l3.map(|l3| &out.packet[l3..]);
        match (case.class, ip_in, ip_out) {
            (Class::ToFrontend { service }, Some(ip), Some(ip_out)) => {
                let s = &self.model.services[&service];
                let opening = ip[9] == proto::UDP
                    || (ip[20 + 13] & TCP_SYN != 0 && ip[20 + 13] & TCP_ACK == 0);
                let (src, dst) = endpoints(ip_out);
                let fine = if d(StatSlot::NatForward) == 1 {
                    s.backends.contains(&dst)
                        && (!s.fullnat || is_snat_source(src))
                        && (s.fullnat
                            || src == endpoints(ip).0
                            || is_port_remap(src, endpoints(ip).0))
                } else {
                    d(StatSlot::DropNoFlow) == 1 && s.round_robin && !opening
                };
                if d(StatSlot::DropNoSnatPort) == 1 {
                    fail(SNAT_PORT_STALL, String::new());
                } else if !fine {
                    fail(
                        EXPECTED,
                        format!(
                            "to a frontend with backends {:?}: translated to one of them (full NAT {}: from the node's address toward them, port {FULLNAT_PORT_MIN}-{FULLNAT_PORT_MAX}), or (round-robin, mid-flow) dropped as drop_no_flow",
                            s.backends, s.fullnat
                        ),
                    );
                }
            }
            (Class::ToEmptyFrontend, ..) => {
                if d(StatSlot::DropNoBackend) != 1 || out.action != XDP_DROP {
                    fail(
                        EXPECTED,
                        "to a frontend without backends: drop_no_backend".into(),
                    );
                }
            }
            (Class::Reply { service, client }, Some(_), Some(ip_out)) => {
                let s = &self.model.services[&service];
                let (src, dst) = endpoints(ip_out);
                if d(StatSlot::NatReply) != 1 || !s.frontends.contains(&src) || dst != client {
                    fail(
                        EXPECTED,
                        format!(
                            "a reply on a tracked flow: translated back to one of {:?} -> {client}",
                            s.frontends
                        ),
                    );
                }
            }
            (Class::EchoToVip, ..) => {
                if d(StatSlot::IcmpEchoReply) != 1 {
                    fail(EXPECTED, "an echo request to a VIP: answered".into());
                }
            }
            (
                Class::IcmpError {
                    service,
                    to_backend,
                    client,
                },
                Some(_),
                Some(ip_out),
            ) => {
                let s = &self.model.services[&service];
                let quote = endpoints(&ip_out[28..]);
                let outer = endpoints(ip_out);
                // For the backend: the quote becomes what the backend sent (from it, to the
                // client as it sees it). For the client: what the client sent (from it, to
                // the frontend), and the error goes to the client.
                let fine = if to_backend {
                    d(StatSlot::IcmpErrorToBackend) == 1
                        && s.backends.contains(&quote.0)
                        && outer.1.ip() == quote.0.ip()
                        && (if s.fullnat {
                            is_snat_source(quote.1)
                        } else {
                            quote.1 == client || is_port_remap(quote.1, client)
                        })
                } else {
                    d(StatSlot::IcmpErrorToClient) == 1
                        && s.frontends.contains(&quote.1)
                        && quote.0 == client
                        && outer.1.ip() == client.ip()
                };
                if !fine {
                    fail(
                        EXPECTED,
                        format!(
                            "an ICMP error about a tracked flow: translated for the {} (backends {:?}, frontends {:?})",
                            if to_backend { "backend" } else { "client" },
                            s.backends,
                            s.frontends
                        ),
                    );
                }
            }
            (Class::Unrelated, ..) => {
                if d(StatSlot::PassNotFrontend) != 1 {
                    fail(EXPECTED, "unrelated: pass_not_frontend".into());
                }
            }
            (Class::V4Mapped, ..) => {
                // Left alone, whichever pass counter says so.
                if out.action != XDP_PASS || !translation.is_empty() || d(StatSlot::NewFlow) != 0 {
                    fail(V4_MAPPED, String::new());
                }
            }
            (Class::ToFrontend6 { service }, ..) | (Class::Reply6 { service, .. }, ..) => {
                if let Some(detail) = self.fate6(
                    case,
                    out,
                    d(StatSlot::NatForward),
                    d(StatSlot::NatReply),
                    service,
                ) {
                    if d(StatSlot::DropNoSnatPort) == 1 {
                        fail(SNAT_PORT_STALL, String::new());
                    } else {
                        fail(EXPECTED, detail);
                    }
                }
                if let Class::ToFrontend6 { service } = case.class
                    && d(StatSlot::NatForward) == 1
                    && out.action != XDP_DROP
                {
                    self.opened6 = opened6(frame, out, service);
                }
                return None;
            }
            (Class::Mutated, ..) => {}
            (class, ..) => fail(EXPECTED, format!("{class:?}: not an IPv4 frame")),
        }

        // A flow the program opened, for replies, errors and mid-flow packets later.
        if d(StatSlot::NatForward) != 1 || out.action == XDP_DROP {
            return None;
        }
        let l3 = l3?;
        let parsed = parse_ipv4(&untagged(&out.packet, l3)).ok()?;
        let (client, frontend) = endpoints(&frame[l3..]);
        let service = *self.model.service_of.get(&Endpoint {
            addr: frontend,
            proto: parsed.proto,
        })?;
        // A client that is itself an endpoint would make its replies something else.
        for addr in [client, parsed.src] {
            if self.model.is_endpoint(Endpoint {
                addr,
                proto: parsed.proto,
            }) {
                return None;
            }
        }
        Some(Flow {
            client,
            seen_as: parsed.src,
            frontend,
            backend: parsed.dst,
            proto: parsed.proto,
            service,
        })
    }

    /// The expected fate of a well-formed IPv6 packet: to a VIP, translated to one of its
    /// service's backends (under full NAT from the node's address); a reply, translated back
    /// to the client from a frontend. `None` when it got it, else what it should have been.
    fn fate6(
        &self,
        case: &Case,
        out: &ProgOutcome,
        forward: u64,
        reply: u64,
        service: u32,
    ) -> Option<String> {
        let s = &self.model.v6.services[&service];
        let l3 = ipv6_offset(&case.frame)?;
        let (in_src, _) = endpoints6(&case.frame[l3..]);
        let (src, dst) = endpoints6(&out.packet[l3..]);
        let fine = match case.class {
            Class::ToFrontend6 { .. } => {
                forward == 1
                    && s.backends.contains(&dst)
                    && if s.fullnat {
                        is_snat_source6(src)
                    } else {
                        src == in_src
                            || (src.ip() == in_src.ip()
                                && (FULLNAT_PORT_MIN..=FULLNAT_PORT_MAX).contains(&src.port()))
                    }
            }
            Class::Reply6 { client, .. } => {
                reply == 1 && s.frontends.contains(&src) && dst == client
            }
            _ => true,
        };
        (!fine).then(|| {
            format!(
                "IPv6 to a VIP: translated to one of {:?} (full NAT {}), or a reply: translated back from one of {:?}",
                s.backends, s.fullnat, s.frontends
            )
        })
    }

    /// An IPv6 packet the program translated and sends on (see `check_translated`): only its
    /// addresses, ports, L4 checksum and (XDP_REDIRECT) MACs change, toward a backend or from
    /// a frontend, and its checksum is right: valid in, valid out, verified from scratch by
    /// `parse_ipv6`; wrong in, wrong by exactly as much out. ICMPv6 translations are left to
    /// the packet tests.
    fn check_translated6(
        &mut self,
        frame: &[u8],
        out: &ProgOutcome,
        event: StatSlot,
        l3: usize,
        fail: &mut impl FnMut(&'static str, String),
    ) {
        let ip = &frame[l3..];
        let ip_out = &out.packet[l3..];
        if ip.len() >= 40 && ip[6] == proto::ICMPV6 {
            return;
        }
        let protocol = ip.get(6).copied().unwrap_or(0);
        let headers = match (event, protocol) {
            (StatSlot::NatForward | StatSlot::NatReply, proto::TCP) => 60,
            (StatSlot::NatForward | StatSlot::NatReply, proto::UDP) => 48,
            _ => 0,
        };
        if ip.len() < 40 || ip[0] >> 4 != 6 || headers == 0 || ip.len() < headers {
            fail(
                UNPARSEABLE,
                format!(
                    "IPv6 {}: next header {protocol}, {} bytes",
                    event.label(),
                    ip.len()
                ),
            );
            return;
        }
        let forward = event == StatSlot::NatForward;
        self.checked6[usize::from(!forward)] += 1;
        let (in_src, in_dst) = endpoints6(ip);
        let fullnat = if forward {
            self.model.v6.service_of_frontend(in_dst, protocol)
        } else {
            self.model.v6.service_of_backend(in_src)
        }
        .is_some_and(|id| self.model.v6.services[&id].fullnat);

        // Where the translation writes, from the IPv6 header on: the translated side's
        // address (both under full NAT), both ports (NAT may remap the client's), the L4
        // checksum.
        let csum = 40 + if protocol == proto::TCP { 16 } else { 6 };
        let (src_addr, dst_addr) = (8..24, 24..40);
        let mut may = vec![40..44, csum..csum + 2];
        if forward || fullnat {
            may.push(dst_addr);
        }
        if !forward || fullnat {
            may.push(src_addr);
        }
        let stray: Vec<usize> = (0..frame.len())
            .filter(|&i| frame[i] != out.packet[i])
            .filter(|&i| {
                let mac = i < 12 && out.action == XDP_REDIRECT;
                !mac && (i < l3 || !may.iter().any(|r| r.contains(&(i - l3))))
            })
            .collect();
        if !stray.is_empty() {
            fail(
                STRAY_WRITE,
                format!("changed frame offsets {stray:?} (IPv6 header at {l3})"),
            );
        }

        let (src, dst) = endpoints6(ip_out);
        let target_ok = if forward {
            self.model.v6.backend_endpoints.contains(&(dst, protocol))
                && (!fullnat || is_snat_source6(src))
        } else {
            self.model.v6.service_of_frontend(src, protocol).is_some()
        };
        if !target_ok {
            fail(TARGET, format!("IPv6 now {src} -> {dst}"));
        }

        let payload = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
        if 40 + payload > ip.len() || 40 + payload < headers {
            fail(
                TOTAL_LENGTH,
                format!(
                    "IPv6 payload length {payload}, {} bytes from the IPv6 header on, {headers} needed",
                    ip.len()
                ),
            );
            return;
        }
        let past: Vec<usize> = (l3 + 40 + payload..frame.len())
            .filter(|&i| frame[i] != out.packet[i])
            .collect();
        if !past.is_empty() {
            fail(
                TRAILER_WRITE,
                format!(
                    "changed frame offsets {past:?}; the IPv6 packet ends at {}",
                    l3 + 40 + payload
                ),
            );
            return;
        }

        let before = sum6(ip, payload, ip);
        let after = sum6(ip_out, payload, ip);
        if before.is_none() != after.is_none() {
            fail(
                UDP_ZERO,
                format!("IPv6 sums {before:04x?} in, {after:04x?} out"),
            );
        } else if before.is_none_or(|s| s == 0xffff) {
            // Valid in (or UDP without a checksum, which stays so: checked above).
            if before.is_some() {
                let mut f = untagged6(&out.packet, l3);
                f.truncate(14 + 40 + payload);
                if let Err(e) = parse_ipv6(&f) {
                    fail(CHECKSUM, e);
                } else if after != Some(0xffff) {
                    fail(
                        CHECKSUM,
                        format!("IPv6 one's complement sum {after:04x?} (valid: 0xffff)"),
                    );
                }
            }
        } else if before != after {
            fail(
                CHECKSUM_ERROR,
                format!(
                    "IPv6 one's complement sums {before:04x?} in, {after:04x?} out (valid: 0xffff)"
                ),
            );
        }
    }

    /// A packet the program translated and sends on: what may change, and its checksums.
    fn check_translated(
        &mut self,
        frame: &[u8],
        out: &ProgOutcome,
        event: StatSlot,
        fail: &mut impl FnMut(&'static str, String),
    ) {
        if let Some(l3) = ipv6_offset(frame) {
            self.check_translated6(frame, out, event, l3, fail);
            return;
        }
        let Some(l3) = ipv4_offset(frame).filter(|l3| frame.len() >= l3 + 20) else {
            fail(NOT_IPV4, String::new());
            return;
        };
        let ip = &frame[l3..];
        let ip_out = &out.packet[l3..];
        let protocol = ip[9];
        let frag = u16::from_be_bytes([ip[6], ip[7]]);
        let icmp_type = ip.get(20).copied();
        // The headers the program reads and rewrites, from the IPv4 header on.
        let headers = match (event, protocol) {
            (StatSlot::NatForward | StatSlot::NatReply, proto::TCP) => 40,
            (StatSlot::NatForward | StatSlot::NatReply, proto::UDP) => 28,
            (StatSlot::IcmpEchoReply, proto::ICMP) if icmp_type == Some(ICMP_ECHO) => 28,
            (StatSlot::IcmpErrorToBackend | StatSlot::IcmpErrorToClient, proto::ICMP)
                if icmp_type.is_some_and(is_icmp_error) =>
            {
                56
            }
            _ => 0,
        };
        if ip[0] != 0x45 || frag & 0x3fff != 0 || headers == 0 || ip.len() < headers {
            fail(
                UNPARSEABLE,
                format!(
                    "{}: version/IHL {:#04x}, flags/offset {frag:#06x}, protocol {protocol}, ICMP type {icmp_type:?}",
                    event.label(),
                    ip[0]
                ),
            );
            return;
        }

        // Where the translation writes, from the IPv4 header on.
        let l4_csum = |l4: usize, protocol: u8| l4 + if protocol == proto::TCP { 16 } else { 6 };
        // The IPv4 header checksum, always.
        let mut may: Vec<std::ops::Range<usize>> = Vec::new();
        may.push(10..12);
        let quoted_proto = ip.get(28 + 9).copied().unwrap_or(0);
        // Full NAT translates both sides: of the packet, of an error's quote, and an error's
        // outer destination too. The service is the one of the frontend or backend endpoint
        // the program keyed the translation on.
        let (in_src, in_dst) = endpoints(ip);
        let fullnat = match event {
            StatSlot::NatForward => self.model.fullnat(Endpoint {
                addr: in_dst,
                proto: protocol,
            }),
            StatSlot::NatReply => self.model.fullnat(Endpoint {
                addr: in_src,
                proto: protocol,
            }),
            StatSlot::IcmpErrorToBackend | StatSlot::IcmpErrorToClient => {
                let (q_src, q_dst) = endpoints(&ip[28..]);
                let keyed_on = if event == StatSlot::IcmpErrorToBackend {
                    q_src
                } else {
                    q_dst
                };
                self.model.fullnat(Endpoint {
                    addr: keyed_on,
                    proto: quoted_proto,
                })
            }
            _ => false,
        };
        if fullnat {
            may.extend([12..20, 20..24, 28 + 12..28 + 20, 48..52]);
        }
        match event {
            // (NAT may give the client another source port on a clash: ports of both sides.)
            StatSlot::NatForward => may.extend([
                16..20,
                20..24,
                l4_csum(20, protocol)..l4_csum(20, protocol) + 2,
            ]),
            StatSlot::NatReply => may.extend([
                12..16,
                20..24,
                l4_csum(20, protocol)..l4_csum(20, protocol) + 2,
            ]),
            StatSlot::IcmpEchoReply => may.extend([12..20, 20..21, 22..24]),
            StatSlot::IcmpErrorToBackend => may.extend([
                16..20,
                22..24,
                28 + 10..28 + 12,
                28 + 12..28 + 16,
                48..52,
                l4_csum(48, quoted_proto)..l4_csum(48, quoted_proto) + 2,
            ]),
            // (To the client: the outer destination is set to the client itself when its port
            // was remapped, as under full NAT; the fate check asserts it is the client.)
            _ => may.extend([
                12..20,
                22..24,
                28 + 10..28 + 12,
                28 + 16..28 + 20,
                48..52,
                l4_csum(48, quoted_proto)..l4_csum(48, quoted_proto) + 2,
            ]),
        }
        let stray: Vec<usize> = (0..frame.len())
            .filter(|&i| frame[i] != out.packet[i])
            .filter(|&i| {
                let mac = i < 12 && out.action == XDP_REDIRECT;
                !mac && (i < l3 || !may.iter().any(|r| r.contains(&(i - l3))))
            })
            .collect();
        if !stray.is_empty() {
            fail(
                STRAY_WRITE,
                format!("changed frame offsets {stray:?} (IPv4 header at {l3})"),
            );
        }

        // Where the translation goes.
        let (src, dst) = endpoints(ip_out);
        let backend = |addr| {
            self.model.backend_endpoints.contains(&Endpoint {
                addr,
                proto: protocol,
            })
        };
        let target_ok = match event {
            StatSlot::NatForward => backend(dst) && (!fullnat || is_snat_source(src)),
            StatSlot::NatReply => self.model.service_of.contains_key(&Endpoint {
                addr: src,
                proto: protocol,
            }),
            StatSlot::IcmpEchoReply => {
                src.ip() == in_dst.ip()
                    && dst.ip() == in_src.ip()
                    && ip_out[20] == ICMP_ECHO_REPLY
                    && self.model.icmp_vips.contains(in_dst.ip())
            }
            StatSlot::IcmpErrorToBackend => {
                let (q_src, q_dst) = endpoints(&ip_out[28..]);
                self.model.backend_endpoints.contains(&Endpoint {
                    addr: q_src,
                    proto: quoted_proto,
                }) && dst.ip() == q_src.ip()
                    && (!fullnat || is_snat_source(q_dst))
            }
            _ => {
                let (q_src, q_dst) = endpoints(&ip_out[28..]);
                let (_, in_q_dst) = endpoints(&ip[28..]);
                self.model.service_of.contains_key(&Endpoint {
                    addr: q_dst,
                    proto: quoted_proto,
                }) && (in_src.ip() != in_q_dst.ip() || src.ip() == q_dst.ip())
                    && (!fullnat || dst.ip() == q_src.ip())
            }
        };
        if !target_ok {
            fail(TARGET, format!("now {src} -> {dst}"));
        }

        // The total length: it must hold the headers the program rewrites and no more bytes
        // than the frame has.
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        if total > ip.len() || total < headers {
            // The checksum checks below need a consistent length.
            fail(
                TOTAL_LENGTH,
                format!(
                    "total length {total}, {} bytes from the IPv4 header on, {headers} needed",
                    ip.len()
                ),
            );
            return;
        }

        // Nothing past the packet: the frame may go on (padding, trailers), the packet not.
        let past: Vec<usize> = (l3 + total..frame.len())
            .filter(|&i| frame[i] != out.packet[i])
            .collect();
        if !past.is_empty() {
            // The checksum such a write breaks is its consequence, so the checks below would
            // only repeat it.
            fail(
                TRAILER_WRITE,
                format!(
                    "changed frame offsets {past:?}; the IPv4 packet ends at {}",
                    l3 + total
                ),
            );
            return;
        }

        // Checksums: valid stay valid, wrong ones stay wrong by exactly as much.
        let before = sums(ip, total, ip);
        let after = sums(ip_out, total, ip);
        let zero_udp = |s: &[Option<u16>]| -> Vec<bool> { s.iter().map(Option::is_none).collect() };
        if zero_udp(&before) != zero_udp(&after) {
            fail(UDP_ZERO, format!("sums {before:04x?} in, {after:04x?} out"));
        } else if valid(&before) {
            let independent = if protocol == proto::ICMP {
                Ok(())
            } else {
                parse_ipv4(&untagged(&out.packet, l3)).map(|_| ())
            };
            if let Err(e) = independent {
                fail(CHECKSUM, e);
            } else if !valid(&after) {
                fail(
                    CHECKSUM,
                    format!("one's complement sums {after:04x?} (valid: 0xffff)"),
                );
            }
        } else if before != after {
            fail(
                CHECKSUM_ERROR,
                format!(
                    "one's complement sums (header, L4, quoted header, quoted L4) {before:04x?} in, {after:04x?} out (valid: 0xffff)"
                ),
            );
        }
    }
}
