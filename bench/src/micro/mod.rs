//! `lb-bench bench micro`: nanoseconds per packet of meshlb's XDP program, measured with
//! `BPF_PROG_TEST_RUN` the way `/work/shared/research/katran-perf.md` measured Katran on this
//! kind of machine, so the two compare.
//!
//! Method (katran-perf.md §3):
//! - 60-byte frames like katran-perf §3.1, in meshlb's address plan: client 198.18.1.2:31337,
//!   VIP 198.18.100.1:80, payload "meshlb"; a non-VIP destination 198.18.100.99:80.
//! - `repeat` iterations per test run (default 10,000,000); the kernel reports the mean
//!   nanoseconds per iteration (an integer). `rounds` interleaved rounds (default 5): every
//!   round runs every class once, in a fixed order; tables give min / median / max.
//! - Programs that rewrite the packet run through the restore harness (lb-ebpf
//!   `src/harness.rs`), which restores the pristine frame (and undoes metadata and length
//!   changes) on every iteration and tail-calls the program under test. Packets that stay
//!   unmodified run directly.
//! - Every run is checked: the return value, the bytes out, and the deltas of meshlb's own
//!   counters (every path counter must move by exactly the iteration count, every other by 0).
//! - Single-shot mode (katran-perf §3.2 way 3): repeat = 1, many calls, mean of the
//!   kernel-reported durations.
//!
//! Nothing is sent anywhere: all runs are `BPF_PROG_TEST_RUN` inside a namespace this command
//! creates (veth pairs, addresses, static neighbours, `ip_forward=1`), so `bpf_fib_lookup`
//! succeeds as it would on a node.

mod ipv6;
pub mod machine;
mod report;

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
    maps::{Flow, FlowKey, XDP_META_MAGIC, flow_kind, names, proto, tcp_state},
    stats::StatSlot,
};
use lb_testkit::{
    Netns,
    packet::{CLIENT_MAC, Ipv4Frame, NODE_MAC, TCP_ACK, TCP_SYN, parse_ipv4},
};
use lb_userspace::{
    dataplane::{Dataplane, HARNESS_OBJECT, LoadOptions, StatsSnapshot},
    plan::{self, DesiredState},
    source::file::{BackendSpec, PortMapping, ServiceFile},
};

use self::report::{ClassResult, Report, SingleShotResult};

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
}

// ---------------------------------------------------------------------------------------------
// Address plan (198.18.0.0/15 only) and constants

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
const CLIENT_PORT: u16 = 31337;
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
const VIP_PORT: u16 = 80;
const NON_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 99);
const BACKEND_PORT: u16 = 8080;
const NODE_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
const NODE_BACKEND_SIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
const BACKENDS: u8 = 16;
/// Backend i is 198.18.2.(10 + i) with MAC 02:00:00:00:02:(0x10 + i).
fn backend_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 2, 10 + i)
}
fn backend_mac(i: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x02, 0x10 + i]
}
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 2);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 1);
const NON_VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 0x99);
const NODE6_CLIENT_SIDE: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1);
const NODE6_BACKEND_SIDE: Ipv6Addr = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 1);
/// IPv6 backend i is fd00:2::(10 + i) (hex), with the same MAC as IPv4 backend i.
fn backend_ip6(i: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 10 + u16::from(i))
}
/// Which backend `ip` is, in either family.
fn backend_index(ip: IpAddr) -> Option<u8> {
    (0..BACKENDS).find(|i| ip == IpAddr::V4(backend_ip(*i)) || ip == IpAddr::V6(backend_ip6(*i)))
}
/// Extra services of the scaling check: VIP 198.19.128.0/17 x ports 80..=83, one backend each
/// in 198.18.64.0/18 x ports 8080... (never routed: map contents only).
fn extra_vip(i: u32) -> SocketAddrV4 {
    let a = 0xc613_8000 | (i & 0x7fff); // 198.19.128.0/17
    SocketAddrV4::new(Ipv4Addr::from(a), 80 + (i >> 15) as u16)
}
fn extra_backend(i: u32) -> SocketAddrV4 {
    let a = 0xc612_4000 | (i & 0x3fff); // 198.18.64.0/18
    SocketAddrV4::new(Ipv4Addr::from(a), BACKEND_PORT + (i >> 14) as u16)
}
/// Prefilled flow j: client 198.19.0.0/17, source port 1024 + j / 2^15.
fn prefill_client(j: u32) -> SocketAddrV4 {
    let a = 0xc613_0000 | (j & 0x7fff);
    SocketAddrV4::new(Ipv4Addr::from(a), 1024 + (j >> 15) as u16)
}

const FRAME_LEN: usize = 60;
const FRAME6_LEN: usize = 80;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;
/// Selection tables applied (and timed) on top of the first scaling dataplane.
const TABLE_SAMPLE: usize = 100;
/// Maglev table size of the extra services (the smallest prime of at least 100x one backend).
const EXTRA_TABLE_SIZE: u32 = 101;

fn action_name(retval: u32) -> &'static str {
    match retval {
        0 => "ABORTED",
        1 => "DROP",
        2 => "PASS",
        3 => "TX",
        4 => "REDIRECT",
        _ => "?",
    }
}

// ---------------------------------------------------------------------------------------------
// What is measured

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    Direct,
    Harness,
    HarnessVary,
}

impl Via {
    fn label(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Harness => "harness",
            Via::HarnessVary => "harness (vary)",
        }
    }
}

/// Harness object programs.
const HARNESS: &str = "harness";
const HARNESS_VARY: &str = "harness_vary";
const HARNESS_V6: &str = "harness_v6";
const HARNESS_V6_VARY: &str = "harness_v6_vary";
const FLOOR_PASS: &str = "floor_pass";
const FLOOR_TX_ONLY: &str = "floor_tx_only";
const FLOOR_TX: &str = "floor_tx";
const FLOOR_META: &str = "floor_meta";
const FLOOR_FIB: &str = "floor_fib";
const HARNESS_PROGRAMS: [&str; 9] = [
    HARNESS,
    HARNESS_VARY,
    HARNESS_V6,
    HARNESS_V6_VARY,
    FLOOR_PASS,
    FLOOR_TX_ONLY,
    FLOOR_TX,
    FLOOR_META,
    FLOOR_FIB,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// A floor program of the harness object.
    Floor(&'static str),
    /// meshlb_xdp of dataplane `n`.
    Meshlb(usize),
}

/// What the bytes out must look like.
#[derive(Clone, Copy, Debug)]
enum Check {
    /// Exactly the input.
    Unchanged,
    /// The input with its MACs swapped `n` times (n odd: swapped).
    MacSwaps,
    /// 8 bytes of metadata, then the input.
    FloorMeta,
    /// The input with a `harness_vary` source address and port, checksums valid.
    VaryFloor,
    /// The input (to backend 0) with the MACs the FIB gives for backend 0.
    FibMacs,
    /// DNAT to one of the 16 backends, checksums valid; MACs from the FIB (redirect) or
    /// unchanged with metadata for the TC program.
    Dnat { via_tc: bool, vary: bool },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
enum Section {
    Floor,
    Meshlb,
    Ipv6,
    Scaling,
}

struct Class {
    key: String,
    label: String,
    section: Section,
    via: Via,
    target: Target,
    frame: Vec<u8>,
    retval: u32,
    check: Check,
    /// Counters that must grow by exactly the iteration count; every other by 0.
    counters: &'static [StatSlot],
    /// For the scaling section: the class this one is compared with, and what differs.
    baseline: Option<(&'static str, String)>,
    /// Measured only in the single-shot suite.
    single_shot_only: bool,
    katran: Option<(f64, &'static str)>,
}

const ESTABLISHED_REDIRECT: &[StatSlot] =
    &[StatSlot::Rx, StatSlot::NatForward, StatSlot::TxXdpRedirect];
const ESTABLISHED_TC: &[StatSlot] = &[StatSlot::Rx, StatSlot::NatForward, StatSlot::TxViaTc];
const NEW_FLOW_REDIRECT: &[StatSlot] = &[
    StatSlot::Rx,
    StatSlot::NewFlow,
    StatSlot::NatForward,
    StatSlot::TxXdpRedirect,
];
const PASS_NOT_FRONTEND: &[StatSlot] = &[StatSlot::Rx, StatSlot::PassNotFrontend];

/// One single-shot series: mean and median of the kernel-reported per-call durations, and the
/// wall-clock time of a whole call (syscall included).
#[derive(Clone, Copy, Debug)]
struct SingleShot {
    mean_ns: f64,
    median_ns: u64,
    wall_us: f64,
}

/// One measurement: kernel-reported mean ns per iteration, and wall-clock ns per iteration of
/// the whole syscall (a cross-check; includes preemption, which the kernel's timer leaves out).
#[derive(Clone, Copy, Debug)]
struct Sample {
    kernel_ns: f64,
    wall_ns: f64,
}

// ---------------------------------------------------------------------------------------------
// Kernel objects

struct Dp {
    name: String,
    dp: Dataplane,
}

struct Bench {
    harness: Ebpf,
    dps: Vec<Dp>,
    /// Test-run packets arrive on the client-side veth.
    client_if: u32,
    backend_if: u32,
    backend_if_mac: [u8; 6],
}

/// Result of one test run.
struct RunOut {
    retval: u32,
    kernel_ns: u64,
    wall: Duration,
    /// Bytes out, metadata first.
    out: Vec<u8>,
    meta_len: usize,
}

/// One BPF_PROG_TEST_RUN of `prog` on `frame`, arriving on `ingress_if`.
fn test_run(prog: &Xdp, frame: &[u8], ingress_if: u32, repeat: u32) -> Result<RunOut> {
    // xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
    let ctx: Vec<u8> = [0u32, frame.len() as u32, 0, ingress_if, 0, 0]
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .collect();
    let ctx = ctx.as_slice();
    let mut out = vec![0u8; frame.len() + 256];
    let mut ctx_out = vec![0u8; ctx.len()];
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: Some(ctx),
        ctx_out: Some(&mut ctx_out),
        repeat,
        ..TestRunOptions::default()
    };
    let start = Instant::now();
    let result = prog.test_run(opts).context("BPF_PROG_TEST_RUN")?;
    let wall = start.elapsed();
    out.truncate(result.data_size_out as usize);
    let word = |i: usize| u32::from_ne_bytes(ctx_out[i..i + 4].try_into().expect("4 bytes"));
    // xdp_md out: data and data_meta are offsets from the metadata start.
    let meta_len = word(0).saturating_sub(word(8)) as usize;
    Ok(RunOut {
        retval: result.return_value,
        kernel_ns: result.duration.as_nanos() as u64,
        wall,
        out,
        meta_len,
    })
}

impl Bench {
    fn harness_prog(&self, name: &str) -> Result<&Xdp> {
        self.harness
            .program(name)
            .ok_or_else(|| anyhow!("harness object has no program {name}"))?
            .try_into()
            .map_err(|_| anyhow!("{name} is not an XDP program"))
    }

    fn target_fd(&mut self, target: Target) -> Result<ProgramFd> {
        let fd = match target {
            Target::Floor(name) => self.harness_prog(name)?.fd()?.try_clone()?,
            Target::Meshlb(n) => self.dps[n].dp.xdp_program()?.fd()?.try_clone()?,
        };
        Ok(fd)
    }

    /// Points the harness at `target` and makes `frame` its pristine copy.
    fn arm_harness(&mut self, target: Target, frame: &[u8]) -> Result<()> {
        ensure!(
            frame.len() == FRAME_LEN || frame.len() == FRAME6_LEN,
            "harness frames are {FRAME_LEN} (IPv4) or {FRAME6_LEN} (IPv6) bytes"
        );
        let fd = self.target_fd(target)?;
        let mut targets: ProgramArray<&mut MapData> =
            ProgramArray::try_from(self.harness.map_mut("TARGET").context("map TARGET")?)?;
        targets.set(0, &fd, 0).context("setting TARGET[0]")?;
        let mut words = [0u64; 16];
        let mut padded = [0u8; 128];
        padded[..frame.len()].copy_from_slice(frame);
        for (w, chunk) in words.iter_mut().zip(padded.chunks_exact(8)) {
            *w = u64::from_ne_bytes(chunk.try_into().expect("8 bytes"));
        }
        let mut pristine: Array<&mut MapData, [u64; 16]> =
            Array::try_from(self.harness.map_mut("PRISTINE").context("map PRISTINE")?)?;
        pristine.set(0, words, 0).context("setting PRISTINE[0]")?;
        Ok(())
    }

    fn stats(&self, target: Target) -> Result<Option<StatsSnapshot>> {
        match target {
            Target::Floor(_) => Ok(None),
            Target::Meshlb(n) => Ok(Some(self.dps[n].dp.stats()?)),
        }
    }

    /// One run of `class` with `repeat` iterations, checked.
    fn run(&mut self, class: &Class, repeat: u32) -> Result<Sample> {
        if class.via != Via::Direct {
            self.arm_harness(class.target, &class.frame)?;
        }
        let before = self.stats(class.target)?;
        let ctx = self.client_if;
        let out = match (class.via, class.target) {
            (Via::Direct, Target::Floor(name)) => {
                test_run(self.harness_prog(name)?, &class.frame, ctx, repeat)?
            }
            (Via::Direct, Target::Meshlb(n)) => {
                test_run(self.dps[n].dp.xdp_program()?, &class.frame, ctx, repeat)?
            }
            (via, _) => {
                let v6 = class.frame.len() == FRAME6_LEN;
                let name = match (via, v6) {
                    (Via::HarnessVary, false) => HARNESS_VARY,
                    (Via::HarnessVary, true) => HARNESS_V6_VARY,
                    (_, false) => HARNESS,
                    (_, true) => HARNESS_V6,
                };
                test_run(self.harness_prog(name)?, &class.frame, ctx, repeat)?
            }
        };
        let after = self.stats(class.target)?;
        self.verify(
            class,
            &out,
            u64::from(repeat),
            u64::from(repeat),
            before.zip(after),
        )
        .with_context(|| {
            format!(
                "{}: run with repeat = {repeat} took an unexpected path",
                class.label
            )
        })?;
        Ok(Sample {
            kernel_ns: out.kernel_ns as f64,
            wall_ns: out.wall.as_nanos() as f64 / f64::from(repeat),
        })
    }

    fn verify(
        &self,
        class: &Class,
        out: &RunOut,
        iterations: u64,
        iterations_per_output: u64,
        stats: Option<(StatsSnapshot, StatsSnapshot)>,
    ) -> Result<()> {
        ensure!(
            out.retval == class.retval,
            "returned {} ({}), expected {} ({})",
            out.retval,
            action_name(out.retval),
            class.retval,
            action_name(class.retval)
        );
        if let Some((before, after)) = stats {
            let mut wrong = Vec::new();
            for slot in StatSlot::ALL {
                let delta = after.get(*slot) - before.get(*slot);
                let want = if class.counters.contains(slot) {
                    iterations
                } else {
                    0
                };
                if delta != want {
                    wrong.push(format!(
                        "{} moved by {delta}, expected {want}",
                        slot.label()
                    ));
                }
            }
            ensure!(wrong.is_empty(), "counters: {}", wrong.join("; "));
        }
        let meta = &out.out[..out.meta_len.min(out.out.len())];
        let packet = &out.out[meta.len()..];
        let frame = &class.frame;
        match class.check {
            Check::Unchanged => {
                ensure!(meta.is_empty(), "unexpected metadata");
                ensure!(packet == frame.as_slice(), "packet changed");
            }
            Check::MacSwaps => {
                ensure!(meta.is_empty(), "unexpected metadata");
                let swaps = if class.via == Via::Direct {
                    iterations_per_output
                } else {
                    1
                };
                let mut want = frame.clone();
                if swaps % 2 == 1 {
                    want[0..6].copy_from_slice(&frame[6..12]);
                    want[6..12].copy_from_slice(&frame[0..6]);
                }
                ensure!(packet == want.as_slice(), "MACs not swapped as expected");
            }
            Check::FloorMeta => {
                ensure!(
                    meta.len() == 8,
                    "{} bytes of metadata, expected 8",
                    meta.len()
                );
                ensure!(packet == frame.as_slice(), "packet changed");
            }
            Check::FibMacs => {
                ensure!(meta.is_empty(), "unexpected metadata");
                let mut want = frame.clone();
                want[0..6].copy_from_slice(&backend_mac(0));
                want[6..12].copy_from_slice(&self.backend_if_mac);
                ensure!(packet == want.as_slice(), "MACs are not the FIB's");
            }
            Check::VaryFloor => {
                ensure!(meta.is_empty(), "unexpected metadata");
                let (src, dst) = parse_any(packet).map_err(|e| anyhow!("packet out: {e}"))?;
                let (_, input_dst) = parse_any(frame).map_err(|e| anyhow!("packet in: {e}"))?;
                ensure!(dst == input_dst, "destination changed");
                ensure!(
                    is_vary_source(src),
                    "source {src} is not a harness_vary source"
                );
                ensure!(packet[..14] == frame[..14], "Ethernet header changed");
            }
            Check::Dnat { via_tc, vary } => {
                if via_tc {
                    ensure!(
                        meta.len() == 8,
                        "{} bytes of metadata, expected 8",
                        meta.len()
                    );
                    let word = |i: usize| u32::from_ne_bytes(meta[i..i + 4].try_into().unwrap());
                    ensure!(
                        (word(0), word(4)) == (XDP_META_MAGIC, self.backend_if),
                        "metadata {meta:02x?} does not name the backend-side interface"
                    );
                } else {
                    ensure!(meta.is_empty(), "unexpected metadata");
                }
                let (src, dst) = parse_any(packet).map_err(|e| anyhow!("packet out: {e}"))?;
                let (input_src, _) = parse_any(frame).map_err(|e| anyhow!("packet in: {e}"))?;
                let b = backend_index(dst.ip())
                    .ok_or_else(|| anyhow!("destination {dst} is not a backend"))?;
                ensure!(dst.port() == BACKEND_PORT, "backend port {dst}");
                if vary {
                    ensure!(
                        is_vary_source(src),
                        "source {src} is not a harness_vary source"
                    );
                } else {
                    ensure!(src == input_src, "source {src} changed");
                }
                let (dst_mac, src_mac) = if via_tc {
                    (NODE_MAC, CLIENT_MAC)
                } else {
                    (backend_mac(b), self.backend_if_mac)
                };
                ensure!(
                    packet[0..6] == dst_mac && packet[6..12] == src_mac,
                    "MACs {:02x?} -> {:02x?}, expected {src_mac:02x?} -> {dst_mac:02x?}",
                    &packet[6..12],
                    &packet[0..6]
                );
            }
        }
        Ok(())
    }

    /// Single-shot: `calls` runs with repeat = 1.
    fn single_shot(&mut self, class: &Class, calls: u32) -> Result<SingleShot> {
        ensure!(class.via == Via::Direct, "single-shot runs are direct");
        let before = self.stats(class.target)?;
        let ctx = self.client_if;
        let mut durations = Vec::with_capacity(calls as usize);
        let start = Instant::now();
        let mut last = None;
        for _ in 0..calls {
            let out = match class.target {
                Target::Floor(name) => test_run(self.harness_prog(name)?, &class.frame, ctx, 1)?,
                Target::Meshlb(n) => test_run(self.dps[n].dp.xdp_program()?, &class.frame, ctx, 1)?,
            };
            ensure!(
                out.retval == class.retval,
                "{}: single-shot call returned {}",
                class.label,
                action_name(out.retval)
            );
            durations.push(out.kernel_ns);
            last = Some(out);
        }
        let wall = start.elapsed();
        let after = self.stats(class.target)?;
        let last = last.context("no calls")?;
        // Every call starts from the input, so the last output is what one call makes.
        self.verify(class, &last, u64::from(calls), 1, before.zip(after))
            .with_context(|| format!("{}: single-shot", class.label))?;
        let mean = durations.iter().sum::<u64>() as f64 / durations.len() as f64;
        let mid = durations.len() / 2;
        let median = *durations.select_nth_unstable(mid).1;
        Ok(SingleShot {
            mean_ns: mean,
            median_ns: median,
            wall_us: wall.as_secs_f64() * 1e6 / f64::from(calls),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Set-up

fn mac_str(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The node namespace: a client-side and a backend-side veth, addresses, static neighbours for
/// the client and the 16 backends, IPv4 forwarding on.
fn node_namespace() -> Result<Netns> {
    let ns = Netns::new("bench-micro")?;
    ns.set_sysctls(&[
        ("net.ipv6.conf.all.accept_dad", "0"),
        ("net.ipv6.conf.default.accept_dad", "0"),
    ])?;
    let mut lines = vec![
        "link add lbc type veth peer name lbc-peer".to_owned(),
        "link add lbb type veth peer name lbb-peer".to_owned(),
        "link set lo up".to_owned(),
        "link set lbc up".to_owned(),
        "link set lbc-peer up".to_owned(),
        "link set lbb up".to_owned(),
        "link set lbb-peer up".to_owned(),
        format!("addr add {NODE_CLIENT_SIDE}/24 dev lbc"),
        format!("addr add {NODE_BACKEND_SIDE}/24 dev lbb"),
        format!("addr add {NODE6_CLIENT_SIDE}/64 dev lbc nodad"),
        format!("addr add {NODE6_BACKEND_SIDE}/64 dev lbb nodad"),
        format!(
            "neigh add {CLIENT} lladdr {} dev lbc nud permanent",
            mac_str(&CLIENT_MAC)
        ),
        format!(
            "neigh add {CLIENT6} lladdr {} dev lbc nud permanent",
            mac_str(&CLIENT_MAC)
        ),
    ];
    for i in 0..BACKENDS {
        for ip in [IpAddr::V4(backend_ip(i)), IpAddr::V6(backend_ip6(i))] {
            lines.push(format!(
                "neigh add {ip} lladdr {} dev lbb nud permanent",
                mac_str(&backend_mac(i))
            ));
        }
    }
    ns.ip_batch(&lines).context("node namespace topology")?;
    ns.set_sysctls(&[
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv6.conf.all.forwarding", "1"),
    ])?;
    Ok(ns)
}

/// The MAC address of `interface` in `ns` (sysfs shows the mounting namespace, so ask `ip`).
fn read_mac(ns: &Netns, interface: &str) -> Result<[u8; 6]> {
    let text = ns.ip(&["-o", "link", "show", interface])?;
    let field = text
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .ok_or_else(|| anyhow!("no MAC in {text}"))?;
    let bytes = field
        .split(':')
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<Result<Vec<u8>, _>>()?;
    bytes.try_into().map_err(|_| anyhow!("bad MAC {field}"))
}

/// What the vary harness makes of the clients 198.18.1.2 and fd00:1::2: 198.18.128.0/17 and
/// fd00:1::8000/113, source port 1024 and up.
fn is_vary_source(src: SocketAddr) -> bool {
    let addr_ok = match src.ip() {
        IpAddr::V4(ip) => {
            let o = ip.octets();
            o[0] == 198 && o[1] == 18 && o[2] >= 128
        }
        IpAddr::V6(ip) => {
            let s = ip.segments();
            s[..7] == CLIENT6.segments()[..7] && s[7] >= 0x8000
        }
    };
    addr_ok && src.port() >= 1024
}

/// Source and destination of an IPv4 or IPv6 TCP/UDP frame whose checksums verify.
fn parse_any(frame: &[u8]) -> Result<(SocketAddr, SocketAddr), String> {
    if frame.get(12..14) == Some(&[0x86, 0xdd]) {
        let (src, dst) = ipv6::parse_tcp(frame)?;
        Ok((src.into(), dst.into()))
    } else {
        let parsed = parse_ipv4(frame)?;
        Ok((parsed.src.into(), parsed.dst.into()))
    }
}

fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: cpu_set_t is plain old data; CPU_SET writes inside it; sched_setaffinity(0, ...)
    // changes the calling thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error()).context(format!("pinning to CPU {cpu}"));
        }
    }
    Ok(())
}

fn service_text(round_robin: bool, v6: bool) -> String {
    let backends: Vec<String> = (0..BACKENDS)
        .map(|i| {
            if v6 {
                format!("\"{}\"", backend_ip6(i))
            } else {
                format!("\"{}\"", backend_ip(i))
            }
        })
        .collect();
    let vip = if v6 {
        IpAddr::V6(VIP6)
    } else {
        IpAddr::V4(VIP)
    };
    format!(
        "services:\n  web:\n    vip: \"{vip}\"\n    ports: [\"{VIP_PORT}:{BACKEND_PORT}/tcp\"]\n{}    backends: [{}]\n",
        if round_robin {
            "    scheduler: round-robin\n"
        } else {
            ""
        },
        backends.join(", ")
    )
}

/// The measured service ("web": one VIP, 16 backends, default Maglev table size, or
/// round-robin), plus `extra` services with one backend each for the scaling check.
fn services(round_robin: bool, v6: bool, extra: u32) -> Result<ServiceFile> {
    let mut file = ServiceFile::parse(&service_text(round_robin, v6), Path::new("micro.yaml"))
        .map_err(|e| anyhow!("{e}"))?;
    let web = file.services["web"].clone();
    for i in 0..extra {
        let vip = extra_vip(i);
        let backend = extra_backend(i);
        let mut spec = web.clone();
        spec.name = format!("x{i:06}");
        spec.vip = Some(IpAddr::V4(*vip.ip()));
        spec.ports = vec![PortMapping {
            frontend: vip.port(),
            backend: BACKEND_PORT,
            protocol: web.ports[0].protocol,
        }];
        spec.maglev_table_size = EXTRA_TABLE_SIZE;
        spec.backends = vec![BackendSpec {
            address: IpAddr::V4(*backend.ip()),
            port: Some(backend.port()),
            weight: 1,
            mesh: None,
        }];
        file.services.insert(spec.name.clone(), spec);
    }
    Ok(file)
}

struct DpSpec {
    name: String,
    round_robin: bool,
    v6: bool,
    extra_services: u32,
    redirect: bool,
}

/// How long `Dataplane::apply` took per service selection table, over `tables` tables.
#[derive(Clone, Copy, Debug, serde::Serialize)]
struct TableCost {
    tables: usize,
    ms_per_table: f64,
}

/// Loads a dataplane with `spec`'s services applied. The selection tables of the extra
/// services are left out (neither path of the scaling check reads them, and each costs the
/// kernel an RCU grace period, see `TableCost`): `sample_tables` of them are applied
/// afterwards, timed.
fn load_dataplane(
    spec: &DpSpec,
    conntrack_entries: u32,
    backend_if: u32,
    sample_tables: usize,
) -> Result<(Dp, Option<TableCost>)> {
    let started = Instant::now();
    let file = services(spec.round_robin, spec.v6, spec.extra_services)?;
    let node_addrs = [
        IpAddr::V4(NODE_CLIENT_SIDE),
        IpAddr::V4(NODE_BACKEND_SIDE),
        IpAddr::V6(NODE6_CLIENT_SIDE),
        IpAddr::V6(NODE6_BACKEND_SIDE),
    ];
    let desired: DesiredState = plan::plan(&file, &node_addrs)?;
    let web = desired
        .services
        .iter()
        .find(|s| s.name == "web")
        .context("web planned")?;
    ensure!(web.id == 0 && web.backends.len() == usize::from(BACKENDS));
    let mut dp = Dataplane::load(LoadOptions {
        conntrack_entries,
        ..LoadOptions::default()
    })?;
    let mut cost = None;
    if spec.extra_services == 0 {
        dp.apply(None, &desired)?;
    } else {
        let mut partial = desired.clone();
        partial.tables.retain(|id, _| *id == 0);
        dp.apply(None, &partial)?;
        let mut sampled = partial.clone();
        sampled.tables.extend(
            desired
                .tables
                .iter()
                .filter(|(id, _)| **id != 0)
                .take(sample_tables)
                .map(|(id, t)| (*id, t.clone())),
        );
        let tables = sampled.tables.len() - 1;
        if tables > 0 {
            let t = Instant::now();
            dp.apply(Some(&partial), &sampled)?;
            cost = Some(TableCost {
                tables,
                ms_per_table: t.elapsed().as_secs_f64() * 1e3 / tables as f64,
            });
        }
    }
    if spec.redirect {
        dp.allow_xdp_redirect(backend_if)?;
    }
    println!(
        "micro: dataplane {:<28} {:>7} services{}, {} conntrack entries, egress by {} ({:.1} s)",
        spec.name,
        desired.services.len(),
        cost.map_or(String::new(), |c| format!(
            " (selection tables: 1 + {} sampled, {:.1} ms each)",
            c.tables, c.ms_per_table
        )),
        conntrack_entries,
        if spec.redirect {
            "XDP_REDIRECT (TX_PORTS)"
        } else {
            "TC hand-off"
        },
        started.elapsed().as_secs_f64()
    );
    Ok((
        Dp {
            name: spec.name.clone(),
            dp,
        },
        cost,
    ))
}

/// The CONNTRACK map of a loaded dataplane, found through its XDP program's map ids.
fn conntrack_map(dp: &mut Dataplane) -> Result<HashMap<MapData, FlowKey, Flow>> {
    let ids = dp
        .xdp_program()?
        .info()?
        .map_ids()?
        .context("the kernel does not list program map ids")?;
    for id in ids {
        let map = MapData::from_id(id)?;
        if map.info()?.name_as_str() == Some(names::CONNTRACK) {
            return Ok(HashMap::try_from(Map::from_map_data(map)?)?);
        }
    }
    bail!("no {} map among the program's maps", names::CONNTRACK)
}

fn monotonic_ns() -> u64 {
    // SAFETY: timespec is plain old data; clock_gettime fills it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer; CLOCK_MONOTONIC is bpf_ktime_get_ns's clock.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Inserts `flows` established flows (forward and reply entry each, as the program would)
/// into the dataplane's connection table from userspace, spread over the 16 backends. Only
/// the program marks its reply filter (REPLY_FILTER), so replies on these flows would pass
/// untranslated: the scaling check sends client packets only.
fn prefill(dp: &mut Dp, flows: u32) -> Result<u64> {
    let started = Instant::now();
    let mut ct = conntrack_map(&mut dp.dp)?;
    let now = monotonic_ns();
    let vip = lb_common::Addr::from(IpAddr::V4(VIP));
    for j in 0..flows {
        let client = prefill_client(j);
        let b = (j % u32::from(BACKENDS)) as u8;
        let backend = lb_common::Addr::from(IpAddr::V4(backend_ip(b)));
        let client_addr = lb_common::Addr::from(IpAddr::V4(*client.ip()));
        let flow = |nat_addr, nat_port: u16, kind, state| Flow {
            nat_addr,
            nat_port_be: nat_port.to_be(),
            kind,
            tcp_state: state,
            backend_id: u32::from(b) + 1,
            service_id: 0,
            timeout_s: lb_common::limits::DEFAULT_TCP_TIMEOUT_S,
            last_seen_ns: now,
            ..Flow::default()
        };
        let reply_key = FlowKey {
            src: backend,
            dst: client_addr,
            sport_be: BACKEND_PORT.to_be(),
            dport_be: client.port().to_be(),
            proto: proto::TCP,
            ..FlowKey::default()
        };
        ct.insert(
            reply_key,
            flow(vip, VIP_PORT, flow_kind::REPLY, tcp_state::NONE),
            0,
        )?;
        let key = FlowKey {
            src: client_addr,
            dst: vip,
            sport_be: client.port().to_be(),
            dport_be: VIP_PORT.to_be(),
            proto: proto::TCP,
            ..FlowKey::default()
        };
        ct.insert(
            key,
            flow(
                backend,
                BACKEND_PORT,
                flow_kind::FORWARD,
                tcp_state::ESTABLISHED,
            ),
            0,
        )?;
    }
    let entries = ct.keys().count() as u64;
    println!(
        "micro: dataplane {:<28} prefilled {flows} flows from userspace: {entries} entries tracked ({:.1} s)",
        dp.name,
        started.elapsed().as_secs_f64()
    );
    Ok(entries)
}

// ---------------------------------------------------------------------------------------------
// The run

/// Size of the loaded meshlb_xdp program, as the kernel reports it (katran-perf.md §2 gives
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
    let outcome = ns.run(|| measure(args, backend_if_mac, machine.cpus))??;
    drop(ns);
    let report = Report::new(args, machine, load_before, machine::load_average(), outcome);
    let markdown = report.markdown();
    println!();
    print!("{markdown}");
    if !args.no_write {
        std::fs::create_dir_all(&args.out_dir)
            .with_context(|| format!("creating {}", args.out_dir.display()))?;
        let md = args.out_dir.join(format!("micro-{}.md", report.date));
        let json = args.out_dir.join(format!("micro-{}.json", report.date));
        std::fs::write(&md, &markdown).with_context(|| format!("writing {}", md.display()))?;
        std::fs::write(&json, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", json.display()))?;
        println!("micro: wrote {} and {}", md.display(), json.display());
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
    /// Scaling dataplanes and what differs from `main`.
    scaled: Vec<(usize, String)>,
}

/// Everything that touches the kernel, on a thread inside the node namespace.
fn measure(args: &MicroArgs, backend_if_mac: [u8; 6], cpus: usize) -> Result<Outcome> {
    let started = Instant::now();
    let (cpu, cpu_note) = match args.cpu {
        Some(cpu) => (cpu, None),
        None if cpus >= 2 => (1, None),
        None => (
            0,
            Some("only one CPU: pinned to CPU 0 (katran-perf.md used CPU 1)".to_owned()),
        ),
    };
    if let Some(note) = &cpu_note {
        println!("micro: {note}");
    }
    pin_to_cpu(cpu)?;
    let client_if = lb_userspace::dataplane::ifindex("lbc")?;
    let backend_if = lb_userspace::dataplane::ifindex("lbb")?;
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

    // Dataplanes. The new-flow classes fill their connection tables, so they get their own;
    // the hit-path classes always see a table holding only the measured flow (apart from the
    // prefill check).
    let dp = |name: String, round_robin, v6, extra_services, redirect| DpSpec {
        name,
        round_robin,
        v6,
        extra_services,
        redirect,
    };
    let mut specs = vec![
        dp("main (Maglev)".into(), false, false, 0, true),
        dp("tc (Maglev, no TX_PORTS)".into(), false, false, 0, false),
        dp("new-flows (Maglev)".into(), false, false, 0, true),
        dp("rr (round-robin)".into(), true, false, 0, true),
        dp("main6 (Maglev, IPv6)".into(), false, true, 0, true),
        dp("new-flows6 (Maglev, IPv6)".into(), false, true, 0, true),
    ];
    let mut layout = Layout {
        main: 0,
        tc: 1,
        new: 2,
        rr: 3,
        main6: 4,
        new6: 5,
        scaled: Vec::new(),
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
    let prefilled_entries = match flows_dp {
        Some(n) => Some(prefill(&mut dps[n], args.prefill_flows)?),
        None => None,
    };
    let mut bench = Bench {
        harness,
        dps,
        client_if,
        backend_if,
        backend_if_mac,
    };

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

    // Open the measured flow (SYN, then its first ACK) on every dataplane with hit classes.
    let mut established = vec![layout.main, layout.tc, layout.main6];
    established.extend(layout.scaled.iter().map(|(n, _)| *n));
    for n in established {
        let ctx = bench.client_if;
        let (syn, ack) = if n == layout.main6 {
            (&v6.syn, &v6.ack)
        } else {
            (&syn, &ack)
        };
        let prog = bench.dps[n].dp.xdp_program()?;
        let opened = test_run(prog, syn, ctx, 1)?;
        let first_ack = test_run(prog, ack, ctx, 1)?;
        let want = if n == layout.tc {
            XDP_PASS
        } else {
            XDP_REDIRECT
        };
        let name = &bench.dps[n].name;
        ensure!(
            opened.retval == want && first_ack.retval == want,
            "opening the measured flow on {name} returned {} / {}",
            action_name(opened.retval),
            action_name(first_ack.retval)
        );
        let new_flows = bench.dps[n].dp.stats()?.get(StatSlot::NewFlow);
        ensure!(
            new_flows == 1,
            "{name}: opening the measured flow made {new_flows} new flows"
        );
    }

    let to_backend = Ipv4Frame::tcp(
        client,
        SocketAddrV4::new(backend_ip(0), BACKEND_PORT),
        TCP_ACK,
    )
    .build();
    let mut classes = classes(&ack, &syn, &non_vip, &to_backend, &v6, &layout);
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

    // Check pass: every class once at a small repeat, so a wrong path fails in seconds.
    let check_repeat = args.repeat.clamp(1, 100_000);
    println!("micro: check pass (repeat = {check_repeat}): every class once, every path verified");
    let mut estimate_s = 0.0;
    for class in classes.iter().filter(|c| !c.single_shot_only) {
        let s = bench.run(class, check_repeat)?;
        estimate_s += s.wall_ns * 1e-9 * f64::from(args.repeat) * args.rounds as f64;
    }
    // Fill the tables of the new-flow classes, so they are measured at steady state where
    // every insert evicts (katran-perf.md §4.3 ran a warm-up for the same reason).
    let fill_iterations = (u64::from(args.conntrack_entries) / 2 * 21 / 20) as u32;
    for class in classes
        .iter()
        .filter(|c| c.via == Via::HarnessVary && matches!(c.target, Target::Meshlb(_)))
    {
        println!(
            "micro: filling the connection table for {:?} ({fill_iterations} new flows)",
            class.key
        );
        bench.run(class, fill_iterations)?;
    }
    let single_shot_classes: Vec<&Class> = if args.single_shot_calls > 0 {
        [
            "floor-pass-direct",
            "floor-tx-direct",
            "pass-through-direct",
            "established-direct",
        ]
        .iter()
        .filter_map(|k| classes.iter().find(|c| c.key == *k))
        .collect()
    } else {
        Vec::new()
    };
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
        .map(|(c, runs)| SingleShotResult::new(c, &runs))
        .collect();
    let classes = measured
        .iter()
        .map(|&i| ClassResult::new(&classes[i], &samples[i]))
        .collect();
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

/// Every class, in the order of a round.
/// The IPv6 frames (80 bytes).
struct Frames6 {
    ack: Vec<u8>,
    syn: Vec<u8>,
    non_vip: Vec<u8>,
}

fn classes(
    ack: &[u8],
    syn: &[u8],
    non_vip: &[u8],
    to_backend: &[u8],
    v6: &Frames6,
    layout: &Layout,
) -> Vec<Class> {
    let class = |key: &str, label: &str, section, via, target, frame: &[u8], retval, check| Class {
        key: key.to_owned(),
        label: label.to_owned(),
        section,
        via,
        target,
        frame: frame.to_vec(),
        retval,
        check,
        counters: &[],
        baseline: None,
        single_shot_only: false,
        katran: None,
    };
    let floor = |key, label, via, name, retval, check, katran: (f64, &'static str)| Class {
        katran: Some(katran),
        ..class(
            key,
            label,
            Section::Floor,
            via,
            Target::Floor(name),
            ack,
            retval,
            check,
        )
    };
    let redirect = Check::Dnat {
        via_tc: false,
        vary: false,
    };
    let new_flow = Check::Dnat {
        via_tc: false,
        vary: true,
    };
    let katran_new_flow = (
        938.0,
        "harness (vary) -> VIP SYN, new flow every packet (noflood build, 4M-entry LRU full)",
    );
    let mut list = vec![
        floor(
            "floor-pass-direct",
            "Floor: XDP_PASS only",
            Via::Direct,
            FLOOR_PASS,
            XDP_PASS,
            Check::Unchanged,
            (21.0, "direct: XDP_PASS floor"),
        ),
        floor(
            "floor-tx-direct",
            "Floor: parse eth/IPv4/TCP, swap MACs, XDP_TX",
            Via::Direct,
            FLOOR_TX,
            XDP_TX,
            Check::MacSwaps,
            (25.0, "direct: parse + MAC swap + XDP_TX floor"),
        ),
        Class {
            katran: None,
            frame: to_backend.to_vec(),
            ..floor(
                "floor-fib-direct",
                "Floor: parse, bpf_fib_lookup (to a backend), set MACs, XDP_TX",
                Via::Direct,
                FLOOR_FIB,
                XDP_TX,
                Check::FibMacs,
                (0.0, ""),
            )
        },
        floor(
            "harness-floor",
            "Harness floor: restore + tail call, target returns XDP_TX",
            Via::Harness,
            FLOOR_TX_ONLY,
            XDP_TX,
            Check::Unchanged,
            (34.0, "harness -> XDP_TX-only target"),
        ),
        floor(
            "harness-pass",
            "Harness -> XDP_PASS floor",
            Via::Harness,
            FLOOR_PASS,
            XDP_PASS,
            Check::Unchanged,
            (34.0, "harness -> XDP_PASS floor"),
        ),
        floor(
            "harness-tx",
            "Harness -> parse/MAC-swap/TX floor",
            Via::Harness,
            FLOOR_TX,
            XDP_TX,
            Check::MacSwaps,
            (38.0, "harness -> parse/MAC-swap/TX floor"),
        ),
        Class {
            katran: None,
            ..floor(
                "harness-meta",
                "Harness -> 8 B metadata + XDP_PASS (TC hand-off floor)",
                Via::Harness,
                FLOOR_META,
                XDP_PASS,
                Check::FloorMeta,
                (0.0, ""),
            )
        },
        floor(
            "harness-vary-floor",
            "Harness floor, vary mode (new source every packet)",
            Via::HarnessVary,
            FLOOR_TX_ONLY,
            XDP_TX,
            Check::VaryFloor,
            (34.0, "harness (vary) -> XDP_TX-only target"),
        ),
    ];
    let meshlb = |key: &str,
                  label: &str,
                  via,
                  dp: usize,
                  frame: &[u8],
                  retval,
                  check,
                  counters: &'static [StatSlot],
                  katran: Option<(f64, &'static str)>| Class {
        counters,
        katran,
        ..class(
            key,
            label,
            Section::Meshlb,
            via,
            Target::Meshlb(dp),
            frame,
            retval,
            check,
        )
    };
    list.extend([
        meshlb(
            "established",
            "meshlb: VIP, established flow (conntrack hit) -> XDP_REDIRECT",
            Via::Harness,
            layout.main,
            ack,
            XDP_REDIRECT,
            redirect,
            ESTABLISHED_REDIRECT,
            Some((
                141.0,
                "harness -> VIP ACK, same flow (LRU hit; IPIP encap, XDP_TX)",
            )),
        ),
        meshlb(
            "established-tc",
            "meshlb: VIP, established flow -> TC hand-off (PASS + 8 B metadata)",
            Via::Harness,
            layout.tc,
            ack,
            XDP_PASS,
            Check::Dnat {
                via_tc: true,
                vary: false,
            },
            ESTABLISHED_TC,
            Some((
                141.0,
                "harness -> VIP ACK, same flow (LRU hit; IPIP encap, XDP_TX)",
            )),
        ),
        meshlb(
            "new-flow",
            "meshlb: VIP, SYN of a new flow every packet (Maglev, table full)",
            Via::HarnessVary,
            layout.new,
            syn,
            XDP_REDIRECT,
            new_flow,
            NEW_FLOW_REDIRECT,
            Some(katran_new_flow),
        ),
        meshlb(
            "new-flow-rr",
            "meshlb: VIP, SYN of a new flow every packet (round-robin, table full)",
            Via::HarnessVary,
            layout.rr,
            syn,
            XDP_REDIRECT,
            new_flow,
            NEW_FLOW_REDIRECT,
            Some(katran_new_flow),
        ),
        meshlb(
            "pass-through-direct",
            "meshlb: non-VIP destination -> XDP_PASS",
            Via::Direct,
            layout.main,
            non_vip,
            XDP_PASS,
            Check::Unchanged,
            PASS_NOT_FRONTEND,
            Some((69.0, "direct: non-VIP")),
        ),
        meshlb(
            "pass-through-harness",
            "meshlb: non-VIP destination -> XDP_PASS",
            Via::Harness,
            layout.main,
            non_vip,
            XDP_PASS,
            Check::Unchanged,
            PASS_NOT_FRONTEND,
            Some((79.0, "harness -> non-VIP")),
        ),
        // Single-shot only: each call starts from the input, so a direct run is valid.
        Class {
            single_shot_only: true,
            ..meshlb(
                "established-direct",
                "meshlb: VIP, established flow -> XDP_REDIRECT",
                Via::Direct,
                layout.main,
                ack,
                XDP_REDIRECT,
                redirect,
                ESTABLISHED_REDIRECT,
                None,
            )
        },
    ]);
    list.extend([
        Class {
            frame: v6.ack.clone(),
            section: Section::Ipv6,
            katran: None,
            ..floor(
                "harness-floor-v6",
                "IPv6: harness floor (80-byte frame), target returns XDP_TX",
                Via::Harness,
                FLOOR_TX_ONLY,
                XDP_TX,
                Check::Unchanged,
                (0.0, ""),
            )
        },
        Class {
            section: Section::Ipv6,
            ..meshlb(
                "established-v6",
                "IPv6: VIP, established flow (conntrack hit) -> XDP_REDIRECT",
                Via::Harness,
                layout.main6,
                &v6.ack,
                XDP_REDIRECT,
                redirect,
                ESTABLISHED_REDIRECT,
                None,
            )
        },
        Class {
            section: Section::Ipv6,
            ..meshlb(
                "new-flow-v6",
                "IPv6: VIP, SYN of a new flow every packet (Maglev, table full)",
                Via::HarnessVary,
                layout.new6,
                &v6.syn,
                XDP_REDIRECT,
                new_flow,
                NEW_FLOW_REDIRECT,
                None,
            )
        },
        Class {
            section: Section::Ipv6,
            ..meshlb(
                "pass-through-v6-direct",
                "IPv6: non-VIP destination -> XDP_PASS",
                Via::Direct,
                layout.main6,
                &v6.non_vip,
                XDP_PASS,
                Check::Unchanged,
                PASS_NOT_FRONTEND,
                None,
            )
        },
    ]);
    for (dp, what) in &layout.scaled {
        list.push(Class {
            section: Section::Scaling,
            baseline: Some(("established", what.clone())),
            ..meshlb(
                &format!("established@{what}"),
                &format!("scaling: established flow -> XDP_REDIRECT, {what}"),
                Via::Harness,
                *dp,
                ack,
                XDP_REDIRECT,
                redirect,
                ESTABLISHED_REDIRECT,
                None,
            )
        });
        list.push(Class {
            section: Section::Scaling,
            baseline: Some(("pass-through-direct", what.clone())),
            ..meshlb(
                &format!("pass-through-direct@{what}"),
                &format!("scaling: non-VIP destination -> XDP_PASS, {what}"),
                Via::Direct,
                *dp,
                non_vip,
                XDP_PASS,
                Check::Unchanged,
                PASS_NOT_FRONTEND,
                None,
            )
        });
    }
    list
}
