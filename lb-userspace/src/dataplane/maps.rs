//! The maps beside the plan's changes (`changes`) and the tables (`tables`): the tunnel's
//! peers, and the counters, tables and flows read back.

use std::collections::BTreeMap;

use aya::maps::{Array, HashMap, IterableMap as _, MapData, MapError};
use lb_common::{
    maps::{
        Backend, EndpointKey, Flow, FlowKey, SLOTS_PER_ELEMENT, Service, SockCounters,
        TableElement, TrafficCounters, names,
    },
    stats::StatSlot,
};

use super::{Dataplane, DataplaneError, batch, conntrack_filter::ConntrackFilter};
use crate::plan::DesiredState;

pub(super) fn map_err(name: &'static str) -> impl Fn(MapError) -> DataplaneError {
    move |error| DataplaneError::Map { name, error }
}

/// Moves `FRONTEND_GEN` on, after a change to `FRONTENDS` has been written: every flow that
/// follows its own stamp instead of looking its frontend up checks it once more. Never 0:
/// that is the stamp of entries written by a version without stamps.
pub(crate) fn bump_frontend_gen(map: &mut aya::maps::Map) -> Result<(), DataplaneError> {
    let mut generation: Array<&mut MapData, u32> =
        Array::try_from(map).map_err(map_err(names::FRONTEND_GEN))?;
    let now = generation
        .get(&0, 0)
        .map_err(map_err(names::FRONTEND_GEN))?;
    let next = now.wrapping_add(1).max(1);
    generation
        .set(0, next, 0)
        .map_err(map_err(names::FRONTEND_GEN))
}

/// Counters summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub global: BTreeMap<&'static str, u64>,
    pub services: BTreeMap<u32, TrafficTotals>,
    pub backends: BTreeMap<u32, TrafficTotals>,
    /// Socket-level path, by service id.
    pub sockets: BTreeMap<u32, SocketTotals>,
}

/// A service's socket-level counters (lb-common's `SockCounters`, summed over CPUs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SocketTotals {
    /// `connect` calls to a frontend sent to a backend (TCP, and connected UDP).
    pub connections: u64,
    /// Unconnected UDP datagrams to a frontend sent to a backend.
    pub datagrams: u64,
    /// `connect` or `sendmsg` refused (ECONNREFUSED): the service had no usable backend.
    pub no_backend: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TrafficTotals {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

impl StatsSnapshot {
    pub fn get(&self, slot: StatSlot) -> u64 {
        self.global.get(slot.label()).copied().unwrap_or(0)
    }
}

impl Dataplane {
    /// Makes the tunnel maps hold exactly `tunnel` (this node's address, the peers').
    pub(super) fn write_tunnel(
        &mut self,
        plan: &crate::plan::TunnelPlan,
    ) -> Result<(), DataplaneError> {
        let [peers, index] = self
            .ebpf_mut()
            .maps_disjoint_mut([names::TUNNEL_PEERS, names::TUNNEL_PEER_INDEX]);
        let loaded = "checked at load";
        let mut peers: Array<&mut MapData, u32> =
            Array::try_from(peers.expect(loaded)).map_err(map_err(names::TUNNEL_PEERS))?;
        let mut index: HashMap<&mut MapData, u32, u32> =
            HashMap::try_from(index.expect(loaded)).map_err(map_err(names::TUNNEL_PEER_INDEX))?;
        // Network byte order, as the kernel reads the addresses from packets.
        let raw = |a: std::net::Ipv4Addr| u32::from_ne_bytes(a.octets());
        let mut wanted = vec![0u32; lb_common::maps::tunnel::MAX_PEERS as usize];
        wanted[lb_common::maps::tunnel::SELF as usize] = plan.own.map_or(0, raw);
        wanted[lb_common::maps::tunnel::NEXT_INDEX_SLOT as usize] = u32::from(plan.next);
        for (i, addr) in &plan.peers {
            wanted[usize::from(*i)] = raw(*addr);
        }
        for (slot, value) in wanted.iter().enumerate() {
            let slot = slot as u32;
            if peers.get(&slot, 0).ok() != Some(*value) {
                peers
                    .set(slot, *value, 0)
                    .map_err(map_err(names::TUNNEL_PEERS))?;
            }
        }
        let present: Vec<u32> = index.keys().filter_map(Result::ok).collect();
        for addr in present {
            if !plan.peers.values().any(|p| raw(*p) == addr) {
                index
                    .remove(&addr)
                    .map_err(map_err(names::TUNNEL_PEER_INDEX))?;
            }
        }
        for (i, addr) in &plan.peers {
            index
                .insert(raw(*addr), u32::from(*i), 0)
                .map_err(map_err(names::TUNNEL_PEER_INDEX))?;
        }
        Ok(())
    }

    /// All counters, summed over CPUs.
    pub fn stats(&self) -> Result<StatsSnapshot, DataplaneError> {
        global_stats(
            self.ebpf()
                .map(names::GLOBAL_STATS)
                .expect("checked at load"),
            possible_cpus()?,
        )
    }

    /// Slot `slot` of service `service_id`'s selection table as the kernel holds it (slot
    /// `TABLE_LEN_SLOT` is the table's length). `None`: no table, or no such slot.
    pub fn table_slot(&self, service_id: u32, slot: u32) -> Result<Option<u32>, DataplaneError> {
        let tables: aya::maps::ArrayOfMaps<&MapData, Array<MapData, TableElement>> =
            aya::maps::ArrayOfMaps::try_from(
                self.ebpf()
                    .map(names::SERVICE_TABLES)
                    .expect("checked at load"),
            )
            .map_err(map_err(names::SERVICE_TABLES))?;
        let table = match tables.get(&service_id, 0) {
            Ok(table) => table,
            Err(MapError::KeyNotFound) => return Ok(None),
            Err(error) => return Err(map_err(names::SERVICE_TABLES)(error)),
        };
        match table.get(&(slot / SLOTS_PER_ELEMENT), 0) {
            Ok(element) => Ok(Some(element[(slot % SLOTS_PER_ELEMENT) as usize])),
            Err(MapError::OutOfBounds { .. }) => Ok(None),
            Err(error) => Err(map_err(names::SERVICE_TABLES)(error)),
        }
    }

    /// The kernel's id of service `service_id`'s selection table (a map of its own); `None`
    /// without one. A table rewritten where it is keeps its id; a swapped-in one has another.
    pub fn table_map_id(&self, service_id: u32) -> Result<Option<u32>, DataplaneError> {
        let outer = outer_fd(
            self.ebpf()
                .map(names::SERVICE_TABLES)
                .expect("checked at load"),
        )?;
        batch::inner_map_id(outer, service_id).map_err(|e| DataplaneError::MapValue {
            name: names::SERVICE_TABLES,
            message: format!("reading the table of service {service_id}: {e}"),
        })
    }

    /// The connection-table entry of `key`, if tracked.
    pub fn tracked_flow(&self, key: &FlowKey) -> Result<Option<Flow>, DataplaneError> {
        // Confirmed first; a flow the client has not confirmed yet waits in `PENDING`.
        for name in [names::CONNTRACK, names::PENDING] {
            let table: HashMap<&MapData, FlowKey, Flow> =
                HashMap::try_from(self.ebpf().map(name).expect("checked at load"))
                    .map_err(map_err(name))?;
            match table.get(key, 0) {
                Ok(flow) => return Ok(Some(flow)),
                Err(MapError::KeyNotFound) => {}
                Err(error) => return Err(DataplaneError::Map { name, error }),
            }
        }
        Ok(None)
    }

    /// The connection table itself, writable: for tools that must set up or age a flow as
    /// the kernel would (the test kit's route-cache expiry). lbd never writes it.
    pub fn connection_table_mut(
        &mut self,
    ) -> Result<HashMap<&mut MapData, FlowKey, Flow>, DataplaneError> {
        self.flow_table_mut(names::CONNTRACK)
    }

    /// The table of unconfirmed flows (`PENDING`), writable: for the same tools (the test
    /// kit's aging of a flow still waiting for its handshake). lbd never writes it.
    pub fn pending_table_mut(
        &mut self,
    ) -> Result<HashMap<&mut MapData, FlowKey, Flow>, DataplaneError> {
        self.flow_table_mut(names::PENDING)
    }

    fn flow_table_mut(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, FlowKey, Flow>, DataplaneError> {
        HashMap::try_from(self.ebpf_mut().map_mut(name).expect("checked at load"))
            .map_err(map_err(name))
    }

    /// The frontend table itself, writable: for tools that must write a frontend around
    /// `lbd`, which marks each in `FORWARD_FILTER` first (the test kit's check that the
    /// program looks up only marked ones). lbd writes it only through `apply`.
    pub fn frontend_table_mut(
        &mut self,
    ) -> Result<HashMap<&mut MapData, EndpointKey, Service>, DataplaneError> {
        HashMap::try_from(
            self.ebpf_mut()
                .map_mut(names::FRONTENDS)
                .expect("checked at load"),
        )
        .map_err(map_err(names::FRONTENDS))
    }

    /// Handles on the connection table and the counters of their own, to read them without
    /// holding whatever holds the `Dataplane` (walks and per-id reads take a syscall each).
    pub fn readers(&self) -> Result<MapReaders, DataplaneError> {
        let own = |name: &'static str| -> Result<aya::maps::Map, DataplaneError> {
            let map = self.ebpf().map(name).expect("checked at load");
            let (data, wrap): (&MapData, fn(MapData) -> aya::maps::Map) = match map {
                aya::maps::Map::LruHashMap(d) => (d, aya::maps::Map::LruHashMap),
                aya::maps::Map::HashMap(d) => (d, aya::maps::Map::HashMap),
                aya::maps::Map::PerCpuArray(d) => (d, aya::maps::Map::PerCpuArray),
                _ => {
                    return Err(DataplaneError::MapValue {
                        name,
                        message: "unexpected map type: lb-ebpf and lb-userspace are out of step"
                            .into(),
                    });
                }
            };
            let id = data.info().map_err(map_err(name))?.id();
            Ok(wrap(MapData::from_id(id).map_err(map_err(name))?))
        };
        Ok(MapReaders {
            conntrack: own(names::CONNTRACK)?,
            filter: self.conntrack_filter.clone(),
            global: own(names::GLOBAL_STATS)?,
            services: own(names::SERVICE_STATS)?,
            backends: own(names::BACKEND_STATS)?,
            sockets: own(names::SOCK_STATS)?,
        })
    }

    /// Connection-table occupancy: (entries, capacity). Walks the table in batches, about a
    /// third of a second per million entries: for reports, not for the fast path.
    pub fn conntrack_occupancy(&self) -> Result<(u64, u32), DataplaneError> {
        let walk = walk_conntrack(
            self.ebpf().map(names::CONNTRACK).expect("checked at load"),
            None,
        )?;
        Ok((walk.entries, walk.capacity))
    }

    /// Rebuilds `CONNTRACK_FILTER` from a walk of the connection table (as `lbd` does with
    /// every occupancy count, see [`MapReaders::walk_conntrack`]); answers the walk.
    pub fn rebuild_conntrack_filter(&self) -> Result<ConntrackWalk, DataplaneError> {
        walk_conntrack(
            self.ebpf().map(names::CONNTRACK).expect("checked at load"),
            Some(&self.conntrack_filter),
        )
    }

    /// Traffic totals of the given service and backend ids.
    pub fn traffic(
        &self,
        service_ids: impl IntoIterator<Item = u32>,
        backend_ids: impl IntoIterator<Item = u32>,
    ) -> Result<StatsSnapshot, DataplaneError> {
        let ebpf = self.ebpf();
        let map = |name| ebpf.map(name).expect("checked at load");
        traffic(
            [
                map(names::GLOBAL_STATS),
                map(names::SERVICE_STATS),
                map(names::BACKEND_STATS),
                map(names::SOCK_STATS),
            ],
            service_ids,
            backend_ids,
        )
    }
}

fn global_stats(map: &aya::maps::Map, cpus: usize) -> Result<StatsSnapshot, DataplaneError> {
    let slots: Vec<u32> = StatSlot::ALL.iter().map(|slot| *slot as u32).collect();
    let mut sums = BTreeMap::new();
    sum_per_cpu(
        map,
        names::GLOBAL_STATS,
        &slots,
        cpus,
        |values: &[u64]| values.iter().sum::<u64>(),
        &mut sums,
    )?;
    let mut snapshot = StatsSnapshot::default();
    for slot in StatSlot::ALL {
        snapshot.global.insert(
            slot.label(),
            sums.get(&(*slot as u32)).copied().unwrap_or(0),
        );
    }
    Ok(snapshot)
}

/// The CPUs the kernel keeps per-CPU values for.
fn possible_cpus() -> Result<usize, DataplaneError> {
    aya::util::nr_cpus().map_err(|(what, e)| DataplaneError::MapValue {
        name: names::GLOBAL_STATS,
        message: format!("counting the CPUs ({what}): {e}"),
    })
}

/// For each of `ids`, its values in the per-CPU array `map` summed by `sum`, into `out`. The
/// array is read in batches from key 0 up to the largest id (ids are handed out smallest
/// first, so that is about as many keys as ids).
fn sum_per_cpu<V: aya::Pod + Default, T>(
    map: &aya::maps::Map,
    name: &'static str,
    ids: &[u32],
    cpus: usize,
    sum: impl Fn(&[V]) -> T,
    out: &mut BTreeMap<u32, T>,
) -> Result<(), DataplaneError> {
    let aya::maps::Map::PerCpuArray(data) = map else {
        return Err(DataplaneError::MapValue {
            name,
            message: "not a per-CPU array: lb-ebpf and lb-userspace are out of step".into(),
        });
    };
    let count = ids.iter().max().map_or(0, |max| max + 1);
    let mut wanted = vec![false; count as usize];
    for id in ids {
        wanted[*id as usize] = true;
    }
    batch::each_percpu_value(data, count, cpus, |key, values: &[V]| {
        if wanted[key as usize] {
            out.insert(key, sum(values));
        }
    })
    .map_err(|e| DataplaneError::MapValue {
        name,
        message: format!("reading the counters of ids 0 to {count}: {e}"),
    })
}

/// `[global, service, backend, socket]` counter maps.
fn traffic(
    [global, services, backends, sockets]: [&aya::maps::Map; 4],
    service_ids: impl IntoIterator<Item = u32>,
    backend_ids: impl IntoIterator<Item = u32>,
) -> Result<StatsSnapshot, DataplaneError> {
    let cpus = possible_cpus()?;
    let mut snapshot = global_stats(global, cpus)?;
    let service_ids: Vec<u32> = service_ids.into_iter().collect();
    let socket_totals = |values: &[SockCounters]| {
        let mut totals = SocketTotals::default();
        for c in values {
            totals.connections += c.connections;
            totals.datagrams += c.datagrams;
            totals.no_backend += c.no_backend;
        }
        totals
    };
    sum_per_cpu(
        sockets,
        names::SOCK_STATS,
        &service_ids,
        cpus,
        socket_totals,
        &mut snapshot.sockets,
    )?;
    let traffic_totals = |values: &[TrafficCounters]| {
        let mut totals = TrafficTotals::default();
        for c in values {
            totals.packets += c.packets;
            totals.bytes += c.bytes;
            totals.new_flows += c.new_flows;
        }
        totals
    };
    let backend_ids: Vec<u32> = backend_ids.into_iter().collect();
    sum_per_cpu(
        services,
        names::SERVICE_STATS,
        &service_ids,
        cpus,
        traffic_totals,
        &mut snapshot.services,
    )?;
    sum_per_cpu(
        backends,
        names::BACKEND_STATS,
        &backend_ids,
        cpus,
        traffic_totals,
        &mut snapshot.backends,
    )?;
    Ok(snapshot)
}

/// The kernel's frontends, and its in-use backends by id.
pub type KernelEntries = (BTreeMap<EndpointKey, Service>, Vec<(u32, Backend)>);

impl Dataplane {
    /// The kernel's frontends and in-use backends (for recovering ids, see
    /// `plan::Ids::recover`).
    pub fn kernel_entries(&self) -> Result<KernelEntries, DataplaneError> {
        let frontends: HashMap<&MapData, EndpointKey, Service> =
            HashMap::try_from(self.ebpf().map(names::FRONTENDS).expect("checked at load"))
                .map_err(map_err(names::FRONTENDS))?;
        let frontends = frontends.iter().filter_map(Result::ok).collect();
        Ok((frontends, self.backends_in_use()?))
    }

    /// The kernel's backend endpoints (`BACKEND_ENDPOINTS`, with their counts) that a tracked
    /// flow's reply entry still names: those whose replies must stay translated. Both tables
    /// and the endpoints read in batches.
    pub fn endpoints_with_replies(&self) -> Result<BTreeMap<EndpointKey, u32>, DataplaneError> {
        let mut replying = std::collections::BTreeSet::new();
        for name in [names::CONNTRACK, names::PENDING] {
            let table: HashMap<&MapData, FlowKey, Flow> =
                HashMap::try_from(self.ebpf().map(name).expect("checked at load"))
                    .map_err(map_err(name))?;
            batch::each_entry(table.map(), name, |key: FlowKey, flow: Flow| {
                if flow.kind == lb_common::maps::flow_kind::REPLY {
                    replying.insert(EndpointKey::new(key.src, key.sport_be, key.proto));
                }
            })?;
        }
        let name = names::BACKEND_ENDPOINTS;
        let map: HashMap<&MapData, EndpointKey, u32> =
            HashMap::try_from(self.ebpf().map(name).expect("checked at load"))
                .map_err(map_err(name))?;
        let mut endpoints = BTreeMap::new();
        batch::each_entry(map.map(), name, |key: EndpointKey, count: u32| {
            if replying.contains(&key) {
                endpoints.insert(key, count);
            }
        })?;
        Ok(endpoints)
    }

    /// The mesh tunnel's addresses as the kernel holds them (`TUNNEL_PEERS`): what a previous
    /// `lbd` indexed its peers by, which its tracked flows name.
    pub fn tunnel_plan(&self) -> Result<crate::plan::TunnelPlan, DataplaneError> {
        let name = names::TUNNEL_PEERS;
        let peers: Array<&MapData, u32> =
            Array::try_from(self.ebpf().map(name).expect("checked at load"))
                .map_err(map_err(name))?;
        let addr = |raw: u32| std::net::Ipv4Addr::from(raw.to_ne_bytes());
        let mut plan = crate::plan::TunnelPlan::default();
        let mut kept_next = None;
        for slot in 0..lb_common::maps::tunnel::MAX_PEERS {
            let raw = peers.get(&slot, 0).map_err(map_err(name))?;
            if raw == 0 {
                continue;
            }
            match slot {
                lb_common::maps::tunnel::SELF => plan.own = Some(addr(raw)),
                lb_common::maps::tunnel::NEXT_INDEX_SLOT => {
                    kept_next = u8::try_from(raw).ok().filter(|i| (1..=254).contains(i));
                }
                _ => {
                    if let Ok(index) = u8::try_from(slot) {
                        plan.peers.insert(index, addr(raw));
                    }
                }
            }
        }
        // Maps pinned by a version that did not keep where its search stood: after its
        // highest index.
        plan.next = kept_next.unwrap_or_else(|| {
            plan.peers
                .keys()
                .max()
                .map_or(1, |&i| crate::plan::TunnelPlan::after(i))
        });
        Ok(plan)
    }

    /// The `BACKENDS` slots marked in use, by id: every slot read in batches.
    fn backends_in_use(&self) -> Result<Vec<(u32, Backend)>, DataplaneError> {
        let backends: Array<&MapData, Backend> =
            Array::try_from(self.ebpf().map(names::BACKENDS).expect("checked at load"))
                .map_err(map_err(names::BACKENDS))?;
        let mut in_use = Vec::new();
        batch::each_entry(
            backends.map(),
            names::BACKENDS,
            |id: u32, backend: Backend| {
                if backend.flags & lb_common::maps::backend_flags::IN_USE != 0 {
                    in_use.push((id, backend));
                }
            },
        )?;
        Ok(in_use)
    }
}

/// Removes the keys `keep` refuses; returns how many.
fn remove_unlisted<V: aya::Pod>(
    map: &mut HashMap<&mut MapData, EndpointKey, V>,
    name: &'static str,
    keep: impl Fn(&EndpointKey) -> bool,
) -> Result<usize, DataplaneError> {
    let stale: Vec<EndpointKey> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !keep(k))
        .collect();
    for key in &stale {
        map.remove(key).map_err(map_err(name))?;
    }
    Ok(stale.len())
}

/// See [`Dataplane::readers`].
pub struct MapReaders {
    conntrack: aya::maps::Map,
    filter: std::sync::Arc<ConntrackFilter>,
    global: aya::maps::Map,
    services: aya::maps::Map,
    backends: aya::maps::Map,
    sockets: aya::maps::Map,
}

impl MapReaders {
    /// Walks the connection table: its occupancy, and `CONNTRACK_FILTER` rebuilt from the
    /// forward keys it holds (one walk for both; this clears the bits of flows that are gone).
    pub fn walk_conntrack(&self) -> Result<ConntrackWalk, DataplaneError> {
        walk_conntrack(&self.conntrack, Some(&self.filter))
    }

    /// See [`Dataplane::traffic`].
    pub fn traffic(
        &self,
        service_ids: impl IntoIterator<Item = u32>,
        backend_ids: impl IntoIterator<Item = u32>,
    ) -> Result<StatsSnapshot, DataplaneError> {
        traffic(
            [&self.global, &self.services, &self.backends, &self.sockets],
            service_ids,
            backend_ids,
        )
    }

    /// See [`Dataplane::sample_flows`].
    pub fn sample_flows(
        &self,
        limit: usize,
        services: Option<&[u32]>,
    ) -> Result<Vec<(FlowKey, Flow)>, DataplaneError> {
        sample_flows(&self.conntrack, limit, services)
    }
}

/// What a walk of the connection table found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConntrackWalk {
    pub entries: u64,
    pub capacity: u32,
    /// Forward keys set in the rebuilt `CONNTRACK_FILTER` half (0 when not rebuilt).
    pub forward_keys: u64,
}

/// Walks `CONNTRACK` in batches: its entries, and with `filter` that filter rebuilt from them.
fn walk_conntrack(
    map: &aya::maps::Map,
    filter: Option<&ConntrackFilter>,
) -> Result<ConntrackWalk, DataplaneError> {
    let table: HashMap<&MapData, FlowKey, Flow> =
        HashMap::try_from(map).map_err(map_err(names::CONNTRACK))?;
    let capacity = table_capacity(map);
    let mut rebuild = filter.map(ConntrackFilter::rebuild);
    let entries = batch::each_entry(table.map(), names::CONNTRACK, |key: FlowKey, flow: Flow| {
        if let Some(rebuild) = &mut rebuild {
            rebuild.note(&key, &flow);
        }
    })?;
    Ok(ConntrackWalk {
        entries,
        capacity,
        forward_keys: rebuild.map_or(0, super::conntrack_filter::Rebuild::finish),
    })
}

fn table_capacity(map: &aya::maps::Map) -> u32 {
    match map {
        aya::maps::Map::LruHashMap(data) | aya::maps::Map::HashMap(data) => {
            data.info().map(|i| i.max_entries()).unwrap_or(0)
        }
        _ => 0,
    }
}

/// The descriptor of `SERVICE_TABLES`, the array of tables.
pub(super) fn outer_fd(tables: &aya::maps::Map) -> Result<i32, DataplaneError> {
    match tables {
        aya::maps::Map::ArrayOfMaps(data) => {
            use std::os::fd::{AsFd as _, AsRawFd as _};
            Ok(data.fd().as_fd().as_raw_fd())
        }
        _ => Err(DataplaneError::MapValue {
            name: names::SERVICE_TABLES,
            message: "not an array of maps: lb-ebpf and lb-userspace are out of step".into(),
        }),
    }
}

impl Dataplane {
    /// Removes entries `desired` does not have: what a previous `lbd` left that no record
    /// explains (adopting pinned maps without its state file). That includes backends marked in
    /// use that `desired` does not use (removed while no `lbd` ran): tracked flows name them
    /// by id, and only a cleared slot makes their next packets move or end as the service's
    /// `on_backend_removal` says, as a live removal does. Frontends and endpoints go first, in
    /// the order a live change removes them.
    pub fn prune(&mut self, desired: &DesiredState) -> Result<usize, DataplaneError> {
        let [frontends, endpoints, frontend_gen] = self.ebpf_mut().maps_disjoint_mut([
            names::FRONTENDS,
            names::BACKEND_ENDPOINTS,
            names::FRONTEND_GEN,
        ]);
        let loaded = "checked at load";
        let mut frontends: HashMap<&mut MapData, EndpointKey, Service> =
            HashMap::try_from(frontends.expect(loaded)).map_err(map_err(names::FRONTENDS))?;
        let mut endpoints: HashMap<&mut MapData, EndpointKey, u32> =
            HashMap::try_from(endpoints.expect(loaded))
                .map_err(map_err(names::BACKEND_ENDPOINTS))?;
        let removed_frontends = remove_unlisted(&mut frontends, names::FRONTENDS, |k| {
            desired.frontends.contains_key(k)
        })?;
        if removed_frontends > 0 {
            bump_frontend_gen(frontend_gen.expect(loaded))?;
        }
        let removed_endpoints = remove_unlisted(&mut endpoints, names::BACKEND_ENDPOINTS, |k| {
            desired.endpoints.contains_key(k)
        })?;
        let removed_replies = self.prune_reply_frontends(desired)?;
        Ok(removed_frontends
            + removed_endpoints
            + removed_replies
            + self.prune_backends(desired)?)
    }

    /// Zeroes the traffic counters of kernel services `services` and backends `backends`:
    /// ids a plan gives out fresh, before any entry names them, so that an id's new holder
    /// does not start with its last holder's packets, bytes and flows (nor with what flows
    /// kept on that removed holder added since).
    pub fn zero_counters(
        &mut self,
        services: &[u32],
        backends: &[u32],
    ) -> Result<(), DataplaneError> {
        if services.is_empty() && backends.is_empty() {
            return Ok(());
        }
        let cpus = possible_cpus()?;
        let ebpf = self.ebpf();
        let per_cpu = |name: &'static str| match ebpf.map(name).expect("checked at load") {
            aya::maps::Map::PerCpuArray(data) => Ok(data),
            _ => Err(DataplaneError::MapValue {
                name,
                message: "not a per-CPU array: lb-ebpf and lb-userspace are out of step".into(),
            }),
        };
        for (name, ids) in [
            (names::SERVICE_STATS, services),
            (names::BACKEND_STATS, backends),
        ] {
            batch::zero_percpu::<TrafficCounters>(per_cpu(name)?, name, ids, cpus)?;
        }
        batch::zero_percpu::<SockCounters>(
            per_cpu(names::SOCK_STATS)?,
            names::SOCK_STATS,
            services,
            cpus,
        )
    }

    /// Clears the `BACKENDS` slots in use that `desired` does not use (see `prune`), once no
    /// program run that may have read them from a table is in flight.
    fn prune_backends(&mut self, desired: &DesiredState) -> Result<usize, DataplaneError> {
        let stale: Vec<u32> = self
            .backends_in_use()?
            .into_iter()
            .map(|(id, _)| id)
            .filter(|id| !desired.backends.contains_key(id))
            .collect();
        if stale.is_empty() {
            return Ok(0);
        }
        // An adopting start rewrote the tables in place: a packet may still be reading an old
        // slot that names a stale backend. A live change swaps its tables instead, which
        // waits the same way.
        super::grace::wait_for_programs_in_flight();
        let map = self
            .ebpf_mut()
            .map_mut(names::BACKENDS)
            .expect("checked at load");
        let backends: Array<&mut MapData, Backend> =
            Array::try_from(map).map_err(map_err(names::BACKENDS))?;
        batch::update(
            backends.map(),
            names::BACKENDS,
            &stale,
            &vec![Backend::default(); stale.len()],
        )?;
        Ok(stale.len())
    }

    /// Up to `limit` forward entries of the connection table (the first found: a sample, not
    /// an order), optionally only those of the given kernel services.
    pub fn sample_flows(
        &self,
        limit: usize,
        services: Option<&[u32]>,
    ) -> Result<Vec<(FlowKey, Flow)>, DataplaneError> {
        sample_flows(
            self.ebpf().map(names::CONNTRACK).expect("checked at load"),
            limit,
            services,
        )
    }
}

fn sample_flows(
    map: &aya::maps::Map,
    limit: usize,
    services: Option<&[u32]>,
) -> Result<Vec<(FlowKey, Flow)>, DataplaneError> {
    let table: HashMap<&MapData, FlowKey, Flow> =
        HashMap::try_from(map).map_err(map_err(names::CONNTRACK))?;
    let mut out = Vec::new();
    for entry in table.iter() {
        // An entry evicted while we walk ends the walk early at worst.
        let Ok((key, flow)) = entry else { break };
        if flow.kind != lb_common::maps::flow_kind::FORWARD {
            continue;
        }
        if services.is_some_and(|ids| !ids.contains(&flow.service_id)) {
            continue;
        }
        out.push((key, flow));
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}
