//! `skiff dev`, `skiff controller`, `skiff agent`: the long-running processes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use skiff_agent::{Agent, AgentConfig};
use skiff_controller::{Controller, ControllerConfig, NodeTiming};

use crate::config::{self, AgentFile, ControllerFile};

#[derive(Args)]
pub struct DevArgs {
    /// Where state, images and task files live.
    #[arg(long, env = "SKIFF_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// HTTP listen address for object-store notifications (POST /notify/<source>).
    #[arg(
        long = "http-listen",
        env = "SKIFF_HTTP_LISTEN",
        default_value = "127.0.0.1:7480"
    )]
    http_listen: SocketAddr,
    /// gRPC listen address.
    #[arg(long, env = "SKIFF_LISTEN", default_value = "127.0.0.1:7400")]
    listen: SocketAddr,
    /// Node id of the embedded agent.
    #[arg(long, default_value = "local")]
    node_id: String,
    #[command(flatten)]
    images: NodeArgs,
    #[command(flatten)]
    notify: NotifyArgs,
}

/// Notification settings shared by `skiff dev` and `skiff controller`.
#[derive(Args)]
pub struct NotifyArgs {
    /// Mail server for e-mail subscriptions: smtp://[user:pass@]host:587?tls=required
    /// (STARTTLS), smtps://host:465 (TLS), smtp://host:25 (STARTTLS when offered).
    #[arg(long = "smtp-url", env = "SKIFF_SMTP_URL")]
    smtp_url: Option<String>,
    /// The From address of notification mail.
    #[arg(long = "smtp-from", env = "SKIFF_SMTP_FROM")]
    smtp_from: Option<String>,
    /// A CA certificate (PEM) to trust for the mail server, besides the public roots.
    #[arg(long = "smtp-ca-file", env = "SKIFF_SMTP_CA_FILE")]
    smtp_ca_file: Option<PathBuf>,
    /// The HTTP listener's URL as subscribers reach it, for confirmation links (default
    /// http://<http-listen>).
    #[arg(long = "public-url", env = "SKIFF_PUBLIC_URL")]
    public_url: Option<String>,
}

impl NotifyArgs {
    fn smtp(
        &self,
        file: &ControllerFile,
    ) -> anyhow::Result<Option<skiff_controller::notify::SmtpConfig>> {
        let f = file.smtp.as_ref();
        let url = self
            .smtp_url
            .clone()
            .or_else(|| f.and_then(|f| f.url.clone()));
        let from = self
            .smtp_from
            .clone()
            .or_else(|| f.and_then(|f| f.from.clone()));
        let ca_file = self
            .smtp_ca_file
            .clone()
            .or_else(|| f.and_then(|f| f.ca_file.clone()));
        match (url, from) {
            (None, None) => Ok(None),
            (Some(url), Some(from)) => Ok(Some(skiff_controller::notify::SmtpConfig {
                url,
                from,
                ca_file,
            })),
            (Some(_), None) => {
                anyhow::bail!("smtp: --smtp-from (the From address) is needed with --smtp-url")
            }
            (None, Some(_)) => {
                anyhow::bail!("smtp: --smtp-url (the mail server) is needed with --smtp-from")
            }
        }
    }

    fn public_url(&self, file: &ControllerFile) -> Option<String> {
        self.public_url.clone().or_else(|| file.public_url.clone())
    }
}

/// Node settings shared by `skiff dev` and `skiff agent`: images and the credentials endpoint.
#[derive(Args)]
pub struct NodeArgs {
    /// Registry (HOST[:PORT]) to reach over plain HTTP (repeatable). Only for registries you
    /// trust on a network you trust.
    #[arg(
        long = "insecure-registry",
        env = "SKIFF_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    insecure_registries: Vec<String>,
    /// Docker-style config.json with registry credentials (default: ~/.docker/config.json).
    #[arg(long = "docker-config", env = "SKIFF_DOCKER_CONFIG")]
    docker_config: Option<PathBuf>,
    /// Disk budget for images (e.g. 20GiB): unused images are removed, least recently used
    /// first, above it.
    #[arg(long = "image-disk-budget", value_parser = config::parse_bytes)]
    image_disk_budget: Option<u64>,
    /// Where the container-credentials endpoint for tasks with roles listens (loopback;
    /// port 0 picks one, kept across agent restarts).
    #[arg(long = "credentials-listen", env = "SKIFF_CREDENTIALS_LISTEN")]
    credentials_listen: Option<SocketAddr>,
    /// Serve Prometheus metrics of this node (GET /metrics: each container's CPU, memory and
    /// OOM kills from its cgroups; the agent's tasks) at this address, e.g. 127.0.0.1:7490.
    /// No token is asked: bind it to loopback or a network only your Prometheus shares.
    #[arg(long = "metrics-listen", env = "SKIFF_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Per-boot runtime state (task records, bundles, shim files; default DATA_DIR/state). A
    /// tmpfs is mounted there unless it is on one already (e.g. under /run).
    #[arg(long = "state-dir", env = "SKIFF_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Set the cgroup2 option favordynmods on this host (Linux 6.0+), so a container's cgroup
    /// join does not wait for an RCU grace period (~10 ms per start). Host-wide, and on some
    /// kernels in effect until reboot.
    #[arg(long = "cgroup-favordynmods")]
    cgroup_favordynmods: bool,
    /// Directory of CNI network configuration lists (*.conflist) that tasks may select as
    /// network_mode cni/NAME (e.g. a macvlan to the LAN).
    #[arg(long = "cni-config-dir", env = "SKIFF_CNI_CONFIG_DIR")]
    cni_config_dir: Option<PathBuf>,
    /// Where CNI plugins are looked for (repeatable; default /usr/lib/cni, /opt/cni/bin).
    #[arg(
        long = "cni-plugin-dir",
        env = "SKIFF_CNI_PLUGIN_DIRS",
        value_delimiter = ':'
    )]
    cni_plugin_dirs: Vec<PathBuf>,
    /// The address range of bridge-mode tasks on this node (default 10.89.0.0/16).
    #[arg(long = "bridge-subnet", env = "SKIFF_BRIDGE_SUBNET")]
    bridge_subnet: Option<String>,
    /// The Linux bridge bridge-mode tasks are attached to (default skiff0).
    #[arg(long = "bridge-name", env = "SKIFF_BRIDGE_NAME")]
    bridge_name: Option<String>,
    /// Namespaces on the bridge kept attached ahead of need once bridge tasks run (default
    /// 2; 0 attaches each task's when it starts).
    #[arg(long = "warm-networks", env = "SKIFF_WARM_NETWORKS")]
    warm_networks: Option<usize>,
    /// Resolvers (IP or IP:PORT, repeatable) the DNS server of bridge tasks forwards names
    /// outside skiff.internal to (default: the node's, from /etc/resolv.conf).
    #[arg(
        long = "dns-upstream",
        env = "SKIFF_DNS_UPSTREAMS",
        value_delimiter = ','
    )]
    dns_upstreams: Vec<String>,
}

/// A resolver's address: IP:PORT, or an IP (port 53).
fn parse_resolver(s: &str) -> anyhow::Result<SocketAddr> {
    s.parse::<SocketAddr>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| {
            anyhow::anyhow!("dns_upstreams: {s:?} is not an IP address or IP:PORT (e.g. 10.0.0.2 or 127.0.0.1:5353)")
        })
}

/// An IPv4 range in CIDR form (what host-local takes), checked before the agent starts.
fn check_subnet(s: &str) -> anyhow::Result<()> {
    let ok = s.split_once('/').is_some_and(|(ip, len)| {
        ip.parse::<std::net::Ipv4Addr>().is_ok()
            && len.parse::<u8>().is_ok_and(|l| (8..=30).contains(&l))
    });
    if !ok {
        anyhow::bail!(
            "bridge_subnet: {s:?} is not an IPv4 range like 10.89.0.0/16 (prefix 8 to 30)"
        );
    }
    Ok(())
}

impl NodeArgs {
    fn apply(self, file: &AgentFile, cfg: &mut AgentConfig) -> anyhow::Result<()> {
        cfg.insecure_registries = file.insecure_registries.clone();
        cfg.insecure_registries.extend(self.insecure_registries);
        if let Some(p) = self.docker_config.or_else(|| file.docker_config.clone()) {
            cfg.docker_config = Some(p);
        }
        cfg.image_disk_budget = match (self.image_disk_budget, &file.image_disk_budget) {
            (Some(b), _) => Some(b),
            (None, Some(s)) => Some(
                config::parse_bytes(s).map_err(|e| anyhow::anyhow!("image_disk_budget: {e}"))?,
            ),
            (None, None) => None,
        };
        if let Some(a) = self.credentials_listen.or(file.credentials_listen) {
            cfg.credentials_listen = a;
        }
        cfg.metrics_listen = self.metrics_listen.or(file.metrics_listen);
        if let Some(p) = self.state_dir.or_else(|| file.state_dir.clone()) {
            cfg.state_dir = p;
        }
        cfg.cgroup_favordynmods =
            self.cgroup_favordynmods || file.cgroup_favordynmods.unwrap_or(false);
        if let Some(d) = self.cni_config_dir.or_else(|| file.cni_config_dir.clone()) {
            cfg.network.config_dir = Some(d);
        }
        let plugin_dirs = if self.cni_plugin_dirs.is_empty() {
            file.cni_plugin_dirs.clone()
        } else {
            self.cni_plugin_dirs
        };
        if !plugin_dirs.is_empty() {
            cfg.network.plugin_dirs = plugin_dirs;
        }
        if let Some(s) = self.bridge_subnet.or_else(|| file.bridge_subnet.clone()) {
            check_subnet(&s)?;
            cfg.network.bridge_subnet = s;
        }
        if let Some(b) = self.bridge_name.or_else(|| file.bridge_name.clone()) {
            if b.is_empty()
                || b.len() > 15
                || !b
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
            {
                anyhow::bail!("bridge_name: {b:?} is not an interface name (1 to 15 letters, digits, '-' or '_')");
            }
            cfg.network.bridge_name = b;
        }
        if let Some(n) = self.warm_networks.or(file.warm_networks) {
            cfg.network.warm = n;
        }
        let upstreams = if self.dns_upstreams.is_empty() {
            &file.dns_upstreams
        } else {
            &self.dns_upstreams
        };
        cfg.dns_upstreams = upstreams
            .iter()
            .map(|s| parse_resolver(s))
            .collect::<anyhow::Result<_>>()?;
        Ok(())
    }
}

#[derive(Args)]
pub struct ControllerArgs {
    /// TOML config file (see deploy/controller.toml).
    #[arg(long, short = 'c', env = "SKIFF_CONFIG")]
    config: Option<PathBuf>,
    /// Where the controller keeps its state (sled database, PKI, admin token, secrets key).
    #[arg(long, env = "SKIFF_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address of the gRPC API and the agent channel (e.g. 0.0.0.0:7400).
    #[arg(long, env = "SKIFF_LISTEN")]
    listen: Option<SocketAddr>,
    /// HTTP listen address for object-store notifications and /healthz (default
    /// 127.0.0.1:7480; "off" for none).
    #[arg(long = "http-listen", env = "SKIFF_HTTP_LISTEN")]
    http_listen: Option<String>,
    /// How often agents heartbeat (e.g. 5s).
    #[arg(long, env = "SKIFF_HEARTBEAT_INTERVAL")]
    heartbeat_interval: Option<String>,
    /// Silence after which a node's tasks are STOPPED/NodeLost (e.g. 30s).
    #[arg(long, env = "SKIFF_NODE_TIMEOUT")]
    node_timeout: Option<String>,
    /// Serve plaintext HTTP/2 instead of TLS: API tokens, secrets and the agent channel then
    /// cross the network unprotected and agents are not authenticated. Only for loopback or a
    /// network you trust. (By default the controller serves TLS with the cluster's own CA,
    /// created on first start in <data>/pki, and agents join with node certificates.)
    #[arg(long)]
    plaintext: bool,
    /// Extra DNS name or IP the server certificate is valid for (repeatable).
    #[arg(long = "tls-name")]
    tls_names: Vec<String>,
    /// Lifetime of node certificates (default 30d); agents renew after two thirds of it.
    #[arg(long = "node-cert-ttl")]
    node_cert_ttl: Option<String>,
    /// Keep the newest N tasks of each family (default 10000; "none" for no count limit);
    /// `skiff tasks retention set` overrides it for a family, service or group.
    #[arg(long = "task-history-keep")]
    task_history_keep: Option<String>,
    /// Delete stopped tasks that stopped longer ago than this (default 30d; "none" keeps
    /// them for ever).
    #[arg(long = "task-history-max-age")]
    task_history_max_age: Option<String>,
    /// Delete events older than this from the event log (default 7d; "none" keeps them) —
    /// never one the rule dispatcher or a named consumer has not read.
    #[arg(long = "event-log-max-age")]
    event_log_max_age: Option<String>,
    /// Keep only the newest N events in the log (default: no count limit), with the same
    /// exception.
    #[arg(long = "event-log-keep")]
    event_log_keep: Option<u64>,
    #[command(flatten)]
    notify: NotifyArgs,
}

#[derive(Args)]
pub struct AgentArgs {
    /// TOML config file (see deploy/agent.toml).
    #[arg(long, short = 'c', env = "SKIFF_CONFIG")]
    config: Option<PathBuf>,
    /// Controller address (defaults to --addr).
    #[arg(long, env = "SKIFF_CONTROLLER")]
    controller: Option<String>,
    /// This node's name in the cluster (default: the host name).
    #[arg(long, env = "SKIFF_NODE_ID")]
    node_id: Option<String>,
    /// Where the agent keeps images, container logs and upper layers.
    #[arg(long, env = "SKIFF_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// vCPUs offered to the scheduler (default: this machine's).
    #[arg(long)]
    cpu: Option<f64>,
    /// MiB offered to the scheduler (default: this machine's).
    #[arg(long)]
    memory: Option<u64>,
    /// Node label, KEY=VALUE (repeatable).
    #[arg(long = "label", value_parser = parse_kv)]
    labels: Vec<(String, String)>,
    /// Join a TLS controller with a join string (skiff tokens create --role join); used once,
    /// the node certificate is kept in <data>/pki for later starts.
    #[arg(long, env = "SKIFF_JOIN")]
    join: Option<String>,
    #[command(flatten)]
    images: NodeArgs,
}

pub fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SKIFF_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,h2=warn,tower=warn,hyper=warn,libcontainer=warn,libcgroups=warn",
        )
    });
    if crate::systemd::logs_to_journal() {
        let format = tracing_subscriber::fmt::format()
            .without_time()
            .with_level(false)
            .with_ansi(false);
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .event_format(crate::systemd::JournalFormat(format))
            .try_init();
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Resolves on Ctrl-C or SIGTERM (and tells systemd the process is stopping). The handlers
/// are installed when this is called, not when the future is first polled: a SIGTERM that
/// comes while the agent re-adopts its containers, before it waits for one, still stops it
/// gracefully instead of killing it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        crate::systemd::stopping();
    }
}

fn default_data_dir(name: &str) -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib"))
        .join(".local/share/skiff")
        .join(name)
}

pub async fn dev(a: DevArgs) -> anyhow::Result<()> {
    init_tracing();
    let data_dir = a.data_dir.unwrap_or_else(|| default_data_dir("dev"));
    let ctl = Controller::bind(ControllerConfig {
        task_history: None,
        event_log: None,
        data_dir: data_dir.join("controller"),
        listen: a.listen,
        timing: NodeTiming::default(),
        clock: skiff_controller::clock::Clock::system(),
        tls: None,
        node_cert_ttl: None,
        http_listen: Some(a.http_listen),
        local_buckets: Some(data_dir.join("buckets")),
        smtp: a.notify.smtp(&ControllerFile::default())?,
        public_url: a.notify.public_url(&ControllerFile::default()),
    })
    .await
    .context("starting the controller")?;
    let addr = ctl.local_addr();
    // The local CLI finds the admin token in its token file for this address.
    let admin = data_dir
        .join("controller")
        .join(skiff_controller::tokens::ADMIN_TOKEN_FILE);
    let token = std::fs::read_to_string(&admin)
        .with_context(|| format!("reading the admin token {}", admin.display()))?;
    let cli_file = crate::conn::token_file_for(&format!("http://{addr}"))
        .context("no config directory for the CLI's token ($HOME or $XDG_CONFIG_HOME)")?;
    skiff_controller::keyfile::write_secret(&cli_file, token.trim())
        .with_context(|| format!("writing the CLI's token {}", cli_file.display()))?;
    let mut acfg = AgentConfig::new(a.node_id, format!("http://{addr}"), data_dir.join("agent"));
    acfg.labels.insert("skiff.dev".into(), "true".into());
    a.images.apply(&AgentFile::default(), &mut acfg)?;
    let agent = Agent::open(acfg).context("starting the agent")?;
    println!(
        "skiff dev: controller listening on http://{addr} (data in {})",
        data_dir.display()
    );
    println!(
        "skiff dev: admin API token in {} (the CLI reads it from there for this address)",
        cli_file.display()
    );
    if let Some(http) = ctl.http_addr() {
        println!(
            "skiff dev: local buckets in {} (every directory is a bucket; new files become events); notifications on http://{http}/notify/<source>",
            data_dir.join("buckets").display()
        );
        println!(
            "skiff dev: dashboard on http://{http}/ui/ (log in with the admin token, or one from skiff tokens create --role read-only)"
        );
    }
    println!("skiff dev: try  skiff run-task --wait --image dir:/path/to/rootfs -- echo hello");
    let signal = shutdown_signal();
    let core = ctl.core();
    crate::systemd::keep_watchdog(move || core.workers.healthy());
    crate::systemd::ready(&format!("serving on {addr}"));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let agent_task = tokio::spawn(agent.run({
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.changed().await;
        }
    }));
    let serve = ctl.serve(async move {
        signal.await;
        let _ = stop_tx.send(true);
    });
    serve.await.context("controller")?;
    let _ = agent_task.await;
    println!("skiff dev: stopped");
    Ok(())
}

/// The default task history limits from `task_history_keep` and `task_history_max_age`.
fn task_history(
    keep: Option<String>,
    max_age: Option<String>,
) -> anyhow::Result<skiff_model::history::Limits> {
    let mut limits = skiff_controller::history::DEFAULT_LIMITS;
    match keep.as_deref() {
        None => {}
        Some("none") => limits.keep = None,
        Some(n) => match n.parse::<u32>() {
            Ok(n) if n > 0 => limits.keep = Some(n),
            _ => anyhow::bail!("task_history_keep: {n:?} is not a count of 1 or more (or none)"),
        },
    }
    match max_age.as_deref() {
        None => {}
        Some("none") => limits.max_age_ms = None,
        Some(d) => {
            let d = config::duration("task_history_max_age", d)?;
            limits.max_age_ms = Some(d.as_millis().min(i64::MAX as u128) as i64);
        }
    }
    Ok(limits)
}

pub async fn controller(a: ControllerArgs) -> anyhow::Result<()> {
    init_tracing();
    let file: ControllerFile = config::load(a.config.as_deref())?;
    let smtp = a.notify.smtp(&file)?;
    let public_url = a.notify.public_url(&file);
    let mut timing = NodeTiming::default();
    if let Some(s) = a.heartbeat_interval.or(file.heartbeat_interval) {
        timing.heartbeat_interval = config::duration("heartbeat_interval", &s)?;
    }
    if let Some(s) = a.node_timeout.or(file.node_timeout) {
        timing.node_timeout = config::duration("node_timeout", &s)?;
    }
    if timing.node_timeout <= timing.heartbeat_interval {
        anyhow::bail!("node_timeout must be longer than heartbeat_interval");
    }
    let listen = match (a.listen, file.listen) {
        (Some(l), _) => l,
        (None, Some(s)) => s
            .parse()
            .with_context(|| format!("listen: {s:?} is not HOST:PORT"))?,
        (None, None) => "127.0.0.1:7400".parse().expect("valid default"),
    };
    let data_dir = a
        .data_dir
        .or(file.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("/var/lib/skiff/controller"));
    let tls = !(a.plaintext || file.tls == Some(false));
    let tls = tls.then(|| {
        let mut names = file.tls_names.clone();
        names.extend(a.tls_names.iter().cloned());
        names
    });
    let node_cert_ttl = match a.node_cert_ttl.or(file.node_cert_ttl.clone()) {
        Some(t) => Some(config::duration("node_cert_ttl", &t)?),
        None => None,
    };
    let http_listen = match a.http_listen.or(file.http_listen.clone()) {
        Some(s) if s == "off" => None,
        Some(s) => Some(
            s.parse::<SocketAddr>()
                .with_context(|| format!("--http-listen: {s:?} is not HOST:PORT or off"))?,
        ),
        None => Some(SocketAddr::from(([127, 0, 0, 1], 7480))),
    };
    let task_history = task_history(
        a.task_history_keep.or(file.task_history_keep.clone()),
        a.task_history_max_age.or(file.task_history_max_age.clone()),
    )?;
    let mut event_log = skiff_controller::history::DEFAULT_EVENT_LIMITS;
    match a
        .event_log_max_age
        .or(file.event_log_max_age.clone())
        .as_deref()
    {
        None => {}
        Some("none") => event_log.max_age_ms = None,
        Some(d) => {
            let d = config::duration("event_log_max_age", d)?;
            event_log.max_age_ms = Some(d.as_millis().min(i64::MAX as u128) as i64);
        }
    }
    match a.event_log_keep.or(file.event_log_keep) {
        Some(0) => anyhow::bail!("event_log_keep: 0 would empty the log; give 1 or more"),
        n => event_log.keep = n.or(event_log.keep),
    }
    let ctl = Controller::bind(ControllerConfig {
        task_history: Some(task_history),
        event_log: Some(event_log),
        data_dir: data_dir.clone(),
        listen,
        timing,
        clock: skiff_controller::clock::Clock::system(),
        tls,
        node_cert_ttl,
        http_listen,
        local_buckets: None,
        smtp,
        public_url,
    })
    .await
    .context("starting the controller")?;
    let scheme = if ctl.ca_pem().is_some() {
        "https"
    } else {
        "http"
    };
    println!(
        "skiff controller: listening on {scheme}://{} (state in {})",
        ctl.local_addr(),
        data_dir.display()
    );
    if let Some(http) = ctl.http_addr() {
        println!("skiff controller: notifications on http://{http}/notify/<source>");
        println!("skiff controller: dashboard on http://{http}/ui/ (any API token logs in)");
    }
    if ctl.ca_pem().is_some() {
        println!(
            "skiff controller: cluster CA certificate {} (clients: SKIFF_CA_FILE)",
            data_dir.join("pki/ca.crt").display()
        );
    }
    if let Some(path) = ctl.bootstrap_token() {
        println!(
            "skiff controller: first start: an admin API token is in {} (export SKIFF_TOKEN=$(cat {}))",
            path.display(),
            path.display()
        );
    }
    let signal = shutdown_signal();
    let core = ctl.core();
    crate::systemd::keep_watchdog(move || core.workers.healthy());
    crate::systemd::ready(&format!("serving on {}", ctl.local_addr()));
    ctl.serve(signal).await.context("controller")?;
    Ok(())
}

pub async fn agent(a: AgentArgs, default_controller: &str) -> anyhow::Result<()> {
    init_tracing();
    let file: AgentFile = config::load(a.config.as_deref())?;
    let node_id = a
        .node_id
        .or(file.node_id.clone())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .context("node_id: not set and /etc/hostname is unreadable")?;
    let controller = a
        .controller
        .or(file.controller.clone())
        .unwrap_or_else(|| default_controller.to_string());
    let data_dir = a
        .data_dir
        .or(file.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("/var/lib/skiff/agent"));
    if let Some(j) = &a.join {
        if !skiff_agent::tls::joined(&data_dir) {
            skiff_agent::tls::join(&controller, &data_dir, &node_id, j)
                .await
                .map_err(anyhow::Error::msg)?;
            println!("skiff agent: joined the cluster as node {node_id}");
        }
    }
    let mut cfg = AgentConfig::new(node_id, controller, data_dir);
    a.images.apply(&file, &mut cfg)?;
    cfg.cpu = a.cpu.or(file.cpu);
    cfg.memory_mib = a.memory.or(file.memory_mib);
    cfg.labels = file.labels.clone();
    cfg.labels.extend(a.labels);
    if let Some(b) = file.log_max_bytes {
        cfg.log_max_bytes = b;
    }
    if let Some(k) = file.log_keep {
        cfg.log_keep = k;
    }
    if let Some(t) = &file.start_timeout {
        cfg.start_timeout = config::duration("start_timeout", t)?;
    }

    if let Some(cpu) = cfg.cpu {
        anyhow::ensure!(
            cpu.is_finite() && cpu > 0.0,
            "cpu: {cpu} must be a positive number of vCPUs"
        );
    }
    println!(
        "skiff agent: node {} reporting to {} (data in {})",
        cfg.node_id,
        cfg.controller,
        cfg.data_dir.display()
    );
    let agent = Agent::open(cfg).context("starting the agent")?;
    // Fed while the runtime turns: a wedged agent is restarted, its containers left running.
    let signal = shutdown_signal();
    crate::systemd::keep_watchdog(|| true);
    crate::systemd::ready("re-adopting running containers, then connecting");
    agent.run(signal).await;
    // Give in-flight reports a moment to leave; containers keep running under their shims.
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(())
}
