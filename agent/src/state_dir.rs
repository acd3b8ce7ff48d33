//! The agent's per-boot runtime state — task records and, per container, the bundle, the shim's
//! files, the rootfs mountpoint, and libcontainer's state — lives apart from its data dir, on a
//! tmpfs, as runc keeps /run/runc and containerd /run/containerd. It must survive an agent
//! restart (that is how running containers are re-adopted), not a reboot (nothing it
//! describes survives one). Off the disk it is also faster: a container start creates and
//! deletes a few dozen small files, and on a disk filesystem that churn can cost more than the
//! start itself (ext4 without a journal scans recently deleted inodes on every allocation;
//! measured in docs/benchmarks.md).

use std::fs;
use std::io;
use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sys::statfs::{statfs, FsType, TMPFS_MAGIC};

/// ramfs (no constant in nix): also memory-backed.
const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);

/// The tmpfs' limit: records and bundles take a few KiB per container.
const TMPFS_OPTIONS: &str = "mode=0700,size=256m";

/// Makes `dir` a tmpfs unless it is on one already (a restarted agent finds its own mount;
/// a state dir under a tmpfs /run needs none). Returns whether it mounted one now.
pub fn ensure_tmpfs(dir: &Path) -> io::Result<bool> {
    fs::create_dir_all(dir)?;
    let fs_type = statfs(dir).map_err(io::Error::from)?.filesystem_type();
    if fs_type == TMPFS_MAGIC || fs_type == RAMFS_MAGIC {
        return Ok(false);
    }
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(TMPFS_OPTIONS),
    )
    .map_err(|e| io::Error::other(format!("mounting a tmpfs on {}: {e}", dir.display())))?;
    Ok(true)
}

/// Removes a finished task's runtime dir, unless something is still mounted under it (a
/// rootfs or secrets tmpfs whose release failed): removing through a mount would delete
/// what is mounted there.
pub fn remove_task_dir(dir: &Path) -> io::Result<()> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    let prefix = format!("{}/", dir.display());
    let busy = mountinfo
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .any(|point| point.starts_with(&prefix));
    if busy {
        return Err(io::Error::other(format!(
            "{} still has mounts under it; left in place",
            dir.display()
        )));
    }
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
