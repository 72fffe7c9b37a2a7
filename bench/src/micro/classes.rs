//! What is measured: the classes (a frame, a program, the path it must take and the counters
//! that must move), in the order of a round.

use super::*;

// ---------------------------------------------------------------------------------------------
// What is measured

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Via {
    Direct,
    Harness,
    HarnessVary,
}

impl Via {
    pub(super) fn label(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Harness => "harness",
            Via::HarnessVary => "harness (vary)",
        }
    }
}

/// Harness object programs.
pub(super) const HARNESS: &str = "harness";
pub(super) const HARNESS_VARY: &str = "harness_vary";
pub(super) const HARNESS_V6: &str = "harness_v6";
pub(super) const HARNESS_V6_VARY: &str = "harness_v6_vary";
pub(super) const FLOOR_PASS: &str = "floor_pass";
pub(super) const FLOOR_TX_ONLY: &str = "floor_tx_only";
pub(super) const FLOOR_TX: &str = "floor_tx";
pub(super) const FLOOR_HANDOFF: &str = "floor_handoff";
pub(super) const FLOOR_FIB: &str = "floor_fib";
pub(super) const HARNESS_PROGRAMS: [&str; 9] = [
    HARNESS,
    HARNESS_VARY,
    HARNESS_V6,
    HARNESS_V6_VARY,
    FLOOR_PASS,
    FLOOR_TX_ONLY,
    FLOOR_TX,
    FLOOR_HANDOFF,
    FLOOR_FIB,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Target {
    /// A floor program of the harness object.
    Floor(&'static str),
    /// meshlb_xdp of dataplane `n`.
    Meshlb(usize),
    /// The tracked floor `n` (`Bench::tracked`): one LRU lookup of the 5-tuple, DNAT.
    Tracked(usize),
}

/// What the bytes out must look like.
#[derive(Clone, Copy, Debug)]
pub(super) enum Check {
    /// Exactly the input.
    Unchanged,
    /// The input with its MACs swapped `n` times (n odd: swapped).
    MacSwaps,
    /// The input, its addresses the floor's hand-off to TC.
    FloorHandoff,
    /// The input with a `harness_vary` source address and port, checksums valid.
    VaryFloor,
    /// The input (to backend 0) with the MACs the FIB gives for backend 0.
    FibMacs,
    /// DNAT to one of the 16 backends, checksums valid; MACs from the FIB (redirect) or
    /// the hand-off to the TC program.
    Dnat { via_tc: bool, vary: bool },
    /// DNAT to the task on the peer, wrapped for the tunnel to the peer: outer and inner
    /// checksums valid, MACs from the FIB.
    Encap,
    /// Unwrapped and DNATed to the local task's address (backend 0), the client kept.
    Decap,
    /// DNAT to one of the 16 backends by the tracked floor, checksums valid, its own MACs;
    /// the source a `harness_vary` one (`vary`) or the input's.
    TrackedDnat { vary: bool },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum Section {
    Floor,
    Meshlb,
    Ipv6,
    Mesh,
    Scaling,
}

pub(super) struct Class {
    pub(super) key: String,
    pub(super) label: String,
    pub(super) section: Section,
    pub(super) via: Via,
    pub(super) target: Target,
    pub(super) frame: Vec<u8>,
    pub(super) retval: u32,
    pub(super) check: Check,
    /// Counters that must grow by exactly the iteration count; every other by 0.
    pub(super) counters: &'static [StatSlot],
    /// For the scaling section: the class this one is compared with, and what differs.
    pub(super) baseline: Option<(&'static str, String)>,
    /// For the scaling section: the largest ratio to the baseline the row is held to.
    pub(super) bound: f64,
    /// `Via::HarnessVary` only: 0 for a new flow every packet, N to cycle through N flows
    /// (the harness's `VARY_SPAN`).
    pub(super) vary_span: u32,
    /// Measured only in the single-shot suite.
    pub(super) single_shot_only: bool,
    /// Arrives on the backend-side interface (a peer's tunnel packet), not the client's.
    pub(super) from_backend: bool,
    pub(super) katran: Option<(f64, &'static str)>,
}

/// The scaling check's bound: flat within this ratio of 1 service and 0 other flows.
pub(super) const FLAT_WITHIN: f64 = 1.2;
/// The spread rows' baseline: every packet another of 1,024 tracked flows (issue 16's cold
/// flows are held to it).
pub(super) const SPREAD_BASELINE: &str = "established-spread@1024";
pub(super) const SPREAD_BASELINE_FLOWS: u32 = 1024;
/// The tracked floor's rows: the same flow every packet, and every packet another of the
/// 1,024 flows its table holds (the baseline of its own spread rows).
pub(super) const TRACKED_FLOOR: &str = "tracked-floor";
pub(super) const TRACKED_SPREAD_BASELINE: &str = "tracked-floor-spread@1024";
/// The spread rows' tables below the prefilled one's: the baseline and issue 16's 100,000.
pub(super) const SPREAD_FLOWS: [u32; 2] = [SPREAD_BASELINE_FLOWS, 100_000];

pub(super) const ESTABLISHED_REDIRECT: &[StatSlot] =
    &[StatSlot::Rx, StatSlot::NatForward, StatSlot::TxXdpRedirect];
pub(super) const ESTABLISHED_TC: &[StatSlot] =
    &[StatSlot::Rx, StatSlot::NatForward, StatSlot::TxViaTc];
pub(super) const NEW_FLOW_REDIRECT: &[StatSlot] = &[
    StatSlot::Rx,
    StatSlot::NewFlow,
    StatSlot::NatForward,
    StatSlot::TxXdpRedirect,
];
pub(super) const PASS_NOT_FRONTEND: &[StatSlot] = &[StatSlot::Rx, StatSlot::PassNotFrontend];

/// One single-shot series: mean and median of the kernel-reported per-call durations, and the
/// wall-clock time of a whole call (syscall included).
#[derive(Clone, Copy, Debug)]
pub(super) struct SingleShot {
    pub(super) mean_ns: f64,
    pub(super) median_ns: u64,
    pub(super) wall_us: f64,
}

/// One measurement: kernel-reported mean ns per iteration, and wall-clock ns per iteration of
/// the whole syscall (a cross-check; includes preemption, which the kernel's timer leaves out).
#[derive(Clone, Copy, Debug)]
pub(super) struct Sample {
    pub(super) kernel_ns: f64,
    pub(super) wall_ns: f64,
}

/// The IPv6 frames (80 bytes).
pub(super) struct Frames6 {
    pub(super) ack: Vec<u8>,
    pub(super) syn: Vec<u8>,
    pub(super) non_vip: Vec<u8>,
}

/// A class with the defaults of a table row.
#[allow(clippy::too_many_arguments)]
fn class(
    key: &str,
    label: &str,
    section: Section,
    via: Via,
    target: Target,
    frame: &[u8],
    retval: u32,
    check: Check,
) -> Class {
    Class {
        key: key.to_owned(),
        label: label.to_owned(),
        section,
        via,
        target,
        frame: frame.to_vec(),
        retval,
        check,
        counters: &[],
        baseline: None,
        bound: FLAT_WITHIN,
        vary_span: 0,
        single_shot_only: false,
        from_backend: false,
        katran: None,
    }
}

/// A floor: the ACK frame through a harness program, with Katran's figure for it.
#[allow(clippy::too_many_arguments)]
fn floor(
    frames: &Frames,
    key: &str,
    label: &str,
    via: Via,
    name: &'static str,
    retval: u32,
    check: Check,
    katran: Option<(f64, &'static str)>,
) -> Class {
    Class {
        katran,
        ..class(
            key,
            label,
            Section::Floor,
            via,
            Target::Floor(name),
            &frames.ack,
            retval,
            check,
        )
    }
}

/// A class of meshlb's program on dataplane `dp`.
#[allow(clippy::too_many_arguments)]
fn meshlb(
    key: &str,
    label: &str,
    via: Via,
    dp: usize,
    frame: &[u8],
    retval: u32,
    check: Check,
    counters: &'static [StatSlot],
    katran: Option<(f64, &'static str)>,
) -> Class {
    Class {
        counters,
        katran,
        ..class(
            key,
            label,
            Section::Meshlb,
            via,
            Target::Meshlb(dp),
            frame,
            retval,
            check,
        )
    }
}

const REDIRECT: Check = Check::Dnat {
    via_tc: false,
    vary: false,
};
/// `REDIRECT` of a `harness_vary` frame (a new flow's, or a spread row's established one).
const REDIRECT_VARIED: Check = Check::Dnat {
    via_tc: false,
    vary: true,
};
fn katran_new_flow(katran: &KatranReference) -> Option<(f64, &'static str)> {
    Some((
        katran.new_flow_4m,
        "harness (vary) -> VIP SYN, new flow every packet (noflood build, 4M-entry LRU full)",
    ))
}

fn katran_lru_hit(katran: &KatranReference) -> Option<(f64, &'static str)> {
    Some((
        katran.lru_hit,
        "harness -> VIP ACK, same flow (LRU hit; IPIP encap, XDP_TX)",
    ))
}

/// Every class, in the order of a round, each beside Katran's figure for its path.
pub(super) fn classes(frames: &Frames, layout: &Layout, katran: &KatranReference) -> Vec<Class> {
    let mut list = floor_classes(frames, katran);
    list.extend(meshlb_classes(frames, layout, katran));
    list.extend(ipv6_classes(frames, layout));
    list.extend(mesh_classes(frames, layout));
    list.extend(scaling_classes(frames, layout));
    list.extend(tracked_floor_classes(&frames.ack, &layout.tracked));
    list
}

/// The tracked floor (`bench pps`' contender of that name): the least a balancer that tracks
/// flows does per packet, one LRU lookup of the 5-tuple in a table sized as meshlb's and a
/// DNAT. The same flow every packet (against meshlb's established row: what meshlb does
/// beyond it), and the spread rows' flow counts held to the same bounds as meshlb's (what
/// memory costs any tracker here, whatever its entry layout). `tracked[i]` is the span of
/// floor `i`; the first is 0, the same flow.
fn tracked_floor_classes(ack: &[u8], tracked: &[u32]) -> Vec<Class> {
    tracked
        .iter()
        .enumerate()
        .map(|(i, &span)| {
            let target = Target::Tracked(i);
            if span == 0 {
                return class(
                    TRACKED_FLOOR,
                    "Tracked floor: one LRU lookup of the 5-tuple, DNAT -> XDP_REDIRECT",
                    Section::Floor,
                    Via::Harness,
                    target,
                    ack,
                    XDP_REDIRECT,
                    Check::TrackedDnat { vary: false },
                );
            }
            let (baseline, bound) = spread_bound(span, TRACKED_FLOOR, TRACKED_SPREAD_BASELINE);
            Class {
                baseline: Some((
                    baseline,
                    format!("every packet another of the {span} flows the table holds"),
                )),
                bound,
                vary_span: span,
                ..class(
                    &format!("tracked-floor-spread@{span}"),
                    &format!(
                        "scaling: tracked floor, every packet another of {span} -> XDP_REDIRECT"
                    ),
                    Section::Scaling,
                    Via::HarnessVary,
                    target,
                    ack,
                    XDP_REDIRECT,
                    Check::TrackedDnat { vary: true },
                )
            }
        })
        .collect()
}

/// The mesh tunnel between swarm nodes (issue 13): wrapping a flow for a task on the peer,
/// and unwrapping a peer's packet for a task here.
fn mesh_classes(frames: &Frames, layout: &Layout) -> Vec<Class> {
    const TUNNEL_SENT: &[StatSlot] = &[
        StatSlot::Rx,
        StatSlot::NatForward,
        StatSlot::TunnelSent,
        StatSlot::TxXdpRedirect,
    ];
    const TUNNEL_RECEIVED: &[StatSlot] = &[
        StatSlot::Rx,
        StatSlot::TunnelReceived,
        StatSlot::NatForward,
        StatSlot::TxXdpRedirect,
    ];
    let mesh = |key, label, via, frame, check, counters| Class {
        section: Section::Mesh,
        ..meshlb(
            key,
            label,
            via,
            layout.mesh,
            frame,
            XDP_REDIRECT,
            check,
            counters,
            None,
        )
    };
    vec![
        mesh(
            "mesh-encap",
            "mesh: VIP, established flow to a task on another node -> wrapped for the tunnel, XDP_REDIRECT",
            Via::Harness,
            &frames.ack,
            Check::Encap,
            TUNNEL_SENT,
        ),
        // The harness restores 60- and 80-byte frames only; each single-shot call starts
        // from the input, so the 88-byte tunnel packet is measured that way.
        Class {
            single_shot_only: true,
            from_backend: true,
            ..mesh(
                "mesh-decap-direct",
                "mesh: a peer's tunnel packet of an established flow -> unwrapped to the local task, XDP_REDIRECT",
                Via::Direct,
                &frames.tunneled_ack,
                Check::Decap,
                TUNNEL_RECEIVED,
            )
        },
        Class {
            single_shot_only: true,
            ..mesh(
                "mesh-encap-direct",
                "mesh: VIP, established flow to a task on another node -> wrapped, XDP_REDIRECT",
                Via::Direct,
                &frames.ack,
                Check::Encap,
                TUNNEL_SENT,
            )
        },
    ]
}

/// The floors: what the harness and the simplest programs cost.
fn floor_classes(frames: &Frames, katran: &KatranReference) -> Vec<Class> {
    let floor = |key, label, via, name, retval, check, katran| {
        floor(frames, key, label, via, name, retval, check, katran)
    };
    vec![
        floor(
            "floor-pass-direct",
            "Floor: XDP_PASS only",
            Via::Direct,
            FLOOR_PASS,
            XDP_PASS,
            Check::Unchanged,
            Some((katran.pass_direct, "direct: XDP_PASS floor")),
        ),
        floor(
            "floor-tx-direct",
            "Floor: parse eth/IPv4/TCP, swap MACs, XDP_TX",
            Via::Direct,
            FLOOR_TX,
            XDP_TX,
            Check::MacSwaps,
            Some((katran.tx_direct, "direct: parse + MAC swap + XDP_TX floor")),
        ),
        Class {
            frame: frames.to_backend.clone(),
            ..floor(
                "floor-fib-direct",
                "Floor: parse, bpf_fib_lookup (to a backend), set MACs, XDP_TX",
                Via::Direct,
                FLOOR_FIB,
                XDP_TX,
                Check::FibMacs,
                None,
            )
        },
        floor(
            "harness-floor",
            "Harness floor: restore + tail call, target returns XDP_TX",
            Via::Harness,
            FLOOR_TX_ONLY,
            XDP_TX,
            Check::Unchanged,
            Some((katran.harness_tx_only, "harness -> XDP_TX-only target")),
        ),
        floor(
            "harness-pass",
            "Harness -> XDP_PASS floor",
            Via::Harness,
            FLOOR_PASS,
            XDP_PASS,
            Check::Unchanged,
            Some((katran.harness_pass, "harness -> XDP_PASS floor")),
        ),
        floor(
            "harness-tx",
            "Harness -> parse/MAC-swap/TX floor",
            Via::Harness,
            FLOOR_TX,
            XDP_TX,
            Check::MacSwaps,
            katran
                .harness_parse_tx
                .map(|ns| (ns, "harness -> parse/MAC-swap/TX floor")),
        ),
        floor(
            "harness-handoff",
            "Harness -> 12 B hand-off over the MACs + XDP_PASS (TC hand-off floor)",
            Via::Harness,
            FLOOR_HANDOFF,
            XDP_PASS,
            Check::FloorHandoff,
            None,
        ),
        floor(
            "harness-vary-floor",
            "Harness floor, vary mode (new source every packet)",
            Via::HarnessVary,
            FLOOR_TX_ONLY,
            XDP_TX,
            Check::VaryFloor,
            Some((
                katran.harness_vary_tx_only,
                "harness (vary) -> XDP_TX-only target",
            )),
        ),
    ]
}

/// meshlb's IPv4 paths.
fn meshlb_classes(frames: &Frames, layout: &Layout, katran: &KatranReference) -> Vec<Class> {
    let (ack, syn, non_vip) = (&frames.ack, &frames.syn, &frames.non_vip);
    vec![
        meshlb(
            "established",
            "meshlb: VIP, established flow (conntrack hit) -> XDP_REDIRECT",
            Via::Harness,
            layout.main,
            ack,
            XDP_REDIRECT,
            REDIRECT,
            ESTABLISHED_REDIRECT,
            katran_lru_hit(katran),
        ),
        meshlb(
            "established-tc",
            "meshlb: VIP, established flow -> TC hand-off (PASS, hand-off over the MACs)",
            Via::Harness,
            layout.tc,
            ack,
            XDP_PASS,
            Check::Dnat {
                via_tc: true,
                vary: false,
            },
            ESTABLISHED_TC,
            katran_lru_hit(katran),
        ),
        meshlb(
            "new-flow",
            "meshlb: VIP, SYN of a new flow every packet (Maglev, table full)",
            Via::HarnessVary,
            layout.new,
            syn,
            XDP_REDIRECT,
            REDIRECT_VARIED,
            NEW_FLOW_REDIRECT,
            katran_new_flow(katran),
        ),
        meshlb(
            "new-flow-rr",
            "meshlb: VIP, SYN of a new flow every packet (round-robin, table full)",
            Via::HarnessVary,
            layout.rr,
            syn,
            XDP_REDIRECT,
            REDIRECT_VARIED,
            NEW_FLOW_REDIRECT,
            katran_new_flow(katran),
        ),
        meshlb(
            "pass-through-direct",
            "meshlb: non-VIP destination -> XDP_PASS",
            Via::Direct,
            layout.main,
            non_vip,
            XDP_PASS,
            Check::Unchanged,
            PASS_NOT_FRONTEND,
            Some((katran.non_vip_direct, "direct: non-VIP")),
        ),
        meshlb(
            "pass-through-harness",
            "meshlb: non-VIP destination -> XDP_PASS",
            Via::Harness,
            layout.main,
            non_vip,
            XDP_PASS,
            Check::Unchanged,
            PASS_NOT_FRONTEND,
            Some((katran.non_vip_harness, "harness -> non-VIP")),
        ),
        // Single-shot only: each call starts from the input, so a direct run is valid.
        Class {
            single_shot_only: true,
            ..meshlb(
                "established-direct",
                "meshlb: VIP, established flow -> XDP_REDIRECT",
                Via::Direct,
                layout.main,
                ack,
                XDP_REDIRECT,
                REDIRECT,
                ESTABLISHED_REDIRECT,
                None,
            )
        },
    ]
}

/// meshlb's IPv6 paths.
fn ipv6_classes(frames: &Frames, layout: &Layout) -> Vec<Class> {
    let v6 = &frames.v6;
    let floor = |key, label, via, name, retval, check, katran| {
        floor(frames, key, label, via, name, retval, check, katran)
    };
    vec![
        Class {
            frame: v6.ack.clone(),
            section: Section::Ipv6,
            ..floor(
                "harness-floor-v6",
                "IPv6: harness floor (80-byte frame), target returns XDP_TX",
                Via::Harness,
                FLOOR_TX_ONLY,
                XDP_TX,
                Check::Unchanged,
                None,
            )
        },
        Class {
            section: Section::Ipv6,
            ..meshlb(
                "established-v6",
                "IPv6: VIP, established flow (conntrack hit) -> XDP_REDIRECT",
                Via::Harness,
                layout.main6,
                &v6.ack,
                XDP_REDIRECT,
                REDIRECT,
                ESTABLISHED_REDIRECT,
                None,
            )
        },
        Class {
            section: Section::Ipv6,
            ..meshlb(
                "new-flow-v6",
                "IPv6: VIP, SYN of a new flow every packet (Maglev, table full)",
                Via::HarnessVary,
                layout.new6,
                &v6.syn,
                XDP_REDIRECT,
                REDIRECT_VARIED,
                NEW_FLOW_REDIRECT,
                None,
            )
        },
        Class {
            section: Section::Ipv6,
            ..meshlb(
                "pass-through-v6-direct",
                "IPv6: non-VIP destination -> XDP_PASS",
                Via::Direct,
                layout.main6,
                &v6.non_vip,
                XDP_PASS,
                Check::Unchanged,
                PASS_NOT_FRONTEND,
                None,
            )
        },
    ]
}

/// The established and pass-through paths again on the scaled dataplanes.
fn scaling_classes(frames: &Frames, layout: &Layout) -> Vec<Class> {
    let (ack, non_vip) = (&frames.ack, &frames.non_vip);
    let mut list = Vec::new();
    for (dp, what) in &layout.scaled {
        list.push(Class {
            section: Section::Scaling,
            baseline: Some(("established", what.clone())),
            ..meshlb(
                &format!("established@{what}"),
                &format!("scaling: established flow -> XDP_REDIRECT, {what}"),
                Via::Harness,
                *dp,
                ack,
                XDP_REDIRECT,
                REDIRECT,
                ESTABLISHED_REDIRECT,
                None,
            )
        });
        list.push(Class {
            section: Section::Scaling,
            baseline: Some(("pass-through-direct", what.clone())),
            ..meshlb(
                &format!("pass-through-direct@{what}"),
                &format!("scaling: non-VIP destination -> XDP_PASS, {what}"),
                Via::Direct,
                *dp,
                non_vip,
                XDP_PASS,
                Check::Unchanged,
                PASS_NOT_FRONTEND,
                None,
            )
        });
    }
    list.extend(spread_classes(ack, &layout.spread));
    list
}

/// A spread row's baseline and bound: the 1,024-flow row against the same flow every packet
/// (`same_flow`), flat within `FLAT_WITHIN`; larger tables against the 1,024-flow row
/// (`spread_baseline`), issue 16's 1.15x up to 100,000 flows and 1.3x above.
fn spread_bound(
    span: u32,
    same_flow: &'static str,
    spread_baseline: &'static str,
) -> (&'static str, f64) {
    if span == SPREAD_BASELINE_FLOWS {
        (same_flow, FLAT_WITHIN)
    } else if span <= 100_000 {
        (spread_baseline, 1.15)
    } else {
        (spread_baseline, 1.3)
    }
}

/// Cold flows (issue 16): the established path with every packet another of the N flows its
/// table holds (the harness cycles through them), N = 1,024, 100,000 and `--prefill-flows`,
/// each in a dataplane of its own; the larger two against 1,024, held to 1.15x up to 100,000
/// flows and 1.3x above.
fn spread_classes(ack: &[u8], tables: &[(usize, u32)]) -> Vec<Class> {
    tables
        .iter()
        .map(|&(dp, span)| {
            let (baseline, bound) = spread_bound(span, "established", SPREAD_BASELINE);
            let variant = format!("every packet another of the {span} flows the table holds");
            Class {
                section: Section::Scaling,
                baseline: Some((baseline, variant)),
                bound,
                vary_span: span,
                ..meshlb(
                    &format!("established-spread@{span}"),
                    &format!(
                        "scaling: established flows, every packet another of {span} -> XDP_REDIRECT"
                    ),
                    Via::HarnessVary,
                    dp,
                    ack,
                    XDP_REDIRECT,
                    REDIRECT_VARIED,
                    ESTABLISHED_REDIRECT,
                    None,
                )
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_rows_are_held_to_the_1024_flow_row_by_issue_16s_bounds() {
        let rows = spread_classes(&[0; FRAME_LEN], &[(7, 1024), (8, 100_000), (9, 1_000_000)]);
        let keys: Vec<&str> = rows.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(
            keys[0], SPREAD_BASELINE,
            "the baseline row has the baseline's key"
        );
        let held: Vec<(Option<&str>, f64, u32, Target)> = rows
            .iter()
            .map(|c| {
                (
                    c.baseline.as_ref().map(|b| b.0),
                    c.bound,
                    c.vary_span,
                    c.target,
                )
            })
            .collect();
        assert_eq!(
            held,
            [
                (Some("established"), FLAT_WITHIN, 1024, Target::Meshlb(7)),
                (Some(SPREAD_BASELINE), 1.15, 100_000, Target::Meshlb(8)),
                (Some(SPREAD_BASELINE), 1.3, 1_000_000, Target::Meshlb(9)),
            ]
        );
    }

    #[test]
    fn tracked_floor_rows_are_held_like_meshlbs() {
        let rows = tracked_floor_classes(&[0; FRAME_LEN], &[0, 1024, 100_000, 1_000_000]);
        let held: Vec<(&str, Option<&str>, f64, u32, Target)> = rows
            .iter()
            .map(|c| {
                (
                    c.key.as_str(),
                    c.baseline.as_ref().map(|b| b.0),
                    c.bound,
                    c.vary_span,
                    c.target,
                )
            })
            .collect();
        assert_eq!(
            held,
            [
                (TRACKED_FLOOR, None, FLAT_WITHIN, 0, Target::Tracked(0)),
                (
                    TRACKED_SPREAD_BASELINE,
                    Some(TRACKED_FLOOR),
                    FLAT_WITHIN,
                    1024,
                    Target::Tracked(1)
                ),
                (
                    "tracked-floor-spread@100000",
                    Some(TRACKED_SPREAD_BASELINE),
                    1.15,
                    100_000,
                    Target::Tracked(2)
                ),
                (
                    "tracked-floor-spread@1000000",
                    Some(TRACKED_SPREAD_BASELINE),
                    1.3,
                    1_000_000,
                    Target::Tracked(3)
                ),
            ]
        );
    }
}
