//! The per-container shim: a small, single-threaded process (the `skiff` binary re-executed as
//! `skiff shim DIR`) that owns one container. It drives libcontainer (which forks and clones, so
//! it must not run inside the agent's multi-threaded runtime), stays the container's parent,
//! copies its stdout/stderr into the rotated log, handles stop (SIGTERM → grace → SIGKILL),
//! detects OOM kills, and records the exit in `exit.json`. It runs in its own session, so it
//! outlives an agent restart: that is what lets a new agent re-adopt running containers.
//!
//! Files in DIR: `shim.json` (input, written by the agent), `shim.pid`, `started.json`,
//! `exit.json` (outputs, each written atomically).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::logs::{RotatingWriter, Stream};

pub const SHIM_CONFIG: &str = "shim.json";
pub const SHIM_PID: &str = "shim.pid";
pub const STARTED: &str = "started.json";
pub const EXIT: &str = "exit.json";

/// What the agent tells the shim.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShimConfig {
    pub container_id: String,
    /// The OCI bundle (holds config.json).
    pub bundle: PathBuf,
    /// libcontainer's state root.
    pub state_root: PathBuf,
    pub log_path: PathBuf,
    pub log_max_bytes: u64,
    pub log_keep: u32,
    pub stop_timeout_secs: u32,
    /// The container's cgroup path (as in the runtime spec), for OOM detection.
    pub cgroup_path: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Started {
    pub pid: i32,
    pub started_at_ms: i64,
}

/// How a container ended.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ExitRecord {
    /// The exit code, or 128 + signal number when killed by a signal (Docker's convention).
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    /// Set when the container could not be created or started.
    pub error: Option<String>,
    pub finished_at_ms: i64,
    /// It did not end within the stop timeout after SIGTERM and was SIGKILLed.
    #[serde(default)]
    pub killed_after_stop_timeout: bool,
}

/// Writes a file atomically (temp file + rename), so readers never see half of it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    // No fsync: these files matter only within one boot (containers do not survive a reboot),
    // and the rename alone makes them atomic against process crashes.
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    fs::rename(tmp, path)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Entry point of `skiff shim DIR` (and of a shim the zygote forked). Returns the process
/// exit code.
pub fn main(dir: &Path) -> i32 {
    // Our own session: the agent's process group, terminal or restart never signal us.
    let _ = nix::unistd::setsid();
    // Orphaned grandchildren of the container get reaped by us, not by init.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let mut status_line = unsafe { File::from_raw_fd(1) };
    match run(dir, &mut status_line) {
        Ok(()) => 0,
        Err(e) => {
            let rec = ExitRecord {
                exit_code: None,
                signal: None,
                oom_killed: false,
                error: Some(e.clone()),
                finished_at_ms: now_ms(),
                killed_after_stop_timeout: false,
            };
            let _ = write_atomic(
                &dir.join(EXIT),
                &serde_json::to_vec(&rec).unwrap_or_default(),
            );
            let _ = status_line.write_all(format!("failed {e}\n").as_bytes());
            1
        }
    }
}

fn run(dir: &Path, status_line: &mut File) -> Result<(), String> {
    let cfg: ShimConfig = serde_json::from_slice(
        &fs::read(dir.join(SHIM_CONFIG)).map_err(|e| format!("reading {SHIM_CONFIG}: {e}"))?,
    )
    .map_err(|e| format!("parsing {SHIM_CONFIG}: {e}"))?;
    // "PID STARTTIME": the start time tells this process from a later one with the same pid.
    let pid = std::process::id() as i32;
    let identity = match process_start_time(pid) {
        Some(t) => format!("{pid} {t}"),
        None => pid.to_string(),
    };
    write_atomic(&dir.join(SHIM_PID), identity.as_bytes())
        .map_err(|e| format!("writing {SHIM_PID}: {e}"))?;

    // Signals arrive as bytes on a socket, so the poll loop sees them. Handlers (unlike a
    // blocked mask or SIG_IGN) are reset by exec, so the container does not inherit them.
    let (mut sig_rx, sig_tx) = UnixStream::pair().map_err(|e| e.to_string())?;
    sig_rx.set_nonblocking(true).map_err(|e| e.to_string())?;
    for sig in [libc::SIGTERM, libc::SIGINT] {
        signal_hook::low_level::pipe::register(sig, sig_tx.try_clone().map_err(|e| e.to_string())?)
            .map_err(|e| format!("installing signal handler: {e}"))?;
    }
    // A vanished agent must not kill us through SIGPIPE on the status line.
    signal_hook::flag::register(libc::SIGPIPE, Default::default()).map_err(|e| e.to_string())?;

    let (out_r, out_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| e.to_string())?;
    let (err_r, err_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| e.to_string())?;
    let devnull = File::open("/dev/null").map_err(|e| e.to_string())?;
    let mut log = RotatingWriter::open(&cfg.log_path, cfg.log_max_bytes, cfg.log_keep)
        .map_err(|e| format!("opening log {}: {e}", cfg.log_path.display()))?;

    let mut container = ContainerBuilder::new(cfg.container_id.clone(), SyscallType::default())
        .with_root_path(&cfg.state_root)
        .map_err(|e| format!("container state root: {e}"))?
        .with_stdin(devnull)
        .with_stdout(out_w)
        .with_stderr(err_w)
        .validate_id()
        .map_err(|e| format!("container id: {e}"))?
        .as_init(&cfg.bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(|e| format!("creating the container: {e}"))?;
    if let Err(e) = container.start() {
        let _ = container.delete(true);
        return Err(format!("starting the container: {e}"));
    }
    let pid = container
        .pid()
        .ok_or("the container has no pid after start")?;
    let started = Started {
        pid: pid.as_raw(),
        started_at_ms: now_ms(),
    };
    write_atomic(
        &dir.join(STARTED),
        &serde_json::to_vec(&started).unwrap_or_default(),
    )
    .map_err(|e| format!("writing {STARTED}: {e}"))?;
    // One write, so the agent never sees half a line.
    let _ = status_line.write_all(format!("started {}\n", pid.as_raw()).as_bytes());

    let pidfd = pidfd_open(pid).map_err(|e| format!("pidfd_open: {e}"))?;
    let mut pipes = [Some(out_r), Some(err_r)];
    for p in pipes.iter().flatten() {
        set_nonblocking(p);
    }
    let mut kill_at: Option<Instant> = None;
    let mut killed_after_stop_timeout = false;
    let status = loop {
        let timeout = match kill_at {
            Some(t) => PollTimeout::try_from(
                t.saturating_duration_since(Instant::now())
                    .as_millis()
                    .min(60_000) as i32,
            )
            .unwrap_or(PollTimeout::MAX),
            None => PollTimeout::NONE,
        };
        let mut fds = vec![
            PollFd::new(pidfd.as_fd(), PollFlags::POLLIN),
            PollFd::new(sig_rx.as_fd(), PollFlags::POLLIN),
        ];
        for p in pipes.iter().flatten() {
            fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("poll: {e}")),
        }
        let exited = fds[0].revents().is_some_and(|r| !r.is_empty());
        let signalled = fds[1].revents().is_some_and(|r| !r.is_empty());
        drop(fds);
        copy_pipes(&mut pipes, &mut log);
        if signalled {
            let mut buf = [0u8; 64];
            while matches!(sig_rx.read(&mut buf), Ok(n) if n > 0) {}
            if kill_at.is_none() {
                let _ = kill(pid, Signal::SIGTERM);
                kill_at = Some(Instant::now() + Duration::from_secs(cfg.stop_timeout_secs.into()));
            }
        }
        if kill_at.is_some_and(|t| Instant::now() >= t) {
            let _ = kill(pid, Signal::SIGKILL);
            killed_after_stop_timeout = true;
            kill_at = Some(Instant::now() + Duration::from_secs(3600));
        }
        if exited {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::EINTR) => continue,
                Ok(s) => break s,
                Err(e) => return Err(format!("waitpid: {e}")),
            }
        }
    };
    // The namespace's init is gone, so every writer of the pipes is gone: drain to EOF.
    let drain_until = Instant::now() + Duration::from_secs(2);
    while pipes.iter().any(Option::is_some) && Instant::now() < drain_until {
        let mut fds: Vec<PollFd> = pipes
            .iter()
            .flatten()
            .map(|p| PollFd::new(p.as_fd(), PollFlags::POLLIN))
            .collect();
        let _ = poll(&mut fds, PollTimeout::from(100u16));
        drop(fds);
        copy_pipes(&mut pipes, &mut log);
    }
    let _ = log.flush_partial();
    reap_orphans();

    let oom_killed = oom_kills(&cfg.cgroup_path) > 0;
    let (exit_code, signal) = match status {
        WaitStatus::Exited(_, code) => (Some(code), None),
        WaitStatus::Signaled(_, sig, _) => (Some(128 + sig as i32), Some(sig as i32)),
        _ => (None, None),
    };
    let rec = ExitRecord {
        exit_code,
        signal,
        oom_killed,
        error: None,
        finished_at_ms: now_ms(),
        killed_after_stop_timeout,
    };
    write_atomic(
        &dir.join(EXIT),
        &serde_json::to_vec(&rec).unwrap_or_default(),
    )
    .map_err(|e| format!("writing {EXIT}: {e}"))?;
    // Tell the agent now; deleting the container's cgroups takes milliseconds more. (If the
    // agent is gone, the write fails and a new agent sees exit.json.)
    let _ = status_line.write_all(b"exited\n");
    let _ = container.delete(true);
    Ok(())
}

fn set_nonblocking(fd: &OwnedFd) {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    if let Ok(flags) = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL) {
        let _ = fcntl(
            fd.as_raw_fd(),
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
        );
    }
}

/// Moves what the container wrote into the log; a pipe at EOF is closed.
fn copy_pipes(pipes: &mut [Option<OwnedFd>; 2], log: &mut RotatingWriter) {
    let mut buf = [0u8; 64 * 1024];
    for (i, slot) in pipes.iter_mut().enumerate() {
        let stream = if i == 0 {
            Stream::Stdout
        } else {
            Stream::Stderr
        };
        while let Some(fd) = slot {
            match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
                Ok(0) => *slot = None,
                Ok(n) => {
                    let _ = log.write(stream, &buf[..n]);
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => break,
            }
        }
    }
}

fn reap_orphans() {
    while let Ok(s) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if s == WaitStatus::StillAlive {
            break;
        }
    }
}

/// A process's start time (field 22 of /proc/PID/stat, clock ticks since boot).
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

pub fn pidfd_open(pid: Pid) -> io::Result<OwnedFd> {
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// How many times the kernel OOM-killed in a container's cgroup (v1 memcg or v2).
pub fn oom_kills(cgroup_path: &str) -> u64 {
    let rel = cgroup_path.trim_start_matches('/');
    let candidates = [
        (
            Path::new("/sys/fs/cgroup/memory")
                .join(rel)
                .join("memory.oom_control"),
            "oom_kill ",
        ),
        (
            Path::new("/sys/fs/cgroup").join(rel).join("memory.events"),
            "oom_kill ",
        ),
        (
            Path::new("/sys/fs/cgroup/unified")
                .join(rel)
                .join("memory.events"),
            "oom_kill ",
        ),
    ];
    candidates
        .iter()
        .filter_map(|(path, key)| {
            let text = fs::read_to_string(path).ok()?;
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.trim().parse::<u64>().ok())
        })
        .max()
        .unwrap_or(0)
}
