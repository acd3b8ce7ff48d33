//! Object-store sources end to end: uploads to a real S3-compatible server (moto) notified to
//! skiff's HTTP listener as MinIO sends them, or found by a bucket watcher, start a rule's task
//! that reads the object with its task role's credentials and writes its output; `skiff dev`'s
//! local buckets do the same with no object store at all.

use std::time::Duration;

use skiff_tests::moto::{python_mounts, Moto};
use skiff_tests::{admin_token, cli, cli_stdin, http, wait_for, wait_status, Env, OwnBridge};

const LONG: Duration = Duration::from_secs(60);

fn write(env: &Env, name: &str, text: &str) -> String {
    let p = env.path(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

fn rule_tasks(addr: &str, rule: &str) -> Vec<serde_json::Value> {
    let out = cli(addr, &["tasks", "ls", "-o", "json"]);
    out.json()
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["group"] == format!("rule:{rule}"))
        .cloned()
        .collect()
}

/// Registers `family`: the host's python (bind-mounted read-only) running `script` under
/// `role`, on skiff's bridge (credentials at 169.254.170.2, as the examples have it).
fn register_python_task(env: &Env, addr: &str, family: &str, role: &str, script: &str) {
    let (python, mounts) = python_mounts();
    let def = serde_json::json!({
        "family": family, "network_mode": "bridge", "task_role": role,
        "containers": [{"name": "main", "image": env.busybox_image(),
            "command": [python.to_str().unwrap(), "-c", script],
            "mounts": mounts.iter().map(|m| {
                let p: Vec<&str> = m.split(':').collect();
                serde_json::json!({"source": p[0], "target": p[1], "read_only": true})
            }).collect::<Vec<_>>()}]
    });
    let def = write(env, &format!("{family}.json"), &def.to_string());
    assert_eq!(cli(addr, &["taskdefs", "register", "-f", &def]).code, 0);
}

/// A MinIO webhook body for one uploaded object.
fn minio_notification(bucket: &str, encoded_key: &str, size: u64, etag: &str) -> String {
    serde_json::json!({
        "EventName": "s3:ObjectCreated:Put",
        "Key": format!("{bucket}/{encoded_key}"),
        "Records": [{
            "eventVersion": "2.0", "eventSource": "minio:s3", "awsRegion": "",
            "eventTime": "2026-11-23T12:00:00.000Z", "eventName": "s3:ObjectCreated:Put",
            "userIdentity": {"principalId": "uploader"},
            "s3": {"s3SchemaVersion": "1.0", "configurationId": "Config",
                   "bucket": {"name": bucket, "arn": format!("arn:aws:s3:::{bucket}")},
                   "object": {"key": encoded_key, "size": size, "eTag": etag,
                              "contentType": "image/jpeg", "sequencer": "1234ABCD"}}
        }]
    })
    .to_string()
}

/// Moto for tasks on `bridge`: listening on every address of the node, so they reach it at
/// the bridge's gateway (the controller keeps using 127.0.0.1).
fn moto_for(bridge: &OwnBridge) -> (Moto, String) {
    let moto = Moto::start_listening("0.0.0.0");
    let port = moto.endpoint.rsplit(':').next().unwrap().to_string();
    let for_tasks = format!("http://{}:{port}", bridge.gateway);
    (moto, for_tasks)
}

/// Puts a role whose STS credentials read `photos/<read>` and write `photos/<write>` (the
/// secrets sts-key-id and sts-secret hold the controller's keys); its tasks reach the store
/// at `task_endpoint`.
fn put_sts_role(
    env: &Env,
    addr: &str,
    moto: &Moto,
    task_endpoint: &str,
    (name, read, write_to): (&str, &str, &str),
) {
    let role = write(
        env,
        "role.yaml",
        &format!(
            "name: {name}\nstorage:\n  sts: {{endpoint: {ep}, role_arn: {arn}, \
             access_key_id_secret: sts-key-id, secret_access_key_secret: sts-secret}}\n  \
             endpoint: {task_endpoint}\n  duration: 15m\n  grants:\n    - {{bucket: photos, prefix: {read}, access: read}}\n    \
             - {{bucket: photos, prefix: {write_to}, access: write}}\n",
            ep = moto.endpoint,
            arn = moto.role_arn
        ),
    );
    assert_eq!(cli(addr, &["roles", "put", "-f", &role]).code, 0);
}

#[test]
fn an_upload_notified_or_watched_starts_one_task_that_processes_it_with_its_role() {
    // deploy/examples/upload-processing: the worker on skiff's bridge.
    let bridge = OwnBridge::new("sku", 98);
    let (moto, for_tasks) = moto_for(&bridge);
    let mut env = Env::new();
    let mut flags = bridge.flags().to_vec();
    flags.extend(["--credentials-listen", "127.0.0.1:0"]);
    let addr = env.dev_with(&flags);
    let base = env.procs[0].http_url();
    for (name, value) in [
        ("sts-key-id", &moto.controller_key_id),
        ("sts-secret", &moto.controller_secret),
        ("lister-key-id", &moto.uploader_key_id),
        ("lister-secret", &moto.uploader_secret),
    ] {
        assert_eq!(
            cli_stdin(&addr, &["secrets", "put", name], value.as_bytes()).code,
            0
        );
    }
    put_sts_role(
        &env,
        &addr,
        &moto,
        &for_tasks,
        ("thumbnailer", "input/", "output/"),
    );
    // The worker: reads the object the event names, writes output/<name>.
    let script = "import boto3, json, os\n\
        key = json.load(open('/run/skiff/event.json'))\n\
        s3 = boto3.client('s3')\n\
        body = s3.get_object(Bucket='photos', Key=key)['Body'].read()\n\
        out = 'output/' + key.split('/', 1)[1]\n\
        s3.put_object(Bucket='photos', Key=out, Body=b'thumb of ' + body)\n\
        print('wrote', out)\n";
    register_python_task(&env, &addr, "thumbnail", "thumbnailer", script);
    let source = write(
        &env,
        "source.yaml",
        &format!(
            "name: photos\nkind: s3\nendpoint: {}\nbucket: photos\nprefix: input/\n\
             access_key_id_secret: lister-key-id\nsecret_access_key_secret: lister-secret\npoll: 1s\n",
            moto.endpoint
        ),
    );
    let out = cli(&addr, &["sources", "put", "-f", &source]);
    assert_eq!(out.code, 0, "{out:?}");
    let rule = write(
        &env,
        "rule.yaml",
        "name: thumbs\npattern:\n  source: [skiff.s3]\n  detail-type: [Object Created]\n  \
         detail: {bucket: {name: [photos]}, object: {key: [{prefix: input/}]}}\n\
         targets: [{id: run, task: {task_definition: thumbnail}, input_path: $.detail.object.key}]\n",
    );
    assert_eq!(cli(&addr, &["rules", "put", "-f", &rule]).code, 0);
    wait_for("the watcher's baseline", LONG, || {
        env.logs().contains("baseline listed").then_some(())
    });

    // An upload notified by the webhook (as MinIO sends it: the key URL-encoded), and again
    // (a retried webhook), and found by the watcher too: one event, one task.
    let key = "input/photo one ü.jpg";
    let etag = moto.s3(&format!(
        "r = s3.put_object(Bucket='photos', Key={key:?}, Body=b'pixels')\nprint(r['ETag'].strip('\"'))"
    ));
    let body = minio_notification("photos", "input/photo+one+%C3%BC.jpg", 6, etag.trim());
    let token = admin_token(&addr);
    let (status, resp) = http(
        "POST",
        &format!("{base}/notify/photos"),
        Some(&token),
        body.as_bytes(),
    );
    assert_eq!(status, 200, "{resp}");
    let resp: serde_json::Value = serde_json::from_str(&resp).unwrap();
    // The watcher may have found it first (then this one is the duplicate).
    assert_eq!(
        resp["accepted"].as_u64().unwrap() + resp["duplicates"].as_u64().unwrap(),
        1,
        "{resp}"
    );
    let (_, again) = http(
        "POST",
        &format!("{base}/notify/photos"),
        Some(&token),
        body.as_bytes(),
    );
    assert!(again.contains("\"duplicates\":1"), "{again}");
    let task = wait_for("the thumbnail task", LONG, || {
        rule_tasks(&addr, "thumbs").into_iter().next()
    });
    let id = task["id"].as_str().unwrap().to_string();
    let t = wait_status(&addr, &id, "STOPPED", LONG);
    assert_eq!(
        t["containers"][0]["exitCode"],
        0,
        "{t}\n{}",
        cli(&addr, &["tasks", "logs", &id]).stderr
    );
    assert_eq!(
        cli(&addr, &["tasks", "logs", &id]).stdout,
        "wrote output/photo one ü.jpg\n"
    );
    assert_eq!(
        moto.s3("print(s3.get_object(Bucket='photos', Key='output/photo one ü.jpg')['Body'].read().decode())"),
        "thumb of pixels\n"
    );

    // With no notification at all, the watcher finds the next upload.
    moto.s3("s3.put_object(Bucket='photos', Key='input/second.jpg', Body=b'more')");
    wait_for("the watched upload's output", LONG, || {
        let out = moto.s3(
            "import botocore\ntry:\n  print(s3.get_object(Bucket='photos', Key='output/second.jpg')['Body'].read().decode())\nexcept botocore.exceptions.ClientError:\n  print('none')",
        );
        (out == "thumb of more\n").then_some(())
    });
    // Two uploads, two tasks: the first one was not started again by the watcher.
    assert_eq!(rule_tasks(&addr, "thumbs").len(), 2, "{}", env.logs());
}

#[test]
fn bad_notifications_get_clear_http_errors() {
    let mut env = Env::new();
    let addr = env.dev();
    let base = env.procs[0].http_url();
    let token = admin_token(&addr);
    let source = write(
        &env,
        "s.yaml",
        "name: store\nkind: s3\nendpoint: http://127.0.0.1:1\nbucket: photos\n",
    );
    assert_eq!(cli(&addr, &["sources", "put", "-f", &source]).code, 0);
    let url = format!("{base}/notify/store");
    let good = minio_notification("photos", "a.jpg", 1, "e");
    for (token, url, body, status, says) in [
        (None, url.as_str(), good.as_str(), 401, "no API token"),
        (
            Some("skiff_x_y"),
            url.as_str(),
            good.as_str(),
            401,
            "not valid",
        ),
        (
            Some(token.as_str()),
            &format!("{base}/notify/nope") as &str,
            good.as_str(),
            404,
            "no source \\\"nope\\\"",
        ),
        (
            Some(token.as_str()),
            url.as_str(),
            "{not json",
            400,
            "body: not valid JSON",
        ),
        (
            Some(token.as_str()),
            url.as_str(),
            r#"{"Records": [{"eventName": "s3:ObjectCreated:Put", "s3": {"bucket": {"name": "photos"}}}]}"#,
            400,
            "Records[0].s3.object.key: missing",
        ),
    ] {
        let (got, resp) = http("POST", url, token, body.as_bytes());
        assert_eq!(got, status, "{resp}");
        assert!(resp.contains(says), "{says:?} in {resp}");
    }
    let big = vec![b' '; 2 << 20];
    assert_eq!(http("POST", &url, Some(&token), &big).0, 413);
    // A read-only token may not post events.
    let ro = skiff_tests::read_only_token(&addr);
    let (got, resp) = http("POST", &url, Some(&ro), good.as_bytes());
    assert_eq!(got, 403, "{resp}");
    // Other buckets and prefixes than the source's are not its events.
    let (_, resp) = http(
        "POST",
        &url,
        Some(&token),
        minio_notification("other", "a.jpg", 1, "e").as_bytes(),
    );
    assert!(resp.contains("\"outOfScope\":1"), "{resp}");
    assert_eq!(http("GET", &format!("{base}/healthz"), None, b"").0, 200);
}

#[test]
fn a_file_copied_into_a_dev_bucket_starts_the_rules_task() {
    let mut env = Env::new();
    let addr = env.dev();
    let def = serde_json::json!({"family": "show", "containers": [
        {"name": "main", "image": env.busybox_image(), "command": ["sh", "-c", "echo \"$SKIFF_EVENT\""]}]});
    let def = write(&env, "show.json", &def.to_string());
    assert_eq!(cli(&addr, &["taskdefs", "register", "-f", &def]).code, 0);
    let rule = write(
        &env,
        "rule.yaml",
        "name: uploads\npattern: {source: [skiff.s3], detail: {bucket: {name: [uploads]}, object: {key: [{prefix: input/}]}}}\n\
         targets: [{id: show, task: {task_definition: show}, input_path: $.detail.object}]\n",
    );
    assert_eq!(cli(&addr, &["rules", "put", "-f", &rule]).code, 0);
    wait_for("the local buckets' baseline", LONG, || {
        env.logs().contains("baseline listed").then_some(())
    });
    let dir = env.path("dev/buckets/uploads/input");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("photo.jpg"), b"12345").unwrap();
    std::fs::write(env.path("dev/buckets/uploads/elsewhere.txt"), b"x").unwrap();
    let task = wait_for("the rule's task", LONG, || {
        rule_tasks(&addr, "uploads").into_iter().next()
    });
    let id = task["id"].as_str().unwrap().to_string();
    wait_status(&addr, &id, "STOPPED", LONG);
    let shown: serde_json::Value =
        serde_json::from_str(&cli(&addr, &["tasks", "logs", &id]).stdout).unwrap();
    assert_eq!(shown["key"], "input/photo.jpg");
    assert_eq!(shown["size"], 5);
    assert_eq!(rule_tasks(&addr, "uploads").len(), 1);
}

#[test]
fn a_burst_of_1000_uploads_is_processed_once_each_across_a_controller_crash() {
    let moto = Moto::start();
    let mut env = Env::new();
    let (ctl, addr) = env.controller("127.0.0.1:0", &["--plaintext"]);
    env.agent(&addr, "n1", &[]);
    for (name, value) in [
        ("lister-key-id", &moto.uploader_key_id),
        ("lister-secret", &moto.uploader_secret),
    ] {
        assert_eq!(
            cli_stdin(&addr, &["secrets", "put", name], value.as_bytes()).code,
            0
        );
    }
    // A quarter CPU each: the node runs eight at a time, the rest wait for room.
    let def = serde_json::json!({"family": "burst", "containers": [
        {"name": "main", "image": env.busybox_image(), "command": ["true"], "cpu": 0.25}]});
    let def = write(&env, "burst.json", &def.to_string());
    assert_eq!(cli(&addr, &["taskdefs", "register", "-f", &def]).code, 0);
    let source = write(
        &env,
        "source.yaml",
        &format!(
            "name: photos\nkind: s3\nendpoint: {}\nbucket: photos\nprefix: burst/\n\
             access_key_id_secret: lister-key-id\nsecret_access_key_secret: lister-secret\npoll: 1s\n",
            moto.endpoint
        ),
    );
    assert_eq!(cli(&addr, &["sources", "put", "-f", &source]).code, 0);
    let rule = write(
        &env,
        "rule.yaml",
        "name: burst\npattern: {source: [skiff.s3], detail: {object: {key: [{prefix: burst/}]}}}\n\
         targets: [{id: run, task: {task_definition: burst}}]\n",
    );
    assert_eq!(cli(&addr, &["rules", "put", "-f", &rule]).code, 0);
    wait_for("the watcher's baseline", LONG, || {
        env.logs().contains("baseline listed").then_some(())
    });
    moto.s3("for i in range(1000):\n  s3.put_object(Bucket='photos', Key=f'burst/{i:04}.jpg', Body=str(i).encode())");
    // Killed while the burst is being turned into tasks.
    wait_for("the first tasks of the burst", LONG, || {
        (rule_tasks(&addr, "burst").len() >= 20).then_some(())
    });
    env.procs[ctl].kill9();
    let hostport = addr.trim_start_matches("http://").to_string();
    let (_, addr2) = env.controller(&hostport, &["--plaintext"]);
    assert_eq!(addr2, addr);
    let long = Duration::from_secs(600);
    let tasks = wait_for("every upload's task to finish", long, || {
        let out = cli(&addr, &["tasks", "ls", "--limit", "5000", "-o", "json"]);
        let tasks: Vec<serde_json::Value> = out
            .json()
            .as_array()?
            .iter()
            .filter(|t| t["group"] == "rule:burst")
            .cloned()
            .collect();
        (tasks.len() >= 1000 && tasks.iter().all(|t| t["lastStatus"] == "STOPPED")).then_some(tasks)
    });
    // One event per object, one task per event, each exiting 0.
    let events = cli(&addr, &["events", "tail", "-n", "all", "-o", "json"]).stdout;
    let mut keys = std::collections::HashMap::new();
    for line in events.lines() {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        if e["source"] == "skiff.s3" {
            let key = e["detail"]["object"]["key"].as_str().unwrap().to_string();
            assert!(
                keys.insert(key.clone(), e["id"].as_str().unwrap().to_string())
                    .is_none(),
                "{key} emitted twice"
            );
        }
    }
    assert_eq!(keys.len(), 1000);
    let mut started: Vec<String> = tasks
        .iter()
        .map(|t| t["startedBy"].as_str().unwrap().to_string())
        .collect();
    started.sort();
    started.dedup();
    assert_eq!(started.len(), tasks.len(), "an event started two tasks");
    for id in keys.values() {
        assert!(
            started.binary_search(&format!("rule/burst/{id}")).is_ok(),
            "event {id} started no task"
        );
    }
    assert!(tasks.iter().all(|t| t["containers"][0]["exitCode"] == 0));
}

#[test]
fn an_hourly_batch_schedule_processes_the_files_in_a_bucket() {
    // deploy/examples/hourly-batch, on a 3-second rate instead of hourly, on skiff's bridge.
    let bridge = OwnBridge::new("skh", 99);
    let (moto, for_tasks) = moto_for(&bridge);
    let mut env = Env::new();
    let mut flags = bridge.flags().to_vec();
    flags.extend(["--credentials-listen", "127.0.0.1:0"]);
    let addr = env.dev_with(&flags);
    for (name, value) in [
        ("sts-key-id", &moto.controller_key_id),
        ("sts-secret", &moto.controller_secret),
    ] {
        assert_eq!(
            cli_stdin(&addr, &["secrets", "put", name], value.as_bytes()).code,
            0
        );
    }
    put_sts_role(
        &env,
        &addr,
        &moto,
        &for_tasks,
        ("batch", "incoming/", "processed/"),
    );
    let script = "import boto3, json\n\
        s3 = boto3.client('s3')\n\
        event = json.load(open('/run/skiff/event.json'))\n\
        for obj in s3.list_objects_v2(Bucket='photos', Prefix='incoming/').get('Contents', []):\n\
        \x20   body = s3.get_object(Bucket='photos', Key=obj['Key'])['Body'].read()\n\
        \x20   s3.put_object(Bucket='photos', Key='processed/' + obj['Key'].split('/', 1)[1], Body=body.upper())\n\
        print('batch of', event['schedule'], 'done')\n";
    register_python_task(&env, &addr, "batch", "batch", script);
    moto.s3("for n in ['a', 'b']:\n  s3.put_object(Bucket='photos', Key=f'incoming/{n}.txt', Body=f'file {n}'.encode())");
    let schedule = write(
        &env,
        "schedule.yaml",
        "name: hourly-batch\nexpression: rate(3 seconds)\ntimezone: Europe/Berlin\noverlap: forbid\ntask: {task_definition: batch}\n",
    );
    assert_eq!(cli(&addr, &["schedules", "put", "-f", &schedule]).code, 0);
    let out = wait_for("the batch's output", LONG, || {
        let out = moto.s3(
            "import botocore\ntry:\n  print(s3.get_object(Bucket='photos', Key='processed/b.txt')['Body'].read().decode())\nexcept botocore.exceptions.ClientError:\n  print('none')",
        );
        (out != "none\n").then_some(out)
    });
    assert_eq!(out, "FILE B\n");
    let run = wait_for("a finished run", LONG, || {
        cli(&addr, &["tasks", "ls", "-o", "json"])
            .json()
            .as_array()?
            .iter()
            .find(|t| t["group"] == "schedule:hourly-batch" && t["lastStatus"] == "STOPPED")
            .cloned()
    });
    assert_eq!(run["containers"][0]["exitCode"], 0, "{run}");
    let id = run["id"].as_str().unwrap();
    assert_eq!(
        cli(&addr, &["tasks", "logs", id]).stdout,
        "batch of hourly-batch done\n"
    );
    assert_eq!(cli(&addr, &["schedules", "rm", "hourly-batch"]).code, 0);
}
