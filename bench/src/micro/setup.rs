//! The node namespace, the dataplanes under test and their connection tables.

use super::*;

// ---------------------------------------------------------------------------------------------
// Set-up

pub(super) fn mac_str(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The node namespace: a client-side and a backend-side veth, addresses, static neighbours for
/// the client and the 16 backends, IPv4 forwarding on.
pub(super) fn node_namespace() -> Result<Netns> {
    let ns = Netns::new("bench-micro")?;
    ns.set_sysctls(&[
        ("net.ipv6.conf.all.accept_dad", "0"),
        ("net.ipv6.conf.default.accept_dad", "0"),
    ])?;
    let mut lines = vec![
        "link add lbc type veth peer name lbc-peer".to_owned(),
        "link add lbb type veth peer name lbb-peer".to_owned(),
        "link set lo up".to_owned(),
        "link set lbc up".to_owned(),
        "link set lbc-peer up".to_owned(),
        "link set lbb up".to_owned(),
        "link set lbb-peer up".to_owned(),
        format!("addr add {NODE_CLIENT_SIDE}/24 dev lbc"),
        format!("addr add {NODE_BACKEND_SIDE}/24 dev lbb"),
        format!("addr add {NODE6_CLIENT_SIDE}/64 dev lbc nodad"),
        format!("addr add {NODE6_BACKEND_SIDE}/64 dev lbb nodad"),
        format!(
            "neigh add {CLIENT} lladdr {} dev lbc nud permanent",
            mac_str(&CLIENT_MAC)
        ),
        format!(
            "neigh add {CLIENT6} lladdr {} dev lbc nud permanent",
            mac_str(&CLIENT_MAC)
        ),
    ];
    for i in 0..BACKENDS {
        for ip in [IpAddr::V4(backend_ip(i)), IpAddr::V6(backend_ip6(i))] {
            lines.push(format!(
                "neigh add {ip} lladdr {} dev lbb nud permanent",
                mac_str(&backend_mac(i))
            ));
        }
    }
    ns.ip_batch(&lines).context("node namespace topology")?;
    ns.set_sysctls(&[
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv6.conf.all.forwarding", "1"),
    ])?;
    Ok(ns)
}

/// The MAC address of `interface` in `ns` (sysfs shows the mounting namespace, so ask `ip`).
pub(super) fn read_mac(ns: &Netns, interface: &str) -> Result<[u8; 6]> {
    let text = ns.ip(&["-o", "link", "show", interface])?;
    let field = text
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .ok_or_else(|| anyhow!("no MAC in {text}"))?;
    let bytes = field
        .split(':')
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<Result<Vec<u8>, _>>()?;
    bytes.try_into().map_err(|_| anyhow!("bad MAC {field}"))
}

/// What the vary harness makes of the clients 198.18.1.2 and fd00:1::2: 198.18.128.0/17 and
/// fd00:1::8000/113, source port 1024 and up.
pub(super) fn is_vary_source(src: SocketAddr) -> bool {
    let addr_ok = match src.ip() {
        IpAddr::V4(ip) => {
            let o = ip.octets();
            o[0] == 198 && o[1] == 18 && o[2] >= 128
        }
        IpAddr::V6(ip) => {
            let s = ip.segments();
            s[..7] == CLIENT6.segments()[..7] && s[7] >= 0x8000
        }
    };
    addr_ok && src.port() >= 1024
}

/// Source and destination of an IPv4 or IPv6 TCP/UDP frame whose checksums verify.
pub(super) fn parse_any(frame: &[u8]) -> Result<(SocketAddr, SocketAddr), String> {
    if frame.get(12..14) == Some(&[0x86, 0xdd]) {
        let (src, dst) = ipv6::parse_tcp(frame)?;
        Ok((src.into(), dst.into()))
    } else {
        let parsed = parse_ipv4(frame)?;
        Ok((parsed.src.into(), parsed.dst.into()))
    }
}

pub(super) fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: cpu_set_t is plain old data; CPU_SET writes inside it; sched_setaffinity(0, ...)
    // changes the calling thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error()).context(format!("pinning to CPU {cpu}"));
        }
    }
    Ok(())
}

pub(super) fn service_text(round_robin: bool, v6: bool) -> String {
    let backends: Vec<String> = (0..BACKENDS)
        .map(|i| {
            if v6 {
                format!("\"{}\"", backend_ip6(i))
            } else {
                format!("\"{}\"", backend_ip(i))
            }
        })
        .collect();
    let vip = if v6 {
        IpAddr::V6(VIP6)
    } else {
        IpAddr::V4(VIP)
    };
    format!(
        "services:\n  web:\n    vip: \"{vip}\"\n    ports: [\"{VIP_PORT}:{BACKEND_PORT}/tcp\"]\n{}    backends: [{}]\n",
        if round_robin {
            "    scheduler: round-robin\n"
        } else {
            ""
        },
        backends.join(", ")
    )
}

/// The measured service ("web": one VIP, 16 backends, default Maglev table size, or
/// round-robin), plus `extra` services with one backend each for the scaling check.
pub(super) fn services(round_robin: bool, v6: bool, extra: u32) -> Result<ServiceFile> {
    let mut file = ServiceFile::parse(&service_text(round_robin, v6), Path::new("micro.yaml"))
        .map_err(|e| anyhow!("{e}"))?;
    let web = file.services["web"].clone();
    for i in 0..extra {
        let vip = extra_vip(i);
        let backend = extra_backend(i);
        let mut spec = web.clone();
        spec.name = format!("x{i:06}");
        spec.vip = Some(IpAddr::V4(*vip.ip()));
        spec.ports = vec![PortMapping {
            frontend: vip.port(),
            backend: BACKEND_PORT,
            protocol: web.ports[0].protocol,
        }];
        spec.maglev_table_size = EXTRA_TABLE_SIZE;
        spec.backends = vec![BackendSpec {
            address: IpAddr::V4(*backend.ip()),
            port: Some(backend.port()),
            weight: 1,
            mesh: None,
        }];
        file.services.insert(spec.name.clone(), spec);
    }
    Ok(file)
}

pub(super) struct DpSpec {
    pub(super) name: String,
    pub(super) round_robin: bool,
    pub(super) v6: bool,
    pub(super) extra_services: u32,
    pub(super) redirect: bool,
    /// The mesh rows' services instead of the 16 backends (`mesh_services`).
    pub(super) mesh: bool,
}

/// A swarm node's view, as the swarm source makes it: web's one backend is a task on the
/// peer node (reached through the tunnel), and `web.1.task` is the delivery frontend of a
/// task here, which only the peer's tunnel packets reach.
pub(super) fn mesh_services() -> Result<ServiceFile> {
    let text = format!(
        "services:\n  web:\n    vip: \"{VIP}\"\n    ports: [\"{VIP_PORT}:{BACKEND_PORT}/tcp\"]\n    backends: [\"{TASK_REMOTE}\"]\n  web.1.task:\n    vip: \"{TASK_LOCAL}\"\n    ports: [\"{BACKEND_PORT}/tcp\"]\n    backends: [\"{}\"]\n",
        backend_ip(0)
    );
    let mut file =
        ServiceFile::parse(&text, Path::new("micro-mesh.yaml")).map_err(|e| anyhow!("{e}"))?;
    let peer = IpAddr::V4(backend_ip(MESH_PEER));
    file.services.get_mut("web").context("web")?.backends[0].mesh = Some(MeshBackend {
        identity: IpAddr::V4(TASK_REMOTE),
        via: Some(peer),
        on_link_prefix: None,
    });
    file.services
        .get_mut("web.1.task")
        .context("web.1.task")?
        .tunnel_only = true;
    file.mesh = Some(MeshNodes {
        own: NODE_BACKEND_SIDE,
        peers: [backend_ip(MESH_PEER)].into(),
    });
    Ok(file)
}

/// How long `Dataplane::apply` took per service selection table, over `tables` tables.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub(super) struct TableCost {
    pub(super) tables: usize,
    pub(super) ms_per_table: f64,
}

/// Loads a dataplane with `spec`'s services applied. The selection tables of the extra
/// services are left out (neither path of the scaling check reads them, and each costs the
/// kernel an RCU grace period, see `TableCost`): `sample_tables` of them are applied
/// afterwards, timed.
pub(super) fn load_dataplane(
    spec: &DpSpec,
    conntrack_entries: u32,
    backend_if: u32,
    sample_tables: usize,
) -> Result<(Dp, Option<TableCost>)> {
    let started = Instant::now();
    let file = if spec.mesh {
        mesh_services()?
    } else {
        services(spec.round_robin, spec.v6, spec.extra_services)?
    };
    let node_addrs = [
        IpAddr::V4(NODE_CLIENT_SIDE),
        IpAddr::V4(NODE_BACKEND_SIDE),
        IpAddr::V6(NODE6_CLIENT_SIDE),
        IpAddr::V6(NODE6_BACKEND_SIDE),
    ];
    let desired: DesiredState = plan::plan(&file, &plan::NodeFacts::with_addresses(&node_addrs))?;
    let web = desired
        .services
        .iter()
        .find(|s| s.name == "web")
        .context("web planned")?;
    let backends = if spec.mesh { 1 } else { usize::from(BACKENDS) };
    ensure!(web.id == 0 && web.backends.len() == backends);
    let mut dp = Dataplane::load(LoadOptions {
        conntrack_entries,
        ..LoadOptions::default()
    })?;
    let mut cost = None;
    if spec.extra_services == 0 {
        dp.apply(None, &desired)?;
    } else {
        let mut partial = desired.clone();
        partial.tables.retain(|id, _| *id == 0);
        dp.apply(None, &partial)?;
        let mut sampled = partial.clone();
        sampled.tables.extend(
            desired
                .tables
                .iter()
                .filter(|(id, _)| **id != 0)
                .take(sample_tables)
                .map(|(id, t)| (*id, t.clone())),
        );
        let tables = sampled.tables.len() - 1;
        if tables > 0 {
            let t = Instant::now();
            dp.apply(Some(&partial), &sampled)?;
            cost = Some(TableCost {
                tables,
                ms_per_table: t.elapsed().as_secs_f64() * 1e3 / tables as f64,
            });
        }
    }
    if spec.redirect {
        dp.allow_xdp_redirect(backend_if)?;
    }
    // lbd's first walk of the connection table switches the SYN's filter on.
    dp.rebuild_conntrack_filter()?;
    println!(
        "micro: dataplane {:<28} {:>7} services{}, {} conntrack entries, egress by {} ({:.1} s)",
        spec.name,
        desired.services.len(),
        cost.map_or(String::new(), |c| format!(
            " (selection tables: 1 + {} sampled, {:.1} ms each)",
            c.tables, c.ms_per_table
        )),
        conntrack_entries,
        if spec.redirect {
            "XDP_REDIRECT (TX_PORTS)"
        } else {
            "TC hand-off"
        },
        started.elapsed().as_secs_f64()
    );
    Ok((
        Dp {
            name: spec.name.clone(),
            dp,
        },
        cost,
    ))
}

/// The CONNTRACK map of a loaded dataplane, found through its XDP program's map ids.
pub(super) fn conntrack_map(dp: &mut Dataplane) -> Result<HashMap<MapData, FlowKey, Flow>> {
    let ids = dp
        .xdp_program()?
        .info()?
        .map_ids()?
        .context("the kernel does not list program map ids")?;
    for id in ids {
        let map = MapData::from_id(id)?;
        if map.info()?.name_as_str() == Some(names::CONNTRACK) {
            return Ok(HashMap::try_from(Map::from_map_data(map)?)?);
        }
    }
    bail!("no {} map among the program's maps", names::CONNTRACK)
}

pub(super) fn monotonic_ns() -> u64 {
    // SAFETY: timespec is plain old data; clock_gettime fills it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer; CLOCK_MONOTONIC is bpf_ktime_get_ns's clock.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Inserts `flows` established flows (forward and reply entry each, as the program would)
/// into the dataplane's connection table from userspace, spread over the 16 backends. The
/// scaling check sends client packets only (replies on these flows would find their entries:
/// applying the plan marks every backend endpoint in REPLY_FILTER).
pub(super) fn prefill(dp: &mut Dp, flows: u32) -> Result<u64> {
    let started = Instant::now();
    let mut ct = conntrack_map(&mut dp.dp)?;
    let now = monotonic_ns();
    let vip = lb_common::Addr::from(IpAddr::V4(VIP));
    for j in 0..flows {
        let client = prefill_client(j);
        let b = (j % u32::from(BACKENDS)) as u8;
        let backend = lb_common::Addr::from(IpAddr::V4(backend_ip(b)));
        let client_addr = lb_common::Addr::from(IpAddr::V4(*client.ip()));
        let flow = |nat_addr, nat_port: u16, kind, state| Flow {
            nat_addr,
            nat_port_be: nat_port.to_be(),
            kind,
            tcp_state: state,
            backend_id: u32::from(b) + 1,
            service_id: 0,
            timeout_s: lb_common::limits::DEFAULT_TCP_TIMEOUT_S,
            last_seen_ns: now,
            ..Flow::default()
        };
        let reply_key = FlowKey {
            src: backend,
            dst: client_addr,
            sport_be: BACKEND_PORT.to_be(),
            dport_be: client.port().to_be(),
            proto: proto::TCP,
            ..FlowKey::default()
        };
        ct.insert(
            reply_key,
            flow(vip, VIP_PORT, flow_kind::REPLY, tcp_state::NONE),
            0,
        )?;
        let key = FlowKey {
            src: client_addr,
            dst: vip,
            sport_be: client.port().to_be(),
            dport_be: VIP_PORT.to_be(),
            proto: proto::TCP,
            ..FlowKey::default()
        };
        ct.insert(
            key,
            flow(
                backend,
                BACKEND_PORT,
                flow_kind::FORWARD,
                tcp_state::ESTABLISHED,
            ),
            0,
        )?;
    }
    drop(ct);
    // Written from userspace, so unseen by the filter until a walk: as lbd's next one.
    let entries = dp.dp.rebuild_conntrack_filter()?.entries;
    println!(
        "micro: dataplane {:<28} prefilled {flows} flows from userspace: {entries} entries tracked ({:.1} s)",
        dp.name,
        started.elapsed().as_secs_f64()
    );
    Ok(entries)
}
