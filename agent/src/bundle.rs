//! Builds the OCI runtime spec (`config.json`) for one container from the task's container
//! spec and the image config, with ECS/Docker precedence: the task's entrypoint and command
//! override the image's; setting an entrypoint without a command drops the image's Cmd.

use std::path::Path;

use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxNamespaceType, LinuxResourcesBuilder, ProcessBuilder,
    RootBuilder, Spec, UserBuilder,
};

use crate::images::ImageConfig;
use crate::spec::{ContainerSpec, NetworkMode};

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    // The caller names the container ("container main: …"); these messages do not repeat it.
    #[error("nothing to run (no entrypoint or command in the task or the image)")]
    NoCommand { container: String },
    #[error("image user {user:?}: {problem}")]
    User {
        container: String,
        user: String,
        problem: String,
    },
    #[error("building the runtime spec: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
}

/// CFS period used for CPU limits (100 ms, the kernel default).
const CPU_PERIOD_US: u64 = 100_000;

pub fn process_args(c: &ContainerSpec, image: &ImageConfig) -> Vec<String> {
    let entrypoint = if c.entrypoint.is_empty() {
        &image.entrypoint
    } else {
        &c.entrypoint
    };
    let command: &[String] = if !c.command.is_empty() {
        &c.command
    } else if c.entrypoint.is_empty() {
        &image.cmd
    } else {
        &[]
    };
    entrypoint.iter().chain(command).cloned().collect()
}

pub fn environment(
    c: &ContainerSpec,
    image: &ImageConfig,
    extra: &[(String, String)],
) -> Vec<String> {
    let mut env: Vec<(String, String)> = vec![(
        "PATH".into(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
    )];
    let mut set = |k: &str, v: &str| match env.iter_mut().find(|(ek, _)| ek == k) {
        Some(e) => e.1 = v.to_string(),
        None => env.push((k.to_string(), v.to_string())),
    };
    for kv in &image.env {
        if let Some((k, v)) = kv.split_once('=') {
            set(k, v);
        }
    }
    for (k, v) in extra {
        set(k, v);
    }
    for (k, v) in &c.environment {
        set(k, v);
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Reads `etc/<file>` of the container's rootfs, refusing symlinks (which would resolve on
/// the host, not in the container). None if absent or unreadable.
fn rootfs_etc(rootfs: &Path, file: &str) -> Option<String> {
    let etc = rootfs.join("etc");
    let path = etc.join(file);
    for p in [&etc, &path] {
        if std::fs::symlink_metadata(p).ok()?.file_type().is_symlink() {
            return None;
        }
    }
    std::fs::read_to_string(path).ok()
}

/// Finds `name` (or a numeric id) in a passwd/group-style file: (id, primary gid field).
fn lookup(db: &str, name: &str) -> Option<(u32, Option<u32>)> {
    db.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 3 && f[0] == name)
            .then(|| (f[2].parse().ok(), f.get(3).and_then(|g| g.parse().ok())))
            .and_then(|(id, gid)| id.map(|id| (id, gid)))
    })
}

/// The image's `User` as Docker reads it: `user`, `user:group`, `uid`, `uid:gid`, names looked
/// up in the image's own /etc/passwd and /etc/group; without a group, the user's primary group
/// (or 0 when the uid has no passwd entry).
fn resolve_user(container: &str, user: &str, rootfs: &Path) -> Result<(u32, u32), BundleError> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let err = |problem: &str| BundleError::User {
        container: container.to_string(),
        user: user.to_string(),
        problem: problem.to_string(),
    };
    let passwd = rootfs_etc(rootfs, "passwd").unwrap_or_default();
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let (uid, primary) = match u.parse::<u32>() {
        Ok(uid) => {
            let primary = passwd.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 4 && f[2].parse() == Ok(uid))
                    .then(|| f[3].parse().ok())
                    .flatten()
            });
            (uid, primary)
        }
        Err(_) => {
            lookup(&passwd, u).ok_or_else(|| err("no such user in the image's /etc/passwd"))?
        }
    };
    let gid = match g {
        None => primary.unwrap_or(0),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let group = rootfs_etc(rootfs, "group").unwrap_or_default();
                lookup(&group, g)
                    .map(|(gid, _)| gid)
                    .ok_or_else(|| err("no such group in the image's /etc/group"))?
            }
        },
    };
    Ok((uid, gid))
}

/// Everything that makes one container's runtime spec.
pub struct BundleInput<'a> {
    pub container: &'a ContainerSpec,
    pub image: &'a ImageConfig,
    pub rootfs: &'a Path,
    pub hostname: &'a str,
    pub network: &'a NetworkMode,
    /// The task's network namespace file, for a task on a network (every container joins it).
    pub netns: Option<&'a Path>,
    /// Files bound read-only over the image's (/etc/hosts, /etc/resolv.conf): (file on the
    /// node, path in the container).
    pub etc_files: &'a [(std::path::PathBuf, String)],
    pub cgroup_path: &'a str,
    pub extra_env: &'a [(String, String)],
    /// Secret files: (file on the node's tmpfs, path in the container), bound read-only.
    pub secret_files: &'a [(std::path::PathBuf, String)],
    /// skiff-init on the node (`init_binary::install`), for containers that ask for an init.
    pub init_binary: &'a Path,
}

pub fn runtime_spec(input: &BundleInput) -> Result<Spec, BundleError> {
    let c = input.container;
    let mut args = process_args(c, input.image);
    if args.is_empty() {
        return Err(BundleError::NoCommand {
            container: c.name.clone(),
        });
    }
    if c.init {
        args.splice(
            0..0,
            [crate::init_binary::IN_CONTAINER.to_string(), "--".into()],
        );
    }
    let cwd = if !c.working_dir.is_empty() {
        c.working_dir.clone()
    } else if !input.image.working_dir.is_empty() {
        input.image.working_dir.clone()
    } else {
        "/".to_string()
    };
    let user = if c.user.is_empty() {
        &input.image.user
    } else {
        &c.user
    };
    let (uid, gid) = resolve_user(&c.name, user, input.rootfs)?;
    let caps = if c.privileged {
        crate::hardening::all_capabilities()
    } else {
        crate::hardening::default_capabilities()
    };
    let mut spec = Spec::default();
    let default_process = spec.process().clone().unwrap_or_default();
    let process = ProcessBuilder::default()
        .terminal(false)
        .args(args)
        .env(environment(c, input.image, input.extra_env))
        .cwd(cwd)
        .user(UserBuilder::default().uid(uid).gid(gid).build()?)
        .no_new_privileges(true)
        .capabilities(crate::hardening::capabilities(caps)?)
        .rlimits(default_process.rlimits().clone().unwrap_or_default())
        .build()?;
    spec.set_process(Some(process));
    spec.set_root(Some(
        RootBuilder::default()
            .path(input.rootfs)
            .readonly(c.readonly_rootfs)
            .build()?,
    ));
    spec.set_hostname(Some(input.hostname.to_string()));

    let mut linux = spec.linux().clone().unwrap_or_default();
    if *input.network == NetworkMode::Host {
        let namespaces = linux
            .namespaces()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|ns| ns.typ() != LinuxNamespaceType::Network)
            .collect();
        linux.set_namespaces(Some(namespaces));
    } else if let Some(netns) = input.netns {
        // The task's namespace, by path: its containers share it (and reach each other on
        // localhost).
        let namespaces = linux
            .namespaces()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|mut ns| {
                if ns.typ() == LinuxNamespaceType::Network {
                    ns.set_path(Some(netns.to_path_buf()));
                }
                ns
            })
            .collect();
        linux.set_namespaces(Some(namespaces));
    }
    let mut resources = LinuxResourcesBuilder::default();
    if c.memory_mib > 0 {
        let bytes = (c.memory_mib * 1024 * 1024) as i64;
        // Swap equal to the limit: no swap on top, so the limit is hard.
        resources = resources.memory(
            LinuxMemoryBuilder::default()
                .limit(bytes)
                .swap(bytes)
                .build()?,
        );
    }
    if c.cpu > 0.0 {
        let quota = (c.cpu * CPU_PERIOD_US as f64).round().max(1000.0) as i64;
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(CPU_PERIOD_US)
                .build()?,
        );
    }
    linux.set_resources(Some(resources.build()?));
    linux.set_cgroups_path(Some(input.cgroup_path.into()));
    if !c.mounts.is_empty() {
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        for m in &c.mounts {
            let mut options = vec!["rbind".to_string(), "rprivate".to_string()];
            if m.read_only {
                options.push("ro".into());
            }
            mounts.push(
                oci_spec::runtime::MountBuilder::default()
                    .destination(&m.target)
                    .typ("bind")
                    .source(&m.source)
                    .options(options)
                    .build()?,
            );
        }
        spec.set_mounts(Some(mounts));
    }
    // The task's /etc/hosts and /etc/resolv.conf, then its secret files: read-only binds.
    bind_files_read_only(&mut spec, input.etc_files)?;
    bind_files_read_only(&mut spec, input.secret_files)?;
    if c.init {
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        mounts.push(
            oci_spec::runtime::MountBuilder::default()
                .destination(crate::init_binary::IN_CONTAINER)
                .typ("bind")
                .source(input.init_binary)
                .options(
                    ["rbind", "ro", "nosuid", "nodev"]
                        .map(String::from)
                        .to_vec(),
                )
                .build()?,
        );
        spec.set_mounts(Some(mounts));
    }
    if c.privileged {
        // Nothing masked or read-only under /proc and /sys, no filter: the host's view.
        linux.set_masked_paths(None);
        linux.set_readonly_paths(None);
        linux.set_seccomp(None);
    } else {
        linux.set_seccomp(Some(crate::hardening::default_seccomp()?));
    }
    spec.set_linux(Some(linux));
    Ok(spec)
}

/// Binds each (file on the node, path in the container) read-only, without exec or devices.
fn bind_files_read_only(
    spec: &mut Spec,
    files: &[(std::path::PathBuf, String)],
) -> Result<(), BundleError> {
    if files.is_empty() {
        return Ok(());
    }
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for (host, dest) in files {
        mounts.push(
            oci_spec::runtime::MountBuilder::default()
                .destination(dest)
                .typ("bind")
                .source(host)
                .options(
                    ["rbind", "ro", "nosuid", "nodev", "noexec"]
                        .map(String::from)
                        .to_vec(),
                )
                .build()?,
        );
    }
    spec.set_mounts(Some(mounts));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cspec() -> ContainerSpec {
        ContainerSpec {
            name: "main".into(),
            image: "dir:/x".into(),
            entrypoint: vec![],
            command: vec![],
            environment: Default::default(),
            cpu: 0.5,
            memory_mib: 64,
            essential: true,
            stop_timeout_secs: 1,
            working_dir: String::new(),
            pull_policy: Default::default(),
            registry_auth: None,
            privileged: false,
            readonly_rootfs: false,
            init: false,
            user: String::new(),
            secrets: vec![],
            mounts: vec![],
            health_check: None,
            port_mappings: vec![],
        }
    }

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["serve".into()],
            env: vec!["A=image".into(), "B=image".into()],
            working_dir: "/app".into(),
            user: "1000:1000".into(),
        }
    }

    #[test]
    fn ecs_precedence_for_args() {
        let img = image();
        assert_eq!(process_args(&cspec(), &img), vec!["/entry", "serve"]);
        let c = ContainerSpec {
            command: vec!["x".into()],
            ..cspec()
        };
        assert_eq!(process_args(&c, &img), vec!["/entry", "x"]);
        let c = ContainerSpec {
            entrypoint: vec!["/other".into()],
            ..cspec()
        };
        assert_eq!(process_args(&c, &img), vec!["/other"]);
    }

    #[test]
    fn task_env_overrides_image_env() {
        let mut c = cspec();
        c.environment.insert("B".into(), "task".into());
        let env = environment(&c, &image(), &[]);
        assert!(env.contains(&"A=image".to_string()));
        assert!(env.contains(&"B=task".to_string()));
        assert!(env.iter().any(|e| e.starts_with("PATH=")));
    }

    #[test]
    fn limits_and_namespaces() {
        let img = image();
        let c = cspec();
        let input = BundleInput {
            container: &c,
            image: &img,
            rootfs: Path::new("/r"),
            hostname: "h",
            network: &NetworkMode::Host,
            netns: None,
            etc_files: &[],
            cgroup_path: "/skiff/t",
            extra_env: &[],
            secret_files: &[],
            init_binary: Path::new("/x/skiff-init"),
        };
        let spec = runtime_spec(&input).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        let res = linux.resources().as_ref().unwrap();
        assert_eq!(res.memory().unwrap().limit(), Some(64 * 1024 * 1024));
        assert_eq!(res.cpu().as_ref().unwrap().quota(), Some(50_000));
        let ns: Vec<_> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect();
        assert!(!ns.contains(&LinuxNamespaceType::Network));
        assert!(ns.contains(&LinuxNamespaceType::Pid));
        assert_eq!(spec.process().as_ref().unwrap().cwd(), Path::new("/app"));
        assert_eq!(spec.process().as_ref().unwrap().user().uid(), 1000);
    }

    #[test]
    fn named_users_resolve_in_the_images_own_passwd_and_group() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1001:1002::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            root.join("etc/group"),
            "root:x:0:\nstaff:x:50:\napp:x:1002:\n",
        )
        .unwrap();
        let r = |u: &str| resolve_user("main", u, root);
        assert_eq!(r("").unwrap(), (0, 0));
        assert_eq!(r("app").unwrap(), (1001, 1002));
        assert_eq!(r("app:staff").unwrap(), (1001, 50));
        assert_eq!(
            r("1001").unwrap(),
            (1001, 1002),
            "a known uid gets its primary group"
        );
        assert_eq!(r("4242").unwrap(), (4242, 0));
        assert_eq!(r("4242:7").unwrap(), (4242, 7));
        let e = r("nobody").unwrap_err().to_string();
        assert!(e.contains("nobody") && e.contains("/etc/passwd"), "{e}");
        assert!(r("app:wheel")
            .unwrap_err()
            .to_string()
            .contains("/etc/group"));
        // A passwd that is a symlink would be read on the host: it is not followed.
        std::fs::remove_file(root.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("etc/passwd")).unwrap();
        assert!(r("root").is_err());
    }

    #[test]
    fn nothing_to_run_is_an_error() {
        let c = cspec();
        let input = BundleInput {
            container: &c,
            image: &ImageConfig::default(),
            rootfs: Path::new("/r"),
            hostname: "h",
            network: &NetworkMode::None,
            netns: None,
            etc_files: &[],
            cgroup_path: "/skiff/t",
            extra_env: &[],
            secret_files: &[],
            init_binary: Path::new("/x/skiff-init"),
        };
        assert!(matches!(
            runtime_spec(&input),
            Err(BundleError::NoCommand { .. })
        ));
    }
}
