//! What a container may do: Docker's default capability set, and a default seccomp filter
//! that refuses the system calls an application container has no business making — loading
//! kernel code, changing the host's clock, reading other processes' memory, new namespaces,
//! mounts, keyrings, BPF — so that a compromised process has far less kernel to attack.
//!
//! The filter allows by default and denies a list (EPERM), rather than allowing a list:
//! it is ours, short enough to review, and it does not break programs that use ordinary system
//! calls newer than the list. Namespace creation is refused both as `unshare`/`setns` and as
//! `clone` flags; `clone3` answers ENOSYS so libc falls back to `clone`, whose flags the filter
//! can see. A `privileged` container gets every capability and no filter.

use std::collections::HashSet;

use oci_spec::runtime::{
    Arch, Capability, LinuxCapabilities, LinuxCapabilitiesBuilder, LinuxSeccomp,
    LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder, LinuxSeccompOperator,
    LinuxSyscallBuilder,
};
use oci_spec::OciSpecError;

/// Docker's default capability set.
pub fn default_capabilities() -> HashSet<Capability> {
    use Capability::*;
    [
        Chown,
        DacOverride,
        Fsetid,
        Fowner,
        Mknod,
        NetRaw,
        Setgid,
        Setuid,
        Setfcap,
        Setpcap,
        NetBindService,
        SysChroot,
        Kill,
        AuditWrite,
    ]
    .into_iter()
    .collect()
}

/// Every capability the agent itself may grant (a privileged container): the kernel's
/// capabilities, in kernel order, that are in the agent's own bounding set — asking for one
/// outside it would make the container fail to start.
pub fn all_capabilities() -> HashSet<Capability> {
    let bounding = own_bounding_set();
    kernel_capabilities()
        .into_iter()
        .enumerate()
        .filter(|(bit, _)| bounding & (1u64 << bit) != 0)
        .map(|(_, c)| c)
        .collect()
}

/// The `CapBnd` mask of this process (every bit if it cannot be read).
fn own_bounding_set() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(u64::MAX)
}

/// The kernel's capabilities, index = capability number.
fn kernel_capabilities() -> Vec<Capability> {
    use Capability::*;
    vec![
        Chown,
        DacOverride,
        DacReadSearch,
        Fowner,
        Fsetid,
        Kill,
        Setgid,
        Setuid,
        Setpcap,
        LinuxImmutable,
        NetBindService,
        NetBroadcast,
        NetAdmin,
        NetRaw,
        IpcLock,
        IpcOwner,
        SysModule,
        SysRawio,
        SysChroot,
        SysPtrace,
        SysPacct,
        SysAdmin,
        SysBoot,
        SysNice,
        SysResource,
        SysTime,
        SysTtyConfig,
        Mknod,
        Lease,
        AuditWrite,
        AuditControl,
        Setfcap,
        MacOverride,
        MacAdmin,
        Syslog,
        WakeAlarm,
        BlockSuspend,
        AuditRead,
        Perfmon,
        Bpf,
        CheckpointRestore,
    ]
}

/// The same set as bounding, effective and permitted; nothing inheritable or ambient.
pub fn capabilities(set: HashSet<Capability>) -> Result<LinuxCapabilities, OciSpecError> {
    LinuxCapabilitiesBuilder::default()
        .bounding(set.clone())
        .effective(set.clone())
        .permitted(set)
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()
}

/// System calls refused with EPERM.
pub const DENIED_SYSCALLS: &[&str] = &[
    // Kernel code and the machine itself.
    "init_module",
    "finit_module",
    "delete_module",
    "create_module",
    "query_module",
    "get_kernel_syms",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "iopl",
    "ioperm",
    "syslog",
    "acct",
    "quotactl",
    "nfsservctl",
    "_sysctl",
    "sysfs",
    "uselib",
    "ustat",
    "vm86",
    "vm86old",
    "lookup_dcookie",
    // The host's clock.
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "stime",
    // Tracing beyond ptrace (which, like Docker on kernels >= 4.8, stays allowed: without
    // CAP_SYS_PTRACE it reaches only the container's own processes).
    "kcmp",
    "perf_event_open",
    "bpf",
    "userfaultfd",
    // NUMA policy of the host's memory.
    "mbind",
    "set_mempolicy",
    "move_pages",
    // Namespaces and mounts: the usual ways out of a container.
    "unshare",
    "setns",
    "mount",
    "umount",
    "umount2",
    "pivot_root",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "name_to_handle_at",
    "open_by_handle_at",
    // Kernel keyrings are not namespaced.
    "add_key",
    "request_key",
    "keyctl",
];

/// `clone` flags that create namespaces: a clone asking for any of them is refused.
const NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWCGROUP as u64,
];

fn architectures() -> Vec<Arch> {
    match std::env::consts::ARCH {
        "x86_64" => vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32],
        "aarch64" => vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm],
        _ => vec![Arch::ScmpArchNative],
    }
}

/// The default seccomp filter (see the module docs).
pub fn default_seccomp() -> Result<LinuxSeccomp, OciSpecError> {
    let eperm = libc::EPERM as u32;
    let mut syscalls = vec![LinuxSyscallBuilder::default()
        .names(
            DENIED_SYSCALLS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(eperm)
        .build()?];
    // One condition per flag on the same argument: the runtime adds each as its own rule, so
    // any one of them refuses the call.
    let flag_checks = NAMESPACE_FLAGS
        .iter()
        .map(|&flag| {
            LinuxSeccompArgBuilder::default()
                .index(0usize)
                .value(flag)
                .value_two(flag)
                .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    syscalls.push(
        LinuxSyscallBuilder::default()
            .names(vec!["clone".to_string()])
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(eperm)
            .args(flag_checks)
            .build()?,
    );
    syscalls.push(
        LinuxSyscallBuilder::default()
            .names(vec!["clone3".to_string()])
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(libc::ENOSYS as u32)
            .build()?,
    );
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(architectures())
        .syscalls(syscalls)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_set_is_dockers_and_privileged_is_a_superset() {
        let d = default_capabilities();
        assert_eq!(d.len(), 14);
        assert!(!d.contains(&Capability::SysAdmin));
        assert!(!d.contains(&Capability::NetAdmin));
        assert!(d.is_subset(&all_capabilities()));
        // The table is in kernel order: CAP_CHECKPOINT_RESTORE is capability 40.
        assert_eq!(kernel_capabilities()[40], Capability::CheckpointRestore);
        assert_eq!(kernel_capabilities()[24], Capability::SysResource);
    }

    #[test]
    fn the_filter_denies_namespaces_and_kernel_changes() {
        let s = default_seccomp().unwrap();
        assert_eq!(s.default_action(), LinuxSeccompAction::ScmpActAllow);
        let calls = s.syscalls().as_ref().unwrap();
        let denied = calls[0].names();
        for name in [
            "unshare",
            "setns",
            "mount",
            "init_module",
            "bpf",
            "keyctl",
            "kexec_load",
        ] {
            assert!(denied.iter().any(|n| n == name), "{name}");
        }
        assert_eq!(calls[1].names(), &["clone"]);
        assert_eq!(
            calls[1].args().as_ref().unwrap().len(),
            NAMESPACE_FLAGS.len()
        );
        assert_eq!(calls[2].errno_ret(), Some(libc::ENOSYS as u32));
    }
}
