//! ECN across the mesh tunnel (lb-ebpf `tunnel`, RFC 6040 normal mode): the outer header
//! carries the inner packet's ECN field, and a CE mark the underlay set on the outer header
//! reaches the inner packet when it is unwrapped, or drops one that cannot carry it.

use lb_common::{maps::Handoff, stats::StatSlot};
use lb_testkit::{
    e2e_enabled,
    packet::{Ipv4Frame, TCP_ACK, TCP_SYN, checksum, parse_ipv4, tunnel_inner, tunnel_wrap},
    progtest::{CLIENT, NODE_CLIENT_SIDE, assert_deltas, backend_mac},
};

use super::{
    OWN, PEER, TASK_REMOTE, XDP_DROP, XDP_PASS, entropy, from_peer, past_addresses, sock, with_mesh,
};

/// ECN codepoints (RFC 3168), the low 2 bits of the TOS byte.
const NOT_ECT: u8 = 0;
const ECT1: u8 = 1;
const ECT0: u8 = 2;
const CE: u8 = 3;

/// A DSCP (AF11) beside the ECN field: the inner packet keeps it, the outer header does not
/// copy it.
const DSCP: u8 = 0x28;

/// `frame` (a tunnel packet) with its outer ECN field set to `ecn`, as a router on the
/// underlay marks it, the outer header checksum computed again.
fn with_outer_ecn(mut frame: Vec<u8>, ecn: u8) -> Vec<u8> {
    frame[15] = (frame[15] & !0x03) | ecn;
    frame[24..26].copy_from_slice(&[0, 0]);
    let csum = checksum(&frame[14..34], 0);
    frame[24..26].copy_from_slice(&csum.to_be_bytes());
    frame
}

/// A client's packets to a task on the peer leave wrapped with their ECN field on the outer
/// header, DSCP 0 there, the inner TOS untouched.
#[test]
fn wrapped_packets_carry_their_ecn_field_on_the_outer_header() {
    if !e2e_enabled() {
        return;
    }
    with_mesh(|mut lb| {
        let client = sock(CLIENT, 40400);
        let frontend = sock(NODE_CLIENT_SIDE, 8000);
        let task = sock(TASK_REMOTE, 9000);
        lb.run(&Ipv4Frame::tcp(client, frontend, TCP_SYN).build());
        // (inner TOS, outer TOS)
        let cases = [
            (NOT_ECT, NOT_ECT),
            (ECT0, ECT0),
            (ECT1, ECT1),
            (CE, CE),
            (DSCP | NOT_ECT, NOT_ECT),
            (DSCP | ECT0, ECT0),
            (DSCP | CE, CE),
        ];
        for (inner_tos, outer_tos) in cases {
            let sent = Ipv4Frame::tcp(client, frontend, TCP_ACK).with_tos(inner_tos);
            let before = lb.stats();
            let out = lb.run(&sent.build());
            assert_eq!(
                out.handoff,
                Some(Handoff::forward(lb.backend_if)),
                "TOS {inner_tos:#04x}"
            );
            let expected = tunnel_wrap(
                &sent.with_dst(task).build(),
                (lb.backend_if_mac, backend_mac(10)),
                OWN.parse().unwrap(),
                PEER.parse().unwrap(),
                entropy(40400, 9000),
            );
            assert_eq!(out.packet[15], outer_tos, "TOS {inner_tos:#04x}: outer TOS");
            assert_eq!(
                past_addresses(&out.packet),
                past_addresses(&expected),
                "TOS {inner_tos:#04x}"
            );
            parse_ipv4(&out.packet).expect("outer checksums");
            parse_ipv4(&tunnel_inner(&out.packet)).expect("inner checksums");
            assert_deltas(&before, &lb.stats(), &[(StatSlot::TunnelSent, 1)]);
        }
    });
}

/// A task's replies from the peer, for every inner ECN field under every outer one: the
/// outer CE mark reaches an ECN-capable inner packet (its header checksum updated), drops a
/// Not-ECT one (counted), an outer ECT(1) makes an inner ECT(0) ECT(1) (RFC 6040's table),
/// and any other outer field leaves the inner one as it is.
#[test]
fn unwrapping_carries_an_outer_ce_mark_on_or_drops_a_packet_that_cannot_take_it() {
    if !e2e_enabled() {
        return;
    }
    with_mesh(|mut lb| {
        let client = sock(CLIENT, 40401);
        let frontend = sock(NODE_CLIENT_SIDE, 8000);
        let task = sock(TASK_REMOTE, 9000);
        lb.run(&Ipv4Frame::tcp(client, frontend, TCP_SYN).build());
        // (inner ECN, outer ECN, inner ECN once unwrapped; None: dropped)
        let cases = [
            (NOT_ECT, NOT_ECT, Some(NOT_ECT)),
            (NOT_ECT, ECT0, Some(NOT_ECT)),
            (NOT_ECT, ECT1, Some(NOT_ECT)),
            (NOT_ECT, CE, None),
            (ECT0, NOT_ECT, Some(ECT0)),
            (ECT0, ECT0, Some(ECT0)),
            (ECT0, ECT1, Some(ECT1)),
            (ECT0, CE, Some(CE)),
            (ECT1, NOT_ECT, Some(ECT1)),
            (ECT1, ECT0, Some(ECT1)),
            (ECT1, ECT1, Some(ECT1)),
            (ECT1, CE, Some(CE)),
            (CE, NOT_ECT, Some(CE)),
            (CE, ECT0, Some(CE)),
            (CE, ECT1, Some(CE)),
            (CE, CE, Some(CE)),
        ];
        for (inner, outer, after) in cases {
            let what = format!("inner {inner}, outer {outer}");
            let answer = Ipv4Frame::tcp(task, client, TCP_ACK).with_tos(DSCP | inner);
            let wrapped = from_peer(lb.backend_if_mac, &answer.build(), (9000, 40401));
            let before = lb.stats();
            let out = lb.run_from(&with_outer_ecn(wrapped, outer), lb.backend_if);
            let counted = lb.stats();
            let Some(after) = after else {
                assert_eq!(out.action, XDP_DROP, "{what}");
                assert_deltas(
                    &before,
                    &counted,
                    &[
                        (StatSlot::DropTunnelCeNotEct, 1),
                        (StatSlot::TunnelReceived, 0),
                        (StatSlot::NatReply, 0),
                    ],
                );
                continue;
            };
            assert_eq!(
                (out.action, out.handoff),
                (XDP_PASS, Some(Handoff::forward(lb.client_if))),
                "{what}"
            );
            let expected = answer
                .with_tos(DSCP | after)
                .with_macs(backend_mac(10), lb.backend_if_mac)
                .with_src(frontend)
                .build();
            assert_eq!(out.packet, expected, "{what}");
            parse_ipv4(&out.packet).expect("checksums");
            assert_deltas(
                &before,
                &counted,
                &[
                    (StatSlot::TunnelReceived, 1),
                    (StatSlot::NatReply, 1),
                    (StatSlot::DropTunnelCeNotEct, 0),
                ],
            );
        }
    });
}
