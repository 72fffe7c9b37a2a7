//! Which tasks the swarm wants running (or, for a job's, to complete), as a manager's Engine
//! lists them (`/tasks` answers 503 on workers): every other task the networks list is being
//! stopped. Its container runs on for its stop grace period, but it gets no new flows, as
//! Docker's own load balancer drops it.

use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, Instant},
};

use bollard::{
    Docker,
    models::{NetworkInspect, SystemInfo},
    query_parameters::ListTasksOptions,
};
use tracing::{info, warn};

use super::snapshot::listed_task_ids;

/// A read of `/tasks` is made at most once per this many times the last one took: on a large
/// swarm the answer is big (about 700 bytes a task) and the manager's Engine builds it anew.
const DUTY_DIVISOR: u32 = 20;
/// A read of `/tasks` that takes longer is a manager that cannot say (no leader: swarmkit
/// retries its leader for the whole request), which must not hold up the other reads.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failed read, the next is tried this much later (meanwhile the tasks known to be
/// stopping stay so: see `follow`'s `StoppingMemory`).
const RETRY_AFTER: Duration = Duration::from_secs(5);

#[derive(Default)]
pub(super) struct DesiredStates {
    last: Option<LastRead>,
    /// When a failed read may be tried again.
    retry_at: Option<Instant>,
    /// The last failed read's error, told once until it changes.
    error: Option<String>,
}

struct LastRead {
    at: Instant,
    took: Duration,
    /// The ids of the tasks wanted running.
    running: BTreeSet<String>,
    /// The ids of the tasks the networks listed then.
    listed: BTreeSet<String>,
}

impl LastRead {
    /// The tasks wanted running as this read said, and every task listed now (`listed_now`)
    /// that was not then: a task started since is wanted running.
    fn running_now(&self, listed_now: &BTreeSet<String>) -> BTreeSet<String> {
        let new = listed_now.difference(&self.listed).cloned();
        self.running.iter().cloned().chain(new).collect()
    }
}

impl DesiredStates {
    /// The ids of the tasks the swarm wants running (or complete), on a manager; `None` on a
    /// worker, or when the manager cannot say (no leader; asked again after [`RETRY_AFTER`]).
    /// Between two reads of `/tasks` (see [`DUTY_DIVISOR`]), the last answer, with every task
    /// the networks (`overlays`) list now but did not then counted as wanted running: only a
    /// read marks a task stopping.
    pub(super) async fn read(
        &mut self,
        client: &Docker,
        host: &str,
        info: &SystemInfo,
        overlays: &[NetworkInspect],
    ) -> Option<BTreeSet<String>> {
        let manager = info.swarm.as_ref().and_then(|s| s.control_available) == Some(true);
        if !manager {
            self.last = None;
            return None;
        }
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return None;
        }
        let listed_now = listed_task_ids(overlays);
        if let Some(last) = &self.last
            && last.at.elapsed() < last.took * DUTY_DIVISOR
        {
            return Some(last.running_now(&listed_now));
        }
        // A job's tasks are wanted complete, not running.
        let wanted = vec!["running".to_owned(), "complete".to_owned()];
        let filters = HashMap::from([("desired-state".to_owned(), wanted)]);
        let started = Instant::now();
        let request = client.list_tasks(Some(ListTasksOptions {
            filters: Some(filters),
        }));
        let answer = match tokio::time::timeout(READ_TIMEOUT, request).await {
            Ok(answer) => answer.map_err(|e| crate::error_text::with_causes(&e)),
            Err(_) => Err(format!("no answer within {READ_TIMEOUT:?}")),
        };
        match answer {
            Ok(tasks) => {
                self.retry_at = None;
                if self.error.take().is_some() {
                    info!(
                        docker_host = host,
                        "swarm: the manager lists its tasks again; tasks being stopped get no new flows"
                    );
                }
                let running: BTreeSet<String> = tasks.into_iter().filter_map(|t| t.id).collect();
                self.last = Some(LastRead {
                    at: started,
                    took: started.elapsed(),
                    running: running.clone(),
                    listed: listed_now,
                });
                Some(running)
            }
            Err(text) => {
                if self.error.as_deref() != Some(&text) {
                    warn!(
                        docker_host = host,
                        "swarm: GET /tasks on this manager failed ({text}); tasks known to be \
                         stopping stay so, no other is marked until it answers (tried again \
                         every {RETRY_AFTER:?})"
                    );
                    self.error = Some(text);
                }
                self.last = None;
                self.retry_at = Some(Instant::now() + RETRY_AFTER);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    /// Between two reads a task the last read saw stopping stays so, and one listed since is
    /// wanted running; one the last read wanted running stays so until the next read.
    #[test]
    fn between_reads_only_a_read_marks_a_task_stopping() {
        let last = LastRead {
            at: Instant::now(),
            took: Duration::from_millis(5),
            running: ids(&["a", "b"]),
            listed: ids(&["a", "b", "c"]),
        };
        assert_eq!(
            last.running_now(&ids(&["a", "b", "c", "d"])),
            ids(&["a", "b", "d"])
        );
        assert_eq!(last.running_now(&ids(&["b", "c"])), ids(&["a", "b"]));
    }
}
