//! Kernel ids that survive replans: a service and a backend keep their ids from one plan to
//! the next, and are recovered from the kernel's maps when no record survives.

use super::*;

/// Kernel ids by identity. A service (name, port mapping, family) and a backend (service,
/// target) keep their ids from one plan to the next: a reload then rewrites only what
/// changed, and tracked flows keep pointing at the right backend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ids {
    pub(super) services: BTreeMap<ServiceIdentity, u32>,
    pub(super) backends: BTreeMap<BackendIdentity, u32>,
    /// Which backend ids `backends` holds, by id: built once, then kept up to date by
    /// `DesiredState::patch`, so a replan that adds a backend does not walk 160,000 ids.
    backends_taken: TakenIds,
}

/// The ids a map of ids holds, by id (`taken_ids`), built when first asked for. Derived from
/// the map, so it takes no part in comparing or printing.
#[derive(Clone, Default)]
struct TakenIds(std::sync::OnceLock<Vec<bool>>);

impl PartialEq for TakenIds {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for TakenIds {}

impl std::fmt::Debug for TakenIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TakenIds")
    }
}

/// By id: whether `ids` holds it. Sized in one pass first: growing it id by id took longer
/// than the rest of a replan.
fn taken_ids<'a>(ids: impl Iterator<Item = &'a u32> + Clone) -> Vec<bool> {
    let mut taken = vec![false; ids.clone().max().map_or(0, |max| *max as usize + 1)];
    for id in ids {
        taken[*id as usize] = true;
    }
    taken
}

impl Ids {
    /// The service and backend ids `self` holds that `earlier` does not: given out fresh.
    pub fn fresh_since(&self, earlier: &Ids) -> (Vec<u32>, Vec<u32>) {
        fn fresh<K>(now: &BTreeMap<K, u32>, before: &BTreeMap<K, u32>) -> Vec<u32> {
            let held: std::collections::HashSet<u32> = before.values().copied().collect();
            let mut ids: Vec<u32> = now
                .values()
                .copied()
                .filter(|id| !held.contains(id))
                .collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        }
        (
            fresh(&self.services, &earlier.services),
            fresh(&self.backends, &earlier.backends),
        )
    }

    /// Which backend ids are held, by id (see `backends_taken`).
    pub(super) fn backends_taken(&self) -> &[bool] {
        self.backends_taken
            .0
            .get_or_init(|| taken_ids(self.backends.values()))
    }

    /// Applies changes to the backend ids (`None`: the identity's id is freed), keeping
    /// `backends_taken` up to date if it was built.
    pub(super) fn change_backends(&mut self, changes: Vec<(BackendIdentity, Option<u32>)>) {
        let mut taken = self.backends_taken.0.take();
        for (identity, id) in changes {
            let before = match id {
                Some(id) => self.backends.insert(identity, id),
                None => self.backends.remove(&identity),
            };
            if let Some(taken) = taken.as_mut() {
                // Ids are unique within a plan: the one freed is no one else's.
                if let Some(before) = before {
                    taken[before as usize] = false;
                }
                if let Some(id) = id {
                    let id = id as usize;
                    if id >= taken.len() {
                        taken.resize(id + 1, false);
                    }
                    taken[id] = true;
                }
            }
        }
        if let Some(taken) = taken {
            let _ = self.backends_taken.0.set(taken);
        }
    }
}

/// Ids as a list, for the state directory (JSON maps need string keys).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredIds {
    services: Vec<(String, String, bool, u32)>,
    backends: Vec<(u32, SocketAddr, u32)>,
}

impl serde::Serialize for Ids {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        StoredIds {
            services: self
                .services
                .iter()
                .map(|((name, mapping, v6), id)| (name.clone(), mapping.to_string(), *v6, *id))
                .collect(),
            backends: self
                .backends
                .iter()
                .map(|((service, target), id)| (*service, *target, *id))
                .collect(),
        }
        .serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for Ids {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let stored = StoredIds::deserialize(deserializer)?;
        let services = stored
            .services
            .into_iter()
            .map(|(name, mapping, v6, id)| {
                let mapping: PortMapping = mapping.parse().map_err(serde::de::Error::custom)?;
                Ok(((name, mapping, v6), id))
            })
            .collect::<Result<_, D::Error>>()?;
        let backends = stored
            .backends
            .into_iter()
            .map(|(service, target, id)| ((service, target), id))
            .collect();
        Ok(Ids {
            services,
            backends,
            backends_taken: TakenIds::default(),
        })
    }
}

/// A kernel service: (service name, port mapping, IPv6?).
pub(super) type ServiceIdentity = (String, PortMapping, bool);
/// A backend: (kernel service id, target address and port).
pub(super) type BackendIdentity = (u32, SocketAddr);

/// Hands out ids: an identity's previous id, else the smallest id that neither plan uses
/// (ids just freed are not reused at once, so counters of finished flows stay with theirs).
pub(super) struct IdAllocator<'a, K: Ord> {
    previous: Option<&'a BTreeMap<K, u32>>,
    /// By id: whether either plan uses it. Ids are dense (they index kernel arrays), so a
    /// vector, not a set: a plan of 160,000 backends builds it in a pass, and only when a new
    /// id is first asked for (a replan of one service usually keeps every id).
    taken: Option<Vec<bool>>,
    next: u32,
}

impl<'a, K: Ord + Clone> IdAllocator<'a, K> {
    pub(super) fn new(previous: Option<&'a BTreeMap<K, u32>>, first: u32) -> Self {
        Self {
            previous,
            taken: None,
            next: first,
        }
    }

    /// `new`, given which ids `previous` holds, by id (as `Ids::backends_taken` keeps them).
    pub(super) fn with_taken(previous: &'a BTreeMap<K, u32>, taken: &[bool], first: u32) -> Self {
        // Trailing ids freed since it was built stay in the vector, as not taken.
        let held = |v: &[bool]| v.iter().rposition(|t| *t).map_or(0, |last| last + 1);
        debug_assert!(
            taken_ids(previous.values())[..] == taken[..held(taken)],
            "the ids kept as taken are the ids held"
        );
        Self {
            previous: Some(previous),
            taken: Some(taken.to_vec()),
            next: first,
        }
    }

    pub(super) fn id(&mut self, identity: &K) -> u32 {
        if let Some(id) = self.previous.and_then(|p| p.get(identity)) {
            return *id;
        }
        let previous = self.previous;
        let taken = self
            .taken
            .get_or_insert_with(|| taken_ids(previous.into_iter().flat_map(|p| p.values())));
        while taken.get(self.next as usize) == Some(&true) {
            self.next += 1;
        }
        let id = self.next as usize;
        if id >= taken.len() {
            taken.resize(id + 1, false);
        }
        taken[id] = true;
        self.next
    }
}

impl Ids {
    /// The ids a dataplane holds, recovered from its maps when no record of them survives:
    /// `fresh` is a plan of the same configuration (with any ids), `frontends` and `backends`
    /// are the kernel's entries. A service keeps the id its frontends have in the kernel; a
    /// backend keeps the id of the kernel entry with its service and target. What is not
    /// found gets a new id in the next plan.
    pub fn recover(
        fresh: &DesiredState,
        frontends: &BTreeMap<EndpointKey, Service>,
        backends: &[(u32, Backend)],
    ) -> Ids {
        let mut ids = Ids::default();
        let mut old_service_of_new = BTreeMap::new();
        for (identity, new_id) in &fresh.ids.services {
            // Not by a VIP's echo key: every service on the VIP shares it, and its owner
            // can change with the services (a new one that sorts first).
            let old = fresh
                .frontends
                .iter()
                .filter(|(key, v)| v.id == *new_id && !super::incremental::is_icmp(key))
                .find_map(|(key, _)| frontends.get(key).map(|v| v.id));
            if let Some(old) = old {
                ids.services.insert(identity.clone(), old);
                old_service_of_new.insert(*new_id, old);
            }
        }
        let kernel: BTreeMap<(u32, SocketAddr), u32> = backends
            .iter()
            .filter(|(_, b)| b.flags & backend_flags::IN_USE != 0)
            .map(|(id, b)| {
                let target = SocketAddr::new(IpAddr::from(b.addr), u16::from_be(b.port_be));
                ((b.service_id, target), *id)
            })
            .collect();
        for (new_service, target) in fresh.ids.backends.keys() {
            if let Some(old_service) = old_service_of_new.get(new_service)
                && let Some(old) = kernel.get(&(*old_service, *target))
            {
                ids.backends.insert((*old_service, *target), *old);
            }
        }
        ids.hold_stale(frontends.values().map(|s| s.id), kernel.values().copied());
        ids
    }

    /// Holds the kernel's ids no identity recovered (services and backends removed while no
    /// lbd ran) under identities no plan has, so the plan made over them gives none of them
    /// out: until it is written and the stale entries pruned, the previous program still
    /// sends their frontends' new flows by their tables and backend slots. Free in the plan
    /// after.
    fn hold_stale(
        &mut self,
        services: impl Iterator<Item = u32>,
        backends: impl Iterator<Item = u32>,
    ) {
        let held: std::collections::HashSet<u32> = self.services.values().copied().collect();
        for id in services.filter(|id| !held.contains(id)) {
            // A name no service file can give (names are checked), one per id.
            let placeholder = PortMapping {
                frontend: 0,
                backend: 0,
                protocol: crate::source::file::Protocol::Tcp,
            };
            self.services
                .insert((format!("\0stale {id}"), placeholder, false), id);
        }
        let held: std::collections::HashSet<u32> = self.backends.values().copied().collect();
        for id in backends.filter(|id| !held.contains(id)) {
            // No service has id u32::MAX (ids index kernel arrays far smaller).
            let placeholder = SocketAddr::new(IpAddr::from(std::net::Ipv4Addr::from(id)), 0);
            self.backends.insert((u32::MAX, placeholder), id);
        }
        self.backends_taken = TakenIds::default();
    }
}
