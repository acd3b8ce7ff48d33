//! `skiff doctor`: checks that this node can run skiff's containers and reach its controller,
//! and says what to do about each problem. Every check looks at the real thing (the mounted
//! cgroup hierarchies, a namespace actually created, the filesystems the kernel offers, the
//! CNI plugins on disk, free space, the controller's health service and its clock, the node
//! certificate) and none changes anything. Exit code 0 without a failed check, 1 with one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use crate::output::{self, Format};

#[derive(Args)]
pub struct DoctorArgs {
    /// The agent's data dir (images, logs, the node certificate): its free space and its
    /// certificate are checked.
    #[arg(long, env = "SKIFF_DATA_DIR", default_value = "/var/lib/skiff/agent")]
    data_dir: PathBuf,
    /// Where CNI plugins are looked for (repeatable; default /usr/lib/cni, /opt/cni/bin).
    #[arg(long = "cni-plugin-dir", value_delimiter = ':')]
    cni_plugin_dirs: Vec<PathBuf>,
    /// Skip the controller checks (connectivity, clock skew): for a node being set up.
    #[arg(long)]
    offline: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Ok,
    Warn,
    Fail,
    Skip,
}

#[derive(Debug, Serialize)]
struct Check {
    check: &'static str,
    status: Status,
    detail: String,
    /// What to do about it (empty when all is well).
    fix: String,
}

fn check(check: &'static str, status: Status, detail: impl Into<String>, fix: &str) -> Check {
    Check {
        check,
        status,
        detail: detail.into(),
        fix: fix.to_string(),
    }
}

pub async fn doctor(addr: &str, fmt: Format, a: DoctorArgs) -> anyhow::Result<i32> {
    let mut checks = vec![
        cgroups(),
        namespaces(),
        overlayfs(),
        seccomp(),
        cni(&a.cni_plugin_dirs),
        disk(&a.data_dir),
        certificate(&a.data_dir),
    ];
    if a.offline {
        checks.push(check("controller", Status::Skip, "--offline", ""));
    } else {
        checks.extend(controller(addr, &a.data_dir).await);
    }
    let failed = checks.iter().any(|c| c.status == Status::Fail);
    match fmt {
        Format::Json => println!("{}", output::json(&checks)),
        Format::Table => {
            let rows = checks
                .iter()
                .map(|c| {
                    vec![
                        c.check.to_string(),
                        format!("{:?}", c.status).to_uppercase(),
                        c.detail.clone(),
                        c.fix.clone(),
                    ]
                })
                .collect();
            println!(
                "{}",
                output::table(&["CHECK", "STATUS", "DETAIL", "FIX"], rows)
            );
        }
    }
    Ok(i32::from(failed))
}

/// The cgroup hierarchies mounted, and whether cpu, memory and pids are among their
/// controllers (v1 hierarchies, or the cgroup2 mount's `cgroup.controllers`).
fn cgroups() -> Check {
    let mounts = match skiff_agent::mountinfo::read() {
        Ok(m) => m,
        Err(e) => {
            return check(
                "cgroups",
                Status::Fail,
                format!("/proc/self/mountinfo: {e}"),
                "mount /proc",
            )
        }
    };
    let mut v1: Vec<String> = Vec::new();
    let mut v2: Option<(PathBuf, Vec<String>)> = None;
    for m in &mounts {
        match m.fstype.as_str() {
            "cgroup" => v1.extend(
                m.super_options
                    .iter()
                    .filter(|o| !matches!(o.as_str(), "rw" | "ro") && !o.contains('='))
                    .cloned(),
            ),
            "cgroup2" if v2.is_none() => {
                let controllers = std::fs::read_to_string(m.point.join("cgroup.controllers"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(str::to_string)
                    .collect();
                v2 = Some((m.point.clone(), controllers));
            }
            _ => {}
        }
    }
    v1.sort();
    v1.dedup();
    let has = |c: &str| {
        v1.iter().any(|x| x == c) || v2.as_ref().is_some_and(|(_, cs)| cs.iter().any(|x| x == c))
    };
    let mut detail = Vec::new();
    if !v1.is_empty() {
        detail.push(format!("v1: {}", v1.join(", ")));
    }
    if let Some((point, cs)) = &v2 {
        let cs = if cs.is_empty() {
            "no controllers".to_string()
        } else {
            cs.join(", ")
        };
        detail.push(format!("cgroup2 at {}: {cs}", point.display()));
    }
    if detail.is_empty() {
        return check(
            "cgroups",
            Status::Fail,
            "no cgroup hierarchy is mounted",
            "mount cgroup2 on /sys/fs/cgroup (systemd does this at boot)",
        );
    }
    let missing: Vec<&str> = ["cpu", "memory", "pids"]
        .into_iter()
        .filter(|c| !has(c))
        .collect();
    if missing.is_empty() {
        check("cgroups", Status::Ok, detail.join("; "), "")
    } else {
        check(
            "cgroups",
            Status::Fail,
            format!("{}; missing {}", detail.join("; "), missing.join(", ")),
            "enable the controllers on the kernel command line (e.g. cgroup_enable=memory) or in the cgroup2 root's cgroup.subtree_control",
        )
    }
}

/// Namespaces a container gets, created for real in a child process.
fn namespaces() -> Check {
    use nix::sched::CloneFlags;
    let flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWCGROUP;
    // A child unshares and exits: this process's own namespaces stay as they are.
    let made = match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            let code = i32::from(nix::sched::unshare(flags).is_err());
            unsafe { libc::_exit(code) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            matches!(
                nix::sys::wait::waitpid(child, None),
                Ok(nix::sys::wait::WaitStatus::Exited(_, 0))
            )
        }
        Err(e) => return check("namespaces", Status::Fail, format!("fork: {e}"), ""),
    };
    if made {
        check(
            "namespaces",
            Status::Ok,
            "mount, uts, ipc, pid, net and cgroup namespaces can be created",
            "",
        )
    } else {
        check(
            "namespaces",
            Status::Fail,
            "creating mount, uts, ipc, pid, net and cgroup namespaces was refused",
            "run the agent as root on a kernel with namespaces (CONFIG_NAMESPACES), outside a restricted container",
        )
    }
}

fn overlayfs() -> Check {
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if fs
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"))
    {
        check("overlayfs", Status::Ok, "the kernel offers overlay", "")
    } else {
        check(
            "overlayfs",
            Status::Warn,
            "no overlay filesystem: every container's rootfs is copied from its image's layers (slow starts, more disk)",
            "modprobe overlay, and list it in /etc/modules-load.d/skiff.conf",
        )
    }
}

fn seccomp() -> Check {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let filters = Path::new("/proc/sys/kernel/seccomp/actions_avail").exists();
    if status.lines().any(|l| l.starts_with("Seccomp:")) && filters {
        check("seccomp", Status::Ok, "seccomp filters are available", "")
    } else {
        check(
            "seccomp",
            Status::Fail,
            "this kernel has no seccomp filters: containers' syscall filters cannot be applied",
            "use a kernel built with CONFIG_SECCOMP_FILTER (every distribution kernel is)",
        )
    }
}

/// The CNI plugins bridge networking runs, and iptables (which they call).
fn cni(dirs: &[PathBuf]) -> Check {
    let dirs: Vec<PathBuf> = if dirs.is_empty() {
        vec![PathBuf::from("/usr/lib/cni"), PathBuf::from("/opt/cni/bin")]
    } else {
        dirs.to_vec()
    };
    let find = |p: &str| dirs.iter().map(|d| d.join(p)).find(|f| f.is_file());
    let missing: Vec<&str> = ["loopback", "bridge", "host-local", "portmap", "firewall"]
        .into_iter()
        .filter(|p| find(p).is_none())
        .collect();
    let iptables = ["/usr/sbin/iptables", "/sbin/iptables", "/usr/bin/iptables"]
        .iter()
        .any(|p| Path::new(p).exists());
    let shown: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    match (missing.is_empty(), iptables) {
        (true, true) => check("cni", Status::Ok, format!("bridge networking's plugins in {}", shown.join(", ")), ""),
        (true, false) => check(
            "cni",
            Status::Warn,
            "the CNI plugins are there but iptables is not: bridge tasks cannot publish ports or reach out",
            "apt-get install iptables",
        ),
        (false, _) => check(
            "cni",
            Status::Warn,
            format!("missing {} in {}: only --network none and host tasks can run", missing.join(", "), shown.join(", ")),
            "apt-get install containernetworking-plugins iptables (or give --cni-plugin-dir)",
        ),
    }
}

/// Free space where the agent keeps images and logs (the nearest existing directory).
fn disk(data_dir: &Path) -> Check {
    let mut dir = data_dir;
    while !dir.exists() {
        match dir.parent() {
            Some(p) => dir = p,
            None => break,
        }
    }
    let stat = match nix::sys::statvfs::statvfs(dir) {
        Ok(s) => s,
        Err(e) => return check("disk", Status::Fail, format!("{}: {e}", dir.display()), ""),
    };
    let free = stat.blocks_available() as u64 * stat.fragment_size() as u64;
    let gib = free as f64 / (1u64 << 30) as f64;
    let detail = format!("{gib:.1} GiB free at {}", dir.display());
    if free < 1 << 30 {
        check(
            "disk",
            Status::Fail,
            detail,
            "free space or move the data dir (--data-dir): pulls and container layers need room",
        )
    } else if free < 5 << 30 {
        check("disk", Status::Warn, detail, "images and logs need a few GiB; set image_disk_budget to keep them within what is there")
    } else {
        check("disk", Status::Ok, detail, "")
    }
}

/// The node certificate a joined agent keeps (renewed at two thirds of its life).
fn certificate(data_dir: &Path) -> Check {
    let path = data_dir.join("pki/node.crt");
    let Ok(pem) = std::fs::read(&path) else {
        return check(
            "certificate",
            Status::Skip,
            format!(
                "{} not there (not joined to a TLS controller)",
                path.display()
            ),
            "",
        );
    };
    let not_after = x509_parser::pem::parse_x509_pem(&pem)
        .ok()
        .and_then(|(_, p)| {
            p.parse_x509()
                .ok()
                .map(|c| c.validity().not_after.timestamp())
        });
    let Some(not_after) = not_after else {
        return check(
            "certificate",
            Status::Fail,
            format!("{} is not a PEM certificate", path.display()),
            "join again: skiff agent --join JOIN-STRING",
        );
    };
    let left = not_after - chrono::Utc::now().timestamp();
    let days = left as f64 / 86_400.0;
    if left <= 0 {
        check("certificate", Status::Fail, format!("{} expired {:.1} days ago", path.display(), -days), "the agent could not renew it: remove the data dir's pki and join again with a new join string")
    } else if days < 7.0 {
        check(
            "certificate",
            Status::Warn,
            format!("{} expires in {days:.1} days", path.display()),
            "is the agent running and connected? it renews at two thirds of the certificate's life",
        )
    } else {
        check(
            "certificate",
            Status::Ok,
            format!("{} valid for {days:.0} more days", path.display()),
            "",
        )
    }
}

/// Whether the controller answers its health service, and how far its clock is from ours
/// (its HTTP/2 `date` header: whole seconds).
async fn controller(addr: &str, data_dir: &Path) -> Vec<Check> {
    // A joined agent's data dir has the cluster CA: use it when none is given.
    let ca = data_dir.join("pki/ca.crt");
    if addr.starts_with("https://") && std::env::var_os("SKIFF_CA_FILE").is_none() && ca.exists() {
        std::env::set_var("SKIFF_CA_FILE", &ca);
    }
    let conn = match tokio::time::timeout(Duration::from_secs(10), crate::conn::connect(addr)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return vec![
                check("controller", Status::Fail, format!("{e:#}"), "start the controller, or give its address with --addr / SKIFF_ADDR (and SKIFF_CA_FILE for https)"),
                check("clock", Status::Skip, "no controller to compare with", ""),
            ]
        }
        Err(_) => {
            return vec![
                check("controller", Status::Fail, format!("{addr} did not answer in 10 s"), "check the address and that no firewall drops the port"),
                check("clock", Status::Skip, "no controller to compare with", ""),
            ]
        }
    };
    let mut health = tonic_health::pb::health_client::HealthClient::new(conn);
    let asked = chrono::Utc::now();
    let answer = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await;
    let answered = chrono::Utc::now();
    let answer = match answer {
        Ok(a) => a,
        Err(s) => {
            return vec![
                check(
                    "controller",
                    Status::Fail,
                    format!("{addr}: {}", s.message()),
                    "see the controller's log (journalctl -u skiff-controller)",
                ),
                check("clock", Status::Skip, "no answer to compare with", ""),
            ]
        }
    };
    let serving = answer.get_ref().status
        == tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    let round_trip = (answered - asked).num_milliseconds();
    let mut out = vec![if serving {
        check(
            "controller",
            Status::Ok,
            format!("{addr} is serving ({round_trip} ms round trip)"),
            "",
        )
    } else {
        check(
            "controller",
            Status::Fail,
            format!("{addr} answers but is not serving"),
            "see the controller's log (journalctl -u skiff-controller)",
        )
    }];
    let date = answer
        .metadata()
        .get("date")
        .and_then(|v| v.to_str().ok())
        .and_then(|d| chrono::DateTime::parse_from_rfc2822(d).ok());
    out.push(match date {
        None => check("clock", Status::Skip, "the controller's answer carried no date", ""),
        Some(theirs) => {
            // Their second was read somewhere in the round trip; compare with its middle.
            let ours = asked + (answered - asked) / 2;
            let skew = (ours.timestamp_millis() - theirs.timestamp_millis()).abs() as f64 / 1000.0;
            if skew <= 2.0 {
                check("clock", Status::Ok, format!("{skew:.1} s from the controller's (its date header counts whole seconds)"), "")
            } else {
                check("clock", Status::Warn, format!("{skew:.0} s from the controller's"), "run time sync on both (chrony or systemd-timesyncd): node timeouts and token lifetimes are measured by the clocks")
            }
        }
    });
    out
}
