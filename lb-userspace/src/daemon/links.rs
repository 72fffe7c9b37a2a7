//! Interfaces that go and come back: a deleted interface takes meshlb's programs with it; when
//! an interface of that name exists again (a new index, or the same one after it was seen
//! missing), meshlb attaches to it anew. Driven by lbd's netlink link events, and checked every
//! second besides.
//!
//! And on a swarm node, the local Docker bridge networks' interfaces (`docker0` and those of
//! `docker network create`), followed as the Engine lists them: their containers call the
//! node's published ports and policy VIPs through them (see `swarm::bridges`), so `lbd`
//! attaches to each while its network exists and takes its programs off once it is gone.

use std::collections::{BTreeMap, BTreeSet};

use super::*;

/// What happened to an attached interface since the last look.
#[derive(Debug)]
pub enum LinkEvent {
    /// Deleted: shown as missing until an interface of that name exists again.
    Missing { interface: String },
    /// Made again: attached anew.
    Reattached {
        interface: String,
        old_ifindex: u32,
        ifindex: u32,
    },
    /// Made again, but attaching failed; tried again at the next look.
    Failed {
        interface: String,
        error: DaemonError,
    },
}

#[derive(Debug, Default)]
pub(super) struct LinkState {
    missing: BTreeSet<String>,
    reattached: BTreeMap<String, u64>,
    /// Whether the Engine's bridge networks are followed (`--docker-bridges`).
    following_bridges: bool,
    /// The bridges followed: attached, or to be once their interface exists. Not the
    /// operator's own interfaces, which stay whatever the Engine says.
    bridges: BTreeSet<String>,
    /// Bridges whose attach or release failed: the error (said once until it changes) and
    /// when to try again (1 s, then twice as long each time, up to 30 s).
    bridge_errors: BTreeMap<String, (String, health::Retry)>,
}

impl LinkState {
    /// Following the Engine's bridges or not; `saved`: those the last lbd followed, whose
    /// pinned links it left.
    pub(super) fn following_bridges(following: bool, saved: BTreeSet<String>) -> LinkState {
        LinkState {
            following_bridges: following,
            bridges: saved,
            ..Default::default()
        }
    }
}

/// The bridges the last lbd followed (as its saved swarm state lists them) that are not the
/// operator's own interfaces; none when bridges are not followed.
pub(super) fn saved_bridges(swarm: Option<&Snapshot>, options: &DaemonOptions) -> BTreeSet<String> {
    let Some(snapshot) = swarm.filter(|_| options.docker_bridges) else {
        return BTreeSet::new();
    };
    snapshot
        .bridges
        .iter()
        .filter(|b| !options.interfaces.contains(b) && !options.late_interfaces.contains(b))
        .cloned()
        .collect()
}

/// A start's attachments: the interfaces given, those waited for that exist (the others are
/// returned, to attach once they do), and the pinned links of any other interface a previous
/// lbd served released. The bridges the last lbd followed (`saved`) keep their links until
/// the Engine says whether they are still there (`Daemon::follow_bridges`).
pub(super) fn attach_at_start(
    dp: &mut Dataplane,
    options: &DaemonOptions,
    saved: &BTreeSet<String>,
) -> Result<Vec<String>, DaemonError> {
    for interface in &options.interfaces {
        dp.attach(interface, options.xdp_mode)?;
    }
    let mut late_interfaces = Vec::new();
    for interface in &options.late_interfaces {
        if dataplane::ifindex(interface).is_ok() {
            dp.attach(interface, options.xdp_mode)?;
        } else {
            late_interfaces.push(interface.clone());
        }
    }
    let listed: Vec<String> = options
        .interfaces
        .iter()
        .chain(&options.late_interfaces)
        .chain(saved)
        .cloned()
        .collect();
    for interface in dp.release_unlisted(&listed)? {
        info!(interface, "detached: no longer in the interface list");
    }
    Ok(late_interfaces)
}

impl Daemon {
    /// Attaches to `interface` made again (now `ifindex`), and redirects to it again if it
    /// is an `--xdp-redirect` one: the kernel dropped the old index from `TX_PORTS` with the
    /// device.
    fn reattach(&mut self, interface: &str, ifindex: u32) -> Result<(), DataplaneError> {
        self.dp.attach(interface, self.xdp_mode)?;
        if self.xdp_redirect.iter().any(|name| name == interface) {
            self.dp.allow_xdp_redirect(ifindex)?;
        }
        Ok(())
    }

    /// Looks at every attached interface: marks the deleted ones missing and attaches again to
    /// those made again. Returns what changed (nothing when nothing did).
    pub fn follow_links(&mut self) -> Vec<LinkEvent> {
        let attached: Vec<(String, u32)> = self
            .dp
            .attachments()
            .iter()
            .map(|a| (a.interface.clone(), a.ifindex))
            .collect();
        let mut events = Vec::new();
        for (interface, old_ifindex) in attached {
            let was_missing = self.links.missing.contains(&interface);
            match dataplane::ifindex(&interface) {
                Err(_) => {
                    // A followed bridge goes with its network: `follow_bridges` says so.
                    if self.links.missing.insert(interface.clone())
                        && !self.links.bridges.contains(&interface)
                    {
                        events.push(LinkEvent::Missing { interface });
                    }
                }
                Ok(ifindex) if ifindex == old_ifindex && !was_missing => {}
                Ok(ifindex) => match self.reattach(&interface, ifindex) {
                    Ok(()) => {
                        self.links.missing.remove(&interface);
                        *self.links.reattached.entry(interface.clone()).or_default() += 1;
                        events.push(LinkEvent::Reattached {
                            interface,
                            old_ifindex,
                            ifindex,
                        });
                    }
                    Err(error) => {
                        self.links.missing.insert(interface.clone());
                        events.push(LinkEvent::Failed {
                            interface,
                            error: error.into(),
                        });
                    }
                },
            }
        }
        // An operator may give an interface another MAC without making it again.
        self.dp.refresh_interface_macs();
        events
    }

    /// Attaches to the bridges the Engine lists (the saved swarm state's until it answers)
    /// that are not attached yet, and takes the programs off those it no longer lists. One
    /// that cannot be attached or released now is tried again later (see `bridge_errors`).
    pub fn follow_bridges(&mut self) {
        if !self.links.following_bridges {
            return;
        }
        let listed = self
            .swarm
            .as_ref()
            .map(|s| s.bridges.clone())
            .unwrap_or_default();
        for gone in self.links.bridges.clone().difference(&listed) {
            if !self.bridge_retry_due(gone) {
                continue;
            }
            match self.dp.release(gone) {
                Ok(released) => {
                    self.links.bridges.remove(gone);
                    self.links.bridge_errors.remove(gone);
                    self.links.missing.remove(gone);
                    self.links.reattached.remove(gone);
                    if released {
                        info!(
                            interface = %gone,
                            "detached: the Engine no longer lists its bridge network"
                        );
                    }
                }
                Err(e) => self.bridge_failed(gone, "detaching from", e.to_string()),
            }
        }
        let attached: BTreeSet<String> = self
            .dp
            .attachments()
            .iter()
            .map(|a| a.interface.clone())
            .collect();
        // A bridge has no native XDP: `--xdp-mode native` is for the NICs.
        let mode = match self.xdp_mode {
            XdpMode::Native => XdpMode::Auto,
            mode => mode,
        };
        for bridge in listed {
            let operators = !self.links.bridges.contains(&bridge)
                && (attached.contains(&bridge) || self.late_interfaces.contains(&bridge));
            if operators {
                continue;
            }
            self.links.bridges.insert(bridge.clone());
            if attached.contains(&bridge)
                || dataplane::ifindex(&bridge).is_err()
                || !self.bridge_retry_due(&bridge)
            {
                continue;
            }
            match self.dp.attach(&bridge, mode) {
                Ok(_) => {
                    self.links.bridge_errors.remove(&bridge);
                    info!(
                        interface = %bridge,
                        "attached: a Docker bridge network's interface (its containers reach \
                         the node's published ports)"
                    );
                }
                Err(e) => self.bridge_failed(&bridge, "attaching to", e.to_string()),
            }
        }
    }

    /// Whether `bridge` may be tried now (its last failure's retry is due, or there was none).
    fn bridge_retry_due(&self, bridge: &str) -> bool {
        self.links
            .bridge_errors
            .get(bridge)
            .is_none_or(|(_, retry)| Instant::now() >= retry.at)
    }

    /// Notes a failed attach or release of `bridge` (`doing`): said in the log unless it is the
    /// error said last time, and tried again later.
    fn bridge_failed(&mut self, bridge: &str, doing: &str, error: String) {
        let earlier = self.links.bridge_errors.remove(bridge);
        let retry = health::Retry::after(earlier.as_ref().map(|(_, r)| *r));
        if earlier.as_ref().map(|(e, _)| e) != Some(&error) {
            warn!(
                interface = bridge,
                "{doing} a Docker bridge network's interface failed, trying again in {:?} (and \
                 longer each time): {error}",
                retry.wait
            );
        }
        self.links
            .bridge_errors
            .insert(bridge.to_owned(), (error, retry));
    }

    /// Every attachment as `lbctl status` shows it: attached or missing, and how often it
    /// was attached again.
    pub fn attachment_statuses(&self) -> Vec<crate::api::AttachmentStatus> {
        self.dp
            .attachments()
            .iter()
            .map(|a| crate::api::AttachmentStatus {
                state: if self.links.missing.contains(&a.interface) {
                    crate::api::AttachmentStatus::MISSING.into()
                } else {
                    crate::api::AttachmentStatus::ATTACHED.into()
                },
                reattached: self
                    .links
                    .reattached
                    .get(&a.interface)
                    .copied()
                    .unwrap_or(0),
                ..crate::api::AttachmentStatus::from(a)
            })
            .collect()
    }
}
