//! How long a published port stays after the Engine stops listing it.
//!
//! The ingress network lists a service's published ports as one of its tasks has them
//! (libnetwork takes the first endpoint it meets, in no fixed order). While an update that
//! adds or removes a published port rolls out, old and new tasks coexist, and each read may
//! list either set: served as read, the port would come and go every read, and every flip
//! would reset its connections. So a port the Engine stops listing for a service it still
//! lists stays for [`PORT_GRACE`]; a port it lists is served at once.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use super::snapshot::{PublishedPort, Snapshot};

/// How long a published port stays after the Engine last listed it for its service.
pub const PORT_GRACE: Duration = Duration::from_secs(10);

/// When each (service, published port) the Engine listed was last listed.
#[derive(Debug, Default)]
pub struct PortMemory {
    last_listed: BTreeMap<(String, PublishedPort), Instant>,
}

impl PortMemory {
    /// Notes every port `snapshot` lists (at `now`), then adds back to each service it still
    /// lists the ports listed within [`PORT_GRACE`] that it no longer does; forgets the others
    /// and every port of a service it no longer lists.
    pub fn keep_recent(&mut self, snapshot: &mut Snapshot, now: Instant) {
        for (name, service) in &snapshot.services {
            for port in &service.published {
                self.last_listed.insert((name.clone(), *port), now);
            }
        }
        self.last_listed.retain(|(name, _), at| {
            snapshot.services.contains_key(name) && now.saturating_duration_since(*at) < PORT_GRACE
        });
        for (name, port) in self.last_listed.keys() {
            let Some(service) = snapshot.services.get_mut(name) else {
                continue;
            };
            if !service.published.contains(port) {
                service.published.push(*port);
                service.published.sort_unstable();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::swarm::snapshot::SwarmService;

    fn port(publish: u16) -> PublishedPort {
        PublishedPort {
            publish,
            target: 8080,
        }
    }

    fn listing(ports: &[u16]) -> Snapshot {
        let mut snapshot = Snapshot::default();
        snapshot.services.insert(
            "web".to_owned(),
            SwarmService {
                published: ports.iter().map(|p| port(*p)).collect(),
                ..SwarmService::default()
            },
        );
        snapshot
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
}
