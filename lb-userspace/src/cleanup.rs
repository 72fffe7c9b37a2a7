//! `lbd cleanup`: meshlb off a node for good. The VIPs are withdrawn first, and given a
//! moment to reach the router, while the dataplane still serves the traffic the router sends
//! until then; only then is the dataplane removed. The pin directory is claimed before
//! anything (a running lbd refused, or stopped when asked, and none can start on it), so
//! nothing announces the VIPs again once they are withdrawn.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    announce::{AnnounceError, Announcer, BirdSettings},
    dataplane::{DataplaneError, pin},
};

/// How long the dataplane stays after the VIPs are withdrawn: BIRD sends the withdrawal at
/// once, and the router takes it out of its table within milliseconds.
pub const WITHDRAWAL_SETTLE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error(transparent)]
    Pin(#[from] DataplaneError),
    #[error(
        "withdrawing the VIPs in {}: {source}; nothing removed: the dataplane keeps serving \
         the traffic BIRD may still attract (fix BIRD and run lbd cleanup again)",
        include.display()
    )]
    Withdraw {
        include: PathBuf,
        source: AnnounceError,
    },
}

/// What happened to the VIPs.
#[derive(Debug, PartialEq, Eq)]
pub enum Withdrawal {
    /// BIRD was told: the include file is empty.
    Withdrawn,
    /// No BIRD listens on its socket (not running, or never installed): it announces
    /// nothing; the include file is empty for when it starts.
    BirdNotRunning(String),
    /// No BGP settings were given.
    NotAsked,
}

/// What `cleanup` did.
#[derive(Debug)]
pub struct Cleaned {
    pub withdrawal: Withdrawal,
    /// Whether there was a dataplane to remove.
    pub removed: bool,
}

/// Withdraws the VIPs `bgp` announces, then removes the dataplane pinned at `pin_dir`. A
/// withdrawal BIRD refuses, or that cannot reach a BIRD that runs, removes nothing.
pub fn cleanup(
    pin_dir: &Path,
    when_running: pin::WhenRunning,
    bgp: Option<&BirdSettings>,
) -> Result<Cleaned, CleanupError> {
    let claim = pin::claim_for_cleanup(pin_dir, when_running)?;
    let withdrawal = match bgp {
        None => Withdrawal::NotAsked,
        Some(bgp) => match Announcer::new(bgp.clone()).withdraw_all() {
            Ok(_) => {
                if claim.is_some() {
                    std::thread::sleep(WITHDRAWAL_SETTLE);
                }
                Withdrawal::Withdrawn
            }
            // No socket, or nobody behind it: not running, unless a `bird` process runs (then
            // the socket path is wrong, and the VIPs may well be announced).
            Err(AnnounceError::Unreachable { socket, source })
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) && !bird_process_runs() =>
            {
                Withdrawal::BirdNotRunning(format!("{}: {source}", socket.display()))
            }
            Err(source) => {
                return Err(CleanupError::Withdraw {
                    include: bgp.include.clone(),
                    source,
                });
            }
        },
    };
    let removed = match claim {
        Some(claim) => {
            claim.remove()?;
            true
        }
        None => false,
    };
    Ok(Cleaned {
        withdrawal,
        removed,
    })
}

/// Whether a process named `bird` runs on this machine (any namespace of this pid namespace).
fn bird_process_runs() -> bool {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|entry| {
            entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
                && std::fs::read_to_string(entry.path().join("comm"))
                    .is_ok_and(|comm| comm.trim_end() == "bird")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nothing pinned here: only the withdrawal is tried.
    fn no_pins(dir: &Path) -> PathBuf {
        dir.join("no-pins")
    }

    #[test]
    fn a_bird_that_is_not_running_announces_nothing_and_cleanup_goes_on() {
        let (dir, bgp) = crate::announce::tests::bird_in("cleanup-absent");
        let done = cleanup(&no_pins(&dir), pin::WhenRunning::Refuse, Some(&bgp)).unwrap();
        assert!(
            matches!(&done.withdrawal, Withdrawal::BirdNotRunning(why) if why.contains("bird.ctl")),
            "{done:?}"
        );
        assert!(!done.removed);
        // Empty for when BIRD starts.
        let text = std::fs::read_to_string(&bgp.include).unwrap();
        assert!(!text.contains("route"), "{text}");
    }

    #[test]
    fn a_bird_that_refuses_stops_cleanup() {
        let (dir, bgp) = crate::announce::tests::bird_in("cleanup-refusing");
        let commands = lb_testkit::fake_bird(
            &bgp.socket,
            "8002 /etc/bird/bird.conf:12:1 syntax error\n",
            1,
        );
        let e = cleanup(&no_pins(&dir), pin::WhenRunning::Refuse, Some(&bgp)).unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(e, CleanupError::Withdraw { .. })
                && text.contains("syntax error")
                && text.contains("nothing removed"),
            "{text}"
        );
        assert_eq!(commands.next_command().unwrap(), "configure");
    }
}
