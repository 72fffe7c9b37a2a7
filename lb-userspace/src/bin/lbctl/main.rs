//! lbctl: meshlb's operator CLI, a client of lbd's admin API.

mod add_service;
mod backend;
mod text;

use std::{net::SocketAddr, path::PathBuf};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use hyper::Method;
use lb_common::stats::StatSlot;
use lb_userspace::{
    api::{
        ChangeResult, Explained, FlowList, Outcome, ServiceList, Status, Unhealthy,
        client::{self, Endpoint},
        report::Report,
    },
    dataplane, plan,
    source::api_state::Source,
    source::file::{Protocol, ServiceFile},
    source::settings,
};

use self::add_service::{AddService, add_service};
use self::text::{ago, encode, health_cell, print_bgp, print_swarm_details, reached_as, table};

#[derive(Parser)]
#[command(
    name = "lbctl",
    version,
    about = "meshlb operator CLI (talks to lbd's admin API)"
)]
struct Cli {
    /// lbd's admin API socket.
    #[arg(long, global = true, default_value = settings::DEFAULT_API_SOCKET)]
    api: PathBuf,
    /// Use lbd's TCP API (`lbd run --api-listen`) instead of the socket: HOST:PORT or
    /// http://HOST:PORT; needs --api-token-file.
    #[arg(long, global = true, value_parser = client::tcp_api_address, conflicts_with = "api")]
    api_url: Option<String>,
    /// File holding the TCP API's bearer token (never given on the command line); only with
    /// --api-url.
    #[arg(long, global = true, requires = "api_url")]
    api_token_file: Option<PathBuf>,
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Seconds to wait for lbd's answer before giving up (a stopped or stuck lbd, an
    /// address that drops packets).
    #[arg(long, global = true, default_value_t = 30, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// lbd's state: generation, interfaces, changes. Exits 3 when lbd answers but is not
    /// healthy (a failed change not undone, the service file refused, an interface missing,
    /// the swarm's Engine silent, BIRD not running the VIPs or without a BGP session).
    Status,
    /// Services, frontends, backends, weights and states.
    List,
    /// Make the API-managed services exactly those in FILE (idempotent); prints what changed.
    Apply {
        #[arg(long, short = 'f')]
        file: PathBuf,
    },
    /// Add a service through the API.
    AddService(AddService),
    /// Remove a service added through the API, or drop the API's kept edits of a service
    /// the file no longer defines (`lbctl list` names them).
    RemoveService { name: String },
    /// Add a backend to a service, or set its weight.
    AddBackend {
        service: String,
        /// ADDR, ADDR:PORT or [V6ADDR]:PORT.
        backend: String,
        /// Share of new flows (0 to 65535). Without it a file backend goes back to the
        /// file's weight (undoing a drain or a re-weight), an API service's keeps its own,
        /// and a new one gets 1.
        #[arg(long, value_parser = clap::value_parser!(u32)
            .range(0..=i64::from(lb_userspace::source::file::MAX_WEIGHT)))]
        weight: Option<u32>,
    },
    /// Remove a backend from a service (named as listed, or as `list` shows it).
    RemoveBackend { service: String, backend: String },
    /// Set a backend's weight to 0: no new flows; established ones continue (named as
    /// listed, or as `list` shows it: ADDR:PORT, ADDR:P1,P2).
    Drain { service: String, backend: String },
    /// Packets, bytes, new flows and current rates per service and backend.
    Stats,
    /// A sample of the connection table.
    Flows {
        /// Only this service's flows.
        service: Option<String>,
        /// Flows to show at most (the table is walked until this many are found).
        #[arg(long, default_value_t = 100,
              value_parser = clap::value_parser!(u64).range(1..=lb_userspace::api::MAX_FLOWS as u64))]
        limit: u64,
    },
    /// Which backend a flow gets and why, from lbd's live maps (or, with --config, computed
    /// offline from a service file for this node's addresses).
    Explain {
        #[arg(value_enum)]
        protocol: Protocol,
        /// Client address and port, e.g. 198.18.1.2:40000 or [fd00:1::2]:40000.
        source: SocketAddr,
        /// Frontend address and port, e.g. 198.18.100.1:80.
        destination: SocketAddr,
        /// Compute from this service file instead of asking lbd.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    // Output piped to a reader that stops early (`lbctl list | head`) ends lbctl quietly, as
    // it does other command-line tools, instead of a panic on the closed pipe.
    // SAFETY: restores the default action of one signal before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // One clear line and a non-zero exit, whatever RUST_BACKTRACE says.
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lbctl: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lbctl: {e:#}");
            match e.downcast_ref::<Unhealthy>() {
                Some(_) => std::process::ExitCode::from(Unhealthy::EXIT_CODE),
                None => std::process::ExitCode::FAILURE,
            }
        }
    }
}

fn endpoint(cli: &Cli) -> anyhow::Result<Endpoint> {
    match (&cli.api_url, &cli.api_token_file) {
        (Some(address), Some(token_file)) => {
            let token = std::fs::read_to_string(token_file)
                .with_context(|| format!("reading the token file {}", token_file.display()))?;
            let token = token.trim();
            // lbd takes no other (see its --api-token-file): said here, naming the file,
            // rather than as a refused token or a malformed header.
            if !lb_userspace::api::is_token(token) {
                bail!(
                    "{}: not an API token ({}, as in the file lbd's --api-token-file names)",
                    token_file.display(),
                    lb_userspace::api::TOKEN_RULE
                );
            }
            Ok(Endpoint::Tcp {
                address: address.clone(),
                token: token.to_owned(),
            })
        }
        (Some(_), None) => bail!("--api-url needs --api-token-file FILE"),
        (None, _) => Ok(Endpoint::Unix(cli.api.clone())),
    }
}

/// "tcp STATE" for a TCP flow; nothing for UDP (whose state is "-").
fn tcp_words(state: &str) -> Option<String> {
    (state != "-").then(|| format!("tcp {state}"))
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Explain {
        config: Some(config),
        protocol,
        source,
        destination,
    } = &cli.command
    {
        let json = cli.output == Output::Json;
        return explain_offline(config, json, *protocol, *source, *destination);
    }
    let api = endpoint(&cli)?;
    let limit = std::time::Duration::from_secs(cli.timeout);
    match tokio::time::timeout(limit, ask(&api, &cli)).await {
        Ok(answered) => answered,
        Err(_) => bail!(
            "lbd at {api} gave no answer within {limit:?} (is it stopped, or busy with a long \
             change? `systemctl status meshlb`; a slow answer needs a larger --timeout){}",
            if cli.command.changes() {
                "; the change may still be applied: see `lbctl list` before trying again"
            } else {
                ""
            }
        ),
    }
}

impl Command {
    /// Whether the command asks lbd for a change (which lbd may still make after lbctl gave
    /// up waiting).
    fn changes(&self) -> bool {
        !matches!(
            self,
            Command::Status
                | Command::List
                | Command::Stats
                | Command::Flows { .. }
                | Command::Explain { .. }
        )
    }
}

/// The command, asked of lbd at `api`.
async fn ask(api: &Endpoint, cli: &Cli) -> anyhow::Result<()> {
    let json = cli.output == Output::Json;
    match &cli.command {
        Command::Status => status(api, json).await,
        Command::List => list(api, json).await,
        Command::Apply { file } => apply(api, json, file).await,
        Command::AddService(args) => add_service(api, json, args).await,
        Command::RemoveService { name } => {
            let path = format!("/v1/services/{}", encode(name));
            let result: ChangeResult = api.json(Method::DELETE, &path, None).await?;
            report_change(&result, json, &format!("removed service {name}"))
        }
        Command::AddBackend {
            service,
            backend,
            weight,
        } => backend::change(api, json, service, "", backend, *weight).await,
        Command::RemoveBackend { service, backend } => {
            backend::change(api, json, service, "/remove", backend, None).await
        }
        Command::Drain { service, backend } => {
            backend::change(api, json, service, "/drain", backend, None).await
        }
        Command::Stats => stats(api, json).await,
        Command::Flows { service, limit } => {
            flows(api, json, service.as_deref(), *limit as usize).await
        }
        Command::Explain {
            protocol,
            source,
            destination,
            ..
        } => explain(api, json, *protocol, *source, *destination).await,
    }
}

/// `lbctl explain --config`: computed from a service file for this node's addresses and
/// connected subnets, as lbd would answer before the flow is tracked.
fn explain_offline(
    config: &std::path::Path,
    json: bool,
    protocol: Protocol,
    source: SocketAddr,
    destination: SocketAddr,
) -> anyhow::Result<()> {
    let file = ServiceFile::load(config)?;
    let node =
        dataplane::node_facts().context("reading this node's addresses and connected subnets")?;
    let plan = plan::plan(&file, &node).with_context(|| config.display().to_string())?;
    let selection = plan.explain(protocol.number(), source, destination);
    let replies = match &selection {
        plan::Explanation::Maglev { backend, .. } => Some(
            plan.reply_translation(protocol.number(), *backend)
                .to_string(),
        ),
        _ => None,
    };
    let explained = Explained {
        tracked: None,
        frontend: !matches!(selection, plan::Explanation::NotAFrontend),
        round_robin: matches!(selection, plan::Explanation::RoundRobin { .. }),
        selection: selection.to_string(),
        replies,
    };
    print_explained(&explained, json, false)
}

async fn status(api: &Endpoint, json: bool) -> anyhow::Result<()> {
    let status: Status = api.json(Method::GET, "/v1/status", None).await?;
    let healthy = || match status.problems() {
        problems if problems.is_empty() => Ok(()),
        problems => Err(Unhealthy(problems).into()),
    };
    if json {
        print_json(&status)?;
        return healthy();
    }
    println!(
        "generation {}  up {} s  config {}",
        status.generation, status.uptime_s, status.config
    );
    if let Some(why) = &status.degraded {
        println!("DEGRADED: {why}");
    }
    if let Some(refused) = &status.config_refused {
        println!(
            "REFUSED: the service file {} (for {} s; the running configuration stays until it \
             is fixed): {}",
            refused.file, refused.age_s, refused.error
        );
    }
    let rows = status
        .attachments
        .iter()
        .map(|a| {
            vec![
                a.interface.clone(),
                a.ifindex.to_string(),
                a.mode.clone(),
                a.adopted.to_string(),
                if a.is_missing() {
                    "MISSING".to_owned()
                } else {
                    a.state.clone()
                },
                a.reattached.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "INTERFACE",
            "IFINDEX",
            "MODE",
            "ADOPTED",
            "STATE",
            "REATTACHED",
        ],
        rows,
    );
    match &status.sockets {
        Some(s) => println!(
            "socket-level balancing: cgroup {} (adopted {}), sockets of network namespace {}",
            s.cgroup, s.adopted, s.netns_cookie
        ),
        None => println!("socket-level balancing: off"),
    }
    if !status.changes.is_empty() {
        let changes: Vec<String> = status
            .changes
            .iter()
            .map(|c| format!("{} {} {}", c.trigger.as_str(), c.outcome.as_str(), c.count))
            .collect();
        println!("changes since start: {}", changes.join(", "));
    }
    if let Some(s) = &status.swarm {
        let mut node = s.node_addr.map_or("-".to_owned(), |a| a.to_string());
        if let Some(mesh) = s.mesh_addr.filter(|&m| Some(m) != s.node_addr) {
            node.push_str(&format!(" (data path {mesh})"));
        }
        let age = ago(s.last_ok_age_s);
        println!(
            "swarm: Engine {} {} (last good read {age}; {} ok, {} failed), node {node}, {} services",
            s.docker_host,
            if s.engine_up {
                "answers"
            } else {
                "DOES NOT ANSWER"
            },
            s.reads_ok,
            s.reads_failed,
            s.services
        );
        if let (false, Some(e)) = (s.engine_up, &s.last_error) {
            println!("swarm: last error: {e}");
        }
        if s.tasks_stopping + s.tasks_unhealthy > 0 {
            println!(
                "swarm: {} task(s) being stopped, {} local task(s) not healthy: no new flows \
                 here (lbctl list names them)",
                s.tasks_stopping, s.tasks_unhealthy
            );
        }
        if let Some(read) = s.last_read {
            println!(
                "swarm: a read of the Engine took {} ms; the next after {} ms",
                read.took_ms, read.next_after_ms
            );
        }
        println!(
            "swarm: tasks being stopped {}",
            if s.stopping_known {
                "take no new flows here (the Engine is a manager's and says which they are)"
            } else {
                "take no new flows here once this node knows them: its own once sent their \
                 stop signal, another node's when that node's or a manager's lbd tells it \
                 (stop notices; only a manager's Engine says which they all are)"
            }
        );
        let n = &s.notices;
        match (n.listening, &n.error) {
            (Some(at), _) => println!(
                "swarm: stop notices on {at} (udp): {} sent, {} heard from other nodes, {} \
                 refused; {} task name(s) held from their word",
                n.sent, n.heard, n.refused, n.held
            ),
            (None, Some(e)) => println!("swarm: stop notices: {e}"),
            (None, None) => {}
        }
    }
    if let Some(bgp) = &status.bgp {
        print_bgp(bgp);
    }
    healthy()
}

async fn list(api: &Endpoint, json: bool) -> anyhow::Result<()> {
    let list: ServiceList = api.json(Method::GET, "/v1/services", None).await?;
    if json {
        return print_json(&list);
    }
    let mut rows = Vec::new();
    for s in &list.services {
        let source = match (s.source, s.edited) {
            (Source::Api, _) => "api",
            (Source::Swarm, _) => "swarm",
            (_, true) => "file+api",
            _ => "file",
        };
        let frontend = format!(
            "{} {}",
            s.vip.map_or("*".to_owned(), |v| v.to_string()),
            s.ports.join(",")
        );
        let head = vec![
            s.name.clone(),
            source.into(),
            frontend,
            format!("{}/{}", s.scheduler, s.forwarding),
        ];
        if s.backends.is_empty() {
            rows.push([head.clone(), vec!["-".into(); 4]].concat());
        }
        for (i, b) in s.backends.iter().enumerate() {
            let head = if i == 0 {
                head.clone()
            } else {
                vec![String::new(); 4]
            };
            rows.push(
                [
                    head,
                    vec![
                        reached_as(&b.backend, &s.ports),
                        b.weight.to_string(),
                        b.state.clone(),
                        b.health.as_ref().map_or("-".into(), health_cell),
                    ],
                ]
                .concat(),
            );
        }
    }
    table(
        &[
            "SERVICE",
            "SOURCE",
            "FRONTEND",
            "SCHEDULER/FORWARDING",
            "BACKEND",
            "WEIGHT",
            "STATE",
            "HEALTH",
        ],
        rows,
    );
    for name in &list.orphaned_edits {
        println!(
            "note: backend edits kept for {name:?}, which the service file no longer defines \
             (they apply again if it does; `lbctl remove-service {name}` drops them)"
        );
    }
    print_swarm_details(&list);
    Ok(())
}

async fn apply(api: &Endpoint, json: bool, file: &std::path::Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    // Read here first, so a mistake is named in the operator's file (lbd only sees a request
    // body); what depends on lbd's state (a name the service file uses) lbd still refuses.
    ServiceFile::parse(&text, file)?
        .only_services(&file.display().to_string())
        .map_err(anyhow::Error::msg)?;
    let result: ChangeResult = api
        .json(Method::POST, "/v1/apply", Some(text.into_bytes()))
        .await?;
    if json {
        return print_json(&result);
    }
    let c = &result.services;
    if c.is_empty() {
        println!("no change (generation {})", result.generation);
    }
    for (what, names) in [
        ("added", &c.added),
        ("changed", &c.changed),
        ("removed", &c.removed),
    ] {
        for name in names {
            println!("{what} {name}");
        }
    }
    Ok(())
}

async fn stats(api: &Endpoint, json: bool) -> anyhow::Result<()> {
    let report: Report = api.json(Method::GET, "/v1/stats", None).await?;
    if json {
        return print_json(&report);
    }
    let rate = |r: Option<f64>| r.map_or("-".to_owned(), |r| format!("{r:.1}"));
    let mut rows = Vec::new();
    let mut down_said = std::collections::BTreeSet::new();
    for s in &report.services {
        let t = &s.totals;
        rows.push(vec![
            format!("{} {} {}", s.name, s.frontend, s.family),
            String::new(),
            t.packets.to_string(),
            t.bytes.to_string(),
            t.new_flows.to_string(),
            rate(t.packets_per_s),
            rate(t.new_flows_per_s),
        ]);
        for b in &s.backends {
            let t = &b.totals;
            rows.push(vec![
                String::new(),
                b.target.to_string(),
                t.packets.to_string(),
                t.bytes.to_string(),
                t.new_flows.to_string(),
                rate(t.packets_per_s),
                rate(t.new_flows_per_s),
            ]);
        }
        // So that the rows add up to the service's: what backends since removed (or down,
        // below) counted.
        if let Some(u) = s.unlisted() {
            let mut row = vec![String::new(), "(backends not listed)".to_owned()];
            row.extend([u.packets, u.bytes, u.new_flows].map(|n| n.to_string()));
            row.resize(7, "-".to_owned());
            rows.push(row);
        }
        // Backends down by their checks are out of the plan, so out of the rows above: said
        // once per service (a service has a row per mapping and address family).
        let down = report.backend_states.get(&s.name).map_or(0, |b| b.down);
        if down > 0 && down_said.insert(s.name.as_str()) {
            let mut row = vec![String::new(), format!("({down} down: see `lbctl list`)")];
            row.resize(7, "-".to_owned());
            rows.push(row);
        }
    }
    table(
        &[
            "SERVICE",
            "BACKEND",
            "PACKETS",
            "BYTES",
            "NEW FLOWS",
            "PKT/S",
            "FLOWS/S",
        ],
        rows,
    );
    println!(
        "connection table: {} of {} entries ({}); {}; generation {}",
        report.conntrack.entries,
        report.conntrack.capacity,
        report
            .conntrack
            .counted_s_ago
            .map_or("not counted yet".to_owned(), |s| format!(
                "counted {s} s ago"
            )),
        report.conntrack.syn_filter_keys.map_or(
            "SYN filter off until the first count (SYNs ask the table)".to_owned(),
            |k| format!("SYN filter rebuilt with the count: {k} forward keys")
        ),
        report.generation
    );
    if report.flood.active {
        println!(
            "flood guard: {:.0} new flows a second never confirmed (above {:.0}): established \
             flows are kept, new clients must answer within a second",
            report.flood.unconfirmed_flows_per_s, report.flood.threshold_per_s
        );
    }
    let lost = StatSlot::FlowLost;
    if let Some(n) = report.global.get(lost.label()).filter(|n| **n > 0) {
        println!(
            "{}={n} since the maps were made (restarts keep it): established flows with no \
             entry here (evicted while full, or moved from another balancer node); if it keeps \
             growing and not for the latter, raise --conntrack-entries (README: sizing the \
             connection table)",
            lost.label()
        );
    }
    let drops: Vec<String> = report
        .global
        .iter()
        // The TC program's failures are drops too, of packets XDP counted as handed on.
        .filter(|(k, v)| {
            (k.starts_with("drop_") || k.starts_with("tc_") && k.ends_with("_failed")) && **v > 0
        })
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if !drops.is_empty() {
        println!("drops: {}", drops.join(" "));
    }
    // Not drops (those packets are answered), but what earlier versions counted as drops.
    let refused = StatSlot::RefusedNoBackend;
    if let Some(n) = report.global.get(refused.label()).filter(|n| **n > 0) {
        println!(
            "refused: {}={n} (to a service with no usable backend, answered with a RST or ICMP \
             port unreachable)",
            refused.label()
        );
    }
    // The socket-level path has no packets: its own table, services it served only.
    let sockets: Vec<Vec<String>> = report
        .services
        .iter()
        .filter(|s| s.socket != Default::default())
        .map(|s| {
            vec![
                format!("{} {} {}", s.name, s.frontend, s.family),
                s.socket.connections.to_string(),
                s.socket.datagrams.to_string(),
                s.socket.no_backend.to_string(),
            ]
        })
        .collect();
    if !sockets.is_empty() {
        println!();
        table(
            &["SOCKET PATH", "CONNECTIONS", "DATAGRAMS", "NO BACKEND"],
            sockets,
        );
    }
    Ok(())
}

async fn flows(
    api: &Endpoint,
    json: bool,
    service: Option<&str>,
    limit: usize,
) -> anyhow::Result<()> {
    let mut path = format!("/v1/flows?limit={limit}");
    if let Some(service) = service {
        path.push_str(&format!("&service={}", encode(service)));
    }
    let list: FlowList = api.json(Method::GET, &path, None).await?;
    if json {
        return print_json(&list);
    }
    let rows = list
        .flows
        .iter()
        .map(|f| {
            vec![
                match &f.mapping {
                    Some(mapping) => format!("{} {mapping}", f.service),
                    None => f.service.clone(),
                },
                f.protocol.clone(),
                f.client.to_string(),
                f.frontend.to_string(),
                f.backend.to_string(),
                f.tcp_state.clone(),
                f.idle_timeout_s.to_string(),
                f.expires_in_s.map_or("-".to_owned(), |s| s.to_string()),
            ]
        })
        .collect();
    table(
        &[
            "SERVICE",
            "PROTO",
            "CLIENT",
            "FRONTEND",
            "BACKEND",
            "TCP STATE",
            "IDLE LIMIT S",
            "EXPIRES IN S",
        ],
        rows,
    );
    if list.truncated {
        println!(
            "(the first {} flows found; more are tracked: --limit takes up to {})",
            list.limit,
            lb_userspace::api::MAX_FLOWS
        );
    }
    Ok(())
}

async fn explain(
    api: &Endpoint,
    json: bool,
    protocol: Protocol,
    source: SocketAddr,
    destination: SocketAddr,
) -> anyhow::Result<()> {
    let path = format!(
        "/v1/explain?protocol={protocol}&source={}&destination={}",
        encode(&source.to_string()),
        encode(&destination.to_string())
    );
    let answer: Explained = api.json(Method::GET, &path, None).await?;
    print_explained(&answer, json, true)
}

/// `lbctl explain`'s answer; `live`: from lbd's maps, which say whether the flow is tracked
/// (a service file cannot).
fn print_explained(answer: &Explained, json: bool, live: bool) -> anyhow::Result<()> {
    if json {
        return print_json(answer);
    }
    match &answer.tracked {
        Some(t) if t.backend_removed => println!(
            "tracked flow to {}{}, whose backend was removed: its next packet moves or ends it",
            t.backend,
            tcp_words(&t.tcp_state).map_or_else(String::new, |w| format!(" ({w})")),
        ),
        Some(t) => println!(
            "tracked flow: goes to {} ({}idle timeout {} s); the table below is not consulted",
            t.backend,
            tcp_words(&t.tcp_state).map_or_else(String::new, |w| format!("{w}, ")),
            t.idle_timeout_s
        ),
        // Not a frontend: nothing is tracked or picked; the line below says so.
        None if !answer.frontend || !live => {}
        None => println!("not tracked: a new flow"),
    }
    println!("{}", answer.selection);
    if let Some(replies) = &answer.replies {
        println!("{replies}");
    }
    Ok(())
}

fn report_change(result: &ChangeResult, json: bool, what: &str) -> anyhow::Result<()> {
    if json {
        return print_json(result);
    }
    match result.outcome {
        Outcome::Unchanged => {
            println!("{what}: no change (generation {})", result.generation)
        }
        _ => println!("{what} (generation {})", result.generation),
    }
    for gone in &result.displaced_swarm_services {
        println!(
            "swarm service {} is no longer served on this node: {}",
            gone.service, gone.reason
        );
    }
    for warning in &result.warnings {
        println!("warning: {warning}");
    }
    Ok(())
}
