//! Every container start moves a process into its cgroups (a write to `cgroup.procs`). That
//! takes the kernel's threadgroup lock for writing, and by default the lock makes each such
//! writer wait for an RCU grace period first: 13.7 ms p50 per join measured on this project's
//! machines, a third of a whole `run-task --wait` round trip. runc and every runtime that
//! migrates the container's first process pay it alike.
//!
//! The cgroup2 mount option `favordynmods` (Linux 6.0+) makes joins cheap (0.47 ms) and forks
//! and exits a little dearer. It is a property of the whole host, not of skiff's cgroups, and
//! on some kernels (6.18 here) it stays in effect until reboot, so the agent sets it only when
//! the operator asks (`cgroup_favordynmods`) and otherwise says at start-up what it costs.

use std::io;
use std::path::PathBuf;

use nix::mount::{mount, MsFlags};

use crate::mountinfo::{self, Mount};

/// Whether a cgroup2 mount has `favordynmods` set.
pub fn favors_dynmods(m: &Mount) -> bool {
    m.super_options.iter().any(|o| o == "favordynmods")
}

/// The flags and data of a remount that adds `favordynmods` and keeps everything else as it
/// is: a remount replaces both the mount's flags and the filesystem's options.
pub fn remount_with_favordynmods(m: &Mount) -> (MsFlags, String) {
    let mut flags = MsFlags::MS_REMOUNT;
    for o in &m.mount_options {
        flags |= match o.as_str() {
            "ro" => MsFlags::MS_RDONLY,
            "nosuid" => MsFlags::MS_NOSUID,
            "nodev" => MsFlags::MS_NODEV,
            "noexec" => MsFlags::MS_NOEXEC,
            "relatime" => MsFlags::MS_RELATIME,
            "noatime" => MsFlags::MS_NOATIME,
            "nodiratime" => MsFlags::MS_NODIRATIME,
            _ => MsFlags::empty(),
        };
    }
    let mut data: Vec<&str> = m
        .super_options
        .iter()
        .map(String::as_str)
        .filter(|o| *o != "rw" && *o != "ro")
        .collect();
    data.push("favordynmods");
    (flags, data.join(","))
}

/// The host's cgroup2 mount (of the hierarchy's root, where `favordynmods` belongs):
/// /sys/fs/cgroup on a cgroup v2 host, /sys/fs/cgroup/unified on a hybrid one; None on a host
/// with cgroup v1 only.
pub fn find_cgroup2(mounts: &[Mount]) -> Option<&Mount> {
    let roots: Vec<&Mount> = mounts
        .iter()
        .filter(|m| m.fstype == "cgroup2" && m.root == "/")
        .collect();
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .find_map(|want| roots.iter().find(|m| m.point.as_os_str() == *want).copied())
        .or_else(|| roots.first().copied())
}

/// What the agent found, or did, at start-up.
#[derive(Debug, PartialEq)]
pub enum Favordynmods {
    /// Already set on this host (by the operator, the boot, or an earlier agent).
    On(PathBuf),
    /// Set now, as configured.
    TurnedOn(PathBuf),
    /// Off, and not asked for: every container start waits for a grace period.
    Off(PathBuf),
    /// No cgroup2 mount to set it on (a cgroup v1-only host).
    NoCgroup2,
}

/// Reads the host's state and, if `wanted`, sets `favordynmods` on its cgroup2 mount.
pub fn apply(wanted: bool) -> io::Result<Favordynmods> {
    let mounts = mountinfo::read()?;
    let Some(m) = find_cgroup2(&mounts) else {
        return Ok(Favordynmods::NoCgroup2);
    };
    if favors_dynmods(m) {
        return Ok(Favordynmods::On(m.point.clone()));
    }
    if !wanted {
        return Ok(Favordynmods::Off(m.point.clone()));
    }
    let (flags, data) = remount_with_favordynmods(m);
    mount(
        None::<&str>,
        &m.point,
        None::<&str>,
        flags,
        Some(data.as_str()),
    )
    .map_err(|e| {
        io::Error::other(format!(
            "remounting {} with favordynmods (needs Linux 6.0 or newer): {e}",
            m.point.display()
        ))
    })?;
    Ok(Favordynmods::TurnedOn(m.point.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw
";
    const V2: &str = "\
24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
25 24 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
90 88 0:23 /system.slice /mnt/x\\040y rw,relatime - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn finds_the_hosts_cgroup2_mount_on_v2_and_hybrid_hosts_and_none_on_v1() {
        let (v2, hybrid) = (mountinfo::parse(V2), mountinfo::parse(HYBRID));
        let v2 = find_cgroup2(&v2).unwrap();
        assert_eq!(v2.point, PathBuf::from("/sys/fs/cgroup"));
        assert_eq!(
            v2.super_options,
            ["rw", "nsdelegate", "memory_recursiveprot"]
        );
        let hybrid = find_cgroup2(&hybrid).unwrap();
        assert_eq!(hybrid.point, PathBuf::from("/sys/fs/cgroup/unified"));
        let v1_only: String = HYBRID.lines().take(2).map(|l| format!("{l}\n")).collect();
        assert_eq!(find_cgroup2(&mountinfo::parse(&v1_only)), None);
        // A bind mount of a sub-cgroup is not the hierarchy's root.
        let sub: String = V2.lines().skip(2).collect();
        assert_eq!(find_cgroup2(&mountinfo::parse(&sub)), None);
    }

    #[test]
    fn the_remount_adds_favordynmods_and_keeps_every_other_option() {
        let mounts = mountinfo::parse(V2);
        let v2 = find_cgroup2(&mounts).unwrap();
        assert!(!favors_dynmods(v2));
        let (flags, data) = remount_with_favordynmods(v2);
        assert_eq!(data, "nsdelegate,memory_recursiveprot,favordynmods");
        assert_eq!(
            flags,
            MsFlags::MS_REMOUNT
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC
                | MsFlags::MS_RELATIME
        );
        let on = V2.replace("memory_recursiveprot", "memory_recursiveprot,favordynmods");
        assert!(favors_dynmods(
            find_cgroup2(&mountinfo::parse(&on)).unwrap()
        ));
    }
}
