//! The swarm's last known state: saved beside the API state, read back at start.

use super::*;

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

/// The saved swarm state, or an empty one (said in the log either way).
pub(super) fn load_swarm_state(state_dir: &Path) -> Snapshot {
    let path = state_dir.join(SWARM_STATE_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => match serde_json::from_slice::<Snapshot>(&bytes) {
            Ok(snapshot) => {
                info!(
                    services = snapshot.services.len(),
                    "swarm: starting from the saved state in {} until the Engine answers",
                    path.display()
                );
                snapshot
            }
            Err(e) => {
                warn!(
                    "{}: unreadable swarm state ({e}); starting without swarm services until \
                     the Engine answers",
                    path.display()
                );
                Snapshot::default()
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Snapshot::default(),
        Err(e) => {
            warn!(
                "{}: cannot read the swarm state ({e}); starting without swarm services until \
                 the Engine answers",
                path.display()
            );
            Snapshot::default()
        }
    }
}

/// Plans `merged` with `plan`. A plan error that blames a swarm service leaves that service
/// out (`Merged::refuse_swarm`, said by `lbctl list` and the log) and plans again, so a swarm
/// service the plan refuses (a port an operator's VIP on a node address or backend already
/// uses, say) never holds up the operator's services: at most once per swarm service.
pub(super) fn plan_refusing_swarm<T>(
    merged: &mut Merged,
    mut plan: impl FnMut(&ServiceFile) -> Result<T, DaemonError>,
) -> Result<T, DaemonError> {
    loop {
        match plan(&merged.file) {
            Err(DaemonError::Plan(e)) => {
                let Some(name) = swarm_blamed(merged, &e) else {
                    return Err(DaemonError::Plan(e));
                };
                merged.refuse_swarm(&name, e.to_string());
            }
            other => return other,
        }
    }
}

/// The swarm service `error` blames first, if any.
pub(super) fn swarm_blamed(merged: &Merged, error: &PlanError) -> Option<String> {
    error
        .blamed()
        .into_iter()
        .find(|name| merged.sources.get(*name) == Some(&Source::Swarm))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = "198.18.0.5";

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
        let node: IpAddr = NODE.parse().unwrap();
        plan_refusing_swarm(merged, |file| Ok(plan::plan(file, &[node])?))
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
