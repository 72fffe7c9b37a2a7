//! Writing a replan's changes (`plan::PlanDelta`): only the entries it touches, in the order
//! `apply` keeps every packet consistent in (backends, whole tables, reply endpoints,
//! frontends; removals the other way round, emptied tables included).

use aya::maps::{Array, HashMap, IterableMap as _, MapData};
use lb_common::maps::{Backend, EndpointKey, Service, names};

use super::{
    Dataplane, DataplaneError, batch,
    maps::{bump_frontend_gen, map_err, set_tables},
};
use crate::plan::{PlanDelta, TableSpec};

/// Entries as the keys and values to write and the keys to remove.
pub(super) struct Split<K, V> {
    pub(super) write_keys: Vec<K>,
    pub(super) write_values: Vec<V>,
    pub(super) remove: Vec<K>,
}

pub(super) fn split<K: Copy, V: Clone>(entries: &[(K, Option<V>)]) -> Split<K, V> {
    let mut out = Split {
        write_keys: Vec::new(),
        write_values: Vec::new(),
        remove: Vec::new(),
    };
    for (key, value) in entries {
        match value {
            Some(value) => {
                out.write_keys.push(*key);
                out.write_values.push(value.clone());
            }
            None => out.remove.push(*key),
        }
    }
    out
}

impl Dataplane {
    /// Makes the maps hold the running plan with `delta` applied, given that they hold the
    /// running plan: writes and removes only the entries `delta` lists.
    pub fn apply_delta(&mut self, delta: &PlanDelta) -> Result<(), DataplaneError> {
        let [backends, tables, endpoints, frontends, frontend_gen] =
            self.ebpf_mut().maps_disjoint_mut([
                names::BACKENDS,
                names::SERVICE_TABLES,
                names::BACKEND_ENDPOINTS,
                names::FRONTENDS,
                names::FRONTEND_GEN,
            ]);
        let loaded = "checked at load";
        let backends: Array<&mut MapData, Backend> =
            Array::try_from(backends.expect(loaded)).map_err(map_err(names::BACKENDS))?;
        let backend_changes = split(&delta.backends);
        batch::update(
            backends.map(),
            names::BACKENDS,
            &backend_changes.write_keys,
            &backend_changes.write_values,
        )?;
        let outer = super::maps::outer_fd(tables.expect(loaded))?;
        let (written, gone): (Vec<_>, Vec<_>) = delta
            .tables
            .iter()
            .map(|(id, table)| (*id, table.as_deref()))
            .partition(|(_, table)| table.is_some());
        let written: Vec<(u32, Option<&TableSpec>)> = written;
        set_tables(outer, &written)?;
        let endpoints: HashMap<&mut MapData, EndpointKey, u32> =
            HashMap::try_from(endpoints.expect(loaded))
                .map_err(map_err(names::BACKEND_ENDPOINTS))?;
        let endpoint_changes = split(&delta.endpoints);
        batch::update(
            endpoints.map(),
            names::BACKEND_ENDPOINTS,
            &endpoint_changes.write_keys,
            &endpoint_changes.write_values,
        )?;
        let frontends: HashMap<&mut MapData, EndpointKey, Service> =
            HashMap::try_from(frontends.expect(loaded)).map_err(map_err(names::FRONTENDS))?;
        let frontend_changes = split(&delta.frontends);
        batch::update(
            frontends.map(),
            names::FRONTENDS,
            &frontend_changes.write_keys,
            &frontend_changes.write_values,
        )?;
        batch::delete(frontends.map(), names::FRONTENDS, &frontend_changes.remove)?;
        // Flows that skip FRONTENDS on their stamp check it again.
        if !delta.frontends.is_empty() {
            bump_frontend_gen(frontend_gen.expect(loaded))?;
        }
        // Tables of services gone, emptied once no frontend leads to them (as `apply`).
        set_tables(outer, &gone)?;
        batch::delete(
            endpoints.map(),
            names::BACKEND_ENDPOINTS,
            &endpoint_changes.remove,
        )?;
        batch::update(
            backends.map(),
            names::BACKENDS,
            &backend_changes.remove,
            &vec![Backend::default(); backend_changes.remove.len()],
        )?;
        self.write_reply_delta(&endpoint_changes.write_keys, delta)
    }
}
