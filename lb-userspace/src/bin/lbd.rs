//! lbd: the meshlb node daemon.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use lb_common::limits::DEFAULT_CONNTRACK_ENTRIES;
use lb_userspace::{
    announce::{self, BirdSettings},
    cleanup::Withdrawal,
    control::event_loop::{self, RunOptions},
    daemon::DaemonOptions,
    dataplane::{self, LoadOptions, pin},
    plan,
    source::api_state::ApiState,
    source::file::ServiceFile,
    source::settings::{self, DockerBridges, KernelLogLevel, SocketLb, XdpMode},
    source::swarm::{self, SwarmServices},
};
use tracing::{info, warn};

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
    /// Validate what `lbd run` with the same flags would do (the service file with the API
    /// state of the state directory laid over it, and the settings from the flags and its
    /// `lbd:` section) and print it; touches nothing.
    Check(Box<RunArgs>),
    /// Detach meshlb from every interface and remove its pinned maps (tracked flows are lost).
    /// Refuses while an lbd runs on the pin directory.
    Cleanup {
        /// The service file `lbd run` was given: its `lbd:` section's pin directory and BGP
        /// settings are used where no flag gives them.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Where `lbd run` pinned its state [default: /sys/fs/bpf/meshlb].
        #[arg(long)]
        pin_dir: Option<PathBuf>,
        /// `lbd run`'s state directory, where it recorded the BIRD settings it announced
        /// through: those are withdrawn too [default: /var/lib/meshlb].
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Stop the lbd running on the pin directory first (SIGTERM), then clean up; an lbd
        /// that a systemd unit runs is not stopped (the unit would start it again).
        #[arg(long)]
        force: bool,
        /// Withdraws the VIPs first (what `lbd run --bird-include` announced; needed only
        /// where its state directory is lost).
        #[command(flatten)]
        bgp: BgpArgs,
    },
}

/// Announcing VIPs through BIRD 2 (also `lbd.bgp` in the service file).
#[derive(clap::Args)]
struct BgpArgs {
    /// The BIRD include file to write the VIPs with a usable backend to (static routes of the
    /// protocols meshlb_vips4 and meshlb_vips6); BIRD is reconfigured when it changes.
    #[arg(long)]
    bird_include: Option<PathBuf>,
    /// BIRD's control socket [default: /run/bird/bird.ctl].
    #[arg(long)]
    birdc_socket: Option<PathBuf>,
    /// An address to announce while lbd serves, whatever its services' health, for the
    /// router to steer the backends' replies by (deploy/bird/router.conf).
    #[arg(long)]
    bgp_reply_anchor: Option<std::net::IpAddr>,
}

impl BgpArgs {
    /// Flags over the file's `lbd.bgp`; `None`: no announcing.
    fn resolve(self, file: Option<settings::BgpSettings>) -> anyhow::Result<Option<BirdSettings>> {
        let file = file.unwrap_or_default();
        let Some(include) = self.bird_include.or(file.bird_include) else {
            if self.bgp_reply_anchor.is_some() {
                bail!(
                    "--bgp-reply-anchor is announced through BIRD: give --bird-include FILE (or \
                     lbd.bgp.bird_include) too"
                );
            }
            return Ok(None);
        };
        let socket = self
            .birdc_socket
            .or(file.birdc_socket)
            .unwrap_or_else(|| announce::DEFAULT_BIRD_SOCKET.into());
        let reply_anchor = self.bgp_reply_anchor.or(file.reply_anchor);
        Ok(Some(BirdSettings {
            include,
            socket,
            reply_anchor,
        }))
    }
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
    #[arg(long, value_parser = clap::value_parser!(u32)
        .range(i64::from(settings::MIN_CONNTRACK_ENTRIES)..))]
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
    /// under the target `lb` (filter them with RUST_LOG, e.g. `RUST_LOG=info,lb=debug`).
    /// Levels above it are removed at load and cost nothing per packet [default: warn].
    #[arg(long, value_enum)]
    kernel_log: Option<KernelLogLevel>,
    /// Socket-level balancing: processes of this node (in lbd's network namespace) reach
    /// VIPs and published ports (on node addresses and 127.0.0.1/::1) through cgroup socket
    /// programs [default: on].
    #[arg(long, value_enum)]
    socket_lb: Option<SocketLb>,
    /// cgroup v2 directory the socket-level programs attach to; they act for the processes in
    /// it and below [default: the cgroup2 mount from /proc/mounts].
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// With --swarm: attach also to the node's local Docker bridge networks (docker0 and
    /// user-defined ones) while the Engine lists them, so their containers reach published
    /// ports and policy VIPs on the node's addresses [default: on].
    #[arg(long, value_enum)]
    docker_bridges: Option<DockerBridges>,
    /// How often to check the service file for changes, in milliseconds (0: only SIGHUP)
    /// [default: 1000].
    #[arg(long)]
    watch_interval_ms: Option<u64>,
    #[command(flatten)]
    bgp: BgpArgs,
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
        Command::Check(args) => check(*args),
        Command::Run(args) => run(*args),
        Command::Cleanup {
            config,
            pin_dir,
            state_dir,
            force,
            bgp,
        } => cleanup(config.as_deref(), pin_dir, state_dir, force, bgp),
    };
    // One clear line and a non-zero exit, whatever RUST_BACKTRACE says.
    if let Err(e) = result {
        eprintln!("lbd: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}

fn check(args: RunArgs) -> anyhow::Result<()> {
    let config = args.config.clone();
    // The same settings `lbd run` would start with, refused the same way.
    let options = resolve(args)?;
    let daemon = &options.daemon;
    // As `lbd run` checks them before it touches anything: they exist and forward.
    for interface in &daemon.interfaces {
        dataplane::attachable(interface)?;
    }
    println!(
        "interfaces: {}{}",
        daemon.interfaces.join(", "),
        if daemon.late_interfaces.is_empty() {
            String::new()
        } else {
            format!(
                " (and {} once it exists)",
                daemon.late_interfaces.join(", ")
            )
        }
    );
    if let Some(host) = &daemon.docker_host {
        let bridges = if daemon.docker_bridges {
            " (and attaching to its bridge networks)"
        } else {
            ""
        };
        println!("swarm: following {host}{bridges}");
    }
    let file = match &config {
        Some(path) => ServiceFile::load(path)?,
        None => ServiceFile::default(),
    };
    // The API state laid over the file as `lbd run` lays it: a name both define, say, is
    // refused here too. The swarm's services are the Engine's, not checked here.
    let (api, merged, _) = lb_userspace::daemon::merge_saved_api_state(
        &file,
        &daemon.state_dir,
        &SwarmServices::default(),
    )?;
    let what = match (&config, api == ApiState::default()) {
        (Some(path), true) => path.display().to_string(),
        (Some(path), false) => format!(
            "{} with the API state in {}",
            path.display(),
            daemon.state_dir.display()
        ),
        (None, _) => format!("the API state in {}", daemon.state_dir.display()),
    };
    let node =
        dataplane::node_facts().context("reading this node's addresses and connected subnets")?;
    let desired = plan::plan(&merged.file, &node).with_context(|| what.clone())?;
    if desired.services.is_empty() {
        println!("{what}: no services");
    }
    for s in &desired.services {
        // The VIP, or the node's addresses of one family: a dual-stack service's two lines
        // tell apart.
        let on = match s.vip {
            Some(vip) => vip.to_string(),
            None if s.frontends.first().is_some_and(SocketAddr::is_ipv6) => {
                "this node's IPv6 addresses".to_owned()
            }
            None => "this node's IPv4 addresses".to_owned(),
        };
        println!(
            "{} {}/{}: {} frontend(s) on {on}, {} backend(s)",
            s.name,
            s.mapping.frontend,
            s.mapping.protocol,
            s.frontends.len(),
            s.backends.len()
        );
    }
    Ok(())
}

/// Stops meshlb for good (`lb_userspace::cleanup`): the VIPs are withdrawn, so the router
/// moves their flows to the other nodes, then the dataplane is removed (refused while an lbd
/// runs, unless --force stops it first). Flags win over `config`'s `lbd:` section, as for
/// `lbd run`; the BIRD settings `lbd run` recorded in its state directory are withdrawn too.
fn cleanup(
    config: Option<&Path>,
    pin_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    force: bool,
    bgp: BgpArgs,
) -> anyhow::Result<()> {
    // Read before anything is removed: a file that does not parse stops nothing. One that is
    // not there (a swarm-only node, or /etc/meshlb already removed) has no lbd section.
    let file = match config {
        Some(path) if !path.exists() => {
            warn!(
                "{} does not exist: cleaning up with the flags and defaults only",
                path.display()
            );
            ServiceFile::default()
        }
        Some(path) => ServiceFile::load(path).with_context(|| {
            "lbd cleanup reads the file's lbd section; fix the file, or leave --config out \
             and give --pin-dir and --bird-include"
        })?,
        None => ServiceFile::default(),
    };
    let pin_dir = pin_dir
        .or(file.lbd.pin_dir)
        .unwrap_or_else(|| settings::DEFAULT_PIN_DIR.into());
    let pin_dir = pin_dir.as_path();
    let state_dir = state_dir
        .or(file.lbd.state_dir)
        .unwrap_or_else(|| settings::DEFAULT_STATE_DIR.into());
    let bgp = bgp.resolve(file.lbd.bgp)?;
    let when_running = if force {
        pin::WhenRunning::Stop
    } else {
        pin::WhenRunning::Refuse
    };
    let done = lb_userspace::cleanup::cleanup(pin_dir, &state_dir, when_running, bgp.as_ref())?;
    if done.recorded > 0 {
        println!(
            "{} BIRD include file(s) recorded by lbd run in {}",
            done.recorded,
            state_dir.display()
        );
    }
    for (bird, withdrawal) in &done.withdrawals {
        match withdrawal {
            Withdrawal::Withdrawn => {
                println!("withdrew every VIP ({} is empty)", bird.include.display())
            }
            Withdrawal::BirdNotRunning(why) => warn!(
                "BIRD is not running ({why}): nothing is announced through it; {} is empty for \
                 when it starts",
                bird.include.display()
            ),
        }
    }
    // Loud: a node whose lbd announced through BIRD and whose state directory is gone (or
    // another than --state-dir names) keeps its VIPs announced with nothing serving them.
    // lbd run records where it announces before it does (a record it could not write, its
    // status showed), so no record means no announcing from this state directory, but the
    // directory may be another; with no BIRD running, nothing is announced through any.
    if done.withdrawals.is_empty() && lb_userspace::cleanup::bird_process_runs() {
        warn!(
            "no BGP settings (--bird-include, lbd.bgp in --config, or recorded by lbd run in \
             {}): no VIP withdrawn; if this node announces VIPs through BIRD, the router keeps \
             sending their traffic here until the include file is emptied (run lbd cleanup \
             --bird-include FILE)",
            state_dir.display()
        );
    }
    if done.removed {
        println!(
            "removed {}: meshlb is detached and its maps are freed",
            pin_dir.display()
        );
    } else {
        println!("nothing pinned at {}", pin_dir.display());
    }
    Ok(())
}

fn resolve(args: RunArgs) -> anyhow::Result<RunOptions> {
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
        (interfaces, late_interfaces) = event_loop::swarm_interfaces()?;
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
    let watch_ms = args
        .watch_interval_ms
        .or(s.watch_interval_ms)
        .unwrap_or(settings::DEFAULT_WATCH_INTERVAL_MS);
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
    if args.docker_bridges.is_some() && docker_host.is_none() {
        bail!(
            "--docker-bridges: only with --swarm (the bridge networks followed are the Docker \
             Engine's); add --swarm or leave the flag out"
        );
    }
    let docker_bridges = docker_host.is_some()
        && args.docker_bridges.or(s.docker_bridges).unwrap_or_default() == DockerBridges::On;
    Ok(RunOptions {
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
                kernel_log: args.kernel_log.or(s.kernel_log).unwrap_or_default(),
                pin_dir: Some(pin_dir),
            },
            socket_cgroup,
            docker_bridges,
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
        watch: Some(watch_ms)
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis),
        bgp: args.bgp.resolve(s.bgp)?,
    })
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let stopped = event_loop::run(resolve(args)?)?;
    // The final global counters, one JSON line on stdout, for scripts and tests.
    println!("{}", stopped.summary);
    info!("stopped; the dataplane keeps forwarding (pinned); `lbd cleanup` removes it");
    Ok(())
}
