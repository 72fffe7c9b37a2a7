//! The paired TCP measurement shared by `bench tcp`'s swarm and host-local cases: one way
//! through meshlb, held against the direct way measured right before and right after it in
//! the same round (this VM's speed drifts by more than the targets' margins within a minute).
//! Short connections per second and keep-alive requests per second, each after a warm-up.

use std::net::SocketAddr;

use anyhow::{Result, bail};

use crate::{
    micro::machine,
    pps::Target,
    tcp::{
        Clients, ContenderResult, TcpArgs, TcpReport, WARMUP_SECONDS, connections, keepalive,
        render_markdown,
    },
};

/// What a paired case is called and held to.
pub struct Case {
    /// Log prefix, e.g. `tcp --swarm`.
    pub tag: &'static str,
    /// Results file stem, e.g. `tcp-swarm` (`<stem>-<date>.{json,md}`).
    pub file_stem: &'static str,
    /// The report's heading, after `### `; `{clients}` and `{seconds}` are filled in.
    pub heading: &'static str,
    pub direct_name: &'static str,
    pub through_name: &'static str,
    /// The way through, short, for the ratio rows (`published`, `VIP`).
    pub through_short: &'static str,
    /// Least ratio to direct, in every round, for both figures.
    pub target: f64,
}

/// (connections/s, keep-alive requests/s, errors) of one measurement.
fn measure(clients: &Clients<'_>, target: SocketAddr, seconds: f64) -> Result<(f64, f64, u64)> {
    connections(clients, target, WARMUP_SECONDS)?;
    let c = connections(clients, target, seconds)?;
    let k = keepalive(clients, target, seconds)?;
    if c.ok == 0 || k.ok == 0 {
        bail!(
            "{target}: no exchange succeeded ({} and {} errors)",
            c.errors,
            k.errors
        );
    }
    Ok((c.rate(), k.rate(), c.errors + k.errors))
}

/// Measures `args.rounds` rounds of direct / through / direct, prints and (unless
/// `--no-write`) writes the report; fails when a round misses the case's target.
pub fn run(
    case: &Case,
    args: &TcpArgs,
    clients: &Clients<'_>,
    direct: SocketAddr,
    through: SocketAddr,
) -> Result<()> {
    let machine = machine::facts();
    let mut direct_result = ContenderResult::empty(case.direct_name);
    let mut meshlb = ContenderResult::empty(case.through_name);
    for round in 0..args.rounds {
        let before = measure(clients, direct, args.seconds)?;
        let via = measure(clients, through, args.seconds)?;
        let after = measure(clients, direct, args.seconds)?;
        println!(
            "{}: round {round}: direct {:.0}/{:.0}, {} {:.0}/{:.0}, direct {:.0}/{:.0} (connections/s / keep-alive requests/s)",
            case.tag, before.0, before.1, case.through_short, via.0, via.1, after.0, after.1
        );
        let mean = |a: f64, b: f64| (a + b) / 2.0;
        direct_result
            .connections_per_s
            .push(mean(before.0, after.0));
        direct_result.requests_per_s.push(mean(before.1, after.1));
        direct_result.errors += before.2 + after.2;
        meshlb.connections_per_s.push(via.0);
        meshlb.requests_per_s.push(via.1);
        meshlb
            .direct_connections_per_s
            .push(mean(before.0, after.0));
        meshlb.direct_requests_per_s.push(mean(before.1, after.1));
        meshlb.errors += via.2;
    }
    let ratio =
        |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(x, y)| x / y).collect() };
    let targets: Vec<Target> = [
        (
            format!("{} / direct, connections/s", case.through_short),
            ratio(&meshlb.connections_per_s, &meshlb.direct_connections_per_s),
        ),
        (
            format!("{} / direct, keep-alive requests/s", case.through_short),
            ratio(&meshlb.requests_per_s, &meshlb.direct_requests_per_s),
        ),
    ]
    .into_iter()
    .filter_map(|(what, ratios)| Target::new(what, ratios, case.target, true))
    .collect();
    let report = TcpReport {
        date: machine::today(),
        machine,
        rounds: args.rounds,
        seconds: args.seconds,
        clients: args.clients,
        pinned: false,
        contenders: vec![direct_result, meshlb],
        targets,
    };
    // The shared table, under a heading that says how this case was measured.
    let md = render_markdown(&report);
    let heading = case
        .heading
        .replace("{clients}", &args.clients.to_string())
        .replace("{seconds}", &args.seconds.to_string());
    let md = match md.split_once('\n') {
        Some((first, rest)) if first.starts_with("###") => format!("### {heading}\n{rest}"),
        _ => md,
    };
    println!("\n{md}");
    if !args.no_write {
        std::fs::create_dir_all(&args.out_dir)?;
        let base = args
            .out_dir
            .join(format!("{}-{}", case.file_stem, report.date));
        std::fs::write(
            base.with_extension("json"),
            serde_json::to_string_pretty(&report)?,
        )?;
        std::fs::write(base.with_extension("md"), &md)?;
        println!("{}: wrote {}.{{json,md}}", case.tag, base.display());
    }
    if report.targets.iter().any(|t| !t.met_min) {
        bail!(
            "{}: below {} of direct in some round (see the table)",
            case.tag,
            case.target
        );
    }
    Ok(())
}
