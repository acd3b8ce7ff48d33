//! Registry credentials: a task's own (stored in the controller, attached to its task
//! definition) or the node's docker-style `config.json`; anonymous otherwise.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine;
use serde::Deserialize;

/// A username and password for one registry. Debug never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// The registry they are for (HOST[:PORT], `docker.io`); they are sent nowhere else.
    pub server: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("server", &self.server)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// `https://index.docker.io/v1/` → `docker.io`; `http://host:5000/x` → `host:5000`.
pub fn normalize_registry(key: &str) -> String {
    let host = key
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".into()
        }
        _ => host,
    }
}

/// The credentials a docker `config.json` holds for `registry`; Ok(None) if the file does not
/// exist or names no such registry. Credential helpers (`credsStore`) are not consulted.
pub fn from_docker_config(path: &Path, registry: &str) -> Result<Option<Credentials>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let config: DockerConfig = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{}: not a docker config.json: {e}", path.display()))?;
    let want = normalize_registry(registry);
    let Some(entry) = config
        .auths
        .iter()
        .find(|(k, _)| normalize_registry(k) == want)
        .map(|(_, v)| v)
    else {
        return Ok(None);
    };
    if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
        return Ok(Some(Credentials {
            username: u.clone(),
            password: p.clone(),
            server: want,
        }));
    }
    let Some(auth) = &entry.auth else {
        return Ok(None);
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .map_err(|e| format!("{}: auths.{want}.auth is not base64: {e}", path.display()))?;
    let text = String::from_utf8(decoded)
        .map_err(|_| format!("{}: auths.{want}.auth is not UTF-8", path.display()))?;
    let (username, password) = text.split_once(':').ok_or_else(|| {
        format!(
            "{}: auths.{want}.auth does not decode to user:password",
            path.display()
        )
    })?;
    Ok(Some(Credentials {
        username: username.into(),
        password: password.into(),
        server: want,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_entries_are_found_by_normalized_registry() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret:x");
        std::fs::write(
            &p,
            format!(
                r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}},
                "http://127.0.0.1:5000":{{"username":"bob","password":"pw"}}}}}}"#
            ),
        )
        .unwrap();
        let hub = from_docker_config(&p, "docker.io").unwrap().unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("alice", "s3cret:x")
        );
        let local = from_docker_config(&p, "127.0.0.1:5000").unwrap().unwrap();
        assert_eq!(local.username, "bob");
        assert_eq!(from_docker_config(&p, "ghcr.io").unwrap(), None);
        assert!(!format!("{hub:?}").contains("s3cret"));
        assert_eq!(
            from_docker_config(&dir.path().join("none"), "x").unwrap(),
            None
        );
        std::fs::write(&p, "{").unwrap();
        assert!(from_docker_config(&p, "x")
            .unwrap_err()
            .contains("config.json"));
    }
}
