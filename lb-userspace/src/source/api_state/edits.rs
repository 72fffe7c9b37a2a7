//! API edits laid over a service, revalidated, and the errors naming what an edit did not find.

#[allow(unused_imports)]
use super::*;

/// One service through the file's validation again, named as the merged configuration.
pub(super) fn revalidate(spec: ServiceSpec) -> Result<ServiceSpec, OverlayError> {
    let value = serde_json::json!({ "services": { spec.name.clone(): spec.to_value() } });
    let mut file = ServiceFile::parse(&value.to_string(), Path::new(MERGED_ORIGIN))?;
    Ok(file
        .services
        .remove(&spec.name)
        .expect("the service just parsed"))
}

/// Whether `a` and `b` are one endpoint of a service with port mappings `ports`: written
/// alike, or one as `ADDR` and the other as `ADDR:PORT` where PORT is a mapping's backend
/// port (where `ADDR` is reached). A file may write a backend either way.
pub(super) fn same_endpoint(ports: &[PortMapping], a: BackendRef, b: BackendRef) -> bool {
    a.address == b.address
        && match (a.port, b.port) {
            (Some(port), None) | (None, Some(port)) => ports.iter().any(|m| m.backend == port),
            (x, y) => x == y,
        }
}

pub(super) fn apply_edits(spec: &mut ServiceSpec, edits: &BTreeMap<BackendRef, Edit>) {
    for (backend, edit) in edits {
        // As written, else the same endpoint written another way (edits are kept under the
        // name the file used when they were made).
        let position = spec
            .backends
            .iter()
            .position(|b| BackendRef::of(b) == *backend)
            .or_else(|| {
                spec.backends
                    .iter()
                    .position(|b| same_endpoint(&spec.ports, *backend, BackendRef::of(b)))
            });
        match (edit, position) {
            (Edit::Added(weight) | Edit::Reweighted(weight), Some(i)) => {
                spec.backends[i].weight = *weight;
            }
            (Edit::Added(weight), None) => spec.backends.push(BackendSpec {
                address: backend.address,
                port: backend.port,
                weight: *weight,
                mesh: None,
            }),
            (Edit::Removed, Some(i)) => {
                spec.backends.remove(i);
            }
            // The file no longer lists it: the re-weight or removal has nothing to act on.
            (Edit::Reweighted(_) | Edit::Removed, None) => {}
        }
    }
}

pub(super) fn no_service(service: &str) -> OverlayError {
    OverlayError::NotFound(format!("no service {service:?} (see `lbctl list`)"))
}

pub(super) fn no_backend(
    service: &str,
    backend: BackendRef,
    current: &[BackendSpec],
) -> OverlayError {
    let list: Vec<String> = current
        .iter()
        .map(|b| BackendRef::of(b).to_string())
        .collect();
    OverlayError::NotFound(format!(
        "service {service:?} has no backend {backend}; its backends: [{}] (write the address \
         and port as listed)",
        list.join(", ")
    ))
}

/// Which services an `apply` added, changed and removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceChanges {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}
