//! `skiff apply -f` and `skiff diff -f` against a real `skiff dev`: a directory declaring
//! every kind (queues with a dead-letter queue, a role, a task definition, a topic with its
//! subscriptions, a rule, a schedule and a service that runs a real container) is applied in
//! dependency order; a second apply changes nothing; an edit shows field by field in `diff`
//! and rolls the service to the new revision on `apply`; `--prune` deletes only what the set
//! applied and the files no longer name; the set survives `kill -9` of the controller; bad
//! files are refused with the file, the document and the field named.

use std::fs;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use skiff_tests::{cli, wait_for, Cli, Env};

const LONG: Duration = Duration::from_secs(120);

fn queues_yaml() -> &'static str {
    "queue:\n  name: jobs\n  visibility_timeout: 5s\n  dead_letter_queue: jobs-dlq\n  max_receives: 3\n\
     ---\nqueue:\n  name: jobs-dlq\n"
}

fn app_yaml(
    image: &str,
    uploads: &Path,
    sleep: &str,
    with_rule_and_schedule: bool,
    with_webhook: bool,
) -> String {
    let mut docs = vec![
        "role:\n  name: workers\n  api:\n    - actions: [queues:Receive, queues:DeleteMessages]\n      resources: [queue/jobs]\n".to_string(),
        format!(
            "source:\n  name: uploads\n  kind: local\n  path: {}\n  poll: 5s\n",
            uploads.display()
        ),
        format!(
            "task_definition:\n  family: worker\n  task_role: workers\n  containers:\n    - name: main\n      image: {image}\n      command: [sleep, \"{sleep}\"]\n      memory: 32\n      stop_timeout: 1s\n"
        ),
    ];
    let mut topic = "topic:\n  name: ops\n  dead_letter_queue: jobs-dlq\n  subscriptions:\n    - queue: jobs-dlq\n      filter: {detail-type: [Service Action]}\n".to_string();
    if with_webhook {
        topic.push_str("    - webhook: http://127.0.0.1:9/hook\n");
    }
    docs.push(topic);
    if with_rule_and_schedule {
        docs.push("rule:\n  name: failures\n  pattern: {source: [skiff.task], detail: {lastStatus: [STOPPED]}}\n  targets:\n    - id: ops\n      topic: ops\n".into());
        docs.push("schedule:\n  name: nightly\n  expression: cron(0 3 * * ? *)\n  task: {task_definition: worker}\n".into());
    }
    docs.push("service:\n  name: workers\n  task_definition: worker\n  desired_count: 1\n  stop_timeout: 1s\n".into());
    docs.join("---\n")
}

fn write_dir(dir: &Path, app: &str) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("queues.yaml"), queues_yaml()).unwrap();
    fs::write(dir.join("app.yaml"), app).unwrap();
}

fn run(addr: &str, args: &[&str]) -> Cli {
    cli(addr, args)
}

fn describe(addr: &str, what: &[&str]) -> Value {
    let mut args = what.to_vec();
    args.extend(["-o", "json"]);
    let out = cli(addr, &args);
    assert_eq!(out.code, 0, "{out:?}");
    out.json()
}

/// The running task of the service, once there is exactly one and it runs `revision`.
fn wait_service_runs(addr: &str, revision: &str) -> Value {
    wait_for(&format!("service workers running {revision}"), LONG, || {
        let st = describe(addr, &["services", "describe", "workers"]);
        let tasks = st["tasks"].as_array()?.clone();
        (tasks.len() == 1
            && tasks[0]["taskDefinition"] == revision
            && tasks[0]["lastStatus"] == "RUNNING")
            .then(|| tasks[0].clone())
    })
}

/// (action, kind/name) of every change a `-o json` apply or diff reports, unchanged ones
/// left out.
fn changes(out: &Cli) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = out.json()["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["action"] != "unchanged")
        .map(|c| {
            (
                c["action"].as_str().unwrap().to_string(),
                format!(
                    "{}/{}",
                    c["kind"].as_str().unwrap(),
                    c["name"].as_str().unwrap()
                ),
            )
        })
        .collect();
    v.sort();
    v
}

fn pair(a: &str, b: &str) -> (String, String) {
    (a.to_string(), b.to_string())
}

#[test]
fn a_directory_is_applied_in_order_then_changes_nothing_then_rolls_out_edits_and_prunes_its_own() {
    let mut env = Env::new();
    let addr = env.dev();
    let dir = env.path("declared");
    let image = env.busybox_image();
    let uploads = env.path("uploads");
    fs::create_dir_all(&uploads).unwrap();
    write_dir(&dir, &app_yaml(&image, &uploads, "3600", true, true));
    let d = dir.to_str().unwrap();

    // diff: everything to create, nothing made.
    let out = run(&addr, &["diff", "-f", d]);
    assert_eq!(out.code, 2, "{out:?}");
    for line in [
        "+ queue/jobs-dlq",
        "+ role/workers",
        "+ service/workers",
        "+ subscription/ops/webhook:http://127.0.0.1:9/hook",
    ] {
        assert!(out.stdout.contains(line), "{line} missing: {out:?}");
    }
    assert!(out.stdout.contains("11 to create"), "{out:?}");
    assert_eq!(
        describe(&addr, &["queues", "ls"]).as_array().unwrap().len(),
        0
    );

    // apply: every kind, in an order where each reference exists when it is checked.
    let out = run(&addr, &["apply", "-f", d]);
    assert_eq!(out.code, 2, "{out:?}");
    let order: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("+ "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(
        order,
        [
            "role/workers",
            "queue/jobs-dlq",
            "queue/jobs",
            "topic/ops",
            "subscription/ops/queue:jobs-dlq",
            "subscription/ops/webhook:http://127.0.0.1:9/hook",
            "task_definition/worker",
            "source/uploads",
            "rule/failures",
            "schedule/nightly",
            "service/workers"
        ],
        "{out:?}"
    );
    assert!(out.stdout.contains("signing secret whsec_"), "{out:?}");
    let q = describe(&addr, &["queues", "describe", "jobs"]);
    assert_eq!(q["queue"]["visibilityTimeoutSeconds"], 5, "{q}");
    assert_eq!(q["queue"]["redrive"]["deadLetterQueue"], "jobs-dlq", "{q}");
    let topic = describe(&addr, &["topics", "describe", "ops"]);
    assert_eq!(
        topic[0]["subscriptions"].as_array().unwrap().len(),
        2,
        "{topic}"
    );
    let rule = describe(&addr, &["rules", "describe", "failures"]);
    assert_eq!(rule["targets"][0]["kind"]["topic"], "ops", "{rule}");
    describe(&addr, &["schedules", "describe", "nightly"]);
    let sources = describe(&addr, &["sources", "ls"]);
    assert!(
        sources.to_string().contains(uploads.to_str().unwrap()),
        "{sources}"
    );
    let first = wait_service_runs(&addr, "worker:1");

    // Again: nothing to do, and diff agrees (every default the server fills in matches).
    let out = run(&addr, &["apply", "-f", d]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("11 unchanged"), "{out:?}");
    let out = run(&addr, &["diff", "-f", d, "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json()["changed"], false);

    // Made by hand, and by another set: never pruned by this one.
    assert_eq!(run(&addr, &["queues", "create", "by-hand"]).code, 0);
    let other = env.path("other");
    fs::create_dir_all(&other).unwrap();
    fs::write(other.join("q.yaml"), "queue: {name: other-team}\n").unwrap();
    let out = run(
        &addr,
        &["apply", "-f", other.to_str().unwrap(), "--set", "other"],
    );
    assert_eq!(out.code, 2, "{out:?}");

    // An edit: diff shows each field and changes nothing.
    write_dir(&dir, &app_yaml(&image, &uploads, "7200", true, true));
    fs::write(dir.join("queues.yaml"), queues_yaml().replace("5s", "10s")).unwrap();
    let out = run(&addr, &["diff", "-f", d, "-o", "json"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert_eq!(
        changes(&out),
        [
            pair("update", "queue/jobs"),
            pair("update", "service/workers"),
            pair("update", "task_definition/worker"),
        ]
    );
    let fields: Vec<String> = out.json()["changes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["fields"].as_array().cloned().unwrap_or_default())
        .map(|f| {
            format!(
                "{}: {} → {}",
                f["path"].as_str().unwrap(),
                f["from"],
                f["to"]
            )
        })
        .collect();
    assert_eq!(
        fields,
        [
            "visibilityTimeoutSeconds: 5 → 10",
            "containers[0].command[1]: \"3600\" → \"7200\"",
            "deployedTaskDefinition: \"worker:1\" → \"worker:(new revision)\"",
        ]
    );
    assert_eq!(
        describe(&addr, &["queues", "describe", "jobs"])["queue"]["visibilityTimeoutSeconds"],
        5
    );

    // apply: a new revision, and the service replaces its task with one that runs it.
    let out = run(&addr, &["apply", "-f", d]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stdout
            .contains("task_definition/worker updated (worker:2)"),
        "{out:?}"
    );
    let second = wait_service_runs(&addr, "worker:2");
    assert_ne!(first["id"], second["id"]);
    assert_eq!(
        describe(&addr, &["queues", "describe", "jobs"])["queue"]["visibilityTimeoutSeconds"],
        10
    );

    // What the controller acknowledged, the apply set included, survives kill -9.
    env.procs[0].kill9();
    let addr = env.dev();
    let out = run(&addr, &["diff", "-f", d]);
    assert_eq!(out.code, 0, "after a restart: {out:?}");

    // The rule, the schedule and the webhook leave the files: without --prune they stay
    // (and the output says so); diff --prune lists them; apply --prune deletes them.
    write_dir(&dir, &app_yaml(&image, &uploads, "7200", false, false));
    fs::write(dir.join("queues.yaml"), queues_yaml().replace("5s", "10s")).unwrap();
    let out = run(&addr, &["apply", "-f", d]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .contains("3 resource(s) of set \"default\" are no longer in the files"),
        "{out:?}"
    );
    describe(&addr, &["schedules", "describe", "nightly"]);
    let out = run(&addr, &["diff", "-f", d, "--prune", "-o", "json"]);
    assert_eq!(out.code, 2, "{out:?}");
    let expected = vec![
        pair("delete", "rule/failures"),
        pair("delete", "schedule/nightly"),
        pair("delete", "subscription/ops/webhook:http://127.0.0.1:9/hook"),
    ];
    assert_eq!(changes(&out), expected);
    let out = run(&addr, &["apply", "-f", d, "--prune", "-o", "json"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert_eq!(changes(&out), expected);
    assert_eq!(run(&addr, &["rules", "describe", "failures"]).code, 1);
    assert_eq!(run(&addr, &["schedules", "describe", "nightly"]).code, 1);
    let topic = describe(&addr, &["topics", "describe", "ops"]);
    assert_eq!(
        topic[0]["subscriptions"].as_array().unwrap().len(),
        1,
        "{topic}"
    );
    let queues: Vec<String> = describe(&addr, &["queues", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["queue"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(queues, ["by-hand", "jobs", "jobs-dlq", "other-team"]);
    let out = run(&addr, &["apply", "-f", d, "--prune"]);
    assert_eq!(out.code, 0, "{out:?}");
}

#[test]
fn bad_files_are_refused_naming_the_file_the_document_and_the_field() {
    let mut env = Env::new();
    let addr = env.dev();
    let f = env.path("bad.yaml");

    // Read before anything is sent: a typo in a later document applies nothing.
    fs::write(&f, "queue: {name: fine}\n---\nqueues: {name: typo}\n").unwrap();
    let out = run(&addr, &["apply", "-f", f.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("bad.yaml: document 2"), "{out:?}");
    assert!(out.stderr.contains("unknown field `queues`"), "{out:?}");
    assert_eq!(
        describe(&addr, &["queues", "ls"]).as_array().unwrap().len(),
        0
    );

    fs::write(&f, "queue: {name: q, visibility_timout: 5s}\n").unwrap();
    let out = run(&addr, &["diff", "-f", f.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("unknown field `visibility_timout`"),
        "{out:?}"
    );

    // The server's checks, through the dry run: the field and the resource named.
    fs::write(&f, "queue: {name: q, visibility_timeout: 13h}\n").unwrap();
    for cmd in ["diff", "apply"] {
        let out = run(&addr, &[cmd, "-f", f.to_str().unwrap()]);
        assert_eq!(out.code, 1, "{out:?}");
        assert!(out.stderr.contains("queue \"q\""), "{out:?}");
        assert!(out.stderr.contains("visibility_timeout"), "{out:?}");
    }
    // A reference to what neither the files nor the server have.
    fs::write(
        &f,
        "schedule:\n  name: s\n  expression: rate(1 hour)\n  task: {task_definition: nowhere}\n",
    )
    .unwrap();
    let out = run(&addr, &["diff", "-f", f.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("nowhere"), "{out:?}");
    assert_eq!(
        describe(&addr, &["queues", "ls"]).as_array().unwrap().len(),
        0
    );
    assert_eq!(
        run(
            &addr,
            &["apply", "-f", env.path("missing.yaml").to_str().unwrap()]
        )
        .code,
        1
    );
}
