//! Selection tables: built from the plan's specs on threads, written through a memory mapping,
//! and swapped into `SERVICE_TABLES` (an array of maps) many per call, or rewritten where the
//! kernel holds them.

use aya::maps::{Array, IterableMap as _, MapData};
use lb_common::maps::{SELECTION_TABLE_FLAGS, TABLE_LEN_SLOT, TableElement, names, table_elements};

use super::{DataplaneError, batch, maps::map_err};
use crate::plan::TableSpec;

/// Tables swapped in per `bpf` call: the call waits for one RCU grace period (milliseconds)
/// however many tables it swaps. Bounded so a writer holds few descriptors at once.
const TABLES_PER_SWAP: usize = 64;
/// Table-writing threads per CPU: while some wait for a grace period, the others build.
const TABLE_THREADS_PER_CPU: usize = 4;

/// Whether `set_tables` may rewrite a table where the kernel holds it. Only in a change that
/// removes no backend: a packet may still be reading a slot's old backend as it is rewritten,
/// which must stay a live backend, whereas a swap waits until no packet reads the old table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum InPlace {
    Allowed,
    Swap,
}

/// The jobs of `set_tables` that empty the tables of `ids`.
pub(super) fn emptied(ids: &[u32]) -> Vec<(u32, Option<&'static TableSpec>)> {
    ids.iter().map(|id| (*id, None)).collect()
}

/// Builds and swaps in the given tables (service id, what its table is built from; None: an
/// empty table). Threads build tables (a Maglev fill of the default size is a fifth of a
/// millisecond of CPU) and swap them in `TABLES_PER_SWAP` at a time: every swap call waits for
/// an RCU grace period (milliseconds), so one wait covers many tables, and while one thread
/// waits the others build. With `InPlace::Allowed`, a table the kernel holds at the same
/// length is rewritten where it is instead (`rewrite_in_place`).
pub(super) fn set_tables(
    outer: i32,
    jobs: &[(u32, Option<&TableSpec>)],
    in_place: InPlace,
) -> Result<(), DataplaneError> {
    let write = |chunk: &[(u32, Option<&TableSpec>)]| -> Result<(), DataplaneError> {
        for group in chunk.chunks(TABLES_PER_SWAP) {
            let mut ids = Vec::with_capacity(group.len());
            let mut tables = Vec::with_capacity(group.len());
            for (id, spec) in group {
                let backend_ids = match spec {
                    Some(spec) => spec.build().map_err(|error| DataplaneError::MapValue {
                        name: names::SERVICE_TABLES,
                        message: format!("building the table of service {id}: {error}"),
                    })?,
                    None => Vec::new(),
                };
                if in_place == InPlace::Allowed
                    && spec.is_some()
                    && rewrite_in_place(outer, *id, &backend_ids)
                {
                    continue;
                }
                ids.push(*id);
                tables.push(build_table(&backend_ids)?);
            }
            if ids.is_empty() {
                continue;
            }
            let fds: Vec<u32> = tables
                .iter()
                .map(|t| {
                    use std::os::fd::{AsFd as _, AsRawFd as _};
                    t.map().fd().as_fd().as_raw_fd() as u32
                })
                .collect();
            // The outer map holds its own references: the tables' descriptors close after.
            batch::update_fd(outer, names::SERVICE_TABLES, &ids, &fds)?;
        }
        Ok(())
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .saturating_mul(TABLE_THREADS_PER_CPU);
    if jobs.len() <= TABLES_PER_SWAP || threads <= 1 {
        return write(jobs);
    }
    let per_thread = jobs.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = jobs
            .chunks(per_thread)
            .map(|chunk| scope.spawn(move || write(chunk)))
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("table writer panicked"))
    })
}

/// A new inner table: slot 0 holds the length, then the backend ids, written through a
/// memory mapping of the array.
fn build_table(backend_ids: &[u32]) -> Result<Array<MapData, TableElement>, DataplaneError> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let len = u32::try_from(backend_ids.len())
        .ok()
        .filter(|len| *len < u32::MAX)
        .ok_or_else(|| DataplaneError::MapValue {
            name: names::SERVICE_TABLES,
            message: format!("a table of {} entries is too large", backend_ids.len()),
        })?;
    let elements = table_elements(len);
    let inner: Array<MapData, TableElement> =
        Array::create(elements, SELECTION_TABLE_FLAGS).map_err(map_err(names::SERVICE_TABLES))?;
    let slots = MappedSlots::map(inner.map().fd().as_fd().as_raw_fd(), elements).map_err(|e| {
        DataplaneError::MapValue {
            name: names::SERVICE_TABLES,
            message: format!("mapping a new table: {e}"),
        }
    })?;
    slots.set(TABLE_LEN_SLOT as usize, len);
    for (i, id) in backend_ids.iter().enumerate() {
        slots.set(i + 1, *id);
    }
    Ok(inner)
}

/// Writes service `id`'s new table over the one the kernel holds, when that one has the same
/// length (a Maglev table of the same size: a backend added or reweighted). Each slot is one
/// aligned 4-byte store, so a packet reads a slot's old or new backend, and both are live:
/// callers do this only in a change that removes no backend. Swapping in a new table instead
/// waits for an RCU grace period (milliseconds on this VM kind); this waits for nothing.
/// False, and nothing written, when there is no such table or anything about it is
/// unexpected: the caller swaps then.
fn rewrite_in_place(outer: i32, id: u32, backend_ids: &[u32]) -> bool {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let Ok(len) = u32::try_from(backend_ids.len()) else {
        return false;
    };
    let Ok(Some(inner_id)) = batch::inner_map_id(outer, id) else {
        return false;
    };
    let Ok(inner) = MapData::from_id(inner_id) else {
        return false;
    };
    let elements = table_elements(len);
    if inner.info().map(|i| i.max_entries()).ok() != Some(elements) {
        return false;
    }
    let Ok(slots) = MappedSlots::map(inner.fd().as_fd().as_raw_fd(), elements) else {
        return false;
    };
    if slots.get(TABLE_LEN_SLOT as usize) != len {
        return false;
    }
    // A packet that reads a new slot then looks its backend up: the backend entries the change
    // wrote before its tables must reach other CPUs first. x86 keeps stores in order anyway;
    // weaker CPUs need the fence.
    std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
    for (i, id) in backend_ids.iter().enumerate() {
        slots.set(i + 1, *id);
    }
    true
}

/// A table's slots (two per 8-byte element, back to back) mapped into memory, unmapped on
/// drop. Reads and writes are single volatile 4-byte accesses: the kernel program reads the
/// same memory meanwhile.
struct MappedSlots {
    base: *mut u32,
    slots: usize,
    mapped: usize,
}

impl MappedSlots {
    /// Maps the `elements` elements of the mmapable array behind `fd`.
    fn map(fd: i32, elements: u32) -> std::io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let bytes = elements as usize * std::mem::size_of::<TableElement>();
        let mapped = bytes.div_ceil(page) * page;
        // SAFETY: a fresh shared mapping of the map's memory; the kernel backs the size
        // rounded up to pages for an mmapable array of `elements` elements.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            base: p.cast(),
            slots: bytes / std::mem::size_of::<u32>(),
            mapped,
        })
    }

    fn get(&self, slot: usize) -> u32 {
        assert!(
            slot < self.slots,
            "slot {slot} of a table of {}",
            self.slots
        );
        // SAFETY: within the mapping (checked above), 4-byte aligned (page-aligned base).
        u32::from_le(unsafe { self.base.add(slot).read_volatile() })
    }

    fn set(&self, slot: usize, value: u32) {
        assert!(
            slot < self.slots,
            "slot {slot} of a table of {}",
            self.slots
        );
        // SAFETY: as in `get`; the mapping is writable.
        unsafe { self.base.add(slot).write_volatile(value.to_le()) }
    }
}

impl Drop for MappedSlots {
    fn drop(&mut self) {
        // SAFETY: the mapping `map` made, unmapped once.
        unsafe { libc::munmap(self.base.cast(), self.mapped) };
    }
}
