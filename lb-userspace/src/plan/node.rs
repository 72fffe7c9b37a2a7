//! What a plan knows of the node it is for, read from the kernel by the caller
//! (`dataplane::node_facts`) so planning stays pure.

use std::net::{IpAddr, Ipv4Addr};

/// The node's side of a plan: its addresses and the IPv4 subnets it is directly connected to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// Every usable unicast address: VIP-less services publish their ports on them.
    pub addresses: Vec<IpAddr>,
    /// The routes of its main IPv4 table without a gateway, sorted: a backend inside one is
    /// answered through the node by the clients it shares the subnet with (hairpin).
    pub connected: Vec<ConnectedSubnet>,
}

/// An IPv4 subnet the node reaches directly (a link route: no gateway), as `network/prefix`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConnectedSubnet {
    pub network: Ipv4Addr,
    /// 0-32.
    pub prefix: u8,
}

impl ConnectedSubnet {
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix.min(32)))
            .unwrap_or(0);
        u32::from(addr) & mask == u32::from(self.network) & mask
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
    /// IPv6 (the kernel's hairpin is IPv4 only), for one of the node's own addresses (reached
    /// locally, not over the link), for a default route's "subnet" (/0: everyone) and for an
    /// address no connected subnet holds.
    pub fn on_link_prefix(&self, backend: IpAddr) -> Option<u8> {
        let IpAddr::V4(addr) = backend else {
            return None;
        };
        if self.addresses.contains(&backend) {
            return None;
        }
        self.connected
            .iter()
            .filter(|s| (1..=32).contains(&s.prefix) && s.contains(addr))
            .map(|s| s.prefix)
            .max()
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
    fn own_addresses_ipv6_and_a_link_default_route_give_none() {
        let node = node(&["198.18.2.0/24", "0.0.0.0/0"]);
        assert_eq!(prefix(&node, "198.18.2.1"), None, "the node's own address");
        assert_eq!(prefix(&node, "fd00:2::a"), None, "IPv6");
        assert_eq!(
            prefix(&node, "198.19.200.7"),
            None,
            "a default route is no subnet"
        );
        assert_eq!(prefix(&NodeFacts::default(), "198.18.2.10"), None);
    }
}
