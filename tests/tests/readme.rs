//! The README's examples, run exactly as written: every ```sh block after the two commands
//! (which run skiff and this suite), in order, in one bash session with `-euo pipefail`,
//! against a real `skiff dev`. A ```yaml block whose first line is `# NAME.yaml` is the file
//! the commands name: it is written to the working directory first.

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use skiff_tests::{config_home, skiff_bin, Env};

/// (info string, text) of every fenced block.
fn blocks(markdown: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in markdown.lines() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(info)) => current = Some((info.trim().to_string(), String::new())),
            (Some(_), Some("")) => out.push(current.take().unwrap()),
            (Some((_, text)), _) => {
                text.push_str(line);
                text.push('\n');
            }
            (None, None) => {}
        }
    }
    out
}

#[test]
fn the_readme_examples_run_as_written() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = fs::read_to_string(repo.join("README.md")).unwrap();
    let all = blocks(&readme);
    let sh: Vec<&String> = all
        .iter()
        .filter(|(info, _)| info == "sh")
        .map(|(_, t)| t)
        .collect();
    // The README starts with the two commands; they are what runs skiff and this test.
    assert_eq!(sh[0].trim(), "./scripts/dev", "the README's first command");
    assert_eq!(
        sh[1].trim(),
        "./scripts/test",
        "the README's second command"
    );
    let script = sh[2..].iter().map(|s| s.as_str()).collect::<String>();
    assert!(script.lines().count() > 20, "the README has examples");

    let mut env = Env::new();
    let addr = env.dev();
    let work = env.path("readme");
    fs::create_dir_all(&work).unwrap();
    std::os::unix::fs::symlink(repo.join("deploy"), work.join("deploy")).unwrap();
    for (info, text) in &all {
        let name = text.lines().next().and_then(|l| l.strip_prefix("# "));
        if let (true, Some(name)) = (info == "yaml", name) {
            if name.ends_with(".yaml") && !name.contains(' ') {
                fs::write(work.join(name), text).unwrap();
            }
        }
    }
    // `skiff` on PATH, as for a user who installed it.
    let bin = env.path("bin");
    fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(skiff_bin(), bin.join("skiff")).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut child = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(&work)
        .env("PATH", path)
        .env("SKIFF_ADDR", &addr)
        .env("XDG_CONFIG_HOME", config_home())
        .env_remove("SKIFF_TOKEN")
        .stdin(Stdio::null())
        .stdout(fs::File::create(env.path("readme.out")).unwrap())
        .stderr(fs::File::create(env.path("readme.err")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the README's examples did not finish in 240 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = fs::read_to_string(env.path("readme.out")).unwrap();
    let err = fs::read_to_string(env.path("readme.err")).unwrap();
    let all_out = format!("--- stdout\n{out}\n--- stderr\n{err}");
    assert!(status.success(), "the README's examples failed: {all_out}");
    // What the README's comments say each command shows.
    for expected in [
        "exit code 3\n",                        // run-task --wait exits with the exit code
        "hi\n",                                 // --follow streams the output
        ": /dev/init -- sleep 3600\n",          // tasks exec, in the container (PID 1 is its init)
        "sent in\n",                            // tasks exec -i: standard input
        "uid=1000 gid=1000",                    // --user
        "18080->80/tcp",                        // a published port in tasks describe
        "exit code 143",                        // --init: sleep ends at the SIGTERM
        "howdy from",                           // the task definition, with an override
        "s3cret",                               // a secret file
        "exit code 1",                          // test-pattern: no match
        "pinger: stable, 2 running (pinger:1)", // services wait
        "pinger: stable, 3 running (pinger:2)", // the rolled-out revision
        "+ service/order-workers\n",            // diff lists what apply would create
        "3 to create, 0 to update, 0 to replace, 0 to delete, 0 unchanged\ndiff: exit 2\n",
        "3 created, 0 updated, 0 replaced, 0 deleted, 0 unchanged\napply: exit 2\n",
        "0 created, 0 updated, 0 replaced, 0 deleted, 3 unchanged\n", // idempotent
        "autoscaling.max: 2 → 4\n0 to create, 1 to update",           // an edit, field by field
    ] {
        assert!(out.contains(expected), "{expected:?} missing: {all_out}");
    }
    // nslookup of the service's name: one address per running task, on skiff's bridge.
    assert_eq!(
        out.matches("pinger.skiff.internal\nAddress: 10.89.")
            .count(),
        2,
        "{all_out}"
    );
    for expected in [
        "matched 1 rule: big-orders", // events put says which rules matched
        "no match at detail.total: the event has 50", // test-pattern explains
    ] {
        assert!(err.contains(expected), "{expected:?} missing: {all_out}");
    }
}
