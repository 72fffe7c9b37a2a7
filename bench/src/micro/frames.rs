//! The measured frames' address plan: client, VIPs, backends, node sides, frame sizes.

use super::*;

// ---------------------------------------------------------------------------------------------
// Address plan (198.18.0.0/15 only) and constants

pub(super) const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
pub(super) const CLIENT_PORT: u16 = 31337;
pub(super) const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
pub(super) const VIP_PORT: u16 = 80;
pub(super) const NON_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 99);
pub(super) const BACKEND_PORT: u16 = 8080;
pub(super) const NODE_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
pub(super) const NODE_BACKEND_SIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
pub(super) const BACKENDS: u8 = 16;
/// Backend i is 198.18.2.(10 + i) with MAC 02:00:00:00:02:(0x10 + i).
pub(super) fn backend_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 2, 10 + i)
}
pub(super) fn backend_mac(i: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x02, 0x10 + i]
}
pub(super) const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 2);
pub(super) const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 1);
pub(super) const NON_VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 0x99);
pub(super) const NODE6_CLIENT_SIDE: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1);
pub(super) const NODE6_BACKEND_SIDE: Ipv6Addr = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 1);
/// IPv6 backend i is fd00:2::(10 + i) (hex), with the same MAC as IPv4 backend i.
pub(super) fn backend_ip6(i: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 10 + u16::from(i))
}
/// The mesh rows: a peer node among the backends' neighbours (backend 10's address and MAC),
/// a task on it (its ingress address), and a task here (delivered at backend 0's address).
pub(super) const MESH_PEER: u8 = 10;
pub(super) const TASK_REMOTE: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 5);
pub(super) const TASK_LOCAL: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 6);
/// The tunnel's UDP source port for a packet: the ports it leaves with (translated), with
/// the top bits set.
pub(super) fn tunnel_entropy(sport: u16, dport: u16) -> u16 {
    (sport ^ dport) | 0xc000
}
/// Which backend `ip` is, in either family.
pub(super) fn backend_index(ip: IpAddr) -> Option<u8> {
    (0..BACKENDS).find(|i| ip == IpAddr::V4(backend_ip(*i)) || ip == IpAddr::V6(backend_ip6(*i)))
}
/// Extra services of the scaling check: VIP 198.19.128.0/17 x ports 80..=83, one backend each
/// in 198.18.64.0/18 x ports 8080... (never routed: map contents only).
pub(super) fn extra_vip(i: u32) -> SocketAddrV4 {
    let a = 0xc613_8000 | (i & 0x7fff); // 198.19.128.0/17
    SocketAddrV4::new(Ipv4Addr::from(a), 80 + (i >> 15) as u16)
}
pub(super) fn extra_backend(i: u32) -> SocketAddrV4 {
    let a = 0xc612_4000 | (i & 0x3fff); // 198.18.64.0/18
    SocketAddrV4::new(Ipv4Addr::from(a), BACKEND_PORT + (i >> 14) as u16)
}
/// Prefilled flow j: the client `harness_vary` makes of its iteration j (CLIENT's /16 with
/// the top bit of the low 16 set and j's low 15 bits, 198.18.128.0/17; source port
/// 1024 + j / 2^15), so the spread rows cycle through prefilled flows.
pub(super) fn prefill_client(j: u32) -> SocketAddrV4 {
    let a = (u32::from(CLIENT) & 0xffff_0000) | 0x8000 | (j & 0x7fff);
    SocketAddrV4::new(Ipv4Addr::from(a), 1024 + ((j >> 15) & 0x7fff) as u16)
}

pub(super) const FRAME_LEN: usize = 60;
pub(super) const FRAME6_LEN: usize = 80;
pub(super) const XDP_PASS: u32 = 2;
pub(super) const XDP_TX: u32 = 3;
pub(super) const XDP_REDIRECT: u32 = 4;
/// Selection tables applied (and timed) on top of the first scaling dataplane.
pub(super) const TABLE_SAMPLE: usize = 100;
/// Maglev table size of the extra services (the smallest prime of at least 100x one backend).
pub(super) const EXTRA_TABLE_SIZE: u32 = 101;

pub(super) fn action_name(retval: u32) -> &'static str {
    match retval {
        0 => "ABORTED",
        1 => "DROP",
        2 => "PASS",
        3 => "TX",
        4 => "REDIRECT",
        _ => "?",
    }
}
