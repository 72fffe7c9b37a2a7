//! `add-backend`, `remove-backend` and `drain`: one request each, and what it did.

use anyhow::{Context as _, anyhow};
use hyper::Method;
use lb_userspace::api::{BackendRequest, ChangeResult, ServiceList, client::Endpoint};

use super::{report_change, text::encode, text::reached_as};

/// Sends `action` (`""`: add or re-weight, `/remove`, `/drain`) for `backend` of `service`
/// and reports the change.
pub(crate) async fn change(
    api: &Endpoint,
    json: bool,
    service: &str,
    action: &str,
    backend: &str,
    weight: Option<u32>,
) -> anyhow::Result<()> {
    let sent = as_sent(api, service, backend).await?;
    let body = serde_json::to_vec(&BackendRequest {
        backend: sent,
        weight,
    })?;
    let path = format!("/v1/services/{}/backends{action}", encode(service));
    let result: ChangeResult = api.json(Method::POST, &path, Some(body)).await?;
    report(&result, json, service, backend)
}

/// The name lbd is sent for `backend`: as typed (lbd takes `ADDR`, `ADDR:PORT`, and a
/// backend as the service lists it), but for a backend shown as `lbctl list` and `stats` name
/// one listed without a port and reached at several (`ADDR:P1,P2`): its address, once the
/// service's ports say it is reached so.
async fn as_sent(api: &Endpoint, service: &str, backend: &str) -> anyhow::Result<String> {
    let Some(address) = several_ports(backend)? else {
        return Ok(backend.to_owned());
    };
    let list: ServiceList = api.json(Method::GET, "/v1/services", None).await?;
    let entry = list
        .services
        .iter()
        .find(|s| s.name == service)
        .ok_or_else(|| anyhow!("no service {service:?} (`lbctl list` names them)"))?;
    address_if_reached_as(&address, backend, &entry.ports).map_err(|reached| {
        anyhow!(
            "service {service}: backend {address} is reached as {reached}, not {backend}; name \
             it {address}, as {reached}, or by one of its ports"
        )
    })
}

/// The address of a name of the form `ADDR:P1,P2` (`[ADDR]:P1,P2` for IPv6); `None` for any
/// other form.
fn several_ports(backend: &str) -> anyhow::Result<Option<String>> {
    let Some((address, ports)) = backend.rsplit_once(':').filter(|(_, p)| p.contains(',')) else {
        return Ok(None);
    };
    let address = address.trim_start_matches('[').trim_end_matches(']');
    let ip: std::net::IpAddr = address
        .parse()
        .with_context(|| format!("backend {backend:?}: {address:?} is no IP address"))?;
    for port in ports.split(',') {
        port.parse::<u16>()
            .with_context(|| format!("backend {backend:?}: {port:?} is no port"))?;
    }
    Ok(Some(ip.to_string()))
}

/// `address` if a backend listed as it is reached as `backend` through a service with
/// `mappings`; otherwise how it is reached.
fn address_if_reached_as(
    address: &str,
    backend: &str,
    mappings: &[String],
) -> Result<String, String> {
    let reached = reached_as(address, mappings);
    if reached == backend {
        Ok(address.to_owned())
    } else {
        Err(reached)
    }
}

/// A backend's change as what it did: added, removed, or its weight from and to.
fn report(result: &ChangeResult, json: bool, service: &str, backend: &str) -> anyhow::Result<()> {
    let what = match result.backends.as_slice() {
        [change] => match (change.before, change.after) {
            (None, Some(w)) => format!("{service}: backend {} added, weight {w}", change.backend),
            (Some(_), None) => format!("{service}: backend {} removed", change.backend),
            (Some(0), Some(w)) => format!(
                "{service}: backend {} back in service, weight {w}",
                change.backend
            ),
            (Some(_), Some(0)) => format!("{service}: backend {} draining", change.backend),
            (Some(a), Some(b)) => {
                format!("{service}: backend {} weight {a} -> {b}", change.backend)
            }
            (None, None) => format!("{service}: backend {backend}"),
        },
        _ => format!("{service}: backend {backend}"),
    };
    report_change(result, json, &what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_shown_at_several_ports_is_sent_as_its_address() {
        let two = ["80:8080/tcp".to_owned(), "53:5353/udp".to_owned()];
        let sent = |name: &str| -> Result<String, String> {
            let address = several_ports(name)
                .map_err(|e| e.to_string())?
                .ok_or("not of the form")?;
            address_if_reached_as(&address, name, &two)
        };
        assert_eq!(sent("198.18.2.10:5353,8080"), Ok("198.18.2.10".into()));
        assert_eq!(sent("[fd00:2::a]:5353,8080"), Ok("fd00:2::a".into()));
        // Ports the service does not reach it at, or in another order: how it is reached.
        assert_eq!(
            sent("198.18.2.10:8080,5353"),
            Err("198.18.2.10:5353,8080".into())
        );
        assert_eq!(
            sent("198.18.2.10:80,53"),
            Err("198.18.2.10:5353,8080".into())
        );
        assert!(
            sent("web-1:80,53")
                .unwrap_err()
                .contains("is no IP address")
        );
        assert!(sent("198.18.2.10:80,x").unwrap_err().contains("is no port"));
        for other in [
            "198.18.2.10",
            "198.18.2.10:8080",
            "[fd00:2::a]:8080",
            "fd00:2::a",
        ] {
            assert!(several_ports(other).unwrap().is_none(), "{other}");
        }
    }
}
