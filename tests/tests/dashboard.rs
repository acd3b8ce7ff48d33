//! The web dashboard in a real headless browser (Debian's Chromium through chromedriver)
//! against a real `skiff dev`: a wrong token is refused at the login form, a read-only token
//! logs in, a task run from the CLI appears RUNNING with its live log and then STOPPED, its
//! events stream in, every page lists what was declared (nodes, services and their
//! deployments, queues, rules, schedules with next fire times, topics and subscriptions), the
//! plots draw the queue's depth, and the page's API refuses a request without a token.

use std::fs;
use std::time::Duration;

use skiff_tests::browser::Browser;
use skiff_tests::{cli, http, read_only_token, run_task, wait_for, Env};

const LONG: Duration = Duration::from_secs(60);

#[test]
fn the_dashboard_logs_in_and_shows_a_task_from_the_cli_appear_and_stop() {
    let mut env = Env::new();
    let addr = env.dev();
    let web = env.procs[0].http_url();
    let image = env.busybox_image();
    // Something on every page.
    let stack = env.path("stack.yaml");
    fs::write(
        &stack,
        format!(
            "queue: {{name: jobs}}\n---\n\
             task_definition:\n  family: worker\n  containers:\n    - name: main\n      image: {image}\n      command: [sleep, \"3600\"]\n      stop_timeout: 1s\n---\n\
             topic:\n  name: ops\n  subscriptions:\n    - queue: jobs\n---\n\
             rule:\n  name: stops\n  pattern: {{source: [skiff.task], detail-type: [Task State Change], detail: {{lastStatus: [STOPPED]}}}}\n  targets: [{{id: ops, topic: ops}}]\n---\n\
             schedule:\n  name: nightly\n  expression: cron(0 3 * * ? *)\n  task: {{task_definition: worker}}\n---\n\
             service:\n  name: workers\n  task_definition: worker\n  desired_count: 1\n  stop_timeout: 1s\n"
        ),
    )
    .unwrap();
    let out = cli(&addr, &["apply", "-f", stack.to_str().unwrap()]);
    assert_eq!(out.code, 2, "{out:?}");
    let out = cli(&addr, &["queues", "send", "jobs", "a", "b", "c"]);
    assert_eq!(out.code, 0, "{out:?}");

    // The page's API: no token, no data.
    let (status, _) = http("GET", &format!("{web}/ui/api/tasks"), None, b"");
    assert_eq!(status, 401);

    let b = Browser::start(&env.path("browser"));
    b.goto(&format!("{web}/ui/"));
    b.type_into("#token", "not-a-token");
    b.click("#login-button");
    b.wait_text("#login-error", "Not logged in", LONG);
    assert!(b.find("#nav").is_some());
    assert_eq!(b.eval("return document.querySelector('#nav').hidden"), true);
    let token = read_only_token(&addr);
    b.type_into("#token", &token);
    b.click("#login-button");
    b.wait_text("#who", "read-only", LONG);

    // A task run from the CLI appears, RUNNING, with its live log; stopped, it shows STOPPED.
    b.eval("location.hash = '#/tasks'");
    b.wait_text("#view", "Tasks", LONG);
    let id = run_task(
        &addr,
        &[
            "--image",
            &image,
            "--stop-timeout",
            "1s",
            "--",
            "sh",
            "-c",
            "echo hello-from-the-dashboard-test; exec sleep 3600",
        ],
    );
    let row = format!("tr[data-href='#/task/{id}']");
    wait_for("the task's row to show RUNNING", LONG, || {
        b.text(&row).contains("RUNNING").then_some(())
    });
    b.click(&row);
    b.wait_text("#view h1", &id, LONG);
    b.wait_text("#logs", "hello-from-the-dashboard-test", LONG);
    assert_eq!(cli(&addr, &["tasks", "stop", &id]).code, 0);
    b.wait_text("#view", "STOPPED", LONG);
    b.eval("location.hash = '#/tasks'");
    wait_for("the task's row to show STOPPED", LONG, || {
        b.text(&row).contains("STOPPED").then_some(())
    });

    // The event stream, live: the task's state changes.
    b.eval("location.hash = '#/events'");
    b.wait_text("#events", "Task State Change", LONG);

    // Each page shows what was declared.
    for (page, what) in [
        ("nodes", "local"),
        ("services", "worker:1"),
        ("queues", "jobs"),
        ("rules", "stops"),
        ("schedules", "cron(0 3 * * ? *)"),
        ("topics", "ops"),
    ] {
        b.eval(&format!("location.hash = '#/{page}'"));
        b.wait_text("#view", what, LONG);
    }
    // …the rule's recent matches (the stopped task's event), the schedule's next fire time
    // (03:00 UTC), and the service's running task.
    b.eval("location.hash = '#/rules'");
    b.wait_text("#view", &format!("Task State Change skiff:task/{id}"), LONG);
    b.eval("location.hash = '#/schedules'");
    b.wait_text("#view", "T03:00:00", LONG);
    b.eval("location.hash = '#/services'");
    b.wait_text("#view", "running 1", LONG);

    // The plots: the queue's depth (3) and the service's size, once sampled.
    b.eval("location.hash = '#/overview'");
    wait_for("the plots to draw the queue and the service", LONG, || {
        let v = b.eval(
            "return [...document.querySelectorAll('.chart polyline')].map(p => p.dataset.series)",
        );
        let names: Vec<String> = v
            .as_array()?
            .iter()
            .filter_map(|n| n.as_str().map(String::from))
            .collect();
        (names.contains(&"jobs".to_string()) && names.contains(&"workers".to_string()))
            .then_some(())
    });
    b.wait_text("#view", "Tasks running", LONG);
}
