//! `skiff taskdefs import-ecs` on real ECS task definitions from AWS's public documentation
//! (tests/fixtures/ecs, sources in its README): every field of each is accounted for —
//! carried over, changed with a note, or listed as not carried over with why — and the
//! results register with a real controller and read back as skiff task definitions.

use std::path::{Path, PathBuf};

use serde_json::Value;
use skiff_tests::{cli, Env};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/ecs")
        .join(name)
}

/// `import-ecs FILE -o json` (no controller needed).
fn import(addr: &str, name: &str) -> Value {
    let out = cli(
        addr,
        &[
            "taskdefs",
            "import-ecs",
            fixture(name).to_str().unwrap(),
            "-o",
            "json",
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    out.json()
}

/// Every non-empty field of the input is named by the import, itself or below it.
fn assert_every_field_accounted_for(name: &str, import: &Value) {
    let input: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap();
    let td = input.get("taskDefinition").unwrap_or(&input);
    let mut named: Vec<String> = import["carriedOver"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    for list in ["changed", "notCarriedOver"] {
        named.extend(
            import[list]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["field"].as_str().unwrap().to_string()),
        );
    }
    let empty = |v: &Value| match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::String(s) => s.is_empty(),
        _ => false,
    };
    let covered = |path: &str| {
        named.iter().any(|f| {
            f == path || f.starts_with(&format!("{path}.")) || f.starts_with(&format!("{path}["))
        })
    };
    let mut paths = Vec::new();
    for (k, v) in td.as_object().unwrap() {
        if empty(v) {
            continue;
        }
        match k.as_str() {
            "containerDefinitions" => {
                for (i, c) in v.as_array().unwrap().iter().enumerate() {
                    for (ck, cv) in c.as_object().unwrap() {
                        if !empty(cv) {
                            paths.push(format!("containerDefinitions[{i}].{ck}"));
                        }
                    }
                }
            }
            "volumes" => {
                for i in 0..v.as_array().unwrap().len() {
                    paths.push(format!("volumes[{i}]"));
                }
            }
            _ => paths.push(k.clone()),
        }
    }
    assert!(!paths.is_empty());
    for p in paths {
        assert!(covered(&p), "{name}: {p} is not accounted for: {import:#}");
    }
}

fn note<'a>(import: &'a Value, list: &str, field: &str) -> &'a str {
    import[list]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["field"] == field)
        .unwrap_or_else(|| panic!("{field} not in {list}: {import:#}"))["note"]
        .as_str()
        .unwrap()
}

#[test]
fn ecs_task_definitions_from_the_aws_docs_import_with_every_field_accounted_for() {
    let mut env = Env::new();
    let addr = env.dev();

    for name in [
        "webserver-fargate.json",
        "ecr-task-role.json",
        "entrypoint-command.json",
        "container-dependency.json",
        "sleep360-describe.json",
        "web-timer-volumes.json",
    ] {
        assert_every_field_accounted_for(name, &import(&addr, name));
    }

    // Fargate's web server: task-level sizes become its one container's, awsvpc becomes
    // bridge, CloudWatch logging and the execution role are named as not carried over.
    let web = import(&addr, "webserver-fargate.json");
    let c = &web["taskDefinition"]["containers"][0];
    assert_eq!(c["cpu"], 0.25);
    assert_eq!(c["memory"], 512);
    assert_eq!(c["entrypoint"], serde_json::json!(["sh", "-c"]));
    assert_eq!(c["port_mappings"][0]["container_port"], 80);
    assert_eq!(web["taskDefinition"]["network_mode"], "bridge");
    assert!(note(
        &web,
        "notCarriedOver",
        "containerDefinitions[0].logConfiguration"
    )
    .contains("skiff tasks logs"));
    note(&web, "notCarriedOver", "executionRoleArn");
    note(&web, "notCarriedOver", "requiresCompatibilities");
    assert!(note(&web, "changed", "networkMode").contains("bridge"));

    // describe-task-definition's document: ECS's bookkeeping is named, the container kept.
    let sleep = import(&addr, "sleep360-describe.json");
    for f in ["taskDefinitionArn", "revision", "status", "compatibilities"] {
        note(&sleep, "notCarriedOver", f);
    }
    let c = &sleep["taskDefinition"]["containers"][0];
    assert_eq!(c["command"], serde_json::json!(["sleep", "360"]));
    assert_eq!(c["cpu"], 10.0 / 1024.0);

    // Container dependency: dependsOn and the App Mesh proxy are not carried over; the health
    // check is, with ECS's seconds.
    let mesh = import(&addr, "container-dependency.json");
    note(&mesh, "notCarriedOver", "containerDefinitions[0].dependsOn");
    note(&mesh, "notCarriedOver", "proxyConfiguration");
    let hc = &mesh["taskDefinition"]["containers"][1]["health_check"];
    assert_eq!(
        hc["command"],
        serde_json::json!(["CMD-SHELL", "echo hello"])
    );
    assert_eq!(hc["interval"], 5);

    // Registered with a real controller, they read back as skiff task definitions: straight
    // from the import, and through a YAML file written with --out.
    let out = cli(
        &addr,
        &[
            "taskdefs",
            "import-ecs",
            fixture("sleep360-describe.json").to_str().unwrap(),
            "--register",
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("registered sleep360:1"), "{out:?}");
    assert!(
        out.stderr.contains("not carried over: taskDefinitionArn"),
        "{out:?}"
    );
    let d = cli(&addr, &["taskdefs", "describe", "sleep360", "-o", "json"]).json();
    assert_eq!(
        d["containers"][0]["command"],
        serde_json::json!(["sleep", "360"])
    );
    assert_eq!(d["containers"][0]["memoryMib"], 10);

    let yaml = env.path("web-timer.yaml");
    let out = cli(
        &addr,
        &[
            "taskdefs",
            "import-ecs",
            fixture("web-timer-volumes.json").to_str().unwrap(),
            "--out",
            yaml.to_str().unwrap(),
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let registered = cli(
        &addr,
        &["taskdefs", "register", "-f", yaml.to_str().unwrap()],
    );
    assert_eq!(registered.code, 0, "{registered:?}");
    let d = cli(&addr, &["taskdefs", "describe", "web-timer", "-o", "json"]).json();
    assert_eq!(d["containers"].as_array().unwrap().len(), 2, "{d:#}");
    let mounts = &d["containers"][0]["mounts"];
    assert_eq!(mounts[0]["source"], "/ecs/webdata", "{d:#}");
    assert_eq!(mounts[0]["target"], "/usr/share/nginx/html");
    assert_eq!(mounts[0]["readOnly"], true);

    // Not an ECS task definition: a clear error naming what is missing.
    let bad = env.path("bad.json");
    std::fs::write(&bad, r#"{"containerDefinitions": []}"#).unwrap();
    let out = cli(&addr, &["taskdefs", "import-ecs", bad.to_str().unwrap()]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("family: missing"), "{out:?}");
}
