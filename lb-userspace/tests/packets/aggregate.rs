//! GSO/GRO aggregates (lb-ebpf `aggregate`): a TCP packet longer than the MTU of the link it
//! came in by is many segments the kernel hands generic XDP as one. Too big for its egress as
//! a whole, it goes whole through TC (which the egress device segments), translated, its TCP
//! checksum field holding the pseudo-header sum the kernel's segmentation starts from; through
//! the mesh tunnel, TC is asked to wrap it. A packet that fits its ingress link's MTU and not
//! its egress is answered "fragmentation needed" as before (the too-big tests, from a jumbo link).

use std::net::{SocketAddrV4, SocketAddrV6};

use lb_common::{maps::Handoff, stats::StatSlot};
use lb_testkit::{
    e2e_enabled,
    packet::{Ipv4Frame, Ipv6Frame, TCP_ACK, TCP_SYN, checksum, with_mss},
    progtest::{CLIENT, NODE_CLIENT_SIDE, assert_deltas, backend_mac},
};

use super::{
    IPV6_AND_FULLNAT, ONE_BACKEND, TASK_REMOTE, VIP, XDP_DROP, XDP_PASS, from_peer, sock,
    with_mesh, with_program,
};

/// Payload of the aggregates: 20 + 20 + 2000 bytes of IPv4, longer than the 1500-byte links
/// (and short enough for BPF_PROG_TEST_RUN's one page).
const PAYLOAD: usize = 2000;

/// `frame` (Ethernet, IPv4 or IPv6 without options, TCP or UDP) with its checksum field set
/// as the kernel keeps it for an aggregate: the sum of the pseudo-header (RFC 793 / RFC 768 /
/// RFC 8200 §8.1), not complemented.
pub fn with_pseudo_header_sum(mut frame: Vec<u8>) -> Vec<u8> {
    let v6 = frame[14] >> 4 == 6;
    let (l4, addrs, proto) = if v6 {
        (54, 22..54, frame[20])
    } else {
        (34, 26..34, frame[23])
    };
    let check_at = l4 + if proto == 17 { 6 } else { 16 };
    let l4_len = (frame.len() - l4) as u32;
    let mut pseudo = frame[addrs].to_vec();
    if v6 {
        pseudo.extend_from_slice(&l4_len.to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, proto]);
    } else {
        pseudo.extend_from_slice(&[0, proto]);
        pseudo.extend_from_slice(&(l4_len as u16).to_be_bytes());
    }
    let sum = !checksum(&pseudo, 0);
    frame[check_at..check_at + 2].copy_from_slice(&sum.to_be_bytes());
    frame
}

fn aggregate(src: SocketAddrV4, dst: SocketAddrV4) -> Ipv4Frame {
    Ipv4Frame {
        payload: (0..PAYLOAD).map(|i| (i * 13) as u8).collect(),
        ..Ipv4Frame::tcp(src, dst, TCP_ACK)
    }
}

#[test]
fn an_aggregate_too_big_for_its_egress_goes_whole_through_tc_with_a_partial_checksum() {
    if !e2e_enabled() {
        return;
    }
    with_program(ONE_BACKEND, |mut lb| {
        let client = sock(CLIENT, 40100);
        let vip = sock(VIP, 80);
        let backend = sock("198.18.2.10", 8080);
        lb.run(&Ipv4Frame::tcp(client, vip, TCP_SYN).build());
        lb.run(&Ipv4Frame::tcp(client, vip, TCP_ACK).build());

        let before = lb.stats();
        let out = lb.run(&aggregate(client, vip).build());
        let after = lb.stats();
        assert_eq!(out.action, XDP_PASS, "handed to TC");
        assert_eq!(out.handoff, Some(Handoff::forward(lb.backend_if)));
        let expected = with_pseudo_header_sum(aggregate(client, vip).with_dst(backend).build());
        assert_eq!(out.packet, expected, "translated, checksum field partial");
        assert_eq!(checksum(&out.packet[14..34], 0), 0, "IPv4 header checksum");
        assert_deltas(
            &before,
            &after,
            &[
                (StatSlot::Aggregate, 1),
                (StatSlot::NatForward, 1),
                (StatSlot::TxViaTc, 1),
                (StatSlot::IcmpTooBig, 0),
                (StatSlot::DropTooBig, 0),
            ],
        );

        // The backend's aggregate back to the client, by the backend side's 1500-byte link.
        let reply = aggregate(backend, client).with_macs(backend_mac(0), lb.backend_if_mac);
        let before = lb.stats();
        let out = lb.run_from(&reply.build(), lb.backend_if);
        let after = lb.stats();
        assert_eq!(out.handoff, Some(Handoff::forward(lb.client_if)));
        let expected = with_pseudo_header_sum(reply.with_src(vip).build());
        assert_eq!(out.packet, expected);
        assert_deltas(
            &before,
            &after,
            &[
                (StatSlot::Aggregate, 1),
                (StatSlot::NatReply, 1),
                (StatSlot::IcmpTooBig, 0),
            ],
        );
    });
}

/// A UDP server's segmentation offload (`UDP_SEGMENT`, as QUIC servers send) gives generic XDP
/// one datagram of many segments: whole through TC, its UDP checksum field partial, as TCP's.
#[test]
fn a_udp_aggregate_goes_whole_through_tc_with_a_partial_checksum() {
    if !e2e_enabled() {
        return;
    }
    with_program(ONE_BACKEND, |mut lb| {
        let client = sock(CLIENT, 5300);
        let vip = sock(VIP, 53);
        let backend = sock("198.18.2.10", 5353);
        let udp = |src, dst| Ipv4Frame {
            payload: (0..PAYLOAD).map(|i| (i * 7) as u8).collect(),
            ..Ipv4Frame::udp(src, dst)
        };
        let before = lb.stats();
        let out = lb.run(&udp(client, vip).build());
        let after = lb.stats();
        assert_eq!(out.action, XDP_PASS, "handed to TC");
        assert_eq!(out.handoff, Some(Handoff::forward(lb.backend_if)));
        let expected = with_pseudo_header_sum(udp(client, vip).with_dst(backend).build());
        assert_eq!(out.packet, expected, "translated, checksum field partial");
        assert_eq!(checksum(&out.packet[14..34], 0), 0, "IPv4 header checksum");
        assert_deltas(
            &before,
            &after,
            &[
                (StatSlot::Aggregate, 1),
                (StatSlot::IcmpTooBig, 0),
                (StatSlot::DropTooBig, 0),
            ],
        );

        // The backend's answer the same way back.
        let reply = udp(backend, client).with_macs(backend_mac(0), lb.backend_if_mac);
        let out = lb.run_from(&reply.build(), lb.backend_if);
        assert_eq!(out.handoff, Some(Handoff::forward(lb.client_if)));
        assert_eq!(
            out.packet,
            with_pseudo_header_sum(reply.with_src(vip).build())
        );
    });
}

/// Through the mesh tunnel, a UDP aggregate (a task's `UDP_SEGMENT` answer, a QUIC server's)
/// is handed to TC to be wrapped, as a TCP one is: answered "fragmentation needed", its
/// sender would lose every aggregate, though each of its datagrams fits (TC checks that they
/// do). A datagram too big for the tunnel is still answered (`packets.rs`).
#[test]
fn a_udp_aggregate_too_big_for_the_tunnel_is_left_to_tc_to_wrap() {
    if !e2e_enabled() {
        return;
    }
    with_mesh(|mut lb| {
        let client = sock(CLIENT, 5301);
        let frontend = sock(NODE_CLIENT_SIDE, 8000);
        let task = sock(TASK_REMOTE, 9000);
        let big = Ipv4Frame {
            payload: (0..PAYLOAD).map(|i| (i * 11) as u8).collect(),
            ..Ipv4Frame::udp(client, frontend)
        };
        let before = lb.stats();
        let out = lb.run(&big.build());
        let after = lb.stats();
        assert_eq!(out.action, XDP_PASS, "handed to TC");
        assert_eq!(
            out.handoff,
            Some(Handoff::tunnel(1, lb.backend_if)),
            "to be wrapped for the peer and sent toward it"
        );
        let expected = with_pseudo_header_sum(big.with_dst(task).build());
        assert_eq!(
            out.packet, expected,
            "translated, checksum field partial, not wrapped yet"
        );
        assert_deltas(
            &before,
            &after,
            &[
                (StatSlot::Aggregate, 1),
                (StatSlot::NatForward, 1),
                (StatSlot::IcmpTooBig, 0),
                (StatSlot::DropTunnelFailed, 0),
                // Counted by TC once it has wrapped it.
                (StatSlot::TunnelSent, 0),
            ],
        );
    });
}

/// The other way: a UDP aggregate that arrives through the tunnel whole (wrapped by a peer
/// and passed on whole by a virtual link such as a veth) keeps the tunnel's segmentation
/// state once XDP has unwrapped it, with which the kernel would drop it unseen: it is dropped
/// and counted. A single datagram through the tunnel is translated as ever.
#[test]
fn a_udp_aggregate_that_arrives_through_the_tunnel_whole_is_dropped_and_counted() {
    if !e2e_enabled() {
        return;
    }
    with_mesh(|mut lb| {
        let client = sock(CLIENT, 5302);
        let frontend = sock(NODE_CLIENT_SIDE, 8000);
        let task = sock(TASK_REMOTE, 9000);
        lb.run(&Ipv4Frame::udp(client, frontend).build());
        let node_mac = lb.backend_if_mac;
        let from_peer = |payload: usize| {
            let answer = Ipv4Frame {
                payload: vec![5; payload],
                ..Ipv4Frame::udp(task, client)
            };
            from_peer(node_mac, &answer.build(), (9000, 5302))
        };
        let datagram = lb.run_from(&from_peer(100), lb.backend_if);
        assert_eq!(
            datagram.handoff,
            Some(Handoff::forward(lb.client_if)),
            "a datagram goes to the client"
        );

        let before = lb.stats();
        let out = lb.run_from(&from_peer(PAYLOAD), lb.backend_if);
        let after = lb.stats();
        assert_eq!(out.action, XDP_DROP);
        assert_deltas(
            &before,
            &after,
            &[
                (StatSlot::TunnelReceived, 1),
                (StatSlot::DropTunnelFailed, 1),
                (StatSlot::Aggregate, 0),
                (StatSlot::IcmpTooBig, 0),
            ],
        );
    });
}

#[test]
fn an_ipv6_aggregate_goes_whole_through_tc_with_a_partial_checksum() {
    if !e2e_enabled() {
        return;
    }
    with_program(IPV6_AND_FULLNAT, |mut lb| {
        let client = SocketAddrV6::new("fd00:1::2".parse().unwrap(), 40102, 0, 0);
        let vip = SocketAddrV6::new("fd00:100::1".parse().unwrap(), 80, 0, 0);
        let backend = SocketAddrV6::new("fd00:2::a".parse().unwrap(), 8080, 0, 0);
        lb.run(&Ipv6Frame::tcp(client, vip, TCP_SYN).build());
        lb.run(&Ipv6Frame::tcp(client, vip, TCP_ACK).build());
        // 40 + 20 + 2000 bytes of IPv6.
        let big = Ipv6Frame {
            payload: (0..PAYLOAD).map(|i| (i * 11) as u8).collect(),
            ..Ipv6Frame::tcp(client, vip, TCP_ACK)
        };
        let before = lb.stats();
        let out = lb.run(&big.build());
        let after = lb.stats();
        assert_eq!(out.action, XDP_PASS, "handed to TC");
        assert_eq!(out.handoff, Some(Handoff::forward(lb.backend_if)));
        let expected = with_pseudo_header_sum(big.with_dst(backend).build());
        assert_eq!(out.packet, expected);
        assert_deltas(
            &before,
            &after,
            &[
                (StatSlot::Aggregate, 1),
                (StatSlot::NatForward, 1),
                (StatSlot::IcmpTooBig, 0),
            ],
        );
    });
}

#[test]
fn a_tcp_packet_too_big_for_the_tunnel_is_left_to_tc_to_wrap() {
    if !e2e_enabled() {
        return;
    }
    with_mesh(|mut lb| {
        let client = sock(CLIENT, 40101);
        let frontend = sock(NODE_CLIENT_SIDE, 8000);
        let task = sock(TASK_REMOTE, 9000);
        lb.run(&with_mss(
            &Ipv4Frame::tcp(client, frontend, TCP_SYN).build(),
            1460,
        ));
        lb.run(&Ipv4Frame::tcp(client, frontend, TCP_ACK).build());

        let before = lb.stats();
        let out = lb.run(&aggregate(client, frontend).build());
        let after = lb.stats();
        assert_eq!(out.action, XDP_PASS, "handed to TC");
        // The peer's index in the mesh (the only peer: 1) rides in the magic.
        assert_eq!(
            out.handoff,
            Some(Handoff::tunnel(1, lb.backend_if)),
            "to be wrapped for the peer and sent toward it"
        );
        let expected = with_pseudo_header_sum(aggregate(client, frontend).with_dst(task).build());
        assert_eq!(out.packet, expected, "translated, not wrapped yet");
        assert_deltas(
            &before,
            &after,
            &[
                (StatSlot::Aggregate, 1),
                (StatSlot::NatForward, 1),
                (StatSlot::TxViaTc, 1),
                (StatSlot::DropTunnelFailed, 0),
                // Counted by TC once it has wrapped it.
                (StatSlot::TunnelSent, 0),
            ],
        );
    });
}
