//! Task roles end to end: a real object store with STS (moto in server mode), real containers,
//! and unmodified AWS SDK code (boto3) inside them reading its credentials from the agent's
//! container-credentials endpoint.

use std::time::Duration;

use skiff_tests::moto::{python_mounts, Moto};
use skiff_tests::{cli, cli_as, cli_stdin, run_task, wait_for, wait_status, Env, OwnBridge};

fn put_secret(addr: &str, name: &str, value: &str) {
    let out = cli_stdin(addr, &["secrets", "put", name], value.as_bytes());
    assert_eq!(out.code, 0, "{out:?}");
}

/// `skiff dev` with the provider's keys stored as secrets and two roles: `thumbnailer`
/// (STS: read incoming/, read-write thumbs/; may run and stop `thumbs` tasks, list and
/// describe any) and `reports` (static keys that may read reports/ only).
fn cluster_with_roles(env: &mut Env, moto: &Moto) -> String {
    let addr = env.dev_with(&["--credentials-listen", "127.0.0.1:0"]);
    put_secret(&addr, "sts-key-id", &moto.controller_key_id);
    put_secret(&addr, "sts-secret", &moto.controller_secret);
    put_secret(&addr, "static-key-id", &moto.static_key_id);
    put_secret(&addr, "static-secret", &moto.static_secret);
    let thumbnailer = env.path("thumbnailer.yaml");
    std::fs::write(
        &thumbnailer,
        format!(
            "name: thumbnailer\n\
             description: reads uploads, writes thumbnails\n\
             api:\n\
             \x20 - actions: [tasks:Run, tasks:Stop]\n\
             \x20   resources: [task-definition/thumbs]\n\
             \x20 - actions: [tasks:Describe, tasks:List]\n\
             \x20   resources: ['*']\n\
             storage:\n\
             \x20 sts:\n\
             \x20   endpoint: {ep}\n\
             \x20   role_arn: {arn}\n\
             \x20   access_key_id_secret: sts-key-id\n\
             \x20   secret_access_key_secret: sts-secret\n\
             \x20 endpoint: {ep}\n\
             \x20 duration: 15m\n\
             \x20 grants:\n\
             \x20   - {{bucket: photos, prefix: incoming/, access: read}}\n\
             \x20   - {{bucket: photos, prefix: thumbs/, access: read-write}}\n",
            ep = moto.endpoint,
            arn = moto.role_arn
        ),
    )
    .unwrap();
    let reports = env.path("reports.json");
    std::fs::write(
        &reports,
        serde_json::json!({
            "name": "reports",
            "storage": {
                "static_keys": {"access_key_id_secret": "static-key-id",
                                "secret_access_key_secret": "static-secret"},
                "endpoint": moto.endpoint,
                "grants": [{"bucket": "photos", "prefix": "reports/", "access": "read"}],
            }
        })
        .to_string(),
    )
    .unwrap();
    for f in [&thumbnailer, &reports] {
        let out = cli(&addr, &["roles", "put", "-f", f.to_str().unwrap()]);
        assert_eq!(out.code, 0, "{out:?}");
    }
    addr
}

/// Runs a container with the host's python and boto3 under `role`; returns its output.
fn run_python(env: &Env, addr: &str, role: &str, script: &str) -> String {
    let (python, mounts) = python_mounts();
    let img = env.busybox_image();
    let mut args = vec![
        "run-task",
        "-f",
        "--image",
        &img,
        "--network",
        "host",
        "--role",
        role,
    ];
    for m in &mounts {
        args.extend_from_slice(&["--mount", m]);
    }
    let python = python.to_str().unwrap().to_string();
    args.extend_from_slice(&["--", &python, "-c", script]);
    let out = cli(addr, &args);
    assert_eq!(out.code, 0, "{out:?}\n{}", env.logs());
    out.stdout
}

const BOTO3_PROBE: &str = r#"
import os, boto3, botocore
s3 = boto3.client("s3")
def attempt(f):
    try:
        f()
        return "ok"
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]
creds = boto3.Session().get_credentials()
print("method", creds.method)
print("incoming", s3.get_object(Bucket="photos", Key="incoming/a.txt")["Body"].read().decode())
print("private", attempt(lambda: s3.get_object(Bucket="photos", Key="private/b.txt")))
print("write-incoming", attempt(lambda: s3.put_object(Bucket="photos", Key="incoming/n.txt", Body=b"x")))
print("write-thumbs", attempt(lambda: s3.put_object(Bucket="photos", Key="thumbs/a.jpg", Body=b"thumb")))
print("thumbs", s3.get_object(Bucket="photos", Key="thumbs/a.jpg")["Body"].read().decode())
print("reports", attempt(lambda: s3.get_object(Bucket="photos", Key="reports/r.txt")))
print("key", creds.access_key)
"#;

#[test]
fn boto3_in_a_container_gets_credentials_for_exactly_its_roles_prefixes() {
    let moto = Moto::start();
    let mut env = Env::new();
    let addr = cluster_with_roles(&mut env, &moto);

    // STS AssumeRole with the role's session policy: the provider's role may do anything in
    // the bucket, the task only what its grants say.
    let out = run_python(&env, &addr, "thumbnailer", BOTO3_PROBE);
    for line in [
        "method container-role",
        "incoming hello from incoming",
        "private AccessDenied",
        "write-incoming AccessDenied",
        "write-thumbs ok",
        "thumbs thumb",
        "reports AccessDenied",
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "{line:?} missing in:\n{out}"
        );
    }
    let minted = out
        .lines()
        .find_map(|l| l.strip_prefix("key "))
        .unwrap()
        .to_string();
    assert_ne!(minted, moto.controller_key_id, "tasks get session keys");

    // Static keys: handed out as they are, so they can do what the store lets them.
    let out = run_python(
        &env,
        &addr,
        "reports",
        r#"
import boto3, botocore
s3 = boto3.client("s3")
print("reports", s3.get_object(Bucket="photos", Key="reports/r.txt")["Body"].read().decode())
try:
    s3.get_object(Bucket="photos", Key="incoming/a.txt")
    print("incoming ok")
except botocore.exceptions.ClientError as e:
    print("incoming", e.response["Error"]["Code"])
"#,
    );
    assert!(out.contains("reports quarterly report\n"), "{out}");
    assert!(out.contains("incoming AccessDenied\n"), "{out}");

    // The provider's keys are never shown: not by roles, tasks, events nor any log line.
    let shown: String = [
        cli(&addr, &["roles", "ls", "-o", "json"]).stdout,
        cli(&addr, &["roles", "get", "thumbnailer"]).stdout,
        cli(&addr, &["tasks", "ls", "-o", "json"]).stdout,
        cli(&addr, &["events", "tail", "-o", "json"]).stdout,
        env.logs(),
    ]
    .concat();
    assert!(shown.contains("sts-key-id"), "roles name their secrets");
    for secret in [&moto.controller_secret, &moto.static_secret] {
        assert!(!shown.contains(secret.as_str()), "a provider key leaked");
    }
}

#[test]
fn task_tokens_work_only_for_their_own_running_task_and_its_roles_grants() {
    let moto = Moto::start();
    let mut env = Env::new();
    let addr = cluster_with_roles(&mut env, &moto);
    let img = env.busybox_image();
    for family in ["thumbs", "other"] {
        let def = env.path(&format!("{family}.json"));
        std::fs::write(
            &def,
            serde_json::json!({"family": family, "containers": [
                {"name": "main", "image": img, "command": ["sleep", "300"]}]})
            .to_string(),
        )
        .unwrap();
        let out = cli(
            &addr,
            &["taskdefs", "register", "-f", def.to_str().unwrap()],
        );
        assert_eq!(out.code, 0, "{out:?}");
    }

    // Task A prints its tokens and keeps running.
    let a = run_task(
        &addr,
        &[
            "--image",
            &img,
            "--network",
            "host",
            "--role",
            "thumbnailer",
            "--stop-timeout",
            "1s",
            "--",
            "sh",
            "-c",
            "echo $AWS_CONTAINER_AUTHORIZATION_TOKEN $SKIFF_TASK_TOKEN; sleep 300",
        ],
    );
    wait_status(&addr, &a, "RUNNING", Duration::from_secs(30));
    let printed = wait_for("task A's tokens", Duration::from_secs(10), || {
        let logs = cli(&addr, &["tasks", "logs", &a]).stdout;
        (logs.split_whitespace().count() == 2).then_some(logs)
    });
    let mut it = printed.split_whitespace();
    let (a_token, a_skiff) = (
        it.next().unwrap().to_string(),
        it.next().unwrap().to_string(),
    );

    // Task B, under the same role, gets its own credentials but none with A's token, nor with
    // a token made from its own for A's id; it refreshes its skiff token at the endpoint.
    let probe = r#"
get() { wget -q -O - --header "Authorization: $1" "$2" 2>&1; }
echo "own $(get "$AWS_CONTAINER_AUTHORIZATION_TOKEN" "$AWS_CONTAINER_CREDENTIALS_FULL_URI" | grep -o '"AccessKeyId"')"
echo "other $(get "$OTHER" "$AWS_CONTAINER_CREDENTIALS_FULL_URI" | grep -o '403 Forbidden')"
echo "forged $(get "${OTHER%%.*}.${AWS_CONTAINER_AUTHORIZATION_TOKEN#*.}" "$AWS_CONTAINER_CREDENTIALS_FULL_URI" | grep -o '403 Forbidden')"
echo "none $(wget -q -O - "$AWS_CONTAINER_CREDENTIALS_FULL_URI" 2>&1 | grep -o '401 Unauthorized')"
echo "refreshed $(get "$AWS_CONTAINER_AUTHORIZATION_TOKEN" "$SKIFF_TASK_TOKEN_URI")"
"#;
    let other_env = format!("OTHER={a_token}");
    let out = cli(
        &addr,
        &[
            "run-task",
            "-f",
            "--image",
            &img,
            "--network",
            "host",
            "--role",
            "thumbnailer",
            "-e",
            &other_env,
            "--",
            "sh",
            "-c",
            probe,
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    for line in [
        "own \"AccessKeyId\"",
        "other 403 Forbidden",
        "forged 403 Forbidden",
        "none 401 Unauthorized",
    ] {
        assert!(
            out.stdout.lines().any(|l| l == line),
            "{line:?} in:\n{}",
            out.stdout
        );
    }
    let refreshed: serde_json::Value = serde_json::from_str(
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix("refreshed "))
            .unwrap(),
    )
    .unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    let refreshed = refreshed["Token"].as_str().unwrap().to_string();
    // B has stopped: its refreshed token died with it.
    let b_gone = cli_as(&addr, Some(&refreshed), &["tasks", "ls"]);
    assert_ne!(b_gone.code, 0, "{b_gone:?}");
    assert!(b_gone.stderr.contains("has stopped"), "{b_gone:?}");

    // A's skiff token calls exactly what the role grants.
    let ok = |args: &[&str]| {
        let out = cli_as(&addr, Some(&a_skiff), args);
        assert_eq!(out.code, 0, "{args:?}: {out:?}");
        out
    };
    let denied = |args: &[&str], what: &str| {
        let out = cli_as(&addr, Some(&a_skiff), args);
        assert_ne!(out.code, 0, "{args:?} should be refused: {out:?}");
        assert!(
            out.stderr.contains("PermissionDenied") || out.stderr.contains("permission"),
            "{args:?}: {out:?}"
        );
        assert!(out.stderr.contains(what), "{args:?}: {out:?}");
    };
    ok(&["tasks", "ls"]);
    let thumbs = ok(&["run-task", "--task-def", "thumbs"])
        .stdout
        .trim()
        .to_string();
    ok(&["tasks", "stop", &thumbs]);
    denied(
        &["run-task", "--task-def", "other"],
        "task-definition/other",
    );
    denied(&["run-task", "--image", &img, "--", "true"], "ad-hoc");
    denied(&["tokens", "ls"], "tokens:List");
    denied(&["secrets", "ls"], "secrets:List");
    denied(
        &["events", "put", "--source", "app", "--detail-type", "x"],
        "events:Put",
    );
    let other = run_task(&addr, &["--task-def", "other"]);
    denied(&["tasks", "stop", &other], "task-definition/other");
    wait_status(&addr, &other, "RUNNING", Duration::from_secs(30));

    // Once A is STOPPED its skiff token is refused.
    assert_eq!(cli(&addr, &["tasks", "stop", &a]).code, 0);
    wait_status(&addr, &a, "STOPPED", Duration::from_secs(30));
    let out = cli_as(&addr, Some(&a_skiff), &["tasks", "ls"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("has stopped"), "{out:?}");
    assert_eq!(cli(&addr, &["tasks", "stop", &other]).code, 0);
}

#[test]
fn roles_are_checked_when_defined_and_when_used() {
    let moto = Moto::start();
    let mut env = Env::new();
    let addr = cluster_with_roles(&mut env, &moto);
    let img = env.busybox_image();

    // Only an admin defines roles and mounts host paths.
    let operator = cli(
        &addr,
        &[
            "tokens", "create", "--role", "operator", "--name", "ci", "-o", "json",
        ],
    )
    .json()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let role = env.path("r.yaml");
    std::fs::write(
        &role,
        "name: r\napi: [{actions: ['*'], resources: ['*']}]\n",
    )
    .unwrap();
    let out = cli_as(
        &addr,
        Some(&operator),
        &["roles", "put", "-f", role.to_str().unwrap()],
    );
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("admin"), "{out:?}");
    let out = cli_as(
        &addr,
        Some(&operator),
        &[
            "run-task",
            "--image",
            &img,
            "--mount",
            "/etc:/host-etc:ro",
            "--",
            "true",
        ],
    );
    assert!(out.stderr.contains("containers[0].mounts"), "{out:?}");
    // An operator may run a task under an existing role.
    let out = cli_as(
        &addr,
        Some(&operator),
        &[
            "run-task",
            "--image",
            &img,
            "--network",
            "host",
            "--role",
            "thumbnailer",
            "--",
            "true",
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");

    // Bad roles and bad uses are refused, naming the field.
    let bad = env.path("bad.yaml");
    for (yaml, field) in [
        (
            "name: r\nstorage:\n  static_keys: {access_key_id_secret: nope, secret_access_key_secret: nope}\n  grants: [{bucket: photos, access: read}]\n",
            "storage.static_keys.access_key_id_secret",
        ),
        (
            "name: r\nstorage:\n  static_keys: {access_key_id_secret: static-key-id, secret_access_key_secret: static-secret}\n  grants: [{bucket: photos, access: everything}]\n",
            "storage.grants[0].access",
        ),
        ("name: r\napi: [{actions: [Tasks.Run], resources: ['*']}]\n", "api[0].actions[0]"),
    ] {
        std::fs::write(&bad, yaml).unwrap();
        let out = cli(&addr, &["roles", "put", "-f", bad.to_str().unwrap()]);
        assert_ne!(out.code, 0, "{yaml}");
        assert!(out.stderr.contains(field), "{field}: {out:?}");
    }
    let out = cli(
        &addr,
        &[
            "run-task",
            "--image",
            &img,
            "--network",
            "none",
            "--role",
            "thumbnailer",
            "--",
            "true",
        ],
    );
    assert!(
        out.stderr.contains("task_role") && out.stderr.contains("network_mode bridge or host"),
        "{out:?}"
    );
    let out = cli(
        &addr,
        &[
            "run-task",
            "--image",
            &img,
            "--network",
            "host",
            "--role",
            "ghost",
            "--",
            "true",
        ],
    );
    assert!(
        out.stderr.contains("task_role: no role named \"ghost\""),
        "{out:?}"
    );

    // Credentials are served from the agent's cache until two thirds of their life are over,
    // then fetched anew (here static keys that "expire" after 3 s).
    let short = env.path("short.yaml");
    std::fs::write(
        &short,
        "name: short
storage:
  static_keys: {access_key_id_secret: static-key-id, \
         secret_access_key_secret: static-secret}
  duration: 3
  \
         grants: [{bucket: photos, prefix: reports/, access: read}]
",
    )
    .unwrap();
    assert_eq!(
        cli(&addr, &["roles", "put", "-f", short.to_str().unwrap()]).code,
        0
    );
    let out = cli(
        &addr,
        &["run-task", "-f", "--image", &img, "--network", "host", "--role", "short", "--",
          "sh", "-c",
          "get() { wget -q -O - --header \"Authorization: $AWS_CONTAINER_AUTHORIZATION_TOKEN\" \"$AWS_CONTAINER_CREDENTIALS_FULL_URI\"; echo; }; \
           get; get; sleep 2.5; get"],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let expirations: Vec<String> = out
        .stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}"));
            assert_eq!(v["AccessKeyId"], moto.static_key_id.as_str());
            v["Expiration"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(expirations.len(), 3, "{}", out.stdout);
    assert_eq!(expirations[0], expirations[1], "served from the cache");
    assert!(expirations[2] > expirations[1], "renewed: {expirations:?}");

    // A task without a role has no credentials endpoint in its environment.
    let out = cli(
        &addr,
        &[
            "run-task",
            "-f",
            "--image",
            &img,
            "--network",
            "host",
            "--",
            "sh",
            "-c",
            "echo uri=${AWS_CONTAINER_CREDENTIALS_FULL_URI:-none} token=${SKIFF_TASK_TOKEN:-none}",
        ],
    );
    assert_eq!(out.stdout, "uri=none token=none\n", "{out:?}");
}

#[test]
fn a_restarted_agent_serves_running_containers_at_the_same_address() {
    let moto = Moto::start();
    let mut env = Env::new();
    let addr = cluster_with_roles(&mut env, &moto);
    let img = env.busybox_image();
    let id = run_task(
        &addr,
        &[
            "--image", &img, "--network", "host", "--role", "reports", "--stop-timeout", "1s",
            "--", "sh", "-c",
            "while true; do \
               if wget -q -O /dev/null --header \"Authorization: $AWS_CONTAINER_AUTHORIZATION_TOKEN\" \
                  \"$AWS_CONTAINER_CREDENTIALS_FULL_URI\"; then echo ok; else echo fail; fi; \
               sleep 0.2; done",
        ],
    );
    wait_status(&addr, &id, "RUNNING", Duration::from_secs(30));
    wait_for(
        "credentials before the restart",
        Duration::from_secs(10),
        || {
            cli(&addr, &["tasks", "logs", &id])
                .stdout
                .contains("ok\n")
                .then_some(())
        },
    );
    assert_eq!(env.procs[0].terminate(), Some(0), "{}", env.logs());
    // While no agent listens the container's calls fail (its log is on the node's disk);
    // the next agent (asked for any free port) takes the old address again, where the
    // container keeps asking.
    let log = env.path(&format!("dev/agent/tasks/{id}/main/container.log"));
    wait_for(
        "a failed call while no agent runs",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&log)
                .ok()?
                .contains("stdout F fail")
                .then_some(())
        },
    );
    let addr = env.dev_with(&["--credentials-listen", "127.0.0.1:0"]);
    wait_for(
        "credentials after the restart",
        Duration::from_secs(20),
        || {
            let logs = cli(&addr, &["tasks", "logs", &id]).stdout;
            let gap = logs.find("fail\n")?;
            logs[gap..].contains("ok\n").then_some(())
        },
    );
    assert_eq!(cli(&addr, &["tasks", "stop", &id]).code, 0);
    wait_status(&addr, &id, "STOPPED", Duration::from_secs(30));
}

/// The 169.254.170.2 endpoint for tasks on skiff's bridge: unmodified boto3 finds it through
/// `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` alone (no endpoint variable for credentials, no
/// host networking), and a task is told apart by its address: another task's path is refused.
#[test]
fn boto3_on_the_bridge_reads_its_credentials_at_169_254_170_2_and_not_another_tasks() {
    // The object store listens where bridge tasks reach the node: its bridge's gateway.
    let moto = Moto::start_listening("0.0.0.0");
    let port = moto.endpoint.rsplit(':').next().unwrap().to_string();
    let bridge = OwnBridge::new("skr", 93);
    let gateway = bridge.gateway.clone();
    let mut env = Env::new();
    let addr = env.dev_with(&bridge.flags());
    put_secret(&addr, "sts-key-id", &moto.controller_key_id);
    put_secret(&addr, "sts-secret", &moto.controller_secret);
    let role = env.path("bridged.json");
    std::fs::write(
        &role,
        serde_json::json!({
            "name": "bridged",
            "storage": {
                "sts": {"endpoint": moto.endpoint, "role_arn": moto.role_arn,
                        "access_key_id_secret": "sts-key-id", "secret_access_key_secret": "sts-secret"},
                "endpoint": format!("http://{gateway}:{port}"),
                "duration": "15m",
                "grants": [{"bucket": "photos", "prefix": "incoming/", "access": "read"}],
            }
        })
        .to_string(),
    )
    .unwrap();
    let out = cli(&addr, &["roles", "put", "-f", role.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");

    let (python, mounts) = python_mounts();
    let img = env.busybox_image();
    let script = r#"
import os, boto3
print("relative", os.environ["AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"].startswith("/v2/credentials/"))
print("full", "AWS_CONTAINER_CREDENTIALS_FULL_URI" in os.environ)
creds = boto3.Session().get_credentials()
print("method", creds.method)
s3 = boto3.client("s3")
print("incoming", s3.get_object(Bucket="photos", Key="incoming/a.txt")["Body"].read().decode())
"#;
    let python = python.to_str().unwrap().to_string();
    let mut args = vec![
        "run-task",
        "-f",
        "--image",
        &img,
        "--network",
        "bridge",
        "--role",
        "bridged",
    ];
    for m in &mounts {
        args.extend_from_slice(&["--mount", m]);
    }
    args.extend_from_slice(&["--", &python, "-c", script]);
    let out = cli(&addr, &args);
    assert_eq!(out.code, 0, "{out:?}\n{}", env.logs());
    assert_eq!(
        out.stdout,
        "relative True\nfull False\nmethod container-role\nincoming hello from incoming\n",
        "{out:?}"
    );

    // Task B shows its own path; task A, on the same bridge, is refused it.
    // A task publishing port 80 on the node does not capture the endpoint at 169.254.170.2:80.
    let web = run_task(
        &addr,
        &[
            "--image",
            &img,
            "--network",
            "bridge",
            "-p",
            "80:80",
            "--stop-timeout",
            "1s",
            "--",
            "sh",
            "-c",
            "mkdir -p /www && echo web > /www/index.html && exec httpd -f -p 80 -h /www",
        ],
    );
    wait_status(&addr, &web, "RUNNING", Duration::from_secs(30));
    let b = run_task(
        &addr,
        &["--image", &img, "--network", "bridge", "--role", "bridged", "--stop-timeout", "1s", "--",
          "sh", "-c", "echo $AWS_CONTAINER_CREDENTIALS_RELATIVE_URI; wget -qO- http://169.254.170.2$AWS_CONTAINER_CREDENTIALS_RELATIVE_URI | grep -c AccessKeyId; sleep 300"],
    );
    let lines = wait_for(
        "task B's path and its own fetch",
        Duration::from_secs(30),
        || {
            let logs = cli(&addr, &["tasks", "logs", &b]).stdout;
            (logs.lines().count() >= 2).then(|| logs.lines().map(String::from).collect::<Vec<_>>())
        },
    );
    assert_eq!(lines[1], "1", "B reads its own credentials: {lines:?}");
    let out = cli(
        &addr,
        &[
            "run-task",
            "-f",
            "--image",
            &img,
            "--network",
            "bridge",
            "--role",
            "bridged",
            "--",
            "sh",
            "-c",
            &format!(
                "wget -qO- http://169.254.170.2{} 2>&1; echo exit $?",
                lines[0]
            ),
        ],
    );
    assert!(
        out.stdout.contains("403") && out.stdout.contains("exit 1"),
        "{out:?}"
    );
    for t in [&b, &web] {
        assert_eq!(cli(&addr, &["tasks", "stop", t]).code, 0);
        wait_status(&addr, t, "STOPPED", Duration::from_secs(30));
    }
}

/// A bridge task calls skiff's API with its SKIFF_TASK_TOKEN at SKIFF_ENDPOINT — the agent's
/// relay at 169.254.170.2:7400, since the controller listens on the node's loopback — and gets
/// what its role grants, nothing more. (The SQS protocol through SKIFF_HTTP_ENDPOINT's relay:
/// `services.rs`, the queue-workers example.)
#[test]
fn a_bridge_task_calls_the_api_through_its_agent_with_what_its_role_grants() {
    let bridge = OwnBridge::new("skt", 101);
    let mut env = Env::new();
    let addr = env.dev_with(&bridge.flags());
    let out = send_from_a_bridge_task(&env, &addr);
    assert_eq!(
        out.stdout,
        "endpoint http://169.254.170.2:7400\nsent\n1\n",
        "{out:?}\n{}",
        env.logs()
    );
    let inbox = cli(&addr, &["queues", "describe", "inbox", "-o", "json"]).json();
    assert_eq!(inbox["visible"], 1, "{inbox}");
}

/// The same in a TLS cluster: the task verifies the controller through the relay with the
/// cluster CA it finds at SKIFF_CA_FILE (the controller's certificate names 169.254.170.2).
#[test]
fn a_bridge_task_in_a_tls_cluster_verifies_the_controller_through_its_agent() {
    let bridge = OwnBridge::new("skv", 102);
    let mut env = Env::new();
    let (_, addr) = env.controller("127.0.0.1:0", &[]);
    assert!(addr.starts_with("https://"), "{addr}");
    env.agent(&addr, "n1", &bridge.flags());
    let out = send_from_a_bridge_task(&env, &addr);
    assert_eq!(
        out.stdout,
        "endpoint https://169.254.170.2:7400\nsent\n1\n",
        "{out:?}\n{}",
        env.logs()
    );
}

/// Puts a role that may send to queue `inbox` (and the queue), then runs the `skiff` CLI
/// itself, from the node, in a bridge task under it: it prints SKIFF_ENDPOINT, sends, and
/// counts the denials of a call the role does not grant.
fn send_from_a_bridge_task(env: &Env, addr: &str) -> skiff_tests::Cli {
    let role = env.path("sender.json");
    std::fs::write(
        &role,
        r#"{"name": "sender", "api": [{"actions": ["queues:Send"], "resources": ["queue/inbox"]}]}"#,
    )
    .unwrap();
    assert_eq!(
        cli(addr, &["roles", "put", "-f", role.to_str().unwrap()]).code,
        0
    );
    assert_eq!(cli(addr, &["queues", "create", "inbox"]).code, 0);

    // The skiff CLI itself, from the node, in a busybox container (with the node's libraries).
    let (_, mounts) = python_mounts();
    let skiff = format!("{}:/skiff:ro", skiff_tests::skiff_bin().display());
    let img = env.busybox_image();
    let mut args = vec!["run-task", "-f", "--image", &img, "--role", "sender"];
    for m in mounts.iter().chain([&skiff]) {
        args.extend_from_slice(&["--mount", m]);
    }
    let script = "echo endpoint $SKIFF_ENDPOINT; /skiff queues send inbox from-a-task >/dev/null && echo sent; \
                  /skiff queues create other 2>&1 | grep -c -i denied";
    args.extend_from_slice(&["--", "sh", "-c", script]);
    cli(addr, &args)
}
