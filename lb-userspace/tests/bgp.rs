//! VIPs announced through BIRD 2 to an ECMP router (issue 15, control plane): a router
//! namespace running BIRD with `merge paths` (ECMP), two balancer nodes each running `lbd`
//! and BIRD, all in namespaces the test makes and removes. Checks the router's kernel route
//! for the VIP: both nodes as next hops; one node away (BIRD stopped, link down, `lbd
//! cleanup`) leaves the other within the hold time; a restart of lbd withdraws nothing; a VIP
//! whose backends are all gone is withdrawn within a second plus BIRD's reconfiguration.
//! (Flows through the failover are not exercised here.)

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use lb_testkit::{ChildGuard, Lbd, Netns, e2e_enabled};

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
"#;

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

/// A temporary directory for one BIRD's files, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("mlb-bgp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Dir(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts BIRD in the foreground (so the guard owns it) with `conf`, its control socket in
/// `dir`; waits (bounded) until the socket answers.
fn start_bird(ns: &Netns, dir: &Path, conf: &str) -> ChildGuard {
    let conf_path = dir.join("bird.conf");
    std::fs::write(&conf_path, conf).expect("bird.conf");
    let socket = dir.join("bird.ctl");
    let _ = std::fs::remove_file(&socket);
    let bird = ns
        .spawn(
            "bird",
            &[
                "-f",
                "-c",
                conf_path.to_str().unwrap(),
                "-s",
                socket.to_str().unwrap(),
            ],
            &[],
        )
        .expect("bird (cargo xtask setup installs bird2)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(
            Instant::now() < deadline,
            "BIRD did not open {}: {}",
            socket.display(),
            bird.output_so_far()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    bird
}

fn router_conf() -> String {
    format!(
        "router id 198.18.10.1;
protocol device {{ scan time 1; }}
protocol kernel {{ merge paths on; ipv4 {{ import none; export all; }}; }}
template bgp balancer {{
  hold time {hold}; keepalive time 1; connect retry time 1; connect delay time 1; error wait time 1, 2;
  ipv4 {{ import all; export none; }};
}}
protocol bgp node_a from balancer {{ local 198.18.10.1 as 65000; neighbor 198.18.10.2 as 65010; }}
protocol bgp node_b from balancer {{ local 198.18.10.5 as 65000; neighbor 198.18.10.6 as 65010; }}
",
        hold = HOLD.as_secs()
    )
}

/// A balancer node's BIRD: as deploy/bird/bird.conf, with this node's addresses.
fn node_conf(own: &str, router: &str, include: &Path) -> String {
    format!(
        "router id {own};
include \"{include}\";
protocol device {{ scan time 1; }}
protocol kernel {{ ipv4 {{ import none; export none; }}; }}
protocol bgp upstream {{
  local {own} as 65010; neighbor {router} as 65000;
  hold time {hold}; keepalive time 1; connect retry time 1; connect delay time 1; error wait time 1, 2;
  ipv4 {{ import none; export where proto = \"meshlb_vips4\"; next hop self; }};
}}
",
        include = include.display(),
        hold = HOLD.as_secs()
    )
}

/// The next hops of the router's kernel route to `vip` (empty: no route).
fn next_hops(router: &Netns, vip: &str) -> BTreeSet<String> {
    let out = router
        .ip(&["-4", "route", "show", &format!("{vip}/32")])
        .unwrap_or_default();
    let words: Vec<&str> = out.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[0] == "via")
        .map(|w| w[1].to_owned())
        .collect()
}

/// Waits (bounded by `limit`) until the router's next hops for `vip` are `want`; answers
/// how long it took.
fn wait_hops(router: &Netns, vip: &str, want: &[&str], limit: Duration) -> Duration {
    let want: BTreeSet<String> = want.iter().map(|s| (*s).to_owned()).collect();
    let start = Instant::now();
    loop {
        let got = next_hops(router, vip);
        if got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{vip}: next hops {got:?}, want {want:?} within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
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
    fn include(&self) -> PathBuf {
        self.dir.0.join("vips.conf")
    }

    fn socket(&self) -> PathBuf {
        self.dir.0.join("bird.ctl")
    }

    fn start_bird(&mut self) {
        let conf = node_conf(self.own, self.router, &self.include());
        self.bird = Some(start_bird(&self.ns, &self.dir.0, &conf));
    }
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
    ])
    .expect("node side");
    let dir = Dir::new(name);
    let include = dir.0.join("vips.conf");
    let socket = dir.0.join("bird.ctl");
    let lbd = Lbd::start(
        lbd(),
        &ns,
        SERVICES,
        &[n_if],
        &[
            "--bird-include",
            include.to_str().unwrap(),
            "--birdc-socket",
            socket.to_str().unwrap(),
        ],
    )
    .expect("lbd");
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
        router: peer,
    };
    node.start_bird();
    node
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
    router.ip(&["link", "set", "lo", "up"]).expect("lo");
    let rdir = Dir::new("router");
    let mut a = node("a", &router, "198.18.10.2", "198.18.10.1");
    let mut b = node("b", &router, "198.18.10.6", "198.18.10.5");
    let _router_bird = start_bird(&router, &rdir.0, &router_conf());
    const A: &str = "198.18.10.2";
    const B: &str = "198.18.10.6";
    let converge = Duration::from_secs(20);
    let within_hold = HOLD + Duration::from_secs(2);

    // Both nodes announce the VIP with backends: one ECMP route. The drained VIP: nothing.
    wait_hops(&router, VIP, &[A, B], converge);
    assert!(next_hops(&router, "198.18.100.2").is_empty());

    // A restart of lbd withdraws nothing: both next hops stay throughout.
    a.lbd.restart(&a.ns).expect("lbd restart");
    for _ in 0..20 {
        assert_eq!(next_hops(&router, VIP).len(), 2, "withdrawn by a restart");
        std::thread::sleep(Duration::from_millis(100));
    }

    // 1. Node A's BIRD stops: the router drops A within the hold time.
    let mut bird = a.bird.take().expect("bird");
    bird.signal(libc::SIGKILL).expect("kill bird");
    let _ = bird.wait_timeout(Duration::from_secs(5));
    drop(bird);
    let took = wait_hops(&router, VIP, &[B], within_hold);
    eprintln!("BIRD of node A killed: withdrawn in {took:?}");
    a.start_bird();
    wait_hops(&router, VIP, &[A, B], converge);

    // 2. Node A's link goes down (its side: the router only learns by the hold timer).
    a.ns.ip(&["link", "set", "up0", "down"]).expect("link down");
    let took = wait_hops(&router, VIP, &[B], within_hold);
    eprintln!("link of node A down: withdrawn in {took:?}");
    a.ns.ip(&["link", "set", "up0", "up"]).expect("link up");
    wait_hops(&router, VIP, &[A, B], converge);

    // 3. A VIP whose backends are all gone is withdrawn within a second plus BIRD's
    // reconfiguration (node B's file changes; SIGHUP reloads it).
    std::fs::write(b.lbd.config_path(), SERVICES_ALL_GONE).expect("services");
    let pid = b.lbd.pid().expect("pid");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    let took = wait_hops(&router, VIP, &[A], Duration::from_secs(3));
    eprintln!("node B's backends gone: withdrawn in {took:?}");
    std::fs::write(b.lbd.config_path(), SERVICES).expect("services");
    // SAFETY: as above.
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    wait_hops(&router, VIP, &[A, B], converge);

    // 4. `lbd cleanup` on node A (stopping its lbd): withdrawn at once, not after the hold.
    let out = std::process::Command::new(lbd())
        .args([
            "cleanup",
            "--force",
            "--pin-dir",
            a.lbd.pin_dir().to_str().unwrap(),
            "--bird-include",
            a.include().to_str().unwrap(),
            "--birdc-socket",
            a.socket().to_str().unwrap(),
        ])
        .output()
        .expect("lbd cleanup");
    assert!(
        out.status.success(),
        "lbd cleanup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let took = wait_hops(&router, VIP, &[B], Duration::from_secs(2));
    eprintln!("lbd cleanup on node A: withdrawn in {took:?}");
}
