//! Backend health as a source: which checked backends are up, with the hysteresis of each
//! service's `health:` section. The book is pure (results in, states and transitions out);
//! [`probe`] runs one check; `control::health_task` schedules them. What a down backend
//! means for the plan is [`HealthBook::serving`]: the services as the plan must see them.

pub mod probe;
#[cfg(test)]
mod tests;

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

use crate::source::file::{HealthSpec, Probe, ServiceFile, ServiceSpec, WhenAllDown};

/// One checked backend: its service and the address its check goes to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TargetKey {
    pub service: String,
    pub addr: SocketAddr,
}

/// A check to run, as the scheduler needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub key: TargetKey,
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
}

/// What the checks say about a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Not checked yet: served as up, so that starting or restarting lbd moves no flow; the
    /// first result decides either way.
    Unknown,
    Up,
    Down,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Up => "up",
            Self::Down => "down",
        }
    }
}

/// One target's state.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetState {
    pub health: Health,
    /// Since when `health` holds (for `Unknown`: since the target was first seen).
    pub since: SystemTime,
    /// The last failure's reason, kept after later successes.
    pub last_error: Option<String>,
    /// How long the last successful check took.
    pub last_latency: Option<Duration>,
    /// Times the state went up or down (not counting the first result).
    pub transitions: u64,
    /// Whether `health` is an earlier lbd's verdict no check of this one has confirmed yet
    /// (see `awaiting_first_verdict`).
    seeded: bool,
    /// Consecutive results against `health` (toward `rise` or `fall`).
    streak: u32,
    rise: u32,
    fall: u32,
}

/// A change of state, for the log and for replanning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub key: TargetKey,
    pub from: Health,
    pub to: Health,
    /// The failure that took it down, or the checks that brought it up.
    pub reason: String,
}

impl Transition {
    /// Whether the plan sees it: anything into or out of `Down` (unknown and up both serve).
    pub fn changes_serving(&self) -> bool {
        (self.from == Health::Down) != (self.to == Health::Down)
    }
}

/// Every checked backend's state, by target.
#[derive(Debug, Default)]
pub struct HealthBook {
    targets: BTreeMap<TargetKey, TargetState>,
    /// Verdicts of an earlier lbd ([`HealthBook::seed`]), taken by the next sync.
    seeds: BTreeMap<TargetKey, (Health, Option<SystemTime>)>,
}

/// The verdicts the checks had reached, saved so that a restarted lbd starts from them: a
/// backend found down stays out until `rise` checks pass (it is not served while its first
/// check waits), and one found up keeps its `fall` (one lost check does not take it down).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedHealth {
    pub targets: Vec<SavedTarget>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedTarget {
    pub service: String,
    pub addr: SocketAddr,
    pub health: Health,
    /// Since when `health` holds, in seconds since the Unix epoch: a restarted lbd says how
    /// long a backend has been down, not how long it has run. Absent in files of lbd
    /// versions that did not save it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_unix_s: Option<u64>,
}

impl HealthBook {
    /// The up and down verdicts, to save.
    pub fn saved(&self) -> SavedHealth {
        SavedHealth {
            targets: self
                .targets
                .iter()
                .filter(|(_, s)| s.health != Health::Unknown)
                .map(|(key, s)| SavedTarget {
                    service: key.service.clone(),
                    addr: key.addr,
                    health: s.health,
                    since_unix_s: s
                        .since
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .ok()
                        .map(|d| d.as_secs()),
                })
                .collect(),
        }
    }

    /// Starts the targets of the next sync that `saved` has a verdict for with that verdict
    /// rather than `Unknown`; the others, and later syncs, as usual.
    pub fn seed(&mut self, saved: SavedHealth) {
        self.seeds = saved
            .targets
            .into_iter()
            .filter(|t| t.health != Health::Unknown)
            .map(|t| {
                let key = TargetKey {
                    service: t.service,
                    addr: t.addr,
                };
                let since = t
                    .since_unix_s
                    .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s));
                (key, (t.health, since))
            })
            .collect();
    }

    /// Takes back the seeded "up" verdicts no check has confirmed: those backends are
    /// `Unknown` again (served, and the first result decides). For a start that found no
    /// dataplane to adopt (after a reboot): no flow is there to keep on them, and an "up"
    /// from before the reboot would keep a dead backend served for `fall` checks.
    pub fn forget_seeded_up(&mut self, now: SystemTime) {
        for state in self.targets.values_mut() {
            if state.seeded && state.health == Health::Up {
                state.health = Health::Unknown;
                state.since = now;
                state.seeded = false;
            }
        }
    }

    /// Follows the services' checks: a new target starts `Unknown` (or as seeded), a target
    /// no service checks any more is forgotten, a changed `rise`/`fall` applies from the next
    /// result. Returns every check to run.
    pub fn sync(&mut self, file: &ServiceFile, now: SystemTime) -> Vec<Target> {
        let mut targets: Vec<(Target, u32, u32)> = file
            .services
            .values()
            .flat_map(|spec| targets_of(spec).map(move |(_, t)| (t, spec)))
            .map(|(target, spec)| {
                let health = spec.health.as_ref().expect("targets_of: checked services");
                (target, health.rise, health.fall)
            })
            .collect();
        let mut kept = BTreeMap::new();
        // Backends checked at one address (two ports of a host with one `health.port`) share
        // one target: its state is taken once, and it is checked once.
        let mut seen = BTreeSet::new();
        targets.retain(|(target, _, _)| seen.insert(target.key.clone()));
        for (target, rise, fall) in &targets {
            let seeded = self.seeds.remove(&target.key);
            let state = self.targets.remove(&target.key).unwrap_or(TargetState {
                health: seeded.map_or(Health::Unknown, |(health, _)| health),
                // The saved time, unless a clock set back puts it ahead of now.
                since: seeded
                    .and_then(|(_, since)| since)
                    .filter(|since| *since <= now)
                    .unwrap_or(now),
                last_error: None,
                last_latency: None,
                transitions: 0,
                seeded: seeded.is_some(),
                streak: 0,
                rise: *rise,
                fall: *fall,
            });
            kept.insert(
                target.key.clone(),
                TargetState {
                    rise: *rise,
                    fall: *fall,
                    ..state
                },
            );
        }
        self.targets = kept;
        // Seeds are for the targets lbd starts with, not for one added later.
        self.seeds.clear();
        targets.into_iter().map(|(t, _, _)| t).collect()
    }

    /// Takes one check's result (`Ok`: how long it took; `Err`: why it failed). Results for
    /// targets no longer checked are ignored.
    pub fn record(
        &mut self,
        key: &TargetKey,
        result: Result<Duration, String>,
        now: SystemTime,
    ) -> Option<Transition> {
        let state = self.targets.get_mut(key)?;
        let ok = result.is_ok();
        // A check that agrees confirms an earlier lbd's verdict; a failing one does not
        // confirm its "up" (and a change of state below replaces it).
        if ok == (state.health == Health::Up) {
            state.seeded = false;
        }
        match result {
            Ok(latency) => state.last_latency = Some(latency),
            Err(error) => state.last_error = Some(error),
        }
        let to = match (state.health, ok) {
            // The first result decides: a backend found dead at start is not served for
            // `fall` intervals first.
            (Health::Unknown, true) => Health::Up,
            (Health::Unknown, false) => Health::Down,
            (Health::Up, true) | (Health::Down, false) => {
                state.streak = 0;
                return None;
            }
            (Health::Up, false) | (Health::Down, true) => {
                state.streak += 1;
                let needed = if ok { state.rise } else { state.fall };
                if state.streak < needed {
                    return None;
                }
                if ok { Health::Up } else { Health::Down }
            }
        };
        let from = state.health;
        if from != Health::Unknown {
            state.transitions += 1;
        }
        let reason = match to {
            Health::Down => state.last_error.clone().unwrap_or_default(),
            _ if from == Health::Unknown => "first check passed".to_owned(),
            _ => format!("{} checks in a row passed", state.streak),
        };
        state.health = to;
        state.since = now;
        state.streak = 0;
        state.seeded = false;
        Some(Transition {
            key: key.clone(),
            from,
            to,
            reason,
        })
    }

    pub fn state(&self, key: &TargetKey) -> Option<&TargetState> {
        self.targets.get(key)
    }

    pub fn states(&self) -> impl Iterator<Item = (&TargetKey, &TargetState)> {
        self.targets.iter()
    }

    /// The checked services of `file` none of whose backends that take flows is known up
    /// while some have had no verdict yet (just added, or lbd started without one): served
    /// meanwhile, as new backends are, but not yet worth announcing a VIP for (see
    /// `Daemon::vips_to_announce`). An earlier lbd's "up" no check has confirmed is no
    /// verdict here: it may be a reboot ago.
    pub fn awaiting_first_verdict(&self, file: &ServiceFile) -> BTreeSet<String> {
        file.services
            .values()
            .filter(|spec| spec.health.is_some())
            .filter(|spec| {
                let healths: Vec<Health> = targets_of(spec)
                    .filter(|(i, _)| spec.backends[*i].weight > 0)
                    .map(|(_, t)| match self.targets.get(&t.key) {
                        Some(s) if s.seeded && s.health == Health::Up => Health::Unknown,
                        Some(s) => s.health,
                        None => Health::Unknown,
                    })
                    .collect();
                !healths.contains(&Health::Up) && healths.contains(&Health::Unknown)
            })
            .map(|spec| spec.name.clone())
            .collect()
    }

    /// The services as the plan must see them: each checked service without its down
    /// backends, or with all of them when all that take flows (weight above 0) are down and
    /// it says `when_all_down: keep`.
    /// Borrowed when no backend is down.
    pub fn serving<'a>(&self, file: &'a ServiceFile) -> Cow<'a, ServiceFile> {
        let changed: Vec<(String, Vec<usize>)> = file
            .services
            .values()
            .map(|spec| (spec.name.clone(), self.left_out_of(spec)))
            .filter(|(_, left_out)| !left_out.is_empty())
            .collect();
        if changed.is_empty() {
            return Cow::Borrowed(file);
        }
        let mut serving = file.clone();
        for (name, left_out) in changed {
            let spec = serving
                .services
                .get_mut(&name)
                .expect("a service just read");
            let mut i = 0;
            spec.backends.retain(|_| {
                i += 1;
                !left_out.contains(&(i - 1))
            });
        }
        Cow::Owned(serving)
    }

    /// The checked backends of `file` that `serving` leaves out of the plan.
    pub fn left_out(&self, file: &ServiceFile) -> BTreeSet<TargetKey> {
        file.services
            .values()
            .flat_map(|spec| {
                let left_out = self.left_out_of(spec);
                targets_of(spec)
                    .filter(move |(i, _)| left_out.contains(i))
                    .map(|(_, t)| t.key)
            })
            .collect()
    }

    /// The backends of `spec` (indexes) the plan leaves out: its down ones, unless all that
    /// take flows are down and it keeps them (`when_all_down: keep`). None for a service
    /// without checks.
    pub(crate) fn left_out_of(&self, spec: &ServiceSpec) -> Vec<usize> {
        let down: Vec<usize> = targets_of(spec)
            .filter(|(_, t)| {
                self.targets
                    .get(&t.key)
                    .is_some_and(|s| s.health == Health::Down)
            })
            .map(|(i, _)| i)
            .collect();
        // All down counts the backends that take flows: a drained one (weight 0) that passes
        // its checks serves nothing new.
        let all_down = spec.backends.iter().any(|b| b.weight > 0)
            && spec
                .backends
                .iter()
                .enumerate()
                .all(|(i, b)| b.weight == 0 || down.contains(&i));
        let keep_all =
            all_down && spec.health.as_ref().map(|h| h.when_all_down) == Some(WhenAllDown::Keep);
        if keep_all { Vec::new() } else { down }
    }
}

/// A checked service's backends with their checks (index in `backends`, target); none for a
/// service without `health:` or without ports.
pub fn targets_of(spec: &ServiceSpec) -> impl Iterator<Item = (usize, Target)> + '_ {
    let health: Option<(&HealthSpec, _)> = spec.health.as_ref().zip(spec.ports.first());
    health.into_iter().flat_map(move |(health, first)| {
        spec.backends.iter().enumerate().map(move |(i, backend)| {
            (
                i,
                Target {
                    key: TargetKey {
                        service: spec.name.clone(),
                        addr: health.target(backend, first),
                    },
                    probe: health.probe.clone(),
                    interval: health.interval,
                    timeout: health.timeout,
                },
            )
        })
    })
}
