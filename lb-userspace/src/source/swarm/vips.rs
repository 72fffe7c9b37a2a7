//! Which VIP a service is served at on each network while the Engine lists two.
//!
//! The verbose network inspection groups a network's endpoints by service *name* and gives the
//! group the VIP of whichever endpoint it meets first, in no fixed order. A service removed
//! and created again with its name (a new VIP) is listed with the old service's tasks for
//! their stop grace period, and each read may give either VIP: served as read, the VIP would
//! come and go every read, and so would every connection to it. So, per service and network,
//! the VIP first listed after another one wins at once (it is the new service's: the old one
//! was listed before it) and stays while the old one is still listed; the old one comes back
//! only once the new one went unlisted for [`VIP_GRACE`] (a start amid the overlap may take
//! the old one for new: it then stays until the old tasks are gone and the new VIP wins).
//!
//! Docker's DNS answers either VIP for the name meanwhile; one VIP per network is what
//! meshlb's VIP services hold, so a container that resolved the old one waits for its name to
//! resolve again, as it would once the old service's tasks are gone.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use super::snapshot::Snapshot;

/// How long a VIP the Engine stopped listing for a service holds off another one.
pub const VIP_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Held {
    vip: IpAddr,
    listed_at: Instant,
    /// VIPs `vip` replaced, and when each was last listed (by the old service's tasks).
    replaced: BTreeMap<IpAddr, Instant>,
}

/// The VIP served for each (service, network).
#[derive(Debug, Default)]
pub struct VipMemory {
    held: BTreeMap<(String, String), Held>,
}

impl VipMemory {
    /// Takes `snapshot`'s VIPs (read at `now`) and makes each service's VIP on each network
    /// the one held for it (see the module's rules); forgets the VIPs of services and networks
    /// it no longer lists.
    pub fn keep_recent(&mut self, snapshot: &mut Snapshot, now: Instant) {
        self.held.retain(|(name, network), _| {
            snapshot
                .services
                .get(name)
                .is_some_and(|s| s.vips.contains_key(network))
        });
        let recent = |at: &Instant| now.saturating_duration_since(*at) < VIP_GRACE;
        for (name, service) in &mut snapshot.services {
            for (network, vip) in &mut service.vips {
                let key = (name.clone(), network.clone());
                let Some(held) = self.held.get_mut(&key) else {
                    let replaced = BTreeMap::new();
                    let listed_at = now;
                    self.held.insert(
                        key,
                        Held {
                            vip: *vip,
                            listed_at,
                            replaced,
                        },
                    );
                    continue;
                };
                held.replaced.retain(|_, at| recent(at));
                if *vip == held.vip {
                    held.listed_at = now;
                } else if held.replaced.contains_key(vip) && recent(&held.listed_at) {
                    // The old service's tasks listed first, while the new VIP is listed too.
                    held.replaced.insert(*vip, now);
                } else {
                    held.replaced.insert(held.vip, held.listed_at);
                    held.replaced.remove(vip);
                    held.vip = *vip;
                    held.listed_at = now;
                }
                *vip = held.vip;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::swarm::snapshot::SwarmService;

    fn listing(vip: &str) -> Snapshot {
        let mut snapshot = Snapshot::default();
        let service = SwarmService {
            vips: [("appnet".to_owned(), vip.parse().unwrap())].into(),
            ..SwarmService::default()
        };
        snapshot.services.insert("db".to_owned(), service);
        snapshot
    }

    fn vip(snapshot: &Snapshot) -> String {
        snapshot.services["db"].vips["appnet"].to_string()
    }

    /// `docker service rm db; docker service create --name db ...`: reads give the old VIP
    /// (A) or the new one (B) while the old tasks are listed; B is served from its first
    /// listing on, and A again only once B went unlisted for the grace.
    #[test]
    fn a_service_made_again_keeps_its_new_vip_while_reads_flip() {
        let (a, b) = ("198.19.10.2", "198.19.10.7");
        let mut memory = VipMemory::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        for (i, listed) in [a, b, a, b, a, a].into_iter().enumerate() {
            let mut read = listing(listed);
            memory.keep_recent(&mut read, at(500 * i as u64));
            let served = if i == 0 { a } else { b };
            assert_eq!(vip(&read), served, "read {i}: listed {listed}");
        }
        // B last listed at 1.5 s: A comes back once B went unlisted for the grace.
        let last_b = at(1500);
        let mut read = listing(a);
        memory.keep_recent(&mut read, last_b + VIP_GRACE - Duration::from_millis(1));
        assert_eq!(vip(&read), b);
        let mut read = listing(a);
        memory.keep_recent(&mut read, last_b + VIP_GRACE);
        assert_eq!(vip(&read), a);
        // The service gone: forgotten; back with another VIP, that one.
        memory.keep_recent(&mut Snapshot::default(), last_b + VIP_GRACE * 2);
        let mut read = listing(b);
        memory.keep_recent(&mut read, last_b + VIP_GRACE * 2);
        assert_eq!(vip(&read), b);
    }
}
