//! Katran's figures, measured with the method `bench micro` uses, once per machine kind: the
//! VMs this project runs on come as AMD EPYC or Intel Xeon guests, whose figures differ by up
//! to 2.5× on the same path, so a run is compared with the reference taken on its own kind.

use serde::Serialize;

/// One measurement of Katran's XDP balancer (medians, ns per packet). `None`: not measured
/// on that machine kind.
#[derive(Debug, Serialize)]
pub struct KatranReference {
    /// The results file with the method and every row.
    pub file: &'static str,
    /// The machine kind it was measured on, and when.
    pub machine: &'static str,
    /// `vendor_id` of /proc/cpuinfo on that machine kind.
    #[serde(skip)]
    vendor_id: &'static str,
    pub pass_direct: f64,
    pub tx_direct: f64,
    pub harness_tx_only: f64,
    pub harness_pass: f64,
    pub harness_parse_tx: Option<f64>,
    pub harness_vary_tx_only: f64,
    /// Harness target that grows the head by 20 bytes (Katran's encapsulation) and returns
    /// XDP_TX: what undoing the encapsulation costs the harness.
    pub harness_adjust_head: f64,
    pub non_vip_direct: f64,
    pub non_vip_harness: f64,
    /// VIP ACK of an established flow (LRU hit, IPIP encapsulation, XDP_TX), harness.
    pub lru_hit: f64,
    /// VIP SYN of a new flow every packet, flood guard off, a full 4M-entry LRU per CPU.
    pub new_flow_4m: f64,
    pub new_flow_500k: f64,
    pub new_flow_1k: Option<f64>,
    /// Single-shot means (Katran's own perf method).
    pub single_shot_pass: f64,
    pub single_shot_tx: Option<f64>,
    pub single_shot_non_vip: f64,
    pub single_shot_lru_hit: f64,
}

const AMD_EPYC: KatranReference = KatranReference {
    file: "bench/results/katran-reference.md",
    machine: "2-vCPU AMD EPYC (Zen 4) KVM guest, 2026-11-24",
    vendor_id: "AuthenticAMD",
    pass_direct: 21.0,
    tx_direct: 25.0,
    harness_tx_only: 34.0,
    harness_pass: 34.0,
    harness_parse_tx: Some(38.0),
    harness_vary_tx_only: 34.0,
    harness_adjust_head: 46.0,
    non_vip_direct: 69.0,
    non_vip_harness: 79.0,
    lru_hit: 141.0,
    new_flow_4m: 938.0,
    new_flow_500k: 814.0,
    new_flow_1k: Some(360.0),
    single_shot_pass: 78.1,
    single_shot_tx: Some(82.2),
    single_shot_non_vip: 134.5,
    single_shot_lru_hit: 226.8,
};

const INTEL_XEON: KatranReference = KatranReference {
    file: "bench/results/katran-reference-intel-2026-12-04.md",
    machine: "2-vCPU Intel Xeon (Emerald Rapids) KVM guest, 2026-12-04",
    vendor_id: "GenuineIntel",
    pass_direct: 9.0,
    tx_direct: 10.0,
    harness_tx_only: 17.0,
    harness_pass: 17.0,
    harness_parse_tx: None,
    harness_vary_tx_only: 18.0,
    harness_adjust_head: 21.0,
    non_vip_direct: 32.0,
    non_vip_harness: 44.0,
    lru_hit: 104.0,
    new_flow_4m: 897.0,
    new_flow_500k: 675.0,
    new_flow_1k: None,
    single_shot_pass: 50.0,
    single_shot_tx: None,
    single_shot_non_vip: 80.6,
    single_shot_lru_hit: 145.6,
};

/// The reference for a CPU of this `vendor_id`, and whether it was measured on that kind (if
/// not, the AMD one, the project's first, with the report saying so).
pub fn for_vendor(vendor_id: &str) -> (&'static KatranReference, bool) {
    [&AMD_EPYC, &INTEL_XEON]
        .into_iter()
        .find(|r| r.vendor_id == vendor_id)
        .map_or((&AMD_EPYC, false), |r| (r, true))
}

impl KatranReference {
    /// Katran's single-shot mean for the path of a `bench micro` class, if measured.
    pub fn single_shot(&self, class_key: &str) -> Option<f64> {
        match class_key {
            "floor-pass-direct" => Some(self.single_shot_pass),
            "floor-tx-direct" => self.single_shot_tx,
            "pass-through-direct" => Some(self.single_shot_non_vip),
            "established-direct" => Some(self.single_shot_lru_hit),
            _ => None,
        }
    }

    /// What the harness adds to a direct run.
    pub fn harness_overhead(&self) -> f64 {
        self.harness_pass - self.pass_direct
    }

    /// The established flow as if test-run could repeat it without the harness: the harness
    /// row less the harness and its undoing of the encapsulation (two head adjustments).
    pub fn lru_hit_direct_equivalent(&self) -> f64 {
        self.lru_hit - self.harness_overhead() - self.adjust_head()
    }

    /// One `bpf_xdp_adjust_head` call: the harness row of a target that grows the head, less
    /// the plain harness floor, is two of them (the target's and the harness's undoing).
    pub fn adjust_head(&self) -> f64 {
        (self.harness_adjust_head - self.harness_tx_only) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_gets_its_own_reference_and_others_the_first() {
        assert_eq!(for_vendor("GenuineIntel").0.new_flow_4m, 897.0);
        assert!(for_vendor("GenuineIntel").1);
        assert_eq!(for_vendor("AuthenticAMD").0.new_flow_4m, 938.0);
        assert!(for_vendor("AuthenticAMD").1);
        let (other, measured) = for_vendor("HygonGenuine");
        assert_eq!(other.file, AMD_EPYC.file);
        assert!(!measured);
    }

    /// The AMD file's own derived figures: 13 ns of harness, ≈122 ns direct-equivalent.
    #[test]
    fn derived_figures_match_the_reference_file() {
        assert_eq!(AMD_EPYC.harness_overhead(), 13.0);
        assert_eq!(AMD_EPYC.adjust_head(), 6.0);
        assert_eq!(AMD_EPYC.lru_hit_direct_equivalent(), 122.0);
    }
}
