//! A real `redis-server` on 127.0.0.1 for the tests and benchmarks (Debian's, from
//! `scripts/deps test|bench`), killed when dropped, and `redis-cli` against it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::registry::free_port;
use crate::wait_for;

pub struct RedisServer {
    pub port: u16,
    child: Child,
}

impl RedisServer {
    /// Starts redis-server with its files in `dir` and `extra` settings (e.g. `--appendfsync
    /// always`); returns once it accepts connections.
    pub fn start(dir: &Path, extra: &[&str]) -> RedisServer {
        let port = free_port();
        std::fs::create_dir_all(dir).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--dir", dir.to_str().unwrap(), "--save", ""])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/deps test installs it)");
        wait_for("redis to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        RedisServer { port, child }
    }

    /// Runs one command with redis-cli; returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stops the server (as if it went away).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
