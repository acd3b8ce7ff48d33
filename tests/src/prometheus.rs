//! A real Prometheus for the tests (Debian's `prometheus` package, unpacked by `scripts/deps
//! test` into target/test-tools/prometheus: the server and `promtool`), scraping on
//! 127.0.0.1 every second, killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::registry::free_port;
use crate::{http, wait_for};

/// Where `scripts/deps test` unpacked Prometheus.
pub fn tools() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-tools/prometheus");
    assert!(
        dir.join("prometheus").exists(),
        "{} is missing: run scripts/deps test",
        dir.display()
    );
    dir
}

/// One job Prometheus scrapes: its name, `HOST:PORT`, and the bearer token it sends.
pub struct Job<'a> {
    pub name: &'a str,
    pub target: &'a str,
    pub token: Option<&'a str>,
}

pub struct Prometheus {
    child: Child,
    pub url: String,
}

impl Prometheus {
    /// Starts Prometheus with its data in `dir`, scraping `jobs` every second; returns once
    /// its API answers.
    pub fn start(dir: &Path, jobs: &[Job]) -> Prometheus {
        std::fs::create_dir_all(dir).unwrap();
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n",
        );
        for j in jobs {
            config += &format!(
                "  - job_name: {}\n    static_configs:\n      - targets: [\"{}\"]\n",
                j.name, j.target
            );
            if let Some(t) = j.token {
                config += &format!("    authorization:\n      credentials: \"{t}\"\n");
            }
        }
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(tools().join("prometheus"))
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting prometheus");
        let url = format!("http://127.0.0.1:{port}");
        wait_for("prometheus to answer", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .and_then(|_| {
                    (http("GET", &format!("{url}/-/ready"), None, b"").0 == 200).then_some(())
                })
        });
        Prometheus { child, url }
    }

    /// An instant query's samples: each series' labels and value.
    pub fn query(&self, promql: &str) -> Vec<(serde_json::Value, f64)> {
        let (code, body) = http(
            "GET",
            &format!("{}/api/v1/query?query={}", self.url, encode(promql)),
            None,
            b"",
        );
        assert_eq!(code, 200, "query {promql}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let value = s["value"][1].as_str().unwrap().parse().unwrap();
                (s["metric"].clone(), value)
            })
            .collect()
    }

    /// The one value `promql` gives, once it gives one that `ok` accepts (Prometheus scrapes
    /// every second; what it shows lags by a scrape).
    pub fn wait_value(&self, promql: &str, ok: impl Fn(f64) -> bool) -> f64 {
        wait_for(
            &format!("prometheus to show {promql}"),
            Duration::from_secs(30),
            || {
                let got = self.query(promql);
                (got.len() == 1 && ok(got[0].1)).then(|| got[0].1)
            },
        )
    }
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `promtool check metrics` says of an OpenMetrics exposition (Prometheus's own lint of
/// metric and label names, units, HELP and TYPE lines): its output, and whether it passed.
/// promtool reads the older Prometheus text format, where a counter's HELP and TYPE name the
/// sample (`x_total`) and there is no UNIT or EOF line, so the exposition is first put in that
/// form (the Prometheus server itself reads OpenMetrics as served).
pub fn lint(exposition: &str) -> (bool, String) {
    use std::io::Write;
    let counters: std::collections::HashSet<&str> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut text = String::new();
    for line in exposition.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let header = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| Some((p, line.strip_prefix(p)?)));
        match header {
            Some((p, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let name = if counters.contains(name) {
                    format!("{name}_total")
                } else {
                    name.to_string()
                };
                text += &format!("{p}{name} {tail}\n");
            }
            None => text += &format!("{line}\n"),
        }
    }
    let exposition = text.as_str();
    let mut child = Command::new(tools().join("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}
