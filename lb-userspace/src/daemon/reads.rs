//! What the daemon holds, read by the API, the metrics and the event loop: its running plan,
//! configuration, inputs and dataplane, as they are.

use super::*;

impl Daemon {
    /// Whether `name` is a service the swarm provides (not the file's or the API's).
    pub fn is_swarm_service(&self, name: &str) -> bool {
        self.merged.sources.get(name) == Some(&crate::source::api_state::Source::Swarm)
    }

    /// Whether the node's addresses or connected subnets differ from those the running plan
    /// was made for.
    pub fn node_changed(&self) -> bool {
        node_facts().is_ok_and(|now| now != self.node)
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn changes(&self) -> &BTreeMap<(Trigger, Outcome), u64> {
        &self.changes
    }

    pub fn running(&self) -> &DesiredState {
        &self.running
    }

    /// The VIPs to announce: the running plan's (`DesiredState::announced_vips`), less those
    /// not announced yet (`announced`) whose every service is still waiting for its health
    /// checks' first verdict: a new VIP is announced once a check found a backend up, not
    /// announced and withdrawn when the first checks find them all down. One announced already
    /// stays (a restart must not withdraw).
    pub fn vips_to_announce(&self, announced: &BTreeSet<IpAddr>) -> BTreeSet<IpAddr> {
        let awaiting = self.health.awaiting_first_verdict(&self.merged.file);
        self.running.announced_vips_of(|s| {
            !awaiting.contains(&s.name) || s.vip.is_some_and(|vip| announced.contains(&vip))
        })
    }

    /// How many backends of service `name` take new flows: weight above 0 and not left out
    /// for failing their checks; `None` when there is no such service.
    pub fn usable_backends(&self, name: &str) -> Option<usize> {
        let spec = self.merged.file.services.get(name)?;
        let left_out = self.health.left_out_of(spec);
        Some(
            spec.backends
                .iter()
                .enumerate()
                .filter(|(i, b)| b.weight > 0 && !left_out.contains(i))
                .count(),
        )
    }

    pub fn merged(&self) -> &Merged {
        &self.merged
    }

    pub fn api_state(&self) -> &ApiState {
        &self.api
    }

    pub fn file(&self) -> &ServiceFile {
        &self.file
    }

    /// `None` when lbd runs without a service file.
    pub fn config_path(&self) -> Option<&Path> {
        self.config_path.as_deref()
    }

    /// The last swarm snapshot, when lbd follows a swarm.
    pub fn swarm(&self) -> Option<&Snapshot> {
        self.swarm.as_ref()
    }

    /// What the swarm became on this node, as last planned.
    pub fn swarm_services(&self) -> &SwarmServices {
        &self.swarm_services
    }

    pub fn dataplane(&self) -> &Dataplane {
        &self.dp
    }

    /// See [`Dataplane::take_kernel_log`].
    pub fn take_kernel_log(&mut self) -> Option<crate::dataplane::KernelLog> {
        self.dp.take_kernel_log()
    }

    pub fn attachments(&self) -> &[Attachment] {
        self.dp.attachments()
    }

    /// Where the socket-level programs are attached, if they are.
    pub fn socket_attachment(&self) -> Option<&dataplane::SocketAttachment> {
        self.dp.socket_attachment()
    }

    pub fn uptime_s(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// The service file's refusal, while no reload of it has applied since.
    pub fn config_refused(&self) -> Option<crate::api::ConfigRefused> {
        let refused = self.file_refused.as_ref()?;
        let unix_s = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        };
        Some(crate::api::ConfigRefused {
            file: self
                .config_path
                .as_ref()
                .map_or_else(|| "(none)".to_owned(), |p| p.display().to_string()),
            error: refused.error.clone(),
            since_unix_s: unix_s(refused.since),
            age_s: refused.since.elapsed().map_or(0, |d| d.as_secs()),
        })
    }

    /// What may not match what lbd runs: the maps (a failed undo), the API state file (a
    /// failed restore).
    pub fn degraded(&self) -> Option<String> {
        let file = self
            .api_file_behind
            .as_ref()
            .map(|why| format!("API state file: {why}"));
        match (&self.degraded, file) {
            (Some(maps), Some(file)) => Some(format!("{maps}; {file}")),
            (maps, file) => maps.clone().or(file),
        }
    }
}
