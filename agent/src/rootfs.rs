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

/// Mounts `<runtime>/rootfs` from `layers` (lowest first), its upper layer and work dir in
/// `scratch` (on disk: a container's writes can be large). Where overlayfs cannot be used the
/// layers are copied to `<scratch>/rootfs` instead, which is returned. Blocking.
pub fn prepare(layers: &[PathBuf], runtime: &Path, scratch: &Path) -> io::Result<PathBuf> {
    let upper = scratch.join("upper");
    let work = scratch.join("work");
    let merged = runtime.join("rootfs");
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
    let copy = scratch.join("rootfs");
    crate::images::layer::flatten(layers, &copy)?;
    Ok(copy)
}

/// Puts a container's secrets where it gets them: env vars into `env`, files onto a tmpfs of
/// their own at `<dir>/secrets` (never the node's disk), returned as (file, container path)
/// for read-only bind mounts. With any secret at all, the tmpfs is there (the container's
/// bundle goes on it too, since its spec carries the env). Blocking.
pub fn place_secrets(
    dir: &Path,
    secrets: &[crate::spec::SecretValue],
    env: &mut Vec<(String, String)>,
) -> io::Result<Vec<(PathBuf, String)>> {
    let mut files = Vec::new();
    let wanted: usize = secrets.iter().map(|s| s.value.len() + 4096).sum();
    if wanted > 0 {
        let store = dir.join("secrets");
        fs::create_dir_all(&store)?;
        let _ = umount2(&store, MntFlags::MNT_DETACH);
        // Room for the files and the bundle's config.json.
        let opts = format!("size={},mode=0700", wanted + (1 << 20));
        mount(
            Some("tmpfs"),
            &store,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(opts.as_str()),
        )
        .map_err(|e| io::Error::other(format!("tmpfs for secrets: {e}")))?;
    }
    for (i, s) in secrets.iter().enumerate() {
        if s.file.is_empty() {
            let value = String::from_utf8(s.value.clone()).map_err(|_| {
                io::Error::other(format!(
                    "the secret for {} is not UTF-8 text; deliver it as a file",
                    s.name
                ))
            })?;
            env.push((s.name.clone(), value));
        } else {
            use std::os::unix::fs::OpenOptionsExt;
            let path = dir.join("secrets").join(i.to_string());
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o444)
                .open(&path)?;
            io::Write::write_all(&mut f, &s.value)?;
            files.push((path, s.file.clone()));
        }
    }
    Ok(files)
}

/// Unmounts and removes a container's rootfs (and secrets) from `runtime`, and its upper
/// layer, work dir or copied rootfs from `scratch`. Idempotent. Blocking.
pub fn release(runtime: &Path, scratch: &Path) -> io::Result<()> {
    for mounted in ["rootfs", "secrets"] {
        let p = runtime.join(mounted);
        if p.exists() {
            // Not mounted (already released) is fine.
            let _ = umount2(&p, MntFlags::MNT_DETACH);
        }
    }
    // A volatile overlay leaves work/incompat/volatile behind; it goes with `work`.
    let dirs = [
        runtime.join("rootfs"),
        runtime.join("secrets"),
        scratch.join("upper"),
        scratch.join("work"),
        scratch.join("rootfs"),
    ];
    for d in dirs {
        match fs::remove_dir_all(d) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}
