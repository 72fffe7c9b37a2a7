//! Shared memory mappings of mmapable BPF arrays (BPF_F_MMAPABLE): the selection tables
//! (`tables`) and `CONNTRACK_FILTER` (`conntrack_filter`) are written through them.

/// `bytes` rounded up to whole pages: what the kernel backs for an array of that size, and
/// what a mapping of it spans.
pub(super) fn page_rounded(bytes: usize) -> usize {
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    bytes.div_ceil(page) * page
}

/// A shared, writable mapping of `mapped` bytes of the mmapable array behind `fd`: at `at`,
/// replacing what is there, or where the kernel chooses when `at` is null.
///
/// # Safety
/// A non-null `at` starts `mapped` bytes of this process's address space that nothing else
/// uses; `mapped` is at most what the kernel backs for the array (its size rounded up to
/// pages).
pub(super) unsafe fn map_shared(fd: i32, mapped: usize, at: *mut u8) -> std::io::Result<*mut u8> {
    let fixed = if at.is_null() { 0 } else { libc::MAP_FIXED };
    // SAFETY: the caller's promise.
    let p = unsafe {
        libc::mmap(
            at.cast(),
            mapped,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | fixed,
            fd,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(p.cast())
}
