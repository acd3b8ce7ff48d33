//! End-to-end image tests: a real registry (Debian's docker-registry) on 127.0.0.1, images the
//! tests build and push, pulled and run by a real `skiff dev`.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use skiff_tests::images::{busybox_rootfs, layer_of, layer_with, oci_layout, ImageConfig};
use skiff_tests::registry::{sha256, Registry, TestImage};
use skiff_tests::{cli, failed_to_start, run_task, wait_status, Env};

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// A busybox base layer (gzipped), built once per test environment.
fn base_layer(env: &Env) -> Vec<u8> {
    layer_of(&busybox_rootfs(&env.path("busybox")))
}

/// An image of the busybox base plus one layer holding /etc/motd = `motd`.
fn app_image(base: &[u8], motd: &str, env_vars: &[&str]) -> TestImage {
    let app = gz(&layer_with(&[("etc/motd", motd.as_bytes())]));
    let layers = vec![base.to_vec(), app];
    let config = TestImage::config("amd64", &["cat", "/etc/motd"], env_vars, &layers);
    TestImage { layers, config }
}

fn follow(addr: &str, args: &[&str]) -> skiff_tests::Cli {
    let mut all = vec!["run-task", "--follow"];
    all.extend_from_slice(args);
    cli(addr, &all)
}

#[test]
fn an_image_pulled_from_a_registry_runs_with_its_config() {
    let mut env = Env::new();
    let reg = Registry::start(&env.path("registry"), None);
    let base = base_layer(&env);
    reg.push(
        "team/app",
        "v1",
        &app_image(&base, "hello from the registry\n", &["GREETING=hi"]),
    );
    let addr = env.dev_with(&["--insecure-registry", &reg.addr]);
    let image = format!("{}/team/app:v1", reg.addr);

    // The image's Cmd runs when the task gives no command.
    let out = follow(&addr, &["--image", &image]);
    assert_eq!(out.code, 0, "{out:?}\n{}", env.logs());
    assert_eq!(out.stdout, "hello from the registry\n");
    // Its Env reaches the process; the task's command overrides Cmd.
    let out = follow(
        &addr,
        &["--image", &image, "--", "sh", "-c", "echo $GREETING"],
    );
    assert_eq!(out.stdout, "hi\n", "{out:?}");

    // The image's User, by name, resolved in the image's own /etc/passwd and /etc/group.
    let users = gz(&layer_with(&[
        (
            "etc/passwd",
            b"root:x:0:0::/root:/bin/sh\napp:x:1001:1002::/tmp:/bin/sh\n",
        ),
        ("etc/group", b"root:x:0:\napp:x:1002:\n"),
    ]));
    let layers = vec![base.clone(), users];
    let mut config = TestImage::config(
        "amd64",
        &["sh", "-c", "echo $(id -u):$(id -g)"],
        &[],
        &layers,
    );
    config["config"]["User"] = "app".into();
    reg.push("team/user", "v1", &TestImage { layers, config });
    let out = follow(&addr, &["--image", &format!("{}/team/user:v1", reg.addr)]);
    assert_eq!(out.stdout, "1001:1002\n", "{out:?}");

    // A registry off the loopback that is not marked insecure is only spoken to over TLS;
    // when it answers in plain HTTP, the reason says so and names the flag. (127.1 is
    // 127.0.0.1 to the resolver but not a loopback name to skiff: it stands for a LAN
    // registry without TLS while the traffic stays on this machine.)
    let mut env2 = Env::new();
    let addr2 = env2.dev();
    let port = reg.addr.rsplit(':').next().unwrap();
    let reason = failed_to_start(&addr2, &["--image", &format!("127.1:{port}/team/app:v1")]);
    assert!(
        reason.contains("answered in plain HTTP")
            && reason.contains(&format!("--insecure-registry 127.1:{port}")),
        "{reason}"
    );
}

#[test]
fn tasks_sharing_layers_download_them_once() {
    let mut env = Env::new();
    let reg = Registry::start(&env.path("registry"), None);
    let base = base_layer(&env);
    let one = app_image(&base, "one\n", &[]);
    let two = app_image(&base, "two\n", &[]);
    reg.push("team/one", "v1", &one);
    reg.push("team/two", "v1", &two);
    let addr = env.dev_with(&["--insecure-registry", &reg.addr]);

    // Four tasks of two images that share the base layer, started together.
    let mut ids = Vec::new();
    for repo in ["team/one", "team/two", "team/one", "team/two"] {
        let image = format!("{}/{repo}:v1", reg.addr);
        ids.push(run_task(&addr, &["--image", &image]));
    }
    for id in &ids {
        let t = wait_status(&addr, id, "STOPPED", Duration::from_secs(60));
        assert_eq!(t["containers"][0]["exitCode"], 0, "{t}\n{}", env.logs());
    }
    assert_eq!(reg.blob_fetches(&sha256(&base)), 1, "{}", reg.log_text());
    assert_eq!(reg.blob_fetches(&sha256(&one.layers[1])), 1);
    assert_eq!(reg.blob_fetches(&sha256(&two.layers[1])), 1);
    // Stored once on disk, too.
    let layers = env.path("dev/agent/images/layers/sha256");
    assert_eq!(std::fs::read_dir(layers).unwrap().count(), 3);
}

#[test]
fn failed_pulls_stop_the_task_with_the_reason() {
    let mut env = Env::new();
    let reg = Registry::start(&env.path("registry"), None);
    let private = Registry::start(&env.path("private"), Some(("alice", "wonderland")));
    let base = base_layer(&env);
    let img = app_image(&base, "x\n", &[]);
    reg.push("team/app", "v1", &img);
    private.push("team/app", "v1", &img);
    let addr = env.dev_with(&[
        "--insecure-registry",
        &format!("{},{}", reg.addr, private.addr),
    ]);

    let reason = failed_to_start(&addr, &["--image", &format!("{}/team/app:v9", reg.addr)]);
    assert!(reason.contains("not found"), "{reason}");
    let reason = failed_to_start(&addr, &["--image", &format!("{}/team/nope:v1", reg.addr)]);
    assert!(reason.contains("not found"), "{reason}");

    let reason = failed_to_start(
        &addr,
        &["--image", &format!("{}/team/app:v1", private.addr)],
    );
    assert!(reason.contains("unauthorized"), "{reason}");

    // Only arm64 on offer.
    let arm = TestImage {
        layers: img.layers.clone(),
        config: TestImage::config("arm64", &["true"], &[], &img.layers),
    };
    reg.push("team/arm", "only", &arm);
    reg.push_index("team/arm", "v1", &[("arm64", &arm)]);
    let reason = failed_to_start(&addr, &["--image", &format!("{}/team/arm:v1", reg.addr)]);
    assert!(reason.contains("no matching platform"), "{reason}");
    assert!(reason.contains("linux/arm64"), "{reason}");

    // A blob the registry serves corrupted is refused and not kept.
    let bad = app_image(&base, "corrupt me\n", &[]);
    reg.push("team/bad", "v1", &bad);
    reg.corrupt_blob(&sha256(&bad.layers[1]));
    let reason = failed_to_start(&addr, &["--image", &format!("{}/team/bad:v1", reg.addr)]);
    assert!(reason.contains("digest mismatch"), "{reason}");
    let hex = sha256(&bad.layers[1]).replace("sha256:", "");
    assert!(!env
        .path("dev/agent/images/layers/sha256")
        .join(&hex)
        .exists());
    assert!(!env
        .path("dev/agent/images/blobs/sha256")
        .join(&hex)
        .exists());
    assert!(!env
        .path("dev/agent/images/blobs/partial")
        .join(&hex)
        .exists());

    // Pull policy never: an image the node does not have is not fetched.
    let reason = failed_to_start(
        &addr,
        &[
            "--pull-policy",
            "never",
            "--image",
            &format!("{}/team/app:v1", reg.addr),
        ],
    );
    assert!(reason.contains("never"), "{reason}");
    assert_eq!(reg.blob_fetches(&sha256(&img.layers[1])), 0);
}

#[test]
fn credentials_from_a_docker_config_open_a_private_registry() {
    let mut env = Env::new();
    let private = Registry::start(&env.path("private"), Some(("alice", "wonderland")));
    let base = base_layer(&env);
    private.push("team/app", "v1", &app_image(&base, "secret stuff\n", &[]));
    let docker_config = env.path("docker-config.json");
    std::fs::write(
        &docker_config,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#,
            private.addr,
            base64_of("alice:wonderland")
        ),
    )
    .unwrap();
    let addr = env.dev_with(&[
        "--insecure-registry",
        &private.addr,
        "--docker-config",
        docker_config.to_str().unwrap(),
    ]);
    let out = follow(
        &addr,
        &["--image", &format!("{}/team/app:v1", private.addr)],
    );
    assert_eq!(out.code, 0, "{out:?}\n{}", env.logs());
    assert_eq!(out.stdout, "secret stuff\n");
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn an_index_resolves_to_this_nodes_platform_and_tags_follow_the_pull_policy() {
    let mut env = Env::new();
    let reg = Registry::start(&env.path("registry"), None);
    let base = base_layer(&env);
    let amd = app_image(&base, "amd64 variant\n", &[]);
    let arm = TestImage {
        layers: amd.layers.clone(),
        config: TestImage::config("arm64", &["echo", "arm64 variant"], &[], &amd.layers),
    };
    reg.push("team/multi", "amd", &amd);
    reg.push("team/multi", "arm", &arm);
    reg.push_index("team/multi", "v1", &[("arm64", &arm), ("amd64", &amd)]);
    let addr = env.dev_with(&["--insecure-registry", &reg.addr]);
    let out = follow(&addr, &["--image", &format!("{}/team/multi:v1", reg.addr)]);
    assert_eq!(out.stdout, "amd64 variant\n", "{out:?}\n{}", env.logs());

    // A tag that moves: if-not-present keeps the node's copy, always follows the tag.
    let image = format!("{}/team/moving:latest", reg.addr);
    reg.push("team/moving", "latest", &app_image(&base, "first\n", &[]));
    assert_eq!(follow(&addr, &["--image", &image]).stdout, "first\n");
    reg.push("team/moving", "latest", &app_image(&base, "second\n", &[]));
    assert_eq!(follow(&addr, &["--image", &image]).stdout, "first\n");
    let out = follow(&addr, &["--pull-policy", "always", "--image", &image]);
    assert_eq!(out.stdout, "second\n", "{out:?}");
    // Pinned by digest.
    let first_digest = sha256(&app_image(&base, "first\n", &[]).manifest());
    let pinned = format!("{}/team/moving@{first_digest}", reg.addr);
    assert_eq!(follow(&addr, &["--image", &pinned]).stdout, "first\n");
}

/// A `docker save` archive: manifest.json, the config, one uncompressed layer.tar per layer.
fn docker_save(path: &Path, layers: &[Vec<u8>], config: &serde_json::Value, tag: &str) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    };
    let cfg = serde_json::to_vec(config).unwrap();
    let cfg_name = format!("{}.json", &sha256(&cfg)[7..]);
    add(&cfg_name, &cfg);
    let mut names = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let name = format!("layer{i}/layer.tar");
        add(&name, l);
        names.push(name);
    }
    let manifest = serde_json::json!([{"Config": cfg_name, "RepoTags": [tag], "Layers": names}]);
    add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    b.finish().unwrap();
}

#[test]
fn docker_and_oci_archives_are_imported() {
    let mut env = Env::new();
    let addr = env.dev();
    let rootfs = busybox_rootfs(&env.path("busybox"));
    let mut raw_base = Vec::new();
    {
        let mut b = tar::Builder::new(&mut raw_base);
        b.follow_symlinks(false);
        b.append_dir_all(".", &rootfs).unwrap();
        b.finish().unwrap();
    }
    let app = layer_with(&[("etc/motd", b"saved by docker\n")]);
    let layers = vec![raw_base.clone(), app];
    let config = serde_json::json!({"architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["cat", "/etc/motd"]}, "rootfs": {"type": "layers", "diff_ids": []}});
    let saved = env.path("saved.tar");
    docker_save(&saved, &layers, &config, "example/app:v1");
    let out = follow(
        &addr,
        &[
            "--image",
            &format!("docker-archive:{}:example/app:v1", saved.display()),
        ],
    );
    assert_eq!(out.code, 0, "{out:?}\n{}", env.logs());
    assert_eq!(out.stdout, "saved by docker\n");

    // An OCI layout, tarred.
    let layout = oci_layout(
        &env.path("layout"),
        &[
            (raw_base, false),
            (layer_with(&[("etc/motd", b"from an oci archive\n")]), false),
        ],
        &ImageConfig {
            entrypoint: &[],
            cmd: &["cat", "/etc/motd"],
            env: &[],
            working_dir: "",
        },
        "v2",
    );
    let archive = env.path("oci.tar");
    {
        let mut b = tar::Builder::new(std::fs::File::create(&archive).unwrap());
        b.append_dir_all(".", &layout).unwrap();
        b.finish().unwrap();
    }
    let out = follow(
        &addr,
        &["--image", &format!("oci-archive:{}:v2", archive.display())],
    );
    assert_eq!(
        out.stdout,
        "from an oci archive\n",
        "{out:?}\n{}",
        env.logs()
    );
    // Both images share the busybox layer: three layer directories, not four.
    let layers = env.path("dev/agent/images/layers/sha256");
    assert_eq!(std::fs::read_dir(layers).unwrap().count(), 3);
}

fn json(addr: &str, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = cli(addr, &all);
    assert_eq!(out.code, 0, "{args:?}: {out:?}");
    out.json()
}

/// The images of node `local` as `skiff images ls -o json` shows them.
fn node_images(addr: &str) -> (Vec<serde_json::Value>, serde_json::Value) {
    let v = json(addr, &["images", "ls", "--node", "local"]);
    let n = &v[0];
    (
        n["images"].as_array().cloned().unwrap_or_default(),
        n["disk"].clone(),
    )
}

fn has_image(images: &[serde_json::Value], name: &str) -> bool {
    images.iter().any(|i| {
        i["references"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == name)
    })
}

#[test]
fn images_are_listed_pulled_removed_and_pruned_from_the_cli() {
    let mut env = Env::new();
    let reg = Registry::start(&env.path("registry"), None);
    let base = base_layer(&env);
    let one = app_image(&base, "one\n", &[]);
    let two = app_image(&base, "two\n", &[]);
    let one_digest = reg.push("team/one", "v1", &one);
    reg.push("team/two", "v1", &two);
    let addr = env.dev_with(&["--insecure-registry", &reg.addr]);
    let (one_ref, two_ref) = (
        format!("{}/team/one:v1", reg.addr),
        format!("{}/team/two:v1", reg.addr),
    );

    let pulled = json(&addr, &["images", "pull", &one_ref]);
    assert_eq!(pulled[0]["nodeId"], "local");
    assert_eq!(
        pulled[0]["image"]["digest"],
        one_digest.as_str(),
        "{pulled}"
    );
    let (images, disk) = node_images(&addr);
    assert!(has_image(&images, &one_ref), "{images:?}");
    let layers_bytes = disk["layersBytes"].as_u64().unwrap();
    assert!(layers_bytes > 1_000_000, "busybox is in there: {disk}");
    // The human table names the image and the node's total.
    let table = cli(&addr, &["images", "ls"]);
    assert!(table.stdout.contains(&one_ref), "{table:?}");
    assert!(table.stdout.contains("node local: images use"), "{table:?}");

    // A running task keeps its image's layers, even when its image is removed.
    let long = run_task(
        &addr,
        &[
            "--stop-timeout",
            "1s",
            "--image",
            &two_ref,
            "--",
            "sleep",
            "60",
        ],
    );
    wait_status(&addr, &long, "RUNNING", Duration::from_secs(60));
    let (images, _) = node_images(&addr);
    let two_info = images
        .iter()
        .find(|i| i["references"][0] == two_ref.as_str())
        .unwrap();
    assert_eq!(two_info["inUse"], true, "{two_info}");
    let pruned = json(&addr, &["images", "prune"]);
    let removed = pruned[0]["imagesRemoved"].as_array().unwrap();
    assert_eq!(removed.len(), 1, "only the unused image goes: {pruned}");
    assert_eq!(removed[0], one_digest.as_str());
    // one's own layer is gone; the shared base stays (two uses it).
    let layers = env.path("dev/agent/images/layers/sha256");
    assert!(!layers.join(&sha256(&one.layers[1])[7..]).exists());
    assert!(layers.join(&sha256(&base)[7..]).exists());

    let removed = json(&addr, &["images", "rm", &two_ref]);
    assert_eq!(removed[0]["imagesRemoved"].as_array().unwrap().len(), 1);
    assert_eq!(removed[0]["layersRemoved"], 0, "still mounted: {removed}");
    assert!(layers.join(&sha256(&base)[7..]).exists());
    let out = cli(&addr, &["tasks", "logs", &long]);
    assert_eq!(out.code, 0);
    assert_eq!(cli(&addr, &["tasks", "stop", &long]).code, 0);
    wait_status(&addr, &long, "STOPPED", Duration::from_secs(30));
    skiff_tests::wait_for(
        "the stopped task's layers to be collectable",
        Duration::from_secs(20),
        || {
            let p = json(&addr, &["images", "prune"]);
            (std::fs::read_dir(&layers).unwrap().count() == 0).then_some(p)
        },
    );
    let (images, disk) = node_images(&addr);
    assert!(images.is_empty(), "{images:?}");
    assert_eq!(disk["layersBytes"], 0);

    let out = cli(&addr, &["images", "rm", "nothing:here"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("no image"), "{out:?}");
    let out = cli(&addr, &["images", "ls", "--node", "elsewhere"]);
    assert!(out.code != 0 && out.stderr.contains("node_id"), "{out:?}");
}

#[test]
fn registry_credentials_stored_in_the_controller_are_used_and_never_shown() {
    let mut env = Env::new();
    let private = Registry::start(&env.path("private"), Some(("alice", "wonderland")));
    let other = Registry::start(&env.path("other"), None);
    let base = base_layer(&env);
    private.push("team/app", "v1", &app_image(&base, "private bits\n", &[]));
    other.push("team/app", "v1", &app_image(&base, "other bits\n", &[]));
    let addr = env.dev_with(&[
        "--insecure-registry",
        &format!("{},{}", private.addr, other.addr),
    ]);

    let server = format!("http://{}", private.addr);
    let out = skiff_tests::cli_stdin(
        &addr,
        &[
            "registry-creds",
            "put",
            "priv",
            "--server",
            &server,
            "--username",
            "alice",
            "-o",
            "json",
        ],
        b"wonderland\n",
    );
    assert_eq!(out.code, 0, "{out:?}");
    let shown = out.stdout.clone();
    assert!(
        shown.contains(&private.addr) && !shown.contains("wonderland"),
        "{shown}"
    );
    let ls = cli(&addr, &["registry-creds", "ls", "-o", "json"]);
    assert!(!ls.stdout.contains("wonderland"), "{ls:?}");
    assert_eq!(ls.json()[0]["username"], "alice");

    let image = format!("{}/team/app:v1", private.addr);
    let out = follow(&addr, &["--registry-creds", "priv", "--image", &image]);
    assert_eq!(out.code, 0, "{out:?}\n{}", env.logs());
    assert_eq!(out.stdout, "private bits\n");
    // Also through a task definition, and for `images pull`.
    let def = env.path("def.json");
    std::fs::write(
        &def,
        format!(
            r#"{{"family":"priv","containers":[{{"name":"main","image":"{image}",
            "repository_credentials":"priv","pull_policy":"always"}}]}}"#
        ),
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
    let out = cli(&addr, &["run-task", "--follow", "--task-def", "priv"]);
    assert_eq!(out.stdout, "private bits\n", "{out:?}");
    let described = cli(&addr, &["taskdefs", "describe", "priv", "-o", "json"]);
    assert!(!described.stdout.contains("wonderland"), "{described:?}");
    let pulled = json(
        &addr,
        &["images", "pull", &image, "--registry-creds", "priv"],
    );
    assert_eq!(pulled[0]["error"], "", "{pulled}");

    // Credentials are never sent to another registry.
    let elsewhere = format!("{}/team/app:v1", other.addr);
    let reason = failed_to_start(&addr, &["--registry-creds", "priv", "--image", &elsewhere]);
    assert!(reason.contains("not sent"), "{reason}");
    assert!(!reason.contains("wonderland"), "{reason}");
    // Unknown names are refused up front, naming the field.
    let out = cli(
        &addr,
        &["run-task", "--registry-creds", "nope", "--image", &image],
    );
    assert!(
        out.code != 0 && out.stderr.contains("repository_credentials"),
        "{out:?}"
    );
    assert_eq!(cli(&addr, &["registry-creds", "rm", "priv"]).code, 0);
    assert!(cli(&addr, &["registry-creds", "ls", "-o", "json"])
        .json()
        .as_array()
        .unwrap()
        .is_empty());
    let out = cli(
        &addr,
        &[
            "registry-creds",
            "put",
            "x",
            "--server",
            "bad host!",
            "--username",
            "u",
        ],
    );
    assert!(out.code != 0 && out.stderr.contains("server"), "{out:?}");
}

#[test]
fn an_interrupted_download_is_resumed_and_a_bad_partial_is_replaced() {
    let mut env = Env::new();
    let reg = Registry::start(&env.path("registry"), None);
    let base = base_layer(&env);
    let img = app_image(&base, "resumed\n", &[]);
    reg.push("team/app", "v1", &img);
    let addr = env.dev_with(&["--insecure-registry", &reg.addr]);
    // What an agent killed mid-download leaves: the first half of the layer.
    let partial_dir = env.path("dev/agent/images/blobs/partial");
    let base_digest = sha256(&base);
    std::fs::write(partial_dir.join(&base_digest[7..]), &base[..base.len() / 2]).unwrap();
    let out = follow(&addr, &["--image", &format!("{}/team/app:v1", reg.addr)]);
    assert_eq!(out.stdout, "resumed\n", "{out:?}\n{}", env.logs());
    assert_eq!(
        reg.blob_range_fetches(&base_digest),
        1,
        "{}",
        reg.log_text()
    );
    assert_eq!(reg.blob_fetches(&base_digest), 1);

    // A partial with a wrong prefix: the resumed whole fails its digest, so it is fetched
    // again from zero, and the task runs.
    let img2 = app_image(&base, "second\n", &[]);
    reg.push("team/app", "v2", &img2);
    let top = sha256(&img2.layers[1]);
    let mut junk = img2.layers[1].clone();
    junk.truncate(junk.len() / 2);
    junk[0] ^= 0xff;
    std::fs::write(partial_dir.join(&top[7..]), &junk).unwrap();
    let out = follow(&addr, &["--image", &format!("{}/team/app:v2", reg.addr)]);
    assert_eq!(out.stdout, "second\n", "{out:?}\n{}", env.logs());
    assert_eq!(reg.blob_range_fetches(&top), 1);
    assert_eq!(reg.blob_fetches(&top), 2, "one resumed, one whole");
}

#[test]
fn the_disk_budget_evicts_the_least_recently_used_image() {
    let mut env = Env::new();
    let reg = Registry::start(&env.path("registry"), None);
    // Two images with nothing in common, each about 2 MiB unpacked.
    let rootfs = busybox_rootfs(&env.path("busybox"));
    let first = {
        let layers = vec![layer_of(&rootfs)];
        let config = TestImage::config("amd64", &["echo", "first"], &[], &layers);
        TestImage { layers, config }
    };
    std::fs::write(rootfs.join("etc/marker"), "second").unwrap();
    let second = {
        let layers = vec![layer_of(&rootfs)];
        let config = TestImage::config("amd64", &["echo", "second"], &[], &layers);
        TestImage { layers, config }
    };
    reg.push("team/first", "v1", &first);
    reg.push("team/second", "v1", &second);
    let addr = env.dev_with(&[
        "--insecure-registry",
        &reg.addr,
        "--image-disk-budget",
        "3MiB",
    ]);
    let (a, b) = (
        format!("{}/team/first:v1", reg.addr),
        format!("{}/team/second:v1", reg.addr),
    );
    assert_eq!(follow(&addr, &["--image", &a]).stdout, "first\n");
    assert_eq!(follow(&addr, &["--image", &b]).stdout, "second\n");
    let images = skiff_tests::wait_for(
        "the budget to evict the first image",
        Duration::from_secs(20),
        || {
            let (images, disk) = node_images(&addr);
            (!has_image(&images, &a) && disk["layersBytes"].as_u64().unwrap() <= 3 << 20)
                .then_some(images)
        },
    );
    assert!(has_image(&images, &b), "the newest stays: {images:?}");
    // Evicted means pulled again when needed.
    assert_eq!(follow(&addr, &["--image", &a]).stdout, "first\n");
    assert_eq!(reg.blob_fetches(&sha256(&first.layers[0])), 2);
}

#[test]
fn a_pull_reaches_every_agent_and_streams_progress() {
    use skiff_proto::v1 as pb;
    let mut env = Env::new();
    let reg = Registry::start(&env.path("registry"), None);
    let base = base_layer(&env);
    let img = app_image(&base, "everywhere\n", &[]);
    let digest = reg.push("team/app", "v1", &img);
    let (_, addr) = env.controller("127.0.0.1:0", &[]);
    env.agent(&addr, "n1", &["--insecure-registry", &reg.addr]);
    env.agent(&addr, "n2", &["--insecure-registry", &reg.addr]);
    let image = format!("{}/team/app:v1", reg.addr);

    // Through the API, as an app would call it: progress per node and layer, then results.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let messages: Vec<pb::PullImageProgress> = rt.block_on(async {
        // As an app would: TLS with the cluster CA, and an API token.
        let ca = std::fs::read_to_string(env.path("controller/pki/ca.crt")).unwrap();
        let channel = tonic::transport::Endpoint::from_shared(addr.clone())
            .unwrap()
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(ca)),
            )
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut c = pb::images_client::ImagesClient::new(channel);
        let mut req = tonic::Request::new(pb::PullImageRequest {
            image: image.clone(),
            ..Default::default()
        });
        let bearer = format!("Bearer {}", skiff_tests::admin_token(&addr));
        req.metadata_mut()
            .insert("authorization", bearer.parse().unwrap());
        let mut s = c.pull(req).await.unwrap().into_inner();
        let mut all = Vec::new();
        while let Some(m) = s.message().await.unwrap() {
            all.push(m);
        }
        all
    });
    for node in ["n1", "n2"] {
        let mine: Vec<&pb::PullImageProgress> =
            messages.iter().filter(|m| m.node_id == node).collect();
        let last = mine.last().unwrap();
        assert!(last.done && last.error.is_empty(), "{last:?}");
        assert_eq!(last.image.as_ref().unwrap().digest, digest);
        for layer in &img.layers {
            let d = sha256(layer);
            let p = mine
                .iter()
                .filter_map(|m| m.progress.as_ref())
                .rfind(|p| p.layer == d)
                .unwrap_or_else(|| panic!("no progress for {d} on {node}: {mine:?}"));
            assert_eq!((p.done, p.total), (layer.len() as u64, layer.len() as u64));
        }
    }
    // Every node has it; `images ls` covers both; each downloaded it once.
    let ls = cli(&addr, &["images", "ls", "-o", "json"]).json();
    let nodes: Vec<&str> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["nodeId"].as_str().unwrap())
        .collect();
    assert_eq!(nodes.len(), 2, "{ls}");
    for n in ls.as_array().unwrap() {
        assert_eq!(n["images"][0]["digest"], digest.as_str(), "{n}");
    }
    assert_eq!(reg.blob_fetches(&sha256(&base)), 2, "once per node");
    // A pull to one node only.
    let out = cli(
        &addr,
        &["images", "pull", "--node", "n1", &image, "-o", "json"],
    );
    assert_eq!(out.json().as_array().unwrap().len(), 1, "{out:?}");
    let out = cli(
        &addr,
        &["images", "pull", "--node", "n1", "127.0.0.1:1/x:y"],
    );
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("node n1"), "{out:?}");
}

#[test]
fn a_registry_with_token_auth_is_pulled_from_with_stored_credentials() {
    use skiff_tests::token_server::TokenServer;
    let mut env = Env::new();
    let tokens = TokenServer::start(&env.path("tokens"), "bob", "builder");
    let reg = Registry::start_with_tokens(&env.path("registry"), ("bob", "builder"), &tokens);
    let base = base_layer(&env);
    reg.push("team/app", "v1", &app_image(&base, "behind a token\n", &[]));
    let pushed_with = tokens.tokens_issued();
    assert!(
        pushed_with > 0,
        "the push itself went through the token server"
    );
    let addr = env.dev_with(&["--insecure-registry", &reg.addr]);
    let image = format!("{}/team/app:v1", reg.addr);

    // Without credentials: the token server refuses, the registry refuses.
    let reason = failed_to_start(&addr, &["--image", &image]);
    assert!(reason.contains("unauthorized"), "{reason}");

    let out = skiff_tests::cli_stdin(
        &addr,
        &[
            "registry-creds",
            "put",
            "builder",
            "--server",
            &reg.addr,
            "--username",
            "bob",
        ],
        b"builder",
    );
    assert_eq!(out.code, 0, "{out:?}");
    let out = follow(&addr, &["--registry-creds", "builder", "--image", &image]);
    assert_eq!(out.stdout, "behind a token\n", "{out:?}\n{}", env.logs());
    assert!(
        tokens.tokens_issued() > pushed_with,
        "the pull asked for a token"
    );
}

#[test]
fn a_node_without_a_trust_store_runs_local_images_and_says_why_it_cannot_pull() {
    // A minimal edge image without ca-certificates: SSL_CERT_FILE naming an empty bundle is
    // what the TLS stack sees there (no root certificates at all). skiff used to panic on
    // start-up in that state (the webhook client and the registry client).
    let mut env = Env::new();
    let reg = Registry::start(&env.path("registry"), None);
    reg.push("team/app", "v1", &app_image(&base_layer(&env), "x\n", &[]));
    let empty = env.path("no-roots.pem");
    std::fs::write(&empty, "").unwrap();
    let addr = env.dev_with_env(
        &["--insecure-registry", &reg.addr],
        &[
            ("SSL_CERT_FILE", empty.to_str().unwrap()),
            ("SSL_CERT_DIR", ""),
        ],
    );

    let out = follow(
        &addr,
        &["--image", &env.busybox_image(), "--", "echo", "local"],
    );
    assert_eq!(out.code, 0, "{out:?}\n{}", env.logs());
    assert_eq!(out.stdout, "local\n");

    let reason = failed_to_start(&addr, &["--image", &format!("{}/team/app:v1", reg.addr)]);
    assert!(
        reason.contains("cannot pull from registries")
            && reason.contains("No CA certificates")
            && reason.contains("ca-certificates"),
        "{reason}"
    );
    // The node is still up and still runs local images after the refused pull.
    let out = follow(&addr, &["--image", &env.busybox_image(), "--", "true"]);
    assert_eq!(out.code, 0, "{out:?}");
}

#[test]
fn a_plain_http_registry_on_the_loopback_needs_no_insecure_flag() {
    let mut env = Env::new();
    let reg = Registry::start(&env.path("registry"), None);
    let base = base_layer(&env);
    reg.push(
        "team/app",
        "v1",
        &app_image(&base, "from the loopback\n", &[]),
    );
    // No --insecure-registry: 127.0.0.0/8 and localhost are tried in plain HTTP, as Docker does.
    let addr = env.dev();
    let out = follow(&addr, &["--image", &format!("{}/team/app:v1", reg.addr)]);
    assert_eq!(out.code, 0, "{out:?}\n{}", env.logs());
    assert_eq!(out.stdout, "from the loopback\n");
    let port = reg.addr.rsplit(':').next().unwrap();
    let out = follow(
        &addr,
        &["--image", &format!("localhost:{port}/team/app:v1")],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "from the loopback\n");
}
