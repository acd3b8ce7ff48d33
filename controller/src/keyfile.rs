//! Key and token files: written whole (temporary file, fsync, rename) with mode 0600. A leaf:
//! the CA, the sealing key, the task-token key and the bootstrap admin token all use it, and it
//! uses none of them.

use std::path::{Path, PathBuf};

/// Writes a secret to a new file with mode 0600 (replacing any old one).
pub fn write_secret(path: &Path, secret: &str) -> std::io::Result<()> {
    write_secret_bytes(path, secret.as_bytes())
}

/// [`write_secret`] for bytes.
pub fn write_secret_bytes(path: &Path, secret: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A name of its own per writer (with_extension would cut "127.0.0.1_7400" at its dots).
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(secret)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// A key file's bytes; on first use, 32 random bytes written with mode 0600.
pub fn read_or_create_key(path: &Path) -> std::io::Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            use std::io::Read;
            std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
            write_secret_bytes(path, &key)?;
            Ok(key.to_vec())
        }
        Err(e) => Err(e),
    }
}
