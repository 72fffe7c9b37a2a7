//! Running the real `lbd` binary in a node namespace, for end-to-end tests and the demo.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use super::{ChildGuard, Netns, netns::unique_suffix};

/// How long `lbd` may take to load, attach and program the maps.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `lbd`; killed on drop if not stopped.
pub struct Lbd {
    child: ChildGuard,
    config: PathBuf,
}

impl Lbd {
    /// Writes `services` (YAML) to a temporary file and starts `lbd run` in `node`, attached
    /// to `interfaces`, with `extra` arguments; returns once it reports ready.
    pub fn start(
        lbd: &Path,
        node: &Netns,
        services: &str,
        interfaces: &[&str],
        extra: &[&str],
    ) -> Result<Lbd> {
        let config = std::env::temp_dir().join(format!("mlb-services-{}.yaml", unique_suffix()));
        std::fs::write(&config, services)
            .with_context(|| format!("writing {}", config.display()))?;
        let mut args = vec!["run", "--config", config.to_str().context("temp path")?];
        for interface in interfaces {
            args.extend(["--interface", interface]);
        }
        args.extend(extra);
        // Small connection table: tests need few flows and many lbd run in parallel.
        if !extra.iter().any(|a| a.starts_with("--conntrack-entries")) {
            args.extend(["--conntrack-entries", "65536"]);
        }
        let lbd_path = lbd.to_str().context("lbd path")?;
        let mut child = node.spawn(lbd_path, &args, &[("RUST_LOG", "info"), ("NO_COLOR", "1")])?;
        if let Err(e) = child.wait_for_line("ready", READY_TIMEOUT) {
            let _ = std::fs::remove_file(&config);
            bail!("lbd did not get ready: {e:#}");
        }
        Ok(Lbd { child, config })
    }

    /// Runs `lbd run` with `services` and expects it to fail; returns its exit code and
    /// output.
    pub fn run_expecting_failure(
        lbd: &Path,
        node: &Netns,
        services: &str,
        interfaces: &[&str],
    ) -> Result<(i32, String)> {
        let config = std::env::temp_dir().join(format!("mlb-bad-{}.yaml", unique_suffix()));
        std::fs::write(&config, services)?;
        let mut args = vec!["run", "--config", config.to_str().context("temp path")?];
        for interface in interfaces {
            args.extend(["--interface", interface]);
        }
        let mut child = node.spawn(
            lbd.to_str().context("lbd path")?,
            &args,
            &[("NO_COLOR", "1")],
        )?;
        let status = child.wait_timeout(READY_TIMEOUT)?;
        let output = child.output_so_far();
        let _ = std::fs::remove_file(&config);
        match status {
            Some(status) => Ok((status.code().unwrap_or(-1), output)),
            None => bail!("lbd kept running with a bad service file:\n{output}"),
        }
    }

    pub fn output(&self) -> String {
        self.child.output_so_far()
    }

    /// Rewrites the service file, sends SIGHUP and returns lbd's answer: the log line that
    /// says it reloaded, found no change, or refused the file (or failed).
    pub fn reload(&mut self, services: &str) -> Result<String> {
        std::fs::write(&self.config, services)
            .with_context(|| format!("writing {}", self.config.display()))?;
        let offset = self.child.output_len();
        self.child.signal(libc::SIGHUP)?;
        // Every answer lbd logs to a SIGHUP has "reload" in it.
        self.child
            .wait_for_line_since("reload", offset, READY_TIMEOUT)
    }

    /// Stops `lbd` with SIGTERM and returns the counters it printed on the way out.
    pub fn stop(mut self) -> Result<serde_json::Value> {
        let status = self.child.stop(Duration::from_secs(10))?;
        let output = self.child.output_so_far();
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
        let _ = std::fs::remove_file(&self.config);
    }
}
