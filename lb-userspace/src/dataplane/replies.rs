//! Writing the plan's `REPLY_FRONTENDS` (replies translated without a connection-table entry,
//! see `plan::replies`), and marking every backend endpoint in `REPLY_FILTER` so the program
//! looks its replies up even on a node that never tracked one of its flows.

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::{Array, HashMap, IterableMap as _, MapData};
use lb_common::{
    hash::endpoint_filter_slot,
    maps::{EndpointKey, ReplyFrontend, names},
};

use super::{Dataplane, DataplaneError, changes::Changes, maps::map_err};
use crate::plan::DesiredState;

/// One-byte slots per `REPLY_FILTER` element.
const FILTER_SLOTS_PER_ELEMENT: u32 = 64;

impl Dataplane {
    /// Marks `endpoints` (the backend endpoints just written) in `REPLY_FILTER`, then writes
    /// `changes` to `REPLY_FRONTENDS`. Called after `BACKEND_ENDPOINTS` is written: the
    /// program reaches `REPLY_FRONTENDS` only through it.
    pub(super) fn write_reply_frontends(
        &mut self,
        endpoints: &[EndpointKey],
        changes: &Changes<EndpointKey, ReplyFrontend>,
    ) -> Result<(), DataplaneError> {
        self.mark_reply_filter(endpoints.iter())?;
        if changes.is_empty() {
            return Ok(());
        }
        let map: HashMap<&mut MapData, EndpointKey, ReplyFrontend> = HashMap::try_from(
            self.ebpf_mut()
                .map_mut(names::REPLY_FRONTENDS)
                .expect("checked at load"),
        )
        .map_err(map_err(names::REPLY_FRONTENDS))?;
        changes.write(map.map(), names::REPLY_FRONTENDS)?;
        changes.delete(map.map(), names::REPLY_FRONTENDS)
    }

    /// Sets the `REPLY_FILTER` slot of each endpoint. An element is read, changed and written
    /// back whole, so a slot the program sets meanwhile in the same element can be lost; that
    /// slot is a backend endpoint's, and every backend endpoint is marked here when it is
    /// written (all of them after a load), so a lost slot is one this call or an earlier one
    /// sets anyway.
    fn mark_reply_filter<'a>(
        &mut self,
        endpoints: impl Iterator<Item = &'a EndpointKey>,
    ) -> Result<(), DataplaneError> {
        let mut by_element: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
        for key in endpoints {
            let slot = endpoint_filter_slot(&key.addr, key.port_be, key.proto);
            by_element
                .entry(slot / FILTER_SLOTS_PER_ELEMENT)
                .or_default()
                .insert(slot % FILTER_SLOTS_PER_ELEMENT);
        }
        if by_element.is_empty() {
            return Ok(());
        }
        let mut filter: Array<&mut MapData, [u8; FILTER_SLOTS_PER_ELEMENT as usize]> =
            Array::try_from(
                self.ebpf_mut()
                    .map_mut(names::REPLY_FILTER)
                    .expect("checked at load"),
            )
            .map_err(map_err(names::REPLY_FILTER))?;
        for (element, slots) in by_element {
            let mut bytes = filter
                .get(&element, 0)
                .map_err(map_err(names::REPLY_FILTER))?;
            if slots.iter().all(|s| bytes[*s as usize] != 0) {
                continue;
            }
            for slot in slots {
                bytes[slot as usize] = 1;
            }
            filter
                .set(element, bytes, 0)
                .map_err(map_err(names::REPLY_FILTER))?;
        }
        Ok(())
    }

    /// Removes `REPLY_FRONTENDS` entries `desired` does not have (see `prune`).
    pub(super) fn prune_reply_frontends(
        &mut self,
        desired: &DesiredState,
    ) -> Result<usize, DataplaneError> {
        let mut map: HashMap<&mut MapData, EndpointKey, ReplyFrontend> = HashMap::try_from(
            self.ebpf_mut()
                .map_mut(names::REPLY_FRONTENDS)
                .expect("checked at load"),
        )
        .map_err(map_err(names::REPLY_FRONTENDS))?;
        let stale: Vec<EndpointKey> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !desired.reply_frontends.contains_key(k))
            .collect();
        for key in &stale {
            map.remove(key).map_err(map_err(names::REPLY_FRONTENDS))?;
        }
        Ok(stale.len())
    }
}
