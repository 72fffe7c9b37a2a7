//! What rtnetlink says of an interface: the mode its XDP program runs in (`IFLA_XDP_ATTACHED`;
//! an adopted link was attached by an earlier `lbd`, perhaps with another `--xdp-mode`: its
//! mode is read, not assumed), and its kind (`IFLA_INFO_KIND`: "veth", "bridge", none for a
//! NIC), which `--xdp-mode auto` goes by.

use std::io;

use super::XdpMode;

const RTM_GETLINK: u16 = 18;
const RTM_NEWLINK: u16 = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_ATTACHED: u16 = 2;
const XDP_ATTACHED_DRV: u8 = 1;
const XDP_ATTACHED_SKB: u8 = 2;
/// The nested-attribute flag bits of `rta_type`.
const NLA_TYPE_MASK: u16 = 0x3fff;

/// `Some(Native | Generic)` when an XDP program is attached to `ifindex` in that mode, `None`
/// when none is (or it runs offloaded or in several modes, which meshlb never does).
pub fn attached_mode(ifindex: u32) -> io::Result<Option<XdpMode>> {
    parse(&link_message(ifindex)?)
}

/// The interface's kind as `ip -d link` shows it ("veth", "bridge", ...); `None` for a
/// device without one (a NIC).
pub fn link_kind(ifindex: u32) -> io::Result<Option<String>> {
    parse_kind(&link_message(ifindex)?)
}

/// The kernel's RTM_NEWLINK answer about `ifindex`.
fn link_message(ifindex: u32) -> io::Result<Vec<u8>> {
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor nothing else owns.
    let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);

    // nlmsghdr (16 bytes) + ifinfomsg (16 bytes).
    let mut request = [0u8; 32];
    request[0..4].copy_from_slice(&32u32.to_ne_bytes());
    request[4..6].copy_from_slice(&RTM_GETLINK.to_ne_bytes());
    request[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    request[8..12].copy_from_slice(&1u32.to_ne_bytes());
    request[16] = libc::AF_UNSPEC as u8;
    request[20..24].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    // SAFETY: send from a live buffer of the given length.
    if unsafe { libc::send(fd, request.as_ptr().cast(), request.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut reply = vec![0u8; 64 * 1024];
    // SAFETY: recv into a live buffer of the given length.
    let n = unsafe { libc::recv(fd, reply.as_mut_ptr().cast(), reply.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    reply.truncate(n as usize);
    Ok(reply)
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// Attributes (`rtattr`: length, type, value, padded to 4 bytes) as (type, value).
fn attributes(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16_at(bytes, 0)?);
        let kind = u16_at(bytes, 2)? & NLA_TYPE_MASK;
        let value = bytes.get(4..len)?;
        bytes = bytes.get(len.next_multiple_of(4)..).unwrap_or(&[]);
        Some((kind, value))
    })
}

/// The link's attributes in an RTM_NEWLINK reply (or the error it carries instead).
fn link_attributes(reply: &[u8]) -> io::Result<&[u8]> {
    let malformed = || io::Error::new(io::ErrorKind::InvalidData, "malformed rtnetlink reply");
    let len = u32_at(reply, 0).ok_or_else(malformed)? as usize;
    match u16_at(reply, 4).ok_or_else(malformed)? {
        NLMSG_ERROR => {
            let errno = u32_at(reply, 16).ok_or_else(malformed)? as i32;
            return Err(io::Error::from_raw_os_error(-errno));
        }
        RTM_NEWLINK => {}
        _ => return Err(malformed()),
    }
    // nlmsghdr (16) + ifinfomsg (16), then the link's attributes.
    reply.get(32..len.min(reply.len())).ok_or_else(malformed)
}

fn parse_kind(reply: &[u8]) -> io::Result<Option<String>> {
    let attrs = link_attributes(reply)?;
    let Some((_, info)) = attributes(attrs).find(|(kind, _)| *kind == IFLA_LINKINFO) else {
        return Ok(None);
    };
    Ok(attributes(info)
        .find(|(kind, _)| *kind == IFLA_INFO_KIND)
        .map(|(_, value)| {
            let name = value.split(|b| *b == 0).next().unwrap_or_default();
            String::from_utf8_lossy(name).into_owned()
        }))
}

fn parse(reply: &[u8]) -> io::Result<Option<XdpMode>> {
    let attrs = link_attributes(reply)?;
    let Some((_, xdp)) = attributes(attrs).find(|(kind, _)| *kind == IFLA_XDP) else {
        return Ok(None);
    };
    let attached = attributes(xdp)
        .find(|(kind, _)| *kind == IFLA_XDP_ATTACHED)
        .and_then(|(_, value)| value.first().copied());
    Ok(match attached {
        Some(XDP_ATTACHED_DRV) => Some(XdpMode::Native),
        Some(XDP_ATTACHED_SKB) => Some(XdpMode::Generic),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(value);
        out.resize(out.len().next_multiple_of(4), 0);
        out
    }

    fn reply(attrs: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; 32];
        out[0..4].copy_from_slice(&((32 + attrs.len()) as u32).to_ne_bytes());
        out[4..6].copy_from_slice(&RTM_NEWLINK.to_ne_bytes());
        out.extend_from_slice(attrs);
        out
    }

    #[test]
    fn the_attached_mode_is_read_from_the_nested_xdp_attribute() {
        let name = attr(3, b"eth0\0");
        for (attached, mode) in [
            (XDP_ATTACHED_DRV, Some(XdpMode::Native)),
            (XDP_ATTACHED_SKB, Some(XdpMode::Generic)),
            (0, None),
        ] {
            let xdp = attr(
                IFLA_XDP | 0x8000,
                &[
                    attr(IFLA_XDP_ATTACHED, &[attached]),
                    attr(4, &7u32.to_ne_bytes()),
                ]
                .concat(),
            );
            let bytes = reply(&[name.clone(), xdp].concat());
            assert_eq!(parse(&bytes).unwrap(), mode);
        }
        assert_eq!(parse(&reply(&name)).unwrap(), None);
        let mut error = reply(&[]);
        error[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        error[16..20].copy_from_slice(&(-libc::ENODEV).to_ne_bytes());
        assert_eq!(
            parse(&error).unwrap_err().raw_os_error(),
            Some(libc::ENODEV)
        );
        assert!(parse(&[1, 2, 3]).is_err());
    }

    // The kernel's own answer for a real veth is checked end to end: the e2e test
    // `nothing_is_lost_across_ten_reloads_and_a_kill_and_restart` asserts that auto attaches
    // generic XDP to the test kit's veth (were the kind not read, native would attach and it fails).
    #[test]
    fn the_kind_is_read_from_the_nested_link_info_attribute() {
        let name = attr(3, b"mlb-cli\0");
        let info = attr(
            IFLA_LINKINFO | 0x8000,
            &[attr(IFLA_INFO_KIND, b"veth\0"), attr(2, &[0; 8])].concat(),
        );
        let bytes = reply(&[name.clone(), info].concat());
        assert_eq!(parse_kind(&bytes).unwrap().as_deref(), Some("veth"));
        assert_eq!(parse_kind(&reply(&name)).unwrap(), None);
    }
}
