//! The exec helper: `skiff shim --exec JSON`, a small single-threaded process the agent starts
//! for each `skiff tasks exec`. It runs the command in the container through libcontainer's
//! tenant builder — the container's namespaces and cgroups, and from its config.json the
//! user, working directory, environment, capabilities, no-new-privileges and rlimits — and,
//! since the tenant builder drops the container's seccomp filter, installs that filter itself
//! right before exec (`SeccompExecutor`), so an exec'd process can do no more than the
//! container's own. With a terminal, the pty's master comes back over a console socket and
//! the helper copies between it and its own stdin/stdout; resizes arrive as "ROWS COLS" lines
//! on fd 3. SIGTERM (the caller went away) kills the command. The exit code is the command's
//! (128 + signal when a signal ended it); 126 when it could not be started.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::oci_spec::runtime::{BoxBuilder, LinuxSeccomp, Spec};
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// What the agent tells the helper (one JSON argument).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExecConfig {
    pub container_id: String,
    /// libcontainer's state root (where the container's state lives).
    pub state_root: PathBuf,
    /// The container's bundle: its config.json is the process's template.
    pub bundle: PathBuf,
    /// A private directory for process.json and the console socket (removed by the agent).
    pub work_dir: PathBuf,
    pub command: Vec<String>,
    pub tty: bool,
    pub rows: u16,
    pub cols: u16,
}

/// The exit code when the command could not be started at all.
pub const CANNOT_START: i32 = 126;

/// Runs the command, then execs it with the container's seccomp filter in place (the tenant
/// builder leaves it out of the spec it builds).
#[derive(Clone)]
struct SeccompExecutor {
    seccomp: Option<LinuxSeccomp>,
}

impl Executor for SeccompExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        if let Some(s) = &self.seccomp {
            libcontainer::seccomp::initialize_seccomp(s)
                .map_err(|e| ExecutorError::Other(format!("installing the seccomp filter: {e}")))?;
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}

/// Entry point of `skiff shim --exec JSON`; returns the exit code.
pub fn main(json: &str) -> i32 {
    let cfg: ExecConfig = match serde_json::from_str(json) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("skiff exec: bad configuration: {e}");
            return CANNOT_START;
        }
    };
    // The command is our child or, once libcontainer's intermediate process exits, our
    // orphan to reap.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    match run(&cfg) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("skiff exec: {e}");
            CANNOT_START
        }
    }
}

fn run(cfg: &ExecConfig) -> Result<i32, String> {
    let spec = Spec::load(cfg.bundle.join("config.json"))
        .map_err(|e| format!("reading the container's config.json: {e}"))?;
    let mut process = spec
        .process()
        .clone()
        .ok_or("the container's config.json has no process")?;
    process.set_args(Some(cfg.command.clone()));
    process.set_terminal(Some(cfg.tty));
    if cfg.tty {
        let size = BoxBuilder::default()
            .height(u64::from(cfg.rows.max(1)))
            .width(u64::from(cfg.cols.max(1)))
            .build()
            .map_err(|e| e.to_string())?;
        process.set_console_size(Some(size));
    }
    let process_json = cfg.work_dir.join("process.json");
    fs::write(
        &process_json,
        serde_json::to_vec(&process).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("writing process.json: {e}"))?;
    let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().clone());

    // Signals as bytes on a socket, so the poll loop sees them.
    let (sig_rx, sig_tx) = UnixStream::pair().map_err(|e| e.to_string())?;
    sig_rx.set_nonblocking(true).map_err(|e| e.to_string())?;
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        signal_hook::low_level::pipe::register(sig, sig_tx.try_clone().map_err(|e| e.to_string())?)
            .map_err(|e| format!("installing a signal handler: {e}"))?;
    }

    let socket_path = cfg.work_dir.join("console.sock");
    let listener = if cfg.tty {
        Some(UnixListener::bind(&socket_path).map_err(|e| format!("console socket: {e}"))?)
    } else {
        None
    };
    let builder = ContainerBuilder::new(cfg.container_id.clone(), SyscallType::default())
        .with_root_path(&cfg.state_root)
        .map_err(|e| format!("container state root: {e}"))?
        .with_executor(SeccompExecutor { seccomp })
        .with_console_socket(cfg.tty.then_some(&socket_path));
    let pid = builder
        .as_tenant()
        .with_process(Some(&process_json))
        .with_detach(cfg.tty)
        .build()
        .map_err(|e| format!("running {:?} in the container: {e}", cfg.command))?;

    let pidfd = crate::shim::pidfd_open(pid).map_err(|e| format!("pidfd_open: {e}"))?;
    let master = match listener {
        Some(l) => {
            let m = receive_master(&l)?;
            // The terminal is born 0×0: its size is the runtime's to set.
            set_window(&m, cfg.rows.max(1), cfg.cols.max(1));
            Some(m)
        }
        None => None,
    };
    let status = relay(pid, &pidfd, &sig_rx, master)?;
    Ok(status)
}

/// The pty master libcontainer's init sends over the console socket.
fn receive_master(listener: &UnixListener) -> Result<OwnedFd, String> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let (conn, _) = listener
        .accept()
        .map_err(|e| format!("console socket: {e}"))?;
    let mut buf = [0u8; 256];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .map_err(|e| format!("receiving the terminal: {e}"))?;
    for c in msg.cmsgs().map_err(|e| e.to_string())? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(fd) = fds.first() {
                return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
            }
        }
    }
    Err("the container sent no terminal".into())
}

fn set_window(master: &OwnedFd, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}

/// Copies between our stdin/stdout and the terminal (when there is one), applies resizes,
/// kills the command on SIGTERM, and returns its exit code once it has ended.
fn relay(
    pid: Pid,
    pidfd: &OwnedFd,
    sig_rx: &UnixStream,
    master: Option<OwnedFd>,
) -> Result<i32, String> {
    let stdin = unsafe { OwnedFd::from_raw_fd(libc::dup(0)) };
    let mut stdin = master.as_ref().map(|_| stdin);
    // fd 3: "ROWS COLS" lines from the agent (only with a terminal).
    let mut control = master
        .as_ref()
        .and_then(|_| fs::File::options().read(true).open("/proc/self/fd/3").ok())
        .map(BufReader::new);
    let mut out = std::io::stdout();
    let mut buf = [0u8; 32 * 1024];
    let mut exited = false;
    loop {
        let mut fds = vec![
            PollFd::new(pidfd.as_fd(), PollFlags::POLLIN),
            PollFd::new(sig_rx.as_fd(), PollFlags::POLLIN),
        ];
        let at_master = master.as_ref().map(|m| {
            fds.push(PollFd::new(m.as_fd(), PollFlags::POLLIN));
            fds.len() - 1
        });
        let at_stdin = stdin.as_ref().map(|s| {
            fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
            fds.len() - 1
        });
        let at_control = control.as_ref().map(|c| {
            fds.push(PollFd::new(c.get_ref().as_fd(), PollFlags::POLLIN));
            fds.len() - 1
        });
        let timeout = if exited {
            PollTimeout::from(100u8)
        } else {
            PollTimeout::NONE
        };
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(format!("poll: {e}")),
        }
        let revents: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        let ready = |i: Option<usize>| i.is_some_and(|i| revents[i]);
        if ready(Some(1)) {
            let mut b = [0u8; 16];
            let _ = std::io::Read::read(&mut &*sig_rx, &mut b);
            let _ = kill(pid, Signal::SIGKILL);
        }
        let mut master_done = master.is_none();
        if ready(at_master) {
            let m = master.as_ref().expect("polled");
            match nix::unistd::read(m.as_raw_fd(), &mut buf) {
                Ok(0) | Err(nix::errno::Errno::EIO) => master_done = true,
                Ok(n) => {
                    let _ = out.write_all(&buf[..n]);
                    let _ = out.flush();
                }
                Err(_) => {}
            }
        } else if exited {
            // Nothing more within the grace: the terminal is drained.
            master_done = true;
        }
        if ready(at_stdin) {
            let s = stdin.as_ref().expect("polled");
            match nix::unistd::read(s.as_raw_fd(), &mut buf) {
                Ok(0) | Err(_) => {
                    // End of input: the terminal's end-of-file character, as a typist would.
                    if let Some(m) = &master {
                        let _ = nix::unistd::write(m, &[4u8]);
                    }
                    stdin = None;
                }
                Ok(n) => {
                    if let Some(m) = &master {
                        let _ = nix::unistd::write(m, &buf[..n]);
                    }
                }
            }
        }
        if ready(at_control) {
            let c = control.as_mut().expect("polled");
            let mut line = String::new();
            match c.read_line(&mut line) {
                Ok(0) | Err(_) => control = None,
                Ok(_) => {
                    let mut it = line.split_whitespace().map(|v| v.parse::<u16>());
                    if let (Some(Ok(rows)), Some(Ok(cols)), Some(m)) =
                        (it.next(), it.next(), master.as_ref())
                    {
                        set_window(m, rows, cols);
                    }
                }
            }
        }
        if ready(Some(0)) {
            exited = true;
        }
        if exited && master_done {
            return Ok(match waitpid(pid, None) {
                Ok(WaitStatus::Exited(_, code)) => code,
                Ok(WaitStatus::Signaled(_, sig, _)) => 128 + sig as i32,
                _ => CANNOT_START,
            });
        }
    }
}
