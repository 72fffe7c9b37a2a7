//! Shared memory mappings of mmapable BPF arrays (BPF_F_MMAPABLE): the selection tables
//! (`tables`), `CONNTRACK_FILTER` (`conntrack_filter`) and the endpoint filters
//! (`endpoint_filters`) are written through them.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    sync::atomic::AtomicU64,
};

use aya::maps::MapData;

use super::DataplaneError;

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

/// An mmapable BPF array of `u64` words, mapped into this process: its words are read and
/// set atomically beside the kernel's (`CONNTRACK_FILTER`, the endpoint filters).
pub(super) struct MappedWords {
    words: *const AtomicU64,
    len: u32,
    mapped: usize,
}

// SAFETY: the mapping belongs to this value alone and every access to it is atomic.
unsafe impl Send for MappedWords {}
// SAFETY: as above: shared references only do atomic operations.
unsafe impl Sync for MappedWords {}

impl MappedWords {
    /// Maps the array behind `map` (the map `name`), whole.
    pub(super) fn open(map: &MapData, name: &'static str) -> Result<Self, DataplaneError> {
        let err = |message: String| DataplaneError::MapValue { name, message };
        let info = map
            .info()
            .map_err(|error| DataplaneError::Map { name, error })?;
        if info.value_size() != 8 {
            return Err(err(format!(
                "values of {} bytes, not 8-byte words: lb-ebpf and lb-userspace are out of step",
                info.value_size()
            )));
        }
        let len = info.max_entries();
        let mapped = page_rounded(len as usize * std::mem::size_of::<u64>());
        // SAFETY: where the kernel chooses, the array's own size rounded up to pages.
        let base =
            unsafe { map_shared(map.fd().as_fd().as_raw_fd(), mapped, std::ptr::null_mut()) }
                .map_err(|e| err(format!("mapping it into memory: {e}")))?;
        Ok(Self {
            words: base.cast::<AtomicU64>(),
            len,
            mapped,
        })
    }

    /// Words in the array.
    pub(super) fn len(&self) -> u32 {
        self.len
    }

    pub(super) fn word(&self, index: u32) -> &AtomicU64 {
        assert!(
            index < self.len,
            "word {index} of {} out of range",
            self.len
        );
        // SAFETY: within the mapping (checked above), 8-byte aligned (page-aligned base).
        unsafe { &*self.words.add(index as usize) }
    }
}

impl Drop for MappedWords {
    fn drop(&mut self) {
        // SAFETY: the mapping `open` made, unmapped once.
        unsafe { libc::munmap(self.words as *mut libc::c_void, self.mapped) };
    }
}
