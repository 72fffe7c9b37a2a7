//! What rtnetlink says of this namespace's interfaces, read with the netlink crates
//! (`netlink-packet-route` messages on a `netlink-sys` socket):
//! - of one interface: its MAC address (frames for other MACs are not served), the mode its
//!   XDP program runs in (an adopted link was attached by an
//!   earlier `lbd`, perhaps with another `--xdp-mode`: its mode is read, not assumed), and its
//!   kind ("veth", "bridge", none for a NIC), which `--xdp-mode auto` goes by;
//! - as they happen: links and addresses coming and going ([`LinkWatch`]), so `lbd`
//!   re-attaches to an interface made again and replans published ports at once.

use std::{io, os::fd::AsRawFd as _};

use netlink_packet_core::{
    NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkInfo, LinkMessage, LinkXdp, XdpAttached},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::XdpMode;

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

/// The kernel's description of `ifindex`; `None` when there is no such interface.
fn link(ifindex: u32) -> io::Result<Option<LinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut request = LinkMessage::default();
    request.header.index = ifindex;
    let mut message = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::from(RouteNetlinkMessage::GetLink(request)),
    );
    message.header.flags = NLM_F_REQUEST;
    message.finalize();
    let mut bytes = vec![0; message.header.length as usize];
    message.serialize(&mut bytes);
    socket.send(&bytes, 0)?;
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

/// What changed since the watch was last read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkChanges {
    /// An interface appeared, went or changed (e.g. deleted and made again).
    pub links: bool,
    /// An address was added or removed.
    pub addresses: bool,
}

/// A netlink socket subscribed to link and address events of lbd's namespace.
pub struct LinkWatch {
    socket: Socket,
}

impl LinkWatch {
    pub fn new() -> io::Result<LinkWatch> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        let groups =
            (libc::RTMGRP_LINK | libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32;
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
                Err(_) => {
                    return LinkChanges {
                        links: true,
                        addresses: true,
                    };
                }
            }
        }
        changes
    }
}

fn merge(a: LinkChanges, b: LinkChanges) -> LinkChanges {
    LinkChanges {
        links: a.links || b.links,
        addresses: a.addresses || b.addresses,
    }
}

/// What the messages of one datagram say changed.
fn events_in(mut bytes: &[u8]) -> LinkChanges {
    let mut changes = LinkChanges::default();
    while let Ok(buffer) = NetlinkBuffer::new_checked(bytes) {
        let len = (buffer.length() as usize).min(bytes.len());
        if len == 0 {
            break;
        }
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[..len]) {
            Ok(message) => match message.payload {
                NetlinkPayload::InnerMessage(
                    RouteNetlinkMessage::NewLink(_) | RouteNetlinkMessage::DelLink(_),
                ) => changes.links = true,
                NetlinkPayload::InnerMessage(
                    RouteNetlinkMessage::NewAddress(_) | RouteNetlinkMessage::DelAddress(_),
                ) => changes.addresses = true,
                NetlinkPayload::Overrun(_) => {
                    changes.links = true;
                    changes.addresses = true;
                }
                _ => {}
            },
            // A message this crate cannot read is still a change of something.
            Err(_) => {
                changes.links = true;
                changes.addresses = true;
            }
        }
        // Messages are 4-byte aligned.
        let next = (len + 3) & !3;
        bytes = bytes.get(next..).unwrap_or_default();
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
                addresses: false
            }
        );
        assert_eq!(
            events_in(&datagram(vec![
                RouteNetlinkMessage::NewLink(link()),
                RouteNetlinkMessage::NewAddress(AddressMessage::default()),
            ])),
            LinkChanges {
                links: true,
                addresses: true
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

    /// The real kernel: the loopback interface (index 1 in every namespace) has no kind and
    /// no XDP program; an index nobody uses is no interface.
    #[test]
    fn the_kernel_answers_about_loopback() {
        assert_eq!(link_kind(1).unwrap(), None);
        assert_eq!(attached_mode(1).unwrap(), None);
        assert!(link(999_999).unwrap().is_none());
        LinkWatch::new().expect("a netlink socket subscribed to link and address events");
    }
}
