//! The daemon's side of health checks: which checks to run, and what their results change.
//! A result that takes a backend down or brings it back is applied like any other change
//! (`Trigger::Health`): the plan leaves down backends out, only the difference is written.

use std::time::{Duration, Instant, SystemTime};

use super::*;
use crate::{
    api::BackendHealth,
    source::{
        file::{BackendSpec, ServiceSpec},
        health::{Health, SavedHealth, Target, TargetKey, Transition},
    },
};

/// One finished check: its target and its result (`Ok`: how long it took).
pub type CheckResult = (TargetKey, Result<Duration, String>);

/// When a refused change of health is tried again: a second after the refusal, then twice
/// as long after each refusal up to half a minute, so a refusal that lasts costs a replan now
/// and then, not one per check.
#[derive(Clone, Copy, Debug)]
pub(super) struct Retry {
    pub at: Instant,
    pub wait: Duration,
}

impl Retry {
    const FIRST: Duration = Duration::from_secs(1);
    const MOST: Duration = Duration::from_secs(30);

    /// The retry after a refusal, `earlier` the one before it (if any).
    pub(super) fn after(earlier: Option<Retry>) -> Retry {
        let wait = earlier.map_or(Self::FIRST, |r| (r.wait * 2).min(Self::MOST));
        Retry {
            at: Instant::now() + wait,
            wait,
        }
    }
}

impl Daemon {
    /// The checks to run, when the services changed since `seen` (an epoch this returned
    /// before; 0 for none): `(epoch, targets)`.
    pub fn health_targets(&mut self, seen: u64) -> Option<(u64, Vec<Target>)> {
        if seen == self.merged_epoch {
            return None;
        }
        let targets = self.health.sync(&self.merged.file, SystemTime::now());
        Some((self.merged_epoch, targets))
    }

    /// Takes finished checks; a backend that went down or came back up replans (logged with
    /// the reason), and so does a batch when a change of health the kernel refused is due to
    /// be tried again. Returns the transitions.
    pub fn record_health(&mut self, results: Vec<CheckResult>) -> Vec<Transition> {
        let now = SystemTime::now();
        let transitions: Vec<Transition> = results
            .into_iter()
            .filter_map(|(key, result)| self.health.record(&key, result, now))
            .collect();
        for t in &transitions {
            let (service, backend) = (&t.key.service, t.key.addr);
            match t.to {
                Health::Down => {
                    warn!(%service, %backend, from = t.from.as_str(), "health: backend down: {}", t.reason)
                }
                _ => {
                    info!(%service, %backend, from = t.from.as_str(), "health: backend up: {}", t.reason)
                }
            }
        }
        if !transitions.is_empty() {
            self.save_health();
        }
        let retry_due = self
            .health_unapplied
            .is_some_and(|retry| Instant::now() >= retry.at);
        if transitions.iter().any(Transition::changes_serving) || retry_due {
            let api = self.api.clone();
            let earlier = self.health_unapplied;
            match self.commit(Trigger::Health, None, api) {
                // `take_plan` cleared `health_unapplied`.
                Ok(_) if earlier.is_some() => {
                    info!("health: the change of backends refused before is applied now");
                }
                Ok(_) => {}
                Err(e) => {
                    let retry = Retry::after(earlier);
                    // Said once, not at every retry.
                    if earlier.is_none() {
                        error!(
                            "health: the change of backends was not applied, the running configuration stays (retried in {:?}, then less and less often, until it is): {e:#}",
                            retry.wait
                        );
                    } else {
                        tracing::debug!(wait = ?retry.wait, "health: the change of backends is still not applied: {e:#}");
                    }
                    self.health_unapplied = Some(retry);
                }
            }
        }
        transitions
    }

    /// Saves the verdicts for the next start; a failure is logged (the checks go on).
    fn save_health(&self) {
        let path = self.state_dir.join(HEALTH_STATE_FILE);
        let instead = "a restart would start from unknown";
        saved::write(&path, &self.health.saved(), "health verdicts", instead);
    }

    /// A backend's health for `lbctl list`; `None` when its service has no checks.
    pub fn backend_health(
        &self,
        spec: &ServiceSpec,
        backend: &BackendSpec,
    ) -> Option<BackendHealth> {
        let health = spec.health.as_ref()?;
        let key = TargetKey {
            service: spec.name.clone(),
            addr: health.target(backend, spec.ports.first()?),
        };
        let check = format!("{} {}", health.probe, key.addr);
        let now = SystemTime::now();
        Some(match self.health.state(&key) {
            // Not synced yet (the checks start within a tick of a change).
            None => BackendHealth {
                state: Health::Unknown,
                check,
                since_s: 0,
                last_error: None,
                last_check_ms: None,
                transitions: 0,
            },
            Some(state) => BackendHealth {
                state: state.health,
                check,
                since_s: now
                    .duration_since(state.since)
                    .unwrap_or_default()
                    .as_secs(),
                last_error: state.last_error.clone(),
                last_check_ms: state.last_latency.map(|d| d.as_secs_f64() * 1e3),
                transitions: state.transitions,
            },
        })
    }

    /// Every checked backend, for metrics.
    pub fn health_states(&self) -> Vec<crate::metrics::CheckedBackend> {
        crate::metrics::checked_backends(&self.health, &self.merged.file)
    }
}

/// The verdicts saved in `state_dir`, or none (a broken file is said in the log).
pub(super) fn load_saved(state_dir: &Path) -> SavedHealth {
    let path = state_dir.join(HEALTH_STATE_FILE);
    let instead = "every checked backend starts unknown";
    saved::read(&path, "health verdicts", instead).unwrap_or_default()
}
