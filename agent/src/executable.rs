//! Why a container's command could not be found, told precisely: when `sh` is "not found"
//! although `/bin/sh` is visibly in the image, it is usually a symlink whose target does not
//! exist inside the container — an absolute link to a host path, as `busybox --install -s`
//! writes them. Symlinks are resolved inside the rootfs (never on the host), the way the
//! kernel resolves them in the container.

use std::path::{Component, Path, PathBuf};

/// How many links one lookup follows before giving up (the kernel's limit is 40).
const MAX_LINKS: usize = 40;

/// What one path inside the rootfs turns out to be.
#[derive(Debug, PartialEq)]
enum Found {
    /// Something exists there (after following links).
    Exists,
    Missing,
    /// A symlink (at `link`, pointing to `target`) whose target does not exist.
    Dangling {
        link: String,
        target: String,
    },
}

/// Resolves `path` (absolute, as the container sees it) inside `rootfs`.
fn resolve(rootfs: &Path, path: &str) -> Found {
    let mut pending: Vec<String> = components(path);
    pending.reverse();
    let mut current = PathBuf::from("/");
    let mut links = 0;
    let mut first_link: Option<(String, String)> = None;
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "." => continue,
            ".." => {
                current.pop();
                continue;
            }
            _ => {}
        }
        let candidate = current.join(&part);
        let on_host = rootfs.join(candidate.strip_prefix("/").unwrap_or(&candidate));
        let Ok(meta) = std::fs::symlink_metadata(&on_host) else {
            return match first_link {
                Some((link, target)) => Found::Dangling { link, target },
                None => Found::Missing,
            };
        };
        if meta.file_type().is_symlink() {
            links += 1;
            if links > MAX_LINKS {
                return Found::Missing;
            }
            let Ok(target) = std::fs::read_link(&on_host) else {
                return Found::Missing;
            };
            let target_text = target.to_string_lossy().into_owned();
            first_link.get_or_insert((candidate.display().to_string(), target_text.clone()));
            let mut next = components(&target_text);
            next.reverse();
            pending.extend(next);
            if target.is_absolute() {
                current = PathBuf::from("/");
            }
        } else {
            current = candidate;
        }
    }
    Found::Exists
}

fn components(path: &str) -> Vec<String> {
    Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

/// Explains why `program` cannot be executed in the container: only when it is (or every
/// `PATH` candidate for it is) a dangling symlink. None when there is nothing more to say.
pub fn explain_missing(rootfs: &Path, program: &str, path_env: &str, cwd: &str) -> Option<String> {
    let candidates: Vec<String> = if program.contains('/') {
        let abs = if program.starts_with('/') {
            program.to_string()
        } else {
            format!("{}/{program}", cwd.trim_end_matches('/'))
        };
        vec![abs]
    } else {
        path_env
            .split(':')
            .filter(|d| d.starts_with('/'))
            .map(|d| format!("{}/{program}", d.trim_end_matches('/')))
            .collect()
    };
    let mut dangling = None;
    for c in &candidates {
        match resolve(rootfs, c) {
            Found::Exists => return None,
            Found::Dangling { link, target } => {
                dangling.get_or_insert((c.clone(), link, target));
            }
            Found::Missing => {}
        }
    }
    let (path, link, target) = dangling?;
    let via = if link == path {
        String::new()
    } else {
        format!(" (through {link})")
    };
    Some(format!(
        "executable {program:?}: {path} is a symlink{via} to {target}, which does not exist inside the container{}",
        if target.starts_with('/') {
            " (an absolute link resolves in the container's own filesystem, not the host's; `busybox --install -s` on the host writes such links — make them relative, or run the install inside the rootfs with chroot)"
        } else {
            ""
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_dangling_absolute_link_is_named_with_its_target() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("bin")).unwrap();
        symlink("/usr/bin/busybox", root.path().join("bin/sh")).unwrap();
        let why = explain_missing(root.path(), "sh", "/usr/local/bin:/usr/bin:/bin", "/").unwrap();
        assert!(
            why.contains("/bin/sh is a symlink to /usr/bin/busybox"),
            "{why}"
        );
        assert!(why.contains("does not exist inside the container"), "{why}");
        assert!(why.contains("busybox --install -s"), "{why}");
    }

    #[test]
    fn links_that_resolve_inside_the_rootfs_need_no_explanation() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("bin")).unwrap();
        std::fs::write(root.path().join("bin/busybox"), b"x").unwrap();
        symlink("busybox", root.path().join("bin/sh")).unwrap();
        symlink("/bin/busybox", root.path().join("bin/ls")).unwrap();
        // /usr/bin → /bin, as in merged-/usr images.
        std::fs::create_dir_all(root.path().join("usr")).unwrap();
        symlink("/bin", root.path().join("usr/bin")).unwrap();
        for p in ["sh", "ls", "/usr/bin/sh", "./bin/ls"] {
            assert_eq!(explain_missing(root.path(), p, "/bin", "/"), None, "{p}");
        }
        // Simply missing: libcontainer's own "not found" says enough.
        assert_eq!(explain_missing(root.path(), "nope", "/bin", "/"), None);
    }

    #[test]
    fn a_link_never_resolves_on_the_host() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("bin")).unwrap();
        // /bin/true exists on the host, not in this rootfs.
        symlink("/bin/true", root.path().join("bin/t")).unwrap();
        assert!(explain_missing(root.path(), "/bin/t", "", "/").is_some());
        symlink("../../../../../../bin/true", root.path().join("bin/up")).unwrap();
        assert!(explain_missing(root.path(), "up", "/bin", "/").is_some());
    }
}
