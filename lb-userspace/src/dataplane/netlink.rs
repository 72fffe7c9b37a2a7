//! What rtnetlink says of this namespace's interfaces, read with the netlink crates
//! (`netlink-packet-route` messages on a `netlink-sys` socket):
//! - of one interface: its MAC address (frames for other MACs are not served), the mode its
//!   XDP program runs in (an adopted link was attached by an
//!   earlier `lbd`, perhaps with another `--xdp-mode`: its mode is read, not assumed), and its
//!   kind ("veth", "bridge", none for a NIC), which `--xdp-mode auto` goes by;
//! - of the routing tables: the subnets the node reaches directly ([`connected_subnets`]),
//!   whose backends' neighbours are answered through the node (hairpin);
//! - as they happen: links, addresses and those subnets coming and going ([`LinkWatch`]), so
//!   `lbd` re-attaches to an interface made again and replans at once.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd as _,
};

use netlink_packet_core::{
    DecodeError, NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::{LinkAttribute, LinkInfo, LinkMessage, LinkXdp, XdpAttached},
    route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteScope, RouteType},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::XdpMode;
use crate::plan::ConnectedSubnet;

/// `Some(Native | Generic)` when an XDP program is attached to `ifindex` in that mode, `None`
/// when none is (or it runs offloaded or in several modes, which meshlb never does).
pub fn attached_mode(ifindex: u32) -> io::Result<Option<XdpMode>> {
    Ok(link(ifindex)?.as_ref().and_then(xdp_mode_of))
}

/// The id of the XDP program attached to `ifindex`, if any (in any mode).
pub fn attached_program(ifindex: u32) -> io::Result<Option<u32>> {
    Ok(link(ifindex)?.as_ref().and_then(xdp_program_of))
}

fn xdp_program_of(link: &LinkMessage) -> Option<u32> {
    xdp_attributes(link).find_map(|x| match x {
        LinkXdp::ProgId(id) if *id != 0 => Some(*id),
        _ => None,
    })
}

/// The interface's kind as `ip -d link` shows it ("veth", "bridge", ...); `None` for a
/// device without one (a NIC).
pub fn link_kind(ifindex: u32) -> io::Result<Option<String>> {
    Ok(link(ifindex)?.as_ref().and_then(kind_of))
}

/// The MAC the XDP program should require of unicast frames arriving on the interface;
/// `None` for one without a 6-byte address (a tunnel) and for a bridge. A bridge passes up
/// to its own device only frames for its own MAC (unless promiscuous), and that MAC moves
/// whenever a port with a lower one joins or leaves (Docker's bridges as containers come and
/// go): filtering there would drop a container's replies to the new MAC until lbd caught up.
pub fn link_filter_mac(ifindex: u32) -> io::Result<Option<[u8; 6]>> {
    let Some(link) = link(ifindex)? else {
        return Ok(None);
    };
    if kind_of(&link).as_deref() == Some("bridge") {
        return Ok(None);
    }
    Ok(mac_of(&link))
}

fn mac_of(link: &LinkMessage) -> Option<[u8; 6]> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(bytes) => bytes.as_slice().try_into().ok(),
        _ => None,
    })
}

fn xdp_mode_of(link: &LinkMessage) -> Option<XdpMode> {
    xdp_attributes(link).find_map(|x| match x {
        LinkXdp::Attached(XdpAttached::Driver) => Some(XdpMode::Native),
        LinkXdp::Attached(XdpAttached::SocketBuffer) => Some(XdpMode::Generic),
        _ => None,
    })
}

/// The nested attributes of the link's `IFLA_XDP`.
fn xdp_attributes(link: &LinkMessage) -> impl Iterator<Item = &LinkXdp> {
    link.attributes
        .iter()
        .filter_map(|a| match a {
            LinkAttribute::Xdp(xdp) => Some(xdp),
            _ => None,
        })
        .flatten()
}

fn kind_of(link: &LinkMessage) -> Option<String> {
    link.attributes
        .iter()
        .filter_map(|a| match a {
            LinkAttribute::LinkInfo(info) => Some(info),
            _ => None,
        })
        .flatten()
        .find_map(|i| match i {
            // Display spells every kind as the kernel does, unknown ones included.
            LinkInfo::Kind(kind) => Some(kind.to_string()),
            _ => None,
        })
}

/// A socket to the kernel's rtnetlink with `request` sent on it (`flags` besides
/// `NLM_F_REQUEST`).
fn ask(request: RouteNetlinkMessage, flags: u16) -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut message = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(request));
    message.header.flags = NLM_F_REQUEST | flags;
    message.finalize();
    let mut bytes = vec![0; message.header.length as usize];
    message.serialize(&mut bytes);
    socket.send(&bytes, 0)?;
    Ok(socket)
}

/// The kernel's description of `ifindex`; `None` when there is no such interface.
fn link(ifindex: u32) -> io::Result<Option<LinkMessage>> {
    let mut request = LinkMessage::default();
    request.header.index = ifindex;
    let socket = ask(RouteNetlinkMessage::GetLink(request), 0)?;
    let (reply, _) = socket.recv_from_full()?;
    let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    match reply.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => Ok(Some(link)),
        NetlinkPayload::Error(e) if e.raw_code() == -libc::ENODEV => Ok(None),
        NetlinkPayload::Error(e) => Err(e.to_io()),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected rtnetlink answer to RTM_GETLINK: {other:?}"),
        )),
    }
}

/// The IPv4 and IPv6 subnets this namespace reaches directly (`connected_subnet`), sorted,
/// each once.
pub fn connected_subnets() -> io::Result<Vec<ConnectedSubnet>> {
    let mut subnets = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut request = RouteMessage::default();
        request.header.address_family = family;
        let socket = ask(RouteNetlinkMessage::GetRoute(request), NLM_F_DUMP)?;
        // A dump comes in as many datagrams as it takes, and ends with NLMSG_DONE.
        'dump: loop {
            let (bytes, _) = socket.recv_from_full()?;
            for message in messages(&bytes) {
                let message = message
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                match message.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(route)) => {
                        subnets.extend(connected_subnet(&route));
                    }
                    NetlinkPayload::Done(_) => break 'dump,
                    NetlinkPayload::Error(e) => return Err(e.to_io()),
                    _ => {}
                }
            }
        }
    }
    subnets.sort_unstable();
    subnets.dedup();
    Ok(subnets)
}

/// The subnet `route` reaches directly, if it is a link route of a main table: the node and
/// the subnet's hosts talk straight over the link, as `198.18.2.0/24 dev br0 scope link`
/// and `fd00:2::/64 dev br0` say. IPv4 marks such a route by its scope; IPv6 gives every
/// route universe scope, so there it is one with no next hop (no gateway, via, multipath or
/// nexthop object), link-local `fe80::/10` left out (every link has it, no backend is in it).
fn connected_subnet(route: &RouteMessage) -> Option<ConnectedSubnet> {
    let header = &route.header;
    if header.table != RouteHeader::RT_TABLE_MAIN || header.kind != RouteType::Unicast {
        return None;
    }
    let destination = route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(network)) => Some(IpAddr::V4(*network)),
        RouteAttribute::Destination(RouteAddress::Inet6(network)) => Some(IpAddr::V6(*network)),
        _ => None,
    });
    let through_next_hop = route.attributes.iter().any(|a| {
        matches!(
            a,
            RouteAttribute::Gateway(_)
                | RouteAttribute::Via(_)
                | RouteAttribute::MultiPath(_)
                | RouteAttribute::NhId(_)
        )
    });
    let network = match header.address_family {
        AddressFamily::Inet if header.scope == RouteScope::Link => {
            destination.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
        }
        AddressFamily::Inet6 if !through_next_hop => {
            match destination.unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED)) {
                IpAddr::V6(v6) if v6.is_unicast_link_local() => return None,
                network => network,
            }
        }
        _ => return None,
    };
    Some(ConnectedSubnet {
        network,
        prefix: header.destination_prefix_length,
    })
}

/// The netlink messages of one datagram.
fn messages(
    mut bytes: &[u8],
) -> impl Iterator<Item = Result<NetlinkMessage<RouteNetlinkMessage>, DecodeError>> {
    std::iter::from_fn(move || {
        let buffer = NetlinkBuffer::new_checked(bytes).ok()?;
        let len = (buffer.length() as usize).min(bytes.len());
        if len == 0 {
            return None;
        }
        let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[..len]);
        // Messages are 4-byte aligned.
        let next = (len + 3) & !3;
        bytes = bytes.get(next..).unwrap_or_default();
        Some(message)
    })
}

/// What changed since the watch was last read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkChanges {
    /// An interface appeared, went or changed (e.g. deleted and made again).
    pub links: bool,
    /// An address was added or removed.
    pub addresses: bool,
    /// A route to a subnet the node reaches directly came or went (`connected_subnet`).
    pub connected: bool,
}

impl LinkChanges {
    const EVERYTHING: LinkChanges = LinkChanges {
        links: true,
        addresses: true,
        connected: true,
    };

    pub fn any(&self) -> bool {
        self.links || self.addresses || self.connected
    }
}

/// A netlink socket subscribed to link, address and route events of lbd's namespace.
pub struct LinkWatch {
    socket: Socket,
}

impl LinkWatch {
    pub fn new() -> io::Result<LinkWatch> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        let groups = (libc::RTMGRP_LINK
            | libc::RTMGRP_IPV4_IFADDR
            | libc::RTMGRP_IPV6_IFADDR
            | libc::RTMGRP_IPV4_ROUTE
            | libc::RTMGRP_IPV6_ROUTE) as u32;
        socket.bind(&SocketAddr::new(0, groups))?;
        socket.set_non_blocking(true)?;
        Ok(LinkWatch { socket })
    }

    /// The socket, to wait on for readability.
    pub fn fd(&self) -> std::os::fd::RawFd {
        self.socket.as_raw_fd()
    }

    /// Reads every event waiting. An overrun (events lost because lbd was busy) counts as
    /// "everything changed": the caller rechecks all.
    pub fn drain(&self) -> LinkChanges {
        let mut changes = LinkChanges::default();
        // Bounded: a burst larger than this is read on the next wake-up.
        for _ in 0..1024 {
            match self.socket.recv_from_full() {
                Ok((bytes, _)) => changes = merge(changes, events_in(&bytes)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return LinkChanges::EVERYTHING,
            }
        }
        changes
    }
}

fn merge(a: LinkChanges, b: LinkChanges) -> LinkChanges {
    LinkChanges {
        links: a.links || b.links,
        addresses: a.addresses || b.addresses,
        connected: a.connected || b.connected,
    }
}

/// What the messages of one datagram say changed. Routes through a gateway (a router's many)
/// change nothing lbd plans from.
fn events_in(bytes: &[u8]) -> LinkChanges {
    let mut changes = LinkChanges::default();
    for message in messages(bytes) {
        match message.map(|m| m.payload) {
            Ok(NetlinkPayload::InnerMessage(
                RouteNetlinkMessage::NewLink(_) | RouteNetlinkMessage::DelLink(_),
            )) => changes.links = true,
            Ok(NetlinkPayload::InnerMessage(
                RouteNetlinkMessage::NewAddress(_) | RouteNetlinkMessage::DelAddress(_),
            )) => changes.addresses = true,
            Ok(NetlinkPayload::InnerMessage(
                RouteNetlinkMessage::NewRoute(route) | RouteNetlinkMessage::DelRoute(route),
            )) => changes.connected |= connected_subnet(&route).is_some(),
            Ok(NetlinkPayload::Overrun(_)) => changes = LinkChanges::EVERYTHING,
            Ok(_) => {}
            // A message this crate cannot read is still a change of something.
            Err(_) => changes = LinkChanges::EVERYTHING,
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use netlink_packet_route::{
        address::AddressMessage,
        link::{InfoKind, LinkMessage},
    };

    use super::*;

    fn link_with(attributes: Vec<LinkAttribute>) -> LinkMessage {
        let mut link = LinkMessage::default();
        link.header.index = 7;
        link.attributes = attributes;
        link
    }

    #[test]
    fn the_attached_mode_is_read_from_the_xdp_attribute() {
        let mode = |attached| {
            xdp_mode_of(&link_with(vec![LinkAttribute::Xdp(vec![
                LinkXdp::Attached(attached),
                LinkXdp::ProgId(42),
            ])]))
        };
        assert_eq!(mode(XdpAttached::Driver), Some(XdpMode::Native));
        assert_eq!(mode(XdpAttached::SocketBuffer), Some(XdpMode::Generic));
        assert_eq!(mode(XdpAttached::None), None);
        assert_eq!(
            xdp_program_of(&link_with(vec![LinkAttribute::Xdp(vec![
                LinkXdp::Attached(XdpAttached::SocketBuffer),
                LinkXdp::ProgId(42),
            ])])),
            Some(42)
        );
        assert_eq!(xdp_program_of(&link_with(Vec::new())), None);
        assert_eq!(mode(XdpAttached::Multiple), None);
        assert_eq!(xdp_mode_of(&link_with(Vec::new())), None);
    }

    #[test]
    fn the_kind_is_read_from_the_link_info() {
        let kind = |k| {
            kind_of(&link_with(vec![LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(k),
            ])]))
        };
        assert_eq!(kind(InfoKind::Veth).as_deref(), Some("veth"));
        assert_eq!(kind(InfoKind::Bridge).as_deref(), Some("bridge"));
        assert_eq!(
            kind(InfoKind::Other("ipvlan-x".into())).as_deref(),
            Some("ipvlan-x")
        );
        assert_eq!(kind_of(&link_with(Vec::new())), None, "a NIC has no kind");
    }

    fn datagram(messages: Vec<RouteNetlinkMessage>) -> Vec<u8> {
        let mut out = Vec::new();
        for m in messages {
            let mut message =
                NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(m));
            message.finalize();
            let mut bytes = vec![0; message.header.length as usize];
            message.serialize(&mut bytes);
            out.extend_from_slice(&bytes);
            out.resize((out.len() + 3) & !3, 0);
        }
        out
    }

    #[test]
    fn events_say_what_changed() {
        let link = || link_with(Vec::new());
        assert_eq!(
            events_in(&datagram(vec![RouteNetlinkMessage::DelLink(link())])),
            LinkChanges {
                links: true,
                ..LinkChanges::default()
            }
        );
        assert_eq!(
            events_in(&datagram(vec![
                RouteNetlinkMessage::NewLink(link()),
                RouteNetlinkMessage::NewAddress(AddressMessage::default()),
            ])),
            LinkChanges {
                links: true,
                addresses: true,
                connected: false
            },
            "every message of a datagram is read"
        );
        assert_eq!(events_in(&[]), LinkChanges::default());
        assert_eq!(
            events_in(&[1, 2, 3]),
            LinkChanges::default(),
            "a short datagram is no message"
        );
    }

    fn route(
        destination: &str,
        prefix: u8,
        scope: RouteScope,
        gateway: Option<&str>,
    ) -> RouteMessage {
        let mut route = RouteMessage::default();
        route.header.address_family = AddressFamily::Inet;
        route.header.table = RouteHeader::RT_TABLE_MAIN;
        route.header.kind = RouteType::Unicast;
        route.header.scope = scope;
        route.header.destination_prefix_length = prefix;
        route
            .attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(
                destination.parse().unwrap(),
            )));
        if let Some(gateway) = gateway {
            route
                .attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(
                    gateway.parse().unwrap(),
                )));
        }
        route
    }

    /// A link route of a main table is a connected subnet; a route through a gateway, one of
    /// another table, a local or blackhole one and IPv6's link-local one are not.
    #[test]
    fn connected_subnets_are_the_main_tables_link_routes() {
        let subnet = |network: &str, prefix| ConnectedSubnet {
            network: network.parse().unwrap(),
            prefix,
        };
        let link = route("198.18.2.0", 24, RouteScope::Link, None);
        assert_eq!(connected_subnet(&link), Some(subnet("198.18.2.0", 24)));
        let host = route("198.18.3.7", 32, RouteScope::Link, None);
        assert_eq!(connected_subnet(&host), Some(subnet("198.18.3.7", 32)));
        let mut default = route("0.0.0.0", 0, RouteScope::Link, None);
        default.attributes.clear();
        assert_eq!(connected_subnet(&default), Some(subnet("0.0.0.0", 0)));
        let routed = route("198.18.4.0", 24, RouteScope::Universe, Some("198.18.2.1"));
        assert_eq!(connected_subnet(&routed), None);
        let mut other_table = link.clone();
        other_table.header.table = 100;
        assert_eq!(connected_subnet(&other_table), None);
        let mut local = link.clone();
        local.header.kind = RouteType::Local;
        assert_eq!(connected_subnet(&local), None);
        let mut blackhole = link.clone();
        blackhole.header.kind = RouteType::BlackHole;
        assert_eq!(connected_subnet(&blackhole), None);
        // IPv6: universe scope all; a route without a next hop is a link's.
        let v6 = |destination: &str, prefix| {
            let mut v6 = route("0.0.0.0", prefix, RouteScope::Universe, None);
            v6.header.address_family = AddressFamily::Inet6;
            v6.attributes = vec![RouteAttribute::Destination(RouteAddress::Inet6(
                destination.parse().unwrap(),
            ))];
            v6
        };
        let link6 = v6("fd00:2::", 64);
        assert_eq!(connected_subnet(&link6), Some(subnet("fd00:2::", 64)));
        assert_eq!(
            connected_subnet(&v6("fe80::", 64)),
            None,
            "link-local is every link's"
        );
        let mut routed6 = v6("fd00:4::", 64);
        routed6
            .attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet6(
                "fd00:2::1".parse().unwrap(),
            )));
        assert_eq!(connected_subnet(&routed6), None);
        let mut by_nexthop = v6("fd00:5::", 64);
        by_nexthop.attributes.push(RouteAttribute::NhId(7));
        assert_eq!(connected_subnet(&by_nexthop), None);
        let mut local6 = link6.clone();
        local6.header.kind = RouteType::Local;
        assert_eq!(connected_subnet(&local6), None);
        let mut other_table6 = link6.clone();
        other_table6.header.table = 255;
        assert_eq!(connected_subnet(&other_table6), None);
        assert_eq!(
            events_in(&datagram(vec![RouteNetlinkMessage::NewRoute(link6)])),
            LinkChanges {
                connected: true,
                ..LinkChanges::default()
            }
        );
        assert_eq!(
            events_in(&datagram(vec![RouteNetlinkMessage::NewRoute(routed6)])),
            LinkChanges::default()
        );
        // And as events: only a connected subnet's coming or going is one.
        assert_eq!(
            events_in(&datagram(vec![
                RouteNetlinkMessage::NewRoute(routed.clone()),
                RouteNetlinkMessage::DelRoute(routed),
            ])),
            LinkChanges::default()
        );
        for event in [
            RouteNetlinkMessage::NewRoute(link.clone()),
            RouteNetlinkMessage::DelRoute(link),
        ] {
            assert_eq!(
                events_in(&datagram(vec![event])),
                LinkChanges {
                    connected: true,
                    ..LinkChanges::default()
                }
            );
        }
    }

    /// The real kernel: the loopback interface (index 1 in every namespace) has no kind and
    /// no XDP program; an index nobody uses is no interface.
    #[test]
    fn the_kernel_answers_about_loopback() {
        assert_eq!(link_kind(1).unwrap(), None);
        assert_eq!(attached_mode(1).unwrap(), None);
        assert!(link(999_999).unwrap().is_none());
        LinkWatch::new().expect("a netlink socket subscribed to link and address events");
        // A dump of the routes ends, and gives each subnet once, sorted.
        let subnets = connected_subnets().expect("the routes dumped");
        assert!(subnets.windows(2).all(|w| w[0] < w[1]), "{subnets:?}");
    }
}
