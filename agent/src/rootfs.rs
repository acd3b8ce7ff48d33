//! A root filesystem per task container: an overlay mount with the image's (shared, read-only)
//! layer directories as the lower layers and a per-container upper layer, so tasks never see
//! each other's writes and starting one costs a mount, not a copy. Where overlayfs is
//! unavailable (or the layer list is too long for one mount), the layers are copied instead.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// The kernel takes at most one page of mount options.
const MAX_MOUNT_OPTIONS: usize = 4000;

/// Creates `<dir>/rootfs` from `layers` (lowest first). Blocking.
pub fn prepare(layers: &[PathBuf], dir: &Path) -> io::Result<PathBuf> {
    let upper = dir.join("upper");
    let work = dir.join("work");
    let merged = dir.join("rootfs");
    for d in [&upper, &work, &merged] {
        fs::create_dir_all(d)?;
    }
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|l| l.display().to_string())
        .collect();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    let mountable = !layers.is_empty()
        && opts.len() + ",volatile".len() <= MAX_MOUNT_OPTIONS
        && lower.iter().all(|l| !l.contains([':', ',']));
    if mountable {
        // `volatile` (Linux 5.10+) skips the sync of the upper layer on unmount: a task's
        // writes do not outlive it, so syncing them only slows down every stop.
        let volatile = format!("{opts},volatile");
        let mut last = None;
        for o in [volatile.as_str(), opts.as_str()] {
            match mount(
                Some("overlay"),
                &merged,
                Some("overlay"),
                MsFlags::empty(),
                Some(o),
            ) {
                Ok(()) => return Ok(merged),
                Err(errno) => last = Some(errno),
            }
        }
        if let Some(errno) = last {
            tracing::warn!(error = %errno, "overlay mount failed; copying the image instead");
        }
    }
    crate::images::layer::flatten(layers, &merged)?;
    Ok(merged)
}

/// Unmounts and removes a container's rootfs and its upper layer. Idempotent. Blocking.
pub fn release(dir: &Path) -> io::Result<()> {
    let merged = dir.join("rootfs");
    if merged.exists() {
        // Not mounted (copy fallback, or already released) is fine.
        let _ = umount2(&merged, MntFlags::MNT_DETACH);
    }
    // A volatile overlay leaves work/incompat/volatile behind; it goes with `work`.
    for d in ["rootfs", "upper", "work"] {
        match fs::remove_dir_all(dir.join(d)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}
