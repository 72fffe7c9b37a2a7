//! How long a node stays a tunnel peer after the Engine stops showing it.
//!
//! A node whose Engine restarts leaves the swarm's gossip at once and comes back seconds
//! later; the other nodes' Engines show it again only once its tasks are back, and not all at
//! the same moment. Had the other nodes dropped it as a peer at once, the flows it forwards to
//! their tasks (its lbd keeps forwarding while its Engine is away, and follows it as soon as
//! it is back) would be dropped as `drop_tunnel_not_peer` until each of them saw it again. So
//! a peer the Engine stops showing stays one for [`PEER_GRACE`]: the address was a swarm
//! node's moments ago, and the tunnel's guard is against hosts that never were.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use tracing::info;

use super::snapshot::Snapshot;

/// How long a node stays a peer after the Engine last showed it (a task on it, or its
/// endpoint on the ingress network).
pub const PEER_GRACE: Duration = Duration::from_secs(60);

/// When each node the Engine showed was last shown.
#[derive(Debug, Default)]
pub struct PeerMemory {
    last_shown: BTreeMap<IpAddr, Instant>,
}

impl PeerMemory {
    /// Notes every node `snapshot` shows (at `now`), then adds to its peers those shown within
    /// [`PEER_GRACE`] that it no longer shows; forgets (and says so) the others.
    pub fn keep_recent(&mut self, snapshot: &mut Snapshot, now: Instant) {
        let shown: BTreeSet<IpAddr> = snapshot.nodes_shown().collect();
        for node in &shown {
            self.last_shown.insert(*node, now);
        }
        self.last_shown.retain(|node, at| {
            let recent = now.saturating_duration_since(*at) < PEER_GRACE;
            if !recent {
                info!(
                    node = %node,
                    "swarm: the Engine has not shown this node for {}s; its tunnel packets are dropped from now on",
                    PEER_GRACE.as_secs()
                );
            }
            recent
        });
        // Only the nodes it no longer shows: a snapshot showing every node stays as read.
        snapshot
            .peers
            .extend(self.last_shown.keys().filter(|n| !shown.contains(n)));
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::source::swarm::snapshot::{SwarmService, Task};

    fn node(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(198, 18, 50, last))
    }

    fn with_task_on(addr: IpAddr) -> Snapshot {
        let mut service = SwarmService::default();
        service.tasks.insert(
            "t1".to_owned(),
            Task {
                node: Some(addr),
                ..Task::default()
            },
        );
        let mut snapshot = Snapshot::default();
        snapshot.services.insert("who".to_owned(), service);
        snapshot
    }

    #[test]
    fn a_node_no_longer_shown_stays_a_peer_for_the_grace_then_goes() {
        let mut memory = PeerMemory::default();
        let t0 = Instant::now();
        let mut first = Snapshot::default();
        first.peers.insert(node(2));
        memory.keep_recent(&mut first, t0);
        assert_eq!(first.peers, [node(2)].into());

        // Its Engine restarts: the others' Engines show it nowhere.
        let mut away = Snapshot::default();
        memory.keep_recent(&mut away, t0 + PEER_GRACE - Duration::from_millis(1));
        assert_eq!(away.peers, [node(2)].into(), "kept within the grace");

        let mut gone = Snapshot::default();
        memory.keep_recent(&mut gone, t0 + PEER_GRACE);
        assert!(gone.peers.is_empty(), "forgotten after the grace");
        let mut later = Snapshot::default();
        memory.keep_recent(&mut later, t0 + PEER_GRACE * 2);
        assert!(later.peers.is_empty(), "and not remembered again");
    }

    #[test]
    fn a_task_shows_its_node_and_showing_it_again_renews_the_grace() {
        let mut memory = PeerMemory::default();
        let t0 = Instant::now();
        memory.keep_recent(&mut with_task_on(node(3)), t0);
        let half = t0 + PEER_GRACE / 2;
        let mut again = Snapshot::default();
        again.peers.insert(node(3));
        memory.keep_recent(&mut again, half);
        let mut after_first_grace = Snapshot::default();
        memory.keep_recent(
            &mut after_first_grace,
            t0 + PEER_GRACE + Duration::from_secs(1),
        );
        assert_eq!(
            after_first_grace.peers,
            [node(3)].into(),
            "renewed at {half:?}"
        );
    }

    #[test]
    fn a_snapshot_showing_every_node_it_showed_before_is_left_as_read() {
        let mut memory = PeerMemory::default();
        let t0 = Instant::now();
        let mut snapshot = with_task_on(node(4));
        snapshot.peers.insert(node(5));
        let read = snapshot.clone();
        memory.keep_recent(&mut snapshot, t0);
        assert_eq!(snapshot, read);
        let mut again = read.clone();
        memory.keep_recent(&mut again, t0 + Duration::from_secs(1));
        assert_eq!(again, read);
    }
}
