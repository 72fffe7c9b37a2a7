//! The frames the generator sends: a header template and the flow set, computed here exactly
//! as the kernel program `generator` (lb-ebpf `src/sink.rs`) computes them, so userspace knows every
//! flow the generator sends (the oracle predicts their backends) and the tests check the
//! kernel's incremental checksums against a from-scratch computation.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use anyhow::{Result, ensure};
use lb_testkit::packet::{Ipv4Frame, Ipv6Frame, L4, TCP_ACK, TCP_SYN};

pub use lb_common::traffic::{GenConfig, PORT_BASE, PORTS_PER_ADDR, TEMPLATE_WORDS};
/// Most flows one source prefix holds: 2^16 addresses of 2^14 ports.
pub const MAX_FLOWS: u32 = 1 << 30;

/// Generator sources: 198.19.0.0/16 and fd00:64::/112, low 16 bits per flow.
pub const SRC_BASE4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 0);
pub const SRC_BASE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x64, 0, 0, 0, 0, 0, 0);

/// What kind of packet every frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// UDP datagrams.
    Udp,
    /// TCP SYNs (a new connection attempt every packet of a flow).
    Syn,
    /// TCP ACKs of established flows.
    Ack,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Udp => "udp",
            Kind::Syn => "tcp-syn",
            Kind::Ack => "tcp-ack",
        }
    }
}

/// A flow set: every frame of the generator is one of `flows` flows to `dst`.
#[derive(Clone, Debug)]
pub struct FlowSet {
    pub kind: Kind,
    pub dst: SocketAddr,
    pub flows: u32,
    /// Frames of each flow in a row (see `GenConfig::per_flow`).
    pub per_flow: u32,
    /// Frame length in bytes (without FCS).
    pub size: usize,
    pub eth_src: [u8; 6],
    pub eth_dst: [u8; 6],
}

impl FlowSet {
    /// Source address and port of flow `k`.
    pub fn source(&self, k: u32) -> SocketAddr {
        let lo = (k / PORTS_PER_ADDR) as u16;
        let port = (PORT_BASE + k % PORTS_PER_ADDR) as u16;
        match self.dst {
            SocketAddr::V4(_) => {
                let base = u32::from(SRC_BASE4);
                SocketAddr::new(IpAddr::V4(Ipv4Addr::from(base | u32::from(lo))), port)
            }
            SocketAddr::V6(_) => {
                let mut seg = SRC_BASE6.segments();
                seg[7] = lo;
                SocketAddr::new(IpAddr::V6(Ipv6Addr::from(seg)), port)
            }
        }
    }

    /// The sink's key of flow `k`: source low 16 bits << 16 | source port.
    #[cfg(test)]
    pub fn sink_key(&self, k: u32) -> u32 {
        ((k / PORTS_PER_ADDR) << 16) | (PORT_BASE + k % PORTS_PER_ADDR)
    }

    /// The flow index of a sink key, if it is one of this set's.
    pub fn flow_of_sink_key(&self, key: u32) -> Option<u32> {
        let (lo, port) = (key >> 16, key & 0xffff);
        let k = lo
            .checked_mul(PORTS_PER_ADDR)?
            .checked_add(port.checked_sub(PORT_BASE)?)?;
        ((PORT_BASE..PORT_BASE + PORTS_PER_ADDR).contains(&port) && k < self.flows).then_some(k)
    }

    /// Bytes of headers (Ethernet + IP + TCP/UDP).
    pub fn header_len(&self) -> usize {
        let ip = if self.dst.is_ipv4() { 20 } else { 40 };
        let l4 = if self.kind == Kind::Udp { 8 } else { 20 };
        14 + ip + l4
    }

    /// Smallest frame the kernel program can write its whole template into.
    pub fn min_size(&self) -> usize {
        self.header_len().div_ceil(8) * 8
    }

    /// Complete frame of flow `k`, built from scratch (with correct checksums).
    pub fn frame(&self, k: u32) -> Result<Vec<u8>> {
        ensure!(
            self.flows >= 1 && self.flows <= MAX_FLOWS,
            "flows must be 1..={MAX_FLOWS}"
        );
        self.build(self.source(k))
    }

    /// A frame from `src` to the set's destination, checksums computed from scratch.
    fn build(&self, src: SocketAddr) -> Result<Vec<u8>> {
        ensure!(
            (self.min_size()..=1500).contains(&self.size),
            "frame size {} outside {}..=1500 for {} over IPv{}",
            self.size,
            self.min_size(),
            self.kind.name(),
            if self.dst.is_ipv4() { 4 } else { 6 }
        );
        let payload = vec![0u8; self.size - self.header_len()];
        let l4 = match self.kind {
            Kind::Udp => L4::Udp,
            Kind::Syn => L4::tcp(TCP_SYN),
            Kind::Ack => L4::tcp(TCP_ACK),
        };
        match (src, self.dst) {
            (SocketAddr::V4(src), SocketAddr::V4(dst)) => Ok(Ipv4Frame {
                l4,
                payload,
                ..Ipv4Frame::tcp(src, dst, 0).with_macs(self.eth_src, self.eth_dst)
            }
            .build()),
            (SocketAddr::V6(src), SocketAddr::V6(dst)) => Ok(Ipv6Frame {
                l4,
                payload,
                ..Ipv6Frame::tcp(src, dst, 0).with_macs(self.eth_src, self.eth_dst)
            }
            .build()),
            _ => anyhow::bail!("source {src} and destination {} differ in family", self.dst),
        }
    }

    /// The kernel program's configuration: the frame of a flow whose source low bits and port
    /// are 0, and where they and the checksums sit.
    pub fn config(&self) -> Result<GenConfig> {
        let base = self.template_frame()?;
        let mut bytes = [0u8; TEMPLATE_WORDS * 8];
        let n = base.len().min(bytes.len());
        bytes[..n].copy_from_slice(&base[..n]);
        let mut template = [0u64; TEMPLATE_WORDS];
        for (w, chunk) in template.iter_mut().zip(bytes.chunks_exact(8)) {
            *w = u64::from_ne_bytes(chunk.try_into().expect("8 bytes"));
        }
        let v4 = self.dst.is_ipv4();
        let l4 = if v4 { 34 } else { 54 };
        Ok(GenConfig {
            template,
            words: self.header_len().div_ceil(8) as u32,
            flows: self.flows,
            src_lo: if v4 { 14 + 14 } else { 14 + 8 + 14 },
            sport: l4 as u32,
            ip_csum: if v4 { 14 + 10 } else { 0 },
            l4_csum: (l4 + if self.kind == Kind::Udp { 6 } else { 16 }) as u32,
            udp: u32::from(self.kind == Kind::Udp),
            per_flow: self.per_flow.max(1),
        })
    }

    /// The frame with source low 16 bits 0 and source port 0 (flow 0 minus its offsets).
    fn template_frame(&self) -> Result<Vec<u8>> {
        let src = match self.dst {
            SocketAddr::V4(_) => SocketAddr::V4(SocketAddrV4::new(SRC_BASE4, 0)),
            SocketAddr::V6(_) => SocketAddr::V6(SocketAddrV6::new(SRC_BASE6, 0, 0, 0)),
        };
        self.build(src)
    }
}

/// What the kernel program does to a frame for packet number `n`, in Rust: writes the
/// template's words, then flow `n / per_flow % flows`'s source low bits and port, fixing the checksums
/// incrementally. `frame` is whatever the recycled page held before. (The tests hold the
/// kernel program to it.)
#[cfg(test)]
pub fn apply(config: &GenConfig, frame: &mut [u8], n: u64) {
    for i in 0..(config.words as usize).min(TEMPLATE_WORDS) {
        frame[i * 8..i * 8 + 8].copy_from_slice(&config.template[i].to_ne_bytes());
    }
    let k = (n / u64::from(config.per_flow.max(1)) % u64::from(config.flows.max(1))) as u32;
    let lo = ((k / PORTS_PER_ADDR) as u16).to_be_bytes();
    let port = ((PORT_BASE + k % PORTS_PER_ADDR) as u16).to_be_bytes();
    let get = |f: &[u8], off: u32| [f[off as usize], f[off as usize + 1]];
    let put = |f: &mut [u8], off: u32, v: [u8; 2]| {
        f[off as usize..off as usize + 2].copy_from_slice(&v);
    };
    put(frame, config.src_lo, lo);
    put(frame, config.sport, port);
    if config.ip_csum != 0 {
        let c = csum_add(get(frame, config.ip_csum), lo, [0, 0]);
        put(frame, config.ip_csum, c);
    }
    let mut c = csum_add(get(frame, config.l4_csum), lo, port);
    if config.udp != 0 && c == [0, 0] {
        c = [0xff, 0xff];
    }
    put(frame, config.l4_csum, c);
}

/// RFC 1624 update for two 16-bit words that were 0 (all values as bytes in network order).
#[cfg(test)]
fn csum_add(csum: [u8; 2], a: [u8; 2], b: [u8; 2]) -> [u8; 2] {
    let word = u16::from_be_bytes;
    let mut sum = u32::from(!word(csum)) + u32::from(word(a)) + u32::from(word(b));
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_be_bytes()
}

/// A flow set for tests: `flows` flows of `kind` to `dst`, frames of `size` bytes, fixed MACs.
#[cfg(test)]
pub(super) fn test_set(kind: Kind, dst: &str, flows: u32, size: usize) -> FlowSet {
    FlowSet {
        kind,
        dst: dst.parse().unwrap(),
        flows,
        per_flow: 1,
        size,
        eth_src: [2, 0, 0, 0, 0, 1],
        eth_dst: [2, 0, 0, 0, 0, 2],
    }
}

#[cfg(test)]
mod tests {
    use lb_testkit::packet::{parse_ipv4, parse_ipv6};

    use super::{test_set as set, *};

    #[test]
    fn flows_are_distinct_and_in_the_test_prefixes() {
        let s = set(Kind::Udp, "198.18.100.1:80", 100_000, 60);
        let mut seen = std::collections::HashSet::new();
        for k in 0..s.flows {
            let src = s.source(k);
            let IpAddr::V4(ip) = src.ip() else { panic!() };
            assert_eq!(ip.octets()[..2], [198, 19]);
            assert!(seen.insert(src), "flow {k} repeats {src}");
            assert_eq!(s.flow_of_sink_key(s.sink_key(k)), Some(k));
        }
        assert_eq!(s.flow_of_sink_key(s.sink_key(s.flows)), None);
        assert_eq!(s.flow_of_sink_key(80), None);
        let s6 = set(Kind::Ack, "[fd00:100::1]:80", 20_000, 80);
        let IpAddr::V6(ip) = s6.source(19_999).ip() else {
            panic!()
        };
        assert_eq!(ip, "fd00:64::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            s6.source(19_999).port(),
            (PORT_BASE + 19_999 - 16384) as u16
        );
    }

    /// The kernel's way (template + incremental checksums over whatever the page held) gives
    /// byte for byte the frame built from scratch, for every kind and family.
    #[test]
    fn incremental_frames_equal_frames_from_scratch() {
        let cases = [
            set(Kind::Udp, "198.18.100.1:80", 70_000, 60),
            set(Kind::Syn, "198.18.100.1:80", 70_000, 60),
            set(Kind::Ack, "198.18.100.1:80", 70_000, 128),
            set(Kind::Udp, "[fd00:100::1]:80", 70_000, 64),
            set(Kind::Ack, "[fd00:100::1]:80", 70_000, 80),
            set(Kind::Syn, "[fd00:100::1]:53", 3, 200),
            FlowSet {
                per_flow: 2,
                ..set(Kind::Udp, "198.18.100.1:80", 70_000, 60)
            },
        ];
        for s in cases {
            let config = s.config().unwrap();
            // data_in: flow 0; the payload is written only there.
            let mut page = s.frame(0).unwrap();
            for n in [0u64, 1, 16383, 16384, 65_537, 69_999, 70_000, 1 << 33] {
                apply(&config, &mut page, n);
                let k = (n / u64::from(s.per_flow) % u64::from(s.flows)) as u32;
                assert_eq!(page, s.frame(k).unwrap(), "{:?} n = {n}", s.kind);
                if s.dst.is_ipv4() {
                    let parsed = parse_ipv4(&page).unwrap();
                    assert_eq!(SocketAddr::V4(parsed.src), s.source(k));
                } else {
                    let parsed = parse_ipv6(&page).unwrap();
                    assert_eq!(SocketAddr::V6(parsed.src), s.source(k));
                }
                // The page comes back from the node with its headers rewritten.
                page[..s.header_len()].fill(0xa5);
            }
        }
    }

    #[test]
    fn sizes_are_checked() {
        assert!(set(Kind::Ack, "[fd00:100::1]:80", 1, 64).frame(0).is_err());
        assert!(set(Kind::Udp, "[fd00:100::1]:80", 1, 64).frame(0).is_ok());
        assert!(set(Kind::Udp, "198.18.100.1:80", 0, 60).frame(0).is_err());
        assert!(set(Kind::Udp, "198.18.100.1:80", 1, 1501).frame(0).is_err());
    }
}
