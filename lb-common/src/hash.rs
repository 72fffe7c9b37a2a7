//! The flow hash. The kernel and userspace (Maglev explain, tests) use this one function.

use crate::{Addr, limits::ENDPOINT_FILTER_SLOTS, maps::FlowKey};

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

/// Hash of the 5-tuple less the destination address (`affinity: any-node`): the same
/// connection hashes alike on every node, whichever node address it was sent to.
#[inline(always)]
pub const fn any_node_hash(key: &FlowKey) -> u32 {
    let s = key.src.words;
    let mut h = SEED;
    h = mix(h, s[0] ^ s[1] ^ s[2]);
    h = mix(h, s[3]);
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

/// The filter slot of an endpoint (address, port, protocol): see lb-ebpf's `REPLY_FILTER`
/// (backend endpoints) and `FORWARD_FILTER` (frontend endpoints).
#[inline(always)]
pub const fn endpoint_filter_slot(addr: &Addr, port_be: u16, proto: u8) -> u32 {
    let w = addr.words;
    let mut h = SEED;
    h = mix(h, w[0] ^ w[1] ^ w[2]);
    h = mix(h, w[3]);
    h = mix(h, (port_be as u32) << 8 | proto as u32);
    finish(h) % ENDPOINT_FILTER_SLOTS
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
    fn endpoint_filter_slots_are_in_range_and_spread() {
        // 4096 backend endpoints (256 addresses x 16 ports): every slot in range, and few
        // share one (a shared slot only costs a lookup, but the filter must filter).
        let mut used = [false; crate::limits::ENDPOINT_FILTER_SLOTS as usize];
        for host in 0..=255u8 {
            for port in 8080..8096u16 {
                let addr = Addr::from_v4_raw(u32::from_ne_bytes([198, 18, 2, host]));
                let slot = endpoint_filter_slot(&addr, port.to_be(), 6);
                assert!(slot < crate::limits::ENDPOINT_FILTER_SLOTS);
                used[slot as usize] = true;
            }
        }
        // 4096 balls in 32768 bins leave about 3860 distinct.
        let distinct = used.iter().filter(|u| **u).count();
        assert!(distinct > 3700, "{distinct}");
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
