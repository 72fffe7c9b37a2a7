//! `CONNTRACK_FILTER` (lb-common `conntrack_filter`): a SYN asks the connection table only
//! when the filter may hold its key, so a SYN reusing a tracked flow's tuple must still follow
//! that flow, and a rebuild from a walk of the table must keep every forward key and drop the
//! rest. Round-robin makes a wrong choice visible: a flow placed anew takes the next backend
//! of the rotation, not its own.

use std::net::SocketAddrV4;

use lb_common::stats::StatSlot;
use lb_testkit::{
    e2e_enabled,
    packet::{Ipv4Frame, TCP_ACK, TCP_SYN, parse_ipv4},
    progtest::{CLIENT, Loaded, delta, pin_to_cpu},
};

use super::{VIP, forward_key, sock, with_program};

const THREE_ROUND_ROBIN: &str = r#"
services:
  web:
    vip: 198.18.100.1
    ports: ["80:8080/tcp"]
    scheduler: round-robin
    backends: ["198.18.2.10", "198.18.2.11", "198.18.2.12"]
"#;

/// Runs `test` on `THREE_ROUND_ROBIN`'s program, on one CPU (the rotation's cursor is
/// per CPU, so every SYN of the test turns the same one).
fn with_round_robin(test: impl FnOnce(Loaded) + Send) {
    with_program(THREE_ROUND_ROBIN, |lb| {
        pin_to_cpu(0);
        test(lb)
    });
}

/// The backend `lb` sends a SYN from `client` to, and how many new flows that opened.
fn syn(lb: &mut Loaded, client: SocketAddrV4) -> (SocketAddrV4, u64) {
    let before = lb.stats();
    let out = lb.run(&Ipv4Frame::tcp(client, sock(VIP, 80), TCP_SYN).build());
    let backend = parse_ipv4(&out.packet).expect("forwarded").dst;
    (backend, delta(&before, &lb.stats(), StatSlot::NewFlow))
}

/// Opens and confirms a flow from `client`; its backend.
fn confirmed(lb: &mut Loaded, client: SocketAddrV4) -> SocketAddrV4 {
    let (backend, opened) = syn(lb, client);
    assert_eq!(opened, 1, "{client}: a new flow");
    let before = lb.stats();
    lb.run(&Ipv4Frame::tcp(client, sock(VIP, 80), TCP_ACK).build());
    assert_eq!(delta(&before, &lb.stats(), StatSlot::FlowConfirmed), 1);
    backend
}

#[test]
fn a_syn_reusing_a_tracked_flows_tuple_follows_the_flow_with_the_filter_on() {
    if !e2e_enabled() {
        return;
    }
    with_round_robin(|mut lb| {
        let walk = lb.dp.rebuild_conntrack_filter().expect("filter rebuilt");
        assert_eq!((walk.entries, walk.forward_keys), (0, 0));
        // Confirmed with the filter on: the kernel sets the key's bit as it writes the entry.
        let client = sock(CLIENT, 44000);
        let backend = confirmed(&mut lb, client);
        // A SYN on the tracked tuple (a client that lost the connection reuses its port)
        // follows the flow, as it does through the lookup; a new flow would take the next
        // backend of the rotation.
        let (again, opened) = syn(&mut lb, client);
        assert_eq!((again, opened), (backend, 0), "follows its flow");
        // The rebuild keeps the key (the walk finds its forward entry, not the reply one).
        let walk = lb.dp.rebuild_conntrack_filter().expect("filter rebuilt");
        assert_eq!((walk.entries, walk.forward_keys), (2, 1));
        let (again, opened) = syn(&mut lb, client);
        assert_eq!(
            (again, opened),
            (backend, 0),
            "follows its flow after the rebuild"
        );
    });
}

#[test]
fn a_syn_skips_the_table_only_once_a_rebuild_has_seen_every_key() {
    if !e2e_enabled() {
        return;
    }
    with_round_robin(|mut lb| {
        let first = sock(CLIENT, 44100);
        let backend = confirmed(&mut lb, first);
        let entry = lb
            .dp
            .tracked_flow(&forward_key(first, sock(VIP, 80)))
            .unwrap()
            .expect("forward entry");
        // A forward entry whose bit nobody set: what a program of an older version, still
        // attached while a new lbd starts, writes.
        let unseen = sock(CLIENT, 44101);
        let copy_as = |lb: &mut Loaded, client: SocketAddrV4| {
            lb.dp
                .connection_table_mut()
                .unwrap()
                .insert(forward_key(client, sock(VIP, 80)), entry, 0)
                .expect("entry written");
        };
        copy_as(&mut lb, unseen);
        // Until a rebuild completes, readers are off: the SYN asks the table and follows.
        let (to, opened) = syn(&mut lb, unseen);
        assert_eq!((to, opened), (backend, 0), "filter off: looked up");

        // After a rebuild the walk has seen it: still followed.
        let walk = lb.dp.rebuild_conntrack_filter().expect("filter rebuilt");
        assert_eq!(walk.forward_keys, 2);
        let (to, opened) = syn(&mut lb, unseen);
        assert_eq!((to, opened), (backend, 0), "rebuilt: looked up");

        // A forward entry written after the rebuild without its bit is not asked for: the
        // SYN opens a new flow on the next backend. This is why every writer must set it.
        let late = sock(CLIENT, 44102);
        copy_as(&mut lb, late);
        let (to, opened) = syn(&mut lb, late);
        assert_eq!(opened, 1, "filter on: the table was not asked");
        assert_ne!(to, backend);

        // A flow that is gone leaves a stale bit; the next rebuild drops it. The table then
        // holds the first flow (both entries) and the late copy (its SYN is unconfirmed).
        lb.dp
            .connection_table_mut()
            .unwrap()
            .remove(&forward_key(unseen, sock(VIP, 80)))
            .unwrap();
        // Twice, so each half is rebuilt once since (only the first rebuild's half was ever
        // given this key's bit: it is the one a rebuild that did not zero would keep it in).
        for _ in 0..2 {
            let walk = lb.dp.rebuild_conntrack_filter().expect("filter rebuilt");
            assert_eq!((walk.entries, walk.forward_keys), (3, 2));
        }
        // Dropped: written again without its bit, its entry is no longer asked for.
        copy_as(&mut lb, unseen);
        let (to, opened) = syn(&mut lb, unseen);
        assert_eq!(opened, 1, "the rebuilt half lacks the removed key's bit");
        assert_ne!(to, backend);
    });
}

#[test]
fn a_syn_sent_again_follows_its_unconfirmed_flow_with_the_filter_on() {
    if !e2e_enabled() {
        return;
    }
    with_round_robin(|mut lb| {
        lb.dp.rebuild_conntrack_filter().expect("filter rebuilt");
        // The key's bit is clear (the flow is unconfirmed), so the SYN skips the connection
        // table and `pending` takes the entry function's answer from `PENDING`, asked while
        // the filter's word was read: it must be the unconfirmed flow, not "none".
        let client = sock(CLIENT, 44200);
        let (backend, opened) = syn(&mut lb, client);
        assert_eq!(opened, 1, "a new flow");
        for attempt in 1..=2 {
            let (again, opened) = syn(&mut lb, client);
            assert_eq!(
                (again, opened),
                (backend, 0),
                "SYN sent again ({attempt}): follows its unconfirmed flow"
            );
        }
        // No round-robin turn was taken by the SYNs sent again: the next client gets the
        // backend after the first one's.
        let (next, opened) = syn(&mut lb, sock(CLIENT, 44201));
        assert_eq!(opened, 1);
        assert_ne!(next, backend, "the rotation moved on once");
        let (third, _) = syn(&mut lb, sock(CLIENT, 44202));
        assert!(third != backend && third != next, "three backends in turn");
    });
}
