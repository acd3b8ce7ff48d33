//! Task history: paged listings over a time range, and retention policies that keep a
//! family's stopped tasks to a count or an age.

use std::time::Duration;

use skiff_tests::{cli, wait_for, Env};

/// Runs `n` tasks of `family` one after another to their end; returns their ids, oldest first.
fn run_family(addr: &str, family: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let out = cli(
                addr,
                &["run-task", "--task-def", family, "--wait", "-o", "json"],
            );
            assert_eq!(out.code, 0, "{out:?}");
            out.json()["id"].as_str().unwrap().to_string()
        })
        .collect()
}

/// `skiff tasks ls ARGS -o json`: the ids listed, and stderr (where the next page is told).
fn ls(addr: &str, args: &[&str]) -> (Vec<String>, String) {
    let mut all = vec!["tasks", "ls", "-o", "json"];
    all.extend_from_slice(args);
    let out = cli(addr, &all);
    assert_eq!(out.code, 0, "{out:?}");
    let ids = out
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    (ids, out.stderr)
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[test]
fn pages_and_time_ranges_list_history_and_retention_keeps_it_to_a_count_and_an_age() {
    let mut env = Env::new();
    let addr = env.dev();
    for family in ["hist", "old"] {
        env.register_json(
            &addr,
            serde_json::json!({"family": family, "network_mode": "none", "containers": [{
                "name": "main", "image": env.busybox_image(), "command": ["true"],
                "cpu": 0.01, "memory": 8}]}),
        );
    }
    let ids = run_family(&addr, "hist", 6);
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();

    // Pages of 4: the newest 4, then the 2 before them, each task once.
    let (page1, told) = ls(&addr, &["--family", "hist", "--limit", "4"]);
    assert_eq!(page1, newest_first[..4]);
    let token = told
        .split("--page-token ")
        .nth(1)
        .map(str::trim)
        .unwrap_or_else(|| panic!("no next page told: {told:?}"));
    assert_eq!(token, page1[3]);
    let (page2, told) = ls(
        &addr,
        &["--family", "hist", "--limit", "4", "--page-token", token],
    );
    assert_eq!(page2, newest_first[4..]);
    assert!(
        !told.contains("--page-token"),
        "a last page tells no next one: {told}"
    );

    // A time range: created since the 4th task (an RFC 3339 time), and before it.
    let fourth = cli(&addr, &["tasks", "describe", &ids[3], "-o", "json"]).json();
    let at = rfc3339(fourth["createdAtMs"].as_i64().unwrap());
    assert_eq!(
        ls(&addr, &["--family", "hist", "--since", &at]).0,
        newest_first[..3]
    );
    assert_eq!(
        ls(&addr, &["--family", "hist", "--until", &at]).0,
        newest_first[3..]
    );
    assert_eq!(ls(&addr, &["--family", "hist", "--until", "1h"]).0.len(), 0);

    // Bad input names the field.
    let bad = cli(&addr, &["tasks", "ls", "--page-token", "nope"]);
    assert!(
        bad.code != 0 && bad.stderr.contains("page_token"),
        "{bad:?}"
    );
    let bad = cli(&addr, &["tasks", "ls", "--since", "yesterday-ish"]);
    assert!(bad.code != 0 && bad.stderr.contains("--since"), "{bad:?}");
    for (args, field) in [
        (&["family/hist"][..], "--keep"),
        (&["fam/hist", "--keep", "3"][..], "scope"),
        (&["family/hist", "--keep", "0"][..], "keep"),
    ] {
        let mut all = vec!["tasks", "retention", "set"];
        all.extend_from_slice(args);
        let bad = cli(&addr, &all);
        assert!(
            bad.code != 0 && bad.stderr.contains(field),
            "{args:?}: {bad:?}"
        );
    }
    let bad = cli(&addr, &["tasks", "retention", "rm", "family/nope"]);
    assert!(
        bad.code != 0 && bad.stderr.contains("family/nope"),
        "{bad:?}"
    );

    // Keep 3: the 3 oldest go (at once: setting a policy wakes the sweep).
    let set = cli(
        &addr,
        &[
            "tasks",
            "retention",
            "set",
            "family/hist",
            "--keep",
            "3",
            "-o",
            "json",
        ],
    );
    assert_eq!(set.code, 0, "{set:?}");
    assert_eq!(set.json()["scope"], "family/hist");
    assert_eq!(set.json()["keep"], 3);
    wait_for("hist kept to its newest 3", Duration::from_secs(30), || {
        let (left, _) = ls(&addr, &["--family", "hist"]);
        (left == newest_first[..3]).then_some(())
    });
    let gone = cli(&addr, &["tasks", "describe", &ids[0]]);
    assert!(gone.code != 0, "a deleted task is gone: {gone:?}");

    // An age: old's tasks once they stopped more than 1 s ago.
    let old = run_family(&addr, "old", 2);
    wait_for(
        "old's tasks stopped over 1.5 s ago",
        Duration::from_secs(30),
        || {
            let t = cli(&addr, &["tasks", "describe", &old[1], "-o", "json"]).json();
            let stopped = t["stoppedAtMs"].as_i64().unwrap();
            (chrono::Utc::now().timestamp_millis() - stopped > 1500).then_some(())
        },
    );
    let set = cli(
        &addr,
        &["tasks", "retention", "set", "family/old", "--max-age", "1s"],
    );
    assert_eq!(set.code, 0, "{set:?}");
    wait_for(
        "old's tasks past 1 s deleted",
        Duration::from_secs(30),
        || ls(&addr, &["--family", "old"]).0.is_empty().then_some(()),
    );
    // hist, under its own policy, is untouched by old's.
    assert_eq!(ls(&addr, &["--family", "hist"]).0, newest_first[..3]);

    // The policies, and the default, listed; one removed.
    let listed = cli(&addr, &["tasks", "retention", "ls", "-o", "json"]).json();
    let scopes: Vec<&str> = listed["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["scope"].as_str().unwrap())
        .collect();
    assert_eq!(scopes, ["family/hist", "family/old"]);
    assert_eq!(listed["default"]["keep"], 10000);
    assert_eq!(listed["default"]["maxAgeSeconds"], 30 * 24 * 3600);
    let table = cli(&addr, &["tasks", "retention", "ls"]);
    assert!(
        table.stdout.contains("family/old") && table.stdout.contains("1s"),
        "{table:?}"
    );
    assert_eq!(
        cli(&addr, &["tasks", "retention", "rm", "family/old"]).code,
        0
    );
    let listed = cli(&addr, &["tasks", "retention", "ls", "-o", "json"]).json();
    assert_eq!(listed["policies"].as_array().unwrap().len(), 1);
}

/// `skiff events tail -n all -o json` (as `consumer`, when given): the ids printed.
fn tail(addr: &str, consumer: Option<&str>) -> Vec<String> {
    let mut args = vec!["events", "tail", "-o", "json"];
    match consumer {
        Some(c) => args.extend(["--consumer", c]),
        None => args.extend(["-n", "all"]),
    }
    let out = cli(addr, &args);
    assert_eq!(out.code, 0, "{out:?}");
    out.stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["id"].as_str().unwrap().to_string()
        })
        .collect()
}

fn put(addr: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let out = cli(
                addr,
                &[
                    "events",
                    "put",
                    "--source",
                    "app",
                    "--detail-type",
                    "T",
                    "-o",
                    "json",
                ],
            );
            assert_eq!(out.code, 0, "{out:?}");
            out.json()["eventId"].as_str().unwrap().to_string()
        })
        .collect()
}

#[test]
fn the_event_log_keeps_its_newest_but_never_drops_what_a_consumer_has_not_read() {
    let mut env = Env::new();
    let args = ["--plaintext", "--event-log-keep", "3"];
    let (ctl, addr) = env.controller("127.0.0.1:0", &args);
    let first = put(&addr, 2);
    // A new consumer starts where -n says (20: both), and resumes after what it printed.
    let read = {
        let out = cli(
            &addr,
            &[
                "events",
                "tail",
                "--consumer",
                "audit",
                "-n",
                "20",
                "-o",
                "json",
            ],
        );
        assert_eq!(out.code, 0, "{out:?}");
        out.stdout.lines().count()
    };
    assert_eq!(read, 2);
    let more = put(&addr, 8);
    let all: Vec<String> = first.iter().chain(&more).cloned().collect();
    assert_eq!(tail(&addr, None), all);

    // A restart sweeps at once: the log keeps its newest 3, except what audit has not read.
    let restart = |env: &mut Env, ctl: usize| {
        env.procs[ctl].kill9();
        env.controller(addr.trim_start_matches("http://"), &args).0
    };
    let ctl = restart(&mut env, ctl);
    wait_for(
        "the log trimmed to what audit has not read",
        Duration::from_secs(30),
        || (tail(&addr, None) == more).then_some(()),
    );
    let listed = cli(&addr, &["events", "consumers", "ls", "-o", "json"]).json();
    assert_eq!(listed[0]["name"], "audit");
    assert_eq!(listed[0]["cursor"], first[1].as_str());
    assert_eq!(listed[0]["behind"], 8);

    // audit reads the 8 (resuming, no -n): now only the count holds them.
    assert_eq!(tail(&addr, Some("audit")), more);
    assert_eq!(
        tail(&addr, Some("audit")),
        Vec::<String>::new(),
        "nothing new"
    );
    let _ctl = restart(&mut env, ctl);
    wait_for(
        "the log trimmed to its newest 3",
        Duration::from_secs(30),
        || (tail(&addr, None) == more[5..]).then_some(()),
    );

    // Forgotten, a consumer holds nothing; a second rm names what is missing.
    let rm = cli(&addr, &["events", "consumers", "rm", "audit"]);
    assert_eq!(rm.code, 0, "{rm:?}");
    let rm = cli(&addr, &["events", "consumers", "rm", "audit"]);
    assert!(rm.code != 0 && rm.stderr.contains("audit"), "{rm:?}");
    let bad = cli(&addr, &["events", "tail", "--consumer", "no spaces"]);
    assert!(bad.code != 0 && bad.stderr.contains("consumer"), "{bad:?}");
}
