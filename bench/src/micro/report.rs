//! Results of `lb-bench bench micro`: the markdown table and the JSON document.

use std::fmt::Write as _;

use serde::Serialize;

use super::{
    Class, FLAT_WITHIN, MicroArgs, Outcome, ProgramSize, SPREAD_BASELINE, Sample, Section,
    SingleShot, TRACKED_FLOOR, TRACKED_SPREAD_BASELINE, TableCost, action_name,
    katran::KatranReference,
    machine::{self, Machine},
};

#[derive(Debug, Serialize)]
pub struct ClassResult {
    pub key: String,
    pub label: String,
    pub section: Section,
    pub measured_as: &'static str,
    pub retval: &'static str,
    pub out_bytes: usize,
    /// Kernel-reported mean ns per packet, one per round.
    pub kernel_ns: Vec<f64>,
    /// Wall-clock ns per packet of the whole syscall, one per round.
    pub wall_ns: Vec<f64>,
    pub min: f64,
    pub median: f64,
    pub max: f64,
    pub wall_median: f64,
    pub katran_ns: Option<f64>,
    pub katran_row: Option<&'static str>,
    #[serde(skip)]
    baseline: Option<(&'static str, String)>,
    #[serde(skip)]
    bound: f64,
}

impl ClassResult {
    pub(super) fn new(class: &Class, samples: &[Sample]) -> Self {
        let kernel: Vec<f64> = samples.iter().map(|s| s.kernel_ns).collect();
        let wall: Vec<f64> = samples.iter().map(|s| s.wall_ns).collect();
        let (min, median, max) = spread(&kernel);
        Self {
            key: class.key.clone(),
            label: class.label.clone(),
            section: class.section,
            measured_as: class.via.label(),
            retval: action_name(class.retval),
            // The hand-off to TC is written over the addresses: no path grows the frame.
            out_bytes: class.frame.len(),
            min,
            median,
            max,
            wall_median: spread(&wall).1,
            kernel_ns: kernel,
            wall_ns: wall,
            katran_ns: class.katran.map(|k| k.0),
            katran_row: class.katran.map(|k| k.1),
            baseline: class.baseline.clone(),
            bound: class.bound,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ScalingResult {
    pub key: String,
    pub path: String,
    pub variant: String,
    pub baseline_key: &'static str,
    pub baseline_median: f64,
    pub median: f64,
    pub ratio: f64,
    /// The largest ratio the row is held to.
    pub bound: f64,
    pub within_bound: bool,
}

#[derive(Debug, Serialize)]
pub struct SingleShotResult {
    pub key: String,
    pub label: String,
    pub retval: &'static str,
    /// Mean of the kernel-reported per-call durations, one per round.
    pub means: Vec<f64>,
    /// Median of the per-call durations, one per round.
    pub medians_of_calls: Vec<u64>,
    /// Wall-clock µs per call (syscall included), one per round.
    pub wall_us: Vec<f64>,
    pub min: f64,
    pub median: f64,
    pub max: f64,
    pub katran_ns: Option<f64>,
}

impl SingleShotResult {
    pub(super) fn new(class: &Class, runs: &[SingleShot], katran: &KatranReference) -> Self {
        let means: Vec<f64> = runs.iter().map(|r| r.mean_ns).collect();
        let (min, median, max) = spread(&means);
        Self {
            key: class.key.clone(),
            label: class.label.clone(),
            retval: action_name(class.retval),
            medians_of_calls: runs.iter().map(|r| r.median_ns).collect(),
            wall_us: runs.iter().map(|r| r.wall_us).collect(),
            means,
            min,
            median,
            max,
            katran_ns: katran.single_shot(&class.key),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Params {
    pub repeat: u32,
    pub rounds: usize,
    pub single_shot_calls: u32,
    pub conntrack_entries: u32,
    pub scale_services: Vec<u32>,
    pub prefill_flows: u32,
    /// How the spread rows visited their flows.
    pub spread_order: super::SpreadOrder,
    pub prefilled_entries: Option<u64>,
    pub new_flow_fill_iterations: u32,
    /// `Dataplane::apply` time per service selection table (map-in-map update).
    pub selection_table_apply: Option<TableCost>,
    pub cpu: usize,
    pub cpu_note: Option<String>,
    pub load_average_before: f64,
    pub load_average_after: f64,
    pub elapsed_s: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub date: String,
    pub machine: Machine,
    /// Katran's figures the rows are compared with.
    pub katran: &'static KatranReference,
    /// Whether `katran` was measured on this machine's kind (by CPU vendor).
    pub katran_same_kind: bool,
    /// The measured meshlb_xdp as loaded.
    pub program: Option<ProgramSize>,
    pub params: Params,
    pub classes: Vec<ClassResult>,
    pub scaling: Vec<ScalingResult>,
    pub single_shot: Vec<SingleShotResult>,
    /// Differences between medians that say what a piece costs.
    pub derived: Vec<(String, f64)>,
    pub notes: Vec<String>,
}

/// (min, median, max); the median of an even count is the mean of the middle two.
fn spread(values: &[f64]) -> (f64, f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (v[0], median, v[n - 1])
}

/// An integer without decimals, anything else with one.
fn ns(v: f64) -> String {
    if v.is_nan() {
        "—".into()
    } else if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Differences between medians (`m` gives a class's) that say what a piece costs, each beside
/// Katran's figure for it where the reference has one.
fn derived_rows(m: impl Fn(&str) -> f64, k: &KatranReference) -> Vec<(String, f64)> {
    let harness_overhead = m("harness-tx") - m("floor-tx-direct");
    vec![
        (
            format!(
                "harness overhead: (harness -> parse/TX floor) - (parse/TX floor direct); Katran {}",
                ns(k.harness_overhead())
            ),
            harness_overhead,
        ),
        (
            "one bpf_fib_lookup (IPv4, neighbour resolved): (fib floor) - (parse/TX floor)".into(),
            m("floor-fib-direct") - m("floor-tx-direct"),
        ),
        (
            "hand-off in the harness: (harness -> hand-off floor) - (harness -> XDP_PASS floor)".into(),
            m("harness-handoff") - m("harness-pass"),
        ),
        (
            "vary mode: (harness vary floor) - (harness floor)".into(),
            m("harness-vary-floor") - m("harness-floor"),
        ),
        (
            format!(
                "established flow, direct-equivalent: established (harness) - harness overhead; Katran ≈{} (its harness row less the harness and the undoing of its encapsulation)",
                ns(k.lru_hit_direct_equivalent())
            ),
            m("established") - harness_overhead,
        ),
        (
            format!(
                "established flow above the XDP_PASS floor (direct-equivalent - floor); Katran ≈{}",
                ns(k.lru_hit_direct_equivalent() - k.pass_direct)
            ),
            m("established") - harness_overhead - m("floor-pass-direct"),
        ),
        (
            "TC hand-off instead of XDP_REDIRECT, XDP part only (the TC hand-off then costs an skb, the TC program and bpf_redirect_neigh, which test-run does not show): established-tc - established".into(),
            m("established-tc") - m("established"),
        ),
        (
            format!(
                "non-VIP pass-through above the XDP_PASS floor (direct); Katran ≈{}",
                ns(k.non_vip_direct - k.pass_direct)
            ),
            m("pass-through-direct") - m("floor-pass-direct"),
        ),
        (
            "new flow (Maglev) over an established flow: new-flow - established - vary cost".into(),
            m("new-flow") - m("established") - (m("harness-vary-floor") - m("harness-floor")),
        ),
        (
            "round-robin new flow - Maglev new flow".into(),
            m("new-flow-rr") - m("new-flow"),
        ),
    ]
}

impl Report {
    pub(super) fn new(
        args: &MicroArgs,
        machine: Machine,
        (katran, katran_same_kind): (&'static KatranReference, bool),
        load_before: f64,
        load_after: f64,
        outcome: Outcome,
    ) -> Self {
        let median = |key: &str| {
            outcome
                .classes
                .iter()
                .find(|c| c.key == key)
                .map_or(f64::NAN, |c| c.median)
        };
        let scaling: Vec<ScalingResult> = outcome
            .classes
            .iter()
            .filter_map(|c| {
                let (base, variant) = c.baseline.clone()?;
                let baseline_median = median(base);
                let ratio = c.median / baseline_median;
                Some(ScalingResult {
                    key: c.key.clone(),
                    path: match base {
                        "established" => "established flow (harness) -> XDP_REDIRECT".into(),
                        SPREAD_BASELINE => {
                            "established flows, every packet another (harness vary) -> XDP_REDIRECT"
                                .into()
                        }
                        TRACKED_FLOOR => {
                            "tracked floor, same flow (harness) -> XDP_REDIRECT".into()
                        }
                        TRACKED_SPREAD_BASELINE => {
                            "tracked floor, every packet another (harness vary) -> XDP_REDIRECT"
                                .into()
                        }
                        _ => "non-VIP pass-through (direct)".into(),
                    },
                    variant,
                    baseline_key: base,
                    baseline_median,
                    median: c.median,
                    ratio,
                    bound: c.bound,
                    within_bound: ratio <= c.bound,
                })
            })
            .collect();
        let derived = derived_rows(median, katran);
        let mut notes = vec![
            "IPv6 rows: 80-byte frames (40-byte IPv6 header; client [fd00:1::2]:31337, VIP [fd00:100::1]:80, 16 backends fd00:2::a-19 port 8080, non-VIP fd00:100::99), through the 80-byte variant of the same harness; the Katran reference has no IPv6 figures to compare with.".to_owned(),
            "Every run was verified: the return value, the bytes out (DNAT to one of the 16 backends with checksums recomputed from scratch, MACs from the FIB for XDP_REDIRECT, the hand-off to TC over the MACs naming the backend-side interface, untouched packets byte for byte) and meshlb's own counters (each path counter moved by exactly the iteration count, every other counter by 0).".to_owned(),
            "Tracked floor rows: `bench pps`' tracked floor (lb-ebpf's `sink.rs`), the least a balancer that tracks flows does per packet: one lookup of the IPv4 5-tuple (a 16-byte key, an 8-byte value) in an LRU hash table of as many entries as meshlb's connection table, a new flow inserted, destination address and port rewritten with incremental checksums, MACs set, redirected. Each row has a table of its own; its spread rows' tables hold exactly the flows the harness cycles through (one entry a flow, where meshlb holds two), filled by the pass before the rounds. Against meshlb's rows of the same flows they say what meshlb does beyond a minimal tracker, and their own ratios what the flow count costs any tracker here.".to_owned(),
            "XDP_REDIRECT rows: the backend-side veth is in TX_PORTS (`Dataplane::allow_xdp_redirect`); a non-live BPF_PROG_TEST_RUN returns XDP_REDIRECT (4) without transmitting, so these rows are the program's cost up to the redirect decision.".to_owned(),
            format!(
                "Katran's VIP rows encapsulate (IPIP, +20 B) and return XDP_TX, and its harness pays ~{} ns for the bpf_xdp_adjust_head that undoes the encapsulation; meshlb rewrites in place (DNAT) and its harness rows pay no head adjustment (the TC hand-off rows write 12 bytes over the MACs, see the hand-off floor).",
                ns(katran.adjust_head())
            ),
            format!(
                "New-flow rows: harness_vary gives every packet a new source (198.18.128.0/17 and source ports from 1024, checksums fixed), and each dataplane's connection table ({} entries, two per flow) was first filled with {} new flows, so every insert evicts (LRU steady state, as Katran's reference figures). meshlb's flood guard (unconfirmed flows in a table of their own) is part of the measured path: compare with Katran's noflood rows ({} ns at a full 4M-entry per-CPU LRU, {} ns at 500k{}).",
                thousands(u64::from(args.conntrack_entries)),
                thousands(u64::from(outcome.fill_iterations)),
                ns(katran.new_flow_4m),
                ns(katran.new_flow_500k),
                katran.new_flow_1k
                    .map_or(String::new(), |v| format!(", {} ns at 1k", ns(v)))
            ),
            format!(
                "Scaling dataplanes: extra services have one backend each and a 101-slot Maglev table (VIPs in 198.19.128.0/17); the measured service keeps 16 backends and the default 16,381-slot table. Their frontends, backends and backend endpoints are all loaded; their selection tables are not (apart from a timed sample, see below), because neither measured path reads them and each one costs an RCU grace period to load. Prefilled flows were inserted from userspace (forward and reply entry each) into the default-sized table. Spread rows (issue 16's cold flows): each table holds N prefilled flows (its own dataplane; the largest is the prefilled one above) and harness_vary cycles through exactly those N (its VARY_CYCLE span), so every packet is another established flow, {}; one pass over them in insertion order before the rounds cached their routes (and filled the tracked floors' tables), and a flow seen again after more than a second looks its route up again, as in service.",
                match args.spread_order {
                    super::SpreadOrder::Scattered => "visited scattered (flow i·s mod N, s coprime near 0.618 N) rather than in the order the tables took them and laid them out (`--spread-order scattered`)",
                    super::SpreadOrder::Inserted => "visited in the order the tables took them, each entry's neighbour in memory next (`--spread-order inserted`, the method before 2026-12-08: it flatters every table's cold figures)",
                }
            ),
            "Single-shot rows: repeat = 1 per BPF_PROG_TEST_RUN call, the mean of the kernel-reported per-call durations (quantised to about 10 ns on this VM kind), Katran's own perf method; every call includes the test-run set-up, so these are not comparable with the repeat rows.".to_owned(),
            "The kernel reports the mean per iteration as an integer number of ns (it divides its total by repeat, and leaves out time the thread was rescheduled); 'wall' is the whole syscall's wall-clock time divided by repeat, a cross-check that includes preemption and, with repeat > 1, about 10 ms per call for switching the XDP dispatcher to the program (about 1 ns per packet at repeat = 10,000,000).".to_owned(),
        ];
        if let Some(c) = outcome.table_cost {
            notes.push(format!(
                "Selection tables, timed on the way: `Dataplane::apply` built and swapped in {} sampled tables at {:.2} ms each (the Maglev fill, the kernel array, and the swap into the array of maps, 64 per call, each call waiting for one RCU grace period). `bench control` times the full apply of 10,000 services.",
                c.tables,
                c.ms_per_table
            ));
        }
        if let Some(note) = &outcome.cpu_note {
            notes.push(note.clone());
        }
        Self {
            date: machine::today(),
            machine,
            katran,
            katran_same_kind,
            program: outcome.program,
            params: Params {
                repeat: args.repeat,
                rounds: args.rounds,
                single_shot_calls: args.single_shot_calls,
                conntrack_entries: args.conntrack_entries,
                scale_services: args.scale_services.clone(),
                prefill_flows: args.prefill_flows,
                spread_order: args.spread_order,
                prefilled_entries: outcome.prefilled_entries,
                new_flow_fill_iterations: outcome.fill_iterations,
                selection_table_apply: outcome.table_cost,
                cpu: outcome.cpu,
                cpu_note: outcome.cpu_note,
                load_average_before: load_before,
                load_average_after: load_after,
                elapsed_s: outcome.elapsed.as_secs_f64(),
            },
            classes: outcome.classes,
            scaling,
            single_shot: outcome.single_shot,
            derived,
            notes,
        }
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        self.write_header(&mut s);
        self.write_per_packet(&mut s);
        if !self.scaling.is_empty() {
            self.write_scaling(&mut s);
        }
        if !self.single_shot.is_empty() {
            self.write_single_shot(&mut s);
        }
        let _ = writeln!(&mut s, "\n## Derived (differences of medians, ns)\n");
        for (what, v) in &self.derived {
            let _ = writeln!(&mut s, "- {what}: **{}**", ns((v * 10.0).round() / 10.0));
        }
        let _ = writeln!(&mut s, "\n## Notes\n");
        for n in &self.notes {
            let _ = writeln!(&mut s, "- {n}");
        }
        s
    }

    /// The title, the machine, the method and the program's size.
    fn write_header(&self, s: &mut String) {
        let p = &self.params;
        let mc = &self.machine;
        let _ = writeln!(
            s,
            "# meshlb XDP per-packet cost (BPF_PROG_TEST_RUN), {}\n",
            self.date
        );
        let _ = writeln!(
            s,
            "Machine: {} ({} CPUs{}), {} RAM, {}; bpf_jit_enable={}, bpf_jit_harden={}, bpf_stats_enabled={}; pinned to CPU {}.{}",
            mc.cpu_model,
            mc.cpus,
            if mc.hypervisor {
                ", virtual machine"
            } else {
                ""
            },
            mc.mem_total,
            mc.kernel,
            mc.bpf_jit_enable,
            mc.bpf_jit_harden,
            mc.bpf_stats_enabled,
            p.cpu,
            mc.git
                .as_ref()
                .map(|g| format!(" Source: {g}."))
                .unwrap_or_default()
        );
        let _ = writeln!(
            s,
            "\nMethod: as `bench/results/katran-reference.md` describes for Katran, in meshlb's address plan: 60-byte frames (client 198.18.1.2:31337, VIP 198.18.100.1:80, payload \"meshlb\"; non-VIP 198.18.100.99:80), one VIP with 16 backends (198.18.2.10-25:8080) and the default 16,381-slot Maglev table. repeat = {} per run, {} interleaved rounds; cells are min / median / max over the rounds of the kernel-reported mean ns per packet. Load average (1 min) {:.2} before, {:.2} after; the run took {:.0} s. `lb-bench bench micro` (`cargo xtask bench micro`).\n",
            thousands(u64::from(p.repeat)),
            p.rounds,
            p.load_average_before,
            p.load_average_after,
            p.elapsed_s
        );
        let _ = writeln!(
            s,
            "Katran's figures: `{}` ({}){}.\n",
            self.katran.file,
            self.katran.machine,
            if self.katran_same_kind {
                ""
            } else {
                "; no reference was taken on this machine's kind, so they compare only roughly"
            }
        );
        if let Some(prog) = &self.program {
            let _ = writeln!(
                s,
                "Program: `meshlb_xdp` as loaded: {} xlated instructions, {} B of JIT code{} (Katran's balancer: 3,018 and 13,276 B).\n",
                prog.xlated_insns
                    .map_or("?".into(), |n| thousands(u64::from(n))),
                thousands(u64::from(prog.jited_bytes)),
                prog.verified_insns.map_or(String::new(), |n| format!(
                    ", {} instructions processed by the verifier",
                    thousands(u64::from(n))
                ))
            );
        }
    }

    /// The per-packet table (every class but the scaling ones).
    fn write_per_packet(&self, s: &mut String) {
        let _ = writeln!(s, "## Per-packet cost (ns)\n");
        let _ = writeln!(
            s,
            "| Path | Measured as | retval | out B | min | median | max | wall median | Katran median ({} row) |",
            self.katran.file
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
        for c in self
            .classes
            .iter()
            .filter(|c| c.section != Section::Scaling)
        {
            let median = if matches!(
                c.key.as_str(),
                "established" | "harness-floor" | "pass-through-direct" | "new-flow"
            ) {
                format!("**{}**", ns(c.median))
            } else {
                ns(c.median)
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {:.1} | {} |",
                c.label,
                c.measured_as,
                c.retval,
                c.out_bytes,
                ns(c.min),
                median,
                ns(c.max),
                c.wall_median,
                match (c.katran_ns, c.katran_row) {
                    (Some(k), Some(row)) => format!("{} ({row})", ns(k)),
                    _ => "—".into(),
                }
            );
        }
    }

    /// The scaling table and the prefilled table's size.
    fn write_scaling(&self, s: &mut String) {
        let p = &self.params;
        let _ = writeln!(
            s,
            "\n## Scaling (median ns; each row against its baseline: flat within {FLAT_WITHIN}x of 1 service and 0 other flows; the spread rows, issue 16's cold flows, within 1.15x of 1,024 flows at 100,000 and 1.3x at more)\n"
        );
        let _ = writeln!(
            s,
            "| Path | Baseline median | Variant | min | median | max | Ratio | Bound | Within |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
        for r in &self.scaling {
            let c = self.classes.iter().find(|c| c.key == r.key);
            let (min, max) = c.map_or((f64::NAN, f64::NAN), |c| (c.min, c.max));
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {:.2} | {} | {} |",
                r.path,
                ns(r.baseline_median),
                r.variant,
                ns(min),
                ns(r.median),
                ns(max),
                r.ratio,
                r.bound,
                if r.within_bound { "yes" } else { "**no**" }
            );
        }
        if let Some(entries) = p.prefilled_entries {
            let _ = writeln!(
                s,
                "\nThe prefilled table held {} entries ({} flows, two entries each) of {}.",
                thousands(entries),
                thousands(u64::from(p.prefill_flows)),
                thousands(u64::from(p.conntrack_entries))
            );
        }
    }

    /// The single-shot table.
    fn write_single_shot(&self, s: &mut String) {
        let p = &self.params;
        let _ = writeln!(
            s,
            "\n## Single-shot (Katran's perf method: repeat = 1, {} calls per round, {} rounds; direct runs)\n",
            thousands(u64::from(p.single_shot_calls)),
            p.rounds
        );
        let _ = writeln!(
            s,
            "| Path | retval | mean: min / median / max | median of calls | µs per call (wall) | Katran mean |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        for r in &self.single_shot {
            let mut calls = r.medians_of_calls.clone();
            calls.sort_unstable();
            let wall = spread(&r.wall_us).1;
            let _ = writeln!(
                s,
                "| {} | {} | {:.1} / **{:.1}** / {:.1} | {} | {:.2} | {} |",
                r.label,
                r.retval,
                r.min,
                r.median,
                r.max,
                calls.get(calls.len() / 2).copied().unwrap_or_default(),
                wall,
                r.katran_ns.map_or("—".into(), |k| format!("{k:.1}"))
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ns, spread, thousands};

    #[test]
    fn helpers() {
        assert_eq!(spread(&[3.0, 1.0, 2.0]), (1.0, 2.0, 3.0));
        assert_eq!(spread(&[4.0, 1.0]), (1.0, 2.5, 4.0));
        assert_eq!(ns(21.0), "21");
        assert_eq!(ns(21.5), "21.5");
        assert_eq!(thousands(10_000_000), "10,000,000");
        assert_eq!(thousands(999), "999");
    }
}
