//! The swarm's last known state: saved beside the API state, read back at start.

use std::time::Duration;

use super::*;

impl Daemon {
    /// Applies what the swarm looks like now. The snapshot is kept (and saved) whatever the
    /// outcome: it is the Engine's truth, and the next file or API change plans with it. A
    /// change that fails is tried again (`retry_swarm`): the follower sends a snapshot once.
    /// While a failed change waits for its retry, a new snapshot waits with it (`Unchanged`).
    pub fn update_swarm(&mut self, snapshot: Snapshot) -> Result<Outcome, DaemonError> {
        if self.swarm.as_ref() != Some(&snapshot) {
            let path = self.state_dir.join(SWARM_STATE_FILE);
            let instead = "a restart while the Engine is down would start without it";
            saved::write(&path, &snapshot, "swarm state", instead);
        }
        self.swarm = Some(snapshot);
        self.follow_bridges();
        if !try_snapshot(self.swarm_unapplied, Instant::now()) {
            self.swarm_untried = true;
            return Ok(Outcome::Unchanged);
        }
        self.commit_swarm()
    }

    /// Whether a failed swarm change's `error` is one the log has not been told since the
    /// change began failing (told once, and again when it changes).
    pub fn swarm_error_is_new(&mut self, error: &str) -> bool {
        tell_once(&mut self.swarm_error_told, error)
    }

    /// Tries a failed swarm change again when its retry is due (1 s after the change, then
    /// twice as long each time, up to 30 s), or with a snapshot that came meanwhile as
    /// `try_snapshot` allows; `None` when none is.
    pub fn retry_swarm(&mut self) -> Option<Result<Outcome, DaemonError>> {
        let now = Instant::now();
        let due = self.swarm_unapplied.is_some_and(|retry| {
            now >= retry.at || (self.swarm_untried && try_snapshot(Some(retry), now))
        });
        due.then(|| self.commit_swarm())
    }

    /// When a failed swarm change is tried again (for the log).
    pub fn swarm_retry_in(&self) -> Option<Duration> {
        self.swarm_unapplied.map(|retry| retry.wait)
    }

    /// Where the swarm follower reports its health (handed to it by `lbd run`).
    pub fn swarm_follow_status(&self) -> Option<swarm::follow::SharedStatus> {
        self.swarm_follow.clone()
    }

    /// The swarm follower's health for `lbctl status`.
    pub fn swarm_status(&self) -> Option<crate::api::SwarmStatus> {
        let follow = self.swarm_follow.as_ref()?;
        let f = follow.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Some(crate::api::SwarmStatus {
            docker_host: f.docker_host,
            engine_up: f.engine_up,
            reads_ok: f.reads_ok,
            reads_failed: f.reads_failed,
            last_error: f.last_error,
            last_ok_age_s: f
                .last_ok
                .and_then(|t| t.elapsed().ok())
                .map(|age| age.as_secs()),
            node_addr: self.swarm.as_ref().and_then(|s| s.node_addr),
            mesh_addr: self.swarm.as_ref().and_then(|s| s.mesh_addr()),
            services: self.swarm.as_ref().map_or(0, |s| s.services.len()),
            stopping_known: self.swarm.as_ref().is_some_and(|s| s.desired_states_known),
            last_read: f.last_read.map(|(took, wait)| crate::api::EngineRead {
                took_ms: took.as_millis() as u64,
                next_after_ms: wait.as_millis() as u64,
            }),
            tasks_stopping: self.swarm.as_ref().map_or(0, |s| s.tasks_stopping()),
            tasks_unhealthy: self.swarm.as_ref().map_or(0, |s| s.tasks_unhealthy()),
            notices: f.notices,
            container_starts: f.container_starts,
        })
    }

    fn commit_swarm(&mut self) -> Result<Outcome, DaemonError> {
        let earlier = self.swarm_unapplied;
        self.swarm_untried = false;
        let api = self.api.clone();
        let result = self.commit(Trigger::Swarm, None, api);
        match &result {
            // `take_plan` cleared `swarm_unapplied`.
            Ok(_) if earlier.is_some() => {
                self.swarm_error_told = None;
                info!("swarm: the swarm's change refused before is applied now");
            }
            Ok(_) => {}
            Err(_) => self.swarm_unapplied = Some(health::Retry::after(earlier)),
        }
        result
    }
}

/// Whether a new snapshot is tried at `now`, given the retry of a change that failed
/// (`unapplied`): when that retry is due, or `NEW_SNAPSHOT_WAIT` after the last try, whichever
/// comes first. On a busy swarm a new one comes every read, and each tried at once (a plan
/// of every service, and its failure) would undo the backoff; but a snapshot that mends the
/// failure (a service scaled down to fit) should not wait the backoff's 30 s.
fn try_snapshot(unapplied: Option<health::Retry>, now: Instant) -> bool {
    unapplied.is_none_or(|retry| {
        let tried = retry.at.checked_sub(retry.wait).unwrap_or(retry.at);
        now >= retry.at.min(tried + NEW_SNAPSHOT_WAIT)
    })
}

/// How long new snapshots wait after a failed swarm change was tried, at most.
const NEW_SNAPSHOT_WAIT: Duration = Duration::from_secs(5);

/// Whether `error` differs from the one last `told` (then it is the one told).
fn tell_once(told: &mut Option<String>, error: &str) -> bool {
    if told.as_deref() == Some(error) {
        return false;
    }
    *told = Some(error.to_owned());
    true
}

/// The swarm's services under the file's per-service policies; `running`: what the running
/// configuration made of the swarm (its networks keep their socket scopes).
pub(super) fn swarm_services(
    snapshot: Option<&Snapshot>,
    file: &ServiceFile,
    running: &SwarmServices,
) -> SwarmServices {
    match snapshot {
        Some(snapshot) => swarm::services(snapshot, &file.swarm, &running.scopes),
        None => SwarmServices::default(),
    }
}

/// The swarm's services at a start: the networks keep the socket scopes the last lbd gave
/// them (`saved`, from beside the swarm state), since the pinned frontends and namespaces
/// hold them until both are written again. Scopes that changed are saved once the start
/// succeeded (`Daemon::start`).
pub(super) fn starting_swarm_services(
    snapshot: Option<&Snapshot>,
    file: &ServiceFile,
    saved: &BTreeMap<String, u8>,
) -> SwarmServices {
    let running = SwarmServices {
        scopes: saved.clone(),
        ..Default::default()
    };
    let services = swarm_services(snapshot, file, &running);
    log_new_problems(&running, &services);
    services
}

/// The saved swarm state, or an empty one (said in the log either way).
pub(super) fn load_swarm_state(state_dir: &Path) -> Snapshot {
    let path = state_dir.join(SWARM_STATE_FILE);
    let instead = "starting without swarm services until the Engine answers";
    let Some(snapshot) = saved::read::<Snapshot>(&path, "swarm state", instead) else {
        return Snapshot::default();
    };
    info!(
        services = snapshot.services.len(),
        "swarm: starting from the saved state in {} until the Engine answers",
        path.display()
    );
    snapshot
}

/// Plans `merged` with `plan`. A plan error that blames a swarm service leaves that service
/// out (`Merged::refuse_swarm`, said by `lbctl list` and the log) and plans again, so a swarm
/// service the plan refuses (a port an operator's VIP on a node address or backend already
/// uses, say) never holds up the operator's services: at most once per swarm service.
///
/// `served_before`: for an operator's change (the API), the merge it changes. A backend of
/// the operator's that is a frontend of a swarm service served before is a loop the change
/// made: the change is refused, as a loop among the operator's own services is, rather
/// than the swarm service taken off the node for it.
pub(super) fn plan_refusing_swarm<T>(
    merged: &mut Merged,
    served_before: Option<&Merged>,
    mut plan: impl FnMut(&ServiceFile) -> Result<T, DaemonError>,
) -> Result<T, DaemonError> {
    loop {
        match plan(&merged.file) {
            Err(DaemonError::Plan(e)) => {
                let Some(name) = swarm_blamed(merged, &e) else {
                    return Err(DaemonError::Plan(e));
                };
                if let (
                    Some(before),
                    PlanError::BackendIsFrontend {
                        service,
                        frontend_of,
                        ..
                    },
                ) = (served_before, &e)
                    && *frontend_of == name
                    && merged.sources.get(service) != Some(&Source::Swarm)
                    && before.sources.get(&name) == Some(&Source::Swarm)
                {
                    return Err(DaemonError::Plan(e));
                }
                merged.refuse_swarm(&name, e.to_string());
            }
            other => return other,
        }
    }
}

/// The swarm services served in a merge.
pub(super) fn served_swarm(merged: &Merged) -> BTreeSet<String> {
    merged
        .sources
        .iter()
        .filter(|(_, source)| **source == Source::Swarm)
        .map(|(name, _)| name.clone())
        .collect()
}

/// The swarm services of `served_before` that `after` leaves out, and why: what an
/// operator's change displaced.
pub(super) fn displaced_swarm(
    served_before: &BTreeSet<String>,
    after: &Merged,
) -> Vec<crate::api::DisplacedService> {
    served_before
        .iter()
        .filter_map(|name| {
            after
                .swarm_refused
                .get(name)
                .map(|reason| crate::api::DisplacedService {
                    service: name.clone(),
                    reason: reason.clone(),
                })
        })
        .collect()
}

/// The swarm service `error` blames first, if any.
pub(super) fn swarm_blamed(merged: &Merged, error: &PlanError) -> Option<String> {
    error
        .blamed()
        .into_iter()
        .find(|name| merged.sources.get(*name) == Some(&Source::Swarm))
        .map(str::to_owned)
}

impl Daemon {
    /// Makes `services` the running swarm services, saving their networks' scopes when they
    /// changed (a failure is logged: a restart would number them afresh).
    pub(super) fn keep_swarm_services(&mut self, services: SwarmServices) {
        log_new_problems(&self.swarm_services, &services);
        if services.scopes != self.swarm_services.scopes {
            save_scopes(&self.state_dir, &services.scopes);
        }
        self.swarm_services = services;
    }
}

/// Logs each problem `after` has that `before` had not (a port or VIP not served): `lbctl
/// list` shows them all, the log each once, when it appears.
fn log_new_problems(before: &SwarmServices, after: &SwarmServices) {
    for (name, problem) in new_problems(before, after) {
        warn!(service = %name, "swarm service: {problem}");
    }
}

/// The (service, problem) pairs `after` has and `before` had not.
fn new_problems<'a>(before: &SwarmServices, after: &'a SwarmServices) -> Vec<(&'a str, &'a str)> {
    let mut new = Vec::new();
    for (name, details) in &after.details {
        let known = before.details.get(name);
        for problem in &details.problems {
            if !known.is_some_and(|k| k.problems.contains(problem)) {
                new.push((name.as_str(), problem.as_str()));
            }
        }
    }
    new
}

/// Saves the networks' socket scopes for the next start (a failure is logged: it would
/// number them afresh).
pub(super) fn save_scopes(state_dir: &Path, scopes: &BTreeMap<String, u8>) {
    let path = state_dir.join(SWARM_SCOPES_FILE);
    saved::write(
        &path,
        scopes,
        "socket scopes",
        "a restart would number them afresh",
    );
}

/// The networks' socket scopes the last lbd saved; none when there are none (a broken file
/// is said in the log: the scopes are numbered afresh).
pub(super) fn load_scopes(state_dir: &Path) -> BTreeMap<String, u8> {
    let path = state_dir.join(SWARM_SCOPES_FILE);
    let saved: BTreeMap<String, u8> =
        saved::read(&path, "socket scopes", "the networks are numbered afresh").unwrap_or_default();
    // Two networks must never share a scope: a file that says so (edited by hand) is not
    // used.
    let scopes: std::collections::BTreeSet<u8> = saved.values().copied().collect();
    if scopes.len() != saved.len() || scopes.contains(&0) {
        warn!(
            "{}: two networks share a socket scope, or one has 0; the networks are numbered \
             afresh",
            path.display()
        );
        return BTreeMap::new();
    }
    saved
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = "198.18.0.5";

    /// A failed swarm change is not tried again before its retry is due, however many new
    /// snapshots come meanwhile (one a read on a busy swarm), and its backoff goes on; once
    /// the backoff is long, a new snapshot is tried 5 s after the last try.
    #[test]
    fn new_snapshots_wait_for_a_failed_changes_retry() {
        let now = Instant::now();
        let mut unapplied = None;
        assert!(try_snapshot(unapplied, now), "nothing failed");
        let first = health::Retry::after(None);
        unapplied = Some(first);
        for read in 0..3 {
            assert!(!try_snapshot(unapplied, now), "snapshot {read}");
        }
        assert!(try_snapshot(unapplied, first.at), "due");
        let second = health::Retry::after(unapplied);
        assert_eq!(second.wait, first.wait * 2);
        let mut long = second;
        for _ in 0..5 {
            long = health::Retry::after(Some(long));
        }
        assert_eq!(long.wait, Duration::from_secs(30));
        let tried = long.at - long.wait;
        assert!(!try_snapshot(Some(long), tried + Duration::from_secs(4)));
        assert!(try_snapshot(Some(long), tried + NEW_SNAPSHOT_WAIT));
    }

    #[test]
    fn a_failed_swarm_changes_error_is_told_once_until_it_changes() {
        let mut told = None;
        assert!(tell_once(&mut told, "map full"));
        assert!(!tell_once(&mut told, "map full"));
        assert!(tell_once(&mut told, "interface gone"));
        assert!(!tell_once(&mut told, "interface gone"));
        told = None;
        assert!(
            tell_once(&mut told, "interface gone"),
            "after it was applied"
        );
    }

    /// Each problem is said when it appears: not again on the next read, again once it went
    /// and came back.
    #[test]
    fn only_new_problems_are_logged() {
        let with = |problems: &[(&str, &str)]| {
            let mut services = SwarmServices::default();
            for (name, problem) in problems {
                services
                    .details
                    .entry((*name).to_owned())
                    .or_default()
                    .problems
                    .push((*problem).to_owned());
            }
            services
        };
        let none = SwarmServices::default();
        let odd = with(&[("odd", "port 81 twice")]);
        assert_eq!(new_problems(&none, &odd), [("odd", "port 81 twice")]);
        assert!(new_problems(&odd, &odd).is_empty());
        let more = with(&[
            ("odd", "port 81 twice"),
            ("odd", "VIP on n32"),
            ("dns", "x"),
        ]);
        assert_eq!(
            new_problems(&odd, &more),
            [("dns", "x"), ("odd", "VIP on n32")]
        );
    }

    /// A restart keeps the networks' socket scopes the last lbd saved, even out of name
    /// order.
    #[test]
    fn a_start_keeps_the_saved_socket_scopes() {
        let dir = std::env::temp_dir().join(format!("mlb-scopes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut service = crate::source::swarm::snapshot::SwarmService::default();
        for (network, vip) in [("mid", "198.19.10.2"), ("zed", "198.19.11.2")] {
            service
                .vips
                .insert(network.to_owned(), vip.parse().unwrap());
        }
        let mut snapshot = Snapshot {
            active: true,
            ..Default::default()
        };
        snapshot.services.insert("api".to_owned(), service);
        let none = ServiceFile::default();
        // No saved scopes: by name; saved as they come back.
        let first = starting_swarm_services(Some(&snapshot), &none, &load_scopes(&dir));
        assert_eq!(first.scopes["mid"], 1);
        save_scopes(&dir, &first.scopes);
        assert_eq!(load_scopes(&dir), first.scopes);
        // Saved out of name order (a network was made since): kept.
        save_scopes(&dir, &[("mid".to_owned(), 2), ("zed".to_owned(), 1)].into());
        let again = starting_swarm_services(Some(&snapshot), &none, &load_scopes(&dir));
        assert_eq!(
            again.scopes,
            [("mid".to_owned(), 2), ("zed".to_owned(), 1)].into()
        );
        // Two networks on one scope (a hand-edited file): numbered afresh.
        save_scopes(&dir, &[("mid".to_owned(), 1), ("zed".to_owned(), 1)].into());
        assert!(load_scopes(&dir).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn file(text: &str) -> ServiceFile {
        ServiceFile::parse(text, Path::new("services.yaml")).unwrap()
    }

    /// The file's services with the swarm's (`swarm`, a service file's text), merged as lbd
    /// merges them: the merge knows no node address, so only the plan sees these clashes.
    fn merged(operator: &str, swarm: &str) -> Merged {
        let swarm: Vec<_> = file(swarm).services.into_values().collect();
        ApiState::default()
            .merge_with_swarm(&file(operator), &swarm)
            .unwrap()
    }

    fn plan_on_node(merged: &mut Merged) -> Result<DesiredState, DaemonError> {
        plan_after(merged, None)
    }

    fn plan_after(
        merged: &mut Merged,
        served_before: Option<&Merged>,
    ) -> Result<DesiredState, DaemonError> {
        let node: IpAddr = NODE.parse().unwrap();
        plan_refusing_swarm(merged, served_before, |file| {
            Ok(plan::plan(file, &plan::NodeFacts::with_addresses(&[node]))?)
        })
    }

    const SWARM_WEB: &str =
        "services:\n  web:\n    ports: [\"80:9090/tcp\"]\n    backends: [198.18.61.4]\n";

    /// The merge lbd runs on a swarm node where `web` publishes 80/tcp, then that merge with
    /// the API state `api` (a service file's text: its services as API services).
    fn before_and_after(api: &str) -> (Merged, Merged) {
        let mut before = merged("services: {}\n", SWARM_WEB);
        plan_on_node(&mut before).expect("the swarm alone plans");
        let mut state = ApiState::default();
        for spec in file(api).services.into_values() {
            state.add_service(spec, &ServiceFile::default()).unwrap();
        }
        let swarm: Vec<_> = file(SWARM_WEB).services.into_values().collect();
        let after = state
            .merge_with_swarm(&ServiceFile::default(), &swarm)
            .unwrap();
        (before, after)
    }

    /// An API change that takes a served swarm service's name or published port stands
    /// (the operator's services win) and names the swarm service it took off the node.
    #[test]
    fn an_api_change_names_the_swarm_services_it_displaces() {
        for (api, says) in [
            (
                "services:\n  web:\n    ports: [\"81/tcp\"]\n    backends: [198.18.2.10]\n",
                "already has a service named \"web\"",
            ),
            (
                "services:\n  api:\n    ports: [\"80/tcp\"]\n    backends: [198.18.2.10]\n",
                "port 80/tcp is already published by service \"api\"",
            ),
        ] {
            let (before, mut after) = before_and_after(api);
            plan_after(&mut after, Some(&before)).expect("the change stands");
            let displaced = displaced_swarm(&served_swarm(&before), &after);
            assert_eq!(displaced.len(), 1, "{displaced:?}");
            assert_eq!(displaced[0].service, "web");
            assert!(displaced[0].reason.contains(says), "{displaced:?}");
        }
        // Nothing of the swarm's touched: nothing said.
        let (before, mut after) = before_and_after(
            "services:\n  api:\n    ports: [\"82/tcp\"]\n    backends: [198.18.2.10]\n",
        );
        plan_after(&mut after, Some(&before)).unwrap();
        assert!(displaced_swarm(&served_swarm(&before), &after).is_empty());
    }

    /// A backend an API change gives that is a served swarm service's published port on
    /// this node loops: the change is refused, the swarm service kept. One the swarm
    /// service met already refused (a loop of before) leaves it out again, as at a start.
    #[test]
    fn an_api_change_that_loops_into_a_served_swarm_service_is_refused() {
        let looping = format!(
            "services:\n  api:\n    vip: 198.18.100.1\n    ports: [\"8080:80/tcp\"]\n    backends: [{NODE}]\n"
        );
        let (before, mut after) = before_and_after(&looping);
        let err = plan_after(&mut after, Some(&before)).expect_err("a loop the change made");
        assert!(
            matches!(
                &err,
                DaemonError::Plan(PlanError::BackendIsFrontend { service, frontend_of, .. })
                    if service == "api" && frontend_of == "web"
            ),
            "{err}"
        );
        // The loop was there before (web already left out for it): web stays out.
        let mut again = after.clone();
        let mut was = after.clone();
        plan_after(&mut was, None).expect("web left out");
        plan_after(&mut again, Some(&was)).expect("web left out again");
        assert!(again.swarm_refused.contains_key("web"));
    }

    #[test]
    fn a_swarm_service_the_plan_refuses_is_left_out_and_the_rest_planned() {
        let swarm = "services:\n  published:\n    ports: [\"80:9090/tcp\"]\n    backends: [198.18.61.4]\n  fine:\n    ports: [\"81:9090/tcp\"]\n    backends: [198.18.61.5]\n";
        // A VIP on the node's address, and a backend on the node's address: both meet the
        // port the swarm publishes on every node address.
        for (operator, says) in [
            (
                "services:\n  web:\n    vip: 198.18.0.5\n    ports: [\"80/tcp\"]\n    backends: [198.18.2.10]\n",
                "claimed by services",
            ),
            (
                "services:\n  local:\n    vip: 198.18.100.1\n    ports: [\"8080:80/tcp\"]\n    backends: [198.18.0.5]\n",
                "would come back to this node and loop",
            ),
        ] {
            let mut merged = merged(operator, swarm);
            let plan = plan_on_node(&mut merged).expect("planned without the swarm service");
            let why = &merged.swarm_refused["published"];
            assert!(why.contains(says), "{why}");
            assert!(!merged.file.services.contains_key("published"));
            let names: BTreeSet<&str> = plan.services.iter().map(|s| s.name.as_str()).collect();
            assert!(
                names.contains("fine") && !names.contains("published"),
                "{names:?}"
            );
            assert_eq!(merged.swarm_refused.len(), 1);
        }
    }

    #[test]
    fn a_swarm_vip_on_the_nodes_address_meets_an_operators_port_on_every_address() {
        let mut merged = merged(
            "services:\n  everywhere:\n    ports: [\"90/tcp\"]\n    backends: [198.18.2.11]\n",
            "services:\n  on-node:\n    vip: 198.18.0.5\n    ports: [\"90:9090/tcp\"]\n    backends: [198.18.61.5]\n",
        );
        let plan = plan_on_node(&mut merged).expect("planned without the swarm service");
        let why = &merged.swarm_refused["on-node"];
        assert!(why.contains("claimed by services"), "{why}");
        assert!(plan.services.iter().any(|s| s.name == "everywhere"));
        assert!(plan.services.iter().all(|s| s.name != "on-node"));
    }

    #[test]
    fn a_plan_error_of_the_operators_own_services_stays_an_error() {
        let mut merged = merged(
            "services:\n  web:\n    vip: 198.18.0.5\n    ports: [\"80/tcp\"]\n    backends: [198.18.2.10]\n  all:\n    ports: [\"80/tcp\"]\n    backends: [198.18.2.11]\n",
            "services: {}\n",
        );
        let err = plan_on_node(&mut merged).expect_err("the operator's own clash");
        assert!(
            matches!(err, DaemonError::Plan(PlanError::FrontendConflict { .. })),
            "{err}"
        );
        assert!(merged.swarm_refused.is_empty());
    }
}
