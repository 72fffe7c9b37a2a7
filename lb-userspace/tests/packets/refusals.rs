//! Whom the program answers itself (lb-ebpf `answers_refusal`, `sender`): a client's SYN or
//! datagram to a frontend with no usable backend gets a RST or an ICMP "port unreachable"
//! from the frontend (`fixtures`,
//! `datagrams_without_a_backend_are_answered_port_unreachable_within_a_budget`), but only
//! when the frontend is one the client called on this node, and the client one host that
//! sent to this one: as the node's own stack, never a sender that is no single host, nor a
//! frame to a link-layer group address (RFC 1122 §3.2.2, RFC 4443 §2.4(e); those cases of a
//! refused SYN or datagram are rows of `fixtures`). Here: a packet a peer delivered through
//! the mesh tunnel came to the peer's frontend, and a swarm VIP only sockets serve is no
//! address a packet may call; the other answers (a RST for a removed backend's flow,
//! "fragmentation needed", echo replies) follow the same rules. The rest are dropped and
//! counted, unanswered.

use std::net::{Ipv4Addr, SocketAddrV4};

use lb_common::{maps::Handoff, stats::StatSlot};
use lb_testkit::{
    e2e_enabled,
    packet::{
        CLIENT_MAC, Ipv4Frame, NODE_MAC, TCP_ACK, TCP_SYN, icmpv4_frame, parse_ipv4,
        refresh_checksums,
    },
    progtest::{CLIENT, ProgNode, assert_deltas},
};
use lb_userspace::source::file::ServiceFile;

use super::{
    MESH, ONE_BACKEND, RESET_ON_REMOVAL, TASK_LOCAL, VIP, XDP_DROP, XDP_PASS, check_fixtures,
    edited, from_peer, mesh_edit, reload, sock, to_mac, unanswered, with_jumbo_link,
    with_jumbo_link_edited, with_program,
};

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
            let node_mac = lb.backend_if_mac;
            let wrap = |inner: Vec<u8>| from_peer(node_mac, &inner, (41300, 8000));
            let ingress = lb.backend_if;
            let refused = vec![
                unanswered(
                    "a tunneled SYN",
                    wrap(Ipv4Frame::tcp(client, task, TCP_SYN).build()),
                ),
                unanswered(
                    "a tunneled datagram",
                    wrap(Ipv4Frame::udp(client, task).build()),
                ),
            ];
            check_fixtures(&mut lb, refused, ingress);
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
            let refused = vec![
                unanswered(
                    "a SYN",
                    Ipv4Frame::tcp(client, sock("198.18.100.9", 80), TCP_SYN).build(),
                ),
                unanswered(
                    "a datagram",
                    Ipv4Frame::udp(client, sock("198.18.100.9", 53)).build(),
                ),
            ];
            check_fixtures(&mut lb, refused, ingress);
        })
        .expect("program loaded");
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
            let node_mac = lb.backend_if_mac;
            let wrapped = |flags: u8| {
                from_peer(
                    node_mac,
                    &Ipv4Frame::tcp(client, task, flags).build(),
                    (41500, 8000),
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
            let next = unanswered("the flow's next segment", wrapped(TCP_ACK));
            check_fixtures(&mut lb, vec![next], ingress);
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
                to_mac(&big_from(sock(CLIENT, 40601)), [0xff; 6]),
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

/// A datagram a peer delivered through the tunnel that is too big for the way to its task is
/// dropped and counted, not answered "fragmentation needed": from here the error would come
/// from the task's address by this node's routes, an answer its sender can match to nothing.
/// (It comes in by the jumbo link, so it is one packet, not an aggregate.)
#[test]
fn a_tunneled_packet_too_big_for_its_task_is_dropped_unanswered() {
    if !e2e_enabled() {
        return;
    }
    with_jumbo_link_edited(MESH, mesh_edit, |mut lb, jumbo| {
        let client = sock("198.18.9.9", 41310);
        let task = sock(TASK_LOCAL, 9000);
        let big = Ipv4Frame {
            payload: vec![0x5a; 1500],
            ..Ipv4Frame::udp(client, task)
        }
        .build();
        let frame = from_peer(lb.backend_if_mac, &big, (41310, 8000));
        let before = lb.stats();
        let out = lb.run_from(&frame, jumbo);
        assert_eq!(out.action, XDP_DROP);
        assert_deltas(
            &before,
            &lb.stats(),
            &[
                (StatSlot::TunnelReceived, 1),
                (StatSlot::DropTooBig, 1),
                (StatSlot::IcmpTooBig, 0),
            ],
        );
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
        let to_every_host = unanswered(
            "a segment to the broadcast MAC",
            to_mac(&ack(on_gone[0]), [0xff; 6]),
        );
        check_fixtures(&mut lb, vec![to_every_host], ingress);
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
