//! Attaching and detaching with the real reference plugins and kernel networking: addresses,
//! task-to-task traffic, a published port from the node and from another namespace, and no
//! veth, lease, NAT rule or namespace left after detach or after a crash's reconcile.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

/// Runs `f` on a thread inside the namespace file `netns`.
fn in_netns<T: Send + 'static>(netns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = std::fs::File::open(netns).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// A TCP server in `netns` on `port` that answers each connection with `reply`.
fn serve(netns: &Path, port: u16, reply: &'static str) {
    let listener = in_netns(netns, move || TcpListener::bind(("0.0.0.0", port)).unwrap());
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            let _ = s.write_all(reply.as_bytes());
        }
    });
}

fn fetch(addr: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Detaches a test's tasks and deletes its bridge when the test ends, passed or not: a
/// bridge left with the test's range would capture the next run's traffic.
struct Leave<'a> {
    nets: &'a Networks,
    tasks: Vec<String>,
    bridge: String,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        for t in &self.tasks {
            let _ = self.nets.detach(t);
            forget_nat_rules_of(t);
        }
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

fn test_networks(tag: &str, subnet: &str) -> (Networks, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    // A bridge and range of this test's own, so tests running at once do not meet.
    let cfg = NetworkConfig {
        bridge_name: format!("sk{tag}{}", std::process::id() % 10000),
        bridge_subnet: subnet.into(),
        ..Default::default()
    };
    let nets = Networks::load(cfg, dir.path().join("cache"), dir.path().join("netns")).unwrap();
    (nets, dir)
}

fn iptables_mentions(id: &str) -> bool {
    ["nat", "filter"].iter().any(|table| {
        let out = std::process::Command::new("iptables")
            .args(["-t", table, "-S"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains(id)
    })
}

/// Removes the NAT rules that name `id` and the chains they jump to.
fn forget_nat_rules_of(id: &str) {
    let ipt = |args: &[&str]| {
        std::process::Command::new("iptables")
            .args(["-t", "nat"])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let mut chains = Vec::new();
    for rule in ipt(&["-S"]).lines().filter(|l| l.contains(id)) {
        let words: Vec<&str> = rule.split_whitespace().collect();
        if let Some(i) = words.iter().position(|w| *w == "-j") {
            chains.push(words[i + 1].to_string());
        }
        // As iptables printed it (quotes escaped for a shell).
        let delete = rule.replacen("-A ", "-D ", 1);
        let _ = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("iptables -t nat {delete}"))
            .status();
    }
    for c in chains.iter().filter(|c| c.starts_with("CNI-")) {
        ipt(&["-F", c]);
        ipt(&["-X", c]);
    }
}

fn link_exists(name: &str) -> bool {
    PathBuf::from("/sys/class/net").join(name).exists()
}

fn lease_of(id: &str) -> bool {
    let dir = Path::new("/var/lib/cni/networks").join(DEFAULT_NETWORK);
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            std::fs::read_to_string(e.path())
                .map(|s| s.lines().next() == Some(id))
                .unwrap_or(false)
        })
}

fn task_id(n: u32) -> String {
    format!("nettest{}x{n}", std::process::id())
}

#[test]
fn two_tasks_talk_a_published_port_answers_and_detach_leaves_nothing() {
    let (nets, _dir) = test_networks("a", "10.201.0.0/24");
    let (a, b) = (task_id(1), task_id(2));
    let port = 20000 + (std::process::id() % 10000) as u16;
    let ports = [PortMapping {
        host_port: port,
        container_port: 80,
        protocol: "tcp".into(),
    }];
    let na = nets.attach(&a, DEFAULT_NETWORK, &ports).unwrap();
    let nb = nets.attach(&b, DEFAULT_NETWORK, &[]).unwrap();
    assert_eq!(na.addresses.len(), 1, "{na:?}");
    assert!(na.addresses[0].starts_with("10.201.0."), "{na:?}");
    assert_ne!(na.addresses, nb.addresses);
    assert_eq!(na.gateway.as_deref(), Some("10.201.0.1"));

    serve(&na.netns, 80, "hello from a");
    // Task to task, by address.
    let addr = format!("{}:80", na.addresses[0]);
    assert_eq!(
        in_netns(&nb.netns, move || fetch(&addr)).unwrap(),
        "hello from a"
    );
    // The published port, from the node (loopback and the gateway address) and from another
    // namespace (through the gateway).
    assert_eq!(fetch(&format!("127.0.0.1:{port}")).unwrap(), "hello from a");
    let via_gateway = format!("10.201.0.1:{port}");
    assert_eq!(
        in_netns(&nb.netns, move || fetch(&via_gateway)).unwrap(),
        "hello from a"
    );
    // Loopback is up inside.
    in_netns(&na.netns, || TcpListener::bind("127.0.0.1:0").unwrap());

    let veths: Vec<String> = na
        .host_interfaces
        .iter()
        .chain(&nb.host_interfaces)
        .cloned()
        .collect();
    assert!(veths.iter().any(|v| v.starts_with("veth")), "{veths:?}");
    assert!(lease_of(&a) && iptables_mentions(&a));
    nets.detach(&a).unwrap();
    nets.detach(&b).unwrap();
    for v in &veths {
        assert!(!link_exists(v) || v.starts_with("sk"), "veth {v} left");
    }
    for t in [&a, &b] {
        assert!(!lease_of(t), "lease of {t} left");
        assert!(!iptables_mentions(t), "iptables rules of {t} left");
        assert!(!nets.netns_path(t).exists());
    }
    assert!(fetch(&format!("127.0.0.1:{port}")).is_err());
    // Detaching again is fine.
    nets.detach(&a).unwrap();
    let _ = std::process::Command::new("ip")
        .args(["link", "del", &format!("ska{}", std::process::id() % 10000)])
        .status();
}

#[test]
fn reconcile_detaches_what_a_crash_left_and_keeps_what_live_tasks_hold() {
    // (A reboot, where the namespace and the NAT rules are gone too, is end to end:
    // tests/tests/network.rs.)
    let (nets, _dir) = test_networks("b", "10.202.0.0/24");
    let (kept, crashed) = (task_id(3), task_id(4));
    for t in [&kept, &crashed] {
        nets.attach(t, DEFAULT_NETWORK, &[]).unwrap();
    }
    let veth = nets.attached(&crashed).unwrap().host_interfaces;
    let gone = nets.reconcile(|t| t == kept);
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0], crashed);
    assert!(!lease_of(&crashed), "lease of {crashed} left");
    assert!(
        !iptables_mentions(&crashed),
        "iptables rules of {crashed} left"
    );
    assert!(nets.attached(&crashed).is_none());
    assert!(!nets.netns_path(&crashed).exists());
    for v in veth.iter().filter(|v| v.starts_with("veth")) {
        assert!(!link_exists(v));
    }
    assert!(lease_of(&kept) && nets.attached(&kept).is_some());
    nets.detach(&kept).unwrap();
    let _ = std::process::Command::new("ip")
        .args(["link", "del", &format!("skb{}", std::process::id() % 10000)])
        .status();
}

#[test]
fn a_bridge_task_takes_a_warm_namespace_and_gives_nothing_back_but_its_release() {
    let (nets, dir) = test_networks("c", "10.203.0.0/24");
    nets.refill();
    let pooled: Vec<String> = nets
        .pool
        .lock()
        .unwrap()
        .iter()
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(pooled.len(), 2);
    let task = task_id(6);
    let net = nets.attach(&task, DEFAULT_NETWORK, &[]).unwrap();
    // It got one of the warm namespaces, attached before it asked.
    let took = pooled
        .iter()
        .find(|id| net.netns == nets.netns_path(id))
        .expect("a warm namespace");
    assert_eq!(nets.pool.lock().unwrap().len(), 1);
    assert_eq!(nets.attached(&task).unwrap().addresses, net.addresses);
    assert!(lease_of(took));
    // A task with published ports is attached on its own.
    let ported = task_id(7);
    let ports = [PortMapping {
        host_port: 20000 + (std::process::id() % 9000) as u16 + 1000,
        container_port: 80,
        protocol: "tcp".into(),
    }];
    let own = nets.attach(&ported, DEFAULT_NETWORK, &ports).unwrap();
    assert_eq!(own.netns, nets.netns_path(&ported));
    // Reconcile keeps what live tasks and the pool hold.
    assert!(nets.reconcile(|t| t == task || t == ported).is_empty());
    // Released: its warm attachment and its claim go.
    nets.detach(&task).unwrap();
    nets.detach(&ported).unwrap();
    assert!(!lease_of(took) && !nets.netns_path(took).exists());
    assert!(nets.attached(&task).is_none());
    // A new agent (the pool forgotten) releases what the old one kept warm.
    let again = Networks::load(
        NetworkConfig {
            bridge_name: format!("skc{}", std::process::id() % 10000),
            bridge_subnet: "10.203.0.0/24".into(),
            ..Default::default()
        },
        dir.path().join("cache"),
        dir.path().join("netns"),
    )
    .unwrap();
    let released = again.reconcile(|_| false);
    assert_eq!(released.len(), 1, "{released:?}");
    assert!(!lease_of(&released[0]));
    let _ = std::process::Command::new("ip")
        .args(["link", "del", &format!("skc{}", std::process::id() % 10000)])
        .status();
}

#[test]
fn a_quiet_warm_namespace_goes_back_to_the_pool_and_a_busy_one_is_released() {
    let (nets, _dir) = test_networks("d", "10.204.0.0/24");
    nets.refill();
    assert_eq!(nets.pooled(), 2);
    let (quiet, busy) = (task_id(8), task_id(9));
    let q = nets.attach(&quiet, DEFAULT_NETWORK, &[]).unwrap();
    let b = nets.attach(&busy, DEFAULT_NETWORK, &[]).unwrap();
    assert_eq!(nets.pooled(), 0);
    // The busy task leaves a socket behind (a listener, as a server whose process is gone
    // would leave connections in TIME_WAIT).
    let _listener = in_netns(&b.netns, || TcpListener::bind("0.0.0.0:8080").unwrap());
    let busy_id = std::fs::read_to_string(nets.claims_dir.join(&busy)).unwrap();
    nets.release(&quiet, true).unwrap();
    nets.release(&busy, true).unwrap();
    // The quiet one waits for the next task, attached as it was; the busy one is gone.
    assert_eq!(nets.pooled(), 1);
    assert!(q.netns.exists() && !b.netns.exists());
    assert!(!lease_of(&busy_id));
    let next = nets.attach(&task_id(10), DEFAULT_NETWORK, &[]).unwrap();
    assert_eq!(next.netns, q.netns);
    assert_eq!(next.addresses, q.addresses);
    // Not reusable (ports or a privileged container): released, not pooled.
    nets.release(&task_id(10), false).unwrap();
    assert_eq!(nets.pooled(), 0);
    assert!(!q.netns.exists());
    let _ = std::process::Command::new("ip")
        .args(["link", "del", &format!("skd{}", std::process::id() % 10000)])
        .status();
}

#[test]
fn check_passes_an_attachment_as_added_and_names_the_plugin_that_finds_it_changed() {
    let (nets, _dir) = test_networks("e", "10.205.0.0/24");
    let t = task_id(11);
    let _leave = Leave {
        nets: &nets,
        tasks: vec![t.clone()],
        bridge: format!("ske{}", std::process::id() % 10000),
    };
    let port = 30000 + (std::process::id() % 10000) as u16;
    let ports = [PortMapping {
        host_port: port,
        container_port: 80,
        protocol: "tcp".into(),
    }];
    let net = nets.attach(&t, DEFAULT_NETWORK, &ports).unwrap();
    nets.check(&t).unwrap();

    // Someone removes the task's veth behind skiff's back: CHECK says so, and which plugin.
    let veth = net
        .host_interfaces
        .iter()
        .find(|v| v.starts_with("veth"))
        .unwrap()
        .clone();
    let del = std::process::Command::new("ip")
        .args(["link", "del", &veth])
        .status()
        .unwrap();
    assert!(del.success());
    let err = nets.check(&t).unwrap_err().to_string();
    assert!(err.contains("bridge") && err.contains("CHECK"), "{err}");

    // Detached all the same: its lease and published port go. (The masquerade rule of the
    // address that vanished with the veth stays: the bridge plugin's DEL finds the addresses
    // to unmasquerade on the interface, which was gone — the guard removes it.)
    nets.detach(&t).unwrap();
    assert!(!lease_of(&t));
    assert!(!nets.netns_path(&t).exists());
    assert!(nets.check(&t).is_err());
}
