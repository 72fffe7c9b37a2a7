//! Health checks end to end (issue 15): the real `lbd` checks real backends in their
//! namespaces; a backend whose server stops gets no new flows within `fall × interval` plus a
//! second and comes back after `rise × interval`; flapping inside the hysteresis changes
//! nothing; an HTTP check answered 500 takes a backend down; a silent backend's checks hold up
//! neither `lbctl` nor a reload; a service whose backends are all down drops its packets.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU16, Ordering},
    },
    time::{Duration, Instant},
};

use lb_testkit::{Lbd, NameServer, Netns, Topology, e2e_enabled, tcp_request};
use lb_userspace::api::{BackendHealth, ServiceList};
use lb_userspace::source::health::Health;

const TIMEOUT: Duration = Duration::from_secs(2);
/// `web`'s check: interval 300 ms, rise 2, fall 4.
const INTERVAL: Duration = Duration::from_millis(300);
const RISE: u32 = 2;
const FALL: u32 = 4;

const SERVICES: &str = r#"
services:
  web:
    vip: 198.18.100.1
    ports: ["80:8080/tcp"]
    backends: ["198.18.2.10", "198.18.2.11", "198.18.2.12"]
    health: { tcp: {}, interval: 300ms, timeout: 200ms, rise: 2, fall: 4 }
  api:
    vip: 198.18.100.2
    ports: ["80:8080/tcp"]
    backends: ["198.18.2.10", "198.18.2.11"]
    health: { http: { path: /healthz, expect: 200 }, port: 9000, interval: 300ms, timeout: 200ms, rise: 1, fall: 2 }
"#;

/// `SERVICES` plus a service whose one backend never answers (its address has a neighbour
/// entry with a MAC no host has, so its SYNs go nowhere): each of its checks waits its whole
/// 2 s timeout.
const WITH_SILENT: &str = r#"
  silent:
    vip: 198.18.100.3
    ports: ["80:8080/tcp"]
    backends: ["198.18.2.99"]
    health: { tcp: {}, interval: 2s, timeout: 2s }
"#;

fn lbd() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_lbd"))
}

fn list(lb: &Lbd) -> ServiceList {
    serde_json::from_value(lb.lbctl_json(&["list"]).expect("lbctl list")).expect("a service list")
}

/// `lbd run` with `services` on the topology's node, attached to both of its interfaces.
fn start(topo: &Topology, services: &str) -> Lbd {
    topo.start_lbd(lbd(), services, &[]).expect("lbd")
}

/// Makes `addr` silent from the node: its frames go to a MAC no host has (a permanent
/// neighbour entry, so the kernel never gives up asking and fails checks at once).
fn silence(topo: &Topology, addr: &str) {
    topo.node
        .ip(&[
            "neigh",
            "replace",
            addr,
            "lladdr",
            "02:00:00:00:09:99",
            "dev",
            &topo.node_bridge,
            "nud",
            "permanent",
        ])
        .expect("neighbour entry");
}

/// A name server on port 8080 of every backend, each stopped by setting it to `None`.
fn stoppable_servers(topo: &Topology) -> Vec<Option<NameServer>> {
    topo.serve_on_backends(&[8080], &[])
        .expect("servers")
        .into_iter()
        .map(Some)
        .collect()
}

/// Each backend's health in `service`, by backend as listed.
fn health(lb: &Lbd, service: &str) -> BTreeMap<String, BackendHealth> {
    let list = list(lb);
    let s = list
        .services
        .iter()
        .find(|s| s.name == service)
        .unwrap_or_else(|| panic!("no service {service}"));
    s.backends
        .iter()
        .map(|b| (b.backend.clone(), b.health.clone().expect("checked")))
        .collect()
}

/// Waits (bounded by `limit`) until `backend` of `service` is `want`; how long it took.
fn wait_health(lb: &Lbd, service: &str, backend: &str, want: Health, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let now = health(lb, service);
        if now[backend].state == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{service} {backend} not {want:?} within {limit:?}: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Which backend each of `n` new connections to `vip` reached; failures by message.
fn spread(client: &Netns, vip: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let name = match tcp_request(client, vip, TIMEOUT) {
            Ok(reply) => reply.backend,
            Err(e) => format!("failed: {e:#}"),
        };
        *seen.entry(name).or_default() += 1;
    }
    seen
}

/// An HTTP server in a namespace answering every request with the status it is set to.
struct StatusServer {
    status: Arc<AtomicU16>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StatusServer {
    fn start(ns: &Netns, port: u16, status: u16) -> StatusServer {
        let listener = ns
            .run(|| TcpListener::bind(("0.0.0.0", port)))
            .expect("enter namespace")
            .expect("bind");
        listener.set_nonblocking(true).unwrap();
        let status = Arc::new(AtomicU16::new(status));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (status.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
                        let mut buf = [0u8; 1024];
                        let _ = stream.read(&mut buf);
                        let code = s.load(Ordering::Relaxed);
                        let _ = write!(stream, "HTTP/1.0 {code} X\r\nContent-Length: 0\r\n\r\n");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        StatusServer {
            status,
            stop,
            thread: Some(thread),
        }
    }

    fn set(&self, status: u16) {
        self.status.store(status, Ordering::Relaxed);
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn down_backends_get_no_new_flows_and_come_back_after_rise_checks() {
    if !e2e_enabled() {
        return;
    }
    let topo = Topology::new(3).expect("topology");
    let mut servers = stoppable_servers(&topo);
    let status: Vec<StatusServer> = topo.backends[..2]
        .iter()
        .map(|b| StatusServer::start(&b.ns, 9000, 200))
        .collect();
    let lb = start(&topo, SERVICES);
    let vip: SocketAddr = "198.18.100.1:80".parse().unwrap();
    let (b0, b1) = ("198.18.2.10", "198.18.2.11");
    for backend in [b0, b1, "198.18.2.12"] {
        wait_health(&lb, "web", backend, Health::Up, Duration::from_secs(5));
    }

    // 1. Backend 1's server stops: down within fall × interval plus a second, and no new
    // flow reaches it afterwards (a connection to it would be refused).
    servers[1] = None;
    let took = wait_health(
        &lb,
        "web",
        b1,
        Health::Down,
        INTERVAL * FALL + Duration::from_secs(1),
    );
    eprintln!("server stopped: down in {took:?}");
    let h = &health(&lb, "web")[b1];
    assert!(
        h.last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("connecting: ")),
        "{h:?}"
    );
    assert_eq!(h.transitions, 1, "{h:?}");
    let seen = spread(&topo.client, vip, 30);
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["backend-0", "backend-2"],
        "every new flow on an up backend: {seen:?}"
    );
    let (_, text, _) = lb.lbctl(&["list"]).expect("lbctl list");
    assert!(text.contains("HEALTH") && text.contains("down "), "{text}");
    let (_, text, _) = lb.lbctl(&["stats"]).expect("lbctl stats");
    assert!(text.contains("(1 down: see `lbctl list`)"), "{text}");
    let (_, text, _) = lb
        .lbctl(&["explain", "tcp", "198.18.1.2:40000", "198.18.100.1:80"])
        .expect("lbctl explain");
    assert!(
        text.contains("left out as down by their health checks: 198.18.2.11:8080 (down"),
        "{text}"
    );

    // 2. Its server back: up after rise × interval (plus a check's delay), and new flows
    // reach it again.
    servers[1] =
        Some(NameServer::start(&topo.backends[1].ns, "backend-1", &[8080], &[]).expect("server"));
    let took = wait_health(
        &lb,
        "web",
        b1,
        Health::Up,
        INTERVAL * (RISE + 1) + Duration::from_secs(1),
    );
    eprintln!("server back: up in {took:?}");
    // 45 random client ports miss one of 3 backends with a chance of 3 × (2/3)^45 ≈ 4e-8
    // (30: 2e-5).
    let seen = spread(&topo.client, vip, 45);
    assert_eq!(seen.len(), 3, "all three serve again: {seen:?}");
    assert!(seen.keys().all(|k| k.starts_with("backend-")), "{seen:?}");

    // 3. Flapping inside the hysteresis: the server away for about one interval changes
    // nothing. That is one or two failed checks, three when lbd's checks run late (a check
    // far behind its beat is followed by the next half an interval later) or the server takes
    // a moment to come back: fall is four, out of their reach.
    let transitions = health(&lb, "web")[b1].transitions;
    let generation = list(&lb).generation;
    servers[1] = None;
    std::thread::sleep(INTERVAL + INTERVAL / 6);
    servers[1] =
        Some(NameServer::start(&topo.backends[1].ns, "backend-1", &[8080], &[]).expect("server"));
    for _ in 0..(FALL * 3) {
        let h = &health(&lb, "web")[b1];
        assert_eq!((h.state, h.transitions), (Health::Up, transitions), "{h:?}");
        std::thread::sleep(INTERVAL / 2);
    }
    assert_eq!(list(&lb).generation, generation, "nothing was replanned");

    // 4. An HTTP check answered 500: down after fall (2) checks, with the status as reason;
    // 200 again: up.
    status[0].set(500);
    wait_health(
        &lb,
        "api",
        b0,
        Health::Down,
        INTERVAL * 2 + Duration::from_secs(1),
    );
    let h = &health(&lb, "api")[b0];
    assert_eq!(
        h.last_error.as_deref(),
        Some("GET /healthz answered 500, expected 200"),
        "{h:?}"
    );
    assert!(
        h.check
            .starts_with("http GET /healthz expecting 200 198.18.2.10:9000"),
        "{h:?}"
    );
    assert_eq!(
        health(&lb, "web")[b0].state,
        Health::Up,
        "web checks its own port"
    );
    let seen = spread(&topo.client, "198.18.100.2:80".parse().unwrap(), 20);
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["backend-1"], "{seen:?}");
    status[0].set(200);
    wait_health(
        &lb,
        "api",
        b0,
        Health::Up,
        INTERVAL * 2 + Duration::from_secs(1),
    );

    // 5. Every backend of web down: a new connection is refused at once with a RST from the
    // VIP (counted `refused_no_backend` and `flow_reset`), not sent anywhere.
    servers.iter_mut().for_each(|s| *s = None);
    for backend in [b0, b1, "198.18.2.12"] {
        wait_health(
            &lb,
            "web",
            backend,
            Health::Down,
            INTERVAL * FALL + Duration::from_secs(1),
        );
    }
    let before = [
        global_count(&lb, "flow_reset"),
        global_count(&lb, "refused_no_backend"),
    ];
    let refused = tcp_request(&topo.client, vip, Duration::from_millis(500))
        .expect_err("no backend of web is up");
    assert!(
        format!("{refused:#}").contains("refused"),
        "the client is told at once: {refused:#}"
    );
    for (counter, before) in ["flow_reset", "refused_no_backend"].into_iter().zip(before) {
        assert!(
            global_count(&lb, counter) > before,
            "the SYN is answered with a RST ({counter})"
        );
    }
    let metrics = lb_testkit::metrics(&topo.node).expect("/metrics");
    for line in [
        "meshlb_backend_up{service=\"web\",backend=\"198.18.2.10:8080\"} 0",
        "meshlb_backend_up{service=\"api\",backend=\"198.18.2.10:9000\"} 1",
        "meshlb_backend_health_transitions_total{service=\"web\",backend=\"198.18.2.11:8080\"} 3",
        "meshlb_health_check_seconds_count{service=\"api\"}",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    drop(status);
    drop(lb);
    drop(servers);
}

#[test]
fn a_silent_backend_holds_up_neither_lbctl_nor_a_reload() {
    if !e2e_enabled() {
        return;
    }
    let topo = Topology::new(3).expect("topology");
    let _servers = topo.serve_on_backends(&[8080], &[]).expect("servers");
    let _status: Vec<StatusServer> = topo.backends[..2]
        .iter()
        .map(|b| StatusServer::start(&b.ns, 9000, 200))
        .collect();
    let services = format!("{SERVICES}{WITH_SILENT}");
    // Without the entry the kernel would give up asking for the address after a few seconds
    // and fail later checks at once ("No route to host").
    silence(&topo, "198.18.2.99");
    let mut lb = start(&topo, &services);
    // Its checks time out after 2 s each, one after another; meanwhile every lbctl call and
    // a reload answer at once.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let call = Instant::now();
        list(&lb);
        assert!(
            call.elapsed() < Duration::from_secs(1),
            "lbctl list took {:?}",
            call.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let call = Instant::now();
    let answer = lb
        .reload(&services.replace("rise: 2, fall: 4", "rise: 2, fall: 5"))
        .expect("reload");
    assert!(answer.contains("reload"), "{answer}");
    assert!(
        call.elapsed() < Duration::from_secs(1),
        "the reload took {:?}",
        call.elapsed()
    );
    let h = wait_health(
        &lb,
        "silent",
        "198.18.2.99",
        Health::Down,
        Duration::from_secs(5),
    );
    eprintln!("silent backend down after {h:?} more");
    let h = &health(&lb, "silent")["198.18.2.99"];
    assert_eq!(
        h.last_error.as_deref(),
        Some("no answer within 2s"),
        "{h:?}"
    );
    assert_eq!(health(&lb, "web")["198.18.2.10"].state, Health::Up);

    // A service added through the API is checked like a file's; a bad check is refused,
    // naming its flag.
    let add = |interval: &str| {
        lb.lbctl(&[
            "add-service",
            "checked",
            "--vip",
            "198.18.100.9",
            "--port",
            "80:8080",
            "--backend",
            "198.18.2.10",
            "--health",
            "http",
            "--health-path",
            "/healthz",
            "--health-port",
            "9000",
            "--health-interval",
            interval,
        ])
        .expect("lbctl add-service")
    };
    let (ok, _, err) = add("5ms");
    assert!(!ok && err.contains("--health-interval"), "{err}");
    let (ok, _, err) = add("300ms");
    assert!(ok, "{err}");
    wait_health(
        &lb,
        "checked",
        "198.18.2.10",
        Health::Up,
        Duration::from_secs(3),
    );
    let h = &health(&lb, "checked")["198.18.2.10"];
    assert!(
        h.check
            .starts_with("http GET /healthz expecting 200 198.18.2.10:9000"),
        "{h:?}"
    );
}

/// A global counter, from `lbctl stats`.
fn global_count(lb: &Lbd, counter: &str) -> u64 {
    lb.lbctl_json(&["stats"]).expect("lbctl stats")["global"][counter]
        .as_u64()
        .unwrap_or_else(|| panic!("{counter} in lbctl stats"))
}

/// A change of health the kernel refuses leaves the running configuration, and is applied
/// with a later batch of check results once the kernel takes it: a backend that stays down
/// brings no new transition to retry it. Here backend 1 serves `web` (checked) and `other`
/// (not), so its replies need no entry while both reach it; down in `web`, they need one in
/// `REPLY_FRONTENDS`, which something else has filled.
#[test]
fn a_change_of_health_the_kernel_refused_is_applied_once_it_can_be() {
    if !e2e_enabled() {
        return;
    }
    let topo = Topology::new(2).expect("topology");
    let mut servers = stoppable_servers(&topo);
    let services = r#"
services:
  web:
    vip: 198.18.100.1
    ports: ["80:8080/tcp"]
    backends: ["198.18.2.10", "198.18.2.11"]
    health: { tcp: {}, interval: 300ms, timeout: 200ms, rise: 1, fall: 1 }
  other:
    vip: 198.18.100.2
    ports: ["80:8080/tcp"]
    backends: ["198.18.2.11"]
"#;
    let lb = start(&topo, services);
    let vip: SocketAddr = "198.18.100.1:80".parse().unwrap();
    let b1 = "198.18.2.11";
    let limit = Duration::from_secs(5);
    wait_health(&lb, "web", "198.18.2.10", Health::Up, limit);
    wait_health(&lb, "web", b1, Health::Up, limit);

    // Something else fills `REPLY_FRONTENDS`; backend 1's server stops.
    let replies = lb.fill_map::<lb_common::maps::ReplyFrontend>("REPLY_FRONTENDS");
    servers[1] = None;
    wait_health(&lb, "web", b1, Health::Down, limit);
    let refused = Instant::now();
    while !lb
        .output()
        .contains("the change of backends was not applied")
    {
        assert!(refused.elapsed() < limit, "{}", lb.output());
        std::thread::sleep(Duration::from_millis(50));
    }

    // Room again: a later batch of results applies it, with no transition of its own.
    replies.free();
    let freed = Instant::now();
    loop {
        // 20 new flows all miss a backend still in the table with a chance of 2^-20.
        let seen = spread(&topo.client, vip, 20);
        if seen.keys().collect::<Vec<_>>() == ["backend-0"] {
            break;
        }
        assert!(
            freed.elapsed() < limit,
            "backend 1 is down but still gets new flows: {seen:?}\nlbd:\n{}",
            lb.output()
        );
        std::thread::sleep(INTERVAL);
    }
    assert_eq!(health(&lb, "web")[b1].transitions, 1, "no transition since");
    assert!(
        lb.output().contains("refused before is applied now"),
        "{}",
        lb.output()
    );
    drop(lb);
    drop(servers);
}

/// An interval made shorter takes effect at once, not after the check the old interval had
/// scheduled (the interval is what an operator shortens during an incident).
#[test]
fn a_shorter_interval_takes_effect_at_once() {
    if !e2e_enabled() {
        return;
    }
    let topo = Topology::new(1).expect("topology");
    let mut servers = stoppable_servers(&topo);
    let slow = r#"
services:
  web:
    vip: 198.18.100.1
    ports: ["80:8080/tcp"]
    backends: ["198.18.2.10"]
    health: { tcp: {}, interval: 60s, timeout: 200ms, rise: 1, fall: 1 }
"#;
    let mut lb = start(&topo, slow);
    // The first check runs at start.
    wait_health(
        &lb,
        "web",
        "198.18.2.10",
        Health::Up,
        Duration::from_secs(5),
    );
    lb.reload(&slow.replace("interval: 60s", "interval: 300ms"))
        .expect("reload");
    servers[0] = None;
    let took = wait_health(
        &lb,
        "web",
        "198.18.2.10",
        Health::Down,
        Duration::from_secs(5),
    );
    println!("down {took:?} after the reload to a 300 ms interval");
}

/// A check still waiting on a silent backend does not hold the target past a reload that
/// checks it otherwise: with the old check's 30 s timeout running, a reload to a 200 ms
/// timeout finds the backend down within a second or two, not after the 30 s.
#[test]
fn a_reload_stops_a_check_still_waiting_on_the_old_timeout() {
    if !e2e_enabled() {
        return;
    }
    let topo = Topology::new(1).expect("topology");
    let _servers = topo.serve_on_backends(&[8080], &[]).expect("servers");
    // Silent from the start (its frames go to a MAC no host has): the first check waits.
    silence(&topo, "198.18.2.10");
    let slow = r#"
services:
  web:
    vip: 198.18.100.1
    ports: ["80:8080/tcp"]
    backends: ["198.18.2.10"]
    health: { tcp: {}, interval: 60s, timeout: 30s, rise: 1, fall: 1 }
"#;
    let mut lb = start(&topo, slow);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        health(&lb, "web")["198.18.2.10"].state,
        Health::Unknown,
        "its first check still waits"
    );
    lb.reload(
        &slow
            .replace("interval: 60s", "interval: 300ms")
            .replace("timeout: 30s", "timeout: 200ms"),
    )
    .expect("reload");
    let took = wait_health(
        &lb,
        "web",
        "198.18.2.10",
        Health::Down,
        Duration::from_secs(5),
    );
    println!("down {took:?} after the reload to a 200 ms timeout");
}

/// A restart starts from the checks' verdicts: a backend down before it is not served after
/// it, not even while its first check is still waiting for an answer.
#[test]
fn a_restart_keeps_a_down_backend_out() {
    if !e2e_enabled() {
        return;
    }
    let topo = Topology::new(2).expect("topology");
    let _servers = topo.serve_on_backends(&[8080], &[]).expect("servers");
    let services = r#"
services:
  web:
    vip: 198.18.100.1
    ports: ["80:8080/tcp"]
    backends: ["198.18.2.10", "198.18.2.11"]
    health: { tcp: {}, interval: 3s, timeout: 3s, rise: 1, fall: 1 }
"#;
    let mut lb = start(&topo, services);
    for backend in ["198.18.2.10", "198.18.2.11"] {
        wait_health(&lb, "web", backend, Health::Up, Duration::from_secs(5));
    }
    // Backend 1 goes silent (its frames go to a MAC no host has): each check waits 3 s.
    silence(&topo, "198.18.2.11");
    wait_health(
        &lb,
        "web",
        "198.18.2.11",
        Health::Down,
        Duration::from_secs(8),
    );
    lb.restart(&topo.node).expect("restart");
    // At once, while the restarted lbd's first check of it still waits: down, and no new
    // flow reaches it.
    assert_eq!(health(&lb, "web")["198.18.2.11"].state, Health::Down);
    let vip: SocketAddr = "198.18.100.1:80".parse().unwrap();
    let reached = spread(&topo.client, vip, 20);
    assert_eq!(
        reached.keys().collect::<Vec<_>>(),
        ["backend-0"],
        "every new flow on the up backend: {reached:?}"
    );
    // /metrics counts it down, not active.
    let metrics = lb_testkit::metrics(&topo.node).expect("metrics");
    for (state, n) in [("active", 1), ("down", 1), ("draining", 0)] {
        let series = format!("meshlb_backends{{service=\"web\",state=\"{state}\"}} {n}");
        assert!(metrics.contains(&series), "{series}:\n{metrics}");
    }
    // So does `lbctl list`'s STATE, beside its HEALTH.
    let list = lb.lbctl_json(&["list"]).expect("list");
    let states: Vec<(String, String)> = list["services"][0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| {
            let name = b["backend"].as_str().unwrap_or_default().to_owned();
            (name, b["state"].as_str().unwrap_or_default().to_owned())
        })
        .collect();
    assert_eq!(
        states,
        [
            ("198.18.2.10".to_owned(), "active".to_owned()),
            ("198.18.2.11".to_owned(), "down".to_owned())
        ],
        "{list}"
    );
    // Draining it changes no table while it is down, but it is a change made and saved.
    let (ok, out, err) = lb.lbctl(&["drain", "web", "198.18.2.11"]).expect("lbctl");
    assert!(ok, "{err}");
    assert!(!out.contains("no change"), "{out}");
}
