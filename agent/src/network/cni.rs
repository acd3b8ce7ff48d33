//! The runtime side of the CNI specification (1.0): a network configuration list is run
//! plugin by plugin for ADD (each given the previous one's result), in reverse for DEL (each
//! given the cached ADD result), with the capability arguments a plugin declares
//! (`portMappings`). The result of every ADD is cached on disk with the configuration it was
//! made with, so DEL — after an agent crash or a reboot — runs the same plugins with the same
//! configuration, as libcni does. The plugins themselves are the reference ones
//! (`containernetworking-plugins`); skiff only executes them.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// How long one plugin may run before it is killed and the step fails.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("network {network}: {problem}")]
    BadConfig { network: String, problem: String },
    #[error("CNI plugin {plugin} not found in {dirs}")]
    PluginNotFound { plugin: String, dirs: String },
    #[error("CNI plugin {plugin} ({command}): {msg}{}", if details.is_empty() { String::new() } else { format!(" ({details})") })]
    Plugin {
        plugin: String,
        command: &'static str,
        code: i64,
        msg: String,
        details: String,
    },
    #[error("CNI plugin {plugin} ({command}) could not be run: {source}")]
    Exec {
        plugin: String,
        command: &'static str,
        source: std::io::Error,
    },
    #[error("CNI plugin {plugin} ({command}) did not finish within {}s", PLUGIN_TIMEOUT.as_secs())]
    Timeout {
        plugin: String,
        command: &'static str,
    },
    #[error("CNI result cache {path}: {source}")]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A network configuration list (`*.conflist`), kept as written so a cached copy runs the
/// same plugins later.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkList {
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<Map<String, Value>>,
    pub raw: Value,
}

impl NetworkList {
    pub fn parse(raw: Value) -> Result<NetworkList, CniError> {
        let bad = |problem: &str| CniError::BadConfig {
            network: raw
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string(),
            problem: problem.to_string(),
        };
        let name = raw
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| bad("has no name"))?
            .to_string();
        let cni_version = raw
            .get("cniVersion")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("has no cniVersion"))?
            .to_string();
        let plugins: Vec<Map<String, Value>> = raw
            .get("plugins")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("has no plugins list"))?
            .iter()
            .map(|p| {
                p.as_object()
                    .cloned()
                    .ok_or_else(|| bad("a plugin is not an object"))
            })
            .collect::<Result<_, _>>()?;
        if plugins.is_empty() {
            return Err(bad("has an empty plugins list"));
        }
        if let Some(i) = plugins.iter().position(|p| {
            p.get("type")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
        }) {
            return Err(bad(&format!("plugin {i} has no type")));
        }
        Ok(NetworkList {
            name,
            cni_version,
            plugins,
            raw,
        })
    }
}

/// A published port, in CNI's `portMappings` capability shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: String,
}

/// One attachment of a container (a task) to a network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    pub container_id: String,
    /// The namespace file; empty for a DEL after the namespace is gone (a reboot).
    pub netns: String,
    pub if_name: String,
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
}

/// What is cached per attachment: enough to DEL it later exactly as it was added.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cached {
    pub kind: String,
    pub network: Value,
    pub attachment: Attachment,
    pub result: Value,
}

const CACHE_KIND: &str = "skiffCniCacheV1";

/// Runs plugins from `plugin_dirs`, caching results in `cache_dir`.
#[derive(Clone, Debug)]
pub struct Runtime {
    pub plugin_dirs: Vec<PathBuf>,
    pub cache_dir: PathBuf,
    /// Bounds the operations (ADD, CHECK, DEL) that run at once.
    pub gate: Arc<Gate>,
}

/// A counting gate for CNI operations. The reference plugins' firewall work serialises on
/// the kernel's xtables lock, and each operation execs several plugins that each exec
/// `iptables`: a hundred tasks attaching at once would start hundreds of processes that
/// wait on one another (a load average in the hundreds, minutes to drain) where a few at a
/// time finish in seconds. Operations beyond the limit wait their turn (their task stays
/// PENDING meanwhile).
#[derive(Debug)]
pub struct Gate {
    free: Mutex<usize>,
    turn: Condvar,
}

impl Gate {
    pub fn new(limit: usize) -> Arc<Gate> {
        Arc::new(Gate {
            free: Mutex::new(limit.max(1)),
            turn: Condvar::new(),
        })
    }

    /// One operation per core: what the plugins' work can use without queueing on the
    /// xtables lock.
    pub fn per_core() -> Arc<Gate> {
        Gate::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
    }

    /// Blocks until an operation may run; it runs until the pass is dropped.
    fn enter(&self) -> Pass<'_> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            free = self.turn.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
        Pass(self)
    }
}

struct Pass<'a>(&'a Gate);

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.0.turn.notify_one();
    }
}

impl Runtime {
    /// ADD: runs the list's plugins in order and caches the final result. The attachment is
    /// cached (without a result) before the first plugin runs, so a crash in the middle leaves
    /// an entry that cleanup DELs. A failed plugin undoes the plugins before it (DEL of the
    /// whole list), as the specification asks.
    pub fn add(&self, net: &NetworkList, att: &Attachment) -> Result<Value, CniError> {
        let _pass = self.gate.enter();
        self.write_cache(net, att, &Value::Null)?;
        let mut prev: Option<Value> = None;
        for plugin in &net.plugins {
            match self.exec(net, plugin, att, "ADD", prev.as_ref()) {
                Ok(result) => prev = Some(result),
                Err(e) => {
                    if self.del_plugins(net, att, prev.as_ref()).is_ok() {
                        let _ = std::fs::remove_file(self.cache_path(&net.name, att));
                    }
                    return Err(e);
                }
            }
        }
        let result = prev.unwrap_or(Value::Null);
        self.write_cache(net, att, &result)?;
        Ok(result)
    }

    /// CHECK: asks every plugin whether the attachment is still as it was added. An error
    /// `tolerated` says is a plugin's own bug is passed over and the next plugin asked.
    pub fn check(
        &self,
        net: &NetworkList,
        att: &Attachment,
        result: &Value,
        tolerated: impl Fn(&CniError) -> bool,
    ) -> Result<(), CniError> {
        let _pass = self.gate.enter();
        for plugin in &net.plugins {
            match self.exec(net, plugin, att, "CHECK", Some(result)) {
                Err(e) if !tolerated(&e) => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// DEL of a cached attachment, with the configuration it was added with; the cache entry
    /// goes once every plugin has succeeded (a failed DEL is tried again at the next cleanup).
    pub fn del_cached(&self, cached: &Cached) -> Result<(), CniError> {
        let net = NetworkList::parse(cached.network.clone())?;
        let _pass = self.gate.enter();
        self.del_plugins(&net, &cached.attachment, Some(&cached.result))?;
        let path = self.cache_path(&net.name, &cached.attachment);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(CniError::Cache { path, source: e })
            }
            _ => Ok(()),
        }
    }

    /// DEL without a cache entry (the ADD never finished): every plugin, last first.
    pub fn del(&self, net: &NetworkList, att: &Attachment) -> Result<(), CniError> {
        let _pass = self.gate.enter();
        self.del_plugins(net, att, None)
    }

    fn del_plugins(
        &self,
        net: &NetworkList,
        att: &Attachment,
        prev: Option<&Value>,
    ) -> Result<(), CniError> {
        // Every plugin gets its DEL even when one fails; the first failure is returned.
        let mut first_error = None;
        for plugin in net.plugins.iter().rev() {
            if let Err(e) = self.exec(net, plugin, att, "DEL", prev) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Every cached attachment (for cleanup after a crash or a reboot).
    pub fn cached(&self) -> Vec<Cached> {
        let Ok(entries) = std::fs::read_dir(&self.cache_dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|bytes| serde_json::from_slice::<Cached>(&bytes).ok())
            .filter(|c| c.kind == CACHE_KIND)
            .collect()
    }

    fn cache_path(&self, network: &str, att: &Attachment) -> PathBuf {
        self.cache_dir
            .join(format!("{network}-{}-{}", att.container_id, att.if_name))
    }

    fn write_cache(
        &self,
        net: &NetworkList,
        att: &Attachment,
        result: &Value,
    ) -> Result<(), CniError> {
        let path = self.cache_path(&net.name, att);
        let cached = Cached {
            kind: CACHE_KIND.into(),
            network: net.raw.clone(),
            attachment: att.clone(),
            result: result.clone(),
        };
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&self.cache_dir)?;
            let tmp = path.with_extension("tmp");
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec(&cached).expect("JSON values serialize"))?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|source| CniError::Cache { path, source })
    }

    fn find(&self, plugin: &str) -> Result<PathBuf, CniError> {
        self.plugin_dirs
            .iter()
            .map(|d| d.join(plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| CniError::PluginNotFound {
                plugin: plugin.to_string(),
                dirs: self
                    .plugin_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":"),
            })
    }

    /// Runs one plugin with the CNI environment and its configuration on stdin.
    fn exec(
        &self,
        net: &NetworkList,
        plugin: &Map<String, Value>,
        att: &Attachment,
        command: &'static str,
        prev: Option<&Value>,
    ) -> Result<Value, CniError> {
        let kind = plugin
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let exe = self.find(&kind)?;
        let config = plugin_config(net, plugin, att, prev);
        let path_var = self
            .plugin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let exec_err = |source| CniError::Exec {
            plugin: kind.clone(),
            command,
            source,
        };
        let mut child = Command::new(&exe)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &att.container_id)
            .env("CNI_NETNS", &att.netns)
            .env("CNI_IFNAME", &att.if_name)
            .env("CNI_PATH", &path_var)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(exec_err)?;
        let mut stdin = child.stdin.take().expect("piped");
        let body = serde_json::to_vec(&config).expect("JSON values serialize");
        stdin.write_all(&body).map_err(exec_err)?;
        drop(stdin);
        let (mut out, mut err) = (
            child.stdout.take().expect("piped"),
            child.stderr.take().expect("piped"),
        );
        let reader = std::thread::spawn(move || {
            let mut o = Vec::new();
            let _ = out.read_to_end(&mut o);
            o
        });
        let err_reader = std::thread::spawn(move || {
            let mut e = Vec::new();
            let _ = err.read_to_end(&mut e);
            e
        });
        let deadline = Instant::now() + PLUGIN_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().map_err(exec_err)? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(CniError::Timeout {
                    plugin: kind,
                    command,
                });
            }
            std::thread::sleep(Duration::from_micros(500));
        };
        let stdout = reader.join().unwrap_or_default();
        let stderr = err_reader.join().unwrap_or_default();
        let parsed: Option<Value> = serde_json::from_slice(&stdout).ok();
        if !status.success() {
            let (code, msg, details) = match &parsed {
                Some(v) => (
                    v.get("code").and_then(Value::as_i64).unwrap_or(-1),
                    v.get("msg")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    v.get("details")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                ),
                None => (
                    -1,
                    String::from_utf8_lossy(&stderr).trim().to_string(),
                    String::new(),
                ),
            };
            return Err(CniError::Plugin {
                plugin: kind,
                command,
                code,
                msg: if msg.is_empty() {
                    format!("exited with {status}")
                } else {
                    msg
                },
                details,
            });
        }
        Ok(parsed.unwrap_or(Value::Null))
    }
}

/// One plugin's stdin: its own configuration plus the list's name and version, the previous
/// result, and the runtime values of the capabilities it declares.
fn plugin_config(
    net: &NetworkList,
    plugin: &Map<String, Value>,
    att: &Attachment,
    prev: Option<&Value>,
) -> Value {
    let mut config = plugin.clone();
    config.insert("name".into(), json!(net.name));
    config.insert("cniVersion".into(), json!(net.cni_version));
    if let Some(prev) = prev.filter(|p| !p.is_null()) {
        config.insert("prevResult".into(), prev.clone());
    }
    let wants_ports = plugin
        .get("capabilities")
        .and_then(|c| c.get("portMappings"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if wants_ports && !att.port_mappings.is_empty() {
        config.insert(
            "runtimeConfig".into(),
            json!({ "portMappings": att.port_mappings }),
        );
    }
    Value::Object(config)
}

/// The addresses (without prefix length) a result gives the container.
pub fn addresses(result: &Value) -> Vec<String> {
    result
        .get("ips")
        .and_then(Value::as_array)
        .map(|ips| {
            ips.iter()
                .filter_map(|ip| ip.get("address").and_then(Value::as_str))
                .map(|a| a.split('/').next().unwrap_or(a).to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The gateways a result names.
pub fn gateways(result: &Value) -> Vec<String> {
    result
        .get("ips")
        .and_then(Value::as_array)
        .map(|ips| {
            ips.iter()
                .filter_map(|ip| ip.get("gateway").and_then(Value::as_str))
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// The host-side interfaces a result names (those without a sandbox): a veth's host end.
pub fn host_interfaces(result: &Value) -> Vec<String> {
    result
        .get("interfaces")
        .and_then(Value::as_array)
        .map(|ifs| {
            ifs.iter()
                .filter(|i| i.get("sandbox").is_none_or(|s| s.as_str() == Some("")))
                .filter_map(|i| i.get("name").and_then(Value::as_str))
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn the_gate_lets_no_more_than_its_limit_run_at_once_and_every_one_runs() {
        let gate = Gate::new(2);
        let (inside, most, done) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let threads: Vec<_> = (0..12)
            .map(|_| {
                let (gate, inside, most, done) =
                    (gate.clone(), inside.clone(), most.clone(), done.clone());
                std::thread::spawn(move || {
                    let _pass = gate.enter();
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(5));
                    inside.fetch_sub(1, Ordering::SeqCst);
                    done.fetch_add(1, Ordering::SeqCst);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(done.load(Ordering::SeqCst), 12);
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }
}
