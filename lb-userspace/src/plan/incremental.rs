//! Replanning only the services whose spec changed (`replan`): on a node holding 10,000
//! services, a change to one of them plans, checks and writes that one's entries, not every
//! map. The result is the full plan's (`plan_from`), entry for entry and id for id; where
//! that cannot be had cheaply (the node's addresses, its connected subnets or the mesh
//! changed, an error, a limit reached, a frontend or a possible loop shared with an unchanged
//! service) the full plan is made instead, so its errors are the full plan's too.

use std::collections::BTreeSet;

use super::replies::{Reached, reached, reply_frontend};
use super::*;

/// What a replan changes in the running plan: every entry it touches, with its value after
/// (`None`: removed). Entries whose value stays are not listed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanDelta {
    pub frontends: Vec<(EndpointKey, Option<Service>)>,
    pub tables: Vec<(u32, Option<Table>)>,
    pub backends: Vec<(u32, Option<Backend>)>,
    pub endpoints: Vec<(EndpointKey, Option<u32>)>,
    pub reply_frontends: Vec<(EndpointKey, Option<ReplyFrontend>)>,
    /// By service name: its kernel services after (in plan order).
    services: Vec<(String, Vec<PlannedService>)>,
    service_ids: Vec<(ServiceIdentity, Option<u32>)>,
    backend_ids: Vec<(BackendIdentity, Option<u32>)>,
    /// The specs planned from (`Basis`).
    specs: Vec<(String, Option<ServiceSpec>)>,
}

impl PlanDelta {
    /// The service and backend ids it gives to identities `running` does not hold them for:
    /// given out fresh (`Ids::fresh_since` for a whole plan). Backend ids are looked up in the
    /// running plan's table of taken ids, not in a set of its 160,000: this runs at every API
    /// call.
    pub fn fresh_ids(&self, running: &Ids) -> (Vec<u32>, Vec<u32>) {
        let services = if self.service_ids.iter().any(|(_, id)| id.is_some()) {
            let held: std::collections::HashSet<u32> = running.services.values().copied().collect();
            self.service_ids
                .iter()
                .filter_map(|(_, id)| *id)
                .filter(|id| !held.contains(id))
                .collect()
        } else {
            Vec::new()
        };
        let taken = running.backends_taken();
        let backends = self
            .backend_ids
            .iter()
            .filter_map(|(_, id)| *id)
            .filter(|&id| !taken.get(id as usize).copied().unwrap_or(false))
            .collect();
        let sorted = |mut ids: Vec<u32>| {
            ids.sort_unstable();
            ids.dedup();
            ids
        };
        (sorted(services), sorted(backends))
    }

    /// Whether it changes nothing but the record of the specs (a change the plan does not
    /// depend on, such as a health check's interval): the kernel and the plan stay as they are.
    pub fn changes_no_plan(&self) -> bool {
        self.frontends.is_empty()
            && self.tables.is_empty()
            && self.backends.is_empty()
            && self.endpoints.is_empty()
            && self.reply_frontends.is_empty()
            && self.services.is_empty()
            && self.service_ids.is_empty()
            && self.backend_ids.is_empty()
    }
}

/// What `replan` made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replan {
    /// The changes to the running plan (`DesiredState::patch`), possibly none.
    Delta(PlanDelta),
    /// A whole new plan (`plan_from`).
    Full(DesiredState),
}

/// The plan of `file` on `node`, as `plan_from(file, node, Some(running))` makes it, given as
/// the changes to `running` when only some services changed.
pub fn replan(
    file: &ServiceFile,
    node: &NodeFacts,
    running: &DesiredState,
) -> Result<Replan, PlanError> {
    replan_among(file, node, running, None)
}

/// `replan`, told that only the services named in `may_differ` can differ from what
/// `running` was planned from (`None`: any): the others' specs are not compared, which on a
/// node of 10,000 services is most of the time an API call's replan takes.
pub fn replan_among(
    file: &ServiceFile,
    node: &NodeFacts,
    running: &DesiredState,
    may_differ: Option<&BTreeSet<String>>,
) -> Result<Replan, PlanError> {
    match incremental(file, node, running, may_differ) {
        Some(delta) => Ok(Replan::Delta(delta)),
        None => plan_from(file, node, Some(running)).map(Replan::Full),
    }
}

impl DesiredState {
    /// Applies `delta`, made by `replan` from this state.
    pub fn patch(&mut self, delta: PlanDelta) {
        fn put<K: Ord, V>(map: &mut BTreeMap<K, V>, entries: Vec<(K, Option<V>)>) {
            for (key, value) in entries {
                match value {
                    Some(value) => map.insert(key, value),
                    None => map.remove(&key),
                };
            }
        }
        put(&mut self.frontends, delta.frontends);
        put(&mut self.tables, delta.tables);
        put(&mut self.backends, delta.backends);
        put(&mut self.endpoints, delta.endpoints);
        put(&mut self.reply_frontends, delta.reply_frontends);
        put(&mut self.ids.services, delta.service_ids);
        self.ids.change_backends(delta.backend_ids);
        for (name, planned) in delta.services {
            let range = named_range(&self.services, &name);
            self.services.splice(range, planned);
        }
        if let Some(basis) = self.basis.as_mut() {
            put(&mut basis.specs, delta.specs);
        }
    }

    /// The delta that undoes `delta`: this state's values of every entry `delta` touches.
    pub fn undo_of(&self, delta: &PlanDelta) -> PlanDelta {
        fn now<K: Ord + Clone, V: Clone, W>(
            map: &BTreeMap<K, V>,
            entries: &[(K, W)],
        ) -> Vec<(K, Option<V>)> {
            entries
                .iter()
                .map(|(key, _)| (key.clone(), map.get(key).cloned()))
                .collect()
        }
        let no_specs = BTreeMap::new();
        PlanDelta {
            frontends: now(&self.frontends, &delta.frontends),
            tables: now(&self.tables, &delta.tables),
            backends: now(&self.backends, &delta.backends),
            endpoints: now(&self.endpoints, &delta.endpoints),
            reply_frontends: now(&self.reply_frontends, &delta.reply_frontends),
            services: delta
                .services
                .iter()
                .map(|(name, _)| (name.clone(), named(&self.services, name).to_vec()))
                .collect(),
            service_ids: now(&self.ids.services, &delta.service_ids),
            backend_ids: now(&self.ids.backends, &delta.backend_ids),
            specs: now(
                self.basis.as_ref().map_or(&no_specs, |b| &b.specs),
                &delta.specs,
            ),
        }
    }

    /// Whether the two plan the same kernel state, services and ids (whatever they were
    /// planned from).
    pub fn same_plan(&self, other: &DesiredState) -> bool {
        let DesiredState {
            frontends,
            tables,
            backends,
            endpoints,
            reply_frontends,
            services,
            ids,
            tunnel,
            basis: _,
        } = self;
        *frontends == other.frontends
            && *tables == other.tables
            && *backends == other.backends
            && *endpoints == other.endpoints
            && *reply_frontends == other.reply_frontends
            && *services == other.services
            && *ids == other.ids
            && *tunnel == other.tunnel
    }
}

/// Where the kernel services of `name` are in a plan's list (sorted by name).
fn named_range(services: &[PlannedService], name: &str) -> std::ops::Range<usize> {
    let start = services.partition_point(|s| s.name.as_str() < name);
    let len = services[start..]
        .iter()
        .take_while(|s| s.name == name)
        .count();
    start..start + len
}

fn named<'a>(services: &'a [PlannedService], name: &str) -> &'a [PlannedService] {
    &services[named_range(services, name)]
}

/// The names whose spec differs between `before` and `after` (added and removed ones too),
/// in name order.
fn changed_names<'a>(
    before: &'a BTreeMap<String, ServiceSpec>,
    after: &'a BTreeMap<String, ServiceSpec>,
) -> Vec<&'a str> {
    let mut changed = Vec::new();
    super::each_difference(before, after, |name, _| changed.push(name.as_str()));
    changed
}

/// `changed_names`, comparing only the names in `may_differ` when given (debug builds check
/// that no other name differs).
fn changed_among<'a>(
    before: &'a BTreeMap<String, ServiceSpec>,
    after: &'a BTreeMap<String, ServiceSpec>,
    may_differ: Option<&'a BTreeSet<String>>,
) -> Vec<&'a str> {
    let Some(names) = may_differ else {
        return changed_names(before, after);
    };
    let changed: Vec<&str> = names
        .iter()
        .filter(|name| before.get(*name) != after.get(*name))
        .map(String::as_str)
        .collect();
    debug_assert_eq!(
        changed,
        changed_names(before, after),
        "a change outside the services said to differ"
    );
    changed
}

/// A VIP's echo-request key: shared by every service on the VIP, owned by the first.
pub(super) fn is_icmp(key: &EndpointKey) -> bool {
    key.proto == proto::ICMP || key.proto == proto::ICMPV6
}

fn icmp_key(vip: IpAddr) -> EndpointKey {
    EndpointKey {
        addr: Addr::from(vip),
        port_be: 0,
        proto: if vip.is_ipv6() {
            proto::ICMPV6
        } else {
            proto::ICMP
        },
        _pad: 0,
    }
}

/// Pushes `(key, after)` for every key whose value `after` differs from `map`'s.
fn changes<K: Ord + Clone, V: PartialEq + Clone>(
    map: &BTreeMap<K, V>,
    after: impl IntoIterator<Item = (K, Option<V>)>,
    into: &mut Vec<(K, Option<V>)>,
) {
    for (key, value) in after {
        if map.get(&key) != value.as_ref() {
            into.push((key, value));
        }
    }
}

/// The changes to `running` that make it `file`'s plan, or `None` when the full plan is
/// needed to be sure (see the module's comment).
fn incremental(
    file: &ServiceFile,
    node: &NodeFacts,
    running: &DesiredState,
    may_differ: Option<&BTreeSet<String>>,
) -> Option<PlanDelta> {
    let basis = running.basis.as_ref()?;
    if basis.node != *node
        || TunnelPlan::of(file.mesh.as_ref(), Some(&running.tunnel)) != running.tunnel
    {
        return None;
    }
    // Plans list services in name order, which `named` relies on.
    if file.services.iter().any(|(name, spec)| *name != spec.name) {
        return None;
    }
    let changed = changed_among(&basis.specs, &file.services, may_differ);
    if changed.is_empty() {
        return Some(PlanDelta::default());
    }
    check_fullnat_ports(file).ok()?;
    // The changed services alone, planned with the running ids.
    let mut fresh = DesiredState {
        tunnel: running.tunnel.clone(),
        ..Default::default()
    };
    let mut pending = Pending::default();
    let mut service_ids = IdAllocator::new(Some(&running.ids.services), 0);
    let mut backend_ids =
        IdAllocator::with_taken(&running.ids.backends, running.ids.backends_taken(), 1);
    for name in &changed {
        if let Some(spec) = file.services.get(*name) {
            plan_spec(
                &mut fresh,
                &mut pending,
                spec,
                node,
                (&mut service_ids, &mut backend_ids),
            )
            .ok()?;
        }
    }
    let old: Vec<&PlannedService> = changed
        .iter()
        .flat_map(|name| named(&running.services, name))
        .collect();
    let mut delta = PlanDelta::default();
    let frontends_after = frontend_changes(running, basis, &changed, &old, &fresh)?;
    changes(
        &running.frontends,
        frontends_after.iter().map(|(k, v)| (*k, *v)),
        &mut delta.frontends,
    );
    let frontend_after = |key: &EndpointKey| match frontends_after.get(key) {
        Some(after) => *after,
        None => running.frontends.get(key).copied(),
    };
    id_and_table_changes(running, &old, &fresh, &pending, &mut delta)?;

    // Backend endpoints: how many backends use each, before and after.
    let mut old_refs: BTreeMap<EndpointKey, u32> = BTreeMap::new();
    for s in &old {
        for b in &s.backends {
            *old_refs.entry(endpoint(b.target, &s.mapping)).or_default() += 1;
        }
    }
    let mut new_refs: BTreeMap<EndpointKey, u32> = BTreeMap::new();
    for key in &pending.endpoints {
        *new_refs.entry(*key).or_default() += 1;
    }
    let touched: BTreeSet<EndpointKey> = old_refs.keys().chain(new_refs.keys()).copied().collect();
    let mut added_endpoints = 0;
    for key in &touched {
        let before = running.endpoints.get(key).copied();
        let count = i64::from(before.unwrap_or(0))
            - i64::from(old_refs.get(key).copied().unwrap_or(0))
            + i64::from(new_refs.get(key).copied().unwrap_or(0));
        // An endpoint no backend uses any more lingers with 0 (see `Pending::finish`).
        let count = u32::try_from(count).ok()?;
        added_endpoints += usize::from(before.is_none());
        if before != Some(count) {
            delta.endpoints.push((*key, Some(count)));
        }
    }
    // Lingering endpoints are dropped only when room runs out: the full plan decides which.
    if running.endpoints.len() + added_endpoints > MAX_BACKEND_ENDPOINTS as usize {
        return None;
    }

    // No backend may be a frontend (`check_no_loops`): the changed services' backends, and
    // frontends that changed under unchanged services' backends.
    for s in &fresh.services {
        for b in s.backends.iter().filter(|b| b.identity == b.target) {
            if frontend_after(&endpoint(b.target, &s.mapping))
                .is_some_and(|f| f.flags & service_flags::TUNNEL_ONLY == 0)
            {
                return None;
            }
        }
    }
    // How many backends of unchanged services use an endpoint (`running.endpoints` counts
    // every service's).
    let unchanged_refs = |key: &EndpointKey| {
        running
            .endpoints
            .get(key)
            .copied()
            .unwrap_or(0)
            .saturating_sub(old_refs.get(key).copied().unwrap_or(0))
    };
    for (key, after) in &delta.frontends {
        if unchanged_refs(key) > 0
            && after.is_some_and(|f| f.flags & service_flags::TUNNEL_ONLY == 0)
        {
            return None;
        }
    }

    let shared = touched.iter().any(|key| unchanged_refs(key) > 0);
    let reached = reached_touched(running, &changed, &fresh, &touched, shared);
    changes(
        &running.reply_frontends,
        touched
            .iter()
            .map(|key| (*key, reply_frontend(&frontend_after, key, reached.get(key)))),
        &mut delta.reply_frontends,
    );

    for name in &changed {
        let planned = named(&fresh.services, name);
        if planned != named(&running.services, name) {
            delta.services.push((name.to_string(), planned.to_vec()));
        }
        delta
            .specs
            .push((name.to_string(), file.services.get(*name).cloned()));
    }
    let services = running.services.len() - old.len() + fresh.services.len();
    check_delta_capacity(running, &delta, services).ok()?;
    Some(delta)
}

/// The frontends that reach the `touched` endpoints, from the services in plan order after
/// the change. An unchanged service reaches one only through a backend there (`shared`):
/// usually none does, and then the changed services alone are searched, not every service's
/// backends.
fn reached_touched<'a>(
    running: &'a DesiredState,
    changed: &[&str],
    fresh: &'a DesiredState,
    touched: &BTreeSet<EndpointKey>,
    shared: bool,
) -> Reached<'a> {
    if !shared {
        return reached(&fresh.services, |key| touched.contains(key));
    }
    let after = services_after(&running.services, changed, &fresh.services);
    // Addresses first: a few to compare against, before a search per backend.
    let mut touched_addrs: Vec<Addr> = touched.iter().map(|k| k.addr).collect();
    touched_addrs.dedup();
    reached(after.iter().copied(), |key| {
        touched_addrs.contains(&key.addr) && touched.contains(key)
    })
}

/// The frontend entries the changed services' old and new ones become (`None`: removed), or
/// `None` when a new one is held by an unchanged service (the full plan names the conflict).
fn frontend_changes(
    running: &DesiredState,
    basis: &Basis,
    changed: &[&str],
    old: &[&PlannedService],
    fresh: &DesiredState,
) -> Option<BTreeMap<EndpointKey, Option<Service>>> {
    let old_ids: BTreeSet<u32> = old.iter().map(|s| s.id).collect();
    let mut after: BTreeMap<EndpointKey, Option<Service>> = BTreeMap::new();
    let mut vips = BTreeSet::new();
    for s in old.iter().copied().chain(&fresh.services) {
        for f in &s.frontends {
            after.insert(endpoint(*f, &s.mapping), None);
        }
        vips.extend(s.vip);
    }
    for (key, value) in fresh.frontends.iter().filter(|(k, _)| !is_icmp(k)) {
        if running
            .frontends
            .get(key)
            .is_some_and(|held| !old_ids.contains(&held.id))
        {
            return None;
        }
        after.insert(*key, Some(*value));
    }
    // A VIP's echo requests go to its first kernel service in plan order, changed or not.
    for vip in vips {
        let key = icmp_key(vip);
        let fresh_owner = fresh
            .services
            .iter()
            .find(|s| s.vip == Some(vip))
            .map(|s| (s.name.as_str(), fresh.frontends.get(&key).copied()));
        let kept_owner = running
            .services
            .iter()
            .find(|s| s.vip == Some(vip) && changed.binary_search(&s.name.as_str()).is_err())
            .map(|s| {
                let spec = &basis.specs[&s.name];
                (s.name.as_str(), Some(service_value(spec, s.id)))
            });
        let owner = match (fresh_owner, kept_owner) {
            (Some(a), Some(b)) => Some(if a.0 < b.0 { a } else { b }),
            (a, b) => a.or(b),
        };
        after.insert(key, owner.and_then(|(_, value)| value));
    }
    Some(after)
}

/// Tables, backends and ids: the changed services' old entries removed, their new ones
/// written; `None` when a table is refused (the full plan says why).
fn id_and_table_changes(
    running: &DesiredState,
    old: &[&PlannedService],
    fresh: &DesiredState,
    pending: &Pending,
    delta: &mut PlanDelta,
) -> Option<()> {
    let mut tables: BTreeMap<u32, Option<Table>> = old.iter().map(|s| (s.id, None)).collect();
    for planned in &fresh.services {
        let spec = TableSpec {
            scheduler: planned.table_kind.0,
            maglev_table_size: planned.table_kind.1,
            backends: planned.backends.clone(),
        };
        let table = match running.tables.get(&planned.id) {
            Some(before) if **before == spec => std::sync::Arc::clone(before),
            _ => {
                spec.check().ok()?;
                std::sync::Arc::new(spec)
            }
        };
        tables.insert(planned.id, Some(table));
    }
    changes(&running.tables, tables, &mut delta.tables);

    let mut backends: BTreeMap<u32, Option<Backend>> = BTreeMap::new();
    let mut backend_ids: BTreeMap<BackendIdentity, Option<u32>> = BTreeMap::new();
    let mut service_ids: BTreeMap<ServiceIdentity, Option<u32>> = BTreeMap::new();
    for s in old {
        // Every kernel service has a frontend, of its family.
        let v6 = s.frontends.first()?.is_ipv6();
        let identity = (s.name.clone(), s.mapping, v6);
        if running.ids.services.get(&identity) != Some(&s.id) {
            return None;
        }
        service_ids.insert(identity, None);
        for b in &s.backends {
            backends.insert(b.id, None);
            backend_ids.insert((s.id, b.target), None);
        }
    }
    service_ids.extend(
        fresh
            .ids
            .services
            .iter()
            .map(|(k, id)| (k.clone(), Some(*id))),
    );
    // Two backends of one identity (which files refuse) are left to the full plan.
    let identities: BTreeSet<&BackendIdentity> =
        pending.backend_ids.iter().map(|(k, _)| k).collect();
    if identities.len() != pending.backend_ids.len() {
        return None;
    }
    backends.extend(pending.backends.iter().map(|(id, b)| (*id, Some(*b))));
    backend_ids.extend(pending.backend_ids.iter().map(|(k, id)| (*k, Some(*id))));
    changes(&running.backends, backends, &mut delta.backends);
    changes(&running.ids.backends, backend_ids, &mut delta.backend_ids);
    changes(&running.ids.services, service_ids, &mut delta.service_ids);
    Some(())
}

/// `running`'s services with those named in `changed` replaced by `fresh` ones, in plan
/// (name) order.
fn services_after<'a>(
    running: &'a [PlannedService],
    changed: &[&str],
    fresh: &'a [PlannedService],
) -> Vec<&'a PlannedService> {
    let mut after = Vec::with_capacity(running.len() + fresh.len());
    let mut fresh = fresh.iter().peekable();
    for s in running {
        while let Some(f) = fresh.next_if(|f| f.name < s.name) {
            after.push(f);
        }
        if changed.binary_search(&s.name.as_str()).is_ok() {
            while let Some(f) = fresh.next_if(|f| f.name == s.name) {
                after.push(f);
            }
        } else {
            after.push(s);
        }
    }
    after.extend(fresh);
    after
}

/// `plan_from`'s capacity checks, on the counts after `delta`.
fn check_delta_capacity(
    running: &DesiredState,
    delta: &PlanDelta,
    services: usize,
) -> Result<(), PlanError> {
    fn after<K: Ord, V, W>(map: &BTreeMap<K, V>, entries: &[(K, Option<W>)]) -> usize {
        let mut len = map.len();
        for (key, value) in entries {
            match (map.contains_key(key), value.is_some()) {
                (false, true) => len += 1,
                (true, false) => len -= 1,
                _ => {}
            }
        }
        len
    }
    check_capacity("services", services, MAX_SERVICES)?;
    check_capacity(
        "frontends",
        after(&running.frontends, &delta.frontends),
        MAX_FRONTENDS,
    )?;
    check_capacity(
        "backends",
        after(&running.backends, &delta.backends),
        MAX_BACKENDS - 1,
    )?;
    check_capacity(
        "backend endpoints",
        after(&running.endpoints, &delta.endpoints),
        MAX_BACKEND_ENDPOINTS,
    )
}

#[cfg(test)]
mod tests;
