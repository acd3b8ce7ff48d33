//! A throwaway VM for tests that need a kernel set up unlike this host's. This host binds every
//! cgroup controller but hugetlb to cgroup v1, so a pure cgroup v2 machine exists only inside a
//! kernel of our own: Debian's cloud kernel (fetched by `scripts/deps test` into
//! target/test-tools/vm) under QEMU, booting an initramfs the test assembles — the static
//! busybox, the workspace's `skiff` with the shared libraries it links, a busybox image, and the
//! test's script — whose output comes back over the serial console. The script runs as init
//! under busybox (`Initramfs::new`) or as a service of this machine's systemd booted as PID 1
//! (`Initramfs::with_systemd`).
//!
//! QEMU runs with TCG (software emulation): KVM is exposed on this machine kind but hangs a
//! guest at boot. A boot to the script takes about 3 s.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::images;

/// Where `scripts/deps test` unpacked the kernel and the overlayfs module.
pub fn tools_dir() -> PathBuf {
    let dir = std::env::var_os("SKIFF_TEST_VM")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-tools/vm"));
    assert!(
        dir.join("vmlinuz").exists(),
        "{} has no kernel: run scripts/deps test",
        dir.display()
    );
    dir
}

/// The first stage runs on the kernel's rootfs, where pivot_root (which every container start
/// needs) is refused: it copies the tree to a tmpfs and switches root to it, running `init`
/// there. It links busybox's applets and loads overlayfs first (systemd, as `init`, does not).
fn stage1(init: &str) -> String {
    format!(
        r#"#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
/bin/busybox insmod /lib/modules/overlay.ko
/bin/busybox mount -t tmpfs -o size=90% tmpfs /newroot
for d in /*; do
  case "$d" in /newroot|/proc) ;; *) /bin/busybox cp -a "$d" /newroot/ ;; esac
done
/bin/busybox mkdir -p /newroot/proc
/bin/busybox umount /proc
exec /bin/busybox switch_root /newroot {init}
"#
    )
}

/// The second stage mounts the usual filesystems, runs the test's script and powers off,
/// printing the script's exit code last.
const STAGE2: &str = r#"#!/bin/busybox sh
export PATH=/usr/local/bin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
ip link set lo up
sh /scenario.sh
echo "@script-exit=$?"
poweroff -f
"#;

/// The service systemd runs the scenario as, its output on the serial console.
const SCENARIO_UNIT: &str = "[Unit]
Description=the test's scenario
After=basic.target

[Service]
Type=simple
Environment=PATH=/usr/local/bin:/bin:/usr/bin:/sbin:/usr/sbin HOME=/root
ExecStart=/run-scenario
StandardOutput=tty
StandardError=inherit
TTYPath=/dev/ttyS0
";

/// Runs the scenario under systemd and powers off, printing the script's exit code last.
const RUN_SCENARIO: &str = r#"#!/bin/sh
sh /scenario.sh
echo "@script-exit=$?"
poweroff -f
"#;

/// A root filesystem for the VM, assembled in a directory.
pub struct Initramfs {
    root: PathBuf,
}

impl Initramfs {
    /// busybox, `skiff` (with its shared libraries), a busybox image at /images/busybox (use it
    /// as `dir:/images/busybox`), the kernel modules in `tools_dir()` at /lib/modules (overlayfs
    /// is loaded at boot), and `scenario` as /scenario.sh, which a busybox shell runs as the
    /// VM's init.
    pub fn new(dir: &Path, scenario: &str) -> Initramfs {
        let fs = Initramfs::common(dir, scenario);
        fs.add_script("init", &stage1("/stage2"));
        fs.add_script("stage2", STAGE2);
        fs
    }

    /// As `new`, but the VM's init is this machine's systemd (Debian's), which runs `scenario`
    /// as a service once the system is up: systemd, journald, systemctl and journalctl with
    /// their libraries, this machine's targets, journald's units, and the files systemd reads
    /// at boot (machine-id, os-release, groups). Install units into /etc/systemd/system.
    pub fn with_systemd(dir: &Path, scenario: &str) -> Initramfs {
        let fs = Initramfs::common(dir, scenario);
        fs.add_script("init", &stage1("/lib/systemd/systemd"));
        for program in [
            "/lib/systemd/systemd",
            "/lib/systemd/systemd-journald",
            "/bin/systemctl",
            "/bin/journalctl",
        ] {
            fs.add_program(Path::new(program));
        }
        let units = fs.root.join("lib/systemd/system");
        fs::create_dir_all(units.join("sockets.target.wants")).unwrap();
        fs::create_dir_all(fs.root.join("etc/systemd/system/multi-user.target.wants")).unwrap();
        // The targets (not what the host's .wants folders pull in): what units order
        // themselves against, default dependencies included.
        for entry in fs::read_dir("/lib/systemd/system").unwrap().flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().ends_with(".target") && name != "default.target" {
                fs::copy(entry.path(), units.join(&name)).unwrap();
            }
        }
        std::os::unix::fs::symlink("multi-user.target", units.join("default.target")).unwrap();
        for unit in [
            "systemd-journald.service",
            "systemd-journald.socket",
            "systemd-journald-dev-log.socket",
        ] {
            fs::copy(
                Path::new("/lib/systemd/system").join(unit),
                units.join(unit),
            )
            .unwrap();
            if unit.ends_with(".socket") {
                std::os::unix::fs::symlink(
                    format!("../{unit}"),
                    units.join("sockets.target.wants").join(unit),
                )
                .unwrap();
            }
        }
        fs::write(
            fs.root.join("etc/systemd/system/scenario.service"),
            SCENARIO_UNIT,
        )
        .unwrap();
        std::os::unix::fs::symlink(
            "../scenario.service",
            fs.root
                .join("etc/systemd/system/multi-user.target.wants/scenario.service"),
        )
        .unwrap();
        fs.add_script("run-scenario", RUN_SCENARIO);
        fs::write(
            fs.root.join("etc/machine-id"),
            "5c1ff0e5c1ff0e5c1ff0e5c1ff0e5c1f\n",
        )
        .unwrap();
        fs::copy("/etc/os-release", fs.root.join("etc/os-release")).unwrap();
        fs::write(
            fs.root.join("etc/group"),
            "root:x:0:\nsystemd-journal:x:101:\n",
        )
        .unwrap();
        fs
    }

    /// What both kinds of VM hold (see `new`).
    fn common(dir: &Path, scenario: &str) -> Initramfs {
        let root = dir.to_path_buf();
        for d in [
            "bin",
            "usr/local/bin",
            "lib/modules",
            "proc",
            "sys",
            "dev",
            "tmp",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        for d in ["newroot", "run", "root", "var/lib", "etc"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::copy(images::busybox(), root.join("bin/busybox")).unwrap();
        let skiff = root.join("usr/local/bin/skiff");
        copy_stripped(&crate::skiff_bin(), &skiff);
        copy_libraries(&root, &skiff);
        // Every module `scripts/deps test` unpacked (the scripts insmod what they use).
        for entry in fs::read_dir(tools_dir()).unwrap().flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().ends_with(".ko") {
                fs::copy(entry.path(), root.join("lib/modules").join(&name)).unwrap();
            }
        }
        images::busybox_rootfs(&root.join("images/busybox"));
        fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        let fs = Initramfs { root };
        fs.add_script("scenario.sh", scenario);
        fs
    }

    /// Copies the directory `from` of this machine to `to` in the VM.
    pub fn add_tree(&self, from: &Path, to: &str) {
        let dest = self.root.join(to.trim_start_matches('/'));
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        let status = Command::new("cp")
            .arg("-a")
            .arg(from)
            .arg(&dest)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "copying {} into the VM: {status}",
            from.display()
        );
    }

    /// Adds a program of this machine (e.g. /usr/sbin/tc) at the same path, with its shared
    /// libraries.
    pub fn add_program(&self, path: &Path) {
        let to = self.root.join(path.strip_prefix("/").unwrap());
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(path, &to).unwrap_or_else(|e| panic!("copying {}: {e}", path.display()));
        copy_libraries(&self.root, path);
    }

    fn add_script(&self, name: &str, text: &str) {
        let p = self.root.join(name);
        fs::write(&p, text).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Packs the tree as a newc cpio archive (what the kernel unpacks into its rootfs).
    fn pack(&self, out: &Path) {
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "find . | {} cpio -o -H newc > {}",
                images::busybox().display(),
                out.display()
            ))
            .current_dir(&self.root)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "packing the initramfs: {status}");
    }
}

/// Copies the shared libraries `bin` loads into `root`, at their paths.
fn copy_libraries(root: &Path, bin: &Path) {
    for lib in shared_libraries(bin) {
        let to = root.join(lib.strip_prefix("/").unwrap());
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(&lib, &to).unwrap_or_else(|e| panic!("copying {}: {e}", lib.display()));
    }
}

/// The binary without its debug sections (a third of the size; the VM copies it twice).
fn copy_stripped(from: &Path, to: &Path) {
    let stripped = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(from)
        .arg(to)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        fs::copy(from, to).unwrap();
    }
}

/// The shared libraries `bin` loads and its dynamic loader, from ldd.
fn shared_libraries(bin: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(bin).output().unwrap();
    assert!(out.status.success(), "ldd {}: {out:?}", bin.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux… (0x…)"
            let path = l.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Boots the kernel with `initramfs` (2 GiB, 2 CPUs, no network device, extra kernel arguments
/// `cmdline`) and returns everything the console printed once the VM powers off. Panics, with
/// the console so far, if it runs past `timeout`.
pub fn boot(initramfs: &Initramfs, work: &Path, cmdline: &str, timeout: Duration) -> String {
    let image = work.join("initramfs.cpio");
    initramfs.pack(&image);
    let console = work.join("console.log");
    let kernel = tools_dir().join("vmlinuz");
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-m", "2048", "-smp", "2", "-nodefaults"])
        .args(["-display", "none", "-no-reboot", "-net", "none"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&image)
        .arg("-append")
        .arg(format!("console=ttyS0 panic=-1 quiet {cmdline}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-system-x86_64 (scripts/deps test installs qemu-system-x86)");
    let deadline = Instant::now() + timeout;
    let read = || String::from_utf8_lossy(&fs::read(&console).unwrap_or_default()).into_owned();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            assert!(status.success(), "qemu: {status} {err}\n{}", read());
            return read();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the VM ran past {timeout:?}; its console:\n{}", read());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What a VM's script reported (its `@key=value` lines, the last of each key), with the
/// console for failure messages.
pub struct Reported {
    console: String,
    values: std::collections::HashMap<String, String>,
}

impl Reported {
    /// Reads the reports from `console` (and prints them, for the test's log).
    pub fn of(console: String) -> Reported {
        let reported = reports(&console);
        eprintln!("the VM reported: {reported:?}");
        Reported {
            values: reported.into_iter().collect(),
            console,
        }
    }

    /// The value reported for `key`; panics, with the console, if there is none.
    pub fn get(&self, key: &str) -> &str {
        self.values
            .get(key)
            .unwrap_or_else(|| panic!("the VM did not report {key}; {}", self.context()))
    }

    /// The console, for an assertion's message.
    pub fn context(&self) -> String {
        format!("console:\n{}", self.console)
    }
}

/// The `@key=value` lines a VM script printed, in order (values run to the end of the line).
pub fn reports(console: &str) -> Vec<(String, String)> {
    console
        .lines()
        .filter_map(|l| {
            let l = l.trim_end_matches('\r');
            let at = l.find('@')?;
            let (k, v) = l[at + 1..].split_once('=')?;
            (!k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
                .then(|| (k.to_string(), v.to_string()))
        })
        .collect()
}
