//! VIPs announced through BIRD 2 to an ECMP router (issue 15): a router namespace running
//! BIRD with `merge paths` (ECMP), two balancer nodes each running `lbd` and BIRD, all in
//! namespaces the test makes and removes.
//! - The route test checks the router's kernel route for the VIP: both nodes as next hops;
//!   one node away (BIRD stopped, link down, `lbd cleanup`, told of BIRD or only by what lbd
//!   recorded) leaves the other within the hold
//!   time; a restart of lbd withdraws nothing, one without `lbd.bgp` withdraws; a VIP whose backends are all gone (removed from
//!   the file, or down by their health checks) is withdrawn within a second plus a check
//!   cycle and BIRD's reconfiguration.
//! - The flows test carries 100 connections through the same three ways (see its topology
//!   below): each keeps its backend, new connections keep succeeding.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use lb_testkit::{
    ChildGuard, Lbd, NameServer, Netns, TcpSession, e2e_enabled,
    routing::{birdc, kill_bird, next_hops, node_conf, start_bird, wait_hops},
};

const VIP: &str = "198.18.100.1";
/// BGP hold time of every session (BIRD's minimum is 3 s).
const HOLD: Duration = Duration::from_secs(3);

const SERVICES: &str = r#"
services:
  web:
    vip: 198.18.100.1
    ports: ["80:8080/tcp"]
    backends: ["198.18.2.10", "198.18.2.11", "198.18.2.12"]
  drained:
    vip: 198.18.100.2
    ports: ["80:8080/tcp"]
    backends: [{ address: "198.18.2.10", weight: 0 }]
  checked:
    vip: 198.18.100.3
    ports: ["80:8080/tcp"]
    backends: ["198.18.30.1"]
    health: { tcp: {}, interval: 500ms, timeout: 200ms, rise: 1, fall: 1 }
  dead:
    vip: 198.18.100.4
    ports: ["80:8080/tcp"]
    backends: ["198.18.30.9"]
    health: { tcp: {}, interval: 500ms, timeout: 200ms, rise: 1, fall: 1 }
"#;

/// `dead`'s VIP: its one backend answers nothing, so it is never announced, not even before
/// its first check (announced and withdrawn, a flap at the router).
const DEAD_VIP: &str = "198.18.100.4";

/// `checked`'s VIP and its one backend, a server in the router's namespace that both nodes
/// reach (the router's own address, routed to from each node).
const CHECKED_VIP: &str = "198.18.100.3";
const CHECKED_BACKEND: &str = "198.18.30.1";

const SERVICES_ALL_GONE: &str = r#"
services:
  web:
    vip: 198.18.100.1
    ports: ["80:8080/tcp"]
    backends: []
"#;

fn lbd() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_lbd"))
}

/// A temporary directory for one BIRD's files, removed on drop (and at an interrupt).
struct Dir(lb_testkit::ScratchPath);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = lb_testkit::ScratchPath::temp(&format!("bgp-{name}"), "");
        std::fs::create_dir_all(&*dir).expect("temp dir");
        Dir(dir)
    }
}

/// The router's BIRD: ECMP over a BGP session to each node, given as (local address, node
/// address) for node A, then node B; then `extra`.
fn router_conf(sessions: [(&str, &str); 2], extra: &str) -> String {
    let [(local_a, a), (local_b, b)] = sessions;
    format!(
        "router id {local_a};
protocol device {{ scan time 1; }}
protocol kernel {{ merge paths on; ipv4 {{ import none; export all; }}; }}
template bgp balancer {{
  hold time {hold}; keepalive time 1; connect retry time 1; connect delay time 1; error wait time 1, 2;
  ipv4 {{ import all; export none; }};
}}
protocol bgp node_a from balancer {{ local {local_a} as 65000; neighbor {a} as 65010; }}
protocol bgp node_b from balancer {{ local {local_b} as 65000; neighbor {b} as 65010; }}
{extra}",
        hold = HOLD.as_secs()
    )
}

struct Node {
    ns: Netns,
    dir: Dir,
    lbd: Lbd,
    bird: Option<ChildGuard>,
    own: &'static str,
    router: &'static str,
}

impl Node {
    /// Kills its BIRD (bounded wait).
    fn kill_bird(&mut self) {
        kill_bird(self.bird.take().expect("bird"));
    }

    /// `lbd cleanup --force` given the service file, as the systemd unit runs it (BIRD's
    /// settings from its `lbd:` section): stops lbd, removes meshlb, withdraws.
    fn cleanup(&self) {
        self.cleanup_with(&["--config", self.lbd.config_path().to_str().unwrap()]);
    }

    /// `lbd cleanup --force` told nothing of BIRD (as after an lbd given its BGP settings as
    /// flags): it withdraws what lbd recorded in its state directory.
    fn cleanup_by_record(&self) {
        self.cleanup_with(&["--state-dir", self.lbd.state_dir().to_str().unwrap()]);
    }

    fn cleanup_with(&self, args: &[&str]) {
        let out = std::process::Command::new(lbd())
            .args(["cleanup", "--force", "--pin-dir"])
            .arg(self.lbd.pin_dir())
            .args(args)
            .output()
            .expect("lbd cleanup");
        assert!(
            out.status.success(),
            "lbd cleanup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!(
                "withdrew every VIP ({} is empty)",
                self.include().display()
            )),
            "lbd cleanup: {text}"
        );
    }

    fn include(&self) -> PathBuf {
        self.dir.0.join("vips.conf")
    }

    /// `services` with this node's BIRD settings in its `lbd:` section.
    fn file(&self, services: &str) -> String {
        with_bgp(services, &self.include(), &self.socket())
    }

    fn socket(&self) -> PathBuf {
        self.dir.0.join("bird.ctl")
    }

    fn start_bird(&mut self) {
        let conf = node_conf(self.own, self.router, &self.include(), HOLD.as_secs());
        self.bird = Some(start_bird(&self.ns, &self.dir.0, &conf));
    }

    /// Has its running BIRD read `conf` (as `birdc configure` after an operator's edit).
    fn reconfigure_bird(&self, conf: &str) {
        std::fs::write(self.dir.0.join("bird.conf"), conf).expect("bird.conf");
        let text = birdc(&self.socket(), &["configure"]);
        assert!(
            text.contains("Reconfigured") || text.contains("Reconfiguration in progress"),
            "birdc configure: {text}"
        );
    }
}

/// Polls `node`'s `lbctl status` (bounded by `limit`) until it shows BIRD as running the VIPs
/// with every BGP session established (`up`), or BIRD as not running them, and checks that
/// lbctl then exits 0 (up) or 3 (not healthy); its `bgp` part.
fn wait_bird_shown(node: &Node, up: bool, limit: Duration) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let (code, out, err) = node
            .lbd
            .lbctl_exit(&["--output", "json", "status"])
            .expect("lbctl status");
        let status: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out} {err}"));
        let bgp = status["bgp"].clone();
        let established = bgp["sessions"]
            .as_array()
            .is_some_and(|s| !s.is_empty() && s.iter().all(|s| s["state"] == "up"));
        if bgp["in_sync"] == up && (established || !up) {
            assert_eq!(code, Some(if up { 0 } else { 3 }), "lbctl status: {bgp}");
            return bgp;
        }
        assert!(
            Instant::now() < deadline,
            "BIRD not shown {} within {limit:?}: {bgp}",
            if up { "up" } else { "down" }
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// As `wait_bird_shown` for BIRD not running the VIPs, whose error says each of `says`.
fn wait_bird_shown_down(node: &Node, says: &[&str]) {
    let bgp = wait_bird_shown(node, false, Duration::from_secs(8));
    let error = bgp["last_error"].as_str().expect("an error");
    assert!(says.iter().all(|s| error.contains(s)), "{error}");
}

/// The router (its BIRD's socket `router_socket`) disables its session to node `a`: the
/// router drops A's routes, and A's `lbctl status` says at its next look at BIRD that no
/// session is established, and exits 3; once the router enables it again, 0.
fn session_down_is_shown(a: &Node, router: &Netns, router_socket: &Path) {
    assert!(birdc(router_socket, &["disable", "node_a"]).contains("disabled"));
    wait_hops(router, VIP, &["198.18.10.6"], HOLD + Duration::from_secs(2));
    let deadline = Instant::now() + Duration::from_secs(8);
    let (code, text, err) = loop {
        let (code, text, err) = a.lbd.lbctl_exit(&["status"]).expect("lbctl status");
        if text.contains("upstream NOT ESTABLISHED") {
            break (code, text, err);
        }
        assert!(Instant::now() < deadline, "session down not shown: {text}");
        std::thread::sleep(Duration::from_millis(200));
    };
    // BIRD's words for the state vary with timing (Active, Connect, Idle; "Received:
    // Administrative shutdown" or "Socket: Connection reset by peer").
    assert_eq!(code, Some(3), "{text}");
    assert!(
        err.contains("no BGP session of BIRD's is established (upstream start"),
        "{err}"
    );
    assert!(birdc(router_socket, &["enable", "node_a"]).contains("enabled"));
    let bgp = wait_bird_shown(a, true, Duration::from_secs(15));
    assert_eq!(bgp["sessions"][0]["protocol"], "upstream", "{bgp}");
    let (_, text, _) = a.lbd.lbctl_exit(&["status"]).expect("lbctl status");
    assert!(
        text.contains("bgp: sessions: upstream established"),
        "{text}"
    );
}

fn node(name: &'static str, router: &Netns, own: &'static str, peer: &'static str) -> Node {
    let ns = Netns::new(&format!("bgp-{name}")).expect("node netns");
    ns.set_sysctl("net.ipv4.ip_forward", "1")
        .expect("forwarding");
    let (r_if, n_if) = (format!("r{name}"), "up0");
    router
        .ip(&[
            "link",
            "add",
            &r_if,
            "type",
            "veth",
            "peer",
            "name",
            n_if,
            "netns",
            ns.name(),
        ])
        .expect("veth");
    router
        .ip_batch(&[
            format!("addr add {peer}/30 dev {r_if}"),
            format!("link set {r_if} up"),
        ])
        .expect("router side");
    ns.ip_batch(&[
        format!("addr add {own}/30 dev {n_if}"),
        format!("link set {n_if} up"),
        "link set lo up".to_owned(),
        format!("route add {CHECKED_BACKEND}/32 via {peer}"),
    ])
    .expect("node side");
    start_node(name, ns, own, peer, SERVICES, n_if)
}

/// Announced by every node while its lbd serves, whatever its services' health: the
/// router's reply route resolves through it (`REPLY_PATH`).
const REPLY_ANCHOR: &str = "198.18.99.1";

/// `services` with an `lbd:` section announcing through BIRD: `include` and `socket`, and
/// the reply anchor.
fn with_bgp(services: &str, include: &Path, socket: &Path) -> String {
    format!(
        "{services}\nlbd:\n  bgp:\n    bird_include: {}\n    birdc_socket: {}\n    \
         reply_anchor: {REPLY_ANCHOR}\n",
        include.display(),
        socket.display()
    )
}

/// Starts lbd (attached to `interface`, announcing through BIRD) and then BIRD in the node
/// namespace `ns`, whose address toward the router is `own`.
fn start_node(
    dir_name: &str,
    ns: Netns,
    own: &'static str,
    router: &'static str,
    services: &str,
    interface: &str,
) -> Node {
    let dir = Dir::new(dir_name);
    let include = dir.0.join("vips.conf");
    let socket = dir.0.join("bird.ctl");
    // BIRD's settings in the file, as the deploy guide puts them.
    let services = with_bgp(services, &include, &socket);
    let lbd = Lbd::start(lbd(), &ns, &services, &[interface], &[]).expect("lbd");
    // lbd writes the include file within a second; BIRD needs it to start.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !include.exists() {
        assert!(
            Instant::now() < deadline,
            "lbd wrote no {}",
            include.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut node = Node {
        ns,
        dir,
        lbd,
        bird: None,
        own,
        router,
    };
    node.start_bird();
    node
}

/// The configurations shipped in `deploy/bird/` (the tests run their own copies, with their
/// namespaces' addresses): BIRD's own parser takes both, the node's with an include file as
/// lbd writes it, and the node's exports the protocol lbd's include defines.
#[test]
fn the_shipped_bird_configurations_parse() {
    if !e2e_enabled() {
        return;
    }
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/bird");
    let dir = Dir::new("shipped");
    let include = dir.0.join("bird-vips.conf");
    let vips = ["198.18.100.1", "fd00:100::1"].map(|v| v.parse::<std::net::IpAddr>().unwrap());
    std::fs::write(
        &include,
        lb_userspace::announce::render(&BTreeSet::from(vips)),
    )
    .expect("include");
    let node = std::fs::read_to_string(deploy.join("bird.conf")).expect("deploy/bird/bird.conf");
    assert!(
        node.contains("include \"/etc/meshlb/bird-vips.conf\";"),
        "bird.conf includes the file deploy/README.md names"
    );
    assert!(
        node.contains(&format!(
            "export where proto = \"{}\";",
            lb_userspace::announce::PROTOCOL_V4
        )),
        "bird.conf exports lbd's protocol"
    );
    let node_path = dir.0.join("bird.conf");
    std::fs::write(
        &node_path,
        node.replace("/etc/meshlb/bird-vips.conf", &include.display().to_string()),
    )
    .expect("bird.conf");
    for conf in [node_path, deploy.join("router.conf")] {
        let out = lb_testkit::command::output_within(
            {
                let mut bird = std::process::Command::new("bird");
                bird.arg("-p").arg("-c").arg(&conf);
                bird
            },
            None,
            Duration::from_secs(10),
        )
        .expect("bird -p (cargo xtask setup installs bird2)");
        assert!(
            out.status.success(),
            "{}: {}",
            conf.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn vips_are_announced_by_both_nodes_and_withdrawn_when_a_node_goes() {
    if !e2e_enabled() {
        return;
    }
    let router = Netns::new("bgp-router").expect("router netns");
    router
        .set_sysctls(&[
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.fib_multipath_hash_policy", "1"),
        ])
        .expect("sysctls");
    router
        .ip_batch(&[
            "link set lo up".to_owned(),
            format!("addr add {CHECKED_BACKEND}/32 dev lo"),
        ])
        .expect("router lo");
    let checked_server =
        NameServer::start(&router, "checked", &[8080], &[]).expect("checked server");
    let rdir = Dir::new("router");
    let mut a = node("a", &router, "198.18.10.2", "198.18.10.1");
    let mut b = node("b", &router, "198.18.10.6", "198.18.10.5");
    let _router_bird = start_bird(
        &router,
        &rdir.0,
        &router_conf(
            [
                ("198.18.10.1", "198.18.10.2"),
                ("198.18.10.5", "198.18.10.6"),
            ],
            "",
        ),
    );
    const A: &str = "198.18.10.2";
    const B: &str = "198.18.10.6";
    let converge = Duration::from_secs(20);
    let within_hold = HOLD + Duration::from_secs(2);

    // Both nodes announce the VIP with backends: one ECMP route. The drained VIP: nothing.
    wait_hops(&router, VIP, &[A, B], converge);
    wait_hops(&router, REPLY_ANCHOR, &[A, B], converge);
    assert!(next_hops(&router, "198.18.100.2").is_empty());
    // The VIP whose checks never pass was never given to BIRD (each write of the include file
    // is a log line naming its VIPs: BIRD told, or not yet reachable).
    assert!(next_hops(&router, DEAD_VIP).is_empty());
    for node in [&a, &b] {
        let log = node.lbd.output();
        let announced: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("BIRD announces") || l.contains("announcing VIPs"))
            .collect();
        assert!(!announced.is_empty(), "no announcement logged:\n{log}");
        assert!(
            announced.iter().all(|l| !l.contains(DEAD_VIP)),
            "{DEAD_VIP} announced before its first check: {announced:?}"
        );
    }

    // `lbctl status` shows what each node announces, and that BIRD has it.
    for node in [&a, &b] {
        let bgp = wait_bird_shown(node, true, Duration::from_secs(10));
        let vips: BTreeSet<&str> = bgp["vips"]
            .as_array()
            .expect("vips")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert!(vips.contains(VIP) && vips.contains(REPLY_ANCHOR), "{bgp}");
        assert!(!vips.contains(DEAD_VIP), "{bgp}");
        assert_eq!(bgp["socket"], node.socket().display().to_string());
        assert_eq!(bgp["record_error"], serde_json::Value::Null);
    }

    // A restart of lbd withdraws nothing: both next hops stay throughout.
    a.lbd.restart(&a.ns).expect("lbd restart");
    for _ in 0..20 {
        assert_eq!(next_hops(&router, VIP).len(), 2, "withdrawn by a restart");
        std::thread::sleep(Duration::from_millis(100));
    }

    // 1. Node A's BIRD stops: the router drops A within the hold time.
    a.kill_bird();
    let took = wait_hops(&router, VIP, &[B], within_hold);
    eprintln!("BIRD of node A killed: withdrawn in {took:?}");
    // Node A's lbd notices at its next look at BIRD (every 5 s while the VIPs stay): `lbctl
    // status` says so and exits 3.
    wait_bird_shown_down(&a, &[&a.socket().display().to_string(), "does not answer"]);
    let (_, text, _) = a.lbd.lbctl_exit(&["status"]).expect("lbctl status");
    assert!(text.contains("DOES NOT RUN THE VIPS"), "{text}");
    a.start_bird();
    wait_hops(&router, VIP, &[A, B], converge);
    wait_bird_shown(&a, true, Duration::from_secs(8));

    // 1b. Node A's BIRD reads a configuration that no longer includes lbd's file (an
    // operator's edit): it withdraws the VIPs though it runs, and lbd says so at its next
    // look; the include back, both are back.
    let full = node_conf(a.own, a.router, &a.include(), HOLD.as_secs());
    let without = full.replacen(&format!("include \"{}\";\n", a.include().display()), "", 1);
    assert_ne!(without, full);
    a.reconfigure_bird(&without);
    wait_hops(&router, VIP, &[B], within_hold);
    wait_bird_shown_down(&a, &["does not run meshlb_vips4"]);
    a.reconfigure_bird(&full);
    wait_hops(&router, VIP, &[A, B], converge);
    wait_bird_shown(&a, true, Duration::from_secs(8));

    // 1c. The router shuts its session to node A down: A's BIRD runs the VIPs, but no
    // router hears them.
    session_down_is_shown(&a, &router, &rdir.0.join("bird.ctl"));
    wait_hops(&router, VIP, &[A, B], converge);

    // 2. Node A's link goes down (its side: the router only learns by the hold timer).
    a.ns.ip(&["link", "set", "up0", "down"]).expect("link down");
    let took = wait_hops(&router, VIP, &[B], within_hold);
    eprintln!("link of node A down: withdrawn in {took:?}");
    a.ns.ip(&["link", "set", "up0", "up"]).expect("link up");
    // The link's routes went with it: the one to the checked backend too.
    a.ns.ip(&[
        "route",
        "replace",
        &format!("{CHECKED_BACKEND}/32"),
        "via",
        "198.18.10.1",
    ])
    .expect("route to the checked backend");
    wait_hops(&router, VIP, &[A, B], converge);

    wait_hops(&router, REPLY_ANCHOR, &[A, B], converge);

    // 3. A VIP whose backends are all gone is withdrawn within a second plus BIRD's
    // reconfiguration (node B's file changes; SIGHUP reloads it).
    std::fs::write(b.lbd.config_path(), b.file(SERVICES_ALL_GONE)).expect("services");
    let pid = b.lbd.pid().expect("pid");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    let took = wait_hops(&router, VIP, &[A], Duration::from_secs(3));
    eprintln!("node B's backends gone: withdrawn in {took:?}");
    // Node B still serves: the replies' anchor stays announced by both.
    assert_eq!(
        next_hops(&router, REPLY_ANCHOR).len(),
        2,
        "anchor withdrawn"
    );
    std::fs::write(b.lbd.config_path(), b.file(SERVICES)).expect("services");
    // SAFETY: as above.
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    wait_hops(&router, VIP, &[A, B], converge);

    // 3b. Node B's lbd restarted with `lbd.bgp` taken out of its file: the start empties the
    // include file the earlier run announced through (its record), so the router drops B;
    // given back, B announces again.
    std::fs::write(b.lbd.config_path(), SERVICES).expect("services");
    b.lbd.restart(&b.ns).expect("lbd restart");
    let took = wait_hops(&router, VIP, &[A], Duration::from_secs(3));
    eprintln!("node B's lbd started without lbd.bgp: withdrawn in {took:?}");
    wait_hops(&router, REPLY_ANCHOR, &[A], Duration::from_secs(2));
    std::fs::write(b.lbd.config_path(), b.file(SERVICES)).expect("services");
    b.lbd.restart(&b.ns).expect("lbd restart");
    wait_hops(&router, VIP, &[A, B], converge);

    // 4. A VIP whose backends the health checks find down (its one server stops) is
    // withdrawn by both nodes within one check cycle (fall 1, every 500 ms), the announcer's
    // look (every second) and BIRD's reconfiguration; announced again once it answers.
    wait_hops(&router, CHECKED_VIP, &[A, B], converge);
    drop(checked_server);
    let took = wait_hops(&router, CHECKED_VIP, &[], Duration::from_secs(3));
    eprintln!("checked VIP's backend stopped: withdrawn by both nodes in {took:?}");
    assert_eq!(next_hops(&router, VIP).len(), 2, "other VIPs stay");
    let checked_server =
        NameServer::start(&router, "checked", &[8080], &[]).expect("checked server");
    let took = wait_hops(&router, CHECKED_VIP, &[A, B], Duration::from_secs(5));
    eprintln!("checked VIP's backend back: announced again in {took:?}");

    // 5. `lbd cleanup` on node A (stopping its lbd), told nothing of BIRD: withdrawn at once,
    // not after the hold, through what its lbd recorded.
    a.cleanup_by_record();
    let took = wait_hops(&router, VIP, &[B], Duration::from_secs(2));
    eprintln!("lbd cleanup on node A: withdrawn in {took:?}");
    wait_hops(&router, REPLY_ANCHOR, &[B], Duration::from_secs(2));
    drop(checked_server);
}

// The flows half (issue 15): connections carry on through the failover.
//
//   client 198.18.20.2 -- router (BIRD, ECMP to the VIP) -- one L2 segment 198.18.10.0/24:
//   router .1, node A .2, node B .3 (lbd + BIRD each, XDP on their one interface), backends
//   .10-.12. The backends' route to the clients is the router, which sends their replies on
//   over the nodes it currently has for the VIP (`REPLY_PATH`), spread by its own L4 hash:
//   a reply often crosses the other node than its request did, and is translated there
//   without an entry (`nat_reply_stateless`). Whatever takes a node away from the VIP's
//   route takes it away from the replies' too.

const LAN_ROUTER: &str = "198.18.10.1";
const LAN_A: &str = "198.18.10.2";
const LAN_B: &str = "198.18.10.3";
const CLIENT_NET: &str = "198.18.20.0/24";
const CLIENT_ROUTER: &str = "198.18.20.1";
const CLIENT_ADDR: &str = "198.18.20.2";
const LAN_BACKENDS: [&str; 3] = ["198.18.10.10", "198.18.10.11", "198.18.10.12"];
const LAN_SERVICES: &str = r#"
services:
  web:
    vip: 198.18.100.1
    ports: ["80:8080/tcp"]
    backends: ["198.18.10.10", "198.18.10.11", "198.18.10.12"]
"#;
/// The router's replies path: a default route, in kernel table 100, through whatever the
/// nodes' reply anchor is routed through (BIRD resolves it recursively, both next hops); the
/// backends' packets (rules in `flows_router`) look it up.
const REPLY_PATH: &str = "
ipv4 table replies4;
protocol static reply_path {
  ipv4 { table replies4; };
  igp table master4;
  route 0.0.0.0/0 recursive 198.18.99.1;
}
protocol kernel kernel_replies {
  kernel table 100;
  merge paths on;
  ipv4 { table replies4; import none; export all; };
}
";
/// Long-lived connections carried through every failover.
const CONNECTIONS: usize = 100;
/// Connections opened before each way, so node A has some that node B never saw.
const FRESH: usize = 20;
/// How long one round trip (or a new connection) may take while a node goes away: the hold
/// time, then TCP's retransmission backoff on both sides.
const FAILOVER_LIMIT: Duration = Duration::from_secs(30);
/// New connections opened while a node goes away, one every `PROBE_EVERY`.
const MAX_PROBES: usize = 120;
const PROBE_EVERY: Duration = Duration::from_millis(250);

/// A veth from the router's bridge into `ns`, named `eth0` there. The bridge floods unicast
/// frames for an address it has not learned (one whose port went down), as a switch does:
/// the veth delivers them to node B's generic XDP, which must leave frames for node A's MAC
/// to the kernel (`l2::addressed_here`), or B would quietly serve A's flows while the router
/// still sends them to A.
fn lan_link(router: &Netns, ns: &Netns, port: &str) {
    router
        .ip(&[
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ])
        .expect("veth");
    router
        .ip_batch(&[
            format!("link set {port} master br0"),
            format!("link set {port} up"),
        ])
        .expect("bridge port");
}

fn lan_node(name: &'static str, router: &Netns, own: &'static str) -> Node {
    let ns = Netns::new(&format!("bgpf-{name}")).expect("node netns");
    lan_link(router, &ns, &format!("n{name}"));
    ns.set_sysctls(&[
        ("net.ipv4.ip_forward", "1"),
        // One-armed: whatever the kernel forwards goes out where it came in; no redirects.
        ("net.ipv4.conf.all.send_redirects", "0"),
        ("net.ipv4.conf.eth0.send_redirects", "0"),
        // Announce ourselves when the link comes back (backends marked us failed).
        ("net.ipv4.conf.eth0.arp_notify", "1"),
    ])
    .expect("sysctls");
    ns.ip_batch(&[
        format!("addr add {own}/24 dev eth0"),
        "link set eth0 up".to_owned(),
        "link set lo up".to_owned(),
        format!("route add {CLIENT_NET} via {LAN_ROUTER}"),
        // A VIP packet this node's kernel sees (meshlb gone, the router not yet told) is
        // dropped silently: the client retransmits to the node the router picks next.
        format!("route add blackhole {VIP}/32"),
    ])
    .expect("node side");
    // So is a backend's reply the dataplane did not translate (it sends its own through
    // TC, past the rules): forwarded with the backend's address, the client would answer
    // it with a RST that ends the connection at the backend.
    let rules: Vec<String> = LAN_BACKENDS
        .iter()
        .map(|b| format!("rule add iif eth0 from {b} blackhole"))
        .collect();
    ns.ip_batch(&rules).expect("blackhole rules");
    start_node(
        &format!("flows-{name}"),
        ns,
        own,
        LAN_ROUTER,
        LAN_SERVICES,
        "eth0",
    )
}

fn lan_backend(router: &Netns, i: usize) -> (Netns, NameServer) {
    let ns = Netns::new(&format!("bgpf-b{i}")).expect("backend netns");
    lan_link(router, &ns, &format!("b{i}"));
    ns.set_sysctls(&[
        ("net.ipv4.conf.all.accept_redirects", "0"),
        ("net.ipv4.conf.eth0.accept_redirects", "0"),
    ])
    .expect("sysctls");
    ns.ip_batch(&[
        format!("addr add {}/24 dev eth0", LAN_BACKENDS[i]),
        "link set eth0 up".to_owned(),
        "link set lo up".to_owned(),
        format!("route add {CLIENT_NET} via {LAN_ROUTER}"),
    ])
    .expect("backend side");
    let server = NameServer::start(&ns, &format!("backend-{i}"), &[8080], &[]).expect("server");
    (ns, server)
}

/// The router: the bridge of the segment, its replies path for the backends.
fn flows_router() -> Netns {
    let router = Netns::new("bgpf-router").expect("router netns");
    router
        .set_sysctls(&[
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.fib_multipath_hash_policy", "1"),
            // Replies come in and go out on the segment: no redirect may send the backends
            // past the nodes.
            ("net.ipv4.conf.all.send_redirects", "0"),
            ("net.ipv4.conf.default.send_redirects", "0"),
        ])
        .expect("sysctls");
    let mut lines = vec![
        "link add br0 type bridge".to_owned(),
        format!("addr add {LAN_ROUTER}/24 dev br0"),
        "link set br0 up".to_owned(),
        "link set lo up".to_owned(),
    ];
    lines.extend(
        LAN_BACKENDS
            .iter()
            .map(|b| format!("rule add iif br0 from {b} lookup 100")),
    );
    router.ip_batch(&lines).expect("bridge");
    router
}

/// Opens `n` more connections to the VIP from `client`, each with its first answer's backend.
fn open(client: &Netns, n: usize, sessions: &mut Vec<TcpSession>, backends: &mut Vec<String>) {
    let target: std::net::SocketAddr = format!("{VIP}:80").parse().unwrap();
    for _ in 0..n {
        let i = sessions.len();
        let mut session = TcpSession::connect(client, target, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connection {i}: {e:#}"));
        let reply = session
            .request()
            .unwrap_or_else(|e| panic!("connection {i}: {e:#}"));
        backends.push(reply.backend);
        sessions.push(session);
    }
}

/// A node's global counters (`lbctl stats`).
fn counters(node: &Node) -> serde_json::Value {
    node.lbd.lbctl_json(&["stats"]).expect("lbctl stats")["global"].clone()
}

fn counter(global: &serde_json::Value, name: &str) -> u64 {
    global[name].as_u64().unwrap_or(0)
}

/// One request on every connection at once; each must come back within `limit` from the
/// same backend as before. Answers the longest time from `since` to an answer.
fn round(sessions: &mut [TcpSession], backends: &[String], since: Instant) -> Duration {
    let answers: Vec<(usize, anyhow::Result<(Duration, String)>)> = std::thread::scope(|s| {
        let threads: Vec<_> = sessions
            .iter_mut()
            .enumerate()
            .map(|(i, session)| {
                s.spawn(move || {
                    let answer = session
                        .set_timeout(FAILOVER_LIMIT)
                        .and_then(|()| session.request())
                        .map(|reply| (since.elapsed(), reply.backend));
                    (i, answer)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("request thread"))
            .collect()
    });
    let mut longest = Duration::ZERO;
    for (i, answer) in answers {
        let (took, backend) = answer.unwrap_or_else(|e| panic!("connection {i}: {e:#}"));
        assert_eq!(backend, backends[i], "connection {i} changed backend");
        longest = longest.max(took);
    }
    longest
}

/// New connections, one every `PROBE_EVERY` until `stop`, each in a thread of its own so a
/// slow one does not hold the next: how many, and the longest.
fn probe_new_connections(
    client: &Netns,
    stop: &std::sync::atomic::AtomicBool,
) -> (usize, Duration) {
    let target: std::net::SocketAddr = format!("{VIP}:80").parse().unwrap();
    let results: Vec<anyhow::Result<Duration>> = std::thread::scope(|s| {
        let mut threads = Vec::new();
        for _ in 0..MAX_PROBES {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            threads.push(s.spawn(move || {
                let start = Instant::now();
                lb_testkit::tcp_request(client, target, FAILOVER_LIMIT).map(|_| start.elapsed())
            }));
            std::thread::sleep(PROBE_EVERY);
        }
        threads
            .into_iter()
            .map(|t| t.join().expect("probe thread"))
            .collect()
    });
    let mut longest = Duration::ZERO;
    for (i, r) in results.iter().enumerate() {
        let took = r
            .as_ref()
            .unwrap_or_else(|e| panic!("new connection {i} while node A went away: {e:#}"));
        longest = longest.max(*took);
    }
    (results.len(), longest)
}

#[derive(Clone, Copy, Debug)]
enum Away {
    BirdStopped,
    LinkDown,
    Cleanup,
}

/// Takes node A away in `how`.
fn take_away(a: &mut Node, how: Away) {
    match how {
        Away::BirdStopped => a.kill_bird(),
        Away::LinkDown => {
            a.ns.ip(&["link", "set", "eth0", "down"])
                .expect("link down");
        }
        Away::Cleanup => a.cleanup(),
    }
}

/// Brings node A back after `how`.
fn bring_back(a: &mut Node, how: Away) {
    match how {
        Away::BirdStopped => a.start_bird(),
        Away::LinkDown => {
            a.ns.ip_batch(&[
                "link set eth0 up".to_owned(),
                // The link's routes went with it.
                format!("route replace {CLIENT_NET} via {LAN_ROUTER}"),
            ])
            .expect("link up")
        }
        Away::Cleanup => unreachable!("the last way"),
    }
}

#[test]
fn connections_keep_their_backend_when_a_node_goes_away() {
    if !e2e_enabled() {
        return;
    }
    let router = flows_router();
    let client = Netns::new("bgpf-client").expect("client netns");
    router
        .ip(&[
            "link",
            "add",
            "cl",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            client.name(),
        ])
        .expect("client veth");
    router
        .ip_batch(&[
            format!("addr add {CLIENT_ROUTER}/24 dev cl"),
            "link set cl up".to_owned(),
        ])
        .expect("router client side");
    client
        .ip_batch(&[
            format!("addr add {CLIENT_ADDR}/24 dev eth0"),
            "link set eth0 up".to_owned(),
            "link set lo up".to_owned(),
            format!("route add default via {CLIENT_ROUTER}"),
        ])
        .expect("client side");
    let backends: Vec<(Netns, NameServer)> = (0..3).map(|i| lan_backend(&router, i)).collect();
    let rdir = Dir::new("flows-router");
    let mut a = lan_node("a", &router, LAN_A);
    let b = lan_node("b", &router, LAN_B);
    let _router_bird = start_bird(
        &router,
        &rdir.0,
        &router_conf([(LAN_ROUTER, LAN_A), (LAN_ROUTER, LAN_B)], REPLY_PATH),
    );
    wait_hops(&router, VIP, &[LAN_A, LAN_B], Duration::from_secs(20));

    // 100 connections, each told by its first answer which backend it has.
    let (mut sessions, mut first) = (Vec::new(), Vec::new());
    open(&client, CONNECTIONS, &mut sessions, &mut first);
    let (at_a, at_b) = (counters(&a), counters(&b));
    let (new_a, new_b) = (counter(&at_a, "new_flow"), counter(&at_b, "new_flow"));
    let stateless = counter(&at_a, "nat_reply_stateless") + counter(&at_b, "nat_reply_stateless");
    let per_backend: BTreeSet<&String> = first.iter().collect();
    eprintln!(
        "{CONNECTIONS} connections: new flows at A {new_a}, at B {new_b}; backends {per_backend:?}; replies translated without an entry: {stateless}"
    );
    assert_eq!(
        new_a + new_b,
        CONNECTIONS as u64,
        "every connection is one new flow"
    );
    assert!(
        new_a >= 10 && new_b >= 10,
        "ECMP spreads the connections over both nodes"
    );
    assert_eq!(
        per_backend.len(),
        3,
        "Maglev spreads them over the backends"
    );
    assert!(
        stateless > 0,
        "some replies crossed the other node than their request"
    );

    for (n, how) in [Away::BirdStopped, Away::LinkDown, Away::Cleanup]
        .into_iter()
        .enumerate()
    {
        // Node A carries some of the connections (again), and some node B never saw: a few
        // more connections, opened with both nodes up.
        let b_new = counter(&counters(&b), "new_flow");
        open(&client, FRESH, &mut sessions, &mut first);
        assert!(counter(&counters(&b), "new_flow") - b_new < FRESH as u64);
        let forwarded_at_a = counter(&counters(&a), "nat_forward");
        round(&mut sessions, &first, Instant::now());
        let carried = counter(&counters(&a), "nat_forward") - forwarded_at_a;
        assert!(
            carried >= 10,
            "{how:?}: node A carried {carried} of the requests before"
        );
        let b_before = counters(&b);

        let stop = std::sync::atomic::AtomicBool::new(false);
        take_away(&mut a, how);
        let since = Instant::now();
        // Requests on every connection at once, sent as A goes; new connections meanwhile.
        let (route, longest, (probes, slowest_probe)) = std::thread::scope(|s| {
            let prober = s.spawn(|| probe_new_connections(&client, &stop));
            let requests = s.spawn(|| round(&mut sessions, &first, since));
            let route = wait_hops(&router, VIP, &[LAN_B], HOLD + Duration::from_secs(2));
            let longest = requests.join().expect("requests");
            // New connections go on a little longer than the old ones took.
            std::thread::sleep(Duration::from_secs(1));
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            (route, longest, prober.join().expect("prober"))
        });
        // Now every connection goes through node B.
        let forwarded_at_b = counter(&counters(&b), "nat_forward");
        round(&mut sessions, &first, Instant::now());
        let through_b = counter(&counters(&b), "nat_forward") - forwarded_at_b;
        let b_after = counters(&b);
        let lost = counter(&b_after, "flow_lost") - counter(&b_before, "flow_lost");
        let stateless_b =
            counter(&b_after, "nat_reply_stateless") - counter(&b_before, "nat_reply_stateless");
        eprintln!(
            "way {} ({how:?}): router left A in {route:?}; all {} connections answered, same backend, within {longest:?}; {probes} new connections meanwhile, slowest {slowest_probe:?}; at B: {lost} packets of flows it had no entry for (flow_lost), {stateless_b} replies translated without an entry, then {through_b} packets of the next {} requests",
            n + 1,
            sessions.len(),
            sessions.len()
        );
        assert!(
            through_b >= sessions.len() as u64,
            "{how:?}: every connection goes through node B ({through_b} packets)"
        );
        assert!(
            lost > 0,
            "{how:?}: node B picked up flows it had no entry for"
        );

        if !matches!(how, Away::Cleanup) {
            bring_back(&mut a, how);
            wait_hops(&router, VIP, &[LAN_A, LAN_B], Duration::from_secs(20));
            // Back on node A, which still has their entries: the same backends.
            let back = round(&mut sessions, &first, Instant::now());
            eprintln!("node A back: all connections answered within {back:?}");
        }
    }
    drop(sessions);
    drop(backends);
}
