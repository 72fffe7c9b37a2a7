//! The shipped swarm stack (`deploy/swarm/meshlb-stack.yml`) deployed on a real swarm: lbd
//! runs as a global service, in a container of an image made from the built binaries, with
//! the stack's capabilities, network, mounts, config and secret, and serves a published port
//! on every node. The stack file is used as shipped but for what two nodes on one machine
//! cannot share: the host paths it binds get a directory per node (Docker's `{{.Node.ID}}`
//! template), and the image its test name.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use lb_testkit::{
    Proto, capabilities, e2e_enabled,
    swarm::{Publish, SwarmLab, WHO_PORT, copy_with_libraries, request, wait_until},
};

const STACK: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/swarm/meshlb-stack.yml"
);
const SERVICES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/swarm/services.yaml");
/// Tasks may take this long to start (images local).
const TASKS: Duration = Duration::from_secs(90);
/// The port the test publishes.
const PUBLISHED: u16 = 8481;

/// The test's own host paths and stack, removed (with the stack and lbd's pins) on drop,
/// before the lab.
struct Deployed<'a> {
    lab: &'a SwarmLab,
    name: String,
    /// `/run/mlb-stack-…`: per node its run and state directories and a link to its Engine's
    /// socket (on /run, as the sockets are: a hard link needs one file system).
    run_root: PathBuf,
    /// `/sys/fs/bpf/mlb-stack-…`: per node the bpffs directory mounted at /bpffs.
    bpf_root: PathBuf,
    files: PathBuf,
}

impl Drop for Deployed<'_> {
    fn drop(&mut self) {
        let manager = &self.lab.nodes[0];
        let _ = manager.docker(&["stack", "rm", &self.name]);
        // The tasks stop (lbd keeps its pins: a restart must not lose flows), then lbd
        // cleanup removes what each node's lbd pinned.
        let _ = wait_until(Duration::from_secs(40), "the stack's tasks gone", || {
            let left = self
                .lab
                .nodes
                .iter()
                .map(|n| {
                    n.docker(&[
                        "ps",
                        "-q",
                        "--filter",
                        &format!("label=com.docker.stack.namespace={}", self.name),
                    ])
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(left.iter().all(|l| l.trim().is_empty()))
        });
        let lbd = env!("CARGO_BIN_EXE_lbd");
        if let Ok(entries) = std::fs::read_dir(&self.bpf_root) {
            for node in entries.flatten() {
                let pins = node.path().join("meshlb");
                let _ = Command::new(lbd)
                    .args(["cleanup", "--force", "--pin-dir"])
                    .arg(&pins)
                    .output();
                let _ = std::fs::remove_dir(node.path());
            }
        }
        let _ = std::fs::remove_dir(&self.bpf_root);
        let _ = std::fs::remove_dir_all(&self.run_root);
        let _ = std::fs::remove_dir_all(&self.files);
        let _ = manager.docker(&["secret", "rm", "meshlb_api_token"]);
    }
}

/// The shipped stack file with `replacements` made, each of which must apply.
fn stack_text(replacements: &[(&str, String)]) -> Result<String> {
    let mut text = std::fs::read_to_string(STACK).context("reading the stack file")?;
    for (from, to) in replacements {
        ensure!(
            text.contains(from),
            "the stack file has no {from:?} any more"
        );
        text = text.replace(from, to);
    }
    Ok(text)
}

#[test]
fn the_shipped_stack_runs_lbd_on_every_node_and_serves_a_published_port() {
    if !e2e_enabled() {
        return;
    }
    let lab = SwarmLab::start().expect("swarm lab");
    deploy_and_check(&lab).unwrap_or_else(|e| {
        let logs: Vec<String> = lab.nodes.iter().map(|n| n.dockerd_log_tail()).collect();
        panic!("{e:#}\n{}", logs.join("\n---\n"))
    });
}

fn deploy_and_check(lab: &SwarmLab) -> Result<()> {
    let suffix = format!("{}-{}", std::process::id(), lab.nodes[0].index);
    let name = format!("mlbstack{}", std::process::id());
    let deployed = Deployed {
        lab,
        name: name.clone(),
        run_root: PathBuf::from(format!("/run/mlb-stack-{suffix}")),
        bpf_root: PathBuf::from(format!("/sys/fs/bpf/mlb-stack-{suffix}")),
        files: std::env::temp_dir().join(format!("mlb-stack-{suffix}")),
    };
    std::fs::create_dir_all(&deployed.files)?;
    let manager = &lab.nodes[0];
    let image = format!("meshlb/lbd:test-{suffix}");
    let root = deployed.files.join("root");
    std::fs::create_dir_all(root.join("tmp"))?;
    let lbd = Path::new(env!("CARGO_BIN_EXE_lbd"));
    for binary in [lbd.to_path_buf(), lbd.with_file_name("lbctl")] {
        copy_with_libraries(&binary, &root, "usr/local/bin")?;
    }
    lab.import_root(&root, r#"ENTRYPOINT ["/usr/local/bin/lbd"]"#, &image)?;
    let ids = lab.node_ids()?;
    for (node, id) in lab.nodes.iter().zip(&ids) {
        // The bind-mount sources must exist before the task starts (the tmpfiles file does it
        // on a real node).
        let dir = deployed.run_root.join(id);
        std::fs::create_dir_all(dir.join("run"))?;
        std::fs::create_dir_all(dir.join("lib"))?;
        std::fs::hard_link(node.socket(), dir.join("docker.sock"))
            .context("linking the node's Engine socket")?;
        std::fs::create_dir_all(deployed.bpf_root.join(id))?;
    }
    let run = deployed.run_root.to_str().context("utf-8")?;
    let bpf = deployed.bpf_root.to_str().context("utf-8")?;
    let mut replacements = vec![
        ("image: meshlb/lbd:latest", format!("image: {image}")),
        (
            "source: /sys/fs/bpf\n",
            format!("source: {bpf}/{{{{.Node.ID}}}}\n"),
        ),
        (
            "source: /run/meshlb\n",
            format!("source: {run}/{{{{.Node.ID}}}}/run\n"),
        ),
        (
            "source: /var/lib/meshlb\n",
            format!("source: {run}/{{{{.Node.ID}}}}/lib\n"),
        ),
        (
            "source: /var/run/docker.sock\n",
            format!("source: {run}/{{{{.Node.ID}}}}/docker.sock\n"),
        ),
    ];
    // CAP_SYS_RESOURCE is not in every test machine's bounding set (containers run the
    // tests): then the stack asks for it in vain and Docker cannot start the task.
    // Nor can an unlimited memlock limit be set without it.
    if !capabilities::may_grant(capabilities::number("CAP_SYS_RESOURCE")?)? {
        println!(
            "this machine cannot grant CAP_SYS_RESOURCE: the test's stack asks neither for it \
             nor for an unlimited memlock limit"
        );
        replacements.push(("      - CAP_SYS_RESOURCE\n", String::new()));
        replacements.push((
            "    ulimits:\n      memlock:\n        soft: -1\n        hard: -1\n",
            String::new(),
        ));
    }
    let stack = deployed.files.join("meshlb-stack.yml");
    std::fs::write(&stack, stack_text(&replacements)?)?;
    std::fs::copy(SERVICES, deployed.files.join("services.yaml"))?;
    let token = deployed.files.join("token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef\n")?;
    manager.docker(&[
        "secret",
        "create",
        "meshlb_api_token",
        token.to_str().context("utf-8")?,
    ])?;
    manager.docker(&[
        "stack",
        "deploy",
        "-c",
        stack.to_str().context("utf-8")?,
        &name,
    ])?;

    // Every node runs lbd, and it answers on the API socket the stack binds to the host.
    let service = format!("{name}_lbd");
    lab.wait_running(&service, 2, TASKS)
        .with_context(|| service_ps(lab, &service))?;
    let lbctl = Path::new(env!("CARGO_BIN_EXE_lbd")).with_file_name("lbctl");
    for (node, id) in lab.nodes.iter().zip(&ids) {
        let socket = deployed.run_root.join(id).join("run/api.sock");
        retry_until(Duration::from_secs(30), || {
            let out = Command::new(&lbctl)
                .arg("--api")
                .arg(&socket)
                .arg("status")
                .output()?;
            ensure!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8_lossy(&out.stdout);
            ensure!(
                text.contains("Engine") && text.contains("answers"),
                "{text}"
            );
            Ok(())
        })
        .with_context(|| format!("node {}: {}", node.index, service_ps(lab, &service)))?;
    }

    // A published port answers on both nodes' addresses, and the task sees the client.
    lab.create_published(
        "who",
        2,
        &Publish::ingress_tcp_and_udp(PUBLISHED, WHO_PORT),
        &[],
    )?;
    lab.wait_running("who", 2, TASKS)?;
    for node in &lab.nodes {
        let target = SocketAddr::new(IpAddr::V4(node.addr), PUBLISHED);
        for proto in [Proto::Tcp, Proto::Udp] {
            let reply = retry_until(Duration::from_secs(20), || {
                request(&lab.client, target, proto, Duration::from_millis(500))
            })
            .with_context(|| format!("{proto} {target}"))?;
            if reply.seen_ip != reply.local.ip() {
                bail!(
                    "{proto} {target}: the task saw {} for {}",
                    reply.seen_ip,
                    reply.local.ip()
                );
            }
        }
    }
    drop(deployed);
    Ok(())
}

/// `attempt` until it succeeds, every 100 ms for at most `limit` (and 1,000 times); its last
/// error if it never does.
fn retry_until<T>(limit: Duration, mut attempt: impl FnMut() -> Result<T>) -> Result<T> {
    let start = std::time::Instant::now();
    let mut last = None;
    for _ in 0..1000 {
        match attempt() {
            Ok(value) => return Ok(value),
            Err(e) => last = Some(e),
        }
        if start.elapsed() >= limit {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("never tried")))
        .with_context(|| format!("not within {limit:?}"))
}

/// `docker service ps` of `service`, for a failure's message.
fn service_ps(lab: &SwarmLab, service: &str) -> String {
    lab.nodes[0]
        .docker(&[
            "service",
            "ps",
            "--no-trunc",
            "--format",
            "{{.Node}} {{.CurrentState}} {{.Error}}",
            service,
        ])
        .unwrap_or_else(|e| format!("{e:#}"))
}
