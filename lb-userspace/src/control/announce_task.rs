//! Keeps BIRD announcing the running plan's VIPs (see `crate::announce`): a look every
//! second, so a VIP whose last usable backend left is withdrawn within a second plus BIRD's
//! reconfiguration. Stopping lbd leaves the announcement as it is (a restart must not
//! withdraw); `lbd cleanup` withdraws. How it goes is kept for `lbctl status` and the
//! metrics (`AnnounceHealth`).

use std::{
    collections::BTreeSet,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tracing::{error, info, warn};

use super::shared::{Shared, lock};
use crate::{
    announce::{AnnounceError, Announcer, BirdSettings, Synced},
    api::BgpStatus,
};

/// How often the VIP set is compared with what BIRD was given.
const PERIOD: Duration = Duration::from_secs(1);
/// How often BIRD is asked whether it is up while the VIPs do not change (a change asks it
/// anyway): a BIRD that stopped shows in `lbctl status` within this.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// What one round did with BIRD.
#[derive(Clone, Copy)]
enum Round {
    /// The VIPs changed (or BIRD had not taken them yet): written, and BIRD reconfigured.
    Reconfigured,
    /// Unchanged, and BIRD was due a check: it is up.
    Checked,
    /// Unchanged, BIRD not asked.
    Untouched,
}

/// How announcing through BIRD goes: the VIPs announced, and whether BIRD took them and
/// answers.
pub struct AnnounceHealth {
    settings: BirdSettings,
    vips: BTreeSet<IpAddr>,
    /// Whether the last sync or check succeeded (false until the first round).
    bird_up: bool,
    last_ok: Option<Instant>,
    /// When BIRD was last asked (a sync that reconfigured, or a check).
    last_asked: Option<Instant>,
    failures: u64,
    last_error: Option<String>,
    record_error: Option<String>,
}

impl AnnounceHealth {
    pub fn new(settings: BirdSettings, record_error: Option<String>) -> Self {
        Self {
            settings,
            vips: BTreeSet::new(),
            bird_up: false,
            last_ok: None,
            last_asked: None,
            failures: 0,
            last_error: None,
            record_error,
        }
    }

    /// Whether BIRD is due a check: the VIPs did not change, so the sync did not ask it.
    fn check_due(&self, now: Instant) -> bool {
        self.last_asked
            .is_none_or(|at| now.duration_since(at) >= CHECK_EVERY)
    }

    /// One round's outcome, with the VIPs it announces.
    fn record(
        &mut self,
        now: Instant,
        vips: BTreeSet<IpAddr>,
        round: Result<Round, &AnnounceError>,
    ) {
        self.vips = vips;
        match round {
            Ok(Round::Untouched) => {}
            Ok(Round::Reconfigured | Round::Checked) => {
                self.last_asked = Some(now);
                self.bird_up = true;
                self.last_error = None;
                self.last_ok = Some(now);
            }
            Err(e) => {
                self.last_asked = Some(now);
                self.bird_up = false;
                self.failures += 1;
                self.last_error = Some(e.to_string());
            }
        }
    }

    pub fn status(&self) -> BgpStatus {
        BgpStatus {
            include: self.settings.include.display().to_string(),
            socket: self.settings.socket.display().to_string(),
            vips: self.vips.iter().copied().collect(),
            bird_up: self.bird_up,
            failures: self.failures,
            last_error: self.last_error.clone(),
            last_ok_age_s: self.last_ok.map(|at| at.elapsed().as_secs()),
            record_error: self.record_error.clone(),
        }
    }
}

/// Starts announcing; `record_error` is why lbd could not record where it announces, if it
/// could not (shown by `lbctl status`).
pub(super) fn spawn(
    shared: &Arc<Shared>,
    settings: BirdSettings,
    record_error: Option<String>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let shared = shared.clone();
    *lock(&shared.announce) = Some(AnnounceHealth::new(settings.clone(), record_error));
    info!(
        include = %settings.include.display(),
        socket = %settings.socket.display(),
        "announcing VIPs with a usable backend through BIRD"
    );
    let announcer = Arc::new(std::sync::Mutex::new(Announcer::new(settings)));
    tokio::spawn(async move {
        let mut last_error = None;
        let mut anchor_users = Vec::new();
        let round = async {
            loop {
                let a = announcer.clone();
                let daemon = shared.clone();
                let check_due = lock(&shared.announce)
                    .as_ref()
                    .is_none_or(|h| h.check_due(Instant::now()));
                let result = tokio::task::spawn_blocking(move || {
                    let mut a = a.lock().expect("announcer lock");
                    let anchor = a.settings().reply_anchor;
                    let (mut vips, users) = {
                        let d = daemon.daemon();
                        let users =
                            anchor.map_or_else(Vec::new, |a| d.running().services_with_vip(a));
                        (d.vips_to_announce(&a.announced()), users)
                    };
                    vips.extend(anchor);
                    let round = match a.sync(&vips) {
                        Ok(Synced::Unchanged) if check_due => a.check().map(|()| Round::Checked),
                        Ok(Synced::Unchanged) => Ok(Round::Untouched),
                        Ok(Synced::Reconfigured) => Ok(Round::Reconfigured),
                        Err(e) => Err(e),
                    };
                    (round, vips, users)
                })
                .await;
                if let Ok((round, vips, _)) = &result
                    && let Some(health) = lock(&shared.announce).as_mut()
                {
                    health.record(Instant::now(), vips.clone(), round.as_ref().copied());
                }
                if let Ok((_, _, users)) = &result
                    && *users != anchor_users
                {
                    if !users.is_empty() {
                        error!(
                            services = ?users,
                            "the BGP reply anchor is also these services' VIP: announced while \
                             lbd serves, it is never withdrawn when their backends are all down; \
                             give lbd.bgp.reply_anchor (--bgp-reply-anchor) an address no \
                             service uses"
                        );
                    }
                    anchor_users.clone_from(users);
                }
                match result.map(|(synced, vips, _)| (synced, vips)) {
                    Ok((Ok(Round::Reconfigured), vips)) => {
                        last_error = None;
                        info!(?vips, "BIRD announces the VIPs with a usable backend");
                    }
                    Ok((Ok(Round::Checked), _)) => {
                        if last_error.take().is_some() {
                            info!("BIRD answers again");
                        }
                    }
                    Ok((Ok(Round::Untouched), _)) => {}
                    Ok((Err(e), vips)) => {
                        // Once per distinct error, not every second.
                        let text = e.to_string();
                        if last_error.as_ref() != Some(&text) {
                            warn!(?vips, "announcing VIPs: {text}");
                            last_error = Some(text);
                        }
                    }
                    Err(e) => warn!("announcing VIPs: {e}"),
                }
                tokio::time::sleep(PERIOD).await;
            }
        };
        tokio::select! {
            _ = stop => {}
            _ = round => {}
        }
    });
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
        let mut health = AnnounceHealth::new(settings.clone(), None);
        let start = Instant::now();
        assert!(!health.status().bird_up, "not asked yet");
        assert!(health.check_due(start));
        let vips: BTreeSet<IpAddr> = ["198.18.100.1".parse().unwrap()].into();
        health.record(start, vips.clone(), Ok(Round::Reconfigured));
        assert!(health.status().bird_up);
        assert!(!health.check_due(start + Duration::from_secs(4)));
        assert!(health.check_due(start + CHECK_EVERY));
        let down = AnnounceError::NotUp {
            socket: settings.socket.clone(),
            message: "0013 Shutdown in progress".into(),
        };
        health.record(start + CHECK_EVERY, vips.clone(), Err(&down));
        // Rounds that did not ask BIRD change nothing of what the last one that did found.
        health.record(start + CHECK_EVERY, vips.clone(), Ok(Round::Untouched));
        let status = health.status();
        assert!(!status.bird_up);
        assert_eq!(status.failures, 1);
        assert_eq!(status.last_error, Some(down.to_string()));
        assert_eq!(status.vips, Vec::from_iter(vips.iter().copied()));
        health.record(start + 2 * CHECK_EVERY, vips, Ok(Round::Checked));
        let status = health.status();
        assert!(status.bird_up);
        assert_eq!((status.failures, status.last_error), (1, None));
    }
}
