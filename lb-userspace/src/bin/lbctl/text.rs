//! lbctl's plain-text rendering: aligned tables, cells and names as the operator reads them.

use lb_userspace::{
    announce::{BgpSession, SessionCondition},
    api::{BackendHealth, BgpStatus, ServiceList},
    source::{
        file::{BackendSpec, POLICY_VIP_SUFFIX, PortMapping},
        health::Health,
    },
};

/// `up 2m10s`, `down 12s (connecting: Connection refused)`, `unknown`.
pub(crate) fn health_cell(h: &BackendHealth) -> String {
    let state = h.state.as_str();
    if h.state == Health::Unknown {
        return state.into();
    }
    let since = format_age(h.since_s);
    match (&h.last_error, h.state) {
        (Some(error), Health::Down) => format!("{state} {since} ({error})"),
        _ => format!("{state} {since}"),
    }
}

/// `45s`, `2m10s`, `3h4m`, `2d5h`.
fn format_age(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3_600 => format!("{}m{}s", s / 60, s % 60),
        3_600..86_400 => format!("{}h{}m", s / 3_600, s % 3_600 / 60),
        _ => format!("{}d{}h", s / 86_400, s % 86_400 / 3_600),
    }
}

/// A backend as clients reach it, the name `lbctl stats` uses too: `ADDR:PORT`. A backend
/// listed without a port is reached at its service's mappings' backend ports
/// (`198.18.2.10:8080`, or `198.18.2.10:5353,8080` for several); `drain`, `remove-backend`
/// and `add-backend` take this name, the address, or the address with one of the ports.
pub(crate) fn reached_as(listed: &str, mappings: &[String]) -> String {
    let Ok(spec) = listed.parse::<BackendSpec>() else {
        return listed.to_owned();
    };
    if spec.port.is_some() {
        return listed.to_owned();
    }
    let mut ports: Vec<u16> = mappings
        .iter()
        .filter_map(|m| m.parse::<PortMapping>().ok())
        .map(|m| m.backend)
        // A VIP that takes every port (a swarm VIP): the port is the client's.
        .filter(|port| *port != 0)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    match (spec.address, ports.is_empty()) {
        (_, true) => listed.to_owned(),
        (std::net::IpAddr::V6(a), false) => format!("[{a}]:{}", ports.join(",")),
        (std::net::IpAddr::V4(a), false) => format!("{a}:{}", ports.join(",")),
    }
}

/// Percent-encodes a path or query value.
pub(crate) fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Prints aligned columns.
pub(crate) fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// What `lbctl list` says about swarm services beyond the table: VIPs, tasks this node cannot
/// reach yet, services left out.
pub(crate) fn print_swarm_details(list: &ServiceList) {
    for (name, d) in &list.swarm {
        let vips: Vec<String> = d
            .vips
            .iter()
            .map(|(net, ip)| format!("{ip} on {net}"))
            .collect();
        // The policy's VIP, served as its own service (`NAME.vip`) when it is.
        let policy_vip = format!("{name}{POLICY_VIP_SUFFIX}");
        let policy_vip = list
            .services
            .iter()
            .find(|s| s.name == policy_vip)
            .and_then(|s| s.vip)
            .map(|vip| format!("; policy VIP: {vip} (service {policy_vip})"))
            .unwrap_or_default();
        println!(
            "swarm {name}: {} local task(s); VIPs: {}{policy_vip}",
            d.local_tasks.len(),
            if vips.is_empty() {
                "-".to_owned()
            } else {
                vips.join(", ")
            }
        );
        for (task, node) in &d.remote_tasks {
            println!("  {task} on node {node}, through the mesh tunnel");
        }
        for (task, node) in &d.unused_tasks {
            let node = node.map_or("an unknown node".to_owned(), |n| format!("node {n}"));
            println!("  not used from this node: {task} on {node}");
        }
        for task in &d.stopping_tasks {
            println!("  being stopped: {task} keeps its flows, takes no new ones");
        }
        for task in &d.unhealthy_tasks {
            println!(
                "  not healthy here: {task} is no backend here (its flows follow \
                 on_backend_removal); other nodes' new flows for it go to this node's healthy \
                 tasks"
            );
        }
        for problem in &d.problems {
            println!("  {problem}");
        }
    }
    for (name, reason) in &list.swarm_refused {
        println!("swarm {name}: NOT SERVED: {reason}");
    }
}

/// `12 s ago`, or `never` (`None`): when something last went well.
pub(crate) fn ago(age_s: Option<u64>) -> String {
    age_s.map_or("never".to_owned(), |a| format!("{a} s ago"))
}

/// `lbctl status`'s lines about announcing through BIRD.
pub(crate) fn print_bgp(bgp: &BgpStatus) {
    let vips: Vec<String> = bgp.vips.iter().map(ToString::to_string).collect();
    let age = ago(bgp.last_ok_age_s);
    let state = match bgp.in_sync {
        Some(true) => "runs the VIPs",
        Some(false) => "DOES NOT RUN THE VIPS",
        None => "not asked yet",
    };
    println!(
        "bgp: BIRD at {} {state} (last in sync {age}; {} failure(s) since start), include {}",
        bgp.socket, bgp.failures, bgp.include
    );
    println!(
        "bgp: announcing {}",
        if vips.is_empty() {
            "nothing".to_owned()
        } else {
            vips.join(", ")
        }
    );
    if let (Some(false), Some(e)) = (bgp.in_sync, &bgp.last_error) {
        println!("bgp: last error: {e}");
    }
    if let Some(sessions) = &bgp.sessions {
        println!("bgp: sessions: {}", sessions_text(sessions));
    }
    if let Some(e) = &bgp.record_error {
        println!("bgp: where lbd announces is not recorded for `lbd cleanup`: {e}");
    }
}

/// `router_a established, router_b NOT ESTABLISHED (start: Active), old disabled`.
fn sessions_text(sessions: &[BgpSession]) -> String {
    if sessions.is_empty() {
        return "none (BIRD runs no BGP protocol)".to_owned();
    }
    let texts: Vec<String> = sessions
        .iter()
        .map(|s| {
            let name = &s.protocol;
            match s.condition() {
                SessionCondition::Established => format!("{name} established"),
                SessionCondition::Disabled => format!("{name} disabled"),
                SessionCondition::NotEstablished => {
                    format!("{name} NOT ESTABLISHED ({})", s.state_text())
                }
            }
        })
        .collect();
    texts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::reached_as;

    #[test]
    fn backends_are_named_as_clients_reach_them() {
        let one = ["80:8080/tcp".to_owned()];
        let two = ["80:8080/tcp".to_owned(), "53:5353/udp".to_owned()];
        assert_eq!(reached_as("198.18.2.10", &one), "198.18.2.10:8080");
        assert_eq!(reached_as("198.18.2.10", &two), "198.18.2.10:5353,8080");
        assert_eq!(reached_as("198.18.2.10:9000", &one), "198.18.2.10:9000");
        assert_eq!(reached_as("fd00:2::a", &one), "[fd00:2::a]:8080");
        assert_eq!(
            reached_as("198.19.10.5", &["0/tcp".to_owned()]),
            "198.19.10.5"
        );
    }
}
