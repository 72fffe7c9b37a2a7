//! Follows the Engine: reads it every [`POLL`], hands over every snapshot that differs (and
//! one at least every [`RESYNC`]), and keeps the last good one when the Engine is unreachable
//! or answers garbage.
//!
//! Polling, not events: workers get no swarm events at all and no node gets task events, while
//! the local network inspections every node answers are cheap. Every read is a full read, so a
//! missed change is caught at the next one.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{
    engine::{Engine, EngineError},
    notices::{Attended, NoticeStatus, Notices},
    peers::PeerMemory,
    ports::PortMemory,
    snapshot::{Snapshot, SnapshotError},
    starts::Starts,
    vips::VipMemory,
};

/// How often the Engine is read while it answers.
pub const POLL: Duration = Duration::from_millis(500);
/// A read of the Engine is made at most once per this many times the last one took: on a
/// large swarm its answers are big and built anew each time, by the Engine's CPU. Reads of
/// up to 100 ms keep [`POLL`].
const DUTY_DIVISOR: u32 = 5;
/// The longest time between two snapshots handed over, changed or not.
pub const RESYNC: Duration = Duration::from_secs(30);
/// Retry delays after a failed read: doubled from the first to the last.
pub const BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(5));
/// How often a lasting outage is logged again.
const REMIND: Duration = Duration::from_secs(30);
/// After an outage, the longest the reads wait to agree before the latest is handed over: a
/// busy swarm (a rolling update, a task restarting in a loop) may never give two equal reads.
pub const SETTLE_LIMIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("the Docker Engine's answer is not what it documents: {0}")]
    Shape(SnapshotError),
}

/// The follower's health, for `lbctl status` and `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct FollowStatus {
    pub docker_host: String,
    /// Whether the last read succeeded.
    pub engine_up: bool,
    pub reads_ok: u64,
    pub reads_failed: u64,
    /// Why the last read failed; cleared by a good one (beside `engine_up: true` it read as a
    /// problem of now; `reads_failed` keeps the count).
    pub last_error: Option<String>,
    /// When the Engine last answered well.
    pub last_ok: Option<SystemTime>,
    /// How long the last good read took, and the wait it set before the next.
    pub last_read: Option<(Duration, Duration)>,
    /// The stop notices told to and heard from the other nodes.
    pub notices: NoticeStatus,
    /// Container starts heard from the Engine (each makes a read follow at once).
    pub container_starts: u64,
}

pub type SharedStatus = Arc<Mutex<FollowStatus>>;

/// Reads `engine` until `stop` resolves, sending snapshots to `updates`.
pub async fn follow(
    mut engine: Engine,
    updates: mpsc::Sender<Snapshot>,
    status: SharedStatus,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut next_read = Instant::now();
    let mut backoff = BACKOFF.0;
    let mut last: Option<(Snapshot, Instant)> = None;
    // The read last handed over, before the peers' word was marked in it: marked again when
    // that word changes between reads.
    let mut base: Option<Snapshot> = None;
    let mut down_since: Option<Instant> = None;
    // After an outage the Engine rebuilds its view for a while (networks, then services and
    // their tasks): see `settle`.
    let mut settling: Option<Settling> = None;
    let mut reminded = Instant::now();
    let mut peers = PeerMemory::default();
    let mut ports = PortMemory::default();
    let mut vips = VipMemory::default();
    let mut stopping = StoppingMemory::default();
    let mut notices = Notices::default();
    let mut starts = Starts::new(engine.host());
    // The soonest a read may follow the last one (see `DUTY_DIVISOR`).
    let mut earliest_read = Instant::now();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep_until(next_read.into()) => {}
            () = starts.next() => {
                // A container may call a VIP at once: read now, so its namespace is served
                // (as soon as the Engine's time allows; not while it does not answer).
                if down_since.is_none() {
                    next_read = next_read.min(earliest_read);
                }
                status.lock().unwrap_or_else(|p| p.into_inner()).container_starts += 1;
                continue;
            }
            attended = notices.attend() => {
                // The peers' word applies at once, not at the next read.
                if attended == Attended::MarksChanged
                    && let Some(read) = &base
                {
                    let marked = notices.marked(read);
                    if last.as_ref().is_none_or(|(before, _)| *before != marked) {
                        if updates.send(marked.clone()).await.is_err() {
                            return;
                        }
                        last = Some((marked, Instant::now()));
                    }
                }
                record_notices(&status, &notices);
                continue;
            }
        }
        let started = Instant::now();
        let answers = engine.read().await;
        // The Engine's time only (not the daemon's, which may take the snapshot slowly).
        let took = started.elapsed();
        earliest_read = Instant::now() + took * DUTY_DIVISOR;
        let read = match answers {
            Ok(answers) => Snapshot::from_answers(&answers).map_err(ReadError::Shape),
            Err(e) => Err(e.into()),
        };
        match read {
            Ok(mut snapshot) => {
                let now = Instant::now();
                peers.keep_recent(&mut snapshot, now);
                ports.keep_recent(&mut snapshot, now);
                vips.keep_recent(&mut snapshot, now);
                stopping.keep_known(&mut snapshot);
                // Only a view that holds is told (not the first reads after an outage).
                let settled = down_since.is_none() && settling.is_none();
                notices.exchange(&snapshot, settled).await;
                record_notices(&status, &notices);
                let answers_again = down_since.take();
                if let Some(since) = answers_again {
                    info!(
                        docker_host = engine.host(),
                        down_s = since.elapsed().as_secs(),
                        "swarm: the Docker Engine answers again; following it once its view \
                         holds still (two reads agree, or {}s at most)",
                        SETTLE_LIMIT.as_secs()
                    );
                }
                record(&status, engine.host(), Ok((took, next_poll(took))));
                let snapshot = match settle(settling.take(), answers_again.is_some(), snapshot, now)
                {
                    Settle::HandOver { read, agreed } => {
                        if !agreed {
                            info!(
                                docker_host = engine.host(),
                                "swarm: the Engine's view still changes from read to read {}s \
                                 after it answered again (a busy swarm); following it as read",
                                SETTLE_LIMIT.as_secs()
                            );
                        }
                        read
                    }
                    Settle::Wait(waiting) => {
                        settling = Some(waiting);
                        next_read = Instant::now() + next_poll(took);
                        continue;
                    }
                };
                let marked = notices.marked(&snapshot);
                record_notices(&status, &notices);
                let due = last
                    .as_ref()
                    .is_none_or(|(before, at)| *before != marked || at.elapsed() >= RESYNC);
                if due {
                    if updates.send(marked.clone()).await.is_err() {
                        return;
                    }
                    last = Some((marked, Instant::now()));
                }
                base = Some(snapshot);
                backoff = BACKOFF.0;
                next_read = Instant::now() + next_poll(took);
            }
            Err(e) => {
                let kept = last.as_ref().map_or(0, |(s, _)| s.services.len());
                if down_since.is_none() || reminded.elapsed() >= REMIND {
                    warn!(
                        docker_host = engine.host(),
                        retry_ms = backoff.as_millis() as u64,
                        "swarm: {e}; forwarding stays as it was (the last swarm state, {kept} \
                         services), retrying"
                    );
                    reminded = Instant::now();
                }
                down_since.get_or_insert_with(Instant::now);
                notices.hush();
                record(&status, engine.host(), Err(e.to_string()));
                next_read = Instant::now() + backoff;
                backoff = (backoff * 2).min(BACKOFF.1);
            }
        }
    }
}

/// Good reads after an outage, none handed over yet.
#[derive(Debug)]
struct Settling {
    /// The latest read.
    candidate: Snapshot,
    /// When the Engine first answered again.
    since: Instant,
}

#[derive(Debug)]
enum Settle {
    /// `agreed`: false when handed over at [`SETTLE_LIMIT`] rather than for agreeing with the
    /// read before.
    HandOver {
        read: Snapshot,
        agreed: bool,
    },
    Wait(Settling),
}

/// What becomes of a good `read` at `now`: after an outage (`answers_again`) the reads are
/// held until two in a row agree, or [`SETTLE_LIMIT`] after the first, when the latest is
/// handed over as it is; otherwise it is handed over at once (`agreed`).
fn settle(settling: Option<Settling>, answers_again: bool, read: Snapshot, now: Instant) -> Settle {
    let since = match settling {
        _ if answers_again => now,
        None => return Settle::HandOver { read, agreed: true },
        Some(waiting) if waiting.candidate == read => {
            return Settle::HandOver { read, agreed: true };
        }
        Some(waiting) => waiting.since,
    };
    if now.saturating_duration_since(since) >= SETTLE_LIMIT {
        return Settle::HandOver {
            read,
            agreed: false,
        };
    }
    Settle::Wait(Settling {
        candidate: read,
        since,
    })
}

/// The tasks last known to be stopping. A task's desired state never returns to running, so
/// when a manager cannot say for a while (no leader), the tasks it said were stopping stay
/// so while they are listed; no task is newly marked without its word.
#[derive(Default)]
struct StoppingMemory {
    names: std::collections::BTreeSet<String>,
}

impl StoppingMemory {
    fn keep_known(&mut self, snapshot: &mut Snapshot) {
        if snapshot.desired_states_known {
            self.names = snapshot.stopping_names();
            return;
        }
        let tasks = snapshot
            .services
            .values_mut()
            .flat_map(|s| s.tasks.iter_mut());
        let mut still = std::collections::BTreeSet::new();
        for (name, task) in tasks {
            if self.names.contains(name) {
                task.stopping = true;
                still.insert(name.clone());
            }
        }
        self.names = still;
    }
}

/// The wait before the next read, after a read that took `took`: [`POLL`], or longer on a
/// swarm so large that the reads would otherwise keep the Engine busy.
fn next_poll(took: Duration) -> Duration {
    POLL.max(took * DUTY_DIVISOR)
}

/// Records how the stop notices go.
fn record_notices(status: &SharedStatus, notices: &Notices) {
    let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
    s.notices = notices.status().clone();
}

/// Records a read: good (how long it took, the wait before the next), or its error.
fn record(status: &SharedStatus, host: &str, read: Result<(Duration, Duration), String>) {
    let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
    s.docker_host = host.to_owned();
    s.engine_up = read.is_ok();
    match read {
        Ok(timing) => {
            s.reads_ok += 1;
            s.last_error = None;
            s.last_ok = Some(SystemTime::now());
            s.last_read = Some(timing);
        }
        Err(e) => {
            s.reads_failed += 1;
            s.last_error = Some(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::swarm::snapshot::with_web_tasks;

    fn with_tasks(known: bool, stopping: &[&str], listed: &[&str]) -> Snapshot {
        Snapshot {
            desired_states_known: known,
            ..with_web_tasks(listed, stopping)
        }
    }

    fn stopping_of(snapshot: &Snapshot) -> Vec<&str> {
        snapshot.services["web"]
            .tasks
            .iter()
            .filter(|(_, t)| t.stopping)
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// A busy swarm after an outage: no two reads agree, yet the latest is handed over within
    /// the limit (reads every `POLL`), and from then on every read is.
    #[test]
    fn settling_after_an_outage_ends_within_the_limit_though_reads_never_agree() {
        let t0 = Instant::now();
        let read = |i: usize| with_web_tasks(&[&format!("web.1.t{i}")], &[]);
        let mut settling = None;
        let mut handed_over = None;
        for i in 0..=20 {
            let now = t0 + POLL * i as u32;
            match settle(settling.take(), i == 0, read(i), now) {
                Settle::HandOver { read: got, agreed } => {
                    assert_eq!(got, read(i));
                    assert!(!agreed);
                    handed_over = Some(now - t0);
                    break;
                }
                Settle::Wait(waiting) => settling = Some(waiting),
            }
        }
        let after = handed_over.expect("handed over within 20 reads");
        assert!(after <= SETTLE_LIMIT + POLL, "{after:?}");
        // Settled: each read is handed over as it comes.
        assert!(matches!(
            settle(None, false, read(30), t0 + SETTLE_LIMIT * 2),
            Settle::HandOver { agreed: true, .. }
        ));
        // Two reads that agree end it at once; an outage again starts it again.
        let Settle::Wait(waiting) = settle(None, true, read(1), t0) else {
            panic!("the first read after an outage is held");
        };
        assert!(matches!(
            settle(Some(waiting), false, read(1), t0 + POLL),
            Settle::HandOver { agreed: true, .. }
        ));
        let Settle::Wait(waiting) = settle(None, true, read(1), t0) else {
            panic!("held");
        };
        let later = t0 + SETTLE_LIMIT * 3;
        let Settle::Wait(again) = settle(Some(waiting), true, read(2), later) else {
            panic!("another outage: held again");
        };
        assert_eq!(again.since, later);
    }

    /// The status shows an outage's error while it lasts, not after the Engine answers again.
    #[test]
    fn a_good_read_clears_the_last_error() {
        let status = SharedStatus::default();
        let host = "unix:///var/run/docker.sock";
        record(&status, host, Err("connection refused".into()));
        let failed = status.lock().unwrap().clone();
        assert!(!failed.engine_up);
        assert_eq!(failed.last_error.as_deref(), Some("connection refused"));
        record(&status, host, Ok((Duration::from_millis(20), POLL)));
        let good = status.lock().unwrap().clone();
        assert!(good.engine_up);
        assert_eq!(good.last_error, None);
        assert_eq!((good.reads_ok, good.reads_failed), (1, 1));
    }

    #[test]
    fn reads_keep_to_a_fifth_of_the_engines_time() {
        assert_eq!(next_poll(Duration::from_millis(12)), POLL);
        assert_eq!(next_poll(Duration::from_millis(100)), POLL);
        assert_eq!(
            next_poll(Duration::from_millis(400)),
            Duration::from_secs(2)
        );
    }

    /// A manager that cannot say for a moment leaves the tasks it said were stopping stopping
    /// (while listed), and marks no other; its next answer counts as given.
    #[test]
    fn tasks_known_to_stop_stay_stopping_while_the_manager_cannot_say() {
        let mut memory = StoppingMemory::default();
        let mut told = with_tasks(true, &["web.2.b"], &["web.1.a", "web.2.b", "web.3.c"]);
        memory.keep_known(&mut told);
        assert_eq!(stopping_of(&told), ["web.2.b"]);
        let mut silent = with_tasks(false, &[], &["web.1.a", "web.2.b", "web.4.d"]);
        memory.keep_known(&mut silent);
        assert_eq!(stopping_of(&silent), ["web.2.b"]);
        // Gone from the listing: forgotten, and not marked should the name come back.
        let mut gone = with_tasks(false, &[], &["web.1.a"]);
        memory.keep_known(&mut gone);
        assert!(stopping_of(&gone).is_empty());
        let mut back = with_tasks(false, &[], &["web.1.a", "web.2.b"]);
        memory.keep_known(&mut back);
        assert!(stopping_of(&back).is_empty());
        // An answer again: only what it says.
        let mut again = with_tasks(true, &[], &["web.1.a", "web.2.b"]);
        memory.keep_known(&mut again);
        assert!(stopping_of(&again).is_empty());
    }
}
