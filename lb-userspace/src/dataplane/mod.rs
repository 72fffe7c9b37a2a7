//! The loaded kernel programs: load, attach to interfaces, and the typed map handles.

mod maps;

use std::{collections::BTreeMap, net::IpAddr};

use aya::{
    Ebpf, EbpfLoader,
    programs::{SchedClassifier, TcAttachType, Xdp, XdpMode as AyaXdpMode, xdp::XdpLinkId},
};
use lb_common::maps::{names, programs};
pub use maps::{StatsSnapshot, TrafficTotals};
use tracing::info;

/// The kernel object, built by build.rs from lb-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"));

/// The benchmark harness object (lb-ebpf's `bench-harness` bin), for `lb-bench bench micro`:
/// BPF_PROG_TEST_RUN only, never attached.
pub static HARNESS_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench-harness"));

/// The traffic object (lb-ebpf's `bench-traffic` bin, `src/sink.rs`) for `lb-bench gen` and
/// `bench pps`: the live-frame generator, the sink and the redirect-only ceiling.
pub static TRAFFIC_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench-traffic"));

/// Errors carry their cause in the message rather than as a `source`, so an error chain
/// printed for an operator says each thing once.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(
        "loading the meshlb kernel object failed: {0} (are you root, and is bpffs mounted? run `cargo xtask setup`)"
    )]
    Load(aya::EbpfError),
    #[error(
        "the kernel object has no {kind} `{name}`: lb-ebpf and lb-userspace are out of step; rebuild both"
    )]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    #[error("the kernel refused program `{name}`: {error}")]
    Verify {
        name: &'static str,
        error: aya::programs::ProgramError,
    },
    #[error("interface `{0}` does not exist (check `ip link`)")]
    NoSuchInterface(String),
    #[error(
        "attaching XDP to `{interface}` in {mode} mode failed: {error} (try --xdp-mode generic)"
    )]
    AttachXdp {
        interface: String,
        mode: XdpMode,
        error: aya::programs::ProgramError,
    },
    #[error("attaching the TC ingress program to `{interface}` failed: {error}")]
    AttachTc {
        interface: String,
        error: aya::programs::ProgramError,
    },
    #[error(
        "IPv4 forwarding is off on `{0}`, so the kernel's route lookup refuses to forward for meshlb; enable it with `sysctl -w net.ipv4.conf.{0}.forwarding=1` (or net.ipv4.ip_forward=1)"
    )]
    ForwardingDisabled(String),
    #[error("map `{name}`: {error}")]
    Map {
        name: &'static str,
        error: aya::maps::MapError,
    },
    #[error("map `{name}`: {message}")]
    MapValue { name: &'static str, message: String },
}

/// How the XDP program is attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpMode {
    /// In the driver: fastest; the device must support it.
    Native,
    /// In the kernel's generic path: works on every device (bridges too).
    Generic,
    /// Native where the device supports it, generic elsewhere.
    Auto,
}

impl std::fmt::Display for XdpMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Native => "native",
            Self::Generic => "generic",
            Self::Auto => "auto",
        })
    }
}

/// Load-time sizing.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    pub conntrack_entries: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            conntrack_entries: lb_common::limits::DEFAULT_CONNTRACK_ENTRIES,
        }
    }
}

/// One interface meshlb is attached to.
#[derive(Debug)]
pub struct Attachment {
    pub interface: String,
    pub ifindex: u32,
    pub mode: XdpMode,
}

/// The loaded programs and maps. Dropping it detaches everything (aya drops the links).
pub struct Dataplane {
    ebpf: Ebpf,
    attachments: Vec<Attachment>,
}

impl Dataplane {
    /// Loads and verifies both programs; attaches nothing.
    pub fn load(options: LoadOptions) -> Result<Self, DataplaneError> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::CONNTRACK, options.conntrack_entries)
            .load(OBJECT)
            .map_err(DataplaneError::Load)?;
        for name in names::ALL {
            if ebpf.map(name).is_none() {
                return Err(DataplaneError::Missing { kind: "map", name });
            }
        }
        let xdp: &mut Xdp = program(&mut ebpf, programs::XDP)?;
        xdp.load().map_err(|error| DataplaneError::Verify {
            name: programs::XDP,
            error,
        })?;
        let tc: &mut SchedClassifier = program(&mut ebpf, programs::TC_INGRESS)?;
        tc.load().map_err(|error| DataplaneError::Verify {
            name: programs::TC_INGRESS,
            error,
        })?;
        Ok(Self {
            ebpf,
            attachments: Vec::new(),
        })
    }

    /// Attaches the XDP program and the TC ingress program to `interface`.
    pub fn attach(
        &mut self,
        interface: &str,
        mode: XdpMode,
    ) -> Result<&Attachment, DataplaneError> {
        let ifindex = ifindex(interface)?;
        if !forwarding_enabled(interface) {
            return Err(DataplaneError::ForwardingDisabled(interface.to_owned()));
        }
        if !forwarding_enabled_v6(interface) {
            // Not an error: a node may serve IPv4 only. IPv6 frontends would be dropped.
            tracing::warn!(
                interface,
                "IPv6 forwarding is off: IPv6 frontends on this interface will be dropped as drop_fib_failed; enable with `sysctl -w net.ipv6.conf.{interface}.forwarding=1`"
            );
        }
        let xdp: &mut Xdp = program(&mut self.ebpf, programs::XDP)?;
        // The links live as long as the programs: dropping the Dataplane detaches them.
        let (_xdp_link, mode) = attach_xdp(xdp, interface, mode)?;
        let tc: &mut SchedClassifier = program(&mut self.ebpf, programs::TC_INGRESS)?;
        let _tc_link = tc
            .attach(interface, TcAttachType::Ingress)
            .map_err(|error| DataplaneError::AttachTc {
                interface: interface.to_owned(),
                error,
            })?;
        info!(interface, ifindex, %mode, "attached");
        self.attachments.push(Attachment {
            interface: interface.to_owned(),
            ifindex,
            mode,
        });
        Ok(self.attachments.last().expect("just pushed"))
    }

    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    /// The XDP program, for BPF_PROG_TEST_RUN.
    pub fn xdp_program(&mut self) -> Result<&mut Xdp, DataplaneError> {
        program(&mut self.ebpf, programs::XDP)
    }

    pub(crate) fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    pub(crate) fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, DataplaneError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program>,
{
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .ok_or(DataplaneError::Missing {
            kind: "program",
            name,
        })
}

fn attach_xdp(
    xdp: &mut Xdp,
    interface: &str,
    mode: XdpMode,
) -> Result<(XdpLinkId, XdpMode), DataplaneError> {
    let try_mode = |xdp: &mut Xdp, mode: XdpMode| {
        let aya_mode = match mode {
            XdpMode::Native | XdpMode::Auto => AyaXdpMode::Driver,
            XdpMode::Generic => AyaXdpMode::Skb,
        };
        xdp.attach(interface, aya_mode)
            .map_err(|error| DataplaneError::AttachXdp {
                interface: interface.to_owned(),
                mode,
                error,
            })
    };
    match mode {
        XdpMode::Auto => match try_mode(xdp, XdpMode::Native) {
            Ok(link) => Ok((link, XdpMode::Native)),
            Err(e) => {
                info!(
                    interface,
                    "native XDP unavailable ({e}); using generic mode"
                );
                Ok((try_mode(xdp, XdpMode::Generic)?, XdpMode::Generic))
            }
        },
        mode => Ok((try_mode(xdp, mode)?, mode)),
    }
}

/// The kernel's index of `interface`.
pub fn ifindex(interface: &str) -> Result<u32, DataplaneError> {
    let name = std::ffi::CString::new(interface)
        .map_err(|_| DataplaneError::NoSuchInterface(interface.to_owned()))?;
    // SAFETY: name is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(DataplaneError::NoSuchInterface(interface.to_owned()));
    }
    Ok(index)
}

fn forwarding_enabled(interface: &str) -> bool {
    std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{interface}/forwarding"))
        .map(|v| v.trim() == "1")
        .unwrap_or(false)
}

fn forwarding_enabled_v6(interface: &str) -> bool {
    std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{interface}/forwarding"))
        .map(|v| v.trim() == "1")
        .unwrap_or(false)
}

/// Every unicast address of this host (its namespace), for published ports.
pub fn node_addresses() -> std::io::Result<Vec<IpAddr>> {
    let mut addrs = BTreeMap::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills head with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: cursor walks the list getifaddrs returned.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr is non-null and its family says which sockaddr it is.
        let addr = unsafe {
            match i32::from((*entry.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sin = &*(entry.ifa_addr as *const libc::sockaddr_in);
                    IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes())
                }
                libc::AF_INET6 => {
                    let sin6 = &*(entry.ifa_addr as *const libc::sockaddr_in6);
                    IpAddr::from(sin6.sin6_addr.s6_addr)
                }
                _ => continue,
            }
        };
        let usable = match addr {
            IpAddr::V4(a) => !a.is_loopback() && !a.is_link_local(),
            IpAddr::V6(a) => !a.is_loopback() && !a.is_unicast_link_local(),
        };
        if usable {
            addrs.insert(addr, ());
        }
    }
    // SAFETY: head came from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    Ok(addrs.into_keys().collect())
}
