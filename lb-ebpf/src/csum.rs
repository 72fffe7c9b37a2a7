//! One's complement checksum arithmetic (RFC 1071, RFC 1624), on words as they sit in
//! memory. Pure: meshlb's program (through `nat`) and the bench programs (`harness.rs`,
//! `sink.rs`, which include this file) share it.

/// Folds a one's complement sum to 16 bits (not complemented).
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Adds a 32-bit word, as two 16-bit halves, to a one's complement sum (words as they sit
/// in memory), for checksums computed from scratch.
#[inline(always)]
pub fn add_word(sum: u32, word: u32) -> u32 {
    let sum = sum + (word & 0xffff) + (word >> 16);
    (sum & 0xffff) + (sum >> 16)
}

/// New checksum after a 32-bit word of the covered data changed from `old` to `new`.
#[inline(always)]
pub fn csum_replace4(csum: u16, old: u32, new: u32) -> u16 {
    let sum = u32::from(!csum) + (!old & 0xffff) + (!old >> 16) + (new & 0xffff) + (new >> 16);
    !fold(sum)
}

/// New checksum after a 16-bit word changed from `old` to `new`.
#[inline(always)]
pub fn csum_replace2(csum: u16, old: u16, new: u16) -> u16 {
    let sum = u32::from(!csum) + u32::from(!old) + u32::from(new);
    !fold(sum)
}
