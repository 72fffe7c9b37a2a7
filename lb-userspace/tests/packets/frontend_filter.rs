//! `FORWARD_FILTER` (lb-common `endpoint_filter`) gates `FRONTENDS`: `lbd` marks every
//! frontend before it writes it, and the program looks a destination up only when its bit is
//! set. Every frontend the other tests meet was marked, so only a frontend written around
//! `lbd` shows that the lookup is skipped.

use lb_common::{
    Addr,
    hash::endpoint_filter_slot,
    maps::{EndpointKey, proto},
    stats::StatSlot,
};
use lb_testkit::{
    e2e_enabled,
    packet::{Ipv4Frame, TCP_SYN},
    progtest::{CLIENT, Loaded, delta},
};

use super::{ONE_BACKEND, VIP, XDP_PASS, sock, with_program};

/// `ONE_BACKEND` with the VIP's port 81 served too, as lbd would write it.
const WITH_PORT_81: &str = r#"
services:
  web:
    vip: 198.18.100.1
    ports: ["80:8080/tcp", "81:8080/tcp", "53:5353/udp"]
    backends: ["198.18.2.10"]
  published:
    ports: ["8000:9000/tcp"]
    backends: ["198.18.2.11"]
"#;

fn vip_port(port: u16) -> EndpointKey {
    let vip: std::net::Ipv4Addr = VIP.parse().expect("VIP");
    EndpointKey::new(Addr::from(vip), port.to_be(), proto::TCP)
}

/// The counters a SYN from `client_port` to the VIP's port 81 moved: not a frontend, new flow.
fn syn_to_port_81(lb: &mut Loaded, client_port: u16) -> (u32, u64, u64) {
    let syn = Ipv4Frame::tcp(sock(CLIENT, client_port), sock(VIP, 81), TCP_SYN).build();
    let before = lb.stats();
    let out = lb.run(&syn);
    let after = lb.stats();
    if out.action == XDP_PASS && out.handoff.is_none() {
        assert_eq!(out.packet, syn, "passed untouched");
    }
    (
        out.action,
        delta(&before, &after, StatSlot::PassNotFrontend),
        delta(&before, &after, StatSlot::NewFlow),
    )
}

#[test]
fn a_frontend_lbd_did_not_mark_is_never_looked_up() {
    if !e2e_enabled() {
        return;
    }
    with_program(ONE_BACKEND, |mut lb| {
        let port_81 = vip_port(81);
        let slot = |k: &EndpointKey| endpoint_filter_slot(&k.addr, k.port_be, k.proto);
        assert!(
            lb.desired
                .frontends
                .keys()
                .all(|k| slot(k) != slot(&port_81)),
            "no planned frontend shares port 81's filter slot"
        );
        // Port 80's entry copied to port 81, around lbd: its bit stays clear.
        {
            let mut frontends = lb.dp.frontend_table_mut().expect("FRONTENDS");
            let service = frontends.get(&vip_port(80), 0).expect("port 80's frontend");
            frontends
                .insert(port_81, service, 0)
                .expect("port 81 written around lbd");
        }
        assert_eq!(
            syn_to_port_81(&mut lb, 40010),
            (XDP_PASS, 1, 0),
            "an unmarked frontend is not looked up, so not served"
        );
        // lbd's own write marks it first: the same SYN is served.
        lb.change(WITH_PORT_81).expect("port 81 planned");
        let (_, not_frontend, opened) = syn_to_port_81(&mut lb, 40010);
        assert_eq!((not_frontend, opened), (0, 1), "served once marked");
    });
}
