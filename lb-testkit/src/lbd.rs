//! Running the real `lbd` binary in a node namespace, for end-to-end tests and the demo.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use super::{
    ChildGuard, EnterMode, Netns, ScratchPath, capabilities::BoundingSet, netns::unique_suffix,
};

/// How long `lbd` may take to load, attach and program the maps.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// What lbd's "ready" log line holds (`…event_loop: ready services=1 frontends=…`): the
/// message and its first field, so no other line that says "ready" (lbd's error "… already
/// runs XDP program …") passes for it.
pub const READY_LINE: &str = ": ready services=";

/// How long one `lbctl` command may take: it answers in milliseconds; an API that never
/// answers must fail the test (polling loops call `lbctl`), not hang it.
pub const LBCTL_TIMEOUT: Duration = Duration::from_secs(30);

/// Where `lbd` serves `/metrics` by default, in its node's namespace.
pub const METRICS_ADDR: &str = "127.0.0.1:9464";

/// The text of `/metrics` of the `lbd` running in `node` at its default address (bounded:
/// 3 s to connect, 3 s per read).
pub fn metrics(node: &Netns) -> Result<String> {
    use std::io::{Read as _, Write as _};
    node.run(|| -> std::io::Result<String> {
        let timeout = Duration::from_secs(3);
        let addr = METRICS_ADDR.parse().expect("a socket address");
        let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: lbd\r\nConnection: close\r\n\r\n")?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        Ok(text)
    })?
    .with_context(|| format!("GET /metrics from lbd in {}", node.name()))
}

/// Where the test kit pins: `/sys/fs/bpf/mlb-pins-<pid>-<n>`, one directory per `Lbd`, so
/// parallel tests never share (or remove) each other's state.
pub const PIN_ROOT: &str = "/sys/fs/bpf";
pub const PIN_PREFIX: &str = "mlb-pins-";

/// A running `lbd` with its own pin directory, state directory and API socket. Dropping it
/// kills `lbd` if it still runs and removes all three (which detaches meshlb).
pub struct Lbd {
    child: Option<ChildGuard>,
    lbd: PathBuf,
    node_path: PathBuf,
    config: PathBuf,
    args: Vec<String>,
    pin_dir: PathBuf,
    state_dir: PathBuf,
    /// The capabilities `lbd` runs with; all of the test's when `None`.
    bounding: Option<BoundingSet>,
}

impl Lbd {
    /// Writes `services` (YAML) to a temporary file and starts `lbd run` in `node`, attached
    /// to `interfaces`, with `extra` arguments; returns once it reports ready. The service
    /// file is not watched (tests reload with SIGHUP) unless `extra` says otherwise.
    pub fn start(
        lbd: &Path,
        node: &Netns,
        services: &str,
        interfaces: &[&str],
        extra: &[&str],
    ) -> Result<Lbd> {
        Self::start_bounded(lbd, node, services, interfaces, extra, None)
    }

    /// [`Lbd::start`] with only the capabilities of `bounding` (e.g. the systemd unit's,
    /// [`BoundingSet::of_unit`]), also across restarts; checked on the running process.
    pub fn start_bounded(
        lbd: &Path,
        node: &Netns,
        services: &str,
        interfaces: &[&str],
        extra: &[&str],
        bounding: Option<BoundingSet>,
    ) -> Result<Lbd> {
        Self::start_then(lbd, node, services, interfaces, extra, bounding, |_, _| {
            Ok(())
        })
    }

    /// [`Lbd::start_bounded`], calling `while_starting` with the pin directory and the process
    /// as soon as it is spawned, before it is ready (to signal it mid-start, say).
    pub fn start_then(
        lbd: &Path,
        node: &Netns,
        services: &str,
        interfaces: &[&str],
        extra: &[&str],
        bounding: Option<BoundingSet>,
        while_starting: impl FnOnce(&Path, &mut ChildGuard) -> Result<()>,
    ) -> Result<Lbd> {
        let suffix = unique_suffix();
        let config = std::env::temp_dir().join(format!("mlb-services-{suffix}.yaml"));
        std::fs::write(&config, services)
            .with_context(|| format!("writing {}", config.display()))?;
        let state_dir = std::env::temp_dir().join(format!("mlb-state-{suffix}"));
        let pin_dir = Path::new(PIN_ROOT).join(format!("{PIN_PREFIX}{suffix}"));
        let path = |p: &Path| p.to_str().map(str::to_owned).context("temp path");
        let mut args: Vec<String> = vec!["run".into(), "--config".into(), path(&config)?];
        for interface in interfaces {
            args.extend(["--interface".into(), (*interface).to_owned()]);
        }
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let has = |flag: &str| extra.iter().any(|a| a.starts_with(flag));
        // Small connection table: tests need few flows and many lbd run in parallel.
        if !has("--conntrack-entries") {
            args.extend(["--conntrack-entries".into(), "65536".into()]);
        }
        // Socket-level balancing attaches at the machine's cgroup root by default: a test
        // asks for it with its own cgroup (`TestCgroup`), never for the whole machine.
        if !has("--socket-lb") {
            args.extend(["--socket-lb".into(), "off".into()]);
        }
        if !has("--watch-interval-ms") {
            args.extend(["--watch-interval-ms".into(), "0".into()]);
        }
        args.extend([
            "--pin-dir".into(),
            path(&pin_dir)?,
            "--state-dir".into(),
            path(&state_dir)?,
            "--api".into(),
            path(&state_dir.join("api.sock"))?,
        ]);
        for path in [&config, &pin_dir, &state_dir] {
            super::interrupt::track_path(path);
        }
        let mut lb = Lbd {
            child: None,
            lbd: lbd.to_owned(),
            node_path: node.path(),
            config,
            args,
            pin_dir,
            state_dir,
            bounding,
        };
        lb.launch_then(node, while_starting)?;
        Ok(lb)
    }

    /// Starts `lbd` again with the same arguments (after a stop or a kill): it adopts the
    /// pinned dataplane.
    pub fn restart(&mut self, node: &Netns) -> Result<()> {
        anyhow::ensure!(
            node.path() == self.node_path,
            "restart lbd in the namespace it ran in"
        );
        if let Some(mut child) = self.child.take() {
            child.stop(Duration::from_secs(10))?;
        }
        self.launch(node)
    }

    /// `restart` with `extra` arguments after those of the first start (another interface,
    /// say), for this launch only.
    pub fn restart_with(&mut self, node: &Netns, extra: &[&str]) -> Result<()> {
        let args = self.args.clone();
        self.args.extend(extra.iter().map(|a| (*a).to_owned()));
        let result = self.restart(node);
        self.args = args;
        result
    }

    fn launch(&mut self, node: &Netns) -> Result<()> {
        self.launch_then(node, |_, _| Ok(()))
    }

    fn launch_then(
        &mut self,
        node: &Netns,
        while_starting: impl FnOnce(&Path, &mut ChildGuard) -> Result<()>,
    ) -> Result<()> {
        let mut cmd = std::process::Command::new(&self.lbd);
        cmd.args(&self.args)
            // The kernel programs' records come under the target `lb` (the object's name);
            // they exist only when lbd runs with --kernel-log above warn.
            .env("RUST_LOG", "info,lb=debug")
            .env("NO_COLOR", "1");
        if let Some(bounding) = &self.bounding {
            bounding.apply(&mut cmd)?;
        }
        // Only the network namespace: lbd must see the host's bpffs to pin.
        let mut child = node.spawn_command(cmd, EnterMode::SetnsOnly)?;
        while_starting(&self.pin_dir, &mut child)?;
        if let Err(e) = child.wait_for_line(READY_LINE, READY_TIMEOUT) {
            bail!("lbd did not get ready: {e:#}");
        }
        // Ready, then gone (a crash right after) is no running lbd.
        if let Some(status) = child.try_wait()? {
            bail!(
                "lbd exited ({status}) right after it got ready:\n{}",
                child.output_so_far()
            );
        }
        if let Some(bounding) = &self.bounding {
            let permitted = super::capabilities::permitted(child.id())?;
            anyhow::ensure!(
                permitted & !bounding.mask() == 0,
                "lbd runs with capabilities {permitted:#x}, more than {:#x}",
                bounding.mask()
            );
        }
        self.child = Some(child);
        Ok(())
    }

    fn child(&mut self) -> Result<&mut ChildGuard> {
        self.child.as_mut().context("lbd is not running")
    }

    /// The admin API socket.
    /// The running lbd's process id.
    pub fn pid(&mut self) -> Result<u32> {
        Ok(self.child()?.id())
    }

    pub fn api_socket(&self) -> PathBuf {
        self.state_dir.join("api.sock")
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Waits (bounded) for `lbd` to exit by itself (stopped by `lbd cleanup --force`, say); its
    /// exit status, `None` while it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<std::process::ExitStatus>> {
        self.child()?.wait_timeout(timeout)
    }

    /// Kills `lbd` with SIGKILL (no clean-up of its own): the pinned dataplane keeps working.
    pub fn kill(&mut self) -> Result<()> {
        let mut child = self.child.take().context("lbd is not running")?;
        child.signal(libc::SIGKILL)?;
        child.wait_timeout(Duration::from_secs(10))?;
        Ok(())
    }

    /// Stops `lbd` with SIGTERM, as an operator stopping the service does: the pinned
    /// dataplane stays (and keeps forwarding) for `restart` to adopt.
    pub fn stop_keeping_pins(&mut self) -> Result<()> {
        let mut child = self.child.take().context("lbd is not running")?;
        let status = child.stop(Duration::from_secs(10))?;
        anyhow::ensure!(
            status.success(),
            "lbd exited with {status}:\n{}",
            child.output_so_far()
        );
        Ok(())
    }

    /// Runs `lbctl --api <socket> ARGS` and returns (success, stdout, stderr).
    pub fn lbctl(&self, args: &[&str]) -> Result<(bool, String, String)> {
        let (code, out, err) = self.lbctl_exit(args)?;
        Ok((code == Some(0), out, err))
    }

    /// As `lbctl`, with the exit code (`None`: ended by a signal).
    pub fn lbctl_exit(&self, args: &[&str]) -> Result<(Option<i32>, String, String)> {
        let mut cmd = std::process::Command::new(self.lbd.with_file_name("lbctl"));
        cmd.arg("--api").arg(self.api_socket()).args(args);
        let out = super::command::output_within(cmd, None, LBCTL_TIMEOUT)?;
        Ok((
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Runs `lbctl --api-url URL --api-token-file TOKEN_FILE ARGS` in `netns` (where lbd's TCP
    /// API listens) and returns (success, stdout, stderr).
    pub fn lbctl_tcp(
        &self,
        netns: &Netns,
        url: &str,
        token_file: &Path,
        args: &[&str],
    ) -> Result<(bool, String, String)> {
        let mut cmd = std::process::Command::new("nsenter");
        cmd.arg(format!("--net={}", netns.path().display()))
            .arg(self.lbd.with_file_name("lbctl"))
            .args(["--api-url", url, "--api-token-file"])
            .arg(token_file)
            .args(args);
        run_lbctl(cmd)
    }

    /// Runs `lbctl --output json ARGS`, which must succeed, and parses its answer. A `status`
    /// that says lbd is not healthy (its own exit code) has answered too.
    pub fn lbctl_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut all = vec!["--output", "json"];
        all.extend(args);
        let (code, out, err) = self.lbctl_exit(&all)?;
        let unhealthy = i32::from(lb_userspace::api::Unhealthy::EXIT_CODE);
        anyhow::ensure!(
            code == Some(0) || code == Some(unhealthy),
            "lbctl {args:?} failed: {err}"
        );
        serde_json::from_str(&out).with_context(|| format!("lbctl {args:?} printed no JSON: {out}"))
    }

    /// The interfaces lbd is attached to, as `lbctl status` shows them.
    pub fn attachments(&self) -> Result<Vec<lb_userspace::api::AttachmentStatus>> {
        let status = self.lbctl_json(&["status"])?;
        serde_json::from_value(status["attachments"].clone())
            .with_context(|| format!("lbctl status: no attachments in {status}"))
    }

    /// Removes stale test pin directories whose process is gone. Returns their names.
    pub fn cleanup_stale_pins() -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(PIN_ROOT) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(PIN_PREFIX) else {
                continue;
            };
            let alive = rest
                .split('-')
                .next()
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| Path::new("/proc").join(pid.to_string()).exists());
            if !alive && std::fs::remove_dir_all(entry.path()).is_ok() {
                removed.push(name);
            }
        }
        removed
    }

    /// Runs `lbd run` with `services` and expects it to fail; returns its exit code and
    /// output.
    pub fn run_expecting_failure(
        lbd: &Path,
        node: &Netns,
        services: &str,
        interfaces: &[&str],
    ) -> Result<(i32, String)> {
        // Removed when dropped, whatever happens on the way.
        let config = ScratchPath::temp("bad", ".yaml");
        let scratch = ScratchPath::temp("bad-state", "");
        let pins = ScratchPath::in_dir(Path::new(PIN_ROOT), "pins", "");
        std::fs::write(&*config, services)?;
        let mut args = vec!["run", "--config", config.arg()];
        for interface in interfaces {
            args.extend(["--interface", interface]);
        }
        // Never the defaults: a refused file must not touch a real lbd's state.
        args.extend(["--state-dir", scratch.arg(), "--pin-dir", pins.arg()]);
        // Declared after the paths, so dropped (killed) before they are removed.
        let mut child = node.spawn(
            lbd.to_str().context("lbd path")?,
            &args,
            &[("NO_COLOR", "1")],
        )?;
        let status = child.wait_timeout(READY_TIMEOUT)?;
        let output = child.output_so_far();
        match status {
            Some(status) => Ok((status.code().unwrap_or(-1), output)),
            None => bail!("lbd kept running with a bad service file:\n{output}"),
        }
    }

    /// Everything the current `lbd` process printed.
    pub fn output(&self) -> String {
        self.child
            .as_ref()
            .map(ChildGuard::output_so_far)
            .unwrap_or_default()
    }

    /// Rewrites the service file, sends SIGHUP and returns lbd's answer: the log line that
    /// says it reloaded, found no change, or refused the file (or failed).
    pub fn reload(&mut self, services: &str) -> Result<String> {
        std::fs::write(&self.config, services)
            .with_context(|| format!("writing {}", self.config.display()))?;
        let child = self.child()?;
        let offset = child.output_len();
        child.signal(libc::SIGHUP)?;
        // Every answer lbd logs to a SIGHUP has "reload" in it.
        child.wait_for_line_since("reload", offset, READY_TIMEOUT)
    }

    /// Stops `lbd` with SIGTERM and returns the counters it printed on the way out; then
    /// removes meshlb (dropping `self` does).
    pub fn stop(mut self) -> Result<serde_json::Value> {
        let child = self.child()?;
        let status = child.stop(Duration::from_secs(10))?;
        let output = child.output_so_far();
        if !status.success() {
            bail!("lbd exited with {status}:\n{output}");
        }
        let line = output
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .with_context(|| format!("lbd printed no counters:\n{output}"))?;
        serde_json::from_str(line).with_context(|| format!("counters line: {line}"))
    }
}

impl Drop for Lbd {
    fn drop(&mut self) {
        // The process first, so it cannot re-pin what is being removed.
        drop(self.child.take());
        let _ = std::fs::remove_file(&self.config);
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let _ = std::fs::remove_dir_all(&self.state_dir);
        for path in [&self.config, &self.pin_dir, &self.state_dir] {
            super::interrupt::untrack_path(path);
        }
    }
}

/// A map of `lbd`'s pin directory, keyed by frontend or endpoint, filled with entries nothing
/// uses (198.18.192.0/18 and up, port 9/udp) until the kernel refused one: as if something else
/// had taken its room, so `lbd`'s next write there fails. `free` takes them out again.
pub struct FilledMap<V: aya::Pod> {
    map: aya::maps::HashMap<aya::maps::MapData, lb_common::maps::EndpointKey, V>,
    entries: u32,
}

impl Lbd {
    /// `lbd`'s pinned map `name` (under its pin directory's `maps/`), opened.
    pub fn pinned_map(&self, name: &str) -> aya::maps::MapData {
        let path = self.pin_dir().join("maps").join(name);
        aya::maps::MapData::from_pin(&path).unwrap_or_else(|e| panic!("pinned {name}: {e}"))
    }

    /// Fills the pinned hash map `name` (see [`FilledMap`]).
    pub fn fill_map<V: aya::Pod + Default>(&self, name: &str) -> FilledMap<V> {
        use aya::maps::{HashMap, Map, MapData};
        let data = self.pinned_map(name);
        let max = data.info().map(|i| i.max_entries()).expect("map info");
        let mut map: HashMap<MapData, _, V> =
            HashMap::try_from(Map::HashMap(data)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut entries = 0;
        while map
            .insert(unused_endpoint(entries), V::default(), 0)
            .is_ok()
        {
            entries += 1;
            assert!(entries <= max, "{name} never filled");
        }
        FilledMap { map, entries }
    }
}

impl<V: aya::Pod> FilledMap<V> {
    /// Takes the entries out (those still there: an adopting `lbd` prunes what it did not
    /// write): the map has its room again.
    pub fn free(mut self) {
        for i in 0..self.entries {
            match self.map.remove(&unused_endpoint(i)) {
                Ok(()) => {}
                Err(aya::maps::MapError::SyscallError(e))
                    if e.io_error.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("entry {i} of the filling: {e}"),
            }
        }
    }
}

/// The `i`-th endpoint nothing in the tests uses.
fn unused_endpoint(i: u32) -> lb_common::maps::EndpointKey {
    lb_common::maps::EndpointKey::new(
        lb_common::Addr::from(std::net::Ipv4Addr::from(0xC612_C000 + i)),
        9u16.to_be(),
        17,
    )
}

/// Runs an `lbctl` command line, bounded by [`LBCTL_TIMEOUT`]: (success, stdout, stderr).
fn run_lbctl(cmd: std::process::Command) -> Result<(bool, String, String)> {
    let out = super::command::output_within(cmd, None, LBCTL_TIMEOUT)?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}
