//! Container starts as they happen. A container started on an overlay network may call a VIP
//! within milliseconds, and the socket programs serve it only once lbd knows its network
//! namespace, from a read of the Engine: a start makes the follower read at once instead of
//! at its next poll. Best effort: the polls still find every container, so a start missed
//! (the stream broken, the Engine away) only waits for the next one.

use std::{
    collections::HashMap,
    pin::Pin,
    time::{Duration, Instant},
};

use bollard::{errors::Error, models::EventMessage, query_parameters::EventsOptions};
use futures_util::{Stream, StreamExt as _};
use tracing::debug;

/// The pause before the stream is asked for again after it failed or ended: doubled from the
/// first to the last.
const RETRY: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(30));

type Events = Pin<Box<dyn Stream<Item = Result<EventMessage, Error>> + Send>>;

/// The Engine's stream of container starts.
pub struct Starts {
    host: String,
    stream: Option<Events>,
    /// When the stream may be asked for again (after a failure).
    retry_at: Option<Instant>,
    retry: Duration,
}

impl Starts {
    pub fn new(host: &str) -> Self {
        Self {
            host: host.to_owned(),
            stream: None,
            retry_at: None,
            retry: RETRY.0,
        }
    }

    /// Waits for the next container start on this node. While the Engine cannot be asked it
    /// waits (asking again after a growing pause). Cancel-safe: a start is never half-taken.
    pub async fn next(&mut self) {
        loop {
            let Some(stream) = &mut self.stream else {
                if let Some(at) = self.retry_at {
                    tokio::time::sleep_until(at.into()).await;
                }
                match super::engine::connect(&self.host).await {
                    Ok(client) => {
                        let filters = HashMap::from([
                            ("type".to_owned(), vec!["container".to_owned()]),
                            ("event".to_owned(), vec!["start".to_owned()]),
                        ]);
                        let options = EventsOptions {
                            filters: Some(filters),
                            ..Default::default()
                        };
                        self.stream = Some(Box::pin(client.events(Some(options))));
                    }
                    Err(e) => self.failed(&e.to_string()),
                }
                continue;
            };
            match stream.next().await {
                Some(Ok(_)) => {
                    self.retry = RETRY.0;
                    return;
                }
                Some(Err(e)) => self.failed(&e.to_string()),
                None => self.failed("the Engine ended the stream"),
            }
        }
    }

    fn failed(&mut self, error: &str) {
        debug!(docker_host = %self.host, "swarm: the Engine's container starts: {error}; the polls go on");
        self.stream = None;
        self.retry_at = Some(Instant::now() + self.retry);
        self.retry = (self.retry * 2).min(RETRY.1);
    }
}
