//! Pinned state under bpffs, so the kernel program keeps forwarding while `lbd` is stopped,
//! upgraded or crashed, and the next `lbd` adopts the maps (connection table included).
//!
//! Layout of the pin directory (default `/sys/fs/bpf/meshlb`):
//! - `maps/<MAP NAME>`: every map of the kernel object.
//! - `links/xdp/<interface>`, `links/tc/<interface>`: the XDP and tcx links; a new `lbd`
//!   swaps its freshly loaded programs into them (`bpf_link_update`), so no packet meets an
//!   interface without a program.
//! - `links/cgroup/<cgroup path>/<program>`: the socket-level programs' cgroup links, swapped
//!   the same way (see `sockets`).
//!
//! Removing the directory (`lbd cleanup`) drops the last references: the links detach and the
//! maps are freed.

use std::path::{Path, PathBuf};

use aya::maps::{ArrayOfMaps, MapInfo, PerCpuArray, PerCpuValues};
use lb_common::maps::{TableElement, names};
use tracing::info;

use super::DataplaneError;

pub(crate) fn map_path(dir: &Path, name: &str) -> PathBuf {
    dir.join("maps").join(name)
}

pub(crate) fn link_path(dir: &Path, interface: &str, kind: LinkKind) -> PathBuf {
    link_dir(dir, kind).join(encode_name(interface))
}

/// Where the links of `kind` are pinned, one per interface.
pub(crate) fn link_dir(dir: &Path, kind: LinkKind) -> PathBuf {
    dir.join("links").join(kind.suffix())
}

pub(crate) fn cgroup_link_path(dir: &Path, cgroup: &Path, program: &str) -> PathBuf {
    cgroup_pin_dir(dir, cgroup).join(program)
}

/// Where the links of the socket-level programs attached to `cgroup` are pinned: one
/// directory per spelling of the cgroup's path.
pub(crate) fn cgroup_pin_dir(dir: &Path, cgroup: &Path) -> PathBuf {
    dir.join("links")
        .join("cgroup")
        .join(encode_name(&cgroup.to_string_lossy()).replace('/', "%2f"))
}

/// Cgroups that have pinned socket-level links, with the pin directory of each.
pub(crate) fn pinned_cgroups(dir: &Path) -> Vec<(PathBuf, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir.join("links").join("cgroup")) else {
        return Vec::new();
    };
    let mut out: Vec<(PathBuf, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.replace("%2f", "/");
            Some((PathBuf::from(decode_name(&name)), e.path()))
        })
        .collect();
    out.sort();
    out
}

/// bpffs refuses names with a dot (reserved for the kernel), which interface names such as
/// `eth0.100` have.
fn encode_name(interface: &str) -> String {
    interface.replace('%', "%25").replace('.', "%2e")
}

fn decode_name(name: &str) -> String {
    name.replace("%2e", ".").replace("%25", "%")
}

#[cfg(test)]
mod tests {
    #[test]
    fn cgroup_paths_make_one_pin_directory_each_and_come_back() {
        let dir = std::path::Path::new("/sys/fs/bpf/m");
        let cgroup = std::path::Path::new("/sys/fs/cgroup/unified/a.b%c");
        let path = super::cgroup_link_path(dir, cgroup, "meshlb_connect4");
        let name = path
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        assert!(!name.contains(['/', '.']), "{name}");
        assert_eq!(
            super::decode_name(&name.replace("%2f", "/")),
            cgroup.to_str().unwrap()
        );
    }

    #[test]
    fn interface_names_with_dots_make_valid_pin_names() {
        for name in ["eth0", "eth0.100", "a%b.c"] {
            let encoded = super::encode_name(name);
            assert!(!encoded.contains('.'), "{encoded}");
            assert_eq!(super::decode_name(&encoded), name);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LinkKind {
    Xdp,
    Tc,
}

impl LinkKind {
    fn suffix(self) -> &'static str {
        match self {
            Self::Xdp => "xdp",
            Self::Tc => "tc",
        }
    }

    /// How log lines and errors name the link.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Xdp => "XDP",
            Self::Tc => "tcx",
        }
    }
}

/// Creates the directory tree; says how to mount bpffs when it is missing.
pub(crate) fn prepare(dir: &Path) -> Result<(), DataplaneError> {
    let bpffs = dir.ancestors().any(is_bpffs);
    if !bpffs {
        return Err(DataplaneError::Pin(format!(
            "{} is not on a BPF filesystem; mount one with `mount -t bpf bpf /sys/fs/bpf` (or \
             run `cargo xtask setup`), or choose another --pin-dir",
            dir.display()
        )));
    }
    for sub in ["maps", "links/xdp", "links/tc", "links/cgroup"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| {
            DataplaneError::Pin(format!("creating {}: {e}", dir.join(sub).display()))
        })?;
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into `stat`, which is plain data, for a valid C string.
    unsafe {
        let mut stat: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut stat) == 0 && stat.f_type as i64 == BPF_FS_MAGIC
    }
}

/// Takes the pin directory for this process: an exclusive lock on the directory itself,
/// released when the returned handle is dropped (or the process dies). Two `lbd` adopting the
/// same maps would program them over each other.
pub(crate) fn lock(dir: &Path) -> Result<std::fs::File, DataplaneError> {
    use std::os::fd::AsRawFd as _;
    let handle = std::fs::File::open(dir)
        .map_err(|e| DataplaneError::Pin(format!("opening {}: {e}", dir.display())))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(handle.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(DataplaneError::Pin(
            if e.kind() == std::io::ErrorKind::WouldBlock {
                let holder = Holder::of(dir);
                format!(
                    "{} is running with pin directory {}; stop it first ({}), or give this one \
                     a pin directory, a state directory and an API socket of its own \
                     (--pin-dir, --state-dir, --api)",
                    holder.who(),
                    dir.display(),
                    holder.how_to_stop()
                )
            } else {
                format!("locking {}: {e}", dir.display())
            },
        ));
    }
    Ok(handle)
}

/// Whether a previous `lbd` left maps here to adopt.
pub(crate) fn has_pinned_maps(dir: &Path) -> bool {
    names::ALL.iter().any(|name| map_path(dir, name).exists())
}

/// `max_entries` of a map sized by the connection table's capacity (`conntrack_entries`), as
/// `Dataplane::load` creates it; None for the others (their object's size holds).
pub(crate) fn sized_entries(name: &str, conntrack_entries: u32) -> Option<u32> {
    use lb_common::limits::{hash_table_entries, pending_entries};
    match name {
        names::CONNTRACK => Some(hash_table_entries(conntrack_entries)),
        names::PENDING => Some(hash_table_entries(pending_entries(conntrack_entries))),
        names::CONNTRACK_FILTER => Some(lb_common::conntrack_filter::elements(conntrack_entries)),
        _ => None,
    }
}

/// The size a meshlb from before `hash_table_entries` gave the same map: adopted as it is
/// (only its buckets are fewer), so an upgrade keeps the tracked flows.
fn earlier_entries(name: &str, conntrack_entries: u32) -> Option<u32> {
    match name {
        names::CONNTRACK => Some(conntrack_entries),
        names::PENDING => Some(lb_common::limits::pending_entries(conntrack_entries)),
        _ => None,
    }
}

/// The `--conntrack-entries` that made a connection table of `max_entries`.
fn configured_entries(max_entries: u32) -> u32 {
    let less = max_entries.saturating_sub(1);
    if less.is_power_of_two() && lb_common::limits::hash_table_entries(less) == max_entries {
        less
    } else {
        max_entries
    }
}

/// Maps `lbd` makes anew at every start instead of adopting: the endpoint filters, which
/// hold nothing but what `lbd` marks, and it marks every frontend and backend endpoint when
/// it writes them all, before its program is attached (and in the filters of the programs
/// still running until then: see `endpoint_filters`). So they also lose their stale bits,
/// and a version may change their layout; an older `lbd` refuses a layout it does not know,
/// so going back to one afterwards needs `lbd cleanup`.
fn made_anew(name: &str) -> bool {
    matches!(name, names::FORWARD_FILTER | names::REPLY_FILTER)
}

/// Removes the pins of the maps made anew at every start (see `made_anew`), so that the load
/// makes and pins new ones; a program still running on them keeps them until it is replaced.
pub(crate) fn unpin_made_anew(dir: &Path) -> Result<(), DataplaneError> {
    for name in names::ALL.iter().filter(|name| made_anew(name)) {
        let path = map_path(dir, name);
        match std::fs::remove_file(&path) {
            Ok(()) => info!(map = name, "pinned map made anew, not adopted"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(DataplaneError::Pin(format!(
                    "removing {}: {e}",
                    path.display()
                )));
            }
        }
    }
    Ok(())
}

/// Whether a pinned counter map of `entries` slots, fewer than this build counts, is carried
/// over rather than refused: `GLOBAL_STATS` of a version whose slots are a prefix of this
/// one's (`StatSlot::ORDER_KEPT_SINCE`: earlier versions ordered them otherwise). It is made
/// anew in this build's size, its counts carried over slot by slot (`GrownCounters`).
fn may_grow(name: &str, entries: u32) -> bool {
    name == names::GLOBAL_STATS && entries >= lb_common::stats::StatSlot::ORDER_KEPT_SINCE
}

/// Refuses pinned maps whose shape differs from what this build's kernel object declares: a
/// program must never read a map laid out by another version. Returns the counter maps that
/// are smaller than this build's (see `may_grow`): they are carried over, not adopted.
pub(crate) fn check_compatible(
    dir: &Path,
    object: &[u8],
    conntrack_entries: u32,
) -> Result<Vec<&'static str>, DataplaneError> {
    let mut grown = Vec::new();
    let obj = aya_obj::Object::parse(object)
        .map_err(|e| DataplaneError::Pin(format!("parsing the kernel object: {e}")))?;
    for name in names::ALL {
        let path = map_path(dir, name);
        if !path.exists() || made_anew(name) {
            continue;
        }
        let Some(want) = obj.maps.get(name) else {
            return Err(DataplaneError::Missing { kind: "map", name });
        };
        let pinned = MapInfo::from_pin(&path)
            .map_err(|e| DataplaneError::Pin(format!("reading {}: {e}", path.display())))?;
        let want_entries = sized_entries(name, conntrack_entries).unwrap_or(want.max_entries());
        let have = (pinned.key_size(), pinned.value_size(), pinned.max_entries());
        let want = (want.key_size(), want.value_size(), want_entries);
        if have == want && name == names::SERVICE_TABLES {
            check_table_layout(&path)?;
        }
        let earlier = earlier_entries(name, conntrack_entries).map(|n| (want.0, want.1, n));
        if may_grow(name, have.2) && (have.0, have.1) == (want.0, want.1) && have.2 < want.2 {
            grown.push(name);
            continue;
        }
        if have != want && Some(have) != earlier {
            let hint = if name == names::CONNTRACK && have.0 == want.0 && have.1 == want.1 {
                format!(
                    "start with --conntrack-entries {} to keep the tracked flows, or ",
                    configured_entries(have.2)
                )
            } else {
                String::new()
            };
            return Err(DataplaneError::Pin(format!(
                "pinned map {} has key/value size {}/{} and {} entries, this lbd needs {}/{} and \
                 {}: it was made by another meshlb version or configuration; {hint}run `lbd \
                 cleanup` (this forgets tracked flows) and start again",
                path.display(),
                have.0,
                have.1,
                have.2,
                want.0,
                want.1,
                want.2
            )));
        }
    }
    Ok(grown)
}

/// The counts of a pinned counter map smaller than this build's (see `may_grow`), taken out
/// before the load makes the map anew in its own size. What the previous program counts
/// between this and the new programs' attachment is not carried (a start's worth).
pub(crate) struct GrownCounters {
    name: &'static str,
    /// The pinned map, kept open: put back in place (`restore`) if this start fails, so the
    /// version that made it can adopt it again.
    old: aya::maps::MapData,
    /// Per slot, the value on each CPU.
    slots: Vec<PerCpuValues<u64>>,
}

impl GrownCounters {
    /// Reads the pinned per-CPU array `name` and removes its pin, so that the load makes and
    /// pins one of this build's size (the previous program keeps the old one until replaced).
    pub(crate) fn take(dir: &Path, name: &'static str) -> Result<Self, DataplaneError> {
        let path = map_path(dir, name);
        let read = |e: aya::maps::MapError| {
            DataplaneError::Pin(format!(
                "reading the counts in {} to carry them over: {e}; run `lbd cleanup` (this \
                 forgets tracked flows) and start again",
                path.display()
            ))
        };
        let old = aya::maps::MapData::from_pin(&path).map_err(read)?;
        let data = aya::maps::MapData::from_pin(&path).map_err(read)?;
        let array: PerCpuArray<_, u64> =
            PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data)).map_err(read)?;
        let slots = (0..array.len())
            .map(|slot| array.get(&slot, 0))
            .collect::<Result<Vec<_>, _>>()
            .map_err(read)?;
        std::fs::remove_file(&path).map_err(|e| {
            DataplaneError::Pin(format!(
                "removing {} to make it anew in this version's size: {e}; check the pin \
                 directory's permissions, or run `lbd cleanup` (this forgets tracked flows)",
                path.display()
            ))
        })?;
        Ok(Self { name, old, slots })
    }

    /// Puts the taken map back in place of whatever this start pinned there.
    pub(crate) fn restore(&self, dir: &Path) {
        let path = map_path(dir, self.name);
        let put_back = match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.to_string()),
        }
        .and_then(|()| self.old.pin(&path).map_err(|e| e.to_string()));
        match put_back {
            Ok(()) => info!(
                map = self.name,
                "start failed: the earlier counters are back in place"
            ),
            Err(e) => tracing::warn!(
                map = self.name,
                "start failed, and putting the earlier counters back at {} failed too: {e}; \
                 the earlier lbd will refuse the map this one made (`lbd cleanup` removes it)",
                path.display()
            ),
        }
    }

    /// Writes the counts into the same slots of the map the load made.
    pub(crate) fn carry_into(&self, ebpf: &mut aya::Ebpf) -> Result<(), DataplaneError> {
        let name = self.name;
        let error = |error| DataplaneError::Map { name, error };
        let map = ebpf
            .map_mut(name)
            .ok_or(DataplaneError::Missing { kind: "map", name })?;
        let mut array: PerCpuArray<_, u64> = PerCpuArray::try_from(map).map_err(error)?;
        let (had, has) = (self.slots.len(), array.len());
        for (slot, values) in (0u32..).zip(&self.slots) {
            let values =
                PerCpuValues::try_from(values.to_vec()).map_err(|e| DataplaneError::MapValue {
                    name,
                    message: format!("carrying slot {slot} over: {e}"),
                })?;
            array.set(slot, values, 0).map_err(error)?;
        }
        info!(
            map = name,
            "pinned counters of {had} slots carried into a map of {has}: this version counts more"
        );
        Ok(())
    }
}

/// The tables inside a pinned `SERVICE_TABLES` must have this build's element size: the outer
/// map's own sizes do not show it (its values are map ids), and a table of another layout
/// would be read wrongly, not refused.
fn check_table_layout(path: &Path) -> Result<(), DataplaneError> {
    let read = |e: aya::maps::MapError| {
        DataplaneError::Pin(format!("reading the tables in {}: {e}", path.display()))
    };
    let data = aya::maps::MapData::from_pin(path).map_err(read)?;
    let tables: ArrayOfMaps<aya::maps::MapData, aya::maps::MapData> =
        ArrayOfMaps::try_from(aya::maps::Map::ArrayOfMaps(data)).map_err(read)?;
    let want = std::mem::size_of::<TableElement>() as u32;
    // Service ids are dense from 0: the first table is found at once.
    for id in 0..tables.len() {
        let inner = match tables.get(&id, 0) {
            Ok(inner) => inner,
            Err(aya::maps::MapError::KeyNotFound) => continue,
            Err(e) => return Err(read(e)),
        };
        let have = inner.info().map_err(read)?.value_size();
        if have != want {
            return Err(DataplaneError::Pin(format!(
                "the selection tables in {} have {have}-byte elements, this lbd needs {want}: \
                 they were made by another meshlb version; run `lbd cleanup` (this forgets \
                 tracked flows) and start again",
                path.display()
            )));
        }
        return Ok(());
    }
    Ok(())
}

/// Interfaces that have pinned links, with the pin files of each.
pub(crate) fn pinned_interfaces(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for kind in [LinkKind::Xdp, LinkKind::Tc] {
        let Ok(entries) = std::fs::read_dir(dir.join("links").join(kind.suffix())) else {
            continue;
        };
        out.extend(entries.flatten().filter_map(|e| {
            let name = e.file_name().to_str().map(decode_name)?;
            Some((name, e.path()))
        }));
    }
    out.sort();
    out
}

/// What `lbd cleanup` does about an `lbd` running on the pin directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenRunning {
    /// Refuse, naming it: removing its pins would detach the dataplane under it.
    Refuse,
    /// Stop it (SIGTERM, then wait for it to let go of the directory), then clean up.
    Stop,
}

/// How long `cleanup` waits for a stopped `lbd` to let go of the pin directory.
const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A meshlb pin directory `lbd cleanup` may remove: checked, no `lbd` on it, and locked so
/// none starts on it until [`Cleanup::remove`] (or the claim is dropped).
#[derive(Debug)]
pub struct Cleanup {
    dir: PathBuf,
    _lock: std::fs::File,
}

impl Cleanup {
    /// Removes everything meshlb pinned: its programs detach, its maps are freed.
    pub fn remove(self) -> Result<(), DataplaneError> {
        std::fs::remove_dir_all(&self.dir)
            .map_err(|e| DataplaneError::Pin(format!("removing {}: {e}", self.dir.display())))
    }
}

/// Claims `dir` for removal; `None` when nothing is pinned there. Only a meshlb pin directory
/// is claimed (on bpffs, holding nothing but `maps/` and `links/`), and never under a running
/// `lbd` unless asked to stop it first: a daemon and the kernel must never disagree. An `lbd`
/// that a systemd unit runs is not stopped (the unit would start it again): the error says
/// which unit to stop.
pub fn claim_for_cleanup(
    dir: &Path,
    when_running: WhenRunning,
) -> Result<Option<Cleanup>, DataplaneError> {
    let refuse =
        |why: String| DataplaneError::Pin(format!("{}: {why}; nothing removed", dir.display()));
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(refuse(format!("cannot read it ({e})"))),
        Ok(meta) if !meta.is_dir() => {
            return Err(refuse(
                "not a directory, so not a meshlb pin directory (check --pin-dir)".into(),
            ));
        }
        Ok(_) => {}
    }
    if !is_bpffs(dir) {
        return Err(refuse(
            "not on a BPF filesystem, so not a meshlb pin directory (check --pin-dir)".into(),
        ));
    }
    let foreign: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| refuse(format!("cannot list it ({e})")))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name != "maps" && name != "links")
        .collect();
    if !foreign.is_empty() {
        return Err(refuse(format!(
            "it holds {} besides meshlb's maps/ and links/: not a meshlb pin directory, or \
             shared with something else (check --pin-dir; remove it yourself if it is all \
             meshlb's)",
            foreign.join(", ")
        )));
    }
    let lock = match lock(dir) {
        Ok(lock) => lock,
        Err(_) => {
            let holder = Holder::of(dir);
            let (who, holders) = (holder.who(), &holder.pids);
            if let (WhenRunning::Stop, Some(unit)) = (when_running, &holder.unit) {
                return Err(refuse(format!(
                    "{who} runs under systemd's {unit}, which would start it again once \
                     stopped; stop the unit first (`systemctl stop {unit}`, or `systemctl start \
                     meshlb-cleanup`, which does both)"
                )));
            }
            if when_running == WhenRunning::Refuse || holders.is_empty() {
                return Err(refuse(format!(
                    "{who} is running with this pin directory and removing its pins would detach \
                     the dataplane under it; stop it first ({}), or run `lbd cleanup --force` to \
                     stop it and clean up",
                    holder.how_to_stop()
                )));
            }
            stop_holders(dir, holders)?
        }
    };
    Ok(Some(Cleanup {
        dir: dir.to_owned(),
        _lock: lock,
    }))
}

/// Who holds a pin directory's lock (another lbd), as `/proc` tells: for the errors of `lbd
/// run` and `lbd cleanup` that ask to stop it first.
struct Holder {
    /// Empty when `/proc/locks` does not tell (another PID namespace).
    pids: Vec<u32>,
    /// The systemd unit it is the main process of, if any.
    unit: Option<String>,
}

impl Holder {
    fn of(dir: &Path) -> Self {
        let pids = lock_holders(dir);
        let unit = pids.iter().find_map(|&pid| systemd_unit_of(pid));
        Self { pids, unit }
    }

    /// "lbd (pid 7235)", or "an lbd" when its pid is not known.
    fn who(&self) -> String {
        if self.pids.is_empty() {
            return "an lbd".to_owned();
        }
        let pids: Vec<String> = self.pids.iter().map(u32::to_string).collect();
        format!("lbd (pid {})", pids.join(", "))
    }

    /// How to stop it: through its unit (systemd would start a killed one again), else
    /// `systemctl stop meshlb` or a kill of its pid.
    fn how_to_stop(&self) -> String {
        match (&self.unit, self.pids.first()) {
            (Some(unit), _) => format!("`systemctl stop {unit}`"),
            (None, Some(pid)) => format!("`systemctl stop meshlb` or `kill {pid}`"),
            (None, None) => "`systemctl stop meshlb`".to_owned(),
        }
    }
}

/// The systemd service unit whose main process `pid` is: a child of pid 1 (as systemd starts
/// a unit's main process) in a cgroup `…/NAME.service`. An lbd some other process started
/// (a test, a shell) inside a unit is not the unit's to restart.
fn systemd_unit_of(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "PID (COMM) STATE PPID …": the command may hold spaces and parentheses.
    let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?;
    if ppid != "1" {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    unit_in_cgroups(&text)
}

fn unit_in_cgroups(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .flat_map(|path| path.split('/'))
        .find(|part| part.ends_with(".service"))
        .map(str::to_owned)
}

/// Sends SIGTERM to `holders` and waits (bounded) until the directory's lock is free; the lock.
fn stop_holders(dir: &Path, holders: &[u32]) -> Result<std::fs::File, DataplaneError> {
    for pid in holders {
        tracing::warn!(
            pid,
            "stopping the lbd that holds {} (--force)",
            dir.display()
        );
        // SAFETY: kill(2) with a pid read from /proc/locks; no memory is involved.
        unsafe { libc::kill(*pid as libc::pid_t, libc::SIGTERM) };
    }
    let deadline = std::time::Instant::now() + STOP_WAIT;
    loop {
        if let Ok(lock) = lock(dir) {
            return Ok(lock);
        }
        if std::time::Instant::now() >= deadline {
            return Err(DataplaneError::Pin(format!(
                "{}: lbd (pid {holders:?}) did not stop within {STOP_WAIT:?} of SIGTERM; nothing \
                 removed",
                dir.display()
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The processes holding the `flock` of `dir`, from `/proc/locks`.
fn lock_holders(dir: &Path) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(meta) = std::fs::metadata(dir) else {
        return Vec::new();
    };
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    holders_in(&locks, meta.dev(), meta.ino())
}

/// The pids of FLOCK lines of `/proc/locks` on the file (`dev`, `ino`).
fn holders_in(locks: &str, dev: u64, ino: u64) -> Vec<u32> {
    // "1: FLOCK  ADVISORY  WRITE 1234 00:1d:5678 0 EOF": pid, then major:minor:inode in hex
    // (major and minor) and decimal (inode).
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let mut pids: Vec<u32> = locks
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let at = fields.iter().position(|f| *f == "FLOCK")?;
            let pid: u32 = fields.get(at + 3)?.parse().ok()?;
            let mut id = fields.get(at + 4)?.split(':');
            let ma = u32::from_str_radix(id.next()?, 16).ok()?;
            let mi = u32::from_str_radix(id.next()?, 16).ok()?;
            let i: u64 = id.next()?.parse().ok()?;
            (ma == major && mi == minor && i == ino).then_some(pid)
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

#[cfg(test)]
mod lock_tests {
    #[test]
    fn lock_holders_are_read_from_proc_locks() {
        let dev = libc::makedev(0, 0x1d);
        let locks = "1: FLOCK  ADVISORY  WRITE 4242 00:1d:5678 0 EOF\n\
                     2: POSIX  ADVISORY  WRITE 17 00:1d:5678 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 99 00:1e:5678 0 EOF\n\
                     4: -> FLOCK  ADVISORY  WRITE 4243 00:1d:5678 0 EOF\n";
        assert_eq!(super::holders_in(locks, dev, 5678), [4242, 4243]);
        assert!(super::holders_in(locks, dev, 1).is_empty());
    }

    #[test]
    fn the_holder_is_named_by_pid_and_stopped_through_its_unit() {
        let holder = |pids: Vec<u32>, unit: Option<&str>| super::Holder {
            pids,
            unit: unit.map(str::to_owned),
        };
        let shell = holder(vec![7235], None);
        assert_eq!(shell.who(), "lbd (pid 7235)");
        assert_eq!(
            shell.how_to_stop(),
            "`systemctl stop meshlb` or `kill 7235`"
        );
        let unit = holder(vec![7235], Some("lbd-east.service"));
        assert_eq!(unit.how_to_stop(), "`systemctl stop lbd-east.service`");
        let unknown = holder(vec![], None);
        assert_eq!(unknown.who(), "an lbd");
        assert_eq!(unknown.how_to_stop(), "`systemctl stop meshlb`");
    }
}

#[cfg(test)]
mod unit_tests {
    #[test]
    fn the_service_unit_is_read_from_any_hierarchy() {
        let hybrid = "12:pids:/system.slice/meshlb.service\n\
                      1:name=systemd:/system.slice/meshlb.service\n\
                      0::/system.slice/meshlb.service\n";
        assert_eq!(
            super::unit_in_cgroups(hybrid).as_deref(),
            Some("meshlb.service")
        );
        let unified = "0::/system.slice/lbd-east.service\n";
        assert_eq!(
            super::unit_in_cgroups(unified).as_deref(),
            Some("lbd-east.service")
        );
        assert_eq!(
            super::unit_in_cgroups("0::/user.slice/user-0.slice/session-3.scope\n"),
            None
        );
        assert_eq!(super::unit_in_cgroups("9:name=systemd:/\n0::/\n"), None);
    }

    /// A second lbd on a held pin directory is told to stop the first or to give itself a
    /// pin directory, a state directory and an API socket of its own: sharing the last two
    /// would have it rewrite the first one's API state and socket.
    #[test]
    fn a_held_pin_directory_names_what_a_second_lbd_needs_of_its_own() {
        let dir = std::env::temp_dir().join(format!("mlb-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let held = super::lock(&dir).expect("the first lock");
        let e = super::lock(&dir).expect_err("held").to_string();
        drop(held);
        std::fs::remove_dir_all(&dir).unwrap();
        for flag in ["--pin-dir", "--state-dir", "--api"] {
            assert!(e.contains(flag), "{e}");
        }
    }
}
