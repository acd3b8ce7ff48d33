//! A slow, lossy link between an agent and its controller: `tc netem` on the link they talk
//! over. This host's kernel has no netem, so the test boots a VM (`skiff_tests::vm`: Debian's
//! kernel, whose sch_netem module `scripts/deps test` unpacks) and runs a real controller and
//! a real agent there, talking over the VM's loopback, with netem delaying every packet
//! 100 ms and dropping 5 % of them. The script inside reports `@key=value` lines; the
//! assertions are here.

use std::path::Path;
use std::time::Duration;

use skiff_tests::vm::{boot, Initramfs, Reported};
use skiff_tests::Env;

const SCENARIO: &str = r##"
say() { echo "@$1=$2"; echo "# at $(cut -d. -f1 /proc/uptime) s"; }
# A script still running at 240 s (it takes ~20) shows where it is and powers off.
( sleep 240; echo "# --- still running after 240 s ---"; ps; /usr/sbin/tc -s qdisc show dev lo
  skiff tasks ls; skiff nodes ls; echo "# controller:"; tail -n 80 /tmp/ctl.log
  echo "# agent:"; tail -n 80 /tmp/agent.log; poweroff -f ) &
mkdir -p /sys/fs/cgroup
mount -t cgroup2 -o nosuid,nodev,noexec,relatime,nsdelegate cgroup2 /sys/fs/cgroup
insmod /lib/modules/sch_netem.ko; say netem-module $?
IMG=dir:/images/busybox
# (Heartbeats every 500 ms; a node silent for 5 s is lost.)
skiff controller --plaintext --data-dir /var/lib/ctl --listen 127.0.0.1:7400 --http-listen off \
  --heartbeat-interval 500ms --node-timeout 5s >/tmp/ctl.log 2>&1 &
for i in $(seq 1 240); do [ -f /var/lib/ctl/admin.token ] && break; sleep 0.5; done
export SKIFF_ADDR=http://127.0.0.1:7400 SKIFF_TOKEN="$(cat /var/lib/ctl/admin.token)"
skiff agent --controller http://127.0.0.1:7400 --node-id n1 --data-dir /var/lib/agent \
  >/tmp/agent.log 2>&1 &
connected() { skiff nodes ls -o json 2>/dev/null | grep -q '"connected": true'; }
for i in $(seq 1 240); do connected && break; sleep 0.5; done
connected; say connected-before $?

# The link: 100 ms each way, 5 % of packets dropped.
/usr/sbin/tc qdisc add dev lo root netem delay 100ms loss 5%; say netem $?
say qdisc "$(/usr/sbin/tc qdisc show dev lo | head -1)"
t0=$(cut -d' ' -f1 /proc/uptime | tr -d .)
skiff nodes ls >/dev/null
say call-centiseconds "$(( $(cut -d' ' -f1 /proc/uptime | tr -d .) - t0 ))"

# Ten tasks at once, each waited for: placed, started, reported over the slow link.
pids=""
for i in $(seq 1 10); do
  ( skiff run-task --network none --image $IMG --wait -- sh -c "exit 0" >/tmp/run.$i 2>&1
    echo $? > /tmp/code.$i ) &
  pids="$pids $!"
done
for p in $pids; do wait $p; done
ok=0; for i in $(seq 1 10); do [ "$(cat /tmp/code.$i)" = 0 ] && ok=$((ok+1)); done
say tasks-ok $ok
[ $ok = 10 ] || cat /tmp/run.*
# One more that runs a while: RUNNING is reported, and its end.
skiff run-task --network none --image $IMG --wait -- sleep 6; say long-task $?
say node-lost "$(skiff tasks ls --limit 0 -o json | grep -c NodeLost)"
say silent "$(grep -c -e 'silent' -e 'node lost' /tmp/ctl.log)"
connected; say connected-after $?
/usr/sbin/tc qdisc del dev lo root
"##;

#[test]
fn tasks_converge_over_a_slow_lossy_link_without_a_spurious_node_loss() {
    let env = Env::new();
    let fs = Initramfs::new(&env.path("initramfs"), SCENARIO);
    fs.add_program(Path::new("/usr/sbin/tc"));
    let console = boot(
        &fs,
        env.dir.path(),
        "cgroup_no_v1=all",
        Duration::from_secs(600),
    );
    let vm = Reported::of(console);
    let get = |k: &str| vm.get(k);
    let console = vm.context();
    assert_eq!(get("script-exit"), "0", "{console}");
    assert_eq!(get("netem-module"), "0", "{console}");
    assert_eq!(get("connected-before"), "0", "{console}");
    assert_eq!(get("netem"), "0", "{console}");
    assert!(get("qdisc").contains("netem"), "{console}");
    assert!(get("qdisc").contains("delay 100ms"), "{console}");
    assert!(get("qdisc").contains("loss 5%"), "{console}");
    // The delay is in effect: a call takes at least two round trips of 200 ms.
    let cs: u64 = get("call-centiseconds").parse().unwrap();
    assert!(cs >= 40, "a call took {cs} cs: {console}");
    // Placements and reports converged: every task ran to its end, exit 0.
    assert_eq!(get("tasks-ok"), "10", "{console}");
    assert_eq!(get("long-task"), "0", "{console}");
    // And no node was lost below the timeout.
    assert_eq!(get("node-lost"), "0", "{console}");
    assert_eq!(get("silent"), "0", "{console}");
    assert_eq!(get("connected-after"), "0", "{console}");
}
