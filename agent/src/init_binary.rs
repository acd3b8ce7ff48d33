//! skiff-init, embedded: the static PID 1 built from `agent/init/init.rs` by `build.rs`. The
//! agent writes it into its data dir at start (only when the bytes differ, so a running
//! container's bind mount is never rewritten under it) and bundles bind-mount it read-only at
//! [`IN_CONTAINER`] for containers that ask for an init.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The executable's bytes.
pub const BYTES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/skiff-init"));

/// Where containers see it. /dev is a tmpfs of the container's own, so nothing is created
/// in the image's filesystem (Docker uses /sbin/docker-init, which writes into it).
pub const IN_CONTAINER: &str = "/dev/init";

/// The file on the node, under the agent's data dir.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("bin").join("skiff-init")
}

/// Writes the embedded init to [`path`] unless the same bytes are already there: written
/// under a temporary name and renamed, so a container never sees half a file.
pub fn install(data_dir: &Path) -> std::io::Result<PathBuf> {
    let dest = path(data_dir);
    if std::fs::read(&dest).is_ok_and(|b| b == BYTES) {
        return Ok(dest);
    }
    let dir = dest.parent().expect("bin/ has a parent");
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(BYTES)?;
    tmp.as_file().sync_all()?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o755))?;
    tmp.persist(&dest).map_err(|e| e.error)?;
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_init_is_a_static_executable() {
        // ELF64, and no PT_INTERP program header (no dynamic loader): it must run in images
        // without a C library.
        assert_eq!(&BYTES[..4], b"\x7fELF");
        assert_eq!(BYTES[4], 2, "ELF64");
        let u16_at = |o: usize| u16::from_le_bytes([BYTES[o], BYTES[o + 1]]) as usize;
        let phoff = u64::from_le_bytes(BYTES[0x20..0x28].try_into().unwrap()) as usize;
        let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
        assert!(phnum > 0);
        for i in 0..phnum {
            let at = phoff + i * phentsize;
            let p_type = u32::from_le_bytes(BYTES[at..at + 4].try_into().unwrap());
            assert_ne!(p_type, 3, "skiff-init has a PT_INTERP: it is not static");
        }
    }

    #[test]
    fn install_writes_once_and_keeps_an_identical_file() {
        let d = tempfile::tempdir().unwrap();
        let p = install(d.path()).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), BYTES);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&p).unwrap());
        install(d.path()).unwrap();
        let again = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&p).unwrap());
        assert_eq!(inode, again, "an identical init is not rewritten");
    }

    #[test]
    fn the_init_forwards_sigterm_and_exits_with_the_commands_status() {
        let d = tempfile::tempdir().unwrap();
        let init = install(d.path()).unwrap();
        let code = std::process::Command::new(&init)
            .args(["--", "sh", "-c", "exit 7"])
            .status()
            .unwrap();
        assert_eq!(code.code(), Some(7));
        // `sleep` has no handler; the init forwards SIGTERM to it: 128 + 15.
        let mut child = std::process::Command::new(&init)
            .args(["--", "sleep", "30"])
            .spawn()
            .unwrap();
        // Wait until the init has forked sleep (its child) before signalling.
        let pid = child.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .trim()
            .is_empty()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "init never started sleep"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let started = std::time::Instant::now();
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(143));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}
