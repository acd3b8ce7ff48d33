//! What the benchmark programs share: percentiles and one summary line per series.

/// The value at fraction `p` (0..=1) of a sorted series.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

/// Prints n, p50, p95, min and max of a series in milliseconds; returns (p50, p95).
pub fn summary(name: &str, mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (p50, p95) = (percentile(&ms, 0.5), percentile(&ms, 0.95));
    println!(
        "{name:<28} n={:<4} p50={p50:>7.2} ms  p95={p95:>7.2} ms  min={:>7.2} ms  max={:>7.2} ms",
        ms.len(),
        ms[0],
        ms[ms.len() - 1]
    );
    (p50, p95)
}

/// A numeric command-line option `--name N`, or `default` when absent.
pub fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    match args
        .iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
    {
        Some(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}: {v:?} is not a valid value")),
        None => default,
    }
}

/// `--skiff PATH`: benchmark that binary (the harness starts `SKIFF_BIN`).
pub fn use_skiff_arg() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(path) = args
        .iter()
        .position(|a| a == "--skiff")
        .and_then(|i| args.get(i + 1))
    {
        std::env::set_var("SKIFF_BIN", path);
    }
}

/// A runc bundle in `dir` running `/bin/true` from `rootfs` (read-only, no terminal): the peer
/// the start benchmarks compare with.
pub fn runc_bundle(dir: &std::path::Path, rootfs: &std::path::Path) -> std::path::PathBuf {
    let bundle = dir.join("runc-bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    let st = std::process::Command::new("runc")
        .args(["spec", "--bundle"])
        .arg(&bundle)
        .status()
        .expect("runc is installed (scripts/bench installs it)");
    assert!(st.success());
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    spec["root"]["path"] = rootfs.to_str().unwrap().into();
    spec["root"]["readonly"] = true.into();
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(["/bin/true"]);
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    bundle
}
