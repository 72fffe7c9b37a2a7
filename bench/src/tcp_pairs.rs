//! The paired TCP measurement shared by `bench tcp`'s swarm and host-local cases: one way
//! through meshlb, held against the direct way in the same round, the two interleaved in
//! quarter-second slices (this VM's speed drifts by more than the targets' margins within
//! seconds). Short connections per second (each closed by a reset: see `tcp::Close`), then
//! keep-alive requests per second, after a warm-up of each way.

use std::net::SocketAddr;

use anyhow::{Result, bail};

use crate::{
    micro::machine,
    pps::Target,
    tcp::{
        Clients, Close, ContenderResult, Count, TcpArgs, TcpReport, WARMUP_SECONDS, connections,
        keepalive, render_markdown,
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

/// How long each way runs before the other takes over. This VM's speed drifts within
/// seconds; slices this short put both ways through the same drift, where a whole measurement
/// of one way right before the other's does not. Each keep-alive slice opens its own
/// connections, so many slices also average over where the scheduler puts them.
const SLICE_SECONDS: f64 = 0.25;

/// Both ways of one figure (`run_for` is `connections` or `keepalive`), interleaved in
/// [`SLICE_SECONDS`] slices for `seconds` each. Slices come in blocks of four, direct and
/// through in the order ABBA or BAAB, drawn at random per block: each block cancels a steady
/// drift, and the draw keeps a periodic disturbance (lbd's and dockerd's polls) from always
/// landing on the same way. Returns (direct, through).
fn interleaved(
    clients: &Clients<'_>,
    direct: SocketAddr,
    through: SocketAddr,
    seconds: f64,
    run_for: fn(&Clients<'_>, SocketAddr, f64) -> Result<Count>,
) -> Result<(Count, Count)> {
    let slices = (seconds / SLICE_SECONDS).ceil().max(1.0) as usize;
    let slice = seconds / slices as f64;
    let mut draw = Draw::from_clock();
    let mut direct_first = true;
    let (mut d, mut t) = (Count::default(), Count::default());
    for i in 0..slices {
        match i % 4 {
            0 => direct_first = draw.coin(),
            2 => direct_first = !direct_first,
            _ => {}
        }
        let order = if direct_first {
            [(direct, &mut d), (through, &mut t)]
        } else {
            [(through, &mut t), (direct, &mut d)]
        };
        for (target, total) in order {
            let c = run_for(clients, target, slice)?;
            total.ok += c.ok;
            total.errors += c.errors;
            total.seconds += c.seconds;
        }
    }
    for (target, c) in [(direct, &d), (through, &t)] {
        if c.ok == 0 {
            bail!("{target}: no exchange succeeded ({} errors)", c.errors);
        }
    }
    Ok((d, t))
}

/// A coin for the slice order (xorshift64, seeded from the clock): nothing here needs more.
struct Draw(u64);

impl Draw {
    fn from_clock() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Self(nanos | 1)
    }

    fn coin(&mut self) -> bool {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 >> 63 == 1
    }
}

/// The line a paired case starts with: the machine and what it will measure.
pub fn announce(case: &Case, args: &TcpArgs) {
    let machine = machine::facts();
    println!(
        "{}: {} ({} CPUs); {} rounds of direct and {} interleaved, {} s connections + {} s keep-alive each way, {} client threads",
        case.tag,
        machine.cpu_model,
        machine.cpus,
        args.rounds,
        case.through_short,
        args.seconds(),
        args.seconds(),
        args.clients
    );
}

/// Measures `args.rounds` rounds, each both ways interleaved (short connections, then
/// keep-alive), prints and (unless `--no-write`) writes the report; fails when a round misses
/// the case's target.
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
    for target in [direct, through] {
        connections(clients, target, WARMUP_SECONDS, Close::Reset)?;
    }
    for round in 0..args.rounds {
        let (dc, tc) = interleaved(clients, direct, through, args.seconds(), |c, t, s| {
            connections(c, t, s, Close::Reset)
        })?;
        let (dk, tk) = interleaved(clients, direct, through, args.seconds(), keepalive)?;
        println!(
            "{}: round {round}: direct {:.0}/{:.0}, {} {:.0}/{:.0} (connections/s / keep-alive requests/s)",
            case.tag,
            dc.rate(),
            dk.rate(),
            case.through_short,
            tc.rate(),
            tk.rate()
        );
        direct_result.connections_per_s.push(dc.rate());
        direct_result.requests_per_s.push(dk.rate());
        direct_result.errors += dc.errors + dk.errors;
        meshlb.connections_per_s.push(tc.rate());
        meshlb.requests_per_s.push(tk.rate());
        meshlb.direct_connections_per_s.push(dc.rate());
        meshlb.direct_requests_per_s.push(dk.rate());
        meshlb.errors += tc.errors + tk.errors;
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
        seconds: args.seconds(),
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
        .replace("{seconds}", &args.seconds().to_string());
    let md = match md.split_once('\n') {
        Some((first, rest)) if first.starts_with("###") => format!("### {heading}\n{rest}"),
        _ => md,
    };
    println!("\n{md}");
    if !args.no_write {
        let base = crate::results::write(
            &args.out_dir,
            &format!("{}-{}", case.file_stem, report.date),
            &report,
            &md,
        )?;
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
