//! Container health checks, as ECS and Docker define them: every interval the check's command
//! runs inside the container — its namespaces, root, working directory, environment and user,
//! entered with util-linux's `nsenter` in a process group of its own, all of which is killed
//! when the timeout ends it — and `Tracker` turns the results into HEALTHY, UNHEALTHY or UNKNOWN. Each change
//! goes into the task's record and so to the controller. The check runs in the agent's
//! cgroup, not the container's (its CPU and memory are not charged to the task).

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info};

use crate::spec::HealthCheck;
use crate::AgentInner;

pub const UNKNOWN: &str = "UNKNOWN";
pub const HEALTHY: &str = "HEALTHY";
pub const UNHEALTHY: &str = "UNHEALTHY";

/// The health decided from check results.
#[derive(Clone, Debug, PartialEq)]
pub struct Tracker {
    retries: u32,
    start_period_ms: i64,
    started_ms: i64,
    failures: u32,
    ever_healthy: bool,
    status: &'static str,
}

impl Tracker {
    pub fn new(check: &HealthCheck, started_ms: i64) -> Tracker {
        Tracker {
            retries: check.retries.max(1),
            start_period_ms: i64::from(check.start_period_secs) * 1000,
            started_ms,
            failures: 0,
            ever_healthy: false,
            status: UNKNOWN,
        }
    }

    /// Records one check's result at `now_ms`; returns the new status if it changed. A pass
    /// makes the container HEALTHY; `retries` failures in a row make it UNHEALTHY; failures
    /// within the start period count only once it has passed a check.
    pub fn record(&mut self, passed: bool, now_ms: i64) -> Option<&'static str> {
        let before = self.status;
        if passed {
            self.failures = 0;
            self.ever_healthy = true;
            self.status = HEALTHY;
        } else if self.ever_healthy || now_ms - self.started_ms >= self.start_period_ms {
            self.failures += 1;
            if self.failures >= self.retries {
                self.status = UNHEALTHY;
            }
        }
        (self.status != before).then_some(self.status)
    }
}

/// Checks container `index` of a task (its shim's directory `dir`) until the task ends: the
/// caller aborts this when the container exits.
pub async fn watch(
    agent: Arc<AgentInner>,
    task_id: String,
    index: usize,
    dir: std::path::PathBuf,
    check: HealthCheck,
    started_ms: i64,
) {
    let mut tracker = Tracker::new(&check, started_ms);
    let interval = Duration::from_secs(u64::from(check.interval_secs));
    loop {
        tokio::time::sleep(interval).await;
        let Some(pid) = container_pid(&dir) else {
            continue;
        };
        let passed = run(pid, &check).await;
        debug!(task_id, index, passed, "health check");
        if let Some(status) = tracker.record(passed, chrono::Utc::now().timestamp_millis()) {
            info!(task_id, index, status, "container health changed");
            agent.update(&task_id, |r| {
                if let Some(c) = r.containers.get_mut(index) {
                    c.health = status.to_string();
                }
            });
        }
    }
}

/// The container's first process, from what its shim recorded when it started.
fn container_pid(dir: &Path) -> Option<i32> {
    let bytes = std::fs::read(dir.join(crate::shim::STARTED)).ok()?;
    let started: crate::shim::Started = serde_json::from_slice(&bytes).ok()?;
    Some(started.pid)
}

/// The check's command line: `CMD-SHELL` through the container's /bin/sh, `CMD` as given.
fn argv(check: &HealthCheck) -> Vec<String> {
    match check.command.split_first() {
        Some((first, rest)) if first == "CMD-SHELL" => {
            vec!["/bin/sh".into(), "-c".into(), rest.join(" ")]
        }
        Some((first, rest)) if first == "CMD" => rest.to_vec(),
        _ => check.command.clone(),
    }
}

/// Runs the check once in the container of `pid`: passed = exit 0 within the timeout.
async fn run(pid: i32, check: &HealthCheck) -> bool {
    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let (uid, gid) = ids(pid).unwrap_or((0, 0));
    let mut cmd = tokio::process::Command::new("nsenter");
    cmd.arg(format!("--target={pid}"))
        .args(["--mount", "--uts", "--ipc", "--net", "--pid", "--cgroup"])
        .args(["--root", "--wd"])
        .arg(format!("--setuid={uid}"))
        .arg(format!("--setgid={gid}"))
        .arg("--")
        .args(argv(check))
        .env_clear()
        .envs(env.split(|b| *b == 0).filter_map(|kv| {
            let kv = std::str::from_utf8(kv).ok()?;
            kv.split_once('=')
        }))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // nsenter forks the command into the container's PID namespace: the group holds both.
        .process_group(0)
        .kill_on_drop(true);
    let Ok(mut child) = cmd.spawn() else {
        return false;
    };
    let timeout = Duration::from_secs(u64::from(check.timeout_secs));
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => status.success(),
        _ => {
            if let Some(id) = child.id() {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(id as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.wait().await;
            false
        }
    }
}

/// The real uid and gid the container's process runs as.
fn ids(pid: i32) -> Option<(u32, u32)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some((field("Uid:")?, field("Gid:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(retries: u32, start_period_secs: u32) -> HealthCheck {
        HealthCheck {
            command: vec!["CMD".into(), "true".into()],
            interval_secs: 5,
            timeout_secs: 2,
            retries,
            start_period_secs,
        }
    }

    #[test]
    fn retries_failures_in_a_row_make_a_container_unhealthy_and_a_pass_heals_it() {
        let mut t = Tracker::new(&check(3, 0), 0);
        assert_eq!(t.record(false, 5_000), None, "1 of 3: still UNKNOWN");
        assert_eq!(t.record(false, 10_000), None);
        assert_eq!(t.record(false, 15_000), Some(UNHEALTHY));
        assert_eq!(t.record(false, 20_000), None, "no change, no report");
        assert_eq!(t.record(true, 25_000), Some(HEALTHY));
        assert_eq!(t.record(false, 30_000), None, "one failure is not three");
        assert_eq!(t.record(true, 35_000), None);
    }

    #[test]
    fn failures_in_the_start_period_do_not_count_until_a_check_passed() {
        let mut t = Tracker::new(&check(1, 20), 0);
        assert_eq!(t.record(false, 5_000), None);
        assert_eq!(t.record(false, 15_000), None);
        assert_eq!(
            t.record(false, 20_000),
            Some(UNHEALTHY),
            "past the start period"
        );
        let mut t = Tracker::new(&check(1, 20), 0);
        assert_eq!(t.record(true, 5_000), Some(HEALTHY));
        assert_eq!(
            t.record(false, 10_000),
            Some(UNHEALTHY),
            "once healthy, the start period is over"
        );
    }

    #[test]
    fn cmd_shell_runs_through_the_containers_shell() {
        let mut c = check(1, 0);
        c.command = vec!["CMD-SHELL".into(), "test -f /ready".into()];
        assert_eq!(argv(&c), ["/bin/sh", "-c", "test -f /ready"]);
        c.command = vec!["CMD".into(), "/bin/check".into(), "--quick".into()];
        assert_eq!(argv(&c), ["/bin/check", "--quick"]);
    }
}
