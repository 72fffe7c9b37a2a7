//! Which device a pinned XDP or tcx link is attached to. Pins are named after the interface,
//! but the kernel's link follows its device: an interface renamed (`ip link set eth1 name
//! eth9`) and another made under the old name leaves the pin `eth1` attached to `eth9`, alive,
//! so swapping a program into it would serve `eth9` and leave the new `eth1` without one.

use std::{
    ffi::CString,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::Path,
};

use tracing::warn;

use super::{DataplaneError, batch::sys_bpf, pin::LinkKind, remove_pin};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_DETACH: libc::c_long = 34;
const BPF_LINK_TYPE_XDP: u32 = 6;
const BPF_LINK_TYPE_TCX: u32 = 11;

/// The `BPF_OBJ_*` member of the kernel's `union bpf_attr`.
#[repr(C)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// The `info` member of the kernel's `union bpf_attr`.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The kernel's `struct bpf_link_info` as far as an XDP or tcx link's device: the union after
/// `type`, `id` and `prog_id` starts at offset 16, since it holds 8-byte aligned members, and
/// both links' structs in it begin with `ifindex`. The kernel fills only the length given.
#[repr(C)]
#[derive(Default)]
struct LinkInfoHead {
    link_type: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    ifindex: u32,
}

/// Before the link pinned at `path` is adopted for `interface` (index `ifindex`): when it is
/// attached to another device, detaches it there and removes its pin, so that the caller
/// attaches afresh. A dead link (its device deleted: ifindex 0) or a pin that is not a link
/// of `kind` is left to the caller, which replaces or refuses it.
pub(super) fn release_if_elsewhere(
    path: &Path,
    kind: LinkKind,
    interface: &str,
    ifindex: u32,
) -> Result<(), DataplaneError> {
    let read_error = |e: std::io::Error| {
        DataplaneError::Pin(format!(
            "reading the pinned {} link {} for `{interface}`: {e} (if the pin is damaged, run \
             `lbd cleanup` with this pin directory)",
            kind.label(),
            path.display()
        ))
    };
    let link = match open_pin(path) {
        Ok(link) => link,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(read_error(e)),
    };
    // A pinned program or map would fill another info struct, whose fields at the same
    // offsets mean something else: only a link is asked.
    if !is_link(link.as_fd()) {
        return Ok(());
    }
    let info = link_info(link.as_fd()).map_err(read_error)?;
    let want_type = match kind {
        LinkKind::Xdp => BPF_LINK_TYPE_XDP,
        LinkKind::Tc => BPF_LINK_TYPE_TCX,
    };
    if info.link_type != want_type || info.ifindex == 0 || info.ifindex == ifindex {
        return Ok(());
    }
    warn!(
        interface,
        pinned_ifindex = info.ifindex,
        ifindex,
        "the pinned {} link of `{interface}` is attached to another device, index {} ({}), \
         not to `{interface}` (index {ifindex}): the interface it was made for was renamed or \
         moved, and another made under its name; detaching it there and attaching afresh",
        kind.label(),
        info.ifindex,
        interface_name(info.ifindex)
            .map_or_else(|| "gone".to_owned(), |name| format!("now `{name}`")),
    );
    // Detached now, whoever else holds the link (this lbd's own descriptor, when it follows
    // an interface made again); removing the pin alone would wait for the last holder.
    let mut detach = LinkFdAttr {
        link_fd: link.as_raw_fd() as u32,
    };
    // SAFETY: the attribute is the kernel's `link_detach` layout; it holds no pointer.
    if let Err(e) = unsafe { sys_bpf(BPF_LINK_DETACH, &mut detach) } {
        warn!(
            interface,
            "detaching the pinned {} link from index {} failed ({e}); it detaches once its pin \
             is removed and nothing else holds it",
            kind.label(),
            info.ifindex
        );
    }
    remove_pin(path)
}

/// The ids of the programs running in the links pinned under `links`, at any depth (the
/// interfaces' and the cgroups' links). A pin that is not a link, or cannot be read, is
/// skipped: what is asked is which programs may still run, not whether the pins are sound.
pub(super) fn pinned_link_programs(links: &Path) -> std::collections::BTreeSet<u32> {
    let mut programs = std::collections::BTreeSet::new();
    let Ok(entries) = std::fs::read_dir(links) else {
        return programs;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            programs.extend(pinned_link_programs(&path));
            continue;
        }
        let Ok(link) = open_pin(&path) else { continue };
        if is_link(link.as_fd())
            && let Ok(info) = link_info(link.as_fd())
            && info.prog_id != 0
        {
            programs.insert(info.prog_id);
        }
    }
    programs
}

/// Before `interface` (index `ifindex`) is attached, when it has no pinned link of `kind` at
/// `path` (its name's): a pinned link of `kind` in `links` (that kind's pin directory) attached
/// to `ifindex` under another name, the interface's before it was renamed while no lbd ran, is
/// renamed to `path`, so that the caller adopts it. Attaching afresh would find meshlb's own
/// program on the device, pinned under the old name, in the way.
pub(super) fn adopt_renamed(
    links: &Path,
    path: &Path,
    kind: LinkKind,
    interface: &str,
    ifindex: u32,
) -> Result<(), DataplaneError> {
    if std::fs::symlink_metadata(path).is_ok() {
        return Ok(());
    }
    let Ok(entries) = std::fs::read_dir(links) else {
        return Ok(());
    };
    let want_type = match kind {
        LinkKind::Xdp => BPF_LINK_TYPE_XDP,
        LinkKind::Tc => BPF_LINK_TYPE_TCX,
    };
    for entry in entries.flatten() {
        let pinned = entry.path();
        let Ok(link) = open_pin(&pinned) else {
            continue;
        };
        if !is_link(link.as_fd()) {
            continue;
        }
        let Ok(info) = link_info(link.as_fd()) else {
            continue;
        };
        if info.link_type != want_type || info.ifindex != ifindex {
            continue;
        }
        std::fs::rename(&pinned, path).map_err(|e| {
            DataplaneError::Pin(format!(
                "renaming the pinned {} link {} to {} for `{interface}`, which it is attached                  to (the interface was renamed): {e}; check the pin directory's permissions,                  or run `lbd cleanup` with this pin directory (this forgets tracked flows)",
                kind.label(),
                pinned.display(),
                path.display()
            ))
        })?;
        tracing::info!(
            interface,
            ifindex,
            pinned = %pinned.display(),
            "the pinned {} link of this device was pinned under its name before a rename:              adopted under its name now",
            kind.label()
        );
        return Ok(());
    }
    Ok(())
}

/// The `link_detach` member of the kernel's `union bpf_attr`.
#[repr(C)]
struct LinkFdAttr {
    link_fd: u32,
}

/// Whether `fd` is a BPF link (the kernel's fdinfo of one names its `link_type`).
fn is_link(fd: BorrowedFd<'_>) -> bool {
    std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))
        .is_ok_and(|info| info.lines().any(|l| l.starts_with("link_type:")))
}

/// A new descriptor of the object pinned at `path`.
fn open_pin(path: &Path) -> std::io::Result<OwnedFd> {
    let name = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut attr = ObjAttr {
        pathname: name.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    // SAFETY: `pathname` points at a live NUL-terminated string; the attribute is the
    // kernel's `BPF_OBJ_*` layout.
    let fd = unsafe { sys_bpf(BPF_OBJ_GET, &mut attr) }?;
    // SAFETY: BPF_OBJ_GET returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn link_info(link: BorrowedFd<'_>) -> std::io::Result<LinkInfoHead> {
    let mut info = LinkInfoHead::default();
    let mut attr = InfoAttr {
        bpf_fd: link.as_raw_fd() as u32,
        info_len: std::mem::size_of::<LinkInfoHead>() as u32,
        info: std::ptr::from_mut(&mut info) as u64,
    };
    // SAFETY: `info` points at a live buffer of `info_len` bytes; the attribute is the
    // kernel's `info` layout.
    unsafe { sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) }?;
    Ok(info)
}

/// The name of interface `ifindex` in this namespace, if there is one.
fn interface_name(ifindex: u32) -> Option<String> {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `name` has room for IF_NAMESIZE bytes, as if_indextoname writes at most.
    let found = unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) };
    if found.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into `name`.
    let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use aya_obj::generated::{
        bpf_attr, bpf_attr__bindgen_ty_5 as obj, bpf_attr__bindgen_ty_9 as info,
        bpf_attr__bindgen_ty_16 as link_detach, bpf_link_info,
        bpf_link_info__bindgen_ty_1__bindgen_ty_6 as xdp,
        bpf_link_info__bindgen_ty_1__bindgen_ty_12 as tcx, bpf_link_type,
    };

    use super::*;

    /// The layouts written by hand above are the kernel's (aya's bindings are generated from
    /// its headers; union members start at offset 0).
    #[test]
    fn the_hand_written_layouts_are_the_kernels() {
        assert_eq!(
            offset_of!(LinkInfoHead, ifindex),
            offset_of!(bpf_link_info, __bindgen_anon_1)
        );
        assert_eq!(offset_of!(LinkInfoHead, ifindex), 16);
        assert_eq!((offset_of!(xdp, ifindex), offset_of!(tcx, ifindex)), (0, 0));
        assert_eq!(bpf_link_type::BPF_LINK_TYPE_XDP as u32, BPF_LINK_TYPE_XDP);
        assert_eq!(bpf_link_type::BPF_LINK_TYPE_TCX as u32, BPF_LINK_TYPE_TCX);
        assert_eq!(
            (offset_of!(ObjAttr, bpf_fd), offset_of!(ObjAttr, path_fd)),
            (offset_of!(obj, bpf_fd), offset_of!(obj, path_fd))
        );
        assert_eq!(size_of::<ObjAttr>(), size_of::<obj>());
        assert_eq!(
            (offset_of!(InfoAttr, info_len), offset_of!(InfoAttr, info)),
            (offset_of!(info, info_len), offset_of!(info, info))
        );
        assert_eq!(size_of::<LinkFdAttr>(), size_of::<link_detach>());
        assert!(size_of::<ObjAttr>() <= size_of::<bpf_attr>());
        use aya_obj::generated::bpf_cmd;
        assert_eq!(
            [BPF_OBJ_GET, BPF_OBJ_GET_INFO_BY_FD, BPF_LINK_DETACH],
            [
                bpf_cmd::BPF_OBJ_GET as libc::c_long,
                bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
                bpf_cmd::BPF_LINK_DETACH as libc::c_long,
            ]
        );
    }
}
