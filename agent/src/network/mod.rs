//! Task networking: one network namespace per task, shared by its containers (as ECS's awsvpc
//! mode), attached to a CNI network by the reference plugins. `bridge` is skiff's own network
//! (`skiff`: a Linux bridge, host-local addresses, outbound NAT, published ports, firewall);
//! operators name further networks as CNI configuration lists, which tasks select as
//! `cni/<name>`. Everything attached is detached on every way out: the task's cleanup, and
//! at agent start for whatever a crash or a reboot left (`reconcile`).

pub mod cni;
pub mod netns;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

pub use cni::{CniError, PortMapping};

/// The name of skiff's own network, which `network_mode = "bridge"` selects.
pub const DEFAULT_NETWORK: &str = "skiff";
/// The network that brings up a task's loopback interface (run before the task's network).
const LOOPBACK_NETWORK: &str = "skiff-loopback";
/// The task's interface on its network.
const IF_NAME: &str = "eth0";

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Cni(#[from] CniError),
    #[error("no CNI network named {name} on this node (it has: {known})")]
    Unknown { name: String, known: String },
    #[error("CNI configuration {path}: {problem}")]
    Config { path: PathBuf, problem: String },
    #[error("network namespace {path}: {source}")]
    Namespace {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Files {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("task {0} has no attachment on this node")]
    NotAttached(String),
}

/// How the node's networks are set up (from the agent's configuration).
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    /// Where CNI plugins are looked for, in order.
    pub plugin_dirs: Vec<PathBuf>,
    /// Operators' networks: every `*.conflist` here (optional).
    pub config_dir: Option<PathBuf>,
    /// skiff's bridge and the range its tasks' addresses come from.
    pub bridge_name: String,
    pub bridge_subnet: String,
    /// How many namespaces on skiff's bridge are kept attached ahead of need, once a bridge
    /// task has run: a bridge task without published ports takes one instead of waiting for
    /// the CNI plugins (0: none).
    pub warm: usize,
}

impl Default for NetworkConfig {
    fn default() -> NetworkConfig {
        NetworkConfig {
            plugin_dirs: vec!["/usr/lib/cni".into(), "/opt/cni/bin".into()],
            config_dir: None,
            bridge_name: "skiff0".into(),
            bridge_subnet: "10.89.0.0/16".into(),
            warm: 2,
        }
    }
}

/// Where tasks on skiff's bridge reach their agent (credentials, DNS, the API relays), as on
/// ECS. Published ports never capture it (see `default_network`).
pub const TASK_ENDPOINT: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 170, 2);

/// Puts 169.254.170.2 on `bridge`, where tasks reach the agent's endpoints (credentials,
/// DNS). Idempotent.
pub async fn add_task_endpoint_address(bridge: &str) -> Result<(), String> {
    let out = tokio::process::Command::new("ip")
        .args([
            "addr",
            "replace",
            &format!("{TASK_ENDPOINT}/32"),
            "dev",
            bridge,
        ])
        .output()
        .await
        .map_err(|e| format!("running ip to add {TASK_ENDPOINT} to {bridge}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "adding {TASK_ENDPOINT} to {bridge}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// The prefix of a warm namespace's CNI container id.
const WARM_PREFIX: &str = "warm-";

/// A task's attachment, as its containers and its report need it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskNetwork {
    /// The namespace file every container joins.
    pub netns: PathBuf,
    pub addresses: Vec<String>,
    pub gateway: Option<String>,
    /// The host ends of its interfaces (veths), for leak checks.
    pub host_interfaces: Vec<String>,
}

/// The node's networks and the CNI runtime that attaches tasks to them.
pub struct Networks {
    /// The tasks' namespace files (on the per-boot state tmpfs).
    netns_dir: PathBuf,
    /// Which attachment each task took from the warm pool: task id → its CNI container id
    /// (on disk next to the CNI cache, so a crash or a reboot cannot lose the link).
    claims_dir: PathBuf,
    /// Attached namespaces on skiff's bridge waiting for a task.
    pool: std::sync::Mutex<Vec<(String, TaskNetwork)>>,
    warm: usize,
    refilling: std::sync::atomic::AtomicBool,
    runtime: cni::Runtime,
    lists: BTreeMap<String, cni::NetworkList>,
    loopback: cni::NetworkList,
}

impl Networks {
    /// skiff's own network plus the operator's, checked now (a bad file stops the agent at
    /// start, not a task later). The CNI result cache goes in `cache_dir`, on disk: it must
    /// outlive a reboot to release address leases; namespace files in `netns_dir`.
    pub fn load(
        cfg: NetworkConfig,
        cache_dir: PathBuf,
        netns_dir: PathBuf,
    ) -> Result<Networks, NetworkError> {
        let mut lists = BTreeMap::new();
        let own = cni::NetworkList::parse(default_network(&cfg.bridge_name, &cfg.bridge_subnet))?;
        lists.insert(own.name.clone(), own);
        if let Some(dir) = &cfg.config_dir {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| NetworkError::Config {
                    path: dir.clone(),
                    problem: e.to_string(),
                })?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "conflist"))
                .collect();
            files.sort();
            for path in files {
                let problem = |problem: String| NetworkError::Config {
                    path: path.clone(),
                    problem,
                };
                let bytes = std::fs::read(&path).map_err(|e| problem(e.to_string()))?;
                let raw: Value = serde_json::from_slice(&bytes)
                    .map_err(|e| problem(format!("not JSON: {e}")))?;
                let list = cni::NetworkList::parse(raw).map_err(|e| problem(e.to_string()))?;
                if list.name == DEFAULT_NETWORK || list.name == LOOPBACK_NETWORK {
                    return Err(problem(format!("the name {} is skiff's own", list.name)));
                }
                if lists.contains_key(&list.name) {
                    return Err(problem(format!("a second network named {}", list.name)));
                }
                lists.insert(list.name.clone(), list);
            }
        }
        let loopback = cni::NetworkList::parse(json!({
            "cniVersion": "1.0.0",
            "name": LOOPBACK_NETWORK,
            "plugins": [{ "type": "loopback" }],
        }))?;
        Ok(Networks {
            claims_dir: cache_dir.with_file_name("claims"),
            pool: std::sync::Mutex::new(Vec::new()),
            warm: cfg.warm,
            refilling: std::sync::atomic::AtomicBool::new(false),
            runtime: cni::Runtime {
                plugin_dirs: cfg.plugin_dirs,
                cache_dir,
                gate: cni::Gate::per_core(),
            },
            netns_dir,
            lists,
            loopback,
        })
    }

    /// The names of the networks tasks may select.
    pub fn names(&self) -> Vec<String> {
        self.lists.keys().cloned().collect()
    }

    /// How many namespaces wait in the warm pool.
    pub fn pooled(&self) -> usize {
        self.pool.lock().unwrap().len()
    }

    pub fn netns_path(&self, task_id: &str) -> PathBuf {
        self.netns_dir.join(task_id)
    }

    /// Gives the task its namespace on `network` with its published ports: a warm one from
    /// the pool when it can (skiff's bridge, no ports), else attached now. On failure nothing
    /// of it is left.
    pub fn attach(
        &self,
        task_id: &str,
        network: &str,
        ports: &[PortMapping],
    ) -> Result<TaskNetwork, NetworkError> {
        if network == DEFAULT_NETWORK && ports.is_empty() {
            let warm = self.pool.lock().unwrap().pop();
            if let Some((id, net)) = warm {
                let claim = self.claims_dir.join(task_id);
                let written = std::fs::create_dir_all(&self.claims_dir)
                    .and_then(|_| crate::shim::write_atomic(&claim, id.as_bytes()));
                match written {
                    Ok(()) => return Ok(net),
                    Err(source) => {
                        let _ = self.detach_id(&id);
                        return Err(NetworkError::Files {
                            path: claim,
                            source,
                        });
                    }
                }
            }
        }
        self.attach_as(task_id, network, ports)
    }

    /// Keeps the warm pool full (called after a bridge task takes from it or attaches; blocking:
    /// run it off the async threads). One refill at a time.
    pub fn refill(&self) {
        use std::sync::atomic::Ordering;
        if self.warm == 0 || self.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        while self.pool.lock().unwrap().len() < self.warm {
            let id = format!(
                "{WARM_PREFIX}{}",
                ulid::Ulid::new().to_string().to_lowercase()
            );
            match self.attach_as(&id, DEFAULT_NETWORK, &[]) {
                Ok(net) => self.pool.lock().unwrap().push((id, net)),
                Err(e) => {
                    tracing::warn!(error = %e, "attaching a warm namespace failed");
                    break;
                }
            }
        }
        self.refilling.store(false, Ordering::Release);
    }

    /// Releases the warm namespaces (the agent is stopping: nothing should hold addresses for
    /// tasks that may never come). Blocking.
    pub fn drain_pool(&self) {
        let pooled: Vec<(String, TaskNetwork)> = std::mem::take(&mut *self.pool.lock().unwrap());
        for (id, _) in pooled {
            if let Err(e) = self.detach_id(&id) {
                tracing::warn!(attachment = %id, error = %e, "releasing a warm namespace failed");
            }
        }
    }

    /// The task is over: a warm namespace it took goes back to the pool when it can be used
    /// again as it is (`reusable`: no published ports and no privileged container, so the
    /// task could not change it; no socket left in it; the pool not over four times its
    /// size), saving the DEL and the next ADD; anything else is detached. Blocking.
    pub fn release(&self, task_id: &str, reusable: bool) -> Result<(), NetworkError> {
        let id = self.attachment_of(task_id);
        if reusable && id != task_id && self.warm > 0 {
            let net = self.attached(task_id);
            let mut pool = self.pool.lock().unwrap();
            if let Some(net) =
                net.filter(|n| pool.len() < self.warm * 4 && netns::is_quiet(&n.netns))
            {
                pool.push((id, net));
                drop(pool);
                let _ = std::fs::remove_file(self.claims_dir.join(task_id));
                return Ok(());
            }
        }
        self.detach(task_id)
    }

    /// The CNI container id of a task's attachment: its own id, or the warm one it took.
    fn attachment_of(&self, task_id: &str) -> String {
        std::fs::read_to_string(self.claims_dir.join(task_id))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| task_id.to_string())
    }

    fn attach_as(
        &self,
        task_id: &str,
        network: &str,
        ports: &[PortMapping],
    ) -> Result<TaskNetwork, NetworkError> {
        let list = self
            .lists
            .get(network)
            .ok_or_else(|| NetworkError::Unknown {
                name: network.to_string(),
                known: self.names().join(", "),
            })?;
        let netns = self.netns_path(task_id);
        netns::create(&netns).map_err(|source| NetworkError::Namespace {
            path: netns.clone(),
            source,
        })?;
        let attach = || -> Result<Value, NetworkError> {
            let lo = cni::Attachment {
                container_id: task_id.to_string(),
                netns: netns.display().to_string(),
                if_name: "lo".into(),
                port_mappings: Vec::new(),
            };
            self.runtime.add(&self.loopback, &lo)?;
            let att = cni::Attachment {
                if_name: IF_NAME.into(),
                port_mappings: ports.to_vec(),
                ..lo
            };
            Ok(self.runtime.add(list, &att)?)
        };
        match attach() {
            Ok(result) => Ok(TaskNetwork {
                netns,
                addresses: cni::addresses(&result),
                gateway: cni::gateways(&result).into_iter().next(),
                host_interfaces: cni::host_interfaces(&result),
            }),
            Err(e) => {
                let _ = self.detach_id(task_id);
                Err(e)
            }
        }
    }

    /// CNI CHECK of a task's attachment with its cached result: whether its interface,
    /// address and rules are still as they were added. A network whose configuration says
    /// `disableCheck` passes. Blocking.
    pub fn check(&self, task_id: &str) -> Result<(), NetworkError> {
        let Some(cached) = self.cached_of(task_id) else {
            return Err(NetworkError::NotAttached(task_id.to_string()));
        };
        if cached.network.get("disableCheck").and_then(Value::as_bool) == Some(true) {
            return Ok(());
        }
        let list = cni::NetworkList::parse(cached.network.clone())?;
        let ipv4_only = cni::addresses(&cached.result)
            .iter()
            .all(|a| !a.contains(':'));
        // portmap before 1.3 looks for IPv6 rules it never made for an IPv4-only attachment
        // (containernetworking/plugins#819; Debian 12 ships 1.1.1): that failure is its bug.
        let portmap_v6_bug = |e: &CniError| {
            ipv4_only
                && matches!(e, CniError::Plugin { plugin, msg, .. }
                    if plugin == "portmap" && msg.contains("ipv6"))
        };
        Ok(self
            .runtime
            .check(&list, &cached.attachment, &cached.result, portmap_v6_bug)?)
    }

    /// The cached attachment of a task's namespace on its network (not its loopback).
    fn cached_of(&self, task_id: &str) -> Option<cni::Cached> {
        let id = self.attachment_of(task_id);
        self.runtime
            .cached()
            .into_iter()
            .find(|c| c.attachment.container_id == id && c.attachment.if_name == IF_NAME)
    }

    /// The attachment a task has now (from the cache), if any.
    pub fn attached(&self, task_id: &str) -> Option<TaskNetwork> {
        let cached = self.cached_of(task_id)?;
        Some(TaskNetwork {
            netns: self.netns_path(&cached.attachment.container_id),
            addresses: cni::addresses(&cached.result),
            gateway: cni::gateways(&cached.result).into_iter().next(),
            host_interfaces: cni::host_interfaces(&cached.result),
        })
    }

    /// Detaches the task from every network it is attached to (DEL with the cached
    /// configuration) and lets its namespace go. Safe to repeat; a failed DEL keeps its cache
    /// entry (and the task its claim), so the next cleanup tries again.
    pub fn detach(&self, task_id: &str) -> Result<(), NetworkError> {
        let id = self.attachment_of(task_id);
        self.detach_id(&id)?;
        let _ = std::fs::remove_file(self.claims_dir.join(task_id));
        Ok(())
    }

    fn detach_id(&self, task_id: &str) -> Result<(), NetworkError> {
        let netns = self.netns_path(task_id);
        let held = netns::is_held(&netns);
        let mut first_error = None;
        let mut mine: Vec<cni::Cached> = self
            .runtime
            .cached()
            .into_iter()
            .filter(|c| c.attachment.container_id == task_id)
            .collect();
        // The task's network before its loopback: the reverse of attach.
        mine.sort_by_key(|c| c.attachment.if_name == "lo");
        for mut cached in mine {
            if !held {
                // Gone with a reboot: the plugins release what lives outside it (leases).
                cached.attachment.netns = String::new();
            }
            if let Err(e) = self.runtime.del_cached(&cached) {
                first_error.get_or_insert(NetworkError::Cni(e));
            }
        }
        if let Err(source) = netns::remove(&netns) {
            first_error.get_or_insert(NetworkError::Namespace {
                path: netns,
                source,
            });
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Detaches every attachment no live task holds — what an agent crash or a reboot left
    /// (cache entries, namespace files, claims, warm namespaces of an earlier run) — and
    /// forgets the claims of tasks that are gone. Returns the attachments detached.
    pub fn reconcile(&self, live: impl Fn(&str) -> bool) -> Vec<String> {
        let held: std::collections::HashSet<String> = netns::list(&self.claims_dir)
            .into_iter()
            .filter(|(task, _)| live(task))
            .map(|(task, _)| self.attachment_of(&task))
            .collect();
        let pooled: std::collections::HashSet<String> = self
            .pool
            .lock()
            .unwrap()
            .iter()
            .map(|(id, _)| id.clone())
            .collect();
        let mut ids: Vec<String> = self
            .runtime
            .cached()
            .into_iter()
            .map(|c| c.attachment.container_id)
            .chain(netns::list(&self.netns_dir).into_iter().map(|(n, _)| n))
            .filter(|id| !live(id) && !held.contains(id) && !pooled.contains(id))
            .collect();
        ids.sort();
        ids.dedup();
        for id in &ids {
            if let Err(e) = self.detach_id(id) {
                tracing::warn!(attachment = %id, error = %e, "detaching a leftover task network failed");
            }
        }
        for (task, path) in netns::list(&self.claims_dir) {
            if !live(&task) {
                let _ = std::fs::remove_file(path);
            }
        }
        ids
    }

    /// Writes the task's /etc/hosts and /etc/resolv.conf into `dir`; returns (file, path in
    /// the container) pairs to bind.
    pub fn etc_files(
        &self,
        dir: &Path,
        hostname: &str,
        net: &TaskNetwork,
        resolver: Option<&TaskResolver>,
    ) -> Result<Vec<(PathBuf, String)>, NetworkError> {
        let hosts = hosts_file(hostname, &net.addresses);
        let node = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let resolv = match resolver {
            Some(r) => resolv_conf_for(&node, r),
            None => resolv_conf(&node, net.gateway.as_deref()),
        };
        let mut out = Vec::new();
        for (name, content, target) in [
            ("hosts", hosts, "/etc/hosts"),
            ("resolv.conf", resolv, "/etc/resolv.conf"),
        ] {
            let path = dir.join(name);
            std::fs::create_dir_all(dir)
                .and_then(|_| std::fs::write(&path, content))
                .map_err(|source| NetworkError::Files {
                    path: path.clone(),
                    source,
                })?;
            out.push((path, target.to_string()));
        }
        Ok(out)
    }
}

/// skiff's own network: a bridge with host-local addresses, NAT out, the gateway on the
/// bridge, hairpin (a task reaches its own published port), published ports (`portmap`, with
/// SNAT so the node itself reaches them on 127.0.0.1; never for traffic to the task endpoint,
/// which a task publishing port 80 or 53 would otherwise capture from every bridge task), and
/// the firewall plugin's rules.
fn default_network(bridge: &str, subnet: &str) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": DEFAULT_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": subnet }]],
                    "routes": [{ "dst": "0.0.0.0/0" }]
                }
            },
            {
                "type": "portmap",
                "capabilities": { "portMappings": true },
                "snat": true,
                "conditionsV4": ["!", "-d", format!("{TASK_ENDPOINT}/32")]
            },
            { "type": "firewall" }
        ]
    })
}

fn hosts_file(hostname: &str, addresses: &[String]) -> String {
    let mut out = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for a in addresses {
        out.push_str(&format!("{a}\t{hostname}\n"));
    }
    out
}

/// A resolver of the agent's own that a task asks instead of the node's.
#[derive(Clone, Debug)]
pub struct TaskResolver {
    pub nameserver: std::net::Ipv4Addr,
    /// Searched first, so a short name (a service's) resolves.
    pub search: &'static str,
}

/// A task's resolver configuration naming the agent's resolver, with the node's search
/// domains after the resolver's and the node's options.
fn resolv_conf_for(host: &str, r: &TaskResolver) -> String {
    let mut search = vec![r.search.to_string()];
    let mut options = Vec::new();
    for line in host.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("search") | Some("domain") => search.extend(words.map(String::from)),
            Some("options") => options.extend(words.map(String::from)),
            _ => {}
        }
    }
    let mut out = format!("nameserver {}\nsearch {}\n", r.nameserver, search.join(" "));
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    out
}

/// The node's resolver configuration as a task in its own namespace can use it: loopback
/// nameservers (a local stub resolver) are unreachable from there and are left out; with none
/// left, the gateway (the node) is named.
fn resolv_conf(host: &str, gateway: Option<&str>) -> String {
    let mut out = String::new();
    let mut servers = 0;
    for line in host.lines() {
        let line = line.trim();
        if let Some(server) = line.strip_prefix("nameserver") {
            let server = server.trim();
            if server.starts_with("127.") || server == "::1" {
                continue;
            }
            servers += 1;
        }
        if line.starts_with("nameserver")
            || line.starts_with("search")
            || line.starts_with("options")
        {
            out.push_str(line);
            out.push('\n');
        }
    }
    if servers == 0 {
        if let Some(g) = gateway {
            out.push_str(&format!("nameserver {g}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_leaves_out_loopback_servers() {
        let host =
            "# generated\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nsearch lan\noptions edns0\n";
        assert_eq!(
            resolv_conf(host, Some("10.89.0.1")),
            "nameserver 10.0.0.2\nsearch lan\noptions edns0\n"
        );
        assert_eq!(
            resolv_conf("nameserver 127.0.0.53\n", Some("10.89.0.1")),
            "nameserver 10.89.0.1\n"
        );
    }

    #[test]
    fn a_bridge_task_asks_the_agent_and_searches_the_service_zone_first() {
        let host = "nameserver 127.0.0.53\nsearch lan corp\noptions edns0 ndots:2\n";
        let r = TaskResolver {
            nameserver: std::net::Ipv4Addr::new(169, 254, 170, 2),
            search: "skiff.internal",
        };
        assert_eq!(
            resolv_conf_for(host, &r),
            "nameserver 169.254.170.2\nsearch skiff.internal lan corp\noptions edns0 ndots:2\n"
        );
        assert_eq!(
            resolv_conf_for("", &r),
            "nameserver 169.254.170.2\nsearch skiff.internal\n"
        );
    }

    #[test]
    fn operator_networks_are_checked_at_load() {
        let data = tempfile::tempdir().unwrap();
        let conf = tempfile::tempdir().unwrap();
        let cfg = NetworkConfig {
            config_dir: Some(conf.path().to_path_buf()),
            ..Default::default()
        };
        std::fs::write(
            conf.path().join("lan.conflist"),
            r#"{"cniVersion":"1.0.0","name":"lan","plugins":[{"type":"macvlan","master":"eth0"}]}"#,
        )
        .unwrap();
        let load =
            |cfg: NetworkConfig| Networks::load(cfg, data.path().join("c"), data.path().join("n"));
        let nets = load(cfg.clone()).unwrap();
        assert_eq!(nets.names(), ["lan", "skiff"]);
        std::fs::write(
            conf.path().join("own.conflist"),
            r#"{"cniVersion":"1.0.0","name":"skiff","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        let err = load(cfg.clone()).err().unwrap().to_string();
        assert!(
            err.contains("own.conflist") && err.contains("skiff's own"),
            "{err}"
        );
        std::fs::write(
            conf.path().join("own.conflist"),
            r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"master":"eth0"}]}"#,
        )
        .unwrap();
        let err = load(cfg).err().unwrap().to_string();
        assert!(err.contains("plugin 0 has no type"), "{err}");
    }
}

#[cfg(test)]
#[path = "attach_tests.rs"]
mod attach_tests;
