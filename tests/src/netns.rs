//! Hosts for fault tests: network namespaces the test creates, each joined to a bridge on this
//! machine by a veth pair, as machines on one switch. The controller listens on the bridge's
//! address; an agent started in a host's namespace reaches it only over that host's veth, so
//! taking the veth down cuts the host off (its packets are dropped, as by a pulled cable) and
//! bringing it up heals it. Only the network is separate: processes share this machine's
//! mounts and cgroups, so the test sees the agents' state and containers as usual.
//! Everything is removed when the `Lan` is dropped.

use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A bridge with an address on this machine, and the hosts joined to it.
pub struct Lan {
    bridge: String,
    /// The bridge's address: where the hosts reach this machine (the controller).
    pub gateway: String,
    prefix: String,
    hosts: Vec<String>,
}

/// One host: a network namespace with an address on the lan.
pub struct Host {
    /// The namespace's name (under /run/netns).
    pub netns: String,
    /// This machine's end of the host's veth: down cuts the host off.
    pub cable: String,
    pub ip: String,
}

static LANS: AtomicU32 = AtomicU32::new(0);

/// Runs `ip` with `args`, panicking with its error when it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lan {
    /// A new bridge on its own /24 (10.250.N.0, N unique per lan in this process).
    pub fn up() -> Lan {
        let n = LANS.fetch_add(1, Ordering::AcqRel);
        let tag = format!("{:x}{n}", std::process::id() % 0xfffff);
        let octet = (std::process::id() + n * 37) % 250 + 1;
        let prefix = format!("10.250.{octet}");
        let bridge = format!("sk{tag}b");
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&["addr", "add", &format!("{prefix}.1/24"), "dev", &bridge]);
        ip(&["link", "set", &bridge, "up"]);
        Lan {
            bridge,
            gateway: format!("{prefix}.1"),
            prefix,
            hosts: Vec::new(),
        }
    }

    /// A new host on the lan, its namespace's loopback up.
    pub fn host(&mut self) -> Host {
        let i = self.hosts.len() + 2;
        let netns = format!("{}h{i}", self.bridge);
        let (cable, inside) = (
            format!("{}c{i}", self.bridge),
            format!("{}n{i}", self.bridge),
        );
        let addr = format!("{}.{i}", self.prefix);
        ip(&["netns", "add", &netns]);
        self.hosts.push(netns.clone());
        ip(&[
            "link", "add", &cable, "type", "veth", "peer", "name", &inside,
        ]);
        ip(&["link", "set", &inside, "netns", &netns]);
        ip(&["link", "set", &cable, "master", &self.bridge, "up"]);
        let inns = |args: &[&str]| {
            let mut all = vec!["-n", netns.as_str()];
            all.extend_from_slice(args);
            ip(&all);
        };
        inns(&["addr", "add", &format!("{addr}/24"), "dev", &inside]);
        inns(&["link", "set", &inside, "up"]);
        inns(&["link", "set", "lo", "up"]);
        Host {
            netns,
            cable,
            ip: addr,
        }
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

impl Host {
    /// Cuts the host off the lan: everything it sends or is sent is dropped.
    pub fn cut(&self) {
        ip(&["link", "set", &self.cable, "down"]);
    }

    /// Joins it again.
    pub fn heal(&self) {
        ip(&["link", "set", &self.cable, "up"]);
    }

    /// Makes `cmd` run in this host's network namespace (and nothing else of it changed).
    pub fn enter(&self, cmd: &mut Command) {
        let ns = std::fs::File::open(format!("/run/netns/{}", self.netns))
            .expect("the host's namespace");
        // SAFETY: between fork and exec the closure only calls setns(2), which is
        // async-signal-safe, on a descriptor opened before the fork.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            });
        }
    }
}
