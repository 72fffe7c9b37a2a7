//! lbd's HTTP listeners (the admin API on its Unix socket and on TCP, `/metrics`), guarded
//! alike. Anyone who can reach a port can open connections before any token is checked (and
//! `/metrics` may listen on every address), so on each listener a connection must send a
//! request's headers within [`HEADER_TIMEOUT`], is asked to close after its [`Limits::lifetime`]
//! (a request in flight then still gets its answer; an idle connection closes at once), and at
//! most [`Limits::max_connections`] are open at once; beyond that, new ones get a 503 and are
//! closed. Descriptors thus stay for the daemon's own work: the other listeners, the maps,
//! reloads.

use std::{sync::Arc, time::Duration};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream, UnixListener, UnixStream},
    sync::{Semaphore, watch},
    task::JoinSet,
};
use tracing::{info, warn};

/// Time a connection has to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request still in flight when its connection's lifetime ends may take to finish
/// (an apply of many services takes seconds); then the connection is closed. A stop gives
/// in-flight requests less: the event loop closes what is left after a few seconds.
pub const FINISH: Duration = Duration::from_secs(60);

/// One listener's guard.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// The longest a connection is kept, busy or idle, before it is asked to close: every
    /// admin request and scrape takes far less.
    pub lifetime: Duration,
}

/// The admin API, over TCP or its socket: an operator's tools need a handful of connections.
pub const API: Limits = Limits {
    max_connections: 64,
    lifetime: Duration::from_secs(60),
};

/// `/metrics`: a scraper or two, and someone with curl.
pub const METRICS: Limits = Limits {
    max_connections: 32,
    lifetime: Duration::from_secs(60),
};

/// What a connection beyond the cap is told before it is closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 52\r\n\r\n{\"error\": \"too many connections; try again shortly\"}";

/// A listener whose connections [`serve`] takes.
pub trait Incoming: Send + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The next connection, and who it is from (for the log).
    fn accept(&self) -> impl Future<Output = std::io::Result<(Self::Stream, String)>> + Send;
    /// Writes what fits into the socket's buffer now, never waiting.
    fn try_write(stream: &Self::Stream, bytes: &[u8]);
}

impl Incoming for TcpListener {
    type Stream = TcpStream;
    async fn accept(&self) -> std::io::Result<(TcpStream, String)> {
        let (stream, peer) = TcpListener::accept(self).await?;
        Ok((stream, peer.to_string()))
    }
    fn try_write(stream: &TcpStream, bytes: &[u8]) {
        let _ = stream.try_write(bytes);
    }
}

impl Incoming for UnixListener {
    type Stream = UnixStream;
    async fn accept(&self) -> std::io::Result<(UnixStream, String)> {
        let (stream, _) = UnixListener::accept(self).await?;
        // Peers of a Unix socket are unnamed; its mode already limits them to root.
        Ok((stream, "a local process".to_owned()))
    }
    fn try_write(stream: &UnixStream, bytes: &[u8]) {
        let _ = stream.try_write(bytes);
    }
}

/// Serves `router` on `listener` (named `name` in the log) under `limits` until `stop` turns
/// true; then asks every open connection to close after its request in flight, and returns
/// once all have. `on_refused` is called for each connection refused beyond the cap.
pub async fn serve<L: Incoming>(
    name: &'static str,
    listener: L,
    router: Router,
    limits: Limits,
    on_refused: impl Fn() + Send + 'static,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut refused = 0u64;
    let mut connections = JoinSet::new();
    loop {
        // Finished connections are reaped as new ones come, so the set holds only open ones.
        while connections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, say: wait a moment rather than spin.
                warn!("{name}: accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            L::try_write(&stream, BUSY);
            refused += 1;
            on_refused();
            // Once, then every thousandth: a flood must not flood the log too.
            if refused == 1 || refused.is_multiple_of(1000) {
                info!(
                    %peer,
                    refused,
                    "{name}: {} connections open; refusing more",
                    limits.max_connections,
                );
            }
            continue;
        };
        connections.spawn(connection(
            stream,
            router.clone(),
            limits.lifetime,
            stop.clone(),
            slot,
        ));
    }
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Serves one connection until it ends, its lifetime is over or lbd stops; in the last two
/// cases its request in flight still gets its answer (within [`FINISH`]).
async fn connection<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    router: Router,
    lifetime: Duration,
    mut stop: watch::Receiver<bool>,
    slot: tokio::sync::OwnedSemaphorePermit,
) {
    let service = hyper_util::service::TowerToHyperService::new(router);
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        _ = tokio::time::sleep(lifetime) => {}
        _ = stop.wait_for(|stop| *stop) => {}
    }
    connection.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(FINISH, connection).await;
    drop(slot);
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use axum::routing::get;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

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

    /// A router whose one route answers after `delay`.
    fn slow_router(delay: Duration) -> Router {
        Router::new().route(
            "/slow",
            get(move || async move {
                tokio::time::sleep(delay).await;
                "done"
            }),
        )
    }

    /// A test server of two connections at most, whose route answers after `delay`: its
    /// address, its stop, its task and how many connections it refused.
    struct TestServer {
        addr: std::net::SocketAddr,
        stop: watch::Sender<bool>,
        task: tokio::task::JoinHandle<std::io::Result<()>>,
        refusals: Arc<std::sync::atomic::AtomicU32>,
    }

    async fn test_server(lifetime: Duration, delay: Duration) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let refusals = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counted = refusals.clone();
        let (stop, stop_rx) = watch::channel(false);
        let limits = Limits {
            max_connections: 2,
            lifetime,
        };
        let task = tokio::spawn(serve(
            "test",
            listener,
            slow_router(delay),
            limits,
            move || {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            },
            stop_rx,
        ));
        TestServer {
            addr,
            stop,
            task,
            refusals,
        }
    }

    /// Runs `test` on a runtime of its own.
    fn on_runtime(test: impl Future<Output = ()>) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(test);
    }

    /// Sends `request` on `stream` and reads until the peer closes (bounded by `limit`).
    async fn exchange(stream: &mut TcpStream, request: &str, limit: Duration) -> String {
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(limit, stream.read_to_end(&mut answer)).await;
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[test]
    fn a_request_in_flight_when_the_lifetime_ends_or_at_a_stop_gets_its_answer_and_idle_ones_are_closed()
     {
        on_runtime(async {
            let server = test_server(Duration::from_millis(200), Duration::from_millis(600)).await;
            let addr = server.addr;
            // In flight across the lifetime: answered, then closed.
            let mut busy = TcpStream::connect(addr).await.unwrap();
            let request = "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n";
            let answer = exchange(&mut busy, request, Duration::from_secs(5)).await;
            assert!(
                answer.starts_with("HTTP/1.1 200") && answer.ends_with("done"),
                "{answer:?}"
            );
            // Idle past the lifetime: closed without a word.
            let mut idle = TcpStream::connect(addr).await.unwrap();
            let started = Instant::now();
            let mut nothing = Vec::new();
            let read =
                tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut nothing)).await;
            assert!(
                matches!(read, Ok(Ok(0))) && started.elapsed() < Duration::from_secs(2),
                "{read:?} after {:?}",
                started.elapsed()
            );
            // A stop lets the request in flight finish and returns once every connection closed.
            let mut last = TcpStream::connect(addr).await.unwrap();
            last.write_all(request.as_bytes()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            server.stop.send(true).unwrap();
            let mut answer = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(5), last.read_to_end(&mut answer)).await;
            let answer = String::from_utf8_lossy(&answer);
            assert!(answer.ends_with("done"), "{answer:?}");
            let stopped = tokio::time::timeout(Duration::from_secs(5), server.task).await;
            assert!(matches!(stopped, Ok(Ok(Ok(())))), "{stopped:?}");
        });
    }

    #[test]
    fn connections_beyond_the_cap_get_a_503_and_are_counted() {
        on_runtime(async {
            // A lifetime far longer than the test: the open connections keep their slots.
            let server = test_server(Duration::from_secs(60), Duration::ZERO).await;
            let addr = server.addr;
            let mut open: Vec<TcpStream> = Vec::new();
            for _ in 0..2 {
                open.push(TcpStream::connect(addr).await.unwrap());
            }
            // Both taken before the third comes: each answers a request.
            for stream in &mut open {
                stream
                    .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await
                    .unwrap();
                let mut head = [0u8; 12];
                stream.read_exact(&mut head).await.unwrap();
                assert_eq!(&head, b"HTTP/1.1 200");
            }
            let mut third = TcpStream::connect(addr).await.unwrap();
            let mut refused = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut refused)).await;
            let refused = String::from_utf8_lossy(&refused);
            assert!(refused.starts_with("HTTP/1.1 503"), "{refused:?}");
            assert_eq!(
                server.refusals.load(std::sync::atomic::Ordering::Relaxed),
                1
            );
            server.stop.send(true).unwrap();
            drop(open);
            let stopped = tokio::time::timeout(Duration::from_secs(5), server.task).await;
            assert!(matches!(stopped, Ok(Ok(Ok(())))), "{stopped:?}");
        });
    }
}
