//! `bpf(2)` called directly, for tests that make maps aya will not: of another tool's, or of
//! a layout an older meshlb pinned.

use std::{io, path::Path};

pub const MAP_CREATE: libc::c_long = 0;
pub const MAP_UPDATE_ELEM: libc::c_long = 2;
pub const OBJ_PIN: libc::c_long = 6;
pub const MAP_TYPE_ARRAY: u64 = 2;

/// `bpf(command, attr)`; `attr` is a zeroed `bpf_attr`-sized buffer the caller set up for
/// `command` (pointers in it to live values of the caller's).
pub fn bpf(command: libc::c_long, attr: &mut [u64; 16]) -> i64 {
    // SAFETY: as the doc says: the buffer is bpf_attr-sized, and what it points at lives.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    }
}

/// A new array map of `max_entries` values of `value_size` bytes (4-byte keys): its
/// descriptor.
pub fn create_array(value_size: u32, max_entries: u32) -> io::Result<i64> {
    let mut attr = [0u64; 16];
    // map_type | key_size << 32, value_size | max_entries << 32.
    attr[0] = MAP_TYPE_ARRAY | 4 << 32;
    attr[1] = u64::from(value_size) | u64::from(max_entries) << 32;
    let fd = bpf(MAP_CREATE, &mut attr);
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Pins the map behind `fd` at `path`, then closes `fd` (the pin keeps the map), pinned or
/// not.
pub fn pin(fd: i64, path: &Path) -> io::Result<()> {
    let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = [0u64; 16];
    attr[0] = name.as_ptr() as u64;
    attr[1] = fd as u64;
    let pinned = bpf(OBJ_PIN, &mut attr);
    let error = io::Error::last_os_error();
    // SAFETY: a descriptor the caller handed over and no longer uses.
    unsafe { libc::close(fd as i32) };
    if pinned != 0 {
        return Err(io::Error::new(
            error.kind(),
            format!("pinning {}: {error}", path.display()),
        ));
    }
    Ok(())
}
