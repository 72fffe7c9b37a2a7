//! Keeps BIRD announcing the running plan's VIPs (see `crate::announce`): a look every
//! second, so a VIP whose last usable backend left is withdrawn within a second plus BIRD's
//! reconfiguration. Stopping lbd leaves the announcement as it is (a restart must not
//! withdraw); `lbd cleanup` withdraws, through what the first round records
//! (`announce::record`). How it goes is kept for `lbctl status` and the metrics
//! (`AnnounceHealth`).

use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use tracing::{error, info, warn};

use super::shared::{Shared, lock};
use crate::{
    announce::{Announcer, BirdSettings, Synced, record},
    api::BgpStatus,
};

/// How often the VIP set is compared with what BIRD was given.
const PERIOD: Duration = Duration::from_secs(1);
/// How often BIRD is asked whether it runs the VIPs' protocols while they do not change (a
/// change asks it anyway): a BIRD that stopped shows in `lbctl status` within this.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Where `lbd run` records what it announces through, for `lbd cleanup`.
pub(super) struct RecordAt {
    pub state_dir: PathBuf,
    pub pin_dir: PathBuf,
}

/// What one round did with BIRD.
#[derive(Clone, Copy)]
enum Round {
    /// The VIPs changed (or BIRD had not taken them yet): written, and BIRD reconfigured.
    Reconfigured,
    /// Unchanged, and BIRD was due a check: it runs the VIPs' protocols.
    Checked,
    /// Unchanged, BIRD not asked.
    Untouched,
}

/// How announcing through BIRD goes: the VIPs announced, whether BIRD took them and runs
/// them, and whether where lbd announces is recorded.
pub struct AnnounceHealth {
    settings: BirdSettings,
    vips: BTreeSet<IpAddr>,
    /// Whether the last round that asked BIRD found it had the VIPs (`None`: none asked yet).
    in_sync: Option<bool>,
    last_ok: Option<Instant>,
    /// When BIRD was last asked (a sync that reconfigured, or a check).
    last_asked: Option<Instant>,
    failures: u64,
    last_error: Option<String>,
    /// Whether the record is written (then it is not written again).
    recorded: bool,
    record_error: Option<String>,
}

impl AnnounceHealth {
    pub fn new(settings: BirdSettings) -> Self {
        Self {
            settings,
            vips: BTreeSet::new(),
            in_sync: None,
            last_ok: None,
            last_asked: None,
            failures: 0,
            last_error: None,
            recorded: false,
            record_error: None,
        }
    }

    /// Whether BIRD is due a check: the VIPs did not change, so the sync did not ask it.
    fn check_due(&self, now: Instant) -> bool {
        self.last_asked
            .is_none_or(|at| now.duration_since(at) >= CHECK_EVERY)
    }

    /// One round's outcome: the VIPs it announces (`None`: the round did not get that far),
    /// and what it did, or why it failed.
    fn record(
        &mut self,
        now: Instant,
        vips: Option<BTreeSet<IpAddr>>,
        round: Result<Round, String>,
    ) {
        if let Some(vips) = vips {
            self.vips = vips;
        }
        match round {
            Ok(Round::Untouched) => {}
            Ok(Round::Reconfigured | Round::Checked) => {
                self.last_asked = Some(now);
                self.in_sync = Some(true);
                self.last_error = None;
                self.last_ok = Some(now);
            }
            Err(e) => {
                self.last_asked = Some(now);
                self.in_sync = Some(false);
                self.failures += 1;
                self.last_error = Some(e);
            }
        }
    }

    /// A try at writing the record; logged when its outcome changes.
    fn recorded(&mut self, outcome: Result<(), String>) {
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
            failures: self.failures,
            last_error: self.last_error.clone(),
            last_ok_age_s: self.last_ok.map(|at| at.elapsed().as_secs()),
            record_error: self.record_error.clone(),
        }
    }
}

/// What a round's blocking part found.
struct RoundDone {
    round: Result<Round, String>,
    vips: BTreeSet<IpAddr>,
    /// The services whose VIP is the reply anchor.
    anchor_users: Vec<String>,
    /// The record's write, if it was due.
    recorded: Option<Result<(), String>>,
}

/// Starts announcing; the first round records where, before anything is announced, and a
/// record that could not be written is tried again every round.
pub(super) fn spawn(
    shared: &Arc<Shared>,
    settings: BirdSettings,
    record_at: Option<RecordAt>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let shared = shared.clone();
    *lock(&shared.announce) = Some(AnnounceHealth::new(settings.clone()));
    info!(
        include = %settings.include.display(),
        socket = %settings.socket.display(),
        "announcing VIPs with a usable backend through BIRD"
    );
    let announcer = Arc::new(std::sync::Mutex::new(Announcer::new(settings)));
    let record_at = record_at.map(Arc::new);
    tokio::spawn(async move {
        let mut last_error = None;
        let mut anchor_users = Vec::new();
        let rounds = async {
            loop {
                let (check_due, record_due) = match lock(&shared.announce).as_ref() {
                    Some(h) => (h.check_due(Instant::now()), !h.recorded),
                    None => (true, true),
                };
                let record_at = record_at.clone().filter(|_| record_due);
                let (a, daemon) = (announcer.clone(), shared.clone());
                let done = tokio::task::spawn_blocking(move || {
                    let mut a = a.lock().expect("announcer lock");
                    one_round(&mut a, &daemon, check_due, record_at.as_deref())
                })
                .await;
                let now = Instant::now();
                match done {
                    Ok(done) => {
                        if done.anchor_users != anchor_users {
                            warn_anchor_users(&done.anchor_users);
                            anchor_users.clone_from(&done.anchor_users);
                        }
                        log_round(&mut last_error, &done);
                        if let Some(health) = lock(&shared.announce).as_mut() {
                            if let Some(outcome) = done.recorded {
                                health.recorded(outcome);
                            }
                            health.record(now, Some(done.vips), done.round);
                        }
                    }
                    Err(e) => {
                        warn!("announcing VIPs: {e}");
                        if let Some(health) = lock(&shared.announce).as_mut() {
                            health.record(
                                now,
                                None,
                                Err(format!("the announcing round failed: {e}")),
                            );
                        }
                    }
                }
                tokio::time::sleep(PERIOD).await;
            }
        };
        tokio::select! {
            _ = stop => {}
            _ = rounds => {}
        }
    });
}

/// A round: the record if due, then the VIPs to announce, synced with BIRD (and BIRD checked
/// if due while they do not change).
fn one_round(
    a: &mut Announcer,
    shared: &Shared,
    check_due: bool,
    record_at: Option<&RecordAt>,
) -> RoundDone {
    // Before anything is announced: `lbd cleanup` withdraws what the record names.
    let recorded = record_at.map(|at| {
        record::remember(&at.state_dir, &at.pin_dir, a.settings()).map_err(|e| e.to_string())
    });
    let anchor = a.settings().reply_anchor;
    let (mut vips, anchor_users) = {
        let d = shared.daemon();
        let users = anchor.map_or_else(Vec::new, |a| d.running().services_with_vip(a));
        (d.vips_to_announce(&a.announced()), users)
    };
    vips.extend(anchor);
    let round = match a.sync(&vips) {
        Ok(Synced::Unchanged) if check_due => a.check().map(|()| Round::Checked),
        Ok(Synced::Unchanged) => Ok(Round::Untouched),
        Ok(Synced::Reconfigured) => Ok(Round::Reconfigured),
        Err(e) => Err(e),
    }
    .map_err(|e| e.to_string());
    RoundDone {
        round,
        vips,
        anchor_users,
        recorded,
    }
}

fn warn_anchor_users(users: &[String]) {
    if !users.is_empty() {
        error!(
            services = ?users,
            "the BGP reply anchor is also these services' VIP: announced while lbd serves, it \
             is never withdrawn when their backends are all down; give lbd.bgp.reply_anchor \
             (--bgp-reply-anchor) an address no service uses"
        );
    }
}

/// Logs a round: a reconfiguration, and each distinct error once (not every second) and its
/// end.
fn log_round(last_error: &mut Option<String>, done: &RoundDone) {
    let vips = &done.vips;
    match &done.round {
        Ok(Round::Reconfigured) => {
            *last_error = None;
            info!(?vips, "BIRD announces the VIPs with a usable backend");
        }
        Ok(Round::Checked) => {
            if last_error.take().is_some() {
                info!(?vips, "BIRD runs the VIPs again");
            }
        }
        Ok(Round::Untouched) => {}
        Err(text) => {
            if last_error.as_ref() != Some(text) {
                warn!(?vips, "announcing VIPs: {text}");
                *last_error = Some(text.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bird_is_shown_by_the_rounds_that_asked_it() {
        let settings = BirdSettings {
            include: "/etc/bird/meshlb-vips.conf".into(),
            socket: "/run/bird/bird.ctl".into(),
            reply_anchor: None,
        };
        let mut health = AnnounceHealth::new(settings);
        let start = Instant::now();
        assert_eq!(health.status().in_sync, None, "not asked yet");
        assert!(health.check_due(start));
        let vips: BTreeSet<IpAddr> = ["198.18.100.1".parse().unwrap()].into();
        health.record(start, Some(vips.clone()), Ok(Round::Reconfigured));
        assert_eq!(health.status().in_sync, Some(true));
        assert!(!health.check_due(start + Duration::from_secs(4)));
        assert!(health.check_due(start + CHECK_EVERY));
        let down = "BIRD at /run/bird/bird.ctl does not run meshlb_vips4".to_owned();
        health.record(start + CHECK_EVERY, Some(vips.clone()), Err(down.clone()));
        // Rounds that did not ask BIRD change nothing of what the last one that did found.
        health.record(
            start + CHECK_EVERY,
            Some(vips.clone()),
            Ok(Round::Untouched),
        );
        let status = health.status();
        assert_eq!(status.in_sync, Some(false));
        assert_eq!(status.failures, 1);
        assert_eq!(status.last_error, Some(down));
        assert_eq!(status.vips, Vec::from_iter(vips.iter().copied()));
        // A round that failed before it knew the VIPs keeps the last ones.
        health.record(start + CHECK_EVERY, None, Err("the round failed".into()));
        assert_eq!(health.status().vips, Vec::from_iter(vips.iter().copied()));
        health.record(start + 2 * CHECK_EVERY, Some(vips), Ok(Round::Checked));
        let status = health.status();
        assert_eq!(status.in_sync, Some(true));
        assert_eq!((status.failures, status.last_error), (2, None));
    }

    #[test]
    fn a_record_not_written_is_shown_until_it_is() {
        let mut health = AnnounceHealth::new(BirdSettings {
            include: "/etc/bird/meshlb-vips.conf".into(),
            socket: "/run/bird/bird.ctl".into(),
            reply_anchor: None,
        });
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
