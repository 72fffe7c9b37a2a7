//! What the swarm tests, demo and bench do with `lbd --swarm` on the lab: start one per node,
//! read what it programs, make requests of either protocol, wait (bounded) for a condition.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::SwarmNode;
use crate::{Lbd, Netns, Proto, Reply, tcp_request, udp_request};

/// Starts `lbd run --swarm` (the binary `lbd`) in `node`'s namespace, following `node`'s
/// Engine, attached to the underlay (`eth0`) and `docker_gwbridge`, with `extra` arguments.
pub fn start_lbd(lbd: &Path, node: &SwarmNode, extra: &[&str]) -> Result<Lbd> {
    start_lbd_with(lbd, node, "services: {}\n", extra)
}

/// [`start_lbd`] with `services` as its service file (e.g. a `swarm:` policy section).
pub fn start_lbd_with(lbd: &Path, node: &SwarmNode, services: &str, extra: &[&str]) -> Result<Lbd> {
    let mut args = vec!["--swarm", "--docker-host", &node.docker_host];
    args.extend_from_slice(extra);
    Lbd::start(lbd, &node.ns, services, &["eth0", "docker_gwbridge"], &args)
        .with_context(|| format!("lbd --swarm on node {}", node.index))
}

/// The backend addresses `lb` programs for `service` (`lbctl list`); `None` when it has no
/// such service.
pub fn programmed_backends(lb: &Lbd, service: &str) -> Result<Option<BTreeSet<IpAddr>>> {
    let (ok, out, err) = lb.lbctl(&["--output", "json", "list"])?;
    anyhow::ensure!(ok, "lbctl list: {err}");
    let list: serde_json::Value = serde_json::from_str(&out).context("lbctl list json")?;
    let Some(entry) = list["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == service))
    else {
        return Ok(None);
    };
    let mut addrs = BTreeSet::new();
    for backend in entry["backends"].as_array().into_iter().flatten() {
        let text = backend["backend"].as_str().unwrap_or_default();
        let addr = text
            .parse::<SocketAddr>()
            .map(|a| a.ip())
            .or_else(|_| text.parse::<IpAddr>())
            .with_context(|| format!("backend {text:?} of {service}"))?;
        addrs.insert(addr);
    }
    Ok(Some(addrs))
}

/// One request of `proto` from `ns` to `target` (the kit's name-server protocol).
pub fn request(ns: &Netns, target: SocketAddr, proto: Proto, timeout: Duration) -> Result<Reply> {
    match proto {
        Proto::Tcp => tcp_request(ns, target, timeout),
        Proto::Udp => udp_request(ns, target, timeout),
    }
}

/// Checks `check` until it holds, for at most `limit`; how long it took. A check that
/// errors fails at once. Checks run at least every 50 ms (plus their own time).
pub fn wait_until(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<Duration> {
    let start = Instant::now();
    // Bounded by time; the count bound guards against a clock that does not move.
    for _ in 0..limit.as_millis() / 50 + 2 {
        let at = start.elapsed();
        if check().with_context(|| format!("checking {what}"))? {
            return Ok(at);
        }
        if start.elapsed() >= limit {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what}: not within {limit:?}")
}
