//! Named network namespaces (`ip netns`), code run inside them, and processes started in them.
//!
//! A [`Netns`] is RAII: dropping it runs `ip netns delete`, which also removes every interface
//! inside it (and so the far ends of veth pairs that cross into other namespaces). A
//! [`ChildGuard`] kills its process (SIGKILL to its process group) and reaps it on drop.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::command::{describe, output_within};

/// Every namespace the test kit creates has a name starting with this.
pub const NAME_PREFIX: &str = "mlb-";

/// Where `ip netns` keeps its namespace handles.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// How many fresh names [`Netns::new`] tries before giving up (a name can only be taken by a
/// leftover namespace of a dead process that had the same pid).
const CREATE_ATTEMPTS: usize = 16;

/// Longest prefix accepted by [`Netns::new`].
const MAX_PREFIX_LEN: usize = 32;

/// How often [`ChildGuard::wait_for_line`] and [`ChildGuard::stop`] look again.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The bound on a short command (`ip`, `Netns::exec`): they take milliseconds; one that hangs
/// fails the test.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// How much of a child's output is printed when it is dropped during a panic.
const PANIC_TAIL_BYTES: usize = 8 * 1024;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// `"{pid}-{n}"`, unique within this process and, thanks to the pid, across live processes.
pub(crate) fn unique_suffix() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `mlb-{prefix}-{pid}-{n}` with `ip netns add`. A leading `mlb-` in `prefix` is not
    /// repeated. `prefix` may hold ASCII letters, digits, `-` and `_`.
    pub fn new(prefix: &str) -> Result<Netns> {
        let prefix = prefix.strip_prefix(NAME_PREFIX).unwrap_or(prefix);
        ensure!(
            !prefix.is_empty()
                && prefix.len() <= MAX_PREFIX_LEN
                && prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "bad namespace prefix {prefix:?}: want 1..={MAX_PREFIX_LEN} of [A-Za-z0-9_-]"
        );
        let mut last_error = String::new();
        for _ in 0..CREATE_ATTEMPTS {
            let name = format!("{NAME_PREFIX}{prefix}-{}", unique_suffix());
            let mut add = Command::new("ip");
            add.args(["netns", "add", &name]);
            let out = output_within(add, None, COMMAND_TIMEOUT)
                .context("running `ip netns add` (is iproute2 installed?)")?;
            if out.status.success() {
                super::interrupt::track_namespace(&name);
                return Ok(Netns { name });
            }
            last_error = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            if !last_error.contains("File exists") {
                break;
            }
        }
        bail!("ip netns add {NAME_PREFIX}{prefix}-…: {last_error}")
    }

    /// The namespace's name, as `ip netns list` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/{name}`, the handle `setns` and `ip` open.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_RUN_DIR).join(&self.name)
    }

    /// Runs `ip netns exec {name} {args…}` and returns its stdout. A failure's error holds the
    /// command, its exit status, stderr and stdout.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        ensure!(!args.is_empty(), "Netns::exec needs a program");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(args);
        run_captured(cmd, None)
    }

    /// Runs `ip -n {name} {args…}` (faster than `exec`: no mount namespace is set up) and
    /// returns its stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        ip_in(&["-n", &self.name], args)
    }

    /// Whether an XDP program (any mode) is attached to `interface` in this namespace.
    pub fn xdp_attached(&self, interface: &str) -> Result<bool> {
        Ok(self
            .ip(&["-d", "link", "show", "dev", interface])?
            .contains("prog/xdp"))
    }

    /// Runs every line of `lines` through one `ip -n {name} -batch -` (an `ip` command without
    /// the leading `ip`, e.g. `"link set lo up"`). Stops at the first failing line.
    pub fn ip_batch<S: AsRef<str>>(&self, lines: &[S]) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut script = String::new();
        for line in lines {
            let line = line.as_ref();
            ensure!(
                !line.contains('\n'),
                "ip batch line holds a newline: {line:?}"
            );
            script.push_str(line);
            script.push('\n');
        }
        let mut cmd = Command::new("ip");
        cmd.args(["-n", &self.name, "-batch", "-"]);
        run_captured(cmd, Some(script.as_bytes())).with_context(|| format!("batch:\n{script}"))?;
        Ok(())
    }

    /// Runs `f` on a fresh thread that has entered this namespace (`setns(CLONE_NEWNET)`) and
    /// returns its result. Sockets `f` creates stay in this namespace after the thread ends,
    /// wherever they are used from; the calling thread and the rest of the process stay where
    /// they are. A panic in `f` is resumed on the calling thread.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let handle = File::open(self.path())
            .with_context(|| format!("opening {}", self.path().display()))?;
        let name = &self.name;
        std::thread::scope(|scope| {
            let thread = std::thread::Builder::new()
                .name("mlb-netns".into())
                .spawn_scoped(scope, move || -> Result<T> {
                    // SAFETY: setns only reads the descriptor, which `handle` keeps open, and
                    // changes the network namespace of this thread alone.
                    let rc = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
                    if rc != 0 {
                        return Err(io::Error::last_os_error())
                            .with_context(|| format!("setns into {name}"));
                    }
                    Ok(f())
                })
                .context("spawning a thread to enter a namespace")?;
            match thread.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Writes a sysctl of this namespace, e.g. `set_sysctl("net.ipv4.ip_forward", "1")`. Keys
    /// use dots as separators, so interface names with dots are not supported.
    pub fn set_sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.set_sysctls(&[(key, value)])
    }

    /// Writes several sysctls of this namespace from one thread, in order.
    pub fn set_sysctls(&self, settings: &[(&str, &str)]) -> Result<()> {
        self.run(|| -> Result<()> {
            for (key, value) in settings {
                let path = sysctl_path(key);
                std::fs::write(&path, value)
                    .with_context(|| format!("writing {value:?} to {}", path.display()))?;
            }
            Ok(())
        })?
        .with_context(|| format!("sysctls of {}", self.name))
    }

    /// Reads a sysctl of this namespace, trimmed.
    pub fn sysctl(&self, key: &str) -> Result<String> {
        let path = sysctl_path(key);
        let value = self
            .run(|| std::fs::read_to_string(&path))?
            .with_context(|| format!("reading {} in {}", path.display(), self.name))?;
        Ok(value.trim().to_owned())
    }

    /// Starts `program args…` inside the namespace through `ip netns exec`, with `envs` added to
    /// the environment. `ip netns exec` gives the process a private mount namespace with a
    /// fresh `/sys` (so `/sys/class/net` shows this namespace's interfaces) but without the
    /// caller's bpffs at `/sys/fs/bpf`; use [`Netns::spawn_command`] with
    /// [`EnterMode::SetnsOnly`] for a process that must share pinned BPF objects.
    pub fn spawn(&self, program: &str, args: &[&str], envs: &[(&str, &str)]) -> Result<ChildGuard> {
        let mut cmd = Command::new(program);
        cmd.args(args).envs(envs.iter().copied());
        self.spawn_command(cmd, EnterMode::IpNetnsExec)
    }

    /// Starts a prepared [`Command`] inside the namespace. Its program, arguments, environment
    /// changes (`env`, `env_remove`) and working directory are kept; `env_clear`, stdin and
    /// output settings are not (stdin is `/dev/null`, stdout and stderr go to the guard's log).
    pub fn spawn_command(&self, cmd: Command, mode: EnterMode) -> Result<ChildGuard> {
        let label = Path::new(cmd.get_program())
            .file_name()
            .map(sanitize_label)
            .unwrap_or_else(|| "child".to_owned());
        let description = describe(&cmd);
        let cmd = match mode {
            EnterMode::IpNetnsExec => {
                let mut wrapped = Command::new("ip");
                wrapped
                    .args(["netns", "exec", &self.name])
                    .arg(cmd.get_program())
                    .args(cmd.get_args());
                for (key, value) in cmd.get_envs() {
                    match value {
                        Some(value) => wrapped.env(key, value),
                        None => wrapped.env_remove(key),
                    };
                }
                if let Some(dir) = cmd.get_current_dir() {
                    wrapped.current_dir(dir);
                }
                wrapped
            }
            EnterMode::SetnsOnly => {
                let handle = File::open(self.path())
                    .with_context(|| format!("opening {}", self.path().display()))?;
                let fd = handle.as_raw_fd();
                let mut cmd = cmd;
                // SAFETY: the closure only calls setns, which is async-signal-safe, on a
                // descriptor that `handle` keeps open until after the fork (it is close-on-exec,
                // so the new program does not inherit it).
                unsafe {
                    cmd.pre_exec(move || {
                        if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                            return Err(io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                let guard = spawn_logged(cmd, &label, &description);
                drop(handle);
                return guard;
            }
        };
        spawn_logged(cmd, &label, &description)
    }

    /// Deletes namespaces named `mlb-…-{pid}-{n}` whose pid is no longer running: leftovers of
    /// test processes that were killed before their destructors ran. Returns the names it
    /// deleted. Namespaces of live processes are never touched.
    pub fn cleanup_stale() -> Result<Vec<String>> {
        let entries = match std::fs::read_dir(NETNS_RUN_DIR) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).context(format!("listing {NETNS_RUN_DIR}")),
        };
        let mut removed = Vec::new();
        for entry in entries {
            let name = entry?.file_name().to_string_lossy().into_owned();
            let Some(pid) = owner_pid(&name) else {
                continue;
            };
            if Path::new("/proc").join(pid.to_string()).exists() {
                continue;
            }
            let mut delete = Command::new("ip");
            delete.args(["netns", "delete", &name]);
            let out = output_within(delete, None, COMMAND_TIMEOUT)
                .context("running `ip netns delete`")?;
            if out.status.success() {
                removed.push(name);
            }
        }
        Ok(removed)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let mut delete = Command::new("ip");
        delete.args(["netns", "delete", &self.name]);
        let result = output_within(delete, None, COMMAND_TIMEOUT);
        super::interrupt::untrack_namespace(&self.name);
        match result {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "testkit: ip netns delete {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("testkit: ip netns delete {}: {e:#}", self.name),
        }
    }
}

/// How [`Netns::spawn_command`] puts a process into the namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnterMode {
    /// `ip netns exec`: a private mount namespace with this namespace's `/sys` (and
    /// `/etc/netns/{name}` files, if any). bpffs is not mounted there.
    IpNetnsExec,
    /// Only `setns(CLONE_NEWNET)` before exec: the process keeps the caller's mounts, so it
    /// sees the same bpffs (pinned maps) as the caller, but `/sys/class/net` still lists the
    /// caller's namespace's interfaces.
    SetnsOnly,
}

/// A process started in a namespace. Dropping it sends SIGKILL to its process group and reaps
/// it. Its stdout and stderr go, interleaved, to a log file readable at any time.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    description: String,
    log_path: PathBuf,
    status: Option<ExitStatus>,
}

impl ChildGuard {
    /// The process id (also its process group id).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The command line, for messages.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Path of the file collecting stdout and stderr. Deleted on drop unless the drop happens
    /// during a panic or `MESHLB_KEEP_LOGS` is set.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the process printed so far (stdout and stderr interleaved, lossy UTF-8).
    pub fn output_so_far(&self) -> String {
        match std::fs::read(&self.log_path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => format!("<cannot read {}: {e}>", self.log_path.display()),
        }
    }

    /// The exit status if the process has exited (reaping it), `None` while it runs.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait().context("waitpid")?;
            if self.status.is_some() {
                // Reaped: its pid may be reused, so an interrupt must not kill that group.
                super::interrupt::untrack_group(self.child.id() as i32);
            }
        }
        Ok(self.status)
    }

    /// Bytes of output so far; pass it to [`ChildGuard::wait_for_line_since`] to wait for a
    /// line printed after this point.
    pub fn output_len(&self) -> u64 {
        std::fs::metadata(&self.log_path)
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// Waits until a line of the output contains `pattern` and returns that line. Fails when
    /// `timeout` passes or when the process exits without printing it; the error holds the
    /// output.
    pub fn wait_for_line(&mut self, pattern: &str, timeout: Duration) -> Result<String> {
        self.wait_for_line_since(pattern, 0, timeout)
    }

    /// Like [`ChildGuard::wait_for_line`], looking only at output from byte `offset` on (see
    /// [`ChildGuard::output_len`]).
    pub fn wait_for_line_since(
        &mut self,
        pattern: &str,
        offset: u64,
        timeout: Duration,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let max_polls = timeout.as_millis() / POLL_INTERVAL.as_millis() + 2;
        for _ in 0..max_polls {
            // Check for exit first, then read: output written before exiting is then seen.
            let exited = self.try_wait()?;
            let bytes = read_from(&self.log_path, offset)
                .with_context(|| format!("reading {}", self.log_path.display()))?;
            let output = String::from_utf8_lossy(&bytes);
            if let Some(line) = output.lines().find(|line| line.contains(pattern)) {
                return Ok(line.to_owned());
            }
            if let Some(status) = exited {
                bail!(
                    "{} exited ({status}) without printing {pattern:?}; output:\n{}",
                    self.description,
                    tail(&self.output_so_far(), PANIC_TAIL_BYTES)
                );
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(POLL_INTERVAL.min(left));
        }
        bail!(
            "{} did not print {pattern:?} within {timeout:?}; output:\n{}",
            self.description,
            tail(&self.output_so_far(), PANIC_TAIL_BYTES)
        )
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the process. Does nothing once it was reaped.
    pub fn signal(&mut self, signal: libc::c_int) -> Result<()> {
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = libc::pid_t::try_from(self.child.id()).context("pid out of range")?;
        // SAFETY: plain kill(2) on our own, not yet reaped, child.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(io::Error::last_os_error()).context("kill");
        }
        Ok(())
    }

    /// Graceful stop: SIGTERM, then up to `timeout` for the process to exit, then SIGKILL.
    /// Returns the exit status.
    pub fn stop(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.signal(libc::SIGTERM)?;
        let deadline = Instant::now() + timeout;
        let max_polls = timeout.as_millis() / POLL_INTERVAL.as_millis() + 2;
        for _ in 0..max_polls {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        self.kill_group();
        let status = self.child.wait().context("waitpid")?;
        self.status = Some(status);
        super::interrupt::untrack_group(self.child.id() as i32);
        Ok(status)
    }

    /// Waits up to `timeout` for the process to exit by itself. Returns `None` if it still runs.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        let max_polls = timeout.as_millis() / POLL_INTERVAL.as_millis() + 2;
        for _ in 0..max_polls {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        Ok(None)
    }

    /// SIGKILL to the whole process group, only while the leader is not reaped (so the group id
    /// cannot have been reused).
    fn kill_group(&mut self) {
        if self.status.is_some() {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: plain kill(2) on the process group we created for our child.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill_group();
        if self.status.is_none() {
            match self.child.wait() {
                Ok(status) => self.status = Some(status),
                Err(e) => eprintln!("testkit: waiting for {}: {e}", self.description),
            }
        }
        super::interrupt::untrack_group(self.child.id() as i32);
        let keep = std::thread::panicking() || std::env::var_os("MESHLB_KEEP_LOGS").is_some();
        if std::thread::panicking() {
            let status = self
                .status
                .map(|s| match s.signal() {
                    Some(sig) => format!("signal {sig}"),
                    None => s.to_string(),
                })
                .unwrap_or_else(|| "unknown".to_owned());
            eprintln!(
                "testkit: {} ({status}) output, kept in {}:\n{}",
                self.description,
                self.log_path.display(),
                tail(&self.output_so_far(), PANIC_TAIL_BYTES)
            );
        }
        if !keep {
            let _ = std::fs::remove_file(&self.log_path);
        }
        super::interrupt::untrack_path(&self.log_path);
    }
}

/// Spawns `cmd` in a new process group with stdout and stderr appended to a fresh log file.
fn spawn_logged(mut cmd: Command, label: &str, description: &str) -> Result<ChildGuard> {
    let log_path = std::env::temp_dir().join(format!("mlb-{}-{label}.log", unique_suffix()));
    let log = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let log_err = log.try_clone().context("duplicating the log descriptor")?;
    cmd.stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .process_group(0);
    match cmd.spawn() {
        Ok(child) => {
            // The child leads its own process group.
            super::interrupt::track_group(child.id() as i32);
            super::interrupt::track_path(&log_path);
            Ok(ChildGuard {
                child,
                description: description.to_owned(),
                log_path,
                status: None,
            })
        }
        Err(e) => {
            let _ = std::fs::remove_file(&log_path);
            Err(e).with_context(|| format!("spawning {description}"))
        }
    }
}

/// Runs `ip {first…} {args…}` and returns its stdout; with no `first`, in the calling thread's
/// namespace (a thread inside `Netns::run`).
pub(crate) fn ip_in(first: &[&str], args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("ip");
    cmd.args(first).args(args);
    run_captured(cmd, None)
}

/// Runs a short command to completion (bounded), optionally feeding `stdin`, and returns its
/// stdout; fails on a non-zero exit.
fn run_captured(cmd: Command, stdin: Option<&[u8]>) -> Result<String> {
    let description = describe(&cmd);
    let out = output_within(cmd, stdin, COMMAND_TIMEOUT)?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{description} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            if stdout.trim().is_empty() {
                String::new()
            } else {
                format!("\nstdout: {}", stdout.trim())
            }
        );
    }
    Ok(stdout)
}

fn sanitize_label(name: &OsStr) -> String {
    let label: String = name
        .to_string_lossy()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(32)
        .collect();
    if label.is_empty() {
        "child".to_owned()
    } else {
        label
    }
}

fn sysctl_path(key: &str) -> PathBuf {
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

/// The pid in a name of the form `mlb-{prefix}-{pid}-{n}`.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let mut parts = rest.rsplitn(3, '-');
    let counter = parts.next()?;
    let pid = parts.next()?;
    let prefix = parts.next()?;
    if prefix.is_empty() || counter.is_empty() || !counter.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok().filter(|&pid| pid > 0)
}

/// The last `max` bytes of `text` (at a char boundary), marked when cut.
pub(crate) fn tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("[… {start} bytes cut …]\n{}", &text[start..])
}

/// Reads `path` from `offset` on.
fn read_from(path: &Path, offset: u64) -> io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_our_names_only() {
        assert_eq!(owner_pid("mlb-node-1234-7"), Some(1234));
        assert_eq!(owner_pid("mlb-b0-1-0"), Some(1));
        assert_eq!(owner_pid("mlb-a-b-c-99-3"), Some(99));
        assert_eq!(owner_pid("mlb-node-x-7"), None);
        assert_eq!(owner_pid("mlb-1234-7"), None);
        assert_eq!(owner_pid("other-node-1234-7"), None);
        assert_eq!(owner_pid("mlb-node-0-7"), None);
    }

    #[test]
    fn tail_cuts_at_char_boundary() {
        assert_eq!(tail("abc", 10), "abc");
        let t = tail("ééé", 3);
        assert!(t.ends_with('é'));
        assert!(t.starts_with("[…"));
    }

    #[test]
    fn unique_suffix_is_unique() {
        assert_ne!(unique_suffix(), unique_suffix());
    }
}
