//! `REPLY_FILTER` and `FORWARD_FILTER`: a bit per endpoint slot (`hash::endpoint_filter_slot`)
//! for the backend endpoints and the frontends `lbd` wrote. A packet whose endpoint's bit is
//! clear skips the hash lookups the filter guards; a set bit that stands for another endpoint
//! (a shared slot) only costs them. Only `lbd` sets bits, and it never clears one: it makes
//! both filters anew when it starts, and marks every endpoint before the program is attached.
//!
//! Sized for the largest plan: with `MAX_BACKEND_ENDPOINTS` (or `MAX_FRONTENDS`) endpoints
//! set, about one slot in nine is; with 100,000, one in 21. A filter of one-byte slots (32,768
//! of them, the layout before) was nearly full at 100,000 backend endpoints, and every packet
//! for no frontend paid the lookup it exists to skip.

/// Map flags: BPF_F_MMAPABLE, so `lbd` sets bits in its own mapping instead of a syscall per
/// word.
pub const FLAGS: u32 = crate::maps::BPF_F_MMAPABLE;

/// `u64` words in each filter: 256 KiB.
pub const WORDS: u32 = 32_768;

/// Slots (bits) in each filter: a power of two, so the slot is the hash masked.
pub const SLOTS: u32 = WORDS * 64;

/// Where `slot` is: its word and the bit in that word.
#[inline(always)]
pub const fn position(slot: u32) -> (u32, u64) {
    (slot / 64, 1u64 << (slot % 64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{MAX_BACKEND_ENDPOINTS, MAX_FRONTENDS};

    #[test]
    fn every_slot_has_one_bit_of_one_word() {
        assert!(SLOTS.is_power_of_two());
        assert_eq!(position(0), (0, 1));
        assert_eq!(position(63), (0, 1 << 63));
        assert_eq!(position(64), (1, 1));
        assert_eq!(position(SLOTS - 1), (WORDS - 1, 1 << 63));
    }

    #[test]
    fn a_full_plan_sets_at_most_one_slot_in_eight() {
        // Expected share of set slots with n endpoints: 1 - e^(-n / SLOTS) < n / SLOTS.
        for endpoints in [MAX_BACKEND_ENDPOINTS, MAX_FRONTENDS] {
            assert!(u64::from(endpoints) * 8 <= u64::from(SLOTS), "{endpoints}");
        }
    }
}
