//! The loaded kernel programs: load, attach to interfaces, and the typed map handles.

mod attach;
mod batch;
mod changes;
mod conntrack_filter;
mod endpoint_filters;
mod grace;
mod link_device;
mod maps;
mod mmap;
pub mod netlink;
pub mod node_ports;
pub mod pin;
mod ports;
mod replies;
mod sock_abort;
mod sockets;
mod tables;

use crate::error_text::with_causes;
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{LinkOrder, SchedClassifier, Xdp, links::PinnedLink, tc::TcAttachOptions},
};
use lb_common::maps::{names, programs};
pub use maps::{ConntrackWalk, MapReaders, SocketTotals, StatsSnapshot, TrafficTotals};
pub use sock_abort::{SocketPeer, abort_connected};
pub use sockets::{SocketAttachment, cgroup2_mount, netns_cookie, netns_cookie_of};
use tracing::{info, warn};

use crate::source::settings::{KernelLogLevel, XdpMode};

/// The kernel object, built by build.rs from lb-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"));

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
        "`{interface}` already runs XDP program {program} (id {id}): an interface takes one XDP program; detach it (`ip link set dev {interface} xdp off`; if it is another meshlb's, stop that lbd and run `lbd cleanup --pin-dir DIR` with its pin directory), or leave `{interface}` out"
    )]
    XdpBusy {
        interface: String,
        program: String,
        id: u32,
    },
    #[error(
        "attaching XDP to `{interface}` in {mode} mode failed: {error}{}",
        if matches!(mode, XdpMode::Generic) { "" } else { " (try --xdp-mode generic)" }
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
    #[error("pinned state: {0}")]
    Pin(String),
}

/// Load-time sizing, and where to pin.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub conntrack_entries: u32,
    pub kernel_log: KernelLogLevel,
    /// Pin maps and links here (see [`pin`]) and adopt what a previous `lbd` pinned. `None`:
    /// nothing outlives this process (tests of the program alone, benchmarks).
    pub pin_dir: Option<PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            conntrack_entries: lb_common::limits::DEFAULT_CONNTRACK_ENTRIES,
            kernel_log: KernelLogLevel::default(),
            pin_dir: None,
        }
    }
}

/// One interface meshlb is attached to.
#[derive(Debug, serde::Serialize)]
pub struct Attachment {
    pub interface: String,
    pub ifindex: u32,
    /// The mode the program runs in (`auto` resolved; an adopted link's as the kernel reports
    /// it, which an earlier `lbd` chose).
    pub mode: XdpMode,
    /// The program was swapped into a link a previous `lbd` pinned.
    pub adopted: bool,
}

/// Reads the kernel programs' log records (aya-log); its descriptor becomes readable when they
/// logged something, and `flush` moves the records into this process's log (target `lb`).
pub type KernelLog = aya_log::EbpfLogger<&'static dyn log::Log>;

/// The loaded programs and maps. Dropping it detaches everything it attached, unless it
/// pinned them (then they outlive the process until `lbd cleanup`).
pub struct Dataplane {
    ebpf: Ebpf,
    attachments: Vec<Attachment>,
    pin_dir: Option<PathBuf>,
    /// The maps came from a previous `lbd`'s pins.
    adopted: bool,
    /// Pinned links we hold open, by pin path (a link made again for an interface made again
    /// replaces the dead one); dropping them only closes our descriptors.
    _pinned_links: std::collections::BTreeMap<PathBuf, PinnedLink>,
    /// Without a pin directory: the links of each interface, owned by the programs (see
    /// `release`).
    unpinned_links: std::collections::BTreeMap<String, attach::UnpinnedLinks>,
    /// The pin directory's lock (see [`pin::lock`]).
    _pin_lock: Option<std::fs::File>,
    /// Where the socket-level programs are attached, if they are.
    sockets: Option<SocketAttachment>,
    /// Reads the kernel programs' log records (aya-log) into this process's log, until
    /// [`Dataplane::take_kernel_log`] hands it to the task that reads them.
    logger: Option<KernelLog>,
    /// `CONNTRACK_FILTER`, mapped; shared with `MapReaders`, whose walks rebuild it.
    conntrack_filter: std::sync::Arc<conntrack_filter::ConntrackFilter>,
    /// `FORWARD_FILTER` and `REPLY_FILTER`, mapped: `lbd` marks every frontend and backend
    /// endpoint it writes (in the previous programs' filters too, see `endpoint_filters`).
    endpoint_filters: endpoint_filters::EndpointFilters,
    /// Counter maps of an earlier version this start made anew (see `pin::GrownCounters`),
    /// kept open (for the process's life: a small map) so that a failed start puts them
    /// back (`undo_failed_start`).
    replaced_counters: Vec<pin::GrownCounters>,
    /// What `INTERFACE_MACS` was last told, by ifindex: it is written again only on a change.
    interface_macs: std::collections::BTreeMap<u32, (Option<[u8; 6]>, bool)>,
}

impl Dataplane {
    /// Loads and verifies both programs; attaches nothing. With a pin directory, maps a
    /// previous `lbd` pinned there are adopted (after a compatibility check), others are
    /// created and pinned.
    pub fn load(options: LoadOptions) -> Result<Self, DataplaneError> {
        let mut loader = EbpfLoader::new();
        for name in [names::CONNTRACK, names::PENDING, names::CONNTRACK_FILTER] {
            if let Some(entries) = pin::sized_entries(name, options.conntrack_entries) {
                loader.map_max_entries(name, entries);
            }
        }
        let log_level = options.kernel_log as u8;
        loader.override_global(aya_log::LEVEL, &log_level, false);
        let mut adopted = false;
        let mut pin_lock = None;
        let mut grown = Vec::new();
        let mut previous_filters = endpoint_filters::PreviousFilters::default();
        if let Some(dir) = &options.pin_dir {
            pin::prepare(dir)?;
            pin_lock = Some(pin::lock(dir)?);
            adopted = pin::has_pinned_maps(dir);
            if adopted {
                let grows = pin::check_compatible(dir, OBJECT, options.conntrack_entries)?;
                previous_filters = endpoint_filters::PreviousFilters::find(dir);
                pin::unpin_made_anew(dir)?;
                // Last before the load: from here a failure puts them back.
                for name in grows {
                    grown.push(pin::GrownCounters::take(dir, name)?);
                }
            }
            for name in names::ALL {
                loader.map_pin_path(name, pin::map_path(dir, name));
            }
        }
        let restore_to = options.pin_dir.clone();
        match Self::load_object(loader, options, adopted, &grown, previous_filters) {
            Ok(mut dp) => {
                dp._pin_lock = pin_lock;
                dp.replaced_counters = grown;
                Ok(dp)
            }
            Err(e) => {
                // The earlier version's counters go back, so it can adopt its maps again.
                if let Some(dir) = &restore_to {
                    for counters in &grown {
                        counters.restore(dir);
                    }
                }
                Err(e)
            }
        }
    }

    /// `load`, once the pinned maps were checked: loads the object (adopting and pinning its
    /// maps), carries `grown` counters over and verifies both programs.
    fn load_object(
        mut loader: EbpfLoader<'_>,
        options: LoadOptions,
        adopted: bool,
        grown: &[pin::GrownCounters],
        previous_filters: endpoint_filters::PreviousFilters,
    ) -> Result<Self, DataplaneError> {
        let mut ebpf = loader.load(OBJECT).map_err(DataplaneError::Load)?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(e) => {
                tracing::debug!("kernel log records will not be read: {e}");
                None
            }
        };
        for name in names::ALL {
            if ebpf.map(name).is_none() {
                return Err(DataplaneError::Missing { kind: "map", name });
            }
        }
        for counters in grown {
            counters.carry_into(&mut ebpf)?;
        }
        // Flows stamped before (adopted maps; or entries of a version without stamps, whose
        // stamp reads 0) check their frontend again before they skip FRONTENDS.
        maps::bump_frontend_gen(ebpf.map_mut(names::FRONTEND_GEN).expect("checked above"))?;
        // Adopted or new, the filter is not trusted until this lbd rebuilt it (see
        // `conntrack_filter`): a program of an older version may have written flows unseen.
        let conntrack_filter =
            conntrack_filter::ConntrackFilter::open(array_data(&ebpf, names::CONNTRACK_FILTER)?)?;
        conntrack_filter.switch_readers_off();
        let endpoint_filters = endpoint_filters::EndpointFilters::open(&ebpf, previous_filters)?;
        let xdp: &mut Xdp = program(&mut ebpf, programs::XDP)?;
        xdp.load().map_err(|error| DataplaneError::Verify {
            name: programs::XDP,
            error,
        })?;
        log_verified(programs::XDP, xdp.info());
        let tc: &mut SchedClassifier = program(&mut ebpf, programs::TC_INGRESS)?;
        tc.load().map_err(|error| DataplaneError::Verify {
            name: programs::TC_INGRESS,
            error,
        })?;
        log_verified(programs::TC_INGRESS, tc.info());
        Ok(Self {
            ebpf,
            attachments: Vec::new(),
            interface_macs: Default::default(),
            pin_dir: options.pin_dir,
            adopted,
            _pinned_links: Default::default(),
            unpinned_links: Default::default(),
            _pin_lock: None,
            sockets: None,
            logger,
            conntrack_filter: std::sync::Arc::new(conntrack_filter),
            endpoint_filters,
            replaced_counters: Vec::new(),
        })
    }

    /// The reader of the kernel programs' log records, for a task of its own: reading them
    /// then takes no lock the daemon's changes hold. `None` when taken already or when the
    /// programs log nothing (`--kernel-log off`).
    pub fn take_kernel_log(&mut self) -> Option<KernelLog> {
        self.logger.take()
    }

    /// Undoes a start that failed: when this `lbd` made the pinned state (nothing was adopted),
    /// removes its pins (see `remove_own_pins`), which detaches what it attached and frees its
    /// maps; adopted state (the
    /// previous `lbd`'s) stays as it is, but for counters of an earlier version this start
    /// replaced, which go back (so that version can adopt its maps again). If the new programs
    /// were swapped into some links already, they count into the new map until the next start,
    /// and those counts are lost: better than a version refusing the pins, whose fix, `lbd
    /// cleanup`, forgets the tracked flows.
    pub fn undo_failed_start(self) {
        if let (true, Some(dir)) = (self.adopted, &self.pin_dir) {
            for counters in &self.replaced_counters {
                counters.restore(dir);
            }
        }
        if let (false, Some(dir)) = (self.adopted, &self.pin_dir) {
            match self.remove_own_pins(dir) {
                Ok(()) => info!(pin_dir = %dir.display(), "start failed: removed what it pinned"),
                Err(e) => {
                    warn!(pin_dir = %dir.display(), "start failed, and removing what it pinned failed too: {e}")
                }
            }
        }
    }

    /// Removes the pins this start made under `dir` (its maps and the links it holds), then
    /// the directories they leave empty, `dir` included. Never anything else: `--pin-dir` may
    /// be a bpffs directory shared with another tool, whose pins `lbd cleanup` refuses to
    /// touch too.
    fn remove_own_pins(&self, dir: &Path) -> std::io::Result<()> {
        let pins = names::ALL
            .iter()
            .map(|name| pin::map_path(dir, name))
            .chain(self._pinned_links.keys().cloned());
        let mut failed = None;
        for path in pins {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => failed = failed.or(Some(e)),
            }
            // The directories `pin::prepare` made on the way (a cgroup link's too).
            for parent in path.ancestors().skip(1) {
                if parent == dir || !parent.starts_with(dir) || std::fs::remove_dir(parent).is_err()
                {
                    break;
                }
            }
        }
        for sub in ["links/xdp", "links/tc", "links/cgroup", "links", "maps"] {
            let _ = std::fs::remove_dir(dir.join(sub));
        }
        // Not empty (another tool's pins), or the bpffs mount itself: it stays.
        let _ = std::fs::remove_dir(dir);
        failed.map_or(Ok(()), Err)
    }

    /// Whether the maps were adopted from a previous `lbd` (they hold its services and flows).
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    pub fn pin_dir(&self) -> Option<&Path> {
        self.pin_dir.as_deref()
    }

    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    /// The XDP program, for BPF_PROG_TEST_RUN.
    pub fn xdp_program(&mut self) -> Result<&mut Xdp, DataplaneError> {
        program(&mut self.ebpf, programs::XDP)
    }

    /// The TC ingress program, for BPF_PROG_TEST_RUN.
    pub fn tc_program(&mut self) -> Result<&mut SchedClassifier, DataplaneError> {
        program(&mut self.ebpf, programs::TC_INGRESS)
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

fn remove_pin(path: &Path) -> Result<(), DataplaneError> {
    std::fs::remove_file(path)
        .map_err(|e| DataplaneError::Pin(format!("removing {}: {e}", path.display())))
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

/// `interface`'s index, if meshlb can serve on it: it exists and forwards IPv4.
pub fn attachable(interface: &str) -> Result<u32, DataplaneError> {
    let index = ifindex(interface)?;
    if !forwarding_enabled(interface) {
        return Err(DataplaneError::ForwardingDisabled(interface.to_owned()));
    }
    Ok(index)
}

fn forwarding_enabled(interface: &str) -> bool {
    std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{interface}/forwarding"))
        .map(|v| v.trim() == "1")
        .unwrap_or(false)
}

pub fn forwarding_enabled_v6(interface: &str) -> bool {
    std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{interface}/forwarding"))
        .map(|v| v.trim() == "1")
        .unwrap_or(false)
}

/// What plans need to know of this host (its namespace): its addresses and the IPv4
/// subnets it reaches directly.
pub fn node_facts() -> std::io::Result<crate::plan::NodeFacts> {
    Ok(crate::plan::NodeFacts {
        addresses: node_addresses()?,
        connected: netlink::connected_subnets()?,
    })
}

/// Every unicast address of this host (its namespace), for published ports.
pub fn node_addresses() -> std::io::Result<Vec<IpAddr>> {
    let addrs: std::collections::BTreeSet<IpAddr> = interface_addresses()?
        .into_iter()
        .map(|(_, addr)| addr)
        .collect();
    Ok(addrs.into_iter().collect())
}

/// Every usable unicast address of this host (its namespace), with its interface's name
/// (neither loopback nor link-local).
pub fn interface_addresses() -> std::io::Result<Vec<(String, IpAddr)>> {
    let mut addrs = Vec::new();
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
        if entry.ifa_addr.is_null() || entry.ifa_name.is_null() {
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
            // SAFETY: ifa_name is a NUL-terminated string owned by the list.
            let name = unsafe { std::ffi::CStr::from_ptr(entry.ifa_name) };
            addrs.push((name.to_string_lossy().into_owned(), addr));
        }
    }
    // SAFETY: head came from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    Ok(addrs)
}

/// The interfaces of this namespace's default routes (IPv4 and IPv6), from procfs.
pub fn default_route_interfaces() -> Vec<String> {
    let mut names = Vec::new();
    // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
    let v4 = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    for fields in v4
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
    {
        if fields.len() > 7 && fields[1] == "00000000" && fields[7] == "00000000" {
            names.push(fields[0].to_owned());
        }
    }
    // Destination PrefixLen Source SrcPrefixLen NextHop Metric RefCnt Use Flags Iface
    let v6 = std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    for fields in v6.lines().map(|l| l.split_whitespace().collect::<Vec<_>>()) {
        if fields.len() == 10 && fields[0].bytes().all(|b| b == b'0') && fields[1] == "00" {
            names.push(fields[9].to_owned());
        }
    }
    names.retain(|n| n != "lo");
    names.sort();
    names.dedup();
    names
}

/// The array map `name` of `ebpf`, to be mapped into memory.
fn array_data<'e>(
    ebpf: &'e Ebpf,
    name: &'static str,
) -> Result<&'e aya::maps::MapData, DataplaneError> {
    match ebpf.map(name).expect("checked at load") {
        aya::maps::Map::Array(data) => Ok(data),
        _ => Err(DataplaneError::MapValue {
            name,
            message: "not an array: lb-ebpf and lb-userspace are out of step".into(),
        }),
    }
}

/// How much of the verifier's budget a program took (the kernel stops at 1,000,000
/// instructions processed): the headroom a change to the packet paths has left.
fn log_verified(name: &str, info: Result<aya::programs::ProgramInfo, aya::programs::ProgramError>) {
    if let Some(count) = info.ok().and_then(|i| i.verified_instruction_count()) {
        tracing::debug!(program = name, instructions_processed = count, "verified");
    }
}
