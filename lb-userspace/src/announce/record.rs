//! Which BIRD settings `lbd run` announced through, kept in its state directory until `lbd
//! cleanup` withdraws them. A unit's drop-in may give them as flags, and cleanup is then run
//! with the file alone, or bare: without the record it would remove the dataplane and leave
//! the VIPs announced, and the router would keep sending their traffic to a node that no
//! longer serves it.
//!
//! The record is kept per pin directory (one dataplane), and an `lbd run` adds its settings
//! to it without dropping earlier ones: the include file of a run that announced through
//! another one still holds its VIPs until the next run's start empties it
//! (`cleanup::withdraw_earlier`), or `lbd cleanup` does.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::BirdSettings;

/// The record's file in the state directory.
pub const RECORD_FILE: &str = "announced-through.json";

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(
        "{}: cannot {action} the record of the BIRD include files lbd announced through \
         ({error}); lbd cleanup needs it to withdraw them: fix its permissions, or remove it \
         and name each include file with lbd cleanup --bird-include",
        path.display()
    )]
    Io {
        path: PathBuf,
        action: &'static str,
        error: std::io::Error,
    },
    #[error(
        "{}: unreadable record of the BIRD include files lbd announced through ({error}); \
         lbd cleanup needs it to withdraw them: remove it, and name each include file with \
         lbd cleanup --bird-include",
        path.display()
    )]
    Unreadable {
        path: PathBuf,
        error: serde_json::Error,
    },
}

/// One include file and the socket of the BIRD that reads it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Through {
    bird_include: PathBuf,
    birdc_socket: PathBuf,
}

/// Per pin directory, what its lbd runs announced through.
type Record = BTreeMap<PathBuf, Vec<Through>>;

/// Where the record of `state_dir` is.
pub fn record_path(state_dir: &Path) -> PathBuf {
    state_dir.join(RECORD_FILE)
}

fn read(state_dir: &Path) -> Result<Record, RecordError> {
    let path = record_path(state_dir);
    match std::fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|error| RecordError::Unreadable { path, error })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Record::new()),
        Err(error) => Err(RecordError::Io {
            path,
            action: "read",
            error,
        }),
    }
}

fn write(state_dir: &Path, record: &Record) -> Result<(), RecordError> {
    let path = record_path(state_dir);
    let result = if record.is_empty() {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    } else {
        let bytes = serde_json::to_vec_pretty(record).expect("paths serialize");
        crate::source::api_state::write_atomically(&path, &bytes)
    };
    result.map_err(|error| RecordError::Io {
        path,
        action: "write",
        error,
    })
}

/// Adds `settings` to what the lbd on `pin_dir` announced through: last, with its socket, in
/// place of an entry for the same include file (nothing changes when it is there already). An
/// unreadable record is replaced: what it held is lost, said in the log.
pub fn remember(
    state_dir: &Path,
    pin_dir: &Path,
    settings: &BirdSettings,
) -> Result<(), RecordError> {
    let mut record = match read(state_dir) {
        Ok(record) => record,
        Err(e @ RecordError::Unreadable { .. }) => {
            tracing::warn!("{e}; it is written anew");
            Record::new()
        }
        Err(e) => return Err(e),
    };
    let through = Through {
        bird_include: settings.include.clone(),
        birdc_socket: settings.socket.clone(),
    };
    let list = record.entry(pin_dir.to_owned()).or_default();
    if list.last() == Some(&through) {
        return Ok(());
    }
    list.retain(|t| t.bird_include != through.bird_include);
    list.push(through);
    write(state_dir, &record)
}

/// What the lbd on `pin_dir` announced through since the last cleanup, oldest first.
pub fn recalled(state_dir: &Path, pin_dir: &Path) -> Result<Vec<BirdSettings>, RecordError> {
    let record = read(state_dir)?;
    Ok(record
        .get(pin_dir)
        .into_iter()
        .flatten()
        .map(|t| BirdSettings {
            include: t.bird_include.clone(),
            socket: t.birdc_socket.clone(),
            reply_anchor: None,
        })
        .collect())
}

/// Drops `withdrawn` (include files) from what the lbd on `pin_dir` announced through: their
/// VIPs are withdrawn. Entries an lbd added since stay.
pub fn forget(state_dir: &Path, pin_dir: &Path, withdrawn: &[&Path]) -> Result<(), RecordError> {
    let mut record = read(state_dir)?;
    let Some(list) = record.get_mut(pin_dir) else {
        return Ok(());
    };
    let before = list.len();
    list.retain(|t| !withdrawn.contains(&t.bird_include.as_path()));
    if list.len() == before {
        return Ok(());
    }
    if list.is_empty() {
        record.remove(pin_dir);
    }
    write(state_dir, &record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path, name: &str) -> BirdSettings {
        BirdSettings {
            include: dir.join(format!("{name}.conf")),
            socket: dir.join(format!("{name}.ctl")),
            reply_anchor: Some("198.18.0.1".parse().unwrap()),
        }
    }

    #[test]
    fn runs_add_their_settings_per_pin_directory_until_forgotten() {
        let (dir, _) = crate::announce::tests::bird_in("record");
        let state = dir.join("state");
        let (pins, other_pins) = (dir.join("pins"), dir.join("other-pins"));
        assert_eq!(recalled(&state, &pins).unwrap(), vec![]);
        let (first, second) = (settings(&dir, "first"), settings(&dir, "second"));
        remember(&state, &pins, &first).unwrap();
        remember(&state, &pins, &first).unwrap();
        remember(&state, &pins, &second).unwrap();
        remember(&state, &other_pins, &second).unwrap();
        // The first include file again with another socket: its entry moves last, with it.
        let first = BirdSettings {
            socket: dir.join("moved.ctl"),
            ..first
        };
        remember(&state, &pins, &first).unwrap();
        // The reply anchor is not kept: withdrawing empties the include file whatever it held.
        let bare = |s: &BirdSettings| BirdSettings {
            reply_anchor: None,
            ..s.clone()
        };
        assert_eq!(
            recalled(&state, &pins).unwrap(),
            vec![bare(&second), bare(&first)]
        );
        // Only what was withdrawn is forgotten.
        forget(&state, &pins, &[&first.include]).unwrap();
        assert_eq!(recalled(&state, &pins).unwrap(), vec![bare(&second)]);
        forget(&state, &pins, &[&second.include]).unwrap();
        assert_eq!(recalled(&state, &pins).unwrap(), vec![]);
        assert_eq!(recalled(&state, &other_pins).unwrap(), vec![bare(&second)]);
        forget(&state, &other_pins, &[&second.include]).unwrap();
        assert!(
            !state.join(RECORD_FILE).exists(),
            "an empty record is removed"
        );
    }

    #[test]
    fn an_unreadable_record_is_named_and_replaced_by_the_next_run() {
        let (dir, _) = crate::announce::tests::bird_in("record-broken");
        let pins = dir.join("pins");
        std::fs::write(dir.join(RECORD_FILE), "{ not json").unwrap();
        let e = recalled(&dir, &pins).unwrap_err().to_string();
        assert!(
            e.contains(RECORD_FILE) && e.contains("remove it") && e.contains("--bird-include"),
            "{e}"
        );
        let through = settings(&dir, "bird");
        remember(&dir, &pins, &through).unwrap();
        assert_eq!(recalled(&dir, &pins).unwrap().len(), 1);
    }
}
