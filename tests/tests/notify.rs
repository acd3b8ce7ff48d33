//! Notifications end to end: rules → topics → a real webhook receiver (verifying signatures)
//! and a real SMTP server (STARTTLS + AUTH), with retries, dead letters, redrive, a receiver
//! that is down for a while, a controller killed with deliveries pending, and the e-mail for a
//! real OOM-killed container.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use skiff_tests::receiver::Receiver;
use skiff_tests::smtp::SmtpServer;
use skiff_tests::{cli, put_event, wait_for, Env};

const LONG: Duration = Duration::from_secs(60);

fn write(env: &Env, name: &str, text: &str) -> String {
    let p = env.path(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

fn ok(addr: &str, args: &[&str]) -> skiff_tests::Cli {
    let out = cli(addr, args);
    assert_eq!(out.code, 0, "{args:?}: {out:?}");
    out
}

/// Subscribes the receiver's URL; returns (subscription id, signing secret).
fn subscribe_webhook(addr: &str, topic: &str, url: &str, extra: &[&str]) -> (String, String) {
    let mut args = vec!["topics", "subscribe", topic, "--webhook", url, "-o", "json"];
    args.extend_from_slice(extra);
    let v = ok(addr, &args).json();
    (
        v["id"].as_str().unwrap().to_string(),
        v["signingSecret"].as_str().unwrap().to_string(),
    )
}

fn topic_status(addr: &str, topic: &str) -> serde_json::Value {
    ok(addr, &["topics", "describe", topic, "-o", "json"]).json()[0].clone()
}

fn count(status: &serde_json::Value, field: &str, sub: &str) -> u64 {
    status[field][sub].as_u64().unwrap_or(0)
}

#[test]
fn webhooks_are_signed_retried_dead_lettered_and_redriven() {
    let mut env = Env::new();
    let addr = env.dev();
    let topic = write(
        &env,
        "topic.yaml",
        "name: admins\ndelivery: {max_attempts: 4, min_delay: 200ms, max_delay: 1s, timeout: 500ms}\n",
    );
    ok(&addr, &["topics", "put", "-f", &topic]);
    let hook = Receiver::start();
    let (sub, secret) = subscribe_webhook(&addr, "admins", &hook.url(), &[]);
    assert!(secret.starts_with("whsec_"), "{secret}");
    hook.set_secret(&secret);
    // A second receiver wants only some messages, wrapped with the delivery's metadata.
    let picky = Receiver::start();
    let (picky_sub, picky_secret) = subscribe_webhook(
        &addr,
        "admins",
        &picky.url(),
        &["--filter", r#"{"detail": {"n": [3]}}"#, "--formatted"],
    );
    picky.set_secret(&picky_secret);
    let rule = write(
        &env,
        "rule.yaml",
        "name: pings\npattern: {source: [app]}\ntargets: [{id: admins, notify: admins}]\n",
    );
    ok(&addr, &["rules", "put", "-f", &rule]);

    // Three failures that may pass (503, 500, 429), then success: four attempts of one delivery.
    hook.answer_next(&[503, 500, 429]);
    let first = put_event(&addr, "app", "Ping", r#"{"n": 1}"#);
    let got = wait_for("the first event delivered", LONG, || {
        let r = hook.received();
        r.iter().any(|r| r.status == 200).then_some(r)
    });
    assert_eq!(
        got.iter().map(|r| r.status).collect::<Vec<_>>(),
        [503, 500, 429, 200]
    );
    assert!(got.iter().all(|r| r.signature_ok), "signatures verify");
    let ids: HashSet<&str> = got.iter().map(|r| r.header("skiff-delivery-id")).collect();
    assert_eq!(ids.len(), 1, "one delivery, retried: {ids:?}");
    assert_eq!(
        got.iter()
            .map(|r| r.header("skiff-attempt").to_string())
            .collect::<Vec<_>>(),
        ["1", "2", "3", "4"]
    );
    // Raw (the default for webhooks): the event itself.
    let ev = got[3].json();
    assert_eq!(ev["id"], first);
    assert_eq!(ev["detail"]["n"], 1);
    assert_eq!(got[3].header("skiff-topic"), "admins");
    assert_eq!(got[3].header("skiff-subscription"), sub);
    // Backoff: at least half of 200 ms, 400 ms, 800 ms (equal jitter) between the attempts.
    for (i, min) in [(1, 100), (2, 200), (3, 400)] {
        let gap = got[i].at_ms - got[i - 1].at_ms;
        assert!(gap >= min, "gap before attempt {}: {gap} ms", i + 1);
    }

    // A 4xx other than 429 is not retried: dead-lettered at once, listed, then redriven.
    hook.answer_next(&[400]);
    let second = put_event(&addr, "app", "Ping", r#"{"n": 2}"#);
    let dead = wait_for("the refused delivery in the dead letters", LONG, || {
        let v = ok(&addr, &["topics", "dlq", "admins", "-o", "json"]).json();
        let list = v.as_array()?.clone();
        (!list.is_empty()).then_some(list)
    });
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["eventId"], second);
    assert_eq!(dead[0]["attempts"], 1);
    assert!(
        dead[0]["lastError"].as_str().unwrap().contains("HTTP 400"),
        "{dead:?}"
    );
    assert_eq!(count(&topic_status(&addr, "admins"), "dead", &sub), 1);
    let out = ok(&addr, &["topics", "redrive", "admins"]);
    assert_eq!(out.stdout.trim(), "1 redriven");
    wait_for("the redriven delivery", LONG, || {
        hook.received()
            .iter()
            .any(|r| r.status == 200 && r.json()["id"] == second)
            .then_some(())
    });
    // The receiver records a request before it answers: the controller books the delivery
    // a moment after the receiver has it.
    wait_for("the redriven delivery booked", LONG, || {
        let st = topic_status(&addr, "admins");
        (count(&st, "dead", &sub) == 0
            && count(&st, "pending", &sub) == 0
            && count(&st, "delivered", &sub) == 2)
            .then_some(())
    });

    // A receiver that does not answer in time (the topic allows 500 ms) is tried again.
    hook.stall_next(3000);
    let slow = put_event(&addr, "app", "Ping", r#"{"n": 4}"#);
    let tries = wait_for("the timed-out delivery retried", LONG, || {
        let tries: Vec<_> = hook
            .received()
            .into_iter()
            .filter(|r| r.json()["id"] == slow)
            .collect();
        (tries.len() >= 2).then_some(tries)
    });
    assert_eq!(tries[0].header("skiff-attempt"), "1");
    assert_eq!(tries[1].header("skiff-attempt"), "2");
    assert_eq!(
        tries[0].header("skiff-delivery-id"),
        tries[1].header("skiff-delivery-id")
    );
    assert!(
        tries[1].at_ms - tries[0].at_ms >= 500,
        "retried after the timeout"
    );

    // The filter: only n = 3 reaches the picky receiver, wrapped.
    let third = put_event(&addr, "app", "Ping", r#"{"n": 3}"#);
    let wrapped = wait_for("the filtered message", LONG, || {
        picky.received().into_iter().find(|r| r.status == 200)
    });
    let w = wrapped.json();
    assert_eq!(w["message"]["id"], third);
    assert_eq!(w["eventId"], third);
    assert_eq!(w["subscription"], picky_sub);
    assert_eq!(w["rule"], "pings");
    assert_eq!(w["subject"], "[skiff] Ping from app");
    wait_for("the third event at the first receiver", LONG, || {
        hook.received()
            .iter()
            .any(|r| r.json()["id"] == third)
            .then_some(())
    });
    assert_eq!(picky.received().len(), 1, "n = 1 and 2 were filtered out");

    // Bad subscriptions and topics are refused, naming the field.
    for (args, want) in [
        (
            vec!["topics", "subscribe", "admins", "--webhook", "ftp://x/"],
            "endpoint",
        ),
        (
            vec!["topics", "subscribe", "admins", "--email", "not-an-address"],
            "endpoint",
        ),
        (
            vec![
                "topics",
                "subscribe",
                "admins",
                "--email",
                "ops@example.test",
            ],
            "--smtp-url",
        ),
        (
            vec![
                "topics",
                "subscribe",
                "nope",
                "--webhook",
                "http://127.0.0.1:1/",
            ],
            "topic",
        ),
        (
            vec![
                "topics",
                "subscribe",
                "admins",
                "--webhook",
                "http://127.0.0.1:1/",
                "--filter",
                "{\"a\": 1}",
            ],
            "filter",
        ),
        (
            vec![
                "topics",
                "put",
                "bad",
                "--min-delay",
                "10m",
                "--max-delay",
                "1m",
            ],
            "min_delay",
        ),
        (vec!["topics", "rm", "admins"], "pings"),
    ] {
        let out = cli(&addr, &args);
        assert_ne!(out.code, 0, "{args:?}");
        assert!(out.stderr.contains(want), "{want:?} in {out:?}");
    }
    let bad_rule = write(
        &env,
        "bad-rule.yaml",
        "name: nowhere\npattern: {source: [app]}\ntargets: [{id: t, notify: missing}]\n",
    );
    let out = cli(&addr, &["rules", "put", "-f", &bad_rule]);
    assert!(out.stderr.contains("targets[0].topic"), "{out:?}");

    // Once no rule sends to it, a topic goes with its subscriptions.
    ok(&addr, &["rules", "rm", "pings"]);
    ok(&addr, &["topics", "unsubscribe", &picky_sub]);
    assert_eq!(
        topic_status(&addr, "admins")["subscriptions"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    ok(&addr, &["topics", "rm", "admins"]);
    let out = cli(&addr, &["topics", "describe", "admins"]);
    assert!(out.stderr.contains("no topic \"admins\""), "{out:?}");
    let out = cli(&addr, &["topics", "unsubscribe", &sub]);
    assert!(out.stderr.contains("no subscription"), "{out:?}");
}

#[test]
fn a_receiver_down_for_a_while_and_a_controller_killed_lose_nothing() {
    let mut env = Env::new();
    let (ctl, addr) = env.controller("127.0.0.1:0", &["--plaintext"]);
    let topic = write(
        &env,
        "topic.yaml",
        "name: ops\ndelivery: {max_attempts: 100, min_delay: 100ms, max_delay: 1s}\n",
    );
    ok(&addr, &["topics", "put", "-f", &topic]);
    let mut hook = Receiver::start();
    let (sub, secret) = subscribe_webhook(&addr, "ops", &hook.url(), &[]);
    hook.set_secret(&secret);
    let rule = write(
        &env,
        "rule.yaml",
        "name: all\npattern: {source: [app]}\ntargets: [{id: ops, notify: ops}]\n",
    );
    ok(&addr, &["rules", "put", "-f", &rule]);
    hook.down();
    let sent: Vec<String> = (0..20)
        .map(|i| put_event(&addr, "app", "Ping", &format!(r#"{{"i": {i}}}"#)))
        .collect();
    // Every message is in the outbox and failing against the closed port.
    wait_for("20 deliveries pending", LONG, || {
        (count(&topic_status(&addr, "ops"), "pending", &sub) == 20).then_some(())
    });
    wait_for("failed attempts recorded", LONG, || {
        env.logs()
            .contains("notification failed; will retry")
            .then_some(())
    });
    env.procs[ctl].kill9();
    let hostport = addr.trim_start_matches("http://").to_string();
    let (_, again) = env.controller(&hostport, &["--plaintext"]);
    assert_eq!(again, addr);
    assert_eq!(count(&topic_status(&addr, "ops"), "pending", &sub), 20);
    hook.up();
    let got = wait_for("every message delivered", LONG, || {
        let ok: HashMap<String, String> = hook
            .received()
            .iter()
            .filter(|r| r.status == 200)
            .map(|r| {
                (
                    r.json()["id"].as_str().unwrap().to_string(),
                    r.header("skiff-delivery-id").to_string(),
                )
            })
            .collect();
        (ok.len() == 20).then_some(ok)
    });
    let want: HashSet<String> = sent.into_iter().collect();
    assert_eq!(got.keys().cloned().collect::<HashSet<_>>(), want);
    // At least once: a message seen twice carries the same delivery id both times.
    for r in hook.received().iter().filter(|r| r.status == 200) {
        assert_eq!(
            got[r.json()["id"].as_str().unwrap()],
            r.header("skiff-delivery-id")
        );
        assert!(r.signature_ok);
    }
    wait_for("the outbox empty, nothing dead", LONG, || {
        let st = topic_status(&addr, "ops");
        (count(&st, "pending", &sub) == 0 && count(&st, "dead", &sub) == 0).then_some(())
    });
}

#[test]
fn an_oom_killed_task_is_mailed_to_a_confirmed_subscriber() {
    let mut env = Env::new();
    let smtp = SmtpServer::start(&env.path("smtp"));
    let addr = env.dev_with(&[
        "--smtp-url",
        &smtp.url(),
        "--smtp-from",
        "skiff <skiff@example.test>",
        "--smtp-ca-file",
        smtp.ca_file.to_str().unwrap(),
    ]);
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/examples/stopped-task-alerts");
    ok(
        &addr,
        &[
            "topics",
            "put",
            "-f",
            examples.join("topic.yaml").to_str().unwrap(),
        ],
    );
    let out = ok(
        &addr,
        &[
            "topics",
            "subscribe",
            "admins",
            "--email",
            "ops@example.test",
        ],
    );
    let sub = out.stdout.split_whitespace().next().unwrap().to_string();
    assert!(out.stdout.contains("pending-confirmation"), "{out:?}");
    ok(
        &addr,
        &[
            "rules",
            "put",
            "-f",
            examples.join("rule.yaml").to_str().unwrap(),
        ],
    );

    // Nothing reaches an unconfirmed address: a failing task now is counted, not mailed.
    let img = env.busybox_image();
    let out = cli(
        &addr,
        &[
            "run-task", "--wait", "--image", &img, "--", "sh", "-c", "exit 3",
        ],
    );
    assert_eq!(out.code, 3, "{out:?}");
    wait_for("the skipped message counted", LONG, || {
        let st = topic_status(&addr, "admins");
        (st["subscriptions"][0]["skippedUnconfirmed"] == "1"
            || st["subscriptions"][0]["skippedUnconfirmed"] == 1)
            .then_some(())
    });

    // The confirmation mail, over STARTTLS with AUTH, carries the link that confirms.
    let mail = wait_for("the confirmation mail", LONG, || {
        smtp.mails().into_iter().next()
    });
    assert_eq!(mail.meta["tls"], true, "{:?}", mail.meta);
    assert_eq!(mail.meta["auth_user"], smtp.user.as_str());
    assert_eq!(
        mail.meta["rcpt_tos"],
        serde_json::json!(["ops@example.test"])
    );
    assert!(mail.header("Subject").contains("Confirm"), "{}", mail.raw);
    let body = mail.body();
    let link = body
        .split_whitespace()
        .find(|w| w.starts_with("http://") && w.contains("/confirm/"))
        .unwrap_or_else(|| panic!("no link in {body}"))
        .to_string();
    assert!(link.contains(&sub), "{link}");
    let (status, _) = skiff_tests::http("GET", &link.replace("token=", "token=x"), None, b"");
    assert_eq!(status, 403, "a wrong token does not confirm");
    let (status, text) = skiff_tests::http("GET", &link, None, b"");
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        topic_status(&addr, "admins")["subscriptions"][0]["status"],
        "confirmed"
    );

    // A clean exit is not reported; a memory hog killed by the kernel is.
    let out = cli(
        &addr,
        &["run-task", "--wait", "--image", &img, "--", "true"],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let hog = "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived";
    let out = cli(
        &addr,
        &[
            "run-task", "--wait", "-o", "json", "--image", &img, "--memory", "16", "--", "sh",
            "-c", hog,
        ],
    );
    assert_ne!(out.code, 0, "{out:?}");
    let task = out.json();
    let id = task["id"].as_str().unwrap().to_string();
    let alert = wait_for("the OOM alert mail", LONG, || {
        smtp.mails().into_iter().find(|m| m.body().contains(&id))
    });
    let subject = alert.header("Subject");
    assert!(subject.contains("OutOfMemoryError"), "{subject}");
    assert!(subject.contains("EssentialContainerExited"), "{subject}");
    let body = alert.body();
    for want in [
        format!("skiff tasks logs {id}"),
        "Node        local".to_string(),
        "OutOfMemoryError".to_string(),
        "Stopped     20".to_string(),
    ] {
        assert!(body.contains(&want), "{want:?} in\n{body}");
    }
    assert_eq!(alert.meta["tls"], true);
    // Two mails in all: the confirmation and the alert (the clean exit was not mailed, the
    // failure before confirmation was skipped).
    assert_eq!(smtp.mails().len(), 2);
}
