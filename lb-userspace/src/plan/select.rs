//! Builders of the per-service selection tables the kernel program indexes.
//!
//! The kernel picks `table[hash % len]` for Maglev and `table[cursor++ % len]` for round-robin;
//! every entry is an index into the backend list given here (the caller maps it to a kernel
//! backend id). Everything is deterministic: the same backends give the same table on every
//! run and machine, so restarts and peers agree on where a flow goes.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

/// One backend as the table builder sees it: a stable identity (e.g. `"198.18.2.2:8080"`: the
/// Maglev permutation derives from it, so a backend keeps its preferences when others come and
/// go) and a weight (0 = draining: gets no slots). Two backends with one identity would share
/// a preference list and move together, so identities should be unique.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableBackend<'a> {
    pub identity: &'a str,
    pub weight: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TableError {
    /// Maglev needs a prime size so every skip walks all slots.
    #[error("Maglev table size {0} is not a prime")]
    SizeNotPrime(u32),
    /// All weights are 0, or there are no backends: the service has no usable backend.
    #[error("no backend has a nonzero weight")]
    NoWeight,
    /// Fewer slots than backends that must get one.
    #[error("a table of {size} slots cannot hold {backends} weighted backends")]
    TooSmall { size: u32, backends: usize },
}

/// Marks a slot not yet filled. Never a backend index: there are at most `u32::MAX` backends.
const EMPTY: u32 = u32::MAX;

/// Maglev lookup table (Eisenbud et al., NSDI 2016) of `size` (a prime) slots, honouring weights.
///
/// Each backend walks its own permutation of the slots (offset and skip hashed from its
/// identity) and claims the next free one when its turn comes. Turns are weighted as in Katran's
/// weighted Maglev: every round each backend earns its weight in credit and takes a turn only
/// when the credit reaches the largest weight, so slot shares follow weights while the heaviest
/// backend keeps the fill moving. Backends take turns in identity order, so the table does not
/// depend on the order they are listed in. A backend whose weight is tiny next to the others'
/// may get no slot at all, exactly as its share says.
pub fn maglev_table(backends: &[TableBackend<'_>], size: u32) -> Result<Vec<u32>, TableError> {
    let usable = maglev_usable(backends, size)?;

    struct Turn<'a> {
        identity: &'a str,
        index: u32,
        weight: u64,
        credit: u64,
        /// Next slot of this backend's permutation to try.
        next: u64,
        skip: u64,
        /// Two, three and four skips, for probing four slots of the walk at once.
        skips: [u64; 3],
    }
    let slots = u64::from(size);
    let mut turns: Vec<Turn<'_>> = usable
        .iter()
        .map(|&(index, b)| Turn {
            identity: b.identity,
            index,
            weight: u64::from(b.weight),
            credit: 0,
            next: identity_hash(b.identity, OFFSET_SEED) % slots,
            // size is prime, so any skip in 1..size is coprime to it: a full permutation.
            skip: identity_hash(b.identity, SKIP_SEED) % (slots - 1) + 1,
            skips: [0; 3],
        })
        .collect();
    turns.sort_by(|a, b| a.identity.cmp(b.identity).then(a.index.cmp(&b.index)));
    let max_weight = turns.iter().map(|t| t.weight).max().unwrap_or(1);
    let step = |slot: u64, by: u64| {
        let next = slot + by;
        if next >= slots { next - slots } else { next }
    };
    for t in &mut turns {
        let skip2 = step(t.skip, t.skip);
        t.skips = [skip2, step(skip2, t.skip), step(skip2, skip2)];
    }

    let mut table = vec![EMPTY; size as usize];
    // Which slots are taken, a byte each: small enough for the L1 cache, where the probes of
    // the fill's tail (nearly all of them misses) are cheapest.
    let mut taken = vec![false; size as usize];
    let mut filled = 0u64;
    // Terminates: the heaviest backend takes a turn every round, and a turn always finds a free
    // slot because a backend's walk only passes over slots that are already taken.
    loop {
        for turn in &mut turns {
            turn.credit += turn.weight;
            if turn.credit < max_weight {
                continue;
            }
            turn.credit -= max_weight;
            // Four slots of the walk per step, tested without a branch each: the fill spends
            // most of its time in probes, and an unpredictable branch per probe costs more
            // than the probe.
            let skip = turn.skip;
            let [skip2, skip3, skip4] = turn.skips;
            let mut next = turn.next;
            let slot = loop {
                let s0 = next;
                let s1 = step(next, skip);
                let s2 = step(next, skip2);
                let s3 = step(next, skip3);
                let free = u32::from(!taken[s0 as usize])
                    | u32::from(!taken[s1 as usize]) << 1
                    | u32::from(!taken[s2 as usize]) << 2
                    | u32::from(!taken[s3 as usize]) << 3;
                if free != 0 {
                    // The first free one in walk order, as a probe at a time would find it
                    // (picked by index, not by a branch per candidate).
                    let slot = [s0, s1, s2, s3][free.trailing_zeros() as usize];
                    next = step(slot, skip);
                    break slot;
                }
                next = step(next, skip4);
            };
            turn.next = next;
            taken[slot as usize] = true;
            table[slot as usize] = turn.index;
            filled += 1;
            if filled == slots {
                return Ok(table);
            }
        }
    }
}

/// Weighted round-robin sequence: each backend appears `weight / gcd(weights)` times, spread
/// out so that in every prefix each backend's count is less than 1 away from its ideal share
/// (interleaved, no bursts; nginx's smooth weighted round robin aims at the same but can drift
/// by a whole turn, so this uses Tijdeman's chairman-assignment schedule, which cannot).
///
/// If the sequence would be longer than `max_len`, the weights are scaled down proportionally,
/// keeping every nonzero weight at least 1, so a large weight ratio costs precision, not memory.
pub fn round_robin_sequence(
    backends: &[TableBackend<'_>],
    max_len: u32,
) -> Result<Vec<u32>, TableError> {
    let usable = round_robin_usable(backends, max_len)?;
    let indices: Vec<u32> = usable.iter().map(|&(index, _)| index).collect();
    let mut weights: Vec<u64> = usable.iter().map(|(_, b)| u64::from(b.weight)).collect();
    reduce_by_gcd(&mut weights);
    if weights.iter().sum::<u64>() > u64::from(max_len) {
        weights = scale_down(&weights, u64::from(max_len));
        reduce_by_gcd(&mut weights);
    }
    Ok(smooth_sequence(&indices, &weights))
}

/// What `maglev_table` would refuse, without building the table.
pub fn maglev_check(backends: &[TableBackend<'_>], size: u32) -> Result<(), TableError> {
    maglev_usable(backends, size).map(drop)
}

/// What `round_robin_sequence` would refuse, without building the sequence.
pub fn round_robin_check(backends: &[TableBackend<'_>], max_len: u32) -> Result<(), TableError> {
    round_robin_usable(backends, max_len).map(drop)
}

type Usable<'b, 'a> = Vec<(u32, &'b TableBackend<'a>)>;

fn maglev_usable<'b, 'a>(
    backends: &'b [TableBackend<'a>],
    size: u32,
) -> Result<Usable<'b, 'a>, TableError> {
    if !is_prime(size) {
        return Err(TableError::SizeNotPrime(size));
    }
    fits(usable_backends(backends, size)?, size)
}

fn round_robin_usable<'b, 'a>(
    backends: &'b [TableBackend<'a>],
    max_len: u32,
) -> Result<Usable<'b, 'a>, TableError> {
    fits(usable_backends(backends, max_len)?, max_len)
}

/// Every usable backend needs a slot of its own.
fn fits<'b, 'a>(usable: Usable<'b, 'a>, size: u32) -> Result<Usable<'b, 'a>, TableError> {
    if usable.len() > size as usize {
        return Err(TableError::TooSmall {
            size,
            backends: usable.len(),
        });
    }
    Ok(usable)
}

/// Whether `n` is prime (trial division: table sizes are small and built rarely).
pub fn is_prime(n: u32) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    let n = u64::from(n);
    let mut d = 5u64;
    while d * d <= n {
        if n.is_multiple_of(d) || n.is_multiple_of(d + 2) {
            return false;
        }
        d += 6;
    }
    true
}

/// The smallest prime `>= n`, to round a requested Maglev size up to a valid one.
///
/// # Panics
/// If no such prime fits in a `u32` (`n > 4_294_967_291`).
pub fn next_prime(n: u32) -> u32 {
    (n..=u32::MAX)
        .find(|&candidate| is_prime(candidate))
        .unwrap_or_else(|| panic!("no prime >= {n} fits in a u32"))
}

/// The backends with a nonzero weight, with their indices in `backends`.
fn usable_backends<'b, 'a>(
    backends: &'b [TableBackend<'a>],
    size: u32,
) -> Result<Usable<'b, 'a>, TableError> {
    // Indices must fit the table's u32 entries and stay clear of `EMPTY`.
    if backends.len() > u32::MAX as usize {
        return Err(TableError::TooSmall {
            size,
            backends: backends.len(),
        });
    }
    let usable: Vec<_> = (0u32..)
        .zip(backends)
        .filter(|(_, b)| b.weight > 0)
        .collect();
    if usable.is_empty() {
        return Err(TableError::NoWeight);
    }
    Ok(usable)
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

fn reduce_by_gcd(weights: &mut [u64]) {
    let g = weights.iter().fold(0, |g, &w| gcd(g, w));
    if g > 1 {
        weights.iter_mut().for_each(|w| *w /= g);
    }
}

/// Weights scaled to `w * t / sum` (at least 1) for the largest `t` whose total fits `max_len`.
/// The total only grows with `t`, and at `t = 1` it is the backend count, which the caller has
/// checked fits, so a binary search finds `t`.
fn scale_down(weights: &[u64], max_len: u64) -> Vec<u64> {
    let sum: u64 = weights.iter().sum();
    let scaled = |t: u64| -> Vec<u64> {
        weights
            .iter()
            .map(|&w| ((u128::from(w) * u128::from(t) / u128::from(sum)) as u64).max(1))
            .collect()
    };
    let (mut lo, mut hi) = (1u64, max_len);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if scaled(mid).iter().sum::<u64>() <= max_len {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    scaled(lo)
}

/// Tijdeman's schedule ("The chairman assignment problem", 1980): with `k` backends and shares
/// `w / S`, at step `t` a backend is eligible once its lag `t * w / S - count` reaches
/// `1 / (2k - 2)`, and the eligible backend whose lag would reach `1 - 1 / (2k - 2)` first goes
/// next. Every prefix then stays within `1 - 1 / (2k - 2)` of the ideal counts.
/// Runs in `O(S log k)` with one heap of waiting backends and one of eligible ones.
fn smooth_sequence(indices: &[u32], weights: &[u64]) -> Vec<u32> {
    let total: u64 = weights.iter().sum();
    let k = weights.len() as u64;
    if k == 1 {
        return vec![indices[0]; total as usize];
    }
    let d = 2 * k - 2;
    // First step (1-based) at which a backend that has gone `count` times is eligible again:
    // the least t with d * (t * w - total * count) >= total.
    let release = |w: u64, count: u64| -> u64 {
        let num = u128::from(total) * (1 + u128::from(d) * u128::from(count));
        num.div_ceil(u128::from(d) * u128::from(w)) as u64
    };

    let mut counts = vec![0u64; weights.len()];
    let mut waiting: BinaryHeap<Reverse<(u64, usize)>> = (0..weights.len())
        .map(|i| Reverse((release(weights[i], 0), i)))
        .collect();
    let mut eligible: BinaryHeap<Reverse<Deadline>> = BinaryHeap::new();
    let mut sequence = Vec::with_capacity(total as usize);
    for step in 1..=total {
        while let Some(&Reverse((at, i))) = waiting.peek() {
            if at > step {
                break;
            }
            waiting.pop();
            eligible.push(Reverse(Deadline {
                num: d * (counts[i] + 1) - 1,
                weight: weights[i],
                backend: i,
            }));
        }
        // The theorem guarantees an eligible backend; taking the next waiting one otherwise
        // keeps this total all the same.
        let i = match eligible.pop() {
            Some(Reverse(deadline)) => deadline.backend,
            None => match waiting.pop() {
                Some(Reverse((_, i))) => i,
                None => break,
            },
        };
        sequence.push(indices[i]);
        counts[i] += 1;
        waiting.push(Reverse((release(weights[i], counts[i]), i)));
    }
    sequence
}

/// When a backend's lag would reach its bound, as the fraction `num / weight` (the common
/// factor `total / d` dropped); ties go to the backend listed first, so equal weights rotate
/// in list order.
#[derive(PartialEq, Eq)]
struct Deadline {
    num: u64,
    weight: u64,
    backend: usize,
}

impl Ord for Deadline {
    fn cmp(&self, other: &Self) -> Ordering {
        let lhs = u128::from(self.num) * u128::from(other.weight);
        let rhs = u128::from(other.num) * u128::from(self.weight);
        lhs.cmp(&rhs).then(self.backend.cmp(&other.backend))
    }
}

impl PartialOrd for Deadline {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

const OFFSET_SEED: u64 = 0x6d65_7368_6c62_0001;
const SKIP_SEED: u64 = 0x6d65_7368_6c62_0002;

/// A 64-bit hash of an identity, fixed here (not `RandomState`) so tables agree across runs
/// and machines. Different seeds give independent hashes for offset and skip.
fn identity_hash(identity: &str, seed: u64) -> u64 {
    let bytes = identity.as_bytes();
    let mut h = mix64(seed ^ (bytes.len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    for chunk in bytes.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        h = mix64(h ^ u64::from_le_bytes(word));
    }
    mix64(h)
}

/// SplitMix64's finaliser: a bijection with full avalanche.
const fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::Addr;
    use lb_common::hash::flow_hash;
    use lb_common::limits::DEFAULT_MAGLEV_TABLE_SIZE;
    use lb_common::maps::FlowKey;

    const FLOWS: usize = 100_000;

    use lb_testkit::rng::SplitMix64 as Rng;

    /// Hashes of synthetic TCP flows from random IPv4 clients and ports to one frontend.
    fn flow_hashes(seed: u64) -> Vec<u32> {
        let mut rng = Rng(seed);
        let dst = Addr::from_v4_raw(u32::from_ne_bytes([198, 18, 0, 10]));
        (0..FLOWS)
            .map(|_| {
                let r = rng.next_u64();
                flow_hash(&FlowKey {
                    src: Addr::from_v4_raw(r as u32),
                    dst,
                    sport_be: ((r >> 32) as u16).to_be(),
                    dport_be: 443u16.to_be(),
                    proto: 6,
                    _pad: [0; 3],
                })
            })
            .collect()
    }

    fn identities(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("198.18.{}.{}:8080", i / 250, i % 250 + 2))
            .collect()
    }

    fn equal(ids: &[String]) -> Vec<TableBackend<'_>> {
        ids.iter()
            .map(|id| TableBackend {
                identity: id,
                weight: 1,
            })
            .collect()
    }

    /// The table with each slot's backend index replaced by its identity.
    fn by_identity<'a>(table: &[u32], backends: &[TableBackend<'a>]) -> Vec<&'a str> {
        table
            .iter()
            .map(|&i| backends[i as usize].identity)
            .collect()
    }

    fn max_min_ratio(counts: &[usize]) -> f64 {
        let max = *counts.iter().max().unwrap();
        let min = *counts.iter().min().unwrap();
        assert!(min > 0, "a backend got nothing: {counts:?}");
        max as f64 / min as f64
    }

    #[test]
    fn primes() {
        let composites = [0, 1, 4, 9, 15, 49, 16383, 65535, 65536, 1_048_575, u32::MAX];
        let primes = [
            2,
            3,
            5,
            7,
            13,
            251,
            16381,
            65521,
            65537,
            1_048_573,
            4_294_967_291,
        ];
        for n in composites {
            assert!(!is_prime(n), "{n}");
        }
        for n in primes {
            assert!(is_prime(n), "{n}");
        }
        assert_eq!(next_prime(0), 2);
        assert_eq!(next_prime(2), 2);
        assert_eq!(next_prime(14), 17);
        assert_eq!(next_prime(16_380), 16_381);
        assert_eq!(next_prime(65_536), 65_537);
        assert_eq!(next_prime(1_000_000), 1_000_003);
        assert_eq!(next_prime(4_294_967_280), 4_294_967_291);
        assert_eq!(
            next_prime(DEFAULT_MAGLEV_TABLE_SIZE),
            DEFAULT_MAGLEV_TABLE_SIZE
        );

        // Against a sieve.
        let mut composite = vec![false; 10_000];
        for i in 2..composite.len() {
            if !composite[i] {
                for j in (i * i..composite.len()).step_by(i) {
                    composite[j] = true;
                }
            }
            assert_eq!(is_prime(i as u32), !composite[i], "{i}");
        }
    }

    #[test]
    fn maglev_errors() {
        let ids = identities(3);
        let b = equal(&ids);
        assert_eq!(
            maglev_table(&b, 16_383),
            Err(TableError::SizeNotPrime(16_383))
        );
        assert_eq!(maglev_table(&b, 0), Err(TableError::SizeNotPrime(0)));
        assert_eq!(maglev_table(&[], 13), Err(TableError::NoWeight));
        let drained: Vec<_> = b.iter().map(|b| TableBackend { weight: 0, ..*b }).collect();
        assert_eq!(maglev_table(&drained, 13), Err(TableError::NoWeight));
        assert_eq!(
            maglev_table(&b, 2),
            Err(TableError::TooSmall {
                size: 2,
                backends: 3
            })
        );
        assert_eq!(maglev_table(&b, 3).unwrap().len(), 3);
    }

    #[test]
    fn maglev_fills_every_slot_with_weighted_backends_only() {
        let ids = identities(12);
        let backends: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| TableBackend {
                identity: id,
                weight: [0, 1, 5, 0, 2][i % 5],
            })
            .collect();
        for size in [13, 251, DEFAULT_MAGLEV_TABLE_SIZE, 65_537] {
            let table = maglev_table(&backends, size).unwrap();
            assert_eq!(table.len(), size as usize);
            let mut seen = vec![false; backends.len()];
            for &i in &table {
                assert!(
                    backends[i as usize].weight > 0,
                    "slot of drained backend {i}"
                );
                seen[i as usize] = true;
            }
            if size > 200 {
                for (i, b) in backends.iter().enumerate() {
                    assert_eq!(seen[i], b.weight > 0, "backend {i} at size {size}");
                }
            }
        }

        let one = [TableBackend {
            identity: "198.18.2.2:8080",
            weight: 7,
        }];
        assert!(maglev_table(&one, 13).unwrap().iter().all(|&i| i == 0));
    }

    #[test]
    fn maglev_1024_backends_fill_65537_slots() {
        let ids = identities(1024);
        let table = maglev_table(&equal(&ids), 65_537).unwrap();
        assert_eq!(table.len(), 65_537);
        let mut counts = vec![0usize; ids.len()];
        for &i in &table {
            counts[i as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c == 64 || c == 65), "{counts:?}");
    }

    #[test]
    fn maglev_balances_equal_weights() {
        let ids = identities(16);
        let backends = equal(&ids);
        let flows = flow_hashes(1);
        for size in [65_537, DEFAULT_MAGLEV_TABLE_SIZE] {
            let table = maglev_table(&backends, size).unwrap();
            let mut slots = vec![0usize; backends.len()];
            for &i in &table {
                slots[i as usize] += 1;
            }
            let slot_ratio = max_min_ratio(&slots);
            assert!(
                slot_ratio <= 1.05,
                "size {size}: slot max/min {slot_ratio:.4}"
            );

            let mut per_backend = vec![0usize; backends.len()];
            for &h in &flows {
                per_backend[table[(h % size) as usize] as usize] += 1;
            }
            let flow_ratio = max_min_ratio(&per_backend);
            println!("size {size}: slots max/min {slot_ratio:.4}, flows max/min {flow_ratio:.4}");
            assert!(
                flow_ratio <= 1.10,
                "size {size}: flows max/min {flow_ratio:.4}"
            );
        }
    }

    #[test]
    fn maglev_honours_weights() {
        let ids = identities(3);
        let backends: Vec<_> = ids
            .iter()
            .zip([1, 2, 3])
            .map(|(id, weight)| TableBackend {
                identity: id,
                weight,
            })
            .collect();
        for size in [DEFAULT_MAGLEV_TABLE_SIZE, 65_537] {
            let table = maglev_table(&backends, size).unwrap();
            let mut slots = [0usize; 3];
            for &i in &table {
                slots[i as usize] += 1;
            }
            for (i, &count) in slots.iter().enumerate() {
                let share = count as f64 / f64::from(size);
                let ideal = (i + 1) as f64 / 6.0;
                println!(
                    "size {size}: weight {} share {share:.5} (ideal {ideal:.5})",
                    i + 1
                );
                assert!(
                    (share / ideal - 1.0).abs() <= 0.02,
                    "size {size}: weight {} has share {share:.5}, ideal {ideal:.5}",
                    i + 1
                );
            }
        }
    }

    #[test]
    fn maglev_removal_moves_few_other_flows() {
        let flows = flow_hashes(2);
        for n in [10, 16] {
            let ids = identities(n);
            let all = equal(&ids);
            for size in [65_537, 16_381] {
                let before = by_identity(&maglev_table(&all, size).unwrap(), &all);
                for removed in [0, n / 2, n - 1] {
                    let gone = ids[removed].as_str();
                    let rest: Vec<_> = all.iter().filter(|b| b.identity != gone).copied().collect();
                    let after = by_identity(&maglev_table(&rest, size).unwrap(), &rest);

                    let (mut kept, mut moved) = (0usize, 0usize);
                    for (b, a) in before.iter().zip(&after) {
                        if *b != gone {
                            kept += 1;
                            moved += usize::from(b != a);
                        }
                    }
                    let slot_moved = moved as f64 / kept as f64;

                    let (mut kept, mut moved) = (0usize, 0usize);
                    for &h in &flows {
                        let slot = (h % size) as usize;
                        if before[slot] != gone {
                            kept += 1;
                            moved += usize::from(before[slot] != after[slot]);
                        }
                    }
                    let flow_moved = moved as f64 / kept as f64;
                    println!(
                        "n {n}, size {size}, removed {removed}: slots moved {:.3}%, flows moved {:.3}%",
                        slot_moved * 100.0,
                        flow_moved * 100.0
                    );
                    assert!(
                        slot_moved <= 0.01 && flow_moved <= 0.01,
                        "n {n}, size {size}, removed {removed}: {:.3}% of other slots and \
                         {:.3}% of other flows moved",
                        slot_moved * 100.0,
                        flow_moved * 100.0
                    );
                }
            }
        }
    }

    /// The table for given backends is part of meshlb's behaviour: nodes of different versions
    /// (a rolling upgrade) must pick the same backend for a flow. A change to the fill that
    /// alters any slot fails here.
    #[test]
    fn maglev_tables_do_not_change_between_versions() {
        let ids: Vec<String> = (0..16).map(|b| format!("198.18.0.{b}:8080")).collect();
        let table = maglev_table(&equal(&ids), DEFAULT_MAGLEV_TABLE_SIZE).unwrap();
        assert_eq!(digest(&table), 0x2a89_8bbd_6a96_bf35);
        let thousand = identities(1024);
        let large = maglev_table(&equal(&thousand), 65_537).unwrap();
        assert_eq!(digest(&large), 0x8a96_0fcd_0dbd_4a65);
    }

    #[test]
    fn maglev_is_deterministic_and_order_independent() {
        let ids = identities(10);
        let all: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| TableBackend {
                identity: id,
                weight: 1 + (i as u32 % 3),
            })
            .collect();
        let size = 16_381;
        let original = maglev_table(&all, size).unwrap();
        assert_eq!(maglev_table(&all, size).unwrap(), original);

        // Remove one, then add it back in the same place: exactly the original table.
        let removed = 4;
        let mut rest = all.clone();
        let back = rest.remove(removed);
        assert_ne!(
            by_identity(&maglev_table(&rest, size).unwrap(), &rest),
            by_identity(&original, &all)
        );
        rest.insert(removed, back);
        assert_eq!(maglev_table(&rest, size).unwrap(), original);

        // Added back at the end, or the list reversed: the same backend in every slot.
        rest.remove(removed);
        rest.push(back);
        assert_eq!(
            by_identity(&maglev_table(&rest, size).unwrap(), &rest),
            by_identity(&original, &all)
        );
        let reversed: Vec<_> = all.iter().rev().copied().collect();
        assert_eq!(
            by_identity(&maglev_table(&reversed, size).unwrap(), &reversed),
            by_identity(&original, &all)
        );

        // Pinned: the hash and fill are fixed across runs, machines and releases.
        let small = maglev_table(&equal(&identities(3)), 13).unwrap();
        assert_eq!(small, [0, 2, 1, 2, 1, 2, 0, 2, 1, 0, 0, 1, 0]);
        assert_eq!(
            identity_hash("198.18.2.2:8080", OFFSET_SEED),
            PINNED_OFFSET_HASH
        );
        assert_eq!(
            identity_hash("198.18.2.2:8080", SKIP_SEED),
            PINNED_SKIP_HASH
        );
    }

    /// The Maglev fill as the paper states it, one probe at a time: what `maglev_table`
    /// must equal whatever shortcuts it takes.
    fn maglev_reference(backends: &[TableBackend<'_>], size: u32) -> Vec<u32> {
        let usable = maglev_usable(backends, size).unwrap();
        let slots = u64::from(size);
        let mut turns: Vec<(&str, u32, u64, u64, u64, u64)> = usable
            .iter()
            .map(|&(index, b)| {
                let offset = identity_hash(b.identity, OFFSET_SEED) % slots;
                let skip = identity_hash(b.identity, SKIP_SEED) % (slots - 1) + 1;
                (b.identity, index, u64::from(b.weight), 0, offset, skip)
            })
            .collect();
        turns.sort_by(|a, b| a.0.cmp(b.0).then(a.1.cmp(&b.1)));
        let max_weight = turns.iter().map(|t| t.2).max().unwrap();
        let mut table = vec![EMPTY; size as usize];
        let mut filled = 0;
        loop {
            for (_, index, weight, credit, next, skip) in &mut turns {
                *credit += *weight;
                if *credit < max_weight {
                    continue;
                }
                *credit -= max_weight;
                while table[*next as usize] != EMPTY {
                    *next = (*next + *skip) % slots;
                }
                table[*next as usize] = *index;
                filled += 1;
                if filled == slots {
                    return table;
                }
            }
        }
    }

    /// FNV-1a over a table's entries: pins a large table in a line.
    fn digest(table: &[u32]) -> u64 {
        table.iter().fold(0xcbf2_9ce4_8422_2325, |h, &i| {
            (h ^ u64::from(i)).wrapping_mul(0x0100_0000_01b3)
        })
    }

    #[test]
    fn maglev_equals_the_one_probe_fill() {
        let mut rng = Rng(0x6d61_676c_6576);
        let mut below = |n: u64| rng.next_u64() % n;
        for round in 0..60 {
            let n = 1 + below(40) as usize;
            let ids: Vec<String> = (0..n)
                .map(|i| format!("198.18.{}.{}:{}", round, i, 8000 + i % 3))
                .collect();
            let weights: Vec<u32> = (0..n)
                .map(|_| [0, 1, 1, 1, 2, 3, 7, 100][below(8) as usize])
                .collect();
            let backends = weighted(&ids, &weights);
            let size = [7, 13, 101, 251, 1021, 4099, DEFAULT_MAGLEV_TABLE_SIZE][round % 7];
            match maglev_usable(&backends, size) {
                Ok(_) => assert_eq!(
                    maglev_table(&backends, size).unwrap(),
                    maglev_reference(&backends, size),
                    "round {round}: {n} backends, weights {weights:?}, size {size}"
                ),
                Err(e) => assert_eq!(maglev_table(&backends, size), Err(e)),
            }
        }
    }

    const PINNED_OFFSET_HASH: u64 = 7_127_584_071_309_151_601;
    const PINNED_SKIP_HASH: u64 = 15_939_698_866_268_882_457;

    fn weighted<'a>(ids: &'a [String], weights: &[u32]) -> Vec<TableBackend<'a>> {
        ids.iter()
            .zip(weights)
            .map(|(id, &weight)| TableBackend {
                identity: id,
                weight,
            })
            .collect()
    }

    fn counts(sequence: &[u32], n: usize) -> Vec<u64> {
        let mut counts = vec![0u64; n];
        for &i in sequence {
            counts[i as usize] += 1;
        }
        counts
    }

    /// Every prefix holds each backend within less than 1 of `prefix * weight / total`.
    fn assert_smooth(sequence: &[u32], weights: &[u64]) {
        let total: u64 = weights.iter().sum();
        let mut counts = vec![0u64; weights.len()];
        for (n, &i) in (1u64..).zip(sequence) {
            counts[i as usize] += 1;
            for (j, (&c, &w)) in counts.iter().zip(weights).enumerate() {
                let deviation = (i128::from(c) * i128::from(total) - i128::from(n * w)).abs();
                assert!(
                    deviation < i128::from(total),
                    "weights {weights:?}: after {n} picks backend {j} has {c}, ideal {:.3}",
                    (n * w) as f64 / total as f64
                );
            }
        }
    }

    #[test]
    fn round_robin_counts_follow_reduced_weights() {
        let ids = identities(5);
        let backends = weighted(&ids, &[2, 4, 0, 6, 10]);
        let sequence = round_robin_sequence(&backends, 1000).unwrap();
        assert_eq!(sequence.len(), 11);
        assert_eq!(counts(&sequence, 5), [1, 2, 0, 3, 5]);
        assert_smooth(&sequence, &[1, 2, 0, 3, 5]);
    }

    #[test]
    fn round_robin_is_smooth() {
        let mut rng = Rng(3);
        let ids = identities(12);
        for _ in 0..2000 {
            let n = 1 + (rng.next_u64() % 12) as usize;
            let cap = [3, 10, 50, 1000][(rng.next_u64() % 4) as usize];
            let weights: Vec<u32> = (0..n).map(|_| (rng.next_u64() % cap) as u32).collect();
            let backends = weighted(&ids[..n], &weights);
            let Ok(sequence) = round_robin_sequence(&backends, u32::MAX) else {
                assert!(weights.iter().all(|&w| w == 0));
                continue;
            };
            let g = weights.iter().fold(0, |g, &w| gcd(g, u64::from(w)));
            let reduced: Vec<u64> = weights.iter().map(|&w| u64::from(w) / g).collect();
            assert_eq!(counts(&sequence, n), reduced, "weights {weights:?}");
            assert_smooth(&sequence, &reduced);
        }
        // The case where nginx's smooth weighted round robin falls a whole turn behind.
        let weights = [42, 5, 2, 2, 42, 2, 3];
        let sequence = round_robin_sequence(&weighted(&ids, &weights), u32::MAX).unwrap();
        assert_smooth(&sequence, &weights.map(u64::from));
    }

    #[test]
    fn round_robin_equal_weights_rotate() {
        let ids = identities(5);
        let backends = weighted(&ids, &[7, 7, 0, 7, 7]);
        assert_eq!(round_robin_sequence(&backends, 100).unwrap(), [0, 1, 3, 4]);
        let one = weighted(&ids, &[0, 0, 9]);
        assert_eq!(round_robin_sequence(&one, 100).unwrap(), [2]);
    }

    #[test]
    fn round_robin_interleaves() {
        let ids = identities(3);
        let sequence = round_robin_sequence(&weighted(&ids, &[5, 1, 1]), 100).unwrap();
        assert_eq!(sequence, [0, 0, 1, 0, 0, 2, 0]);
    }

    #[test]
    fn round_robin_caps_length() {
        let ids = identities(60);
        let backends = weighted(&ids, &[1000, 1, 3000]);
        let sequence = round_robin_sequence(&backends, 100).unwrap();
        assert!(sequence.len() <= 100, "{}", sequence.len());
        let c = counts(&sequence, 3);
        assert!(c.iter().all(|&c| c >= 1), "{c:?}");
        assert!((c[2] as f64 / c[0] as f64 - 3.0).abs() < 0.2, "{c:?}");
        assert_smooth(&sequence, &c);

        // Many light backends and one heavy: the light ones keep one turn each.
        let mut weights = vec![1u32; 59];
        weights.push(1_000_000);
        let backends = weighted(&ids, &weights);
        let sequence = round_robin_sequence(&backends, 80).unwrap();
        assert!(sequence.len() <= 80, "{}", sequence.len());
        let c = counts(&sequence, 60);
        assert!(c[..59].iter().all(|&c| c == 1), "{c:?}");
        assert_eq!(c[59], 80 - 59);

        let equal_weights = weighted(&ids[..3], &[1_000_000, 1_000_000, 1_000_000]);
        assert_eq!(
            round_robin_sequence(&equal_weights, 2).unwrap_err(),
            TableError::TooSmall {
                size: 2,
                backends: 3
            }
        );
        assert_eq!(round_robin_sequence(&equal_weights, 3).unwrap(), [0, 1, 2]);

        let huge = weighted(&ids[..2], &[u32::MAX, u32::MAX - 1]);
        let sequence = round_robin_sequence(&huge, 1000).unwrap();
        assert!(
            sequence.len() <= 1000 && sequence.len() >= 999,
            "{}",
            sequence.len()
        );
    }

    #[test]
    fn round_robin_without_weight_is_an_error() {
        let ids = identities(3);
        assert_eq!(
            round_robin_sequence(&weighted(&ids, &[0, 0, 0]), 10),
            Err(TableError::NoWeight)
        );
        assert_eq!(round_robin_sequence(&[], 10), Err(TableError::NoWeight));
    }
}
