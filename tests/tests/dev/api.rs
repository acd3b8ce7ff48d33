//! The API as a client meets it: errors naming fields, task definitions, gRPC reflection and health.

use skiff_tests::{cli, failed_to_start, Env};

#[test]
fn bad_input_gets_clear_errors() {
    let mut env = Env::new();
    let addr = env.dev();
    let img = env.busybox_image();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["run-task", "--image", "Alpine:Latest", "--", "true"],
            "containers[0].image",
        ),
        (
            vec![
                "run-task",
                "--image",
                &img,
                "--pull-policy",
                "often",
                "--",
                "true",
            ],
            "containers[0].pull_policy",
        ),
        (
            vec![
                "run-task", "--image", &img, "--memory", "lots", "--", "true",
            ],
            "not a memory size",
        ),
        (
            vec![
                "run-task", "--image", &img, "--memory", "99999999", "--", "true",
            ],
            "containers[0].memory_mib",
        ),
        (
            vec!["run-task", "--image", &img, "--cpu=-1", "--", "true"],
            "containers[0].cpu",
        ),
        (
            vec![
                "run-task",
                "--image",
                &img,
                "--network",
                "bridge9",
                "--",
                "true",
            ],
            "network_mode",
        ),
        (
            vec![
                "run-task", "--image", &img, "--env", "NOEQUALS", "--", "true",
            ],
            "KEY=VALUE",
        ),
        (
            vec!["run-task", "--task-def", "nope", "--", "true"],
            "no task definition",
        ),
        (
            vec!["tasks", "describe", "no-such-task"],
            "no task no-such-task",
        ),
        (vec!["tasks", "ls", "--status", "SLEEPING"], "status"),
        (vec!["events", "tail", "--after", "not-an-id"], "after"),
    ];
    for (args, needle) in cases {
        let out = cli(&addr, &args);
        assert_ne!(out.code, 0, "{args:?} should fail: {out:?}");
        assert!(
            out.stderr.contains(needle),
            "{args:?}: error should mention {needle:?}: {out:?}"
        );
    }
    // A task whose image has nothing to run fails to start, with a reason.
    let reason = failed_to_start(&addr, &["--image", &img]);
    assert!(reason.contains("nothing to run"), "{reason}");
    // An image that does not exist.
    let reason = failed_to_start(&addr, &["--image", "dir:/no/such/rootfs", "--", "true"]);
    assert!(
        reason.contains("/no/such/rootfs is not a directory"),
        "{reason}"
    );
    // A command that does not exist in the image.
    let reason = failed_to_start(&addr, &["--image", &img, "--", "/no/such/binary"]);
    assert!(reason.contains("/no/such/binary"), "{reason}");
    // Unreachable controller.
    let out = cli("http://127.0.0.1:1", &["tasks", "ls"]);
    assert!(
        out.code != 0 && out.stderr.contains("cannot reach the skiff controller"),
        "{out:?}"
    );
    // Nothing half-written: no task was created by the rejected calls.
    let tasks = cli(&addr, &["tasks", "ls", "-o", "json"]).json();
    assert_eq!(
        tasks.as_array().unwrap().len(),
        3,
        "only the three tasks that were accepted: {tasks}"
    );
}

#[test]
fn task_definitions_register_run_and_override() {
    let mut env = Env::new();
    let addr = env.dev();
    let img = env.busybox_image();
    let file = env.path("web.toml");
    std::fs::write(
        &file,
        format!(
            "family = \"web\"\ntimeout = \"1m\"\n[[containers]]\nname = \"main\"\nimage = \"{img}\"\ncommand = [\"sh\", \"-c\", \"echo rev1 $GREETING\"]\nmemory = 32\n[containers.environment]\nGREETING = \"hello\"\n"
        ),
    )
    .unwrap();
    let reg = cli(
        &addr,
        &["taskdefs", "register", "-f", file.to_str().unwrap()],
    );
    assert_eq!(reg.code, 0, "{reg:?}");
    assert_eq!(reg.stdout.trim(), "registered web:1");
    let reg2 = cli(
        &addr,
        &[
            "taskdefs",
            "register",
            "-f",
            file.to_str().unwrap(),
            "-o",
            "json",
        ],
    );
    assert_eq!(reg2.json()["revision"], 2);

    let out = cli(&addr, &["run-task", "--follow", "--task-def", "web"]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "rev1 hello\n"),
        "{out:?}"
    );
    let out = cli(
        &addr,
        &[
            "run-task",
            "--follow",
            "--task-def",
            "web:1",
            "--env",
            "GREETING=override",
            "--",
            "sh",
            "-c",
            "echo $GREETING",
        ],
    );
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "override\n"),
        "{out:?}"
    );
    let t = cli(&addr, &["tasks", "ls", "--family", "web", "-o", "json"]).json();
    assert_eq!(t.as_array().unwrap().len(), 2);
    assert_eq!(t[0]["taskDefinition"], "web:1");
    assert_eq!(t[1]["taskDefinition"], "web:2");

    assert_eq!(cli(&addr, &["taskdefs", "deregister", "web:2"]).code, 0);
    let d = cli(&addr, &["taskdefs", "describe", "web", "-o", "json"]).json();
    assert_eq!(d["revision"], 1, "the latest ACTIVE revision");
    let ls = cli(&addr, &["taskdefs", "ls", "-o", "json"]).json();
    assert_eq!(ls.as_array().unwrap().len(), 1);

    std::fs::write(
        &file,
        "family = \"web\"\n[[containers]]\nname = \"m\"\nimage = \"dir:/x\"\nmemroy = 5\n",
    )
    .unwrap();
    let bad = cli(
        &addr,
        &["taskdefs", "register", "-f", file.to_str().unwrap()],
    );
    assert!(bad.code != 0 && bad.stderr.contains("memroy"), "{bad:?}");
}

#[test]
fn grpc_reflection_and_health_work_like_grpcurl_expects() {
    let mut env = Env::new();
    let addr = env.dev();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let services = rt.block_on(async {
        use tonic_reflection::pb::v1::{
            server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
            ServerReflectionRequest,
        };
        let channel = tonic::transport::Endpoint::from_shared(addr.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = ServerReflectionClient::new(channel);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut resp = client
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .unwrap()
            .into_inner();
        let msg = resp.message().await.unwrap().unwrap();
        match msg.message_response.unwrap() {
            MessageResponse::ListServicesResponse(l) => {
                l.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
            }
            other => panic!("unexpected reflection answer {other:?}"),
        }
    });
    for s in [
        "skiff.v1.Tasks",
        "skiff.v1.TaskDefinitions",
        "skiff.v1.Nodes",
        "skiff.v1.Events",
        "skiff.v1.AgentChannel",
        "grpc.health.v1.Health",
    ] {
        assert!(
            services.iter().any(|x| x == s),
            "{s} missing from {services:?}"
        );
    }
    let status = rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(addr.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut h = tonic_health::pb::health_client::HealthClient::new(channel);
        h.check(tonic_health::pb::HealthCheckRequest {
            service: "skiff.v1.Tasks".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
    });
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}
