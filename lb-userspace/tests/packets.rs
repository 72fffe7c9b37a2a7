//! The real kernel program, loaded exactly as lbd loads it, run on crafted packets with
//! BPF_PROG_TEST_RUN. Each case checks the action, the exact bytes out (checksums verified
//! by an independent implementation) and the counters.

#[path = "packets/aggregate.rs"]
mod aggregate;
#[path = "packets/conntrack_filter.rs"]
mod conntrack_filter;
#[path = "packets/frontend_filter.rs"]
mod frontend_filter;
#[path = "packets/icmpv6_errors.rs"]
mod icmpv6_errors;
#[path = "packets/partial.rs"]
mod partial;
#[path = "packets/refusals.rs"]
mod refusals;
#[path = "packets/tunnel_ecn.rs"]
mod tunnel_ecn;

use std::net::SocketAddrV4;

use lb_common::{
    Addr,
    hash::flow_hash,
    maps::{FlowKey, Handoff, proto},
    stats::StatSlot,
};
use lb_testkit::{
    e2e_enabled,
    packet::{
        CLIENT_MAC, Ipv4Frame, Ipv6Frame, L4, NODE_MAC, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST,
        TCP_SYN, icmpv4_error, icmpv4_frame, icmpv6_frame, parse_icmpv4, parse_icmpv6, parse_ipv4,
        parse_ipv6, refresh_checksums, tunnel_inner, tunnel_wrap, with_mss, with_vlan_tags,
    },
    progtest::{
        self, CLIENT, Loaded, NODE_CLIENT_SIDE, ProgNode, ProgOutcome, assert_deltas, backend_mac,
        delta, pin_to_cpu,
    },
};
use lb_userspace::plan;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

const VIP: &str = "198.18.100.1";

fn sock(ip: &str, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip.parse().unwrap(), port)
}

/// A third link of the node, with jumbo frames: a packet that came in by it may be longer
/// than the 1500-byte links and still be one packet, not an aggregate (see `aggregate`).
const JUMBO_IF: &str = "lbj";

/// `with_program` with the node's jumbo link (`JUMBO_IF`); `test` gets its index too.
fn with_jumbo_link(services: &str, test: impl FnOnce(Loaded, u32) + Send) {
    with_jumbo_link_edited(services, |_| {}, test);
}

/// `with_jumbo_link` with the parsed file changed by `edit` (see `ProgNode::run_with`).
fn with_jumbo_link_edited(
    services: &str,
    edit: impl FnOnce(&mut lb_userspace::source::file::ServiceFile) + Send,
    test: impl FnOnce(Loaded, u32) + Send,
) {
    let link = [
        format!("link add {JUMBO_IF} mtu 9000 type veth peer name {JUMBO_IF}-peer mtu 9000"),
        format!("link set {JUMBO_IF} up"),
        format!("link set {JUMBO_IF}-peer up"),
    ];
    ProgNode::new("pkt", &link)
        .expect("node namespace")
        .run_with(services, 4096, edit, |lb| {
            let jumbo = lb_userspace::dataplane::ifindex(JUMBO_IF).expect("jumbo link");
            test(lb, jumbo)
        })
        .expect("program loaded");
}

/// The ICMPv4 "fragmentation needed" message (type 3, code 4) with next-hop MTU `mtu`,
/// quoting the first 548 bytes of `frame`'s IP packet (what fits in 576 bytes), as the program
/// answers a packet too big.
fn frag_needed(mtu: u16, frame: &[u8]) -> Vec<u8> {
    let mut message = vec![3, 4, 0, 0, 0, 0];
    message.extend_from_slice(&mtu.to_be_bytes());
    message.extend_from_slice(&frame[14..14 + 548]);
    message
}

/// The ICMPv4 error the node sends the client, as `icmpv4_frame` builds it but with the
/// identification 0 the program writes (the builder writes 1), its header checksum redone.
fn node_icmpv4(src: std::net::Ipv4Addr, dst: std::net::Ipv4Addr, message: &[u8]) -> Vec<u8> {
    let mut frame = icmpv4_frame((CLIENT_MAC, NODE_MAC), src, dst, message);
    frame[18..20].copy_from_slice(&[0, 0]);
    frame[24..26].copy_from_slice(&[0, 0]);
    let c = lb_testkit::packet::checksum(&frame[14..34], 0);
    frame[24..26].copy_from_slice(&c.to_be_bytes());
    frame
}

/// Runs `test` on the program loaded with `services` in a fresh node namespace.
fn with_program(services: &str, test: impl FnOnce(Loaded) + Send) {
    ProgNode::new("pkt", &[])
        .expect("node namespace")
        .run(services, 4096, test)
        .expect("program loaded");
}

const ONE_BACKEND: &str = r#"
services:
  web:
    vip: 198.18.100.1
    ports: ["80:8080/tcp", "53:5353/udp"]
    backends: ["198.18.2.10"]
  published:
    ports: ["8000:9000/tcp"]
    backends: ["198.18.2.11"]
"#;

#[test]
fn established_flow_keeps_its_backend_and_replies_come_from_the_vip() {
    if !e2e_enabled() {
        return;
    }
    with_program(ONE_BACKEND, |mut lb| {
        let client = sock(CLIENT, 40001);
        let backend = sock("198.18.2.10", 8080);
        lb.run(&Ipv4Frame::tcp(client, sock(VIP, 80), TCP_SYN).build());
        let before = lb.stats();
        let ack = Ipv4Frame::tcp(client, sock(VIP, 80), TCP_ACK);
        let out = lb.run(&ack.build());
        assert_eq!(out.packet, ack.clone().with_dst(backend).build());
        assert_eq!(
            delta(&before, &lb.stats(), StatSlot::NewFlow),
            0,
            "no new flow on ACK"
        );

        // The backend answers the client; the node must translate the source back.
        let reply = Ipv4Frame::tcp(backend, client, TCP_SYN | TCP_ACK)
            .with_macs(backend_mac(0), lb.backend_if_mac);
        let out = lb.run_from(&reply.build(), lb.backend_if);
        assert_eq!(out.action, XDP_PASS);
        assert_eq!(out.handoff, Some(Handoff::forward(lb.client_if)));
        assert_eq!(out.packet, reply.clone().with_src(sock(VIP, 80)).build());
        assert_eq!(delta(&before, &lb.stats(), StatSlot::NatReply), 1);
        // One flow, two entries (forward and reply), in a table of the size asked for (one
        // entry more at a power of two, for twice the hash buckets).
        assert_eq!(lb.dp.conntrack_occupancy().unwrap(), (2, 4097));

        assert_eq!(delta(&before, &lb.stats(), StatSlot::NatReplyStateless), 0);
    });
}

#[test]
fn frames_for_another_hosts_mac_are_left_to_the_kernel() {
    if !e2e_enabled() {
        return;
    }
    with_program(ONE_BACKEND, |mut lb| {
        // What lbd writes when it attaches: the client-side interface's own MAC.
        lb.dp
            .set_interface_mac(lb.client_if, Some(NODE_MAC), false)
            .expect("INTERFACE_MACS");
        let client = sock(CLIENT, 40002);
        let syn = Ipv4Frame::tcp(client, sock(VIP, 80), TCP_SYN);
        // A bridge flooding a frame for another node (or a promiscuous interface): untouched,
        // counted, no flow opened.
        let elsewhere = syn
            .clone()
            .with_macs(CLIENT_MAC, [0x02, 0, 0, 0, 0, 0x99])
            .build();
        let before = lb.stats();
        let out = lb.run(&elsewhere);
        assert_eq!((out.action, out.handoff), (XDP_PASS, None));
        assert_eq!(out.packet, elsewhere);
        let after = lb.stats();
        assert_deltas(
            &before,
            &after,
            &[
                (StatSlot::PassOtherHost, 1),
                (StatSlot::NewFlow, 0),
                (StatSlot::NatForward, 0),
            ],
        );
        // A MAC one bit off its own, in any of the six bytes (not the group bit): another
        // host's too.
        for byte in 0..6 {
            let mut other = NODE_MAC;
            other[byte] ^= 0x04;
            let frame = syn.clone().with_macs(CLIENT_MAC, other).build();
            let before = lb.stats();
            assert_eq!(lb.run(&frame).action, XDP_PASS, "{other:02x?}");
            assert_eq!(
                delta(&before, &lb.stats(), StatSlot::PassOtherHost),
                1,
                "{other:02x?}"
            );
        }
        // Its own MAC, broadcast and multicast: served.
        for dst in [NODE_MAC, [0xff; 6], [0x01, 0x00, 0x5e, 0x00, 0x00, 0x01]] {
            let frame = syn.clone().with_macs(CLIENT_MAC, dst).build();
            let before = lb.stats();
            let out = lb.run(&frame);
            assert_eq!(
                out.handoff,
                Some(Handoff::forward(lb.backend_if)),
                "{dst:02x?}"
            );
            assert_eq!(
                delta(&before, &lb.stats(), StatSlot::NatForward),
                1,
                "{dst:02x?}"
            );
        }
        // An interface whose MAC was never written is not filtered.
        lb.dp
            .set_interface_mac(lb.client_if, None, false)
            .expect("INTERFACE_MACS");
        let frame = Ipv4Frame::tcp(sock(CLIENT, 40003), sock(VIP, 80), TCP_SYN)
            .with_macs(CLIENT_MAC, [0x02, 0, 0, 0, 0, 0x99])
            .build();
        let before = lb.stats();
        lb.run(&frame);
        assert_eq!(delta(&before, &lb.stats(), StatSlot::PassOtherHost), 0);
        assert_eq!(delta(&before, &lb.stats(), StatSlot::NewFlow), 1);
    });
}

/// The hand-off to TC is written over a frame's Ethernet addresses; a frame that arrives
/// addressed so is forged (the TC program would send it where its bytes say) and is dropped
/// before TC sees it, whether the interface's MAC is known or not.
#[test]
fn a_frame_addressed_like_a_hand_off_to_tc_is_dropped() {
    if !e2e_enabled() {
        return;
    }
    with_program(ONE_BACKEND, |mut lb| {
        let frame = lb_testkit::progtest::with_handoff(
            Ipv4Frame::tcp(sock(CLIENT, 40004), sock(VIP, 80), TCP_SYN).build(),
            Handoff::forward(lb.backend_if),
        );
        assert_eq!(
            lb_testkit::progtest::handoff_in(&frame),
            Some(Handoff::forward(lb.backend_if)),
            "the frame reads as a hand-off"
        );
        for own in [Some(NODE_MAC), None] {
            lb.dp
                .set_interface_mac(lb.client_if, own, false)
                .expect("INTERFACE_MACS");
            let before = lb.stats();
            let out = lb.run(&frame);
            assert_eq!(out.action, XDP_DROP, "own MAC {own:02x?}");
            assert_deltas(
                &before,
                &lb.stats(),
                &[
                    (StatSlot::DropForgedHandoff, 1),
                    (StatSlot::NewFlow, 0),
                    (StatSlot::PassOtherHost, 0),
                ],
            );
        }
        // The address alone makes it one, whatever the rest says: a tunnel hand-off without a
        // peer cannot be read, but is dropped too.
        let mut other = frame.clone();
        other[4] = lb_common::maps::handoff::TUNNEL;
        assert_eq!(lb_testkit::progtest::handoff_in(&other), None);
        let before = lb.stats();
        assert_eq!(lb.run(&other).action, XDP_DROP);
        assert_eq!(delta(&before, &lb.stats(), StatSlot::DropForgedHandoff), 1);
        // Another kind is no hand-off: an interface may well have such an address.
        other[4] = b'x';
        lb.dp
            .set_interface_mac(lb.client_if, None, false)
            .expect("INTERFACE_MACS");
        let before = lb.stats();
        assert_eq!(
            lb.run(&other).handoff,
            Some(Handoff::forward(lb.backend_if)),
            "served"
        );
        assert_eq!(delta(&before, &lb.stats(), StatSlot::DropForgedHandoff), 0);
    });
}

/// The TC program's side of the hand-off: it forwards exactly what carries one, and nothing
/// else (the node's own traffic goes on untouched).
#[test]
fn the_tc_program_forwards_hand_offs_and_leaves_everything_else() {
    if !e2e_enabled() {
        return;
    }
    const TC_ACT_UNSPEC: i32 = -1;
    const TC_ACT_SHOT: i32 = 2;
    const TC_ACT_REDIRECT: i32 = 7;
    with_program(ONE_BACKEND, |mut lb| {
        let frame = Ipv4Frame::tcp(sock(CLIENT, 40005), sock("198.18.2.10", 8080), TCP_ACK);
        let handed =
            |handoff: Handoff| lb_testkit::progtest::with_handoff(frame.clone().build(), handoff);
        // (what, frame, TC's answer, the TC counter that moves)
        let cases = [
            (
                "a hand-off to forward",
                handed(Handoff::forward(lb.backend_if)),
                TC_ACT_REDIRECT,
                Some(StatSlot::TcRedirectNeigh),
            ),
            ("no hand-off", frame.clone().build(), TC_ACT_UNSPEC, None),
            (
                "a hand-off of no kind",
                {
                    let mut f = handed(Handoff::forward(lb.backend_if));
                    f[4] = b'x';
                    f
                },
                TC_ACT_UNSPEC,
                None,
            ),
            (
                "a tunnel hand-off to a peer the tunnel does not know",
                handed(Handoff::tunnel(1, lb.backend_if)),
                TC_ACT_SHOT,
                Some(StatSlot::TcTunnelFailed),
            ),
        ];
        for (what, frame, answer, counter) in cases {
            let before = lb.stats();
            assert_eq!(lb.run_tc(&frame), answer, "{what}");
            let after = lb.stats();
            for slot in [
                StatSlot::TcRedirectNeigh,
                StatSlot::TcRedirectFailed,
                StatSlot::TcTunnelFailed,
            ] {
                let want = u64::from(counter == Some(slot));
                assert_eq!(
                    delta(&before, &after, slot),
                    want,
                    "{what}: {}",
                    slot.label()
                );
            }
        }
    });
}

/// One packet in, its fate out: the Katran-style table of the cases that need no flow
/// opened first. Each runs on the program as loaded with `FIXTURE_SERVICES`, in order.
struct Fixture {
    what: &'static str,
    packet_in: Vec<u8>,
    verdict: Verdict,
    /// The exact bytes out; `None`: the packet must come out untouched.
    packet_out: Option<Vec<u8>>,
    /// Counters that must move by exactly this much (others may move too).
    counters: &'static [(StatSlot, u64)],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// XDP_PASS handed to TC (`Handoff`) with the backend-side interface (the TC program
    /// sends it).
    ToBackendViaTc,
    /// The same, naming the client-side interface.
    ToClientViaTc,
    /// XDP_PASS not handed to TC: the kernel's own.
    Pass,
    Drop,
}

const FIXTURE_SERVICES: &str = r#"
services:
  web:
    vip: 198.18.100.1
    ports: ["80:8080/tcp", "53:5353/udp"]
    backends: ["198.18.2.10"]
  published:
    ports: ["8000:9000/tcp"]
    backends: ["198.18.2.11"]
  empty:
    vip: 198.18.100.2
    ports: ["80/tcp", "53/udp"]
    backends: []
  drained:
    vip: 198.18.100.3
    ports: ["80/tcp"]
    backends: [{ address: 198.18.2.10, weight: 0 }]
  empty6:
    vip: "fd00:100::2"
    ports: ["53/udp"]
    backends: []
"#;

/// `frame` with `edit` applied.
fn edited(frame: &[u8], edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut f = frame.to_vec();
    edit(&mut f);
    f
}

/// A packet refused for want of a backend and not answered: dropped, counted
/// `drop_no_backend`, nothing sent.
fn unanswered(what: &'static str, packet_in: Vec<u8>) -> Fixture {
    Fixture {
        what,
        packet_in,
        verdict: Verdict::Drop,
        packet_out: None,
        counters: &[
            (StatSlot::DropNoBackend, 1),
            (StatSlot::RefusedNoBackend, 0),
            (StatSlot::FlowReset, 0),
            (StatSlot::NewFlow, 0),
        ],
    }
}

/// `frame` sent to the link-layer address `mac`.
fn to_mac(frame: &[u8], mac: [u8; 6]) -> Vec<u8> {
    edited(frame, |f| f[..6].copy_from_slice(&mac))
}

fn fixtures() -> Vec<Fixture> {
    use Verdict::*;
    let web = sock("198.18.2.10", 8080);
    let syn = Ipv4Frame::tcp(sock(CLIENT, 40000), sock(VIP, 80), TCP_SYN);
    let published = Ipv4Frame::tcp(sock(CLIENT, 40002), sock(NODE_CLIENT_SIDE, 8000), TCP_SYN);
    let udp = Ipv4Frame::udp(sock(CLIENT, 5000), sock(VIP, 53));
    let udp_no_checksum = Ipv4Frame {
        l4: L4::UdpNoChecksum,
        ..Ipv4Frame::udp(sock(CLIENT, 5001), sock(VIP, 53))
    };
    let other = Ipv4Frame::tcp(sock(CLIENT, 40003), sock(VIP, 80), TCP_SYN).build();
    let empty_udp = Ipv4Frame::udp(sock(CLIENT, 5002), sock("198.18.100.2", 53)).build();
    let untouched = |what, packet_in: Vec<u8>, slot: &'static [(StatSlot, u64)]| Fixture {
        what,
        packet_in,
        verdict: Pass,
        packet_out: None,
        counters: slot,
    };
    // A service without a usable backend: a SYN refused with a RST from the VIP, anything
    // else dropped.
    let refused = |what, vip: &str| Fixture {
        what,
        packet_in: bare_syn(vip),
        verdict: ToClientViaTc,
        packet_out: Some(rst_to_bare_syn(vip)),
        counters: &[
            (StatSlot::RefusedNoBackend, 1),
            (StatSlot::FlowReset, 1),
            (StatSlot::TxViaTc, 1),
            (StatSlot::DropNoBackend, 0),
            (StatSlot::NewFlow, 0),
        ],
    };
    // Refusals no error may answer (lb-ebpf `sender`): like the answered ones below but for
    // the sender, or the frame's link-layer address.
    let syn_from = |client: &str| {
        Ipv4Frame::tcp(sock(client, 40500), sock("198.18.100.2", 80), TCP_SYN).build()
    };
    let datagram_from =
        |client: &str| Ipv4Frame::udp(sock(client, 5500), sock("198.18.100.2", 53)).build();
    let datagram6_from =
        |client: &str| Ipv6Frame::udp(sock6(client, 5500), sock6("fd00:100::2", 53)).build();
    vec![
        Fixture {
            what: "TCP SYN to a VIP: DNAT to its backend, handed to TC",
            packet_in: syn.build(),
            verdict: ToBackendViaTc,
            packet_out: Some(syn.clone().with_dst(web).build()),
            counters: &[
                (StatSlot::Rx, 1),
                (StatSlot::NewFlow, 1),
                (StatSlot::NatForward, 1),
                (StatSlot::TxViaTc, 1),
                (StatSlot::PassNotFrontend, 0),
            ],
        },
        Fixture {
            what: "TCP SYN to a port published on the node's address",
            packet_in: published.build(),
            verdict: ToBackendViaTc,
            packet_out: Some(published.with_dst(sock("198.18.2.11", 9000)).build()),
            counters: &[(StatSlot::NewFlow, 1), (StatSlot::NatForward, 1)],
        },
        Fixture {
            what: "UDP to a VIP",
            packet_in: udp.build(),
            verdict: ToBackendViaTc,
            packet_out: Some(udp.with_dst(sock("198.18.2.10", 5353)).build()),
            counters: &[(StatSlot::NewFlow, 1), (StatSlot::NatForward, 1)],
        },
        Fixture {
            what: "UDP without a checksum to a VIP: a zero checksum stays zero",
            packet_in: udp_no_checksum.build(),
            verdict: ToBackendViaTc,
            packet_out: Some(udp_no_checksum.with_dst(sock("198.18.2.10", 5353)).build()),
            counters: &[(StatSlot::NatForward, 1)],
        },
        untouched(
            "ARP",
            edited(&other[..42], |f| {
                f[12..14].copy_from_slice(&0x0806u16.to_be_bytes())
            }),
            &[(StatSlot::PassNotFrontend, 1), (StatSlot::NewFlow, 0)],
        ),
        untouched(
            "not a frontend",
            Ipv4Frame::tcp(sock(CLIENT, 40003), sock("198.18.2.10", 22), TCP_SYN).build(),
            &[(StatSlot::PassNotFrontend, 1), (StatSlot::NewFlow, 0)],
        ),
        untouched(
            "a VIP's other port",
            Ipv4Frame::tcp(sock(CLIENT, 40003), sock(VIP, 81), TCP_SYN).build(),
            &[(StatSlot::PassNotFrontend, 1), (StatSlot::NewFlow, 0)],
        ),
        untouched(
            "a VIP's port in the other protocol",
            Ipv4Frame::udp(sock(CLIENT, 40003), sock(VIP, 80)).build(),
            &[(StatSlot::PassNotFrontend, 1), (StatSlot::NewFlow, 0)],
        ),
        untouched(
            "first fragment (MF)",
            edited(&other, |f| f[20] = 0x20),
            &[(StatSlot::PassFragment, 1), (StatSlot::NewFlow, 0)],
        ),
        untouched(
            "later fragment (offset 128 bytes)",
            edited(&other, |f| {
                f[20..22].copy_from_slice(&0x0010u16.to_be_bytes())
            }),
            &[(StatSlot::PassFragment, 1), (StatSlot::NewFlow, 0)],
        ),
        untouched(
            "IPv4 options (IHL 6)",
            edited(&other, |f| f[14] = 0x46),
            &[(StatSlot::PassIpOptions, 1), (StatSlot::NewFlow, 0)],
        ),
        untouched(
            "truncated TCP header",
            other[..14 + 20 + 10].to_vec(),
            &[(StatSlot::PassMalformed, 1), (StatSlot::NewFlow, 0)],
        ),
        untouched(
            "truncated IPv4 header",
            other[..14 + 12].to_vec(),
            &[(StatSlot::PassMalformed, 1), (StatSlot::NewFlow, 0)],
        ),
        untouched(
            "IP version 5",
            edited(&other, |f| f[14] = 0x55),
            &[(StatSlot::PassMalformed, 1), (StatSlot::NewFlow, 0)],
        ),
        untouched(
            "ICMP that is no echo or error for a flow",
            edited(&other, |f| f[23] = 1),
            &[(StatSlot::PassNotFrontend, 1), (StatSlot::NewFlow, 0)],
        ),
        refused(
            "a VIP without backends: a SYN is answered with a RST",
            "198.18.100.2",
        ),
        refused(
            "a VIP whose only backend is drained (weight 0): a SYN is answered with a RST",
            "198.18.100.3",
        ),
        unanswered(
            "a VIP without backends: a later segment is dropped (its retransmission may find a \
             backend back)",
            Ipv4Frame::tcp(sock(CLIENT, 40005), sock("198.18.100.2", 80), TCP_ACK).build(),
        ),
        unanswered(
            "a VIP without backends: a RST is dropped, never answered",
            Ipv4Frame::tcp(sock(CLIENT, 40004), sock("198.18.100.2", 80), TCP_RST).build(),
        ),
        Fixture {
            what: "a VIP without backends: a UDP datagram is answered ICMP port unreachable",
            packet_in: empty_udp.clone(),
            verdict: ToClientViaTc,
            packet_out: Some(port_unreachable(&empty_udp)),
            counters: &[
                (StatSlot::RefusedNoBackend, 1),
                (StatSlot::TxViaTc, 1),
                (StatSlot::DropNoBackend, 0),
                (StatSlot::FlowReset, 0),
                (StatSlot::NewFlow, 0),
            ],
        },
        unanswered("a SYN from 127.0.0.1: unanswered", syn_from("127.0.0.1")),
        unanswered("a SYN from 0.0.0.0: unanswered", syn_from("0.0.0.0")),
        unanswered("a SYN from 0.1.2.3: unanswered", syn_from("0.1.2.3")),
        unanswered(
            "a SYN from the VIP itself: unanswered",
            syn_from("198.18.100.2"),
        ),
        unanswered(
            "a datagram from 224.0.0.5: unanswered",
            datagram_from("224.0.0.5"),
        ),
        unanswered(
            "a datagram from 240.0.0.1: unanswered",
            datagram_from("240.0.0.1"),
        ),
        unanswered(
            "a datagram from 255.255.255.255: unanswered",
            datagram_from("255.255.255.255"),
        ),
        unanswered(
            "an IPv6 datagram from ::1: unanswered",
            datagram6_from("::1"),
        ),
        unanswered("an IPv6 datagram from ::: unanswered", datagram6_from("::")),
        unanswered(
            "an IPv6 datagram from ff02::1: unanswered",
            datagram6_from("ff02::1"),
        ),
        unanswered(
            "a host's SYN to the broadcast MAC: unanswered",
            to_mac(&syn_from(CLIENT), [0xff; 6]),
        ),
        unanswered(
            "a host's datagram to a multicast MAC: unanswered",
            to_mac(&datagram_from(CLIENT), [0x01, 0x00, 0x5e, 0, 0, 1]),
        ),
        // Its own stack would drop it, and its payload's length, which a RST's ack counts,
        // is unknown.
        unanswered(
            "a SYN with a data offset under the TCP header's length: unanswered",
            edited(&syn_from(CLIENT), |f| {
                f[14 + 20 + 12] = 4 << 4;
                refresh_checksums(f);
            }),
        ),
    ]
}

/// The ICMP "port unreachable" (type 3, code 3) from the frontend `frame` was sent to, to its
/// sender, quoting its IP and UDP headers: how the program refuses a datagram for want of a
/// backend.
fn port_unreachable(frame: &[u8]) -> Vec<u8> {
    let ip = &frame[14..];
    let address = |at: usize| std::net::Ipv4Addr::new(ip[at], ip[at + 1], ip[at + 2], ip[at + 3]);
    node_icmpv4(address(16), address(12), &icmpv4_error(3, 3, frame, 8))
}

/// A client's SYN to `vip`:80 without data (sequence number 1).
fn bare_syn(vip: &str) -> Vec<u8> {
    Ipv4Frame {
        payload: Vec::new(),
        ..Ipv4Frame::tcp(sock(CLIENT, 40004), sock(vip, 80), TCP_SYN)
    }
    .build()
}

/// The RST that refuses `bare_syn(vip)`, from the VIP (RFC 9293: a segment without ACK gets
/// seq 0, ack = its seq + 1 for the SYN, RST|ACK).
fn rst_to_bare_syn(vip: &str) -> Vec<u8> {
    expected_rst(sock(vip, 80), sock(CLIENT, 40004), TCP_RST | TCP_ACK, 0, 2)
}

/// The RST the program answers with: from `frontend` to `client`, `flags`, `seq` and `ack`,
/// headers only, window 0, toward the client's MAC.
fn expected_rst(
    frontend: SocketAddrV4,
    client: SocketAddrV4,
    flags: u8,
    seq: u32,
    ack: u32,
) -> Vec<u8> {
    let rst = Ipv4Frame {
        ip_id: 0,
        payload: Vec::new(),
        l4: L4::Tcp { flags, seq, ack },
        ..Ipv4Frame::tcp(frontend, client, 0).with_macs(CLIENT_MAC, NODE_MAC)
    };
    window_zero(rst.build(), 48)
}

#[test]
fn single_packet_fixtures() {
    if !e2e_enabled() {
        return;
    }
    with_program(FIXTURE_SERVICES, |mut lb| {
        let client_side = lb.client_if;
        check_fixtures(&mut lb, fixtures(), client_side);
    });
}

#[test]
fn datagrams_without_a_backend_are_answered_port_unreachable_within_a_budget() {
    if !e2e_enabled() {
        return;
    }
    use lb_common::limits::UNREACHABLE_PER_CPU_PER_WINDOW as BUDGET;
    const SERVICES: &str = r#"
services:
  empty:
    vip: 198.18.100.2
    ports: ["53/udp"]
    backends: []
  empty6:
    vip: "fd00:100::2"
    ports: ["53/udp"]
    backends: []
  web:
    vip: 198.18.100.1
    ports: ["53:5353/udp"]
    backends: ["198.18.2.10"]
"#;
    with_program(SERVICES, |mut lb| {
        // The budget is per CPU: every run on one.
        pin_to_cpu(0);
        // IPv6: ICMPv6 "port unreachable" (type 1, code 4) from the VIP, quoting the IPv6 and
        // UDP headers.
        let client6 = sock6("fd00:1::2", 5003);
        let vip6 = sock6("fd00:100::2", 53);
        let datagram6 = Ipv6Frame::udp(client6, vip6).build();
        let before = lb.stats();
        let out = lb.run(&datagram6);
        let mut message = vec![1, 4, 0, 0, 0, 0, 0, 0];
        message.extend_from_slice(&datagram6[14..14 + 48]);
        let expected = icmpv6_frame((CLIENT_MAC, NODE_MAC), *vip6.ip(), *client6.ip(), &message);
        assert_eq!(out.handoff, Some(Handoff::forward(lb.client_if)));
        assert_eq!(out.packet, expected);
        parse_icmpv6(&out.packet).expect("checksum");
        assert_deltas(
            &before,
            &lb.stats(),
            &[
                (StatSlot::RefusedNoBackend, 1),
                (StatSlot::DropNoBackend, 0),
            ],
        );

        // A datagram of a flow whose backends all left is answered too, as Linux answers
        // every datagram to a closed port (a TCP segment past the SYN is dropped instead).
        let client = sock(CLIENT, 5004);
        let flow = Ipv4Frame::udp(client, sock(VIP, 53)).build();
        assert_eq!(lb.run(&flow).handoff, Some(Handoff::forward(lb.backend_if)));
        lb.change(&SERVICES.replace(r#"["198.18.2.10"]"#, "[]"))
            .expect("web loses its backend");
        let out = lb.run(&flow);
        assert_eq!(out.packet, port_unreachable(&flow));

        // Past BUDGET answers in a window (2^UNREACHABLE_WINDOW_SHIFT ns), a datagram is only
        // dropped. From the start of a window (the program's clock is CLOCK_MONOTONIC_COARSE),
        // BUDGET + 1 datagrams take a few milliseconds.
        let window = || {
            let mut now = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: clock_gettime writes the timespec given.
            assert_eq!(
                unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut now) },
                0
            );
            (now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64)
                >> lb_common::limits::UNREACHABLE_WINDOW_SHIFT
        };
        let start = window();
        for _ in 0..200 {
            if window() != start {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let started = window();
        assert_ne!(started, start, "a new window within 2 s");
        let before = lb.stats();
        let answered = (0..=BUDGET)
            .map(|i| {
                let datagram = Ipv4Frame::udp(sock(CLIENT, 10_000 + i as u16), sock(VIP, 53));
                lb.run(&datagram.build()).action
            })
            .take_while(|action| *action != XDP_DROP)
            .count();
        assert_eq!(
            window(),
            started,
            "the datagrams took the window's whole second"
        );
        assert_eq!(answered, BUDGET as usize);
        assert_deltas(
            &before,
            &lb.stats(),
            &[
                (StatSlot::RefusedNoBackend, u64::from(BUDGET)),
                (StatSlot::DropNoBackend, 1),
            ],
        );
    });
}

/// Runs each fixture in order, arriving on `ingress`, and checks its fate.
fn check_fixtures(lb: &mut Loaded, fixtures: Vec<Fixture>, ingress: u32) {
    for f in fixtures {
        let what = f.what;
        let before = lb.stats();
        let out = lb.run_from(&f.packet_in, ingress);
        let (action, handoff) = match f.verdict {
            Verdict::ToBackendViaTc => (XDP_PASS, Some(Handoff::forward(lb.backend_if))),
            Verdict::ToClientViaTc => (XDP_PASS, Some(Handoff::forward(lb.client_if))),
            Verdict::Pass => (XDP_PASS, None),
            Verdict::Drop => (XDP_DROP, None),
        };
        assert_eq!(out.action, action, "{what}");
        if f.verdict != Verdict::Drop {
            assert_eq!(out.handoff, handoff, "{what}");
            let expected = f.packet_out.as_ref().unwrap_or(&f.packet_in);
            assert_eq!(&out.packet, expected, "{what}: the bytes out");
        }
        if f.packet_out.is_some() {
            let checked = match (&out.packet[12..14], out.packet[23]) {
                ([0x86, 0xdd], _) => parse_ipv6(&out.packet).map(drop),
                (_, 1) => parse_icmpv4(&out.packet).map(drop),
                _ => parse_ipv4(&out.packet).map(drop),
            };
            checked.unwrap_or_else(|e| panic!("{what}: checksums: {e}"));
        }
        let after = lb.stats();
        for (slot, n) in f.counters {
            assert_eq!(
                delta(&before, &after, *slot),
                *n,
                "{what}: {}",
                slot.label()
            );
        }
    }
}

/// A backend endpoint with one frontend (a VIP under `nat`) has its replies translated by
/// every node, tracked or not; every other backend's untracked replies pass untouched.
const STATELESS_SERVICES: &str = r#"
services:
  web:
    vip: 198.18.100.1
    ports: ["80:8080/tcp", "53:5353/udp"]
    backends: ["198.18.2.10", "198.18.2.11"]
  web6:
    vip: "fd00:100::1"
    ports: ["80:8080/tcp"]
    backends: ["fd00:2::a"]
  shared_a:
    vip: 198.18.100.3
    ports: ["80:7000/tcp"]
    backends: ["198.18.2.12"]
  shared_b:
    vip: 198.18.100.4
    ports: ["80:7000/tcp"]
    backends: ["198.18.2.12"]
  full:
    vip: 198.18.100.5
    ports: ["80:6000/tcp"]
    forwarding: fullnat
    backends: ["198.18.2.13"]
  published:
    ports: ["8000:9000/tcp"]
    backends: ["198.18.2.14"]
"#;

fn stateless_fixtures() -> Vec<Fixture> {
    use Verdict::*;
    let client = sock(CLIENT, 40100);
    let reply = |from: SocketAddrV4, flags| Ipv4Frame::tcp(from, client, flags);
    let translated = &[
        (StatSlot::NatReplyStateless, 1),
        (StatSlot::NatReply, 0),
        (StatSlot::TxViaTc, 1),
        (StatSlot::PassNotFrontend, 0),
    ];
    let untouched: &[(StatSlot, u64)] = &[
        (StatSlot::PassNotFrontend, 1),
        (StatSlot::NatReplyStateless, 0),
    ];
    let web = sock("198.18.2.10", 8080);
    let ack = reply(web, TCP_ACK | TCP_PSH);
    let other = reply(sock("198.18.2.11", 8080), TCP_ACK);
    let fin = reply(web, TCP_FIN | TCP_ACK);
    let udp = Ipv4Frame::udp(sock("198.18.2.10", 5353), client);
    let client6 = sock6("fd00:1::2", 40100);
    let v6 = Ipv6Frame::tcp(sock6("fd00:2::a", 8080), client6, TCP_ACK);
    let vip80 = sock(VIP, 80);
    vec![
        Fixture {
            what: "TCP from a backend with one VIP, no entry: source becomes the VIP",
            packet_in: ack.build(),
            verdict: ToClientViaTc,
            packet_out: Some(ack.clone().with_src(vip80).build()),
            counters: translated,
        },
        Fixture {
            what: "the VIP's other backend: the same VIP",
            packet_in: other.build(),
            verdict: ToClientViaTc,
            packet_out: Some(other.clone().with_src(vip80).build()),
            counters: translated,
        },
        Fixture {
            what: "a FIN from the backend: translated too (no state to close)",
            packet_in: fin.build(),
            verdict: ToClientViaTc,
            packet_out: Some(fin.clone().with_src(vip80).build()),
            counters: translated,
        },
        Fixture {
            what: "UDP from the backend's other port: that port's frontend",
            packet_in: udp.build(),
            verdict: ToClientViaTc,
            packet_out: Some(udp.clone().with_src(sock(VIP, 53)).build()),
            counters: translated,
        },
        Fixture {
            what: "IPv6: source becomes the IPv6 VIP",
            packet_in: v6.build(),
            verdict: ToClientViaTc,
            packet_out: Some(v6.clone().with_src(sock6("fd00:100::1", 80)).build()),
            counters: translated,
        },
        Fixture {
            what: "a backend two VIPs share: which one is answered needs the entry",
            packet_in: reply(sock("198.18.2.12", 7000), TCP_ACK).build(),
            verdict: Pass,
            packet_out: None,
            counters: untouched,
        },
        Fixture {
            what: "a full-NAT backend: untouched",
            packet_in: reply(sock("198.18.2.13", 6000), TCP_ACK).build(),
            verdict: Pass,
            packet_out: None,
            counters: untouched,
        },
        Fixture {
            what: "a backend of a port published on node addresses: untouched",
            packet_in: reply(sock("198.18.2.14", 9000), TCP_ACK).build(),
            verdict: Pass,
            packet_out: None,
            counters: untouched,
        },
        Fixture {
            what: "to the node's own address (a health check's answer): untouched",
            packet_in: Ipv4Frame::tcp(web, sock("198.18.2.1", 45000), TCP_SYN | TCP_ACK).build(),
            verdict: Pass,
            packet_out: None,
            counters: untouched,
        },
        Fixture {
            what: "the backend's address on a port no service uses: untouched",
            packet_in: reply(sock("198.18.2.10", 22), TCP_ACK).build(),
            verdict: Pass,
            packet_out: None,
            counters: &[
                (StatSlot::PassNotFrontend, 1),
                (StatSlot::NatReplyStateless, 0),
            ],
        },
    ]
}

/// `STATELESS_SERVICES` with `shared_b` moved onto 198.18.2.11:8080: that endpoint (a backend
/// of `web`) gets a second frontend, and 198.18.2.12:7000 keeps `shared_a`'s alone.
fn stateless_with_11_shared() -> String {
    let shared = STATELESS_SERVICES.replace(
        "  shared_b:\n    vip: 198.18.100.4\n    ports: [\"80:7000/tcp\"]\n    backends: [\"198.18.2.12\"]",
        "  shared_b:\n    vip: 198.18.100.4\n    ports: [\"80:8080/tcp\"]\n    backends: [\"198.18.2.11\"]",
    );
    assert_ne!(shared, STATELESS_SERVICES);
    shared
}

/// The first client (ports from `first`, 64 tried) whose SYN to `vip` Maglev places on
/// `backend`; the SYN that found it opened its flow.
fn syn_placed_on(
    lb: &mut Loaded,
    vip: SocketAddrV4,
    backend: SocketAddrV4,
    first: u16,
) -> SocketAddrV4 {
    (first..first + 64)
        .map(|port| sock(CLIENT, port))
        .find(|&client| {
            let out = lb.run(&Ipv4Frame::tcp(client, vip, TCP_SYN).build());
            parse_ipv4(&out.packet).unwrap().dst == backend
        })
        .unwrap_or_else(|| panic!("a client port that Maglev places on {backend}"))
}

#[test]
fn an_unconfirmed_flow_whose_backend_gains_a_frontend_is_opened_again_by_its_next_syn() {
    if !e2e_enabled() {
        return;
    }
    use lb_common::maps::flow_kind;
    with_program(STATELESS_SERVICES, |mut lb| {
        // An unconfirmed flow to `web` on 198.18.2.11:8080, opened without a reply entry
        // (the endpoint has `web`'s VIP as its one frontend): the client port that lands there.
        let vip = sock(VIP, 80);
        let backend = sock("198.18.2.11", 8080);
        let client = syn_placed_on(&mut lb, vip, backend, 43400);
        let reply_key = forward_key(backend, client);
        assert!(lb.dp.tracked_flow(&reply_key).unwrap().is_none());
        // Its SYN sent again (the flow's one insert finds the key taken) follows the flow:
        // the same bytes out, no new flow, still no reply entry.
        let syn = Ipv4Frame::tcp(client, vip, TCP_SYN);
        let first = lb.run(&syn.build()).packet;
        let before = lb.stats();
        let again = lb.run(&syn.build());
        assert_eq!(again.packet, first);
        assert_eq!(delta(&before, &lb.stats(), StatSlot::NewFlow), 0);
        assert_eq!(delta(&before, &lb.stats(), StatSlot::NatForward), 1);
        assert!(lb.dp.tracked_flow(&reply_key).unwrap().is_none());

        // The endpoint gets a second frontend: its replies are no longer translated without
        // an entry, so this flow's SYN-ACK leaves untouched (the client refuses it).
        reload(&mut lb, &stateless_with_11_shared());
        let syn_ack = Ipv4Frame::tcp(backend, client, TCP_SYN | TCP_ACK)
            .with_macs(backend_mac(0), lb.backend_if_mac);
        let out = lb.run_from(&syn_ack.build(), lb.backend_if);
        assert_eq!((out.action, out.handoff), (XDP_PASS, None));

        // The client's SYN again opens the flow anew, with a reply entry this time.
        let before = lb.stats();
        let out = lb.run(&Ipv4Frame::tcp(client, vip, TCP_SYN).build());
        assert_eq!(
            parse_ipv4(&out.packet).unwrap().dst,
            backend,
            "same Maglev choice"
        );
        assert_eq!(delta(&before, &lb.stats(), StatSlot::NewFlow), 1);
        assert_eq!(
            lb.dp.tracked_flow(&reply_key).unwrap().map(|f| f.kind),
            Some(flow_kind::REPLY)
        );
        let before = lb.stats();
        let out = lb.run_from(&syn_ack.build(), lb.backend_if);
        assert_eq!(out.packet, syn_ack.with_src(vip).build());
        assert_eq!(delta(&before, &lb.stats(), StatSlot::NatReply), 1);

        // A SYN again while the replies are translated follows the flow, as before.
        let before = lb.stats();
        lb.run(&Ipv4Frame::tcp(client, vip, TCP_SYN).build());
        assert_eq!(delta(&before, &lb.stats(), StatSlot::NewFlow), 0);
    });
}

/// A flow stamped by another CPU after this one read the clock (a reply's packet, say) is
/// not idle: its next packet follows it (an unsigned difference read as an eternity ended it).
#[test]
fn a_flow_stamped_after_the_clock_was_read_is_not_idle() {
    if !e2e_enabled() {
        return;
    }
    with_program(STATELESS_SERVICES, |mut lb| {
        let vip = sock(VIP, 80);
        let client = sock(CLIENT, 45500);
        let out = lb.run(&Ipv4Frame::tcp(client, vip, TCP_SYN).build());
        let backend = parse_ipv4(&out.packet).expect("checksums").dst;
        lb.run(&Ipv4Frame::tcp(client, vip, TCP_ACK).build());
        lb.stamp_flow_ahead(&forward_key(client, vip), std::time::Duration::from_secs(1));
        let before = lb.stats();
        let ack = Ipv4Frame::tcp(client, vip, TCP_ACK);
        let out = lb.run(&ack.build());
        assert_eq!(out.packet, ack.with_dst(backend).build());
        assert_deltas(
            &before,
            &lb.stats(),
            &[(StatSlot::NewFlow, 0), (StatSlot::FlowLost, 0)],
        );
    });
}

/// A SYN sent again whose unconfirmed flow lost its backend (the default policy, `move`)
/// opens the flow anew on a backend still there, as the first SYN of a new flow would: the
/// dead entry in `PENDING` is replaced, counted as moved.
#[test]
fn a_syn_sent_again_after_its_backend_left_opens_the_flow_on_another() {
    if !e2e_enabled() {
        return;
    }
    with_program(STATELESS_SERVICES, |mut lb| {
        let vip = sock(VIP, 80);
        let leaving = sock("198.18.2.11", 8080);
        let client = syn_placed_on(&mut lb, vip, leaving, 43500);
        let acking = syn_placed_on(&mut lb, vip, leaving, 44500);
        reload(
            &mut lb,
            &STATELESS_SERVICES.replace(
                r#"backends: ["198.18.2.10", "198.18.2.11"]"#,
                r#"backends: ["198.18.2.10"]"#,
            ),
        );
        // The other one's ACK moves it too: counted as moved, not as a flow the table lost
        // (it had its entry).
        let before = lb.stats();
        lb.run(&Ipv4Frame::tcp(acking, vip, TCP_ACK).build());
        assert_deltas(
            &before,
            &lb.stats(),
            &[(StatSlot::FlowMoved, 1), (StatSlot::FlowLost, 0)],
        );
        let before = lb.stats();
        let syn = Ipv4Frame::tcp(client, vip, TCP_SYN);
        let out = lb.run(&syn.build());
        let staying = sock("198.18.2.10", 8080);
        assert_eq!(out.packet, syn.clone().with_dst(staying).build());
        let after = lb.stats();
        assert_deltas(
            &before,
            &after,
            &[
                (StatSlot::FlowMoved, 1),
                (StatSlot::NewFlow, 1),
                (StatSlot::NatForward, 1),
            ],
        );
        // Its next SYN follows the flow opened anew.
        let out = lb.run(&syn.build());
        assert_eq!(out.packet, syn.with_dst(staying).build());
        assert_eq!(delta(&after, &lb.stats(), StatSlot::NewFlow), 0);
    });
}

#[test]
fn replies_no_entry_covers_leave_from_the_backends_one_frontend() {
    if !e2e_enabled() {
        return;
    }
    with_program(STATELESS_SERVICES, |mut lb| {
        let backend_side = lb.backend_if;
        check_fixtures(&mut lb, stateless_fixtures(), backend_side);
        // A tracked flow's replies still come from its entry (written when the client's
        // second packet confirms the flow).
        let client = sock(CLIENT, 40101);
        lb.run(&Ipv4Frame::tcp(client, sock(VIP, 80), TCP_SYN).build());
        lb.run(&Ipv4Frame::tcp(client, sock(VIP, 80), TCP_ACK).build());
        let before = lb.stats();
        let backend = lb
            .dp
            .tracked_flow(&lb_common::maps::FlowKey {
                src: Addr::from(*client.ip()),
                dst: Addr::from(VIP.parse::<std::net::Ipv4Addr>().unwrap()),
                sport_be: client.port().to_be(),
                dport_be: 80u16.to_be(),
                proto: proto::TCP,
                _pad: [0; 3],
            })
            .unwrap()
            .expect("tracked");
        let backend = SocketAddrV4::new(
            match std::net::IpAddr::from(backend.nat_addr) {
                std::net::IpAddr::V4(a) => a,
                other => panic!("{other}"),
            },
            u16::from_be(backend.nat_port_be),
        );
        let reply = Ipv4Frame::tcp(backend, client, TCP_SYN | TCP_ACK);
        let out = lb.run_from(&reply.build(), lb.backend_if);
        assert_eq!(out.packet, reply.with_src(sock(VIP, 80)).build());
        let after = lb.stats();
        assert_eq!(delta(&before, &after, StatSlot::NatReply), 1);
        assert_eq!(delta(&before, &after, StatSlot::NatReplyStateless), 0);

        // A reload that gives 198.18.2.11:8080 a second frontend takes its entry away (and
        // gives 198.18.2.12:7000, no longer shared, one).
        reload(&mut lb, &stateless_with_11_shared());
        let client = sock(CLIENT, 40102);
        let from_11 = Ipv4Frame::tcp(sock("198.18.2.11", 8080), client, TCP_ACK).build();
        let out = lb.run_from(&from_11, lb.backend_if);
        assert_eq!((out.action, out.handoff), (XDP_PASS, None));
        assert_eq!(
            out.packet, from_11,
            "198.18.2.11:8080 is shared now: untouched"
        );
        let from_12 = Ipv4Frame::tcp(sock("198.18.2.12", 7000), client, TCP_ACK);
        let out = lb.run_from(&from_12.build(), lb.backend_if);
        assert_eq!(out.handoff, Some(Handoff::forward(lb.client_if)));
        assert_eq!(
            out.packet,
            from_12.with_src(sock("198.18.100.3", 80)).build(),
            "198.18.2.12:7000 has one frontend now"
        );
    });
}

#[test]
fn xdp_redirect_when_the_egress_device_takes_xdp_frames() {
    if !e2e_enabled() {
        return;
    }
    with_program(ONE_BACKEND, |mut lb| {
        lb.dp.allow_xdp_redirect(lb.backend_if).unwrap();
        let before = lb.stats();
        let syn = Ipv4Frame::tcp(sock(CLIENT, 40005), sock(VIP, 80), TCP_SYN);
        let out = lb.run(&syn.build());
        assert_eq!(out.action, XDP_REDIRECT);
        assert_eq!(out.handoff, None);
        let expected = syn
            .with_dst(sock("198.18.2.10", 8080))
            .with_macs(lb.backend_if_mac, backend_mac(0))
            .build();
        assert_eq!(out.packet, expected, "MACs from the FIB lookup");
        assert_eq!(delta(&before, &lb.stats(), StatSlot::TxXdpRedirect), 1);

        // Later packets of the flow: the first stores the route in the flow's entry, the
        // next ones use it; the result must not change.
        let ack = Ipv4Frame::tcp(sock(CLIENT, 40005), sock(VIP, 80), TCP_ACK);
        let expected = ack
            .clone()
            .with_dst(sock("198.18.2.10", 8080))
            .with_macs(lb.backend_if_mac, backend_mac(0))
            .build();
        let key = lb_common::maps::FlowKey {
            src: lb_common::Addr::from(std::net::IpAddr::V4(*sock(CLIENT, 40005).ip())),
            dst: lb_common::Addr::from(VIP.parse::<std::net::IpAddr>().unwrap()),
            sport_be: 40005u16.to_be(),
            dport_be: 80u16.to_be(),
            proto: proto::TCP,
            _pad: [0; 3],
        };
        for i in 0..3 {
            let out = lb.run(&ack.build());
            // From the first ACK on, the flow's entry holds the route it was sent by.
            let flow = lb.dp.tracked_flow(&key).unwrap().expect("tracked");
            let mut macs = [0u8; 12];
            macs[..6].copy_from_slice(&backend_mac(0));
            macs[6..].copy_from_slice(&lb.backend_if_mac);
            assert_eq!(
                (flow.egress_ifindex, flow.egress_redirect, flow.egress_macs),
                (lb.backend_if, 1, macs),
                "route cache after packet {i}"
            );
            assert_eq!(
                (out.action, &out.packet),
                (XDP_REDIRECT, &expected),
                "packet {i}"
            );
        }
    });
}

#[test]
fn maglev_choice_matches_the_userspace_table_and_spreads_flows() {
    if !e2e_enabled() {
        return;
    }
    let services = r#"
services:
  web:
    vip: 198.18.100.1
    ports: ["80:8080/tcp"]
    maglev_table_size: 1021
    backends: ["198.18.2.10", "198.18.2.11", "198.18.2.12"]
"#;
    with_program(services, |mut lb| {
        let backends: Vec<_> = lb.desired.services[0].backends.clone();
        let mut hits = [0u32; 3];
        for port in 0..600u16 {
            let client = sock(CLIENT, 20000 + port);
            let out = lb.run(&Ipv4Frame::tcp(client, sock(VIP, 80), TCP_SYN).build());
            let got = parse_ipv4(&out.packet).expect("checksums").dst;
            // The kernel's choice is what `lbctl explain` computes from the same plan.
            let plan::Explanation::Maglev { backend, .. } = lb.desired.explain(
                proto::TCP,
                std::net::SocketAddr::V4(client),
                std::net::SocketAddr::V4(sock(VIP, 80)),
            ) else {
                panic!("a maglev service");
            };
            assert_eq!(std::net::SocketAddr::V4(got), backend, "flow {client}");
            let predicted = backends.iter().position(|b| b.target == backend).unwrap();
            hits[predicted] += 1;
        }
        for (i, n) in hits.iter().enumerate() {
            assert!(
                (150..=250).contains(n),
                "backend {i} got {n} of 600 flows: {hits:?}"
            );
        }
    });
}

#[test]
fn round_robin_rotates_new_flows_places_mid_flow_by_hash_and_a_syn_after_fin_starts_a_new_flow() {
    if !e2e_enabled() {
        return;
    }
    let services = r#"
services:
  web:
    vip: 198.18.100.1
    ports: ["80:8080/tcp"]
    scheduler: round-robin
    backends: ["198.18.2.10", "198.18.2.11", "198.18.2.12"]
"#;
    with_program(services, |mut lb| {
        pin_to_cpu(0);
        let mut order = Vec::new();
        for port in 0..9u16 {
            let out =
                lb.run(&Ipv4Frame::tcp(sock(CLIENT, 30000 + port), sock(VIP, 80), TCP_SYN).build());
            order.push(*parse_ipv4(&out.packet).unwrap().dst.ip());
        }
        // A strict rotation over the three backends.
        for i in 3..9 {
            assert_eq!(order[i], order[i - 3], "rotation: {order:?}");
        }
        let distinct: std::collections::BTreeSet<_> = order[..3].iter().collect();
        assert_eq!(distinct.len(), 3, "{order:?}");
        // A SYN sent again follows its unconfirmed flow and takes no turn of the rotation
        // (checked by the 10th flow below).
        for port in [30004u16, 30008] {
            let before = lb.stats();
            let out = lb.run(&Ipv4Frame::tcp(sock(CLIENT, port), sock(VIP, 80), TCP_SYN).build());
            let backend = *parse_ipv4(&out.packet).unwrap().dst.ip();
            assert_eq!(backend, order[usize::from(port - 30000)], "port {port}");
            assert_eq!(delta(&before, &lb.stats(), StatSlot::NewFlow), 0);
        }

        // Mid-flow packets of flows this node never saw (they entered by a node that died)
        // are picked up by the flow hash over the same sequence, as any node with this plan
        // would place them, and do not move the rotation.
        let plan::Explanation::RoundRobin { sequence, .. } = lb.desired.explain(
            proto::TCP,
            std::net::SocketAddr::V4(sock(CLIENT, 31000)),
            std::net::SocketAddr::V4(sock(VIP, 80)),
        ) else {
            panic!("a round-robin service");
        };
        let mut picked = std::collections::BTreeSet::new();
        // 13 of them, not a multiple of the 3 backends: had each taken a turn, the 10th new
        // flow below would land on another slot.
        for port in 31000..31013u16 {
            let client = sock(CLIENT, port);
            let key = FlowKey {
                src: Addr::from(*client.ip()),
                dst: Addr::from(VIP.parse::<std::net::Ipv4Addr>().unwrap()),
                sport_be: port.to_be(),
                dport_be: 80u16.to_be(),
                proto: proto::TCP,
                _pad: [0; 3],
            };
            let std::net::SocketAddr::V4(backend) =
                sequence[(flow_hash(&key) % sequence.len() as u32) as usize]
            else {
                panic!("an IPv4 backend");
            };
            picked.insert(backend);
            let before = lb.stats();
            let ack = Ipv4Frame::tcp(client, sock(VIP, 80), TCP_ACK | TCP_PSH);
            let out = lb.run(&ack.build());
            assert_eq!(out.action, XDP_PASS, "handed to TC");
            assert_eq!(
                out.packet,
                ack.clone().with_dst(backend).build(),
                "{client}"
            );
            let after = lb.stats();
            assert_deltas(
                &before,
                &after,
                &[
                    (StatSlot::FlowLost, 1),
                    (StatSlot::NewFlow, 1),
                    (StatSlot::NatForward, 1),
                ],
            );
            // Now tracked here: the next packet follows the flow.
            let out = lb.run(&ack.build());
            assert_eq!(out.packet, ack.clone().with_dst(backend).build());
            assert_eq!(delta(&after, &lb.stats(), StatSlot::NewFlow), 0);
        }
        assert!(picked.len() > 1, "the hash spreads: {picked:?}");

        // Client port reuse: FIN closes, the next SYN is a new flow on the next backend.
        let client = sock(CLIENT, 30000);
        let first = order[0];
        lb.run(&Ipv4Frame::tcp(client, sock(VIP, 80), TCP_FIN | TCP_ACK).build());
        let before = lb.stats();
        let out = lb.run(&Ipv4Frame::tcp(client, sock(VIP, 80), TCP_SYN).build());
        assert_eq!(delta(&before, &lb.stats(), StatSlot::NewFlow), 1);
        let again = *parse_ipv4(&out.packet).unwrap().dst.ip();
        assert_eq!(
            again, order[0],
            "the rotation continues: 10th flow, same slot as the 1st (picked-up flows took none)"
        );
        assert_eq!(again, first);
    });
}

fn sock6(ip: &str, port: u16) -> std::net::SocketAddrV6 {
    std::net::SocketAddrV6::new(ip.parse().unwrap(), port, 0, 0)
}

const IPV6_AND_FULLNAT: &str = r#"
services:
  web6:
    vip: "fd00:100::1"
    ports: ["80:8080/tcp"]
    backends: ["fd00:2::a"]
  full:
    vip: 198.18.100.4
    ports: ["80:8080/tcp", "53:5353/udp"]
    forwarding: fullnat
    backends: ["198.18.2.10"]
  web:
    vip: 198.18.100.1
    ports: ["80:8080/tcp", "53:5353/udp"]
    backends: ["198.18.2.10"]
"#;

#[test]
fn ipv6_flows_are_translated_both_ways() {
    if !e2e_enabled() {
        return;
    }
    with_program(IPV6_AND_FULLNAT, |mut lb| {
        let client = sock6("fd00:1::2", 40000);
        let vip = sock6("fd00:100::1", 80);
        let backend = sock6("fd00:2::a", 8080);
        let syn = Ipv6Frame::tcp(client, vip, TCP_SYN);
        let before = lb.stats();
        let out = lb.run(&syn.build());
        let after = lb.stats();
        let moved: Vec<_> = StatSlot::ALL
            .iter()
            .filter(|s| delta(&before, &after, **s) > 0)
            .map(|s| s.label())
            .collect();
        assert_eq!(out.action, XDP_PASS, "counters moved: {moved:?}");
        assert_eq!(
            out.handoff,
            Some(Handoff::forward(lb.backend_if)),
            "counters moved: {moved:?}"
        );
        assert_eq!(out.packet, syn.clone().with_dst(backend).build());
        parse_ipv6(&out.packet).expect("checksum");

        let reply = Ipv6Frame::tcp(backend, client, TCP_SYN | TCP_ACK)
            .with_macs(backend_mac(0), lb.backend_if_mac);
        let out = lb.run_from(&reply.build(), lb.backend_if);
        assert_eq!(out.handoff, Some(Handoff::forward(lb.client_if)));
        assert_eq!(out.packet, reply.with_src(vip).build());

        // IPv4-mapped addresses never appear on the wire; they must not alias IPv4 flows.
        let mapped = Ipv6Frame::tcp(
            sock6("::ffff:198.18.1.2", 40000),
            sock6("::ffff:198.18.100.1", 80),
            TCP_SYN,
        )
        .build();
        let before = lb.stats();
        let out = lb.run(&mapped);
        assert_eq!((out.action, &out.packet), (XDP_PASS, &mapped));
        assert_eq!(delta(&before, &lb.stats(), StatSlot::PassMalformed), 1);
    });
}

#[test]
fn vlan_tagged_frames_are_balanced_with_their_tags_kept() {
    if !e2e_enabled() {
        return;
    }
    with_program(IPV6_AND_FULLNAT, |mut lb| {
        for tags in [&[100u16][..], &[100, 200]] {
            let syn = Ipv4Frame::tcp(
                sock(CLIENT, 41000 + tags.len() as u16),
                sock(VIP, 80),
                TCP_SYN,
            );
            let before = lb.stats();
            let out = lb.run(&with_vlan_tags(&syn.build(), tags));
            let expected = with_vlan_tags(&syn.with_dst(sock("198.18.2.10", 8080)).build(), tags);
            assert_eq!(out.packet, expected, "tags {tags:?}");
            // Forwarded, not only rewritten: handed to TC toward the backends, and counted.
            assert_eq!(out.action, XDP_PASS, "tags {tags:?}");
            assert_eq!(
                out.handoff,
                Some(Handoff::forward(lb.backend_if)),
                "tags {tags:?}"
            );
            assert_eq!(
                delta(&before, &lb.stats(), StatSlot::NatForward),
                1,
                "tags {tags:?}"
            );
        }
    });
}

#[test]
fn fullnat_rewrites_both_ends_with_a_node_port_and_translates_replies_back() {
    if !e2e_enabled() {
        return;
    }
    with_program(IPV6_AND_FULLNAT, |mut lb| {
        let client = sock(CLIENT, 42000);
        let vip = sock("198.18.100.4", 80);
        let backend = sock("198.18.2.10", 8080);
        let syn = Ipv4Frame::tcp(client, vip, TCP_SYN);
        let out = lb.run(&syn.build());
        let seen = parse_ipv4(&out.packet).expect("checksums");
        assert_eq!(seen.dst, backend);
        assert_eq!(
            *seen.src.ip(),
            "198.18.2.1".parse::<std::net::Ipv4Addr>().unwrap(),
            "the node's address toward the backend"
        );
        let node_port = seen.src.port();
        assert!(
            (lb_common::limits::FULLNAT_PORT_MIN..=lb_common::limits::FULLNAT_PORT_MAX)
                .contains(&node_port)
        );
        assert_eq!(
            out.packet,
            syn.clone().with_dst(backend).with_src(seen.src).build()
        );

        // The next packet of the flow keeps the same node port.
        let ack = Ipv4Frame::tcp(client, vip, TCP_ACK);
        let out = lb.run(&ack.build());
        assert_eq!(out.packet, ack.with_dst(backend).with_src(seen.src).build());

        // The backend answers the node; the client gets it from the VIP.
        let reply = Ipv4Frame::tcp(backend, seen.src, TCP_SYN | TCP_ACK)
            .with_macs(backend_mac(0), lb.backend_if_mac);
        let out = lb.run_from(&reply.build(), lb.backend_if);
        assert_eq!(out.handoff, Some(Handoff::forward(lb.client_if)));
        assert_eq!(out.packet, reply.with_src(vip).with_dst(client).build());

        // A second client port gets a different node port.
        let other = lb.run(&Ipv4Frame::tcp(sock(CLIENT, 42001), vip, TCP_SYN).build());
        assert_ne!(parse_ipv4(&other.packet).unwrap().src.port(), node_port);
    });
}

/// A full-NAT flow's port search from `first` toward `vip`: its `FULLNAT_PORT_ATTEMPTS` ports
/// in order, and the next `n` clients (client ports above `first`'s) whose search is the same
/// (one in 4,536 ports), so each holds its ports in turn.
fn fullnat_search(
    vip: SocketAddrV4,
    first: SocketAddrV4,
    n: usize,
) -> (Vec<u16>, Vec<SocketAddrV4>) {
    use lb_common::limits::{FULLNAT_PORT_ATTEMPTS, FULLNAT_PORT_MAX, FULLNAT_PORT_MIN};
    let range = u32::from(FULLNAT_PORT_MAX - FULLNAT_PORT_MIN) + 1;
    let start = |client: SocketAddrV4| flow_hash(&forward_key(client, vip)) % range;
    let ports = (0..FULLNAT_PORT_ATTEMPTS)
        .map(|i| (u32::from(FULLNAT_PORT_MIN) + (start(first) + i) % range) as u16)
        .collect();
    let clients: Vec<SocketAddrV4> = (first.port() + 1..=65535)
        .map(|port| SocketAddrV4::new(*first.ip(), port))
        .filter(|&client| start(client) == start(first))
        .take(n)
        .collect();
    assert_eq!(clients.len(), n, "enough clients with {first}'s search");
    (ports, clients)
}

/// Full NAT's source-port search: a flow takes the first port, from its hash, of the
/// `FULLNAT_PORT_ATTEMPTS` ports of the range whose reply entry no live flow holds; with all of
/// them held, the flow is dropped and counted. Flows whose hashes start at the same port
/// (found by searching client ports) toward the one backend make each port held in turn.
#[test]
fn fullnat_takes_the_next_free_port_of_its_search_and_drops_when_every_one_is_held() {
    if !e2e_enabled() {
        return;
    }
    use lb_common::limits::FULLNAT_PORT_ATTEMPTS;
    with_program(IPV6_AND_FULLNAT, |mut lb| {
        let vip = sock("198.18.100.4", 80);
        let first = sock(CLIENT, 20000);
        let (search, same_start) = fullnat_search(vip, first, FULLNAT_PORT_ATTEMPTS as usize);
        for (i, &client) in std::iter::once(&first).chain(&same_start).enumerate() {
            let before = lb.stats();
            let syn = Ipv4Frame::tcp(client, vip, TCP_SYN);
            let out = lb.run(&syn.build());
            if i < FULLNAT_PORT_ATTEMPTS as usize {
                // Unconfirmed flows hold their reply entries too: the i-th takes the i-th port.
                let seen = parse_ipv4(&out.packet).expect("checksums");
                assert_eq!(seen.src.port(), search[i], "flow {i} ({client})");
                assert_eq!(
                    out.packet,
                    syn.with_dst(sock("198.18.2.10", 8080))
                        .with_src(seen.src)
                        .build()
                );
                assert_eq!(delta(&before, &lb.stats(), StatSlot::NewFlow), 1);
            } else {
                assert_eq!(out.action, XDP_DROP, "every port of the search is held");
                assert_eq!(delta(&before, &lb.stats(), StatSlot::DropNoSnatPort), 1);
                assert_eq!(delta(&before, &lb.stats(), StatSlot::NewFlow), 0);
            }
        }
    });
}

/// Opens and confirms a full-NAT flow from `client` to `vip` (its SYN, then its ACK); the
/// node address and port its backend sees.
fn open_fullnat_flow(lb: &mut Loaded, client: SocketAddrV4, vip: SocketAddrV4) -> SocketAddrV4 {
    let out = lb.run(&Ipv4Frame::tcp(client, vip, TCP_SYN).build());
    let node = parse_ipv4(&out.packet).expect("checksums").src;
    lb.run(&Ipv4Frame::tcp(client, vip, TCP_ACK).build());
    node
}

/// Under full NAT a closed flow's node port is held for the backend's TIME_WAIT only when the
/// backend closed first (its FIN, seen here since its replies all come to this node): it
/// would take a new SYN on that port for the old connection. A flow the client closed first
/// leaves the backend nothing to wait for, and frees its port after the closing timeout. A
/// flow only one side closed is alive: the other may still send.
#[test]
fn fullnat_holds_a_node_port_through_the_backends_time_wait_when_the_backend_closed_first() {
    if !e2e_enabled() {
        return;
    }
    use lb_common::limits::{
        BACKEND_TIME_WAIT_S, TCP_CLOSING_TIMEOUT_S, TCP_HALF_CLOSED_TIMEOUT_S,
    };
    const { assert!(TCP_CLOSING_TIMEOUT_S + 5 < BACKEND_TIME_WAIT_S) };
    const { assert!(BACKEND_TIME_WAIT_S < TCP_HALF_CLOSED_TIMEOUT_S) };
    const BY_CLIENT: bool = true;
    const BY_BACKEND: bool = false;
    const FIN: u8 = TCP_FIN | TCP_ACK;
    type Segments = &'static [(bool, u8)];
    let backend_first: Segments = &[(BY_BACKEND, FIN), (BY_CLIENT, FIN)];
    // (first client's port, how it closed: (from the client, flags), seconds since, the port
    // still held)
    let cases: [(u16, &str, Segments, u32, bool); 7] = [
        (
            20000,
            "backend first",
            backend_first,
            TCP_CLOSING_TIMEOUT_S + 5,
            true,
        ),
        (
            21000,
            "backend first",
            backend_first,
            BACKEND_TIME_WAIT_S + 1,
            false,
        ),
        (
            22000,
            "client first",
            &[(BY_CLIENT, FIN), (BY_BACKEND, FIN)],
            TCP_CLOSING_TIMEOUT_S + 5,
            false,
        ),
        (
            23000,
            "backend RST",
            &[(BY_BACKEND, TCP_RST | TCP_ACK)],
            TCP_CLOSING_TIMEOUT_S + 5,
            false,
        ),
        // Half-closed: the other side may still send, the flow lives on.
        (
            24000,
            "client half",
            &[(BY_CLIENT, FIN)],
            TCP_CLOSING_TIMEOUT_S + 5,
            true,
        ),
        (
            25000,
            "backend half",
            &[(BY_BACKEND, FIN)],
            BACKEND_TIME_WAIT_S + 1,
            true,
        ),
        // ... for a while.
        (
            26000,
            "client half",
            &[(BY_CLIENT, FIN)],
            TCP_HALF_CLOSED_TIMEOUT_S + 1,
            false,
        ),
    ];
    with_program(IPV6_AND_FULLNAT, |mut lb| {
        let vip = sock("198.18.100.4", 80);
        let backend = sock("198.18.2.10", 8080);
        let from_backend = |lb: &mut Loaded, node: SocketAddrV4, flags: u8| {
            let segment =
                Ipv4Frame::tcp(backend, node, flags).with_macs(backend_mac(0), lb.backend_if_mac);
            let out = lb.run_from(&segment.build(), lb.backend_if);
            parse_ipv4(&out.packet).map(|p| p.dst).ok()
        };
        for (port, closer, segments, idle_s, held) in cases {
            let first = sock(CLIENT, port);
            let node = open_fullnat_flow(&mut lb, first, vip);
            for &(from_client, flags) in segments {
                if from_client {
                    lb.run(&Ipv4Frame::tcp(first, vip, flags).build());
                } else {
                    assert_eq!(from_backend(&mut lb, node, flags), Some(first), "{closer}");
                }
            }
            lb.age_flow(
                &forward_key(first, vip),
                std::time::Duration::from_secs(u64::from(idle_s)),
            );
            // A client whose port search starts at the first one's port.
            let (_, second) = fullnat_search(vip, first, 1);
            let out = lb.run(&Ipv4Frame::tcp(second[0], vip, TCP_SYN).build());
            let taken = parse_ipv4(&out.packet).expect("checksums").src.port();
            assert_eq!(
                taken != node.port(),
                held,
                "closed by the {closer} {idle_s} s ago: the next flow took port {taken}, the \
                 closed one had {}",
                node.port()
            );
            if held {
                // The backend's packet on the held port is still the first client's.
                assert_eq!(
                    from_backend(&mut lb, node, TCP_ACK),
                    Some(first),
                    "closed by the {closer} {idle_s} s ago"
                );
            } else {
                // The backend's answer on that port is the new flow's, not the closed one's
                // (whose entries stay in the table until evicted).
                let syn_ack = Ipv4Frame::tcp(backend, node, TCP_SYN | TCP_ACK)
                    .with_macs(backend_mac(0), lb.backend_if_mac);
                let out = lb.run_from(&syn_ack.build(), lb.backend_if);
                assert_eq!(
                    parse_ipv4(&out.packet).expect("translated").dst,
                    second[0],
                    "closed by the {closer} {idle_s} s ago: the backend's SYN-ACK on the reused \
                     port {taken}"
                );
                // Confirmed, and the closed flow's client opens a flow on its old tuple
                // again: the closed flow's end leaves the new flow's reply entry alone.
                lb.run(&Ipv4Frame::tcp(second[0], vip, TCP_ACK).build());
                lb.run(&Ipv4Frame::tcp(first, vip, TCP_SYN).build());
                let ack = Ipv4Frame::tcp(backend, node, TCP_ACK)
                    .with_macs(backend_mac(0), lb.backend_if_mac);
                let out = lb.run_from(&ack.build(), lb.backend_if);
                assert_eq!(
                    parse_ipv4(&out.packet).map(|p| p.dst).ok(),
                    Some(second[0]),
                    "closed by the {closer} {idle_s} s ago: the backend's packet on port \
                     {taken} after the closed flow's client came back"
                );
            }
        }
    });
}

/// A new flow writes its reply entry before its forward entry, so another CPU's port search
/// may meet the reply entry alone: a fresh one is a flow being written, and its port is
/// skipped (taken over, both flows would send from it); an old one has lost its flow, and its
/// port is free.
#[test]
fn fullnat_skips_a_port_whose_reply_entry_is_being_written() {
    if !e2e_enabled() {
        return;
    }
    with_program(IPV6_AND_FULLNAT, |mut lb| {
        let vip = sock("198.18.100.4", 80);
        let first = sock(CLIENT, 26000);
        let (ports, clients) = fullnat_search(vip, first, 2);
        let out = lb.run(&Ipv4Frame::tcp(first, vip, TCP_SYN).build());
        assert_eq!(
            parse_ipv4(&out.packet).expect("checksums").src.port(),
            ports[0]
        );
        // Its forward entry not written yet, as seen from another CPU.
        let forward = lb
            .dp
            .tracked_flow(&forward_key(first, vip))
            .unwrap()
            .expect("unconfirmed flow");
        let reply = lb_testkit::progtest::reply_key(&forward_key(first, vip), &forward);
        lb.dp
            .pending_table_mut()
            .expect("PENDING")
            .remove(&forward_key(first, vip))
            .expect("remove");
        let out = lb.run(&Ipv4Frame::tcp(clients[0], vip, TCP_SYN).build());
        assert_eq!(
            parse_ipv4(&out.packet).expect("checksums").src.port(),
            ports[1],
            "a fresh reply entry's port is skipped"
        );
        // A second later, the reply entry alone is a flow that ended.
        {
            let mut pending = lb.dp.pending_table_mut().expect("PENDING");
            let mut orphan = pending.get(&reply, 0).expect("the reply entry");
            orphan.last_seen_ns -= 1_000_000_000;
            pending.insert(reply, orphan, 0).expect("age it");
        }
        let out = lb.run(&Ipv4Frame::tcp(clients[1], vip, TCP_SYN).build());
        assert_eq!(
            parse_ipv4(&out.packet).expect("checksums").src.port(),
            ports[0],
            "an old reply entry without its flow frees its port"
        );
    });
}

/// When every port of a full-NAT search is held only because its backend may still be in
/// TIME_WAIT, a new flow takes one of them (its SYN may be sent again a second later) rather
/// than being dropped; ports of live flows are never taken (see the test above it for drops),
/// but for a handshake long due (the test below).
#[test]
fn fullnat_takes_a_port_the_backend_may_still_hold_rather_than_drop_the_flow() {
    if !e2e_enabled() {
        return;
    }
    use lb_common::limits::{FULLNAT_PORT_ATTEMPTS, TCP_CLOSING_TIMEOUT_S};
    with_program(IPV6_AND_FULLNAT, |mut lb| {
        let vip = sock("198.18.100.4", 80);
        let backend = sock("198.18.2.10", 8080);
        let first = sock(CLIENT, 24000);
        let (search, others) = fullnat_search(vip, first, FULLNAT_PORT_ATTEMPTS as usize);
        let same_start: Vec<SocketAddrV4> = std::iter::once(first).chain(others).collect();
        let (closed, last) = same_start.split_at(FULLNAT_PORT_ATTEMPTS as usize);
        let mut ports = Vec::new();
        for &client in closed {
            let node = open_fullnat_flow(&mut lb, client, vip);
            ports.push(node.port());
            let fin = Ipv4Frame::tcp(backend, node, TCP_FIN | TCP_ACK)
                .with_macs(backend_mac(0), lb.backend_if_mac);
            lb.run_from(&fin.build(), lb.backend_if);
            lb.run(&Ipv4Frame::tcp(client, vip, TCP_FIN | TCP_ACK).build());
            lb.age_flow(
                &forward_key(client, vip),
                std::time::Duration::from_secs(u64::from(TCP_CLOSING_TIMEOUT_S + 5)),
            );
        }
        assert_eq!(
            ports, search,
            "each closed flow took the next port of the search"
        );
        let before = lb.stats();
        let out = lb.run(&Ipv4Frame::tcp(last[0], vip, TCP_SYN).build());
        let taken = parse_ipv4(&out.packet).expect("forwarded").src.port();
        assert_eq!(taken, search[0], "the first port of the second pass");
        assert_eq!(delta(&before, &lb.stats(), StatSlot::NewFlow), 1);
        assert_eq!(delta(&before, &lb.stats(), StatSlot::DropNoSnatPort), 0);
    });
}

/// A flood of SYNs from spoofed sources holds full NAT's ports only for seconds: when every
/// port of a new flow's search is held, it takes the port of an unconfirmed flow whose client
/// has been silent for `UNCONFIRMED_TCP_PORT_HOLD_S` (never a fresher one's; its backend's
/// SYN-ACK sent again does not count), and the flow it was taken from is over: its late ACK
/// or its SYN sent again opens a flow on another port, and the backend's packets on the
/// taken port reach the flow that took it. A flow placed mid-flow (an ACK) yields the same.
#[test]
fn fullnat_takes_the_port_of_a_handshake_long_due_and_that_flow_moves_to_another() {
    if !e2e_enabled() {
        return;
    }
    use lb_common::limits::{FULLNAT_PORT_ATTEMPTS, UNCONFIRMED_TCP_PORT_HOLD_S};
    with_program(IPV6_AND_FULLNAT, |mut lb| {
        let vip = sock("198.18.100.4", 80);
        let backend = sock("198.18.2.10", 8080);
        let first = sock(CLIENT, 3000);
        let (search, others) = fullnat_search(vip, first, FULLNAT_PORT_ATTEMPTS as usize + 1);
        let clients: Vec<SocketAddrV4> = std::iter::once(first).chain(others).collect();
        let (holding, last) = clients.split_at(FULLNAT_PORT_ATTEMPTS as usize);
        let port_of = |out: &ProgOutcome| {
            assert_ne!(out.action, XDP_DROP, "dropped");
            parse_ipv4(&out.packet).expect("forwarded").src
        };
        let held: Vec<SocketAddrV4> = holding
            .iter()
            .map(|&client| port_of(&lb.run(&Ipv4Frame::tcp(client, vip, TCP_SYN).build())))
            .collect();
        let before = lb.stats();
        let out = lb.run(&Ipv4Frame::tcp(last[0], vip, TCP_SYN).build());
        assert_eq!(out.action, XDP_DROP, "every port held by a fresh handshake");
        assert_eq!(delta(&before, &lb.stats(), StatSlot::DropNoSnatPort), 1);
        // All but the first handshake long due.
        let due = std::time::Duration::from_secs(u64::from(UNCONFIRMED_TCP_PORT_HOLD_S) + 1);
        for &client in &holding[1..] {
            lb.age_pending_flow(&forward_key(client, vip), due);
        }
        let backend_on = |lb: &mut Loaded, node: SocketAddrV4| {
            let ack =
                Ipv4Frame::tcp(backend, node, TCP_ACK).with_macs(backend_mac(0), lb.backend_if_mac);
            let out = lb.run_from(&ack.build(), lb.backend_if);
            parse_ipv4(&out.packet).map(|p| p.dst).ok()
        };
        // The backend sends its SYN-ACK again to the client that never answered.
        assert_eq!(held[1].port(), search[1]);
        let syn_ack = Ipv4Frame::tcp(backend, held[1], TCP_SYN | TCP_ACK)
            .with_macs(backend_mac(0), lb.backend_if_mac);
        let out = lb.run_from(&syn_ack.build(), lb.backend_if);
        assert_eq!(parse_ipv4(&out.packet).expect("translated").dst, holding[1]);
        let before = lb.stats();
        let taker = port_of(&lb.run(&Ipv4Frame::tcp(last[0], vip, TCP_SYN).build()));
        assert_eq!(
            taker.port(),
            search[1],
            "the first long-due handshake's port"
        );
        assert_eq!(delta(&before, &lb.stats(), StatSlot::NewFlow), 1);
        assert_eq!(backend_on(&mut lb, taker), Some(last[0]));

        // The flow it was taken from completes its handshake late: over, placed again.
        let before = lb.stats();
        let moved = port_of(&lb.run(&Ipv4Frame::tcp(holding[1], vip, TCP_ACK).build()));
        assert_ne!(moved.port(), search[1], "a late ACK on the taken port");
        assert_eq!(delta(&before, &lb.stats(), StatSlot::FlowLost), 1);
        assert_eq!(delta(&before, &lb.stats(), StatSlot::FlowConfirmed), 0);
        assert_eq!(
            backend_on(&mut lb, taker),
            Some(last[0]),
            "the backend's packet on the taken port after the late ACK"
        );
        assert_eq!(backend_on(&mut lb, moved), Some(holding[1]));

        // One whose port the late ACK's flow took sends its SYN again: a new flow.
        assert_eq!(moved.port(), search[2]);
        let before = lb.stats();
        let again = port_of(&lb.run(&Ipv4Frame::tcp(holding[2], vip, TCP_SYN).build()));
        assert_ne!(again.port(), search[2], "a SYN again on the taken port");
        assert_eq!(delta(&before, &lb.stats(), StatSlot::NewFlow), 1);
        assert_eq!(backend_on(&mut lb, moved), Some(holding[1]));
        assert_eq!(backend_on(&mut lb, again), Some(holding[2]));

        // The late ACK's flow, placed mid-flow and unconfirmed, yields its port as well.
        lb.age_pending_flow(&forward_key(holding[1], vip), due);
        let next = port_of(&lb.run(&Ipv4Frame::tcp(last[1], vip, TCP_SYN).build()));
        assert_eq!(next.port(), search[2], "the silent mid-flow flow's port");
        assert_eq!(backend_on(&mut lb, next), Some(last[1]));
    });
}

/// A full-NAT flow whose client has gone quiet while its backend still sends (a stream pushed
/// to the client) stays alive: a new flow whose port search starts at its node port takes
/// the next port, the backend's packets still reach the first client, and the client's next
/// packet is still its flow's.
#[test]
fn fullnat_flow_only_its_backend_still_speaks_on_stays_alive_and_keeps_its_port() {
    if !e2e_enabled() {
        return;
    }
    use lb_common::limits::{FULLNAT_PORT_MAX, FULLNAT_PORT_MIN};
    with_program(IPV6_AND_FULLNAT, |mut lb| {
        let vip = sock("198.18.100.4", 53);
        let backend = sock("198.18.2.10", 5353);
        let udp_key = |client: SocketAddrV4| {
            let mut key = forward_key(client, vip);
            key.proto = proto::UDP;
            key
        };
        let range = u32::from(FULLNAT_PORT_MAX - FULLNAT_PORT_MIN) + 1;
        let start = |client| flow_hash(&udp_key(client)) % range;
        let first = sock(CLIENT, 25000);
        let second = (25001..=65535)
            .map(|port| sock(CLIENT, port))
            .find(|&c| start(c) == start(first))
            .expect("a client whose port search starts at the first one's");
        // Two datagrams: the flow is confirmed, with its reply entry in the table.
        let out = lb.run(&Ipv4Frame::udp(first, vip).build());
        let node = parse_ipv4(&out.packet).expect("forwarded").src;
        lb.run(&Ipv4Frame::udp(first, vip).build());
        let push = Ipv4Frame::udp(backend, node).with_macs(backend_mac(0), lb.backend_if_mac);
        let to_first = |lb: &mut Loaded| {
            let out = lb.run_from(&push.build(), lb.backend_if);
            parse_ipv4(&out.packet).expect("translated").dst
        };
        // Long past the UDP timeout, the client quiet throughout and the backend sending.
        let timeout = u64::from(lb_common::limits::DEFAULT_UDP_TIMEOUT_S);
        lb.age_flow(&udp_key(first), std::time::Duration::from_secs(timeout + 5));
        assert_eq!(to_first(&mut lb), first);
        let out = lb.run(&Ipv4Frame::udp(second, vip).build());
        let taken = parse_ipv4(&out.packet).expect("forwarded").src;
        assert_ne!(taken.port(), node.port(), "the port of a flow still in use");
        assert_eq!(
            to_first(&mut lb),
            first,
            "the backend's stream still reaches its client"
        );
        // And the client's next datagram is still its flow's, on its node port.
        let before = lb.stats();
        let out = lb.run(&Ipv4Frame::udp(first, vip).build());
        assert_eq!(parse_ipv4(&out.packet).expect("forwarded").src, node);
        assert_eq!(delta(&before, &lb.stats(), StatSlot::NewFlow), 0);
    });
}

#[test]
fn echo_requests_to_a_vip_are_answered_and_errors_about_flows_translated() {
    if !e2e_enabled() {
        return;
    }
    with_program(IPV6_AND_FULLNAT, |mut lb| {
        let client: std::net::Ipv4Addr = CLIENT.parse().unwrap();
        let vip: std::net::Ipv4Addr = VIP.parse().unwrap();
        let echo = |ty: u8| -> Vec<u8> {
            let mut m = vec![ty, 0, 0, 0, 0x12, 0x34, 0, 1];
            m.extend_from_slice(b"meshlb ping");
            m
        };
        let request = icmpv4_frame((CLIENT_MAC, NODE_MAC), client, vip, &echo(8));
        let out = lb.run(&request);
        assert_eq!(
            out.handoff,
            Some(Handoff::forward(lb.client_if)),
            "back out toward the client"
        );
        assert_eq!(
            out.packet,
            icmpv4_frame((CLIENT_MAC, NODE_MAC), vip, client, &echo(0))
        );

        // A UDP flow to the VIP; the backend says port unreachable to the client.
        let udp = Ipv4Frame::udp(sock(CLIENT, 5000), sock(VIP, 53));
        let dnatted = lb.run(&udp.build()).packet;
        let backend: std::net::Ipv4Addr = "198.18.2.10".parse().unwrap();
        let error = icmpv4_frame(
            (backend_mac(0), lb.backend_if_mac),
            backend,
            client,
            &icmpv4_error(3, 3, &dnatted, 8),
        );
        let before = lb.stats();
        let out = lb.run_from(&error, lb.backend_if);
        assert_eq!(out.handoff, Some(Handoff::forward(lb.client_if)));
        // What the client must see: from the VIP, quoting its own packet to the VIP.
        let expected = icmpv4_frame(
            (backend_mac(0), lb.backend_if_mac),
            vip,
            client,
            &icmpv4_error(3, 3, &udp.build(), 8),
        );
        assert_eq!(out.packet, expected);
        parse_icmpv4(&out.packet).expect("checksums");
        assert_eq!(delta(&before, &lb.stats(), StatSlot::IcmpErrorToClient), 1);

        // Pings to anything but a VIP are the kernel's.
        let to_node = icmpv4_frame(
            (CLIENT_MAC, NODE_MAC),
            client,
            NODE_CLIENT_SIDE.parse().unwrap(),
            &echo(8),
        );
        let out = lb.run(&to_node);
        assert_eq!((out.action, out.packet), (XDP_PASS, to_node));
    });
}

/// Two VIPs on one backend port: NAT's client-port clashes.
/// An ICMP error about a packet the node itself sent to a backend (its own socket connected
/// there: a health check, or a process the socket-level path connected straight to the
/// backend) is the node's: the kernel finds that socket by the quote as sent. It is passed
/// untouched, not translated as though a client had sent the quoted packet to the endpoint's
/// one frontend, whether the backend or a router on the way sent it.
#[test]
fn icmp_errors_about_the_nodes_own_packets_to_a_backend_are_left_to_it() {
    if !e2e_enabled() {
        return;
    }
    with_program(ONE_BACKEND, |mut lb| {
        let node = progtest::NODE_BACKEND_SIDE;
        let cases = [
            // (who says it, type, code, what the node sent)
            (
                "198.18.2.10",
                3,
                3,
                Ipv4Frame::udp(sock(node, 40000), sock("198.18.2.10", 5353)).build(),
            ),
            (
                "198.18.2.254",
                3,
                4,
                Ipv4Frame::tcp(sock(node, 40001), sock("198.18.2.10", 8080), TCP_ACK).build(),
            ),
        ];
        for (sender, ty, code, sent) in cases {
            let error = icmpv4_frame(
                (backend_mac(0), lb.backend_if_mac),
                sender.parse().unwrap(),
                node.parse().unwrap(),
                &icmpv4_error(ty, code, &sent, 8),
            );
            let before = lb.stats();
            let out = lb.run_from(&error, lb.backend_if);
            assert_eq!(
                (out.action, &out.packet),
                (XDP_PASS, &error),
                "type {ty} code {code} from {sender}: the node's, untouched"
            );
            assert_eq!(delta(&before, &lb.stats(), StatSlot::IcmpErrorToClient), 0);
        }
    });
}

const TWO_VIPS_ONE_BACKEND: &str = r#"
services:
  a:
    vip: 198.18.100.1
    ports: ["80:8080/tcp"]
    backends: ["198.18.2.10"]
  b:
    vip: 198.18.100.2
    ports: ["80:8080/tcp"]
    backends: ["198.18.2.10"]
"#;

/// A client whose connection attempt its backend refused (RST) and that tries again from the
/// same port at once keeps its port: the refused flow's entries go, as a confirmed flow's do
/// when it ends, instead of holding the port against the same client.
#[test]
fn a_syn_again_after_the_backends_rst_keeps_the_clients_port() {
    if !e2e_enabled() {
        return;
    }
    with_program(TWO_VIPS_ONE_BACKEND, |mut lb| {
        let (vip, client) = (sock(VIP, 80), sock(CLIENT, 43200));
        let syn = Ipv4Frame::tcp(client, vip, TCP_SYN);
        let out = lb.run(&syn.build());
        assert_eq!(parse_ipv4(&out.packet).expect("forwarded").src, client);
        let refused = Ipv4Frame::tcp(sock("198.18.2.10", 8080), client, TCP_RST | TCP_ACK)
            .with_macs(backend_mac(0), lb.backend_if_mac);
        let out = lb.run_from(&refused.build(), lb.backend_if);
        assert_eq!(parse_ipv4(&out.packet).expect("translated").dst, client);
        let before = lb.stats();
        let out = lb.run(&syn.build());
        assert_eq!(
            parse_ipv4(&out.packet).expect("forwarded").src,
            client,
            "the client's own port again"
        );
        assert_eq!(delta(&before, &lb.stats(), StatSlot::NewFlow), 1);
    });
}

#[test]
fn nat_gives_a_clashing_client_port_another_port_and_keeps_the_client_address() {
    if !e2e_enabled() {
        return;
    }
    // Two VIPs on the same backend port: a client reusing its port toward both would get
    // replies that cannot be told apart, unless the second flow gets another source port.
    with_program(TWO_VIPS_ONE_BACKEND, |mut lb| {
        let client = sock(CLIENT, 43000);
        let backend = sock("198.18.2.10", 8080);
        let first = lb.run(&Ipv4Frame::tcp(client, sock(VIP, 80), TCP_SYN).build());
        assert_eq!(
            parse_ipv4(&first.packet).unwrap().src,
            client,
            "no clash: untouched source"
        );
        let vip_b = sock("198.18.100.2", 80);
        let syn = Ipv4Frame::tcp(client, vip_b, TCP_SYN);
        let second = lb.run(&syn.build());
        let seen = parse_ipv4(&second.packet).expect("translated, valid").src;
        assert_eq!(
            seen.ip(),
            client.ip(),
            "the backend still sees the client's address"
        );
        assert!(
            (lb_common::limits::FULLNAT_PORT_MIN..=lb_common::limits::FULLNAT_PORT_MAX)
                .contains(&seen.port()),
            "remapped port {}",
            seen.port()
        );
        assert_eq!(second.packet, syn.with_dst(backend).with_src(seen).build());
        // Each flow's replies go back to its own frontend and the client's real port.
        for (to, frontend) in [(client, sock(VIP, 80)), (seen, vip_b)] {
            let reply = Ipv4Frame::tcp(backend, to, TCP_SYN | TCP_ACK)
                .with_macs(backend_mac(0), lb.backend_if_mac);
            let out = lb.run_from(&reply.build(), lb.backend_if);
            assert_eq!(
                out.packet,
                reply.with_src(frontend).with_dst(client).build()
            );
        }
    });
}

/// A frontend removed leaves its flows' reply entries until they age out, while its backend
/// endpoint now leads to one frontend only, whose new flows write no reply entry. A client
/// reusing its port toward that frontend gets its replies from it, not from the one removed.
#[test]
fn replies_of_a_new_flow_come_from_its_frontend_after_another_was_removed() {
    if !e2e_enabled() {
        return;
    }
    with_program(TWO_VIPS_ONE_BACKEND, |mut lb| {
        let client = sock(CLIENT, 43300);
        let (vip_a, vip_b) = (sock(VIP, 80), sock("198.18.100.2", 80));
        for flags in [TCP_SYN, TCP_ACK] {
            lb.run(&Ipv4Frame::tcp(client, vip_b, flags).build());
        }
        let only_a = TWO_VIPS_ONE_BACKEND.split("  b:").next().unwrap();
        lb.change(only_a).expect("b removed");
        let out = lb.run(&Ipv4Frame::tcp(client, vip_a, TCP_SYN).build());
        assert_eq!(parse_ipv4(&out.packet).expect("forwarded").src, client);
        let syn_ack = Ipv4Frame::tcp(sock("198.18.2.10", 8080), client, TCP_SYN | TCP_ACK)
            .with_macs(backend_mac(0), lb.backend_if_mac);
        let before = lb.stats();
        let out = lb.run_from(&syn_ack.build(), lb.backend_if);
        assert_eq!(out.packet, syn_ack.with_src(vip_a).build(), "from a's VIP");
        assert_deltas(
            &before,
            &lb.stats(),
            &[(StatSlot::NatReplyStateless, 1), (StatSlot::NatReply, 0)],
        );
    });
}

/// As `replies_of_a_new_flow_come_from_its_frontend_after_another_was_removed`, for an ICMP
/// error the backend sends about the new flow's SYN: the removed frontend's reply entry goes,
/// and the error reaches the client from the frontend it connected to, quoting its SYN to it.
#[test]
fn icmp_errors_of_a_new_flow_come_from_its_frontend_after_another_was_removed() {
    if !e2e_enabled() {
        return;
    }
    with_program(TWO_VIPS_ONE_BACKEND, |mut lb| {
        let client = sock(CLIENT, 43310);
        let (vip_a, vip_b) = (sock(VIP, 80), sock("198.18.100.2", 80));
        for flags in [TCP_SYN, TCP_ACK] {
            lb.run(&Ipv4Frame::tcp(client, vip_b, flags).build());
        }
        let only_a = TWO_VIPS_ONE_BACKEND.split("  b:").next().unwrap();
        lb.change(only_a).expect("b removed");
        let syn = Ipv4Frame::tcp(client, vip_a, TCP_SYN);
        let sent = lb.run(&syn.build()).packet;
        assert_eq!(parse_ipv4(&sent).expect("forwarded").src, client);
        let backend: std::net::Ipv4Addr = "198.18.2.10".parse().unwrap();
        let error = icmpv4_frame(
            (backend_mac(0), lb.backend_if_mac),
            backend,
            *client.ip(),
            &icmpv4_error(3, 3, &sent, 8),
        );
        let before = lb.stats();
        let out = lb.run_from(&error, lb.backend_if);
        let expected = icmpv4_frame(
            (backend_mac(0), lb.backend_if_mac),
            *vip_a.ip(),
            *client.ip(),
            &icmpv4_error(3, 3, &syn.build(), 8),
        );
        assert_eq!(out.packet, expected, "from a's VIP, quoting the SYN to it");
        parse_icmpv4(&out.packet).expect("checksums");
        assert_eq!(delta(&before, &lb.stats(), StatSlot::IcmpErrorToClient), 1);
    });
}

/// A client port whose flow to one frontend closed is not handed to a flow toward another
/// frontend of the same backend until the backend's TIME_WAIT is over (the backend would
/// answer the new SYN as part of the old connection): before, the new flow gets another
/// port; after, it keeps the client's. The flow's own idle limit (10 s once closing) is
/// shorter than that.
#[test]
fn nat_holds_a_closed_flows_client_port_through_the_backends_time_wait() {
    if !e2e_enabled() {
        return;
    }
    use lb_common::limits::{BACKEND_TIME_WAIT_S, TCP_CLOSING_TIMEOUT_S};
    const { assert!(TCP_CLOSING_TIMEOUT_S + 5 < BACKEND_TIME_WAIT_S) };
    let cases = [
        (43100, TCP_CLOSING_TIMEOUT_S + 5, true),
        (43101, BACKEND_TIME_WAIT_S - 1, true),
        (43102, BACKEND_TIME_WAIT_S + 1, false),
    ];
    with_program(TWO_VIPS_ONE_BACKEND, |mut lb| {
        let (vip_a, vip_b) = (sock(VIP, 80), sock("198.18.100.2", 80));
        for (port, idle_s, remapped) in cases {
            let client = sock(CLIENT, port);
            for flags in [TCP_SYN, TCP_ACK, TCP_FIN | TCP_ACK] {
                lb.run(&Ipv4Frame::tcp(client, vip_a, flags).build());
            }
            let fin = Ipv4Frame::tcp(sock("198.18.2.10", 8080), client, TCP_FIN | TCP_ACK)
                .with_macs(backend_mac(0), lb.backend_if_mac);
            lb.run_from(&fin.build(), lb.backend_if);
            let key = forward_key(client, vip_a);
            lb.age_flow(&key, std::time::Duration::from_secs(u64::from(idle_s)));
            let out = lb.run(&Ipv4Frame::tcp(client, vip_b, TCP_SYN).build());
            let seen = parse_ipv4(&out.packet).expect("translated, valid").src;
            assert_eq!(seen.ip(), client.ip(), "{idle_s} s: the client's address");
            assert_eq!(
                seen.port() != port,
                remapped,
                "closed {idle_s} s ago: the new flow's source port is {}",
                seen.port()
            );
        }
    });
}

const RESET_ON_REMOVAL: &str = r#"
services:
  web:
    vip: 198.18.100.1
    ports: ["80:8080/tcp", "53:5353/udp"]
    on_backend_removal: reset
    backends: ["198.18.2.10", "198.18.2.11"]
  web6:
    vip: "fd00:100::1"
    ports: ["80:8080/tcp"]
    on_backend_removal: reset
    backends: ["fd00:2::a", "fd00:2::b"]
"#;

/// Applies `services` over what `lb` holds, keeping the ids of what stays (as a reload does).
fn reload(lb: &mut Loaded, services: &str) {
    lb.change(services).expect("services planned and applied");
}

/// `frame` with its TCP window (at `window_at`) set to 0, as a RST carries it. The checksum
/// stays: 0xffff and 0 are both zero in one's complement arithmetic.
fn window_zero(mut frame: Vec<u8>, window_at: usize) -> Vec<u8> {
    assert_eq!(frame[window_at..window_at + 2], [0xff, 0xff]);
    frame[window_at..window_at + 2].copy_from_slice(&[0, 0]);
    frame
}

#[test]
fn reset_policy_answers_a_removed_backends_tcp_flows_with_a_rst_and_moves_udp() {
    if !e2e_enabled() {
        return;
    }
    with_program(RESET_ON_REMOVAL, |mut lb| {
        let vip = sock(VIP, 80);
        // TCP flows over both backends; the first one's backend will be removed.
        let mut flows = Vec::new();
        for port in 40200..40216u16 {
            let client = sock(CLIENT, port);
            let out = lb.run(&Ipv4Frame::tcp(client, vip, TCP_SYN).build());
            lb.run(&Ipv4Frame::tcp(client, vip, TCP_ACK).build());
            flows.push((client, *parse_ipv4(&out.packet).unwrap().dst.ip()));
        }
        let gone = flows[0].1;
        let on_gone: Vec<_> = flows.iter().filter(|f| f.1 == gone).map(|f| f.0).collect();
        assert!(on_gone.len() >= 4, "{flows:?}");
        let udp_client = (0..64u16)
            .map(|i| sock(CLIENT, 5000 + i))
            .find(|c| {
                let out = lb.run(&Ipv4Frame::udp(*c, sock(VIP, 53)).build());
                *parse_ipv4(&out.packet).unwrap().dst.ip() == gone
            })
            .expect("a UDP flow on the backend to remove");
        let client6 = sock6("fd00:1::2", 40300);
        let vip6 = sock6("fd00:100::1", 80);
        let out = lb.run(&Ipv6Frame::tcp(client6, vip6, TCP_SYN).build());
        let gone6 = *parse_ipv6(&out.packet).unwrap().dst.ip();
        let entries = lb.dp.conntrack_occupancy().unwrap().0;

        let remaining = RESET_ON_REMOVAL
            .replace(&format!("\"{gone}\", "), "")
            .replace(&format!(", \"{gone}\""), "")
            .replace(&format!("\"{gone6}\", "), "")
            .replace(&format!(", \"{gone6}\""), "");
        assert_ne!(remaining, RESET_ON_REMOVAL);
        reload(&mut lb, &remaining);

        // A segment with ACK: RST with seq = its ack, no ACK; from the VIP, headers only,
        // handed to TC toward the client.
        let before = lb.stats();
        let out = lb.run(&Ipv4Frame::tcp(on_gone[0], vip, TCP_ACK).build());
        let expected = expected_rst(vip, on_gone[0], TCP_RST, 1, 0);
        assert_eq!(out.action, XDP_PASS);
        assert_eq!(out.handoff, Some(Handoff::forward(lb.client_if)));
        assert_eq!(out.packet, expected);
        let parsed = parse_ipv4(&out.packet).expect("checksums");
        assert_eq!(parsed.tcp_flags, Some(TCP_RST));
        let after = lb.stats();
        assert_deltas(
            &before,
            &after,
            &[
                (StatSlot::FlowReset, 1),
                (StatSlot::RefusedNoBackend, 0),
                (StatSlot::TxViaTc, 1),
                (StatSlot::NatForward, 0),
                (StatSlot::FlowMoved, 0),
                (StatSlot::NewFlow, 0),
            ],
        );
        // The flow is gone, both entries.
        assert_eq!(lb.dp.conntrack_occupancy().unwrap().0, entries - 2);

        // A segment without ACK (6 bytes of data): RST|ACK with seq 0 and ack = seq + 6.
        let push = Ipv4Frame {
            l4: L4::Tcp {
                flags: TCP_PSH,
                seq: 1000,
                ack: 0,
            },
            ..Ipv4Frame::tcp(on_gone[1], vip, 0)
        };
        let out = lb.run(&push.build());
        assert_eq!(
            out.packet,
            expected_rst(vip, on_gone[1], TCP_RST | TCP_ACK, 0, 1006)
        );
        parse_ipv4(&out.packet).expect("checksums");

        // Flows on the remaining backend go on as before.
        let kept = flows.iter().find(|f| f.1 != gone).unwrap();
        let out = lb.run(&Ipv4Frame::tcp(kept.0, vip, TCP_ACK).build());
        assert_eq!(*parse_ipv4(&out.packet).unwrap().dst.ip(), kept.1);

        // UDP moves, as under `move`.
        let before = lb.stats();
        let out = lb.run(&Ipv4Frame::udp(udp_client, sock(VIP, 53)).build());
        assert_ne!(*parse_ipv4(&out.packet).unwrap().dst.ip(), gone);
        let after = lb.stats();
        assert_eq!(delta(&before, &after, StatSlot::FlowMoved), 1);
        assert_eq!(delta(&before, &after, StatSlot::FlowReset), 0);

        // IPv6 the same way.
        let out = lb.run(&Ipv6Frame::tcp(client6, vip6, TCP_ACK).build());
        let rst6 = Ipv6Frame {
            payload: Vec::new(),
            l4: L4::Tcp {
                flags: TCP_RST,
                seq: 1,
                ack: 0,
            },
            ..Ipv6Frame::tcp(vip6, client6, 0).with_macs(CLIENT_MAC, NODE_MAC)
        };
        assert_eq!(out.handoff, Some(Handoff::forward(lb.client_if)));
        assert_eq!(out.packet, window_zero(rst6.build(), 14 + 40 + 14));
        parse_ipv6(&out.packet).expect("checksum");

        // A RST is never answered with a RST (RFC 9293): the flow is gone, the RST goes on
        // like any packet of a flow that moved.
        let before = lb.stats();
        let out = lb.run(&Ipv4Frame::tcp(on_gone[2], vip, TCP_RST | TCP_ACK).build());
        let forwarded = parse_ipv4(&out.packet).expect("checksums");
        assert_eq!(forwarded.tcp_flags, Some(TCP_RST | TCP_ACK));
        assert_eq!(forwarded.src, on_gone[2], "not an answer to the client");
        let after = lb.stats();
        assert_eq!(delta(&before, &after, StatSlot::FlowReset), 0);
        assert_eq!(delta(&before, &after, StatSlot::FlowMoved), 1);

        // A SYN on a removed backend's flow is a new connection: it gets a new backend.
        let before = lb.stats();
        let out = lb.run(&Ipv4Frame::tcp(on_gone[3], vip, TCP_SYN).build());
        assert_ne!(*parse_ipv4(&out.packet).unwrap().dst.ip(), gone);
        assert_eq!(delta(&before, &lb.stats(), StatSlot::FlowReset), 0);
    });
}

/// The forward connection-table entry of a client's TCP flow to `vip`.
fn forward_key(client: SocketAddrV4, vip: SocketAddrV4) -> lb_common::maps::FlowKey {
    lb_common::maps::FlowKey {
        src: lb_common::Addr::from(std::net::IpAddr::V4(*client.ip())),
        dst: lb_common::Addr::from(std::net::IpAddr::V4(*vip.ip())),
        sport_be: client.port().to_be(),
        dport_be: vip.port().to_be(),
        proto: proto::TCP,
        _pad: [0; 3],
    }
}

#[test]
fn a_backends_fin_or_rst_closes_the_flow_like_the_clients() {
    if !e2e_enabled() {
        return;
    }
    use lb_common::maps::tcp_state;
    with_program(IPV6_AND_FULLNAT, |mut lb| {
        let backend = sock("198.18.2.10", 8080);
        // NAT (FIN) and full NAT (RST): the backend's packet is translated as any reply, and
        // the flow's forward entry moves on: a FIN closes the backend's side (the client may
        // still send), a RST the flow (it expires on the short timeout). A SYN on either
        // starts a new flow.
        for (vip, port, flags, closed) in [
            (
                sock(VIP, 80),
                43000,
                TCP_FIN | TCP_ACK,
                tcp_state::BACKEND_CLOSED,
            ),
            (sock("198.18.100.4", 80), 43001, TCP_RST, tcp_state::CLOSING),
        ] {
            let client = sock(CLIENT, port);
            let out = lb.run(&Ipv4Frame::tcp(client, vip, TCP_SYN).build());
            let toward = parse_ipv4(&out.packet).unwrap().src;
            lb.run(&Ipv4Frame::tcp(client, vip, TCP_ACK).build());
            let state = |lb: &Loaded| {
                lb.dp
                    .tracked_flow(&forward_key(client, vip))
                    .unwrap()
                    .expect("tracked")
                    .tcp_state
            };
            assert_eq!(state(&lb), tcp_state::ESTABLISHED);

            let close =
                Ipv4Frame::tcp(backend, toward, flags).with_macs(backend_mac(0), lb.backend_if_mac);
            let before = lb.stats();
            let out = lb.run_from(&close.build(), lb.backend_if);
            assert_eq!(out.packet, close.with_src(vip).with_dst(client).build());
            assert_eq!(delta(&before, &lb.stats(), StatSlot::NatReply), 1);
            assert_eq!(state(&lb), closed, "{vip} after flags {flags:#x}");

            // The client's next SYN on the tuple starts a new flow.
            let before = lb.stats();
            lb.run(&Ipv4Frame::tcp(client, vip, TCP_SYN).build());
            assert_eq!(delta(&before, &lb.stats(), StatSlot::NewFlow), 1);
            assert_eq!(state(&lb), tcp_state::SYN_SENT);
        }

        // A backend's ACK leaves the state alone.
        let client = sock(CLIENT, 43002);
        let vip = sock(VIP, 80);
        lb.run(&Ipv4Frame::tcp(client, vip, TCP_SYN).build());
        lb.run(&Ipv4Frame::tcp(client, vip, TCP_ACK).build());
        let ack =
            Ipv4Frame::tcp(backend, client, TCP_ACK).with_macs(backend_mac(0), lb.backend_if_mac);
        lb.run_from(&ack.build(), lb.backend_if);
        let flow = lb.dp.tracked_flow(&forward_key(client, vip)).unwrap();
        assert_eq!(flow.map(|f| f.tcp_state), Some(tcp_state::ESTABLISHED));
    });
}

#[test]
fn a_backend_closing_an_idle_connection_still_gets_the_clients_fin() {
    if !e2e_enabled() {
        return;
    }
    use lb_common::{limits::TCP_CLOSING_TIMEOUT_S, maps::tcp_state};
    with_program(IPV6_AND_FULLNAT, |mut lb| {
        let backend = sock("198.18.2.10", 8080);
        // A server closing a keep-alive connection the client left idle for longer than the
        // closing timeout (NAT and full NAT): the timeout counts from the backend's FIN, so
        // the client's FIN still reaches its backend, on its own flow.
        for (vip, port) in [(sock(VIP, 80), 43020), (sock("198.18.100.4", 80), 43021)] {
            let client = sock(CLIENT, port);
            let out = lb.run(&Ipv4Frame::tcp(client, vip, TCP_SYN).build());
            let toward = parse_ipv4(&out.packet).unwrap().src;
            lb.run(&Ipv4Frame::tcp(client, vip, TCP_ACK).build());
            let quiet = std::time::Duration::from_secs(u64::from(TCP_CLOSING_TIMEOUT_S) + 5);
            lb.age_flow(&forward_key(client, vip), quiet);

            let fin = Ipv4Frame::tcp(backend, toward, TCP_FIN | TCP_ACK)
                .with_macs(backend_mac(0), lb.backend_if_mac);
            lb.run_from(&fin.build(), lb.backend_if);
            let before = lb.stats();
            let out = lb.run(&Ipv4Frame::tcp(client, vip, TCP_FIN | TCP_ACK).build());
            let after = lb.stats();
            let forwarded = parse_ipv4(&out.packet).expect("forwarded");
            assert_eq!((forwarded.dst, forwarded.src), (backend, toward), "{vip}");
            assert_eq!(delta(&before, &after, StatSlot::NewFlow), 0, "{vip}");
            let flow = lb.dp.tracked_flow(&forward_key(client, vip)).unwrap();
            assert_eq!(flow.map(|f| f.tcp_state), Some(tcp_state::CLOSING), "{vip}");
        }
    });
}

#[test]
fn a_new_flows_entry_holds_the_tcp_state_its_first_packet_leaves() {
    if !e2e_enabled() {
        return;
    }
    use lb_common::maps::tcp_state;
    with_program(ONE_BACKEND, |mut lb| {
        // The packet that opens a flow is forwarded from the entry as written, not touched
        // after: the entry must already hold the state that packet leaves, as a later
        // packet with the same flags would.
        let vip = sock(VIP, 80);
        for (port, flags, want) in [
            (43100, TCP_SYN, tcp_state::SYN_SENT),
            (43101, TCP_ACK, tcp_state::ESTABLISHED),
            (43102, TCP_FIN | TCP_ACK, tcp_state::CLIENT_CLOSED),
            (43103, TCP_RST, tcp_state::CLOSING),
        ] {
            let client = sock(CLIENT, port);
            let before = lb.stats();
            lb.run(&Ipv4Frame::tcp(client, vip, flags).build());
            assert_eq!(delta(&before, &lb.stats(), StatSlot::NewFlow), 1);
            assert_eq!(delta(&before, &lb.stats(), StatSlot::NatForward), 1);
            let flow = lb
                .dp
                .tracked_flow(&forward_key(client, vip))
                .unwrap()
                .expect("tracked");
            assert_eq!(flow.tcp_state, want, "flags {flags:#x}");
        }
    });
}

#[test]
fn a_new_flow_to_a_vip_writes_its_reply_entry_only_when_confirmed() {
    if !e2e_enabled() {
        return;
    }
    use lb_common::maps::flow_kind;
    with_program(ONE_BACKEND, |mut lb| {
        // `web`'s backend endpoint has one frontend, the VIP (stateless replies): its new
        // flows insert the forward entry alone, and the SYN-ACK is given the VIP as source
        // without an entry. `published` (node addresses) keeps an unconfirmed reply entry.
        for (frontend, backend, stateless) in [
            (sock(VIP, 80), sock("198.18.2.10", 8080), true),
            (
                sock(NODE_CLIENT_SIDE, 8000),
                sock("198.18.2.11", 9000),
                false,
            ),
        ] {
            let client = sock(CLIENT, 43300);
            let reply_key = forward_key(backend, client);
            let reply_entry = |lb: &Loaded| lb.dp.tracked_flow(&reply_key).unwrap();
            let syn = Ipv4Frame::tcp(client, frontend, TCP_SYN);
            let out = lb.run(&syn.build());
            assert_eq!(out.packet, syn.with_dst(backend).build(), "{frontend}");
            assert!(
                lb.dp
                    .tracked_flow(&forward_key(client, frontend))
                    .unwrap()
                    .is_some()
            );
            assert_eq!(
                reply_entry(&lb).is_none(),
                stateless,
                "{frontend}: unconfirmed reply entry"
            );

            let syn_ack = Ipv4Frame::tcp(backend, client, TCP_SYN | TCP_ACK)
                .with_macs(backend_mac(0), lb.backend_if_mac);
            let before = lb.stats();
            let out = lb.run_from(&syn_ack.build(), lb.backend_if);
            assert_eq!(out.packet, syn_ack.with_src(frontend).build(), "{frontend}");
            let after = lb.stats();
            assert_eq!(
                delta(&before, &after, StatSlot::NatReplyStateless),
                u64::from(stateless)
            );
            assert_eq!(
                delta(&before, &after, StatSlot::NatReply),
                u64::from(!stateless)
            );

            // The client's ACK confirms the flow: both entries in the connection table.
            let before = lb.stats();
            lb.run(&Ipv4Frame::tcp(client, frontend, TCP_ACK).build());
            assert_eq!(delta(&before, &lb.stats(), StatSlot::FlowConfirmed), 1);
            assert_eq!(reply_entry(&lb).map(|f| f.kind), Some(flow_kind::REPLY));
            let ack = Ipv4Frame::tcp(backend, client, TCP_ACK)
                .with_macs(backend_mac(0), lb.backend_if_mac);
            let before = lb.stats();
            let out = lb.run_from(&ack.build(), lb.backend_if);
            assert_eq!(out.packet, ack.with_src(frontend).build());
            assert_eq!(delta(&before, &lb.stats(), StatSlot::NatReply), 1);
        }
    });
}

#[test]
fn a_packet_too_big_for_the_egress_mtu_is_caught_on_a_cached_route_too() {
    if !e2e_enabled() {
        return;
    }
    with_jumbo_link(ONE_BACKEND, |mut lb, jumbo| {
        let client = sock(CLIENT, 40010);
        let vip = sock(VIP, 80);
        lb.run(&Ipv4Frame::tcp(client, vip, TCP_SYN).build());
        lb.run(&Ipv4Frame::tcp(client, vip, TCP_ACK).build());
        let flow = lb
            .dp
            .tracked_flow(&forward_key(client, vip))
            .unwrap()
            .expect("tracked");
        assert_eq!(
            (flow.egress_ifindex, flow.egress_mtu),
            (lb.backend_if, 1500),
            "route and MTU cached"
        );
        // 20 + 20 + 1461 = 1501 bytes of IPv4: one more than the backend side's MTU.
        let sized = |payload: usize| Ipv4Frame {
            payload: vec![0x5a; payload],
            ..Ipv4Frame::tcp(client, vip, TCP_ACK)
        };
        // It takes the route lookup, which finds it too big: answered to the client (the
        // answer itself is checked in the next test). It came by the jumbo link: one packet.
        let before = lb.stats();
        let out = lb.run_from(&sized(1461).build(), jumbo);
        let after = lb.stats();
        assert_eq!(out.handoff, Some(Handoff::forward(lb.client_if)));
        assert_eq!(delta(&before, &after, StatSlot::IcmpTooBig), 1);
        assert_eq!(delta(&before, &after, StatSlot::DropTooBig), 0);
        // One byte less fits, and goes on.
        let fits = sized(1460);
        let out = lb.run(&fits.build());
        assert_eq!(out.handoff, Some(Handoff::forward(lb.backend_if)));
        assert_eq!(out.packet, fits.with_dst(sock("198.18.2.10", 8080)).build());
    });
}

#[test]
fn a_packet_too_big_for_the_egress_is_answered_with_fragmentation_needed() {
    if !e2e_enabled() {
        return;
    }
    // Every packet too big here comes by the jumbo link (one packet, not an aggregate).
    with_jumbo_link(IPV6_AND_FULLNAT, |mut lb, jumbo| {
        // Client to a full-NAT VIP: the quote must be the packet as the client sent it (the
        // translation of both sides undone).
        let client = sock(CLIENT, 40020);
        let vip = sock("198.18.100.4", 80);
        let out = lb.run(&Ipv4Frame::tcp(client, vip, TCP_SYN).build());
        let seen_as = parse_ipv4(&out.packet).unwrap().src;
        let big = Ipv4Frame {
            payload: (0..1461).map(|i| i as u8).collect(),
            ..Ipv4Frame::tcp(client, vip, TCP_ACK)
        }
        .build();
        let before = lb.stats();
        let out = lb.run_from(&big, jumbo);
        let after = lb.stats();
        let message = frag_needed(1500, &big);
        let expected = node_icmpv4(*vip.ip(), *client.ip(), &message);
        assert_eq!(out.handoff, Some(Handoff::forward(lb.client_if)));
        assert_eq!(out.packet, expected);
        parse_icmpv4(&out.packet).expect("checksums");
        assert_deltas(
            &before,
            &after,
            &[
                (StatSlot::IcmpTooBig, 1),
                (StatSlot::TxViaTc, 1),
                (StatSlot::DropTooBig, 0),
                (StatSlot::NatForward, 1),
            ],
        );

        // A backend's reply too big for the client side: the backend gets the error, from
        // the address it sent to (the node's, under full NAT), quoting what it sent.
        let backend = sock("198.18.2.10", 8080);
        let reply = Ipv4Frame {
            payload: vec![0xa5; 1461],
            ..Ipv4Frame::tcp(backend, seen_as, TCP_ACK).with_macs(backend_mac(0), lb.backend_if_mac)
        }
        .build();
        let out = lb.run_from(&reply, jumbo);
        let message = frag_needed(1500, &reply);
        let mut expected = icmpv4_frame(
            (backend_mac(0), lb.backend_if_mac),
            *seen_as.ip(),
            *backend.ip(),
            &message,
        );
        expected[18..20].copy_from_slice(&[0, 0]);
        expected[24..26].copy_from_slice(&[0, 0]);
        let c = lb_testkit::packet::checksum(&expected[14..34], 0);
        expected[24..26].copy_from_slice(&c.to_be_bytes());
        assert_eq!(out.handoff, Some(Handoff::forward(lb.backend_if)));
        assert_eq!(out.packet, expected);
        parse_icmpv4(&out.packet).expect("checksums");

        // IPv6: ICMPv6 "packet too big" from the VIP, quoting the first 1232 bytes (all that
        // fits in 1280) of the packet as the client sent it.
        let client6 = sock6("fd00:1::2", 40021);
        let vip6 = sock6("fd00:100::1", 80);
        lb.run(&Ipv6Frame::tcp(client6, vip6, TCP_SYN).build());
        // 40 + 20 + 1441 = 1501 bytes of IPv6: one more than the backend side's MTU.
        let big6 = Ipv6Frame {
            payload: (0..1441).map(|i| (i * 7) as u8).collect(),
            ..Ipv6Frame::tcp(client6, vip6, TCP_ACK)
        }
        .build();
        let before = lb.stats();
        let out = lb.run_from(&big6, jumbo);
        let after = lb.stats();
        let mut message = vec![2, 0, 0, 0, 0, 0, 0x05, 0xdc];
        message.extend_from_slice(&big6[14..14 + 1232]);
        let expected = icmpv6_frame((CLIENT_MAC, NODE_MAC), *vip6.ip(), *client6.ip(), &message);
        assert_eq!(out.handoff, Some(Handoff::forward(lb.client_if)));
        assert_eq!(out.packet.len(), expected.len());
        assert_eq!(out.packet, expected);
        parse_icmpv6(&out.packet).expect("checksum");
        assert_deltas(
            &before,
            &after,
            &[(StatSlot::IcmpTooBig, 1), (StatSlot::DropTooBig, 0)],
        );
        // One byte less fits, and goes on to the backend.
        let fits = Ipv6Frame {
            payload: vec![0; 1440],
            ..Ipv6Frame::tcp(client6, vip6, TCP_ACK)
        };
        let out = lb.run(&fits.build());
        assert_eq!(out.handoff, Some(Handoff::forward(lb.backend_if)));
    });
}

/// A frame past its Ethernet addresses: what a packet handed to TC keeps of what the program
/// wrote (its addresses are the kernel's to write; the test kit puts the input's back).
fn past_addresses(frame: &[u8]) -> &[u8] {
    &frame[12..]
}

/// The interface a packet handed to TC leaves by, if it was.
fn egress_of(lb: &mut Loaded, frame: &[u8]) -> Option<u32> {
    lb.run(frame).handoff.map(|h| h.ifindex)
}

/// `ip ARGS` in the test's namespace, which must succeed.
fn ip(args: &str) {
    let status = std::process::Command::new("ip")
        .args(args.split(' '))
        .status()
        .expect("ip");
    assert!(status.success(), "ip {args}");
}

#[test]
fn a_flow_whose_route_expired_takes_a_fresh_memoized_route_but_never_a_stale_one() {
    if !e2e_enabled() {
        return;
    }
    use lb_common::limits::ROUTE_MEMO_MAX_AGE_NS;
    with_program(ONE_BACKEND, |mut lb| {
        // The memo is per CPU: every run on the one whose memo is checked.
        pin_to_cpu(0);
        let client = sock(CLIENT, 40030);
        let vip = sock(VIP, 80);
        let key = forward_key(client, vip);
        let ack = Ipv4Frame::tcp(client, vip, TCP_ACK).build();
        // The memo's entry may date from the SYN's own lookup: its age counts from before it.
        let mut memoized_at = std::time::Instant::now();
        lb.run(&Ipv4Frame::tcp(client, vip, TCP_SYN).build());
        assert_eq!(
            egress_of(&mut lb, &ack),
            Some(lb.backend_if),
            "the cached route"
        );
        let age_bound = std::time::Duration::from_nanos(ROUTE_MEMO_MAX_AGE_NS);
        // The memo's clock ticks coarsely (a kernel tick, up to 10 ms).
        let margin = std::time::Duration::from_millis(20);
        let mut memo_checked = false;
        // Bounded retries: the check below only applies if the route change (an `ip`
        // process) and the next packet fit in the memo's age bound, which a loaded machine
        // may not give.
        for attempt in 0..5 {
            if attempt > 0 {
                ip("route del 198.18.2.10/32 dev lbc");
                // Let the memo's entry age out, so the next lookup is the FIB's.
                std::thread::sleep(2 * age_bound);
                memoized_at = std::time::Instant::now();
            }
            // Its route expires; the FIB answers (or the SYN's memo) and the memo keeps it.
            lb.expire_route(&key);
            assert_eq!(egress_of(&mut lb, &ack), Some(lb.backend_if));
            // The route to the backend changes: it now leaves by the client side.
            ip("route add 198.18.2.10/32 dev lbc");
            // Within the memo's age bound the flow takes the memoized route (by design: at
            // most 0.1 s old).
            lb.expire_route(&key);
            let got = egress_of(&mut lb, &ack);
            if memoized_at.elapsed() + margin < age_bound {
                assert_eq!(got, Some(lb.backend_if), "memoized");
                memo_checked = true;
                break;
            }
        }
        assert!(
            memo_checked,
            "five attempts all took longer than the memo's age bound"
        );
        // A packet that opens a flow always asks the FIB.
        let other = sock(CLIENT, 40031);
        assert_eq!(
            egress_of(&mut lb, &Ipv4Frame::tcp(other, vip, TCP_SYN).build()),
            Some(lb.client_if),
            "a new flow asks the FIB"
        );
        // Past the age bound the memo is not used: the FIB gives the new route.
        std::thread::sleep(std::time::Duration::from_nanos(2 * ROUTE_MEMO_MAX_AGE_NS));
        lb.expire_route(&key);
        assert_eq!(
            egress_of(&mut lb, &ack),
            Some(lb.client_if),
            "the FIB's new answer"
        );
        ip("route del 198.18.2.10/32 dev lbc");
    });
}

/// A flow's route is looked up again when its clock moves, whichever direction moved it: a
/// client that sends less than once a second while its backend streams had its clock moved
/// by the replies only, and kept its first route for good.
#[test]
fn a_flow_whose_clock_its_replies_move_still_looks_its_route_up_again() {
    if !e2e_enabled() {
        return;
    }
    use lb_common::limits::ROUTE_MEMO_MAX_AGE_NS;
    with_program(ONE_BACKEND, |mut lb| {
        // The route memo is per CPU: every run on one.
        pin_to_cpu(0);
        let client = sock(CLIENT, 40040);
        let vip = sock(VIP, 80);
        let key = forward_key(client, vip);
        let ack = Ipv4Frame::tcp(client, vip, TCP_ACK).build();
        lb.run(&Ipv4Frame::tcp(client, vip, TCP_SYN).build());
        assert_eq!(
            egress_of(&mut lb, &ack),
            Some(lb.backend_if),
            "the cached route"
        );
        // The route to the backend changes: it now leaves by the client side.
        ip("route add 198.18.2.10/32 dev lbc");
        // A second later the backend's packet moves the flow's clock, the client still quiet.
        lb.age_flow(&key, std::time::Duration::from_secs(2));
        let reply = Ipv4Frame::tcp(sock("198.18.2.10", 8080), client, TCP_ACK)
            .with_macs(backend_mac(0), lb.backend_if_mac);
        lb.run_from(&reply.build(), lb.backend_if);
        // Past the memo's age bound, the client's next packet takes the FIB's new route.
        std::thread::sleep(std::time::Duration::from_nanos(2 * ROUTE_MEMO_MAX_AGE_NS));
        let got = egress_of(&mut lb, &ack);
        ip("route del 198.18.2.10/32 dev lbc");
        assert_eq!(got, Some(lb.client_if), "the route looked up again");
    });
}

const FRONTEND_CHANGES: &str = r#"
services:
  web:
    vip: 198.18.100.1
    ports: ["80:8080/tcp"]
    on_backend_removal: keep
    backends: ["198.18.2.10", "198.18.2.11"]
  published:
    ports: ["8000:9000/tcp"]
    on_backend_removal: keep
    backends: ["198.18.2.12"]
"#;

/// An established flow skips the frontend lookup while its stamp of the frontends'
/// generation is current; every change to the frontends moves the generation on, so flows
/// opened before a change follow what the frontends say after it: a policy changed in place
/// applies to them, and a removed frontend's packets pass untouched (its service and backend
/// staying, so only the frontend lookup can tell).
#[test]
fn established_flows_follow_frontend_changes_made_after_they_opened() {
    if !e2e_enabled() {
        return;
    }
    with_program(FRONTEND_CHANGES, |mut lb| {
        let vip = sock(VIP, 80);
        let client = sock(CLIENT, 40400);
        let out = lb.run(&Ipv4Frame::tcp(client, vip, TCP_SYN).build());
        let backend = *parse_ipv4(&out.packet).unwrap().dst.ip();
        let ack = Ipv4Frame::tcp(client, vip, TCP_ACK);
        let out = lb.run(&ack.build());
        assert_eq!(
            out.packet,
            ack.clone()
                .with_dst(SocketAddrV4::new(backend, 8080))
                .build()
        );
        let node_port = sock(NODE_CLIENT_SIDE, 8000);
        let published_client = sock(CLIENT, 40401);
        lb.run(&Ipv4Frame::tcp(published_client, node_port, TCP_SYN).build());
        let published_ack = Ipv4Frame::tcp(published_client, node_port, TCP_ACK);
        let out = lb.run(&published_ack.build());
        assert_eq!(
            out.packet,
            published_ack
                .clone()
                .with_dst(sock("198.18.2.12", 9000))
                .build()
        );

        // `keep` becomes `move` in place (same frontends, same ids, new flags); then the
        // flow's backend leaves. Its next packet moves to the other backend: the flags
        // stamped when it opened (keep) are not followed.
        // (The first `keep` is web's; the published service keeps `keep`.)
        let moving =
            FRONTEND_CHANGES.replacen("on_backend_removal: keep", "on_backend_removal: move", 1);
        assert_ne!(moving, FRONTEND_CHANGES);
        reload(&mut lb, &moving);
        let without = moving
            .replace(&format!("\"{backend}\", "), "")
            .replace(&format!(", \"{backend}\""), "");
        assert_ne!(without, moving);
        reload(&mut lb, &without);
        let before = lb.stats();
        let out = lb.run(&ack.build());
        let now_at = *parse_ipv4(&out.packet).expect("checksums").dst.ip();
        assert_ne!(now_at, backend, "the flow moved off the removed backend");
        assert_eq!(delta(&before, &lb.stats(), StatSlot::FlowMoved), 1);

        // The published port moves from 8000 to 8001 (under `keep`, so nothing but the
        // frontend can stop the flow): the established flow's next packet to 8000 is no
        // longer for a frontend and passes untouched.
        // (One packet first, so the flow's stamp is current again after the reloads above:
        // the frontend lookup renews it, with the service's flags, `keep` = none.)
        let published_key = forward_key(published_client, node_port);
        let stale = lb
            .dp
            .tracked_flow(&published_key)
            .unwrap()
            .expect("tracked");
        let out = lb.run(&published_ack.build());
        assert_eq!(
            out.packet,
            published_ack
                .clone()
                .with_dst(sock("198.18.2.12", 9000))
                .build()
        );
        let renewed = lb
            .dp
            .tracked_flow(&published_key)
            .unwrap()
            .expect("tracked");
        assert!(
            renewed.frontend_gen > stale.frontend_gen,
            "stamp renewed: {} after {}",
            renewed.frontend_gen,
            stale.frontend_gen
        );
        assert_eq!(renewed.service_flags, 0);
        let gone = without.replace("\"8000:9000/tcp\"", "\"8001:9000/tcp\"");
        assert_ne!(gone, without);
        reload(&mut lb, &gone);
        let before = lb.stats();
        let frame = published_ack.build();
        let out = lb.run(&frame);
        assert_eq!((out.action, out.packet), (XDP_PASS, frame));
        let after = lb.stats();
        assert_eq!(delta(&before, &after, StatSlot::PassNotFrontend), 1);
        assert_eq!(delta(&before, &after, StatSlot::NatForward), 0);
    });
}

// ---------------------------------------------------------------------------------------------
// The mesh tunnel between swarm nodes (lb-ebpf `tunnel`): this node is 198.18.2.1 on the
// backend side, its peer node 198.18.2.20 (a neighbour there). A task on the peer has the
// ingress address TASK_REMOTE; a task here has TASK_LOCAL, delivered to 198.18.2.10.

const OWN: &str = "198.18.2.1";
const PEER: &str = "198.18.2.20";
const TASK_REMOTE: &str = "198.19.0.5";
const TASK_LOCAL: &str = "198.19.0.6";

const MESH: &str = r#"
services:
  web:
    ports: ["8000:9000/tcp", "8000:9000/udp"]
    backends: ["198.19.0.5"]
  web.1.task:
    vip: 198.19.0.6
    ports: ["9000/tcp", "9000/udp"]
    backends: ["198.18.2.10"]
"#;

/// `MESH` as the swarm source makes it: web's backend is the task on the peer, and
/// `web.1.task` is the local task's delivery frontend.
fn mesh_edit(file: &mut lb_userspace::source::file::ServiceFile) {
    mesh_with_web_task(file, TASK_REMOTE, Some(PEER), None);
}

/// As the swarm source makes a file: web's one backend is the task `identity` (its ingress
/// address), on the node `via` (`None`: this one, on a subnet of `on_link_prefix` bits if
/// given), `web.1.task` the local task's delivery frontend, and this node and the peer the
/// mesh.
fn mesh_with_web_task(
    file: &mut lb_userspace::source::file::ServiceFile,
    identity: &str,
    via: Option<&str>,
    on_link_prefix: Option<u8>,
) {
    use lb_userspace::source::file::{MeshBackend, MeshNodes};
    file.services.get_mut("web").unwrap().backends[0].mesh = Some(MeshBackend {
        identity: identity.parse().unwrap(),
        via: via.map(|v| v.parse().unwrap()),
        on_link_prefix,
    });
    let delivery = file.services.get_mut("web.1.task").unwrap();
    delivery.tunnel_only = true;
    if on_link_prefix.is_some() {
        let task = delivery.backends[0].address;
        delivery.backends[0].mesh = Some(MeshBackend {
            identity: task,
            via: None,
            on_link_prefix,
        });
    }
    file.mesh = Some(MeshNodes {
        own: OWN.parse().unwrap(),
        peers: [PEER.parse().unwrap()].into(),
    });
}

fn with_mesh(test: impl FnOnce(Loaded) + Send) {
    ProgNode::new("mesh", &[])
        .expect("node namespace")
        .run_with(MESH, 4096, mesh_edit, test)
        .expect("program loaded");
}

/// A SYN for a task on a peer whose neighbour entry is gone (a node just joined, or its entry
/// expired): the FIB answers "no neighbour", and the SYN is still clamped to the path's MTU
/// less the tunnel's 28 bytes, then handed to TC to resolve the neighbour.
#[test]
fn a_syn_toward_a_peer_without_a_neighbour_entry_is_clamped_to_the_paths_mtu() {
    if !e2e_enabled() {
        return;
    }
    with_mesh(|mut lb| {
        let client = sock(CLIENT, 40000);
        let frontend = sock(NODE_CLIENT_SIDE, 8000);
        let task = sock(TASK_REMOTE, 9000);
        let syn = with_mss(&Ipv4Frame::tcp(client, frontend, TCP_SYN).build(), 1460);
        let out = lb.without_neighbour(10, |lb| lb.run(&syn));
        assert_eq!(out.action, XDP_PASS, "handed to TC");
        assert_eq!(out.handoff, Some(Handoff::forward(lb.backend_if)));
        // The frame keeps the client's MACs: TC writes them once the neighbour is resolved.
        let macs: ([u8; 6], [u8; 6]) =
            (syn[6..12].try_into().unwrap(), syn[..6].try_into().unwrap());
        let expected = tunnel_wrap(
            &with_mss(
                &Ipv4Frame::tcp(client, task, TCP_SYN).build(),
                1500 - 28 - 40,
            ),
            macs,
            OWN.parse().unwrap(),
            PEER.parse().unwrap(),
            entropy(40000, 9000),
        );
        assert_eq!(out.packet, expected);
        parse_ipv4(&out.packet).expect("outer checksums");
        parse_ipv4(&tunnel_inner(&out.packet)).expect("inner checksums");
    });
}

/// The tunnel's UDP source port for a packet: the ports of the packet it wraps as it leaves
/// (translated, as TC reads them in an aggregate it wraps: a flow's segments and aggregates
/// take one queue on the peer), with the top bits set.
fn entropy(sport: u16, dport: u16) -> u16 {
    (sport ^ dport) | 0xc000
}

/// `inner` as the peer sends it through the tunnel to this node (`PEER` to `OWN`, from the
/// peer's MAC to `node_mac`, the node's backend-side link), the outer source port the
/// `entropy` of the flow's `ports`.
fn from_peer(node_mac: [u8; 6], inner: &[u8], ports: (u16, u16)) -> Vec<u8> {
    tunnel_wrap(
        inner,
        (backend_mac(10), node_mac),
        PEER.parse().unwrap(),
        OWN.parse().unwrap(),
        entropy(ports.0, ports.1),
    )
}

#[test]
fn a_flow_for_a_task_on_another_node_goes_through_the_tunnel_and_its_replies_come_back() {
    if !e2e_enabled() {
        return;
    }
    with_mesh(|mut lb| {
        let client = sock(CLIENT, 40000);
        let frontend = sock(NODE_CLIENT_SIDE, 8000);
        let task = sock(TASK_REMOTE, 9000);
        let before = lb.stats();
        // A SYN with MSS 1460: the tunnel's 28 bytes need it at 1432 on this 1500-byte path.
        let syn = with_mss(&Ipv4Frame::tcp(client, frontend, TCP_SYN).build(), 1460);
        let out = lb.run(&syn);
        assert_eq!(out.action, XDP_PASS, "handed to TC");
        assert_eq!(out.handoff, Some(Handoff::forward(lb.backend_if)));
        let inner = with_mss(
            &Ipv4Frame::tcp(client, task, TCP_SYN).build(),
            1500 - 28 - 40,
        );
        let expected = tunnel_wrap(
            &inner,
            (lb.backend_if_mac, backend_mac(10)),
            OWN.parse().unwrap(),
            PEER.parse().unwrap(),
            entropy(40000, 9000),
        );
        assert_eq!(past_addresses(&out.packet), past_addresses(&expected));
        parse_ipv4(&out.packet).expect("outer checksums");
        parse_ipv4(&tunnel_inner(&out.packet)).expect("inner checksums");

        // The flow's next packet right after: sent on the route the SYN's FIB lookup left in
        // the route memo (the same interface; handed to TC, its MACs are the kernel's).
        let out = lb.run(&Ipv4Frame::tcp(client, frontend, TCP_ACK).build());
        assert_eq!(out.handoff, Some(Handoff::forward(lb.backend_if)));
        let expected = tunnel_wrap(
            &Ipv4Frame::tcp(client, task, TCP_ACK).build(),
            (lb.backend_if_mac, backend_mac(10)),
            OWN.parse().unwrap(),
            PEER.parse().unwrap(),
            entropy(40000, 9000),
        );
        assert_eq!(past_addresses(&out.packet), past_addresses(&expected));

        // The path's MTU falls to 1400 while the memo still holds the 1500 route: a new
        // flow's SYN is clamped to the new MTU (a SYN asks the FIB: its MSS lasts as long as
        // its connection).
        lb.set_backend_mtu(1400).expect("MTU");
        let other = sock(CLIENT, 40001);
        let out = lb.run(&with_mss(
            &Ipv4Frame::tcp(other, frontend, TCP_SYN).build(),
            1460,
        ));
        lb.set_backend_mtu(1500).expect("MTU");
        assert_eq!(out.handoff, Some(Handoff::forward(lb.backend_if)));
        let expected = tunnel_wrap(
            &with_mss(
                &Ipv4Frame::tcp(other, task, TCP_SYN).build(),
                1400 - 28 - 40,
            ),
            (lb.backend_if_mac, backend_mac(10)),
            OWN.parse().unwrap(),
            PEER.parse().unwrap(),
            entropy(40001, 9000),
        );
        assert_eq!(past_addresses(&out.packet), past_addresses(&expected));

        // The task's answer comes back from the peer, wrapped; it leaves unwrapped, from the
        // address and port the client connected to.
        let answer = Ipv4Frame::tcp(task, client, TCP_SYN | TCP_ACK);
        let wrapped = from_peer(lb.backend_if_mac, &answer.build(), (9000, 40000));
        let out = lb.run_from(&wrapped, lb.backend_if);
        assert_eq!(out.action, XDP_PASS);
        assert_eq!(out.handoff, Some(Handoff::forward(lb.client_if)));
        let unwrapped = answer
            .clone()
            .with_macs(backend_mac(10), lb.backend_if_mac)
            .with_src(frontend)
            .build();
        assert_eq!(out.packet, unwrapped);
        let after = lb.stats();
        assert_deltas(
            &before,
            &after,
            &[
                (StatSlot::TunnelSent, 3),
                (StatSlot::TunnelReceived, 1),
                (StatSlot::NatForward, 3),
                (StatSlot::NatReply, 1),
                (StatSlot::DropTunnelNotPeer, 0),
            ],
        );
    });
}

#[test]
fn a_vlan_tagged_flow_for_a_task_on_another_node_is_wrapped_without_its_tags() {
    if !e2e_enabled() {
        return;
    }
    with_mesh(|mut lb| {
        let frontend = sock(NODE_CLIENT_SIDE, 8000);
        let task = sock(TASK_REMOTE, 9000);
        // 802.1Q and QinQ: the outer frame goes the underlay's way, so the tags go; the
        // inner IP packet follows the outer UDP header at once, as without tags.
        for tags in [&[100u16][..], &[100, 200]] {
            let client = sock(CLIENT, 40100 + tags.len() as u16);
            let syn = Ipv4Frame::tcp(client, frontend, TCP_ACK);
            let before = lb.stats();
            let out = lb.run(&with_vlan_tags(&syn.build(), tags));
            assert_eq!(
                out.handoff,
                Some(Handoff::forward(lb.backend_if)),
                "{tags:?}"
            );
            let expected = tunnel_wrap(
                &Ipv4Frame::tcp(client, task, TCP_ACK).build(),
                (lb.backend_if_mac, backend_mac(10)),
                OWN.parse().unwrap(),
                PEER.parse().unwrap(),
                entropy(client.port(), 9000),
            );
            assert_eq!(
                past_addresses(&out.packet),
                past_addresses(&expected),
                "tags {tags:?}"
            );
            parse_ipv4(&tunnel_inner(&out.packet)).expect("inner checksums");
            assert_eq!(delta(&before, &lb.stats(), StatSlot::TunnelSent), 1);
        }
    });
}

#[test]
fn a_tunneled_flow_keeps_its_peer_when_another_node_joins() {
    if !e2e_enabled() {
        return;
    }
    const JOINED: &str = "198.18.2.19";
    with_mesh(|mut lb| {
        let client = sock(CLIENT, 40200);
        let frontend = sock(NODE_CLIENT_SIDE, 8000);
        let outer_dst = |out: &lb_testkit::progtest::ProgOutcome| {
            *parse_ipv4(&out.packet).expect("wrapped").dst.ip()
        };
        let out = lb.run(&Ipv4Frame::tcp(client, frontend, TCP_SYN).build());
        assert_eq!(outer_dst(&out).to_string(), PEER);
        lb.run(&Ipv4Frame::tcp(client, frontend, TCP_ACK).build());
        // A node whose address sorts before the peer's joins the mesh: the flow names its
        // peer by index, which must stay the peer's.
        lb.change_with(MESH, |file| {
            mesh_edit(file);
            let mesh = file.mesh.as_mut().expect("mesh");
            mesh.peers.insert(JOINED.parse().unwrap());
        })
        .expect("a node joins");
        let before = lb.stats();
        let out = lb.run(&Ipv4Frame::tcp(client, frontend, TCP_ACK | TCP_PSH).build());
        assert_eq!(outer_dst(&out).to_string(), PEER, "the flow's peer");
        assert_eq!(delta(&before, &lb.stats(), StatSlot::NewFlow), 0);
        assert_eq!(delta(&before, &lb.stats(), StatSlot::TunnelSent), 1);
        // What a restarted lbd plans from: the kernel's indexes read back are the plan's.
        let read_back = lb.dp.tunnel_plan().expect("TUNNEL_PEERS");
        assert_eq!(read_back, lb.desired.tunnel);
        assert_eq!(read_back.peers.len(), 2);
        // The node leaves, and lbd restarts (it plans from what the kernel holds): the next
        // node to join must not get the departed one's index, which tracked flows may still
        // name.
        let departed = lb
            .desired
            .tunnel
            .index(JOINED.parse().unwrap())
            .expect("indexed");
        lb.change_with(MESH, mesh_edit).expect("the node leaves");
        let read_back = lb.dp.tunnel_plan().expect("TUNNEL_PEERS");
        assert_eq!(
            read_back, lb.desired.tunnel,
            "the index search's position kept"
        );
        lb.desired.tunnel = read_back;
        lb.change_with(MESH, |file| {
            mesh_edit(file);
            let mesh = file.mesh.as_mut().expect("mesh");
            mesh.peers.insert("198.18.2.20".parse().unwrap());
        })
        .expect("another node joins");
        let index = lb.desired.tunnel.index("198.18.2.20".parse().unwrap());
        assert_ne!(
            index,
            Some(departed),
            "the departed node's index given out again"
        );
    });
}

/// The node a task runs on gets another data-path address (and so another index) while the
/// task stays: a flow sent to it follows the task to the new address, not the old index
/// (cleared once the old address is gone), under any removal policy.
#[test]
fn a_tunneled_flow_follows_its_tasks_node_to_a_new_address() {
    if !e2e_enabled() {
        return;
    }
    const MOVED: &str = "198.18.2.21";
    with_mesh(|mut lb| {
        let client = sock(CLIENT, 40210);
        let frontend = sock(NODE_CLIENT_SIDE, 8000);
        let outer_dst = |out: &lb_testkit::progtest::ProgOutcome| {
            parse_ipv4(&out.packet).map(|p| p.dst.ip().to_string()).ok()
        };
        let out = lb.run(&Ipv4Frame::tcp(client, frontend, TCP_SYN).build());
        assert_eq!(outer_dst(&out).as_deref(), Some(PEER));
        lb.run(&Ipv4Frame::tcp(client, frontend, TCP_ACK).build());
        lb.change_with(MESH, |file| {
            mesh_with_web_task(file, TASK_REMOTE, Some(MOVED), None);
            file.mesh.as_mut().expect("mesh").peers = [MOVED.parse().unwrap()].into();
        })
        .expect("the task's node moves");
        // The flow's next packet in a later tick.
        lb.age_flow(&forward_key(client, frontend), std::time::Duration::ZERO);
        let before = lb.stats();
        let out = lb.run(&Ipv4Frame::tcp(client, frontend, TCP_ACK | TCP_PSH).build());
        assert_eq!(
            outer_dst(&out).as_deref(),
            Some(MOVED),
            "the task's node now"
        );
        assert_deltas(
            &before,
            &lb.stats(),
            &[
                (StatSlot::TunnelSent, 1),
                (StatSlot::NewFlow, 0),
                (StatSlot::FlowMoved, 0),
                (StatSlot::DropTunnelFailed, 0),
            ],
        );
    });
}

#[test]
fn a_peers_tunnel_packet_reaches_the_local_task_and_the_reply_goes_back_to_the_peer() {
    if !e2e_enabled() {
        return;
    }
    with_mesh(|mut lb| {
        let client = sock("198.18.9.9", 41000);
        let task = sock(TASK_LOCAL, 9000);
        let gwbridge = sock("198.18.2.10", 9000);
        let request = Ipv4Frame::tcp(client, task, TCP_SYN);
        let wrapped = from_peer(lb.backend_if_mac, &request.build(), (41000, 8000));
        let before = lb.stats();
        let out = lb.run_from(&wrapped, lb.backend_if);
        assert_eq!(out.action, XDP_PASS);
        assert_eq!(out.handoff, Some(Handoff::forward(lb.backend_if)));
        let delivered = request
            .clone()
            .with_macs(backend_mac(10), lb.backend_if_mac)
            .with_dst(gwbridge)
            .build();
        assert_eq!(
            out.packet, delivered,
            "unwrapped, to the task, the client kept"
        );

        // The task answers the client: back to the peer, from the task's ingress address.
        let answer = Ipv4Frame::tcp(gwbridge, client, TCP_SYN | TCP_ACK)
            .with_macs(backend_mac(0), lb.backend_if_mac);
        let out = lb.run_from(&answer.build(), lb.backend_if);
        assert_eq!(out.action, XDP_PASS);
        assert_eq!(out.handoff, Some(Handoff::forward(lb.backend_if)));
        let expected = tunnel_wrap(
            &answer.clone().with_src(task).build(),
            (lb.backend_if_mac, backend_mac(10)),
            OWN.parse().unwrap(),
            PEER.parse().unwrap(),
            entropy(9000, 41000),
        );
        assert_eq!(past_addresses(&out.packet), past_addresses(&expected));
        let after = lb.stats();
        assert_eq!(delta(&before, &after, StatSlot::TunnelReceived), 1);
        assert_eq!(delta(&before, &after, StatSlot::TunnelSent), 1);
    });
}

/// A client's packets move to another entry node (ECMP once a node failed, an address that
/// failed over): the task's replies follow them there rather than go back to the node the
/// flow came through first, which may be gone. A SYN sent again through another node takes
/// its answer there at once; a confirmed flow's replies follow from its first packet of a
/// later tick, on either path to the flow (stamped, or through `FRONTENDS` after a change).
#[test]
fn a_delivered_flows_replies_follow_its_client_to_another_entry_node() {
    if !e2e_enabled() {
        return;
    }
    const OTHER_PEER: &str = "198.18.2.19";
    let three_nodes = |file: &mut lb_userspace::source::file::ServiceFile| {
        mesh_edit(file);
        let mesh = file.mesh.as_mut().expect("mesh");
        mesh.peers.insert(OTHER_PEER.parse().unwrap());
    };
    with_mesh(|mut lb| {
        lb.change_with(MESH, three_nodes)
            .expect("a third node joins");
        let client = sock("198.18.9.9", 41100);
        let task = sock(TASK_LOCAL, 9000);
        let gwbridge = sock("198.18.2.10", 9000);
        let node_mac = lb.backend_if_mac;
        // The client's packet with `flags` through `peer`: delivered to the task.
        let through = |lb: &mut Loaded, peer: &str, flags: u8, step: &str| {
            let wrapped = tunnel_wrap(
                &Ipv4Frame::tcp(client, task, flags).build(),
                (backend_mac(10), node_mac),
                peer.parse().unwrap(),
                OWN.parse().unwrap(),
                entropy(41100, 8000),
            );
            let out = lb.run_from(&wrapped, lb.backend_if);
            let delivered = Ipv4Frame::tcp(client, task, flags)
                .with_macs(backend_mac(10), node_mac)
                .with_dst(gwbridge)
                .build();
            assert_eq!(out.packet, delivered, "{step}: delivered");
        };
        // The task's answer, and the peer the node sends it to (the outer destination).
        let answer = |lb: &mut Loaded, flags: u8| {
            let out = lb.run_from(
                &Ipv4Frame::tcp(gwbridge, client, flags)
                    .with_macs(backend_mac(0), lb.backend_if_mac)
                    .build(),
                lb.backend_if,
            );
            assert_eq!(out.handoff, Some(Handoff::forward(lb.backend_if)));
            let inner = parse_ipv4(&tunnel_inner(&out.packet)).expect("an answer, wrapped");
            assert_eq!(
                (inner.src, inner.dst),
                (task, client),
                "from the task's address"
            );
            parse_ipv4(&out.packet)
                .expect("wrapped")
                .dst
                .ip()
                .to_string()
        };
        // A later tick of the kernel's clock (HZ is 100 at least).
        let next_tick = || std::thread::sleep(std::time::Duration::from_millis(25));
        let before = lb.stats();
        through(&mut lb, PEER, TCP_SYN, "opened");
        assert_eq!(answer(&mut lb, TCP_SYN | TCP_ACK), PEER);
        // The SYN-ACK was lost with the first node; the client's SYN again comes through
        // the other (unconfirmed: every packet counts).
        through(&mut lb, OTHER_PEER, TCP_SYN, "SYN again");
        assert_eq!(answer(&mut lb, TCP_SYN | TCP_ACK), OTHER_PEER, "SYN again");
        through(&mut lb, OTHER_PEER, TCP_ACK, "confirmed");
        assert_eq!(answer(&mut lb, TCP_ACK), OTHER_PEER, "confirmed");
        next_tick();
        through(&mut lb, PEER, TCP_ACK | TCP_PSH, "moved back");
        assert_eq!(answer(&mut lb, TCP_ACK), PEER, "moved back");
        // A change of frontends: the flow's next packet takes the `FRONTENDS` path.
        let another_service = r#"
  other:
    vip: 198.18.100.7
    ports: ["80/tcp"]
    backends: ["198.18.2.11"]
"#;
        lb.change_with(&format!("{MESH}{another_service}"), three_nodes)
            .expect("another service");
        next_tick();
        through(
            &mut lb,
            OTHER_PEER,
            TCP_ACK | TCP_PSH,
            "moved after a change",
        );
        assert_eq!(answer(&mut lb, TCP_ACK), OTHER_PEER, "moved after a change");
        let after = lb.stats();
        assert_deltas(
            &before,
            &after,
            &[
                (StatSlot::NewFlow, 1),
                (StatSlot::FlowConfirmed, 1),
                (StatSlot::FlowLost, 0),
                (StatSlot::TunnelReceived, 5),
                (StatSlot::TunnelSent, 5),
            ],
        );
    });
}

/// `MESH` with web's one task on this node: a client entering here reaches it straight
/// (through `docker_gwbridge`), one entering another node through the tunnel and its delivery
/// frontend; the task sees the same connection either way.
const MESH_LOCAL_TASK: &str = r#"
services:
  web:
    ports: ["8000:9000/tcp"]
    backends: ["198.18.2.10"]
  web.1.task:
    vip: 198.19.0.6
    ports: ["9000/tcp"]
    backends: ["198.18.2.10"]
"#;

/// A container on the task's own bridge calling the published port (or the task itself): the
/// task would answer it straight over their subnet, past the node, so the node speaks for it
/// from its own address and a node port (hairpin), and gives the answer the frontend's
/// address. A client outside that subnet keeps its own address.
#[test]
fn a_client_on_the_tasks_own_subnet_is_answered_through_the_node() {
    if !e2e_enabled() {
        return;
    }
    let local_task = |file: &mut lb_userspace::source::file::ServiceFile| {
        mesh_with_web_task(file, TASK_LOCAL, None, Some(24));
    };
    let node = ProgNode::new("hairpin", &[]).expect("node namespace");
    node.run_with(MESH_LOCAL_TASK, 4096, local_task, |mut lb| {
        let frontend = sock(NODE_CLIENT_SIDE, 8000);
        let gwbridge = sock("198.18.2.10", 9000);
        let node_mac = lb.backend_if_mac;
        let before = lb.stats();
        // (client, its MAC): a container on the bridge, and the task itself.
        for (i, (client, mac)) in [
            (sock("198.18.2.11", 41300), backend_mac(1)),
            (sock("198.18.2.10", 41301), backend_mac(0)),
        ]
        .into_iter()
        .enumerate()
        {
            let syn = Ipv4Frame::tcp(client, frontend, TCP_SYN).with_macs(mac, node_mac);
            let out = lb.run_from(&syn.build(), lb.backend_if);
            let sent = parse_ipv4(&out.packet).expect("translated, checksums valid");
            assert_eq!(
                *sent.src.ip(),
                OWN.parse::<std::net::Ipv4Addr>().unwrap(),
                "client {i}: from the node's address on the bridge"
            );
            assert!(
                (lb_common::limits::FULLNAT_PORT_MIN..=lb_common::limits::FULLNAT_PORT_MAX)
                    .contains(&sent.src.port()),
                "client {i}: a node port: {sent:?}"
            );
            let to_task = |frame: Ipv4Frame| frame.with_src(sent.src).with_dst(gwbridge).build();
            assert_eq!(out.handoff, Some(Handoff::forward(lb.backend_if)));
            assert_eq!(out.packet, to_task(syn.clone()), "client {i}: to the task");
            // The task answers the node; the client gets it from the frontend.
            let answer = Ipv4Frame::tcp(gwbridge, sent.src, TCP_SYN | TCP_ACK)
                .with_macs(backend_mac(0), node_mac);
            let out = lb.run_from(&answer.build(), lb.backend_if);
            assert_eq!(
                out.packet,
                answer.clone().with_src(frontend).with_dst(client).build(),
                "client {i}: the answer, from the frontend"
            );
            assert_eq!(out.handoff, Some(Handoff::forward(lb.backend_if)));
            // The flow's next packet keeps the node port.
            let ack = Ipv4Frame::tcp(client, frontend, TCP_ACK).with_macs(mac, node_mac);
            let out = lb.run_from(&ack.build(), lb.backend_if);
            assert_eq!(out.packet, to_task(ack), "client {i}: confirmed");
        }
        // A container on the peer, whose bridge has the same subnet (Docker's default): its
        // flow comes through the tunnel to the task's delivery frontend, and the node speaks
        // for it too; the answer goes back through the tunnel, from the task's address.
        let task = sock(TASK_LOCAL, 9000);
        let remote = sock("198.18.2.12", 41303);
        let wrapped = tunnel_wrap(
            &Ipv4Frame::tcp(remote, task, TCP_SYN).build(),
            (backend_mac(10), node_mac),
            PEER.parse().unwrap(),
            OWN.parse().unwrap(),
            entropy(remote.port(), 8000),
        );
        let out = lb.run_from(&wrapped, lb.backend_if);
        let sent = parse_ipv4(&out.packet).expect("delivered, checksums valid");
        assert_eq!(
            (sent.src.ip().to_string(), sent.dst),
            (OWN.to_string(), gwbridge),
            "through the tunnel: from the node's address on the bridge"
        );
        let answer = Ipv4Frame::tcp(gwbridge, sent.src, TCP_SYN | TCP_ACK)
            .with_macs(backend_mac(0), node_mac);
        let out = lb.run_from(&answer.build(), lb.backend_if);
        let inner = parse_ipv4(&tunnel_inner(&out.packet)).expect("the answer, wrapped");
        assert_eq!(
            (inner.src, inner.dst),
            (task, remote),
            "from the task's address"
        );
        let outer = parse_ipv4(&out.packet).expect("wrapped");
        assert_eq!(outer.dst.ip().to_string(), PEER, "back to the entry node");

        // A client outside the bridge's subnet keeps its own address.
        let outside = sock(CLIENT, 41302);
        let syn = Ipv4Frame::tcp(outside, frontend, TCP_SYN);
        let out = lb.run(&syn.build());
        assert_eq!(
            parse_ipv4(&out.packet).expect("translated").src,
            outside,
            "a client outside the subnet: its own address"
        );
        assert_deltas(
            &before,
            &lb.stats(),
            &[
                (StatSlot::NewFlow, 4),
                (StatSlot::FlowConfirmed, 2),
                (StatSlot::TunnelReceived, 1),
                (StatSlot::TunnelSent, 1),
            ],
        );
    })
    .expect("program loaded");
}

/// A hairpin speaks from a node port of the full-NAT range on the node's address, where a
/// swarm service may publish a port of its own: the search passes over such a port (its
/// replies would open flows to that service) and takes the next one.
#[test]
fn a_hairpin_never_speaks_from_a_published_port() {
    if !e2e_enabled() {
        return;
    }
    let frontend = sock(NODE_CLIENT_SIDE, 8000);
    let client = sock("198.18.2.11", 41310);
    let (search, _) = fullnat_search(frontend, client, 0);
    let services = format!(
        "{MESH_LOCAL_TASK}  other:\n    ports: [\"{}:9100/tcp\"]\n    backends: [\"198.18.2.12\"]\n",
        search[0]
    );
    let local_task = |file: &mut lb_userspace::source::file::ServiceFile| {
        mesh_with_web_task(file, TASK_LOCAL, None, Some(24));
    };
    let node = ProgNode::new("hairport", &[]).expect("node namespace");
    node.run_with(&services, 4096, local_task, |mut lb| {
        let syn =
            Ipv4Frame::tcp(client, frontend, TCP_SYN).with_macs(backend_mac(1), lb.backend_if_mac);
        let out = lb.run_from(&syn.build(), lb.backend_if);
        let sent = parse_ipv4(&out.packet).expect("translated");
        assert_eq!(
            sent.src,
            sock(OWN, search[1]),
            "the search's second port: its first ({}) is published",
            search[0]
        );
    })
    .expect("program loaded");
}

/// A TCP connection that moves between a remote entry node and the task's own node (the
/// entry node failed or drained, and the client's packets now come here straight; or back)
/// keeps its client port at the task and takes its replies along, confirmed or not yet:
/// another source port would only earn a RST. A SYN on the same client port is a new
/// connection and still gets another port; so does a packet past its SYN that came the same
/// way as the flow holding the port (straight, to another node address).
#[test]
fn a_connection_moving_between_the_tunnel_and_the_tasks_own_node_keeps_its_port() {
    if !e2e_enabled() {
        return;
    }
    let local_task = |file: &mut lb_userspace::source::file::ServiceFile| {
        mesh_with_web_task(file, TASK_LOCAL, None, None);
    };
    let node = ProgNode::new("moved", &[]).expect("node namespace");
    node.run_with(MESH_LOCAL_TASK, 4096, local_task, |mut lb| {
        let frontend = sock(NODE_CLIENT_SIDE, 8000);
        let task = sock(TASK_LOCAL, 9000);
        let gwbridge = sock("198.18.2.10", 9000);
        let node_mac = lb.backend_if_mac;
        // The client's packet through the peer: delivered to the task, from the client.
        let through = |lb: &mut Loaded, client: SocketAddrV4, flags: u8, step: &str| {
            let wrapped = tunnel_wrap(
                &Ipv4Frame::tcp(client, task, flags).build(),
                (backend_mac(10), node_mac),
                PEER.parse().unwrap(),
                OWN.parse().unwrap(),
                entropy(client.port(), 8000),
            );
            let out = lb.run_from(&wrapped, lb.backend_if);
            let delivered = Ipv4Frame::tcp(client, task, flags)
                .with_macs(backend_mac(10), node_mac)
                .with_dst(gwbridge)
                .build();
            assert_eq!(
                out.packet, delivered,
                "{step}: delivered through the tunnel"
            );
        };
        // The client's packet straight to this node's `frontend`: delivered from `seen`.
        let straight_to = |lb: &mut Loaded, client: SocketAddrV4, frontend, flags: u8| {
            let packet = Ipv4Frame::tcp(client, frontend, flags);
            let out = lb.run(&packet.build());
            let seen = parse_ipv4(&out.packet).expect("translated, valid").src;
            assert_eq!(out.packet, packet.with_dst(gwbridge).with_src(seen).build());
            seen
        };
        let straight = |lb: &mut Loaded, client: SocketAddrV4, flags: u8| {
            straight_to(lb, client, frontend, flags)
        };
        // The task's answer to `to`: wrapped back to the peer from the task's ingress
        // address, or sent straight to the client from the frontend.
        let answer = |lb: &mut Loaded, to: SocketAddrV4, client: SocketAddrV4, tunneled: bool| {
            let reply =
                Ipv4Frame::tcp(gwbridge, to, TCP_ACK).with_macs(backend_mac(0), lb.backend_if_mac);
            let out = lb.run_from(&reply.build(), lb.backend_if);
            if tunneled {
                let inner = parse_ipv4(&tunnel_inner(&out.packet)).expect("an answer, wrapped");
                assert_eq!(
                    (inner.src, inner.dst),
                    (task, client),
                    "from the task's address"
                );
                let outer = parse_ipv4(&out.packet).expect("wrapped");
                assert_eq!(outer.dst.ip().to_string(), PEER, "back to the entry node");
            } else {
                assert_eq!(
                    out.packet,
                    reply.with_src(frontend).with_dst(client).build(),
                    "straight to the client, from the frontend"
                );
            }
        };
        let before = lb.stats();
        let client = sock(CLIENT, 41200);
        through(&mut lb, client, TCP_SYN, "opened");
        answer(&mut lb, client, client, true);
        through(&mut lb, client, TCP_ACK, "confirmed");
        // The entry node is gone: the client's next segment comes here straight.
        assert_eq!(
            straight(&mut lb, client, TCP_ACK | TCP_PSH),
            client,
            "moved here"
        );
        answer(&mut lb, client, client, false);
        assert_eq!(straight(&mut lb, client, TCP_ACK), client, "confirmed here");
        answer(&mut lb, client, client, false);
        // And back through the tunnel (the entry node is back, or this node's address moved).
        through(&mut lb, client, TCP_ACK | TCP_PSH, "moved back");
        answer(&mut lb, client, client, true);
        through(&mut lb, client, TCP_ACK, "confirmed back");
        answer(&mut lb, client, client, true);

        // A SYN straight here on the port of a live tunneled flow opens another connection:
        // another source port, and each flow's answers go their own way.
        let other = sock(CLIENT, 41201);
        through(&mut lb, other, TCP_SYN, "another opened");
        through(&mut lb, other, TCP_ACK, "another confirmed");
        let seen = straight(&mut lb, other, TCP_SYN);
        assert_eq!(seen.ip(), other.ip(), "the client's address");
        assert_ne!(seen.port(), other.port(), "a SYN gets another port");
        answer(&mut lb, other, other, true);
        answer(&mut lb, seen, other, false);

        // Moved before it was confirmed: its SYN came through the tunnel, its ACK straight.
        let early = sock(CLIENT, 41202);
        through(&mut lb, early, TCP_SYN, "opened, not confirmed");
        assert_eq!(
            straight(&mut lb, early, TCP_ACK),
            early,
            "moved unconfirmed"
        );
        answer(&mut lb, early, early, false);

        // The same way in: a flow straight here, then a packet of its client port past its
        // SYN to another of the node's addresses (no entry): not the same connection.
        let same_way = sock(CLIENT, 41203);
        straight(&mut lb, same_way, TCP_SYN);
        straight(&mut lb, same_way, TCP_ACK);
        let seen = straight_to(&mut lb, same_way, sock(OWN, 8000), TCP_ACK);
        assert_ne!(
            seen.port(),
            same_way.port(),
            "the same way in: another port"
        );
        let after = lb.stats();
        assert_deltas(
            &before,
            &after,
            &[
                // Three SYNs through the tunnel and two straight here, and the packets placed
                // mid-flow, each counted lost (no entry): three moves and the same-way one.
                (StatSlot::NewFlow, 9),
                (StatSlot::FlowLost, 4),
                (StatSlot::FlowConfirmed, 5),
                (StatSlot::TunnelReceived, 7),
                (StatSlot::TunnelSent, 4),
            ],
        );
    })
    .expect("program loaded");
}

/// ICMP errors about a flow that crosses the tunnel go the flow's way: on the entry node an
/// error from the client's side goes through the tunnel to the task's node (not by the FIB to
/// the task's ingress address, which the underlay does not route), and on the task's node the
/// task's own error goes back through the tunnel to the entry node, which answers the client.
#[test]
fn icmp_errors_about_a_tunneled_flow_go_through_the_tunnel() {
    if !e2e_enabled() {
        return;
    }
    with_mesh(|mut lb| {
        let own: std::net::Ipv4Addr = OWN.parse().unwrap();
        let peer: std::net::Ipv4Addr = PEER.parse().unwrap();
        let to_peer_macs = (lb.backend_if_mac, backend_mac(10));
        // Entry node: a client's datagram to the published port goes to the task on the peer.
        let client = sock(CLIENT, 5000);
        let frontend = sock(NODE_CLIENT_SIDE, 8000);
        let task = sock(TASK_REMOTE, 9000);
        let out = lb.run(&Ipv4Frame::udp(client, frontend).build());
        assert_eq!(out.handoff, Some(Handoff::forward(lb.backend_if)));
        // The client's host says port unreachable about the answer it got from the frontend.
        let error = icmpv4_frame(
            (CLIENT_MAC, NODE_MAC),
            *client.ip(),
            *frontend.ip(),
            &icmpv4_error(3, 3, &Ipv4Frame::udp(frontend, client).build(), 8),
        );
        let before = lb.stats();
        let out = lb.run(&error);
        assert_eq!(out.handoff, Some(Handoff::forward(lb.backend_if)));
        let translated = icmpv4_frame(
            (CLIENT_MAC, NODE_MAC),
            *client.ip(),
            *task.ip(),
            &icmpv4_error(3, 3, &Ipv4Frame::udp(task, client).build(), 8),
        );
        let expected = tunnel_wrap(&translated, to_peer_macs, own, peer, 0xc000);
        assert_eq!(
            past_addresses(&out.packet),
            past_addresses(&expected),
            "to the task's node, through the tunnel"
        );
        parse_icmpv4(&tunnel_inner(&out.packet)).expect("inner checksums");
        let after = lb.stats();
        assert_eq!(delta(&before, &after, StatSlot::IcmpErrorToBackend), 1);
        assert_eq!(delta(&before, &after, StatSlot::TunnelSent), 1);

        // Task's node: a datagram from the peer (the flow's entry node) for the local task...
        let far_client = sock("198.18.9.9", 5001);
        let local_task = sock(TASK_LOCAL, 9000);
        let gwbridge = sock("198.18.2.10", 9000);
        let request = Ipv4Frame::udp(far_client, local_task);
        let wrapped = tunnel_wrap(
            &request.build(),
            (backend_mac(10), lb.backend_if_mac),
            peer,
            own,
            entropy(5001, 8000),
        );
        let out = lb.run_from(&wrapped, lb.backend_if);
        assert_eq!(out.handoff, Some(Handoff::forward(lb.backend_if)));
        // ...whose socket is closed: the task's port unreachable goes back to the peer, from
        // the task's ingress address and quoting the datagram as the peer sent it.
        let error = icmpv4_frame(
            (backend_mac(0), lb.backend_if_mac),
            *gwbridge.ip(),
            *far_client.ip(),
            &icmpv4_error(3, 3, &Ipv4Frame::udp(far_client, gwbridge).build(), 8),
        );
        let before = lb.stats();
        let out = lb.run_from(&error, lb.backend_if);
        assert_eq!(out.handoff, Some(Handoff::forward(lb.backend_if)));
        let translated = icmpv4_frame(
            (backend_mac(0), lb.backend_if_mac),
            *local_task.ip(),
            *far_client.ip(),
            &icmpv4_error(3, 3, &Ipv4Frame::udp(far_client, local_task).build(), 8),
        );
        let expected = tunnel_wrap(&translated, to_peer_macs, own, peer, 0xc000);
        assert_eq!(
            past_addresses(&out.packet),
            past_addresses(&expected),
            "back to the entry node, through the tunnel"
        );
        let after = lb.stats();
        assert_eq!(delta(&before, &after, StatSlot::IcmpErrorToClient), 1);
        assert_eq!(delta(&before, &after, StatSlot::TunnelSent), 1);
    });
}

#[test]
fn a_udp_datagram_too_big_for_the_tunnel_is_answered_with_the_tunnels_mtu() {
    if !e2e_enabled() {
        return;
    }
    with_mesh(|mut lb| {
        let client = sock(CLIENT, 40200);
        let frontend = sock(NODE_CLIENT_SIDE, 8000);
        let sized = |payload: usize| Ipv4Frame {
            payload: (0..payload).map(|i| (i * 3) as u8).collect(),
            ..Ipv4Frame::udp(client, frontend)
        };
        // 20 + 8 + 1444 = 1472 bytes: with the tunnel's 28, exactly the 1500-byte path.
        let out = lb.run(&sized(1444).build());
        assert_eq!(out.action, XDP_PASS);
        assert_eq!(out.handoff, Some(Handoff::forward(lb.backend_if)));
        assert_eq!(out.packet.len(), 14 + 28 + 1472, "wrapped whole");

        // One byte more does not fit: "fragmentation needed" from the address the client sent
        // to, with the MTU the tunnel leaves (1472), quoting the datagram as sent.
        let big = sized(1445).build();
        let before = lb.stats();
        let out = lb.run(&big);
        let after = lb.stats();
        let message = frag_needed(1472, &big);
        let expected = node_icmpv4(*frontend.ip(), *client.ip(), &message);
        assert_eq!(out.handoff, Some(Handoff::forward(lb.client_if)));
        assert_eq!(out.packet, expected);
        parse_icmpv4(&out.packet).expect("checksums");
        assert_deltas(
            &before,
            &after,
            &[
                (StatSlot::IcmpTooBig, 1),
                (StatSlot::TunnelSent, 0),
                (StatSlot::DropTunnelFailed, 0),
                (StatSlot::DropTooBig, 0),
            ],
        );
    });
}

/// A single TCP segment too big for the tunnel (its SYN was not clamped: the MSS option not
/// first, or the path's MTU fell since): with the program in native mode, where no aggregates
/// exist, it is answered "fragmentation needed" with the tunnel's MTU as a datagram is, so its
/// sender lowers its path MTU; in generic mode it may be an aggregate of two segments (the
/// second short) that fits its link, which only TC can tell: handed to TC.
#[test]
fn a_tcp_segment_too_big_for_the_tunnel_is_answered_in_native_mode() {
    if !e2e_enabled() {
        return;
    }
    with_mesh(|mut lb| {
        let client = sock(CLIENT, 40202);
        let frontend = sock(NODE_CLIENT_SIDE, 8000);
        lb.run(&Ipv4Frame::tcp(client, frontend, TCP_SYN).build());
        // 20 + 20 + 1433 = 1473 bytes of IP: with the tunnel's 28, a byte over the path.
        let big = Ipv4Frame {
            payload: (0..1433).map(|i| (i * 5) as u8).collect(),
            ..Ipv4Frame::tcp(client, frontend, TCP_ACK)
        }
        .build();
        let before = lb.stats();
        let out = lb.run(&big);
        let after = lb.stats();
        let message = frag_needed(1472, &big);
        let expected = node_icmpv4(*frontend.ip(), *client.ip(), &message);
        assert_eq!(out.handoff, Some(Handoff::forward(lb.client_if)));
        assert_eq!(out.packet, expected, "native: answered");
        parse_icmpv4(&out.packet).expect("checksums");
        assert_deltas(
            &before,
            &after,
            &[
                (StatSlot::IcmpTooBig, 1),
                (StatSlot::Aggregate, 0),
                (StatSlot::TunnelSent, 0),
            ],
        );

        // The client's interface in generic mode: to TC, to be wrapped if it is an aggregate.
        lb.dp
            .set_interface_mac(lb.client_if, None, true)
            .expect("generic mode");
        let before = lb.stats();
        let out = lb.run(&big);
        let after = lb.stats();
        assert_eq!(
            out.handoff,
            Some(Handoff::tunnel(1, lb.backend_if)),
            "generic: to TC"
        );
        assert_deltas(
            &before,
            &after,
            &[(StatSlot::IcmpTooBig, 0), (StatSlot::Aggregate, 1)],
        );
    });
}

/// A peer's stop notice (a datagram to the tunnel port whose first byte is 0) goes to the
/// kernel untouched, for lbd's socket; a peer's tunnel packet that carries neither IP nor a
/// notice is dropped, and a notice from a node that is not a peer too.
#[test]
fn a_peers_stop_notice_reaches_the_kernel_and_other_payloads_are_dropped() {
    if !e2e_enabled() {
        return;
    }
    with_mesh(|mut lb| {
        let notice = [&[0u8; 14][..], b"\x00ms\x01\x07web.1.a"].concat();
        // A reply of a flow through the tunnel, which alone would be forwarded.
        lb.run(&Ipv4Frame::udp(sock(CLIENT, 5303), sock(NODE_CLIENT_SIDE, 8000)).build());
        let merged_first = Ipv4Frame::udp(sock(TASK_REMOTE, 9000), sock(CLIENT, 5303)).build();
        let wrapped = |payload: &[u8], from: &str| {
            tunnel_wrap(
                payload,
                (backend_mac(10), lb.backend_if_mac),
                from.parse().unwrap(),
                OWN.parse().unwrap(),
                lb_common::maps::tunnel::PORT,
            )
        };
        let cases = [
            (
                "a peer's stop notice",
                wrapped(&notice, PEER),
                XDP_PASS,
                StatSlot::PassNotFrontend,
            ),
            (
                "a peer's tunnel packet with version 5 inside",
                wrapped(&[&[0u8; 14][..], &[0x50; 20]].concat(), PEER),
                XDP_DROP,
                StatSlot::DropTunnelFailed,
            ),
            (
                "a stop notice from a node that is not a peer",
                wrapped(&notice, "198.18.2.21"),
                XDP_DROP,
                StatSlot::DropTunnelNotPeer,
            ),
            (
                "a peer's tunnel packet longer than its inner packet (merged by GRO)",
                wrapped(&[merged_first.as_slice(), &[0x45; 100]].concat(), PEER),
                XDP_DROP,
                StatSlot::DropTunnelFailed,
            ),
        ];
        for (what, frame, action, slot) in cases {
            let before = lb.stats();
            let out = lb.run_from(&frame, lb.backend_if);
            let after = lb.stats();
            assert_eq!(out.action, action, "{what}");
            assert_eq!(delta(&before, &after, slot), 1, "{what}");
            assert_eq!(
                delta(&before, &after, StatSlot::TunnelReceived),
                0,
                "{what}"
            );
            if action == XDP_PASS {
                assert_eq!(out.packet, frame, "{what}: untouched");
            }
        }
    });
}

#[test]
fn the_tunnel_and_delivery_frontends_refuse_everyone_but_peers() {
    if !e2e_enabled() {
        return;
    }
    with_mesh(|mut lb| {
        let client = sock("198.18.9.9", 41000);
        let request = Ipv4Frame::tcp(client, sock(TASK_LOCAL, 9000), TCP_SYN);
        let node_mac = lb.backend_if_mac;
        let from_peer = |frame: Vec<u8>| from_peer(node_mac, &frame, (41000, 8000));
        // The tunnel leads to delivery frontends and replies only.
        let to_published = Ipv4Frame::tcp(client, sock(NODE_CLIENT_SIDE, 8000), TCP_SYN);
        let to_node = Ipv4Frame::tcp(client, sock(OWN, 22), TCP_SYN);
        let v6 = Ipv6Frame::tcp(sock6("fd00:9::9", 41000), sock6("fd00:2::a", 9000), TCP_SYN);
        let cases: [(&str, Vec<u8>, StatSlot); 5] = [
            (
                "a tunnel packet from a node that is not a peer",
                tunnel_wrap(
                    &request.build(),
                    (backend_mac(11), lb.backend_if_mac),
                    "198.18.2.21".parse().unwrap(),
                    OWN.parse().unwrap(),
                    1234,
                ),
                StatSlot::DropTunnelNotPeer,
            ),
            (
                "a packet for a task's delivery frontend that did not come through the tunnel",
                request.build(),
                StatSlot::DropTunnelOnly,
            ),
            (
                "a peer's packet for a frontend that is no delivery frontend",
                from_peer(to_published.build()),
                StatSlot::DropTunnelOnly,
            ),
            (
                "a peer's packet for the node itself (no frontend, no reply)",
                from_peer(to_node.build()),
                StatSlot::DropTunnelOnly,
            ),
            (
                "a peer's IPv6 packet (the tunnel carries IPv4)",
                from_peer(v6.build()),
                StatSlot::DropTunnelFailed,
            ),
        ];
        for (what, frame, slot) in cases {
            let before = lb.stats();
            let out = lb.run_from(&frame, lb.backend_if);
            assert_eq!(out.action, XDP_DROP, "{what}");
            assert_eq!(delta(&before, &lb.stats(), slot), 1, "{what}");
        }
        assert_eq!(lb.dp.conntrack_occupancy().unwrap().0, 0, "no flow opened");
    });
}
