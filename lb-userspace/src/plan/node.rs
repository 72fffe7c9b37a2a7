//! What a plan knows of the node it is for, read from the kernel by the caller
//! (`dataplane::node_facts`) so planning stays pure.

use std::net::IpAddr;

use lb_common::{Addr, maps::backend_flags};

/// The node's side of a plan: its addresses and the subnets it is directly connected to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// Every usable unicast address: VIP-less services publish their ports on them.
    pub addresses: Vec<IpAddr>,
    /// The routes of its main IPv4 and IPv6 tables without a gateway, sorted: a backend
    /// inside one is answered through the node by the clients it shares the subnet with
    /// (hairpin).
    pub connected: Vec<ConnectedSubnet>,
}

/// A subnet the node reaches directly (a link route: no gateway), as `network/prefix`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConnectedSubnet {
    pub network: IpAddr,
    /// 0-32 (IPv4), 0-128 (IPv6).
    pub prefix: u8,
}

impl ConnectedSubnet {
    /// Whether `addr` (of either family) is inside: the kernel's rule (`Addr::same_subnet`),
    /// so the plan and the program never disagree.
    pub fn contains(&self, addr: IpAddr) -> bool {
        Addr::from(addr).same_subnet(&Addr::from(self.network), self.prefix)
    }
}

impl NodeFacts {
    /// A node known only by its addresses (no connected subnets: no file backend is treated
    /// as a hairpin).
    pub fn with_addresses(addresses: &[IpAddr]) -> NodeFacts {
        NodeFacts {
            addresses: addresses.to_vec(),
            connected: Vec::new(),
        }
    }

    /// The prefix length of the subnet the node reaches `backend` on directly: the most
    /// specific connected subnet holding it, as the kernel's route lookup picks. `None` for
    /// one of the node's own addresses (reached locally, not over the link), for a default
    /// route's "subnet" (/0: everyone), for an address no connected subnet holds, and where
    /// that subnet is an IPv6 host route (/128: longer than the backend's flags hold; its
    /// one address is the backend's own).
    pub fn on_link_prefix(&self, backend: IpAddr) -> Option<u8> {
        if self.addresses.contains(&backend) {
            return None;
        }
        self.connected
            .iter()
            .filter(|s| s.prefix >= 1 && s.contains(backend))
            .map(|s| s.prefix)
            .max()
            .filter(|&p| p <= backend_flags::ON_LINK_MAX_PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(text: &str) -> ConnectedSubnet {
        let (network, prefix) = text.split_once('/').unwrap();
        ConnectedSubnet {
            network: network.parse().unwrap(),
            prefix: prefix.parse().unwrap(),
        }
    }

    fn node(connected: &[&str]) -> NodeFacts {
        NodeFacts {
            addresses: vec!["198.18.2.1".parse().unwrap(), "fd00:2::1".parse().unwrap()],
            connected: connected.iter().map(|s| subnet(s)).collect(),
        }
    }

    fn prefix(node: &NodeFacts, backend: &str) -> Option<u8> {
        node.on_link_prefix(backend.parse().unwrap())
    }

    #[test]
    fn a_backend_gets_the_prefix_of_the_most_specific_connected_subnet_holding_it() {
        let node = node(&[
            "198.18.2.0/24",
            "198.18.0.0/16",
            "198.18.4.8/30",
            "198.18.9.9/32",
        ]);
        assert_eq!(prefix(&node, "198.18.2.10"), Some(24));
        assert_eq!(
            prefix(&node, "198.18.3.10"),
            Some(16),
            "only the /16 holds it"
        );
        assert_eq!(prefix(&node, "198.18.4.10"), Some(30));
        assert_eq!(prefix(&node, "198.18.4.12"), Some(16), "past the /30");
        assert_eq!(
            prefix(&node, "198.18.9.9"),
            Some(32),
            "a host route's one address"
        );
        assert_eq!(
            prefix(&node, "198.19.2.10"),
            None,
            "reached through no link"
        );
    }

    #[test]
    fn an_ipv6_backend_gets_the_prefix_of_its_connected_subnet() {
        let facts = node(&["fd00:2::/64", "fd00::/16", "fd00:2::8/125", "198.18.2.0/24"]);
        assert_eq!(prefix(&facts, "fd00:2::a"), Some(125));
        assert_eq!(prefix(&facts, "fd00:2::10"), Some(64), "past the /125");
        assert_eq!(
            prefix(&facts, "fd00:3::a"),
            Some(16),
            "only the /16 holds it"
        );
        assert_eq!(prefix(&facts, "fd01::a"), None, "reached through no link");
        assert_eq!(prefix(&facts, "fd00:2::1"), None, "the node's own address");
        // A host route is the one address: longer than the flags hold, and no hairpin for
        // anyone but the backend itself.
        let host = node(&["fd00:2::/64", "fd00:2::a/128"]);
        assert_eq!(prefix(&host, "fd00:2::a"), None);
        assert_eq!(prefix(&host, "fd00:2::b"), Some(64));
        // A /127 is the longest the flags hold.
        assert_eq!(prefix(&node(&["fd00:2::a/127"]), "fd00:2::b"), Some(127));
    }

    #[test]
    fn own_addresses_the_other_family_and_a_link_default_route_give_none() {
        let node = node(&["198.18.2.0/24", "0.0.0.0/0", "::/0"]);
        assert_eq!(prefix(&node, "198.18.2.1"), None, "the node's own address");
        assert_eq!(
            prefix(&node, "fd00:2::a"),
            None,
            "no IPv6 subnet but the default"
        );
        assert_eq!(
            prefix(&node, "198.19.200.7"),
            None,
            "a default route is no subnet"
        );
        assert_eq!(prefix(&NodeFacts::default(), "198.18.2.10"), None);
    }
}
