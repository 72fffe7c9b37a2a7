//! The connection table under pressure, on the real kernel program (BPF_PROG_TEST_RUN, as
//! `packets.rs`): what happens to established flows when newer flows fill the table, and
//! what the counters say about it.

use std::net::{Ipv4Addr, SocketAddrV4};

use lb_common::stats::StatSlot;
use lb_testkit::{
    e2e_enabled,
    packet::{Ipv4Frame, TCP_ACK, TCP_RST, TCP_SYN, parse_ipv4},
    progtest::{CLIENT, Loaded, ProgNode, delta, pin_to_cpu},
};

const XDP_PASS: u32 = 2;

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
/// Port 80: Maglev; port 81: round-robin; the same three backends.
const SERVICES: &str = r#"
services:
  maglev:
    vip: 198.18.100.1
    ports: ["80:8080/tcp"]
    backends: ["198.18.2.10", "198.18.2.11", "198.18.2.12"]
  rr:
    vip: 198.18.100.1
    ports: ["81:8080/tcp"]
    scheduler: round-robin
    backends: ["198.18.2.10", "198.18.2.11", "198.18.2.12"]
"#;
const BACKENDS: [&str; 3] = ["198.18.2.10", "198.18.2.11", "198.18.2.12"];
/// Entries of the connection table (a flow takes two).
const TABLE: u32 = 4096;

fn vip(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(VIP, port)
}

/// Client `i` of the crowd: 198.19.0.0/16, one port each.
fn crowd(i: u32) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(0xc613_0000 | (i & 0xffff)), 20000)
}

/// Opens a TCP flow as a client does (SYN, then the handshake's ACK) and answers the
/// backend address it was given.
fn establish(lb: &mut Loaded, client: SocketAddrV4, frontend: SocketAddrV4) -> Ipv4Addr {
    let out = lb.run(&Ipv4Frame::tcp(client, frontend, TCP_SYN).build());
    assert_eq!(out.action, XDP_PASS, "SYN of {client} handed to TC");
    let backend = *parse_ipv4(&out.packet).expect("checksums").dst.ip();
    let out = lb.run(&Ipv4Frame::tcp(client, frontend, TCP_ACK).build());
    assert_eq!(out.action, XDP_PASS, "ACK of {client} handed to TC");
    assert_eq!(*parse_ipv4(&out.packet).unwrap().dst.ip(), backend);
    backend
}

#[test]
fn an_established_flow_evicted_by_newer_flows_is_counted_as_lost() {
    if !e2e_enabled() {
        return;
    }
    ProgNode::new("press", &[])
        .expect("node namespace")
        .run(SERVICES, TABLE, |mut lb| {
            // One CPU: one set of the LRU's per-CPU lists, so eviction order is plain LRU.
            pin_to_cpu(0);
            let client = SocketAddrV4::new(CLIENT.parse().unwrap(), 40000);
            let rr_client = SocketAddrV4::new(CLIENT.parse().unwrap(), 40001);
            let maglev_backend = establish(&mut lb, client, vip(80));
            let _ = establish(&mut lb, rr_client, vip(81));

            // Three tables' worth of newer established flows: the LRU evicts the old ones.
            let before = lb.stats();
            for i in 0..3 * TABLE / 2 {
                establish(&mut lb, crowd(i), vip(80));
            }
            let after = lb.stats();
            assert_eq!(
                delta(&before, &after, StatSlot::NewFlow),
                u64::from(3 * TABLE / 2)
            );
            let (entries, capacity) = lb.dp.conntrack_occupancy().unwrap();
            assert!(entries <= u64::from(capacity), "{entries} of {capacity}");
            // Nothing was lost yet: every crowd flow found its entry on its ACK.
            assert_eq!(delta(&before, &after, StatSlot::FlowLost), 0);

            // Maglev: the lost flow's next packet is placed again, on the same backend, and
            // counted.
            let before = lb.stats();
            let ack = Ipv4Frame::tcp(client, vip(80), TCP_ACK);
            let out = lb.run(&ack.build());
            assert_eq!(out.action, XDP_PASS);
            assert_eq!(*parse_ipv4(&out.packet).unwrap().dst.ip(), maglev_backend);
            let after = lb.stats();
            assert_eq!(delta(&before, &after, StatSlot::FlowLost), 1, "maglev");
            assert_eq!(delta(&before, &after, StatSlot::NewFlow), 1);

            // Round-robin: placed again by the flow hash over its sequence (see packets.rs for
            // the exact slot), and counted as lost.
            let before = lb.stats();
            let out = lb.run(&Ipv4Frame::tcp(rr_client, vip(81), TCP_ACK).build());
            assert_eq!(out.action, XDP_PASS);
            let placed = *parse_ipv4(&out.packet).unwrap().dst.ip();
            assert!(BACKENDS.contains(&placed.to_string().as_str()), "{placed}");
            let after = lb.stats();
            assert_eq!(delta(&before, &after, StatSlot::FlowLost), 1, "round-robin");
            assert_eq!(delta(&before, &after, StatSlot::NewFlow), 1);

            // A SYN with no entry is a new flow, not a lost one.
            let before = lb.stats();
            let out = lb.run(&Ipv4Frame::tcp(crowd(60000), vip(81), TCP_SYN).build());
            assert_eq!(out.action, XDP_PASS);
            assert_eq!(delta(&before, &lb.stats(), StatSlot::FlowLost), 0);
        })
        .expect("program loaded");
}

/// A frame of the flood: a TCP segment with `flags` from spoofed source `i`.
fn flood_frame(i: u32, port: u16, flags: u8) -> Vec<u8> {
    let source = SocketAddrV4::new(
        Ipv4Addr::from(0xc613_0000 | (i & 0xffff)),
        1024 + (i >> 16) as u16,
    );
    Ipv4Frame::tcp(source, vip(port), flags).build()
}

#[test]
fn a_flood_of_new_flows_evicts_no_established_flow_of_either_scheduler() {
    if !e2e_enabled() {
        return;
    }
    ProgNode::new("flood", &[])
        .expect("node namespace")
        .run(SERVICES, TABLE, |mut lb| {
            pin_to_cpu(0);
            let maglev_client = SocketAddrV4::new(CLIENT.parse().unwrap(), 41000);
            let rr_client = SocketAddrV4::new(CLIENT.parse().unwrap(), 41001);
            let maglev_backend = establish(&mut lb, maglev_client, vip(80));
            let rr_backend = establish(&mut lb, rr_client, vip(81));
            let before = lb.stats();
            // Five connection tables' worth of SYNs from spoofed sources toward both services,
            // each source a real host that answers the backend's SYN-ACK with a RST (no ACK:
            // it never asked); a legitimate client connects in the middle of it.
            let flood = 5 * TABLE;
            let mut newcomer = None;
            for i in 0..flood {
                let port = 80 + (i % 2) as u16;
                let syn = lb.run(&flood_frame(i, port, TCP_SYN));
                let backend = parse_ipv4(&syn.packet).expect("SYN").dst;
                let reset = lb.run(&flood_frame(i, port, TCP_RST));
                assert_eq!(reset.action, XDP_PASS, "RST {i}");
                assert_eq!(parse_ipv4(&reset.packet).expect("RST").dst, backend);
                if i == flood / 2 {
                    let client = SocketAddrV4::new(CLIENT.parse().unwrap(), 41002);
                    newcomer = Some((client, establish(&mut lb, client, vip(81))));
                }
            }
            let after = lb.stats();
            assert_eq!(
                delta(&before, &after, StatSlot::NewFlow),
                u64::from(flood) + 1
            );
            // Only the newcomer confirmed its flow; the flood stayed unconfirmed.
            assert_eq!(delta(&before, &after, StatSlot::FlowConfirmed), 1);
            let (entries, _) = lb.dp.conntrack_occupancy().unwrap();
            assert_eq!(entries, 6, "three confirmed flows, two entries each");

            // Every established flow still goes to its backend, both ways.
            let before = lb.stats();
            let (newcomer, newcomer_backend) = newcomer.unwrap();
            for (client, frontend, backend) in [
                (maglev_client, vip(80), maglev_backend),
                (rr_client, vip(81), rr_backend),
                (newcomer, vip(81), newcomer_backend),
            ] {
                let out = lb.run(&Ipv4Frame::tcp(client, frontend, TCP_ACK).build());
                assert_eq!(out.action, XDP_PASS, "{client} -> {frontend}");
                assert_eq!(*parse_ipv4(&out.packet).unwrap().dst.ip(), backend);
                let reply = Ipv4Frame::tcp(SocketAddrV4::new(backend, 8080), client, TCP_ACK)
                    .with_macs(lb_testkit::progtest::backend_mac(0), lb.backend_if_mac);
                let out = lb.run_from(&reply.build(), lb.backend_if);
                assert_eq!(out.action, XDP_PASS);
                assert_eq!(
                    out.packet,
                    reply.with_src(frontend).build(),
                    "reply of {client}"
                );
            }
            let after = lb.stats();
            assert_eq!(delta(&before, &after, StatSlot::FlowLost), 0);
            assert_eq!(delta(&before, &after, StatSlot::NatReply), 3);

            // And a new client connects after the flood.
            let late = SocketAddrV4::new(CLIENT.parse().unwrap(), 41003);
            establish(&mut lb, late, vip(80));
            assert_eq!(delta(&after, &lb.stats(), StatSlot::FlowConfirmed), 1);
        })
        .expect("program loaded");
}

#[test]
fn an_unconfirmed_flow_follows_its_first_choice_until_the_client_confirms_it() {
    if !e2e_enabled() {
        return;
    }
    ProgNode::new("unconf", &[])
        .expect("node namespace")
        .run(SERVICES, TABLE, |mut lb| {
            pin_to_cpu(0);
            let client = SocketAddrV4::new(CLIENT.parse().unwrap(), 42000);
            let key = |client: SocketAddrV4| lb_common::maps::FlowKey {
                src: (*client.ip()).into(),
                dst: VIP.into(),
                sport_be: client.port().to_be(),
                dport_be: 81u16.to_be(),
                proto: lb_common::maps::proto::TCP,
                _pad: [0; 3],
            };
            // Round-robin: a retransmitted SYN keeps the backend its first SYN got.
            let syn = Ipv4Frame::tcp(client, vip(81), TCP_SYN);
            let first = lb.run(&syn.build());
            let backend = parse_ipv4(&first.packet).unwrap().dst;
            let before = lb.stats();
            let again = lb.run(&syn.build());
            assert_eq!(again.packet, first.packet, "same backend, same bytes");
            let after = lb.stats();
            assert_eq!(delta(&before, &after, StatSlot::NewFlow), 0);
            assert_eq!(delta(&before, &after, StatSlot::FlowConfirmed), 0);
            // Unconfirmed: not in the connection table, yet tracked.
            assert_eq!(lb.dp.conntrack_occupancy().unwrap().0, 0);
            assert!(lb.dp.tracked_flow(&key(client)).unwrap().is_some());
            // The backend's SYN-ACK is translated from the unconfirmed reply entry.
            let synack = Ipv4Frame::tcp(backend, client, TCP_SYN | TCP_ACK)
                .with_macs(lb_testkit::progtest::backend_mac(0), lb.backend_if_mac);
            let out = lb.run_from(&synack.build(), lb.backend_if);
            assert_eq!(out.packet, synack.with_src(vip(81)).build());
            // The client's ACK confirms it: both entries move to the connection table.
            let out = lb.run(&Ipv4Frame::tcp(client, vip(81), TCP_ACK).build());
            assert_eq!(out.action, XDP_PASS);
            assert_eq!(parse_ipv4(&out.packet).unwrap().dst, backend);
            assert_eq!(delta(&after, &lb.stats(), StatSlot::FlowConfirmed), 1);
            assert_eq!(lb.dp.conntrack_occupancy().unwrap().0, 2);
            let flow = lb.dp.tracked_flow(&key(client)).unwrap().expect("tracked");
            assert_eq!(flow.tcp_state, lb_common::maps::tcp_state::ESTABLISHED);
        })
        .expect("program loaded");
}
