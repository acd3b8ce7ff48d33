//! Builds skiff-init (`init/init.rs`), the PID 1 for containers that ask for an init, as a
//! static executable: it runs inside images that have no C library of their own. The agent
//! embeds the result (`include_bytes!`) and bind-mounts it into those containers.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=init/init.rs");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let target = std::env::var("TARGET").expect("TARGET");
    let status = Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "--crate-name",
            "skiff_init",
            "--target",
            &target,
        ])
        .args([
            "-C",
            "opt-level=z",
            "-C",
            "lto=fat",
            "-C",
            "panic=abort",
            "-C",
            "strip=symbols",
        ])
        .args(["-C", "target-feature=+crt-static", "-C", "codegen-units=1"])
        .arg("-o")
        .arg(out.join("skiff-init"))
        .arg("init/init.rs")
        // Cargo's flags for the workspace (e.g. a coverage build) are not meant for it.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .expect("running rustc for init/init.rs");
    assert!(
        status.success(),
        "building skiff-init (init/init.rs) failed"
    );
}
