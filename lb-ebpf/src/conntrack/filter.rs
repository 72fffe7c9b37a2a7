//! The kernel's side of `CONNTRACK_FILTER` (layout and rebuild: lb-common's
//! `conntrack_filter`): a SYN of a new flow asks the filter instead of the connection table,
//! and every forward entry written to the table sets its key's bit.

use core::intrinsics::{AtomicOrdering, atomic_or};

use lb_common::{
    conntrack_filter::{CONTROL, active_base, half_base, position, word_mask},
    maps::FlowKey,
};

use crate::maps::CONNTRACK_FILTER;

/// `key`'s word of the active half, read ahead of its test: the word is a cold line for a
/// new flow's SYN, so the entry function reads it, asks `PENDING` while it arrives (the two
/// misses overlap), and only then asks `may_track`.
pub struct Probe {
    word: u64,
    bit: u64,
}

impl Probe {
    /// The answer of a filter that knows nothing (off, or not yet rebuilt): maybe.
    const UNKNOWN: Probe = Probe { word: 1, bit: 1 };

    /// Whether `CONNTRACK` may hold a forward entry for the key: false only when a complete
    /// half is active and the key's bit is clear in it.
    #[inline(always)]
    pub fn may_track(&self) -> bool {
        self.word & self.bit != 0
    }
}

/// Starts the filter's answer for `key` (see `Probe`).
#[inline(always)]
pub fn probe(key: &FlowKey) -> Probe {
    let Some(&control) = CONNTRACK_FILTER.get(CONTROL) else {
        return Probe::UNKNOWN;
    };
    let base = active_base(control);
    if base == 0 {
        return Probe::UNKNOWN;
    }
    let (word, bit) = position(key, word_mask(control));
    match CONNTRACK_FILTER.get_ptr(base + word) {
        // SAFETY: a map value, valid for the program run and aligned. Volatile, so the load
        // is issued here, ahead of the work that hides its latency, not where it is tested.
        Some(w) => Probe {
            word: unsafe { core::ptr::read_volatile(w) },
            bit,
        },
        None => Probe::UNKNOWN,
    }
}

/// Sets `key`'s bit in both halves: called after its forward entry went into `CONNTRACK`, so
/// a rebuild that zeroed a half before this either sees the entry or gets the bit from here.
#[inline(always)]
pub fn note_tracked(key: &FlowKey) {
    let Some(&control) = CONNTRACK_FILTER.get(CONTROL) else {
        return;
    };
    let mask = word_mask(control);
    if mask == 0 {
        return;
    }
    let (word, bit) = position(key, mask);
    for half in 0..2 {
        if let Some(w) = CONNTRACK_FILTER.get_ptr_mut(half_base(half, mask + 1) + word) {
            // SAFETY: a map value, valid for the program run and 8-byte aligned. Atomic (BPF's
            // atomic OR; the BPF target has no `AtomicU64::fetch_or`): lbd and other CPUs
            // set bits of the same word meanwhile.
            unsafe { atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(w, bit) };
        }
    }
}
