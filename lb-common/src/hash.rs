//! The flow hash. The kernel and userspace (Maglev explain, tests) use this one function.

use crate::maps::FlowKey;

#[inline(always)]
const fn mix(mut h: u32, v: u32) -> u32 {
    // murmur3's 32-bit block mix: cheap, branch-free, good avalanche.
    let mut k = v.wrapping_mul(0xcc9e_2d51);
    k = k.rotate_left(15);
    k = k.wrapping_mul(0x1b87_3593);
    h ^= k;
    h = h.rotate_left(13);
    h.wrapping_mul(5).wrapping_add(0xe654_6b64)
}

#[inline(always)]
const fn finish(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

const SEED: u32 = 0x6d65_7368; // "mesh"

/// Hash of the whole 5-tuple: a busy client's connections spread over all backends.
#[inline(always)]
pub const fn flow_hash(key: &FlowKey) -> u32 {
    let s = key.src.words;
    let d = key.dst.words;
    let mut h = SEED;
    h = mix(h, s[0] ^ s[1] ^ s[2]);
    h = mix(h, s[3]);
    h = mix(h, d[0] ^ d[1] ^ d[2]);
    h = mix(h, d[3]);
    h = mix(h, (key.sport_be as u32) << 16 | key.dport_be as u32);
    h = mix(h, key.proto as u32);
    finish(h)
}

/// Hash of the client address only (`affinity: client-ip`).
#[inline(always)]
pub const fn client_hash(key: &FlowKey) -> u32 {
    let s = key.src.words;
    let mut h = SEED;
    h = mix(h, s[0] ^ s[1] ^ s[2]);
    h = mix(h, s[3]);
    finish(h)
}
