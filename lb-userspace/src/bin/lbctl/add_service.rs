//! `lbctl add-service`: one service from flags, refused here, naming the flag, when its
//! values are wrong.

use anyhow::bail;
use clap::ValueEnum;
use hyper::Method;
use lb_userspace::{
    api::{ChangeResult, client::Endpoint},
    source::{
        error::ConfigError,
        file::{Affinity, Forwarding, Scheduler, ServiceFile},
    },
};

use super::report_change;

/// `lbctl add-service`'s arguments.
#[derive(clap::Args)]
pub(crate) struct AddService {
    name: String,
    /// VIP; without one the ports are published on every node address.
    #[arg(long)]
    vip: Option<String>,
    /// FRONTEND[:BACKEND][/tcp|udp]; repeat for several.
    #[arg(long = "port", required = true)]
    ports: Vec<String>,
    /// ADDR or ADDR:PORT; repeat for several.
    #[arg(long = "backend")]
    backends: Vec<String>,
    /// How new flows pick a backend [default: maglev].
    #[arg(long, value_enum)]
    scheduler: Option<Scheduler>,
    /// How packets reach the backend [default: nat].
    #[arg(long, value_enum)]
    forwarding: Option<Forwarding>,
    /// What keeps flows on one backend [default: none].
    #[arg(long, value_enum)]
    affinity: Option<Affinity>,
    /// Check every backend from the node (see the README's "Health checks"); the other
    /// `--health-*` options need it.
    #[arg(long, value_enum)]
    health: Option<HealthKind>,
    /// The HTTP check's request path [default: /].
    #[arg(long, requires = "health")]
    health_path: Option<String>,
    /// The port checked [default: the backend's own].
    #[arg(long, requires = "health")]
    health_port: Option<u16>,
    /// Time between two checks of a backend, e.g. 500ms, 2s [default: 2s].
    #[arg(long, requires = "health")]
    health_interval: Option<String>,
}

/// What `--health` checks.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum HealthKind {
    /// A TCP connection is accepted.
    Tcp,
    /// `GET --health-path` answers 200.
    Http,
}

pub(crate) async fn add_service(
    api: &Endpoint,
    json: bool,
    args: &AddService,
) -> anyhow::Result<()> {
    let AddService {
        name,
        vip,
        ports,
        backends,
        scheduler,
        forwarding,
        affinity,
        health,
        health_path,
        health_port,
        health_interval,
    } = args;
    let mut service = serde_json::json!({ "ports": ports, "backends": backends });
    if let Some(kind) = health {
        // The service file's own `health:` section: lbd checks it like a file's.
        let mut check = match kind {
            HealthKind::Tcp => serde_json::json!({ "tcp": {} }),
            HealthKind::Http => serde_json::json!({ "http": {} }),
        };
        if let Some(path) = health_path {
            match kind {
                HealthKind::Http => check["http"]["path"] = path.clone().into(),
                HealthKind::Tcp => bail!("--health-path is for --health http"),
            }
        }
        if let Some(port) = health_port {
            check["port"] = (*port).into();
        }
        if let Some(interval) = health_interval {
            check["interval"] = interval.clone().into();
        }
        service["health"] = check;
    }
    for (key, value) in [
        ("vip", vip.clone()),
        ("scheduler", scheduler.map(|s| s.as_str().to_owned())),
        ("forwarding", forwarding.map(|f| f.as_str().to_owned())),
        ("affinity", affinity.map(|a| a.as_str().to_owned())),
    ] {
        if let Some(value) = value {
            service[key] = value.into();
        }
    }
    let body = serde_json::json!({ "services": { name.clone(): service } });
    // Read here first, as lbd would, so a mistake is named by the flag that gave it (lbd
    // only sees a request body); what depends on lbd's state (a frontend another service
    // has) lbd still refuses.
    if let Err(error) = ServiceFile::parse(&body.to_string(), "lbctl add-service".as_ref()) {
        match (error.field(), &error) {
            (Some(field), ConfigError::Invalid { message, .. }) => {
                bail!("{}: {message}", flag_of(field))
            }
            _ => return Err(error.into()),
        }
    }
    let result: ChangeResult = api
        .json(
            Method::POST,
            "/v1/services",
            Some(body.to_string().into_bytes()),
        )
        .await?;
    report_change(&result, json, &format!("added service {name}"))
}

/// The flag a field of the service `add_service` builds came from (`ports[1]`: `--port`,
/// `health.http.path`: `--health-path`). The messages quote the value, so the flag alone
/// tells which of several.
fn flag_of(field: &str) -> String {
    let head = field.split(['[', '.']).next().unwrap_or(field);
    match head {
        "services" => "the service name".to_owned(),
        "ports" => "--port".to_owned(),
        "backends" => "--backend".to_owned(),
        "health" if field.ends_with(".path") => "--health-path".to_owned(),
        "health" if field.ends_with(".port") => "--health-port".to_owned(),
        "health" if field.ends_with(".interval") => "--health-interval".to_owned(),
        other => format!("--{other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_is_named_by_the_flag_it_came_from() {
        for (field, flag) in [
            ("ports[1]", "--port"),
            ("backends[1]", "--backend"),
            ("backends[1].address", "--backend"),
            ("vip", "--vip"),
            ("services", "the service name"),
            ("health.http.path", "--health-path"),
            ("health.interval", "--health-interval"),
        ] {
            assert_eq!(flag_of(field), flag, "{field}");
        }
    }
}
