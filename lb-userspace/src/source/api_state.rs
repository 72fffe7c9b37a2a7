//! What the admin API was told, kept apart from the service file and laid over it.
//!
//! The rule (also in the README):
//! - A service belongs to the file or to the API, never both. `lbctl add-service` and
//!   `lbctl apply` create and replace API services; a name the file already uses is refused.
//!   A file that later defines an API service's name is refused at reload, naming both.
//! - `add-backend`, `remove-backend` and `drain` work on either. On an API service they edit
//!   it; on a file service they are kept as backend edits laid over the file's backend list
//!   on every reload, so the rest of the file keeps applying. An edit is one of: *added* (a
//!   backend the file does not list, with its weight), *re-weighted* (a file backend's weight,
//!   e.g. 0 for a drain) or *removed* (a file backend taken out). A re-weight lapses when the
//!   file stops listing that backend, so a backend the file removes never comes back through
//!   an old drain; an edit that brings a backend back to what the file says is dropped.
//!   `add-backend` without a weight puts a file backend back to the file's weight (undoing
//!   a drain or a re-weight).
//! - Both are validated together, with the file's rules, before anything is programmed.

mod edits;
#[allow(unused_imports)]
pub use edits::*;
use std::{
    collections::BTreeMap,
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::source::file::{
    BackendSpec, ConfigError, POLICY_VIP_SUFFIX, PortMapping, ServiceFile, ServiceSpec,
};

/// A backend as the API names it: its address and, if given, its port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BackendRef {
    pub address: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl BackendRef {
    pub fn of(spec: &BackendSpec) -> Self {
        Self {
            address: spec.address,
            port: spec.port,
        }
    }
}

impl std::fmt::Display for BackendRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        BackendSpec {
            address: self.address,
            port: self.port,
            weight: 1,
            mesh: None,
        }
        .fmt(f)
    }
}

/// Where a running service is defined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    File,
    Api,
    /// Learnt from the Docker Engine (`lbd run --swarm`).
    Swarm,
}

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    #[error("{}: {message}", .path.display())]
    Io { path: PathBuf, message: String },
}

/// The API's services and its backend edits on file services.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiState {
    pub services: BTreeMap<String, ServiceSpec>,
    /// Per file service, per backend.
    pub backend_edits: BTreeMap<String, BTreeMap<BackendRef, Edit>>,
}

/// A change the API made to a file service's backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "edit", content = "weight")]
pub enum Edit {
    /// A backend the file does not list, with its weight.
    Added(u32),
    /// A file backend's weight; lapses when the file stops listing it.
    Reweighted(u32),
    /// A file backend taken out.
    Removed,
}

/// The file and the API state laid together.
#[derive(Clone, Debug)]
pub struct Merged {
    pub file: ServiceFile,
    pub sources: BTreeMap<String, Source>,
    /// Edits kept for services the file no longer defines: not applied, shown by `list`.
    pub orphaned_edits: Vec<String>,
    /// Swarm services left out, and why (a name or a published port the file or the API
    /// already uses): shown by `list` and logged.
    pub swarm_refused: BTreeMap<String, String>,
}

/// What `origin` names in errors about the merged configuration.
pub const MERGED_ORIGIN: &str = "service file + API state";

impl Merged {
    /// Leaves the swarm service `name` out, with `reason`; false (and nothing changed) when
    /// `name` is not a swarm service. For what the merge's own checks cannot see: a swarm
    /// service the plan refuses never holds up the operator's services.
    pub fn refuse_swarm(&mut self, name: &str, reason: String) -> bool {
        if self.sources.get(name) != Some(&Source::Swarm) {
            return false;
        }
        self.sources.remove(name);
        self.file.services.remove(name);
        self.swarm_refused.insert(name.to_owned(), reason);
        true
    }
}

impl ApiState {
    /// Lays the API state over `file`, and validates the result with the file's rules.
    pub fn merge(&self, file: &ServiceFile) -> Result<Merged, OverlayError> {
        self.merge_with_swarm(file, &[])
    }

    /// Like [`ApiState::merge`], with the swarm's services beside the others. The file and
    /// the API are what an operator wrote, so they win: a swarm service whose name or
    /// published port one of them already uses is left out (and said why), never the
    /// operator's service. A swarm service that breaks a file rule is left out likewise, so
    /// one odd service does not hold up every other change.
    pub fn merge_with_swarm(
        &self,
        file: &ServiceFile,
        swarm: &[ServiceSpec],
    ) -> Result<Merged, OverlayError> {
        let mut merged = self.merge_operator(file)?;
        // Frontends as the file claims them: (vip or every node address, port, protocol).
        type Frontend = (Option<IpAddr>, u16, crate::source::file::Protocol);
        let mut claimed: BTreeMap<Frontend, String> = BTreeMap::new();
        for spec in merged.file.services.values() {
            for mapping in &spec.ports {
                claimed.insert(
                    (spec.vip, mapping.frontend, mapping.protocol),
                    spec.name.clone(),
                );
            }
        }
        for spec in swarm {
            // A swarm service's policy VIP (its published ports there too) is not Docker's to
            // rename or republish: the fix is its policy's.
            let of_policy = spec
                .name
                .strip_suffix(POLICY_VIP_SUFFIX)
                .filter(|_| spec.socket_scope == 0 && !spec.tunnel_only);
            let refusal = if let Some(source) = merged.sources.get(&spec.name) {
                let fix = match of_policy {
                    Some(base) => format!(
                        "rename that one, or drop the vip from the swarm policy of {base:?}"
                    ),
                    None => "rename one of them".to_owned(),
                };
                Some(format!(
                    "the {} already has a service named {:?}; {fix}",
                    match source {
                        Source::File => "service file",
                        Source::Api => "API state",
                        Source::Swarm => "swarm",
                    },
                    spec.name
                ))
            } else if let Some(base) = of_policy.filter(|b| merged.swarm_refused.contains_key(*b)) {
                Some(format!(
                    "{base:?} is not served (see it), so neither is its policy vip"
                ))
            } else if let Some((port, owner)) = spec.ports.iter().find_map(|m| {
                claimed
                    .get(&(spec.vip, m.frontend, m.protocol))
                    .map(|owner| (m, owner))
            }) {
                let fix = match of_policy {
                    Some(base) => format!("give the swarm policy of {base:?} another vip"),
                    None => format!("publish another port or remove it from {owner:?}"),
                };
                Some(format!(
                    "port {}/{} is already published by service {owner:?}; {fix}",
                    port.frontend, port.protocol
                ))
            } else if spec.socket_scope == 0 && !spec.tunnel_only {
                revalidate(spec.clone()).err().map(|e| e.to_string())
            } else {
                // A VIP service (any port, only sockets of its network) or a task's delivery
                // frontend: made by meshlb, in no file's terms.
                None
            };
            if let Some(reason) = refusal {
                merged.swarm_refused.insert(spec.name.clone(), reason);
                continue;
            }
            for mapping in &spec.ports {
                claimed.insert(
                    (spec.vip, mapping.frontend, mapping.protocol),
                    spec.name.clone(),
                );
            }
            merged.sources.insert(spec.name.clone(), Source::Swarm);
            merged.file.services.insert(spec.name.clone(), spec.clone());
        }
        Ok(merged)
    }

    /// The merged specs of the services whose API edits differ from `before`'s, when the
    /// merge of every other service cannot differ: `before` was merged with this `file`, and
    /// only file services' backend edits or API services' backends and settings changed,
    /// which keep each service's name and frontends (what the merge checks across services).
    /// `None` when an API service came, went or moved its VIP or ports, or an edit names a
    /// service the file lacks: merge whole then. An edit the file's rules refuse is the
    /// whole merge's error.
    pub fn edited_specs(
        &self,
        before: &ApiState,
        file: &ServiceFile,
    ) -> Option<Result<Vec<(String, ServiceSpec)>, OverlayError>> {
        if !self.services.keys().eq(before.services.keys()) {
            return None;
        }
        let mut specs = Vec::new();
        for (name, spec) in &self.services {
            let old = &before.services[name];
            if spec == old {
                continue;
            }
            if spec.vip != old.vip || spec.ports != old.ports {
                return None;
            }
            specs.push((name.clone(), spec.clone()));
        }
        let edited: std::collections::BTreeSet<&String> = self
            .backend_edits
            .keys()
            .chain(before.backend_edits.keys())
            .filter(|name| self.backend_edits.get(*name) != before.backend_edits.get(*name))
            .collect();
        for name in edited {
            let mut spec = file.services.get(name)?.clone();
            match self.backend_edits.get(name) {
                Some(edits) if !edits.is_empty() => {
                    apply_edits(&mut spec, edits);
                    match revalidate(spec) {
                        Ok(spec) => specs.push((name.clone(), spec)),
                        Err(e) => return Some(Err(e)),
                    }
                }
                _ => specs.push((name.clone(), spec)),
            }
        }
        Some(Ok(specs))
    }

    fn merge_operator(&self, file: &ServiceFile) -> Result<Merged, OverlayError> {
        let mut sources = BTreeMap::new();
        let mut specs = Vec::new();
        for (name, spec) in &file.services {
            sources.insert(name.clone(), Source::File);
            match self.backend_edits.get(name) {
                // Through the file format again, so edits meet every rule a file meets
                // (duplicates, table size against the backend count) with the same messages.
                Some(edits) if !edits.is_empty() => {
                    let mut spec = spec.clone();
                    apply_edits(&mut spec, edits);
                    specs.push(revalidate(spec)?);
                }
                // Validated when the file was read.
                _ => specs.push(spec.clone()),
            }
        }
        for (name, spec) in &self.services {
            if file.services.contains_key(name) {
                return Err(OverlayError::Conflict(format!(
                    "service {name:?} is defined in the service file and through the API; \
                     remove one (`lbctl remove-service {name}` while lbd runs, or delete it \
                     from the file; before a start, from the API state file, api-state.json \
                     in lbd's state directory)"
                )));
            }
            sources.insert(name.clone(), Source::Api);
            specs.push(spec.clone());
        }
        let orphaned_edits = self
            .backend_edits
            .keys()
            .filter(|name| !file.services.contains_key(*name))
            .cloned()
            .collect();
        // Frontends are claimed across both sources.
        let mut merged = ServiceFile::from_specs(specs, Path::new(MERGED_ORIGIN))?;
        merged.lbd = file.lbd.clone();
        Ok(Merged {
            file: merged,
            sources,
            orphaned_edits,
            swarm_refused: BTreeMap::new(),
        })
    }

    pub fn add_service(
        &mut self,
        spec: ServiceSpec,
        file: &ServiceFile,
    ) -> Result<(), OverlayError> {
        if file.services.contains_key(&spec.name) {
            return Err(OverlayError::Conflict(format!(
                "service {:?} is defined in the service file; change it there, or pick another name",
                spec.name
            )));
        }
        if self.services.contains_key(&spec.name) {
            return Err(OverlayError::Conflict(format!(
                "service {name:?} exists; change its backends with `lbctl add-backend`, \
                 `remove-backend` or `drain {name} ...`, or `lbctl remove-service {name}` and add \
                 it again",
                name = spec.name
            )));
        }
        self.services.insert(spec.name.clone(), spec);
        Ok(())
    }

    pub fn remove_service(&mut self, name: &str, file: &ServiceFile) -> Result<(), OverlayError> {
        if self.services.remove(name).is_some() {
            return Ok(());
        }
        // Backend edits of a service the file no longer defines (kept in case it comes back):
        // removing the service is how they are dropped.
        if !file.services.contains_key(name) && self.backend_edits.remove(name).is_some() {
            return Ok(());
        }
        if file.services.contains_key(name) {
            return Err(OverlayError::Conflict(format!(
                "service {name:?} is defined in the service file; delete it there and reload"
            )));
        }
        Err(no_service(name))
    }

    /// `lbctl apply`: the API's services become exactly `services`. Returns the names added,
    /// changed and removed.
    pub fn replace_services(
        &mut self,
        services: BTreeMap<String, ServiceSpec>,
        file: &ServiceFile,
    ) -> Result<ServiceChanges, OverlayError> {
        if let Some(name) = services.keys().find(|n| file.services.contains_key(*n)) {
            return Err(OverlayError::Conflict(format!(
                "service {name:?} is defined in the service file; apply can only manage services \
                 created through the API"
            )));
        }
        let changes = ServiceChanges::between(&self.services, &services);
        self.services = services;
        Ok(changes)
    }

    /// Adds `backend` to `service`, or sets its weight if it is there. Without a weight, a file
    /// backend goes back to the file's weight (undoing a drain or a re-weight), an API
    /// service's backend keeps its own, and a new one gets 1.
    pub fn set_backend(
        &mut self,
        service: &str,
        backend: BackendRef,
        weight: Option<u32>,
        file: &ServiceFile,
    ) -> Result<(), OverlayError> {
        // A backend it has, named as the endpoint (a bare ADDR is ADDR at the target port,
        // never another port at ADDR: that would change a backend when one was to be added);
        // a new one as given.
        let backend = self
            .resolve_backend_as(service, backend, file, Naming::Endpoint)
            .or_else(|e| match e {
                OverlayError::NotFound(_) if self.has_service(service, file) => Ok(backend),
                e => Err(e),
            })?;
        if let Some(spec) = self.services.get(service) {
            let mut spec = spec.clone();
            match spec
                .backends
                .iter_mut()
                .find(|b| BackendRef::of(b) == backend)
            {
                Some(existing) => existing.weight = weight.unwrap_or(existing.weight),
                None => spec.backends.push(BackendSpec {
                    address: backend.address,
                    port: backend.port,
                    weight: weight.unwrap_or(1),
                    mesh: None,
                }),
            }
            // Through the file's rules, as `add-service` and file services' edits are: an
            // edit saved past them (more backends than its table has slots) would make the
            // saved state, and so the next start, fail.
            let spec = revalidate(spec)?;
            self.services.insert(service.to_owned(), spec);
            return Ok(());
        }
        let file_spec = file
            .services
            .get(service)
            .ok_or_else(|| no_service(service))?;
        let in_file = file_spec
            .backends
            .iter()
            .find(|b| BackendRef::of(b) == backend)
            .map(|b| b.weight);
        let edit = match (in_file, weight, self.edit(service, backend)) {
            // Back to what the file says (its weight, or no weight asked): no edit. This is
            // how a drained or removed file backend is restored.
            (Some(w), Some(asked), _) if w == asked => None,
            (Some(_), None, _) => None,
            (Some(_), Some(asked), _) => Some(Edit::Reweighted(asked)),
            (None, asked, Some(Edit::Added(w))) => Some(Edit::Added(asked.unwrap_or(*w))),
            (None, asked, _) => Some(Edit::Added(asked.unwrap_or(1))),
        };
        self.set_edit(service, backend, edit);
        Ok(())
    }

    /// Removes a backend `service` has now (after earlier edits).
    pub fn remove_backend(
        &mut self,
        service: &str,
        backend: BackendRef,
        file: &ServiceFile,
    ) -> Result<(), OverlayError> {
        let backend = self.resolve_backend(service, backend, file)?;
        match self.services.get_mut(service) {
            Some(spec) => spec.backends.retain(|b| BackendRef::of(b) != backend),
            None => {
                let in_file = file.services[service]
                    .backends
                    .iter()
                    .any(|b| BackendRef::of(b) == backend);
                // Only an edit added it if the file does not list it: forgetting the edit
                // removes it.
                self.set_edit(service, backend, in_file.then_some(Edit::Removed));
            }
        }
        Ok(())
    }

    /// Sets a present backend's weight to 0: no new flows, established ones continue.
    pub fn drain(
        &mut self,
        service: &str,
        backend: BackendRef,
        file: &ServiceFile,
    ) -> Result<(), OverlayError> {
        let backend = self.resolve_backend(service, backend, file)?;
        self.set_backend(service, backend, Some(0), file)
    }

    /// Forgets the re-weights and removals of backends that `file` no longer lists in a
    /// service it still defines: they lapse, so a backend the file lists again later comes
    /// with the file's weight, not an old drain. One the file now writes another way (`ADDR`
    /// for `ADDR:PORT`, see `same_endpoint`) stays, kept under the file's new name as an
    /// edit made now would be. How many it forgot.
    pub fn drop_lapsed_edits(&mut self, file: &ServiceFile) -> usize {
        let mut dropped = 0;
        for (service, edits) in &mut self.backend_edits {
            let Some(spec) = file.services.get(service) else {
                continue;
            };
            let listed: Vec<BackendRef> = spec.backends.iter().map(BackendRef::of).collect();
            let mut kept = BTreeMap::new();
            let mut renamed = Vec::new();
            for (backend, edit) in std::mem::take(edits) {
                if matches!(edit, Edit::Added(_)) || listed.contains(&backend) {
                    kept.insert(backend, edit);
                } else if let Some(now) = listed
                    .iter()
                    .find(|b| same_endpoint(&spec.ports, backend, **b))
                {
                    renamed.push((*now, edit));
                } else {
                    dropped += 1;
                }
            }
            for (backend, edit) in renamed {
                // An edit made under the file's name already wins.
                match kept.entry(backend) {
                    std::collections::btree_map::Entry::Vacant(entry) => {
                        entry.insert(edit);
                    }
                    std::collections::btree_map::Entry::Occupied(_) => dropped += 1,
                }
            }
            *edits = kept;
        }
        self.backend_edits.retain(|_, edits| !edits.is_empty());
        dropped
    }

    fn has_service(&self, service: &str, file: &ServiceFile) -> bool {
        self.services.contains_key(service) || file.services.contains_key(service)
    }

    fn edit(&self, service: &str, backend: BackendRef) -> Option<&Edit> {
        self.backend_edits.get(service)?.get(&backend)
    }

    /// Records `edit` of a file service's backend; `None` forgets it (and the service's
    /// entry with its last edit).
    fn set_edit(&mut self, service: &str, backend: BackendRef, edit: Option<Edit>) {
        let edits = self.backend_edits.entry(service.to_owned()).or_default();
        match edit {
            Some(edit) => edits.insert(backend, edit),
            None => edits.remove(&backend),
        };
        if edits.is_empty() {
            self.backend_edits.remove(service);
        }
    }

    /// An error naming the service's backends unless it has `backend` now.
    /// The backend `service` has now that `backend` names, as the service lists it. A name
    /// the user sees works too: `ADDR:PORT` names a backend listed as `ADDR` when PORT is the
    /// backend port of one of the service's port mappings, and `ADDR` names the one backend
    /// at that address. A name that fits several backends is refused with the candidates.
    fn resolve_backend(
        &self,
        service: &str,
        backend: BackendRef,
        file: &ServiceFile,
    ) -> Result<BackendRef, OverlayError> {
        self.resolve_backend_as(service, backend, file, Naming::AnyPort)
    }

    /// `resolve_backend` with the naming `naming` allows.
    fn resolve_backend_as(
        &self,
        service: &str,
        backend: BackendRef,
        file: &ServiceFile,
        naming: Naming,
    ) -> Result<BackendRef, OverlayError> {
        let spec = self.current_service(service, file)?;
        let listed: Vec<BackendRef> = spec.backends.iter().map(BackendRef::of).collect();
        if listed.contains(&backend) {
            return Ok(backend);
        }
        let at_address = |b: &BackendRef| backend.port.is_none() && b.address == backend.address;
        let candidates: Vec<BackendRef> = listed
            .iter()
            .filter(|b| {
                // The same endpoint written another way, or ADDR for any backend at ADDR.
                same_endpoint(&spec.ports, backend, **b)
                    || (naming == Naming::AnyPort && at_address(b))
            })
            .copied()
            .collect();
        match candidates.as_slice() {
            [one] => Ok(*one),
            [] if listed.iter().any(at_address) => {
                let others: Vec<String> = listed
                    .iter()
                    .filter(|b| at_address(b))
                    .map(ToString::to_string)
                    .collect();
                let mut ports: Vec<u16> = spec.ports.iter().map(|m| m.backend).collect();
                ports.sort_unstable();
                ports.dedup();
                let ports: Vec<String> = ports.iter().map(ToString::to_string).collect();
                let reached = match backend.address {
                    IpAddr::V4(a) => format!("{a}:{}", ports.join(",")),
                    IpAddr::V6(a) => format!("[{a}]:{}", ports.join(",")),
                };
                Err(OverlayError::Conflict(format!(
                    "service {service:?}: {backend} is {reached} here; the service has [{}]: \
                     write ADDR:PORT ({reached} to add that endpoint, or one of those to change it)",
                    others.join(", ")
                )))
            }
            [] => Err(no_backend(service, backend, &spec.backends)),
            several => Err(OverlayError::Conflict(format!(
                "service {service:?}: backend {backend} is ambiguous; it could be any of [{}]: \
                 write one of them as listed",
                several
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// `service` as it is programmed (file plus edits, or the API's).
    fn current_service(
        &self,
        service: &str,
        file: &ServiceFile,
    ) -> Result<ServiceSpec, OverlayError> {
        if let Some(spec) = self.services.get(service) {
            return Ok(spec.clone());
        }
        let mut spec = file
            .services
            .get(service)
            .cloned()
            .ok_or_else(|| no_service(service))?;
        if let Some(edits) = self.backend_edits.get(service) {
            apply_edits(&mut spec, edits);
        }
        Ok(spec)
    }

    /// Reads the state `save` wrote; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<ApiState, OverlayError> {
        let io = |message: String| OverlayError::Io {
            path: path.to_owned(),
            message,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ApiState::default()),
            Err(e) => return Err(io(format!("cannot read the API state: {e}"))),
        };
        let stored: StoredState = serde_json::from_str(&text).map_err(|e| {
            io(format!(
                "not a meshlb API state ({e}); move it away to start without the API's changes"
            ))
        })?;
        if stored.format != STATE_FORMAT {
            return Err(io(format!(
                "API state format {} is not the format {STATE_FORMAT} this lbd reads (a newer \
                 lbd wrote it); upgrade lbd, or move it away to start without the API's changes",
                stored.format
            )));
        }
        let services_text = serde_json::json!({ "services": stored.services }).to_string();
        let services = ServiceFile::parse(&services_text, path)?.services;
        let backend_edits = stored
            .backend_edits
            .into_iter()
            .map(|(service, edits)| {
                let edits = edits.into_iter().map(|e| (e.backend, e.edit)).collect();
                (service, edits)
            })
            .collect();
        Ok(ApiState {
            services,
            backend_edits,
        })
    }

    /// Writes the state atomically: a crash leaves the old file or the new one.
    pub fn save(&self, path: &Path) -> Result<(), OverlayError> {
        let stored = StoredState {
            format: STATE_FORMAT,
            services: ServiceFile::from_specs(self.services.values().cloned(), path)?
                .services_value(),
            backend_edits: self
                .backend_edits
                .iter()
                .filter(|(_, edits)| !edits.is_empty())
                .map(|(service, edits)| {
                    let edits = edits
                        .iter()
                        .map(|(backend, edit)| StoredEdit {
                            backend: *backend,
                            edit: *edit,
                        })
                        .collect();
                    (service.clone(), edits)
                })
                .collect(),
        };
        let text = serde_json::to_string_pretty(&stored).expect("plain data serializes");
        write_atomically(path, text.as_bytes()).map_err(|e| OverlayError::Io {
            path: path.to_owned(),
            message: format!("cannot write the API state: {e}"),
        })
    }
}

/// How a bare `ADDR` names a backend.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Naming {
    /// The one backend at ADDR, whatever its port (`remove-backend`, `drain`: they act on
    /// a backend the service has).
    AnyPort,
    /// Only the endpoint ADDR is as a backend of the service: ADDR at its target ports
    /// (`add-backend`, which adds it when the service has no such endpoint).
    Endpoint,
}

impl ServiceChanges {
    fn between(old: &BTreeMap<String, ServiceSpec>, new: &BTreeMap<String, ServiceSpec>) -> Self {
        let mut changes = Self::default();
        for (name, spec) in new {
            match old.get(name) {
                None => changes.added.push(name.clone()),
                Some(previous) if previous != spec => changes.changed.push(name.clone()),
                Some(_) => {}
            }
        }
        changes.removed = old
            .keys()
            .filter(|n| !new.contains_key(*n))
            .cloned()
            .collect();
        changes
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

const STATE_FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredState {
    format: u32,
    services: serde_json::Value,
    backend_edits: BTreeMap<String, Vec<StoredEdit>>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredEdit {
    backend: BackendRef,
    #[serde(flatten)]
    edit: Edit,
}

/// Writes `path` through a temporary file, fsync and rename, then syncs the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    // Renamed: the new content is the file's, whatever follows. Said as written, or a caller
    // would undo in memory a change the file holds; only its surviving a power loss before
    // the directory reaches the disk is in doubt.
    if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(path = %path.display(), "written, but syncing its directory failed: {e}; a power loss now may lose the change");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> ServiceFile {
        ServiceFile::parse(text, Path::new("s.yaml")).unwrap()
    }

    fn swarm_spec(name: &str, port: &str, backends: &[&str]) -> ServiceSpec {
        let value = serde_json::json!({ "services": { name: {
            "ports": [port], "backends": backends } } });
        ServiceFile::parse(&value.to_string(), Path::new("swarm"))
            .unwrap()
            .services
            .remove(name)
            .unwrap()
    }

    /// A drain or removal of a file backend lapses at the reload that stops listing it: listed
    /// again later, the backend comes with the file's weight (it came back drained).
    #[test]
    fn edits_of_backends_the_file_stops_listing_lapse() {
        let both = file(
            "services:\n  web:\n    ports: [\"80:8080/tcp\"]\n    backends: [198.18.2.10, 198.18.2.11, 198.18.2.12]\n",
        );
        let one =
            file("services:\n  web:\n    ports: [\"80:8080/tcp\"]\n    backends: [198.18.2.10]\n");
        let mut api = ApiState::default();
        let b = |a: &str| BackendRef {
            address: a.parse().unwrap(),
            port: None,
        };
        api.drain("web", b("198.18.2.11"), &both).unwrap();
        api.remove_backend("web", b("198.18.2.12"), &both).unwrap();
        api.set_backend("web", b("198.18.2.20"), Some(3), &both)
            .unwrap();
        assert_eq!(api.drop_lapsed_edits(&both), 0, "all still listed");
        assert_eq!(api.drop_lapsed_edits(&one), 2);
        let weights: Vec<(String, u32)> = api.merge(&both).unwrap().file.services["web"]
            .backends
            .iter()
            .map(|b| (b.address.to_string(), b.weight))
            .collect();
        assert_eq!(
            weights,
            [
                ("198.18.2.10".to_owned(), 1),
                ("198.18.2.11".to_owned(), 1),
                ("198.18.2.12".to_owned(), 1),
                ("198.18.2.20".to_owned(), 3),
            ],
            "listed again: the file's weights; the added backend stays"
        );
    }

    #[test]
    fn swarm_services_never_displace_the_operators() {
        let f =
            file("services:\n  web:\n    ports: [\"80:8080/tcp\"]\n    backends: [198.18.2.10]\n");
        let swarm = [
            swarm_spec("web", "81:8080/tcp", &["198.18.61.3"]),
            swarm_spec("other", "80:9090/tcp", &["198.18.61.4"]),
            swarm_spec("udp80", "80:9090/udp", &["198.18.61.5"]),
            swarm_spec("api", "8080/tcp", &["198.18.61.6"]),
            swarm_spec("api2", "8080/tcp", &["198.18.61.7"]),
        ];
        let merged = ApiState::default().merge_with_swarm(&f, &swarm).unwrap();
        assert_eq!(merged.sources["web"], Source::File);
        assert_eq!(merged.sources["udp80"], Source::Swarm);
        assert_eq!(merged.sources["api"], Source::Swarm);
        assert!(merged.swarm_refused["web"].contains("service file already has"));
        assert!(merged.swarm_refused["other"].contains("already published by service \"web\""));
        assert!(merged.swarm_refused["api2"].contains("already published by service \"api\""));
        assert_eq!(merged.swarm_refused.len(), 3);
        assert_eq!(
            merged.file.services["web"].backends[0].address.to_string(),
            "198.18.2.10"
        );
    }

    /// A swarm service's policy VIP meets the operator's services: its refusals name the
    /// policy's fix, and it is not served without its published ports.
    #[test]
    fn a_swarm_policy_vip_never_displaces_the_operators_and_goes_with_its_service() {
        let on_vip = |name: &str, vip: &str| ServiceSpec {
            name: format!("{name}{POLICY_VIP_SUFFIX}"),
            vip: Some(vip.parse().unwrap()),
            ..swarm_spec(name, "81:8080/tcp", &["198.18.61.3"])
        };
        let f = file(
            r#"services:
  taken: { vip: 198.18.100.50, ports: ["81/tcp"], backends: [198.18.2.10] }
  onnodes: { ports: ["82/tcp"], backends: [198.18.2.11] }
  named.vip: { vip: 198.18.100.52, ports: ["83/tcp"], backends: [198.18.2.12] }
"#,
        );
        let swarm = [
            swarm_spec("web", "81:8080/tcp", &["198.18.61.3"]),
            on_vip("web", "198.18.100.50"),
            swarm_spec("shop", "82:8080/tcp", &["198.18.61.4"]),
            on_vip("shop", "198.18.100.51"),
            swarm_spec("named", "84:8080/tcp", &["198.18.61.5"]),
            on_vip("named", "198.18.100.53"),
            swarm_spec("fine", "85:8080/tcp", &["198.18.61.6"]),
            on_vip("fine", "198.18.100.54"),
        ];
        let merged = ApiState::default().merge_with_swarm(&f, &swarm).unwrap();
        let refused = |name: &str| merged.swarm_refused[name].as_str();
        assert!(
            refused("web.vip").contains("give the swarm policy of \"web\" another vip"),
            "{}",
            refused("web.vip")
        );
        assert!(refused("shop").contains("already published by service \"onnodes\""));
        assert!(refused("shop.vip").contains("\"shop\" is not served"));
        assert!(
            refused("named.vip").contains("drop the vip from the swarm policy of \"named\""),
            "{}",
            refused("named.vip")
        );
        assert_eq!(merged.swarm_refused.len(), 4);
        for served in ["web", "named", "fine", "fine.vip"] {
            assert_eq!(merged.sources[served], Source::Swarm, "{served}");
        }
    }

    #[test]
    fn edited_specs_are_the_whole_merges_specs_of_the_edited_services() {
        let f = file(
            "services:\n  web:\n    vip: 198.18.100.1\n    ports: [\"80/tcp\"]\n    backends: [198.18.2.10, 198.18.2.11]\n  dns:\n    vip: 198.18.100.2\n    ports: [\"53/udp\"]\n    backends: [198.18.2.12]\n",
        );
        let mut before = ApiState::default();
        before
            .add_service(api_service("extra", "198.18.100.3"), &f)
            .unwrap();
        let backend = |a: &str| BackendRef {
            address: a.parse().unwrap(),
            port: None,
        };
        let mut after = before.clone();
        after
            .set_backend("web", backend("198.18.2.13"), None, &f)
            .unwrap();
        after.drain("dns", backend("198.18.2.12"), &f).unwrap();
        after
            .set_backend("extra", backend("198.18.2.21"), Some(3), &f)
            .unwrap();
        let specs = after.edited_specs(&before, &f).unwrap().unwrap();
        let whole = after.merge(&f).unwrap();
        let names: Vec<&str> = specs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["extra", "dns", "web"]);
        for (name, spec) in &specs {
            assert_eq!(whole.file.services[name], *spec, "{name}");
        }
        // Undoing an edit gives the file's spec back.
        let undone = before.edited_specs(&after, &f).unwrap().unwrap();
        let whole = before.merge(&f).unwrap();
        for (name, spec) in &undone {
            assert_eq!(whole.file.services[name], *spec, "{name}");
        }
        // A new API service, or one that moved, is merged whole.
        let mut moved = before.clone();
        moved.services.get_mut("extra").unwrap().vip = Some("198.18.100.9".parse().unwrap());
        assert!(moved.edited_specs(&before, &f).is_none());
        let mut added = before.clone();
        added
            .add_service(api_service("more", "198.18.100.4"), &f)
            .unwrap();
        assert!(added.edited_specs(&before, &f).is_none());
    }

    const FILE: &str = r#"
services:
  web:
    vip: 198.18.100.1
    ports: ["80:8080/tcp"]
    backends: ["198.18.2.10", "198.18.2.11"]
"#;

    fn api_service(name: &str, vip: &str) -> ServiceSpec {
        file(&format!(
            "services:\n  {name}:\n    vip: {vip}\n    ports: [\"53/udp\"]\n    backends: [\"198.18.2.20\"]\n"
        ))
        .services
        .remove(name)
        .unwrap()
    }

    fn r(text: &str) -> BackendRef {
        BackendRef::of(&text.parse::<BackendSpec>().unwrap())
    }

    fn weights(merged: &Merged, service: &str) -> Vec<(String, u32)> {
        merged.file.services[service]
            .backends
            .iter()
            .map(|b| (BackendRef::of(b).to_string(), b.weight))
            .collect()
    }

    #[test]
    fn edits_on_a_file_service_lay_over_its_backends() {
        let f = file(FILE);
        let mut api = ApiState::default();
        api.set_backend("web", r("198.18.2.12:9000"), Some(3), &f)
            .unwrap();
        api.drain(
            "web",
            "198.18.2.10"
                .parse::<BackendSpec>()
                .map(|b| BackendRef::of(&b))
                .unwrap(),
            &f,
        )
        .unwrap();
        api.remove_backend(
            "web",
            BackendRef {
                address: "198.18.2.11".parse().unwrap(),
                port: None,
            },
            &f,
        )
        .unwrap();
        let merged = api.merge(&f).unwrap();
        assert_eq!(
            weights(&merged, "web"),
            [("198.18.2.10".into(), 0), ("198.18.2.12:9000".into(), 3)]
        );
        // The file changes something else: the edits still apply on top.
        let f2 = file(&FILE.replace("80:8080/tcp", "81:8080/tcp"));
        let merged = api.merge(&f2).unwrap();
        assert_eq!(merged.file.services["web"].ports[0].frontend, 81);
        assert_eq!(weights(&merged, "web").len(), 2);
        // Removing a backend only an edit added forgets the edit.
        let added = BackendRef {
            address: "198.18.2.12".parse().unwrap(),
            port: Some(9000),
        };
        api.remove_backend("web", added, &f).unwrap();
        assert!(!api.backend_edits["web"].contains_key(&added));
    }

    #[test]
    fn edits_lapse_and_undo_cleanly() {
        let f = file(FILE);
        let mut api = ApiState::default();
        // Drain, then undrain without a weight: back to the file's weight, no edit left.
        api.drain("web", r("198.18.2.10"), &f).unwrap();
        assert_eq!(
            api.backend_edits["web"][&r("198.18.2.10")],
            Edit::Reweighted(0)
        );
        api.set_backend("web", r("198.18.2.10"), None, &f).unwrap();
        assert!(api.backend_edits.is_empty(), "{api:?}");
        // A drained backend the file later drops does not come back.
        api.drain("web", r("198.18.2.10"), &f).unwrap();
        let f2 = file(&FILE.replace("\"198.18.2.10\", ", ""));
        let merged = api.merge(&f2).unwrap();
        assert_eq!(weights(&merged, "web"), [("198.18.2.11".into(), 1)]);
        // add-backend without a weight on an added backend keeps its weight.
        api.set_backend("web", r("198.18.2.20"), Some(5), &f)
            .unwrap();
        api.set_backend("web", r("198.18.2.20"), None, &f).unwrap();
        assert_eq!(api.backend_edits["web"][&r("198.18.2.20")], Edit::Added(5));
    }

    #[test]
    fn api_services_and_file_services_do_not_share_names() {
        let f = file(FILE);
        let mut api = ApiState::default();
        let e = api
            .add_service(api_service("web", "198.18.100.9"), &f)
            .unwrap_err();
        assert!(matches!(e, OverlayError::Conflict(_)), "{e}");
        api.add_service(api_service("dns", "198.18.100.2"), &f)
            .unwrap();
        assert!(matches!(
            api.add_service(api_service("dns", "198.18.100.2"), &f),
            Err(OverlayError::Conflict(_))
        ));
        let merged = api.merge(&f).unwrap();
        assert_eq!(merged.sources["dns"], Source::Api);
        assert_eq!(merged.sources["web"], Source::File);
        // The file later takes the API service's name: refused, naming both ways out.
        let f2 = file(&format!(
            "{FILE}  dns:\n    vip: 198.18.100.3\n    ports: [\"53/udp\"]\n"
        ));
        let e = api.merge(&f2).unwrap_err().to_string();
        assert!(e.contains("lbctl remove-service dns"), "{e}");
        assert!(matches!(
            api.remove_service("web", &f),
            Err(OverlayError::Conflict(_))
        ));
        assert!(matches!(
            api.remove_service("nope", &f),
            Err(OverlayError::NotFound(_))
        ));
        api.remove_service("dns", &f).unwrap();
        assert!(api.services.is_empty());
    }

    #[test]
    fn merged_configuration_meets_the_file_rules() {
        let f = file(FILE);
        let mut api = ApiState::default();
        // Same frontend as the file's service.
        api.add_service(api_service("dns", "198.18.100.1"), &f)
            .unwrap();
        let mut dns = api.services["dns"].clone();
        dns.ports = f.services["web"].ports.clone();
        api.services.insert("dns".into(), dns);
        let e = api.merge(&f).unwrap_err().to_string();
        assert!(e.contains("already published"), "{e}");
        // A backend written twice in different forms: `set_backend` names the listed one
        // (no edit); an edit made so (a state file of an older lbd) acts on the listed
        // backend rather than listing it twice.
        let mut api = ApiState::default();
        api.set_backend("web", r("198.18.2.10:8080"), Some(1), &f)
            .unwrap();
        assert!(api.backend_edits.is_empty(), "{:?}", api.backend_edits);
        api.set_edit("web", r("198.18.2.10:8080"), Some(Edit::Added(3)));
        let merged = api.merge(&f).unwrap();
        let weights: Vec<(String, u32)> = merged.file.services["web"]
            .backends
            .iter()
            .map(|b| (BackendRef::of(b).to_string(), b.weight))
            .collect();
        assert_eq!(
            weights,
            [("198.18.2.10".to_owned(), 3), ("198.18.2.11".to_owned(), 1)]
        );
    }

    /// An API service's backends meet the file's rules at every edit: one past its Maglev
    /// table's slots is refused (a drained one counts), and the state stays loadable.
    #[test]
    fn backend_edits_of_an_api_service_meet_the_file_rules() {
        let f = file(FILE);
        let mut api = ApiState::default();
        let mut spec = api_service("dns", "198.18.100.7");
        spec.maglev_table_size = 7;
        spec.backends = (20..27)
            .map(|i| format!("198.18.2.{i}").parse().unwrap())
            .collect();
        api.add_service(spec, &f).unwrap();
        let before = api.clone();
        let e = api
            .set_backend("dns", r("198.18.2.30"), Some(0), &f)
            .unwrap_err()
            .to_string();
        assert!(e.contains("maglev_table_size"), "{e}");
        assert_eq!(api, before, "a refused edit changes nothing");
        // Re-weighting one it has is fine.
        api.set_backend("dns", r("198.18.2.20"), Some(3), &f)
            .unwrap();
        let dir = std::env::temp_dir().join(format!("mlb-api-rules-{}", std::process::id()));
        let path = dir.join("api-state.json");
        api.save(&path).unwrap();
        assert_eq!(ApiState::load(&path).unwrap(), api);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Edits of a file service the file dropped are kept (they apply if it comes back) and
    /// dropped by removing the service.
    #[test]
    fn edits_of_a_service_the_file_dropped_are_dropped_by_removing_it() {
        let f = file(FILE);
        let mut api = ApiState::default();
        api.set_backend("web", r("198.18.2.12"), Some(2), &f)
            .unwrap();
        let without_web = ServiceFile::from_specs(
            f.services.values().filter(|s| s.name != "web").cloned(),
            Path::new("s.yaml"),
        )
        .unwrap();
        assert_eq!(api.merge(&without_web).unwrap().orphaned_edits, ["web"]);
        api.remove_service("web", &without_web).unwrap();
        assert!(api.backend_edits.is_empty());
        assert!(api.merge(&without_web).unwrap().orphaned_edits.is_empty());
        // Nothing left to remove: not found, as before.
        let e = api.remove_service("web", &without_web).unwrap_err();
        assert!(matches!(e, OverlayError::NotFound(_)), "{e}");
    }

    #[test]
    fn unknown_targets_are_named() {
        let f = file(FILE);
        let mut api = ApiState::default();
        let e = api
            .remove_backend(
                "web",
                BackendRef {
                    address: "198.18.2.99".parse().unwrap(),
                    port: None,
                },
                &f,
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("198.18.2.10, 198.18.2.11"), "{e}");
        assert!(matches!(
            api.set_backend("nope", r("198.18.2.1"), Some(1), &f),
            Err(OverlayError::NotFound(_))
        ));
        assert_eq!(api, ApiState::default(), "failed calls change nothing");
    }

    #[test]
    fn backends_can_be_named_as_the_user_sees_them() {
        let f = file(
            "services:\n  web:\n    vip: 198.18.100.1\n    ports: [\"80:8080/tcp\", \"443:8443/tcp\"]\n    \
             backends: [\"198.18.2.10\", \"198.18.2.11:9000\", \"198.18.2.12:7000\", \"198.18.2.12:7001\"]\n",
        );
        let mut api = ApiState::default();
        // ADDR:PORT where PORT is a mapping's backend port names the backend listed as ADDR.
        api.drain("web", r("198.18.2.10:8080"), &f).unwrap();
        api.drain("web", r("198.18.2.10:8443"), &f).unwrap();
        assert_eq!(
            api.backend_edits["web"].get(&r("198.18.2.10")),
            Some(&Edit::Reweighted(0)),
            "the edit is kept under the name the file lists"
        );
        // ADDR names the one backend at that address.
        api.remove_backend("web", r("198.18.2.11"), &f).unwrap();
        assert_eq!(
            api.backend_edits["web"].get(&r("198.18.2.11:9000")),
            Some(&Edit::Removed)
        );
        // A port no mapping uses is not this backend.
        let e = api.drain("web", r("198.18.2.10:9999"), &f).unwrap_err();
        assert!(matches!(e, OverlayError::NotFound(_)), "{e}");
        // Two backends at one address: ADDR alone is ambiguous, and the error lists both.
        let before = api.clone();
        let e = api
            .drain("web", r("198.18.2.12"), &f)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ambiguous") && e.contains("198.18.2.12:7000, 198.18.2.12:7001"),
            "{e}"
        );
        assert_eq!(api, before, "a refused call changes nothing");
        // Setting a weight by the seen name reweights the listed backend, adds nothing.
        api.set_backend("web", r("198.18.2.10:8080"), Some(5), &f)
            .unwrap();
        assert_eq!(
            api.backend_edits["web"].get(&r("198.18.2.10")),
            Some(&Edit::Reweighted(5))
        );
        assert_eq!(api.backend_edits["web"].len(), 2, "{:?}", api.backend_edits);
    }

    /// `add-backend` with a bare address means ADDR at the service's target port: it never
    /// changes a backend at that address on another port, it says so and asks for ADDR:PORT.
    #[test]
    fn adding_a_bare_address_never_changes_a_backend_on_another_port() {
        let f = file(
            "services:\n  web:\n    ports: [\"80:8080/tcp\"]\n    backends: [\"198.18.2.10:9000\"]\n",
        );
        let mut api = ApiState::default();
        api.drain("web", r("198.18.2.10"), &f).unwrap();
        let drained = api.clone();
        for weight in [None, Some(3)] {
            let e = api
                .set_backend("web", r("198.18.2.10"), weight, &f)
                .unwrap_err();
            assert!(matches!(e, OverlayError::Conflict(_)), "{e}");
            let e = e.to_string();
            assert!(
                e.contains("198.18.2.10 is 198.18.2.10:8080 here")
                    && e.contains("[198.18.2.10:9000]")
                    && e.contains("write ADDR:PORT"),
                "{e}"
            );
            assert_eq!(api, drained, "a refused add changes nothing");
        }
        // As ADDR:PORT: added beside it, or that one changed.
        api.set_backend("web", r("198.18.2.10:8080"), None, &f)
            .unwrap();
        api.set_backend("web", r("198.18.2.10:9000"), None, &f)
            .unwrap();
        assert_eq!(
            weights(&api.merge(&f).unwrap(), "web"),
            [
                ("198.18.2.10:9000".into(), 1),
                ("198.18.2.10:8080".into(), 1)
            ]
        );
        // The same endpoint written bare: what the service lists.
        let listed = file(
            "services:\n  web:\n    ports: [\"80:8080/tcp\"]\n    backends: [\"198.18.2.10:8080\"]\n",
        );
        let mut api = ApiState::default();
        api.set_backend("web", r("198.18.2.10"), Some(4), &listed)
            .unwrap();
        assert_eq!(
            weights(&api.merge(&listed).unwrap(), "web"),
            [("198.18.2.10:8080".into(), 4)]
        );
    }

    /// The hint of a name already taken never leads to `lbctl apply`, which would replace
    /// every API service with the one in hand.
    #[test]
    fn a_taken_names_hint_cannot_remove_the_other_services() {
        let f = file(FILE);
        let mut api = ApiState::default();
        api.add_service(api_service("dns", "198.18.100.2"), &f)
            .unwrap();
        let e = api
            .add_service(api_service("dns", "198.18.100.2"), &f)
            .unwrap_err()
            .to_string();
        assert!(
            !e.contains("apply") && e.contains("lbctl remove-service dns"),
            "{e}"
        );
    }

    #[test]
    fn apply_reports_what_changed_and_is_idempotent() {
        let f = file(FILE);
        let mut api = ApiState::default();
        let wanted: BTreeMap<_, _> =
            [("dns".to_string(), api_service("dns", "198.18.100.2"))].into();
        let c = api.replace_services(wanted.clone(), &f).unwrap();
        assert_eq!(c.added, ["dns"]);
        assert!(api.replace_services(wanted, &f).unwrap().is_empty());
        let c = api.replace_services(BTreeMap::new(), &f).unwrap();
        assert_eq!(c.removed, ["dns"]);
        let clash: BTreeMap<_, _> =
            [("web".to_string(), api_service("web", "198.18.100.2"))].into();
        assert!(matches!(
            api.replace_services(clash, &f),
            Err(OverlayError::Conflict(_))
        ));
    }

    #[test]
    fn state_survives_save_and_load() {
        let f = file(FILE);
        let mut api = ApiState::default();
        api.add_service(api_service("dns", "fd00:100::2"), &f)
            .unwrap();
        api.set_backend("dns", r("[fd00:3::10]:5353"), Some(7), &f)
            .unwrap();
        api.set_backend("web", r("198.18.2.12"), Some(2), &f)
            .unwrap();
        api.remove_backend(
            "web",
            BackendRef {
                address: "198.18.2.11".parse().unwrap(),
                port: None,
            },
            &f,
        )
        .unwrap();
        let dir = std::env::temp_dir().join(format!("mlb-overlay-{}", std::process::id()));
        let path = dir.join("api-state.json");
        api.save(&path).unwrap();
        assert_eq!(ApiState::load(&path).unwrap(), api);
        assert_eq!(
            ApiState::load(&dir.join("missing.json")).unwrap(),
            ApiState::default()
        );
        std::fs::write(&path, "{").unwrap();
        let e = ApiState::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("api-state.json") && e.contains("move it away"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A file that writes a backend another way (`ADDR` under "80:8080/tcp", then
    /// `ADDR:8080` or the long form, or back) lists the same endpoint: its drain and its
    /// removal stay laid over it, and `add-backend` without a weight still undoes the drain.
    #[test]
    fn edits_follow_a_backend_the_file_writes_another_way() {
        let web = |backends: &str| {
            file(&format!(
                "services:\n  web:\n    ports: [\"80:8080/tcp\"]\n    backends: {backends}\n"
            ))
        };
        let short = web("[198.18.2.10, 198.18.2.11, 198.18.2.12]");
        let long =
            web("[\"198.18.2.10:8080\", {address: 198.18.2.11, port: 8080}, \"198.18.2.12:8080\"]");
        for (before, after) in [(&short, &long), (&long, &short)] {
            let mut api = ApiState::default();
            api.drain("web", r("198.18.2.10"), before).unwrap();
            api.remove_backend("web", r("198.18.2.11"), before).unwrap();
            assert_eq!(api.drop_lapsed_edits(after), 0, "{:?}", api.backend_edits);
            // As the file now writes them.
            let listed: Vec<String> = after.services["web"]
                .backends
                .iter()
                .map(|b| BackendRef::of(b).to_string())
                .collect();
            assert_eq!(
                weights(&api.merge(after).unwrap(), "web"),
                [(listed[0].clone(), 0), (listed[2].clone(), 1)]
            );
            api.set_backend("web", r("198.18.2.10"), None, after)
                .unwrap();
            assert_eq!(
                weights(&api.merge(after).unwrap(), "web"),
                [(listed[0].clone(), 1), (listed[2].clone(), 1)],
                "the drain is undone: {:?}",
                api.backend_edits
            );
        }
        // Another port is another endpoint: the edits lapse.
        let mut api = ApiState::default();
        api.drain("web", r("198.18.2.10"), &short).unwrap();
        assert_eq!(api.drop_lapsed_edits(&web("[\"198.18.2.10:9000\"]")), 1);
    }

    /// A state file of another format, and a service that does not exist, name the way out.
    #[test]
    fn errors_of_the_state_file_and_of_removing_a_service_name_the_way_out() {
        let dir = std::env::temp_dir().join(format!("mlb-format-{}", std::process::id()));
        let path = dir.join("api-state.json");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            &path,
            r#"{"format": 2, "services": {}, "backend_edits": {}}"#,
        )
        .unwrap();
        let e = ApiState::load(&path).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            e.contains("api-state.json") && e.contains("upgrade lbd") && e.contains("move it away"),
            "{e}"
        );
        let e = ApiState::default()
            .remove_service("nope", &file(FILE))
            .unwrap_err();
        assert!(matches!(e, OverlayError::NotFound(_)), "{e}");
        assert!(e.to_string().contains("lbctl list"), "{e}");
    }
}
