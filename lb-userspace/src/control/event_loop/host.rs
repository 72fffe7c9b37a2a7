//! What the event loop reads of the host: a file's stamp, and the interfaces Docker made.

#[allow(unused_imports)]
use super::*;

/// A file's modification time, size and inode: any change of its contents moves one.
pub(super) type FileStamp = (SystemTime, u64, u64);

pub fn file_stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

/// Whether an interface is one Docker makes (not the node's underlay).
pub fn docker_made(name: &str) -> bool {
    name == "docker0"
        || name == swarm::snapshot::GWBRIDGE_NETWORK
        || ["veth", "br-", "vx-", "ov-"]
            .iter()
            .any(|p| name.starts_with(p))
}

/// The interfaces a swarm node attaches to when none are given: the underlay now, and
/// docker_gwbridge now or as soon as it exists (`(now, later)`).
pub fn swarm_interfaces() -> Result<(Vec<String>, Vec<String>), RunError> {
    let mut underlay = dataplane::default_route_interfaces();
    let why = if underlay.is_empty() {
        // No default route (an isolated underlay): the interfaces holding node addresses,
        // less those Docker makes.
        let addresses = dataplane::interface_addresses()
            .map_err(|e| RunError::Swarm(format!("listing the node's interfaces: {e}")))?;
        for (name, _) in addresses {
            if !docker_made(&name) && !underlay.contains(&name) {
                underlay.push(name);
            }
        }
        "the interfaces holding this node's addresses"
    } else {
        "the default route's"
    };
    if underlay.is_empty() {
        return Err(RunError::Swarm(
            "--swarm: no underlay interface found (no default route, no address); pass --interface IF"
                .into(),
        ));
    }
    info!(interfaces = ?underlay, "swarm: attaching to {why} interfaces (choose with --interface)");
    let gwbridge = swarm::snapshot::GWBRIDGE_NETWORK.to_owned();
    if dataplane::ifindex(&gwbridge).is_ok() {
        underlay.push(gwbridge);
        Ok((underlay, Vec::new()))
    } else {
        warn!(
            "swarm: no docker_gwbridge yet (Docker makes it with the node's first task); attaching to it as soon as it exists"
        );
        Ok((underlay, vec![gwbridge]))
    }
}
