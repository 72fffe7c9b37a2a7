//! The saved API state laid over a file, and lookups of services in a plan and a merge.

#[allow(unused_imports)]
use super::*;

/// The API state saved in `state_dir` laid over `file` and the swarm's services, as a start
/// lays them (`lbd check` refuses with it what a start would): the API state, with the
/// re-weights and removals of backends the file dropped while no lbd ran lapsed, the merge,
/// and whether lapses changed the state (writing it is the caller's, once it started).
pub fn merge_saved_api_state(
    file: &ServiceFile,
    state_dir: &Path,
    swarm: &SwarmServices,
) -> Result<(ApiState, Merged, bool), DaemonError> {
    let mut api = ApiState::load(&state_dir.join(API_STATE_FILE))?;
    // As at a reload: listed again later, such a backend must come with the file's weight,
    // not an old drain.
    let before = api.clone();
    let lapsed = api.drop_lapsed_edits(file);
    if lapsed > 0 {
        info!(
            lapsed,
            "API re-weights and removals of backends the service file no longer lists lapse"
        );
    }
    let mut merged = api.merge_with_swarm(file, &swarm.all_specs())?;
    merged.file.mesh = swarm.mesh.clone();
    let changed = api != before;
    Ok((api, merged, changed))
}

pub(super) fn node_facts() -> Result<NodeFacts, DaemonError> {
    dataplane::node_facts().map_err(DaemonError::NodeFacts)
}

/// Kernel ids of the services named `name` (one per port mapping and family).
pub fn service_ids(running: &DesiredState, name: &str) -> Vec<u32> {
    running
        .services
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.id)
        .collect()
}

/// Where a service is defined, for `lbctl list`.
pub fn source_of(merged: &Merged, name: &str) -> Source {
    merged.sources.get(name).copied().unwrap_or(Source::File)
}
