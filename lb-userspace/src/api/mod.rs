//! The admin API: HTTP/JSON over a Unix socket (mode 0600), optionally over TCP with a bearer
//! token. [`crate::control::server`] is lbd's side, [`client`] is lbctl's; the types here are the
//! wire format of both, defined once.
//!
//! | method and path                          | body / query                     | answer |
//! |------------------------------------------|----------------------------------|--------|
//! | `GET /v1/status`                         |                                  | [`Status`] |
//! | `GET /v1/services`                       |                                  | [`ServiceList`] |
//! | `POST /v1/services`                      | service-file text (`services:`)  | [`ChangeResult`] |
//! | `DELETE /v1/services/{name}`             |                                  | [`ChangeResult`] |
//! | `POST /v1/apply`                         | service-file text                | [`ChangeResult`] |
//! | `POST /v1/services/{name}/backends`      | [`BackendRequest`]               | [`ChangeResult`] |
//! | `POST /v1/services/{name}/backends/remove` | [`BackendRequest`]             | [`ChangeResult`] |
//! | `POST /v1/services/{name}/backends/drain`  | [`BackendRequest`]             | [`ChangeResult`] |
//! | `GET /v1/stats`                          |                                  | [`report::Report`] |
//! | `GET /v1/flows`                          | `?service=NAME&limit=N`          | [`FlowList`] |
//! | `GET /v1/explain`                        | `?protocol=tcp&source=A:P&destination=A:P` | [`Explained`] |
//! | `GET /metrics`                           |                                  | Prometheus text |
//!
//! Errors are `{"error": "..."}` with 400 (bad request), 401 (token), 404 (no such service or
//! backend), 409 (conflict), 500 (the node failed); a failed request changes nothing.

pub mod client;
pub mod report;

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use lb_common::maps::{proto, tcp_state};

use crate::{
    dataplane::Attachment,
    source::api_state::{ServiceChanges, Source},
};

/// The largest request body lbd takes. lbctl refuses a larger one before sending it: a server
/// that stops reading mid-upload closes with data unread, and the client then sees a broken
/// pipe instead of the answer.
pub const MAX_BODY_BYTES: usize = 2 << 20;

/// What the TCP API's bearer token must be, said in errors about a token file.
pub const TOKEN_RULE: &str = "one line of at least 16 characters without spaces";

/// Whether `token` (a token file's text, trimmed) is a bearer token: the rule lbd reads its
/// file by and lbctl checks before sending (a control character could not be sent in a
/// header at all).
pub fn is_token(token: &str) -> bool {
    token.len() >= 16 && !token.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// What both sides say of a body over [`MAX_BODY_BYTES`].
pub fn body_too_large(bytes: Option<usize>) -> String {
    let size = bytes.map_or(String::new(), |b| format!(" ({:.1} MB)", b as f64 / 1e6));
    format!(
        "the request body{size} is over the API's limit of {} MB; send the services in smaller files",
        MAX_BODY_BYTES >> 20
    )
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub generation: u64,
    pub uptime_s: u64,
    pub config: String,
    pub attachments: Vec<AttachmentStatus>,
    /// Where the socket-level programs are attached; `None`: socket-level balancing is off.
    #[serde(default)]
    pub sockets: Option<SocketStatus>,
    /// Set when a failed change could not be undone.
    pub degraded: Option<String>,
    pub changes: Vec<ChangeCount>,
    /// Set when lbd follows a swarm (`lbd run --swarm`).
    #[serde(default)]
    pub swarm: Option<SwarmStatus>,
    /// Set when lbd announces VIPs through BIRD (`lbd.bgp`).
    #[serde(default)]
    pub bgp: Option<BgpStatus>,
    /// Set when the kernel may give the node's own connections ports meshlb gives flows
    /// (`crate::dataplane::node_ports`): what is shared, and the fix.
    #[serde(default)]
    pub node_ports_shared: Option<String>,
    /// Set while the service file's last reload was refused for what it says: lbd runs the
    /// configuration it had, not the file's, until a reload of the file applies.
    #[serde(default)]
    pub config_refused: Option<ConfigRefused>,
}

/// The service file's refusal, kept until a reload of the file applies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRefused {
    /// The service file.
    pub file: String,
    /// Why its last reload was refused.
    pub error: String,
    /// When it was first refused (Unix seconds), and how long ago that was: a refusal whose
    /// error text changes (the file edited, still wrong) keeps its first time.
    pub since_unix_s: u64,
    pub age_s: u64,
}

/// How announcing the VIPs through BIRD is doing (`crate::announce`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BgpStatus {
    /// The include file BIRD reads the VIPs from, and BIRD's control socket.
    pub include: String,
    pub socket: String,
    /// The VIPs lbd announces: those with a usable backend, and the reply anchor. BIRD has
    /// them while `in_sync`.
    pub vips: Vec<std::net::IpAddr>,
    /// Whether BIRD took the last change of the VIPs and, as its last check found (every few
    /// seconds, and the round after a change BIRD took), runs them (`None`: not known yet,
    /// just after lbd started).
    pub in_sync: Option<bool>,
    /// BIRD's BGP sessions, which carry the VIPs to the routers, as the last check found them
    /// (every few seconds); `None`: not checked yet, or BIRD did not answer it.
    #[serde(default)]
    pub sessions: Option<Vec<crate::announce::BgpSession>>,
    /// The BGP sessions (not disabled) the last check that BIRD answered found, kept while
    /// it does not answer: `meshlb_bgp_session_established` reads 0 for each then.
    #[serde(default)]
    pub sessions_last_known: Vec<String>,
    /// Rounds (one a second while a change is refused, one per check otherwise) in which
    /// BIRD could not be told of the VIPs, or did not run them, since lbd started.
    pub failures: u64,
    /// The last failure while it lasts.
    pub last_error: Option<String>,
    /// Seconds since BIRD last answered well; `None`: never since lbd started.
    pub last_ok_age_s: Option<u64>,
    /// Why lbd could not record where it announces, if it could not: `lbd cleanup` then
    /// withdraws only through the BIRD settings it is given.
    pub record_error: Option<String>,
}

impl Status {
    /// What is wrong, though lbd answers: a failed change not undone (`degraded`), the
    /// service file refused, an interface deleted (`missing`), the swarm's Engine not answering, BIRD not taking the
    /// VIPs, none of BIRD's BGP sessions established (or none there), or where they are
    /// announced not recorded. Empty: healthy.
    /// `lbctl status` exits `Unhealthy::EXIT_CODE` when there is any.
    pub fn problems(&self) -> Vec<String> {
        let mut problems: Vec<String> = self
            .degraded
            .iter()
            .map(|why| format!("degraded: {why}"))
            .collect();
        problems.extend(self.config_refused.as_ref().map(|r| {
            format!(
                "the service file {} is refused (for {} s; the running configuration stays \
                 until it is fixed): {}",
                r.file, r.age_s, r.error
            )
        }));
        problems.extend(
            self.attachments
                .iter()
                .filter(|a| a.is_missing())
                .map(|a| format!("interface {} is missing", a.interface)),
        );
        problems.extend(self.node_ports_shared.clone());
        if let Some(swarm) = self.swarm.as_ref().filter(|s| !s.engine_up) {
            problems.push(format!(
                "the Engine at {} does not answer",
                swarm.docker_host
            ));
        }
        if let Some(bgp) = &self.bgp {
            if bgp.in_sync == Some(false) {
                problems.push(format!(
                    "announcing through BIRD: {}",
                    bgp.last_error.as_deref().unwrap_or("failed")
                ));
            }
            if let Some(e) = &bgp.record_error {
                problems.push(format!("where lbd announces is not recorded: {e}"));
            }
            if bgp.sessions.as_ref().is_some_and(Vec::is_empty) {
                problems.push(format!(
                    "BIRD runs no BGP protocol: no router hears the VIPs; add one to bird.conf \
                     that exports the routes of {} and {} (the include file {}), as \
                     deploy/bird/ shows",
                    crate::announce::PROTOCOL_V4,
                    crate::announce::PROTOCOL_V6,
                    bgp.include
                ));
            }
            if let Some(sessions) = bgp.sessions.as_ref().filter(|s| !s.is_empty())
                && !sessions.iter().any(|s| s.established())
            {
                let each: Vec<String> = sessions
                    .iter()
                    .map(|s| format!("{} {}", s.protocol, s.state_text()))
                    .collect();
                problems.push(format!(
                    "no BGP session of BIRD's is established ({}): no router hears the VIPs; \
                     `birdc show protocols all NAME` says more",
                    each.join(", ")
                ));
            }
        }
        problems
    }
}

/// lbd answered, and said what is wrong (`Status::problems`).
#[derive(Debug, thiserror::Error)]
#[error("not healthy: {}", .0.join("; "))]
pub struct Unhealthy(pub Vec<String>);

impl Unhealthy {
    /// `lbctl status`'s exit code then: not 1 (lbd not reached, or a refusal), nor clap's 2
    /// (a usage error).
    pub const EXIT_CODE: u8 = 3;
}

/// How the swarm follower is doing.
#[derive(Debug, Serialize, Deserialize)]
pub struct SwarmStatus {
    pub docker_host: String,
    /// Whether the last read of the Engine succeeded.
    pub engine_up: bool,
    pub reads_ok: u64,
    pub reads_failed: u64,
    /// Why the last read failed; `None` once a read succeeds.
    pub last_error: Option<String>,
    /// Seconds since the Engine last answered well; `None`: never since lbd started.
    pub last_ok_age_s: Option<u64>,
    /// This node's address in the swarm, as the Engine says.
    pub node_addr: Option<std::net::IpAddr>,
    /// This node's address in the mesh tunnel: its data-path address (see the swarm
    /// snapshot's `mesh_addr`), the same as `node_addr` unless it joined with
    /// `--data-path-addr`.
    #[serde(default)]
    pub mesh_addr: Option<std::net::IpAddr>,
    /// Swarm services known (published or not).
    pub services: usize,
    /// Whether the Engine says which tasks are being stopped (managers only): those then take
    /// no new flows here.
    #[serde(default)]
    pub stopping_known: bool,
    /// The last good read of the Engine.
    #[serde(default)]
    pub last_read: Option<EngineRead>,
    /// Tasks known to be stopping (they take no new flows).
    #[serde(default)]
    pub tasks_stopping: usize,
    /// Local tasks whose health check has not passed.
    #[serde(default)]
    pub tasks_unhealthy: usize,
    /// The stop notices this node tells the other nodes' lbd and hears from them.
    #[serde(default)]
    pub notices: crate::source::swarm::notices::NoticeStatus,
    /// Container starts heard from the Engine: each makes a read follow at once, so a new
    /// container's VIPs are served before it calls them.
    #[serde(default)]
    pub container_starts: u64,
}

/// How long a read of the Engine took, and the wait it set before the next (longer than the
/// usual 500 ms only where reads are slow: a large swarm).
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct EngineRead {
    pub took_ms: u64,
    pub next_after_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AttachmentStatus {
    pub interface: String,
    pub ifindex: u32,
    pub mode: String,
    pub adopted: bool,
    /// `attached`, or `missing`: the interface was deleted (meshlb attaches again when an
    /// interface of that name exists).
    #[serde(default)]
    pub state: String,
    /// How often meshlb attached again to this interface after it was made again.
    #[serde(default)]
    pub reattached: u64,
}

impl AttachmentStatus {
    /// `state` of an interface meshlb's program is attached to.
    pub const ATTACHED: &'static str = "attached";
    /// `state` of an interface that was deleted.
    pub const MISSING: &'static str = "missing";

    pub fn is_missing(&self) -> bool {
        self.state == Self::MISSING
    }
}

impl From<&Attachment> for AttachmentStatus {
    fn from(a: &Attachment) -> Self {
        Self {
            interface: a.interface.clone(),
            ifindex: a.ifindex,
            mode: a.mode.to_string(),
            adopted: a.adopted,
            state: Self::ATTACHED.into(),
            reattached: 0,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SocketStatus {
    pub cgroup: String,
    /// The programs were swapped into links a previous `lbd` pinned.
    pub adopted: bool,
    /// The network namespace whose sockets are translated (lbd's).
    pub netns_cookie: u64,
}

impl From<&crate::dataplane::SocketAttachment> for SocketStatus {
    fn from(a: &crate::dataplane::SocketAttachment) -> Self {
        Self {
            cgroup: a.cgroup.display().to_string(),
            adopted: a.adopted,
            netns_cookie: a.netns_cookie,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ChangeCount {
    pub trigger: Trigger,
    pub outcome: Outcome,
    pub count: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ServiceList {
    pub generation: u64,
    pub services: Vec<ServiceEntry>,
    /// Backend edits kept for services the file no longer defines.
    pub orphaned_edits: Vec<String>,
    /// Every swarm service this node knows, published or not: VIPs and tasks.
    #[serde(default)]
    pub swarm: std::collections::BTreeMap<String, crate::source::swarm::SwarmDetails>,
    /// Swarm services left out, and why.
    #[serde(default)]
    pub swarm_refused: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ServiceEntry {
    pub name: String,
    pub source: Source,
    pub vip: Option<std::net::IpAddr>,
    pub ports: Vec<String>,
    pub scheduler: String,
    pub forwarding: String,
    /// Whether API backend edits are laid over this file service.
    pub edited: bool,
    pub backends: Vec<BackendEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct BackendEntry {
    /// As written: `ADDR` or `ADDR:PORT`.
    pub backend: String,
    pub weight: u32,
    pub state: String,
    /// What its health checks say; `None` for a service without `health:`.
    #[serde(default)]
    pub health: Option<BackendHealth>,
}

/// A checked backend's health, for `lbctl list`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackendHealth {
    pub state: crate::source::health::Health,
    /// What is checked: `tcp 198.18.2.10:8080`, `http GET /healthz expecting 200 ...`.
    pub check: String,
    /// Seconds since the state began (for `unknown`: since the backend was first seen).
    pub since_s: u64,
    /// The last failure's reason, kept after later successes.
    pub last_error: Option<String>,
    /// How long the last successful check took.
    pub last_check_ms: Option<f64>,
    /// Times it went down or came back up.
    pub transitions: u64,
}

/// A backend to add, remove or drain: `{"backend": "198.18.2.10:8080", "weight": 2}`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendRequest {
    pub backend: String,
    #[serde(default)]
    pub weight: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ChangeResult {
    /// `applied` or `unchanged`.
    pub outcome: Outcome,
    pub generation: u64,
    /// For `apply`: which API services were added, changed, removed.
    #[serde(default)]
    pub services: ServiceChanges,
    /// For a backend's change: the service's backends whose weight it changed (`None`: not
    /// a backend of the service), as `lbctl list` names them.
    #[serde(default)]
    pub backends: Vec<BackendWeightChange>,
    /// Swarm services this change took off the node: the file and the API win over the
    /// swarm (a name or a published port taken), so the change stands, but it is said here.
    #[serde(default)]
    pub displaced_swarm_services: Vec<DisplacedService>,
    /// What the change left that the operator would want to know (a service with no usable
    /// backend), one sentence each.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// A swarm service no longer served on this node, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisplacedService {
    pub service: String,
    pub reason: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct BackendWeightChange {
    pub backend: String,
    pub before: Option<u32>,
    pub after: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct FlowList {
    /// Entries scanned stop at `limit`: a sample, not the whole table.
    pub limit: usize,
    pub flows: Vec<FlowEntry>,
    /// More flows were tracked than `limit` (of the service asked for, if one was).
    #[serde(default)]
    pub truncated: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct FlowEntry {
    /// The service's name (as `list` and `stats` give it), or "(removed service ID)".
    pub service: String,
    /// The service's mapping the flow came through, as written (`80:8080/tcp`); none for a
    /// removed service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping: Option<String>,
    pub protocol: String,
    pub client: SocketAddr,
    pub frontend: SocketAddr,
    pub backend: SocketAddr,
    pub tcp_state: String,
    /// The idle limit that applies to the flow now.
    pub idle_timeout_s: u32,
    /// Seconds until the flow expires if it stays idle (to about a second).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_s: Option<u64>,
}

/// Query of `GET /v1/flows`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowQuery {
    pub service: Option<String>,
    pub limit: Option<usize>,
}

/// Query of `GET /v1/explain`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainQuery {
    pub protocol: String,
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

/// Most flows one `GET /v1/flows` returns.
pub const MAX_FLOWS: usize = 10_000;
pub const DEFAULT_FLOWS: usize = 100;

/// What started a change; a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Startup,
    Signal,
    File,
    Api,
    /// The node's addresses changed (published ports follow them).
    Addresses,
    /// The swarm changed (`lbd run --swarm`).
    Swarm,
    /// A checked backend went down or came back up.
    Health,
}

/// How a change ended; a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Programmed.
    Applied,
    /// Same as what runs: nothing written.
    Unchanged,
    /// Invalid input: nothing changed.
    Rejected,
    /// The kernel refused a write; the previous configuration was restored.
    Failed,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Startup => "startup",
            Self::Signal => "signal",
            Self::File => "file",
            Self::Api => "api",
            Self::Addresses => "addresses",
            Self::Swarm => "swarm",
            Self::Health => "health",
        }
    }
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Unchanged => "unchanged",
            Self::Rejected => "rejected",
            Self::Failed => "failed",
        }
    }
}

/// `lbctl explain`'s answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Explained {
    /// The connection-table entry, if the flow is tracked: it decides, whatever the table says.
    pub tracked: Option<TrackedFlow>,
    /// What the selection would pick for a new flow, and why.
    pub selection: String,
    /// Whether the destination is a frontend at all (else the kernel's, untouched).
    #[serde(default = "frontend_by_default")]
    pub frontend: bool,
    pub round_robin: bool,
    /// How replies from the flow's backend (tracked, or the one the selection names) are
    /// translated at a node with no entry for them (`plan::ReplyTranslation`); none without
    /// one backend to name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replies: Option<String>,
}

/// An answer of an lbd that did not say: it explained a frontend.
fn frontend_by_default() -> bool {
    true
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrackedFlow {
    pub backend: SocketAddr,
    pub tcp_state: String,
    pub idle_timeout_s: u32,
    /// The backend left its service: the flow moves (or ends) on its next packet.
    pub backend_removed: bool,
}

pub fn tcp_state_name(protocol: u8, state: u8) -> String {
    if protocol != proto::TCP {
        return "-".into();
    }
    match state {
        tcp_state::SYN_SENT => "syn_sent",
        tcp_state::ESTABLISHED => "established",
        tcp_state::CLOSING => "closing",
        tcp_state::CLIENT_CLOSED => "client_closed",
        tcp_state::BACKEND_CLOSED => "backend_closed",
        _ => "none",
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_names_each_problem_and_a_healthy_one_none() {
        let status = |extra: serde_json::Value| -> Status {
            let mut value = serde_json::json!({
                "generation": 3, "uptime_s": 10, "config": "services.yaml", "changes": [],
                "degraded": null,
                "attachments": [
                    { "interface": "eth0", "ifindex": 2, "mode": "native", "adopted": false,
                      "state": "attached" },
                    { "interface": "eth1", "ifindex": 3, "mode": "generic", "adopted": false,
                      "state": "attached" },
                ],
            });
            for (k, v) in extra.as_object().unwrap() {
                value[k] = v.clone();
            }
            serde_json::from_value(value).expect("a status")
        };
        let swarm = |up: bool| {
            serde_json::json!({
                "docker_host": "unix:///var/run/docker.sock", "engine_up": up, "reads_ok": 1,
                "reads_failed": 0, "last_error": null, "last_ok_age_s": 1, "node_addr": null,
                "services": 0,
            })
        };
        let bgp = |in_sync: Option<bool>, record_error: Option<&str>| {
            serde_json::json!({
                "include": "/etc/bird/meshlb-vips.conf", "socket": "/run/bird/bird.ctl",
                "vips": ["198.18.100.1"], "in_sync": in_sync, "failures": 1,
                "last_error": (in_sync == Some(false))
                    .then_some("BIRD's control socket /run/bird/bird.ctl does not answer"),
                "last_ok_age_s": 1, "record_error": record_error,
            })
        };
        assert!(status(serde_json::json!({})).problems().is_empty());
        // Not asked yet (lbd just started) is no problem; in sync neither.
        for in_sync in [None, Some(true)] {
            assert!(
                status(serde_json::json!({ "bgp": bgp(in_sync, None) }))
                    .problems()
                    .is_empty()
            );
        }
        assert_eq!(
            status(serde_json::json!({ "bgp": bgp(Some(false), Some("disk full")) })).problems(),
            [
                "announcing through BIRD: BIRD's control socket /run/bird/bird.ctl does not \
                 answer",
                "where lbd announces is not recorded: disk full",
            ]
        );
        // No BGP protocol at all in BIRD: nothing carries the VIPs to a router.
        let mut without_sessions = bgp(Some(true), None);
        without_sessions["sessions"] = serde_json::json!([]);
        assert_eq!(
            status(serde_json::json!({ "bgp": without_sessions })).problems(),
            [
                "BIRD runs no BGP protocol: no router hears the VIPs; add one to bird.conf that \
                 exports the routes of meshlb_vips4 and meshlb_vips6 (the include file \
                 /etc/bird/meshlb-vips.conf), as deploy/bird/ shows"
            ]
        );
        // No BGP session established is a problem; one established is enough (a router
        // hears the VIPs).
        let mut with_sessions = bgp(Some(true), None);
        with_sessions["sessions"] = serde_json::json!([
            { "protocol": "router_a", "state": "up", "info": "Established" },
            { "protocol": "router_b", "state": "start",
              "info": "Active Received: Administrative shutdown" },
            { "protocol": "old", "state": "down", "info": "" },
        ]);
        assert!(
            status(serde_json::json!({ "bgp": with_sessions.clone() }))
                .problems()
                .is_empty(),
            "one established: a router hears the VIPs"
        );
        with_sessions["sessions"][0] =
            serde_json::json!({ "protocol": "router_a", "state": "start", "info": "Connect" });
        assert_eq!(
            status(serde_json::json!({ "bgp": with_sessions })).problems(),
            [
                "no BGP session of BIRD's is established (router_a start: Connect, \
                 router_b start: Active Received: Administrative shutdown, old down): no router \
                 hears the VIPs; `birdc show protocols all NAME` says more"
            ]
        );
        assert!(
            status(serde_json::json!({ "swarm": swarm(true) }))
                .problems()
                .is_empty()
        );
        let refused = status(serde_json::json!({
            "config_refused": { "file": "services.yaml", "error": "unknown field `port`",
                                "since_unix_s": 1000, "age_s": 12 },
        }));
        assert_eq!(
            refused.problems(),
            [
                "the service file services.yaml is refused (for 12 s; the running configuration \
                 stays until it is fixed): unknown field `port`"
            ]
        );
        let unhealthy = status(serde_json::json!({
            "degraded": "a write failed and was not undone",
            "swarm": swarm(false),
            "node_ports_shared": "the kernel may give the node's own connections ports …",
            "attachments": [
                { "interface": "eth0", "ifindex": 2, "mode": "native", "adopted": false,
                  "state": "missing" },
                { "interface": "eth1", "ifindex": 3, "mode": "generic", "adopted": false,
                  "state": "attached" },
            ],
        }));
        assert_eq!(
            Unhealthy(unhealthy.problems()).to_string(),
            "not healthy: degraded: a write failed and was not undone; interface eth0 is \
             missing; the kernel may give the node's own connections ports …; the Engine at \
             unix:///var/run/docker.sock does not answer"
        );
    }
}
