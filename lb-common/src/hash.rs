//! The flow hash. The kernel and userspace (Maglev explain, tests) use this one function.

use crate::{Addr, addr::V4_MAPPED_WORD, endpoint_filter, maps::FlowKey};

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

/// The first block of an IPv4-mapped address (words 0 to 2 folded) mixed into the seed.
const SEED_MIXED_V4: u32 = mix(SEED, V4_MAPPED_WORD);

/// `mix(SEED, folded)`, where `folded` is words 0 to 2 of an address folded together: for an
/// IPv4 address (nearly every packet) that is a constant, which saves one multiply chain per
/// hash. The same value as the mix in every case.
#[inline(always)]
const fn mix_first(folded: u32) -> u32 {
    if folded == V4_MAPPED_WORD {
        SEED_MIXED_V4
    } else {
        mix(SEED, folded)
    }
}

/// Hash of the whole 5-tuple: a busy client's connections spread over all backends.
#[inline(always)]
pub const fn flow_hash(key: &FlowKey) -> u32 {
    let s = key.src.words;
    let d = key.dst.words;
    let mut h = mix_first(s[0] ^ s[1] ^ s[2]);
    h = mix(h, s[3]);
    h = mix(h, d[0] ^ d[1] ^ d[2]);
    h = mix(h, d[3]);
    h = mix(h, (key.sport_be as u32) << 16 | key.dport_be as u32);
    h = mix(h, key.proto as u32);
    finish(h)
}

/// Hash of the 5-tuple less the destination address (`affinity: any-node`): the same
/// connection hashes alike on every node, whichever node address it was sent to.
#[inline(always)]
pub const fn any_node_hash(key: &FlowKey) -> u32 {
    let s = key.src.words;
    let mut h = mix_first(s[0] ^ s[1] ^ s[2]);
    h = mix(h, s[3]);
    h = mix(h, (key.sport_be as u32) << 16 | key.dport_be as u32);
    h = mix(h, key.proto as u32);
    finish(h)
}

/// Hash of the client address only (`affinity: client-ip`).
#[inline(always)]
pub const fn client_hash(key: &FlowKey) -> u32 {
    let s = key.src.words;
    let mut h = mix_first(s[0] ^ s[1] ^ s[2]);
    h = mix(h, s[3]);
    finish(h)
}

/// The filter slot of an endpoint (address, port, protocol): see lb-ebpf's `REPLY_FILTER`
/// (backend endpoints) and `FORWARD_FILTER` (frontend endpoints). Not the flow hash's mix:
/// a slot only needs to spread, and a packet for no frontend computes two of them, so two
/// 64-bit multiplies of the address (words 0 to 2 folded, as in `flow_hash`) and the port
/// and protocol, then one more after folding the halves, and the top bits.
#[inline(always)]
pub const fn endpoint_filter_slot(addr: &Addr, port_be: u16, proto: u8) -> u32 {
    let w = addr.words;
    let address = ((w[0] ^ w[1] ^ w[2]) as u64) << 32 | w[3] as u64;
    let port_proto = (port_be as u64) << 8 | proto as u64;
    let mut h = address.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ port_proto.wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
    h ^= h >> 32;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    (h >> (64 - endpoint_filter::SLOTS.trailing_zeros())) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Addr;

    #[test]
    fn the_any_node_hash_ignores_the_node_address_only() {
        let a = key([198, 18, 50, 100], 40000, [198, 18, 50, 1], 80, 6);
        let b = key([198, 18, 50, 100], 40000, [198, 18, 50, 2], 80, 6);
        assert_eq!(any_node_hash(&a), any_node_hash(&b));
        assert_ne!(flow_hash(&a), flow_hash(&b));
        let other_port = key([198, 18, 50, 100], 40001, [198, 18, 50, 1], 80, 6);
        assert_ne!(any_node_hash(&a), any_node_hash(&other_port));
        let other_service = key([198, 18, 50, 100], 40000, [198, 18, 50, 1], 81, 6);
        assert_ne!(any_node_hash(&a), any_node_hash(&other_service));
    }

    fn key(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, proto: u8) -> FlowKey {
        let v4 = |o: [u8; 4]| Addr::from_v4_raw(u32::from_ne_bytes(o));
        FlowKey {
            src: v4(src),
            dst: v4(dst),
            sport_be: sport.to_be(),
            dport_be: dport.to_be(),
            proto,
            _pad: [0; 3],
        }
    }

    #[test]
    fn golden_values_pin_the_hash() {
        // The kernel and userspace must agree, and a change of the function moves every
        // Maglev flow: it must be deliberate. These values pin it.
        let k = key([198, 18, 1, 2], 40000, [198, 18, 100, 1], 80, 6);
        assert_eq!(flow_hash(&k), GOLDEN_FLOW);
        assert_eq!(client_hash(&k), GOLDEN_CLIENT);
    }

    const GOLDEN_FLOW: u32 = 0x88e2_9359;
    const GOLDEN_CLIENT: u32 = 0x6aec_7067;

    #[test]
    fn golden_values_pin_the_ipv6_hashes_and_the_endpoint_filter_slots() {
        // The filter slots may change between versions (`lbd` makes the filters anew when it
        // starts), but deliberately. The flow hashes' values were taken before `mix_first`
        // folded IPv4's first block.
        let word = u32::from_ne_bytes;
        let client = Addr {
            words: [word([0xfd, 0, 0, 1]), 0, 0, word([0, 0, 0, 2])],
        };
        let backend = Addr {
            words: [word([0xfd, 0, 0, 2]), 0, 0, word([0, 0, 0, 0x0a])],
        };
        let k = FlowKey {
            src: client,
            dst: backend,
            sport_be: 31337u16.to_be(),
            dport_be: 80u16.to_be(),
            proto: 6,
            _pad: [0; 3],
        };
        assert_eq!(flow_hash(&k), 0xec24_e8ff);
        assert_eq!(any_node_hash(&k), 0xac1e_8770);
        assert_eq!(client_hash(&k), 0x4309_4579);
        let v4 = Addr::from_v4_raw(word([198, 18, 2, 10]));
        assert_eq!(endpoint_filter_slot(&v4, 8080u16.to_be(), 6), 0x2_773e);
        assert_eq!(
            endpoint_filter_slot(&backend, 8080u16.to_be(), 17),
            0x3_7c61
        );
    }

    #[test]
    fn the_folded_first_block_is_the_plain_mix_whatever_the_block() {
        for folded in [0, 1, V4_MAPPED_WORD, !V4_MAPPED_WORD, u32::MAX, 0x1234_5678] {
            assert_eq!(mix_first(folded), mix(SEED, folded), "{folded:#x}");
        }
    }

    #[test]
    fn every_field_of_the_tuple_matters_but_client_hash_sees_the_client_only() {
        let base = key([198, 18, 1, 2], 40000, [198, 18, 100, 1], 80, 6);
        let variants = [
            key([198, 18, 1, 3], 40000, [198, 18, 100, 1], 80, 6),
            key([198, 18, 1, 2], 40001, [198, 18, 100, 1], 80, 6),
            key([198, 18, 1, 2], 40000, [198, 18, 100, 2], 80, 6),
            key([198, 18, 1, 2], 40000, [198, 18, 100, 1], 81, 6),
            key([198, 18, 1, 2], 40000, [198, 18, 100, 1], 80, 17),
        ];
        for v in &variants {
            assert_ne!(flow_hash(v), flow_hash(&base), "{v:?}");
        }
        assert_ne!(client_hash(&variants[0]), client_hash(&base));
        for v in &variants[1..] {
            assert_eq!(client_hash(v), client_hash(&base), "{v:?}");
        }
    }

    #[test]
    fn endpoint_filter_slots_spread_like_random_ones() {
        // Structured endpoint sets fill about as many slots as random ones would (n balls in
        // m bins: m(1 - e^(-n/m))): a slot shared only costs a lookup, but the filter must
        // filter.
        let v4 = |a: u32| Addr::from_v4_raw(a.to_be());
        let v6 = |i: u32| Addr {
            words: [0xfd00u32.to_be(), 0, i.to_be(), 1u32.to_be()],
        };
        // What a set is, how many endpoints, and endpoint i's slot.
        type Set<'a> = (&'a str, u32, &'a dyn Fn(u32) -> u32);
        let sets: [Set<'_>; 4] = [
            ("consecutive addresses", 100_000, &|i| {
                endpoint_filter_slot(&v4(0xc612_0000 + i), 8080u16.to_be(), 6)
            }),
            ("every port of one address", 65_536, &|p| {
                endpoint_filter_slot(&v4(0xc612_0001), (p as u16).to_be(), 17)
            }),
            ("16 ports on each of many addresses", 100_000, &|i| {
                let port = 8000 + (i % 16) as u16;
                endpoint_filter_slot(&v4(0xc612_0000 + (i / 16) * 256), port.to_be(), 6)
            }),
            ("IPv6 addresses", 100_000, &|i| {
                endpoint_filter_slot(&v6(i), 80u16.to_be(), 6)
            }),
        ];
        let slots = f64::from(endpoint_filter::SLOTS);
        for (what, n, slot) in sets {
            let mut used = [0u64; endpoint_filter::WORDS as usize];
            for i in 0..n {
                let slot = slot(i);
                assert!(slot < endpoint_filter::SLOTS, "{what}: {slot}");
                let (word, bit) = endpoint_filter::position(slot);
                used[word as usize] |= bit;
            }
            let distinct = f64::from(used.iter().map(|w| w.count_ones()).sum::<u32>());
            // m(1 - e^(-x)) with x = n/m below 0.05: the series' first three terms.
            let x = f64::from(n) / slots;
            let random = slots * (x - x * x / 2.0 + x * x * x / 6.0);
            assert!(
                distinct > 0.99 * random,
                "{what}: {distinct} slots, {random:.0} random"
            );
        }
    }

    #[test]
    fn source_ports_spread_evenly() {
        // 64k client ports of one client over 16 buckets: every bucket near 1/16.
        let mut buckets = [0u32; 16];
        for port in 0..=u16::MAX {
            let k = key([198, 18, 1, 2], port, [198, 18, 100, 1], 80, 6);
            buckets[(flow_hash(&k) % 16) as usize] += 1;
        }
        // Binomial: 4096 expected, standard deviation about 62; allow five of them.
        assert!(
            buckets
                .iter()
                .all(|n| (4096 - 310..=4096 + 310).contains(n)),
            "{buckets:?}"
        );
    }
}
