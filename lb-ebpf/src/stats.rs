//! Counter updates. Per-CPU maps, so a plain add is race-free.

use lb_common::{maps::TrafficCounters, stats::StatSlot};

use crate::maps::{BACKEND_STATS, GLOBAL_STATS, SERVICE_STATS};

#[inline(always)]
pub fn count(slot: StatSlot) {
    count_raw(slot as u32);
}

/// `count` by slot index, for slots carried as plain numbers across calls.
#[inline(always)]
pub fn count_raw(slot: u32) {
    if let Some(counter) = GLOBAL_STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, nobody else writes it while this program runs on this CPU.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
fn add(counters: Option<*mut TrafficCounters>, bytes: u32, new_flow: bool) {
    if let Some(c) = counters {
        // SAFETY: per-CPU value, see `count`.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += u64::from(bytes);
            if new_flow {
                (*c).new_flows += 1;
            }
        }
    }
}

/// Account a packet sent to (or back from) a backend of a service.
#[inline(always)]
pub fn count_traffic(service_id: u32, backend_id: u32, bytes: u32, new_flow: bool) {
    add(SERVICE_STATS.get_ptr_mut(service_id), bytes, new_flow);
    add(BACKEND_STATS.get_ptr_mut(backend_id), bytes, new_flow);
}
