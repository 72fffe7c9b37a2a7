//! What the XDP program knows of the interfaces: those it may redirect frames to itself
//! (`TX_PORTS`), and each attached interface's own MAC (`INTERFACE_MACS`, or
//! `INTERFACE_MACS_BEYOND` for a high ifindex).

use aya::maps::{Array, HashMap, MapData, xdp::DevMapHash};
use lb_common::maps::names;

use super::{Dataplane, DataplaneError, maps::map_err};

impl Dataplane {
    /// Lets the XDP program redirect frames to `ifindex` itself. Only for devices that accept
    /// XDP frames (a NIC with a native XDP driver, a veth whose peer runs an XDP program):
    /// elsewhere the frames would be dropped silently.
    pub fn allow_xdp_redirect(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        let mut ports: DevMapHash<&mut MapData> = DevMapHash::try_from(
            self.ebpf_mut()
                .map_mut(names::TX_PORTS)
                .expect("checked at load"),
        )
        .map_err(map_err(names::TX_PORTS))?;
        ports
            .insert(ifindex, ifindex, None, 0)
            .map_err(|e| DataplaneError::MapValue {
                name: names::TX_PORTS,
                message: e.to_string(),
            })
    }

    /// Forgets what the XDP program knew of `ifindex` (`set_interface_mac`): no program runs
    /// there any more, and a high index's slot in `INTERFACE_MACS_BEYOND` is free for another
    /// interface. A failure is logged: the entry only takes a slot.
    pub fn forget_interface_mac(&mut self, ifindex: u32) {
        self.interface_macs.remove(&ifindex);
        let forgotten = if ifindex < lb_common::limits::MAX_INTERFACE_MACS {
            self.set_interface_mac(ifindex, None, false)
        } else {
            HashMap::<&mut MapData, u32, lb_common::maps::InterfaceMac>::try_from(
                self.ebpf_mut()
                    .map_mut(names::INTERFACE_MACS_BEYOND)
                    .expect("checked at load"),
            )
            .map_err(map_err(names::INTERFACE_MACS_BEYOND))
            .and_then(|mut beyond| match beyond.remove(&ifindex) {
                Err(aya::maps::MapError::KeyNotFound) | Ok(()) => Ok(()),
                Err(e) => Err(map_err(names::INTERFACE_MACS_BEYOND)(e)),
            })
        };
        if let Err(e) = forgotten {
            tracing::warn!(ifindex, "forgetting a released interface's MAC: {e}");
        }
    }

    /// Tells the XDP program `ifindex`'s own MAC (`None`: forget it), so that it leaves unicast
    /// frames for other hosts to the kernel, and whether XDP runs there in generic mode. An
    /// ifindex beyond `INTERFACE_MACS` goes to `INTERFACE_MACS_BEYOND`; if that is full, the
    /// interface is not filtered and counts as native (said in the log).
    pub fn set_interface_mac(
        &mut self,
        ifindex: u32,
        mac: Option<[u8; 6]>,
        skb_mode: bool,
    ) -> Result<(), DataplaneError> {
        let mut value: lb_common::maps::InterfaceMac = [0u8; 8];
        if let Some(mac) = mac {
            value[..6].copy_from_slice(&mac);
            value[6] = 1;
        }
        if skb_mode {
            value[7] = lb_common::maps::interface_flags::SKB_MODE;
        }
        if ifindex < lb_common::limits::MAX_INTERFACE_MACS {
            let mut macs: Array<&mut MapData, lb_common::maps::InterfaceMac> = Array::try_from(
                self.ebpf_mut()
                    .map_mut(names::INTERFACE_MACS)
                    .expect("checked at load"),
            )
            .map_err(map_err(names::INTERFACE_MACS))?;
            return macs
                .set(ifindex, value, 0)
                .map_err(map_err(names::INTERFACE_MACS));
        }
        let mut beyond: HashMap<&mut MapData, u32, lb_common::maps::InterfaceMac> =
            HashMap::try_from(
                self.ebpf_mut()
                    .map_mut(names::INTERFACE_MACS_BEYOND)
                    .expect("checked at load"),
            )
            .map_err(map_err(names::INTERFACE_MACS_BEYOND))?;
        if let Err(e) = beyond.insert(ifindex, value, 0) {
            tracing::warn!(
                ifindex,
                "the interface's index is beyond INTERFACE_MACS ({}) and INTERFACE_MACS_BEYOND \
                 is full ({}): {e}; frames arriving on it for other hosts' MACs are served too, \
                 and in generic mode its local senders' partial checksums are not kept partial \
                 (restart lbd after `lbd cleanup` to start the map anew)",
                lb_common::limits::MAX_INTERFACE_MACS,
                lb_common::limits::MAX_INTERFACE_MACS_BEYOND,
            );
        }
        Ok(())
    }

    /// Makes `ifindexes` exactly the devices the XDP program redirects to: an adopted map may
    /// name devices the operator no longer lists (frames to them would be dropped silently).
    pub fn set_xdp_redirect(&mut self, ifindexes: &[u32]) -> Result<(), DataplaneError> {
        let mut ports: DevMapHash<&mut MapData> = DevMapHash::try_from(
            self.ebpf_mut()
                .map_mut(names::TX_PORTS)
                .expect("checked at load"),
        )
        .map_err(map_err(names::TX_PORTS))?;
        let stale: Vec<u32> = ports
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !ifindexes.contains(k))
            .collect();
        for key in stale {
            ports.remove(key).map_err(map_err(names::TX_PORTS))?;
        }
        for ifindex in ifindexes {
            self.allow_xdp_redirect(*ifindex)?;
        }
        Ok(())
    }
}
