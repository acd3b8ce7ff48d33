//! skiff under systemd. On this machine (systemd installed, not PID 1): the notify protocol
//! spoken to a socket the test binds as systemd would (READY=1 once serving, WATCHDOG=1 at
//! half of WATCHDOG_USEC, STOPPING=1 on SIGTERM), journald's log format when standard error is
//! the journal, the install script, and the units it installs checked by `systemd-analyze
//! verify` and `systemd-analyze security` (Debian's systemd). And in a VM whose PID 1 is this
//! machine's systemd (`skiff_tests::vm`): the units installed by the script and run for real —
//! readiness, sandbox, a container through the agent unit, restarts by systemctl and by the
//! watchdog, a clean stop, and the journal's priorities.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use skiff_tests::vm::{boot, Initramfs, Reported};
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

/// The VM's script: skiff installed by `deploy/install.sh` and run by a real systemd as PID 1,
/// as an operator would have it, with the units' watchdogs shortened to 4 s by drop-ins so a
/// hang is caught within the test's time. Reports `@key=value` lines; the assertions are in
/// the test.
const UNDER_SYSTEMD: &str = r##"
uptime_s() { cut -d. -f1 /proc/uptime; }
say() { echo "@$1=$2"; echo "# at $(uptime_s) s"; }
unit() { systemctl show "skiff-$1.service" -p "$2" --value; }
show_state() {
  echo "# --- $1 ---"
  systemctl --no-pager status skiff-controller skiff-agent
  journalctl --no-pager -n 80
  timeout 20 skiff tasks ls; timeout 20 skiff nodes ls
  for f in /var/lib/skiff/agent/state/tasks/*/*/shim.log; do echo "# $f:"; tail -n 30 "$f"; done
  echo "# ---"
}
( sleep 500; show_state "still running after 500 s"; poweroff -f ) &
# Waits (up to $2 s) for command $1 to succeed; shows the state if it does not.
until_ok() {
  end=$(( $(uptime_s) + $2 ))
  while [ "$(uptime_s)" -lt "$end" ]; do eval "$1" && return 0; sleep 0.5; done
  show_state "not within $2 s: $1"; return 1
}
has_status() { timeout 20 skiff tasks describe "$1" -o json 2>/dev/null | grep -q "\"lastStatus\": *\"$2\""; }
node_ready() { timeout 20 skiff nodes ls 2>/dev/null | grep -q '^edge-1 *READY *yes'; }
# A process's cgroup as "<unified path>|<pids path>" (on a pure cgroup v2 host the second is
# empty: there is no v1 pids hierarchy).
cgroups_of() { echo "$(awk -F: '$1 == 0 {print $3}' /proc/$1/cgroup)|$(awk -F: '$2 == "pids" {print $3}' /proc/$1/cgroup)"; }
status_of() { awk -v k="$2:" '$1 == k {print $2}' /proc/$1/status; }
same_ns() { [ "$(readlink /proc/$1/ns/$3)" = "$(readlink /proc/$2/ns/$3)" ] && echo yes || echo no; }
# Waits for systemd to record $3 more watchdog pings of unit $1 within $2 s.
pings() {
  last=$(unit $1 WatchdogTimestampMonotonic); n=0; end=$(( $(uptime_s) + $2 ))
  while [ "$(uptime_s)" -lt "$end" ]; do
    now=$(unit $1 WatchdogTimestampMonotonic)
    [ "$now" != "$last" ] && { last=$now; n=$((n+1)); }
    [ $n -ge $3 ] && return 0
    sleep 0.5
  done
  show_state "$1: $n watchdog pings in $2 s"; return 1
}

say pid1 "$(cat /proc/1/comm)"
say hierarchies "$(awk '$3 ~ /^cgroup/ {printf "%s %s;", $3, $2}' /proc/mounts)"
for u in controller agent; do
  mkdir -p /etc/systemd/system/skiff-$u.service.d
  printf '[Service]\nWatchdogSec=4s\n' > /etc/systemd/system/skiff-$u.service.d/watchdog.conf
done

# The controller, installed and started as the README says.
sh /src/deploy/install.sh --binary /usr/local/bin/skiff --enable controller >/tmp/install.log 2>&1
say install-controller $?
export SKIFF_ADDR=https://127.0.0.1:7400 SKIFF_CA_FILE=/var/lib/skiff/controller/pki/ca.crt
export SKIFF_TOKEN="$(cat /var/lib/skiff/controller/admin.token)"
# Type=notify: `systemctl enable --now` returned on READY=1, so the API answers at the first try.
skiff nodes ls >/tmp/first.out 2>&1; say api-on-ready "$? $(tr '\n' ';' < /tmp/first.out)"
say controller-state "$(unit controller ActiveState)/$(unit controller SubState)"
say controller-status "$(unit controller StatusText)"
cpid=$(unit controller MainPID)
say controller-sandbox "nnp=$(status_of $cpid NoNewPrivs) seccomp=$(status_of $cpid Seccomp) capbnd=$(status_of $cpid CapBnd) mounts-shared=$(same_ns $cpid 1 mnt)"

# The agent: joined with a one-time join string given in a drop-in, installed by a second run
# of the script (which keeps the config files).
join=$(skiff tokens create --role join --ttl 1h 2>/dev/null)
printf '[Service]\nEnvironment=SKIFF_JOIN=%s\n' "$join" > /etc/systemd/system/skiff-agent.service.d/join.conf
sh /src/deploy/install.sh --binary /usr/local/bin/skiff --enable agent >/tmp/install2.log 2>&1
say install-agent $?
say install-kept "$(grep -c '^install.sh: kept /etc/skiff/' /tmp/install2.log)"
until_ok node_ready 120; say node-ready $?
apid=$(unit agent MainPID)
say agent-state "$(unit agent ActiveState)/$(unit agent SubState)"
say agent-process "nnp=$(status_of $apid NoNewPrivs) mounts-shared=$(same_ns $apid 1 mnt) cgroups=$(cgroups_of $apid)"

# A container through the agent unit.
id=$(skiff run-task --network none --image dir:/images/busybox -- sh -c 'trap "exit 0" TERM; while true; do sleep 1; done')
until_ok 'has_status $id RUNNING' 120; say task-running $?
# (the hierarchy whose cgroup.procs lists the container's processes: cgroup2, or v1 pids)
if [ -f /sys/fs/cgroup/cgroup.procs ]; then cg=/sys/fs/cgroup/skiff/$id-main; else cg=/sys/fs/cgroup/pids/skiff/$id-main; fi
cproc=$(sort -n $cg/cgroup.procs | head -n1)
shim=$(cut -d' ' -f1 /var/lib/skiff/agent/state/tasks/$id/main/shim.pid)
say task-cgroups "$(cgroups_of $cproc)"
say shim-cgroups "$(cgroups_of $shim)"
say container-sandbox "nnp=$(status_of $cproc NoNewPrivs) seccomp=$(status_of $cproc Seccomp)"

# systemd sees both watchdogs fed: pings recorded, no restart.
pings controller 20 3; say controller-pings $?
pings agent 20 3; say agent-pings $?
say restarts-while-fed "$(unit controller NRestarts) $(unit agent NRestarts)"

# An upgrade's restart: only the agent process goes (KillMode=process); the next one
# re-adopts the container.
systemctl restart skiff-agent; say agent-restart $?
apid2=$(unit agent MainPID)
say restart-new-agent "$([ "$apid2" != "$apid" ] && [ -d /proc/$shim ] && [ "$(sort -n $cg/cgroup.procs | head -n1)" = "$cproc" ] && echo yes || echo no)"
until_ok node_ready 120; say node-ready-after-restart $?

# A hung agent: systemd finds its watchdog unfed, aborts it and starts another; the container
# stays, and the new agent still controls it.
kill -STOP $apid2
until_ok '[ "$(unit agent NRestarts)" = 1 ] && [ "$(unit agent ActiveState)" = active ]' 60; say agent-watchdog-restart $?
apid3=$(unit agent MainPID)
say watchdog-agent "$([ "$apid3" != "$apid2" ] && [ -d /proc/$shim ] && [ "$(sort -n $cg/cgroup.procs | head -n1)" = "$cproc" ] && echo yes || echo no)"
say agent-watchdog-logged "$(journalctl -u skiff-agent -o cat --no-pager | grep -c 'Watchdog timeout')"
until_ok node_ready 120
skiff tasks stop "$id" >/dev/null; until_ok 'has_status $id STOPPED' 120; say task-stopped $?
say task-exit "$(skiff tasks describe $id -o json | grep -o '"exitCode": *[0-9]*' | tr -d ' ')"
until_ok '[ ! -d $cg ] && [ ! -d /proc/$cproc ]' 30; say container-gone $?

# A hung controller: restarted the same way, its state intact.
kill -STOP $cpid
until_ok '[ "$(unit controller NRestarts)" = 1 ] && [ "$(unit controller ActiveState)" = active ]' 60; say controller-watchdog-restart $?
say task-kept "$(skiff tasks describe $id -o json | grep -q '"lastStatus": *"STOPPED"' && echo yes)"
until_ok node_ready 120; say node-back $?

# A stop: SIGTERM, the state flushed, exit 0.
systemctl stop skiff-controller; say controller-stop $?
say controller-stopped "$(unit controller ActiveState) $(unit controller Result) $(unit controller ExecMainCode) $(unit controller ExecMainStatus)"

# The journal: skiff's lines carry their priorities, with no time or colour of their own.
agent_log() { journalctl _SYSTEMD_UNIT=skiff-agent.service --no-pager -o cat "$@"; }
until_ok 'agent_log -p warning..warning | grep -q reconnecting' 60; say agent-warning $?
say agent-info "$(agent_log -p info..info | grep -c 'favordynmods is off')"
say info-among-warnings "$(agent_log -p warning | grep -c 'favordynmods is off')"
both=$(journalctl _SYSTEMD_UNIT=skiff-agent.service + _SYSTEMD_UNIT=skiff-controller.service --no-pager -o cat)
say journal-lines "$(echo "$both" | grep -c .)"
say raw-prefixes "$(echo "$both" | grep -c '^<[0-9]>')"
say own-times "$(echo "$both" | grep -cE '^[0-9]{4}-[0-9]{2}-[0-9]{2}T|\[[0-9;]*m')"
"##;

#[test]
fn installed_by_the_script_the_units_run_under_a_real_systemd_with_their_watchdogs_and_journal() {
    units_under_systemd(Layout::Unified);
}

/// The same on systemd's hybrid layout (Debian 11, Ubuntu 20.04): the controllers on cgroup
/// v1 — cpu,cpuacct and net_cls,net_prio co-mounted, misc, rdma, hugetlb, perf_event among
/// them — and cgroup2 at /sys/fs/cgroup/unified. (This machine kind is hybrid too, but mounts
/// each controller apart and fewer of them; there containers run.)
#[test]
#[ignore = "a known bug, open: on this layout every container start fails with libcontainer's \
            'failed to prepare rootfs' (seen 2026-12-08); run with --ignored"]
fn the_same_on_a_hybrid_cgroup_host() {
    units_under_systemd(Layout::Hybrid);
}

/// How the VM's systemd lays out cgroups.
#[derive(PartialEq)]
enum Layout {
    /// cgroup2 alone, at /sys/fs/cgroup (systemd's default).
    Unified,
    /// v1 hierarchies for the controllers, cgroup2 at /sys/fs/cgroup/unified.
    Hybrid,
}

fn units_under_systemd(layout: Layout) {
    let env = Env::new();
    let fs = Initramfs::with_systemd(&env.path("initramfs"), UNDER_SYSTEMD);
    fs.add_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy"),
        "/src/deploy",
    );
    let console = boot(
        &fs,
        env.dir.path(),
        match layout {
            Layout::Unified => "systemd.unified_cgroup_hierarchy=1",
            Layout::Hybrid => "systemd.unified_cgroup_hierarchy=0",
        },
        Duration::from_secs(600),
    );
    let vm = Reported::of(console);
    let get = |k: &str| vm.get(k);
    let ctx = || vm.context();
    assert_eq!(get("script-exit"), "0", "{}", ctx());
    assert_eq!(get("pid1"), "systemd", "{}", ctx());
    let hierarchies = get("hierarchies");
    match layout {
        Layout::Unified => assert_eq!(hierarchies, "cgroup2 /sys/fs/cgroup;", "{}", ctx()),
        Layout::Hybrid => assert!(
            hierarchies.contains("cgroup2 /sys/fs/cgroup/unified;")
                && hierarchies.contains("cgroup /sys/fs/cgroup/pids;"),
            "{}",
            ctx()
        ),
    }
    // Where the agent's unit lives in the v1 pids hierarchy (none on a pure v2 host).
    let unit_pids = match layout {
        Layout::Unified => "",
        Layout::Hybrid => "/system.slice/skiff-agent.service",
    };

    // Installed and started by the script; ready means the API answers.
    assert_eq!(get("install-controller"), "0", "{}", ctx());
    assert!(get("api-on-ready").starts_with("0 NODE"), "{}", ctx());
    assert_eq!(get("controller-state"), "active/running", "{}", ctx());
    assert_eq!(
        get("controller-status"),
        "serving on 127.0.0.1:7400",
        "{}",
        ctx()
    );
    // The controller's sandbox as the kernel holds it: no new privileges, a seccomp filter,
    // only CAP_NET_BIND_SERVICE (bit 10), a mount namespace of its own (ProtectSystem...).
    assert_eq!(
        get("controller-sandbox"),
        "nnp=1 seccomp=2 capbnd=0000000000000400 mounts-shared=no",
        "{}",
        ctx()
    );

    // The agent joined through its drop-in; it shares the host's mounts (the containers' must
    // stay visible to the next agent) and runs in its unit's cgroup.
    assert_eq!(get("install-agent"), "0", "{}", ctx());
    assert_eq!(get("install-kept"), "2", "{}", ctx());
    assert_eq!(get("node-ready"), "0", "{}", ctx());
    assert_eq!(get("agent-state"), "active/running", "{}", ctx());
    assert_eq!(
        get("agent-process"),
        format!("nnp=1 mounts-shared=yes cgroups=/system.slice/skiff-agent.service|{unit_pids}"),
        "{}",
        ctx()
    );
    // The container runs in a cgroup of its own, its shim in the agent's unit (which is how
    // KillMode=process leaves it running); NoNewPrivileges=yes takes nothing from it.
    assert_eq!(get("task-running"), "0", "{}", ctx());
    let (unified, pids) = get("task-cgroups").split_once('|').unwrap();
    let limited_by = if layout == Layout::Unified {
        unified
    } else {
        pids
    };
    assert!(
        limited_by.starts_with("/skiff/") && limited_by.ends_with("-main"),
        "{}",
        ctx()
    );
    assert_eq!(
        get("shim-cgroups"),
        format!("/system.slice/skiff-agent.service|{unit_pids}"),
        "{}",
        ctx()
    );
    assert_eq!(get("container-sandbox"), "nnp=1 seccomp=2", "{}", ctx());

    // Both watchdogs fed as systemd records it.
    assert_eq!(get("controller-pings"), "0", "{}", ctx());
    assert_eq!(get("agent-pings"), "0", "{}", ctx());
    assert_eq!(get("restarts-while-fed"), "0 0", "{}", ctx());

    // Restarted by systemctl and by the watchdog, the agent leaves the container running and
    // the next one re-adopts it: it stops it on request.
    assert_eq!(get("agent-restart"), "0", "{}", ctx());
    assert_eq!(get("restart-new-agent"), "yes", "{}", ctx());
    assert_eq!(get("node-ready-after-restart"), "0", "{}", ctx());
    assert_eq!(get("agent-watchdog-restart"), "0", "{}", ctx());
    assert_eq!(get("watchdog-agent"), "yes", "{}", ctx());
    assert_eq!(get("agent-watchdog-logged"), "1", "{}", ctx());
    // (Its SIGTERM reached it: the shell's trap exits 0.)
    assert_eq!(get("task-stopped"), "0", "{}", ctx());
    assert_eq!(get("task-exit"), "\"exitCode\":0", "{}", ctx());
    assert_eq!(get("container-gone"), "0", "{}", ctx());

    // A hung controller is restarted with its state; a stop is clean.
    assert_eq!(get("controller-watchdog-restart"), "0", "{}", ctx());
    assert_eq!(get("task-kept"), "yes", "{}", ctx());
    assert_eq!(get("node-back"), "0", "{}", ctx());
    assert_eq!(get("controller-stop"), "0", "{}", ctx());
    // ExecMainCode 1 is CLD_EXITED: it exited (status 0), it was not killed.
    assert_eq!(
        get("controller-stopped"),
        "inactive success 1 0",
        "{}",
        ctx()
    );

    // journald read the priorities: the agent's reconnect warning is a warning, its start
    // notes info; no line kept a raw prefix, a time or a colour.
    assert_eq!(get("agent-warning"), "0", "{}", ctx());
    // (one favordynmods note per agent start: the first, the restart, the watchdog's)
    assert_eq!(get("agent-info"), "3", "{}", ctx());
    assert_eq!(get("info-among-warnings"), "0", "{}", ctx());
    let lines: usize = get("journal-lines").parse().unwrap();
    assert!(lines > 10, "{}", ctx());
    assert_eq!(get("raw-prefixes"), "0", "{}", ctx());
    assert_eq!(get("own-times"), "0", "{}", ctx());
}
