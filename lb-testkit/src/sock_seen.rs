//! The socket programs' clock of a socket (`SOCK_SEEN`: when it last exchanged a datagram
//! with its backend, whole seconds of the kernel's monotonic clock), written from a test as
//! another CPU's `recvmsg` may write it: after the clock was read for a `sendmsg`.

use std::os::fd::AsRawFd;

use anyhow::{Context as _, Result, bail};
use aya::maps::{Map, MapData, SkStorage};

/// The map's name as the kernel keeps it.
const MAP_NAME: &str = "SOCK_SEEN";
/// `BPF_EXIST`: the socket's value must be there already.
const EXIST: u64 = 2;

/// Moves `socket`'s time in `SOCK_SEEN` `ahead_s` seconds into the future; the time it held.
/// The map is the one that has a time for this socket (its `sendmsg` went through it), among
/// every map of that name loaded (another test's programs may have one too).
pub fn stamp_socket_ahead(socket: &impl AsRawFd, ahead_s: u32) -> Result<u32> {
    for info in aya::maps::loaded_maps() {
        let info = info.context("listing the loaded maps")?;
        if info.name_as_str() != Some(MAP_NAME) {
            continue;
        }
        let data = MapData::from_id(info.id()).context("opening SOCK_SEEN")?;
        let mut seen: SkStorage<MapData, u32> =
            SkStorage::try_from(Map::SkStorage(data)).context("SOCK_SEEN's layout")?;
        let Ok(was) = seen.get(socket, 0) else {
            continue;
        };
        seen.insert(socket, was + ahead_s, EXIST)
            .context("writing SOCK_SEEN")?;
        return Ok(was);
    }
    bail!(
        "no {MAP_NAME} map holds a time for socket fd {}: has it sent a datagram?",
        socket.as_raw_fd()
    )
}
