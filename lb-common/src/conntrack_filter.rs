//! `CONNTRACK_FILTER`: a bit filter of the forward keys `CONNTRACK` may hold, so a TCP SYN of
//! a new flow skips the connection-table lookup (a cold bucket walk in a full table) when its
//! bit is clear. It must never miss a key: a SYN that reuses the tuple of a tracked flow has
//! to follow that flow, as it would through the lookup. A set bit that no longer stands for a
//! key only costs the lookup.
//!
//! An array of `u64` words: element 0 is the control word, then two halves of
//! `words_per_half` words each. The kernel sets a key's bit in both halves when it writes a
//! forward entry, and readers use the active half. `lbd` clears stale bits by rebuilding the
//! other half (zero it, set the bit of every forward key a walk of `CONNTRACK` finds, make it
//! the active one): a key written during the rebuild has its bit set by the kernel after the
//! zeroing, and a key written before it is in the table the walk reads. A rebuild waits a
//! moment after the control word last changed, so no program run still reads the half it
//! zeroes, and after a program was attached, so no run of the one it replaced (perhaps an
//! older one, which sets no bits) still writes a flow the walk misses.

use crate::{hash::flow_hash, maps::FlowKey};

/// Map flags: BPF_F_MMAPABLE, so `lbd` rebuilds a half in its own memory mapping (atomic ORs
/// beside the kernel's) instead of a syscall per word.
pub const FLAGS: u32 = crate::maps::BPF_F_MMAPABLE;

/// Index of the control word.
pub const CONTROL: u32 = 0;

/// Filter bits per connection-table entry, in each half. A confirmed flow takes two entries,
/// so right after a rebuild a full table has at most one bit in 16 set: about one SYN of a
/// new flow in 16 still takes the lookup (a false "maybe"), more as flows that ended since
/// leave their bits until the next rebuild.
pub const BITS_PER_ENTRY: u64 = 8;

/// Words in each half for a connection table of `conntrack_entries`: a power of two (the
/// kernel masks the hash), at least a page.
pub const fn words_per_half(conntrack_entries: u32) -> u32 {
    let bits = (conntrack_entries as u64 * BITS_PER_ENTRY).next_power_of_two();
    let words = bits / 64;
    if words < 512 { 512 } else { words as u32 }
}

/// Elements of the map for a connection table of `conntrack_entries`: the control word and
/// both halves.
pub const fn elements(conntrack_entries: u32) -> u32 {
    1 + 2 * words_per_half(conntrack_entries)
}

/// Index of the first word of half `half` (0 or 1).
pub const fn half_base(half: u32, words_per_half: u32) -> u32 {
    1 + half * words_per_half
}

/// The control word. Low 32 bits: the first word of the half readers use, 0 while neither
/// half is complete (readers then ask `CONNTRACK`). High 32 bits: `words_per_half - 1`, the
/// mask of a word within a half; 0 until `lbd` sets it, and writers set no bit while it is.
pub const fn control(active_base: u32, words_per_half: u32) -> u64 {
    ((words_per_half - 1) as u64) << 32 | active_base as u64
}

/// The active half's first word in a control word (0: none).
pub const fn active_base(control: u64) -> u32 {
    control as u32
}

/// The word mask in a control word.
pub const fn word_mask(control: u64) -> u32 {
    (control >> 32) as u32
}

/// Where `key` is in a half whose word mask is `mask`: the word's offset from the half's
/// base, and the bit in that word, from the flow hash.
#[inline(always)]
pub const fn position(key: &FlowKey, mask: u32) -> (u32, u64) {
    let h = flow_hash(key);
    ((h >> 6) & mask, 1u64 << (h & 63))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Addr, limits::DEFAULT_CONNTRACK_ENTRIES};

    #[test]
    fn halves_are_powers_of_two_of_eight_bits_per_entry() {
        assert_eq!(words_per_half(DEFAULT_CONNTRACK_ENTRIES), 262_144);
        assert_eq!(words_per_half(65_536), 8192);
        // Not a power of two: rounded up.
        assert_eq!(words_per_half(100_000), 16_384);
        // The floor of a page.
        assert_eq!(words_per_half(16), 512);
        assert_eq!(elements(65_536), 1 + 2 * 8192);
        assert_eq!(half_base(1, 8192), 8193);
    }

    #[test]
    fn the_control_word_holds_the_active_half_and_the_mask() {
        let c = control(half_base(1, 8192), 8192);
        assert_eq!(active_base(c), 8193);
        assert_eq!(word_mask(c), 8191);
        assert_eq!(active_base(control(0, 8192)), 0);
    }

    #[test]
    fn keys_spread_over_the_words_and_bits_of_a_half() {
        let mask = words_per_half(65_536) - 1;
        let mut words = [0u64; 8192];
        for port in 0..4096u16 {
            let key = FlowKey {
                src: Addr::from_v4_raw(u32::from_ne_bytes([198, 18, 1, 2])),
                dst: Addr::from_v4_raw(u32::from_ne_bytes([198, 18, 100, 1])),
                sport_be: (20_000 + port).to_be(),
                dport_be: 80u16.to_be(),
                proto: 6,
                _pad: [0; 3],
            };
            let (word, bit) = position(&key, mask);
            assert!(word <= mask);
            words[word as usize] |= bit;
        }
        // 4,096 keys in 524,288 bits: nearly all land on a bit of their own.
        let set: u32 = words.iter().map(|w| w.count_ones()).sum();
        assert!(set > 4_070, "{set} bits set by 4,096 keys");
    }
}
