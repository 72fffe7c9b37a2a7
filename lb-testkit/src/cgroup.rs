//! A dedicated cgroup v2 directory for a test: socket-level programs attached there act for
//! the processes inside it only, never for the rest of the machine (other tests, cargo).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use super::netns::unique_suffix;

/// A fresh cgroup under the cgroup2 mount with this whole process moved into it. Dropping it
/// moves the process back to the cgroup it came from and removes the directory. Tests that
/// use one must not overlap in the same process (the process is in one cgroup at a time).
pub struct TestCgroup {
    path: PathBuf,
    home: PathBuf,
}

impl TestCgroup {
    pub fn enter() -> Result<TestCgroup> {
        let mount =
            lb_userspace::dataplane::cgroup2_mount().context("no cgroup2 mount in /proc/mounts")?;
        let own = std::fs::read_to_string("/proc/self/cgroup").context("/proc/self/cgroup")?;
        let relative = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .context("this process has no cgroup v2 entry in /proc/self/cgroup")?;
        let home = mount.join(relative.trim_start_matches('/'));
        let path = mount.join(format!("mlb-test-{}", unique_suffix()));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        let guard = TestCgroup { path, home };
        move_self(&guard.path)?;
        Ok(guard)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn move_self(cgroup: &Path) -> Result<()> {
    let procs = cgroup.join("cgroup.procs");
    std::fs::write(&procs, std::process::id().to_string())
        .with_context(|| format!("moving this process into {}", procs.display()))
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Err(e) = move_self(&self.home) {
            eprintln!("leaving test cgroup {}: {e:#}", self.path.display());
        }
        // rmdir, not remove_dir_all: a cgroup directory is removed by rmdir alone.
        if let Err(e) = std::fs::remove_dir(&self.path) {
            eprintln!("removing test cgroup {}: {e}", self.path.display());
        }
    }
}
