//! Socket-level balancing (lb-ebpf's `sock` module): the cgroup `sock_addr` programs, attached
//! to a cgroup v2 directory (by default the root of the cgroup2 mount, so every process of the
//! node), pinned like the interface links so that a restarted `lbd` swaps its programs into
//! them and `lbd cleanup` detaches them.
//!
//! Pins: `links/cgroup/<cgroup path, encoded>/<program name>`.

use std::{
    os::fd::{AsFd, AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    maps::HashMap as AyaHashMap,
    programs::{
        CgroupAttachMode, CgroupSockAddr,
        links::{FdLink, PinnedLink},
    },
};
use lb_common::maps::{names, programs, sock_netns};
use tracing::{info, warn};

use super::{Dataplane, DataplaneError, pin, program, with_causes};

/// Where the socket-level programs were attached.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SocketAttachment {
    pub cgroup: PathBuf,
    /// The programs were swapped into links a previous `lbd` pinned.
    pub adopted: bool,
    /// The network namespace (cookie) whose sockets are translated: lbd's own.
    pub netns_cookie: u64,
}

/// The first cgroup v2 mount in `/proc/mounts` (`/sys/fs/cgroup` on a unified host,
/// `/sys/fs/cgroup/unified` on a hybrid one), or `None` without cgroup v2.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    cgroup2_in(&mounts)
}

fn cgroup2_in(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        // /proc/mounts writes spaces in paths as \040.
        (fstype == "cgroup2").then(|| PathBuf::from(dir.replace("\\040", " ")))
    })
}

/// The cookie of this process's network namespace (SO_NETNS_COOKIE, Linux 5.14+), the value
/// `bpf_get_netns_cookie` gives the programs for its sockets.
pub fn netns_cookie() -> std::io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")
        .or_else(|_| std::net::UdpSocket::bind("[::1]:0"))?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// The cookie of the network namespace process `pid` lives in: read from a thread that
/// enters that namespace for the moment (setns moves only the calling thread).
pub fn netns_cookie_of(pid: u32) -> std::io::Result<u64> {
    in_netns_of(pid, netns_cookie)
}

/// Runs `f` on a thread of its own in process `pid`'s network namespace (only the network
/// namespace: the mounts stay this process's).
pub(super) fn in_netns_of<T: Send>(
    pid: u32,
    f: impl FnOnce() -> std::io::Result<T> + Send,
) -> std::io::Result<T> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // SAFETY: setns on a namespace file descriptor we hold; it affects this
                // thread only, which ends right after.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                f()
            })
            .join()
            .map_err(|_| std::io::Error::other("the namespace thread panicked"))?
    })
}

/// No flags: the kernel refuses any on a cgroup link, and a link always runs beside the
/// cgroup's other programs (as BPF_F_ALLOW_MULTI would), so systemd's or Docker's stay.
const LINK_MODE: CgroupAttachMode = CgroupAttachMode::Single;

impl Dataplane {
    /// Loads the socket-level programs and attaches them to `cgroup` (a cgroup v2 directory),
    /// for sockets of this process's network namespace. With a pin directory, links a
    /// previous `lbd` pinned for the same cgroup get the new programs (no moment without
    /// them); those it pinned for another cgroup are detached.
    pub fn attach_sockets(&mut self, cgroup: &Path) -> Result<&SocketAttachment, DataplaneError> {
        let cgroup_error = |e: std::io::Error| {
            DataplaneError::Pin(format!(
                "opening cgroup {}: {e} (give --cgroup a cgroup v2 directory, e.g. the cgroup2 \
                 mount from /proc/mounts, or --socket-lb off)",
                cgroup.display()
            ))
        };
        let cgroup_dir = std::fs::File::open(cgroup).map_err(cgroup_error)?;
        // One spelling of the directory (`/sys/fs/cgroup/` and `/sys/fs/cgroup` alike), since
        // its pins are found by name: another spelling would leave the last lbd's links
        // attached beside new ones, its programs running first at every connect().
        let canonical = std::fs::canonicalize(cgroup).map_err(cgroup_error)?;
        let cgroup = canonical.as_path();
        let netns = netns_cookie().map_err(|e| {
            DataplaneError::Pin(format!(
                "reading this network namespace's cookie (SO_NETNS_COOKIE needs Linux 5.14): {e}"
            ))
        })?;
        let mut allowed: AyaHashMap<_, u64, u32> =
            AyaHashMap::try_from(self.ebpf.map_mut(names::SOCK_NETNS).ok_or(
                DataplaneError::Missing {
                    kind: "map",
                    name: names::SOCK_NETNS,
                },
            )?)
            .map_err(|error| DataplaneError::Map {
                name: names::SOCK_NETNS,
                error,
            })?;
        allowed
            .insert(netns, sock_netns::NODE, 0)
            .map_err(|error| DataplaneError::Map {
                name: names::SOCK_NETNS,
                error,
            })?;
        let dir = self.pin_dir.clone();
        if let Some(dir) = &dir {
            release_other_cgroups(dir, Some(cgroup))?;
        }
        let mut adopted = true;
        for name in programs::SOCK_ALL {
            let prog: &mut CgroupSockAddr = program(&mut self.ebpf, name)?;
            prog.load()
                .map_err(|error| DataplaneError::Verify { name, error })?;
            let attach_error = |e: &dyn std::error::Error| {
                DataplaneError::Pin(format!(
                    "attaching {name} to cgroup {}: {}",
                    cgroup.display(),
                    with_causes(e)
                ))
            };
            let Some(dir) = &dir else {
                // Held by aya: detached when the Dataplane is dropped.
                prog.attach(&cgroup_dir, LINK_MODE)
                    .map_err(|e| attach_error(&e))?;
                adopted = false;
                continue;
            };
            let path = pin::cgroup_link_path(dir, cgroup, name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| {
                    DataplaneError::Pin(format!("creating {}: {e}", parent.display()))
                })?;
            }
            let prog_fd = prog.fd().map_err(|e| attach_error(&e))?;
            let swapped = path.exists()
                && match link_update(&path, prog_fd.as_fd()) {
                    Ok(()) => true,
                    Err(e) => {
                        warn!(
                            program = name,
                            "the pinned cgroup link is unusable ({e}); attaching afresh"
                        );
                        std::fs::remove_file(&path).map_err(|e| {
                            DataplaneError::Pin(format!("removing {}: {e}", path.display()))
                        })?;
                        false
                    }
                };
            if !swapped {
                adopted = false;
                let id = prog
                    .attach(&cgroup_dir, LINK_MODE)
                    .map_err(|e| attach_error(&e))?;
                let link = prog.take_link(id).map_err(|e| attach_error(&e))?;
                let fd = FdLink::try_from(link).map_err(|e| attach_error(&e))?;
                drop(fd.pin(&path).map_err(|e| attach_error(&e))?);
            }
            let link = PinnedLink::from_pin(&path).map_err(|e| attach_error(&e))?;
            self._pinned_links.insert(path, link);
        }
        info!(
            cgroup = %cgroup.display(),
            netns_cookie = netns,
            adopted,
            programs = programs::SOCK_ALL.len(),
            "socket-level balancing attached (connect, sendmsg, recvmsg, getpeername; IPv4 and IPv6)"
        );
        self.sockets = Some(SocketAttachment {
            cgroup: cgroup.to_owned(),
            adopted,
            netns_cookie: netns,
        });
        Ok(self.sockets.as_ref().expect("just set"))
    }

    /// Detaches socket-level links a previous `lbd` pinned (socket-level balancing is off).
    /// Returns whether there were any.
    pub fn release_sockets(&mut self) -> Result<bool, DataplaneError> {
        match &self.pin_dir {
            Some(dir) => release_other_cgroups(dir, None),
            None => Ok(false),
        }
    }

    pub fn socket_attachment(&self) -> Option<&SocketAttachment> {
        self.sockets.as_ref()
    }

    /// Makes the other namespaces whose sockets are translated exactly `wanted` (cookie to
    /// scope mask, see `sock_netns`); the node's own entry stays. Only differences are written.
    pub fn set_socket_namespaces(
        &mut self,
        wanted: &std::collections::BTreeMap<u64, u32>,
    ) -> Result<(), DataplaneError> {
        let Some(node) = self.sockets.as_ref().map(|s| s.netns_cookie) else {
            return Ok(());
        };
        let map_error = |error| DataplaneError::Map {
            name: names::SOCK_NETNS,
            error,
        };
        let mut map: AyaHashMap<_, u64, u32> =
            AyaHashMap::try_from(self.ebpf.map_mut(names::SOCK_NETNS).ok_or(
                DataplaneError::Missing {
                    kind: "map",
                    name: names::SOCK_NETNS,
                },
            )?)
            .map_err(map_error)?;
        let present: Vec<(u64, u32)> = map.iter().filter_map(Result::ok).collect();
        for (cookie, _) in &present {
            if *cookie != node && !wanted.contains_key(cookie) {
                map.remove(cookie).map_err(map_error)?;
            }
        }
        for (cookie, mask) in wanted {
            if *cookie == node || present.contains(&(*cookie, *mask)) {
                continue;
            }
            map.insert(cookie, mask, 0).map_err(map_error)?;
        }
        Ok(())
    }
}

/// Removes the pinned links of every cgroup but `keep`; whether there were any.
fn release_other_cgroups(dir: &Path, keep: Option<&Path>) -> Result<bool, DataplaneError> {
    let mut released = false;
    // Kept by its pin directory, not by `Path` equality, which takes `/sys/fs/cgroup/` for
    // `/sys/fs/cgroup`: links pinned under another spelling are another set of links.
    let kept = keep.map(|k| pin::cgroup_pin_dir(dir, k));
    for (cgroup, path) in pin::pinned_cgroups(dir) {
        if kept.as_deref().is_some_and(|k| k == path) {
            continue;
        }
        std::fs::remove_dir_all(&path)
            .map_err(|e| DataplaneError::Pin(format!("removing {}: {e}", path.display())))?;
        info!(cgroup = %cgroup.display(), "socket-level programs detached from this cgroup");
        released = true;
    }
    Ok(released)
}

/// Puts `prog` into the pinned link at `path` (BPF_LINK_UPDATE; aya offers it only for XDP
/// and tcx links).
fn link_update(path: &Path, prog: std::os::fd::BorrowedFd<'_>) -> std::io::Result<()> {
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_UPDATE: libc::c_long = 29;
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    #[repr(C)]
    struct LinkUpdate {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut get = ObjGet {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: the bpf syscall reads `get` (its layout the kernel's) and the path it points to.
    let fd = unsafe { super::batch::sys_bpf(BPF_OBJ_GET, &mut get) }?;
    // SAFETY: a new descriptor the kernel just gave us.
    let link = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut update = LinkUpdate {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: prog.as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    // SAFETY: the bpf syscall reads `update` (its layout the kernel's).
    unsafe { super::batch::sys_bpf(BPF_LINK_UPDATE, &mut update) }.map(drop)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_cgroup2_mount_is_found_in_a_hybrid_layout() {
        let mounts = "sysfs /sys sysfs rw 0 0\n\
                      tmpfs /sys/fs/cgroup tmpfs ro 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nsdelegate 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n";
        assert_eq!(
            super::cgroup2_in(mounts).unwrap(),
            std::path::Path::new("/sys/fs/cgroup/unified")
        );
        assert_eq!(super::cgroup2_in("cgroup /x cgroup rw 0 0\n"), None);
    }
}
