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
/// its grace period. (The Engine keeps only its last 256 events of every kind, health checks'
/// `exec_*` included, so on a busy node a look back, like a read after a failed one, may find
/// fewer.)
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
    /// Each container's stop signal, by id, read from its inspection at its first `kill`
    /// (`None`: a name not known here).
    stop_signals: HashMap<String, Option<i32>>,
    /// Kills whose container could not be inspected (the Engine busy): asked again at the
    /// next read, by id, with the signal sent. Their events are not read again.
    unresolved: HashMap<String, i32>,
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
        self.unresolved
            .retain(|id, _| running.contains(id.as_str()));
        let now = SystemTime::now();
        // Never after `now`: a clock stepped back would make every window one the Engine
        // refuses ("since" after "until").
        let since = self
            .read_until
            .map_or(now - FIRST_LOOK_BACK, |until| until - OVERLAP)
            .min(now);
        match tokio::time::timeout(READ_TIMEOUT, events(client, since, now)).await {
            Ok(Ok(events)) => {
                if self.error.take().is_some() {
                    info!(
                        docker_host = host,
                        "swarm: the Engine's events are read again"
                    );
                }
                self.read_until = Some(now);
                // Kills of earlier reads first, then this read's events in the Engine's order:
                // a container started again (`docker restart`, or a kill the first read's
                // look back found) is no longer stopping.
                let unresolved = std::mem::take(&mut self.unresolved);
                let events = unresolved
                    .into_iter()
                    .map(|(id, signal)| Event::Kill(id, signal))
                    .chain(events);
                for event in events {
                    match event {
                        Event::Start(id) => {
                            self.stopping.remove(&id);
                            self.unresolved.remove(&id);
                        }
                        Event::Kill(id, signal) if running.contains(id.as_str()) => {
                            match self.is_stop_signal(client, host, &id, signal).await {
                                Some(true) => {
                                    self.stopping.insert(id);
                                }
                                Some(false) => {}
                                None => {
                                    self.unresolved.insert(id, signal);
                                }
                            }
                        }
                        Event::Kill(..) => {}
                    }
                }
            }
            Ok(Err(e)) => self.failed(host, crate::error_text::with_causes(&e)),
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

    /// Whether `signal` is container `id`'s stop signal (not, say, a reload's SIGHUP); `None`
    /// when the container could not be inspected (not kept: asked again).
    async fn is_stop_signal(
        &mut self,
        client: &Docker,
        host: &str,
        id: &str,
        signal: i32,
    ) -> Option<bool> {
        if !self.stop_signals.contains_key(id) {
            let inspected = client
                .inspect_container(id, None::<InspectContainerOptions>)
                .await
                .ok()?;
            let configured = inspected.config.and_then(|c| c.stop_signal);
            let number = stop_signal_number(configured.as_deref());
            if number.is_none() {
                warn!(
                    docker_host = host,
                    container = id,
                    "swarm: the stop signal {configured:?} of a task container is not one meshlb \
                     knows: its stop is not seen here (only a manager's `/tasks` tells it)"
                );
            }
            self.stop_signals.insert(id.to_owned(), number);
        }
        Some(self.stop_signals.get(id).copied().flatten() == Some(signal))
    }
}

/// A task container's event that says whether it is stopping.
enum Event {
    /// Sent a signal (the container id, the signal).
    Kill(String, i32),
    /// Started (again).
    Start(String),
}

/// The `kill` and `start` events of task containers between `since` and `until`, in order.
async fn events(
    client: &Docker,
    since: SystemTime,
    until: SystemTime,
) -> Result<Vec<Event>, bollard::errors::Error> {
    let filters = HashMap::from([
        ("type".to_owned(), vec!["container".to_owned()]),
        (
            "event".to_owned(),
            vec!["kill".to_owned(), "start".to_owned()],
        ),
        ("label".to_owned(), vec![TASK_ID_LABEL.to_owned()]),
    ]);
    let options = EventsOptions {
        since: Some(timestamp(since)),
        until: Some(timestamp(until)),
        filters: Some(filters),
    };
    let mut stream = client.events(Some(options));
    let mut events = Vec::new();
    // Bounded: an `until` in the past ends the stream once the Engine sent what it holds.
    while let Some(event) = stream.next().await {
        let event = event?;
        let actor = event.actor.unwrap_or_default();
        let Some(id) = actor.id else { continue };
        match event.action.as_deref() {
            Some("start") => events.push(Event::Start(id)),
            Some("kill") => {
                let signal = actor
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get("signal"))
                    .and_then(|s| s.parse().ok());
                if let Some(signal) = signal {
                    events.push(Event::Kill(id, signal));
                }
            }
            _ => {}
        }
    }
    Ok(events)
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

/// A container's stop signal as its configuration says it (`SIGTERM`, `TERM`, `15`,
/// `SIGRTMIN+3`; none: Docker's default, SIGTERM); `None` for a name not known here.
fn stop_signal_number(configured: Option<&str>) -> Option<i32> {
    let Some(text) = configured.map(str::trim).filter(|t| !t.is_empty()) else {
        return Some(libc::SIGTERM);
    };
    let upper = text.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Ok(number) = name.parse() {
        return Some(number);
    }
    // Docker's real-time signals: RTMIN is 34 and RTMAX 64 on Linux, as it numbers them.
    if let Some(n) = name.strip_prefix("RTMIN+") {
        return n.parse::<i32>().ok().map(|n| 34 + n);
    }
    if let Some(n) = name.strip_prefix("RTMAX-") {
        return n.parse::<i32>().ok().map(|n| 64 - n);
    }
    let names = [
        ("HUP", libc::SIGHUP),
        ("INT", libc::SIGINT),
        ("QUIT", libc::SIGQUIT),
        ("ILL", libc::SIGILL),
        ("TRAP", libc::SIGTRAP),
        ("ABRT", libc::SIGABRT),
        ("IOT", libc::SIGABRT),
        ("BUS", libc::SIGBUS),
        ("FPE", libc::SIGFPE),
        ("KILL", libc::SIGKILL),
        ("USR1", libc::SIGUSR1),
        ("SEGV", libc::SIGSEGV),
        ("USR2", libc::SIGUSR2),
        ("PIPE", libc::SIGPIPE),
        ("ALRM", libc::SIGALRM),
        ("TERM", libc::SIGTERM),
        ("STKFLT", libc::SIGSTKFLT),
        ("CHLD", libc::SIGCHLD),
        ("CONT", libc::SIGCONT),
        ("STOP", libc::SIGSTOP),
        ("TSTP", libc::SIGTSTP),
        ("TTIN", libc::SIGTTIN),
        ("TTOU", libc::SIGTTOU),
        ("URG", libc::SIGURG),
        ("XCPU", libc::SIGXCPU),
        ("XFSZ", libc::SIGXFSZ),
        ("VTALRM", libc::SIGVTALRM),
        ("PROF", libc::SIGPROF),
        ("WINCH", libc::SIGWINCH),
        ("IO", libc::SIGIO),
        ("POLL", libc::SIGIO),
        ("PWR", libc::SIGPWR),
        ("SYS", libc::SIGSYS),
    ];
    names
        .iter()
        .find(|(n, _)| *n == name)
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
        assert_eq!(stop_signal_number(Some("SIGRTMIN+3")), Some(37));
        assert_eq!(stop_signal_number(Some("sigwinch")), Some(28));
        assert_eq!(stop_signal_number(Some("SIGNOPE")), None);
    }

    #[test]
    fn timestamps_are_seconds_with_nanoseconds() {
        let at = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        assert_eq!(timestamp(at), "1700000000.000000005");
    }
}
