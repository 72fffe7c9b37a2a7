//! A real Docker Swarm of two nodes on one machine, for the swarm tests, the demo and the
//! bench: each node a network namespace with its own `dockerd`, on an underlay bridge, plus a
//! client namespace.
//!
//! ```text
//!  client ns (198.18.50.100)   node 1 ns: dockerd, manager (198.18.50.1)
//!        │ eth0                 │ eth0    docker_gwbridge 198.18.61.0/24, docker0 198.18.71.0/24
//!  ──────┴──── underlay ns: bridge br0 ───┬───────────────────────────────────────────
//!                                         │ eth0
//!                              node 2 ns: dockerd, worker (198.18.50.2)
//!                                         docker_gwbridge 198.18.62.0/24, docker0 198.18.72.0/24
//! ```
//!
//! Overlay networks come from 198.19.0.0/16, so every address stays in 198.18.0.0/15. The
//! image `local/bb:1` (busybox, `docker import`ed: no registry is reachable) runs httpd on
//! 8080, whose `/cgi-bin/who` answers "<container hostname> <client address as seen>", and on
//! 8081 (TCP and UDP) a name server answering like the kit's `NameServer`, and on 8082 (TCP)
//! an echo server.
//! `dockerd` runs with only the network namespace entered (`setns`), not `ip netns exec`,
//! which would give it a `/sys` without cgroups. Each lab has its own names, directories and
//! sockets; dropping it removes all of them, also after a failed test.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{ChildGuard, EnterMode, Netns, netns::unique_suffix};

mod checks;
mod image;
mod tasks;

pub use crate::bulk::{Transfer, echo_transfer};
pub use checks::{programmed_backends, request, start_lbd, start_lbd_with, wait_until};
pub use image::copy_with_libraries;
pub use tasks::{Publish, PublishMode, Task};

/// The image every task runs.
pub const IMAGE: &str = "local/bb:1";
/// The port the image's httpd listens on.
pub const HTTP_PORT: u16 = 8080;
/// The port (TCP and UDP) of the image's name server, which answers each request line or
/// datagram like [`crate::NameServer`]: `"{hostname} {peer_ip} {peer_port}\n"`.
pub const WHO_PORT: u16 = 8081;
/// The port of the image's echo servers: on TCP every byte back until the client shuts its
/// side down (for bulk transfers); on UDP a request for datagrams sent as one aggregate
/// (`crate::segmented_echo`).
pub const ECHO_PORT: u16 = 8082;
/// Name prefix of the lab's directories under /run and /var/lib (with the creating pid).
pub const DIR_PREFIX: &str = "mlbsw-";
/// The client namespace's address on the underlay.
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 50, 100);
/// The client's port on the underlay bridge is `p{CLIENT_PORT}` (the nodes' are `p1`, `p2`).
const CLIENT_PORT: u8 = 100;
/// How long a dockerd may take to answer after start.
const DOCKERD_TIMEOUT: Duration = Duration::from_secs(40);
/// How long one docker CLI command may take (an image import, `swarm leave`, removing every
/// container are the slow ones, seconds): a hung Engine fails the test instead of hanging it.
const DOCKER_CLI_TIMEOUT: Duration = Duration::from_secs(120);
/// The same, for the clean-up of a dropped lab, which goes on to kill the Engine anyway.
const DOCKER_DROP_TIMEOUT: Duration = Duration::from_secs(60);
/// The docker CLI: Debian's docker.io puts it in /usr/bin; a static download in /usr/local/bin.
const DOCKER_CLI: &[&str] = &["/usr/bin/docker", "/usr/local/bin/docker"];

/// One swarm node.
pub struct SwarmNode {
    pub ns: Netns,
    /// 1-based.
    pub index: u8,
    /// Its underlay address (and swarm advertise address).
    pub addr: Ipv4Addr,
    /// Its data-path address: `addr`, or a second underlay address given to Docker as
    /// `--data-path-addr` ([`SwarmLab::start_with_data_path`]).
    pub data_addr: Ipv4Addr,
    /// The Engine's socket, `unix://` form for `--docker-host`.
    pub docker_host: String,
    socket: PathBuf,
    data_root: PathBuf,
    exec_root: PathBuf,
    dockerd: Option<ChildGuard>,
}

/// A two-node swarm (node 1 manager, node 2 worker) and a client.
pub struct SwarmLab {
    pub nodes: Vec<SwarmNode>,
    pub client: Netns,
    // Dropped last: the nodes' veths live in it.
    underlay: Netns,
}

impl SwarmNode {
    /// `swarm init`/`join`'s address flags for this node.
    fn swarm_addresses(&self) -> Vec<String> {
        let mut flags = vec!["--advertise-addr".to_owned(), self.addr.to_string()];
        if self.data_addr != self.addr {
            flags.extend(["--data-path-addr".to_owned(), self.data_addr.to_string()]);
        }
        flags
    }

    /// Runs the docker CLI against this node's Engine (bounded by [`DOCKER_CLI_TIMEOUT`]);
    /// stdout on success.
    pub fn docker(&self, args: &[&str]) -> Result<String> {
        self.docker_within(args, DOCKER_CLI_TIMEOUT)
    }

    /// [`SwarmNode::docker`] bounded by `timeout`.
    fn docker_within(&self, args: &[&str], timeout: Duration) -> Result<String> {
        let cli = DOCKER_CLI
            .iter()
            .find(|p| Path::new(p).exists())
            .context("no docker CLI (cargo xtask setup installs docker.io)")?;
        let mut cmd = Command::new(cli);
        cmd.arg("-H").arg(&self.docker_host).args(args);
        let out = crate::command::output_within(cmd, None, timeout)
            .with_context(|| format!("running docker {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "docker -H {} {}: {}\n{}",
                self.docker_host,
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The last lines of this node's dockerd log.
    pub fn dockerd_log_tail(&self) -> String {
        let text = self
            .dockerd
            .as_ref()
            .map(ChildGuard::output_so_far)
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn pidfile(&self) -> PathBuf {
        self.exec_root.join("dockerd.pid")
    }

    /// Starts this node's dockerd and waits until it answers.
    fn start_dockerd(&mut self) -> Result<()> {
        for dir in [&self.data_root, &self.exec_root] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        // Left by a killed dockerd; a new one refuses to start while it exists.
        let _ = std::fs::remove_file(self.pidfile());
        let mut cmd = Command::new("dockerd");
        cmd.arg("--data-root")
            .arg(&self.data_root)
            .arg("--exec-root")
            .arg(&self.exec_root)
            .arg("--pidfile")
            .arg(self.pidfile())
            .arg("-H")
            .arg(&self.docker_host)
            .arg("--bip")
            .arg(format!("198.18.7{}.1/24", self.index))
            // No registry is reachable: services use the local image as is.
            .env("DOCKER_SERVICE_PREFER_OFFLINE_IMAGE", "1");
        self.dockerd = Some(self.ns.spawn_command(cmd, EnterMode::SetnsOnly)?);
        let deadline = Instant::now() + DOCKERD_TIMEOUT;
        loop {
            if self.socket.exists() && self.docker(&["info", "--format", "{{.ID}}"]).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "dockerd of node {} did not answer within {DOCKERD_TIMEOUT:?}:\n{}",
                    self.index,
                    self.dockerd_log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops this node's dockerd (SIGTERM, then SIGKILL) and every process it left (containerd,
    /// shims), found by the node's directories in their command lines.
    fn stop_dockerd(&mut self) {
        if let Some(mut dockerd) = self.dockerd.take() {
            let _ = dockerd.stop(Duration::from_secs(15));
        }
        kill_processes_mentioning(&self.exec_root);
    }

    /// Kills this node's dockerd at once (SIGKILL), as a crash would: its containerd goes with
    /// it, the containers keep running (their shims stay) until a dockerd starts again, which
    /// then stops them (swarm mode has no live restore) and the swarm replaces them.
    /// `start_engine` starts it again.
    pub fn crash_engine(&mut self) -> Result<()> {
        let mut dockerd = self.dockerd.take().context("dockerd is not running")?;
        dockerd.signal(libc::SIGKILL)?;
        dockerd
            .wait_timeout(Duration::from_secs(10))?
            .context("dockerd survived SIGKILL for 10 s")?;
        Ok(())
    }

    /// Restarts the Engine (containers stop with it: swarm mode has no live restore).
    pub fn restart_dockerd(&mut self) -> Result<()> {
        self.stop_dockerd();
        self.start_dockerd()
    }

    /// Stops the Engine, for tests of lbd without it. `start_engine` brings it back.
    pub fn stop_engine(&mut self) {
        self.stop_dockerd();
    }

    pub fn start_engine(&mut self) -> Result<()> {
        self.start_dockerd()
    }

    /// Sends `signal` to this node's dockerd (SIGSTOP freezes the Engine while its containers
    /// keep running; SIGCONT thaws it).
    pub fn signal_engine(&mut self, signal: libc::c_int) -> Result<()> {
        self.dockerd
            .as_mut()
            .context("dockerd is not running")?
            .signal(signal)
    }

    /// The running dockerd's process id.
    pub fn dockerd_pid(&self) -> Option<u32> {
        self.dockerd.as_ref().map(ChildGuard::id)
    }

    /// Where the Engine's socket is.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The node's Engine state directories (data root, exec root), removed with the lab.
    pub fn state_dirs(&self) -> [&Path; 2] {
        [&self.data_root, &self.exec_root]
    }

    /// The node's `docker_gwbridge` subnet (network address, prefix length).
    pub fn gwbridge_subnet(&self) -> (Ipv4Addr, u8) {
        (Ipv4Addr::new(198, 18, 60 + self.index, 0), 24)
    }

    /// The node's own address on `docker_gwbridge`: what its local tasks see as the source of
    /// connections the node makes to them.
    pub fn gwbridge_gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 60 + self.index, 1)
    }
}

impl SwarmLab {
    /// Builds the namespaces, starts both Engines, makes the image, creates the swarm.
    pub fn start() -> Result<SwarmLab> {
        Self::start_on(false)
    }

    /// As [`SwarmLab::start`], but each node also has 198.18.51.N on its underlay port and
    /// joins with it as `--data-path-addr`: the swarm's data (its overlays, and the Engine's
    /// task addresses) on one address, its control plane on the other.
    pub fn start_with_data_path() -> Result<SwarmLab> {
        Self::start_on(true)
    }

    fn start_on(data_path: bool) -> Result<SwarmLab> {
        cleanup_stale();
        let underlay = Netns::new("swul")?;
        let client = Netns::new("swcli")?;
        let suffix = unique_suffix();
        // Its directories carry this pid (`unique_suffix`): an interrupt removes them.
        crate::interrupt::on_interrupt(remove_own_labs);
        underlay.ip_batch(&[
            "link add br0 type bridge",
            "link set br0 up",
            "link set lo up",
        ])?;
        let mut nodes = Vec::new();
        for index in 1..=2u8 {
            let ns = Netns::new(&format!("swn{index}"))?;
            let addr = Ipv4Addr::new(198, 18, 50, index);
            plug(&ns, &underlay, index, &format!("{addr}/24"))?;
            let data_addr = if data_path {
                let data_addr = Ipv4Addr::new(198, 18, 51, index);
                ns.ip(&["addr", "add", &format!("{data_addr}/24"), "dev", "eth0"])?;
                data_addr
            } else {
                addr
            };
            ns.set_sysctls(&[("net.ipv4.ip_forward", "1")])?;
            let dir = format!("{DIR_PREFIX}{suffix}-{index}");
            let exec_root = Path::new("/run").join(&dir);
            let socket = exec_root.join("docker.sock");
            nodes.push(SwarmNode {
                ns,
                index,
                addr,
                data_addr,
                docker_host: format!("unix://{}", socket.display()),
                socket,
                data_root: Path::new("/var/lib").join(&dir),
                exec_root,
                dockerd: None,
            });
        }
        plug(
            &client,
            &underlay,
            CLIENT_PORT,
            &format!("{CLIENT_ADDR}/24"),
        )?;
        let mut lab = SwarmLab {
            nodes,
            client,
            underlay,
        };
        for node in &mut lab.nodes {
            node.start_dockerd()?;
        }
        lab.underlay_is_a_plain_switch()?;
        let image = image::image_tar()?;
        lab.import_image(&image, &image::command_change(), IMAGE)?;
        for node in &lab.nodes {
            // Before the swarm makes its own: every address stays in 198.18.0.0/15.
            let (net, len) = node.gwbridge_subnet();
            let subnet = format!("{net}/{len}");
            let gateway = node.gwbridge_gateway().to_string();
            node.docker(&[
                "network",
                "create",
                "--subnet",
                &subnet,
                "--gateway",
                &gateway,
                "--opt",
                "com.docker.network.bridge.name=docker_gwbridge",
                "--opt",
                "com.docker.network.bridge.enable_icc=false",
                "--opt",
                "com.docker.network.bridge.enable_ip_masquerade=true",
                "docker_gwbridge",
            ])?;
        }
        let manager = &lab.nodes[0];
        let mut init = vec![
            "swarm".to_owned(),
            "init".to_owned(),
            "--default-addr-pool".to_owned(),
            "198.19.0.0/16".to_owned(),
            "--default-addr-pool-mask-length".to_owned(),
            "24".to_owned(),
        ];
        init.extend(manager.swarm_addresses());
        manager.docker(&init.iter().map(String::as_str).collect::<Vec<_>>())?;
        let token = manager.docker(&["swarm", "join-token", "-q", "worker"])?;
        let join = format!("{}:2377", manager.addr);
        for node in &lab.nodes[1..] {
            let mut args = vec![
                "swarm".to_owned(),
                "join".to_owned(),
                "--token".to_owned(),
                token.trim().to_owned(),
            ];
            args.extend(node.swarm_addresses());
            args.push(join.clone());
            node.docker(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        }
        Ok(lab)
    }

    pub fn manager(&self) -> &SwarmNode {
        &self.nodes[0]
    }

    /// `docker service create -d --name NAME --replicas N ARGS… local/bb:1`.
    pub fn create_service(&self, name: &str, replicas: u32, args: &[&str]) -> Result<()> {
        let replicas = replicas.to_string();
        let mut all = vec![
            "service",
            "create",
            "-d",
            "--name",
            name,
            "--replicas",
            &replicas,
        ];
        all.extend_from_slice(args);
        all.push(IMAGE);
        self.manager().docker(&all)?;
        Ok(())
    }

    /// Running tasks of `service` per node index (1-based), as the manager sees them.
    pub fn running_tasks(&self, service: &str) -> Result<Vec<(u8, String)>> {
        let out = self.manager().docker(&[
            "service",
            "ps",
            service,
            "--filter",
            "desired-state=running",
            "--format",
            "{{.ID}} {{.Node}} {{.CurrentState}}",
        ])?;
        // Both nodes share the machine's hostname: tell them apart by node id.
        let ids = self.node_ids()?;
        let mut tasks = Vec::new();
        for line in out.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() >= 3 && fields[2] == "Running" {
                let task = fields[0];
                let node_id =
                    self.manager()
                        .docker(&["inspect", "--format", "{{.NodeID}}", task])?;
                let index = ids
                    .iter()
                    .position(|id| id == node_id.trim())
                    .map_or(0, |i| i as u8 + 1);
                tasks.push((index, task.to_owned()));
            }
        }
        Ok(tasks)
    }

    /// `docker node update --availability AVAILABILITY` of node `index` (1-based): `drain`
    /// makes Swarm stop its tasks (and start them elsewhere), `active` undoes it.
    pub fn set_availability(&self, index: u8, availability: &str) -> Result<()> {
        let ids = self.node_ids()?;
        let id = ids
            .get(usize::from(index).wrapping_sub(1))
            .with_context(|| format!("no node {index}"))?;
        self.manager()
            .docker(&["node", "update", "--availability", availability, id])?;
        Ok(())
    }

    /// The swarm's node ids in node order.
    /// Imports `root` (a directory: an image's root file system) as image `name` on every
    /// node (no registry to share it through), `change` its `docker import -c` (e.g. its
    /// `ENTRYPOINT`).
    pub fn import_root(&self, root: &Path, change: &str, name: &str) -> Result<()> {
        self.import_image(&image::tar_of(root)?, change, name)
    }

    fn import_image(&self, tar: &image::TempPath, change: &str, name: &str) -> Result<()> {
        let tar = tar.path().to_str().context("temp path")?;
        for node in &self.nodes {
            node.docker(&["import", "-c", change, tar, name])?;
        }
        Ok(())
    }

    /// Every node's swarm id, in node order.
    pub fn node_ids(&self) -> Result<Vec<String>> {
        self.nodes
            .iter()
            .map(|n| {
                n.docker(&["info", "--format", "{{.Swarm.NodeID}}"])
                    .map(|s| s.trim().to_owned())
            })
            .collect()
    }

    /// Waits until `service` has exactly `n` running tasks, at most `timeout`.
    pub fn wait_running(&self, service: &str, n: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let running = self.running_tasks(service)?;
            if running.len() == n {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{service}: {} running tasks after {timeout:?}, want {n}\nnode 1 dockerd:\n{}\nnode 2 dockerd:\n{}",
                    running.len(),
                    self.nodes[0].dockerd_log_tail(),
                    self.nodes[1].dockerd_log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The underlay stands for the network between hosts, which costs them no CPU: its bridge
    /// must not run the host's iptables on every frame, as `br_netfilter` (which dockerd loads)
    /// makes every bridge do by default. Otherwise each node-to-node hop pays a netfilter
    /// traversal that no real switch charges to the nodes.
    fn underlay_is_a_plain_switch(&self) -> Result<()> {
        let settings: Vec<(&str, &str)> = [
            "net.bridge.bridge-nf-call-iptables",
            "net.bridge.bridge-nf-call-ip6tables",
            "net.bridge.bridge-nf-call-arptables",
        ]
        .into_iter()
        .filter(|key| self.underlay.sysctl(key).is_ok())
        .map(|key| (key, "0"))
        .collect();
        self.underlay.set_sysctls(&settings)
    }

    /// Turns the transmit checksum offload of every node's underlay interface on or off. Off,
    /// the kernel completes each TCP/UDP checksum on the way out, as a NIC does on the wire:
    /// a packet whose partial checksum was updated wrongly then leaves with a wrong checksum
    /// and the client drops it, where a veth with offload on passes it on unverified.
    pub fn set_node_checksum_offload(&self, on: bool) -> Result<()> {
        let state = if on { "on" } else { "off" };
        for node in &self.nodes {
            node.ns.exec(&["ethtool", "-K", "eth0", "tx", state])?;
        }
        Ok(())
    }

    /// Turns the UDP tunnel segmentation offload of every node's underlay interface on or off.
    /// On (a veth's default), a GSO packet wrapped for the mesh tunnel crosses to the other
    /// node whole; off, the kernel cuts it into tunnel packets on the way out, as a NIC with
    /// that offload does on the wire.
    pub fn set_node_tunnel_segmentation_offload(&self, on: bool) -> Result<()> {
        let state = if on { "on" } else { "off" };
        for node in &self.nodes {
            node.ns.exec(&[
                "ethtool",
                "-K",
                "eth0",
                "tx-udp_tnl-segmentation",
                state,
                "tx-udp_tnl-csum-segmentation",
                state,
            ])?;
        }
        Ok(())
    }

    /// Sets the MTU of the whole underlay: its bridge and ports, every node's and the client's
    /// `eth0` (one L2 segment: all alike, as on a real network).
    pub fn set_underlay_mtu(&self, mtu: u16) -> Result<()> {
        let mtu = mtu.to_string();
        let ports = std::iter::once("br0".to_owned())
            .chain(self.nodes.iter().map(|n| format!("p{}", n.index)))
            .chain(std::iter::once(format!("p{}", CLIENT_PORT)));
        for port in ports {
            self.underlay.ip(&["link", "set", &port, "mtu", &mtu])?;
        }
        for ns in self.nodes.iter().map(|n| &n.ns).chain([&self.client]) {
            ns.ip(&["link", "set", "eth0", "mtu", &mtu])?;
        }
        Ok(())
    }

    /// Removes every service (between test steps).
    pub fn remove_services(&self) -> Result<()> {
        let names = self.manager().docker(&["service", "ls", "-q"])?;
        let names: Vec<&str> = names.split_whitespace().collect();
        if !names.is_empty() {
            let mut args = vec!["service", "rm"];
            args.extend(names);
            self.manager().docker(&args)?;
        }
        Ok(())
    }
}

impl Drop for SwarmLab {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            // Containers first (they hold mounts and namespaces), then the Engine.
            // Each bounded: a hung Engine must not hang the clean-up (stop_dockerd kills it).
            let _ = node.docker_within(&["swarm", "leave", "--force"], DOCKER_DROP_TIMEOUT);
            if let Ok(ids) = node.docker_within(&["ps", "-aq"], DOCKER_DROP_TIMEOUT) {
                let ids: Vec<&str> = ids.split_whitespace().collect();
                if !ids.is_empty() {
                    let mut args = vec!["rm", "-f"];
                    args.extend(ids);
                    let _ = node.docker_within(&args, DOCKER_DROP_TIMEOUT);
                }
            }
            node.stop_dockerd();
            remove_dirs(&[node.exec_root.clone(), node.data_root.clone()]);
        }
    }
}

/// What `/cgi-bin/who` answered: the task's hostname (its container id) and the client
/// address it saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Who {
    pub host: String,
    pub seen: String,
}

/// `GET /cgi-bin/who` from inside `ns`, at most `timeout`.
pub fn http_who(ns: &Netns, to: SocketAddr, timeout: Duration) -> Result<Who> {
    let text = ns.run(move || -> Result<String> {
        let mut stream = TcpStream::connect_timeout(&to, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.write_all(b"GET /cgi-bin/who HTTP/1.0\r\n\r\n")?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        Ok(text)
    })??;
    parse_who(&text).with_context(|| format!("answer from {to}: {text:?}"))
}

/// The body's last line: `HOST ADDR`, the address as busybox httpd writes it
/// (`[::ffff:198.18.50.100]` for IPv4 on its IPv6 socket).
pub fn parse_who(text: &str) -> Option<Who> {
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    let (host, seen) = line.trim().split_once(' ')?;
    let seen = seen.trim_start_matches('[').trim_end_matches(']');
    let seen = seen.strip_prefix("::ffff:").unwrap_or(seen);
    Some(Who {
        host: host.to_owned(),
        seen: seen.to_owned(),
    })
}

/// A veth from `ns` (`eth0`, with `addr`) to the underlay bridge.
fn plug(ns: &Netns, underlay: &Netns, index: u8, addr: &str) -> Result<()> {
    let peer = format!("p{index}");
    ns.ip(&[
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        &peer,
        "netns",
        underlay.name(),
    ])?;
    underlay.ip_batch(&[
        format!("link set {peer} master br0"),
        format!("link set {peer} up"),
    ])?;
    ns.ip_batch(&[
        format!("addr add {addr} dev eth0"),
        "link set eth0 up".to_owned(),
        "link set lo up".to_owned(),
    ])
}

/// Programs of a node's Engine that may outlive it: only these are swept, never a process that
/// merely names the node's socket (an `lbd --docker-host` of a test).
const ENGINE_PROGRAMS: &[&str] = &["dockerd", "containerd", "docker-proxy", "runc"];

/// Engine processes (dockerd, containerd and its shims, docker-proxy, runc) whose command line
/// mentions `dir`.
pub fn processes_mentioning(dir: &Path) -> Vec<i32> {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<i32>().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline);
            let program = cmdline.split('\0').next()?.rsplit('/').next()?;
            let engine = ENGINE_PROGRAMS.iter().any(|p| program.starts_with(p));
            (engine && cmdline.contains(&needle)).then_some(pid)
        })
        .collect()
}

/// Kills the Engine processes whose command line mentions `dir` (containerd and shims of a
/// node), and first the containers of those shims (their children): a container outlives a
/// killed shim, which happens when its dockerd is gone (a crashed Engine, a killed test).
fn kill_processes_mentioning(dir: &Path) {
    let engine = processes_mentioning(dir);
    let containers: Vec<i32> = children_of_all()
        .into_iter()
        .filter(|(_, parent)| engine.contains(parent))
        .map(|(pid, _)| pid)
        .filter(|pid| !engine.contains(pid))
        .collect();
    // Killing a container's first process ends its whole PID namespace.
    for pid in containers.into_iter().chain(engine) {
        // SAFETY: plain kill(2) of a process of this lab.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Processes whose mounts mention `dir`: a lab's containers (their root is under the node's
/// data root), also once their shim and Engine are gone.
pub fn processes_inside(dir: &Path) -> Vec<i32> {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<i32>().ok()?;
            let mounts = std::fs::read_to_string(entry.path().join("mountinfo")).ok()?;
            mounts.contains(&needle).then_some(pid)
        })
        .collect()
}

/// Every process with its parent (`/proc/PID/stat`).
fn children_of_all() -> Vec<(i32, i32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<i32>().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // "PID (COMM) STATE PPID …": COMM may hold spaces and parentheses.
            let after = stat.rsplit_once(')')?.1;
            let ppid = after.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect()
}

/// Unmounts everything below the directories (deepest first), then removes them.
fn remove_dirs(dirs: &[PathBuf]) {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| dirs.iter().any(|d| Path::new(m).starts_with(d)))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        let Ok(c) = std::ffi::CString::new(point) else {
            continue;
        };
        // SAFETY: umount2 with a valid path; MNT_DETACH never blocks.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Removes what labs of test processes that no longer run left behind (their directories
/// carry the creating pid); namespaces are swept by [`Netns::cleanup_stale`].
pub fn cleanup_stale() {
    remove_labs(|pid| pid.is_none_or(|p| !Path::new(&format!("/proc/{p}")).exists()));
    let _ = Netns::cleanup_stale();
}

/// At an interrupt, which runs no `Drop`: this process's labs' containers, Engines and
/// mounts (their namespaces and process groups are the interrupt's own lists).
fn remove_own_labs() {
    remove_labs(|pid| pid == Some(std::process::id()));
}

/// Kills what runs in, and removes, the lab directories whose creating pid `which` takes
/// (`None`: a name without one).
fn remove_labs(which: impl Fn(Option<u32>) -> bool) {
    for parent in ["/run", "/var/lib"] {
        let Ok(entries) = std::fs::read_dir(parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(DIR_PREFIX) else {
                continue;
            };
            let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
            if which(pid) {
                kill_processes_mentioning(&entry.path());
                remove_dirs(&[entry.path()]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn who_answers_parse_as_busybox_writes_them() {
        let who =
            super::parse_who("HTTP/1.0 200 OK\r\n\r\nabc123 [::ffff:198.18.50.100]\n").unwrap();
        assert_eq!(who.host, "abc123");
        assert_eq!(who.seen, "198.18.50.100");
        assert_eq!(
            super::parse_who("x 198.19.10.9").unwrap().seen,
            "198.19.10.9"
        );
        assert!(super::parse_who("").is_none());
    }
}
