//! The control plane end to end: the real `lbd` and `lbctl`, real TCP and UDP traffic through
//! the node, in namespaces. Changes through the API, reloads, a kill -9 and restart, bad
//! input, the TCP API's token and `/metrics`.

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::SocketAddr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use lb_testkit::{
    Lbd, NameServer, Netns, ScratchPath, TcpSession, Topology, UdpSession, e2e_enabled,
    tcp_request, udp_request,
};

const TIMEOUT: Duration = Duration::from_secs(3);
const VIP: &str = "198.18.100.1";

fn lbd() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_lbd"))
}

fn services(backends: &str) -> String {
    format!(
        r#"
services:
  web:
    vip: {VIP}
    ports: ["80:8080/tcp", "53:5353/udp"]
    backends: [{backends}]
"#
    )
}

fn setup(backends: usize) -> (Topology, Vec<NameServer>) {
    let topo = Topology::new(backends).expect("topology");
    let servers = topo.serve_on_backends(&[8080], &[5353]).expect("servers");
    (topo, servers)
}

fn start(topo: &Topology, services: &str, extra: &[&str]) -> Lbd {
    topo.start_lbd(lbd(), services, extra).expect("lbd")
}

fn web() -> SocketAddr {
    SocketAddr::new(VIP.parse().unwrap(), 80)
}

fn dns() -> SocketAddr {
    SocketAddr::new(VIP.parse().unwrap(), 53)
}

/// Backends that `n` new TCP connections reach.
fn new_flows_reach(topo: &Topology, n: usize) -> BTreeSet<String> {
    (0..n)
        .map(|_| {
            tcp_request(&topo.client, web(), TIMEOUT)
                .expect("new connection")
                .backend
        })
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// An API service of its own, `dns`, on backend-1.
const ADD_DNS: [&str; 8] = [
    "add-service",
    "dns",
    "--vip",
    "198.18.100.2",
    "--port",
    "53:5353/udp",
    "--backend",
    "198.18.2.11",
];

/// `lbctl ARGS`, which must succeed; its stdout.
fn lbctl(lb: &Lbd, args: &[&str]) -> String {
    let (ok, out, err) = lb.lbctl(args).expect("run lbctl");
    assert!(ok, "lbctl {args:?} failed: {err}\nlbd:\n{}", lb.output());
    out
}

fn lbctl_json(lb: &Lbd, args: &[&str]) -> serde_json::Value {
    lb.lbctl_json(args)
        .unwrap_or_else(|e| panic!("{e:#}\nlbd:\n{}", lb.output()))
}

fn attachments(lb: &Lbd) -> Vec<lb_userspace::api::AttachmentStatus> {
    lb.attachments()
        .unwrap_or_else(|e| panic!("{e:#}\nlbd:\n{}", lb.output()))
}

fn generation(lb: &Lbd) -> u64 {
    lbctl_json(lb, &["status"])["generation"].as_u64().unwrap()
}

/// One HTTP/1.1 request from inside `ns`; returns (status, body).
fn http(ns: &Netns, addr: SocketAddr, request: String) -> (u16, String) {
    ns.run(move || {
        let mut stream = std::net::TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("read answer");
        let status = answer
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not HTTP: {answer}"));
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
        (status, body)
    })
    .expect("enter the node namespace")
}

fn get(path: &str, token: Option<&str>) -> String {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    format!("GET {path} HTTP/1.1\r\nHost: lbd\r\n{auth}Connection: close\r\n\r\n")
}

/// A drain of a backend the file dropped while no lbd ran lapses at the next start, as at a
/// reload: listed again later, the backend comes back with the file's weight.
#[test]
fn a_drain_lapses_when_the_file_drops_its_backend_while_lbd_is_stopped() {
    if !e2e_enabled() {
        return;
    }
    let (topo, _servers) = setup(2);
    let both = services(r#""198.18.2.10", "198.18.2.11""#);
    let mut lb = start(&topo, &both, &[]);
    lbctl(&lb, &["drain", "web", "198.18.2.11"]);
    assert_eq!(new_flows_reach(&topo, 20), set(&["backend-0"]));
    // Written while lbd runs with no file watch: read at the restart.
    std::fs::write(lb.config_path(), services(r#""198.18.2.10""#)).unwrap();
    lb.restart(&topo.node).expect("restart");
    lb.reload(&both).expect("reload");
    // 2^-30 that 30 connections miss one of two equal backends.
    assert_eq!(
        new_flows_reach(&topo, 30),
        set(&["backend-0", "backend-1"]),
        "the old drain came back:\n{}",
        lb.output()
    );
}

/// Removing or draining a service's last usable backend is allowed, and the answer says the
/// service now refuses new connections, in text and in JSON.
#[test]
fn lbctl_says_when_a_change_leaves_a_service_without_a_usable_backend() {
    if !e2e_enabled() {
        return;
    }
    let (topo, _servers) = setup(2);
    let lb = start(&topo, &services(r#""198.18.2.10", "198.18.2.11""#), &[]);
    let out = lbctl(&lb, &["drain", "web", "198.18.2.10"]);
    assert!(!out.contains("no usable backend"), "one is left: {out}");
    let out = lbctl(&lb, &["remove-backend", "web", "198.18.2.11"]);
    assert!(
        out.contains("warning: web has no usable backend now: new connections are refused"),
        "{out}"
    );
    let json = lbctl_json(
        &lb,
        &["add-backend", "web", "198.18.2.12:8080", "--weight", "0"],
    );
    assert!(
        json["warnings"][0]
            .as_str()
            .is_some_and(|w| w.starts_with("web has no usable backend now")),
        "{json}"
    );
    let json = lbctl_json(&lb, &["add-backend", "web", "198.18.2.10"]);
    assert_eq!(
        json["warnings"],
        serde_json::json!([]),
        "back in service: {json}"
    );
}

#[test]
fn lbctl_changes_where_new_flows_go_while_established_connections_keep_working() {
    if !e2e_enabled() {
        return;
    }
    let (topo, _servers) = setup(3);
    let mut lb = start(&topo, &services(r#""198.18.2.10", "198.18.2.11""#), &[]);
    assert_eq!(new_flows_reach(&topo, 30), set(&["backend-0", "backend-1"]));
    // Both backends must get sessions: 24 random client ports miss one with a chance of
    // 2 × 2^-24 ≈ 1e-7 (16: 3e-5).
    let mut sessions: Vec<(TcpSession, String)> = (0..24)
        .map(|_| {
            let mut s = TcpSession::connect(&topo.client, web(), TIMEOUT).unwrap();
            let backend = s.request().unwrap().backend;
            (s, backend)
        })
        .collect();
    assert!(sessions.iter().any(|(_, b)| b == "backend-0"));
    assert!(sessions.iter().any(|(_, b)| b == "backend-1"));
    let keep_working = |sessions: &mut Vec<(TcpSession, String)>, skip: Option<&str>| {
        for (s, backend) in sessions.iter_mut() {
            if Some(backend.as_str()) == skip {
                continue;
            }
            assert_eq!(
                &s.request().expect("established connection").backend,
                backend
            );
        }
    };

    // add-backend: the first new flow on backend-2 comes within a second of the command.
    let out = lbctl(&lb, &["add-backend", "web", "198.18.2.12"]);
    let added = Instant::now();
    assert!(out.contains("backend 198.18.2.12 added, weight 1"), "{out}");
    let mut reached = false;
    while added.elapsed() < Duration::from_secs(1) {
        if tcp_request(&topo.client, web(), TIMEOUT).unwrap().backend == "backend-2" {
            reached = true;
            break;
        }
    }
    assert!(reached, "no new flow reached the added backend within 1 s");
    keep_working(&mut sessions, None);

    // drain: no new flows to backend-0; its connections continue. Named as `lbctl list`
    // shows it (a backend listed without a port, reached at both of web's ports).
    let out = lbctl(&lb, &["drain", "web", "198.18.2.10:5353,8080"]);
    assert!(
        out.starts_with("web: backend 198.18.2.10 draining ("),
        "{out}"
    );
    assert_eq!(new_flows_reach(&topo, 40), set(&["backend-1", "backend-2"]));
    keep_working(&mut sessions, None);

    // remove-backend: backend-1 gets nothing new; its connections learn at once (move).
    let out = lbctl(&lb, &["remove-backend", "web", "198.18.2.11"]);
    assert!(
        out.starts_with("web: backend 198.18.2.11 removed ("),
        "{out}"
    );
    assert_eq!(new_flows_reach(&topo, 30), set(&["backend-2"]));
    keep_working(&mut sessions, Some("backend-1"));
    for (s, backend) in sessions.iter_mut().filter(|(_, b)| b == "backend-1") {
        let started = Instant::now();
        let result = s.request();
        assert!(
            result.is_err() && started.elapsed() < Duration::from_millis(1500),
            "{backend}: a connection to a removed backend fails fast: {result:?}"
        );
    }

    // What lbctl shows: the file service with the API's edits laid over it.
    let list = lbctl_json(&lb, &["list"]);
    let web_entry = &list["services"][0];
    assert_eq!(web_entry["name"], "web");
    assert_eq!(web_entry["edited"], true, "{list}");
    let backends: Vec<(String, u64, String)> = web_entry["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["backend"].as_str().unwrap().to_owned(),
                b["weight"].as_u64().unwrap(),
                b["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        backends,
        [
            ("198.18.2.10".into(), 0, "draining".into()),
            ("198.18.2.12".into(), 1, "active".into())
        ]
    );
    let table = lbctl(&lb, &["list"]);
    assert!(
        table.contains("file+api") && table.contains("draining"),
        "{table}"
    );

    // Stats, flows and explain read the live maps.
    let stats = lbctl_json(&lb, &["stats"]);
    let tcp = stats["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["frontend"] == "80:8080/tcp")
        .expect("the TCP service");
    let b2 = tcp["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["target"] == "198.18.2.12:8080")
        .unwrap();
    assert!(b2["totals"]["new_flows"].as_u64().unwrap() >= 30, "{stats}");
    let flows = lbctl_json(&lb, &["flows", "web", "--limit", "5"]);
    assert_eq!(flows["flows"].as_array().unwrap().len(), 5, "{flows}");
    let (session, backend) = sessions
        .iter()
        .find(|(_, b)| b == "backend-0")
        .expect("a session on backend-0");
    let explained = lbctl_json(
        &lb,
        &[
            "explain",
            "tcp",
            &session.local_addr().to_string(),
            &web().to_string(),
        ],
    );
    assert_eq!(
        explained["tracked"]["backend"], "198.18.2.10:8080",
        "{backend}: {explained}"
    );
    assert_eq!(explained["tracked"]["tcp_state"], "established");
    // The backend has one frontend, the VIP: any node translates its replies, entry or not.
    let replies = explained["replies"].as_str().unwrap_or_default();
    assert!(
        replies.contains(&format!("from {} on any node", web())),
        "{explained}"
    );

    // An address that is no frontend: said once, with no "new flow" line before it.
    let out = lbctl(
        &lb,
        &["explain", "tcp", "198.18.1.2:40000", "198.18.100.77:80"],
    );
    assert_eq!(out.trim(), "not a frontend: passed to the kernel untouched");
    // From the service file instead: the same answer's shape, with nothing said of tracking
    // (a file cannot know it).
    let config = lb.config_path().display().to_string();
    let offline = [
        "explain",
        "tcp",
        "198.18.1.2:40000",
        &web().to_string(),
        "-c",
        &config,
    ];
    let answer = lbctl_json(&lb, &offline);
    assert!(answer["tracked"].is_null(), "{answer}");
    assert_eq!(answer["frontend"], true, "{answer}");
    let selection = answer["selection"].as_str().unwrap_or_default();
    assert!(selection.contains("(maglev: hash"), "{answer}");
    let text = lbctl(&lb, &offline);
    assert!(
        text.starts_with(selection) && !text.contains("not tracked"),
        "{text}"
    );

    // Errors: one line, non-zero exit, nothing changed.
    let before = generation(&lb);
    for args in [
        &["remove-backend", "web", "198.18.2.99"][..],
        &["add-backend", "nope", "198.18.2.10"],
        &["add-backend", "web", "not-an-address"],
        &["remove-service", "web"],
    ] {
        let (ok, _, err) = lb.lbctl(args).unwrap();
        assert!(!ok, "lbctl {args:?} must fail");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.starts_with("lbctl: "), "{err}");
    }
    // A weight out of range is refused by lbctl, naming its flag; a file's mistake names the
    // file, not lbd's request body.
    let (ok, _, err) = lb
        .lbctl(&["add-backend", "web", "198.18.2.12", "--weight", "70000"])
        .unwrap();
    assert!(!ok && err.contains("--weight"), "{err}");
    let (ok, _, err) = lb
        .lbctl(&["add-service", "dns", "--port", "53/udp", "--port", "0/udp"])
        .unwrap();
    assert!(
        !ok && err.starts_with("lbctl: --port: port 0 in \"0/udp\""),
        "{err}"
    );
    let bad = lb_testkit::ScratchPath::temp("bad-apply", ".yaml");
    std::fs::write(&*bad, "services:\n  dns:\n    ports: [\"0/udp\"]\n").unwrap();
    let (ok, _, err) = lb.lbctl(&["apply", "-f", bad.arg()]).unwrap();
    assert!(!ok, "a bad file must be refused");
    assert!(
        err.contains(bad.arg()) && err.contains("ports[0]"),
        "names the file and the field: {err}"
    );
    assert_eq!(generation(&lb), before);

    // Services of the API's own: added, applied declaratively (idempotent), removed.
    let out = lbctl(&lb, &ADD_DNS);
    assert!(out.contains("added service dns"), "{out}");
    let dns2: SocketAddr = "198.18.100.2:53".parse().unwrap();
    assert_eq!(
        udp_request(&topo.client, dns2, TIMEOUT).unwrap().backend,
        "backend-1"
    );
    let file = lb.state_dir().join("apply.yaml");
    std::fs::write(
        &file,
        "services:\n  dns:\n    vip: 198.18.100.2\n    ports: [\"53:5353/udp\"]\n    backends: [\"198.18.2.12\"]\n",
    )
    .unwrap();
    let out = lbctl(&lb, &["apply", "-f", file.to_str().unwrap()]);
    assert_eq!(out.trim(), "changed dns", "{out}");
    let out = lbctl(&lb, &["apply", "-f", file.to_str().unwrap()]);
    assert!(out.starts_with("no change"), "{out}");
    assert_eq!(
        udp_request(&topo.client, dns2, TIMEOUT).unwrap().backend,
        "backend-2"
    );
    let list = lbctl(&lb, &["list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("dns") && l.contains(" api ")),
        "{list}"
    );
    lbctl(&lb, &["remove-service", "dns"]);
    assert!(udp_request(&topo.client, dns2, Duration::from_millis(300)).is_err());

    // API changes survive a restart of lbd.
    lb.restart(&topo.node).expect("restart");
    assert_eq!(new_flows_reach(&topo, 20), set(&["backend-2"]));
    keep_working(&mut sessions, Some("backend-1"));
    let list = lbctl_json(&lb, &["list"]);
    assert_eq!(list["services"][0]["backends"].as_array().unwrap().len(), 2);

    // add-backend says what it did to a backend the service has: the drained one back (to
    // the file's weight), then re-weighted, then the same again.
    let out = lbctl(&lb, &["add-backend", "web", "198.18.2.10"]);
    assert!(
        out.starts_with("web: backend 198.18.2.10 back in service, weight 1 ("),
        "{out}"
    );
    let out = lbctl(&lb, &["add-backend", "web", "198.18.2.10", "--weight", "3"]);
    assert!(
        out.starts_with("web: backend 198.18.2.10 weight 1 -> 3 ("),
        "{out}"
    );
    let out = lbctl(&lb, &["add-backend", "web", "198.18.2.10", "--weight", "3"]);
    assert!(out.contains(": no change"), "{out}");
}

#[test]
fn nothing_is_lost_across_ten_reloads_and_a_kill_and_restart() {
    if !e2e_enabled() {
        return;
    }
    let (topo, _servers) = setup(3);
    let file_a = services(r#""198.18.2.10", "198.18.2.11""#);
    // Every reload swaps web's tables (a third backend comes and goes) and adds or removes
    // a second service; tracked flows keep their backends throughout.
    let file_b = format!(
        "{}  other:\n    vip: 198.18.100.2\n    ports: [\"80:8080/tcp\"]\n    backends: [\"198.18.2.11\"]\n",
        services(r#""198.18.2.10", "198.18.2.11", "198.18.2.12""#)
    );
    let mut lb = start(&topo, &file_a, &[]);
    let mut sessions: Vec<(TcpSession, String)> = (0..8)
        .map(|_| {
            let mut s = TcpSession::connect(&topo.client, web(), TIMEOUT).unwrap();
            let backend = s.request().unwrap().backend;
            (s, backend)
        })
        .collect();

    // A continuous UDP stream on one flow, and the TCP connections, all the way through.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicU64::new(0));
    let stream = {
        let (stop, sent, lost) = (stop.clone(), sent.clone(), lost.clone());
        let client = &topo.client;
        let mut udp = UdpSession::bind(client, dns(), Duration::from_secs(1)).unwrap();
        let first = udp.request().unwrap().backend;
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut moved = 0;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                sent.fetch_add(1, Ordering::Relaxed);
                match udp.request() {
                    Ok(reply) if reply.backend == first => {}
                    Ok(_) => moved += 1,
                    Err(_) => {
                        lost.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            moved
        })
    };

    for i in 0..10 {
        let answer = lb
            .reload(if i % 2 == 0 { &file_b } else { &file_a })
            .unwrap();
        assert!(answer.contains("reloaded"), "reload {i}: {answer}");
        for (s, backend) in sessions.iter_mut() {
            assert_eq!(&s.request().expect("TCP across reloads").backend, backend);
        }
    }
    let modes = |lb: &Lbd| -> Vec<(String, String)> {
        attachments(lb)
            .into_iter()
            .map(|a| (a.interface, a.mode))
            .collect()
    };
    let modes_before = modes(&lb);
    // `--xdp-mode auto` (the default): generic on the client's veth and on the bridge.
    assert!(
        !modes_before.is_empty() && modes_before.iter().all(|(_, m)| m == "generic"),
        "{modes_before:?}"
    );
    lb.kill().expect("kill -9");
    // With lbd dead, the pinned program keeps forwarding: 50 more exchanges of the stream
    // (every one is checked at the end), waited for rather than given a fixed time, which
    // a loaded machine may not fill.
    let before = sent.load(Ordering::Relaxed);
    let dead = Instant::now();
    while sent.load(Ordering::Relaxed) <= before + 50 {
        assert!(
            dead.elapsed() < Duration::from_secs(10),
            "the stream stopped with lbd dead: {} exchanges in 10 s",
            sent.load(Ordering::Relaxed) - before
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for (s, backend) in sessions.iter_mut() {
        assert_eq!(
            &s.request().expect("TCP while lbd is dead").backend,
            backend
        );
    }
    // And as after an upgrade from the version whose endpoint filters had one-byte slots:
    // pins of that layout in the filters' place. The new lbd makes both anew and marks them
    // before its program replaces the running one, which keeps its own filters until then.
    for name in ["FORWARD_FILTER", "REPLY_FILTER"] {
        std::fs::remove_file(lb.pin_dir().join("maps").join(name)).expect(name);
        pin_map(lb.pin_dir(), name, earlier_endpoint_filter());
    }
    lb.restart(&topo.node).expect("restart after kill -9");
    assert!(lb.output().contains("made anew"), "{}", lb.output());
    let adopted = attachments(&lb);
    assert!(
        adopted.iter().all(|a| a.adopted),
        "the new lbd adopts the pinned links: {adopted:?}"
    );
    // Each adopted link reports the mode the kernel runs it in (the bridge takes only generic
    // XDP), not the mode asked for.
    assert_eq!(modes(&lb), modes_before);
    assert!(
        modes_before.contains(&(topo.node_bridge.clone(), "generic".to_owned())),
        "{modes_before:?}"
    );
    assert!(lb.output().contains("ids recovered"), "{}", lb.output());
    for (s, backend) in sessions.iter_mut() {
        assert_eq!(&s.request().expect("TCP after restart").backend, backend);
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let moved = stream.join().expect("stream thread");
    let (sent, lost) = (sent.load(Ordering::Relaxed), lost.load(Ordering::Relaxed));
    assert!(sent > 200, "the UDP stream ran: {sent} requests");
    assert_eq!(lost, 0, "{lost} of {sent} UDP requests lost");
    assert_eq!(moved, 0, "the UDP flow kept its backend");
    // The connection table survived the restart: still one tracked flow per connection.
    let flows = lbctl_json(&lb, &["flows", "web", "--limit", "100"]);
    assert!(
        flows["flows"].as_array().unwrap().len() > sessions.len(),
        "{flows}"
    );
}

#[test]
fn a_backend_removed_while_lbd_was_down_has_its_flows_moved_after_the_restart() {
    if !e2e_enabled() {
        return;
    }
    let (topo, _servers) = setup(2);
    let mut lb = start(&topo, &services(r#""198.18.2.10", "198.18.2.11""#), &[]);
    // UDP flows until both backends hold some (bounded: Maglev spreads 16 flows over two).
    let mut flows: Vec<(UdpSession, String)> = (0..16)
        .map(|_| {
            let mut udp = UdpSession::bind(&topo.client, dns(), TIMEOUT).unwrap();
            let backend = udp.request().expect("UDP request").backend;
            (udp, backend)
        })
        .collect();
    let on = |flows: &[(UdpSession, String)], name: &str| {
        flows.iter().filter(|(_, b)| b == name).count()
    };
    assert!(
        on(&flows, "backend-0") > 0 && on(&flows, "backend-1") > 0,
        "16 flows over two backends: {} and {}",
        on(&flows, "backend-0"),
        on(&flows, "backend-1")
    );
    // Removed from the file while no lbd runs: the next one starts from the pinned maps,
    // where the connection table still names 198.18.2.11 for its flows.
    lb.kill().expect("kill -9");
    std::fs::write(lb.config_path(), services(r#""198.18.2.10""#)).expect("rewrite the file");
    lb.restart(&topo.node).expect("restart");
    assert!(lb.output().contains("ids recovered"), "{}", lb.output());
    // `on_backend_removal: move` (the default), as after a live removal: the removed
    // backend's flows answer from the one left, and the others keep theirs.
    for (udp, backend) in &mut flows {
        let reply = udp.request().unwrap_or_else(|e| {
            panic!(
                "a flow of {backend} after the restart: {e:#}\nlbd:\n{}",
                lb.output()
            )
        });
        assert_eq!(reply.backend, "backend-0", "a flow first on {backend}");
    }
    let listed = lbctl_json(&lb, &["list"]);
    assert!(!listed.to_string().contains("198.18.2.11"), "{listed}");
}

/// An adopting start that cannot attach (an interface listed that does not exist) fails
/// before it touches the pinned maps: the previous programs, still attached, keep serving
/// the configuration they had, not half of the new one.
#[test]
fn an_adopting_start_that_cannot_attach_leaves_the_pinned_maps_as_they_were() {
    if !e2e_enabled() {
        return;
    }
    let (topo, _servers) = setup(2);
    let mut lb = start(&topo, &services(r#""198.18.2.10", "198.18.2.11""#), &[]);
    assert_eq!(new_flows_reach(&topo, 20), set(&["backend-0", "backend-1"]));
    lb.kill().expect("kill -9");
    std::fs::write(lb.config_path(), services(r#""198.18.2.10""#)).expect("rewrite the file");
    let e = lb
        .restart_with(&topo.node, &["--interface", "mlb-nope0"])
        .expect_err("no such interface");
    assert!(format!("{e:#}").contains("mlb-nope0"), "{e:#}");
    assert_eq!(
        new_flows_reach(&topo, 20),
        set(&["backend-0", "backend-1"]),
        "the pinned maps still hold the running configuration"
    );
    lb.restart(&topo.node).expect("restart");
    assert_eq!(new_flows_reach(&topo, 20), set(&["backend-0"]));
}

/// An adopting start that fails after it rewrote the shared maps (here at the first interface
/// it lists, which runs another XDP program) leaves the previous programs running on them,
/// with the endpoint filters they were loaded with: they must still translate the replies of
/// a backend added while no lbd ran, which the maps now give new flows to.
#[test]
fn a_failed_adopting_start_leaves_the_previous_programs_translating_a_new_backends_replies() {
    if !e2e_enabled() {
        return;
    }
    const BUSY: &str = "mlb-busy0";
    let (topo, _servers) = setup(2);
    topo.node
        .ip_batch(&[
            format!("link add {BUSY} type veth peer name mlb-busy1"),
            format!("link set {BUSY} up"),
            "link set mlb-busy1 up".to_owned(),
        ])
        .expect("veth");
    // The interfaces come from the file, so that the restart lists the busy one first.
    let file = |backends: &str, interfaces: &[&str]| {
        format!(
            "lbd:\n  interfaces: [{}]\n{}",
            interfaces.join(", "),
            services(backends)
        )
    };
    let served = [topo.node_client_if.as_str(), topo.node_bridge.as_str()];
    let mut lb = Lbd::start(
        lbd(),
        &topo.node,
        &file(r#""198.18.2.10""#, &served),
        &[],
        &[],
    )
    .expect("lbd");
    assert_eq!(new_flows_reach(&topo, 4), set(&["backend-0"]));
    // Another XDP program on the busy interface: a second lbd of its own pins.
    let _other = Lbd::start(
        lbd(),
        &topo.node,
        &services(r#""198.18.2.10""#),
        &[BUSY],
        &["--metrics", "127.0.0.1:9465"],
    )
    .expect("the other lbd");
    lb.stop_keeping_pins().expect("SIGTERM");
    let listed = [BUSY, served[0], served[1]];
    std::fs::write(
        lb.config_path(),
        file(r#""198.18.2.10", "198.18.2.11""#, &listed),
    )
    .expect("rewrite the file");
    let e = lb.restart(&topo.node).expect_err("the busy interface");
    assert!(
        format!("{e:#}").contains("already runs XDP program"),
        "{e:#}"
    );
    // The maps give new flows to backend-1 now; the previous programs still serve.
    let mut reached = BTreeSet::new();
    for i in 0..20 {
        match tcp_request(&topo.client, web(), TIMEOUT) {
            Ok(reply) => reached.insert(reply.backend),
            Err(e) => panic!("new connection {i} after the failed start: {e:#}"),
        };
    }
    assert_eq!(reached, set(&["backend-0", "backend-1"]));
}

/// The kernel service id of frontend `frontend` (TCP) in `lb`'s pinned `FRONTENDS`.
fn frontend_service_id(lb: &Lbd, frontend: SocketAddr) -> u32 {
    use aya::maps::{HashMap, Map, MapData};
    let data = lb.pinned_map("FRONTENDS");
    let map: HashMap<MapData, lb_common::maps::EndpointKey, lb_common::maps::Service> =
        HashMap::try_from(Map::HashMap(data)).expect("hash map");
    let key = lb_common::maps::EndpointKey::new(
        lb_common::Addr::from(frontend.ip()),
        frontend.port().to_be(),
        lb_common::maps::proto::TCP,
    );
    map.get(&key, 0).expect("the frontend is written").id
}

/// The length (slot `TABLE_LEN_SLOT`) of service `id`'s selection table in `lb`'s pinned
/// `SERVICE_TABLES`: 0 for an empty table.
fn table_len(lb: &Lbd, id: u32) -> u32 {
    use aya::maps::{Array, ArrayOfMaps, Map, MapData};
    use lb_common::maps::{SLOTS_PER_ELEMENT, TABLE_LEN_SLOT, TableElement};
    let data = lb.pinned_map("SERVICE_TABLES");
    let tables: ArrayOfMaps<MapData, Array<MapData, TableElement>> =
        ArrayOfMaps::try_from(Map::ArrayOfMaps(data)).expect("array of maps");
    let table = tables.get(&id, 0).expect("a table");
    let element = table.get(&(TABLE_LEN_SLOT / SLOTS_PER_ELEMENT), 0);
    element.map_or(0, |e| e[(TABLE_LEN_SLOT % SLOTS_PER_ELEMENT) as usize])
}

/// A service removed from the file while no lbd runs: the adopting lbd takes its frontend
/// away and empties its table too (it held its memory until its id was given out again).
#[test]
fn a_service_removed_while_no_lbd_runs_leaves_no_table() {
    if !e2e_enabled() {
        return;
    }
    let (topo, _servers) = setup(2);
    let other: SocketAddr = "198.18.100.2:80".parse().unwrap();
    let both = format!(
        "{}  other:\n    vip: {}\n    ports: [\"80:8080/tcp\"]\n    backends: [\"198.18.2.11\"]\n",
        services(r#""198.18.2.10""#),
        other.ip()
    );
    let mut lb = start(&topo, &both, &[]);
    let id = frontend_service_id(&lb, other);
    assert!(table_len(&lb, id) > 0, "other's table is filled");
    lb.kill().expect("kill -9");
    std::fs::write(lb.config_path(), services(r#""198.18.2.10""#)).expect("rewrite the file");
    lb.restart(&topo.node).expect("restart");
    assert!(lb.output().contains("ids recovered"), "{}", lb.output());
    assert_eq!(
        table_len(&lb, id),
        0,
        "the removed service's table is emptied"
    );
    assert_eq!(
        tcp_request(&topo.client, web(), TIMEOUT).unwrap().backend,
        "backend-0"
    );
}

/// How many tcx ingress programs interface `name` of `ns` runs.
fn tcx_programs(ns: &Netns, name: &str) -> usize {
    use aya::programs::{SchedClassifier, tc::TcAttachType};
    ns.run(|| SchedClassifier::query_tcx(name, TcAttachType::Ingress))
        .expect("enter the namespace")
        .unwrap_or_else(|e| panic!("tcx programs of {name}: {e}"))
        .1
        .len()
}

/// The TC program forwards whatever frame carries a hand-off (`Handoff`), which only the XDP
/// program keeps off the wire: an interface meshlb's XDP program cannot be attached to keeps
/// no TC program of its either (one pinned there before the XDP attach failed is taken off).
#[test]
fn an_interface_whose_xdp_attach_fails_keeps_no_tc_program() {
    if !e2e_enabled() {
        return;
    }
    use lb_userspace::{
        dataplane::{Dataplane, LoadOptions},
        source::settings::XdpMode,
    };
    let ns = Netns::new("xdpfail").expect("namespace");
    ns.ip_batch(&[
        "link add mlb-x0 type veth peer name mlb-x1",
        "link set mlb-x0 up",
        "link set mlb-x1 up",
    ])
    .expect("veth");
    ns.set_sysctls(&[("net.ipv4.ip_forward", "1")])
        .expect("forwarding");
    let dir = scratch_pin_dir();
    let (error, tcx) = ns
        .run(|| {
            // Another XDP program in the way: a dataplane of its own, without pins.
            let mut other = Dataplane::load(LoadOptions::default()).expect("load");
            other
                .attach("mlb-x0", XdpMode::Generic)
                .expect("the other dataplane attaches");
            let mut pinned = Dataplane::load(LoadOptions {
                pin_dir: Some(dir.to_path_buf()),
                ..LoadOptions::default()
            })
            .expect("load with pins");
            let error = match pinned.attach("mlb-x0", XdpMode::Generic) {
                Ok(_) => panic!("attached where another XDP program runs"),
                Err(e) => e.to_string(),
            };
            // A link whose pin is removed is freed by a kernel worker: asked for up to a second.
            let tcx = || {
                aya::programs::SchedClassifier::query_tcx(
                    "mlb-x0",
                    aya::programs::tc::TcAttachType::Ingress,
                )
                .expect("tcx programs")
                .1
                .len()
            };
            let mut programs = tcx();
            for _ in 0..50 {
                if programs == 1 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
                programs = tcx();
            }
            (error, programs)
        })
        .expect("enter the namespace");
    assert!(error.contains("already runs XDP program"), "{error}");
    assert_eq!(tcx, 1, "only the other dataplane's TC program");
    let tc_pins = std::fs::read_dir(dir.join("links/tc"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(tc_pins, 0, "no tcx link left pinned");
}

/// An interface whose MAC is the hand-off address would have every frame sent to it taken by
/// the TC program for a hand-off: lbd says so when it attaches (a random address; no one
/// should meet it, but it is named if they do).
#[test]
fn an_interface_with_the_hand_off_address_is_named() {
    if !e2e_enabled() {
        return;
    }
    let ns = Netns::new("hoaddr").expect("namespace");
    ns.ip_batch(&[
        "link add mlb-h0 address 9e:4b:d1:37:66:01 type veth peer name mlb-h1",
        "link set mlb-h0 up",
        "link set mlb-h1 up",
    ])
    .expect("veth");
    ns.set_sysctls(&[("net.ipv4.ip_forward", "1")])
        .expect("forwarding");
    let lb = Lbd::start(lbd(), &ns, &services(r#""198.18.2.10""#), &["mlb-h0"], &[]).expect("lbd");
    let output = lb.output();
    assert!(
        output.contains("this interface's MAC is meshlb's hand-off address")
            && output.contains("mlb-h0"),
        "{output}"
    );
}

/// Whether interface `name` of `ns` runs an XDP program or a tcx ingress program.
fn runs_programs(ns: &Netns, name: &str) -> (bool, usize) {
    (
        ns.xdp_attached(name).expect("ip link"),
        tcx_programs(ns, name),
    )
}

#[test]
fn an_interface_renamed_while_lbd_was_stopped_keeps_no_program_and_its_name_gets_them() {
    if !e2e_enabled() {
        return;
    }
    const RENAMED: &str = "mlb-cli-old";
    let (topo, _servers) = setup(2);
    let (node, client_if) = (&topo.node, topo.node_client_if.as_str());
    let mut lb = start(&topo, &services(r#""198.18.2.10", "198.18.2.11""#), &[]);
    assert_eq!(new_flows_reach(&topo, 16), set(&["backend-0", "backend-1"]));
    // Stopped, its links pinned under the interface's name; meanwhile the interface is
    // renamed and another made under its name, through which the client reaches the node.
    lb.stop_keeping_pins().expect("SIGTERM");
    topo.rename_client_link(RENAMED).expect("rename the link");
    assert_eq!(
        runs_programs(node, RENAMED),
        (true, 1),
        "the pinned links follow"
    );
    assert_eq!(runs_programs(node, client_if), (false, 0));
    lb.restart(node).expect("restart");
    // The programs run on the interface of the name lbd was given, and nothing is left on
    // the renamed one.
    assert_eq!(
        runs_programs(node, client_if),
        (true, 1),
        "the new {client_if}\nlbd:\n{}",
        lb.output()
    );
    assert_eq!(
        runs_programs(node, RENAMED),
        (false, 0),
        "the renamed {RENAMED}\nlbd:\n{}",
        lb.output()
    );
    assert!(
        lb.output().contains("attached to another device"),
        "{}",
        lb.output()
    );
    let all = attachments(&lb);
    let attachment = all
        .iter()
        .find(|a| a.interface == client_if)
        .unwrap_or_else(|| panic!("no attachment of {client_if}: {all:?}"));
    assert!(!attachment.adopted, "{all:?}");
    // Balanced through the new interface (the client's neighbour entry is new: a few tries).
    let answered = (0..10).any(|_| tcp_request(&topo.client, web(), TIMEOUT).is_ok());
    assert!(answered, "the VIP answers through the new {client_if}");
    assert_eq!(new_flows_reach(&topo, 16), set(&["backend-0", "backend-1"]));
    // Stopped for good (its pins removed): nothing stays attached to either interface. The
    // kernel detaches a link whose last reference went a moment later (bounded).
    lb.stop().expect("stop lbd");
    let detached = |name: &str| {
        (0..40).any(|_| {
            let none = runs_programs(node, name) == (false, 0);
            if !none {
                std::thread::sleep(Duration::from_millis(50));
            }
            none
        })
    };
    assert!(detached(client_if) && detached(RENAMED), "after the stop");
}

/// An interface renamed while lbd was stopped (and no other made under its old name): its
/// pinned links, named after the old name, are adopted for the new one, so a restart with
/// the new name starts (attaching afresh found meshlb's own program in the way) and a
/// connection open before keeps working.
#[test]
fn an_interface_renamed_while_lbd_was_stopped_is_adopted_under_its_new_name() {
    if !e2e_enabled() {
        return;
    }
    const RENAMED: &str = "mlb-cli-new";
    let (topo, _servers) = setup(2);
    let client_if = topo.node_client_if.clone();
    // The interfaces come from the file, so that the restart names the new one alone.
    let file = |interface: &str| {
        format!(
            "lbd:\n  interfaces: [{interface}, {}]\n{}",
            topo.node_bridge,
            services(r#""198.18.2.10", "198.18.2.11""#)
        )
    };
    let mut lb = Lbd::start(lbd(), &topo.node, &file(&client_if), &[], &[]).expect("lbd");
    let mut session = TcpSession::connect(&topo.client, web(), TIMEOUT).unwrap();
    let backend = session
        .request()
        .expect("request before the restart")
        .backend;
    lb.stop_keeping_pins().expect("SIGTERM");
    topo.node
        .ip_batch(&[
            format!("link set {client_if} down"),
            format!("link set {client_if} name {RENAMED}"),
            format!("link set {RENAMED} up"),
        ])
        .expect("rename the link");
    std::fs::write(lb.config_path(), file(RENAMED)).expect("rewrite the file");
    lb.restart(&topo.node)
        .unwrap_or_else(|e| panic!("restart with the renamed interface: {e:#}"));
    let all = attachments(&lb);
    let attachment = all
        .iter()
        .find(|a| a.interface == RENAMED)
        .unwrap_or_else(|| panic!("no attachment of {RENAMED}: {all:?}"));
    assert!(attachment.adopted, "{all:?}");
    assert_eq!(
        runs_programs(&topo.node, RENAMED),
        (true, 1),
        "one XDP and one tcx program\nlbd:\n{}",
        lb.output()
    );
    let reply = session
        .request()
        .unwrap_or_else(|e| panic!("the connection open before: {e:#}\nlbd:\n{}", lb.output()));
    assert_eq!(reply.backend, backend);
}

#[test]
fn connections_kept_on_a_removed_backend_keep_working_across_a_restart() {
    if !e2e_enabled() {
        return;
    }
    use aya::maps::{HashMap, Map, MapData};
    use lb_common::maps::EndpointKey;
    let (topo, _servers) = setup(2);
    let with = |backends: &str| {
        services(backends).replace(
            "    backends:",
            "    on_backend_removal: keep\n    backends:",
        )
    };
    // `idle` never gets a flow: its endpoint lingers after the reload with no reply to wait for.
    let idle = "  idle:\n    vip: 198.18.100.2\n    ports: [\"80:9999/tcp\"]\n    backends: [\"198.18.2.10\"]\n";
    let mut lb = start(
        &topo,
        &format!("{}{idle}", with(r#""198.18.2.10", "198.18.2.11""#)),
        &[],
    );
    // TCP connections until some are on backend 1 (bounded: Maglev spreads 16 over two).
    let mut sessions: Vec<(TcpSession, String)> = (0..16)
        .map(|_| {
            let mut s = TcpSession::connect(&topo.client, web(), TIMEOUT).unwrap();
            let backend = s.request().unwrap().backend;
            (s, backend)
        })
        .collect();
    let kept = sessions.iter().filter(|(_, b)| b == "backend-1").count();
    assert!(kept > 0 && kept < 16, "{kept} of 16 on backend-1");
    // Removed, with `keep`: its connections stay on it, through a reload and then a kill -9
    // and restart (their replies still translated: its endpoint stays in the kernel).
    let answer = lb.reload(&with(r#""198.18.2.10""#)).unwrap();
    assert!(answer.contains("reloaded"), "{answer}");
    for (s, backend) in sessions.iter_mut() {
        assert_eq!(&s.request().expect("TCP after the reload").backend, backend);
    }
    let endpoints = |lb: &Lbd| -> BTreeSet<(String, u16)> {
        let map: HashMap<MapData, EndpointKey, u32> =
            HashMap::try_from(Map::HashMap(lb.pinned_map("BACKEND_ENDPOINTS")))
                .expect("BACKEND_ENDPOINTS");
        map.keys()
            .map(|k| {
                let k = k.expect("a key");
                (
                    std::net::IpAddr::from(k.addr).to_string(),
                    u16::from_be(k.port_be),
                )
            })
            .collect()
    };
    let lingering = ("198.18.2.11".to_owned(), 8080);
    let unused = ("198.18.2.10".to_owned(), 9999);
    let before = endpoints(&lb);
    assert!(
        before.contains(&lingering) && before.contains(&unused),
        "{before:?}"
    );
    lb.kill().expect("kill -9");
    lb.restart(&topo.node).expect("restart");
    for (s, backend) in sessions.iter_mut() {
        let reply = s.request().unwrap_or_else(|e| {
            panic!(
                "a connection on {backend} after the restart: {e:#}\nlbd:\n{}",
                lb.output()
            )
        });
        assert_eq!(&reply.backend, backend);
    }
    // The endpoint its connections reply from stays; one no flow replies from goes.
    let after = endpoints(&lb);
    assert!(
        after.contains(&lingering) && !after.contains(&unused),
        "{after:?}"
    );
    // New connections go to the backend left.
    assert_eq!(new_flows_reach(&topo, 8), set(&["backend-0"]));
}

#[test]
fn renaming_a_service_under_new_flows_drops_none_of_them() {
    if !e2e_enabled() {
        return;
    }
    let (topo, _servers) = setup(2);
    let file_a = services(r#""198.18.2.10", "198.18.2.11""#);
    // The same frontends under another name: another service id, so each reload removes a
    // service (its table emptied) and points its frontends at a new one. The old table may
    // be emptied only once no frontend leads to it.
    let file_b = file_a.replace("  web:", "  web_renamed:");
    assert_ne!(file_a, file_b);
    let mut lb = start(&topo, &file_a, &[]);
    // Dropped, or (a datagram) answered port unreachable: either way, no backend.
    let drops = |lb: &Lbd| -> u64 {
        let v = lbctl_json(lb, &["stats"]);
        ["drop_no_backend", "refused_no_backend"]
            .iter()
            .map(|counter| v["global"][counter].as_u64().expect(counter))
            .sum()
    };
    let before = drops(&lb);

    // New UDP flows without pause (a new socket each), through every reload.
    let stop = AtomicBool::new(false);
    let (sent, lost) = std::thread::scope(|scope| {
        let stream = scope.spawn(|| {
            topo.client
                .run(|| {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    let (mut sent, mut lost) = (0u64, 0u64);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let answered = std::net::UdpSocket::bind("0.0.0.0:0").and_then(|socket| {
                            socket.set_read_timeout(Some(Duration::from_millis(500)))?;
                            socket.send_to(lb_testkit::client::REQUEST, dns())?;
                            socket.recv(&mut [0u8; 512])
                        });
                        sent += 1;
                        lost += u64::from(answered.is_err());
                    }
                    (sent, lost)
                })
                .expect("client namespace")
        });
        for i in 0..10 {
            let answer = lb
                .reload(if i % 2 == 0 { &file_b } else { &file_a })
                .unwrap();
            assert!(answer.contains("reloaded"), "reload {i}: {answer}");
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
        stream.join().expect("client thread")
    });
    assert!(sent > 100, "the new flows ran: {sent}");
    assert_eq!(
        drops(&lb) - before,
        0,
        "new flows dropped or refused for want of a backend"
    );
    assert_eq!(lost, 0, "{lost} of {sent} new flows unanswered");
}

#[test]
fn bad_input_and_wrong_tokens_leave_the_dataplane_unchanged() {
    if !e2e_enabled() {
        return;
    }
    let (topo, _servers) = setup(2);
    let token = "s3cret-token-0123456789";
    let token_file = ScratchPath::temp("token", "");
    std::fs::write(&*token_file, format!("{token}\n")).unwrap();
    let api_tcp: SocketAddr = "127.0.0.1:9465".parse().unwrap();
    let mut lb = start(
        &topo,
        &services(r#""198.18.2.10""#),
        &[
            "--api-listen",
            "127.0.0.1:9465",
            "--api-token-file",
            token_file.arg(),
        ],
    );
    let unchanged = |lb: &Lbd, generation_before: u64| {
        assert_eq!(generation(lb), generation_before);
        assert_eq!(new_flows_reach(&topo, 10), set(&["backend-0"]));
    };
    let g = generation(&lb);

    // An invalid file.
    let answer = lb
        .reload("services:\n  web:\n    vip: 198.18.100.1\n    ports: [\"80:8080/tcpp\"]\n")
        .unwrap();
    assert!(
        answer.contains("refused") && answer.contains("ports[0]"),
        "{answer}"
    );
    unchanged(&lb, g);

    // Malformed API requests get a 4xx and a message.
    let post = |path: &str, body: &str, token: Option<&str>| {
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        format!(
            "POST {path} HTTP/1.1\r\nHost: lbd\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    for (path, body, want) in [
        ("/v1/services/web/backends", "{not json", 400),
        (
            "/v1/services/web/backends",
            r#"{"backend": "198.18.2.11", "weight": 70000}"#,
            400,
        ),
        (
            "/v1/services/web/backends",
            r#"{"backend": "198.18.2.11", "colour": "red"}"#,
            400,
        ),
        (
            "/v1/services/nope/backends",
            r#"{"backend": "198.18.2.11"}"#,
            404,
        ),
        (
            "/v1/apply",
            "services:\n  web:\n    ports: [\"81/tcp\"]\n",
            409,
        ),
        ("/v1/apply", "services:\n  x:\n    ports: []\n", 400),
        (
            "/v1/apply",
            "lbd:\n  metrics: 0.0.0.0:1\nservices: {}\n",
            400,
        ),
    ] {
        let (status, body) = http(&topo.node, api_tcp, post(path, body, Some(token)));
        assert_eq!(status, want, "{path} {body}");
        let error: serde_json::Value = serde_json::from_str(&body).expect("JSON error body");
        assert!(!error["error"].as_str().unwrap().is_empty(), "{body}");
    }
    unchanged(&lb, g);

    // Wrong or missing tokens: 401, counted, nothing done.
    for token in [
        None,
        Some("wrong-token-wrong-token"),
        Some("s3cret-token-012345678"),
    ] {
        let (status, _) = http(
            &topo.node,
            api_tcp,
            post(
                "/v1/services/web/backends",
                r#"{"backend": "198.18.2.11"}"#,
                token,
            ),
        );
        assert_eq!(status, 401, "{token:?}");
    }
    unchanged(&lb, g);
    // The right token works.
    let (status, body) = http(&topo.node, api_tcp, get("/v1/services", Some(token)));
    assert_eq!(status, 200, "{body}");
    // And through lbctl, which names what to check when the token is refused (one more 401).
    let url = api_tcp.to_string();
    let (ok, out, err) = lb
        .lbctl_tcp(&topo.node, &url, &token_file, &["list"])
        .unwrap();
    assert!(ok && out.contains("web"), "{out}{err}");
    let wrong_file = ScratchPath::temp("wrong-token", "");
    std::fs::write(&*wrong_file, "wrong-token-wrong-token\n").unwrap();
    let (ok, _, err) = lb
        .lbctl_tcp(&topo.node, &url, &wrong_file, &["list"])
        .unwrap();
    assert!(!ok, "a wrong token must fail");
    assert!(
        err.contains("refused the token from --api-token-file"),
        "{err}"
    );
    // A file without a token is named by lbctl, before anything is sent (not a 401).
    let empty_file = ScratchPath::temp("empty-token", "");
    std::fs::write(&*empty_file, "\n").unwrap();
    let (ok, _, err) = lb
        .lbctl_tcp(&topo.node, &url, &empty_file, &["list"])
        .unwrap();
    assert!(
        !ok && err.contains(empty_file.arg()) && err.contains("not an API token"),
        "{err}"
    );
    let metrics = http(
        &topo.node,
        "127.0.0.1:9464".parse().unwrap(),
        get("/metrics", None),
    )
    .1;
    assert!(
        metrics.contains("meshlb_api_requests_total{code=\"401\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("meshlb_reloads_total{source=\"signal\",result=\"rejected\"} 1"),
        "{metrics}"
    );
    // Every malformed request above counts as an API change rejected, whether its body or
    // the configuration refused it.
    assert!(
        metrics.contains("meshlb_reloads_total{source=\"api\",result=\"rejected\"} 7"),
        "{metrics}"
    );
    // A SIGHUP reads the token file again: the new token works, the old one is refused; a
    // file without a token then changes nothing.
    let rotated = "rotated-token-0123456789";
    std::fs::write(&*token_file, format!("{rotated}\n")).unwrap();
    lb.reload(&services(r#""198.18.2.10""#)).unwrap();
    assert_eq!(
        http(&topo.node, api_tcp, get("/v1/services", Some(token))).0,
        401
    );
    assert_eq!(
        http(&topo.node, api_tcp, get("/v1/services", Some(rotated))).0,
        200
    );
    std::fs::write(&*token_file, "\n").unwrap();
    lb.reload(&services(r#""198.18.2.10""#)).unwrap();
    assert_eq!(
        http(&topo.node, api_tcp, get("/v1/services", Some(rotated))).0,
        200
    );
    // The Unix socket is root's alone.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(lb.api_socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn metrics_parse_and_match_the_traffic() {
    if !e2e_enabled() {
        return;
    }
    let (topo, _servers) = setup(3);
    let lb = start(
        &topo,
        &services(r#""198.18.2.10", "198.18.2.11", "198.18.2.12""#),
        &[],
    );
    const TCP: u64 = 40;
    const UDP: u64 = 30;
    for _ in 0..TCP {
        tcp_request(&topo.client, web(), TIMEOUT).unwrap();
    }
    // Every UDP exchange must be a new flow, so each gets its own client port: the sockets
    // stay open until all are done (a closed socket's port may be handed out again, and then
    // its datagram continues the earlier flow, as it should).
    let udp_sessions: Vec<UdpSession> = (0..UDP)
        .map(|_| {
            let mut session = UdpSession::bind(&topo.client, dns(), TIMEOUT).unwrap();
            session.request().unwrap();
            session
        })
        .collect();
    drop(udp_sessions);
    // lbd counts the table in the background (its first walk starts 50 ms after the last
    // attach, and also switches the SYN filter on): scrape until it has (bounded).
    let scrape_metrics = || {
        http(
            &topo.node,
            "127.0.0.1:9464".parse().unwrap(),
            get("/metrics", None),
        )
    };
    let (mut status, mut body) = scrape_metrics();
    for _ in 0..50 {
        if body
            .lines()
            .any(|l| l.starts_with("meshlb_syn_filter_keys "))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        (status, body) = scrape_metrics();
    }
    assert_eq!(status, 200);
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    // The sum of the series of `name` with `labels`, at least one of which must be served (a
    // series missing or renamed must not read as 0).
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        let series: Vec<_> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .collect();
        assert!(!series.is_empty(), "no {name} {labels:?} served:\n{body}");
        series
            .into_iter()
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => panic!("{name}: not a number"),
            })
            .sum()
    };
    let tcp = [("service", "web"), ("frontend", "80:8080/tcp")];
    let udp = [("service", "web"), ("frontend", "53:5353/udp")];
    assert_eq!(value("meshlb_service_new_flows_total", &tcp), TCP as f64);
    assert_eq!(value("meshlb_backend_new_flows_total", &tcp), TCP as f64);
    assert_eq!(value("meshlb_service_new_flows_total", &udp), UDP as f64);
    // A UDP exchange is one datagram each way, both counted.
    assert_eq!(
        value("meshlb_service_packets_total", &udp),
        (2 * UDP) as f64
    );
    assert_eq!(
        value("meshlb_backend_packets_total", &udp),
        (2 * UDP) as f64
    );
    assert_eq!(
        value("meshlb_events_total", &[("event", "new_flow")]),
        (TCP + UDP) as f64
    );
    assert_eq!(
        value(
            "meshlb_backends",
            &[("service", "web"), ("state", "active")]
        ),
        3.0
    );
    assert_eq!(value("meshlb_config_generation", &[]), 1.0);
    assert!(value("meshlb_xdp_packets_total", &[]) >= (TCP * 5 + UDP * 2) as f64);
    assert_eq!(value("meshlb_dropped_packets_total", &[]), 0.0, "{body}");
    // The table's real capacity: one entry over the configured power of two, for twice the
    // buckets (`limits::hash_table_entries`).
    assert_eq!(value("meshlb_conntrack_capacity", &[]), 65_537.0);
    // lbd's first occupancy walk rebuilt the SYN filter and switched it on: the flows
    // confirmed before it are in it, none after it yet (the next walk is 5 s later).
    let filter = scrape
        .samples
        .iter()
        .find(|s| s.metric == "meshlb_syn_filter_keys");
    assert!(filter.is_some(), "no first walk within 5 s: {body}");
    assert!(value("meshlb_syn_filter_keys", &[]) <= TCP as f64, "{body}");
    // Every backend got a share.
    for b in ["198.18.2.10:8080", "198.18.2.11:8080", "198.18.2.12:8080"] {
        let mut labels = tcp.to_vec();
        labels.push(("backend", b));
        assert!(
            value("meshlb_backend_new_flows_total", &labels) > 0.0,
            "{b}"
        );
    }
    lb.stop().unwrap();
}

#[test]
fn a_changed_service_file_is_applied_without_a_signal() {
    if !e2e_enabled() {
        return;
    }
    let (topo, _servers) = setup(2);
    let lb = start_watched(&topo);
    assert_eq!(new_flows_reach(&topo, 10), set(&["backend-0"]));
    std::fs::write(lb.config_path(), services(r#""198.18.2.11""#)).unwrap();
    let changed = Instant::now();
    while new_flows_reach(&topo, 1) != set(&["backend-1"]) {
        assert!(
            changed.elapsed() < Duration::from_secs(3),
            "{}",
            lb.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The log line follows the maps' update.
    wait_for_log(&lb, "reloaded", changed, Duration::from_secs(5));
}

/// lbd with `web` on backend-0, looking at its service file every 100 ms.
fn start_watched(topo: &Topology) -> Lbd {
    start(
        topo,
        &services(r#""198.18.2.10""#),
        &["--watch-interval-ms", "100"],
    )
}

/// Waits until `lb`'s log has `text`, failing `limit` after `since`.
fn wait_for_log(lb: &Lbd, text: &str, since: Instant, limit: Duration) {
    while !lb.output().contains(text) {
        assert!(
            since.elapsed() < limit,
            "no {text:?} in the log:\n{}",
            lb.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A service file lbd refuses (a typo) shows in `lbctl status`, which exits 3 for it, until
/// the fixed file is applied on its own; the log says when the file is tried again.
#[test]
fn a_refused_service_file_shows_in_status_until_it_is_fixed() {
    if !e2e_enabled() {
        return;
    }
    let (topo, _servers) = setup(2);
    let lb = start_watched(&topo);
    let unhealthy = Some(i32::from(lb_userspace::api::Unhealthy::EXIT_CODE));
    let typo = services(r#""198.18.2.11""#).replace("ports:", "port:");
    std::fs::write(lb.config_path(), typo).unwrap();
    wait_for_log(
        &lb,
        "tried again when the file changes, when the API changes, or at SIGHUP",
        Instant::now(),
        Duration::from_secs(3),
    );
    let (code, out, err) = lb.lbctl_exit(&["status"]).unwrap();
    assert_eq!(code, unhealthy, "{out}{err}");
    assert!(
        out.contains("REFUSED: the service file") && out.contains("unknown field `port`"),
        "{out}"
    );
    let refused = &lbctl_json(&lb, &["status"])["config_refused"];
    assert_eq!(refused["file"], lb.config_path().display().to_string());
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("unknown field `port`")),
        "{refused}"
    );
    assert!(
        refused["since_unix_s"].as_u64().is_some_and(|s| s > 0),
        "{refused}"
    );
    assert_eq!(
        new_flows_reach(&topo, 4),
        set(&["backend-0"]),
        "the running one stays"
    );

    std::fs::write(lb.config_path(), services(r#""198.18.2.11""#)).unwrap();
    let fixed = Instant::now();
    loop {
        let (code, out, _) = lb.lbctl_exit(&["status"]).unwrap();
        if code == Some(0) {
            assert!(!out.contains("REFUSED"), "{out}");
            break;
        }
        assert!(
            fixed.elapsed() < Duration::from_secs(3),
            "still refused after the fix: {out}\n{}",
            lb.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(lbctl_json(&lb, &["status"])["config_refused"].is_null());
    assert_eq!(new_flows_reach(&topo, 4), set(&["backend-1"]));
}

/// IPv6 forwarding off on an interface is warned of only once the configuration has an IPv6
/// frontend (an IPv4-only node needs none), once for that interface.
#[test]
fn ipv6_forwarding_off_is_warned_of_only_with_ipv6_frontends() {
    if !e2e_enabled() {
        return;
    }
    let (topo, _servers) = setup(2);
    let interface = &topo.node_client_if;
    topo.node
        .set_sysctl(&format!("net.ipv6.conf.{interface}.forwarding"), "0")
        .unwrap();
    let lb = start_watched(&topo);
    let warning = "IPv6 forwarding is off";
    assert!(!lb.output().contains(warning), "{}", lb.output());
    let web6 = "  web6:\n    vip: \"fd00:100::1\"\n    ports: [\"80:8080/tcp\"]\n    backends: [\"fd00:2::a\"]\n";
    std::fs::write(
        lb.config_path(),
        format!("{}{web6}", services(r#""198.18.2.10""#)),
    )
    .unwrap();
    wait_for_log(&lb, warning, Instant::now(), Duration::from_secs(3));
    // A later change does not warn again.
    std::fs::write(
        lb.config_path(),
        format!("{}{web6}", services(r#""198.18.2.11""#)),
    )
    .unwrap();
    let changed = Instant::now();
    while new_flows_reach(&topo, 1) != set(&["backend-1"]) {
        assert!(
            changed.elapsed() < Duration::from_secs(3),
            "{}",
            lb.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = lb.output();
    assert_eq!(out.matches(warning).count(), 1, "{out}");
    assert!(out.contains(interface.as_str()), "{out}");
}

/// A file change refused because the API has a service of the same name is applied once the
/// operator takes the way out the refusal names (`lbctl remove-service`), without a signal.
#[test]
fn a_refused_file_change_applies_once_the_api_gives_way() {
    if !e2e_enabled() {
        return;
    }
    let (topo, _servers) = setup(2);
    let lb = start_watched(&topo);
    lbctl(&lb, &ADD_DNS);
    let with_dns = format!(
        "{}  dns:\n    vip: 198.18.100.3\n    ports: [\"53:5353/udp\"]\n    backends: [198.18.2.10]\n",
        services(r#""198.18.2.10""#)
    );
    std::fs::write(lb.config_path(), with_dns).unwrap();
    let vip_of_dns = |lb: &Lbd| {
        lbctl_json(lb, &["list"])["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "dns")
            .map(|s| s["vip"].clone())
    };
    wait_for_log(
        &lb,
        "reload refused",
        Instant::now(),
        Duration::from_secs(3),
    );
    assert_eq!(
        vip_of_dns(&lb),
        Some("198.18.100.2".into()),
        "the API's stays"
    );

    lbctl(&lb, &["remove-service", "dns"]);
    let removed = Instant::now();
    while vip_of_dns(&lb) != Some("198.18.100.3".into()) {
        assert!(
            removed.elapsed() < Duration::from_secs(3),
            "the file's dns not applied after the API's went: {:?}\n{}",
            vip_of_dns(&lb),
            lb.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn published_ports_follow_the_node_addresses() {
    if !e2e_enabled() {
        return;
    }
    let (topo, _servers) = setup(1);
    let lb = start(
        &topo,
        "services:\n  api:\n    ports: [\"8000:8080/tcp\"]\n    backends: [\"198.18.2.10\"]\n",
        &[],
    );
    let new_address: SocketAddr = "198.18.1.3:8000".parse().unwrap();
    assert!(tcp_request(&topo.client, new_address, Duration::from_millis(300)).is_err());
    topo.node
        .ip(&["addr", "add", "198.18.1.3/24", "dev", &topo.node_client_if])
        .unwrap();
    let added = Instant::now();
    loop {
        match tcp_request(&topo.client, new_address, Duration::from_millis(300)) {
            Ok(reply) => {
                assert_eq!(reply.backend, "backend-0");
                break;
            }
            Err(e) => assert!(
                added.elapsed() < Duration::from_secs(5),
                "the new address is not served: {e:#}\n{}",
                lb.output()
            ),
        }
    }
    assert!(lb.output().contains("addresses changed"), "{}", lb.output());
}

/// A change of the node's addresses replans the published ports with the service file as
/// last accepted: an edit nobody signalled (no file watch here) waits for its SIGHUP.
#[test]
fn an_address_change_replans_without_reading_the_file_again() {
    if !e2e_enabled() {
        return;
    }
    let (topo, _servers) = setup(2);
    let published = |backend: &str| {
        format!(
            "services:\n  api:\n    ports: [\"8000:8080/tcp\"]\n    backends: [\"{backend}\"]\n"
        )
    };
    let mut lb = start(&topo, &published("198.18.2.10"), &[]);
    std::fs::write(lb.config_path(), published("198.18.2.11")).unwrap();
    topo.node
        .ip(&["addr", "add", "198.18.1.3/24", "dev", &topo.node_client_if])
        .unwrap();
    let new_address: SocketAddr = "198.18.1.3:8000".parse().unwrap();
    let added = Instant::now();
    let reply = loop {
        match tcp_request(&topo.client, new_address, Duration::from_millis(300)) {
            Ok(reply) => break reply,
            Err(e) => assert!(
                added.elapsed() < Duration::from_secs(5),
                "the new address is not served: {e:#}\n{}",
                lb.output()
            ),
        }
    };
    assert_eq!(
        reply.backend,
        "backend-0",
        "the address change applied the unsignalled edit:\n{}",
        lb.output()
    );
    // The edit applies at its SIGHUP.
    let answer = lb.reload(&published("198.18.2.11")).expect("reload");
    assert!(answer.contains("reloaded"), "{answer}");
    let reply = tcp_request(&topo.client, new_address, TIMEOUT).expect("served");
    assert_eq!(reply.backend, "backend-1");
}

/// A SIGHUP while lbd starts (loading and verifying its programs takes seconds, and
/// `systemctl reload` may come then) does not kill it: the start goes on, and the reload
/// comes once it serves.
#[test]
fn a_sighup_during_the_start_is_a_reload_once_lbd_serves() {
    if !e2e_enabled() {
        return;
    }
    let (topo, _servers) = setup(1);
    let lb = Lbd::start_then(
        lbd(),
        &topo.node,
        &services(r#""198.18.2.10""#),
        &[&topo.node_client_if, &topo.node_bridge],
        &[],
        None,
        |pin_dir, child| {
            // A map pinned: the programs are still to be verified, seconds from ready.
            let maps = pin_dir.join("maps");
            let spawned = Instant::now();
            while !std::fs::read_dir(&maps).is_ok_and(|mut entries| entries.next().is_some()) {
                anyhow::ensure!(
                    spawned.elapsed() < Duration::from_secs(20),
                    "lbd pinned no map in {}:\n{}",
                    maps.display(),
                    child.output_so_far()
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            child.signal(libc::SIGHUP)
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    wait_for_log(
        &lb,
        "reload: no change",
        Instant::now(),
        Duration::from_secs(5),
    );
    assert_eq!(new_flows_reach(&topo, 5), set(&["backend-0"]));
}

#[test]
fn kernel_log_records_reach_the_daemon_log_only_when_asked_for() {
    if !e2e_enabled() {
        return;
    }
    let (topo, _servers) = setup(1);
    for (extra, wanted) in [(&[][..], false), (&["--kernel-log", "debug"][..], true)] {
        let lb = start(&topo, &services(r#""198.18.2.10""#), extra);
        for _ in 0..3 {
            tcp_request(&topo.client, web(), TIMEOUT).unwrap();
        }
        // Records come through a reader task, after the requests: wait for them the same
        // time either way, so an absence is not just a record still on its way. Bounded:
        // 3 s, 150 looks.
        let deadline = Instant::now() + Duration::from_secs(3);
        for _ in 0..150 {
            if lb.output().contains("new flow") || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            lb.output().contains("service 0: new flow"),
            wanted,
            "{extra:?}:\n{}",
            lb.output()
        );
        lb.stop().unwrap();
    }
}

// `bpf(2)` for the tests below, which make maps aya cannot: an array of maps whose tables
// have another element size, as an older meshlb would have pinned, and the like.
use lb_testkit::raw_bpf::{MAP_CREATE, MAP_UPDATE_ELEM, bpf};

/// A pin directory of this test's own (`mlb-pins-<pid>-<n>`, like the kit's: a clean-up of
/// leftovers knows its owner), with its `maps` directory; removed when dropped, failed or not.
fn scratch_pin_dir() -> ScratchPath {
    let dir = ScratchPath::in_dir(Path::new(lb_testkit::lbd::PIN_ROOT), "pins", "");
    std::fs::create_dir_all(dir.join("maps")).expect("pin directory");
    dir
}

/// Pins the map behind `fd` as the map `name` of the pin directory `dir`, then closes `fd`
/// (the pin keeps the map).
fn pin_map(dir: &Path, name: &str, fd: i64) {
    lb_testkit::raw_bpf::pin(fd, &dir.join("maps").join(name)).expect("pin");
}

/// An endpoint filter as the meshlb before bit filters made it: an array of 512 elements of
/// 64 one-byte slots. Its descriptor.
fn earlier_endpoint_filter() -> i64 {
    lb_testkit::raw_bpf::create_array(64, 512).expect("an array")
}

/// Loading a dataplane of `conntrack_entries` on the maps pinned in `dir` is refused, with
/// every one of `says` in the message.
fn assert_refused_with(dir: &Path, conntrack_entries: u32, says: &[&str]) {
    use lb_userspace::dataplane::{Dataplane, LoadOptions};
    let error = Dataplane::load(LoadOptions {
        conntrack_entries,
        pin_dir: Some(dir.to_path_buf()),
        ..LoadOptions::default()
    })
    .err()
    .expect("the pinned maps are not adopted")
    .to_string();
    assert!(says.iter().all(|s| error.contains(s)), "{error}");
}

#[test]
fn pinned_tables_of_another_layout_are_refused_with_the_fix() {
    if !e2e_enabled() {
        return;
    }
    use lb_common::{limits::MAX_SERVICES, maps::SELECTION_TABLE_FLAGS};
    use lb_testkit::raw_bpf::MAP_TYPE_ARRAY as ARRAY;
    const ARRAY_OF_MAPS: u64 = 12;
    let dir = scratch_pin_dir();

    // map_type | key_size << 32, value_size | max_entries << 32, map_flags | inner_map_fd << 32
    let mut attr = [0u64; 16];
    attr[0] = ARRAY | 4 << 32;
    attr[1] = 4 | 3 << 32;
    attr[2] = u64::from(SELECTION_TABLE_FLAGS);
    let inner = bpf(MAP_CREATE, &mut attr);
    assert!(inner > 0, "inner map: {}", std::io::Error::last_os_error());
    let mut attr = [0u64; 16];
    attr[0] = ARRAY_OF_MAPS | 4 << 32;
    attr[1] = 4 | u64::from(MAX_SERVICES) << 32;
    attr[2] = (inner as u64) << 32;
    let outer = bpf(MAP_CREATE, &mut attr);
    assert!(outer > 0, "outer map: {}", std::io::Error::last_os_error());
    let (key, value) = (0u32, inner as u32);
    let mut attr = [0u64; 16];
    attr[0] = outer as u64;
    attr[1] = &key as *const u32 as u64;
    attr[2] = &value as *const u32 as u64;
    assert_eq!(bpf(MAP_UPDATE_ELEM, &mut attr), 0, "table 0");
    pin_map(&dir, "SERVICE_TABLES", outer);
    // SAFETY: a descriptor this test opened; the pinned outer map keeps the table.
    unsafe { libc::close(inner as i32) };

    assert_refused_with(
        &dir,
        lb_common::limits::DEFAULT_CONNTRACK_ENTRIES,
        &["4-byte elements", "lbd cleanup"],
    );
}

#[test]
fn pinned_maps_of_an_earlier_version_keep_their_flows_and_get_filters_made_anew() {
    if !e2e_enabled() {
        return;
    }
    use aya::maps::{HashMap, Map, MapData};
    use lb_common::maps::{Flow, FlowKey};
    use lb_userspace::dataplane::{Dataplane, LoadOptions};
    const LRU_HASH: u64 = 9;
    let dir = scratch_pin_dir();
    // What a meshlb from before `hash_table_entries` pinned for --conntrack-entries 65536:
    // exactly that many entries, and a quarter of it for the unconfirmed flows.
    for (name, entries) in [("CONNTRACK", 65_536u64), ("PENDING", 16_384)] {
        let mut attr = [0u64; 16];
        attr[0] = LRU_HASH | (std::mem::size_of::<FlowKey>() as u64) << 32;
        attr[1] = std::mem::size_of::<Flow>() as u64 | entries << 32;
        let fd = bpf(MAP_CREATE, &mut attr);
        assert!(fd > 0, "{name}: {}", std::io::Error::last_os_error());
        pin_map(&dir, name, fd);
    }
    for name in ["FORWARD_FILTER", "REPLY_FILTER"] {
        pin_map(&dir, name, earlier_endpoint_filter());
    }
    let path = dir.join("maps").join("CONNTRACK");
    let mut table: HashMap<MapData, FlowKey, Flow> =
        HashMap::try_from(Map::LruHashMap(MapData::from_pin(&path).expect("pinned")))
            .expect("CONNTRACK");
    let key = FlowKey {
        src: lb_common::Addr::from(std::net::Ipv4Addr::new(198, 18, 0, 7)),
        sport_be: 40_000u16.to_be(),
        ..FlowKey::default()
    };
    let flow = Flow {
        kind: lb_common::maps::flow_kind::FORWARD,
        ..Flow::default()
    };
    table.insert(key, flow, 0).expect("a tracked flow");
    drop(table);

    // The same configuration adopts the tables as they are, with their flow (only a new
    // table gets one entry more, see `hash_table_entries`).
    let dp = Dataplane::load(LoadOptions {
        conntrack_entries: 65_536,
        pin_dir: Some(dir.to_path_buf()),
        ..LoadOptions::default()
    })
    .expect("an earlier version's tables are adopted");
    assert_eq!(dp.conntrack_occupancy().unwrap(), (1, 65_536));
    // The filters are made anew in this version's layout, a bit per slot (their slots mean
    // other endpoints now), and pinned in place of the old ones.
    for name in ["FORWARD_FILTER", "REPLY_FILTER"] {
        let pinned = aya::maps::MapInfo::from_pin(dir.join("maps").join(name)).expect(name);
        assert_eq!(
            (pinned.value_size(), pinned.max_entries()),
            (8, lb_common::endpoint_filter::WORDS),
            "{name}"
        );
    }
    drop(dp);
    // Another configuration is refused, naming the one that keeps the flows.
    assert_refused_with(&dir, 131_072, &["--conntrack-entries 65536", "lbd cleanup"]);
}

/// A pinned per-CPU `GLOBAL_STATS` of `slots` slots, slot i holding i + 1 on every CPU, in
/// the pin directory `dir` (in place of any there).
fn pin_global_stats(dir: &Path, slots: u32) {
    const PERCPU_ARRAY: u64 = 6;
    let cpus = aya::util::nr_cpus().expect("CPUs");
    let mut attr = [0u64; 16];
    attr[0] = PERCPU_ARRAY | 4 << 32;
    attr[1] = 8 | u64::from(slots) << 32;
    let fd = bpf(MAP_CREATE, &mut attr);
    assert!(fd > 0, "{}", std::io::Error::last_os_error());
    for slot in 0..slots {
        let values = vec![u64::from(slot) + 1; cpus];
        let mut attr = [0u64; 16];
        attr[0] = fd as u64;
        attr[1] = &slot as *const u32 as u64;
        attr[2] = values.as_ptr() as u64;
        assert_eq!(bpf(MAP_UPDATE_ELEM, &mut attr), 0, "slot {slot}");
    }
    let _ = std::fs::remove_file(dir.join("maps").join("GLOBAL_STATS"));
    pin_map(dir, "GLOBAL_STATS", fd);
}

#[test]
fn pinned_counters_of_an_earlier_version_are_carried_into_this_versions_slots() {
    if !e2e_enabled() {
        return;
    }
    use lb_common::stats::StatSlot;
    use lb_userspace::dataplane::{Dataplane, LoadOptions};
    let dir = scratch_pin_dir();
    let pinned_slots = || {
        aya::maps::MapInfo::from_pin(dir.join("maps").join("GLOBAL_STATS"))
            .unwrap()
            .max_entries()
    };
    let load = || {
        Dataplane::load(LoadOptions {
            pin_dir: Some(dir.to_path_buf()),
            ..LoadOptions::default()
        })
    };
    // What the version before `refused_no_backend` pinned: one slot fewer.
    let earlier = StatSlot::RefusedNoBackend as u32;
    pin_global_stats(&dir, earlier);
    let dp = load().expect("an earlier version's counters are carried over");
    let cpus = aya::util::nr_cpus().expect("CPUs") as u64;
    let global = dp.stats().expect("counters").global;
    for slot in StatSlot::ALL {
        let index = *slot as u32;
        let carried = if index < earlier {
            (u64::from(index) + 1) * cpus
        } else {
            0
        };
        assert_eq!(global[slot.label()], carried, "{}", slot.label());
    }
    // The map pinned in its place is this version's size.
    assert_eq!(pinned_slots(), StatSlot::COUNT);
    // A start that fails puts the earlier map back, counts and all, so the earlier lbd
    // adopts it again.
    dp.undo_failed_start();
    assert_eq!(pinned_slots(), earlier);
    let data = aya::maps::MapData::from_pin(dir.join("maps").join("GLOBAL_STATS")).unwrap();
    let back: aya::maps::PerCpuArray<_, u64> =
        aya::maps::PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data)).unwrap();
    for slot in 0..earlier {
        let values = back.get(&slot, 0).unwrap();
        assert!(
            values.iter().all(|v| *v == u64::from(slot) + 1),
            "slot {slot}"
        );
    }

    // Counters of a version that ordered them otherwise, or of a later version, are refused.
    for slots in [StatSlot::ORDER_KEPT_SINCE - 1, StatSlot::COUNT + 1] {
        pin_global_stats(&dir, slots);
        assert_refused_with(
            &dir,
            lb_common::limits::DEFAULT_CONNTRACK_ENTRIES,
            &["GLOBAL_STATS", "lbd cleanup"],
        );
    }
}

#[test]
fn a_write_the_kernel_refuses_is_undone_and_the_running_configuration_stays() {
    if !e2e_enabled() {
        return;
    }
    let (topo, _servers) = setup(3);
    let mut lb = start(&topo, &services("\"198.18.2.10\", \"198.18.2.11\""), &[]);
    let before = generation(&lb);
    let list_before = lbctl(&lb, &["list"]);

    // Something else fills the frontend map: the kernel then refuses the new service's
    // frontend, after its backends, table and endpoints are written.
    let frontends = lb.fill_map::<lb_common::maps::Service>("FRONTENDS");
    let add = [
        "add-service",
        "dns",
        "--vip",
        "198.18.100.2",
        "--port",
        "53:5353/udp",
        "--backend",
        "198.18.2.12",
    ];
    let (ok, _, err) = lb.lbctl(&add).unwrap();
    assert!(!ok, "the kernel refused: lbctl must fail");
    assert!(
        err.contains("FRONTENDS") && err.contains("the map is full"),
        "the error names the map and the cause: {err}"
    );
    // Undone: same generation, same services, the old service still serves, nothing degraded.
    assert_eq!(generation(&lb), before);
    assert_eq!(lbctl(&lb, &["list"]), list_before);
    let status = lbctl_json(&lb, &["status"]);
    assert!(status["degraded"].is_null(), "{status}");
    let mut seen = BTreeSet::new();
    for _ in 0..20 {
        seen.insert(udp_request(&topo.client, dns(), TIMEOUT).unwrap().backend);
    }
    assert_eq!(seen, set(&["backend-0", "backend-1"]));
    let dns2: SocketAddr = "198.18.100.2:53".parse().unwrap();
    assert!(udp_request(&topo.client, dns2, Duration::from_millis(300)).is_err());
    // The refused change was not kept either: a restart brings back the same configuration.
    lb.restart(&topo.node).expect("restart");
    assert_eq!(lbctl(&lb, &["list"]), list_before);

    // An edit of a file service (patched into the kept merge, written as a delta) that the
    // kernel refuses is undone the same way.
    let endpoints = lb.fill_map::<u32>("BACKEND_ENDPOINTS");
    let (ok, _, err) = lb.lbctl(&["add-backend", "web", "198.18.2.12"]).unwrap();
    assert!(!ok, "the kernel refused: lbctl must fail");
    assert!(err.contains("BACKEND_ENDPOINTS"), "{err}");
    assert_eq!(generation(&lb), before);
    assert_eq!(lbctl(&lb, &["list"]), list_before);
    let status = lbctl_json(&lb, &["status"]);
    assert!(status["degraded"].is_null(), "{status}");
    endpoints.free();

    // With room again, the same request goes through.
    frontends.free();
    let out = lbctl(&lb, &add);
    assert!(out.contains("added service dns"), "{out}");
    assert_eq!(
        udp_request(&topo.client, dns2, TIMEOUT).unwrap().backend,
        "backend-2"
    );
}

#[test]
fn the_connection_table_occupancy_counts_every_entry_and_the_syn_filter_every_forward_one() {
    if !e2e_enabled() {
        return;
    }
    use aya::maps::{HashMap, Map, MapData};
    use lb_common::maps::{Flow, FlowKey};
    use lb_userspace::dataplane::{Dataplane, LoadOptions};
    let ns = Netns::new("occupancy").expect("namespace");
    let dir = ScratchPath::in_dir(Path::new(lb_testkit::lbd::PIN_ROOT), "pins", "");
    ns.run(|| {
        let dp = Dataplane::load(LoadOptions {
            conntrack_entries: 65_536,
            pin_dir: Some(dir.to_path_buf()),
            ..LoadOptions::default()
        })
        .expect("load");
        let capacity = 65_537;
        assert_eq!(dp.conntrack_occupancy().unwrap(), (0, capacity));
        let path = dir.join("maps").join("CONNTRACK");
        let mut table: HashMap<MapData, FlowKey, Flow> =
            HashMap::try_from(Map::LruHashMap(MapData::from_pin(&path).expect("pinned")))
                .expect("CONNTRACK");
        // More than one batch of the walk, fewer than the capacity (an LRU map may evict
        // before it is full).
        let n = 20_000u32;
        for i in 0..n {
            let key = FlowKey {
                src: lb_common::Addr::from(std::net::Ipv4Addr::from(0xC612_0000 + i)),
                sport_be: 1000u16.to_be(),
                ..FlowKey::default()
            };
            // Every third a forward entry: the filter's rebuild keeps those keys only.
            let kind = if i % 3 == 0 {
                lb_common::maps::flow_kind::FORWARD
            } else {
                lb_common::maps::flow_kind::REPLY
            };
            let flow = Flow {
                kind,
                ..Flow::default()
            };
            table.insert(key, flow, 0).expect("insert");
        }
        assert_eq!(dp.conntrack_occupancy().unwrap(), (u64::from(n), capacity));
        let walk = dp.rebuild_conntrack_filter().expect("rebuilt");
        assert_eq!(
            (walk.entries, walk.forward_keys),
            (u64::from(n), u64::from(n.div_ceil(3)))
        );
        drop(dp);
    })
    .expect("in the namespace");
}

#[test]
fn explain_answers_from_the_kernels_table_and_says_when_it_differs_from_the_plan() {
    if !e2e_enabled() {
        return;
    }
    use aya::maps::{Array, ArrayOfMaps, Map, MapData};
    use lb_common::maps::{SELECTION_TABLE_FLAGS, TableElement, table_elements};
    let (topo, _servers) = setup(2);
    let one_port = format!(
        "services:\n  web:\n    vip: {VIP}\n    ports: [\"80:8080/tcp\"]\n    backends: [\"198.18.2.10\", \"198.18.2.11\"]\n"
    );
    let lb = start(&topo, &one_port, &[]);
    let explain = |lb: &Lbd| {
        lbctl_json(
            lb,
            &["explain", "tcp", "198.18.1.2:40000", &web().to_string()],
        )["selection"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let planned = explain(&lb);
    assert!(
        planned.contains("maglev") && !planned.contains("differs"),
        "{planned}"
    );
    // Something rewrites the service's table (id 0, its only kernel service) behind lbd's
    // back: every slot now names one backend, and 101 slots instead of 16381.
    let chosen = if planned.contains("198.18.2.10:8080") {
        2
    } else {
        1
    };
    let len = 101u32;
    let mut table: Array<MapData, TableElement> =
        Array::create(table_elements(len), SELECTION_TABLE_FLAGS).expect("table");
    for element in 0..table_elements(len) {
        let first = if element == 0 { len } else { chosen };
        table.set(element, [first, chosen], 0).expect("slot");
    }
    let mut tables: ArrayOfMaps<MapData, Array<MapData, TableElement>> =
        ArrayOfMaps::try_from(Map::ArrayOfMaps(lb.pinned_map("SERVICE_TABLES")))
            .expect("SERVICE_TABLES");
    tables.set(0, &table, 0).expect("swap the table");
    let live = explain(&lb);
    let other = if chosen == 2 {
        "198.18.2.11:8080"
    } else {
        "198.18.2.10:8080"
    };
    assert!(
        live.contains("the kernel's table (length 101) gives")
            && live.contains(other)
            && live.contains("differs from the plan"),
        "{live}"
    );
}

/// The packets of the backend a kernel id last served, from `lbctl stats`; `None` until the
/// report lists it.
fn backend_packets(lb: &Lbd, target: &str) -> Option<u64> {
    let report = lbctl_json(lb, &["stats"]);
    report["services"]
        .as_array()?
        .iter()
        .filter(|s| s["name"] == "web" && s["frontend"] == "80:8080/tcp")
        .flat_map(|s| s["backends"].as_array().into_iter().flatten())
        .find(|b| b["target"] == target)
        .and_then(|b| b["totals"]["packets"].as_u64())
}

/// A kernel id a removed backend held, given to a new one, starts its counters from zero.
#[test]
fn a_backend_given_a_freed_id_starts_its_counters_at_zero() {
    if !e2e_enabled() {
        return;
    }
    let (topo, _servers) = setup(3);
    let lb = start(&topo, &services(r#""198.18.2.10", "198.18.2.11""#), &[]);
    // Traffic on both: 12 connections spread by the flow hash reach both (1 in 2^11 not).
    let reached = new_flows_reach(&topo, 12);
    assert_eq!(reached.len(), 2, "{reached:?}");
    let counted = Instant::now();
    while backend_packets(&lb, "198.18.2.11:8080").unwrap_or(0) == 0 {
        assert!(counted.elapsed() < Duration::from_secs(10), "never counted");
        std::thread::sleep(Duration::from_millis(200));
    }
    lbctl(&lb, &["remove-backend", "web", "198.18.2.11"]);
    lbctl(&lb, &["add-backend", "web", "198.18.2.12"]);
    // Listed within a sample of the counters; no packet has gone to it yet.
    let listed = Instant::now();
    let packets = loop {
        if let Some(packets) = backend_packets(&lb, "198.18.2.12:8080") {
            break packets;
        }
        assert!(listed.elapsed() < Duration::from_secs(10), "never listed");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(packets, 0, "the new backend started with another's packets");
}
