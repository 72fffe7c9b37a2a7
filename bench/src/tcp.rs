//! `lb-bench bench tcp`: real TCP through the node, on the test kit's topology (client, node,
//! three backends behind a bridge, each running a test-kit `NameServer` on port 8080):
//! short connections per second (connect, one request, close) and keep-alive requests per
//! second, through meshlb (once per XDP attach mode asked for), nftables DNAT and HAProxy in
//! `mode tcp`, each against the client talking to one backend directly, measured right before
//! and right after it (this VM's speed drifts by more than the targets' margins within a
//! minute, so each contender is held against the direct figure of its own moment). Client
//! ports are reused across rounds (the
//! client namespace runs with `tcp_tw_reuse=1`), which is where netfilter's conntrack has
//! been seen to decay. Writes `bench/results/tcp-<date>.{json,md}`.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use lb_testkit::{
    ChildGuard, Lbd, NameServer, Netns, REQUEST, Topology, parse_reply_line, progtest::pin_to_cpu,
    tcp_request,
};
use serde::Serialize;

use lb_userspace::source::settings::XdpMode;

use crate::pps::Target;

use crate::micro::machine;

#[derive(clap::Args, Debug)]
pub struct TcpArgs {
    /// The lbd binary.
    #[arg(long, default_value = "target/release/lbd")]
    pub lbd: PathBuf,
    /// The haproxy binary (Debian's `haproxy` package; `cargo xtask setup` installs it).
    #[arg(long, default_value = "/usr/sbin/haproxy")]
    pub haproxy: PathBuf,
    /// Consecutive rounds; every round runs every contender once.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seconds of short connections, then of keep-alive requests, per contender and round
    /// (default: 3, or 8 for `--swarm` and `--host-local`, whose targets hold every round).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Client threads (each one connection at a time).
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Client threads on CPU 0; servers, lbd and HAProxy on CPU 1 (default: where the
    /// scheduler puts them). Pinned, each side has one CPU, and what a contender spends per
    /// packet on either side shows undiluted.
    #[arg(long)]
    pub pin_cpus: bool,
    /// `lbd --xdp-mode` of the meshlb contender, one contender per mode given (e.g.
    /// `auto,generic`). Auto, lbd's default, is generic on both the client's veth and the
    /// backends' bridge here: the program runs on the sockets' skbs. Native cannot attach to
    /// the bridge.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        num_args = 1..,
        default_values_t = [XdpMode::Auto]
    )]
    pub xdp_mode: Vec<XdpMode>,
    #[arg(long, default_value = "bench/results")]
    pub out_dir: PathBuf,
    /// The swarm case instead: on the two-node swarm lab, a one-task service's published port
    /// through `lbd --swarm` against the client talking to that task directly (routed by its
    /// node); writes `tcp-swarm-<date>.{json,md}`.
    #[arg(long, conflicts_with = "host_local")]
    pub swarm: bool,
    /// With `--swarm`: the task on node 2, the client entering by node 1 (the cross-node
    /// path: node 1's lbd tunnels to node 2's); writes `tcp-swarm-cross-<date>.{json,md}`.
    #[arg(long, requires = "swarm")]
    pub cross_node: bool,
    /// The host-local case instead: a process on the node connects to a file service's VIP,
    /// which the socket-level programs turn into a connection to a backend at `connect()`
    /// (nothing per packet), against the same process connecting to that backend directly;
    /// writes `tcp-host-<date>.{json,md}`.
    #[arg(long)]
    pub host_local: bool,
    #[arg(long)]
    pub no_write: bool,
}

pub(crate) const BACKENDS: usize = 3;
pub(crate) const BACKEND_PORT: u16 = 8080;
pub(crate) const MESHLB_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
const NFT_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 2);
const HAPROXY_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 3);
const NFT_TABLE: &str = "mlbtcp";
const IO_TIMEOUT: Duration = Duration::from_secs(1);
pub(crate) const WARMUP_SECONDS: f64 = 1.0;
/// Seconds per way of the HAProxy/nftables comparison, unless `--seconds` says otherwise.
const SECONDS: f64 = 3.0;
/// Seconds per way of the paired cases, unless `--seconds` says otherwise. Their targets hold
/// every round to a margin of 5-15 %; over 3 s per way, single rounds on this VM moved by as
/// much (cross-node keep-alive 0.79-0.97 within one run), over 8 s by about half that.
const PAIRED_SECONDS: f64 = 8.0;
/// Pause after a contender is stopped, before the next starts: the kernel finishes tearing
/// the last one down (its sockets, maps, conntrack entries) on the same two CPUs, and the
/// contender that happened to come next would pay for it.
const SETTLE_SECONDS: f64 = 2.0;
/// Where the client threads run; everything else runs on `SERVER_CPU` (two CPUs or more).
const CLIENT_CPU: usize = 0;
const SERVER_CPU: usize = 1;

/// CPUs online (not `available_parallelism`, which shrinks to one once this thread is pinned).
fn cpus_available() -> usize {
    // SAFETY: sysconf has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).unwrap_or(1)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contender {
    Direct,
    Meshlb(XdpMode),
    Nft,
    Haproxy,
}

impl Contender {
    pub fn name(self) -> &'static str {
        match self {
            Contender::Direct => "direct to one backend",
            Contender::Meshlb(XdpMode::Auto) => "meshlb",
            Contender::Meshlb(XdpMode::Native) => "meshlb, native XDP",
            Contender::Meshlb(XdpMode::Generic) => "meshlb, generic XDP",
            Contender::Nft => "nftables DNAT",
            Contender::Haproxy => "HAProxy mode tcp",
        }
    }
}

/// Everything held against the direct connection: meshlb once per XDP mode asked for,
/// nftables DNAT and HAProxy.
fn balancers(modes: &[XdpMode]) -> Vec<Contender> {
    let mut seen = Vec::new();
    for &mode in modes {
        if !seen.contains(&mode) {
            seen.push(mode);
        }
    }
    seen.into_iter()
        .map(Contender::Meshlb)
        .chain([Contender::Nft, Contender::Haproxy])
        .collect()
}

/// What a measurement loop counted.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Count {
    pub ok: u64,
    pub errors: u64,
    pub seconds: f64,
}

impl Count {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.seconds
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ContenderResult {
    pub name: &'static str,
    /// Per round. For the direct connection, the mean of its measurements in the round.
    pub connections_per_s: Vec<f64>,
    pub requests_per_s: Vec<f64>,
    /// Per round, what this contender is held against: the mean of the direct measurements
    /// right before and right after it, or (swarm and host-local cases) direct interleaved
    /// with it (empty for the direct connection itself).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub direct_connections_per_s: Vec<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub direct_requests_per_s: Vec<f64>,
    pub errors: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct TcpReport {
    pub date: String,
    pub machine: machine::Machine,
    pub rounds: usize,
    pub seconds: f64,
    pub clients: usize,
    /// Clients on CPU 0, everything else on CPU 1 (`--pin-cpus`).
    pub pinned: bool,
    pub contenders: Vec<ContenderResult>,
    pub targets: Vec<Target>,
}

/// The client side of a measurement: its namespace, its threads, and whether they are pinned
/// to `CLIENT_CPU`.
pub(crate) struct Clients<'a> {
    pub(crate) ns: &'a Netns,
    pub(crate) threads: usize,
    pub(crate) pinned: bool,
}

/// How a short connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Close {
    /// FIN: the client's side then waits in TIME_WAIT, as a real client's would.
    Graceful,
    /// RST (`SO_LINGER` 0): no TIME_WAIT. Thousands of client sockets in TIME_WAIT to one
    /// server make `connect()` search for a free port, whose cost swings by a quarter within
    /// seconds; the paired cases, which compare two ways to one server, close this way.
    Reset,
}

/// Short connections from every client thread to `target` for `seconds`.
pub(crate) fn connections(
    clients: &Clients<'_>,
    target: SocketAddr,
    seconds: f64,
    close: Close,
) -> Result<Count> {
    measure(clients, seconds, |deadline, ok, errors| {
        while Instant::now() < deadline {
            match one_exchange(target, close) {
                Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                Err(_) => errors.fetch_add(1, Ordering::Relaxed),
            };
        }
    })
}

/// Keep-alive: one connection per client thread, requests back to back for `seconds`.
pub(crate) fn keepalive(clients: &Clients<'_>, target: SocketAddr, seconds: f64) -> Result<Count> {
    measure(clients, seconds, |deadline, ok, errors| {
        // Reconnect (bounded by the deadline) if a connection fails.
        while Instant::now() < deadline {
            let Ok(mut stream) = connect(target) else {
                errors.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            while Instant::now() < deadline {
                if request(&mut stream).is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                ok.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

/// Runs `work` on every client thread, in the clients' namespace, until `seconds` pass.
fn measure(
    clients: &Clients<'_>,
    seconds: f64,
    work: impl Fn(Instant, &AtomicU64, &AtomicU64) + Sync,
) -> Result<Count> {
    let (ok, errors) = (AtomicU64::new(0), AtomicU64::new(0));
    let elapsed = clients.ns.run(|| {
        let start = Instant::now();
        let deadline = start + Duration::from_secs_f64(seconds);
        // Threads spawned here inherit this thread's network namespace.
        std::thread::scope(|s| {
            for _ in 0..clients.threads {
                s.spawn(|| {
                    if clients.pinned {
                        pin_to_cpu(CLIENT_CPU);
                    }
                    work(deadline, &ok, &errors)
                });
            }
        });
        start.elapsed()
    })?;
    Ok(Count {
        ok: ok.into_inner(),
        errors: errors.into_inner(),
        seconds: elapsed.as_secs_f64(),
    })
}

fn connect(target: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&target, IO_TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

/// One request and its answer line, checked to be a test-kit server's.
fn request(stream: &mut TcpStream) -> Result<()> {
    stream.write_all(REQUEST)?;
    let mut buf = [0u8; 128];
    let mut len = 0;
    // Bounded: every read adds at least a byte, and the buffer is 128 bytes.
    while !buf[..len].contains(&b'\n') {
        ensure!(len < buf.len(), "answer too long");
        let n = stream.read(&mut buf[len..])?;
        ensure!(n > 0, "connection closed before the answer");
        len += n;
    }
    let line = std::str::from_utf8(&buf[..len])?;
    parse_reply_line(line)?;
    Ok(())
}

fn one_exchange(target: SocketAddr, close: Close) -> Result<()> {
    let mut stream = connect(target)?;
    request(&mut stream)?;
    if close == Close::Reset {
        reset_on_close(&stream)?;
    }
    Ok(())
}

/// `SO_LINGER` with a zero timeout: closing the socket sends RST and leaves no TIME_WAIT.
fn reset_on_close(stream: &TcpStream) -> Result<()> {
    use std::os::fd::AsRawFd as _;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket descriptor and an option value of the size given.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    ensure!(rc == 0, "SO_LINGER: {}", std::io::Error::last_os_error());
    Ok(())
}

/// A contender set up on the node; torn down on `stop`.
enum Running {
    Direct,
    Meshlb(Lbd),
    Nft,
    Haproxy(ChildGuard, PathBuf),
}

fn backend_addrs(topo: &Topology) -> Vec<IpAddr> {
    topo.backends.iter().map(|b| IpAddr::V4(b.addr4)).collect()
}

/// The HAProxy configuration: `mode tcp`, round-robin over the backends. `maxconn` stays
/// within a 20,000 descriptor limit (HAProxy wants about two per connection).
pub fn haproxy_config(vip: Ipv4Addr, backends: &[IpAddr]) -> String {
    let mut c = format!(
        "global\n    maxconn 9000\n\ndefaults\n    mode tcp\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n\nfrontend bench\n    bind {vip}:80\n    default_backend backends\n\nbackend backends\n    balance roundrobin\n"
    );
    for (i, b) in backends.iter().enumerate() {
        c.push_str(&format!("    server b{i} {b}:{BACKEND_PORT}\n"));
    }
    c
}

/// The nftables DNAT of the TCP comparison.
pub fn nft_tcp_ruleset(vip: Ipv4Addr, backends: &[IpAddr]) -> String {
    let mut r = format!("table ip {NFT_TABLE} {{\n");
    for (i, b) in backends.iter().enumerate() {
        r.push_str(&format!(
            "  chain ep{i} {{\n    meta l4proto tcp dnat to {b}:{BACKEND_PORT}\n  }}\n"
        ));
    }
    let map: Vec<String> = (0..backends.len())
        .map(|i| format!("{i} : goto ep{i}"))
        .collect();
    r.push_str(&format!(
        "  chain svc {{\n    numgen random mod {} vmap {{ {} }}\n  }}\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    ip daddr {vip} tcp dport 80 goto svc\n  }}\n}}\n",
        backends.len(),
        map.join(", ")
    ));
    r
}

/// The meshlb service file of the TCP comparison.
pub fn meshlb_services(vip: Ipv4Addr, backends: &[IpAddr]) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        "services:\n  web:\n    vip: \"{vip}\"\n    ports: [\"80:{BACKEND_PORT}/tcp\"]\n    backends: [{}]\n",
        list.join(", ")
    )
}

fn start(contender: Contender, topo: &Topology, args: &TcpArgs) -> Result<(Running, SocketAddr)> {
    let backends = backend_addrs(topo);
    Ok(match contender {
        Contender::Direct => (Running::Direct, SocketAddr::new(backends[0], BACKEND_PORT)),
        Contender::Meshlb(xdp_mode) => {
            let lbd = Lbd::start(
                &args.lbd,
                &topo.node,
                &meshlb_services(MESHLB_VIP, &backends),
                &[&topo.node_client_if, &topo.node_bridge],
                &[
                    "--conntrack-entries",
                    "2097152",
                    "--xdp-mode",
                    &xdp_mode.to_string(),
                ],
            )?;
            (
                Running::Meshlb(lbd),
                SocketAddr::new(IpAddr::V4(MESHLB_VIP), 80),
            )
        }
        Contender::Nft => {
            let path = std::env::temp_dir().join(format!("mlb-nft-tcp-{}.nft", std::process::id()));
            std::fs::write(&path, nft_tcp_ruleset(NFT_VIP, &backends))?;
            let result = topo
                .node
                .exec(&["nft", "-f", path.to_str().context("temp path")?]);
            let _ = std::fs::remove_file(&path);
            result.context("loading the nftables DNAT ruleset")?;
            (Running::Nft, SocketAddr::new(IpAddr::V4(NFT_VIP), 80))
        }
        Contender::Haproxy => {
            ensure!(
                args.haproxy.exists(),
                "{} does not exist: run `cargo xtask setup` (it installs Debian's haproxy)",
                args.haproxy.display()
            );
            topo.node
                .ip(&["addr", "add", &format!("{HAPROXY_VIP}/32"), "dev", "lo"])?;
            let path = std::env::temp_dir().join(format!("mlb-haproxy-{}.cfg", std::process::id()));
            std::fs::write(&path, haproxy_config(HAPROXY_VIP, &backends))?;
            let child = topo.node.spawn(
                args.haproxy.to_str().context("haproxy path")?,
                &["-db", "-f", path.to_str().context("temp path")?],
                &[],
            )?;
            (
                Running::Haproxy(child, path),
                SocketAddr::new(IpAddr::V4(HAPROXY_VIP), 80),
            )
        }
    })
}

fn stop(running: Running, topo: &Topology) -> Result<()> {
    match running {
        Running::Direct => {}
        Running::Meshlb(lbd) => {
            lbd.stop()?;
        }
        Running::Nft => {
            topo.node
                .exec(&["nft", "delete", "table", "ip", NFT_TABLE])?;
        }
        Running::Haproxy(mut child, path) => {
            child.stop(Duration::from_secs(5))?;
            let _ = std::fs::remove_file(path);
            topo.node
                .ip(&["addr", "del", &format!("{HAPROXY_VIP}/32"), "dev", "lo"])?;
        }
    }
    Ok(())
}

impl ContenderResult {
    pub(crate) fn empty(name: &'static str) -> Self {
        Self {
            name,
            connections_per_s: Vec::new(),
            requests_per_s: Vec::new(),
            direct_connections_per_s: Vec::new(),
            direct_requests_per_s: Vec::new(),
            errors: 0,
        }
    }
}

/// Starts `contender`, measures short connections then keep-alive requests through it (after
/// a warm-up), stops it and lets the kernel settle. Prints the figures.
fn measure_contender(
    contender: Contender,
    topo: &Topology,
    clients: &Clients<'_>,
    args: &TcpArgs,
    round: usize,
) -> Result<(Count, Count)> {
    let (running, target) = start(contender, topo, args)?;
    let ready = wait_ready(topo, target).with_context(|| match &running {
        Running::Haproxy(child, _) => format!("haproxy said:\n{}", child.output_so_far()),
        Running::Meshlb(lbd) => format!("lbd said:\n{}", lbd.output()),
        _ => String::new(),
    });
    let measured = ready.and_then(|()| {
        // Warm-up, not counted: caches, the server's accept queue, conntrack.
        connections(clients, target, WARMUP_SECONDS, Close::Graceful)?;
        let c = connections(clients, target, args.seconds(), Close::Graceful)?;
        let k = keepalive(clients, target, args.seconds())?;
        Ok((c, k))
    });
    let stopped = stop(running, topo);
    let (c, k) = measured.with_context(|| format!("{} round {round}", contender.name()))?;
    stopped?;
    if contender != Contender::Direct {
        std::thread::sleep(Duration::from_secs_f64(SETTLE_SECONDS));
    }
    println!(
        "tcp: round {round}: {:<22} {:>8.0} connections/s ({} errors)  {:>8.0} keep-alive requests/s ({} errors)",
        contender.name(),
        c.rate(),
        c.errors,
        k.rate(),
        k.errors
    );
    Ok((c, k))
}

/// Waits (bounded) until `target` answers a request from the client.
fn wait_ready(topo: &Topology, target: SocketAddr) -> Result<()> {
    let mut last = None;
    for _ in 0..50 {
        match tcp_request(&topo.client, target, Duration::from_millis(500)) {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "{target} never answered: {:#}",
        last.expect("at least one attempt")
    )
}

impl TcpArgs {
    /// Seconds per way and measurement: `--seconds`, or the case's default.
    pub fn seconds(&self) -> f64 {
        let default = if self.swarm || self.host_local {
            PAIRED_SECONDS
        } else {
            SECONDS
        };
        self.seconds.unwrap_or(default)
    }
}

/// What every case of `bench tcp` needs of its arguments.
pub(crate) fn check_args(args: &TcpArgs) -> Result<()> {
    ensure!(
        args.rounds >= 1 && args.seconds() > 0.0 && args.clients >= 1,
        "rounds, seconds and clients must be positive"
    );
    ensure!(
        args.lbd.exists(),
        "{} does not exist: run `cargo xtask build`",
        args.lbd.display()
    );
    Ok(())
}

pub fn run(args: &TcpArgs) -> Result<()> {
    check_args(args)?;
    let balancers = balancers(&args.xdp_mode);
    let machine = machine::facts();
    println!(
        "tcp: {} ({} CPUs); {} rounds × {} contenders, each between two direct measurements, × ({} s connections + {} s keep-alive), {} client threads",
        machine.cpu_model,
        machine.cpus,
        args.rounds,
        balancers.len(),
        args.seconds(),
        args.seconds(),
        args.clients
    );
    // With --pin-cpus: client threads on CPU 0 (see `measure`); the servers, lbd and HAProxy,
    // started from this thread, inherit CPU 1.
    let pin = args.pin_cpus && cpus_available() >= 2;
    if pin {
        pin_to_cpu(SERVER_CPU);
    }
    let topo = Topology::new(BACKENDS)?;
    topo.client.set_sysctls(&[("net.ipv4.tcp_tw_reuse", "1")])?;
    let servers: Vec<NameServer> = topo.serve_on_backends(&[BACKEND_PORT], &[])?;
    let clients = Clients {
        ns: &topo.client,
        threads: args.clients,
        pinned: pin,
    };
    let mut results: Vec<ContenderResult> = balancers
        .iter()
        .map(|c| ContenderResult::empty(c.name()))
        .collect();
    let mut direct = ContenderResult::empty(Contender::Direct.name());
    for round in 0..args.rounds {
        let mut direct_round = vec![measure_contender(
            Contender::Direct,
            &topo,
            &clients,
            args,
            round,
        )?];
        for i in crate::pps::rotated(balancers.len(), round) {
            let (c, k) = measure_contender(balancers[i], &topo, &clients, args, round)?;
            let after = measure_contender(Contender::Direct, &topo, &clients, args, round)?;
            let before = direct_round.last().expect("measured above");
            let r = &mut results[i];
            r.connections_per_s.push(c.rate());
            r.requests_per_s.push(k.rate());
            r.direct_connections_per_s
                .push((before.0.rate() + after.0.rate()) / 2.0);
            r.direct_requests_per_s
                .push((before.1.rate() + after.1.rate()) / 2.0);
            r.errors += c.errors + k.errors;
            direct_round.push(after);
        }
        let n = direct_round.len() as f64;
        direct
            .connections_per_s
            .push(direct_round.iter().map(|(c, _)| c.rate()).sum::<f64>() / n);
        direct
            .requests_per_s
            .push(direct_round.iter().map(|(_, k)| k.rate()).sum::<f64>() / n);
        direct.errors += direct_round
            .iter()
            .map(|(c, k)| c.errors + k.errors)
            .sum::<u64>();
    }
    drop(servers);
    drop(topo);
    let ratio =
        |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(x, y)| x / y).collect() };
    let mut targets = Vec::new();
    for c in &results {
        // The targets are meshlb's; the others are measured against the same bar.
        let (conn_target, req_target) = (0.9, 0.95);
        targets.extend(Target::new(
            format!("{} / direct, connections/s", c.name),
            ratio(&c.connections_per_s, &c.direct_connections_per_s),
            conn_target,
            true,
        ));
        targets.extend(Target::new(
            format!("{} / direct, keep-alive requests/s", c.name),
            ratio(&c.requests_per_s, &c.direct_requests_per_s),
            req_target,
            true,
        ));
    }
    let contenders: Vec<ContenderResult> = std::iter::once(direct).chain(results).collect();
    let report = TcpReport {
        date: machine::today(),
        machine,
        rounds: args.rounds,
        seconds: args.seconds(),
        clients: args.clients,
        pinned: pin,
        contenders,
        targets,
    };
    let md = render_markdown(&report);
    println!("\n{md}");
    if !args.no_write {
        let base =
            crate::results::write(&args.out_dir, &format!("tcp-{}", report.date), &report, &md)?;
        println!("tcp: wrote {}.{{json,md}}", base.display());
    }
    Ok(())
}

pub fn render_markdown(r: &TcpReport) -> String {
    let per_round = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let mut md = format!(
        "### Real TCP through the node ({} client threads{}; {} s per measurement after a 1 s warm-up and a 2 s pause after a balancer is stopped; every balancer measured between two direct measurements and held against their mean; the order of balancers rotating from round to round)\n\n| Contender | connections/s, round 1 / 2 / 3 … | keep-alive requests/s, round 1 / 2 / 3 … | direct in the same round: connections/s; keep-alive requests/s | errors |\n|---|---|---|---|---|\n",
        r.clients,
        if r.pinned {
            " on CPU 0, servers, lbd and HAProxy on CPU 1"
        } else {
            ""
        },
        r.seconds
    );
    for c in &r.contenders {
        let reference = if c.direct_connections_per_s.is_empty() {
            "— (mean of its measurements in the round)".to_owned()
        } else {
            format!(
                "{}; {}",
                per_round(&c.direct_connections_per_s),
                per_round(&c.direct_requests_per_s)
            )
        };
        md.push_str(&format!(
            "| {} | {} | {} | {reference} | {} |\n",
            c.name,
            per_round(&c.connections_per_s),
            per_round(&c.requests_per_s),
            c.errors
        ));
    }
    md.push_str(
        "\n| Ratio, same round | per round | target | met in every round |\n|---|---|---|---|\n",
    );
    for t in &r.targets {
        let rounds: Vec<String> = t.ratios.iter().map(|x| format!("{x:.2}")).collect();
        md.push_str(&format!(
            "| {} | {} | ≥ {} | {} |\n",
            t.what,
            rounds.join(" / "),
            t.target,
            if t.met_min { "yes" } else { "**no**" }
        ));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends() -> Vec<IpAddr> {
        vec![
            "198.18.2.10".parse().unwrap(),
            "198.18.2.11".parse().unwrap(),
        ]
    }

    #[test]
    fn configs_name_every_backend() {
        let h = haproxy_config(HAPROXY_VIP, &backends());
        assert!(h.contains("mode tcp") && h.contains("bind 198.18.100.3:80"));
        assert!(h.contains("server b1 198.18.2.11:8080"));
        let n = nft_tcp_ruleset(NFT_VIP, &backends());
        assert!(n.contains("numgen random mod 2 vmap { 0 : goto ep0, 1 : goto ep1 }"));
        assert!(n.contains("dnat to 198.18.2.11:8080"));
        let m = meshlb_services(MESHLB_VIP, &backends());
        let file =
            lb_userspace::source::file::ServiceFile::parse(&m, std::path::Path::new("t.yaml"))
                .unwrap();
        assert_eq!(file.services["web"].backends.len(), 2);
    }

    #[test]
    fn markdown_lists_rounds_and_ratios() {
        let r = TcpReport {
            date: "2026-01-02".into(),
            machine: machine::facts(),
            rounds: 2,
            seconds: 3.0,
            clients: 4,
            pinned: false,
            contenders: vec![ContenderResult {
                name: "meshlb",
                connections_per_s: vec![1000.4, 2000.0],
                requests_per_s: vec![5000.0, 6000.0],
                direct_connections_per_s: vec![1050.0, 2353.0],
                direct_requests_per_s: vec![5100.0, 6200.0],
                errors: 3,
            }],
            targets: vec![
                Target::new(
                    "meshlb / direct, connections/s",
                    vec![0.95, 0.85],
                    0.9,
                    true,
                )
                .unwrap(),
            ],
        };
        let md = render_markdown(&r);
        assert!(
            md.contains("| meshlb | 1000 / 2000 | 5000 / 6000 | 1050 / 2353; 5100 / 6200 | 3 |"),
            "{md}"
        );
        assert!(
            md.contains("| meshlb / direct, connections/s | 0.95 / 0.85 | ≥ 0.9 | **no** |"),
            "{md}"
        );
    }

    #[test]
    fn every_xdp_mode_asked_for_is_one_meshlb_contender() {
        let names: Vec<_> = balancers(&[XdpMode::Auto, XdpMode::Generic, XdpMode::Auto])
            .into_iter()
            .map(Contender::name)
            .collect();
        assert_eq!(
            names,
            [
                "meshlb",
                "meshlb, generic XDP",
                "nftables DNAT",
                "HAProxy mode tcp"
            ]
        );
    }

    #[test]
    fn count_rate() {
        let c = Count {
            ok: 300,
            errors: 2,
            seconds: 1.5,
        };
        assert_eq!(c.rate(), 200.0);
    }
}
