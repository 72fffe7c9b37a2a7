//! Partial checksums (lb-ebpf `nat`): in generic XDP a packet a local socket sent (a local
//! container's reply, through `docker_gwbridge`) has its TCP checksum field holding only the
//! pseudo-header sum, which the device completes over the segment's bytes. On an interface
//! userspace marked as generic mode, translation keeps such a field partial: the sum of the
//! new pseudo-header, the port change left to the device. A complete checksum on the same
//! interface, and any packet elsewhere, is updated as a complete one.

use lb_common::stats::StatSlot;
use lb_testkit::{
    e2e_enabled,
    packet::{Ipv4Frame, TCP_ACK, TCP_SYN, checksum},
    progtest::{CLIENT, backend_mac, delta},
};

use super::{
    ONE_BACKEND, VIP, XDP_PASS, aggregate::with_pseudo_header_sum, ip, sock, with_program,
};
use lb_common::maps::Handoff;

#[test]
fn a_partial_checksum_from_a_generic_mode_interface_stays_partial_through_translation() {
    if !e2e_enabled() {
        return;
    }
    with_program(ONE_BACKEND, |mut lb| {
        let client = sock(CLIENT, 40200);
        let vip = sock(VIP, 80);
        let backend = sock("198.18.2.10", 8080);
        // A confirmed flow: its replies are translated from its reply entry.
        lb.run(&Ipv4Frame::tcp(client, vip, TCP_SYN).build());
        lb.run(&Ipv4Frame::tcp(client, vip, TCP_ACK).build());
        // What lbd writes for a bridge in generic mode: no MAC filter, generic mode.
        lb.dp
            .set_interface_mac(lb.backend_if, None, true)
            .expect("INTERFACE_MACS");
        let reply = Ipv4Frame {
            payload: b"HTTP/1.1 200 OK\r\n".to_vec(),
            ..Ipv4Frame::tcp(backend, client, TCP_SYN | TCP_ACK)
        }
        .with_macs(backend_mac(0), lb.backend_if_mac);

        // Partial: the field becomes the new pseudo-header's sum (the address changed, the
        // port change is the device's to sum).
        let before = lb.stats();
        let out = lb.run_from(&with_pseudo_header_sum(reply.build()), lb.backend_if);
        assert_eq!(out.action, XDP_PASS);
        assert_eq!(out.handoff, Some(Handoff::forward(lb.client_if)));
        assert_eq!(
            out.packet,
            with_pseudo_header_sum(reply.clone().with_src(vip).build()),
            "translated, checksum field still partial"
        );
        assert_eq!(delta(&before, &lb.stats(), StatSlot::NatReply), 1);

        // A reply no entry covers (an unconfirmed flow's, or another node's) is translated
        // statelessly, by the same rewrite: partial stays partial there too.
        let untracked = Ipv4Frame {
            payload: b"HTTP/1.1 200 OK\r\n".to_vec(),
            ..Ipv4Frame::tcp(backend, sock(CLIENT, 40201), TCP_SYN | TCP_ACK)
        }
        .with_macs(backend_mac(0), lb.backend_if_mac);
        let before = lb.stats();
        let out = lb.run_from(&with_pseudo_header_sum(untracked.build()), lb.backend_if);
        assert_eq!(
            out.packet,
            with_pseudo_header_sum(untracked.with_src(vip).build()),
            "translated without an entry, checksum field still partial"
        );
        assert_eq!(delta(&before, &lb.stats(), StatSlot::NatReplyStateless), 1);

        // Complete, on the same interface: updated as complete (the builder's checksums are
        // computed independently).
        let out = lb.run_from(&reply.build(), lb.backend_if);
        assert_eq!(out.packet, reply.clone().with_src(vip).build());

        // The same partial packet from an interface not in generic mode is taken as complete:
        // its field is updated for the port change too.
        lb.dp
            .set_interface_mac(lb.backend_if, None, false)
            .expect("INTERFACE_MACS");
        let partial = with_pseudo_header_sum(reply.build());
        let out = lb.run_from(&partial, lb.backend_if);
        assert_eq!(out.action, XDP_PASS);
        assert_eq!(out.handoff, Some(Handoff::forward(lb.client_if)));
        // The field, whatever it held, updated for the source address and port (RFC 1624).
        let field = u16::from_be_bytes([partial[TCP_CHECKSUM], partial[TCP_CHECKSUM + 1]]);
        let source = |addr: std::net::SocketAddrV4| {
            [&addr.ip().octets()[..], &addr.port().to_be_bytes()].concat()
        };
        let mut expected = reply.with_src(vip).build();
        expected[TCP_CHECKSUM..TCP_CHECKSUM + 2].copy_from_slice(
            &updated_checksum(field, &source(backend), &source(vip)).to_be_bytes(),
        );
        assert_eq!(
            out.packet, expected,
            "a native interface's packets are never partial: the port change is in the field"
        );
    });
}

/// An interface whose ifindex is beyond `INTERFACE_MACS`' slots (a host that has made
/// thousands of interfaces, a container's each, gives a new `docker_gwbridge` one) is still
/// known to be in generic mode: a partial checksum arriving on it stays partial.
#[test]
fn a_generic_mode_interface_of_a_high_ifindex_keeps_partial_checksums_partial() {
    if !e2e_enabled() {
        return;
    }
    with_program(ONE_BACKEND, |mut lb| {
        let high = lb_common::limits::MAX_INTERFACE_MACS + 904;
        ip(&format!(
            "link add mlbhigh0 index {high} type veth peer name mlbhigh1"
        ));
        ip("link set mlbhigh0 up");
        ip("link set mlbhigh1 up");
        lb.dp
            .set_interface_mac(high, None, true)
            .expect("INTERFACE_MACS_BEYOND");

        let client = sock(CLIENT, 40210);
        let vip = sock(VIP, 80);
        let backend = sock("198.18.2.10", 8080);
        lb.run(&Ipv4Frame::tcp(client, vip, TCP_SYN).build());
        lb.run(&Ipv4Frame::tcp(client, vip, TCP_ACK).build());
        let reply = Ipv4Frame {
            payload: b"HTTP/1.1 200 OK\r\n".to_vec(),
            ..Ipv4Frame::tcp(backend, client, TCP_SYN | TCP_ACK)
        };
        let out = lb.run_from(&with_pseudo_header_sum(reply.build()), high);
        assert_eq!(out.action, XDP_PASS);
        assert_eq!(out.handoff, Some(Handoff::forward(lb.client_if)));
        assert_eq!(
            out.packet,
            with_pseudo_header_sum(reply.with_src(vip).build()),
            "translated, checksum field still partial"
        );
    });
}

/// Where an IPv4 frame's TCP checksum field is (Ethernet, a 20-byte IPv4 header, 16 bytes in).
const TCP_CHECKSUM: usize = 14 + 20 + 16;

/// RFC 1624 (eqn. 3): the checksum field `field` once the 16-bit words `old` of what it covers
/// became `new`: HC' = ~(~HC + ~m + m').
fn updated_checksum(field: u16, old: &[u8], new: &[u8]) -> u16 {
    let complemented: u32 = old
        .chunks(2)
        .map(|pair| u32::from(!u16::from_be_bytes([pair[0], pair[1]])))
        .sum();
    checksum(new, u32::from(!field) + complemented)
}
