//! A root filesystem per task container: an overlay mount with the (shared, read-only) image as
//! the lower layer and a per-container upper layer, so tasks never see each other's writes and
//! starting one costs a mount, not a copy. Where overlayfs is unavailable, a copy.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Creates `<dir>/rootfs` over `image_rootfs`. Blocking.
pub fn prepare(image_rootfs: &Path, dir: &Path) -> io::Result<PathBuf> {
    let upper = dir.join("upper");
    let work = dir.join("work");
    let merged = dir.join("rootfs");
    for d in [&upper, &work, &merged] {
        fs::create_dir_all(d)?;
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        image_rootfs.display(),
        upper.display(),
        work.display()
    );
    match mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    ) {
        Ok(()) => Ok(merged),
        Err(errno) => {
            tracing::warn!(error = %errno, "overlay mount failed; copying the image instead");
            let status = std::process::Command::new("cp")
                .arg("-a")
                .arg(format!("{}/.", image_rootfs.display()))
                .arg(&merged)
                .status()?;
            if !status.success() {
                return Err(io::Error::other(format!(
                    "copying {} failed",
                    image_rootfs.display()
                )));
            }
            Ok(merged)
        }
    }
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
