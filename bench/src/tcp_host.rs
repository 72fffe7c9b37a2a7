//! `lb-bench bench tcp --host-local`: bench tcp's host-local case (issue 14). A process on the
//! node (client threads in the node's namespace, in a cgroup of their own where lbd attaches its
//! socket-level programs) connects to a file service's VIP (one backend): `connect()` is rewritten to one of
//! the backends, and its packets then go straight to it, with no work per packet. Held against
//! the same threads connecting to one backend directly, interleaved in short slices, with lbd
//! running throughout (its XDP program sees both ways' packets alike). Target: at least 0.95
//! of direct in every round, for both figures.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context as _, Result};
use lb_testkit::{Lbd, NameServer, Topology, cgroup::TestCgroup, tcp_request};

use crate::{
    tcp::{BACKEND_PORT, BACKENDS, Clients, MESHLB_VIP, TcpArgs, check_args, meshlb_services},
    tcp_pairs::{self, Case},
};

const CASE: Case = Case {
    tag: "tcp --host-local",
    file_stem: "tcp-host",
    heading: "bench tcp, host-local case: a process on the node to a file service's VIP through the socket-level programs vs to one backend directly ({clients} client threads in the node's namespace; {seconds} s of each way per measurement after a 1 s warm-up, the two ways interleaved in 0.25 s slices, connections closed by a reset; lbd running throughout)",
    direct_name: "direct to one backend",
    through_name: "VIP via socket-level balancing",
    through_short: "VIP",
    target: 0.95,
};

pub fn run(args: &TcpArgs) -> Result<()> {
    check_args(args)?;
    tcp_pairs::announce(&CASE, args);
    // Field order of the guards: lbd (its links) goes before the cgroup it attaches to.
    let cgroup = TestCgroup::enter().context("a cgroup for the bench's own sockets")?;
    let topo = Topology::new(BACKENDS)?;
    topo.node.set_sysctls(&[("net.ipv4.tcp_tw_reuse", "1")])?;
    let servers: Vec<NameServer> = topo.serve_on_backends(&[BACKEND_PORT], &[])?;
    let backends: Vec<IpAddr> = topo.backends.iter().map(|b| IpAddr::V4(b.addr4)).collect();
    let cgroup_path = cgroup.path().to_str().context("cgroup path")?.to_owned();
    let lbd = Lbd::start(
        &args.lbd,
        &topo.node,
        // One backend: the VIP's connections reach the same server as the direct ones, so
        // the ratio is the socket-level path's cost alone, not a spread over more servers.
        &meshlb_services(MESHLB_VIP, &backends[..1]),
        &[&topo.node_client_if, &topo.node_bridge],
        &["--socket-lb", "on", "--cgroup", &cgroup_path],
    )?;
    let direct = SocketAddr::new(backends[0], BACKEND_PORT);
    let vip = SocketAddr::new(IpAddr::V4(MESHLB_VIP), 80);
    for target in [direct, vip] {
        tcp_request(&topo.node, target, std::time::Duration::from_secs(3))
            .with_context(|| format!("the node cannot reach {target}\n{}", lbd.output()))?;
    }
    let clients = Clients {
        ns: &topo.node,
        threads: args.clients,
        pinned: false,
    };
    let result = tcp_pairs::run(&CASE, args, &clients, direct, vip);
    drop(lbd);
    drop(servers);
    drop(topo);
    drop(cgroup);
    result
}
