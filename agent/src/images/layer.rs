//! Layers on disk. Each layer is unpacked once into a directory of its own in overlayfs's
//! format (an OCI whiteout `.wh.NAME` becomes a 0/0 character device, an opaque marker
//! `.wh..wh..opq` becomes the `trusted.overlay.opaque` xattr), so a task's rootfs is one
//! overlay mount over the shared layer directories. [`flatten`] merges the same directories by
//! copying, for kernels without overlayfs.

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Opens a layer blob, uncompressing gzip; the format is told by its first bytes, not by the
/// manifest's media type (registries and tools disagree on those).
pub fn open_layer(path: &Path) -> io::Result<Box<dyn Read>> {
    let mut r = BufReader::new(File::open(path)?);
    let head = r.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::GzDecoder::new(r)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "zstd-compressed layers are not supported; use gzip or uncompressed layers",
        ))
    } else {
        Ok(Box::new(r))
    }
}

/// Unpacks one layer tar into `dest` (which should be empty) in overlayfs's format.
pub fn unpack(reader: impl Read, dest: &Path) -> io::Result<()> {
    fs::create_dir_all(dest)?;
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_overwrite(true);
    archive.set_unpack_xattrs(true);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let rel: PathBuf = entry
            .path()?
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        let Some(name) = rel.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue; // the layer's root entry
        };
        let parent = dest.join(rel.parent().unwrap_or(Path::new("")));
        if name == ".wh..wh..opq" {
            fs::create_dir_all(&parent)?;
            set_xattr(&parent, OPAQUE_XATTR, b"y")?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            fs::create_dir_all(&parent)?;
            let target = parent.join(hidden);
            remove_any(&target)?;
            nix::sys::stat::mknod(
                &target,
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::empty(),
                0,
            )
            .map_err(io::Error::from)?;
            continue;
        }
        let target = dest.join(&rel);
        if let Ok(meta) = fs::symlink_metadata(&target) {
            if meta.is_dir() != entry.header().entry_type().is_dir() || meta.is_symlink() {
                remove_any(&target)?;
            }
        }
        entry.unpack_in(dest)?;
    }
    Ok(())
}

/// Copies overlay-format layer directories, lowest first, into `dest` as one tree.
pub fn flatten(layers: &[PathBuf], dest: &Path) -> io::Result<()> {
    fs::create_dir_all(dest)?;
    for layer in layers {
        merge(layer, dest)?;
    }
    Ok(())
}

fn merge(src: &Path, dst: &Path) -> io::Result<()> {
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let s = entry.path();
        let d = dst.join(entry.file_name());
        let meta = fs::symlink_metadata(&s)?;
        let ft = meta.file_type();
        if ft.is_char_device() && meta.rdev() == 0 {
            remove_any(&d)?; // a whiteout
            continue;
        }
        if ft.is_dir() {
            let replace = fs::symlink_metadata(&d).is_ok_and(|m| !m.is_dir());
            if replace || get_xattr(&s, OPAQUE_XATTR).as_deref() == Some(b"y") {
                remove_any(&d)?;
            }
            if !d.exists() {
                fs::create_dir(&d)?;
            }
            fs::set_permissions(&d, fs::Permissions::from_mode(meta.mode()))?;
            std::os::unix::fs::lchown(&d, Some(meta.uid()), Some(meta.gid()))?;
            merge(&s, &d)?;
            continue;
        }
        remove_any(&d)?;
        if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&s)?, &d)?;
        } else if ft.is_file() {
            fs::copy(&s, &d)?;
            fs::set_permissions(&d, fs::Permissions::from_mode(meta.mode()))?;
        } else {
            nix::sys::stat::mknod(
                &d,
                nix::sys::stat::SFlag::from_bits_truncate(meta.mode() & libc::S_IFMT),
                nix::sys::stat::Mode::from_bits_truncate(meta.mode() & 0o7777),
                meta.rdev(),
            )
            .map_err(io::Error::from)?;
        }
        std::os::unix::fs::lchown(&d, Some(meta.uid()), Some(meta.gid()))?;
    }
    Ok(())
}

pub fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Bytes used by the files under `path` (apparent sizes; hard links counted once per path).
pub fn disk_usage(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    fs::read_dir(path).map_or(0, |rd| {
        rd.flatten().map(|e| disk_usage(&e.path())).sum::<u64>()
    })
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::ErrorKind::InvalidInput.into())
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let p = c_path(path)?;
    let n = CString::new(name).expect("xattr names have no NUL");
    // SAFETY: valid NUL-terminated strings and a value buffer of the given length.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = c_path(path).ok()?;
    let n = CString::new(name).ok()?;
    let mut buf = [0u8; 16];
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let rc = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (rc >= 0).then(|| buf[..rc as usize].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, content) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            match content {
                Some(data) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(data.len() as u64);
                    h.set_mode(0o644);
                    b.append_data(&mut h, path, *data).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    b.append_data(&mut h, path, &[][..]).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    fn two_layers(dir: &Path) -> Vec<PathBuf> {
        let lower = tar_of(&[
            ("etc/", None),
            ("etc/a", Some(b"a")),
            ("etc/b", Some(b"b")),
            ("var/", None),
            ("var/old", Some(b"old")),
        ]);
        let upper = tar_of(&[
            ("etc/.wh.a", Some(b"")),
            ("etc/c", Some(b"c")),
            ("var/", None),
            ("var/.wh..wh..opq", Some(b"")),
            ("var/new", Some(b"new")),
        ]);
        let (l1, l2) = (dir.join("l1"), dir.join("l2"));
        unpack(&lower[..], &l1).unwrap();
        unpack(&upper[..], &l2).unwrap();
        vec![l1, l2]
    }

    fn assert_merged(root: &Path) {
        assert!(!root.join("etc/a").exists(), "whited-out file is hidden");
        assert_eq!(fs::read(root.join("etc/b")).unwrap(), b"b");
        assert_eq!(fs::read(root.join("etc/c")).unwrap(), b"c");
        assert!(
            !root.join("var/old").exists(),
            "opaque dir hides the lower one"
        );
        assert_eq!(fs::read(root.join("var/new")).unwrap(), b"new");
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts() {
        let dir = tempfile::tempdir().unwrap();
        let layers = two_layers(dir.path());
        let wh = fs::symlink_metadata(layers[1].join("etc/a")).unwrap();
        assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
        assert_eq!(
            get_xattr(&layers[1].join("var"), OPAQUE_XATTR).as_deref(),
            Some(&b"y"[..])
        );
        assert!(!layers[1].join("etc/.wh.a").exists());
    }

    #[test]
    fn flattened_layers_honour_whiteouts_and_opaque_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let layers = two_layers(dir.path());
        let root = dir.path().join("flat");
        flatten(&layers, &root).unwrap();
        assert_merged(&root);
    }

    #[test]
    fn an_overlay_mount_of_the_layers_honours_whiteouts_and_opaque_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let layers = two_layers(dir.path());
        let task = dir.path().join("task");
        let scratch = dir.path().join("scratch");
        let root = crate::rootfs::prepare(&layers, &task, &scratch).unwrap();
        assert_merged(&root);
        crate::rootfs::release(&task, &scratch).unwrap();
        assert!(!task.join("rootfs").exists() && !scratch.join("upper").exists());
    }

    #[test]
    fn files_without_parent_entries_unpack() {
        let dir = tempfile::tempdir().unwrap();
        let t = tar_of(&[("opt/deep/payload.bin", Some(b"x"))]);
        let r = unpack(&t[..], &dir.path().join("l"));
        if let Err(e) = &r {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(x) = src {
                s += &format!(": {x}");
                src = x.source();
            }
            panic!("{s}");
        }
        assert_eq!(
            fs::read(dir.path().join("l/opt/deep/payload.bin")).unwrap(),
            b"x"
        );
    }

    #[test]
    fn zstd_layers_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("blob");
        fs::write(&p, [0x28, 0xb5, 0x2f, 0xfd, 0, 0]).unwrap();
        let err = open_layer(&p).err().unwrap();
        assert!(err.to_string().contains("zstd"), "{err}");
    }
}
