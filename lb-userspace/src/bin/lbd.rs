//! lbd: the meshlb node daemon.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use lb_common::limits::DEFAULT_CONNTRACK_ENTRIES;
use lb_userspace::{
    config::ServiceFile,
    dataplane::{self, Dataplane, LoadOptions, XdpMode},
    reconcile,
};
use tracing::{error, info};

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
    /// Load the dataplane, attach it to the interfaces and serve the services in the file.
    Run(RunArgs),
    /// Validate a service file and print what it would program; touches nothing.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Service file (YAML).
    #[arg(long, short)]
    config: PathBuf,
    /// Interface to attach to; repeat for several (client-facing and backend-facing).
    #[arg(long = "interface", short, required = true)]
    interfaces: Vec<String>,
    /// XDP attach mode.
    #[arg(long, value_enum, default_value_t = XdpMode::Auto)]
    xdp_mode: XdpMode,
    /// An interface that accepts XDP frames (a NIC with a native XDP driver, or a veth whose
    /// peer runs an XDP program): packets to it are sent with XDP_REDIRECT. Others are
    /// forwarded by the TC program.
    #[arg(long = "xdp-redirect")]
    xdp_redirect: Vec<String>,
    /// Connection-table capacity (entries; a flow takes two).
    #[arg(long, default_value_t = DEFAULT_CONNTRACK_ENTRIES)]
    conntrack_entries: u32,
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
        Command::Run(args) => run(args),
    };
    // One clear line and a non-zero exit, whatever RUST_BACKTRACE says.
    if let Err(e) = result {
        eprintln!("lbd: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}

/// Reads and plans the service file; `previous` keeps the ids of what is already running.
fn plan(
    config: &std::path::Path,
    previous: Option<&reconcile::DesiredState>,
) -> anyhow::Result<reconcile::DesiredState> {
    let file = ServiceFile::load(config)?;
    let node_addrs = dataplane::node_addresses().context("listing this node's addresses")?;
    reconcile::plan_from(&file, &node_addrs, previous)
        .with_context(|| format!("{}", config.display()))
}

fn check(config: &std::path::Path) -> anyhow::Result<()> {
    let desired = plan(config, None)?;
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

/// Re-reads the service file and applies only the difference. A file that does not plan is
/// refused and the running configuration stays.
fn reload(config: &std::path::Path, dp: &mut Dataplane, running: &mut reconcile::DesiredState) {
    let next = match plan(config, Some(running)) {
        Ok(next) => next,
        Err(e) => {
            error!("reload refused, the running configuration stays: {e:#}");
            return;
        }
    };
    if next == *running {
        info!("reload: no change");
        return;
    }
    match dp.apply(Some(running), &next) {
        Ok(()) => {
            info!(
                services = next.services.len(),
                frontends = next.frontends.len(),
                backends = next.backends.len(),
                "reloaded"
            );
            *running = next;
        }
        // The maps may now hold part of the new plan: say so loudly; the next reload
        // rewrites whatever differs.
        Err(e) => error!("reload failed half-way, some of the new configuration is live: {e:#}"),
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    // Everything that can be wrong with the input is checked before the kernel is touched.
    let mut desired = plan(&args.config, None)?;
    for name in &args.xdp_redirect {
        if !args.interfaces.contains(name) {
            anyhow::bail!("--xdp-redirect {name}: not one of the --interface arguments");
        }
    }
    let mut dp = Dataplane::load(LoadOptions {
        conntrack_entries: args.conntrack_entries,
    })?;
    dp.apply(None, &desired)?;
    for interface in &args.interfaces {
        dp.attach(interface, args.xdp_mode)?;
    }
    for name in &args.xdp_redirect {
        dp.allow_xdp_redirect(dataplane::ifindex(name)?)?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        // Handlers first, then "ready": a SIGHUP or SIGTERM right after must not meet the
        // default action.
        let mut term = signal(SignalKind::terminate())?;
        let mut hangup = signal(SignalKind::hangup())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        info!(
            services = desired.services.len(),
            frontends = desired.frontends.len(),
            backends = desired.backends.len(),
            interfaces = ?args.interfaces,
            "ready"
        );
        loop {
            tokio::select! {
                _ = interrupt.recv() => break,
                _ = term.recv() => break,
                _ = hangup.recv() => reload(&args.config, &mut dp, &mut desired),
            }
        }
        anyhow::Ok(())
    })?;
    let stats = dp.traffic(
        desired.services.iter().map(|s| s.id),
        desired.backends.keys().copied(),
    )?;
    let (entries, capacity) = dp.conntrack_occupancy()?;
    // The final counters, one JSON line on stdout, for scripts and tests.
    println!(
        "{}",
        serde_json::json!({
            "global": stats.global,
            "services": stats.services,
            "backends": stats.backends,
            "conntrack": { "entries": entries, "capacity": capacity },
        })
    );
    info!("detached; bye");
    Ok(())
}
