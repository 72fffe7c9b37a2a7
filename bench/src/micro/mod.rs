//! `lb-bench bench micro`: nanoseconds per packet of meshlb's XDP program, measured with
//! `BPF_PROG_TEST_RUN` the way Katran was measured on this
//! kind of machine, so the two compare.
//!
//! Method (as `bench/results/katran-reference.md` describes for Katran):
//! - 60-byte frames like Katran's, in meshlb's address plan: client 198.18.1.2:31337,
//!   VIP 198.18.100.1:80, payload "meshlb"; a non-VIP destination 198.18.100.99:80.
//! - `repeat` iterations per test run (default 10,000,000); the kernel reports the mean
//!   nanoseconds per iteration (an integer). `rounds` interleaved rounds (default 5): every
//!   round runs every class once, in a fixed order; tables give min / median / max.
//! - Programs that rewrite the packet run through the restore harness (lb-ebpf
//!   `src/harness.rs`), which restores the pristine frame (and undoes length
//!   changes) on every iteration and tail-calls the program under test. Packets that stay
//!   unmodified run directly.
//! - Every run is checked: the return value, the bytes out, and the deltas of meshlb's own
//!   counters (every path counter must move by exactly the iteration count, every other by 0).
//! - Single-shot mode (Katran's own perf method): repeat = 1, many calls, mean of the
//!   kernel-reported durations.
//!
//! Nothing is sent anywhere: all runs are `BPF_PROG_TEST_RUN` inside a namespace this command
//! creates (veth pairs, addresses, static neighbours, `ip_forward=1`), so `bpf_fib_lookup`
//! succeeds as it would on a node.

mod bench;
mod classes;
mod frames;
mod ipv6;
mod katran;
pub mod machine;
mod report;
mod setup;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, ProgramArray},
    programs::{ProgramFd, TestRun as _, TestRunOptions, Xdp},
};
use lb_common::{
    limits::DEFAULT_CONNTRACK_ENTRIES,
    maps::{Flow, FlowKey, Handoff, flow_kind, names, proto, tcp_state},
    stats::StatSlot,
};
use lb_testkit::{
    Netns,
    packet::{CLIENT_MAC, Ipv4Frame, TCP_ACK, TCP_SYN, parse_ipv4, tunnel_inner, tunnel_wrap},
    progtest::handoff_in,
};
use lb_userspace::{
    dataplane::{Dataplane, LoadOptions, StatsSnapshot},
    plan::{self, DesiredState},
    source::file::{BackendSpec, MeshBackend, MeshNodes, PortMapping, ServiceFile},
};

use self::{
    bench::*,
    classes::*,
    frames::*,
    katran::KatranReference,
    report::{ClassResult, Report, SingleShotResult},
    setup::*,
};
use crate::{
    objects::HARNESS_OBJECT,
    traffic::tracked_floor::{TrackedFloor, TrackedFloorRoute},
};

#[derive(clap::Args, Debug)]

pub struct MicroArgs {
    /// Iterations per BPF_PROG_TEST_RUN call; the kernel reports their mean.
    #[arg(long, default_value_t = 10_000_000)]
    repeat: u32,
    /// Interleaved rounds: every round runs every class once; tables give min/median/max.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Calls per class and round of the single-shot method (repeat = 1 per call, Katran's
    /// own perf method); 0 skips it.
    #[arg(long, default_value_t = 1_000_000)]
    single_shot_calls: u32,
    /// Service counts of the scaling check (against the 1-service baseline); the option
    /// without a value skips it.
    #[arg(long, value_delimiter = ',', num_args = 0.., default_values_t = [10_000u32, 100_000])]
    scale_services: Vec<u32>,
    /// Tracked flows prefilled into the connection table for the scaling check; 0 skips it.
    #[arg(long, default_value_t = 1_000_000)]
    prefill_flows: u32,
    /// Connection-table capacity of every dataplane (entries; a flow takes two).
    #[arg(long, default_value_t = DEFAULT_CONNTRACK_ENTRIES)]
    conntrack_entries: u32,
    /// CPU to run on (default: 1, or 0 on a single-CPU machine).
    #[arg(long)]
    cpu: Option<usize>,
    /// Directory for micro-<date>.md and micro-<date>.json.
    #[arg(long, default_value = "bench/results")]
    out_dir: PathBuf,
    /// Print the table only; write no result files.
    #[arg(long)]
    no_write: bool,
    /// Run only the classes whose key contains one of these strings, or is one prefixed with
    /// `=` (for quick looks and profiling; the table then has gaps).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// The order the spread rows visit their flows in.
    #[arg(long, value_enum, default_value_t = SpreadOrder::Scattered)]
    spread_order: SpreadOrder,
}

/// The order the spread rows (every packet another of N tracked flows) visit their flows in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SpreadOrder {
    /// Each packet's flow inserted far from the previous one's, as traffic comes (see
    /// `scatter_stride`).
    Scattered,
    /// The order the tables took them, so each entry's neighbour in memory comes next: the
    /// method before 2026-12-08, which flatters every table's cold figures.
    Inserted,
}

// ---------------------------------------------------------------------------------------------
// The run

/// Size of the loaded meshlb_xdp program, as the kernel reports it (`bench/results/katran-reference.md` gives
/// Katran's: 3,018 xlated instructions, 13,276 B of JIT code).
#[derive(Clone, Copy, Debug, serde::Serialize)]
struct ProgramSize {
    xlated_insns: Option<u32>,
    jited_bytes: u32,
    verified_insns: Option<u32>,
}

struct Outcome {
    program: Option<ProgramSize>,
    table_cost: Option<TableCost>,
    classes: Vec<ClassResult>,
    single_shot: Vec<SingleShotResult>,
    prefilled_entries: Option<u64>,
    fill_iterations: u32,
    cpu: usize,
    cpu_note: Option<String>,
    elapsed: Duration,
}

pub fn run(args: &MicroArgs) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "lb-bench bench micro loads BPF programs and creates a network namespace: run it as root"
    );
    ensure!(
        args.repeat >= 1 && args.rounds >= 1,
        "--repeat and --rounds must be at least 1"
    );
    ensure!(
        u64::from(args.prefill_flows) * 2 <= u64::from(args.conntrack_entries),
        "--prefill-flows {} needs {} connection-table entries (two per flow), but --conntrack-entries is {}",
        args.prefill_flows,
        u64::from(args.prefill_flows) * 2,
        args.conntrack_entries
    );
    for &n in &args.scale_services {
        ensure!(
            (1..=lb_common::limits::MAX_SERVICES).contains(&n),
            "--scale-services {n}: between 1 and {} (MAX_SERVICES)",
            lb_common::limits::MAX_SERVICES
        );
    }
    let machine = machine::facts();
    let load_before = machine::load_average();
    println!(
        "micro: {} ({} CPUs), {}; repeat = {}, {} interleaved rounds",
        machine.cpu_model, machine.cpus, machine.kernel, args.repeat, args.rounds
    );
    let ns = node_namespace()?;
    let backend_if_mac = read_mac(&ns, "lbb")?;
    let katran = katran::for_vendor(&machine.vendor_id);
    let outcome = ns.run(|| measure(args, backend_if_mac, machine.cpus, katran.0))??;
    drop(ns);
    let report = Report::new(
        args,
        machine,
        katran,
        load_before,
        machine::load_average(),
        outcome,
    );
    let markdown = report.markdown();
    println!();
    print!("{markdown}");
    if !args.no_write {
        let base = crate::results::write(
            &args.out_dir,
            &format!("micro-{}", report.date),
            &report,
            &markdown,
        )?;
        println!("micro: wrote {}.{{json,md}}", base.display());
    }
    Ok(())
}

/// Which dataplane each group of classes runs on.
struct Layout {
    main: usize,
    tc: usize,
    new: usize,
    rr: usize,
    main6: usize,
    new6: usize,
    /// A swarm node's: the mesh tunnel's rows.
    mesh: usize,
    /// Scaling dataplanes and what differs from `main`.
    scaled: Vec<(usize, String)>,
    /// The spread rows' dataplanes and the flows each table holds (1,024, 100,000 and the
    /// prefilled one's, those below `--prefill-flows`).
    spread: Vec<(usize, u32)>,
    /// The tracked floors (`Bench::tracked`), by the flows the harness sends each: the first
    /// the same flow every packet (0), then one per spread row.
    tracked: Vec<u32>,
}

/// Everything that touches the kernel, on a thread inside the node namespace.
fn measure(
    args: &MicroArgs,
    backend_if_mac: [u8; 6],
    cpus: usize,
    katran: &KatranReference,
) -> Result<Outcome> {
    let started = Instant::now();
    let (cpu, cpu_note) = match args.cpu {
        Some(cpu) => (cpu, None),
        None if cpus >= 2 => (1, None),
        None => (
            0,
            Some("only one CPU: pinned to CPU 0 (Katran's figures were taken on CPU 1)".to_owned()),
        ),
    };
    if let Some(note) = &cpu_note {
        println!("micro: {note}");
    }
    pin_to_cpu(cpu)?;
    let backend_if = lb_userspace::dataplane::ifindex("lbb")?;
    let Dataplanes {
        dps,
        layout,
        table_cost,
        prefilled_entries,
    } = dataplanes(args, backend_if)?;
    let frames = Frames::new(backend_if_mac)?;
    let classes = selected_classes(args, classes(&frames, &layout, katran))?;
    // Each tracked floor preallocates a table as large as meshlb's: only when measured.
    let tracked = if classes
        .iter()
        .any(|c| matches!(c.target, Target::Tracked(_)))
    {
        tracked_floors(&layout, args.conntrack_entries, backend_if, backend_if_mac)?
    } else {
        Vec::new()
    };
    let mut bench = Bench {
        harness: load_harness()?,
        tracked,
        dps,
        client_if: lb_userspace::dataplane::ifindex("lbc")?,
        backend_if,
        backend_if_mac,
        scatter_visits: false,
    };
    open_measured_flows(&mut bench, &layout, &frames)?;
    let fill_iterations = check_and_fill(args, &mut bench, &classes)?;
    let (classes, single_shot) = measure_rounds(args, &mut bench, &classes, katran)?;
    let program = bench.dps[layout.main]
        .dp
        .xdp_program()?
        .info()
        .ok()
        .map(|info| ProgramSize {
            xlated_insns: info.size_translated().map(|b| b / 8),
            jited_bytes: info.size_jitted(),
            verified_insns: info.verified_instruction_count(),
        });
    Ok(Outcome {
        program,
        table_cost,
        classes,
        single_shot,
        prefilled_entries,
        fill_iterations,
        cpu,
        cpu_note,
        elapsed: started.elapsed(),
    })
}

/// The tracked floors of `layout.tracked`, each with a connection table sized as meshlb's
/// (`conntrack_entries`), sending to the measured service's 16 backends.
fn tracked_floors(
    layout: &Layout,
    conntrack_entries: u32,
    backend_if: u32,
    backend_if_mac: [u8; 6],
) -> Result<Vec<TrackedFloor>> {
    let backends: Vec<Ipv4Addr> = (0..BACKENDS).map(backend_ip).collect();
    let route = TrackedFloorRoute {
        out_ifindex: backend_if,
        dst_mac: backend_mac(0),
        src_mac: backend_if_mac,
        backends: &backends,
        port: BACKEND_PORT,
    };
    let entries = lb_common::limits::hash_table_entries(conntrack_entries);
    layout
        .tracked
        .iter()
        .map(|_| TrackedFloor::load(None, &route, entries))
        .collect()
}

/// The restore harness and its floors, loaded.
fn load_harness() -> Result<Ebpf> {
    let mut harness = EbpfLoader::new()
        .load(HARNESS_OBJECT)
        .context("loading the bench harness object")?;
    for name in HARNESS_PROGRAMS {
        let prog: &mut Xdp = harness
            .program_mut(name)
            .ok_or_else(|| anyhow!("harness object has no program {name}"))?
            .try_into()?;
        prog.load().with_context(|| format!("loading {name}"))?;
    }
    Ok(harness)
}

/// The dataplanes under test, where each group of classes runs, the cost of building a
/// selection table, and how many entries the prefilled table holds.
struct Dataplanes {
    dps: Vec<Dp>,
    layout: Layout,
    table_cost: Option<TableCost>,
    prefilled_entries: Option<u64>,
}

fn dataplanes(args: &MicroArgs, backend_if: u32) -> Result<Dataplanes> {
    // Dataplanes. The new-flow classes fill their connection tables, so they get their own;
    // the hit-path classes always see a table holding only the measured flow (apart from the
    // prefill check).
    let dp = |name: String, round_robin, v6, extra_services, redirect| DpSpec {
        name,
        round_robin,
        v6,
        extra_services,
        redirect,
        mesh: false,
    };
    let mut specs = vec![
        dp("main (Maglev)".into(), false, false, 0, true),
        dp("tc (Maglev, no TX_PORTS)".into(), false, false, 0, false),
        dp("new-flows (Maglev)".into(), false, false, 0, true),
        dp("rr (round-robin)".into(), true, false, 0, true),
        dp("main6 (Maglev, IPv6)".into(), false, true, 0, true),
        dp("new-flows6 (Maglev, IPv6)".into(), false, true, 0, true),
        DpSpec {
            mesh: true,
            ..dp("mesh (swarm node)".into(), false, false, 0, true)
        },
    ];
    let mut layout = Layout {
        main: 0,
        tc: 1,
        new: 2,
        rr: 3,
        main6: 4,
        new6: 5,
        mesh: 6,
        scaled: Vec::new(),
        spread: Vec::new(),
        tracked: Vec::new(),
    };
    for &n in &args.scale_services {
        layout.scaled.push((specs.len(), format!("{n} services")));
        specs.push(dp(format!("services-{n}"), false, false, n - 1, true));
    }
    let flows_dp = (args.prefill_flows > 0).then(|| {
        let n = specs.len();
        layout
            .scaled
            .push((n, format!("{} tracked flows", args.prefill_flows)));
        specs.push(dp(
            format!("flows-{}", args.prefill_flows),
            false,
            false,
            0,
            true,
        ));
        n
    });
    // Issue 16's cold flows: tables holding fewer flows beside the prefilled one, each sent
    // every packet another of the flows it holds.
    if args.prefill_flows >= SPREAD_BASELINE_FLOWS {
        for n in SPREAD_FLOWS {
            if n < args.prefill_flows {
                layout.spread.push((specs.len(), n));
                specs.push(dp(format!("spread-{n}"), false, false, 0, true));
            }
        }
        if let Some(i) = flows_dp {
            layout.spread.push((i, args.prefill_flows));
        }
    }
    layout.tracked = std::iter::once(0)
        .chain(layout.spread.iter().map(|&(_, n)| n))
        .collect();
    let mut dps = Vec::new();
    let mut table_cost = None;
    for spec in &specs {
        let sample = if table_cost.is_none() {
            TABLE_SAMPLE
        } else {
            0
        };
        let (dp, cost) = load_dataplane(spec, args.conntrack_entries, backend_if, sample)?;
        dps.push(dp);
        table_cost = table_cost.or(cost);
    }
    for &(i, n) in &layout.spread {
        if Some(i) != flows_dp {
            prefill(&mut dps[i], n)?;
        }
    }
    let prefilled_entries = match flows_dp {
        Some(n) => Some(prefill(&mut dps[n], args.prefill_flows)?),
        None => None,
    };
    Ok(Dataplanes {
        dps,
        layout,
        table_cost,
        prefilled_entries,
    })
}

/// The measured frames: IPv4 (60 bytes) and IPv6 (80 bytes).
struct Frames {
    ack: Vec<u8>,
    syn: Vec<u8>,
    non_vip: Vec<u8>,
    /// A client's packet addressed to a backend (the FIB floor).
    to_backend: Vec<u8>,
    v6: Frames6,
    /// A peer's tunnel packets for the local task: the ACK measured and the SYN that opens it.
    tunneled_ack: Vec<u8>,
    tunneled_syn: Vec<u8>,
}

impl Frames {
    /// `node_mac`: the node's backend-side MAC, where the peer's tunnel packets are sent.
    fn new(node_mac: [u8; 6]) -> Result<Frames> {
        let client = SocketAddrV4::new(CLIENT, CLIENT_PORT);
        let vip = SocketAddrV4::new(VIP, VIP_PORT);
        let ack = Ipv4Frame::tcp(client, vip, TCP_ACK).build();
        let syn = Ipv4Frame::tcp(client, vip, TCP_SYN).build();
        let non_vip = Ipv4Frame::tcp(client, SocketAddrV4::new(NON_VIP, VIP_PORT), TCP_ACK).build();
        for f in [&ack, &syn, &non_vip] {
            ensure!(f.len() == FRAME_LEN, "frames are {FRAME_LEN} bytes");
        }
        let client6 = SocketAddrV6::new(CLIENT6, CLIENT_PORT, 0, 0);
        let vip6 = SocketAddrV6::new(VIP6, VIP_PORT, 0, 0);
        let v6 = Frames6 {
            ack: ipv6::tcp_frame(client6, vip6, TCP_ACK),
            syn: ipv6::tcp_frame(client6, vip6, TCP_SYN),
            non_vip: ipv6::tcp_frame(
                client6,
                SocketAddrV6::new(NON_VIP6, VIP_PORT, 0, 0),
                TCP_ACK,
            ),
        };

        let to_backend = Ipv4Frame::tcp(
            client,
            SocketAddrV4::new(backend_ip(0), BACKEND_PORT),
            TCP_ACK,
        )
        .build();
        let local_task = SocketAddrV4::new(TASK_LOCAL, BACKEND_PORT);
        let tunneled = |flags| {
            tunnel_wrap(
                &Ipv4Frame::tcp(client, local_task, flags).build(),
                (backend_mac(MESH_PEER), node_mac),
                backend_ip(MESH_PEER),
                NODE_BACKEND_SIDE,
                tunnel_entropy(CLIENT_PORT, BACKEND_PORT),
            )
        };
        Ok(Frames {
            ack,
            syn,
            non_vip,
            to_backend,
            v6,
            tunneled_ack: tunneled(TCP_ACK),
            tunneled_syn: tunneled(TCP_SYN),
        })
    }
}

/// Opens the measured flows (SYN, then its first ACK) on every dataplane with hit classes:
/// the client's, and on the mesh dataplane also the peer's tunneled one.
fn open_measured_flows(bench: &mut Bench, layout: &Layout, frames: &Frames) -> Result<()> {
    let (client, backend) = (bench.client_if, bench.backend_if);
    let mut openings = vec![
        (layout.main, client, &frames.syn, &frames.ack),
        (layout.tc, client, &frames.syn, &frames.ack),
        (layout.main6, client, &frames.v6.syn, &frames.v6.ack),
        (layout.mesh, client, &frames.syn, &frames.ack),
        (
            layout.mesh,
            backend,
            &frames.tunneled_syn,
            &frames.tunneled_ack,
        ),
    ];
    openings.extend(
        layout
            .scaled
            .iter()
            .map(|(n, _)| (*n, client, &frames.syn, &frames.ack)),
    );
    for &(n, ctx, syn, ack) in &openings {
        let prog = bench.dps[n].dp.xdp_program()?;
        let opened = test_run(prog, syn, ctx, 1)?;
        let first_ack = test_run(prog, ack, ctx, 1)?;
        let want = if n == layout.tc {
            XDP_PASS
        } else {
            XDP_REDIRECT
        };
        ensure!(
            opened.retval == want && first_ack.retval == want,
            "opening the measured flow on {} returned {} / {}",
            bench.dps[n].name,
            action_name(opened.retval),
            action_name(first_ack.retval)
        );
    }
    for (n, dp) in bench.dps.iter().enumerate() {
        let opened = openings.iter().filter(|o| o.0 == n).count() as u64;
        let new_flows = dp.dp.stats()?.get(StatSlot::NewFlow);
        ensure!(
            opened == 0 || new_flows == opened,
            "{}: opening {opened} measured flows made {new_flows} new flows",
            dp.name
        );
    }
    Ok(())
}

/// The classes `--only` keeps (all without it).
fn selected_classes(args: &MicroArgs, mut classes: Vec<Class>) -> Result<Vec<Class>> {
    if !args.only.is_empty() {
        classes.retain(|c| {
            args.only.iter().any(|o| match o.strip_prefix('=') {
                Some(exact) => c.key == exact,
                None => c.key.contains(o.as_str()),
            })
        });
        ensure!(
            !classes.is_empty(),
            "--only {:?} matches no class",
            args.only
        );
    }

    Ok(classes)
}

/// Runs every class once at a small repeat, so a wrong path fails in seconds, and fills the
/// new-flow classes' tables; the fill's iteration count.
fn check_and_fill(args: &MicroArgs, bench: &mut Bench, classes: &[Class]) -> Result<u32> {
    let check_repeat = args.repeat.clamp(1, 100_000);
    println!("micro: check pass (repeat = {check_repeat}): every class once, every path verified");
    let mut estimate_s = 0.0;
    for class in classes.iter().filter(|c| !c.single_shot_only) {
        let s = bench.run(class, check_repeat)?;
        estimate_s += s.wall_ns * 1e-9 * f64::from(args.repeat) * args.rounds as f64;
    }
    // Fill the tables of the new-flow classes, so they are measured at steady state where
    // every insert evicts (Katran's reference figures were taken after such a warm-up too).
    let fill_iterations = (u64::from(args.conntrack_entries) / 2 * 21 / 20) as u32;
    for class in classes.iter().filter(|c| {
        c.via == Via::HarnessVary && c.vary_span == 0 && matches!(c.target, Target::Meshlb(_))
    }) {
        println!(
            "micro: filling the connection table for {:?} ({fill_iterations} new flows)",
            class.key
        );
        bench.run(class, fill_iterations)?;
    }
    // One pass over each spread class's flows: their first packets look up and cache the
    // route, as an established flow's did long ago.
    for class in classes.iter().filter(|c| c.vary_span > 0) {
        bench.run(class, class.vary_span)?;
    }
    // From here the spread classes visit their flows scattered, not in the order the tables
    // took them (see `scatter_stride`), unless asked for that order.
    bench.scatter_visits = args.spread_order == SpreadOrder::Scattered;
    let single_shot_classes = single_shot_classes(args, classes);
    estimate_s += single_shot_classes.len() as f64
        * f64::from(args.single_shot_calls)
        * args.rounds as f64
        * 2.5e-6;
    let measured: Vec<usize> = (0..classes.len())
        .filter(|i| !classes[*i].single_shot_only)
        .collect();
    println!(
        "micro: {} classes x {} rounds x {} iterations{}: about {:.0} s from here",
        measured.len(),
        args.rounds,
        args.repeat,
        if single_shot_classes.is_empty() {
            String::new()
        } else {
            format!(
                ", then single-shot: {} classes x {} rounds x {} calls",
                single_shot_classes.len(),
                args.rounds,
                args.single_shot_calls
            )
        },
        estimate_s
    );

    Ok(fill_iterations)
}

/// The measured rounds, then the single-shot ones.
fn measure_rounds(
    args: &MicroArgs,
    bench: &mut Bench,
    classes: &[Class],
    katran: &KatranReference,
) -> Result<(Vec<ClassResult>, Vec<SingleShotResult>)> {
    let measured: Vec<usize> = (0..classes.len())
        .filter(|i| !classes[*i].single_shot_only)
        .collect();
    let single_shot_classes = single_shot_classes(args, classes);
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); classes.len()];
    for round in 0..args.rounds {
        for &i in &measured {
            let class = &classes[i];
            let s = bench.run(class, args.repeat)?;
            println!(
                "micro: round {}/{}  {:<16} {:<64} {:>6.0} ns  (wall {:>6.1})",
                round + 1,
                args.rounds,
                class.via.label(),
                class.label,
                s.kernel_ns,
                s.wall_ns
            );
            samples[i].push(s);
        }
    }
    let mut ss: Vec<Vec<SingleShot>> = vec![Vec::new(); single_shot_classes.len()];
    let ss_rounds = if single_shot_classes.is_empty() {
        0
    } else {
        args.rounds
    };
    for round in 0..ss_rounds {
        for (i, class) in single_shot_classes.iter().enumerate() {
            let r = bench.single_shot(class, args.single_shot_calls)?;
            println!(
                "micro: single-shot round {}/{}  {:<52} mean {:>6.1} ns, median {:>4} ns, {:.2} µs per call",
                round + 1,
                ss_rounds,
                class.label,
                r.mean_ns,
                r.median_ns,
                r.wall_us
            );
            ss[i].push(r);
        }
    }
    let single_shot = single_shot_classes
        .iter()
        .zip(ss)
        .map(|(c, runs)| SingleShotResult::new(c, &runs, katran))
        .collect();
    let classes = measured
        .iter()
        .map(|&i| ClassResult::new(&classes[i], &samples[i]))
        .collect();
    Ok((classes, single_shot))
}

/// The classes measured single-shot (when `--single-shot-calls` asks for it).
fn single_shot_classes<'a>(args: &MicroArgs, classes: &'a [Class]) -> Vec<&'a Class> {
    if args.single_shot_calls > 0 {
        [
            "floor-pass-direct",
            "floor-tx-direct",
            "pass-through-direct",
            "established-direct",
            "mesh-encap-direct",
            "mesh-decap-direct",
        ]
        .iter()
        .filter_map(|k| classes.iter().find(|c| c.key == *k))
        .collect()
    } else {
        Vec::new()
    }
}
