//! Who may call what (tokens and roles) and where secrets go (the container, nothing else).

use std::time::Duration;

use skiff_tests::{cli, cli_as, wait_for, Env};

fn new_token(addr: &str, role: &str, extra: &[&str]) -> (String, String) {
    let mut args = vec![
        "tokens", "create", "--role", role, "--name", "test", "-o", "json",
    ];
    args.extend_from_slice(extra);
    let v = cli(addr, &args).json();
    (
        v["token"].as_str().unwrap().to_string(),
        v["id"].as_str().unwrap().to_string(),
    )
}

#[test]
fn api_tokens_and_roles_guard_every_call() {
    let mut env = Env::new();
    let addr = env.dev();
    let img = env.busybox_image();

    let out = cli_as(&addr, None, &["tasks", "ls"]);
    assert!(
        out.code != 0 && out.stderr.contains("not authenticated"),
        "{out:?}"
    );
    let tasks_before = cli(&addr, &["tasks", "ls", "-o", "json"]).json();
    assert!(
        out.stderr.contains("SKIFF_TOKEN"),
        "says how to fix it: {out:?}"
    );
    let out = cli_as(&addr, Some("skiff_0123_4567"), &["tasks", "ls"]);
    assert!(out.stderr.contains("not valid"), "{out:?}");

    let (viewer, _) = new_token(&addr, "read-only", &[]);
    assert_eq!(cli_as(&addr, Some(&viewer), &["tasks", "ls"]).code, 0);
    let out = cli_as(
        &addr,
        Some(&viewer),
        &["run-task", "--image", &img, "--", "true"],
    );
    assert!(
        out.code != 0 && out.stderr.contains("permission denied"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("operator"),
        "names the role needed: {out:?}"
    );

    // Refused calls change nothing.
    let out = cli_as(&addr, None, &["run-task", "--image", &img, "--", "true"]);
    assert!(out.stderr.contains("not authenticated"), "{out:?}");
    let out = cli_as(&addr, Some(&viewer), &["taskdefs", "deregister", "x:1"]);
    assert!(out.stderr.contains("permission denied"), "{out:?}");
    assert_eq!(
        cli(&addr, &["tasks", "ls", "-o", "json"]).json(),
        tasks_before
    );

    let (op, op_id) = new_token(&addr, "operator", &[]);
    let out = cli_as(
        &addr,
        Some(&op),
        &["run-task", "--wait", "--image", &img, "--", "true"],
    );
    assert_eq!(out.code, 0, "{out:?}");
    for admin_only in [
        vec!["tokens", "ls"],
        vec!["tokens", "create", "--role", "admin"],
        vec!["registry-creds", "rm", "x"],
    ] {
        let out = cli_as(&addr, Some(&op), &admin_only);
        assert!(
            out.stderr.contains("permission denied"),
            "{admin_only:?}: {out:?}"
        );
    }
    // Privileged containers are an admin's call.
    let out = cli_as(
        &addr,
        Some(&op),
        &["run-task", "--privileged", "--image", &img, "--", "true"],
    );
    assert!(out.stderr.contains("containers[0].privileged"), "{out:?}");
    assert_eq!(
        cli(
            &addr,
            &[
                "run-task",
                "--wait",
                "--privileged",
                "--image",
                &img,
                "--",
                "true"
            ]
        )
        .code,
        0
    );

    // Listing shows roles and states, never a secret.
    let ls = cli(&addr, &["tokens", "ls", "-o", "json"]);
    let secret = op.rsplit('_').next().unwrap();
    assert!(!ls.stdout.contains(secret), "{ls:?}");
    assert_eq!(cli(&addr, &["tokens", "revoke", &op_id]).code, 0);
    let out = cli_as(&addr, Some(&op), &["tasks", "ls"]);
    assert!(out.stderr.contains("revoked"), "{out:?}");

    let (brief, _) = new_token(&addr, "read-only", &["--ttl", "1s"]);
    assert_eq!(cli_as(&addr, Some(&brief), &["nodes", "ls"]).code, 0);
    let out = wait_for(
        "the short-lived token to expire",
        Duration::from_secs(10),
        || {
            let out = cli_as(&addr, Some(&brief), &["nodes", "ls"]);
            (out.code != 0).then_some(out)
        },
    );
    assert!(out.stderr.contains("expired"), "{out:?}");
    let out = cli(&addr, &["tokens", "create", "--role", "root"]);
    assert!(out.stderr.contains("role"), "{out:?}");
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t)
                    if t.is_file()
                        && std::fs::read(&p)
                            .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)) =>
                {
                    hits.push(p)
                }
                _ => {}
            }
        }
    }
    hits
}

#[test]
fn secrets_reach_the_container_and_nothing_else() {
    let mut env = Env::new();
    let addr = env.dev();
    let img = env.busybox_image();
    let value = "s3cr3t-value-4711";
    let out = skiff_tests::cli_stdin(
        &addr,
        &["secrets", "put", "db-password", "-o", "json"],
        value.as_bytes(),
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!out.stdout.contains(value));

    let def = env.path("def.toml");
    std::fs::write(
        &def,
        "family = \"app\"\n[[containers]]\nname = \"main\"\nimage = \"IMG\"\n\
         command = [\"sh\", \"-c\", \"echo env=$DB_PASSWORD; echo file=$(cat /run/secrets/db); \
         ls -l /run/secrets/db | cut -c1-10; echo x > /run/secrets/db || echo read-only\"]\n\
         secrets = [{name = \"DB_PASSWORD\", value_from = \"db-password\"}, \
         {file = \"/run/secrets/db\", value_from = \"db-password\"}]\n"
            .replace("IMG", &img),
    )
    .unwrap();
    assert_eq!(
        cli(
            &addr,
            &["taskdefs", "register", "-f", def.to_str().unwrap()]
        )
        .code,
        0
    );
    let out = cli(&addr, &["run-task", "--follow", "--task-def", "app"]);
    assert_eq!(out.code, 0, "{out:?}\n{}", env.logs());
    assert!(out.stdout.contains(&format!("env={value}\n")), "{out:?}");
    assert!(out.stdout.contains(&format!("file={value}\n")), "{out:?}");
    assert!(
        out.stdout.contains("-r--r--r--") && out.stdout.contains("read-only"),
        "{out:?}"
    );

    // Nothing else shows the value: definitions, tasks, events, listings...
    for args in [
        vec!["taskdefs", "describe", "app", "-o", "json"],
        vec!["tasks", "ls", "-o", "json"],
        vec!["events", "tail", "-o", "json"],
        vec!["secrets", "ls", "-o", "json"],
    ] {
        let o = cli(&addr, &args);
        assert_eq!(o.code, 0, "{args:?}: {o:?}");
        assert!(
            !o.stdout.contains(value),
            "{args:?} shows the secret: {}",
            o.stdout
        );
    }
    // ...nor any file skiff keeps: the controller's store holds it encrypted, the agent's
    // task files and the container's tmpfs are not on disk (the container's log has it only
    // because the container printed it).
    let hits: Vec<_> = files_containing(&env.path("dev"), value.as_bytes())
        .into_iter()
        .filter(|p| !p.ends_with("container.log"))
        .collect();
    assert!(hits.is_empty(), "the secret is on disk in {hits:?}");
    // Nor any line skiff logged (at debug level here).
    assert!(!env.logs().contains(value), "a log line shows the secret");

    // Missing secrets are refused up front and named.
    let out = cli(
        &addr,
        &[
            "run-task", "--secret", "X=nope", "--image", &img, "--", "true",
        ],
    );
    assert!(
        out.code != 0 && out.stderr.contains("value_from") && out.stderr.contains("nope"),
        "{out:?}"
    );
    let out = cli(
        &addr,
        &[
            "run-task",
            "--secret",
            "1BAD=db-password",
            "--image",
            &img,
            "--",
            "true",
        ],
    );
    assert!(out.stderr.contains("secrets[0].name"), "{out:?}");
    // Values are an admin's business; operators may list names.
    let (op, _) = new_token(&addr, "operator", &[]);
    let out = cli_as(&addr, Some(&op), &["secrets", "rm", "db-password"]);
    assert!(out.stderr.contains("permission denied"), "{out:?}");
    assert_eq!(cli_as(&addr, Some(&op), &["secrets", "ls"]).code, 0);
    // A secret deleted after the definition was registered: running it is refused, by name.
    assert_eq!(cli(&addr, &["secrets", "rm", "db-password"]).code, 0);
    let out = cli(&addr, &["run-task", "--wait", "--task-def", "app"]);
    assert!(
        out.code != 0 && out.stderr.contains("\"db-password\""),
        "{out:?}"
    );
}
