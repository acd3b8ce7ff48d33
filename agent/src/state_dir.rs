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
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

use crate::mountinfo::{self, Mount};
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
    let busy = mountinfo::read()?
        .iter()
        .any(|m| m.point != dir && m.is_under(dir));
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

/// The scratch dirs a container leaves in the data dir while it runs: the overlay's upper and
/// work dirs, and the rootfs copy where overlayfs is unavailable. Logs are not among them.
const SCRATCH: [&str; 3] = ["upper", "work", "rootfs"];

/// After a reboot the state dir is empty, but the data dir still holds the scratch dirs of the
/// containers that were running then, and nothing would ever release them. Lists those of
/// every task in `tasks_dir` (the data dir's) that `known` does not claim, leaving out any
/// that something is still mounted on or an overlay still uses (a container started by an
/// older build, whose records lived in the data dir), and any container that `live` says
/// still has processes. Logs stay where they are.
pub fn orphan_scratch(
    tasks_dir: &Path,
    known: impl Fn(&str) -> bool,
    live: impl Fn(&str, &str) -> bool,
) -> io::Result<Vec<PathBuf>> {
    let mounts = mountinfo::read()?;
    let mut out = Vec::new();
    let Ok(tasks) = fs::read_dir(tasks_dir) else {
        return Ok(out);
    };
    for task in tasks.flatten() {
        let id = task.file_name().to_string_lossy().into_owned();
        if known(&id) {
            continue;
        }
        // What is cheap first: most tasks' dirs hold only logs, and a node keeps thousands;
        // the mounts and the cgroups are looked at only for a dir with scratch left.
        let mut busy = None;
        for container in fs::read_dir(task.path()).into_iter().flatten().flatten() {
            if !container.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let scratch: Vec<PathBuf> = SCRATCH
                .iter()
                .map(|s| container.path().join(s))
                .filter(|p| p.exists())
                .collect();
            if scratch.is_empty() {
                continue;
            }
            if *busy.get_or_insert_with(|| in_use(&mounts, &task.path())) {
                break;
            }
            let name = container.file_name().to_string_lossy().into_owned();
            if !live(&id, &name) {
                out.extend(scratch);
            }
        }
    }
    Ok(out)
}

/// Whether a mount point lies under `dir`, or a mount's options name a path under it (an
/// overlay's upperdir, workdir or lowerdir).
fn in_use(mounts: &[Mount], dir: &Path) -> bool {
    let under = format!("{}/", dir.display());
    mounts
        .iter()
        .any(|m| m.is_under(dir) || m.super_options.iter().any(|o| o.contains(&under)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_of_unknown_idle_tasks_is_listed_and_logs_and_busy_tasks_are_not() {
        let tmp = tempfile::tempdir().unwrap();
        let tasks = tmp.path().join("tasks");
        for (task, dirs) in [
            ("known", &["upper", "work"][..]),
            ("stale", &["upper", "work", "rootfs"][..]),
            ("logs-only", &[][..]),
        ] {
            let c = tasks.join(task).join("main");
            fs::create_dir_all(&c).unwrap();
            fs::write(c.join("container.log"), "kept").unwrap();
            for d in dirs {
                fs::create_dir_all(c.join(d)).unwrap();
            }
        }
        let mut found = orphan_scratch(&tasks, |id| id == "known", |_, _| false).unwrap();
        found.sort();
        let stale = tasks.join("stale/main");
        assert_eq!(
            found,
            [
                stale.join("rootfs"),
                stale.join("upper"),
                stale.join("work")
            ]
        );

        // A container that still has processes (its cgroup is not empty) keeps its scratch.
        let live = orphan_scratch(
            &tasks,
            |id| id == "known",
            |id, c| id == "stale" && c == "main",
        );
        assert_eq!(live.unwrap(), Vec::<PathBuf>::new());

        // An overlay still using a task's upper dir keeps the task's scratch off the list.
        let info = format!(
            "1 0 0:1 / /somewhere/rootfs rw - overlay overlay rw,lowerdir=/l,upperdir={},workdir=/w\n",
            stale.join("upper").display()
        );
        let info = mountinfo::parse(&info);
        assert!(in_use(&info, &tasks.join("stale")));
        assert!(!in_use(&info, &tasks.join("stal")));
        let under = format!(
            "1 0 0:1 / {} rw - tmpfs tmpfs rw\n",
            stale.join("rootfs").display()
        );
        assert!(in_use(&mountinfo::parse(&under), &tasks.join("stale")));
    }
}
