//! `skiff taskdefs import-ecs FILE.json`: an ECS task definition — as `aws ecs
//! describe-task-definition` prints it (`{"taskDefinition": {…}}`) or as it is registered —
//! made into a skiff task definition file (the format of `taskdefs register -f`). Every field
//! of the input is accounted for: carried over as it is, carried over changed (with what
//! changed), or not carried over (with why). None is dropped silently; empty values carry
//! nothing and are not listed.

use serde::Serialize;
use serde_json::{json, Map, Value};

/// What became of the input's fields.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Import {
    /// The skiff task definition (taskdefs register -f takes it as JSON or YAML).
    pub task_definition: Value,
    /// Fields carried over as they are.
    pub carried_over: Vec<String>,
    /// Fields carried over with a change, and the change.
    pub changed: Vec<Note>,
    /// Fields skiff has no counterpart for, and why they do not matter or what to do instead.
    pub not_carried_over: Vec<Note>,
}

#[derive(Debug, Serialize)]
pub struct Note {
    pub field: String,
    pub note: String,
}

impl Import {
    fn keep(&mut self, field: String) {
        self.carried_over.push(field);
    }
    fn change(&mut self, field: String, note: impl Into<String>) {
        self.changed.push(Note {
            field,
            note: note.into(),
        });
    }
    fn drop(&mut self, field: String, note: impl Into<String>) {
        self.not_carried_over.push(Note {
            field,
            note: note.into(),
        });
    }
}

/// Whether a value carries nothing (null, "", [], {}): such fields are not listed.
fn empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// The last segment of an ARN's resource (`arn:…:role/Name` → Name, `…:secret:db-AbCdEf` →
/// db-AbCdEf, `…:parameter/app/db` → db).
fn arn_name(arn: &str) -> String {
    arn.rsplit(['/', ':']).next().unwrap_or(arn).to_string()
}

/// Converts ECS JSON; an error names the field that cannot be read.
pub fn convert(input: &Value) -> Result<Import, String> {
    let td = match input.get("taskDefinition") {
        Some(td) => td,
        None => input,
    };
    let td = td
        .as_object()
        .ok_or("the file is not an ECS task definition (a JSON object)")?;
    let mut out = Import::default();
    if input.get("tags").is_some_and(|t| !empty(t)) {
        out.drop("tags".into(), "skiff task definitions have no tags");
    }
    let family = td
        .get("family")
        .and_then(Value::as_str)
        .filter(|f| !f.is_empty())
        .ok_or("family: missing (every ECS task definition has one)")?;
    out.keep("family".into());
    let mut def = Map::new();
    def.insert("family".into(), json!(family));
    let volumes = host_volumes(td, &mut out);
    let containers = td
        .get("containerDefinitions")
        .and_then(Value::as_array)
        .filter(|c| !c.is_empty())
        .ok_or("containerDefinitions: missing or empty")?;
    let mut converted = Vec::new();
    for (i, c) in containers.iter().enumerate() {
        converted.push(container(i, c, &volumes, &mut out)?);
    }
    task_level(td, &mut def, &mut converted, &mut out);
    def.insert("containers".into(), Value::Array(converted));
    out.task_definition = Value::Object(def);
    Ok(out)
}

/// The task's own fields (other than family, containers and volumes).
fn task_level(
    td: &Map<String, Value>,
    def: &mut Map<String, Value>,
    containers: &mut [Value],
    out: &mut Import,
) {
    for (key, v) in td {
        if empty(v) || matches!(key.as_str(), "family" | "containerDefinitions" | "volumes") {
            continue;
        }
        let field = key.clone();
        match key.as_str() {
            "networkMode" => match v.as_str().unwrap_or_default() {
                "awsvpc" => {
                    def.insert("network_mode".into(), json!("bridge"));
                    out.change(field, "awsvpc became bridge: each task gets a network namespace and an address of its own, on the node's skiff bridge");
                }
                "bridge" => {
                    def.insert("network_mode".into(), json!("bridge"));
                    out.keep(field);
                }
                "host" => {
                    def.insert("network_mode".into(), json!("host"));
                    out.keep(field);
                }
                "none" => {
                    def.insert("network_mode".into(), json!("none"));
                    out.keep(field);
                }
                other => out.drop(field, format!("network mode {other:?} has no skiff counterpart")),
            },
            "cpu" | "memory" => {
                // Task-level sizes (Fargate's "256" CPU units, "512" MiB): skiff limits each
                // container, so a lone container without its own takes the task's.
                let n = v
                    .as_str()
                    .and_then(|s| s.trim().parse::<f64>().ok())
                    .or_else(|| v.as_f64());
                let own = if key == "cpu" { "cpu" } else { "memory" };
                match (n, &mut *containers) {
                    (Some(n), [only]) if only.get(own).is_none() => {
                        let value = if key == "cpu" { json!(n / 1024.0) } else { json!(n as u64) };
                        only[own] = value;
                        out.change(field, format!("the task's {key} became its one container's (skiff limits containers, not tasks)"));
                    }
                    _ => out.drop(field, format!("skiff limits each container, not the task: give each container its {key}")),
                }
            }
            "taskRoleArn" => {
                let role = arn_name(v.as_str().unwrap_or_default());
                def.insert("task_role".into(), json!(role));
                out.change(field, format!("the IAM role became skiff role {role:?}: define it with skiff roles put (what it may reach in skiff and the object store)"));
            }
            "executionRoleArn" => out.drop(field, "the agent pulls images and reads secrets itself: registry credentials and secrets are stored in the controller (skiff registry-creds put, skiff secrets put)"),
            "requiresCompatibilities" | "compatibilities" => out.drop(field, "launch types (EC2, FARGATE) do not apply: every node runs any task that fits"),
            "runtimePlatform" => {
                let os = v.get("operatingSystemFamily").and_then(Value::as_str).unwrap_or("LINUX");
                if os == "LINUX" {
                    out.drop(field, "Linux is all skiff runs; the CPU architecture is the image's (its index picks the node's platform)");
                } else {
                    out.drop(field, format!("{os} containers cannot run on skiff (Linux only)"));
                }
            }
            "placementConstraints" => out.drop(field, "placement belongs to services in skiff: placement.constraints in the service file"),
            "proxyConfiguration" => out.drop(field, "App Mesh proxies are not supported"),
            "ipcMode" | "pidMode" => out.drop(field, "every task has its own IPC and PID namespaces"),
            "ephemeralStorage" => out.drop(field, "containers write to the node's disk in the agent's data dir (its disk budget: image_disk_budget)"),
            "inferenceAccelerators" => out.drop(field, "accelerators are not supported"),
            "taskDefinitionArn" | "revision" | "status" | "requiresAttributes" | "registeredAt"
            | "registeredBy" | "deregisteredAt" => out.drop(field, "ECS's record of the registration: skiff numbers its own revisions"),
            "tags" => out.drop(field, "skiff task definitions have no tags"),
            _ => out.drop(field, "not known to skiff's importer"),
        }
    }
}

/// The task's volumes with a host path, by name; others are listed as not carried over.
fn host_volumes(td: &Map<String, Value>, out: &mut Import) -> Map<String, Value> {
    let mut host = Map::new();
    for (i, v) in td
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let name = v.get("name").and_then(Value::as_str).unwrap_or_default();
        match v.get("host").and_then(|h| h.get("sourcePath")).and_then(Value::as_str) {
            Some(path) if !path.is_empty() => {
                host.insert(name.to_string(), json!(path));
                out.change(format!("volumes[{i}]"), format!("volume {name:?} ({path} on the node) became a bind mount of each container that mounts it (bind mounts need an admin's token to register)"));
            }
            _ => out.drop(format!("volumes[{i}]"), format!("volume {name:?}: only host paths are supported (no Docker volumes, EFS or FSx)")),
        }
    }
    host
}

fn container(
    i: usize,
    c: &Value,
    volumes: &Map<String, Value>,
    out: &mut Import,
) -> Result<Value, String> {
    let at = |k: &str| format!("containerDefinitions[{i}].{k}");
    let c = c
        .as_object()
        .ok_or_else(|| format!("containerDefinitions[{i}]: not an object"))?;
    let mut s = Map::new();
    for (key, v) in c {
        if empty(v) {
            continue;
        }
        let field = at(key);
        let copy = |s: &mut Map<String, Value>, to: &str| {
            s.insert(to.into(), v.clone());
        };
        match key.as_str() {
            "name" | "image" | "command" | "essential" | "user" | "privileged" => {
                copy(&mut s, key);
                out.keep(field);
            }
            "entryPoint" => {
                copy(&mut s, "entrypoint");
                out.keep(field);
            }
            "workingDirectory" => {
                copy(&mut s, "working_dir");
                out.keep(field);
            }
            "readonlyRootFilesystem" => {
                copy(&mut s, "readonly_root_filesystem");
                out.keep(field);
            }
            "environment" => {
                let mut env = Map::new();
                for e in v.as_array().into_iter().flatten() {
                    let (Some(n), Some(val)) = (e.get("name").and_then(Value::as_str), e.get("value").and_then(Value::as_str)) else {
                        return Err(format!("{field}: each entry needs a name and a value"));
                    };
                    env.insert(n.into(), json!(val));
                }
                s.insert("environment".into(), Value::Object(env));
                out.keep(field);
            }
            "cpu" => {
                let units = v.as_f64().ok_or_else(|| format!("{field}: not a number"))?;
                s.insert("cpu".into(), json!(units / 1024.0));
                out.change(field, format!("{units} CPU units became {} vCPU (1024 units = 1 vCPU)", units / 1024.0));
            }
            "memory" => {
                copy(&mut s, "memory");
                out.keep(field);
            }
            "memoryReservation" => {
                if c.get("memory").is_some_and(|m| !empty(m)) {
                    out.drop(field, "skiff has one memory size, the hard limit (memory); the soft reservation is not used");
                } else {
                    copy(&mut s, "memory");
                    out.change(field, "the soft reservation became the memory limit (skiff reserves and limits one size)");
                }
            }
            "stopTimeout" => {
                copy(&mut s, "stop_timeout");
                out.keep(field);
            }
            "portMappings" => {
                let mut ports = Vec::new();
                for (j, p) in v.as_array().into_iter().flatten().enumerate() {
                    let cp = p.get("containerPort").and_then(Value::as_u64).ok_or_else(|| format!("{field}[{j}].containerPort: missing"))?;
                    let mut m = json!({"container_port": cp});
                    match p.get("hostPort").and_then(Value::as_u64) {
                        Some(hp) if hp > 0 => m["host_port"] = json!(hp),
                        _ => out.change(format!("{field}[{j}].hostPort"), format!("no host port (ECS picks one): skiff publishes container port {cp} on the same host port")),
                    }
                    if let Some(proto) = p.get("protocol").and_then(Value::as_str) {
                        m["protocol"] = json!(proto);
                    }
                    for k in p.as_object().into_iter().flatten().map(|(k, _)| k) {
                        if !matches!(k.as_str(), "containerPort" | "hostPort" | "protocol") {
                            out.drop(format!("{field}[{j}].{k}"), "port names, app protocols and ranges are not supported");
                        }
                    }
                    ports.push(m);
                }
                s.insert("port_mappings".into(), Value::Array(ports));
                out.keep(field);
            }
            "healthCheck" => {
                let mut h = Map::new();
                for (k, hv) in v.as_object().into_iter().flatten() {
                    let to = match k.as_str() {
                        "command" => "command",
                        "interval" => "interval",
                        "timeout" => "timeout",
                        "retries" => "retries",
                        "startPeriod" => "start_period",
                        _ => {
                            out.drop(format!("{field}.{k}"), "not a health check setting skiff knows");
                            continue;
                        }
                    };
                    h.insert(to.into(), hv.clone());
                }
                s.insert("health_check".into(), Value::Object(h));
                out.keep(field);
            }
            "secrets" => {
                let mut secrets = Vec::new();
                for e in v.as_array().into_iter().flatten() {
                    let name = e.get("name").and_then(Value::as_str).unwrap_or_default();
                    let from = arn_name(e.get("valueFrom").and_then(Value::as_str).unwrap_or_default());
                    secrets.push(json!({"name": name, "value_from": from}));
                }
                s.insert("secrets".into(), Value::Array(secrets));
                out.change(field, "each secret's ARN became the name of a skiff secret: store the values with skiff secrets put NAME");
            }
            "repositoryCredentials" => {
                let arn = v.get("credentialsParameter").and_then(Value::as_str).unwrap_or_default();
                let name = arn_name(arn);
                s.insert("repository_credentials".into(), json!(name));
                out.change(field, format!("became registry credentials {name:?}: store them with skiff registry-creds put"));
            }
            "mountPoints" => {
                let mut mounts = Vec::new();
                for (j, m) in v.as_array().into_iter().flatten().enumerate() {
                    let vol = m.get("sourceVolume").and_then(Value::as_str).unwrap_or_default();
                    let target = m.get("containerPath").and_then(Value::as_str).unwrap_or_default();
                    match volumes.get(vol) {
                        Some(src) => mounts.push(json!({"source": src, "target": target, "read_only": m.get("readOnly").and_then(Value::as_bool).unwrap_or(false)})),
                        None => out.drop(format!("{field}[{j}]"), format!("volume {vol:?} is not a host path (see volumes)")),
                    }
                }
                if !mounts.is_empty() {
                    s.insert("mounts".into(), Value::Array(mounts));
                    out.keep(field);
                }
            }
            "linuxParameters" => {
                for (k, lv) in v.as_object().into_iter().flatten() {
                    if empty(lv) {
                        continue;
                    }
                    if k == "initProcessEnabled" {
                        s.insert("init_process_enabled".into(), lv.clone());
                        out.keep(format!("{field}.{k}"));
                    } else {
                        out.drop(format!("{field}.{k}"), "skiff sets capabilities, devices, tmpfs and shared memory itself (a privileged container gets every capability)");
                    }
                }
            }
            "logConfiguration" => out.drop(field, "the agent keeps each container's output itself: skiff tasks logs ID [--follow]"),
            "dependsOn" => out.drop(field, "containers of a task start together; start order and conditions are not supported"),
            "links" | "dnsServers" | "dnsSearchDomains" | "extraHosts" | "hostname" | "disableNetworking" => out.drop(field, "skiff's networks name tasks and services themselves (NAME.skiff.internal on the bridge)"),
            "dockerLabels" | "dockerSecurityOptions" => out.drop(field, "there is no Docker: labels and security options have no meaning"),
            "ulimits" => out.drop(field, "containers get the agent's default resource limits"),
            "volumesFrom" => out.drop(field, "share a host path with mountPoints instead"),
            "environmentFiles" => out.drop(field, "environment files in S3 are not read: put the variables in environment"),
            "firelensConfiguration" => out.drop(field, "FireLens log routing is not supported"),
            "systemControls" => out.drop(field, "namespaced sysctls are not supported"),
            "resourceRequirements" => out.drop(field, "GPUs and accelerators are not supported"),
            "interactive" | "pseudoTerminal" => out.drop(field, "containers run without a terminal"),
            "startTimeout" => out.drop(field, "the agent's start_timeout applies to every container"),
            "credentialSpecs" => out.drop(field, "gMSA credential specs are Windows-only"),
            _ => out.drop(field, "not known to skiff's importer"),
        }
    }
    if !s.contains_key("name") || !s.contains_key("image") {
        return Err(format!(
            "containerDefinitions[{i}]: name and image are required"
        ));
    }
    Ok(Value::Object(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arn_names_are_their_last_segment() {
        assert_eq!(
            arn_name("arn:aws:iam::123456789012:role/AmazonECSTaskS3BucketRole"),
            "AmazonECSTaskS3BucketRole"
        );
        assert_eq!(
            arn_name("arn:aws:secretsmanager:region:aws_account_id:secret:splunk-token-KnrBkD"),
            "splunk-token-KnrBkD"
        );
        assert_eq!(arn_name("arn:aws:ssm:us-east-1:1:parameter/app/db"), "db");
        assert_eq!(arn_name("plain"), "plain");
    }
}
