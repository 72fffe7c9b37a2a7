//! Whole Ethernet frames sent out of an interface as they are (an `AF_PACKET` socket): for
//! traffic the stack's own sockets would not send (spoofed sources, crafted headers).

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

pub struct FrameSocket {
    fd: OwnedFd,
    to: libc::sockaddr_ll,
}

impl FrameSocket {
    /// A socket sending out of `interface` of the calling thread's network namespace.
    pub fn open(interface: &str) -> io::Result<FrameSocket> {
        let name = std::ffi::CString::new(interface)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: a plain call on a NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no interface {interface}"),
            ));
        }
        // SAFETY: a plain call; the descriptor is owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor just made and owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid start.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_ifindex = index as i32;
        to.sll_halen = 6;
        Ok(FrameSocket { fd, to })
    }

    /// Sends `frame` (its Ethernet header included); an error when the interface does not
    /// take it whole (its queue full, say).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: the buffer and the address outlive the call.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const self.to).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if sent != frame.len() as isize {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
