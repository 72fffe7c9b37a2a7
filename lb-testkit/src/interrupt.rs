//! Clean-up when a run is interrupted. A Ctrl-C or SIGTERM ends a process without running
//! destructors, and the kit's guards are destructors: the `lbd`s and HAProxys (each in a
//! process group of its own, so a Ctrl-C does not reach them) would keep running, with their
//! namespaces and pinned maps (a default `lbd` holds half a gigabyte of connection table).
//! So the guards record what they own here (process groups, namespaces, pins, state, logs),
//! and the process removes all of it before it exits: from the first thing a guard records
//! (test binaries have no `main` to ask), or from [`clean_up_on_interrupt`] called earlier.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicI32, Ordering},
    },
};

use anyhow::{Result, bail};

/// What the guards own right now.
struct Live {
    /// Process groups (each the leader's pid).
    groups: Vec<i32>,
    namespaces: Vec<String>,
    /// Directories and files (pins, state, logs, service files).
    paths: Vec<PathBuf>,
    /// Clean-ups of what the lists cannot name (a swarm lab's containers and mounts), run
    /// first, while the processes that made it still run.
    hooks: Vec<fn()>,
}

static LIVE: Mutex<Live> = Mutex::new(Live {
    groups: Vec::new(),
    namespaces: Vec::new(),
    paths: Vec::new(),
    hooks: Vec::new(),
});

fn with_live(f: impl FnOnce(&mut Live)) {
    if INSTALLED.get().is_none()
        && let Err(e) = clean_up_on_interrupt()
    {
        eprintln!("warning: an interrupted run will leave what it started behind: {e:#}");
    }
    // A panic while the lock was held leaves the lists intact: use them anyway.
    let mut live = LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    f(&mut live);
}

fn remove<T: PartialEq>(list: &mut Vec<T>, item: &T) {
    if let Some(i) = list.iter().position(|x| x == item) {
        list.swap_remove(i);
    }
}

pub(crate) fn track_group(pgid: i32) {
    with_live(|l| l.groups.push(pgid));
}

pub(crate) fn untrack_group(pgid: i32) {
    with_live(|l| remove(&mut l.groups, &pgid));
}

pub(crate) fn track_namespace(name: &str) {
    with_live(|l| l.namespaces.push(name.to_owned()));
}

pub(crate) fn untrack_namespace(name: &str) {
    with_live(|l| remove(&mut l.namespaces, &name.to_owned()));
}

/// Runs `hook` at an interrupt (once, however often it is registered).
pub(crate) fn on_interrupt(hook: fn()) {
    with_live(|l| {
        if !l.hooks.contains(&hook) {
            l.hooks.push(hook);
        }
    });
}

pub(crate) fn track_path(path: &Path) {
    with_live(|l| l.paths.push(path.to_owned()));
}

pub(crate) fn untrack_path(path: &Path) {
    with_live(|l| remove(&mut l.paths, &path.to_owned()));
}

/// The signals that end a run early.
const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Whether (and how) the handler was installed: once per process.
static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();

/// The write end of the pipe the signal handler reports on (-1: not installed).
static REPORT_FD: AtomicI32 = AtomicI32::new(-1);

/// Signal handler: one byte, the signal, down the pipe (write(2) is async-signal-safe).
extern "C" fn report(signal: libc::c_int) {
    let fd = REPORT_FD.load(Ordering::Relaxed);
    let byte = signal as u8;
    // SAFETY: writes one byte from a live local to a descriptor this module owns.
    unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
}

/// From now on, SIGINT, SIGTERM and SIGHUP make the process kill the process groups, delete
/// the namespaces and remove the files and directories the kit's guards hold, say so, and
/// exit with 128 + the signal. A handler (not a blocked mask, which children would inherit:
/// `lbd` must still get its own SIGTERM and SIGHUP) reports the signal to a thread that does
/// the work; `exec` resets handled signals, so children start with the default dispositions.
/// Installs once; later calls answer as the first did.
pub fn clean_up_on_interrupt() -> Result<()> {
    INSTALLED
        .get_or_init(|| install().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn install() -> Result<()> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!(
            "creating the signal pipe: {}",
            std::io::Error::last_os_error()
        );
    }
    let [read_fd, write_fd] = fds;
    REPORT_FD.store(write_fd, Ordering::Relaxed);
    std::thread::Builder::new()
        .name("interrupt".into())
        .spawn(move || {
            let mut byte = 0u8;
            loop {
                // SAFETY: reads one byte into a live local from the pipe's read end.
                let n = unsafe { libc::read(read_fd, (&mut byte as *mut u8).cast(), 1) };
                if n == 1 {
                    break;
                }
                if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                {
                    continue;
                }
                return;
            }
            let signal = libc::c_int::from(byte);
            let (groups, namespaces, paths) = clean_up();
            eprintln!(
                "interrupted (signal {signal}): stopped {groups} process group(s), deleted {namespaces} namespace(s), removed {paths} file(s) and directory(ies)"
            );
            std::process::exit(128 + signal);
        })?;
    for signal in SIGNALS {
        // SAFETY: installs `report`, which only calls write(2), with a zeroed (empty) mask.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = report as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            bail!(
                "installing the handler of signal {signal}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// Kills, deletes and removes everything tracked; returns how many of each.
fn clean_up() -> (usize, usize, usize) {
    let mut counts = (0, 0, 0);
    // Run without the lock: a hook may start a command, which the lists record.
    let mut hooks = Vec::new();
    with_live(|live| hooks.clone_from(&live.hooks));
    for hook in hooks {
        hook();
    }
    with_live(|live| {
        for &pgid in &live.groups {
            // SAFETY: kill(2) on a process group this process started.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
        counts.0 = live.groups.len();
        for name in &live.namespaces {
            let deleted = Command::new("ip")
                .args(["netns", "delete", name])
                .stdin(std::process::Stdio::null())
                .output()
                .is_ok_and(|out| out.status.success());
            counts.1 += usize::from(deleted);
        }
        for path in &live.paths {
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(path)
            } else {
                std::fs::remove_file(path)
            };
            counts.2 += usize::from(removed.is_ok());
        }
    });
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracked_things_are_untracked_one_by_one() {
        track_namespace("mlb-x-1");
        track_namespace("mlb-x-2");
        untrack_namespace("mlb-x-1");
        track_group(-12345);
        untrack_group(-12345);
        with_live(|l| {
            assert!(l.namespaces.contains(&"mlb-x-2".to_owned()));
            assert!(!l.namespaces.contains(&"mlb-x-1".to_owned()));
            assert!(!l.groups.contains(&-12345));
        });
        untrack_namespace("mlb-x-2");
    }

    /// The handler must leave children's signals alone: `lbd` stops on SIGTERM and reloads on
    /// SIGHUP (a blocked mask, inherited through exec, once kept both from it).
    #[test]
    fn children_start_with_no_signal_blocked() {
        clean_up_on_interrupt().expect("install");
        let out = Command::new("grep")
            .args(["^SigBlk", "/proc/self/status"])
            .output()
            .expect("grep");
        let line = String::from_utf8_lossy(&out.stdout);
        let mask = line.split_whitespace().nth(1).expect("a mask");
        assert!(mask.chars().all(|c| c == '0'), "{line}");
    }
}
