//! Test images made on this machine: a rootfs from the static busybox (Debian's busybox-static,
//! which the test command installs), and OCI image layouts built from it.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "env", "sleep", "true", "false", "ls", "hostname", "head", "tr", "id",
    "wc", "grep", "ps", "mkdir", "rm", "touch", "mount", "kill", "test", "[", "printf", "seq",
    "dd", "yes", "stat", "pwd", "nproc", "unshare", "insmod",
];

/// Where the static busybox is (`SKIFF_TEST_BUSYBOX` overrides).
pub fn busybox() -> PathBuf {
    let p = std::env::var_os("SKIFF_TEST_BUSYBOX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/bin/busybox"));
    assert!(
        p.exists(),
        "{} is missing: the test command installs Debian's busybox-static",
        p.display()
    );
    p
}

/// A busybox root filesystem in `dir`.
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    // Asked again while containers run from this dir (it is their image): a file rewritten in
    // place under a running busybox killed it with SIGBUS. So a file that is already right is
    // left alone, and one that is not is replaced whole (a new file renamed over it).
    let busybox_bytes = fs::read(busybox()).unwrap();
    put_file(&dir.join("bin/busybox"), &busybox_bytes, 0o755);
    for a in APPLETS {
        let _ = symlink("busybox", dir.join("bin").join(a));
    }
    put_file(
        &dir.join("etc/passwd"),
        b"root:x:0:0:root:/root:/bin/sh\n",
        0o644,
    );
    put_file(&dir.join("etc/group"), b"root:x:0:\n", 0o644);
    dir.to_path_buf()
}

/// Makes `path` hold `bytes` (mode `mode`) unless it does already; never rewrites it in place.
fn put_file(path: &Path, bytes: &[u8], mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    if fs::read(path).is_ok_and(|b| b == bytes) {
        return;
    }
    static TMP: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = TMP.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    fs::write(&tmp, bytes).unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).unwrap();
    fs::rename(&tmp, path).unwrap();
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn put_blob(layout: &Path, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    let path = layout.join("blobs/sha256").join(&digest["sha256:".len()..]);
    fs::write(path, bytes).unwrap();
    digest
}

/// A gzipped tar layer of everything under `root`.
pub fn layer_of(root: &Path) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    b.follow_symlinks(false);
    b.append_dir_all(".", root).unwrap();
    b.into_inner().unwrap().finish().unwrap()
}

/// An uncompressed tar layer from (path, contents) pairs; `None` contents = whiteout marker.
pub fn layer_with(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// The config part of an OCI image.
pub struct ImageConfig<'a> {
    pub entrypoint: &'a [&'a str],
    pub cmd: &'a [&'a str],
    pub env: &'a [&'a str],
    pub working_dir: &'a str,
}

/// Writes an OCI image layout at `layout` with the given layers (gzip if `gz`), tagged `tag`.
pub fn oci_layout(
    layout: &Path,
    layers: &[(Vec<u8>, bool)],
    config: &ImageConfig,
    tag: &str,
) -> PathBuf {
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let mut layer_descs = Vec::new();
    let mut diff_ids = Vec::new();
    for (bytes, gz) in layers {
        let digest = put_blob(layout, bytes);
        let diff = if *gz {
            let mut raw = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut raw)
                .unwrap();
            sha256(&raw)
        } else {
            digest.clone()
        };
        diff_ids.push(diff);
        let mt = if *gz {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        } else {
            "application/vnd.oci.image.layer.v1.tar"
        };
        layer_descs
            .push(serde_json::json!({"mediaType": mt, "digest": digest, "size": bytes.len()}));
    }
    let cfg = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": config.entrypoint, "Cmd": config.cmd, "Env": config.env, "WorkingDir": config.working_dir},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let cfg_bytes = serde_json::to_vec(&cfg).unwrap();
    let cfg_digest = put_blob(layout, &cfg_bytes);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg_digest, "size": cfg_bytes.len()},
        "layers": layer_descs,
    });
    let m_bytes = serde_json::to_vec(&manifest).unwrap();
    let m_digest = put_blob(layout, &m_bytes);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": m_digest, "size": m_bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag}}],
    });
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    layout.to_path_buf()
}
