//! Runs the health checks: each checked backend once per its service's interval, every check
//! on its own task with its timeout, so a slow or silent backend never holds up another
//! check, the API or a reload. Finished checks go to the daemon in batches
//! (`Daemon::record_health`), under its lock only as long as any change takes.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use tokio::{
    task::{AbortHandle, Id, JoinSet},
    time::Instant,
};
use tracing::warn;

use super::shared::Shared;
use crate::{
    daemon::CheckResult,
    source::health::{Target, TargetKey, probe},
};

/// How often due checks are started and the services' checks followed.
const TICK: Duration = Duration::from_millis(50);
/// Most checks in flight at once; due checks beyond it wait for the next tick.
const MAX_IN_FLIGHT: usize = 512;

pub(super) fn spawn(
    shared: &Arc<Shared>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let shared = shared.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = stop => {}
            _ = run(shared) => {}
        }
    });
}

/// Between half the interval and the whole of it, by the target's hash (seeded per process):
/// where in the interval the target's checks fall from its second on.
fn spread(key: &TargetKey, interval: Duration) -> Duration {
    use std::hash::BuildHasher as _;
    static SEED: std::sync::LazyLock<std::hash::RandomState> =
        std::sync::LazyLock::new(std::hash::RandomState::new);
    let share = SEED.hash_one(key) % 1024;
    interval / 2 + interval.mul_f64(share as f64 / 2048.0)
}

async fn run(shared: Arc<Shared>) {
    let mut epoch = 0;
    let mut targets: Vec<Target> = Vec::new();
    let mut due: HashMap<TargetKey, Instant> = HashMap::new();
    // The check running for each target, and what it checks with.
    let mut in_flight: HashMap<TargetKey, InFlight> = HashMap::new();
    let mut checks: JoinSet<CheckResult> = JoinSet::new();
    // Which target each check is for, so that even a check that panicked frees its target.
    let mut checking: HashMap<Id, TargetKey> = HashMap::new();
    // Where the next tick starts looking for due checks (see below).
    let mut next_first = 0usize;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                // Not waiting for a change under way: the targets are looked at again in 50 ms.
                let changed = shared.try_daemon().and_then(|mut d| d.health_targets(epoch));
                if let Some((now_epoch, now_targets)) = changed {
                    let checked = |t: &[Target]| -> HashSet<String> {
                        t.iter().map(|t| t.key.service.clone()).collect()
                    };
                    for gone in checked(&targets).difference(&checked(&now_targets)) {
                        shared.check_latency.forget(gone);
                    }
                    epoch = now_epoch;
                    targets = now_targets;
                    let keys: HashSet<&TargetKey> = targets.iter().map(|t| &t.key).collect();
                    due.retain(|key, _| keys.contains(key));
                    // A check of a target no longer checked, or checked another way now (a
                    // reload's probe or timeout), is stopped: it would hold its target (and a
                    // slot) up to its old timeout, and its answer is to the old question.
                    in_flight.retain(|key, check| {
                        let current = targets.iter().any(|t| &t.key == key && check.asks_as(t));
                        if !current {
                            check.handle.abort();
                        }
                        current
                    });
                    // An interval made shorter counts from now, not from the check the old
                    // one scheduled (perhaps a minute away).
                    let now = Instant::now();
                    for target in &targets {
                        if let Some(next) = due.get_mut(&target.key) {
                            *next = (*next).min(now + target.interval);
                        }
                    }
                }
                let now = Instant::now();
                // From where the last tick stopped for want of room, so that with more due
                // checks than MAX_IN_FLIGHT (silent backends holding slots a whole timeout)
                // the ones listed last still get their turn.
                let first = next_first % targets.len().max(1);
                for (offset, target) in targets[first..].iter().chain(&targets[..first]).enumerate() {
                    if in_flight.len() >= MAX_IN_FLIGHT {
                        next_first = first + offset;
                        break;
                    }
                    // A new target is checked at once: a dead backend found at start is left
                    // out within one timeout.
                    let new = !due.contains_key(&target.key);
                    let next = due.entry(target.key.clone()).or_insert(now);
                    if *next > now || in_flight.contains_key(&target.key) {
                        continue;
                    }
                    *next = if new {
                        // Its second check a share of the interval later, so that the checks
                        // of targets that came together (every one at a start) do not all
                        // fall on the same beats, as a burst of connections each interval.
                        now + spread(&target.key, target.interval)
                    } else {
                        // On the interval's own beat (not the tick's), unless far behind.
                        (*next + target.interval).max(now + target.interval / 2)
                    };
                    let check = target.clone();
                    let handle = checks.spawn(async move {
                        let result = probe::check(check.key.addr, &check.probe, check.timeout).await;
                        (check.key, result)
                    });
                    checking.insert(handle.id(), target.key.clone());
                    in_flight.insert(target.key.clone(), InFlight::of(target, handle));
                }
            }
            Some(done) = checks.join_next_with_id(), if !checks.is_empty() => {
                let mut batch = Vec::new();
                let mut take = |done: Result<(tokio::task::Id, CheckResult), tokio::task::JoinError>| {
                    let id = match &done {
                        Ok((id, _)) => *id,
                        Err(e) => e.id(),
                    };
                    // Only the target's current check frees it and counts (see the retain
                    // above): one stopped may have finished meanwhile.
                    let current = checking.remove(&id).is_some_and(|key| {
                        let current = in_flight.get(&key).is_some_and(|c| c.handle.id() == id);
                        if current {
                            in_flight.remove(&key);
                        }
                        current
                    });
                    match done {
                        Ok(_) if !current => {}
                        Ok((_, (key, result))) => {
                            // A check of a target no longer checked (its service removed
                            // while it ran) would bring back the series forgotten above.
                            if let Ok(latency) = &result
                                && due.contains_key(&key)
                            {
                                shared.check_latency.observe(&key.service, *latency);
                            }
                            batch.push((key, result));
                        }
                        Err(e) if e.is_cancelled() => {}
                        Err(e) => warn!("health: a check ended abnormally: {e}"),
                    }
                };
                take(done);
                while let Some(done) = checks.try_join_next_with_id() {
                    take(done);
                }
                let s = shared.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || s.daemon().record_health(batch)).await {
                    warn!("health: recording results: {e}");
                }
            }
        }
    }
}

/// A check running for a target.
struct InFlight {
    handle: AbortHandle,
    probe: crate::source::file::Probe,
    timeout: Duration,
}

impl InFlight {
    fn of(target: &Target, handle: AbortHandle) -> Self {
        Self {
            handle,
            probe: target.probe.clone(),
            timeout: target.timeout,
        }
    }

    /// Whether it checks `target` as `target` says now.
    fn asks_as(&self, target: &Target) -> bool {
        self.probe == target.probe && self.timeout == target.timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_checks_spread_over_the_second_half_of_the_interval() {
        let interval = Duration::from_secs(2);
        let offsets: Vec<Duration> = (0..200u16)
            .map(|i| {
                let key = TargetKey {
                    service: "web".into(),
                    addr: std::net::SocketAddr::from(([198, 18, 2, (i % 250) as u8], 8080 + i)),
                };
                spread(&key, interval)
            })
            .collect();
        assert!(
            offsets.iter().all(|o| *o >= interval / 2 && *o < interval),
            "{offsets:?}"
        );
        // Spread, not bunched: targets fall into every tenth of that half.
        let tenths: HashSet<u128> = offsets
            .iter()
            .map(|o| (o.as_millis() - 1000) / 100)
            .collect();
        assert_eq!(tenths.len(), 10, "{offsets:?}");
    }
}
