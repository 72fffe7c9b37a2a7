use std::net::{Ipv4Addr, Ipv6Addr};

use std::path::Path;

use super::{parse::*, *};

const EXAMPLE: &str = r#"
services:
  web:
    vip: 198.18.100.1
    ports: ["80:8080/tcp", "53/udp"]
    scheduler: maglev
    forwarding: nat
    affinity: client-ip
    timeouts: { tcp: 24h, udp: 60s }
    on_backend_removal: move
    maglev_table_size: 16381
    backends:
      - "198.18.2.10"
      - { address: "fd00:3::10", port: 9000, weight: 3 }
"#;

fn parse(text: &str) -> Result<ServiceFile, ConfigError> {
    ServiceFile::parse(text, Path::new("services.yaml"))
}

/// A file with one service `web` whose body is `body` (indented by the caller's 4 spaces).
fn web(body: &str) -> String {
    format!("services:\n  web:\n{body}")
}

fn web_spec(body: &str) -> ServiceSpec {
    let file = parse(&web(body)).unwrap_or_else(|e| panic!("{e}"));
    file.services["web"].clone()
}

/// The error for `text`, checked to name the file, the service and the field.
fn error(text: &str, service: Option<&str>, field: &str) -> String {
    let err = parse(text).expect_err("should be refused");
    let message = err.to_string();
    assert!(message.starts_with("services.yaml: "), "{message}");
    assert_eq!(err.path(), Path::new("services.yaml"));
    assert_eq!(err.service(), service, "{message}");
    assert_eq!(err.field(), Some(field), "{message}");
    if let Some(service) = service {
        assert!(
            message.contains(&format!("service \"{service}\"")),
            "{message}"
        );
    }
    assert!(message.contains(&format!("field {field}: ")), "{message}");
    message
}

/// The error for a `web` service with `body`.
fn web_error(body: &str, field: &str) -> String {
    error(&web(body), Some("web"), field)
}

#[test]
fn swarm_policies_are_read_and_checked() {
    let file = parse(
            "services: {}\nswarm:\n  web:\n    scheduler: round-robin\n    udp_ports: [53, \"514\"]\n    timeouts: { tcp: 1h }\n  dns:\n",
        )
        .unwrap();
    let web = &file.swarm["web"];
    assert_eq!(web.scheduler, Scheduler::RoundRobin);
    assert_eq!(web.udp_ports, [53, 514].into());
    assert_eq!(web.timeouts.tcp_s, 3600);
    assert_eq!(file.swarm["dns"], SwarmPolicy::default());

    let message = error(
        "services: {}\nswarm:\n  web:\n    udp_ports: [0]\n",
        Some("web"),
        "swarm.udp_ports[0]",
    );
    assert!(message.contains("1-65535"), "{message}");
    error(
        "services: {}\nswarm:\n  web:\n    scheduler: random\n",
        Some("web"),
        "swarm.scheduler",
    );
    let message = error(
        "services: {}\nswarm:\n  web:\n    maglev_table_size: 1000\n",
        Some("web"),
        "swarm.maglev_table_size",
    );
    assert!(message.contains("not prime"), "{message}");
    let file = parse("services: {}\nswarm:\n  web:\n    vip: 198.18.100.50\n").unwrap();
    assert_eq!(
        file.swarm["web"].vip,
        Some("198.18.100.50".parse().unwrap())
    );
    let message = error(
        "services: {}\nswarm:\n  web:\n    vip: fd00:100::50\n",
        Some("web"),
        "swarm.vip",
    );
    assert!(message.contains("give an IPv4 address"), "{message}");
    error(
        "services: {}\nswarm:\n  web:\n    vip: 198.18.100\n",
        Some("web"),
        "swarm.vip",
    );
    let message = error(
        "services: {}\nswarm:\n  web:\n    vip: 198.18.100.50\n    local_first: true\n",
        Some("web"),
        "swarm.vip",
    );
    assert!(message.contains("drop one of them"), "{message}");
    // What the swarm gives is not the file's to say.
    let message = syntax_error("services: {}\nswarm:\n  web:\n    backends: [198.18.2.1]\n");
    assert!(message.contains("unknown field `backends`"), "{message}");
}

fn syntax_error(text: &str) -> String {
    let err = parse(text).expect_err("should be refused");
    assert!(matches!(err, ConfigError::Syntax { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.starts_with("services.yaml: "), "{message}");
    message
}

const PORTS: &str = "    ports: [80]\n";

#[test]
fn example_parses_to_expected_structs() {
    let file = parse(EXAMPLE).unwrap();
    let expected = ServiceSpec {
        name: "web".into(),
        vip: Some(IpAddr::V4(Ipv4Addr::new(198, 18, 100, 1))),
        ports: vec![
            PortMapping {
                frontend: 80,
                backend: 8080,
                protocol: Protocol::Tcp,
            },
            PortMapping {
                frontend: 53,
                backend: 53,
                protocol: Protocol::Udp,
            },
        ],
        scheduler: Scheduler::Maglev,
        forwarding: Forwarding::Nat,
        affinity: Affinity::ClientIp,
        timeouts: Timeouts {
            tcp_s: 86_400,
            udp_s: 60,
        },
        on_backend_removal: RemovalPolicy::Move,
        maglev_table_size: 16_381,
        backends: vec![
            BackendSpec {
                address: IpAddr::V4(Ipv4Addr::new(198, 18, 2, 10)),
                port: None,
                weight: 1,
                mesh: None,
            },
            BackendSpec {
                address: IpAddr::V6(Ipv6Addr::new(0xfd00, 3, 0, 0, 0, 0, 0, 0x10)),
                port: Some(9000),
                weight: 3,
                mesh: None,
            },
        ],
        health: None,
        socket_scope: 0,
        tunnel_only: false,
    };
    assert_eq!(file.services.len(), 1);
    assert_eq!(file.services["web"], expected);
    let [plain, long] = [expected.backends[0], expected.backends[1]];
    assert_eq!(plain.target_port(&expected.ports[0]), 8080);
    assert_eq!(plain.target_port(&expected.ports[1]), 53);
    assert_eq!(long.target_port(&expected.ports[0]), 9000);
}

#[test]
fn defaults() {
    let spec = web_spec(PORTS);
    assert_eq!(spec.vip, None);
    assert_eq!(spec.scheduler, Scheduler::Maglev);
    assert_eq!(spec.forwarding, Forwarding::Nat);
    assert_eq!(spec.affinity, Affinity::None);
    assert_eq!(spec.on_backend_removal, RemovalPolicy::Move);
    assert_eq!(
        spec.timeouts,
        Timeouts {
            tcp_s: limits::DEFAULT_TCP_TIMEOUT_S,
            udp_s: limits::DEFAULT_UDP_TIMEOUT_S
        }
    );
    assert_eq!(spec.maglev_table_size, limits::DEFAULT_MAGLEV_TABLE_SIZE);
    assert!(spec.backends.is_empty());
    let port = spec.ports[0];
    assert_eq!(
        (port.frontend, port.backend, port.protocol),
        (80, 80, Protocol::Tcp)
    );
    assert_eq!(Protocol::Tcp.number(), proto::TCP);
    assert_eq!(Protocol::Udp.number(), proto::UDP);
}

#[test]
fn every_value_spelled_out() {
    let spec = web_spec(
        "    ports: [80]\n    scheduler: round-robin\n    forwarding: fullnat\n    \
             affinity: none\n    on_backend_removal: reset\n",
    );
    assert_eq!(spec.scheduler, Scheduler::RoundRobin);
    assert_eq!(spec.forwarding, Forwarding::FullNat);
    assert_eq!(spec.affinity, Affinity::None);
    assert_eq!(spec.on_backend_removal, RemovalPolicy::Reset);
    let keep = web_spec("    ports: [80]\n    on_backend_removal: keep\n");
    assert_eq!(keep.on_backend_removal, RemovalPolicy::Keep);
    for (text, value) in Scheduler::VALUES {
        assert_eq!(value.to_string(), *text);
        assert_eq!(text.parse::<Scheduler>().unwrap(), *value);
    }
}

#[test]
fn services_mapping_is_required() {
    for text in ["", "# nothing\n", "services:\n"] {
        let message = error(text, None, "services");
        assert!(message.contains("services: {}"), "{message}");
    }
    assert_eq!(parse("services: {}\n").unwrap(), ServiceFile::default());
    let message = syntax_error("servces: {}\n");
    assert!(message.contains("servces"), "{message}");
    syntax_error("services: [web]\n");
    syntax_error("services: {web: {ports: [80]}\n");
}

#[test]
fn service_names() {
    let ok = format!("services:\n  {}:\n{PORTS}", "a".repeat(63));
    parse(&ok).unwrap();
    parse(&format!("services:\n  web-1_v2.internal:\n{PORTS}")).unwrap();
    for name in [
        "a".repeat(64),
        "\"my web\"".into(),
        "web/1".into(),
        "\"\"".into(),
    ] {
        let message = error(&format!("services:\n  {name}:\n{PORTS}"), None, "services");
        assert!(message.contains("not a valid service name"), "{message}");
    }
    let message = syntax_error(&format!("services:\n  web:\n{PORTS}  web:\n{PORTS}"));
    assert!(
        message.contains("service \"web\" is defined twice"),
        "{message}"
    );
    // A swarm policy too: the second would replace the first unseen.
    let message = syntax_error(
        "services: {}\nswarm:\n  web:\n    scheduler: round-robin\n  web:\n    vip: 198.18.100.5\n",
    );
    assert!(
        message.contains("swarm policy \"web\" is defined twice"),
        "{message}"
    );
}

#[test]
fn unknown_fields_are_named_with_the_valid_ones() {
    let message = syntax_error(&web("    ports: [80]\n    schedulr: maglev\n"));
    assert!(message.contains("services.web"), "{message}");
    assert!(message.contains("unknown field `schedulr`"), "{message}");
    assert!(message.contains("`scheduler`"), "{message}");
    assert!(message.contains("line 4"), "{message}");
    let message = syntax_error(&web("    ports: [80]\n    timeouts: { tcpp: 1 }\n"));
    assert!(message.contains("services.web.timeouts"), "{message}");
    assert!(
        message.contains("`tcpp`, expected `tcp` or `udp`"),
        "{message}"
    );
    let message = syntax_error(&web(
        "    ports: [80]\n    backends: [{ address: 10.0.0.1, wieght: 2 }]\n",
    ));
    assert!(message.contains("services.web.backends[0]"), "{message}");
    assert!(message.contains("`wieght`"), "{message}");
    let message = syntax_error(&web("    ports: [80]\n    backends: [{ port: 80 }]\n"));
    assert!(message.contains("missing field `address`"), "{message}");
    let message = syntax_error(&web("    ports: 80\n"));
    assert!(message.contains("services.web.ports"), "{message}");
}

#[test]
fn port_forms() {
    let cases = [
        ("80", 80, 80, Protocol::Tcp),
        ("80/tcp", 80, 80, Protocol::Tcp),
        ("80:8080", 80, 8080, Protocol::Tcp),
        ("53/udp", 53, 53, Protocol::Udp),
        ("65535:1/udp", 65535, 1, Protocol::Udp),
    ];
    for (text, frontend, backend, protocol) in cases {
        let mapping: PortMapping = text.parse().unwrap();
        assert_eq!(
            mapping,
            PortMapping {
                frontend,
                backend,
                protocol
            }
        );
        assert_eq!(mapping.to_string().parse::<PortMapping>().unwrap(), mapping);
    }
    assert_eq!(
        "80:8080".parse::<PortMapping>().unwrap().to_string(),
        "80:8080/tcp"
    );
    assert_eq!(
        "53/udp".parse::<PortMapping>().unwrap().to_string(),
        "53/udp"
    );
    let spec = web_spec("    ports: [80, \"443\", 8080:80, 53/udp]\n");
    assert_eq!(spec.ports.len(), 4);
}

#[test]
fn bad_ports() {
    let message = web_error("    ports: [\"80\", \"80:x/tcp\"]\n", "ports[1]");
    assert_eq!(
        message,
        "services.yaml: service \"web\", field ports[1]: \"80:x/tcp\" is not \
             FRONTEND[:BACKEND][/tcp|udp]; write e.g. \"80:8080/tcp\""
    );
    for bad in [
        "80/sctp",
        "80/TCP",
        "+80",
        "80:",
        ":80",
        "80:90:100",
        "1.2.3.4:80:80",
        "",
        "8 0",
    ] {
        let message = web_error(&format!("    ports: [\"{bad}\"]\n"), "ports[0]");
        assert!(
            message.contains("is not FRONTEND[:BACKEND][/tcp|udp]"),
            "{message}"
        );
    }
    for bad in ["0", "65536", "80:0", "99999999999999999999999/udp"] {
        let message = web_error(&format!("    ports: [\"{bad}\"]\n"), "ports[0]");
        assert!(
            message.contains("out of range; ports are 1-65535"),
            "{message}"
        );
    }
    for body in ["", "    ports: []\n", "    vip: 198.18.0.1\n"] {
        let message = web_error(body, "ports");
        assert!(message.contains("publish at least one"), "{message}");
    }
    let message = error("services:\n  web:\n", Some("web"), "ports");
    assert!(message.contains("no ports"), "{message}");
}

#[test]
fn duplicate_ports_within_a_service() {
    let message = web_error("    ports: [80, 53/udp, \"80:8080/tcp\"]\n", "ports[2]");
    assert!(message.contains("again (see ports[0])"), "{message}");
    // The same port on the other protocol is another frontend.
    web_spec("    ports: [53/tcp, 53/udp]\n");
}

#[test]
fn frontends_belong_to_one_service() {
    let two = |a: &str, b: &str| format!("services:\n  a:\n{a}  b:\n{b}");
    let vip = "    vip: 198.18.0.1\n    ports: [80]\n";
    let message = error(&two(vip, vip), Some("b"), "ports[0]");
    assert!(message.contains("vip 198.18.0.1 port 80/tcp"), "{message}");
    assert!(
        message.contains("already published by service \"a\""),
        "{message}"
    );
    let message = error(
        &two(PORTS, "    ports: [443, 80:8080]\n"),
        Some("b"),
        "ports[1]",
    );
    assert!(
        message.contains("port 80/tcp on every node address"),
        "{message}"
    );
    assert!(message.contains("service \"a\""), "{message}");
    // An IPv4-mapped IPv6 vip is the same frontend as the IPv4 one.
    let mapped = "    vip: \"::ffff:198.18.0.1\"\n    ports: [80]\n";
    error(&two(vip, mapped), Some("b"), "ports[0]");

    // No conflict: a vip is not a node address; other vip, port or protocol.
    let file = parse(&two(vip, PORTS)).unwrap();
    assert_eq!(file.services.len(), 2);
    parse(&two(vip, "    vip: 198.18.0.2\n    ports: [80]\n")).unwrap();
    parse(&two(vip, "    vip: 198.18.0.1\n    ports: [80/udp, 81]\n")).unwrap();
    parse(&two(PORTS, "    ports: [80/udp]\n")).unwrap();
}

#[test]
fn vips() {
    let v6 = web_spec("    vip: fd00:100::1\n    ports: [80]\n");
    assert_eq!(v6.vip, Some("fd00:100::1".parse().unwrap()));
    let mapped = web_spec("    vip: \"::ffff:198.18.0.1\"\n    ports: [80]\n");
    assert_eq!(mapped.vip, Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1))));
    let cases = [
        ("198.18.100", "not an IPv4 or IPv6 address"),
        ("\"[fd00::1]\"", "not an IPv4 or IPv6 address"),
        ("198.18.0.1:80", "not an IPv4 or IPv6 address"),
        ("0.0.0.0", "unspecified"),
        ("\"::\"", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("127.0.0.1", "loopback"),
        ("\"::1\"", "loopback"),
        ("255.255.255.255", "broadcast"),
    ];
    for (vip, reason) in cases {
        let message = web_error(&format!("    vip: {vip}\n{PORTS}"), "vip");
        assert!(message.contains(reason), "{vip}: {message}");
    }
}

#[test]
fn backend_forms() {
    let cases = [
        ("10.0.0.1", "10.0.0.1", None),
        ("10.0.0.1:8080", "10.0.0.1", Some(8080)),
        ("fd00::10", "fd00::10", None),
        ("[fd00::10]:9000", "fd00::10", Some(9000)),
        ("[fd00::10]", "fd00::10", None),
        ("::ffff:10.0.0.1", "10.0.0.1", None),
        ("[::ffff:10.0.0.1]:80", "10.0.0.1", Some(80)),
    ];
    for (text, address, port) in cases {
        let backend: BackendSpec = text.parse().unwrap();
        let expected = BackendSpec {
            address: address.parse().unwrap(),
            port,
            weight: 1,
            mesh: None,
        };
        assert_eq!(backend, expected, "{text}");
        assert_eq!(backend.to_string().parse::<BackendSpec>().unwrap(), backend);
    }
    assert_eq!(
        "[fd00::10]:9000"
            .parse::<BackendSpec>()
            .unwrap()
            .to_string(),
        "[fd00::10]:9000"
    );
    assert_eq!(
        "fd00::10".parse::<BackendSpec>().unwrap().to_string(),
        "fd00::10"
    );
    assert_eq!(
        "10.0.0.1:80".parse::<BackendSpec>().unwrap().to_string(),
        "10.0.0.1:80"
    );

    let spec = web_spec(
        "    ports: [80]\n    backends:\n      - fd00:3::10\n      - \"[fd00:3::11]:81\"\n      \
             - { address: \"fd00:3::12\" }\n      - { address: 10.0.0.1, port: \"82\", weight: 0 }\n",
    );
    let ports: Vec<_> = spec
        .backends
        .iter()
        .map(|b| b.target_port(&spec.ports[0]))
        .collect();
    assert_eq!(ports, [80, 81, 80, 82]);
    assert_eq!(spec.backends[3].weight, 0);
    assert_eq!(spec.backends[2].weight, 1);
    assert!(spec.backends[..3].iter().all(|b| b.address.is_ipv6()));
}

#[test]
fn bad_backends() {
    let backend = |b: &str| format!("{PORTS}    backends: [{b}]\n");
    for bad in [
        "10.0.0",
        "10.0.0.1:",
        "10.0.0.1:x",
        "[10.0.0.1]:80",
        "[fd00::1]80",
        "fd00::1]:80",
        "host:80",
    ] {
        let message = web_error(&backend(&format!("\"{bad}\"")), "backends[0]");
        assert!(
            message.contains("is not ADDR, ADDR:PORT, [IPV6]:PORT or IPV6"),
            "{message}"
        );
    }
    for bad in ["10.0.0.1:0", "[fd00::1]:65536"] {
        let message = web_error(&backend(&format!("\"{bad}\"")), "backends[0]");
        assert!(
            message.contains("out of range; ports are 1-65535"),
            "{message}"
        );
    }
    for (bad, reason) in [
        ("0.0.0.0", "unspecified"),
        ("\"[::]:80\"", "unspecified"),
        ("239.1.1.1:80", "multicast"),
        ("127.0.0.1", "loopback"),
        ("\"::1\"", "loopback"),
    ] {
        let message = web_error(&backend(bad), "backends[0]");
        assert!(message.contains(reason), "{bad}: {message}");
    }
    let message = web_error(
        &backend("10.0.0.1, { address: \"::1\" }"),
        "backends[1].address",
    );
    assert!(message.contains("loopback"), "{message}");
    let message = web_error(
        &backend("{ address: \"10.0.0.1:80\" }"),
        "backends[0].address",
    );
    assert!(message.contains("without port or brackets"), "{message}");
    for port in ["0", "65536", "http"] {
        let body = backend(&format!("{{ address: 10.0.0.1, port: {port} }}"));
        let message = web_error(&body, "backends[0].port");
        assert!(message.contains("ports are 1-65535"), "{message}");
    }
    for weight in ["65536", "-1", "1.5", "heavy"] {
        let body = backend(&format!("{{ address: 10.0.0.1, weight: {weight} }}"));
        let message = web_error(&body, "backends[0].weight");
        assert!(message.contains("weights are 0-65535"), "{message}");
    }
    let max = web_spec(&backend("{ address: 10.0.0.1, weight: 65535 }"));
    assert_eq!(max.backends[0].weight, MAX_WEIGHT);
}

#[test]
fn duplicate_backends() {
    let body =
        |ports: &str, backends: &str| format!("    ports: [{ports}]\n    backends: [{backends}]\n");
    let message = web_error(&body("80", "10.0.0.1, 10.0.0.2, 10.0.0.1"), "backends[2]");
    assert!(message.contains("backends[0]"), "{message}");
    assert!(message.contains("use weight"), "{message}");
    // Same endpoint once the mapping's backend port is filled in.
    let message = web_error(
        &body("\"80:8080\"", "\"10.0.0.1:8080\", 10.0.0.1"),
        "backends[1]",
    );
    assert!(message.contains("10.0.0.1:8080"), "{message}");
    let message = web_error(
        &body("80", "\"[fd00::1]:80\", { address: \"fd00::1\" }"),
        "backends[1]",
    );
    assert!(message.contains("[fd00::1]:80"), "{message}");
    web_error(&body("80", "\"::ffff:10.0.0.1\", 10.0.0.1"), "backends[1]");
    // Collides only for the second mapping: still one endpoint listed twice.
    web_error(&body("80, 81", "10.0.0.1, \"10.0.0.1:81\""), "backends[1]");

    // Different ports on one address are different backends.
    let spec = web_spec(&body(
        "80",
        "\"10.0.0.1:8080\", \"10.0.0.1:8081\", 10.0.0.1",
    ));
    assert_eq!(spec.backends.len(), 3);
}

#[test]
fn backend_count_limit() {
    let mut body = String::from("    ports: [80]\n    scheduler: round-robin\n    backends:\n");
    for i in 0..=MAX_BACKENDS_PER_SERVICE {
        let ip = Ipv4Addr::from(0x0a00_0001 + i as u32);
        body.push_str(&format!("      - {ip}\n"));
    }
    let message = web_error(&body, "backends");
    assert!(message.contains("65536 backends"), "{message}");
    assert!(message.contains("at most 65535"), "{message}");
}

#[test]
fn maglev_table_size() {
    let size = |s: &str| format!("{PORTS}    maglev_table_size: {s}\n");
    assert_eq!(web_spec(&size("2")).maglev_table_size, 2);
    assert_eq!(web_spec(&size("65537")).maglev_table_size, 65_537);
    let message = web_error(&size("16380"), "maglev_table_size");
    assert!(message.contains("16380 is not prime"), "{message}");
    assert!(message.contains("e.g. 16381"), "{message}");
    for bad in ["0", "1048573", "99999999999", "big", "-7"] {
        let message = web_error(&size(bad), "maglev_table_size");
        assert!(
            message.contains("prime of at most 1048572"),
            "{bad}: {message}"
        );
    }
    web_error(&size("1"), "maglev_table_size");

    let backends = |n: usize| {
        let list: Vec<String> = (1..=n)
            .map(|i| format!("\"10.0.{}.{}\"", i / 250, i % 250 + 1))
            .collect();
        format!("    backends: [{}]\n", list.join(", "))
    };
    let message = web_error(
        &format!("{}{}", size("3"), backends(4)),
        "maglev_table_size",
    );
    assert!(
        message.contains("3 is smaller than the 4 backends"),
        "{message}"
    );
    assert!(
        message.contains("at least 100x the backend count"),
        "{message}"
    );
    assert!(message.contains("e.g. maglev_table_size: 401"), "{message}");
    web_spec(&format!("{}{}", size("5"), backends(5)));
    // The default is checked too.
    let message = web_error(&format!("{PORTS}{}", backends(16_382)), "maglev_table_size");
    assert!(
        message.contains("the default table size 16381"),
        "{message}"
    );
    assert!(
        message.contains("e.g. maglev_table_size: 1048571 (the largest"),
        "{message}"
    );
    let message = web_error(
        &format!("{}{}", size("199"), backends(200)),
        "maglev_table_size",
    );
    assert!(
        message.contains("e.g. maglev_table_size: 20011;"),
        "{message}"
    );
    // Round-robin does not use the Maglev table.
    let rr = format!("{}    scheduler: round-robin\n{}", size("3"), backends(4));
    assert_eq!(web_spec(&rr).backends.len(), 4);
}

#[test]
fn prime_helpers() {
    let primes: Vec<u32> = (0..30).filter(|&n| is_prime(n)).collect();
    assert_eq!(primes, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
    assert!(is_prime(limits::DEFAULT_MAGLEV_TABLE_SIZE));
    assert!(is_prime(65_537) && !is_prime(65_535) && !is_prime(1_046_529));
    assert_eq!(prime_at_least(400), 401);
    assert_eq!(prime_at_least(0), 2);
    let largest = prime_at_least(u32::MAX);
    assert!(largest < limits::MAX_TABLE_SIZE && is_prime(largest));
    assert_eq!(prime_at_least(largest), largest);
}

#[test]
fn timeouts() {
    let t = |tcp: &str, udp: &str| {
        web_spec(&format!(
            "{PORTS}    timeouts: {{ tcp: {tcp}, udp: {udp} }}\n"
        ))
        .timeouts
    };
    assert_eq!(
        t("30s", "15m"),
        Timeouts {
            tcp_s: 30,
            udp_s: 900
        }
    );
    assert_eq!(
        t("24h", "1d"),
        Timeouts {
            tcp_s: 86_400,
            udp_s: 86_400
        }
    );
    assert_eq!(
        t("45", "\"1\""),
        Timeouts {
            tcp_s: 45,
            udp_s: 1
        }
    );
    assert_eq!(
        t("30d", "2592000"),
        Timeouts {
            tcp_s: MAX_TIMEOUT_S,
            udp_s: MAX_TIMEOUT_S
        }
    );
    let only_udp = web_spec(&format!("{PORTS}    timeouts: {{ udp: 5s }}\n")).timeouts;
    assert_eq!(only_udp.tcp_s, limits::DEFAULT_TCP_TIMEOUT_S);
    assert_eq!(only_udp.udp_s, 5);

    for bad in [
        "0",
        "0s",
        "31d",
        "2592001",
        "721h",
        "99999999999999999999d",
        "18446744073709551615d",
    ] {
        let message = web_error(
            &format!("{PORTS}    timeouts: {{ tcp: {bad} }}\n"),
            "timeouts.tcp",
        );
        assert!(
            message.contains("out of range; timeouts are 1s to 30d"),
            "{bad}: {message}"
        );
    }
    for bad in ["1h30m", "720h1s", "5x", "s", "1.5h", "-5s", "1 h", "10S"] {
        let message = web_error(
            &format!("{PORTS}    timeouts: {{ udp: \"{bad}\" }}\n"),
            "timeouts.udp",
        );
        assert!(
            message.contains("is not a duration; write e.g. 30s"),
            "{bad}: {message}"
        );
    }
}

#[test]
fn keywords_are_exact_and_errors_list_valid_values() {
    let cases = [
        ("scheduler", "Maglev", "maglev, round-robin"),
        ("scheduler", "roundrobin", "maglev, round-robin"),
        ("forwarding", "full-nat", "nat, fullnat"),
        ("affinity", "source-ip", "none, client-ip"),
        ("on_backend_removal", "drop", "keep, move, reset"),
        ("scheduler", "3", "maglev, round-robin"),
    ];
    for (field, value, valid) in cases {
        let message = web_error(&format!("{PORTS}    {field}: {value}\n"), field);
        assert!(
            message.contains(&format!("\"{value}\" is not a valid")),
            "{message}"
        );
        assert!(
            message.contains(&format!("valid values: {valid}")),
            "{message}"
        );
    }
}

#[test]
fn services_keep_their_names_and_empty_backends_are_valid() {
    let text = format!("services:\n  b:\n{PORTS}  a:\n    ports: [81]\n    backends: []\n");
    let file = parse(&text).unwrap();
    let names: Vec<_> = file.services.keys().cloned().collect();
    assert_eq!(names, ["a", "b"]);
    assert!(file.services.values().all(|s| s.backends.is_empty()));
    assert_eq!(file.services["a"].name, "a");
}

#[test]
fn load_reads_the_file() {
    let dir = std::env::temp_dir().join(format!("meshlb-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("services.yaml");
    std::fs::write(&path, EXAMPLE).unwrap();
    let loaded = ServiceFile::load(&path).unwrap();
    assert_eq!(loaded, parse(EXAMPLE).unwrap());

    std::fs::write(&path, "services:\n  web: { ports: [0] }\n").unwrap();
    let err = ServiceFile::load(&path).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("{}: service \"web\"", path.display()))
    );

    let missing = dir.join("missing.yaml");
    let err = ServiceFile::load(&missing).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
    assert_eq!(err.path(), missing);
    assert!(
        err.to_string().contains("cannot read the service file"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn client_ip_affinity_needs_maglev() {
    let e = web_error(
        "    ports: [80]\n    scheduler: round-robin\n    affinity: client-ip\n",
        "affinity",
    );
    assert!(e.contains("needs scheduler: maglev"), "{e}");
    let e = parse("services: {}\nswarm:\n  web: { scheduler: round-robin, affinity: client-ip }\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("swarm.affinity") && e.contains("maglev"), "{e}");
    // The swarm's own default (any-node) with round-robin is not an operator's choice.
    parse("services: {}\nswarm:\n  web: { scheduler: round-robin }\n").unwrap();
}

#[test]
fn huge_values_are_quoted_shortened_in_errors() {
    let name = "x".repeat(100_000);
    let e = parse(&format!("services:\n  {name}:\n    ports: [80]\n"))
        .unwrap_err()
        .to_string();
    // Beyond YAML's 1,024-character limit on a plain key, the reader refuses it; its message
    // quotes the value, shortened.
    assert!(e.len() < 400, "{} bytes: {}", e.len(), &e[..200]);
    assert!(e.contains("(100000 bytes)"), "{e}");
    let name = "y".repeat(500);
    let e = parse(&format!("services:\n  {name}:\n    ports: [80]\n"))
        .unwrap_err()
        .to_string();
    assert!(e.len() < 400, "{e}");
    assert!(
        e.contains("(500 bytes)") && e.contains("not a valid service name"),
        "{e}"
    );
}

#[test]
fn a_file_for_the_api_may_hold_services_only_and_the_refusal_names_it() {
    let services = "services:\n  web:\n    vip: 198.18.100.1\n    ports: [\"80/tcp\"]\n    backends: [198.18.2.10]\n";
    assert_eq!(parse(services).unwrap().only_services("more.yaml"), Ok(()));
    let lbd = parse(&format!("{services}lbd:\n  xdp_mode: generic\n"))
        .unwrap()
        .only_services("more.yaml")
        .unwrap_err();
    assert!(lbd.starts_with("more.yaml: field lbd:"), "{lbd}");
    let swarm = parse(&format!(
        "{services}swarm:\n  web:\n    scheduler: round-robin\n"
    ))
    .unwrap()
    .only_services("more.yaml")
    .unwrap_err();
    assert!(swarm.starts_with("more.yaml: field swarm:"), "{swarm}");
}
