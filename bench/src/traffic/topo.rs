//! The packet-rate topology: generator → node → sink, each in its own namespace, built with
//! the test kit's [`Netns`]. It differs from the test kit's [`Topology`](lb_testkit::Topology)
//! on purpose: the backends sit behind a veth whose peer runs the sink's XDP program (so the
//! node can send to them with XDP_REDIRECT; a bridge takes only generic XDP), and they are
//! addresses routed to the sink rather than namespaces, so a service can have 1,024 of them.
//!
//! ```text
//!  gen ns                 node ns                                    sink ns
//!  eth0 198.18.1.2 ── mlb-cli 198.18.1.1     mlb-snk 198.18.3.1 ── eth0 198.18.3.2 (XDP sink)
//!       fd00:1::2          fd00:1::1                 fd00:3::1          fd00:3::2
//!                          routes: 198.18.16.0/20 and fd00:2::/64 via the sink
//!                          (static neighbours: the sink answers nothing)
//!  mlb-hold ── mlb-hold-p (down, no traffic: holds the generator in the XDP dispatcher)
//! ```
//! Backend i is 198.18.16.(1 + i) onwards (198.18.16.0/20 holds 4,094) or fd00:2::(1 + i).
//! Everything is removed when the namespaces are dropped.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context as _, Result, ensure};
use lb_testkit::Netns;

pub const GEN_IF: &str = "eth0";
pub const NODE_IN: &str = "mlb-cli";
pub const NODE_OUT: &str = "mlb-snk";
pub const SINK_IF: &str = "eth0";
/// An idle veth in the generator's namespace (down, never carries a frame) where the
/// generator program stays attached: see [`super::Traffic::attach`].
pub const GEN_HOLD_IF: &str = "mlb-hold";
pub const GEN_MAC: [u8; 6] = [0x02, 0x6d, 0x6c, 0x62, 0x01, 0x02];
pub const NODE_IN_MAC: [u8; 6] = [0x02, 0x6d, 0x6c, 0x62, 0x01, 0x01];
pub const NODE_OUT_MAC: [u8; 6] = [0x02, 0x6d, 0x6c, 0x62, 0x03, 0x01];
pub const SINK_MAC: [u8; 6] = [0x02, 0x6d, 0x6c, 0x62, 0x03, 0x02];
pub const VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 1);
pub const VIP_PORT: u16 = 80;
pub const BACKEND_PORT: u16 = 8080;
/// Backends that fit 198.18.16.0/20 (hosts .16.1 to .31.254).
pub const MAX_BACKENDS: usize = 4094;

/// Backend `i` of a family.
pub fn backend_addr(i: usize, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(
            0xfd00,
            2,
            0,
            0,
            0,
            0,
            ((i + 1) >> 16) as u16,
            (i + 1) as u16,
        ))
    } else {
        IpAddr::V4(Ipv4Addr::from(
            u32::from(Ipv4Addr::new(198, 18, 16, 0)) + i as u32 + 1,
        ))
    }
}

pub fn mac_string(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// Generator, node and sink namespaces.
pub struct PpsTopology {
    pub generator: Netns,
    pub node: Netns,
    pub sink: Netns,
}

impl PpsTopology {
    pub fn new() -> Result<Self> {
        let generator = Netns::new("gen")?;
        let node = Netns::new("node")?;
        let sink = Netns::new("sink")?;
        node.set_sysctls(&[
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv6.conf.default.forwarding", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
        ])?;
        for ns in [&generator, &sink] {
            ns.set_sysctls(&[
                ("net.ipv6.conf.all.accept_dad", "0"),
                ("net.ipv6.conf.default.accept_dad", "0"),
            ])?;
        }
        node.ip_batch(&[
            "link set lo up".to_owned(),
            format!(
                "link add {NODE_IN} address {} type veth peer name {GEN_IF} address {} netns {}",
                mac_string(NODE_IN_MAC),
                mac_string(GEN_MAC),
                generator.name()
            ),
            format!(
                "link add {NODE_OUT} address {} type veth peer name {SINK_IF} address {} netns {}",
                mac_string(NODE_OUT_MAC),
                mac_string(SINK_MAC),
                sink.name()
            ),
            format!("link set {NODE_IN} up"),
            format!("link set {NODE_OUT} up"),
            format!("addr add 198.18.1.1/24 dev {NODE_IN}"),
            format!("addr add fd00:1::1/64 dev {NODE_IN} nodad"),
            format!("addr add 198.18.3.1/24 dev {NODE_OUT}"),
            format!("addr add fd00:3::1/64 dev {NODE_OUT} nodad"),
            format!(
                "neigh replace 198.18.3.2 lladdr {} dev {NODE_OUT} nud permanent",
                mac_string(SINK_MAC)
            ),
            format!(
                "neigh replace fd00:3::2 lladdr {} dev {NODE_OUT} nud permanent",
                mac_string(SINK_MAC)
            ),
            format!(
                "neigh replace 198.18.1.2 lladdr {} dev {NODE_IN} nud permanent",
                mac_string(GEN_MAC)
            ),
            "route add 198.18.16.0/20 via 198.18.3.2".to_owned(),
            "route add fd00:2::/64 via fd00:3::2".to_owned(),
            "route add 198.19.0.0/16 via 198.18.1.2".to_owned(),
        ])
        .context("setting up the node")?;
        generator
            .ip_batch(&[
                "link set lo up".to_owned(),
                format!("link set {GEN_IF} up"),
                format!("link add {GEN_HOLD_IF} type veth peer name {GEN_HOLD_IF}-p"),
                format!("addr add 198.18.1.2/24 dev {GEN_IF}"),
                format!("addr add fd00:1::2/64 dev {GEN_IF} nodad"),
            ])
            .context("setting up the generator")?;
        sink.ip_batch(&[
            "link set lo up".to_owned(),
            format!("link set {SINK_IF} up"),
            format!("addr add 198.18.3.2/24 dev {SINK_IF}"),
            format!("addr add fd00:3::2/64 dev {SINK_IF} nodad"),
        ])
        .context("setting up the sink")?;
        // Frames sent with XDP into a veth need NAPI on the receiving end: an XDP program
        // there (meshlb, the ceiling, the sink) or GRO on (the kernel-only contenders).
        node.exec(&["ethtool", "-K", NODE_IN, "gro", "on"])
            .context("enabling GRO (NAPI) on the node's veth")?;
        Ok(Self {
            generator,
            node,
            sink,
        })
    }

    /// The drop and error counters of the four veths (`ethtool -S`: the veth driver's per-queue
    /// XDP counters, e.g. the generator's `tx_queue_0_xdp_xmit_errors`: frames its XDP_TX
    /// could not put in the node's receive ring, which was full), keyed "namespace:interface
    /// counter", but for the sink's own XDP_DROPs. Diffed around a run, they say where lost
    /// frames went.
    pub fn veth_drop_counters(&self) -> Result<BTreeMap<String, u64>> {
        let mut counters = BTreeMap::new();
        for (ns, role, interface) in [
            (&self.generator, "gen", GEN_IF),
            (&self.node, "node", NODE_IN),
            (&self.node, "node", NODE_OUT),
            (&self.sink, "sink", SINK_IF),
        ] {
            let stats = ns
                .exec(&["ethtool", "-S", interface])
                .with_context(|| format!("reading {role}:{interface}'s counters"))?;
            counters.extend(
                drop_counters(&stats)
                    // The sink answers XDP_DROP to every frame it counted.
                    .filter(|(name, _)| role != "sink" || !name.ends_with("xdp_drops"))
                    .map(|(name, value)| (format!("{role}:{interface} {name}"), value)),
            );
        }
        Ok(counters)
    }

    /// The kernel's index of `interface` in `ns`.
    pub fn ifindex(ns: &Netns, interface: &str) -> Result<u32> {
        let name = interface.to_owned();
        let index = ns.run(move || lb_userspace::dataplane::ifindex(&name))??;
        ensure!(index != 0, "{interface} has no index");
        Ok(index)
    }
}

/// The `name: value` lines of `ethtool -S` output whose name says drop or error.
fn drop_counters(stats: &str) -> impl Iterator<Item = (&str, u64)> {
    stats.lines().filter_map(|line| {
        let (name, value) = line.trim().split_once(':')?;
        let counts_losses = name.contains("drop") || name.contains("err");
        counts_losses.then_some((name, value.trim().parse().ok()?))
    })
}

/// What grew between two [`PpsTopology::veth_drop_counters`] snapshots.
pub fn grown(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(name, n)| {
            (
                name.clone(),
                n.saturating_sub(before.get(name).copied().unwrap_or(0)),
            )
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_plan() {
        assert_eq!(
            backend_addr(0, false),
            "198.18.16.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            backend_addr(254, false),
            "198.18.16.255".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            backend_addr(MAX_BACKENDS - 1, false),
            "198.18.31.254".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            backend_addr(9, true),
            "fd00:2::a".parse::<IpAddr>().unwrap()
        );
        assert_eq!(mac_string(SINK_MAC), "02:6d:6c:62:03:02");
    }

    #[test]
    fn drop_counters_are_read_from_ethtool_output() {
        let stats = "NIC statistics:\n     peer_ifindex: 5\n     rx_queue_0_xdp_packets: 9\n     \
                     rx_queue_0_drops: 2\n     rx_queue_0_xdp_tx_errors: 0\n     \
                     tx_queue_0_xdp_xmit_errors: 12305\n";
        let read: Vec<_> = drop_counters(stats).collect();
        assert_eq!(
            read,
            [
                ("rx_queue_0_drops", 2),
                ("rx_queue_0_xdp_tx_errors", 0),
                ("tx_queue_0_xdp_xmit_errors", 12305)
            ]
        );
        let before = BTreeMap::from([("a".to_owned(), 3), ("b".to_owned(), 1)]);
        let after = BTreeMap::from([
            ("a".to_owned(), 3),
            ("b".to_owned(), 4),
            ("c".to_owned(), 2),
        ]);
        assert_eq!(
            grown(&before, &after),
            BTreeMap::from([("b".to_owned(), 3), ("c".to_owned(), 2)])
        );
    }
}
