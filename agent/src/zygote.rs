//! The shim zygote: one small single-threaded `skiff shim --zygote` process per agent that
//! forks a new shim for each container, instead of the agent executing `skiff shim DIR` every
//! time. An exec of this binary costs ~3.5 ms of CPU (the dynamic loader relocates some 86,000
//! pointers, each touching a page of its own) and leaves each shim with ~2.5 MiB of private
//! dirty memory; a fork of the zygote costs a fraction of that, and its shims share those
//! pages. The agent itself cannot fork: it is multi-threaded (tokio), and a forked copy of it
//! could deadlock on a lock another thread held.
//!
//! Protocol, on a SOCK_SEQPACKET socket that is the zygote's stdin: the agent sends a container
//! directory with the write end of that shim's status pipe (SCM_RIGHTS); the zygote forks, and
//! answers `ok PID` with a pidfd for the new shim, or `error MESSAGE`. The zygote reaps its
//! shims while it lives; when the agent goes (EOF) it exits and its shims, each in its own
//! session, carry on as before.

use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use crate::shim;

/// The longest container directory path a request may carry.
const MAX_REQUEST: usize = 4096;

/// How long the agent waits for the zygote's answer before giving up on it.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// The agent's side: the zygote process and its socket.
pub struct Zygote {
    child: Child,
    sock: OwnedFd,
}

/// A shim the zygote forked.
pub struct Forked {
    pub pid: i32,
    pub pidfd: OwnedFd,
}

/// Why no shim came from the zygote.
#[derive(Debug)]
pub enum ForkError {
    /// The request never reached the zygote: nothing was started, and the status pipe is
    /// handed back for another way of starting the shim.
    NotSent(OwnedFd, io::Error),
    /// The request was sent, but no good answer came: a shim may or may not have started.
    Failed(io::Error),
}

impl Zygote {
    pub fn spawn(shim_exe: &Path) -> io::Result<Zygote> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        let child = Command::new(shim_exe)
            .args(["shim", "--zygote"])
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .env("RUST_LOG", "warn")
            // Its own process group: a Ctrl-C meant for `skiff dev` does not reach it (it ends
            // when the agent does, at EOF).
            .process_group(0)
            .spawn()?;
        Ok(Zygote { child, sock: ours })
    }

    /// Forks a shim for the container in `dir`, whose status line goes to `status`.
    pub fn fork_shim(&self, dir: &Path, status: OwnedFd) -> Result<Forked, ForkError> {
        let fds = [status.as_raw_fd()];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        let iov = [IoSlice::new(dir.as_os_str().as_bytes())];
        if let Err(e) = sendmsg::<()>(
            self.sock.as_raw_fd(),
            &iov,
            &cmsg,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            return Err(ForkError::NotSent(
                status,
                io::Error::other(format!("asking the zygote: {e}")),
            ));
        }
        drop(status);
        self.answer().map_err(ForkError::Failed)
    }

    fn answer(&self) -> io::Result<Forked> {
        let mut fds = [PollFd::new(self.sock.as_fd(), PollFlags::POLLIN)];
        let timeout =
            PollTimeout::try_from(ANSWER_TIMEOUT.as_millis() as i32).unwrap_or(PollTimeout::MAX);
        if poll(&mut fds, timeout).map_err(io::Error::from)? == 0 {
            return Err(io::Error::other("the zygote did not answer"));
        }
        let mut buf = [0u8; 512];
        let (text, pidfd) = receive(self.sock.as_raw_fd(), &mut buf)?;
        let text = String::from_utf8_lossy(text);
        if text.is_empty() {
            return Err(io::Error::other("the zygote has exited"));
        }
        if let Some(msg) = text.strip_prefix("error ") {
            return Err(io::Error::other(format!("the zygote: {msg}")));
        }
        match (text.strip_prefix("ok ").and_then(|p| p.parse().ok()), pidfd) {
            (Some(pid), Some(pidfd)) => Ok(Forked { pid, pidfd }),
            _ => Err(io::Error::other(format!(
                "the zygote answered {text:?}, not a pid and a pidfd"
            ))),
        }
    }
}

impl Drop for Zygote {
    /// Ends the zygote (it may be the one that stopped answering); its shims, each in a
    /// session of its own, live on.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One message and at most one passed file descriptor. A message that carried more is
/// refused: its descriptors are closed.
fn receive(sock: RawFd, buf: &mut [u8]) -> io::Result<(&[u8], Option<OwnedFd>)> {
    let mut cmsg_space = nix::cmsg_space!([RawFd; 4]);
    let (len, fds, truncated) = {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = recvmsg::<()>(
            sock,
            &mut iov,
            Some(&mut cmsg_space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        let mut fds: Vec<OwnedFd> = Vec::new();
        for c in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel just installed these descriptors in this process.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        let truncated = msg
            .flags
            .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
        (msg.bytes, fds, truncated)
    };
    if truncated || fds.len() > 1 {
        return Err(io::Error::other(
            "a message too long or with too many descriptors",
        ));
    }
    Ok((&buf[..len], fds.into_iter().next()))
}

/// Entry point of `skiff shim --zygote` (stdin: the agent's socket). Returns the exit code.
pub fn serve() -> i32 {
    // SAFETY: fd 0 is the socket the agent passed; this process owns it from here on.
    let sock = unsafe { OwnedFd::from_raw_fd(0) };
    set_name(c"skiff-zygote");
    // Children ending wake the loop through this pipe, which reaps them.
    let (mut reap_rx, reap_tx) = match std::os::unix::net::UnixStream::pair() {
        Ok(p) => p,
        Err(_) => return 1,
    };
    let _ = reap_rx.set_nonblocking(true);
    let reap_tx_fd = reap_tx.as_raw_fd();
    if signal_hook::low_level::pipe::register(libc::SIGCHLD, reap_tx).is_err() {
        return 1;
    }
    loop {
        let mut fds = [
            PollFd::new(sock.as_fd(), PollFlags::POLLIN),
            PollFd::new(reap_rx.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return 1,
        }
        let request = fds[0].revents().is_some_and(|r| !r.is_empty());
        let reap = fds[1].revents().is_some_and(|r| !r.is_empty());
        if reap {
            let mut buf = [0u8; 64];
            while matches!(io::Read::read(&mut reap_rx, &mut buf), Ok(n) if n > 0) {}
            reap_children();
        }
        if !request {
            continue;
        }
        let mut buf = [0u8; MAX_REQUEST];
        let answer = match receive(sock.as_raw_fd(), &mut buf) {
            // EOF: the agent is gone.
            Ok((b"", None)) => return 0,
            Ok((dir, Some(status))) => {
                let dir = PathBuf::from(std::ffi::OsStr::from_bytes(dir));
                let keep = [sock.as_raw_fd(), reap_rx.as_raw_fd(), reap_tx_fd];
                start_shim(&dir, status, &keep)
            }
            Ok(_) => Err("a request needs a directory and a status pipe".to_string()),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => Err(e.to_string()),
        };
        let sent = match answer {
            Ok((pid, pidfd)) => {
                let text = format!("ok {pid}");
                let fds = [pidfd.as_raw_fd()];
                sendmsg::<()>(
                    sock.as_raw_fd(),
                    &[IoSlice::new(text.as_bytes())],
                    &[ControlMessage::ScmRights(&fds)],
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
            }
            Err(e) => sendmsg::<()>(
                sock.as_raw_fd(),
                &[IoSlice::new(format!("error {e}").as_bytes())],
                &[],
                MsgFlags::MSG_NOSIGNAL,
                None,
            ),
        };
        if sent.is_err() {
            return 0;
        }
    }
}

/// Forks one shim; returns its pid and a pidfd for the agent. The child is reaped only by the
/// loop, after this returns, so its pid cannot be reused before the pidfd is taken.
fn start_shim(dir: &Path, status: OwnedFd, zygote_fds: &[RawFd]) -> Result<(i32, OwnedFd), String> {
    // SAFETY: this process is single-threaded (the zygote never starts a thread), so the
    // child may run any code.
    match unsafe { fork() } {
        Err(e) => Err(format!("fork: {e}")),
        Ok(ForkResult::Child) => {
            become_shim(dir, status, zygote_fds);
        }
        Ok(ForkResult::Parent { child }) => {
            drop(status);
            let pidfd = shim::pidfd_open(child).map_err(|e| format!("pidfd_open: {e}"))?;
            Ok((child.as_raw(), pidfd))
        }
    }
}

/// In the forked child: drop what was the zygote's, wire stdio as an exec'd shim has it, and
/// run the shim. Never returns.
fn become_shim(dir: &Path, status: OwnedFd, zygote_fds: &[RawFd]) -> ! {
    // SAFETY: plain libc calls on this process's own dispositions and descriptors.
    unsafe {
        // The zygote's SIGCHLD handler writes to the zygote's pipe; the shim waits for its
        // own children with waitpid.
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        for fd in zygote_fds {
            libc::close(*fd);
        }
    }
    // What `ps` and `top` show: the command line stays the zygote's.
    set_name(c"skiff-shim");
    let _ = nix::unistd::dup2(status.as_raw_fd(), 1);
    drop(status);
    if let Ok(null) = File::open("/dev/null") {
        let _ = nix::unistd::dup2(null.as_raw_fd(), 0);
    }
    if let Ok(log) = File::create(dir.join("shim.log")) {
        let _ = nix::unistd::dup2(log.as_raw_fd(), 2);
    }
    let code = shim::main(dir);
    std::process::exit(code)
}

fn set_name(name: &std::ffi::CStr) {
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0) };
}

fn reap_children() {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => break,
            Ok(_) => {}
        }
    }
}
