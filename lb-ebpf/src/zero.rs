//! Zeroing without `memset`. The BPF backend turns the zeroing of a struct (a `Default`, a
//! `core::mem::zeroed`, a run of zero fields or bytes) into a call of the `memset` builtin:
//! a BPF function that stores one byte per turn of a loop, so a 64-byte struct costs a call,
//! its return (a mispredicted "safe RET" on our CPUs) and some 260 instructions. Volatile
//! word stores are kept as they are: a few instructions, no call.

use core::mem::{MaybeUninit, align_of, size_of};

/// Zeroes `*p` with 4-byte stores.
///
/// # Safety
/// `p` is valid for writes of a `T`, and all-zero bytes are a valid `T`.
#[inline(always)]
pub unsafe fn zero_words<T>(p: *mut T) {
    const {
        assert!(size_of::<T>() % 4 == 0 && align_of::<T>() >= 4);
    }
    let words = p.cast::<u32>();
    let mut i = 0;
    while i < size_of::<T>() / 4 {
        // SAFETY: within `*p` (the caller's promise), 4-byte aligned (checked above).
        unsafe { words.add(i).write_volatile(0) };
        i += 1;
    }
}

/// Zeroes `slot` in place with `zero_words` and returns it as a `T`. In place: a zeroed
/// value returned by value is copied into its place, and that copy becomes a `memset` again.
///
/// # Safety
/// All-zero bytes are a valid `T` (plain old data), as for `core::mem::zeroed`.
#[inline(always)]
pub unsafe fn zeroed_in<T>(slot: &mut MaybeUninit<T>) -> &mut T {
    // SAFETY: the slot is a T's room; the caller promises zero is a valid T.
    unsafe {
        zero_words(slot.as_mut_ptr());
        slot.assume_init_mut()
    }
}
