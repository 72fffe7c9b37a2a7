//! Keeps BIRD announcing the running plan's VIPs (see `crate::announce`): a look every
//! second, so a VIP whose last usable backend left is withdrawn within a second plus BIRD's
//! reconfiguration. Stopping lbd leaves the announcement as it is (a restart must not
//! withdraw); `lbd cleanup` withdraws.

use std::{sync::Arc, time::Duration};

use tracing::{error, info, warn};

use super::shared::Shared;
use crate::announce::{Announcer, BirdSettings, Synced};

/// How often the VIP set is compared with what BIRD was given.
const PERIOD: Duration = Duration::from_secs(1);

pub(super) fn spawn(
    shared: &Arc<Shared>,
    settings: BirdSettings,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let shared = shared.clone();
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
                    (a.sync(&vips), vips, users)
                })
                .await;
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
                    Ok((Ok(Synced::Reconfigured), vips)) => {
                        last_error = None;
                        info!(?vips, "BIRD announces the VIPs with a usable backend");
                    }
                    Ok((Ok(Synced::Unchanged), _)) => last_error = None,
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
