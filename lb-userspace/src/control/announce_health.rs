//! How announcing VIPs through BIRD goes (`announce_task` runs it): the VIPs announced,
//! whether BIRD took them and runs them, its BGP sessions, and whether where lbd announces is
//! recorded; for `lbctl status` and the metrics.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    time::{Duration, Instant},
};

use tracing::{info, warn};

use crate::{
    announce::{BgpSession, BirdSettings, SessionCondition},
    api::BgpStatus,
};

/// How often BIRD is asked whether it runs the VIPs' protocols, and how its BGP sessions
/// are: a BIRD that stopped, or no longer includes the file, shows in `lbctl status` within
/// this, however often the VIPs change.
pub(super) const CHECK_EVERY: Duration = Duration::from_secs(5);

/// What one round did with BIRD.
#[derive(Debug, Default)]
pub(super) struct Round {
    /// The VIPs changed (or BIRD had not taken them yet): written, and BIRD reconfigured.
    pub reconfigured: bool,
    /// BIRD was due a check: it runs the VIPs' protocols, and these BGP sessions.
    pub checked: Option<Vec<BgpSession>>,
}

/// How announcing through BIRD goes: the VIPs announced, whether BIRD took them and runs
/// them, and whether where lbd announces is recorded.
pub struct AnnounceHealth {
    settings: BirdSettings,
    vips: BTreeSet<IpAddr>,
    /// Whether BIRD, as the last round that asked it found, took the VIPs and runs them
    /// (`None`: not known yet). A reconfiguration alone does not say it runs them: BIRD takes
    /// a file its configuration does not include.
    in_sync: Option<bool>,
    /// BIRD's BGP sessions, as the last check found them (`None`: not checked yet, or the
    /// last round that asked BIRD failed).
    sessions: Option<Vec<BgpSession>>,
    /// The sessions not disabled that the last check which answered found, kept while BIRD
    /// does not answer (`BgpStatus::sessions_last_known`).
    sessions_last_known: Vec<String>,
    last_ok: Option<Instant>,
    /// When BIRD was last checked, or a round failed (a failed change is tried again every
    /// round anyway). Reconfigurations do not count: VIPs that change every round would put
    /// the check off for good.
    last_checked: Option<Instant>,
    /// BIRD took a change while it was not known to run the VIPs: the next round checks.
    check_next: bool,
    failures: u64,
    last_error: Option<String>,
    /// Whether the record is written (then it is not written again).
    pub(super) recorded: bool,
    record_error: Option<String>,
}

impl AnnounceHealth {
    pub fn new(settings: BirdSettings) -> Self {
        Self {
            settings,
            vips: BTreeSet::new(),
            in_sync: None,
            sessions: None,
            sessions_last_known: Vec::new(),
            last_ok: None,
            last_checked: None,
            check_next: false,
            failures: 0,
            last_error: None,
            recorded: false,
            record_error: None,
        }
    }

    /// Whether BIRD is due a check.
    pub(super) fn check_due(&self, now: Instant) -> bool {
        self.check_next
            || self
                .last_checked
                .is_none_or(|at| now.duration_since(at) >= CHECK_EVERY)
    }

    /// One round's outcome: the VIPs it announces (`None`: the round did not get that far),
    /// and what it did, or why it failed.
    pub(super) fn record(
        &mut self,
        now: Instant,
        vips: Option<BTreeSet<IpAddr>>,
        round: Result<Round, String>,
    ) {
        if let Some(vips) = vips {
            self.vips = vips;
        }
        match round {
            Ok(Round {
                reconfigured,
                checked,
            }) => {
                if reconfigured || checked.is_some() {
                    self.last_ok = Some(now);
                }
                if let Some(sessions) = checked {
                    self.last_checked = Some(now);
                    self.check_next = false;
                    self.in_sync = Some(true);
                    self.last_error = None;
                    log_session_changes(self.sessions.as_deref().unwrap_or_default(), &sessions);
                    self.sessions_last_known = sessions
                        .iter()
                        .filter(|s| s.condition() != SessionCondition::Disabled)
                        .map(|s| s.protocol.clone())
                        .collect();
                    self.sessions = Some(sessions);
                } else if reconfigured && self.in_sync != Some(true) {
                    self.check_next = true;
                }
            }
            Err(e) => {
                self.last_checked = Some(now);
                self.check_next = false;
                self.in_sync = Some(false);
                self.sessions = None;
                self.failures += 1;
                self.last_error = Some(e);
            }
        }
    }

    /// A try at writing the record; logged when its outcome changes.
    pub(super) fn recorded(&mut self, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                if self.record_error.take().is_some() {
                    info!("recorded where lbd announces, for lbd cleanup");
                }
                self.recorded = true;
            }
            Err(e) => {
                if self.record_error.as_ref() != Some(&e) {
                    warn!("{e}");
                }
                self.record_error = Some(e);
            }
        }
    }

    pub fn status(&self) -> BgpStatus {
        BgpStatus {
            include: self.settings.include.display().to_string(),
            socket: self.settings.socket.display().to_string(),
            vips: self.vips.iter().copied().collect(),
            in_sync: self.in_sync,
            sessions: self.sessions.clone(),
            sessions_last_known: self.sessions_last_known.clone(),
            failures: self.failures,
            last_error: self.last_error.clone(),
            last_ok_age_s: self.last_ok.map(|at| at.elapsed().as_secs()),
            record_error: self.record_error.clone(),
        }
    }
}

/// Logs each BGP session whose condition changed since the last check (one not known then:
/// unless it is established).
fn log_session_changes(before: &[BgpSession], now: &[BgpSession]) {
    for session in now {
        let was = before
            .iter()
            .find(|b| b.protocol == session.protocol)
            .map(BgpSession::condition);
        let condition = session.condition();
        if was == Some(condition) || (was.is_none() && condition == SessionCondition::Established) {
            continue;
        }
        let name = &session.protocol;
        match condition {
            SessionCondition::Established => info!(protocol = %name, "BGP session established"),
            SessionCondition::Disabled => info!(protocol = %name, "BGP session disabled"),
            SessionCondition::NotEstablished => warn!(
                protocol = %name,
                "BGP session not established ({}): the router it leads to hears none of this \
                 node's VIPs through it",
                session.state_text()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BirdSettings {
        BirdSettings {
            include: "/etc/bird/meshlb-vips.conf".into(),
            socket: "/run/bird/bird.ctl".into(),
            reply_anchor: None,
        }
    }

    const RECONFIGURED: Round = Round {
        reconfigured: true,
        checked: None,
    };

    fn checked(sessions: Vec<BgpSession>) -> Round {
        Round {
            reconfigured: false,
            checked: Some(sessions),
        }
    }

    #[test]
    fn bird_is_shown_by_the_rounds_that_asked_it() {
        let mut health = AnnounceHealth::new(settings());
        let start = Instant::now();
        assert_eq!(health.status().in_sync, None, "not asked yet");
        assert!(health.check_due(start));
        let vips: BTreeSet<IpAddr> = ["198.18.100.1".parse().unwrap()].into();
        health.record(start, Some(vips.clone()), Ok(checked(vec![])));
        assert_eq!(health.status().in_sync, Some(true));
        assert!(!health.check_due(start + Duration::from_secs(4)));
        assert!(health.check_due(start + CHECK_EVERY));
        let down = "BIRD at /run/bird/bird.ctl does not run meshlb_vips4".to_owned();
        health.record(start + CHECK_EVERY, Some(vips.clone()), Err(down.clone()));
        // Rounds that did not ask BIRD change nothing of what the last one that did found.
        health.record(
            start + CHECK_EVERY,
            Some(vips.clone()),
            Ok(Round::default()),
        );
        let status = health.status();
        assert_eq!(status.in_sync, Some(false));
        assert_eq!(status.failures, 1);
        assert_eq!(status.last_error, Some(down));
        assert_eq!(status.vips, Vec::from_iter(vips.iter().copied()));
        // A round that failed before it knew the VIPs keeps the last ones.
        health.record(start + CHECK_EVERY, None, Err("the round failed".into()));
        assert_eq!(health.status().vips, Vec::from_iter(vips.iter().copied()));
        let session = BgpSession {
            protocol: "router".into(),
            state: "up".into(),
            info: "Established".into(),
        };
        health.record(
            start + 2 * CHECK_EVERY,
            Some(vips),
            Ok(checked(vec![session.clone()])),
        );
        let status = health.status();
        assert_eq!(status.in_sync, Some(true));
        assert_eq!((status.failures, status.last_error), (2, None));
        assert_eq!(status.sessions, Some(vec![session]));
        // A reconfiguration keeps what the last check found; a failed round knows nothing.
        health.record(start + 2 * CHECK_EVERY, None, Ok(RECONFIGURED));
        assert_eq!(health.status().in_sync, Some(true));
        assert_eq!(health.status().sessions.map(|s| s.len()), Some(1));
        health.record(start + 3 * CHECK_EVERY, None, Err("gone".into()));
        assert_eq!(health.status().sessions, None);
        // Which sessions there were is kept, for the metrics to read them not established.
        assert_eq!(health.status().sessions_last_known, ["router"]);
    }

    /// VIPs that change every round reconfigure BIRD every round: that neither puts the check
    /// off nor says on its own that BIRD runs them (it takes a file it does not include).
    #[test]
    fn reconfigurations_neither_postpone_the_check_nor_stand_for_it() {
        let mut health = AnnounceHealth::new(settings());
        let start = Instant::now();
        let second = |n: u32| start + n * Duration::from_secs(1);
        health.record(second(0), None, Ok(RECONFIGURED));
        assert_eq!(health.status().in_sync, None, "taken, not known to run");
        assert!(health.check_due(second(1)), "checked at the next round");
        health.record(second(1), None, Ok(checked(vec![])));
        assert_eq!(health.status().in_sync, Some(true));
        for n in 2..5 {
            health.record(second(n), None, Ok(RECONFIGURED));
            assert!(!health.check_due(second(n)));
        }
        assert!(health.check_due(second(1) + CHECK_EVERY));
        // The check finds BIRD does not run them; later reconfigurations do not hide it.
        let not_included = "BIRD at /run/bird/bird.ctl does not run meshlb_vips4 (no such \
                            protocol)";
        health.record(second(6), None, Err(not_included.into()));
        health.record(second(7), None, Ok(RECONFIGURED));
        let status = health.status();
        assert_eq!(status.in_sync, Some(false));
        assert_eq!(status.last_error.as_deref(), Some(not_included));
        assert!(health.check_due(second(8)), "checked at the next round");
    }

    #[test]
    fn a_record_not_written_is_shown_until_it_is() {
        let mut health = AnnounceHealth::new(settings());
        health.recorded(Err("read-only file system".into()));
        assert!(!health.recorded);
        assert_eq!(
            health.status().record_error.as_deref(),
            Some("read-only file system")
        );
        health.recorded(Ok(()));
        assert!(health.recorded);
        assert_eq!(health.status().record_error, None);
    }
}
