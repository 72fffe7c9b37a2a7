//! The admin API over TCP, guarded: anyone who can reach the port can open connections before
//! any token is checked, so a connection must send its request headers within
//! [`HEADER_TIMEOUT`], lives at most [`CONNECTION_LIFETIME`], and at most
//! [`MAX_CONNECTIONS`] are open at once; beyond that, new ones get a 503 and are closed (and
//! counted as such). Descriptors thus stay for the daemon's own work: the Unix socket,
//! `/metrics`, the maps, reloads.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};
use tracing::{info, warn};

use super::shared::{Shared, lock};

/// Connections the TCP API serves at once; an operator's tools need a handful.
pub const MAX_CONNECTIONS: usize = 64;
/// Time a connection has to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a connection stays open, busy or idle: every admin request takes far less.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// What a connection beyond the cap is told before it is closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 67\r\n\r\n{\"error\": \"too many admin API connections open; try again shortly\"}";

/// Serves `router` on `listener` until `shutdown`, under the limits above.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shared: Arc<Shared>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, say: wait a moment rather than spin.
                warn!("admin API (TCP): accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refuse(&shared, stream, peer);
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
            drop(slot);
        });
    }
}

/// Answers a connection beyond the cap with a 503 (best effort, never waiting) and closes it.
fn refuse(shared: &Shared, stream: tokio::net::TcpStream, peer: SocketAddr) {
    let _ = stream.try_write(BUSY);
    *lock(&shared.requests).entry(503).or_default() += 1;
    let refused = lock(&shared.requests).get(&503).copied().unwrap_or(0);
    // Once, then every thousandth: a flood must not flood the log too.
    if refused == 1 || refused % 1000 == 0 {
        info!(%peer, refused, "admin API (TCP): {MAX_CONNECTIONS} connections open; refusing more (counted as 503)");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_busy_answer_is_well_formed() {
        let text = std::str::from_utf8(super::BUSY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(body.len(), length);
        assert!(
            serde_json::from_str::<serde_json::Value>(body).is_ok(),
            "{body}"
        );
    }
}
