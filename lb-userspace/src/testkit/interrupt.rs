//! Clean-up when a run is interrupted. A Ctrl-C or SIGTERM ends a process without running
//! destructors, and the kit's guards are destructors: the `lbd`s and HAProxys (each in a
//! process group of its own, so a Ctrl-C does not reach them) would keep running, with their
//! namespaces and pinned maps (a default `lbd` holds half a gigabyte of connection table).
//! So the guards record what they own here, and a program that calls [`clean_up_on_interrupt`]
//! removes all of it before it exits.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
};

use anyhow::{Result, bail};

/// What the guards own right now.
struct Live {
    /// Process groups (each the leader's pid).
    groups: Vec<i32>,
    namespaces: Vec<String>,
    dirs: Vec<PathBuf>,
}

static LIVE: Mutex<Live> = Mutex::new(Live {
    groups: Vec::new(),
    namespaces: Vec::new(),
    dirs: Vec::new(),
});

fn with_live(f: impl FnOnce(&mut Live)) {
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

pub(crate) fn track_dir(dir: &Path) {
    with_live(|l| l.dirs.push(dir.to_owned()));
}

pub(crate) fn untrack_dir(dir: &Path) {
    with_live(|l| remove(&mut l.dirs, &dir.to_owned()));
}

/// The signals that end a run early.
const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// From now on, SIGINT, SIGTERM and SIGHUP make the process kill the process groups, delete
/// the namespaces and remove the directories the kit's guards hold, say so, and exit with
/// 128 + the signal. Call it first in `main`, before any other thread starts: the signals are
/// blocked in this thread, every thread started later inherits that, and one thread of its
/// own waits for them. Children start with no signal blocked (std resets the mask).
pub fn clean_up_on_interrupt() -> Result<()> {
    // SAFETY: plain libc calls on a local, initialised signal set.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in SIGNALS {
            libc::sigaddset(&mut set, signal);
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            bail!(
                "blocking SIGINT/SIGTERM/SIGHUP: {}",
                std::io::Error::from_raw_os_error(rc)
            );
        }
        set
    };
    std::thread::Builder::new()
        .name("interrupt".into())
        .spawn(move || {
            let mut signal: libc::c_int = 0;
            // SAFETY: waits for one of the blocked signals of `set`.
            if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
                return;
            }
            let (groups, namespaces, dirs) = clean_up();
            eprintln!(
                "interrupted (signal {signal}): stopped {groups} process group(s), deleted {namespaces} namespace(s), removed {dirs} directory(ies)"
            );
            std::process::exit(128 + signal);
        })?;
    Ok(())
}

/// Kills, deletes and removes everything tracked; returns how many of each.
fn clean_up() -> (usize, usize, usize) {
    let mut counts = (0, 0, 0);
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
        for dir in &live.dirs {
            counts.2 += usize::from(std::fs::remove_dir_all(dir).is_ok());
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
}
