//! The connection table under pressure, on the real kernel program (BPF_PROG_TEST_RUN, as
//! `packets.rs`): what happens to established flows when newer flows fill the table, and
//! what the counters say about it.

use std::net::{Ipv4Addr, SocketAddrV4};

use lb_common::stats::StatSlot;
use lb_testkit::{
    e2e_enabled,
    packet::{Ipv4Frame, TCP_ACK, TCP_SYN, parse_ipv4},
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
