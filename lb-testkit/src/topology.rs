//! The client / node / backends topology of the end-to-end tests (see the module docs of
//! [`testkit`](super) for the picture and the address plan).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use super::client::{tcp_request, udp_request};
use super::netns::Netns;
use super::servers::NameServer;

/// Client address on the client–node link.
pub const CLIENT_ADDR4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
/// Client IPv6 address on the client–node link.
pub const CLIENT_ADDR6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 2);
/// Node address on the client–node link (the client's default gateway).
pub const NODE_CLIENT_ADDR4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// Node IPv6 address on the client–node link (the client's default gateway).
pub const NODE_CLIENT_ADDR6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1);
/// Node address on the bridge (the backends' default gateway).
pub const NODE_BRIDGE_ADDR4: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
/// Node IPv6 address on the bridge (the backends' default gateway).
pub const NODE_BRIDGE_ADDR6: Ipv6Addr = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 1);
/// Prefix length of the IPv4 subnets.
pub const PREFIX4: u8 = 24;
/// Prefix length of the IPv6 subnets.
pub const PREFIX6: u8 = 64;

/// Name of the node's interface towards the client.
pub const NODE_CLIENT_IF: &str = "mlb-cli";
/// Name of the node's bridge towards the backends.
pub const NODE_BRIDGE: &str = "mlb-br0";
/// MAC of the node's bridge (locally administered), fixed so that adding or removing backends
/// does not change the backends' gateway MAC.
pub const NODE_BRIDGE_MAC: &str = "02:6d:6c:62:00:01";
/// Name of the interface in the client and in every backend namespace.
pub const HOST_IF: &str = "eth0";

/// Last octet of backend 0's IPv4 address (and last group of its IPv6 address).
pub const FIRST_BACKEND_HOST: u8 = 10;
/// How many backends fit the 198.18.2.0/24 plan (hosts .10 to .254).
pub const MAX_BACKENDS: usize = 245;

/// Bound on waiting for links to come up.
const LINK_UP_TIMEOUT: Duration = Duration::from_secs(5);
const LINK_POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Backend `i`'s IPv4 address: 198.18.2.(10+i).
pub fn backend_addr4(i: usize) -> Result<Ipv4Addr> {
    let host = backend_host(i)?;
    Ok(Ipv4Addr::new(198, 18, 2, host))
}

/// Backend `i`'s IPv6 address: fd00:2::(10+i), i.e. fd00:2::a for i = 0.
pub fn backend_addr6(i: usize) -> Result<Ipv6Addr> {
    let host = backend_host(i)?;
    Ok(Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, u16::from(host)))
}

fn backend_host(i: usize) -> Result<u8> {
    ensure!(
        i < MAX_BACKENDS,
        "backend index {i} outside the address plan (at most {MAX_BACKENDS} backends)"
    );
    Ok(FIRST_BACKEND_HOST + u8::try_from(i).expect("i < MAX_BACKENDS < 256"))
}

/// A backend: a namespace with one interface on the node's bridge.
#[derive(Debug)]
pub struct BackendHost {
    pub ns: Netns,
    /// `backend-{index}`, the name its test server should answer with.
    pub name: String,
    /// Index in the address plan (stays the same when other backends are removed).
    pub index: usize,
    pub addr4: Ipv4Addr,
    pub addr6: Ipv6Addr,
    /// The node-side end of its veth (a port of the bridge).
    pub node_port: String,
}

impl BackendHost {
    /// Its IPv4 address or its IPv6 address.
    pub fn addr(&self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.addr6)
        } else {
            IpAddr::V4(self.addr4)
        }
    }

    /// `addr4:port`.
    pub fn socket_addr4(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.addr4), port)
    }

    /// `[addr6]:port`.
    pub fn socket_addr6(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(self.addr6), port)
    }
}

/// A client, a node (where lbd runs) and backends behind a bridge on the node, each in its own
/// namespace. Dropping it deletes every namespace, which removes all veths and the bridge.
///
/// Drop servers and processes using these namespaces before the topology (declare them after
/// it): a socket keeps its namespace alive, unnamed, until it is closed.
#[derive(Debug)]
pub struct Topology {
    pub client: Netns,
    pub node: Netns,
    pub backends: Vec<BackendHost>,
    pub client_addr4: Ipv4Addr,
    pub client_addr6: Ipv6Addr,
    pub node_client_addr4: Ipv4Addr,
    pub node_client_addr6: Ipv6Addr,
    pub node_bridge_addr4: Ipv4Addr,
    pub node_bridge_addr6: Ipv6Addr,
    /// The client's interface (towards the node).
    pub client_if: String,
    /// The node's interface towards the client.
    pub node_client_if: String,
    /// The node's bridge towards the backends.
    pub node_bridge: String,
    /// The node-side ends of the backends' veths, in the order of `backends`.
    pub node_bridge_ports: Vec<String>,
    next_index: usize,
}

impl Topology {
    /// Starts `lbd` (the binary at `lbd`) in the node with `services` as its service file,
    /// attached to both of the node's interfaces, with `extra` arguments.
    pub fn start_lbd(
        &self,
        lbd: &std::path::Path,
        services: &str,
        extra: &[&str],
    ) -> Result<crate::Lbd> {
        crate::Lbd::start(
            lbd,
            &self.node,
            services,
            &[&self.node_client_if, &self.node_bridge],
            extra,
        )
    }

    /// Starts a name server on every backend, on the given TCP and UDP ports, each named
    /// after its backend.
    pub fn serve_on_backends(&self, tcp: &[u16], udp: &[u16]) -> Result<Vec<NameServer>> {
        self.backends
            .iter()
            .map(|b| NameServer::start(&b.ns, &b.name, tcp, udp))
            .collect()
    }

    /// Builds the client, the node and `backends` backends, and waits until every link is up.
    pub fn new(backends: usize) -> Result<Topology> {
        ensure!(
            backends <= MAX_BACKENDS,
            "{backends} backends requested, at most {MAX_BACKENDS} fit the address plan"
        );
        let client = Netns::new("client")?;
        let node = Netns::new("node")?;
        prepare_host(&client)?;
        prepare_router(&node)?;

        let node_lines = [
            "link set lo up".to_owned(),
            format!(
                "link add {NODE_CLIENT_IF} type veth peer name {HOST_IF} netns {}",
                client.name()
            ),
            // An explicit MAC keeps the bridge's address stable when ports come and go (by
            // default it takes the lowest port MAC, and backends would keep a stale one).
            format!(
                "link add {NODE_BRIDGE} address {NODE_BRIDGE_MAC} type bridge stp_state 0 forward_delay 0"
            ),
            format!("link set {NODE_CLIENT_IF} up"),
            format!("link set {NODE_BRIDGE} up"),
            format!("addr add {NODE_CLIENT_ADDR4}/{PREFIX4} dev {NODE_CLIENT_IF}"),
            format!("addr add {NODE_CLIENT_ADDR6}/{PREFIX6} dev {NODE_CLIENT_IF} nodad"),
            format!("addr add {NODE_BRIDGE_ADDR4}/{PREFIX4} dev {NODE_BRIDGE}"),
            format!("addr add {NODE_BRIDGE_ADDR6}/{PREFIX6} dev {NODE_BRIDGE} nodad"),
        ];
        node.ip_batch(&node_lines).context("setting up the node")?;
        client
            .ip_batch(&host_lines(
                CLIENT_ADDR4,
                CLIENT_ADDR6,
                NODE_CLIENT_ADDR4,
                NODE_CLIENT_ADDR6,
            ))
            .context("setting up the client")?;
        wait_links_up(&node, &[NODE_CLIENT_IF])?;
        wait_links_up(&client, &[HOST_IF])?;

        let mut topology = Topology {
            client,
            node,
            backends: Vec::new(),
            client_addr4: CLIENT_ADDR4,
            client_addr6: CLIENT_ADDR6,
            node_client_addr4: NODE_CLIENT_ADDR4,
            node_client_addr6: NODE_CLIENT_ADDR6,
            node_bridge_addr4: NODE_BRIDGE_ADDR4,
            node_bridge_addr6: NODE_BRIDGE_ADDR6,
            client_if: HOST_IF.to_owned(),
            node_client_if: NODE_CLIENT_IF.to_owned(),
            node_bridge: NODE_BRIDGE.to_owned(),
            node_bridge_ports: Vec::new(),
            next_index: 0,
        };
        topology.add_backends(backends)?;
        Ok(topology)
    }

    /// Deletes the node's client-side veth (its peer in the client goes with it) and makes
    /// the pair again with the same names, addresses and routes, as an operator recreating an
    /// interface would: anything attached to the old interface is gone with it.
    pub fn recreate_client_link(&self) -> Result<()> {
        self.node
            .ip(&["link", "del", NODE_CLIENT_IF])
            .context("deleting the node's client link")?;
        self.make_client_link()
    }

    /// Renames the node's client-side veth to `renamed` (its peer in the client too; both down
    /// and without addresses, as renaming needs an interface down) and makes a new pair under
    /// the old names, with the same addresses and routes, as an operator renaming an interface
    /// and making another under its name would: anything attached to the renamed one stays
    /// with it.
    pub fn rename_client_link(&self, renamed: &str) -> Result<()> {
        let lines = |name: &str| {
            [
                format!("link set {name} down"),
                format!("addr flush dev {name}"),
                format!("link set {name} name {renamed}"),
            ]
        };
        self.node
            .ip_batch(&lines(NODE_CLIENT_IF))
            .context("renaming the node's client link")?;
        self.client
            .ip_batch(&lines(HOST_IF))
            .context("renaming the client's link")?;
        self.make_client_link()
    }

    /// Makes the client–node veth pair (gone or renamed) again, with its addresses and routes.
    pub fn make_client_link(&self) -> Result<()> {
        self.node
            .ip_batch(&[
                format!(
                    "link add {NODE_CLIENT_IF} type veth peer name {HOST_IF} netns {}",
                    self.client.name()
                ),
                format!("link set {NODE_CLIENT_IF} up"),
                format!("addr add {NODE_CLIENT_ADDR4}/{PREFIX4} dev {NODE_CLIENT_IF}"),
                format!("addr add {NODE_CLIENT_ADDR6}/{PREFIX6} dev {NODE_CLIENT_IF} nodad"),
            ])
            .context("making the node's client link again")?;
        self.client
            .ip_batch(
                &host_lines(
                    CLIENT_ADDR4,
                    CLIENT_ADDR6,
                    NODE_CLIENT_ADDR4,
                    NODE_CLIENT_ADDR6,
                )[1..],
            )
            .context("setting up the client's link again")?;
        wait_links_up(&self.node, &[NODE_CLIENT_IF])?;
        wait_links_up(&self.client, &[HOST_IF])
    }

    /// Adds one backend (index and addresses continue the plan) and returns it.
    pub fn add_backend(&mut self) -> Result<&BackendHost> {
        self.add_backends(1)?;
        self.backends
            .last()
            .context("the backend just added is missing")
    }

    /// Adds `count` backends with one `ip` batch on the node plus one per backend.
    pub fn add_backends(&mut self, count: usize) -> Result<()> {
        if count == 0 {
            return Ok(());
        }
        let first = self.next_index;
        let end = first
            .checked_add(count)
            .filter(|&end| end <= MAX_BACKENDS)
            .with_context(|| {
                format!("{count} more backends after index {first} exceed {MAX_BACKENDS}")
            })?;
        // Until they are pushed, the new hosts are owned here: on error their namespaces
        // are deleted, which also removes their veths' node-side ends.
        let mut new_hosts = Vec::with_capacity(count);
        for index in first..end {
            let ns = Netns::new(&format!("b{index}"))?;
            prepare_host(&ns)?;
            new_hosts.push(BackendHost {
                ns,
                name: format!("backend-{index}"),
                index,
                addr4: backend_addr4(index)?,
                addr6: backend_addr6(index)?,
                node_port: format!("mlb-b{index}"),
            });
        }
        let mut node_lines = Vec::with_capacity(count * 3);
        for host in &new_hosts {
            node_lines.push(format!(
                "link add {} type veth peer name {HOST_IF} netns {}",
                host.node_port,
                host.ns.name()
            ));
            node_lines.push(format!("link set {} master {NODE_BRIDGE}", host.node_port));
            node_lines.push(format!("link set {} up", host.node_port));
        }
        self.node
            .ip_batch(&node_lines)
            .context("adding backend ports to the node")?;
        for host in &new_hosts {
            host.ns
                .ip_batch(&host_lines(
                    host.addr4,
                    host.addr6,
                    NODE_BRIDGE_ADDR4,
                    NODE_BRIDGE_ADDR6,
                ))
                .with_context(|| format!("setting up {}", host.name))?;
        }
        let ports: Vec<&str> = new_hosts.iter().map(|h| h.node_port.as_str()).collect();
        let mut node_ifs = ports.clone();
        node_ifs.push(NODE_BRIDGE);
        wait_links_up(&self.node, &node_ifs)?;
        for host in &new_hosts {
            wait_links_up(&host.ns, &[HOST_IF])?;
        }
        self.next_index = end;
        self.node_bridge_ports
            .extend(new_hosts.iter().map(|h| h.node_port.clone()));
        self.backends.extend(new_hosts);
        Ok(())
    }

    /// Removes the backend named `name` (its namespace, and so its port on the bridge) and
    /// returns whether it existed.
    pub fn remove_backend(&mut self, name: &str) -> bool {
        let Some(pos) = self.backends.iter().position(|b| b.name == name) else {
            return false;
        };
        let host = self.backends.remove(pos);
        self.node_bridge_ports.retain(|p| *p != host.node_port);
        drop(host);
        true
    }

    /// The backend with this name.
    pub fn backend(&self, name: &str) -> Option<&BackendHost> {
        self.backends.iter().find(|b| b.name == name)
    }

    /// Client address of a family.
    pub fn client_addr(&self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.client_addr6)
        } else {
            IpAddr::V4(self.client_addr4)
        }
    }

    /// Node's client-facing address of a family.
    pub fn node_client_addr(&self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.node_client_addr6)
        } else {
            IpAddr::V4(self.node_client_addr4)
        }
    }

    /// Names of every namespace of the topology.
    pub fn namespace_names(&self) -> Vec<String> {
        let mut names = vec![self.client.name().to_owned(), self.node.name().to_owned()];
        names.extend(self.backends.iter().map(|b| b.ns.name().to_owned()));
        names
    }

    /// Checks plain routing through the node, without any load balancer: starts a temporary
    /// server on a free TCP and UDP port of every backend and makes a TCP and a UDP request,
    /// over IPv4 and IPv6, from the client to each, checking the backend saw the client's own
    /// address.
    pub fn verify_direct_routing(&self, timeout: Duration) -> Result<()> {
        for host in &self.backends {
            let server = NameServer::start(&host.ns, &host.name, &[0], &[0])?;
            let (tcp_port, udp_port) = (server.tcp_ports()[0], server.udp_ports()[0]);
            for v6 in [false, true] {
                let ip = host.addr(v6);
                let client = self.client_addr(v6);
                let replies = [
                    tcp_request(&self.client, SocketAddr::new(ip, tcp_port), timeout)?,
                    udp_request(&self.client, SocketAddr::new(ip, udp_port), timeout)?,
                ];
                for reply in replies {
                    if reply.backend != host.name || reply.seen_ip != client {
                        bail!(
                            "direct request to {} answered by {} seeing {} (expected {} seeing {client})",
                            host.name,
                            reply.backend,
                            reply.seen_ip,
                            host.name
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

/// Sysctls of every namespace: no duplicate address detection, so IPv6 addresses are usable
/// at once. Written before interfaces are created so that they inherit the defaults.
fn prepare_host(ns: &Netns) -> Result<()> {
    ns.set_sysctls(&[
        ("net.ipv6.conf.all.accept_dad", "0"),
        ("net.ipv6.conf.default.accept_dad", "0"),
    ])
}

/// Host sysctls plus forwarding and no reverse-path filter.
fn prepare_router(ns: &Netns) -> Result<()> {
    prepare_host(ns)?;
    ns.set_sysctls(&[
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv6.conf.all.forwarding", "1"),
        ("net.ipv6.conf.default.forwarding", "1"),
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.default.rp_filter", "0"),
    ])
}

/// `ip` batch of a client or backend: loopback and its interface up, addresses, default routes.
fn host_lines(addr4: Ipv4Addr, addr6: Ipv6Addr, gw4: Ipv4Addr, gw6: Ipv6Addr) -> Vec<String> {
    vec![
        "link set lo up".to_owned(),
        format!("link set {HOST_IF} up"),
        format!("addr add {addr4}/{PREFIX4} dev {HOST_IF}"),
        format!("addr add {addr6}/{PREFIX6} dev {HOST_IF} nodad"),
        format!("route add 0.0.0.0/0 via {gw4} dev {HOST_IF}"),
        format!("route add ::/0 via {gw6} dev {HOST_IF}"),
    ]
}

/// Waits (bounded) until every interface in `names` is up and running (has carrier) in `ns`.
fn wait_links_up(ns: &Netns, names: &[&str]) -> Result<()> {
    let result = ns.run(|| -> Result<()> {
        let deadline = Instant::now() + LINK_UP_TIMEOUT;
        let max_polls = LINK_UP_TIMEOUT.as_millis() / LINK_POLL_INTERVAL.as_millis() + 2;
        let mut down: Vec<&str> = names.to_vec();
        for _ in 0..max_polls {
            let mut still_down = Vec::new();
            for name in down {
                if !link_running(name)? {
                    still_down.push(name);
                }
            }
            down = still_down;
            if down.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(LINK_POLL_INTERVAL);
        }
        bail!("links {down:?} not running after {LINK_UP_TIMEOUT:?}")
    })?;
    result.with_context(|| format!("in {}", ns.name()))
}

/// Whether the interface is `IFF_UP` and `IFF_RUNNING`, in the calling thread's namespace.
fn link_running(name: &str) -> Result<bool> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    ensure!(
        !name.is_empty() && name.len() < libc::IFNAMSIZ,
        "bad interface name {name:?}"
    );
    // SAFETY: socket(2) returns a new descriptor or -1.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error()).context("socket");
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name from and writes the flags into `req`.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS, &raw mut req) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("flags of {name}"));
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = libc::c_int::from(unsafe { req.ifr_ifru.ifru_flags });
    let want = libc::IFF_UP | libc::IFF_RUNNING;
    Ok(flags & want == want)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_plan() {
        assert_eq!(backend_addr4(0).unwrap(), Ipv4Addr::new(198, 18, 2, 10));
        assert_eq!(
            backend_addr6(0).unwrap(),
            "fd00:2::a".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(backend_addr4(244).unwrap(), Ipv4Addr::new(198, 18, 2, 254));
        assert!(backend_addr4(MAX_BACKENDS).is_err());
        assert_eq!(NODE_CLIENT_ADDR6, "fd00:1::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(NODE_BRIDGE_ADDR6, "fd00:2::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(CLIENT_ADDR6, "fd00:1::2".parse::<Ipv6Addr>().unwrap());
    }

    #[test]
    fn interface_names_fit() {
        let longest = format!("mlb-b{}", MAX_BACKENDS - 1);
        for name in [NODE_CLIENT_IF, NODE_BRIDGE, HOST_IF, longest.as_str()] {
            assert!(name.len() <= 15, "{name} too long");
        }
    }
}
