//! `skiff tasks exec` against a real `skiff dev` and real containers: the command runs in
//! the container's namespaces and cgroups with the container's own restrictions (seccomp,
//! capabilities, no-new-privileges), output and exit code come back, standard input goes in,
//! a terminal session is interactive (its size follows the caller's, Ctrl-C reaches the
//! command), a caller that goes away takes the command with it, only operator and admin
//! tokens may exec, and every exec is an event on the bus.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use skiff_tests::{
    cli, cli_as, cli_stdin, read_only_token, run_task, skiff_command, wait_for, wait_status, Env,
};

const LONG: Duration = Duration::from_secs(60);

/// A running busybox task (`sleep 3600`); returns its id.
fn sleeper(env: &Env, addr: &str) -> String {
    let image = env.busybox_image();
    let id = run_task(
        addr,
        &[
            "--image",
            &image,
            "--stop-timeout",
            "1s",
            "--",
            "sleep",
            "3600",
        ],
    );
    wait_status(addr, &id, "RUNNING", LONG);
    id
}

fn exec(addr: &str, id: &str, command: &[&str]) -> skiff_tests::Cli {
    let mut args = vec!["tasks", "exec", id, "--"];
    args.extend_from_slice(command);
    cli(addr, &args)
}

#[test]
fn a_command_runs_in_the_container_with_its_restrictions_and_its_exit_code_comes_back() {
    let mut env = Env::new();
    let addr = env.dev();
    // Every exec goes to the bus: a rule copies them to a queue to read back.
    assert_eq!(cli(&addr, &["queues", "create", "execs"]).code, 0);
    let rule = env.path("rule.yaml");
    std::fs::write(
        &rule,
        "name: execs\npattern: {source: [skiff.task], detail-type: [Task Exec]}\ntargets:\n  - id: q\n    queue: execs\n",
    )
    .unwrap();
    assert_eq!(
        cli(&addr, &["rules", "put", "-f", rule.to_str().unwrap()]).code,
        0
    );
    let id = sleeper(&env, &addr);

    let out = exec(&addr, &id, &["sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(
        (out.code, out.stdout.as_str(), out.stderr.as_str()),
        (3, "out\n", "err\n"),
        "{out:?}"
    );

    // Its namespaces and cgroups, and the restrictions its first process has.
    let script = r#"for f in mnt pid net uts ipc; do [ "$(readlink /proc/self/ns/$f)" = "$(readlink /proc/1/ns/$f)" ] || echo "ns $f differs"; done
diff /proc/self/cgroup /proc/1/cgroup && echo same-cgroups
grep -E '^(Seccomp|CapEff|CapBnd|NoNewPrivs):' /proc/self/status
echo ---
grep -E '^(Seccomp|CapEff|CapBnd|NoNewPrivs):' /proc/1/status
tr '\0' ' ' < /proc/1/cmdline; echo"#;
    let out = exec(&addr, &id, &["sh", "-c", script]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!out.stdout.contains("differs"), "{out:?}");
    assert!(out.stdout.contains("same-cgroups\n"), "{out:?}");
    let (mine, first) = out.stdout.split_once("---\n").unwrap();
    let mine = mine.split_once("same-cgroups\n").unwrap().1;
    assert!(
        mine.contains("Seccomp:\t2"),
        "the exec'd process is filtered: {out:?}"
    );
    assert!(mine.contains("NoNewPrivs:\t1"), "{out:?}");
    assert!(
        first.starts_with(mine),
        "the same restrictions as the container's first process: {out:?}"
    );
    assert!(first.ends_with("sleep 3600 \n"), "{out:?}");
    // The filter is the container's: a new namespace is refused in the exec too.
    let out = exec(&addr, &id, &["unshare", "-n", "true"]);
    assert_ne!(out.code, 0, "{out:?}");

    // Standard input with -i; without it the command's input is empty.
    let out = cli_stdin(
        &addr,
        &["tasks", "exec", "-i", &id, "--", "sh", "-c", "wc -l"],
        b"one\ntwo\n",
    );
    assert_eq!((out.code, out.stdout.trim()), (0, "2"), "{out:?}");
    let out = exec(&addr, &id, &["cat"]);
    assert_eq!((out.code, out.stdout.as_str()), (0, ""), "{out:?}");
    // -o json collects it.
    let out = cli(
        &addr,
        &[
            "tasks",
            "exec",
            &id,
            "-o",
            "json",
            "--",
            "sh",
            "-c",
            "echo hi; exit 4",
        ],
    );
    assert_eq!(out.code, 4, "{out:?}");
    let j = out.json();
    assert_eq!(
        (j["exitCode"].as_i64(), j["stdout"].as_str()),
        (Some(4), Some("hi\n")),
        "{j}"
    );
    // A command the container does not have.
    let out = exec(&addr, &id, &["/no/such/program"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("/no/such/program"), "{out:?}");

    // Who may: not a read-only token; no such container; not a stopped task.
    let ro = read_only_token(&addr);
    let out = cli_as(&addr, Some(&ro), &["tasks", "exec", &id, "--", "true"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("permission denied"), "{out:?}");
    // A task's own token, even one whose role grants tasks:Exec, may not exec (it is read
    // from inside the task, where it lives).
    let role = env.path("role.yaml");
    std::fs::write(
        &role,
        "name: execer\napi:\n  - actions: [tasks:Exec, tasks:Describe]\n    resources: [\"*\"]\n",
    )
    .unwrap();
    assert_eq!(
        cli(&addr, &["roles", "put", "-f", role.to_str().unwrap()]).code,
        0
    );
    let image = env.busybox_image();
    let with_role = run_task(
        &addr,
        &[
            "--image",
            &image,
            "--role",
            "execer",
            "--stop-timeout",
            "1s",
            "--",
            "sleep",
            "3600",
        ],
    );
    wait_status(&addr, &with_role, "RUNNING", LONG);
    let token = exec(&addr, &with_role, &["sh", "-c", "echo $SKIFF_TASK_TOKEN"]);
    assert_eq!(token.code, 0, "{token:?}");
    let out = cli_as(
        &addr,
        Some(token.stdout.trim()),
        &["tasks", "exec", &with_role, "--", "true"],
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("a task's token may not exec"),
        "{out:?}"
    );
    let out = cli(
        &addr,
        &["tasks", "exec", &id, "-c", "sidecar", "--", "true"],
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("no container \"sidecar\" (it has main)"),
        "{out:?}"
    );

    // Each exec above (that reached a running task) is on the bus with what ran.
    let execs = wait_for("the execs on the queue", LONG, || {
        let got = cli(&addr, &["queues", "describe", "execs", "-o", "json"]).json();
        (got["visible"].as_u64()? >= 8).then_some(got)
    });
    let got = cli(
        &addr,
        &["queues", "receive", "execs", "--max", "10", "-o", "json"],
    );
    let commands: Vec<String> = got
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|m| {
            let ev: serde_json::Value = serde_json::from_str(m["body"].as_str().unwrap()).unwrap();
            format!(
                "{} {}",
                ev["detail"]["taskId"].as_str().unwrap(),
                ev["detail"]["command"]
            )
        })
        .collect();
    for expected in [
        format!("{id} [\"sh\",\"-c\",\"echo out; echo err >&2; exit 3\"]"),
        format!("{with_role} [\"sh\",\"-c\",\"echo $SKIFF_TASK_TOKEN\"]"),
    ] {
        assert!(
            commands.contains(&expected),
            "{expected} not in {commands:?} {execs}"
        );
    }

    assert_eq!(cli(&addr, &["tasks", "stop", &id]).code, 0);
    wait_status(&addr, &id, "STOPPED", LONG);
    let out = exec(&addr, &id, &["true"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("not RUNNING"), "{out:?}");
}

/// A pty whose slave is the CLI's controlling terminal, as a user's shell would give it.
struct Pty {
    master: std::fs::File,
    child: std::process::Child,
    seen: Vec<u8>,
    /// Where the next `expect` starts looking.
    cursor: usize,
}

fn winsize(rows: u16, cols: u16) -> libc::winsize {
    libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

impl Pty {
    fn spawn(addr: &str, args: &[&str], rows: u16, cols: u16) -> Pty {
        let pty = nix::pty::openpty(Some(&winsize(rows, cols)), None).unwrap();
        let slave: OwnedFd = pty.slave;
        let mut cmd = skiff_command();
        cmd.args(args)
            .env("SKIFF_ADDR", addr)
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        let master = std::fs::File::from(pty.master);
        let fd = master.as_raw_fd();
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        Pty {
            master,
            child,
            seen: Vec::new(),
            cursor: 0,
        }
    }

    /// Reads what the terminal shows now, answering a cursor-position query (ESC [ 6 n, which
    /// busybox's line editor sends) as a terminal emulator would.
    fn pump(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        match self.master.read(&mut buf) {
            Ok(n) if n > 0 => {
                let queries = String::from_utf8_lossy(&buf[..n])
                    .matches("\x1b[6n")
                    .count();
                for _ in 0..queries {
                    self.master.write_all(b"\x1b[1;1R").unwrap();
                }
                self.seen.extend_from_slice(&buf[..n]);
                true
            }
            _ => false,
        }
    }

    fn type_in(&mut self, s: &str) {
        self.master.write_all(s.as_bytes()).unwrap();
    }

    /// Reads until `what` shows after what earlier expectations matched, or fails at the
    /// deadline.
    fn expect(&mut self, what: &str) {
        let deadline = Instant::now() + LONG;
        loop {
            let text = String::from_utf8_lossy(&self.seen[self.cursor..]).into_owned();
            if let Some(at) = text.find(what) {
                self.cursor += text[..at + what.len()].len();
                return;
            }
            if !self.pump() {
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(
                Instant::now() < deadline,
                "{what:?} not seen; the terminal shows: {}",
                String::from_utf8_lossy(&self.seen)
            );
        }
    }

    /// The shell's next prompt: its line editor asks where the cursor is (ESC [ 6 n) and
    /// discards what was typed before the answer, so each line waits for it.
    fn prompt(&mut self) {
        self.expect("\x1b[6n");
    }

    fn resize(&self, rows: u16, cols: u16) {
        unsafe {
            libc::ioctl(
                self.master.as_raw_fd(),
                libc::TIOCSWINSZ,
                &winsize(rows, cols),
            )
        };
    }
}

#[test]
fn a_terminal_session_is_interactive_follows_the_size_and_ends_with_the_shells_exit_code() {
    let mut env = Env::new();
    let addr = env.dev();
    let id = sleeper(&env, &addr);
    let mut pty = Pty::spawn(&addr, &["tasks", "exec", "-it", &id, "--", "sh"], 30, 100);
    pty.prompt();
    pty.type_in("tty; stty size\r");
    pty.expect("/dev/pts/");
    pty.expect("30 100");
    pty.prompt();
    // A new size reaches the command's terminal (SIGWINCH → resize, asynchronously: asked
    // until it shows).
    pty.resize(40, 120);
    let deadline = Instant::now() + LONG;
    loop {
        let from = pty.cursor;
        pty.type_in("stty size\r");
        pty.prompt();
        if String::from_utf8_lossy(&pty.seen[from..]).contains("40 120") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&pty.seen)
        );
    }
    // Ctrl-C interrupts the foreground command in the container, not the session.
    let sleeping = || {
        std::process::Command::new("pgrep")
            .args(["-f", "^sleep 100$"])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(false)
    };
    pty.type_in("sleep 100\r");
    wait_for("the sleep to run", LONG, || sleeping().then_some(()));
    pty.type_in("\x03");
    pty.prompt();
    assert!(!sleeping(), "{}", String::from_utf8_lossy(&pty.seen));
    pty.type_in("echo after-$((6*7))\r");
    pty.expect("after-42");
    pty.prompt();
    pty.type_in("exit 5\r");
    let status = wait_for("the exec to end", LONG, || pty.child.try_wait().unwrap());
    assert_eq!(
        status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&pty.seen)
    );
}

#[test]
fn a_caller_that_goes_away_takes_its_command_with_it() {
    let mut env = Env::new();
    let addr = env.dev();
    let id = sleeper(&env, &addr);
    let running = || {
        std::process::Command::new("pgrep")
            .args(["-f", "^sleep 313$"])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(false)
    };
    let mut child = skiff_command()
        .args(["tasks", "exec", &id, "--", "sleep", "313"])
        .env("SKIFF_ADDR", &addr)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the exec'd sleep to run", LONG, || running().then_some(()));
    child.kill().unwrap();
    child.wait().unwrap();
    wait_for("the exec'd sleep to be killed", LONG, || {
        (!running()).then_some(())
    });
    // The task itself runs on.
    assert_eq!(skiff_tests::task(&addr, &id)["lastStatus"], "RUNNING");
}
