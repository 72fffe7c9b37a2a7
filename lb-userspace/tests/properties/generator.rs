//! The generators: well-formed packets of every kind, mutations of them, random bytes.

use super::*;

/// The shared SplitMix64, with the draws the generators need.
pub(crate) struct Rng(pub(crate) SplitMix64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is irrelevant here).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub(crate) fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    pub(crate) fn u8(&mut self) -> u8 {
        self.next() as u8
    }

    pub(crate) fn u16(&mut self) -> u16 {
        self.next() as u16
    }

    pub(crate) fn u32(&mut self) -> u32 {
        self.next() as u32
    }

    pub(crate) fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u8()).collect()
    }
}

pub(crate) fn seed() -> u64 {
    match std::env::var("MESHLB_PROPTEST_SEED") {
        Ok(text) if text.trim() == "random" => {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64;
            nanos ^ (u64::from(std::process::id()) << 40)
        }
        Ok(text) => {
            let t = text.trim();
            let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => t.parse(),
            };
            parsed.unwrap_or_else(|_| {
                panic!("MESHLB_PROPTEST_SEED={text:?} is not a u64 (decimal or 0x-hex)")
            })
        }
        // A fixed default keeps CI repeatable; `MESHLB_PROPTEST_SEED=random` explores.
        Err(_) => DEFAULT_SEED,
    }
}

pub(crate) const DEFAULT_SEED: u64 = 0x6d65_7368_6c62;

/// What a case is expected to do, beyond the invariants every run must keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// Well-formed, to a frontend whose service has a usable backend: translated to one of the
    /// service's backends (or, round-robin and mid-flow without a flow, dropped).
    ToFrontend { service: u32 },
    /// Well-formed, to a frontend whose service has no usable backend: a TCP SYN is answered
    /// with a RST from the frontend, anything else dropped.
    ToEmptyFrontend,
    /// Well-formed reply of a backend on a flow the program opened: translated back, to the
    /// client.
    Reply { service: u32, client: SocketAddrV4 },
    /// An echo request to a VIP: answered.
    EchoToVip,
    /// An ICMP error about a packet of a tracked flow: translated, toward the backend (the
    /// quote is a reply the client got) or the client (the quote is what a backend got).
    IcmpError {
        service: u32,
        to_backend: bool,
        client: SocketAddrV4,
    },
    /// Well-formed, neither to a frontend nor from a backend endpoint, nor an ICMP message
    /// the program answers or translates: passed untouched.
    Unrelated,
    /// IPv6 with IPv4-mapped addresses (`::ffff:a.b.c.d`) of a frontend or a tracked flow:
    /// no IPv6 service has such an address, so passed untouched.
    V4Mapped,
    /// IPv6, well-formed, to a VIP whose service has backends: translated to one of them.
    ToFrontend6 { service: u32 },
    /// IPv6, a backend's reply on a flow the program opened: translated back to the client.
    Reply6 { service: u32, client: SocketAddrV6 },
    /// Mutated, truncated or random: only the invariants.
    Mutated,
}

#[derive(Clone)]
pub(crate) struct Case {
    pub(crate) frame: Vec<u8>,
    pub(crate) ingress: u32,
    pub(crate) class: Class,
    pub(crate) what: String,
}

/// A flow the program opened, as the translated packet showed it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Flow {
    pub(crate) client: SocketAddrV4,
    /// The client as the backend sees it: the client itself, or under full NAT the node
    /// address and port that replace it.
    pub(crate) seen_as: SocketAddrV4,
    pub(crate) frontend: SocketAddrV4,
    pub(crate) backend: SocketAddrV4,
    pub(crate) proto: u8,
    pub(crate) service: u32,
}

/// An IPv6 flow the program opened (see `Flow`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Flow6 {
    pub(crate) client: SocketAddrV6,
    pub(crate) seen_as: SocketAddrV6,
    pub(crate) frontend: SocketAddrV6,
    pub(crate) backend: SocketAddrV6,
    pub(crate) proto: u8,
    pub(crate) service: u32,
}

pub(crate) struct Generator<'a> {
    pub(crate) rng: Rng,
    pub(crate) model: &'a Model,
    pub(crate) ifaces: Interfaces,
    pub(crate) flows: Vec<Flow>,
    pub(crate) flows6: Vec<Flow6>,
}

pub(crate) fn proto_name(proto: u8) -> &'static str {
    match proto {
        proto::TCP => "tcp",
        proto::UDP => "udp",
        proto::ICMP => "icmp",
        _ => "ip",
    }
}

pub(crate) fn backend_mac(ip: &Ipv4Addr) -> [u8; 6] {
    BACKENDS
        .iter()
        .position(|b| b == ip)
        .map_or(progtest::backend_mac(0), progtest::backend_mac)
}

impl Generator<'_> {
    pub(crate) fn case(&mut self) -> Case {
        let mut case = match self.rng.below(100) {
            0..=19 => self.for_frontend(),
            20..=24 => self.ipv6(),
            25..=36 => self.reply(),
            37..=39 => self.echo_to_vip(),
            40..=44 => self.icmp_error(),
            45..=52 => self.unrelated(),
            53..=54 => self.v4_mapped(),
            55..=59 => self.random_bytes(),
            _ => return self.mutated(),
        };
        if self.rng.chance(10) {
            let tags = self.vlan_tags(&mut case.frame);
            case.what.push_str(&tags);
        }
        case
    }

    /// Forgets the remembered flow whose client and frontend `frame` (IPv4, maybe tagged)
    /// carries.
    pub(crate) fn forget(&mut self, frame: &[u8]) {
        let Some(l3) = ipv4_offset(frame) else {
            return;
        };
        let (client, frontend) = endpoints(&frame[l3..]);
        self.flows.retain(|f| {
            !(f.client == client && f.frontend == frontend && f.proto == frame[l3 + 9])
        });
    }

    pub(crate) fn remember(&mut self, flow: Flow) {
        // A flow re-opened on the same tuple (SYN after FIN, or after expiry) replaces the
        // old one: the program removes the old reply entry, so the old backend's late
        // packets are no longer translated.
        if let Some(old) = self.flows.iter_mut().find(|f| {
            f.client == flow.client && f.frontend == flow.frontend && f.proto == flow.proto
        }) {
            *old = flow;
            return;
        }
        if self.flows.len() < MAX_FLOWS {
            self.flows.push(flow);
        } else {
            let i = self.rng.below(MAX_FLOWS);
            self.flows[i] = flow;
        }
    }

    /// Mostly the client that has a neighbour entry, sometimes ones whose replies the FIB
    /// sends to the node itself (node addresses, no route) or refuses (blackhole, unreachable).
    pub(crate) fn client(&mut self) -> SocketAddrV4 {
        let ip = match self.rng.below(20) {
            0 => self.rng.pick(&[NODE_CLIENT_SIDE, NODE_BACKEND_SIDE]),
            1 => Ipv4Addr::new(198, 18, 9, self.rng.u8()),
            2 => Ipv4Addr::new(198, 18, 8, self.rng.u8()),
            3 => Ipv4Addr::new(198, 19, self.rng.u8(), self.rng.u8()),
            4..=9 => Ipv4Addr::new(198, 18, 1, 3 + self.rng.below(6) as u8),
            _ => CLIENT,
        };
        let port = if self.rng.chance(80) {
            40_000 + self.rng.below(64) as u16
        } else {
            self.rng.u16()
        };
        SocketAddrV4::new(ip, port)
    }

    pub(crate) fn tcp_flags(&mut self) -> u8 {
        let random = self.rng.u8();
        self.rng.pick(&[
            TCP_SYN,
            TCP_SYN,
            TCP_ACK,
            TCP_ACK | TCP_PSH,
            TCP_SYN | TCP_ACK,
            TCP_FIN | TCP_ACK,
            TCP_RST,
            TCP_RST | TCP_ACK,
            0,
            random,
        ])
    }

    /// A well-formed TCP or UDP packet, from the IPv4 header on (for ICMP quotes).
    pub(crate) fn packet(&mut self, src: SocketAddrV4, dst: SocketAddrV4, protocol: u8) -> Vec<u8> {
        let mut f = self.frame(src, dst, protocol, (CLIENT_MAC, NODE_MAC));
        let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
        f.truncate(14 + total);
        f.split_off(14)
    }

    /// A well-formed frame with random flags, payload, TTL and id; sometimes UDP without a
    /// checksum, sometimes with Ethernet padding (a total length shorter than the frame, as on
    /// the wire). `macs` is (source, destination).
    pub(crate) fn frame(
        &mut self,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        protocol: u8,
        macs: ([u8; 6], [u8; 6]),
    ) -> Vec<u8> {
        let l4 = if protocol == proto::TCP {
            L4::Tcp {
                flags: self.tcp_flags(),
                seq: self.rng.u32(),
                ack: self.rng.u32(),
            }
        } else if self.rng.chance(20) {
            L4::UdpNoChecksum
        } else {
            L4::Udp
        };
        let payload_len = self.rng.below(65);
        let mut f = Ipv4Frame {
            eth_src: macs.0,
            eth_dst: macs.1,
            src,
            dst,
            l4,
            ttl: 1 + self.rng.below(255) as u8,
            // Not drawn: a draw more would change every seed's frames after it.
            tos: 0,
            ip_id: self.rng.u16(),
            payload: self.rng.bytes(payload_len),
        }
        .build();
        if f.len() < 60 && self.rng.chance(15) {
            f.resize(60, 0);
        }
        f
    }

    pub(crate) fn any_ingress(&mut self) -> u32 {
        match self.rng.below(10) {
            0 => self.ifaces.lo,
            1..=3 => self.ifaces.backend,
            _ => self.ifaces.client,
        }
    }

    /// One or two VLAN tags (802.1Q, or 802.1ad outside 802.1Q), which change nothing.
    pub(crate) fn vlan_tags(&mut self, f: &mut Vec<u8>) -> String {
        let mut tags = Vec::new();
        let qinq = self.rng.chance(30);
        if qinq {
            tags.extend_from_slice(&[0x88, 0xa8]);
            tags.extend_from_slice(&(self.rng.u16() & 0x0fff).to_be_bytes());
        }
        tags.extend_from_slice(&[0x81, 0x00]);
        tags.extend_from_slice(&(self.rng.u16() & 0x0fff).to_be_bytes());
        f.splice(12..12, tags);
        if qinq {
            ", QinQ-tagged".into()
        } else {
            ", VLAN-tagged".into()
        }
    }

    pub(crate) fn for_frontend(&mut self) -> Case {
        let (client, frontend, protocol, service) = if !self.flows.is_empty() && self.rng.chance(40)
        {
            let f = self.rng.pick(&self.flows);
            (f.client, f.frontend, f.proto, f.service)
        } else {
            let (ep, service) = self.rng.pick(&self.model.frontends);
            (self.client(), ep.addr, ep.proto, service)
        };
        let frame = self.frame(client, frontend, protocol, (CLIENT_MAC, NODE_MAC));
        let ingress = if self.rng.chance(85) {
            self.ifaces.client
        } else {
            self.ifaces.backend
        };
        let class = if self.model.services[&service].usable {
            Class::ToFrontend { service }
        } else {
            Class::ToEmptyFrontend
        };
        Case {
            frame,
            ingress,
            class,
            what: format!("{} {client} -> frontend {frontend}", proto_name(protocol)),
        }
    }

    /// An IPv6 packet to a VIP (a new or a tracked flow), or a backend's reply on a tracked
    /// flow.
    pub(crate) fn ipv6(&mut self) -> Case {
        if !self.flows6.is_empty() && self.rng.chance(40) {
            let flow = self.rng.pick(&self.flows6);
            let frame = self.frame6(
                flow.backend,
                flow.seen_as,
                flow.proto,
                (progtest::backend_mac(0), self.ifaces.backend_mac),
            );
            return Case {
                frame,
                ingress: self.ifaces.backend,
                class: Class::Reply6 {
                    service: flow.service,
                    client: flow.client,
                },
                what: format!(
                    "IPv6 {} reply {} -> {} on a flow {} -> {}",
                    proto_name(flow.proto),
                    flow.backend,
                    flow.seen_as,
                    flow.client,
                    flow.frontend
                ),
            };
        }
        let (client, frontend, protocol, service) =
            if !self.flows6.is_empty() && self.rng.chance(40) {
                let f = self.rng.pick(&self.flows6);
                (f.client, f.frontend, f.proto, f.service)
            } else {
                let (frontend, protocol, service) = self.rng.pick(&self.model.v6.frontends);
                let port = 40_000 + self.rng.below(64) as u16;
                (
                    SocketAddrV6::new(CLIENT6, port, 0, 0),
                    frontend,
                    protocol,
                    service,
                )
            };
        Case {
            frame: self.frame6(client, frontend, protocol, (CLIENT_MAC, NODE_MAC)),
            ingress: self.ifaces.client,
            class: Class::ToFrontend6 { service },
            what: format!(
                "IPv6 {} {client} -> frontend {frontend}",
                proto_name(protocol)
            ),
        }
    }

    /// A well-formed IPv6 frame with random flags, payload and hop limit; sometimes UDP
    /// without a checksum (the program keeps it zero); sometimes Ethernet padding.
    pub(crate) fn frame6(
        &mut self,
        src: SocketAddrV6,
        dst: SocketAddrV6,
        protocol: u8,
        macs: ([u8; 6], [u8; 6]),
    ) -> Vec<u8> {
        let l4 = if protocol == proto::TCP {
            L4::Tcp {
                flags: self.tcp_flags(),
                seq: self.rng.u32(),
                ack: self.rng.u32(),
            }
        } else if self.rng.chance(10) {
            L4::UdpNoChecksum
        } else {
            L4::Udp
        };
        let payload_len = self.rng.below(65);
        let mut f = Ipv6Frame {
            eth_src: macs.0,
            eth_dst: macs.1,
            src,
            dst,
            l4,
            hop_limit: 1 + self.rng.below(255) as u8,
            payload: self.rng.bytes(payload_len),
        }
        .build();
        if f.len() < 80 && self.rng.chance(15) {
            f.resize(80, 0);
        }
        f
    }

    pub(crate) fn remember6(&mut self, flow: Flow6) {
        if let Some(old) = self.flows6.iter_mut().find(|f| {
            f.client == flow.client && f.frontend == flow.frontend && f.proto == flow.proto
        }) {
            *old = flow;
        } else if self.flows6.len() < MAX_FLOWS {
            self.flows6.push(flow);
        }
    }

    /// Forgets the remembered IPv6 flow whose client and frontend `frame` carries.
    pub(crate) fn forget6(&mut self, frame: &[u8]) {
        let Some(l3) = ipv6_offset(frame).filter(|l3| frame.len() >= l3 + 44) else {
            return;
        };
        let (client, frontend) = endpoints6(&frame[l3..]);
        let protocol = frame[l3 + 6];
        self.flows6
            .retain(|f| !(f.client == client && f.frontend == frontend && f.proto == protocol));
    }

    pub(crate) fn reply(&mut self) -> Case {
        if self.flows.is_empty() {
            return self.for_frontend();
        }
        let flow = self.rng.pick(&self.flows);
        let frame = self.frame(
            flow.backend,
            flow.seen_as,
            flow.proto,
            (backend_mac(flow.backend.ip()), self.ifaces.backend_mac),
        );
        let ingress = if self.rng.chance(90) {
            self.ifaces.backend
        } else {
            self.ifaces.client
        };
        Case {
            frame,
            ingress,
            class: Class::Reply {
                service: flow.service,
                client: flow.client,
            },
            what: format!(
                "{} reply {} -> {} on a flow {} -> {}",
                proto_name(flow.proto),
                flow.backend,
                flow.seen_as,
                flow.client,
                flow.frontend
            ),
        }
    }

    pub(crate) fn echo_to_vip(&mut self) -> Case {
        let vip = self.rng.pick(&self.model.icmp_vips);
        let client = *self.client().ip();
        let rest = self.rng.u32().to_be_bytes();
        let len = self.rng.below(57);
        let body = self.rng.bytes(len);
        Case {
            frame: icmp_frame(
                (CLIENT_MAC, NODE_MAC),
                client,
                vip,
                ICMP_ECHO,
                0,
                rest,
                &body,
            ),
            ingress: self.ifaces.client,
            class: Class::EchoToVip,
            what: format!("icmp echo request {client} -> VIP {vip}"),
        }
    }

    /// An ICMP error about a tracked flow: from the backend side about what a backend got
    /// (for the client), or from the client side about a reply the client got (for the
    /// backend). The quote is the whole packet or, as RFC 792 allows, its first 8 L4 bytes.
    pub(crate) fn icmp_error(&mut self) -> Case {
        if self.flows.is_empty() {
            return self.echo_to_vip();
        }
        let flow = self.rng.pick(&self.flows);
        let to_backend = self.rng.chance(50);
        let (mut quote, outer_src, outer_dst, macs, ingress) = if to_backend {
            let quote = self.packet(flow.frontend, flow.client, flow.proto);
            let src = if self.rng.chance(50) {
                *flow.client.ip()
            } else {
                CLIENT_SIDE_ROUTER
            };
            let macs = (CLIENT_MAC, NODE_MAC);
            (quote, src, *flow.frontend.ip(), macs, self.ifaces.client)
        } else {
            let quote = self.packet(flow.seen_as, flow.backend, flow.proto);
            let src = if self.rng.chance(50) {
                *flow.backend.ip()
            } else {
                BACKEND_SIDE_ROUTER
            };
            let macs = (backend_mac(flow.backend.ip()), self.ifaces.backend_mac);
            (quote, src, *flow.seen_as.ip(), macs, self.ifaces.backend)
        };
        let complete = self.rng.chance(60);
        if !complete {
            quote.truncate(28);
        }
        let pointer = self.rng.below(20) as u8;
        let (ty, code, rest) = self.rng.pick(&[
            (ICMP_DEST_UNREACH, 3, [0; 4]),
            (ICMP_DEST_UNREACH, 1, [0; 4]),
            (ICMP_DEST_UNREACH, 4, [0, 0, 0x05, 0x78]),
            (ICMP_TIME_EXCEEDED, 0, [0; 4]),
            (ICMP_PARAMETER_PROBLEM, 0, [pointer, 0, 0, 0]),
        ]);
        Case {
            frame: icmp_frame(macs, outer_src, outer_dst, ty, code, rest, &quote),
            ingress,
            class: Class::IcmpError {
                service: flow.service,
                to_backend,
                client: flow.client,
            },
            what: format!(
                "icmp type {ty} code {code} {outer_src} -> {outer_dst} quoting {} bytes of a {} packet {} (flow {} -> {} to {})",
                quote.len(),
                proto_name(flow.proto),
                if to_backend {
                    "the client got"
                } else {
                    "a backend got"
                },
                flow.client,
                flow.frontend,
                flow.backend
            ),
        }
    }

    pub(crate) fn unrelated(&mut self) -> Case {
        loop {
            let src = SocketAddrV4::new(
                Ipv4Addr::new(
                    198,
                    18 + self.rng.below(2) as u8,
                    self.rng.u8(),
                    self.rng.u8(),
                ),
                self.rng.u16(),
            );
            // Often a frontend's or backend's address with another port or protocol.
            let dst_ip = if self.rng.chance(40) {
                *self.rng.pick(&self.model.frontends).0.addr.ip()
            } else if self.rng.chance(20) {
                self.rng.pick(&BACKENDS)
            } else {
                Ipv4Addr::new(
                    198,
                    18 + self.rng.below(2) as u8,
                    self.rng.u8(),
                    self.rng.u8(),
                )
            };
            let dst = SocketAddrV4::new(dst_ip, self.rng.u16());
            let protocol = self.rng.pick(&[proto::TCP, proto::UDP, proto::ICMP]);
            if protocol == proto::ICMP {
                return self.unrelated_icmp(*src.ip(), dst_ip);
            }
            if self.model.is_endpoint(Endpoint {
                addr: dst,
                proto: protocol,
            }) || self.model.is_endpoint(Endpoint {
                addr: src,
                proto: protocol,
            }) {
                continue;
            }
            let mut frame = self.frame(src, dst, protocol, (CLIENT_MAC, NODE_MAC));
            let mut what = format!("{} {src} -> {dst}, no frontend", proto_name(protocol));
            if self.rng.chance(5) {
                frame.truncate(42);
                frame[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
                what = "ARP-sized frame with ethertype 0x0806".into();
            }
            let ingress = self.any_ingress();
            return Case {
                frame,
                ingress,
                class: Class::Unrelated,
                what,
            };
        }
    }

    /// ICMP the program leaves alone: echo replies, echo requests to anything but a VIP,
    /// timestamps, and errors about packets of no tracked flow.
    pub(crate) fn unrelated_icmp(&mut self, src: Ipv4Addr, dst: Ipv4Addr) -> Case {
        let rest = self.rng.u32().to_be_bytes();
        let (ty, body) = match self.rng.below(4) {
            0 => (ICMP_ECHO_REPLY, self.rng.bytes(16)),
            1 if !self.model.icmp_vips.contains(&dst) => (ICMP_ECHO, self.rng.bytes(16)),
            2 => (13, self.rng.bytes(12)),
            _ => {
                let quoted_src = SocketAddrV4::new(Ipv4Addr::new(198, 19, 200, 1), 1);
                let quoted_dst = SocketAddrV4::new(Ipv4Addr::new(198, 19, 200, 2), 2);
                let protocol = self.rng.pick(&[proto::TCP, proto::UDP]);
                (
                    ICMP_DEST_UNREACH,
                    self.packet(quoted_src, quoted_dst, protocol),
                )
            }
        };
        Case {
            frame: icmp_frame((CLIENT_MAC, NODE_MAC), src, dst, ty, 0, rest, &body),
            ingress: self.any_ingress(),
            class: Class::Unrelated,
            what: format!("icmp type {ty} {src} -> {dst}, nothing the program answers"),
        }
    }

    /// IPv6 packets whose addresses are the IPv4-mapped forms of a frontend (to it) or of a
    /// tracked flow's backend and client (a reply).
    pub(crate) fn v4_mapped(&mut self) -> Case {
        let (src, dst, protocol) = if !self.flows.is_empty() && self.rng.chance(50) {
            let f = self.rng.pick(&self.flows);
            (f.backend, f.seen_as, f.proto)
        } else {
            let (ep, _) = self.rng.pick(&self.model.frontends);
            (self.client(), ep.addr, ep.proto)
        };
        let flags = self.tcp_flags();
        let payload = self.rng.bytes(8);
        Case {
            frame: ipv6_frame(
                (CLIENT_MAC, NODE_MAC),
                (src.ip().to_ipv6_mapped(), src.port()),
                (dst.ip().to_ipv6_mapped(), dst.port()),
                protocol,
                flags,
                &payload,
            ),
            ingress: self.any_ingress(),
            class: Class::V4Mapped,
            what: format!(
                "IPv6 {} [::ffff:{}]:{} -> [::ffff:{}]:{}",
                proto_name(protocol),
                src.ip(),
                src.port(),
                dst.ip(),
                dst.port()
            ),
        }
    }

    pub(crate) fn random_bytes(&mut self) -> Case {
        let len = 14 + self.rng.below(187);
        let mut frame = self.rng.bytes(len);
        let mut what = format!("{len} random bytes");
        // Most of them get past the first checks, to reach deeper.
        match self.rng.below(4) {
            0 if len >= 15 => {
                frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
                frame[14] = 0x45;
                what.push_str(", IPv4 ethertype and version/IHL");
            }
            1 if len >= 21 => {
                frame[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
                frame[14] = 0x60;
                frame[20] = self.rng.pick(&[6, 17, 58, 0, 43, 44, 60, 59]);
                what.push_str(", IPv6 ethertype, version and next header");
            }
            _ => {}
        }
        let ingress = self.any_ingress();
        Case {
            frame,
            ingress,
            class: Class::Mutated,
            what,
        }
    }

    pub(crate) fn mutated(&mut self) -> Case {
        let mut case = match self.rng.below(20) {
            0..=8 => self.for_frontend(),
            9..=10 => self.ipv6(),
            11..=14 => self.reply(),
            15 => self.echo_to_vip(),
            16..=17 => self.icmp_error(),
            _ => self.unrelated(),
        };
        let mut what = Vec::new();
        if self.rng.chance(10) {
            what.push(self.vlan_tags(&mut case.frame));
        }
        for _ in 0..1 + self.rng.below(3) {
            what.push(self.mutate(&mut case.frame));
        }
        // Half of them get correct checksums again, so they are refused (or not) on their
        // merits and not just for a checksum the program does not verify anyway.
        if self.rng.chance(50) {
            refresh_checksums(&mut case.frame);
            what.push("checksums recomputed".into());
        }
        if self.rng.chance(10) {
            case.ingress = self.any_ingress();
        }
        case.class = Class::Mutated;
        case.what = format!("{}; mutated: {}", case.what, what.join(", "));
        case
    }

    pub(crate) fn mutate(&mut self, f: &mut Vec<u8>) -> String {
        let len = f.len();
        let l3 = ipv4_offset(f).unwrap_or(14);
        match self.rng.below(12) {
            0 | 1 => {
                // Any header byte: Ethernet and VLAN tags, IPv4 and the first 28 bytes after
                // it (an L4 header, or an ICMP header and the quoted IPv4 header).
                let at = self.rng.below(len.min(l3 + 20 + 28));
                let x = 1 + self.rng.below(255) as u8;
                f[at] ^= x;
                format!("byte {at} ^= {x:#04x}")
            }
            2 => {
                let to = 14 + self.rng.below(len - 14 + 1);
                f.truncate(to);
                format!("truncated to {to}")
            }
            3 => {
                let random = self.rng.u16();
                let t = self.rng.pick(&[
                    0x0800, 0x86dd, 0x8100, 0x88a8, 0x0806, 0x0000, 0xffff, random,
                ]);
                let at = self.rng.pick(&[12, l3 - 2]);
                set_u16(f, at, t);
                format!("ethertype at {at} {t:#06x}")
            }
            4 => {
                let ihl = self.rng.below(16) as u8;
                set_u8(f, l3, |b| (b & 0xf0) | ihl);
                format!("IHL {ihl}")
            }
            5 => {
                let version = self.rng.below(16) as u8;
                set_u8(f, l3, |b| (b & 0x0f) | version << 4);
                format!("version {version}")
            }
            6 => {
                let random = self.rng.u16();
                let frag = self.rng.pick(&[
                    0x2000, 0x6000, 0x0001, 0x1fff, 0x3fff, 0x8000, 0x4000, 0x0000, random,
                ]);
                set_u16(f, l3 + 6, frag);
                format!("flags/fragment offset {frag:#06x}")
            }
            7 => {
                let random = self.rng.u8();
                let p = self
                    .rng
                    .pick(&[0, 1, 6, 17, 41, 47, 58, 132, 136, 255, random]);
                set_u8(f, l3 + 9, |_| p);
                format!("protocol {p}")
            }
            8 => {
                let actual = len.saturating_sub(l3) as u16;
                let random = self.rng.u16();
                let total = self.rng.pick(&[
                    0,
                    1,
                    19,
                    20,
                    27,
                    28,
                    39,
                    40,
                    actual.wrapping_sub(1),
                    actual.wrapping_add(1),
                    actual.wrapping_add(100),
                    1500,
                    1501,
                    0xffff,
                    random,
                ]);
                set_u16(f, l3 + 2, total);
                format!("total length {total} ({actual} bytes from the IPv4 header on)")
            }
            9 => {
                // UDP without a checksum (or two zero bytes where TCP or ICMP has others).
                set_u16(f, l3 + 20 + 6, 0);
                "L4 bytes 6..8 zeroed (UDP: no checksum)".into()
            }
            10 => {
                // TCP flags, or in ICMP the type.
                let value = self.rng.u8();
                let at = self.rng.pick(&[l3 + 20 + 13, l3 + 20]);
                set_u8(f, at, |_| value);
                format!("byte {at} (TCP flags / ICMP type) = {value:#04x}")
            }
            _ => {
                let n = 1 + self.rng.below(32);
                let garbage = self.rng.bytes(n);
                f.extend_from_slice(&garbage);
                format!("{n} bytes of trailing garbage")
            }
        }
    }

    /// For one TCP frontend of each service with backends, one client port used for ten
    /// connections in a row (SYN, then FIN).
    pub(crate) fn port_reuse(&self) -> Vec<Case> {
        let mut cases = Vec::new();
        let mut services = HashSet::new();
        for (i, (ep, service)) in self.model.frontends.iter().enumerate() {
            if ep.proto != proto::TCP
                || !self.model.services[service].usable
                || !services.insert(*service)
            {
                continue;
            }
            let client = SocketAddrV4::new(CLIENT, 39_000 + i as u16);
            for round in 1..=10 {
                for (flags, name) in [(TCP_SYN, "SYN"), (TCP_FIN | TCP_ACK, "FIN")] {
                    cases.push(Case {
                        frame: Ipv4Frame::tcp(client, ep.addr, flags).build(),
                        ingress: self.ifaces.client,
                        class: Class::ToFrontend { service: *service },
                        what: format!(
                            "port reuse: {name} of connection {round} of 10, {client} -> {}",
                            ep.addr
                        ),
                    });
                }
            }
        }
        cases
    }

    /// Frames whose every prefix is run: to each kind of frontend, one with Ethernet padding,
    /// an echo request to the VIP, and (with a tracked flow) a reply and ICMP errors.
    pub(crate) fn sweep_bases(&mut self) -> Vec<Case> {
        let client = |port| SocketAddrV4::new(CLIENT, port);
        let named = |frame: Vec<u8>, what: &str, class| Case {
            frame,
            ingress: self.ifaces.client,
            class,
            what: what.to_owned(),
        };
        let to = |addr: SocketAddrV4, protocol| Class::ToFrontend {
            service: self.model.service_of[&Endpoint {
                addr,
                proto: protocol,
            }],
        };
        let vip80 = SocketAddrV4::new(VIP, 80);
        let vip53 = SocketAddrV4::new(VIP, 53);
        let node8000 = SocketAddrV4::new(NODE_BACKEND_SIDE, 8000);
        let node8053 = SocketAddrV4::new(NODE_CLIENT_SIDE, 8053);
        let mut padded = Ipv4Frame {
            payload: Vec::new(),
            ..Ipv4Frame::udp(client(50_005), vip53)
        }
        .build();
        padded.resize(60, 0);
        let mut bases = vec![
            named(
                Ipv4Frame::tcp(client(50_000), vip80, TCP_SYN).build(),
                "sweep: tcp SYN to the VIP",
                to(vip80, proto::TCP),
            ),
            named(
                Ipv4Frame::udp(client(50_001), vip53).build(),
                "sweep: udp to the VIP",
                to(vip53, proto::UDP),
            ),
            named(
                Ipv4Frame::tcp(client(50_002), node8000, TCP_SYN).build(),
                "sweep: tcp SYN to a published port (round-robin)",
                to(node8000, proto::TCP),
            ),
            named(
                Ipv4Frame {
                    l4: L4::UdpNoChecksum,
                    ..Ipv4Frame::udp(client(50_003), node8053)
                }
                .build(),
                "sweep: udp without checksum to a published port",
                to(node8053, proto::UDP),
            ),
            named(
                Ipv4Frame::tcp(client(50_004), SocketAddrV4::new(EMPTY_VIP, 80), TCP_SYN).build(),
                "sweep: tcp SYN to the VIP without backends",
                Class::ToEmptyFrontend,
            ),
            named(
                Ipv4Frame::udp(client(50_006), SocketAddrV4::new(EMPTY_VIP, 53)).build(),
                "sweep: udp to the VIP without backends",
                Class::ToEmptyFrontend,
            ),
            named(
                padded,
                "sweep: udp with Ethernet padding to the VIP",
                to(vip53, proto::UDP),
            ),
            named(
                icmp_frame(
                    (CLIENT_MAC, NODE_MAC),
                    CLIENT,
                    VIP,
                    ICMP_ECHO,
                    0,
                    [0, 1, 0, 1],
                    b"meshlb ping",
                ),
                "sweep: icmp echo request to the VIP",
                Class::EchoToVip,
            ),
        ];
        // A flow of a NAT service and one of the full-NAT service, TCP.
        let mut flows: Vec<Flow> = Vec::new();
        for fullnat in [false, true] {
            let flow = self.flows.iter().find(|f| {
                f.proto == proto::TCP && self.model.services[&f.service].fullnat == fullnat
            });
            flows.extend(flow.copied());
        }
        for flow in flows {
            let mode = if self.model.services[&flow.service].fullnat {
                "full NAT"
            } else {
                "NAT"
            };
            let from_backend = (backend_mac(flow.backend.ip()), self.ifaces.backend_mac);
            let mut reply = named(
                Ipv4Frame::tcp(flow.backend, flow.seen_as, TCP_SYN | TCP_ACK)
                    .with_macs(from_backend.0, from_backend.1)
                    .build(),
                &format!("sweep: tcp reply from a backend on a tracked flow ({mode})"),
                Class::Reply {
                    service: flow.service,
                    client: flow.client,
                },
            );
            reply.ingress = self.ifaces.backend;
            let error = |to_backend| Class::IcmpError {
                service: flow.service,
                to_backend,
                client: flow.client,
            };
            let got = Ipv4Frame::tcp(flow.seen_as, flow.backend, TCP_ACK).build();
            let mut to_client = named(
                icmp_frame(
                    from_backend,
                    *flow.backend.ip(),
                    *flow.seen_as.ip(),
                    ICMP_DEST_UNREACH,
                    3,
                    [0; 4],
                    &got[14..],
                ),
                &format!("sweep: icmp port unreachable from a backend about what it got ({mode})"),
                error(false),
            );
            to_client.ingress = self.ifaces.backend;
            let sent = Ipv4Frame::tcp(flow.frontend, flow.client, TCP_ACK).build();
            let to_backend = named(
                icmp_frame(
                    (CLIENT_MAC, NODE_MAC),
                    CLIENT_SIDE_ROUTER,
                    *flow.frontend.ip(),
                    ICMP_DEST_UNREACH,
                    4,
                    [0, 0, 0x05, 0x78],
                    &sent[14..],
                ),
                &format!("sweep: icmp fragmentation needed from a router about a reply ({mode})"),
                error(true),
            );
            // An 8-byte quote, then trailing bytes (padding, a trailer): the packet ends
            // where its total length says, whatever follows.
            let mut short_quote = icmp_frame(
                from_backend,
                BACKEND_SIDE_ROUTER,
                *flow.seen_as.ip(),
                ICMP_TIME_EXCEEDED,
                0,
                [0; 4],
                &got[14..14 + 28],
            );
            short_quote.extend_from_slice(&[0; 12]);
            let mut short_quote = named(
                short_quote,
                &format!(
                    "sweep: icmp time exceeded quoting 8 bytes of TCP, then 12 trailing bytes ({mode})"
                ),
                error(false),
            );
            short_quote.ingress = self.ifaces.backend;
            bases.extend([reply, to_client, to_backend, short_quote]);
        }
        bases
    }
}
