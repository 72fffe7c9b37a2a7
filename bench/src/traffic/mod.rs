//! `lb-bench gen`: a traffic generator on `BPF_PROG_TEST_RUN` with XDP live frames, a sink
//! that counts what arrives per destination with XDP counters, and the node in between
//! (meshlb, nftables DNAT, plain kernel forwarding, or the redirect-only ceiling).
//!
//! The kernel side is lb-ebpf's `src/sink.rs` (object `bench-traffic`): `generator` writes
//! every header of every frame from a template (live frames recycle their pages, and a page
//! comes back with whatever the node wrote into it), `sink` counts and drops, `ceiling`
//! redirects without any balancing work. Generator, node and sink run on one CPU: the test
//! run's thread is pinned, and the node's and sink's veth NAPI runs where the frames were sent.

pub mod cpu_time;
#[cfg(test)]
mod kernel_tests;
pub mod node;
pub mod pacer;
pub mod template;
pub mod topo;
pub mod tracked_floor;

use std::{
    collections::{BTreeMap, HashMap},
    io::Write as _,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::objects::TRAFFIC_OBJECT;
use anyhow::{Context as _, Result, anyhow, bail, ensure};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, xdp::DevMap},
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp, XdpMode, xdp::XdpLinkId},
};
use lb_common::traffic::{SINK_SLOT_COUNT, SinkSlot};
use lb_testkit::Netns;

use self::{
    node::{Node, NodeConfig, Through},
    pacer::{Pacer, Step},
    template::{FlowSet, GenConfig, Kind},
    topo::PpsTopology,
};

/// Hard bounds of one run, whatever the arguments say.
pub const MAX_DURATION: Duration = Duration::from_secs(600);
pub const MAX_PACKETS: u64 = 10_000_000_000;
/// Packets per BPF_PROG_TEST_RUN call at most (a call takes tens of ms at this size).
const MAX_CHUNK: u32 = 1 << 16;

#[derive(clap::Args, Debug, Clone)]
pub struct GenArgs {
    /// What forwards between generator and sink.
    #[arg(long, value_enum, default_value_t = Through::Meshlb)]
    pub through: Through,
    /// The lbd binary (for --through meshlb).
    #[arg(long, default_value = "target/release/lbd")]
    pub lbd: PathBuf,
    /// Packet kind.
    #[arg(long, value_enum, default_value_t = Kind::Udp)]
    pub kind: Kind,
    /// IPv6 instead of IPv4.
    #[arg(long)]
    pub v6: bool,
    /// Distinct flows (source address and port pairs).
    #[arg(long, default_value_t = 1024)]
    pub flows: u32,
    /// Frame size in bytes, without FCS (at least 60 for IPv4, 64/80 for IPv6 UDP/TCP).
    #[arg(long, default_value_t = 60)]
    pub size: usize,
    /// Packets per second at most (default: as fast as the CPU goes).
    #[arg(long)]
    pub rate: Option<u64>,
    /// Packets to send at most.
    #[arg(long)]
    pub count: Option<u64>,
    /// Seconds to send at most.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Backends of the service (meshlb, nftables).
    #[arg(long, default_value_t = 16)]
    pub backends: usize,
    /// Scheduler of the meshlb service.
    #[arg(long, default_value = "maglev")]
    pub scheduler: String,
    /// CPU to pin the generator to (the node and the sink follow it); default 1, or 0 on a
    /// single-CPU machine.
    #[arg(long)]
    pub cpu: Option<usize>,
    /// Live-frame batch size of the kernel (1..=256).
    #[arg(long, default_value_t = 64)]
    pub batch: u32,
    /// meshlb's connection-table capacity (entries; a flow takes two) [default: the test
    /// harness's 65536].
    #[arg(long)]
    pub conntrack_entries: Option<u32>,
}

/// Sent, delivered and where it went.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunSummary {
    pub sent: u64,
    pub delivered: u64,
    pub seconds: f64,
    /// Delivered packets per destination address.
    pub per_destination: BTreeMap<IpAddr, u64>,
    /// Frames the sink saw that were not IPv4/IPv6.
    pub other: u64,
    /// The veths' drop and error counters that grew during the run (see
    /// [`PpsTopology::veth_drop_counters`]): where lost frames went.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub veth_drops: BTreeMap<String, u64>,
    /// How busy the CPU of generator, node and sink was while the generator sent (share of
    /// its ticks, see [`cpu_time`]): near 1 when the rate is what the three cost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_busy: Option<f64>,
}

impl RunSummary {
    pub fn sent_pps(&self) -> f64 {
        self.sent as f64 / self.seconds
    }
    pub fn delivered_pps(&self) -> f64 {
        self.delivered as f64 / self.seconds
    }
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.delivered)
    }
}

/// Bounds of a run.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub count: Option<u64>,
    pub duration: Duration,
    pub rate: Option<u64>,
    pub batch: u32,
}

/// The loaded traffic programs and their maps.
pub struct Traffic {
    ebpf: Ebpf,
    ceiling_link: Option<XdpLinkId>,
}

fn xdp<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a Xdp> {
    ebpf.program(name)
        .ok_or_else(|| anyhow!("traffic object has no program {name}"))?
        .try_into()
        .map_err(|_| anyhow!("{name} is not an XDP program"))
}

/// Where `ceiling` and `tracked_floor` send frames: out `out_ifindex` (in `ns`, else the
/// calling thread's namespace), with MACs `dst` and `src`.
fn set_redirect(
    ebpf: &mut Ebpf,
    ns: Option<&Netns>,
    out_ifindex: u32,
    dst: [u8; 6],
    src: [u8; 6],
) -> Result<()> {
    let mut bytes = [0u8; 12];
    bytes[..6].copy_from_slice(&dst);
    bytes[6..].copy_from_slice(&src);
    let word = |i: usize| u32::from_ne_bytes(bytes[i * 4..i * 4 + 4].try_into().expect("4"));
    let macs = [word(0), word(1), word(2)];
    let mut config: Array<&mut MapData, [u32; 3]> =
        Array::try_from(ebpf.map_mut("CEILING_CONFIG").context("CEILING_CONFIG")?)?;
    config.set(0, macs, 0)?;
    let mut port: DevMap<&mut MapData> =
        DevMap::try_from(ebpf.map_mut("CEILING_PORT").context("CEILING_PORT")?)?;
    // The kernel resolves a device map's ifindex in the namespace of the thread that writes
    // it.
    match ns {
        Some(ns) => ns.run(|| port.set(0, out_ifindex, None, 0))?,
        None => port.set(0, out_ifindex, None, 0),
    }
    .context("setting CEILING_PORT[0]")?;
    Ok(())
}

fn xdp_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("traffic object has no program {name}"))?
        .try_into()
        .map_err(|_| anyhow!("{name} is not an XDP program"))
}

impl Traffic {
    /// Loads the generator, sink and ceiling programs; attaches nothing.
    pub fn load() -> Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .load(TRAFFIC_OBJECT)
            .context("loading the bench-traffic object (root? bpffs?)")?;
        for name in ["generator", "sink", "ceiling"] {
            xdp_mut(&mut ebpf, name)?
                .load()
                .with_context(|| format!("verifying {name}"))?;
        }
        Ok(Self {
            ebpf,
            ceiling_link: None,
        })
    }

    /// Attaches the sink (native XDP) to the sink's veth, and the generator to the idle
    /// `GEN_HOLD_IF` of the generator's namespace.
    ///
    /// Why the generator: `BPF_PROG_TEST_RUN` of an XDP program adds it to the kernel's XDP
    /// dispatcher for the run and takes it out after, and each change waits for an RCU grace
    /// period, milliseconds. Twice per call of 65,536 frames, that left the generator's CPU
    /// idle about half the time: the redirect-only ceiling measured 1.5–1.6 Mpps, with the
    /// CPU 57 % idle, where it is 3.7–4.0 Mpps without the waits. A program that is attached
    /// somewhere stays in the dispatcher, so the test runs change nothing and wait for nothing.
    pub fn attach(&mut self, topo: &PpsTopology) -> Result<()> {
        let sink = xdp_mut(&mut self.ebpf, "sink")?;
        topo.sink
            .run(|| sink.attach(topo::SINK_IF, XdpMode::Driver))?
            .context("attaching the sink to the sink's veth")?;
        let generator = xdp_mut(&mut self.ebpf, "generator")?;
        topo.generator
            .run(|| generator.attach(topo::GEN_HOLD_IF, XdpMode::Driver))?
            .with_context(|| format!("attaching the generator to {}", topo::GEN_HOLD_IF))?;
        Ok(())
    }

    /// Attaches the ceiling to `interface` in `ns`: frames leave to `out_ifindex` with MACs
    /// `dst` and `src`.
    pub fn attach_ceiling(
        &mut self,
        ns: &Netns,
        interface: &str,
        out_ifindex: u32,
        dst: [u8; 6],
        src: [u8; 6],
    ) -> Result<()> {
        set_redirect(&mut self.ebpf, Some(ns), out_ifindex, dst, src)?;
        let prog = xdp_mut(&mut self.ebpf, "ceiling")?;
        let link = ns
            .run(|| prog.attach(interface, XdpMode::Driver))?
            .with_context(|| format!("attaching the ceiling to {interface}"))?;
        self.ceiling_link = Some(link);
        Ok(())
    }

    pub fn detach_ceiling(&mut self) -> Result<()> {
        if let Some(link) = self.ceiling_link.take() {
            xdp_mut(&mut self.ebpf, "ceiling")?.detach(link)?;
        }
        Ok(())
    }

    /// Makes the generator send `set`, from its flow 0 on.
    pub fn configure(&mut self, set: &FlowSet) -> Result<Vec<u8>> {
        let frame = set.frame(0)?;
        let config = set.config()?;
        let mut map: Array<&mut MapData, GenConfig> =
            Array::try_from(self.ebpf.map_mut("GEN_CONFIG").context("GEN_CONFIG")?)?;
        map.set(0, config, 0)?;
        let mut seq: PerCpuArray<&mut MapData, [u64; 3]> =
            PerCpuArray::try_from(self.ebpf.map_mut("GEN_SEQ").context("GEN_SEQ")?)?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        seq.set(
            0,
            aya::maps::PerCpuValues::try_from(vec![[0u64; 3]; cpus])?,
            0,
        )?;
        Ok(frame)
    }

    /// Packets the generator program produced so far (all CPUs).
    pub fn generated(&self) -> Result<u64> {
        let seq: PerCpuArray<&MapData, [u64; 3]> =
            PerCpuArray::try_from(self.ebpf.map("GEN_SEQ").context("GEN_SEQ")?)?;
        Ok(seq.get(&0, 0)?.iter().map(|[sent, ..]| sent).sum())
    }

    /// Delivered frames per destination, and frames that were not IP.
    pub fn sink_counts(&self) -> Result<(BTreeMap<IpAddr, u64>, u64)> {
        let mut out = BTreeMap::new();
        let slots: PerCpuArray<&MapData, SinkSlot> =
            PerCpuArray::try_from(self.ebpf.map("SINK_SLOTS").context("SINK_SLOTS")?)?;
        for index in 0..SINK_SLOT_COUNT as u32 {
            for slot in slots.get(&index, 0)?.iter().filter(|s| s.frames > 0) {
                let [a, b] = slot.addr.map(u64::to_ne_bytes);
                let mut key = [0u8; 16];
                key[..8].copy_from_slice(&a);
                key[8..].copy_from_slice(&b);
                *out.entry(canonical(key)).or_insert(0) += slot.frames;
            }
        }
        let counts: PerCpuHashMap<&MapData, [u8; 16], u64> =
            PerCpuHashMap::try_from(self.ebpf.map("SINK_COUNTS").context("SINK_COUNTS")?)?;
        for entry in counts.iter() {
            let (key, values) = entry?;
            *out.entry(canonical(key)).or_insert(0) += values.iter().sum::<u64>();
        }
        let other: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map("SINK_OTHER").context("SINK_OTHER")?)?;
        Ok((out, other.get(&0, 0)?.iter().sum()))
    }

    /// Turns recording of flows in the sink on or off; both clear what it recorded.
    pub fn record_flows(&mut self, on: bool) -> Result<()> {
        let mut config: Array<&mut MapData, u32> =
            Array::try_from(self.ebpf.map_mut("SINK_CONFIG").context("SINK_CONFIG")?)?;
        config.set(0, u32::from(on), 0)?;
        let mut flows: BpfHashMap<&mut MapData, u32, [u8; 16]> =
            BpfHashMap::try_from(self.ebpf.map_mut("SINK_FLOWS").context("SINK_FLOWS")?)?;
        let keys: Vec<u32> = flows.keys().collect::<Result<_, _>>()?;
        for key in keys {
            flows.remove(&key)?;
        }
        Ok(())
    }

    /// Recorded flows: sink key to the destination the flow arrived at.
    pub fn recorded_flows(&self) -> Result<HashMap<u32, IpAddr>> {
        let flows: BpfHashMap<&MapData, u32, [u8; 16]> =
            BpfHashMap::try_from(self.ebpf.map("SINK_FLOWS").context("SINK_FLOWS")?)?;
        flows
            .iter()
            .map(|e| e.map(|(k, v)| (k, canonical(v))).map_err(Into::into))
            .collect()
    }

    /// Sends `frame` (the set configured with [`Traffic::configure`]) from the generator's
    /// interface within `limits`, pinned to `cpu`; prints a progress line every second when
    /// `progress`. Returns what was sent and delivered.
    pub fn run(
        &self,
        topo: &PpsTopology,
        frame: &[u8],
        cpu: usize,
        limits: Limits,
        progress: bool,
    ) -> Result<RunSummary> {
        ensure!(
            (1..=256).contains(&limits.batch),
            "batch must be 1..=256 (the kernel's limit)"
        );
        let duration = limits.duration.min(MAX_DURATION);
        let total = limits.count.unwrap_or(MAX_PACKETS).min(MAX_PACKETS);
        let prog = xdp(&self.ebpf, "generator")?;
        let (before, other_before) = self.sink_counts()?;
        let sent_before = self.generated()?;
        let drops_before = topo.veth_drop_counters()?;
        let pacer = Pacer::new(limits.rate, MAX_CHUNK);
        let ticks_before = cpu_time::read(cpu);
        let elapsed = topo.generator.run(|| -> Result<Duration> {
            pin_to(cpu)?;
            let ifindex = lb_userspace::dataplane::ifindex(topo::GEN_IF)?;
            // xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress.
            let ctx: Vec<u8> = [0u32, frame.len() as u32, 0, ifindex, 0, 0]
                .iter()
                .flat_map(|w| w.to_ne_bytes())
                .collect();
            let start = Instant::now();
            let mut sent = 0u64;
            let mut last_print = start;
            let mut last_sent = 0u64;
            let mut last_delivered = 0u64;
            while sent < total && start.elapsed() < duration {
                match pacer.next(start.elapsed(), sent, total - sent) {
                    Step::Wait(d) => std::thread::sleep(d.min(duration)),
                    Step::Send(n) => {
                        let opts = TestRunOptions {
                            data_in: Some(frame),
                            ctx_in: Some(&ctx),
                            repeat: n,
                            attrs: TestRunAttrs::new().xdp_live_frames(limits.batch),
                            ..TestRunOptions::default()
                        };
                        prog.test_run(opts)
                            .context("BPF_PROG_TEST_RUN with live frames")?;
                        sent += u64::from(n);
                    }
                }
                if progress && last_print.elapsed() >= Duration::from_secs(1) {
                    let now = Instant::now();
                    let dt = (now - last_print).as_secs_f64();
                    let delivered = delivered_since(&self.sink_counts()?.0, &before);
                    eprint!(
                        "\rgen: {:6.1} s  sent {:>12}  {:6.3} Mpps  delivered {:6.3} Mpps   ",
                        (now - start).as_secs_f64(),
                        sent,
                        (sent - last_sent) as f64 / dt / 1e6,
                        delivered.saturating_sub(last_delivered) as f64 / dt / 1e6,
                    );
                    let _ = std::io::stderr().flush();
                    (last_print, last_sent, last_delivered) = (now, sent, delivered);
                }
            }
            if progress {
                eprintln!();
            }
            Ok(start.elapsed())
        })??;
        let ticks_after = cpu_time::read(cpu);
        // Let the last batch drain through the node's and the sink's NAPI.
        std::thread::sleep(Duration::from_millis(50));
        let (after, other_after) = self.sink_counts()?;
        let per_destination: BTreeMap<IpAddr, u64> = after
            .iter()
            .map(|(ip, n)| (*ip, n - before.get(ip).copied().unwrap_or(0)))
            .filter(|(ip, n)| *n > 0 && !ip.is_multicast())
            .collect();
        Ok(RunSummary {
            sent: self.generated()? - sent_before,
            delivered: per_destination.values().sum(),
            seconds: elapsed.as_secs_f64(),
            per_destination,
            other: other_after - other_before,
            veth_drops: topo::grown(&drops_before, &topo.veth_drop_counters()?),
            cpu_busy: ticks_before
                .zip(ticks_after)
                .and_then(|(before, after)| cpu_time::busy_share(before, after)),
        })
    }
}

fn delivered_since(now: &BTreeMap<IpAddr, u64>, before: &BTreeMap<IpAddr, u64>) -> u64 {
    now.iter()
        .map(|(ip, n)| n - before.get(ip).copied().unwrap_or(0))
        .sum()
}

/// A sink key as an address (IPv4-mapped IPv6 as IPv4).
fn canonical(key: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(key);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_to(cpu: usize) -> Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error()).context(format!("pinning to CPU {cpu}"));
        }
    }
    Ok(())
}

/// The CPU to pin to: `wanted`, else 1, else 0 on a single-CPU machine.
pub fn default_cpu(wanted: Option<usize>) -> usize {
    wanted.unwrap_or_else(|| {
        if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
            1
        } else {
            0
        }
    })
}

/// The flow set a contender is sent: to the VIP, or to backend 0 for plain forwarding.
pub fn flow_set(through: Through, kind: Kind, v6: bool, flows: u32, size: usize) -> FlowSet {
    let dst = match through {
        Through::Kernel => SocketAddr::new(topo::backend_addr(0, v6), topo::BACKEND_PORT),
        _ => SocketAddr::new(
            if v6 {
                IpAddr::V6(topo::VIP6)
            } else {
                IpAddr::V4(topo::VIP4)
            },
            topo::VIP_PORT,
        ),
    };
    FlowSet {
        kind,
        dst,
        flows,
        per_flow: 1,
        size,
        eth_src: topo::GEN_MAC,
        eth_dst: topo::NODE_IN_MAC,
    }
}

/// `lb-bench gen`.
pub fn run(args: &GenArgs) -> Result<()> {
    ensure!(args.duration > 0.0, "--duration must be positive");
    ensure!(
        !(args.v6 && args.through == Through::Floor),
        "--through floor tracks IPv4 flows only: leave out --v6"
    );
    if args.through == Through::Meshlb {
        ensure!(
            args.lbd.exists(),
            "{} does not exist: run `cargo xtask build`",
            args.lbd.display()
        );
    }
    let set = flow_set(args.through, args.kind, args.v6, args.flows, args.size);
    set.frame(0)?;
    let cpu = default_cpu(args.cpu);
    let topo = PpsTopology::new()?;
    let mut traffic = Traffic::load()?;
    traffic.attach(&topo)?;
    let frame = traffic.configure(&set)?;
    let config = NodeConfig {
        backends: args.backends,
        scheduler: args.scheduler.clone(),
        extra_services: 0,
        backend_indices: None,
        lbd: args.lbd.clone(),
        conntrack_entries: args.conntrack_entries,
    };
    let node = Node::start(args.through, &topo, &mut traffic, &config)?;
    println!(
        "gen: {} {} frames of {} bytes, {} flows to {} through {}, CPU {cpu}",
        if args.v6 { "IPv6" } else { "IPv4" },
        args.kind.name(),
        args.size,
        args.flows,
        set.dst,
        args.through.name()
    );
    let limits = Limits {
        count: args.count,
        duration: Duration::from_secs_f64(args.duration),
        rate: args.rate,
        batch: args.batch,
    };
    let summary = traffic.run(&topo, &frame, cpu, limits, true);
    let stopped = node.stop(&topo, &mut traffic);
    let summary = summary?;
    let counters = stopped?;
    print_summary(&summary);
    if let Some(counters) = counters {
        println!("lbd counters (non-zero):");
        if let Some(global) = counters["global"].as_object() {
            for (name, value) in global {
                if value.as_u64().unwrap_or(0) > 0 {
                    println!("  {name:<22} {value}");
                }
            }
        }
    }
    drop(traffic);
    drop(topo);
    if summary.delivered == 0 {
        bail!("nothing arrived at the sink");
    }
    Ok(())
}

pub fn print_summary(s: &RunSummary) {
    println!(
        "sent {} in {:.2} s = {:.3} Mpps; delivered {} = {:.3} Mpps; lost {} ({:.2}%)",
        s.sent,
        s.seconds,
        s.sent_pps() / 1e6,
        s.delivered,
        s.delivered_pps() / 1e6,
        s.lost(),
        100.0 * s.lost() as f64 / s.sent.max(1) as f64
    );
    if let Some(busy) = s.cpu_busy {
        println!(
            "the CPU of generator, node and sink was busy {:.1}% of the run",
            busy * 100.0
        );
    }
    if s.other > 0 {
        println!("sink: {} frames that were not IPv4/IPv6", s.other);
    }
    for (counter, n) in &s.veth_drops {
        println!("veth {counter}: {n}");
    }
    println!("{:<28} {:>12} {:>8}", "destination", "packets", "share");
    for (ip, n) in &s.per_destination {
        println!(
            "{:<28} {:>12} {:>7.2}%",
            ip.to_string(),
            n,
            100.0 * *n as f64 / s.delivered.max(1) as f64
        );
    }
}
