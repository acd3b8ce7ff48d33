//! A real S3-compatible object store with STS and IAM for the tests: moto in server mode (from
//! PyPI, installed by `scripts/deps test` into target/test-tools/moto), started on a free
//! 127.0.0.1 port by `tests/moto_server.py`, which sets up users, a role and a bucket and then
//! enforces request signing and policies.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct Moto {
    child: Child,
    /// http://127.0.0.1:PORT
    pub endpoint: String,
    /// The ARN of the role tasks' credentials are minted from.
    pub role_arn: String,
    /// Keys of the user that may assume it (given to skiff as secrets).
    pub controller_key_id: String,
    pub controller_secret: String,
    /// Keys of a user that may read photos/reports/* only (the static-keys provider).
    pub static_key_id: String,
    pub static_secret: String,
    /// Keys of a user that may do anything in `photos`.
    pub uploader_key_id: String,
    pub uploader_secret: String,
}

/// The venv holding moto and boto3.
pub fn venv() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let v = root.join("target/test-tools/moto");
    assert!(
        v.join("bin/python").exists(),
        "{} is missing: run scripts/deps test",
        v.display()
    );
    v.canonicalize().unwrap()
}

/// The venv's python, and the directories a container needs bind-mounted (read-only) to run
/// it with boto3: the venv, the interpreter's own prefix, and the system libraries.
pub fn python_mounts() -> (PathBuf, Vec<String>) {
    let v = venv();
    let python = v.join("bin/python");
    let out = Command::new(&python)
        .args(["-c", "import sys; print(sys.base_prefix)"])
        .output()
        .expect("running the venv's python");
    let base = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let mut mounts = vec![
        format!("{0}:{0}:ro", v.display()),
        format!("{base}:{base}:ro"),
        "/usr:/usr:ro".to_string(),
    ];
    for lib in ["/lib", "/lib64"] {
        if Path::new(lib).exists() {
            mounts.push(format!("{lib}:{lib}:ro"));
        }
    }
    (python, mounts)
}

impl Moto {
    pub fn start() -> Moto {
        Moto::start_listening("127.0.0.1")
    }

    /// Starts it listening on `ip` (its `endpoint` still names 127.0.0.1): for tasks that
    /// reach it through skiff's bridge, at the bridge's gateway address.
    pub fn start_listening(ip: &str) -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("moto_server.py");
        let mut child = Command::new(venv().join("bin/python"))
            .arg(&script)
            .arg(port.to_string())
            .arg(ip)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto");
        // The first line comes once the server is set up (or never, if it died: then EOF).
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("moto did not start ({e}): {line:?}"));
        let s = |k: &str| v[k].as_str().unwrap().to_string();
        Moto {
            child,
            endpoint: s("endpoint"),
            role_arn: s("role_arn"),
            controller_key_id: s("controller_key_id"),
            controller_secret: s("controller_secret"),
            static_key_id: s("static_key_id"),
            static_secret: s("static_secret"),
            uploader_key_id: s("uploader_key_id"),
            uploader_secret: s("uploader_secret"),
        }
    }

    /// Runs Python with boto3 as the uploader: `s3` is a client for this server. Returns what
    /// the script printed; panics if it failed.
    pub fn s3(&self, script: &str) -> String {
        let prelude = "import boto3, os\n\
            s3 = boto3.client('s3', endpoint_url=os.environ['MOTO'], region_name='us-east-1', \
            aws_access_key_id=os.environ['KEY'], aws_secret_access_key=os.environ['SECRET'])\n";
        let out = Command::new(venv().join("bin/python"))
            .args(["-c", &format!("{prelude}{script}")])
            .env("MOTO", &self.endpoint)
            .env("KEY", &self.uploader_key_id)
            .env("SECRET", &self.uploader_secret)
            .output()
            .expect("running python");
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
