//! What a container uses, read from its cgroup: CPU time, memory (the working set, as
//! cAdvisor and the kubelet count it: usage less the page cache the kernel can drop at once)
//! and its limit, and OOM kills. Works on cgroup v1 (the `cpuacct` and `memory`
//! hierarchies) and v2 (one hierarchy), whichever holds the container.

use std::fs;
use std::path::Path;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Usage {
    pub cpu_seconds: f64,
    pub memory_working_set_bytes: u64,
    /// None without a limit.
    pub memory_limit_bytes: Option<u64>,
    pub oom_kills: u64,
}

/// A container's usage, or None when it has no cgroup on this host (it is gone).
pub fn read(cgroup_path: &str) -> Option<Usage> {
    let rel = cgroup_path.trim_start_matches('/');
    let mut usage = Usage::default();
    let mut found = false;
    for root in crate::runtime::cgroup_mounts() {
        let dir = root.join(rel);
        if !dir.is_dir() {
            continue;
        }
        found = true;
        read_dir_into(&dir, &mut usage);
    }
    if !found {
        return None;
    }
    usage.oom_kills = crate::shim::oom_kills(cgroup_path);
    Some(usage)
}

/// Adds what one hierarchy's directory of the container tells: each file is in one
/// hierarchy only (v1), or all in the one (v2).
fn read_dir_into(dir: &Path, u: &mut Usage) {
    // v1 cpuacct counts nanoseconds, v2's cpu.stat microseconds; on a hybrid host both may
    // count the same container: the larger is the one with the controller attached.
    if let Some(ns) = read_u64(&dir.join("cpuacct.usage")) {
        u.cpu_seconds = u.cpu_seconds.max(ns as f64 / 1e9);
    } else if let Some(us) = stat_field(&dir.join("cpu.stat"), "usage_usec") {
        u.cpu_seconds = u.cpu_seconds.max(us as f64 / 1e6);
    }
    // v1 memory.
    if let Some(used) = read_u64(&dir.join("memory.usage_in_bytes")) {
        let inactive = stat_field(&dir.join("memory.stat"), "total_inactive_file").unwrap_or(0);
        u.memory_working_set_bytes = used.saturating_sub(inactive);
        // v1 says "no limit" with a huge page-aligned number.
        u.memory_limit_bytes =
            read_u64(&dir.join("memory.limit_in_bytes")).filter(|&l| l < 1 << 62);
    } else if let Some(used) = read_u64(&dir.join("memory.current")) {
        let inactive = stat_field(&dir.join("memory.stat"), "inactive_file").unwrap_or(0);
        u.memory_working_set_bytes = used.saturating_sub(inactive);
        // "max" when unlimited: not a number.
        u.memory_limit_bytes = read_u64(&dir.join("memory.max"));
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A `key value` line's value in a stat file (cpu.stat, memory.stat).
fn stat_field(path: &Path, key: &str) -> Option<u64> {
    parse_stat(&fs::read_to_string(path).ok()?, key)
}

fn parse_stat(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_field_is_found_by_its_whole_key() {
        let text = "inactive_anon 10\ninactive_file 4096\ntotal_inactive_file 8192\n";
        assert_eq!(parse_stat(text, "inactive_file"), Some(4096));
        assert_eq!(parse_stat(text, "total_inactive_file"), Some(8192));
        assert_eq!(parse_stat(text, "active_file"), None);
    }

    /// A real cgroup of this host with this test's process in it: CPU time spent there
    /// and memory touched there show up; the limit set is read back.
    #[test]
    fn a_cgroup_with_a_busy_process_shows_its_cpu_and_memory() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root to make a cgroup");
            return;
        }
        let rel = format!("/skiff-usage-test-{}", std::process::id());
        let made: Vec<_> = crate::runtime::cgroup_mounts()
            .iter()
            .map(|root| root.join(rel.trim_start_matches('/')))
            .filter(|d| fs::create_dir(d).is_ok())
            .collect();
        assert!(
            !made.is_empty(),
            "no cgroup hierarchy to make a test cgroup in"
        );
        for d in &made {
            let _ = fs::write(d.join("memory.limit_in_bytes"), "268435456");
            let _ = fs::write(d.join("memory.max"), "268435456");
        }
        // A child that joins every hierarchy's test cgroup, burns CPU and touches 32 MiB.
        let procs: Vec<String> = made
            .iter()
            .map(|d| d.join("cgroup.procs").display().to_string())
            .collect();
        let script = format!(
            "for f in {}; do echo $$ > $f 2>/dev/null; done; \
             exec python3 -c 'b = bytearray(32 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\nimport time\nend = time.time() + 0.5\nwhile time.time() < end: pass\nprint(\"done\", flush=True)\nimport sys\nsys.stdin.read()'",
            procs.join(" ")
        );
        let mut child = std::process::Command::new("sh")
            .args(["-c", &script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "done");
        let u = read(&rel).expect("the test cgroup is there");
        drop(child.stdin.take());
        let _ = child.wait();
        for d in &made {
            let _ = fs::remove_dir(d);
        }
        assert!(u.cpu_seconds >= 0.3, "CPU time: {u:?}");
        assert!(u.memory_working_set_bytes >= 32 << 20, "working set: {u:?}");
        assert_eq!(u.memory_limit_bytes, Some(256 << 20), "{u:?}");
        assert_eq!(u.oom_kills, 0);
        assert_eq!(read("/skiff-no-such-cgroup"), None);
    }
}
