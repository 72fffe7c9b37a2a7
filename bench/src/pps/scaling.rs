//! The scaling points: the same traffic with more services, more backends, more tracked
//! flows, each against the baseline measured next to it.

use super::*;

/// The scaling points: more services, more backends, more tracked flows.
pub(super) fn scaling(
    bench: &mut Bench<'_>,
    config: &NodeConfig,
    args: &PpsArgs,
) -> Result<Vec<ScalePoint>> {
    let mut points: Vec<(String, NodeConfig, Load)> = Vec::new();
    for &n in &args.scale_services {
        points.push((
            format!("{} services", n + 2),
            NodeConfig {
                extra_services: n,
                ..config.clone()
            },
            Load::flows(args.flows),
        ));
    }
    for &b in &args.scale_backends {
        points.push((
            format!("{b} backends"),
            NodeConfig {
                backends: b,
                ..config.clone()
            },
            Load::flows(args.flows),
        ));
    }
    for &f in &args.scale_flows {
        let tracking = NodeConfig {
            conntrack_entries: Some(
                (2 * f)
                    .next_power_of_two()
                    .max(lb_common::limits::DEFAULT_CONNTRACK_ENTRIES),
            ),
            ..config.clone()
        };
        // The table holding f flows while traffic stays on the baseline's: what the number
        // of tracked flows costs (the services and backends points are measured the same
        // way: the maps grow, the traffic does not).
        if f > args.flows {
            points.push((
                format!("{f} tracked flows, traffic on {} of them", args.flows),
                tracking.clone(),
                Load {
                    tracked: f,
                    measured: args.flows,
                },
            ));
        }
        // Traffic on all f: every packet is a different flow, so what it costs is mostly
        // the memory the table's entries live in.
        points.push((
            format!("{f} tracked flows, traffic on all (each packet another flow)"),
            tracking,
            Load::flows(f),
        ));
    }
    points
        .into_iter()
        .map(|(what, point_config, load)| {
            scale_point(bench, config, args, what, &point_config, load)
        })
        .collect()
}

/// One scaling point, against the baseline measured next to it, `--scale-rounds` times.
fn scale_point(
    bench: &mut Bench<'_>,
    config: &NodeConfig,
    args: &PpsArgs,
    what: String,
    point_config: &NodeConfig,
    load: Load,
) -> Result<ScalePoint> {
    let (mut at, mut base, mut lost) = (Vec::new(), Vec::new(), 0);
    let (mut new_flows, mut replay_new_flows) = (Vec::new(), Vec::new());
    let spread_flows = load.measured != args.flows;
    // nftables keeps one conntrack entry per flow, in a table whose size only the
    // initial namespace may set (the bench leaves the machine's settings alone).
    let nft_not_measured = match (spread_flows, nf_conntrack_max()) {
        (false, _) => None,
        (true, Some(max)) if u64::from(load.tracked) <= max * 9 / 10 => None,
        (true, Some(max)) => Some(format!(
            "net.netfilter.nf_conntrack_max is {max}, under {} flows",
            load.tracked
        )),
        (true, None) => Some("no net.netfilter.nf_conntrack_max to read".to_owned()),
    };
    let mut same_sets: BTreeMap<&'static str, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for _ in 0..args.scale_rounds.max(1) {
        // The same two flow sets through the redirect-only ceiling (what the generator
        // and the veths themselves lose to the larger flow set), the tracked floor (what
        // one lookup in a table of that many flows costs at the least) and nftables DNAT
        // (what the kernel's connection tracking loses).
        let others = [
            (Through::Ceiling, spread_flows),
            (Through::Floor, spread_flows),
            (Through::Nft, spread_flows && nft_not_measured.is_none()),
        ];
        for (through, _) in others.iter().filter(|(_, run)| *run) {
            let baseline = Load::flows(args.flows);
            // The floor's table sized as meshlb's is at this point.
            let sized = if *through == Through::Floor {
                point_config
            } else {
                config
            };
            let cb = bench.measure(*through, config, baseline, args, 100_000)?;
            let cp = bench.measure(*through, sized, load, args, 100_000)?;
            println!(
                "pps: scaling {what:<22} {}, same flows {:6.3} Mpps (with {} flows {:6.3})",
                through.name(),
                cp.summary.delivered_pps() / 1e6,
                args.flows,
                cb.summary.delivered_pps() / 1e6,
            );
            let (at, base) = same_sets.entry(through.key()).or_default();
            at.push(cp.summary.delivered_pps() / 1e6);
            base.push(cb.summary.delivered_pps() / 1e6);
        }
        let b = bench
            .measure(
                Through::Meshlb,
                config,
                Load::flows(args.flows),
                args,
                100_000,
            )?
            .summary;
        let m = bench.measure(Through::Meshlb, point_config, load, args, 100_000)?;
        let p = m.summary;
        println!(
            "pps: scaling {what:<22} {:6.3} Mpps (baseline next to it {:6.3}), {} new flows while measured{}",
            p.delivered_pps() / 1e6,
            b.delivered_pps() / 1e6,
            m.new_flows.map_or("?".to_owned(), |n| n.to_string()),
            m.replay_new_flows.map_or(String::new(), |n| format!(
                ", {n} started again on replaying all {}",
                load.tracked
            )),
        );
        new_flows.extend(m.new_flows);
        replay_new_flows.extend(m.replay_new_flows);
        lost += p.lost();
        at.push(p.delivered_pps() / 1e6);
        base.push(b.delivered_pps() / 1e6);
    }
    let slowdowns: Vec<f64> = base.iter().zip(&at).map(|(b, p)| b / p).collect();
    let mut same_set = |through: Through| -> (Vec<f64>, Vec<f64>, Option<Spread>) {
        let (at, base) = same_sets.remove(through.key()).unwrap_or_default();
        let slowdowns: Vec<f64> = base.iter().zip(&at).map(|(b, p)| b / p).collect();
        (at, base, Spread::of(&slowdowns))
    };
    let (ceiling_mpps, _, ceiling_slowdown) = same_set(Through::Ceiling);
    let (nft_mpps, nft_baseline_mpps, nft_slowdown) = same_set(Through::Nft);
    let (floor_mpps, floor_baseline_mpps, floor_slowdown) = same_set(Through::Floor);
    Ok(ScalePoint {
        ceiling_slowdown,
        ceiling_mpps,
        nft_mpps,
        nft_baseline_mpps,
        nft_slowdown,
        nft_not_measured,
        floor_mpps,
        floor_baseline_mpps,
        floor_slowdown,
        what,
        slowdown: Spread::of(&slowdowns).expect("rounds >= 1"),
        mpps: at,
        baseline_mpps: base,
        lost,
        new_flows,
        replay_new_flows,
    })
}
