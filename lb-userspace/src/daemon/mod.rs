//! The daemon's state: the loaded dataplane, the service file, what the API was told, and
//! what is programmed. Every change (start, SIGHUP, file change, API call) goes through
//! [`Daemon::commit`]: merge, validate, plan, persist, apply the difference, record.

mod lookups;
#[allow(unused_imports)]
pub use lookups::*;
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Instant,
};

use lb_common::maps::{FlowKey, TABLE_LEN_SLOT, service_flags};
use tracing::{error, info, warn};

use crate::{
    api::{Outcome, Trigger},
    dataplane::{self, Attachment, Dataplane, DataplaneError, LoadOptions},
    plan::{self, DesiredState, Ids, NodeFacts, PlanError, Replan},
    source::api_state::{ApiState, Merged, OverlayError, Source},
    source::file::{ConfigError, ServiceFile},
    source::settings::XdpMode,
    source::swarm::{self, Snapshot, SwarmServices},
};

mod adopt;
mod explain;
mod health;
mod links;
mod reads;
mod refusal;
mod report;
mod saved;
mod sockets;
mod swarm_state;

pub use health::CheckResult;
pub use links::LinkEvent;

use swarm_state::{
    displaced_swarm, load_scopes, load_swarm_state, plan_refusing_swarm, save_scopes, served_swarm,
    starting_swarm_services, swarm_blamed, swarm_services,
};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    // Transparent: the inner message is the whole message (no cause printed twice).
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Overlay(#[from] OverlayError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("reading this node's addresses and connected subnets: {0}")]
    NodeFacts(std::io::Error),
    #[error("{}: {message}", .path.display())]
    State { path: PathBuf, message: String },
}

impl DaemonError {
    /// Whether the caller's input was at fault (4xx) rather than the node (5xx).
    pub fn is_input(&self) -> bool {
        matches!(
            self,
            Self::Config(_)
                | Self::Plan(_)
                | Self::Overlay(OverlayError::Invalid(_) | OverlayError::Conflict(_))
                | Self::Overlay(OverlayError::NotFound(_))
        )
    }
}

/// How `lbd run` was asked to start.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    /// `None`: no service file (a swarm node may run on the swarm and the API alone).
    pub config: Option<PathBuf>,
    /// The Docker Engine to follow (`lbd run --swarm`); `None`: not a swarm node.
    pub docker_host: Option<String>,
    pub interfaces: Vec<String>,
    /// Interfaces to attach to once they exist (docker_gwbridge on a fresh swarm node).
    pub late_interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    pub xdp_redirect: Vec<String>,
    pub state_dir: PathBuf,
    pub load: LoadOptions,
    /// The cgroup v2 directory to attach the socket-level programs to; `None`: socket-level
    /// balancing off.
    pub socket_cgroup: Option<PathBuf>,
    /// Attach to the node's local Docker bridge networks while the Engine lists them (a swarm
    /// node, `--docker-bridges on`; see `links`).
    pub docker_bridges: bool,
}

const API_STATE_FILE: &str = "api-state.json";
/// The last swarm state read from the Engine: a restart while the Engine is down starts from
/// it rather than from nothing.
const SWARM_STATE_FILE: &str = "swarm-state.json";
/// The overlay networks' socket scopes: a restart keeps them (see `swarm::services`).
const SWARM_SCOPES_FILE: &str = "swarm-scopes.json";
/// The health checks' last verdicts: a restart starts from them (see `SavedHealth`).
const HEALTH_STATE_FILE: &str = "health-state.json";

/// How a change's merged configuration was had (see `Daemon::merge_and_plan`).
enum MergeStep {
    /// Merged anew: replaces `Daemon::merged` when the change is kept.
    Whole(Box<Merged>),
    /// `Daemon::merged` patched in place; the specs it had before (`None`: none).
    Patched(Vec<(String, Option<crate::source::file::ServiceSpec>)>),
}

pub struct Daemon {
    dp: Dataplane,
    config_path: Option<PathBuf>,
    /// The last swarm snapshot; `None` when lbd does not follow a swarm.
    swarm: Option<Snapshot>,
    /// What `swarm` became on this node, as last planned.
    swarm_services: SwarmServices,
    /// Network namespace cookies of local containers, by container id and pid.
    netns_cookies: BTreeMap<(String, u32), u64>,
    /// Interfaces waited for, attached when they appear.
    late_interfaces: Vec<String>,
    xdp_mode: XdpMode,
    /// The interfaces the XDP program redirects to itself (`--xdp-redirect`), by name: one
    /// made again is allowed again under its new index.
    xdp_redirect: Vec<String>,
    /// The swarm follower's health; `None` when lbd does not follow a swarm.
    swarm_follow: Option<swarm::follow::SharedStatus>,
    state_dir: PathBuf,
    /// The last service file that was accepted.
    file: ServiceFile,
    api: ApiState,
    merged: Merged,
    running: DesiredState,
    /// What `running` was planned for of the node (its addresses, its connected subnets).
    node: NodeFacts,
    generation: u64,
    changes: BTreeMap<(Trigger, Outcome), u64>,
    started: Instant,
    /// Why the maps may not match `running` (a failed write that could not be undone).
    degraded: Option<String>,
    /// Why the API state file may hold a change lbd did not keep (its restore failed); the
    /// next change writes it again.
    api_file_behind: Option<String>,
    /// The service file's refusal, while a reload of it has not applied since.
    file_refused: Option<refusal::FileRefusal>,
    /// Interfaces whose IPv6 forwarding was found off while the plan had IPv6 frontends:
    /// warned once each (`tell_ipv6_forwarding`).
    ipv6_forwarding_told: BTreeSet<String>,
    /// Attached interfaces that were deleted, and re-attachments by interface.
    links: links::LinkState,
    /// Checked backends' states: down ones are left out of the plan.
    health: crate::source::health::HealthBook,
    /// Moves on whenever `merged` is replaced: the health checks follow it.
    merged_epoch: u64,
    /// Whether `running` was planned from specs the health checks had changed (down
    /// backends left out); true when not known. While false, and no backend is down, a
    /// patched merge differs from what `running` was planned from only in the patched
    /// services (`merge_and_plan`).
    running_health_shaped: bool,
    /// A change of health the kernel refused (or that failed otherwise): when to retry it,
    /// and the wait after that. A backend that stays down or up brings no transition that
    /// would; any change applied since carries it (`take_plan` clears this).
    health_unapplied: Option<health::Retry>,
    /// The same for a swarm change (`update_swarm`): the follower sends a snapshot once.
    swarm_unapplied: Option<health::Retry>,
    /// The error a failed swarm change last told the log (told again only when it changes).
    swarm_error_told: Option<String>,
    /// A snapshot came while a failed swarm change waited for its retry, and was not tried.
    swarm_untried: bool,
}

impl Daemon {
    /// Reads the file and the state, loads (or adopts) the dataplane, programs it, attaches.
    /// Input is checked before the kernel is touched.
    pub fn start(options: &DaemonOptions) -> Result<Daemon, DaemonError> {
        let file = match &options.config {
            Some(path) => ServiceFile::load(path)?,
            None => ServiceFile::default(),
        };
        let swarm = options
            .docker_host
            .as_ref()
            .map(|_| load_swarm_state(&options.state_dir));
        let saved_scopes = load_scopes(&options.state_dir);
        let swarm_services = starting_swarm_services(swarm.as_ref(), &file, &saved_scopes);
        let (api, mut merged, api_changed) =
            merge_saved_api_state(&file, &options.state_dir, &swarm_services)?;
        let node = node_facts()?;
        // The checks' verdicts from before a restart shape the first plan: a backend found
        // down is not served again until its checks pass.
        let mut health = crate::source::health::HealthBook::default();
        health.seed(health::load_saved(&options.state_dir));
        health.sync(&merged.file, std::time::SystemTime::now());
        let mut desired = plan_refusing_swarm(&mut merged, None, |file| {
            Ok(plan::plan(&health.serving(file), &node)?)
        })?;
        for (name, reason) in &merged.swarm_refused {
            error!(service = %name, "swarm service not served: {reason}");
        }

        let saved_bridges = links::saved_bridges(swarm.as_ref(), options);
        // Before the pinned maps are touched: an adopting start cannot be undone (but for
        // replaced counters, `Dataplane::undo_failed_start`), and one that
        // failed at an interface would leave the maps holding this configuration for the
        // previous programs still attached elsewhere.
        for interface in &options.interfaces {
            dataplane::attachable(interface)?;
        }
        let mut dp = Dataplane::load(options.load.clone())?;
        // A saved "up" keeps a backend's flows across a restart; with no dataplane adopted
        // (a reboot) there are none, and the first failed check should take it out. Up and
        // unknown are served alike, so the plan above stands.
        if !dp.adopted() {
            health.forget_seeded_up(std::time::SystemTime::now());
        }
        // A start that fails from here undoes what it did (see `Dataplane::undo_failed_start`).
        // Backend endpoints removed while no lbd ran: their connected sockets are aborted
        // once the namespaces are known (see `abort_sockets_to`).
        let mut gone_endpoints = Vec::new();
        let programmed = (|| -> Result<(DesiredState, Vec<String>), DaemonError> {
            if dp.adopted() {
                (desired, gone_endpoints) =
                    adopt::adopt(&mut dp, &desired, &health.serving(&merged.file), &node)?;
            } else {
                dp.apply(None, &desired)?;
            }
            let late_interfaces = links::attach_at_start(&mut dp, options, &saved_bridges)?;
            match &options.socket_cgroup {
                Some(cgroup) => {
                    dp.attach_sockets(cgroup)?;
                }
                None => {
                    if dp.release_sockets()? {
                        info!(
                            "socket-level balancing is off: the pinned cgroup links are detached"
                        );
                    }
                }
            }
            let redirect = options
                .xdp_redirect
                .iter()
                .map(|name| dataplane::ifindex(name))
                .collect::<Result<Vec<_>, _>>()?;
            dp.set_xdp_redirect(&redirect)?;
            Ok((desired, late_interfaces))
        })();
        let (desired, late_interfaces) = match programmed {
            Ok(done) => done,
            Err(e) => {
                dp.undo_failed_start();
                return Err(e);
            }
        };
        let mut daemon = Daemon {
            dp,
            config_path: options.config.clone(),
            netns_cookies: BTreeMap::new(),
            late_interfaces,
            xdp_mode: options.xdp_mode,
            xdp_redirect: options.xdp_redirect.clone(),
            swarm_follow: options.docker_host.as_ref().map(|host| {
                std::sync::Arc::new(std::sync::Mutex::new(swarm::follow::FollowStatus {
                    docker_host: host.clone(),
                    ..Default::default()
                }))
            }),
            swarm,
            swarm_services,
            state_dir: options.state_dir.clone(),
            file,
            api,
            merged,
            running: desired,
            node,
            generation: 1,
            changes: BTreeMap::new(),
            started: Instant::now(),
            degraded: None,
            api_file_behind: None,
            file_refused: None,
            ipv6_forwarding_told: BTreeSet::new(),
            links: links::LinkState::following_bridges(options.docker_bridges, saved_bridges),
            health,
            merged_epoch: 1,
            running_health_shaped: true,
            health_unapplied: None,
            swarm_unapplied: None,
            swarm_error_told: None,
            swarm_untried: false,
        };
        // Written only now, with the pin directory locked and the start done: a start that
        // failed, or a second lbd the lock refused, must leave the running one's state alone.
        if api_changed && let Err(e) = daemon.api.save(&options.state_dir.join(API_STATE_FILE)) {
            warn!("{e}; the re-weights and removals that lapsed lapse again at the next start");
        }
        if daemon.swarm_services.scopes != saved_scopes {
            save_scopes(&options.state_dir, &daemon.swarm_services.scopes);
        }
        daemon.follow_bridges();
        daemon.count(Trigger::Startup, Outcome::Applied);
        daemon.sync_socket_namespaces();
        daemon.abort_sockets_to(gone_endpoints);
        daemon.tell_ipv6_forwarding();
        Ok(daemon)
    }

    /// Re-reads the service file and applies the difference; a refusal of it is kept for
    /// `lbctl status` until a reload applies it.
    pub fn reload_file(&mut self, trigger: Trigger) -> Result<Outcome, DaemonError> {
        let result = self.read_and_commit_file(trigger);
        let now = std::time::SystemTime::now();
        self.file_refused = refusal::FileRefusal::after(self.file_refused.take(), &result, now);
        result
    }

    fn read_and_commit_file(&mut self, trigger: Trigger) -> Result<Outcome, DaemonError> {
        let file = match &self.config_path {
            None => self.file.clone(),
            Some(path) => match ServiceFile::load(path) {
                Ok(file) => file,
                Err(e) => {
                    self.count(trigger, Outcome::Rejected);
                    return Err(e.into());
                }
            },
        };
        if let Some(path) = &self.config_path
            && file.lbd != self.file.lbd
        {
            warn!(
                "{}: the lbd: section changed; daemon settings (interfaces, listeners, \
                 directories) take effect when lbd restarts",
                path.display()
            );
        }
        let mut api = self.api.clone();
        let lapsed = api.drop_lapsed_edits(&file);
        if lapsed > 0 {
            info!(
                lapsed,
                "API re-weights and removals of backends the service file no longer lists lapse"
            );
        }
        self.commit(trigger, Some(file), api)
    }

    /// Plans again from the inputs as last accepted, the service file not read again: for a
    /// change of the node's addresses, which moves published ports. An edit of the file
    /// waits for its own reload (settled, or signalled).
    pub fn replan(&mut self, trigger: Trigger) -> Result<Outcome, DaemonError> {
        let api = self.api.clone();
        self.commit(trigger, None, api)
    }

    /// Applies an API change: `change` edits a copy of the API state; nothing is kept unless
    /// the result validates, plans and is programmed. Also the swarm services it took off
    /// the node (a name or port of theirs the change took: the operator's services win).
    pub fn change_api<T>(
        &mut self,
        change: impl FnOnce(&mut ApiState, &ServiceFile) -> Result<T, OverlayError>,
    ) -> Result<(T, Outcome, Vec<crate::api::DisplacedService>), DaemonError> {
        let mut api = self.api.clone();
        let value = match change(&mut api, &self.file) {
            Ok(value) => value,
            Err(e) => {
                self.count(Trigger::Api, Outcome::Rejected);
                return Err(e.into());
            }
        };
        let served = served_swarm(&self.merged);
        let outcome = self.commit(Trigger::Api, None, api)?;
        let displaced = displaced_swarm(&served, &self.merged);
        for gone in &displaced {
            warn!(service = %gone.service, "swarm service displaced by an API change: {}", gone.reason);
        }
        Ok((value, outcome, displaced))
    }

    /// The one way a configuration changes (file, API, swarm and health state alike);
    /// `file`: `None` when the service file stays as it is.
    fn commit(
        &mut self,
        trigger: Trigger,
        file: Option<ServiceFile>,
        api: ApiState,
    ) -> Result<Outcome, DaemonError> {
        let started = Instant::now();
        let swarm_services = swarm_services(
            self.swarm.as_ref(),
            file.as_ref().unwrap_or(&self.file),
            &self.swarm_services,
        );
        let (merged, node, next, health_shaped) =
            match self.merge_and_plan(trigger, file.as_ref(), &api, &swarm_services) {
                Ok(planned) => planned,
                Err(e) => {
                    self.count(trigger, Outcome::Rejected);
                    return Err(e);
                }
            };
        let api_path = self.state_dir.join(API_STATE_FILE);
        let api_changed = api != self.api;
        // A file left holding a refused change is written again with whatever is kept now.
        let save_api = api_changed || self.api_file_behind.is_some();
        // Persist before programming: an applied change is never lost by a crash.
        let planned_at = started.elapsed();
        if save_api && let Err(e) = api.save(&api_path) {
            self.restore_merged(merged);
            self.count(trigger, Outcome::Failed);
            return Err(e.into());
        }
        let saved_at = started.elapsed();
        if let MergeStep::Whole(merged) = &merged {
            for (name, reason) in &merged.swarm_refused {
                if self.merged.swarm_refused.get(name) != Some(reason) {
                    error!(service = %name, "swarm service not served: {reason}");
                }
            }
        }
        let unchanged = match &next {
            Replan::Delta(delta) => delta.changes_no_plan(),
            Replan::Full(plan) => plan.same_plan(&self.running),
        };
        if unchanged && self.degraded.is_none() {
            // The plan stays; what it was planned from is recorded.
            self.take_plan(next, health_shaped);
            self.keep_swarm_services(swarm_services);
            self.sync_socket_namespaces();
            self.keep_inputs(file, api, merged);
            self.node = node;
            self.api_file_behind = None;
            // An API edit the plan does not show yet (a drain of a backend that is down) is
            // still a change made and saved: said as applied, not as "no change".
            let outcome = if api_changed {
                self.generation += 1;
                Outcome::Applied
            } else {
                Outcome::Unchanged
            };
            self.count(trigger, outcome);
            return Ok(outcome);
        }
        if let Err(e) = self.program(&next) {
            self.restore_merged(merged);
            self.count(trigger, Outcome::Failed);
            if !save_api {
                return Err(e.into());
            }
            return match self.api.save(&api_path) {
                Ok(()) => {
                    self.api_file_behind = None;
                    Err(e.into())
                }
                Err(save) => {
                    let why = format!(
                        "it may hold a change that failed ({e}): writing the kept state back \
                         failed ({save}); the next change writes it again (a restart before \
                         that would apply the failed change)"
                    );
                    error!("API state file {}: {why}", api_path.display());
                    self.api_file_behind = Some(why.clone());
                    Err(DaemonError::State {
                        path: api_path,
                        message: why,
                    })
                }
            };
        }
        let applied_at = started.elapsed();
        self.degraded = None;
        self.api_file_behind = None;
        // Before the running plan and the merge it came from are replaced: it reads both.
        let left_behind = self.sockets_left_behind(&next);
        self.keep_swarm_services(swarm_services);
        self.sync_socket_namespaces();
        self.abort_sockets_to(left_behind);
        self.keep_inputs(file, api, merged);
        self.node = node;
        self.take_plan(next, health_shaped);
        self.generation += 1;
        self.tell_ipv6_forwarding();

        self.count(trigger, Outcome::Applied);
        info!(
            generation = self.generation,
            services = self.running.services.len(),
            frontends = self.running.frontends.len(),
            backends = self.running.backends.len(),
            trigger = trigger.as_str(),
            plan_ms = planned_at.as_secs_f64() * 1e3,
            persist_ms = (saved_at - planned_at).as_secs_f64() * 1e3,
            write_ms = (applied_at - saved_at).as_secs_f64() * 1e3,
            "applied"
        );
        Ok(Outcome::Applied)
    }

    /// Merges the file (`None`: the one kept), the API state and the swarm, and plans the
    /// result. When only some services' API edits changed, the kept merge is patched in place
    /// (`MergeStep::Patched`, put back by `restore_merged` if the change is not kept). A swarm
    /// service the plan refuses is left out (`plan_refusing_swarm`), after a whole merge.
    fn merge_and_plan(
        &mut self,
        trigger: Trigger,
        file: Option<&ServiceFile>,
        api: &ApiState,
        swarm_services: &SwarmServices,
    ) -> Result<(MergeStep, NodeFacts, Replan, bool), DaemonError> {
        // Merged whole while a swarm service is refused: a change of the operator's services
        // (a backend gone) or of the node's addresses may clear the cause.
        let node = self.node_now(trigger)?;
        let edited = match file {
            None if *swarm_services == self.swarm_services
                && self.merged.swarm_refused.is_empty() =>
            {
                api.edited_specs(&self.api, &self.file).transpose()?
            }
            _ => None,
        };
        if let Some(specs) = edited {
            let services = &mut self.merged.file.services;
            let before: Vec<_> = specs
                .into_iter()
                .map(|(name, spec)| {
                    let before = services.insert(name.clone(), spec);
                    (name, before)
                })
                .collect();
            let planned = self.plan_merged(&self.merged.file, Some(&before), &node);
            let step = MergeStep::Patched(before);
            match planned {
                Ok((next, health_shaped)) => {
                    return Ok((step, node, next, health_shaped));
                }
                // An edit that clashes with a swarm service: merged whole, which leaves the
                // swarm service out.
                Err(DaemonError::Plan(e)) if swarm_blamed(&self.merged, &e).is_some() => {
                    self.restore_merged(step);
                }
                Err(e) => {
                    self.restore_merged(step);
                    return Err(e);
                }
            }
        }
        let file = file.unwrap_or(&self.file);
        let mut merged = api.merge_with_swarm(file, &swarm_services.all_specs())?;
        merged.file.mesh = swarm_services.mesh.clone();
        // An API change is the operator's: a loop it makes into a served swarm service is
        // its error (see `plan_refusing_swarm`).
        let served_before = (trigger == Trigger::Api).then_some(&self.merged);
        let (next, health_shaped) = plan_refusing_swarm(&mut merged, served_before, |file| {
            self.plan_merged(file, None, &node)
        })?;
        Ok((
            MergeStep::Whole(Box::new(merged)),
            node,
            next,
            health_shaped,
        ))
    }

    /// Plans `merged` against the running plan (`patched`: the services a patched merge
    /// changed, and their specs before); the plan, and whether health checks shaped it.
    fn plan_merged(
        &self,
        merged: &ServiceFile,
        patched: Option<&[(String, Option<crate::source::file::ServiceSpec>)]>,
        node: &NodeFacts,
    ) -> Result<(Replan, bool), DaemonError> {
        let serving = self.health.serving(merged);
        let health_shaped = matches!(serving, std::borrow::Cow::Owned(_));
        // Only the patched services can differ from what the running plan was made from,
        // unless down backends were left out of either.
        let may_differ: Option<BTreeSet<String>> = match patched {
            Some(before) if !health_shaped && !self.running_health_shaped => {
                Some(before.iter().map(|(name, _)| name.clone()).collect())
            }
            _ => None,
        };
        // After a failed undo every entry is written: a whole plan.
        let next = if self.degraded.is_some() {
            Replan::Full(plan::plan_from(&serving, node, Some(&self.running))?)
        } else {
            plan::replan_among(&serving, node, &self.running, may_differ.as_ref())?
        };
        Ok((next, health_shaped))
    }

    /// The node as a change is planned for: its addresses read now, its connected subnets
    /// read again only for a change of the node's own (`Trigger::Addresses`: an address, or
    /// an event of a connected route), else those of the running plan, which the event loop
    /// keeps current. A router's table may hold a million routes: not dumped per API call.
    fn node_now(&self, trigger: Trigger) -> Result<NodeFacts, DaemonError> {
        if trigger == Trigger::Addresses {
            return node_facts();
        }
        Ok(NodeFacts {
            addresses: dataplane::node_addresses().map_err(DaemonError::NodeFacts)?,
            connected: self.node.connected.clone(),
        })
    }

    /// Puts back what `merge_and_plan` patched, for a change that is not kept.
    fn restore_merged(&mut self, step: MergeStep) {
        if let MergeStep::Patched(before) = step {
            let services = &mut self.merged.file.services;
            for (name, spec) in before {
                match spec {
                    Some(spec) => services.insert(name, spec),
                    None => services.remove(&name),
                };
            }
        }
    }

    /// Keeps the inputs of a change that was kept.
    fn keep_inputs(&mut self, file: Option<ServiceFile>, api: ApiState, merged: MergeStep) {
        if let Some(file) = file {
            self.file = file;
        }
        self.api = api;
        if let MergeStep::Whole(merged) = merged {
            self.merged = *merged;
        }
        self.merged_epoch += 1;
    }

    /// Writes `next` over the running plan's entries. On failure the running plan's entries
    /// are written back; when that fails too, lbd is degraded until a change rewrites all.
    fn program(&mut self, next: &Replan) -> Result<(), DataplaneError> {
        // Ids given out fresh start their counters at zero, before any entry names them.
        let (services, backends) = match next {
            Replan::Full(plan) => plan.ids.fresh_since(&self.running.ids),
            Replan::Delta(delta) => delta.fresh_ids(&self.running.ids),
        };
        let result = self
            .dp
            .zero_counters(&services, &backends)
            .and_then(|()| match next {
                // After a failed undo the maps may hold anything: write every entry, not the diff.
                Replan::Full(plan) if self.degraded.is_some() => self
                    .dp
                    .apply(None, plan)
                    .and_then(|()| self.dp.prune(plan).map(drop)),
                Replan::Full(plan) => self.dp.apply(Some(&self.running), plan),
                Replan::Delta(delta) => self.dp.apply_delta(delta),
            });
        let Err(e) = result else {
            return Ok(());
        };
        // Some of `next` may be written: writing the running plan's entries over it restores
        // every entry.
        let undone = match next {
            Replan::Full(plan) => self.dp.apply(Some(plan), &self.running),
            Replan::Delta(delta) => self.dp.apply_delta(&self.running.undo_of(delta)),
        };
        match undone {
            Ok(()) => {
                error!("applying the change failed; the previous configuration is restored: {e}")
            }
            Err(undo) => {
                let why = format!("a change failed ({e}) and undoing it failed too ({undo})");
                error!(
                    "{why}; the maps may hold parts of both; the next change (or the same file again) rewrites every entry"
                );
                self.degraded = Some(why);
            }
        }
        Err(e)
    }

    /// Makes `next` the running plan; `health_shaped`: planned from specs the health checks
    /// changed.
    fn take_plan(&mut self, next: Replan, health_shaped: bool) {
        match next {
            Replan::Full(plan) => self.running = plan,
            Replan::Delta(delta) => self.running.patch(delta),
        }
        self.running_health_shaped = health_shaped;
        // Planned with the health checks' and the swarm's latest word: nothing of theirs is
        // left unapplied.
        self.health_unapplied = None;
        self.swarm_unapplied = None;
        self.swarm_error_told = None;
    }

    /// Counts an API request refused before it reached the configuration (its body).
    pub fn count_rejected_api(&mut self) {
        self.count(Trigger::Api, Outcome::Rejected);
    }

    fn count(&mut self, trigger: Trigger, outcome: Outcome) {
        *self.changes.entry((trigger, outcome)).or_default() += 1;
    }

    /// Attaches the waited-for interfaces that exist now; a failed one is tried again at the
    /// next call.
    pub fn attach_appeared(&mut self) -> Vec<(String, Result<(), DaemonError>)> {
        self.follow_bridges();
        let mut done = Vec::new();
        let waiting = std::mem::take(&mut self.late_interfaces);
        for interface in waiting {
            if dataplane::ifindex(&interface).is_err() {
                self.late_interfaces.push(interface);
                continue;
            }
            match self.dp.attach(&interface, self.xdp_mode) {
                Ok(_) => done.push((interface, Ok(()))),
                Err(e) => {
                    self.late_interfaces.push(interface.clone());
                    done.push((interface, Err(e.into())));
                }
            }
        }
        self.tell_ipv6_forwarding();
        done
    }

    /// Warns, once per interface, of IPv6 forwarding off on an attached interface while the
    /// running plan has IPv6 frontends (the kernel's route lookup then refuses to forward
    /// them: `drop_fib_failed`): at the start, and when a change brings the first one or an
    /// interface is attached later. Not an error: a node may serve IPv4 only.
    fn tell_ipv6_forwarding(&mut self) {
        let interfaces: Vec<&str> = self
            .dp
            .attachments()
            .iter()
            .map(|a| a.interface.as_str())
            .collect();
        let untold = ipv6_forwarding_untold(
            self.running.frontends.keys(),
            &interfaces,
            dataplane::forwarding_enabled_v6,
            &self.ipv6_forwarding_told,
        );
        for interface in untold {
            warn!(
                interface,
                "IPv6 forwarding is off, and the configuration has IPv6 frontends: those \
                 arriving on this interface are dropped as drop_fib_failed; enable with \
                 `sysctl -w net.ipv6.conf.{interface}.forwarding=1`"
            );
            self.ipv6_forwarding_told.insert(interface);
        }
    }
}

/// The interfaces of `interfaces` not in `told` whose IPv6 forwarding is off, when
/// `frontends` has an IPv6 one; none otherwise (IPv4 only needs no IPv6 forwarding).
fn ipv6_forwarding_untold<'a>(
    mut frontends: impl Iterator<Item = &'a lb_common::maps::EndpointKey>,
    interfaces: &[&str],
    forwarding_on: impl Fn(&str) -> bool,
    told: &BTreeSet<String>,
) -> Vec<String> {
    if interfaces.iter().all(|i| told.contains(*i)) || !frontends.any(|f| !f.addr.is_v4()) {
        return Vec::new();
    }
    interfaces
        .iter()
        .filter(|i| !told.contains(**i) && !forwarding_on(i))
        .map(|i| (*i).to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_forwarding_is_told_only_with_ipv6_frontends_and_once() {
        use lb_common::maps::EndpointKey;
        let v4 = EndpointKey::new("198.18.100.1".parse::<IpAddr>().unwrap().into(), 80, 6);
        let v6 = EndpointKey::new("fd00::1".parse::<IpAddr>().unwrap().into(), 80, 6);
        let on = |interface: &str| interface == "eth1";
        let mut told = BTreeSet::new();
        let interfaces = ["eth0", "eth1"];
        assert!(ipv6_forwarding_untold([v4].iter(), &interfaces, on, &told).is_empty());
        assert_eq!(
            ipv6_forwarding_untold([v4, v6].iter(), &interfaces, on, &told),
            ["eth0"]
        );
        told.insert("eth0".to_owned());
        assert!(ipv6_forwarding_untold([v4, v6].iter(), &interfaces, on, &told).is_empty());
    }
    use crate::source::api_state::{BackendRef, Edit};

    /// A start that fails (here at an interface that does not exist; a second lbd refused
    /// by the pin lock alike) writes no state: the drain of a backend the file no longer
    /// lists lapses only once a start succeeds, and the running lbd keeps what it relies on.
    #[test]
    fn a_failed_start_leaves_the_api_state_as_it_was() {
        let dir = std::env::temp_dir().join(format!("mlb-failed-start-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("services.yaml");
        std::fs::write(
            &config,
            "services:\n  web:\n    vip: 198.18.100.1\n    ports: [\"80:8080/tcp\"]\n    backends: [198.18.2.10]\n",
        )
        .unwrap();
        let drained = BackendRef {
            address: "198.18.2.11".parse().unwrap(),
            port: None,
        };
        let mut api = ApiState::default();
        api.backend_edits
            .insert("web".into(), [(drained, Edit::Reweighted(0))].into());
        let path = dir.join(API_STATE_FILE);
        api.save(&path).unwrap();
        let options = DaemonOptions {
            config: Some(config),
            docker_host: None,
            interfaces: vec!["mlb-nope0".into()],
            late_interfaces: Vec::new(),
            xdp_mode: XdpMode::Auto,
            xdp_redirect: Vec::new(),
            state_dir: dir.clone(),
            load: LoadOptions {
                pin_dir: None,
                ..Default::default()
            },
            socket_cgroup: None,
            docker_bridges: false,
        };
        let started = Daemon::start(&options);
        let kept = ApiState::load(&path);
        std::fs::remove_dir_all(&dir).unwrap();
        match started {
            Ok(_) => panic!("started on an interface that does not exist"),
            Err(e) => assert!(e.to_string().contains("mlb-nope0"), "{e}"),
        }
        assert_eq!(kept.unwrap(), api, "the failed start rewrote the API state");
    }
}
