//! The traffic programs themselves, run through `BPF_PROG_TEST_RUN` (plain, not live frames):
//! the generator's frames against the test kit's from scratch, and the sink's counts. Kernel
//! tests: they need root and `MESHLB_E2E` (they load programs but create no namespace).

use std::net::IpAddr;

use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use lb_testkit::{
    frame_socket::FrameSocket,
    packet::{Ipv4Frame, parse_ipv4, parse_ipv6},
};

use super::{
    Traffic, pin_to,
    template::{FlowSet, Kind, test_set as set},
    xdp,
};

const XDP_DROP: u32 = 1;
const XDP_TX: u32 = 3;

/// Runs `prog` `repeat` times over `frame` (each run sees what the last one wrote); returns
/// the program's last answer and the frame as it left.
pub(super) fn run(prog: &Xdp, frame: &[u8], repeat: u32) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; frame.len() + 64];
    let result = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::default()
        })
        .unwrap();
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}

/// Whatever the page held before (here: every byte the generator writes set to 0xa5, the
/// payload as the first frame left it), the kernel program's frame number n is, byte for
/// byte, flow n / per_flow % flows built from scratch, checksums included; the flow counter
/// wraps exactly at the flow count.
#[test]
fn generated_frames_are_the_flows_built_from_scratch() {
    if !lb_testkit::e2e_enabled() {
        return;
    }
    // The flow counter is per CPU: every run on one.
    pin_to(0).unwrap();
    let mut traffic = Traffic::load().unwrap();
    let cases = [
        set(Kind::Udp, "198.18.100.1:80", 70_000, 60),
        set(Kind::Syn, "198.18.100.1:80", 3, 60),
        set(Kind::Ack, "198.18.100.1:80", 20_000, 128),
        set(Kind::Udp, "[fd00:100::1]:80", 70_000, 64),
        set(Kind::Ack, "[fd00:100::1]:80", 5, 80),
        // Each flow twice in a row, as a warm-up that confirms its flows sends them.
        FlowSet {
            per_flow: 2,
            ..set(Kind::Udp, "198.18.100.1:80", 70_000, 60)
        },
    ];
    for s in cases {
        let written = s.config().unwrap().words as usize * 8;
        let mut junk = traffic.configure(&s).unwrap();
        junk[..written].fill(0xa5);
        // Packet numbers reached one after another: 0, 1, 2, then 2 + 16383, ...
        let mut n = 0u64;
        for repeat in [1u32, 1, 1, 16_383, 1, 50_000, 3, 20_000] {
            let (action, frame) = run(xdp(&traffic.ebpf, "generator").unwrap(), &junk, repeat);
            n += u64::from(repeat);
            let k = ((n - 1) / u64::from(s.per_flow) % u64::from(s.flows)) as u32;
            assert_eq!(action, XDP_TX, "{:?} packet {}", s.kind, n - 1);
            assert_eq!(
                frame,
                s.frame(k).unwrap(),
                "{:?} {} packet {}",
                s.kind,
                s.dst,
                n - 1
            );
            let src = if s.dst.is_ipv4() {
                IpAddr::V4(*parse_ipv4(&frame).unwrap().src.ip())
            } else {
                IpAddr::V6(*parse_ipv6(&frame).unwrap().src.ip())
            };
            assert_eq!(src, s.source(k).ip());
        }
        assert_eq!(traffic.generated().unwrap(), n);
    }
}

/// The sink counts every frame under its destination, through its slots and, for an
/// address whose slot another one holds, through the hash map; frames that are not IP are
/// counted apart. Every frame is dropped.
#[test]
fn sink_counts_each_destination_once() {
    if !lb_testkit::e2e_enabled() {
        return;
    }
    let traffic = Traffic::load().unwrap();
    let v4 = |dst: &str| {
        Ipv4Frame::udp("198.19.0.1:16384".parse().unwrap(), dst.parse().unwrap()).build()
    };
    let v6 = set(Kind::Udp, "[fd00:2::1]:8080", 1, 64).frame(0).unwrap();
    // 198.18.16.1, 198.18.32.1 and fd00:2::1 share slot 1; 198.18.16.2 has its own.
    let sent: [(Vec<u8>, u32); 4] = [
        (v4("198.18.16.1:8080"), 3),
        (v4("198.18.32.1:8080"), 2),
        (v6, 4),
        (v4("198.18.16.2:8080"), 5),
    ];
    for (frame, times) in &sent {
        assert_eq!(
            run(xdp(&traffic.ebpf, "sink").unwrap(), frame, *times).0,
            XDP_DROP
        );
    }
    let mut arp = v4("198.18.16.1:8080");
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    assert_eq!(
        run(xdp(&traffic.ebpf, "sink").unwrap(), &arp, 1).0,
        XDP_DROP
    );
    let (counts, other) = traffic.sink_counts().unwrap();
    let expected = [
        ("198.18.16.1", 3),
        ("198.18.32.1", 2),
        ("fd00:2::1", 4),
        ("198.18.16.2", 5),
    ]
    .map(|(ip, n)| (ip.parse::<IpAddr>().unwrap(), n))
    .into_iter()
    .collect();
    assert_eq!(counts, expected);
    assert_eq!(other, 1);
}

/// `bench pps`' tracked floor on the bench topology, as a contender runs: frames of 64 flows
/// into the node's veth reach the sink's, each flow at one of the 4 backends on the backend
/// port (the sink counts per destination address), its table holds the 64 flows, and
/// stopping the contender detaches it.
/// Sent with a packet socket, not live frames, so that it holds wherever XDP runs on veths.
#[test]
fn the_tracked_floor_forwards_each_flow_to_a_backend() {
    if !lb_testkit::e2e_enabled() {
        return;
    }
    use super::{
        node::{Node, NodeConfig, Through},
        topo::{self, PpsTopology},
    };
    let topo = PpsTopology::new().unwrap();
    let mut traffic = Traffic::load().unwrap();
    traffic.attach(&topo).unwrap();
    let config = NodeConfig {
        backends: 4,
        scheduler: "maglev".into(),
        extra_services: 0,
        backend_indices: None,
        lbd: "unused".into(),
        conntrack_entries: Some(1024),
    };
    let node = Node::start(Through::Floor, &topo, &mut traffic, &config).unwrap();
    let flows = set(Kind::Udp, "198.18.100.1:80", 64, 60);
    let frames: Vec<Vec<u8>> = (0..64)
        .flat_map(|k| {
            let frame = flows.frame(k).unwrap();
            [frame.clone(), frame]
        })
        .collect();
    topo.generator
        .run(|| {
            let socket = FrameSocket::open(topo::GEN_IF)?;
            frames.iter().try_for_each(|f| socket.send(f))
        })
        .unwrap()
        .unwrap();
    let backends: Vec<IpAddr> = (0..4).map(|i| topo::backend_addr(i, false)).collect();
    // The node's own kernel also sends on the sink's link (an MLD report when the veth comes
    // up): only IPv4 is the generator's.
    let ipv4 = |counts: &std::collections::BTreeMap<IpAddr, u64>| -> std::collections::BTreeMap<IpAddr, u64> {
        counts.iter().filter(|(a, _)| a.is_ipv4()).map(|(a, n)| (*a, *n)).collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let counts = loop {
        let counts = ipv4(&traffic.sink_counts().unwrap().0);
        if counts.values().sum::<u64>() >= 128 || std::time::Instant::now() > deadline {
            break counts;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(counts.values().sum::<u64>(), 128, "{counts:?}");
    assert!(counts.keys().all(|a| backends.contains(a)), "{counts:?}");
    assert!(counts.len() > 1, "64 flows on one backend: {counts:?}");
    assert_eq!(node.tracked_floor().unwrap().flows().unwrap(), 64);
    node.stop(&topo, &mut traffic).unwrap();
    assert!(!topo.node.xdp_attached(topo::NODE_IN).unwrap());
}
