//! Config files for `skiff controller` and `skiff agent`: one TOML file per process, every field
//! documented in `deploy/*.toml`; flags and `SKIFF_*` variables override it.

use std::collections::BTreeMap;
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
