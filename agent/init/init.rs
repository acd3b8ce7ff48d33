//! skiff-init: the PID 1 a container gets when its definition asks for an init
//! (`init_process_enabled`, `run-task --init`), as Docker's `--init` (tini) and ECS's
//! `initProcessEnabled` do.
//!
//! Why: the kernel gives PID 1 of a PID namespace no default signal actions, so a command that
//! installs no handler (`sleep`, a shell loop) ignores the SIGTERM of `tasks stop` and waits
//! out the whole stop timeout; and orphaned processes are re-parented to PID 1, which must
//! reap them. This init runs the command as its child, forwards every signal it can catch to
//! it, reaps every child, and exits with the command's status (128 + signal when killed).
//!
//! It is built by `agent/build.rs` as a static executable (no dynamic loader in the image is
//! needed), with only std and a few libc calls declared here: the agent embeds it and
//! bind-mounts it at /dev/init. Usage: `init -- COMMAND [ARGS...]`.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;

#[repr(C)]
struct SigSet([u64; 16]);

#[repr(C)]
struct SigInfo {
    signo: i32,
    _rest: [i32; 31],
}

extern "C" {
    fn sigfillset(set: *mut SigSet) -> i32;
    fn sigdelset(set: *mut SigSet, sig: i32) -> i32;
    fn sigprocmask(how: i32, set: *const SigSet, old: *mut SigSet) -> i32;
    fn sigwaitinfo(set: *const SigSet, info: *mut SigInfo) -> i32;
    fn fork() -> i32;
    fn setpgid(pid: i32, pgid: i32) -> i32;
    fn execvp(file: *const i8, argv: *const *const i8) -> i32;
    fn waitpid(pid: i32, status: *mut i32, options: i32) -> i32;
    fn kill(pid: i32, sig: i32) -> i32;
    fn _exit(code: i32) -> !;
    fn __errno_location() -> *mut i32;
}

const SIG_SETMASK: i32 = 2;
const WNOHANG: i32 = 1;
const SIGCHLD: i32 = 17;
const EINTR: i32 = 4;
const ENOENT: i32 = 2;
const EACCES: i32 = 13;
/// Signals raised by a fault in this process itself: never blocked, so they act at once.
const SYNCHRONOUS: [i32; 9] = [4, 5, 6, 7, 8, 11, 21, 22, 31]; // ILL TRAP ABRT BUS FPE SEGV TTIN TTOU SYS

fn errno() -> i32 {
    unsafe { *__errno_location() }
}

fn fail(msg: &str) -> ! {
    eprintln!("skiff-init: {msg}");
    unsafe { _exit(127) }
}

fn main() {
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == "--") {
        args.remove(0);
    }
    if args.is_empty() {
        fail("usage: init -- COMMAND [ARGS...]");
    }
    let argv: Vec<CString> = args
        .iter()
        .map(|a| CString::new(a.as_bytes()).unwrap_or_else(|_| fail("an argument holds a NUL byte")))
        .collect();
    let mut argv_ptrs: Vec<*const i8> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());

    // Every asynchronous signal is blocked and collected with sigwaitinfo below; the child
    // gets the original mask back before it executes the command.
    let mut all = SigSet([0; 16]);
    let mut original = SigSet([0; 16]);
    unsafe {
        sigfillset(&mut all);
        for s in SYNCHRONOUS {
            sigdelset(&mut all, s);
        }
        if sigprocmask(SIG_SETMASK, &all, &mut original) != 0 {
            fail("cannot block signals");
        }
    }

    let child = unsafe { fork() };
    if child < 0 {
        fail("fork failed");
    }
    if child == 0 {
        unsafe {
            // Its own process group, as tini does, so terminal job control stays with it.
            setpgid(0, 0);
            sigprocmask(SIG_SETMASK, &original, std::ptr::null_mut());
            execvp(argv_ptrs[0], argv_ptrs.as_ptr());
        }
        let e = errno();
        let what = match e {
            ENOENT => "not found",
            EACCES => "permission denied",
            _ => "cannot be executed",
        };
        eprintln!(
            "skiff-init: executable {:?} {what} (errno {e})",
            args[0].to_string_lossy()
        );
        unsafe { _exit(if e == ENOENT { 127 } else { 126 }) };
    }

    loop {
        let mut info = SigInfo {
            signo: 0,
            _rest: [0; 31],
        };
        let sig = unsafe { sigwaitinfo(&all, &mut info) };
        if sig < 0 {
            if errno() == EINTR {
                continue;
            }
            fail("sigwaitinfo failed");
        }
        if sig != SIGCHLD {
            unsafe { kill(child, sig) };
            continue;
        }
        // Reap everything that has exited: the command, and orphans re-parented to us.
        loop {
            let mut status = 0;
            let pid = unsafe { waitpid(-1, &mut status, WNOHANG) };
            if pid <= 0 {
                break;
            }
            if pid == child {
                let code = if status & 0x7f == 0 {
                    (status >> 8) & 0xff
                } else {
                    128 + (status & 0x7f)
                };
                unsafe { _exit(code) };
            }
        }
    }
}
