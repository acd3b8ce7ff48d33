//! Starting, signalling and awaiting shims: the boundary between the async agent and the
//! single-threaded shim processes. Nothing here calls libcontainer; the shim does.

use std::fs;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;

use crate::shim::{self, ExitRecord, ShimConfig};
use crate::zygote;

/// A running shim: its pid, a pidfd (immune to pid reuse) to signal and await it, and for a
/// shim this agent launched, its status pipe.
pub struct ShimHandle {
    pub pid: i32,
    pidfd: OwnedFd,
    /// The shim says `exited` here as soon as its container has exited and `exit.json` is
    /// written, before it spends milliseconds deleting the container's cgroups.
    status: Option<OwnedFd>,
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

/// Waits until a file descriptor is readable (data, EOF, or for a pidfd: the process ended).
async fn readable(fd: OwnedFd) {
    // SAFETY: the AsyncFd owns the OwnedFd, so the fd stays open for as long as it is
    // registered and is closed only after deregistration.
    let registered = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) };
    if let Ok(afd) = registered {
        let _ = afd.readable().await;
    }
}

/// A further handle on a shim: to ask it to stop, or to await its end.
pub struct ShimRef {
    pid: i32,
    pidfd: OwnedFd,
}

impl ShimRef {
    pub fn stop(&self) {
        stop_via(&self.pidfd)
    }

    /// Resolves when the shim process has ended, and reaps it if it was our child (an
    /// adopted shim is someone else's child: ECHILD).
    pub async fn gone(self) {
        readable(self.pidfd).await;
        let _ = waitpid(Pid::from_raw(self.pid), Some(WaitPidFlag::WNOHANG));
    }
}

impl ShimHandle {
    pub fn stop(&self) {
        stop_via(&self.pidfd)
    }

    pub fn stopper(&self) -> Option<ShimRef> {
        let pidfd = self.pidfd.try_clone().ok()?;
        Some(ShimRef {
            pid: self.pid,
            pidfd,
        })
    }

    /// Resolves when the container has exited: at the shim's `exited` line, or when the shim
    /// process is gone (an adopted shim has no status pipe; a shim may also die). Returns the
    /// handle to await the shim's own end (after it deleted the container).
    pub async fn exited(self) -> ShimRef {
        let shim = ShimRef {
            pid: self.pid,
            pidfd: self.pidfd,
        };
        let process_end = shim.pidfd.try_clone().ok();
        match (self.status, process_end) {
            (Some(status), Some(end)) => {
                tokio::select! {
                    _ = readable(status) => {}
                    _ = readable(end) => {}
                }
            }
            (_, Some(end)) => readable(end).await,
            (_, None) => {}
        }
        shim
    }
}

/// Reads the shim's first status line one byte at a time, so nothing after it (the `exited`
/// line of a container that ends at once) is consumed.
fn read_status_line(fd: &OwnedFd) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 4096 {
        match nix::unistd::read(fd.as_raw_fd(), &mut byte) {
            Ok(1) if byte[0] == b'\n' => break,
            Ok(1) => line.push(byte[0]),
            Err(nix::errno::Errno::EINTR) => continue,
            _ => break,
        }
    }
    String::from_utf8_lossy(&line).into_owned()
}

/// How a shim process comes to be: forked by the agent's zygote (the usual way), or, when
/// there is none, executed as `skiff shim DIR`.
pub trait ShimForker {
    fn fork_shim(&self, dir: &Path, status: OwnedFd) -> Result<zygote::Forked, zygote::ForkError>;
}

/// Starts the shim for the container in `dir` and waits (blocking, at most the start
/// timeout) until it reports the container started. On failure returns the shim's own
/// error message.
pub fn launch(
    forker: &dyn ShimForker,
    shim_exe: &Path,
    dir: &Path,
    cgroup_path: &str,
    start_timeout: std::time::Duration,
) -> Result<ShimHandle, String> {
    let (status, status_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| format!("creating the shim's status pipe: {e}"))?;
    // An exec'd shim is our child and is reaped here; a forked one is the zygote's.
    let (pid, pidfd, mut child) = match forker.fork_shim(dir, status_w) {
        Ok(f) => (f.pid, f.pidfd, None),
        Err(zygote::ForkError::Failed(e)) => {
            // It may have started the container after all: leave nothing running.
            kill_cgroup(cgroup_path);
            return Err(format!("starting the shim: {e}"));
        }
        Err(zygote::ForkError::NotSent(status_w, e)) => {
            tracing::debug!(error = %e, "no zygote; executing the shim");
            let child = exec_shim(shim_exe, dir, status_w)?;
            let pid = child.id() as i32;
            let pidfd = shim::pidfd_open(Pid::from_raw(pid))
                .map_err(|e| format!("pidfd_open(shim): {e}"))?;
            (pid, pidfd, Some(child))
        }
    };
    let reap = |child: &mut Option<Child>| {
        if let Some(c) = child {
            let _ = c.wait();
        }
    };
    // A shim that hangs before its container starts must not leave the task PENDING forever.
    let mut fds = [PollFd::new(status.as_fd(), PollFlags::POLLIN)];
    let timeout_ms = i32::try_from(start_timeout.as_millis()).unwrap_or(i32::MAX);
    let ready = poll(
        &mut fds,
        PollTimeout::try_from(timeout_ms).unwrap_or(PollTimeout::MAX),
    );
    if matches!(ready, Ok(0)) {
        let _ = nix::sys::signal::killpg(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        kill_cgroup(cgroup_path);
        reap(&mut child);
        return Err(format!(
            "the container did not start within {start_timeout:?} (the agent's start_timeout)"
        ));
    }
    let line = read_status_line(&status);
    let line = line.trim();
    if line.starts_with("started") {
        return Ok(ShimHandle {
            pid,
            pidfd,
            status: Some(status),
        });
    }
    reap(&mut child);
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

/// `skiff shim DIR`, its status line on `status`.
fn exec_shim(shim_exe: &Path, dir: &Path, status: OwnedFd) -> Result<Child, String> {
    let shim_log =
        fs::File::create(dir.join("shim.log")).map_err(|e| format!("creating shim.log: {e}"))?;
    Command::new(shim_exe)
        .arg("shim")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(status))
        .stderr(shim_log)
        .env("RUST_LOG", "warn")
        .process_group(0)
        .spawn()
        .map_err(|e| format!("starting the shim {}: {e}", shim_exe.display()))
}

/// The cgroup (relative to every hierarchy's root) a task's container runs in.
pub fn cgroup_path(task_id: &str, container: &str) -> String {
    format!("/skiff/{task_id}-{container}")
}

/// Makes the cgroup every container's lives under (`/skiff`, see `cgroup_path`) in every
/// hierarchy, if it is not there. Containers' starts create it otherwise, and two of the
/// first starts on a host racing to create it failed one with "File exists".
pub fn ensure_cgroup_parent() -> std::io::Result<()> {
    for root in cgroup_mounts() {
        match fs::create_dir(root.join("skiff")) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            // A hierarchy mounted read-only or not ours: the start reports what it needs.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {}
            Err(e) if e.raw_os_error() == Some(libc::EROFS) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Where cgroup hierarchies are mounted (v1 hierarchies and cgroup2), from mountinfo, read
/// once: a node running a thousand containers has thousands of mounts, and reading them
/// while containers mount and unmount took seconds — per container start, stop and reap.
/// (Hierarchies are mounted at boot; one mounted later is seen by the next agent.)
pub(crate) fn cgroup_mounts() -> &'static [PathBuf] {
    static MOUNTS: std::sync::OnceLock<Vec<PathBuf>> = std::sync::OnceLock::new();
    MOUNTS.get_or_init(|| {
        let mut mounts: Vec<PathBuf> = crate::mountinfo::read()
            .unwrap_or_default()
            .into_iter()
            .filter(|m| matches!(m.fstype.as_str(), "cgroup" | "cgroup2"))
            .map(|m| m.point)
            .collect();
        mounts.dedup();
        mounts
    })
}

/// SIGKILLs every process in a container's cgroups (v1 hierarchies and v2), for a container
/// whose shim could not be trusted to stop it (or is gone).
fn kill_cgroup(cgroup_path: &str) -> usize {
    let rel = cgroup_path.trim_start_matches('/');
    let mut killed = std::collections::HashSet::new();
    for root in cgroup_mounts() {
        let Ok(procs) = fs::read_to_string(root.join(rel).join("cgroup.procs")) else {
            continue;
        };
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            if killed.insert(pid) {
                let _ =
                    nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
    killed.len()
}

/// Whether any process runs in a container's cgroups (in any hierarchy).
pub fn cgroup_has_processes(cgroup_path: &str) -> bool {
    let rel = cgroup_path.trim_start_matches('/');
    cgroup_mounts().iter().any(|root| {
        fs::read_to_string(root.join(rel).join("cgroup.procs"))
            .is_ok_and(|procs| !procs.trim().is_empty())
    })
}

/// After a container's shim is gone: kills whatever still runs in the container's cgroups (a
/// shim killed outright leaves its container running, reparented) and removes the cgroups
/// (libcontainer deletes them on a normal exit; a dead shim cannot). rmdir takes only empty
/// cgroups, so nothing live is ever removed. Returns how many processes it had to kill.
pub fn reap_cgroup(cgroup_path: &str) -> usize {
    let killed = kill_cgroup(cgroup_path);
    let rel = cgroup_path.trim_start_matches('/');
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    for root in cgroup_mounts() {
        let dir = root.join(rel);
        // A killed process leaves its cgroup a moment after the signal.
        while let Err(e) = fs::remove_dir(&dir) {
            if e.kind() == std::io::ErrorKind::NotFound || std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    killed
}

/// Finds a shim that outlived an agent restart. None if it is no longer running.
pub fn adopt(dir: &Path) -> Option<ShimHandle> {
    let text = fs::read_to_string(dir.join(shim::SHIM_PID)).ok()?;
    let mut fields = text.split_whitespace();
    let pid: i32 = fields.next()?.parse().ok()?;
    let started: Option<u64> = fields.next().and_then(|t| t.parse().ok());
    let pidfd = shim::pidfd_open(Pid::from_raw(pid)).ok()?;
    // The pid could have been reused by an unrelated process: check it is our shim.
    let is_ours = match started {
        // A shim records its start time; a process with the same pid and start time is it.
        Some(t) => shim::process_start_time(pid) == Some(t),
        // Older shims wrote only the pid: their command line names the directory.
        None => {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.contains(&b"shim".as_slice()) && args.contains(&dir.as_os_str().as_encoded_bytes())
        }
    };
    is_ours.then_some(ShimHandle {
        pid,
        pidfd,
        status: None,
    })
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
            killed_after_stop_timeout: false,
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
