//! Runs the health checks: each checked backend once per its service's interval, every check
//! on its own task with its timeout, so a slow or silent backend never holds up another
//! check, the API or a reload. Finished checks go to the daemon in batches
//! (`Daemon::record_health`), under its lock only as long as any change takes.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use tokio::{task::JoinSet, time::Instant};
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

async fn run(shared: Arc<Shared>) {
    let mut epoch = 0;
    let mut targets: Vec<Target> = Vec::new();
    let mut due: HashMap<TargetKey, Instant> = HashMap::new();
    let mut in_flight: HashSet<TargetKey> = HashSet::new();
    let mut checks: JoinSet<CheckResult> = JoinSet::new();
    // Which target each check is for, so that even a check that panicked frees its target.
    let mut checking: HashMap<tokio::task::Id, TargetKey> = HashMap::new();
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
                    let next = due.entry(target.key.clone()).or_insert(now);
                    if *next > now || in_flight.contains(&target.key) {
                        continue;
                    }
                    // On the interval's own beat (not the tick's), unless far behind.
                    *next = (*next + target.interval).max(now + target.interval / 2);
                    in_flight.insert(target.key.clone());
                    let target = target.clone();
                    let key = target.key.clone();
                    let handle = checks.spawn(async move {
                        let result = probe::check(target.key.addr, &target.probe, target.timeout).await;
                        (target.key, result)
                    });
                    checking.insert(handle.id(), key);
                }
            }
            Some(done) = checks.join_next_with_id(), if !checks.is_empty() => {
                let mut batch = Vec::new();
                let mut take = |done: Result<(tokio::task::Id, CheckResult), tokio::task::JoinError>| {
                    let id = match &done {
                        Ok((id, _)) => *id,
                        Err(e) => e.id(),
                    };
                    if let Some(key) = checking.remove(&id) {
                        in_flight.remove(&key);
                    }
                    match done {
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
