//! lbd's side of the admin API and the metrics endpoint.

mod clock;
#[allow(unused_imports)]
pub use clock::*;
use std::{
    collections::BTreeMap,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path as UrlPath, Query, Request, State},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{delete, get, post},
};
use lb_common::maps::proto;
use tracing::info;

use crate::api::{
    BackendEntry, BackendRequest, ChangeCount, ChangeResult, DEFAULT_FLOWS, ErrorBody,
    ExplainQuery, FlowEntry, FlowList, FlowQuery, MAX_FLOWS, ServiceEntry, ServiceList,
    SocketStatus, Status,
};
use crate::{
    api::report::Report,
    control::shared::{Shared, lock},
    daemon::{Daemon, DaemonError},
    source::api_state::{BackendRef, OverlayError, ServiceChanges, Source},
    source::file::{BackendSpec, ServiceFile},
};

/// An answer that is not 2xx.
pub struct ApiError(pub(super) StatusCode, pub(super) String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(ErrorBody { error: self.1 })).into_response()
    }
}

impl From<DaemonError> for ApiError {
    fn from(e: DaemonError) -> Self {
        let code = match &e {
            DaemonError::Overlay(OverlayError::NotFound(_)) => StatusCode::NOT_FOUND,
            DaemonError::Overlay(OverlayError::Conflict(_)) => StatusCode::CONFLICT,
            e if e.is_input() => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, e.to_string())
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

type ApiResult<T> = Result<axum::Json<T>, ApiError>;

/// Runs `f` on the daemon off the async threads: map writes are syscalls that may wait for
/// an RCU grace period.
async fn with_daemon<T: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&mut Daemon) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || f(&mut shared.daemon()))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("handler: {e}")))?
}

/// The routes, without authentication (the Unix socket's mode guards it).
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/services", get(list_services).post(add_services))
        .route("/v1/services/{name}", delete(remove_service))
        .route("/v1/apply", post(apply))
        .route("/v1/services/{name}/backends", post(add_backend))
        .route("/v1/services/{name}/backends/remove", post(remove_backend))
        .route("/v1/services/{name}/backends/drain", post(drain_backend))
        .route("/v1/stats", get(stats))
        .route("/v1/flows", get(flows))
        .route("/v1/explain", get(explain))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ApiError(
                StatusCode::NOT_FOUND,
                "no such endpoint; see `lbctl --help` for what the API serves".into(),
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::api::MAX_BODY_BYTES,
        ))
        .layer(middleware::from_fn_with_state(BODY_TIMEOUT, body_in_time))
        .layer(middleware::map_response(json_errors))
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            count_requests,
        ))
        .with_state(shared)
}

/// Time a request has to send its body once its headers came (the listeners give the headers
/// theirs): ample for the largest body the API takes over a slow link.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads a request's body (at most `MAX_BODY_BYTES`) within `deadline` before its route does.
/// A client that sends its headers and then its body slowly, or not at all, would otherwise
/// hold one of the listener's few connections for its whole lifetime (and `FINISH` after):
/// it gets a 408, and the connection closes.
async fn body_in_time(
    State(deadline): State<std::time::Duration>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let read = axum::body::to_bytes(body, crate::api::MAX_BODY_BYTES);
    match tokio::time::timeout(deadline, read).await {
        Ok(Ok(bytes)) => next.run(Request::from_parts(parts, bytes.into())).await,
        Ok(Err(e)) => {
            let e = e.into_inner();
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                // `json_errors` says what the limit is.
                return StatusCode::PAYLOAD_TOO_LARGE.into_response();
            }
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("reading the request body: {e}"),
            )
            .into_response()
        }
        Err(_) => {
            let mut response = ApiError(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} s of its headers",
                    deadline.as_secs_f64()
                ),
            )
            .into_response();
            response.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            response
        }
    }
}

/// Every error answer in the API's JSON form, those axum makes itself too (413 for a body
/// over its limit, 405, 415), so clients read one shape.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).trim().to_owned();
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        crate::api::body_too_large(None)
    } else if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    let mut json = ApiError(status, message).into_response();
    // Keep what the original said beyond its body (an Allow header, say).
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            json.headers_mut().insert(name.clone(), value.clone());
        }
    }
    json
}

/// `GET /metrics` alone, for the metrics listener.
pub fn metrics_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(shared)
}

async fn count_requests(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    record(&shared, response.status());
    response
}

pub(super) fn record(shared: &Shared, status: StatusCode) {
    *lock(&shared.requests).entry(status.as_u16()).or_default() += 1;
}

async fn status(State(shared): State<Arc<Shared>>) -> ApiResult<Status> {
    let bgp = shared.bgp_status();
    with_daemon(&shared, move |d| {
        Ok(axum::Json(Status {
            generation: d.generation(),
            uptime_s: d.uptime_s(),
            config: d
                .config_path()
                .map_or_else(|| "(none)".to_owned(), |p| p.display().to_string()),
            attachments: d.attachment_statuses(),
            sockets: d.socket_attachment().map(SocketStatus::from),
            degraded: d.degraded(),
            changes: d
                .changes()
                .iter()
                .map(|((trigger, outcome), count)| ChangeCount {
                    trigger: *trigger,
                    outcome: *outcome,
                    count: *count,
                })
                .collect(),
            swarm: d.swarm_status(),
            bgp,
            node_ports_shared: crate::dataplane::node_ports::shared_with_kernel(),
            config_refused: d.config_refused(),
        }))
    })
    .await
}

async fn list_services(State(shared): State<Arc<Shared>>) -> ApiResult<ServiceList> {
    with_daemon(&shared, |d| {
        let merged = d.merged();
        let services = merged
            .file
            .services
            .values()
            .map(|spec| {
                let source = merged
                    .sources
                    .get(&spec.name)
                    .copied()
                    .unwrap_or(Source::File);
                ServiceEntry {
                    name: spec.name.clone(),
                    source,
                    vip: spec.vip,
                    ports: spec.ports.iter().map(ToString::to_string).collect(),
                    scheduler: spec.scheduler.to_string(),
                    forwarding: spec.forwarding.to_string(),
                    edited: source == Source::File
                        && d.api_state()
                            .backend_edits
                            .get(&spec.name)
                            .is_some_and(|e| !e.is_empty()),
                    backends: spec
                        .backends
                        .iter()
                        .map(|b| BackendEntry {
                            backend: BackendRef::of(b).to_string(),
                            weight: b.weight,
                            state: d.backend_state(spec, b).into(),
                            health: d.backend_health(spec, b),
                        })
                        .collect(),
                }
            })
            .collect();
        Ok(axum::Json(ServiceList {
            generation: d.generation(),
            services,
            orphaned_edits: merged.orphaned_edits.clone(),
            swarm: d.swarm_services().details.clone(),
            swarm_refused: merged.swarm_refused.clone(),
        }))
    })
    .await
}

/// A service-file text from a request body: YAML or JSON, `services:` only (an `lbd:` or
/// `swarm:` section is refused, not ignored).
fn parse_body(body: &Bytes) -> Result<ServiceFile, ApiError> {
    let text = std::str::from_utf8(body).map_err(|_| bad_request("the body is not UTF-8"))?;
    let file = ServiceFile::parse(text, Path::new("request body"))
        .map_err(|e| bad_request(e.to_string()))?;
    file.only_services("request body").map_err(bad_request)?;
    Ok(file)
}

fn change_result(
    d: &Daemon,
    outcome: crate::api::Outcome,
    services: ServiceChanges,
    displaced: Vec<crate::api::DisplacedService>,
) -> axum::Json<ChangeResult> {
    axum::Json(ChangeResult {
        outcome,
        generation: d.generation(),
        services,
        backends: Vec::new(),
        displaced_swarm_services: displaced,
        warnings: Vec::new(),
    })
}

/// The warning for service `name` after a backend change: allowed (an operator may empty a
/// service on purpose), but a service left with no usable backend refuses new connections.
fn no_usable_backend(name: &str, usable: Option<usize>) -> Option<String> {
    (usable == Some(0)).then(|| {
        format!(
            "{name} has no usable backend now: new connections are refused (every backend is \
             removed, drained or failing its checks; `lbctl add-backend {name} ADDR:PORT` gives it one)"
        )
    })
}

/// `input` (a request body read), or its refusal counted as an API change rejected, as
/// refusals the daemon makes are.
async fn counted<T>(shared: &Arc<Shared>, input: Result<T, ApiError>) -> Result<T, ApiError> {
    if input.is_err() {
        with_daemon(shared, |d| {
            d.count_rejected_api();
            Ok(())
        })
        .await?;
    }
    input
}

/// A swarm service's backends are its running tasks: the API does not edit them.
fn not_swarm(d: &mut Daemon, name: &str) -> Result<(), ApiError> {
    if d.is_swarm_service(name) {
        d.count_rejected_api();
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!(
                "service {name:?} comes from the swarm: its backends are its running tasks; \
                 scale or update the swarm service, and give it a scheduler, timeouts or a \
                 removal policy in the service file's `swarm:` section"
            ),
        ));
    }
    Ok(())
}

async fn add_services(State(shared): State<Arc<Shared>>, body: Bytes) -> ApiResult<ChangeResult> {
    let parsed = parse_body(&body).and_then(|parsed| {
        if parsed.services.is_empty() {
            return Err(bad_request("request body: no services to add"));
        }
        Ok(parsed)
    });
    let parsed = counted(&shared, parsed).await?;
    with_daemon(&shared, move |d| {
        let names: Vec<String> = parsed.services.keys().cloned().collect();
        let (_, outcome, displaced) = d.change_api(|api, file| {
            for spec in parsed.services.into_values() {
                api.add_service(spec, file)?;
            }
            Ok(())
        })?;
        let changes = ServiceChanges {
            added: names,
            ..Default::default()
        };
        Ok(change_result(d, outcome, changes, displaced))
    })
    .await
}

async fn remove_service(
    State(shared): State<Arc<Shared>>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<ChangeResult> {
    with_daemon(&shared, move |d| {
        not_swarm(d, &name)?;
        let (_, outcome, displaced) = d.change_api(|api, file| api.remove_service(&name, file))?;
        let changes = ServiceChanges {
            removed: vec![name],
            ..Default::default()
        };
        Ok(change_result(d, outcome, changes, displaced))
    })
    .await
}

async fn apply(State(shared): State<Arc<Shared>>, body: Bytes) -> ApiResult<ChangeResult> {
    let parsed = counted(&shared, parse_body(&body)).await?;
    with_daemon(&shared, move |d| {
        let (changes, outcome, displaced) =
            d.change_api(|api, file| api.replace_services(parsed.services, file))?;
        Ok(change_result(d, outcome, changes, displaced))
    })
    .await
}

fn backend_request(body: &Bytes) -> Result<(BackendRef, Option<u32>), ApiError> {
    let request: BackendRequest = serde_json::from_slice(body).map_err(|e| {
        bad_request(format!(
            "request body: {e}; send {{\"backend\": \"ADDR[:PORT]\", \"weight\": N}}"
        ))
    })?;
    let spec: BackendSpec = request
        .backend
        .parse()
        .map_err(|e| bad_request(format!("request body: field backend: {e}")))?;
    if let Some(weight) = request.weight
        && weight > crate::source::file::MAX_WEIGHT
    {
        return Err(bad_request(format!(
            "request body: field weight: {weight} is out of range; weights are 0 to {}",
            crate::source::file::MAX_WEIGHT
        )));
    }
    Ok((BackendRef::of(&spec), request.weight))
}

async fn add_backend(
    State(shared): State<Arc<Shared>>,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> ApiResult<ChangeResult> {
    backend_change(shared, name, body, BackendAction::Set).await
}

async fn remove_backend(
    State(shared): State<Arc<Shared>>,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> ApiResult<ChangeResult> {
    backend_change(shared, name, body, BackendAction::Remove).await
}

async fn drain_backend(
    State(shared): State<Arc<Shared>>,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> ApiResult<ChangeResult> {
    backend_change(shared, name, body, BackendAction::Drain).await
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum BackendAction {
    Set,
    Remove,
    Drain,
}

async fn backend_change(
    shared: Arc<Shared>,
    name: String,
    body: Bytes,
    action: BackendAction,
) -> ApiResult<ChangeResult> {
    let request = backend_request(&body).and_then(|(backend, weight)| {
        let no_weight = match action {
            BackendAction::Set => None,
            BackendAction::Remove => Some("not used when removing a backend"),
            BackendAction::Drain => Some("drain sets it to 0"),
        };
        match (no_weight, weight) {
            (Some(why), Some(_)) => Err(bad_request(format!("request body: field weight: {why}"))),
            _ => Ok((backend, weight)),
        }
    });
    let (backend, weight) = counted(&shared, request).await?;
    with_daemon(&shared, move |d| {
        not_swarm(d, &name)?;
        let before = backend_weights(d, &name);
        let (_, outcome, displaced) = d.change_api(|api, file| match action {
            BackendAction::Set => api.set_backend(&name, backend, weight, file),
            BackendAction::Remove => api.remove_backend(&name, backend, file),
            BackendAction::Drain => api.drain(&name, backend, file),
        })?;
        let after = backend_weights(d, &name);
        let mut result = change_result(d, outcome, ServiceChanges::default(), displaced);
        result
            .warnings
            .extend(no_usable_backend(&name, d.usable_backends(&name)));
        result.backends = before
            .keys()
            .chain(after.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter(|b| before.get(*b) != after.get(*b))
            .map(|b| crate::api::BackendWeightChange {
                backend: b.clone(),
                before: before.get(b).copied(),
                after: after.get(b).copied(),
            })
            .collect();
        Ok(result)
    })
    .await
}

/// Service `name`'s backends and their weights as the daemon serves them (`lbctl list`'s
/// names).
fn backend_weights(d: &Daemon, name: &str) -> BTreeMap<String, u32> {
    d.merged()
        .file
        .services
        .get(name)
        .into_iter()
        .flat_map(|spec| &spec.backends)
        .map(|b| (BackendRef::of(b).to_string(), b.weight))
        .collect()
}

async fn stats(State(shared): State<Arc<Shared>>) -> ApiResult<Report> {
    let s = shared.clone();
    tokio::task::spawn_blocking(move || s.report())
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("handler: {e}")))?
        .map(axum::Json)
        .map_err(ApiError::from)
}

fn query<T: serde::de::DeserializeOwned>(
    q: Result<Query<T>, axum::extract::rejection::QueryRejection>,
    usage: &str,
) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| bad_request(format!("{}; use {usage}", e.body_text())))
}

async fn flows(
    State(shared): State<Arc<Shared>>,
    q: Result<Query<FlowQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<FlowList> {
    let q = query(q, "?service=NAME&limit=N")?;
    let limit = q.limit.unwrap_or(DEFAULT_FLOWS);
    if limit == 0 || limit > MAX_FLOWS {
        return Err(bad_request(format!("limit {limit}: use 1 to {MAX_FLOWS}")));
    }
    // Names and ids under the daemon's lock; the table walk (up to a second per million
    // entries) outside it.
    let s = shared.clone();
    let answer = tokio::task::spawn_blocking(move || -> Result<FlowList, ApiError> {
        let (names, ids) = {
            let d = s.daemon();
            let running = d.running();
            let names: BTreeMap<u32, (String, String)> = running
                .services
                .iter()
                .map(|sv| (sv.id, (sv.name.clone(), sv.mapping.to_string())))
                .collect();
            let ids = match &q.service {
                Some(name) => {
                    let ids = crate::daemon::service_ids(running, name);
                    if ids.is_empty() {
                        return Err(ApiError(
                            StatusCode::NOT_FOUND,
                            format!("no service {name:?} (see `lbctl list`)"),
                        ));
                    }
                    Some(ids)
                }
                None => None,
            };
            (names, ids)
        };
        // One more than asked for says whether there are more.
        let mut sampled = s
            .readers
            .sample_flows(limit + 1, ids.as_deref())
            .map_err(|e| ApiError::from(DaemonError::from(e)))?;
        let truncated = sampled.len() > limit;
        sampled.truncate(limit);
        let now_ns = monotonic_ns();
        let flows = sampled
            .into_iter()
            .map(|(key, flow)| FlowEntry {
                service: names.get(&flow.service_id).map_or_else(
                    || format!("(removed service {})", flow.service_id),
                    |(name, _)| name.clone(),
                ),
                mapping: names
                    .get(&flow.service_id)
                    .map(|(_, mapping)| mapping.clone()),
                protocol: protocol_name(key.proto).into(),
                client: std::net::SocketAddr::new(
                    std::net::IpAddr::from(key.src),
                    u16::from_be(key.sport_be),
                ),
                frontend: std::net::SocketAddr::new(
                    std::net::IpAddr::from(key.dst),
                    u16::from_be(key.dport_be),
                ),
                backend: std::net::SocketAddr::new(
                    std::net::IpAddr::from(flow.nat_addr),
                    u16::from_be(flow.nat_port_be),
                ),
                tcp_state: crate::api::tcp_state_name(key.proto, flow.tcp_state),
                // The limit that applies now (an opening or closing TCP flow's is short).
                idle_timeout_s: flow.idle_limit_s(),
                // The kernel's clock (bpf_ktime_get_ns is CLOCK_MONOTONIC); the last-seen time
                // moves in steps of LAST_SEEN_GRANULARITY_NS, so this is to about a second.
                expires_in_s: Some(
                    u64::from(flow.idle_limit_s())
                        .saturating_sub(now_ns.saturating_sub(flow.last_seen_ns) / 1_000_000_000),
                ),
            })
            .collect();
        Ok(FlowList {
            limit,
            flows,
            truncated,
        })
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("handler: {e}")))??;
    Ok(axum::Json(answer))
}

async fn explain(
    State(shared): State<Arc<Shared>>,
    q: Result<Query<ExplainQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<crate::api::Explained> {
    let q = query(
        q,
        "?protocol=tcp|udp&source=ADDR:PORT&destination=ADDR:PORT",
    )?;
    let protocol = match q.protocol.as_str() {
        "tcp" => proto::TCP,
        "udp" => proto::UDP,
        other => return Err(bad_request(format!("protocol {other:?}: use tcp or udp"))),
    };
    with_daemon(&shared, move |d| {
        Ok(axum::Json(d.explain(protocol, q.source, q.destination)?))
    })
    .await
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Result<Response, ApiError> {
    let s = shared.clone();
    let text = tokio::task::spawn_blocking(move || -> Result<String, DaemonError> {
        let report = s.report()?;
        let requests = lock(&s.requests).clone();
        // Copied out, and rendered with the daemon free: with 10,000 services the text takes
        // long enough to hold up changes and health verdicts.
        let bgp = s.bgp_status();
        let (states, changes, swarm, attachments) = {
            let d = s.daemon();
            (
                d.health_states(),
                d.changes().clone(),
                d.swarm_status(),
                d.attachment_statuses(),
            )
        };
        Ok(crate::metrics::render(
            &report,
            &changes,
            &requests,
            swarm.as_ref(),
            bgp.as_ref(),
            &attachments,
            &crate::metrics::HealthMetrics {
                states: &states,
                latency: &s.check_latency,
            },
        ))
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("handler: {e}")))??;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// The admin API's Unix socket, bound: the listener and which file it is (its inode), so
/// lbd removes on exit only the socket it made.
pub struct ApiSocket {
    listener: std::os::unix::net::UnixListener,
    path: PathBuf,
    ino: u64,
}

impl ApiSocket {
    /// Closes the socket and removes its file (a start that failed after binding it).
    pub fn remove(self) {
        use std::os::unix::fs::MetadataExt as _;
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds the admin API socket at `path` (mode 0600). What is already there is replaced only
/// when it is a stale socket (one nobody answers on): a live socket means another lbd, and
/// anything else (a file, a directory, a link) is never deleted. The errors do not name
/// `path`: the caller's context does.
pub fn bind_unix(path: &Path) -> std::io::Result<ApiSocket> {
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "it is served by another running lbd; stop it or choose another --api",
                ));
            }
            // A socket nobody answers on: left by an lbd that was killed.
            std::fs::remove_file(path)?;
        }
        Ok(meta) => {
            let kind = if meta.is_dir() {
                "a directory"
            } else if meta.file_type().is_symlink() {
                "a symbolic link"
            } else {
                "a file"
            };
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "it exists and is {kind}, not a socket: lbd only replaces a stale socket of \
                     its own and leaves everything else alone; choose another --api, or move it \
                     away yourself"
                ),
            ));
        }
    }
    // SAFETY: umask only changes this process's file-creation mask; restored right after.
    let old = unsafe { libc::umask(0o177) };
    let listener = std::os::unix::net::UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = listener?;
    listener.set_nonblocking(true)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let ino = std::fs::symlink_metadata(path)?.ino();
    Ok(ApiSocket {
        listener,
        path: path.to_owned(),
        ino,
    })
}

/// Serves the admin API on its socket (guarded as the TCP API is) until `stop`, then removes
/// the socket, if the file there is still the one it bound.
pub async fn serve_unix(
    socket: ApiSocket,
    shared: Arc<Shared>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let ApiSocket {
        listener,
        path,
        ino,
    } = socket;
    let listener = tokio::net::UnixListener::from_std(listener)?;
    info!(socket = %path.display(), "admin API listening");
    let result = super::listener::serve(
        "admin API (socket)",
        listener,
        router(shared.clone()),
        super::listener::API,
        move || record(&shared, StatusCode::SERVICE_UNAVAILABLE),
        stop,
    )
    .await;
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.ino() == ino) {
        let _ = std::fs::remove_file(&path);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client that sends its headers and then not all of its body gets a 408 at the body's
    /// deadline, and its connection closes: it does not hold a slot for the connection's
    /// lifetime. A body sent in time reaches the route.
    #[test]
    fn a_body_that_does_not_come_in_time_is_answered_408_and_closed() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let deadline = std::time::Duration::from_millis(300);
        let router = Router::new()
            .route("/echo", post(|body: Bytes| async move { body }))
            .layer(middleware::from_fn_with_state(deadline, body_in_time));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (_stop, stop) = tokio::sync::watch::channel(false);
            tokio::spawn(super::super::listener::serve(
                "test",
                listener,
                router,
                super::super::listener::API,
                || {},
                stop,
            ));
            let exchange = |request: &'static str| async move {
                let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                stream.write_all(request.as_bytes()).await.unwrap();
                let started = std::time::Instant::now();
                let mut answer = Vec::new();
                let limit = std::time::Duration::from_secs(5);
                let _ = tokio::time::timeout(limit, stream.read_to_end(&mut answer)).await;
                (
                    String::from_utf8_lossy(&answer).into_owned(),
                    started.elapsed(),
                )
            };
            let partial = "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc";
            let (answer, took) = exchange(partial).await;
            assert!(
                answer.starts_with("HTTP/1.1 408") && answer.contains("did not arrive within"),
                "{answer:?}"
            );
            assert!(
                took < std::time::Duration::from_secs(2),
                "closed after {took:?}"
            );
            let whole = "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\
                         Connection: close\r\n\r\n0123456789";
            let (answer, _) = exchange(whole).await;
            assert!(
                answer.starts_with("HTTP/1.1 200") && answer.ends_with("0123456789"),
                "{answer:?}"
            );
        });
    }

    fn refusal(body: &str) -> String {
        match parse_body(&Bytes::from(body.to_owned())) {
            Err(ApiError(status, message)) => {
                assert_eq!(status, StatusCode::BAD_REQUEST, "{message}");
                message
            }
            Ok(file) => panic!("accepted: {file:?}"),
        }
    }

    #[test]
    fn a_body_with_a_section_the_api_cannot_change_is_refused_with_its_name() {
        let services = "services:\n  web:\n    vip: 198.18.100.1\n    ports: [\"80/tcp\"]\n    backends: [198.18.2.10]\n";
        assert!(parse_body(&Bytes::from(services.to_owned())).is_ok());
        let lbd = refusal(&format!("{services}lbd:\n  xdp_mode: generic\n"));
        assert!(lbd.contains("field lbd:"), "{lbd}");
        let swarm = refusal(&format!(
            "{services}swarm:\n  web:\n    scheduler: round-robin\n"
        ));
        assert!(
            swarm.contains("field swarm:") && swarm.contains("reload"),
            "{swarm}"
        );
    }
}
