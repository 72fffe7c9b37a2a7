//! The small JSON files lbd keeps in its state directory so a restart starts where the last
//! lbd was (the swarm state, the networks' socket scopes, the health verdicts): read and
//! written the same way, a failure in either said in the log with what lbd does instead.

use std::path::Path;

use serde::{Serialize, de::DeserializeOwned};
use tracing::warn;

/// The value saved at `path`; `None` when there is none, or when it cannot be read (said in
/// the log: `what` it holds and what lbd does `instead`).
pub(super) fn read<T: DeserializeOwned>(path: &Path, what: &str, instead: &str) -> Option<T> {
    match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(value) => Some(value),
            Err(e) => {
                warn!("{}: unreadable {what} ({e}); {instead}", path.display());
                None
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            warn!(
                "{}: cannot read the {what} ({e}); {instead}",
                path.display()
            );
            None
        }
    }
}

/// Saves `value` at `path`, atomically; a failure is said in the log (`what` it holds and
/// what a restart would do `instead`).
pub(super) fn write<T: Serialize>(path: &Path, value: &T, what: &str, instead: &str) {
    let bytes = serde_json::to_vec_pretty(value).expect("plain data serializes");
    if let Err(e) = crate::source::api_state::write_atomically(path, &bytes) {
        warn!(
            "{}: saving the {what} failed ({e}); {instead}",
            path.display()
        );
    }
}
