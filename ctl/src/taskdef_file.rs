//! The task definition file format for `skiff taskdefs register -f FILE`: JSON or TOML (by
//! extension), strict about unknown fields so a typo is an error, not a silent default.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::Deserialize;
use skiff_proto::v1 as pb;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskDefFile {
    pub family: String,
    pub containers: Vec<ContainerFile>,
    #[serde(default)]
    pub network_mode: String,
    /// Task wall-clock limit, e.g. "10m" (or seconds as a number).
    #[serde(default)]
    pub timeout: Option<DurationField>,
    /// The task role (`skiff roles put`) its containers get credentials for.
    #[serde(default)]
    pub task_role: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerFile {
    pub name: String,
    pub image: String,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    #[serde(default)]
    pub cpu: f64,
    /// MiB (64), or with a unit as on the command line: "512M", "1G".
    #[serde(default)]
    pub memory: Option<MemoryField>,
    pub essential: Option<bool>,
    pub stop_timeout: Option<DurationField>,
    #[serde(default)]
    pub working_dir: String,
    /// always, if-not-present (default) or never.
    #[serde(default)]
    pub pull_policy: String,
    /// Name of registry credentials stored in the controller.
    #[serde(default)]
    pub repository_credentials: String,
    #[serde(default)]
    pub privileged: bool,
    #[serde(default)]
    pub readonly_root_filesystem: bool,
    /// Run skiff-init as PID 1: signals reach the command, zombies are reaped (ECS's
    /// initProcessEnabled, Docker's --init).
    #[serde(default, alias = "init")]
    pub init_process_enabled: bool,
    #[serde(default)]
    pub user: String,
    /// Stored secrets: `{name = "DB_PASSWORD", value_from = "db"}` (an env var) or
    /// `{file = "/run/secrets/db", value_from = "db"}` (a read-only file).
    #[serde(default)]
    pub secrets: Vec<SecretFile>,
    /// Host paths bind-mounted into the container (admin only):
    /// `{source = "/srv/data", target = "/data", read_only = true}`.
    #[serde(default)]
    pub mounts: Vec<MountFile>,
    /// `{command = ["CMD-SHELL", "test -f /ready"], interval = "10s", timeout = "3s",
    /// retries = 3, start_period = "30s"}` (ECS's fields and defaults).
    pub health_check: Option<HealthCheckFile>,
    /// Ports published on the node (network_mode bridge or cni/NETWORK):
    /// `{container_port = 80, host_port = 8080, protocol = "tcp"}`; host_port defaults to
    /// container_port, protocol to tcp.
    #[serde(default)]
    pub port_mappings: Vec<PortMappingFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortMappingFile {
    pub container_port: u32,
    #[serde(default)]
    pub host_port: u32,
    #[serde(default)]
    pub protocol: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckFile {
    pub command: Vec<String>,
    pub interval: Option<DurationField>,
    pub timeout: Option<DurationField>,
    pub retries: Option<u32>,
    pub start_period: Option<DurationField>,
}

impl HealthCheckFile {
    fn into_pb(self, field: &str) -> anyhow::Result<pb::HealthCheck> {
        let secs = |name: &str, d: Option<DurationField>| -> anyhow::Result<Option<u32>> {
            d.map(|d| {
                let f = format!("{field}.{name}");
                u32::try_from(d.seconds(&f)?).with_context(|| format!("{f}: too long"))
            })
            .transpose()
        };
        Ok(pb::HealthCheck {
            command: self.command,
            interval_seconds: secs("interval", self.interval)?,
            timeout_seconds: secs("timeout", self.timeout)?,
            retries: self.retries,
            start_period_seconds: secs("start_period", self.start_period)?,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountFile {
    pub source: String,
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretFile {
    #[serde(default)]
    pub name: String,
    pub value_from: String,
    #[serde(default)]
    pub file: String,
}

/// A memory size: MiB as a number, or text with a unit (512M, 1G, 1GiB).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum MemoryField {
    Mib(u64),
    Text(String),
}

impl MemoryField {
    pub(crate) fn mib(&self, field: &str) -> anyhow::Result<u64> {
        match self {
            MemoryField::Mib(m) => Ok(*m),
            MemoryField::Text(t) => parse_memory(t).map_err(|e| anyhow::anyhow!("{field}: {e}")),
        }
    }
}

/// MiB, or with a unit: 64, 64M, 64MiB, 1G, 1GiB.
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let lower = s.trim().to_ascii_lowercase();
    let (num, mult) = if let Some(n) = lower
        .strip_suffix("gib")
        .or_else(|| lower.strip_suffix("g"))
    {
        (n, 1024)
    } else if let Some(n) = lower
        .strip_suffix("mib")
        .or_else(|| lower.strip_suffix("m"))
    {
        (n, 1)
    } else {
        (lower.as_str(), 1)
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not a memory size in MiB (e.g. 64, 512M, 2G)"))
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum DurationField {
    Seconds(u64),
    Text(String),
}

impl DurationField {
    pub(crate) fn seconds(&self, field: &str) -> anyhow::Result<u64> {
        match self {
            DurationField::Seconds(s) => Ok(*s),
            DurationField::Text(t) => Ok(crate::config::duration(field, t)?.as_secs()),
        }
    }
}

pub fn parse(path: &Path, text: &str) -> anyhow::Result<pb::TaskDefinitionInput> {
    let file: TaskDefFile = match path.extension().and_then(|e| e.to_str()) {
        Some("toml") => toml::from_str(text).with_context(|| format!("{}", path.display()))?,
        Some("yaml" | "yml") => {
            yaml_serde::from_str(text).with_context(|| format!("{}", path.display()))?
        }
        _ => serde_json::from_str(text).with_context(|| format!("{}", path.display()))?,
    };
    input(file)
}

/// A task definition as its file declares it (also a `task_definition:` document of `skiff
/// apply`).
pub fn input(file: TaskDefFile) -> anyhow::Result<pb::TaskDefinitionInput> {
    let mut containers = Vec::new();
    for (i, c) in file.containers.into_iter().enumerate() {
        let stop_timeout_seconds = match &c.stop_timeout {
            Some(d) => Some(
                u32::try_from(d.seconds(&format!("containers[{i}].stop_timeout"))?)
                    .context("stop_timeout too large")?,
            ),
            None => None,
        };
        containers.push(pb::ContainerDefinition {
            name: c.name,
            image: c.image,
            entrypoint: c.entrypoint,
            command: c.command,
            environment: c.environment.into_iter().collect(),
            cpu: c.cpu,
            memory_mib: match &c.memory {
                Some(m) => m.mib(&format!("containers[{i}].memory"))?,
                None => 0,
            },
            essential: c.essential,
            stop_timeout_seconds,
            working_dir: c.working_dir,
            pull_policy: c.pull_policy,
            repository_credentials: c.repository_credentials,
            privileged: c.privileged,
            readonly_root_filesystem: c.readonly_root_filesystem,
            init_process_enabled: c.init_process_enabled,
            user: c.user,
            secrets: c
                .secrets
                .into_iter()
                .map(|s| pb::SecretRef {
                    name: s.name,
                    value_from: s.value_from,
                    file: s.file,
                })
                .collect(),
            mounts: c
                .mounts
                .into_iter()
                .map(|m| pb::MountPoint {
                    source: m.source,
                    target: m.target,
                    read_only: m.read_only,
                })
                .collect(),
            health_check: c
                .health_check
                .map(|h| h.into_pb(&format!("containers[{i}].health_check")))
                .transpose()?,
            port_mappings: c
                .port_mappings
                .into_iter()
                .map(|p| pb::PortMapping {
                    container_port: p.container_port,
                    host_port: p.host_port,
                    protocol: p.protocol,
                })
                .collect(),
        });
    }
    Ok(pb::TaskDefinitionInput {
        family: file.family,
        containers,
        network_mode: file.network_mode,
        timeout_seconds: match &file.timeout {
            Some(d) => d.seconds("timeout")?,
            None => 0,
        },
        task_role: file.task_role,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_toml_parse_alike() {
        let json = r#"{"family":"web","timeout":"2m","containers":[{"name":"main","image":"dir:/x","command":["sh"],"memory":64,"stop_timeout":3}]}"#;
        let toml = "family = \"web\"\ntimeout = \"2m\"\n[[containers]]\nname = \"main\"\nimage = \"dir:/x\"\ncommand = [\"sh\"]\nmemory = 64\nstop_timeout = 3\n";
        let a = parse(Path::new("a.json"), json).unwrap();
        let b = parse(Path::new("a.toml"), toml).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.timeout_seconds, 120);
        assert_eq!(a.containers[0].stop_timeout_seconds, Some(3));
    }

    #[test]
    fn memory_takes_units_like_the_command_line() {
        let def = |m: &str| {
            parse(
                Path::new("a.yaml"),
                &format!("family: web\ncontainers:\n- {{name: m, image: 'dir:/x', memory: {m}}}\n"),
            )
        };
        assert_eq!(def("512").unwrap().containers[0].memory_mib, 512);
        assert_eq!(def("512M").unwrap().containers[0].memory_mib, 512);
        assert_eq!(def("1G").unwrap().containers[0].memory_mib, 1024);
        let e = def("lots").unwrap_err().to_string();
        assert!(
            e.contains("containers[0].memory") && e.contains("not a memory size"),
            "{e}"
        );
    }

    #[test]
    fn unknown_fields_are_errors() {
        let e = parse(
            Path::new("a.json"),
            r#"{"family":"web","containers":[{"name":"m","image":"dir:/x","memroy":5}]}"#,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("memroy"), "{e:#}");
    }
}
