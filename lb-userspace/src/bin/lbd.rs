//! lbd: the meshlb node daemon.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use lb_common::limits::DEFAULT_CONNTRACK_ENTRIES;
use lb_userspace::{
    api::server::{self, Shared},
    daemon::{Daemon, DaemonOptions, Outcome, Trigger},
    dataplane::{self, LoadOptions, pin},
    plan,
    source::file::ServiceFile,
    source::settings::{self, KernelLogLevel, SocketLb, XdpMode},
    source::swarm,
};
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(
    name = "lbd",
    version,
    about = "meshlb node daemon: an XDP layer-4 load balancer"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the dataplane (or adopt the pinned one), attach it to the interfaces and serve the
    /// services in the file and those added through the API.
    Run(Box<RunArgs>),
    /// Validate a service file and print what it would program; touches nothing.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Detach meshlb from every interface and remove its pinned maps (tracked flows are lost).
    Cleanup {
        /// Where `lbd run` pinned its state.
        #[arg(long, default_value = settings::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
}

/// Flags win over the service file's `lbd:` section, which wins over the defaults.
#[derive(clap::Args)]
struct RunArgs {
    /// Service file (YAML); reloaded on SIGHUP and when it changes. Optional with --swarm.
    #[arg(long, short, required_unless_present = "swarm")]
    config: Option<PathBuf>,
    /// Follow the node's Docker Engine and serve every port a swarm service publishes in
    /// ingress mode (also `swarm: true` in the file's `lbd:` section).
    #[arg(long)]
    swarm: bool,
    /// The Docker Engine to follow with --swarm [default: unix:///var/run/docker.sock].
    #[arg(long)]
    docker_host: Option<String>,
    /// Interface to attach to; repeat for several (client-facing and backend-facing). With
    /// --swarm and none given: the underlay (the default route's interface, or else those
    /// holding the node's addresses) and docker_gwbridge (as soon as it exists).
    #[arg(long = "interface", short)]
    interfaces: Vec<String>,
    /// XDP attach mode [default: auto].
    #[arg(long, value_enum)]
    xdp_mode: Option<XdpMode>,
    /// An interface that accepts XDP frames (a NIC with a native XDP driver, or a veth whose
    /// peer runs an XDP program): packets to it are sent with XDP_REDIRECT. Others are
    /// forwarded by the TC program.
    #[arg(long = "xdp-redirect")]
    xdp_redirect: Vec<String>,
    /// Connection-table capacity (entries; a flow takes two) [default: 2097152].
    #[arg(long)]
    conntrack_entries: Option<u32>,
    /// Admin API Unix socket (mode 0600) [default: /run/meshlb/api.sock].
    #[arg(long)]
    api: Option<PathBuf>,
    /// Also serve the admin API over TCP on ADDR:PORT; requires --api-token-file.
    #[arg(long)]
    api_listen: Option<SocketAddr>,
    /// File holding the bearer token the TCP API requires (e.g. a Docker secret). Tokens are
    /// never taken from the command line or the environment.
    #[arg(long)]
    api_token_file: Option<PathBuf>,
    /// Prometheus metrics on ADDR:PORT (`GET /metrics`) [default: 127.0.0.1:9464].
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Where changes made through the API are kept
    /// [default: /var/lib/meshlb].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// bpffs directory for pinned maps and links [default: /sys/fs/bpf/meshlb].
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    /// Most verbose kernel-side log level kept in the programs; the records reach this log
    /// under the target `lb_ebpf` (filter them with RUST_LOG). Levels above it are removed
    /// at load and cost nothing per packet.
    #[arg(long, value_enum, default_value_t = KernelLogLevel::Warn)]
    kernel_log: KernelLogLevel,
    /// Socket-level balancing: processes of this node (in lbd's network namespace) reach
    /// VIPs and published ports (on node addresses and 127.0.0.1/::1) through cgroup socket
    /// programs [default: on].
    #[arg(long, value_enum)]
    socket_lb: Option<SocketLb>,
    /// cgroup v2 directory the socket-level programs attach to; they act for the processes in
    /// it and below [default: the cgroup2 mount from /proc/mounts].
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// How often to check the service file for changes, in milliseconds (0: only SIGHUP).
    #[arg(long, default_value_t = 1000)]
    watch_interval_ms: u64,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        Command::Check { config } => check(&config),
        Command::Run(args) => run(*args),
        Command::Cleanup { pin_dir } => cleanup(&pin_dir),
    };
    // One clear line and a non-zero exit, whatever RUST_BACKTRACE says.
    if let Err(e) = result {
        eprintln!("lbd: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}

fn check(config: &Path) -> anyhow::Result<()> {
    let file = ServiceFile::load(config)?;
    let node_addrs = dataplane::node_addresses().context("listing this node's addresses")?;
    let desired =
        plan::plan(&file, &node_addrs).with_context(|| format!("{}", config.display()))?;
    for s in &desired.services {
        println!(
            "{} {}/{}: {} frontend(s), {} backend(s)",
            s.name,
            s.mapping.frontend,
            s.mapping.protocol,
            s.frontends.len(),
            s.backends.len()
        );
    }
    Ok(())
}

fn cleanup(pin_dir: &Path) -> anyhow::Result<()> {
    if pin::cleanup(pin_dir)? {
        println!(
            "removed {}: meshlb is detached and its maps are freed",
            pin_dir.display()
        );
    } else {
        println!("nothing pinned at {}", pin_dir.display());
    }
    Ok(())
}

/// Everything `run` needs, flags and file settings resolved.
struct Resolved {
    daemon: DaemonOptions,
    api: PathBuf,
    api_listen: Option<(SocketAddr, PathBuf)>,
    metrics: SocketAddr,
    watch: Option<Duration>,
}

fn resolve(args: RunArgs) -> anyhow::Result<Resolved> {
    let file = match &args.config {
        Some(path) => ServiceFile::load(path)?,
        None => ServiceFile::default(),
    };
    let s = file.lbd;
    let docker_host = (args.swarm || s.swarm == Some(true)).then(|| {
        args.docker_host
            .or(s.docker_host)
            .unwrap_or_else(|| swarm::DEFAULT_DOCKER_HOST.to_owned())
    });
    if let Some(host) = &docker_host {
        swarm::Engine::new(host)?;
    }
    let config_name = args.config.as_ref().map_or_else(
        || "the service file".to_owned(),
        |p| p.display().to_string(),
    );
    let or_file = |flag: Vec<String>, file: Option<Vec<String>>| {
        if flag.is_empty() {
            file.unwrap_or_default()
        } else {
            flag
        }
    };
    let mut interfaces = or_file(args.interfaces, s.interfaces);
    let mut late_interfaces = Vec::new();
    if interfaces.is_empty() && docker_host.is_some() {
        (interfaces, late_interfaces) = swarm_interfaces()?;
    }
    if interfaces.is_empty() {
        bail!(
            "no interface to attach to: pass --interface IF (repeat for several) or set \
             lbd.interfaces in {config_name}"
        );
    }
    let xdp_redirect = or_file(args.xdp_redirect, s.xdp_redirect);
    for name in &xdp_redirect {
        if !interfaces.contains(name) {
            bail!("--xdp-redirect {name}: not one of the interfaces meshlb attaches to");
        }
    }
    let api_token_file = args.api_token_file.or(s.api_token_file);
    let api_listen = match (args.api_listen.or(s.api_listen), api_token_file) {
        (Some(addr), Some(token)) => Some((addr, token)),
        (Some(_), None) => bail!(
            "--api-listen needs --api-token-file FILE: the TCP API only answers requests with \
             the token held in that file"
        ),
        (None, _) => None,
    };
    let pin_dir = args
        .pin_dir
        .or(s.pin_dir)
        .unwrap_or_else(|| settings::DEFAULT_PIN_DIR.into());
    let socket_cgroup = match args.socket_lb.or(s.socket_lb).unwrap_or_default() {
        SocketLb::Off => None,
        SocketLb::On => match args.cgroup.or(s.cgroup) {
            Some(cgroup) => Some(cgroup),
            None => {
                let found = dataplane::cgroup2_mount();
                if found.is_none() {
                    warn!(
                        "no cgroup v2 mount in /proc/mounts: socket-level balancing is off (the \
                         node's own processes reach no frontend); mount cgroup2 or pass --cgroup"
                    );
                }
                found
            }
        },
    };
    Ok(Resolved {
        daemon: DaemonOptions {
            config: args.config,
            docker_host,
            interfaces,
            late_interfaces,
            xdp_mode: args.xdp_mode.or(s.xdp_mode).unwrap_or(XdpMode::Auto),
            xdp_redirect,
            state_dir: args
                .state_dir
                .or(s.state_dir)
                .unwrap_or_else(|| settings::DEFAULT_STATE_DIR.into()),
            load: LoadOptions {
                conntrack_entries: args
                    .conntrack_entries
                    .or(s.conntrack_entries)
                    .unwrap_or(DEFAULT_CONNTRACK_ENTRIES),
                kernel_log: args.kernel_log,
                pin_dir: Some(pin_dir),
            },
            socket_cgroup,
        },
        api: args
            .api
            .or(s.api)
            .unwrap_or_else(|| settings::DEFAULT_API_SOCKET.into()),
        api_listen,
        metrics: args
            .metrics
            .or(s.metrics)
            .unwrap_or_else(|| settings::DEFAULT_METRICS.parse().expect("valid default")),
        watch: (args.watch_interval_ms > 0).then(|| Duration::from_millis(args.watch_interval_ms)),
    })
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let resolved = resolve(args)?;
    let token = resolved
        .api_listen
        .as_ref()
        .map(|(_, path)| server::read_token(path))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let daemon = Daemon::start(&resolved.daemon)?;
    let shared = Shared::new(daemon)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(serve(shared.clone(), resolved, token))?;
    // The final global counters, one JSON line on stdout, for scripts and tests. Bounded
    // whatever the configuration (per service counters of 10,000 services would be a 20 MB
    // line in the journal): those are `lbctl stats` and /metrics while lbd runs.
    let occupancy = shared
        .daemon
        .lock()
        .map_err(|_| anyhow::anyhow!("daemon lock"))?
        .conntrack_occupancy()?;
    let report = shared
        .daemon
        .lock()
        .map_err(|_| anyhow::anyhow!("daemon lock"))?
        .report(occupancy)?;
    let summary = serde_json::json!({
        "generation": report.generation,
        "global": report.global,
        "conntrack": report.conntrack,
        "services": report.services.len(),
    });
    println!("{summary}");
    info!("stopped; the dataplane keeps forwarding (pinned); `lbd cleanup` removes it");
    Ok(())
}

async fn serve(
    shared: Arc<Shared>,
    resolved: Resolved,
    token: Option<Arc<str>>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    // Handlers first, then "ready": a SIGHUP or SIGTERM right after must not meet the
    // default action.
    let mut term = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    let unix = server::bind_unix(&resolved.api)
        .with_context(|| format!("admin API socket {}", resolved.api.display()))?;
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(server::serve_unix(
        unix,
        server::router(shared.clone()),
        resolved.api.clone(),
        stopped(),
    ));
    if let (Some((addr, _)), Some(token)) = (&resolved.api_listen, token) {
        let addr = *addr;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("admin API on {addr}"))?;
        info!(%addr, "admin API listening on TCP (bearer token required)");
        let router = server::router_with_token(shared.clone(), token);
        let stop = stopped();
        tasks.spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(stop)
                .await
        });
    }
    let metrics = tokio::net::TcpListener::bind(resolved.metrics)
        .await
        .with_context(|| {
            format!(
                "metrics on {} (choose another with --metrics)",
                resolved.metrics
            )
        })?;
    info!(addr = %metrics.local_addr()?, "metrics listening");
    let metrics_router = server::metrics_router(shared.clone());
    let stop = stopped();
    tasks.spawn(async move {
        axum::serve(metrics, metrics_router)
            .with_graceful_shutdown(stop)
            .await
    });

    // Kernel log records, as they come.
    let log_fd = shared
        .daemon
        .lock()
        .map_err(|_| anyhow::anyhow!("daemon lock"))?
        .dataplane()
        .log_fd();
    if let Some(fd) = log_fd {
        struct Fd(std::os::fd::RawFd);
        impl std::os::fd::AsRawFd for Fd {
            fn as_raw_fd(&self) -> std::os::fd::RawFd {
                self.0
            }
        }
        // SAFETY: the descriptor is the log ring buffer the Dataplane owns; the Dataplane lives
        // in `shared`, which outlives this task (the task ends with the runtime).
        let readable = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(Fd(fd), tokio::io::Interest::READABLE)
        }
        .map_err(|e| anyhow::anyhow!("watching the kernel log: {e}"))?;
        let logs = shared.clone();
        tokio::spawn(async move {
            loop {
                let Ok(mut guard) = readable.readable().await else {
                    break;
                };
                logs.daemon
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .flush_kernel_log();
                guard.clear_ready();
            }
        });
    }

    // Counters for rates and the connection-table occupancy, every few seconds.
    let sampler = shared.clone();
    let stop = stopped();
    tokio::spawn(async move {
        let sample = || {
            let s = sampler.clone();
            async move {
                match tokio::task::spawn_blocking(move || s.sample()).await {
                    Ok(Err(e)) => warn!("sampling counters: {e}"),
                    Err(e) => warn!("sampling counters: {e}"),
                    Ok(Ok(())) => {}
                }
            }
        };
        sample().await;
        tokio::select! {
            _ = stop => {}
            _ = async { loop { tokio::time::sleep(Duration::from_secs(5)).await; sample().await; } } => {}
        }
    });

    let config = resolved.daemon.config.as_deref();
    let mut watched = config.and_then(file_stamp);
    // The swarm follower hands its snapshots to this loop, which applies them one at a time.
    let (swarm_tx, mut swarm_rx) = tokio::sync::mpsc::channel(4);
    if let Some(host) = &resolved.daemon.docker_host {
        let status = shared
            .daemon
            .lock()
            .map_err(|_| anyhow::anyhow!("daemon lock"))?
            .swarm_follow_status()
            .expect("a daemon started with a docker host has a follow status");
        info!(docker_host = %host, "swarm: following the Docker Engine");
        tokio::spawn(swarm::follow::follow(
            swarm::Engine::new(host)?,
            swarm_tx,
            status,
            stopped(),
        ));
    }
    let mut watch = tokio::time::interval(resolved.watch.unwrap_or(Duration::from_secs(3600)));
    watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Ports published on every node address follow the addresses (a bridge Docker creates
    // later, a DHCP renewal).
    let mut addresses = tokio::time::interval(Duration::from_secs(1));
    let mut seen_addresses = dataplane::node_addresses().ok();
    addresses.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    {
        let d = shared
            .daemon
            .lock()
            .map_err(|_| anyhow::anyhow!("daemon lock"))?;
        let running = d.running();
        info!(
            services = running.services.len(),
            frontends = running.frontends.len(),
            backends = running.backends.len(),
            interfaces = ?resolved.daemon.interfaces,
            api = %resolved.api.display(),
            "ready"
        );
    }
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = term.recv() => break,
            Some(snapshot) = swarm_rx.recv() => apply_swarm(&shared, snapshot).await,
            _ = hangup.recv() => {
                watched = config.and_then(file_stamp);
                reload(&shared, Trigger::Signal).await;
            }
            _ = addresses.tick() => {
                // Once per change, even if the replan is refused (no retry every second).
                let now = dataplane::node_addresses().ok();
                let changed = now != seen_addresses
                    && shared
                        .daemon
                        .lock()
                        .map_err(|_| anyhow::anyhow!("daemon lock"))?
                        .node_addresses_changed();
                seen_addresses = now;
                attach_appeared(&shared);
                if changed {
                    info!("the node's addresses changed; replanning published ports");
                    reload(&shared, Trigger::Addresses).await;
                }
            }
            _ = watch.tick(), if resolved.watch.is_some() && config.is_some() => {
                let stamp = config.and_then(file_stamp);
                if stamp != watched {
                    watched = stamp;
                    reload(&shared, Trigger::File).await;
                }
            }
        }
    }
    let _ = stop_tx.send(true);
    while let Some(result) = tasks.join_next().await {
        if let Ok(Err(e)) = result {
            warn!("a listener ended with: {e}");
        }
    }
    Ok(())
}

/// Re-reads the service file and applies the difference; the answer goes to the log (every
/// line says "reload").
async fn reload(shared: &Arc<Shared>, trigger: Trigger) {
    let s = shared.clone();
    let result = tokio::task::spawn_blocking(move || {
        s.daemon
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reload_file(trigger)
    })
    .await;
    match result {
        Ok(Ok(Outcome::Unchanged)) => info!(trigger = trigger.as_str(), "reload: no change"),
        Ok(Ok(_)) => info!(trigger = trigger.as_str(), "reloaded"),
        Ok(Err(e)) if e.is_input() => error!(
            trigger = trigger.as_str(),
            "reload refused, the running configuration stays: {e:#}"
        ),
        Ok(Err(e)) => error!(
            trigger = trigger.as_str(),
            "reload failed: {e:#} (see the line above for whether the previous configuration was restored)"
        ),
        Err(e) => error!("reload: {e}"),
    }
}

/// Applies a swarm snapshot; the answer goes to the log.
async fn apply_swarm(shared: &Arc<Shared>, snapshot: swarm::Snapshot) {
    let s = shared.clone();
    let result = tokio::task::spawn_blocking(move || {
        s.daemon
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .update_swarm(snapshot)
    })
    .await;
    match result {
        // The daemon's own "applied" line (trigger "swarm") says what changed.
        Ok(Ok(_)) => {}
        Ok(Err(e)) => error!(
            "swarm: the swarm's change was not applied, the running configuration stays: {e:#}"
        ),
        Err(e) => error!("swarm: {e}"),
    }
}

/// Attaches interfaces that were waited for (docker_gwbridge before the node's first task).
fn attach_appeared(shared: &Arc<Shared>) {
    let mut daemon = shared.daemon.lock().unwrap_or_else(|p| p.into_inner());
    for (interface, result) in daemon.attach_appeared() {
        match result {
            Ok(()) => info!(interface, "attached: the interface now exists"),
            Err(e) => error!(interface, "attaching failed, retrying in a second: {e}"),
        }
    }
}

/// The interfaces a swarm node attaches to when none are given: the underlay now, and
/// docker_gwbridge now or as soon as it exists.
fn swarm_interfaces() -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let mut underlay = dataplane::default_route_interfaces();
    let why = if underlay.is_empty() {
        // No default route (an isolated underlay): the interfaces holding node addresses,
        // less those Docker makes.
        let docker_made = |name: &str| {
            name == "docker0"
                || name == swarm::snapshot::GWBRIDGE_NETWORK
                || ["veth", "br-", "vx-", "ov-"]
                    .iter()
                    .any(|p| name.starts_with(p))
        };
        for (name, _) in dataplane::interface_addresses()? {
            if !docker_made(&name) && !underlay.contains(&name) {
                underlay.push(name);
            }
        }
        "the interfaces holding this node's addresses"
    } else {
        "the default route's"
    };
    if underlay.is_empty() {
        bail!(
            "--swarm: no underlay interface found (no default route, no address); pass --interface IF"
        );
    }
    info!(interfaces = ?underlay, "swarm: attaching to {why} interfaces (choose with --interface)");
    let gwbridge = swarm::snapshot::GWBRIDGE_NETWORK.to_owned();
    if dataplane::ifindex(&gwbridge).is_ok() {
        underlay.push(gwbridge);
        Ok((underlay, Vec::new()))
    } else {
        warn!(
            "swarm: no docker_gwbridge yet (Docker makes it with the node's first task); attaching to it as soon as it exists"
        );
        Ok((underlay, vec![gwbridge]))
    }
}

/// What changes when the file is rewritten or replaced (editors rename over it).
fn file_stamp(path: &Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}
