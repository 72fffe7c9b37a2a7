//! Selection properties of the loaded program (BPF_PROG_TEST_RUN): Maglev balance, weights
//! and disruption, and round-robin smoothness, measured on the kernel's own choices and
//! checked against the userspace plan (`lbctl explain`).

use std::net::{SocketAddr, SocketAddrV4};

use lb_common::maps::proto;
use lb_testkit::{
    e2e_enabled,
    packet::{Ipv4Frame, TCP_SYN, parse_ipv4},
    progtest::{Loaded, ProgNode, pin_to_cpu},
};
use lb_userspace::plan::Explanation;

const FLOWS: u32 = 100_000;
const VIP: &str = "198.18.100.1";

fn maglev_service(backends: &[(usize, u32)]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|(i, w)| format!("{{ address: 198.18.2.{}, weight: {w} }}", 10 + i))
        .collect();
    format!(
        r#"
services:
  web:
    vip: {VIP}
    ports: ["80:8080/tcp"]
    maglev_table_size: 65537
    backends: [{}]
"#,
        list.join(", ")
    )
}

/// Flow `n`: a client address and port spread over 198.18.64.0/18.
fn client(n: u32) -> SocketAddrV4 {
    SocketAddrV4::new(
        [198, 18, 64 + (n >> 16) as u8 % 64, (n >> 8) as u8].into(),
        1024 + (n & 0xff) as u16 * 200 + (n >> 24) as u16,
    )
}

/// The backend (last address byte) the program gives each of `flows` new flows; each is
/// checked against the userspace explanation of the same plan.
fn choices(lb: &mut Loaded, flows: u32) -> Vec<u8> {
    let vip: SocketAddrV4 = format!("{VIP}:80").parse().unwrap();
    (0..flows)
        .map(|n| {
            let out = lb.run(&Ipv4Frame::tcp(client(n), vip, TCP_SYN).build());
            let got = parse_ipv4(&out.packet)
                .expect("a translated, valid packet")
                .dst;
            if n % 97 == 0 {
                let Explanation::Maglev { backend, .. } =
                    lb.desired
                        .explain(proto::TCP, SocketAddr::V4(client(n)), SocketAddr::V4(vip))
                else {
                    panic!("a maglev service");
                };
                assert_eq!(
                    SocketAddr::V4(got),
                    backend,
                    "flow {n}: kernel and explain differ"
                );
            }
            got.ip().octets()[3]
        })
        .collect()
}

fn with_program<T: Send>(services: &str, test: impl FnOnce(Loaded) -> T + Send) -> T {
    ProgNode::new("sel", &[])
        .expect("node namespace")
        .run(services, 2 * FLOWS + 4096, test)
        .expect("program loaded")
}

fn counts(choices: &[u8]) -> std::collections::BTreeMap<u8, u32> {
    let mut counts = std::collections::BTreeMap::new();
    for c in choices {
        *counts.entry(*c).or_insert(0) += 1;
    }
    counts
}

#[test]
fn maglev_balances_100k_flows_and_removing_a_backend_moves_under_1_percent_of_the_others() {
    if !e2e_enabled() {
        return;
    }
    let all: Vec<(usize, u32)> = (0..16).map(|i| (i, 1)).collect();
    let before = with_program(&maglev_service(&all), |mut lb| choices(&mut lb, FLOWS));
    let per_backend = counts(&before);
    assert_eq!(per_backend.len(), 16);
    let (min, max) = (
        *per_backend.values().min().unwrap(),
        *per_backend.values().max().unwrap(),
    );
    let ratio = f64::from(max) / f64::from(min);
    println!("maglev balance over {FLOWS} flows: max/min = {max}/{min} = {ratio:.4}");
    assert!(ratio <= 1.05, "max/min {ratio:.4}: {per_backend:?}");

    // Without backend 198.18.2.17 (index 7): only its flows should move.
    let removed = 17u8;
    let rest: Vec<(usize, u32)> = all.iter().copied().filter(|(i, _)| *i != 7).collect();
    let after = with_program(&maglev_service(&rest), |mut lb| choices(&mut lb, FLOWS));
    let others: Vec<(u8, u8)> = before
        .iter()
        .zip(&after)
        .filter(|(b, _)| **b != removed)
        .map(|(b, a)| (*b, *a))
        .collect();
    let moved = others.iter().filter(|(b, a)| b != a).count();
    let share = moved as f64 / others.len() as f64;
    println!(
        "disruption: {moved} of {} other flows moved ({:.3}%)",
        others.len(),
        share * 100.0
    );
    assert!(
        share <= 0.01,
        "{:.3}% of the other flows moved",
        share * 100.0
    );
    assert!(after.iter().all(|b| *b != removed));
}

/// Every slot of service `service`'s table in the kernel, its length first, against the
/// table the plan builds.
fn assert_kernel_table_is_planned(lb: &Loaded, service: u32) {
    assert_kernel_table_slots_are_planned(lb, service, 1);
}

/// As `assert_kernel_table_is_planned`, every `step`th slot and the last.
fn assert_kernel_table_slots_are_planned(lb: &Loaded, service: u32, step: usize) {
    let planned = lb.desired.tables[&service].build().expect("a valid table");
    let slot = |i: usize| lb.dp.table_slot(service, i as u32).expect("readable table");
    assert_eq!(
        slot(0),
        Some(planned.len() as u32),
        "service {service}: the table's length"
    );
    let last = planned.len() - 1;
    for (i, backend) in planned.iter().enumerate() {
        if i % step == 0 || i == last {
            assert_eq!(
                slot(i + 1),
                Some(*backend),
                "service {service}: slot {}",
                i + 1
            );
        }
    }
}

/// A file of `count` Maglev services, service `s` on VIP 198.19.(s / 200).(1 + s % 200) with
/// the table size and backends `service(s)` gives.
fn maglev_services(count: u32, service: impl Fn(u32) -> (u32, Vec<String>)) -> String {
    let mut text = String::from("services:\n");
    for s in 0..count {
        let (size, backends) = service(s);
        text.push_str(&format!(
            "  s{s}:\n    vip: 198.19.{}.{}\n    ports: [\"80:8080/tcp\"]\n    maglev_table_size: {size}\n    backends: [{}]\n",
            s / 200,
            1 + s % 200,
            backends.join(", ")
        ));
    }
    text
}

/// Loads `services` (`count` of them) and checks every table the kernel holds against the
/// plan: every slot of a small one, every 4,999th of a large one.
fn assert_full_apply_is_planned(services: &str, count: usize) {
    with_program(services, |lb| {
        assert_eq!(lb.desired.tables.len(), count);
        for (service, spec) in &lb.desired.tables {
            let large = spec.build().expect("a valid table").len() > 1_000;
            assert_kernel_table_slots_are_planned(&lb, *service, if large { 4_999 } else { 1 });
        }
    });
}

/// Many tables are written by several threads, a group at a time, mapped side by side into
/// one reserved range per group (and on their own when a large one does not fit); each must
/// hold exactly its own table.
#[test]
fn a_full_apply_of_many_tables_writes_each_one_as_planned() {
    if !e2e_enabled() {
        return;
    }
    let services = maglev_services(400, |s| {
        // Every 100th a table of the largest size: three of those do not fit one group's range.
        let size = if s % 100 == 7 {
            1_048_571
        } else {
            101 + 2 * (s % 3) * 3
        };
        let backends = (0..1 + s % 5)
            .map(|b| format!("\"198.18.{}.{}\"", 8 + 2 * b + s / 200, 10 + s % 200))
            .collect();
        (size, backends)
    });
    assert_full_apply_is_planned(&services, 400);
}

/// More tables than the writers keep mapped until they are done (16,384 mappings): some
/// writers unmap theirs early (when, `KeptArenas`' unit test checks); every table is still
/// written as planned.
#[test]
fn a_full_apply_of_more_tables_than_stay_mapped_writes_each_one_as_planned() {
    if !e2e_enabled() {
        return;
    }
    let services = maglev_services(20_000, |s| {
        (
            3,
            vec![format!("\"198.18.{}.{}\"", 8 + s / 200, 10 + s % 200)],
        )
    });
    assert_full_apply_is_planned(&services, 20_000);
}

#[test]
fn adding_a_backend_rewrites_the_maglev_table_where_it_is_and_removing_one_swaps_it() {
    if !e2e_enabled() {
        return;
    }
    let fifteen: Vec<(usize, u32)> = (0..15).map(|i| (i, 1)).collect();
    with_program(&maglev_service(&fifteen), |mut lb| {
        let service = *lb.desired.tables.keys().next().expect("one table");
        let table_id = |lb: &Loaded| {
            lb.dp
                .table_map_id(service)
                .expect("readable tables")
                .expect("the service's table")
        };
        let first = table_id(&lb);
        assert_kernel_table_is_planned(&lb, service);

        // A backend added: the same table, rewritten slot by slot (no grace period to wait).
        let sixteen: Vec<(usize, u32)> = (0..16).map(|i| (i, 1)).collect();
        lb.change(&maglev_service(&sixteen)).expect("backend added");
        assert_eq!(table_id(&lb), first, "rewritten where it is");
        assert_kernel_table_is_planned(&lb, service);
        let per_backend = counts(&choices(&mut lb, 20_000));
        assert_eq!(
            per_backend.len(),
            16,
            "new flows reach every backend: {per_backend:?}"
        );

        // A backend removed: a new table, swapped in, so no packet still reads the old one
        // when the backend's entry goes.
        let without_third: Vec<(usize, u32)> =
            sixteen.iter().copied().filter(|(i, _)| *i != 2).collect();
        lb.change(&maglev_service(&without_third))
            .expect("backend removed");
        assert_ne!(table_id(&lb), first, "swapped");
        assert_kernel_table_is_planned(&lb, service);
    });
}

#[test]
fn maglev_honours_weights() {
    if !e2e_enabled() {
        return;
    }
    let flows = 60_000;
    let chosen = with_program(&maglev_service(&[(0, 1), (1, 2), (2, 3)]), |mut lb| {
        choices(&mut lb, flows)
    });
    let per_backend = counts(&chosen);
    for (backend, weight) in [(10u8, 1.0), (11, 2.0), (12, 3.0)] {
        let share = f64::from(per_backend[&backend]) / f64::from(flows);
        let expected = weight / 6.0;
        assert!(
            (share - expected).abs() <= 0.02,
            "backend .{backend}: share {share:.4}, weight share {expected:.4}"
        );
    }
}

#[test]
fn round_robin_is_smooth_and_weighted_on_one_cpu() {
    if !e2e_enabled() {
        return;
    }
    let services = format!(
        r#"
services:
  web:
    vip: {VIP}
    ports: ["80:8080/tcp"]
    scheduler: round-robin
    backends: ["198.18.2.10", {{ address: 198.18.2.11, weight: 2 }}, {{ address: 198.18.2.12, weight: 3 }}]
"#
    );
    let order = with_program(&services, |mut lb| {
        pin_to_cpu(0);
        let vip: SocketAddrV4 = format!("{VIP}:80").parse().unwrap();
        (0..600)
            .map(|n| {
                let out = lb.run(&Ipv4Frame::tcp(client(n), vip, TCP_SYN).build());
                parse_ipv4(&out.packet).unwrap().dst.ip().octets()[3]
            })
            .collect::<Vec<u8>>()
    });
    // Every prefix of the sequence is within one flow of the weighted share, per backend.
    let mut seen = [0u32; 3];
    for (n, backend) in order.iter().enumerate() {
        seen[usize::from(backend - 10)] += 1;
        for (i, weight) in [1.0, 2.0, 3.0].iter().enumerate() {
            let ideal = (n + 1) as f64 * weight / 6.0;
            assert!(
                (f64::from(seen[i]) - ideal).abs() < 1.0 + 1e-9,
                "after {} flows backend .{} has {}, ideal {ideal:.2}",
                n + 1,
                10 + i,
                seen[i]
            );
        }
    }
    assert_eq!(seen, [100, 200, 300]);
}
