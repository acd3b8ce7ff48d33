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

    // A registry that is not marked insecure is only spoken to over TLS.
    let mut env2 = Env::new();
    let addr2 = env2.dev();
    let reason = failed_to_start(&addr2, &["--image", &image]);
    assert!(reason.contains(&reg.addr), "{reason}");
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
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk.len();
        let v = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= n {
                out.push(T[((v >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
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
