//! skiff under systemd, as far as this machine (no systemd as PID 1) lets a test go: the
//! notify protocol spoken to a socket the test binds as systemd would (READY=1 once serving,
//! WATCHDOG=1 at half of WATCHDOG_USEC, STOPPING=1 on SIGTERM), journald's log format when
//! standard error is the journal, the install script, and the units it installs checked by
//! `systemd-analyze verify` and `systemd-analyze security` (Debian's systemd).

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use skiff_tests::{config_home, skiff_bin, wait_for, Env, Proc};

/// The messages the process sends within `within`, until one containing `until` (each
/// datagram's lines, in order).
fn messages_until(sock: &UnixDatagram, until: &str, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no {until:?} within {within:?}; got {got:?}"
        );
        sock.set_read_timeout(Some(left)).unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = text.lines().any(|l| l == until);
            got.extend(text.lines().map(str::to_string));
            if done {
                return got;
            }
        }
    }
}

/// `skiff ARGS` as systemd starts a `Type=notify` unit with `WatchdogSec`: NOTIFY_SOCKET,
/// WATCHDOG_USEC, and WATCHDOG_PID naming the service's own process.
fn under_systemd(env: &Env, name: &str, sock: &Path, args: &[&str]) -> Proc {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("WATCHDOG_PID=$$ exec \"$@\"")
        .arg("sh")
        .arg(skiff_bin())
        .args(args)
        .env("XDG_CONFIG_HOME", config_home())
        .env("NOTIFY_SOCKET", sock)
        .env("WATCHDOG_USEC", "400000");
    Proc::spawn_command(cmd, name, &env.path(""))
}

#[test]
fn the_controller_and_the_agent_say_ready_feed_the_watchdog_and_say_stopping() {
    let env = Env::new();
    let sock_path = env.path("controller.notify");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let data = env.path("controller");
    let mut ctl = under_systemd(
        &env,
        "controller",
        &sock_path,
        &[
            "controller",
            "--plaintext",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
    );
    let said = messages_until(&sock, "READY=1", Duration::from_secs(20));
    assert!(
        said.iter()
            .any(|l| l.starts_with("STATUS=serving on 127.0.0.1:")),
        "{said:?}"
    );
    // Ready means serving: the API answers at once.
    let addr = format!("http://{}", ctl.listen_addr());
    let token = std::fs::read_to_string(data.join("admin.token")).unwrap();
    let nodes = skiff_tests::cli_as(&addr, Some(token.trim()), &["nodes", "ls", "-o", "json"]);
    assert_eq!(nodes.code, 0, "{nodes:?}");
    // Fed every 200 ms (half of 400 ms) while healthy.
    let began = Instant::now();
    messages_until(&sock, "WATCHDOG=1", Duration::from_secs(2));
    messages_until(&sock, "WATCHDOG=1", Duration::from_secs(2));
    messages_until(&sock, "WATCHDOG=1", Duration::from_secs(2));
    assert!(began.elapsed() < Duration::from_millis(1500));
    assert_eq!(ctl.terminate(), Some(0), "{}", ctl.stderr_text());
    messages_until(&sock, "STOPPING=1", Duration::from_secs(1));

    // The agent: ready before it has reached a controller (none runs now), fed all the same.
    let agent_sock_path = env.path("agent.notify");
    let agent_sock = UnixDatagram::bind(&agent_sock_path).unwrap();
    let agent_data = env.path("agent");
    let mut agent = under_systemd(
        &env,
        "agent",
        &agent_sock_path,
        &[
            "agent",
            "--controller",
            &addr,
            "--node-id",
            "n1",
            "--data-dir",
            agent_data.to_str().unwrap(),
            "--credentials-listen",
            "127.0.0.1:0",
        ],
    );
    messages_until(&agent_sock, "READY=1", Duration::from_secs(20));
    messages_until(&agent_sock, "WATCHDOG=1", Duration::from_secs(2));
    assert_eq!(agent.terminate(), Some(0), "{}", agent.stderr_text());
    messages_until(&agent_sock, "STOPPING=1", Duration::from_secs(1));
    skiff_tests::unmount_under(&agent_data);
}

#[test]
fn logs_to_the_journal_carry_its_priorities_and_no_colours_or_times() {
    let env = Env::new();
    let data = env.path("controller");
    let err = env.path("controller.err");
    // systemd names the journal stream in JOURNAL_STREAM as DEVICE:INODE of standard error.
    let file = std::fs::File::create(&err).unwrap();
    let meta = std::os::unix::fs::MetadataExt::dev(&file.metadata().unwrap());
    let ino = std::os::unix::fs::MetadataExt::ino(&file.metadata().unwrap());
    /// Kills the controller however the test ends.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = Killed(
        Command::new(skiff_bin())
            .args(["controller", "--plaintext", "--listen", "127.0.0.1:0"])
            .args([
                "--http-listen",
                "127.0.0.1:0",
                "--data-dir",
                data.to_str().unwrap(),
            ])
            .env("JOURNAL_STREAM", format!("{meta}:{ino}"))
            .env("SKIFF_LOG", "debug")
            .env("XDG_CONFIG_HOME", config_home())
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap(),
    );
    let text = wait_for(
        "the controller's first log lines",
        Duration::from_secs(20),
        || {
            let t = std::fs::read_to_string(&err).ok()?;
            (t.lines().count() >= 2).then_some(t)
        },
    );
    for line in text.lines() {
        assert!(
            ["<3>", "<4>", "<6>", "<7>"]
                .iter()
                .any(|p| line.starts_with(p)),
            "a line without a journald priority: {line:?}"
        );
        assert!(!line.contains('\x1b'), "colours in {line:?}");
        assert!(!line.contains("Z "), "a timestamp in {line:?}");
    }
    assert!(
        text.contains("<7>sled::"),
        "debug lines are priority 7: {text}"
    );
}

#[test]
fn the_install_script_installs_keeps_edited_config_and_its_units_verify() {
    let env = Env::new();
    let root = env.path("root");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/install.sh");
    let install = || {
        let out = Command::new("sh")
            .arg(&script)
            .args(["--root", root.to_str().unwrap()])
            .arg("--binary")
            .arg(skiff_bin())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    install();
    let bin = root.join("usr/local/bin/skiff");
    let version = Command::new(&bin).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("skiff "));
    for f in [
        "etc/skiff/controller.toml",
        "etc/skiff/agent.toml",
        "etc/systemd/system/skiff-controller.service",
        "etc/systemd/system/skiff-agent.service",
        "usr/local/share/bash-completion/completions/skiff",
        "usr/local/share/zsh/site-functions/_skiff",
        "usr/local/share/fish/vendor_completions.d/skiff.fish",
        "usr/local/share/man/man1/skiff.1",
        "usr/local/share/man/man1/skiff-run-task.1",
        "usr/local/share/man/man1/skiff-queues-send.1",
    ] {
        assert!(root.join(f).is_file(), "{f} not installed");
    }
    // A page per command a user can type, each as --help describes it.
    let page =
        std::fs::read_to_string(root.join("usr/local/share/man/man1/skiff-queues-send.1")).unwrap();
    assert!(page.contains(".TH SKIFF-QUEUES-SEND 1"), "{page}");
    assert!(page.contains("skiff queues send"), "{page}");
    let pages = std::fs::read_dir(root.join("usr/local/share/man/man1"))
        .unwrap()
        .count();
    assert!(pages > 80, "{pages} man pages");
    assert!(!root.join("usr/local/share/man/man1/skiff-shim.1").exists());

    // An upgrade replaces the binary and the units, not what the operator edited.
    let config = root.join("etc/skiff/controller.toml");
    std::fs::write(&config, "listen = \"0.0.0.0:7400\"\n").unwrap();
    let said = install();
    assert!(said.contains("kept"), "{said}");
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "listen = \"0.0.0.0:7400\"\n"
    );

    // The units as systemd reads them (ExecStart pointed at the installed binary: verify checks
    // that it exists and is executable).
    let units = env.path("units");
    std::fs::create_dir_all(&units).unwrap();
    let mut paths = Vec::new();
    for u in ["skiff-controller.service", "skiff-agent.service"] {
        let text = std::fs::read_to_string(root.join("etc/systemd/system").join(u)).unwrap();
        assert!(text.contains("ExecStart=/usr/local/bin/skiff "), "{text}");
        assert!(
            text.contains("Type=notify") && text.contains("WatchdogSec="),
            "{text}"
        );
        let p = units.join(u);
        std::fs::write(
            &p,
            text.replace("/usr/local/bin/skiff", bin.to_str().unwrap()),
        )
        .unwrap();
        paths.push(p);
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&paths)
        .output()
        .expect("systemd-analyze (Debian's systemd)");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The controller's sandbox as systemd scores it (0 is fully confined, 10 not at all).
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&paths[0])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("skiff-controller.service: ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no exposure level in {text}"));
    assert!(
        score <= 2.5,
        "the controller's exposure level is {score}: {text}"
    );
}
