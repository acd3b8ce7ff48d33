//! Starting, signalling and awaiting shims: the boundary between the async agent and the
//! single-threaded shim processes. Nothing here calls libcontainer; the shim does.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;

use crate::shim::{self, ExitRecord, ShimConfig};

/// A running shim: its pid and a pidfd (immune to pid reuse) to signal and await it.
pub struct ShimHandle {
    pub pid: i32,
    pidfd: OwnedFd,
}

/// Asks a shim to stop its container (SIGTERM; the shim escalates to SIGKILL after the
/// container's stop timeout). Signals through a pidfd, so a reused pid is never hit.
fn stop_via(pidfd: &OwnedFd) {
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGTERM,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "signal to shim not delivered");
    }
}

/// A second handle on a shim that can only ask it to stop.
pub struct ShimStopper(OwnedFd);

impl ShimStopper {
    pub fn stop(&self) {
        stop_via(&self.0)
    }
}

impl ShimHandle {
    pub fn stop(&self) {
        stop_via(&self.pidfd)
    }

    pub fn stopper(&self) -> Option<ShimStopper> {
        self.pidfd.try_clone().ok().map(ShimStopper)
    }

    /// Resolves when the shim process has exited (whether or not it is our child).
    pub async fn exited(self) {
        // SAFETY: the AsyncFd owns the OwnedFd, so the fd stays open for as long as it is
        // registered and is closed only after deregistration.
        let registered =
            unsafe { AsyncFd::register_with_interest(self.pidfd, tokio::io::Interest::READABLE) };
        if let Ok(afd) = registered {
            let _ = afd.readable().await;
        }
        // Reap it if it was our child; an adopted shim is someone else's child (ECHILD).
        let _ = waitpid(Pid::from_raw(self.pid), Some(WaitPidFlag::WNOHANG));
    }
}

/// Launches `skiff shim DIR` and waits (blocking, at most the start timeout) until it reports
/// the container started. On failure returns the shim's own error message.
pub fn launch(
    shim_exe: &Path,
    dir: &Path,
    cgroup_path: &str,
    start_timeout: std::time::Duration,
) -> Result<ShimHandle, String> {
    let shim_log =
        fs::File::create(dir.join("shim.log")).map_err(|e| format!("creating shim.log: {e}"))?;
    let mut child = Command::new(shim_exe)
        .arg("shim")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(shim_log)
        .env("RUST_LOG", "warn")
        .process_group(0)
        .spawn()
        .map_err(|e| format!("starting the shim {}: {e}", shim_exe.display()))?;
    let pid = child.id() as i32;
    let pidfd =
        shim::pidfd_open(Pid::from_raw(pid)).map_err(|e| format!("pidfd_open(shim): {e}"))?;
    let handle = ShimHandle { pid, pidfd };
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout is piped");
    // A shim that hangs before its container starts must not leave the task PENDING forever.
    let mut fds = [PollFd::new(stdout.as_fd(), PollFlags::POLLIN)];
    let timeout_ms = i32::try_from(start_timeout.as_millis()).unwrap_or(i32::MAX);
    let ready = poll(
        &mut fds,
        PollTimeout::try_from(timeout_ms).unwrap_or(PollTimeout::MAX),
    );
    if matches!(ready, Ok(0)) {
        let _ = nix::sys::signal::killpg(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        kill_cgroup(cgroup_path);
        let _ = child.wait();
        return Err(format!(
            "the container did not start within {start_timeout:?} (the agent's start_timeout)"
        ));
    }
    let _ = BufReader::new(stdout).read_line(&mut line);
    let line = line.trim();
    if line.starts_with("started") {
        return Ok(handle);
    }
    let _ = child.wait();
    Err(match line.strip_prefix("failed ") {
        Some(msg) => msg.to_string(),
        None => {
            let log = fs::read_to_string(dir.join("shim.log")).unwrap_or_default();
            format!(
                "the shim exited before starting the container: {}",
                log.trim()
            )
        }
    })
}

/// SIGKILLs every process in a container's cgroups (v1 hierarchies and v2), for a container
/// whose shim could not be trusted to stop it.
fn kill_cgroup(cgroup_path: &str) {
    let rel = cgroup_path.trim_start_matches('/');
    let roots = [
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/cpu",
        "/sys/fs/cgroup",
    ];
    for root in roots {
        let Ok(procs) = fs::read_to_string(Path::new(root).join(rel).join("cgroup.procs")) else {
            continue;
        };
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Finds a shim that outlived an agent restart. None if it is no longer running.
pub fn adopt(dir: &Path) -> Option<ShimHandle> {
    let pid: i32 = fs::read_to_string(dir.join(shim::SHIM_PID))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let pidfd = shim::pidfd_open(Pid::from_raw(pid)).ok()?;
    // The pid could have been reused by an unrelated process: check it is our shim for DIR.
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let is_ours =
        args.contains(&b"shim".as_slice()) && args.contains(&dir.as_os_str().as_encoded_bytes());
    is_ours.then_some(ShimHandle { pid, pidfd })
}

/// The exit record a shim left, or a record saying it left none.
pub fn exit_record(dir: &Path) -> ExitRecord {
    fs::read(dir.join(shim::EXIT))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| ExitRecord {
            exit_code: None,
            signal: None,
            oom_killed: false,
            error: Some("the shim ended without recording the container's exit".into()),
            finished_at_ms: chrono::Utc::now().timestamp_millis(),
        })
}

pub fn write_shim_config(dir: &Path, cfg: &ShimConfig) -> std::io::Result<PathBuf> {
    let path = dir.join(shim::SHIM_CONFIG);
    shim::write_atomic(
        &path,
        &serde_json::to_vec_pretty(cfg).expect("serializable"),
    )?;
    Ok(path)
}
