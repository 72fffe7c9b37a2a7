//! Keeps BIRD announcing the running plan's VIPs (see `crate::announce`): a look every
//! second, so a VIP whose last usable backend left is withdrawn within a second plus BIRD's
//! reconfiguration. Stopping lbd leaves the announcement as it is (a restart must not
//! withdraw); `lbd cleanup` withdraws.

use std::{sync::Arc, time::Duration};

use tracing::{info, warn};

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
        let round = async {
            loop {
                let a = announcer.clone();
                let daemon = shared.clone();
                let result = tokio::task::spawn_blocking(move || {
                    let mut a = a.lock().expect("announcer lock");
                    let mut vips = daemon.daemon().vips_to_announce(&a.announced());
                    vips.extend(a.settings().reply_anchor);
                    (a.sync(&vips), vips)
                })
                .await;
                match result {
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
