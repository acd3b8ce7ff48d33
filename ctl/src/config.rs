//! Config files for `skiff controller` and `skiff agent`: one TOML file per process, every field
//! documented in `deploy/*.toml`; flags and `SKIFF_*` variables override it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerFile {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub heartbeat_interval: Option<String>,
    pub node_timeout: Option<String>,
    pub tls: Option<bool>,
    #[serde(default)]
    pub tls_names: Vec<String>,
    pub node_cert_ttl: Option<String>,
    /// The HTTP listener for object-store notifications and health ("off" = none).
    pub http_listen: Option<String>,
    /// The HTTP listener's URL as subscribers reach it (confirmation links).
    pub public_url: Option<String>,
    /// The mail server for e-mail subscriptions.
    pub smtp: Option<SmtpFile>,
    /// Keep the newest N tasks of each family ("none": no count limit).
    pub task_history_keep: Option<String>,
    /// Delete stopped tasks older than this ("none": keep them).
    pub task_history_max_age: Option<String>,
    /// Delete events older than this that every reader has read ("none": keep them).
    pub event_log_max_age: Option<String>,
    /// Keep at most the newest N events (none by default).
    pub event_log_keep: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpFile {
    /// smtp://[user:pass@]host:587?tls=required, smtps://host:465, smtp://host:25.
    pub url: Option<String>,
    pub from: Option<String>,
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    pub controller: Option<String>,
    pub node_id: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub cpu: Option<f64>,
    pub memory_mib: Option<u64>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub log_max_bytes: Option<u64>,
    pub log_keep: Option<u32>,
    pub start_timeout: Option<String>,
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    pub docker_config: Option<PathBuf>,
    pub image_disk_budget: Option<String>,
    /// Where the container-credentials endpoint listens (default 127.0.0.1:51679).
    pub credentials_listen: Option<SocketAddr>,
    /// Where Prometheus metrics are served (GET /metrics; default: not served).
    pub metrics_listen: Option<SocketAddr>,
    /// Per-boot runtime state (default DATA_DIR/state, on a tmpfs the agent mounts).
    pub state_dir: Option<PathBuf>,
    /// Set the host-wide cgroup2 option favordynmods at start (faster container starts).
    pub cgroup_favordynmods: Option<bool>,
    /// CNI network configuration lists (*.conflist) tasks may select as cni/NAME.
    pub cni_config_dir: Option<PathBuf>,
    /// Where CNI plugins are looked for (default /usr/lib/cni, /opt/cni/bin).
    #[serde(default)]
    pub cni_plugin_dirs: Vec<PathBuf>,
    /// The address range of bridge-mode tasks (default 10.89.0.0/16).
    pub bridge_subnet: Option<String>,
    /// The Linux bridge of bridge-mode tasks (default skiff0).
    pub bridge_name: Option<String>,
    /// Namespaces on the bridge kept attached ahead of need (default 2).
    pub warm_networks: Option<usize>,
    /// Resolvers the DNS server of bridge tasks forwards to (default: the node's).
    #[serde(default)]
    pub dns_upstreams: Vec<String>,
}

/// Reads a definition file (role, rule, schedule, source, topic) into its file struct; the
/// format follows the extension: .json, .toml, anything else YAML. `what` names it in errors.
pub fn read_definition<T: for<'de> Deserialize<'de>>(path: &Path, what: &str) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => serde_json::from_str(&text).map_err(anyhow::Error::from),
        Some("toml") => toml::from_str(&text).map_err(anyhow::Error::from),
        _ => yaml_serde::from_str(&text).map_err(anyhow::Error::from),
    }
    .with_context(|| format!("{} is not a valid {what} file", path.display()))
}

pub fn load<T: for<'de> Deserialize<'de> + Default>(path: Option<&Path>) -> anyhow::Result<T> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config {}", path.display()))
}

pub fn duration(field: &str, s: &str) -> anyhow::Result<std::time::Duration> {
    humantime::parse_duration(s)
        .with_context(|| format!("{field}: {s:?} is not a duration (e.g. 5s, 2m)"))
}

/// A byte count: a plain number, or with a unit (KB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB
/// of 1024), e.g. `20GiB`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 500MiB, 20GiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1000_u64.pow(2),
        "gb" => 1000_u64.pow(3),
        "tb" => 1000_u64.pow(4),
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "{s:?}: unknown unit {other:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            ))
        }
    };
    let bytes = n * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_bytes("20GiB").unwrap(), 20 << 30);
        assert_eq!(parse_bytes("1.5 MB").unwrap(), 1_500_000);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert!(parse_bytes("lots").unwrap_err().contains("not a size"));
        assert!(parse_bytes("3 parsecs")
            .unwrap_err()
            .contains("unknown unit"));
    }
}
