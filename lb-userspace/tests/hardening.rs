//! What lbd must never do at its edges, whatever an operator gives it: delete a file that is
//! not its own, or leave a running daemon and the kernel disagreeing. Each test fails without
//! the guard it checks.

use std::{path::Path, process::Command, time::Duration};

use lb_testkit::{EnterMode, Lbd, Netns, ScratchPath, Topology, e2e_enabled};

/// Scratch pin directories go where lbd pins, named like the kit's (`mlb-…-<pid>-<n>`).
fn scratch_pins(label: &str) -> ScratchPath {
    ScratchPath::in_dir(Path::new(lb_testkit::lbd::PIN_ROOT), label, "")
}

fn lbd() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_lbd"))
}

const SERVICES: &str = r#"
services:
  web:
    vip: 198.18.100.1
    ports: ["80:8080/tcp"]
    backends: ["198.18.2.10"]
"#;

/// `lbd run` with `SERVICES` on the topology's node, attached to both of its interfaces.
fn start(topo: &Topology, extra: &[&str]) -> Lbd {
    topo.start_lbd(lbd(), SERVICES, extra).expect("lbd")
}

/// `lbd ARGS` (in `ns`, if given), bounded: a hung lbd fails the test; (success, stdout +
/// stderr).
fn run_lbd(ns: Option<&Netns>, args: &[&str]) -> (bool, String) {
    let mut cmd = match ns {
        Some(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns.name()]).arg(lbd());
            cmd
        }
        None => Command::new(lbd()),
    };
    cmd.args(args);
    let out = lb_testkit::command::output_within(cmd, None, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_api_path_is_never_deleted_unless_it_is_a_stale_socket() {
    if !e2e_enabled() {
        return;
    }
    // In a namespace of its own: if the guard failed, this lbd must not reach the machine's.
    let ns = Netns::new("api").expect("namespace");
    let dir = ScratchPath::temp("api-path", "");
    let pins = scratch_pins("api-path");
    std::fs::create_dir_all(dir.join("a-directory")).unwrap();
    let config = dir.join("services.yaml");
    std::fs::write(&config, SERVICES).unwrap();
    let config_text = config.to_str().unwrap();
    for (api, what) in [
        (config.clone(), "is a file"),
        (dir.join("a-directory"), "is a directory"),
    ] {
        let (ok, out) = run_lbd(
            Some(&ns),
            &[
                "run",
                "--config",
                config_text,
                "--api",
                api.to_str().unwrap(),
                "--interface",
                "lo",
                "--pin-dir",
                pins.arg(),
                "--state-dir",
                dir.join("state").to_str().unwrap(),
                "--socket-lb",
                "off",
            ],
        );
        assert!(!ok, "lbd started with --api {}: {out}", api.display());
        assert!(
            out.contains(what) && out.contains("not a socket"),
            "{what}: {out}"
        );
        assert!(api.exists(), "{} was deleted", api.display());
    }
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        SERVICES,
        "the service file given as --api is intact"
    );
}

#[test]
fn cleanup_removes_only_a_meshlb_pin_directory() {
    if !e2e_enabled() {
        return;
    }
    // Not on bpffs.
    let dir = ScratchPath::temp("not-pins", "");
    std::fs::create_dir_all(&*dir).unwrap();
    std::fs::write(dir.join("precious"), "keep me").unwrap();
    let (ok, out) = run_lbd(None, &["cleanup", "--pin-dir", dir.arg()]);
    assert!(!ok && out.contains("not on a BPF filesystem"), "{out}");
    assert!(
        dir.join("precious").exists(),
        "cleanup deleted a directory not its own"
    );
    // On bpffs, but holding something meshlb does not pin there.
    let shared = scratch_pins("shared");
    std::fs::create_dir_all(shared.join("someone-elses")).unwrap();
    let (ok, out) = run_lbd(None, &["cleanup", "--pin-dir", shared.arg()]);
    assert!(!ok && out.contains("someone-elses"), "{out}");
    assert!(shared.join("someone-elses").exists());
}

#[test]
fn cleanup_refuses_under_a_running_lbd_and_force_stops_it_first() {
    if !e2e_enabled() {
        return;
    }
    let topo = Topology::new(1).expect("topology");
    let mut lb = start(&topo, &[]);
    let pid = lb.pid().unwrap();
    let pins = lb.pin_dir().to_str().unwrap().to_owned();
    let (ok, out) = run_lbd(None, &["cleanup", "--pin-dir", &pins]);
    assert!(!ok, "cleanup under a running lbd succeeded: {out}");
    assert!(
        out.contains(&format!("pid {pid}")) && out.contains("stop it first"),
        "{out}"
    );
    assert!(
        Path::new(&pins).join("maps").exists(),
        "the refused cleanup removed pins"
    );
    let (ok, _, err) = lb.lbctl(&["status"]).unwrap();
    assert!(ok, "lbd still answers: {err}");
    assert_eq!(lb.wait_exit(Duration::from_millis(1)).unwrap(), None);

    // The VIPs are withdrawn before the dataplane goes: a withdrawal BIRD refuses leaves the
    // dataplane serving what the router may still send.
    let bird = ScratchPath::temp("cleanup-bird", "");
    std::fs::create_dir_all(&*bird).unwrap();
    let (include, socket) = (bird.join("vips.conf"), bird.join("refusing.ctl"));
    let commands =
        lb_testkit::fake_bird(&socket, "8002 /etc/bird/bird.conf:12:1 syntax error\n", 1);
    let (ok, out) = run_lbd(
        None,
        &[
            "cleanup",
            "--force",
            "--pin-dir",
            &pins,
            "--bird-include",
            include.to_str().unwrap(),
            "--birdc-socket",
            socket.to_str().unwrap(),
        ],
    );
    assert_eq!(commands.next_command().unwrap(), "configure");
    assert!(!ok, "cleanup with BIRD refusing succeeded: {out}");
    assert!(
        out.contains("nothing removed") && out.contains("syntax error"),
        "{out}"
    );
    let status = lb.wait_exit(Duration::from_secs(10)).unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "lbd stopped cleanly first: {status:?}\n{}",
        lb.output()
    );
    assert!(
        Path::new(&pins).join("maps").exists(),
        "a failed withdrawal removed the dataplane"
    );

    let (ok, out) = run_lbd(None, &["cleanup", "--pin-dir", &pins]);
    assert!(ok, "cleanup: {out}");
    assert!(!Path::new(&pins).exists(), "pins removed");
}

#[test]
fn a_failed_start_names_the_program_in_the_way_and_leaves_nothing_behind() {
    if !e2e_enabled() {
        return;
    }
    let topo = Topology::new(1).expect("topology");
    let _servers = topo.serve_on_backends(&[8080], &[]).expect("servers");
    let lb = start(&topo, &[]);
    // A second lbd, with pin and state directories of its own, on the same interfaces.
    // Guards first: the second lbd may pin before it fails.
    let scratch = ScratchPath::temp("second", "");
    let pins = scratch_pins("second");
    std::fs::create_dir_all(&*scratch).unwrap();
    let config = scratch.join("services.yaml");
    std::fs::write(&config, SERVICES).unwrap();
    let (state, api) = (scratch.join("state"), scratch.join("api.sock"));
    let args = [
        "run",
        "--config",
        config.to_str().unwrap(),
        "--interface",
        &topo.node_client_if,
        "--xdp-mode",
        "generic",
        "--pin-dir",
        pins.arg(),
        "--state-dir",
        state.to_str().unwrap(),
        "--api",
        api.to_str().unwrap(),
        "--metrics",
        "127.0.0.1:9465",
        "--socket-lb",
        "off",
    ];
    let mut cmd = Command::new(lbd());
    cmd.args(args);
    let out = lbd_that_fails(&topo.node, cmd);
    let leftover = pins.exists();
    assert!(
        out.contains(&format!(
            "`{}` already runs XDP program",
            topo.node_client_if
        )) && out.contains("meshlb_xdp")
            && !out.contains("try --xdp-mode generic"),
        "the real cause, not advice it already followed: {out}"
    );
    assert!(
        !leftover,
        "the failed start left its pins (maps, a tcx link) behind: {out}"
    );
    // The first lbd is untouched: it answers, and its VIP is still served.
    let (ok, _, err) = lb.lbctl(&["status"]).unwrap();
    assert!(ok, "{err}");
    let vip = "198.18.100.1:80".parse().unwrap();
    let reply = lb_testkit::tcp_request(&topo.client, vip, Duration::from_secs(3))
        .expect("the first lbd's VIP, after the second one failed");
    assert_eq!(reply.backend, "backend-0");
}

/// `lbd cleanup` with no BGP settings, given or recorded, warns that VIPs may stay announced
/// only while a BIRD runs on the node: without one nothing is announced through it.
#[test]
fn cleanup_warns_of_unwithdrawn_vips_only_while_a_bird_runs() {
    if !e2e_enabled() {
        return;
    }
    let scratch = ScratchPath::temp("cleanup-no-bgp", "");
    std::fs::create_dir_all(&*scratch).unwrap();
    let pins = scratch_pins("cleanup-no-bgp");
    let state = scratch.join("state");
    let args = [
        "cleanup",
        "--pin-dir",
        pins.arg(),
        "--state-dir",
        state.to_str().unwrap(),
    ];
    let warning = "no BGP settings";
    let bird_runs = || {
        let out = Command::new("pgrep").args(["-x", "bird"]).output().unwrap();
        out.status.success()
    };
    // A real BIRD on this machine makes the warning right: only the second half then.
    if !bird_runs() {
        let (ok, out) = run_lbd(None, &args);
        assert!(ok && !out.contains(warning), "{out}");
    }
    // Any process named bird (a copy of sleep here) is a BIRD that may announce.
    let bird = scratch.join("bird");
    std::fs::copy("/bin/sleep", &bird).unwrap();
    let mut child = Command::new(&bird).arg("30").spawn().unwrap();
    let (ok, out) = run_lbd(None, &args);
    let _ = child.kill();
    let _ = child.wait();
    assert!(ok && out.contains(warning), "{out}");
}

/// A second `lbd run` on a pin directory another lbd runs with is refused naming the running
/// one's pid and how to stop it, as `lbd cleanup` does; one on its API socket says so once.
#[test]
fn a_second_lbd_on_the_same_pin_directory_names_the_running_one() {
    if !e2e_enabled() {
        return;
    }
    let topo = Topology::new(1).expect("topology");
    let mut lb = start(&topo, &[]);
    let pid = lb.pid().unwrap();
    let scratch = ScratchPath::temp("same-pins", "");
    std::fs::create_dir_all(&*scratch).unwrap();
    let config = scratch.join("services.yaml");
    std::fs::write(&config, SERVICES).unwrap();
    let mut cmd = Command::new(lbd());
    cmd.args([
        "run",
        "--config",
        config.to_str().unwrap(),
        "--interface",
        &topo.node_client_if,
        "--pin-dir",
        lb.pin_dir().to_str().unwrap(),
        "--state-dir",
        scratch.join("state").to_str().unwrap(),
        "--api",
        scratch.join("api.sock").to_str().unwrap(),
        "--metrics",
        "127.0.0.1:9465",
        "--socket-lb",
        "off",
    ]);
    let out = lbd_that_fails(&topo.node, cmd);
    assert!(
        out.contains(&format!("lbd (pid {pid}) is running with pin directory"))
            && out.contains(&format!("kill {pid}")),
        "{out}"
    );

    let pins = scratch_pins("same-api");
    let api = lb.api_socket();
    let mut cmd = Command::new(lbd());
    cmd.args([
        "run",
        "--config",
        config.to_str().unwrap(),
        "--interface",
        &topo.node_client_if,
        "--pin-dir",
        pins.arg(),
        "--state-dir",
        scratch.join("state").to_str().unwrap(),
        "--api",
        api.to_str().unwrap(),
        "--metrics",
        "127.0.0.1:9465",
        "--socket-lb",
        "off",
    ]);
    let out = lbd_that_fails(&topo.node, cmd);
    assert!(out.contains("served by another running lbd"), "{out}");
    assert_eq!(
        out.matches(api.to_str().unwrap()).count(),
        1,
        "told once: {out}"
    );
    assert!(!pins.exists(), "{out}");
    let (ok, _, err) = lb.lbctl(&["status"]).unwrap();
    assert!(ok, "the first lbd still answers: {err}");
}

/// A listener lbd cannot have (the metrics address taken, or not up on this node) stops its
/// start before anything is loaded or attached: the error names the address and the way out,
/// tells the system's error once, and nothing stays pinned or attached.
#[test]
fn a_listener_address_lbd_cannot_have_stops_the_start_before_anything_is_attached() {
    if !e2e_enabled() {
        return;
    }
    let topo = Topology::new(1).expect("topology");
    let taken = topo
        .node
        .run(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .expect("enter the node")
        .expect("bind a port");
    let in_use = taken.local_addr().unwrap().to_string();
    let scratch = ScratchPath::temp("listener", "");
    let pins = scratch_pins("listener");
    std::fs::create_dir_all(&*scratch).unwrap();
    let config = scratch.join("services.yaml");
    std::fs::write(&config, SERVICES).unwrap();
    let (state, api) = (scratch.join("state"), scratch.join("api.sock"));
    // ::1 is not up while `lo` is down (127.0.0.1 still binds: IPv4 treats it apart).
    let not_up = "[::1]:9464";
    for (addr, fix, os_error) in [
        (
            in_use.as_str(),
            "choose another with --metrics",
            "os error 98",
        ),
        (not_up, "ip link set lo up", "os error 99"),
    ] {
        if addr == not_up {
            topo.node.ip(&["link", "set", "lo", "down"]).unwrap();
        }
        let mut cmd = Command::new(lbd());
        cmd.args([
            "run",
            "--config",
            config.to_str().unwrap(),
            "--interface",
            &topo.node_client_if,
            "--pin-dir",
            pins.arg(),
            "--state-dir",
            state.to_str().unwrap(),
            "--api",
            api.to_str().unwrap(),
            "--metrics",
            addr,
            "--socket-lb",
            "off",
            "--conntrack-entries",
            "65536",
        ]);
        let out = lbd_that_fails(&topo.node, cmd);
        let attached = topo.node.xdp_attached(&topo.node_client_if).unwrap();
        assert!(
            out.contains(&format!("metrics on {addr}")) && out.contains(fix),
            "{out}"
        );
        assert_eq!(out.matches(os_error).count(), 1, "told once: {out}");
        assert!(
            !pins.exists() && !attached,
            "the failed start left its pins ({}) or its program ({attached}) behind: {out}",
            pins.exists()
        );
        assert!(!api.exists(), "the API socket stayed: {out}");
    }
    drop(taken);
}

/// Runs `cmd`, an lbd that must not start, in `ns`'s network namespace only (it must see the
/// host's bpffs), and its output once it has exited unsuccessfully, within 20 s.
fn lbd_that_fails(ns: &Netns, cmd: Command) -> String {
    let mut child = ns
        .spawn_command(cmd, EnterMode::SetnsOnly)
        .expect("spawn lbd");
    let status = child
        .wait_timeout(Duration::from_secs(20))
        .expect("wait")
        .expect("lbd must fail, not run");
    let out = child.output_so_far();
    assert!(!status.success(), "{out}");
    out
}

/// Pins a map of another tool's at `path`: a one-element array made with `bpf(2)`.
fn pin_foreign_map(path: &Path) {
    let fd = lb_testkit::raw_bpf::create_array(8, 1).expect("creating a map");
    lb_testkit::raw_bpf::pin(fd, path).expect("pinning it");
}

/// `--pin-dir` may be a bpffs directory shared with another tool: a start that fails after
/// it pinned (here at the attach: the interface runs another lbd's XDP program) removes its
/// own pins, not the other tool's.
#[test]
fn a_failed_start_in_a_shared_pin_directory_removes_only_its_own_pins() {
    if !e2e_enabled() {
        return;
    }
    let ns = Netns::new("sharedpins").expect("namespace");
    ns.ip_batch(&[
        "link add mlb-s0 type veth peer name mlb-s1",
        "link set mlb-s0 up",
        "link set mlb-s1 up",
    ])
    .expect("veth");
    ns.set_sysctls(&[("net.ipv4.ip_forward", "1")])
        .expect("forwarding");
    let _first = Lbd::start(lbd(), &ns, SERVICES, &["mlb-s0"], &[]).expect("the first lbd");
    let shared = scratch_pins("shared-start");
    std::fs::create_dir_all(&*shared).unwrap();
    let foreign = shared.join("foreign");
    pin_foreign_map(&foreign);
    let scratch = ScratchPath::temp("shared-start", "");
    std::fs::create_dir_all(&*scratch).unwrap();
    let config = scratch.join("services.yaml");
    std::fs::write(&config, SERVICES).unwrap();
    let mut cmd = Command::new(lbd());
    cmd.args([
        "run",
        "--config",
        config.to_str().unwrap(),
        "--interface",
        "mlb-s0",
        "--pin-dir",
        shared.arg(),
        "--state-dir",
        scratch.join("state").to_str().unwrap(),
        "--api",
        scratch.join("api.sock").to_str().unwrap(),
        "--metrics",
        "127.0.0.1:9465",
        "--socket-lb",
        "off",
    ])
    .env("NO_COLOR", "1");
    let out = lbd_that_fails(&ns, cmd);
    assert!(
        out.contains("already runs XDP program") && out.contains("removed what it pinned"),
        "a start that failed after it pinned: {out}"
    );
    assert!(
        foreign.exists(),
        "the failed start removed another tool's pin: {out}"
    );
    let left: Vec<String> = std::fs::read_dir(&*shared)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["foreign"], "only the other tool's pin stays: {out}");
}

/// The test kit takes lbd for started on its ready line only: a second lbd on the same
/// interfaces fails with "… already runs XDP program …", which holds "ready" too.
#[test]
fn a_second_lbd_that_fails_to_attach_is_not_taken_for_started() {
    if !e2e_enabled() {
        return;
    }
    let topo = Topology::new(1).expect("topology");
    let _first = start(&topo, &[]);
    let second = topo.start_lbd(
        lbd(),
        SERVICES,
        &["--xdp-mode", "generic", "--metrics", "127.0.0.1:9465"],
    );
    let err = format!("{:#}", second.err().expect("the second lbd must not start"));
    assert!(
        err.contains("did not get ready") && err.contains("already runs XDP program"),
        "{err}"
    );
}

/// One HTTP request in `ns`; the status code, or the error.
fn http_status(ns: &Netns, addr: std::net::SocketAddr, request: String) -> Result<u16, String> {
    use std::io::{Read as _, Write as _};
    ns.run(move || -> Result<u16, String> {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).map_err(|e| e.to_string())?;
        answer
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("not HTTP: {answer:?}"))
    })
    .expect("enter the namespace")
}

/// One raw request over the Unix API socket, and its whole answer.
fn unix_exchange(socket: &Path, request: String) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::os::unix::net::UnixStream::connect(socket).expect("connect to the API");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).expect("send the request");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn idle_tcp_api_connections_cannot_stall_the_daemon() {
    if !e2e_enabled() {
        return;
    }
    let topo = Topology::new(1).expect("topology");
    let token = "idle-connections-token-0123";
    let token_file = ScratchPath::temp("idle-token", "");
    std::fs::write(&*token_file, format!("{token}\n")).unwrap();
    let lb = start(
        &topo,
        &[
            "--api-listen",
            "127.0.0.1:9465",
            "--api-token-file",
            token_file.arg(),
        ],
    );
    let api: std::net::SocketAddr = "127.0.0.1:9465".parse().unwrap();
    // 300 idle connections, some with half a request: far more than the API serves at once.
    let idle: Vec<std::net::TcpStream> = topo
        .node
        .run(move || {
            use std::io::Write as _;
            (0..300)
                .filter_map(|i| {
                    let mut s =
                        std::net::TcpStream::connect_timeout(&api, Duration::from_secs(2)).ok()?;
                    if i % 3 == 0 {
                        let _ = s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n");
                    }
                    Some(s)
                })
                .collect()
        })
        .expect("enter the node");
    assert!(idle.len() >= 200, "only {} connections opened", idle.len());
    // Meanwhile every admin path answers at once: the Unix API, /metrics, a reload.
    let started = std::time::Instant::now();
    let (ok, _, err) = lb.lbctl(&["status"]).unwrap();
    assert!(ok, "lbctl status with idle TCP connections open: {err}");
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(
        http_status(
            &topo.node,
            "127.0.0.1:9464".parse().unwrap(),
            get("/metrics")
        ),
        Ok(200)
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Connections beyond the cap were refused, and counted.
    let metrics = lb_testkit::metrics(&topo.node).expect("/metrics");
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("meshlb_api_requests_total{code=\"503\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        refused >= 200,
        "refused connections counted: {refused}\n{metrics}"
    );
    // A connection that never finishes its headers is closed by lbd once its time is up.
    let mut first = idle.into_iter().next().expect("a connection");
    let waited = std::time::Instant::now();
    first
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 256];
    let read = std::io::Read::read(&mut first, &mut buf);
    assert!(
        read.is_ok() && waited.elapsed() < Duration::from_secs(9),
        "a half-sent request was still open after {:?}: {read:?}",
        waited.elapsed()
    );
    drop(first);
    // Once the flood is gone, the TCP API answers.
    let mut answered = Err(String::new());
    for _ in 0..40 {
        answered = http_status(
            &topo.node,
            api,
            format!(
                "GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
            ),
        );
        if answered == Ok(200) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(answered, Ok(200), "the TCP API answers again");
    // /metrics is guarded the same way: idle connections past its cap are refused, and the
    // admin API is not starved by them.
    let metrics_addr: std::net::SocketAddr = "127.0.0.1:9464".parse().unwrap();
    let scrapers: Vec<std::net::TcpStream> = topo
        .node
        .run(move || {
            (0..40)
                .filter_map(|_| {
                    std::net::TcpStream::connect_timeout(&metrics_addr, Duration::from_secs(2)).ok()
                })
                .collect()
        })
        .expect("enter the node");
    assert_eq!(scrapers.len(), 40, "connections to /metrics opened");
    // Told at once, before it sends anything (a request sent meanwhile could meet a reset).
    let refused = topo
        .node
        .run(move || {
            use std::io::Read as _;
            let mut s =
                std::net::TcpStream::connect_timeout(&metrics_addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut answer = String::new();
            s.read_to_string(&mut answer).map(|_| answer)
        })
        .expect("enter the node");
    assert!(
        refused
            .as_ref()
            .is_ok_and(|a| a.starts_with("HTTP/1.1 503")),
        "a scrape beyond /metrics' cap: {refused:?}"
    );
    let (ok, _, err) = lb.lbctl(&["status"]).unwrap();
    assert!(
        ok,
        "lbctl status with /metrics' connections all taken: {err}"
    );
    drop(scrapers);
    let mut scraped = Err(String::new());
    for _ in 0..40 {
        scraped = http_status(&topo.node, metrics_addr, get("/metrics"));
        if scraped == Ok(200) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(scraped, Ok(200), "/metrics answers again");
}

#[test]
fn an_oversized_request_gets_the_apis_json_error_and_a_looping_backend_is_refused() {
    if !e2e_enabled() {
        return;
    }
    let topo = Topology::new(1).expect("topology");
    let lb = start(&topo, &[]);
    let big = ScratchPath::temp("big", ".yaml");
    std::fs::write(&*big, format!("services: {{}}\n#{}\n", "x".repeat(3 << 20))).unwrap();
    let (ok, _, err) = lb.lbctl(&["apply", "-f", big.arg()]).unwrap();
    assert!(!ok, "a 3 MB body was taken");
    assert!(
        err.contains("(3.1 MB) is over the API's limit of 2 MB"),
        "lbctl refuses the body before sending it, saying its size and the limit: {err}"
    );
    // lbd's own limit, for clients other than lbctl: a body one byte over, sent whole (so lbd
    // has read all of it and its close loses nothing), gets the API's JSON error.
    let limit = lb_userspace::api::MAX_BODY_BYTES;
    let answer = unix_exchange(
        &lb.api_socket(),
        format!(
            "POST /v1/apply HTTP/1.1\r\nHost: lbd\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{}",
            limit + 1,
            "x".repeat(limit + 1)
        ),
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains(r#"{"error":"the request body is over the API's limit of 2 MB"#),
        "{answer}"
    );
    // A backend that is one of the node's frontends loops: refused, through the API as in a
    // file (one rule set: the plan's).
    let (ok, _, err) = lb
        .lbctl(&[
            "add-service",
            "front",
            "--vip",
            "198.18.100.9",
            "--port",
            "80/tcp",
            "--backend",
            "198.18.100.1:80",
        ])
        .unwrap();
    assert!(!ok, "a looping backend was taken");
    assert!(err.contains("is itself a frontend"), "{err}");
}

#[test]
fn lbctl_shows_the_limit_that_applies_and_gives_up_on_a_silent_lbd() {
    if !e2e_enabled() {
        return;
    }
    let topo = Topology::new(1).expect("topology");
    let _servers = topo.serve_on_backends(&[8080], &[]).expect("servers");
    let mut lb = start(&topo, &[]);
    // One exchange, then the connection closes: the flow is closing, with the short limit.
    lb_testkit::tcp_request(
        &topo.client,
        "198.18.100.1:80".parse().unwrap(),
        Duration::from_secs(3),
    )
    .expect("request");
    let list = lb.lbctl_json(&["flows"]).expect("lbctl flows");
    let flow = list["flows"]
        .as_array()
        .and_then(|f| f.first())
        .unwrap_or_else(|| panic!("no flow listed: {list}"))
        .clone();
    assert_eq!(flow["tcp_state"], "closing", "{flow}");
    // The service's name as `list` and `stats` give it, its mapping apart.
    assert_eq!(flow["service"], "web", "{flow}");
    assert_eq!(flow["mapping"], "80:8080/tcp", "{flow}");
    assert_eq!(
        flow["idle_timeout_s"],
        lb_common::limits::TCP_CLOSING_TIMEOUT_S,
        "the limit that applies, not the service's 24 h: {flow}"
    );
    let left = flow["expires_in_s"].as_u64().expect("time left");
    assert!(
        left <= u64::from(lb_common::limits::TCP_CLOSING_TIMEOUT_S),
        "{flow}"
    );
    // A second flow: a sample of one says more are tracked; a limit of 0 is refused, named.
    lb_testkit::tcp_request(
        &topo.client,
        "198.18.100.1:80".parse().unwrap(),
        Duration::from_secs(3),
    )
    .expect("request");
    let one = lb
        .lbctl_json(&["flows", "--limit", "1"])
        .expect("flows --limit 1");
    assert_eq!(one["flows"].as_array().map(Vec::len), Some(1), "{one}");
    assert_eq!(one["truncated"], true, "{one}");
    let all = lb.lbctl_json(&["flows"]).expect("flows");
    assert_eq!(all["truncated"], false, "{all}");
    let (ok, out, _) = lb.lbctl(&["flows", "--limit", "1"]).unwrap();
    assert!(ok && out.contains("more are tracked"), "{out}");
    let (ok, _, err) = lb.lbctl(&["flows", "--limit", "0"]).unwrap();
    assert!(!ok && err.contains("--limit"), "{err}");
    // `explain` gives the same limit for that flow.
    let client = flow["client"]
        .as_str()
        .expect("the flow's client")
        .to_owned();
    let explain = ["explain", "tcp", client.as_str(), "198.18.100.1:80"];
    let explained = lb.lbctl_json(&explain).expect("lbctl explain");
    assert_eq!(
        explained["tracked"]["idle_timeout_s"],
        lb_common::limits::TCP_CLOSING_TIMEOUT_S,
        "{explained}"
    );
    let (ok, out, err) = lb.lbctl(&explain).unwrap();
    assert!(
        ok && out.contains(&format!(
            "(tcp closing, idle timeout {} s)",
            lb_common::limits::TCP_CLOSING_TIMEOUT_S
        )),
        "{out}{err}"
    );
    // An lbd that answers nothing (stopped here) makes lbctl give up after --timeout, naming
    // the socket, instead of waiting for ever.
    let pid = lb.pid().expect("lbd's pid") as libc::pid_t;
    // SAFETY: signals lbd, this test's own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let started = std::time::Instant::now();
    let stuck = lb.lbctl(&["--timeout", "1", "status"]);
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let (ok, _, err) = stuck.unwrap();
    assert!(
        !ok && err.contains("gave no answer within 1s")
            && started.elapsed() < Duration::from_secs(5),
        "after {:?}: {err}",
        started.elapsed()
    );
    let (ok, _, err) = lb.lbctl(&["status"]).unwrap();
    assert!(ok, "lbd answers again once it runs: {err}");
}

#[test]
fn a_file_change_whose_reload_failed_is_applied_at_the_next_check() {
    if !e2e_enabled() {
        return;
    }
    let topo = Topology::new(1).expect("topology");
    let lb = start(&topo, &["--watch-interval-ms", "200"]);
    // Something else fills the frontend map: a reload that needs a new frontend fails (the
    // node's failure, not the file's).
    let filled = lb.fill_map::<lb_common::maps::Service>("FRONTENDS");
    let changed = format!(
        "{SERVICES}  more:\n    vip: 198.18.100.7\n    ports: [\"80:8080/tcp\"]\n    backends: [\"198.18.2.10\"]\n"
    );
    std::fs::write(lb.config_path(), &changed).unwrap();
    let listed = |lb: &Lbd| {
        let (ok, out, err) = lb.lbctl(&["list"]).unwrap();
        assert!(ok, "{err}");
        out.contains("more")
    };
    // Bounded: 50 looks, 100 ms apart.
    let mut failed = false;
    for _ in 0..50 {
        if lb.output().contains("reload failed") {
            failed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(failed, "the reload did not fail:\n{}", lb.output());
    assert!(!listed(&lb), "a failed reload changed the configuration");
    // The map frees up; the file is not touched again: the next check applies it.
    filled.free();
    let mut applied = false;
    for _ in 0..50 {
        if listed(&lb) {
            applied = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(applied, "the change was not tried again:\n{}", lb.output());
}

/// For `lbd check`: a namespace of its own whose interfaces forward (as `lbd run` needs), and
/// a service file of `SERVICES` named after `stem`.
fn check_setup(stem: &str) -> (Netns, ScratchPath) {
    let ns = Netns::new("check").expect("namespace");
    ns.set_sysctls(&[("net.ipv4.ip_forward", "1")])
        .expect("forwarding");
    let file = ScratchPath::temp(stem, ".yaml");
    std::fs::write(&*file, SERVICES).unwrap();
    (ns, file)
}

/// `lbd check` refuses what `lbd run` with the same flags would refuse, before a unit file
/// starts a daemon that exits at once (and is restarted every 2 s).
#[test]
fn lbd_check_refuses_what_lbd_run_would() {
    if !e2e_enabled() {
        return;
    }
    let (ns, file) = check_setup("check");
    let check = |extra: &[&str]| {
        let mut args = vec!["check", "--config", file.arg()];
        args.extend(extra);
        run_lbd(Some(&ns), &args)
    };
    // No interface in the file or the flags: `lbd run` would not start.
    let (ok, out) = check(&[]);
    assert!(!ok, "{out}");
    assert!(out.contains("no interface to attach to"), "{out}");
    let (ok, out) = check(&["--interface", "lo", "--xdp-redirect", "eth9"]);
    assert!(!ok, "{out}");
    assert!(out.contains("--xdp-redirect eth9"), "{out}");
    let (ok, out) = check(&["--conntrack-entries", "1"]);
    assert!(!ok, "{out}");
    assert!(out.contains("'1' for '--conntrack-entries"), "{out}");
    // Bridges are followed only on a swarm node.
    let (ok, out) = check(&["--interface", "lo", "--docker-bridges", "on"]);
    assert!(
        !ok && out.contains("--docker-bridges: only with --swarm"),
        "{out}"
    );
    // An interface that is not there, or does not forward.
    let (ok, out) = check(&["--interface", "eht0"]);
    assert!(!ok && out.contains("eht0"), "{out}");
    ns.set_sysctls(&[("net.ipv4.conf.lo.forwarding", "0")])
        .expect("sysctl");
    let (ok, out) = check(&["--interface", "lo"]);
    assert!(!ok && out.contains("forwarding"), "{out}");
    ns.set_sysctls(&[("net.ipv4.conf.lo.forwarding", "1")])
        .expect("sysctl");
    // With one, it prints the interfaces and the plan.
    let (ok, out) = check(&["--interface", "lo"]);
    assert!(ok, "{out}");
    assert!(out.contains("interfaces: lo"), "{out}");
    assert!(
        out.contains("web 80/tcp: 1 frontend(s) on 198.18.100.1, 1 backend(s)"),
        "{out}"
    );
    // From the file's lbd section as well.
    std::fs::write(&*file, format!("lbd:\n  interfaces: [lo]\n{SERVICES}")).unwrap();
    let (ok, out) = check(&[]);
    assert!(ok && out.contains("interfaces: lo"), "{out}");
}

/// `lbd check` lays the state directory's API state over the file, as `lbd run` does: a
/// service both define is refused, as the start would refuse it.
#[test]
fn lbd_check_refuses_a_service_the_api_state_defines_too() {
    if !e2e_enabled() {
        return;
    }
    let (ns, file) = check_setup("check-api");
    let state = ScratchPath::temp("check-state", "");
    let api = lb_userspace::source::api_state::ApiState {
        services: lb_userspace::source::file::ServiceFile::parse(SERVICES, Path::new("api"))
            .unwrap()
            .services,
        ..Default::default()
    };
    api.save(&state.join("api-state.json")).unwrap();
    let check = |state_dir: &str| {
        run_lbd(
            Some(&ns),
            &[
                "check",
                "--config",
                file.arg(),
                "--interface",
                "lo",
                "--state-dir",
                state_dir,
            ],
        )
    };
    let (ok, out) = check(state.arg());
    assert!(
        !ok && out.contains("defined in the service file and through the API"),
        "{out}"
    );
    // Without that state, the same file passes.
    let empty = ScratchPath::temp("check-empty", "");
    let (ok, out) = check(empty.arg());
    assert!(ok, "{out}");
}
