//! Selection tables: built from the plan's specs on threads, written through a memory mapping,
//! and swapped into `SERVICE_TABLES` (an array of maps) many per call, or rewritten where the
//! kernel holds them.

use aya::maps::{Array, IterableMap as _, MapData};
use lb_common::maps::{SELECTION_TABLE_FLAGS, TABLE_LEN_SLOT, TableElement, names, table_elements};

use super::{
    DataplaneError, batch,
    maps::map_err,
    mmap::{map_shared, page_rounded},
};
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
    let kept = &std::sync::atomic::AtomicUsize::new(0);
    // Returns the arenas its tables were mapped in, still mapped: unmapping a written table
    // flushes the TLB of every other CPU running this process (an inter-processor interrupt,
    // costly in a VM), which the writers keep busy; once they are done, none is.
    let write = |chunk: &[(u32, Option<&TableSpec>)]| -> Result<KeptArenas<'_>, DataplaneError> {
        let mut arenas = KeptArenas::new(kept, MAX_KEPT_MAPPINGS);
        for group in chunk.chunks(TABLES_PER_SWAP) {
            let mut ids = Vec::with_capacity(group.len());
            let mut tables = Vec::with_capacity(group.len());
            // A table's mapping each, and the rest of the reservation.
            let mappings = group.len() + 1;
            arenas.make_room(mappings);
            let arena = MappingArena::reserve(ARENA_BYTES);
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
                tables.push(build_table(&backend_ids, arena.as_ref())?);
            }
            if let Some(arena) = arena {
                arenas.keep(arena, mappings);
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
        Ok(arenas)
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .saturating_mul(TABLE_THREADS_PER_CPU);
    if jobs.len() <= TABLES_PER_SWAP || threads <= 1 {
        return write(jobs).map(drop);
    }
    let per_thread = jobs.len().div_ceil(threads);
    let written: Vec<_> = std::thread::scope(|scope| {
        let workers: Vec<_> = jobs
            .chunks(per_thread)
            .map(|chunk| scope.spawn(move || write(chunk)))
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("table writer panicked"))
            .collect()
    });
    // Every writer has stopped: the arenas are unmapped here, by this thread alone.
    written.into_iter().try_for_each(|arenas| arenas.map(drop))
}

/// A new inner table: slot 0 holds the length, then the backend ids, written through a
/// memory mapping of the array (in `arena` where it has room).
fn build_table(
    backend_ids: &[u32],
    arena: Option<&MappingArena>,
) -> Result<Array<MapData, TableElement>, DataplaneError> {
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
    let fd = inner.map().fd().as_fd().as_raw_fd();
    let slots = arena
        .and_then(|arena| arena.map(fd, elements))
        .unwrap_or_else(|| MappedSlots::map(fd, elements))
        .map_err(|e| DataplaneError::MapValue {
            name: names::SERVICE_TABLES,
            message: format!("mapping a new table: {e}"),
        })?;
    // SAFETY: the table is new: no program reads it before it is swapped in below.
    unsafe { slots.fill_unshared(len, backend_ids) };
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

/// Address space reserved by each table-writing group (a default table maps 64 KiB; a table
/// that does not fit is mapped on its own).
const ARENA_BYTES: usize = TABLES_PER_SWAP * 128 * 1024;
/// Mappings the writers keep until they are done, together (a writer over it unmaps its own
/// first; each may add a group more): far below the kernel's default limit of 65,530 a
/// process, however many writers there are.
const MAX_KEPT_MAPPINGS: usize = 16_384;

/// A writer's arenas, kept mapped until every writer is done, within a number of mappings
/// shared by all writers (`kept`, against `limit`): each counts against the process's limit.
struct KeptArenas<'a> {
    kept: &'a std::sync::atomic::AtomicUsize,
    limit: usize,
    /// This writer's part of `kept`.
    mine: usize,
    arenas: Vec<MappingArena>,
}

impl<'a> KeptArenas<'a> {
    fn new(kept: &'a std::sync::atomic::AtomicUsize, limit: usize) -> Self {
        Self {
            kept,
            limit,
            mine: 0,
            arenas: Vec::new(),
        }
    }

    /// Before a group of `mappings`: when all writers together would pass the limit, this
    /// writer unmaps its own arenas first (if it has none, it goes on: the overshoot is at
    /// most a group a writer).
    fn make_room(&mut self, mappings: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.kept.load(Relaxed) + mappings > self.limit && self.mine > 0 {
            self.kept.fetch_sub(self.mine, Relaxed);
            self.mine = 0;
            self.arenas.clear();
        }
    }

    fn keep(&mut self, arena: MappingArena, mappings: usize) {
        self.kept
            .fetch_add(mappings, std::sync::atomic::Ordering::Relaxed);
        self.mine += mappings;
        self.arenas.push(arena);
    }
}

/// Address space reserved (inaccessible, backed by nothing) for mapping tables side by side;
/// all of it is unmapped in one call on drop.
struct MappingArena {
    base: *mut u8,
    reserved: usize,
    used: std::cell::Cell<usize>,
}

impl MappingArena {
    /// `None` when the reservation fails: tables are then mapped one by one.
    fn reserve(bytes: usize) -> Option<Self> {
        // SAFETY: a new private mapping that nothing else refers to.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        (p != libc::MAP_FAILED).then(|| Self {
            base: p.cast(),
            reserved: bytes,
            used: std::cell::Cell::new(0),
        })
    }

    /// Maps the `elements` elements of the mmapable array behind `fd` into the next free part
    /// of the reservation; `None` when it has no room, `Some(Err)` when the kernel refuses.
    fn map(&self, fd: i32, elements: u32) -> Option<std::io::Result<MappedSlots<'_>>> {
        let (bytes, mapped) = mapped_size(elements);
        let at = self.used.get();
        if self.reserved - at < mapped {
            return None;
        }
        // SAFETY: `at + mapped` lies within our own reservation, never touched (nothing to
        // flush), which the table's mapping replaces there.
        let base = unsafe { map_shared(fd, mapped, self.base.add(at)) }.map(<*mut u8>::cast::<u32>);
        Some(base.map(|base| {
            self.used.set(at + mapped);
            MappedSlots {
                base,
                slots: bytes / std::mem::size_of::<u32>(),
                unmap: None,
                _arena: std::marker::PhantomData,
            }
        }))
    }
}

// SAFETY: the arena owns its address range and nothing in it is tied to the thread that
// mapped it; it moves to the thread that unmaps it.
unsafe impl Send for MappingArena {}

impl Drop for MappingArena {
    fn drop(&mut self) {
        // SAFETY: the reservation `reserve` made, with the tables mapped into it: unmapped
        // once, after every `MappedSlots` borrowing it is gone.
        unsafe { libc::munmap(self.base.cast(), self.reserved) };
    }
}

/// Bytes of an array of `elements` table elements, and the same rounded up to pages (what the
/// kernel backs and a mapping spans).
fn mapped_size(elements: u32) -> (usize, usize) {
    let bytes = elements as usize * std::mem::size_of::<TableElement>();
    (bytes, page_rounded(bytes))
}

/// A table's slots (two per 8-byte element, back to back) mapped into memory, unmapped on
/// drop unless an arena holds the mapping. Reads and writes are single volatile 4-byte
/// accesses: the kernel program reads the same memory meanwhile.
struct MappedSlots<'arena> {
    base: *mut u32,
    slots: usize,
    /// The mapping's length, when this unmaps it.
    unmap: Option<usize>,
    _arena: std::marker::PhantomData<&'arena MappingArena>,
}

impl MappedSlots<'static> {
    /// Maps the `elements` elements of the mmapable array behind `fd`.
    fn map(fd: i32, elements: u32) -> std::io::Result<Self> {
        let (bytes, mapped) = mapped_size(elements);
        // SAFETY: where the kernel chooses; `mapped` is what it backs for `elements`.
        let base = unsafe { map_shared(fd, mapped, std::ptr::null_mut()) }?.cast::<u32>();
        Ok(Self {
            base,
            slots: bytes / std::mem::size_of::<u32>(),
            unmap: Some(mapped),
            _arena: std::marker::PhantomData,
        })
    }
}

impl MappedSlots<'_> {
    /// Writes a whole table: its length, then the backend ids. Plain stores the compiler may
    /// widen, unlike `set`'s.
    ///
    /// # Safety
    /// Nothing else reads or writes the table meanwhile (no program holds it yet).
    unsafe fn fill_unshared(&self, len: u32, backend_ids: &[u32]) {
        assert!(
            backend_ids.len() < self.slots,
            "{} backend ids for a table of {} slots",
            backend_ids.len(),
            self.slots
        );
        // SAFETY: within the mapping (checked above), aligned, and unshared (the caller's
        // promise), so the slice is the only reference to this memory while it lives.
        let slots = unsafe { std::slice::from_raw_parts_mut(self.base, backend_ids.len() + 1) };
        slots[TABLE_LEN_SLOT as usize] = len.to_le();
        for (slot, id) in slots[1..].iter_mut().zip(backend_ids) {
            *slot = id.to_le();
        }
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

impl Drop for MappedSlots<'_> {
    fn drop(&mut self) {
        if let Some(mapped) = self.unmap {
            // SAFETY: the mapping `map` made, unmapped once.
            unsafe { libc::munmap(self.base.cast(), mapped) };
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    use super::*;

    #[test]
    fn writers_keep_their_arenas_until_together_they_would_pass_the_limit() {
        let kept = AtomicUsize::new(0);
        let arena = || MappingArena::reserve(4096).expect("an address range");
        let mut a = KeptArenas::new(&kept, 10);
        let mut b = KeptArenas::new(&kept, 10);
        for _ in 0..2 {
            a.make_room(4);
            a.keep(arena(), 4);
        }
        assert_eq!((a.arenas.len(), kept.load(Relaxed)), (2, 8));
        // Over the limit with nothing of its own: b goes on (a group over, at most).
        b.make_room(4);
        b.keep(arena(), 4);
        assert_eq!((b.arenas.len(), kept.load(Relaxed)), (1, 12));
        // Over it with arenas of its own: a unmaps them first.
        a.make_room(4);
        assert_eq!((a.arenas.len(), kept.load(Relaxed)), (0, 4));
        a.keep(arena(), 4);
        // Within the limit: kept.
        b.make_room(2);
        assert_eq!((b.arenas.len(), kept.load(Relaxed)), (1, 8));
    }
}
