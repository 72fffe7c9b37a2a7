//! Keeps BIRD announcing the running plan's VIPs (see `crate::announce`): a look every
//! second, so a VIP whose last usable backend left is withdrawn within a second plus BIRD's
//! reconfiguration. Stopping lbd leaves the announcement as it is (a restart must not
//! withdraw); `lbd cleanup` withdraws, through what the first round records
//! (`announce::record`). The first round also withdraws what earlier runs recorded through
//! other include files (`lbd.bgp` moved). How it goes is kept for `lbctl status` and the
//! metrics (`announce_health`).

use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use tracing::{error, info, warn};

use super::{
    announce_health::{AnnounceHealth, Round},
    shared::{Shared, lock},
};
use crate::{
    announce::{Announcer, BirdSettings, Synced, record},
    cleanup::Withdrawal,
};

/// How often the VIP set is compared with what BIRD was given.
const PERIOD: Duration = Duration::from_secs(1);

/// Where `lbd run` records what it announces through, for `lbd cleanup`.
pub(super) struct RecordAt {
    pub state_dir: PathBuf,
    pub pin_dir: PathBuf,
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
        let mut first_round = true;
        let rounds = async {
            loop {
                let (check_due, record_due) = match lock(&shared.announce).as_ref() {
                    Some(h) => (h.check_due(Instant::now()), !h.recorded),
                    None => (true, true),
                };
                let record_now = record_at.clone().filter(|_| record_due);
                let earlier_at = record_at.clone().filter(|_| first_round);
                first_round = false;
                let (a, daemon) = (announcer.clone(), shared.clone());
                let done = tokio::task::spawn_blocking(move || {
                    let mut a = a.lock().expect("announcer lock");
                    let done = one_round(&mut a, &daemon, check_due, record_now.as_deref());
                    // After this run's VIPs are in place: a move to another include file
                    // announces there before the earlier one is emptied.
                    if let Some(at) = earlier_at {
                        withdraw_earlier(&at, Some(&a.settings().include));
                    }
                    done
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

/// A round: the record if due, then BIRD checked if due, then the VIPs to announce, synced
/// with BIRD.
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
    // Checked before the sync, so BIRD has had a round to take its last change; and only
    // once it took the file (a first start would find its protocols not loaded yet).
    let checked = (check_due && a.confirmed()).then(|| a.check());
    let round = a
        .sync(&vips)
        .and_then(|synced| {
            Ok(Round {
                reconfigured: synced == Synced::Reconfigured,
                checked: checked.transpose()?,
            })
        })
        .map_err(|e| e.to_string());
    RoundDone {
        round,
        vips,
        anchor_users,
        recorded,
    }
}

/// Empties the include files earlier runs on this pin directory announced through, other
/// than `current` (`cleanup::withdraw_earlier`), and says what became of each. Nothing here
/// stops lbd: one not withdrawn stays recorded for the next start or `lbd cleanup`.
pub(super) fn withdraw_earlier(at: &RecordAt, current: Option<&Path>) {
    let done = match crate::cleanup::withdraw_earlier(&at.state_dir, &at.pin_dir, current) {
        Ok(done) => done,
        Err(e) => {
            warn!(
                "{e}; the include files earlier runs announced through are not withdrawn: \
                 their VIPs may still be announced"
            );
            return;
        }
    };
    for (settings, outcome) in done {
        let include = settings.include.display();
        match outcome {
            Ok(Withdrawal::Withdrawn) => info!(
                %include,
                "withdrew the VIPs an earlier run announced through this include file (lbd no \
                 longer announces through it)"
            ),
            Ok(Withdrawal::BirdNotRunning(why)) => warn!(
                %include,
                "emptied the include file an earlier run announced through; its BIRD is not \
                 running ({why}), and reads it empty when it starts"
            ),
            Err(e) => warn!(
                %include,
                "the include file an earlier run announced through is not withdrawn: {e}; its \
                 VIPs may still be announced; tried again at the next start and by lbd cleanup \
                 (if that BIRD is gone for good, drop its entry from {})",
                record::record_path(&at.state_dir).display()
            ),
        }
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
/// end, which a check says.
fn log_round(last_error: &mut Option<String>, done: &RoundDone) {
    let vips = &done.vips;
    match &done.round {
        Ok(round) => {
            if round.reconfigured {
                info!(?vips, "BIRD announces the VIPs with a usable backend");
            }
            // Only a check says BIRD runs them (a file it does not include, it takes too).
            if round.checked.is_some() && last_error.take().is_some() {
                info!(?vips, "BIRD runs the VIPs again");
            }
        }
        Err(text) => {
            if last_error.as_ref() != Some(text) {
                warn!(?vips, "announcing VIPs: {text}");
                *last_error = Some(text.clone());
            }
        }
    }
}
