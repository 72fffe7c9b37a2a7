//! Interfaces that go and come back: a deleted interface takes meshlb's programs with it; when
//! an interface of that name exists again (a new index, or the same one after it was seen
//! missing), meshlb attaches to it anew. Driven by lbd's netlink link events, and checked every
//! second besides.

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
                    if self.links.missing.insert(interface.clone()) {
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
