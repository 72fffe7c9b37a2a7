//! What one change of the plan writes into the maps, and the one order it is written in.
//! A full apply finds the changes by comparing the running plan with the new one
//! (`PlanChanges::between`); a replan lists them itself (`PlanChanges::listed`).

use std::collections::BTreeMap;

use aya::maps::{Array, HashMap, IterableMap as _, MapData};
use lb_common::maps::{Backend, EndpointKey, ReplyFrontend, Service, names};

use super::{
    Dataplane, DataplaneError, batch,
    maps::{bump_frontend_gen, map_err, outer_fd},
    tables::{InPlace, emptied, set_tables},
};
use crate::plan::{DesiredState, PlanDelta, Table, TableSpec, each_difference};

/// One map's changes: the entries to write (new or different) and the keys to remove.
pub(super) struct Changes<K, V> {
    pub(super) write_keys: Vec<K>,
    pub(super) write_values: Vec<V>,
    pub(super) remove: Vec<K>,
}

impl<K, V> Changes<K, V> {
    fn none() -> Self {
        Changes {
            write_keys: Vec::new(),
            write_values: Vec::new(),
            remove: Vec::new(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.write_keys.is_empty() && self.remove.is_empty()
    }
}

impl<K: Copy, V: Clone> Changes<K, V> {
    /// One entry: a value to write, or `None` to remove the key.
    fn push(&mut self, key: &K, value: Option<&V>) {
        match value {
            Some(value) => {
                self.write_keys.push(*key);
                self.write_values.push(value.clone());
            }
            None => self.remove.push(*key),
        }
    }

    /// Entries as a replan lists them.
    pub(super) fn listed(entries: &[(K, Option<V>)]) -> Self {
        let mut out = Changes::none();
        for (key, value) in entries {
            out.push(key, value.as_ref());
        }
        out
    }
}

impl<K: Ord + Copy, V: PartialEq + Clone> Changes<K, V> {
    /// What turns `previous` into `desired`.
    pub(super) fn between(previous: &BTreeMap<K, V>, desired: &BTreeMap<K, V>) -> Self {
        let mut out = Changes::none();
        each_difference(previous, desired, |key, value| out.push(key, value));
        out
    }
}

impl<K: aya::Pod, V: aya::Pod> Changes<K, V> {
    /// Writes the new and changed entries into `map` (named `name` in errors).
    pub(super) fn write(&self, map: &MapData, name: &'static str) -> Result<(), DataplaneError> {
        batch::update(map, name, &self.write_keys, &self.write_values)
    }

    /// Removes the keys to remove from `map`.
    pub(super) fn delete(&self, map: &MapData, name: &'static str) -> Result<(), DataplaneError> {
        batch::delete(map, name, &self.remove)
    }
}

/// Every map a change of the plan touches (the tunnel's aside: `apply` writes it first).
struct PlanChanges {
    backends: Changes<u32, Backend>,
    tables: Changes<u32, Table>,
    endpoints: Changes<EndpointKey, u32>,
    frontends: Changes<EndpointKey, Service>,
    reply_frontends: Changes<EndpointKey, ReplyFrontend>,
}

impl PlanChanges {
    fn between(previous: &DesiredState, desired: &DesiredState) -> Self {
        PlanChanges {
            backends: Changes::between(&previous.backends, &desired.backends),
            tables: Changes::between(&previous.tables, &desired.tables),
            endpoints: Changes::between(&previous.endpoints, &desired.endpoints),
            frontends: Changes::between(&previous.frontends, &desired.frontends),
            reply_frontends: Changes::between(&previous.reply_frontends, &desired.reply_frontends),
        }
    }

    fn listed(delta: &PlanDelta) -> Self {
        PlanChanges {
            backends: Changes::listed(&delta.backends),
            tables: Changes::listed(&delta.tables),
            endpoints: Changes::listed(&delta.endpoints),
            frontends: Changes::listed(&delta.frontends),
            reply_frontends: Changes::listed(&delta.reply_frontends),
        }
    }
}

impl Dataplane {
    /// Makes the maps hold `desired`, given that they hold `previous` (None: freshly loaded).
    /// Writes only what differs.
    pub fn apply(
        &mut self,
        previous: Option<&DesiredState>,
        desired: &DesiredState,
    ) -> Result<(), DataplaneError> {
        let empty = DesiredState::default();
        let previous = previous.unwrap_or(&empty);
        // First: backends written below may name a peer.
        if previous.tunnel != desired.tunnel || previous.tunnel == empty.tunnel {
            self.write_tunnel(&desired.tunnel)?;
        }
        self.write_changes(&PlanChanges::between(previous, desired))
    }

    /// Empties the selection tables of kernel services `ids` (`prune` took away every
    /// frontend that led to them): an adopting start's tables of services removed while no
    /// lbd ran, which otherwise keep their memory until their id is given out again.
    pub fn empty_tables(&mut self, ids: &[u32]) -> Result<(), DataplaneError> {
        if ids.is_empty() {
            return Ok(());
        }
        let tables = self
            .ebpf_mut()
            .map_mut(names::SERVICE_TABLES)
            .expect("checked at load");
        set_tables(outer_fd(tables)?, &emptied(ids), InPlace::Swap)
    }

    /// Makes the maps hold the running plan with `delta` applied, given that they hold the
    /// running plan: writes and removes only the entries `delta` lists.
    pub fn apply_delta(&mut self, delta: &PlanDelta) -> Result<(), DataplaneError> {
        self.write_changes(&PlanChanges::listed(delta))
    }

    /// Writes `changes` in the order that keeps every packet consistent: backends, then whole
    /// tables, then backend endpoints, then frontends; removals the other way round (a table
    /// emptied only once no frontend leads to it); then the replies translated without an
    /// entry, which the program reaches only through `BACKEND_ENDPOINTS`. In each hash map the
    /// entries that go are removed before new ones are added: a plan that fits the map only
    /// once they are gone (lingering endpoints given up for new ones) is refused otherwise.
    fn write_changes(&mut self, changes: &PlanChanges) -> Result<(), DataplaneError> {
        // Before anything is written, and whatever fails later (a mark that outlives its
        // entry only costs a lookup): the program looks a frontend up only if it is marked,
        // and a backend endpoint's replies only if it is.
        self.endpoint_filters
            .mark_frontends(&changes.frontends.write_keys);
        self.endpoint_filters
            .mark_backend_endpoints(&changes.endpoints.write_keys);
        let [backends, tables, endpoints, frontends, frontend_gen] =
            self.ebpf_mut().maps_disjoint_mut([
                names::BACKENDS,
                names::SERVICE_TABLES,
                names::BACKEND_ENDPOINTS,
                names::FRONTENDS,
                names::FRONTEND_GEN,
            ]);
        let loaded = "checked at load";
        let started = std::time::Instant::now();
        let backends: Array<&mut MapData, Backend> =
            Array::try_from(backends.expect(loaded)).map_err(map_err(names::BACKENDS))?;
        let backend_changes = &changes.backends;
        backend_changes.write(backends.map(), names::BACKENDS)?;

        let outer = outer_fd(tables.expect(loaded))?;
        let jobs: Vec<(u32, Option<&TableSpec>)> = changes
            .tables
            .write_keys
            .iter()
            .zip(&changes.tables.write_values)
            .map(|(id, table)| (*id, Some(&**table)))
            .collect();
        let before_tables = started.elapsed();
        let in_place = if backend_changes.remove.is_empty() {
            InPlace::Allowed
        } else {
            InPlace::Swap
        };
        set_tables(outer, &jobs, in_place)?;
        tracing::debug!(
            backends_ms = before_tables.as_secs_f64() * 1e3,
            tables = jobs.len(),
            tables_ms = (started.elapsed() - before_tables).as_secs_f64() * 1e3,
            "wrote backends and tables"
        );

        let endpoints: HashMap<&mut MapData, EndpointKey, u32> =
            HashMap::try_from(endpoints.expect(loaded))
                .map_err(map_err(names::BACKEND_ENDPOINTS))?;
        let endpoint_changes = &changes.endpoints;
        // The tables written above no longer pick the backends whose endpoints go.
        endpoint_changes.delete(endpoints.map(), names::BACKEND_ENDPOINTS)?;
        endpoint_changes.write(endpoints.map(), names::BACKEND_ENDPOINTS)?;

        let frontends: HashMap<&mut MapData, EndpointKey, Service> =
            HashMap::try_from(frontends.expect(loaded)).map_err(map_err(names::FRONTENDS))?;
        let frontend_changes = &changes.frontends;
        frontend_changes.delete(frontends.map(), names::FRONTENDS)?;
        frontend_changes.write(frontends.map(), names::FRONTENDS)?;
        // Any frontend written or removed: flows that skip FRONTENDS on their stamp check it
        // again. Not only keys the running plan had: after a load (adopted or degraded maps)
        // a "new" entry may replace an old value that live flows were stamped with.
        if !frontend_changes.is_empty() {
            bump_frontend_gen(frontend_gen.expect(loaded))?;
        }
        // Tables of services gone, emptied only now that no frontend leads to them (a
        // frontend that moved to another service was pointed at its new table above).
        set_tables(outer, &emptied(&changes.tables.remove), InPlace::Swap)?;
        batch::update(
            backends.map(),
            names::BACKENDS,
            &backend_changes.remove,
            &vec![Backend::default(); backend_changes.remove.len()],
        )?;
        self.write_reply_frontends(&changes.reply_frontends)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn between_writes_new_and_changed_entries_and_removes_missing_ones() {
        let previous: BTreeMap<u32, char> = [(1, 'a'), (2, 'b'), (4, 'd'), (6, 'f')].into();
        let desired: BTreeMap<u32, char> = [(0, 'z'), (2, 'b'), (4, 'D'), (5, 'e')].into();
        let d = Changes::between(&previous, &desired);
        assert_eq!(d.write_keys, [0, 4, 5]);
        assert_eq!(d.write_values, ['z', 'D', 'e']);
        assert_eq!(d.remove, [1, 6]);

        let same = Changes::between(&desired, &desired);
        assert!(same.is_empty());
        let from_nothing = Changes::between(&BTreeMap::new(), &desired);
        assert_eq!(from_nothing.write_keys, [0, 2, 4, 5]);
        let to_nothing = Changes::between(&desired, &BTreeMap::new());
        assert_eq!(to_nothing.remove, [0, 2, 4, 5]);
    }

    #[test]
    fn listed_writes_values_and_removes_nones_in_their_order() {
        let c = Changes::listed(&[(3, Some('c')), (1, None), (2, Some('b')), (0, None)]);
        assert_eq!(c.write_keys, [3, 2]);
        assert_eq!(c.write_values, ['c', 'b']);
        assert_eq!(c.remove, [1, 0]);
        assert!(Changes::<u32, char>::listed(&[]).is_empty());
    }
}
