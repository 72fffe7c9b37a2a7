//! The daemon's side of the socket-level path: which network namespaces it serves (the
//! node's own and the swarm's containers'), and the connected sockets a change leaves on a
//! backend that is gone.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
};

use lb_common::maps::{Backend, EndpointKey};

use super::*;
use crate::{dataplane::SocketPeer, plan::Replan, source::file::RemovalPolicy};

impl Daemon {
    /// Lets the sockets of each local container on an overlay network reach the VIPs of its
    /// networks (and only those): its namespace's cookie with its scope mask.
    pub(super) fn sync_socket_namespaces(&mut self) {
        if self.dp.socket_attachment().is_none() {
            return;
        }
        let scopes = &self.swarm_services.container_scopes;
        self.netns_cookies
            .retain(|(id, pid), _| scopes.get(id).is_some_and(|(p, _)| p == pid));
        let mut wanted = BTreeMap::new();
        for (id, &(pid, mask)) in scopes {
            let key = (id.clone(), pid);
            let cookie = match self.netns_cookies.get(&key) {
                Some(&cookie) => cookie,
                // A pid from the saved state (a restart, a reboot) or read a moment ago may
                // since be another process's: its namespace must not get this container's
                // scopes.
                None if !swarm::engine::is_containers_process(pid, id) => {
                    warn!(container = %id, pid, "swarm: the process is not (or no longer) the container's; its VIPs wait for the Engine's next answer");
                    continue;
                }
                None => match dataplane::netns_cookie_of(pid) {
                    Ok(cookie) => {
                        self.netns_cookies.insert(key, cookie);
                        cookie
                    }
                    Err(e) => {
                        // Gone meanwhile: the next read of the Engine drops it.
                        warn!(container = %id, pid, "swarm: cannot read the container's network namespace ({e}); its VIPs wait for the next change");
                        continue;
                    }
                },
            };
            wanted.insert(cookie, mask);
        }
        if let Err(e) = self.dp.set_socket_namespaces(&wanted) {
            error!("swarm: writing the containers' socket scopes failed: {e}");
        }
    }

    /// The backend endpoints whose connected sockets `next` leaves behind, for
    /// [`Daemon::abort_sockets_to`] once the namespaces are synced: those it removes from
    /// every service (of a service whose `on_backend_removal` is not `keep`), by protocol.
    /// Such a socket chose its backend at `connect()` and would talk to it for as long as it
    /// lives (see `dataplane::abort_connected`); one connected to that address and port
    /// without meshlb is aborted too: what it talks to left the service. Read before the
    /// running plan and the merge it came from are replaced.
    pub(super) fn sockets_left_behind(&self, next: &Replan) -> Vec<SocketPeer> {
        if self.dp.socket_attachment().is_none() {
            return Vec::new();
        }
        self.endpoints_removed(next)
    }

    /// Aborts, in the background, the connected sockets of the namespaces this node's
    /// socket programs serve whose protocol and peer are one of `peers` (a port of 0: every
    /// port).
    pub(super) fn abort_sockets_to(&self, peers: Vec<SocketPeer>) {
        if peers.is_empty() || self.dp.socket_attachment().is_none() {
            return;
        }
        // The namespaces served now (synced): a container gone has no sockets left, and its
        // pid may name another process since.
        let mut namespaces: Vec<Option<(u32, u64)>> = vec![None];
        let mut seen = HashSet::new();
        for (&(_, pid), &cookie) in &self.netns_cookies {
            if seen.insert(cookie) {
                namespaces.push(Some((pid, cookie)));
            }
        }
        std::thread::spawn(move || {
            let mut aborted = 0;
            for ns in namespaces {
                match dataplane::abort_connected(ns, &peers) {
                    Ok(n) => aborted += n,
                    Err(e) => warn!(
                        pid = ?ns.map(|(pid, _)| pid),
                        "sockets: cannot abort the sockets connected to removed backends ({e})"
                    ),
                }
            }
            if aborted > 0 {
                info!(
                    aborted,
                    backends = ?peers,
                    "sockets: aborted connected sockets whose backend left its service; they connect again"
                );
            }
        });
    }

    /// The backend endpoints (a port of 0: every port) that `next` takes out of the plan
    /// altogether (no backend of any service left at that address, port and protocol), of
    /// services that do not keep flows on removed backends.
    fn endpoints_removed(&self, next: &Replan) -> Vec<SocketPeer> {
        let running = &self.running.backends;
        let removed: Vec<(u32, &Backend)> = match next {
            Replan::Delta(delta) => delta
                .backends
                .iter()
                .filter(|(_, after)| after.is_none())
                .filter_map(|(id, _)| running.get(id).map(|b| (*id, b)))
                .collect(),
            Replan::Full(plan) => running
                .iter()
                .filter(|(id, _)| !plan.backends.contains_key(id))
                .map(|(id, b)| (*id, b))
                .collect(),
        };
        if removed.is_empty() {
            return Vec::new();
        }
        let aborting: HashMap<u32, u8> = self
            .running
            .services
            .iter()
            .filter(|s| {
                self.merged
                    .file
                    .services
                    .get(&s.name)
                    .is_some_and(|spec| spec.on_backend_removal != RemovalPolicy::Keep)
            })
            .map(|s| (s.id, s.mapping.protocol.number()))
            .collect();
        let candidates: Vec<(&Backend, u8)> = removed
            .iter()
            .filter_map(|(_, b)| aborting.get(&b.service_id).map(|p| (*b, *p)))
            .collect();
        if candidates.is_empty() {
            return Vec::new();
        }
        // Whether each candidate's endpoint still has a backend of its protocol after
        // `next`, from the plans' endpoint counts (an endpoint kept only for replies counts
        // 0), for the candidates only, not by walking every backend (this runs at every
        // removal).
        let key = |&(b, proto): &(&Backend, u8)| EndpointKey {
            addr: b.addr,
            port_be: b.port_be,
            proto,
            _pad: 0,
        };
        let still: HashSet<EndpointKey> = match next {
            Replan::Full(plan) => candidates
                .iter()
                .map(key)
                .filter(|k| plan.endpoints.get(k).is_some_and(|n| *n > 0))
                .collect(),
            // The delta recounts every endpoint its services' backends use, before and
            // after: its count if it lists the endpoint, else the running plan's.
            Replan::Delta(delta) => candidates
                .iter()
                .map(key)
                .filter(|k| {
                    let after = match delta.endpoints.iter().find(|(e, _)| e == k) {
                        Some((_, n)) => n.unwrap_or(0),
                        None => self.running.endpoints.get(k).copied().unwrap_or(0),
                    };
                    after > 0
                })
                .collect(),
        };
        let mut peers: Vec<SocketPeer> = candidates
            .iter()
            .filter(|c| !still.contains(&key(c)))
            .map(|(b, proto)| {
                (
                    *proto,
                    SocketAddr::new(b.addr.into(), u16::from_be(b.port_be)),
                )
            })
            .collect();
        peers.sort();
        peers.dedup();
        peers
    }
}
