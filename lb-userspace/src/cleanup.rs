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
    announce::{AnnounceError, Announcer, BirdSettings, record},
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
        "withdrawing the VIPs in {}: {error}; nothing removed: the dataplane keeps serving \
         the traffic BIRD may still attract (fix BIRD and run lbd cleanup again){}",
        include.display(),
        recorded_in.as_ref().map_or(String::new(), |r| format!(
            "; lbd run recorded this include file in {}: if that BIRD is gone for good, drop \
             its entry there",
            r.display()
        ))
    )]
    Withdraw {
        include: PathBuf,
        /// The record it came from, when no flag or file named it.
        recorded_in: Option<PathBuf>,
        error: AnnounceError,
    },
    /// What lbd run announced through cannot be known: nothing is withdrawn or removed.
    #[error("{0}; nothing removed")]
    Record(record::RecordError),
}

/// What happened to the VIPs of one include file.
#[derive(Debug, PartialEq, Eq)]
pub enum Withdrawal {
    /// BIRD was told: the include file is empty.
    Withdrawn,
    /// No BIRD listens on its socket (not running, or never installed): it announces
    /// nothing; the include file is empty for when it starts.
    BirdNotRunning(String),
}

/// What `cleanup` did.
#[derive(Debug)]
pub struct Cleaned {
    /// Every include file emptied: the settings given, then those `lbd run` recorded
    /// (`announce::record`) that were not given; none when there were neither.
    pub withdrawals: Vec<(BirdSettings, Withdrawal)>,
    /// How many of them came from the record alone.
    pub recorded: usize,
    /// Whether there was a dataplane to remove.
    pub removed: bool,
}

/// Withdraws the VIPs announced through `given` and through what the `lbd run`s on `pin_dir`
/// recorded in `state_dir`, then removes the dataplane pinned at `pin_dir`. A withdrawal BIRD
/// refuses, or that cannot reach a BIRD that runs, removes nothing; nor does a record that
/// cannot be read (the VIPs it names would stay announced).
pub fn cleanup(
    pin_dir: &Path,
    state_dir: &Path,
    when_running: pin::WhenRunning,
    given: Option<&BirdSettings>,
) -> Result<Cleaned, CleanupError> {
    let claim = pin::claim_for_cleanup(pin_dir, when_running)?;
    let recalled = record::recalled(state_dir, pin_dir).map_err(CleanupError::Record)?;
    let given_count = usize::from(given.is_some());
    let mut targets: Vec<BirdSettings> = given.into_iter().cloned().collect();
    for settings in recalled {
        if !targets.iter().any(|t| t.include == settings.include) {
            targets.push(settings);
        }
    }
    let recorded = targets.len() - given_count;
    let mut withdrawals = Vec::with_capacity(targets.len());
    let record_file = record::record_path(state_dir);
    for (n, settings) in targets.into_iter().enumerate() {
        let recorded_in = (n >= given_count).then_some(record_file.as_path());
        let withdrawal = withdraw(&settings, recorded_in)?;
        withdrawals.push((settings, withdrawal));
    }
    // Withdrawn: nothing is announced through them any more. Forgotten while the pin
    // directory is still claimed, so no lbd has recorded since; a record left behind makes
    // the next cleanup empty the files again, which is harmless.
    let withdrawn: Vec<&Path> = withdrawals.iter().map(|(s, _)| &*s.include).collect();
    if let Err(e) = record::forget(state_dir, pin_dir, &withdrawn) {
        tracing::warn!("{e}");
    }
    if claim.is_some() && withdrawals.iter().any(|(_, w)| *w == Withdrawal::Withdrawn) {
        std::thread::sleep(WITHDRAWAL_SETTLE);
    }
    let removed = match claim {
        Some(claim) => {
            claim.remove()?;
            true
        }
        None => false,
    };
    Ok(Cleaned {
        withdrawals,
        recorded,
        removed,
    })
}

/// Empties the include file `bgp` names and tells its BIRD (`recorded_in`: the record it
/// came from, if no flag or file named it).
fn withdraw(bgp: &BirdSettings, recorded_in: Option<&Path>) -> Result<Withdrawal, CleanupError> {
    try_withdraw(bgp).map_err(|error| CleanupError::Withdraw {
        include: bgp.include.clone(),
        recorded_in: recorded_in.map(Path::to_path_buf),
        error,
    })
}

fn try_withdraw(bgp: &BirdSettings) -> Result<Withdrawal, AnnounceError> {
    match Announcer::new(bgp.clone()).withdraw_all() {
        Ok(_) => Ok(Withdrawal::Withdrawn),
        // No socket, or nobody behind it: not running, unless a `bird` process runs (then
        // the socket path is wrong, and the VIPs may well be announced).
        Err(AnnounceError::Unreachable { socket, error })
            if matches!(
                error.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) && !bird_process_runs() =>
        {
            Ok(Withdrawal::BirdNotRunning(format!(
                "{}: {error}",
                socket.display()
            )))
        }
        Err(e) => Err(e),
    }
}

/// What `withdraw_earlier` did with one recorded include file.
pub type EarlierWithdrawal = (BirdSettings, Result<Withdrawal, AnnounceError>);

/// At `lbd run`'s start: empties every include file the lbd runs on `pin_dir` recorded in
/// `state_dir` other than `current` (the one this run announces through, if any), as `lbd
/// cleanup` does, and forgets those emptied. Without it a run whose `lbd.bgp` was removed or
/// moved would leave the earlier file's VIPs announced until a cleanup. One whose BIRD
/// refuses, or cannot be reached though it runs, stays recorded for the next start or
/// cleanup.
pub fn withdraw_earlier(
    state_dir: &Path,
    pin_dir: &Path,
    current: Option<&Path>,
) -> Result<Vec<EarlierWithdrawal>, record::RecordError> {
    // Another name for the current file (a symlink, `./`) is the current file: emptying
    // it would withdraw what this run announces.
    let is_current = |include: &Path| {
        current.is_some_and(|current| {
            include == current
                || std::fs::canonicalize(include)
                    .is_ok_and(|c| std::fs::canonicalize(current).is_ok_and(|d| c == d))
        })
    };
    let done: Vec<EarlierWithdrawal> = record::recalled(state_dir, pin_dir)?
        .into_iter()
        .filter(|settings| !is_current(&settings.include))
        .map(|settings| {
            let outcome = try_withdraw(&settings);
            (settings, outcome)
        })
        .collect();
    let emptied: Vec<&Path> = done
        .iter()
        .filter(|(_, outcome)| outcome.is_ok())
        .map(|(s, _)| &*s.include)
        .collect();
    record::forget(state_dir, pin_dir, &emptied)?;
    Ok(done)
}

/// Whether a process named `bird` runs on this machine (any namespace of this pid namespace).
pub fn bird_process_runs() -> bool {
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
        let done = cleanup(&no_pins(&dir), &dir, pin::WhenRunning::Refuse, Some(&bgp)).unwrap();
        assert!(
            matches!(&done.withdrawals[..], [(_, Withdrawal::BirdNotRunning(why))] if why.contains("bird.ctl")),
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
        let e = cleanup(&no_pins(&dir), &dir, pin::WhenRunning::Refuse, Some(&bgp)).unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(e, CleanupError::Withdraw { .. })
                && text.contains("syntax error")
                && text.contains("nothing removed"),
            "{text}"
        );
        assert_eq!(commands.next_command().unwrap(), "configure");
    }

    /// `lbd run` given BIRD's settings as flags, `lbd cleanup` given none: what the run
    /// recorded is withdrawn, once each, beside what is given, and then forgotten.
    #[test]
    fn what_lbd_announced_through_is_withdrawn_without_being_named() {
        let (dir, recorded) = crate::announce::tests::bird_in("cleanup-recorded");
        let state = dir.join("state");
        std::fs::write(&recorded.include, "route 198.18.100.1/32 unreachable;").unwrap();
        record::remember(&state, &no_pins(&dir), &recorded).unwrap();
        let commands = lb_testkit::fake_bird(&recorded.socket, "0003 Reconfigured\n", 1);
        let done = cleanup(&no_pins(&dir), &state, pin::WhenRunning::Refuse, None).unwrap();
        assert_eq!(commands.next_command().unwrap(), "configure");
        assert_eq!(done.recorded, 1);
        assert!(
            matches!(&done.withdrawals[..], [(s, Withdrawal::Withdrawn)] if *s == recorded),
            "{done:?}"
        );
        let text = std::fs::read_to_string(&recorded.include).unwrap();
        assert!(!text.contains("route"), "{text}");
        assert_eq!(record::recalled(&state, &no_pins(&dir)).unwrap(), vec![]);

        // Given and recorded alike: told once. Another include file recorded: told too.
        let (other_dir, other) = crate::announce::tests::bird_in("cleanup-recorded-other");
        record::remember(&state, &no_pins(&dir), &recorded).unwrap();
        record::remember(&state, &no_pins(&dir), &other).unwrap();
        let done = cleanup(
            &no_pins(&dir),
            &state,
            pin::WhenRunning::Refuse,
            Some(&recorded),
        )
        .unwrap();
        assert_eq!(done.recorded, 1);
        let includes: Vec<&Path> = done.withdrawals.iter().map(|(s, _)| &*s.include).collect();
        assert_eq!(includes, [&*recorded.include, &*other.include]);
        drop(other_dir);
    }

    /// `lbd run` announcing through another include file than the recorded ones, or through
    /// none: each earlier one is emptied and forgotten, its BIRD told or not running; one
    /// whose BIRD refuses stays recorded. The current one is left as it is.
    #[test]
    fn a_run_withdraws_what_earlier_runs_announced_through_elsewhere() {
        let (dir, current) = crate::announce::tests::bird_in("earlier-current");
        let (moved_dir, moved) = crate::announce::tests::bird_in("earlier-moved");
        let (absent_dir, absent) = crate::announce::tests::bird_in("earlier-absent");
        let (refusing_dir, refusing) = crate::announce::tests::bird_in("earlier-refusing");
        let (state, pins) = (dir.join("state"), no_pins(&dir));
        let announced =
            "protocol static meshlb_vips4 {\n  ipv4;\n  route 198.18.100.1/32 unreachable;\n}\n";
        for settings in [&moved, &absent, &refusing, &current] {
            std::fs::write(&settings.include, announced).unwrap();
            record::remember(&state, &pins, settings).unwrap();
        }
        let moved_bird = lb_testkit::fake_bird(&moved.socket, "0003 Reconfigured\n", 1);
        let refusing_bird = lb_testkit::fake_bird(
            &refusing.socket,
            "8002 /etc/bird/bird.conf:12:1 syntax error\n",
            1,
        );
        let done = withdraw_earlier(&state, &pins, Some(&current.include)).unwrap();
        assert_eq!(moved_bird.next_command().unwrap(), "configure");
        assert_eq!(refusing_bird.next_command().unwrap(), "configure");
        let outcomes: Vec<(&Path, String)> = done
            .iter()
            .map(|(s, outcome)| (&*s.include, format!("{outcome:?}")))
            .collect();
        assert_eq!(outcomes.len(), 3, "{outcomes:?}");
        assert!(
            matches!(&done[0], (s, Ok(Withdrawal::Withdrawn)) if s.include == moved.include),
            "{outcomes:?}"
        );
        assert!(
            matches!(&done[1], (s, Ok(Withdrawal::BirdNotRunning(_))) if s.include == absent.include),
            "{outcomes:?}"
        );
        assert!(
            matches!(&done[2], (s, Err(AnnounceError::Refused { .. })) if s.include == refusing.include),
            "{outcomes:?}"
        );
        for emptied in [&moved, &absent, &refusing] {
            let text = std::fs::read_to_string(&emptied.include).unwrap();
            assert!(!text.contains("route"), "{text}");
        }
        assert_eq!(
            std::fs::read_to_string(&current.include).unwrap(),
            announced
        );
        let include = |s: &BirdSettings| s.include.clone();
        assert_eq!(
            record::recalled(&state, &pins)
                .unwrap()
                .iter()
                .map(include)
                .collect::<Vec<_>>(),
            [include(&refusing), include(&current)]
        );

        // No BIRD settings any more: the current one goes too. Neither BIRD runs now (the
        // refusing one has stopped listening).
        let done = withdraw_earlier(&state, &pins, None).unwrap();
        assert!(
            matches!(&done[..], [(r, Ok(_)), (c, Ok(_))] if r.include == refusing.include && c.include == current.include),
            "{done:?}"
        );
        let text = std::fs::read_to_string(&current.include).unwrap();
        assert!(!text.contains("route"), "{text}");
        assert_eq!(record::recalled(&state, &pins).unwrap(), vec![]);
        drop((moved_dir, absent_dir, refusing_dir));
    }

    /// A record that cannot be read, or a recorded BIRD that refuses, stops cleanup with
    /// nothing removed, and says where the record is.
    #[test]
    fn a_record_that_cannot_be_read_or_whose_bird_refuses_removes_nothing() {
        let (dir, recorded) = crate::announce::tests::bird_in("cleanup-record-stops");
        let state = dir.join("state");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(state.join(record::RECORD_FILE), "{ not json").unwrap();
        let e = cleanup(&no_pins(&dir), &state, pin::WhenRunning::Refuse, None).unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(e, CleanupError::Record(_))
                && text.contains(record::RECORD_FILE)
                && text.contains("nothing removed"),
            "{text}"
        );

        std::fs::remove_file(state.join(record::RECORD_FILE)).unwrap();
        record::remember(&state, &no_pins(&dir), &recorded).unwrap();
        let commands = lb_testkit::fake_bird(
            &recorded.socket,
            "8002 /etc/bird/bird.conf:12:1 syntax error\n",
            1,
        );
        let e = cleanup(&no_pins(&dir), &state, pin::WhenRunning::Refuse, None).unwrap_err();
        assert_eq!(commands.next_command().unwrap(), "configure");
        let text = e.to_string();
        assert!(
            text.contains("nothing removed")
                && text.contains(&format!(
                    "recorded this include file in {}",
                    record::record_path(&state).display()
                )),
            "{text}"
        );
        // Still recorded: the next cleanup asks again.
        assert_eq!(record::recalled(&state, &no_pins(&dir)).unwrap().len(), 1);
    }
}
