//! What forwards between generator and sink: meshlb (the real `lbd`), nftables DNAT (the way
//! kube-proxy's nftables mode balances: `numgen random` over one chain per endpoint), plain
//! kernel forwarding, the redirect-only ceiling, or the tracked floor (the ceiling plus one
//! connection-table lookup and a destination rewrite).

use std::{
    fmt::Write as _,
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, ensure};
use lb_testkit::Lbd;
use lb_userspace::{
    dataplane::{self, Dataplane, LoadOptions},
    plan,
    source::file::ServiceFile,
    source::settings::XdpMode,
};

use super::{
    Traffic,
    topo::{self, BACKEND_PORT, NODE_IN, NODE_OUT, PpsTopology, VIP_PORT, VIP4, VIP6},
    tracked_floor::{TrackedFloor, TrackedFloorRoute},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Through {
    /// XDP program that only sets MACs and redirects to the sink's veth: the ceiling.
    Ceiling,
    /// meshlb's lbd, XDP on the node's veths, XDP_REDIRECT to the sink's.
    Meshlb,
    /// nftables DNAT in the node's kernel (kube-proxy nftables style).
    Nft,
    /// Plain kernel IP forwarding to backend 0 (no balancing).
    Kernel,
    /// The ceiling plus the least a balancer that tracks flows does: one lookup in a
    /// connection table sized like meshlb's, the destination rewritten (IPv4 only).
    Floor,
}

impl Through {
    pub fn name(self) -> &'static str {
        match self {
            Through::Ceiling => "redirect-only ceiling",
            Through::Meshlb => "meshlb XDP",
            Through::Nft => "nftables DNAT",
            Through::Kernel => "kernel forwarding",
            Through::Floor => "tracked floor",
        }
    }
    pub fn key(self) -> &'static str {
        match self {
            Through::Ceiling => "ceiling",
            Through::Meshlb => "meshlb",
            Through::Nft => "nft",
            Through::Kernel => "kernel",
            Through::Floor => "floor",
        }
    }
}

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub backends: usize,
    pub scheduler: String,
    /// Services besides the measured one (meshlb, scaling runs): VIPs no packet goes to.
    pub extra_services: usize,
    /// Backends by index in the address plan (default: 0..backends).
    pub backend_indices: Option<Vec<usize>>,
    pub lbd: PathBuf,
    /// meshlb's connection-table capacity (default: lbd's own).
    pub conntrack_entries: Option<u32>,
}

impl NodeConfig {
    /// The meshlb service file of this configuration.
    pub fn services_yaml(&self) -> String {
        match &self.backend_indices {
            Some(indices) => services_yaml_with(indices, &self.scheduler, self.extra_services),
            None => services_yaml(self.backends, &self.scheduler, self.extra_services),
        }
    }
}

/// A running contender.
pub struct Node {
    through: Through,
    lbd: Option<Lbd>,
    /// meshlb loaded in this process (scaling runs with many services).
    dataplane: Option<Dataplane>,
    floor: Option<TrackedFloor>,
}

/// nftables table name of the DNAT contender.
const NFT_TABLE: &str = "mlbbench";

impl Node {
    pub fn start(
        through: Through,
        topo: &PpsTopology,
        traffic: &mut Traffic,
        config: &NodeConfig,
    ) -> Result<Node> {
        anyhow::ensure!(
            (1..=topo::MAX_BACKENDS).contains(&config.backends),
            "1 to {} backends fit the address plan",
            topo::MAX_BACKENDS
        );
        let mut node = Node {
            through,
            lbd: None,
            dataplane: None,
            floor: None,
        };
        match through {
            Through::Ceiling => {
                let out = PpsTopology::ifindex(&topo.node, NODE_OUT)?;
                traffic.attach_ceiling(
                    &topo.node,
                    NODE_IN,
                    out,
                    topo::SINK_MAC,
                    topo::NODE_OUT_MAC,
                )?;
            }
            Through::Meshlb if config.extra_services > 0 => {
                node.dataplane = Some(load_in_process(topo, config)?);
            }
            Through::Meshlb => {
                let services = config.services_yaml();
                let entries = config.conntrack_entries.map(|n| n.to_string());
                // Native on the veths, not lbd's auto (generic on a veth): the generator sends
                // XDP frames, which only a native program on the node's veth takes.
                let mut extra = vec!["--xdp-redirect", NODE_OUT, "--xdp-mode", "native"];
                if let Some(entries) = &entries {
                    extra.extend(["--conntrack-entries", entries]);
                }
                node.lbd = Some(Lbd::start(
                    &config.lbd,
                    &topo.node,
                    &services,
                    &[NODE_IN, NODE_OUT],
                    &extra,
                )?);
            }
            Through::Nft => {
                let rules = nft_ruleset(config.backends);
                let path = std::env::temp_dir().join(format!("mlb-nft-{}.nft", std::process::id()));
                std::fs::write(&path, rules).context("writing the nftables ruleset")?;
                let result = topo
                    .node
                    .exec(&["nft", "-f", path.to_str().context("temp path")?]);
                let _ = std::fs::remove_file(&path);
                result.context("loading the nftables DNAT ruleset")?;
            }
            Through::Kernel => {}
            Through::Floor => {
                let backends = (0..config.backends)
                    .map(|i| match topo::backend_addr(i, false) {
                        IpAddr::V4(addr) => Ok(addr),
                        IpAddr::V6(addr) => Err(anyhow!("backend {i} is {addr}, not IPv4")),
                    })
                    .collect::<Result<Vec<_>>>()?;
                let route = TrackedFloorRoute {
                    out_ifindex: PpsTopology::ifindex(&topo.node, NODE_OUT)?,
                    dst_mac: topo::SINK_MAC,
                    src_mac: topo::NODE_OUT_MAC,
                    backends: &backends,
                    port: BACKEND_PORT,
                };
                // The table meshlb would have for this configuration.
                let entries = config
                    .conntrack_entries
                    .unwrap_or(lb_common::limits::DEFAULT_CONNTRACK_ENTRIES);
                let mut floor = TrackedFloor::load(
                    Some(&topo.node),
                    &route,
                    lb_common::limits::hash_table_entries(entries),
                )?;
                floor.attach(&topo.node, NODE_IN)?;
                node.floor = Some(floor);
            }
        }
        Ok(node)
    }

    /// The tracked floor, if that is the contender.
    #[cfg(test)]
    pub fn tracked_floor(&self) -> Option<&TrackedFloor> {
        self.floor.as_ref()
    }

    /// The running lbd (meshlb only), e.g. to reload it.
    pub fn lbd(&mut self) -> Option<&mut Lbd> {
        self.lbd.as_mut()
    }

    /// Stops the contender; meshlb's counters if it was meshlb.
    pub fn stop(
        mut self,
        topo: &PpsTopology,
        traffic: &mut Traffic,
    ) -> Result<Option<serde_json::Value>> {
        match self.through {
            Through::Ceiling => traffic.detach_ceiling()?,
            Through::Meshlb => {
                if let Some(lbd) = self.lbd.take() {
                    let counters = lbd.stop()?;
                    wait_detached(topo)?;
                    return Ok(Some(counters));
                }
                // Dropping the dataplane detaches it.
                self.dataplane.take();
                wait_detached(topo)?;
            }
            Through::Nft => {
                topo.node
                    .exec(&["nft", "delete", "table", "inet", NFT_TABLE])
                    .context("removing the nftables DNAT ruleset")?;
            }
            Through::Kernel => {}
            Through::Floor => {
                if let Some(floor) = self.floor.take() {
                    floor.detach()?;
                }
            }
        }
        Ok(None)
    }
}

/// Longest wait for a stopped meshlb's XDP programs to leave the node's veths.
const DETACH_WAIT: Duration = Duration::from_secs(5);

/// Waits until neither of the node's veths has an XDP program: the kernel releases a stopped
/// lbd's (or a dropped dataplane's) links a moment after their descriptors close, and the
/// next contender's attach (the ceiling's, in driver mode) would find them still there.
fn wait_detached(topo: &PpsTopology) -> Result<()> {
    let deadline = Instant::now() + DETACH_WAIT;
    loop {
        let mut attached = Vec::new();
        for interface in [NODE_IN, NODE_OUT] {
            if topo
                .node
                .xdp_attached(interface)
                .with_context(|| format!("reading {interface}"))?
            {
                attached.push(interface);
            }
        }
        if attached.is_empty() {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "meshlb's XDP programs were still attached to {} {DETACH_WAIT:?} after it stopped",
            attached.join(" and ")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// meshlb's dataplane loaded in this process the way `lbd` loads it, for the scaling runs
/// with thousands of services: every service's frontends and backends are written, but only
/// the measured services' selection tables (no packet reads the others', and installing each
/// costs the kernel an RCU grace period, about 8 ms here, which would make 100k services take
/// a quarter of an hour; `bench micro` does the same).
fn load_in_process(topo: &PpsTopology, config: &NodeConfig) -> Result<Dataplane> {
    let file = ServiceFile::parse(&config.services_yaml(), std::path::Path::new("bench.yaml"))?;
    let desired = plan::plan(&file, &plan::NodeFacts::default())?;
    let measured: Vec<u32> = desired
        .services
        .iter()
        .filter(|s| s.name == "bench" || s.name == "bench6")
        .map(|s| s.id)
        .collect();
    let mut partial = desired.clone();
    partial.tables.retain(|id, _| measured.contains(id));
    let mut dp = Dataplane::load(LoadOptions {
        conntrack_entries: config
            .conntrack_entries
            .unwrap_or(lb_common::limits::DEFAULT_CONNTRACK_ENTRIES),
        ..LoadOptions::default()
    })?;
    dp.apply(None, &partial)?;
    // Attaching and the device map resolve interface names and indexes in the calling
    // thread's namespace.
    topo.node.run(|| -> Result<()> {
        dp.attach(NODE_IN, XdpMode::Native)?;
        dp.attach(NODE_OUT, XdpMode::Native)?;
        dp.allow_xdp_redirect(dataplane::ifindex(NODE_OUT)?)?;
        Ok(())
    })??;
    Ok(dp)
}

/// The service file of the meshlb contender: `bench` on the IPv4 and IPv6 VIPs, port 80 to
/// 8080 over TCP and UDP, with `backends` backends of each family; plus `extra` services on
/// VIPs 198.18.128.0/17 that no packet goes to (the scaling runs).
pub fn services_yaml(backends: usize, scheduler: &str, extra: usize) -> String {
    services_yaml_with(&(0..backends).collect::<Vec<_>>(), scheduler, extra)
}

/// Like [`services_yaml`], with the backends of these indices of the address plan.
pub fn services_yaml_with(backends: &[usize], scheduler: &str, extra: usize) -> String {
    let mut y = String::from("services:\n");
    for (name, vip, v6) in [
        ("bench", VIP4.to_string(), false),
        ("bench6", VIP6.to_string(), true),
    ] {
        let _ = writeln!(y, "  {name}:\n    vip: \"{vip}\"");
        let _ = writeln!(
            y,
            "    ports: [\"{VIP_PORT}:{BACKEND_PORT}/udp\", \"{VIP_PORT}:{BACKEND_PORT}/tcp\"]"
        );
        let _ = writeln!(y, "    scheduler: {scheduler}");
        y.push_str("    backends:\n");
        for &i in backends {
            let _ = writeln!(y, "      - \"{}\"", topo::backend_addr(i, v6));
        }
    }
    // Extra services: 1,000 ports on each VIP of 198.18.128.0/17, one backend, a small
    // Maglev table each (their tables are not what is measured).
    for i in 0..extra {
        let vip = std::net::Ipv4Addr::from(
            u32::from(std::net::Ipv4Addr::new(198, 18, 128, 0)) + (i / 1000) as u32,
        );
        let port = 1000 + i % 1000;
        let _ = writeln!(
            y,
            "  x{i}:\n    vip: \"{vip}\"\n    ports: [\"{port}:8080/udp\"]\n    maglev_table_size: 251\n    backends: [\"{}\"]",
            topo::backend_addr(i % 16, false),
        );
    }
    y
}

/// The nftables DNAT contender: one table, prerouting DNAT of the VIPs (port 80, TCP and
/// UDP) to `backends` endpoints picked by `numgen random`, one chain per endpoint, as
/// kube-proxy's nftables mode writes it.
pub fn nft_ruleset(backends: usize) -> String {
    let mut r = format!("table inet {NFT_TABLE} {{\n");
    for (fam, v6) in [("ip", false), ("ip6", true)] {
        for i in 0..backends {
            let addr = topo::backend_addr(i, v6);
            let target = if v6 {
                format!("[{addr}]:{BACKEND_PORT}")
            } else {
                format!("{addr}:{BACKEND_PORT}")
            };
            let _ = writeln!(
                r,
                "  chain ep_{fam}_{i} {{\n    meta l4proto {{ tcp, udp }} dnat {fam} to {target}\n  }}"
            );
        }
        let map: Vec<String> = (0..backends)
            .map(|i| format!("{i} : goto ep_{fam}_{i}"))
            .collect();
        let _ = writeln!(
            r,
            "  chain svc_{fam} {{\n    numgen random mod {backends} vmap {{ {} }}\n  }}",
            map.join(", ")
        );
    }
    let _ = writeln!(
        r,
        "  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    ip daddr {VIP4} meta l4proto {{ tcp, udp }} th dport {VIP_PORT} goto svc_ip\n    ip6 daddr {VIP6} meta l4proto {{ tcp, udp }} th dport {VIP_PORT} goto svc_ip6\n  }}\n}}"
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_yaml_is_a_valid_service_file() {
        use lb_userspace::source::file::ServiceFile;
        let y = services_yaml(3, "round-robin", 2);
        let file = ServiceFile::parse(&y, std::path::Path::new("bench.yaml")).unwrap();
        assert_eq!(file.services.len(), 4);
        assert!(y.contains("\"198.18.16.3\""), "{y}");
        assert!(y.contains("\"fd00:2::3\""), "{y}");
        assert!(
            y.contains("198.18.128.0") && y.contains("1001:8080/udp"),
            "{y}"
        );
        let many = services_yaml(2, "maglev", 2500);
        let file = ServiceFile::parse(&many, std::path::Path::new("bench.yaml")).unwrap();
        assert_eq!(file.services.len(), 2502);
    }

    #[test]
    fn nft_ruleset_has_one_chain_per_endpoint() {
        let r = nft_ruleset(4);
        assert_eq!(r.matches("dnat ip to").count(), 4);
        assert_eq!(r.matches("dnat ip6 to").count(), 4);
        assert!(r.contains("numgen random mod 4 vmap { 0 : goto ep_ip_0, 1 : goto ep_ip_1, 2 : goto ep_ip_2, 3 : goto ep_ip_3 }"));
        assert!(r.contains("dnat ip6 to [fd00:2::4]:8080"));
    }
}
