//! `lbd run`'s event loop: the admin API and metrics listeners, signals (SIGHUP reloads,
//! SIGTERM/SIGINT stop), the service-file and node-address watches, the counter sampler, the
//! kernel-log pump, the health checks and the swarm follower. Every change it starts goes through the daemon's
//! one commit path; this loop only decides when.

mod host;
#[allow(unused_imports)]
pub use host::*;
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::{sync::watch, task::JoinSet};
use tracing::{error, info, warn};

use super::{server, shared::Shared};
use crate::{
    api::{Outcome, Trigger},
    daemon::{Daemon, DaemonError, DaemonOptions, LinkEvent},
    dataplane,
    source::{api_state::ApiState, swarm},
};

/// Everything `lbd run` needs, flags and file settings resolved.
pub struct RunOptions {
    pub daemon: DaemonOptions,
    /// The admin API's Unix socket.
    pub api: PathBuf,
    /// The TCP admin API's address and the file holding its bearer token.
    pub api_listen: Option<(SocketAddr, PathBuf)>,
    pub metrics: SocketAddr,
    /// How often the service file is checked for changes; `None`: only on SIGHUP.
    pub watch: Option<Duration>,
    /// Announce the VIPs through BIRD (`lbd.bgp`).
    pub bgp: Option<crate::announce::BirdSettings>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    // The cause is told in the text, not given as the source too: `{:#}` would repeat it.
    #[error("{what}: {error}")]
    Io { what: String, error: std::io::Error },
    #[error("{0}")]
    Token(String),
    #[error("the swarm follower: {0}")]
    Swarm(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RunError {
    let what = what.into();
    move |error| RunError::Io { what, error }
}

/// The daemon's last counters, for the one JSON line `lbd run` prints when it stops.
pub struct Stopped {
    pub summary: serde_json::Value,
}

/// Starts the daemon, serves until SIGTERM or SIGINT, and returns its final counters. The
/// dataplane keeps forwarding afterwards (it is pinned).
pub fn run(options: RunOptions) -> Result<Stopped, RunError> {
    raise_open_files_limit();
    let token = options
        .api_listen
        .as_ref()
        .map(|(_, path)| super::auth::Token::read(path))
        .transpose()
        .map_err(RunError::Token)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(io("starting the async runtime"))?;
    // Before the start, which takes seconds (loading and verifying the programs, adopting):
    // a SIGHUP (`systemctl reload`) or SIGTERM then must not meet the default action, which
    // kills lbd mid-start. They wait in their streams until lbd serves.
    let signals = {
        let _runtime = runtime.enter();
        Signals::register()?
    };
    // Every listener before the start too: an address lbd may not use is refused before
    // anything is loaded or attached (a start that failed after it would leave the
    // dataplane attached with no lbd). The API socket first.
    let api = server::bind_unix(&options.api)
        .map_err(io(format!("admin API socket {}", options.api.display())))?;
    let tcp = match runtime.block_on(TcpListeners::bind(&options)) {
        Ok(tcp) => tcp,
        Err(e) => {
            api.remove();
            return Err(e);
        }
    };
    // Stamped before the start reads the file: a change made while it starts (seconds, with
    // the dataplane to load) is then seen by the first check, and read again at worst.
    let stamp_at_start = options.daemon.config.as_deref().and_then(file_stamp);
    let started = Daemon::start(&options.daemon).and_then(Shared::new);
    let shared = match started {
        Ok(shared) => shared,
        Err(e) => {
            api.remove();
            return Err(e.into());
        }
    };
    let listeners = Listeners { api, tcp, token };
    runtime.block_on(serve(
        shared.clone(),
        &options,
        signals,
        listeners,
        stamp_at_start,
    ))?;
    // Bounded whatever the configuration (per service counters of 10,000 services would be a
    // 20 MB line in the journal): those are `lbctl stats` and /metrics while lbd runs.
    let daemon = shared.daemon();
    let report = daemon.report(daemon.conntrack_occupancy()?)?;
    Ok(Stopped {
        summary: serde_json::json!({
            "generation": report.generation,
            "global": report.global,
            "conntrack": report.conntrack,
            "services": report.services.len(),
        }),
    })
}

/// Raises the soft limit on open files to the hard one (systemd's default soft limit is 1024):
/// the maps, links, sockets and the admin API's connections all take descriptors.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            let soft = limit.rlim_cur;
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                info!(
                    from = soft,
                    to = limit.rlim_max,
                    "raised the open-files limit"
                );
            }
        }
    }
}

/// The signals `lbd run` acts on: SIGHUP reloads, SIGTERM and SIGINT stop.
struct Signals {
    term: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    /// Replaces their default actions; within the runtime.
    fn register() -> Result<Self, RunError> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).map_err(io("SIGTERM handler"))?,
            hangup: signal(SignalKind::hangup()).map_err(io("SIGHUP handler"))?,
            interrupt: signal(SignalKind::interrupt()).map_err(io("SIGINT handler"))?,
        })
    }
}

/// The TCP admin API's listener (with `--api-listen`) and the metrics endpoint's, bound.
struct TcpListeners {
    api: Option<tokio::net::TcpListener>,
    metrics: tokio::net::TcpListener,
}

impl TcpListeners {
    async fn bind(options: &RunOptions) -> Result<Self, RunError> {
        let api = match &options.api_listen {
            Some((addr, _)) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                let what = bind_failure("admin API", *addr, &e, "--api-listen");
                RunError::Io { what, error: e }
            })?),
            None => None,
        };
        let metrics = tokio::net::TcpListener::bind(options.metrics)
            .await
            .map_err(|e| {
                let what = bind_failure("metrics", options.metrics, &e, "--metrics");
                RunError::Io { what, error: e }
            })?;
        Ok(Self { api, metrics })
    }
}

/// What a listener that could not bind `addr` was, and the way out. "Cannot assign requested
/// address" means no interface of this node has the address up: for a loopback address, `lo`
/// is down (a new network namespace starts so), which choosing another address would not fix.
fn bind_failure(listener: &str, addr: SocketAddr, error: &std::io::Error, flag: &str) -> String {
    if error.kind() != std::io::ErrorKind::AddrNotAvailable {
        return format!("{listener} on {addr} (choose another with {flag})");
    }
    let bring_up = if addr.ip().is_loopback() {
        "bring the loopback interface up (`ip link set lo up`)"
    } else {
        "add it to an interface"
    };
    format!(
        "{listener} on {addr}: the address is not up on this node; {bring_up}, or choose \
         another with {flag}"
    )
}

/// Every listener, bound before the start, and the TCP API's token.
struct Listeners {
    api: server::ApiSocket,
    tcp: TcpListeners,
    token: Option<super::auth::Token>,
}

/// A stop signal the listeners and background tasks wait on.
#[derive(Clone)]
struct Stop(watch::Receiver<bool>);

impl Stop {
    fn wait(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.0.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }
}

/// Serves until SIGTERM or SIGINT; one that came during the start stops lbd as soon as it
/// serves, and a SIGHUP then is one reload.
async fn serve(
    shared: Arc<Shared>,
    options: &RunOptions,
    signals: Signals,
    listeners: Listeners,
    stamp_at_start: Option<FileStamp>,
) -> Result<(), RunError> {
    let Signals {
        mut term,
        mut hangup,
        mut interrupt,
    } = signals;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop = Stop(stop_rx);

    let token = listeners.token.clone();
    let mut listeners = listen(&shared, listeners, &stop);
    pump_kernel_log(&shared)?;
    sample_counters(&shared, &stop);
    let record_at =
        options
            .daemon
            .load
            .pin_dir
            .as_ref()
            .map(|pin_dir| super::announce_task::RecordAt {
                state_dir: options.daemon.state_dir.clone(),
                pin_dir: pin_dir.clone(),
            });
    match (&options.bgp, record_at) {
        (Some(bgp), record_at) => {
            super::announce_task::spawn(&shared, bgp.clone(), record_at, stop.wait());
        }
        // `lbd.bgp` taken away: what earlier runs announced is withdrawn.
        (None, Some(at)) => {
            tokio::task::spawn_blocking(move || super::announce_task::withdraw_earlier(&at, None));
        }
        (None, None) => {}
    }
    super::health_task::spawn(&shared, stop.wait());
    let mut swarm_rx = follow_swarm(&shared, options, &stop)?;

    let config = options.daemon.config.as_deref();
    let mut watched = stamp_at_start;
    // A file change refused for what it says (e.g. a service the API has, or a table too
    // small for the API's backends) waits for the API to change: the API state it was
    // refused with. Then it is tried again, so the way out the refusal names (say,
    // `lbctl remove-service`) applies the file without a SIGHUP. Other changes (health,
    // swarm, the node's addresses) do not retry it: each retry plans the whole file and logs
    // the refusal again.
    let mut refused_with: Option<ApiState> = None;
    let watching = options.watch.is_some() && config.is_some();
    let mut file_watch = tokio::time::interval(options.watch.unwrap_or(Duration::from_secs(3600)));
    file_watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Interfaces, addresses and connected subnets: netlink's link, address and route events
    // say at once when they change (an attached interface deleted and made again,
    // docker_gwbridge appearing, a bridge Docker creates later, a DHCP renewal, a link route
    // added); a look at the addresses every second besides, in case an event was missed.
    let links = watch_links();
    let mut every_second = tokio::time::interval(Duration::from_secs(1));
    let mut seen_addresses = dataplane::node_addresses().ok();
    every_second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    log_ready(&shared, options);
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = term.recv() => break,
            Some(snapshot) = swarm_rx.recv() => apply_swarm(&shared, snapshot).await,
            _ = hangup.recv() => {
                if let Some(token) = &token {
                    token.reread();
                }
                let stamp = config.and_then(file_stamp);
                let reloaded = reload(&shared, Trigger::Signal, watching).await;
                if !matches!(reloaded, Reload::Failed) {
                    watched = stamp;
                    refused_with = reloaded.refused_with();
                }
            }
            _ = every_second.tick() => {
                follow_interfaces(&shared, &mut seen_addresses, false, watching).await;
            }
            Some(changes) = link_event(links.as_ref()) => {
                follow_interfaces(&shared, &mut seen_addresses, changes.connected, watching).await;
            }
            _ = file_watch.tick(), if watching => {
                // A change whose reload failed (not refused) is tried again at the next check;
                // a refused one once the API changed.
                let stamp = config.and_then(file_stamp);
                // Not waiting for a change under way: looked at again at the next check.
                let retry = refused_with
                    .as_ref()
                    .is_some_and(|with| shared.try_daemon().is_some_and(|d| d.api_state() != with));
                // A file being written in place is left until it has settled.
                let settling = stamp.is_some_and(|(modified, ..)| !settled(modified, SystemTime::now()));
                if (stamp != watched || retry) && !settling {
                    let reloaded = reload(&shared, Trigger::File, watching).await;
                    if !matches!(reloaded, Reload::Failed) {
                        watched = stamp;
                        refused_with = reloaded.refused_with();
                    }
                }
            }
        }
    }
    let _ = stop_tx.send(true);
    // A graceful shutdown waits for every open connection, and one that sent half a request
    // (the metrics endpoint may listen on every address) would hold lbd's stop until systemd
    // kills it: past a few seconds the rest are closed.
    let drained = tokio::time::timeout(LISTENERS_STOP, async {
        while let Some(result) = listeners.join_next().await {
            if let Ok(Err(e)) = result {
                warn!("a listener ended with: {e}");
            }
        }
    })
    .await;
    if drained.is_err() {
        warn!(
            "connections still open {LISTENERS_STOP:?} after the stop began were closed (a \
             client that sent part of a request and nothing more)"
        );
        listeners.abort_all();
    }
    Ok(())
}

/// How long a stop waits for the API's and the metrics endpoint's open connections.
const LISTENERS_STOP: Duration = Duration::from_secs(5);

/// Serves the admin API (Unix socket, and TCP with a token) and the metrics endpoint.
fn listen(shared: &Arc<Shared>, listeners: Listeners, stop: &Stop) -> JoinSet<std::io::Result<()>> {
    use super::listener;
    let mut tasks = JoinSet::new();
    tasks.spawn(server::serve_unix(
        listeners.api,
        shared.clone(),
        stop.0.clone(),
    ));
    if let (Some(tcp), Some(token)) = (listeners.tcp.api, listeners.token) {
        if let Ok(addr) = tcp.local_addr() {
            info!(%addr, "admin API listening on TCP (bearer token required)");
        }
        let counted = shared.clone();
        tasks.spawn(listener::serve(
            "admin API (TCP)",
            tcp,
            super::auth::router_with_token(shared.clone(), token),
            listener::API,
            move || server::record(&counted, axum::http::StatusCode::SERVICE_UNAVAILABLE),
            stop.0.clone(),
        ));
    }
    let metrics = listeners.tcp.metrics;
    if let Ok(addr) = metrics.local_addr() {
        info!(%addr, "metrics listening");
    }
    tasks.spawn(listener::serve(
        "metrics",
        metrics,
        server::metrics_router(shared.clone()),
        listener::METRICS,
        || {},
        stop.0.clone(),
    ));
    tasks
}

/// Moves kernel log records into this process's log as they come.
fn pump_kernel_log(shared: &Arc<Shared>) -> Result<(), RunError> {
    let Some(log) = shared.daemon().take_kernel_log() else {
        return Ok(());
    };
    // SAFETY: the descriptor is the log ring buffer's, owned by `log`, which the `AsyncFd`
    // owns: it stays open and the same for the `AsyncFd`'s life.
    let mut readable = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(log, tokio::io::Interest::READABLE)
    }
    .map_err(|e| RunError::Io {
        what: "watching the kernel log".into(),
        error: e.into(),
    })?;
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = readable.readable_mut().await else {
                break;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
    Ok(())
}

/// Samples counters (for rates) and the connection-table occupancy every few seconds.
fn sample_counters(shared: &Arc<Shared>, stop: &Stop) {
    let sampler = shared.clone();
    let stop = stop.wait();
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
}

/// Starts the swarm follower when the daemon follows an Engine; its snapshots come out of the
/// returned channel, which the loop applies one at a time.
fn follow_swarm(
    shared: &Arc<Shared>,
    options: &RunOptions,
    stop: &Stop,
) -> Result<tokio::sync::mpsc::Receiver<swarm::Snapshot>, RunError> {
    let (swarm_tx, swarm_rx) = tokio::sync::mpsc::channel(4);
    if let Some(host) = &options.daemon.docker_host {
        let status = shared.daemon().swarm_follow_status().ok_or_else(|| {
            RunError::Swarm("a daemon started with a docker host has no follow status".into())
        })?;
        info!(docker_host = %host, "swarm: following the Docker Engine");
        let mut engine = swarm::Engine::new(host).map_err(|e| RunError::Swarm(e.to_string()))?;
        if options.daemon.socket_cgroup.is_none() {
            engine = engine.without_container_pids();
        }
        tokio::spawn(swarm::follow::follow(engine, swarm_tx, status, stop.wait()));
    }
    Ok(swarm_rx)
}

fn log_ready(shared: &Shared, options: &RunOptions) {
    let daemon = shared.daemon();
    let running = daemon.running();
    info!(
        services = running.services.len(),
        frontends = running.frontends.len(),
        backends = running.backends.len(),
        interfaces = ?options.daemon.interfaces,
        api = %options.api.display(),
        "ready"
    );
    // Also a problem `lbctl status` names, while it lasts.
    if let Some(problem) = crate::dataplane::node_ports::shared_with_kernel() {
        warn!("{problem}");
    }
}

/// Attaches again to interfaces made again, to those waited for, and replans when the node's
/// addresses (published ports) or its connected subnets (hairpins, after
/// `connected_changed`: a route event said one came or went) changed, once per change, even
/// if the replan is refused. The looks take the daemon's lock, so they run off the runtime's
/// threads: a long change holding it (a whole replan) then delays them, not the runtime.
async fn follow_interfaces(
    shared: &Arc<Shared>,
    seen_addresses: &mut Option<Vec<std::net::IpAddr>>,
    connected_changed: bool,
    watching: bool,
) {
    let s = shared.clone();
    let seen = seen_addresses.clone();
    let looked =
        tokio::task::spawn_blocking(move || look_at_interfaces(&s, seen, connected_changed)).await;
    let (now, changed) = match looked {
        Ok(looked) => looked,
        Err(e) => {
            error!("following the interfaces: {e}");
            return;
        }
    };
    // Addresses come with their subnets' link routes: said as what the operator did.
    let what = if now != *seen_addresses {
        "addresses"
    } else {
        "connected subnets"
    };
    *seen_addresses = now;
    if changed {
        info!("the node's {what} changed; replanning");
        let _ = reload(shared, Trigger::Addresses, watching).await;
    }
}

/// `follow_interfaces`' looks, under the daemon's lock: the node's addresses now, and whether
/// the node changed in a way the plan sees: its addresses since `seen`, or its connected
/// subnets (read only when `connected_changed`: a router's routing table is large).
fn look_at_interfaces(
    shared: &Shared,
    seen: Option<Vec<std::net::IpAddr>>,
    connected_changed: bool,
) -> (Option<Vec<std::net::IpAddr>>, bool) {
    let events = shared.daemon().follow_links();
    for event in events {
        match event {
            LinkEvent::Missing { interface } => warn!(
                interface,
                "the interface is gone, and meshlb's programs with it; attaching again as soon as an interface of that name exists"
            ),
            LinkEvent::Reattached {
                interface,
                old_ifindex,
                ifindex,
            } => info!(
                interface,
                old_ifindex, ifindex, "the interface was made again: attached again"
            ),
            LinkEvent::Failed { interface, error } => {
                error!(
                    interface,
                    "attaching again failed, retrying in a second: {error}"
                )
            }
        }
    }
    attach_appeared(shared);
    {
        let mut daemon = shared.daemon();
        if let Some(Err(e)) = daemon.retry_swarm() {
            let text = format!("{e:#}");
            if daemon.swarm_error_is_new(&text) {
                error!(
                    retry_in_s = daemon.swarm_retry_in().map_or(0, |r| r.as_secs()),
                    "swarm: the swarm's change is still not applied, now: {text}"
                );
            } else {
                tracing::debug!("swarm: the swarm's change is still not applied: {text}");
            }
        }
    }
    let now = dataplane::node_addresses().ok();
    let changed = (now != seen || connected_changed) && shared.daemon().node_changed();
    (now, changed)
}

/// The netlink link and address watch, readable when events wait; `None` (said in the log)
/// when the socket cannot be made: the look every second still follows interfaces.
fn watch_links() -> Option<tokio::io::unix::AsyncFd<LinkFd>> {
    let made = dataplane::netlink::LinkWatch::new().and_then(|watch| {
        // SAFETY: the descriptor belongs to the watch, which the AsyncFd owns: it stays open
        // while registered and is deregistered before it is closed.
        unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(
                LinkFd(watch),
                tokio::io::Interest::READABLE,
            )
        }
        .map_err(std::io::Error::from)
    });
    match made {
        Ok(fd) => Some(fd),
        Err(e) => {
            warn!("no netlink link events ({e}); following interfaces once a second");
            None
        }
    }
}

struct LinkFd(dataplane::netlink::LinkWatch);

impl std::os::fd::AsRawFd for LinkFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.fd()
    }
}

/// Resolves with what changed when link, address or connected-subnet events were read; never
/// without a watch.
async fn link_event(
    watch: Option<&tokio::io::unix::AsyncFd<LinkFd>>,
) -> Option<dataplane::netlink::LinkChanges> {
    let Some(watch) = watch else {
        return std::future::pending().await;
    };
    let mut guard = watch.readable().await.ok()?;
    let changes = guard.get_inner().0.drain();
    guard.clear_ready();
    changes.any().then_some(changes)
}

/// How a reload went.
#[derive(Debug)]
enum Reload {
    /// Applied, or nothing changed.
    Settled,
    /// Refused for what the file says, with the daemon as it is: with this API state.
    Refused(Box<ApiState>),
    /// The node failed (out of descriptors, say): tried again at the next check.
    Failed,
}

impl Reload {
    /// The API state a refused file waits to change from (see `refused_with`).
    fn refused_with(self) -> Option<ApiState> {
        match self {
            Reload::Refused(with) => Some(*with),
            _ => None,
        }
    }
}

/// Re-reads the service file and applies the difference; the answer goes to the log (every
/// line says "reload"). A change of the node's addresses replans with the file as last
/// accepted: an edit of it waits for its own reload (settled, or signalled).
async fn reload(shared: &Arc<Shared>, trigger: Trigger, watching: bool) -> Reload {
    let s = shared.clone();
    let result = tokio::task::spawn_blocking(move || {
        let mut daemon = s.daemon();
        let result = match trigger {
            Trigger::Addresses => daemon.replan(trigger),
            _ => daemon.reload_file(trigger),
        };
        // Only a refusal needs it (see `Reload::Refused`).
        let api = result
            .as_ref()
            .is_err_and(DaemonError::is_input)
            .then(|| Box::new(daemon.api_state().clone()));
        (result, api)
    })
    .await;
    match result {
        Ok((Ok(Outcome::Unchanged), _)) => {
            info!(trigger = trigger.as_str(), "reload: no change");
            Reload::Settled
        }
        Ok((Ok(_), _)) => {
            info!(trigger = trigger.as_str(), "reloaded");
            Reload::Settled
        }
        Ok((Err(e), Some(api))) => {
            error!(
                trigger = trigger.as_str(),
                "reload refused, the running configuration stays ({}): {e:#}",
                retried_when(trigger, watching)
            );
            Reload::Refused(api)
        }
        Ok((Err(e), _)) => {
            error!(
                trigger = trigger.as_str(),
                "reload failed: {e:#} (see the line above for whether the previous configuration was restored); trying again at the next check"
            );
            Reload::Failed
        }
        Err(e) => {
            error!("reload: {e}");
            Reload::Failed
        }
    }
}

/// When a refused reload is tried again, as `serve` does: the file watch (`watching`) reads a
/// changed file, and a refused one again once the API state it was refused with changed; a
/// SIGHUP always reloads. A replan for the node's addresses is not retried as such: any change
/// applied later plans with the addresses of then.
fn retried_when(trigger: Trigger, watching: bool) -> &'static str {
    match (trigger, watching) {
        (Trigger::Addresses, _) => {
            "planned again at the next change of the node's addresses, or with any change \
             applied (of the service file, the API, health or the swarm)"
        }
        (_, true) => "tried again when the file changes, when the API changes, or at SIGHUP",
        (_, false) => "tried again at SIGHUP (the file is not watched: its watch interval is 0)",
    }
}

/// Applies a swarm snapshot; the answer goes to the log.
async fn apply_swarm(shared: &Arc<Shared>, snapshot: swarm::Snapshot) {
    let s = shared.clone();
    let result = tokio::task::spawn_blocking(move || {
        let mut daemon = s.daemon();
        let result = daemon.update_swarm(snapshot);
        let new = result
            .as_ref()
            .err()
            .is_some_and(|e| daemon.swarm_error_is_new(&format!("{e:#}")));
        (result, daemon.swarm_retry_in(), new)
    })
    .await;
    match result {
        // The daemon's own "applied" line (trigger "swarm") says what changed.
        Ok((Ok(_), _, _)) => {}
        Ok((Err(e), retry, true)) => error!(
            retry_in_s = retry.map_or(0, |r| r.as_secs()),
            "swarm: the swarm's change was not applied, the running configuration stays \
             (tried again, less and less often, until it is; this error is not logged again \
             until it changes): {e:#}"
        ),
        Ok((Err(e), _, false)) => {
            tracing::debug!("swarm: the swarm's change is still not applied: {e:#}");
        }
        Err(e) => error!("swarm: {e}"),
    }
}

/// Attaches interfaces that were waited for (docker_gwbridge before the node's first task).
fn attach_appeared(shared: &Shared) {
    for (interface, result) in shared.daemon().attach_appeared() {
        match result {
            Ok(()) => info!(interface, "attached: the interface now exists"),
            Err(e) => error!(interface, "attaching failed, retrying in a second: {e}"),
        }
    }
}

/// What changes when the file is rewritten or replaced (editors rename over it).
/// How long a changed service file must have been left alone before the file watch reads it:
/// a script or an editor that writes it in place (not by renaming a new file over it) would
/// otherwise be read half-written, which may still parse (a list cut short).
const FILE_SETTLE: Duration = Duration::from_millis(300);

/// Whether a file last modified at `modified` has been left alone for `FILE_SETTLE` by `now`
/// (one modified after `now`, by a clock stepped back, counts as settled).
fn settled(modified: SystemTime, now: SystemTime) -> bool {
    now.duration_since(modified)
        .map_or(true, |age| age >= FILE_SETTLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_address_that_is_not_up_is_told_so() {
        let not_here = std::io::Error::from(std::io::ErrorKind::AddrNotAvailable);
        let text = bind_failure(
            "metrics",
            "[::1]:9464".parse().unwrap(),
            &not_here,
            "--metrics",
        );
        assert!(
            text.contains("not up on this node") && text.contains("ip link set lo up"),
            "{text}"
        );
        let text = bind_failure(
            "admin API",
            "198.18.0.1:1".parse().unwrap(),
            &not_here,
            "--api-listen",
        );
        assert!(
            text.contains("not up on this node") && !text.contains("ip link set lo up"),
            "{text}"
        );
        let in_use = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let text = bind_failure(
            "metrics",
            "127.0.0.1:9464".parse().unwrap(),
            &in_use,
            "--metrics",
        );
        assert_eq!(
            text,
            "metrics on 127.0.0.1:9464 (choose another with --metrics)"
        );
    }

    #[test]
    fn docker_made_interfaces_are_not_underlay() {
        for name in [
            "docker0",
            "docker_gwbridge",
            "veth1a2b",
            "br-1234",
            "vx-001",
            "ov-x",
        ] {
            assert!(docker_made(name), "{name}");
        }
        for name in ["eth0", "ens3", "bond0", "mlb-sw1"] {
            assert!(!docker_made(name), "{name}");
        }
    }

    #[test]
    fn a_file_modified_moments_ago_is_left_to_settle() {
        let now = SystemTime::now();
        assert!(!settled(now - Duration::from_millis(10), now));
        assert!(settled(now - FILE_SETTLE, now));
        assert!(
            settled(now + Duration::from_secs(5), now),
            "a clock stepped back"
        );
    }

    #[test]
    fn file_stamp_changes_when_the_file_is_replaced() {
        let dir = std::env::temp_dir().join(format!("mlb-stamp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("services.yaml");
        assert_eq!(file_stamp(&path), None, "no file, no stamp");
        std::fs::write(&path, "services: []\n").unwrap();
        let first = file_stamp(&path).expect("stamp");
        // An editor's save: write another file and rename it over (same size, new inode).
        let other = dir.join("services.yaml.tmp");
        std::fs::write(&other, "services: []\n").unwrap();
        std::fs::rename(&other, &path).unwrap();
        let second = file_stamp(&path).expect("stamp");
        std::fs::remove_dir_all(&dir).unwrap();
        assert_ne!(first, second, "a file renamed over the old one is a change");
    }
}
