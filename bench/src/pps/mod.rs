//! `lb-bench bench pps`: packets per second through the node, every contender in the same run
//! on the same topology, generator, flow set and CPU: meshlb XDP, nftables DNAT, plain kernel
//! forwarding, the redirect-only ceiling and the tracked floor (the ceiling plus the least a
//! balancer tracking flows does), in interleaved rounds; then meshlb's scaling with services,
//! backends and tracked flows. Writes `bench/results/pps-<date>.{json,md}`.

// micro's machine facts, included rather than reached through `micro` (whose modules are
// private to it).
mod markdown;
mod scaling;

use crate::micro::machine;
pub use markdown::render_markdown;
use scaling::scaling;

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, ensure};
use serde::Serialize;

use crate::traffic::{
    Limits, RunSummary, Traffic, default_cpu, flow_set,
    node::{Node, NodeConfig, Through},
    template::{FlowSet, Kind},
    topo::PpsTopology,
};

#[derive(clap::Args, Debug)]
pub struct PpsArgs {
    /// The lbd binary.
    #[arg(long, default_value = "target/release/lbd")]
    pub lbd: PathBuf,
    /// Interleaved rounds: every round runs every contender once.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Seconds each contender sends per round (after a 0.5 s warm-up).
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Distinct flows.
    #[arg(long, default_value_t = 1024)]
    pub flows: u32,
    #[arg(long, value_enum, default_value_t = Kind::Udp)]
    pub kind: Kind,
    /// Frame size in bytes.
    #[arg(long, default_value_t = 60)]
    pub size: usize,
    /// Backends of the balanced service.
    #[arg(long, default_value_t = 16)]
    pub backends: usize,
    /// CPU for generator, node and sink (default 1).
    #[arg(long)]
    pub cpu: Option<usize>,
    /// Extra services of the scaling runs (none: skip); loaded in-process (see
    /// `traffic::node`), their selection tables left out.
    #[arg(long, value_delimiter = ',', num_args = 0.., default_values_t = [1_000usize, 10_000, 100_000])]
    pub scale_services: Vec<usize>,
    /// Backend counts of the scaling runs (none: skip).
    #[arg(long, value_delimiter = ',', num_args = 0.., default_values_t = [2usize, 128, 1024])]
    pub scale_backends: Vec<usize>,
    /// Tracked-flow counts of the scaling runs (none: skip). Each gives two points: the
    /// table holding that many flows while the measured traffic stays on `--flows` of them,
    /// and every one of them in the measured traffic (each packet a different flow).
    #[arg(long, value_delimiter = ',', num_args = 0.., default_values_t = [100_000u32, 1_000_000])]
    pub scale_flows: Vec<u32>,
    /// Rounds of each scaling point (each against a baseline run next to it).
    #[arg(long, default_value_t = 3)]
    pub scale_rounds: usize,
    /// Directory for pps-<date>.{json,md}.
    #[arg(long, default_value = "bench/results")]
    pub out_dir: PathBuf,
    /// Print only; write no files.
    #[arg(long)]
    pub no_write: bool,
}

/// The order of `n` contenders in round `round`: rotated by one each round, so that none is
/// always first (right after set-up) or always next to the same neighbour's after-effects.
pub fn rotated(n: usize, round: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |i| (i + round) % n.max(1))
}

/// min / median / max of a sample.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Spread {
    /// `None` for an empty sample. The median of an even count is the mean of the middle two.
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            min: v[0],
            median,
            max: v[n - 1],
        })
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ContenderResult {
    pub key: &'static str,
    pub name: &'static str,
    /// Delivered Mpps per round.
    pub mpps: Vec<f64>,
    pub spread: Spread,
    /// Sent minus delivered, summed over rounds.
    pub lost: u64,
    /// Per round, the redirect-only ceiling measured right before and right after this
    /// contender (the mean of the two): what the contender is held against (empty for the
    /// ceiling itself, whose `mpps` are the mean of its runs in each round).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ceiling_around_mpps: Vec<f64>,
    /// Where the lost frames went: the veths' drop and error counters that grew, summed over
    /// rounds.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub veth_drops: BTreeMap<String, u64>,
    /// Highest / lowest per-destination packets over the rounds (balancing contenders).
    pub max_min_share: Option<f64>,
    /// The least busy the shared CPU was in any of its runs (`RunSummary::cpu_busy`).
    pub cpu_busy_min: Option<f64>,
}

/// One target of the issue, measured.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub what: String,
    /// Per-round ratios (same round, same conditions).
    pub ratios: Vec<f64>,
    pub spread: Spread,
    pub target: f64,
    /// What every round must reach (the target itself unless a target says otherwise).
    pub round_floor: f64,
    /// Whether the median meets the target, and whether even the worst round meets the floor.
    pub met_median: bool,
    pub met_min: bool,
}

impl Target {
    pub fn new(
        what: impl Into<String>,
        ratios: Vec<f64>,
        target: f64,
        higher_is_better: bool,
    ) -> Option<Target> {
        Target::with_round_floor(what, ratios, target, target, higher_is_better)
    }

    /// A target for the median, and a looser one, `round_floor`, for every round.
    pub fn with_round_floor(
        what: impl Into<String>,
        ratios: Vec<f64>,
        target: f64,
        round_floor: f64,
        higher_is_better: bool,
    ) -> Option<Target> {
        let spread = Spread::of(&ratios)?;
        let ok = |x: f64, bound: f64| {
            if higher_is_better {
                x >= bound
            } else {
                x <= bound
            }
        };
        Some(Target {
            what: what.into(),
            met_median: ok(spread.median, target),
            met_min: ok(
                if higher_is_better {
                    spread.min
                } else {
                    spread.max
                },
                round_floor,
            ),
            ratios,
            spread,
            target,
            round_floor,
        })
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ScalePoint {
    pub what: String,
    /// meshlb Mpps at this point, per round.
    pub mpps: Vec<f64>,
    /// Baseline (2 services, the default backends and flows) Mpps, measured next to it.
    pub baseline_mpps: Vec<f64>,
    /// baseline / point per round: 1.0 is flat, 1.2 is 20 % slower.
    pub slowdown: Spread,
    pub lost: u64,
    /// Flows meshlb started while the point was measured, per round (after a warm-up that
    /// sent every flow once): a tracked flow that was not kept is started again.
    pub new_flows: Vec<u64>,
    /// Points whose measured traffic is a part of the tracked flows: per round, the flows
    /// meshlb started again when every tracked flow was sent once more right after the
    /// measured phase (0: the table still held all of them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replay_new_flows: Vec<u64>,
    /// Flow-count points only: the redirect-only ceiling with the point's flow set, per
    /// round, and its slowdown against the ceiling with the baseline's flows (measured next
    /// to each other): the part of the slowdown that is not meshlb's.
    pub ceiling_mpps: Vec<f64>,
    pub ceiling_slowdown: Option<Spread>,
    /// Flow-count points whose measured traffic is on all tracked flows: nftables DNAT with
    /// the point's flow set, per round, and its slowdown against nftables with the
    /// baseline's flows (measured next to each other): what the same traffic costs the
    /// kernel's connection tracking.
    pub nft_mpps: Vec<f64>,
    pub nft_baseline_mpps: Vec<f64>,
    pub nft_slowdown: Option<Spread>,
    /// The same for the tracked floor: what the point's flow set costs a balancer that does
    /// nothing per packet but one lookup in a table like meshlb's (the bound of meshlb's
    /// slowdown on this machine, whatever its layout).
    pub floor_mpps: Vec<f64>,
    pub floor_baseline_mpps: Vec<f64>,
    pub floor_slowdown: Option<Spread>,
    /// Why nftables was not measured at a flow-count point, if it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nft_not_measured: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PpsReport {
    pub date: String,
    pub machine: machine::Machine,
    pub cpu: usize,
    pub rounds: usize,
    pub seconds: f64,
    pub flows: u32,
    pub kind: Kind,
    pub size: usize,
    pub backends: usize,
    pub contenders: Vec<ContenderResult>,
    pub targets: Vec<Target>,
    pub scaling: Vec<ScalePoint>,
    pub load_before: f64,
    pub load_after: f64,
}

const CONTENDERS: [Through; 5] = [
    Through::Ceiling,
    Through::Meshlb,
    Through::Floor,
    Through::Nft,
    Through::Kernel,
];

/// The flows of one measured run: the warm-up sends each of `tracked` flows at least once,
/// the measured phase sends the first `measured` of them. With `measured < tracked`, every
/// tracked flow is sent once more afterwards, to count those the node no longer tracks.
#[derive(Clone, Copy, Debug)]
struct Load {
    tracked: u32,
    measured: u32,
}

impl Load {
    fn flows(n: u32) -> Load {
        Load {
            tracked: n,
            measured: n,
        }
    }
}

/// One measured run of `through`: warm-up, then `seconds` of traffic.
struct Bench<'a> {
    topo: &'a PpsTopology,
    traffic: &'a mut Traffic,
    cpu: usize,
}

impl Bench<'_> {
    fn measure(
        &mut self,
        through: Through,
        config: &NodeConfig,
        load: Load,
        args: &PpsArgs,
        warmup_packets: u64,
    ) -> Result<Measured> {
        ensure!(
            (1..=load.tracked).contains(&load.measured),
            "measured flows {} outside 1..={}",
            load.measured,
            load.tracked
        );
        let tracked_set = flow_set(through, args.kind, false, load.tracked, args.size);
        // Flow k is the same flow in every set (its source depends on k only), so the
        // measured set is the tracked set's first `measured` flows.
        let measured_set = flow_set(through, args.kind, false, load.measured, args.size);
        let warmup_set = FlowSet {
            per_flow: 2,
            ..tracked_set.clone()
        };
        let warmup_frame = self.traffic.configure(&warmup_set)?;
        let mut node = Node::start(through, self.topo, self.traffic, config)?;
        if let Some(lbd) = node.lbd() {
            keep_off_cpu(lbd.pid()?, self.cpu)?;
        }
        let limits = |count: Option<u64>, seconds: f64| Limits {
            count,
            duration: Duration::from_secs_f64(seconds),
            rate: None,
            batch: 64,
        };
        let result = (|| {
            // Warm-up: every flow opened and confirmed (its first two frames in a row), and
            // the caches warm, at a rate the node opens flows at without loss.
            self.traffic.run(
                self.topo,
                &warmup_frame,
                self.cpu,
                Limits {
                    rate: Some(WARMUP_PPS),
                    ..limits(
                        Some(warmup_packets.max(2 * u64::from(load.tracked))),
                        WARMUP_MAX_S,
                    )
                },
                false,
            )?;
            // lbd counts its connection table every few seconds; a count of a large table
            // takes a while (a third of a second per million entries here) and is then not
            // due again for 50 times as long. Its first count of the warmed-up table came
            // a few seconds after lbd started, inside the measured phase: it is waited for.
            if load.tracked >= COUNTED_WARMUP_FLOWS
                && let Some(lbd) = node.lbd()
            {
                wait_for_count(lbd, u64::from(load.tracked))?;
            }
            let frame = self.traffic.configure(if load.measured == load.tracked {
                &tracked_set
            } else {
                &measured_set
            })?;
            // meshlb's flows started so far: the measured phase's are counted against it.
            let new_flows_before = node.lbd().map(lbd_new_flows).transpose()?;
            let summary = self.traffic.run(
                self.topo,
                &frame,
                self.cpu,
                limits(None, args.seconds),
                false,
            )?;
            let new_flows_after = node.lbd().map(lbd_new_flows).transpose()?;
            // Every tracked flow once more: a flow the table dropped meanwhile (LRU eviction,
            // idle timeout) is started again and counted.
            let replay_new_flows = if load.measured < load.tracked && node.lbd().is_some() {
                let tracked_frame = self.traffic.configure(&tracked_set)?;
                self.traffic.run(
                    self.topo,
                    &tracked_frame,
                    self.cpu,
                    limits(Some(u64::from(load.tracked)), 30.0),
                    false,
                )?;
                let after = node.lbd().map(lbd_new_flows).transpose()?;
                after.zip(new_flows_after).map(|(a, b)| a.saturating_sub(b))
            } else {
                None
            };
            Ok::<_, anyhow::Error>(Measured {
                summary,
                new_flows: new_flows_before
                    .zip(new_flows_after)
                    .map(|(b, a)| a.saturating_sub(b)),
                replay_new_flows,
            })
        })();
        let stopped = node.stop(self.topo, self.traffic);
        let measured = result.with_context(|| format!("{} run", through.name()))?;
        stopped?;
        ensure!(
            measured.summary.delivered > 0,
            "{}: nothing arrived at the sink",
            through.name()
        );
        Ok(measured)
    }
}

/// A measured run, and the flows meshlb started during it (lbd only; the warm-up started
/// every flow of the set, so more than a few here means the table did not keep them).
struct Measured {
    summary: RunSummary,
    new_flows: Option<u64>,
    /// Flows started again when every tracked flow was sent once more after the measured
    /// phase (lbd, and only when the measured flows are a part of the tracked ones).
    replay_new_flows: Option<u64>,
}

/// Moves every thread of process `pid` (and so the threads they start later) off `cpu`, onto
/// the machine's other CPUs: lbd's housekeeping (its counter sampler walks the whole
/// connection table every 5 s, about a second of CPU with 2M entries) then does not take the
/// CPU that generator, node and sink share, which no other contender has to give up. Nothing
/// to do on a single-CPU machine.
fn keep_off_cpu(pid: u32, cpu: usize) -> Result<()> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        return Ok(());
    }
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for c in (0..cpus).filter(|&c| c != cpu) {
        // SAFETY: as above.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    let tasks = std::path::PathBuf::from(format!("/proc/{pid}/task"));
    for entry in std::fs::read_dir(&tasks).with_context(|| format!("{}", tasks.display()))? {
        let Some(tid) = entry?
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: plain syscall on a thread id with a valid set. A thread that exited
        // meanwhile is fine.
        if unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) }
            != 0
        {
            let e = std::io::Error::last_os_error();
            ensure!(
                e.raw_os_error() == Some(libc::ESRCH),
                "moving lbd thread {tid} off CPU {cpu}: {e}"
            );
        }
    }
    Ok(())
}

/// A global counter of lbd's counter report (`lbctl -o json stats`, or what it prints on exit).
fn global_counter(report: &serde_json::Value, name: &str) -> Option<u64> {
    report["global"][name].as_u64()
}

/// Median over rounds of the extra time per packet at a point: 1/point − 1/baseline, in ns.
fn extra_ns(point_mpps: &[f64], baseline_mpps: &[f64]) -> f64 {
    let extra: Vec<f64> = point_mpps
        .iter()
        .zip(baseline_mpps)
        .map(|(p, b)| 1e3 / p - 1e3 / b)
        .collect();
    Spread::of(&extra).map_or(f64::NAN, |s| s.median)
}

/// The kernel's connection-tracking capacity (`net.netfilter.nf_conntrack_max`, shared by
/// every namespace), if nf_conntrack is loaded.
fn nf_conntrack_max() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Warm-ups of at least this many flows wait for lbd to count them (see `measure`).
const COUNTED_WARMUP_FLOWS: u32 = 100_000;

/// Frames per second of a warm-up: every frame of it opens or confirms a flow, which costs
/// meshlb a few microseconds (a table insert each), and a generator that outran the node
/// would lose frames in the node's receive ring, leaving flows unconfirmed.
const WARMUP_PPS: u64 = 250_000;
/// Longest warm-up: two frames for each of 1M flows at `WARMUP_PPS` take 8 s.
const WARMUP_MAX_S: f64 = 30.0;

/// Waits until lbd's connection-table occupancy (counted by its sampler) says at least
/// `entries`: its count of the warmed-up table is over.
fn wait_for_count(lbd: &mut lb_testkit::Lbd, entries: u64) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let counted = lbd_stats(lbd)?["conntrack"]["entries"]
            .as_u64()
            .context("lbctl stats has no conntrack.entries")?;
        if counted >= entries {
            return Ok(());
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "lbd counted {counted} connection-table entries after 30 s, expected at least {entries}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The running lbd's counter report (`lbctl -o json stats`).
fn lbd_stats(lbd: &mut lb_testkit::Lbd) -> Result<serde_json::Value> {
    let (ok, stdout, stderr) = lbd.lbctl(&["-o", "json", "stats"])?;
    ensure!(ok, "lbctl stats failed: {stderr}");
    serde_json::from_str(&stdout).context("lbctl stats output")
}

/// Flows the running lbd has started so far.
fn lbd_new_flows(lbd: &mut lb_testkit::Lbd) -> Result<u64> {
    global_counter(&lbd_stats(lbd)?, "new_flow").context("lbctl stats has no new_flow")
}

fn max_min(summary: &RunSummary) -> Option<f64> {
    let max = *summary.per_destination.values().max()?;
    let min = *summary.per_destination.values().min()?;
    (summary.per_destination.len() > 1 && min > 0).then(|| max as f64 / min as f64)
}

pub fn run(args: &PpsArgs) -> Result<()> {
    ensure!(
        args.rounds >= 1 && args.seconds > 0.0,
        "--rounds and --seconds must be positive"
    );
    ensure!(
        args.lbd.exists(),
        "{} does not exist: run `cargo xtask build`",
        args.lbd.display()
    );
    let cpu = default_cpu(args.cpu);
    let machine = machine::facts();
    let load_before = machine::load_average();
    println!(
        "pps: {} ({} CPUs), {}; {} rounds × {} contenders × {} s, {} {} flows of {} bytes, {} backends, all on CPU {cpu}",
        machine.cpu_model,
        machine.cpus,
        machine.kernel,
        args.rounds,
        CONTENDERS.len(),
        args.seconds,
        args.flows,
        args.kind.name(),
        args.size,
        args.backends
    );
    let topo = PpsTopology::new()?;
    let mut traffic = Traffic::load()?;
    traffic.attach(&topo)?;
    let mut bench = Bench {
        topo: &topo,
        traffic: &mut traffic,
        cpu,
    };
    let config = NodeConfig {
        backends: args.backends,
        scheduler: "maglev".into(),
        extra_services: 0,
        backend_indices: None,
        lbd: args.lbd.clone(),
        conntrack_entries: None,
    };
    let (contenders, targets) = compare(&mut bench, &config, args)?;
    let scaling = scaling(&mut bench, &config, args)?;
    drop(traffic);
    drop(topo);

    let report = PpsReport {
        date: machine::today(),
        machine,
        cpu,
        rounds: args.rounds,
        seconds: args.seconds,
        flows: args.flows,
        kind: args.kind,
        size: args.size,
        backends: args.backends,
        contenders,
        targets,
        scaling,
        load_before,
        load_after: machine::load_average(),
    };
    let markdown = render_markdown(&report);
    println!("\n{markdown}");
    if !args.no_write {
        let base = crate::results::write(
            &args.out_dir,
            &format!("pps-{}", report.date),
            &report,
            &markdown,
        )?;
        println!("pps: wrote {}.{{json,md}}", base.display());
    }
    Ok(())
}

/// Every contender, each run between two runs of the redirect-only ceiling, over the rounds;
/// their figures and the targets.
fn compare(
    bench: &mut Bench<'_>,
    config: &NodeConfig,
    args: &PpsArgs,
) -> Result<(Vec<ContenderResult>, Vec<Target>)> {
    let idx = |t: Through| {
        CONTENDERS
            .iter()
            .position(|c| *c == t)
            .expect("a contender")
    };
    let (ceiling, meshlb, floor, nft, kernel) = (
        idx(Through::Ceiling),
        idx(Through::Meshlb),
        idx(Through::Floor),
        idx(Through::Nft),
        idx(Through::Kernel),
    );
    // Every other contender runs between two runs of the ceiling and is held against their
    // mean: this VM's speed drifts within a round by more than the targets' margins (the
    // stop-9 run saw the ceiling fall from 1.66 to 1.44 Mpps over its five rounds while meshlb
    // stayed within 1.24-1.33).
    let others: Vec<usize> = (0..CONTENDERS.len()).filter(|&i| i != ceiling).collect();
    let mut per: Vec<Vec<RunSummary>> = vec![Vec::new(); CONTENDERS.len()];
    let mut ceiling_runs: Vec<Vec<f64>> = Vec::new();
    let mut around: Vec<Vec<f64>> = vec![Vec::new(); CONTENDERS.len()];
    let measure = |bench: &mut Bench<'_>, i: usize, round: usize| -> Result<RunSummary> {
        let through = &CONTENDERS[i];
        let s = bench
            .measure(*through, config, Load::flows(args.flows), args, 100_000)?
            .summary;
        println!(
            "pps: round {round}: {:<22} {:6.3} Mpps delivered (sent {:6.3}, lost {})",
            through.name(),
            s.delivered_pps() / 1e6,
            s.sent_pps() / 1e6,
            s.lost()
        );
        Ok(s)
    };
    for round in 0..args.rounds {
        let first = measure(bench, ceiling, round)?;
        let mut before = first.delivered_pps() / 1e6;
        let mut runs = vec![before];
        per[ceiling].push(first);
        for k in rotated(others.len(), round) {
            let i = others[k];
            let s = measure(bench, i, round)?;
            per[i].push(s);
            let after_run = measure(bench, ceiling, round)?;
            let after = after_run.delivered_pps() / 1e6;
            per[ceiling].push(after_run);
            around[i].push((before + after) / 2.0);
            runs.push(after);
            before = after;
        }
        ceiling_runs.push(runs);
    }
    // The ceiling's figure per round: the mean of its runs in the round.
    let mpps = |i: usize| -> Vec<f64> {
        if i == ceiling {
            ceiling_runs
                .iter()
                .map(|runs| runs.iter().sum::<f64>() / runs.len() as f64)
                .collect()
        } else {
            per[i].iter().map(|s| s.delivered_pps() / 1e6).collect()
        }
    };
    let contenders: Vec<ContenderResult> = CONTENDERS
        .iter()
        .enumerate()
        .map(|(i, t)| ContenderResult {
            key: t.key(),
            name: t.name(),
            mpps: mpps(i),
            spread: Spread::of(&mpps(i)).expect("rounds >= 1"),
            ceiling_around_mpps: around[i].clone(),
            lost: per[i].iter().map(RunSummary::lost).sum(),
            veth_drops: summed_drops(&per[i]),
            max_min_share: per[i].iter().filter_map(max_min).reduce(f64::max),
            cpu_busy_min: per[i].iter().filter_map(|s| s.cpu_busy).reduce(f64::min),
        })
        .collect();
    let ratio = |a: usize, b: usize| -> Vec<f64> {
        mpps(a).iter().zip(mpps(b)).map(|(x, y)| x / y).collect()
    };
    let to_ceiling =
        |a: usize| -> Vec<f64> { mpps(a).iter().zip(&around[a]).map(|(x, y)| x / y).collect() };
    // Issue 16's targets: a rig whose ceiling is at least 3 Mpps, so that meshlb's own cost
    // is most of what the ratio shows, and meshlb at 0.9 of it (every round at least 0.85).
    let mut targets: Vec<Target> = [
        Target::new(
            "redirect-only ceiling, Mpps (mean of its runs in the round)",
            mpps(ceiling),
            3.0,
            true,
        ),
        Target::with_round_floor(
            "meshlb / redirect-only ceiling right before and after",
            to_ceiling(meshlb),
            0.9,
            0.85,
            true,
        ),
        Target::new("meshlb / nftables DNAT", ratio(meshlb, nft), 3.5, true),
    ]
    .into_iter()
    .flatten()
    .collect();
    // Context, no target: how far the kernel paths are from each other, the most any XDP
    // program could reach against nftables here (what bounds the 3.5× target), and the most
    // a balancer that looks up each packet's flow could reach against the ceiling (what
    // bounds the 0.9× target).
    targets.extend(
        [
            Target::new(
                "tracked floor / redirect-only ceiling right before and after (no target: the bound of meshlb / ceiling for a balancer that tracks flows)",
                to_ceiling(floor),
                1.0,
                true,
            ),
            Target::new(
                "meshlb / tracked floor (no target)",
                ratio(meshlb, floor),
                1.0,
                true,
            ),
            Target::new(
                "meshlb / kernel forwarding (no target)",
                ratio(meshlb, kernel),
                1.0,
                true,
            ),
            Target::new(
                "redirect-only ceiling / nftables DNAT (no target: the bound of meshlb / nftables)",
                ratio(ceiling, nft),
                1.0,
                true,
            ),
        ]
        .into_iter()
        .flatten(),
    );

    Ok((contenders, targets))
}

/// The veth drop counters of several runs, added up.
fn summed_drops(runs: &[RunSummary]) -> BTreeMap<String, u64> {
    let mut total = BTreeMap::new();
    for (counter, n) in runs.iter().flat_map(|s| &s.veth_drops) {
        *total.entry(counter.clone()).or_default() += n;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(ratios: Vec<f64>) -> PpsReport {
        let spread = Spread::of(&[1.0, 1.2]).unwrap();
        PpsReport {
            date: "2026-01-02".into(),
            machine: machine::facts(),
            cpu: 1,
            rounds: 2,
            seconds: 3.0,
            flows: 1024,
            kind: Kind::Udp,
            size: 60,
            backends: 16,
            contenders: vec![ContenderResult {
                key: "meshlb",
                name: "meshlb XDP",
                mpps: vec![1.0, 1.2],
                spread,
                ceiling_around_mpps: vec![1.3, 1.4],
                lost: 7,
                veth_drops: BTreeMap::from([("gen:eth0 tx_queue_0_xdp_xmit_errors".to_owned(), 7)]),
                max_min_share: Some(1.25),
                cpu_busy_min: Some(0.995),
            }],
            targets: vec![
                Target::new("meshlb / ceiling", ratios, 0.85, true).unwrap(),
                Target::new("meshlb / kernel (no target)", vec![2.0], 1.0, true).unwrap(),
            ],
            scaling: vec![
                ScalePoint {
                    what: "1000000 tracked flows, traffic on 1024 of them".into(),
                    mpps: vec![0.98],
                    baseline_mpps: vec![1.0],
                    slowdown: Spread::of(&[1.02]).unwrap(),
                    lost: 0,
                    new_flows: vec![0, 2],
                    replay_new_flows: vec![0, 3],
                    ceiling_mpps: vec![],
                    ceiling_slowdown: None,
                    nft_mpps: vec![],
                    nft_baseline_mpps: vec![],
                    nft_slowdown: None,
                    nft_not_measured: None,
                    floor_mpps: vec![],
                    floor_baseline_mpps: vec![],
                    floor_slowdown: None,
                },
                ScalePoint {
                    what: "1000000 tracked flows".into(),
                    mpps: vec![0.5],
                    baseline_mpps: vec![1.0],
                    slowdown: Spread::of(&[2.0]).unwrap(),
                    lost: 0,
                    new_flows: vec![0],
                    replay_new_flows: vec![],
                    ceiling_mpps: vec![1.2],
                    ceiling_slowdown: Spread::of(&[1.01]),
                    nft_mpps: vec![0.4],
                    nft_baseline_mpps: vec![0.6],
                    nft_slowdown: Spread::of(&[1.5]),
                    nft_not_measured: None,
                    floor_mpps: vec![0.8],
                    floor_baseline_mpps: vec![1.0],
                    floor_slowdown: Spread::of(&[1.25]),
                },
                ScalePoint {
                    what: "2000000 tracked flows".into(),
                    mpps: vec![0.4],
                    baseline_mpps: vec![1.0],
                    slowdown: Spread::of(&[2.5]).unwrap(),
                    lost: 0,
                    new_flows: vec![0],
                    replay_new_flows: vec![],
                    ceiling_mpps: vec![1.2],
                    ceiling_slowdown: Spread::of(&[1.0]),
                    nft_mpps: vec![],
                    nft_baseline_mpps: vec![],
                    nft_slowdown: None,
                    nft_not_measured: Some(
                        "net.netfilter.nf_conntrack_max is 262144, under 2000000 flows".into(),
                    ),
                    floor_mpps: vec![0.7],
                    floor_baseline_mpps: vec![1.0],
                    floor_slowdown: Spread::of(&[1.43]),
                },
            ],
            load_before: 1.0,
            load_after: 2.0,
        }
    }

    #[test]
    fn markdown_says_what_is_met() {
        let md = render_markdown(&report(vec![0.80, 0.90]));
        assert!(
            md.contains("| meshlb XDP | 1.000 / **1.100** / 1.200 | 1.300 / 1.400 | 7 | 1.25 |"),
            "{md}"
        );
        assert!(
            md.contains(
                "meshlb XDP lost 7: the veths counted `gen:eth0 tx_queue_0_xdp_xmit_errors` 7."
            ),
            "{md}"
        );
        assert!(
            md.contains("| meshlb / ceiling | 0.80 / **0.85** / 0.90 | ≥ 0.85 | median only |"),
            "{md}"
        );
        assert!(
            md.contains("| meshlb / kernel (no target) | 2.00 / **2.00** / 2.00 | — | — |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| 1000000 tracked flows, traffic on 1024 of them | 0.980 | 1.000 | 1.02 / **1.02** / 1.02 | yes | 2; 3 when all were sent again after it | — | — | — |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| 1000000 tracked flows | 0.500 | 1.000 | 2.00 / **2.00** / 2.00 | **no** | 0 | 1.01 / **1.01** / 1.01 | 1.25 / **1.25** / 1.25 | 1.50 / **1.50** / 1.50 |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "1000000 tracked flows: every packet takes meshlb 1000 ns longer than with the baseline's flows, the tracked floor 250 ns longer and nftables DNAT 833 ns longer"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| 2000000 tracked flows | 0.400 | 1.000 | 2.50 / **2.50** / 2.50 | **no** | 0 | 1.00 / **1.00** / 1.00 | 1.43 / **1.43** / 1.43 | not measured: net.netfilter.nf_conntrack_max is 262144, under 2000000 flows |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "2000000 tracked flows: every packet takes meshlb 1500 ns longer than with the baseline's flows and the tracked floor 429 ns longer (medians"
            ),
            "{md}"
        );
        let md = render_markdown(&report(vec![0.5]));
        assert!(md.contains("| ≥ 0.85 | **no** |"), "{md}");
        let md = render_markdown(&report(vec![0.9, 0.95]));
        assert!(md.contains("| ≥ 0.85 | yes, every round |"), "{md}");
    }

    #[test]
    fn rounds_rotate_the_order() {
        assert_eq!(rotated(4, 0).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!(rotated(4, 1).collect::<Vec<_>>(), [1, 2, 3, 0]);
        assert_eq!(rotated(4, 6).collect::<Vec<_>>(), [2, 3, 0, 1]);
        assert_eq!(rotated(0, 3).count(), 0);
    }

    #[test]
    fn spread_of_samples() {
        assert_eq!(Spread::of(&[]), None);
        assert_eq!(
            Spread::of(&[3.0, 1.0, 2.0]),
            Some(Spread {
                min: 1.0,
                median: 2.0,
                max: 3.0
            })
        );
        assert_eq!(Spread::of(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert_eq!(Spread::of(&[f64::NAN, 5.0]).unwrap().median, 5.0);
    }

    #[test]
    fn targets_say_which_rounds_meet_them() {
        let t = Target::new("x", vec![0.80, 0.90, 0.88], 0.85, true).unwrap();
        assert!(t.met_median && !t.met_min);
        let t = Target::with_round_floor("x", vec![0.86, 0.90, 0.92], 0.9, 0.85, true).unwrap();
        assert!(t.met_median && t.met_min);
        let t = Target::with_round_floor("x", vec![0.84, 0.91, 0.92], 0.9, 0.85, true).unwrap();
        assert!(t.met_median && !t.met_min);
        let t = Target::with_round_floor("x", vec![0.86, 0.88, 0.95], 0.9, 0.85, true).unwrap();
        assert!(!t.met_median && t.met_min);
        let t = Target::new("x", vec![4.0, 3.6], 3.5, true).unwrap();
        assert!(t.met_median && t.met_min);
        let t = Target::new("slowdown", vec![1.1, 1.3, 1.25], 1.2, false).unwrap();
        assert!(!t.met_median && !t.met_min);
        assert!(Target::new("x", vec![], 1.0, true).is_none());
    }
}
