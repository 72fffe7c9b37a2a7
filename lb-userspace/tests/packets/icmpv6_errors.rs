//! ICMPv6 errors about an IPv6 flow (lb-ebpf `icmp`), translated as ICMP's are for IPv4 but
//! with IPv6's own arithmetic: the message's checksum covers a pseudo-header of both
//! addresses (RFC 4443 §2.3), there is no IP header checksum, and the quoted header's
//! addresses are four words each. Both directions: a backend's error to its client, and a
//! router's on the client's side to the backend. Checksums checked by `parse_icmpv6`.

use std::net::{Ipv6Addr, SocketAddrV6};

use lb_common::{maps::Handoff, stats::StatSlot};
use lb_testkit::{
    e2e_enabled,
    packet::{CLIENT_MAC, Ipv6Frame, NODE_MAC, TCP_ACK, TCP_SYN, icmpv6_frame, parse_icmpv6},
    progtest::{assert_deltas, backend_mac},
};

use super::{IPV6_AND_FULLNAT, past_addresses, sock6, with_program};

/// An ICMPv6 error message of `icmp_type` and `code` (its checksum left to `icmpv6_frame`),
/// the 4-byte field after the checksum holding `word` (the MTU of "packet too big"), quoting
/// `quoted` (a frame) from its IPv6 header.
fn icmpv6_error(icmp_type: u8, code: u8, word: u32, quoted: &[u8]) -> Vec<u8> {
    let mut message = vec![icmp_type, code, 0, 0];
    message.extend_from_slice(&word.to_be_bytes());
    message.extend_from_slice(&quoted[14..]);
    message
}

fn ip(socket: SocketAddrV6) -> Ipv6Addr {
    *socket.ip()
}

#[test]
fn icmpv6_errors_about_a_flow_are_translated_both_ways() {
    if !e2e_enabled() {
        return;
    }
    with_program(IPV6_AND_FULLNAT, |mut lb| {
        let client = sock6("fd00:1::2", 40100);
        let vip = sock6("fd00:100::1", 80);
        let backend = sock6("fd00:2::a", 8080);
        let syn = Ipv6Frame::tcp(client, vip, TCP_SYN);
        let dnatted = lb.run(&syn.build()).packet;
        assert_eq!(dnatted, syn.clone().with_dst(backend).build());

        // The backend says "port unreachable" about the packet it got: the client hears it
        // from the VIP, about the packet it sent to the VIP.
        let error = icmpv6_frame(
            (backend_mac(0), lb.backend_if_mac),
            ip(backend),
            ip(client),
            &icmpv6_error(1, 4, 0, &dnatted),
        );
        let before = lb.stats();
        let out = lb.run_from(&error, lb.backend_if);
        let after = lb.stats();
        assert_eq!(out.handoff, Some(Handoff::forward(lb.client_if)));
        let expected = icmpv6_frame(
            (backend_mac(0), lb.backend_if_mac),
            ip(vip),
            ip(client),
            &icmpv6_error(1, 4, 0, &syn.build()),
        );
        assert_eq!(past_addresses(&out.packet), past_addresses(&expected));
        parse_icmpv6(&out.packet).expect("the translated error's checksum");
        assert_deltas(
            &before,
            &after,
            &[
                (StatSlot::IcmpErrorToClient, 1),
                (StatSlot::IcmpErrorToBackend, 0),
            ],
        );

        // The backend's answer leaves from the VIP; a router on the client's side finds it too
        // big for the next link and tells its source, the VIP. The backend hears it from the
        // router, about the packet it sent.
        let answer = Ipv6Frame::tcp(backend, client, TCP_SYN | TCP_ACK)
            .with_macs(backend_mac(0), lb.backend_if_mac);
        let out = lb.run_from(&answer.build(), lb.backend_if);
        let translated_answer = out.packet;
        assert_eq!(
            translated_answer,
            answer.clone().with_src(vip).build(),
            "the answer as the router saw it"
        );
        let router: Ipv6Addr = "fd00:1::fe".parse().unwrap();
        let too_big = icmpv6_frame(
            (CLIENT_MAC, NODE_MAC),
            router,
            ip(vip),
            &icmpv6_error(2, 0, 1280, &translated_answer),
        );
        let before = lb.stats();
        let out = lb.run(&too_big);
        let after = lb.stats();
        assert_eq!(out.handoff, Some(Handoff::forward(lb.backend_if)));
        let expected = icmpv6_frame(
            (CLIENT_MAC, NODE_MAC),
            router,
            ip(backend),
            &icmpv6_error(2, 0, 1280, &answer.build()),
        );
        assert_eq!(past_addresses(&out.packet), past_addresses(&expected));
        parse_icmpv6(&out.packet).expect("the translated error's checksum");
        assert_deltas(
            &before,
            &after,
            &[
                (StatSlot::IcmpErrorToBackend, 1),
                (StatSlot::IcmpErrorToClient, 0),
            ],
        );

        // The flow goes on as before.
        let ack = Ipv6Frame::tcp(client, vip, TCP_ACK);
        let out = lb.run(&ack.build());
        assert_eq!(out.packet, ack.with_dst(backend).build());
    });
}
