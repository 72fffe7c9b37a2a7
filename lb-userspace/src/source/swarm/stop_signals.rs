//! Which local task containers were sent their stop signal: Swarm stopping them (a scale-down,
//! an update, a drained node). The container runs on for its stop grace period and nothing the
//! Engine lists changes; only its `kill` event tells. Every node sees its own tasks' events,
//! workers too, whose Engine cannot list tasks' desired states.

use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bollard::{
    Docker,
    models::ContainerSummary,
    query_parameters::{EventsOptions, InspectContainerOptions},
};
use futures_util::StreamExt as _;
use tracing::{info, warn};

/// Label Docker puts on a task's container (events are filtered by it).
const TASK_ID_LABEL: &str = "com.docker.swarm.task.id";
/// How far back the first read looks: a task whose stop began before lbd started is still in
/// its grace period.
const FIRST_LOOK_BACK: Duration = Duration::from_secs(60);
/// Each read also looks this far behind the last one's end: an event stamped just before a
/// read's end may be published just after it.
const OVERLAP: Duration = Duration::from_secs(1);
/// A read of the events that takes longer is an Engine that does not answer.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
pub(super) struct StopSignals {
    /// Running task containers that got their stop signal, by id.
    stopping: BTreeSet<String>,
    /// Each container's stop signal, by id, read from its inspection at its first `kill`.
    stop_signals: HashMap<String, Option<i32>>,
    /// The end of the last window of events read.
    read_until: Option<SystemTime>,
    /// The last failed read's error, told once until it changes.
    error: Option<String>,
}

impl StopSignals {
    /// The task containers among `running` that were sent their stop signal. A failed read of
    /// the events keeps what earlier reads found (and is read again next time).
    pub(super) async fn read(
        &mut self,
        client: &Docker,
        host: &str,
        running: &[ContainerSummary],
    ) -> BTreeSet<String> {
        let running: BTreeSet<&str> = running.iter().filter_map(|c| c.id.as_deref()).collect();
        self.stopping.retain(|id| running.contains(id.as_str()));
        self.stop_signals
            .retain(|id, _| running.contains(id.as_str()));
        let now = SystemTime::now();
        let since = self
            .read_until
            .map_or(now - FIRST_LOOK_BACK, |until| until - OVERLAP);
        match tokio::time::timeout(READ_TIMEOUT, kills(client, since, now)).await {
            Ok(Ok(kills)) => {
                if self.error.take().is_some() {
                    info!(
                        docker_host = host,
                        "swarm: the Engine's events are read again"
                    );
                }
                self.read_until = Some(now);
                for (id, signal) in kills {
                    if running.contains(id.as_str())
                        && self.is_stop_signal(client, &id, signal).await
                    {
                        self.stopping.insert(id);
                    }
                }
            }
            Ok(Err(e)) => self.failed(host, e.to_string()),
            Err(_) => self.failed(host, format!("no answer within {READ_TIMEOUT:?}")),
        }
        self.stopping.clone()
    }

    fn failed(&mut self, host: &str, error: String) {
        if self.error.as_deref() != Some(&error) {
            warn!(
                docker_host = host,
                "swarm: reading the Engine's container events failed ({error}); local tasks sent \
                 their stop signal since are not known as stopping until it answers"
            );
            self.error = Some(error);
        }
    }

    /// Whether `signal` is container `id`'s stop signal (not, say, a reload's SIGHUP).
    async fn is_stop_signal(&mut self, client: &Docker, id: &str, signal: i32) -> bool {
        if !self.stop_signals.contains_key(id) {
            let configured = client
                .inspect_container(id, None::<InspectContainerOptions>)
                .await
                .ok()
                .and_then(|c| c.config)
                .and_then(|c| c.stop_signal);
            self.stop_signals
                .insert(id.to_owned(), stop_signal_number(configured.as_deref()));
        }
        self.stop_signals.get(id).copied().flatten() == Some(signal)
    }
}

/// The `kill` events of task containers between `since` and `until`: (container id, signal).
async fn kills(
    client: &Docker,
    since: SystemTime,
    until: SystemTime,
) -> Result<Vec<(String, i32)>, bollard::errors::Error> {
    let filters = HashMap::from([
        ("type".to_owned(), vec!["container".to_owned()]),
        ("event".to_owned(), vec!["kill".to_owned()]),
        ("label".to_owned(), vec![TASK_ID_LABEL.to_owned()]),
    ]);
    let options = EventsOptions {
        since: Some(timestamp(since)),
        until: Some(timestamp(until)),
        filters: Some(filters),
    };
    let mut events = client.events(Some(options));
    let mut kills = Vec::new();
    // Bounded: an `until` in the past ends the stream once the Engine sent what it holds.
    while let Some(event) = events.next().await {
        let actor = event?.actor.unwrap_or_default();
        let signal = actor
            .attributes
            .as_ref()
            .and_then(|a| a.get("signal"))
            .and_then(|s| s.parse().ok());
        if let (Some(id), Some(signal)) = (actor.id, signal) {
            kills.push((id, signal));
        }
    }
    Ok(kills)
}

/// The Engine's `since`/`until` form: seconds since the epoch, with nanoseconds.
fn timestamp(at: SystemTime) -> String {
    let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!(
        "{}.{:09}",
        since_epoch.as_secs(),
        since_epoch.subsec_nanos()
    )
}

/// A container's stop signal as its configuration says it (`SIGTERM`, `TERM` or `15`; none:
/// Docker's default, SIGTERM); `None` for a name not known here.
fn stop_signal_number(configured: Option<&str>) -> Option<i32> {
    let Some(text) = configured.map(str::trim).filter(|t| !t.is_empty()) else {
        return Some(libc::SIGTERM);
    };
    let name = text.strip_prefix("SIG").unwrap_or(text);
    if let Ok(number) = name.parse() {
        return Some(number);
    }
    let names = [
        ("HUP", libc::SIGHUP),
        ("INT", libc::SIGINT),
        ("QUIT", libc::SIGQUIT),
        ("KILL", libc::SIGKILL),
        ("USR1", libc::SIGUSR1),
        ("USR2", libc::SIGUSR2),
        ("TERM", libc::SIGTERM),
        ("STOP", libc::SIGSTOP),
        ("PWR", libc::SIGPWR),
        ("WINCH", libc::SIGWINCH),
        ("ALRM", libc::SIGALRM),
    ];
    names
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|&(_, number)| number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_signals_read_as_docker_writes_them() {
        assert_eq!(stop_signal_number(None), Some(libc::SIGTERM));
        assert_eq!(stop_signal_number(Some("")), Some(libc::SIGTERM));
        assert_eq!(stop_signal_number(Some("SIGTERM")), Some(15));
        assert_eq!(stop_signal_number(Some("TERM")), Some(15));
        assert_eq!(stop_signal_number(Some("SIGINT")), Some(2));
        assert_eq!(stop_signal_number(Some("9")), Some(9));
        assert_eq!(stop_signal_number(Some("SIGQUIT")), Some(3));
        assert_eq!(stop_signal_number(Some("SIGRTMIN+3")), None);
    }

    #[test]
    fn timestamps_are_seconds_with_nanoseconds() {
        let at = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        assert_eq!(timestamp(at), "1700000000.000000005");
    }
}
