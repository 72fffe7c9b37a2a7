//! The socket programs' clock of a socket (`SOCK_SEEN`: when it last exchanged a datagram
//! with its backend, whole seconds of the kernel's monotonic clock), written from a test as
//! another CPU's `recvmsg` may write it: after the clock was read for a `sendmsg`.

use std::os::fd::{AsFd, AsRawFd as _};

use anyhow::{Context as _, Result, bail};
use lb_userspace::dataplane::sys_bpf;

/// The map's name as the kernel keeps it.
const MAP_NAME: &str = "SOCK_SEEN";

/// `BPF_MAP_LOOKUP_ELEM` and `BPF_MAP_UPDATE_ELEM`.
const LOOKUP_ELEM: libc::c_long = 1;
const UPDATE_ELEM: libc::c_long = 2;
/// `BPF_EXIST`: the socket's value must be there already.
const EXIST: u64 = 2;

/// The element member of the kernel's `union bpf_attr`.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Moves `socket`'s time in `SOCK_SEEN` `ahead_s` seconds into the future; the time it held.
/// The map is the one that has a time for this socket (its `sendmsg` went through it), among
/// every map of that name loaded (another test's programs may have one too).
pub fn stamp_socket_ahead(socket: &impl AsFd, ahead_s: u32) -> Result<u32> {
    let socket_fd: i32 = socket.as_fd().as_raw_fd();
    for info in aya::maps::loaded_maps() {
        let info = info.context("listing the loaded maps")?;
        if info.name_as_str() != Some(MAP_NAME) {
            continue;
        }
        let map = info.fd().context("opening SOCK_SEEN")?;
        let map_fd = map.as_fd().as_raw_fd() as u32;
        let mut seen: u32 = 0;
        let mut lookup = ElemAttr {
            map_fd,
            _pad: 0,
            key: std::ptr::from_ref(&socket_fd) as u64,
            value: std::ptr::from_mut(&mut seen) as u64,
            flags: 0,
        };
        // SAFETY: the element layout of `bpf_attr`; key and value point at live values of
        // the map's sizes (a socket fd, a u32).
        if unsafe { sys_bpf(LOOKUP_ELEM, &mut lookup) }.is_err() {
            continue;
        }
        let ahead = seen + ahead_s;
        let mut update = ElemAttr {
            map_fd,
            _pad: 0,
            key: std::ptr::from_ref(&socket_fd) as u64,
            value: std::ptr::from_ref(&ahead) as u64,
            flags: EXIST,
        };
        // SAFETY: as above.
        unsafe { sys_bpf(UPDATE_ELEM, &mut update) }.context("writing SOCK_SEEN")?;
        return Ok(seen);
    }
    bail!("no {MAP_NAME} map holds a time for socket fd {socket_fd}: has it sent a datagram?")
}
