//! Ends sockets still connected to a backend that left its service. On the socket-level path
//! a connected socket chose its backend once, at `connect()`, and nothing moves it after (no
//! packet of it passes a translation): a connected UDP client would send to a removed task
//! for as long as it lives, and a TCP connection to it would retransmit into nothing for
//! minutes, where the XDP path answers its next packet (a RST, or another backend's). The
//! kernel aborts such a socket on request (`SOCK_DESTROY` over `NETLINK_SOCK_DIAG`, as
//! `ss -K` does): its next receive or send fails with `ECONNABORTED` (TCP sends its peer a
//! RST), and a client that connects again gets a backend that is there.
//!
//! The messages are the kernel's `inet_diag` ABI (`linux/inet_diag.h`, `linux/sock_diag.h`),
//! written and read here byte for byte.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd as _,
};

use lb_common::maps::proto;
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_SOCK_DIAG};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
/// A connected UDP socket is in TCP's `ESTABLISHED` state (1), as a state mask.
const UDP_CONNECTED: u32 = 1 << 1;
/// TCP sockets with a peer that can be aborted: ESTABLISHED (1), SYN_SENT (2), FIN_WAIT1
/// (4), FIN_WAIT2 (5), CLOSE_WAIT (8), LAST_ACK (9), CLOSING (11); not TIME_WAIT, nor a
/// listener's half-open requests.
const TCP_CONNECTED: u32 =
    (1 << 1) | (1 << 2) | (1 << 4) | (1 << 5) | (1 << 8) | (1 << 9) | (1 << 11);
const NLMSG_HDR_LEN: usize = 16;
/// `struct inet_diag_sockid`: ports, addresses, interface, cookie.
const SOCKID_LEN: usize = 48;
/// `struct inet_diag_req_v2`: family, protocol, extensions, pad, states, then the id.
const REQ_LEN: usize = 8 + SOCKID_LEN;
/// `struct inet_diag_msg` up to and including its id.
const MSG_ID_END: usize = 4 + SOCKID_LEN;

/// A socket's peer to abort: its IP protocol (`lb_common::maps::proto`) and address.
pub type SocketPeer = (u8, SocketAddr);

/// Aborts the connected sockets of a network namespace (`Some((pid, cookie))`: process
/// `pid`'s, if its namespace is still the one of `cookie`; this thread's for `None`) whose
/// protocol and peer are one of `peers` (a port of 0 matches every port); how many it
/// aborted. A process gone, or whose pid now names a process in another namespace, has none
/// to abort: 0.
pub fn abort_connected(ns: Option<(u32, u64)>, peers: &[SocketPeer]) -> io::Result<usize> {
    if peers.is_empty() {
        return Ok(0);
    }
    let Some((pid, cookie)) = ns else {
        return abort_here(peers);
    };
    let aborted = super::sockets::in_netns_of(pid, || {
        if super::sockets::netns_cookie()? != cookie {
            return Ok(0);
        }
        abort_here(peers)
    });
    match aborted {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        aborted => aborted,
    }
}

/// How long the kernel may take to answer one request.
const ANSWER_TIMEOUT: libc::timeval = libc::timeval {
    tv_sec: 5,
    tv_usec: 0,
};

fn abort_here(peers: &[SocketPeer]) -> io::Result<usize> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    // SAFETY: setsockopt on a socket we own, with a timeval of its own size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::from_ref(&ANSWER_TIMEOUT).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    socket.bind_auto()?;
    socket.connect(&NetlinkAddr::new(0, 0))?;
    let mut aborted = 0;
    for protocol in [proto::UDP, proto::TCP] {
        let of_protocol: Vec<SocketAddr> = peers
            .iter()
            .filter(|(p, _)| *p == protocol)
            .map(|(_, peer)| *peer)
            .collect();
        if !of_protocol.is_empty() {
            aborted += abort_of(&mut socket, protocol, &of_protocol)?;
        }
    }
    Ok(aborted)
}

/// Aborts the connected sockets of `protocol` whose peer is one of `peers`.
fn abort_of(socket: &mut Socket, protocol: u8, peers: &[SocketAddr]) -> io::Result<usize> {
    let mut aborted = 0;
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        let ids = connected_to(socket, family, protocol, peers)?;
        for id in ids {
            match destroy(socket, family, protocol, &id) {
                Ok(()) => aborted += 1,
                // Closed meanwhile.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    return Err(io::Error::other(
                        "this kernel cannot abort sockets (built without \
                         CONFIG_INET_DIAG_DESTROY): clients connected to a removed backend \
                         keep sending to it until they connect again",
                    ));
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(aborted)
}

/// The ids (`inet_diag_sockid` bytes) of the connected sockets of `family` and `protocol`
/// whose peer is in `peers`.
fn connected_to(
    socket: &mut Socket,
    family: u8,
    protocol: u8,
    peers: &[SocketAddr],
) -> io::Result<Vec<[u8; SOCKID_LEN]>> {
    socket.send(
        &request(
            SOCK_DIAG_BY_FAMILY,
            NLM_F_REQUEST | NLM_F_DUMP,
            (family, protocol),
            &[0; SOCKID_LEN],
        ),
        0,
    )?;
    let mut found = Vec::new();
    // Bounded: a dump ends with NLMSG_DONE; each reply carries many sockets.
    for _ in 0..1_000_000 {
        let (reply, _) = socket.recv_from_full()?;
        if reply.is_empty() {
            return Err(io::Error::other(
                "sock_diag: the dump ended without NLMSG_DONE",
            ));
        }
        for (kind, body) in messages(&reply)? {
            match kind {
                NLMSG_DONE => return dump_end(body, protocol).map(|()| found),
                NLMSG_ERROR => error_of(body)?,
                SOCK_DIAG_BY_FAMILY if body.len() >= MSG_ID_END => {
                    let id: [u8; SOCKID_LEN] = body[4..MSG_ID_END].try_into().expect("sized slice");
                    let peer = peer_of(family, &id);
                    if peers.iter().any(|p| {
                        p.ip().to_canonical() == peer.ip().to_canonical()
                            && (p.port() == 0 || p.port() == peer.port())
                    }) {
                        found.push(id);
                    }
                }
                _ => {}
            }
        }
    }
    Err(io::Error::other("sock_diag: the dump did not end"))
}

/// What a dump's `NLMSG_DONE` says: a dump that failed ends with its errno there, not in an
/// `NLMSG_ERROR` (a kernel without UDP socket diagnostics ends it with `ENOENT`). Read as
/// "no sockets", nothing would be aborted and nothing said.
fn dump_end(body: &[u8], protocol: u8) -> io::Result<()> {
    match error_of(body) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) && protocol == proto::UDP => {
            Err(io::Error::other(
                "this kernel cannot list UDP sockets (built without CONFIG_INET_UDP_DIAG, or \
                 its udp_diag module cannot be loaded): clients connected to a removed \
                 backend keep sending to it until they connect again",
            ))
        }
        Err(e) => Err(io::Error::other(format!(
            "sock_diag: the kernel ended the socket dump with an error: {e}"
        ))),
        Ok(()) => Ok(()),
    }
}

/// Asks the kernel to abort the socket `id` (its ports, addresses and cookie).
fn destroy(socket: &mut Socket, family: u8, protocol: u8, id: &[u8; SOCKID_LEN]) -> io::Result<()> {
    socket.send(
        &request(
            SOCK_DESTROY,
            NLM_F_REQUEST | NLM_F_ACK,
            (family, protocol),
            id,
        ),
        0,
    )?;
    let (reply, _) = socket.recv_from_full()?;
    for (kind, body) in messages(&reply)? {
        if kind == NLMSG_ERROR {
            return error_of(body);
        }
    }
    Err(io::Error::other("sock_diag: SOCK_DESTROY got no answer"))
}

/// A netlink message of `kind` carrying an `inet_diag_req_v2` for sockets of `(family,
/// protocol)` in a connected state, `id` the socket (zeros: any).
fn request(kind: u16, flags: u16, (family, protocol): (u8, u8), id: &[u8; SOCKID_LEN]) -> Vec<u8> {
    let len = (NLMSG_HDR_LEN + REQ_LEN) as u32;
    let mut out = Vec::with_capacity(len as usize);
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    out.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    let states = if protocol == proto::TCP {
        TCP_CONNECTED
    } else {
        UDP_CONNECTED
    };
    out.extend_from_slice(&[family, protocol, 0, 0]);
    out.extend_from_slice(&states.to_ne_bytes());
    out.extend_from_slice(id);
    out
}

/// The messages in a netlink datagram: (type, body).
fn messages(datagram: &[u8]) -> io::Result<Vec<(u16, &[u8])>> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while rest.len() >= NLMSG_HDR_LEN {
        let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes(rest[4..6].try_into().expect("2 bytes"));
        if len < NLMSG_HDR_LEN || len > rest.len() {
            return Err(io::Error::other(format!(
                "sock_diag: a message of {len} bytes in {} left",
                rest.len()
            )));
        }
        out.push((kind, &rest[NLMSG_HDR_LEN..len]));
        // Messages are 4-byte aligned.
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
    }
    Ok(out)
}

/// An `NLMSG_ERROR` body: its errno (0 is an acknowledgement).
fn error_of(body: &[u8]) -> io::Result<()> {
    let code = body
        .get(0..4)
        .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
        .ok_or_else(|| io::Error::other("sock_diag: a short error message"))?;
    match code {
        0 => Ok(()),
        negative => Err(io::Error::from_raw_os_error(-negative)),
    }
}

/// The peer (destination address and port) of a socket id.
fn peer_of(family: u8, id: &[u8; SOCKID_LEN]) -> SocketAddr {
    let port = u16::from_be_bytes([id[2], id[3]]);
    let dst = &id[20..36];
    let ip = if family == libc::AF_INET as u8 {
        IpAddr::V4(Ipv4Addr::new(dst[0], dst[1], dst[2], dst[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(dst).expect("16 bytes")))
    };
    SocketAddr::new(ip, port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_ids_have_the_kernels_layout() {
        let req = request(
            SOCK_DESTROY,
            NLM_F_REQUEST | NLM_F_ACK,
            (2, proto::UDP),
            &[7; SOCKID_LEN],
        );
        assert_eq!(req.len(), 16 + 56);
        assert_eq!(u32::from_ne_bytes(req[0..4].try_into().unwrap()), 72);
        assert_eq!(u16::from_ne_bytes(req[4..6].try_into().unwrap()), 21);
        assert_eq!(&req[16..20], &[2, 17, 0, 0]);
        assert_eq!(u32::from_ne_bytes(req[20..24].try_into().unwrap()), 2);
        assert_eq!(&req[24..], &[7; SOCKID_LEN]);

        let mut id = [0u8; SOCKID_LEN];
        id[2..4].copy_from_slice(&5353u16.to_be_bytes());
        id[20..24].copy_from_slice(&[198, 18, 2, 11]);
        assert_eq!(
            peer_of(2, &id),
            "198.18.2.11:5353".parse::<SocketAddr>().unwrap()
        );
        let mut id6 = [0u8; SOCKID_LEN];
        id6[2..4].copy_from_slice(&53u16.to_be_bytes());
        id6[20..36].copy_from_slice(&"::ffff:198.18.2.11".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(
            peer_of(10, &id6).ip().to_canonical(),
            "198.18.2.11".parse::<IpAddr>().unwrap()
        );
    }

    /// The end of a dump carries its errno: 0 is a dump that listed every socket; a kernel
    /// without `udp_diag` ends it with -ENOENT (seen on this kernel for a protocol without a
    /// diagnostics handler), which must not read as "no sockets".
    #[test]
    fn a_dump_that_failed_is_an_error_naming_the_kernel_option() {
        let end = |errno: i32| dump_end(&errno.to_ne_bytes(), proto::UDP);
        assert!(end(0).is_ok());
        let missing = end(-libc::ENOENT).unwrap_err().to_string();
        assert!(missing.contains("CONFIG_INET_UDP_DIAG"), "{missing}");
        let other = end(-libc::EACCES).unwrap_err().to_string();
        assert!(other.contains("ended the socket dump"), "{other}");
        assert!(dump_end(&[], proto::UDP).is_err(), "a short end message");
    }

    #[test]
    fn a_datagram_splits_into_aligned_messages() {
        let mut datagram = Vec::new();
        for (kind, body) in [(20u16, &[1u8, 2, 3][..]), (NLMSG_DONE, &[0, 0, 0, 0][..])] {
            let len = (NLMSG_HDR_LEN + body.len()) as u32;
            datagram.extend_from_slice(&len.to_ne_bytes());
            datagram.extend_from_slice(&kind.to_ne_bytes());
            datagram.extend_from_slice(&[0; 10]);
            datagram.extend_from_slice(body);
            datagram.resize(datagram.len().next_multiple_of(4), 0);
        }
        let parsed = messages(&datagram).unwrap();
        assert_eq!(
            parsed,
            [(20, &[1u8, 2, 3][..]), (NLMSG_DONE, &[0, 0, 0, 0][..])]
        );
        let mut ack = Vec::from((-libc::ENOENT).to_ne_bytes());
        assert_eq!(
            error_of(&ack).unwrap_err().raw_os_error(),
            Some(libc::ENOENT)
        );
        ack[..4].copy_from_slice(&0i32.to_ne_bytes());
        assert!(error_of(&ack).is_ok());
    }
}
