//! Writing the plan's `REPLY_FRONTENDS` (replies translated without a connection-table entry,
//! see `plan::replies`), and marking every backend endpoint in `REPLY_FILTER` so the program
//! looks its replies up even on a node that never tracked one of its flows.

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::{Array, HashMap, IterableMap as _, MapData};
use lb_common::{
    hash::endpoint_filter_slot,
    maps::{EndpointKey, ReplyFrontend, names},
};

use super::{Dataplane, DataplaneError, batch};
use crate::plan::{DesiredState, PlanDelta};

/// One-byte slots per `REPLY_FILTER` element.
const FILTER_SLOTS_PER_ELEMENT: u32 = 64;

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> DataplaneError {
    move |error| DataplaneError::Map { name, error }
}

impl Dataplane {
    /// Makes `REPLY_FRONTENDS` hold `desired`'s, given that it holds `previous`'s, and marks
    /// the backend endpoints `desired` adds (all of them after a load: `previous` empty) in
    /// `REPLY_FILTER`. Called after `BACKEND_ENDPOINTS` is written: the program reaches
    /// `REPLY_FRONTENDS` only through it.
    pub(super) fn write_reply_frontends(
        &mut self,
        previous: &DesiredState,
        desired: &DesiredState,
    ) -> Result<(), DataplaneError> {
        self.mark_reply_filter(
            desired
                .endpoints
                .keys()
                .filter(|k| !previous.endpoints.contains_key(k)),
        )?;
        let map: HashMap<&mut MapData, EndpointKey, ReplyFrontend> = HashMap::try_from(
            self.ebpf_mut()
                .map_mut(names::REPLY_FRONTENDS)
                .expect("checked at load"),
        )
        .map_err(map_err(names::REPLY_FRONTENDS))?;
        let (mut keys, mut values, mut remove) = (Vec::new(), Vec::new(), Vec::new());
        for (key, value) in &desired.reply_frontends {
            if previous.reply_frontends.get(key) != Some(value) {
                keys.push(*key);
                values.push(*value);
            }
        }
        for key in previous.reply_frontends.keys() {
            if !desired.reply_frontends.contains_key(key) {
                remove.push(*key);
            }
        }
        batch::update(map.map(), names::REPLY_FRONTENDS, &keys, &values)?;
        batch::delete(map.map(), names::REPLY_FRONTENDS, &remove)
    }

    /// Writes a replan's `REPLY_FRONTENDS` changes, after marking `endpoints` (the backend
    /// endpoints it wrote) in `REPLY_FILTER`.
    pub(super) fn write_reply_delta(
        &mut self,
        endpoints: &[EndpointKey],
        delta: &PlanDelta,
    ) -> Result<(), DataplaneError> {
        self.mark_reply_filter(endpoints.iter())?;
        if delta.reply_frontends.is_empty() {
            return Ok(());
        }
        let map: HashMap<&mut MapData, EndpointKey, ReplyFrontend> = HashMap::try_from(
            self.ebpf_mut()
                .map_mut(names::REPLY_FRONTENDS)
                .expect("checked at load"),
        )
        .map_err(map_err(names::REPLY_FRONTENDS))?;
        let changes = super::delta::split(&delta.reply_frontends);
        batch::update(
            map.map(),
            names::REPLY_FRONTENDS,
            &changes.write_keys,
            &changes.write_values,
        )?;
        batch::delete(map.map(), names::REPLY_FRONTENDS, &changes.remove)
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
