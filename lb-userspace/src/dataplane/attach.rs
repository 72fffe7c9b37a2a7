//! Attaching to interfaces: the XDP and TC programs on each, through links pinned so a
//! restarted `lbd` swaps its programs in without a gap, and taking them off again.

use std::path::Path;

use aya::programs::{
    SchedClassifier, TcAttachType, Xdp, XdpMode as AyaXdpMode,
    links::{FdLink, PinnedLink},
    tc::{SchedClassifierLink, SchedClassifierLinkId},
    xdp::{XdpLink, XdpLinkId},
};
use lb_common::maps::programs;
use tracing::{info, warn};

use super::*;

/// An interface's XDP and TC links when nothing is pinned.
pub(super) type UnpinnedLinks = (XdpLinkId, SchedClassifierLinkId);

impl Dataplane {
    /// Attaches the XDP program and the TC ingress program to `interface`.
    pub fn attach(
        &mut self,
        interface: &str,
        mode: XdpMode,
    ) -> Result<&Attachment, DataplaneError> {
        let ifindex = attachable(interface)?;
        let Some(dir) = self.pin_dir.clone() else {
            let xdp: &mut Xdp = program(&mut self.ebpf, programs::XDP)?;
            // The links live as long as the programs: dropping the Dataplane detaches them.
            let (xdp_link, mode) = attach_xdp(xdp, interface, ifindex, mode)?;
            let tc: &mut SchedClassifier = program(&mut self.ebpf, programs::TC_INGRESS)?;
            let tc_link = match tc.attach(interface, TcAttachType::Ingress) {
                Ok(link) => link,
                Err(error) => {
                    // Not left handing packets over to no one.
                    let xdp: &mut Xdp = program(&mut self.ebpf, programs::XDP)?;
                    if let Err(e) = xdp.detach(xdp_link) {
                        warn!(interface, "taking XDP off again after TC failed: {e}");
                    }
                    return Err(DataplaneError::AttachTc {
                        interface: interface.to_owned(),
                        error,
                    });
                }
            };
            self.unpinned_links
                .insert(interface.to_owned(), (xdp_link, tc_link));
            return Ok(self.attached(interface, ifindex, mode, false));
        };
        // The XDP program hands packets to the TC one, so XDP never runs without it: a pinned
        // link on another device (the interface renamed) is released XDP first, and here TC is
        // attached first. And TC never stays without XDP: it forwards whatever frame carries
        // a hand-off, which only XDP keeps off the wire (`Handoff`), so a failed XDP attach
        // takes TC off the interface again. Each: swap into the pinned link if there is a live one, else attach
        // and pin; a pin whose link the kernel detached (the interface deleted and made
        // again) is replaced.
        // Pins are found by name, links by device: a pin of this name on another device is
        // released, and one of this device under another name (renamed) taken for this name.
        let xdp_path = pin::link_path(&dir, interface, pin::LinkKind::Xdp);
        let tc_path = pin::link_path(&dir, interface, pin::LinkKind::Tc);
        for (path, kind) in [
            (&xdp_path, pin::LinkKind::Xdp),
            (&tc_path, pin::LinkKind::Tc),
        ] {
            link_device::release_if_elsewhere(path, kind, interface, ifindex)?;
            let links = pin::link_dir(&dir, kind);
            link_device::adopt_renamed(&links, path, kind, interface, ifindex)?;
        }
        self.attach_tc_pinned(&dir, interface)?;
        let attached = self.attach_xdp_pinned(&xdp_path, interface, ifindex, mode);
        let (mode, adopted) = match attached {
            Ok(attached) => attached,
            Err(e) => {
                self._pinned_links.remove(&tc_path);
                if let Err(unpin) = remove_pin(&tc_path) {
                    warn!(interface, "taking TC off again after XDP failed: {unpin}");
                }
                return Err(e);
            }
        };
        Ok(self.attached(interface, ifindex, mode, adopted))
    }

    /// Attaches the XDP program to `interface` through its pinned link `xdp_path`, as
    /// `attach_tc_pinned` does TC; answers the mode it runs in and whether it was adopted.
    fn attach_xdp_pinned(
        &mut self,
        xdp_path: &Path,
        interface: &str,
        ifindex: u32,
        mode: XdpMode,
    ) -> Result<(XdpMode, bool), DataplaneError> {
        let pin_error = |what: &str, e: &dyn std::error::Error| {
            DataplaneError::Pin(format!("{what} for `{interface}`: {}", with_causes(e)))
        };

        let xdp: &mut Xdp = program(&mut self.ebpf, programs::XDP)?;
        let adopted = match PinnedLink::from_pin(xdp_path) {
            Ok(old) => {
                let link = XdpLink::try_from(FdLink::from(old))
                    .map_err(|e| pin_error("adopting the pinned XDP link", &e))?;
                match xdp.attach_to_link(link) {
                    Ok(id) => {
                        // Out of aya's hands, so dropping the Dataplane leaves it attached;
                        // the pin keeps it alive.
                        drop(xdp.take_link(id).map_err(|e| pin_error("XDP link", &e))?);
                        true
                    }
                    Err(e) => {
                        warn!(
                            interface,
                            "the pinned XDP link is dead ({}); attaching afresh",
                            with_causes(&e)
                        );
                        remove_pin(xdp_path)?;
                        false
                    }
                }
            }
            Err(_) => false,
        };
        let mode = if adopted {
            // Attached by an earlier lbd, perhaps with another --xdp-mode.
            match netlink::attached_mode(ifindex) {
                Ok(Some(attached)) => {
                    if let Some(why) = mode_kept(interface, mode, attached, xdp_path) {
                        warn!("{why}");
                    }
                    attached
                }
                Ok(None) => mode,
                Err(e) => {
                    warn!(interface, "reading the adopted link's XDP mode: {e}");
                    mode
                }
            }
        } else {
            let (id, mode) = attach_xdp(xdp, interface, ifindex, mode)?;
            let link = xdp.take_link(id).map_err(|e| pin_error("XDP link", &e))?;
            let fd = FdLink::try_from(link).map_err(|e| {
                pin_error(
                    "the kernel gave a netlink XDP attachment, which cannot be pinned",
                    &e,
                )
            })?;
            drop(
                fd.pin(xdp_path)
                    .map_err(|e| pin_error("pinning the XDP link", &e))?,
            );
            mode
        };
        let link = PinnedLink::from_pin(xdp_path).map_err(|e| pin_error("XDP pin", &e))?;
        self._pinned_links.insert(xdp_path.to_owned(), link);
        Ok((mode, adopted))
    }

    /// Attaches the TC ingress program to `interface` through its pinned tcx link under `dir`:
    /// the live link a previous lbd pinned on this device (a pin on another device was
    /// released before) gets this program, else a new link is made and pinned.
    fn attach_tc_pinned(&mut self, dir: &Path, interface: &str) -> Result<(), DataplaneError> {
        let pin_error = |what: &str, e: &dyn std::error::Error| {
            DataplaneError::Pin(format!("{what} for `{interface}`: {}", with_causes(e)))
        };
        let tc_path = pin::link_path(dir, interface, pin::LinkKind::Tc);
        let tc: &mut SchedClassifier = program(&mut self.ebpf, programs::TC_INGRESS)?;
        let attach_tc_error = |error| DataplaneError::AttachTc {
            interface: interface.to_owned(),
            error,
        };
        let adopted_tc = match PinnedLink::from_pin(&tc_path) {
            Ok(old) => {
                let link = SchedClassifierLink::try_from(FdLink::from(old))
                    .map_err(|e| pin_error("adopting the pinned tcx link", &e))?;
                match tc.attach_to_link(link) {
                    Ok(id) => {
                        drop(tc.take_link(id).map_err(attach_tc_error)?);
                        true
                    }
                    Err(e) => {
                        warn!(
                            interface,
                            "the pinned tcx link is dead ({}); attaching afresh",
                            with_causes(&e)
                        );
                        remove_pin(&tc_path)?;
                        false
                    }
                }
            }
            Err(_) => false,
        };
        if !adopted_tc {
            // A tcx link or nothing: aya's `attach` falls back to a netlink filter on kernels
            // before 6.6, which cannot be pinned and which nothing would detach when the
            // start then fails (each retry leaving another program holding every map).
            let id = tc
                .attach_with_options(
                    interface,
                    TcAttachType::Ingress,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(|e| {
                    pin_error(
                        "attaching the TC ingress program as a tcx link (Linux 6.6 or later) \
                         failed",
                        &e,
                    )
                })?;
            let link = tc.take_link(id).map_err(attach_tc_error)?;
            let fd = FdLink::try_from(link).map_err(|e| {
                pin_error(
                    "the kernel gave a netlink TC attachment, which cannot be pinned",
                    &e,
                )
            })?;
            drop(
                fd.pin(&tc_path)
                    .map_err(|e| pin_error("pinning the tcx link", &e))?,
            );
        }
        let link = PinnedLink::from_pin(&tc_path).map_err(|e| pin_error("tcx pin", &e))?;
        self._pinned_links.insert(tc_path, link);
        Ok(())
    }

    fn attached(
        &mut self,
        interface: &str,
        ifindex: u32,
        mode: XdpMode,
        adopted: bool,
    ) -> &Attachment {
        info!(interface, ifindex, %mode, adopted, "attached");
        self.conntrack_filter.changed_now();
        // Made again under another index: the old index's MAC entry goes.
        let before = self
            .attachments
            .iter()
            .find(|a| a.interface == interface && a.ifindex != ifindex)
            .map(|a| a.ifindex);
        if let Some(old) = before {
            self.forget_interface_mac(old);
        }
        self.learn_interface_mac(interface, ifindex, mode);
        // Attached again (the interface was made again): the new attachment replaces the old.
        self.attachments.retain(|a| a.interface != interface);
        self.attachments.push(Attachment {
            interface: interface.to_owned(),
            ifindex,
            mode,
            adopted,
        });
        self.attachments.last().expect("just pushed")
    }

    /// Writes `interface`'s MAC for the XDP program (see `set_interface_mac`); a failure is
    /// logged, not fatal: the interface is then served unfiltered, as before.
    fn learn_interface_mac(&mut self, interface: &str, ifindex: u32, mode: XdpMode) {
        let skb_mode = matches!(mode, XdpMode::Generic);
        let written = netlink::link_filter_mac(ifindex)
            .map_err(|e| e.to_string())
            .and_then(|mac| {
                if let Some(m) = mac {
                    let start = u64::from_le_bytes([m[0], m[1], m[2], m[3], m[4], m[5], 0, 0]);
                    if lb_common::maps::Handoff::is_handoff_address(start) {
                        warn!(
                            interface,
                            "this interface's MAC is meshlb's hand-off address (`Handoff`): the TC program would forward frames sent to it where their source address says; give the interface another MAC"
                        );
                    }
                }
                if self.interface_macs.get(&ifindex) == Some(&(mac, skb_mode)) {
                    return Ok(());
                }
                self.set_interface_mac(ifindex, mac, skb_mode)
                    .map_err(|e| e.to_string())?;
                self.interface_macs.insert(ifindex, (mac, skb_mode));
                Ok(())
            });
        if let Err(e) = written {
            warn!(
                interface,
                "could not tell the XDP program this interface's MAC ({e}): frames on it for other hosts' MACs are served too"
            );
        }
    }

    /// Writes the MACs of the attached interfaces again (an operator may change one): called
    /// on netlink link events and once a second.
    pub fn refresh_interface_macs(&mut self) {
        let attached: Vec<(String, u32, XdpMode)> = self
            .attachments
            .iter()
            .map(|a| (a.interface.clone(), a.ifindex, a.mode))
            .collect();
        for (interface, ifindex, mode) in attached {
            self.learn_interface_mac(&interface, ifindex, mode);
        }
    }

    /// Detaches pinned links of interfaces not in `keep`: a previous `lbd` served them, this
    /// one was not asked to. Returns the interfaces released.
    pub fn release_unlisted(&mut self, keep: &[String]) -> Result<Vec<String>, DataplaneError> {
        let Some(dir) = &self.pin_dir else {
            return Ok(Vec::new());
        };
        let mut released = Vec::new();
        for (interface, path) in pin::pinned_interfaces(dir) {
            if keep.contains(&interface) {
                continue;
            }
            std::fs::remove_file(&path)
                .map_err(|e| DataplaneError::Pin(format!("removing {}: {e}", path.display())))?;
            if !released.contains(&interface) {
                released.push(interface);
            }
        }
        Ok(released)
    }

    /// Takes the programs off `interface` and forgets it: an interface `lbd` stops serving
    /// while it runs (a Docker bridge network removed). Its pinned links are unpinned, both
    /// even if one fails (the first error is returned, and a later call tries again); one
    /// already gone (the interface deleted) is only forgotten. Answers whether there was
    /// anything to release (an attachment or a pin).
    pub fn release(&mut self, interface: &str) -> Result<bool, DataplaneError> {
        let ifindex = self
            .attachments
            .iter()
            .find(|a| a.interface == interface)
            .map(|a| a.ifindex);
        self.attachments.retain(|a| a.interface != interface);
        if let Some(ifindex) = ifindex {
            self.forget_interface_mac(ifindex);
        }
        let mut released = ifindex.is_some();
        let Some(dir) = self.pin_dir.clone() else {
            if let Some((xdp_link, tc_link)) = self.unpinned_links.remove(interface) {
                let xdp: &mut Xdp = program(&mut self.ebpf, programs::XDP)?;
                // A link whose interface was deleted went with it: nothing left to detach.
                let _ = xdp.detach(xdp_link);
                let tc: &mut SchedClassifier = program(&mut self.ebpf, programs::TC_INGRESS)?;
                let _ = tc.detach(tc_link);
                released = true;
            }
            return Ok(released);
        };
        let mut failed = None;
        for kind in [pin::LinkKind::Xdp, pin::LinkKind::Tc] {
            let path = pin::link_path(&dir, interface, kind);
            self._pinned_links.remove(&path);
            match std::fs::remove_file(&path) {
                Ok(()) => released = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    failed = failed.or(Some(DataplaneError::Pin(format!(
                        "removing {}: {e}",
                        path.display()
                    ))));
                }
            }
        }
        failed.map_or(Ok(released), Err)
    }
}

fn attach_xdp(
    xdp: &mut Xdp,
    interface: &str,
    ifindex: u32,
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
    // Someone else's program (or another meshlb's): attaching would fail, and the error
    // would not say why.
    if let Ok(Some(id)) = netlink::attached_program(ifindex) {
        let program = aya::programs::loaded_programs()
            .flatten()
            .find(|p| p.id() == id)
            .and_then(|p| p.name_as_str().map(str::to_owned))
            .unwrap_or_else(|| "(unnamed)".to_owned());
        return Err(DataplaneError::XdpBusy {
            interface: interface.to_owned(),
            program,
            id,
        });
    }
    match mode {
        XdpMode::Auto if is_veth(ifindex) => {
            info!(
                interface,
                "a veth: generic XDP (its packets are skbs from sockets, which native XDP on a veth converts to XDP buffers and back; `--xdp-mode native` to take XDP frames from its peer)"
            );
            Ok((try_mode(xdp, XdpMode::Generic)?, XdpMode::Generic))
        }
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

/// Whether interface `ifindex` is a veth (false if that cannot be read: native is then tried).
fn is_veth(ifindex: u32) -> bool {
    netlink::link_kind(ifindex)
        .ok()
        .flatten()
        .is_some_and(|kind| kind == "veth")
}

/// What to tell when an adopted XDP link keeps a mode other than the one `asked` for
/// explicitly (`auto` takes what is there): a link cannot change its mode, and attaching
/// afresh would leave the interface unbalanced meanwhile, so the choice is the operator's.
fn mode_kept(interface: &str, asked: XdpMode, attached: XdpMode, pin: &Path) -> Option<String> {
    if asked == XdpMode::Auto || asked == attached {
        return None;
    }
    Some(format!(
        "`{interface}` keeps XDP in {attached} mode, as an earlier lbd attached it, not \
         {asked} as asked: its link was adopted, with its flows; to change the mode, stop lbd, \
         remove the link's pin {} (the interface is not balanced until lbd starts again; \
         tracked flows stay in the maps) and start lbd again",
        pin.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_adopted_link_in_another_mode_than_asked_is_said_with_the_way_to_change_it() {
        let pin = Path::new("/sys/fs/bpf/meshlb/links/xdp/eth1");
        let told = |asked, attached| mode_kept("eth1", asked, attached, pin);
        assert_eq!(told(XdpMode::Auto, XdpMode::Generic), None, "auto takes it");
        assert_eq!(told(XdpMode::Native, XdpMode::Native), None);
        let text = told(XdpMode::Native, XdpMode::Generic).expect("told");
        assert!(
            text.contains("`eth1` keeps XDP in generic mode")
                && text.contains("not native as asked")
                && text.contains("remove the link's pin /sys/fs/bpf/meshlb/links/xdp/eth1"),
            "{text}"
        );
    }
}
