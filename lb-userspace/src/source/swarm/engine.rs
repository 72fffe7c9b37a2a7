//! Reads the Docker Engine: the answers a [`Snapshot`](super::Snapshot) is made of.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use bollard::{
    API_DEFAULT_VERSION, Docker,
    models::{ContainerSummary, LocalNodeState, NetworkInspect, SwarmInfo, SystemInfo},
    query_parameters::{
        InspectContainerOptions, InspectNetworkOptions, ListContainersOptions, ListNetworksOptions,
    },
};

use super::snapshot::{Answers, GWBRIDGE_NETWORK, overlay_networks_of};
use crate::error_text::with_causes;
use tracing::{info, warn};

/// The default Engine address, as `docker` uses it.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";
/// A request that takes longer is an Engine that does not answer.
const REQUEST_TIMEOUT_S: u64 = 5;
/// `/info` on a manager asks the swarm's leader; without one (quorum lost) it answers only
/// after 20 s. Past this the last answer stands in, as a node whose manager cannot say...
const INFO_TIMEOUT: Duration = Duration::from_secs(2);
/// ...and is not asked again for this long, so the reads between go at their pace (a 2 s
/// wait every 10 s while the swarm has no leader). Not much longer: meanwhile `/tasks` is
/// not asked, so no task is marked stopping, and one slow answer of a busy manager costs
/// that long.
const INFO_RETRY: Duration = Duration::from_secs(10);
/// A container's inspection that takes longer is one the Engine cannot answer (a hung shim):
/// the container is left out of the read, not the whole read...
const INSPECT_TIMEOUT: Duration = Duration::from_secs(2);
/// ...and is not asked again for this long, so it does not slow every read.
const INSPECT_RETRY: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "docker host {host:?}: not a unix:// path or http:// / tcp:// address; write e.g. \
         unix:///var/run/docker.sock or tcp://127.0.0.1:2375"
    )]
    BadHost { host: String },
    #[error("Docker Engine at {host}: {what}: {}", with_causes(error))]
    Request {
        host: String,
        what: &'static str,
        error: bollard::errors::Error,
    },
}

/// A connection to one Engine, re-made after an error (the Engine may have restarted, with
/// another socket file and API version).
pub struct Engine {
    host: String,
    client: Option<Docker>,
    /// Container ids to process ids: a container's pid does not change while it runs.
    pids: std::collections::HashMap<String, u32>,
    /// Containers whose inspection failed, by id (see `container_pids`).
    uninspected: HashMap<String, Uninspected>,
    desired: super::desired::DesiredStates,
    stop_signals: super::stop_signals::StopSignals,
    /// Whether the process ids of containers on overlay networks are read (see
    /// `without_container_pids`).
    container_pids: bool,
    /// The last `/info` answered, and until when it stands in for a new one (see
    /// `INFO_TIMEOUT`).
    last_info: Option<SystemInfo>,
    info_stands_in_until: Option<Instant>,
}

impl Engine {
    /// Checks `host`'s form; connects at the first read.
    pub fn new(host: &str) -> Result<Engine, EngineError> {
        let known = ["unix://", "http://", "tcp://"];
        if !known.iter().any(|scheme| host.starts_with(scheme)) {
            return Err(EngineError::BadHost { host: host.into() });
        }
        Ok(Engine {
            host: host.to_owned(),
            client: None,
            pids: Default::default(),
            uninspected: Default::default(),
            desired: Default::default(),
            stop_signals: Default::default(),
            last_info: None,
            info_stands_in_until: None,
            container_pids: true,
        })
    }

    /// Reads no container's process id: for a node whose socket-level balancing is off,
    /// which serves no container its VIPs. Where lbd cannot see the containers' processes
    /// (its own pid namespace, as the swarm stack runs it) every read would otherwise inspect
    /// every container on an overlay network.
    pub fn without_container_pids(mut self) -> Self {
        self.container_pids = false;
        self
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// Reads every answer a snapshot needs.
    pub async fn read(&mut self) -> Result<Answers, EngineError> {
        let mut client = match self.client.take() {
            Some(client) => client,
            None => connect(&self.host).await?,
        };
        let (info, clean) = self.info(&client).await?;
        if !clean {
            // The request given up on still holds its connection: read on another.
            client = connect(&self.host).await?;
        }
        let pids = self
            .container_pids
            .then_some((&mut self.pids, &mut self.uninspected));
        let mut answers = read_with(&client, &self.host, info, pids).await?;
        answers.tasks_running = self
            .desired
            .read(&client, &self.host, &answers.info, &answers.overlays)
            .await;
        answers.stopping_containers = self
            .stop_signals
            .read(&client, &self.host, &answers.containers)
            .await;
        // Kept only after a good read: an error makes the next read connect again.
        self.client = Some(client);
        Ok(answers)
    }
}

impl Engine {
    /// `/info`, or, when a manager's answer waits for a leader the swarm has not got (see
    /// `INFO_TIMEOUT`), the last answer as a node that cannot say what the swarm wants: the
    /// networks and containers, which need no leader, are still read. With whether the
    /// client is clean (false: a request to it was given up on).
    async fn info(&mut self, client: &Docker) -> Result<(SystemInfo, bool), EngineError> {
        let request = |what, error| EngineError::Request {
            host: self.host.clone(),
            what,
            error,
        };
        let standing_in = self
            .info_stands_in_until
            .is_some_and(|until| Instant::now() < until);
        let answer = if standing_in {
            None
        } else {
            tokio::time::timeout(INFO_TIMEOUT, client.info()).await.ok()
        };
        if let Some(answer) = answer {
            let info = answer.map_err(|e| request("GET /info", e))?;
            self.last_info = Some(info.clone());
            self.info_stands_in_until = None;
            return Ok((info, true));
        }
        let earlier = self.last_info.is_some();
        let mut info = self.last_info.clone().unwrap_or_else(leaderless_info);
        if let Some(swarm) = info.swarm.as_mut() {
            swarm.control_available = Some(false);
        }
        if !standing_in {
            let with = if earlier {
                "its last answer"
            } else {
                "no answer yet (as a node of an active swarm whose address the ingress network \
                 gives)"
            };
            warn!(
                docker_host = self.host,
                "swarm: /info did not answer within {INFO_TIMEOUT:?} (a manager whose swarm has \
                 no leader); following the networks and containers with {with}, without the \
                 tasks' desired states, asking again in {INFO_RETRY:?}"
            );
            self.info_stands_in_until = Some(Instant::now() + INFO_RETRY);
        }
        Ok((info, standing_in))
    }
}

/// What stands in for `/info` on a manager that has not answered it since lbd started (its
/// swarm has had no leader all along): only a node of an active swarm waits for a leader, and
/// its networks and containers, which need none, are read as usual. Its address is not known:
/// its data-path address comes from the ingress network, and an Engine that lists none fails
/// the read as an Engine that is starting does.
fn leaderless_info() -> SystemInfo {
    SystemInfo {
        swarm: Some(SwarmInfo {
            local_node_state: Some(LocalNodeState::ACTIVE),
            control_available: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A client of the Engine at `host`, speaking its API version.
pub(super) async fn connect(host: &str) -> Result<Docker, EngineError> {
    let request = |what, error| EngineError::Request {
        host: host.to_owned(),
        what,
        error,
    };
    let client = if host.starts_with("unix://") {
        Docker::connect_with_unix(host, REQUEST_TIMEOUT_S, API_DEFAULT_VERSION)
    } else {
        let address = host.replacen("tcp://", "http://", 1);
        Docker::connect_with_http(&address, REQUEST_TIMEOUT_S, API_DEFAULT_VERSION)
    }
    .map_err(|e| request("connecting", e))?;
    // Down to what the Engine speaks (Debian 12's dockerd 20.10 speaks 1.41).
    client
        .negotiate_version()
        .await
        .map_err(|e| request("negotiating the API version", e))
}

/// What `container_pids` keeps between reads: the known pids and the containers it could not
/// inspect.
type PidMemory<'a> = (
    &'a mut HashMap<String, u32>,
    &'a mut HashMap<String, Uninspected>,
);

async fn read_with(
    client: &Docker,
    host: &str,
    info: SystemInfo,
    known_pids: Option<PidMemory<'_>>,
) -> Result<Answers, EngineError> {
    let request = |what, error| EngineError::Request {
        host: host.to_owned(),
        what,
        error,
    };
    // One listing for both: the overlays (inspected below) and the local bridges.
    let networks = client
        .list_networks(Some(ListNetworksOptions {
            filters: Some(HashMap::from([(
                "driver".to_owned(),
                vec!["overlay".to_owned(), "bridge".to_owned()],
            )])),
        }))
        .await
        .map_err(|e| request("GET /networks?filters=driver=overlay,bridge", e))?;
    let (listed_overlays, bridges): (Vec<_>, Vec<_>) = networks
        .into_iter()
        .partition(|n| n.driver.as_deref() == Some("overlay"));
    let mut overlays = Vec::new();
    for network in listed_overlays {
        let Some(id) = network.id.as_deref() else {
            continue;
        };
        match client
            .inspect_network(
                id,
                Some(InspectNetworkOptions {
                    verbose: true,
                    scope: None,
                }),
            )
            .await
        {
            Ok(inspected) => overlays.push(inspected),
            // Removed between the listing and now.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(request("GET /networks/ID?verbose=true", e)),
        }
    }
    let gwbridge = match client
        .inspect_network(GWBRIDGE_NETWORK, None::<InspectNetworkOptions>)
        .await
    {
        Ok(network) => Some(network),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => None,
        Err(e) => return Err(request("GET /networks/docker_gwbridge", e)),
    };
    let containers = client
        .list_containers(None::<ListContainersOptions>)
        .await
        .map_err(|e| request("GET /containers/json", e))?;
    let pids = match known_pids {
        Some((known, uninspected)) => {
            container_pids(client, host, &containers, &overlays, known, uninspected).await
        }
        None => Default::default(),
    };
    Ok(Answers {
        info,
        overlays,
        bridges,
        gwbridge,
        containers,
        pids: pids.into_iter().collect(),
        tasks_running: None,
        stopping_containers: Default::default(),
    })
}

/// A container whose inspection failed: its error (told once until it changes) and when it is
/// asked again.
pub(super) struct Uninspected {
    error: String,
    retry_at: Instant,
}

/// The process ids of `containers` on an overlay network (inspected once each; `known`: the
/// last read's, updated). A container the Engine fails to inspect (or does not within
/// [`INSPECT_TIMEOUT`]) is left out, said once in the log, and asked again after
/// [`INSPECT_RETRY`] (`uninspected`, updated): one container stuck in the Engine must not keep
/// the whole node from following the swarm, only its own sockets from their VIPs.
async fn container_pids(
    client: &Docker,
    host: &str,
    containers: &[ContainerSummary],
    overlays: &[NetworkInspect],
    known: &mut HashMap<String, u32>,
    uninspected: &mut HashMap<String, Uninspected>,
) -> HashMap<String, u32> {
    let listed: std::collections::HashSet<&str> =
        containers.iter().filter_map(|c| c.id.as_deref()).collect();
    uninspected.retain(|id, _| listed.contains(id.as_str()));
    let mut pids = HashMap::new();
    for container in containers {
        let Some(id) = container.id.as_deref() else {
            continue;
        };
        if overlay_networks_of(container, overlays).next().is_none() {
            continue;
        }
        // A container restarted in place keeps its id but not its pid: a known pid is kept
        // only while it is still that container's process.
        if let Some(&pid) = known.get(id)
            && is_containers_process(pid, id)
        {
            pids.insert(id.to_owned(), pid);
            continue;
        }
        if uninspected
            .get(id)
            .is_some_and(|u| Instant::now() < u.retry_at)
        {
            continue;
        }
        let inspected = tokio::time::timeout(
            INSPECT_TIMEOUT,
            client.inspect_container(id, None::<InspectContainerOptions>),
        )
        .await;
        let error = match inspected {
            Ok(Ok(inspected)) => {
                if uninspected.remove(id).is_some() {
                    info!(
                        docker_host = host,
                        container = id,
                        "swarm: the container is inspected again; its sockets get their VIPs"
                    );
                }
                let pid = inspected.state.and_then(|s| s.pid).unwrap_or(0);
                if let Ok(pid @ 1..) = u32::try_from(pid) {
                    pids.insert(id.to_owned(), pid);
                }
                continue;
            }
            // Gone between the listing and now.
            Ok(Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            })) => continue,
            Ok(Err(error)) => with_causes(&error),
            Err(_) => format!("no answer within {INSPECT_TIMEOUT:?}"),
        };
        let told = uninspected.get(id).is_some_and(|u| u.error == error);
        if !told {
            warn!(
                docker_host = host,
                container = id,
                "swarm: GET /containers/{id}/json failed ({error}); the rest of the swarm is \
                 followed, but this container's sockets get no VIPs until the Engine inspects it \
                 (asked again every {INSPECT_RETRY:?}; `docker inspect` it to see whether its \
                 Engine or shim is stuck)"
            );
        }
        let retry_at = Instant::now() + INSPECT_RETRY;
        uninspected.insert(id.to_owned(), Uninspected { error, retry_at });
    }
    known.clone_from(&pids);
    pids
}

/// Whether process `pid` is in container `id`'s cgroup: its path holds the id under every
/// cgroup driver (`/docker/ID`, `docker-ID.scope`, a custom parent's `/PARENT/ID`), read as
/// this process sees it. False when the process is gone.
pub fn is_containers_process(pid: u32, id: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .is_ok_and(|cgroups| cgroups_name(&cgroups, id))
}

/// Whether a `/proc/PID/cgroup` text puts the process in container `id`'s cgroup.
fn cgroups_name(cgroups: &str, id: &str) -> bool {
    !id.is_empty()
        && cgroups.lines().any(|line| {
            let path = line.splitn(3, ':').nth(2).unwrap_or_default();
            path.split('/').any(|part| {
                part == id
                    || part
                        .strip_prefix("docker-")
                        .and_then(|p| p.strip_suffix(".scope"))
                        == Some(id)
            })
        })
}

#[cfg(test)]
mod tests {
    use super::Engine;
    use super::{cgroups_name, is_containers_process};
    use crate::source::swarm::snapshot::Snapshot;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// An answer of the fake Engine: status and body, or none ever (`None`: a hung Engine).
    type Answer = Option<(u16, String)>;

    /// An Engine over tcp:// that answers the worker's recorded answers
    /// (`tests/fixtures/swarm/worker`), or what `special` says for a path (without its API
    /// version) first; records every path asked.
    struct FakeEngine {
        host: String,
        asked: Arc<Mutex<Vec<String>>>,
    }

    impl FakeEngine {
        async fn start(special: impl Fn(&str) -> Option<Answer> + Send + Sync + 'static) -> Self {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let host = format!("tcp://{}", listener.local_addr().unwrap());
            let asked = Arc::new(Mutex::new(Vec::new()));
            let special = Arc::new(special);
            let record = asked.clone();
            tokio::spawn(async move {
                loop {
                    let (mut stream, _) = listener.accept().await.unwrap();
                    let special = special.clone();
                    let record = record.clone();
                    tokio::spawn(async move {
                        let mut request = Vec::new();
                        let mut buf = [0; 4096];
                        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => request.extend_from_slice(&buf[..n]),
                            }
                        }
                        let line = String::from_utf8_lossy(&request);
                        let target = line.split(' ').nth(1).unwrap_or_default();
                        // `/v1.41/info` -> `/info`.
                        let path = match target.strip_prefix("/v1.") {
                            Some(rest) => &rest[rest.find('/').unwrap_or(0)..],
                            None => target,
                        }
                        .to_owned();
                        record.lock().unwrap().push(path.clone());
                        let answer = special(&path).unwrap_or_else(|| recorded(&path));
                        let Some((status, body)) = answer else {
                            std::future::pending::<()>().await;
                            return;
                        };
                        let head = format!(
                            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n\
                             Content-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = stream.write_all(head.as_bytes()).await;
                        let _ = stream.write_all(body.as_bytes()).await;
                        let _ = stream.shutdown().await;
                    });
                }
            });
            FakeEngine { host, asked }
        }

        fn asked(&self, path: &str) -> usize {
            self.asked
                .lock()
                .unwrap()
                .iter()
                .filter(|p| *p == path)
                .count()
        }
    }

    /// The worker's recorded answer to `path`.
    fn recorded(path: &str) -> Answer {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/swarm/worker");
        let file = |name: &str| Some((200, std::fs::read_to_string(dir.join(name)).unwrap()));
        let (route, _query) = path.split_once('?').unwrap_or((path, ""));
        match route {
            "/version" => Some((200, r#"{"ApiVersion":"1.41","Version":"20.10.24"}"#.into())),
            "/info" => file("info.json"),
            "/networks" => file("networks.json"),
            "/networks/docker_gwbridge" => file("docker_gwbridge.json"),
            "/networks/7rf8c72jcequg2aebfd4cqvyh" => file("overlay-appnet.json"),
            "/networks/pik3k4gu6fthfwurts4s9pyy1" => file("overlay-ingress.json"),
            "/containers/json" => file("containers.json"),
            "/events" => Some((200, String::new())),
            _ if route.starts_with("/containers/") => {
                Some((200, r#"{"State":{"Pid":4242}}"#.into()))
            }
            _ => Some((404, r#"{"message":"not recorded"}"#.into())),
        }
    }

    const DB: &str = "9427b3b15599cd470bc80a9e09a9f7450770716250eccf0a65236a2c27da15fc";
    const API: &str = "87a0a1de74cb750aa39cb79637a5f78102f2fc38bdd2445b68fdbe218f98f8af";

    /// One container the Engine fails to inspect leaves only that container out: the read
    /// goes on, with the other containers' pids, and the failed one is not asked at the next
    /// read (it would slow every read), only after `INSPECT_RETRY`.
    #[tokio::test]
    async fn a_container_the_engine_cannot_inspect_is_left_out_not_the_read() {
        let db_path = format!("/containers/{DB}/json");
        let failing = db_path.clone();
        let engine = FakeEngine::start(move |path| {
            (path == failing).then(|| Some((500, r#"{"message":"shim stuck"}"#.into())))
        })
        .await;
        let mut reader = Engine::new(&engine.host).unwrap();
        for _ in 0..2 {
            let answers = reader.read().await.expect("the read goes on");
            assert_eq!(answers.pids, [(API.to_owned(), 4242)].into());
            let snapshot = Snapshot::from_answers(&answers).unwrap();
            assert!(snapshot.services.contains_key("web"));
        }
        assert_eq!(engine.asked(&db_path), 1);
    }

    /// A manager whose swarm has had no leader since lbd started: `/info` never answers, yet
    /// the networks and containers are read (without the tasks' desired states), and `/info`
    /// is not asked again at the next read.
    #[tokio::test]
    async fn a_leaderless_manager_is_read_without_any_info_answer() {
        let engine = FakeEngine::start(|path| (path == "/info").then_some(None)).await;
        let mut reader = Engine::new(&engine.host).unwrap();
        for _ in 0..2 {
            let answers = reader.read().await.expect("read without /info");
            let snapshot = Snapshot::from_answers(&answers).unwrap();
            assert!(snapshot.active);
            assert!(!snapshot.desired_states_known);
            assert_eq!(snapshot.node_addr, None);
            assert_eq!(snapshot.data_addr, Some("198.18.50.2".parse().unwrap()));
            assert_eq!(snapshot.services["web"].tasks.len(), 4);
        }
        assert_eq!(engine.asked("/info"), 1);
    }

    #[test]
    fn a_known_pid_counts_only_while_it_is_in_the_containers_cgroup() {
        let id = "4f3c0a1b2c3d4e5f60718293a4b5c6d7e8f9012345678901234567890abcdef";
        let other = "9a3c0a1b2c3d4e5f60718293a4b5c6d7e8f9012345678901234567890abcdef";
        // cgroupfs (v1 and v2), systemd, a custom --cgroup-parent.
        for text in [
            format!("12:pids:/docker/{id}\n11:memory:/docker/{id}\n0::/docker/{id}\n"),
            format!("0::/system.slice/docker-{id}.scope\n"),
            format!("0::/mlb-node2/{id}\n"),
        ] {
            assert!(cgroups_name(&text, id), "{text}");
            assert!(!cgroups_name(&text, other), "{text}");
            assert!(!cgroups_name(&text, ""), "{text}");
        }
        // A process of the host, or one whose id only starts the same.
        assert!(!cgroups_name("0::/user.slice/session-1.scope\n", id));
        assert!(!cgroups_name(&format!("0::/docker/{id}0\n"), id));
        // A pid whose process is gone (pids stop well below this).
        assert!(!is_containers_process(u32::MAX - 1, id));
    }
}
