//! The pps report as Markdown: contenders, targets, scaling points.

use super::*;

fn fmt_spread(s: &Spread, digits: usize) -> String {
    format!(
        "{:.d$} / **{:.d$}** / {:.d$}",
        s.min,
        s.median,
        s.max,
        d = digits
    )
}

/// The markdown table of a report.
pub fn render_markdown(r: &PpsReport) -> String {
    let mut md = String::new();
    md.push_str(&format!(
        "### Packet rate through the node ({}, {} CPUs, {})\n\n",
        r.machine.cpu_model, r.machine.cpus, r.machine.kernel
    ));
    md.push_str("| Contender | delivered Mpps min / **median** / max | ceiling right before and after, per round (Mpps) | lost | max/min per backend | CPU busy, least of its runs |\n|---|---|---|---|---|---|\n");
    for c in &r.contenders {
        let around = if c.ceiling_around_mpps.is_empty() {
            "— (mean of its runs in the round)".to_owned()
        } else {
            c.ceiling_around_mpps
                .iter()
                .map(|x| format!("{x:.3}"))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        md.push_str(&format!(
            "| {} | {} | {around} | {} | {} | {} |\n",
            c.name,
            fmt_spread(&c.spread, 3),
            c.lost,
            c.max_min_share
                .map_or("—".to_owned(), |x| format!("{x:.2}")),
            c.cpu_busy_min
                .map_or("—".to_owned(), |x| format!("{:.1} %", x * 100.0))
        ));
    }
    for c in r.contenders.iter().filter(|c| c.lost > 0) {
        let drops: Vec<String> = c
            .veth_drops
            .iter()
            .map(|(counter, n)| format!("`{counter}` {n}"))
            .collect();
        md.push_str(&format!(
            "\n{} lost {}: {}.\n",
            c.name,
            c.lost,
            if drops.is_empty() {
                "no veth counted a drop or error".to_owned()
            } else {
                format!("the veths counted {}", drops.join(", "))
            }
        ));
    }
    md.push_str(
        "\n| Ratio, same round | min / **median** / max | target | met |\n|---|---|---|---|\n",
    );
    for t in &r.targets {
        let met = if t.what.contains("no target") {
            "—".to_owned()
        } else if t.met_median && t.met_min {
            "yes, every round".to_owned()
        } else if t.met_median {
            "median only".to_owned()
        } else {
            "**no**".to_owned()
        };
        let target = if t.what.contains("no target") {
            "—".to_owned()
        } else if t.round_floor != t.target {
            format!("≥ {} (every round ≥ {})", t.target, t.round_floor)
        } else {
            format!("≥ {}", t.target)
        };
        md.push_str(&format!(
            "| {} | {} | {target} | {met} |\n",
            t.what,
            fmt_spread(&t.spread, 2)
        ));
    }
    if !r.scaling.is_empty() {
        md.push_str("\n| meshlb scaling | Mpps median | baseline Mpps median | slowdown min / **median** / max | flat within 1.2× | new flows while measured, most of a round | ceiling slowdown, same flow sets | tracked floor slowdown, same flow sets | nftables DNAT slowdown, same flow sets |\n|---|---|---|---|---|---|---|---|---|\n");
        for p in &r.scaling {
            let m = Spread::of(&p.mpps).map_or(f64::NAN, |s| s.median);
            let b = Spread::of(&p.baseline_mpps).map_or(f64::NAN, |s| s.median);
            md.push_str(&format!(
                "| {} | {m:.3} | {b:.3} | {} | {} | {} | {} | {} | {} |\n",
                p.what,
                fmt_spread(&p.slowdown, 2),
                if p.slowdown.median <= 1.2 {
                    "yes"
                } else {
                    "**no**"
                },
                match (p.new_flows.iter().max(), p.replay_new_flows.iter().max()) {
                    (None, _) => "—".to_owned(),
                    (Some(n), None) => n.to_string(),
                    (Some(n), Some(r)) => format!("{n}; {r} when all were sent again after it"),
                },
                p.ceiling_slowdown
                    .as_ref()
                    .map_or("—".to_owned(), |c| fmt_spread(c, 2)),
                p.floor_slowdown
                    .as_ref()
                    .map_or("—".to_owned(), |c| fmt_spread(c, 2)),
                match (&p.nft_slowdown, &p.nft_not_measured) {
                    (Some(n), _) => fmt_spread(n, 2),
                    (None, Some(why)) => format!("not measured: {why}"),
                    (None, None) => "—".to_owned(),
                },
            ));
        }
        for p in r.scaling.iter().filter(|p| !p.floor_mpps.is_empty()) {
            let floor = extra_ns(&p.floor_mpps, &p.floor_baseline_mpps);
            let others = if p.nft_mpps.is_empty() {
                format!(" and the tracked floor {floor:.0} ns longer")
            } else {
                format!(
                    ", the tracked floor {floor:.0} ns longer and nftables DNAT {:.0} ns longer",
                    extra_ns(&p.nft_mpps, &p.nft_baseline_mpps)
                )
            };
            md.push_str(&format!(
                "\n{}: every packet takes meshlb {:.0} ns longer than with the baseline's flows{others} (medians over rounds of 1/point − 1/baseline).\n",
                p.what,
                extra_ns(&p.mpps, &p.baseline_mpps),
            ));
        }
    }
    md.push_str(&format!(
        "\n{} interleaved rounds of {} s per contender after a warm-up, every contender between two runs of the redirect-only ceiling (the others' order rotating); {} {} flows of {} bytes from `BPF_PROG_TEST_RUN` live frames (batch 64), one service with {} backends (Maglev); generator, node and sink on CPU {}. Load average {:.2} before, {:.2} after. `cargo xtask bench pps`.\n",
        r.rounds, r.seconds, r.flows, r.kind.name(), r.size, r.backends, r.cpu, r.load_before, r.load_after
    ));
    md
}
