//! The `tracked_floor` contender: lb-ebpf's `sink.rs` program of that name, which does the
//! least a balancer that tracks flows does per packet (one connection-table lookup, a
//! destination rewrite). Each run loads the bench-traffic object anew with the table sized
//! like meshlb's, so every run starts from an empty table as a new `lbd` does, and dropping
//! the contender frees it (about 200 MB at meshlb's default size).

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result, ensure};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData},
    programs::{XdpMode, xdp::XdpLinkId},
};
use lb_common::traffic::{FLOOR_MAX_BACKENDS, FloorConfig};
use lb_testkit::Netns;

use super::{set_redirect, xdp_mut};
use crate::objects::TRAFFIC_OBJECT;

pub struct TrackedFloor {
    ebpf: Ebpf,
    link: Option<XdpLinkId>,
}

/// Where the floor sends frames: the port out and its MACs, the backends a new flow takes.
pub struct TrackedFloorRoute<'a> {
    pub out_ifindex: u32,
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub backends: &'a [Ipv4Addr],
    pub port: u16,
}

impl TrackedFloor {
    /// Loads the floor with a connection table of `max_entries` (as the kernel is asked for
    /// it: see `lb_common::limits::hash_table_entries`), sending out of `route.out_ifindex`
    /// of `ns` (else of the calling thread's namespace); attaches nothing.
    pub fn load(
        ns: Option<&Netns>,
        route: &TrackedFloorRoute<'_>,
        max_entries: u32,
    ) -> Result<TrackedFloor> {
        ensure!(
            (1..=FLOOR_MAX_BACKENDS).contains(&route.backends.len()),
            "the tracked floor takes 1 to {FLOOR_MAX_BACKENDS} backends, not {}",
            route.backends.len()
        );
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("FLOOR_FLOWS", max_entries)
            // The sink's flow record is not used by this copy of the object.
            .map_max_entries("SINK_FLOWS", 1)
            .load(TRAFFIC_OBJECT)
            .context("loading the bench-traffic object for the tracked floor")?;
        let mut config: Array<&mut MapData, FloorConfig> =
            Array::try_from(ebpf.map_mut("FLOOR_CONFIG").context("FLOOR_CONFIG")?)?;
        config.set(
            0,
            FloorConfig {
                backends: route.backends.len() as u32,
                port: route.port.to_be(),
                _pad: 0,
            },
            0,
        )?;
        let mut backends: Array<&mut MapData, u32> =
            Array::try_from(ebpf.map_mut("FLOOR_BACKENDS").context("FLOOR_BACKENDS")?)?;
        for (i, addr) in route.backends.iter().enumerate() {
            backends.set(i as u32, u32::from_ne_bytes(addr.octets()), 0)?;
        }
        set_redirect(
            &mut ebpf,
            ns,
            route.out_ifindex,
            route.dst_mac,
            route.src_mac,
        )?;
        xdp_mut(&mut ebpf, "tracked_floor")?
            .load()
            .context("verifying tracked_floor")?;
        Ok(TrackedFloor { ebpf, link: None })
    }

    /// The program, e.g. for `bench micro`'s harness to tail-call.
    pub fn program(&self) -> Result<&aya::programs::Xdp> {
        super::xdp(&self.ebpf, "tracked_floor")
    }

    /// The flows its table holds (a walk of the table: for tests and small tables).
    #[cfg(test)]
    pub fn flows(&self) -> Result<usize> {
        let map = self.ebpf.map("FLOOR_FLOWS").context("FLOOR_FLOWS")?;
        let flows: aya::maps::HashMap<&MapData, [u32; 4], [u32; 2]> =
            aya::maps::HashMap::try_from(map)?;
        Ok(flows.keys().count())
    }

    /// Attaches the floor (native XDP) to `interface` in `ns`.
    pub fn attach(&mut self, ns: &Netns, interface: &str) -> Result<()> {
        let prog = xdp_mut(&mut self.ebpf, "tracked_floor")?;
        let link = ns
            .run(|| prog.attach(interface, XdpMode::Driver))?
            .with_context(|| format!("attaching the tracked floor to {interface}"))?;
        self.link = Some(link);
        Ok(())
    }

    pub fn detach(mut self) -> Result<()> {
        if let Some(link) = self.link.take() {
            xdp_mut(&mut self.ebpf, "tracked_floor")?.detach(link)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddrV4;

    use lb_testkit::packet::{Ipv4Frame, parse_ipv4};

    use super::*;

    const XDP_PASS: u32 = 2;
    const XDP_REDIRECT: u32 = 4;
    const SINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
    const OUT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

    fn run(floor: &TrackedFloor, frame: &[u8]) -> (u32, Vec<u8>) {
        crate::traffic::kernel_tests::run(floor.program().unwrap(), frame, 1)
    }

    /// A new flow takes a backend and keeps it; the frame leaves byte for byte as the same
    /// frame built toward that backend from scratch (so both incremental checksum updates
    /// are right), UDP without a checksum keeps none, and what is not IPv4 UDP/TCP passes
    /// untouched. Kernel test: root and `MESHLB_E2E`.
    #[test]
    fn the_tracked_floor_rewrites_each_flow_toward_its_backend() {
        if !lb_testkit::e2e_enabled() {
            return;
        }
        let ns = Netns::new("mlbfloor").unwrap();
        let backends: Vec<Ipv4Addr> = (1..=4).map(|i| Ipv4Addr::new(198, 18, 16, i)).collect();
        let route = TrackedFloorRoute {
            // The namespace's loopback: the program's redirect needs a device in the map,
            // a test run sends nothing.
            out_ifindex: 1,
            dst_mac: SINK_MAC,
            src_mac: OUT_MAC,
            backends: &backends,
            port: 8080,
        };
        let floor = TrackedFloor::load(Some(&ns), &route, 1025).unwrap();
        let vip: SocketAddrV4 = "198.18.100.1:80".parse().unwrap();
        let toward = |sent: &Ipv4Frame, backend: Ipv4Addr| Ipv4Frame {
            eth_dst: SINK_MAC,
            eth_src: OUT_MAC,
            dst: SocketAddrV4::new(backend, 8080),
            ..sent.clone()
        };
        let udp = Ipv4Frame {
            payload: b"floor".to_vec(),
            ..Ipv4Frame::udp("198.19.0.1:16384".parse().unwrap(), vip)
        };
        let syn = Ipv4Frame::tcp("198.19.0.2:16385".parse().unwrap(), vip, 0x02);
        let mut chosen = Vec::new();
        for sent in [&udp, &syn] {
            let (action, out) = run(&floor, &sent.build());
            assert_eq!(action, XDP_REDIRECT);
            let backend = *parse_ipv4(&out).unwrap().dst.ip();
            assert!(backends.contains(&backend), "{backend}");
            assert_eq!(out, toward(sent, backend).build());
            // Again: the flow is tracked and keeps its backend.
            assert_eq!(run(&floor, &sent.build()).1, out);
            chosen.push(backend);
        }
        assert_eq!(floor.flows().unwrap(), 2);

        // The same UDP flow without a checksum: none is made up.
        let mut bare = udp.build();
        bare[14 + 20 + 6..14 + 20 + 8].fill(0);
        let (action, out) = run(&floor, &bare);
        assert_eq!(action, XDP_REDIRECT);
        let mut expected = toward(&udp, chosen[0]).build();
        expected[14 + 20 + 6..14 + 20 + 8].fill(0);
        assert_eq!(out, expected);

        let mut arp = udp.build();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        let mut options = udp.build();
        options[14] = 0x46;
        // New flows' frames the floor cannot track: a first fragment (more fragments set,
        // the IPv4 checksum fixed so only the flag differs) and a TCP segment cut short of
        // its checksum. Neither may leave an entry.
        let other = Ipv4Frame {
            src: "198.19.0.9:16390".parse().unwrap(),
            ..udp.clone()
        };
        let mut fragment = other.build();
        fragment[14 + 6] |= 0x20;
        fragment[14 + 10..14 + 12].fill(0);
        let sum = lb_testkit::packet::checksum(&fragment[14..34], 0);
        fragment[14 + 10..14 + 12].copy_from_slice(&sum.to_be_bytes());
        let short_tcp = Ipv4Frame::tcp("198.19.0.9:16391".parse().unwrap(), vip, 0x02).build()
            [..14 + 20 + 12]
            .to_vec();
        for untouched in [arp, options, fragment, short_tcp] {
            assert_eq!(run(&floor, &untouched), (XDP_PASS, untouched.clone()));
        }
        assert_eq!(floor.flows().unwrap(), 2);
    }
}
