//! How long a published port stays after the Engine stops listing it, and which target it has
//! while an update changes it.
//!
//! The ingress network lists a service's published ports as one of its tasks has them
//! (libnetwork takes the first endpoint it meets, in no fixed order). While an update that
//! adds, removes or changes a published port rolls out, old and new tasks coexist, and each
//! read may list either set: served as read, the port would come and go (or change target)
//! every read, and every flip would reset its connections. So, per service and published port:
//! - a port the Engine stops listing for a service it still lists stays for [`PORT_GRACE`];
//!   a port it lists is served at once;
//! - a port listed twice (TCP and UDP to one target) stays twice for the grace after it was
//!   last listed twice: reads of the tasks without the UDP half do not take it away;
//! - a new target wins at once and stays while the port's old target is still listed by old
//!   tasks: the update's new tasks listen on it. The old one comes back only once the new one
//!   went unlisted for the grace (an update rolled back).
//!
//! It also records how each service's reads list each port (`PortListing`), for the service
//! rules to give a port two services list (one moving to the other) to one of them.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use super::snapshot::{PortListing, PublishedPort, Snapshot};

/// How long a published port (or its second listing) stays after the Engine last listed it
/// for its service.
pub const PORT_GRACE: Duration = Duration::from_secs(10);

/// What is served for one published port of one service.
#[derive(Debug)]
struct Held {
    /// The read that first listed the port for this service (kept through target changes).
    first_read: u64,
    /// The last read of the service that left the port out (0: none).
    missed_read: u64,
    target: u16,
    /// When `target` was last listed.
    listed_at: Instant,
    /// How many times the port is served (2: TCP and UDP), and when a read last listed it
    /// that many times.
    times: usize,
    times_at: Instant,
    /// Targets `target` replaced, and when each was last listed (by an update's old tasks).
    replaced: BTreeMap<u16, Instant>,
}

impl Held {
    fn new(target: u16, times: usize, now: Instant, read: u64) -> Self {
        Self {
            first_read: read,
            missed_read: 0,
            target,
            listed_at: now,
            times,
            times_at: now,
            replaced: BTreeMap::new(),
        }
    }

    /// Takes a read that lists the port `times` times with `target`.
    fn listed(&mut self, target: u16, times: usize, now: Instant) {
        let current_recent = now.saturating_duration_since(self.listed_at) < PORT_GRACE;
        if target != self.target {
            if self.replaced.contains_key(&target) && current_recent {
                // An old task's listing while the new target is still listed.
                self.replaced.insert(target, now);
                return;
            }
            self.replaced.insert(self.target, self.listed_at);
            self.replaced.remove(&target);
            *self = Self {
                replaced: std::mem::take(&mut self.replaced),
                first_read: self.first_read,
                missed_read: self.missed_read,
                ..Self::new(target, times, now, 0)
            };
            return;
        }
        self.listed_at = now;
        if times >= self.times || now.saturating_duration_since(self.times_at) >= PORT_GRACE {
            self.times = times;
            self.times_at = now;
        }
    }

    /// Whether the port is still served at `now`: its target or an old one listed lately.
    fn recent(&self, now: Instant) -> bool {
        std::iter::once(&self.listed_at)
            .chain(self.replaced.values())
            .any(|at| now.saturating_duration_since(*at) < PORT_GRACE)
    }
}

/// What each service's published ports are served as, by (service, published port).
#[derive(Debug, Default)]
pub struct PortMemory {
    held: BTreeMap<(String, u16), Held>,
    /// Reads taken so far.
    reads: u64,
}

impl PortMemory {
    /// Takes `snapshot`'s listing (at `now`) and makes each service it lists publish what is
    /// held for it (see the module's rules); forgets what lapsed and every port of a service
    /// it no longer lists. A port listed with two different targets in one read is left as
    /// listed (not served: the protocols are unknown).
    pub fn keep_recent(&mut self, snapshot: &mut Snapshot, now: Instant) {
        self.reads += 1;
        let read = self.reads;
        self.held
            .retain(|(name, _), _| snapshot.services.contains_key(name));
        for (name, service) in &mut snapshot.services {
            let mut listed: BTreeMap<u16, Vec<u16>> = BTreeMap::new();
            for port in &service.published {
                listed.entry(port.publish).or_default().push(port.target);
            }
            for (publish, targets) in &listed {
                let key = (name.clone(), *publish);
                if targets.iter().any(|t| *t != targets[0]) {
                    self.held.remove(&key);
                    continue;
                }
                match self.held.get_mut(&key) {
                    Some(held) => held.listed(targets[0], targets.len(), now),
                    None => {
                        self.held
                            .insert(key, Held::new(targets[0], targets.len(), now, read));
                    }
                }
            }
            let mut published = Vec::new();
            for (publish, targets) in &listed {
                if !self.held.contains_key(&(name.clone(), *publish)) {
                    published.extend(targets.iter().map(|&target| PublishedPort {
                        publish: *publish,
                        target,
                    }));
                }
            }
            let mut lapsed = Vec::new();
            for ((_, publish), held) in self
                .held
                .range_mut((name.clone(), 0)..=(name.clone(), u16::MAX))
            {
                held.replaced
                    .retain(|_, at| now.saturating_duration_since(*at) < PORT_GRACE);
                if !held.recent(now) {
                    lapsed.push(*publish);
                    continue;
                }
                if !listed.contains_key(publish) {
                    held.missed_read = read;
                }
                let port = PublishedPort {
                    publish: *publish,
                    target: held.target,
                };
                published.extend(std::iter::repeat_n(port, held.times));
            }
            for publish in lapsed {
                self.held.remove(&(name.clone(), publish));
            }
            published.sort_unstable();
            service.published = published;
        }
        self.record_listings(snapshot);
    }

    /// Writes each held port's `PortListing` into its service: a service yields a port
    /// another one lists if a read left it out since the other first listed it.
    fn record_listings(&self, snapshot: &mut Snapshot) {
        let mut firsts: BTreeMap<u16, Vec<(&str, u64)>> = BTreeMap::new();
        for ((name, publish), held) in &self.held {
            firsts
                .entry(*publish)
                .or_default()
                .push((name, held.first_read));
        }
        for ((name, publish), held) in &self.held {
            let yields = held.missed_read > 0
                && firsts[publish]
                    .iter()
                    .any(|(other, first)| other != name && *first <= held.missed_read);
            if let Some(service) = snapshot.services.get_mut(name) {
                let listing = PortListing {
                    first: held.first_read,
                    yields,
                };
                service.port_listings.insert(*publish, listing);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::swarm::snapshot::SwarmService;

    fn listing(ports: &[u16]) -> Snapshot {
        listing_targets(&ports.iter().map(|p| (*p, 8080)).collect::<Vec<_>>())
    }

    /// A read listing `web`'s ports as (publish, target) pairs.
    fn listing_targets(ports: &[(u16, u16)]) -> Snapshot {
        let mut snapshot = Snapshot::default();
        snapshot.services.insert(
            "web".to_owned(),
            SwarmService {
                published: ports
                    .iter()
                    .map(|&(publish, target)| PublishedPort { publish, target })
                    .collect(),
                ..SwarmService::default()
            },
        );
        snapshot
    }

    fn pairs(snapshot: &Snapshot) -> Vec<(u16, u16)> {
        snapshot.services["web"]
            .published
            .iter()
            .map(|p| (p.publish, p.target))
            .collect()
    }

    fn published(snapshot: &Snapshot) -> Vec<u16> {
        snapshot.services["web"]
            .published
            .iter()
            .map(|p| p.publish)
            .collect()
    }

    #[test]
    fn ports_that_come_and_go_during_an_update_stay_served_then_go_after_the_grace() {
        let mut memory = PortMemory::default();
        let t0 = Instant::now();
        let mut read = listing(&[80]);
        memory.keep_recent(&mut read, t0);
        assert_eq!(published(&read), [80]);
        // --publish-add 81 rolls out: reads list the old tasks' ports or the new ones'.
        for (i, ports) in [&[80, 81][..], &[80], &[80, 81], &[80]]
            .into_iter()
            .enumerate()
        {
            let mut read = listing(ports);
            memory.keep_recent(&mut read, t0 + Duration::from_millis(500 * (i as u64 + 1)));
            assert_eq!(published(&read), [80, 81], "read {i}: {ports:?}");
        }
        // --publish-rm 80 after it: listed no more, served for the grace, then not.
        let last_80 = t0 + Duration::from_secs(2);
        let mut read = listing(&[81]);
        memory.keep_recent(&mut read, last_80 + PORT_GRACE - Duration::from_millis(1));
        assert_eq!(published(&read), [80, 81]);
        let mut read = listing(&[81]);
        memory.keep_recent(&mut read, last_80 + PORT_GRACE);
        assert_eq!(published(&read), [81]);
        let mut read = listing(&[81]);
        memory.keep_recent(&mut read, last_80 + PORT_GRACE * 2);
        assert_eq!(published(&read), [81], "and not remembered again");
    }

    #[test]
    fn a_removed_service_keeps_no_port() {
        let mut memory = PortMemory::default();
        let t0 = Instant::now();
        memory.keep_recent(&mut listing(&[80]), t0);
        let mut gone = Snapshot::default();
        memory.keep_recent(&mut gone, t0 + Duration::from_millis(500));
        assert!(gone.services.is_empty());
        // Back within the grace, with another port: only what it lists now.
        let mut back = listing(&[90]);
        memory.keep_recent(&mut back, t0 + Duration::from_secs(1));
        assert_eq!(published(&back), [90]);
    }

    /// `--publish-rm 80 --publish-add 80:9090`: old and new tasks list either target while
    /// the update rolls out; the new one is served from its first listing on, and the port
    /// is never refused for having two.
    #[test]
    fn a_changed_target_wins_at_once_and_stays_while_old_tasks_list_the_old_one() {
        let mut memory = PortMemory::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut read = listing_targets(&[(80, 8080)]);
        memory.keep_recent(&mut read, t0);
        assert_eq!(pairs(&read), [(80, 8080)]);
        for (i, target) in [9090, 8080, 9090, 8080, 8080, 9090].into_iter().enumerate() {
            let mut read = listing_targets(&[(80, target)]);
            memory.keep_recent(&mut read, at(500 * (i as u64 + 1)));
            assert_eq!(pairs(&read), [(80, 9090)], "read {i}: listed {target}");
        }
        // Rolled back: the old target comes back once the new one went unlisted for the grace.
        let last_9090 = at(3000);
        let mut read = listing_targets(&[(80, 8080)]);
        memory.keep_recent(&mut read, last_9090 + PORT_GRACE - Duration::from_millis(1));
        assert_eq!(pairs(&read), [(80, 9090)]);
        let mut read = listing_targets(&[(80, 8080)]);
        memory.keep_recent(&mut read, last_9090 + PORT_GRACE);
        assert_eq!(pairs(&read), [(80, 8080)]);
    }

    /// `--publish-add 53:53/udp` beside 53/tcp, then its removal: old tasks list the port once,
    /// new ones twice; the UDP half stays from the first listing twice until the grace after
    /// the last.
    #[test]
    fn a_udp_half_added_or_removed_does_not_come_and_go() {
        let mut memory = PortMemory::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut read = listing_targets(&[(53, 53)]);
        memory.keep_recent(&mut read, t0);
        assert_eq!(pairs(&read), [(53, 53)]);
        for (i, times) in [2, 1, 2, 1, 1].into_iter().enumerate() {
            let mut read = listing_targets(&vec![(53, 53); times]);
            memory.keep_recent(&mut read, at(500 * (i as u64 + 1)));
            assert_eq!(
                pairs(&read),
                [(53, 53), (53, 53)],
                "read {i}: listed {times}"
            );
        }
        let last_twice = at(1500);
        let mut read = listing_targets(&[(53, 53)]);
        memory.keep_recent(&mut read, last_twice + PORT_GRACE);
        assert_eq!(pairs(&read), [(53, 53)]);
    }

    /// Two targets in one read are two ports whose protocols the Engine does not say: left as
    /// listed, for the service's rules to refuse, and nothing of them held.
    #[test]
    fn two_targets_in_one_read_are_left_as_listed() {
        let mut memory = PortMemory::default();
        let t0 = Instant::now();
        let mut read = listing_targets(&[(53, 53), (53, 5353)]);
        memory.keep_recent(&mut read, t0);
        assert_eq!(pairs(&read), [(53, 53), (53, 5353)]);
        let mut read = listing_targets(&[(80, 8080)]);
        memory.keep_recent(&mut read, t0 + Duration::from_millis(500));
        assert_eq!(pairs(&read), [(80, 8080)]);
    }

    /// Each held port's listing: the read that first listed it (through a target change) and
    /// whether its service left it out since another service first listed it.
    #[test]
    fn listings_say_who_listed_a_port_first_and_who_lets_it_go() {
        let mut memory = PortMemory::default();
        let t0 = Instant::now();
        let read = |a: &[(u16, u16)], b: &[(u16, u16)]| {
            let mut snapshot = Snapshot::default();
            for (name, ports) in [("a", a), ("b", b)] {
                let published = ports
                    .iter()
                    .map(|&(publish, target)| PublishedPort { publish, target })
                    .collect();
                snapshot.services.insert(
                    name.to_owned(),
                    SwarmService {
                        published,
                        ..SwarmService::default()
                    },
                );
            }
            snapshot
        };
        let listing = |snapshot: &Snapshot, name: &str, port: u16| {
            let l = snapshot.services[name].port_listings[&port];
            (l.first, l.yields)
        };
        // `a` left 80 out before `b` listed it: not yielding to `b` (nobody else had it).
        type Listing<'a> = &'a [(u16, u16)];
        let reads: [(Listing, Listing); 4] = [
            (&[(80, 8080)], &[]),
            (&[], &[]),
            (&[(80, 9090)], &[(80, 8080)]),
            (&[(80, 9090)], &[(80, 8080)]),
        ];
        let mut last = Snapshot::default();
        for (i, (a, b)) in reads.into_iter().enumerate() {
            last = read(a, b);
            memory.keep_recent(&mut last, t0 + Duration::from_millis(500 * i as u64));
        }
        assert_eq!(listing(&last, "a", 80), (1, false), "target changed, kept");
        assert_eq!(listing(&last, "b", 80), (3, false));
        // Now `a` leaves it out: it yields from then on, listed again or not.
        for (i, a) in [&[][..], &[(80, 9090)]].into_iter().enumerate() {
            let mut next = read(a, &[(80, 8080)]);
            memory.keep_recent(&mut next, t0 + Duration::from_millis(2000 + 500 * i as u64));
            assert_eq!(listing(&next, "a", 80), (1, true), "read {i}");
            assert_eq!(listing(&next, "b", 80), (3, false), "read {i}");
        }
    }
}
