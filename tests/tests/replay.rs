//! Archive and replay, end to end against a real `skiff dev`: events already on the bus are
//! put back for a rule made after them (and for every rule), as copies marked with the
//! replay's name; events outside the range, and replays of replays, are not; a range older
//! than the log's retention is refused with the reason.

use std::time::Duration;

use skiff_tests::{cli, put_event, wait_for, Env};

fn visible(addr: &str, queue: &str) -> u64 {
    cli(addr, &["queues", "describe", queue, "-o", "json"]).json()["visible"]
        .as_u64()
        .unwrap_or(0)
}

fn rule_to_queue(env: &Env, addr: &str, name: &str, queue: &str) {
    assert_eq!(cli(addr, &["queues", "create", queue]).code, 0);
    env.put_yaml(
        addr,
        "rules",
        name,
        &format!(
            "name: {name}\npattern:\n  source: [uploads]\ntargets:\n  - id: q\n    queue: {queue}\n"
        ),
    );
}

fn wait_visible(addr: &str, queue: &str, n: u64) {
    wait_for(
        &format!("{n} messages in {queue}"),
        Duration::from_secs(20),
        || (visible(addr, queue) == n).then_some(()),
    );
}

#[test]
fn a_rule_made_later_gets_earlier_events_replayed_for_it_alone_or_with_every_rule() {
    let mut env = Env::new();
    let addr = env.dev();
    rule_to_queue(&env, &addr, "old", "old-q");
    let before = chrono::Utc::now();
    for i in 0..3 {
        put_event(
            &addr,
            "uploads",
            "Object Created",
            &format!(r#"{{"key": "photo-{i}.jpg"}}"#),
        );
    }
    wait_visible(&addr, "old-q", 3);
    std::thread::sleep(Duration::from_millis(5));
    let until = chrono::Utc::now();
    std::thread::sleep(Duration::from_millis(5));
    // After the range: a fourth event, and the new rule, which sees only new events.
    put_event(&addr, "uploads", "Object Created", r#"{"key": "late.jpg"}"#);
    wait_visible(&addr, "old-q", 4);
    rule_to_queue(&env, &addr, "new", "new-q");
    assert_eq!(visible(&addr, "new-q"), 0);

    // Replayed for the new rule alone: its queue gets the three, the old rule nothing again.
    let from = before.to_rfc3339();
    let to = until.to_rfc3339();
    let out = cli(
        &addr,
        &[
            "events", "replay", "--from", &from, "--to", &to, "--rule", "new", "--name",
            "backfill", "-o", "json",
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let r = out.json();
    assert_eq!(r["name"], "backfill");
    assert_eq!(r["replayed"], 3, "{r}");
    wait_visible(&addr, "new-q", 3);
    let got = cli(
        &addr,
        &["queues", "receive", "new-q", "--max", "10", "-o", "json"],
    );
    assert_eq!(got.code, 0, "{got:?}");
    let bodies: Vec<serde_json::Value> = got
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|m| serde_json::from_str(m["body"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(bodies.len(), 3, "{}", got.stdout);
    let mut keys: Vec<&str> = bodies
        .iter()
        .map(|b| b["detail"]["key"].as_str().unwrap())
        .collect();
    keys.sort();
    assert_eq!(keys, ["photo-0.jpg", "photo-1.jpg", "photo-2.jpg"]);
    assert!(
        bodies.iter().all(|b| b["replay-name"] == "backfill"),
        "{bodies:?}"
    );
    // The old rule saw nothing more (give the dispatcher a pass to prove it).
    put_event(
        &addr,
        "uploads",
        "Object Created",
        r#"{"key": "marker.jpg"}"#,
    );
    wait_visible(&addr, "old-q", 5);
    wait_visible(&addr, "new-q", 1); // the three received are in flight; the marker is visible

    // The copies are on the log, marked; a replay of every rule over the whole time skips them.
    let tail = cli(&addr, &["events", "tail", "-n", "all", "-o", "json"]);
    let replayed = tail
        .stdout
        .lines()
        .filter(|l| l.contains("backfill"))
        .count();
    assert_eq!(replayed, 3, "{}", tail.stdout);
    let out = cli(&addr, &["events", "replay", "--from", &from, "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    // Five originals (three, late, marker), not the three copies.
    assert_eq!(out.json()["replayed"], 5, "{}", out.stdout);
    wait_visible(&addr, "old-q", 10);

    // Older than the log keeps, or a rule that does not exist: refused, saying why.
    let out = cli(&addr, &["events", "replay", "--from", "30d"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("--event-log-max-age"), "{out:?}");
    let out = cli(
        &addr,
        &["events", "replay", "--from", &from, "--rule", "nope"],
    );
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("no rule \"nope\""), "{out:?}");
}
