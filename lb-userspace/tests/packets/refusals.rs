//! Whom the program answers itself (lb-ebpf `answers_refusal`, `sender`): a client's SYN or
//! datagram to a frontend with no usable backend gets a RST or an ICMP "port unreachable"
//! from the frontend (`fixtures`,
//! `datagrams_without_a_backend_are_answered_port_unreachable_within_a_budget`), but only
//! when the frontend is one the client called on this node, and the client one host that
//! sent to this one: as the node's own stack, never a sender that is no single host, nor a
//! frame to a link-layer group address (RFC 1122 §3.2.2, RFC 4443 §2.4(e)). A packet a peer
//! delivered through the mesh tunnel came to the peer's frontend, and a swarm VIP only
//! sockets serve is no address a packet may call. The rest are dropped and counted,
//! unanswered.

use std::net::{Ipv4Addr, SocketAddrV4};

use lb_common::{maps::Handoff, stats::StatSlot};
use lb_testkit::{
    e2e_enabled,
    packet::{
        CLIENT_MAC, Ipv4Frame, Ipv6Frame, NODE_MAC, TCP_ACK, TCP_SYN, icmpv4_frame, parse_ipv4,
        refresh_checksums, tunnel_wrap,
    },
    progtest::{CLIENT, Loaded, ProgNode, assert_deltas, backend_mac},
};
use lb_userspace::source::file::ServiceFile;

use super::{
    MESH, ONE_BACKEND, OWN, PEER, RESET_ON_REMOVAL, TASK_LOCAL, VIP, XDP_DROP, XDP_PASS, edited,
    entropy, mesh_edit, reload, sock, sock6, with_jumbo_link, with_program,
};

/// What a refusal that is not answered moves: a drop for want of a backend, nothing sent.
const UNANSWERED: &[(StatSlot, u64)] = &[
    (StatSlot::DropNoBackend, 1),
    (StatSlot::RefusedNoBackend, 0),
    (StatSlot::FlowReset, 0),
    (StatSlot::NewFlow, 0),
    (StatSlot::TxViaTc, 0),
];

/// Runs `frame` from `ingress` and checks it was dropped, unanswered.
fn dropped_unanswered(lb: &mut Loaded, frame: &[u8], ingress: u32, what: &str) {
    let before = lb.stats();
    let out = lb.run_from(frame, ingress);
    assert_eq!(out.action, XDP_DROP, "{what}: dropped");
    assert_eq!(out.handoff, None, "{what}: nothing handed to TC");
    assert_deltas(&before, &lb.stats(), UNANSWERED);
}

#[test]
fn a_refusal_through_the_tunnel_is_dropped_unanswered() {
    if !e2e_enabled() {
        return;
    }
    // The local task, delivered to from the peer, is drained: no usable backend.
    let drained_task = |file: &mut ServiceFile| {
        mesh_edit(file);
        file.services
            .get_mut("web.1.task")
            .expect("delivery")
            .backends[0]
            .weight = 0;
    };
    ProgNode::new("refmesh", &[])
        .expect("node namespace")
        .run_with(MESH, 4096, drained_task, |mut lb| {
            let client = sock("198.18.9.9", 41300);
            let task = sock(TASK_LOCAL, 9000);
            let macs = (backend_mac(10), lb.backend_if_mac);
            let wrap = |inner: Vec<u8>| {
                tunnel_wrap(
                    &inner,
                    macs,
                    PEER.parse().unwrap(),
                    OWN.parse().unwrap(),
                    entropy(41300, 8000),
                )
            };
            let ingress = lb.backend_if;
            let syn = wrap(Ipv4Frame::tcp(client, task, TCP_SYN).build());
            dropped_unanswered(&mut lb, &syn, ingress, "a tunneled SYN");
            let datagram = wrap(Ipv4Frame::udp(client, task).build());
            dropped_unanswered(&mut lb, &datagram, ingress, "a tunneled datagram");
        })
        .expect("program loaded");
}

#[test]
fn a_packet_to_a_vip_only_sockets_serve_is_dropped_unanswered() {
    if !e2e_enabled() {
        return;
    }
    const OVERLAY_VIP: &str = r#"
services:
  overlay:
    vip: 198.18.100.9
    ports: ["80:8080/tcp", "53:5353/udp"]
    backends: ["198.18.2.10"]
"#;
    // A swarm VIP on an overlay network (scope 1): its backend is up, yet a packet gets none.
    let socket_only = |file: &mut ServiceFile| {
        file.services
            .get_mut("overlay")
            .expect("service")
            .socket_scope = 1;
    };
    ProgNode::new("refsock", &[])
        .expect("node namespace")
        .run_with(OVERLAY_VIP, 4096, socket_only, |mut lb| {
            let client = sock(CLIENT, 41400);
            let ingress = lb.client_if;
            let syn = Ipv4Frame::tcp(client, sock("198.18.100.9", 80), TCP_SYN).build();
            dropped_unanswered(&mut lb, &syn, ingress, "a SYN");
            let datagram = Ipv4Frame::udp(client, sock("198.18.100.9", 53)).build();
            dropped_unanswered(&mut lb, &datagram, ingress, "a datagram");
        })
        .expect("program loaded");
}

const EMPTY: &str = r#"
services:
  empty:
    vip: 198.18.100.2
    ports: ["80/tcp", "53/udp"]
    backends: []
  empty6:
    vip: "fd00:100::2"
    ports: ["53/udp"]
    backends: []
"#;

/// A SYN to `empty` from `client`.
fn syn_from(client: &str) -> Vec<u8> {
    Ipv4Frame::tcp(sock(client, 40500), sock("198.18.100.2", 80), TCP_SYN).build()
}

/// A datagram to `empty` from `client`.
fn datagram_from(client: &str) -> Vec<u8> {
    Ipv4Frame::udp(sock(client, 5500), sock("198.18.100.2", 53)).build()
}

/// `frame` sent to the link-layer address `mac`.
fn to_mac(frame: Vec<u8>, mac: [u8; 6]) -> Vec<u8> {
    edited(&frame, |f| f[..6].copy_from_slice(&mac))
}

#[test]
fn refusals_of_senders_that_are_no_single_host_or_of_frames_to_every_host_are_unanswered() {
    if !e2e_enabled() {
        return;
    }
    let datagram6_from =
        |client: &str| Ipv6Frame::udp(sock6(client, 5500), sock6("fd00:100::2", 53)).build();
    let refusals: Vec<(&str, Vec<u8>)> = vec![
        ("a SYN from 127.0.0.1", syn_from("127.0.0.1")),
        ("a SYN from 0.0.0.0", syn_from("0.0.0.0")),
        ("a SYN from 0.1.2.3", syn_from("0.1.2.3")),
        ("a SYN from the VIP itself", syn_from("198.18.100.2")),
        ("a datagram from 224.0.0.5", datagram_from("224.0.0.5")),
        ("a datagram from 240.0.0.1", datagram_from("240.0.0.1")),
        (
            "a datagram from 255.255.255.255",
            datagram_from("255.255.255.255"),
        ),
        ("an IPv6 datagram from ::1", datagram6_from("::1")),
        ("an IPv6 datagram from ::", datagram6_from("::")),
        ("an IPv6 datagram from ff02::1", datagram6_from("ff02::1")),
        (
            "a host's SYN to the broadcast MAC",
            to_mac(syn_from(CLIENT), [0xff; 6]),
        ),
        (
            "a host's datagram to a multicast MAC",
            to_mac(datagram_from(CLIENT), [0x01, 0x00, 0x5e, 0, 0, 1]),
        ),
    ];
    with_program(EMPTY, |mut lb| {
        let ingress = lb.client_if;
        // The same packets from a host, to the node's MAC, are answered: the table above
        // differs from them only where it says.
        for answered in [syn_from(CLIENT), datagram_from(CLIENT)] {
            let before = lb.stats();
            let out = lb.run(&answered);
            assert_eq!(out.handoff, Some(Handoff::forward(ingress)), "answered");
            assert_deltas(&before, &lb.stats(), &[(StatSlot::RefusedNoBackend, 1)]);
        }
        for (what, frame) in refusals {
            dropped_unanswered(&mut lb, &frame, ingress, what);
        }
    });
}

/// Under `on_backend_removal: reset`, a flow a peer delivered through the tunnel whose task
/// left: the client called the peer's frontend, so the peer answers once it learns; a RST
/// from here would come from the task's address, which the client never called.
#[test]
fn a_removed_tasks_flow_through_the_tunnel_is_dropped_not_reset() {
    if !e2e_enabled() {
        return;
    }
    let resetting = MESH.replace(
        "  web.1.task:\n",
        "  web.1.task:\n    on_backend_removal: reset\n",
    );
    assert_ne!(resetting, MESH);
    ProgNode::new("refrst", &[])
        .expect("node namespace")
        .run_with(&resetting, 4096, mesh_edit, |mut lb| {
            let client = sock("198.18.9.9", 41500);
            let task = sock(TASK_LOCAL, 9000);
            let macs = (backend_mac(10), lb.backend_if_mac);
            let wrapped = |flags: u8| {
                tunnel_wrap(
                    &Ipv4Frame::tcp(client, task, flags).build(),
                    macs,
                    PEER.parse().unwrap(),
                    OWN.parse().unwrap(),
                    entropy(41500, 8000),
                )
            };
            let ingress = lb.backend_if;
            for flags in [TCP_SYN, TCP_ACK] {
                let out = lb.run_from(&wrapped(flags), ingress);
                assert_eq!(out.handoff, Some(Handoff::forward(ingress)), "delivered");
            }
            // The task leaves: another takes its slot.
            let moved = resetting.replace(
                r#"backends: ["198.18.2.10"]"#,
                r#"backends: ["198.18.2.11"]"#,
            );
            assert_ne!(moved, resetting);
            lb.change_with(&moved, mesh_edit).expect("the task leaves");
            dropped_unanswered(
                &mut lb,
                &wrapped(TCP_ACK),
                ingress,
                "the flow's next segment",
            );
        })
        .expect("program loaded");
}

/// An echo reply leaves with a fresh TTL (a request that came far would not make it back
/// with what it had left), and a sender that is no single host is not answered.
#[test]
fn echo_replies_get_a_fresh_ttl_and_only_hosts_get_them() {
    if !e2e_enabled() {
        return;
    }
    let vip: Ipv4Addr = VIP.parse().unwrap();
    let echo = |ty: u8| vec![ty, 0, 0, 0, 0x12, 0x34, 0, 1, b'm', b'l', b'b'];
    with_program(ONE_BACKEND, |mut lb| {
        let client: Ipv4Addr = CLIENT.parse().unwrap();
        let far = edited(
            &icmpv4_frame((CLIENT_MAC, NODE_MAC), client, vip, &echo(8)),
            |f| {
                f[14 + 8] = 3;
                refresh_checksums(f);
            },
        );
        let out = lb.run(&far);
        assert_eq!(out.handoff, Some(Handoff::forward(lb.client_if)));
        // The testkit's frames have TTL 64, Linux's default, which the reply must have.
        assert_eq!(
            out.packet,
            icmpv4_frame((CLIENT_MAC, NODE_MAC), vip, client, &echo(0))
        );
        for sender in ["127.0.0.1", "0.0.0.0", "224.0.0.1"] {
            let request = icmpv4_frame(
                (CLIENT_MAC, NODE_MAC),
                sender.parse().unwrap(),
                vip,
                &echo(8),
            );
            let out = lb.run(&request);
            assert_eq!(
                (out.action, out.handoff, out.packet),
                (XDP_PASS, None, request),
                "from {sender}: left to the kernel, which drops it as a martian"
            );
        }
    });
}

/// A SYN whose data offset is under the TCP header's length is no segment to answer (its
/// own stack would drop it, and its payload's length is unknown): dropped, unanswered.
#[test]
fn a_syn_with_a_data_offset_under_the_header_is_not_answered() {
    if !e2e_enabled() {
        return;
    }
    with_program(EMPTY, |mut lb| {
        let short = edited(&syn_from(CLIENT), |f| {
            f[14 + 20 + 12] = 4 << 4;
            refresh_checksums(f);
        });
        let ingress = lb.client_if;
        dropped_unanswered(&mut lb, &short, ingress, "a SYN with data offset 4");
    });
}

/// A packet too big for its egress is answered "fragmentation needed" only where an error
/// may go: not to a sender that is no single host, nor for an IPv4 frame sent to every host
/// (dropped, `drop_too_big`).
#[test]
fn a_packet_too_big_is_answered_only_where_an_error_may_go() {
    if !e2e_enabled() {
        return;
    }
    with_jumbo_link(ONE_BACKEND, |mut lb, jumbo| {
        let vip = sock(VIP, 80);
        let big_from = |client: SocketAddrV4| {
            Ipv4Frame {
                payload: vec![0x5a; 1461],
                ..Ipv4Frame::tcp(client, vip, TCP_ACK)
            }
            .build()
        };
        let cases = [
            ("from 224.0.0.5", big_from(sock("224.0.0.5", 40600)), 0),
            (
                "to the broadcast MAC",
                to_mac(big_from(sock(CLIENT, 40601)), [0xff; 6]),
                0,
            ),
            ("from a host, to the node", big_from(sock(CLIENT, 40602)), 1),
        ];
        for (what, big, answered) in cases {
            // The flow, opened by its SYN (its source is not checked on the way to a backend).
            let client = SocketAddrV4::new(
                std::net::Ipv4Addr::new(big[26], big[27], big[28], big[29]),
                u16::from_be_bytes([big[34], big[35]]),
            );
            lb.run(&Ipv4Frame::tcp(client, vip, TCP_SYN).build());
            let before = lb.stats();
            let out = lb.run_from(&big, jumbo);
            assert_eq!(out.action == XDP_DROP, answered == 0, "{what}");
            assert_deltas(
                &before,
                &lb.stats(),
                &[
                    (StatSlot::IcmpTooBig, answered),
                    (StatSlot::DropTooBig, 1 - answered),
                ],
            );
        }
    });
}

/// Under `on_backend_removal: reset`, a flow's next segment sent to every host (the
/// broadcast MAC) is dropped, not answered with a RST; the same from the node's own MAC is.
#[test]
fn a_removed_backends_flow_is_reset_only_where_an_error_may_go() {
    if !e2e_enabled() {
        return;
    }
    with_program(RESET_ON_REMOVAL, |mut lb| {
        let vip = sock(VIP, 80);
        let flows: Vec<_> = (40700..40716u16)
            .map(|port| {
                let client = sock(CLIENT, port);
                let out = lb.run(&Ipv4Frame::tcp(client, vip, TCP_SYN).build());
                lb.run(&Ipv4Frame::tcp(client, vip, TCP_ACK).build());
                (client, *parse_ipv4(&out.packet).unwrap().dst.ip())
            })
            .collect();
        let gone = flows[0].1;
        let on_gone: Vec<_> = flows.iter().filter(|f| f.1 == gone).map(|f| f.0).collect();
        assert!(on_gone.len() >= 2, "{flows:?}");
        let remaining = RESET_ON_REMOVAL
            .replace(&format!("\"{gone}\", "), "")
            .replace(&format!(", \"{gone}\""), "");
        assert_ne!(remaining, RESET_ON_REMOVAL);
        reload(&mut lb, &remaining);
        let ingress = lb.client_if;
        let ack = |client| Ipv4Frame::tcp(client, vip, TCP_ACK).build();
        dropped_unanswered(
            &mut lb,
            &to_mac(ack(on_gone[0]), [0xff; 6]),
            ingress,
            "a segment to the broadcast MAC",
        );
        let before = lb.stats();
        let out = lb.run(&ack(on_gone[1]));
        assert_eq!(out.handoff, Some(Handoff::forward(ingress)), "answered");
        assert_deltas(
            &before,
            &lb.stats(),
            &[(StatSlot::FlowReset, 1), (StatSlot::RefusedNoBackend, 0)],
        );
    });
}
