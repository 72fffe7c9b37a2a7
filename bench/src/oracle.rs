//! `lb-bench bench oracle`: the correctness oracle. Replays a flow set through meshlb,
//! changes the backend set with a SIGHUP reload of `lbd`, replays the same flows, and
//! compares where each flow went (the sink records every flow's destination) with what must
//! happen: with Maglev, every first placement equals `lbctl explain`'s; removing a backend
//! moves exactly the flows it had (UDP, `on_backend_removal: move`) and nothing else;
//! adding one moves none (connection tracking), though a stateless Maglev table alone would
//! have moved about 1/N. Round-robin: one CPU places flows within one of each other per
//! backend. Packets lost are counted at every replay. Writes
//! `bench/results/oracle-<date>.{json,md}`.

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail, ensure};
use lb_common::maps::proto;
use lb_userspace::{plan, source::file::ServiceFile};
use serde::Serialize;

use crate::traffic::{
    Limits, Traffic, default_cpu, flow_set,
    node::{Node, NodeConfig, Through, services_yaml_with},
    template::{FlowSet, Kind},
    topo::{self, PpsTopology},
};

use crate::micro::machine;

#[derive(clap::Args, Debug)]
pub struct OracleArgs {
    /// The lbd binary.
    #[arg(long, default_value = "target/release/lbd")]
    pub lbd: PathBuf,
    /// Distinct flows replayed (each sent once per replay; at most 262,144).
    #[arg(long, default_value_t = 100_000)]
    pub flows: u32,
    /// Backends before the changes.
    #[arg(long, default_value_t = 16)]
    pub backends: usize,
    /// Packets per second of a replay (bounded so that the veth rings never overflow; 0 is
    /// unlimited).
    #[arg(long, default_value_t = 500_000)]
    pub rate: u64,
    #[arg(long)]
    pub cpu: Option<usize>,
    #[arg(long, default_value = "bench/results")]
    pub out_dir: PathBuf,
    #[arg(long)]
    pub no_write: bool,
}

/// Where each flow of a replay arrived (`None`: it did not).
pub type Placement = Vec<Option<IpAddr>>;

/// A replay compared with the one before it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Moves {
    /// Flows that arrived at a different backend than before.
    pub moved: usize,
    /// Flows that had to move: their backend was removed.
    pub expected: usize,
    /// Moved although their backend stayed.
    pub moved_needlessly: usize,
    /// Stayed on a removed backend.
    pub stuck: usize,
    /// Flows that did not arrive in this replay.
    pub lost: usize,
}

/// Compares two replays of the same flows, `removed` being the backends taken out between.
pub fn compare(before: &Placement, after: &Placement, removed: &[IpAddr]) -> Moves {
    let mut m = Moves::default();
    for (b, a) in before.iter().zip(after) {
        let must_move = b.is_some_and(|b| removed.contains(&b));
        m.expected += usize::from(must_move);
        match (b, a) {
            (_, None) => m.lost += 1,
            (Some(b), Some(a)) if a != b => {
                m.moved += 1;
                m.moved_needlessly += usize::from(!must_move);
            }
            (Some(_), Some(_)) => m.stuck += usize::from(must_move),
            (None, Some(_)) => {}
        }
    }
    m
}

/// Flows per backend and the max/min ratio over `backends` (a backend with none counts as 0).
pub fn balance(placement: &Placement, backends: &[IpAddr]) -> (BTreeMap<IpAddr, usize>, f64) {
    let mut counts: BTreeMap<IpAddr, usize> = backends.iter().map(|b| (*b, 0)).collect();
    for ip in placement.iter().flatten() {
        *counts.entry(*ip).or_default() += 1;
    }
    let max = counts.values().copied().max().unwrap_or(0);
    let min = counts.values().copied().min().unwrap_or(0);
    let ratio = if min == 0 {
        f64::INFINITY
    } else {
        max as f64 / min as f64
    };
    (counts, ratio)
}

/// Flows whose placement differs from the prediction (flows that did not arrive excluded).
pub fn mispredicted(placement: &Placement, predicted: &[IpAddr]) -> usize {
    placement
        .iter()
        .zip(predicted)
        .filter(|(p, e)| p.is_some_and(|p| p != **e))
        .count()
}

#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub what: String,
    pub backends: usize,
    pub moves: Option<Moves>,
    /// Maglev: flows placed elsewhere than `lbctl explain` says (new placements only).
    pub mispredicted: Option<usize>,
    /// Maglev: flows a stateless table swap alone would move (old table vs new).
    pub stateless_would_move: Option<usize>,
    pub max_min_flows_per_backend: f64,
    pub lost_packets: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct SchedulerResult {
    pub scheduler: String,
    pub steps: Vec<Step>,
}

#[derive(Clone, Debug, Serialize)]
pub struct OracleReport {
    pub date: String,
    pub machine: machine::Machine,
    pub flows: u32,
    pub backends: usize,
    pub schedulers: Vec<SchedulerResult>,
}

/// Maglev's choice for every flow of `set` under `yaml`, from the same planner lbd uses.
fn predict(yaml: &str, set: &FlowSet) -> Result<Vec<IpAddr>> {
    let file = ServiceFile::parse(yaml, std::path::Path::new("oracle.yaml"))?;
    let plan = plan::plan(&file, &plan::NodeFacts::default())?;
    (0..set.flows)
        .map(|k| match plan.explain(proto::UDP, set.source(k), set.dst) {
            plan::Explanation::Maglev { backend, .. } => Ok(backend.ip()),
            other => bail!("flow {k}: expected a Maglev choice, got {other}"),
        })
        .collect()
}

struct Replayer<'a> {
    topo: &'a PpsTopology,
    traffic: &'a mut Traffic,
    set: FlowSet,
    frame: Vec<u8>,
    cpu: usize,
    rate: u64,
}

impl Replayer<'_> {
    /// Sends every flow once; returns where each arrived and the packets lost.
    fn replay(&mut self) -> Result<(Placement, u64)> {
        self.traffic.record_flows(true)?;
        self.frame = self.traffic.configure(&self.set)?;
        let s = self.traffic.run(
            self.topo,
            &self.frame,
            self.cpu,
            Limits {
                count: Some(u64::from(self.set.flows)),
                duration: Duration::from_secs(60),
                rate: (self.rate > 0).then_some(self.rate),
                batch: 64,
            },
            false,
        )?;
        ensure!(
            s.sent == u64::from(self.set.flows),
            "replay sent {} of {} flows within its time bound",
            s.sent,
            self.set.flows
        );
        let recorded = self.traffic.recorded_flows()?;
        let mut placement = vec![None; self.set.flows as usize];
        for (key, ip) in recorded {
            if let Some(k) = self.set.flow_of_sink_key(key) {
                placement[k as usize] = Some(ip);
            }
        }
        self.traffic.record_flows(false)?;
        Ok((placement, s.lost()))
    }
}

pub fn run(args: &OracleArgs) -> Result<()> {
    ensure!(
        (1..=262_144).contains(&args.flows),
        "--flows must be 1..=262144 (the sink's flow table)"
    );
    ensure!(args.backends >= 2, "--backends must be at least 2");
    ensure!(
        args.lbd.exists(),
        "{} does not exist: run `cargo xtask build`",
        args.lbd.display()
    );
    let cpu = default_cpu(args.cpu);
    let topo = PpsTopology::new()?;
    let mut traffic = Traffic::load()?;
    traffic.attach(&topo)?;
    let set = flow_set(Through::Meshlb, Kind::Udp, false, args.flows, 60);
    let mut schedulers = Vec::new();
    for scheduler in ["maglev", "round-robin"] {
        let mut replayer = Replayer {
            topo: &topo,
            traffic: &mut traffic,
            set: set.clone(),
            frame: Vec::new(),
            cpu,
            rate: args.rate,
        };
        schedulers.push(run_scheduler(args, &mut replayer, scheduler)?);
    }
    drop(traffic);
    drop(topo);
    let report = OracleReport {
        date: machine::today(),
        machine: machine::facts(),
        flows: args.flows,
        backends: args.backends,
        schedulers,
    };
    let md = render_markdown(&report);
    println!("\n{md}");
    if !args.no_write {
        let base = crate::results::write(
            &args.out_dir,
            &format!("oracle-{}", report.date),
            &report,
            &md,
        )?;
        println!("oracle: wrote {}.{{json,md}}", base.display());
    }
    let bad: usize = report
        .schedulers
        .iter()
        .flat_map(|s| &s.steps)
        .map(|s| {
            s.moves
                .as_ref()
                .map_or(0, |m| m.moved_needlessly + m.stuck + m.lost)
                + s.mispredicted.unwrap_or(0)
        })
        .sum();
    ensure!(
        bad == 0,
        "the oracle found {bad} flows that went where they must not (see the table)"
    );
    Ok(())
}

/// One scheduler: a first replay, then a backend removed and one added, each followed by a
/// replay of every flow.
fn run_scheduler(
    args: &OracleArgs,
    replayer: &mut Replayer<'_>,
    scheduler: &str,
) -> Result<SchedulerResult> {
    println!(
        "oracle: {scheduler}, {} flows, {} backends",
        args.flows, args.backends
    );
    let initial: Vec<usize> = (0..args.backends).collect();
    // Remove one backend in the middle, then add a new one.
    let removed_index = args.backends / 2;
    let after_removal: Vec<usize> = initial
        .iter()
        .copied()
        .filter(|&i| i != removed_index)
        .collect();
    let mut after_add = after_removal.clone();
    after_add.push(args.backends);
    let config = NodeConfig {
        backends: args.backends,
        scheduler: scheduler.to_owned(),
        extra_services: 0,
        backend_indices: Some(initial.clone()),
        lbd: args.lbd.clone(),
        conntrack_entries: Some((4 * args.flows).next_power_of_two().max(65_536)),
    };
    let topo = replayer.topo;
    let mut node = Node::start(Through::Meshlb, topo, replayer.traffic, &config)?;
    let result = (|| -> Result<Vec<Step>> {
        let maglev = scheduler == "maglev";
        let mut steps = Vec::new();
        let (first, lost) = replayer.replay()?;
        let (_, ratio) = balance(&first, &addrs(&initial));
        let predicted = if maglev {
            Some(predict(
                &services_yaml_with(&initial, scheduler, 0),
                &replayer.set,
            )?)
        } else {
            None
        };
        steps.push(Step {
            what: format!("first replay, {} backends", initial.len()),
            backends: initial.len(),
            moves: None,
            mispredicted: predicted.as_ref().map(|p| mispredicted(&first, p)),
            stateless_would_move: None,
            max_min_flows_per_backend: ratio,
            lost_packets: lost,
        });
        let mut before = (first, initial.clone());
        let removed_ip = topo::backend_addr(removed_index, false);
        for (what, indices, removed) in [
            (
                format!("remove {removed_ip}"),
                &after_removal,
                vec![removed_ip],
            ),
            (
                format!("add {}", topo::backend_addr(args.backends, false)),
                &after_add,
                vec![],
            ),
        ] {
            let change = Change {
                scheduler,
                what,
                indices,
                removed: &removed,
            };
            let (step, after) = change_step(&mut node, replayer, &change, &before)?;
            steps.push(step);
            before = (after, indices.clone());
        }
        Ok(steps)
    })();
    let stopped = node.stop(topo, replayer.traffic);
    let steps = result?;
    stopped?;
    Ok(SchedulerResult {
        scheduler: scheduler.to_owned(),
        steps,
    })
}

/// The backends at `indices`.
fn addrs(indices: &[usize]) -> Vec<IpAddr> {
    indices
        .iter()
        .map(|&i| topo::backend_addr(i, false))
        .collect()
}

/// A change of the backend set: to `indices`, `removed` leaving.
struct Change<'a> {
    scheduler: &'a str,
    what: String,
    indices: &'a Vec<usize>,
    removed: &'a [IpAddr],
}

/// Reloads lbd with the changed backend set, replays every flow and says how they moved
/// against the placement (and backend set) `before`; the step and the new placement.
fn change_step(
    node: &mut Node,
    replayer: &mut Replayer<'_>,
    change: &Change<'_>,
    before: &(Placement, Vec<usize>),
) -> Result<(Step, Placement)> {
    let Change {
        scheduler,
        what,
        indices,
        removed,
    } = change;
    let (before, before_indices) = before;
    let yaml = |indices: &[usize]| services_yaml_with(indices, scheduler, 0);
    let node_lbd = node.lbd().context("meshlb runs lbd")?;
    let answer = node_lbd.reload(&yaml(indices))?;
    ensure!(answer.contains("reloaded"), "lbd did not reload: {answer}");
    let (after, lost) = replayer.replay()?;
    let moves = compare(before, &after, removed);
    // Balance over the backends that were there before too: a backend just added gets no
    // tracked flow, by design.
    let kept: Vec<usize> = indices
        .iter()
        .copied()
        .filter(|i| before_indices.contains(i))
        .collect();
    let (_, ratio) = balance(&after, &addrs(&kept));
    let (mispredicted_moves, stateless) = if *scheduler == "maglev" {
        let old = predict(&yaml(before_indices), &replayer.set)?;
        let new = predict(&yaml(indices), &replayer.set)?;
        // Only flows that had to move take a new placement: those must follow the new table.
        let moved: Placement = before
            .iter()
            .zip(&after)
            .map(|(b, a)| {
                if b.is_some_and(|b| removed.contains(&b)) {
                    *a
                } else {
                    None
                }
            })
            .collect();
        (
            Some(mispredicted(&moved, &new)),
            Some(old.iter().zip(&new).filter(|(o, n)| o != n).count()),
        )
    } else {
        (None, None)
    };
    println!(
        "oracle: {scheduler}: {what}: {} moved (expected {}), {} needlessly, {} stuck, {} flows lost, {lost} packets lost",
        moves.moved, moves.expected, moves.moved_needlessly, moves.stuck, moves.lost
    );
    let step = Step {
        what: what.clone(),
        backends: indices.len(),
        moves: Some(moves),
        mispredicted: mispredicted_moves,
        stateless_would_move: stateless,
        max_min_flows_per_backend: ratio,
        lost_packets: lost,
    };
    Ok((step, after))
}

pub fn render_markdown(r: &OracleReport) -> String {
    let mut md = format!(
        "### Correctness oracle: {} UDP flows, {} backends, reloads through SIGHUP\n\n| scheduler | step | flows moved (expected) | moved needlessly / stuck / lost flows | placed unlike `lbctl explain` | a stateless Maglev swap would move | max/min flows per kept backend | packets lost |\n|---|---|---|---|---|---|---|---|\n",
        r.flows, r.backends
    );
    for s in &r.schedulers {
        for step in &s.steps {
            let moves = step.moves.as_ref().map_or("—".to_owned(), |m| {
                format!("{} ({})", m.moved, m.expected)
            });
            let bad = step.moves.as_ref().map_or("—".to_owned(), |m| {
                format!("{} / {} / {}", m.moved_needlessly, m.stuck, m.lost)
            });
            let opt = |v: Option<usize>| v.map_or("—".to_owned(), |v| v.to_string());
            md.push_str(&format!(
                "| {} | {} | {moves} | {bad} | {} | {} | {:.3} | {} |\n",
                s.scheduler,
                step.what,
                opt(step.mispredicted),
                opt(step.stateless_would_move),
                step.max_min_flows_per_backend,
                step.lost_packets
            ));
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn compare_counts_each_kind_of_move() {
        let (a, b, c) = (ip("198.18.16.1"), ip("198.18.16.2"), ip("198.18.16.3"));
        let before = vec![Some(a), Some(a), Some(b), Some(b), Some(c), None];
        let after = vec![Some(b), Some(a), Some(b), Some(c), None, Some(a)];
        let m = compare(&before, &after, &[a]);
        assert_eq!(
            m,
            Moves {
                moved: 2,    // flow 0 (had to), flow 3 (needlessly)
                expected: 2, // flows 0 and 1 were on a
                moved_needlessly: 1,
                stuck: 1, // flow 1 stayed on a
                lost: 1,  // flow 4
            }
        );
        assert_eq!(compare(&before, &before, &[]).moved, 0);
    }

    #[test]
    fn markdown_has_a_row_per_step() {
        let r = OracleReport {
            date: "2026-01-02".into(),
            machine: machine::facts(),
            flows: 10,
            backends: 2,
            schedulers: vec![SchedulerResult {
                scheduler: "maglev".into(),
                steps: vec![
                    Step {
                        what: "first replay".into(),
                        backends: 2,
                        moves: None,
                        mispredicted: Some(0),
                        stateless_would_move: None,
                        max_min_flows_per_backend: 1.5,
                        lost_packets: 0,
                    },
                    Step {
                        what: "remove 198.18.16.2".into(),
                        backends: 1,
                        moves: Some(Moves {
                            moved: 4,
                            expected: 4,
                            moved_needlessly: 0,
                            stuck: 0,
                            lost: 1,
                        }),
                        mispredicted: Some(0),
                        stateless_would_move: Some(5),
                        max_min_flows_per_backend: 1.0,
                        lost_packets: 1,
                    },
                ],
            }],
        };
        let md = render_markdown(&r);
        assert!(
            md.contains("| maglev | first replay | — | — | 0 | — | 1.500 | 0 |"),
            "{md}"
        );
        assert!(
            md.contains("| maglev | remove 198.18.16.2 | 4 (4) | 0 / 0 / 1 | 0 | 5 | 1.000 | 1 |"),
            "{md}"
        );
    }

    #[test]
    fn balance_counts_empty_backends() {
        let (a, b, c) = (ip("198.18.16.1"), ip("198.18.16.2"), ip("198.18.16.3"));
        let p = vec![Some(a), Some(a), Some(b), None];
        let (counts, ratio) = balance(&p, &[a, b]);
        assert_eq!(counts[&a], 2);
        assert_eq!(ratio, 2.0);
        assert_eq!(balance(&p, &[a, b, c]).1, f64::INFINITY);
    }

    #[test]
    fn mispredicted_skips_flows_that_did_not_arrive() {
        let (a, b) = (ip("198.18.16.1"), ip("198.18.16.2"));
        assert_eq!(mispredicted(&vec![Some(a), None, Some(a)], &[a, b, b]), 1);
    }
}
