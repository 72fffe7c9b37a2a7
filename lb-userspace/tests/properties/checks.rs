//! Running the cases and checking every run against the invariants.

use super::*;

/// Every kind of violation, with how often it happened and the first case that showed it.
#[derive(Default)]
pub(crate) struct Findings(pub(crate) BTreeMap<&'static str, (u64, String)>);

pub(crate) const ABORTED: &str = "the program returned XDP_ABORTED or an unknown action";
pub(crate) const RUN_FAILED: &str = "BPF_PROG_TEST_RUN failed on a frame of at least 14 bytes";
pub(crate) const REFUSED: &str =
    "BPF_PROG_TEST_RUN refused a short frame with something else than EINVAL, or counters moved";
pub(crate) const LENGTH: &str = "the frame length changed";
pub(crate) const META: &str = "a hand-off to TC of a wrong kind or egress interface";
pub(crate) const COUNTERS: &str = "counters of one run do not add up (rx 1, exactly one outcome, at most one translation, events at most once, new_flow only with nat_forward)";
pub(crate) const UNKNOWN_OUTCOME: &str = "an outcome counter this test does not know";
pub(crate) const ACTION: &str = "the action does not match the outcome counter";
pub(crate) const UNTOUCHED: &str = "a packet that was not translated came out changed";
pub(crate) const NO_CHANGE: &str = "a translation was counted but the IP/L4 bytes did not change";
pub(crate) const STRAY_WRITE: &str = "a translated packet changed bytes its translation does not touch (only addresses, ports, ICMP type, checksums and, with XDP_REDIRECT, the MACs may change)";
pub(crate) const TARGET: &str = "a translated packet's new addresses are not what the translation gives (backend, frontend, swapped echo)";
pub(crate) const UNPARSEABLE: &str = "translated a packet the parser must pass untouched (IPv4 options, fragment, wrong protocol or ICMP type)";
pub(crate) const NOT_IPV4: &str = "translated a packet that is neither IPv4 nor IPv6";
pub(crate) const V4_MAPPED: &str = "an IPv6 packet whose addresses are the IPv4-mapped forms (::ffff:a.b.c.d) of an IPv4 frontend, or of a tracked IPv4 flow's backend and client, is taken for that IPv4 traffic (flow opened, IPv6 header rewritten to ::ffff:backend, forwarded or dropped) instead of being passed untouched: no IPv6 service has such addresses, and keys do not tell the families apart";
pub(crate) const TRAILER_WRITE: &str = "an ICMP error translation wrote past the end of the IPv4 packet (its total length) into trailing bytes of the frame: with a quote that stops after 8 L4 bytes, the 'quoted TCP checksum' it updates is whatever follows the packet, and it folds that change into the ICMP checksum, which comes out wrong";
pub(crate) const CHECKSUM: &str =
    "forwarded a packet with a wrong checksum (its checksums were valid on the way in)";
pub(crate) const CHECKSUM_ERROR: &str = "forwarded a corrupt packet whose checksum error changed";
pub(crate) const UDP_ZERO: &str = "a UDP checksum changed between zero (none) and non-zero";
pub(crate) const TOTAL_LENGTH: &str = "translated and forwarded a packet whose IPv4 total length disagrees with the frame (more bytes than the frame holds, or too few for the headers the program rewrites); it must pass untouched as pass_malformed";
pub(crate) const SNAT_PORT_STALL: &str = "full NAT dropped a well-formed new flow as drop_no_snat_port: a client that reuses its source port gets no new flow after 8 (FULLNAT_PORT_ATTEMPTS) connections, because every new flow of one 5-tuple searches the same ports (from the flow's hash) and the earlier flows' reply entries hold them until idle past the service timeout (24h for TCP); clients that reuse ports must never stall";
pub(crate) const EXPECTED: &str = "a well-formed packet did not get its expected fate";

impl Findings {
    pub(crate) fn add(&mut self, what: &'static str, example: impl FnOnce() -> String) {
        let entry = self.0.entry(what).or_insert_with(|| (0, String::new()));
        if entry.0 == 0 {
            entry.1 = example();
        }
        entry.0 += 1;
    }

    pub(crate) fn print(&self) {
        for (what, (count, example)) in &self.0 {
            println!("\nFOUND {count}x: {what}\nfirst case: {example}");
        }
    }

    pub(crate) fn assert_none(&self, seed: u64) {
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

pub(crate) struct Runner<'a> {
    pub(crate) dp: Dataplane,
    pub(crate) model: &'a Model,
    pub(crate) ifaces: Interfaces,
    /// Counters after the last run.
    pub(crate) last: StatsSnapshot,
    pub(crate) findings: Findings,
    /// Runs the program saw.
    pub(crate) runs: u64,
    /// Frames BPF_PROG_TEST_RUN refused (shorter than an Ethernet header).
    pub(crate) refused: u64,
    /// Runs whose IP/L4 bytes changed.
    pub(crate) changed: u64,
    pub(crate) index: u64,
    /// The IPv6 flow the last run opened (`run` returns IPv4 ones).
    pub(crate) opened6: Option<Flow6>,
    /// IPv6 translations checked: forward, reply.
    pub(crate) checked6: [u64; 2],
    /// Datagrams answered "port unreachable": one is dropped instead only past a window's
    /// budget of answers, so only once at least that many were answered.
    pub(crate) unreachable_answers: u64,
}

impl<'a> Runner<'a> {
    pub(crate) fn new(dp: Dataplane, model: &'a Model, ifaces: Interfaces) -> Self {
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
            unreachable_answers: 0,
        }
    }

    /// Runs one case, checks it, and returns the flow it opened, if any.
    pub(crate) fn run(&mut self, case: &Case) -> Option<Flow> {
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
                    "case #{index}: {}\n  ingress {ingress}\n  in  ({} bytes): {}\n  action {}, hand-off {:?}, counters: {}\n  out ({} bytes): {}\n  {detail}",
                    case.what,
                    case.frame.len(),
                    hex(&case.frame),
                    out.action,
                    out.handoff,
                    moved(),
                    out.packet.len(),
                    hex(&out.packet),
                )
            });
        }
        flow
    }

    pub(crate) fn check(
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
        // A packet refused for want of a backend is answered (a TCP SYN with the RST's bare
        // headers, a datagram with ICMP "port unreachable"), checked below.
        let answered_rst = d(StatSlot::FlowReset) == 1;
        let answered = answered_rst || d(StatSlot::RefusedNoBackend) == 1;
        if out.packet.len() != frame.len() && !answered {
            fail(
                LENGTH,
                format!("{} bytes in, {} out", frame.len(), out.packet.len()),
            );
        }
        if let Some(handoff) = out.handoff
            && (handoff.kind != handoff::FORWARD
                || (handoff.ifindex != self.ifaces.client
                    && handoff.ifindex != self.ifaces.backend))
        {
            fail(META, format!("{handoff:?}"));
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
                Some((action, handed)) => {
                    if out.action != action || out.handoff.is_some() != handed {
                        fail(
                            ACTION,
                            format!(
                                "{} means action {action}, handed to TC {handed}",
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
        // (An answer is not a translation: not counted with them.)
        if changed && !answered {
            self.changed += 1;
        }
        if translation.is_empty() && out.packet != *frame && !answered {
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
                // Either scheduler places a mid-flow packet without a flow (by the hash).
                let (src, dst) = endpoints(ip_out);
                let fine = d(StatSlot::NatForward) == 1
                    && s.backends.contains(&dst)
                    && (!s.fullnat || is_snat_source(src))
                    && (s.fullnat || src == endpoints(ip).0 || is_port_remap(src, endpoints(ip).0));
                if d(StatSlot::DropNoSnatPort) == 1 {
                    fail(SNAT_PORT_STALL, String::new());
                } else if !fine {
                    fail(
                        EXPECTED,
                        format!(
                            "to a frontend with backends {:?}: translated to one of them (full NAT {}: from the node's address toward them, port {FULLNAT_PORT_MIN}-{FULLNAT_PORT_MAX}), whether it opens its flow or not",
                            s.backends, s.fullnat
                        ),
                    );
                }
            }
            (Class::ToEmptyFrontend, Some(ip), _) if refused_with_rst(ip) => {
                let l3 = l3.expect("IPv4");
                let rst = parse_ipv4(&untagged(&out.packet, l3)).ok();
                let (client, frontend) = endpoints(ip);
                // Sent like any reply (dropped when the client has no route: the action
                // check above holds it to its outcome).
                let fine = answered_rst
                    && d(StatSlot::RefusedNoBackend) == 1
                    && d(StatSlot::DropNoBackend) == 0
                    && rst.is_some_and(|r| {
                        r.src == frontend
                            && r.dst == client
                            && r.tcp_flags.is_some_and(|f| f & TCP_RST != 0)
                    });
                if !fine {
                    fail(
                        EXPECTED,
                        "to a frontend without backends, a TCP SYN: answered with a RST from the \
                         frontend to the client, valid checksums (refused_no_backend, \
                         flow_reset)"
                            .into(),
                    );
                }
            }
            (Class::ToEmptyFrontend, Some(ip), _) if ip[9] == proto::UDP => {
                let l3 = l3.expect("IPv4");
                let (client, frontend) = endpoints(ip);
                let answer = untagged(&out.packet, l3);
                // ICMP "port unreachable" from the frontend, quoting the IP and UDP headers;
                // past this CPU's budget of answers, dropped.
                let answered_fine = d(StatSlot::RefusedNoBackend) == 1
                    && d(StatSlot::DropNoBackend) == 0
                    && parse_icmpv4(&answer)
                        .is_ok_and(|message| message[..2] == [3, 3] && message[8..] == ip[..28])
                    && answer[26..30] == frontend.ip().octets()
                    && answer[30..34] == client.ip().octets();
                let dropped_fine = d(StatSlot::DropNoBackend) == 1
                    && d(StatSlot::RefusedNoBackend) == 0
                    && out.action == XDP_DROP
                    && self.unreachable_answers
                        >= u64::from(lb_common::limits::UNREACHABLE_PER_CPU_PER_WINDOW);
                self.unreachable_answers += u64::from(answered_fine);
                if !answered_fine && !dropped_fine {
                    fail(
                        EXPECTED,
                        "to a frontend without backends, a UDP datagram: answered ICMP port \
                         unreachable from the frontend to the client, quoting its IP and UDP \
                         headers, valid checksums (refused_no_backend); or, past the budget, \
                         dropped (drop_no_backend)"
                            .into(),
                    );
                }
            }
            (Class::ToEmptyFrontend, ..) => {
                if d(StatSlot::DropNoBackend) != 1 || out.action != XDP_DROP || answered {
                    fail(
                        EXPECTED,
                        "to a frontend without backends, a TCP packet but a SYN: drop_no_backend"
                            .into(),
                    );
                }
            }
            (Class::Reply { service, client }, Some(_), Some(ip_out)) => {
                let s = &self.model.services[&service];
                let (src, dst) = endpoints(ip_out);
                // From its entry, or, for an unconfirmed flow to a backend endpoint with one
                // frontend (no reply entry until confirmed), as a reply no entry covers.
                let translated = d(StatSlot::NatReply) + d(StatSlot::NatReplyStateless) == 1;
                // A client the node does not forward to (outside its two connected subnets:
                // no route, blackhole, unreachable), or that claimed a node address (a
                // spoofed source: the node's own packets never enter by XDP): without the
                // reply entry (an unconfirmed flow), its reply passes untouched, as any reply
                // no entry covers whose route is not forwarded, and the kernel drops (or
                // answers) it.
                let passed = unrouted(client)
                    && d(StatSlot::PassNotFrontend) == 1
                    && out.packet == case.frame;
                if !passed && (!translated || !s.frontends.contains(&src) || dst != client) {
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
                    let translated = d(StatSlot::IcmpErrorToClient) == 1
                        && s.frontends.contains(&quote.1)
                        && quote.0 == client
                        && outer.1.ip() == client.ip();
                    // A client the node does not forward to, or that claimed a node address
                    // (see the reply above): without the reply entry, an error about its flow
                    // is left untouched, as an error about the node's own packet to the
                    // backend is.
                    translated || unrouted(client) && out.packet == case.frame
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
                    // From its entry, or without one (see the IPv4 reply above).
                    d(StatSlot::NatReply) + d(StatSlot::NatReplyStateless),
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
    pub(crate) fn fate6(
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
    pub(crate) fn check_translated6(
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
            (
                StatSlot::NatForward | StatSlot::NatReply | StatSlot::NatReplyStateless,
                proto::TCP,
            ) => 60,
            (
                StatSlot::NatForward | StatSlot::NatReply | StatSlot::NatReplyStateless,
                proto::UDP,
            ) => 48,
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
    pub(crate) fn check_translated(
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
            (
                StatSlot::NatForward | StatSlot::NatReply | StatSlot::NatReplyStateless,
                proto::TCP,
            ) => 40,
            (
                StatSlot::NatForward | StatSlot::NatReply | StatSlot::NatReplyStateless,
                proto::UDP,
            ) => 28,
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
            // Without an entry: the source only (never full NAT, never a remapped client).
            StatSlot::NatReplyStateless => may.extend([
                12..16,
                20..22,
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
            // A frontend of a `nat` service the sender is a backend of; to whom it was sent.
            StatSlot::NatReplyStateless => {
                self.model
                    .service_of
                    .get(&Endpoint {
                        addr: src,
                        proto: protocol,
                    })
                    .is_some_and(|id| {
                        let s = &self.model.services[id];
                        !s.fullnat && s.backends.contains(&in_src)
                    })
                    && dst == in_dst
            }
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

/// Whether IPv4 packet `ip` (no options: a well-formed case's) is a TCP SYN (no ACK, no RST):
/// refused with a RST when its frontend has no usable backend.
fn refused_with_rst(ip: &[u8]) -> bool {
    ip[9] == proto::TCP
        && ip
            .get(20 + 13)
            .is_some_and(|flags| flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN)
}

/// A client the node does not forward to (outside its two connected subnets: no route,
/// blackhole, unreachable), or that claimed a node address (a spoofed source: the node's own
/// packets never enter by XDP).
fn unrouted(client: SocketAddrV4) -> bool {
    let o = client.ip().octets();
    [NODE_CLIENT_SIDE, NODE_BACKEND_SIDE].contains(client.ip())
        || o[..3] != [198, 18, 1] && o[..3] != [198, 18, 2]
}
