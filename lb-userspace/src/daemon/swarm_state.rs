//! The swarm's last known state: saved beside the API state, read back at start.

use super::*;

/// The swarm's services under the file's per-service policies.
pub(super) fn swarm_services(snapshot: Option<&Snapshot>, file: &ServiceFile) -> SwarmServices {
    match snapshot {
        Some(snapshot) => swarm::services(snapshot, &file.swarm),
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
