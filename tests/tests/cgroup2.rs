//! skiff on a pure cgroup v2 machine. This host binds every controller but hugetlb to cgroup v1,
//! so the test boots a VM of its own (`skiff_tests::vm`: Debian's kernel under QEMU, with
//! `cgroup_no_v1=all` and cgroup2 mounted at /sys/fs/cgroup as systemd does) and runs the real
//! `skiff dev` there, with real containers. The script inside reports `@key=value` lines; the
//! assertions are here.

use std::time::Duration;

use skiff_tests::vm::{boot, Initramfs, Reported};
use skiff_tests::Env;

const SCENARIO: &str = r##"
uptime_s() { cut -d. -f1 /proc/uptime; }
# Each report with the VM's uptime beside it (a comment line), so a slow step shows.
say() { echo "@$1=$2"; echo "# at $(uptime_s) s"; }
# What skiff looked like, for a step that did not end as it should.
show_state() {
  echo "# --- $1: processes, tasks, nodes, the end of skiff dev's log ---"
  ps; free
  timeout 20 skiff tasks ls
  timeout 20 skiff nodes ls
  tail -n 60 /tmp/dev.log
  echo "# ---"
}
# A watchdog: a script still running at 450 s (the test gives the VM 600) shows where it is
# and powers off, so the failure comes with its cause instead of a bare timeout.
( sleep 450; show_state "still running after 450 s"; poweroff -f ) &
mkdir -p /sys/fs/cgroup
mount -t cgroup2 -o nosuid,nodev,noexec,relatime,nsdelegate,memory_recursiveprot cgroup2 /sys/fs/cgroup
say hierarchies "$(awk '$3 ~ /^cgroup/ {printf "%s %s;", $3, $2}' /proc/mounts)"
say controllers "$(cat /sys/fs/cgroup/cgroup.controllers)"

IMG=dir:/images/busybox
start_dev() {
  skiff dev --data-dir /var/lib/skiff "$@" >>/tmp/dev.log 2>&1 &
  DEV=$!
  for i in $(seq 1 240); do skiff nodes ls >/dev/null 2>&1 && return 0; sleep 0.5; done
  cat /tmp/dev.log; return 1
}
# Waits (up to 2 minutes) for task $1 to reach status $2; shows skiff's state if it does not.
wait_status() {
  end=$(( $(uptime_s) + 120 ))
  while [ "$(uptime_s)" -lt "$end" ]; do
    timeout 20 skiff tasks describe "$1" -o json 2>/dev/null | grep -q "\"lastStatus\": *\"$2\"" && return 0
    sleep 0.5
  done
  show_state "task $1 did not reach $2"
  return 1
}
cgroup_of() { ls -d /sys/fs/cgroup/skiff/"$1"-main 2>/dev/null; }
# Waits (up to 20 s) for task $1's cgroup to go; prints it if it stays.
cgroup_gone() {
  for i in $(seq 1 40); do [ -z "$(cgroup_of "$1")" ] && return 0; sleep 0.5; done
  cgroup_of "$1"
}

cgroup_mount() { awk '$2 == "/sys/fs/cgroup" {print $4}' /proc/mounts; }
start_dev; say dev-started $?
say mount-by-default "$(cgroup_mount)"
say favordynmods-hint "$(grep -c 'favordynmods is off' /tmp/dev.log)"

# (Tasks run with --network none: the VM has no bridge or veth modules, and cgroups are what is
# tested here.)
# A command's exit code and output; what the container sees of its cgroup.
out=$(skiff run-task --network none --image $IMG --wait --follow -- sh -c 'cat /proc/self/cgroup; echo done; exit 3' 2>/tmp/follow.err)
say exit-code $?
say output "$(echo "$out" | tr '\n' ';')"
say follow-stderr "$(tr '\n' ';' < /tmp/follow.err)"

# Limits, as the kernel holds them while the task runs.
id=$(skiff run-task --network none --image $IMG --memory 48 --cpu 0.25 -- sleep 300)
wait_status "$id" RUNNING; say limits-running $?
cg=$(cgroup_of "$id")
say memory-max "$(cat "$cg/memory.max")"
say cpu-max "$(cat "$cg/cpu.max")"
say procs-in-cgroup "$(wc -l < "$cg/cgroup.procs")"
skiff tasks stop "$id" >/dev/null; wait_status "$id" STOPPED; say limits-stopped $?
say limits-cgroup-left "$(cgroup_gone "$id")"

# A memory hog: the OOM kill is read from memory.events.
out=$(skiff run-task --network none --image $IMG --memory 32 --wait -- sh -c 'dd if=/dev/zero of=/dev/null bs=100M count=1' 2>&1)
say oom-exit $?
say oom-message "$out"

# An agent restart re-adopts a running container.
id=$(skiff run-task --network none --image $IMG -- sleep 300)
wait_status "$id" RUNNING
before=$(cat "$(cgroup_of "$id")/cgroup.procs")
kill -TERM $DEV; wait $DEV
# Restarted with favordynmods asked for: it is set, and every other option stays.
start_dev --cgroup-favordynmods; say dev-restarted $?
say mount-favoring "$(cgroup_mount)"
wait_status "$id" RUNNING; say readopted-running $?
after=$(cat "$(cgroup_of "$id")/cgroup.procs")
say same-process "$([ -n "$before" ] && [ "$before" = "$after" ] && echo yes || echo "no: $before / $after")"
skiff tasks stop "$id" >/dev/null; wait_status "$id" STOPPED; say readopted-stopped $?

# A shim killed outright: the agent kills what is left in the cgroup and removes it.
id=$(skiff run-task --network none --image $IMG -- sleep 300)
wait_status "$id" RUNNING
pids=$(cat "$(cgroup_of "$id")/cgroup.procs")
kill -KILL "$(cut -d' ' -f1 /var/lib/skiff/agent/state/tasks/$id/main/shim.pid)"
wait_status "$id" STOPPED; say orphan-stopped $?
say orphan-cgroup-left "$(cgroup_gone "$id")"
left=""
# (a zombie is dead: it waits only for PID 1, this script's shell, to collect it)
for p in $pids; do grep -qs '^State:[[:space:]]*[RSD]' /proc/$p/status && left="$left $p"; done
say orphan-processes-left "$left"
say tasks-left "$(ls /sys/fs/cgroup/skiff | grep -c -- '-main$')"
"##;

#[test]
fn containers_run_limited_and_tracked_on_a_pure_cgroup_v2_machine() {
    let env = Env::new();
    let fs = Initramfs::new(&env.path("initramfs"), SCENARIO);
    let console = boot(
        &fs,
        env.dir.path(),
        "cgroup_no_v1=all",
        Duration::from_secs(600),
    );
    let vm = Reported::of(console);
    let get = |k: &str| vm.get(k);
    let ctx = || vm.context();
    assert_eq!(get("script-exit"), "0", "{}", ctx());

    // Only cgroup2, with the controllers a container needs on it.
    assert_eq!(get("hierarchies"), "cgroup2 /sys/fs/cgroup;", "{}", ctx());
    for c in ["cpu", "memory", "pids"] {
        assert!(get("controllers").split(' ').any(|x| x == c), "{}", ctx());
    }
    assert_eq!(get("dev-started"), "0", "{}", ctx());
    // Unasked, the agent leaves the host's cgroup options alone and says what that costs.
    assert_eq!(
        get("mount-by-default"),
        "rw,nosuid,nodev,noexec,relatime,nsdelegate,memory_recursiveprot",
        "{}",
        ctx()
    );
    assert_eq!(get("favordynmods-hint"), "1", "{}", ctx());

    // The command's code and output; inside, one unified hierarchy ("0::…" only).
    assert_eq!(get("exit-code"), "3", "{}", ctx());
    // stderr: the task's id as following starts, nothing else.
    let follow_stderr = get("follow-stderr");
    assert!(
        follow_stderr.starts_with("skiff: following the logs of task ")
            && follow_stderr.matches(';').count() == 1,
        "{}",
        ctx()
    );
    let output = get("output");
    assert!(output.ends_with("done;"), "{}", ctx());
    let lines: Vec<&str> = output.trim_end_matches("done;").split(';').collect();
    assert!(
        lines.iter().all(|l| l.is_empty() || l.starts_with("0::")),
        "{}",
        ctx()
    );

    // --memory 48 → memory.max 48 MiB; --cpu 0.25 → a quarter of each 100 ms period.
    assert_eq!(get("limits-running"), "0", "{}", ctx());
    assert_eq!(
        get("memory-max"),
        (48 * 1024 * 1024).to_string(),
        "{}",
        ctx()
    );
    assert_eq!(get("cpu-max"), "25000 100000", "{}", ctx());
    assert_eq!(get("procs-in-cgroup"), "1", "{}", ctx());
    assert_eq!(get("limits-stopped"), "0", "{}", ctx());
    assert_eq!(get("limits-cgroup-left"), "", "{}", ctx());

    // The hog is OOM-killed and reported as such.
    assert_eq!(get("oom-exit"), "137", "{}", ctx());
    assert!(get("oom-message").contains("OutOfMemoryError"), "{}", ctx());

    // Re-adopted after the restart: the same process, still tracked and stoppable.
    assert_eq!(get("dev-restarted"), "0", "{}", ctx());
    // --cgroup-favordynmods adds the option and keeps the mount's flags and the others; the
    // tasks after it (re-adoption, stop, the killed shim) run on the changed host.
    assert_eq!(
        get("mount-favoring"),
        "rw,nosuid,nodev,noexec,relatime,nsdelegate,favordynmods,memory_recursiveprot",
        "{}",
        ctx()
    );
    assert_eq!(get("readopted-running"), "0", "{}", ctx());
    assert_eq!(get("same-process"), "yes", "{}", ctx());
    assert_eq!(get("readopted-stopped"), "0", "{}", ctx());

    // Nothing of the orphaned container is left.
    assert_eq!(get("orphan-stopped"), "0", "{}", ctx());
    assert_eq!(get("orphan-processes-left"), "", "{}", ctx());
    assert_eq!(get("orphan-cgroup-left"), "", "{}", ctx());
    assert_eq!(get("tasks-left"), "0", "{}", ctx());
}
