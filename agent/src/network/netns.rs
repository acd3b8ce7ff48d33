//! Named network namespaces: a task's namespace is held by a bind mount of its nsfs file onto
//! a file of its own (as `ip netns add` does), so it outlives every container of the task, the
//! containers join it by path, and the CNI plugins configure it by path.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

/// Creates the namespace file `path` with a new, empty network namespace behind it; a file
/// that already holds one is left as it is.
pub fn create(path: &Path) -> io::Result<()> {
    if is_held(path) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::File::create(path)?;
    let target = path.to_path_buf();
    // A thread of its own enters the new namespace and ends: no other work ever runs in it.
    std::thread::spawn(move || -> io::Result<()> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(io::Error::from)
    })
    .join()
    .map_err(|_| io::Error::other("the namespace thread panicked"))?
    .inspect_err(|_| {
        let _ = fs::remove_file(path);
    })
}

/// Whether `path` holds a namespace (an nsfs mount), not just an empty file.
pub fn is_held(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == NSFS_MAGIC)
        .unwrap_or(false)
}

/// Whether no TCP or UDP socket is left in the namespace file `path` (none listening, none
/// connected, none in TIME_WAIT): a namespace its task has left in the state it was made in,
/// since an unprivileged container cannot change its interfaces, addresses or routes.
pub fn is_quiet(path: &Path) -> bool {
    let Ok(file) = fs::File::open(path) else {
        return false;
    };
    std::thread::spawn(move || {
        use std::os::fd::AsFd;
        if nix::sched::setns(file.as_fd(), CloneFlags::CLONE_NEWNET).is_err() {
            return false;
        }
        ["tcp", "tcp6", "udp", "udp6"].iter().all(|table| {
            fs::read_to_string(format!("/proc/thread-self/net/{table}"))
                .map(|t| t.lines().skip(1).all(|l| l.trim().is_empty()))
                .unwrap_or(false)
        })
    })
    .join()
    .unwrap_or(false)
}

/// nsfs (no constant in nix).
const NSFS_MAGIC: nix::sys::statfs::FsType = nix::sys::statfs::FsType(0x6e73_6673);

/// Lets go of the namespace file `path` (the namespace ends when nothing else holds it) and
/// removes it. Nothing there is not an error.
pub fn remove(path: &Path) -> io::Result<()> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(io::Error::from(e)),
    }
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The namespace files in `dir`, by name.
pub fn list(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_is_created_held_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("netns").join("t1");
        create(&path).unwrap();
        assert!(is_held(&path));
        // Its own namespace: not this process's.
        let own = fs::metadata("/proc/self/ns/net").unwrap();
        let held = fs::metadata(&path).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_ne!(own.ino(), held.ino());
        // Creating it again keeps the same namespace.
        create(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().ino(), held.ino());
        assert_eq!(list(&dir.path().join("netns")).len(), 1);
        assert!(is_quiet(&path), "a new namespace has no sockets");
        remove(&path).unwrap();
        assert!(!path.exists());
        remove(&path).unwrap();
    }
}
