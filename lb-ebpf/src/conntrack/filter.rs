//! The kernel's side of `CONNTRACK_FILTER` (layout and rebuild: lb-common's
//! `conntrack_filter`): a SYN of a new flow asks the filter instead of the connection table,
//! and every forward entry written to the table sets its key's bit.

use core::intrinsics::{AtomicOrdering, atomic_or};

use lb_common::{
    conntrack_filter::{CONTROL, active_base, half_base, position, word_mask},
    maps::FlowKey,
};

use crate::maps::CONNTRACK_FILTER;

/// Whether `CONNTRACK` may hold a forward entry for `key`: false only when a complete half is
/// active and `key`'s bit is clear in it.
#[inline(always)]
pub fn may_track(key: &FlowKey) -> bool {
    let Some(&control) = CONNTRACK_FILTER.get(CONTROL) else {
        return true;
    };
    let base = active_base(control);
    if base == 0 {
        return true;
    }
    let (word, bit) = position(key, word_mask(control));
    match CONNTRACK_FILTER.get(base + word) {
        Some(&w) => w & bit != 0,
        None => true,
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
