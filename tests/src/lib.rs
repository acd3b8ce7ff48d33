//! Harness for skiff's end-to-end tests: starts real `skiff` processes (stopped by PID on every
//! path), builds test images on this machine from the static busybox, and waits for conditions
//! with deadlines instead of sleeping.

pub mod bench;
pub mod browser;
pub mod gate;
pub mod images;
pub mod moto;
pub mod netns;
pub mod prometheus;
pub mod receiver;
pub mod redis;
pub mod registry;
pub mod smtp;
pub mod token_server;
pub mod vm;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `skiff` binary built from this workspace (the test command builds it first).
pub fn skiff_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SKIFF_BIN") {
        return PathBuf::from(p);
    }
    // A test runs as target/<profile>/deps/<test>, a benchmark as target/<profile>/<bench>:
    // the skiff binary of the same profile is beside one or the other.
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().expect("the executable's directory");
    let candidates = [dir.join("skiff"), dir.parent().unwrap_or(dir).join("skiff")];
    match candidates.iter().find(|p| p.is_file()) {
        Some(bin) => bin.clone(),
        None => panic!(
            "{} is missing: build it first (cargo build [--release] --bin skiff) or set SKIFF_BIN",
            candidates[0].display()
        ),
    }
}

/// Polls `check` until it returns Some, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A child process that is killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, dir: &Path, args: &[&str]) -> Proc {
        Proc::spawn_env(name, dir, args, &[])
    }

    /// Like `spawn`, with extra environment variables for this process only.
    pub fn spawn_env(name: &str, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut cmd = skiff_command();
        cmd.args(args).envs(env.iter().copied());
        Proc::spawn_command(cmd, name, dir)
    }

    /// Starts `cmd` (a skiff command line, possibly of another binary), its output in `dir`.
    pub fn spawn_command(mut cmd: Command, name: &str, dir: &Path) -> Proc {
        fs::create_dir_all(dir).unwrap();
        let stdout = dir.join(format!("{name}.out"));
        let stderr = dir.join(format!("{name}.err"));
        let child = cmd
            .env("SKIFF_LOG", "info,skiff_agent=debug,skiff_controller=debug")
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).unwrap())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc {
            name: name.into(),
            child: Some(child),
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(-1, |c| c.id() as i32)
    }

    /// kill -9, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn stdout_text(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits for the "listening on http[s]://ADDR" line a controller or dev prints; returns
    /// the URL.
    pub fn listen_url(&self) -> String {
        wait_for(
            &format!("{} to print its address", self.name),
            Duration::from_secs(20),
            || {
                self.stdout_text().lines().find_map(|l| {
                    let i = l.find("listening on http")?;
                    Some(
                        l[i + "listening on ".len()..]
                            .split_whitespace()
                            .next()?
                            .to_string(),
                    )
                })
            },
        )
    }

    /// The base URL of the HTTP listener (object-store notifications) a controller or dev
    /// prints: http://HOST:PORT.
    pub fn http_url(&self) -> String {
        wait_for(
            &format!("{} to print its HTTP address", self.name),
            Duration::from_secs(20),
            || {
                self.stdout_text().lines().find_map(|l| {
                    let i = l.find("notifications on http://")?;
                    let url = &l[i + "notifications on ".len()..];
                    Some(url.split("/notify").next()?.to_string())
                })
            },
        )
    }

    /// The HOST:PORT of [`Proc::listen_url`].
    pub fn listen_addr(&self) -> String {
        let url = self.listen_url();
        url.split_once("://")
            .map_or(url.clone(), |(_, a)| a.to_string())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Output of one CLI call.
pub struct Cli {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Cli {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }
}

impl std::fmt::Debug for Cli {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// The CLI's config directory for every process the tests start (XDG_CONFIG_HOME), so the
/// API tokens `skiff dev` writes for the CLI stay out of the real home directory.
pub fn config_home() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let base = std::env::var_os("SKIFF_TEST_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let d = base.join(format!("skiff-test-config-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        d
    })
    .clone()
}

/// `skiff` as a command, with the tests' config directory.
pub fn skiff_command() -> Command {
    let mut c = Command::new(skiff_bin());
    c.env("XDG_CONFIG_HOME", config_home());
    c
}

/// Where the CLI looks for the token of a controller address (as `skiff` computes it).
pub fn token_file(addr: &str) -> PathBuf {
    let key: String = addr
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    config_home().join("skiff/tokens").join(key)
}

/// The admin API token the CLI uses for `addr`.
pub fn admin_token(addr: &str) -> String {
    fs::read_to_string(token_file(addr))
        .unwrap_or_else(|e| panic!("no token for {addr}: {e}"))
        .trim()
        .to_string()
}

/// A fresh join string from a TLS controller (`skiff tokens create --role join`).
pub fn join_token(addr: &str) -> String {
    let out = cli(addr, &["tokens", "create", "--join", "-o", "json"]);
    assert_eq!(out.code, 0, "join token: {out:?}");
    out.json()["token"].as_str().unwrap().to_string()
}

impl From<Output> for Cli {
    fn from(out: Output) -> Cli {
        Cli {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Runs `skiff ARGS` against a controller address.
pub fn cli(addr: &str, args: &[&str]) -> Cli {
    skiff_command()
        .args(args)
        .env("SKIFF_ADDR", addr)
        .stdin(Stdio::null())
        .output()
        .expect("running skiff")
        .into()
}

/// `skiff ARGS` with an explicit token (None: no token at all, not even the dev's file).
pub fn cli_as(addr: &str, token: Option<&str>, args: &[&str]) -> Cli {
    let empty = tempfile::tempdir().unwrap();
    let mut c = skiff_command();
    c.args(args).env("SKIFF_ADDR", addr);
    match token {
        Some(t) => c.env("SKIFF_TOKEN", t),
        None => c
            .env("XDG_CONFIG_HOME", empty.path())
            .env_remove("SKIFF_TOKEN"),
    };
    c.stdin(Stdio::null()).output().unwrap().into()
}

/// A new read-only API token (`skiff tokens create --role read-only`).
pub fn read_only_token(addr: &str) -> String {
    cli(
        addr,
        &["tokens", "create", "--role", "read-only", "-o", "json"],
    )
    .json()["token"]
        .as_str()
        .expect("tokens create prints the token")
        .to_string()
}

/// A plain HTTP/1.1 request (loopback test servers): returns the status and the body.
pub fn http(method: &str, url: &str, token: Option<&str>, body: &[u8]) -> (u16, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    http_with(method, url, &headers, body)
}

/// `http` with the request's headers given.
pub fn http_with(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let mut s = std::net::TcpStream::connect(host).expect("connecting");
    let headers: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    // A server refusing a large body may answer and close before reading it all.
    let _ = s.write_all(body);
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// One call in SQS's JSON protocol (`X-Amz-Target: AmazonSQS.<action>`) to a controller's
/// HTTP listener `base`, with a bearer token; the status and the JSON answer.
pub fn sqs(
    base: &str,
    token: &str,
    action: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let auth = format!("Bearer {token}");
    let target = format!("AmazonSQS.{action}");
    let (status, text) = http_with(
        "POST",
        &format!("{base}/"),
        &[
            ("Authorization", &auth),
            ("X-Amz-Target", &target),
            ("Content-Type", "application/x-amz-json-1.0"),
        ],
        body.to_string().as_bytes(),
    );
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")),
    )
}

/// Runs `skiff ARGS` with `input` on its standard input (passwords, secret values).
pub fn cli_stdin(addr: &str, args: &[&str], input: &[u8]) -> Cli {
    let mut child = skiff_command()
        .args(args)
        .env("SKIFF_ADDR", addr)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running skiff");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), input).unwrap();
    child.wait_with_output().expect("running skiff").into()
}

/// A test's working area: processes, data dirs, and the cleanup of every container left behind.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub procs: Vec<Proc>,
}

impl Env {
    pub fn new() -> Env {
        let base = std::env::var_os("SKIFF_TEST_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        fs::create_dir_all(&base).unwrap();
        Env {
            dir: tempfile::Builder::new()
                .prefix("skiff-e2e-")
                .tempdir_in(base)
                .unwrap(),
            procs: Vec::new(),
        }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// A busybox rootfs for this test, as a `dir:` image reference.
    pub fn busybox_image(&self) -> String {
        format!(
            "dir:{}",
            images::busybox_rootfs(&self.path("busybox")).display()
        )
    }

    /// Registers a one-container busybox task definition running `command` (stop timeout 1 s).
    pub fn register_busybox(&self, addr: &str, family: &str, command: &[&str]) {
        self.register_json(
            addr,
            serde_json::json!({"family": family, "containers": [
                {"name": "main", "image": self.busybox_image(), "command": command, "stop_timeout": 1}]}),
        );
    }

    /// Writes a task definition (JSON, its `family` names the file) and registers it with
    /// `skiff taskdefs register -f`, asserting it was accepted.
    pub fn register_json(&self, addr: &str, def: serde_json::Value) {
        let file = self.path(&format!("{}.json", def["family"].as_str().unwrap_or("def")));
        fs::write(&file, def.to_string()).unwrap();
        let out = cli(
            addr,
            &["taskdefs", "register", "-f", file.to_str().unwrap()],
        );
        assert_eq!(out.code, 0, "{out:?}");
    }

    /// Registers `work` (busybox `true`, no network, a tiny reservation) and a rule `name`
    /// that starts one of it for every event whose source is `name`.
    pub fn task_per_event(&self, addr: &str, name: &str) {
        self.register_json(
            addr,
            serde_json::json!({"family": "work", "network_mode": "none", "containers": [{
                "name": "main", "image": self.busybox_image(), "command": ["true"],
                "cpu": 0.01, "memory": 8}]}),
        );
        self.put_yaml(
            addr,
            "rules",
            name,
            &format!("name: {name}\npattern: {{source: [{name}]}}\ntargets:\n  - id: work\n    task: {{task_definition: work}}\n"),
        );
    }

    /// Writes `yaml` to NAME.yaml and puts it with `skiff KIND put -f` (rules, schedules,
    /// topics, …), asserting it was accepted.
    pub fn put_yaml(&self, addr: &str, kind: &str, name: &str, yaml: &str) {
        let f = self.path(&format!("{name}.yaml"));
        fs::write(&f, yaml).unwrap();
        let out = cli(addr, &[kind, "put", "-f", f.to_str().unwrap()]);
        assert_eq!(out.code, 0, "{out:?}");
    }

    /// Starts `skiff dev` on a free port; returns its address.
    pub fn dev(&mut self) -> String {
        self.dev_with(&[])
    }

    /// Starts `skiff dev` with extra flags; returns its address.
    pub fn dev_with(&mut self, extra: &[&str]) -> String {
        self.dev_with_env(extra, &[])
    }

    /// Starts `skiff dev` with extra flags and environment variables; returns its address.
    pub fn dev_with_env(&mut self, extra: &[&str], env: &[(&str, &str)]) -> String {
        let mut cmd = skiff_command();
        cmd.envs(env.iter().copied());
        self.dev_from(cmd, "dev", extra)
    }

    /// Starts `skiff dev` from `cmd` (a skiff binary with its environment, possibly another
    /// build) with data dir and output named `name`; returns its address once its agent is up.
    pub fn dev_from(&mut self, mut cmd: Command, name: &str, extra: &[&str]) -> String {
        let data = self.path(name);
        cmd.args([
            "dev",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args(extra);
        let p = Proc::spawn_command(cmd, name, self.dir.path());
        let addr = format!("http://{}", p.listen_addr());
        self.procs.push(p);
        wait_for("the dev agent to connect", Duration::from_secs(20), || {
            node_connected(&addr, "local").then_some(())
        });
        addr
    }

    /// Starts a controller (on `listen`, e.g. 127.0.0.1:0) with a short node timeout.
    pub fn controller(&mut self, listen: &str, extra: &[&str]) -> (usize, String) {
        let data = self.path("controller");
        let mut args = vec![
            "controller",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            listen,
            "--heartbeat-interval",
            "500ms",
            "--http-listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let p = Proc::spawn("controller", self.dir.path(), &args);
        let addr = p.listen_url();
        if addr.starts_with("https://") {
            // The CLI trusts the cluster CA for this address.
            let ca = token_file(&addr)
                .parent()
                .unwrap()
                .parent()
                .unwrap()
                .join("cas")
                .join(format!(
                    "{}.crt",
                    token_file(&addr).file_name().unwrap().to_string_lossy()
                ));
            fs::create_dir_all(ca.parent().unwrap()).unwrap();
            fs::copy(data.join("pki/ca.crt"), ca).unwrap();
        }
        // What `skiff dev` does for its CLI, done here for a standalone controller: the
        // bootstrap admin token goes where the CLI looks for this address.
        let token =
            fs::read_to_string(data.join("admin.token")).expect("the controller's admin token");
        let file = token_file(&addr);
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(&file, token.trim()).unwrap();
        self.procs.push(p);
        (self.procs.len() - 1, addr)
    }

    /// Starts an agent named `node` (with its own data dir) reporting to `addr`.
    pub fn agent(&mut self, addr: &str, node: &str, extra: &[&str]) -> usize {
        self.agent_on(None, addr, node, extra)
    }

    /// `agent`, on `host` (in its network namespace) when given.
    pub fn agent_on(
        &mut self,
        host: Option<&netns::Host>,
        addr: &str,
        node: &str,
        extra: &[&str],
    ) -> usize {
        let data = self.path(&format!("agent-{node}"));
        let mut args = vec![
            "agent",
            "--controller",
            addr,
            "--node-id",
            node,
            "--data-dir",
            data.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        // A TLS controller admits a new agent with a join string.
        let join;
        if addr.starts_with("https://")
            && !extra.contains(&"--join")
            && !data.join("pki/node.crt").exists()
        {
            join = join_token(addr);
            args.extend(["--join", join.as_str()]);
        }
        let mut cmd = skiff_command();
        cmd.args(&args);
        if let Some(host) = host {
            host.enter(&mut cmd);
        }
        self.procs.push(Proc::spawn_command(
            cmd,
            &format!("agent-{node}"),
            self.dir.path(),
        ));
        let idx = self.procs.len() - 1;
        wait_for(
            &format!("agent {node} to connect"),
            Duration::from_secs(20),
            || node_connected(addr, node).then_some(()),
        );
        idx
    }

    /// What every process printed, for a failing test's message.
    pub fn logs(&self) -> String {
        self.procs
            .iter()
            .map(|p| format!("=== {}\n{}{}", p.name, p.stdout_text(), p.stderr_text()))
            .collect()
    }
}

impl Default for Env {
    fn default() -> Self {
        Env::new()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for p in &mut self.procs {
            p.kill9();
        }
        kill_shims_under(self.dir.path());
        remove_task_cgroups_under(self.dir.path());
        release_networks_under(self.dir.path());
        unmount_under(self.dir.path());
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
            // Keep the directory for a post-mortem.
            let kept = self.dir.path().to_path_buf();
            eprintln!("test files kept in {}", kept.display());
            std::mem::forget(std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().unwrap(),
            ));
        }
    }
}

/// What a reboot does to the iptables rules of every attachment the agent in `agent_dir` had
/// (its tasks' and its warm namespaces'): they are gone. For tests that simulate a reboot by
/// killing processes and unmounting: the kernel's rules would not survive a real one.
pub fn reboot_forgets_the_iptables_rules_of(agent_dir: &Path) {
    for entry in fs::read_dir(agent_dir.join("cni/results"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(bytes) = fs::read(entry.path()) else {
            continue;
        };
        let Ok(cached) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            continue;
        };
        if let Some(id) = cached["attachment"]["containerId"].as_str() {
            forget_iptables_rules(id);
        }
    }
}

/// What a reboot does to one task's iptables rules: they are gone.
fn forget_iptables_rules(id: &str) {
    for table in ["nat", "filter"] {
        let out = Command::new("iptables")
            .args(["-t", table, "-S"])
            .output()
            .unwrap();
        let rules = String::from_utf8_lossy(&out.stdout).to_string();
        let mut chains = Vec::new();
        for line in rules
            .lines()
            .filter(|l| l.contains(id) && l.starts_with("-A "))
        {
            let args = words(&line[3..]);
            let mut cmd = vec!["-t".to_string(), table.to_string(), "-D".to_string()];
            cmd.extend(args.iter().cloned());
            assert!(
                Command::new("iptables")
                    .args(&cmd)
                    .status()
                    .unwrap()
                    .success(),
                "{line}"
            );
            if let Some(i) = args.iter().position(|a| a == "-j") {
                let target = &args[i + 1];
                if target.starts_with("CNI-") && !target.starts_with("CNI-HOSTPORT") {
                    chains.push(target.clone());
                }
            }
        }
        for chain in chains {
            for op in ["-F", "-X"] {
                let _ = Command::new("iptables")
                    .args(["-t", table, op, &chain])
                    .status();
            }
        }
    }
}

/// An `iptables -S` rule's words (double quotes group, backslash escapes).
fn words(s: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted, mut chars) = (Vec::new(), String::new(), false, s.chars());
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.extend(chars.next()),
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// A bridge of a test's own for its agents (`--bridge-name`, `--bridge-subnet`): its
/// agents' credentials endpoint and DNS server listen there, apart from other tests' agents
/// on skiff0. `prefix` (three letters) and `octet` (the range 10.<octet>.<n>.0/24) must be
/// unique to the test. Deleted on drop: declare it before the test's `Env`, which releases
/// every attachment first.
pub struct OwnBridge {
    pub name: String,
    pub subnet: String,
    /// The node's address on it: where its tasks reach servers the test runs on the node.
    pub gateway: String,
}

impl OwnBridge {
    pub fn new(prefix: &str, octet: u8) -> OwnBridge {
        let n = std::process::id() % 250;
        OwnBridge {
            name: format!("{prefix}{n}"),
            subnet: format!("10.{octet}.{n}.0/24"),
            gateway: format!("10.{octet}.{n}.1"),
        }
    }

    /// The agent flags that put its bridge tasks on it.
    pub fn flags(&self) -> [&str; 4] {
        ["--bridge-name", &self.name, "--bridge-subnet", &self.subnet]
    }
}

impl Drop for OwnBridge {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .status();
    }
}

/// Detaches every task network the agents under `dir` left attached (address leases and NAT
/// rules live on the host, outside the test's directory), as their next start would.
pub fn release_networks_under(dir: &Path) {
    let mut stack = vec![(dir.to_path_buf(), 0)];
    while let Some((d, depth)) = stack.pop() {
        let results = d.join("cni").join("results");
        if results.is_dir() {
            if let Ok(nets) = skiff_agent::network::Networks::load(
                Default::default(),
                results,
                d.join("state").join("netns"),
            ) {
                nets.reconcile(|_| false);
            }
        }
        if depth < 3 {
            for e in fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir() && !t.is_symlink()) {
                    stack.push((e.path(), depth + 1));
                }
            }
        }
    }
}

/// Shims outlive agents by design; a test must not leave them (or their containers) behind.
/// The ids of the tasks an agent's state dir (`…/state/tasks`) holds taken but not yet
/// started: their records still say PENDING.
pub fn tasks_starting(tasks: &Path) -> Vec<String> {
    fs::read_dir(tasks)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            fs::read_to_string(e.path().join("task.json"))
                .is_ok_and(|r| r.contains("\"phase\":\"PENDING\""))
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

pub fn kill_shims_under(dir: &Path) {
    for _ in 0..50 {
        let shims = shims_under(dir);
        if shims.is_empty() {
            return;
        }
        for pid in shims {
            // SIGKILL the shim's children (the container init) first, then the shim.
            for child in children_of(pid) {
                unsafe { libc::kill(child, libc::SIGKILL) };
            }
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Pids of the processes whose parent is `pid`.
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // Field 4 is the ppid; the comm field (2) may contain spaces, so split after ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse::<i32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

/// Shims running for containers under `dir`: those named by a `shim.pid` there (pid and
/// start time, as the agent checks them: a shim forked by the zygote has no directory in its
/// command line), and any `skiff shim DIR` whose DIR is under `dir`.
pub fn shims_under(dir: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    for p in shim_pid_files(dir) {
        let text = fs::read_to_string(&p).unwrap_or_default();
        let mut f = text.split_whitespace();
        let (Some(pid), start) = (f.next().and_then(|s| s.parse::<i32>().ok()), f.next()) else {
            continue;
        };
        let alive_same = match start.and_then(|s| s.parse::<u64>().ok()) {
            Some(t) => shim_start_time(pid) == Some(t),
            None => shim_start_time(pid).is_some(),
        };
        if alive_same && !out.contains(&pid) {
            out.push(pid);
        }
    }
    let needle = dir.as_os_str().as_encoded_bytes();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        if args.iter().any(|a| *a == b"shim")
            && args.iter().any(|a| a.starts_with(needle))
            && !out.contains(&pid)
        {
            out.push(pid);
        }
    }
    out
}

/// Every `shim.pid` under `dir` (an agent keeps one per container it started, in
/// `…/tasks/<task>/<container>/`), not looking into root filesystems.
fn shim_pid_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0)];
    while let Some((d, depth)) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() && depth < 8 && e.file_name() != "rootfs" {
                stack.push((e.path(), depth + 1));
            } else if e.file_name() == "shim.pid" {
                out.push(e.path());
            }
        }
    }
    out
}

/// Removes the cgroups of the containers started under `dir` (`/skiff/<task>-<container>` in
/// every hierarchy), once `kill_shims_under` has killed what ran in them: the agent that would
/// have removed them was killed first. rmdir takes only empty cgroups, so nothing running
/// is touched; without this, every test that ends with a task running left its cgroups.
pub fn remove_task_cgroups_under(dir: &Path) {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let roots: Vec<&str> = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && (f[2] == "cgroup" || f[2] == "cgroup2")).then_some(f[1])
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    for pid_file in shim_pid_files(dir) {
        let Some(container_dir) = pid_file.parent() else {
            continue;
        };
        let (Some(container), Some(task)) = (
            container_dir.file_name(),
            container_dir.parent().and_then(Path::file_name),
        ) else {
            continue;
        };
        let name = format!("{}-{}", task.to_string_lossy(), container.to_string_lossy());
        for root in &roots {
            let cgroup = Path::new(root).join("skiff").join(&name);
            // A killed process leaves its cgroup a moment after the signal.
            while let Err(e) = fs::remove_dir(&cgroup) {
                if e.kind() == std::io::ErrorKind::NotFound || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Field 22 of /proc/PID/stat (the process's start time), as the shim records it; None for a
/// process that is gone or only a zombie waiting to be reaped.
fn shim_start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    if matches!(fields.next(), Some("Z") | Some("X")) {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// Lazily unmounts everything mounted under `dir`, deepest first.
pub fn unmount_under(dir: &Path) {
    let Ok(mut f) = fs::File::open("/proc/self/mounts") else {
        return;
    };
    let mut text = String::new();
    let _ = f.read_to_string(&mut text);
    let prefix = dir.to_string_lossy();
    let mut targets: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| m.starts_with(prefix.as_ref()))
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for t in targets {
        if let Ok(c) = std::ffi::CString::new(t) {
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Whether the controller lists `node` as connected.
pub fn node_connected(addr: &str, node: &str) -> bool {
    let out = cli(addr, &["nodes", "ls", "-o", "json"]);
    out.code == 0
        && serde_json::from_str::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .is_some_and(|nodes| {
                nodes
                    .iter()
                    .any(|n| n["id"] == node && n["connected"] == true)
            })
}

/// A task as `skiff tasks describe -o json` shows it.
pub fn task(addr: &str, id: &str) -> serde_json::Value {
    let out = cli(addr, &["tasks", "describe", id, "-o", "json"]);
    assert_eq!(out.code, 0, "describe {id}: {out:?}");
    out.json()
}

/// Waits until a task reaches `status`; returns the task.
pub fn wait_status(addr: &str, id: &str, status: &str, timeout: Duration) -> serde_json::Value {
    wait_for(&format!("task {id} to be {status}"), timeout, || {
        let t = task(addr, id);
        (t["lastStatus"] == status).then_some(t)
    })
}

/// Runs a task that must fail to start (`run-task --wait` exits 125); returns its stopped reason.
pub fn failed_to_start(addr: &str, args: &[&str]) -> String {
    let mut all = vec!["run-task", "--wait", "-o", "json"];
    all.extend_from_slice(args);
    let out = cli(addr, &all);
    assert_eq!(out.code, 125, "{args:?} should fail to start: {out:?}");
    let t = out.json();
    assert_eq!(t["stopCode"], "TaskFailedToStart", "{t}");
    t["stoppedReason"].as_str().unwrap_or_default().to_string()
}

/// Starts a task (without waiting) and returns its id.
pub fn run_task(addr: &str, args: &[&str]) -> String {
    let mut all = vec!["run-task"];
    all.extend_from_slice(args);
    let out = cli(addr, &all);
    assert_eq!(out.code, 0, "run-task: {out:?}");
    out.stdout.trim().to_string()
}

/// `skiff events put --source SOURCE` retried until acknowledged (through a controller's
/// restart), at most `for_at_most`; returns the event's id. A put that failed may still have
/// been stored: callers count only acknowledged ids.
pub fn put_until_acknowledged(addr: &str, source: &str, for_at_most: Duration) -> String {
    let deadline = Instant::now() + for_at_most;
    loop {
        let out = cli(
            addr,
            &["events", "put", "--source", source, "--detail-type", "Tick"],
        );
        if out.code == 0 {
            return out.stdout.trim().to_string();
        }
        assert!(Instant::now() < deadline, "never acknowledged: {out:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every task of `group` (`tasks ls --group G --limit 0`), newest first.
pub fn group_tasks(addr: &str, group: &str) -> Vec<serde_json::Value> {
    cli(
        addr,
        &[
            "tasks", "ls", "--group", group, "--limit", "0", "-o", "json",
        ],
    )
    .json()
    .as_array()
    .cloned()
    .unwrap_or_default()
}

/// The host:port part of a controller's address, to start it again on the same port.
pub fn hostport(addr: &str) -> &str {
    addr.trim_start_matches("http://")
        .trim_start_matches("https://")
}

/// `skiff events put`: one event on the bus; returns its id.
pub fn put_event(addr: &str, source: &str, detail_type: &str, detail: &str) -> String {
    let out = cli(
        addr,
        &[
            "events",
            "put",
            "--source",
            source,
            "--detail-type",
            detail_type,
            "--detail",
            detail,
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    out.stdout.trim().to_string()
}
