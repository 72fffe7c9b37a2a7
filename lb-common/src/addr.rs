//! One address type for both families, so a key is one shape whatever the protocol.

/// An IP address as 16 bytes in network order, stored as four `u32` words read from memory in
/// host order (so the kernel copies header words without byte swaps). IPv4 addresses are
/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Addr {
    pub words: [u32; 4],
}

/// Word 2 of an IPv4-mapped address: the bytes `00 00 ff ff` as they sit in memory.
pub const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

impl Addr {
    pub const UNSPECIFIED: Self = Self { words: [0; 4] };

    /// An IPv4 address from the four header bytes as the kernel reads them (one `u32` load).
    #[inline(always)]
    pub const fn from_v4_raw(raw: u32) -> Self {
        Self {
            words: [0, 0, V4_MAPPED_WORD, raw],
        }
    }

    #[inline(always)]
    pub const fn from_octets(octets: [u8; 16]) -> Self {
        let o = octets;
        Self {
            words: [
                u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
                u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
                u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
                u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
            ],
        }
    }

    pub const fn octets(&self) -> [u8; 16] {
        let w = self.words;
        let (a, b, c, d) = (
            w[0].to_ne_bytes(),
            w[1].to_ne_bytes(),
            w[2].to_ne_bytes(),
            w[3].to_ne_bytes(),
        );
        [
            a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1],
            d[2], d[3],
        ]
    }

    #[inline(always)]
    pub const fn is_v4(&self) -> bool {
        self.words[0] == 0 && self.words[1] == 0 && self.words[2] == V4_MAPPED_WORD
    }

    /// The IPv4 header bytes as one raw `u32` (meaningful only when [`Addr::is_v4`]).
    #[inline(always)]
    pub const fn v4_raw(&self) -> u32 {
        self.words[3]
    }

    /// Whether this IPv4 address and `other` share a subnet of `prefix` bits (1-32; any other
    /// length: false). Both must be IPv4, which the caller knows.
    #[inline(always)]
    pub const fn same_v4_subnet(&self, other: &Addr, prefix: u8) -> bool {
        if prefix == 0 || prefix > 32 {
            return false;
        }
        let mask = (u32::MAX << (32 - prefix as u32)).to_be();
        (self.v4_raw() ^ other.v4_raw()) & mask == 0
    }

    /// Whether this IPv6 address and `other` share a subnet of `prefix` bits (1-128; 0 or
    /// more: false). Both must be IPv6, which the caller knows.
    #[inline(always)]
    pub const fn same_v6_subnet(&self, other: &Addr, prefix: u8) -> bool {
        if prefix == 0 || prefix > 128 {
            return false;
        }
        let mut word = 0;
        while word < 4 {
            let bits = prefix as i32 - 32 * word as i32;
            if bits <= 0 {
                break;
            }
            let mask = if bits >= 32 {
                u32::MAX
            } else {
                (u32::MAX << (32 - bits as u32)).to_be()
            };
            if (self.words[word] ^ other.words[word]) & mask != 0 {
                return false;
            }
            word += 1;
        }
        true
    }

    /// Whether this address and `other` are of one family and share a subnet of `prefix`
    /// bits (see `same_v4_subnet` and `same_v6_subnet`).
    pub const fn same_subnet(&self, other: &Addr, prefix: u8) -> bool {
        match (self.is_v4(), other.is_v4()) {
            (true, true) => self.same_v4_subnet(other, prefix),
            (false, false) => self.same_v6_subnet(other, prefix),
            _ => false,
        }
    }

    /// Whether a packet from this address may be answered: the address of one host, which
    /// the source of an ICMP error or a RST must be (RFC 1122 §3.2.2 and §4.2.3.10, RFC 4443
    /// §2.4(e)). Not: IPv4's 0/8, 127/8, multicast and 240/4 (the limited broadcast
    /// included); IPv6's unspecified, loopback and multicast. A subnet's broadcast address is
    /// a host's address to all but its subnet, which the program does not know.
    #[inline(always)]
    pub const fn is_single_host(&self) -> bool {
        if self.is_v4() {
            let first = self.words[3].to_ne_bytes()[0];
            return first != 0 && first != 127 && first < 224;
        }
        let w = self.words;
        let first = w[0].to_ne_bytes()[0];
        let zero_until_last = w[0] == 0 && w[1] == 0 && w[2] == 0;
        let last = u32::from_be(w[3]);
        first != 0xff && !(zero_until_last && last <= 1)
    }
}

/// IPv4 addresses become IPv4-mapped IPv6 addresses, the form keys hold.
impl From<core::net::IpAddr> for Addr {
    fn from(ip: core::net::IpAddr) -> Self {
        match ip {
            core::net::IpAddr::V4(v4) => v4.into(),
            core::net::IpAddr::V6(v6) => v6.into(),
        }
    }
}

impl From<core::net::Ipv4Addr> for Addr {
    fn from(v4: core::net::Ipv4Addr) -> Self {
        Self::from_octets(v4.to_ipv6_mapped().octets())
    }
}

impl From<core::net::Ipv6Addr> for Addr {
    fn from(v6: core::net::Ipv6Addr) -> Self {
        Self::from_octets(v6.octets())
    }
}

/// IPv4-mapped addresses come back as IPv4 addresses.
impl From<Addr> for core::net::IpAddr {
    fn from(addr: Addr) -> Self {
        let v6 = core::net::Ipv6Addr::from(addr.octets());
        match v6.to_ipv4_mapped() {
            Some(v4) => Self::V4(v4),
            None => Self::V6(v6),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_mapped_form_round_trips() {
        let raw = u32::from_ne_bytes([198, 18, 1, 2]);
        let a = Addr::from_v4_raw(raw);
        assert!(a.is_v4());
        assert_eq!(a.v4_raw(), raw);
        assert_eq!(
            a.octets(),
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 1, 2]
        );
        assert_eq!(Addr::from_octets(a.octets()), a);
    }

    /// Subnets by prefix length, at byte boundaries and inside a byte (the raw word is in
    /// header byte order).
    #[test]
    fn same_v4_subnet_by_prefix() {
        let a = |o: [u8; 4]| Addr::from_v4_raw(u32::from_ne_bytes(o));
        let task = a([198, 18, 61, 3]);
        assert!(task.same_v4_subnet(&a([198, 18, 61, 200]), 24));
        assert!(!task.same_v4_subnet(&a([198, 18, 62, 3]), 24));
        assert!(task.same_v4_subnet(&a([198, 18, 60, 3]), 23));
        assert!(!task.same_v4_subnet(&a([198, 18, 62, 3]), 23));
        assert!(task.same_v4_subnet(&a([198, 18, 61, 127]), 25));
        assert!(!task.same_v4_subnet(&a([198, 18, 61, 128]), 25));
        assert!(task.same_v4_subnet(&task, 32));
        assert!(!task.same_v4_subnet(&a([198, 18, 61, 4]), 32));
        assert!(a([10, 1, 2, 3]).same_v4_subnet(&a([10, 200, 0, 1]), 8));
        assert!(!task.same_v4_subnet(&task, 0), "no length known");
        assert!(!task.same_v4_subnet(&task, 33));
    }

    #[test]
    fn same_v6_subnet_by_prefix() {
        let a = |text: &str| Addr::from(text.parse::<core::net::Ipv6Addr>().unwrap());
        let backend = a("fd00:2::a");
        assert!(backend.same_v6_subnet(&a("fd00:2::ffff:1"), 64));
        assert!(!backend.same_v6_subnet(&a("fd00:3::a"), 64));
        assert!(
            backend.same_v6_subnet(&a("fd00:3::a"), 31),
            "fd00:2::/31 holds both"
        );
        assert!(!backend.same_v6_subnet(&a("fd00:3::a"), 32));
        assert!(!backend.same_v6_subnet(&a("fd00:4::a"), 31));
        assert!(backend.same_v6_subnet(&a("fd00:2::b"), 124));
        assert!(!backend.same_v6_subnet(&a("fd00:2::1a"), 124));
        assert!(backend.same_v6_subnet(&a("fd00:2::8"), 125));
        assert!(!backend.same_v6_subnet(&a("fd00:2::7"), 125));
        assert!(backend.same_v6_subnet(&backend, 128));
        assert!(!backend.same_v6_subnet(&a("fd00:2::b"), 128));
        assert!(!backend.same_v6_subnet(&backend, 0), "no prefix: no subnet");
        assert!(!backend.same_v6_subnet(&backend, 129));
        // Across families: never.
        let v4 = Addr::from(core::net::Ipv4Addr::new(198, 18, 2, 10));
        assert!(!v4.same_subnet(&backend, 64));
        assert!(backend.same_subnet(&a("fd00:2::b"), 64));
        assert!(v4.same_subnet(&Addr::from(core::net::Ipv4Addr::new(198, 18, 2, 11)), 24));
    }

    /// Against the standard library's classes of the same addresses.
    #[test]
    fn single_hosts_are_neither_unspecified_loopback_multicast_nor_reserved() {
        use core::net::IpAddr;
        let single = |s: &str| Addr::from(s.parse::<IpAddr>().unwrap()).is_single_host();
        for host in [
            "198.18.1.2",
            "1.0.0.0",
            "126.255.255.255",
            "128.0.0.1",
            "223.255.255.255",
        ] {
            assert!(single(host), "{host}");
        }
        for other in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "127.255.255.255",
            "224.0.0.1",
            "239.1.2.3",
            "240.0.0.1",
            "255.255.255.255",
        ] {
            assert!(!single(other), "{other}");
        }
        for host in ["fd00:1::2", "::2", "2001:db8::1", "fe80::1", "feff::1"] {
            assert!(single(host), "{host}");
        }
        for other in ["::", "::1", "ff02::1", "ff05::1:3"] {
            assert!(!single(other), "{other}");
        }
        for text in [
            "10.0.0.1",
            "0.0.0.0",
            "224.0.0.5",
            "::",
            "::1",
            "ff02::2",
            "fd00::5",
        ] {
            let ip: IpAddr = text.parse().unwrap();
            let std_says = !(ip.is_unspecified()
                || ip.is_loopback()
                || ip.is_multicast()
                || matches!(ip, IpAddr::V4(v4) if v4.octets()[0] == 0 || v4.octets()[0] >= 240));
            assert_eq!(single(text), std_says, "{text}");
        }
    }

    #[test]
    fn v6_is_not_v4() {
        let mut octets = [0u8; 16];
        octets[0] = 0xfd;
        octets[15] = 1;
        let a = Addr::from_octets(octets);
        assert!(!a.is_v4());
        assert_eq!(a.octets(), octets);
        assert!(!Addr::UNSPECIFIED.is_v4());
    }

    #[test]
    fn std_addresses_round_trip_in_their_family() {
        use core::net::IpAddr;
        let v4: IpAddr = "198.18.1.2".parse().unwrap();
        let a = Addr::from(v4);
        assert!(a.is_v4());
        assert_eq!(a.v4_raw(), u32::from_ne_bytes([198, 18, 1, 2]));
        assert_eq!(IpAddr::from(a), v4);
        let v6: IpAddr = "fd00:2::a".parse().unwrap();
        assert!(!Addr::from(v6).is_v4());
        assert_eq!(IpAddr::from(Addr::from(v6)), v6);
    }
}
