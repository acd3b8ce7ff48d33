//! /proc/self/mountinfo, parsed once for everything in the agent that asks what is mounted:
//! cgroup hierarchies, overlays and their layers, mounts under a task's directories.

use std::io;
use std::path::{Path, PathBuf};

/// One line of mountinfo.
#[derive(Clone, Debug, PartialEq)]
pub struct Mount {
    /// The path inside the filesystem that is mounted ("/" for a filesystem's root).
    pub root: String,
    pub point: PathBuf,
    /// Per-mount options (rw, nosuid, nodev, noexec, relatime, ...).
    pub mount_options: Vec<String>,
    pub fstype: String,
    /// Superblock options (rw, nsdelegate, lowerdir=..., upperdir=..., ...), unescaped.
    pub super_options: Vec<String>,
}

impl Mount {
    /// Whether the mount point is `dir` or lies under it.
    pub fn is_under(&self, dir: &Path) -> bool {
        self.point.starts_with(dir)
    }

    /// The value of a superblock option `key=value`.
    pub fn option(&self, key: &str) -> Option<&str> {
        self.super_options
            .iter()
            .find_map(|o| o.strip_prefix(key)?.strip_prefix('='))
    }
}

/// This process's mounts.
pub fn read() -> io::Result<Vec<Mount>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// The mounts in a mountinfo text; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mount> {
    // ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS
    let (left, right) = line.split_once(" - ")?;
    let left: Vec<&str> = left.split_whitespace().collect();
    let mut right = right.split_whitespace();
    let fstype = right.next()?.to_string();
    let super_options = right.nth(1).unwrap_or("");
    let split = |s: &str| s.split(',').map(unescape).collect();
    Some(Mount {
        root: unescape(left.get(3)?),
        point: PathBuf::from(unescape(left.get(4)?)),
        mount_options: split(left.get(5)?),
        fstype,
        super_options: split(super_options),
    })
}

/// mountinfo writes space, tab, newline and backslash as \ooo.
pub fn unescape(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_into_points_options_and_type() {
        let text = "\
25 24 0:23 / /sys/fs/cgroup rw,nosuid,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
90 88 0:50 / /mnt/x\\040y rw - overlay overlay rw,lowerdir=/l1:/l2,upperdir=/u\\040v,workdir=/w
not a mountinfo line
";
        let m = parse(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].point, PathBuf::from("/sys/fs/cgroup"));
        assert_eq!(m[0].root, "/");
        assert_eq!(m[0].fstype, "cgroup2");
        assert_eq!(m[0].mount_options, ["rw", "nosuid", "relatime"]);
        assert_eq!(m[0].super_options, ["rw", "nsdelegate"]);
        assert_eq!(m[1].point, PathBuf::from("/mnt/x y"));
        assert_eq!(m[1].option("lowerdir"), Some("/l1:/l2"));
        assert_eq!(m[1].option("upperdir"), Some("/u v"));
        assert!(m[1].is_under(Path::new("/mnt")));
        assert!(!m[1].is_under(Path::new("/mn")));
    }

    #[test]
    fn escaped_characters_are_decoded() {
        assert_eq!(unescape("/mnt/x\\040y"), "/mnt/x y");
        assert_eq!(unescape("/a\\134b"), "/a\\b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/trailing\\04"), "/trailing\\04");
    }
}
