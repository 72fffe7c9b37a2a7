//! A node namespace for running the real kernel program on crafted packets with
//! BPF_PROG_TEST_RUN: one veth toward the client and one toward the backends, neighbours
//! resolved, forwarding on, so the program's FIB lookups succeed as on a real node.

use std::{net::IpAddr, path::Path, time::Duration};

use anyhow::{Context as _, Result, bail};
use aya::{
    maps::{HashMap, MapData},
    programs::{ProgramError, TestRun as _, TestRunOptions},
};
use lb_common::{
    maps::{Flow, FlowKey, Handoff, flow_kind},
    stats::StatSlot,
};

use super::{Netns, packet::CLIENT_MAC};
use lb_userspace::{
    dataplane::{self, Dataplane, LoadOptions, StatsSnapshot},
    plan::{self, DesiredState},
    source::file::ServiceFile,
};

/// The node's address toward the client, and toward the backends.
pub const NODE_CLIENT_SIDE: &str = "198.18.1.1";
pub const NODE_BACKEND_SIDE: &str = "198.18.2.1";
/// The client whose neighbour entry exists.
pub const CLIENT: &str = "198.18.1.2";
/// Backends with neighbour entries: 198.18.2.10 + i and fd00:2::a + i, MAC `backend_mac(i)`.
pub const BACKENDS: usize = 16;

/// Interfaces of the node: toward the client and toward the backends.
pub const CLIENT_IF: &str = "lbc";
pub const BACKEND_IF: &str = "lbb";

/// The MAC address the node's neighbour table gives backend `i`.
pub fn backend_mac(i: usize) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x02, 0x10 + i as u8]
}

/// `aa:bb:…` form of a MAC address.
pub fn mac_text(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The MAC address of `interface` in `ns` (sysfs shows the mounting namespace, so ask `ip`).
pub fn read_mac(ns: &Netns, interface: &str) -> Result<[u8; 6]> {
    let text = ns.ip(&["-o", "link", "show", interface])?;
    let field = text
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .with_context(|| format!("no MAC in {text}"))?;
    let bytes = field
        .split(':')
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<Result<Vec<u8>, _>>()?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("bad MAC {field}"))
}

/// The node namespace.
pub struct ProgNode {
    pub ns: Netns,
}

impl ProgNode {
    /// Builds the node; `extra` are more `ip -batch` lines (e.g. routes the FIB refuses).
    pub fn new(prefix: &str, extra: &[String]) -> Result<Self> {
        let ns = Netns::new(prefix)?;
        // Before the interfaces exist, so they inherit them.
        ns.set_sysctls(&[
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv6.conf.default.forwarding", "1"),
        ])?;
        let mut lines = vec![
            format!("link add {CLIENT_IF} type veth peer name {CLIENT_IF}-peer"),
            format!("link add {BACKEND_IF} type veth peer name {BACKEND_IF}-peer"),
        ];
        for link in [CLIENT_IF, BACKEND_IF] {
            lines.push(format!("link set {link} up"));
            lines.push(format!("link set {link}-peer up"));
        }
        lines.extend([
            format!("addr add {NODE_CLIENT_SIDE}/24 dev {CLIENT_IF}"),
            format!("addr add {NODE_BACKEND_SIDE}/24 dev {BACKEND_IF}"),
            format!("addr add fd00:1::1/64 dev {CLIENT_IF} nodad"),
            format!("addr add fd00:2::1/64 dev {BACKEND_IF} nodad"),
            format!(
                "neigh add {CLIENT} lladdr {} dev {CLIENT_IF} nud permanent",
                mac_text(&CLIENT_MAC)
            ),
            format!(
                "neigh add fd00:1::2 lladdr {} dev {CLIENT_IF} nud permanent",
                mac_text(&CLIENT_MAC)
            ),
        ]);
        for i in 0..BACKENDS {
            let m = mac_text(&backend_mac(i));
            lines.push(format!(
                "neigh add 198.18.2.{} lladdr {m} dev {BACKEND_IF} nud permanent",
                10 + i
            ));
            lines.push(format!(
                "neigh add fd00:2::{:x} lladdr {m} dev {BACKEND_IF} nud permanent",
                10 + i
            ));
        }
        lines.extend_from_slice(extra);
        ns.ip_batch(&lines)?;
        // IPv6 routes work once the veth carriers are up: wait for the FIB (bounded).
        for _ in 0..100 {
            let route = ns.ip(&[
                "-6",
                "route",
                "get",
                "fd00:2::a",
                "from",
                "fd00:1::2",
                "iif",
                CLIENT_IF,
            ]);
            if route.is_ok_and(|r| r.contains(BACKEND_IF)) {
                return Ok(Self { ns });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("the node's IPv6 route toward the backends never came up")
    }

    /// Loads the program as lbd does, applies `services` (YAML) and runs `test` inside the
    /// namespace, where the program's FIB lookups happen.
    pub fn run<T: Send>(
        &self,
        services: &str,
        conntrack_entries: u32,
        test: impl FnOnce(Loaded) -> T + Send,
    ) -> Result<T> {
        self.run_with(services, conntrack_entries, |_| {}, test)
    }

    /// Like `run`, with the parsed service file changed by `edit` before it is planned (for
    /// what no file says: swarm tasks' places in the mesh, the mesh's nodes).
    pub fn run_with<T: Send>(
        &self,
        services: &str,
        conntrack_entries: u32,
        edit: impl FnOnce(&mut ServiceFile) + Send,
        test: impl FnOnce(Loaded) -> T + Send,
    ) -> Result<T> {
        let backend_if_mac = read_mac(&self.ns, BACKEND_IF)?;
        let services = services.to_owned();
        self.ns.run(move || -> Result<T> {
            let mut file = ServiceFile::parse(&services, Path::new("test.yaml"))?;
            edit(&mut file);
            let node_addrs: Vec<IpAddr> = [
                NODE_CLIENT_SIDE,
                NODE_BACKEND_SIDE,
                "fd00:1::1",
                "fd00:2::1",
            ]
            .iter()
            .map(|a| a.parse().expect("address"))
            .collect();
            let desired = plan::plan(&file, &plan::NodeFacts::with_addresses(&node_addrs))?;
            let mut dp = Dataplane::load(LoadOptions {
                conntrack_entries,
                ..LoadOptions::default()
            })?;
            dp.apply(None, &desired)?;
            Ok(test(Loaded {
                dp,
                desired,
                node_addrs,
                client_if: dataplane::ifindex(CLIENT_IF)?,
                backend_if: dataplane::ifindex(BACKEND_IF)?,
                backend_if_mac,
            }))
        })?
    }
}

/// The loaded program, its plan and the node's interfaces.
pub struct Loaded {
    pub dp: Dataplane,
    pub desired: DesiredState,
    /// The node addresses the plan was made for.
    pub node_addrs: Vec<IpAddr>,
    pub client_if: u32,
    pub backend_if: u32,
    pub backend_if_mac: [u8; 6],
}

impl Loaded {
    /// Plans `services` (YAML) against the running plan and writes the difference, as lbd
    /// does when its file changes.
    pub fn change(&mut self, services: &str) -> Result<()> {
        self.change_with(services, |_| {})
    }

    /// `change`, with `edit` applied to the parsed file first (as `ProgNode::run_with`).
    pub fn change_with(
        &mut self,
        services: &str,
        edit: impl FnOnce(&mut ServiceFile),
    ) -> Result<()> {
        let mut file = ServiceFile::parse(services, Path::new("test.yaml"))?;
        edit(&mut file);
        let node = plan::NodeFacts::with_addresses(&self.node_addrs);
        let next = plan::plan_from(&file, &node, Some(&self.desired))?;
        self.dp.apply(Some(&self.desired), &next)?;
        self.desired = next;
        Ok(())
    }

    /// Sets the MTU of the interface toward the backends, so the FIB's routes there change
    /// under the program. The test runs in the node's namespace, where `ip` then acts.
    pub fn set_backend_mtu(&self, mtu: u16) -> Result<()> {
        let mtu = mtu.to_string();
        super::netns::ip_in(&[], &["link", "set", "dev", BACKEND_IF, "mtu", &mtu]).map(drop)
    }

    /// Runs `f` with the node's neighbour entry of backend-side address `addr` (one of the
    /// backends', `backend_mac(i)`) removed, so the FIB answers "no neighbour" for it; the
    /// entry is put back after.
    pub fn without_neighbour<T>(&mut self, backend: usize, f: impl FnOnce(&mut Self) -> T) -> T {
        let addr = format!("198.18.2.{}", 10 + backend);
        super::netns::ip_in(&[], &["neigh", "del", &addr, "dev", BACKEND_IF])
            .expect("remove the neighbour");
        let out = f(self);
        let mac = mac_text(&backend_mac(backend));
        super::netns::ip_in(
            &[],
            &[
                "neigh",
                "add",
                &addr,
                "lladdr",
                &mac,
                "dev",
                BACKEND_IF,
                "nud",
                "permanent",
            ],
        )
        .expect("put the neighbour back");
        out
    }

    /// Runs `frame` as if it arrived from the client.
    pub fn run(&mut self, frame: &[u8]) -> ProgOutcome {
        self.run_from(frame, self.client_if)
    }

    /// Runs `frame` as if it arrived on `ingress_ifindex`.
    pub fn run_from(&mut self, frame: &[u8], ingress_ifindex: u32) -> ProgOutcome {
        test_run(&mut self.dp, frame, ingress_ifindex).expect("BPF_PROG_TEST_RUN")
    }

    /// Runs the TC ingress program once on `frame` (an skb of it, from its Ethernet header);
    /// what it returned (`TC_ACT_*`; a redirect is only asked for, nothing is sent).
    pub fn run_tc(&mut self, frame: &[u8]) -> i32 {
        let mut out = vec![0u8; frame.len() + 256];
        self.dp
            .tc_program()
            .expect("Dataplane::load loaded the TC program")
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .expect("BPF_PROG_TEST_RUN of the TC program")
            .return_value as i32
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.dp.stats().expect("counters")
    }

    /// Makes the tracked (confirmed) flow `key` look idle for `idle` more in both directions:
    /// the last packet of its forward entry and of its reply entry (if it has one) moved back
    /// by that much, and neither seen in this tick.
    pub fn age_flow(&mut self, key: &FlowKey, idle: Duration) {
        let mut table = self.dp.connection_table_mut().expect("CONNTRACK");
        age_in(&mut table, key, idle);
    }

    /// Makes the unconfirmed flow `key` (in `PENDING`) look idle for `idle` more in both
    /// directions, as `age_flow` does a tracked one.
    pub fn age_pending_flow(&mut self, key: &FlowKey, idle: Duration) {
        let mut table = self.dp.pending_table_mut().expect("PENDING");
        age_in(&mut table, key, idle);
    }

    /// Stamps the tracked flow `key`'s forward entry `ahead` in the future, as another CPU's
    /// packet stamped after this one read the clock; its next packet checks its idle time.
    pub fn stamp_flow_ahead(&mut self, key: &FlowKey, ahead: Duration) {
        self.rewrite_flow(key, |flow| {
            flow.last_seen_ns += ahead.as_nanos() as u64;
            flow.seen_tick = flow.seen_tick.wrapping_sub(1);
        });
    }

    /// Makes the tracked flow `key` forget its cached route, as its cache's age bound would.
    pub fn expire_route(&mut self, key: &FlowKey) {
        self.rewrite_flow(key, |flow| flow.egress_ifindex = 0);
    }

    /// Changes the tracked (confirmed) flow `key` in `CONNTRACK` with `change`; the entry as
    /// written.
    fn rewrite_flow(&mut self, key: &FlowKey, change: impl FnOnce(&mut Flow)) -> Flow {
        let mut table = self.dp.connection_table_mut().expect("CONNTRACK");
        let mut flow = table.get(key, 0).expect("the flow is tracked");
        change(&mut flow);
        table.insert(key, flow, 0).expect("rewrite the flow");
        flow
    }
}

/// Moves the last packet of flow `key`'s forward entry in `table`, and of its reply entry
/// (if it has one), `idle` back, neither seen in this tick.
fn age_in(table: &mut HashMap<&mut MapData, FlowKey, Flow>, key: &FlowKey, idle: Duration) {
    let age = |flow: &mut Flow| {
        flow.last_seen_ns = flow.last_seen_ns.saturating_sub(idle.as_nanos() as u64);
        flow.seen_tick = flow.seen_tick.wrapping_sub(1);
    };
    let mut forward = table.get(key, 0).expect("the flow is in the table");
    age(&mut forward);
    table.insert(key, forward, 0).expect("rewrite the flow");
    let reply = reply_key(key, &forward);
    if let Ok(mut flow) = table.get(&reply, 0)
        && flow.kind == flow_kind::REPLY
    {
        age(&mut flow);
        table
            .insert(reply, flow, 0)
            .expect("rewrite the reply entry");
    }
}

/// The key of the reply entry of forward entry `f` (keyed `key`), as the program builds it:
/// the backend toward the client, or toward the node address and port its source became.
pub fn reply_key(key: &FlowKey, f: &Flow) -> FlowKey {
    let remapped = f.remaps_source();
    FlowKey {
        src: *f.backend_addr(),
        dst: if remapped {
            *f.remapped_source_addr()
        } else {
            key.src
        },
        sport_be: f.backend_port_be(),
        dport_be: if remapped {
            f.remapped_source_port_be()
        } else {
            key.sport_be
        },
        proto: key.proto,
        _pad: [0; 3],
    }
}

/// What one program run returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgOutcome {
    pub action: u32,
    /// What the program wrote over the Ethernet addresses to hand the packet to the TC
    /// program, if it did.
    pub handoff: Option<Handoff>,
    /// The packet out. Handed to TC, its first 12 bytes (where the hand-off was) are the
    /// input's again: the kernel writes the addresses of a packet TC forwards anew, so the
    /// rest is what the tests compare.
    pub packet: Vec<u8>,
}

/// Runs the XDP program once on `frame`, arriving on `ingress` (BPF_PROG_TEST_RUN).
pub fn test_run(
    dp: &mut Dataplane,
    frame: &[u8],
    ingress: u32,
) -> Result<ProgOutcome, ProgramError> {
    // xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
    let ctx: Vec<u8> = [0u32, frame.len() as u32, 0, ingress, 0, 0]
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .collect();
    let mut out = vec![0u8; frame.len() + 256];
    let mut ctx_out = vec![0u8; ctx.len()];
    let result = dp
        .xdp_program()
        .expect("Dataplane::load loaded the XDP program")
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ctx_out: Some(&mut ctx_out),
            ..TestRunOptions::default()
        })?;
    out.truncate(result.data_size_out as usize);
    let handoff = handoff_in(&out);
    if handoff.is_some() && frame.len() >= HANDOFF_BYTES {
        out[..HANDOFF_BYTES].copy_from_slice(&frame[..HANDOFF_BYTES]);
    }
    Ok(ProgOutcome {
        action: result.return_value,
        handoff,
        packet: out,
    })
}

/// The address bytes a hand-off takes.
const HANDOFF_BYTES: usize = 12;

/// `frame` with `handoff` written over its Ethernet addresses, as the XDP program writes it.
pub fn with_handoff(mut frame: Vec<u8>, handoff: Handoff) -> Vec<u8> {
    for (i, word) in handoff.to_words().iter().enumerate() {
        frame[4 * i..4 * i + 4].copy_from_slice(&word.to_le_bytes());
    }
    frame
}

/// The hand-off written over `frame`'s Ethernet addresses, if one is.
pub fn handoff_in(frame: &[u8]) -> Option<Handoff> {
    let bytes = frame.get(..HANDOFF_BYTES)?;
    let word = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
    Handoff::from_words([word(0), word(4), word(8)])
}

/// How much a counter moved between two snapshots.
pub fn delta(before: &StatsSnapshot, after: &StatsSnapshot, slot: StatSlot) -> u64 {
    after.get(slot).wrapping_sub(before.get(slot))
}

/// Asserts how much each counter moved between two snapshots, naming the one that did not.
pub fn assert_deltas(before: &StatsSnapshot, after: &StatsSnapshot, moved: &[(StatSlot, u64)]) {
    for &(slot, n) in moved {
        assert_eq!(delta(before, after, slot), n, "{}", slot.label());
    }
}

/// Pins the calling thread to `cpu`: per-CPU state (round-robin cursors, counters) then
/// belongs to one CPU for the whole test.
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity"
        );
    }
}
