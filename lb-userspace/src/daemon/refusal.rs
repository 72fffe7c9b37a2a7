//! The service file's current refusal: what `lbctl status` shows until the file is fixed.

use std::time::SystemTime;

use super::DaemonError;
use crate::api::Outcome;

/// A reload that refused the service file for what it says, kept until one applies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRefusal {
    pub error: String,
    /// The first refusal of this run of them: an edit that leaves the file wrong (another
    /// error) does not make the problem newer.
    pub since: SystemTime,
}

impl FileRefusal {
    /// The refusal after a reload of the file ended with `result`. A node failure (not the
    /// file's fault) leaves it as it was: the file is read again at the next check.
    pub fn after(
        current: Option<Self>,
        result: &Result<Outcome, DaemonError>,
        now: SystemTime,
    ) -> Option<Self> {
        match result {
            Ok(_) => None,
            Err(e) if e.is_input() => Some(Self {
                error: format!("{e:#}"),
                since: current.map_or(now, |c| c.since),
            }),
            Err(_) => current,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::source::file::ConfigError;

    #[test]
    fn a_refusal_stays_with_its_first_time_until_a_reload_applies() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let t1 = t0 + Duration::from_secs(5);
        let refused = |what: &str| -> Result<Outcome, DaemonError> {
            Err(ConfigError::Syntax {
                path: "services.yaml".into(),
                message: what.to_owned(),
            }
            .into())
        };
        let first = FileRefusal::after(None, &refused("unknown field `port`"), t0);
        assert_eq!(
            first,
            Some(FileRefusal {
                error: "services.yaml: unknown field `port`".into(),
                since: t0
            })
        );
        let edited = FileRefusal::after(first.clone(), &refused("unknown field `vips`"), t1);
        assert_eq!(
            edited.as_ref().map(|r| (r.error.as_str(), r.since)),
            Some(("services.yaml: unknown field `vips`", t0))
        );
        let node_failed = Err(DaemonError::NodeFacts(std::io::Error::other("EMFILE")));
        assert_eq!(FileRefusal::after(edited.clone(), &node_failed, t1), edited);
        assert_eq!(FileRefusal::after(edited, &Ok(Outcome::Applied), t1), None);
    }
}
