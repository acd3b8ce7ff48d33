//! `skiff doctor` on this machine, against a real `skiff dev`: what it finds well, and the
//! problems a user can have, each found and explained — CNI plugins missing, no controller at
//! the address, an expired node certificate, a clock 30 s off (libfaketime on the doctor).

use std::process::Command;

use skiff_tests::{cli, skiff_bin, Env};

/// Every check, in the order it runs.
const CHECKS: [&str; 9] = [
    "cgroups",
    "namespaces",
    "overlayfs",
    "seccomp",
    "cni",
    "disk",
    "certificate",
    "controller",
    "clock",
];

/// The checks of `skiff doctor -o json` by name, and its exit code.
fn doctor(addr: &str, args: &[&str], wrap: &[&str]) -> (i32, serde_json::Value) {
    let mut cmd = match wrap.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(skiff_bin());
            c
        }
        None => Command::new(skiff_bin()),
    };
    let out = cmd
        .args(["doctor", "--addr", addr, "-o", "json"])
        .args(args)
        .output()
        .unwrap();
    let checks: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    let by_name = checks
        .into_iter()
        .map(|c| (c["check"].as_str().unwrap().to_string(), c))
        .collect::<serde_json::Map<_, _>>();
    (out.status.code().unwrap(), by_name.into())
}

#[test]
fn doctor_finds_a_healthy_node_well_and_names_each_problem_with_its_fix() {
    let mut env = Env::new();
    let addr = env.dev();
    let data = env.path("dev/agent");
    let data = data.to_str().unwrap();

    let (code, c) = doctor(&addr, &["--data-dir", data], &[]);
    for name in CHECKS.iter().filter(|c| **c != "certificate") {
        assert_eq!(c[*name]["status"], "ok", "{name}: {c:#}");
    }
    assert_eq!(
        c["certificate"]["status"], "skip",
        "a dev agent has not joined: {c:#}"
    );
    assert!(c["cgroups"]["detail"].as_str().unwrap().contains("memory"));
    assert_eq!(code, 0, "{c:#}");

    // No CNI plugins where it looks: a warning that says what to install; still exit 0.
    let empty = env.path("no-plugins");
    std::fs::create_dir_all(&empty).unwrap();
    let (code, c) = doctor(
        &addr,
        &[
            "--data-dir",
            data,
            "--cni-plugin-dir",
            empty.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(c["cni"]["status"], "warn", "{c:#}");
    assert!(
        c["cni"]["fix"]
            .as_str()
            .unwrap()
            .contains("containernetworking-plugins"),
        "{c:#}"
    );
    assert_eq!(code, 0);

    // Nothing listening at the address: the controller check fails (exit 1) and says what to do.
    let nowhere = format!("http://127.0.0.1:{}", skiff_tests::registry::free_port());
    let (code, c) = doctor(&nowhere, &["--data-dir", data], &[]);
    assert_eq!(c["controller"]["status"], "fail", "{c:#}");
    assert!(
        c["controller"]["fix"].as_str().unwrap().contains("--addr"),
        "{c:#}"
    );
    assert_eq!(c["clock"]["status"], "skip");
    assert_eq!(code, 1);

    // A node certificate that expired yesterday.
    let joined = env.path("joined");
    std::fs::create_dir_all(joined.join("pki")).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["n1".to_string()]).unwrap();
    let now = std::time::SystemTime::now();
    params.not_before = (now - std::time::Duration::from_secs(30 * 86_400)).into();
    params.not_after = (now - std::time::Duration::from_secs(86_400)).into();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(joined.join("pki/node.crt"), cert.pem()).unwrap();
    let (code, c) = doctor(&addr, &["--data-dir", joined.to_str().unwrap()], &[]);
    assert_eq!(c["certificate"]["status"], "fail", "{c:#}");
    assert!(
        c["certificate"]["detail"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{c:#}"
    );
    assert_eq!(code, 1);

    // This node's clock 30 s ahead of the controller's.
    let (_, c) = doctor(&addr, &["--data-dir", data], &["faketime", "-f", "+30s"]);
    assert_eq!(c["clock"]["status"], "warn", "{c:#}");
    let detail = c["clock"]["detail"].as_str().unwrap();
    let skew: f64 = detail.split_whitespace().next().unwrap().parse().unwrap();
    assert!((29.0..=32.0).contains(&skew), "{detail}");
    assert!(
        c["clock"]["fix"].as_str().unwrap().contains("chrony"),
        "{c:#}"
    );

    // The table for people names every check.
    let table = cli(&addr, &["doctor", "--data-dir", data]);
    assert_eq!(table.code, 0, "{table:?}");
    for name in CHECKS {
        assert!(table.stdout.contains(name), "{}", table.stdout);
    }
}
